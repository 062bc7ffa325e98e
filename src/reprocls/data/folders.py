"""What an image folder holds: its classes and image files, read from the directory tree without decoding anything."""

from __future__ import annotations

from pathlib import Path

from reprocls.data.images import IMAGE_EXTENSIONS


def scan_image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sub-folder names, sorted) and (relative path, class) samples, skipping hidden files."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; set data.root to a folder with one sub-folder per class")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{root} has no class sub-folders; expected {root}/<class>/<image files>")
    samples = []
    for index, cls in enumerate(classes):
        for path in sorted((root / cls).rglob("*")):
            relative = path.relative_to(root)
            if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not any(p.startswith(".") for p in relative.parts):
                samples.append((relative.as_posix(), index))
    return classes, samples
