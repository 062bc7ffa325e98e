"""What a search found, as plain data: study.json (every trial, the best one, parameter importance), best.yaml (the
best trial as a ready recipe), and the lines printed per trial and at the end."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import json_to_distribution
from optuna.trial import FrozenTrial, TrialState

from reprocls import run_layout as layout
from reprocls.config import ConfigError, Recipe, load_config, set_key
from reprocls.experiments.tune.space import describe_distribution
from reprocls.experiments.tune.storage import (GRACE_S, REPEAT_OF, SKIPPED, find_run, is_repeat, masked,
                                               open_storage, quiet_optuna, spends_budget, trained_to_the_end)
from reprocls.files import atomic_write_json, atomic_write_text
from reprocls.reports.study_page import write_study_page
from reprocls.reports.tables import format_grid, format_value

OBJECTIVE = "validation top-1 of the trial's final weights (the test split plays no part in the choice)"


def failure(trial: FrozenTrial) -> str:
    """Why a failed trial failed; one failed by Optuna's heartbeat check (another process found it silent for
    GRACE_S seconds) carries no note of its own, as a finished trial takes no more attributes."""
    attrs = trial.user_attrs
    if attrs.get("interrupted"):
        return "interrupted"
    return attrs.get("error") or attrs.get("crashed") or f"heartbeat lost (silent for over {GRACE_S} s)"


def trial_line(trial: FrozenTrial) -> str:
    """One finished trial for the terminal: outcome, parameters, duration."""
    params = "  ".join(f"{key}={format_value(value)}" for key, value in trial.params.items())
    took = f"{trial.duration.total_seconds():.0f} s" if trial.duration else ""
    attrs = trial.user_attrs
    if is_repeat(trial):
        outcome = f"val top-1 {100 * trial.value:.2f} %, the point of trial {attrs[REPEAT_OF]} (not trained again)"
    elif trial.state == TrialState.COMPLETE:
        outcome = f"val top-1 {100 * trial.value:.2f} %"
    elif SKIPPED in attrs:
        outcome = f"not trained: {attrs[SKIPPED]}"
    elif trial.state == TrialState.PRUNED:
        last = trial.intermediate_values.get(max(trial.intermediate_values)) if trial.intermediate_values else None
        outcome = f"pruned at epoch {attrs.get('pruned_at_epoch', '?')}"
        outcome += f" ({100 * last:.2f} %)" if last is not None else ""
    elif attrs.get("surplus"):
        outcome = "not run: the budget was reached by other workers"
    else:
        outcome = f"failed: {failure(trial)}"
    return f"trial {trial.number:>4}  {outcome}  {params}  {took}"


def summarize(study: optuna.Study, folder: Path, url: str) -> dict[str, Any]:
    """study.json: every trial (number, state, params, value, run folder, duration) and the best one."""
    trials = study.get_trials(deepcopy=False)
    rows = [trial_row(trial, folder) for trial in trials]
    complete = [trial for trial in trials if trained_to_the_end(trial)]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None  # ties: the earliest trial
    importance, note = param_importance(study, complete)
    states = ("complete", "pruned", "failed", "running", "waiting", "not trained", "repeat")
    counts = {state: sum(row["state"] == state for row in rows) for state in states}
    command = study.user_attrs.get("command", {})
    return {
        "study": study.study_name, "storage": masked(url), "folder": str(folder), "direction": "maximize",
        "objective": OBJECTIVE, "command": command, "trials_target": command.get("trials"),
        "space": {key: describe_distribution(json_to_distribution(text)) for key, text in study.user_attrs.get("space", {}).items()},
        "finished": sum(spends_budget(trial) for trial in trials), "counts": counts, "trials": rows,
        "best": next(row for row in rows if row["number"] == best.number) if best else None,
        "importance": importance, "importance_note": note,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def trial_row(trial: FrozenTrial, folder: Path) -> dict[str, Any]:
    """One trial as study.json records it: plain values a report can be rebuilt from without the database."""
    attrs = trial.user_attrs
    state = ("skipped" if attrs.get("surplus") else "not trained" if SKIPPED in attrs
             else "repeat" if is_repeat(trial) else trial.state.name.lower().replace("fail", "failed"))
    curve = sorted(trial.intermediate_values.items())
    return {
        "number": trial.number, "state": state, "params": trial.params,
        "value": trial.value if trial.state == TrialState.COMPLETE else None,
        "last_val_top1": curve[-1][1] if curve else None, "epochs_reported": len(curve),
        "pruned_at_epoch": attrs.get("pruned_at_epoch"), "curve": [[step, value] for step, value in curve],
        "run_dir": attrs.get("run_dir") or (str(found) if (found := find_run(folder, attrs.get("run_name"))) else None),
        "host": attrs.get("host"), "duration_s": trial.duration.total_seconds() if trial.duration else None,
        "error": failure(trial) if state == "failed" else attrs.get(SKIPPED),
        "retry_of": trial.system_attrs.get("failed_trial"), "repeat_of": attrs.get(REPEAT_OF),
    }


def param_importance(study: optuna.Study, complete: list[FrozenTrial]) -> tuple[dict[str, float] | None, str]:
    """PED-ANOVA importance (no scikit-learn needed): how differently each parameter is spread in the best trials."""
    varied = [key for key in (complete[0].params if complete else {})
              if len({json.dumps(t.params.get(key)) for t in complete}) > 1]
    if len(complete) < 3 or not varied:
        return None, "needs at least 3 complete trials with different parameter values"
    try:
        with quiet_optuna():
            values = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), params=varied)
    except (ValueError, RuntimeError, ZeroDivisionError) as error:
        return None, f"not computed: {error}"
    return ({key: float(value) for key, value in values.items()},
            "PED-ANOVA (Watanabe et al. 2023): how far each parameter's spread in the top trials departs from the "
            "whole search; Optuna's fANOVA would need scikit-learn")


def write_best_recipe(summary: dict[str, Any], recipe: Recipe, path: Path) -> Path:
    """best.yaml: the base recipe + overrides + the best parameters, checked by load_config before it is kept."""
    best = summary["best"]
    raw = copy.deepcopy(recipe.raw)
    for key, value in best["params"].items():
        set_key(raw, key.split("."), value)
    raw["name"] = f"{summary['study']}-best"
    base = f"the recipe {recipe.path}" if recipe.path is not None else "the schema's defaults (no recipe file)"
    overrides = recipe.overrides
    header = [f"# Best trial of study {summary['study']!r}: trial {best['number']}, validation top-1 "
              f"{100 * best['value']:.2f} % ({summary['finished']} trials finished).",
              f"# Built from {base}" + (f" with {' '.join(overrides)}" if overrides else "")
              + ", and the trial's parameters:",
              "#   " + ", ".join(f"{key}={value}" for key, value in best["params"].items()),
              f"# Train it: reprocls train {path}", ""]
    text = "\n".join(header) + yaml.safe_dump(raw, sort_keys=False)
    check = path.with_name(f".{path.name}.check.yaml")
    try:  # best.yaml must load like any recipe before it replaces the previous one
        check.write_text(text)
        load_config(check)
    finally:
        check.unlink(missing_ok=True)
    return atomic_write_text(path, text)


def format_summary(summary: dict[str, Any], *, best_recipe: bool = True) -> str:
    """The compact table printed when tune ends."""
    keys = list(summary["space"])
    rows = [["trial", "state", "val top-1", *keys, "epochs", "time"]]
    for row in summary["trials"]:
        value = row["value"] if row["value"] is not None else row["last_val_top1"]
        rows.append([str(row["number"]), row["state"], f"{100 * value:.2f} %" if value is not None else "-",
                     *[format_value(row["params"].get(key, "-")) for key in keys], str(row["epochs_reported"]),
                     f"{row['duration_s']:.0f} s" if row["duration_s"] is not None else "-"])
    counts = summary["counts"]
    lines = [f"study {summary['study']!r}: {summary['finished']} of {summary['trials_target']} trials finished "
             f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed"
             + (f"; {counts['not trained']} not trained: over budget or prefiltered" if counts.get("not trained") else "")
             + (f"; {counts['repeat']} repeated an earlier point, not trained again" if counts.get("repeat") else "")
             + ")",
             format_grid(rows)]
    best = summary["best"]
    if best is None:
        lines.append("no trial completed, so there is no best recipe")
    else:
        lines.append(f"best: trial {best['number']}, val top-1 {100 * best['value']:.2f} %: "
                     + ", ".join(f"{k}={format_value(v)}" for k, v in best["params"].items()))
        if best_recipe:
            lines.append(f"train it: reprocls train {Path(summary['folder']) / layout.BEST_YAML}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- report


def refresh_summary(folder: Path, study: str | None = None) -> dict[str, Any]:
    """The study's summary, fresh from study.db when the folder has one (written to study.json), else study.json as
    it is; `study` names the one to read where study.db holds several."""
    database = folder / layout.STUDY_DB
    if database.exists():
        url = f"sqlite:///{database.resolve()}"
        with quiet_optuna():
            storage = open_storage(url)
            names = optuna.get_all_study_names(storage)
            if study is None and len(names) == 1:
                study = names[0]
            if study not in names:
                raise ConfigError(f"{database} holds the studies {', '.join(map(repr, names)) or '(none)'}; name the one "
                                  f"to report: write_study_report({str(folder)!r}, study=NAME)")
            summary = summarize(optuna.load_study(study_name=study, storage=storage), folder.resolve(), url)
        atomic_write_json(folder / layout.STUDY_JSON, summary)
        return summary
    if (folder / layout.STUDY_JSON).exists():
        return json.loads((folder / layout.STUDY_JSON).read_text())
    raise FileNotFoundError(f"{folder} is not a study folder (no study.db or study.json); run `reprocls tune` first")


def write_study_report(folder: str | Path, summary: dict[str, Any] | None = None, *, study: str | None = None) -> Path:
    """<study folder>/report.html: from `summary`, else from a summary refreshed from study.db (or study.json alone)."""
    folder = Path(folder)
    return write_study_page(folder, summary if summary is not None else refresh_summary(folder, study))
