"""Predicting on new images: the CLI and reprocls.load(...).predict(...) agree with `reprocls eval` image for
image, read files, folders and globs, report accuracy on class folders, and take compressed models too."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

import reprocls
from reprocls.cli import main
from reprocls.config import load_config
from reprocls.experiments.evaluate import evaluate_saved, load_trained_run, predict_split
from reprocls.experiments.predict import expand_paths

pytestmark = pytest.mark.slow
REPO = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def folder_run(fmnist_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from reprocls.experiments.run import train_recipe

    out = tmp_path_factory.mktemp("predict-runs")
    config = load_config(REPO / "configs/quickstart.yaml", [
        "data.name=image_folder", f"data.root={fmnist_folder}", "data.workers=0", "data.batch_size=32",
        "schedule.epochs=3", "schedule.name=cosine", f"output_dir={out}", "name=folder"])
    run_dir, _ = train_recipe(config, progress=False, echo=False)
    return run_dir


def test_predict_equals_eval_on_the_test_split(folder_run: Path, fmnist_folder: Path, capsys: pytest.CaptureFixture) -> None:
    test_files = [str(fmnist_folder / path) for path in json.loads((folder_run / "splits.json").read_text())["test"]]
    trained = load_trained_run(folder_run)
    session = trained.session
    log = predict_split(session.model, session.splits.test, session, trained.config.data)
    eval_predicted = [session.splits.classes[i] for i in torch.cat(log.predicted).tolist()]
    evaluated = evaluate_saved(folder_run, progress=False)

    run = reprocls.load(folder_run)
    python_predicted = [p.top1 for p in run.predict(test_files)]
    assert python_predicted == eval_predicted  # the same class for every image

    assert main(["predict", str(folder_run), *test_files, "--json", "-q"]) == 0
    printed = json.loads(capsys.readouterr().out)
    cli_predicted = [p["predictions"][0]["class"] for p in printed["predictions"]]
    assert cli_predicted == eval_predicted
    labels = [Path(p).parent.name for p in test_files]
    accuracy = sum(a == b for a, b in zip(cli_predicted, labels)) / len(labels)
    assert accuracy == pytest.approx(evaluated["top1"])
    first = run.predict(test_files[0], top_k=3)
    assert len(first.classes) == 3 and first.probabilities == sorted(first.probabilities, reverse=True)
    assert abs(sum(run.predict(Image.open(test_files[0]), top_k=3).probabilities) - sum(first.probabilities)) < 1e-6


def test_a_folder_of_class_folders_gives_accuracy_and_a_csv(folder_run: Path, fmnist_folder: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    csv = tmp_path / "predictions.csv"
    assert main(["predict", str(folder_run), str(fmnist_folder), "--top-k", "2", "--csv", str(csv), "-q"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"accuracy against the folder names: \d+\.\d\d % \(\d+ of 180\)", out)
    rows = csv.read_text().splitlines()
    assert rows[0] == "path,label,class_1,probability_1,class_2,probability_2" and len(rows) == 181
    glob_pattern = str(fmnist_folder / "bag" / "00*.png")
    assert [label for _, label in expand_paths([glob_pattern])] == [None] * 10
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        expand_paths([str(tmp_path / "missing.png")])


def test_a_new_labelled_folder_is_scored_whole_as_new_data(folder_run: Path, fmnist_folder: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    new = shutil.copytree(fmnist_folder, tmp_path / "new-scans")
    result = evaluate_saved(folder_run, overrides=[f"data.root={new}"], progress=False)
    assert result["samples"] == 180 and result["new_data"]["images"] == 180  # all of it, not its 'test' tenth
    assert "recorded" not in result
    assert main(["eval", str(folder_run), f"data.root={new}", "-q"]) == 0
    out = capsys.readouterr().out
    assert "new data: all 180 images" in out and "reproduced exactly" not in out and "DIFFERS" not in out


def test_compressed_models_are_kept_and_load_for_eval_and_predict(folder_run: Path, fmnist_folder: Path,
                                                                  tmp_path: Path) -> None:
    from reprocls.experiments.compress_run import CompressPlan, compress_run

    pruned_dir, variants = compress_run(folder_run, CompressPlan(prune="structured", amount=0.5, batches=[1]),
                                        out=tmp_path / "pruned", say=lambda text: None)
    assert (pruned_dir / "model.safetensors").exists()
    evaluated = evaluate_saved(pruned_dir, progress=False)
    assert evaluated["top1"] == pytest.approx(variants[-1].top1)
    predicted = reprocls.load(pruned_dir).predict(str(fmnist_folder / "bag" / "000.png"))
    assert predicted.top1 in ("bag", "sneaker", "trouser")
    assert main(["export", str(pruned_dir / "model.safetensors"), "--format", "safetensors",
                 "--out", str(tmp_path / "exported")]) == 0
    int8_dir, int8_variants = compress_run(folder_run, CompressPlan(quantize="static", batches=[1]),
                                           out=tmp_path / "int8", say=lambda text: None)
    assert (int8_dir / "model.pt2").exists() and (int8_dir / "model.json").exists()
    assert evaluate_saved(int8_dir, progress=False)["top1"] == pytest.approx(int8_variants[-1].top1)
