"""Find what in an image folder would stop training or quietly skew it, before a run spends hours on it.

`inspect_image` decodes one file completely under Pillow's default safety limits and names what is wrong with
it; `check_folder` runs it over a whole class-per-folder tree and adds what only the tree shows (empty classes,
hidden and ignored files, duplicates). Training (`data.on_bad_image`) and `reprocls data check` share it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from PIL import Image, UnidentifiedImageError

from reprocls.config import ConfigError
from reprocls.data.folders import FolderScan, scan_image_folder, write_cache
from reprocls.data.images import IMAGE_EXTENSIONS, conversion_note, to_mode
from reprocls.progress import Progress

ERROR, WARNING = "error", "warning"
PROGRESS_FROM = 200  # images; smaller folders finish before a bar would help
SKIP_HINT = "or train with data.on_bad_image=skip"


@dataclass(frozen=True)
class Category:
    """One kind of problem: how bad it is, how the report titles it and what the user should do."""

    severity: str
    title: str
    advice: str


CATEGORIES: dict[str, Category] = {
    "zero_bytes": Category(ERROR, "zero-byte file", f"delete it (the copy failed?), {SKIP_HINT}"),
    "not_an_image": Category(ERROR, "not an image", f"delete it or fix its extension, {SKIP_HINT}"),
    "truncated": Category(ERROR, "truncated image", f"copy it again from the source or delete it, {SKIP_HINT}"),
    "unreadable": Category(ERROR, "unreadable image", f"re-export it as PNG/JPEG or delete it, {SKIP_HINT}"),
    "decompression_bomb": Category(ERROR, "decompression bomb", f"downscale it below Pillow's pixel limit or delete it, {SKIP_HINT}"),
    "empty_class": Category(ERROR, "class without usable images", "add images to the folder or delete it"),
    "too_few_classes": Category(ERROR, "fewer than 2 classes", "give each class its own sub-folder: ROOT/<class>/<images>"),
    "unusual_mode": Category(WARNING, "unusual mode", "none needed, it is converted as shown; convert it yourself for another choice"),
    "hidden_file": Category(WARNING, "hidden file", "ignored by training; delete it to keep the folder clean"),
    "non_image_file": Category(WARNING, "non-image file", f"ignored by training (extensions read: {' '.join(IMAGE_EXTENSIONS)}); move it out"),
    "outside_class": Category(WARNING, "file outside class folders", "ignored by training; move it into its class folder"),
    "duplicate": Category(WARNING, "duplicate image", "delete the copies; a copy in two classes is a label conflict"),
    "duplicate_across_splits": Category(WARNING, "duplicate across splits", "the test leaks into training: delete copies, then re-split"),
}


@dataclass(frozen=True)
class Problem:
    """One finding: its category, the file or folder (relative to the root) and what exactly was seen."""

    category: str
    path: str
    detail: str = ""

    @property
    def severity(self) -> str:
        return CATEGORIES[self.category].severity


@dataclass(frozen=True)
class ImageCheck:
    """What decoding one file showed: a problem category (None when fine), the image mode and a content digest."""

    path: Path
    category: str | None = None
    detail: str = ""
    mode: str | None = None
    digest: str | None = None

    @property
    def usable(self) -> bool:
        """Training can decode and convert it (an unusual mode is only a warning)."""
        return self.category is None or CATEGORIES[self.category].severity != ERROR


def _failure(path: Path, error: BaseException) -> ImageCheck:
    """Map a Pillow or OS exception to the category a user can act on."""
    text = str(error) or type(error).__name__
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageCheck(path, "decompression_bomb", text)
    if isinstance(error, UnidentifiedImageError):
        return ImageCheck(path, "not_an_image", "Pillow does not recognise the content as any image format")
    if isinstance(error, OSError) and "truncated" in text:
        return ImageCheck(path, "truncated", text)
    return ImageCheck(path, "unreadable", f"{type(error).__name__}: {text}")


def inspect_image(path: Path, *, digest: bool = False) -> ImageCheck:
    """Open and fully decode one file under Pillow's default limits, then convert it as training would."""
    try:
        if path.stat().st_size == 0:
            return ImageCheck(path, "zero_bytes", "0 bytes")
        with Image.open(path) as image:
            limit = Image.MAX_IMAGE_PIXELS  # read, never changed: the default is what protects training
            pixels = image.width * image.height
            if limit is not None and pixels > limit:  # Pillow only warns between 1x and 2x the limit
                return ImageCheck(path, "decompression_bomb", f"{image.width}x{image.height} = {pixels} pixels, over Pillow's "
                                  f"limit of {limit}", image.mode)
            image.load()  # decodes every byte: a cut file fails here, not at Image.open
            note = conversion_note(image)
            if note is not None:
                to_mode(image, 3)  # the conversion training will apply must work too
            content = None
            if digest:
                hasher = hashlib.blake2b(f"{image.mode} {image.size}".encode(), digest_size=16)
                hasher.update(bytes(image.getpalette() or []) if image.mode in ("P", "PA") else b"")
                hasher.update(image.tobytes())
                content = hasher.hexdigest()
            return ImageCheck(path, "unusual_mode" if note else None, note or "", image.mode, content)
    except Exception as error:  # any failure to decode is a finding, never a crash of the checker
        return _failure(path, error)


