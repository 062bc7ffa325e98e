"""The reproduction doctor: every check fires on a recipe with its problem, stays quiet without it, and names the fix."""

from __future__ import annotations

import inspect

import json
import re
from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2

from reprocls import create_model
from reprocls.cli import main
from reprocls.config import ConfigError, DataConfig, explicit_keys, load_config, read_recipe
from reprocls.data import DATASETS, DatasetSplits, make_loader
from reprocls.data.datasets import FileSplit, known_facts
from reprocls.data.folders import scan_image_folder
from reprocls.data.stats import channel_stats
from reprocls.analysis.doctor import CHECKS, Finding, diagnose, format_findings

REPO = Path(__file__).parent.parent
QUICKSTART = REPO / "configs/quickstart.yaml"
SHIPPED = [QUICKSTART, *sorted((REPO / "configs/fashion_mnist").glob("*.yaml"))]
SHORT_96PX = ["data.image_size=96", "data.limit_train=5000", "schedule.epochs=3", "data.batch_size=128"]  # 117 steps
IMAGENET = ["data.mean=[0.485, 0.456, 0.406]", "data.std=[0.229, 0.224, 0.225]"]


def doctor(overrides: list[str], *, path: Path | None = QUICKSTART, world_size: int = 1) -> list[Finding]:
    """The doctor's findings for a recipe plus overrides, with the explicit keys `reprocls doctor` would pass."""
    config = load_config(path, overrides)
    return diagnose(config, explicit=explicit_keys(read_recipe(path, overrides)), world_size=world_size)


def of(findings: list[Finding], check: str) -> list[Finding]:
    return [finding for finding in findings if finding.check == check]


# -------------------------------------------------------------------------- a problem recipe and a clean one

# (check, overrides with the problem, processes, expected key, overrides without it, processes)
CASES = [
    ("imagenet_stem", ["model.name=resnet18"], 1, "model.name", ["model.name=resnet18", "model.kwargs={stem: cifar}"], 1),
    ("imagenet_stem", ["model.name=vit_ti_16", "data.image_size=32"], 1, "model.name", ["model.name=vit_ti_4"], 1),
    ("imagenet_stem", ["model.name=mobilenet_v2"], 1, "model.name", ["model.name=mobilenet_v2", "data.image_size=96"], 1),
    ("normalization", ["data.channels=3", *IMAGENET], 1, "data.mean", ["data.channels=3"], 1),
    ("normalization", IMAGENET, 1, "data.mean", ["data.mean=[0.286]", "data.std=[0.353]"], 1),
    ("normalization", ["data.std=[0.6]"], 1, "data.std", ["data.std=[0.34]"], 1),
    ("lr_not_scaled", ["reference.batch_size=128", "optim.lr_reference_batch=null"], 1, "optim.lr_reference_batch",
     ["reference.batch_size=256", "optim.lr_reference_batch=null"], 1),
    ("lr_not_scaled", ["reference.batch_size=128"], 1, "optim.lr_reference_batch", ["reference.batch_size=256"], 1),
    ("lr_not_scaled", ["reference.batch_size=256", "optim.lr_reference_batch=null"], 2, "optim.lr_reference_batch",
     ["reference.batch_size=512", "optim.lr_reference_batch=null"], 2),
    ("tiny_bn_batch", ["data.batch_size=8"], 1, "data.batch_size", ["data.batch_size=8", "model.name=vit_ti_4"], 1),
    ("tiny_bn_batch", ["data.batch_size=64", "train.accum_steps=8"], 1, "data.batch_size",
     ["data.batch_size=64", "train.accum_steps=4"], 1),
    ("tiny_bn_batch", ["data.batch_size=8"], 4, "train.sync_batchnorm", ["data.batch_size=8", "train.sync_batchnorm=true"], 4),
    ("slow_bn_statistics", ["model.name=mobilenet_v3_small", *SHORT_96PX], 1, "schedule.epochs",
     ["model.name=mobilenet_v3_small", "data.image_size=96"], 1),
    ("missing_seed", ["seed=null"], 1, "seed", ["seed=3"], 1),
    ("short_schedule", ["reference.epochs=30"], 1, "schedule.epochs", ["reference.epochs=6"], 1),
    ("norm_weight_decay", ["optim.decay_norm_and_bias=true", "reference.norm_weight_decay=false"], 1,
     "optim.decay_norm_and_bias", ["optim.decay_norm_and_bias=true", "reference.norm_weight_decay=true"], 1),
    ("norm_weight_decay", ["optim.decay_norm_and_bias=true"], 1, "optim.decay_norm_and_bias",
     ["optim.decay_norm_and_bias=true", "optim.weight_decay=0"], 1),
    ("upscale", ["data.image_size=112"], 1, "data.image_size", ["data.image_size=56"], 1),
]


