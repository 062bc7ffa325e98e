"""The command line: listing, profiling and key documentation print what they promise."""

from __future__ import annotations

import json

import pytest

from reprocls.cli import main


def test_models_lists_params_and_macs(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "resnet2*", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"resnet20"}
    assert rows["resnet20"]["params"] == 269_722
    assert rows["resnet20"]["input_size"] == [3, 32, 32] and 0.03e9 < rows["resnet20"]["macs"] < 0.05e9


def test_models_with_unknown_pattern_is_an_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "resnot*"]) == 2
    assert "no registered model matches" in capsys.readouterr().err


def test_profile_reports_macs_as_half_the_flops(capsys: pytest.CaptureFixture) -> None:
    assert main(["profile", "resnet20", "--input", "1x28x28", "--batch", "2", "--iters", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_size"] == [1, 28, 28] and report["batch"] == 2
    assert report["flops"] == 2 * report["macs"] > 0
    assert report["latency_ms_p50"] > 0 and report["train_images_per_s"] > 0


def test_timm_prefix_builds_their_model() -> None:
    timm = pytest.importorskip("timm", reason="timm is an optional extra (pip install 'reprocls[timm]')")
    from reprocls import create_model

    model = create_model("timm/resnet18", num_classes=4, in_chans=1)
    assert isinstance(model, timm.models.ResNet) and model.fc.out_features == 4 and model.conv1.in_channels == 1


def test_config_lists_every_key(capsys: pytest.CaptureFixture) -> None:
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert "optim.lr_reference_batch" in out and "data.augment.random_erasing" in out


def test_data_stats_measures_the_known_constants(fmnist_root, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "stats", "fashion_mnist", "--root", str(fmnist_root)]) == 0
    out = capsys.readouterr().out
    assert "60000 training images" in out
    assert "measured  mean [0.286]  std [0.353]" in out


def test_overrides_may_follow_options_and_unknown_options_are_refused(capsys: pytest.CaptureFixture) -> None:
    from reprocls.cli import parse_args

    args = parse_args(["train", "configs/quickstart.yaml", "optim.lr=0.3", "-q", "--resume", "auto", "schedule.epochs=2"])
    assert args.overrides == ["optim.lr=0.3", "schedule.epochs=2"] and args.quiet and args.resume == "auto"
    with pytest.raises(SystemExit):
        parse_args(["train", "configs/quickstart.yaml", "--bogus", "optim.lr=0.3"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a stray word that is no override is not silently dropped
        parse_args(["train", "configs/quickstart.yaml", "-q", "optim.lr"])
