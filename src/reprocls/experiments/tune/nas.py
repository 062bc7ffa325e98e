"""`reprocls nas`: architecture search under a compute budget, on the tune machinery (study database, recovery
after kills, workers, a run folder per trial). Each candidate is measured before it trains, over-budget ones never
train, the space's reference network trains first with the same short schedule, and the result is a Pareto front
of ready recipes, the proxies' rank correlations beside the parameter count's, and a page."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import optuna
import torch
import yaml
from optuna.trial import TrialState

from reprocls import run_layout as layout
from reprocls.analysis.complexity import measure_complexity
from reprocls.analysis.doctor import Finding, diagnose, format_findings
from reprocls.analysis.proxies import PROXIES
from reprocls.config import ConfigError, Recipe, load_recipe, set_key
from reprocls.data import make_loader
from reprocls.data.datasets import load_dataset
from reprocls.experiments.tune.architecture import (ArchitecturePlan, correlations, load_architecture_space,
                                                    parse_macs, point_of, trained)
from reprocls.experiments.tune.search import tune
from reprocls.experiments.tune.storage import SKIPPED, is_repeat, open_storage, quiet_optuna
from reprocls.files import atomic_write_json, atomic_write_text
from reprocls.models.spaces import model_kwargs_of, space_info
from reprocls.recipe import check_names
from reprocls.reports.nas_page import write_nas_page

PROXY_IMAGES = 64  # NASWOT's batch: its kernel is PROXY_IMAGES x PROXY_IMAGES


def pareto_front(points: list[dict[str, Any]], cost: str = "macs") -> list[dict[str, Any]]:
    """The candidates no other beats on both validation top-1 (higher) and `cost` (lower), cheapest first."""
    front = [p for p in points
             if not any(q["val_top1"] >= p["val_top1"] and q[cost] <= p[cost]
                        and (q["val_top1"] > p["val_top1"] or q[cost] < p[cost]) for q in points)]
    return sorted(front, key=lambda p: p[cost])


def zoo_references(names: tuple[str, ...], input_size: tuple[int, int, int], num_classes: int) -> list[dict[str, Any]]:
    """Params and MACs of the space's zoo marks at this input size (models that cannot take it are left out)."""
    rows = []
    for name in names:
        try:
            counted = measure_complexity(name, input_size, in_chans=input_size[0], num_classes=num_classes)
        except Exception:  # a model that cannot take this input (fixed token grid, too deep for the size)
            continue
        rows.append({"model": name, "params": counted["params"], "macs": counted["macs"]})
    return sorted(rows, key=lambda r: r["macs"])


def candidate_row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {"trial": trial.number, "state": trial.state.name.lower(), "knobs": point_of(trial.params),
            "model": attrs.get("model"), "kwargs": attrs.get("kwargs"), "params": attrs.get("params"),
            "macs": attrs.get("macs"), "latency_ms": attrs.get("latency_ms"), "proxies": attrs.get("proxies"),
            "reference": bool(attrs.get("reference")), "skipped": attrs.get(SKIPPED), "run_dir": attrs.get("run_dir"),
            "val_top1": trial.value if trial.state == TrialState.COMPLETE else None}


def front_recipe(full: Recipe, row: dict[str, Any]) -> dict[str, Any]:
    """The search's recipe (its own schedule, not the proxy's) with the found network: an ordinary recipe."""
    raw = copy.deepcopy(full.raw)
    raw.setdefault("model", {})
    raw["model"] = {key: value for key, value in raw["model"].items() if key not in ("weights", "kwargs", "name")}
    set_key(raw, ["model", "name"], row["model"])
    set_key(raw, ["model", "kwargs"], row["kwargs"])
    raw["name"] = f"{full.config.name}-nas-trial{row['trial']:04d}"
    return raw


