"""What `reprocls nas` adds to a search: the architecture space file, each candidate measured before any training
(MACs, parameters, latency on this machine, zero-cost proxies), and the budget gate that keeps an over-budget
network from ever training."""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.distributions import CategoricalDistribution

from reprocls.analysis.complexity import measure_complexity
from reprocls.analysis.proxies import PROXIES, spearman
from reprocls.compress.measure import latency_ms
from reprocls.config import ConfigError, find_config, read_yaml_file
from reprocls.experiments.tune.storage import SKIPPED, trained_to_the_end
from reprocls.models import create_model
from reprocls.models.spaces import SPACES, model_kwargs_of, space_info
from reprocls.registry import suggest

KNOB = "arch."  # the study's parameter names: arch.<knob>, apart from recipe keys
PREFILTER_AFTER = 5  # trained candidates needed before a proxy may decide anything


@dataclass(frozen=True)
class ArchitecturePlan:
    """The space, budget and proxies every search process works from (picklable across spawn)."""

    space: str
    knobs: dict[str, tuple[Any, ...]]
    input_size: tuple[int, int, int]
    num_classes: int
    budget_macs: float
    budget_latency_ms: float | None = None
    latency_batch: int = 1
    proxies: tuple[str, ...] = ("naswot", "synflow")
    prefilter: str | None = None
    proxy_images: str | None = None  # a .pt file of normalised training images the data-dependent proxies read
    max_skips: int = 1000  # over-budget draws allowed before the search says the budget leaves too little
    reference: dict[str, Any] = field(default_factory=dict)

    def distributions(self) -> dict[str, CategoricalDistribution]:
        return {f"{KNOB}{knob}": CategoricalDistribution(list(choices)) for knob, choices in self.knobs.items()}

    def shape(self) -> dict[str, int]:
        """The builder arguments every candidate shares: the task's input channels and classes."""
        return {"in_chans": self.input_size[0], "num_classes": self.num_classes}

    def reference_params(self) -> dict[str, Any]:
        """The reference point as the study's trial parameters, to enqueue it first."""
        return {f"{KNOB}{knob}": value for knob, value in self.reference.items()}


def load_architecture_space(path: str | Path) -> tuple[str, dict[str, tuple[Any, ...]]]:
    """`space: NAME` (a registered space) and optional `knobs: {knob: [choices]}` narrowing some of its knobs."""
    path = find_config(path, "--space", "search")
    raw = read_yaml_file(path, "--space")
    if not isinstance(raw, dict) or "space" not in raw:
        raise ConfigError(f"--space {path}: an architecture space file names a registered space (space: "
                          f"{' | '.join(SPACES.names())}) and may narrow its knobs (knobs: {{depth1: [1, 2, 3]}})")
    unknown = sorted(set(raw) - {"space", "knobs"})
    if unknown:
        raise ConfigError(f"--space {path}: unknown field(s) {unknown}; the file has space: and knobs: only")
    name = str(raw["space"])
    if name not in SPACES:
        raise ConfigError(f"--space {path}: space: {name!r} is not registered.{suggest(name, SPACES.names())} "
                          f"Known: {', '.join(SPACES.names())} (models/spaces.py)")
    knobs = dict(space_info(name).knobs)
    for knob, choices in (raw.get("knobs") or {}).items():
        if knob not in knobs:
            raise ConfigError(f"--space {path}: knobs.{knob} is not a knob of {name}.{suggest(knob, list(knobs))} "
                              f"Its knobs: {', '.join(knobs)}")
        listed = choices if isinstance(choices, list) else [choices]
        outside = [value for value in listed if value not in knobs[knob]]
        if not listed or outside:
            raise ConfigError(f"--space {path}: knobs.{knob}: {outside or listed} not among its choices "
                              f"{list(knobs[knob])}; list some of them")
        knobs[knob] = tuple(listed)
    return name, knobs


def parse_macs(text: str, reference_macs: float) -> float:
    """--budget-macs as a number (2e7), with a K/M/G suffix (20M), or as a percentage of the reference (50%)."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[+-]?[0-9]+)?)\s*([kKmMgG%]?)\s*", str(text))
    if not match:
        raise ConfigError(f"--budget-macs {text}: give MACs per image as a number (1.5e7), with K/M/G (15M), or as "
                          "a percentage of the space's reference network (50%)")
    value, unit = float(match.group(1)), match.group(2).upper()
    scale = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "%": reference_macs / 100}[unit]
    if value <= 0:
        raise ConfigError(f"--budget-macs {text}: the budget must be positive")
    return value * scale


def point_of(params: dict[str, Any]) -> dict[str, Any]:
    """The architecture knobs among a trial's parameters, without their prefix."""
    return {key[len(KNOB):]: value for key, value in params.items() if key.startswith(KNOB)}


