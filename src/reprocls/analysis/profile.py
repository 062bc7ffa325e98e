"""Model complexity: parameters, multiply-adds, forward latency, training throughput and training memory.

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
import copy
import inspect
import json
import math
import os
import re
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from reprocls.engine.precision import PRECISIONS, autocast
from reprocls.models import count_params

Precision = Literal["fp32", "bf16", "fp16"]
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


@dataclass
class ProfileReport:
    """What one model costs: counted complexity and measured speed and memory, with the setup that produced them."""

    model: str
    input_size: tuple[int, ...]  # (C, H, W) of one image
    batch: int  # images per forward / training step
    precision: str  # fp32, or autocast mixed precision in bf16 / fp16
    device: str  # device, its name and threads
    torch_version: str
    params: int
    macs: int  # multiply-adds per image: what papers call "FLOPs"
    flops: int  # FLOPs per image as FlopCounterMode counts them: 2 per multiply-add
    latency_ms_p50: float | None  # eval-mode forward of one batch, median over `iters` runs
    latency_ms_p95: float | None
    train_images_per_s: float | None  # forward + backward + SGD (momentum) step
    train_peak_memory_bytes: int | None  # peak of one training step: weights, grads, optimizer state, activations
    memory_method: str  # how train_peak_memory_bytes was measured

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (for --json and results files)."""
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        return data

    def format(self) -> str:
        """A short table for the terminal, stating MACs versus FLOPs so no one compares the wrong number."""
        size = "x".join(str(s) for s in self.input_size)

        def number(value: float | None, unit: str, digits: int = 2) -> str:
            return "n/a" if value is None else f"{value:,.{digits}f} {unit}"

        latency = (
            "n/a"
            if self.latency_ms_p50 is None
            else f"p50 {self.latency_ms_p50:.2f} ms, p95 {self.latency_ms_p95:.2f} ms (batch {self.batch})"
        )
        memory = None if self.train_peak_memory_bytes is None else self.train_peak_memory_bytes / 2**20
        rows = [
            ("params", number(self.params / 1e6, "M", 3)),
            ("MACs / image", number(self.macs / 1e9, "G", 3) + '  multiply-adds: what papers call "FLOPs"'),
            ("FLOPs / image", number(self.flops / 1e9, "G", 3) + "  2 per multiply-add (FlopCounterMode)"),
            ("forward latency", latency),
            ("train throughput", number(self.train_images_per_s, "images/s", 1) + f"  forward+backward+SGD, batch {self.batch}"),
            ("train peak memory", number(memory, "MiB", 1) + f"  {self.memory_method}"),
        ]
        width = max(len(key) for key, _ in rows)
        header = f"{self.model}  {size}  batch {self.batch}  {self.precision}  {self.device}  torch {self.torch_version}"
        return "\n".join([header, *(f"  {key:<{width}}  {value}" for key, value in rows)])


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads()
    return f"{device.type} ({threads} thread{'s' if threads != 1 else ''})"


def _tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    """Bytes of distinct storages among `tensors` (views and shared weights once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for state in optimizer.state.values():
        yield from (v for v in state.values() if isinstance(v, torch.Tensor))


def _cpu_step_peak(step: Callable[[], None]) -> int:
    """Peak bytes the CPU allocator handed out during `step`, from torch.profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    memory = sorted(
        (e for e in events if e.get("name") == "[memory]" and e.get("args", {}).get("Device Type") == 0),
        key=lambda e: e["ts"],
    )
    if not memory:
        return 0
    start = memory[0]["args"]["Total Allocated"] - memory[0]["args"]["Bytes"]
    return max(0, max(e["args"]["Total Allocated"] for e in memory) - start)


def profile_model(
    model: nn.Module,
    *,
    input_size: tuple[int, ...] | None = None,
    batch: int = 1,
    precision: Precision = "fp32",
    device: str = "cpu",
    warmup: int = 2,
    iters: int = 10,
    train: bool = True,
    name: str | None = None,
) -> ProfileReport:
    """Count params and MACs, time the forward pass at `batch`, and time and measure one training step.

    The model itself is not changed: timing runs on a copy moved to `device`. Peak training memory is
    `torch.cuda.max_memory_allocated` growth on CUDA; on CPU it is the weights, buffers and optimizer state
    held by the copy plus the peak the CPU allocator reports to torch.profiler during one step. Neither
    counts the input batch, the CUDA context, or memory that libraries allocate outside PyTorch's allocator.
    """
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, not {precision!r}")
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' requested but CUDA is not available")
    input_size = tuple(input_size or getattr(model, "default_input_size", (3, 224, 224)))
    x = torch.randn(batch, *input_size, device=target)
    runner = copy.deepcopy(model).to(target).eval()
    counted = count_flops(runner, input_size)  # per image: batch 1
    latencies: list[float] = []
    with torch.no_grad(), autocast(target, PRECISIONS[precision]):
        for index in range(warmup + iters):
            _synchronize(target)
            start = time.perf_counter()
            out = runner(x)
            _synchronize(target)
            if index >= warmup:
                latencies.append((time.perf_counter() - start) * 1e3)
    num_outputs = out.shape[-1] if out.ndim == 2 else 0
    del runner, out

    throughput = peak = None
    method = "not measured"
    if train:
        throughput, peak, method = _measure_training(model, x, num_outputs, target, precision, warmup, iters)
    return ProfileReport(
        model=name or type(model).__name__,
        input_size=input_size,
        batch=batch,
        precision=precision,
        device=_device_description(target),
        torch_version=torch.__version__,
        params=count_params(model),
        macs=counted["macs"],
        flops=counted["flops"],
        latency_ms_p50=float(np.percentile(latencies, 50)) if latencies else None,
        latency_ms_p95=float(np.percentile(latencies, 95)) if latencies else None,
        train_images_per_s=throughput,
        train_peak_memory_bytes=peak,
        memory_method=method,
    )


def _measure_training(
    model: nn.Module,
    x: torch.Tensor,
    num_outputs: int,
    device: torch.device,
    precision: Precision,
    warmup: int,
    iters: int,
) -> tuple[float | None, int | None, str]:
    """Images per second of forward + backward + SGD step, and the peak memory of one such step."""
    labels = torch.randint(0, max(num_outputs, 1), (x.shape[0],), device=device)
    if device.type == "cuda":
        _synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
    trainee = copy.deepcopy(model).to(device).train()
    optimizer = torch.optim.SGD(trainee.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16" and device.type == "cuda")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, PRECISIONS[precision]):
            out = trainee(x)
            loss = F.cross_entropy(out.float(), labels) if num_outputs else out.float().square().mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(max(warmup, 1)):  # at least one step, so momentum buffers exist before memory is measured
        step()
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _synchronize(device)
    elapsed = time.perf_counter() - start
    throughput = iters * x.shape[0] / elapsed if iters else None

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        step()
        _synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - baseline
        method = "torch.cuda.max_memory_allocated during one step, minus memory allocated before the model copy"
    elif device.type == "cpu":
        optimizer.zero_grad(set_to_none=True)
        resident = _tensor_bytes(iter([*trainee.parameters(), *trainee.buffers(), *_optimizer_tensors(optimizer)]))
        peak = resident + _cpu_step_peak(step)
        method = "resident weights/buffers/optimizer state + peak CPU-allocator growth in one step (torch.profiler profile_memory)"
    else:
        peak, method = None, f"no memory measurement for device type {device.type!r}"
    del trainee, optimizer
    return throughput, peak, method
