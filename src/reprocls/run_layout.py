"""Every file name of a run, study, reproduction and compression folder in one place, and the timestamped folders
themselves, so no module spells a file name of its own and two commands started in the same second never share
a folder."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

# A run folder: <output_dir>/<name>-<UTC stamp>/
CONFIG = "config.yaml"  # the resolved recipe
ENVIRONMENT = "environment.json"  # versions and hardware
METRICS = "metrics.jsonl"  # one record per epoch
TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"  # resumable step-N/ folders
SPLITS = "splits.json"  # image_folder: the file lists of train/val/test
SKIPPED = "skipped_images.json"  # image_folder: undecodable files left out
WEIGHTS = "model.safetensors"  # the weights the run keeps, with the recipe in their metadata
RESULTS = "results.json"  # every number of the run; its presence marks a finished run
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
CURVES_PNG = "curves.png"
CONFUSION_PNG = "confusion.png"
MISTAKES_JSON = "mistakes.json"
MISTAKES_PNG = "mistakes.png"
LOCK = ".lock"  # held (flock) by the one process writing the folder; it holds that process's pid
CHECKPOINT_STEP = "step-"  # checkpoints/step-<N>/: one finished checkpoint
TEMPORARY_CHECKPOINT = ".tmp-step-"  # a checkpoint being written: left behind only by a killed write
PROBE_JSON = "probe.json"  # reprocls probe: the linear probe of a pretraining run's frozen backbone
RUN_FILES = (RESULTS, CONFIG, ENVIRONMENT)  # what a finished run folder must hold to be compared or reported

# A study folder (reprocls tune): <output_dir>/<study>-study/
STUDY_DB = "study.db"  # the SQLite study database (when no --storage URL is given)
STUDY_JSON = "study.json"  # the study summary, readable without Optuna
BEST_YAML = "best.yaml"  # the best trial as a ready-to-train recipe
HISTORY_PNG = "history.png"
IMPORTANCE_PNG = "importance.png"
TRIALS = "trials"  # one run folder per trial
NAS_JSON = "nas.json"  # reprocls nas: every candidate measured, the Pareto front, proxy rank correlations
FRONT = "front"  # reprocls nas: one ready recipe per Pareto-front member
PARETO_PNG = "pareto.png"
PROXY_IMAGES = "proxy_images.pt"  # the training images the data-dependent zero-cost proxies score candidates on

# A reproduction folder (reprocls reproduce): <output_dir>/<name>-reproduce-<UTC stamp>/
RECIPE = "recipe.yaml"  # the resolved recipe every seed trains
REPRODUCTION_JSON = "reproduction.json"  # plan, statistics over seeds and the verdict
REPRODUCTION_MD = "reproduction.md"
SEEDS = "seeds"  # one run folder per seed

# A compression folder (reprocls compress): <run>/compress-<UTC stamp>/
COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"
COMPARE_PNG = "compare.png"
INT8_PROGRAM = "model.pt2"  # an INT8 compressed model (torch.export program), model.json beside it
EXPORT = "export"  # reprocls export writes here by default


def utc_stamp() -> str:
    """The UTC time to the second, as folder names carry it (20261202-011553)."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def new_stamped_folder(parent: str | Path, prefix: str) -> Path:
    """Create and return <parent>/<prefix>-<UTC stamp>, or <...>-1, -2 ... when that name is taken; the folder is
    created atomically (mkdir without exist_ok), so two processes started in the same second get two folders."""
    base = Path(parent) / f"{prefix}-{utc_stamp()}"
    Path(parent).mkdir(parents=True, exist_ok=True)
    path, suffix = base, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1


def is_run(folder: Path) -> bool:
    """A finished run folder (it holds results.json)."""
    return (folder / RESULTS).exists()


def is_pretraining_run(folder: Path) -> bool:
    """A finished `reprocls pretrain` run: its results.json says kind: pretrain."""
    try:
        return json.loads((Path(folder) / RESULTS).read_text()).get("kind") == "pretrain"
    except (OSError, ValueError, AttributeError):
        return False


def read_config(folder: Path) -> dict | None:
    """The resolved recipe a run folder saved (config.yaml), or None when it has none readable."""
    import yaml

    try:
        raw = yaml.safe_load((Path(folder) / CONFIG).read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None
    return raw if isinstance(raw, dict) else None


def is_nas(folder: Path) -> bool:
    """A finished architecture search: a study folder with its nas.json."""
    return (folder / NAS_JSON).exists()


def is_study(folder: Path) -> bool:
    """A study folder, finished or not (study.db alone: a running or killed search)."""
    return (folder / STUDY_JSON).exists() or (folder / STUDY_DB).exists()


def is_reproduction(folder: Path) -> bool:
    """A reproduction folder with its plan written."""
    return (folder / REPRODUCTION_JSON).exists()


class FolderBusy(RuntimeError):
    """Another live process holds the folder's lock; the message names it and what to do."""


class FolderLock:
    """An exclusive lock on a run folder (flock on <folder>/.lock), held while one process writes it: a second trainer
    is refused at once, and the lock goes away with its process, however that process ends."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.handle: IO[str] | None = open(self.folder / LOCK, "a+")
        try:
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            self.handle = None
            raise FolderBusy(f"{self.folder} is being written by another reprocls process (pid {holder}); wait for it to "
                             "finish or stop it, or train into a new run folder") from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"{os.getpid()}\n")
        self.handle.flush()

    def release(self) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the descriptor releases the flock
            self.handle = None


def is_locked(folder: Path) -> bool:
    """Whether a live process holds the folder's lock right now (probes without taking it for long)."""
    try:
        with open(Path(folder) / LOCK, "rb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)  # refused while a writer holds LOCK_EX
    except BlockingIOError:
        return True
    except OSError:  # no lock file (never locked), or one this user cannot open
        return False
    return False


def runs_named(parent: str | Path, name: str) -> list[Path]:
    """The run folders of exactly this name (<name>-<stamp> or <name>-<stamp>-<k>), newest first by their stamp: a
    run called "kr" never picks up "kr-lr03"'s folders."""
    pattern = re.compile(rf"{re.escape(name)}-(\d{{8}}-\d{{6}})(?:-(\d+))?")
    found = []
    parent = Path(parent)
    if not parent.is_dir():
        return []
    for path in parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match and path.is_dir():
            found.append(((match.group(1), int(match.group(2) or 0)), path))
    return [path for _, path in sorted(found, reverse=True)]


def remove_temporary_checkpoints(run_dir: Path) -> list[str]:
    """Delete the half-written checkpoint folders a killed write left in <run>/checkpoints/; call under the lock."""
    folder = Path(run_dir) / CHECKPOINTS
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.startswith(TEMPORARY_CHECKPOINT):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path.name)
    return removed


def started_only(run_dir: Path) -> bool:
    """A run folder killed before its first checkpoint: it has no results and no checkpoint folder at all."""
    checkpoints = Path(run_dir) / CHECKPOINTS
    finished_steps = [p for p in checkpoints.iterdir() if p.name.startswith(CHECKPOINT_STEP)] if checkpoints.is_dir() else []
    return not is_run(run_dir) and not finished_steps
