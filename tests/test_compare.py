"""reprocls compare: two real runs side by side find exactly the config keys and environment entries that differ."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from reprocls.cli import main
from reprocls.config import ConfigError, load_config
from reprocls.envinfo import environment_differences, parse_freeze
from reprocls.reports.compare import MetricRow, compare_runs, short_labels
from reprocls.reports.tables import format_metric
from reprocls.experiments.run import train_recipe

REPO = Path(__file__).parent.parent
TINY = ["data.limit_train=512", "data.limit_eval=256", "data.batch_size=64", "train.threads=1", "model.name=resnet20"]


@pytest.fixture(scope="module")
def two_runs(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Run 'a' (lr 0.2, 2 epochs) and run 'b' (lr 0.1, 3 epochs), otherwise the same recipe on the same machine."""
    out = tmp_path_factory.mktemp("compare")
    runs = []
    for name, extra in (("a", ["optim.lr=0.2", "schedule.epochs=2"]), ("b", ["optim.lr=0.1", "schedule.epochs=3"])):
        config = load_config(REPO / "configs/quickstart.yaml", [f"data.root={fmnist_root}", f"output_dir={out / name}",
                                                                 f"name={name}", *TINY, *extra])
        runs.append(train_recipe(config, progress=False, echo=False))
    return SimpleNamespace(paths=[path for path, _ in runs], results=[results for _, results in runs])


def test_parse_freeze_normalises_names_and_reads_direct_references() -> None:
    packages = parse_freeze(["# comment", "Torch_Vision==0.24.0", "numpy==2.1.0", "reprocls @ file:///work/main", "-e /src/x"])
    assert packages == {"torch-vision": "0.24.0", "numpy": "2.1.0", "reprocls": "file:///work/main", "-e /src/x": "installed"}


def test_environment_differences_names_keys_and_packages() -> None:
    base = {"python": "3.11.7", "torch": "2.9.0", "git": {"commit": "abc", "dirty": False}, "pip_freeze": ["numpy==2.1.0"]}
    other = {**base, "git": {"commit": "def", "dirty": False}, "pip_freeze": ["numpy==2.2.0", "timm==1.0"]}
    differences, packages = environment_differences([base, other])
    assert differences == {"git.commit": ["abc", "def"]}
    assert packages == {"numpy": ["2.1.0", "2.2.0"], "timm": ["(absent)", "1.0"]}
    assert environment_differences([base, {**base, "pip_freeze": []}])[0] == {"pip_freeze": ["recorded", "not recorded"]}


def test_best_marks_the_winners_in_the_metric_direction() -> None:
    assert MetricRow("test_top1", "test top-1", [0.81, 0.85, 0.85], "higher").best() == [1, 2]  # a tie marks both
    assert MetricRow("test_loss", "test loss", [0.52, 0.40, None], "lower").best() == [1]  # a missing value never wins
    assert MetricRow("test_top1", "test top-1", [0.9, 0.9], "higher").best() == []  # equal everywhere: no winner
    assert MetricRow("test_top1", "test top-1", [0.9, None], "higher").best() == []  # one value: nothing to compare
    assert MetricRow("epochs", "epochs", [2, 3], None).best() == []  # not ranked
    row = MetricRow("test_top1", "test top-1", [0.8123, 0.9], "higher")
    assert [row.cell(0), row.cell(1)] == ["81.23 %", "90.00 % *"]
    assert format_metric("reference_gap", -0.019) == "-1.90 points" and format_metric("params", 272474) == "0.272 M"


def test_short_labels_fall_back_until_runs_are_told_apart() -> None:
    assert short_labels([Path("x/q-1"), Path("y/q-1")], ["a", "b"]) == ["a", "b"]
    assert short_labels([Path("x/q-1"), Path("x/q-2")], ["q", "q"]) == ["q-1", "q-2"]
    assert short_labels([Path("x/q-1"), Path("y/q-1")], ["q", "q"]) == ["x/q-1", "y/q-1"]
    assert short_labels([Path("x/q-1"), Path("x/q-1")], ["q", "q"]) == ["run 1", "run 2"]


