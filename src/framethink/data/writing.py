"""Writing record files: the Video-R1 record of a parsed `Record`, and files that are complete or absent.

Every output of the data tools goes through `atomic_write`: the bytes go to a temporary file in the same
folder, are flushed to disk, and replace the target in one rename, so a run killed at any moment leaves either
the previous file (or none) or the complete new one, never a half-written file.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from framethink.data.records import Record


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` through a temporary file and one rename (see the module docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power cut
    finally:
        os.close(dir_fd)
    return path


def records_text(objects: list[dict], path: str | Path) -> str:
    """A record file's text: one object per line for `.jsonl`, else one JSON list (as `load_records` reads)."""
    if Path(path).suffix == ".jsonl":
        return "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in objects)
    return json.dumps(objects, ensure_ascii=False, indent=1) + "\n"


def media_path(media: Path, media_root: Path) -> str:
    """`./relative/path` against `media_root` (the Video-R1 convention), or `../path` outside it."""
    relative = Path(os.path.relpath(Path(media).absolute(), Path(media_root).absolute())).as_posix()
    return relative if relative.startswith("../") else "./" + relative


def record_object(record: Record, media_root: str | Path) -> dict:
    """The Video-R1 record (`problem_id`, `problem`, `data_type`, `problem_type`, `options`, `solution`, `path`,
    `data_source`, `process`) of a parsed record of any supported format, with its extra fields kept.

    `path` is written relative to `media_root`. An id written as a canonical integer ("12") becomes the int 12,
    as Video-R1 files store it; other ids stay strings.
    """
    problem_id: int | str = int(record.id) if record.id.lstrip("-").isdigit() and str(int(record.id)) == record.id \
        else record.id
    obj: dict = {"problem_id": problem_id, "problem": record.question, "data_type": record.media_kind,
                 "problem_type": record.problem_type, "options": list(record.options), "solution": record.solution}
    if record.media:
        obj["path"] = media_path(record.media[0], Path(media_root))
    if record.source:
        obj["data_source"] = record.source
    if record.cot is not None:
        obj["process"] = record.cot
    for key, value in record.extra.items():
        obj.setdefault(key, value)
    return obj
