"""`reprocls compare`: finished runs side by side (metrics, the config keys that differ, the environment that differs),
because a difference in accuracy means little until you know what else changed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402

from reprocls.config import ConfigError, flatten  # noqa: E402
from reprocls.envinfo import differing_values, environment_differences  # noqa: E402
from reprocls.reports import html  # noqa: E402
from reprocls.reports.folders import FinishedRun, read_finished_run  # noqa: E402
from reprocls.reports.plots import plot_class_bars, plot_validation_runs  # noqa: E402
from reprocls.reports.tables import format_grid, format_metric  # noqa: E402

# Keys that differ between any two runs by construction; shown only with include_expected=True.
EXPECTED_TO_DIFFER = ("name", "output_dir")
BEST_MARK = " *"


@dataclass
class ComparedRun(FinishedRun):
    """A finished run with the column name it gets in the comparison."""

    label: str = ""


@dataclass
class MetricRow:
    """One metric across runs; `better` says which direction wins ('higher', 'lower', or None: not ranked)."""

    key: str
    label: str
    values: list[float | None]
    better: str | None

    def best(self) -> list[int]:
        """Indices of the winning runs; none when the metric is not ranked or every run has the same value."""
        present = [(i, v) for i, v in enumerate(self.values) if v is not None]
        if self.better is None or len(present) < 2 or len({v for _, v in present}) == 1:
            return []
        target = max(v for _, v in present) if self.better == "higher" else min(v for _, v in present)
        return [i for i, v in present if v == target]

    def cell(self, index: int) -> str:
        """One run's value with the best-in-row mark, so the winner is visible without reading every number."""
        value = self.values[index]
        text = format_metric(self.key, value)
        return text + BEST_MARK if index in self.best() else text


def metric_rows(runs: Sequence[ComparedRun]) -> list[MetricRow]:
    """The numbers compared, each read from results.json (None where a run has no such number)."""
    def read(results: dict[str, Any], key: str) -> float | None:
        test, val, reference = results.get("test") or {}, results.get("val") or {}, results.get("reference") or {}
        return {"test_top1": test.get("top1"), "test_top5": test.get("top5"), "test_loss": test.get("loss"),
                "val_top1": val.get("top1"), "params": results.get("params"), "epochs": results.get("epochs"),
                "train_time_s": results.get("train_time_s"), "images_per_s": results.get("images_per_s"),
                "reference_gap": reference.get("gap")}[key]

    specs = [("test_top1", "test top-1", "higher"), ("test_top5", "test top-5", "higher"), ("test_loss", "test loss", "lower"),
             ("val_top1", "val top-1", "higher"), ("params", "params", None), ("epochs", "epochs", None),
             ("train_time_s", "train time", "lower"), ("images_per_s", "img/s", "higher"),
             ("reference_gap", "reference gap", "higher")]
    return [MetricRow(key, label, [read(run.results, key) for run in runs], better) for key, label, better in specs]


def _show(value: Any) -> str:
    """A config or environment value as one cell: strings bare, anything else as JSON so lists and None stay exact."""
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def short_labels(paths: Sequence[Path], names: Sequence[str]) -> list[str]:
    """Column names: the run names when they tell runs apart, else folder names, else parent/folder."""
    for labels in (list(names), [p.name for p in paths], [f"{p.parent.name}/{p.name}" for p in paths]):
        if len(set(labels)) == len(labels) and all(labels):
            return labels
    return [f"run {i + 1}" for i in range(len(paths))]


