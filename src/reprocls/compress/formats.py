"""Deployment formats by name, for `reprocls export --format`: each writes its files and checks them against the
eager model. The exporters load their libraries (onnx, onnxruntime, torch.export) only when they run, so the
command line can list the formats without them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from reprocls.extras import require
from reprocls.registry import Registry

# An export format: (eval-mode model, a batch of real preprocessed test images, output path without suffix,
# deployment metadata) -> (files written, one line saying how the export was checked).
Exporter = Callable[[nn.Module, torch.Tensor, Path, Mapping[str, Any]], tuple[list[Path], str]]
EXPORT_FORMATS: Registry[Exporter] = Registry("export format")


@EXPORT_FORMATS.register(name="onnx")
def onnx_format(model: nn.Module, images: torch.Tensor, stem: Path, metadata: Mapping[str, Any]) -> tuple[list[Path], str]:
    """ONNX for onnxruntime, TensorRT, OpenVINO; checked in onnxruntime against the eager model."""
    from reprocls.compress.export import export_onnx, verify_onnx

    require("onnx", "onnxscript", "onnxruntime", feature="ONNX export")
    path = export_onnx(model, images[:1], stem.with_name(stem.name + ".onnx"), metadata=metadata)
    difference = verify_onnx(path, model, images)
    return [path], f"{path}: onnxruntime matches eager on {len(images)} test images (max abs diff {difference:.2e})"


@EXPORT_FORMATS.register(name="torch-export")
def torch_export_format(model: nn.Module, images: torch.Tensor, stem: Path,
                        metadata: Mapping[str, Any]) -> tuple[list[Path], str]:
    """A torch.export program (.pt2) for PyTorch runtimes without the model's Python code."""
    from reprocls.compress.export import export_program, load_program

    path = export_program(model, images[:1], stem.with_name(stem.name + ".pt2"))
    with torch.inference_mode():
        difference = float((load_program(path)(images) - model(images)).abs().max())
    return [path], f"{path}: torch.export program matches eager (max abs diff {difference:.2e})"


@EXPORT_FORMATS.register(name="safetensors")
def safetensors_format(model: nn.Module, images: torch.Tensor, stem: Path,
                       metadata: Mapping[str, Any]) -> tuple[list[Path], str]:
    """Plain weights with a JSON sidecar: rebuilt anywhere reprocls is installed (load_exported)."""
    from reprocls.compress.export import export_safetensors

    weights, sidecar = export_safetensors(model, stem.with_name(stem.name + ".safetensors"), metadata)
    return [weights, sidecar], f"{weights} + {sidecar.name}: weights and preprocessing metadata"
