"""A SIGKILLed `reprocls pretrain` resumes byte-identical, for every method: weights, logged losses and k-NN."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_pretrain_run import SMALL, pretrain_cli
from test_reliability import only_run, same_bytes


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "moco_v2", "byol"])
def test_a_killed_pretraining_resumes_byte_identical(method: str, fmnist_root: Path, tmp_path: Path) -> None:
    overrides = [f"data.root={fmnist_root}", *SMALL, "schedule.epochs=1"]  # 8 steps: killed at 6, checkpoint at 4
    clean = pretrain_cli(tmp_path / "clean", method, *overrides)
    assert clean.returncode == 0, clean.stderr[-3000:]
    killed = pretrain_cli(tmp_path / "killed", method, *overrides, kill_at=6)
    assert killed.returncode == -9  # SIGKILL mid-epoch, after the step-4 checkpoint
    resumed = pretrain_cli(tmp_path / "killed", method, *overrides, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "step-000000004" in resumed.stdout
    run_dir = only_run(tmp_path / "killed")
    assert json.loads((run_dir / "results.json").read_text())["resumed_from"] == "step-000000004"
    assert same_bytes(run_dir, only_run(tmp_path / "clean"))
    clean_log = (only_run(tmp_path / "clean") / "metrics.jsonl").read_text().splitlines()
    resumed_log = (run_dir / "metrics.jsonl").read_text().splitlines()
    drop = lambda line: {k: v for k, v in json.loads(line).items() if "seconds" not in k and "per_s" not in k  # noqa: E731
                         and k != "elapsed_s"}
    assert [drop(line) for line in resumed_log] == [drop(line) for line in clean_log]  # losses and k-NN as well
