"""What a compressed model costs at inference: latency per batch size, measured the same way for every variant."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn


SPREAD_WARNING = 0.2  # interquartile range over median above which a timing is called unsteady


@dataclass(frozen=True)
class Latency:
    """Milliseconds of one forward pass: the median over `repeats` timed calls and the quartiles around it."""

    median: float
    q1: float
    q3: float
    repeats: int

    @property
    def spread(self) -> float:
        """Interquartile range as a share of the median (0.05: the middle half of the timings within 5 %)."""
        return (self.q3 - self.q1) / self.median if self.median else 0.0

    def text(self) -> str:
        return f"{self.median:.2f} ms (IQR {self.q1:.2f}-{self.q3:.2f}, {self.repeats} runs)"


@torch.inference_mode()
def latency(model: nn.Module, sample: torch.Tensor, batch: int, *, warmup: int = 5, repeats: int = 15,
            min_seconds: float = 0.5) -> Latency:
    """Median and quartiles of one forward pass over `batch` copies of `sample` (C, H, W), after warm-up calls
    (which also trigger any compilation for that shape and settle the allocator)."""
    inputs = sample.unsqueeze(0).expand(batch, *sample.shape).contiguous()
    for _ in range(warmup):
        model(inputs)
    timings: list[float] = []
    started = time.perf_counter()
    while len(timings) < repeats or (time.perf_counter() - started < min_seconds and len(timings) < 10 * repeats):
        begin = time.perf_counter()
        model(inputs)
        timings.append((time.perf_counter() - begin) * 1000)
    q1, median, q3 = statistics.quantiles(timings, n=4)
    return Latency(statistics.median(timings), q1, q3, len(timings))


def latency_ms(model: nn.Module, sample: torch.Tensor, batch: int, **options: float) -> float:
    """Median milliseconds of one forward pass (see `latency`)."""
    return latency(model, sample, batch, **options).median  # type: ignore[arg-type]


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
    latency_spread: dict[int, float] = field(default_factory=dict)  # interquartile range / median per batch size
