"""Text metrics (scores 0-100)."""

from moses.metrics.text import exact_match

__all__ = ["exact_match"]
