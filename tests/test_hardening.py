"""Hardening: each numbered promise of docs/reliability.md ("Untrusted input") with a test that failed before it held.
Commands run in-process through reprocls.cli.main, so a refusal is checked as the user sees it: exit code, one line on
stderr, and no run folder left behind."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn

from reprocls import run_layout as layout
from reprocls.cli import main
from reprocls.config import ConfigError, DataConfig, load_config
from reprocls.data import load_dataset
from reprocls.engine import checkpoint as ckpt
from reprocls.engine.checkpoint import CheckpointError, newest_valid, write_checkpoint
from reprocls.engine.distributed import World
from reprocls.engine.train import TrainState
from reprocls.experiments import run as run_module
from reprocls.experiments.evaluate import where_data_is
from reprocls.experiments.resume import Checkpointer, plan_resume
from reprocls.experiments.run import RunWriter
from reprocls.files import atomic_write_text
from reprocls.recipe import build_model

REPO = Path(__file__).parent.parent
QUICK = str(REPO / "configs/quickstart.yaml")
SMALL = ["data.limit_train=512", "data.limit_eval=100", "data.batch_size=64", "schedule.epochs=1", "train.threads=1"]


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    """The single error line a refusal must print (anything more, a traceback or a warning, fails the test)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("reprocls: error: "), err[-2000:]
    return lines[0]


def refused(capsys: pytest.CaptureFixture, tmp_path: Path, *argv: str, code: int = 2) -> str:
    """Run a command that must be refused: the exit code, one line, and no run folder under tmp_path/runs."""
    out = tmp_path / "runs"
    got, _, err = cli(capsys, *argv, f"output_dir={out}") if argv[0] == "train" else cli(capsys, *argv)
    assert got == code, err[-2000:]
    assert not out.exists() or not any(out.iterdir()), list(out.iterdir())
    return one_line(err)


# 3, 4, 11: numbers and names that make no sense ---------------------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("optim.lr=.inf", "optim.lr"), ("optim.weight_decay=.inf", "optim.weight_decay"), ("optim.lr=.nan", "optim.lr"),
    ("data.std=[.inf]", "data.std[0]"), ("data.std=[0.0]", "data.std"), ("reference.tolerance=5", "reference.tolerance"),
    ("schedule.milestones=[-3]", "schedule.milestones"), ("data.augment.repeats=1000000", "data.augment.repeats"),
    ("name=../../x", "name"), ("name=/abs/path", "name"), ("name=''", "name"), ("data.limit_train=-5", "data.limit_train"),
    ("data.augment.rrc_scale=[]", "data.augment.rrc_scale"), ("data.augment.rrc_scale=[0.5]", "data.augment.rrc_scale"),
    ("seed=-1", "seed"), ("seed=99999999999999", "seed"), ("data.image_size=-28", "data.image_size"),
    ("model.in_chans=-1", "model.in_chans"), ("model.in_chans=0", "model.in_chans"), ("optim.betas=[2, -1]", "optim.betas"),
    ("data.split=[1.5, -0.3, -0.2]", "data.split"), ("data.workers=100000", "data.workers"),
    ("train.threads=100000", "train.threads"), ("data.augment.crop_padding=100000", "data.augment.crop_padding"),
    ("optim.lr=10000000000000000000000000", "optim.lr")])
def test_nonsense_values_are_refused_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(QUICK, [override])
    assert str(error.value).startswith(key) or f" {key}" in str(error.value), str(error.value)
    assert len(str(error.value)) < 600 and "\n" not in str(error.value)


def test_numbers_as_users_write_them_are_numbers(tmp_path: Path) -> None:
    assert load_config(QUICK, ["optim.lr=1e-3"]).optim.lr == 0.001
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 5E-4\n  weight_decay: 1e-5\n")
    config = load_config(recipe)
    assert (config.optim.lr, config.optim.weight_decay) == (0.0005, 1e-5)


def test_a_home_folder_output_is_expanded_and_a_file_is_refused(tmp_path: Path) -> None:
    assert load_config(QUICK, ["output_dir=~/runs-x"]).output_dir == str(Path.home() / "runs-x")
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="output_dir: .* is a file"):
        load_config(QUICK, [f"output_dir={tmp_path / 'file'}"])


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 0.1\n  lr: 0.3\n")
    with pytest.raises(ConfigError, match="line 3: the key 'lr' appears twice"):
        load_config(recipe)
    with pytest.raises(ConfigError, match="appears twice"):
        load_config(QUICK, ["model.kwargs={a: 1, a: 2}"])


# 7: hangs ------------------------------------------------------------------------------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8))


