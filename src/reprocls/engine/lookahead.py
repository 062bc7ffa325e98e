"""Lookahead (Zhang et al. 2019) around any torch optimizer: every k steps the slow weights move a fraction alpha
towards the fast ones and the fast ones restart from there, which damps the noise of a large learning rate."""

from __future__ import annotations

from typing import Any, Callable

import torch


class Lookahead(torch.optim.Optimizer):
    """Wraps `base`, sharing its parameter groups, so lr schedulers, GradScaler and zero_grad work unchanged; the slow
    weights and the step count travel in state_dict(), so a resumed run continues exactly."""

    def __init__(self, base: torch.optim.Optimizer, k: int, alpha: float) -> None:
        if k < 1 or not 0 < alpha <= 1:
            raise ValueError(f"lookahead needs k >= 1 and alpha in (0, 1], got k={k}, alpha={alpha}")
        self.base, self.k, self.alpha = base, k, alpha
        super().__init__(base.param_groups, base.defaults)  # the same group dicts: an lr change reaches both
        self.state = base.state
        self.fast_steps = 0
        self.slow = [p.detach().clone() for p in self._params()]

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:
        """One step of the base optimizer; on every k-th, slow += alpha (fast - slow) and fast = slow."""
        loss = self.base.step(closure)
        self.fast_steps += 1
        if self.fast_steps % self.k == 0:
            fast = self._params()
            torch._foreach_lerp_(self.slow, fast, self.alpha)
            torch._foreach_copy_(fast, self.slow)
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base.state_dict(), "slow": [t.clone() for t in self.slow], "fast_steps": self.fast_steps,
                "k": self.k, "alpha": self.alpha}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if (state_dict.get("k"), state_dict.get("alpha")) != (self.k, self.alpha):
            raise ValueError(f"lookahead state of k={state_dict.get('k')}, alpha={state_dict.get('alpha')} cannot "
                             f"continue a run with k={self.k}, alpha={self.alpha}")
        self.base.load_state_dict(state_dict["base"])
        # torch rebuilds the base's group dicts on load: share them again, or lr schedules stop reaching the base
        self.param_groups, self.state = self.base.param_groups, self.base.state
        slow = state_dict["slow"]
        if len(slow) != len(self.slow) or any(a.shape != b.shape for a, b in zip(slow, self.slow)):
            raise ValueError("lookahead state does not match the model's parameters")
        for mine, saved in zip(self.slow, slow):
            mine.copy_(saved)
        self.fast_steps = int(state_dict["fast_steps"])
