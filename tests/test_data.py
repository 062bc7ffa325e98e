"""Datasets, splits, presets and the batch loader behave as documented."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from reprocls.config import AugmentConfig, DataConfig
from reprocls.data import load_dataset, make_loader
from reprocls.data.datasets import TensorSplit
from reprocls.data.augment import crop_flip, crop_flip_params, erase, erase_params
from reprocls.data.loaders import TensorLoader
from reprocls.data.splits import stratified_split
from reprocls.data.stats import channel_stats
from reprocls.data.transforms import eval_transform, resolve_preset, train_transform

from conftest import write_random_folder

CPU = torch.device("cpu")


def test_stratified_split_is_deterministic_and_balanced() -> None:
    labels = np.repeat(np.arange(5), [100, 50, 30, 20, 10])
    first = stratified_split(labels, [0.7, 0.2, 0.1], seed=3)
    again = stratified_split(labels, [0.7, 0.2, 0.1], seed=3)
    other = stratified_split(labels, [0.7, 0.2, 0.1], seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], other[0])
    assert sorted(np.concatenate(first).tolist()) == list(range(len(labels)))  # a partition
    for cls, count in enumerate([100, 50, 30, 20, 10]):
        assert [int((labels[p] == cls).sum()) for p in first] == [round(0.7 * count), round(0.9 * count) - round(0.7 * count),
                                                                   count - round(0.9 * count)]


def test_validation_is_carved_from_train_only(fmnist_splits) -> None:
    assert len(fmnist_splits.train) + len(fmnist_splits.val) == 60_000
    assert len(fmnist_splits.test) == 10_000
    counts = torch.bincount(fmnist_splits.val.labels, minlength=10)
    assert counts.tolist() == [600] * 10  # stratified 10 %


def test_fashion_mnist_loads_as_uint8_with_known_constants(fmnist_splits) -> None:
    assert fmnist_splits.train.images.dtype == torch.uint8
    assert fmnist_splits.train.images.shape[1:] == (1, 28, 28)
    assert fmnist_splits.classes[0] == "T-shirt/top"
    mean, std = channel_stats(TensorSplit(torch.cat([fmnist_splits.train.images, fmnist_splits.val.images]),
                                          torch.empty(0)), channels=1)
    assert mean[0] == pytest.approx(fmnist_splits.mean[0], abs=5e-4)
    assert std[0] == pytest.approx(fmnist_splits.std[0], abs=5e-4)


def test_missing_data_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.download=true"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)), seed=0)


def test_grey_to_rgb_conversion(fmnist_root: Path) -> None:
    splits = load_dataset(DataConfig(root=str(fmnist_root), channels=3, limit_train=100), seed=0)
    assert splits.in_chans == 3 and splits.train.images.shape[1] == 3 and len(splits.mean) == 3
    assert torch.equal(splits.train.images[:, 0], splits.train.images[:, 2])


def test_limit_train_keeps_class_balance(fmnist_root: Path) -> None:
    splits = load_dataset(DataConfig(root=str(fmnist_root), limit_train=1000), seed=0)
    assert len(splits.train) == 1000
    assert torch.bincount(splits.train.labels, minlength=10).tolist() == [100] * 10


def test_image_folder_split_is_written_and_reused(tmp_path: Path) -> None:
    root = write_random_folder(tmp_path / "imgs", {"ok": 20, "scratch": 10, "dent": 10})
    (root / "ok" / ".hidden.png").write_bytes(b"")
    config = DataConfig(name="image_folder", root=str(root), image_size=16)
    first, second = load_dataset(config, seed=0), load_dataset(config, seed=0)
    assert first.classes == ["dent", "ok", "scratch"]
    assert [len(first.train), len(first.val), len(first.test)] == [28, 8, 4]
    assert first.split_record == second.split_record
    assert not any(".hidden" in p for p in first.split_record["train"])
    # a later run reuses the saved split even with another seed
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps(first.split_record))
    reused = load_dataset(DataConfig(name="image_folder", root=str(root), split_file=str(split_file)), seed=99)
    assert [s for s, _ in reused.test.samples] == [s for s, _ in first.test.samples]
    assert load_dataset(DataConfig(name="image_folder", root=str(root)), seed=99).split_record["test"] != first.split_record["test"]


def test_image_folder_loader_gives_normalised_batches(tmp_path: Path) -> None:
    root = write_random_folder(tmp_path / "imgs", {"a": 8, "b": 8})
    config = DataConfig(name="image_folder", root=str(root), image_size=16, batch_size=4, workers=0)
    splits = load_dataset(config, seed=0)
    loader = make_loader(splits.train, splits, config, train=True, device=CPU, seed=0, channels_last=False)
    images, labels = next(iter(loader))
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.long


def test_random_crop_flip_makes_valid_crops() -> None:
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    generator = torch.Generator().manual_seed(0)
    out = crop_flip(images, 2, *crop_flip_params(len(images), 2, True, generator, images.device))
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(2):
        candidates = [padded[i, :, y:y + 6, x:x + 6] for y in range(5) for x in range(5)]
        candidates += [c.flip(2) for c in candidates]
        assert any(torch.equal(out[i], c) for c in candidates)
    assert not torch.equal(out, images)


def test_tensor_loader_epochs_are_reproducible_and_different() -> None:
    split = TensorSplit(torch.randint(0, 255, (64, 1, 8, 8), dtype=torch.uint8), torch.arange(64) % 4)
    loader = TensorLoader(split, batch_size=16, mean=(0.5,), std=(0.25,), device=CPU, train=True, seed=1,
                          augment=AugmentConfig(crop_padding=2, hflip=True))
    loader.set_epoch(0)
    first = [x for x, _ in loader]
    loader.set_epoch(0)
    again = [x for x, _ in loader]
    loader.set_epoch(1)
    other = [x for x, _ in loader]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert len(first) == 4


def test_eval_loader_is_deterministic_and_complete() -> None:
    split = TensorSplit(torch.randint(0, 255, (50, 1, 8, 8), dtype=torch.uint8), torch.arange(50) % 5)
    loader = TensorLoader(split, batch_size=16, mean=(0.5,), std=(0.25,), device=CPU, train=False,
                          augment=AugmentConfig(crop_padding=4, hflip=True))
    batches = list(loader)
    assert sum(len(y) for _, y in batches) == 50
    expected = (split.images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(torch.cat([x for x, _ in batches]), expected, atol=1e-5)


def test_presets_follow_the_classic_recipes() -> None:
    assert resolve_preset("auto", 28) == "small" and resolve_preset("auto", 224) == "imagenet"
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    train = train_transform("imagenet", image_size=224, mean=mean, std=std, augment=AugmentConfig())
    kinds = [type(t) for t in train.transforms]
    assert v2.RandomResizedCrop in kinds and v2.RandomHorizontalFlip in kinds and v2.ColorJitter in kinds
    assert train.transforms[-1].mean == list(mean) and train.transforms[-1].std == list(std)
    image = torch.randint(0, 255, (3, 300, 260), dtype=torch.uint8)
    evaluation = eval_transform("imagenet", image_size=224, mean=mean, std=std)
    assert torch.equal(evaluation(image), evaluation(image))  # deterministic
    assert evaluation(image).shape == (3, 224, 224)
    small = train_transform("small", image_size=32, mean=(0.5,), std=(0.5,), augment=AugmentConfig(crop_padding=4))
    assert any(isinstance(t, v2.RandomCrop) and t.padding == [4, 4, 4, 4] for t in small.transforms)


def test_random_erase_zeroes_one_rectangle_per_chosen_image() -> None:
    images = torch.ones(64, 1, 16, 16)
    out = erase(images, erase_params(len(images), *images.shape[-2:], 0.5, torch.Generator().manual_seed(0), images.device))
    erased = (out == 0).flatten(1).sum(1)
    assert 10 < int((erased > 0).sum()) < 54  # about half the images
    for i in torch.nonzero(erased).flatten().tolist():
        rows, cols = torch.nonzero(out[i, 0] == 0, as_tuple=True)
        height, width = int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)
        assert height * width == int(erased[i])  # a solid rectangle
        assert 0.02 * 256 - 8 <= height * width <= 0.33 * 256 + 8


def test_upscaled_small_images_keep_the_in_memory_small_preset(fmnist_root: Path) -> None:
    config = DataConfig(root=str(fmnist_root), image_size=96, limit_train=64, batch_size=16)
    splits = load_dataset(config, seed=0)
    loader = make_loader(splits.train, splits, config, train=True, device=CPU, seed=0, channels_last=False)
    assert isinstance(loader, TensorLoader) and loader.crop_padding == config.augment.crop_padding
    images, _ = next(iter(loader))
    assert images.shape == (16, 1, 96, 96)
