"""What the doctor's checks look at: the recipe, the keys its author set, and facts built on first use (the model on
the meta device, the dataset's native size and constants, a probe of the evaluation pipeline), so `diagnose`
trains nothing and loads no dataset it knows by name; and the findings they return, each naming the recipe key
to change and how."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
from torch import nn

from reprocls.config import ConfigError, RunConfig
from reprocls.data import DATASETS, DatasetSplits, FileSplit, TensorSplit, make_loader
from reprocls.data.check import find_unusable
from reprocls.data.datasets import IMAGENET_MEAN, IMAGENET_STD, DatasetFacts, convert_stats, known_facts, split_seed
from reprocls.data.folders import FolderScan, scan_folder
from reprocls.data.image_folder import native_size
from reprocls.data.transforms import Preprocessing
from reprocls.data.loaders import Loader
from reprocls.data.splits import stratified_split
from reprocls.data.stats import channel_stats
from reprocls.recipe import Shape, build_model, check_names, pretrained_preprocessing
from reprocls.registry import Registry

Severity = Literal["error", "warning", "info"]
SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "info": 2}

STATS_TOLERANCE = 0.05  # |mean or std difference| in [0, 1] pixel units: above sampling noise, below dataset gaps
STATS_SAMPLE = 200  # image_folder: training images measured for the normalisation check
PROBE_IMAGES = 4  # images pushed twice through the evaluation pipeline


@dataclass
class Finding:
    """One reason a reproduction may fall short: which check, how bad, the recipe key, what is wrong and the fix."""

    check: str
    severity: Severity
    key: str
    message: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


class Context:
    """What checks look at: the recipe, the keys its author set, the process count, and facts built on first use."""

    def __init__(self, config: RunConfig, explicit: set[str] | None, world_size: int) -> None:
        self.config, self.explicit, self.world_size = config, explicit, world_size

    @cached_property
    def native_splits(self) -> DatasetSplits:
        """A user-registered dataset as its loader returns it, before the recipe's overrides: only they need loading."""
        return DATASETS.get(self.config.data.name)(self.config.data, split_seed(self.config.data, self.config.seed))

    @cached_property
    def scan(self) -> FolderScan:
        """image_folder: classes, files and headers (cached), without decoding any pixels."""
        if not self.config.data.root:
            raise ConfigError("data.root: image_folder needs the path of a folder with one sub-folder per class")
        return scan_folder(Path(self.config.data.root).expanduser())

    @property
    def folder(self) -> tuple[Path, list[str], list[tuple[str, int]]]:
        """image_folder: (root, classes, samples) from the scan."""
        return self.scan.root, self.scan.classes, self.scan.samples

    @cached_property
    def weights(self) -> Preprocessing | None:
        """What the recipe's pretrained weights expect of their inputs (None from scratch or when they do not say)."""
        return pretrained_preprocessing(self.config)

    @cached_property
    def dataset(self) -> DatasetFacts:
        """The dataset's native size, channels, classes and normalisation constants."""
        name = self.config.data.name
        facts = known_facts(name)
        if facts is not None:
            return facts
        if name == "image_folder":
            scan = self.scan
            train = round(len(scan.samples) * self.config.data.split[0])
            side, _ = native_size(scan, [path for path, _ in scan.samples])
            return DatasetFacts(side, 1 if scan.grey() else 3, len(scan.classes), train, IMAGENET_MEAN, IMAGENET_STD)
        splits = self.native_splits
        train = len(splits.train) + (len(splits.val) if splits.val is not None else 0)
        return DatasetFacts(splits.image_size, splits.in_chans, splits.num_classes, train, splits.mean, splits.std)

    @property
    def image_size(self) -> int:
        """The side the model sees: data.image_size, else the weights' input size, else the dataset's own."""
        weights = self.weights.image_size if self.weights is not None else None
        return self.config.data.image_size or weights or self.dataset.image_size

    @property
    def in_chans(self) -> int:
        """Channels of the images the model sees: data.channels, else the dataset's own."""
        return self.config.data.channels or self.dataset.in_chans

    @property
    def train_images(self) -> int:
        """Training images per epoch after the validation carve-out and data.limit_train (approximate for folders)."""
        data, facts = self.config.data, self.dataset
        count = facts.train_images if data.name == "image_folder" else round(facts.train_images * (1 - data.val_fraction))
        return min(count, data.limit_train) if data.limit_train else count

    @property
    def native_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The dataset's constants converted to the recipe's channels, as the data layer converts them."""
        mean, std = self.dataset.mean, self.dataset.std
        return convert_stats(mean, self.in_chans), convert_stats(std, self.in_chans)

    @cached_property
    def model(self) -> nn.Module:
        """The recipe's model as training builds it, on the meta device: structure and attributes without memory."""
        return build_model(self.config, Shape(self.dataset.num_classes, self.in_chans, self.image_size), meta=True)

    @cached_property
    def measured_stats(self) -> tuple[list[float], list[float], int] | None:
        """image_folder: (mean, std, images) measured on a seeded sample of the training split; None if none decode."""
        root, _, samples = self.folder
        labels = np.array([label for _, label in samples])
        train = stratified_split(labels, list(self.config.data.split), split_seed(self.config.data, self.config.seed))[0]
        rng = np.random.default_rng(self.config.seed)
        chosen = rng.choice(train, size=min(STATS_SAMPLE, len(train)), replace=False) if len(train) else []
        paths = [root / samples[i][0] for i in sorted(chosen)]
        bad = {check.path for check in find_unusable(paths)}
        usable = [(str(path), 0) for path in paths if path not in bad]
        if not usable:
            return None
        mean, std = channel_stats(FileSplit(usable), channels=self.in_chans)
        return mean, std, len(usable)

    def eval_probe(self) -> tuple[Loader, DatasetSplits]:
        """The evaluation loader the data layer builds for this recipe, over a few images of the dataset's shape."""
        config, facts = self.config, self.dataset
        mean, std = self.native_stats  # normalisation does not change randomness; a bad data.mean is another check's
        own_eval = own_train = None
        if config.data.name == "image_folder":
            root, classes, samples = self.folder
            paths = [root / path for path, _ in samples[:2 * PROBE_IMAGES]]
            bad = {check.path for check in find_unusable(paths)}
            probe: TensorSplit | FileSplit = FileSplit([(str(path), 0) for path in paths if path not in bad][:PROBE_IMAGES])
        else:
            classes = [str(i) for i in range(facts.num_classes)]
            native = None if known_facts(config.data.name) is not None else self.native_splits
            if native is not None:
                own_eval, own_train = native.eval_transform, native.train_transform
            if native is not None and isinstance(native.test, FileSplit):
                probe = FileSplit(native.test.samples[:PROBE_IMAGES])
            else:
                generator = torch.Generator().manual_seed(0)
                images = torch.randint(0, 256, (PROBE_IMAGES, self.in_chans, facts.image_size, facts.image_size),
                                       dtype=torch.uint8, generator=generator)
                probe = TensorSplit(images, torch.zeros(PROBE_IMAGES, dtype=torch.long))
        splits = DatasetSplits(config.data.name, classes, self.in_chans, self.image_size, mean, std, probe, None, probe,
                               train_transform=own_train, eval_transform=own_eval)
        data = dataclasses.replace(config.data, workers=0, eval_batch_size=PROBE_IMAGES)
        loader = make_loader(probe, splits, data, train=False, device=torch.device("cpu"), seed=config.seed,
                             channels_last=False)
        return loader, splits


