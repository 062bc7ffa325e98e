"""Classification metrics computed on the device from logits: top-k, confusion matrix, per-class accuracy."""

from __future__ import annotations

import torch


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows have the target among the k highest logits, for each k (k capped at the class count)."""
    k_max = min(max(ks), logits.shape[1])
    top = logits.topk(k_max, dim=1).indices
    hits = top.eq(targets[:, None])
    return [int(hits[:, : min(k, k_max)].any(1).sum()) for k in ks]


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[true, predicted] as an int64 (C, C) tensor."""
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> list[float]:
    """Recall of each class (diagonal over row sums); NaN for a class with no samples."""
    totals = confusion.sum(1).double()
    return (confusion.diag().double() / totals).tolist()
