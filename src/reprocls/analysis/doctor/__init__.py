"""The reproduction doctor: a recipe checked against the classic reasons a reproduction falls short, before training.

Each check is one function in `checks.py`, registered in CHECKS, that looks at a `Context` and returns findings;
every finding names the recipe key to change and how.
"""

from reprocls.analysis.doctor import checks  # noqa: F401  (registers the checks)
from reprocls.analysis.doctor.context import CHECKS, Context, Finding, diagnose, format_findings

__all__ = ["CHECKS", "Context", "Finding", "diagnose", "format_findings"]
