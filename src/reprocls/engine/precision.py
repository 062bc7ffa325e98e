"""Device, autocast dtype and memory format: the settings that decide CPU/GPU speed."""

from __future__ import annotations

import contextlib

import torch

from reprocls.config import ConfigError

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtypes


def resolve_device(name: str) -> torch.device:
    """'auto' takes CUDA when present; asking for CUDA without one is an error that says so."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda, but torch sees no CUDA device here; use train.device=cpu or auto")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True on CPUs with native bfloat16 arithmetic (AVX512-BF16 / AMX), where bf16 autocast is a real speed-up."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32; 'auto' picks bf16 where the hardware does it natively."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    return PRECISIONS[name]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """torch.autocast for the device, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def resolve_channels_last(name: str, model: torch.nn.Module) -> bool:
    """'auto' turns NHWC on for convolutional networks, where oneDNN and cuDNN run it faster."""
    if name != "auto":
        return name == "yes"
    return any(isinstance(m, torch.nn.Conv2d) and m.kernel_size != m.stride for m in model.modules())
