"""A recipe in, a run folder out: config -> data -> model -> fit -> test -> results, weights and report."""

from __future__ import annotations

import inspect
import json
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from reprocls.config import ConfigError, RunConfig, apply_overrides, build, dump, to_dict
from reprocls.data import DATASETS, load_dataset, make_loader
from reprocls.data.datasets import DatasetSplits
from reprocls.engine import (SCHEDULERS, EvalResult, FitResult, build_optimizer, build_scheduler, evaluate, fit,
                             resolve_channels_last, resolve_device, resolve_precision, scaled_lr)
from reprocls.engine.distributed import World, init_distributed, shutdown_distributed
from reprocls.engine.ema import create_ema
from reprocls.engine.train import TrainState
from reprocls.experiments.resume import CHECKPOINTS, Checkpointer, agree_on, find_resume_point, restore
from reprocls.envinfo import environment
from reprocls.files import atomic_write_json, atomic_write_text
from reprocls.experiments.report import format_table, results_table, write_report
from reprocls.experiments.html_report import write_run_html
from reprocls.experiments.mistakes import RecordingModel, save_test_mistakes
from reprocls.experiments.verdict import judge
from reprocls.metrics.mistakes import PredictionLog
from reprocls.models import MODELS, create_model, warn_if_input_too_small
from reprocls.registry import suggest

WEIGHTS_FILE = "model.safetensors"


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_names(config: RunConfig) -> None:
    """Fail before any work when a model, dataset or schedule name is unknown, naming the key and a fix."""
    checks = [("model.name", config.model.name, MODELS), ("data.name", config.data.name, DATASETS),
              ("schedule.name", config.schedule.name, SCHEDULERS)]
    for key, value, registry in checks:
        if key == "model.name" and "/" in value:
            continue
        if value not in registry:
            raise ConfigError(f"{key}: unknown {registry.kind} {value!r}.{suggest(value, registry.names())} "
                              f"Choose from: {', '.join(registry.names())}")


def build_model(config: RunConfig, splits: DatasetSplits) -> nn.Module:
    """The recipe's model sized for the dataset's classes and channels."""
    kwargs = dict(config.model.kwargs)
    kwargs.update(num_classes=splits.num_classes, in_chans=config.model.in_chans or splits.in_chans)
    name = config.model.name
    if "/" not in name and name in MODELS and "img_size" in inspect.signature(MODELS.get(name)).parameters:
        kwargs.setdefault("img_size", splits.image_size)  # token-grid models are built for the data's image size
    try:
        model = create_model(config.model.name, weights=config.model.weights, **kwargs)
    except TypeError as error:
        raise ConfigError(f"model.kwargs: {config.model.name} rejected {kwargs}: {error}") from None
    warn_if_input_too_small(model, splits.image_size)
    check_input_fits(model, config.model.name, kwargs["in_chans"], splits.image_size)
    return model


