"""The interface every reprocls model shares, so engines and tools treat families alike."""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Classifier(nn.Module):
    """forward(x) = forward_head(forward_features(x)); the head can be swapped for a new task."""

    stem_stride: int = 1  # how much the stem downsamples; an aggressive stem on tiny inputs is a classic pitfall
    default_input_size: tuple[int, int, int] = (3, 224, 224)
    designed_input_size: int = 224  # the resolution the architecture was designed for; small-image variants say 32
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


class PooledFcClassifier(Classifier):
    """Global average pooling then one linear layer named `fc` (ResNet, WideResNet)."""

    fc: nn.Module
    num_features: int

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.flatten(x.mean((2, 3)), 1)
        return x if pre_logits else self.fc(x)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = linear_head(self.num_features, num_classes)


def linear_head(in_features: int, num_classes: int) -> nn.Module:
    """A linear classifier, or an identity when num_classes is 0 (feature extraction)."""
    return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()


@contextlib.contextmanager
def restored_buffers(module: nn.Module) -> Iterator[None]:
    """Undo, on exit, changes to the module's buffers (BatchNorm running statistics) made inside the block."""
    saved = [(buffer, buffer.clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def checkpoint_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Keep only the block's input and recompute it in backward, replaying the same RNG (dropout, drop path).

    The replay would count the batch in BatchNorm's running statistics a second time, so its buffer updates are
    undone; under torch.compile (which rejects that hook) the plain checkpoint is used.
    """
    if torch.compiler.is_compiling() or not any(True for _ in block.buffers()):
        return checkpoint(block, x, use_reentrant=False)
    return checkpoint(block, x, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), restored_buffers(block)))


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, checkpointing: bool) -> torch.Tensor:
    """Run blocks in order, checkpointing each one while training with gradients if asked."""
    for block in blocks:
        x = checkpoint_block(block, x) if checkpointing and torch.is_grad_enabled() else block(x)
    return x
