"""A compression's comparison: the table (accuracy change, size, MACs, latency against the fp32 original) and the
accuracy-vs-latency figure, from the measured variants."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from reprocls.compress.measure import Variant  # noqa: E402


def comparison_rows(variants: list[Variant]) -> list[list[str]]:
    """The comparison table: accuracy change, size, MACs and latency relative to the fp32 original."""
    base = variants[0]
    batches = list(base.latency_ms)
    header = ["variant", "test top-1", "change", "params", "MACs", "zeros", "size"] + [f"batch {b}" for b in batches]
    rows = [header]
    for v in variants:
        lat = [f"{v.latency_ms[b]:.2f} ms ({base.latency_ms[b] / v.latency_ms[b]:.2f}x)" for b in batches]
        rows.append([v.name, f"{100 * v.top1:.2f} %", f"{100 * (v.top1 - base.top1):+.2f}",
                     f"{v.params / 1e6:.3f} M" if v.params is not None else "-",
                     f"{v.macs / 1e6:.1f} M" if v.macs is not None else "-",
                     f"{100 * v.sparsity:.0f} %" if v.sparsity is not None else "-",
                     f"{v.size_bytes / 2**20:.2f} MiB ({v.size_bytes / base.size_bytes:.2f}x)", *lat])
    return rows


def plot_comparison(variants: list[Variant]) -> Figure:
    """Accuracy against latency at the largest batch, marker area proportional to size."""
    batch = max(variants[0].latency_ms)
    fig, ax = plt.subplots(figsize=(6, 4))
    biggest = max(v.size_bytes for v in variants)
    for v in variants:
        ax.scatter(v.latency_ms[batch], 100 * v.top1, s=40 + 600 * v.size_bytes / biggest, alpha=0.6)
        ax.annotate(f"{v.name}\n{v.size_bytes / 2**20:.2f} MiB", (v.latency_ms[batch], 100 * v.top1),
                    textcoords="offset points", xytext=(8, 4), fontsize=8)
    ax.set_xlabel(f"latency at batch {batch} (ms, CPU)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("accuracy vs latency (marker area: size)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
