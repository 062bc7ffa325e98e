"""Peak training-step memory with and without gradient checkpointing, measured in the same run.

Checkpointing keeps only each block's input and recomputes the block in backward, trading compute for
activation memory. For each model: params, peak memory of one SGD step (weights, gradients, optimizer state,
activations), images/s, and the ratios checkpointed / plain.

    .venv/bin/python benchmarks/checkpoint_memory.py [--batch 16] [--input 3x224x224] [MODEL ...]
"""

from __future__ import annotations

import argparse

from reprocls.analysis.complexity import input_kwargs
from reprocls.analysis.profile import profile_model
from reprocls.models import create_model

DEFAULT_MODELS = ["resnet50", "vit_s_16", "efficientnet_b0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--input", default="3x224x224")
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.input.split("x"))
    print(f"batch {args.batch}, input {args.input}, fp32, CPU\n")
    print("| model | plain peak | checkpointed peak | memory ratio | plain img/s | checkpointed img/s | speed ratio |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        reports = []
        for checkpointing in (False, True):
            model = create_model(name, grad_checkpointing=checkpointing, **input_kwargs(name, size))
            reports.append(profile_model(model, input_size=size, batch=args.batch, iters=args.iters, warmup=1, name=name))
        plain, ckpt = reports
        mib = 2**20
        print(f"| {name} | {plain.train_peak_memory_bytes / mib:,.0f} MiB | {ckpt.train_peak_memory_bytes / mib:,.0f} MiB | "
              f"{ckpt.train_peak_memory_bytes / plain.train_peak_memory_bytes:.2f} | {plain.train_images_per_s:.1f} | "
              f"{ckpt.train_images_per_s:.1f} | {ckpt.train_images_per_s / plain.train_images_per_s:.2f} |", flush=True)
    print(f"\nmemory measured as: {plain.memory_method}")


if __name__ == "__main__":
    main()
