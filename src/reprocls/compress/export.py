"""Deployable copies of a trained model: ONNX, a torch.export program, or safetensors weights with a JSON sidecar.

Each format carries what a user needs to classify an image without our recipe: the class names, the input size
and channels, and the normalisation the model was trained with (`preprocess` applies it to a PIL image).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import warnings
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from reprocls._version import __version__
from reprocls.files import atomic_write_text, write_safetensors
from reprocls.data.images import to_mode
from reprocls.data.transforms import EVAL_CROP_RATIO, eval_transform, resolve_preset
from reprocls.config import ConfigError
from reprocls.models import MODELS, create_model, load_safetensors, load_weights, safetensors_metadata

SIDECAR_SUFFIX = ".json"
INPUT_NAME, OUTPUT_NAME = "images", "logits"  # ONNX graph names a user sees in onnxruntime and Netron
REQUIRED = ("model", "num_classes", "in_chans", "classes", "image_size", "mean", "std")


class ExportMismatchError(ValueError):
    """An exported model computes something else than the eager model it came from."""


# ----------------------------------------------------------------------------------------------- metadata

def deployment_metadata(weights_metadata: Mapping[str, str]) -> dict[str, Any]:
    """What a deployed model needs, from the string metadata of a run's model.safetensors (or of an export)."""
    if "reprocls" not in weights_metadata:
        raise ConfigError("these weights carry no 'reprocls' metadata: not written by a reprocls run or export")
    try:
        info = json.loads(weights_metadata["reprocls"])
        config = json.loads(weights_metadata.get("config") or "{}")
    except ValueError:
        raise ConfigError("the weights' 'reprocls' metadata is not valid JSON: the file is damaged") from None
    missing = [key for key in REQUIRED if not isinstance(info, dict) or key not in info]
    if missing or not isinstance(config, dict):
        raise ConfigError(f"the weights' 'reprocls' metadata lacks {missing}; re-save the model with a current reprocls")
    name = info["model"]
    kwargs = dict(info.get("model_kwargs") or {})
    if "/" not in name and name in MODELS and "img_size" in inspect.signature(MODELS.get(name)).parameters:
        kwargs.setdefault("img_size", info["image_size"])  # the run built token-grid models for the data's size
    resize = info.get("resize") or _eval_resize(info, config.get("data") or {})
    metadata = {key: info[key] for key in REQUIRED}
    metadata.update(model_kwargs=kwargs, resize=resize, weights=info.get("weights", "raw"), dataset=info.get("dataset"),
                    interpolation=info.get("interpolation") or "bilinear", compressed=info.get("compressed"))
    if resize == "center_crop":
        metadata["crop_ratio"] = info.get("crop_fraction") or EVAL_CROP_RATIO
    return metadata


def _eval_resize(info: dict[str, Any], data: dict[str, Any]) -> str:
    """How the run resized images for evaluation: 'center_crop' (ImageNet style) or 'square' (plain resize)."""
    preset = data.get("preset", "auto")
    if info.get("dataset") == "image_folder":  # files: per-image eval_transform of the resolved preset
        crop = resolve_preset(preset, info["image_size"]) == "imagenet"
    else:  # small in-memory images: a plain tensor resize, unless forced through the per-image path
        crop = data.get("in_memory") == "no" and preset == "imagenet"
    return "center_crop" if crop else "square"


