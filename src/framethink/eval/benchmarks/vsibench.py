"""VSI-Bench (nyu-visionx/VSI-Bench): multiple-choice and numeric tasks, the mean of the task scores.

Layout (the dataset card; thinking-in-space and lmms-eval `lmms_eval/tasks/vsibench/`): `test-*.parquet` with
columns id, dataset (arkitscenes | scannet | scannetpp), scene_name, question_type, question, options
(["A. ...", ...] for multiple choice, empty for numeric), ground_truth (a letter, or a number); videos at
`<dataset>/<scene_name>.mp4`. Numeric tasks are "regression" records scored by mean relative accuracy (MRA).
The three relative-direction levels are one task, `object_rel_direction`, with the level in `extra["subtask"]`
(their mean is the task's score, as the authors' aggregation does).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from framethink.data.records import Record
from framethink.eval.benchmarks.base import BenchmarkSpec, Item, ItemScore, gold_letter, parquet_rows, scored
from framethink.rewards import parse_number

MC_TASKS = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard",
            "object_rel_distance", "route_planning", "obj_appearance_order")
NUMERIC_TASKS = ("object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")


def load(root: Path) -> list[Record]:
    records = []
    what = "the VSI-Bench parquet (layout: test-*.parquet, <dataset>/<scene_name>.mp4)"
    for file, index, row in parquet_rows(root, what):
        item = Item(row, file, f"row {index}")
        qtype, rid, question = item.get("question_type"), str(item.get("id", (int, str))), item.get("question")
        video = root / item.get("dataset") / f"{item.get('scene_name')}.mp4"
        extra: dict = {"question_type": qtype}
        if qtype in MC_TASKS:
            options = item.get("options", list)
            task = qtype
            if qtype.startswith("object_rel_direction_"):
                task, extra["subtask"] = qtype.rsplit("_", 1)
            gold = item.letter("ground_truth", options)
            records.append(item.record(rid, question, options, gold, task, video, extra))
        elif qtype in NUMERIC_TASKS:
            gold = item.get("ground_truth")
            if parse_number(gold) is None:
                raise item.error("ground_truth", f"a numeric task needs a number, got {gold!r}")
            records.append(item.record(rid, question, [], gold, qtype, video, extra, problem_type="regression"))
        else:
            raise item.error("question_type", f"unknown {qtype!r}; known: {', '.join(MC_TASKS + NUMERIC_TASKS)}")
    return records


def fuzzy_matching(pred: str) -> str:
    """vision-x-nyu/thinking-in-space `lmms_eval/tasks/vsibench/utils.py` `fuzzy_matching`: the text before the
    first space, trailing periods removed."""
    return pred.split(" ")[0].rstrip(".").strip()


def to_float(pred: str) -> float | None:
    """thinking-in-space `to_float`: Python's float(), None when it fails."""
    try:
        return float(pred)
    except (TypeError, ValueError):
        return None


def mean_relative_accuracy(pred: float, target: float, start: float = 0.5, end: float = 0.95,
                           interval: float = 0.05) -> float:
    """thinking-in-space `mean_relative_accuracy`: the mean over θ in np.linspace(0.5, 0.95, 10) of
    |pred - target| / target <= 1 - θ (float64; `<=`, so gold 20 / prediction 19 scores 1.0)."""
    num_pts = (end - start) / interval + 2
    conf_intervs = np.linspace(start, end, int(num_pts))
    accuracy = abs(pred - target) / target <= 1 - conf_intervs
    return float(accuracy.mean())


def _mc(line: dict, answer: str) -> ItemScore:
    """`exact_match`, case-insensitive, against the gold letter."""
    letters = [o.split(".", 1)[0].strip().upper() for o in line.get("options") or []]
    score = float(answer.lower() == gold_letter(line).lower())
    return scored(answer, score) if answer.upper() in letters else ItemScore(answer=answer, score=score,
                                                                             status="unparsable")


def _numeric(line: dict, pred: float | None) -> ItemScore:
    """MRA, or the worst case 0 when the prediction is no number (the source catches the TypeError)."""
    if pred is None:
        return ItemScore(answer="", score=0.0, status="unparsable")
    return scored(repr(pred), mean_relative_accuracy(pred, float(line["answer"])))


def official(line: dict, text: str) -> ItemScore:
    """thinking-in-space `vsibench_process_results`: the first word of the answer (`fuzzy_matching`); multiple
    choice by `exact_match`, numeric tasks by `mean_relative_accuracy` of `to_float` of that word."""
    answer = fuzzy_matching(text)
    if line["problem_type"] == "regression":
        return _numeric(line, to_float(answer))
    return _mc(line, answer)


_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
}
_NUM_RE = re.compile(r"-?\d+(?:\.\d+)?")


def extract_number(text: str) -> float | None:
    """lmms-eval v0.7.2 `lmms_eval/tasks/vsibench/utils.py` `extract_number`: the first number in the text,
    digits or English number words, whichever comes first; None when there is none."""
    s = str(text).strip().lower()
    if not s:
        return None
    digit_match = _NUM_RE.search(s)
    word_run_start, word_run_tokens = None, []
    for m in re.finditer(r"[a-z]+", s):
        tok = m.group(0)
        if word_run_start is None:
            if tok in _NUMBER_WORDS:
                word_run_start = m.start()
                word_run_tokens.append(tok)
        elif tok == "and":
            continue
        elif tok in _NUMBER_WORDS:
            word_run_tokens.append(tok)
        else:
            break
    if digit_match is not None and (word_run_start is None or digit_match.start() < word_run_start):
        return float(digit_match.group(0))
    if word_run_start is None:
        return None
    total, current = 0, 0
    for tok in word_run_tokens:
        val = _NUMBER_WORDS[tok]
        if val == 100:
            current = max(current, 1) * 100
        elif val == 1000:
            total += max(current, 1) * 1000
            current = 0
        else:
            current += val
    return float(total + current)


def lmms_eval(line: dict, text: str) -> ItemScore:
    """lmms-eval v0.7.2 `vsibench_process_results`: multiple choice as the authors' rule; numeric tasks read
    the first number anywhere in the output (`extract_number`), then the same `<=` MRA."""
    if line["problem_type"] == "regression":
        return _numeric(line, extract_number(text))
    return _mc(line, fuzzy_matching(text))


BENCHMARK = BenchmarkSpec(
    name="vsibench", help="VSI-Bench (test-*.parquet + <dataset>/<scene>.mp4), MC exact + numeric MRA, task mean",
    load=load, metric="task mean", official=official, lmms_eval=lmms_eval,
    published={"qwen2.5-vl-7b-cot-16f": 27.7, "qwen2.5-vl-7b-cot-32f": 30.1, "qwen2.5-vl-7b-sft-16f": 31.8,
               "qwen2.5-vl-7b-sft-32f": 33.3, "video-r1-7b-16f": 34.6, "video-r1-7b-32f": 35.8,
               "video-r1-7b-wo-image-16f": 32.3, "video-r1-7b-wo-temporal-16f": 32.7},
)