def summarize_nas(study: optuna.Study, folder: Path, plan: ArchitecturePlan, full: Recipe,
                  seconds: float) -> dict[str, Any]:
    """nas.json: every candidate (trained or not, and why), the fronts, the proxies' rank correlations with
    validation top-1, the zoo's reference marks; front members written as recipes under front/."""
    rows = [candidate_row(t) for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) and "macs" in t.user_attrs
            and not is_repeat(t)]  # a repeat is its original's row again
    scored = [r for r in rows if r["val_top1"] is not None]
    within = [r for r in scored if r["macs"] <= plan.budget_macs]  # the reference too, when the budget admits it
    front = pareto_front(within)
    (folder / layout.FRONT).mkdir(exist_ok=True)
    for row in front:
        path = folder / layout.FRONT / f"trial{row['trial']:04d}-{row['macs'] / 1e6:.1f}M.yaml"
        atomic_write_text(path, yaml.safe_dump(front_recipe(full, row), sort_keys=False))
        row["recipe"] = str(path)
    reference = next((r for r in scored if r["reference"]), None)
    summary = {
        "space": plan.space, "knobs": {k: list(v) for k, v in plan.knobs.items()}, "input_size": list(plan.input_size),
        "budget_macs": plan.budget_macs, "budget_latency_ms": plan.budget_latency_ms,
        "latency_batch": plan.latency_batch,
        "prefilter": plan.prefilter, "trained": len(scored),
        "never_trained": sum(bool(r["skipped"]) for r in rows), "wall_time_s": seconds,
        "reference": reference, "reference_name": space_info(plan.space).reference_name,
        "front": front, "front_latency": pareto_front([r for r in within if r["latency_ms"] is not None], "latency_ms"),
        "rank_correlation": correlations(trained(study)),
        "zoo": zoo_references(space_info(plan.space).zoo, plan.input_size, plan.num_classes),
        "candidates": rows, "objective": "validation top-1 after the proxy schedule (test plays no part)",
    }
    atomic_write_json(folder / layout.NAS_JSON, summary)
    return summary


def data_facts(recipe: Recipe, folder: Path) -> tuple[tuple[int, int, int], int, str]:
    """Input size and classes of the recipe's data, and PROXY_IMAGES normalised training images saved for the
    data-dependent proxies (loaded once here, not once per candidate)."""
    config = recipe.config
    splits = load_dataset(config.data, config.seed, None)
    loader = make_loader(splits.train, splits, config.data, train=False, device=torch.device("cpu"), seed=config.seed,
                         channels_last=False)
    images = next(iter(loader))[0][:PROXY_IMAGES].float().contiguous()
    path = folder / layout.PROXY_IMAGES
    torch.save(images, path)
    return (splits.in_chans, splits.image_size, splits.image_size), splits.num_classes, str(path)


