"""The numbers an imbalanced task is judged by: precision, recall and F1 per class, macro-F1 and balanced accuracy
(exact arithmetic on the confusion matrix), and for two classes ROC-AUC, PR-AUC and the curves (torchmetrics,
imported only there: it costs every process seconds at start), and an operating threshold chosen on validation for
a target recall of the positive class."""

from __future__ import annotations

import math
from typing import Any

import torch

CURVE_POINTS = 200  # points kept of each curve for the report (the numbers are computed on all of them)


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's and torchmetrics' zero_division=0)."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.zeros_like(numerator))


def class_report(confusion: torch.Tensor, classes: list[str]) -> dict[str, Any]:
    """Precision, recall, F1 and support per class; macro-F1 and balanced accuracy over the classes present."""
    confusion = confusion.cpu().double()  # confusion[true, predicted]
    hits, support, predicted = confusion.diagonal(), confusion.sum(1), confusion.sum(0)
    precision, recall = _ratio(hits, predicted), _ratio(hits, support)
    f1 = _ratio(2 * hits, support + predicted)  # 2PR / (P + R), 0 when the class is neither present nor predicted
    per_class = {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist()}
    present = [i for i, n in enumerate(support.tolist()) if n > 0]
    macro = lambda values: sum(values[i] for i in present) / len(present) if present else math.nan  # noqa: E731
    report: dict[str, Any] = {key: dict(zip(classes, values)) for key, values in per_class.items()}
    report["support"] = dict(zip(classes, [int(n) for n in support.tolist()]))
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
    from torchmetrics.functional.classification import (binary_auroc, binary_average_precision,
                                                        binary_precision_recall_curve, binary_roc)

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
