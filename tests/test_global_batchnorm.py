"""GlobalBatchNorm: over two Gloo processes, one SimCLR step of ResNet-20 with its BatchNorm projection gets the
gradients of one process holding the whole batch, as close to an fp64 computation as torch's own BatchNorm in fp32
gets; with each process's own BatchNorm statistics it does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from reprocls.engine.distributed import GlobalBatchNorm, convert_to_global_batchnorm

REPO = Path(__file__).parent.parent

STEP_WORKER = """
import copy, json, sys, torch, torch.distributed as dist
from reprocls.engine.distributed import convert_to_global_batchnorm
from reprocls.engine.selfsup.losses import nt_xent
from reprocls.engine.selfsup.methods import mlp
from reprocls.models import create_model
dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
backbone = create_model("resnet20", num_classes=10, in_chans=1)
backbone.reset_classifier(0)
network = torch.nn.Sequential(backbone, mlp([64, 128, 32], batchnorm=True))
first, second = torch.randn(32, 1, 28, 28), torch.randn(32, 1, 28, 28)

def gradients(model, x1, x2, gather):
    nt_xent(model(x1), model(x2), 0.5, gather=gather).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])

exact = gradients(copy.deepcopy(network).double(), first.double(), second.double(), False)
single = gradients(copy.deepcopy(network), first, second, False).double()
share = slice(rank * 16, (rank + 1) * 16)
model = copy.deepcopy(network) if sys.argv[2] == "local" else convert_to_global_batchnorm(copy.deepcopy(network))
mine = gradients(model, first[share], second[share], True)
dist.all_reduce(mine)
mine = mine.double() / 2
error = lambda g: ((g - exact).norm() / exact.norm()).item()
if rank == 0:
    json.dump({"single": error(single), "two": error(mine), "apart": ((mine - single).norm() / single.norm()).item()},
              open(sys.argv[1], "w"))
dist.destroy_process_group()
"""


def two_processes(tmp_path: Path, batchnorm: str) -> dict[str, float]:
    script, out = tmp_path / "step.py", tmp_path / f"{batchnorm}.json"
    script.write_text(STEP_WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(out), batchnorm], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def test_global_batchnorm_over_two_processes_gets_one_processs_gradients(tmp_path: Path) -> None:
    shared = two_processes(tmp_path, "global")
    assert shared["two"] <= max(2 * shared["single"], 1e-5)  # as near fp64 as one fp32 process is
    assert shared["apart"] < 1e-2
    local = two_processes(tmp_path, "local")
    assert local["apart"] > 20 * shared["apart"] and local["apart"] > 1e-2  # per-process statistics: another step


def test_conversion_keeps_parameters_statistics_and_plain_behaviour_alone() -> None:
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.3), torch.nn.ReLU(),
                                  torch.nn.Flatten(), torch.nn.Linear(4 * 36, 8), torch.nn.BatchNorm1d(8))
    network[1].running_mean.fill_(0.5)
    x = torch.randn(16, 1, 8, 8)
    expected = network(x)
    converted = convert_to_global_batchnorm(network)
    assert isinstance(converted[1], GlobalBatchNorm) and isinstance(converted[5], GlobalBatchNorm)
    assert converted[1].momentum == 0.3 and converted[1].num_batches_tracked.item() == 1
    assert torch.allclose(converted(x), expected, atol=1e-6)  # no process group: plain BatchNorm
    converted.eval()
    assert converted[1].running_mean.ne(0.5).all()  # the training pass above updated the statistics
