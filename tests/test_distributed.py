"""Real multi-process training through torchrun with Gloo on CPU, and EMA selection in a real run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from reprocls.config import load_config
from reprocls.experiments.run import train_recipe

pytestmark = pytest.mark.slow
REPO = Path(__file__).parent.parent

# ViT has no BatchNorm, so per-process batches of B/2 give exactly the gradient of one batch of B
DDP_RECIPE = ["model.name=vit_ti_4", "data.limit_train=256", "data.limit_eval=200",
              "schedule.epochs=2", "schedule.name=cosine", "optim.name=adamw", "optim.lr=0.001", "optim.weight_decay=0.05",
              "train.precision=fp32", "train.threads=1", "data.augment.random_erasing=0.5", "train.label_smoothing=0.1"]


def reprocls_command(nproc: int) -> list[str]:
    """torchrun for nproc >= 1, a plain launch for nproc 0."""
    if nproc == 0:
        return [sys.executable, "-m", "reprocls"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "reprocls"]


def run_reprocls(nproc: int, root: Path, out: Path, *overrides: str) -> Path:
    """Train through the real command line (torchrun for nproc > 1) and return the single run folder written."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    command = reprocls_command(nproc) + ["train", "--quiet", str(REPO / "configs/quickstart.yaml"), f"data.root={root}",
                                         f"output_dir={out}", *overrides]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (run_dir,) = list(out.iterdir())  # only rank 0 writes
    return run_dir


def test_two_gloo_processes_with_half_batches_match_one_process(fmnist_root: Path, tmp_path: Path) -> None:
    one = run_reprocls(0, fmnist_root, tmp_path / "one", *DDP_RECIPE, "data.batch_size=32")
    two = run_reprocls(2, fmnist_root, tmp_path / "two", *DDP_RECIPE, "data.batch_size=16")
    results = [json.loads((d / "results.json").read_text()) for d in (one, two)]
    assert results[1]["lr"]["processes"] == 2 and results[1]["lr"]["effective_batch"] == 32 == results[0]["lr"]["effective_batch"]
    assert results[0]["lr"]["lr"] == results[1]["lr"]["lr"]
    for split in ("val", "test"):
        assert results[0][split]["samples"] == results[1][split]["samples"] == 200  # every image counted once
        assert results[1][split]["top1"] == pytest.approx(results[0][split]["top1"], abs=0.011)
        assert results[1][split]["loss"] == pytest.approx(results[0][split]["loss"], abs=1e-3)
    weights = [load_file(str(d / "model.safetensors")) for d in (one, two)]
    diff = max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0])
    assert diff < 1e-4
    history = (two / "metrics.jsonl").read_text().splitlines()
    assert len(history) == 2  # one writer


def test_ema_run_logs_both_and_saves_the_better(fmnist_root: Path, tmp_path: Path) -> None:
    config = load_config(REPO / "configs/quickstart.yaml", [f"data.root={fmnist_root}", f"output_dir={tmp_path}",
                                                            "data.limit_train=2000", "data.limit_eval=1000", "schedule.epochs=2", "data.batch_size=64",
                                                            "train.ema_decay=0.99", "data.augment.policy=trivialaugment"])
    run_dir, results = train_recipe(config, progress=False, echo=False)
    ema = results["ema"]
    val = ema["val_top1"]
    assert ema["chosen"] == ("ema" if val["ema"] >= val["raw"] else "raw")
    assert results["val"]["top1"] == max(val["raw"], val["ema"])
    assert results["test"]["top1"] == ema["test_top1"][ema["chosen"]]
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_ema_loss"] != record["val_loss"]  # two different sets of weights were evaluated
    with safe_open(str(run_dir / "model.safetensors"), framework="pt") as handle:
        assert json.loads(handle.metadata()["reprocls"])["weights"] == ema["chosen"]
    assert results["test"]["top1"] > 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nccl_single_process_ddp_run(fmnist_root: Path, tmp_path: Path) -> None:
    run_dir = run_reprocls(1, fmnist_root, tmp_path, "data.limit_train=1024", "schedule.epochs=1", "train.device=cuda")
    assert json.loads((run_dir / "results.json").read_text())["test"]["top1"] > 0.3
