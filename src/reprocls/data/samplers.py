"""Epoch orders shared by every loader: seeded per epoch, repeated augmentation, and sharding across processes."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


def epoch_order(n: int, seed: int, epoch: int, repeats: int = 1, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The training order of one epoch; with repeats r, each of n/r images appears r times, copies side by side.
    With per-image `weights` (balanced sampling) n images are drawn with replacement in proportion to them."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if weights is not None:
        order = torch.multinomial(weights.double(), n // repeats + (n % repeats > 0), replacement=True, generator=generator)
    else:
        order = torch.randperm(n, generator=generator)
    return order.repeat_interleave(repeats)[:n] if repeats > 1 else order


def balanced_weights(labels: torch.Tensor) -> torch.Tensor:
    """Per-image weights 1 / (images of its class): every class is drawn equally often."""
    counts = torch.bincount(labels.long())
    return 1.0 / counts[labels.long()].double()


def global_batches(n: int, batch_size: int, world_size: int) -> int:
    """Full global batches (batch_size images on each of world_size processes) in an epoch of n images."""
    return n // (batch_size * world_size)


def rank_slice(step: int, batch_size: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous block of global batch `step` within the epoch order."""
    start = step * batch_size * world_size + rank * batch_size
    return slice(start, start + batch_size)


class EpochSampler(Sampler[tuple[int, int, int, int]]):
    """Training items for file-backed data: this rank's block of every global batch, in epoch_order.

    Each item is (index, seed, epoch, position): the dataset seeds the image's random transform from the last three,
    so augmentation is the same whatever the worker count and when an epoch is resumed part way.
    """

    def __init__(self, n: int, *, batch_size: int, seed: int, repeats: int = 1, rank: int = 0, world_size: int = 1,
                 weights: torch.Tensor | None = None) -> None:
        self.n, self.batch_size, self.seed, self.repeats, self.weights = n, batch_size, seed, repeats, weights
        self.rank, self.world_size, self.epoch, self.start = rank, world_size, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch to draw, skipping its first `start` items (a resumed epoch)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return global_batches(self.n, self.batch_size, self.world_size) * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int, int, int]]:
        order = epoch_order(self.n, self.seed, self.epoch, self.repeats, self.weights)
        position = 0
        for step in range(global_batches(self.n, self.batch_size, self.world_size)):
            block = order[rank_slice(step, self.batch_size, self.rank, self.world_size)]
            for i, index in enumerate(block.tolist()):
                if position >= self.start:
                    yield index, self.seed, self.epoch, step * self.batch_size * self.world_size + self.rank * self.batch_size + i
                position += 1


def shard_indices(n: int, rank: int, world_size: int) -> torch.Tensor:
    """Every index exactly once across ranks (no padding), so distributed evaluation counts each image once."""
    return torch.arange(rank, n, world_size)


class ShardSampler(Sampler[int]):
    """Evaluation indices of this rank: a strided share without the duplicates DistributedSampler pads with."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.indices = shard_indices(n, rank, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices.tolist())
