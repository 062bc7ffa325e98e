"""Resumable checkpoints that survive kills, full disks and tampering: atomic folders, checksums, safe loading.

A checkpoint is a folder `step-<N>/` holding `weights.safetensors` (model and EMA tensors), `state.pt` (optimizer,
schedule, scaler, counters, RNG states; loaded only with `torch.load(weights_only=True)`) and `manifest.json`
(step, epoch, config hash and the SHA-256 of both files), written last so a folder without it is incomplete.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from reprocls.files import write_safetensors
from reprocls.run_layout import CHECKPOINT_STEP, TEMPORARY_CHECKPOINT

WEIGHTS, STATE, MANIFEST = "weights.safetensors", "state.pt", "manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or trusted; the message says what is intact and what to do."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file or folder to the disk, so a power loss after the rename cannot leave an empty file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(folder: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                     info: dict[str, Any]) -> Path:
    """Write step-<step>/ next to the older checkpoints, all or nothing: a temporary folder, fsync, one rename."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{CHECKPOINT_STEP}{step:09d}"
    temporary = folder / f"{TEMPORARY_CHECKPOINT}{step:09d}-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir()
        write_safetensors(temporary / WEIGHTS, {k: v.detach().contiguous().cpu() for k, v in tensors.items()})
        torch.save(state, temporary / STATE)
        manifest = {**info, "step": step, "files": {name: sha256(temporary / name) for name in (WEIGHTS, STATE)}}
        (temporary / MANIFEST).write_text(json.dumps(manifest, indent=2))
        for name in (WEIGHTS, STATE, MANIFEST):
            _fsync(temporary / name)
        _fsync(temporary)
        if final.exists():  # the same step saved again (an epoch end that is also an every-N step)
            shutil.rmtree(final)
        os.replace(temporary, final)
        _fsync(folder)
    except (OSError, RuntimeError, SafetensorError) as error:  # a full disk inside torch.save or safetensors is no OSError
        shutil.rmtree(temporary, ignore_errors=True)
        reason = getattr(error, "strerror", None) or (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CheckpointError(f"could not write checkpoint {final.name} ({reason}); earlier checkpoints are untouched "
                              f"({intact_list(folder)}). Free space in {folder} and continue with --resume auto.") from error
    return final


def intact_list(folder: Path) -> str:
    """The finished checkpoints of a folder, for messages that promise they are intact."""
    kept = sorted(p.name for p in checkpoint_folders(folder))
    return ", ".join(kept) or "none yet"


def checkpoint_folders(folder: Path) -> list[Path]:
    """Finished checkpoint folders (temporary ones excluded), in no particular order."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_STEP)]


def verify(path: Path) -> dict[str, Any]:
    """The manifest of an intact checkpoint; CheckpointError when a file is missing, truncated or altered."""
    manifest_path = path / MANIFEST
    if not manifest_path.exists():
        raise CheckpointError(f"{path} has no {MANIFEST}: the write did not finish")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{manifest_path} is damaged ({error})") from None
    problem = manifest_problem(manifest)
    if problem:
        raise CheckpointError(f"{manifest_path} is malformed: {problem}")
    for name, expected in manifest["files"].items():
        if not (path / name).exists():
            raise CheckpointError(f"{path / name} is missing")
        if sha256(path / name) != expected:
            raise CheckpointError(f"{path / name} does not match its checksum: truncated or altered")
    return manifest


def manifest_problem(manifest: Any) -> str | None:
    """What makes a manifest unusable, or None: it must name both files with their digests and say its step, so a
    tampered one can neither crash the loader nor switch the checksums off."""
    if not isinstance(manifest, dict):
        return f"expected a JSON object, got {type(manifest).__name__}"
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {WEIGHTS, STATE} or not all(
            isinstance(v, str) and len(v) == 64 for v in files.values()):
        return f"'files' must give the SHA-256 of {WEIGHTS} and {STATE}"
    for key in ("step", "epoch"):
        if isinstance(manifest.get(key), bool) or not isinstance(manifest.get(key), int) or manifest[key] < 0:
            return f"'{key}' must be a whole number >= 0"
    if not isinstance(manifest.get("config"), dict):
        return "'config' must be the recipe as a mapping"
    return None


def newest_valid(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The intact checkpoint with the highest step, warning about each damaged one passed over."""
    candidates = []
    for path in checkpoint_folders(folder):
        try:
            candidates.append((verify(path), path))
        except CheckpointError as error:
            warnings.warn(f"skipping damaged checkpoint: {error}", stacklevel=2)
    if not candidates:
        return None
    manifest, path = max(candidates, key=lambda item: item[0]["step"])
    return path, manifest


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """(tensors, training state, manifest) of a verified checkpoint; never unpickles anything but plain data."""
    manifest = verify(path)
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(f"refusing to load {path / STATE}: it holds Python objects that could run code when "
                              f"unpickled ({str(error).splitlines()[0]}). reprocls loads training state only with "
                              "torch.load(weights_only=True) and has no unsafe fallback; use checkpoints you wrote.") from None
    return load_file(str(path / WEIGHTS)), state, manifest


def prune(folder: Path, keep: int, best_step: int | None) -> None:
    """Delete all but the `keep` newest checkpoints and the best one."""
    steps = []
    for path in checkpoint_folders(folder):
        try:
            manifest = json.loads((path / MANIFEST).read_text())
            if manifest_problem(manifest):
                continue
            steps.append((manifest["step"], path))
        except (OSError, ValueError, KeyError):
            continue  # damaged: left for inspection, never chosen by newest_valid
    steps.sort(reverse=True)
    for index, (step, path) in enumerate(steps):
        if index >= keep and step != best_step:
            shutil.rmtree(path, ignore_errors=True)


def rng_states() -> dict[str, Any]:
    """Every RNG the run draws from, as plain data that weights_only loading accepts."""
    version, values, gauss = random.getstate()
    name, keys, position, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": [version, list(values), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    version, values, gauss = states["python"]
    random.setstate((version, tuple(values), gauss))
    name, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
