"""Messy image folders: the checker names every defect, training stops or skips as asked, every mode converts."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import struct
import time
import warnings
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision.transforms import v2

from reprocls.cli import main
from reprocls.config import ConfigError, DataConfig, load_config
from reprocls.data import load_dataset, make_loader
from reprocls.data.check import CATEGORIES, ERROR, check_folder, inspect_image
from reprocls.data.datasets import FileSplit
from reprocls.data.images import to_mode
from reprocls.data.loaders import FileDataset

from conftest import write_random_folder

CPU = torch.device("cpu")
REPO = Path(__file__).parent.parent
PILLOW_PIXEL_LIMIT = Image.MAX_IMAGE_PIXELS  # read at import, before any test could have touched it


@pytest.fixture(autouse=True)
def pillow_limits_stay_default():
    """Every test here must leave Pillow's global safety settings exactly as it found them."""
    yield
    assert Image.MAX_IMAGE_PIXELS == PILLOW_PIXEL_LIMIT
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# ------------------------------------------------------------------------------------------- the messy folder


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def header_only_png(width: int, height: int) -> bytes:
    """A 1-bit PNG that declares width x height pixels but holds a few rows: a bomb in a few dozen bytes."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = (b"\x00" + bytes((width + 7) // 8)) * 2
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows))
            + png_chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def cut_in_half(content: bytes) -> bytes:
    """The first half of a file, as an interrupted copy or download leaves it."""
    return content[:len(content) // 2]


def noise(mode: str = "RGB", size: int = 16, seed: int = 1) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).convert(mode)


def transparent_palette_image() -> Image.Image:
    image = noise("P")
    image.info["transparency"] = 0
    return image


def sixteen_bit_image() -> Image.Image:
    """Values 0..4095 (a 12-bit sensor) in a 16-bit image: Pillow's own convert would make most of it 255."""
    return Image.fromarray(np.arange(4096, dtype=np.uint16).reshape(64, 64))


# relative path -> the category the checker must report for it
DEFECTS = {
    "cat/zero.png": "zero_bytes",
    "cat/cut.png": "truncated",
    "dog/cut.jpg": "truncated",
    "dog/notes.png": "not_an_image",
    "dog/bomb.png": "decompression_bomb",
    "cat/big.png": "decompression_bomb",
    "cat/cmyk.jpg": "unusual_mode",
    "dog/palette.png": "unusual_mode",
    "cat/la.png": "unusual_mode",
    "dog/rgba.png": "unusual_mode",
    "cat/deep.png": "unusual_mode",
    "dog/bits.png": "unusual_mode",
    "empty/": "empty_class",
    "cat/.DS_Store": "hidden_file",
    "dog/labels.txt": "non_image_file",
    "README.md": "outside_class",
    "cat/000.png": "duplicate",  # its copy is dog/dup.png
}
BAD_FILES = {path for path, category in DEFECTS.items() if CATEGORIES[category].severity == ERROR and path != "empty/"}


def write_messy_folder(root: Path, *, empty_class: bool = True) -> Path:
    """Twelve good images per class plus one file (or folder) for each defect in DEFECTS."""
    write_random_folder(root, {"cat": 12, "dog": 12})
    files = {
        "cat/zero.png": b"",
        "cat/cut.png": cut_in_half(encoded(noise(size=64), "PNG")),
        "dog/cut.jpg": cut_in_half(encoded(noise(size=64), "JPEG")),
        "dog/notes.png": b"these are my notes, not a picture\n",
        "dog/bomb.png": header_only_png(20_000, 20_000),  # over 2x Pillow's limit: Image.open raises
        "cat/big.png": header_only_png(10_000, 10_000),  # between 1x and 2x: Pillow only warns
        "cat/cmyk.jpg": encoded(noise("CMYK"), "JPEG"),
        "dog/palette.png": encoded(transparent_palette_image(), "PNG", transparency=0),
        "cat/la.png": encoded(noise("LA"), "PNG"),
        "dog/rgba.png": encoded(noise("RGBA"), "PNG"),
        "cat/deep.png": encoded(sixteen_bit_image(), "PNG"),
        "dog/bits.png": encoded(noise("1"), "PNG"),
        "cat/.DS_Store": b"\x00\x00\x00\x01Bud1",
        "dog/labels.txt": b"cat\ndog\n",
        "README.md": b"# my pets\n",
    }
    for relative, content in files.items():
        (root / relative).write_bytes(content)
    shutil.copyfile(root / "cat/000.png", root / "dog/dup.png")
    if empty_class:
        (root / "empty").mkdir()
    return root


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_messy_folder(tmp_path_factory.mktemp("messy"))


