"""The predictions file of an evaluation run (SPEC 7): `predictions.jsonl`.

Line 1 is the run header, `{"header": {model, frames, max_pixels, mode, template, frame_order,
decoding, seed, framethink_version}}`. Every other line is one prediction holding all that scoring
needs, so a file re-scores offline: `{benchmark, id, task, subtask, duration, problem_type, question,
options, answer, output}`. Lines are appended as they are produced; a last line without its newline
was cut by a crash and is not a prediction.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from framethink.data.records import Record
from framethink.errors import DataError
from framethink.eval.scoring import DURATIONS

PREDICTIONS_FILE = "predictions.jsonl"
_LINE_KEYS = ("benchmark", "id", "task", "problem_type", "answer", "output")


@dataclass
class Predictions:
    path: Path
    settings: dict  # the header
    lines: list[dict]  # one per prediction, in file order
    complete: bool  # False when the file ends in a line cut by a crash


def prediction_line(benchmark: str, record: Record, output: str) -> dict:
    """The line of one prediction; the task is the record's source (its problem type when it has none)."""
    duration = record.extra.get("duration")
    return {"benchmark": benchmark, "id": record.id, "task": record.source or record.problem_type,
            "subtask": record.extra.get("subtask"), "duration": duration if duration in DURATIONS else None,
            "problem_type": record.problem_type, "question": record.question, "options": record.options,
            "answer": record.answer, "output": output}


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
        key = (row["benchmark"], row["id"])
        if key in seen:
            raise DataError(path, str(lineno), "id", f"{row['benchmark']}/{row['id']} is predicted twice")
        seen.add(key)
    return Predictions(path=path, settings=rows[0]["header"], lines=rows[1:], complete=complete_text == text)
