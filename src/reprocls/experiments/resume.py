"""Checkpoints of a training run and exact resumption: what is saved, which checkpoint to continue, and when not to."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from reprocls import run_layout as layout
from reprocls.config import ConfigError, RunConfig, flatten, to_dict
from reprocls.engine.checkpoint import (MANIFEST, CheckpointError, intact_list, load_checkpoint, newest_valid, prune,
                                        restore_rng_states, rng_states, verify, write_checkpoint)
from reprocls.engine.distributed import World, unwrap
from reprocls.engine.train import Trainee, TrainState
# Keys that change how a run is observed or where it reads and writes, never what it computes.
HARMLESS_KEYS = ("name", "output_dir", "data.root", "data.download", "data.workers", "data.eval_batch_size",
                 "train.log_every", "train.threads", "train.eval_every", "train.checkpoint_every", "train.keep_checkpoints",
                 "train.on_nonfinite", "eval.tta", "reference")


def _harmless(key: str) -> bool:
    return any(key == k or key.startswith(f"{k}.") for k in HARMLESS_KEYS)


def experiment_keys(config: dict[str, Any]) -> dict[str, Any]:
    """The flattened config without the harmless keys: what must match for a resume to continue the same run."""
    return {k: v for k, v in flatten(config).items() if not _harmless(k)}


def config_hash(config: RunConfig) -> str:
    return hashlib.sha256(json.dumps(experiment_keys(to_dict(config)), sort_keys=True, default=str).encode()).hexdigest()


def check_same_experiment(saved: dict[str, Any], config: RunConfig) -> None:
    """Refuse to continue a checkpoint under a config that changes the experiment, listing every differing key."""
    before, after = experiment_keys(saved), experiment_keys(to_dict(config))
    differing = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if differing:
        lines = "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in differing)
        raise ConfigError(f"cannot resume: the recipe changes the experiment ({lines}). Undo these changes, or start a new "
                          f"run without --resume. Keys that may change on resume: {', '.join(HARMLESS_KEYS)}")


@dataclass
class ResumePoint:
    """The run folder and checkpoint a training continues from."""

    run_dir: Path
    checkpoint: Path
    manifest: dict[str, Any]


@dataclass
class ResumePlan:
    """What --resume found: a finished run to leave alone, a checkpoint to continue, a folder killed before its first
    checkpoint to start afresh in, or none of these (a new run folder)."""

    finished: Path | None = None
    point: ResumePoint | None = None
    fresh_in: Path | None = None


def _finished(run_dir: Path, config: RunConfig) -> ResumePlan:
    """A finished run, after checking it is this recipe's: a changed recipe must not be told it already ran."""
    saved = layout.read_config(run_dir)
    if saved is not None:
        check_same_experiment(saved, config)
    return ResumePlan(finished=run_dir)


def _busy(run_dir: Path) -> None:
    if layout.is_locked(run_dir):
        raise layout.FolderBusy(f"{run_dir} is being trained by another reprocls process right now; wait for it, stop "
                                "it, or start a new run without --resume")


def plan_resume(config: RunConfig, resume: str) -> ResumePlan:
    """`auto`: the newest run folder of exactly this recipe's name (by its stamp) — finished, checkpointed, or killed
    before its first checkpoint; folders whose checkpoints are all damaged are kept for inspection and passed over.
    A path: that run folder, or that one checkpoint folder."""
    if resume == "auto":
        for run_dir in layout.runs_named(config.output_dir, config.name):
            _busy(run_dir)
            if layout.is_run(run_dir):
                return _finished(run_dir, config)
            found = newest_valid(run_dir / layout.CHECKPOINTS)
            if found is not None:
                return ResumePlan(point=ResumePoint(run_dir, *found))
            if layout.started_only(run_dir):
                return ResumePlan(fresh_in=run_dir)
        return ResumePlan()
    path = Path(resume)
    if (path / MANIFEST).exists():
        run_dir = path.parent.parent
        _busy(run_dir)
        if layout.is_run(run_dir):
            return _finished(run_dir, config)
        return ResumePlan(point=ResumePoint(run_dir, path, verify(path)))
    if not path.is_dir():
        raise CheckpointError(f"--resume {resume}: no such folder; pass a run folder, one of its checkpoints/step-N "
                              "folders, or --resume auto")
    _busy(path)
    if layout.is_run(path):
        return _finished(path, config)
    found = newest_valid(path / layout.CHECKPOINTS)
    if found is None:
        raise CheckpointError(f"--resume {resume}: no intact checkpoint there; pass a run folder with checkpoints/ or one "
                              "checkpoints/step-N folder, or --resume auto")
    return ResumePlan(point=ResumePoint(path, *found))


