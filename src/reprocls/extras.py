"""Optional extras: which pip extra brings which library, so a missing one is one line naming the install command
instead of a ModuleNotFoundError traceback."""

from __future__ import annotations

import importlib.util

# top-level module -> the extra of pyproject.toml that installs it
EXTRAS = {"optuna": "tune", "sqlalchemy": "tune", "psycopg": "tune", "onnx": "compress", "onnxruntime": "compress",
          "onnxscript": "compress", "torch_pruning": "compress", "torchao": "compress", "timm": "timm",
          "lightning": "bench"}


class MissingExtra(ImportError):
    """An optional library a command needs is not installed; the message is the one line to fix it."""


def install_hint(module: str, feature: str | None = None) -> str | None:
    """'<feature> needs the optional extra ...: pip install ...' for a module an extra provides, else None."""
    extra = EXTRAS.get(module.split(".")[0])
    if extra is None:
        return None
    needs = f"{feature} needs" if feature else "this needs"
    return f"{needs} the optional extra '{extra}' ({module.split('.')[0]} is not installed): pip install 'reprocls[{extra}]'"


def require(*modules: str, feature: str) -> None:
    """Raise MissingExtra for the first of `modules` that is not installed."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(install_hint(module, feature) or f"{feature} needs {module}: pip install {module}")
