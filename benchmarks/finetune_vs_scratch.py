"""Fine-tuning from a reprocls run's weights against training from scratch, on Fashion-MNIST images written out as
an image folder the pretraining never saw, at equal epochs.

1. Pretrain: the quickstart recipe on the in-memory Fashion-MNIST training set (or --pretrained RUN).
2. Write the official 10,000 test images as PNGs in class folders (split 7:2:1 by the image_folder dataset).
3. Train the same recipe on that folder twice, from scratch and with model.weights=<pretrain run>.

    .venv/bin/python benchmarks/finetune_vs_scratch.py [--epochs 3] [--pretrained runs/quickstart-<stamp>]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from PIL import Image

from reprocls.config import DataConfig, load_config
from reprocls.data import load_dataset
from reprocls.experiments.run import train_recipe


def write_folder(root: Path) -> Path:
    """The Fashion-MNIST test split as root/<class>/<index>.png (skipped when already there)."""
    if root.exists() and sum(1 for _ in root.rglob("*.png")) == 10_000:
        return root
    splits = load_dataset(DataConfig(val_fraction=0), 0)
    for index, (image, label) in enumerate(zip(splits.test.images, splits.test.labels.tolist())):
        folder = root / splits.classes[label].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image[0].numpy()).save(folder / f"{index:05d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pretrained", help="an existing run to start from (default: train the quickstart recipe)")
    parser.add_argument("--work", default="/tmp/reprocls-finetune")
    args = parser.parse_args()
    work = Path(args.work)
    if args.pretrained:
        pretrained = Path(args.pretrained)
    else:
        started = time.perf_counter()
        pretrained, results = train_recipe(load_config("quickstart", [f"output_dir={work / 'pretrain'}"]), echo=False,
                                           progress=False)
        print(f"pretrained: {pretrained} test top-1 {100 * results['test']['top1']:.2f} % "
              f"({time.perf_counter() - started:.0f} s)")
    folder = write_folder(work / "fashion-mnist-test-as-folder")
    common = ["data.name=image_folder", f"data.root={folder}", f"schedule.epochs={args.epochs}", "data.workers=2",
              f"output_dir={work / 'runs'}"]
    rows = []
    for name, extra in (("scratch", []), ("fine-tuned", [f"model.weights={pretrained}"])):
        _, results = train_recipe(load_config("quickstart", [*common, f"name={name}", *extra]), echo=False, progress=False)
        rows.append((name, results["test"]["top1"], results["val"]["top1"], results["train_time_s"],
                     (results["weights"] or {}).get("summary", "-")))
    print(f"folder {folder}: 7,000 train / 2,000 val / 1,000 test images; quickstart recipe, {args.epochs} epochs")
    for name, test, val, seconds, weights in rows:
        print(f"  {name:<10} test top-1 {100 * test:.2f} %  val top-1 {100 * val:.2f} %  train {seconds:.0f} s  ({weights})")


if __name__ == "__main__":
    main()
