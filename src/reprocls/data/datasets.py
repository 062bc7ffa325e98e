"""Datasets by name: the standard sets as in-memory uint8 tensors, and a user's image folders as files."""

from __future__ import annotations

import gzip
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torchvision

from reprocls.config import ConfigError, DataConfig
from reprocls.data.splits import carve_validation, check_limits, stratified_subset
from reprocls.data.transforms import Preprocessing
from reprocls.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SYSTEM_DATA_DIRS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}  # Debian's dataset-fashion-mnist


@dataclass
class TensorSplit:
    """A split held in memory: uint8 images (N, C, H, W) and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> TensorSplit:
        index = torch.as_tensor(indices, dtype=torch.long)
        return TensorSplit(self.images[index], self.labels[index])


@dataclass
class FileSplit:
    """A split of image files: (path, class index) pairs."""

    samples: list[tuple[str, int]]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)


Split = TensorSplit | FileSplit


@dataclass
class DatasetSplits:
    """Train/val/test of one dataset plus what a model needs to know about it."""

    name: str
    classes: list[str]
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train: Split
    val: Split | None
    test: Split
    split_record: dict[str, Any] | None = field(default=None, repr=False)  # image_folder: the file lists, for splits.json
    skipped: list[dict[str, str]] = field(default_factory=list, repr=False)  # image_folder: bad files left out (path, reason)
    # a registered dataset's own per-image transforms (image -> normalised tensor), used instead of the presets
    train_transform: Callable[[Any], torch.Tensor] | None = field(default=None, repr=False)
    eval_transform: Callable[[Any], torch.Tensor] | None = field(default=None, repr=False)
    interpolation: str = "bilinear"  # how images are resized to image_size
    crop_fraction: float = 0.875  # imagenet-preset evaluation: resize to image_size / crop_fraction, centre-crop
    native_size: int | None = None  # the images' own side (a folder's: where they agree, else their median)
    notes: list[str] = field(default_factory=list, repr=False)  # how sizes, channels and constants were chosen

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.train, TensorSplit)


DATASETS: Registry[Callable[[DataConfig, int], DatasetSplits]] = Registry("dataset")


@dataclass(frozen=True)
class DatasetFacts:
    """What a standard dataset is, known without reading it, so recipes can be checked before any data loads."""

    image_size: int
    in_chans: int
    num_classes: int
    train_images: int  # the official training set, before the validation carve-out
    mean: tuple[float, ...]
    std: tuple[float, ...]


def known_facts(name: str) -> DatasetFacts | None:
    """A standard dataset's facts, registered with its loader (None for image folders and datasets without them)."""
    return DATASETS.info(name) if name in DATASETS else None