def _without_seed(overrides: list[str]) -> list[str]:
    """'seed=null' stands for a recipe that does not mention seed: drop it and the recipe's own seed line."""
    return [o for o in overrides if o != "seed=null"]


@pytest.mark.parametrize("check, bad, bad_world, key, good, good_world", CASES,
                         ids=[f"{case[0]}-{i}" for i, case in enumerate(CASES)])
def test_check_fires_on_its_problem_and_names_the_fix(tmp_path: Path, check: str, bad: list[str], bad_world: int,
                                                      key: str, good: list[str], good_world: int) -> None:
    recipe = QUICKSTART
    if "seed=null" in bad:  # a copy of the quickstart recipe without its seed line
        recipe = tmp_path / "no_seed.yaml"
        recipe.write_text("".join(line for line in QUICKSTART.read_text().splitlines(keepends=True)
                                  if not line.startswith("seed:")))
    found = of(doctor(_without_seed(bad), path=recipe, world_size=bad_world), check)
    assert len(found) == 1, found
    assert found[0].key == key and found[0].severity in ("error", "warning")
    assert key in found[0].fix and found[0].message
    assert of(doctor(good, path=recipe, world_size=good_world), check) == []


def test_wrong_channel_count_is_an_error_the_fix_explains() -> None:
    (finding,) = of(doctor(IMAGENET), "normalization")
    assert finding.severity == "error" and "3 value(s)" in finding.message and "1 channel(s)" in finding.message
    assert "remove data.mean" in finding.fix
    with pytest.raises(ConfigError, match="data.mean/data.std"):  # the doctor is right: loading would fail
        from reprocls.data import load_dataset

        load_dataset(load_config(QUICKSTART, IMAGENET).data, 0)


def test_imagenet_constants_on_rgb_fashion_mnist_say_so() -> None:
    (finding,) = of(doctor(["data.channels=3", *IMAGENET]), "normalization")
    assert "ImageNet" in finding.message and "[0.286, 0.286, 0.286]" in finding.fix


def test_lr_fix_gives_the_rescaled_lr() -> None:
    (finding,) = of(doctor(["reference.batch_size=128", "optim.lr_reference_batch=null"]), "lr_not_scaled")
    assert "optim.lr_reference_batch: 128" in finding.fix and "becomes 0.4 at batch 256" in finding.fix
    (finding,) = of(doctor(["reference.batch_size=256", "optim.lr_reference_batch=null"], world_size=2), "lr_not_scaled")
    assert "effective batch 512 (2 process(es)" in finding.message and "becomes 0.4 at batch 512" in finding.fix


def test_tiny_bn_batch_counts_micro_batches_and_processes() -> None:
    (finding,) = of(doctor(["data.batch_size=64", "train.accum_steps=8"]), "tiny_bn_batch")
    assert "batch of 8 image(s)" in finding.message and "train.accum_steps" in finding.fix
    (finding,) = of(doctor(["data.batch_size=8"], world_size=4), "tiny_bn_batch")
    assert "32 images" in finding.fix and "CUDA" in finding.fix
    (finding,) = of(doctor(["data.batch_size=2"], world_size=4), "tiny_bn_batch")  # 8 even when synced: bigger batches
    assert finding.key == "data.batch_size"


def test_slow_bn_fix_is_long_enough_and_names_the_kwarg_where_the_model_takes_it() -> None:
    slow = ["model.name=efficientnet_b0", "model.kwargs={norm_momentum: 0.01}", *SHORT_96PX]
    (finding,) = of(doctor(slow), "slow_bn_statistics")
    assert "only 117" in finding.message and "schedule.epochs: 26 or more" in finding.fix
    assert "norm_momentum: 0.1" in finding.fix
    assert of(doctor(slow + ["schedule.epochs=26"]), "slow_bn_statistics") == []
    assert of(doctor(slow[:1] + SHORT_96PX), "slow_bn_statistics") == []  # torch's default momentum 0.1