@pytest.fixture(scope="module")
def messy_trainable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The messy folder without its empty class, which no on_bad_image policy can train around."""
    return write_messy_folder(tmp_path_factory.mktemp("messy_trainable"), empty_class=False)


# ------------------------------------------------------------------------------------------------ the checker


def test_checker_finds_each_defect_with_its_category(messy: Path) -> None:
    report = check_folder(messy, show_progress=False)
    found = {(p.path, p.category) for p in report.problems}
    for path, category in DEFECTS.items():
        assert (path, category) in found, f"{path} should be reported as {category}"
    duplicate = next(p for p in report.problems if p.category == "duplicate")
    assert "dog/dup.png" in duplicate.detail and "cat and dog" in duplicate.detail
    modes = {p.path: p.detail.split(" ")[0].rstrip(":") for p in report.problems if p.category == "unusual_mode"}
    assert modes == {"cat/cmyk.jpg": "CMYK", "dog/palette.png": "P", "cat/la.png": "LA", "dog/rgba.png": "RGBA",
                     "cat/deep.png": "I;16", "dog/bits.png": "1"}
    assert not any(p.path.startswith(("cat/0", "dog/0")) and p.category != "duplicate" for p in report.problems)
    assert {p.path for p in report.errors} == BAD_FILES | {"empty/"}
    assert report.images_per_class == {"cat": 12 + 3, "dog": 12 + 3 + 1, "empty": 0}  # unusual modes and copies still train


def test_bombs_are_refused_from_the_header_without_decoding(messy: Path) -> None:
    start = time.perf_counter()
    over_twice = inspect_image(messy / "dog/bomb.png")  # Image.open raises DecompressionBombError
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow only warns here; the checker still refuses it
        over_once = inspect_image(messy / "cat/big.png")
    for check in (over_twice, over_once):
        assert check.category == "decompression_bomb" and not check.usable
    assert time.perf_counter() - start < 1.0
    assert (messy / "dog/bomb.png").stat().st_size < 200


def test_duplicates_are_reported_across_splits_of_a_run(messy: Path, tmp_path: Path) -> None:
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"train": ["cat/000.png", "cat/001.png"], "val": [], "test": ["dog/dup.png"]}))
    report = check_folder(messy, splits_file=splits, show_progress=False)
    leak = [p for p in report.problems if p.category == "duplicate_across_splits"]
    assert len(leak) == 1 and "cat/000.png in train" in leak[0].detail and "dog/dup.png in test" in leak[0].detail
    assert not any(p.category == "duplicate" for p in report.problems)
    splits.write_text(json.dumps({"train": ["cat/000.png", "dog/dup.png"], "val": [], "test": []}))
    assert not any(p.category.startswith("duplicate") for p in check_folder(messy, splits_file=splits, show_progress=False).problems)


def test_cli_exits_non_zero_on_errors_and_zero_on_a_clean_folder(messy: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "check", str(messy), "-q"]) == 1
    table = capsys.readouterr().out
    for category in set(DEFECTS.values()):
        assert CATEGORIES[category].title in table
    assert "data.on_bad_image=skip" in table and "cat/zero.png" in table
    assert main(["data", "check", str(messy), "--json", "-q"]) == 1
    payload = json.loads(capsys.readouterr().out)
    assert payload["counts"]["truncated"] == 2 and payload["errors"] == len(BAD_FILES) + 1
    clean = write_random_folder(tmp_path / "clean", {"a": 3, "b": 3})
    assert main(["data", "check", str(clean), "-q"]) == 0
    assert "No problems found" in capsys.readouterr().out
    one_class = write_random_folder(tmp_path / "one", {"a": 3})
    assert main(["data", "check", str(one_class), "-q"]) == 1
    assert CATEGORIES["too_few_classes"].title in capsys.readouterr().out


# ----------------------------------------------------------------------------------- training: data.on_bad_image


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Fail on any UserWarning inside the block."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        yield


def folder_config(root: Path, **extra) -> DataConfig:
    return DataConfig(name="image_folder", root=str(root), image_size=16, batch_size=4, eval_batch_size=8, workers=0, **extra)


def test_on_bad_image_error_stops_before_training_and_lists_the_files(messy_trainable: Path, tmp_path: Path) -> None:
    from reprocls.experiments.run import train_recipe

    with pytest.raises(ConfigError) as caught:
        load_dataset(folder_config(messy_trainable), seed=0)
    message = str(caught.value)
    assert f"{len(BAD_FILES)} of" in message and all(path in message for path in BAD_FILES)
    assert "reprocls data check" in message and "data.on_bad_image=skip" in message
    config = load_config(REPO / "configs/quickstart.yaml", [
        "data.name=image_folder", f"data.root={messy_trainable}", "data.image_size=16", "data.workers=0",
        f"output_dir={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError, match="cannot be decoded"):
        train_recipe(config, progress=False, echo=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run folder was started


def test_on_bad_image_skip_splits_and_loads_only_good_files(messy_trainable: Path, tmp_path: Path) -> None:
    config = folder_config(messy_trainable, on_bad_image="skip")
    with quiet():  # skipping is said once, in the run's start-up lines, not as a Python warning
        splits = load_dataset(config, seed=0)
    assert len(splits.skipped) == 6 and {s["path"] for s in splits.skipped} == BAD_FILES
    assert {s["path"]: s["reason"] for s in splits.skipped}["dog/cut.jpg"] == "truncated"
    used = [path for name in ("train", "val", "test") for path in splits.split_record[name]]
    assert not set(used) & BAD_FILES and len(used) == 2 * (12 + 3) + 1  # good, unusual modes and the duplicate
    # the split is made after removing the bad files: it equals the split of the folder with them deleted
    cleaned = shutil.copytree(messy_trainable, tmp_path / "cleaned")
    for path in BAD_FILES:
        (cleaned / path).unlink()
    reference = load_dataset(folder_config(cleaned), seed=0)
    assert all(splits.split_record[name] == reference.split_record[name] for name in ("train", "val", "test"))
    with quiet():
        assert load_dataset(config, seed=0).split_record == splits.split_record  # same seed, same split
    for channels in (3, 1):
        config.channels = channels
        with quiet():
            splits = load_dataset(config, seed=0)
        loader = make_loader(splits.train, splits, config, train=True, device=CPU, seed=0, channels_last=False)
        images, labels = next(iter(loader))
        assert images.shape == (4, channels, 16, 16) and torch.isfinite(images).all()
        for split in (splits.val, splits.test):  # every kept file decodes
            assert sum(len(y) for _, y in make_loader(split, splits, config, train=False, device=CPU, seed=0,
                                                      channels_last=False)) == len(split)


def test_a_reused_split_file_drops_files_that_went_bad(tmp_path: Path) -> None:
    root = write_random_folder(tmp_path / "imgs", {"a": 10, "b": 10})
    first = load_dataset(folder_config(root), seed=0)
    split_file = tmp_path / "splits.json"
    split_file.write_text(json.dumps(first.split_record))
    victim = first.split_record["train"][0]
    (root / victim).write_bytes((root / victim).read_bytes()[:100])
    with pytest.raises(ConfigError, match=victim):
        load_dataset(folder_config(root, split_file=str(split_file)), seed=0)
    with quiet():
        reused = load_dataset(folder_config(root, split_file=str(split_file), on_bad_image="skip"), seed=0)
    assert reused.skipped == [{"path": victim, "reason": "truncated", "detail": reused.skipped[0]["detail"]}]
    assert reused.split_record["train"] == first.split_record["train"][1:]
    assert reused.split_record["test"] == first.split_record["test"]


def test_bad_values_of_on_bad_image_are_rejected() -> None:
    assert DataConfig().on_bad_image == "error"
    with pytest.raises(ConfigError, match="on_bad_image"):
        load_config(None, ["data.on_bad_image=ignore"])


# ------------------------------------------------------------------------------------------- mode conversion


def test_sixteen_bit_images_are_scaled_by_their_range_not_clipped() -> None:
    grey = np.asarray(to_mode(sixteen_bit_image(), 1))
    assert grey.shape == (64, 64) and grey.dtype == np.uint8
    assert grey.min() == 0 and grey.max() == 255 and (grey == 255).mean() < 0.01
    assert abs(int(grey.flat[2048]) - 128) <= 1 and np.all(np.diff(grey.ravel().astype(int)) >= 0)
    rgb = np.asarray(to_mode(sixteen_bit_image(), 3))
    assert rgb.shape == (64, 64, 3) and np.array_equal(rgb[..., 0], grey)


@pytest.mark.parametrize("values, expected", [
    (np.array([[0, 65535]], dtype=np.int32), [0, 255]),  # full 16-bit range in a 32-bit image
    (np.array([[0, 200]], dtype=np.int32), [0, 200]),  # 8-bit data stays as it is
    (np.array([[0.0, 0.5, 1.0]], dtype=np.float32), [0, 128, 255]),  # floats in [0, 1]
    (np.array([[-1.0, 1.0, 3.0]], dtype=np.float32), [0, 128, 255]),  # other floats: by their range
])
def test_32_bit_and_float_images_keep_their_contrast(values: np.ndarray, expected: list[int]) -> None:
    image = Image.fromarray(values)
    assert image.mode in ("I", "F")
    assert np.asarray(to_mode(image, 1)).ravel().tolist() == expected


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparent_pixels_become_white_not_garbage(mode: str) -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)  # black, fully transparent
    rgba[0, 0] = (10, 20, 30, 255)  # one opaque pixel keeps its colour
    image = Image.fromarray(rgba)
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = image.convert("RGB").quantize(4)
        transparent = image.getpixel((3, 3))
        image.info["transparency"] = transparent
    rgb = np.asarray(to_mode(image, 3))
    grey = np.asarray(to_mode(image, 1))
    assert rgb.shape == (4, 4, 3) and grey.shape == (4, 4)
    assert (rgb[1:, 1:] == 255).all() and (grey[1:, 1:] == 255).all()
    if mode == "RGBA":
        assert rgb[0, 0].tolist() == [10, 20, 30]
    assert grey[0, 0] < 40  # the opaque dark pixel stays dark


def test_cmyk_one_bit_and_plain_modes_convert_to_the_right_shape() -> None:
    cyan = Image.new("CMYK", (2, 2), (255, 0, 0, 0))
    assert np.asarray(to_mode(cyan, 3))[0, 0].tolist() == [0, 255, 255]
    assert np.asarray(to_mode(cyan, 1)).shape == (2, 2)
    bits = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8)).convert("1")
    assert np.asarray(to_mode(bits, 1)).tolist() == [[0, 255], [255, 0]]
    assert np.asarray(to_mode(bits, 3)).shape == (2, 2, 3)
    rgb = noise()
    assert np.array_equal(np.asarray(to_mode(rgb, 3)), np.asarray(rgb))
    assert np.array_equal(np.asarray(to_mode(rgb, 1)), np.asarray(rgb.convert("L")))
    assert np.array_equal(np.asarray(to_mode(noise("P"), 3)), np.asarray(noise("P").convert("RGB")))


def test_file_dataset_decodes_through_to_mode(tmp_path: Path) -> None:
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(path)
    for mode, shape in (("RGB", (3, 8, 8)), ("L", (1, 8, 8))):
        image, label = FileDataset(FileSplit([(str(path), 0)]), v2.PILToTensor(), mode)[0]
        assert image.shape == shape and (image == 255).all() and label == 0


# -------------------------------------------------------------------------------------- class-to-index map


def test_evaluating_on_folders_with_other_classes_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from reprocls.experiments.evaluate import evaluate_saved
    from reprocls.experiments.run import train_recipe

    trained_on = write_random_folder(tmp_path / "trained", {"ant": 6, "bee": 6})
    config = load_config(REPO / "configs/quickstart.yaml", [
        "data.name=image_folder", f"data.root={trained_on}", "data.image_size=16", "data.workers=0", "data.batch_size=4",
        "schedule.epochs=1", "train.precision=fp32", f"output_dir={tmp_path / 'runs'}", "name=classes"])
    run_dir, _ = train_recipe(config, progress=False, echo=False)
    renamed = write_random_folder(tmp_path / "renamed", {"ant": 6, "wasp": 6})
    with pytest.raises(ConfigError, match=r"missing from the data \['bee'\], unknown to the model \['wasp'\]"):
        evaluate_saved(run_dir, overrides=[f"data.root={renamed}"], progress=False)
    extra = write_random_folder(tmp_path / "extra", {"ant": 6, "bee": 6, "cicada": 6})
    assert main(["eval", str(run_dir), f"data.root={extra}", "-q"]) == 2
    assert "unknown to the model ['cicada']" in capsys.readouterr().err


def test_a_run_that_skipped_images_says_so_on_the_console_and_in_both_reports(messy_trainable: Path, tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture) -> None:
    overrides = ["data.name=image_folder", f"data.root={messy_trainable}", "data.image_size=16", "data.workers=0",
                 "data.batch_size=4", "data.on_bad_image=skip", "schedule.epochs=1", "schedule.name=constant",
                 f"output_dir={tmp_path / 'runs'}"]
    with quiet():
        assert main(["train", "configs/quickstart.yaml", *overrides, "-q", "--no-doctor"]) == 0
    out = capsys.readouterr().out
    assert "data.on_bad_image=skip: left out 6 image(s) that cannot be decoded" in out
    run_dir = next((tmp_path / "runs").iterdir())
    assert "6 undecodable file(s) left out (skipped_images.json)" in (run_dir / "report.md").read_text()
    assert "6 image file(s) could not be decoded and were left out" in (run_dir / "report.html").read_text()


def test_data_stats_takes_a_folder_path_and_a_channel_count(messy_trainable: Path, capsys: pytest.CaptureFixture) -> None:
    clean = messy_trainable.parent / "stats-clean"
    write_random_folder(clean, {"a": 4, "b": 4})
    assert main(["data", "stats", str(clean)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{clean}: 8 training images, 3 channel(s)")
    assert main(["data", "stats", str(clean), "--channels", "1"]) == 0
    assert "8 training images, 1 channel(s)" in capsys.readouterr().out

