"""Bootstrap intervals of OP (mean over tasks of each task's mean per-example score).

Every task metric here is the mean of a per-example score, so OP on a resample is the mean over tasks of
the mean over that task's resampled examples. Test examples are resampled within each task; a paired
difference uses the same resampled indices for both methods (they were scored on the same test examples),
so the noise of which examples were drawn cancels.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

TaskScores = Sequence[Sequence[float]]  # [task][example] scores (0-100) of one method after the last task


def _resampled_indices(sizes: list[int], resamples: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=(resamples, n)) for n in sizes]


def _op_samples(scores: TaskScores, indices: list[np.ndarray]) -> np.ndarray:
    per_task = [np.asarray(task, dtype=float)[idx].mean(axis=1) for task, idx in zip(scores, indices, strict=True)]
    return np.mean(per_task, axis=0)


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The central `level` share of bootstrap samples."""
    low, high = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def _sizes(scores: TaskScores) -> list[int]:
    sizes = [len(task) for task in scores]
    if not sizes or min(sizes) == 0:
        raise ValueError(f"every task needs at least one scored example, got sizes {sizes}")
    return sizes


def op_interval(scores: TaskScores, resamples: int = 1000, seed: int = 0,
                level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of OP."""
    sizes = _sizes(scores)
    return percentile_interval(_op_samples(scores, _resampled_indices(sizes, resamples, seed)), level)


def paired_difference_samples(scores: TaskScores, reference: TaskScores, resamples: int = 1000,
                              seed: int = 0) -> np.ndarray:
    """OP(scores) - OP(reference) on each of `resamples` resamples of the same test examples."""
    sizes = _sizes(scores)
    if _sizes(reference) != sizes:
        raise ValueError(f"paired scores need the same test examples: {sizes} vs {_sizes(reference)}")
    indices = _resampled_indices(sizes, resamples, seed)
    return _op_samples(scores, indices) - _op_samples(reference, indices)


def paired_difference_interval(scores: TaskScores, reference: TaskScores, resamples: int = 1000, seed: int = 0,
                               level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of OP(scores) - OP(reference) on the same resampled examples."""
    return percentile_interval(paired_difference_samples(scores, reference, resamples, seed), level)


def detectable_difference(standard_error: float, level: float = 0.95, power: float = 0.8) -> float:
    """The smallest true difference whose interval at `level` excludes 0 with probability `power`, for an
    estimate with this standard error (normal approximation: (z_(1+level)/2 + z_power) x SE, 2.80 x SE at
    95% and 80%): what a test set of this size can tell apart at all."""
    normal = NormalDist()
    return (normal.inv_cdf((1 + level) / 2) + normal.inv_cdf(power)) * standard_error


def paired_difference_summary(scores: TaskScores, reference: TaskScores, resamples: int = 1000, seed: int = 0,
                              level: float = 0.95) -> dict[str, float | list[float]]:
    """OP(scores) - OP(reference) as `moses compare` reports it, from one set of paired resamples: its
    percentile interval ("ci"), standard error ("se"), the smallest difference those test sets detect
    ("detectable", 80% power) and the share of resamples above 0 ("share_above")."""
    samples = paired_difference_samples(scores, reference, resamples, seed)
    se = float(samples.std())
    return {"ci": list(percentile_interval(samples, level)), "se": se,
            "detectable": detectable_difference(se, level), "share_above": float((samples > 0).mean())}


# two-sided 95% quantiles of Student's t, t_0.975(df), df = 1..30 (any statistics table)
_T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
          2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
          2.045, 2.042)


def seed_t_interval(differences: Sequence[float]) -> tuple[float, float]:
    """95% t-interval of the mean of per-seed OP differences (one per training seed): it holds the spread
    between training seeds, which a bootstrap over one set of test examples does not."""
    values = np.asarray(differences, dtype=float)
    if len(values) < 2:
        raise ValueError(f"a t-interval over seeds needs at least 2 seeds, got {len(values)}")
    t = _T_975[len(values) - 2] if len(values) <= len(_T_975) + 1 else NormalDist().inv_cdf(0.975)
    half = t * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def seeds_and_examples_interval(scores: Sequence[TaskScores], reference: Sequence[TaskScores],
                                resamples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the mean over seeds of OP(scores) - OP(reference), from a two-stage bootstrap:
    the seeds (pairs of runs) are resampled with replacement, then the test examples within each task, the
    same for every seed and both sides (they share the test examples). With few seeds it is too narrow;
    `seed_t_interval` is the conservative one."""
    if len(scores) != len(reference) or not scores:
        raise ValueError(f"one reference run per seed: {len(scores)} against {len(reference)}")
    sizes = _sizes(scores[0])
    for run in (*scores, *reference):
        if _sizes(run) != sizes:
            raise ValueError(f"every run needs the same test examples: {sizes} vs {_sizes(run)}")
    indices = _resampled_indices(sizes, resamples, seed)
    per_seed = np.stack([_op_samples(a, indices) - _op_samples(b, indices)
                         for a, b in zip(scores, reference, strict=True)])  # [seeds, resamples]
    picked = np.random.default_rng(seed).integers(0, len(scores), size=(resamples, len(scores)))
    samples = per_seed[picked, np.arange(resamples)[:, None]].mean(axis=1)
    return percentile_interval(samples, level)
