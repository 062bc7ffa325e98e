"""`reprocls probe RUN`: the linear probe of a pretraining run: the frozen backbone's features of train, val and
test computed once, a softmax classifier fitted on train with its weight decay chosen on val, test scored once;
beside it the same probe on a randomly initialised backbone, the baseline a self-supervised claim must beat."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reprocls import run_layout as layout
from reprocls.config import ConfigError, RunConfig, load_config
from reprocls.data import make_loader
from reprocls.engine.selfsup.knn import extract_features
from reprocls.engine.selfsup.probe import linear_probe
from reprocls.files import atomic_write_json
from reprocls.recipe import Session, build_model, prepare, seed_everything
from reprocls.reports.pretrain_page import write_pretrain_pages


def probe_backbone(config: RunConfig, session: Session, backbone: nn.Module, *, echo=print) -> dict[str, Any]:
    """Features of every split from a frozen backbone, then the probe; returns the chosen weight decay, every
    validation score and the test top-1."""
    started = time.perf_counter()
    splits = session.splits
    if splits.val is None or len(splits.val) == 0:
        raise ConfigError("data.val_fraction: the probe chooses its weight decay on a validation split and this recipe "
                          "has none; give it one (e.g. data.val_fraction=0.1)")
    backbone.reset_classifier(0)
    common = dict(device=session.device, seed=config.seed, channels_last=session.channels_last)
    features = {name: extract_features(backbone, make_loader(split, splits, config.data, train=False, **common),
                                       session.device)
                for name, split in (("train", splits.train), ("val", splits.val), ("test", splits.test))}
    extracted = time.perf_counter()
    echo(f"features: {features['train'][0].shape[1]} per image, {len(features['train'][0])} train / "
         f"{len(features['val'][0])} val / {len(features['test'][0])} test images in {extracted - started:.0f} s")
    result = linear_probe(features["train"], features["val"], splits.num_classes, test=features["test"])
    return {"weight_decay": result.weight_decay, "val_top1": {f"{k:g}": v for k, v in result.val_accuracy.items()},
            "test_top1": result.test_accuracy, "features": int(features["train"][0].shape[1]),
            "train_images": len(features["train"][0]), "feature_seconds": extracted - started,
            "probe_seconds": time.perf_counter() - extracted}


def random_backbone(config: RunConfig, session: Session) -> nn.Module:
    """The recipe's model freshly initialised at its seed, on the session's device: the probe's baseline."""
    seed_everything(config.seed)
    model = build_model(dataclasses.replace(config, model=dataclasses.replace(config.model, weights=None)),
                        session.splits)
    memory = torch.channels_last if session.channels_last else torch.contiguous_format
    return model.to(session.device, memory_format=memory)


def probe_run(run_dir: str | Path, overrides: list[str] | None = None, *, random_init: bool = True,
              echo=print) -> dict[str, Any]:
    """Probe a finished pretraining run (and a random-init backbone of the same recipe); writes probe.json and
    redraws the run's pages."""
    run_dir = Path(run_dir)
    if not layout.is_pretraining_run(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a finished `reprocls pretrain` run folder (its results.json of kind "
                                "pretrain is missing); pass the folder `reprocls pretrain` printed")
    config = load_config(run_dir / layout.CONFIG, overrides or [])
    pretrained = dataclasses.replace(config, model=dataclasses.replace(config.model, weights=str(run_dir)))
    session = prepare(pretrained)  # data loaded once; both backbones see the same splits
    record = probe_backbone(pretrained, session, session.model, echo=echo)
    echo(f"linear probe ({record['train_images']} train images): test top-1 {100 * record['test_top1']:.2f} % "
         f"(weight decay {record['weight_decay']:g}, chosen on val)")
    record["random_init"] = None
    if random_init:
        record["random_init"] = probe_backbone(pretrained, session, random_backbone(config, session), echo=echo)
        gain = record["test_top1"] - record["random_init"]["test_top1"]
        echo(f"random-init backbone, same probe: test top-1 {100 * record['random_init']['test_top1']:.2f} %; "
             f"pretraining adds {100 * gain:+.2f} points")
    atomic_write_json(run_dir / layout.PROBE_JSON, record)
    write_pretrain_pages(run_dir)
    echo(f"probe: {run_dir / layout.PROBE_JSON}")
    return record
