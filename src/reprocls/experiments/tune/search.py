"""`reprocls tune`: hyper-parameter search over recipe keys with Optuna. Every trial is an ordinary run folder, the
study lives in a database (SQLite in the study folder, or any SQLAlchemy URL that several machines share), and a
killed search resumes where it stopped, retrying the point that was cut off."""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import distribution_to_json
from optuna.trial import TrialState

from reprocls import run_layout as layout
from reprocls.config import ConfigError, Recipe, load_recipe
from reprocls.experiments.tune.objective import Objective
from reprocls.experiments.tune.plan import SearchPlan
from reprocls.experiments.tune.space import describe_distribution, grid_points, load_space, reachable_values
from reprocls.experiments.tune.storage import (HOST, SKIPPED, check_study, check_study_folder, is_repeat, masked,
                                               open_storage, quiet_optuna, recover_orphans, requeue_interrupted,
                                               spends_budget)
from reprocls.experiments.tune.strategies import PRUNERS, SAMPLERS, make_pruner
from reprocls.experiments.tune.summary import format_summary, summarize, write_best_recipe
from reprocls.files import atomic_write_json
from reprocls.recipe import check_names
from reprocls.reports.study_page import write_study_page

POLL_S = 2.0  # how often a worker with nothing left to start checks whether the others' trials ended
REPEATS_IN_A_ROW = 25  # proposals of points already trained, one after another, before a search calls its space spent


def worker_seed(plan: SearchPlan, worker: int, existing: int) -> int:
    """Each process draws its own stream: shifted by worker index, trials already run (a resumed study does not
    replay its first points) and, for a shared storage, the host."""
    host = zlib.crc32(HOST.encode()) if plan.shared else 0
    return (plan.seed + worker + 1009 * existing + host) % 2**32


def space_spent(trials: list) -> bool:
    """True when the sampler's last proposals were all repeats of trained points (a small discrete space used up)."""
    ended = [t for t in trials if t.state != TrialState.RUNNING][-REPEATS_IN_A_ROW:]
    return len(ended) == REPEATS_IN_A_ROW and all(is_repeat(t) for t in ended)


def run_worker(plan: SearchPlan, worker: int = 0) -> None:
    """One search process: start trials while the study is short of --trials, then wait for the other workers'."""
    with quiet_optuna():
        storage = open_storage(plan.storage, plan.folder)
        probe = optuna.load_study(study_name=plan.study, storage=storage)
        existing = len(probe.get_trials(deepcopy=False))
        study = optuna.load_study(study_name=plan.study, storage=storage,
                                  sampler=SAMPLERS.get(plan.sampler)(plan, worker_seed(plan, worker, existing)),
                                  pruner=make_pruner(plan.pruner, plan.epochs, plan.trials))
        objective = Objective(plan, worker)
        while True:
            trials = study.get_trials(deepcopy=False)
            arch = plan.architecture
            if arch is not None and sum(SKIPPED in t.user_attrs for t in trials) >= arch.max_skips:
                print(f"note: {arch.max_skips} candidates drawn over the budget; the budget leaves too "
                      "little of the space: raise --budget-macs or narrow the space's knobs", file=sys.stderr)
                return
            if space_spent(trials):
                print(f"note: the last {REPEATS_IN_A_ROW} points proposed had all been trained already; the space "
                      "looks exhausted: widen it or lower --trials", file=sys.stderr)
                return
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


def tune(recipe: Recipe | str | Path | None, overrides: list[str] | tuple[str, ...] = (), *, space: str | Path,
         sampler: str = "tpe", trials: int | None = None, workers: int = 1, pruner: str = "median",
         storage: str | None = None, study_name: str | None = None, out: str | Path | None = None, seed: int = 0,
         progress: bool = True, architecture: Any = None) -> dict[str, Any]:
    """Search `space` around a recipe (read already, or a path with overrides); returns the study summary (also in
    <study folder>/study.json). Rerunning the same command resumes the study; the same --storage and --study on
    other machines add workers to it. `architecture` (an ArchitecturePlan, from `reprocls nas`) searches its
    space's knobs instead of recipe keys, the reference network first."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("reprocls tune runs its trials one per process; start it without torchrun and run trials in "
                          "parallel with --workers N (or several tune commands sharing one --storage)")
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, list(overrides))
    base = recipe.config
    check_names(base)
    if base.data.name != "image_folder" and base.data.val_fraction == 0:
        raise ConfigError("data.val_fraction: 0 leaves no validation split, and a search must not select on the test "
                          "split; set data.val_fraction=0.1")
    for option, name, registry in (("--sampler", sampler, SAMPLERS), ("--pruner", pruner, PRUNERS)):
        if name not in registry:
            raise ConfigError(f"{option} {name!r}: choose one of {', '.join(registry.names())}")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: run at least one worker")
    distributions = architecture.distributions() if architecture is not None else load_space(space)
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
    check_study_folder(folder, name)
    (folder / layout.TRIALS).mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{folder / layout.STUDY_DB}"
    epochs = base.schedule.epochs
    if "schedule.epochs" in distributions:  # the pruners' resource is the longest training a trial can get
        epochs = max(int(value) for value in reachable_values(distributions["schedule.epochs"]))
    plan = SearchPlan(recipe=recipe, space={key: distribution_to_json(d) for key, d in distributions.items()}, sampler=sampler,
                      pruner=pruner, seed=seed, storage=url, study=name, folder=str(folder), trials=trials,
                      workers=workers, epochs=epochs, shared=storage is not None, progress=progress,
                      architecture=architecture)
    with quiet_optuna():
        store = open_storage(url, folder)
        study = optuna.create_study(study_name=name, storage=store, direction="maximize", load_if_exists=True)
        check_study(study, plan)
        if architecture is not None and architecture.reference and not study.get_trials(deepcopy=False):
            # the reference trains first, whatever the budget
            study.enqueue_trial(architecture.reference_params(), user_attrs={"reference": True})
        requeued = recover_orphans(study, store, folder) + requeue_interrupted(study, folder)
        before = sum(spends_budget(t) for t in study.get_trials(deepcopy=False))
        threads = base.train.threads or max(1, (os.cpu_count() or 1) // workers)
        print(f"study {name!r} in {masked(url)}: {before} of {trials} trials done; sampler {sampler} (seed {seed}), "
              f"pruner {pruner}, {workers} worker(s) x {threads} torch thread(s)")
        for key, distribution in distributions.items():
            print(f"  {key}: {describe_distribution(distribution)}")
        if requeued:
            print(f"trial(s) {', '.join(map(str, requeued))} lost their process; their parameters are queued again")
        print(f"trial runs go to {folder / layout.TRIALS}", flush=True)
        run_workers(plan)
        summary = summarize(study, folder, url)
    atomic_write_json(folder / layout.STUDY_JSON, summary)  # `reprocls report` may read or rewrite it meanwhile
    if summary["best"] is not None and architecture is None:  # nas writes its front's recipes instead
        write_best_recipe(summary, recipe, folder / layout.BEST_YAML)
    report = write_study_page(folder, summary)
    print("\n" + format_summary(summary, best_recipe=architecture is None))
    if architecture is None:  # nas writes its own page next
        print(f"report: {report}")
    return summary
