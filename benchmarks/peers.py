"""Training images/s of the same network three ways, in one process, alternating rounds: reprocls' engine, a minimal
hand-written loop, and the way a PyTorch Lightning user writes it (torchvision FashionMNIST + DataLoader + Trainer,
in fp32 and in bf16-mixed). Ratios are against the hand-written loop of the same run.

    pip install 'reprocls[bench]'     # lightning
    .venv/bin/python benchmarks/peers.py [--batch 128] [--steps 60] [--rounds 3]

reprocls and the hand-written loop use the recipe's precision (bf16 autocast where the CPU has it) and
channels_last, as train_throughput.py does; Lightning runs as its users would by default (fp32) and with
precision="bf16-mixed".
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import torch
from torch import nn

from reprocls.config import load_config
from reprocls.data import load_dataset
from reprocls.data.datasets import _prepare_mnist_root
from reprocls.engine import resolve_precision
from reprocls.envinfo import environment
from reprocls.recipe import build_model

from train_throughput import plain_round, reprocls_round  # same folder: the two loops compared there


def lightning_round(config, splits, steps: int, precision: str) -> float:
    """Images/s of a LightningModule over torchvision's FashionMNIST in a DataLoader, timed from the first batch's
    start to the last batch's end (the Trainer's own set-up excluded)."""
    import lightning as L
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    class Classifier(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = build_model(config, splits)
            self.criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

        def training_step(self, batch, index):
            images, labels = batch
            return self.criterion(self.model(images), labels)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, index) -> None:
            if index == 0:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, index) -> None:
            self.end = time.perf_counter()

    pipeline = transforms.Compose([transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), transforms.Normalize(splits.mean, splits.std)])
    root, _ = _prepare_mnist_root("fashion_mnist", "FashionMNIST", config.data)  # where reprocls laid the files out
    dataset = datasets.FashionMNIST(str(root), train=True, download=False, transform=pipeline)
    loader = DataLoader(dataset, batch_size=config.data.batch_size, shuffle=True, num_workers=0, drop_last=True)
    clock = Clock()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[clock])
    trainer.fit(Classifier(), loader)
    return steps * config.data.batch_size / (clock.end - clock.start)


def main() -> None:
    logging.getLogger("lightning").setLevel(logging.ERROR)  # its banners and tips would bury the figures
    warnings.filterwarnings("ignore", module="lightning")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="configs/quickstart.yaml")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    config = load_config(args.recipe, [f"data.batch_size={args.batch}"])
    splits = load_dataset(config.data, config.seed)  # also lays out torchvision's FashionMNIST files under data.root
    dtype = resolve_precision(config.train.precision, torch.device("cpu"))
    env = environment(with_packages=False)
    print(f"{config.model.name}, batch {args.batch}, {args.steps} steps x {args.rounds} rounds; reprocls and the plain "
          f"loop in {dtype or 'fp32'}, channels_last")
    print(f"{env['cpu']} ({env['cpu_count']} cores, {env['torch_threads']} threads), torch {env['torch']}")
    runners = {"plain loop": lambda: plain_round(config, splits, args.steps, dtype),
               "reprocls": lambda: reprocls_round(config, splits, args.steps, dtype),
               "lightning fp32": lambda: lightning_round(config, splits, args.steps, "32-true"),
               "lightning bf16-mixed": lambda: lightning_round(config, splits, args.steps, "bf16-mixed")}
    plain_round(config, splits, 5, dtype)  # warm up oneDNN kernels and the allocator
    reprocls_round(config, splits, 5, dtype)
    measured: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(args.rounds):
        for name, runner in runners.items():
            measured[name].append(runner())
        print(f"  round {round_index + 1}: " + ", ".join(f"{name} {values[-1]:,.0f}" for name, values in measured.items()))
    baseline = statistics.median(measured["plain loop"])
    for name, values in measured.items():
        per_round = [value / plain for value, plain in zip(values, measured["plain loop"])]
        print(f"{name:>22}: median {statistics.median(values):,.0f} img/s, ratio of medians to the plain loop "
              f"{statistics.median(values) / baseline:.3f}, per-round ratios {min(per_round):.2f}-{max(per_round):.2f} "
              f"(median {statistics.median(per_round):.3f})")


if __name__ == "__main__":
    main()
