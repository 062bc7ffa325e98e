"""A loss that turns non-finite on one DDP process only stops every process with the same error, in pretraining and
in supervised training: a stop taken by one process alone would leave the others waiting in their next all-reduce
until torchrun killed them, with no word of why."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent

WORKER = """
import json, os, sys, torch, torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from reprocls.engine.selfsup.train import PretrainState, pretrain_one_epoch
from reprocls.engine.train import Trainee, TrainSettings, TrainState, train_one_epoch

dist.init_process_group("gloo")
rank, loop = dist.get_rank(), sys.argv[2]
BAD_STEP = 2  # the step whose loss is NaN on rank 1 only


class Method(nn.Module):
    uses_momentum = False

    def __init__(self):
        super().__init__()
        self.layer, self.calls = nn.Linear(3, 3), 0

    def forward(self, first, second=None, momentum=0.0):
        self.calls += 1
        out = self.layer(first)
        if second is not None:  # pretraining: a loss; supervised: logits
            out = (out - second).pow(2).mean()
        return out * float("nan") if rank == 1 and self.calls == BAD_STEP + 1 else out


class Batches(list):
    def set_epoch(self, epoch, start=0): ...


torch.manual_seed(0)
method = Method()
model = DistributedDataParallel(method)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
try:
    if loop == "pretrain":
        data = [(torch.randn(4, 3), torch.randn(4, 3), None) for _ in range(5)]
        pretrain_one_epoch(model, data, optimizer, PretrainState(total_steps=5))
    else:
        data = Batches([(torch.randn(4, 3), torch.randint(0, 3, (4,))) for _ in range(5)])
        scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        train_one_epoch(Trainee(model, optimizer, scheduler, nn.CrossEntropyLoss()), data,
                        TrainSettings(device=torch.device("cpu"), progress=False))
    outcome = {"error": None}
except FloatingPointError as error:
    outcome = {"error": str(error)}
outcome["calls"] = method.calls
with open(f"{sys.argv[1]}.{rank}", "w") as file:
    json.dump(outcome, file)
# leave together, then skip interpreter teardown: a process that exits while its peer still holds the Gloo group
# can abort on the closed connection ("terminate called without an active exception") after both have reported
dist.barrier()
del model
dist.destroy_process_group()
os._exit(0)
"""


@pytest.mark.parametrize("loop", ["pretrain", "train"])
def test_a_loss_non_finite_on_one_process_stops_both_with_the_step(tmp_path: Path, loop: str) -> None:
    script, out = tmp_path / "worker.py", tmp_path / "outcome"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(out), loop], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]  # neither process died: both reported and left the group
    outcomes = [json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1)]
    assert [o["calls"] for o in outcomes] == [3, 3]  # both stopped at the bad step, neither trained on
    step = "at step 2" if loop == "pretrain" else "step 3"
    for outcome in outcomes:
        assert outcome["error"] is not None and ("non-finite" in outcome["error"] or "not finite" in outcome["error"])
        assert step in outcome["error"]
    assert "this process: nan" in outcomes[1]["error"] and "this process: nan" not in outcomes[0]["error"]
