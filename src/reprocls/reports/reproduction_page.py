"""A reproduction's pages: reproduction.md and report.html (verdict, statistics over seeds, each seed, validation
curves, per-class accuracy with its spread, recipe, environment), drawn from reproduction.json and the seeds' runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402

from reprocls import run_layout as layout  # noqa: E402
from reprocls.metrics.verdict import NOISE_RULE, noise_formula, points  # noqa: E402
from reprocls.reports import html  # noqa: E402
from reprocls.reports.folders import read_history  # noqa: E402
from reprocls.reports.plots import plot_class_bars, plot_validation_runs  # noqa: E402
from reprocls.reports.tables import ACCURACY_KEYS, format_metric, markdown_table  # noqa: E402

# (key, label) of every statistic over seeds, read from each seed's results.json by the reproduction.
METRICS = (("test_top1", "test top-1"), ("test_tta_top1", "test top-1, TTA"), ("test_top5", "test top-5"),
           ("test_loss", "test loss"), ("val_top1", "val top-1"),
           ("train_time_s", "train time"), ("images_per_s", "img/s"))


def format_spread(key: str, stats: dict[str, Any]) -> str:
    """'mean ± std' in the metric's unit; with one seed, the mean and 'std undefined'."""
    if stats["std"] is None:
        return f"{format_metric(key, stats['mean'])} (std undefined)"
    mean, std = format_metric(key, stats["mean"]), format_metric(key, stats["std"])
    unit = " %" if key in ACCURACY_KEYS else (" s" if key == "train_time_s" else "")
    return f"{mean.removesuffix(unit)} ± {std}"


