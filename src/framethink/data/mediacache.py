"""Per-file facts about media (decode check, content hash, probe), computed in parallel and cached on disk.

A dataset of 260k records points at ~260k media files; checking, hashing or probing them is the slow part of
every data tool. `MediaCache` keeps each computed value in a SQLite file, keyed by the file's absolute path and
the name of the value, and valid only while the file's size and modification time are those it was computed
for: a re-run skips every unchanged file and recomputes the changed ones. `compute_media` runs a function over
the files the cache cannot answer, spread over worker processes, with a progress bar and ETA (tqdm).

A frame folder (a video stored as images) is signed by its image count, total size and newest mtime.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sqlite3
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

_SCHEMA = """CREATE TABLE IF NOT EXISTS media (
    path TEXT NOT NULL, name TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, value TEXT NOT NULL,
    PRIMARY KEY (path, name))"""
_HASH_BLOCK = 1 << 20
MIN_FILES_PER_WORKER = 16


def default_cache_path() -> Path:
    """`$XDG_CACHE_HOME/framethink/media.sqlite` (`~/.cache/...` when the variable is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "framethink" / "media.sqlite"


def file_signature(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, or of a frame folder (image count and total size folded into the size, newest
    mtime); None when the path does not exist."""
    try:
        if path.is_dir():
            stats = [entry.stat() for entry in os.scandir(path) if entry.is_file()]
            size = sum(s.st_size for s in stats) * 1_000_003 + len(stats)
            return size, max((s.st_mtime_ns for s in stats), default=path.stat().st_mtime_ns)
        stat = path.stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


class MediaCache:
    """Named values per media file, valid while the file's (size, mtime) is unchanged. `path` None: no file."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = None if path is None else Path(path)
        self._db: sqlite3.Connection | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path)
            self._db.execute(_SCHEMA)
            self._db.commit()

    def get(self, path: Path, name: str, signature: tuple[int, int]) -> Any:
        """The cached value (a KeyError when there is none for this signature)."""
        if self._db is None:
            raise KeyError(name)
        row = self._db.execute("SELECT size, mtime_ns, value FROM media WHERE path = ? AND name = ?",
                               (str(path), name)).fetchone()
        if row is None or (row[0], row[1]) != signature:
            raise KeyError(name)
        return json.loads(row[2])

    def put_many(self, rows: Iterable[tuple[Path, str, tuple[int, int], Any]]) -> None:
        """Store (path, name, signature, value) rows in one transaction."""
        if self._db is None:
            return
        self._db.executemany(
            "INSERT OR REPLACE INTO media (path, name, size, mtime_ns, value) VALUES (?, ?, ?, ?, ?)",
            [(str(path), name, sig[0], sig[1], json.dumps(value)) for path, name, sig, value in rows])
        self._db.commit()

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


@dataclass
class MediaResults:
    """What `compute_media` returns: a value per key, and how many came from the cache."""

    values: dict[Hashable, Any]
    cached: int
    computed: int


def compute_media(
    func: Callable[[Any], Any],
    items: dict[Hashable, Path],
    *,
    name: str,
    args: dict[Hashable, Any] | None = None,
    cache: MediaCache | None = None,
    workers: int = 1,
    desc: str = "media",
    progress: bool = False,
) -> MediaResults:
    """`func(args[key])` (default: `func(path)`) for every key of `items` (key -> media path), reusing cached
    values of the same `name` for unchanged files. The value must be JSON-serialisable.

    Missing paths are never passed to `func` and are left out of the values. With
    `workers` > 1 the calls run in that many spawned processes (`func` must be a module-level function); the
    cache is written by this process only, every few hundred results, so an interrupted run keeps what it did.
    """
    cache = cache or MediaCache(None)
    args = args or {}
    values: dict[Hashable, Any] = {}
    todo: list[tuple[Hashable, tuple[int, int]]] = []
    cached = 0
    for key, path in items.items():
        signature = file_signature(path)
        if signature is None:
            continue
        try:
            values[key] = cache.get(path.absolute(), name, signature)
            cached += 1
        except KeyError:
            todo.append((key, signature))
    pending: list[tuple[Path, str, tuple[int, int], Any]] = []
    calls = [args.get(key, items[key]) for key, _ in todo]
    with tqdm(total=len(todo), desc=desc, unit="file", disable=not progress, dynamic_ncols=True) as bar:
        for index, value in _run(func, calls, workers):
            key, signature = todo[index]
            values[key] = value
            pending.append((items[key].absolute(), name, signature, value))
            if len(pending) >= 256:
                cache.put_many(pending)
                pending = []
            bar.update()
    cache.put_many(pending)
    return MediaResults(values=values, cached=cached, computed=len(todo))


def _call(job: tuple[Callable[[Any], Any], int, Any]) -> tuple[int, Any]:
    func, index, arg = job
    return index, func(arg)


def _run(func: Callable[[Any], Any], calls: list[Any], workers: int) -> Iterable[tuple[int, Any]]:
    """(index, func(calls[index])) in completion order; in this process when one worker is enough.

    A worker is started only for every MIN_FILES_PER_WORKER files: starting one (a fresh interpreter importing the
    decoders) costs more than checking a few small files."""
    workers = min(workers, len(calls) // MIN_FILES_PER_WORKER)
    if workers <= 1:
        for index, arg in enumerate(calls):
            yield index, func(arg)
        return
    chunk = max(1, min(64, len(calls) // (workers * 8)))
    # spawned, not forked: a fork of a process holding threads (tqdm's monitor, torch) may deadlock
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield from pool.imap_unordered(_call, [(func, i, arg) for i, arg in enumerate(calls)], chunksize=chunk)


def content_hash(path: Path) -> str:
    """SHA-256 of a file's bytes; of a frame folder, of its image names and their hashes in name order."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.iterdir() if p.is_file()):
            digest.update(child.name.encode() + b"\0" + content_hash(child).encode() + b"\n")
        return digest.hexdigest()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def default_workers() -> int:
    """The CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def open_cache(path: str | Path | None, *, enabled: bool = True) -> MediaCache:
    """The cache at `path` (default: `default_cache_path()`), or one that keeps nothing when not `enabled`."""
    if not enabled:
        return MediaCache(None)
    return MediaCache(path if path is not None else default_cache_path())
