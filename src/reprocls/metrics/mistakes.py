"""The most confident mistakes of a pass over a split: the images a reader should look at first."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Mistake:
    """One misclassified image: its index in the split, the classes, and how sure the model was."""

    index: int
    true: int
    predicted: int
    confidence: float  # softmax probability of the (wrong) predicted class
    true_confidence: float  # softmax probability the model left for the true class

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class PredictionLog:
    """Per image of a split, in split order: the predicted class, its probability and the true class's probability.

    Keeps three numbers per image instead of the logits, so a pass over a large split costs almost no memory.
    """

    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels.cpu().long()
        self.predicted: list[torch.Tensor] = []
        self.confidence: list[torch.Tensor] = []
        self.true_confidence: list[torch.Tensor] = []
        self.seen = 0

    def add(self, logits: torch.Tensor) -> None:
        """Record the logits of the next images of the split (rows beyond the split's end mark the log invalid)."""
        probabilities = logits.detach().float().softmax(1).cpu()
        rows = probabilities.shape[0]
        labels = self.labels[self.seen:self.seen + rows]
        self.seen += rows
        if len(labels) < rows:
            return
        confidence, predicted = probabilities.max(1)
        self.predicted.append(predicted)
        self.confidence.append(confidence)
        self.true_confidence.append(probabilities.gather(1, labels[:, None])[:, 0])

    @property
    def complete(self) -> bool:
        """Whether exactly every image of the split was recorded once."""
        return self.seen == len(self.labels)

    def wrong(self) -> torch.Tensor:
        """A boolean mask over the recorded images: True where the prediction is not the label."""
        if not self.predicted:
            return torch.zeros(0, dtype=torch.bool)
        predicted = torch.cat(self.predicted)
        return predicted != self.labels[:len(predicted)]

    def most_confident_mistakes(self, limit: int) -> list[Mistake]:
        """Up to `limit` misclassified images, the most confident first (ties: lower index first)."""
        if not self.predicted:
            return []
        predicted, confidence = torch.cat(self.predicted), torch.cat(self.confidence)
        true_confidence = torch.cat(self.true_confidence)
        wrong = torch.nonzero(self.wrong()).flatten()
        order = torch.sort(confidence[wrong], descending=True, stable=True).indices[:limit]
        return [Mistake(int(i), int(self.labels[i]), int(predicted[i]), float(confidence[i]), float(true_confidence[i]))
                for i in wrong[order].tolist()]


class RecordingModel(nn.Module):
    """Passes images through `model` and hands every batch's logits to a PredictionLog on the way out."""

    def __init__(self, model: nn.Module, log: PredictionLog) -> None:
        super().__init__()
        self.model, self.log = model, log

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        self.log.add(logits)
        return logits


def covers_split(log: PredictionLog, confusion: torch.Tensor) -> bool:
    """Whether a log recorded during evaluation matches it: every image once, and the same number of mistakes
    as the confusion matrix counts (a loader that shards or reorders the split fails this)."""
    errors = int(confusion.sum() - confusion.trace())
    return log.complete and int(log.wrong().sum()) == errors
