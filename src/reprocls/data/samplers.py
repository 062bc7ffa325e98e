"""Epoch orders shared by every loader: seeded per epoch, repeated augmentation, and sharding across processes."""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler


def epoch_order(n: int, seed: int, epoch: int, repeats: int = 1) -> torch.Tensor:
    """The training order of one epoch; with repeats r, each of n/r images appears r times, copies side by side."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator)
    return order.repeat_interleave(repeats)[:n] if repeats > 1 else order


def global_batches(n: int, batch_size: int, world_size: int) -> int:
    """Full global batches (batch_size images on each of world_size processes) in an epoch of n images."""
    return n // (batch_size * world_size)


def rank_slice(step: int, batch_size: int, rank: int, world_size: int) -> slice:
    """This rank's contiguous block of global batch `step` within the epoch order."""
    start = step * batch_size * world_size + rank * batch_size
    return slice(start, start + batch_size)


class EpochSampler(Sampler[int]):
    """Training indices for file-backed data: this rank's block of every global batch, in epoch_order."""

    def __init__(self, n: int, *, batch_size: int, seed: int, repeats: int = 1, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.repeats = n, batch_size, seed, repeats
        self.rank, self.world_size, self.epoch = rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return global_batches(self.n, self.batch_size, self.world_size) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        order = epoch_order(self.n, self.seed, self.epoch, self.repeats)
        for step in range(global_batches(self.n, self.batch_size, self.world_size)):
            yield from order[rank_slice(step, self.batch_size, self.rank, self.world_size)].tolist()


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
