"""Fault injection for the crash tests: `MOSES_KILL_AT=<point>[:<n>]` in the environment makes the process
SIGKILL itself the n-th time (default 1st) it reaches `point`, which is how tests prove that a kill -9 at
that moment loses nothing. Without the variable `reached` is one dictionary lookup.

Points: `train-step` (after a step's backward, before the optimizer step), `eval-batch` (between generation
batches), `checkpoint` (a checkpoint's files written, not yet renamed into place), `write:<file name>` (a
file's temporary copy written and synced, not yet renamed over it, e.g. `write:results.json`) and
`between-tasks` (a task's results written, the next task not started)."""

from __future__ import annotations

import os
import signal

ENV = "MOSES_KILL_AT"
_passed: dict[str, int] = {}


def reached(point: str) -> None:
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    name, _, count = wanted.rpartition(":")
    if not count.isdigit():  # no count given: the point's name may hold colons itself (write:<file>)
        name, count = wanted, "1"
    if name != point:
        return
    _passed[point] = _passed.get(point, 0) + 1
    if _passed[point] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
