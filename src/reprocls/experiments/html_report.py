"""report.html: one self-contained page per run (numbers, curves, confusion, mistakes, per-class, config,
environment), and `reprocls report TARGET`, which rewrites the page of a run, study or reproduction folder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reprocls.config import ConfigError  # noqa: E402
from reprocls.experiments import html  # noqa: E402
from reprocls.experiments.mistakes import MISTAKES_JSON, MISTAKES_PNG, predict_split, write_mistakes  # noqa: E402
from reprocls.experiments.report import percent, plot_confusion, read_history  # noqa: E402

REPORT_HTML = "report.html"
FOLDER_KINDS = "a run folder (results.json), a study folder (study.json) or a reproduction folder (reproduction.json)"


def write_html_report(target: str | Path) -> Path:
    """(Re)write the HTML report of a run, study or reproduction folder, chosen by the file that marks its kind."""
    folder = Path(target)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass {FOLDER_KINDS}")
    if (folder / "study.json").exists() or (folder / "study.db").exists():  # study.db alone: a running or killed study
        from reprocls.experiments.tune import write_study_report

        return Path(write_study_report(folder))
    if (folder / "reproduction.json").exists():
        from reprocls.experiments.reproduce import write_reproduction_report

        return Path(write_reproduction_report(folder))
    if (folder / "results.json").exists():
        return write_run_html(folder)
    raise FileNotFoundError(f"{folder} holds none of results.json, study.json or reproduction.json; pass {FOLDER_KINDS} "
                            "(a run that is still training has no results.json yet)")


def write_run_html(run_dir: Path) -> Path:
    """report.html of a finished run; computes mistakes.json first when the run has none (a run from before it)."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    history = read_history(run_dir)
    mistakes, missing_reason = load_or_find_mistakes(run_dir)
    sections = [
        ("Training curves", curves_section(history)),
        ("Confusion matrix (test)", confusion_section(run_dir, results)),
        ("Most confident mistakes (test)", mistakes_section(run_dir, mistakes, missing_reason)),
        ("Per-class accuracy (test)", per_class_section(results)),
        ("Resolved config", config_section(run_dir)),
        ("Environment", environment_section(run_dir)),
    ]
    subtitle = f"{results['model']} on {results['dataset']}, seed {results.get('seed', '—')}"
    document = html.page(results.get("run") or run_dir.name, sections, subtitle=subtitle, intro=headline(results))
    return html.write_page(run_dir / REPORT_HTML, document)


def headline(results: dict[str, Any]) -> str:
    """The reference verdict banner (when the recipe names a paper result) and the numbers a reader wants first."""
    test, val = results["test"], results.get("val")
    items = [("test top-1", percent(test["top1"])), ("test top-5", percent(test["top5"])),
             ("test loss", f"{test['loss']:.4f}"), ("val top-1", percent(val["top1"]) if val else "—"),
             ("params", f"{results['params'] / 1e6:.3f} M"), ("epochs", str(results["epochs"])),
             ("train time", f"{results['train_time_s']:.0f} s"), ("train speed", f"{results['images_per_s']:,.0f} img/s")]
    if results.get("ema"):
        items.append(("weights", f"{results['ema']['chosen']} (EMA decay {results['ema']['decay']:g})"))
    banner = ""
    reference = results.get("reference")
    if reference:
        reproduced = reference["verdict"] == "reproduced"
        banner = html.verdict(f"{'Reproduced' if reproduced else 'Not reproduced'}: test top-1 {percent(test['top1'])} "
                              f"vs {percent(reference['top1'])} reported ({reference['source']}), gap "
                              f"{100 * reference['gap']:+.2f} points, tolerance {100 * reference['tolerance']:.2f} points"
                              f" ({reference['verdict']})", "good" if reproduced else "bad")
    return banner + html.cards(items)


