"""Numbers as text: metric formatting and aligned terminal or Markdown tables, shared by every report and command."""

from __future__ import annotations

from typing import Any

ACCURACY_KEYS = ("test_top1", "test_tta_top1", "test_top5", "val_top1")


def percent(value: float | None) -> str:
    """A fraction as a percentage with two decimals ('—' when missing)."""
    return "—" if value is None else f"{100 * value:.2f} %"


def format_value(value: Any) -> str:
    """A parameter value short enough for a table cell (floats to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_metric(key: str, value: float | None) -> str:
    """One metric in its unit (%, points, M params, seconds, img/s), so a row reads the same in every column."""
    if value is None:
        return "—"
    if key in ACCURACY_KEYS:
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


def results_table(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The few numbers a reader wants first from a run's results.json, as (label, value) rows."""
    rows = [("model", f"{results['model']} ({results['params'] / 1e6:.3f} M params)"), ("dataset", results["dataset"])]
    if results.get("val"):
        rows.append(("val top-1", percent(results["val"]["top1"])))
    rows += [("test top-1", percent(results["test"]["top1"])), ("test top-5", percent(results["test"]["top5"]))]
    tta = results.get("test_tta")
    if tta:
        rows.append((f"test top-1, {tta['mode']} TTA", f"{percent(tta['top1'])} ({tta['images_per_s']:,.0f} img/s, plain "
                                                       f"{tta['plain_images_per_s']:,.0f} img/s)"))
    rows += [("test loss", f"{results['test']['loss']:.4f}"), ("epochs", str(results["epochs"])),
             ("train time", f"{results['train_time_s']:.0f} s ({results['images_per_s']:,.0f} img/s)"),
             ("wall time", f"{results['wall_time_s']:.0f} s")]
    test = results["test"]
    if "macro_f1" in test:
        rows += [("test macro-F1", percent(test["macro_f1"])), ("test balanced accuracy", percent(test["balanced_accuracy"]))]
    binary = results.get("binary")
    if binary:
        point = binary["test"]["at_threshold"]
        rows += [("test ROC-AUC / PR-AUC", f"{binary['test']['roc_auc']:.4f} / {binary['test']['pr_auc']:.4f} "
                                           f"(positive class {binary['positive_class']})"),
                 ("operating point", f"threshold {binary['test']['threshold']:.4g} (from {binary['threshold_from']}, "
                                     f"target recall {percent(binary['target_recall'])}): test recall "
                                     f"{percent(point['recall'])}, precision {percent(point['precision'])}")]
    if results.get("skipped_images"):
        rows.append(("skipped images", f"{results['skipped_images']} undecodable file(s) left out (skipped_images.json)"))
    reference = results.get("reference")
    if reference:
        rows.append(("reference", f"{percent(reference['top1'])} ({reference['source']})"))
        rows.append(("gap", f"{100 * reference['gap']:+.2f} points: {reference['verdict']}"))
    return rows


def format_table(rows: list[tuple[str, str]]) -> str:
    """(label, value) rows as aligned plain text for the terminal."""
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
