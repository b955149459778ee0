"""One process per run directory. `moses run` and `moses compare` hold `<dir>/moses.lock` (the holder's pid,
host and command) while they work; a second one is refused with one line naming the holder, and a lock left
by a process that no longer runs (kill -9, a crash) is taken over with a warning."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from moses.errors import LockError

LOCK_FILE = "moses.lock"
FRESH_SECONDS = 10.0  # an unreadable lock younger than this is one being written, not a stale one


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return FRESH_SECONDS


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _holder(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # unreadable or half-written: treated as stale
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def _describe(holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return f"process {holder['pid']} on {holder.get('host', '?')} ({holder.get('command', '?')}, since {since})"


@contextmanager
def directory_lock(directory: str | Path) -> Iterator[None]:
    """Hold the lock of `directory` (created if missing) for the block."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(["moses", *sys.argv[1:]])[:200],
          "since": time.time()}
    for _ in range(3):  # a lost race against another process taking over a stale lock: look again
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None and _age(path) < FRESH_SECONDS:  # being written by a process taking it right now
                raise LockError(f"{directory} is being locked by another process; try again") from None
            same_host = holder is not None and holder.get("host") == me["host"]
            if holder is not None and (not same_host or _alive(holder["pid"])) and holder["pid"] != me["pid"]:
                raise LockError(f"{directory} is in use by {_describe(holder)}; wait for it to finish or stop "
                                f"it (remove {path} only if that process is gone)") from None
            what = _describe(holder) if holder else "an unreadable lock"
            warnings.warn(f"{directory}: taking over the lock of {what}, which is no longer running",
                          stacklevel=3)
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(me) + "\n")
        break
    else:
        raise LockError(f"{directory}: could not take {path} (another process keeps taking it)")
    try:
        yield
    finally:
        if (_holder(path) or {}).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
