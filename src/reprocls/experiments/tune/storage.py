"""The study database and the processes behind its trials: opening the storage with heartbeats, telling a dead
trial from a running one, and queueing a killed trial's point again so the search resumes where it stopped."""

from __future__ import annotations

import json
import os
import socket
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import optuna
import sqlalchemy
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.trial import FrozenTrial, TrialState

from reprocls import run_layout as layout
from reprocls.config import ConfigError
from reprocls.experiments.tune.plan import SearchPlan

HEARTBEAT_S = 10  # a running trial stamps the database this often ...
GRACE_S = 60  # ... and one silent for this long is taken as dead (another host's crash): failed and queued again
MAX_RETRIES = 3  # a point whose process keeps dying is given up after this many retries
HOST = socket.gethostname()


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial log lines and experimental-API warnings off: tune prints its own lines."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        try:
            yield
        finally:
            optuna.logging.set_verbosity(verbosity)


def masked(url: str) -> str:
    """A storage URL safe to print and save: the password replaced by ***."""
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def open_storage(url: str, folder: str | Path | None = None) -> RDBStorage:
    """The study database with heartbeats on, so a trial whose machine died is failed and queued again (to resume
    from its checkpoints under `folder`, when the run folder is on this machine)."""
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    try:
        return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                          heartbeat_stale_trial_callback=Requeue(folder))
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as error:
        raise ConfigError(f"--storage {masked(url)}: cannot open the study database ({str(error).splitlines()[0]}); "
                          "check the URL (e.g. postgresql+psycopg://user@host:5432/db) and that the server is "
                          "reachable") from None


SKIPPED = "skipped"  # user attribute of a reprocls nas candidate that never trained: over budget or prefiltered
REPEAT_OF = "repeat_of"  # user attribute of a trial whose point an earlier complete trial trained: its number


def is_repeat(trial: FrozenTrial) -> bool:
    """A trial that took an earlier trial's result for the same point instead of training."""
    return REPEAT_OF in trial.user_attrs


def trained_to_the_end(trial: FrozenTrial) -> bool:
    """Complete with its own training: the trials a best choice, a front or a correlation counts, each once."""
    return trial.state == TrialState.COMPLETE and not is_repeat(trial)


def spends_budget(trial: FrozenTrial) -> bool:
    """Complete, pruned and failed-by-its-own-error trials count toward --trials; crashes, surplus, candidates
    that never trained (over the architecture budget) and repeats of a point already trained do not."""
    if (trial.state == TrialState.PRUNED and SKIPPED in trial.user_attrs) or is_repeat(trial):
        return False
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


def process_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) of a Linux process from /proc, or None where that is not readable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


def process_alive(pid: Any, started: Any) -> bool:
    """Whether the process that ran a trial still runs (a recycled pid with another start time does not count)."""
    if not isinstance(pid, int):
        return True  # unknown: leave it to the heartbeat
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = process_stat(pid)
    if stat is None:
        return True
    state, start = stat
    return state not in ("Z", "X") and (started is None or start == started)


