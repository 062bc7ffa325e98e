"""The verdict against a paper's number in one place, so a single run (results.json) and a reproduction over seeds
(reproduction.json) are judged by the same rule, with the same slack at the boundaries and the same words."""

from __future__ import annotations

import math
from typing import Any, Sequence

from reprocls.config import ReferenceConfig
from reprocls.metrics.stats import describe, t_quantile_975

# Float slack for the verdict's comparisons, so a mean exactly at a boundary is not judged by rounding error.
BOUNDARY_EPS = 1e-9
NOISE_RULE = ("within noise: the mean misses reference - tolerance, but reference - mean <= t(0.975, n-1) x std x "
              "sqrt(1 + 1/n), the upper end of the 95 % prediction interval for one new training run from n seeds "
              "(std: sample std over seeds, ddof=1). A reported number is usually one training run, so it is judged "
              "like one more seed; the bound is wide with few seeds (15.6 x std for 2 seeds, 4.97 x std for 3) because "
              "so few seeds cannot rule out noise. The 95 % confidence interval of the mean is not used: it narrows with "
              "more seeds and would call a paper's lucky single run 'short'.")


def noise_bound(n: int, std: float) -> float:
    """t(0.975, n-1) x std x sqrt(1 + 1/n): how far below the mean of n seeds one new run still falls 95 % of the time."""
    return t_quantile_975(n - 1) * std * math.sqrt(1 + 1 / n)


def points(fraction: float) -> str:
    """A fraction as percentage points with two decimals, the unit every verdict is written in."""
    return f"{100 * fraction:.2f}"


def judge(values: Sequence[float], reference: ReferenceConfig | None) -> dict[str, Any]:
    """Verdict on test top-1 fractions (one per seed; one value for a single run) against the paper's number:
    'reproduced' when the mean reaches reference.top1 - reference.tolerance; 'within noise' when it does not, but the
    gap is inside the 95 % prediction bound for one run (see NOISE_RULE); 'short' otherwise (always with one value);
    'no reference' without a reference block. `label` is the short form results.json keeps; `text` spells out every
    number the verdict was decided on."""
    stats = describe(values)
    n, mean, std = stats["n"], stats["mean"], stats["std"]
    spread = (f"mean {points(mean)} ± {points(std)} % over {n} seeds" if std is not None
              else f"{points(mean)} % from 1 seed, std undefined")
    verdict: dict[str, Any] = {"n": n, "mean": mean, "std": std, "ci95": stats["ci95"], "rule": NOISE_RULE,
                               "reference": None, "gap": None, "short_by": None, "noise": None}
    if reference is None:
        return {**verdict, "status": "no reference", "tone": "warn", "label": "no reference",
                "text": f"no reference: {spread}; add a reference: block (source, top1, tolerance) to the recipe to judge it"}
    gap = mean - reference.top1
    noise = noise_bound(n, std) if std is not None else None
    source = reference.source or "(no source given)"
    versus = f"{spread} vs {points(reference.top1)} % reported by {source}"
    verdict.update(reference={"source": reference.source, "top1": reference.top1, "tolerance": reference.tolerance},
                   gap=gap, short_by=max(0.0, -gap), noise=noise)
    short = f"short by {points(-gap)} points"
    if mean >= reference.top1 - reference.tolerance - BOUNDARY_EPS:
        where = ("above the reported number" if gap > BOUNDARY_EPS else
                 f"within the {points(reference.tolerance)}-point tolerance")
        return {**verdict, "status": "reproduced", "tone": "good", "label": "reproduced",
                "text": f"reproduced: {versus}; gap {100 * gap:+.2f} points, {where}"}
    if noise is not None and -gap <= noise + BOUNDARY_EPS:
        return {**verdict, "status": "within noise", "tone": "warn", "label": f"within noise: {short}",
                "text": f"within noise: {short} ({versus}); more than the {points(reference.tolerance)}-point "
                        f"tolerance, but within the 95 % prediction bound for one run, {noise_formula(n, std)}"}
    why = (f"the gap exceeds both the {points(reference.tolerance)}-point tolerance and the 95 % prediction bound for "
           f"one run, {noise_formula(n, std)}" if noise is not None
           else "one seed gives no noise estimate; run more seeds to tell noise from a real gap")
    return {**verdict, "status": "short", "tone": "bad", "label": short, "text": f"{short} ({versus}); {why}"}


def noise_formula(n: int, std: float) -> str:
    """The prediction bound with its factors written out, so a reader can check the arithmetic."""
    return (f"t(0.975, {n - 1}) x std x sqrt(1 + 1/{n}) = {t_quantile_975(n - 1):.3f} x {points(std)} x "
            f"{math.sqrt(1 + 1 / n):.3f} = {points(noise_bound(n, std))} points")
