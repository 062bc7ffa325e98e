"""A user's own images: root/<class>/<image files>, split train/val/test by a seeded stratified rule (7:2:1 by
default). The folder is read by headers (cached), so starting a run does not decode every file; the image size and
channel count follow the images themselves unless the recipe or the weights say otherwise."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

from reprocls.config import ConfigError, DataConfig
from reprocls.data.check import CATEGORIES, decode_failures
from reprocls.data.datasets import DATASETS, IMAGENET_MEAN, IMAGENET_STD, DatasetSplits, FileSplit
from reprocls.data.folders import FolderScan, scan_folder
from reprocls.data.splits import check_limits, stratified_split, stratified_subset

BAD_IMAGES_LISTED = 20
PARTS = ("train", "val", "test")


def bad_images(scan: FolderScan, paths: list[str], data: DataConfig) -> list[dict[str, str]]:
    """Files training cannot use: by their header, and (data.verify_images=decode) by a full decode, whose result the
    folder's cache keeps for the next run. With on_bad_image=error any is a ConfigError listing them."""
    found = {path: (scan.headers[path].problem, scan.headers[path].detail) for path in paths
             if scan.headers[path].problem is not None}
    if data.verify_images == "decode":
        rest = [path for path in paths if path not in found]
        found.update(decode_failures(scan, rest, workers=max(1, data.workers)))
    skipped = [{"path": path, "reason": reason, "detail": detail} for path, (reason, detail) in found.items()]
    if skipped and data.on_bad_image == "error":
        listed = "\n".join(f"  {s['path']}: {CATEGORIES[s['reason']].title} ({s['detail']})" for s in skipped[:BAD_IMAGES_LISTED])
        more = f"\n  ... and {len(skipped) - BAD_IMAGES_LISTED} more" if len(skipped) > BAD_IMAGES_LISTED else ""
        raise ConfigError(f"data.on_bad_image=error: {len(skipped)} of {len(paths)} images under {scan.root} cannot be "
                          f"decoded:\n{listed}{more}\nRun `reprocls data check {scan.root}` for the full report, or set "
                          "data.on_bad_image=skip to train without them.")
    return skipped


def require_usable_classes(root: Path, classes: list[str], samples: list[tuple[str, int]]) -> None:
    """Two or more classes, each with an image: otherwise the model gets outputs no image ever trains."""
    if len(classes) < 2:
        raise ConfigError(f"data.root: {root} has {len(classes)} class folder(s) {classes}; a classifier needs at least 2, "
                          f"as {root}/<class>/<image files>")
    counts = np.bincount([label for _, label in samples], minlength=len(classes))
    empty = [cls for cls, count in zip(classes, counts) if count == 0]
    if empty:
        raise ConfigError(f"data.root: class folder(s) {empty} under {root} have no usable images; add images or delete "
                          f"the folder(s) (`reprocls data check {root}` shows why)")


def native_size(scan: FolderScan, paths: list[str]) -> tuple[int, str]:
    """The side to train at when the recipe gives none: the images' own when they are square and agree, else the
    median of their shorter sides, with the reason in words."""
    sizes = [(scan.headers[p].width, scan.headers[p].height) for p in paths]
    if not sizes:
        return 224, "no image sizes known; 224 px"
    if len(set(sizes)) == 1 and sizes[0][0] == sizes[0][1]:
        return sizes[0][0], f"{sizes[0][0]} px: every image is {sizes[0][0]}x{sizes[0][1]}"
    side = int(statistics.median(min(w, h) for w, h in sizes))
    low, high = min(sizes, key=lambda s: s[0] * s[1]), max(sizes, key=lambda s: s[0] * s[1])
    return side, (f"{side} px: the images range from {low[0]}x{low[1]} to {high[0]}x{high[1]}, {side} is the median of "
                  "their shorter sides (set data.image_size to choose another)")


