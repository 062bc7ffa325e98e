"""`reprocls reproduce`: one recipe trained with several seeds, mean ± std over the seeds, and a verdict against the
paper's number, because a single run cannot tell a real gap from seed noise."""

from __future__ import annotations

import copy
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml

from reprocls import run_layout as layout
from reprocls.config import ConfigError, RunConfig, dump, flatten, to_dict
from reprocls.data.datasets import split_seed
from reprocls.engine.checkpoint import newest_valid
from reprocls.envinfo import environment_differences
from reprocls.experiments.resume import experiment_keys
from reprocls.experiments.run import train_recipe
from reprocls.files import atomic_write_json
from reprocls.metrics.stats import describe
from reprocls.metrics.verdict import NOISE_RULE, judge
from reprocls.reports.reproduction_page import (METRICS, split_note, statistics_rows, write_reproduction_markdown,
                                                write_reproduction_page)
from reprocls.reports.tables import ACCURACY_KEYS, format_grid

DEFAULT_SEEDS = 3


# ---------------------------------------------------------------------------------------------- statistics


def seed_metrics(results: dict[str, Any]) -> dict[str, float | None]:
    """The numbers averaged over seeds, from one run's results.json."""
    test, val = results["test"], results.get("val") or {}
    return {"test_top1": test["top1"], "test_tta_top1": (results.get("test_tta") or {}).get("top1"),
            "test_top5": test.get("top5"), "test_loss": test.get("loss"),
            "val_top1": val.get("top1"), "train_time_s": results.get("train_time_s"),
            "images_per_s": results.get("images_per_s")}


