"""reprocls reproduce: the verdict rule at its boundaries (shared with a single run's results.json), a real two-seed
reproduction on one pinned data split, interrupted and resumed ones, the CLI's exit codes, and the report as a browser
renders it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import reprocls.experiments.reproduce as reproduce_module
from reprocls.cli import main
from reprocls.config import ConfigError, ReferenceConfig, load_config
from reprocls.data import load_dataset
from reprocls.experiments.reproduce import reproduce
from reprocls.reports.reproduction_page import write_reproduction_page as write_reproduction_report
from reprocls.experiments.run import reference_gap
from reprocls.metrics.stats import describe, t_quantile_975
from reprocls.metrics.verdict import judge

REPO = Path(__file__).parent.parent
TINY = ["data.limit_train=512", "data.limit_eval=256", "schedule.epochs=2", "data.batch_size=64", "train.threads=1",
        "model.name=resnet20"]


def tiny_recipe(root: Path, out: Path, *extra: str):
    return load_config(REPO / "configs/quickstart.yaml", [f"data.root={root}", f"output_dir={out}", *TINY, *extra])


# ---------------------------------------------------------------------------------------------- judge()


def paper(top1: float, tolerance: float = 0.005, source: str = "paper X") -> ReferenceConfig:
    return ReferenceConfig(source=source, top1=top1, tolerance=tolerance)


def test_no_reference_still_reports_the_numbers() -> None:
    verdict = judge([0.90, 0.92], None)
    assert verdict["status"] == "no reference"
    assert "mean 91.00 ± 1.41 % over 2 seeds" in verdict["text"] and "reference:" in verdict["text"]


def test_mean_exactly_at_reference_minus_tolerance_is_reproduced() -> None:
    verdict = judge([0.944, 0.944], paper(0.949, 0.005))
    assert verdict["status"] == "reproduced" and verdict["tone"] == "good"
    assert verdict["text"].startswith("reproduced: mean 94.40 ± 0.00 % over 2 seeds vs 94.90 % reported by paper X")
    assert "gap -0.50 points" in verdict["text"]


def test_above_the_reference_is_reproduced_with_zero_tolerance() -> None:
    assert judge([0.95, 0.96], paper(0.95, 0.0))["status"] == "reproduced"
    assert judge([0.949999, 0.949999], paper(0.95, 0.0))["status"] != "reproduced"


def test_gap_inside_the_prediction_bound_is_within_noise_even_beyond_two_std() -> None:
    values = [0.93, 0.95]  # mean 0.94, std 1.414 points; 2 x std = 2.83 points would call a 3-point gap short
    verdict = judge(values, paper(0.97))
    bound = 12.706 * 0.0141421356 * 1.2247449  # t(0.975, 1) x std x sqrt(1 + 1/2) = 22.01 points
    assert verdict["status"] == "within noise" and verdict["tone"] == "warn"
    assert verdict["noise"] == pytest.approx(bound, rel=1e-6)
    assert verdict["label"] == "within noise: short by 3.00 points"
    assert "short by 3.00 points (mean 94.00 ± 1.41 % over 2 seeds vs 97.00 % reported by paper X)" in verdict["text"]
    assert "t(0.975, 1) x std x sqrt(1 + 1/2) = 12.706 x 1.41 x 1.225 = 22.01 points" in verdict["text"]


def test_gap_at_the_prediction_bound_is_within_noise_and_a_hair_more_is_short() -> None:
    values = [0.90, 0.91, 0.92]  # std 0.01 exactly
    edge = 0.91 + 4.303 * 0.01 * np.sqrt(4 / 3)  # mean + t(0.975, 2) x std x sqrt(1 + 1/3) = 0.9596866
    assert judge(values, paper(edge, 0.0))["status"] == "within noise"
    short = judge(values, paper(edge + 1e-6, 0.0))
    assert short["status"] == "short" and short["tone"] == "bad"
    assert short["short_by"] == pytest.approx(edge + 1e-6 - 0.91)


def test_short_text_spells_out_every_number() -> None:
    verdict = judge([0.90, 0.90, 0.90], paper(0.95, 0.005, "He et al. 2016, table 6"))
    assert verdict["status"] == "short"
    assert verdict["text"].startswith("short by 5.00 points (mean 90.00 ± 0.00 % over 3 seeds vs 95.00 % reported by "
                                      "He et al. 2016, table 6)")
    assert "0.50-point tolerance" in verdict["text"]
    assert "t(0.975, 2) x std x sqrt(1 + 1/3) = 4.303 x 0.00 x 1.155 = 0.00 points" in verdict["text"]


def test_one_seed_is_never_within_noise() -> None:
    verdict = judge([0.93], paper(0.949))
    assert verdict["status"] == "short" and verdict["std"] is None and verdict["noise"] is None
    assert "93.00 % from 1 seed, std undefined" in verdict["text"] and "run more seeds" in verdict["text"]
    assert judge([0.946], paper(0.949))["status"] == "reproduced"


def test_a_single_run_is_judged_by_the_same_rule_and_words(tmp_path: Path) -> None:
    config = load_config(REPO / "configs/quickstart.yaml", [f"output_dir={tmp_path}", "reference.top1=0.949",
                                                            "reference.tolerance=0.005", "reference.source=paper X"])
    at_boundary = reference_gap(config, 0.944)  # 0.944 - 0.949 is -0.0050000000000000044 in floats
    assert at_boundary["verdict"] == "reproduced" == judge([0.944], config.reference)["label"]
    short = reference_gap(config, 0.93)
    assert short == {"source": "paper X", "top1": 0.949, "tolerance": 0.005, "gap": pytest.approx(-0.019),
                     "verdict": "short by 1.90 points", "text": judge([0.93], config.reference)["text"]}
    assert short["text"].startswith("short by 1.90 points (93.00 % from 1 seed, std undefined vs 94.90 % reported by ")


def test_describe_matches_numpy_and_student_t() -> None:
    values = [0.91, 0.925, 0.93, 0.918]
    stats = describe(values)
    assert stats["mean"] == pytest.approx(np.mean(values)) and stats["std"] == pytest.approx(np.std(values, ddof=1))
    half = 3.182 * np.std(values, ddof=1) / 2  # t(0.975, 3) * std / sqrt(4)
    assert stats["ci95"] == pytest.approx([np.mean(values) - half, np.mean(values) + half])
    one = describe([0.9])
    assert one["std"] is None and one["ci95"] is None and "one seed" in one["note"]


def test_t_quantiles_beyond_the_table_are_close_to_published_values() -> None:
    for df, published in ((40, 2.021), (60, 2.000), (120, 1.980)):
        assert t_quantile_975(df) == pytest.approx(published, abs=1.5e-3)
    assert t_quantile_975(1) == 12.706


# ---------------------------------------------------------------------------------------------- real reproductions


@pytest.fixture(scope="module")
def interrupted_then_resumed(fmnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A 2-seed reproduction interrupted (Ctrl-C) before seed 1, then finished with --resume."""
    out = tmp_path_factory.mktemp("reproduce")
    config = tiny_recipe(fmnist_root, out, "reference.top1=0.5", "reference.source=test")
    real_train = reproduce_module.train_recipe

    def interrupt_seed_one(recipe, **kwargs):
        if recipe.seed == 1:
            raise KeyboardInterrupt
        return real_train(recipe, **kwargs)

    reproduce_module.train_recipe = interrupt_seed_one
    try:
        with pytest.raises(KeyboardInterrupt):
            reproduce(config, seeds=2, progress=False, echo=False)
    finally:
        reproduce_module.train_recipe = real_train
    (folder,) = out.glob("quickstart-reproduce-*")
    partial = json.loads((folder / "reproduction.json").read_text())
    (seed0,) = (folder / "seeds").glob("quickstart-seed0-*")
    before = {"bytes": (seed0 / "results.json").read_bytes(), "mtime": (seed0 / "results.json").stat().st_mtime_ns}
    summary = reproduce(config, resume=folder, progress=False, echo=False)
    return SimpleNamespace(config=config, folder=folder, partial=partial, seed0=seed0, before=before, summary=summary)


