"""Data: datasets by name, reproducible splits, v2 transform presets and fast loaders."""

from reprocls.data import image_folder  # noqa: F401  (registers the image_folder dataset)
from reprocls.data.datasets import DATASETS, DatasetSplits, FileSplit, TensorSplit, load_dataset
from reprocls.data.loaders import TensorLoader, make_loader

__all__ = ["DATASETS", "DatasetSplits", "FileSplit", "TensorLoader", "TensorSplit", "load_dataset", "make_loader"]
