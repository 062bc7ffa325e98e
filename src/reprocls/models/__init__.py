"""Model registry: `create_model(name, **kwargs)` builds any registered architecture."""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from reprocls.models._weights import (WeightsReport, load_pretrained, load_safetensors, read_state_dict,
                                      safetensors_metadata)
from reprocls.registry import Registry

MODELS: Registry = Registry("model")
register_model = MODELS.register


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, optionally filtered by a shell-style pattern ('resnet*')."""
    return MODELS.names(pattern)


def create_model(name: str, *, weights: str | Path | None = None, **kwargs: Any) -> nn.Module:
    """Build a model by name from plain keyword arguments (num_classes, in_chans, ...).

    `timm/<name>` and `torchvision/<name>` build those libraries' models; `weights` loads a checkpoint file
    (safetensors, a torchvision/timm `.pth` state dict, or a reprocls run folder) into the model, with the head
    and first convolution fitted to num_classes and in_chans; `model.weights_report` says what loaded.
    """
    prefix, _, external = name.partition("/")
    if external:
        model = _create_external(prefix, external, kwargs, weights)
    else:
        model = MODELS.get(name)(**kwargs)
    if weights is not None:
        load_weights(model, weights)
    return model


def _create_external(library: str, name: str, kwargs: dict[str, Any], weights: str | Path | None) -> nn.Module:
    """Models of timm or torchvision, with our keyword names mapped onto theirs. timm's `pretrained: true` with a
    weights file loads that file (offline); without one, timm fetches its own weights, which needs a network."""
    if library == "timm":
        try:
            import timm
        except ImportError:
            raise ImportError(
                f"'timm/{name}' needs timm, an optional extra: pip install 'reprocls[timm]' (or pip install timm)"
            ) from None
        pretrained = bool(kwargs.pop("pretrained", False)) and weights is None  # a given file is loaded by us
        try:
            return timm.create_model(name, pretrained=pretrained, **kwargs)
        except (OSError, RuntimeError) as error:
            if not pretrained:
                raise
            raise ValueError(f"timm/{name}: timm could not fetch its pretrained weights ({str(error).splitlines()[0]}); "
                             "on a machine without a network, download the file elsewhere and set model.weights to it") from None
    if library == "torchvision":
        import torchvision

        in_chans = kwargs.pop("in_chans", 3)
        if in_chans != 3:
            raise ValueError(f"torchvision/{name} takes 3-channel input; use a reprocls model for in_chans={in_chans}")
        return torchvision.models.get_model(name, weights=None, **kwargs)
    raise KeyError(f"unknown model library {library!r} in {library}/{name}: use 'timm/<name>' or 'torchvision/<name>'")


def load_weights(model: nn.Module, path: str | Path) -> WeightsReport:
    """Load a checkpoint into `model`, mapping foreign key names, re-initialising a classifier of another class count
    and adapting a first convolution of another channel count (see models/_weights.py)."""
    report = load_pretrained(model, path)
    model.weights_report = report  # type: ignore[attr-defined]
    return report


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared tensors once), as papers and torchvision's `num_params` count them."""
    return sum(p.numel() for p in model.parameters())


def warn_if_input_too_small(model: nn.Module, image_size: int) -> str | None:
    """Warn when a network designed for large images (a downsampling stem, default >= 128 px) meets <= 64 px inputs."""
    stride = getattr(model, "stem_stride", 1)
    designed_for = getattr(model, "designed_input_size", 224)
    if image_size <= 64 and stride >= 2 and designed_for >= 128:
        message = (
            f"{type(model).__name__} has an ImageNet-style stem (downsamples {stride}x, designed for {designed_for}px) "
            f"but inputs are {image_size}px: small images lose most of their detail before the first block. "
            "Use a small-image variant (resnet20, stem='cifar', head='cifar', vit_ti_4, swin_t_2) or upscale the inputs."
        )
        warnings.warn(message, stacklevel=2)
        return message
    return None


# Every module in this package that does not start with '_' is a model family (or spaces.py, the search spaces
# over them): importing it registers it.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODELS", "count_params", "create_model", "list_models", "load_weights", "load_safetensors", "read_state_dict", "register_model", "safetensors_metadata", "warn_if_input_too_small"]
