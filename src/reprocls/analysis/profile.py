"""What a model costs when it runs: forward latency, training throughput and training memory, measured on this
machine beside the counted parameters and MACs (analysis/complexity.py), in one report."""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reprocls.analysis.complexity import count_flops
from reprocls.engine.precision import PRECISIONS, autocast
from reprocls.models import count_params

Precision = Literal["fp32", "bf16", "fp16"]


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
