"""Weights from elsewhere into a model of ours: torchvision or timm state dicts (.pth/.pt read with
weights_only=True, or .safetensors), reprocls runs and weights files. The classifier is re-initialised when the
class count differs and the first convolution is adapted when the channel count differs (summing or repeating the
RGB filters, as timm does); every other tensor must load, and the report says which did what. The reverse
direction, our weights in a reference library's key names, is `reference_state_dict`."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reprocls.config import ConfigError

WEIGHTS_FILE = "model.safetensors"  # a reprocls run folder's weights (run_layout.WEIGHTS; models sit below it)
LISTED = 5  # keys named in an error before "..."


@dataclass
class WeightsReport:
    """What loading a weights file did to each tensor of the model."""

    source: str
    loaded: list[str] = field(default_factory=list)
    adapted: dict[str, str] = field(default_factory=dict)  # key -> how, e.g. "3->1 input channels"
    reinitialized: list[str] = field(default_factory=list)
    metadata: dict[str, Any] | None = None  # a reprocls weights file's own record (classes, preprocessing)

    def summary(self) -> str:
        """One line for the console and the report: what was re-initialised, adapted and loaded."""
        parts = []
        if self.reinitialized:
            layers = sorted({key.rsplit(".", 1)[0] for key in self.reinitialized})
            parts.append(f"{', '.join(layers)} re-initialised")
        for key, how in self.adapted.items():
            parts.append(f"{key.rsplit('.', 1)[0]} adapted {how}")
        parts.append(f"{len(self.loaded)} tensors loaded from {self.source}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record.pop("metadata")
        return {**record, "summary": self.summary()}


def resolve_weights_path(path: str | Path) -> Path:
    """A run folder means its model.safetensors; anything else must be an existing file."""
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / WEIGHTS_FILE).exists():
            raise FileNotFoundError(f"{path} is a folder without {WEIGHTS_FILE}; pass a finished run folder or a weights file")
        return path / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    return path


def _not_safetensors(path: Path, error: Exception) -> ConfigError:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:120]
    return ConfigError(f"{path} is not a readable safetensors file ({first}): it is damaged, or another format under a "
                       ".safetensors name; reprocls reads weights only from real safetensors files or plain state-dict "
                       "pickles (.pth/.pt)")


def safetensors_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file; one-line ConfigError when the file is not one."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise _not_safetensors(Path(path), error) from None


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; one-line ConfigError when the file is not one (or is truncated)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, RuntimeError) as error:
        raise _not_safetensors(Path(path), error) from None


def load_plain_pickle(path: Path) -> Any:
    """torch.load with weights_only=True, its refusals turned into one line (nothing in the file ever runs)."""
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise ConfigError(f"refusing to load {path}: it holds Python objects that could run code when unpickled "
                          f"({(str(error).strip().splitlines() or [''])[0][:120]}). Load only tensors: save it as "
                          "torch.save(model.state_dict(), path) or as safetensors") from None
    except (RuntimeError, EOFError, ValueError) as error:
        raise ConfigError(f"{path} is not a PyTorch weights file ({(str(error).strip().splitlines() or [''])[0][:120]})"
                          ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file or a plain state-dict pickle, never executing code from the file."""
    path = resolve_weights_path(path)
    if path.suffix == ".safetensors":
        return load_safetensors(path)
    state = load_plain_pickle(path)
    for key in ("state_dict", "model", "model_ema"):  # common wrappers of training checkpoints
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return state


def read_metadata(path: str | Path) -> dict[str, Any] | None:
    """The 'reprocls' record a run's or an export's safetensors carries (classes, mean/std, size), if any."""
    path = resolve_weights_path(path)
    if path.suffix != ".safetensors":
        return None
    metadata = safetensors_metadata(path)
    try:
        record = json.loads(metadata["reprocls"]) if "reprocls" in metadata else None
    except ValueError:
        raise ConfigError(f"{path}: its reprocls metadata is not valid JSON; the file is damaged") from None
    return record if isinstance(record, dict) else None


def classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the final classification layer: get_classifier() where the model has it, else the last
    Linear layer (torchvision's fc, classifier.N, heads.head)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Module) or not any(True for _ in head.parameters()):
        linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
        head = linears[-1] if linears else None
    if head is None:
        return set()
    owned = {id(tensor) for tensor in [*head.parameters(), *head.buffers()]}
    return {key for key, tensor in model.state_dict(keep_vars=True).items() if id(tensor) in owned}


def first_conv_key(model: nn.Module) -> str | None:
    """The weight of the first convolution, the one that sees the input channels."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"{name}.weight" if name else "weight"
    return None


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """A first-layer kernel for another channel count: summed over RGB for one channel (a grey image is R = G = B),
    else the RGB filters repeated and scaled by 3 / in_chans (for a multiple of 3 channels the response to a
    constant image is unchanged), as timm adapts them."""
    trained = weight.shape[1]
    if in_chans == trained:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = math.ceil(in_chans / trained)
    return weight.repeat(1, repeats, 1, 1)[:, :in_chans] * (trained / in_chans)


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:LISTED]) + (" ..." if len(keys) > LISTED else "")


def load_pretrained(model: nn.Module, path: str | Path) -> WeightsReport:
    """Load a weights file into `model`: matching tensors load; a classifier of another class count keeps its fresh
    initialisation; a first convolution of another channel count is adapted; anything else that does not match is
    a ValueError naming the keys, because a backbone that half-loads trains into nonsense."""
    source = resolve_weights_path(path)
    state = read_state_dict(source)
    remap = getattr(model, "remap_state_dict", None)
    if remap is not None:
        state = remap(state)
    own = model.state_dict()
    head, stem = classifier_keys(model), first_conv_key(model)
    report = WeightsReport(str(source), metadata=read_metadata(source))
    loadable: dict[str, torch.Tensor] = {}
    wrong_shape, missing = [], []
    for key, target in own.items():
        if key not in state:
            (report.reinitialized if key in head else missing).append(key)
            continue
        value = state[key]
        if value.shape == target.shape:
            loadable[key] = value
            report.loaded.append(key)
        elif key in head:
            report.reinitialized.append(key)
        elif key == stem and value.ndim == 4 and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            loadable[key] = adapt_input_conv(value, target.shape[1])
            report.adapted[key] = f"{value.shape[1]}->{target.shape[1]} input channels"
        else:
            wrong_shape.append(f"{key} {tuple(value.shape)} vs {tuple(target.shape)}")
    unexpected = [key for key in state if key not in own]
    if wrong_shape or missing or unexpected:
        raise ValueError(f"{source} does not fit {type(model).__name__}: missing keys [{_listed(missing)}], unexpected keys "
                         f"[{_listed(unexpected)}], other shapes [{_listed(wrong_shape)}]; is it a checkpoint of this "
                         "architecture?")
    model.load_state_dict(loadable, strict=False)
    return report


def weights_preprocessing(model_name: str, path: str | Path | None) -> dict[str, Any] | None:
    """What the weights expect of their inputs: mean, std, input size, interpolation and crop fraction, from a
    reprocls weights file's own record, timm's pretrained config, or torchvision's weight metadata for the same
    architecture name (read from code, nothing is downloaded). None where the weights say nothing."""
    if path is not None:
        record = read_metadata(path)
        if record is not None:
            return {"source": f"reprocls weights {resolve_weights_path(path)}", "mean": record.get("mean"),
                    "std": record.get("std"), "image_size": record.get("image_size"),
                    "interpolation": record.get("interpolation"), "crop_fraction": record.get("crop_fraction")}
    library, _, external = model_name.partition("/")
    if library == "timm" and external:
        try:
            import timm

            cfg = timm.get_pretrained_cfg(external)
        except (ImportError, RuntimeError, KeyError):
            cfg = None
        if cfg is not None:
            return {"source": f"timm's pretrained config of {external}", "mean": tuple(cfg.mean), "std": tuple(cfg.std),
                    "image_size": int(cfg.input_size[-1]), "interpolation": cfg.interpolation or None,
                    "crop_fraction": float(cfg.crop_pct) if cfg.crop_pct else None}
        return None
    if path is None:
        return None
    import torchvision

    name = external if library == "torchvision" else model_name
    try:
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, KeyError, AttributeError):
        return None
    crop, resize = transforms.crop_size[0], transforms.resize_size[0]
    return {"source": f"torchvision's {name} weights", "mean": tuple(transforms.mean), "std": tuple(transforms.std),
            "image_size": int(crop), "interpolation": transforms.interpolation.value, "crop_fraction": crop / resize}


def reference_state_dict(model: nn.Module, reference: nn.Module) -> dict[str, torch.Tensor]:
    """Our model's tensors under a reference model's key names (torchvision's or timm's), so weights trained here
    load there with load_state_dict(strict=True). The key map is learned by sending the reference's own state
    through our remap_state_dict; tensors the reference derives (attention index buffers) are its own."""
    ours = model.state_dict()
    theirs = reference.state_dict()
    remap = getattr(model, "remap_state_dict", None)
    mapped = remap(dict(theirs)) if remap is not None else dict(theirs)
    origin = {id(tensor): key for key, tensor in theirs.items()}
    out = dict(theirs)
    for our_key, tensor in mapped.items():
        their_key = origin.get(id(tensor))
        if their_key is None or our_key not in ours:
            continue
        if ours[our_key].shape != theirs[their_key].shape:
            raise ValueError(f"{our_key} {tuple(ours[our_key].shape)} has no counterpart of that shape in the reference "
                             f"({their_key} {tuple(theirs[their_key].shape)}); build the reference with the same sizes")
        out[their_key] = ours[our_key].detach().clone()
    return out
