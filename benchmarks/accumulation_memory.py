"""Peak memory of one optimizer step with gradient accumulation, with and without gradient checkpointing, in one run.

One SGD step (momentum 0.9) over a batch of B images, taken in one go (accum_steps k = 1) or as k micro-batches of
B/k whose gradients accumulate (loss / k, k backward passes, then one step), as `train.accum_steps` does.
Accumulation bounds the activations by one micro-batch; checkpointing keeps only each block's input; the weights,
gradients and optimizer state stay whatever k is. Peak memory is measured as benchmarks/checkpoint_memory.py and
`reprocls profile` measure it (reprocls.analysis.profile): on CPU, the weights, buffers and optimizer state the model
holds plus the peak growth of torch's CPU allocator during the step (torch.profiler, profile_memory); on CUDA, the
same resident tensors plus torch.cuda.max_memory_allocated growth during the step. The input batch is not counted.

    .venv/bin/python benchmarks/accumulation_memory.py [--batch 16] [--input 3x224x224] [--accum 1,2,4] [--iters 2]
        [--threads 2] [--device cpu|cuda] [--quick] [MODEL ...]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from reprocls.analysis.complexity import input_kwargs
from reprocls.analysis.profile import _cpu_step_peak, _optimizer_tensors, _tensor_bytes
from reprocls.models import create_model

DEFAULT_MODELS = ["resnet50", "vit_s_16", "efficientnet_b0"]
QUICK_MODELS = ["resnet20", "vit_ti_4"]
MIB = 2**20


@dataclass
class Measurement:
    """Peak bytes of one accumulated optimizer step and the training speed of such steps."""

    checkpointing: bool
    accum_steps: int
    peak_bytes: int
    images_per_s: float


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def accumulated_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                     accum_steps: int) -> Callable[[], None]:
    """One optimizer step over the batch in accum_steps equal micro-batches (views of the batch, no copies)."""
    micro = len(labels) // accum_steps

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        for part in range(accum_steps):
            window = slice(part * micro, (part + 1) * micro)
            loss = F.cross_entropy(model(images[window]).float(), labels[window]) / accum_steps
            loss.backward()
        optimizer.step()

    return step


def step_peak(step: Callable[[], None], model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device) -> int:
    """Resident weights, buffers and optimizer state, plus the allocator's peak growth during one step."""
    optimizer.zero_grad(set_to_none=True)
    resident = _tensor_bytes(iter([*model.parameters(), *model.buffers(), *_optimizer_tensors(optimizer)]))
    if device.type == "cpu":
        return resident + _cpu_step_peak(step)
    synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    synchronize(device)
    return resident + torch.cuda.max_memory_allocated(device) - before


def measure(name: str, size: tuple[int, ...], batch: int, accum_steps: int, checkpointing: bool, iters: int,
            device: torch.device) -> Measurement:
    """Build the model fresh, warm up one step (so momentum buffers exist), time `iters` steps, then measure one."""
    torch.manual_seed(0)
    model = create_model(name, grad_checkpointing=checkpointing, **input_kwargs(name, size)).to(device)
    images = torch.randn(batch, *size, device=device)
    with torch.no_grad():
        classes = model.eval()(images[:1]).shape[-1]
    labels = torch.randint(0, classes, (batch,), device=device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    step = accumulated_step(model, optimizer, images, labels, accum_steps)
    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    speed = iters * batch / (time.perf_counter() - start) if iters else float("nan")
    peak = step_peak(step, model, optimizer, device)
    del model, optimizer, step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Measurement(checkpointing, accum_steps, peak, speed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=None)
    parser.add_argument("--batch", type=int, default=16, help="images per optimizer step (B)")
    parser.add_argument("--input", default="3x224x224")
    parser.add_argument("--accum", default="1,2,4", help="comma-separated accum_steps values k, each dividing B")
    parser.add_argument("--iters", type=int, default=2, help="timed steps per setting, for images/s")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="a smoke run: resnet20 and vit_ti_4, 1x28x28, batch 32, 1 iter")
    args = parser.parse_args()
    if args.quick:
        args.models, args.input, args.batch, args.iters = args.models or QUICK_MODELS, "1x28x28", 32, 1
    models = args.models or DEFAULT_MODELS
    args.accum = [int(k) for k in args.accum.split(",")]
    bad = [k for k in args.accum if k < 1 or args.batch % k]
    if bad:
        parser.error(f"--accum {bad}: each must divide --batch {args.batch}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    size = tuple(int(v) for v in args.input.split("x"))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"one SGD step over batch {args.batch}, input {args.input}, fp32, {where}, torch {torch.__version__}"
          f"{'  (--quick: a smoke run)' if args.quick else ''}\n")
    print("| model | checkpointing | accum_steps | micro-batch | peak | vs plain, one go | vs one go, same checkpointing | img/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in models:
        rows = [measure(name, size, args.batch, k, checkpointing, args.iters, device)
                for checkpointing in (False, True) for k in args.accum]
        one_go = {r.checkpointing: r.peak_bytes for r in rows if r.accum_steps == min(args.accum)}
        for r in rows:
            print(f"| {name} | {'yes' if r.checkpointing else 'no'} | {r.accum_steps} | {args.batch // r.accum_steps} | "
                  f"{r.peak_bytes / MIB:,.1f} MiB | {r.peak_bytes / one_go[False]:.2f} | "
                  f"{r.peak_bytes / one_go[r.checkpointing]:.2f} | {r.images_per_s:,.1f} |", flush=True)
    method = ("resident weights/buffers/optimizer state + peak CPU-allocator growth in one step (torch.profiler profile_memory)"
              if device.type == "cpu" else "resident weights/buffers/optimizer state + torch.cuda.max_memory_allocated growth in one step")
    print(f"\nmemory measured as: {method}")
    if min(args.accum) != 1:
        print(f"ratios are against accum_steps {min(args.accum)}, the smallest measured")


if __name__ == "__main__":
    main()
