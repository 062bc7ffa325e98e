"""Big folders and a newcomer's own images: headers instead of pixels, a cache that makes the second start instant,
defaults that follow the images, exact limits, and files a user can read."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reprocls.cli import main
from reprocls.config import ConfigError, DataConfig, load_config
from reprocls.data import load_dataset
from reprocls.data import check as check_module
from reprocls.data.folders import read_header, scan_folder

REPO = Path(__file__).parent.parent


def digits_folder(root: Path, per_class: int = 12, size: int = 32, classes: int = 3, mode: str = "L") -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / str(c)).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            shape = (size, size) if mode == "L" else (size, size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(root / str(c) / f"{i:03d}.png")
    return root


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def test_a_header_scan_reads_no_pixels_and_the_cache_makes_the_second_one_free(tmp_path: Path) -> None:
    root = digits_folder(tmp_path / "digits")
    cut = root / "1" / "003.png"
    truncate(cut)
    assert read_header(cut).problem is None  # the header is intact: only decoding finds the cut
    first = scan_folder(root)
    assert first.cached == 0 and len(first.headers) == 36
    second = scan_folder(root)
    assert second.cached == 36 and second.headers == first.headers
    (root / "2" / "000.png").write_bytes(b"")  # changed size and mtime: read again
    third = scan_folder(root)
    assert third.cached == 35 and third.headers["2/000.png"].problem == "zero_bytes"


def test_decode_checks_are_cached_and_header_mode_finds_a_bad_file_while_training(tmp_path: Path, monkeypatch,
                                                                                  capsys) -> None:
    root = digits_folder(tmp_path / "digits")
    truncate(root / "1" / "003.png")
    config = DataConfig(name="image_folder", root=str(root), on_bad_image="skip", workers=0)
    assert [s["path"] for s in load_dataset(config, 0).skipped] == ["1/003.png"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although the cache knows every file")

    monkeypatch.setattr(check_module, "inspect_image", no_decoding)
    assert [s["path"] for s in load_dataset(config, 0).skipped] == ["1/003.png"]  # from the cache
    monkeypatch.undo()

    other = digits_folder(tmp_path / "fresh")
    truncate(other / "0" / "005.png")
    overrides = ["data.name=image_folder", f"data.root={other}", "data.verify_images=header", "data.workers=0",
                 "data.batch_size=4", "schedule.epochs=1", "schedule.name=constant", "data.split=[0.8, 0.1, 0.1]",
                 f"output_dir={tmp_path / 'runs'}"]
    assert main(["train", "configs/quickstart.yaml", *overrides, "-q", "--no-doctor"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "0/005.png cannot be decoded while training" in error[0]
    assert "Traceback" not in error[0] and "reprocls data check" in error[0]


def test_defaults_follow_small_grey_images_and_the_start_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = digits_folder(tmp_path / "digits")
    splits = load_dataset(DataConfig(name="image_folder", root=str(root)), 0)
    assert (splits.image_size, splits.in_chans, splits.native_size) == (32, 1, 32)  # not 224 px x 3 channels
    assert "image size 32 px: every image is 32x32" in splits.notes
    mixed = digits_folder(tmp_path / "mixed", mode="RGB")
    Image.new("RGB", (48, 40)).save(mixed / "0" / "wide.png")
    splits = load_dataset(DataConfig(name="image_folder", root=str(mixed)), 0)
    assert splits.in_chans == 3 and splits.image_size == 32 and "median of their shorter sides" in splits.notes[0]
    assert main(["train", "configs/quickstart.yaml", "data.name=image_folder", f"data.root={root}", "schedule.epochs=1",
                 "data.batch_size=4", "data.workers=0", "schedule.name=constant", f"output_dir={tmp_path / 'runs'}",
                 "-q", "--no-doctor"]) == 0
    out = capsys.readouterr().out
    assert "input 32 px x 1 channel(s), preset small, normalised with mean [0.449] std [0.226]" in out
    assert "image size 32 px: every image is 32x32" in out and "1 channel(s): every image is grey" in out


def test_the_doctor_flags_a_large_upscale(tmp_path: Path) -> None:
    from reprocls.analysis.doctor import diagnose

    root = digits_folder(tmp_path / "digits")
    config = load_config("quickstart", ["data.name=image_folder", f"data.root={root}", "data.image_size=224"])
    (finding,) = [f for f in diagnose(config) if f.check == "upscale"]
    assert finding.severity == "warning" and "32 px but the model sees them at 224 px" in finding.message
    assert "49x the compute" in finding.message and finding.key == "data.image_size"
    assert not [f for f in diagnose(load_config("quickstart", ["data.name=image_folder", f"data.root={root}"]))
                if f.check == "upscale"]


def test_limits_are_exact(fmnist_root: Path, tmp_path: Path) -> None:
    for train, evaluated in ((128, 100), (640, 99)):
        splits = load_dataset(DataConfig(root=str(fmnist_root), limit_train=train, limit_eval=evaluated), 0)
        assert (len(splits.train), len(splits.val), len(splits.test)) == (train, evaluated, evaluated)
    root = digits_folder(tmp_path / "digits", per_class=20)
    splits = load_dataset(DataConfig(name="image_folder", root=str(root), limit_train=13, limit_eval=4), 0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (13, 4, 4)


@pytest.mark.slow
def test_weights_files_are_readable_by_others_and_bytes_do_not_depend_on_the_process(fmnist_root: Path,
                                                                                    tmp_path: Path) -> None:
    from reprocls.experiments.export_run import export_run
    from reprocls.experiments.run import train_recipe

    config = load_config("quickstart", [f"data.root={fmnist_root}", "data.limit_train=256", "data.limit_eval=64",
                                        "schedule.epochs=1", "schedule.name=constant", f"output_dir={tmp_path}"])
    run_dir, _ = train_recipe(config, progress=False, echo=False)
    files = [run_dir / "model.safetensors", *run_dir.glob("checkpoints/step-*/weights.safetensors")]
    files += export_run(run_dir, ["safetensors"], out=tmp_path / "export", say=lambda text: None)
    umask = os.umask(0)
    os.umask(umask)
    assert all(stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask for path in files), files
    script = ("import sys, torch; from reprocls.files import write_safetensors; "
              "write_safetensors(sys.argv[1], {'w': torch.arange(6.).view(2, 3), 'b': torch.ones(2)}, "
              "{'reprocls': '{}', 'config': '{\"a\": 1}', 'z': 'last', 'a': 'first'})")
    for name in ("one.safetensors", "two.safetensors"):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / name)], check=True, timeout=120,
                       env={**os.environ, "PYTHONHASHSEED": "random"})
    assert (tmp_path / "one.safetensors").read_bytes() == (tmp_path / "two.safetensors").read_bytes()
    from safetensors import safe_open

    with safe_open(str(tmp_path / "one.safetensors"), framework="pt") as handle:
        assert handle.metadata()["z"] == "last" and torch.equal(handle.get_tensor("b"), torch.ones(2))


def test_bad_values_of_the_new_keys_are_refused() -> None:
    for override, message in (("data.verify_images=pixels", "data.verify_images"), ("data.sampler=uniform", "data.sampler"),
                              ("data.crop_fraction=1.5", "data.crop_fraction"), ("data.image_size=0", "data.image_size")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])
