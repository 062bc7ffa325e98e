"""reprocls: reproduce image-classification papers with one recipe and one command.

The names below load on first use, so `import reprocls.config` (or the command line) does not build the model zoo.
"""

from __future__ import annotations

from typing import Any

from reprocls._version import __version__

_LAZY = {"create_model": "reprocls.models", "list_models": "reprocls.models", "register_model": "reprocls.models",
         "load": "reprocls.experiments.predict"}
__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reprocls' has no attribute {name!r}")
