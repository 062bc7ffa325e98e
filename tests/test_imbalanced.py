"""Imbalanced classes: the metrics agree with scikit-learn's, balanced sampling and class weights do what they
say, and on a 95 % / 5 % folder they raise balanced accuracy over the plain run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import (average_precision_score, balanced_accuracy_score, f1_score, precision_score, recall_score,
                             roc_auc_score)
from sklearn.utils.class_weight import compute_class_weight

from reprocls.config import load_config
from reprocls.data.samplers import balanced_weights, epoch_order
from reprocls.metrics import confusion_matrix
from reprocls.metrics.classification import at_threshold, binary_report, class_report, threshold_for_recall
from reprocls.recipe import class_weights

REPO = Path(__file__).parent.parent


def test_class_report_agrees_with_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 500)
    predicted = np.where(rng.random(500) < 0.6, truth, rng.integers(0, 4, 500))
    report = class_report(confusion_matrix(torch.tensor(predicted), torch.tensor(truth), 4), ["a", "b", "c", "d"])
    assert list(report["precision"].values()) == pytest.approx(precision_score(truth, predicted, average=None))
    assert list(report["recall"].values()) == pytest.approx(recall_score(truth, predicted, average=None))
    assert list(report["f1"].values()) == pytest.approx(f1_score(truth, predicted, average=None))
    assert report["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert report["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predicted))
    assert sum(report["support"].values()) == 500
    # class c never predicted, class d never present: the zero divisions score 0, as scikit-learn's zero_division=0
    truth, predicted = np.array([0, 0, 1, 1, 2, 2, 0]), np.array([0, 1, 1, 1, 0, 3, 0])
    report = class_report(confusion_matrix(torch.tensor(predicted), torch.tensor(truth), 4), ["a", "b", "c", "d"])
    for key, metric in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        expected = metric(truth, predicted, labels=[0, 1, 2, 3], average=None, zero_division=0)
        assert list(report[key].values()) == pytest.approx(expected), key
    assert report["support"]["d"] == 0 and report["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3)


@pytest.mark.parametrize("positive", [0, 1])
def test_binary_report_agrees_with_scikit_learn(positive: int) -> None:
    rng = np.random.default_rng(positive)
    labels = (rng.random(400) < 0.1).astype(int)  # 10 % of class 1
    scores = np.clip(rng.normal(0.3 + 0.4 * labels, 0.2), 0, 1)  # stored P(class 1)
    report = binary_report(torch.tensor(scores), torch.tensor(labels), positive, threshold=0.5)
    is_positive, score = (labels == positive).astype(int), scores if positive == 1 else 1 - scores
    assert report["roc_auc"] == pytest.approx(roc_auc_score(is_positive, score), abs=1e-6)
    assert report["pr_auc"] == pytest.approx(average_precision_score(is_positive, score), abs=1e-6)
    assert len(report["curves"]["roc"]["fpr"]) <= 200


def test_the_threshold_keeps_the_target_recall() -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    positive = torch.tensor([1, 0, 1, 1, 0, 1, 0, 0])
    threshold = threshold_for_recall(scores, positive, 0.75)  # 3 of the 4 positives
    assert threshold == pytest.approx(0.6)
    assert at_threshold(scores, positive, threshold) == {"recall": 0.75, "precision": 0.75, "false_positive_rate": 0.25}
    assert threshold_for_recall(scores, positive, 1.0) == pytest.approx(0.4)


def test_balanced_sampling_draws_classes_equally_and_replays() -> None:
    labels = torch.tensor([0] * 950 + [1] * 50)
    order = epoch_order(len(labels), seed=3, epoch=2, weights=balanced_weights(labels))
    assert len(order) == 1000 and 0.4 < float(labels[order].float().mean()) < 0.6
    assert torch.equal(order, epoch_order(len(labels), seed=3, epoch=2, weights=balanced_weights(labels)))
    assert not torch.equal(order, epoch_order(len(labels), seed=3, epoch=3, weights=balanced_weights(labels)))


def test_balanced_class_weights_are_scikit_learns() -> None:
    class Split:
        labels = torch.tensor([0] * 90 + [1] * 10)

    class Splits:
        train, num_classes, classes = Split(), 2, ["ok", "defect"]

    weights = class_weights(load_config(None, ["train.class_weights=balanced"]), Splits())
    expected = compute_class_weight("balanced", classes=np.array([0, 1]), y=Split.labels.numpy())
    assert weights.tolist() == pytest.approx(expected.tolist())
    assert class_weights(load_config(None, ["train.class_weights=[1, 4]"]), Splits()).tolist() == [1.0, 4.0]


def defect_folder(root: Path, ok: int = 380, defect: int = 20, size: int = 32, seed: int = 0) -> Path:
    """Grey noise; a defect has a bright 6x6 square somewhere: 95 % / 5 %."""
    rng = np.random.default_rng(seed)
    for name, count in (("defect", defect), ("ok", ok)):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image = rng.normal(70, 30, (size, size))
            if name == "defect":
                y, x = rng.integers(2, size - 8, 2)
                image[y:y + 6, x:x + 6] = 250
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="L").save(root / name / f"{i:03d}.png")
    return root


@pytest.mark.slow
def test_balanced_sampling_and_class_weights_raise_balanced_accuracy(tmp_path: Path) -> None:
    from reprocls.experiments.predict import load
    from reprocls.experiments.run import train_recipe

    folder = defect_folder(tmp_path / "parts")
    common = ["data.name=image_folder", f"data.root={folder}", "data.split=[0.5, 0.25, 0.25]", "data.workers=0",
              "data.batch_size=32", "schedule.epochs=4", "schedule.name=cosine", "optim.lr=0.05",
              "optim.lr_reference_batch=null", "data.augment.random_erasing=0", "train.precision=fp32",
              f"output_dir={tmp_path / 'runs'}", "eval.target_recall=0.8"]
    results = {}
    for name, extra in (("plain", []), ("balanced", ["data.sampler=balanced"]),
                        ("weighted", ["train.class_weights=balanced"])):
        run_dir, results[name] = train_recipe(load_config(REPO / "configs/quickstart.yaml", [*common, f"name={name}"] + extra),
                                              progress=False, echo=False)
    balanced = {name: r["test"]["balanced_accuracy"] for name, r in results.items()}
    assert balanced["balanced"] > balanced["plain"] + 0.1, balanced
    assert balanced["weighted"] > balanced["plain"] + 0.1, balanced
    binary = results["balanced"]["binary"]
    assert binary["positive_class"] == "defect" and binary["threshold_from"] == "validation"
    assert binary["val"]["at_threshold"]["recall"] >= 0.8  # chosen on validation, never on test
    # the recorded AUCs equal scikit-learn's on the scores the saved model gives the test images
    run_dir = next((tmp_path / "runs").glob("balanced-*"))
    test_files = [str(folder / p) for p in json.loads((run_dir / "splits.json").read_text())["test"]]
    predictor = load(run_dir)
    probabilities = [dict(zip(p.classes, p.probabilities)) for p in predictor.predict(test_files, top_k=2)]
    scores = [p["defect"] for p in probabilities]
    truth = [int(Path(f).parent.name == "defect") for f in test_files]
    assert binary["test"]["roc_auc"] == pytest.approx(roc_auc_score(truth, scores), abs=1e-4)
    assert binary["test"]["pr_auc"] == pytest.approx(average_precision_score(truth, scores), abs=1e-4)
    page = (run_dir / "report.html").read_text()
    assert "Two-class detector (test)" in page and "balanced accuracy" in (run_dir / "report.md").read_text()
    print({name: round(value, 4) for name, value in balanced.items()})