def statistics(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """describe() of every metric over the finished seeds (metrics a run does not have, like val without a val split,
    are left out)."""
    out = {}
    for key, _ in METRICS:
        values = [r["metrics"][key] for r in records if r["metrics"].get(key) is not None]
        if values:
            out[key] = describe(values, (0.0, 1.0) if key in ACCURACY_KEYS else (0.0, math.inf))
    return out


# ---------------------------------------------------------------------------------------------- the folder


def recipe_differences(saved: dict[str, Any], config: RunConfig) -> list[str]:
    """Keys where `config` trains something else than the reproduction's saved recipe, or judges it against another
    reference. The seed, name, output folder and the keys a resume may change (data.root, threads, ...) may differ,
    but a seed that moves the pinned data.split_seed is named, since the seeds would be scored on other images."""
    def comparable(raw: dict[str, Any]) -> dict[str, Any]:
        keys = {k: v for k, v in experiment_keys(raw).items() if k != "seed"}
        keys.update(flatten({"reference": raw.get("reference")}))
        return keys

    before, after = comparable(saved), comparable(to_dict(config))
    return [f"{key}: {before.get(key)!r} in the folder, {after.get(key)!r} now"
            for key in sorted(before.keys() | after.keys()) if before.get(key) != after.get(key)]


def new_folder(config: RunConfig, out: str | Path | None) -> Path:
    """<output_dir>/<name>-reproduce-<UTC stamp>/ (or --out), refusing a folder that already holds a reproduction."""
    if out is not None:
        folder = Path(out)
        if (folder / layout.REPRODUCTION_JSON).exists() or (folder / layout.RECIPE).exists():
            raise ConfigError(f"--out {folder} already holds a reproduction; continue it with --resume {folder}, or choose "
                              "another --out")
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return layout.new_stamped_folder(config.output_dir, f"{config.name}-reproduce")


def open_resumed(folder: Path, config: RunConfig, out: str | Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(saved recipe, previous summary or {}) of an interrupted reproduction, refusing a recipe that changed."""
    if out is not None and Path(out).resolve() != folder.resolve():
        raise ConfigError(f"--out {out} and --resume {folder} name different folders; pass only --resume {folder}")
    if not (folder / layout.RECIPE).exists():
        raise FileNotFoundError(f"--resume {folder}: no {layout.RECIPE} there; pass a folder written by reprocls reproduce "
                                "(it holds recipe.yaml, reproduction.json and seeds/)")
    saved = yaml.safe_load((folder / layout.RECIPE).read_text()) or {}
    differing = recipe_differences(saved, config)
    if differing:
        raise ConfigError(f"cannot resume {folder}: the recipe differs from the one it was started with ({'; '.join(differing)}). "
                          f"Undo these changes (the folder's recipe is {folder / layout.RECIPE}), or start a new reproduction "
                          "without --resume")
    previous = json.loads((folder / layout.REPRODUCTION_JSON).read_text()) if (folder / layout.REPRODUCTION_JSON).exists() else {}
    return saved, previous


def pin_split(config: RunConfig) -> RunConfig:
    """The recipe with data.split_seed fixed (its own, else its seed), so every seed is scored on the same val/test
    images and the std over seeds is training noise, not data-split noise."""
    pinned = copy.deepcopy(config)
    pinned.data.split_seed = split_seed(config.data, config.seed)
    return pinned


def seed_config(config: RunConfig, name: str, seed: int, folder: Path) -> RunConfig:
    """The recipe for one seed: its own seed, name and output folder under seeds/."""
    copied = copy.deepcopy(config)
    copied.seed, copied.name, copied.output_dir = seed, f"{name}-seed{seed}", str(folder / layout.SEEDS)
    return copied


def seed_runs(folder: Path, name: str, seed: int) -> list[Path]:
    """This seed's run folders, newest first (the trailing '-' keeps seed 1 from matching seed 10)."""
    runs = [p for p in (folder / layout.SEEDS).glob(f"{name}-seed{seed}-*") if p.is_dir()]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def environment_summary(folder: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The first seed's environment without the package list, and what differed between seeds (say, a seed resumed on
    another machine)."""
    environments = []
    for record in records:
        path = folder / record["run"] / layout.ENVIRONMENT
        if path.exists():
            environments.append(json.loads(path.read_text()))
    if not environments:
        return {}
    summary = {k: v for k, v in environments[0].items() if k != "pip_freeze"}
    differences, packages = environment_differences(environments)
    summary["differs_across_seeds"] = {**differences, **{f"package {k}": v for k, v in packages.items()}}
    return summary


def reproduce(config: RunConfig, *, seeds: int | None = None, first_seed: int | None = None, out: str | Path | None = None,
              resume: str | Path | None = None, progress: bool = True, echo: bool = True) -> dict[str, Any]:
    """Train `config` once per seed (first_seed, first_seed + 1, ...) into one reproduction folder and judge the mean
    test top-1 against config.reference. With `resume`, finished seeds are kept, checkpointed ones continued and the
    rest trained; seeds/first_seed default to the interrupted plan there (else 3 seeds from 0). Every seed uses the
    recipe's data split (pin_split). Returns the summary that reproduction.json holds."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("reprocls reproduce trains its seeds one after another in one process; run it without torchrun "
                          "(or run `reprocls train` under torchrun once per seed and compare the runs)")
    say = print if echo else (lambda *a, **k: None)
    config = pin_split(config)
    previous: dict[str, Any] = {}
    if resume is not None:
        folder = Path(resume)
        saved, previous = open_resumed(folder, config, out)
        name = saved.get("name") or config.name
    else:
        folder = new_folder(config, out)
        name = config.name
        dump(config, folder / layout.RECIPE)
    planned = previous.get("seeds") or []
    count = seeds if seeds is not None else (len(planned) or DEFAULT_SEEDS)
    start = first_seed if first_seed is not None else (planned[0] if planned else 0)
    if count < 1:
        raise ConfigError(f"--seeds {count}: a reproduction needs at least one seed (three or more give a useful std)")
    plan = list(range(start, start + count))
    say(f"reproduction folder: {folder}  ({count} seed(s): {', '.join(map(str, plan))}; {split_note(config.data.split_seed)})")
    # The plan goes to disk before any training, so a --resume without flags continues it even if the first seed is cut.
    kept = [record for record in previous.get("runs", []) if record["seed"] in plan]
    atomic_write_json(folder / layout.REPRODUCTION_JSON, build_summary(folder, name, config, plan, kept))

    records: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    try:
        for index, seed in enumerate(plan, 1):
            record = run_seed(config, name, seed, folder, progress=progress, echo=echo,
                              say=lambda text: say(f"[seed {seed}, {index}/{count}] {text}"))
            records.append(record)
            summary = build_summary(folder, name, config, plan, records)
            atomic_write_json(folder / layout.REPRODUCTION_JSON, summary)
    except KeyboardInterrupt:
        say(f"\ninterrupted after {len(records)} of {count} seed(s); continue with: reprocls reproduce RECIPE --resume {folder}")
        raise
    write_reproduction_markdown(folder)
    report = write_reproduction_page(folder)
    say("\n" + format_grid(statistics_rows(summary["statistics"])))
    say(f"\n{summary['verdict']['text']}")
    say(f"\nreport: {report}")
    return summary


def run_seed(config: RunConfig, name: str, seed: int, folder: Path, *, progress: bool, echo: bool,
             say: Callable[[str], None]) -> dict[str, Any]:
    """Keep a finished run of this seed, continue a checkpointed one, or train it; returns its record."""
    recipe = seed_config(config, name, seed, folder)
    runs = seed_runs(folder, name, seed)
    finished = [run for run in runs if (run / layout.RESULTS).exists()]
    if finished:
        run_dir, how = finished[0], "kept"
        results = json.loads((run_dir / layout.RESULTS).read_text())
        say(f"already finished: {run_dir.name} (test top-1 {100 * results['test']['top1']:.2f} %), not retrained")
    else:
        checkpointed = next((run for run in runs if newest_valid(run / layout.CHECKPOINTS) is not None), None)
        how = "resumed" if checkpointed is not None else "trained"
        say(f"continuing {checkpointed.name} from its last checkpoint" if checkpointed else "training")
        run_dir, results = train_recipe(recipe, progress=progress, echo=echo,
                                        resume=str(checkpointed) if checkpointed is not None else None)
    return {"seed": seed, "run": str(run_dir.relative_to(folder)), "how": how, "metrics": seed_metrics(results)}


def build_summary(folder: Path, name: str, config: RunConfig, plan: list[int], records: list[dict[str, Any]]) -> dict[str, Any]:
    """What reproduction.json holds: the plan before any seed finished (no statistics, no verdict), then after each."""
    stats = statistics(records)
    return {"name": name, "folder": str(folder), "recipe": layout.RECIPE, "seeds": plan, "first_seed": plan[0],
            "split_seed": config.data.split_seed, "finished": len(records), "complete": len(records) == len(plan),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": records, "statistics": stats,
            "verdict": judge(stats["test_top1"]["values"], config.reference) if records else None,
            "reference": to_dict(config.reference) if config.reference is not None else None,
            "noise_rule": NOISE_RULE, "environment": environment_summary(folder, records)}


# ---------------------------------------------------------------------------------------------- reports
