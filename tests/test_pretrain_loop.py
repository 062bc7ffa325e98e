"""The pretraining loop: one step per batch, the target momentum on its cosine schedule, labels never read, a
non-finite loss stopped with what to do; TwoViews serves two different views of the same image."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from reprocls.data.views import TwoViews, build_view, view_settings
from reprocls.engine.selfsup.losses import momentum_at
from reprocls.engine.selfsup.train import PretrainSettings, PretrainState, pretrain_one_epoch


class Recorder(nn.Module):
    """A stand-in method: a loss from one weight, and the momentum it was given at each step."""

    uses_momentum = True

    def __init__(self, loss_value: float | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.momenta: list[float] = []
        self.loss_value = loss_value

    def forward(self, first: torch.Tensor, second: torch.Tensor, momentum: float) -> torch.Tensor:
        self.momenta.append(momentum)
        loss = self.weight * (first - second).pow(2).mean()
        return loss * self.loss_value if self.loss_value is not None else loss


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor, None]]:
    torch.manual_seed(0)
    return [(torch.randn(4, 3), torch.randn(4, 3), None) for _ in range(n)]  # labels: None, never read


def test_each_batch_is_one_step_with_the_scheduled_momentum() -> None:
    method = Recorder()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1)
    state = PretrainState(step=0, total_steps=10)
    pretrain_one_epoch(method, batches(5), optimizer, state, settings=PretrainSettings(momentum=0.99))
    pretrain_one_epoch(method, batches(5), optimizer, state, settings=PretrainSettings(momentum=0.99))
    assert state.step == 10
    assert method.momenta == pytest.approx([momentum_at(step, 10, 0.99) for step in range(10)])
    assert method.momenta[0] == 0.99 and method.momenta[-1] == 1.0 and method.weight.item() < 1.0  # it trained


def test_a_non_finite_loss_stops_with_the_step_and_what_to_do() -> None:
    method = Recorder(loss_value=float("nan"))
    with pytest.raises(FloatingPointError, match=r"not finite at step 3 \(this process: nan\): lower optim.lr"):
        pretrain_one_epoch(method, batches(2), torch.optim.SGD(method.parameters(), lr=0.1),
                           PretrainState(step=3, total_steps=10))


def test_two_views_of_one_image_differ_and_carry_its_label(fmnist_splits) -> None:
    first, second = (build_view(s, 28, (0.286,), (0.353,)) for s in view_settings("byol", 28))
    data = TwoViews(fmnist_splits.train.subset(list(range(8))), first, second)
    torch.manual_seed(0)
    a, b, label = data[3]
    assert len(data) == 8 and a.shape == b.shape == (1, 28, 28) and label == fmnist_splits.train.labels[3]
    assert not torch.allclose(a, b)


def test_the_pretrain_block_is_typed_and_its_mistakes_named() -> None:
    from pathlib import Path

    from reprocls.config import ConfigError, load_config

    quickstart = Path(__file__).parent.parent / "configs/quickstart.yaml"
    assert load_config(quickstart).pretrain is None  # train recipes carry none
    config = load_config(quickstart, ["pretrain.method=moco_v2", "pretrain.queue_size=1024"])
    assert (config.pretrain.method, config.pretrain.queue_size, config.pretrain.momentum) == ("moco_v2", 1024, 0.99)
    with pytest.raises(ConfigError, match=r"pretrain.method: 'simclrr'.*Did you mean 'simclr'"):
        load_config(quickstart, ["pretrain.method=simclrr"])
    with pytest.raises(ConfigError, match=r"pretrain.momentum"):
        load_config(quickstart, ["pretrain.momentum=1.5"])
