"""Reading the same images from litdata shards and from an image folder: training-loader throughput, alternating
rounds in one process run, ratio to the folder measured in the same run.

    python benchmarks/shards_vs_folder.py [--images 20000] [--rounds 3] [--workers 2]

It writes Fashion-MNIST training images as PNG files (a folder of 10 classes), shards that folder with
`reprocls data shard`, then times one epoch of the training loader (decode, augmentation, batching, as `train` reads
them) over each, and one step-free pass of the evaluation loader. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from reprocls.config import DataConfig  # noqa: E402
from reprocls.data import load_dataset, make_loader  # noqa: E402


def write_folder(root: Path, count: int) -> None:
    """`count` Fashion-MNIST training images as root/<class>/<n>.png, classes in their dataset proportion."""
    splits = load_dataset(DataConfig(val_fraction=0.0), seed=0)
    for index in range(count):
        folder = root / splits.classes[int(splits.train.labels[index])].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(splits.train.images[index, 0].numpy()).save(folder / f"{index:05d}.png")


def epoch_seconds(data: DataConfig) -> tuple[float, int]:
    """One training epoch of the loader `train` would build, from its first batch request (worker start included)
    to the last batch; the dataset's scan or manifest read is not counted."""
    splits = load_dataset(data, seed=0)
    loader = make_loader(splits.train, splits, data, train=True, device=torch.device("cpu"), seed=0,
                         channels_last=True)
    loader.set_epoch(0)
    start = time.perf_counter()
    images = sum(len(labels) for _, labels in loader)
    return time.perf_counter() - start, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder, shards = Path(tmp) / "folder", Path(tmp) / "shards"
        start = time.perf_counter()
        write_folder(folder, args.images)
        print(f"wrote {args.images:,} PNGs in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "reprocls", "data", "shard", str(folder), str(shards), "-q"], check=True,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        size = sum(p.stat().st_size for p in shards.rglob("*") if p.is_file())
        print(f"sharded in {time.perf_counter() - start:.1f} s: {size / 2**20:.1f} MiB")
        common = dict(batch_size=256, workers=args.workers, verify_images="header")
        sources = {"folder": DataConfig(name="image_folder", root=str(folder), **common),
                   "shards": DataConfig(name="shards", root=str(shards), **common)}
        rates: dict[str, list[float]] = {name: [] for name in sources}
        epoch_seconds(sources["folder"])  # warm the page cache and the folder's scan cache for both
        epoch_seconds(sources["shards"])
        for round_ in range(args.rounds):
            for name, data in (sources.items() if round_ % 2 == 0 else reversed(sources.items())):
                seconds, images = epoch_seconds(data)
                rates[name].append(images / seconds)
                print(f"round {round_ + 1} {name}: {images:,} images in {seconds:.2f} s, {images / seconds:,.0f} img/s")
        folder_rate = statistics.median(rates["folder"])
        print(f"\n| source | training loader img/s (median of {args.rounds}) | ratio to folder |")
        print("|---|---:|---:|")
        for name, values in rates.items():
            print(f"| {name} | {statistics.median(values):,.0f} | {statistics.median(values) / folder_rate:.2f} |")


if __name__ == "__main__":
    main()
