"""Our self-supervised objectives equal lightly's on the same inputs, and the equality bites: a wrong temperature, a
missing partner or negatives left out of the gathering make them differ."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from reprocls.engine.selfsup.losses import (KeyQueue, byol_loss, info_nce, momentum_at, momentum_update, nt_xent)

lightly_loss = pytest.importorskip("lightly.loss")
lightly_utils = pytest.importorskip("lightly.models.utils")
lightly_schedule = pytest.importorskip("lightly.utils.scheduler")

REPO = Path(__file__).parent.parent


def views(batch: int = 12, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    z1 = torch.randn(batch, dim, generator=generator)
    return z1, z1 + 0.5 * torch.randn(batch, dim, generator=generator)  # correlated views: a loss well below chance


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_equals_lightly_and_its_gradients_too(temperature: float) -> None:
    z1, z2 = views()
    ours_in = [z1.clone().requires_grad_(), z2.clone().requires_grad_()]
    theirs_in = [z1.clone().requires_grad_(), z2.clone().requires_grad_()]
    ours = nt_xent(*ours_in, temperature)
    theirs = lightly_loss.NTXentLoss(temperature=temperature)(*theirs_in)
    ours.backward()
    theirs.backward()
    assert torch.allclose(ours, theirs, atol=1e-6)
    for a, b in zip(ours_in, theirs_in):
        assert torch.allclose(a.grad, b.grad, atol=1e-6)
    other = 0.2 if temperature == 0.1 else 0.1
    assert not torch.allclose(nt_xent(z1, z2, other), theirs, atol=1e-3)  # the temperature matters
    assert not torch.allclose(nt_xent(z1, z2[torch.randperm(len(z2))], temperature), theirs, atol=1e-3)  # the pairing


def test_info_nce_against_a_queue_equals_lightly_with_the_same_memory_bank() -> None:
    query, key = views(batch=8, dim=16)
    queue = KeyQueue(size=32, dim=16)
    reference = lightly_loss.NTXentLoss(temperature=0.2, memory_bank_size=(32, 16))
    reference.memory_bank.bank = queue.keys.clone()
    ours = info_nce(query, key, queue.keys, 0.2)
    theirs = reference(query, key)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert not torch.allclose(info_nce(query, key, queue.keys, 0.07), theirs, atol=1e-3)


def test_the_queue_replaces_its_oldest_keys_first_and_wraps() -> None:
    queue = KeyQueue(size=5, dim=2)
    first = torch.tensor([[1.0, 0.0]] * 3)
    second = torch.tensor([[0.0, 1.0]] * 3)
    queue.push(first)
    assert int(queue.pointer) == 3 and torch.equal(queue.keys[:3], first)
    before = queue.keys[3:].clone()
    queue.push(second)  # fills 3, 4 and wraps to 0
    assert int(queue.pointer) == 1
    assert torch.equal(queue.keys[[3, 4, 0]], second) and not torch.equal(queue.keys[3:], before)
    assert torch.equal(queue.keys[1:3], first[:2])
    assert set(queue.state_dict()) == {"keys", "pointer"}  # checkpointed with the model


def test_byol_loss_is_lightlys_negative_cosine_shifted_and_scaled() -> None:
    prediction, target = views()
    theirs = lightly_loss.NegativeCosineSimilarity()(prediction, target)
    assert torch.allclose(byol_loss(prediction, target), 2 + 2 * theirs, atol=1e-6)
    grad_target = target.clone().requires_grad_()
    byol_loss(prediction.clone().requires_grad_(), grad_target).backward()
    assert grad_target.grad is None  # the target is a fixed goal


def test_momentum_update_and_its_cosine_schedule_equal_lightlys() -> None:
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    target, reference = copy.deepcopy(online), copy.deepcopy(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
    target.train()(torch.randn(5, 4))  # the target's BatchNorm statistics are its own
    reference.load_state_dict(target.state_dict())
    momentum_update(target, online, 0.99)
    lightly_utils.update_momentum(online, reference, 0.99)
    for a, b in zip(target.state_dict().values(), reference.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-7)
    assert not torch.allclose(target[0].weight, online[0].weight)
    for step in (0, 1, 37, 98, 99):
        assert momentum_at(step, 100, 0.996) == pytest.approx(lightly_schedule.cosine_schedule(step, 100, 0.996, 1.0))
    assert momentum_at(0, 100, 0.99) == 0.99 and momentum_at(99, 100, 0.99) == 1.0


GATHER_WORKER = """
import json, sys, torch, torch.distributed as dist
from reprocls.engine.selfsup.losses import nt_xent
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
z1, z2 = torch.randn(8, 6), torch.randn(8, 6)
share = slice(rank * 8 // world, (rank + 1) * 8 // world)
a, b = z1[share].clone().requires_grad_(), z2[share].clone().requires_grad_()
loss = nt_xent(a, b, 0.3, gather=sys.argv[2] == "gather")
loss.backward()
grads = [torch.zeros(8, 6), torch.zeros(8, 6)]
grads[0][share], grads[1][share] = a.grad, b.grad
for g in grads:
    dist.all_reduce(g)
mean_loss = loss.detach().clone()
dist.all_reduce(mean_loss)
if rank == 0:
    json.dump({"loss": mean_loss.item() / world, "grad": [g.tolist() for g in grads]}, open(sys.argv[1], "w"))
dist.destroy_process_group()
"""


def run_gather(tmp_path: Path, world: int, mode: str) -> dict:
    script = tmp_path / "gather.py"
    script.write_text(GATHER_WORKER)
    out = tmp_path / f"{world}_{mode}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
                           str(script), str(out), mode], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_two_gloo_processes_with_gathered_negatives_equal_one_process_at_the_same_global_batch(tmp_path: Path) -> None:
    single, pair = run_gather(tmp_path, 1, "gather"), run_gather(tmp_path, 2, "gather")
    assert single["loss"] == pytest.approx(pair["loss"], abs=1e-6)
    # DDP averages gradients over processes: the pair's summed gradients / 2 are the single process's
    for one, two in zip(single["grad"], pair["grad"]):
        assert torch.allclose(torch.tensor(one), torch.tensor(two) / 2, atol=1e-6)
    local_only = run_gather(tmp_path, 2, "local")  # without gathering each process sees 3 negatives, not 7
    assert abs(local_only["loss"] - single["loss"]) > 1e-3
