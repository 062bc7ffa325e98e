"""The linear probe: a softmax classifier trained on frozen, precomputed features, its weight decay chosen on the
validation split only; the test split is scored once, with the chosen classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

WEIGHT_DECAYS = (0.0, 1e-4, 1e-3, 1e-2)


@dataclass(frozen=True)
class ProbeResult:
    """The chosen weight decay, validation accuracy for every one tried, and the test accuracy of the chosen one."""

    weight_decay: float
    val_accuracy: dict[float, float]
    test_accuracy: float | None


def _fit(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float, steps: int
         ) -> torch.nn.Linear:
    """Full-batch L-BFGS on the cross-entropy plus an L2 penalty on the weights (the bias is not decayed)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(features.shape[1], num_classes)
    optimizer = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(head(features), labels) + weight_decay * head.weight.pow(2).sum() / 2
        loss.backward()
        return loss

    optimizer.step(closure)
    return head


def accuracy(head: torch.nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return (head(features).argmax(dim=1) == labels).float().mean().item()


def linear_probe(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], num_classes: int,
                 *, test: tuple[torch.Tensor, torch.Tensor] | None = None,
                 weight_decays: tuple[float, ...] = WEIGHT_DECAYS, steps: int = 200) -> ProbeResult:
    """Standardise with the training features' statistics, fit one classifier per weight decay, keep the best on
    validation (ties: the stronger decay), and score test with it alone."""
    mean, std = train[0].mean(dim=0), train[0].std(dim=0) + 1e-6
    scale = lambda x: (x.float() - mean) / std  # noqa: E731
    heads, scores = {}, {}
    for decay in weight_decays:
        heads[decay] = _fit(scale(train[0]), train[1], num_classes, decay, steps)
        scores[decay] = accuracy(heads[decay], scale(val[0]), val[1])
    chosen = max(weight_decays, key=lambda d: (scores[d], d))
    tested = accuracy(heads[chosen], scale(test[0]), test[1]) if test is not None else None
    return ProbeResult(chosen, scores, tested)
