"""The test images a trained model gets wrong with the most confidence, from a prediction log: mistakes.json and
the mistakes.png grid of the stored, un-normalised images."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from reprocls import run_layout as layout  # noqa: E402
from reprocls.data import DatasetSplits, FileSplit, TensorSplit  # noqa: E402
from reprocls.data.shards import ShardSplit  # noqa: E402
from reprocls.data.datasets import Split  # noqa: E402
from reprocls.data.images import to_mode  # noqa: E402
from reprocls.files import atomic_write_json  # noqa: E402
from reprocls.metrics.mistakes import Mistake, PredictionLog  # noqa: E402

MISTAKES_SHOWN = 32  # four rows of eight: enough to see a pattern, small enough to read
GRID_COLUMNS = 8
THUMBNAIL_SIZE = 96  # longest side of a file image in the grid, in pixels; in-memory images keep their own size


def raw_image(split: Split, index: int, channels: int, thumbnail: int = THUMBNAIL_SIZE) -> np.ndarray:
    """The image at `index` as the dataset stores it, before any normalisation: uint8 (H, W) grey or (H, W, 3) RGB.
    File images are decoded the way training decodes them and shrunk to fit `thumbnail` pixels."""
    if isinstance(split, TensorSplit):
        image = split.images[index]
        return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()
    if isinstance(split, ShardSplit):
        decoded = to_mode(split.decode(index)[0], channels)
    else:
        path, _ = split.samples[index]
        with Image.open(path) as opened:
            decoded = to_mode(opened, channels)
    decoded.thumbnail((thumbnail, thumbnail), Image.Resampling.LANCZOS)
    return np.asarray(decoded)


def short(name: str, width: int = 16) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def plot_mistakes(images: list[np.ndarray], mistakes: list[Mistake], classes: list[str], path: Path) -> None:
    """A grid of the images, each under its true class, the predicted class and the confidence.

    The tiles are pasted into one canvas drawn by a single imshow: four times faster than an axes per image,
    which matters because every run draws this grid.
    """
    tile = max(max(image.shape[:2]) for image in images)
    gap, label_height = max(2, tile // 14), round(0.42 * tile)
    colour = any(image.ndim == 3 for image in images)
    columns = min(GRID_COLUMNS, len(images))
    rows = math.ceil(len(images) / columns)
    height, width = rows * (label_height + tile + gap), columns * (tile + gap) - gap
    canvas = np.full((height, width, 3) if colour else (height, width), 255, dtype=np.uint8)
    inches_per_pixel = 1.3 / (tile + gap)
    fig = plt.figure(figsize=(width * inches_per_pixel, height * inches_per_pixel))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.axis("off")
    for position, (image, mistake) in enumerate(zip(images, mistakes)):
        row, column = divmod(position, columns)
        if colour and image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        top, left = row * (label_height + tile + gap) + label_height, column * (tile + gap)
        h, w = image.shape[:2]
        y, x = top + (tile - h) // 2, left + (tile - w) // 2
        canvas[y:y + h, x:x + w] = image
        ax.text(left + tile / 2, top - 1, f"true {short(classes[mistake.true])}\npred {short(classes[mistake.predicted])}\n"
                f"{100 * mistake.confidence:.1f} %", ha="center", va="bottom", fontsize=7, linespacing=1.1)
    ax.imshow(canvas, cmap=None if colour else "gray", vmin=0, vmax=255, interpolation="antialiased")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_mistakes(run_dir: Path, log: PredictionLog, splits: DatasetSplits, *, limit: int = MISTAKES_SHOWN) -> dict[str, Any]:
    """mistakes.json (the most confident test mistakes with their indices in the test split) and the mistakes.png grid."""
    split = splits.test
    mistakes = log.most_confident_mistakes(limit)
    rows = []
    for mistake in mistakes:
        row: dict[str, Any] = {**mistake.to_dict(), "true_name": splits.classes[mistake.true],
                               "predicted_name": splits.classes[mistake.predicted]}
        if isinstance(split, FileSplit):
            row["path"] = split.samples[mistake.index][0]
        elif isinstance(split, ShardSplit):
            row["path"] = split.sample(mistake.index)["key"]
        rows.append(row)
    payload = {"split": "test", "images": len(log.labels), "wrong": int(log.wrong().sum()),
               "ranked_by": "softmax probability of the predicted (wrong) class", "classes": splits.classes,
               "mistakes": rows}
    if mistakes:
        plot_mistakes([raw_image(split, m.index, splits.in_chans) for m in mistakes], mistakes, splits.classes,
                      run_dir / layout.MISTAKES_PNG)
    else:
        (run_dir / layout.MISTAKES_PNG).unlink(missing_ok=True)
    atomic_write_json(run_dir / layout.MISTAKES_JSON, payload)
    return payload