def agree_on(value: Any, world: World) -> Any:
    """Rank 0's value on every rank, so all processes continue the same checkpoint."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def write_exact(folder: Path | None, config: RunConfig, world: World, state: Any, partial: dict[str, Any],
                tensors: dict[str, torch.Tensor], optimizer, scheduler, scaler, classes: list[str], *,
                best_step: int | None = None, kind: str | None = None) -> None:
    """One exact-resume checkpoint of training or pretraining: every process's RNG streams and `partial` epoch sums
    (gathered from all ranks), the tensors after a finite check, optimizer, schedule and scaler; written by rank 0
    (`folder` is None elsewhere)."""
    mine = {"rng": rng_states(), **partial}
    ranks = [mine]
    if world.distributed:
        ranks = [None] * world.world_size
        dist.all_gather_object(ranks, mine)
    floats = [(k, v) for k, v in tensors.items() if v.is_floating_point()]
    finite = torch.stack([torch.isfinite(v).all() for _, v in floats]).tolist() if floats else []  # one device sync
    if not all(finite):  # a checkpoint of NaN weights would be a trap: the error promises the older ones are good
        broken = [k for (k, _), ok in zip(floats, finite) if not ok]
        where = intact_list(folder) if folder is not None else "on rank 0"
        raise CheckpointError(f"step {state.step}: {len(broken)} weight tensor(s) are no longer finite (first: "
                              f"{broken[0]}), so no checkpoint is written of them; the checkpoints already written "
                              f"are intact ({where}). The learning rate is probably too high: lower optim.lr, or "
                              "set train.grad_clip_norm")
    if folder is None:
        return
    training = {"state": state.to_dict(), "ranks": ranks, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None}
    info = {"epoch": state.epoch, "micro": state.micro, "world_size": world.world_size, "classes": classes,
            "config_hash": config_hash(config), "config": to_dict(config), **({"kind": kind} if kind else {})}
    write_checkpoint(folder, state.step, tensors, training, info)
    prune(folder, config.train.keep_checkpoints, best_step)


def load_exact(point: ResumePoint, config: RunConfig, world: World, optimizer, scheduler,
               scaler) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Read a checkpoint of the same experiment and process count into optimizer, schedule, scaler and this
    process's RNG streams; returns its tensors, the saved state and this rank's partial sums for the caller."""
    check_same_experiment(point.manifest["config"], config)
    tensors, training, _ = load_checkpoint(point.checkpoint)
    ranks = training["ranks"]
    if len(ranks) != world.world_size:
        raise ConfigError(f"cannot resume: the checkpoint was written by {len(ranks)} process(es), this job has "
                          f"{world.world_size}; resume with the same process count")
    optimizer.load_state_dict(training["optimizer"])
    scheduler.load_state_dict(training["scheduler"])
    if scaler is not None and training["scaler"]:
        scaler.load_state_dict(training["scaler"])
    mine = ranks[world.rank]
    restore_rng_states(mine["rng"])
    return tensors, training["state"], mine


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors saved under `prefix.`, with it removed."""
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")}


class Checkpointer:
    """Saves everything a bitwise-exact resume needs into <run>/checkpoints/, on rank 0 only."""

    def __init__(self, folder: Path | None, config: RunConfig, world: World, trainee: Trainee, classes: list[str]) -> None:
        self.folder, self.config, self.world, self.trainee, self.classes = folder, config, world, trainee, classes

    def __call__(self, state: TrainState) -> None:
        trainee = self.trainee
        tensors = {f"model.{k}": v for k, v in unwrap(trainee.model).state_dict().items()}
        if trainee.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in trainee.ema.state_dict().items()})
        write_exact(self.folder, self.config, self.world, state,
                    {"loss_sum": state.loss_sum, "correct": state.correct, "seen": state.seen}, tensors,
                    trainee.optimizer, trainee.scheduler, trainee.scaler, self.classes, best_step=state.best_step)


def restore(point: ResumePoint, config: RunConfig, world: World, trainee: Trainee, classes: list[str]) -> TrainState:
    """Load a checkpoint into freshly built objects and every RNG; returns the training position to continue from."""
    if point.manifest.get("classes") != classes:
        raise ConfigError(f"cannot resume: the data's classes {classes} differ from the checkpoint's "
                          f"{point.manifest.get('classes')}")
    tensors, saved, mine = load_exact(point, config, world, trainee.optimizer, trainee.scheduler, trainee.scaler)
    unwrap(trainee.model).load_state_dict(prefixed(tensors, "model"))
    if trainee.ema is not None:
        trainee.ema.load_state_dict(prefixed(tensors, "ema"))
    state = TrainState.from_dict(saved)
    state.loss_sum, state.correct, state.seen = mine["loss_sum"], mine["correct"], mine["seen"]
    return state