def _stamped(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata plus who wrote it and when, so a file found later can be traced to its code."""
    missing = [key for key in REQUIRED if key not in metadata]
    if missing:
        raise ValueError(f"export metadata lacks {missing}; build it with deployment_metadata() from a run's weights")
    stamped = {"model_kwargs": {}, "resize": "square", **metadata}
    stamped.update(reprocls_version=__version__, torch_version=torch.__version__,
                   created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   input_shape=[stamped["in_chans"], stamped["image_size"], stamped["image_size"]])
    return stamped


def eval_pipeline(metadata: Mapping[str, Any]) -> v2.Compose:
    """The evaluation transform of a trained model, decoded image -> normalised tensor, from its metadata."""
    channels = int(metadata["in_chans"])
    if len(metadata["mean"]) != channels or len(metadata["std"]) != channels:
        raise ValueError(f"metadata has {channels} input channels but mean/std of length "
                         f"{len(metadata['mean'])}/{len(metadata['std'])}")
    preset = "imagenet" if metadata.get("resize", "square") == "center_crop" else "small"
    return eval_transform(preset, image_size=int(metadata["image_size"]), mean=tuple(metadata["mean"]),
                          std=tuple(metadata["std"]), interpolation=metadata.get("interpolation") or "bilinear",
                          crop_fraction=metadata.get("crop_ratio") or EVAL_CROP_RATIO)


def preprocess(image: Image.Image, metadata: Mapping[str, Any]) -> torch.Tensor:
    """A (1, C, H, W) float batch from any PIL image, prepared exactly as the model's evaluation data was."""
    return eval_pipeline(metadata)(to_mode(image, int(metadata["in_chans"]))).unsqueeze(0)


# ------------------------------------------------------------------------------------------------ helpers

@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the export (BatchNorm statistics, no dropout), the caller's mode back afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _tracing_example(example_input: torch.Tensor, dynamic_batch: bool) -> torch.Tensor:
    """torch.export specialises a batch of 1 to a constant, so a dynamic batch is traced on two copies."""
    if dynamic_batch and example_input.shape[0] == 1:
        return torch.cat([example_input, example_input])
    return example_input


def _temporary(path: Path) -> Path:
    """A hidden name beside the target, with its suffix kept (torch.export.save warns on a name not ending in .pt2)."""
    return path.with_name(f".{path.stem}.tmp{path.suffix}")


def _batch_dim(dynamic_batch: bool) -> tuple[dict[int, Any]] | None:
    """Positional dynamic_shapes, so the forward argument's name does not matter."""
    return ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None


# ---------------------------------------------------------------------------------------------------- ONNX

def export_onnx(model: nn.Module, example_input: torch.Tensor, path: str | Path, *, dynamic_batch: bool = True,
                metadata: Mapping[str, Any] | None = None) -> Path:
    """One self-contained .onnx file (weights inside, opset of torch's dynamo exporter), metadata in metadata_props."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _tracing_example(example_input, dynamic_batch)
    with _eval_mode(model), torch.no_grad():
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=_batch_dim(dynamic_batch),
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False)
    if metadata is not None:
        stamped = _stamped(metadata)
        program.model.metadata_props.update(
            {key: value if isinstance(value, str) else json.dumps(value) for key, value in stamped.items()})
        program.model.metadata_props["reprocls"] = json.dumps(stamped)  # the whole record, for read_onnx_metadata
    temporary = _temporary(path)
    program.save(temporary, external_data=False)
    temporary.replace(path)
    return path


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata export_onnx embedded, parsed back from the model's metadata_props."""
    import onnx

    props = {prop.key: prop.value for prop in onnx.load(str(path), load_external_data=False).metadata_props}
    if "reprocls" not in props:
        raise ValueError(f"{path} carries no reprocls metadata; export it with export_onnx(..., metadata=...)")
    return json.loads(props["reprocls"])


def verify_onnx(path: str | Path, model: nn.Module, inputs: torch.Tensor, *, atol: float = 1e-4) -> float:
    """Max |onnxruntime - eager| on `inputs`; raises ExportMismatchError above atol, so a bad export never ships."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = inputs.detach().to("cpu", torch.float32).contiguous()
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: batch.numpy()})
    device = next(model.parameters(), torch.empty(0)).device
    with _eval_mode(model), torch.no_grad():
        eager = model(batch.to(device)).float().cpu()
    onnx_out = torch.from_numpy(onnx_out)
    if onnx_out.shape != eager.shape:
        raise ExportMismatchError(f"{path}: ONNX output shape {tuple(onnx_out.shape)} differs from the model's "
                                  f"{tuple(eager.shape)} for inputs {tuple(batch.shape)}")
    difference = (onnx_out - eager).abs().max().item()
    if not difference <= atol:  # also catches NaN
        raise ExportMismatchError(f"{path}: onnxruntime outputs differ from the eager model by up to {difference:.3g} "
                                  f"(atol {atol:g}) on a batch of {batch.shape[0]}; the export does not compute "
                                  "what the model does (wrong weights, or an op exported differently)")
    return difference


# ----------------------------------------------------------------------------------------- torch.export

def export_program(model: nn.Module, example_input: torch.Tensor, path: str | Path, *,
                   dynamic_batch: bool = True) -> Path:
    """A torch.export program (.pt2): the eval-mode graph and weights, runnable without the model's Python code."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _tracing_example(example_input, dynamic_batch)
    with _eval_mode(model), torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=_batch_dim(dynamic_batch))
    temporary = _temporary(path)
    torch.export.save(program, temporary)
    temporary.replace(path)
    return path