def test_fewer_than_two_runs_or_unfinished_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least two run folders"):
        compare_runs([tmp_path])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        compare_runs([tmp_path / "nowhere", tmp_path])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("name: half\n")
    with pytest.raises(FileNotFoundError, match=r"half has no results\.json, environment\.json"):
        compare_runs([tmp_path / "half", tmp_path / "half"])


@pytest.mark.slow
def test_config_differences_are_exactly_the_changed_keys(two_runs) -> None:
    comparison = compare_runs(two_runs.paths)
    assert comparison.labels == ["a", "b"]
    assert comparison.config_differences == {"optim.lr": [0.2, 0.1], "schedule.epochs": [2, 3]}
    assert comparison.ignored_keys == ["name", "output_dir"]
    everything = compare_runs(two_runs.paths, include_expected=True)
    assert set(everything.config_differences) == {"optim.lr", "schedule.epochs", "name", "output_dir"}
    assert everything.config_equal == comparison.config_equal


@pytest.mark.slow
def test_metric_rows_read_results_and_mark_the_best(two_runs) -> None:
    comparison = compare_runs(two_runs.paths)
    rows = {row.key: row for row in comparison.metrics}
    top1 = [r["test"]["top1"] for r in two_runs.results]
    assert rows["test_top1"].values == top1 and top1[0] != top1[1]
    assert rows["test_loss"].values == [r["test"]["loss"] for r in two_runs.results]
    assert rows["epochs"].values == [2, 3] and rows["epochs"].best() == []  # not ranked
    assert rows["params"].best() == []  # same model: equal everywhere
    assert rows["reference_gap"].values == [r["reference"]["gap"] for r in two_runs.results]
    text = comparison.format()
    assert f"{100 * max(top1):.2f} % *" in text and f"{100 * min(top1):.2f} % *" not in text
    assert "optim.lr" in text and "schedule.epochs" in text
    assert "environment differences: none" in text


@pytest.mark.slow
def test_environment_differences_appear_only_after_an_edit(two_runs, tmp_path: Path) -> None:
    assert compare_runs(two_runs.paths).environment == {}  # same machine, same packages
    edited = shutil.copytree(two_runs.paths[1], tmp_path / "b-elsewhere")
    environment = json.loads((edited / "environment.json").read_text())
    environment["torch"], environment["torch_threads"] = "2.0.0", 64
    environment["pip_freeze"] = [line for line in environment["pip_freeze"] if not line.lower().startswith("numpy==")]
    (edited / "environment.json").write_text(json.dumps(environment))
    comparison = compare_runs([two_runs.paths[0], edited])
    assert set(comparison.environment) == {"torch", "torch_threads"}
    assert comparison.environment["torch"][1] == "2.0.0"
    assert set(comparison.packages) == {"numpy"} and comparison.packages["numpy"][1] == "(absent)"
    assert "package numpy" in comparison.format()


@pytest.mark.slow
def test_cli_json_html_and_errors(two_runs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from browser import render

    paths = [str(p) for p in two_runs.paths]
    assert main(["compare", *paths, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload["config"]["differences"]) == {"optim.lr", "schedule.epochs"}
    assert [run["label"] for run in payload["runs"]] == ["a", "b"]
    assert payload["metrics"][0]["values"] == [r["test"]["top1"] for r in two_runs.results]

    page = tmp_path / "compare.html"
    assert main(["compare", *paths, "--html", str(page)]) == 0
    assert f"report: {page}" in capsys.readouterr().out
    rendered = render(page, tmp_path)
    assert rendered.images >= 3 and rendered.images_decoded == rendered.images
    assert {"Metrics", "Test accuracy", "Per-class accuracy", "Validation curves", "Config differences",
            "Environment differences"} <= set(rendered.headings)
    assert compare_runs(paths).headline() in rendered.text and "schedule.epochs" in rendered.text

    assert main(["compare", paths[0]]) == 2
    assert "at least two run folders" in capsys.readouterr().err
    assert main(["compare", paths[0], str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
