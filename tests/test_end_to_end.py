"""Real runs on a few thousand real Fashion-MNIST images: accuracy, run folder, re-evaluation, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reprocls import create_model
from reprocls.cli import main
from reprocls.config import ConfigError, load_config
from reprocls.experiments.run import train_recipe

pytestmark = pytest.mark.slow
REPO = Path(__file__).parent.parent


def small_recipe(root: Path, out: Path, *extra: str):
    """The quickstart recipe shrunk to 4,000 training images and 3 epochs."""
    return load_config(REPO / "configs/quickstart.yaml", [f"data.root={root}", f"output_dir={out}", "data.limit_train=4000",
                                                          "schedule.epochs=3", "data.batch_size=128", *extra])


@pytest.fixture(scope="module")
def trained(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    return train_recipe(small_recipe(fmnist_root, tmp_path_factory.mktemp("runs")), progress=False, echo=False)


def test_accuracy_is_far_above_chance(trained) -> None:
    _, results = trained
    assert results["test"]["top1"] > 0.70  # chance is 0.10
    assert results["test"]["samples"] == 10_000  # the official test set, untouched
    assert results["val"]["samples"] == 6_000


def test_run_folder_holds_the_proof(trained) -> None:
    run_dir, results = trained
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "environment.json", "metrics.jsonl", "tensorboard", "model.safetensors", "results.json",
            "report.md", "curves.png", "confusion.png"} <= names
    assert load_config(run_dir / "config.yaml").data.limit_train == 4000
    environment = json.loads((run_dir / "environment.json").read_text())
    assert environment["torch"] == torch.__version__ and "commit" in environment["git"] and environment["pip_freeze"]
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and epochs[2]["train_loss"] < epochs[0]["train_loss"]
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert set(results["test"]["per_class"]) == set(results["classes"]) and len(results["classes"]) == 10
    assert sum(map(sum, results["test"]["confusion"])) == 10_000
    assert results["reference"]["gap"] == pytest.approx(results["test"]["top1"] - 0.949)
    report = (run_dir / "report.md").read_text()
    assert "![confusion matrix](confusion.png)" in report and "Sneaker" in report


def test_weights_are_safetensors_usable_without_the_recipe(trained) -> None:
    run_dir, _ = trained
    model = create_model("resnet20", num_classes=10, in_chans=1, weights=run_dir / "model.safetensors")
    state = load_file(str(run_dir / "model.safetensors"))
    assert torch.equal(model.fc.weight, state["fc.weight"])


def test_eval_reproduces_results_json(trained, capsys: pytest.CaptureFixture) -> None:
    run_dir, results = trained
    assert main(["eval", str(run_dir), "--json", "-q"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    for key in ("top1", "top5"):
        assert evaluated[key] == results["test"][key]
    assert evaluated["loss"] == pytest.approx(results["test"]["loss"], rel=1e-6)
    assert main(["eval", str(run_dir / "model.safetensors"), "--split", "val", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["top1"] == results["val"]["top1"]


def test_same_seed_same_metrics(fmnist_root: Path, tmp_path: Path) -> None:
    short = ["data.limit_train=1000", "data.limit_eval=500", "schedule.epochs=1"]
    runs = [train_recipe(small_recipe(fmnist_root, tmp_path, *short), progress=False, echo=False)[1] for _ in range(2)]
    assert runs[0]["test"]["top1"] == runs[1]["test"]["top1"]
    assert runs[0]["test"]["loss"] == runs[1]["test"]["loss"]
    other = train_recipe(small_recipe(fmnist_root, tmp_path, *short, "seed=1"), progress=False, echo=False)[1]
    assert other["test"]["loss"] != runs[0]["test"]["loss"]


def test_image_folder_end_to_end(fmnist_folder: Path, tmp_path: Path) -> None:
    config = load_config(REPO / "configs/quickstart.yaml", [
        "data.name=image_folder", f"data.root={fmnist_folder}", "data.image_size=28", "data.channels=1", "data.workers=0",
        "data.batch_size=16", "schedule.epochs=8", "train.precision=fp32", f"output_dir={tmp_path}", "name=folder"])
    run_dir, results = train_recipe(config, progress=False, echo=False)
    split = json.loads((run_dir / "splits.json").read_text())
    assert split["classes"] == ["bag", "sneaker", "trouser"]
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (126, 36, 18)
    assert results["test"]["top1"] > 0.7  # chance is 1/3


def test_cli_rejects_bad_recipe_before_work(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "reprocls", "train", str(REPO / "configs/quickstart.yaml"),
                           "optim.lrr=0.1", f"output_dir={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "unknown key 'optim.lrr'" in done.stderr and "'lr'" in done.stderr
    assert not any(tmp_path.iterdir())


def test_model_that_cannot_take_the_image_size_fails_before_training(fmnist_root: Path, tmp_path: Path) -> None:
    config = small_recipe(fmnist_root, tmp_path, "model.name=vgg11_bn", "model.kwargs={head: cifar}")
    with pytest.raises(ConfigError, match=r"model\.name: vgg11_bn cannot take 1x28x28 inputs.*data\.image_size"):
        train_recipe(config, progress=False, echo=False)
    assert not any(tmp_path.iterdir())  # no run folder for a run that never started
