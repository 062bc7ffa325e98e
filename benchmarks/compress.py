"""Speed, size and accuracy of each compressed variant against the fp32 model measured in the same run.

Part 1 compresses a trained Fashion-MNIST run (accuracy on the full test set); part 2 times ResNet-18 at 224x224
(random weights: no ImageNet here, so fidelity is the INT8 model's top-1 agreement with fp32 on real images).

    .venv/bin/python benchmarks/compress.py --run runs/resnet20-<stamp> --threads 2
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from reprocls.compress.measure import latency_ms
from reprocls.compress.quantize import model_size_bytes, quantize_static_int8
from reprocls.experiments.compress_run import CompressPlan, compress_run
from reprocls.experiments.evaluate import load_trained_run
from reprocls.reports.tables import format_grid
from reprocls.models import create_model

PLANS = {
    "int8 static (PT2E, x86 inductor)": CompressPlan(quantize="static"),
    "int8 static (FX graph mode)": CompressPlan(quantize="static", quantize_backend="fx"),
    "unstructured 50% + 1 epoch fine-tune": CompressPlan(prune="unstructured", amount=0.5, finetune_epochs=1),
    "structured 50%, 2 rounds x 2 epochs, + int8": CompressPlan(prune="structured", amount=0.5, iterations=2,
                                                                finetune_epochs=2, quantize="static"),
}


def fashion_mnist_part(run: Path, batches: list[int], out: Path) -> None:
    for title, plan in PLANS.items():
        plan.batches = batches
        print(f"\n### {title}")
        slug = "".join(c if c.isalnum() else "_" for c in title).strip("_")
        compress_run(run, plan, out=out / slug,
                     say=lambda text: print(text) if text.startswith("\n") else None)


def resnet18_part(run: Path, batches: list[int]) -> None:
    """ResNet-18 at 224: fp32 eager vs static INT8, calibrated and compared on upscaled real test images."""
    loaded = load_trained_run(run, device=torch.device("cpu"))
    images = loaded.session.splits.test.images[:320].float().div(255)
    images = F.interpolate(images, size=(224, 224), mode="bilinear", antialias=True).expand(-1, 3, -1, -1)
    images = ((images - 0.5) / 0.25).contiguous()
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=1000).eval()
    started = time.perf_counter()
    int8 = quantize_static_int8(model, list(images[:256].split(64)), images[:1])
    prepare_s = time.perf_counter() - started
    with torch.inference_mode():
        reference = torch.cat([model(b) for b in images[256:].split(32)])
        quantized = torch.cat([int8(b) for b in images[256:].split(32)])
    agreement = float((reference.argmax(1) == quantized.argmax(1)).float().mean())
    error = float((quantized - reference).norm() / reference.norm())
    rows = [["resnet18 @224", *[f"batch {b}" for b in batches], "size", "top-1 agreement", "relative L2 error"]]
    fp32 = {b: latency_ms(model, images[0], b, repeats=5 if b > 8 else 15) for b in batches}
    q = {b: latency_ms(int8, images[0], b, repeats=5 if b > 8 else 15) for b in batches}
    rows.append(["fp32 eager", *[f"{fp32[b]:.1f} ms" for b in batches], f"{model_size_bytes(model) / 2**20:.1f} MiB", "-", "-"])
    rows.append(["int8 static (PT2E)", *[f"{q[b]:.1f} ms ({fp32[b] / q[b]:.2f}x)" for b in batches],
                 f"{model_size_bytes(int8) / 2**20:.1f} MiB", f"{100 * agreement:.1f} % of 64", f"{100 * error:.2f} %"])
    print(f"\n### ResNet-18 at 224x224 (quantized in {prepare_s:.0f} s including calibration)\n" + format_grid(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="a trained Fashion-MNIST run folder (e.g. the resnet20 recipe's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--out", default="/tmp/reprocls-compress-bench")
    parser.add_argument("--skip-resnet18", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} threads; "
          f"latency = median of repeated forward passes after warm-up (compilation excluded)")
    fashion_mnist_part(Path(args.run), batches, Path(args.out))
    if not args.skip_resnet18:
        resnet18_part(Path(args.run), batches)


if __name__ == "__main__":
    main()
