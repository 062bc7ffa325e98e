"""Epoch orders shared by every loader: seeded per epoch, repeated augmentation, and sharding across processes."""

from __future__ import annotations

from typing import Iterator

import numpy as np
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


def covering_order(n: int, seed: int, epoch: int, chunks: np.ndarray | None = None, window: int = 4) -> torch.Tensor:
    """A permutation of n samples that depends only on (seed, epoch), never on the process count. With each
    sample's chunk given, chunks are shuffled and samples shuffled within each run of `window` consecutive chunks,
    so readers of remote shards hold a few chunks at a time instead of all of them."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if chunks is None or len(chunks) == 0:
        return torch.randperm(n, generator=generator)
    chunk_ids = torch.as_tensor(np.asarray(chunks), dtype=torch.long)
    count = int(chunk_ids.max()) + 1
    place = torch.empty(count, dtype=torch.long)
    place[torch.randperm(count, generator=generator)] = torch.arange(count)
    key = (place[chunk_ids] // window).double() + torch.rand(n, generator=generator, dtype=torch.float64)
    return torch.argsort(key, stable=True)


def covering_steps(n: int, global_batch: int) -> list[tuple[int, int]]:
    """(start, end) in the epoch order of each optimizer step: full global batches, the last one also taking the
    remainder (at most global_batch - 1 more images), so every image is in exactly one step."""
    steps = max(n // global_batch, 1)
    return [(k * global_batch, (k + 1) * global_batch if k < steps - 1 else n) for k in range(steps)]


def even_parts(start: int, end: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) cut into `parts` contiguous pieces whose sizes differ by at most one."""
    size = end - start
    return [(start + size * i // parts, start + size * (i + 1) // parts) for i in range(parts)]


class CoveringBatchSampler(Sampler[list[tuple[int, int, int, int]]]):
    """Micro-batches of this rank for sharded data: every image exactly once per epoch summed over processes.

    The epoch order is covering_order (the same for any process count); step k is its k-th block of the effective
    batch (the last block takes the remainder); rank r takes the r-th of world_size even pieces of each block, cut
    into micro_batches even pieces. So with the same effective batch, a step trains on the same images for any
    process count. Items are (index, seed, epoch, position in the order), as EpochSampler's.
    """

    def __init__(self, n: int, *, batch_size: int, seed: int, micro_batches: int = 1, rank: int = 0,
                 world_size: int = 1, chunks: np.ndarray | None = None, window: int = 4) -> None:
        if n < world_size * micro_batches:
            raise ValueError(f"{n} training images cannot give each of {world_size} process(es) {micro_batches} "
                             "micro-batch(es)")
        self.n, self.batch_size, self.seed, self.micro = n, batch_size, seed, micro_batches
        self.rank, self.world_size, self.chunks, self.window = rank, world_size, chunks, window
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The epoch to draw, skipping its first `start` micro-batches (a resumed epoch)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return len(covering_steps(self.n, self.batch_size * self.world_size)) * self.micro

    def __iter__(self) -> Iterator[list[tuple[int, int, int, int]]]:
        order = covering_order(self.n, self.seed, self.epoch, self.chunks, self.window).tolist()
        count = 0
        for start, end in covering_steps(self.n, self.batch_size * self.world_size):
            mine = even_parts(start, end, self.world_size)[self.rank]
            for low, high in even_parts(*mine, self.micro):
                if count >= self.start:
                    yield [(order[p], self.seed, self.epoch, p) for p in range(low, high)]
                count += 1