@pytest.mark.slow
def test_an_interrupted_reproduction_keeps_what_it_finished(interrupted_then_resumed) -> None:
    partial = interrupted_then_resumed.partial
    assert partial["seeds"] == [0, 1] and partial["finished"] == 1 and partial["complete"] is False
    assert [r["seed"] for r in partial["runs"]] == [0]


@pytest.mark.slow
def test_resume_keeps_the_finished_seed_and_trains_only_the_missing_one(interrupted_then_resumed) -> None:
    done = interrupted_then_resumed
    assert (done.seed0 / "results.json").read_bytes() == done.before["bytes"]
    assert (done.seed0 / "results.json").stat().st_mtime_ns == done.before["mtime"]
    assert sorted(p.name.split("-")[1] for p in (done.folder / "seeds").iterdir()) == ["seed0", "seed1"]
    assert [(r["seed"], r["how"]) for r in done.summary["runs"]] == [(0, "kept"), (1, "trained")]
    assert done.summary["complete"] is True and done.summary["seeds"] == [0, 1]  # the plan came from the folder


@pytest.mark.slow
def test_seeds_differ_and_statistics_match_numpy(interrupted_then_resumed) -> None:
    folder, summary = interrupted_then_resumed.folder, interrupted_then_resumed.summary
    results = [json.loads((folder / r["run"] / "results.json").read_text()) for r in summary["runs"]]
    assert [r["seed"] for r in results] == [0, 1]
    top1 = [r["test"]["top1"] for r in results]
    assert top1[0] != top1[1]  # different seeds, different models
    stats = summary["statistics"]
    assert stats["test_top1"]["mean"] == pytest.approx(np.mean(top1))
    assert stats["test_top1"]["std"] == pytest.approx(np.std(top1, ddof=1))
    assert stats["test_loss"]["mean"] == pytest.approx(np.mean([r["test"]["loss"] for r in results]))
    assert stats["val_top1"]["std"] == pytest.approx(np.std([r["val"]["top1"] for r in results], ddof=1))
    assert stats["images_per_s"]["max"] == pytest.approx(max(r["images_per_s"] for r in results))
    assert summary["verdict"] == judge(top1, interrupted_then_resumed.config.reference)
    assert results[0]["reference"]["verdict"] == judge([top1[0]], interrupted_then_resumed.config.reference)["label"]
    on_disk = json.loads((folder / "reproduction.json").read_text())
    assert on_disk["verdict"]["status"] == summary["verdict"]["status"] and on_disk["complete"] is True
    assert on_disk["environment"]["torch"] and on_disk["environment"]["differs_across_seeds"] == {}
    assert load_config(folder / "recipe.yaml").reference.top1 == 0.5
    markdown = (folder / "reproduction.md").read_text()
    assert summary["verdict"]["text"] in markdown and "| test top-1 |" in markdown