def test_the_small_image_mobilenet_keeps_up_with_a_nas_proxy_where_the_reference_momentum_does_not() -> None:
    # a 4-epoch proxy on 20,000 images at batch 256: 312 BatchNorm updates; at momentum 0.01 the network scored chance
    proxy = ["model.name=mobilenet_v3_stages", "data.limit_train=20000", "data.batch_size=256", "schedule.epochs=4"]
    (finding,) = of(doctor([*proxy, "model.kwargs={norm_momentum: 0.01}"]), "slow_bn_statistics")
    assert "only 312" in finding.message and "norm_momentum: 0.1" in finding.fix
    assert of(doctor(proxy), "slow_bn_statistics") == []
    momenta = {name: {m.momentum for m in create_model(name, num_classes=10).modules() if isinstance(m, torch.nn.BatchNorm2d)}
               for name in ("mobilenet_v3_stages", "mobilenet_v3_small")}
    assert momenta == {"mobilenet_v3_stages": {0.1}, "mobilenet_v3_small": {0.01}}  # the zoo's keeps its reference's


def test_seed_check_is_silent_when_explicit_keys_are_unknown(tmp_path: Path) -> None:
    recipe = tmp_path / "no_seed.yaml"
    recipe.write_text("model: {name: resnet20}\n")
    assert of(diagnose(load_config(recipe), explicit=None), "missing_seed") == []
    assert of(diagnose(load_config(recipe), explicit={"model", "model.name"}), "missing_seed")[0].fix.startswith("seed: 0")


def test_norm_weight_decay_words_depend_on_what_the_paper_states() -> None:
    (stated,) = of(doctor(["optim.decay_norm_and_bias=true", "reference.norm_weight_decay=false"]), "norm_weight_decay")
    (unstated,) = of(doctor(["optim.decay_norm_and_bias=true"]), "norm_weight_decay")
    assert "the paper does not decay them" in stated.message
    assert "most papers" in unstated.message and "reference.norm_weight_decay: true" in unstated.message


# ---------------------------------------------------------------------------- data facts without loading data


def test_known_dataset_needs_no_data_on_disk(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    findings = doctor([f"data.root={empty}", "model.name=resnet18", *IMAGENET])
    assert {f.check for f in findings} == {"imagenet_stem", "normalization"}


def test_known_facts_match_the_real_dataset(fmnist_splits) -> None:
    facts = known_facts("fashion_mnist")
    assert (facts.image_size, facts.in_chans, facts.num_classes) == (fmnist_splits.image_size, fmnist_splits.in_chans,
                                                                     fmnist_splits.num_classes)
    assert facts.train_images == len(fmnist_splits.train) + len(fmnist_splits.val)
    assert (facts.mean, facts.std) == (fmnist_splits.mean, fmnist_splits.std)


def test_image_folder_is_checked_against_its_measured_constants(fmnist_folder: Path) -> None:
    base = ["data.name=image_folder", f"data.root={fmnist_folder}", "data.image_size=32", "data.preset=small"]
    findings = doctor(base)
    assert of(findings, "random_eval_augmentation") == []  # the file pipeline evaluates with Resize only
    (finding,) = of(findings, "normalization")  # ImageNet defaults on grey clothes
    assert finding.key == "data.mean" and "ImageNet's constants" in finding.message
    _, samples = scan_image_folder(fmnist_folder)
    mean, std = channel_stats(FileSplit([(str(fmnist_folder / path), label) for path, label in samples]))
    measured = re.search(r"data\.mean: (\[.*?\]), data\.std: (\[.*?\])", finding.fix)
    assert measured is not None
    assert json.loads(measured.group(1)) == pytest.approx(mean, abs=0.02)
    assert json.loads(measured.group(2)) == pytest.approx(std, abs=0.02)
    measured_keys = [f"data.mean={measured.group(1)}", f"data.std={measured.group(2)}"]
    assert of(doctor(base + measured_keys), "normalization") == []
    assert of(doctor(base + ["model.weights=imagenet.safetensors"]), "normalization") == []  # pretrained: ImageNet's


# ------------------------------------------------------------------------ random augmentation at evaluation


def _register(name: str, splits: DatasetSplits, eval_transform: v2.Transform) -> None:
    def load(data: DataConfig, seed: int) -> DatasetSplits:
        return DatasetSplits(name, splits.classes, 1, 28, splits.mean, splits.std, splits.train.subset(range(40)),
                             None, splits.test.subset(range(40)), eval_transform=eval_transform)

    DATASETS.register(load, name=name)


@pytest.fixture
def own_eval_datasets(fmnist_splits):
    """Two user-registered datasets of real images: one evaluates through a copied training transform."""
    normalise = [v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.286], [0.353])]
    _register("doctor_copied_train_eval", fmnist_splits,
              v2.Compose([v2.RandomCrop(28, padding=2), v2.RandomHorizontalFlip(), *normalise]))
    _register("doctor_fixed_eval", fmnist_splits, v2.Compose([v2.Resize(28, antialias=True), *normalise]))
    yield
    for name in ("doctor_copied_train_eval", "doctor_fixed_eval"):
        DATASETS._entries.pop(name)


