"""Statistics over repeated runs (seeds): mean, sample std and the Student t interval, without scipy."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

# Two-sided 95 % Student t quantiles t(0.975, df) for df = 1..30; larger df use a Cornish-Fisher expansion.
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z_975 = 1.959964


def t_quantile_975(df: int) -> float:
    """t(0.975, df) without scipy: the table up to 30 degrees of freedom, within 1e-3 beyond."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = Z_975
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def describe(values: Sequence[float], bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict[str, Any]:
    """n, mean, sample std (ddof=1), 95 % Student t interval of the mean (clipped to `bounds`: an accuracy's to
    [0, 1], a time's to [0, inf)), min and max; std and interval are None for one value, since one seed says
    nothing about the spread."""
    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("describe needs at least one value")
    mean = float(data.mean())
    stats: dict[str, Any] = {"n": int(data.size), "mean": mean, "std": None, "ci95": None, "min": float(data.min()),
                             "max": float(data.max()), "values": data.tolist()}
    if data.size >= 2:
        std = float(data.std(ddof=1))
        half_width = t_quantile_975(data.size - 1) * std / math.sqrt(data.size)
        low, high = bounds
        stats.update(std=std, ci95=[max(low, mean - half_width), min(high, mean + half_width)])
    else:
        stats["note"] = "one seed: std and confidence interval are undefined; run more seeds"
    return stats
