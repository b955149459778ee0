"""File helpers used everywhere: atomic writes (a crash never leaves a half-written file) and reading
YAML / JSON settings files with errors that name the file and the place."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from moses.errors import DataError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_path)` on a temporary file beside `path`, fsync it, then rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def read_text(path: str | Path, error: type[Exception] = DataError) -> str:
    """The file's text; a missing or unreadable file raises `error` naming it."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
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
