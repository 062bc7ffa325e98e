"""An architecture search's report.html, drawn from nas.json alone: the Pareto front of validation top-1 against
MACs (and latency when measured) with the reference network and the zoo's small-image models marked, the front as
ready recipes, and the zero-cost proxies' rank correlations beside the parameter count's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from reprocls import run_layout as layout
from reprocls.reports import html
from reprocls.reports.plots import save
from reprocls.reports.tables import percent

CAPTION = ("Every trained candidate's validation top-1 after the proxy schedule against its cost; the front (line) "
           "holds those no other candidate beats on both. The reference network trained with the same schedule is "
           "the star; grey ticks on the top axis mark the zoo's small-image models at this input size (cost only). "
           "The dashed line is the budget.")


def plot_front(summary: dict[str, Any], cost: str = "macs") -> Figure:
    """Validation top-1 vs MACs (millions) or latency (ms) of the trained candidates, with front and reference."""
    scale, label = (1e6, "MACs per image (millions)") if cost == "macs" else (1.0, "latency (ms)")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    points = [r for r in summary["candidates"] if r["val_top1"] is not None and r.get(cost) is not None]
    ax.scatter([r[cost] / scale for r in points], [100 * r["val_top1"] for r in points], s=18, alpha=0.5,
               label="candidates")
    front = summary["front"] if cost == "macs" else summary["front_latency"]
    if front:
        ax.plot([r[cost] / scale for r in front], [100 * r["val_top1"] for r in front], "-o", color="C1", label="front")
    reference = summary.get("reference")
    if reference is not None and reference.get(cost) is not None:
        ax.scatter([reference[cost] / scale], [100 * reference["val_top1"]], marker="*", s=160, color="C3",
                   label=summary["reference_name"], zorder=3)
    budget = summary["budget_macs"] if cost == "macs" else summary.get("budget_latency_ms")
    if budget:
        ax.axvline(budget / scale, linestyle="--", color="grey", linewidth=1, label="budget")
    if cost == "macs" and summary.get("zoo"):
        top = ax.secondary_xaxis("top")
        top.set_ticks([r["macs"] / 1e6 for r in summary["zoo"]], labels=[r["model"] for r in summary["zoo"]],
                      rotation=60, fontsize=6, color="grey")
    ax.set_xlabel(label)
    ax.set_ylabel("val top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def front_table(front: list[dict[str, Any]]) -> str:
    rows = [["trial", "val top-1", "MACs (M)", "params (M)", "latency (ms)", "knobs", "recipe"]]
    for r in front:
        knobs = " ".join(f"{k}={v}" for k, v in r["knobs"].items())
        latency = f"{r['latency_ms']:.2f}" if r.get("latency_ms") is not None else "—"
        rows.append([str(r["trial"]), percent(r["val_top1"]), f"{r['macs'] / 1e6:.2f}", f"{r['params'] / 1e6:.3f}",
                     latency, knobs, Path(r.get("recipe", "")).name])
    return html.table(rows, numeric_columns=(1, 2, 3, 4))


def proxy_table(summary: dict[str, Any]) -> str:
    rho = summary["rank_correlation"]
    baseline = rho.get("params")
    rows = [["score", "Spearman with val top-1", "vs the parameter count"]]
    for name, value in sorted(rho.items(), key=lambda item: item[0] != "params"):
        versus = "baseline" if name == "params" else ("—" if value is None or baseline is None
                                                      else ("beats it" if value > baseline else "does not beat it"))
        rows.append([name, "n/a" if value is None else f"{value:+.2f}", versus])
    return html.table(rows, numeric_columns=(1,))


def write_nas_page(folder: str | Path) -> Path:
    """report.html (and pareto.png) of a finished architecture search."""
    folder = Path(folder)
    summary = json.loads((folder / layout.NAS_JSON).read_text())
    save(plot_front(summary), folder / layout.PARETO_PNG)
    reference = summary.get("reference")
    cards = [("space", summary["space"]), ("budget", f"{summary['budget_macs'] / 1e6:.2f} M MACs"),
             ("trained", str(summary["trained"])), ("never trained (over budget)", str(summary["never_trained"])),
             ("wall time", f"{summary['wall_time_s']:.0f} s")]
    if reference is not None:
        cards.append((f"reference {summary['reference_name']}",
                      f"{percent(reference['val_top1'])} at {reference['macs'] / 1e6:.2f} M MACs"))
    sections = [("Pareto front", html.figure(folder / layout.PARETO_PNG, CAPTION, alt="accuracy vs MACs")),
                ("Front members (ready recipes)", front_table(summary["front"]) + html.paragraph(
                    "Confirm a member with the full schedule over seeds: reprocls reproduce front/<recipe> --seeds 3 "
                    "(and the reference's recipe the same way); the search's scores are single-seed proxy "
                    "scores."))]
    if summary.get("front_latency"):
        sections.append(("Accuracy vs latency", html.figure(save(plot_front(summary, "latency_ms"),
                                                                 folder / "pareto_latency.png"), "", alt="latency")))
    sections.append(("Zero-cost proxies vs the parameter count", proxy_table(summary)))
    document = html.page(f"{summary['space']} architecture search", sections,
                         subtitle=summary["objective"], intro=html.cards(cards))
    return html.write_page(folder / layout.REPORT_HTML, document)