CHUNK = 256  # files a thread checks per hand-over: one task per file costs more than decoding a small image


def inspect_images(paths: list[Path], *, digest: bool = False, workers: int = 1,
                   progress: Progress | None = None) -> list[ImageCheck]:
    """`inspect_image` over many files in threads (Pillow decodes without the GIL), in the order given."""
    def chunk(part: list[Path]) -> list[ImageCheck]:
        return [inspect_image(path, digest=digest) for path in part]

    results: list[ImageCheck] = []
    parts = [paths[i:i + CHUNK] for i in range(0, len(paths), CHUNK)]
    with warnings.catch_warnings():
        # over-limit images are reported as findings; filtered once here, not per thread, as warning filters are global
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for checked in pool.map(chunk, parts):
                if progress is not None:
                    for _ in checked:
                        progress.update(1)
                results += checked
    return results


def find_unusable(paths: list[Path], *, workers: int = 1, show_progress: bool = False) -> list[ImageCheck]:
    """The files training could not decode (errors only): the up-front check of `data.on_bad_image`."""
    progress = Progress(len(paths), "checking images", enabled=show_progress)
    try:
        return [check for check in inspect_images(paths, workers=workers, progress=progress) if not check.usable]
    finally:
        progress.close()


def decode_failures(scan: FolderScan, paths: list[str], *, workers: int = 1) -> dict[str, tuple[str, str]]:
    """{path: (category, detail)} of the files among `paths` that training could not decode, by a full decode of
    each, remembered in the folder's cache so an unchanged file is decoded once."""
    todo = [path for path in paths if path not in scan.decoded]
    if todo:
        for check in find_unusable_all([scan.root / p for p in todo], workers=workers, show_progress=len(todo) >= 5000):
            relative = check.path.relative_to(scan.root).as_posix()
            scan.decoded[relative] = ["" if check.usable else check.category or "", check.detail]
        write_cache(scan)
    return {path: (scan.decoded[path][0], scan.decoded[path][1]) for path in paths if scan.decoded[path][0]}


def find_unusable_all(paths: list[Path], *, workers: int = 1, show_progress: bool = False) -> list[ImageCheck]:
    """`inspect_image` of every file (usable or not), with a progress bar."""
    progress = Progress(len(paths), "checking images", enabled=show_progress)
    try:
        return inspect_images(paths, workers=workers, progress=progress)
    finally:
        progress.close()


# ------------------------------------------------------------------------------------------------ folders


@dataclass
class FolderReport:
    """Everything `check_folder` found, with the images per class it would train on."""

    root: Path
    images_per_class: dict[str, int]
    files: int
    usable_images: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == WARNING]

    def counts(self) -> dict[str, int]:
        """Findings per category, in the fixed order of CATEGORIES."""
        found = Counter(p.category for p in self.problems)
        return {name: found[name] for name in CATEGORIES if found[name]}

    def to_dict(self) -> dict[str, Any]:
        return {"root": str(self.root), "files": self.files, "usable_images": self.usable_images,
                "images_per_class": self.images_per_class, "errors": len(self.errors), "warnings": len(self.warnings),
                "counts": self.counts(),
                "problems": [{**asdict(p), "severity": p.severity} for p in self.problems]}

    def format(self, show: int = 10) -> str:
        """A table grouped by problem, errors first, each group with its count, advice and up to `show` files."""
        lines = [f"{self.root}: {len(self.images_per_class)} classes, {self.files} files, "
                 f"{self.usable_images} usable images"]
        counts = self.counts()
        width = max([len(CATEGORIES[c].title) for c in counts] + [7])
        for severity, heading in ((ERROR, "ERRORS (training stops on these)"), (WARNING, "WARNINGS (training works; worth a look)")):
            kinds = [c for c in counts if CATEGORIES[c].severity == severity]
            if not kinds:
                continue
            lines += ["", heading, f"  {'problem'.ljust(width)}  count  what to do"]
            for category in kinds:
                info = CATEGORIES[category]
                lines.append(f"  {info.title.ljust(width)}  {counts[category]:>5}  {info.advice}")
                found = [p for p in self.problems if p.category == category]
                for problem in found[:show]:
                    lines.append(f"      {problem.path}" + (f"  ({problem.detail})" if problem.detail else ""))
                if len(found) > show:
                    lines.append(f"      ... and {len(found) - show} more (--show N or --json lists them)")
        errors, warned = len(self.errors), len(self.warnings)
        if not self.problems:
            lines += ["", "No problems found."]
        else:
            verdict = "fix the errors, or train with data.on_bad_image=skip" if errors else "no errors: safe to train"
            lines += ["", f"{errors} error(s), {warned} warning(s): {verdict}"]
        return "\n".join(lines)


