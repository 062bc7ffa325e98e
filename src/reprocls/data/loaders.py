"""Batches for the engine: in-memory tensors augmented per batch on the device, or files through a DataLoader."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from reprocls.config import ConfigError, DataConfig
from reprocls.data.datasets import DatasetSplits, FileSplit, Split, TensorSplit
from reprocls.data.transforms import eval_transform, resolve_preset, train_transform

Batch = tuple[torch.Tensor, torch.Tensor]


def random_crop_flip(images: torch.Tensor, padding: int, hflip: bool, generator: torch.Generator) -> torch.Tensor:
    """Per-image random pad-and-crop and horizontal flip of a whole batch at once (no Python loop over images)."""
    n, _, h, w = images.shape
    device = images.device
    if padding > 0:
        padded = F.pad(images, (padding, padding, padding, padding))
        dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
        dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
        rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
        images = padded[torch.arange(n, device=device)[:, None, None, None], torch.arange(images.shape[1], device=device)[None, :, None, None], rows, cols]
    if hflip:
        flip = torch.rand(n, generator=generator, device=device) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(3), images)
    return images


def random_erase(images: torch.Tensor, probability: float, generator: torch.Generator,
                 scale: tuple[float, float] = (0.02, 0.33), ratio: tuple[float, float] = (0.3, 3.3)) -> torch.Tensor:
    """Zero a random rectangle in a random share of the (normalised) batch, each image its own rectangle."""
    n, _, h, w = images.shape
    device = images.device
    area = torch.empty(n, device=device).uniform_(*scale, generator=generator) * h * w
    log_ratio = torch.empty(n, device=device).uniform_(torch.log(torch.tensor(ratio[0])).item(),
                                                        torch.log(torch.tensor(ratio[1])).item(), generator=generator)
    aspect = log_ratio.exp()
    eh = (area * aspect).sqrt().round().clamp(1, h).long()
    ew = (area / aspect).sqrt().round().clamp(1, w).long()
    y0 = (torch.rand(n, generator=generator, device=device) * (h - eh + 1)).long()
    x0 = (torch.rand(n, generator=generator, device=device) * (w - ew + 1)).long()
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    inside = (((rows[None] >= y0[:, None]) & (rows[None] < (y0 + eh)[:, None]))[:, :, None]
              & ((cols[None] >= x0[:, None]) & (cols[None] < (x0 + ew)[:, None]))[:, None, :])
    chosen = torch.rand(n, generator=generator, device=device) < probability
    return images.masked_fill((inside & chosen[:, None, None])[:, None], 0.0)


class TensorLoader:
    """Iterates an in-memory uint8 split in (optionally shuffled) batches, normalised and augmented on the device."""

    def __init__(self, split: TensorSplit, *, batch_size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 device: torch.device, train: bool, seed: int = 0, image_size: int | None = None,
                 crop_padding: int = 0, hflip: bool = False, random_erasing: float = 0.0, channels_last: bool = False) -> None:
        self.images = split.images.to(device)
        self.labels = split.labels.to(device)
        self.batch_size, self.train, self.seed, self.epoch = batch_size, train, seed, 0
        self.crop_padding, self.hflip, self.random_erasing = (crop_padding, hflip, random_erasing) if train else (0, False, 0.0)
        self.image_size = image_size if image_size and image_size != split.images.shape[-1] else None
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.generator = torch.Generator(device=device)

    def set_epoch(self, epoch: int) -> None:
        """Shuffling and augmentation depend only on (seed, epoch), so any epoch can be replayed."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        self.generator.manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.labels)
        order = torch.randperm(n, generator=self.generator, device=self.labels.device) if self.train else None
        for start in range(0, len(self) * self.batch_size if self.train else n, self.batch_size):
            index = order[start:start + self.batch_size] if order is not None else slice(start, start + self.batch_size)
            images, labels = self.images[index], self.labels[index]
            if self.crop_padding or self.hflip:
                images = random_crop_flip(images, self.crop_padding, self.hflip, self.generator)
            images = images.float().sub_(self.mean).div_(self.std)
            if self.random_erasing > 0:
                images = random_erase(images, self.random_erasing, self.generator)
            if self.image_size:
                images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
            yield images.contiguous(memory_format=self.memory_format), labels


class FileDataset(Dataset):
    """Decodes one image file per item and applies a v2 transform."""

    def __init__(self, split: FileSplit, transform, mode: str) -> None:
        self.samples, self.transform, self.mode = split.samples, transform, mode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            return self.transform(image.convert(self.mode)), label


class TransformedTensorDataset(Dataset):
    """An in-memory split served one image at a time through v2 transforms (the classic per-sample pipeline)."""

    def __init__(self, split: TensorSplit, transform) -> None:
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.split.images[index]), int(self.split.labels[index])


class DeviceLoader:
    """Moves DataLoader batches to the device in the memory format the model wants."""

    def __init__(self, loader: DataLoader, device: torch.device, *, channels_last: bool, train: bool, seed: int) -> None:
        self.loader, self.device, self.train, self.seed = loader, device, train, seed
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def set_epoch(self, epoch: int) -> None:
        generator = getattr(self.loader, "generator", None)
        if generator is not None:
            generator.manual_seed(self.seed * 100_003 + epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for images, labels in self.loader:
            yield (images.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format),
                   labels.to(self.device, non_blocking=True))


Loader = TensorLoader | DeviceLoader


def use_in_memory(data: DataConfig, splits: DatasetSplits) -> bool:
    return splits.in_memory and data.in_memory != "no"


def make_loader(split: Split, splits: DatasetSplits, data: DataConfig, *, train: bool, device: torch.device,
                seed: int, channels_last: bool) -> Loader:
    """The fastest faithful loader for a split: batch augmentation in memory, else per-image v2 transforms."""
    native_size = split.images.shape[-1] if isinstance(split, TensorSplit) else splits.image_size
    preset = resolve_preset(data.preset, native_size)  # 28 px images upscaled to 96 still get the small-image preset
    batch_size = data.batch_size if train else data.eval_batch_size
    if isinstance(split, TensorSplit) and use_in_memory(data, splits):
        if train and preset == "imagenet":
            raise ConfigError("data.preset: imagenet needs the per-image pipeline; set data.in_memory=no or data.preset=small")
        augment = train and preset == "small"
        return TensorLoader(split, batch_size=batch_size, mean=splits.mean, std=splits.std, device=device, train=train,
                            seed=seed, image_size=splits.image_size, crop_padding=data.augment.crop_padding if augment else 0,
                            hflip=augment and data.augment.hflip, random_erasing=data.augment.random_erasing if augment else 0.0,
                            channels_last=channels_last)
    common = dict(image_size=splits.image_size, mean=splits.mean, std=splits.std)
    transform = train_transform(preset, augment=data.augment, **common) if train else eval_transform(preset, **common)
    if isinstance(split, FileSplit):
        dataset: Dataset = FileDataset(split, transform, "L" if splits.in_chans == 1 else "RGB")
    else:
        dataset = TransformedTensorDataset(split, transform)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=train, drop_last=train, num_workers=data.workers,
                        generator=generator, pin_memory=device.type == "cuda", persistent_workers=data.workers > 0)
    return DeviceLoader(loader, device, channels_last=channels_last, train=train, seed=seed)
