"""One typed record for every dataset format (docs/data.md, "Record formats").

Loaders for Video-R1 JSON/JSONL (1.1), TinyLLaVA-Video-R1 JSONL (1.2) and LLaVA conversations (1.3).
A file ending in `.jsonl` holds one record per line; any other file holds one JSON list of records.
Each record's format is told by its fields (`conversations` -> LLaVA, `video_filename` ->
TinyLLaVA, `problem` -> Video-R1) unless the caller names it.

Every fault is a `DataError` naming the file, the line (JSONL, 1-based) or `[index]` (JSON list)
and the raw field; `iter_record_results` reports all faults of every record, `load_records`
stops at the first.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from framethink.errors import ConfigError, DataError

PROBLEM_TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression")
MEDIA_KINDS = ("image", "video", "text")
FORMATS = ("video-r1", "tinyllava", "llava")

_ANSWER_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)  # the answer rule of docs/method.md, "Rewards"
_ANSWER_TAG_RE = re.compile(r"<answer>.*?</answer>", re.DOTALL)
_THINK_TAG_RE = re.compile(r"<think>.*?</think>", re.DOTALL)
_OPTION_RE = re.compile(r"([A-Z])\.")  # "A. cat" -> "A"
_LETTER_RE = re.compile(r"[A-Z]")
_OPTIONS_HEADER = "\nOptions:\n"  # TinyLLaVA / LLaVA questions inline their options after it
_PLACEHOLDER_RE = re.compile(r"<(?:image|video)>\n?")

_VIDEO_R1_FIELDS = ("problem_id", "problem", "data_type", "problem_type", "options", "solution", "path",
                    "data_source", "process")
_TINYLLAVA_FIELDS = ("problem_id", "problem", "data_type", "problem_type", "solution", "video_filename")
_LLAVA_FIELDS = ("id", "video", "image", "conversations")


@dataclass
class Record:
    """A question about an image, a video or nothing, with its gold answer.

    `answer` is the gold answer already extracted from `<answer>...</answer>` (docs/method.md, "Rewards");
    `solution` keeps the raw string. `media` holds absolute paths resolved against the data root.
    `origin` is "file:line" (or "file:[index]") for error messages; `media_field` names the raw
    field the media path came from.
    """

    id: str
    question: str
    options: list[str]
    problem_type: str
    answer: str
    solution: str
    media_kind: str
    media: list[Path]
    source: str = ""
    cot: str | None = None
    origin: str = ""
    start: float | None = None  # clip bounds in seconds (MVBench)
    end: float | None = None
    extra: dict = field(default_factory=dict)  # benchmark-specific metadata (task, duration, ...)
    media_field: str = ""

    def error(self, field_name: str, reason: str) -> DataError:
        """A DataError naming this record's file, its line or [index], and `field_name`."""
        file, _, where = self.origin.rpartition(":")
        return DataError(file or self.id, where, field_name, reason)

    def option_letters(self) -> list[str]:
        """The letters of the options that start with "X." ("A. cat" -> "A"), in order."""
        return [m.group(1) for m in map(_OPTION_RE.match, self.options) if m]


class _Faults:
    """Collects every fault of one record."""

    def __init__(self, file: Path, where: str) -> None:
        self.file, self.where = file, where
        self.errors: list[DataError] = []

    def add(self, field_name: str, reason: str) -> None:
        self.errors.append(DataError(self.file, self.where, field_name, reason))


def _field(obj: dict, key: str, types: type | tuple[type, ...], faults: _Faults, *, required: bool = True) -> Any:
    """obj[key] if it has one of `types` (bool is never an int here); None (and a fault) otherwise."""
    value = obj.get(key)
    if value is None:
        if required:
            faults.add(key, "missing")
        return None
    if isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        faults.add(key, f"expected {names}, got {type(value).__name__} {_short(value)}")
        return None
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _problem_type(value: Any, faults: _Faults) -> str | None:
    if value is None:
        faults.add("problem_type", "missing")
    elif value not in PROBLEM_TYPES:
        faults.add("problem_type", f"unknown {_short(value)}; known: {', '.join(PROBLEM_TYPES)}")
    else:
        return value
    return None


def _answer(solution: str, faults: _Faults, field_name: str) -> str | None:
    match = _ANSWER_RE.search(solution)
    if match is None:
        faults.add(field_name, f"no <answer>...</answer> tag in {_short(solution)}")
        return None
    return match.group(1)


def _check_choice(answer: str, options: list[str], faults: _Faults, options_field: str, answer_field: str) -> None:
    """A multiple-choice record needs options "X. ..." and a gold answer that is one of their letters."""
    if not options:
        faults.add(options_field, "a multiple choice record needs options")
        return
    letters = []
    for option in options:
        match = _OPTION_RE.match(option)
        if match is None:
            faults.add(options_field, f"option {_short(option)} does not start with a letter and a dot (e.g. 'A. cat')")
        else:
            letters.append(match.group(1))
    if letters and answer not in letters:
        faults.add(answer_field, f"answer {answer!r} is not one of the option letters {', '.join(letters)}")


