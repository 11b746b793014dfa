"""What a benchmark file provides, and the helpers its loader uses (see docs/evaluation.md#benchmarks).

A benchmark module defines one `BenchmarkSpec`: its loader (the released files as published), how its
score aggregates (item mean or mean of task scores), its official scoring rule and its lmms-eval 0.7 task
rule, its published numbers and its help text. Loaders never refuse an item for its video: a missing video
stays in the record and the run reports that item as an error (docs/evaluation.md#failures-and-the-lock).
"""
from __future__ import annotations

import json
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from framethink.data.records import Record
from framethink.errors import DataError
from framethink.eval.lmms_eval_rules import extract_mcq_answer
from framethink.rewards import normalize_option

LETTERS = string.ascii_uppercase
STATUSES = ("scored", "unparsable", "needs_judge", "error")


@dataclass(frozen=True)
class ItemScore:
    """One item under one protocol.

    `answer` is what the protocol read from the output ("" when nothing); `score` in [0, 1]; `status` one of
    scored | unparsable | needs_judge | error. `counted` is False where the protocol's source leaves the item out
    of its denominator (Video-MME's official script drops unanswered items; an item left to an LLM judge is not
    guessed). `guessed` marks a source's random fallback, scored as its expected value 1/#options.
    """

    answer: str
    score: float
    status: str
    counted: bool = True
    guessed: bool = False

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")


# A benchmark scoring rule: (prediction line, text the protocol's front end hands it) -> ItemScore
Rule = Callable[[dict, str], ItemScore]


@dataclass(frozen=True)
class BenchmarkSpec:
    name: str
    help: str  # one line for `eval run --help`
    load: Callable[[Path], list[Record]]  # the released layout in DATA_ROOT/<name>/
    metric: str  # "accuracy" (item mean) | "task mean" (mean of task scores; subtasks averaged first)
    official: Rule  # the benchmark's own released scorer
    lmms_eval: Rule  # lmms-eval 0.7's task rule
    published: dict[str, float] = field(default_factory=dict)  # published-result key -> percent


def scored(answer: str, score: float) -> ItemScore:
    return ItemScore(answer=answer, score=float(score), status="scored")


def gold_letter(line: dict) -> str:
    """The gold option letter of a multiple-choice prediction line."""
    return str(line["answer"]).strip()


def option_texts(line: dict) -> dict[str, str]:
    """{"A": "cat", ...} from the line's options "A. cat"."""
    texts = {}
    for option in line.get("options") or []:
        letter = normalize_option(option.split(".", 1)[0]) if "." in option else ""
        texts[letter or LETTERS[len(texts)]] = option.split(".", 1)[1].strip() if "." in option else option
    return texts


def abcd_rule(line: dict, text: str) -> ItemScore:
    """lmms-eval 0.7.2's rule for Video-MME and MLVU (`extract_characters_regex` in their `utils.py`):
    `extract_mcq_answer` over A-D, equal to the gold letter; every item is answered (counted)."""
    pred = extract_mcq_answer(text, choices=["A", "B", "C", "D"])
    if pred == "":
        return ItemScore(answer="", score=0.0, status="unparsable")
    return scored(pred, pred == gold_letter(line))


def gold_text(line: dict) -> str:
    """The gold answer as the benchmark writes it ("B. anticlockwise" for TempCompass): the line's
    `answer_text` when the loader kept it, else the gold option line."""
    if line.get("answer_text"):
        return line["answer_text"]
    letter = gold_letter(line)
    return next((o.strip() for o in line.get("options") or [] if normalize_option(o.split(".", 1)[0]) == letter),
                letter)


# ---------------------------------------------------------------------------------------------
# Loader helpers: every fault names the file, the record and the field.


def read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataError(path, "-", "<file>", f"not found: expected {what} here")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(path, str(err.lineno), "<json>", f"not valid JSON: {err.msg} (column {err.colno})") from None


def json_list(path: Path, what: str) -> list:
    data = read_json(path, what)
    if not isinstance(data, list):
        raise DataError(path, "-", "<json>", f"expected a list of questions, got {type(data).__name__}")
    return data


def parquet_rows(folder: Path, what: str) -> Iterator[tuple[Path, int, dict]]:
    """(file, row index, row) over the `test-*.parquet` shards in `folder` (the Hugging Face layout)."""
    shards = sorted(folder.glob("test-*.parquet"))
    if not shards:
        raise DataError(folder / "test-*.parquet", "-", "<file>", f"not found: expected {what} here")
    for shard in shards:
        for index, row in enumerate(pq.read_table(shard).to_pylist()):
            yield shard, index, row


def lettered(texts: list) -> list[str]:
    return [f"{LETTERS[i]}. {text}" for i, text in enumerate(texts)]


class Item:
    """One annotation record: typed field access and record building, each fault a DataError naming it."""

    def __init__(self, obj: Any, file: Path, where: str) -> None:
        self.obj, self.file, self.where = obj, file, where
        if not isinstance(obj, dict):
            raise self.error("<record>", f"expected an object, got {type(obj).__name__}")

    def error(self, field_name: str, reason: str) -> DataError:
        return DataError(self.file, self.where, field_name, reason)

    def get(self, key: str, types: type | tuple[type, ...] = str) -> Any:
        value = self.obj.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            got = "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
            raise self.error(key, f"expected {names}, got {got}")
        return value

    def candidate_letter(self, candidates: list) -> str:
        """MVBench and MLVU give the answer as the candidate's text: its letter."""
        texts, answer = [str(c) for c in candidates], str(self.obj.get("answer"))
        if answer not in texts:
            raise self.error("answer", f"{answer!r} is not one of the candidates {texts}")
        return LETTERS[texts.index(answer)]

    def letter(self, field_name: str, options: list[str]) -> str:
        """The gold letter in `field_name` ("B" or "B. text"), which must name one of the options."""
        answer = self.get(field_name)
        letter = normalize_option(answer) or normalize_option(answer.split(".", 1)[0] if "." in answer else "")
        letters = [normalize_option(o.split(".", 1)[0]) for o in options]
        if not letter or letter not in letters:
            raise self.error(field_name, f"{answer!r} is not the letter of one of the options {', '.join(letters)}")
        return letter

    def record(self, rid: str, question: str, options: list[str], answer: str, task: str, video: Path,
               extra: dict, problem_type: str = "multiple choice", **bounds: float) -> Record:
        return Record(id=rid, question=question, options=options, problem_type=problem_type, answer=answer,
                      solution=f"<answer>{answer}</answer>", media_kind="video", media=[video], source=task,
                      origin=f"{self.file}:{self.where}", extra=extra, media_field="video", **bounds)
