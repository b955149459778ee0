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

__all__ = [
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
