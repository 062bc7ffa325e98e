"""The training loop as plain functions: train_one_epoch, evaluate, fit. Read top to bottom."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from reprocls.engine.distributed import all_gather_cat, all_reduce_sum, on_every_process, unwrap
from reprocls.engine.precision import autocast
from reprocls.engine.tta import TTA, tta_logits
from reprocls.metrics import confusion_matrix, per_class_accuracy, topk_correct
from reprocls.progress import Progress


class Batches(Protocol):
    """What the engine needs from a loader: batches, a length, and per-epoch reseeding."""

    def __iter__(self): ...
    def __len__(self) -> int: ...
    def set_epoch(self, epoch: int, start: int = 0) -> None: ...


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
    scores: torch.Tensor | None = field(default=None, repr=False)  # two classes: P(class 1) of every image
    labels: torch.Tensor | None = field(default=None, repr=False)  # their labels, in the same order

    @property
    def per_class(self) -> list[float]:
        return per_class_accuracy(self.confusion)

    def summary(self) -> dict[str, float | int]:
        return {"loss": self.loss, "top1": self.top1, "top5": self.top5, "samples": self.samples}


@dataclass
class TrainState:
    """Where training stands: with the modules, optimizer, schedule and RNG states, all a resume needs."""

    epoch: int = 0  # the epoch in progress, counted from 0
    step: int = 0  # optimizer steps taken over the whole run
    micro: int = 0  # micro-batches of the current epoch already trained on
    loss_sum: float = 0.0  # the current epoch's running sums on this process
    correct: int = 0
    seen: int = 0
    nonfinite_skipped: int = 0
    best_val_top1: float | None = None
    best_step: int | None = None
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainState:
        return cls(**values)


Checkpoint = Callable[[TrainState], None]
NonFinitePolicy = Literal["stop", "skip"]


@dataclass(frozen=True)
class TrainSettings:
    """How the loop trains, fixed for a whole run: where and in what precision, how one optimizer step is formed and
    guarded, and how often it validates, checkpoints and logs."""

    device: torch.device
    amp_dtype: torch.dtype | None = None  # autocast dtype; None: fp32
    num_classes: int = 0  # for the confusion matrix of validation passes
    epochs: int = 1
    accum_steps: int = 1  # micro-batches per optimizer step
    grad_clip_norm: float | None = None
    on_nonfinite: NonFinitePolicy = "stop"  # a NaN/inf loss or gradient: stop, or skip that step and count it
    eval_every: int = 1  # validate every N epochs, and after the last
    checkpoint_every: int | None = None  # optimizer steps between checkpoints (also at every epoch end)
    log_every: int = 50  # optimizer steps between TensorBoard scalars
    progress: bool = True
    head_only_epochs: int = 0  # fine-tuning warm-up: Trainee.warmup_params stay frozen for these first epochs


@dataclass
class Trainee:
    """The model and what updates it: optimizer, schedule, loss, and the optional fp16 scaler and weight average."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    scaler: torch.amp.GradScaler | None = None
    ema: AveragedModel | None = None
    frozen_norms: tuple[nn.Module, ...] = ()  # BatchNorm layers of frozen stages: eval mode, statistics kept
    warmup_params: tuple[nn.Parameter, ...] = ()  # frozen only during the head-only warm-up
    warmup_norms: tuple[nn.Module, ...] = ()

    def hold_frozen(self, epoch: int, head_only_epochs: int) -> None:
        """After model.train(): frozen BatchNorm layers back in eval mode, and the warm-up's parameters frozen for
        its first epochs; a function of the epoch alone, so a resumed run freezes exactly what the original did."""
        warming = epoch < head_only_epochs
        for parameter in self.warmup_params:
            parameter.requires_grad_(not warming)
        for module in (*self.frozen_norms, *(self.warmup_norms if warming else ())):
            module.eval()


