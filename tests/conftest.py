"""Shared fixtures: a Fashion-MNIST root prepared once, and image folders written from real images."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# Under pytest-xdist (make test runs `-n auto`) the CPU cores are shared between the workers: each takes its share,
# and so do the processes it starts, so no two torch thread pools spin against each other on one core.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, min(2, (os.cpu_count() or 1) // WORKERS))
torch.set_num_threads(THREADS)
if WORKERS > 1:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
# folder scans are cached; tests keep theirs out of the user's ~/.cache (subprocesses inherit this)
os.environ["REPROCLS_CACHE"] = tempfile.mkdtemp(prefix="reprocls-test-cache-")

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist_available() -> bool:
    return (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists()


requires_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_available(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding Fashion-MNIST in torchvision's layout, unpacked once per test session."""
    if not fashion_mnist_available():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    from reprocls.config import DataConfig
    from reprocls.data.datasets import _prepare_mnist_root

    root = tmp_path_factory.mktemp("data")
    _prepare_mnist_root("fashion_mnist", "FashionMNIST", DataConfig(root=str(root)))
    return root


@pytest.fixture(scope="session")
def fmnist_splits(fmnist_root: Path):
    """The full Fashion-MNIST splits (54k/6k/10k), loaded once."""
    from reprocls.config import DataConfig
    from reprocls.data import load_dataset

    return load_dataset(DataConfig(root=str(fmnist_root)), seed=0)


@pytest.fixture(scope="session")
def fmnist_folder(fmnist_splits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image folder of real Fashion-MNIST PNGs: 3 classes x 60 images, as a user's own data would look."""
    root = tmp_path_factory.mktemp("folder")
    images, labels = fmnist_splits.test.images, fmnist_splits.test.labels
    for cls, name in [(1, "trouser"), (7, "sneaker"), (8, "bag")]:
        (root / name).mkdir()
        for i, index in enumerate(torch.nonzero(labels == cls).flatten()[:60].tolist()):
            Image.fromarray(images[index, 0].numpy()).convert("RGB").save(root / name / f"{i:03d}.png")
    return root


def write_random_folder(root: Path, classes: dict[str, int], size: int = 16, seed: int = 0) -> Path:
    """An image folder of random RGB PNGs, count per class as given."""
    rng = np.random.default_rng(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i:03d}.png")
    return root
