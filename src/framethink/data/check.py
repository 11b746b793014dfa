"""`framethink data check`: validate a whole dataset file before any run uses it (SPEC 1).

Every record goes through the loaders' schema and type checks, then each media file must exist and
decode (at least its first frame). Nothing stops at the first fault: the report lists every bad
record with its file, line (or [index]), field and reason.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

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

    @property
    def ok(self) -> bool:
        return not self.errors

    def render(self) -> str:
        """A summary table, then every fault (file:line field reason) when anything is wrong."""
        lines = [f"dataset {self.file}", f"rows {self.good + self.bad}   good {self.good}   bad {self.bad}", ""]
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


def _table(title: str, counts: Counter) -> list[str]:
    width = max([len(title), *(len(key) for key in counts)])
    rows = [f"  {key:<{width}}  {n:>7}" for key, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return [f"  {title:<{width}}  {'records':>7}", *rows, ""]


def check_dataset(path: str | Path, *, root: str | Path | None = None) -> CheckReport:
    """Validate every record of a dataset file (SPEC 1) and decode its media; never stops at a fault.

    Media paths resolve against `root` (default: the file's folder). A media file shared by several
    records is decoded once.
    """
    report = CheckReport(file=Path(path))
    media_faults: dict[tuple[Path, str], str | None] = {}  # (path, kind) -> reason, None when it decodes
    for origin, record, errors in iter_record_results(path, root=root):
        if record is not None:
            report.by_data_type[record.media_kind] += 1
            report.by_problem_type[record.problem_type] += 1
            report.by_source[record.source or "(none)"] += 1
            file, _, where = origin.rpartition(":")
            for media in record.media:
                key = (media, record.media_kind)
                if key not in media_faults:
                    media_faults[key] = _media_fault(media, record.media_kind)
                if media_faults[key] is not None:
                    errors.append(DataError(file, where, record.media_field, f"{media}: {media_faults[key]}"))
        if errors:
            report.bad += 1
            report.errors += errors
        else:
            report.good += 1
    return report


def _media_fault(media: Path, kind: str) -> str | None:
    if not media.is_file():
        return "no such file"
    try:
        verify_media(media, kind)
    except VideoDecodeError as err:
        return err.reason
    return None