def convert_stats(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    """Normalisation constants for another channel count: grey repeated for RGB, RGB averaged for grey."""
    if len(values) == channels:
        return tuple(values)
    return tuple(values) * channels if len(values) == 1 else (sum(values) / len(values),)


def candidate_roots(data: DataConfig) -> list[Path]:
    """Where to look for data, in order: the recipe's root, $REPROCLS_DATA, ./.data."""
    roots = [Path(data.root).expanduser()] if data.root else []
    if os.environ.get("REPROCLS_DATA"):
        roots.append(Path(os.environ["REPROCLS_DATA"]).expanduser())
    roots.append(Path(".data"))
    return roots


def limited(train: Any, val: Any, test: Any, data: DataConfig, seed: int, classes: int) -> tuple[Any, Any, Any]:
    """Stratified subsets for data.limit_train / data.limit_eval, of any split with `labels` and `subset`."""
    check_limits(data.limit_train, data.limit_eval, classes)
    if data.limit_train is not None:
        train = train.subset(stratified_subset(train.labels.numpy(), data.limit_train, seed))
    if data.limit_eval is not None:
        val = val.subset(stratified_subset(val.labels.numpy(), data.limit_eval, seed)) if val is not None else None
        test = test.subset(stratified_subset(test.labels.numpy(), data.limit_eval, seed))
    return train, val, test


def _finish(name: str, data: DataConfig, seed: int, train: TensorSplit, test: TensorSplit, classes: list[str],
            mean: tuple[float, ...], std: tuple[float, ...]) -> DatasetSplits:
    """Carve a stratified validation split from train and apply `limit_train`/`limit_eval`."""
    train_idx, val_idx = carve_validation(train.labels.numpy(), data.val_fraction, seed)
    val = train.subset(val_idx) if len(val_idx) else None
    train, val, test = limited(train.subset(train_idx), val, test, data, seed, len(classes))
    return DatasetSplits(name, classes, train.images.shape[1], train.images.shape[-1], mean, std, train, val, test,
                         native_size=train.images.shape[-1])


# ----------------------------------------------------------------------------------------- MNIST family

_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _has_raw_files(folder: Path) -> bool:
    return all((folder / f).exists() or (folder / f"{f}.gz").exists() for f in _MNIST_FILES)


def _prepare_mnist_root(name: str, folder_name: str, data: DataConfig) -> tuple[Path, bool]:
    """A root in torchvision's layout (ROOT/<Class>/raw/), linking flat system files in when that is all there is."""
    roots = candidate_roots(data)
    for root in roots:
        if _has_raw_files(root / folder_name / "raw"):
            return root, False
    flat_dirs = [r for r in roots if _has_raw_files(r)] + [d for d in [SYSTEM_DATA_DIRS.get(name)] if d and _has_raw_files(d)]
    if flat_dirs:
        cache = roots[0] if data.root else Path(os.environ.get("REPROCLS_DATA", "") or ".data")
        raw = cache / folder_name / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for f in _MNIST_FILES:
            source = flat_dirs[0] / f
            if source.exists():
                shutil.copyfile(source, raw / f)
            else:
                with gzip.open(flat_dirs[0] / f"{f}.gz", "rb") as src, open(raw / f"{f}.partial", "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(raw / f"{f}.partial", raw / f)
        return cache, False
    if data.download:
        return roots[0], True
    hint = " or install Debian's package: sudo apt-get install dataset-fashion-mnist" if name == "fashion_mnist" else ""
    raise FileNotFoundError(
        f"{name} not found in {', '.join(str(r) for r in roots)}. Set data.root or $REPROCLS_DATA to a folder that has it, "
        f"set data.download=true on a machine with a network{hint}."
    )


def _mnist_like(name: str, cls: type, facts: DatasetFacts) -> Callable[[DataConfig, int], DatasetSplits]:
    def load(data: DataConfig, seed: int) -> DatasetSplits:
        root, download = _prepare_mnist_root(name, cls.__name__, data)
        splits = [cls(str(root), train=is_train, download=download) for is_train in (True, False)]
        train, test = (TensorSplit(s.data.unsqueeze(1).contiguous(), s.targets.long()) for s in splits)
        return _finish(name, data, seed, train, test, list(splits[0].classes), facts.mean, facts.std)

    load.__name__ = name
    load.__doc__ = f"{cls.__name__}: 28x28 grey images, 60k train / 10k test, held in memory."
    return load


FASHION_MNIST = DatasetFacts(28, 1, 10, 60_000, (0.2860,), (0.3530,))
MNIST = DatasetFacts(28, 1, 10, 60_000, (0.1307,), (0.3081,))
DATASETS.register(_mnist_like("fashion_mnist", torchvision.datasets.FashionMNIST, FASHION_MNIST), info=FASHION_MNIST)
DATASETS.register(_mnist_like("mnist", torchvision.datasets.MNIST, MNIST), info=MNIST)


# ----------------------------------------------------------------------------------------------- CIFAR


def _cifar(name: str, cls: type, facts: DatasetFacts) -> Callable[[DataConfig, int], DatasetSplits]:
    def load(data: DataConfig, seed: int) -> DatasetSplits:
        roots = candidate_roots(data)
        root = next((r for r in roots if (r / cls.base_folder).is_dir()), roots[0])
        try:
            splits = [cls(str(root), train=is_train, download=data.download) for is_train in (True, False)]
        except RuntimeError as error:
            raise FileNotFoundError(
                f"{name} not found under {', '.join(str(r) for r in roots)} ({error}). Set data.root or $REPROCLS_DATA, "
                "or data.download=true on a machine with a network."
            ) from None
        train, test = (
            TensorSplit(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(s.targets, dtype=torch.long))
            for s in splits
        )
        return _finish(name, data, seed, train, test, list(splits[0].classes), facts.mean, facts.std)

    load.__name__ = name
    load.__doc__ = f"{cls.__name__}: 32x32 colour images, 50k train / 10k test, held in memory."
    return load


CIFAR10 = DatasetFacts(32, 3, 10, 50_000, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100 = DatasetFacts(32, 3, 100, 50_000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
DATASETS.register(_cifar("cifar10", torchvision.datasets.CIFAR10, CIFAR10), info=CIFAR10)
DATASETS.register(_cifar("cifar100", torchvision.datasets.CIFAR100, CIFAR100), info=CIFAR100)


# ---------------------------------------------------------------------------------------- image folders


def _convert_channels(split: Split | None, channels: int) -> Split | None:
    """Grey to RGB by repetition, RGB to grey by ITU-R 601 luma; file splits convert when images are decoded."""
    if not isinstance(split, TensorSplit) or split.images.shape[1] == channels:
        return split
    if channels == 3:
        return TensorSplit(split.images.repeat(1, 3, 1, 1), split.labels)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    grey = (split.images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    return TensorSplit(grey, split.labels)


def split_seed(data: DataConfig, seed: int) -> int:
    """The seed of the train/val/test split and the limit_* subsets: data.split_seed when set, else the run's seed."""
    return data.split_seed if data.split_seed is not None else seed


def load_dataset(data: DataConfig, seed: int, weights: Preprocessing | None = None) -> DatasetSplits:
    """The named dataset with its preprocessing decided: each of normalisation, size, interpolation and crop fraction
    comes from the recipe when it sets it, else from the pretrained `weights` when they say, else from the dataset.
    `seed` (the run's) draws the splits unless data.split_seed pins them."""
    splits = DATASETS.get(data.name)(data, split_seed(data, seed))
    if data.channels is not None and data.channels != splits.in_chans:
        splits.train, splits.val, splits.test = (_convert_channels(s, data.channels) for s in (splits.train, splits.val, splits.test))
        splits.mean, splits.std = convert_stats(splits.mean, data.channels), convert_stats(splits.std, data.channels)
        splits.notes = [note for note in splits.notes if " channel(s)" not in note]
        splits.notes.append(f"{data.channels} channel(s) from the recipe (the dataset's images have {splits.in_chans})")
        splits.in_chans = data.channels
    weights = weights or Preprocessing("none")
    source = f"the weights ({weights.source})"
    if data.mean is None and weights.mean is not None:
        splits.mean = convert_stats(tuple(weights.mean), splits.in_chans)
    if data.std is None and weights.std is not None:
        splits.std = convert_stats(tuple(weights.std), splits.in_chans)
    if data.mean is not None:
        splits.mean = tuple(data.mean)
    if data.std is not None:
        splits.std = tuple(data.std)
    for key, value in (("image_size", data.image_size), ("interpolation", data.interpolation),
                       ("crop_fraction", data.crop_fraction)):
        chosen = value if value is not None else getattr(weights, key)
        if chosen is not None:
            setattr(splits, key, chosen)
            words = key.replace("_", " ")
            splits.notes = [note for note in splits.notes if not note.startswith(words)]
            splits.notes.append(f"{words} {chosen} from {'the recipe' if value is not None else source}")
    if data.mean is None and weights.mean is not None:
        splits.notes.append(f"normalisation from {source}")
    if len(splits.mean) != splits.in_chans or len(splits.std) != splits.in_chans:
        raise ConfigError(f"data.mean/data.std: need {splits.in_chans} values for {data.name}, got {splits.mean} / {splits.std}")
    return splits
