"""`reprocls pretrain`: a recipe with a pretrain: block in, a run folder out: the method trained on two views of the
training images (labels unused), a k-NN monitor on validation, checkpoints that resume exactly, and the backbone
saved so that `model.weights: <this run>` fine-tunes it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from reprocls import run_layout as layout
from reprocls.config import ConfigError, RunConfig
from reprocls.data import make_loader
from reprocls.data.batch_views import TwoViewTensorLoader
from reprocls.data.datasets import DatasetSplits, TensorSplit
from reprocls.data.loaders import use_in_memory
from reprocls.data.views import TwoViews, build_view, describe, two_view_loader, view_settings
from reprocls.engine import build_optimizer, build_scheduler
from reprocls.engine.distributed import World, convert_to_global_batchnorm, init_distributed, shutdown_distributed, unwrap
from reprocls.engine.selfsup.knn import extract_features, knn_accuracy
from reprocls.engine.selfsup.train import PretrainSettings, PretrainState, pretrain_one_epoch
from reprocls.envinfo import environment
from reprocls.experiments.resume import (ResumePlan, ResumePoint, agree_on, load_exact, plan_resume, prefixed,
                                         write_exact)
from reprocls.experiments.run import RunWriter, model_metadata, reference_gap, save_weights
from reprocls.models import count_params
from reprocls.recipe import Session, build_pretraining, lr_plan, prepare, seed_everything
from reprocls.reports.pretrain_page import write_pretrain_pages


def knn_monitor(backbone: nn.Module, config: RunConfig, session: Session,
                queries: tuple[str, ...] = ("val",)) -> dict[str, float]:
    """Weighted k-NN top-1 of each query split (val; at the end also test, once) against the training images'
    embeddings, extracted once for all of them, every image without augmentation; absent splits are left out."""
    splits = session.splits
    wanted = {name: getattr(splits, name) for name in queries}
    wanted = {name: split for name, split in wanted.items() if split is not None and len(split) > 0}
    if not wanted:
        return {}
    common = dict(device=session.device, seed=config.seed, channels_last=session.channels_last)
    features = lambda split: extract_features(  # noqa: E731
        backbone, make_loader(split, splits, config.data, train=False, **common), session.device)
    bank, block = features(splits.train), config.pretrain
    return {name: knn_accuracy(*features(split), *bank, splits.num_classes, k=block.knn_k,
                               temperature=block.knn_temperature)
            for name, split in wanted.items()}


class PretrainCheckpointer:
    """Everything a bitwise-exact resume needs (the method with its target and queue, optimizer, schedule, scaler,
    every process's RNG streams and partial loss), under <run>/checkpoints/ on rank 0."""

    def __init__(self, folder: Path | None, config: RunConfig, world: World, method: nn.Module, optimizer, scheduler,
                 scaler, classes: list[str]) -> None:
        self.folder, self.config, self.world, self.classes = folder, config, world, classes
        self.method, self.optimizer, self.scheduler, self.scaler = method, optimizer, scheduler, scaler

    def __call__(self, state: PretrainState) -> None:
        tensors = {f"method.{k}": v for k, v in unwrap(self.method).state_dict().items()}
        write_exact(self.folder, self.config, self.world, state, {"loss_sum": state.loss_sum}, tensors, self.optimizer,
                    self.scheduler, self.scaler, self.classes, kind="pretrain")


def restore_pretraining(point: ResumePoint, config: RunConfig, world: World, method: nn.Module, optimizer, scheduler,
                        scaler) -> PretrainState:
    """Load a pretraining checkpoint into freshly built objects and every RNG; returns where to continue."""
    tensors, saved, mine = load_exact(point, config, world, optimizer, scheduler, scaler)
    method.load_state_dict(prefixed(tensors, "method"))
    state = PretrainState.from_dict(saved)
    state.loss_sum = mine["loss_sum"]
    return state


def two_view_batches(config: RunConfig, session: Session, world: World) -> tuple[Any, list[str], str]:
    """The recipe's two views of the training split: augmented a batch at a time on the device for in-memory data,
    else per image in DataLoader workers; with a description of each view and of where they are made."""
    splits, block = session.splits, config.pretrain
    settings = view_settings(block.method, splits.image_size, block.views)
    views = [describe(s) for s in settings]
    common = dict(batch_size=config.data.batch_size, seed=config.seed, rank=world.rank, world_size=world.world_size)
    if isinstance(splits.train, TensorSplit) and use_in_memory(config.data, splits):
        return TwoViewTensorLoader(splits.train, *settings, size=splits.image_size, mean=splits.mean, std=splits.std,
                                   device=session.device, channels_last=session.channels_last, **common), \
            views, "views made a batch at a time on the device (data/batch_views.py)"
    first, second = (build_view(s, splits.image_size, splits.mean, splits.std) for s in settings)
    return two_view_loader(TwoViews(splits.train, first, second, channels=splits.in_chans), workers=config.data.workers,
                           pin_memory=session.device.type == "cuda", **common), \
        views, f"views made per image in {config.data.workers} DataLoader worker(s)"


def start_epoch(loader: Any, epoch: int, batches_done: int) -> None:
    """Point the loader at `epoch`, past the batches already trained."""
    if isinstance(loader, TwoViewTensorLoader):
        loader.set_epoch(epoch, batches_done)
    else:
        loader.sampler.set_epoch(epoch, start=batches_done * loader.batch_size)


def pretrain_recipe(config: RunConfig, *, progress: bool = True, echo: bool = True,
                    resume: str | None = None) -> tuple[Path | None, dict[str, Any]]:
    """Pretrain a recipe's backbone end to end and write its run folder; returns (folder, results). Under torchrun
    every process trains its share of each global batch and only rank 0 writes. `resume`: 'auto' or a path."""
    wall_start = time.perf_counter()
    world, device = init_distributed(config.train.device)
    try:
        return _pretrain(config, world, device, wall_start, progress=progress and world.is_main,
                         echo=echo and world.is_main, resume=resume)
    finally:
        shutdown_distributed()


def _pretrain(config: RunConfig, world: World, device: torch.device | None, wall_start: float, *, progress: bool,
              echo: bool, resume: str | None) -> tuple[Path | None, dict[str, Any]]:
    say = print if echo else (lambda *a, **k: None)
    if config.pretrain is None:
        raise ConfigError("pretrain: this recipe has no pretrain: block; add one (method: simclr | moco_v2 | byol), "
                          "e.g. configs/fashion_mnist/simclr_resnet20.yaml")
    if config.train.accum_steps != 1:
        raise ConfigError("train.accum_steps: contrastive losses see one batch at a time, so accumulation would change "
                          "the method; set it to 1 and use more processes for a bigger batch")
    plan = agree_on(plan_resume(config, resume) if resume and world.is_main else None, world) or ResumePlan()
    if plan.finished is not None:
        if not world.is_main:
            return None, {}
        results = json.loads((plan.finished / layout.RESULTS).read_text())
        say(f"{plan.finished} is finished (val k-NN {_percent(results['knn']['val_top1'])}); left as it is.")
        return plan.finished, results
    session = prepare(config, device)
    splits, device = session.splits, session.device
    method = build_pretraining(config, session)
    if world.distributed:  # every method sees BatchNorm statistics of the global batch, as on one process
        convert_to_global_batchnorm(method)
    loader, views, made = two_view_batches(config, session, world)
    if len(loader) == 0:
        raise ConfigError(f"data.batch_size: {config.data.batch_size} x {world.world_size} process(es) is more than the "
                          f"{len(splits.train)} training images; lower the batch size")
    lr = lr_plan(config, world)
    optimizer = build_optimizer(method, config.optim, lr["lr"])
    scheduler = build_scheduler(optimizer, config.schedule, len(loader))
    scaler = torch.amp.GradScaler(device.type) if session.amp_dtype == torch.float16 else None
    state = PretrainState(total_steps=config.schedule.epochs * len(loader))
    if plan.point is not None:
        state = restore_pretraining(plan.point, config, world, method, optimizer, scheduler, scaler)
        say(f"resuming {plan.point.checkpoint} at epoch {state.epoch + 1}, step {state.step}")
    seed_everything(config.seed + world.rank)
    trained = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None,
                                      broadcast_buffers=False) if world.distributed else method
    run = None
    if world.is_main:
        run = RunWriter(config, resume=plan.point.run_dir if plan.point else None, fresh_in=plan.fresh_in,
                        history=state.history, step=state.step)
    try:
        checkpointer = PretrainCheckpointer(run.path / layout.CHECKPOINTS if run else None, config, world, trained,
                                            optimizer, scheduler, scaler, splits.classes)
        if run is not None:
            say(f"run folder: {run.path}")
            run.write_json(layout.ENVIRONMENT, environment())
            if splits.split_record is not None:
                run.write_json(layout.SPLITS, splits.split_record)
        backbone = method.backbone
        say(f"{config.pretrain.method} on {config.model.name} ({count_params(backbone) / 1e6:.3f} M params), "
            f"{splits.name}: {len(splits.train)} unlabelled train / {len(splits.val) if splits.val else 0} val images, "
            f"global batch {config.data.batch_size * world.world_size}, device {device}, precision "
            f"{session.amp_dtype or 'fp32'}")
        for i, view in enumerate(views):
            say(f"view {i + 1}: {view}")
        say(made)
        say(lr["text"])
        settings = PretrainSettings(device=device, amp_dtype=session.amp_dtype, momentum=config.pretrain.momentum,
                                    checkpoint_every=config.train.checkpoint_every, log_every=config.train.log_every,
                                    progress=progress)
        every, epochs = config.pretrain.knn_every, config.schedule.epochs
        test_knn = None
        while state.epoch < epochs:
            start_epoch(loader, state.epoch, state.micro)
            started, done_before = time.perf_counter(), state.micro
            loss = pretrain_one_epoch(trained, loader, optimizer, state, scheduler=scheduler, settings=settings,
                                      scaler=scaler, checkpoint=checkpointer, log_step=run.log_step if run else None)
            seconds = time.perf_counter() - started
            images = (state.micro - done_before) * config.data.batch_size * world.world_size
            record: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.step, "lr": optimizer.param_groups[0]["lr"],
                                      "train_loss": loss, "train_seconds": seconds,
                                      "train_images_per_s": images / max(seconds, 1e-9)}
            last = state.epoch + 1 == epochs
            if world.is_main and ((every and (state.epoch + 1) % every == 0) or last):
                scores = knn_monitor(backbone, config, session, ("val", "test") if last else ("val",))
                if "val" in scores:
                    record["val_knn_top1"] = scores["val"]
                test_knn = scores.get("test")
            record["elapsed_s"] = time.perf_counter() - wall_start
            state.history.append(record)
            state.epoch, state.micro, state.loss_sum = state.epoch + 1, 0, 0.0
            if run is not None:
                run.log_epoch(record)
                knn = f"  val k-NN {_percent(record['val_knn_top1'])}" if "val_knn_top1" in record else ""
                say(f"epoch {record['epoch']:>3}  loss {loss:.4f}{knn}  {record['train_images_per_s']:,.0f} img/s  "
                    f"{record['elapsed_s']:.0f} s")
            checkpointer(state)
        if run is None:
            return None, {}
        if test_knn is None:  # resumed after the last epoch's checkpoint: its scores were not kept
            test_knn = knn_monitor(backbone, config, session, ("test",)).get("test")
        return run.path, _finish(run, config, session, backbone, state, test_knn, views, wall_start, plan, say)
    finally:
        if run is not None:
            run.close()
            run.lock.release()


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _finish(run: RunWriter, config: RunConfig, session: Session, backbone: nn.Module, state: PretrainState,
            test_knn: float | None, views: list[str], wall_start: float, plan: ResumePlan, say) -> dict[str, Any]:
    """The backbone's weights, the k-NN of validation (monitor) and of test (scored once at the last epoch, with the
    recipe's k and temperature), results.json and the pages."""
    splits = session.splits
    run.final_write(layout.WEIGHTS, lambda: save_weights(backbone, run.path / layout.WEIGHTS,
                                                         model_metadata(config, splits, backbone, "pretrain")))
    val_scores = [r["val_knn_top1"] for r in state.history if "val_knn_top1" in r]
    block = config.pretrain
    train_seconds = sum(r["train_seconds"] for r in state.history)
    images = sum(r["train_images_per_s"] * r["train_seconds"] for r in state.history)
    results = {
        "kind": "pretrain", "run": run.path.name, "method": block.method, "model": config.model.name,
        "dataset": splits.name, "params": count_params(backbone), "classes": splits.classes,
        "epochs": config.schedule.epochs, "seed": config.seed, "steps": state.step,
        "global_batch": config.data.batch_size * (dist.get_world_size() if dist.is_initialized() else 1),
        "precision": str(session.amp_dtype or "fp32").replace("torch.", ""),
        "knn": {"k": block.knn_k, "temperature": block.knn_temperature,
                "val_top1": val_scores[-1] if val_scores else None, "best_val_top1": max(val_scores, default=None),
                "test_top1": test_knn},
        "reference": reference_gap(config, test_knn) if test_knn is not None else None,
        "views": views,
        "train_time_s": train_seconds, "images_per_s": images / max(train_seconds, 1e-9),
        "wall_time_s": time.perf_counter() - wall_start,
        "resumed_from": plan.point.checkpoint.name if plan.point else None,
    }
    run.final_write(layout.RESULTS, lambda: run.write_json(layout.RESULTS, results))
    run.final_write("the report", lambda: write_pretrain_pages(run.path))
    say(f"k-NN top-1 (k {block.knn_k}, t {block.knn_temperature:g}): val {_percent(results['knn']['val_top1'])}, "
        f"test {_percent(results['knn']['test_top1'])}")
    if results["reference"] is not None:
        say(f"reference ({results['reference']['source']}, k-NN): {results['reference']['text']}")
    say(f"backbone: {run.path / layout.WEIGHTS} (fine-tune with model.weights={run.path}; probe with "
        f"`reprocls probe {run.path}`)")
    say(f"report: {run.path / layout.REPORT_MD} and {run.path / layout.REPORT_HTML}")
    return results
