"""reprocls tune: search spaces checked against the schema, pruner defaults, real tiny searches (grid, pruning, EMA,
two workers on a PostgreSQL server), best.yaml, the study report in a browser, and a SIGKILLed study whose killed
trial continues from its checkpoint."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from itertools import product
from pathlib import Path
from typing import Iterator

import optuna
import pytest
from optuna.trial import TrialState

from reprocls.cli import build_parser, main
from reprocls.config import ConfigError, get_key, load_config, load_recipe, to_dict
from reprocls.experiments.rewrite import rewrite_report as write_html_report
from reprocls.reports.folders import read_history
from reprocls.experiments.tune.search import tune
from reprocls.experiments.tune.space import grid_points, load_space, parse_space
from reprocls.experiments.tune.storage import MAX_RETRIES, Requeue
from reprocls.experiments.tune.strategies import PRUNERS, SAMPLERS, make_pruner
from reprocls.experiments.tune.summary import trial_line, write_best_recipe, write_study_report

REPO = Path(__file__).parent.parent
RECIPE = str(REPO / "configs/quickstart.yaml")
SERVER_SCRIPT = REPO / "scripts/postgres-test-server.sh"
# 256 training images in batches of 64, two epochs: a trial takes a few seconds on one thread
TINY = ["data.limit_train=256", "data.limit_eval=128", "schedule.epochs=2", "data.batch_size=64", "train.threads=1",
        "model.name=resnet20"]


def write_space(folder: Path, text: str) -> Path:
    path = folder / "space.yaml"
    path.write_text(text)
    return path


def load(folder: Path) -> optuna.Study:
    return optuna.load_study(study_name=None, storage=f"sqlite:///{folder / 'study.db'}")


def comparable(config) -> dict:
    """A config without the keys a trial and best.yaml legitimately differ in (run name, output folder)."""
    return {k: v for k, v in to_dict(config).items() if k not in ("name", "output_dir")}


# ---------------------------------------------------------------------------------------------- spaces


def test_space_types_follow_the_schema() -> None:
    space = parse_space({"optim.lr": {"low": 0.01, "high": 0.5, "log": True}, "data.batch_size": [64, 128],
                         "optim.weight_decay": {"choices": [0, 5.0e-4]}, "data.augment.randaugment_magnitude":
                         {"low": 5, "high": 15, "step": 5}, "model.kwargs.dropout": {"low": 0.0, "high": 0.3}})
    lr, batch, decay, magnitude, dropout = space.values()
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log and (lr.low, lr.high) == (0.01, 0.5)
    assert batch.choices == (64, 128)
    assert decay.choices == (0.0, 5.0e-4) and isinstance(decay.choices[0], float)  # 0 becomes 0.0: the key is a float
    assert isinstance(magnitude, optuna.distributions.IntDistribution) and magnitude.step == 5
    assert isinstance(dropout, optuna.distributions.FloatDistribution)
    assert grid_points({"m": magnitude, "b": batch}) == {"m": [5, 10, 15], "b": [64, 128]}


@pytest.mark.parametrize(("space", "message"), [
    ({"optim.lrr": [0.1]}, r"unknown recipe key 'optim\.lrr'\. Did you mean 'optim\.lr'"),
    ({"data.augment": [1]}, r"'data\.augment' is a section"),
    ({"optim.lr": 0.1}, r"optim\.lr: 0\.1 is not a distribution; give a range"),
    ({"optim.lr": {"low": 0.5}}, r"needs both low and high"),
    ({"optim.lr": {"low": 0.5, "high": 0.1}}, r"low \(0\.5\) must be below high"),
    ({"optim.lr": {"low": 0.0, "high": 1.0, "log": True}}, r"log range needs low > 0"),
    ({"optim.lr": {"low": 0.1, "high": 1.0, "scale": "log"}}, r"unknown field\(s\) \['scale'\]"),
    ({"optim.lr": {"low": -1.0, "high": 1.0}}, r"optim\.lr: -1\.0 cannot be tried.*in \(0, 1000\]"),
    ({"data.batch_size": {"low": 16.5, "high": 64}}, r"integer, so low, high and step must be integers"),
    ({"data.augment.randaugment_magnitude": [5, 40]}, r"40 cannot be tried.*\[0, 30\]"),
    ({"data.augment.hflip": {"low": 0, "high": 1}}, r"takes a list of choices instead of a range.*\[true, false\]"),
    ({"optim.name": ["sgd", "adam"]}, r"'adam' cannot be tried.*'adamw'"),
    ({"data.batch_size": [64, 64]}, r"repeat a value"),
    ({"optim.lr": {"low": 0.1, "high": 0.45, "step": 0.1}}, r"not a whole number of steps"),
])
def test_bad_spaces_name_the_key_and_a_fix(space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_space(space, "space.yaml")


def test_grid_refuses_continuous_ranges_and_expands_stepped_ones() -> None:
    with pytest.raises(ConfigError, match=r"--sampler grid: optim\.lr is a continuous range.*list the values"):
        grid_points(parse_space({"optim.lr": {"low": 0.01, "high": 0.5, "log": True}}))
    stepped = parse_space({"data.augment.random_erasing": {"low": 0.0, "high": 0.5, "step": 0.25}})
    assert grid_points(stepped) == {"data.augment.random_erasing": [0.0, 0.25, 0.5]}


def prunes_at(pruner: optuna.pruners.BasePruner, complete: int, epochs: int) -> list[int]:
    """The epochs at which a trial far below `complete` finished trials would be stopped."""
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for _ in range(complete):
        study.add_trial(optuna.create_trial(value=0.9, intermediate_values={e: 0.9 for e in range(1, epochs + 1)}))
    trial = study.ask()
    stopped = []
    for epoch in range(1, epochs + 1):
        trial.report(0.1, epoch)
        if trial.should_prune():
            stopped.append(epoch)
    return stopped


def test_pruners_wait_for_half_of_training_and_a_handful_of_complete_trials() -> None:
    # the search that prompted these defaults: 12 trials of 6 epochs, where epoch-1 accuracy was noise
    assert prunes_at(make_pruner("median", epochs=6, trials=12), complete=4, epochs=6) == [4, 5, 6]
    assert prunes_at(make_pruner("median", epochs=6, trials=12), complete=3, epochs=6) == []  # a third of 12 first
    assert prunes_at(make_pruner("median", epochs=2, trials=12), complete=5, epochs=2) == [2]  # the last: the hook keeps it
    assert prunes_at(make_pruner("median", epochs=30, trials=40), complete=5, epochs=30)[0] == 16
    assert make_pruner("median", epochs=30, trials=400)._n_startup_trials == 5
    hyperband = make_pruner("hyperband", epochs=30, trials=40)
    assert isinstance(hyperband, optuna.pruners.HyperbandPruner) and hyperband._max_resource == 30
    assert [make_pruner("hyperband", epochs=e, trials=9)._min_resource for e in (1, 2, 6, 30)] == [1, 2, 2, 10]
    assert prunes_at(make_pruner("none", epochs=6, trials=12), complete=5, epochs=6) == []


def test_a_retry_inherits_the_point_and_the_run_folder_but_not_the_dead_process() -> None:
    study = optuna.create_study(direction="maximize")
    lr = optuna.distributions.FloatDistribution(0.01, 0.5, log=True)
    study.add_trial(optuna.create_trial(
        state=TrialState.FAIL, params={"optim.lr": 0.1}, distributions={"optim.lr": lr},
        user_attrs={"host": "h", "pid": 123, "process_start": "9", "run_name": "trial-0000", "run_dir": "/runs/t0"},
        system_attrs={"completed_rung_0": 0.5, "grid_id": 3}))
    failed = study.get_trials()[0]
    assert "failed: heartbeat lost" in trial_line(failed)  # failed by another process, which left no note
    Requeue(None)(study, failed)
    retry = study.get_trials()[1]
    assert retry.state == TrialState.WAITING and retry.params == {"optim.lr": 0.1}
    assert retry.user_attrs == {"resume_from": "/runs/t0"}  # no host or pid that would pass for a dead process
    assert retry.system_attrs == {"grid_id": 3, "failed_trial": 0, "retry_history": [0]}  # no pruner rungs
    for _ in range(MAX_RETRIES + 1):  # each retry killed in turn
        Requeue(None)(study, study.get_trials()[-1])
    assert len(study.get_trials()) == 1 + MAX_RETRIES


def test_cli_offers_exactly_the_samplers_and_pruners_tune_knows() -> None:
    commands = next(action for action in build_parser()._actions if action.dest == "command")
    options = {action.dest: action.choices for action in commands.choices["tune"]._actions}
    assert (list(options["sampler"]), list(options["pruner"])) == (SAMPLERS.names(), PRUNERS.names())
    parse_only = ("import sys; from reprocls.cli import parse_args; "
                  "parse_args(['tune', 'r.yaml', '--space', 's.yaml']); print('optuna' in sys.modules)")
    imported = subprocess.run([sys.executable, "-c", parse_only], capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert imported.stdout.strip() == "False", imported.stderr  # `reprocls --help` stays fast


@pytest.mark.parametrize("path", sorted(REPO.glob("configs/search/*.yaml")), ids=lambda p: p.name)
def test_shipped_search_spaces_parse(path: Path) -> None:
    if path.name.startswith("nas_"):  # an architecture space, for reprocls nas
        from reprocls.experiments.tune.architecture import load_architecture_space

        name, knobs = load_architecture_space(path)
        assert knobs and path.name == f"nas_{name}.yaml"
        with pytest.raises(ConfigError, match="an architecture space: search it with reprocls nas"):
            load_space(path)
        return
    space = load_space(path)
    assert space and all("." in key for key in space)


@pytest.mark.parametrize(("args", "message"), [
    (["--sampler", "tpe"], r"--trials: how many trials"),
    (["--sampler", "grid", "--space-text", "optim.lr: {low: 0.01, high: 0.5}"], r"--sampler grid: optim\.lr is a continuous"),
    (["--trials", "2", "--space-text", "optim.lrr: [0.1]"], r"Did you mean 'optim\.lr'"),
    (["--trials", "2", "data.val_fraction=0"], r"data\.val_fraction: 0 leaves no validation split"),
    (["--trials", "2", "--storage", "nosuchdb://x"], r"--storage nosuchdb://x: cannot open the study database"),
])
def test_cli_rejects_bad_searches_before_training(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str],
                                                  message: str) -> None:
    text = "optim.lr: [0.1, 0.2]"
    if "--space-text" in args:
        index = args.index("--space-text")
        text = args[index + 1]
        args = args[:index] + args[index + 2:]
    overrides = [arg for arg in args if "=" in arg and not arg.startswith("-")]
    options = [arg for arg in args if arg not in overrides]
    command = ["tune", RECIPE, f"output_dir={tmp_path}", *overrides, "--space", str(write_space(tmp_path, text)), *options]
    assert main(command) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not list(tmp_path.glob("*/trials/*"))  # nothing trained


def test_a_study_without_a_complete_trial_exits_1_and_refuses_what_would_mix_studies(
        tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    impossible = write_space(tmp_path, "schedule.warmup_epochs: [40.0]\n")  # longer than training: fails before any data
    folder = tmp_path / "s-study"
    assert main(["tune", RECIPE, f"output_dir={tmp_path}", "--space", str(impossible), "--sampler", "grid",
                 "--study", "s"]) == 1
    assert "no trial completed" in capsys.readouterr().err
    summary = json.loads((folder / "study.json").read_text())
    assert summary["finished"] == 1 and "schedule.warmup_epochs" in summary["trials"][0]["error"]
    assert not (folder / "best.yaml").exists()  # nothing completed, so no best recipe
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no temporary files left
    arguments = dict(space=impossible, sampler="grid", progress=False)
    changed = write_space(tmp_path, "schedule.warmup_epochs: [40.0, 50.0]\n")
    with pytest.raises(ConfigError, match=r"--study s: .* searches a different space.*--study NEW_NAME"):
        tune(RECIPE, [f"output_dir={tmp_path}"], **{**arguments, "space": changed}, study_name="s")
    with pytest.raises(ConfigError, match=r"--out .*s-study already holds study 's'; continue that one with --study s"):
        tune(RECIPE, [f"output_dir={tmp_path}"], **arguments, study_name="t", out=folder)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"without torchrun .* --workers N"):
        tune(RECIPE, [f"output_dir={tmp_path}"], **arguments, study_name="s")
    monkeypatch.delenv("WORLD_SIZE")

    (folder / "study.json").unlink()  # as a killed study leaves it: study.db alone
    (folder / "report.html").unlink()
    assert write_html_report(folder) == folder / "report.html"  # `reprocls report` finds the study by its database
    assert json.loads((folder / "study.json").read_text())["study"] == "s"
    optuna.create_study(study_name="extra", storage=f"sqlite:///{folder / 'study.db'}")  # an old folder with two
    with pytest.raises(ConfigError, match=r"holds the studies 's', 'extra'; name the one to report"):
        write_study_report(folder)
    assert write_study_report(folder, study="s").exists()
    with pytest.raises(FileNotFoundError, match="not a study folder"):
        write_study_report(tmp_path)


def test_best_yaml_names_its_base_and_leaves_nothing_behind_when_invalid(tmp_path: Path) -> None:
    summary = {"study": "s", "finished": 3, "best": {"number": 2, "value": 0.5, "params": {"optim.lr": 0.2}}}
    path = write_best_recipe(summary, load_recipe(None, ["schedule.epochs=3"]), tmp_path / "best.yaml")
    assert "# Built from the schema's defaults (no recipe file) with schedule.epochs=3" in path.read_text()
    assert load_config(path).optim.lr == 0.2
    summary["best"]["params"] = {"schedule.warmup_epochs": 40.0}  # longer than training
    with pytest.raises(ConfigError, match="schedule.warmup_epochs"):
        write_best_recipe(summary, load_recipe(RECIPE), tmp_path / "best.yaml")
    assert [p.name for p in tmp_path.iterdir()] == ["best.yaml"] and load_config(path).optim.lr == 0.2


# ---------------------------------------------------------------------------------------------- real searches


@pytest.mark.slow
def test_grid_search_via_cli_covers_the_grid_and_best_yaml_reproduces_the_best_trial(
        fmnist_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from browser import render

    space = write_space(tmp_path, "optim.lr: [0.05, 0.2]\noptim.weight_decay: [0.0, 5.0e-4]\n")
    command = ["tune", RECIPE, f"data.root={fmnist_root}", f"output_dir={tmp_path / 'runs'}", *TINY, "--space", str(space),
               "--sampler", "grid", "--pruner", "none", "--study", "lrwd", "-q"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    folder = tmp_path / "runs" / "lrwd-study"
    study = load(folder)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted(tuple(t.params.values()) for t in trials) == sorted(product([0.05, 0.2], [0.0, 5.0e-4]))

    for trial in trials:  # every trial is an ordinary run folder scored on validation, never on test
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir.parent == folder / "trials" and run_dir.name.startswith(f"trial-{trial.number:04d}-")
        results = json.loads((run_dir / "results.json").read_text())
        assert trial.value == results["val"]["top1"]
        assert load_config(run_dir / "config.yaml").optim.lr == trial.params["optim.lr"]

    summary = json.loads((folder / "study.json").read_text())
    best = max(trials, key=lambda t: (t.value, -t.number))
    assert summary["best"]["number"] == best.number and summary["best"]["value"] == best.value
    assert [row["number"] for row in summary["trials"]] == [0, 1, 2, 3]
    assert f"best: trial {best.number}" in printed

    best_recipe = load_config(folder / "best.yaml")
    trial_recipe = load_config(Path(best.user_attrs["run_dir"]) / "config.yaml")
    assert comparable(best_recipe) == comparable(trial_recipe)
    assert best_recipe.output_dir == str(tmp_path / "runs")  # best.yaml trains like the recipe, not into the study
    assert f"trial {best.number}" in (folder / "best.yaml").read_text().splitlines()[0]

    assert main(command) == 0  # the same command again finds the study finished and trains nothing
    assert len(load(folder).get_trials()) == 4

    (folder / "study.json").unlink()
    (folder / "report.html").unlink()
    write_study_report(folder)  # rebuilt from study.db alone
    assert json.loads((folder / "study.json").read_text())["best"]["number"] == best.number
    page = render(folder / "report.html", tmp_path)
    assert page.headings[:5] == ["Best trial", "Trials", "Search history", "Parameter importance", "Validation curves"]
    assert page.images == page.images_decoded == 3  # history, importance, curves
    assert f"reprocls train {folder / 'best.yaml'}" in page.text
    assert f"{100 * best.value:.2f} %" in page.text and page.scripts == 0


@pytest.mark.slow
def test_median_pruner_stops_a_poor_trial_after_half_of_training_and_the_report_marks_it(
        fmnist_root: Path, tmp_path: Path) -> None:
    from browser import render

    folder = tmp_path / "quickstart-study"
    folder.mkdir()
    queued = optuna.create_study(study_name="quickstart", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    for lr in (0.05, 0.1, 1.0e-5):  # two good points complete first (the median's startup), then one at chance (10 %)
        queued.enqueue_trial({"optim.lr": lr})
    space = write_space(tmp_path, "optim.lr: [0.05, 0.1, 1.0e-5]\n")
    # 16 steps of 32 per epoch at lr 0.05-0.1: about 50 % validation top-1 after the second of three epochs
    overrides = [f"data.root={fmnist_root}", f"output_dir={tmp_path}", "data.limit_train=512", "data.limit_eval=256",
                 "schedule.epochs=3", "data.batch_size=32", "train.threads=1", "optim.lr_reference_batch=null",
                 "schedule.name=cosine", "train.label_smoothing=0"]
    summary = tune(RECIPE, overrides, space=space, sampler="random", trials=3, pruner="median", progress=False)
    trials = load(folder).get_trials()
    assert [t.params["optim.lr"] for t in trials] == [0.05, 0.1, 1.0e-5]
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    poor = trials[2]
    assert poor.user_attrs["pruned_at_epoch"] == 2  # epoch 1 of 3 is never judged
    assert [record["epoch"] for record in read_history(Path(poor.user_attrs["run_dir"]))] == [1, 2]  # its log kept
    assert not (Path(poor.user_attrs["run_dir"]) / "results.json").exists()
    assert summary["counts"]["pruned"] == 1 and summary["best"]["number"] in (0, 1)

    page = render(folder / "report.html", tmp_path)
    assert "pruned" in page.text and "grey, dashed and ending in a cross: pruned" in page.text
    assert page.images == page.images_decoded == 2  # history and curves; importance needs 3 complete trials
    assert "Not shown: needs at least 3 complete trials" in page.text


@pytest.mark.slow
def test_an_ema_trial_is_judged_by_the_weights_it_keeps(fmnist_root: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, "optim.lr: [0.1]\n")
    summary = tune(RECIPE, [f"data.root={fmnist_root}", f"output_dir={tmp_path}", *TINY, "train.ema_decay=0.9"],
                   space=space, sampler="grid", pruner="median", progress=False)
    trial, = load(tmp_path / "quickstart-study").get_trials()
    history = read_history(Path(trial.user_attrs["run_dir"]))
    assert all("val_ema_top1" in record for record in history)
    assert trial.intermediate_values == {r["epoch"]: max(r["val_top1"], r["val_ema_top1"]) for r in history}
    assert trial.value == trial.intermediate_values[2] == summary["best"]["value"]


def test_a_point_proposed_again_reuses_its_result_and_a_spent_space_ends_the_search(tmp_path: Path, monkeypatch,
                                                                                     capsys) -> None:
    from reprocls.experiments.tune import objective

    trained: list[float] = []

    def fake_training(config, **kwargs):  # the score is a function of the point, so a repeat must return it
        trained.append(config.optim.lr)
        run_dir = tmp_path / "runs" / f"run{len(trained)}"
        run_dir.mkdir(parents=True)
        return run_dir, {"val": {"top1": config.optim.lr}}

    monkeypatch.setattr(objective, "train_recipe", fake_training)
    space = write_space(tmp_path, "optim.lr: [0.1, 0.2]\n")  # two points, three trials asked: TPE must repeat
    summary = tune(RECIPE, [f"output_dir={tmp_path}"], space=space, sampler="tpe", trials=3, pruner="none",
                   progress=False)
    assert sorted(trained) == [0.1, 0.2]  # each point trained once, however often it was proposed
    repeats = [row for row in summary["trials"] if row["state"] == "repeat"]
    assert len(repeats) >= 25 and summary["finished"] == 2 and summary["counts"]["complete"] == 2
    originals = {row["number"]: row for row in summary["trials"] if row["state"] == "complete"}
    for row in repeats:
        original = originals[row["repeat_of"]]
        assert row["value"] == original["value"] == row["params"]["optim.lr"] and row["run_dir"] == original["run_dir"]
    assert summary["best"]["value"] == 0.2 and summary["best"]["state"] == "complete"
    captured = capsys.readouterr()
    assert "looks exhausted" in captured.err and "repeated an earlier point, not trained again" in captured.out


@pytest.mark.slow
def test_an_invalid_combination_fails_its_trial_not_the_study(fmnist_root: Path, tmp_path: Path) -> None:
    space = write_space(tmp_path, "schedule.warmup_epochs: [0.5, 4.0]\n")  # 4 warmup epochs of 2 cannot be built
    overrides = [f"data.root={fmnist_root}", f"output_dir={tmp_path}", *TINY, "schedule.name=cosine"]
    summary = tune(RECIPE, overrides, space=space, sampler="grid", pruner="none", progress=False)
    rows = {row["params"]["schedule.warmup_epochs"]: row for row in summary["trials"]}
    assert rows[4.0]["state"] == "failed" and "schedule.warmup_epochs" in rows[4.0]["error"]
    assert rows[0.5]["state"] == "complete" and summary["best"]["number"] == rows[0.5]["number"]
    assert summary["finished"] == 2


@pytest.mark.slow
def test_a_trial_stopped_by_ctrl_c_is_retried_on_the_next_run(fmnist_root: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from reprocls.experiments.tune import objective as tune_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    space = write_space(tmp_path, "optim.lr: {low: 0.02, high: 0.5, log: true}\n")
    arguments = dict(space=space, sampler="random", trials=2, pruner="none", progress=False)
    overrides = [f"data.root={fmnist_root}", f"output_dir={tmp_path}", *TINY]
    monkeypatch.setattr(tune_module, "train_recipe", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tune(RECIPE, overrides, **arguments)
    monkeypatch.undo()
    summary = tune(RECIPE, overrides, **arguments)
    first, retry, new = summary["trials"]
    assert first["state"] == "failed" and first["error"] == "interrupted"
    assert retry["retry_of"] == 0 and retry["params"] == first["params"] and retry["state"] == "complete"
    assert retry["error"] is None and new["state"] == "complete" and summary["finished"] == 2


def postgres_installed() -> bool:
    return bool(shutil.which("pg_ctl") or glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """CI's server ($REPROCLS_TEST_POSTGRES_URL), else a throwaway one started here with the same script."""
    url = os.environ.get("REPROCLS_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if not postgres_installed():
        pytest.skip("PostgreSQL is not installed (make test-packages, or apt-get install postgresql)")
    folder = tmp_path_factory.mktemp("postgres")
    try:  # stopped even when the start times out half-way
        started = subprocess.run([str(SERVER_SCRIPT), "start", str(folder)], capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, f"PostgreSQL is installed but did not start: {started.stderr}"
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(SERVER_SCRIPT), "stop", str(folder)], capture_output=True, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_two_workers_share_one_study(database: str, request: pytest.FixtureRequest, fmnist_root: Path,
                                     tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    storage = request.getfixturevalue("postgres_url") if database == "postgresql" else None
    name = f"shared-{uuid.uuid4().hex[:10]}"
    space = write_space(tmp_path, "optim.lr: {low: 0.02, high: 0.5, log: true}\noptim.weight_decay: [0.0, 5.0e-4]\n")
    summary = tune(RECIPE, [f"data.root={fmnist_root}", f"output_dir={tmp_path}", *TINY], space=space, sampler="random",
                   trials=3, workers=2, pruner="none", storage=storage, study_name=name, out=tmp_path / "study",
                   progress=False)
    url = storage or f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    study = optuna.load_study(study_name=name, storage=url)  # the trials live in that database
    # a worker that starts while the other is between trials may find the budget spent: that trial trains nothing
    surplus = [t for t in study.get_trials() if t.user_attrs.get("surplus")]
    assert all(t.state == TrialState.FAIL and "run_dir" not in t.user_attrs for t in surplus)
    trials = [t for t in study.get_trials() if t not in surplus]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3 and summary["finished"] == 3
    assert "stopped early" not in capsys.readouterr().err  # both worker processes ran and ended cleanly
    pids: dict[int, set[int]] = {}
    for trial in trials:
        pids.setdefault(trial.user_attrs["worker"], set()).add(trial.user_attrs["pid"])
    assert set(pids) <= {0, 1} and all(len(ids) == 1 for ids in pids.values())  # one process per worker ...
    assert os.getpid() not in set().union(*pids.values())  # ... spawned for the search, not this one
    assert len({t.params["optim.lr"] for t in trials}) == 3  # the workers drew different points
    assert (tmp_path / "study" / "study.db").exists() == (storage is None)

    best = max(trials, key=lambda t: (t.value, -t.number))
    assert summary["best"]["number"] == best.number
    recipe = load_config(tmp_path / "study" / "best.yaml")
    assert {key: get_key(to_dict(recipe), key.split(".")) for key in best.params} == best.params
    results = json.loads((Path(best.user_attrs["run_dir"]) / "results.json").read_text())
    assert best.value == results["val"]["top1"]
    metrics = [json.loads(line) for line in (Path(best.user_attrs["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["val_top1"] == best.value