def statistics_rows(stats: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Header and one row per metric: mean ± std, 95 % interval, min, max, seeds."""
    rows = [["metric", "mean ± std", "95 % CI of the mean", "min", "max", "seeds"]]
    for key, label in METRICS:
        if key not in stats:
            continue
        s = stats[key]
        ci = (f"[{format_metric(key, s['ci95'][0])}, {format_metric(key, s['ci95'][1])}]" if s["ci95"] is not None
              else "undefined (1 seed)")
        rows.append([label, format_spread(key, s), ci, format_metric(key, s["min"]), format_metric(key, s["max"]), str(s["n"])])
    return rows


def seed_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """Header and one row per seed with its run folder and how it got its numbers (trained, resumed or kept)."""
    rows = [["seed", "run", "how"] + [label for _, label in METRICS]]
    for record in records:
        rows.append([str(record["seed"]), Path(record["run"]).name, record["how"]]
                    + [format_metric(key, record["metrics"].get(key)) for key, _ in METRICS])
    return rows


def read_reproduction(folder: str | Path) -> dict[str, Any]:
    """reproduction.json of a folder with at least one finished seed, since the reports need numbers to show."""
    path = Path(folder) / layout.REPRODUCTION_JSON
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no {layout.REPRODUCTION_JSON}: pass a folder written by reprocls reproduce after at "
                                "least one seed finished")
    summary = json.loads(path.read_text())
    if not summary["finished"]:
        raise FileNotFoundError(f"{folder}: no seed has finished yet (planned: {summary['seeds']}); train them with "
                                f"reprocls reproduce RECIPE --resume {folder}")
    return summary


def split_note(split: int) -> str:
    """Why the std over seeds is training noise only: every seed run pins the same data split."""
    return f"every seed is evaluated on the same images (data.split_seed: {split})"


def progress_note(summary: dict[str, Any]) -> str:
    """'' for a complete reproduction, else how far it got and how to finish it."""
    if summary["complete"]:
        return ""
    return (f"incomplete: {summary['finished']} of {len(summary['seeds'])} seeds finished; finish it with "
            f"reprocls reproduce RECIPE --resume {summary['folder']}")


def write_reproduction_markdown(folder: str | Path) -> Path:
    """reproduction.md: the verdict, the statistics and the seeds, readable on any Git host."""
    folder = Path(folder)
    summary = read_reproduction(folder)
    verdict = summary["verdict"]
    lines = [f"# Reproduction of {summary['name']}", "", f"**{verdict['text']}**", "",
             f"{split_note(summary['split_seed']).capitalize()}.", ""]
    if progress_note(summary):
        lines += [f"_{progress_note(summary)}_", ""]
    lines += ["## Over seeds", "", markdown_table(statistics_rows(summary["statistics"])),
              "## Seeds", "", markdown_table(seed_rows(summary["runs"])),
              "## How the verdict is decided", "", rule_text(summary), "",
              f"Figures: [{layout.REPORT_HTML}]({layout.REPORT_HTML}). Recipe: [{layout.RECIPE}]({layout.RECIPE}).", ""]
    path = folder / layout.REPRODUCTION_MD
    path.write_text("\n".join(lines))
    return path


def rule_text(summary: dict[str, Any]) -> str:
    """The verdict rule with this reproduction's numbers filled in."""
    verdict = summary["verdict"]
    reference = verdict["reference"]
    if reference is None:
        return "The recipe has no reference: block, so there is no number to judge against."
    threshold = reference["top1"] - reference["tolerance"]
    noise = (noise_formula(verdict["n"], verdict["std"]) if verdict["std"] is not None else "undefined with one seed")
    return (f"reproduced if mean >= reference - tolerance = {points(reference['top1'])} - "
            f"{points(reference['tolerance'])} = {points(threshold)} %; here the mean is {points(verdict['mean'])} %. "
            f"Otherwise within noise if reference - mean = {points(-verdict['gap'])} points <= {noise}; otherwise short. "
            f"{NOISE_RULE}")


def plot_seed_accuracy(summary: dict[str, Any]) -> Figure:
    """Each seed's test top-1 as a point, the mean with a ±std band, and the paper's number with its tolerance band."""
    runs, verdict = summary["runs"], summary["verdict"]
    seeds = [r["seed"] for r in runs]
    values = [100 * r["metrics"]["test_top1"] for r in runs]
    mean = 100 * verdict["mean"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if verdict["std"] is not None:
        std = 100 * verdict["std"]
        ax.axhspan(mean - std, mean + std, color="#4a7bd0", alpha=0.15, label=f"mean ± std ({std:.2f})")
    ax.axhline(mean, color="#4a7bd0", label=f"mean {mean:.2f} %")
    reference = verdict["reference"]
    if reference is not None:
        top1, tolerance = 100 * reference["top1"], 100 * reference["tolerance"]
        ax.axhspan(top1 - tolerance, top1, color="#2e9d57", alpha=0.15, label=f"tolerance ({tolerance:.2f} points)")
        ax.axhline(top1, color="#2e9d57", linestyle="--", label=f"reported {top1:.2f} %")
    ax.plot(seeds, values, "o", color="#1d2330", markersize=7, label="seeds")
    ax.set_xticks(seeds)
    ax.set_xlabel("seed")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def per_class_statistics(folder: Path, runs: list[dict[str, Any]]) -> list[tuple[str, float, float | None]]:
    """(class, mean, std or None) of test accuracy per class across seeds, in the dataset's class order."""
    per_seed = []
    for record in runs:
        path = folder / record["run"] / layout.RESULTS
        if path.exists():
            per_seed.append(json.loads(path.read_text())["test"]["per_class"])
    if not per_seed:
        return []
    rows = []
    for name in per_seed[0]:
        values = np.array([seed[name] for seed in per_seed if name in seed], dtype=float)
        rows.append((name, float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None))
    return rows


def write_reproduction_page(folder: str | Path) -> Path:
    """report.html, one self-contained file: verdict, statistics, seeds, curves, per-class accuracy, recipe, environment."""
    folder = Path(folder)
    summary = read_reproduction(folder)
    verdict, stats = summary["verdict"], summary["statistics"]
    top1 = stats["test_top1"]
    reference = verdict["reference"]
    headline = [("test top-1", format_spread("test_top1", top1)), ("seeds", f"{summary['finished']} of {len(summary['seeds'])}")]
    if top1["ci95"] is not None:
        headline.append(("95 % CI", f"{points(top1['ci95'][0])} – {points(top1['ci95'][1])} %"))
    if reference is not None:
        headline.append(("reported", f"{points(reference['top1'])} % ± {points(reference['tolerance'])}"))
        headline.append(("gap", f"{100 * verdict['gap']:+.2f} points"))
    intro = html.verdict(verdict["text"], verdict["tone"])
    if progress_note(summary):
        intro += html.verdict(progress_note(summary), "warn")
    intro += html.cards(headline) + html.paragraph(f"{split_note(summary['split_seed'])}, so the std over seeds is "
                                                   "training noise, not a different test sample per seed.")

    sections = [("Over seeds", html.table(statistics_rows(stats), numeric_columns=(1, 2, 3, 4, 5))),
                ("Seeds", html.table(seed_rows(summary["runs"]), numeric_columns=tuple(range(3, 3 + len(METRICS))))),
                ("Test top-1 per seed", html.figure(plot_seed_accuracy(summary), "each seed's test top-1; the mean with "
                                                    "a ±std band; the reported number with its tolerance band below it"))]
    histories = {f"seed {record['seed']}": read_history(folder / record["run"]) for record in summary["runs"]}
    if any("val_top1" in r for history in histories.values() for r in history):
        sections.append(("Validation curves", html.figure(plot_validation_runs(histories), "validation top-1 and loss "
                                                          "per epoch, one line per seed")))
    classes = per_class_statistics(folder, summary["runs"])
    if classes:
        rows = [["class", "mean", "std"]] + [[name, f"{100 * mean:.2f} %", "—" if std is None else f"{100 * std:.2f}"]
                                             for name, mean, std in classes]
        figure = plot_class_bars([name for name, _, _ in classes], {"mean": [100 * mean for _, mean, _ in classes]},
                                 errors=[100 * std if std is not None else 0.0 for _, _, std in classes],
                                 label="test top-1 per class (%), mean ± std over seeds")
        sections.append(("Per-class accuracy", html.figure(figure, "test accuracy per class over seeds")
                         + html.table(rows, numeric_columns=(1, 2))))
    sections.append(("How the verdict is decided", f"<p>{html.escape(rule_text(summary))}</p>"))
    recipe = (folder / layout.RECIPE).read_text() if (folder / layout.RECIPE).exists() else "(recipe.yaml missing)"
    sections.append(("Recipe", html.code(recipe, collapsed=True, summary=f"{layout.RECIPE}: the resolved recipe every seed trained")))
    environment = summary.get("environment") or {}
    env_rows = [["key", "value"]] + [[key, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
                                     for key, value in environment.items()]
    sections.append(("Environment", html.table(env_rows)))
    document = html.page(f"Reproduction: {summary['name']}", sections, intro=intro,
                         subtitle=f"{summary['finished']} seed(s), updated {summary['updated']} — {folder}")
    return html.write_page(folder / layout.REPORT_HTML, document)
