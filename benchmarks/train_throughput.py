"""Training images/s of reprocls' engine against a minimal hand-written PyTorch loop, measured in the same run.

Both train the same model on the same in-memory Fashion-MNIST tensors with the same batch, precision and
memory format; reprocls adds its loader (per-batch crop/flip on the device), metrics, progress and schedule.
Rounds alternate between the two (A B A B ...) so drift of the machine hits both alike.

    .venv/bin/python benchmarks/train_throughput.py [--model resnet20] [--batch 128] [--steps 60] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from reprocls.config import load_config
from reprocls.data import load_dataset, make_loader
from reprocls.engine import (Trainee, TrainSettings, autocast, build_optimizer, build_scheduler, resolve_precision,
                             scaled_lr, train_one_epoch)
from reprocls.envinfo import environment
from reprocls.recipe import build_model


class FirstSteps:
    """A loader cut to its first `steps` batches, so both loops do the same amount of work."""

    def __init__(self, loader, steps: int) -> None:
        self.loader, self.steps = loader, steps

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.loader.set_epoch(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for index, batch in enumerate(self.loader):
            if index == self.steps:
                return
            yield batch


def reprocls_round(config, splits, steps: int, dtype) -> float:
    """Images/s of train_one_epoch with the recipe's loader, optimizer and schedule."""
    device = torch.device("cpu")
    model = build_model(config, splits).to(memory_format=torch.channels_last)
    loader = make_loader(splits.train, splits, config.data, train=True, device=device, seed=0, channels_last=True)
    optimizer = build_optimizer(model, config.optim, scaled_lr(config.optim, config.data.batch_size))
    scheduler = build_scheduler(optimizer, config.schedule, len(loader))
    trainee = Trainee(model, optimizer, scheduler, nn.CrossEntropyLoss(label_smoothing=0.1))
    stats = train_one_epoch(trainee, FirstSteps(loader, steps), TrainSettings(device=device, amp_dtype=dtype, progress=False))
    return stats["images_per_s"]


def plain_round(config, splits, steps: int, dtype) -> float:
    """Images/s of the shortest sensible loop: shuffle, normalise, forward, backward, step."""
    model = build_model(config, splits).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    images, labels = splits.train.images, splits.train.labels
    mean, std = splits.mean[0] * 255, splits.std[0] * 255
    batch = config.data.batch_size
    order = torch.randperm(len(labels))
    start = time.perf_counter()
    for step in range(steps):
        index = order[step * batch:(step + 1) * batch]
        x = ((images[index].float() - mean) / std).contiguous(memory_format=torch.channels_last)
        with autocast(torch.device("cpu"), dtype):
            loss = criterion(model(x), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="configs/quickstart.yaml")
    parser.add_argument("--model", default=None)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    args = parser.parse_args()
    overrides = [f"data.batch_size={args.batch}", f"train.precision={args.precision}"]
    if args.model:
        overrides.append(f"model.name={args.model}")
    config = load_config(args.recipe, overrides)
    splits = load_dataset(config.data, config.seed)
    dtype = resolve_precision(args.precision, torch.device("cpu"))
    env = environment(with_packages=False)
    print(f"{config.model.name}, batch {args.batch}, {dtype or 'fp32'}, channels_last; {args.steps} steps x {args.rounds} rounds")
    print(f"{env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} threads), torch {env['torch']}")
    reprocls_round(config, splits, 5, dtype)  # warm up oneDNN kernels and allocator for both
    plain_round(config, splits, 5, dtype)
    ours, plain = [], []
    for round_index in range(args.rounds):
        plain.append(plain_round(config, splits, args.steps, dtype))
        ours.append(reprocls_round(config, splits, args.steps, dtype))
        print(f"  round {round_index + 1}: plain loop {plain[-1]:,.0f} img/s, reprocls {ours[-1]:,.0f} img/s")
    ratio = statistics.median(ours) / statistics.median(plain)
    print(f"median: plain loop {statistics.median(plain):,.0f} img/s, reprocls {statistics.median(ours):,.0f} img/s, "
          f"ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
