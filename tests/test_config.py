"""Recipes are validated before any work: unknown keys, bad values and bad names fail with the key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reprocls.config import ConfigError, RunConfig, describe_keys, dump, load_config
from reprocls.recipe import check_names

ALL_YAML = sorted(Path(__file__).parent.parent.glob("configs/**/*.yaml"))
CONFIGS = [p for p in ALL_YAML if p.parent.name not in ("compress", "search")]  # training recipes (not plans or search spaces)
COMPRESS_PLANS = [p for p in ALL_YAML if p.parent.name == "compress"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_defaults_and_name_from_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "model: {name: resnet32}\n"))
    assert config.model.name == "resnet32"
    assert config.name == "recipe"
    assert config.optim.lr == 0.1


def test_unknown_key_names_path_and_nearest_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.weight_decy'.*'weight_decay'"):
        load_config(write(tmp_path, "optim: {weight_decy: 0.1}\n"))


def test_unknown_top_level_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'schedul'.*'schedule'"):
        load_config(write(tmp_path, "schedul: {epochs: 3}\n"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lr=-1", r"optim\.lr: -1.* in \(0, 1000\]"),
        ("optim.lr=fast", r"optim\.lr: expected a number"),
        ("schedule.epochs=2.5", r"schedule\.epochs: expected an integer"),
        ("train.precision=bf61", r"train\.precision.*'bf16'"),
        ("data.val_fraction=1.5", r"data\.val_fraction"),
        ("data.split=[0.5,0.2,0.2]", r"data\.split"),
        ("schedule.warmup_epochs=40", r"schedule\.warmup_epochs"),
        ("data.augment.hflip=maybe", r"data\.augment\.hflip: expected true or false"),
        ("optim", r"must look like key\.sub=value"),
        ("data.augment.rrc_scale=[0.5]", r"data\.augment\.rrc_scale: \[0\.5\] must be \[low, high\]"),
        ("data.augment.rrc_scale=[0.9,0.1]", r"data\.augment\.rrc_scale: .* low <= high"),
        ("data.std=[0]", r"data\.std: \[0\.0\] must be positive"),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize(
    ("override", "message"),
    [("model.name=resnet2", r"model\.name.*'resnet20'"), ("data.name=fashion_mnst", r"data\.name.*'fashion_mnist'"),
     ("schedule.name=cosin", r"schedule\.name.*'cosine'"), ("optim.name=adam", r"optim\.name: 'adam' is not one of.*'adamw'"),
     ("data.augment.policy=randaug", r"data\.augment\.policy.*'randaugment'")],
)
def test_unknown_registry_names_fail_before_work(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_names(load_config(None, [override]))


def test_overrides_parse_yaml_values() -> None:
    config = load_config(None, ["optim.lr=0.05", "schedule.milestones=[10,20]", "data.mean=[0.5]", "reference.top1=0.9"])
    assert config.optim.lr == 0.05
    assert config.schedule.milestones == [10, 20]
    assert config.data.mean == [0.5]
    assert config.reference is not None and config.reference.top1 == 0.9


def test_dump_round_trips(tmp_path: Path) -> None:
    config = load_config(None, ["optim.nesterov=true", "model.kwargs={zero_init_residual: true}"])
    dump(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config


def test_every_key_is_documented() -> None:
    rows = describe_keys(RunConfig)
    assert len(rows) > 40
    undocumented = [key for key, _, help_text in rows if not help_text]
    assert not undocumented


@pytest.mark.parametrize("recipe", CONFIGS, ids=lambda p: str(p.relative_to(p.parent.parent)))
def test_shipped_recipes_validate(recipe: Path) -> None:
    config = load_config(recipe)
    check_names(config)
    assert yaml.safe_load(recipe.read_text())  # not empty


@pytest.mark.parametrize("plan", COMPRESS_PLANS, ids=lambda p: p.name)
def test_shipped_compression_plans_validate(plan: Path) -> None:
    from reprocls.experiments.compress_run import load_plan

    assert load_plan(plan).prune != "none" or load_plan(plan).quantize != "none"


def test_mean_and_std_must_give_the_same_number_of_channels() -> None:
    with pytest.raises(ConfigError, match=r"data\.mean: \[0\.5\] and data\.std: \[0\.2, 0\.2\] must give one value per channel"):
        load_config(None, ["data.mean=[0.5]", "data.std=[0.2,0.2]"])