class Requeue:
    """Optuna's retry of a failed trial (at most MAX_RETRIES per point), except that the queued trial inherits no
    ownership (host, pid: while it waits or starts it must not pass for a dead process's trial, which another worker
    would fail and queue a second time) and names the killed trial's run folder, whose checkpoints it continues."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if len(history) > MAX_RETRIES:
            return
        kept = {key: value for key, value in trial.system_attrs.items()  # e.g. the grid point; not pruner rungs
                if not key.startswith("completed_rung_") and key not in ("failed_trial", "retry_history")}
        run_dir = trial.user_attrs.get("run_dir") or (find_run(self.folder, trial.user_attrs.get("run_name"))
                                                      if self.folder is not None else None)
        inherited = {"reference": True} if trial.user_attrs.get("reference") else {}  # nas: still the baseline
        study.add_trial(optuna.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={**inherited, **({"resume_from": str(run_dir)} if run_dir else {})},
            system_attrs={**kept, "failed_trial": trial.number, "retry_history": history}))


def recover_orphans(study: optuna.Study, storage: RDBStorage, folder: Path) -> list[int]:
    """Fail the RUNNING trials whose process on this host is gone and queue their parameters again; trials of
    other hosts are failed and queued by the heartbeat once they miss it for GRACE_S seconds."""
    fail_stale_trials(study)
    study_id = storage.get_study_id_from_name(study.study_name)
    requeued = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs  # a trial that has not yet stamped its own host and pid is never taken for dead
        if attrs.get("host") != HOST or process_alive(attrs.get("pid"), attrs.get("process_start")):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            storage.set_trial_user_attr(trial_id, "crashed", f"process {attrs.get('pid')} on {HOST} died during the trial")
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue  # another process on this host got there first
        Requeue(folder)(study, storage.get_trial(trial_id))
        requeued.append(trial.number)
    return requeued


def requeue_interrupted(study: optuna.Study, folder: Path) -> list[int]:
    """Queue again the points of trials stopped by Ctrl-C (Optuna marks them failed), once each."""
    trials = study.get_trials(deepcopy=False)
    retried = {number for trial in trials for number in trial.system_attrs.get("retry_history", [])}
    requeued = []
    for trial in trials:
        if trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted") and trial.number not in retried:
            Requeue(folder)(study, trial)
            requeued.append(trial.number)
    return requeued


def find_run(folder: Path, name: str | None) -> Path | None:
    """The run folder a trial wrote (trials/<name>-<timestamp>), newest first."""
    if not name:
        return None
    matches = sorted((folder / layout.TRIALS).glob(f"{name}-*"))
    return matches[-1].resolve() if matches else None


def check_study_folder(folder: Path, name: str) -> None:
    """One study per folder: two would share study.db, study.json and report.html, and the report could not tell
    which to show."""
    found: set[str] = set()
    if (folder / layout.STUDY_DB).exists():
        with quiet_optuna():
            found.update(optuna.get_all_study_names(open_storage(f"sqlite:///{folder / layout.STUDY_DB}")))
    if (folder / layout.STUDY_JSON).exists():
        found.add(json.loads((folder / layout.STUDY_JSON).read_text())["study"])
    others = sorted(found - {name})
    if others:
        raise ConfigError(f"--out {folder} already holds study {others[0]!r}; continue that one with --study {others[0]}, "
                          f"or give study {name!r} a folder of its own with another --out")


def check_study(study: optuna.Study, plan: SearchPlan) -> None:
    """A loaded study must have been searching the same space; record this command for the report."""
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"--study {plan.study}: the study in {masked(plan.storage)} minimises; use another --study name")
    recorded = study.user_attrs.get("space")
    if recorded is None:
        study.set_user_attr("space", plan.space)
    elif recorded != plan.space:
        changed = {key for key in recorded if plan.space.get(key) not in (None, recorded[key])}
        differs = sorted(set(recorded) ^ set(plan.space) | changed)
        raise ConfigError(f"--study {plan.study}: the study in {masked(plan.storage)} searches a different space "
                          f"(keys that differ: {', '.join(differs)}); rerun with its original --space file, or start a new "
                          "study with --study NEW_NAME")
    if plan.architecture is not None:
        budget = {"space": plan.architecture.space, "budget_macs": plan.architecture.budget_macs,
                  "budget_latency_ms": plan.architecture.budget_latency_ms,
                  "latency_batch": plan.architecture.latency_batch}
        saved = study.user_attrs.get("architecture")
        if saved is not None and saved != budget:
            raise ConfigError(f"--study {plan.study}: the study searched {saved} and this command asks for {budget}; "
                              "rerun with the original space and budget, or start a new study with --study NEW_NAME")
        study.set_user_attr("architecture", budget)
    study.set_user_attr("command", {"recipe": plan.recipe.path, "overrides": list(plan.recipe.overrides),
                                    "sampler": plan.sampler,
                                    "pruner": plan.pruner, "seed": plan.seed, "trials": plan.trials,
                                    "workers": plan.workers, "host": HOST, "folder": plan.folder})
