"""File helpers used everywhere: atomic writes (a crash never leaves a half-written file) and reading
YAML / JSON settings files with errors that name the file and the place."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moses import faults
from moses.errors import DataError, StorageError


def fsync_directory(directory: str | Path) -> None:
    """Make a rename inside `directory` durable (POSIX: the entry lives in the directory, not the file)."""
    if os.name != "posix":  # pragma: no cover - Windows has no directory handles to sync
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` on a temporary file beside `path`, fsync it, rename it over `path`, then fsync
    the directory. A failed write (disk full, no permission) raises StorageError and leaves `path` as it was."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        faults.reached(f"write:{path.name}")
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except OSError as err:
        raise StorageError(f"{path}: cannot write ({err.strerror or err}); the previous version is kept") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_text(path: str | Path, error: type[Exception] = DataError) -> str:
    """The file's text (UTF-8; a leading byte-order mark is dropped, as editors on Windows write one); a
    missing or unreadable file raises `error` naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise error(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{path}: cannot read ({err})") from None


def read_json(path: str | Path, error: type[Exception] = DataError) -> Any:
    """Parsed JSON; a malformed file raises `error` naming the file, line and column."""
    try:
        return json.loads(read_text(path, error))
    except json.JSONDecodeError as err:
        raise error(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None


def read_mapping(path: str | Path) -> Any:
    """Parse a .yaml / .yml file with PyYAML, anything else as JSON."""
    path = Path(path)
    if path.suffix not in (".yaml", ".yml"):
        return read_json(path)
    import yaml

    try:
        return yaml.safe_load(read_text(path))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise DataError(f"{path}: malformed YAML{where}") from None