def nas(recipe: Recipe | str | Path, overrides: list[str] | tuple[str, ...] = (), *, space: str | Path,
        budget_macs: str, trials: int, budget_latency_ms: float | None = None, latency_batch: int = 1, proxy_epochs: int | None = None,
        proxy: list[str] | tuple[str, ...] = (),
        sampler: str = "tpe", pruner: str = "hyperband", workers: int = 1, storage: str | None = None,
        study_name: str | None = None, out: str | Path | None = None, seed: int = 0, prefilter: str | None = None,
        proxies: tuple[str, ...] = ("naswot", "synflow"), progress: bool = True, doctor: bool = True) -> dict[str, Any]:
    """Search a registered space under a MACs (and optional latency) budget; returns nas.json's summary. `proxy`
    (key=value) and `proxy_epochs` shorten the candidates' training only: the front's recipes keep the recipe and
    `overrides`. Rerunning the same command resumes the search and ends with exactly `trials` trained candidates."""
    started = time.perf_counter()
    full = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, list(overrides))
    shorter = [*proxy, *([f"schedule.epochs={proxy_epochs}"] if proxy_epochs else [])]
    searched = load_recipe(full.path, [*full.overrides, *shorter]) if shorter else full
    check_names(searched.config)
    if sampler == "grid":
        raise ConfigError("--sampler grid: an architecture space is too large to enumerate; use tpe or random")
    for name in (prefilter, *proxies):
        if name is not None and name not in PROXIES:
            raise ConfigError(f"--prefilter/--proxies {name!r}: choose one of {', '.join(PROXIES.names())}")
    if prefilter is not None and prefilter not in proxies:
        proxies = (*proxies, prefilter)
    space_name, knobs = load_architecture_space(space)
    name = study_name or f"{full.config.name}-nas"
    folder = (Path(out) if out else Path(full.config.output_dir) / f"{name}-study").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    input_size, classes, images = data_facts(searched, folder)
    info = space_info(space_name)
    reference = info.reference if all(info.reference[k] in knobs[k] for k in knobs) else {}
    ref = measure_complexity(info.model, input_size, in_chans=input_size[0], num_classes=classes,
                             **model_kwargs_of(space_name, info.reference)[1])
    plan = ArchitecturePlan(space=space_name, knobs=knobs, input_size=input_size, num_classes=classes,
                            budget_macs=parse_macs(budget_macs, ref["macs"]), budget_latency_ms=budget_latency_ms,
                            latency_batch=latency_batch, proxies=tuple(proxies), prefilter=prefilter,
                            proxy_images=images, reference=reference)
    print(f"space {space_name} ({len(knobs)} knobs) on {info.model}; input {input_size}; reference "
          f"{info.reference_name}: {ref['macs'] / 1e6:.2f} M MACs, {ref['params'] / 1e6:.3f} M params; "
          f"budget {plan.budget_macs / 1e6:.2f} M MACs ({100 * plan.budget_macs / ref['macs']:.0f} % of it)"
          + (f", {budget_latency_ms:g} ms at batch {latency_batch}" if budget_latency_ms is not None else ""))
    print(f"candidates train with {' '.join(shorter) or 'the recipe as it is'} (pruner {pruner}); the front's recipes "
          f"keep the recipe's schedule ({full.config.schedule.epochs} epochs) and data")
    if not reference:
        print("note: the narrowed knobs exclude the reference network, so it is not trained as a baseline")
    findings = doctor_on_reference(searched, space_name) if doctor else []
    if findings:
        print(f"reproduction doctor, on the search's training with {info.reference_name} in the recipe's place:\n"
              f"{format_findings(findings)}\n")
    tune(searched, space=space, sampler=sampler, trials=trials, workers=workers, pruner=pruner, storage=storage,
         study_name=name, out=folder, seed=seed, progress=progress, architecture=plan)
    with quiet_optuna():
        url = storage or f"sqlite:///{folder / layout.STUDY_DB}"
        study = optuna.load_study(study_name=name, storage=open_storage(url, folder))
        summary = summarize_nas(study, folder, plan, full, time.perf_counter() - started)
    print_summary(summary)
    print(f"report: {write_nas_page(folder)}")
    return summary


def doctor_on_reference(searched: Recipe, space_name: str) -> list[Finding]:
    """The doctor's checks on the search's own training with the space's reference network in the recipe's model's
    place: a pitfall of the space's family under the proxy schedule (BatchNorm statistics too slow for it, a stem
    too coarse) shows before any candidate trains. The paper's schedule is not a proxy's yardstick: no reference."""
    model, kwargs = model_kwargs_of(space_name, space_info(space_name).reference)
    config = searched.with_values({"model.name": model, "model.kwargs": kwargs, "model.weights": None}, reference=None)
    try:
        return diagnose(config, explicit=set(searched.explicit))
    except ConfigError as error:  # the first candidate's training meets it too, and says so
        print(f"reproduction doctor: could not check the search's training: {error}")
        return []


def print_summary(summary: dict[str, Any]) -> None:
    """The front and the proxy comparison in the terminal."""
    reference = summary["reference"]
    if reference is not None:
        print(f"reference {summary['reference_name']}: val top-1 {100 * reference['val_top1']:.2f} % at "
              f"{reference['macs'] / 1e6:.2f} M MACs")
    print(f"Pareto front (val top-1 vs MACs) of {summary['trained']} trained candidates, "
          f"{summary['never_trained']} never trained (over budget or prefiltered):")
    for row in summary["front"]:
        print(f"  trial {row['trial']:>4}  {100 * row['val_top1']:.2f} %  {row['macs'] / 1e6:.2f} M MACs  "
              f"{row['params'] / 1e6:.3f} M params  {row['recipe']}")
    rho = summary["rank_correlation"]
    if rho:
        words = ", ".join(f"{k} {v:+.2f}" if v is not None else f"{k} n/a" for k, v in sorted(rho.items()))
        print(f"rank correlation with val top-1 (Spearman, trained candidates): {words}")
        baseline = rho.get("params")
        for name, value in rho.items():
            if name != "params" and value is not None and baseline is not None:
                print(f"  {name} {'beats' if value > baseline else 'does not beat'} the parameter count")
    print("confirm a front member with the full schedule over seeds: reprocls reproduce <front recipe> --seeds 3")
