"""A trained model on new images: `reprocls.load(run)` and `reprocls predict`. The model and its evaluation
preprocessing come from the weights file's own metadata (no recipe, no data folder needed); predictions run in
the precision the model was evaluated in, so they match `reprocls eval` image for image."""

from __future__ import annotations

import csv
import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from reprocls import run_layout as layout
from reprocls.compress.export import eval_pipeline, load_exported
from reprocls.data.images import IMAGE_EXTENSIONS, to_mode
from reprocls.engine.precision import autocast, resolve_device, resolve_precision
from reprocls.engine.tta import TTA, tta_logits
from reprocls.models import safetensors_metadata
from reprocls.progress import Progress

ImageInput = Image.Image | str | Path


@dataclass
class Prediction:
    """The k most probable classes of one image, most probable first; `label` is the folder's class when known."""

    classes: list[str]
    probabilities: list[float]
    path: str | None = None
    label: str | None = None

    @property
    def top1(self) -> str:
        return self.classes[0]

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"path": self.path, "predictions": [{"class": c, "probability": p}
                                                                      for c, p in zip(self.classes, self.probabilities)]}
        if self.label is not None:
            record["label"] = self.label
        return record


class _Files(Dataset):
    """Image files decoded and preprocessed in DataLoader workers."""

    def __init__(self, paths: list[str], transform: Any, channels: int) -> None:
        self.paths, self.transform, self.channels = paths, transform, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.transform(to_mode(image, self.channels))


class Predictor:
    """A trained classifier with its preprocessing: predict(image, path, list of them, or a preprocessed batch)."""

    def __init__(self, model: torch.nn.Module, metadata: dict[str, Any], *, device: str | torch.device = "auto",
                 precision: str = "fp32") -> None:
        self.device = resolve_device(device) if isinstance(device, str) else device
        self.model = model.to(self.device).eval()
        self.metadata = metadata
        self.classes: list[str] = list(metadata["classes"])
        self.channels = int(metadata["in_chans"])
        self.transform = eval_pipeline(metadata)
        self.amp_dtype = resolve_precision(precision, self.device)

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """One image (PIL or path) as the model's evaluation data was prepared: (C, H, W) float."""
        if isinstance(image, (str, Path)):
            with Image.open(image) as opened:
                return self.transform(to_mode(opened, self.channels))
        return self.transform(to_mode(image, self.channels))

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor, tta: TTA = "none") -> torch.Tensor:
        """Softmax over classes for a preprocessed (N, C, H, W) batch."""
        with autocast(self.device, self.amp_dtype):
            logits = tta_logits(self.model, batch.to(self.device), tta)
        return logits.float().softmax(1).cpu()

    def _rank(self, probabilities: torch.Tensor, top_k: int, paths: list[str | None]) -> list[Prediction]:
        k = min(top_k, len(self.classes))
        values, indices = probabilities.topk(k, dim=1)
        return [Prediction([self.classes[i] for i in row], [float(v) for v in probs], path)
                for row, probs, path in zip(indices.tolist(), values.tolist(), paths)]

    def predict(self, inputs: ImageInput | list[ImageInput] | torch.Tensor, *, top_k: int = 1,
                tta: TTA = "none") -> Prediction | list[Prediction]:
        """Classes and probabilities for one image (a Prediction), a list of them, or a preprocessed batch (lists)."""
        if isinstance(inputs, torch.Tensor):
            batch = inputs if inputs.ndim == 4 else inputs.unsqueeze(0)
            return self._rank(self.probabilities(batch, tta), top_k, [None] * len(batch))
        single = not isinstance(inputs, list)
        items = [inputs] if single else inputs
        batch = torch.stack([self.preprocess(item) for item in items])
        paths = [str(item) if isinstance(item, (str, Path)) else None for item in items]
        ranked = self._rank(self.probabilities(batch, tta), top_k, paths)
        return ranked[0] if single else ranked

    def predict_files(self, paths: list[str], *, top_k: int = 1, batch_size: int = 64, workers: int = 0,
                      tta: TTA = "none", progress: bool = False) -> Iterator[Prediction]:
        """Predictions for many files, decoded in DataLoader workers, in the order given."""
        loader = DataLoader(_Files(paths, self.transform, self.channels), batch_size=batch_size, num_workers=workers)
        bar = Progress(len(loader), "predicting", enabled=progress)
        done = 0
        for batch in loader:
            yield from self._rank(self.probabilities(batch, tta), top_k, paths[done:done + len(batch)])
            done += len(batch)
            bar.update(len(batch))
        bar.close()


