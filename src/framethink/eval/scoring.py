"""Scores of prediction lines under one protocol: per item, per task, per Video-MME duration, per benchmark
(docs/evaluation.md#scoring-protocols, docs/evaluation.md#reports).

A benchmark scores as the mean of its counted items ("accuracy") or, for the benchmarks whose release averages
task scores (MLVU, VSI-Bench), as the mean of its task scores ("task mean"); a task whose items carry a subtask
(VSI-Bench's relative direction, easy / medium / hard) scores as the mean of its subtask scores. The `video-r1`
protocol takes the plain item mean everywhere, as its script does. Items a protocol's source leaves out of its
denominator (unanswered items of Video-MME's script, items left to an LLM judge) are counted apart and do not
enter the score.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from framethink.eval.benchmarks import REGISTRY
from framethink.eval.benchmarks.base import ItemScore
from framethink.eval.benchmarks.videomme import DURATIONS
from framethink.eval.protocols import PROTOCOLS, Protocol

Scored = list[tuple[dict, ItemScore]]


@dataclass
class GroupScore:
    score: float  # percent, over the counted items
    items: int
    unparsable: int = 0
    needs_judge: int = 0
    guessed: int = 0
    errors: int = 0


@dataclass
class BenchmarkScore:
    name: str
    protocol: str
    metric: str  # "accuracy" (item mean) | "task mean"
    overall: GroupScore
    tasks: dict[str, GroupScore] = field(default_factory=dict)
    durations: dict[str, GroupScore] = field(default_factory=dict)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _item_group(scored: Scored) -> GroupScore:
    statuses = [s.status for _, s in scored]
    return GroupScore(score=100 * _mean([s.score for _, s in scored if s.counted]), items=len(scored),
                      unparsable=statuses.count("unparsable"), needs_judge=statuses.count("needs_judge"),
                      guessed=sum(s.guessed for _, s in scored), errors=statuses.count("error"))


def _task_group(scored: Scored) -> GroupScore:
    """Item mean, or the mean of the subtask item means when the items carry subtasks."""
    if all(p.get("subtask") is None for p, _ in scored):
        return _item_group(scored)
    by_subtask: dict[str, Scored] = defaultdict(list)
    for pred, item in scored:
        by_subtask[str(pred.get("subtask"))].append((pred, item))
    group = _item_group(scored)
    group.score = _mean([_item_group(items).score for items in by_subtask.values()])
    return group


def _duration_key(name: str) -> tuple[int, str]:
    return (DURATIONS.index(name) if name in DURATIONS else len(DURATIONS), name)


def score_items(lines: Iterable[dict], protocol: Protocol) -> Scored:
    """(line, ItemScore) for every line the protocol has a rule for."""
    return [(line, item) for line in lines if (item := protocol.score(line)) is not None]


def aggregate(name: str, protocol: Protocol, scored: Scored) -> BenchmarkScore | None:
    """One benchmark's scores from its scored items; None when the protocol scored none of them."""
    if not scored:
        return None
    by_task: dict[str, Scored] = defaultdict(list)
    by_duration: dict[str, Scored] = defaultdict(list)
    for pred, item in scored:
        by_task[pred["task"]].append((pred, item))
        if pred.get("duration") is not None:
            by_duration[pred["duration"]].append((pred, item))
    tasks = {task: _task_group(by_task[task]) for task in sorted(by_task)}
    durations = {d: _item_group(by_duration[d]) for d in sorted(by_duration, key=_duration_key)}
    spec = REGISTRY.get(name)
    metric = "accuracy" if protocol.item_mean or spec is None else spec.metric
    overall = _item_group(scored)
    if metric == "task mean":
        overall.score = _mean([g.score for g in tasks.values()])
    return BenchmarkScore(name=name, protocol=protocol.name, metric=metric, overall=overall, tasks=tasks,
                          durations=durations)


def score_predictions(lines: Iterable[dict], protocol: str = "framethink") -> dict[str, BenchmarkScore]:
    """Scores of every benchmark present in the prediction lines under `protocol`, keyed by benchmark name
    (a benchmark the protocol has no rule for is absent)."""
    by_bench: dict[str, list[dict]] = defaultdict(list)
    for line in lines:
        by_bench[line["benchmark"]].append(line)
    chosen = PROTOCOLS[protocol]
    scores = {name: aggregate(name, chosen, score_items(preds, chosen)) for name, preds in by_bench.items()}
    return {name: score for name, score in scores.items() if score is not None}
