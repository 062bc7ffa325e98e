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
        temporary.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, payload: Any) -> Path:
    """JSON (indented; unknown types as strings) written atomically."""
    return atomic_write_text(path, json.dumps(payload, indent=2, default=str))
