"""Training and evaluation images/s of ResNet-20 on Fashion-MNIST-shaped input by precision, memory format and compile.

Settings: {fp32, bf16 autocast} x {contiguous, channels_last} in eager mode, then torch.compile (inductor) of the
fastest eager setting. A training step is forward + cross-entropy + backward + SGD (Nesterov momentum, weight decay);
evaluation is a no-grad forward in eval mode. The input is synthetic (normal-random 1x28x28 images, random labels
of 10 classes): it measures speed only, and the speed of these kernels does not depend on the pixel values.
Rounds rotate the order of the settings so drift of the machine hits all alike; figures are medians over rounds,
and ratios are against fp32 contiguous eager measured in the same phase of the same run. Compile time (the first
training step and the first evaluation step of the compiled model) is reported apart and excluded from images/s.

    .venv/bin/python benchmarks/precision_throughput.py [--batch 256] [--eval-batch 512] [--steps 20] [--rounds 5]
        [--threads 2] [--device cpu|cuda] [--no-compile] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

import torch
import torch._inductor.config
import torch.nn.functional as F

from reprocls.engine.precision import autocast, cpu_supports_bf16
from reprocls.envinfo import environment
from reprocls.models import create_model

INPUT = (1, 28, 28)
CLASSES = 10


@dataclass(frozen=True)
class Setting:
    """One way to run the same model: autocast dtype, memory format and whether torch.compile wraps it."""

    precision: str
    channels_last: bool
    compiled: bool = False

    @property
    def label(self) -> str:
        text = f"{self.precision} {'channels_last' if self.channels_last else 'contiguous'}"
        return text + (" compiled" if self.compiled else "")

    @property
    def dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


BASELINE = Setting("fp32", False)
EAGER = [BASELINE, Setting("fp32", True), Setting("bf16", False), Setting("bf16", True)]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Runner:
    """A setting's own model, optimizer and fixed synthetic batches, so timed steps measure only the model's work."""

    def __init__(self, setting: Setting, device: torch.device, batch: int, eval_batch: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        model = create_model("resnet20", num_classes=CLASSES, in_chans=INPUT[0]).to(device, memory_format=setting.memory_format)
        self.setting, self.device = setting, device
        self.model = torch.compile(model, backend="inductor") if setting.compiled else model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        generator = torch.Generator().manual_seed(seed)
        self.images = torch.randn(batch, *INPUT, generator=generator).to(device).contiguous(memory_format=setting.memory_format)
        self.labels = torch.randint(0, CLASSES, (batch,), generator=generator).to(device)
        self.eval_images = torch.randn(eval_batch, *INPUT, generator=generator).to(device).contiguous(
            memory_format=setting.memory_format)

    def train(self, steps: int) -> float:
        """Images/s of `steps` training steps."""
        self.model.train()
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            self.optimizer.zero_grad(set_to_none=True)
            with autocast(self.device, self.setting.dtype):
                loss = F.cross_entropy(self.model(self.images), self.labels)
            loss.backward()
            self.optimizer.step()
        synchronize(self.device)
        return steps * len(self.labels) / (time.perf_counter() - start)

    @torch.no_grad()
    def evaluate(self, steps: int) -> float:
        """Images/s of `steps` eval-mode forward passes."""
        self.model.eval()
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(steps):
            with autocast(self.device, self.setting.dtype):
                self.model(self.eval_images)
        synchronize(self.device)
        return steps * len(self.eval_images) / (time.perf_counter() - start)


def timed(call, *args) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    call(*args)
    return time.perf_counter() - start


def measure(runners: list[Runner], steps: int, rounds: int) -> dict[Setting, tuple[list[float], list[float]]]:
    """Train and eval images/s of every runner per round; round r starts at runner r, so no setting always goes first."""
    results: dict[Setting, tuple[list[float], list[float]]] = {r.setting: ([], []) for r in runners}
    for round_index in range(rounds):
        shift = round_index % len(runners)
        parts = []
        for runner in runners[shift:] + runners[:shift]:
            train, evaluate = results[runner.setting]
            train.append(runner.train(steps))
            evaluate.append(runner.evaluate(steps))
            parts.append(f"{runner.setting.label} {train[-1]:,.0f}/{evaluate[-1]:,.0f}")
        print(f"  round {round_index + 1} (train/eval img/s): " + ", ".join(parts), flush=True)
    return results


def print_table(results: dict[Setting, tuple[list[float], list[float]]], notes: dict[Setting, str] | None = None) -> None:
    """Medians and ratios against the baseline as a markdown table."""
    base_train, base_eval = (statistics.median(v) for v in results[BASELINE])
    print("\n| setting | train img/s | vs fp32 contiguous | eval img/s | vs fp32 contiguous |")
    print("|---|---|---|---|---|")
    for setting, (train, evaluate) in results.items():
        train_median, eval_median = statistics.median(train), statistics.median(evaluate)
        note = (notes or {}).get(setting, "")
        print(f"| {setting.label}{note} | {train_median:,.0f} | {train_median / base_train:.2f} | {eval_median:,.0f} | "
              f"{eval_median / base_eval:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="training batch (the Fashion-MNIST recipes' 256)")
    parser.add_argument("--eval-batch", type=int, default=512, help="evaluation batch (the recipes' 512)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per setting and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile phase")
    parser.add_argument("--quick", action="store_true", help="a smoke run: batch 64, eval batch 128, 2 steps, 2 rounds")
    args = parser.parse_args()
    if args.quick:
        args.batch, args.eval_batch, args.steps, args.rounds = 64, 128, 2, 2
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    env = environment(with_packages=False)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{env['cpu']} ({env['cpu_count']} cores, {torch.get_num_threads()} threads)")
    print(f"resnet20, input 1x28x28, {CLASSES} classes, train batch {args.batch}, eval batch {args.eval_batch}; "
          f"{args.steps} steps x {args.rounds} rounds{' (--quick: a smoke run, not a measurement)' if args.quick else ''}")
    print(f"{where}, torch {torch.__version__}; synthetic random input (speed only)")
    if device.type == "cpu" and not cpu_supports_bf16():
        print("note: this CPU has no native bf16, so bf16 autocast runs emulated and is expected to be slow")
    if device.type == "cuda":
        print(f"note: fp32 convolutions use TF32 (torch.backends.cudnn.allow_tf32 = {torch.backends.cudnn.allow_tf32})")

    runners = [Runner(setting, device, args.batch, args.eval_batch) for setting in EAGER]
    for runner in runners:  # oneDNN/cuDNN pick and cache their kernels on the first call
        runner.train(1)
        runner.evaluate(1)
    print("\neager:")
    eager = measure(runners, args.steps, args.rounds)
    print_table(eager)
    if args.no_compile:
        return

    best = max(EAGER, key=lambda s: statistics.median(eager[s][0]))
    torch._inductor.config.force_disable_caches = True  # a cold compile every run, not a cache hit of an earlier one
    compiled = Runner(Setting(best.precision, best.channels_last, compiled=True), device, args.batch, args.eval_batch)
    train_compile = timed(compiled.train, 1)
    eval_compile = timed(compiled.evaluate, 1)
    print(f"\ntorch.compile (inductor) of the fastest eager setting, {best.label}: first training step {train_compile:.1f} s, "
          f"first evaluation step {eval_compile:.1f} s (cold compile, inductor caches off; not in the images/s below)")
    compiled.train(1)  # a second call of each, in case the first mode switch recompiles
    compiled.evaluate(1)
    keep = [r for r in runners if r.setting in (BASELINE, best)]
    phase = measure(keep + [compiled], args.steps, args.rounds)
    print_table(phase, {best: " (eager)"} if best != BASELINE else None)


if __name__ == "__main__":
    main()
