"""How a search picks its next point (SAMPLERS) and stops poor trials early (PRUNERS), by name. Optuna is imported
only when a strategy is built, so the command line can list the choices without loading it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

from reprocls.registry import Registry

if TYPE_CHECKING:
    from reprocls.experiments.tune.plan import SearchPlan

SAMPLERS: Registry[Callable[["SearchPlan", int], Any]] = Registry("sampler")
PRUNERS: Registry[Callable[[int, int], Any]] = Registry("pruner")


@SAMPLERS.register
def grid(plan: SearchPlan, worker_seed: int) -> Any:
    """Every combination of the listed values once, in an order every process shuffles alike."""
    import optuna

    from reprocls.experiments.tune.space import grid_points

    return optuna.samplers.GridSampler(grid_points(plan.decoded_space()), seed=plan.seed)


@SAMPLERS.register
def random(plan: SearchPlan, worker_seed: int) -> Any:
    """Independent uniform draws: the baseline every smarter sampler must beat (Bergstra & Bengio 2012)."""
    import optuna

    return optuna.samplers.RandomSampler(seed=worker_seed)


@SAMPLERS.register
def tpe(plan: SearchPlan, worker_seed: int) -> Any:
    """Tree-structured Parzen estimator; running trials count as taken (constant liar), so workers spread out. In an
    architecture search each candidate carries its budget constraints (Trial.set_constraint), which TPE reads, so it
    learns where the budget ends."""
    import optuna

    return optuna.samplers.TPESampler(seed=worker_seed, constant_liar=True)


@PRUNERS.register
def median(epochs: int, trials: int) -> Any:
    """Stop a trial below the median of complete trials at the same epoch, judged only after half of training."""
    import optuna

    # Early validation top-1 is mostly noise: a warming-up schedule (onecycle, warmup_epochs) and large batches
    # (fewer steps per epoch) leave good points behind at first. So epochs <= epochs // 2 are never judged (Optuna
    # prunes from step == n_warmup_steps on, and our steps are 1-based epochs), and nothing is pruned until a
    # third of the budget has completed: 2 complete trials at least (one is not a median), 5 at most (Optuna's
    # default), so a long search still saves most of its pruned trials' time.
    return optuna.pruners.MedianPruner(n_startup_trials=min(5, max(2, trials // 3)), n_warmup_steps=epochs // 2 + 1)


@PRUNERS.register
def hyperband(epochs: int, trials: int) -> Any:
    """Successive halving in several brackets (Li et al. 2018), first judging at a third of training."""
    import optuna

    # Its most aggressive bracket first judges at min_resource epochs: a third of training (past a onecycle
    # warm-up, schedule.pct_start 0.25) and never epoch 1, for the reasons above. The reduction factor of 3 then
    # leaves a second bracket that trains every trial to the end, as a hedge, once epochs >= 3 * min_resource.
    most = max(epochs, 1)
    return optuna.pruners.HyperbandPruner(min_resource=min(most, max(2, math.ceil(epochs / 3))), max_resource=most,
                                          reduction_factor=3)


@PRUNERS.register
def none(epochs: int, trials: int) -> Any:
    """Every trial trains to the end."""
    import optuna

    return optuna.pruners.NopPruner()


def make_pruner(name: str, epochs: int, trials: int) -> Any:
    """The pruner by name, sized for trials of `epochs` epochs in a search of `trials` trials."""
    return PRUNERS.get(name)(epochs, trials)
