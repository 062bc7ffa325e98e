"""A study's page: report.html of a hyper-parameter search (best trial, trials table, search history, parameter
importance, every trial's validation curves), drawn from the study summary that study.json holds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reprocls import run_layout as layout  # noqa: E402
from reprocls.reports import html  # noqa: E402
from reprocls.reports.folders import read_history, scored_validation  # noqa: E402
from reprocls.reports.plots import plot_validation_runs, save  # noqa: E402
from reprocls.reports.tables import format_value  # noqa: E402

GREY = "#8a8f98"  # trials that did not finish


def plot_history(rows: list[dict[str, Any]]) -> plt.Figure:
    """Validation top-1 per trial in order, pruned trials at their last epoch, and the best so far."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    complete = [row for row in rows if row["state"] == "complete"]
    pruned = [row for row in rows if row["state"] == "pruned" and row["last_val_top1"] is not None]
    if complete:
        ax.scatter([r["number"] for r in complete], [100 * r["value"] for r in complete], color="#2b6cb0", zorder=3,
                   label="complete")
        best, xs, ys = -math.inf, [], []
        for row in sorted(complete, key=lambda r: r["number"]):
            best = max(best, 100 * row["value"])
            xs.append(row["number"])
            ys.append(best)
        xs.append(max(r["number"] for r in rows))
        ys.append(best)
        ax.step(xs, ys, where="post", color="#d9822b", label="best so far")
    if pruned:
        ax.scatter([r["number"] for r in pruned], [100 * r["last_val_top1"] for r in pruned], marker="x",
                   color=GREY, zorder=3, label="pruned (last validation)")
    if not complete and not pruned:
        ax.text(0.5, 0.5, "no finished trials yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("trial")
    ax.set_ylabel("validation top-1 (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if complete or pruned:
        ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_importance(importance: dict[str, float]) -> plt.Figure:
    """One bar per searched key, the most important on top."""
    keys = sorted(importance, key=importance.get)
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(keys) + 1.2))
    ax.barh(keys, [importance[key] for key in keys], color="#4a7bd0")
    ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def trial_history(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A trial's validation per epoch as the objective scored it: from its run folder's metrics.jsonl (which has the
    loss too), cut to the epochs the trial reported (a retry may have continued the folder), else from the study."""
    reported = {int(step) for step, _ in row["curve"]}
    records = read_history(Path(row["run_dir"])) if row["run_dir"] else []
    history = [scored_validation(record) for record in records if record["epoch"] in reported and "val_top1" in record]
    return history or [{"epoch": int(step), "val_top1": value, "val_loss": math.nan} for step, value in row["curve"]]


def plot_trial_curves(rows: list[dict[str, Any]], best: int | None) -> plt.Figure:
    """Every trial's validation top-1 and loss per epoch: pruned trials grey, dashed and ending in a cross, failed ones
    grey and dotted, the best one bold; a legend per trial only while it stays readable."""
    histories: dict[str, list[dict[str, Any]]] = {}
    labels: dict[str, dict[str, Any]] = {}
    for row in rows:
        history = trial_history(row) if row["state"] != "repeat" else None  # a repeat's run is its original's
        if history:
            label = f"trial {row['number']}" + (" (best)" if row["number"] == best else
                                                f" ({row['state']})" if row["state"] != "complete" else "")
            histories[label], labels[label] = history, row
    fig = plot_validation_runs(histories, dashed={label for label, row in labels.items()
                                                  if row["state"] in ("pruned", "failed")}, legend=False)
    top1 = fig.axes[0]
    for ax in fig.axes:
        for line in ax.get_lines():
            row = labels[line.get_label()]
            if row["state"] in ("pruned", "failed"):
                line.set(color=GREY, linestyle="--" if row["state"] == "pruned" else ":")
            if row["number"] == best:
                line.set(color="#1d2330", linewidth=2.6)
    for label, row in labels.items():
        if row["state"] == "pruned":
            last = histories[label][-1]
            top1.plot(last["epoch"], 100 * last["val_top1"], marker="x", color="#c53030", markersize=9, linestyle="")
    if not histories:
        top1.text(0.5, 0.5, "no validation epochs recorded", ha="center", va="center", transform=top1.transAxes)
    shown = [line for line in top1.get_lines() if line.get_label() in labels
             and (len(labels) <= 10 or labels[line.get_label()]["number"] == best)]
    styles = [Line2D([], [], linestyle="--", marker="x", color=GREY, markeredgecolor="#c53030", label="pruned (x: stopped)"),
              Line2D([], [], linestyle=":", color=GREY, label="failed")]
    top1.legend(handles=shown + styles, fontsize=8, loc="lower right")
    return fig


def read_study_summary(folder: Path) -> dict[str, Any]:
    """A study folder's study.json (written by reprocls tune after every run, and by reprocls report from study.db)."""
    path = folder / layout.STUDY_JSON
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no {layout.STUDY_JSON}; `reprocls report {folder}` writes it from "
                                f"{layout.STUDY_DB}, or run `reprocls tune` first")
    return json.loads(path.read_text())


