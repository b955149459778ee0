"""Bootstrap intervals of OP: coverage of the point estimate, pairing, seeding, errors."""

import numpy as np
import pytest

from moses.metrics.bootstrap import (
    detectable_difference,
    op_interval,
    paired_difference_interval,
    paired_difference_samples,
)


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


def test_detectable_difference_follows_the_paired_spread():
    assert detectable_difference(1.0) == pytest.approx(1.95996 + 0.84162, abs=1e-4)  # z_0.975 + z_0.8
    assert detectable_difference(2.0, power=0.5) == pytest.approx(2 * 1.95996, abs=1e-4)
    base = [[0.0] * n for n in (64, 64, 32)]
    better = [[100.0 if i < 8 else 0.0 for i in range(len(task))] for task in base]
    samples = paired_difference_samples(better, base, resamples=2000, seed=0)
    # 8 of each task's examples gain 100 points: the per-task mean's SE is 100 * sqrt(q(1-q)/n), q = 8/n
    expected = np.sqrt(np.mean([100**2 * (8 / n) * (1 - 8 / n) / n for n in (64, 64, 32)]) / 3)
    assert samples.std() == pytest.approx(expected, rel=0.1)
    base = scores(1)
    assert paired_difference_samples(base, base).std() == 0.0


def test_errors():
    with pytest.raises(ValueError, match="same test examples"):
        paired_difference_interval(scores(0, sizes=(8, 8)), scores(0, sizes=(8, 9)))
    with pytest.raises(ValueError, match="at least one"):
        op_interval([[1.0], []])


def test_seed_t_interval_matches_the_textbook():
    from moses.metrics.bootstrap import seed_t_interval

    low, high = seed_t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t_0.975(2) = 4.303
    assert (low, high) == pytest.approx((2 - 4.303 / 3 ** 0.5, 2 + 4.303 / 3 ** 0.5))
    assert seed_t_interval([1.5, 3.6, 4.0]) == pytest.approx((-0.30, 6.37), abs=0.01)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_t_interval([1.0])


def test_seed_bootstrap_with_identical_seeds_is_the_paired_interval():
    """When every seed scored the same, resampling seeds adds nothing: the two-stage interval is the paired
    bootstrap of one seed; when seeds disagree it widens."""
    from moses.metrics.bootstrap import paired_difference_interval, seeds_and_examples_interval

    rng = np.random.default_rng(0)
    a = [rng.integers(0, 2, 40).astype(float) * 100 for _ in range(3)]
    b = [rng.integers(0, 2, 40).astype(float) * 100 for _ in range(3)]
    same = seeds_and_examples_interval([a, a, a], [b, b, b])
    assert same == pytest.approx(paired_difference_interval(a, b))
    shifted = [[task + shift for task in a] for shift in (-20.0, 0.0, 20.0)]
    wide = seeds_and_examples_interval(shifted, [b, b, b])
    assert wide[1] - wide[0] > same[1] - same[0] + 10
    with pytest.raises(ValueError, match="one reference run per seed"):
        seeds_and_examples_interval([a, a], [b])
