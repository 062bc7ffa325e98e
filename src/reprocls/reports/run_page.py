"""A run's pages: report.md (readable on any Git host) and report.html (one self-contained file: numbers, curves,
confusion, mistakes, per-class, config, environment), both drawn from the run folder alone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from reprocls import run_layout as layout
from reprocls.reports import html
from reprocls.reports.folders import read_history, read_results
from reprocls.reports.plots import plot_confusion, plot_curves, plot_roc_pr, save
from reprocls.reports.tables import percent, results_table

CURVES_CAPTION = "Loss and top-1 per epoch (train loss includes label smoothing and augmentation)."


def draw_figures(run_dir: Path, results: dict[str, Any], history: list[dict]) -> None:
    """curves.png and confusion.png, the figures both pages show."""
    save(plot_curves(history), run_dir / layout.CURVES_PNG)
    save(plot_confusion(np.array(results["test"]["confusion"]), results["classes"]), run_dir / layout.CONFUSION_PNG)


def write_markdown(run_dir: Path, results: dict[str, Any]) -> Path:
    """report.md with the summary, curves, confusion matrix and per-class accuracy of the test split."""
    config_yaml = (run_dir / layout.CONFIG).read_text() if (run_dir / layout.CONFIG).exists() else "(config.yaml missing)"
    lines = [f"# {results['run']}", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in results_table(results)]
    lines += ["", "## Training curves", "", f"![loss and accuracy per epoch]({layout.CURVES_PNG})", "",
              "## Confusion matrix (test)", "", f"![confusion matrix]({layout.CONFUSION_PNG})", "",
              "## Per-class accuracy (test)", "", "| class | top-1 |", "|---|---|"]
    lines += [f"| {name} | {percent(acc)} |" for name, acc in results["test"]["per_class"].items()]
    lines += ["", "## Resolved config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    path = run_dir / layout.REPORT_MD
    path.write_text("\n".join(lines))
    return path


def write_run_pages(run_dir: str | Path, *, mistakes_missing: str = "") -> Path:
    """report.md and report.html of a finished run (figures redrawn from its files); returns the HTML page."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    draw_figures(run_dir, results, read_history(run_dir))
    write_markdown(run_dir, results)
    return write_run_html(run_dir, mistakes_missing=mistakes_missing)


