"""Evaluations: LWM's needle in a haystack, RULER's NIAH family, LongVA's visual needle
(`lwm_core.evals.visual`), and their heatmap.

    from lwm_core.evals import NeedleSettings, load_haystack, plan_needle, run_needle
"""

from lwm_core.evals.heatmap import heatmap_png
from lwm_core.evals.needle import CITIES, Haystack, Trial, insertion_point, load_haystack, lwm_trial, score
from lwm_core.evals.ruler import TASKS, ruler_trial, string_match_all
from lwm_core.evals.runner import (
    TIMING_FIELDS, NeedleSettings, context_lengths, depth_percents, parse_length, plan_needle, read_results,
    run_needle, summary,
)

__all__ = [
    "CITIES", "TASKS", "TIMING_FIELDS", "Haystack", "NeedleSettings", "Trial", "context_lengths", "depth_percents",
    "heatmap_png", "insertion_point", "load_haystack", "lwm_trial", "parse_length", "plan_needle", "read_results",
    "ruler_trial", "run_needle", "score", "string_match_all", "summary",
]
