"""Reading inputs with clear errors, and writing outputs atomically."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterable, Iterator

from editable_lm.errors import EditLMError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; move it into place only if the block succeeds.

    Works for files and directories, so a killed stage never leaves a half-written output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        with _interrupts_held():  # Ctrl-C between the two steps would leave neither version
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Delay SIGINT and SIGTERM until the block is done (main thread only; signals are per process)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write one JSON object per line, atomically; return the number of rows."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file written by `write_jsonl`; a missing or empty file is an error."""
    path = Path(path)
    if not path.is_file():
        raise EditLMError(f"{path}: file not found (run the stage that writes it: dvc repro)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise EditLMError(f"{path}: file is empty")
    return rows


def write_json(path: str | Path, obj) -> None:
    """Write pretty JSON atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Write rows as CSV, atomically: the columns are every key in order of first appearance, a row's missing
    keys left empty (read back as None)."""
    import csv

    if not rows:
        raise EditLMError(f"{path}: no rows to write")
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
        writer.writeheader()
        writer.writerows(rows)


def read_json(path: str | Path):
    """Read a JSON file; a missing file is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise EditLMError(f"{path}: file not found (run the stage that writes it: dvc repro)")
    return json.loads(path.read_text())


def read_csv(path: str | Path) -> list[dict]:
    """Read CSV rows, numbers as floats, empty fields as None; a missing or empty file is an error naming it."""
    import csv

    path = Path(path)
    if not path.is_file():
        raise EditLMError(f"{path}: file not found (run the stage that writes it: dvc repro)")
    with open(path, newline="") as f:
        rows = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    if not rows:
        raise EditLMError(f"{path}: file is empty")
    return rows


def _number(text: str):
    if text == "":  # what `write_csv` writes for None
        return None
    try:
        return float(text)
    except ValueError:
        return text
