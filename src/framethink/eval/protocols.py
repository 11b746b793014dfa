"""Scoring protocols: one model output, scored the way each published number was measured
(docs/evaluation.md#scoring-protocols).

- `framethink` (default): the first `<answer>`, else the whole output; reads B, B., (B), "B. text"; never guesses.
- `video-r1`: Video-R1's evaluation script.
- `official`: each benchmark's own released scorer, on the answer text.
- `lmms-eval`: lmms-eval 0.7's task rules behind its reasoning front end.
- `tinyllava`: TinyLLaVA-Video-R1's evaluation scripts, their random fallback scored as its expected value.

Every protocol maps one prediction line to an `ItemScore`, or to None where it has no rule for the item (the
`official` and `lmms-eval` rules exist for the registered benchmarks only, `tinyllava` for multiple choice only).
A prediction line whose item failed (status error) scores 0 with status error under every protocol.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from framethink.errors import ConfigError
from framethink.eval.benchmarks import REGISTRY
from framethink.eval.benchmarks.base import ItemScore, option_texts, scored
from framethink.eval.lmms_eval_rules import strip_reasoning_tags
from framethink.rewards import extract_answer, normalize_option, parse_number
from framethink.rewards.accuracy import numerical_accuracy

_ANSWER_TAG_RE = re.compile(r"<answer>.*?</answer>", re.DOTALL)


def answer_text(output: str) -> str:
    """The answer text the `official` rules read: the content of the first `<answer>` tag, or the whole stripped
    output when it has none; an empty tag gives an empty answer."""
    return extract_answer(output) if _ANSWER_TAG_RE.search(output) else output.strip()


# ---------------------------------------------------------------------------------------------
# framethink


def mean_relative_accuracy(pred: float, gold: float) -> float:
    """MRA = mean over θ in {0.50, 0.55, ..., 0.95} of 1[|pred - gold| / |gold| <= 1 - θ].

    `<=`, as the VSI-Bench authors' code (thinking-in-space `mean_relative_accuracy`) that the published
    VSI-Bench numbers come from; the paper writes `<`. The thresholds come from integer percents, so
    gold 20 / prediction 19 (relative error exactly 0.05) passes θ = 0.95 and scores 1.0.
    """
    if gold == 0:
        return float(pred == 0)
    relative = abs(pred - gold) / abs(gold)
    return sum(relative <= (100 - t) / 100 for t in range(50, 100, 5)) / 10


def _normalised_text(text: str) -> str:
    return " ".join(text.lower().split()).rstrip(".")


def framethink_rule(line: dict) -> ItemScore:
    """framethink's own rule: multiple choice reads one option letter (B, B., (B), B), "B. text", b); numerical
    answers by the decimal-mark rule and 2 decimals; regression by MRA (`<=`); free-form and OCR answers by
    exact match after lower-casing and collapsing whitespace (all or nothing, never a partial overlap score).
    An answer that cannot be read for its type is wrong and counted as unparsable; nothing is guessed."""
    text, gold, ptype = answer_text(line["output"]), str(line["answer"]), line["problem_type"]
    if ptype == "multiple choice":
        letter = normalize_option(text)
        return scored(letter, letter == normalize_option(gold)) if letter else ItemScore("", 0.0, "unparsable")
    if ptype in ("numerical", "regression"):
        value = parse_number(text)
        if value is None:
            return ItemScore("", 0.0, "unparsable")
        if ptype == "regression":
            return scored(text, mean_relative_accuracy(value, parse_number(gold)))
        return scored(text, numerical_accuracy(text, gold))
    if not text:
        return ItemScore("", 0.0, "unparsable")
    return scored(text, _normalised_text(text) == _normalised_text(gold))


# ---------------------------------------------------------------------------------------------
# video-r1: tulerfeng/Video-R1 src/eval_bench.py


def video_r1_extract_answer(text: str) -> str:
    """`extract_answer`: the stripped content of the first `<answer>` (DOTALL), "" when there is none."""
    match = re.search(r"<answer>\s*(.*?)\s*</answer>", text, re.DOTALL)
    return match.group(1).strip() if match else ""


def video_r1_normalize_number(num_str: str) -> float | None:
    """`normalize_number`: float() of the text with commas removed, None when it fails."""
    try:
        return float(num_str.replace(",", ""))
    except ValueError:
        return None


def video_r1_mean_relative_accuracy(pred: float, target: float, start: float = 0.5, end: float = 0.95,
                                    interval: float = 0.05) -> float:
    """`mean_relative_accuracy`: float32 tensors, relative error over |target| + 1e-8, thresholds
    torch.arange(0.5, 0.975, 0.05) in float32, strict `<`."""
    pred_t, target_t = torch.tensor(pred, dtype=torch.float32), torch.tensor(target, dtype=torch.float32)
    rel_error = torch.abs(pred_t - target_t) / (torch.abs(target_t) + 1e-8)
    thresholds = torch.arange(start, end + interval / 2, interval, dtype=torch.float32)
    return (rel_error < (1 - thresholds)).float().mean().item()


def video_r1_rule(line: dict) -> ItemScore:
    """`reward_fn`: the `<answer>` contents, or the raw output when they are empty; multiple choice by exact
    string equality of the stripped texts; numerical by the decimal-mark rule and round(x, 2); regression by
    the float32 MRA; every other problem type 0."""
    output = line["output"]
    output_ans = video_r1_extract_answer(output) or output
    gt_ans = video_r1_extract_answer(f"<answer>{line['answer']}</answer>")
    ptype = line["problem_type"]
    if ptype == "multiple choice":
        answer = output_ans.strip()
        score = float(answer == gt_ans.strip())
        letters = set(option_texts(line))
        return scored(answer, score) if answer in letters else ItemScore(answer, score, "unparsable")
    if ptype in ("numerical", "regression"):
        gt_number, out_number = video_r1_normalize_number(gt_ans), video_r1_normalize_number(output_ans)
        if out_number is None or gt_number is None:
            return ItemScore("", 0.0, "unparsable")
        if ptype == "regression":
            return scored(output_ans.strip(), video_r1_mean_relative_accuracy(out_number, gt_number))
        if (("." in gt_ans) or ("," in gt_ans)) != (("." in output_ans) or ("," in output_ans)):
            return scored(output_ans.strip(), 0.0)
        return scored(output_ans.strip(), round(gt_number, 2) == round(out_number, 2))
    return scored(output_ans.strip(), 0.0)


# ---------------------------------------------------------------------------------------------
# tinyllava: ZhangXJ199/TinyLLaVA-Video-R1 tinyllava/eval/eval_{mvbench,videomme,mlvu,mmvu}.py


def tinyllava_parse(response: str, all_choices: list[str]) -> str | None:
    """`parse_multi_choice_response`, with `random.choice` replaced by the sentinel "random": the first
    character of the stripped `<answer>` content (no DOTALL: a tag spanning lines does not match) when it is a
    choice letter in either case, else the first "(X)" / "(x)" in that content, else "random"; no tag also gives
    "random". An empty tag returns None, as the released function falls through (scored wrong, not guessed)."""
    match = re.search(r"<answer>\s*(.*?)\s*</answer>", response)
    if not match:
        return "random"
    content = match.group(1).strip()
    if len(content) == 0:
        return None
    if content[0] in all_choices or content[0] in [c.lower() for c in all_choices]:
        return content[0].upper()
    for choice in all_choices:
        if f"({choice})" in content or f"({choice.lower()})" in content:
            return choice
    return "random"


def tinyllava_rule(line: dict) -> ItemScore | None:
    """Multiple choice only; a random fallback scores 1/#options (its expected value), status unparsable and
    counted as guessed, so that re-scoring is deterministic."""
    if line["problem_type"] != "multiple choice":
        return None
    choices = line.get("all_choices") or list(option_texts(line))  # MMVU: every choice key, empty ones too
    pred = tinyllava_parse(line["output"], choices)
    gold = normalize_option(str(line["answer"]))
    if pred is None:
        return ItemScore("", 0.0, "unparsable")
    if pred == "random":
        return ItemScore("", (gold in choices) / len(choices), "unparsable", guessed=True)
    return scored(pred, pred == gold)


# ---------------------------------------------------------------------------------------------
# official and lmms-eval: the benchmark's own rules (eval/benchmarks/<name>.py)


def official_rule(line: dict) -> ItemScore | None:
    spec = REGISTRY.get(line["benchmark"])
    return None if spec is None else spec.official(line, answer_text(line["output"]))


def lmms_eval_rule(line: dict) -> ItemScore | None:
    spec = REGISTRY.get(line["benchmark"])
    return None if spec is None else spec.lmms_eval(line, strip_reasoning_tags(line["output"]))


@dataclass(frozen=True)
class Protocol:
    name: str
    rule: Callable[[dict], ItemScore | None]
    item_mean: bool  # True: the plain item mean for every benchmark; False: each benchmark's own aggregation
    source: str  # where it comes from, for the report

    def score(self, line: dict) -> ItemScore | None:
        if line.get("status", "ok") == "error":
            return ItemScore("", 0.0, "error")
        return self.rule(line)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("framethink", framethink_rule, False, "first <answer>, one option letter or number, never a guess"),
    Protocol("video-r1", video_r1_rule, True, "tulerfeng/Video-R1 src/eval_bench.py"),
    Protocol("official", official_rule, False, "each benchmark's released scorer"),
    Protocol("lmms-eval", lmms_eval_rule, False, "lmms-eval 0.7 task rules, reasoning tags stripped"),
    Protocol("tinyllava", tinyllava_rule, False, "ZhangXJ199/TinyLLaVA-Video-R1 tinyllava/eval/eval_*.py"),
)}


def parse_protocols(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """'official,video-r1' -> ('official', 'video-r1'); None -> ('framethink',); an unknown name raises."""
    names = value.split(",") if isinstance(value, str) else list(value or ["framethink"])
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown or not names:
        raise ConfigError(f"unknown scoring protocol {', '.join(unknown) or '(none)'}; known: {', '.join(PROTOCOLS)}")
    return tuple(dict.fromkeys(names))
