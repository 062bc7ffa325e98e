"""The figures of a run, drawn once each: every function returns a matplotlib figure that report.md saves as a PNG
and report.html embeds, so the two pages can never show different curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# (label, loss key, top-1 key, marker) of each curve a run's metrics.jsonl can hold
CURVES = (("train", "train_loss", "train_top1", "o"), ("val", "val_loss", "val_top1", "s"),
          ("val (EMA)", "val_ema_loss", "val_ema_top1", "^"))


def save(figure: Figure, path: Path) -> Path:
    """Write a figure as PNG and free it."""
    try:
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return path


def epoch_axes(*axes: plt.Axes, labels: tuple[str, ...]) -> None:
    for ax, label in zip(axes, labels):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)


def plot_curves(history: list[dict]) -> Figure:
    """Loss and top-1 per epoch: train, validation and, when the run kept one, the EMA weights on validation."""
    fig, (ax_loss, ax_top1) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, loss_key, top1_key, marker in CURVES:
        points = [r for r in history if loss_key in r and top1_key in r]
        if points:
            epochs = [r["epoch"] for r in points]
            ax_loss.plot(epochs, [r[loss_key] for r in points], marker=marker, label=label)
            ax_top1.plot(epochs, [100 * r[top1_key] for r in points], marker=marker, label=label)
    epoch_axes(ax_loss, ax_top1, labels=("loss", "top-1 (%)"))
    for ax in (ax_loss, ax_top1):
        if ax.get_lines():
            ax.legend()
    fig.tight_layout()
    return fig


def plot_validation_runs(histories: dict[str, list[dict]], *, dashed: set[str] = frozenset(), legend: bool = True) -> Figure:
    """Validation top-1 and loss per epoch, one line per labelled run (seeds, trials, compared runs); `dashed` marks
    runs that stopped early."""
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, history in histories.items():
        val = [r for r in history if "val_top1" in r]
        style = dict(marker="o", markersize=3, linestyle="--" if label in dashed else "-", label=label)
        ax_acc.plot([r["epoch"] for r in val], [100 * r["val_top1"] for r in val], **style)
        ax_loss.plot([r["epoch"] for r in val], [r["val_loss"] for r in val], **style)
    epoch_axes(ax_acc, ax_loss, labels=("val top-1 (%)", "val loss"))
    if legend and histories:
        for ax in (ax_acc, ax_loss):
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_confusion(confusion: np.ndarray, classes: list[str]) -> Figure:
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
    return fig


def plot_class_bars(names: list[str], series: dict[str, list[float]], *, errors: list[float] | None = None,
                    label: str = "test top-1 (%)") -> Figure:
    """Accuracy per class as horizontal bars: one series (optionally with ± error bars, e.g. std over seeds) or
    several side by side (compared runs)."""
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.32 * len(names) * max(1, len(series) / 2) + 1)))
    height = 0.8 / len(series)
    for index, (run, values) in enumerate(series.items()):
        offsets = np.arange(len(names)) + (index - (len(series) - 1) / 2) * height
        ax.barh(offsets, values, height, xerr=errors, color=None if len(series) > 1 else "#4a7bd0",
                ecolor="#1d2330", capsize=3 if errors else 0, label=run)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(label)
    ax.set_xlim(0, 100)
    ax.grid(axis="x", alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_roc_pr(binary: dict) -> Figure:
    """ROC and precision-recall curves of a two-class model on test, the operating point marked on both."""
    test = binary["test"]
    roc, pr, point = test["curves"]["roc"], test["curves"]["pr"], test["at_threshold"]
    fig, (ax_roc, ax_pr) = plt.subplots(1, 2, figsize=(10, 4))
    ax_roc.plot(roc["fpr"], roc["tpr"], color="#2b6cb0", label=f"ROC-AUC {test['roc_auc']:.3f}")
    ax_roc.plot([0, 1], [0, 1], linestyle=":", color="#8a8f98", label="chance")
    ax_roc.plot(point["false_positive_rate"], point["recall"], "o", color="#c53030", label=f"threshold {test['threshold']:.3g}")
    ax_roc.set(xlabel="false-positive rate", ylabel=f"recall of {binary['positive_class']}", xlim=(0, 1), ylim=(0, 1.02))
    ax_pr.plot(pr["recall"], pr["precision"], color="#2b6cb0", label=f"PR-AUC {test['pr_auc']:.3f}")
    ax_pr.axhline(test["positive_rate"], linestyle=":", color="#8a8f98", label=f"chance ({test['positive_rate']:.3f})")
    if point["precision"] == point["precision"]:  # not NaN
        ax_pr.plot(point["recall"], point["precision"], "o", color="#c53030", label=f"threshold {test['threshold']:.3g}")
    ax_pr.set(xlabel=f"recall of {binary['positive_class']}", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    for ax in (ax_roc, ax_pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is ax_roc else "lower left")
    fig.tight_layout()
    return fig

