"""Corpus-level text metrics; each takes lists and returns a float from 0 to 100."""

from __future__ import annotations


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after stripping white space."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        return 0.0
    return 100.0 * sum(p.strip() == r.strip() for p, r in zip(predictions, references, strict=True)) / len(references)