def check_input_fits(model: nn.Module, name: str, in_chans: int, image_size: int) -> None:
    """One tiny forward before training, so a model that cannot take the data's image size fails at once."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, image_size, image_size))
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"model.name: {name} cannot take {in_chans}x{image_size}x{image_size} inputs ({error}). "
                          "Set data.image_size to a size it accepts, or pick a small-image variant.") from None
    finally:
        model.train(was_training)


class RunFolder:
    """runs/<name>-<timestamp>/: config, environment, metrics.jsonl, TensorBoard events, weights, results, report."""

    def __init__(self, config: RunConfig, root: Path | None = None, *, resume: Path | None = None,
                 history: list[dict] | None = None, step: int = 0) -> None:
        if resume is not None:  # continue a run: keep its folder and config, drop log lines past the checkpoint
            self.path = resume
            self.write_lines("metrics.jsonl", [json.dumps(record) for record in history or []])
        else:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
            base = Path(root or config.output_dir) / f"{config.name}-{stamp}"
            path, suffix = base, 1
            while path.exists():
                path, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
            self.path = path
            self.path.mkdir(parents=True)
            dump(config, self.path / "config.yaml")
        self.metrics = open(self.path / "metrics.jsonl", "a", buffering=1)
        self.tensorboard = SummaryWriter(str(self.path / "tensorboard"), purge_step=step if resume is not None else None)

    def write_lines(self, name: str, lines: list[str]) -> None:
        atomic_write_text(self.path / name, "".join(f"{line}\n" for line in lines))

    def write_json(self, name: str, payload: Any) -> None:
        """Atomic, so a crash never leaves half a JSON file."""
        atomic_write_json(self.path / name, payload)

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.tensorboard.add_scalar(key, value, step)

    def log_epoch(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                self.tensorboard.add_scalar(f"epoch/{key}", value, record["epoch"])
        self.tensorboard.flush()

    def close(self) -> None:
        self.metrics.close()
        self.tensorboard.close()


def model_metadata(config: RunConfig, splits: DatasetSplits, model: nn.Module, weights: str = "raw") -> dict[str, str]:
    """What travels inside the weights file so the model can be used without the recipe."""
    info = {"weights": weights, "model": config.model.name, "num_classes": splits.num_classes, "in_chans": config.model.in_chans or splits.in_chans,
            "model_kwargs": config.model.kwargs, "classes": splits.classes, "image_size": splits.image_size,
            "mean": list(splits.mean), "std": list(splits.std), "dataset": splits.name,
            "params": sum(p.numel() for p in model.parameters())}
    return {"reprocls": json.dumps(info), "config": json.dumps(to_dict(config))}


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Safetensors weights (no pickle), written to a temporary name first so a crash keeps the old file."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    temporary = path.with_name(f".{path.name}.tmp")
    save_file(state, str(temporary), metadata=metadata)
    temporary.replace(path)


def eval_result_dict(result: EvalResult, classes: list[str]) -> dict[str, Any]:
    return {**result.summary(), "per_class": dict(zip(classes, result.per_class)), "confusion": result.confusion.tolist()}


def reference_gap(config: RunConfig, test_top1: float) -> dict[str, Any] | None:
    """Gap between our test top-1 and the paper's, judged by the same rule as `reprocls reproduce` (one run: reproduced
    or short), so a run and a reproduction never disagree on the words."""
    ref = config.reference
    if ref is None:
        return None
    verdict = judge([test_top1], ref)
    return {"source": ref.source, "top1": ref.top1, "tolerance": ref.tolerance, "gap": verdict["gap"],
            "verdict": verdict["label"], "text": verdict["text"]}


@dataclass
class Session:
    """Everything built from a recipe before training: device, data, model and loaders."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    splits: DatasetSplits
    model: nn.Module


def prepare(config: RunConfig, device: torch.device | None = None) -> Session:
    """Validate names, seed, load data and build the model: everything that can fail does so here, before training."""
    check_names(config)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.seed)
    device = device or resolve_device(config.train.device)
    splits = load_dataset(config.data, config.seed)
    model = build_model(config, splits)
    channels_last = resolve_channels_last(config.train.channels_last, model)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return Session(device, resolve_precision(config.train.precision, device), channels_last, splits, model)


def lr_plan(config: RunConfig, world: World) -> dict[str, Any]:
    """The effective batch and the learning rate scaled to it, with the arithmetic spelled out for the log."""
    batch = config.data.batch_size * world.world_size
    lr = scaled_lr(config.optim, batch)
    reference = config.optim.lr_reference_batch
    rule = (f"{config.optim.lr:g} x {batch}/{reference} ({config.optim.lr_scaling} rule)" if reference
            else f"{config.optim.lr:g} as given (set optim.lr_reference_batch to rescale it with the batch)")
    micro = config.data.batch_size // config.train.accum_steps
    split = f", {config.train.accum_steps} micro-batches of {micro}" if config.train.accum_steps > 1 else ""
    text = f"lr {lr:g} = {rule} for effective batch {batch} ({world.world_size} process(es) x {config.data.batch_size}{split})"
    return {"lr": lr, "effective_batch": batch, "processes": world.world_size, "accum_steps": config.train.accum_steps,
            "micro_batch": micro, "text": text}


