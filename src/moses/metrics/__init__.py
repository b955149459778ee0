"""Text metrics and continual-learning metrics (scores 0-100)."""

from moses.metrics.continual import (
    average_accuracy_over_time,
    average_performance,
    backward_transfer,
    forgetting,
    forward_transfer,
    summarize,
)
from moses.metrics.text import edit_similarity, exact_match, first_char_accuracy, rouge_l, sari

# TRACE task -> metric name (MOSES_SPEC, "TRACE scoring").
TRACE_METRICS = {
    "C-STANCE": "exact_match",
    "FOMC": "exact_match",
    "MeetingBank": "rouge_l",
    "Py150": "edit_similarity",
    "ScienceQA": "first_char_accuracy",
    "NumGLUE-cm": "exact_match",
    "NumGLUE-ds": "exact_match",
    "20Minuten": "sari",
}

__all__ = [
    "TRACE_METRICS",
    "average_accuracy_over_time",
    "average_performance",
    "backward_transfer",
    "edit_similarity",
    "exact_match",
    "first_char_accuracy",
    "forgetting",
    "forward_transfer",
    "rouge_l",
    "sari",
    "summarize",
]