def train_one_epoch(trainee: Trainee, loader: Batches, settings: TrainSettings, state: TrainState | None = None, *,
                    checkpoint: Checkpoint | None = None, logger: EpochLogger | None = None) -> dict[str, float]:
    """One pass over the training split (or its rest, when `state` says the epoch is under way): accum_steps
    micro-batches per optimizer step; the lr schedule and the EMA advance only on steps really taken."""
    state = state if state is not None else TrainState()
    model, optimizer, scheduler, criterion = trainee.model, trainee.optimizer, trainee.scheduler, trainee.criterion
    scaler, ema, device, accum_steps = trainee.scaler, trainee.ema, settings.device, settings.accum_steps
    model.train()
    trainee.hold_frozen(state.epoch, settings.head_only_epochs)
    loader.set_epoch(state.epoch, start=state.micro)
    loss_sum = torch.tensor(state.loss_sum, device=device, dtype=torch.float64)
    correct = torch.tensor(state.correct, device=device, dtype=torch.long)
    seen = torch.tensor(state.seen, device=device, dtype=torch.long)
    total_micro = len(loader) // accum_steps * accum_steps
    bar = Progress(total_micro // accum_steps, f"epoch {state.epoch + 1} train", enabled=settings.progress)
    bar.skip(state.micro // accum_steps)
    start = time.perf_counter()
    images_before = state.seen
    first_step_at: float | None = None  # when this pass's first optimizer step ended (start-up is measured to it)
    optimizer.zero_grad(set_to_none=True)
    for micro, (images, targets) in enumerate(itertools.islice(loader, total_micro - state.micro), start=state.micro):
        completes_step = (micro + 1) % accum_steps == 0
        # DDP all-reduces gradients on every backward unless told not to: only the step's last micro-batch syncs
        sync = completes_step or not isinstance(model, DistributedDataParallel)
        with contextlib.nullcontext() if sync else model.no_sync():  # type: ignore[operator]
            with autocast(device, settings.amp_dtype):
                logits = model(images)
                loss = criterion(logits, targets)
            finite = bool(torch.isfinite(loss))
            if settings.on_nonfinite == "stop" and not on_every_process(finite, device):  # all processes stop together
                raise FloatingPointError(f"loss became non-finite at epoch {state.epoch + 1}, step {state.step + 1}; "
                                         f"this process: {loss.item()}; parameters are unchanged and the last checkpoint "
                                         "is intact. Lower optim.lr, add train.grad_clip_norm, or set train.on_nonfinite=skip")
            # a non-finite loss still runs backward (every DDP process must join the all-reduce); its NaN gradients
            # then make optimizer_step refuse the step on every process alike
            scaled = loss / accum_steps
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if finite:
            labels = targets.argmax(1) if targets.ndim == 2 else targets  # MixUp/CutMix give soft targets
            loss_sum += loss.detach().double() * labels.shape[0]
            correct += (logits.argmax(1) == labels).sum()
            seen += labels.shape[0]
        if not completes_step:
            continue
        outcome = optimizer_step(optimizer, model, scaler, settings.grad_clip_norm)
        if outcome == "nonfinite" and settings.on_nonfinite == "stop":
            raise FloatingPointError(f"gradients became non-finite at epoch {state.epoch + 1}, step {state.step + 1}; "
                                     "parameters are unchanged and the last checkpoint is intact. Lower optim.lr, add "
                                     "train.grad_clip_norm, or set train.on_nonfinite=skip")
        if outcome == "stepped":
            scheduler.step()
            if ema is not None:
                ema.update_parameters(unwrap(model))
        elif outcome == "nonfinite":
            state.nonfinite_skipped += 1
        optimizer.zero_grad(set_to_none=True)
        state.step, state.micro = state.step + 1, micro + 1
        first_step_at = first_step_at or time.perf_counter()
        if logger is not None and state.step % settings.log_every == 0:
            logger.log_step(state.step, {"train/loss": loss.item(), "train/lr": optimizer.param_groups[0]["lr"]})
        every = settings.checkpoint_every
        if checkpoint is not None and every and state.step % every == 0 and state.micro < total_micro:
            state.loss_sum, state.correct, state.seen = float(loss_sum), int(correct), int(seen)
            checkpoint(state)
        die_if_asked(state.step)
        if settings.progress:  # reading the loss waits for the device: only when someone watches
            bar.update(images.shape[0] * accum_steps, loss=f"{loss.item():.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    state.loss_sum, state.correct, state.seen = float(loss_sum), int(correct), int(seen)
    processed = seen - images_before
    loss_sum, correct, seen, processed = all_reduce_sum(loss_sum, correct, seen, processed)
    total = max(int(seen), 1)
    return {"loss": float(loss_sum) / total, "top1": int(correct) / total, "images_per_s": int(processed) / seconds,
            "seconds": seconds, "first_step_at": first_step_at}


StepOutcome = Literal["stepped", "skipped_by_scaler", "nonfinite"]


def optimizer_step(optimizer: torch.optim.Optimizer, model: nn.Module, scaler: torch.amp.GradScaler | None,
                   grad_clip_norm: float | None) -> StepOutcome:
    """Unscale, clip and step, unless the gradients are not finite: parameters never take a NaN or inf update."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    if grad_clip_norm is not None:
        norm = nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
    elif scaler is None:
        norm = gradient_norm(model)
    if scaler is None:
        if not torch.isfinite(norm):
            return "nonfinite"
        optimizer.step()
        return "stepped"
    scale_before = scaler.get_scale()
    scaler.step(optimizer)  # fp16: the scaler itself skips steps with inf/NaN gradients and lowers its scale
    scaler.update()
    return "stepped" if scaler.get_scale() >= scale_before else "skipped_by_scaler"


def gradient_norm(model: nn.Module) -> torch.Tensor:
    """The global L2 norm of all gradients, without modifying them (one fused kernel per dtype and device)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))


def die_if_asked(step: int) -> None:
    """Fault injection for the resume tests: SIGKILL this process after optimizer step N of its first attempt."""
    target = os.environ.get("REPROCLS_FAULT_KILL_AT_STEP")
    if target is None or int(target) != step or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return
    if os.environ.get("REPROCLS_FAULT_KILL_RANK", os.environ.get("RANK", "0")) == os.environ.get("RANK", "0"):
        os.kill(os.getpid(), signal.SIGKILL)


def die_at(moment: str) -> None:
    """Fault injection for the resume tests: SIGKILL this process at a named moment (REPROCLS_FAULT_KILL_AT=test)."""
    if os.environ.get("REPROCLS_FAULT_KILL_AT") == moment and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        os.kill(os.getpid(), signal.SIGKILL)


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: torch.device, amp_dtype: torch.dtype | None,
             num_classes: int, criterion: nn.Module | None = None, description: str = "eval",
             progress: bool = True, tta: TTA = "none") -> EvalResult:
    """Loss, top-1/top-5 and the confusion matrix over a whole split, with BatchNorm and dropout in eval mode; for
    two classes also every image's P(class 1), for ROC and PR curves. `tta` averages the logits over flipped (and
    shifted) views of each batch (engine/tta.py)."""
    model.eval()
    scores: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    criterion = criterion or nn.CrossEntropyLoss()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros(3, dtype=torch.long, device=device)  # top-1 hits, top-5 hits, images
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    bar = Progress(len(loader), description, enabled=progress)  # type: ignore[arg-type]
    start = time.perf_counter()
    for images, targets in loader:
        with autocast(device, amp_dtype):
            logits = tta_logits(model, images, tta)
        logits = logits.float()
        loss_sum += criterion(logits, targets).double() * targets.shape[0]
        hits1, hits5 = topk_correct(logits, targets, (1, 5))
        counts += torch.tensor([hits1, hits5, targets.shape[0]], device=device)
        confusion += confusion_matrix(logits.argmax(1), targets, num_classes)
        if num_classes == 2:
            scores.append(logits.softmax(1)[:, 1].cpu())
            labels.append(targets.cpu())
        bar.update(targets.shape[0])
    bar.close()
    loss_sum, counts, confusion = all_reduce_sum(loss_sum, counts, confusion)  # each process saw a disjoint shard
    top1, top5, seen = counts.tolist()
    if seen == 0:
        raise ValueError(f"{description}: the split is empty")
    result = EvalResult(float(loss_sum) / seen, top1 / seen, top5 / seen, seen, confusion.cpu(), time.perf_counter() - start)
    if num_classes == 2:
        result.scores = all_gather_cat(torch.cat(scores) if scores else torch.zeros(0))
        result.labels = all_gather_cat(torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long))
    return result


