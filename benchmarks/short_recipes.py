"""Run every family's Fashion-MNIST recipe at a short schedule and print a markdown table of the results.

A smoke-level accuracy per family on a budget that fits a 2-core CPU, not a reproduction: each recipe is cut
to N class-balanced training images, E epochs and no validation split. The untouched 10k test set is always used.

    .venv/bin/python benchmarks/short_recipes.py [--limit-train 5000] [--epochs 3] [RECIPE ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from reprocls.config import load_config
from reprocls.experiments.run import train_recipe

FAMILY_RECIPES = ["vgg11_bn", "wrn_16_8", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "vit_ti_4", "swin_t_2"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="*", default=[f"configs/fashion_mnist/{name}.yaml" for name in FAMILY_RECIPES])
    parser.add_argument("--limit-train", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=None, help="override the recipes' batch (more, smaller steps)")
    parser.add_argument("--output-dir", default="runs/short")
    args = parser.parse_args()
    rows = []
    for recipe in args.recipes:
        overrides = [f"data.limit_train={args.limit_train}", f"schedule.epochs={args.epochs}", "data.val_fraction=0",
                     f"output_dir={args.output_dir}"] + ([f"data.batch_size={args.batch_size}"] if args.batch_size else [])
        config = load_config(recipe, overrides)
        start = time.perf_counter()
        run_dir, results = train_recipe(config, progress=False, echo=False)
        rows.append((Path(recipe).stem, results, time.perf_counter() - start, run_dir))
        print(f"{Path(recipe).stem}: test top-1 {100 * results['test']['top1']:.2f} % in {rows[-1][2]:.0f} s", flush=True)
    batch = f", batch {args.batch_size}" if args.batch_size else ""
    print(f"\n{args.limit_train} training images, {args.epochs} epochs{batch}, full 10k test set\n")
    print("| recipe | params | test top-1 | train img/s | wall time | table reference |")
    print("|---|---|---|---|---|---|")
    for name, results, seconds, _ in rows:
        reference = results.get("reference") or {}
        ref_text = f"{100 * reference['top1']:.1f} % ({reference['source'].split(', ')[-1]})" if reference else "—"
        print(f"| {name} | {results['params'] / 1e6:.2f} M | {100 * results['test']['top1']:.2f} % | "
              f"{results['images_per_s']:,.0f} | {seconds:.0f} s | {ref_text} |")


if __name__ == "__main__":
    main()
