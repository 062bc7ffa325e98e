"""`reprocls <command>`: a thin command-line layer over the library."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from reprocls.config import ConfigError, RunConfig, describe_keys, load_config, to_dict


def cmd_train(args: argparse.Namespace) -> int:
    from reprocls.experiments.run import train_recipe

    config = load_config(args.recipe, args.overrides)
    train_recipe(config, progress=not args.quiet)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from reprocls.experiments.report import format_table, percent
    from reprocls.experiments.run import evaluate_saved

    result = evaluate_saved(args.target, args.split, args.overrides, progress=not args.quiet)
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "confusion"}, indent=2))
        return 0
    rows = [("split", f"{args.split} ({result['samples']} images)"), ("top-1", percent(result["top1"])),
            ("top-5", percent(result["top5"])), ("loss", f"{result['loss']:.4f}")]
    recorded = result.get("recorded")
    if recorded:
        same = all(abs(result[k] - recorded[k]) < 1e-6 for k in ("top1", "top5"))
        rows.append(("results.json", f"top-1 {percent(recorded['top1'])}: {'reproduced exactly' if same else 'DIFFERS'}"))
    print(format_table(rows))
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from reprocls.data import load_dataset
    from reprocls.data.stats import channel_stats

    overrides = [f"data.name={args.dataset}", "data.val_fraction=0"] + ([f"data.root={args.root}"] if args.root else [])
    config = load_config(None, overrides)
    splits = load_dataset(config.data, config.seed)
    mean, std = channel_stats(splits.train, channels=splits.in_chans)
    print(f"{args.dataset}: {len(splits.train)} training images, {splits.in_chans} channel(s)")
    print(f"  measured  mean {[round(v, 4) for v in mean]}  std {[round(v, 4) for v in std]}")
    print(f"  constants mean {list(splits.mean)}  std {list(splits.std)}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.recipe:
        import yaml

        print(yaml.safe_dump(to_dict(load_config(args.recipe, args.overrides)), sort_keys=False), end="")
        return 0
    rows = describe_keys(RunConfig)
    width = max(len(k) for k, _, _ in rows)
    for key, default, help_text in rows:
        print(f"{key.ljust(width)}  {default:>14}  {help_text}" if default else f"{key.ljust(width)}  {'':>14}  {help_text}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from reprocls.models import MODELS, list_models

    for name in list_models(args.pattern):
        doc = (MODELS.get(name).__doc__ or "").strip().splitlines()[0]
        print(f"{name:<22} {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reprocls", description="Reproduce image-classification papers.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a recipe and write a run folder")
    train.add_argument("recipe", help="YAML recipe, e.g. configs/quickstart.yaml")
    train.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. optim.lr=0.05 schedule.epochs=10")
    train.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("eval", help="re-evaluate a run folder or a model.safetensors")
    evaluate.add_argument("target", help="run folder or weights file")
    evaluate.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.root=/elsewhere")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=cmd_eval)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    stats = data.add_parser("stats", help="per-channel mean/std of a dataset's training split")
    stats.add_argument("dataset", help="fashion_mnist, mnist, cifar10, cifar100 or image_folder")
    stats.add_argument("--root", help="data folder (required for image_folder)")
    stats.set_defaults(func=cmd_data_stats)

    config = sub.add_parser("config", help="list every recipe key, or print a recipe resolved")
    config.add_argument("recipe", nargs="?", help="recipe to resolve (omit to list all keys with their meaning)")
    config.add_argument("overrides", nargs="*")
    config.set_defaults(func=cmd_config)

    models = sub.add_parser("models", help="list registered models")
    models.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    models.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default", UserWarning)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"reprocls: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("reprocls: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
