"""Batches for the engine: in-memory tensors augmented per batch on the device, or files through a DataLoader."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from reprocls.config import AugmentConfig, ConfigError, DataConfig
from reprocls.data.augment import (BatchMix, ErasePlan, apply_per_image, build_policy, crop_flip, crop_flip_params, erase,
                                   erase_params)
from reprocls.data.datasets import DatasetSplits, FileSplit, Split, TensorSplit
from reprocls.data.images import to_mode
from reprocls.data.samplers import (CoveringBatchSampler, EpochSampler, ShardSampler, balanced_weights, epoch_order,
                                    global_batches, shard_indices)
from reprocls.data.shards import ShardSplit
from reprocls.data.transforms import eval_transform, resolve_preset, train_transform

Batch = tuple[torch.Tensor, torch.Tensor]


def batch_rng(seed: int, *position: int) -> contextlib.AbstractContextManager:
    """Fork the CPU RNG seeded by a batch's position, so v2 policies and MixUp replay exactly for that batch."""
    context = torch.random.fork_rng(devices=[])
    value = seed
    for part in position:
        value = (value * 1_000_003 + part) % (2**63)
    torch.default_generator.manual_seed(value)
    return context


class TensorLoader:
    """Iterates an in-memory uint8 split in batches, normalised and augmented on the device.

    Training draws every random choice for a whole global batch (all processes, all micro-batches) before slicing
    out this rank's micro-batches, so the images a step sees do not depend on the process count or accumulation.
    """

    def __init__(self, split: TensorSplit, *, batch_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device, train: bool, seed: int = 0, image_size: int | None = None,
                 augment: AugmentConfig | None = None, num_classes: int | None = None, micro_batches: int = 1,
                 rank: int = 0, world_size: int = 1, channels_last: bool = False, interpolation: str = "bilinear",
                 weights: torch.Tensor | None = None) -> None:
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.train, self.seed, self.epoch, self.start = batch_size, train, seed, 0, 0
        self.micro_batches, self.rank, self.world_size = micro_batches if train else 1, rank, world_size
        augment = augment if train else None
        self.crop_padding = augment.crop_padding if augment else 0
        self.hflip = bool(augment and augment.hflip)
        self.random_erasing = augment.random_erasing if augment else 0.0
        self.repeats = augment.repeats if augment else 1
        self.policy = build_policy(augment) if augment else None
        self.mix = BatchMix.from_config(augment, num_classes or int(self.labels.max()) + 1) if augment else None
        self.image_size = image_size if image_size and image_size != split.images.shape[-1] else None
        self.interpolation = interpolation
        self.weights = weights if train else None  # per-image sampling weights (balanced sampling), on the CPU
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator(device=device)
        self.eval_indices = None if train else shard_indices(len(self.labels), rank, world_size).to(device)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Shuffling and augmentation depend only on (seed, epoch), so any epoch replays, from any micro-batch."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        """Batches yielded per epoch: micro-batches when training, evaluation batches otherwise."""
        if self.train:
            return global_batches(len(self.labels), self.batch_size, self.world_size) * self.micro_batches
        return -(-len(self.eval_indices) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if not self.train:
            for start in range(0, len(self.eval_indices), self.batch_size):
                index = self.eval_indices[start:start + self.batch_size]
                yield self._finish(self.images[index].float().sub_(self.mean).div_(self.std)), self.labels[index]
            return
        n, device = len(self.labels), self.labels.device
        order = epoch_order(n, self.seed, self.epoch, self.repeats, self.weights).to(device)
        self.generator.manual_seed(self.seed * 100_003 + self.epoch)
        global_size, micro = self.batch_size * self.world_size, self.batch_size // self.micro_batches
        h, w = self.images.shape[-2:]
        for step in range(global_batches(n, self.batch_size, self.world_size)):
            crops = crop_flip_params(global_size, self.crop_padding, self.hflip, self.generator, device)
            erasing = erase_params(global_size, h, w, self.random_erasing, self.generator, device) if self.random_erasing else None
            for part in range(self.micro_batches):
                if step * self.micro_batches + part < self.start:
                    continue  # resuming mid-epoch: the random draws above are made, the batch is not
                within = slice(self.rank * self.batch_size + part * micro, self.rank * self.batch_size + (part + 1) * micro)
                index = order[step * global_size:(step + 1) * global_size][within]
                yield self._augment(self.images[index], self.labels[index], crops, erasing, within, (step, self.rank, part))

    def _augment(self, images: torch.Tensor, labels: torch.Tensor, crops: tuple[torch.Tensor, ...], erasing: ErasePlan | None,
                 within: slice, position: tuple[int, ...]) -> Batch:
        if self.crop_padding or self.hflip:
            images = crop_flip(images, self.crop_padding, *(p[within] for p in crops))
        with batch_rng(self.seed, self.epoch, *position):
            if self.policy is not None:
                images = apply_per_image(self.policy, images)
            images = images.float().sub_(self.mean).div_(self.std)
            if erasing is not None:
                images = erase(images, tuple(p[within] for p in erasing))  # type: ignore[arg-type]
            if self.mix is not None:
                images, labels = self.mix(images, labels)
        return self._finish(images), labels

    def _finish(self, images: torch.Tensor) -> torch.Tensor:
        if self.image_size:
            smooth = self.interpolation != "nearest"  # antialiasing exists for bilinear and bicubic only
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode=self.interpolation, antialias=smooth)
        return images.contiguous(memory_format=self.memory_format)


class BadImageError(ConfigError):
    """A file that passed the header scan fails to decode while training (truncated, corrupt pixels)."""

    MARKER = "cannot be decoded while training"

    @classmethod
    def for_file(cls, path: str, error: BaseException) -> BadImageError:
        return cls(f"{path} {cls.MARKER} ({type(error).__name__}: {error}); the last checkpoint is intact. Run `reprocls "
                   "data check` on the folder to find every such file, or set data.on_bad_image=skip to leave them "
                   "out, then continue with --resume auto")

    def plain(self) -> BadImageError:
        """The message without the worker traceback a DataLoader wraps around it."""
        text = str(self)
        start = text.rfind(f"{BadImageError.__name__}: ")
        return BadImageError(text[start + len(BadImageError.__name__) + 2:].strip() if start >= 0 else text)


class DecodedDataset(Dataset):
    """One decoded image per item through a v2 transform; `open` says where the image comes from (converted to
    the run's channels). A key of
    (index, seed, epoch, position) seeds the transform by the image's place in the epoch."""

    def __init__(self, transform, mode: str) -> None:
        self.transform, self.channels = transform, 1 if mode == "L" else 3

    def open(self, index: int) -> tuple[Image.Image, int]:
        raise NotImplementedError

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[torch.Tensor, int]:
        index, position = (key[0], key[1:]) if isinstance(key, tuple) else (key, None)
        image, label = self.open(index)
        with batch_rng(*position) if position else contextlib.nullcontext():
            return self.transform(image), label


class FileDataset(DecodedDataset):
    """Images from files of an image folder."""

    def __init__(self, split: FileSplit, transform, mode: str) -> None:
        super().__init__(transform, mode)
        self.samples = split.samples

    def __len__(self) -> int:
        return len(self.samples)

    def open(self, index: int) -> tuple[Image.Image, int]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                return to_mode(image, self.channels), label
        except Exception as error:  # the header scan reads no pixels: a cut file shows itself here
            raise BadImageError.for_file(path, error) from None


class ShardDataset(DecodedDataset):
    """Images from the samples of litdata shards."""

    def __init__(self, split: ShardSplit, transform, mode: str) -> None:
        super().__init__(transform, mode)
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def open(self, index: int) -> tuple[Image.Image, int]:
        try:
            image, _ = self.split.decode(index)
        except ValueError as error:
            raise BadImageError(f"{error} {BadImageError.MARKER}; the last checkpoint is intact. Run `reprocls data "
                                "check` on the shards to list every such sample, then shard the source again "
                                "without them and continue with --resume auto") from None
        return to_mode(image, self.channels), int(self.split.labels_at(index))


class TransformedTensorDataset(Dataset):
    """An in-memory split served one image at a time through v2 transforms (the classic per-sample pipeline)."""

    def __init__(self, split: TensorSplit, transform) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[torch.Tensor, int]:
        index, position = (key[0], key[1:]) if isinstance(key, tuple) else (key, None)
        with batch_rng(*position) if position else contextlib.nullcontext():
            return self.transform(self.split.images[index]), int(self.split.labels[index])


class DeviceLoader:
    """Moves DataLoader batches to the device in the model's memory format, applying MixUp/CutMix there."""

    def __init__(self, loader: DataLoader, device: torch.device, *, channels_last: bool, seed: int,
                 mix: BatchMix | None = None, rank: int = 0) -> None:
        self.loader, self.device, self.seed, self.mix, self.rank = loader, device, seed, mix, rank
        self.epoch, self.start = 0, 0
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Set the sampler's epoch and first micro-batch; per-image randomness is seeded by position, not worker."""
        self.epoch, self.start = epoch, start
        if isinstance(self.loader.sampler, EpochSampler):
            self.loader.sampler.set_epoch(epoch, start=start * (self.loader.batch_size or 1))
        if isinstance(self.loader.batch_sampler, CoveringBatchSampler):
            self.loader.batch_sampler.set_epoch(epoch, start=start)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        try:
            yield from self._batches()
        except BadImageError as error:
            raise error.plain() from None

    def _batches(self) -> Iterator[Batch]:
        for index, (images, labels) in enumerate(self.loader, start=self.start):
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if self.mix is not None:
                with batch_rng(self.seed, self.epoch, index, self.rank):
                    images, labels = self.mix(images, labels)
            yield images.contiguous(memory_format=self.memory_format), labels


Loader = TensorLoader | DeviceLoader


def use_in_memory(data: DataConfig, splits: DatasetSplits) -> bool:
    return splits.in_memory and data.in_memory != "no"


def make_loader(split: Split, splits: DatasetSplits, data: DataConfig, *, train: bool, device: torch.device,
                seed: int, channels_last: bool, micro_batches: int = 1, rank: int = 0, world_size: int = 1) -> Loader:
    """The fastest faithful loader for a split: batch augmentation in memory, else per-image v2 transforms.

    Training loaders yield micro-batches of data.batch_size / micro_batches images; this rank's share of each
    global batch of data.batch_size x world_size. Evaluation loaders give each rank a disjoint shard.
    """
    native_size = split.images.shape[-1] if isinstance(split, TensorSplit) else splits.native_size or splits.image_size
    preset = resolve_preset(data.preset, native_size)  # 28 px images upscaled to 96 still get the small-image preset
    weights = balanced_weights(split.labels) if train and data.sampler == "balanced" else None
    shard = dict(rank=rank, world_size=world_size)
    own_transform = splits.train_transform if train else splits.eval_transform
    if isinstance(split, TensorSplit) and use_in_memory(data, splits) and own_transform is None:
        if train and preset == "imagenet":
            raise ConfigError("data.preset: imagenet needs the per-image pipeline; set data.in_memory=no or data.preset=small")
        return TensorLoader(split, batch_size=data.batch_size if train else data.eval_batch_size, mean=splits.mean,
                            std=splits.std, device=device, train=train, seed=seed, image_size=splits.image_size,
                            augment=data.augment if train and preset == "small" else None, num_classes=splits.num_classes,
                            micro_batches=micro_batches, channels_last=channels_last, interpolation=splits.interpolation,
                            weights=weights, **shard)
    common = dict(image_size=splits.image_size, mean=splits.mean, std=splits.std, interpolation=splits.interpolation)
    if own_transform is not None:
        transform = own_transform
    elif train:
        transform = train_transform(preset, augment=data.augment, **common)
    else:
        transform = eval_transform(preset, crop_fraction=splits.crop_fraction, **common)
    mode = "L" if splits.in_chans == 1 else "RGB"
    if isinstance(split, FileSplit):
        dataset: Dataset = FileDataset(split, transform, mode)
    elif isinstance(split, ShardSplit):
        dataset = ShardDataset(split, transform, mode)
    else:
        dataset = TransformedTensorDataset(split, transform)
    if train and isinstance(split, ShardSplit) and weights is None and data.augment.repeats == 1:
        batches = CoveringBatchSampler(len(dataset), batch_size=data.batch_size, seed=seed, micro_batches=micro_batches,
                                       chunks=split.chunk_of(), **shard)
        order: dict[str, Any] = {"batch_sampler": batches}
    elif train:
        order = {"sampler": EpochSampler(len(dataset), batch_size=data.batch_size, seed=seed,
                                         repeats=data.augment.repeats, weights=weights, **shard),
                 "batch_size": data.batch_size // micro_batches, "drop_last": True}
    else:
        order = {"sampler": ShardSampler(len(dataset), **shard) if world_size > 1 else None,
                 "batch_size": data.eval_batch_size}
    loader = DataLoader(dataset, num_workers=data.workers, generator=torch.Generator().manual_seed(seed),
                        pin_memory=device.type == "cuda", persistent_workers=data.workers > 0, **order)
    mix = BatchMix.from_config(data.augment, splits.num_classes) if train and preset != "none" else None
    return DeviceLoader(loader, device, channels_last=channels_last, seed=seed, mix=mix, rank=rank)
