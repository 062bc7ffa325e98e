"""`reprocls <command>`: a thin command-line layer over the library."""

from __future__ import annotations

import argparse
from pathlib import Path
import json
import os
import sys
import warnings

from reprocls.config import ConfigError, Recipe, RunConfig, describe_keys, load_config, load_recipe, to_dict
from reprocls.engine.checkpoint import CheckpointError


def read_recipe(args: argparse.Namespace) -> Recipe:
    """The command's recipe and overrides, read and validated once; every later step takes this object."""
    return load_recipe(args.recipe, args.overrides)


def doctor_first(args: argparse.Namespace, recipe: Recipe) -> None:
    """Print the doctor's findings before hours of training (train, reproduce, tune); rank 0 only under torchrun."""
    if args.no_doctor or os.environ.get("RANK", "0") != "0":
        return
    from reprocls.analysis.doctor import diagnose, format_findings

    try:
        findings = diagnose(recipe.config, explicit=set(recipe.explicit), world_size=int(os.environ.get("WORLD_SIZE", "1")))
    except ConfigError as error:  # training meets the same problem on every process and stops them all
        print(f"reproduction doctor: could not check this recipe: {error}\n")
        return
    if findings:
        print(format_findings(findings) + "\n")


def cmd_train(args: argparse.Namespace) -> int:
    from reprocls.experiments.run import train_recipe

    recipe = read_recipe(args)
    doctor_first(args, recipe)
    train_recipe(recipe.config, progress=not args.quiet, resume=args.resume)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from reprocls.analysis.doctor import diagnose, format_findings

    recipe = read_recipe(args)
    findings = diagnose(recipe.config, explicit=set(recipe.explicit), world_size=args.nproc)
    if args.json:
        print(json.dumps([finding.to_dict() for finding in findings], indent=2))
    else:
        print(format_findings(findings) if findings else f"{args.recipe}: no known reproduction pitfalls found")
    return 1 if any(finding.severity in ("error", "warning") for finding in findings) else 0


def cmd_tune(args: argparse.Namespace) -> int:
    from reprocls.experiments.tune.search import tune

    recipe = read_recipe(args)
    doctor_first(args, recipe)
    summary = tune(recipe, space=args.space, sampler=args.sampler, trials=args.trials,
                   workers=args.workers, pruner=args.pruner, storage=args.storage, study_name=args.study, out=args.out,
                   seed=args.seed, progress=not args.quiet)
    if summary["best"] is None:
        print("reprocls tune: no trial completed, so there is no best recipe; the trials' errors are in the table above "
              f"and in {summary['folder']}/report.html", file=sys.stderr)
        return 1
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from reprocls.experiments.reproduce import reproduce

    recipe = read_recipe(args)
    doctor_first(args, recipe)
    summary = reproduce(recipe.config, seeds=args.seeds, first_seed=args.first_seed, out=args.out, resume=args.resume,
                        progress=not args.quiet)
    return 0 if summary["verdict"]["status"] in ("reproduced", "within noise", "no reference") else 1


