"""A recipe in, a run folder out: the recipe's objects (recipe.py) -> fit -> test -> results, weights and pages."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from reprocls import run_layout as layout
from reprocls.config import ConfigError, RunConfig, dump, to_dict
from reprocls.data import make_loader
from reprocls.data.datasets import DatasetSplits, TensorSplit
from reprocls.engine import FitResult, evaluate, fit
from reprocls.engine.checkpoint import CheckpointError, intact_list
from reprocls.engine.distributed import World, init_distributed, shutdown_distributed
from reprocls.engine.train import TrainState, die_at
from reprocls.envinfo import environment
from reprocls.experiments.evaluate import binary_results, eval_result_dict, predict_split
from reprocls.experiments.resume import Checkpointer, ResumePlan, agree_on, plan_resume, restore
from reprocls.files import atomic_write_json, atomic_write_text, write_safetensors
from reprocls.metrics.mistakes import PredictionLog, RecordingModel, covers_split
from reprocls.metrics.verdict import judge
from reprocls.models import count_params
from reprocls.data.transforms import resolve_preset
from reprocls.recipe import (Session, build_trainee, fine_tuning, lr_plan, prepare, seed_everything, train_settings,
                             wrap_for_training)
from reprocls.reports.mistakes import write_mistakes
from reprocls.reports.run_page import write_run_pages
from reprocls.reports.tables import format_table, results_table


class RunWriter:
    """Writes a run folder while it trains: config, per-epoch metrics.jsonl, TensorBoard events, JSON files."""

    def __init__(self, config: RunConfig, root: Path | None = None, *, resume: Path | None = None,
                 fresh_in: Path | None = None, history: list[dict] | None = None, step: int = 0) -> None:
        self.path = resume or fresh_in or layout.new_stamped_folder(root or config.output_dir, config.name)
        self.lock = layout.FolderLock(self.path)  # a second trainer of this folder is refused here, before any write
        try:
            if resume is not None:  # continue a run: keep its folder and config, drop log lines past the checkpoint
                layout.remove_temporary_checkpoints(self.path)
                self.write_lines(layout.METRICS, [json.dumps(record) for record in history or []])
            else:
                if fresh_in is not None:  # killed before its first checkpoint: nothing in it is worth keeping
                    clear_folder(self.path)
                dump(config, self.path / layout.CONFIG)
            self.metrics = open(self.path / layout.METRICS, "a", buffering=1)
            self.tensorboard = SummaryWriter(str(self.path / layout.TENSORBOARD),
                                             purge_step=step if resume is not None else None)
        except BaseException:
            self.lock.release()
            raise

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

    def final_write(self, what: str, write: Callable[[], Any]) -> Any:
        """A write of the finished run; a full disk here loses nothing: the last checkpoint holds the trained weights."""
        try:
            return write()
        except OSError as error:
            raise CheckpointError(f"could not write {what} ({error.strerror or error}); the training is safe in its "
                                  f"checkpoints ({intact_list(self.path / layout.CHECKPOINTS)}). Free space in "
                                  f"{self.path.parent} and rerun with --resume auto: it redoes only the final test "
                                  "pass.") from None


def clear_folder(folder: Path) -> None:
    """Empty a run folder of a killed start, keeping only its lock file."""
    for path in folder.iterdir():
        if path.name == layout.LOCK:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def eval_resize(config: RunConfig, splits: DatasetSplits) -> str:
    """How evaluation resized images: 'center_crop' (the imagenet preset's resize + crop, per image) or 'square'
    (a plain resize: small presets, and in-memory data resized as tensors)."""
    in_memory = isinstance(splits.test, TensorSplit) and config.data.in_memory != "no" and splits.eval_transform is None
    preset = resolve_preset(config.data.preset, splits.native_size or splits.image_size)
    return "center_crop" if preset == "imagenet" and not in_memory else "square"


def model_metadata(config: RunConfig, splits: DatasetSplits, model: nn.Module, weights: str = "raw") -> dict[str, str]:
    """What travels inside the weights file so the model can be used without the recipe."""
    info = {"resize": eval_resize(config, splits),"weights": weights, "model": config.model.name, "num_classes": splits.num_classes,
            "in_chans": config.model.in_chans or splits.in_chans, "model_kwargs": config.model.kwargs,
            "classes": splits.classes, "image_size": splits.image_size, "mean": list(splits.mean), "std": list(splits.std),
            "interpolation": splits.interpolation, "crop_fraction": splits.crop_fraction,
            "dataset": splits.name, "params": count_params(model)}
    return {"reprocls": json.dumps(info), "config": json.dumps(to_dict(config))}


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """Safetensors weights (no pickle), written to a temporary name first so a crash keeps the old file."""
    write_safetensors(path, {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, metadata)


def reference_gap(config: RunConfig, test_top1: float) -> dict[str, Any] | None:
    """Gap between our test top-1 and the paper's, judged by the same rule as `reprocls reproduce` (one run: reproduced
    or short), so a run and a reproduction never disagree on the words."""
    ref = config.reference
    if ref is None:
        return None
    verdict = judge([test_top1], ref)
    return {"source": ref.source, "top1": ref.top1, "tolerance": ref.tolerance, "gap": verdict["gap"],
            "verdict": verdict["label"], "text": verdict["text"]}


def pick_weights(outcome: FitResult, ema: nn.Module | None) -> str:
    """'ema' or 'raw': the better on validation top-1; EMA when there is no validation split to judge by."""
    if ema is None:
        return "raw"
    if outcome.val is None or outcome.ema_val is None:
        return "ema"
    return "ema" if outcome.ema_val.top1 >= outcome.val.top1 else "raw"


def save_test_mistakes(run_dir: Path, recorded: PredictionLog, confusion: torch.Tensor, model: nn.Module,
                       session: Session, config: RunConfig) -> dict[str, Any]:
    """The test mistakes from the log recorded during the test pass, or from a pass of their own when that log
    does not cover the split in order (each process of a distributed run evaluates only its shard)."""
    log = recorded if covers_split(recorded, confusion) else predict_split(model, session.splits.test, session, config.data)
    return write_mistakes(run_dir, log, session.splits)


def input_record(config: RunConfig, session: Session) -> dict[str, Any]:
    """What the model sees and why: size, channels, preset, normalisation, interpolation, and the notes on choices."""
    splits = session.splits
    preset = resolve_preset(config.data.preset, splits.native_size or splits.image_size)
    return {"image_size": splits.image_size, "native_size": splits.native_size, "channels": splits.in_chans,
            "preset": preset, "mean": list(splits.mean), "std": list(splits.std), "interpolation": splits.interpolation,
            "crop_fraction": splits.crop_fraction, "notes": list(splits.notes),
            "weights_preprocessing": session.preprocessing.source if session.preprocessing else None}


def banner(config: RunConfig, session: Session) -> list[str]:
    """The start-up lines that say what the model sees, where its weights came from and what trains."""
    record = input_record(config, session)
    numbers = ", ".join(f"{v:.4g}" for v in record["mean"]), ", ".join(f"{v:.4g}" for v in record["std"])
    lines = [f"input {record['image_size']} px x {record['channels']} channel(s), preset {record['preset']}, normalised "
             f"with mean [{numbers[0]}] std [{numbers[1]}], {record['interpolation']} resize"]
    lines += [f"  {note}" for note in record["notes"]]
    if session.weights is not None:
        lines.append(f"weights: {session.weights.summary()}")
    if session.init is not None:
        lines.append(f"init: {config.model.init}: {session.init}")
    lines.append(fine_tuning(config, session.model).text(session.model))
    skipped = session.splits.skipped
    if skipped:
        lines.append(f"data.on_bad_image=skip: left out {len(skipped)} image(s) that cannot be decoded (first: "
                     f"{skipped[0]['path']}, {skipped[0]['reason']}); the run lists them in {layout.SKIPPED}")
    return lines


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
    say = print if echo else (lambda *a, **k: None)
    plan = agree_on(plan_resume(config, resume) if resume and world.is_main else None, world) or ResumePlan()
    if plan.finished is not None:  # a finished run is reported, never trained or written again
        if not world.is_main:
            return None, {}
        results = json.loads((plan.finished / layout.RESULTS).read_text())
        say(f"{plan.finished} is finished (test top-1 {100 * results['test']['top1']:.2f} %); left as it is. Train "
            "again without --resume for a new run.")
        return plan.finished, results
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
    trainee = build_trainee(config, session, lr["lr"], len(train_loader) // config.train.accum_steps)
    ema = trainee.ema
    point = plan.point
    state = TrainState()
    if point is not None:
        state = restore(point, config, world, trainee, splits.classes)
        say(f"resuming {point.checkpoint} at epoch {state.epoch + 1}, step {state.step}")
    elif plan.fresh_in is not None:
        say(f"--resume {resume}: {plan.fresh_in.name} was stopped before its first checkpoint; training it afresh")
    elif resume:
        say(f"--resume {resume}: no checkpoint of {config.name!r} under {config.output_dir}; starting a new run")
    trainee.model = wrap_for_training(model, config, world, device)
    params = count_params(model)
    run = None
    if world.is_main:  # only now: a recipe that fails to set up leaves no run folder
        run = RunWriter(config, resume=point.run_dir if point else None, fresh_in=plan.fresh_in, history=state.history,
                        step=state.step)
    try:
        checkpointer = Checkpointer(run.path / layout.CHECKPOINTS if run else None, config, world, trainee, splits.classes)
        if run is not None:
            say(f"run folder: {run.path}")
            run.write_json(layout.ENVIRONMENT, environment())
            if splits.split_record is not None:
                run.write_json(layout.SPLITS, splits.split_record)
            if splits.skipped:
                run.write_json(layout.SKIPPED, splits.skipped)
        say(f"{config.model.name} ({params / 1e6:.3f} M params) on {splits.name}: {len(splits.train)} train / "
            f"{len(splits.val) if splits.val else 0} val / {len(splits.test)} test, device {device}, "
            f"precision {session.amp_dtype or 'fp32'}, channels_last {session.channels_last}"
            f"{', EMA ' + str(config.train.ema_decay) if ema is not None else ''}")
        for line in banner(config, session):
            say(line)
        say(lr["text"])

        tuning = fine_tuning(config, model)
        settings = train_settings(config, session, progress=progress)
        test_eval = dict(device=device, amp_dtype=session.amp_dtype, num_classes=splits.num_classes,
                         criterion=trainee.criterion, progress=progress)
        outcome = fit(trainee, train_loader, val_loader, settings, state, checkpoint=checkpointer,
                      logger=_Echo(run, say, on_epoch) if run is not None else None)
        chosen = pick_weights(outcome, ema)
        final = ema.module if chosen == "ema" and ema is not None else model
        if run is not None:
            run.final_write(layout.WEIGHTS, lambda: save_weights(final, run.path / layout.WEIGHTS,
                                                                 model_metadata(config, splits, final, chosen)))
        die_at("test")
        recorded = PredictionLog(splits.test.labels)  # the test pass also finds the most confident mistakes
        test = evaluate(RecordingModel(final, recorded), test_loader, description="test", **test_eval)
        test_tta = None
        if config.eval.tta != "none":  # beside the plain number, never instead of it
            tta = evaluate(final, test_loader, description=f"test ({config.eval.tta} TTA)", tta=config.eval.tta, **test_eval)
            test_tta = {"mode": config.eval.tta, **tta.summary(), "images_per_s": tta.samples / max(tta.seconds, 1e-9),
                        "plain_images_per_s": test.samples / max(test.seconds, 1e-9)}
        ema_summary = None
        if ema is not None:
            other = evaluate(model if chosen == "ema" else ema.module, test_loader, description="test (other)", **test_eval)
            tests = {chosen: test.top1, ("raw" if chosen == "ema" else "ema"): other.top1}
            ema_summary = {"decay": config.train.ema_decay, "chosen": chosen,
                           "chosen_by": "val top-1" if outcome.val else "default",
                           "val_top1": {"raw": outcome.val.top1 if outcome.val else None,
                                        "ema": outcome.ema_val.top1 if outcome.ema_val else None},
                           "test_top1": tests}

        chosen_val = outcome.ema_val if chosen == "ema" and outcome.ema_val is not None else outcome.val
        results: dict[str, Any] = {
            "run": run.path.name if run is not None else None, "model": config.model.name, "dataset": splits.name,
            "params": params, "classes": splits.classes, "epochs": config.schedule.epochs, "seed": config.seed,
            "precision": str(session.amp_dtype or "fp32").replace("torch.", ""), "channels_last": session.channels_last,
            "lr": {k: v for k, v in lr.items() if k != "text"}, "ema": ema_summary,
            "resumed_from": point.checkpoint.name if point else None, "nonfinite_skipped": outcome.nonfinite_skipped,
            "val": eval_result_dict(chosen_val, splits.classes) if chosen_val else None,
            "test": eval_result_dict(test, splits.classes), "test_tta": test_tta,
            "train_time_s": outcome.train_seconds, "images_per_s": outcome.images_per_s,
            "wall_time_s": time.perf_counter() - wall_start,
            "first_step_s": outcome.first_step_at - wall_start if outcome.first_step_at else None,
            "first_step_unix": time.time() - (time.perf_counter() - outcome.first_step_at) if outcome.first_step_at else None,
            "reference": reference_gap(config, test.top1),
            "skipped_images": len(splits.skipped),
            "binary": binary_results(config, splits, chosen_val, test) if splits.num_classes == 2 else None,
            "input": input_record(config, session),
            "weights": session.weights.to_dict() if session.weights is not None else None,
            "init": session.init,
            "fine_tuning": {**tuning.record(model), "head_only_epochs": config.train.head_only_epochs},
        }
        if run is None:
            return None, results
        run.final_write(layout.RESULTS, lambda: run.write_json(layout.RESULTS, results))
        run.final_write("the report", lambda: (save_test_mistakes(run.path, recorded, test.confusion, final, session, config),
                                               write_run_pages(run.path)))
        say("\n" + format_table(results_table(results)))
        say(f"\nreport: {run.path / layout.REPORT_MD} and {run.path / layout.REPORT_HTML}")
        return run.path, results
    finally:
        if run is not None:
            run.close()
            run.lock.release()


class _Echo:
    """Logs to the run folder and prints one line per epoch."""

    def __init__(self, run: RunWriter, say, on_epoch: Callable[[dict], None] | None = None) -> None:
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
