"""`reprocls pretrain` and `reprocls probe` end to end on real Fashion-MNIST images: the run folder, the probe, the
backbone fine-tuned through model.weights, the label-efficiency summary, and two Gloo processes equal to
one at the same global batch (the resume tests are in test_pretrain_resume.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from reprocls.cli import main
from reprocls.config import load_config
from reprocls.recipe import prepare
from reprocls.reports.pages import page_kind

from test_reliability import only_run

REPO = Path(__file__).parent.parent
RECIPE = {method: REPO / f"configs/fashion_mnist/{method}_resnet20.yaml" for method in ("simclr", "moco_v2", "byol")}
# 256 images in batches of 32: 8 steps per epoch, 2 epochs, a checkpoint every 4 steps
SMALL = ["data.limit_train=256", "data.limit_eval=200", "data.batch_size=32", "schedule.epochs=2",
         "train.checkpoint_every=4", "train.threads=1", "pretrain.knn_every=1", "pretrain.queue_size=256"]


def pretrain_cli(out: Path, method: str, *overrides: str, kill_at: int | None = None, nproc: int = 0,
                 resume: bool = False) -> subprocess.CompletedProcess:
    """`reprocls pretrain` in its own process inside `out` (output_dir=runs, so two runs' weights files carry the
    same metadata and compare byte for byte); kill_at: SIGKILL after that optimizer step."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    env.pop("REPROCLS_FAULT_KILL_AT_STEP", None)
    if kill_at is not None:
        env["REPROCLS_FAULT_KILL_AT_STEP"] = str(kill_at)
    launcher = [sys.executable, "-m", "reprocls"]
    if nproc:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
                    "reprocls"]
    out.mkdir(parents=True, exist_ok=True)
    command = [*launcher, "pretrain", "-q", *(["--resume", "auto"] if resume else []), str(RECIPE[method]),
               "output_dir=runs", *overrides]
    return subprocess.run(command, env=env, cwd=out, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_pretraining_run_folder_holds_backbone_results_and_pages(fmnist_root: Path, tmp_path: Path, capsys) -> None:
    done = pretrain_cli(tmp_path, "simclr", f"data.root={fmnist_root}", *SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = only_run(tmp_path)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["kind"] == "pretrain" and results["method"] == "simclr" and results["steps"] == 16
    assert 0.3 < results["knn"]["val_top1"] <= 1 and 0.3 < results["knn"]["test_top1"] <= 1  # better than chance (0.1)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2] and all("val_knn_top1" in r for r in history)
    weights = load_file(run_dir / "model.safetensors")
    assert weights and not any(key.startswith(("fc.", "head.", "classifier.")) for key in weights)  # a backbone only
    assert "crop 0.2-1" in results["views"][0] and "k-NN" in (run_dir / "report.html").read_text()
    assert "views made a batch at a time" in done.stdout and "fine-tune with model.weights=" in done.stdout

    capsys.readouterr()
    assert main(["probe", str(run_dir), "--json"]) == 0  # in this process from here on: no interpreter starts
    probe = json.loads(capsys.readouterr().out)
    assert probe["features"] == 64 and probe["train_images"] == 256
    assert set(probe["val_top1"]) == {"0", "0.0001", "0.001", "0.01"}
    assert probe["weight_decay"] == max((v, float(k)) for k, v in probe["val_top1"].items())[1]  # best on val
    assert 0.3 < probe["test_top1"] <= 1 and 0.1 < probe["random_init"]["test_top1"] <= 1
    assert json.loads((run_dir / "probe.json").read_text()) == probe and "linear probe" in (run_dir / "report.md").read_text()
    assert "random-init probe" in (run_dir / "report.html").read_text()

    assert main(["eval", str(run_dir)]) != 0
    refused = capsys.readouterr().err
    assert "no trained classifier" in refused and "Traceback" not in refused
    assert page_kind(run_dir) == "pretrain"

    assert main(["train", "-q", "--no-doctor", str(REPO / "configs/quickstart.yaml"), f"data.root={fmnist_root}",
                 f"model.weights={run_dir}", "data.limit_train=256", "data.limit_eval=200", "data.batch_size=32",
                 "schedule.epochs=1", "train.threads=1", f"output_dir={tmp_path / 'tuned'}"]) == 0
    fine = json.loads(next((tmp_path / "tuned").glob("*/results.json")).read_text())
    assert len(fine["weights"]["loaded"]) == len(weights) and fine["weights"]["reinitialized"]  # backbone in, new head


def test_the_label_efficiency_summary_pairs_scratch_and_pretrained_per_fraction() -> None:
    sys.path.insert(0, str(REPO / "benchmarks"))
    from label_efficiency import labelled_images, summarise

    records = [{"fraction": 0.01, "start": start, "seed": seed, "test_top1": top1}
               for start, seed, top1 in (("scratch", 0, 0.77), ("scratch", 1, 0.79), ("pretrained", 0, 0.85),
                                         ("pretrained", 1, 0.86))]
    (row,) = summarise(records)
    assert row["scratch"]["mean"] == pytest.approx(0.78) and row["pretrained"]["seeds"] == 2
    assert row["gain_points"] == pytest.approx(7.5) and row["scratch"]["std"] == pytest.approx(0.01414, abs=1e-4)
    assert labelled_images(0.01, 60_000) == 600


def test_shipped_pretraining_recipes_build_their_method_on_their_backbone() -> None:
    import torch

    from reprocls.config import shipped_configs
    from reprocls.recipe import Shape, build_model, build_pretraining

    recipes = sorted(path for path in shipped_configs().glob("*/*_resnet*.yaml") if path.parent.name != "search")
    pretraining = [path for path in recipes if load_config(path).pretrain is not None]
    assert len(pretraining) == 6  # three methods on Fashion-MNIST and on CIFAR-10
    for path in pretraining:
        config = load_config(path)
        channels, size = (1, 28) if "fashion" in path.parent.name else (3, 32)
        session = type("Session", (), {"model": build_model(config, Shape(10, channels, size)),
                                       "device": torch.device("cpu")})()
        method = build_pretraining(config, session)
        loss = method(torch.randn(4, channels, size, size), torch.randn(4, channels, size, size))
        assert torch.isfinite(loss) and type(method).__name__.lower().startswith(config.pretrain.method[:4]), path


def flat_params(weights: dict) -> "torch.Tensor":
    import torch

    return torch.cat([v.float().flatten() for k, v in sorted(weights.items()) if v.is_floating_point()
                      and "running" not in k])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr"])
def test_two_gloo_processes_pretrain_as_one_at_the_same_global_batch(method: str, fmnist_root: Path,
                                                                    tmp_path: Path) -> None:
    # two optimizer steps of 32 images; in fp32 the one-process run's own BatchNorm is only good to ~1e-3 of the
    # gradient (test_global_batchnorm measures it against fp64), and SGD amplifies that from step to step, so the
    # networks are compared by how far they moved, after few steps
    overrides = [f"data.root={fmnist_root}", *SMALL, "data.limit_train=64", "schedule.epochs=1",
                 "train.precision=fp32", "train.channels_last=false", "pretrain.knn_every=0"]
    one = pretrain_cli(tmp_path / "one", method, *overrides, "data.batch_size=32")
    two = pretrain_cli(tmp_path / "two", method, *overrides, "data.batch_size=16", nproc=2)
    assert one.returncode == 0, one.stderr[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]
    runs = [only_run(tmp_path / name) for name in ("one", "two")]
    results = [json.loads((run / "results.json").read_text()) for run in runs]
    assert results[0]["global_batch"] == results[1]["global_batch"] == 32 and results[0]["steps"] == results[1]["steps"] == 2
    losses = [json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["train_loss"] for run in runs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    session = prepare(load_config(RECIPE[method], overrides))  # the backbone both runs started from
    session.model.reset_classifier(0)
    start = flat_params(session.model.state_dict())
    a, b = (flat_params(load_file(run / "model.safetensors")) for run in runs)
    assert (a - b).norm() < 0.05 * (a - start).norm()  # measured: 0.02 for SimCLR
