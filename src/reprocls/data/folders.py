"""What an image folder holds: its classes and image files from the directory tree, and each file's header (size,
mode, or why it is no image) read without decoding pixels. Header reads, and full decodes once made, are cached by
(path, size, mtime), so a second run over the same folder starts at once; under torchrun only rank 0 reads the
folder and the others receive its scan."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch.distributed as dist
from PIL import Image, UnidentifiedImageError

from reprocls.data.images import IMAGE_EXTENSIONS
from reprocls.files import atomic_write_json
from reprocls.progress import Progress

CACHE_VERSION = 1
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "La")


def cache_dir() -> Path:
    """Where folder scans are cached: $REPROCLS_CACHE, else ~/.cache/reprocls (XDG_CACHE_HOME respected)."""
    if os.environ.get("REPROCLS_CACHE"):
        return Path(os.environ["REPROCLS_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "reprocls"


def scan_image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sub-folder names, sorted) and (relative path, class) samples, skipping hidden files and folders."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; set data.root to a folder with one sub-folder per class")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{root} has no class sub-folders; expected {root}/<class>/<image files>")
    samples = []
    for index, cls in enumerate(classes):
        samples += [(relative, index) for relative in _image_files(root, cls)]
    return classes, samples


def _image_files(root: Path, folder: str) -> list[str]:
    """Relative paths of the image files under root/folder, sorted, hidden ones left out."""
    found = []
    for current, subfolders, files in os.walk(root / folder):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        base = Path(current).relative_to(root)
        found += [(base / name).as_posix() for name in files
                  if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found, key=lambda relative: Path(relative).parts)  # the order splits are drawn from


@dataclass(frozen=True)
class FileHeader:
    """One file as its header describes it: size and mode, or the problem that makes it unusable."""

    width: int = 0
    height: int = 0
    mode: str = ""
    problem: str | None = None  # a data.check category: zero_bytes, not_an_image, decompression_bomb, unreadable
    detail: str = ""


def read_header(path: Path) -> FileHeader:
    """Open a file as an image without decoding its pixels, under Pillow's default pixel limit."""
    try:
        if path.stat().st_size == 0:
            return FileHeader(problem="zero_bytes", detail="0 bytes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height, mode = image.width, image.height, image.mode
        limit = Image.MAX_IMAGE_PIXELS
        if limit is not None and width * height > limit:
            return FileHeader(width, height, mode, "decompression_bomb",
                              f"{width}x{height} = {width * height} pixels, over Pillow's limit of {limit}")
        return FileHeader(width, height, mode)
    except Image.DecompressionBombError as error:
        return FileHeader(problem="decompression_bomb", detail=str(error))
    except UnidentifiedImageError:
        return FileHeader(problem="not_an_image", detail="Pillow does not recognise the content as any image format")
    except Exception as error:  # any failure to read a header is a finding about the file, never a crash
        return FileHeader(problem="unreadable", detail=f"{type(error).__name__}: {error}")


@dataclass
class FolderScan:
    """A class-per-folder tree: classes, (relative path, class) samples, and each sample's header."""

    root: Path
    classes: list[str]
    samples: list[tuple[str, int]]
    headers: dict[str, FileHeader]
    decoded: dict[str, list[str]] = field(default_factory=dict)  # path -> [category, detail] of a full decode ('' ok)
    cached: int = 0  # files whose header came from the cache
    signatures: dict[str, list[int]] = field(default_factory=dict, repr=False)  # path -> [size, mtime_ns] read at

    def grey(self) -> bool:
        """Whether every usable image is grey (so one channel loses nothing)."""
        modes = {header.mode for header in self.headers.values() if header.problem is None}
        return bool(modes) and modes <= set(GREY_MODES)

    def sizes(self) -> list[tuple[int, int]]:
        return [(h.width, h.height) for h in self.headers.values() if h.problem is None]


def _cache_path(root: Path) -> Path:
    return cache_dir() / "folders" / f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:24]}.json"


def _read_cache(root: Path) -> dict[str, Any]:
    try:
        payload = json.loads(_cache_path(root).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION or payload.get("root") != str(root.resolve()):
        return {}
    files = payload.get("files")
    return files if isinstance(files, dict) else {}


def _signature(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def write_cache(scan: FolderScan) -> None:
    """Store the headers and decode results, keyed by path with the size and mtime they were read at."""
    files = {}
    for path, header in scan.headers.items():
        signature = scan.signatures.get(path)
        if signature is None:
            continue
        files[path] = {"sig": signature, "header": [header.width, header.height, header.mode, header.problem, header.detail],
                       "decoded": scan.decoded.get(path)}
    target = _cache_path(scan.root)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(target, {"version": CACHE_VERSION, "root": str(scan.root.resolve()), "files": files})
    except OSError:
        pass  # a cache that cannot be written only costs the next run its head start


def scan_folder(root: Path, *, show_progress: bool = False) -> FolderScan:
    """Classes, samples and headers of an image folder; headers come from the cache where the file is unchanged.
    Under torchrun, rank 0 scans and broadcasts, so N processes do not read the folder N times."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box: list[Any] = [None]
        if dist.get_rank() == 0:
            try:
                box = [_scan(root, show_progress)]
            except Exception as error:  # every process must leave the broadcast with the same outcome
                box = [error]
        dist.broadcast_object_list(box, src=0)
        if isinstance(box[0], Exception):
            raise box[0]
        return box[0]
    return _scan(root, show_progress)


def _scan(root: Path, show_progress: bool) -> FolderScan:
    classes, samples = scan_image_folder(root)
    cached = _read_cache(root)
    headers: dict[str, FileHeader] = {}
    decoded: dict[str, list[str]] = {}
    signatures: dict[str, list[int]] = {}
    todo = []
    for path, _ in samples:
        entry = cached.get(path)
        try:
            signature = signatures[path] = _signature(root / path)
        except OSError:
            signature = None
        if entry is not None and entry.get("sig") == signature:
            width, height, mode, problem, detail = entry["header"]
            headers[path] = FileHeader(width, height, mode, problem, detail)
            if entry.get("decoded") is not None:
                decoded[path] = entry["decoded"]
        else:
            todo.append(path)
    progress = Progress(len(todo), "reading image headers", enabled=show_progress and len(todo) >= 2000)
    for path in todo:  # serial: a header read is ~0.1 ms, less than a thread pool's hand-over costs
        headers[path] = read_header(root / path)
        progress.update(1)
    progress.close()
    scan = FolderScan(root, classes, samples, headers, decoded, cached=len(samples) - len(todo), signatures=signatures)
    if todo:
        write_cache(scan)
    return scan
