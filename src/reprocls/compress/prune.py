"""Unstructured weight magnitude pruning and iterative prune -> fine-tune schedules.

Two kinds of pruning with different payoffs, one file each:
- Unstructured (Han et al. 2015): zero the smallest-magnitude weights of every convolution and linear layer.
  Shapes stay the same, so the zeros save nothing on dense hardware until a sparse kernel or compressed
  storage uses them; `sparsity` measures how many weights really are zero.
- Structured (channel) pruning, in channels.py: whole output channels go, so the network becomes a smaller dense
  one and is really cheaper.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

from torch import nn
from torch.nn.utils import prune as torch_prune

Scope = Literal["global", "layer"]
PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # layers whose `weight` unstructured pruning considers


@dataclass(frozen=True)
class SparsityReport:
    """How many of the considered weights are exactly zero, overall and per layer, for tables and results files."""

    total: int  # weights considered (the `weight` of every conv and linear layer not excluded)
    zeros: int  # of those, how many are exactly 0.0
    layers: dict[str, tuple[int, int]] = field(default_factory=dict)  # module name -> (zeros, weights)

    @property
    def fraction(self) -> float:
        """Share of considered weights that are zero (what papers call the sparsity or 'pruning rate')."""
        return self.zeros / self.total if self.total else 0.0

    @property
    def per_layer(self) -> dict[str, float]:
        """Sparsity of each layer, so a global prune's uneven spread across layers is visible."""
        return {name: zeros / total if total else 0.0 for name, (zeros, total) in self.layers.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values, derived numbers included (for results files)."""
        return {"total": self.total, "zeros": self.zeros, "fraction": self.fraction, "per_layer": self.per_layer}

    def summary(self) -> str:
        """A fixed-width table: one row per layer, then the total, so reports can paste it as is."""
        width = max([len("total"), *(len(name) for name in self.layers)])
        rows = [f"{'layer':<{width}}  {'weights':>10}  {'zeros':>10}  {'sparsity':>8}"]
        for name, (zeros, total) in self.layers.items():
            rows.append(f"{name:<{width}}  {total:>10,}  {zeros:>10,}  {zeros / max(total, 1):>8.2%}")
        rows.append(f"{'total':<{width}}  {self.total:>10,}  {self.zeros:>10,}  {self.fraction:>8.2%}")
        return "\n".join(rows)


def _excluded(name: str, exclude: tuple[str, ...]) -> bool:
    """True when the module or one of its parents matches a pattern, so 'layer1' excludes everything in layer1."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(prefix, pattern) for pattern in exclude for prefix in prefixes)


def _prunable_layers(model: nn.Module, exclude: tuple[str, ...]) -> Iterator[tuple[str, nn.Module]]:
    """Conv and linear layers with a weight, in module order, minus the excluded ones."""
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE) and getattr(module, "weight", None) is not None and not _excluded(name, exclude):
            yield name, module


def sparsity(model: nn.Module, *, exclude: tuple[str, ...] = ()) -> SparsityReport:
    """Count the weights that are really zero now, rather than trusting the amount that was asked for."""
    layers: dict[str, tuple[int, int]] = {}
    for name, module in _prunable_layers(model, exclude):
        weight = module.weight.detach()
        layers[name] = (int((weight == 0).sum()), weight.numel())
    return SparsityReport(
        total=sum(total for _, total in layers.values()),
        zeros=sum(zeros for zeros, _ in layers.values()),
        layers=layers,
    )


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold torch's pruning masks into the weights so the model and its state dict are plain again.

    Parameters keep their original order (torch's `remove` appends the weight last), so state-dict keys and
    optimizer parameter indices match an unpruned model's.
    """
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                name = hook._tensor_name
                order = [name if key == f"{name}_orig" else key for key in module._parameters]
                torch_prune.remove(module, name)
                _reorder_parameters(module, order)
    return model


def _reorder_parameters(module: nn.Module, order: list[str]) -> None:
    """Put a module's parameters back in `order` (pruning re-registers the weight after the bias)."""
    parameters = dict(module._parameters)
    module._parameters.clear()
    module._parameters.update((key, parameters[key]) for key in order)


def prune_unstructured(
    model: nn.Module,
    amount: float,
    scope: Scope = "global",
    *,
    exclude: tuple[str, ...] = (),
    permanent: bool = True,
) -> SparsityReport:
    """Zero the smallest-|w| conv and linear weights until a share `amount` of them is zero; returns the measurement.

    `amount` is the cumulative target, not an increment: weights that are already zero are the smallest
    of all, so they are chosen first and count towards it. Pruning to 0.3 and then to 0.5 therefore leaves
    half of the weights zero, not 1 - 0.7 * 0.5 = 65 %; an amount below the current sparsity changes nothing.
    `scope="global"` ranks all considered weights together (Han et al. 2015; layers end up unevenly sparse),
    `"layer"` zeroes the same share in every layer. The classifier is included, as in the classic recipe;
    `exclude` takes shell-style module-name patterns ('fc', 'layer1.*'), matched against the module and its
    parents. With `permanent=False` torch's masks stay attached (state dict keys `weight_orig`/`weight_mask`)
    so fine-tuning keeps the pruned weights at zero; call `make_permanent` afterwards. With the default, a
    plain model comes back whose zeros the optimizer will move again.
    """
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount is the share of weights to be zero and must be in [0, 1], not {amount}")
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', not {scope!r}")
    make_permanent(model)  # earlier masks are folded in, so their zeros are ranked (first) with the rest
    layers = [module for _, module in _prunable_layers(model, exclude)]
    if not layers:
        raise ValueError(f"no conv or linear weights to prune in {type(model).__name__} (exclude={exclude})")
    orders = {module: [key if key != "weight" else "weight_orig" for key in module._parameters] for module in layers}
    if scope == "global":
        torch_prune.global_unstructured(
            [(module, "weight") for module in layers], pruning_method=torch_prune.L1Unstructured, amount=amount
        )
    else:
        for module in layers:
            torch_prune.l1_unstructured(module, "weight", amount=amount)
    for module, order in orders.items():
        _reorder_parameters(module, order)  # weight_orig where weight was, so the order survives make_permanent
    if permanent:
        make_permanent(model)
    return sparsity(model, exclude=exclude)


def iterative_amounts(final: float, iterations: int) -> list[float]:
    """Cumulative sparsity after each prune -> fine-tune round, each round removing the same share of what is left.

    Round i of n targets 1 - (1 - final) ** (i / n): for final 0.5 in 3 rounds, 20.6 %, 37.0 %, 50 %. Equal
    shares of the survivors keep the damage per round alike, where equal steps (1/6, 1/3, 1/2) would take
    ever larger bites out of an already thinned network. Feed each value to `prune_unstructured` as is.
    """
    if not 0.0 <= final < 1.0:
        raise ValueError(f"final sparsity must be in [0, 1), not {final}")
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, not {iterations}")
    amounts = [1.0 - (1.0 - final) ** (i / iterations) for i in range(1, iterations + 1)]
    amounts[-1] = final  # exact, free of rounding
    return amounts
