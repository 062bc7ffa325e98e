"""Analysis tools: model complexity (params, MACs, latency, memory) and reproduction checks."""

from reprocls.analysis.complexity import (
    build_for_counting,
    count_flops,
    count_params,
    family_representatives,
    input_kwargs,
    measure_complexity,
    model_table,
)
from reprocls.analysis.profile import ProfileReport, profile_model

__all__ = [
    "ProfileReport",
    "build_for_counting",
    "count_flops",
    "count_params",
    "family_representatives",
    "input_kwargs",
    "measure_complexity",
    "model_table",
    "profile_model",
]
