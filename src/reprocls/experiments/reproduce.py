"""`reprocls reproduce`: one recipe trained with several seeds, mean ± std over the seeds, and a verdict against the
paper's number, because a single run cannot tell a real gap from seed noise."""

from __future__ import annotations

import copy
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from reprocls.config import ConfigError, RunConfig, dump, flatten, to_dict  # noqa: E402
from reprocls.data.datasets import split_seed  # noqa: E402
from reprocls.engine.checkpoint import newest_valid  # noqa: E402
from reprocls.envinfo import environment_differences  # noqa: E402
from reprocls.experiments import html  # noqa: E402
from reprocls.experiments.report import format_grid, format_metric, markdown_table, plot_validation_runs, read_history  # noqa: E402
from reprocls.experiments.resume import CHECKPOINTS, experiment_keys  # noqa: E402
from reprocls.experiments.run import train_recipe  # noqa: E402
from reprocls.experiments.verdict import NOISE_RULE, describe, judge, noise_formula, points  # noqa: E402
from reprocls.files import atomic_write_json  # noqa: E402

RECIPE_FILE = "recipe.yaml"
SUMMARY_FILE = "reproduction.json"
MARKDOWN_FILE = "reproduction.md"
REPORT_FILE = "report.html"
SEEDS_DIR = "seeds"
DEFAULT_SEEDS = 3
# (key, label) of every statistic over seeds, read from each seed's results.json by seed_metrics.
METRICS = (("test_top1", "test top-1"), ("test_top5", "test top-5"), ("test_loss", "test loss"), ("val_top1", "val top-1"),
           ("train_time_s", "train time"), ("images_per_s", "img/s"))
ACCURACIES = ("test_top1", "test_top5", "val_top1")


# ---------------------------------------------------------------------------------------------- statistics


def seed_metrics(results: dict[str, Any]) -> dict[str, float | None]:
    """The numbers averaged over seeds, from one run's results.json."""
    test, val = results["test"], results.get("val") or {}
    return {"test_top1": test["top1"], "test_top5": test.get("top5"), "test_loss": test.get("loss"),
            "val_top1": val.get("top1"), "train_time_s": results.get("train_time_s"),
            "images_per_s": results.get("images_per_s")}


