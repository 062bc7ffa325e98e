"""A trained run brought back: its model rebuilt from the weights file (the recipe travels in its metadata) with the
data and settings it was trained with, re-evaluated on a split, or run over a split to record its predictions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from reprocls import run_layout as layout
from reprocls.config import ConfigError, DataConfig, RunConfig, apply_overrides, build
from reprocls.data import make_loader
from reprocls.data.datasets import Split
from reprocls.engine import EvalResult, evaluate
from reprocls.engine.precision import autocast
from reprocls.metrics.mistakes import PredictionLog
from reprocls.recipe import Session, build_criterion, prepare


def eval_result_dict(result: EvalResult, classes: list[str]) -> dict[str, Any]:
    """One pass's numbers as results.json records them: summary, recall per class, the confusion matrix."""
    return {**result.summary(), "per_class": dict(zip(classes, result.per_class)), "confusion": result.confusion.tolist()}


def locate_weights(target: Path) -> tuple[Path, Path | None]:
    """(weights file, run folder or None) for a run folder or a weights file path."""
    if target.is_dir():
        weights = target / layout.WEIGHTS
        if not weights.exists():
            raise FileNotFoundError(f"{target} has no {layout.WEIGHTS}: is it a finished run folder?")
        return weights, target
    if not target.exists():
        raise FileNotFoundError(f"{target} does not exist; pass a run folder or its {layout.WEIGHTS}")
    return target, target.parent if layout.is_run(target.parent) else None


@dataclass
class TrainedRun:
    """A trained model rebuilt from its weights file, with the recipe, data and settings it was trained with."""

    config: RunConfig
    session: Session
    metadata: dict[str, Any]
    weights: Path
    run_dir: Path | None


def load_trained_run(target: str | Path, overrides: list[str] | None = None,
                     device: torch.device | None = None) -> TrainedRun:
    """Rebuild a run's model and data from a run folder or model.safetensors (the recipe travels in its metadata)."""
    weights, run_dir = locate_weights(Path(target))
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if "config" not in metadata:
        raise ValueError(f"{weights} carries no reprocls metadata; load it with create_model(name, weights=...) instead")
    raw = json.loads(metadata["config"])
    config: RunConfig = build(RunConfig, apply_overrides(raw, list(overrides or [])))
    config.model.weights = None
    session = prepare(config, device)
    info = json.loads(metadata["reprocls"])
    if session.splits.classes != info["classes"]:
        model_classes, data_classes = set(info["classes"]), set(session.splits.classes)
        missing, extra = sorted(model_classes - data_classes), sorted(data_classes - model_classes)
        raise ConfigError(f"the data's classes differ from the model's: missing from the data {missing}, unknown to the model "
                          f"{extra} (model: {info['classes']}, data: {session.splits.classes}); evaluate on data with exactly "
                          "the model's classes, e.g. data.root=<folder with one sub-folder per model class>")
    session.model.load_state_dict(load_file(str(weights)))
    return TrainedRun(config, session, metadata, weights, run_dir)


@torch.no_grad()
def predict_split(model: nn.Module, split: Split, session: Session, data: DataConfig) -> PredictionLog:
    """One evaluation pass over a whole split in order, with the run's own preprocessing, recording predictions."""
    loader = make_loader(split, session.splits, data, train=False, device=session.device, seed=0,
                         channels_last=session.channels_last)
    log = PredictionLog(split.labels)
    model.eval()
    for images, _ in loader:
        with autocast(session.device, session.amp_dtype):
            log.add(model(images))
    return log


def evaluate_saved(target: str | Path, split: str = "test", overrides: list[str] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Re-evaluate a trained model on a split with the preprocessing and precision it was trained with."""
    trained = load_trained_run(target, overrides)
    config, session = trained.config, trained.session
    data_split = {"test": session.splits.test, "val": session.splits.val, "train": session.splits.train}[split]
    if data_split is None:
        raise ValueError(f"this run has no {split} split (data.val_fraction was 0)")
    loader = make_loader(data_split, session.splits, config.data, train=False, device=session.device, seed=config.seed,
                         channels_last=session.channels_last)
    result = evaluate(session.model, loader, device=session.device, amp_dtype=session.amp_dtype,
                      num_classes=session.splits.num_classes, criterion=build_criterion(config),
                      description=split, progress=progress)
    out = {"split": split, **eval_result_dict(result, session.splits.classes)}
    if trained.run_dir is not None and layout.is_run(trained.run_dir):
        recorded = json.loads((trained.run_dir / layout.RESULTS).read_text()).get(split)
        if recorded:
            out["recorded"] = {k: recorded[k] for k in ("top1", "top5", "loss")}
    return out
