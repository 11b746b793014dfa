"""One writer per evaluation output folder (docs/evaluation.md#failures-and-the-lock).

`eval run` holds `OUT/.framethink-eval.lock` while it writes: a JSON note of the process id, the host and the
start time, created atomically (O_EXCL). A second run on the same folder is refused while that process lives;
a lock whose process is gone (a killed run) is taken over, so a crash never blocks the folder for ever.
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from framethink.errors import ConfigError

LOCK_FILE = ".framethink-eval.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(path: Path) -> dict | None:
    """The lock's note, or None when it is unreadable (a writer died between creating and writing it)."""
    try:
        note = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return note if isinstance(note, dict) and isinstance(note.get("pid"), int) else None


def _held_by_live_process(note: dict | None) -> bool:
    if note is None:
        return False
    if note.get("host") != socket.gethostname():  # cannot look at another machine's processes
        return True
    return _alive(note["pid"])


def _younger_than(path: Path, *, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except FileNotFoundError:
        return False


@contextmanager
def output_lock(out: str | Path) -> Iterator[Path]:
    """Hold the folder's lock for the block; ConfigError naming the holder when a live run has it."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    note = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None and _younger_than(path, seconds=10):  # its writer may not have written the note yet
                raise ConfigError(f"{out} is being written by another evaluation (lock {path} just created)") from None
            if _held_by_live_process(holder):
                raise ConfigError(
                    f"{out} is being written by another evaluation (process {holder['pid']} on {holder['host']}, "
                    f"started {holder.get('started')}); wait for it to finish or use another --out. If that run "
                    f"is gone, delete {path}") from None
            path.unlink(missing_ok=True)  # its process is gone: a killed run's lock
            continue
        with os.fdopen(fd, "w") as file:
            json.dump(note, file)
        break
    else:
        raise ConfigError(f"could not take the lock {path}: other runs keep taking it")
    try:
        yield path
    finally:
        if _holder(path) == note:
            path.unlink(missing_ok=True)