def cmd_compare(args: argparse.Namespace) -> int:
    from reprocls.reports.compare import compare_runs

    comparison = compare_runs(args.runs, include_expected=args.all_keys)
    print(json.dumps(comparison.to_dict(), indent=2) if args.json else comparison.format())
    if args.html:
        comparison.write_html(args.html)
        print(f"\nreport: {args.html}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from reprocls.experiments.rewrite import rewrite_report

    print(f"report: {rewrite_report(args.target)}")
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    from reprocls.experiments.compress_run import CompressPlan, compress_run, load_plan, parse_prune

    if args.plan:
        compress_run(args.target, load_plan(args.plan), out=Path(args.out) if args.out else None, progress=not args.quiet)
        return 0
    plan = CompressPlan(quantize=args.quantize, quantize_backend=args.quantize_backend, iterations=args.iterations,
                        finetune_epochs=args.finetune_epochs, finetune_lr_factor=args.finetune_lr_factor,
                        calibration_images=args.calibration_images, scope=args.scope, threads=args.threads,
                        batches=[int(b) for b in args.batches.split(",")])
    if args.prune:
        plan.prune, plan.amount = parse_prune(args.prune)
    compress_run(args.target, plan, out=Path(args.out) if args.out else None, progress=not args.quiet)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from reprocls.experiments.export_run import export_run

    export_run(args.target, args.format, out=Path(args.out) if args.out else None)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from reprocls.experiments.evaluate import evaluate_saved
    from reprocls.reports.tables import format_table, percent

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
    from reprocls.recipe import check_names

    overrides = [f"data.name={args.dataset}", "data.val_fraction=0"] + ([f"data.root={args.root}"] if args.root else [])
    config = load_config(None, overrides)
    check_names(config)
    splits = load_dataset(config.data, config.seed)
    mean, std = channel_stats(splits.train, channels=splits.in_chans)
    print(f"{args.dataset}: {len(splits.train)} training images, {splits.in_chans} channel(s)")
    print(f"  measured  mean {[round(v, 4) for v in mean]}  std {[round(v, 4) for v in std]}")
    print(f"  constants mean {list(splits.mean)}  std {list(splits.std)}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from reprocls.data.check import check_folder

    report = check_folder(args.path, splits_file=args.splits, workers=args.workers, show_progress=not args.quiet)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format(show=args.show))
    return 1 if report.errors else 0


def cmd_config(args: argparse.Namespace) -> int:
    if args.recipe:
        import yaml

        print(yaml.safe_dump(to_dict(load_config(args.recipe, args.overrides)), sort_keys=False), end="")
        return 0
    from reprocls.recipe import members

    rows = describe_keys(RunConfig, members=members)
    width = max(len(k) for k, _, _ in rows)
    for key, default, help_text in rows:
        print(f"{key.ljust(width)}  {default:>14}  {help_text}" if default else f"{key.ljust(width)}  {'':>14}  {help_text}")
    return 0


def parse_input_size(text: str | None) -> tuple[int, ...] | None:
    """'3x224x224' -> (3, 224, 224)."""
    if text is None:
        return None
    try:
        size = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) != 3 or min(size) <= 0:
        raise ConfigError(f"--input {text!r}: expected CxHxW, e.g. 3x224x224 or 1x28x28")
    return size


def cmd_models(args: argparse.Namespace) -> int:
    from reprocls.analysis.profile import model_table
    from reprocls.models import MODELS, list_models

    if not list_models(args.pattern):
        raise ConfigError(f"no registered model matches {args.pattern!r}; `reprocls models` lists them all")
    if args.names:
        print("\n".join(list_models(args.pattern)))
        return 0
    rows = model_table(args.pattern, parse_input_size(args.input))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<22} {'family':<13} {'params':>10} {'MACs':>10}  input     paper")
    for row in rows:
        doc = (MODELS.get(row["name"]).__doc__ or "").strip().splitlines()[0]
        size = "x".join(map(str, row["input_size"]))
        print(f"{row['name']:<22} {row['family']:<13} {row['params'] / 1e6:>8.3f} M {row['macs'] / 1e9:>8.3f} G  "
              f"{size:<9} {doc}")
    print("MACs are multiply-adds per image (what papers call FLOPs); FLOPs = 2 x MACs.")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from reprocls.analysis.profile import input_kwargs, profile_model
    from reprocls.models import create_model

    size = parse_input_size(args.input)
    kwargs = input_kwargs(args.model, size) if "/" not in args.model else {}
    model = create_model(args.model, **kwargs)
    report = profile_model(model, input_size=size, batch=args.batch, precision=args.precision, device=args.device,
                           iters=args.iters, train=not args.no_train, name=args.model)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0


def add_training_arguments(parser: argparse.ArgumentParser, recipe_help: str, overrides_help: str) -> None:
    """The recipe, its overrides, -q and --no-doctor: what every command that trains takes, worded per command."""
    parser.add_argument("recipe", help=recipe_help)
    parser.add_argument("overrides", nargs="*", help=overrides_help)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--no-doctor", action="store_true", help="skip the reproduction doctor's checks before training")