Check = Callable[[Context], list[Finding]]
CHECKS: Registry[Check] = Registry("doctor check")


def diagnose(config: RunConfig, *, explicit: set[str] | None = None, world_size: int = 1) -> list[Finding]:
    """Every registered check on a recipe, errors first. `explicit`: the dotted keys the recipe sets (None: unknown,
    so checks about unset keys stay quiet); `world_size`: the processes it will train on."""
    if world_size < 1:
        raise ConfigError(f"processes: {world_size} must be at least 1 (reprocls doctor --nproc, or $WORLD_SIZE)")
    check_names(config)
    context = Context(config, explicit, world_size)
    findings = [finding for name in CHECKS for finding in CHECKS.get(name)(context)]
    return sorted(findings, key=lambda finding: SEVERITY_ORDER[finding.severity])


def format_findings(findings: list[Finding]) -> str:
    """A terminal block: a count line, then per finding its severity, check, key, message and fix."""
    if not findings:
        return "reproduction doctor: no known reproduction pitfalls found"
    counts = [f"{n} {severity}{'s' if n > 1 else ''}" for severity in SEVERITY_ORDER
              if (n := sum(f.severity == severity for f in findings))]
    lines = [f"reproduction doctor: {', '.join(counts)}"]
    for finding in sorted(findings, key=lambda finding: SEVERITY_ORDER[finding.severity]):
        lines += [f"  {finding.severity.upper():<7}  {finding.check}  [{finding.key}]",
                  f"           {finding.message}",
                  f"           fix: {finding.fix}"]
    return "\n".join(lines)