def write_run_html(run_dir: str | Path, *, mistakes_missing: str = "") -> Path:
    """report.html of a finished run, from results.json, its figures and the other files of the folder;
    `mistakes_missing` says why mistakes.json could not be made, when a caller tried."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    if not (run_dir / layout.CURVES_PNG).exists() or not (run_dir / layout.CONFUSION_PNG).exists():
        draw_figures(run_dir, results, read_history(run_dir))
    mistakes_path = run_dir / layout.MISTAKES_JSON
    mistakes = json.loads(mistakes_path.read_text()) if mistakes_path.exists() else None
    sections = [
        ("Training curves", html.figure(run_dir / layout.CURVES_PNG, CURVES_CAPTION, alt="training curves")),
        ("Confusion matrix (test)", html.figure(run_dir / layout.CONFUSION_PNG, "Share of each true class (row) "
                                                "predicted as each class (column), in percent.", alt="confusion matrix")),
        ("Most confident mistakes (test)", mistakes_section(run_dir, mistakes, mistakes_missing)),
        ("Per-class accuracy (test)", per_class_section(results)),
        *([("Two-class detector (test)", detector_section(results["binary"]))] if results.get("binary") else []),
        ("Resolved config", config_section(run_dir)),
        ("Environment", environment_section(run_dir)),
    ]
    subtitle = f"{results['model']} on {results['dataset']}, seed {results.get('seed', '—')}"
    document = html.page(results.get("run") or run_dir.name, sections, subtitle=subtitle, intro=headline(results))
    return html.write_page(run_dir / layout.REPORT_HTML, document)


def headline(results: dict[str, Any]) -> str:
    """The reference verdict banner (when the recipe names a paper result) and the numbers a reader wants first."""
    test, val = results["test"], results.get("val")
    items = [("test top-1", percent(test["top1"])), ("test top-5", percent(test["top5"])),
             ("test loss", f"{test['loss']:.4f}"), ("val top-1", percent(val["top1"]) if val else "—"),
             ("params", f"{results['params'] / 1e6:.3f} M"), ("epochs", str(results["epochs"])),
             ("train time", f"{results['train_time_s']:.0f} s"), ("train speed", f"{results['images_per_s']:,.0f} img/s")]
    if results.get("ema"):
        items.append(("weights", f"{results['ema']['chosen']} (EMA decay {results['ema']['decay']:g})"))
    if "macro_f1" in test:
        items += [("test macro-F1", percent(test["macro_f1"])), ("balanced accuracy", percent(test["balanced_accuracy"]))]
    if results.get("binary"):
        items.append(("ROC-AUC", f"{results['binary']['test']['roc_auc']:.4f}"))
    banner = ""
    if results.get("skipped_images"):
        banner += html.verdict(f"{results['skipped_images']} image file(s) could not be decoded and were left out of this "
                               f"run (data.on_bad_image=skip); {layout.SKIPPED} lists them.", "warn")
    reference = results.get("reference")
    if reference:
        reproduced = reference["verdict"] == "reproduced"
        banner += html.verdict(f"{'Reproduced' if reproduced else 'Not reproduced'}: test top-1 {percent(test['top1'])} "
                              f"vs {percent(reference['top1'])} reported ({reference['source']}), gap "
                              f"{100 * reference['gap']:+.2f} points, tolerance {100 * reference['tolerance']:.2f} points"
                              f" ({reference['verdict']})", "good" if reproduced else "bad")
    return banner + html.cards(items)


def mistakes_section(run_dir: Path, mistakes: dict[str, Any] | None, missing: str = "") -> str:
    """The grid of the most confidently misclassified test images and the same list as a table."""
    if mistakes is None and missing:
        return html.paragraph(f"The misclassified test images could not be computed for this run ({missing}). "
                              f"To show them, make the run's data (data.root in its config.yaml) and "
                              f"{run_dir / layout.WEIGHTS} available, then run `reprocls report {run_dir}` again.")
    if mistakes is None:
        return html.paragraph(f"This run folder has no {layout.MISTAKES_JSON}. `reprocls report {run_dir}` computes it "
                              f"from {layout.WEIGHTS} when the run's data (data.root in its config.yaml) is available.")
    rows = mistakes["mistakes"]
    if rows and not (run_dir / layout.MISTAKES_PNG).exists():
        return html.paragraph(f"{layout.MISTAKES_PNG} is missing from this run folder; `reprocls report {run_dir}` "
                              "draws it again from the run's data.")
    summary = (f"{mistakes['wrong']:,} of {mistakes['images']:,} test images are misclassified "
               f"({percent(mistakes['wrong'] / max(mistakes['images'], 1))}).")
    if not rows:
        return html.paragraph(summary + " There is nothing to show.")
    caption = (f"The {len(rows)} mistakes the model was most sure of, ranked by the softmax probability of the wrong "
               "class it predicted; images as stored in the dataset, before normalisation.")
    listing = [["rank", "test index", "true class", "predicted", "confidence", "p(true class)"]]
    listing += [[str(rank), str(row["index"]) + (f" ({row['path']})" if "path" in row else ""), row["true_name"],
                 row["predicted_name"], percent(row["confidence"]), percent(row["true_confidence"])]
                for rank, row in enumerate(rows, 1)]
    folded = (f"<details><summary>the {len(rows)} mistakes as a table</summary>"
              f"{html.table(listing, numeric_columns=(0, 4, 5))}</details>")
    return html.paragraph(summary) + html.figure(run_dir / layout.MISTAKES_PNG, caption, alt="most confident mistakes") + folded


def per_class_section(results: dict[str, Any]) -> str:
    """Recall of every class in class order, with a bar, its image count and the class it is most mistaken for."""
    confusion = np.array(results["test"]["confusion"])
    classes = results["classes"]
    test = results["test"]
    extra = "precision" in test
    rows: list[list[Any]] = [["class", "top-1", "", "test images", "most often predicted instead",
                              *(["precision", "F1"] if extra else [])]]
    for index, name in enumerate(classes):
        accuracy = test["per_class"][name]
        wrong = confusion[index].copy()
        wrong[index] = 0
        instead = f"{classes[int(wrong.argmax())]} ({int(wrong.max())})" if wrong.max() > 0 else "—"
        shown = "—" if accuracy is None or math.isnan(accuracy) else percent(accuracy)
        scores = [percent(test["precision"][name]), percent(test["f1"][name])] if extra else []
        rows.append([name, shown, html.bar(accuracy if accuracy is not None else math.nan),
                     f"{int(confusion[index].sum()):,}", instead, *scores])
    return html.table(rows, numeric_columns=(1, 3, 5, 6) if extra else (1, 3))


def detector_section(binary: dict[str, Any]) -> str:
    """ROC and PR curves with the operating point, and the threshold's precision and recall on validation and test."""
    rows = [["split", "ROC-AUC", "PR-AUC", "recall at threshold", "precision at threshold", "false-positive rate"]]
    for split in ("val", "test"):
        if split in binary:
            record, point = binary[split], binary[split]["at_threshold"]
            rows.append([split, f"{record['roc_auc']:.4f}", f"{record['pr_auc']:.4f}", percent(point["recall"]),
                         percent(point["precision"]), percent(point["false_positive_rate"])])
    text = (f"Positive class: {binary['positive_class']}. Threshold {binary['test']['threshold']:.4g}, chosen on "
            f"{binary['threshold_from']} as the highest that keeps {percent(binary['target_recall'])} of its images "
            "(eval.target_recall); the test split plays no part in the choice.")
    return (html.figure(plot_roc_pr(binary), "ROC and precision-recall curves on test; the dot is the operating point.",
                        alt="ROC and PR curves") + html.paragraph(text) + html.table(rows, numeric_columns=(1, 2, 3, 4, 5)))


def config_section(run_dir: Path) -> str:
    path = run_dir / layout.CONFIG
    if not path.exists():
        return html.paragraph("config.yaml is missing from this run folder.")
    return html.code(path.read_text())


def environment_section(run_dir: Path) -> str:
    """Versions and hardware the run was measured on; the full pip freeze folded away."""
    path = run_dir / layout.ENVIRONMENT
    if not path.exists():
        return html.paragraph("environment.json is missing from this run folder.")
    info = json.loads(path.read_text())
    git = info.get("git") or {}
    commit = git.get("commit")
    rows: list[list[Any]] = [["what", "value"]]
    rows += [[key, info[key]] for key in ("python", "torch", "torchvision", "reprocls", "cuda", "cudnn", "platform")
             if info.get(key) is not None]
    rows.append(["CPU", f"{info.get('cpu', '—')} ({info.get('cpu_count', '—')} cores, torch threads "
                        f"{info.get('torch_threads', '—')})"])
    rows.append(["GPU", ", ".join(info.get("gpus") or []) or "none"])
    if commit:
        rows.append(["git commit", f"{commit}{' (uncommitted changes)' if git.get('dirty') else ''}"])
    freeze = info.get("pip_freeze") or []
    packages = html.code("\n".join(freeze), collapsed=True, summary=f"pip freeze ({len(freeze)} packages)") if freeze else ""
    return html.table(rows) + packages
