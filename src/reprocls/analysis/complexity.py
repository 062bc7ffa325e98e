"""Model complexity counted, not measured: parameters, multiply-adds and FLOPs per image, for one model or the zoo.

Counting conventions (the source of most disagreements between papers and tools):
- FLOPs are what `torch.utils.flop_counter.FlopCounterMode` reports: 2 per multiply-add of every convolution,
  matrix product and attention product; normalisation, activations, pooling and bias additions count 0.
- MACs are FLOPs / 2. This is the number papers (ResNet, MobileNet, EfficientNet, ViT) and torchvision's
  weight metadata call "FLOPs" or "GFLOPS".
- Attention is counted: on CPU, `scaled_dot_product_attention` runs a fused kernel that the counter has no
  formula for, and `nn.MultiheadAttention`'s inference fast path hides its projections too, so we add the
  formula and turn the fast path off while counting. Ops that look like compute but had no formula are
  listed in `uncounted_ops` (and warned about) instead of silently counting 0.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import re
import warnings
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from reprocls.models import count_params

_LOOKS_LIKE_COMPUTE = re.compile(r"conv|mm|matmul|linear|attention|einsum|transformer|tensordot")


def _attention_flops(query: torch.Size, key: torch.Size, value: torch.Size, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """Q @ K^T and P @ V: 2 FLOPs per multiply-add, per head; the mask and softmax are not counted."""
    *batch, queries, head_dim = query
    keys, value_dim = key[-2], value[-1]
    rows = math.prod(batch)  # batch x heads (keys/values broadcast over grouped heads)
    return 2 * rows * queries * keys * head_dim + 2 * rows * queries * keys * value_dim


def _attention_backward_flops(grad_out: torch.Size, query: torch.Size, key: torch.Size, value: torch.Size, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    """dV, dP, dQ and dK: twice the forward products (the recomputed scores are not counted)."""
    return 2 * _attention_flops(query, key, value)


def _extra_formulas() -> dict[Any, Callable[..., int]]:
    """FLOP formulas for fused attention kernels that torch's counter does not know (CPU and 'overrideable')."""
    aten = torch.ops.aten
    formulas: dict[Any, Callable[..., int]] = {}
    for name, formula in (
        ("_scaled_dot_product_flash_attention_for_cpu", _attention_flops),
        ("_scaled_dot_product_flash_attention_for_cpu_backward", _attention_backward_flops),
        ("_scaled_dot_product_fused_attention_overrideable", _attention_flops),
        ("_scaled_dot_product_fused_attention_overrideable_backward", _attention_backward_flops),
    ):
        if hasattr(aten, name):
            formulas[getattr(aten, name)] = formula
    return formulas


class _OpRecorder(TorchDispatchMode):
    """Records every aten op that runs, so ops the flop counter has no formula for can be reported."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[Any] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        self.ops.add(func._overloadpacket)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _mha_fastpath(enabled: bool) -> Iterator[None]:
    """Temporarily switch nn.MultiheadAttention's fused inference path (it hides matmuls from the counter)."""
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def _device_and_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where the model's weights live and their floating dtype (inputs must match both)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def count_flops(model: nn.Module, input_size: tuple[int, ...] = (3, 224, 224), batch: int = 1) -> dict[str, Any]:
    """FLOPs and MACs of one eval-mode forward pass over `batch` inputs of `input_size` (C, H, W).

    Runs on the model's device, so a model built on `torch.device("meta")` is counted without any
    arithmetic (ViT-L/16 in well under a second). Returns totals for the whole batch:
    `flops` (2 per multiply-add), `macs` (= flops / 2), `by_op` (FLOPs per aten op) and `uncounted_ops`.
    """
    device, dtype = _device_and_dtype(model)
    x = torch.zeros(batch, *input_size, device=device, dtype=dtype)
    extra = _extra_formulas()
    counter = FlopCounterMode(display=False, custom_mapping=extra)
    known = set(flop_registry) | set(extra)
    recorder = _OpRecorder()
    was_training = model.training
    model.eval()
    try:
        with _mha_fastpath(False), torch.no_grad(), counter, recorder:
            model(x)
    finally:
        model.train(was_training)
    flops = counter.get_total_flops()
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    uncounted = sorted(
        str(op) for op in recorder.ops if _LOOKS_LIKE_COMPUTE.search(str(op)) and op not in known
    )
    if uncounted:
        warnings.warn(f"FlopCounterMode has no formula for {uncounted}: their FLOPs are missing from the count", stacklevel=2)
    return {
        "flops": int(flops),
        "macs": int(flops) // 2,
        "batch": batch,
        "input_size": tuple(input_size),
        "by_op": by_op,
        "uncounted_ops": uncounted,
    }


