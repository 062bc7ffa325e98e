"""Exported models (ONNX, torch.export, safetensors + JSON) compute what the eager model does and carry its metadata.

One convolutional model (resnet20) and one transformer (vit_ti_4), on 1-channel 28 px inputs, exported once each.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from reprocls.compress.export import (ExportMismatchError, deployment_metadata, export_onnx, export_program,
                                      export_safetensors, load_exported, load_program, preprocess, read_onnx_metadata,
                                      verify_onnx)
from reprocls.config import RunConfig
from reprocls.data.datasets import DatasetSplits
from reprocls.experiments.run import model_metadata, save_weights
from reprocls.run_layout import WEIGHTS as WEIGHTS_FILE
from reprocls.models import create_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MODELS = {"resnet20": {}, "vit_ti_4": {"img_size": 28}}
SIZE = 28


def calibrated(name: str) -> nn.Module:
    """Eval-mode model with BatchNorm statistics of a real batch, so its outputs are far from zero."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, **MODELS[name])
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(16, 1, SIZE, SIZE))
    return model.eval()


def run_weights_metadata(name: str, model: nn.Module) -> dict[str, str]:
    """The metadata a real run writes into model.safetensors (the producer's own function, not a copy of it)."""
    config = RunConfig()
    config.model.name, config.model.in_chans = name, 1
    no_images: Any = None  # model_metadata reads names and statistics only, never the images
    splits = DatasetSplits("fashion_mnist", CLASSES, 1, SIZE, (0.286,), (0.353,), no_images, no_images, no_images)
    return model_metadata(config, splits, model, "ema")


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported_onnx(request, tmp_path_factory) -> tuple[str, nn.Module, Path, dict]:
    name = request.param
    model = calibrated(name)
    metadata = deployment_metadata(run_weights_metadata(name, model))
    path = export_onnx(model, torch.randn(1, 1, SIZE, SIZE), tmp_path_factory.mktemp(name) / f"{name}.onnx",
                       metadata=metadata)
    return name, model, path, metadata


def test_onnx_matches_eager_at_two_batch_sizes(exported_onnx) -> None:
    name, model, path, _ = exported_onnx
    torch.manual_seed(1)
    for batch in (1, 8):
        inputs = torch.randn(batch, 1, SIZE, SIZE)
        with torch.no_grad():
            assert model(inputs).abs().max() > 1e-2, f"{name}: eager outputs ~0, the comparison would prove nothing"
        difference = verify_onnx(path, model, inputs, atol=1e-4)
        print(f"{name} onnx batch {batch}: max abs diff {difference:.2e}")
        assert difference < 1e-4


def test_onnx_carries_metadata(exported_onnx) -> None:
    import onnx

    name, _, path, metadata = exported_onnx
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["model"] == name
    assert json.loads(props["classes"]) == CLASSES
    assert json.loads(props["mean"]) == [0.286] and json.loads(props["std"]) == [0.353]
    assert json.loads(props["image_size"]) == SIZE and json.loads(props["in_chans"]) == 1
    embedded = read_onnx_metadata(path)
    assert {k: embedded[k] for k in metadata} == metadata
    assert embedded["input_shape"] == [1, SIZE, SIZE] and embedded["reprocls_version"]


def test_onnx_model_and_metadata_classify_an_image(exported_onnx) -> None:
    """What a user does with the .onnx file alone: read its metadata, preprocess a picture, run it."""
    import onnxruntime

    _, model, path, _ = exported_onnx
    metadata = read_onnx_metadata(path)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    batch = preprocess(image, metadata)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": batch.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(logits, model(batch).numpy(), atol=1e-4)
    assert metadata["classes"][int(logits.argmax())] in CLASSES


