"""`reprocls tune`: hyper-parameter search over recipe keys with Optuna. Every trial is an ordinary run folder, the
study lives in a database (SQLite in the study folder, or any SQLAlchemy URL that several machines share), and a
killed search resumes where it stopped, retrying the point that was cut off."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
import os
import socket
import sys
import time
import types
import typing
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Union

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import optuna  # noqa: E402
import sqlalchemy  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from optuna.distributions import (BaseDistribution, CategoricalDistribution, FloatDistribution,  # noqa: E402
                                  IntDistribution, distribution_to_json, json_to_distribution)
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError  # noqa: E402
from optuna.storages import RDBStorage, fail_stale_trials  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from reprocls.config import (ConfigError, RunConfig, build, describe_keys, get_key, load_config, read_recipe,  # noqa: E402
                             set_key, to_dict, validate)
from reprocls.engine.checkpoint import newest_valid  # noqa: E402
from reprocls.experiments import html  # noqa: E402
from reprocls.experiments.report import format_grid, plot_validation_runs, read_history  # noqa: E402
from reprocls.experiments.resume import CHECKPOINTS, check_same_experiment  # noqa: E402
from reprocls.experiments.run import check_names, train_recipe  # noqa: E402
from reprocls.files import atomic_write_json, atomic_write_text  # noqa: E402
from reprocls.registry import suggest  # noqa: E402

SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("median", "hyperband", "none")
HEARTBEAT_S = 10  # a running trial stamps the database this often ...
GRACE_S = 60  # ... and one silent for this long is taken as dead (another host's crash): failed and queued again
MAX_RETRIES = 3  # a point whose process keeps dying is given up after this many retries
POLL_S = 2.0  # how often a worker with nothing left to start checks whether the others' trials ended
HOST = socket.gethostname()
FREE_FORM = "model.kwargs."  # builder arguments: any name, typed by the values given
GREY = "#8a8f98"  # trials that did not finish, in the plots
OBJECTIVE = "validation top-1 of the trial's final weights (the test split plays no part in the choice)"


# ---------------------------------------------------------------------------------------------- search space


def load_space(path: str | Path) -> dict[str, BaseDistribution]:
    """Read a search space YAML file: recipe key -> range or choices."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"--space {path} does not exist; search spaces live under configs/search/, "
                          "e.g. configs/search/resnet20_lr_wd.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"--space {path} is not valid YAML: {error}") from None
    return parse_space(raw, str(path))


def parse_space(raw: Any, source: str = "search space") -> dict[str, BaseDistribution]:
    """Distributions keyed by dotted recipe key, every bound and choice checked against the recipe schema."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{source}: expected a mapping of recipe keys to distributions, e.g. "
                          "'optim.lr: {low: 0.01, high: 0.5, log: true}' or 'data.batch_size: [64, 128, 256]'")
    return {str(key): parse_distribution(str(key), spec, source) for key, spec in raw.items()}


def _without_none(hint: Any) -> Any:
    """`X | None` -> X, so an optional key is searched as the type it holds when set."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def key_type(key: str, source: str = "search space") -> Any:
    """The schema's type of a dotted recipe key (None for free-form model.kwargs.<name>); unknown keys fail."""
    if key.startswith(FREE_FORM) and len(key) > len(FREE_FORM) and "." not in key[len(FREE_FORM):]:
        return None
    known = [path for path, _, _ in describe_keys()]
    if key not in known:
        raise ConfigError(f"{source}: unknown recipe key {key!r}.{suggest(key, known)} `reprocls config` lists every key; "
                          f"model builder arguments go under {FREE_FORM}<name>")
    node: Any = RunConfig
    for part in key.split("."):
        node = _without_none(typing.get_type_hints(node)[part])
    if dataclasses.is_dataclass(node):
        raise ConfigError(f"{source}: {key!r} is a section, not a value; search one of its keys, e.g. {key}.<key> "
                          "(`reprocls config` lists them)")
    return node


def check_value(key: str, value: Any, source: str) -> Any:
    """One candidate value checked (and coerced, e.g. 1 -> 1.0 for a float key) by the recipe schema itself."""
    if key.startswith(FREE_FORM):
        return value
    raw: dict[str, Any] = {}
    set_key(raw, key.split("."), value)
    try:
        return get_key(to_dict(build(RunConfig, raw)), key.split("."))
    except ConfigError as error:
        raise ConfigError(f"{source}: {key}: {value!r} cannot be tried ({error})") from None


