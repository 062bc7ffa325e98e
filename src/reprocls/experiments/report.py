"""What a person looks at after a run: loss/accuracy curves, the confusion matrix and report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and top-1 per epoch for train and validation, side by side."""
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o", label="train")
    ax_acc.plot(epochs, [100 * r["train_top1"] for r in history], marker="o", label="train")
    val = [r for r in history if "val_loss" in r]
    if val:
        ax_loss.plot([r["epoch"] for r in val], [r["val_loss"] for r in val], marker="s", label="val")
        ax_acc.plot([r["epoch"] for r in val], [100 * r["val_top1"] for r in val], marker="s", label="val")
    for ax, label in ((ax_loss, "loss"), (ax_acc, "top-1 (%)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_history(run_dir: Path) -> list[dict]:
    """The per-epoch records of a run's metrics.jsonl (empty when missing); an epoch logged twice keeps its later record."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    by_epoch: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def plot_validation_runs(histories: dict[str, list[dict]], *, dashed: set[str] = frozenset(), legend: bool = True):
    """Validation top-1 and loss per epoch, one line per labelled run (seeds, trials, compared runs); `dashed` marks
    runs that stopped early. Returns the figure; the caller embeds or saves it."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, history in histories.items():
        val = [r for r in history if "val_top1" in r]
        style = dict(marker="o", markersize=3, linestyle="--" if label in dashed else "-", label=label)
        ax_acc.plot([r["epoch"] for r in val], [100 * r["val_top1"] for r in val], **style)
        ax_loss.plot([r["epoch"] for r in val], [r["val_loss"] for r in val], **style)
    for ax, label in ((ax_acc, "val top-1 (%)"), (ax_loss, "val loss")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if legend and histories:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> None:
    """Row-normalised confusion matrix (recall per true class), with counts too small to see left blank."""
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    size = max(4.5, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        ax.set_yticks(range(len(classes)), classes)
        for i in range(len(classes)):
            for j in range(len(classes)):
                if rates[i, j] >= 0.005:
                    share = 100 * rates[i, j]
                    ax.text(j, i, f"{share:.0f}" if share >= 1 else f"{share:.1f}", ha="center", va="center", fontsize=8,
                            color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f} %"


def results_table(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The few numbers a reader wants first, as (label, value) rows."""
    rows = [("model", f"{results['model']} ({results['params'] / 1e6:.3f} M params)"), ("dataset", results["dataset"])]
    if results.get("val"):
        rows.append(("val top-1", percent(results["val"]["top1"])))
    rows += [("test top-1", percent(results["test"]["top1"])), ("test top-5", percent(results["test"]["top5"])),
             ("test loss", f"{results['test']['loss']:.4f}"), ("epochs", str(results["epochs"])),
             ("train time", f"{results['train_time_s']:.0f} s ({results['images_per_s']:,.0f} img/s)"),
             ("wall time", f"{results['wall_time_s']:.0f} s")]
    reference = results.get("reference")
    if reference:
        rows.append(("reference", f"{percent(reference['top1'])} ({reference['source']})"))
        rows.append(("gap", f"{100 * reference['gap']:+.2f} points: {reference['verdict']}"))
    return rows


def format_metric(key: str, value: float | None) -> str:
    """One metric in its unit (%, points, M params, seconds, img/s), so a row reads the same in every column."""
    if value is None:
        return "—"
    if key in ("test_top1", "test_top5", "val_top1"):
        return f"{100 * value:.2f} %"
    if key == "reference_gap":
        return f"{100 * value:+.2f} points"
    if key == "test_loss":
        return f"{value:.4f}"
    if key == "params":
        return f"{value / 1e6:.3f} M"
    if key == "train_time_s":
        return f"{value:.1f} s"
    if key == "images_per_s":
        return f"{value:,.0f}"
    return f"{value:g}"


def format_table(rows: list[tuple[str, str]]) -> str:
    """Rows as aligned plain text for the terminal."""
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label.ljust(width)}  {value}" for label, value in rows)


def format_grid(rows: list[list[str]]) -> str:
    """A header row and data rows as aligned plain-text columns for the terminal."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines[:1] + ["  " + "  ".join("-" * w for w in widths)] + lines[1:])


def markdown_table(rows: list[list[str]]) -> str:
    """A header row and data rows as a Markdown table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]]) + "\n"


def write_report(run_dir: Path, results: dict[str, Any], history: list[dict], config_yaml: str) -> Path:
    """report.md with the summary, curves, confusion matrix and per-class accuracy of the test split."""
    plot_curves(history, run_dir / "curves.png")
    plot_confusion(np.array(results["test"]["confusion"]), results["classes"], run_dir / "confusion.png")
    lines = [f"# {results['run']}", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in results_table(results)]
    lines += ["", "## Training curves", "", "![loss and accuracy per epoch](curves.png)", "",
              "## Confusion matrix (test)", "", "![confusion matrix](confusion.png)", "",
              "## Per-class accuracy (test)", "", "| class | top-1 |", "|---|---|"]
    lines += [f"| {name} | {percent(acc)} |" for name, acc in results["test"]["per_class"].items()]
    lines += ["", "## Resolved config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
