"""Continual-learning metrics from the score matrix R: R[i][j] is the score on task j after training task i
(None where task j was not evaluated). Scores are on the 0-100 scale. Every metric needs the diagonal and
the last row; runs that evaluate only the new task after each stage (`eval_rows: diagonal`) have just those,
and the metrics that need more (AAT, FWT) are None for them."""

from __future__ import annotations

from collections.abc import Sequence

Matrix = Sequence[Sequence[float | None]]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _square(R: Matrix) -> int:
    T = len(R)
    if T == 0 or any(len(row) != T for row in R):
        raise ValueError(f"R must be a non-empty T x T matrix, got {len(R)} rows of lengths {[len(r) for r in R]}")
    for i in range(T):
        if R[i][i] is None:
            raise ValueError(f"R[{i}][{i}] is missing: each task is scored right after it is trained")
    if any(score is None for score in R[T - 1]):
        raise ValueError(f"R[{T - 1}] (after the last task) lacks a score: every task is scored at the end")
    return T


def average_performance(R: Matrix) -> float:
    """OP: mean score over all tasks after the last one."""
    T = _square(R)
    return sum(R[T - 1]) / T


def backward_transfer(R: Matrix, clipped: bool = False) -> float | None:
    """BWT = mean_{j<T} (R[T][j] - R[j][j]) (Lopez-Paz & Ranzato 2017); negative means forgetting.
    `clipped` averages min(0, .) instead, counting only losses, as some papers report it. None for T = 1."""
    T = _square(R)
    diffs = [R[T - 1][j] - R[j][j] for j in range(T - 1)]
    return _mean([min(0.0, d) for d in diffs] if clipped else diffs)


def forward_transfer(R: Matrix, zero_shot: Sequence[float]) -> float | None:
    """FWT = mean_{j>0} (R[j-1][j] - b_j), b_j the base model's score: needs evaluation of the next task
    before it is trained. None when those entries are missing."""
    T = _square(R)
    if len(zero_shot) != T:
        raise ValueError(f"zero_shot has {len(zero_shot)} scores for {T} tasks")
    if any(R[j - 1][j] is None for j in range(1, T)):
        return None
    return _mean([R[j - 1][j] - zero_shot[j] for j in range(1, T)])


def forgetting(R: Matrix) -> float | None:
    """Mean over earlier tasks of the best score they ever had minus their final score (Chaudhry et al. 2018)."""
    T = _square(R)
    best = [max(R[i][j] for i in range(j, T - 1) if R[i][j] is not None) for j in range(T - 1)]
    return _mean([best[j] - R[T - 1][j] for j in range(T - 1)])


def average_accuracy_over_time(R: Matrix) -> float | None:
    """Mean over stages i of the mean score on the tasks seen so far (average incremental accuracy); None
    unless every stage scored every task seen so far."""
    T = _square(R)
    if any(R[i][j] is None for i in range(T) for j in range(i + 1)):
        return None
    return sum(sum(R[i][: i + 1]) / (i + 1) for i in range(T)) / T


def summarize(R: Matrix, zero_shot: Sequence[float] | None = None, continual: bool = True
              ) -> dict[str, float | None]:
    """The stream's metrics. `continual=False` (a method that trains on every task at once, at the last stage):
    its earlier rows are the untrained model, so BWT and forgetting would measure training, not forgetting,
    and are None."""
    return {
        "OP": average_performance(R),
        "BWT": backward_transfer(R) if continual else None,
        "BWT_clipped": backward_transfer(R, clipped=True) if continual else None,
        "FWT": forward_transfer(R, zero_shot) if zero_shot is not None else None,
        "forgetting": forgetting(R) if continual else None,
        "AAT": average_accuracy_over_time(R),
    }