def measure(plan: ArchitecturePlan, point: dict[str, Any]) -> dict[str, Any]:
    """A candidate before training: its model and builder arguments, params, MACs per image and, when a latency
    budget is set, its median forward latency on this machine at --latency-batch."""
    model_name, kwargs = model_kwargs_of(plan.space, point)
    counted = measure_complexity(model_name, plan.input_size, **kwargs, **plan.shape())
    facts: dict[str, Any] = {"model": model_name, "kwargs": kwargs, "params": counted["params"],
                             "macs": counted["macs"]}
    if plan.budget_latency_ms is not None:
        model = create_model(model_name, **kwargs, **plan.shape()).eval()
        sample = torch.zeros(*plan.input_size)  # one image; latency() repeats it to the batch
        with torch.inference_mode():
            facts["latency_ms"] = latency_ms(model, sample, plan.latency_batch)
    return facts


def over_budget(plan: ArchitecturePlan, facts: dict[str, Any]) -> str | None:
    """Why a measured candidate may not train, or None."""
    if facts["macs"] > plan.budget_macs:
        return f"{facts['macs'] / 1e6:.2f} M MACs > budget {plan.budget_macs / 1e6:.2f} M"
    latency = facts.get("latency_ms")
    if plan.budget_latency_ms is not None and latency is not None and latency > plan.budget_latency_ms:
        return f"{latency:.2f} ms > budget {plan.budget_latency_ms:g} ms at batch {plan.latency_batch}"
    return None


@functools.cache
def proxy_batch(path: str) -> torch.Tensor:
    """The saved proxy images, read once per process rather than once per candidate."""
    return torch.load(path, weights_only=True)


def proxy_scores(plan: ArchitecturePlan, facts: dict[str, Any]) -> dict[str, float]:
    """Each zero-cost proxy of the untrained candidate (seeded, so a retry scores the same), params included."""
    if not plan.proxies:
        return {"params": float(facts["params"])}
    images = proxy_batch(plan.proxy_images) if plan.proxy_images else torch.randn(16, *plan.input_size)
    torch.manual_seed(0)
    model = create_model(facts["model"], **facts["kwargs"], **plan.shape())
    scores = {"params": float(facts["params"])}
    for name in plan.proxies:
        value = PROXIES.get(name)(model, images)
        scores[name] = value if math.isfinite(value) else -math.inf
    return scores


def trained(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Candidates that finished training with a score, each once (a repeat is its original's result again)."""
    return [t for t in study.get_trials(deepcopy=False)
            if trained_to_the_end(t) and "proxies" in t.user_attrs]


def correlations(trials: list[optuna.trial.FrozenTrial]) -> dict[str, float | None]:
    """Spearman's rank correlation of each proxy (params included) with validation top-1 over trained candidates."""
    names = sorted({name for t in trials for name in t.user_attrs["proxies"]})
    values = [t.value for t in trials]
    return {name: spearman([t.user_attrs["proxies"].get(name, -math.inf) for t in trials], values) for name in names}


def prefilter_verdict(plan: ArchitecturePlan, study: optuna.Study, scores: dict[str, float]) -> str | None:
    """With --prefilter P: skip a candidate scoring below the median P of trained candidates, but only once P's rank
    correlation beats the parameter count's on at least PREFILTER_AFTER of them; otherwise every candidate trains."""
    if plan.prefilter is None:
        return None
    done = trained(study)
    if len(done) < PREFILTER_AFTER:
        return None
    rho = correlations(done)
    mine, baseline = rho.get(plan.prefilter), rho.get("params")
    if mine is None or (baseline is not None and mine <= baseline):
        return None
    median = sorted(t.user_attrs["proxies"][plan.prefilter] for t in done)[len(done) // 2]
    if scores[plan.prefilter] < median:
        versus = "n/a" if baseline is None else f"{baseline:.2f}"
        return (f"prefiltered: {plan.prefilter} {scores[plan.prefilter]:.4g} < median {median:.4g} of {len(done)} "
                f"trained (rank correlation {mine:.2f} vs params {versus})")
    return None


def admit(plan: ArchitecturePlan, trial: optuna.Trial, params: dict[str, Any]) -> dict[str, Any]:
    """The recipe values of a trial's candidate; a candidate over budget (or prefiltered) is noted on the trial and
    ends it as pruned before anything trains (the space's reference network trains whatever the budget, as the
    baseline). Measured facts go on the trial for the summary."""
    facts = measure(plan, point_of(params))
    for key in ("model", "kwargs", "params", "macs", "latency_ms"):
        if key in facts:
            trial.set_user_attr(key, facts[key])
    trial.set_constraint("macs", facts["macs"] / plan.budget_macs - 1)  # feasible at <= 0; TPE reads it
    if plan.budget_latency_ms is not None:
        trial.set_constraint("latency", facts["latency_ms"] / plan.budget_latency_ms - 1)
    reason = None if trial.user_attrs.get("reference") else over_budget(plan, facts)
    if reason is None:
        scores = proxy_scores(plan, facts)
        trial.set_user_attr("proxies", scores)
        reason = None if trial.user_attrs.get("reference") else prefilter_verdict(plan, trial.study, scores)
    if reason is not None:
        trial.set_user_attr(SKIPPED, reason)
        raise optuna.TrialPruned(f"not trained: {reason}")
    values = {key: value for key, value in params.items() if not key.startswith(KNOB)}
    return {**values, "model.name": facts["model"], "model.kwargs": facts["kwargs"], "model.weights": None}
