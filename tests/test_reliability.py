"""Never lose a run: kill-and-resume byte equality, damaged and malicious checkpoints, a full disk, NaN losses."""

from __future__ import annotations

import errno
import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from reprocls.config import ConfigError, load_config, to_dict
from reprocls.engine import checkpoint as ckpt
from reprocls.engine.checkpoint import CheckpointError, load_checkpoint, newest_valid, prune, write_checkpoint
from reprocls.engine.train import Trainee, TrainSettings, TrainState, train_one_epoch
from reprocls.engine.distributed import World
from reprocls.experiments.resume import ResumePoint, check_same_experiment, config_hash, restore

REPO = Path(__file__).parent.parent
CPU = torch.device("cpu")
# 512 images in batches of 64: 8 optimizer steps per epoch, 2 epochs, a checkpoint every 4 steps; bf16, channels_last,
# erasing and EMA all on
SMALL = ["data.limit_train=512", "data.limit_eval=200", "data.batch_size=64", "schedule.epochs=2",
         "data.augment.random_erasing=0.5", "train.ema_decay=0.99", "train.threads=1", "train.checkpoint_every=4"]


def train_cli(out: Path, *overrides: str, kill_at: int | str | None = None, nproc: int = 0, kill_rank: int | None = None,
              extra_args: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`reprocls train` in its own process, run inside `out` with output_dir=runs: two runs in two folders then carry
    the same recipe in their weights' metadata, so their model.safetensors files can be compared byte for byte.
    kill_at: an optimizer step, or a named moment ("test": the final test pass)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("REPROCLS_FAULT_KILL_AT_STEP", None)
    env.pop("REPROCLS_FAULT_KILL_AT", None)
    if isinstance(kill_at, int):
        env["REPROCLS_FAULT_KILL_AT_STEP"] = str(kill_at)
    elif kill_at is not None:
        env["REPROCLS_FAULT_KILL_AT"] = kill_at
    if kill_rank is not None:
        env["REPROCLS_FAULT_KILL_RANK"] = str(kill_rank)
    launcher = [sys.executable, "-m", "reprocls"]
    if nproc:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                    "--max-restarts=1", "-m", "reprocls"]
    out.mkdir(parents=True, exist_ok=True)
    command = launcher + ["train", "-q", *extra_args, str(REPO / "configs/quickstart.yaml"), "output_dir=runs", *overrides]
    return subprocess.run(command, env=env, cwd=out, capture_output=True, text=True, timeout=600)


def only_run(out: Path) -> Path:
    (run_dir,) = [p for p in (out / "runs").iterdir() if p.is_dir()]
    return run_dir


def same_bytes(a: Path, b: Path) -> bool:
    """The two runs' model.safetensors are the same file, byte for byte (what `cmp` checks)."""
    return filecmp.cmp(a / "model.safetensors", b / "model.safetensors", shallow=False)


@pytest.fixture(scope="module")
def uninterrupted(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    done = train_cli(out, f"data.root={fmnist_root}", *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    return only_run(out)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at, resumes_from", [(6, "step-000000004"),   # mid-epoch, between checkpoints
                                                   (9, "step-000000008")])  # past the epoch-1 boundary (8 steps)
