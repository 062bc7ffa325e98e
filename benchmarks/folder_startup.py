"""Start-up time of a run on a big image folder: command start to the first training step, on a fresh cache
(every header read and every file decoded once) and again with the cache warm.

Writes N small JPEGs (10 classes) once, then runs `reprocls train` on them twice in subprocesses with one
shared, initially empty $REPROCLS_CACHE, and reads the first step's time from results.json.

    .venv/bin/python benchmarks/folder_startup.py [--images 50000] [--size 32] [--folder /tmp/reprocls-50k]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_folder(root: Path, images: int, size: int) -> None:
    """`images` JPEGs of `size` px in 10 class folders (grey noise with a class-dependent brightness)."""
    if root.exists() and sum(1 for _ in root.rglob("*.jpg")) == images:
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for index in range(images):
        label = index % 10
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = np.clip(rng.normal(40 + 20 * label, 30, (size, size)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index:06d}.jpg", quality=90)


def timed_run(root: Path, cache: Path, out: Path, name: str, *extra: str) -> dict[str, float]:
    """Launch `reprocls train` for one step and return its start-up figures."""
    command = [sys.executable, "-m", "reprocls", "train", "quickstart", "data.name=image_folder", f"data.root={root}",
               "data.limit_train=256", "data.limit_eval=256", "data.batch_size=256", "schedule.epochs=1",
               "schedule.name=constant", "data.workers=2", f"output_dir={out}", f"name={name}", "-q", "--no-doctor",
               *extra]
    launched = time.time()
    subprocess.run(command, check=True, env={**os.environ, "REPROCLS_CACHE": str(cache)}, capture_output=True)
    results = json.loads(next(out.glob(f"{name}-*/results.json")).read_text())
    return {"to_first_step_s": results["first_step_unix"] - launched, "scan_and_setup_s": results["first_step_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--folder", default="/tmp/reprocls-folder-startup")
    args = parser.parse_args()
    root = Path(args.folder) / f"{args.images}x{args.size}"
    started = time.perf_counter()
    write_folder(root, args.images, args.size)
    print(f"{args.images} JPEGs of {args.size} px in {root} ({time.perf_counter() - started:.0f} s to write or find)")
    with tempfile.TemporaryDirectory() as work:
        cache, out = Path(work) / "cache", Path(work) / "runs"
        header = timed_run(root, Path(work) / "header-cache", out, "header", "data.verify_images=header")
        first = timed_run(root, cache, out, "first")
        second = timed_run(root, cache, out, "cached")
    for label, figures in (("first run, headers only (data.verify_images=header)", header),
                           ("first run (empty cache: headers read, every file decoded once)", first),
                           ("second run (cache warm)", second)):
        print(f"{label}: command start -> first training step {figures['to_first_step_s']:.1f} s "
              f"(of which after imports: {figures['scan_and_setup_s']:.1f} s)")


if __name__ == "__main__":
    main()