def test_a_billion_laughs_recipe_is_refused_at_once(tmp_path: Path) -> None:
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("model:\n  kwargs:\n" + "".join(f"    {line}\n" for line in BOMB.splitlines()))
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="alias \\*a repeats a list or mapping"):
        load_config(recipe)
    assert time.perf_counter() - start < 2


def test_error_messages_are_bounded() -> None:
    with pytest.raises(ConfigError) as error:
        load_config(QUICK, ["optim.lr=[" + ", ".join(["1"] * 100_000) + "]"])
    assert len(str(error.value)) < 400
    config = load_config(QUICK, ["model.kwargs={nope: [" + ", ".join(["1"] * 5000) + "]}"])
    with pytest.raises(ConfigError, match="model.kwargs: resnet20 rejected") as error:
        build_model(config, SimpleNamespace(num_classes=10, in_chans=1, image_size=28))
    assert len(str(error.value)) < 600


# 10: tracebacks that are now one line --------------------------------------------------------------------------------

@pytest.mark.parametrize("content", [b"- a\n- b\n", b"42\n", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", None])
def test_recipe_files_that_are_not_recipes_are_one_line(capsys, tmp_path: Path, content: bytes | None) -> None:
    recipe = tmp_path / "recipe.yaml"
    if content is None:
        recipe.mkdir()
    else:
        recipe.write_bytes(content)
    line = refused(capsys, tmp_path, "train", str(recipe))
    assert str(recipe) in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(capsys, tmp_path: Path, fmnist_root: Path) -> None:
    line = refused(capsys, tmp_path, "train", QUICK, "--no-doctor", "-q", f"data.root={fmnist_root}", "train.device=cuda")
    assert "train.device" in line


def test_an_unknown_compile_backend_or_policy_is_one_line(capsys, tmp_path: Path) -> None:
    assert "train.compile_backend" in refused(capsys, tmp_path, "train", QUICK, "--no-doctor", "train.compile=true",
                                              "train.compile_backend=nope")
    assert "data.augment.policy" in refused(capsys, tmp_path, "train", QUICK, "--no-doctor", "data.augment.policy=nope")


def test_a_limit_smaller_than_the_classes_is_one_line(capsys, tmp_path: Path, fmnist_root: Path) -> None:
    line = refused(capsys, tmp_path, "train", QUICK, "--no-doctor", f"data.root={fmnist_root}", "data.limit_eval=1")
    assert "data.limit_eval: 1 image(s) cannot hold one of each of the 10 classes" in line


class Payload:
    """A pickle that would create a file when loaded unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_as_model_weights_is_refused_and_never_runs(capsys, tmp_path: Path, fmnist_root: Path) -> None:
    weights, marker = tmp_path / "evil.pth", tmp_path / "pwned"
    torch.save({"conv.weight": Payload(marker)}, weights)
    line = refused(capsys, tmp_path, "train", QUICK, "--no-doctor", "-q", f"data.root={fmnist_root}",
                   f"model.weights={weights}")
    assert "refusing to load" in line and not marker.exists()


def fake_weights(path: Path, metadata: dict[str, str] | None) -> Path:
    save_file({"w": torch.zeros(2)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("kind", ["pickle", "garbage", "truncated", "bad-json", "no-reprocls"])
@pytest.mark.parametrize("command", ["eval", "export", "predict"])
def test_weights_that_are_not_ours_are_one_line(capsys, tmp_path: Path, kind: str, command: str) -> None:
    weights = tmp_path / "model.safetensors"
    marker = tmp_path / "pwned"
    if kind == "pickle":
        torch.save({"w": Payload(marker)}, weights)
    elif kind == "garbage":
        weights.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        fake_weights(weights, {"reprocls": "{}", "config": "{}"})
        weights.write_bytes(weights.read_bytes()[:-4])
    elif kind == "bad-json":
        fake_weights(weights, {"reprocls": "{not json", "config": "{also not"})
    else:
        fake_weights(weights, {"config": "{}"})
    image = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(image)
    argv = {"eval": ["eval", str(weights)], "export": ["export", str(weights), "--out", str(tmp_path / "out")],
            "predict": ["predict", str(weights), str(image)]}[command]
    refused(capsys, tmp_path, *argv)
    assert not marker.exists()


def test_a_failed_write_in_a_folder_that_refuses_cleanup_shows_the_first_error(tmp_path: Path, monkeypatch) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def refuse(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "read-only folder")

    monkeypatch.setattr(os, "fsync", full)
    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(OSError) as error:
        atomic_write_text(tmp_path / "results.json", "{}")
    assert error.value.errno == errno.ENOSPC  # not the PermissionError of the cleanup


# 6: paths stay inside their folders ----------------------------------------------------------------------------------

@pytest.fixture
def tiny_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), color=30 * i).save(root / cls / f"{i}.png")
    (tmp_path / "outside.png").write_bytes((root / "cat" / "0.png").read_bytes())
    return root


@pytest.mark.parametrize("entry", ["cat/../../outside.png", "cat/../../../../../etc/passwd", "../../etc/passwd",
                                   "/etc/passwd", "bird/0.png", 7])
def test_split_file_entries_must_be_images_of_the_folder(tiny_folder: Path, tmp_path: Path, entry) -> None:
    split = {"classes": ["cat", "dog"], "train": ["cat/0.png", entry], "val": ["dog/1.png"], "test": ["dog/2.png"]}
    (tmp_path / "splits.json").write_text(json.dumps(split))
    with pytest.raises(ConfigError, match=r"data.split_file: .* train entry .* is not an image under"):
        load_dataset(DataConfig(name="image_folder", root=str(tiny_folder), split_file=str(tmp_path / "splits.json")), 0)


@pytest.mark.parametrize("text", ["[1, 2]", "root:x:0:0:root:/root:/bin/bash", '{"classes": ["cat", "dog"]}', "\x00\xff"])
def test_split_files_of_the_wrong_shape_are_one_line(tiny_folder: Path, tmp_path: Path, text: str) -> None:
    (tmp_path / "splits.json").write_text(text, encoding="latin-1")
    with pytest.raises(ConfigError, match=r"^data.split_file: "):
        load_dataset(DataConfig(name="image_folder", root=str(tiny_folder), split_file=str(tmp_path / "splits.json")), 0)


def test_data_locations_never_come_from_a_weights_file(tmp_path: Path) -> None:
    recorded = {"data": {"name": "image_folder", "root": "/etc", "split_file": "/etc/passwd", "batch_size": 8}}
    lone = json.loads(json.dumps(recorded))
    where_data_is(lone, None)  # a weights file alone: no location is taken from it
    assert lone["data"] == {"name": "image_folder", "batch_size": 8}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / layout.CONFIG).write_text("data:\n  root: /data/mine\n  split_file: null\n")
    in_run = json.loads(json.dumps(recorded))
    where_data_is(in_run, run_dir)  # a run folder: its own config.yaml says where its data is
    assert in_run["data"]["root"] == "/data/mine" and in_run["data"]["split_file"] is None


def test_eval_of_a_lone_crafted_weights_file_reads_no_folder_it_names(capsys, tmp_path: Path) -> None:
    config = {"data": {"name": "image_folder", "root": "/etc"}, "model": {"name": "resnet20"}}
    info = {"classes": ["a", "b"], "model": "resnet20"}
    weights = fake_weights(tmp_path / "model.safetensors", {"config": json.dumps(config), "reprocls": json.dumps(info)})
    line = refused(capsys, tmp_path, "eval", str(weights))
    assert "data.root" in line and "/etc" not in line


# 2, 3, 9: checkpoints ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("failure", [RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed "
                                                  "writing file data/0: file write failed"),
                                     SafetensorError("Error while serializing: IoError(No space left on device)")])
def test_a_full_disk_inside_torch_or_safetensors_is_a_checkpoint_error(tmp_path: Path, monkeypatch, failure) -> None:
    write_checkpoint(tmp_path, 4, {"w": torch.ones(2)}, {"s": 1}, {"epoch": 0, "config": {}})

    def fail(*args, **kwargs):
        raise failure

    monkeypatch.setattr(ckpt.torch if isinstance(failure, RuntimeError) else ckpt, "save" if isinstance(failure, RuntimeError)
                        else "write_safetensors", fail)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint step-000000008 .*untouched \(step-000000004\)"):
        write_checkpoint(tmp_path, 8, {"w": torch.ones(2)}, {"s": 1}, {"epoch": 0, "config": {}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000004"]  # no .tmp-step-* left on the full disk


def test_non_finite_weights_are_never_checkpointed(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainee = SimpleNamespace(model=model, ema=None, optimizer=optimizer, scaler=None,
                              scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    checkpointer = Checkpointer(tmp_path / "checkpoints", load_config(QUICK), World(), trainee, ["a", "b"])
    with pytest.raises(CheckpointError, match=r"step 5: 1 weight tensor\(s\) are no longer finite .*weight.*lower optim.lr"):
        checkpointer(TrainState(step=5))
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("tamper", [lambda m: {**m, "files": {}}, lambda m: [m], lambda m: {**m, "step": "3"},
                                    lambda m: {**m, "files": {ckpt.WEIGHTS: m["files"][ckpt.WEIGHTS]}},
                                    lambda m: {**m, "step": True}, lambda m: {**m, "config": None}])
def test_a_tampered_manifest_is_a_damaged_checkpoint(tmp_path: Path, tamper) -> None:
    for step in (5, 10):
        write_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, {"s": step}, {"epoch": 0, "config": {}})
    newest = tmp_path / "step-000000010"
    (newest / ckpt.WEIGHTS).write_bytes((newest / ckpt.WEIGHTS).read_bytes()[:20])  # truncated: must not reach a loader
    manifest = json.loads((newest / ckpt.MANIFEST).read_text())
    (newest / ckpt.MANIFEST).write_text(json.dumps(tamper(manifest)))
    with pytest.warns(UserWarning, match="skipping damaged checkpoint: .*malformed"):
        path, found = newest_valid(tmp_path)
    assert found["step"] == 5 and path.name == "step-000000005"


# 1, 2: a full disk at the end of a run, then resume ------------------------------------------------------------------

def test_a_full_disk_at_results_is_one_line_and_resume_redoes_only_the_test(capsys, tmp_path: Path, fmnist_root: Path,
                                                                           monkeypatch) -> None:
    overrides = [f"data.root={fmnist_root}", *SMALL, "train.ema_decay=0.9", f"output_dir={tmp_path / 'runs'}"]
    real = run_module.atomic_write_json

    def full_at_results(path, payload):
        if Path(path).name == layout.RESULTS:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path, payload)

    monkeypatch.setattr(run_module, "atomic_write_json", full_at_results)
    code, _, err = cli(capsys, "train", QUICK, "-q", "--no-doctor", *overrides)
    assert code == 1 and "could not write results.json (No space left on device)" in one_line(err)
    assert "step-000000008" in err and "--resume auto" in err
    monkeypatch.setattr(run_module, "atomic_write_json", real)
    code, out, err = cli(capsys, "train", QUICK, "-q", "--no-doctor", "--resume", "auto", *overrides)
    assert code == 0, err
    (run_dir,) = (tmp_path / "runs").iterdir()
    results = json.loads((run_dir / layout.RESULTS).read_text())
    assert results["resumed_from"] == "step-000000008" and results["val"] is not None
    assert results["ema"]["chosen_by"] == "val top-1"
    assert len((run_dir / layout.METRICS).read_text().splitlines()) == 1  # no epoch trained twice


# 5, 12, 13: which folder a resume continues, litter, locks -----------------------------------------------------------

def stamped(parent: Path, name: str, stamp: str, *, config: bool = True) -> Path:
    folder = parent / f"{name}-{stamp}"
    folder.mkdir(parents=True)
    if config:
        (folder / layout.CONFIG).write_text("name: x\n")
    return folder


def test_resume_auto_matches_the_exact_name(tmp_path: Path) -> None:
    own = stamped(tmp_path, "kr", "20260101-000000")
    stamped(tmp_path, "kr-lr03", "20260301-000000")  # newer, and starts with "kr-": never this recipe's
    stamped(tmp_path, "kr", "20251231-235959")
    assert layout.runs_named(tmp_path, "kr")[0] == own
    assert [p.name for p in layout.runs_named(tmp_path, "kr")] == ["kr-20260101-000000", "kr-20251231-235959"]
    config = load_config(QUICK, ["name=kr", f"output_dir={tmp_path}"])
    assert plan_resume(config, "auto").fresh_in == own


def test_resume_clears_the_litter_of_killed_writes(tmp_path: Path) -> None:
    run_dir = stamped(tmp_path, "quickstart", "20260101-000000")
    litter = run_dir / layout.CHECKPOINTS / ".tmp-step-000000004-123"
    litter.mkdir(parents=True)
    (litter / "weights.safetensors").write_bytes(b"half")
    writer = RunWriter(load_config(QUICK), resume=run_dir, history=[])
    writer.close()
    writer.lock.release()
    assert not litter.exists()


def test_a_second_trainer_of_a_folder_is_refused(capsys, tmp_path: Path) -> None:
    run_dir = stamped(tmp_path / "runs", "quickstart", "20260101-000000")
    lock = layout.FolderLock(run_dir)
    try:
        with pytest.raises(layout.FolderBusy, match=f"pid {os.getpid()}"):
            layout.FolderLock(run_dir)
        code, _, err = cli(capsys, "train", QUICK, "--no-doctor", "--resume", "auto", f"output_dir={tmp_path / 'runs'}")
        assert code == 1 and "being trained by another reprocls process" in one_line(err)
        assert sorted(p.name for p in run_dir.iterdir()) == [layout.LOCK, layout.CONFIG]  # untouched
    finally:
        lock.release()
    layout.FolderLock(run_dir).release()  # free again once the holder is gone