@dataclass
class FitResult:
    """The outcome of fit: per-epoch history and the last validation results of the raw and EMA weights."""

    history: list[dict] = field(default_factory=list)
    val: EvalResult | None = None
    ema_val: EvalResult | None = None
    train_seconds: float = 0.0
    images_per_s: float = 0.0
    nonfinite_skipped: int = 0
    first_step_at: float | None = None  # time.perf_counter() when this process's first optimizer step ended


def fit(trainee: Trainee, train_loader: Batches, val_loader: Iterable | None, settings: TrainSettings,
        state: TrainState | None = None, *, checkpoint: Checkpoint | None = None,
        logger: EpochLogger | None = None) -> FitResult:
    """Train from `state` (a fresh one, or a resumed checkpoint's) to settings.epochs, validating the raw and EMA
    weights every settings.eval_every epochs and after the last; `checkpoint` is called every
    settings.checkpoint_every steps and at each epoch end."""
    state = state if state is not None else TrainState()
    result = FitResult(history=state.history)
    start = time.perf_counter()
    validate = dict(device=settings.device, amp_dtype=settings.amp_dtype, num_classes=settings.num_classes,
                    criterion=trainee.criterion, progress=settings.progress)
    while state.epoch < settings.epochs:
        epoch = state.epoch
        train = train_one_epoch(trainee, train_loader, settings, state, checkpoint=checkpoint, logger=logger)
        first = train.pop("first_step_at")
        result.first_step_at = result.first_step_at or first
        record: dict = {"epoch": epoch + 1, "step": state.step, "lr": trainee.optimizer.param_groups[0]["lr"],
                        **{f"train_{k}": v for k, v in train.items()}}
        last = epoch + 1 == settings.epochs
        if val_loader is not None and ((epoch + 1) % settings.eval_every == 0 or last):
            result.val = evaluate(trainee.model, val_loader, description=f"epoch {epoch + 1} val", **validate)
            record.update({f"val_{k}": v for k, v in result.val.summary().items()})
            if trainee.ema is not None:
                result.ema_val = evaluate(trainee.ema, val_loader, description=f"epoch {epoch + 1} val (EMA)", **validate)
                record.update({f"val_ema_{k}": v for k, v in result.ema_val.summary().items()})
            best_now = max(result.val.top1, result.ema_val.top1 if result.ema_val else 0.0)
            if state.best_val_top1 is None or best_now > state.best_val_top1:
                state.best_val_top1, state.best_step = best_now, state.step
        record["nonfinite_skipped"] = state.nonfinite_skipped
        record["elapsed_s"] = time.perf_counter() - start
        state.history.append(record)
        state.epoch, state.micro, state.loss_sum, state.correct, state.seen = epoch + 1, 0, 0.0, 0, 0
        if logger is not None:
            logger.log_epoch(record)
        if checkpoint is not None:
            checkpoint(state)
    if val_loader is not None and result.val is None and state.epoch > 0:  # resumed after the last epoch's checkpoint
        result.val = evaluate(trainee.model, val_loader, description="val (again)", **validate)
        if trainee.ema is not None:
            result.ema_val = evaluate(trainee.ema, val_loader, description="val (EMA, again)", **validate)
    result.train_seconds = sum(r["train_seconds"] for r in state.history)
    images = sum(r["train_images_per_s"] * r["train_seconds"] for r in state.history)
    result.images_per_s = images / max(result.train_seconds, 1e-9)
    result.nonfinite_skipped = state.nonfinite_skipped
    return result
