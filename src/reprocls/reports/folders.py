"""Reading what a finished run folder holds (results, config, environment, per-epoch history), with errors that
name the missing file, for every page and comparison."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from reprocls import run_layout as layout


def read_history(run_dir: Path) -> list[dict]:
    """The per-epoch records of a run's metrics.jsonl (empty when missing); an epoch logged twice keeps its later record."""
    path = Path(run_dir) / layout.METRICS
    if not path.exists():
        return []
    by_epoch: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            by_epoch[record["epoch"]] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def scored_validation(record: dict[str, Any]) -> dict[str, Any]:
    """An epoch's validation as a search judges it: the EMA weights' when they do at least as well as the raw ones
    (what a run keeps at the end), else the raw weights'."""
    ema = record.get("val_ema_top1")
    if ema is not None and ema >= record["val_top1"]:
        return {"epoch": record["epoch"], "val_top1": ema, "val_loss": record.get("val_ema_loss", math.nan)}
    return {"epoch": record["epoch"], "val_top1": record["val_top1"], "val_loss": record.get("val_loss", math.nan)}


def read_results(run_dir: Path) -> dict[str, Any]:
    """A finished run's results.json."""
    return json.loads((Path(run_dir) / layout.RESULTS).read_text())


@dataclass
class FinishedRun:
    """A finished run folder as pages and comparisons read it."""

    path: Path
    results: dict[str, Any]
    config: dict[str, Any]
    environment: dict[str, Any]
    history: list[dict[str, Any]]


def read_finished_run(path: str | Path) -> FinishedRun:
    """Results, config as saved, environment and validation history of a finished run; a missing file is an error
    that names it and says what to do."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass finished run folders (each holds "
                                f"{', '.join(layout.RUN_FILES)})")
    missing = [name for name in layout.RUN_FILES if not (folder / name).exists()]
    if missing:
        hint = ("it is a reproduction folder: pass its seeds/<run> folders instead" if layout.is_reproduction(folder)
                else "is the run finished? Resume it with reprocls train RECIPE --resume PATH, or pass another run folder")
        raise FileNotFoundError(f"{folder} has no {', '.join(missing)}: {hint}")
    config = yaml.safe_load((folder / layout.CONFIG).read_text()) or {}
    environment = json.loads((folder / layout.ENVIRONMENT).read_text())
    return FinishedRun(folder, read_results(folder), config, environment, read_history(folder))
