"""Deterministic stratified splits: the same labels and seed always give the same partition."""

from __future__ import annotations

import numpy as np

from reprocls.config import ConfigError


def stratified_split(labels: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Partition indices so every class is divided by `fractions`; each part is sorted."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        cuts = np.round(bounds * len(members)).astype(int)
        start = 0
        for part, stop in zip(parts, cuts):
            part.append(members[start:stop])
            start = stop
    return [np.sort(np.concatenate(p)) if p else np.empty(0, dtype=int) for p in parts]


def carve_validation(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: a stratified share of the training set held out for model selection."""
    if val_fraction <= 0:
        return np.arange(len(labels)), np.empty(0, dtype=int)
    train, val = stratified_split(labels, [1 - val_fraction, val_fraction], seed)
    return train, val


def stratified_subset(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Exactly `count` indices (sorted) drawn with the class balance of the whole set: each class gets its share
    rounded down, and the images left over go to the classes with the largest remainders (ties: lower class)."""
    labels = np.asarray(labels)
    if count >= len(labels):
        return np.arange(len(labels))
    classes, sizes = np.unique(labels, return_counts=True)
    exact = sizes * count / len(labels)
    quota = np.floor(exact).astype(int)
    order = np.lexsort((classes, -(exact - quota)))  # largest remainder first, then class order
    quota[order[:count - quota.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = []
    for cls, take in zip(classes, quota):
        members = np.flatnonzero(labels == cls)
        chosen.append(members[rng.permutation(len(members))][:take])
    return np.sort(np.concatenate(chosen))


def check_limits(limit_train: int | None, limit_eval: int | None, classes: int) -> None:
    """A limit smaller than the number of classes cannot keep one image of each: the metrics would be meaningless."""
    for key, limit in (("data.limit_train", limit_train), ("data.limit_eval", limit_eval)):
        if limit is not None and limit < classes:
            raise ConfigError(f"{key}: {limit} image(s) cannot hold one of each of the {classes} classes; give at least "
                              f"{classes}, or null for all")
