"""Analysis tools: model complexity (params, MACs, latency, memory) and reproduction checks."""

from reprocls.analysis.profile import (
    ProfileReport,
    build_for_counting,
    count_flops,
    count_params,
    family_representatives,
    input_kwargs,
    measure_complexity,
    model_table,
    profile_model,
)

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
