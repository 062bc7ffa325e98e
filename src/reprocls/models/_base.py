"""The interface every reprocls model shares, so engines and tools treat families alike."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """forward(x) = forward_head(forward_features(x)); the head can be swapped for a new task."""

    stem_stride: int = 1  # how much the stem downsamples; an aggressive stem on tiny inputs is a classic pitfall
    default_input_size: tuple[int, int, int] = (3, 224, 224)
    grad_checkpointing: bool = False

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output before pooling."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, flatten and classify; `pre_logits=True` returns the pooled embedding."""
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        """The final layer that maps embeddings to classes."""
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer with a fresh one for `num_classes` (0 gives an identity head)."""
        raise NotImplementedError

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to trade compute for memory."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def linear_head(in_features: int, num_classes: int) -> nn.Module:
    """A linear classifier, or an identity when num_classes is 0 (feature extraction)."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()