def build_parser() -> argparse.ArgumentParser:
    from reprocls.compress.formats import EXPORT_FORMATS
    from reprocls.experiments.tune.strategies import PRUNERS, SAMPLERS

    parser = argparse.ArgumentParser(prog="reprocls", description="Reproduce image-classification papers.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a recipe and write a run folder")
    add_training_arguments(train, "YAML recipe, e.g. configs/quickstart.yaml",
                           "dotted key=value overrides, e.g. optim.lr=0.05 schedule.epochs=10")
    train.add_argument("--resume", metavar="auto|PATH", help="continue the newest intact checkpoint of this recipe's latest "
                       "run (auto; starts fresh when there is none), or of a given run folder or checkpoints/step-N folder")
    train.set_defaults(func=cmd_train)

    doctor = sub.add_parser("doctor", help="check a recipe for the classic reasons a reproduction falls short (exit 1 on findings)")
    doctor.add_argument("recipe", help="YAML recipe")
    doctor.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    doctor.add_argument("--nproc", type=int, default=1, help="processes (GPUs) the recipe will be trained on")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(func=cmd_doctor)

    tune = sub.add_parser("tune", help="hyper-parameter search over recipe keys with Optuna")
    add_training_arguments(tune, "the base recipe every trial starts from", "dotted key=value overrides applied to every trial")
    tune.add_argument("--space", required=True, help="search space YAML: recipe key -> distribution or list of choices")
    tune.add_argument("--sampler", choices=SAMPLERS.names(), default="tpe", help="how the next point is chosen")
    tune.add_argument("--trials", type=int, help="trials in total across all workers (grid: default the whole grid)")
    tune.add_argument("--workers", type=int, default=1, help="trials run in parallel on this machine")
    tune.add_argument("--pruner", choices=PRUNERS.names(), default="median",
                      help="stop poor trials early from their per-epoch validation top-1")
    tune.add_argument("--storage", help="database URL shared by several machines (default: SQLite in the study folder)")
    tune.add_argument("--study", help="study name (default: the recipe's name)")
    tune.add_argument("--out", help="study folder (default: <output_dir>/<study>-study)")
    tune.add_argument("--seed", type=int, default=0, help="sampler seed")
    tune.set_defaults(func=cmd_tune)

    reproduce = sub.add_parser("reproduce", help="train a recipe with several seeds; mean +- std and a verdict")
    add_training_arguments(reproduce, "YAML recipe with a reference: block", "dotted key=value overrides")
    reproduce.add_argument("--seeds", type=int, help="how many seeds (default 3; with --resume, the interrupted plan)")
    reproduce.add_argument("--first-seed", type=int, help="seeds are first-seed, first-seed + 1, ... (default 0; with --resume, the interrupted plan)")
    reproduce.add_argument("--out", help="reproduction folder (default: <output_dir>/<name>-reproduce-<timestamp>)")
    reproduce.add_argument("--resume", metavar="FOLDER", help="finish an interrupted reproduction folder")
    reproduce.set_defaults(func=cmd_reproduce)

    compare = sub.add_parser("compare", help="runs side by side: metrics, config and environment differences")
    compare.add_argument("runs", nargs="+", help="run folders")
    compare.add_argument("--json", action="store_true")
    compare.add_argument("--all-keys", action="store_true", help="also compare name and output_dir, which differ by design")
    compare.add_argument("--html", help="also write the comparison as a single-file HTML page")
    compare.set_defaults(func=cmd_compare)

    report = sub.add_parser("report", help="(re)write the single-file HTML report of a run, study or reproduction folder")
    report.add_argument("target", help="run, study or reproduction folder")
    report.set_defaults(func=cmd_report)

    compress = sub.add_parser("compress", help="prune and/or quantize a trained run; compare accuracy, size and latency")
    compress.add_argument("target", help="run folder or its model.safetensors")
    compress.add_argument("--plan", help="a compression recipe (YAML with the keys below), e.g. "
                          "configs/compress/resnet20_structured_int8.yaml; replaces the other options")
    compress.add_argument("--prune", metavar="METHOD:AMOUNT", help="unstructured:0.5 (share of weights zeroed) or "
                          "structured:0.5 (share of channels removed)")
    compress.add_argument("--scope", choices=("global", "layer"), default="global", help="unstructured: one threshold "
                          "for the whole model or the same share per layer")
    compress.add_argument("--iterations", type=int, default=1, help="prune -> fine-tune rounds that reach the amount")
    compress.add_argument("--quantize", choices=("none", "dynamic", "static", "qat"), default="none",
                          help="INT8: dynamic (Linear layers), static (calibrated post-training) or qat")
    compress.add_argument("--quantize-backend", choices=("pt2e", "fx"), default="pt2e", help="static INT8 path")
    compress.add_argument("--finetune-epochs", type=int, default=0, help="epochs of fine-tuning per pruning round (QAT epochs)")
    compress.add_argument("--finetune-lr-factor", type=float, default=0.1, help="fine-tuning lr as a share of the recipe's")
    compress.add_argument("--calibration-images", type=int, default=512, help="training images for static INT8 calibration")
    compress.add_argument("--batches", default="1,64", help="batch sizes to time, comma-separated")
    compress.add_argument("--threads", type=int, help="torch CPU threads for the measurements")
    compress.add_argument("--out", help="output folder (default: RUN/compress-<timestamp>)")
    compress.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    compress.set_defaults(func=cmd_compress)

    export = sub.add_parser("export", help="export a trained run for deployment, checked against the eager model")
    export.add_argument("target", help="run folder or its model.safetensors")
    export.add_argument("--format", nargs="+", choices=EXPORT_FORMATS.names(), default=["onnx"])
    export.add_argument("--out", help="output folder (default: RUN/export)")
    export.set_defaults(func=cmd_export)

    evaluate = sub.add_parser("eval", help="re-evaluate a run folder or a model.safetensors")
    evaluate.add_argument("target", help="run folder or weights file")
    evaluate.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.root=/elsewhere")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=cmd_eval)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    stats = data.add_parser("stats", help="per-channel mean/std of a dataset's training split")
    stats.add_argument("dataset", help="a registered dataset (`reprocls config` lists them beside data.name)")
    stats.add_argument("--root", help="data folder (required for image_folder)")
    stats.set_defaults(func=cmd_data_stats)
    check = data.add_parser("check", help="find files in an image folder that would stop or skew training (exit 1 on errors)")
    check.add_argument("path", help="image folder: PATH/<class>/<image files>")
    check.add_argument("--splits", help="a run's splits.json: report duplicate images that fall into different splits")
    check.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding threads")
    check.add_argument("--show", type=int, default=10, help="files listed per problem (--json lists all)")
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd_data_check)

    config = sub.add_parser("config", help="list every recipe key, or print a recipe resolved")
    config.add_argument("recipe", nargs="?", help="recipe to resolve (omit to list all keys with their meaning)")
    config.add_argument("overrides", nargs="*")
    config.set_defaults(func=cmd_config)

    models = sub.add_parser("models", help="list registered models with params and MACs")
    models.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    models.add_argument("--input", help="count MACs at CxHxW instead of each model's default size")
    models.add_argument("--names", action="store_true", help="names only (fast)")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd_models)

    profile = sub.add_parser("profile", help="params, MACs/FLOPs, latency, training throughput and memory of a model")
    profile.add_argument("model", help="registered name, or timm/<name>, torchvision/<name>")
    profile.add_argument("--input", help="CxHxW of one image, e.g. 3x224x224 (default: the model's own)")
    profile.add_argument("--batch", type=int, default=1)
    profile.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    profile.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    profile.add_argument("--iters", type=int, default=10, help="timed iterations")
    profile.add_argument("--no-train", action="store_true", help="skip the training-step measurement")
    profile.add_argument("--json", action="store_true")
    profile.set_defaults(func=cmd_profile)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Overrides may also follow options (`train R.yaml -q optim.lr=0.1`), which argparse alone would refuse."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [item for item in extra if item.startswith("-") or "=" not in item or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # epoch lines reach a log file (nohup, SLURM) as they happen
    warnings.simplefilter("default", UserWarning)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"reprocls: error: {error}", file=sys.stderr)
        return 2
    except (CheckpointError, FloatingPointError) as error:
        print(f"reprocls: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("reprocls: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