def test_sigkill_then_resume_gives_byte_identical_weights(uninterrupted: Path, fmnist_root: Path, tmp_path: Path,
                                                          kill_at: int, resumes_from: str) -> None:
    overrides = [f"data.root={fmnist_root}", *SMALL]
    killed = train_cli(tmp_path, *overrides, kill_at=kill_at)
    assert killed.returncode == -9, killed.stderr[-2000:]  # really SIGKILLed, nothing flushed or cleaned up
    assert not (only_run(tmp_path) / "results.json").exists()
    resumed = train_cli(tmp_path, *overrides, extra_args=("--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_dir = only_run(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["resumed_from"] == resumes_from
    assert same_bytes(run_dir, uninterrupted)
    expected = json.loads((uninterrupted / "results.json").read_text())
    assert results["test"]["loss"] == expected["test"]["loss"] and results["ema"] == expected["ema"]
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in lines] == [r["train_loss"] for r in reference]  # no duplicated or lost epochs


@pytest.mark.slow
def test_a_kill_before_the_first_checkpoint_is_trained_afresh_in_the_same_folder(uninterrupted: Path, fmnist_root: Path,
                                                                                 tmp_path: Path) -> None:
    overrides = [f"data.root={fmnist_root}", *SMALL]
    killed = train_cli(tmp_path, *overrides, kill_at=3)  # the first checkpoint comes at step 4
    assert killed.returncode == -9, killed.stderr[-2000:]
    started = only_run(tmp_path)
    assert not (started / "checkpoints").exists()
    resumed = train_cli(tmp_path, *overrides, extra_args=("--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stopped before its first checkpoint" in resumed.stdout
    assert only_run(tmp_path) == started  # reused: no second run folder
    assert same_bytes(started, uninterrupted)


@pytest.mark.slow
def test_a_kill_in_the_final_test_pass_redoes_only_that_pass(uninterrupted: Path, fmnist_root: Path,
                                                             tmp_path: Path) -> None:
    overrides = [f"data.root={fmnist_root}", *SMALL]
    killed = train_cli(tmp_path, *overrides, kill_at="test")
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = train_cli(tmp_path, *overrides, extra_args=("--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    run_dir = only_run(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    expected = json.loads((uninterrupted / "results.json").read_text())
    assert results["resumed_from"] == "step-000000016"  # the last epoch's checkpoint: no step trained again
    assert results["val"] is not None and results["val"]["top1"] == expected["val"]["top1"]
    assert results["ema"] == expected["ema"] and results["ema"]["chosen_by"] == "val top-1"
    assert results["test"]["top1"] == expected["test"]["top1"]
    assert same_bytes(run_dir, uninterrupted)


def test_a_finished_run_is_reported_and_left_alone(uninterrupted: Path, fmnist_root: Path, tmp_path: Path) -> None:
    shutil.copytree(uninterrupted, tmp_path / "runs" / uninterrupted.name)
    run_dir = tmp_path / "runs" / uninterrupted.name
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}
    again = train_cli(tmp_path, f"data.root={fmnist_root}", *SMALL, extra_args=("--resume", "auto"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is finished" in again.stdout and "resuming" not in again.stdout
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}
    assert after == before and only_run(tmp_path) == run_dir


@pytest.mark.slow
def test_torchrun_restarts_a_killed_rank_and_finishes_from_the_checkpoint(fmnist_root: Path, tmp_path: Path) -> None:
    overrides = [f"data.root={fmnist_root}", *SMALL, "data.batch_size=32", "train.checkpoint_every=3"]
    clean = train_cli(tmp_path / "clean", *overrides, nproc=2, extra_args=("--resume", "auto"))
    assert clean.returncode == 0, clean.stderr[-3000:]
    restarted = train_cli(tmp_path / "restarted", *overrides, nproc=2, kill_at=5, kill_rank=1, extra_args=("--resume", "auto"))
    assert restarted.returncode == 0, restarted.stderr[-3000:]
    run_dir = only_run(tmp_path / "restarted")
    assert json.loads((run_dir / "results.json").read_text())["resumed_from"] == "step-000000003"
    assert same_bytes(run_dir, only_run(tmp_path / "clean"))


def test_resume_refuses_a_changed_experiment_but_allows_harmless_keys() -> None:
    saved = to_dict(load_config(REPO / "configs/quickstart.yaml"))
    check_same_experiment(saved, load_config(REPO / "configs/quickstart.yaml", ["train.log_every=7", "data.workers=0"]))
    with pytest.raises(ConfigError, match=r"optim.lr: 0.2 -> 0.3.*schedule.epochs: 6 -> 9"):
        check_same_experiment(saved, load_config(REPO / "configs/quickstart.yaml", ["optim.lr=0.3", "schedule.epochs=9"]))
    base = load_config(REPO / "configs/quickstart.yaml")
    assert config_hash(base) == config_hash(load_config(REPO / "configs/quickstart.yaml", ["train.log_every=3"]))
    assert config_hash(base) != config_hash(load_config(REPO / "configs/quickstart.yaml", ["model.name=resnet32"]))


@pytest.mark.slow
def test_file_backed_runs_resume_byte_identical_whatever_the_workers(fmnist_folder: Path, tmp_path: Path) -> None:
    common = [f"data.root={fmnist_folder}", "data.name=image_folder", "data.image_size=28", "data.batch_size=16",
              "schedule.epochs=2", "data.augment.policy=trivialaugment", "train.checkpoint_every=2", "train.threads=1"]
    clean = train_cli(tmp_path / "clean", *common, "data.workers=0")  # the resumed run's value: the same metadata
    assert clean.returncode == 0, clean.stderr[-3000:]
    killed = train_cli(tmp_path / "killed", *common, "data.workers=2", kill_at=5)
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = train_cli(tmp_path / "killed", *common, "data.workers=0", extra_args=("--resume", "auto"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((only_run(tmp_path / "killed") / "results.json").read_text())["resumed_from"] == "step-000000004"
    assert same_bytes(only_run(tmp_path / "killed"), only_run(tmp_path / "clean"))


def test_resume_on_data_with_other_classes_is_refused() -> None:
    config = load_config(REPO / "configs/quickstart.yaml")
    point = ResumePoint(Path("run"), Path("run/checkpoints/step-000000001"),
                        {"config": to_dict(config), "classes": ["cat", "dog"]})
    with pytest.raises(ConfigError, match=r"classes \['cat', 'bird'\] differ from the checkpoint's \['cat', 'dog'\]"):
        restore(point, config, World(), None, ["cat", "bird"])


def test_resume_of_another_recipe_names_the_differing_keys(uninterrupted: Path, fmnist_root: Path,
                                                            tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / uninterrupted.name
    shutil.copytree(uninterrupted, run_dir)
    (run_dir / "results.json").unlink()  # as if killed after its last checkpoint: resume reads that checkpoint
    changed = train_cli(tmp_path, f"data.root={fmnist_root}", *SMALL, "optim.weight_decay=0.001",
                        extra_args=("--resume", "auto"))
    assert changed.returncode == 2 and "optim.weight_decay: 0.0005 -> 0.001" in changed.stderr
    assert "resuming" not in changed.stdout and not (run_dir / "results.json").exists()  # refused before any step


# ------------------------------------------------------------------------------------------ checkpoint files


def make_checkpoints(folder: Path, steps: list[int]) -> None:
    for step in steps:
        write_checkpoint(folder, step, {"w": torch.full((4,), float(step))}, {"state": {"step": step}}, {"epoch": 0, "config": {}})


def test_newest_is_chosen_by_step_not_by_name(tmp_path: Path) -> None:
    make_checkpoints(tmp_path, [3, 12])
    (tmp_path / "step-000000012").rename(tmp_path / "step-0-renamed")
    path, manifest = newest_valid(tmp_path)
    assert manifest["step"] == 12 and path.name == "step-0-renamed"


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "no-manifest"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path: Path, damage: str) -> None:
    make_checkpoints(tmp_path, [5, 10])
    newest = tmp_path / "step-000000010"
    if damage == "truncate":
        data = (newest / ckpt.WEIGHTS).read_bytes()
        (newest / ckpt.WEIGHTS).write_bytes(data[: len(data) // 2])
    elif damage == "bitflip":
        data = bytearray((newest / ckpt.STATE).read_bytes())
        data[len(data) // 2] ^= 0x01
        (newest / ckpt.STATE).write_bytes(bytes(data))
    else:
        (newest / ckpt.MANIFEST).unlink()
    with pytest.warns(UserWarning, match="damaged checkpoint"):
        path, manifest = newest_valid(tmp_path)
    assert manifest["step"] == 5
    tensors, _, _ = load_checkpoint(path)
    assert torch.equal(tensors["w"], torch.full((4,), 5.0))
    with pytest.raises(CheckpointError):
        load_checkpoint(newest)


class Payload:
    """A pickle that would create a file when loaded unsafely."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    make_checkpoints(tmp_path, [1])
    folder, marker = tmp_path / "step-000000001", tmp_path / "pwned"
    torch.save({"state": Payload(marker)}, folder / ckpt.STATE)
    manifest = json.loads((folder / ckpt.MANIFEST).read_text())
    manifest["files"][ckpt.STATE] = ckpt.sha256(folder / ckpt.STATE)  # a forger controls the checksum too
    (folder / ckpt.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="refusing to load .*no unsafe fallback"):
        load_checkpoint(folder)
    assert not marker.exists()


def test_a_full_disk_fails_loudly_and_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_checkpoints(tmp_path, [4])

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*step-000000004.*--resume auto"):
        make_checkpoints(tmp_path, [8])
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000004"]  # no half-written folder left behind
    assert newest_valid(tmp_path)[1]["step"] == 4


def test_prune_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    make_checkpoints(tmp_path, [2, 4, 6, 8])
    prune(tmp_path, keep=2, best_step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000000002", "step-000000006", "step-000000008"]


def test_training_state_is_loaded_with_weights_only(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    state = {"optimizer": optimizer.state_dict(), "rng": ckpt.rng_states(), "state": TrainState(step=3).to_dict()}
    write_checkpoint(tmp_path, 3, dict(model.state_dict()), state, {"epoch": 0, "config": {}})
    _, loaded, _ = load_checkpoint(tmp_path / "step-000000003")
    ckpt.restore_rng_states(loaded["rng"])
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])
    assert TrainState.from_dict(loaded["state"]).step == 3


# ------------------------------------------------------------------------------------------------ bad numbers


class NaNAt(nn.Module):
    """A linear model whose loss turns NaN on the given forward calls."""

    def __init__(self, bad_calls: set[int]) -> None:
        super().__init__()
        self.linear, self.calls, self.bad_calls = nn.Linear(4, 2), 0, bad_calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.linear(x.flatten(1))
        return out * float("nan") if self.calls in self.bad_calls else out


class Batches(list):
    def set_epoch(self, epoch: int, start: int = 0) -> None: ...


def nan_run(policy: str, bad_calls: set[int], saved: list[int]) -> tuple[NaNAt, TrainState]:
    torch.manual_seed(0)
    model = NaNAt(bad_calls)
    data = Batches([(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(5)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    state = TrainState()
    train_one_epoch(Trainee(model, optimizer, scheduler, nn.CrossEntropyLoss()), data,
                    TrainSettings(device=CPU, on_nonfinite=policy, checkpoint_every=1, progress=False), state,
                    checkpoint=lambda s: saved.append(s.step))
    return model, state


def test_nan_loss_stops_at_its_step_and_no_checkpoint_follows() -> None:
    saved: list[int] = []
    with pytest.raises(FloatingPointError, match="step 3;.*last checkpoint is intact"):
        nan_run("stop", {3}, saved)
    assert saved == [1, 2]


def test_nan_loss_is_skipped_and_counted_with_parameters_finite() -> None:
    saved: list[int] = []
    model, state = nan_run("skip", {2, 4}, saved)
    assert state.nonfinite_skipped == 2 and state.step == 5 and state.seen == 24
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_infinite_gradients_never_reach_the_parameters() -> None:
    model = nn.Linear(4, 2)
    model.weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    data = Batches([(torch.randn(8, 4), torch.randint(0, 2, (8,))) for _ in range(3)])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="gradients became non-finite at epoch 1, step 1"):
        train_one_epoch(Trainee(model, optimizer, scheduler, nn.CrossEntropyLoss()), data, TrainSettings(device=CPU, progress=False))
    state = TrainState()
    train_one_epoch(Trainee(model, optimizer, scheduler, nn.CrossEntropyLoss()), data,
                    TrainSettings(device=CPU, on_nonfinite="skip", progress=False), state)
    assert state.nonfinite_skipped == 3
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