@dataclass
class Comparison:
    """Runs side by side: metrics with the best marked, the config keys that differ, and the environment that differs."""

    runs: list[ComparedRun]
    metrics: list[MetricRow]
    config_differences: dict[str, list[Any]]
    config_equal: int
    ignored_keys: list[str]
    environment: dict[str, list[Any]] = field(default_factory=dict)
    packages: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """Column names, one per run."""
        return [run.label for run in self.runs]

    def headline(self) -> str:
        """One sentence on the best test top-1 and its lead over the runner-up."""
        top1 = self.metrics[0]
        ranked = sorted(((v, run.label) for v, run in zip(top1.values, self.runs) if v is not None), reverse=True)
        if len(ranked) < 2:
            return "fewer than two runs have a test top-1 to compare"
        (best, name), (second, other) = ranked[0], ranked[1]
        if best == second:
            return f"{name} and {other} tie on test top-1 at {100 * best:.2f} %"
        return (f"{name} has the best test top-1: {100 * best:.2f} %, {100 * (best - second):.2f} points ahead of {other} "
                f"({100 * second:.2f} %)")

    def metric_grid(self) -> list[list[str]]:
        """Header and one row per metric, shared by the terminal and HTML views."""
        return [["metric", *self.labels]] + [[row.label, *(row.cell(i) for i in range(len(self.runs)))] for row in self.metrics]

    def config_grid(self) -> list[list[str]]:
        """Header and one row per differing config key."""
        return [["key", *self.labels]] + [[key, *map(_show, values)] for key, values in self.config_differences.items()]

    def environment_grid(self) -> list[list[str]]:
        """Header and one row per differing environment key or package."""
        rows = [[key, *map(_show, values)] for key, values in self.environment.items()]
        rows += [[f"package {name}", *map(_show, values)] for name, values in self.packages.items()]
        return [["key", *self.labels]] + rows

    def config_note(self) -> str:
        """How many keys differ and agree, and which were not compared, so an empty table is not read as 'all equal'."""
        ignored = f"; not compared: {', '.join(self.ignored_keys)} (expected to differ)" if self.ignored_keys else ""
        return f"{len(self.config_differences)} key(s) differ, {self.config_equal} are equal{ignored}"

    def format(self) -> str:
        """The comparison as plain text for the terminal."""
        parts = ["runs:"] + [f"  {run.label}: {run.path}" for run in self.runs]
        parts += ["", self.headline(), "", "metrics (* best in row):", format_grid(self.metric_grid())]
        parts += ["", f"config differences: {self.config_note()}"]
        if self.config_differences:
            parts.append(format_grid(self.config_grid()))
        if self.environment or self.packages:
            parts += ["", f"environment differences: {len(self.environment)} key(s), {len(self.packages)} package(s)",
                      format_grid(self.environment_grid())]
        else:
            parts += ["", "environment differences: none (same versions, hardware, threads, git commit and packages)"]
        return "\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Everything the comparison found, JSON-ready (values as recorded, fractions for accuracies)."""
        return {"runs": [{"label": run.label, "path": str(run.path)} for run in self.runs],
                "headline": self.headline(),
                "metrics": [{"key": row.key, "label": row.label, "values": row.values, "better": row.better,
                             "best": [self.runs[i].label for i in row.best()]} for row in self.metrics],
                "config": {"differences": self.config_differences, "equal_keys": self.config_equal,
                           "ignored_keys": self.ignored_keys},
                "environment": {"differences": self.environment, "packages": self.packages}}

    def write_html(self, path: str | Path) -> Path:
        """The comparison as one self-contained HTML file, with accuracy, per-class and validation-curve figures."""
        runs_table = html.table([["run", "folder", "model", "dataset"]]
                                + [[run.label, str(run.path), run.results.get("model", "—"), run.results.get("dataset", "—")]
                                   for run in self.runs])
        sections = [("Runs", runs_table),
                    ("Metrics", html.table(self.metric_grid(), numeric_columns=tuple(range(1, len(self.runs) + 1)))
                     + "<p>* best in row</p>"),
                    ("Test accuracy", html.figure(plot_accuracy(self.runs), "test top-1 and top-5 per run"))]
        classes = plot_per_class(self.runs)
        if classes is not None:
            sections.append(("Per-class accuracy", html.figure(classes, "test accuracy per class, runs side by side")))
        if any("val_top1" in record for run in self.runs for record in run.history):
            figure = plot_validation_runs({run.label: run.history for run in self.runs})
            sections.append(("Validation curves", html.figure(figure, "validation top-1 and loss per epoch")))
        config_body = f"<p>{html.escape(self.config_note())}</p>"
        if self.config_differences:
            config_body += html.table(self.config_grid())
        sections.append(("Config differences", config_body))
        if self.environment or self.packages:
            environment_body = html.table(self.environment_grid())
        else:
            environment_body = "<p>none: same versions, hardware, threads, git commit and packages</p>"
        sections.append(("Environment differences", environment_body))
        intro = html.verdict(self.headline(), "good")
        document = html.page(f"Comparison of {len(self.runs)} runs", sections, intro=intro,
                             subtitle=" vs ".join(self.labels))
        return html.write_page(path, document)


def plot_accuracy(runs: Sequence[ComparedRun]) -> Figure:
    """Test top-1 and top-5 bars per run, with each run's reported reference as a marker when it has one."""
    x = np.arange(len(runs))
    top1 = [100 * (run.results.get("test") or {}).get("top1", 0.0) for run in runs]
    top5 = [100 * ((run.results.get("test") or {}).get("top5") or 0.0) for run in runs]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(runs) + 2), 3.6))
    ax.bar(x - 0.2, top1, 0.4, label="test top-1", color="#4a7bd0")
    ax.bar(x + 0.2, top5, 0.4, label="test top-5", color="#9db8e8")
    for i, value in enumerate(top1):
        ax.text(i - 0.2, value, f"{value:.2f}", ha="center", va="bottom", fontsize=8)
    references = [(i, 100 * run.results["reference"]["top1"]) for i, run in enumerate(runs) if run.results.get("reference")]
    if references:
        ax.plot([i - 0.2 for i, _ in references], [r for _, r in references], "_", color="#2e9d57", markersize=30,
                markeredgewidth=2, label="reported top-1")
    ax.set_xticks(x, [run.label for run in runs], rotation=15, ha="right")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def plot_per_class(runs: Sequence[ComparedRun]) -> Figure | None:
    """Test accuracy per class, runs side by side, or None when the runs do not share their classes."""
    per_class = [(run.results.get("test") or {}).get("per_class") for run in runs]
    if not all(per_class) or any(list(p) != list(per_class[0]) for p in per_class):
        return None
    classes = list(per_class[0])
    return plot_class_bars(classes, {run.label: [100 * values[c] for c in classes] for run, values in zip(runs, per_class)})


def compare_runs(paths: Sequence[str | Path], *, include_expected: bool = False) -> Comparison:
    """Read two or more finished run folders and find what differs: metrics, config keys (without name and output_dir
    unless include_expected) and environment."""
    if len(paths) < 2:
        raise ConfigError(f"compare needs at least two run folders, got {len(paths)} ({', '.join(map(str, paths)) or 'none'}); "
                          "pass e.g. reprocls compare runs/a-<stamp> runs/b-<stamp>")
    loaded = [read_finished_run(path) for path in paths]
    labels = short_labels([run.path for run in loaded], [str(run.config.get("name") or "") for run in loaded])
    runs = [ComparedRun(**vars(run), label=label) for run, label in zip(loaded, labels)]
    flat_configs = [flatten(run.config) for run in runs]
    ignore = [] if include_expected else [k for k in EXPECTED_TO_DIFFER if any(k in flat for flat in flat_configs)]
    config_differences, config_equal = differing_values([{k: v for k, v in flat.items() if k not in ignore}
                                                         for flat in flat_configs])
    environment, packages = environment_differences([run.environment for run in runs])
    return Comparison(runs, metric_rows(runs), config_differences, config_equal, ignore, environment, packages)
