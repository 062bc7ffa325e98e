"""The training loop as plain functions: train_one_epoch, evaluate, fit. Read top to bottom."""

from __future__ import annotations

import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import Iterable, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from reprocls.engine.distributed import all_reduce_sum, unwrap
from reprocls.engine.precision import autocast
from reprocls.metrics import confusion_matrix, per_class_accuracy, topk_correct
from reprocls.progress import Progress


class Batches(Protocol):
    """What the engine needs from a loader: batches, a length, and per-epoch reseeding."""

    def __iter__(self): ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int) -> None: ...


class EpochLogger(Protocol):
    """Where fit reports each epoch and periodic step scalars (the run folder implements it)."""

    def log_step(self, step: int, scalars: dict[str, float]) -> None: ...
    def log_epoch(self, record: dict) -> None: ...


@dataclass
class EvalResult:
    """Everything one pass over a split measures."""

    loss: float
    top1: float
    top5: float
    samples: int
    confusion: torch.Tensor = field(repr=False)
    seconds: float = 0.0

    @property
    def per_class(self) -> list[float]:
        return per_class_accuracy(self.confusion)

    def summary(self) -> dict[str, float | int]:
        return {"loss": self.loss, "top1": self.top1, "top5": self.top5, "samples": self.samples}


def train_one_epoch(model: nn.Module, loader: Batches, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, criterion: nn.Module, *, device: torch.device,
                    amp_dtype: torch.dtype | None, scaler: torch.amp.GradScaler | None = None,
                    grad_clip_norm: float | None = None, accum_steps: int = 1, ema: AveragedModel | None = None,
                    epoch: int = 0, global_step: int = 0, logger: EpochLogger | None = None, log_every: int = 50,
                    progress: bool = True) -> dict[str, float]:
    """One pass over the training split: accum_steps micro-batches per optimizer step; the lr schedule and the
    EMA advance only on steps the optimizer really takes."""
    model.train()
    loader.set_epoch(epoch)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = torch.zeros((), device=device, dtype=torch.long)
    steps = len(loader) // accum_steps
    bar = Progress(steps, f"epoch {epoch + 1} train", enabled=progress)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for micro, (images, targets) in enumerate(itertools.islice(loader, steps * accum_steps)):
        completes_step = (micro + 1) % accum_steps == 0
        # DDP all-reduces gradients on every backward unless told not to: only the step's last micro-batch syncs
        sync = completes_step or not isinstance(model, DistributedDataParallel)
        with contextlib.nullcontext() if sync else model.no_sync():  # type: ignore[operator]
            with autocast(device, amp_dtype):
                logits = model(images)
                loss = criterion(logits, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {global_step}: lower "
                                         "optim.lr or add train.grad_clip_norm")
            scaled = loss / accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        labels = targets.argmax(1) if targets.ndim == 2 else targets  # MixUp/CutMix give soft targets
        loss_sum += loss.detach().double() * labels.shape[0]
        correct += (logits.argmax(1) == labels).sum()
        seen += labels.shape[0]
        if not completes_step:
            continue
        if optimizer_step(optimizer, model, scaler, grad_clip_norm):
            scheduler.step()
            if ema is not None:
                ema.update_parameters(unwrap(model))
        optimizer.zero_grad(set_to_none=True)
        global_step += 1
        if logger is not None and global_step % log_every == 0:
            logger.log_step(global_step, {"train/loss": loss.item(), "train/lr": optimizer.param_groups[0]["lr"]})
        bar.update(1, loss=f"{loss.item():.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    loss_sum, correct, seen = all_reduce_sum(loss_sum, correct, seen)
    total = max(int(seen), 1)
    return {"loss": float(loss_sum) / total, "top1": int(correct) / total, "images_per_s": int(seen) / seconds,
            "seconds": seconds, "steps": global_step}


def optimizer_step(optimizer: torch.optim.Optimizer, model: nn.Module, scaler: torch.amp.GradScaler | None,
                   grad_clip_norm: float | None) -> bool:
    """Unscale, clip and step; False when the fp16 scaler skipped the step for non-finite gradients."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    if scaler is None:
        optimizer.step()
        return True
    scale_before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale_before  # a skipped step lowers the scale


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, amp_dtype: torch.dtype | None,
             num_classes: int, criterion: nn.Module | None = None, description: str = "eval",
             progress: bool = True) -> EvalResult:
    """Loss, top-1/top-5 and the confusion matrix over a whole split, with BatchNorm and dropout in eval mode."""
    model.eval()
    criterion = criterion or nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros(3, dtype=torch.long, device=device)  # top-1 hits, top-5 hits, images
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    bar = Progress(len(loader), description, enabled=progress)  # type: ignore[arg-type]
    start = time.perf_counter()
    for images, targets in loader:
        with autocast(device, amp_dtype):
            logits = model(images)
        logits = logits.float()
        loss_sum += criterion(logits, targets).double() * targets.shape[0]
        hits1, hits5 = topk_correct(logits, targets, (1, 5))
        counts += torch.tensor([hits1, hits5, targets.shape[0]], device=device)
        confusion += confusion_matrix(logits.argmax(1), targets, num_classes)
        bar.update(targets.shape[0])
    bar.close()
    loss_sum, counts, confusion = all_reduce_sum(loss_sum, counts, confusion)  # each process saw a disjoint shard
    top1, top5, seen = counts.tolist()
    if seen == 0:
        raise ValueError(f"{description}: the split is empty")
    return EvalResult(float(loss_sum) / seen, top1 / seen, top5 / seen, seen, confusion.cpu(), time.perf_counter() - start)


@dataclass
class FitResult:
    """The outcome of fit: per-epoch history and the last validation results of the raw and EMA weights."""

    history: list[dict] = field(default_factory=list)
    val: EvalResult | None = None
    ema_val: EvalResult | None = None
    train_seconds: float = 0.0
    images_per_s: float = 0.0


def fit(model: nn.Module, train_loader: Batches, val_loader: Iterable | None, optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler, criterion: nn.Module, *, epochs: int, device: torch.device,
        amp_dtype: torch.dtype | None, num_classes: int, scaler: torch.amp.GradScaler | None = None,
        grad_clip_norm: float | None = None, accum_steps: int = 1, ema: AveragedModel | None = None,
        eval_every: int = 1, logger: EpochLogger | None = None, log_every: int = 50, progress: bool = True) -> FitResult:
    """Train for `epochs`, validating the raw (and EMA) weights every `eval_every` epochs and after the last one."""
    result = FitResult()
    step, images, start = 0, 0, time.perf_counter()
    for epoch in range(epochs):
        train = train_one_epoch(model, train_loader, optimizer, scheduler, criterion, device=device, amp_dtype=amp_dtype,
                                scaler=scaler, grad_clip_norm=grad_clip_norm, accum_steps=accum_steps, ema=ema,
                                epoch=epoch, global_step=step, logger=logger, log_every=log_every, progress=progress)
        step = int(train.pop("steps"))
        images += train["images_per_s"] * train["seconds"]
        record: dict = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"],
                        **{f"train_{k}": v for k, v in train.items()}}
        last = epoch + 1 == epochs
        if val_loader is not None and ((epoch + 1) % eval_every == 0 or last):
            result.val = evaluate(model, val_loader, device=device, amp_dtype=amp_dtype, num_classes=num_classes,
                                  criterion=criterion, description=f"epoch {epoch + 1} val", progress=progress)
            record.update({f"val_{k}": v for k, v in result.val.summary().items()})
            if ema is not None:
                result.ema_val = evaluate(ema, val_loader, device=device, amp_dtype=amp_dtype, num_classes=num_classes,
                                          criterion=criterion, description=f"epoch {epoch + 1} val (EMA)", progress=progress)
                record.update({f"val_ema_{k}": v for k, v in result.ema_val.summary().items()})
        record["elapsed_s"] = time.perf_counter() - start
        result.history.append(record)
        if logger is not None:
            logger.log_epoch(record)
    result.train_seconds = time.perf_counter() - start
    result.images_per_s = images / max(sum(r["train_seconds"] for r in result.history), 1e-9)
    return result