def parse_distribution(key: str, spec: Any, source: str = "search space") -> BaseDistribution:
    """`[a, b]` or `{choices: [a, b]}` -> categorical; `{low, high, log?, step?}` -> int or float range by key type."""
    hint = key_type(key, source)
    where = f"{source}: {key}"
    if isinstance(spec, dict) and "choices" in spec:
        if set(spec) != {"choices"}:
            raise ConfigError(f"{where}: a choices mapping takes no other fields (got {sorted(set(spec) - {'choices'})})")
        spec = spec["choices"]
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{where}: the list of choices is empty; list at least one value")
        values = [check_value(key, value, source) for value in spec]
        for value in values:
            if not (value is None or isinstance(value, (bool, int, float, str))):
                raise ConfigError(f"{where}: choice {value!r} is not a single number, string or boolean "
                                  "(Optuna stores choices as scalars)")
        if len({json.dumps(value) for value in values}) < len(values):
            raise ConfigError(f"{where}: the choices {spec} repeat a value; list each once")
        return CategoricalDistribution(values)
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {spec!r} is not a distribution; give a range {{low: 0.01, high: 0.5, log: true}} "
                          "(optional step) or a list of choices [64, 128, 256]")
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {sorted(unknown)}; a range is {{low, high}} with optional log: true "
                          "or step, and a set of values is a list or {choices: [...]}")
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where}: a range needs both low and high, e.g. {{low: 0.01, high: 0.5}}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    numbers = [value for value in (low, high, step) if value is not None]
    if any(isinstance(value, bool) or not isinstance(value, (int, float)) for value in numbers):
        raise ConfigError(f"{where}: low, high and step must be numbers (got {spec})")
    if hint is None:
        hint = int if all(isinstance(value, int) for value in numbers) else float
    if hint not in (int, float):
        example = "[true, false]" if hint is bool else "[a, b]"
        raise ConfigError(f"{where}: the key is not a number, so it takes a list of choices instead of a range, "
                          f"e.g. {key}: {example}")
    if hint is int and not all(isinstance(value, int) for value in numbers):
        raise ConfigError(f"{where}: the key is an integer, so low, high and step must be integers (got {spec})")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false (got {log!r})")
    if low >= high:
        raise ConfigError(f"{where}: low ({low}) must be below high ({high}); to fix a key for every trial, "
                          "pass it as an override instead")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0 (got {low}); use a linear range or a positive low")
    if log and step is not None:
        raise ConfigError(f"{where}: log and step cannot be combined; drop one of them")
    if step is not None:
        if step <= 0:
            raise ConfigError(f"{where}: step must be > 0 (got {step})")
        count = (high - low) / step
        if abs(count - round(count)) > 1e-9 * max(1.0, count):
            raise ConfigError(f"{where}: high - low ({high - low:g}) is not a whole number of steps of {step:g}; "
                              "pick bounds a multiple of the step apart")
    check_value(key, low, source)
    check_value(key, high, source)
    if hint is int:
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(float(low), float(high), log=log, step=float(step) if step is not None else None)


def describe(distribution: BaseDistribution) -> str:
    """A distribution in words, for the terminal and the report."""
    if isinstance(distribution, CategoricalDistribution):
        return "one of " + ", ".join(json.dumps(choice) for choice in distribution.choices)
    kind = "integer" if isinstance(distribution, IntDistribution) else "real"
    scale = "log-uniform " if distribution.log else ""
    step = f" in steps of {distribution.step:g}" if distribution.step not in (None, 1) else ""
    return f"{scale}{kind} in [{distribution.low:g}, {distribution.high:g}]{step}"


def grid_points(space: dict[str, BaseDistribution]) -> dict[str, list[Any]]:
    """Every value the grid sampler tries per key: lists as given, integer ranges and stepped ranges expanded."""
    grid: dict[str, list[Any]] = {}
    for key, distribution in space.items():
        if isinstance(distribution, CategoricalDistribution):
            grid[key] = list(distribution.choices)
        elif isinstance(distribution, IntDistribution) and not distribution.log:
            grid[key] = list(range(distribution.low, distribution.high + 1, distribution.step))
        elif isinstance(distribution, FloatDistribution) and distribution.step is not None:
            count = round((distribution.high - distribution.low) / distribution.step)
            grid[key] = [round(distribution.low + i * distribution.step, 12) for i in range(count + 1)]
        else:
            raise ConfigError(f"--sampler grid: {key} is a continuous range ({describe(distribution)}), which a grid cannot "
                              f"enumerate; list the values to try (e.g. {key}: [a, b, c]), give the range a step, "
                              "or use --sampler tpe / random")
    return grid


def suggest_param(trial: optuna.Trial, key: str, distribution: BaseDistribution) -> Any:
    """The trial's value for one key, drawn through the suggest call Optuna's samplers expect for its type."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    return trial.suggest_float(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def trial_config(recipe: str | None, overrides: list[str], params: dict[str, Any], *, output_dir: Path | str,
                 name: str) -> RunConfig:
    """The recipe + overrides + a trial's parameters, validated like any recipe (a bad combination fails here)."""
    raw = read_recipe(recipe, overrides)
    for key, value in params.items():
        set_key(raw, key.split("."), value)
    raw.update(output_dir=str(output_dir), name=name)
    config = build(RunConfig, raw)
    validate(config)
    return config


# ---------------------------------------------------------------------------------------------- study plumbing


@dataclass
class SearchPlan:
    """Everything a worker process needs to join the search (picklable, so it crosses the spawn boundary)."""

    recipe: str | None
    overrides: list[str]
    space: dict[str, str]  # key -> Optuna distribution JSON
    sampler: str
    pruner: str
    seed: int
    storage: str
    study: str
    folder: str
    trials: int
    workers: int
    epochs: int
    shared: bool  # the storage came from --storage, so other machines may be drawing from the same sampler seed
    progress: bool

    def distributions(self) -> dict[str, BaseDistribution]:
        """The space as this process suggests it (decoded from JSON, which is what crosses the spawn boundary)."""
        space = {key: json_to_distribution(text) for key, text in self.space.items()}
        if self.sampler == "grid":  # the grid sampler hands out values; suggest them as the choices they are
            return {key: CategoricalDistribution(values) for key, values in grid_points(space).items()}
        return space


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


