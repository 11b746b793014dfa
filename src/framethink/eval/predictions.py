"""The predictions file of an evaluation run: `predictions.jsonl` (docs/evaluation.md#files).

Line 1 is the run header, `{"header": {model, frames, max_pixels, min_pixels, mode, template, frame_order,
decoding, seed, preset, framethink_version}}`. Every other line is one item holding all that scoring needs, so
a file re-scores offline: `{benchmark, id, task, subtask, duration, problem_type, question, options, answer,
answer_text, all_choices, status, reason, output}`; status is "ok", or "error" for an item that could not be
prepared or generated (its reason says why; it scores 0 under every protocol). Lines are appended as they are
produced; a last line without its newline was cut by a crash and is not a prediction.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from framethink.data.records import Record
from framethink.errors import DataError
from framethink.eval.benchmarks.videomme import DURATIONS

PREDICTIONS_FILE = "predictions.jsonl"
_LINE_KEYS = ("benchmark", "id", "task", "problem_type", "answer", "output")
LINE_STATUSES = ("ok", "error")


@dataclass
class Predictions:
    path: Path
    settings: dict  # the header
    lines: list[dict]  # one per item, in file order
    complete: bool  # False when the file ends in a line cut by a crash

    @property
    def failures(self) -> list[dict]:
        return [line for line in self.lines if line.get("status") == "error"]


def prediction_line(benchmark: str, record: Record, output: str, *, error: str | None = None) -> dict:
    """The line of one item; the task is the record's source (its problem type when it has none). `error` is the
    reason an item could not be prepared or generated."""
    duration = record.extra.get("duration")
    return {"benchmark": benchmark, "id": record.id, "task": record.source or record.problem_type,
            "subtask": record.extra.get("subtask"), "duration": duration if duration in DURATIONS else None,
            "problem_type": record.problem_type, "question": record.question, "options": record.options,
            "answer": record.answer, "answer_text": record.extra.get("answer_text"),
            "all_choices": record.extra.get("all_choices"),
            "status": "ok" if error is None else "error", "reason": error, "output": output}


def header_line(settings: dict) -> str:
    return json.dumps({"header": settings}) + "\n"


def read_predictions(path: str | Path) -> Predictions:
    """Parse a predictions file; a malformed line or a repeated (benchmark, id) raises DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "-", "<file>", "not found: expected a predictions file written by `eval run`")
    text = path.read_text(encoding="utf-8")
    complete_text = text[: text.rfind("\n") + 1]
    rows = []
    for lineno, line in enumerate(complete_text.split("\n")[:-1], 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise DataError(path, str(lineno), "<json>", f"not valid JSON: {err.msg} (column {err.colno})") from None
    if not rows or not isinstance(rows[0], dict) or not isinstance(rows[0].get("header"), dict):
        raise DataError(path, "1", "header", "the first line must be the run header {\"header\": {...}}")
    seen: set[tuple[str, str]] = set()
    for lineno, row in enumerate(rows[1:], 2):
        missing = [k for k in _LINE_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise DataError(path, str(lineno), missing[0], "missing from the prediction line")
        if row.get("status", "ok") not in LINE_STATUSES:
            raise DataError(path, str(lineno), "status", f"expected one of {LINE_STATUSES}, got {row['status']!r}")
        key = (row["benchmark"], row["id"])
        if key in seen:
            raise DataError(path, str(lineno), "id", f"{row['benchmark']}/{row['id']} is predicted twice")
        seen.add(key)
    return Predictions(path=path, settings=rows[0]["header"], lines=rows[1:], complete=complete_text == text)
