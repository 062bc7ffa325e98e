"""A trained run brought back: its model rebuilt from the weights file (the recipe travels in its metadata) with the
data and settings it was trained with, re-evaluated on a split, or run over a split to record its predictions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reprocls import run_layout as layout
from reprocls.compress.export import load_exported
from reprocls.config import ConfigError, DataConfig, RunConfig, apply_overrides, build, parse_override
from reprocls.data import make_loader
from reprocls.data.datasets import Split
from reprocls.data.datasets import DatasetSplits
from reprocls.engine import EvalResult, evaluate
from reprocls.engine.precision import autocast
from reprocls.metrics.classification import binary_report, class_report, positive_scores, threshold_for_recall
from reprocls.metrics.mistakes import PredictionLog
from reprocls.models import load_safetensors, safetensors_metadata
from reprocls.recipe import Session, build_criterion, prepare


def eval_result_dict(result: EvalResult, classes: list[str]) -> dict[str, Any]:
    """One pass's numbers as results.json records them: summary, recall per class (per_class), precision, recall and
    F1 per class, macro-F1, balanced accuracy, and the confusion matrix."""
    return {**result.summary(), "per_class": dict(zip(classes, result.per_class)), **class_report(result.confusion, classes),
            "confusion": result.confusion.tolist()}


def positive_index(config: RunConfig, splits: DatasetSplits) -> int:
    """The positive class of a two-class task: eval.positive_class, else the one with fewer training images."""
    if config.eval.positive_class is not None:
        if config.eval.positive_class not in splits.classes:
            raise ConfigError(f"eval.positive_class: {config.eval.positive_class!r} is not one of the classes "
                              f"{splits.classes}")
        return splits.classes.index(config.eval.positive_class)
    counts = torch.bincount(splits.train.labels, minlength=2).tolist()
    return 0 if counts[0] < counts[1] else 1


def binary_results(config: RunConfig, splits: DatasetSplits, val: EvalResult | None, test: EvalResult,
                   threshold: float | None = None) -> dict[str, Any]:
    """ROC-AUC, PR-AUC and the operating point of a two-class model: the threshold that keeps eval.target_recall of
    the positive class on validation (never on test), with precision and recall at it on both splits."""
    positive = positive_index(config, splits)
    source = "given"
    if threshold is None and val is not None and val.scores is not None:
        threshold = threshold_for_recall(positive_scores(val.scores, positive), val.labels == positive,
                                         config.eval.target_recall)
        source = "validation"
    elif threshold is None:
        threshold, source = 0.5, "0.5 (no validation split to choose it on)"
    record = {"positive_class": splits.classes[positive], "target_recall": config.eval.target_recall,
              "threshold_from": source, "test": binary_report(test.scores, test.labels, positive, threshold)}
    if val is not None and val.scores is not None:
        record["val"] = binary_report(val.scores, val.labels, positive, threshold)
    return record


def locate_weights(target: Path) -> tuple[Path, Path | None]:
    """(weights file, run folder or None) for a run folder or a weights file path."""
    if target.is_dir():
        weights = target / layout.WEIGHTS
        if not weights.exists() and (target / layout.INT8_PROGRAM).exists():
            weights = target / layout.INT8_PROGRAM
        if not weights.exists():
            raise FileNotFoundError(f"{target} has no {layout.WEIGHTS}: is it a finished run folder?")
        return weights, target
    if not target.exists():
        raise FileNotFoundError(f"{target} does not exist; pass a run folder or its {layout.WEIGHTS}")
    return target, target.parent if layout.is_run(target.parent) else None


LOCATION_KEYS = ("root", "split_file")  # data keys that name files on the machine that trained


def recorded_recipe(weights: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """The recipe a weights file carries, checked for shape: a file that is not ours gets one line, not a traceback."""
    try:
        raw, info = json.loads(metadata["config"]), json.loads(metadata["reprocls"])
    except KeyError:
        raise ConfigError(f"{weights} carries no reprocls metadata; load it with create_model(name, weights=...) "
                          "instead") from None
    except ValueError as error:
        raise ConfigError(f"{weights}: its reprocls metadata is not valid JSON ({str(error)[:100]}); the file is damaged "
                          "or was not written by reprocls") from None
    if not isinstance(raw, dict) or not isinstance(info, dict) or not isinstance(info.get("classes"), list):
        raise ConfigError(f"{weights}: its reprocls metadata does not describe a model (no recipe or classes); the file "
                          "is damaged or was not written by reprocls")
    return raw


def where_data_is(raw: dict[str, Any], run_dir: Path | None) -> None:
    """Data locations come from the run folder's own config.yaml (the run of a compressed model in its compress-*
    folder) or from the user, never from a weights file's metadata (a crafted file could otherwise make eval read
    any folder of this machine)."""
    data = raw.setdefault("data", {}) if isinstance(raw.get("data", {}), dict) else {}
    saved = layout.read_config(run_dir) if run_dir is not None else None
    recorded = (saved or {}).get("data") or {}
    for key in LOCATION_KEYS:
        if key in recorded:
            data[key] = recorded[key]
        else:
            data.pop(key, None)


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
    if weights.suffix == ".pt2":  # an INT8 compressed model: metadata and recipe in the JSON beside it
        record = json.loads(weights.with_suffix(".json").read_text())
        metadata = {"reprocls": json.dumps(record), "config": json.dumps(record.pop("config"))}
    else:
        metadata = safetensors_metadata(weights)
    raw = recorded_recipe(weights, metadata)
    home = run_dir or next((f for f in (weights.parent, weights.parent.parent) if (f / layout.CONFIG).exists()), None)
    where_data_is(raw, home)
    config: RunConfig = build(RunConfig, apply_overrides(raw, list(overrides or [])))
    config.model.weights = None
    info = json.loads(metadata["reprocls"])
    if info.get("weights") == "pretrain":
        raise ConfigError(f"{weights} is the backbone of a `reprocls pretrain` run: it has no trained classifier to "
                          "evaluate or predict with. Probe it (`reprocls probe RUN`) or fine-tune it (`reprocls train "
                          "RECIPE model.weights=RUN`) and use that run")
    compressed = info.get("compressed") or {}
    session = prepare(config, torch.device("cpu") if compressed else device)
    if session.splits.classes != info["classes"]:
        model_classes, data_classes = set(info["classes"]), set(session.splits.classes)
        missing, extra = sorted(model_classes - data_classes), sorted(data_classes - model_classes)
        raise ConfigError(f"the data's classes differ from the model's: missing from the data {missing}, unknown to the model "
                          f"{extra} (model: {info['classes']}, data: {session.splits.classes}); evaluate on data with exactly "
                          "the model's classes, e.g. data.root=<folder with one sub-folder per model class>")
    if compressed:  # pruned or INT8: CPU, float inputs, the compressed module itself
        session.model, _ = load_exported(weights)
        session.amp_dtype, session.channels_last = None, False
    else:
        session.model.load_state_dict(load_safetensors(weights))
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


ALL_AS_TEST = ["data.split=[0.0, 0.0, 1.0]", "data.split_file=null", "data.limit_train=null", "data.limit_eval=null"]


def new_folder(target: str | Path, overrides: list[str]) -> Path | None:
    """The folder a data.root override points at when the run trained on another image folder: new data, to be scored
    whole instead of re-split (None when the run's own data is evaluated)."""
    roots = [parse_override(text)[1] for text in overrides if parse_override(text)[0] == ["data", "root"]]
    if not roots or roots[-1] is None:
        return None
    weights, _ = locate_weights(Path(target))
    recorded = recorded_recipe(weights, safetensors_metadata(weights)).get("data") if weights.suffix != ".pt2" else {}
    recorded = recorded if isinstance(recorded, dict) else {}
    if recorded.get("name") != "image_folder":
        return None
    given = Path(str(roots[-1])).expanduser().resolve()
    return None if recorded.get("root") and Path(recorded["root"]).expanduser().resolve() == given else given


def evaluate_saved(target: str | Path, split: str = "test", overrides: list[str] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Re-evaluate a trained model on a split with the preprocessing and precision it was trained with. A data.root
    override naming another image folder scores all of that folder, as new data (no comparison with the run)."""
    overrides = list(overrides or [])
    new = new_folder(target, overrides)
    if new is not None:
        overrides, split = overrides + ALL_AS_TEST, "test"
    trained = load_trained_run(target, overrides)
    config, session = trained.config, trained.session
    data_split = {"test": session.splits.test, "val": session.splits.val, "train": session.splits.train}[split]
    if data_split is None:
        raise ValueError(f"this run has no {split} split (data.val_fraction was 0)")
    loader = make_loader(data_split, session.splits, config.data, train=False, device=session.device, seed=config.seed,
                         channels_last=session.channels_last)
    result = evaluate(session.model, loader, device=session.device, amp_dtype=session.amp_dtype,
                      num_classes=session.splits.num_classes, criterion=build_criterion(config),
                      description=split, progress=progress, tta=config.eval.tta)
    out = {"split": split, "tta": config.eval.tta, **eval_result_dict(result, session.splits.classes),
           "images_per_s": result.samples / max(result.seconds, 1e-9)}
    if new is not None:
        out["new_data"] = {"root": str(new), "images": result.samples}
        return out
    if trained.run_dir is not None and layout.is_run(trained.run_dir):
        results = json.loads((trained.run_dir / layout.RESULTS).read_text())
        recorded = results.get(split) if config.eval.tta == "none" else None
        if split == "test" and (results.get("test_tta") or {}).get("mode") == config.eval.tta:
            recorded = results["test_tta"]  # the run's own TTA number, for the same mode
        if recorded:
            out["recorded"] = {k: recorded[k] for k in ("top1", "top5", "loss")}
    return out
