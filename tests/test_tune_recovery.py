"""A search survives kills: a SIGKILLed study rerun with the same command keeps its finished trials and continues
the killed one from its run folder, mid-training or after its last epoch, and trains exactly the asked number."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from reprocls.config import load_config
from reprocls.experiments.run import train_recipe
from reprocls.experiments.tune.objective import Objective
from reprocls.reports.folders import read_history
from test_tune import RECIPE, REPO, TINY, load, write_space


def tune_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "reprocls", "tune", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def snapshot(trial: optuna.trial.FrozenTrial) -> tuple:
    return trial.params, trial.value, trial.state, trial.datetime_complete, trial.user_attrs["run_dir"]


def killed_trial_checkpoint(folder: Path) -> dict | None:
    """The newest checkpoint manifest of trial 2's run folder, once one is complete."""
    manifests = sorted(folder.glob("trials/trial-0002-*/checkpoints/step-*/manifest.json"))
    return json.loads(manifests[-1].read_text()) if manifests else None


@pytest.mark.slow
def test_sigkilled_study_resumes_keeping_finished_trials_and_continuing_the_killed_one(fmnist_root: Path,
                                                                                      tmp_path: Path) -> None:
    space = write_space(tmp_path, "optim.lr: {low: 0.02, high: 0.5, log: true}\n")
    args = [RECIPE, f"data.root={fmnist_root}", f"output_dir={tmp_path}", *TINY, "schedule.epochs=3", "--space",
            str(space), "--sampler", "random", "--trials", "4", "--pruner", "none", "-q"]
    folder = tmp_path / "quickstart-study"
    database = folder / "study.db"
    process = tune_cli(*args)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # kill once two trials are done and the third has checkpointed an epoch
            if database.exists() and process.poll() is None:
                try:
                    with sqlite3.connect(database, timeout=30) as connection:
                        done = connection.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
                except sqlite3.OperationalError:  # the file exists a moment before Optuna has created its tables
                    done = 0
                if done == 2 and killed_trial_checkpoint(folder) is not None:
                    process.send_signal(signal.SIGKILL)
                    break
            assert process.poll() is None, f"tune ended before it could be killed: {process.stdout.read()[-3000:]}"
            time.sleep(0.05)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    checkpoint = killed_trial_checkpoint(folder)
    assert checkpoint["epoch"] < 3, "the kill came too late: the killed trial had finished training"

    before = load(folder).get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]
    killed = before[2]
    killed_run = next(folder.glob("trials/trial-0002-*"))

    resumed = tune_cli(*args)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    assert "trial(s) 2 lost their process; their parameters are queued again" in output

    after = load(folder).get_trials()
    assert [snapshot(t) for t in after[:2]] == [snapshot(t) for t in before[:2]]  # finished trials untouched
    assert after[2].state == TrialState.FAIL and "died" in after[2].user_attrs["crashed"]
    retry = after[3]
    assert retry.system_attrs["failed_trial"] == 2 and retry.params == killed.params
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["host"] == killed.user_attrs["host"] and retry.user_attrs["pid"] != killed.user_attrs["pid"]
    # the retry continued the killed run's folder from its checkpoint, and told the study its earlier epochs again
    assert Path(retry.user_attrs["run_dir"]) == killed_run.resolve()
    results = json.loads((killed_run / "results.json").read_text())
    assert results["resumed_from"] is not None and retry.value == results["val"]["top1"]
    assert [record["epoch"] for record in read_history(killed_run)] == [1, 2, 3]
    assert sorted(retry.intermediate_values) == [1, 2, 3]
    assert all(retry.intermediate_values[e] == value for e, value in killed.intermediate_values.items()
               if e <= checkpoint["epoch"])
    finished = [t for t in after if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 and len(after) == 5  # exactly the budget: the crash did not count
    summary = json.loads((folder / "study.json").read_text())
    assert summary["finished"] == 4 and summary["counts"]["failed"] == 1
    assert next(row for row in summary["trials"] if row["number"] == 3)["retry_of"] == 2


@pytest.mark.slow
def test_a_trial_killed_after_its_last_epoch_is_finished_without_training_again(fmnist_root: Path,
                                                                                tmp_path: Path) -> None:
    space = write_space(tmp_path, "optim.lr: {low: 0.02, high: 0.5, log: true}\n")
    args = [RECIPE, f"data.root={fmnist_root}", f"output_dir={tmp_path}", *TINY, "--space", str(space),
            "--sampler", "random", "--trials", "2", "--pruner", "none", "-q"]
    folder = tmp_path / "quickstart-study"
    killed = tune_cli(*args, env={"REPROCLS_FAULT_KILL_AT": "test"})  # dies in the first trial's test pass
    output, _ = killed.communicate(timeout=300)
    assert killed.returncode == -signal.SIGKILL, output[-3000:]
    (killed_run,) = folder.glob("trials/trial-0000-*")
    manifests = sorted(killed_run.glob("checkpoints/step-*/manifest.json"))
    last = json.loads(manifests[-1].read_text())
    assert last["epoch"] == 2 and not (killed_run / "results.json").exists()  # trained to the end, not tested
    before = load(folder).get_trials()[0]

    resumed = tune_cli(*args)
    output, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, output[-3000:]
    after = load(folder).get_trials()
    assert [t.state for t in after] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    retry = after[1]
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == before.params
    assert Path(retry.user_attrs["run_dir"]) == killed_run.resolve()
    results = json.loads((killed_run / "results.json").read_text())
    assert results["resumed_from"] == manifests[-1].parent.name  # the last epoch's checkpoint: no step trained again
    assert retry.value == results["val"]["top1"]
    assert [record["epoch"] for record in read_history(killed_run)] == [1, 2]
    assert retry.intermediate_values == before.intermediate_values and sorted(retry.intermediate_values) == [1, 2]


def test_a_retry_reads_a_run_that_finished_before_the_study_heard_of_it(fmnist_root: Path, tmp_path: Path) -> None:
    overrides = [f"data.root={fmnist_root}", f"output_dir={tmp_path}", *TINY]
    config = load_config(RECIPE, overrides)
    run_dir, _ = train_recipe(config, progress=False, echo=False)
    study = optuna.create_study(direction="maximize")
    retry = study.ask()
    retry.set_user_attr("resume_from", str(run_dir))
    assert Objective.resume_point(retry, config) == run_dir  # train_recipe then reports it, training nothing
    history = [record["val_top1"] for record in read_history(run_dir)]
    assert [study.trials[0].intermediate_values[epoch] for epoch in (1, 2)] == history
    other = study.ask()
    other.set_user_attr("resume_from", str(run_dir))
    assert Objective.resume_point(other, load_config(RECIPE, [*overrides, "optim.lr=0.3"])) is None  # trained afresh
