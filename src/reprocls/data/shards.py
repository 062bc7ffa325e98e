"""Sharded datasets for data that outgrows one machine's disk: `reprocls data shard` writes a dataset's splits as
litdata chunk files (an index.json plus binary chunks per split, readable locally or from s3://, gs://, azure://
and other remotes litdata knows), and `data.name: shards` trains from them.

litdata stores and fetches; the order is ours. Its own iterator assigns chunks to ranks by the process count and
drops samples so that ranks stay even, which would break two of our promises, so training reads samples by index
in the order of `covering_order` (see data/samplers.py): every image once per epoch whatever the number of
processes, and the same images in each step for the same effective batch. See docs/architecture.md for why litdata.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image

from reprocls.config import ConfigError, DataConfig
from reprocls.data.datasets import DATASETS, DatasetSplits, FileSplit, Split, TensorSplit, limited
from reprocls.files import atomic_write_json

MANIFEST = "reprocls_shards.json"
PARTS = ("train", "val", "test")
FORMAT = "litdata"
os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")  # litdata can ask PyPI for a newer version: never


def litdata() -> Any:
    """litdata, imported on first use, with the install line when it is missing."""
    try:
        import litdata as module
    except ImportError:
        raise ConfigError("sharded data needs litdata, an optional extra: pip install 'reprocls[shards]' "
                          "(or pip install litdata)") from None
    return module


def is_remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


# ---------------------------------------------------------------------------------------------------- writing


def sample_bytes(split: Split, index: int, channels: int, root: str | None) -> tuple[str, bytes, int]:
    """(key, encoded image, label) of one sample: a file's own bytes (its JPEG stays a JPEG) or a PNG of an
    in-memory image; the key is the file's path under the folder, or the image's index."""
    if isinstance(split, FileSplit):
        path, label = split.samples[index]
        key = os.path.relpath(path, root) if root else path
        return key, Path(path).read_bytes(), label
    assert isinstance(split, TensorSplit)
    pixels = split.images[index].numpy()
    image = Image.fromarray(pixels[0] if channels == 1 else pixels.transpose(1, 2, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return str(index), buffer.getvalue(), int(split.labels[index])


def write_shards(splits: DatasetSplits, out: Path, source: str, *, chunk_bytes: str = "64MB",
                 progress: Any = None) -> dict[str, Any]:
    """Each split of `splits` into out/<split>/ as litdata chunks, then out/reprocls_shards.json: classes, sizes,
    normalisation and every label, so training can plan its order without opening a chunk. The manifest is
    written last: a folder without one is an unfinished write and is refused when read."""
    writer_class = litdata().streaming.writer.BinaryWriter
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty; shards go into a new or empty folder, so nothing there is overwritten")
    out.mkdir(parents=True, exist_ok=True)
    root = (splits.split_record or {}).get("root")
    parts: dict[str, Any] = {}
    for name in PARTS:
        split = getattr(splits, name)
        if split is None or len(split) == 0:
            continue
        writer = writer_class(str(out / name), chunk_bytes=chunk_bytes)
        labels = []
        for index in range(len(split)):
            key, data, label = sample_bytes(split, index, splits.in_chans, root)
            writer.add_item(index, {"key": key, "image": data, "label": label})
            labels.append(label)
            if progress is not None:
                progress(name, index + 1, len(split))
        writer.done()
        writer.merge()
        chunks = json.loads((out / name / "index.json").read_text())["chunks"]
        parts[name] = {"count": len(split), "labels": labels, "chunk_sizes": [c["chunk_size"] for c in chunks]}
    manifest = {"format": FORMAT, "litdata_version": litdata().__version__, "source": source,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "classes": splits.classes,
                "in_chans": splits.in_chans, "image_size": splits.image_size, "native_size": splits.native_size,
                "mean": list(splits.mean), "std": list(splits.std), "interpolation": splits.interpolation,
                "skipped": splits.skipped, "splits": parts}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


# ---------------------------------------------------------------------------------------------------- reading

_OPEN: dict[tuple[int, int, str], Any] = {}  # (process, thread, location) -> a litdata StreamingDataset of its own


@dataclass
class ShardSplit:
    """One split stored as litdata chunks at `location`: labels known up front, images read by index on demand.
    `indices` maps our sample numbers to the stored ones (a limit_* subset); None is all of them in stored order."""

    location: str
    stored_labels: list[int]
    chunk_sizes: list[int]
    indices: np.ndarray | None = None
    cache_dir: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.stored_labels) if self.indices is None else len(self.indices)

    @property
    def labels(self) -> torch.Tensor:
        labels = torch.tensor(self.stored_labels, dtype=torch.long)
        return labels if self.indices is None else labels[torch.as_tensor(self.indices, dtype=torch.long)]

    def subset(self, indices: np.ndarray) -> ShardSplit:
        chosen = np.asarray(indices) if self.indices is None else self.indices[np.asarray(indices)]
        return ShardSplit(self.location, self.stored_labels, self.chunk_sizes, chosen, self.cache_dir)

    def labels_at(self, index: int) -> int:
        return self.stored_labels[self.stored_index(index)]

    def stored_index(self, index: int) -> int:
        return int(index) if self.indices is None else int(self.indices[index])

    def chunk_of(self) -> np.ndarray:
        """The chunk each of our samples lives in: the order keeps reads inside a few chunks at a time."""
        chunks = np.repeat(np.arange(len(self.chunk_sizes)), self.chunk_sizes)
        return chunks if self.indices is None else chunks[self.indices]

    def _dataset(self) -> Any:
        key = (os.getpid(), threading.get_ident(), self.location)
        if key not in _OPEN:
            options = {"cache_dir": self.cache_dir} if self.cache_dir else {}
            # batch_decode=0: our reads jump around a chunk, so decoding a window of records per read wastes ~50x
            _OPEN[key] = litdata().StreamingDataset(self.location, batch_decode=0, **options)
        return _OPEN[key]

    def sample(self, index: int) -> dict[str, Any]:
        """The stored record {key, image (encoded bytes), label} of our sample `index`."""
        return self._dataset()[self.stored_index(index)]

    def decode(self, index: int) -> tuple[Image.Image, str]:
        """The decoded image and its key; a sample that does not decode raises with the key in the message."""
        record = self.sample(index)
        try:
            image = Image.open(io.BytesIO(record["image"]))
            image.load()
        except Exception as error:
            raise ValueError(f"{self.location} sample {self.stored_index(index)} ({record['key']}): "
                             f"{type(error).__name__}: {error}") from None
        return image, record["key"]

    def problem(self, index: int) -> str | None:
        """Why sample `index` cannot be decoded, or None when it can."""
        try:
            self.decode(index)
        except ValueError as error:
            return str(error)
        return None


def read_manifest(root: str, cache_dir: str | None = None) -> dict[str, Any]:
    """reprocls_shards.json of a local or remote shard folder, with the error a user can act on."""
    if is_remote(root):
        downloader = litdata().streaming.downloader.get_downloader(root, cache_dir or tempfile.gettempdir(), [])
        local = Path(tempfile.mkdtemp()) / MANIFEST
        try:
            downloader.download_file(f"{root.rstrip('/')}/{MANIFEST}", str(local))
        except Exception as error:
            raise ConfigError(f"data.root: cannot read {root}/{MANIFEST} ({type(error).__name__}: {error})") from None
        text = local.read_text()
    else:
        path = Path(root.removeprefix("file://")).expanduser() / MANIFEST
        if not path.is_file():
            hint = ("an unfinished `reprocls data shard` (the manifest is written last): shard again into an empty "
                    "folder") if path.parent.is_dir() and any(path.parent.iterdir()) else \
                "write one with `reprocls data shard SOURCE OUT_DIR`"
            raise ConfigError(f"data.root: {path.parent} holds no {MANIFEST}; {hint}")
        text = path.read_text()
    manifest = json.loads(text)
    if manifest.get("format") != FORMAT or "splits" not in manifest:
        raise ConfigError(f"data.root: {root}/{MANIFEST} is not a reprocls shard manifest (format {manifest.get('format')!r})")
    return manifest


def manifest_splits(root: str, manifest: dict[str, Any]) -> dict[str, ShardSplit]:
    """Each split the manifest lists, as a ShardSplit under `root`."""
    return {name: ShardSplit(f"{root}/{name}", info["labels"], info["chunk_sizes"])
            for name, info in manifest["splits"].items()}


@DATASETS.register
def shards(data: DataConfig, seed: int) -> DatasetSplits:
    """Shards written by `reprocls data shard` (litdata chunks, local or remote), with the splits they were
    written with; limit_* take stratified subsets as for every dataset."""
    if not data.root:
        raise ConfigError("data.root: shards needs the folder (or s3://, gs://, ... URL) `reprocls data shard` wrote")
    root = data.root.rstrip("/")
    manifest = read_manifest(root)
    parts = manifest["splits"]
    if "train" not in parts or "test" not in parts:
        raise ConfigError(f"data.root: {root} has splits {sorted(parts)}; training needs train and test")
    made = manifest_splits(root, manifest)
    train, val, test = made["train"], made.get("val"), made["test"]
    classes = manifest["classes"]
    train, val, test = limited(train, val, test, data, seed, len(classes))
    notes = [f"shards of {manifest['source']} ({FORMAT} {manifest['litdata_version']}, written {manifest['created']})"]
    return DatasetSplits("shards", classes, manifest["in_chans"], manifest["image_size"], tuple(manifest["mean"]),
                         tuple(manifest["std"]), train, val, test, interpolation=manifest["interpolation"],
                         native_size=manifest["native_size"], notes=notes)


def check_shards(root: str, *, workers: int = 1) -> list[dict[str, Any]]:
    """Every sample of every split decoded once: the ones that fail, with split, stored index, key and error."""
    root = root.rstrip("/")
    bad: list[dict[str, Any]] = []
    for name, split in manifest_splits(root, read_manifest(root)).items():
        with ThreadPoolExecutor(max(1, workers)) as pool:
            problems = list(pool.map(split.problem, range(len(split))))
        bad += [{"split": name, "index": index, "key": split.sample(index)["key"], "error": problem}
                for index, problem in enumerate(problems) if problem is not None]
    return bad
