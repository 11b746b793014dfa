"""Deterministic scoring of evaluation outputs (SPEC 7).

An output's answer is the content of its first `<answer>` tag, or the whole output when it has none.
An answer that cannot be read for its problem type (no option letter, no number, no text) is wrong
and counted as unparsable; nothing is ever guessed. Multiple choice, numerical,
OCR and free-form answers score with the reward rules of SPEC 4.1; regression answers (VSI-Bench's
numeric tasks) score with the mean relative accuracy of SPEC 7.

Aggregation per benchmark: the item mean ("accuracy"), or for MLVU and VSI-Bench the mean of the
task scores ("task mean"). A task whose items carry a subtask (VSI-Bench's relative direction,
easy / medium / hard) scores as the mean of its subtask scores, as the VSI-Bench release does.
"""
from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from framethink.rewards import answer_accuracy, extract_answer, normalize_option, parse_number

TASK_MEAN_BENCHMARKS = ("mlvu", "vsibench")
DURATIONS = ("short", "medium", "long")  # Video-MME
_ANSWER_TAG_RE = re.compile(r"<answer>.*?</answer>", re.DOTALL)
_MRA_THRESHOLDS = range(50, 100, 5)  # θ in percent: 0.50, 0.55, ..., 0.95


@dataclass(frozen=True)
class ItemScore:
    answer: str  # the answer read from the output ("" when unparsable)
    score: float  # in [0, 1]
    unparsable: bool


def answer_text(output: str) -> str:
    """The content of an output's first `<answer>` tag, or the whole stripped output when it has no
    tag (SPEC 7); an empty tag gives an empty (unparsable) answer."""
    return extract_answer(output) if _ANSWER_TAG_RE.search(output) else output.strip()


def mean_relative_accuracy(pred: float, gold: float) -> float:
    """MRA = mean over θ in {0.50, 0.55, ..., 0.95} of 1[|pred - gold| / |gold| < 1 - θ] (SPEC 7)."""
    if gold == 0:
        return float(pred == 0)
    relative = abs(pred - gold) / abs(gold)
    # 1 - θ from integer percents, so the 0.05 steps carry no float drift
    return sum(relative < (100 - t) / 100 for t in _MRA_THRESHOLDS) / len(_MRA_THRESHOLDS)


def score_output(output: str, gold: str, problem_type: str) -> ItemScore:
    """Score one raw model output against the gold answer (an option letter, a number or a text)."""
    text = answer_text(output)
    if problem_type == "multiple choice":
        parsed = normalize_option(text)
    elif problem_type in ("numerical", "regression"):
        parsed = text if parse_number(text) is not None else ""
    else:  # OCR, free-form: any text is an answer
        parsed = text
    if not parsed:
        return ItemScore(answer="", score=0.0, unparsable=True)
    if problem_type == "regression":
        score = mean_relative_accuracy(parse_number(parsed), parse_number(gold))
    else:
        score = answer_accuracy(parsed, gold, problem_type)
    return ItemScore(answer=parsed, score=score, unparsable=False)


@dataclass
class GroupScore:
    score: float  # percent
    items: int
    unparsable: int


@dataclass
class BenchmarkScore:
    name: str
    metric: str  # "accuracy" (item mean) | "task mean"
    overall: GroupScore
    tasks: dict[str, GroupScore] = field(default_factory=dict)
    durations: dict[str, GroupScore] = field(default_factory=dict)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _item_group(scored: list[tuple[dict, ItemScore]]) -> GroupScore:
    return GroupScore(score=100 * _mean([s.score for _, s in scored]), items=len(scored),
                      unparsable=sum(s.unparsable for _, s in scored))


def _task_group(scored: list[tuple[dict, ItemScore]]) -> GroupScore:
    """Item mean, or the mean of the subtask item means when the items carry subtasks."""
    if all(p.get("subtask") is None for p, _ in scored):
        return _item_group(scored)
    by_subtask: dict[str, list[tuple[dict, ItemScore]]] = defaultdict(list)
    for pred, item in scored:
        by_subtask[str(pred.get("subtask"))].append((pred, item))
    group = _item_group(scored)
    group.score = _mean([_item_group(items).score for items in by_subtask.values()])
    return group


def _duration_key(name: str) -> tuple[int, str]:
    return (DURATIONS.index(name) if name in DURATIONS else len(DURATIONS), name)


def score_benchmark(name: str, predictions: list[dict]) -> BenchmarkScore:
    """Scores of one benchmark from its prediction lines (see `runner.prediction_line`)."""
    scored = [(p, score_output(p["output"], p["answer"], p["problem_type"])) for p in predictions]
    by_task: dict[str, list[tuple[dict, ItemScore]]] = defaultdict(list)
    by_duration: dict[str, list[tuple[dict, ItemScore]]] = defaultdict(list)
    for pred, item in scored:
        by_task[pred["task"]].append((pred, item))
        if pred.get("duration") is not None:
            by_duration[pred["duration"]].append((pred, item))
    tasks = {task: _task_group(by_task[task]) for task in sorted(by_task)}
    durations = {d: _item_group(by_duration[d]) for d in sorted(by_duration, key=_duration_key)}
    if name in TASK_MEAN_BENCHMARKS:
        overall = _item_group(scored)
        overall.score = _mean([g.score for g in tasks.values()])
        metric = "task mean"
    else:
        overall, metric = _item_group(scored), "accuracy"
    return BenchmarkScore(name=name, metric=metric, overall=overall, tasks=tasks, durations=durations)


def score_predictions(predictions: Iterable[dict]) -> dict[str, BenchmarkScore]:
    """Scores of every benchmark present in the prediction lines, keyed by benchmark name."""
    by_bench: dict[str, list[dict]] = defaultdict(list)
    for pred in predictions:
        by_bench[pred["benchmark"]].append(pred)
    return {name: score_benchmark(name, preds) for name, preds in by_bench.items()}
