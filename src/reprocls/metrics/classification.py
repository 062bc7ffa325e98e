"""The numbers an imbalanced task is judged by, computed with torchmetrics: precision, recall and F1 per class,
macro-F1 and balanced accuracy (from the confusion matrix), and for two classes ROC-AUC, PR-AUC, the curves, and
an operating threshold chosen on validation for a target recall of the positive class."""

from __future__ import annotations

import math
from typing import Any

import torch
from torchmetrics.functional.classification import (binary_auroc, binary_average_precision,
                                                    binary_precision_recall_curve, binary_roc, multiclass_f1_score,
                                                    multiclass_precision, multiclass_recall)

CURVE_POINTS = 200  # points kept of each curve for the report (the numbers are computed on all of them)


def expand_confusion(confusion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions, targets) with confusion[i, j] pairs (j, i): every confusion-matrix metric is exact on these."""
    classes = confusion.shape[0]
    counts = confusion.flatten().long()
    pairs = torch.arange(classes * classes).repeat_interleave(counts)
    return pairs % classes, pairs // classes


def class_report(confusion: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class; macro-F1 and balanced accuracy over the classes present."""
    confusion = confusion.cpu()
    predictions, targets = expand_confusion(confusion)
    count = len(classes)
    per_class = {name: metric(predictions, targets, num_classes=count, average=None).tolist()
                 for name, metric in (("precision", multiclass_precision), ("recall", multiclass_recall),
                                      ("f1", multiclass_f1_score))}
    support = confusion.sum(1).tolist()
    present = [i for i, n in enumerate(support) if n > 0]
    macro = lambda values: sum(values[i] for i in present) / len(present) if present else math.nan  # noqa: E731
    report: dict[str, Any] = {key: dict(zip(classes, values)) for key, values in per_class.items()}
    report["support"] = dict(zip(classes, [int(n) for n in support]))
    report["macro_f1"] = macro(per_class["f1"])
    report["balanced_accuracy"] = macro(per_class["recall"])
    return report


def positive_scores(scores: torch.Tensor, positive: int) -> torch.Tensor:
    """P(positive class) from the stored P(class 1) of a two-class model."""
    return scores if positive == 1 else 1 - scores


def threshold_for_recall(scores: torch.Tensor, is_positive: torch.Tensor, target_recall: float) -> float:
    """The highest decision threshold that keeps at least `target_recall` of the positive images (score >= t)."""
    positives = scores[is_positive.bool()].sort(descending=True).values
    if len(positives) == 0:
        return 0.5
    needed = max(1, math.ceil(target_recall * len(positives) - 1e-9))
    return float(positives[needed - 1])


def at_threshold(scores: torch.Tensor, is_positive: torch.Tensor, threshold: float) -> dict[str, float]:
    """Recall, precision and false-positive rate when score >= threshold means positive."""
    predicted = scores >= threshold
    truth = is_positive.bool()
    hits = int((predicted & truth).sum())
    recall = hits / max(int(truth.sum()), 1)
    precision = hits / int(predicted.sum()) if int(predicted.sum()) else math.nan
    false_positive_rate = int((predicted & ~truth).sum()) / max(int((~truth).sum()), 1)
    return {"recall": recall, "precision": precision, "false_positive_rate": false_positive_rate}


def _thinned(*series: torch.Tensor) -> list[list[float]]:
    """At most CURVE_POINTS evenly spaced points of each series (the first and last always kept)."""
    length = len(series[0])
    keep = torch.linspace(0, length - 1, min(length, CURVE_POINTS)).round().long() if length else torch.zeros(0).long()
    return [values[keep].tolist() for values in series]


def binary_report(scores: torch.Tensor, labels: torch.Tensor, positive: int, threshold: float) -> dict[str, Any]:
    """ROC-AUC, PR-AUC (average precision), the two curves thinned for plotting, and the confusion at `threshold`."""
    scores, is_positive = positive_scores(scores.float().cpu(), positive), (labels.cpu() == positive).long()
    fpr, tpr, _ = binary_roc(scores, is_positive)
    precision, recall, _ = binary_precision_recall_curve(scores, is_positive)
    fpr_points, tpr_points = _thinned(fpr, tpr)
    precision_points, recall_points = _thinned(precision, recall)
    return {"roc_auc": float(binary_auroc(scores, is_positive)), "pr_auc": float(binary_average_precision(scores, is_positive)),
            "positive_rate": float(is_positive.float().mean()), "threshold": threshold,
            "at_threshold": at_threshold(scores, is_positive, threshold),
            "curves": {"roc": {"fpr": fpr_points, "tpr": tpr_points},
                       "pr": {"precision": precision_points, "recall": recall_points}}}
