"""Progress for long loops: a tqdm bar on a terminal, a few plain lines with rate and ETA elsewhere."""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm


class Progress:
    """Counts items (images) over a known number of steps and shows images/s and ETA."""

    def __init__(self, total_steps: int, description: str, *, enabled: bool = True, lines: int = 4) -> None:
        self.total, self.description, self.enabled = total_steps, description, enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total_steps, desc=description, unit="step", leave=False, dynamic_ncols=True) if self.interactive else None
        self.start, self.step, self.items = time.perf_counter(), 0, 0
        self.every = max(1, total_steps // lines)

    def update(self, items: int, **postfix: Any) -> None:
        self.step += 1
        self.items += items
        rate = self.items / max(time.perf_counter() - self.start, 1e-9)
        fields = {"img/s": f"{rate:,.0f}", **postfix}
        if self.bar is not None:
            self.bar.set_postfix(fields, refresh=False)
            self.bar.update(1)
        elif self.enabled and (self.step % self.every == 0) and self.step < self.total:
            eta = (self.total - self.step) * (time.perf_counter() - self.start) / self.step
            text = " ".join(f"{k} {v}" for k, v in fields.items())
            print(f"  {self.description} {self.step}/{self.total} {text} eta {eta:.0f}s", file=sys.stderr, flush=True)

    def skip(self, steps: int) -> None:
        """Mark steps done earlier (a resumed epoch) without counting them in the rate."""
        self.step += steps
        if self.bar is not None and steps:
            self.bar.update(steps)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
