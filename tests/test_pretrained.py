"""Pretrained weights in, right head out: torchvision/timm state dicts onto other class and channel counts, our
weights back into torchvision's key names, preprocessing from the weights, and the fine-tuning controls."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file

from reprocls import create_model
from reprocls.config import ConfigError, load_config
from reprocls.models._weights import adapt_input_conv, load_pretrained, reference_state_dict
from reprocls.recipe import build_trainee, fine_tuning, prepare

REPO = Path(__file__).parent.parent


def grey_folder(root: Path, classes: int = 3, per_class: int = 24, size: int = 32, seed: int = 0) -> Path:
    """Grey PNGs, each class a different brightness pattern, so a model can tell them apart quickly."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size)) + 40
            base[:, c * size // classes:(c + 1) * size // classes] = 200  # a bright stripe per class
            noisy = np.clip(base + rng.normal(0, 25, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(noisy, mode="L").save(root / f"class{c}" / f"{i:03d}.png")
    return root


def torchvision_resnet18_file(path: Path) -> Path:
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def test_adapting_the_first_conv_keeps_the_response_to_grey_and_constant_images() -> None:
    weight = torch.randn(8, 3, 3, 3)
    grey = torch.rand(1, 1, 5, 5)
    rgb = grey.expand(1, 3, 5, 5)
    summed = adapt_input_conv(weight, 1)
    assert summed.shape == (8, 1, 3, 3)
    assert torch.allclose(torch.conv2d(grey, summed), torch.conv2d(rgb, weight), atol=1e-5)  # R = G = B
    repeated = adapt_input_conv(weight, 6)
    constant = torch.ones(1, 6, 4, 4)
    assert torch.allclose(torch.conv2d(constant, repeated), torch.conv2d(torch.ones(1, 3, 4, 4), weight), atol=1e-5)
    assert adapt_input_conv(weight, 4).shape == (8, 4, 3, 3)


def test_a_torchvision_state_dict_loads_onto_other_classes_and_channels(tmp_path: Path) -> None:
    path = torchvision_resnet18_file(tmp_path / "resnet18.pth")
    model = create_model("resnet18", num_classes=2, in_chans=1)
    report = load_pretrained(model, path)
    assert sorted(report.reinitialized) == ["fc.bias", "fc.weight"]
    assert report.adapted == {"conv1.weight": "3->1 input channels"}
    original = torch.load(path, weights_only=True)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], original[k]) for k in report.loaded)
    assert len(report.loaded) == len(original) - 3  # every tensor but the classifier's two and the adapted conv
    assert "fc re-initialised, conv1 adapted 3->1 input channels" in report.summary()
    assert f"{len(report.loaded)} tensors loaded" in report.summary()


