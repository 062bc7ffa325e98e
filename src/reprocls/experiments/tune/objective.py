"""One trial of a search: the recipe with the trial's parameters, trained as an ordinary run folder in
<study>/trials/, scored on validation top-1 of the weights it keeps, reported epoch by epoch to the pruner."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from reprocls import run_layout as layout
from reprocls.config import ConfigError, RunConfig
from reprocls.engine.checkpoint import CheckpointError
from reprocls.experiments.resume import check_same_experiment, plan_resume
from reprocls.experiments.run import train_recipe
from reprocls.experiments.tune.architecture import admit
from reprocls.experiments.tune.plan import SearchPlan
from reprocls.experiments.tune.space import suggest_param
from reprocls.experiments.tune.storage import (HOST, REPEAT_OF, SKIPPED, find_run, process_stat, spends_budget,
                                              trained_to_the_end)
from reprocls.experiments.tune.summary import trial_line
from reprocls.reports.folders import read_history, scored_validation


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
        earlier = trial.study.get_trials(deepcopy=False)  # read once: for the repeat check and the budget
        original = self.trained_before(trial, earlier)
        if original is not None:
            return self.repeat(trial, original)
        ahead = [t for t in earlier if t.number < trial.number and (spends_budget(t) or t.state == TrialState.RUNNING)]
        if len(ahead) >= self.plan.trials:
            trial.set_user_attr("surplus", True)
            raise BudgetReached(f"{len(ahead)} trials already spend the budget of {self.plan.trials}")
        folder = Path(self.plan.folder)
        try:
            values = params if self.plan.architecture is None else admit(self.plan.architecture, trial, params)
            config = self.plan.recipe.with_values(values, output_dir=str(folder / layout.TRIALS), name=name)
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
            if SKIPPED not in trial.user_attrs:
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
    def trained_before(trial: optuna.Trial, trials: list[FrozenTrial]) -> FrozenTrial | None:
        """The complete trial that already trained this trial's point: samplers propose a point of a discrete space
        again, and a second training would only spend the budget on the same answer."""
        return next((t for t in trials if trained_to_the_end(t) and t.params == trial.params), None)

    @staticmethod
    def repeat(trial: optuna.Trial, original: FrozenTrial) -> float:
        """The original's result again, without training: its measured facts and budget constraints copied, so the
        sampler reads the repeat like the original; it does not count toward --trials."""
        trial.set_user_attr(REPEAT_OF, original.number)
        for key in ("run_dir", "model", "kwargs", "params", "macs", "latency_ms", "proxies"):
            if key in original.user_attrs:
                trial.set_user_attr(key, original.user_attrs[key])
        for key, value in original.constraints.items():
            trial.set_constraint(key, value)
        return float(original.value)

    @staticmethod
    def resume_point(trial: optuna.Trial, config: RunConfig) -> Path | None:
        """The killed trial's run folder that this retry continues: one that finished before the study heard of it
        (read, not trained), or one with a checkpoint of the same experiment, the last epoch's included (then only
        the final passes are redone); its validated epochs are reported to this trial again, so the pruner sees the
        whole curve."""
        source = trial.user_attrs.get("resume_from")
        if not source:
            return None
        try:
            plan = plan_resume(config, source)  # a finished run is checked against the recipe there
            if plan.point is not None:
                check_same_experiment(plan.point.manifest["config"], config)
        except (ConfigError, CheckpointError):
            return None  # no intact checkpoint, or a rerun with other overrides: the point is trained afresh
        folder = Path(source)
        last = config.schedule.epochs if plan.finished is not None else plan.point.manifest["epoch"]
        for record in read_history(folder):
            if record["epoch"] <= last and "val_top1" in record:
                trial.report(scored_validation(record)["val_top1"], record["epoch"])
        return folder

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
            epoch, value = record["epoch"], scored_validation(record)["val_top1"]
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
