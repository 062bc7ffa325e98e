"""What a compressed model costs at inference: latency per batch size, measured the same way for every variant."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn


@torch.inference_mode()
def latency_ms(model: nn.Module, sample: torch.Tensor, batch: int, *, warmup: int = 3, repeats: int = 15,
               min_seconds: float = 0.5) -> float:
    """Median milliseconds of one forward pass over `batch` copies of `sample` (C, H, W), after warm-up calls
    (which also trigger any compilation for that shape)."""
    inputs = sample.unsqueeze(0).expand(batch, *sample.shape).contiguous()
    for _ in range(warmup):
        model(inputs)
    timings: list[float] = []
    started = time.perf_counter()
    while len(timings) < repeats or (time.perf_counter() - started < min_seconds and len(timings) < 10 * repeats):
        begin = time.perf_counter()
        model(inputs)
        timings.append((time.perf_counter() - begin) * 1000)
    return statistics.median(timings)


@dataclass
class Variant:
    """One model in the comparison, measured on the same test split and inputs as the others."""

    name: str
    top1: float
    params: int | None  # None for INT8 programs, whose weights are graph constants rather than parameters
    size_bytes: int
    latency_ms: dict[int, float]
    macs: int | None = None
    sparsity: float | None = None
    notes: str = ""
