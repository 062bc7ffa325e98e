"""benchmarks/gpu_check.sh stops at a missing piece with its reason, and runs every part end to end on the CPU with
--dry-run, so that a GPU window is spent on CUDA, not on a broken script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import fashion_mnist_available

REPO = Path(__file__).parent.parent


def gpu_check(out: Path, *args: str, budget: int = 540) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_CHECK_BUDGET_S": str(budget),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(REPO / "benchmarks/gpu_check.sh"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run for real")
@pytest.mark.skipif(not fashion_mnist_available(), reason="Fashion-MNIST not installed")
def test_without_cuda_it_stops_in_the_preflight_with_the_reason(tmp_path: Path) -> None:
    done = gpu_check(tmp_path)
    if "Fashion-MNIST is missing" in done.stderr:  # a checkout without .data stops even earlier, also exit 3
        assert done.returncode == 3
        return
    assert done.returncode == 4, done.stderr[-2000:]
    assert "CUDA is not available" in done.stderr and "--dry-run" in done.stderr
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["parts"] == [{"part": "preflight", "status": "failed", "seconds": summary["parts"][0]["seconds"],
                                 "detail": summary["parts"][0]["detail"]}] and summary["failed"] == 1


@pytest.mark.slow
@pytest.mark.heavy  # every part of the script, ~1-2 min: run before a GPU window (make test-all), not on every change
@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run for real")
@pytest.mark.skipif(not (REPO / ".data/FashionMNIST/raw/train-images-idx3-ubyte").exists()
                    and not fashion_mnist_available(), reason="Fashion-MNIST not installed")
def test_the_dry_run_passes_every_part_end_to_end_on_the_cpu(tmp_path: Path) -> None:
    done = gpu_check(tmp_path, "--dry-run")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    statuses = {part["part"].split(",")[0].split(" (")[0]: part["status"] for part in summary["parts"]}
    assert statuses == {"preflight": "ok", "tests/test_cuda.py": "ok", "torchrun quickstart": "ok",
                        "DDP engine check": "ok", "speed run": "ok", "reproduce": "ok",
                        "precision throughput": "skipped"}, summary["parts"]
    assert summary["dry_run"] is True and summary["failed"] == 0
    reproduce = next(part for part in summary["parts"] if part["part"].startswith("reproduce"))
    assert "TTA" in reproduce["detail"] and "over 2 seeds" in reproduce["detail"]
    assert (tmp_path / "gpu_check.txt").read_text().count(": ok") == 5  # preflight is the machine line