def _media(kind: Any, raw: Any, path_field: str, faults: _Faults, root: Path) -> tuple[str, list[Path]] | None:
    """(media kind, resolved paths) from a data_type value and a path value; a record with no path is text."""
    if kind is not None and kind not in MEDIA_KINDS:
        faults.add("data_type", f"unknown {_short(kind)}; known: {', '.join(MEDIA_KINDS)}")
        return None
    if raw is None:
        if kind in (None, "text"):
            return "text", []
        faults.add(path_field, f"missing (data_type is {kind!r})")
        return None
    if not isinstance(raw, str) or not raw:
        faults.add(path_field, f"expected a non-empty str path, got {_short(raw)}")
        return None
    if kind in (None, "text"):
        faults.add("data_type", f"must be 'image' or 'video' for a record with a media path, got {kind!r}")
        return None
    path = Path(raw)
    return kind, [path if path.is_absolute() else root / path]


def _split_options(text: str) -> tuple[str, list[str]]:
    """'question\\nOptions:\\nA. x\\nB. y' -> ('question', ['A. x', 'B. y']); text without options is kept."""
    question, header, block = text.partition(_OPTIONS_HEADER)
    if not header:
        return text, []
    return question, [line for line in block.split("\n") if line.strip()]


def _extra(obj: dict, known: tuple[str, ...]) -> dict:
    return {k: v for k, v in obj.items() if k not in known}


def _video_r1(obj: dict, faults: _Faults, root: Path) -> Record | None:
    """The Video-R1 record (the native format); options are a separate list."""
    pid = _field(obj, "problem_id", (int, str), faults)
    problem = _field(obj, "problem", str, faults)
    ptype = _problem_type(obj.get("problem_type"), faults)
    options = [] if obj.get("options") is None else _field(obj, "options", list, faults)
    if options is not None and not all(isinstance(o, str) for o in options):
        faults.add("options", f"expected a list of str, got {_short(options)}")
        options = None
    solution = _field(obj, "solution", str, faults)
    answer = _answer(solution, faults, "solution") if solution is not None else None
    media = _media(obj.get("data_type"), obj.get("path"), "path", faults, root)
    source = _field(obj, "data_source", str, faults, required=False)
    cot = _field(obj, "process", str, faults, required=False)
    if ptype == "multiple choice" and options is not None and answer is not None:
        _check_choice(answer, options, faults, "options", "solution")
    if faults.errors:
        return None
    return Record(id=str(pid), question=problem, options=options, problem_type=ptype, answer=answer,
                  solution=solution, media_kind=media[0], media=media[1], source=source or "", cot=cot,
                  extra=_extra(obj, _VIDEO_R1_FIELDS), media_field="path" if media[1] else "")


def _tinyllava(obj: dict, faults: _Faults, root: Path) -> Record | None:
    """The TinyLLaVA-Video-R1 record: options inlined in `problem`; problem_type ["reasoning"] is multiple choice."""
    pid = _field(obj, "problem_id", (int, str), faults)
    problem = _field(obj, "problem", str, faults)
    question, options = _split_options(problem) if problem is not None else (None, [])
    ptype = obj.get("problem_type")
    if isinstance(ptype, list) and len(ptype) == 1:
        ptype = ptype[0]
    if ptype == "reasoning":  # TinyLLaVA's only type: letter answers over the inlined options
        ptype = "multiple choice"
    ptype = _problem_type(ptype, faults)
    solution = _field(obj, "solution", str, faults)
    answer = _answer(solution, faults, "solution") if solution is not None else None
    media = _media(obj.get("data_type"), obj.get("video_filename"), "video_filename", faults, root)
    if ptype == "multiple choice" and problem is not None and answer is not None:
        _check_choice(answer, options, faults, "problem", "solution")
    if faults.errors:
        return None
    return Record(id=str(pid), question=question, options=options, problem_type=ptype, answer=answer,
                  solution=solution, media_kind=media[0], media=media[1], cot=None,
                  extra=_extra(obj, _TINYLLAVA_FIELDS), media_field="video_filename" if media[1] else "")