def statistics(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """describe() of every metric over the finished seeds (metrics a run does not have, like val without a val split,
    are left out)."""
    out = {}
    for key, _ in METRICS:
        values = [r["metrics"][key] for r in records if r["metrics"].get(key) is not None]
        if values:
            out[key] = describe(values)
    return out


def format_spread(key: str, stats: dict[str, Any]) -> str:
    """'mean ± std' in the metric's unit; with one seed, the mean and 'std undefined'."""
    if stats["std"] is None:
        return f"{format_metric(key, stats['mean'])} (std undefined)"
    mean, std = format_metric(key, stats["mean"]), format_metric(key, stats["std"])
    unit = " %" if key in ACCURACIES else (" s" if key == "train_time_s" else "")
    return f"{mean.removesuffix(unit)} ± {std}"


def statistics_rows(stats: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Header and one row per metric: mean ± std, 95 % interval, min, max, seeds."""
    rows = [["metric", "mean ± std", "95 % CI of the mean", "min", "max", "seeds"]]
    for key, label in METRICS:
        if key not in stats:
            continue
        s = stats[key]
        ci = (f"[{format_metric(key, s['ci95'][0])}, {format_metric(key, s['ci95'][1])}]" if s["ci95"] is not None
              else "undefined (1 seed)")
        rows.append([label, format_spread(key, s), ci, format_metric(key, s["min"]), format_metric(key, s["max"]), str(s["n"])])
    return rows


def seed_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """Header and one row per seed with its run folder and how it got its numbers (trained, resumed or kept)."""
    rows = [["seed", "run", "how"] + [label for _, label in METRICS]]
    for record in records:
        rows.append([str(record["seed"]), Path(record["run"]).name, record["how"]]
                    + [format_metric(key, record["metrics"].get(key)) for key, _ in METRICS])
    return rows


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
        if (folder / SUMMARY_FILE).exists() or (folder / RECIPE_FILE).exists():
            raise ConfigError(f"--out {folder} already holds a reproduction; continue it with --resume {folder}, or choose "
                              "another --out")
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    base = Path(config.output_dir) / f"{config.name}-reproduce-{stamp}"
    folder, suffix = base, 1
    while folder.exists():
        folder, suffix = base.with_name(f"{base.name}-{suffix}"), suffix + 1
    folder.mkdir(parents=True)
    return folder


def open_resumed(folder: Path, config: RunConfig, out: str | Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(saved recipe, previous summary or {}) of an interrupted reproduction, refusing a recipe that changed."""
    if out is not None and Path(out).resolve() != folder.resolve():
        raise ConfigError(f"--out {out} and --resume {folder} name different folders; pass only --resume {folder}")
    if not (folder / RECIPE_FILE).exists():
        raise FileNotFoundError(f"--resume {folder}: no {RECIPE_FILE} there; pass a folder written by reprocls reproduce "
                                "(it holds recipe.yaml, reproduction.json and seeds/)")
    saved = yaml.safe_load((folder / RECIPE_FILE).read_text()) or {}
    differing = recipe_differences(saved, config)
    if differing:
        raise ConfigError(f"cannot resume {folder}: the recipe differs from the one it was started with ({'; '.join(differing)}). "
                          f"Undo these changes (the folder's recipe is {folder / RECIPE_FILE}), or start a new reproduction "
                          "without --resume")
    previous = json.loads((folder / SUMMARY_FILE).read_text()) if (folder / SUMMARY_FILE).exists() else {}
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
    copied.seed, copied.name, copied.output_dir = seed, f"{name}-seed{seed}", str(folder / SEEDS_DIR)
    return copied


def seed_runs(folder: Path, name: str, seed: int) -> list[Path]:
    """This seed's run folders, newest first (the trailing '-' keeps seed 1 from matching seed 10)."""
    runs = [p for p in (folder / SEEDS_DIR).glob(f"{name}-seed{seed}-*") if p.is_dir()]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def environment_summary(folder: Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The first seed's environment without the package list, and what differed between seeds (say, a seed resumed on
    another machine)."""
    environments = []
    for record in records:
        path = folder / record["run"] / "environment.json"
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
        dump(config, folder / RECIPE_FILE)
    planned = previous.get("seeds") or []
    count = seeds if seeds is not None else (len(planned) or DEFAULT_SEEDS)
    start = first_seed if first_seed is not None else (planned[0] if planned else 0)
    if count < 1:
        raise ConfigError(f"--seeds {count}: a reproduction needs at least one seed (three or more give a useful std)")
    plan = list(range(start, start + count))
    say(f"reproduction folder: {folder}  ({count} seed(s): {', '.join(map(str, plan))}; {split_note(config.data.split_seed)})")
    # The plan goes to disk before any training, so a --resume without flags continues it even if the first seed is cut.
    kept = [record for record in previous.get("runs", []) if record["seed"] in plan]
    atomic_write_json(folder / SUMMARY_FILE, build_summary(folder, name, config, plan, kept))

    records: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    try:
        for index, seed in enumerate(plan, 1):
            record = run_seed(config, name, seed, folder, progress=progress, echo=echo,
                              say=lambda text: say(f"[seed {seed}, {index}/{count}] {text}"))
            records.append(record)
            summary = build_summary(folder, name, config, plan, records)
            atomic_write_json(folder / SUMMARY_FILE, summary)
    except KeyboardInterrupt:
        say(f"\ninterrupted after {len(records)} of {count} seed(s); continue with: reprocls reproduce RECIPE --resume {folder}")
        raise
    write_reproduction_markdown(folder)
    report = write_reproduction_report(folder)
    say("\n" + format_grid(statistics_rows(summary["statistics"])))
    say(f"\n{summary['verdict']['text']}")
    say(f"\nreport: {report}")
    return summary


def run_seed(config: RunConfig, name: str, seed: int, folder: Path, *, progress: bool, echo: bool,
             say: Callable[[str], None]) -> dict[str, Any]:
    """Keep a finished run of this seed, continue a checkpointed one, or train it; returns its record."""
    recipe = seed_config(config, name, seed, folder)
    runs = seed_runs(folder, name, seed)
    finished = [run for run in runs if (run / "results.json").exists()]
    if finished:
        run_dir, how = finished[0], "kept"
        results = json.loads((run_dir / "results.json").read_text())
        say(f"already finished: {run_dir.name} (test top-1 {100 * results['test']['top1']:.2f} %), not retrained")
    else:
        checkpointed = next((run for run in runs if newest_valid(run / CHECKPOINTS) is not None), None)
        how = "resumed" if checkpointed is not None else "trained"
        say(f"continuing {checkpointed.name} from its last checkpoint" if checkpointed else "training")
        run_dir, results = train_recipe(recipe, progress=progress, echo=echo,
                                        resume=str(checkpointed) if checkpointed is not None else None)
    return {"seed": seed, "run": str(run_dir.relative_to(folder)), "how": how, "metrics": seed_metrics(results)}


def build_summary(folder: Path, name: str, config: RunConfig, plan: list[int], records: list[dict[str, Any]]) -> dict[str, Any]:
    """What reproduction.json holds: the plan before any seed finished (no statistics, no verdict), then after each."""
    stats = statistics(records)
    return {"name": name, "folder": str(folder), "recipe": RECIPE_FILE, "seeds": plan, "first_seed": plan[0],
            "split_seed": config.data.split_seed, "finished": len(records), "complete": len(records) == len(plan),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": records, "statistics": stats,
            "verdict": judge(stats["test_top1"]["values"], config.reference) if records else None,
            "reference": to_dict(config.reference) if config.reference is not None else None,
            "noise_rule": NOISE_RULE, "environment": environment_summary(folder, records)}


# ---------------------------------------------------------------------------------------------- reports


def load_summary(folder: str | Path) -> dict[str, Any]:
    """reproduction.json of a folder with at least one finished seed, since the reports need numbers to show."""
    path = Path(folder) / SUMMARY_FILE
    if not path.exists():
        raise FileNotFoundError(f"{folder} has no {SUMMARY_FILE}: pass a folder written by reprocls reproduce after at "
                                "least one seed finished")
    summary = json.loads(path.read_text())
    if not summary["finished"]:
        raise FileNotFoundError(f"{folder}: no seed has finished yet (planned: {summary['seeds']}); train them with "
                                f"reprocls reproduce RECIPE --resume {folder}")
    return summary


def split_note(split: int) -> str:
    """Why the std over seeds is training noise only: every seed run pins the same data split."""
    return f"every seed is evaluated on the same images (data.split_seed: {split})"


def progress_note(summary: dict[str, Any]) -> str:
    """'' for a complete reproduction, else how far it got and how to finish it."""
    if summary["complete"]:
        return ""
    return (f"incomplete: {summary['finished']} of {len(summary['seeds'])} seeds finished; finish it with "
            f"reprocls reproduce RECIPE --resume {summary['folder']}")


def write_reproduction_markdown(folder: str | Path) -> Path:
    """reproduction.md: the verdict, the statistics and the seeds, readable on any Git host."""
    folder = Path(folder)
    summary = load_summary(folder)
    verdict = summary["verdict"]
    lines = [f"# Reproduction of {summary['name']}", "", f"**{verdict['text']}**", "",
             f"{split_note(summary['split_seed']).capitalize()}.", ""]
    if progress_note(summary):
        lines += [f"_{progress_note(summary)}_", ""]
    lines += ["## Over seeds", "", markdown_table(statistics_rows(summary["statistics"])),
              "## Seeds", "", markdown_table(seed_rows(summary["runs"])),
              "## How the verdict is decided", "", rule_text(summary), "",
              f"Figures: [{REPORT_FILE}]({REPORT_FILE}). Recipe: [{RECIPE_FILE}]({RECIPE_FILE}).", ""]
    path = folder / MARKDOWN_FILE
    path.write_text("\n".join(lines))
    return path


def rule_text(summary: dict[str, Any]) -> str:
    """The verdict rule with this reproduction's numbers filled in."""
    verdict = summary["verdict"]
    reference = verdict["reference"]
    if reference is None:
        return "The recipe has no reference: block, so there is no number to judge against."
    threshold = reference["top1"] - reference["tolerance"]
    noise = (noise_formula(verdict["n"], verdict["std"]) if verdict["std"] is not None else "undefined with one seed")
    return (f"reproduced if mean >= reference - tolerance = {points(reference['top1'])} - "
            f"{points(reference['tolerance'])} = {points(threshold)} %; here the mean is {points(verdict['mean'])} %. "
            f"Otherwise within noise if reference - mean = {points(-verdict['gap'])} points <= {noise}; otherwise short. "
            f"{NOISE_RULE}")


def plot_seed_accuracy(summary: dict[str, Any]) -> Figure:
    """Each seed's test top-1 as a point, the mean with a ±std band, and the paper's number with its tolerance band."""
    runs, verdict = summary["runs"], summary["verdict"]
    seeds = [r["seed"] for r in runs]
    values = [100 * r["metrics"]["test_top1"] for r in runs]
    mean = 100 * verdict["mean"]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if verdict["std"] is not None:
        std = 100 * verdict["std"]
        ax.axhspan(mean - std, mean + std, color="#4a7bd0", alpha=0.15, label=f"mean ± std ({std:.2f})")
    ax.axhline(mean, color="#4a7bd0", label=f"mean {mean:.2f} %")
    reference = verdict["reference"]
    if reference is not None:
        top1, tolerance = 100 * reference["top1"], 100 * reference["tolerance"]
        ax.axhspan(top1 - tolerance, top1, color="#2e9d57", alpha=0.15, label=f"tolerance ({tolerance:.2f} points)")
        ax.axhline(top1, color="#2e9d57", linestyle="--", label=f"reported {top1:.2f} %")
    ax.plot(seeds, values, "o", color="#1d2330", markersize=7, label="seeds")
    ax.set_xticks(seeds)
    ax.set_xlabel("seed")
    ax.set_ylabel("test top-1 (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    return fig


def per_class_statistics(folder: Path, runs: list[dict[str, Any]]) -> list[tuple[str, float, float | None]]:
    """(class, mean, std or None) of test accuracy per class across seeds, in the dataset's class order."""
    per_seed = []
    for record in runs:
        path = folder / record["run"] / "results.json"
        if path.exists():
            per_seed.append(json.loads(path.read_text())["test"]["per_class"])
    if not per_seed:
        return []
    rows = []
    for name in per_seed[0]:
        values = np.array([seed[name] for seed in per_seed if name in seed], dtype=float)
        rows.append((name, float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else None))
    return rows


def plot_per_class(rows: list[tuple[str, float, float | None]]) -> Figure:
    """Per-class test accuracy: mean over seeds as bars, ±std as error bars."""
    names = [name for name, _, _ in rows]
    means = [100 * mean for _, mean, _ in rows]
    errors = [100 * std if std is not None else 0.0 for _, _, std in rows]
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.32 * len(rows) + 1)))
    ax.barh(range(len(rows)), means, xerr=errors, color="#4a7bd0", ecolor="#1d2330", capsize=3)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xlabel("test top-1 per class (%), mean ± std over seeds")
    ax.set_xlim(0, 100)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def write_reproduction_report(folder: str | Path) -> Path:
    """report.html, one self-contained file: verdict, statistics, seeds, curves, per-class accuracy, recipe, environment."""
    folder = Path(folder)
    summary = load_summary(folder)
    verdict, stats = summary["verdict"], summary["statistics"]
    top1 = stats["test_top1"]
    reference = verdict["reference"]
    headline = [("test top-1", format_spread("test_top1", top1)), ("seeds", f"{summary['finished']} of {len(summary['seeds'])}")]
    if top1["ci95"] is not None:
        headline.append(("95 % CI", f"{points(top1['ci95'][0])} – {points(top1['ci95'][1])} %"))
    if reference is not None:
        headline.append(("reported", f"{points(reference['top1'])} % ± {points(reference['tolerance'])}"))
        headline.append(("gap", f"{100 * verdict['gap']:+.2f} points"))
    intro = html.verdict(verdict["text"], verdict["tone"])
    if progress_note(summary):
        intro += html.verdict(progress_note(summary), "warn")
    intro += html.cards(headline) + html.paragraph(f"{split_note(summary['split_seed'])}, so the std over seeds is "
                                                   "training noise, not a different test sample per seed.")

    sections = [("Over seeds", html.table(statistics_rows(stats), numeric_columns=(1, 2, 3, 4, 5))),
                ("Seeds", html.table(seed_rows(summary["runs"]), numeric_columns=tuple(range(3, 3 + len(METRICS))))),
                ("Test top-1 per seed", html.figure(plot_seed_accuracy(summary), "each seed's test top-1; the mean with "
                                                    "a ±std band; the reported number with its tolerance band below it"))]
    histories = {f"seed {record['seed']}": read_history(folder / record["run"]) for record in summary["runs"]}
    if any("val_top1" in r for history in histories.values() for r in history):
        sections.append(("Validation curves", html.figure(plot_validation_runs(histories), "validation top-1 and loss "
                                                          "per epoch, one line per seed")))
    classes = per_class_statistics(folder, summary["runs"])
    if classes:
        rows = [["class", "mean", "std"]] + [[name, f"{100 * mean:.2f} %", "—" if std is None else f"{100 * std:.2f}"]
                                             for name, mean, std in classes]
        sections.append(("Per-class accuracy", html.figure(plot_per_class(classes), "test accuracy per class over seeds")
                         + html.table(rows, numeric_columns=(1, 2))))
    sections.append(("How the verdict is decided", f"<p>{html.escape(rule_text(summary))}</p>"))
    recipe = (folder / RECIPE_FILE).read_text() if (folder / RECIPE_FILE).exists() else "(recipe.yaml missing)"
    sections.append(("Recipe", html.code(recipe, collapsed=True, summary=f"{RECIPE_FILE}: the resolved recipe every seed trained")))
    environment = summary.get("environment") or {}
    env_rows = [["key", "value"]] + [[key, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
                                     for key, value in environment.items()]
    sections.append(("Environment", html.table(env_rows)))
    document = html.page(f"Reproduction: {summary['name']}", sections, intro=intro,
                         subtitle=f"{summary['finished']} seed(s), updated {summary['updated']} — {folder}")
    return html.write_page(folder / REPORT_FILE, document)
