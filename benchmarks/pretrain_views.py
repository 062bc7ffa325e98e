"""Pretraining images/s with the two views made a batch at a time on the device (data/batch_views.py) against the
per-image torchvision pipeline in DataLoader workers (data/views.py), the same SimCLR step on ResNet-20 and the same
Fashion-MNIST images; the per-image pipeline is the baseline of the ratio. Alternating rounds, medians.

    .venv/bin/python benchmarks/pretrain_views.py [--images 8192] [--batch 256] [--rounds 3] [--workers 2]

Needs the machine to itself (docs/benchmarks.md says what else ran).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reprocls.config import load_config
from reprocls.data.batch_views import TwoViewTensorLoader
from reprocls.data.views import TwoViews, build_view, two_view_loader, view_settings
from reprocls.envinfo import environment
from reprocls.recipe import build_pretraining, prepare


def images_per_s(loader, method, optimizer, amp_dtype) -> tuple[float, float]:
    """(views only, whole steps) images/s over one pass of `loader`."""
    started = time.perf_counter()
    for _ in loader:
        pass
    views = len(loader) * loader.batch_size / (time.perf_counter() - started)
    started = time.perf_counter()
    for first, second, _ in loader:
        with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = method(first, second)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return views, len(loader) * loader.batch_size / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    config = load_config("fashion_mnist/simclr_resnet20", [f"data.limit_train={args.images}",
                                                          f"data.batch_size={args.batch}"])
    session = prepare(config)
    splits, method = session.splits, build_pretraining(config, session)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01, momentum=0.9)
    if session.channels_last:
        method.to(memory_format=torch.channels_last)
    settings = view_settings("simclr", splits.image_size, config.pretrain.views)
    batched = TwoViewTensorLoader(splits.train, *settings, batch_size=args.batch, size=splits.image_size,
                                  mean=splits.mean, std=splits.std, device=session.device,
                                  channels_last=session.channels_last)
    views = [build_view(s, splits.image_size, splits.mean, splits.std) for s in settings]
    per_image = two_view_loader(TwoViews(splits.train, *views), batch_size=args.batch, seed=0, workers=args.workers)
    results: dict[str, list[tuple[float, float]]] = {"per image": [], "batched": []}
    for _ in range(args.rounds):
        for name, loader in (("per image", per_image), ("batched", batched)):
            results[name].append(images_per_s(loader, method, optimizer, session.amp_dtype))
    env = environment(with_packages=False)
    print(f"{env.get('cpu', '?')}, torch {torch.__version__}, {torch.get_num_threads()} threads, precision "
          f"{session.amp_dtype or 'fp32'}, {args.images} images, batch {args.batch}, {args.rounds} rounds")
    base = {kind: statistics.median(r[kind] for r in results["per image"]) for kind in (0, 1)}
    for name, rounds in results.items():
        view, step = (statistics.median(r[kind] for r in rounds) for kind in (0, 1))
        print(f"  {name:<10} views only {view:>8,.0f} img/s ({view / base[0]:.2f}x)   SimCLR steps {step:>6,.0f} img/s "
              f"({step / base[1]:.2f}x)")


if __name__ == "__main__":
    main()