@pytest.mark.slow
def test_every_seed_is_scored_on_the_same_images_but_trains_differently(interrupted_then_resumed) -> None:
    folder, summary = interrupted_then_resumed.folder, interrupted_then_resumed.summary
    configs = [load_config(folder / r["run"] / "config.yaml") for r in summary["runs"]]
    assert [c.seed for c in configs] == [0, 1] and [c.data.split_seed for c in configs] == [0, 0]
    seed0, seed1 = (load_dataset(c.data, c.seed) for c in configs)
    for name in ("train", "val", "test"):  # limit_train/limit_eval subsets included
        assert len(getattr(seed0, name)) < 1000
        assert getattr(seed0, name).labels.equal(getattr(seed1, name).labels)
        assert getattr(seed0, name).images.equal(getattr(seed1, name).images)
    configs[1].data.split_seed = None  # control: a plain run with seed 1 draws another split
    assert not load_dataset(configs[1].data, 1).test.images.equal(seed0.test.images)
    histories = [[json.loads(line)["train_loss"] for line in (folder / r["run"] / "metrics.jsonl").read_text().splitlines()]
                 for r in summary["runs"]]
    assert histories[0] != histories[1]  # same data, different initialisation and batch order
    assert summary["split_seed"] == 0
    assert "Every seed is evaluated on the same images (data.split_seed: 0)." in (folder / "reproduction.md").read_text()


@pytest.mark.slow
def test_a_plan_interrupted_in_its_first_seed_is_kept_on_resume(fmnist_root: Path, tmp_path: Path) -> None:
    config = tiny_recipe(fmnist_root, tmp_path, "reference.top1=0.5", "reference.source=test")
    real_train = reproduce_module.train_recipe

    def stop_after_last_checkpoint(recipe, **kwargs):
        run_dir, results = real_train(recipe, **kwargs)
        (run_dir / "results.json").unlink()
        raise KeyboardInterrupt

    reproduce_module.train_recipe = stop_after_last_checkpoint
    try:
        with pytest.raises(KeyboardInterrupt):
            reproduce(config, seeds=1, first_seed=10, out=tmp_path / "r", progress=False, echo=False)
    finally:
        reproduce_module.train_recipe = real_train
    plan = json.loads((tmp_path / "r" / "reproduction.json").read_text())
    assert plan["seeds"] == [10] and plan["first_seed"] == 10 and plan["finished"] == 0 and plan["verdict"] is None
    with pytest.raises(FileNotFoundError, match="no seed has finished yet"):
        write_reproduction_report(tmp_path / "r")
    summary = reproduce(config, resume=tmp_path / "r", progress=False, echo=False)
    assert summary["seeds"] == [10] and [(r["seed"], r["how"]) for r in summary["runs"]] == [(10, "resumed")]
    assert len(list((tmp_path / "r" / "seeds").iterdir())) == 1


