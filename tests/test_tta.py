"""Test-time augmentation (eval.tta): the views it averages, the engine's evaluate with it, and a run that records
the TTA test number beside the plain one, which `reprocls eval` then reproduces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reprocls.config import load_config
from reprocls.engine import evaluate
from reprocls.engine.tta import translate, tta_logits, views
from reprocls.experiments.evaluate import evaluate_saved
from reprocls.experiments.run import train_recipe
from reprocls.models import create_model

REPO = Path(__file__).parent.parent
CPU = torch.device("cpu")


def mirror_symmetric(batch: int = 8, size: int = 28) -> torch.Tensor:
    half = torch.randn(batch, 1, size, size, generator=torch.Generator().manual_seed(0))
    return half + half.flip(-1)  # its own mirror image


def test_flip_tta_on_a_mirror_symmetric_input_gives_the_plain_logits() -> None:
    model = create_model("resnet20", num_classes=10, in_chans=1).eval()
    images = mirror_symmetric()
    with torch.no_grad():
        plain, flipped = model(images), tta_logits(model, images, "flip")
        shifted = tta_logits(model, images, "flip_translate")
    assert torch.allclose(plain, flipped, atol=1e-5)
    assert not torch.allclose(plain, shifted, atol=1e-3)  # the shifted views do change what the model sees


def test_the_views_are_the_image_its_mirror_and_one_pixel_shifts() -> None:
    images = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)
    assert len(views(images, "none")) == 1 and len(views(images, "flip")) == 2 and len(views(images, "flip_translate")) == 6
    assert torch.equal(views(images, "flip")[1], images.flip(-1))
    moved = translate(images, 1, 1)
    assert torch.equal(moved[..., 1:, 1:], images[..., :-1, :-1])  # content moves down and right by one pixel
    assert moved.shape == images.shape


def test_evaluate_with_flip_tta_equals_plain_on_symmetric_images() -> None:
    model = create_model("resnet20", num_classes=10, in_chans=1)
    images = mirror_symmetric(32)
    loader = [(images[:16], torch.arange(16) % 10), (images[16:], torch.arange(16) % 10)]
    common = dict(device=CPU, amp_dtype=None, num_classes=10, progress=False)
    plain, flipped = evaluate(model, loader, **common), evaluate(model, loader, tta="flip", **common)
    assert plain.top1 == flipped.top1 and plain.loss == pytest.approx(flipped.loss, abs=1e-6)
    assert torch.equal(plain.confusion, flipped.confusion)


def test_a_run_records_the_tta_number_beside_the_plain_one_and_eval_reproduces_it(fmnist_root: Path,
                                                                                   tmp_path: Path) -> None:
    config = load_config(REPO / "configs/quickstart.yaml", [
        f"data.root={fmnist_root}", "data.limit_train=512", "data.limit_eval=300", "data.batch_size=64",
        "schedule.epochs=1", "train.threads=1", "eval.tta=flip_translate", f"output_dir={tmp_path}"])
    run_dir, results = train_recipe(config, progress=False, echo=False)
    tta = results["test_tta"]
    assert tta["mode"] == "flip_translate" and tta["samples"] == results["test"]["samples"] == 300
    assert tta["loss"] != results["test"]["loss"]  # a separate pass over six views, not the plain number copied
    assert tta["images_per_s"] > 0 and tta["plain_images_per_s"] > tta["images_per_s"]  # six forwards per image
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["test_tta"]["top1"] == tta["top1"] and saved["test"]["top1"] == results["test"]["top1"]
    again = evaluate_saved(run_dir, progress=False)  # the run's own eval.tta
    assert again["tta"] == "flip_translate" and again["top1"] == pytest.approx(tta["top1"])
    assert again["recorded"]["top1"] == tta["top1"]
    plain = evaluate_saved(run_dir, overrides=["eval.tta=none"], progress=False)
    assert plain["top1"] == pytest.approx(results["test"]["top1"]) and plain["recorded"]["top1"] == results["test"]["top1"]