def write_study_page(folder: str | Path, summary: dict[str, Any] | None = None) -> Path:
    """<study folder>/report.html, self-contained: from `summary`, else from the folder's study.json."""
    folder = Path(folder)
    summary = summary if summary is not None else read_study_summary(folder)
    rows, best, keys = summary["trials"], summary["best"], list(summary["space"])
    save(plot_history(rows), folder / layout.HISTORY_PNG)
    if summary["importance"]:
        save(plot_importance(summary["importance"]), folder / layout.IMPORTANCE_PNG)
    counts = summary["counts"]
    intro = html.cards([("best val top-1", f"{100 * best['value']:.2f} %" if best else "-"),
                        ("best trial", str(best["number"]) if best else "-"),
                        ("finished", f"{summary['finished']} / {summary['trials_target']}"),
                        ("complete", str(counts["complete"])), ("pruned", str(counts["pruned"])),
                        ("failed", str(counts["failed"]))])
    best_recipe = folder / layout.BEST_YAML
    if best is None:
        best_html = html.verdict("No trial has completed yet, so there is no best recipe.", "warn")
    else:
        best_html = (html.table([["parameter", "value"], *[[k, format_value(v)] for k, v in best["params"].items()]])
                     + f"<p>Validation top-1 {100 * best['value']:.2f} % (trial {best['number']}, run folder "
                     f"<code>{html.escape(best['run_dir'] or '-')}</code>). Train the best recipe:</p>"
                     + html.code(f"reprocls train {best_recipe.resolve()}"))
        if best_recipe.exists():
            best_html += html.code(best_recipe.read_text(), collapsed=True, summary="best.yaml")
    table_rows = [["trial", "state", *keys, "val top-1", "pruned at epoch", "duration", "note"]]
    for row in rows:
        value = row["value"] if row["value"] is not None else row["last_val_top1"]
        note = row["error"] or (f"retry of trial {row['retry_of']}" if row["retry_of"] is not None else
                                f"the point of trial {row['repeat_of']}, not trained again"
                                if row.get("repeat_of") is not None else "")
        table_rows.append([row["number"], row["state"], *[format_value(row["params"].get(k, "-")) for k in keys],
                           f"{100 * value:.2f} %" if value is not None else "-", row["pruned_at_epoch"] or "",
                           f"{row['duration_s']:.0f} s" if row["duration_s"] is not None else "-", note])
    importance_html = (html.figure(folder / layout.IMPORTANCE_PNG, "parameter importance", alt="parameter importance")
                       + f"<p>{html.escape(summary['importance_note'])}</p>" if summary["importance"]
                       else f"<p>Not shown: {html.escape(summary['importance_note'])}.</p>")
    curves_html = html.figure(plot_trial_curves(rows, best["number"] if best else None),
                              "validation top-1 and loss per epoch (of the weights each trial keeps: EMA when better); "
                              "grey, dashed and ending in a cross: pruned; grey dotted: failed", alt="validation curves")
    command = summary.get("command", {})
    settings = [["setting", "value"], ["objective", summary["objective"]], ["storage", summary["storage"]],
                ["recipe", command.get("recipe")], ["overrides", " ".join(command.get("overrides", [])) or "-"],
                ["sampler", f"{command.get('sampler')} (seed {command.get('seed')})"], ["pruner", command.get("pruner")],
                *[[key, text] for key, text in summary["space"].items()]]
    sections = [("Best trial", best_html), ("Trials", html.table(table_rows, numeric_columns=(0, *range(2, len(keys) + 5)))),
                ("Search history", html.figure(folder / layout.HISTORY_PNG, "validation top-1 per trial and the best so far",
                                               alt="search history")),
                ("Parameter importance", importance_html), ("Validation curves", curves_html),
                ("Search space and settings", html.table(settings))]
    document = html.page(f"Study {summary['study']}", sections, intro=intro,
                         subtitle=f"hyper-parameter search, {summary['updated']}, folder {summary['folder']}")
    return html.write_page(folder / layout.REPORT_HTML, document)