@pytest.mark.slow
def test_a_checkpointed_seed_is_continued_not_retrained(interrupted_then_resumed, tmp_path: Path) -> None:
    folder = shutil.copytree(interrupted_then_resumed.folder, tmp_path / "copy")
    (seed1,) = (folder / "seeds").glob("quickstart-seed1-*")
    original = json.loads((seed1 / "results.json").read_text())
    (seed1 / "results.json").unlink()  # as if stopped after its last checkpoint
    summary = reproduce(interrupted_then_resumed.config, resume=folder, progress=False, echo=False)
    assert [(r["seed"], r["how"]) for r in summary["runs"]] == [(0, "kept"), (1, "resumed")]
    assert len(list((folder / "seeds").iterdir())) == 2  # continued in its own folder
    resumed = json.loads((seed1 / "results.json").read_text())
    assert resumed["test"]["top1"] == original["test"]["top1"] and resumed["resumed_from"]


@pytest.mark.slow
def test_resume_refuses_a_changed_recipe_naming_the_key(interrupted_then_resumed, fmnist_root: Path) -> None:
    folder = interrupted_then_resumed.folder
    changed = tiny_recipe(fmnist_root, folder.parent, "reference.top1=0.5", "reference.source=test", "optim.lr=0.1")
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.2 in the folder, 0\.1 now"):
        reproduce(changed, resume=folder, progress=False, echo=False)
    other_paper = tiny_recipe(fmnist_root, folder.parent, "reference.top1=0.6", "reference.source=test")
    with pytest.raises(ConfigError, match=r"reference\.top1: 0\.5 in the folder, 0\.6 now"):
        reproduce(other_paper, resume=folder, progress=False, echo=False)


@pytest.mark.slow
def test_report_renders_in_a_browser_with_the_verdict(interrupted_then_resumed, tmp_path: Path) -> None:
    from browser import render

    folder, summary = interrupted_then_resumed.folder, interrupted_then_resumed.summary
    page = write_reproduction_report(folder)
    assert page == folder / "report.html"
    rendered = render(page, tmp_path)
    assert rendered.images >= 3 and rendered.images_decoded == rendered.images
    assert {"Over seeds", "Seeds", "Test top-1 per seed", "Validation curves", "Per-class accuracy", "Recipe",
            "Environment"} <= set(rendered.headings)
    assert summary["verdict"]["text"] in rendered.text
    assert "Trouser" in rendered.text and rendered.scripts == 0


@pytest.mark.slow
def test_cli_exit_codes_follow_the_verdict(fmnist_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    def cli(*overrides: str, options: tuple[str, ...]) -> int:
        return main(["reproduce", str(REPO / "configs/quickstart.yaml"), f"data.root={fmnist_root}", f"output_dir={tmp_path}",
                     *TINY, *overrides, "--seeds", "1", "-q", *options])

    assert cli("reference.top1=0.99", options=("--out", str(tmp_path / "short"))) == 1
    out = capsys.readouterr().out
    assert "short by" in out and "95 % CI of the mean" in out
    assert json.loads((tmp_path / "short" / "reproduction.json").read_text())["verdict"]["status"] == "short"
    assert (tmp_path / "short" / "report.html").exists()

    assert cli("reference.top1=0.99", "optim.lr=0.1", options=("--resume", str(tmp_path / "short"))) == 2
    assert "optim.lr" in capsys.readouterr().err

    assert cli("reference.top1=0.0", options=("--out", str(tmp_path / "easy"))) == 0
    assert "reproduced:" in capsys.readouterr().out
    assert cli(options=("--out", str(tmp_path / "easy"))) == 2  # the folder is taken
    assert "--resume" in capsys.readouterr().err


def test_torchrun_is_refused_before_any_folder_is_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = load_config(REPO / "configs/quickstart.yaml", [f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="without torchrun"):
        reproduce(config, seeds=2, progress=False, echo=False)
    assert list(tmp_path.iterdir()) == []


def test_intervals_of_bounded_numbers_stay_in_bounds_and_a_result_above_the_paper_says_so() -> None:
    from reprocls.experiments.reproduce import statistics

    records = [{"metrics": {"test_top1": v, "test_top5": t5, "train_time_s": s, "test_loss": 0.3, "val_top1": None,
                            "images_per_s": 900.0}}
               for v, t5, s in ((0.95, 0.999, 5.0), (0.93, 0.98, 400.0))]
    stats = statistics(records)
    assert stats["test_top5"]["ci95"][1] <= 1.0 and stats["test_top1"]["ci95"][1] <= 1.0
    assert stats["train_time_s"]["ci95"][0] >= 0.0
    above = judge([0.95, 0.96], paper(0.912, 0.0))
    assert above["status"] == "reproduced" and "above the reported number" in above["text"]
    assert "tolerance" not in above["text"]