def _llava(obj: dict, faults: _Faults, root: Path) -> Record | None:
    """A LLaVA conversation: one human turn (question, `<image>` placeholder removed, options inlined after
    "\\nOptions:\\n") and one gpt turn ("<think>...</think> <answer>...</answer>").

    problem_type is inferred: a single-letter answer with options present is multiple choice,
    anything else is free-form. `cot` is the "<think>...</think>" span (None without one),
    `solution` the "<answer>...</answer>" span; `extra["response"]` keeps the gpt turn verbatim.
    """
    rid = _field(obj, "id", (int, str), faults)
    turns = _field(obj, "conversations", list, faults)
    human = gpt = None
    if turns is not None:
        if (len(turns) != 2 or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns)
                or [t.get("from") for t in turns] != ["human", "gpt"]):
            faults.add("conversations", "expected one human turn then one gpt turn, each with a str 'value'")
        else:
            human, gpt = turns[0]["value"], turns[1]["value"]
    kind = "video" if "video" in obj else "image" if "image" in obj else None
    if "video" in obj and "image" in obj:
        faults.add("video", "a record holds either 'video' or 'image', not both")
        media = None
    else:
        media = _media(kind, obj.get(kind) if kind else None, kind or "video", faults, root)
    if human is None or gpt is None:
        return None
    question, options = _split_options(_PLACEHOLDER_RE.sub("", human).strip())
    solution_match = _ANSWER_TAG_RE.search(gpt)
    if solution_match is None:
        faults.add("conversations", f"the gpt turn has no <answer>...</answer> tag: {_short(gpt)}")
        return None
    solution = solution_match.group(0)
    answer = _ANSWER_RE.search(solution).group(1)
    think = _THINK_TAG_RE.search(gpt)
    ptype = "multiple choice" if options and _LETTER_RE.fullmatch(answer) else "free-form"
    if ptype == "multiple choice":
        _check_choice(answer, options, faults, "conversations", "conversations")
    if faults.errors:
        return None
    return Record(id=str(rid), question=question, options=options, problem_type=ptype, answer=answer,
                  solution=solution, media_kind=media[0], media=media[1], cot=think.group(0) if think else None,
                  extra={**_extra(obj, _LLAVA_FIELDS), "response": gpt}, media_field=kind or "")


_PARSERS = {"video-r1": _video_r1, "tinyllava": _tinyllava, "llava": _llava}


def _detect(obj: dict) -> str | None:
    if "conversations" in obj:
        return "llava"
    if "video_filename" in obj:
        return "tinyllava"
    if "problem" in obj:
        return "video-r1"
    return None


def _json_error(path: Path, lineno: int, err: json.JSONDecodeError) -> DataError:
    return DataError(path, str(lineno), "<json>", f"not valid JSON: {err.msg} (column {err.colno})")


def _read(path: Path) -> Iterator[tuple[str, Any, DataError | None]]:
    """(where, parsed object, None) per record, or (where, None, error) for what cannot be parsed."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        yield "-", None, DataError(path, "-", "<file>", f"cannot read: {err}")
        return
    count = 0
    if path.suffix == ".jsonl":
        for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
            if not line.strip():
                continue
            count += 1
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                yield str(lineno), None, _json_error(path, lineno, err)
                continue
            yield str(lineno), obj, None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            yield str(err.lineno), None, _json_error(path, err.lineno, err)
            return
        if not isinstance(data, list):
            yield "1", None, DataError(path, "1", "<json>", f"a .json dataset must be a list of records, "
                                                            f"got {type(data).__name__} (.jsonl: one record per line)")
            return
        for index, obj in enumerate(data):
            count += 1
            yield f"[{index}]", obj, None
    if count == 0:
        yield "1", None, DataError(path, "1", "<json>", "the file holds no records")


def iter_record_results(
    path: str | Path, *, root: str | Path | None = None, fmt: str = "auto"
) -> Iterator[tuple[str, Record | None, list[DataError]]]:
    """Parse every record of a dataset file, never stopping at a fault.

    Yields (origin, record, errors) per record: `record` is None exactly when `errors` is non-empty,
    and `errors` then holds every fault of that record. Media paths resolve against `root`
    (default: the file's folder); absolute paths are kept. `fmt` is "auto" or one of FORMATS.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ConfigError(f"unknown dataset format {fmt!r}; known: auto, {', '.join(FORMATS)}")
    path = Path(path)
    root = Path(root if root is not None else path.parent).absolute()
    for where, obj, error in _read(path):
        origin = f"{path}:{where}"
        if error is not None:
            yield origin, None, [error]
            continue
        faults = _Faults(path, where)
        record = None
        if not isinstance(obj, dict):
            faults.add("<record>", f"expected a JSON object, got {type(obj).__name__} {_short(obj)}")
        elif (name := fmt if fmt != "auto" else _detect(obj)) is None:
            faults.add("<record>", "cannot tell the format: no 'problem' (Video-R1), 'video_filename' "
                                   "(TinyLLaVA-Video-R1) or 'conversations' (LLaVA) field")
        else:
            record = _PARSERS[name](obj, faults, root)
        if record is not None:
            record.origin = origin
        yield origin, record, faults.errors


def load_records(path: str | Path, *, root: str | Path | None = None, fmt: str = "auto") -> list[Record]:
    """All records of a dataset file; raises the first `DataError` so a bad record stops
    a run before it starts. See `iter_record_results` for `root` and `fmt`."""
    records = []
    for _, record, errors in iter_record_results(path, root=root, fmt=fmt):
        if errors:
            raise errors[0]
        records.append(record)
    return records