def make_sampler(plan: SearchPlan, worker_seed: int) -> optuna.samplers.BaseSampler:
    """The --sampler by name, seeded so that workers draw different points (the grid alone is shuffled alike)."""
    if plan.sampler == "grid":
        return optuna.samplers.GridSampler(grid_points({k: json_to_distribution(v) for k, v in plan.space.items()}),
                                           seed=plan.seed)  # every process must shuffle the grid alike
    if plan.sampler == "random":
        return optuna.samplers.RandomSampler(seed=worker_seed)
    return optuna.samplers.TPESampler(seed=worker_seed, constant_liar=True)  # running trials count as "taken"


def make_pruner(name: str, epochs: int, trials: int) -> optuna.pruners.BasePruner:
    """Pruners that judge a trial only once its validation top-1 means something: after half of its training, and
    (median) against the medians of a handful of complete trials."""
    if name == "median":
        # Early validation top-1 is mostly noise: a warming-up schedule (onecycle, warmup_epochs) and large batches
        # (fewer steps per epoch) leave good points behind at first. So epochs <= epochs // 2 are never judged (Optuna
        # prunes from step == n_warmup_steps on, and our steps are 1-based epochs), and nothing is pruned until a
        # third of the budget has completed: 2 complete trials at least (one is not a median), 5 at most (Optuna's
        # default), so a long search still saves most of its pruned trials' time.
        return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(2, trials // 3)), n_warmup_steps=epochs // 2 + 1)
    if name == "hyperband":
        # Its most aggressive bracket first judges at min_resource epochs: a third of training (past a onecycle
        # warm-up, schedule.pct_start 0.25) and never epoch 1, for the reasons above. The reduction factor of 3 then
        # leaves a second bracket that trains every trial to the end, as a hedge, once epochs >= 3 * min_resource.
        most = max(epochs, 1)
        return optuna.pruners.HyperbandPruner(min_resource=min(most, max(2, math.ceil(epochs / 3))), max_resource=most,
                                              reduction_factor=3)
    return optuna.pruners.NopPruner()


def worker_seed(plan: SearchPlan, worker: int, existing: int) -> int:
    """Each process draws its own stream: shifted by worker index, trials already run (a resumed study does not
    replay its first points) and, for a shared storage, the host."""
    host = zlib.crc32(HOST.encode()) if plan.shared else 0
    return (plan.seed + worker + 1009 * existing + host) % 2**32


def spends_budget(trial: FrozenTrial) -> bool:
    """Complete, pruned and failed-by-its-own-error trials count toward --trials; crashes and surplus do not."""
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
        study.add_trial(optuna.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={"resume_from": str(run_dir)} if run_dir else {},
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


def scored(record: dict[str, Any]) -> dict[str, Any]:
    """An epoch's validation as the objective judges it: the EMA weights' when they do at least as well as the raw
    ones (what run.pick_weights keeps at the end), else the raw weights'."""
    ema = record.get("val_ema_top1")
    if ema is not None and ema >= record["val_top1"]:
        return {"epoch": record["epoch"], "val_top1": ema, "val_loss": record.get("val_ema_loss", math.nan)}
    return {"epoch": record["epoch"], "val_top1": record["val_top1"], "val_loss": record.get("val_loss", math.nan)}


class BudgetReached(Exception):
    """Raised in a trial that another worker's concurrent start pushed past --trials (it trains nothing)."""


class Objective:
    """One trial: the recipe with the trial's parameters, trained as an ordinary run folder in <study>/trials/."""

    def __init__(self, plan: SearchPlan, worker: int) -> None:
        self.plan, self.worker = plan, worker
        self.space = plan.distributions()
        self.threads = max(1, (os.cpu_count() or 1) // plan.workers)

    def __call__(self, trial: optuna.Trial) -> float:
        params = {key: suggest_param(trial, key, distribution) for key, distribution in self.space.items()}
        name = f"trial-{trial.number:04d}"
        stat = process_stat(os.getpid())
        for key, value in {"host": HOST, "pid": os.getpid(), "process_start": stat[1] if stat else None,
                           "run_name": name, "worker": self.worker}.items():
            trial.set_user_attr(key, value)
        ahead = [t for t in trial.study.get_trials(deepcopy=False)
                 if t.number < trial.number and (spends_budget(t) or t.state == TrialState.RUNNING)]
        if len(ahead) >= self.plan.trials:
            trial.set_user_attr("surplus", True)
            raise BudgetReached(f"{len(ahead)} trials already spend the budget of {self.plan.trials}")
        folder = Path(self.plan.folder)
        try:
            config = trial_config(self.plan.recipe, self.plan.overrides, params, output_dir=folder / "trials", name=name)
            if config.train.threads is None:
                torch.set_num_threads(self.threads)
            resume = self.resume_point(trial, config)
            if resume is not None:
                trial.set_user_attr("run_dir", str(resume))
            progress = self.plan.progress and self.plan.workers == 1 and sys.stderr.isatty()
            run_dir, results = train_recipe(config, progress=progress, echo=False,
                                            resume=str(resume) if resume is not None else None,
                                            on_epoch=self.pruning_hook(trial, config.schedule.epochs))
            if results.get("val") is None:
                raise ConfigError("the trial has no validation split to score; set data.val_fraction (or data.split) "
                                  "so a validation split exists")
        except optuna.TrialPruned:
            self.record_run(trial, folder, name)
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}"[:2000])
            self.record_run(trial, folder, name)
            raise
        trial.set_user_attr("run_dir", str(Path(run_dir).resolve()))
        return float(results["val"]["top1"])

    @staticmethod
    def resume_point(trial: optuna.Trial, config: RunConfig) -> Path | None:
        """The killed trial's run folder that this retry continues, when it holds a checkpoint of the same experiment
        short of the end; its validated epochs are reported to this trial again, so the pruner sees the whole curve."""
        source = trial.user_attrs.get("resume_from")
        found = newest_valid(Path(source) / CHECKPOINTS) if source else None
        if found is None:
            return None
        manifest = found[1]
        try:
            check_same_experiment(manifest["config"], config)
        except ConfigError:
            return None  # rerun with other overrides: the point is trained afresh under the current recipe
        if manifest["epoch"] >= config.schedule.epochs:
            return None  # killed after training, in the test pass: a resume would have no validation left to score
        for record in read_history(Path(source)):
            if record["epoch"] <= manifest["epoch"] and "val_top1" in record:
                trial.report(scored(record)["val_top1"], record["epoch"])
        return Path(source)

    @staticmethod
    def record_run(trial: optuna.Trial, folder: Path, name: str) -> None:
        """Note the run folder of a trial that ended early (a resumed retry has already noted the one it continues)."""
        run_dir = find_run(folder, name)
        if run_dir is not None:
            trial.set_user_attr("run_dir", str(run_dir))

    @staticmethod
    def pruning_hook(trial: optuna.Trial, epochs: int) -> Callable[[dict], None]:
        """Report each epoch's validation top-1 (of the weights the objective would keep); stop the run when the
        pruner says so (never after the last epoch)."""
        def on_epoch(record: dict) -> None:
            if "val_top1" not in record:
                return
            epoch, value = record["epoch"], scored(record)["val_top1"]
            trial.report(value, epoch)
            if epoch < epochs and trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", epoch)
                raise optuna.TrialPruned(f"validation top-1 {100 * value:.2f} % at epoch {epoch}")
        return on_epoch

    def announce(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """One line per finished trial; with several workers, prefixed by the worker."""
        finished = sum(spends_budget(t) for t in study.get_trials(deepcopy=False))
        prefix = f"[worker {self.worker}] " if self.plan.workers > 1 else ""
        print(f"{prefix}{trial_line(trial)}  ({finished}/{self.plan.trials} done)", flush=True)


def failure(trial: FrozenTrial) -> str:
    """Why a failed trial failed; one failed by Optuna's heartbeat check (another process found it silent for
    GRACE_S seconds) carries no note of its own, as a finished trial takes no more attributes."""
    attrs = trial.user_attrs
    if attrs.get("interrupted"):
        return "interrupted"
    return attrs.get("error") or attrs.get("crashed") or f"heartbeat lost (silent for over {GRACE_S} s)"


def trial_line(trial: FrozenTrial) -> str:
    """One finished trial for the terminal: outcome, parameters, duration."""
    params = "  ".join(f"{key}={format_value(value)}" for key, value in trial.params.items())
    took = f"{trial.duration.total_seconds():.0f} s" if trial.duration else ""
    attrs = trial.user_attrs
    if trial.state == TrialState.COMPLETE:
        outcome = f"val top-1 {100 * trial.value:.2f} %"
    elif trial.state == TrialState.PRUNED:
        last = trial.intermediate_values.get(max(trial.intermediate_values)) if trial.intermediate_values else None
        outcome = f"pruned at epoch {attrs.get('pruned_at_epoch', '?')}"
        outcome += f" ({100 * last:.2f} %)" if last is not None else ""
    elif attrs.get("surplus"):
        outcome = "not run: the budget was reached by other workers"
    else:
        outcome = f"failed: {failure(trial)}"
    return f"trial {trial.number:>4}  {outcome}  {params}  {took}"


def format_value(value: Any) -> str:
    """A parameter value short enough for a table cell (floats to 4 significant digits)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def find_run(folder: Path, name: str | None) -> Path | None:
    """The run folder a trial wrote (trials/<name>-<timestamp>), newest first."""
    if not name:
        return None
    matches = sorted((folder / "trials").glob(f"{name}-*"))
    return matches[-1].resolve() if matches else None


def run_worker(plan: SearchPlan, worker: int = 0) -> None:
    """One search process: start trials while the study is short of --trials, then wait for the other workers'."""
    with quiet_optuna():
        storage = open_storage(plan.storage, plan.folder)
        probe = optuna.load_study(study_name=plan.study, storage=storage)
        existing = len(probe.get_trials(deepcopy=False))
        study = optuna.load_study(study_name=plan.study, storage=storage,
                                  sampler=make_sampler(plan, worker_seed(plan, worker, existing)),
                                  pruner=make_pruner(plan.pruner, plan.epochs, plan.trials))
        objective = Objective(plan, worker)
        while True:
            trials = study.get_trials(deepcopy=False)
            finished = sum(spends_budget(t) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            if finished + running < plan.trials:
                study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[objective.announce])
            elif running == 0:
                return
            else:
                time.sleep(POLL_S)
                recover_orphans(study, storage, Path(plan.folder))  # a dead worker's trial reopens the budget


def run_workers(plan: SearchPlan) -> None:
    """This process alone for one worker; K spawned processes (each with cores / K torch threads) for K."""
    if plan.workers == 1:
        run_worker(plan, 0)
        return
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=run_worker, args=(plan, index), name=f"reprocls-tune-{index}")
                 for index in range(plan.workers)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except KeyboardInterrupt:
        for process in processes:
            process.join(timeout=30)
        raise
    failed = [f"{p.name} (exit {p.exitcode})" for p in processes if p.exitcode]
    if failed:
        print(f"note: {', '.join(failed)} stopped early; rerun the same command to finish the study", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- the command


def tune(recipe: str | None, overrides: list[str] | tuple[str, ...] = (), *, space: str | Path, sampler: str = "tpe",
         trials: int | None = None, workers: int = 1, pruner: str = "median", storage: str | None = None,
         study_name: str | None = None, out: str | Path | None = None, seed: int = 0,
         progress: bool = True) -> dict[str, Any]:
    """Search `space` around a recipe; returns the study summary (also in <study folder>/study.json). Rerunning the
    same command resumes the study; the same --storage and --study on other machines add workers to it."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("reprocls tune runs its trials one per process; start it without torchrun and run trials in "
                          "parallel with --workers N (or several tune commands sharing one --storage)")
    overrides = list(overrides)
    base = load_config(recipe, overrides)
    check_names(base)
    if base.data.name != "image_folder" and base.data.val_fraction == 0:
        raise ConfigError("data.val_fraction: 0 leaves no validation split, and a search must not select on the test "
                          "split; set data.val_fraction=0.1")
    if sampler not in SAMPLERS:
        raise ConfigError(f"--sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner!r}: choose one of {', '.join(PRUNERS)}")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: run at least one worker")
    distributions = load_space(space)
    if sampler == "grid":
        size = math.prod(len(values) for values in grid_points(distributions).values())
        if trials is not None and trials > size:
            print(f"note: the grid has {size} points; running each once instead of {trials} trials")
        trials = min(trials or size, size)
    elif trials is None:
        raise ConfigError("--trials: how many trials in total (all workers and machines together)? e.g. --trials 20; "
                          "only --sampler grid has a natural size")
    if trials < 1:
        raise ConfigError(f"--trials {trials}: run at least one trial")
    name = study_name or base.name or "study"
    folder = (Path(out) if out else Path(base.output_dir) / f"{name}-study").resolve()
    check_folder(folder, name)
    (folder / "trials").mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{folder / 'study.db'}"
    epochs = base.schedule.epochs
    if "schedule.epochs" in distributions:  # the pruners' resource is the longest training a trial can get
        epochs = max(int(value) for value in grid_points_or_bounds(distributions["schedule.epochs"]))
    plan = SearchPlan(recipe=str(recipe) if recipe is not None else None, overrides=overrides,
                      space={key: distribution_to_json(d) for key, d in distributions.items()}, sampler=sampler,
                      pruner=pruner, seed=seed, storage=url, study=name, folder=str(folder), trials=trials,
                      workers=workers, epochs=epochs, shared=storage is not None, progress=progress)
    with quiet_optuna():
        store = open_storage(url, folder)
        study = optuna.create_study(study_name=name, storage=store, direction="maximize", load_if_exists=True)
        check_study(study, plan)
        requeued = recover_orphans(study, store, folder) + requeue_interrupted(study, folder)
        before = sum(spends_budget(t) for t in study.get_trials(deepcopy=False))
        threads = base.train.threads or max(1, (os.cpu_count() or 1) // workers)
        print(f"study {name!r} in {masked(url)}: {before} of {trials} trials done; sampler {sampler} (seed {seed}), "
              f"pruner {pruner}, {workers} worker(s) x {threads} torch thread(s)")
        for key, distribution in distributions.items():
            print(f"  {key}: {describe(distribution)}")
        if requeued:
            print(f"trial(s) {', '.join(map(str, requeued))} lost their process; their parameters are queued again")
        print(f"trial runs go to {folder / 'trials'}", flush=True)
        run_workers(plan)
        summary = summarize(study, folder, url)
    atomic_write_json(folder / "study.json", summary)  # `reprocls report` may read or rewrite it meanwhile
    if summary["best"] is not None:
        write_best_recipe(summary, recipe, overrides, folder / "best.yaml")
    report = write_study_report(folder, summary)
    print("\n" + format_summary(summary))
    print(f"report: {report}")
    return summary


def grid_points_or_bounds(distribution: BaseDistribution) -> list[Any]:
    """The values a key's distribution can reach at its extremes (all of them for a list of choices)."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]


def check_folder(folder: Path, name: str) -> None:
    """One study per folder: two would share study.db, study.json and report.html, and the report could not tell
    which to show."""
    found: set[str] = set()
    if (folder / "study.db").exists():
        with quiet_optuna():
            found.update(optuna.get_all_study_names(open_storage(f"sqlite:///{folder / 'study.db'}")))
    if (folder / "study.json").exists():
        found.add(json.loads((folder / "study.json").read_text())["study"])
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
    study.set_user_attr("command", {"recipe": plan.recipe, "overrides": plan.overrides, "sampler": plan.sampler,
                                    "pruner": plan.pruner, "seed": plan.seed, "trials": plan.trials,
                                    "workers": plan.workers, "host": HOST, "folder": plan.folder})


# ---------------------------------------------------------------------------------------------- results


def summarize(study: optuna.Study, folder: Path, url: str) -> dict[str, Any]:
    """study.json: every trial (number, state, params, value, run folder, duration) and the best one."""
    trials = study.get_trials(deepcopy=False)
    rows = [trial_row(trial, folder) for trial in trials]
    complete = [trial for trial in trials if trial.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None  # ties: the earliest trial
    importance, note = param_importance(study, complete)
    states = ("complete", "pruned", "failed", "running", "waiting")
    counts = {state: sum(row["state"] == state for row in rows) for state in states}
    command = study.user_attrs.get("command", {})
    return {
        "study": study.study_name, "storage": masked(url), "folder": str(folder), "direction": "maximize",
        "objective": OBJECTIVE, "command": command, "trials_target": command.get("trials"),
        "space": {key: describe(json_to_distribution(text)) for key, text in study.user_attrs.get("space", {}).items()},
        "finished": sum(spends_budget(trial) for trial in trials), "counts": counts, "trials": rows,
        "best": next(row for row in rows if row["number"] == best.number) if best else None,
        "importance": importance, "importance_note": note,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def trial_row(trial: FrozenTrial, folder: Path) -> dict[str, Any]:
    """One trial as study.json records it: plain values a report can be rebuilt from without the database."""
    attrs = trial.user_attrs
    state = "skipped" if attrs.get("surplus") else trial.state.name.lower().replace("fail", "failed")
    curve = sorted(trial.intermediate_values.items())
    return {
        "number": trial.number, "state": state, "params": trial.params,
        "value": trial.value if trial.state == TrialState.COMPLETE else None,
        "last_val_top1": curve[-1][1] if curve else None, "epochs_reported": len(curve),
        "pruned_at_epoch": attrs.get("pruned_at_epoch"), "curve": [[step, value] for step, value in curve],
        "run_dir": attrs.get("run_dir") or (str(found) if (found := find_run(folder, attrs.get("run_name"))) else None),
        "host": attrs.get("host"), "duration_s": trial.duration.total_seconds() if trial.duration else None,
        "error": failure(trial) if state == "failed" else None,
        "retry_of": trial.system_attrs.get("failed_trial"),
    }


def param_importance(study: optuna.Study, complete: list[FrozenTrial]) -> tuple[dict[str, float] | None, str]:
    """PED-ANOVA importance (no scikit-learn needed): how differently each parameter is spread in the best trials."""
    varied = [key for key in (complete[0].params if complete else {})
              if len({json.dumps(t.params.get(key)) for t in complete}) > 1]
    if len(complete) < 3 or not varied:
        return None, "needs at least 3 complete trials with different parameter values"
    try:
        with quiet_optuna():
            values = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), params=varied)
    except (ValueError, RuntimeError, ZeroDivisionError) as error:
        return None, f"not computed: {error}"
    return ({key: float(value) for key, value in values.items()},
            "PED-ANOVA (Watanabe et al. 2023): how far each parameter's spread in the top trials departs from the "
            "whole search; Optuna's fANOVA would need scikit-learn")


def write_best_recipe(summary: dict[str, Any], recipe: str | None, overrides: list[str], path: Path) -> Path:
    """best.yaml: the base recipe + overrides + the best parameters, checked by load_config before it is kept."""
    best = summary["best"]
    raw = read_recipe(recipe, overrides)
    for key, value in best["params"].items():
        set_key(raw, key.split("."), value)
    raw["name"] = f"{summary['study']}-best"
    base = f"the recipe {recipe}" if recipe is not None else "the schema's defaults (no recipe file)"
    header = [f"# Best trial of study {summary['study']!r}: trial {best['number']}, validation top-1 "
              f"{100 * best['value']:.2f} % ({summary['finished']} trials finished).",
              f"# Built from {base}" + (f" with {' '.join(overrides)}" if overrides else "")
              + ", and the trial's parameters:",
              "#   " + ", ".join(f"{key}={value}" for key, value in best["params"].items()),
              f"# Train it: reprocls train {path}", ""]
    text = "\n".join(header) + yaml.safe_dump(raw, sort_keys=False)
    check = path.with_name(f".{path.name}.check.yaml")
    try:  # best.yaml must load like any recipe before it replaces the previous one
        check.write_text(text)
        load_config(check)
    finally:
        check.unlink(missing_ok=True)
    return atomic_write_text(path, text)


def format_summary(summary: dict[str, Any]) -> str:
    """The compact table printed when tune ends."""
    keys = list(summary["space"])
    rows = [["trial", "state", "val top-1", *keys, "epochs", "time"]]
    for row in summary["trials"]:
        value = row["value"] if row["value"] is not None else row["last_val_top1"]
        rows.append([str(row["number"]), row["state"], f"{100 * value:.2f} %" if value is not None else "-",
                     *[format_value(row["params"].get(key, "-")) for key in keys], str(row["epochs_reported"]),
                     f"{row['duration_s']:.0f} s" if row["duration_s"] is not None else "-"])
    counts = summary["counts"]
    lines = [f"study {summary['study']!r}: {summary['finished']} of {summary['trials_target']} trials finished "
             f"({counts['complete']} complete, {counts['pruned']} pruned, {counts['failed']} failed)", format_grid(rows)]
    best = summary["best"]
    if best is None:
        lines.append("no trial completed, so there is no best recipe")
    else:
        lines.append(f"best: trial {best['number']}, val top-1 {100 * best['value']:.2f} %: "
                     + ", ".join(f"{k}={format_value(v)}" for k, v in best["params"].items()))
        lines.append(f"train it: reprocls train {Path(summary['folder']) / 'best.yaml'}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- report


def load_summary(folder: Path, study: str | None = None) -> dict[str, Any]:
    """The study's summary, fresh from study.db when the folder has one (study.json alone otherwise); `study` names
    the one to read where study.db holds several."""
    database = folder / "study.db"
    if database.exists():
        url = f"sqlite:///{database.resolve()}"
        with quiet_optuna():
            storage = open_storage(url)
            names = optuna.get_all_study_names(storage)
            if study is None and len(names) == 1:
                study = names[0]
            if study not in names:
                raise ConfigError(f"{database} holds the studies {', '.join(map(repr, names)) or '(none)'}; name the one "
                                  f"to report: write_study_report({str(folder)!r}, study=NAME)")
            summary = summarize(optuna.load_study(study_name=study, storage=storage), folder.resolve(), url)
        atomic_write_json(folder / "study.json", summary)
        return summary
    if (folder / "study.json").exists():
        return json.loads((folder / "study.json").read_text())
    raise FileNotFoundError(f"{folder} is not a study folder (no study.db or study.json); run `reprocls tune` first")


def plot_history(rows: list[dict[str, Any]], path: Path) -> None:
    """Validation top-1 per trial in order, pruned trials at their last epoch, and the best so far."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    complete = [row for row in rows if row["state"] == "complete"]
    pruned = [row for row in rows if row["state"] == "pruned" and row["last_val_top1"] is not None]
    if complete:
        ax.scatter([r["number"] for r in complete], [100 * r["value"] for r in complete], color="#2b6cb0", zorder=3,
                   label="complete")
        best, xs, ys = -math.inf, [], []
        for row in sorted(complete, key=lambda r: r["number"]):
            best = max(best, 100 * row["value"])
            xs.append(row["number"])
            ys.append(best)
        xs.append(max(r["number"] for r in rows))
        ys.append(best)
        ax.step(xs, ys, where="post", color="#d9822b", label="best so far")
    if pruned:
        ax.scatter([r["number"] for r in pruned], [100 * r["last_val_top1"] for r in pruned], marker="x",
                   color=GREY, zorder=3, label="pruned (last validation)")
    if not complete and not pruned:
        ax.text(0.5, 0.5, "no finished trials yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("trial")
    ax.set_ylabel("validation top-1 (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if complete or pruned:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_importance(importance: dict[str, float], path: Path) -> None:
    """One bar per searched key, the most important on top."""
    keys = sorted(importance, key=importance.get)
    fig, ax = plt.subplots(figsize=(7.5, 0.5 * len(keys) + 1.2))
    ax.barh(keys, [importance[key] for key in keys], color="#4a7bd0")
    ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def trial_history(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A trial's validation per epoch as the objective scored it: from its run folder's metrics.jsonl (which has the
    loss too), cut to the epochs the trial reported (a retry may have continued the folder), else from the study."""
    reported = {int(step) for step, _ in row["curve"]}
    records = read_history(Path(row["run_dir"])) if row["run_dir"] else []
    history = [scored(record) for record in records if record["epoch"] in reported and "val_top1" in record]
    return history or [{"epoch": int(step), "val_top1": value, "val_loss": math.nan} for step, value in row["curve"]]


def plot_curves(rows: list[dict[str, Any]], best: int | None) -> plt.Figure:
    """Every trial's validation top-1 and loss per epoch: pruned trials grey, dashed and ending in a cross, failed ones
    grey and dotted, the best one bold; a legend per trial only while it stays readable."""
    histories: dict[str, list[dict[str, Any]]] = {}
    labels: dict[str, dict[str, Any]] = {}
    for row in rows:
        history = trial_history(row)
        if history:
            label = f"trial {row['number']}" + (" (best)" if row["number"] == best else
                                                f" ({row['state']})" if row["state"] != "complete" else "")
            histories[label], labels[label] = history, row
    fig = plot_validation_runs(histories, dashed={label for label, row in labels.items()
                                                  if row["state"] in ("pruned", "failed")}, legend=False)
    top1 = fig.axes[0]
    for ax in fig.axes:
        for line in ax.get_lines():
            row = labels[line.get_label()]
            if row["state"] in ("pruned", "failed"):
                line.set(color=GREY, linestyle="--" if row["state"] == "pruned" else ":")
            if row["number"] == best:
                line.set(color="#1d2330", linewidth=2.6)
    for label, row in labels.items():
        if row["state"] == "pruned":
            last = histories[label][-1]
            top1.plot(last["epoch"], 100 * last["val_top1"], marker="x", color="#c53030", markersize=9, linestyle="")
    if not histories:
        top1.text(0.5, 0.5, "no validation epochs recorded", ha="center", va="center", transform=top1.transAxes)
    shown = [line for line in top1.get_lines() if line.get_label() in labels
             and (len(labels) <= 10 or labels[line.get_label()]["number"] == best)]
    styles = [Line2D([], [], linestyle="--", marker="x", color=GREY, markeredgecolor="#c53030", label="pruned (x: stopped)"),
              Line2D([], [], linestyle=":", color=GREY, label="failed")]
    top1.legend(handles=shown + styles, fontsize=8, loc="lower right")
    return fig


def write_study_report(folder: str | Path, summary: dict[str, Any] | None = None, *, study: str | None = None) -> Path:
    """<study folder>/report.html, self-contained: from `summary`, else rebuilt from study.db or study.json alone."""
    folder = Path(folder)
    summary = summary if summary is not None else load_summary(folder, study)
    rows, best, keys = summary["trials"], summary["best"], list(summary["space"])
    plot_history(rows, folder / "history.png")
    if summary["importance"]:
        plot_importance(summary["importance"], folder / "importance.png")
    counts = summary["counts"]
    intro = html.cards([("best val top-1", f"{100 * best['value']:.2f} %" if best else "-"),
                        ("best trial", str(best["number"]) if best else "-"),
                        ("finished", f"{summary['finished']} / {summary['trials_target']}"),
                        ("complete", str(counts["complete"])), ("pruned", str(counts["pruned"])),
                        ("failed", str(counts["failed"]))])
    best_recipe = folder / "best.yaml"
    if best is None:
        best_html = html.verdict("No trial has completed yet, so there is no best recipe.", "warn")
    else:
        best_html = (html.table([["parameter", "value"], *[[k, format_value(v)] for k, v in best["params"].items()]])
                     + f"<p>Validation top-1 {100 * best['value']:.2f} % (trial {best['number']}, run folder "
                     f"<code>{html.escape(best['run_dir'] or '-')}</code>). Train the best recipe:</p>"
                     + html.code(f"reprocls train {best_recipe.resolve()}"))
        if best_recipe.exists():
            best_html += html.code(best_recipe.read_text(), collapsed=True, summary="best.yaml")
    table_rows = [["trial", "state", *keys, "val top-1", "pruned at epoch", "duration", "note"]]
    for row in rows:
        value = row["value"] if row["value"] is not None else row["last_val_top1"]
        note = row["error"] or (f"retry of trial {row['retry_of']}" if row["retry_of"] is not None else "")
        table_rows.append([row["number"], row["state"], *[format_value(row["params"].get(k, "-")) for k in keys],
                           f"{100 * value:.2f} %" if value is not None else "-", row["pruned_at_epoch"] or "",
                           f"{row['duration_s']:.0f} s" if row["duration_s"] is not None else "-", note])
    importance_html = (html.figure(folder / "importance.png", "parameter importance", alt="parameter importance")
                       + f"<p>{html.escape(summary['importance_note'])}</p>" if summary["importance"]
                       else f"<p>Not shown: {html.escape(summary['importance_note'])}.</p>")
    curves_html = html.figure(plot_curves(rows, best["number"] if best else None),
                              "validation top-1 and loss per epoch (of the weights each trial keeps: EMA when better); "
                              "grey, dashed and ending in a cross: pruned; grey dotted: failed", alt="validation curves")
    command = summary.get("command", {})
    settings = [["setting", "value"], ["objective", summary["objective"]], ["storage", summary["storage"]],
                ["recipe", command.get("recipe")], ["overrides", " ".join(command.get("overrides", [])) or "-"],
                ["sampler", f"{command.get('sampler')} (seed {command.get('seed')})"], ["pruner", command.get("pruner")],
                *[[key, text] for key, text in summary["space"].items()]]
    sections = [("Best trial", best_html), ("Trials", html.table(table_rows, numeric_columns=(0, *range(2, len(keys) + 5)))),
                ("Search history", html.figure(folder / "history.png", "validation top-1 per trial and the best so far",
                                               alt="search history")),
                ("Parameter importance", importance_html), ("Validation curves", curves_html),
                ("Search space and settings", html.table(settings))]
    document = html.page(f"Study {summary['study']}", sections, intro=intro,
                         subtitle=f"hyper-parameter search, {summary['updated']}, folder {summary['folder']}")
    return html.write_page(folder / "report.html", document)
