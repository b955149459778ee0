import pytest

from moses.metrics import (
    average_accuracy_over_time,
    average_performance,
    backward_transfer,
    forgetting,
    forward_transfer,
    summarize,
)

# after task 0: 80 on task 0 (task 1 evaluated early: 30, task 2: 20)
R = [[80.0, 30.0, 20.0],
     [60.0, 90.0, 25.0],
     [70.0, 50.0, 40.0]]
ZERO_SHOT = [10.0, 20.0, 30.0]


def test_op_bwt_fwt_forgetting_on_a_hand_made_matrix():
    assert average_performance(R) == pytest.approx((70 + 50 + 40) / 3)
    assert backward_transfer(R) == pytest.approx(((70 - 80) + (50 - 90)) / 2)
    assert backward_transfer(R, clipped=True) == pytest.approx(-25.0)
    assert forward_transfer(R, ZERO_SHOT) == pytest.approx(((30 - 20) + (25 - 30)) / 2)
    assert forgetting(R) == pytest.approx(((80 - 70) + (90 - 50)) / 2)
    assert average_accuracy_over_time(R) == pytest.approx((80 + (60 + 90) / 2 + (70 + 50 + 40) / 3) / 3)


def test_clipped_bwt_ignores_gains():
    gain = [[50.0, None], [60.0, 70.0]]
    assert backward_transfer(gain) == 10.0 and backward_transfer(gain, clipped=True) == 0.0


def test_seen_only_matrix_has_no_fwt():
    seen_only = [[80.0, None], [70.0, 90.0]]
    assert forward_transfer(seen_only, [0.0, 0.0]) is None
    summary = summarize(seen_only, [0.0, 0.0])
    assert summary["OP"] == 80.0 and summary["BWT"] == -10.0 and summary["FWT"] is None


def test_single_task():
    assert backward_transfer([[50.0]]) is None and forgetting([[50.0]]) is None


def test_diagonal_and_last_row_are_enough_for_op_bwt_forgetting():
    diagonal = [[80.0, None, None],
                [None, 90.0, None],
                [70.0, 50.0, 40.0]]
    summary = summarize(diagonal, ZERO_SHOT)
    assert summary["OP"] == average_performance(R) and summary["BWT"] == backward_transfer(R)
    assert summary["forgetting"] == pytest.approx(((80 - 70) + (90 - 50)) / 2)
    assert summary["AAT"] is None and summary["FWT"] is None
    # a middle row with some earlier tasks: forgetting takes the best score that was measured
    partial = [[80.0, None, None], [85.0, 90.0, None], [70.0, 50.0, 40.0]]
    assert forgetting(partial) == pytest.approx(((85 - 70) + (90 - 50)) / 2)


def test_malformed_matrices_are_errors():
    with pytest.raises(ValueError, match="T x T"):
        average_performance([[1.0, 2.0]])
    with pytest.raises(ValueError, match="lacks a score"):
        average_performance([[1.0, None], [None, 2.0]])
    with pytest.raises(ValueError, match=r"R\[1\]\[1\] is missing"):
        average_performance([[1.0, None], [3.0, None]])


def test_a_method_that_is_not_continual_has_no_backward_metrics():
    """Multitask's earlier rows are the untrained model: R[T][i] - R[i][i] would measure training."""
    joint = summarize(R, ZERO_SHOT, continual=False)
    assert joint["BWT"] is None and joint["BWT_clipped"] is None and joint["forgetting"] is None
    assert joint["OP"] == summarize(R, ZERO_SHOT)["OP"] and joint["FWT"] == summarize(R, ZERO_SHOT)["FWT"]