def test_a_backbone_that_does_not_fit_is_refused_naming_the_keys(tmp_path: Path) -> None:
    path = torchvision_resnet18_file(tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=r"does not fit ResNet.*other shapes \[layer1"):
        load_pretrained(create_model("resnet50", num_classes=2), path)


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t", "mobilenet_v2"])
def test_our_weights_load_into_torchvision_under_its_key_names(name: str) -> None:
    """The families whose keys differ from torchvision's map both ways: torchvision -> ours -> torchvision."""
    torch.manual_seed(0)
    reference = torchvision.models.get_model(name, num_classes=7).eval()
    ours = create_model(name, num_classes=7).eval()
    ours.load_state_dict(ours.remap_state_dict(reference.state_dict()))
    torch.manual_seed(1)
    for parameter in ours.parameters():  # weights "trained here": different from the reference's
        parameter.data.add_(torch.randn_like(parameter) * 0.01)
    back = torchvision.models.get_model(name, num_classes=7).eval()
    back.load_state_dict(reference_state_dict(ours, back), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(back(x), ours(x), atol=1e-4)


def test_timm_pretrained_true_with_a_local_file_loads_it(tmp_path: Path) -> None:
    path = tmp_path / "timm_resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    model = create_model("timm/resnet18", weights=path, pretrained=True, num_classes=3, in_chans=1)
    assert model.weights_report.adapted == {"conv1.weight": "3->1 input channels"}
    assert sorted(model.weights_report.reinitialized) == ["fc.bias", "fc.weight"]


@pytest.mark.slow
def test_fine_tuning_a_torchvision_resnet18_on_a_grey_folder_keeps_a_frozen_backbone(tmp_path: Path) -> None:
    from reprocls.experiments.run import train_recipe

    folder = grey_folder(tmp_path / "grey")
    weights = torchvision_resnet18_file(tmp_path / "resnet18.pth")
    config = load_config(REPO / "configs/quickstart.yaml", [
        "model.name=resnet18", f"model.weights={weights}", "model.freeze=backbone", "data.name=image_folder",
        f"data.root={folder}", "data.image_size=32", "data.workers=0", "data.batch_size=16", "schedule.epochs=2",
        "optim.lr=0.05", "train.precision=fp32", f"output_dir={tmp_path / 'runs'}"])
    run_dir, results = train_recipe(config, progress=False, echo=False)
    summary = results["weights"]["summary"]
    assert "fc re-initialised, conv1 adapted 3->1 input channels" in summary
    assert results["weights"]["reinitialized"] == ["fc.weight", "fc.bias"] and len(results["weights"]["loaded"]) == 119
    assert results["input"]["channels"] == 1 and results["input"]["image_size"] == 32
    assert results["fine_tuning"]["trainable_params"] == 512 * 3 + 3  # only the new head trains
    trained = load_file(str(run_dir / "model.safetensors"))
    original = torch.load(weights, weights_only=True)
    for key, value in trained.items():
        if key.startswith("fc."):
            continue
        expected = adapt_input_conv(original[key], 1) if key == "conv1.weight" else original[key]
        assert torch.equal(value, expected), key  # weights and BatchNorm statistics exactly as loaded
    assert not torch.equal(trained["fc.weight"], torch.zeros_like(trained["fc.weight"]))


def test_stages_freeze_and_layer_rates(fmnist_root: Path) -> None:
    config = load_config(REPO / "configs/quickstart.yaml", [f"data.root={fmnist_root}", "model.freeze=2",
                                                             "optim.layer_decay=0.5", "optim.head_lr_factor=10",
                                                             "optim.lr_reference_batch=null", "data.limit_train=256",
                                                             "schedule.name=constant"])
    session = prepare(config)
    trainee = build_trainee(config, session, 0.1, 10)
    tuning = fine_tuning(config, session.model)
    assert [s.name for s in tuning.stages] == ["stem", "layer1", "layer2", "layer3"]
    frozen = {name for stage in tuning.stages[:2] for name in stage.parameters}
    assert all(not p.requires_grad for n, p in session.model.named_parameters() if n in frozen)
    rates = {id(p): group["lr"] for group in trainee.optimizer.param_groups for p in group["params"]}
    named = dict(session.model.named_parameters())
    assert rates[id(named["layer2.0.conv1.weight"])] == pytest.approx(0.1 * 0.5 ** 2)  # stage 2 of 4
    assert rates[id(named["layer3.0.conv1.weight"])] == pytest.approx(0.1 * 0.5)
    assert rates[id(named["fc.weight"])] == pytest.approx(1.0)  # the head at 10 x lr
    assert not any(id(named[name]) in rates for name in frozen)  # frozen parameters are not in the optimizer
    assert len(trainee.frozen_norms) == 1 + 6  # the stem's BatchNorm and layer1's three blocks' two each
    with pytest.raises(ConfigError, match=r"model\.freeze: 9 stages, but resnet20 has 4"):
        fine_tuning(load_config(REPO / "configs/quickstart.yaml", ["model.freeze=9"]), session.model)


@pytest.mark.parametrize("depths", [[1, 2, 3], [1, 1, 1], [3, 3, 3]])
def test_a_stage_of_one_block_is_a_stage_not_part_of_the_stem(depths: list[int]) -> None:
    from reprocls.models._stages import model_stages

    model = create_model("cifar_resnet", num_classes=10, in_chans=1, depths=depths, widths=[8, 16, 32])
    stages, head = model_stages(model)
    assert [s.name for s in stages] == ["stem", "layer1", "layer2", "layer3"]
    assert stages[0].parameters == ("conv1.weight", "bn1.weight", "bn1.bias")
    assert all(name.startswith(f"{stage.name}.") for stage in stages[1:] for name in stage.parameters)
    assert sum(s.size(model) for s in stages) + head.size(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_head_only_warm_up_trains_the_head_first_then_everything(fmnist_root: Path, tmp_path: Path) -> None:
    from reprocls.experiments.run import train_recipe

    common = [f"data.root={fmnist_root}", "data.limit_train=512", "data.limit_eval=200", "train.precision=fp32",
              "data.batch_size=128", "train.head_only_epochs=1", "schedule.name=cosine", f"output_dir={tmp_path}"]
    recipe = REPO / "configs/quickstart.yaml"
    warm, _ = train_recipe(load_config(recipe, [*common, "schedule.epochs=1", "name=warm"]), progress=False, echo=False)
    torch.manual_seed(0)  # what the run seeds before it builds the model: the same initial weights
    initial = create_model("resnet20", num_classes=10, in_chans=1).state_dict()
    after = load_file(str(warm / "model.safetensors"))
    assert torch.equal(after["layer1.0.conv1.weight"], initial["layer1.0.conv1.weight"])  # backbone as initialised
    assert torch.equal(after["bn1.running_mean"], initial["bn1.running_mean"])  # and its statistics
    assert not torch.equal(after["fc.weight"], initial["fc.weight"])  # the head trained
    full, results = train_recipe(load_config(recipe, [*common, "schedule.epochs=2", "name=full"]), progress=False, echo=False)
    second = load_file(str(full / "model.safetensors"))
    assert not torch.equal(second["layer1.0.conv1.weight"], initial["layer1.0.conv1.weight"])  # epoch 2 trains it
    assert results["fine_tuning"]["head_only_epochs"] == 1


def test_preprocessing_follows_the_weights_unless_the_recipe_says(tmp_path: Path) -> None:
    folder = grey_folder(tmp_path / "grey", per_class=6)
    path = tmp_path / "timm.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    base = ["model.name=timm/resnet18", f"model.weights={path}", "data.name=image_folder", f"data.root={folder}"]
    session = prepare(load_config(None, base))
    splits = session.splits
    assert (splits.interpolation, splits.crop_fraction, splits.image_size) == ("bicubic", 0.95, 224)
    assert splits.mean == pytest.approx((sum((0.485, 0.456, 0.406)) / 3,))  # ImageNet's, for one grey channel
    assert session.preprocessing.source == "timm's pretrained config of resnet18"
    overridden = prepare(load_config(None, [*base, "data.interpolation=bilinear", "data.image_size=64"])).splits
    assert (overridden.interpolation, overridden.image_size, overridden.crop_fraction) == ("bilinear", 64, 0.95)
    assert any("interpolation bilinear from the recipe" in note for note in overridden.notes)
