"""`framethink data check`: validate a whole dataset file before any run uses it.

Every record goes through the loaders' schema and type checks, then each media file must exist and
decode (at least its first frame). Nothing stops at the first fault: the report lists every bad
record with its file, line (or [index]), field and reason.

At the scale of a 260k-record set the decode check is the slow part: it runs once per distinct media file,
spread over worker processes with a progress bar, and its results are cached (`framethink.data.mediacache`)
so that a re-check decodes only the files whose size or mtime changed. The cache entry is tied to the
acceptance rule itself: any change to this module, to `framethink.data.video` or to PyAV's version makes
every file be checked again. See docs/data.md ("Checking a dataset").
"""
from __future__ import annotations

import hashlib
import inspect
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import av

from framethink.data import video
from framethink.data.mediacache import MediaCache, compute_media
from framethink.data.records import iter_record_results
from framethink.data.video import verify_media
from framethink.errors import DataError, VideoDecodeError


@dataclass
class CheckReport:
    """What `check_dataset` found. `good` + `bad` = rows read (an unparsable line is a bad row);
    the three counters cover every row that parsed into a record."""

    file: Path
    good: int = 0
    bad: int = 0
    by_data_type: Counter = field(default_factory=Counter)
    by_problem_type: Counter = field(default_factory=Counter)
    by_source: Counter = field(default_factory=Counter)
    errors: list[DataError] = field(default_factory=list)
    bad_rows: list[tuple[str, str | None, list[DataError]]] = field(default_factory=list)  # (origin, id, faults)
    media_files: int = 0
    media_cached: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def render(self) -> str:
        """A summary table, then every fault (file:line field reason) when anything is wrong."""
        lines = [f"dataset {self.file}", f"rows {self.good + self.bad}   good {self.good}   bad {self.bad}",
                 f"media files {self.media_files}   checked now {self.media_files - self.media_cached}   "
                 f"unchanged since the last check {self.media_cached}", ""]
        for title, counts in (("data_type", self.by_data_type), ("problem_type", self.by_problem_type),
                              ("data_source", self.by_source)):
            lines += _table(title, counts)
        if self.errors:
            lines.append(f"{len(self.errors)} faults in {self.bad} bad rows:")
            width = max(len(f"{e.file}:{e.where}") for e in self.errors)
            field_width = max(len(e.field) for e in self.errors)
            lines += [f"  {f'{e.file}:{e.where}':<{width}}  {e.field:<{field_width}}  {e.reason}" for e in self.errors]
        else:
            lines.append("ok: every record is valid and every media file decodes")
        return "\n".join(lines)

    def write_jsonl(self, path: str | Path) -> None:
        """Every bad record as one JSON line: {"file", "where", "id", "faults": [{"field", "reason"}]}."""
        with open(path, "w", encoding="utf-8") as out:
            for origin, record_id, faults in self.bad_rows:
                file, _, where = origin.rpartition(":")
                out.write(json.dumps({"file": file, "where": where, "id": record_id,
                                      "faults": [{"field": e.field, "reason": e.reason} for e in faults]}) + "\n")


def _table(title: str, counts: Counter) -> list[str]:
    width = max([len(title), *(len(key) for key in counts)])
    rows = [f"  {key:<{width}}  {n:>7}" for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return [f"  {title:<{width}}  {'records':>7}", *rows, ""]


def check_dataset(
    path: str | Path,
    *,
    root: str | Path | None = None,
    workers: int = 1,
    cache: MediaCache | None = None,
    progress: bool = False,
) -> CheckReport:
    """Validate every record of a dataset file and decode its media; never stops at a fault.

    Media paths resolve against `root` (default: the file's folder). A media file shared by several
    records is decoded once; `workers` processes decode in parallel; `cache` skips unchanged files.
    """
    report = CheckReport(file=Path(path))
    rows = list(iter_record_results(path, root=root))
    media = {(m, r.media_kind): m for _, r, _ in rows if r is not None for m in r.media}
    results = compute_media(_media_fault_of, media, name=f"check:{check_rule_version()}",
                            args={key: key for key in media}, cache=cache, workers=workers,
                            desc="decode check", progress=progress)
    faults = {key: results.values[key] if key in results.values else _media_fault(*key) for key in media}
    report.media_files, report.media_cached = len(media), results.cached
    for origin, record, errors in rows:
        if record is not None:
            report.by_data_type[record.media_kind] += 1
            report.by_problem_type[record.problem_type] += 1
            report.by_source[record.source or "(none)"] += 1
            file, _, where = origin.rpartition(":")
            for item in record.media:
                fault = faults[(item, record.media_kind)]
                if fault is not None:
                    errors.append(DataError(file, where, record.media_field, f"{item}: {fault}"))
        if errors:
            report.bad += 1
            report.errors += errors
            report.bad_rows.append((origin, record.id if record is not None else None, errors))
        else:
            report.good += 1
    return report


def run_check(path: str | Path, *, root: str | Path | None, workers: int, cache: MediaCache,
              report_file: str | Path | None) -> int:
    """`framethink data check`: print the report, write the bad records as JSONL if asked; 0 when all is well."""
    report = check_dataset(path, root=root, workers=workers, cache=cache, progress=True)
    print(report.render())
    if report_file is not None:
        report.write_jsonl(report_file)
        print(f"{len(report.bad_rows)} bad records written to {report_file}")
    return 0 if report.ok else 1


@lru_cache(maxsize=None)
def check_rule_version() -> str:
    """A fingerprint of the acceptance rule: this module's and the decoder module's source, and PyAV's version."""
    text = inspect.getsource(sys.modules[__name__]) + inspect.getsource(video) + av.__version__
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _media_fault_of(key: tuple[Path, str]) -> str | None:
    return _media_fault(*key)


def _media_fault(media: Path, kind: str) -> str | None:
    if not media.exists():  # a video may be a folder of frame images (verify_media checks its first one)
        return "no such file"
    try:
        verify_media(media, kind)
    except VideoDecodeError as err:
        return err.reason
    return None
