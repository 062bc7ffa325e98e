"""The argument parser of `reprocls`: every command, its arguments and their help."""

from __future__ import annotations

import argparse
import os

from reprocls.cli import commands as cmd
from reprocls.engine.tta import TTA_MODES


def add_training_arguments(parser: argparse.ArgumentParser, recipe_help: str, overrides_help: str, *,
                           doctor: bool = True, resume: bool = False) -> None:
    """The recipe, its overrides, -q, --no-doctor and (for one run) --resume: what the commands that train take,
    worded per command."""
    parser.add_argument("recipe", help=recipe_help)
    parser.add_argument("overrides", nargs="*", help=overrides_help)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    if doctor:
        parser.add_argument("--no-doctor", action="store_true", help="skip the reproduction doctor's checks before training")
    if resume:
        parser.add_argument("--resume", metavar="auto|PATH", help="continue the newest intact checkpoint of this recipe's "
                            "latest run (auto; starts fresh when there is none), or of a given run folder or "
                            "checkpoints/step-N folder")


def build_parser() -> argparse.ArgumentParser:
    from reprocls import __version__
    from reprocls.analysis.proxies import PROXIES
    from reprocls.compress.formats import EXPORT_FORMATS
    from reprocls.experiments.tune.strategies import PRUNERS, SAMPLERS

    parser = argparse.ArgumentParser(prog="reprocls", description="Reproduce image-classification papers.")
    parser.add_argument("--version", action="version", version=f"reprocls {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a recipe and write a run folder")
    add_training_arguments(train, "YAML recipe, or a shipped recipe by name (quickstart, fashion_mnist/resnet20: "
                           "`reprocls recipes` lists them)",
                           "dotted key=value overrides, e.g. optim.lr=0.05 schedule.epochs=10", resume=True)
    train.set_defaults(func=cmd.cmd_train)

    pretrain = sub.add_parser("pretrain", help="self-supervised pretraining (SimCLR, MoCo v2, BYOL) of a recipe's "
                              "backbone; a run folder whose backbone fine-tunes with model.weights=RUN")
    add_training_arguments(pretrain, "YAML recipe with a pretrain: block (fashion_mnist/simclr_resnet20, ...)",
                           "dotted key=value overrides, e.g. pretrain.method=byol", doctor=False, resume=True)
    pretrain.set_defaults(func=cmd.cmd_pretrain)

    probe = sub.add_parser("probe", help="linear probe of a pretraining run's frozen backbone (weight decay chosen on "
                           "val, test scored once), beside a random-init backbone's")
    probe.add_argument("run", help="a finished `reprocls pretrain` run folder")
    probe.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.root=/elsewhere")
    probe.add_argument("--no-baseline", action="store_true", help="skip the random-init backbone's probe")
    probe.add_argument("--json", action="store_true", help="print probe.json's record")
    probe.set_defaults(func=cmd.cmd_probe)

    doctor = sub.add_parser("doctor", help="check a recipe for the classic reasons a reproduction falls short (exit 1 on findings)")
    doctor.add_argument("recipe", help="YAML recipe")
    doctor.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    doctor.add_argument("--nproc", type=int, default=1, help="processes (GPUs) the recipe will be trained on")
    doctor.add_argument("--json", action="store_true", help="print the findings as JSON")
    doctor.set_defaults(func=cmd.cmd_doctor)

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
    tune.set_defaults(func=cmd.cmd_tune)

    nas = sub.add_parser("nas", help="architecture search under a MACs (and latency) budget: a Pareto front of ready "
                         "recipes, the reference network trained alike, proxies checked against the parameter count")
    add_training_arguments(nas, "the recipe every candidate trains with (its model is replaced)",
                           "dotted key=value overrides applied to every candidate and to the front's recipes")
    nas.add_argument("--space", required=True, help="architecture space YAML (space: resnet_cifar | mobilenet, "
                     "optional knobs: narrowing), e.g. nas_resnet_cifar")
    nas.add_argument("--budget-macs", required=True, help="MACs per image a candidate may cost: 15M, 1.5e7, or 50%% "
                     "of the space's reference network; over-budget candidates never train")
    nas.add_argument("--budget-latency-ms", type=float, help="also a forward latency budget, measured on this machine")
    nas.add_argument("--latency-batch", type=int, default=1, help="batch size the latency budget is measured at")
    nas.add_argument("--trials", type=int, required=True, help="candidates to train in total (never-trained ones "
                     "do not count)")
    nas.add_argument("--proxy-epochs", type=int, help="epochs each candidate trains in the search (default: the "
                     "recipe's); the front's recipes keep the recipe's schedule")
    nas.add_argument("--proxy", action="append", default=[], metavar="KEY=VALUE", help="a recipe override for the "
                     "search's trainings only, e.g. --proxy data.limit_train=20000 (repeatable); not in the front's "
                     "recipes")
    nas.add_argument("--sampler", choices=[n for n in SAMPLERS.names() if n != "grid"], default="tpe",
                     help="how the next candidate is chosen")
    nas.add_argument("--pruner", choices=PRUNERS.names(), default="hyperband", help="how poor candidates stop early")
    nas.add_argument("--prefilter", choices=[name for name in PROXIES.names() if name != "params"],
                     help="skip candidates this zero-cost proxy ranks low, only while it beats the parameter count's "
                     "rank correlation on the trained ones")
    nas.add_argument("--workers", type=int, default=1, help="candidates trained in parallel on this machine")
    nas.add_argument("--storage", help="database URL shared by several machines (default: SQLite in the study folder)")
    nas.add_argument("--study", help="study name (default: <recipe name>-nas)")
    nas.add_argument("--out", help="study folder (default: <output_dir>/<study>-study)")
    nas.add_argument("--seed", type=int, default=0, help="sampler seed")
    nas.set_defaults(func=cmd.cmd_nas)

    reproduce = sub.add_parser("reproduce", help="train a recipe with several seeds; mean +- std and a verdict")
    add_training_arguments(reproduce, "YAML recipe with a reference: block", "dotted key=value overrides")
    reproduce.add_argument("--seeds", type=int, help="how many seeds (default 3; with --resume, the interrupted plan)")
    reproduce.add_argument("--first-seed", type=int, help="seeds are first-seed, first-seed + 1, ... (default 0; with --resume, the interrupted plan)")
    reproduce.add_argument("--out", help="reproduction folder (default: <output_dir>/<name>-reproduce-<timestamp>)")
    reproduce.add_argument("--resume", metavar="FOLDER", help="finish an interrupted reproduction folder")
    reproduce.set_defaults(func=cmd.cmd_reproduce)

    compare = sub.add_parser("compare", help="runs side by side: metrics, config and environment differences")
    compare.add_argument("runs", nargs="+", help="run folders")
    compare.add_argument("--json", action="store_true")
    compare.add_argument("--all-keys", action="store_true", help="also compare name and output_dir, which differ by design")
    compare.add_argument("--html", help="also write the comparison as a single-file HTML page")
    compare.set_defaults(func=cmd.cmd_compare)

    report = sub.add_parser("report", help="(re)write the single-file HTML report of a run, study or reproduction folder")
    report.add_argument("target", help="run, study or reproduction folder")
    report.set_defaults(func=cmd.cmd_report)

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
    compress.set_defaults(func=cmd.cmd_compress)

    export = sub.add_parser("export", help="export a trained run for deployment, checked against the eager model")
    export.add_argument("target", help="run folder or its model.safetensors")
    export.add_argument("--format", nargs="+", choices=EXPORT_FORMATS.names(), default=["onnx"])
    export.add_argument("--out", help="output folder (default: RUN/export)")
    export.set_defaults(func=cmd.cmd_export)

    evaluate = sub.add_parser("eval", help="re-evaluate a run folder or a model.safetensors")
    evaluate.add_argument("target", help="run folder or weights file")
    evaluate.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.root=/elsewhere")
    evaluate.add_argument("--split", choices=("test", "val", "train"), default="test")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(func=cmd.cmd_eval)

    predict = sub.add_parser("predict", help="classify new images with a trained run (files, folders, glob patterns)")
    predict.add_argument("target", help="run folder, its model.safetensors, or exported safetensors")
    predict.add_argument("paths", nargs="+", help="image files, folders (a folder of class folders also gives "
                         "accuracy) or quoted glob patterns such as 'scans/**/*.png'")
    predict.add_argument("--top-k", type=int, default=1, help="classes listed per image")
    predict.add_argument("--batch", type=int, default=64, help="images per forward pass")
    predict.add_argument("--workers", type=int, default=0, help="DataLoader processes decoding images")
    predict.add_argument("--tta", nargs="?", const="flip", default="none", choices=TTA_MODES,
                         help="test-time augmentation: --tta (flip: the image and its mirror) or --tta flip_translate")
    predict.add_argument("--json", action="store_true", help="print the predictions as JSON (format in the README)")
    predict.add_argument("--csv", metavar="FILE", help="also write one row per image to FILE")
    predict.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=cmd.cmd_predict)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    stats = data.add_parser("stats", help="per-channel mean/std of a dataset's training split")
    stats.add_argument("dataset", help="a registered dataset (`reprocls config` lists them beside data.name), or the "
                       "path of an image folder (every image of it is measured)")
    stats.add_argument("--root", help="where a named dataset lives")
    stats.add_argument("--channels", type=int, choices=(1, 3), help="measure as grey (1) or RGB (3) images")
    stats.set_defaults(func=cmd.cmd_data_stats)
    shard = data.add_parser("shard", help="write a dataset and its splits as litdata shards, for data.name=shards")
    shard.add_argument("source", help="a registered dataset (fashion_mnist, cifar10, ...) or the path of an image folder")
    shard.add_argument("out", help="an empty or new folder for the shards (copy it to s3://, gs://, ... to stream it)")
    shard.add_argument("overrides", nargs="*", help="data.* and seed keys deciding the splits, e.g. data.split=[0.8,0.1,0.1] "
                       "seed=1 data.on_bad_image=skip data.root=/data")
    shard.add_argument("--chunk-bytes", default="64MB", help="target size of one chunk file (default 64MB)")
    shard.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    shard.set_defaults(func=cmd.cmd_data_shard)
    check = data.add_parser("check", help="find files in an image folder, or samples in shards, that would stop or "
                            "skew training (exit 1 on errors)")
    check.add_argument("path", help="image folder (PATH/<class>/<image files>) or a folder of shards")
    check.add_argument("--splits", help="a run's splits.json: report duplicate images that fall into different splits")
    check.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding threads")
    check.add_argument("--show", type=int, default=10, help="files listed per problem (--json lists all)")
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    check.set_defaults(func=cmd.cmd_data_check)

    recipes = sub.add_parser("recipes", help="list the recipes, compression plans and search spaces shipped with reprocls")
    recipes.set_defaults(func=cmd.cmd_recipes)

    config = sub.add_parser("config", help="list every recipe key, or print a recipe resolved")
    config.add_argument("recipe", nargs="?", help="recipe to resolve (omit to list all keys with their meaning)")
    config.add_argument("overrides", nargs="*")
    config.set_defaults(func=cmd.cmd_config)

    models = sub.add_parser("models", help="list registered models with params and MACs")
    models.add_argument("pattern", nargs="?", help="shell-style filter, e.g. 'resnet*'")
    models.add_argument("--input", help="count MACs at CxHxW instead of each model's default size")
    models.add_argument("--names", action="store_true", help="names only (fast)")
    models.add_argument("--json", action="store_true")
    models.set_defaults(func=cmd.cmd_models)

    profile = sub.add_parser("profile", help="params, MACs/FLOPs, latency, training throughput and memory of a model")
    profile.add_argument("model", help="registered name, or timm/<name>, torchvision/<name>")
    profile.add_argument("--input", help="CxHxW of one image, e.g. 3x224x224 (default: the model's own)")
    profile.add_argument("--batch", type=int, default=1)
    profile.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    profile.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    profile.add_argument("--iters", type=int, default=10, help="timed iterations")
    profile.add_argument("--no-train", action="store_true", help="skip the training-step measurement")
    profile.add_argument("--json", action="store_true")
    profile.set_defaults(func=cmd.cmd_profile)
    return parser