def input_kwargs(name: str, input_size: tuple[int, ...] | None) -> dict[str, Any]:
    """Builder keywords that make model `name` accept `input_size`: in_chans, and img_size for fixed token grids."""
    from reprocls.models import MODELS

    if input_size is None:
        return {}
    kwargs: dict[str, Any] = {}
    parameters = inspect.signature(MODELS.get(name)).parameters
    if input_size[0] != 3:
        kwargs["in_chans"] = input_size[0]
    if "img_size" in parameters:
        kwargs["img_size"] = input_size[-1] if input_size[-1] == input_size[-2] else tuple(input_size[-2:])
    return kwargs


def build_for_counting(name: str, input_size: tuple[int, ...] | None = None, **kwargs: Any) -> nn.Module:
    """A registered model on the meta device (no memory, no weight init), or on CPU if it cannot be built there."""
    from reprocls.models import create_model

    kwargs = {**input_kwargs(name, input_size), **kwargs}
    try:
        with torch.device("meta"):
            return create_model(name, **kwargs)
    except Exception:  # a builder that needs real values (e.g. .item()) at construction time
        return create_model(name, **kwargs)


def measure_complexity(name: str, input_size: tuple[int, ...] | None = None, **kwargs: Any) -> dict[str, Any]:
    """Params and per-image MACs of a registered model at `input_size` (default: its `default_input_size`)."""
    model = build_for_counting(name, input_size, **kwargs)
    size = tuple(input_size or getattr(model, "default_input_size", (3, 224, 224)))
    try:
        counted = count_flops(model, size)
    except Exception:  # a forward that meta tensors cannot run (data-dependent shapes): count on CPU
        if _device_and_dtype(model)[0].type != "meta":
            raise
        model = model.to_empty(device="cpu")
        counted = count_flops(model, size)
    return {
        "name": name,
        "params": count_params(model),
        "macs": counted["macs"],
        "flops": counted["flops"],
        "input_size": size,
        "by_op": counted["by_op"],
        "uncounted_ops": counted["uncounted_ops"],
    }


def model_table(pattern: str | None = None, input_size: tuple[int, ...] | None = None) -> list[dict[str, Any]]:
    """Rows for `reprocls models [PATTERN]`: name, family, params and MACs at each model's default input size."""
    from reprocls.models import MODELS, list_models

    rows = []
    for name in list_models(pattern):
        measured = measure_complexity(name, input_size)
        rows.append(
            {
                "name": name,
                "family": MODELS.get(name).__module__.rsplit(".", 1)[-1],
                "params": measured["params"],
                "macs": measured["macs"],
                "input_size": measured["input_size"],
            }
        )
    return rows


def family_representatives() -> dict[str, str]:
    """The smallest registered model (fewest parameters) of each family module, for quick per-family checks; a
    search space's builder (cifar_resnet, ...) is left out: its defaults are a zoo network already counted."""
    from reprocls.models import MODELS, list_models
    from reprocls.models.spaces import SPACES, space_info

    builders = {space_info(space).model for space in SPACES.names()}
    smallest: dict[str, tuple[int, str]] = {}
    for name in (name for name in list_models() if name not in builders):
        family = MODELS.get(name).__module__.rsplit(".", 1)[-1]
        candidate = (count_params(build_for_counting(name)), name)
        smallest[family] = min(smallest.get(family, candidate), candidate)
    return {family: name for family, (_, name) in sorted(smallest.items())}