def _split_from_file(data: DataConfig, scan: FolderScan) -> tuple[list[list[tuple[str, int]]], dict]:
    """The train/val/test lists of an earlier run's splits.json, against the folder's classes; every entry must be
    an image of this folder (no absolute paths, no ../), so a split file can never point the run outside data.root."""
    where = f"data.split_file: {data.split_file}"
    try:
        record = json.loads(Path(data.split_file).expanduser().read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigError(f"{where} cannot be read as JSON ({str(error)[:120]}); pass the splits.json of an earlier run")
    if not isinstance(record, dict) or not all(isinstance(record.get(name), list) for name in ("classes", *PARTS)):
        raise ConfigError(f"{where} is not a splits.json: it needs lists 'classes', 'train', 'val' and 'test'")
    if record["classes"] != scan.classes:
        raise ConfigError(f"{where} was made for classes {str(record['classes'])[:200]}, but {scan.root} has "
                          f"{scan.classes}")
    index = {cls: i for i, cls in enumerate(scan.classes)}
    known = {path for path, _ in scan.samples}
    for name in PARTS:
        for entry in record[name]:
            if not isinstance(entry, str) or entry not in known:
                raise ConfigError(f"{where}: {name} entry {str(entry)[:120]!r} is not an image under {scan.root} (entries "
                                  "are <class>/<file> paths inside data.root)")
    return [[(p, index[p.split("/")[0]]) for p in record[name]] for name in PARTS], record


@DATASETS.register
def image_folder(data: DataConfig, seed: int) -> DatasetSplits:
    """root/<class>/<image> folders split train/val/test; bad files stop the run, or with data.on_bad_image=skip are
    left out before splitting (so the split depends only on the good files and the seed) and listed in `skipped`."""
    if not data.root:
        raise ConfigError("data.root: image_folder needs the path of a folder with one sub-folder per class")
    root = Path(data.root).expanduser()
    scan = scan_folder(root, show_progress=True)
    if data.split_file:
        parts, record = _split_from_file(data, scan)
        skipped = bad_images(scan, [p for part in parts for p, _ in part], data)
        bad = {s["path"] for s in skipped}
        parts = [[sample for sample in part if sample[0] not in bad] for part in parts]
        require_usable_classes(root, scan.classes, [sample for part in parts for sample in part])
        if bad:
            record = {**record, **{name: [p for p, _ in part] for name, part in zip(PARTS, parts)}}
    else:
        skipped = bad_images(scan, [p for p, _ in scan.samples], data)
        bad = {s["path"] for s in skipped}
        samples = [sample for sample in scan.samples if sample[0] not in bad]
        require_usable_classes(root, scan.classes, samples)
        indices = stratified_split(np.array([label for _, label in samples]), list(data.split), seed)
        parts = [[samples[i] for i in part] for part in indices]
        record = {"root": str(root.resolve()), "seed": seed, "ratios": list(data.split), "classes": scan.classes}
        record.update({name: [p for p, _ in part] for name, part in zip(PARTS, parts)})
    train, val, test = (FileSplit([(str(root / p), label) for p, label in part]) for part in parts)
    check_limits(data.limit_train, data.limit_eval, len(scan.classes))
    if data.limit_train is not None:
        train = FileSplit([train.samples[i] for i in stratified_subset(train.labels.numpy(), data.limit_train, seed)])
    if data.limit_eval is not None:
        val, test = (FileSplit([part.samples[i] for i in stratified_subset(part.labels.numpy(), data.limit_eval, seed)])
                     if len(part) else part for part in (val, test))
    side, why = native_size(scan, [p for part in parts for p, _ in part])
    channels = 1 if scan.grey() else 3
    notes = [f"image size {why}", f"{channels} channel(s): " + ("every image is grey" if channels == 1 else "colour images")]
    if scan.cached:
        notes.append(f"{scan.cached} of {len(scan.samples)} file headers from the cache")
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else ((sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,))
    return DatasetSplits("image_folder", scan.classes, channels, side, mean, std, train, val if len(val) else None, test,
                         record, skipped, native_size=side, notes=notes)
