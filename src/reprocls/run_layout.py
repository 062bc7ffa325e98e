"""Every file name of a run, study, reproduction and compression folder in one place, and the timestamped folders
themselves, so no module spells a file name of its own and two commands started in the same second never share
a folder."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

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
RUN_FILES = (RESULTS, CONFIG, ENVIRONMENT)  # what a finished run folder must hold to be compared or reported

# A study folder (reprocls tune): <output_dir>/<study>-study/
STUDY_DB = "study.db"  # the SQLite study database (when no --storage URL is given)
STUDY_JSON = "study.json"  # the study summary, readable without Optuna
BEST_YAML = "best.yaml"  # the best trial as a ready-to-train recipe
HISTORY_PNG = "history.png"
IMPORTANCE_PNG = "importance.png"
TRIALS = "trials"  # one run folder per trial

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


def is_study(folder: Path) -> bool:
    """A study folder, finished or not (study.db alone: a running or killed search)."""
    return (folder / STUDY_JSON).exists() or (folder / STUDY_DB).exists()


def is_reproduction(folder: Path) -> bool:
    """A reproduction folder with its plan written."""
    return (folder / REPRODUCTION_JSON).exists()