def test_verify_onnx_refuses_a_different_model(exported_onnx) -> None:
    name, model, path, _ = exported_onnx
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.get_classifier().bias.add_(0.5)
    with pytest.raises(ExportMismatchError, match=r"differ from the eager model by up to 0\.5"):
        verify_onnx(path, other, torch.randn(2, 1, SIZE, SIZE))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_program_round_trip(name: str, tmp_path: Path) -> None:
    model = calibrated(name).train()
    path = export_program(model, torch.randn(1, 1, SIZE, SIZE), tmp_path / f"{name}.pt2")
    assert model.training, "export must hand the model back in the mode it was given"
    model.eval()  # the program was traced in eval mode: it must match eval outputs
    program = load_program(path)
    for batch in (1, 8):
        inputs = torch.randn(batch, 1, SIZE, SIZE)
        with torch.no_grad():
            torch.testing.assert_close(program(inputs), model(inputs), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_safetensors_round_trip(name: str, tmp_path: Path) -> None:
    model = calibrated(name)
    metadata = deployment_metadata(run_weights_metadata(name, model))
    weights, sidecar = export_safetensors(model, tmp_path / "out" / f"{name}.safetensors", metadata)
    assert sidecar == tmp_path / "out" / f"{name}.json"
    record = json.loads(sidecar.read_text())
    assert record["model"] == name and record["model_kwargs"] == MODELS[name]  # img_size filled in as the run did
    assert record["classes"] == CLASSES and record["num_classes"] == 10 and record["in_chans"] == 1
    assert record["mean"] == [0.286] and record["std"] == [0.353] and record["image_size"] == SIZE
    assert record["resize"] == "square" and record["weights"] == "ema" and record["weights_file"] == weights.name
    assert record["reprocls_version"] and record["created"]
    loaded, loaded_metadata = load_exported(weights)
    assert loaded_metadata == record and not loaded.training
    inputs = torch.randn(4, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(inputs), model(inputs))
    sidecar.unlink()  # the weights header alone still describes the model
    assert load_exported(weights)[1]["model_kwargs"] == MODELS[name]


def test_load_exported_reads_a_run_weights_file(tmp_path: Path) -> None:
    """What the CLI does for a run folder: its model.safetensors is loadable without the recipe."""
    model = calibrated("vit_ti_4")
    save_weights(model, tmp_path / WEIGHTS_FILE, run_weights_metadata("vit_ti_4", model))
    loaded, metadata = load_exported(tmp_path / WEIGHTS_FILE)
    assert metadata["model_kwargs"] == {"img_size": SIZE} and metadata["classes"] == CLASSES
    inputs = torch.randn(2, 1, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(loaded(inputs), model(inputs))


@pytest.mark.parametrize("dataset, image_size, data, resize", [
    ("fashion_mnist", 28, {}, "square"),
    ("cifar10", 96, {"preset": "imagenet"}, "square"),  # in-memory data are resized as tensors whatever the preset
    ("cifar10", 32, {"preset": "imagenet", "in_memory": "no"}, "center_crop"),
    ("image_folder", 224, {"preset": "auto"}, "center_crop"),
    ("image_folder", 64, {"preset": "auto"}, "square"),
])
def test_deployment_metadata_records_the_eval_resize(dataset: str, image_size: int, data: dict, resize: str) -> None:
    info = {"model": "resnet20", "num_classes": 2, "in_chans": 3, "classes": ["a", "b"], "image_size": image_size,
            "mean": [0.5] * 3, "std": [0.25] * 3, "dataset": dataset, "model_kwargs": {}}
    metadata = deployment_metadata({"reprocls": json.dumps(info), "config": json.dumps({"data": data})})
    assert metadata["resize"] == resize
    assert ("crop_ratio" in metadata) == (resize == "center_crop")


def test_deployment_metadata_refuses_foreign_weights() -> None:
    with pytest.raises(ValueError, match="no 'reprocls' metadata"):
        deployment_metadata({"format": "pt"})


@pytest.mark.parametrize("resize", ["square", "center_crop"])
def test_preprocess_normalises_with_the_recorded_statistics(resize: str) -> None:
    colour = (200, 100, 50)
    metadata = {"in_chans": 3, "image_size": 24, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.5], "resize": resize}
    batch = preprocess(Image.new("RGB", (60, 40), colour), metadata)
    assert batch.shape == (1, 3, 24, 24) and batch.dtype == torch.float32
    expected = [(c / 255 - m) / s for c, m, s in zip(colour, metadata["mean"], metadata["std"])]
    torch.testing.assert_close(batch[0].mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5, rtol=0)
    assert batch[0].std(dim=(1, 2)).max() < 1e-5  # a flat image stays flat through resize and crop


def test_preprocess_converts_channels() -> None:
    """An RGB picture for a grey model becomes one channel, with the luma Pillow computes."""
    metadata = {"in_chans": 1, "image_size": SIZE, "mean": [0.286], "std": [0.353]}
    image = Image.new("RGB", (50, 50), (255, 0, 0))
    batch = preprocess(image, metadata)
    assert batch.shape == (1, 1, SIZE, SIZE)
    grey = image.convert("L").getpixel((0, 0))
    torch.testing.assert_close(batch.flatten()[0].item(), (grey / 255 - 0.286) / 0.353, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="mean/std of length"):
        preprocess(image, {**metadata, "mean": [0.5, 0.5, 0.5]})