def _layout_problems(root: Path) -> list[Problem]:
    """Hidden files, files training ignores and files outside class folders: what `scan_image_folder` skips."""
    problems: list[Problem] = []
    classes = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            problems.append(Problem("hidden_file", entry.name, "hidden folder" if entry.is_dir() else ""))
        elif entry.is_dir():
            classes.append(entry.name)
        else:
            problems.append(Problem("outside_class", entry.name, "directly in the root, not in a class folder"))
    for name in classes:
        for folder, subfolders, files in os.walk(root / name):
            here = Path(folder)
            for sub in sorted(subfolders):
                if sub.startswith("."):
                    problems.append(Problem("hidden_file", (here / sub).relative_to(root).as_posix(), "hidden folder"))
            subfolders[:] = sorted(s for s in subfolders if not s.startswith("."))
            for file in sorted(files):
                relative = (here / file).relative_to(root).as_posix()
                if file.startswith("."):
                    problems.append(Problem("hidden_file", relative))
                elif Path(file).suffix.lower() not in IMAGE_EXTENSIONS:
                    problems.append(Problem("non_image_file", relative, f"extension {Path(file).suffix or '(none)'}"))
    return problems


def _read_split_names(splits_file: Path) -> dict[str, str]:
    """Relative path -> 'train'/'val'/'test' from a run's splits.json."""
    try:
        record = json.loads(Path(splits_file).read_text())
    except json.JSONDecodeError as error:
        raise ConfigError(f"--splits {splits_file}: not JSON ({error}); pass the splits.json of a run folder") from None
    missing = [name for name in ("train", "val", "test") if not isinstance(record, dict) or name not in record]
    if missing:
        raise ConfigError(f"--splits {splits_file}: no {', '.join(missing)} list; pass the splits.json of a run folder")
    return {path: name for name in ("train", "val", "test") for path in record[name]}


def _duplicates(checks: Iterable[ImageCheck], root: Path, split_of: dict[str, str] | None) -> list[Problem]:
    """Identical decoded images: within the folder, or (with a splits.json) in different splits."""
    groups: dict[str, list[str]] = defaultdict(list)
    for check in checks:
        if check.digest is not None:
            groups[check.digest].append(check.path.relative_to(root).as_posix())
    problems = []
    for paths in sorted(g for g in groups.values() if len(g) > 1):
        classes = sorted({p.split("/")[0] for p in paths})
        where = f"classes {' and '.join(classes)}: label conflict" if len(classes) > 1 else f"class {classes[0]}"
        if split_of is None:
            problems.append(Problem("duplicate", paths[0], f"same pixels as {', '.join(paths[1:])}; {where}"))
            continue
        splits = {p: split_of.get(p, "unsplit") for p in paths}
        if len(set(splits.values()) - {"unsplit"}) > 1:
            placed = ", ".join(f"{p} in {s}" for p, s in splits.items())
            problems.append(Problem("duplicate_across_splits", paths[0], f"{placed}; {where}"))
    return problems


def check_folder(root: str | Path, *, splits_file: str | Path | None = None, workers: int = 1,
                 show_progress: bool = True) -> FolderReport:
    """Check every file of a class-per-folder image tree; see CATEGORIES for what is reported."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; pass the root of ROOT/<class>/<image files>")
    split_of = _read_split_names(Path(splits_file)) if splits_file else None
    problems = _layout_problems(root)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples = scan_image_folder(root)[1] if classes else []  # exactly the files training would read
    candidates = [root / path for path, _ in samples]
    progress = Progress(len(candidates), "checking images", enabled=show_progress and len(candidates) >= PROGRESS_FROM)
    try:
        checks = inspect_images(candidates, digest=True, workers=workers, progress=progress)
    finally:
        progress.close()
    usable = Counter()
    found = Counter()
    for check in checks:
        found[check.path.relative_to(root).parts[0]] += 1
        if check.category is not None:
            problems.append(Problem(check.category, check.path.relative_to(root).as_posix(), check.detail))
        if check.usable:
            usable[check.path.relative_to(root).parts[0]] += 1
    for name in classes:
        if not usable[name]:
            detail = f"all {found[name]} image(s) are unusable" if found[name] else "no image files"
            problems.append(Problem("empty_class", name + "/", detail))
    if len(classes) < 2:
        problems.append(Problem("too_few_classes", ".", f"found {len(classes)}: {', '.join(classes) or 'none'}"))
    problems += _duplicates((c for c in checks if c.usable), root, split_of)
    order = list(CATEGORIES)
    problems.sort(key=lambda p: (order.index(p.category), p.path))
    return FolderReport(root, {name: usable[name] for name in classes}, len(checks) + sum(
        p.category in ("hidden_file", "non_image_file", "outside_class") for p in problems), sum(usable.values()), problems)