def load(target: str | Path, *, device: str | torch.device = "auto", precision: str | None = None) -> Predictor:
    """A Predictor from a run folder, its model.safetensors, or exported safetensors (with their JSON sidecar).
    `precision` defaults to the run's own (train.precision), so predictions equal `reprocls eval`'s."""
    path = Path(target)
    weights = path / layout.WEIGHTS if path.is_dir() else path
    if path.is_dir() and not weights.exists() and (path / layout.INT8_PROGRAM).exists():
        weights = path / layout.INT8_PROGRAM
    if not weights.exists():
        raise FileNotFoundError(f"{weights} does not exist; pass a run folder, its {layout.WEIGHTS} or exported weights")
    model, metadata = load_exported(weights)
    if metadata.get("compressed"):  # pruned and INT8 models run on the CPU in float (INT8 kernels are x86 CPU ones)
        device, precision = torch.device("cpu"), "fp32"
    if precision is None:
        precision = "fp32"
        if weights.suffix == ".safetensors":
            config = json.loads(safetensors_metadata(weights).get("config") or "{}")
            precision = (config.get("train") or {}).get("precision") or "fp32"
    return Predictor(model, metadata, device=device, precision=precision)


def expand_paths(patterns: Iterable[str]) -> list[tuple[str, str | None]]:
    """(image path, class label or None) for files, folders (recursively) and glob patterns. A folder whose
    sub-folders are classes gives each image its sub-folder's name as label (checked against the model later)."""
    found: list[tuple[str, str | None]] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                               and not any(part.startswith(".") for part in p.relative_to(path).parts)):
                parts = file.relative_to(path).parts
                found.append((str(file), parts[0] if len(parts) > 1 else None))
        elif path.is_file():
            found.append((str(path), None))
        else:
            matches = sorted(glob.glob(str(path), recursive=True))
            if not matches:
                raise FileNotFoundError(f"{pattern}: no such file or folder, and no file matches it as a pattern")
            found += [(match, None) for match in matches if Path(match).suffix.lower() in IMAGE_EXTENSIONS]
    if not found:
        raise FileNotFoundError(f"no image files ({' '.join(IMAGE_EXTENSIONS)}) in {' '.join(patterns)}")
    return found


def predict_paths(predictor: Predictor, patterns: list[str], *, top_k: int = 1, batch_size: int = 64,
                  workers: int = 0, tta: TTA = "none", progress: bool = False) -> dict[str, Any]:
    """Predictions for every image the patterns name; with class folders matching the model's classes, also the
    accuracy against those labels."""
    items = expand_paths(patterns)
    known = set(predictor.classes)
    labelled = all(label in known for _, label in items)
    predictions = list(predictor.predict_files([path for path, _ in items], top_k=top_k, batch_size=batch_size,
                                               workers=workers, tta=tta, progress=progress))
    summary: dict[str, Any] = {"images": len(predictions), "classes": predictor.classes, "tta": tta,
                               "predictions": predictions}
    if labelled:
        for prediction, (_, label) in zip(predictions, items):
            prediction.label = label
        summary["accuracy"] = sum(p.top1 == p.label for p in predictions) / len(predictions)
    return summary


def write_csv(path: str | Path, predictions: list[Prediction]) -> Path:
    """One row per image: path, label (if known), then class and probability for each of the top k."""
    k = max(len(p.classes) for p in predictions)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", *[f"{kind}_{i + 1}" for i in range(k) for kind in ("class", "probability")]])
        for p in predictions:
            writer.writerow([p.path, p.label or "", *[v for pair in zip(p.classes, p.probabilities) for v in pair]])
    return Path(path)


__all__ = ["Prediction", "Predictor", "expand_paths", "load", "predict_paths", "write_csv"]
