"""What every search process works from: the recipe, the space, the strategies, the storage and the budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, json_to_distribution

from reprocls.config import Recipe
from reprocls.experiments.tune.space import grid_points


@dataclass
class SearchPlan:
    """Everything a worker process needs to join the search (picklable, so it crosses the spawn boundary)."""

    recipe: Recipe  # read once by the command; every trial adds its parameters to recipe.raw
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
    architecture: Any = None  # reprocls nas: an ArchitecturePlan (space, budget, proxies); None for reprocls tune

    def decoded_space(self) -> dict[str, BaseDistribution]:
        """The space as searched, decoded from the JSON that crosses the spawn boundary."""
        return {key: json_to_distribution(text) for key, text in self.space.items()}

    def distributions(self) -> dict[str, BaseDistribution]:
        """The space as this process suggests it: the grid sampler hands out values, suggested as the choices they are."""
        space = self.decoded_space()
        if self.sampler == "grid":
            return {key: CategoricalDistribution(values) for key, values in grid_points(space).items()}
        return space