def curves_section(history: list[dict]) -> str:
    """Loss and top-1 per epoch: train, validation and, when the run kept one, the EMA weights on validation."""
    if not history:
        return html.paragraph("metrics.jsonl holds no epochs, so there are no curves to draw.")
    series = [("train", "train_loss", "train_top1", "o"), ("val", "val_loss", "val_top1", "s"),
              ("val (EMA)", "val_ema_loss", "val_ema_top1", "^")]
    fig, (ax_loss, ax_top1) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, loss_key, top1_key, marker in series:
        points = [r for r in history if loss_key in r and top1_key in r]
        if points:
            epochs = [r["epoch"] for r in points]
            ax_loss.plot(epochs, [r[loss_key] for r in points], marker=marker, label=label)
            ax_top1.plot(epochs, [100 * r[top1_key] for r in points], marker=marker, label=label)
    for ax, label in ((ax_loss, "loss"), (ax_top1, "top-1 (%)")):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    body = html.figure(fig, "Loss and top-1 per epoch (train loss includes label smoothing and augmentation).",
                       alt="training curves")
    plt.close(fig)
    return body


def confusion_section(run_dir: Path, results: dict[str, Any]) -> str:
    """The row-normalised confusion matrix the run drew, redrawn from results.json if its PNG is gone."""
    path = run_dir / "confusion.png"
    if not path.exists():
        plot_confusion(np.array(results["test"]["confusion"]), results["classes"], path)
    return html.figure(path, "Share of each true class (row) predicted as each class (column), in percent.",
                       alt="confusion matrix")


def load_or_find_mistakes(run_dir: Path) -> tuple[dict[str, Any] | None, str]:
    """mistakes.json with its grid, computed now from the saved model and data if the run lacks them; otherwise
    (None, why not) so the page can say so instead of failing."""
    if (run_dir / MISTAKES_JSON).exists():
        mistakes = json.loads((run_dir / MISTAKES_JSON).read_text())
        if (run_dir / MISTAKES_PNG).exists() or not mistakes["mistakes"]:
            return mistakes, ""
    from reprocls.experiments.run import load_run  # run.py writes this page at the end of training

    try:
        loaded = load_run(run_dir)
        session = loaded.session
        log = predict_split(session.model, session.splits.test, session.splits, loaded.config.data, device=session.device,
                            amp_dtype=session.amp_dtype, channels_last=session.channels_last)
        return write_mistakes(run_dir, log, session.splits), ""
    except (ConfigError, FileNotFoundError, ValueError, OSError, RuntimeError) as error:
        return None, str(error)


def mistakes_section(run_dir: Path, mistakes: dict[str, Any] | None, missing_reason: str) -> str:
    """The grid of the most confidently misclassified test images and the same list as a table."""
    if mistakes is None:
        return html.paragraph(f"The misclassified test images could not be computed for this run ({missing_reason}). "
                              f"To show them, make the run's data (data.root in its config.yaml) and "
                              f"{run_dir / 'model.safetensors'} available, then run `reprocls report {run_dir}` again.")
    rows = mistakes["mistakes"]
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
    return html.paragraph(summary) + html.figure(run_dir / MISTAKES_PNG, caption, alt="most confident mistakes") + folded


def per_class_section(results: dict[str, Any]) -> str:
    """Recall of every class in class order, with a bar, its image count and the class it is most mistaken for."""
    confusion = np.array(results["test"]["confusion"])
    classes = results["classes"]
    rows: list[list[Any]] = [["class", "top-1", "", "test images", "most often predicted instead"]]
    for index, name in enumerate(classes):
        accuracy = results["test"]["per_class"][name]
        wrong = confusion[index].copy()
        wrong[index] = 0
        instead = f"{classes[int(wrong.argmax())]} ({int(wrong.max())})" if wrong.max() > 0 else "—"
        shown = "—" if accuracy is None or math.isnan(accuracy) else percent(accuracy)
        rows.append([name, shown, html.bar(accuracy if accuracy is not None else math.nan), f"{int(confusion[index].sum()):,}",
                     instead])
    return html.table(rows, numeric_columns=(1, 3))


def config_section(run_dir: Path) -> str:
    path = run_dir / "config.yaml"
    if not path.exists():
        return html.paragraph("config.yaml is missing from this run folder.")
    return html.code(path.read_text())


def environment_section(run_dir: Path) -> str:
    """Versions and hardware the run was measured on; the full pip freeze folded away."""
    path = run_dir / "environment.json"
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
