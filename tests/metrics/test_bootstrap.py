"""Bootstrap intervals of OP: coverage of the point estimate, pairing, seeding, errors."""

import numpy as np
import pytest

from moses.metrics.bootstrap import op_interval, paired_difference_interval


def scores(seed: int, sizes=(64, 64, 32), p=0.5) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    return [list(100.0 * (rng.random(n) < p)) for n in sizes]


def op(task_scores) -> float:
    return float(np.mean([np.mean(t) for t in task_scores]))


def test_interval_holds_the_estimate_and_narrows_with_more_examples():
    small, large = scores(0, sizes=(16, 16)), scores(0, sizes=(256, 256))
    low, high = op_interval(small)
    assert low < op(small) < high
    large_low, large_high = op_interval(large)
    assert large_high - large_low < (high - low) / 2  # about 1/sqrt(16) as wide
    continuous = [list(np.random.default_rng(2).random(40) * 100)]
    assert op_interval(continuous, seed=3) == op_interval(continuous, seed=3)
    assert op_interval(continuous, seed=3) != op_interval(continuous, seed=4)


def test_a_constant_task_has_no_spread():
    assert op_interval([[50.0] * 10, [100.0] * 5]) == (75.0, 75.0)


def test_paired_interval_cancels_shared_noise():
    base = scores(1)
    shifted = [[min(100.0, s + 10.0) if i % 2 else s for i, s in enumerate(task)] for task in base]
    assert paired_difference_interval(base, base) == (0.0, 0.0)
    low, high = paired_difference_interval(shifted, base)
    assert 0 < low <= op(shifted) - op(base) <= high
    unpaired = op_interval(shifted)[1] - op_interval(shifted)[0]
    assert high - low < unpaired / 2  # pairing removes the between-example noise


def test_errors():
    with pytest.raises(ValueError, match="same test examples"):
        paired_difference_interval(scores(0, sizes=(8, 8)), scores(0, sizes=(8, 9)))
    with pytest.raises(ValueError, match="at least one"):
        op_interval([[1.0], []])