def load_program(path: str | Path) -> nn.Module:
    """The callable module of a saved program; it is frozen in eval mode (calling .eval() on it raises). The INT8
    operators a quantized program calls are registered first, so compressed models load too."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers quantized_decomposed ops)
    return torch.export.load(path).module()


class ProgramModule(nn.Module):
    """A loaded program as an ordinary inference module: train()/eval() only record the flag (the program is
    frozen in eval mode and refuses both), so evaluation code can treat it like any model."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "program", program)  # not a submodule: .eval() must not reach it

    def train(self, mode: bool = True) -> ProgramModule:
        self.training = mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)


# ------------------------------------------------------------------------------------ safetensors + JSON

def sidecar_path(weights_path: str | Path) -> Path:
    """<stem>.json next to <stem>.safetensors."""
    weights_path = Path(weights_path)
    return weights_path.with_name(weights_path.stem + SIDECAR_SUFFIX)


def export_safetensors(model: nn.Module, path: str | Path, metadata: Mapping[str, Any]) -> tuple[Path, Path]:
    """Weights (no pickle) plus a JSON sidecar, both self-describing, so create_model can rebuild the model anywhere."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stamped = _stamped(metadata)
    stamped["weights_file"] = path.name
    # clone: safetensors refuses tensors that share storage (tied weights); contiguous CPU copies always save
    state = {key: value.detach().to("cpu").contiguous().clone() for key, value in model.state_dict().items()}
    sidecar = sidecar_path(path)
    write_safetensors(path, state, {"reprocls": json.dumps(stamped)})  # self-describing weights
    atomic_write_text(sidecar, json.dumps(stamped, indent=2) + "\n")
    return path, sidecar


def load_exported(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """(eval-mode model, metadata) from exported weights, or from a run's model.safetensors (its own metadata)."""
    path = Path(path)
    if path.suffix == SIDECAR_SUFFIX:
        path = path.with_suffix(".pt2") if path.with_suffix(".pt2").exists() else path.with_suffix(".safetensors")
    sidecar = sidecar_path(path)
    if sidecar.exists():
        metadata = json.loads(sidecar.read_text())
    else:
        metadata = deployment_metadata(safetensors_metadata(path))
    if path.suffix == ".pt2":  # an INT8 compressed model: the program, with its metadata beside it
        return ProgramModule(load_program(path)), metadata
    kwargs = dict(num_classes=metadata["num_classes"], in_chans=metadata["in_chans"], **metadata.get("model_kwargs", {}))
    compressed = metadata.get("compressed") or {}
    if compressed.get("prune") == "structured":  # narrower layers: widths from the tensors
        from reprocls.compress.channels import rebuild_pruned

        model = rebuild_pruned(metadata["model"], load_safetensors(path), **kwargs).eval()
        if compressed.get("quantize") == "dynamic":
            from reprocls.compress.quantize import quantize_dynamic_int8

            return quantize_dynamic_int8(model), metadata
        return model, metadata
    model = create_model(metadata["model"], **kwargs)
    load_weights(model, path)
    if (metadata.get("compressed") or {}).get("quantize") == "dynamic":  # INT8 Linear layers, made from these weights
        from reprocls.compress.quantize import quantize_dynamic_int8

        return quantize_dynamic_int8(model), metadata
    return model.eval(), metadata


__all__ = ["ExportMismatchError", "deployment_metadata", "export_onnx", "export_program", "export_safetensors",
           "load_exported", "load_program", "preprocess", "read_onnx_metadata", "sidecar_path", "verify_onnx"]