def wrap_for_training(model: nn.Module, config: RunConfig, world: World, device: torch.device) -> nn.Module:
    """SyncBatchNorm, DistributedDataParallel and torch.compile around the model, as the recipe asks."""
    if config.train.sync_batchnorm and world.distributed:
        if device.type != "cuda":
            raise ConfigError("train.sync_batchnorm: torch's SyncBatchNorm runs only on CUDA; set it to false on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if world.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.train.compile:
        model = torch.compile(model, backend=config.train.compile_backend)
    return model


def pick_weights(outcome: FitResult, ema: nn.Module | None) -> str:
    """'ema' or 'raw': the better on validation top-1; EMA when there is no validation split to judge by."""
    if ema is None:
        return "raw"
    if outcome.val is None or outcome.ema_val is None:
        return "ema"
    return "ema" if outcome.ema_val.top1 >= outcome.val.top1 else "raw"


def train_recipe(config: RunConfig, *, progress: bool = True, echo: bool = True, resume: str | None = None,
                 on_epoch: Callable[[dict], None] | None = None) -> tuple[Path | None, dict[str, Any]]:
    """Train a recipe end to end and write its run folder; returns (folder, results). Under torchrun every process
    trains its share and only rank 0 writes (the others return folder None). `resume`: 'auto' or a path.
    `on_epoch(record)` sees each epoch's metrics on rank 0 after they are logged; an exception it raises (a search
    pruning the trial) ends training with the run folder's logs intact."""
    wall_start = time.perf_counter()
    world, dist_device = init_distributed(config.train.device)
    try:
        return _train(config, world, dist_device, wall_start, progress=progress and world.is_main,
                      echo=echo and world.is_main, resume=resume, on_epoch=on_epoch)
    finally:
        shutdown_distributed()


def _train(config: RunConfig, world: World, device: torch.device | None, wall_start: float, *, progress: bool,
           echo: bool, resume: str | None, on_epoch: Callable[[dict], None] | None) -> tuple[Path | None, dict[str, Any]]:
    session = prepare(config, device)
    splits, model, device = session.splits, session.model, session.device
    seed_everything(config.seed + world.rank)  # dropout and stochastic depth differ across processes
    loader_args = dict(device=device, seed=config.seed, channels_last=session.channels_last, rank=world.rank,
                       world_size=world.world_size)
    train_loader = make_loader(splits.train, splits, config.data, train=True, micro_batches=config.train.accum_steps,
                               **loader_args)
    if len(train_loader) == 0:
        raise ConfigError(f"data.batch_size: {config.data.batch_size} x {world.world_size} process(es) is more than the "
                          f"{len(splits.train)} training images; lower the batch size")
    val_loader = make_loader(splits.val, splits, config.data, train=False, **loader_args) if splits.val else None
    test_loader = make_loader(splits.test, splits, config.data, train=False, **loader_args)
    lr = lr_plan(config, world)
    optimizer = build_optimizer(model, config.optim, lr["effective_batch"])
    scheduler = build_scheduler(optimizer, config.schedule, len(train_loader) // config.train.accum_steps)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing)
    scaler = torch.amp.GradScaler(device.type) if session.amp_dtype == torch.float16 else None
    ema = create_ema(model, config.train.ema_decay, config.train.ema_warmup) if config.train.ema_decay else None
    say = print if echo else (lambda *a, **k: None)
    point = agree_on(find_resume_point(config, resume) if resume and world.is_main else None, world)
    state = TrainState()
    if point is not None:
        state = restore(point, config, world, model, optimizer, scheduler, scaler, ema, splits.classes)
        say(f"resuming {point.checkpoint} at epoch {state.epoch + 1}, step {state.step}")
    elif resume:
        say(f"--resume {resume}: no checkpoint of {config.name!r} under {config.output_dir}; starting a new run")
    trained = wrap_for_training(model, config, world, device)
    params = sum(p.numel() for p in model.parameters())
    run = None
    if world.is_main:  # only now: a recipe that fails to set up leaves no run folder
        run = RunFolder(config, resume=point.run_dir if point else None, history=state.history, step=state.step)
    checkpointer = Checkpointer(run.path / CHECKPOINTS if run else None, config, world, model, optimizer, scheduler, scaler,
                                ema, splits.classes)
    if run is not None:
        say(f"run folder: {run.path}")
        run.write_json("environment.json", environment())
        if splits.split_record is not None:
            run.write_json("splits.json", splits.split_record)
        if splits.skipped:
            run.write_json("skipped_images.json", splits.skipped)
    say(f"{config.model.name} ({params / 1e6:.3f} M params) on {splits.name}: {len(splits.train)} train / "
        f"{len(splits.val) if splits.val else 0} val / {len(splits.test)} test, device {device}, "
        f"precision {session.amp_dtype or 'fp32'}, channels_last {session.channels_last}"
        f"{', EMA ' + str(config.train.ema_decay) if ema is not None else ''}")
    say(lr["text"])

    test_eval = dict(device=device, amp_dtype=session.amp_dtype, num_classes=splits.num_classes, criterion=criterion,
                     progress=progress)
    try:
        outcome = fit(trained, train_loader, val_loader, optimizer, scheduler, criterion, epochs=config.schedule.epochs,
                      device=device, amp_dtype=session.amp_dtype, num_classes=splits.num_classes, scaler=scaler,
                      grad_clip_norm=config.train.grad_clip_norm, accum_steps=config.train.accum_steps, ema=ema,
                      state=state, on_nonfinite=config.train.on_nonfinite, checkpoint=checkpointer,
                      checkpoint_every=config.train.checkpoint_every,
                      eval_every=config.train.eval_every, logger=_Echo(run, say, on_epoch) if run is not None else None,
                      log_every=config.train.log_every, progress=progress)
        chosen = pick_weights(outcome, ema)
        final = ema.module if chosen == "ema" and ema is not None else model
        if run is not None:
            save_weights(final, run.path / WEIGHTS_FILE, model_metadata(config, splits, final, chosen))
        recorded = PredictionLog(splits.test.labels)  # the test pass also finds the most confident mistakes
        test = evaluate(RecordingModel(final, recorded), test_loader, description="test", **test_eval)
        ema_summary = None
        if ema is not None:
            other = evaluate(model if chosen == "ema" else ema.module, test_loader, description="test (other)", **test_eval)
            tests = {chosen: test.top1, ("raw" if chosen == "ema" else "ema"): other.top1}
            ema_summary = {"decay": config.train.ema_decay, "chosen": chosen, "chosen_by": "val top-1" if outcome.val else "default",
                           "val_top1": {"raw": outcome.val.top1 if outcome.val else None,
                                        "ema": outcome.ema_val.top1 if outcome.ema_val else None},
                           "test_top1": tests}
    finally:
        if run is not None:
            run.close()

    chosen_val = outcome.ema_val if chosen == "ema" and outcome.ema_val is not None else outcome.val
    results: dict[str, Any] = {
        "run": run.path.name if run is not None else None, "model": config.model.name, "dataset": splits.name,
        "params": params, "classes": splits.classes, "epochs": config.schedule.epochs, "seed": config.seed,
        "precision": str(session.amp_dtype or "fp32").replace("torch.", ""), "channels_last": session.channels_last,
        "lr": {k: v for k, v in lr.items() if k != "text"}, "ema": ema_summary,
        "resumed_from": point.checkpoint.name if point else None, "nonfinite_skipped": outcome.nonfinite_skipped,
        "val": eval_result_dict(chosen_val, splits.classes) if chosen_val else None,
        "test": eval_result_dict(test, splits.classes),
        "train_time_s": outcome.train_seconds, "images_per_s": outcome.images_per_s,
        "wall_time_s": time.perf_counter() - wall_start,
        "reference": reference_gap(config, test.top1),
        "skipped_images": len(splits.skipped),
    }
    if run is None:
        return None, results
    run.write_json("results.json", results)
    write_report(run.path, results, outcome.history, (run.path / "config.yaml").read_text())
    save_test_mistakes(run.path, recorded, test.confusion, final, splits, config.data, device=device,
                       amp_dtype=session.amp_dtype, channels_last=session.channels_last)
    write_run_html(run.path)
    say("\n" + format_table(results_table(results)))
    say(f"\nreport: {run.path / 'report.md'} and {run.path / 'report.html'}")
    return run.path, results


class _Echo:
    """Logs to the run folder and prints one line per epoch."""

    def __init__(self, run: RunFolder, say, on_epoch: Callable[[dict], None] | None = None) -> None:
        self.run, self.say, self.on_epoch = run, say, on_epoch

    def log_step(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log_step(step, scalars)

    def log_epoch(self, record: dict) -> None:
        self.run.log_epoch(record)
        val = f"  val loss {record['val_loss']:.4f} top-1 {100 * record['val_top1']:.2f} %" if "val_top1" in record else ""
        if "val_ema_top1" in record:
            val += f" (EMA {100 * record['val_ema_top1']:.2f} %)"
        self.say(f"epoch {record['epoch']:>3}  train loss {record['train_loss']:.4f} top-1 {100 * record['train_top1']:.2f} %"
                 f"{val}  {record['train_images_per_s']:,.0f} img/s  {record['elapsed_s']:.0f} s")
        if self.on_epoch is not None:
            self.on_epoch(record)


def locate_weights(target: Path) -> tuple[Path, Path | None]:
    """(weights file, run folder or None) for a run folder or a weights file path."""
    if target.is_dir():
        weights = target / WEIGHTS_FILE
        if not weights.exists():
            raise FileNotFoundError(f"{target} has no {WEIGHTS_FILE}: is it a finished run folder?")
        return weights, target
    if not target.exists():
        raise FileNotFoundError(f"{target} does not exist; pass a run folder or its {WEIGHTS_FILE}")
    return target, target.parent if (target.parent / "results.json").exists() else None


@dataclass
class LoadedRun:
    """A trained model rebuilt from its weights file, with the recipe, data and settings it was trained with."""

    config: RunConfig
    session: Session
    metadata: dict[str, Any]
    weights: Path
    run_dir: Path | None


def load_run(target: str | Path, overrides: list[str] | None = None, device: torch.device | None = None) -> LoadedRun:
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
    return LoadedRun(config, session, metadata, weights, run_dir)


def evaluate_saved(target: str | Path, split: str = "test", overrides: list[str] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Re-evaluate a trained model on a split with the preprocessing and precision it was trained with."""
    loaded = load_run(target, overrides)
    config, session = loaded.config, loaded.session
    data_split = {"test": session.splits.test, "val": session.splits.val, "train": session.splits.train}[split]
    if data_split is None:
        raise ValueError(f"this run has no {split} split (data.val_fraction was 0)")
    loader = make_loader(data_split, session.splits, config.data, train=False, device=session.device, seed=config.seed,
                         channels_last=session.channels_last)
    result = evaluate(session.model, loader, device=session.device, amp_dtype=session.amp_dtype,
                      num_classes=session.splits.num_classes,
                      criterion=nn.CrossEntropyLoss(label_smoothing=config.train.label_smoothing),
                      description=split, progress=progress)
    out = {"split": split, **eval_result_dict(result, session.splits.classes)}
    if loaded.run_dir is not None and (loaded.run_dir / "results.json").exists():
        recorded = json.loads((loaded.run_dir / "results.json").read_text()).get(split)
        if recorded:
            out["recorded"] = {k: recorded[k] for k in ("top1", "top5", "loss")}
    return out
