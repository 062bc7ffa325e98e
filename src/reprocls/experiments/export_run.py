"""`reprocls export`: a trained run's model in deployment formats, each checked against the eager model on real
test images before it is kept."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable

import torch

from reprocls import run_layout as layout
from reprocls.compress.export import deployment_metadata
from reprocls.compress.formats import EXPORT_FORMATS
from reprocls.data import make_loader
from reprocls.experiments.evaluate import load_trained_run

CHECK_IMAGES = 32  # real test images each export is compared on


def export_run(target: str | Path, formats: list[str], *, out: Path | None = None,
               say: Callable[[str], None] = print) -> list[Path]:
    """Export a run's model in every named format (EXPORT_FORMATS) into RUN/export (or `out`)."""
    exporters = [EXPORT_FORMATS.get(name) for name in formats]  # an unknown format fails before any work
    loaded = load_trained_run(target, device=torch.device("cpu"))
    folder = out or (loaded.run_dir or loaded.weights.parent) / layout.EXPORT
    folder.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(loaded.session.model).to(memory_format=torch.contiguous_format).float().eval()
    splits, config = loaded.session.splits, loaded.config
    loader = make_loader(splits.test, splits, config.data, train=False, device=torch.device("cpu"), seed=config.seed,
                         channels_last=False)
    images = next(iter(loader))[0][:CHECK_IMAGES]
    metadata = deployment_metadata(loaded.metadata)
    written: list[Path] = []
    for exporter in exporters:
        paths, message = exporter(model, images, folder / config.model.name, metadata)
        say(f"  {message}")
        written += paths
    return written
