"""Data: datasets by name, reproducible splits, v2 transform presets and fast loaders."""

from reprocls.data import image_folder, shards  # noqa: F401  (register the image_folder and shards datasets)
from reprocls.data.datasets import DATASETS, DatasetSplits, FileSplit, TensorSplit, load_dataset
from reprocls.data.loaders import TensorLoader, make_loader

__all__ = ["DATASETS", "DatasetSplits", "FileSplit", "TensorLoader", "TensorSplit", "load_dataset", "make_loader"]
