"""The commands behind `reprocls <command>`: each reads its arguments, calls one library function, prints."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from reprocls.config import ConfigError, Recipe, RunConfig, describe_keys, load_config, load_recipe, to_dict


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


def cmd_pretrain(args: argparse.Namespace) -> int:
    from reprocls.experiments.pretrain import pretrain_recipe

    pretrain_recipe(read_recipe(args).config, progress=not args.quiet, resume=args.resume)
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    from reprocls.experiments.probe import probe_run

    record = probe_run(args.run, args.overrides, random_init=not args.no_baseline,
                       echo=(lambda *a, **k: None) if args.json else print)
    if args.json:
        print(json.dumps(record, indent=2))
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


def cmd_nas(args: argparse.Namespace) -> int:
    from reprocls.experiments.tune.nas import nas

    recipe = read_recipe(args)  # the doctor runs inside, on the search's training with the space's reference network
    summary = nas(recipe, space=args.space, budget_macs=args.budget_macs, trials=args.trials,
                  budget_latency_ms=args.budget_latency_ms, latency_batch=args.latency_batch,
                  proxy_epochs=args.proxy_epochs, proxy=args.proxy, sampler=args.sampler, pruner=args.pruner,
                  workers=args.workers,
                  storage=args.storage, study_name=args.study, out=args.out, seed=args.seed, prefilter=args.prefilter,
                  progress=not args.quiet, doctor=not args.no_doctor)
    return 0 if summary["front"] else 1


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
    split = (f"new data: all {result['samples']} images of {result['new_data']['root']} (not compared with the run's "
             "results.json)" if "new_data" in result else f"{args.split} ({result['samples']} images)")
    rows = [("data", split), ("top-1", percent(result["top1"])),
            ("top-5", percent(result["top5"])), ("loss", f"{result['loss']:.4f}"),
            ("macro-F1", percent(result["macro_f1"])), ("balanced accuracy", percent(result["balanced_accuracy"])),
            ("test-time augmentation", f"{result['tta']} ({result['images_per_s']:,.0f} img/s)")]
    recorded = result.get("recorded")
    if recorded:
        same = all(abs(result[k] - recorded[k]) < 1e-6 for k in ("top1", "top5"))
        rows.append(("results.json", f"top-1 {percent(recorded['top1'])}: {'reproduced exactly' if same else 'DIFFERS'}"))
    print(format_table(rows))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from reprocls.experiments.predict import load, predict_paths, write_csv

    predictor = load(args.target)
    summary = predict_paths(predictor, args.paths, top_k=args.top_k, batch_size=args.batch, workers=args.workers,
                            tta=args.tta, progress=not args.quiet)
    predictions = summary["predictions"]
    if args.csv:
        write_csv(args.csv, predictions)
    if args.json:
        print(json.dumps({**{k: v for k, v in summary.items() if k != "predictions"},
                          "predictions": [p.to_dict() for p in predictions]}, indent=2))
        return 0
    width = min(max(len(p.path or "") for p in predictions), 70)
    for p in predictions:
        ranked = "  ".join(f"{c} {100 * v:.1f} %" for c, v in zip(p.classes, p.probabilities))
        label = f"  (folder: {p.label})" if p.label is not None else ""
        print(f"{(p.path or '')[-width:]:<{width}}  {ranked}{label}")
    if "accuracy" in summary:
        right = round(summary["accuracy"] * len(predictions))
        print(f"\naccuracy against the folder names: {100 * summary['accuracy']:.2f} % ({right} of {len(predictions)})")
    if args.csv:
        print(f"predictions: {args.csv}")
    return 0


def cmd_data_stats(args: argparse.Namespace) -> int:
    from reprocls.data import load_dataset
    from reprocls.data.stats import channel_stats
    from reprocls.recipe import check_names

    folder = Path(args.dataset).expanduser()
    if folder.is_dir() or "/" in args.dataset:  # a path: an image folder, every image of it counted
        overrides = ["data.name=image_folder", f"data.root={folder}", "data.split=[1.0, 0.0, 0.0]"]
    else:
        overrides = [f"data.name={args.dataset}", "data.val_fraction=0"] + ([f"data.root={args.root}"] if args.root else [])
    if args.channels:
        overrides.append(f"data.channels={args.channels}")
    config = load_config(None, overrides)
    check_names(config)
    splits = load_dataset(config.data, config.seed)
    mean, std = channel_stats(splits.train, channels=splits.in_chans)
    print(f"{args.dataset}: {len(splits.train)} training images, {splits.in_chans} channel(s)")
    print(f"  measured  mean {[round(v, 4) for v in mean]}  std {[round(v, 4) for v in std]}")
    print(f"  constants mean {list(splits.mean)}  std {list(splits.std)}")
    return 0


def cmd_data_shard(args: argparse.Namespace) -> int:
    from reprocls.data import load_dataset
    from reprocls.data.shards import write_shards
    from reprocls.progress import Progress
    from reprocls.recipe import check_names

    folder = Path(args.source).expanduser()
    chosen = ["data.name=image_folder", f"data.root={folder}"] if folder.is_dir() or "/" in args.source \
        else [f"data.name={args.source}"]
    config = load_config(None, chosen + list(args.overrides))
    check_names(config)
    splits = load_dataset(config.data, config.seed)
    bars: dict[str, Progress] = {}

    def progress(part: str, done: int, total: int) -> None:
        bar = bars.get(part) or bars.setdefault(part, Progress(total, f"shard {part}", enabled=not args.quiet))
        bar.update(1)
        if done == total:
            bar.close()

    manifest = write_shards(splits, Path(args.out), args.source, chunk_bytes=args.chunk_bytes, progress=progress)
    for part, info in manifest["splits"].items():
        print(f"{part}: {info['count']:,} images in {len(info['chunk_sizes'])} chunk(s)")
    print(f"shards of {args.source} in {args.out}; train from them with data.name=shards data.root={args.out}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from reprocls.data.check import check_folder
    from reprocls.data.shards import MANIFEST, check_shards, is_remote

    if is_remote(args.path) or (Path(args.path) / MANIFEST).is_file():
        bad = check_shards(args.path, workers=args.workers)
        if args.json:
            print(json.dumps({"undecodable": bad}, indent=2))
        else:
            print(f"{args.path}: {len(bad)} undecodable sample(s)" + "".join(f"\n  {b['split']} {b['index']} {b['key']}: "
                                                                       f"{b['error']}" for b in bad[:args.show]))
        return 1 if bad else 0
    report = check_folder(args.path, splits_file=args.splits, workers=args.workers, show_progress=not args.quiet)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format(show=args.show))
    return 1 if report.errors else 0


def cmd_recipes(args: argparse.Namespace) -> int:
    import yaml

    from reprocls.config import shipped_configs

    root = shipped_configs()
    print(f"recipes shipped with reprocls ({root}); train one by name, e.g. reprocls train quickstart")
    for path in sorted(root.rglob("*.yaml")):
        name = path.relative_to(root).with_suffix("").as_posix()
        if name.startswith(("compress/", "search/")):
            continue
        raw = yaml.safe_load(path.read_text()) or {}
        comment = next((line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")), "")
        model, data = (raw.get("model") or {}).get("name", "resnet20"), (raw.get("data") or {}).get("name", "fashion_mnist")
        print(f"  {name:<40} {model} on {data}" + (f": {comment}" if comment else ""))
    plans, searches = ([p.stem for p in sorted((root / folder).glob("*.yaml"))] for folder in ("compress", "search"))
    listings = (("compression plans (reprocls compress RUN --plan NAME)", plans),
                ("search spaces (reprocls tune RECIPE --space NAME)", [n for n in searches if not n.startswith("nas_")]),
                ("architecture spaces (reprocls nas RECIPE --space NAME)", [n for n in searches if n.startswith("nas_")]))
    for words, names in listings:
        print(f"{words}: {', '.join(names)}")
    return 0


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
    from reprocls.analysis.complexity import model_table
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
    from reprocls.analysis.complexity import input_kwargs
    from reprocls.analysis.profile import profile_model
    from reprocls.models import create_model

    size = parse_input_size(args.input)
    kwargs = input_kwargs(args.model, size) if "/" not in args.model else {}
    model = create_model(args.model, **kwargs)
    report = profile_model(model, input_size=size, batch=args.batch, precision=args.precision, device=args.device,
                           iters=args.iters, train=not args.no_train, name=args.model)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0