def test_random_eval_transform_of_a_registered_dataset_is_found(own_eval_datasets) -> None:
    (finding,) = of(doctor(["data.name=doctor_copied_train_eval"]), "random_eval_augmentation")
    assert finding.severity == "error" and finding.key == "data.name" and "data.name" in finding.fix
    assert "RandomCrop, RandomHorizontalFlip" in finding.message and "different inputs" in finding.message
    assert of(doctor(["data.name=doctor_fixed_eval"]), "random_eval_augmentation") == []
    assert of(doctor([]), "random_eval_augmentation") == []
    assert of(doctor(["data.in_memory=no", "data.image_size=64", "data.preset=imagenet"]), "random_eval_augmentation") == []


def test_constants_a_dataset_with_own_transforms_never_applies_are_named_not_judged(own_eval_datasets) -> None:
    assert of(doctor(["data.name=doctor_fixed_eval"]), "normalization") == []
    (finding,) = of(doctor(["data.name=doctor_fixed_eval", "data.mean=[0.5]", "data.std=[0.5]"]), "normalization")
    assert finding.severity == "info" and "never applied" in finding.message and "remove data.mean" in finding.fix


def test_train_goes_on_when_the_doctor_cannot_check(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A recipe the doctor cannot read fails training with the same clear error (and exit 2), never a crash."""
    assert main(["train", str(QUICKSTART), "data.name=image_folder", f"output_dir={tmp_path}", "-q"]) == 2
    captured = capsys.readouterr()
    assert "reproduction doctor: could not check this recipe: data.root" in captured.out
    assert "data.root" in captured.err and not any(tmp_path.iterdir())


def test_loader_evaluates_through_a_datasets_own_transform(fmnist_splits) -> None:
    split = fmnist_splits.test.subset(range(4))
    flip = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.ToDtype(torch.float32, scale=True)])
    splits = DatasetSplits("own", fmnist_splits.classes, 1, 28, (0.0,), (1.0,), split, None, split, eval_transform=flip)
    loader = make_loader(split, splits, DataConfig(workers=0), train=False, device=torch.device("cpu"), seed=0,
                         channels_last=False)
    images, _ = next(iter(loader))
    assert torch.allclose(images, split.images.flip(-1).float() / 255)


# ------------------------------------------------------------------------------------- output and the CLI


def test_format_findings_lists_errors_first_with_key_and_fix() -> None:
    findings = [Finding("a_check", "warning", "seed", "no seed", "seed: 0"),
                Finding("b_check", "error", "data.mean", "wrong length", "remove data.mean")]
    text = format_findings(findings)
    assert text.splitlines()[0] == "reproduction doctor: 1 error, 1 warning"
    assert text.index("ERROR") < text.index("WARNING")
    assert "b_check  [data.mean]" in text and "fix: remove data.mean" in text and "fix: seed: 0" in text


# checks proven by a test of their own instead of a CASES row (a registered dataset with a random eval transform)
TESTED_ELSEWHERE = {"random_eval_augmentation": "test_random_eval_transform_of_a_registered_dataset_is_found",
                    "preprocessing_mismatch": "test_preprocessing_unlike_the_weights_is_named_key_by_key"}


def test_every_check_is_registered_and_proven_to_fire() -> None:
    from reprocls.analysis.doctor import checks

    defined = {name for name, function in inspect.getmembers(checks, inspect.isfunction)
               if function.__module__ == checks.__name__ and not name.startswith("_")
               and list(inspect.signature(function).parameters) == ["context"]}
    assert defined and defined == set(CHECKS.names())  # a check function that forgot @CHECKS.register fails here
    untested = set(CHECKS.names()) - {case[0] for case in CASES} - set(TESTED_ELSEWHERE)
    assert not untested, f"registered checks without a case in CASES: {sorted(untested)}"
    assert all(name in globals() for name in TESTED_ELSEWHERE.values())


@pytest.mark.parametrize("recipe", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_recipes_pass_the_doctor(recipe: Path) -> None:
    assert [f for f in doctor([], path=recipe) if f.severity != "info"] == []


def test_cli_exit_codes_and_json(capsys: pytest.CaptureFixture) -> None:
    assert main(["doctor", str(QUICKSTART)]) == 0
    assert "no known reproduction pitfalls" in capsys.readouterr().out
    assert main(["doctor", str(QUICKSTART), "model.name=resnet18", "data.batch_size=8", "--json"]) == 1
    findings = json.loads(capsys.readouterr().out)
    assert {(f["check"], f["key"]) for f in findings} == {("imagenet_stem", "model.name"), ("tiny_bn_batch", "data.batch_size")}
    assert all(set(f) == {"check", "severity", "key", "message", "fix"} for f in findings)
    assert main(["doctor", str(QUICKSTART), "data.batch_size=8", "--nproc", "4"]) == 1
    assert "train.sync_batchnorm: true" in capsys.readouterr().out


@pytest.mark.slow
def test_train_prints_findings_before_training(fmnist_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tiny = [f"data.root={fmnist_root}", f"output_dir={tmp_path}", "data.limit_train=512", "data.limit_eval=256",
            "schedule.epochs=2", "data.batch_size=64", "train.threads=1", "reference.epochs=30"]
    assert main(["train", str(QUICKSTART), *tiny, "-q"]) == 0
    out = capsys.readouterr().out
    assert "short_schedule  [schedule.epochs]" in out and "fix: schedule.epochs: 30" in out
    first_epoch = next(i for i, line in enumerate(out.splitlines()) if line.startswith("epoch"))
    assert out.splitlines().index("reproduction doctor: 1 warning") < first_epoch
    assert main(["train", str(QUICKSTART), *tiny, "-q", "--no-doctor"]) == 0
    assert "reproduction doctor" not in capsys.readouterr().out


@pytest.mark.slow
def test_reproduce_prints_findings_once_before_its_seeds(fmnist_root: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    tiny = [f"data.root={fmnist_root}", f"output_dir={tmp_path}", "data.limit_train=256", "data.limit_eval=128",
            "schedule.epochs=2", "data.batch_size=64", "train.threads=1", "reference.epochs=30", "reference.top1=0.1"]
    assert main(["reproduce", str(QUICKSTART), *tiny, "--seeds", "2", "-q"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines.count("reproduction doctor: 1 warning") == 1
    assert lines.index("reproduction doctor: 1 warning") < next(i for i, line in enumerate(lines) if line.startswith("epoch"))


def test_preprocessing_unlike_the_weights_is_named_key_by_key(tmp_path: Path) -> None:
    import torchvision

    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    base = ["model.name=resnet18", f"model.weights={weights}", "data.channels=3", "data.image_size=224"]
    assert of(doctor(base), "preprocessing_mismatch") == []  # torchvision's 224 px and ImageNet constants
    (finding,) = of(doctor([*base, "data.interpolation=nearest", "data.mean=[0.5, 0.5, 0.5]"]), "preprocessing_mismatch")
    assert finding.key == "data.mean" and "torchvision's resnet18 weights" in finding.message
    assert "data.interpolation nearest (the weights: bilinear)" in finding.message and "data.interpolation" in finding.fix
    (upscaled,) = of(doctor(base), "upscale")  # 28 -> 224 px: said, but only as info for pretrained weights
    assert upscaled.severity == "info" and "8.0x larger" in upscaled.message

