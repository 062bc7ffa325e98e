"""A SIGKILLed `reprocls pretrain` resumes byte-identical, for every method: weights, logged losses and k-NN
(MoCo v2 and BYOL end to end in make test-all; in make test, their extra state through load_state_dict)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from test_pretrain_run import SMALL, pretrain_cli
from test_reliability import REPO, only_run, same_bytes


@pytest.mark.slow
# SimCLR in make test; MoCo v2 (queue) and BYOL (target network) add their state to the same checkpoint path
@pytest.mark.parametrize("method", ["simclr", pytest.param("moco_v2", marks=pytest.mark.heavy),
                                    pytest.param("byol", marks=pytest.mark.heavy)])
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


@pytest.mark.parametrize("method", ["moco_v2", "byol"])
def test_the_method_state_a_checkpoint_carries_holds_its_target_and_queue(method: str) -> None:
    """What the checkpoint path above adds for MoCo v2 and BYOL (their killed-resume tests are heavy): the momentum
    target and the key queue are state, and loading it into a freshly built method reproduces the next step."""
    import torch

    from reprocls.config import load_config
    from reprocls.engine.selfsup.methods import follow_online
    from reprocls.recipe import Shape, build_model, build_pretraining

    config = load_config(REPO / f"configs/fashion_mnist/{method}_resnet20.yaml", ["pretrain.queue_size=64"])

    def built(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        session = type("Session", (), {"model": build_model(config, Shape(10, 1, 28)), "device": torch.device("cpu")})()
        return build_pretraining(config, session)

    torch.manual_seed(0)
    views = [(torch.randn(8, 1, 28, 28), torch.randn(8, 1, 28, 28)) for _ in range(2)]
    trained = built(0)
    trained(*views[0]).backward()
    with torch.no_grad():
        for parameter in trained.parameters():
            if parameter.grad is not None:
                parameter -= 0.1 * parameter.grad
    follow_online(trained, 0.9)  # the target now differs from the online network and from a fresh copy
    state = trained.state_dict()
    assert any(key.startswith("target_backbone.") for key in state)
    if method == "moco_v2":
        assert int(state["queue.pointer"]) == 16  # both views' keys of 8 images went in
    resumed = built(1)
    assert not torch.equal(resumed.state_dict()["target_projection.0.weight"], state["target_projection.0.weight"])
    resumed.load_state_dict(state)
    torch.manual_seed(2)
    expected = trained(*views[1])
    torch.manual_seed(2)
    assert torch.equal(resumed(*views[1]), expected)
