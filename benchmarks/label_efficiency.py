"""Label efficiency of a self-supervised backbone: a supervised recipe trained on 1 %, 10 % and 100 % of the labelled
training images, from scratch and from a `reprocls pretrain` run's backbone, with the same seeds and the same
labelled subset for both (data.limit_train draws a stratified subset from the seed), scored on the whole test split.

    .venv/bin/python benchmarks/label_efficiency.py --pretrained runs/simclr_resnet20-<stamp> \\
        [--fractions 0.01 0.1 1.0] [--seeds 0 1 2] [--recipe fashion_mnist/resnet20] [--epochs 30] [--batch 64]

Writes label_efficiency.json and label_efficiency.png to --out and prints mean +- std per fraction and the gain.
Every run uses the recipe as it is (lr scaled to --batch by its own rule); only the starting weights differ.
Each finished run is written to the JSON at once, and a rerun into the same --out with the same recipe, backbone and
overrides skips the runs already there: a killed grid loses only the run in progress, and grids of different seeds
per fraction (three at 1 %, one at 100 %) merge into one table and one plot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from reprocls.config import load_config
from reprocls.experiments.run import train_recipe
from reprocls.files import atomic_write_json

STARTS = ("scratch", "pretrained")


def labelled_images(fraction: float, total: int) -> int:
    return max(10, round(fraction * total))


def earlier_runs(path: Path, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Records of a previous grid in `path` made with the same settings; none when the settings differ."""
    if not path.exists():
        return []
    saved = json.loads(path.read_text())
    if any(saved.get(key) != value for key, value in settings.items()):
        raise SystemExit(f"{path} holds runs of other settings ({ {k: saved.get(k) for k in settings} }); "
                         "pass another --out or remove it")
    return list(saved["runs"])


def save(path: Path, settings: dict[str, Any], records: list[dict[str, Any]]) -> None:
    """Write the grid so far atomically, so a kill mid-write keeps the previous version."""
    atomic_write_json(path, {**settings, "rows": summarise(records), "runs": records})


def run_grid(recipe: str, pretrained: Path, fractions: list[float], seeds: list[int], *, out: Path,
             overrides: list[str], of: int) -> list[dict[str, Any]]:
    """One training run per (fraction, start, seed), `fraction` x `of` labelled images; returns all records so far."""
    path = out / "label_efficiency.json"
    settings = {"recipe": recipe, "pretrained": str(pretrained), "overrides": overrides}
    records = earlier_runs(path, settings)
    done = {(r["fraction"], r["start"], r["seed"]) for r in records}
    for fraction in fractions:
        for seed in seeds:
            for start in STARTS:
                if (fraction, start, seed) in done:
                    print(f"{fraction:>6.0%} labels  {start:<10}  seed {seed}  already in {path}", flush=True)
                    continue
                extra = [f"model.weights={pretrained}"] if start == "pretrained" else []
                limit = [] if fraction >= 1 else [f"data.limit_train={labelled_images(fraction, of)}"]
                config = load_config(recipe, [*overrides, *limit, *extra, f"seed={seed}", f"output_dir={out / 'runs'}",
                                              f"name=label{fraction:g}-{start}-seed{seed}"])
                started = time.perf_counter()
                _, results = train_recipe(config, echo=False, progress=False)
                record = {"fraction": fraction, "start": start, "seed": seed, "test_top1": results["test"]["top1"],
                          "train_images": config.data.limit_train, "seconds": time.perf_counter() - started}
                records.append(record)
                save(path, settings, records)
                print(f"{fraction:>6.0%} labels  {start:<10}  seed {seed}  test top-1 {100 * record['test_top1']:.2f} %"
                      f"  ({record['seconds']:.0f} s)", flush=True)
    return records


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation of test top-1 per (fraction, start), and the gain of the pretrained backbone."""
    rows = []
    for fraction in sorted({r["fraction"] for r in records}):
        row: dict[str, Any] = {"fraction": fraction}
        for start in STARTS:
            scores = [r["test_top1"] for r in records if r["fraction"] == fraction and r["start"] == start]
            if not scores:
                break
            row[start] = {"mean": statistics.mean(scores), "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                          "seeds": len(scores)}
        else:
            row["gain_points"] = 100 * (row["pretrained"]["mean"] - row["scratch"]["mean"])
            rows.append(row)
    return rows


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    fractions = [100 * row["fraction"] for row in rows]
    for start, marker in zip(STARTS, "os"):
        ax.errorbar(fractions, [100 * row[start]["mean"] for row in rows], yerr=[100 * row[start]["std"] for row in rows],
                    marker=marker, capsize=3, label="from scratch" if start == "scratch" else "from the SSL backbone")
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:g} %" for f in fractions])
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", required=True, help="a finished `reprocls pretrain` run folder")
    parser.add_argument("--recipe", default="fashion_mnist/resnet20")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--of", type=int, default=60_000, help="the count a fraction is of (Fashion-MNIST's 60,000 "
                        "training images: 1 %% is 600)")
    parser.add_argument("--out", default="/tmp/reprocls-label-efficiency")
    parser.add_argument("overrides", nargs="*", help="more key=value overrides for every run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [f"schedule.epochs={args.epochs}", f"data.batch_size={args.batch}", *args.overrides]
    records = run_grid(args.recipe, Path(args.pretrained), args.fractions, args.seeds, out=out, overrides=overrides, of=args.of)
    rows = summarise(records)
    seeds = ", ".join(f"{100 * row['fraction']:g} %: {row['scratch']['seeds']}" for row in rows)
    plot(rows, out / "label_efficiency.png", f"{args.recipe}, {args.epochs} epochs; seeds per point {seeds}")
    for row in rows:
        s, p = row["scratch"], row["pretrained"]
        print(f"{row['fraction']:>6.0%} labels: scratch {100 * s['mean']:.2f} +- {100 * s['std']:.2f} % "
              f"({s['seeds']} seeds), pretrained {100 * p['mean']:.2f} +- {100 * p['std']:.2f} % ({p['seeds']} seeds), "
              f"gain {row['gain_points']:+.2f} points")
    print(f"wrote {out / 'label_efficiency.json'} and {out / 'label_efficiency.png'}")


if __name__ == "__main__":
    main()
