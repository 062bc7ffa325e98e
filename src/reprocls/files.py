"""Atomic file writes: a crash, a kill or a full disk leaves the previous version of a file, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to a hidden temporary file beside `path`, flush it to disk, then rename it over `path`."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException:
        discard(temporary)
        raise
    return path


def discard(temporary: Path) -> None:
    """Remove a temporary file after a failed write; a folder that refuses even that must not hide the first error."""
    try:
        temporary.unlink(missing_ok=True)
    except OSError:
        pass


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    """JSON (indented; unknown types as strings) written atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, default=str))


def readable_mode() -> int:
    """The mode an ordinary new file gets (0o644 under the usual umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def canonical_safetensors(blob: bytes) -> bytes:
    """A safetensors file with its JSON header written in sorted key order: safetensors keeps the header's metadata
    in a hash map whose order changes from process to process, so the same tensors would not give the same bytes."""
    length = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the format pads the header to a multiple of 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + blob[8 + length:]


def write_safetensors(path: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> Path:
    """Tensors (no pickle) as a safetensors file, byte-identical for identical tensors and metadata, written to a
    temporary name, flushed and renamed, with the permissions of any other file."""
    from safetensors.torch import save

    path = Path(path)
    blob = canonical_safetensors(save(tensors, metadata=metadata))
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, readable_mode())
        temporary.replace(path)
    except BaseException:
        discard(temporary)
        raise
    return path
