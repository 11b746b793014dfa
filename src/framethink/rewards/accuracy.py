"""Answer extraction and the accuracy reward of each problem type (docs/method.md#accuracy-by-problem-type).

Every function here is pure and total: a completion that cannot be parsed scores 0, it never
raises. Only an unknown `problem_type` raises, because that is a fault in the data, not in the
model's output.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable

import jiwer
from rouge_score import rouge_scorer

from framethink.errors import ConfigError

# A response whose accuracy exceeds this is "judged correct" (length bonus, T-GRPO: docs/method.md).
CORRECT_THRESHOLD = 0.1

_ANSWER_RE = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
_BARE_OPTION_RE = re.compile(r"([A-Za-z])")
# "(B)", "(B) dog", "B.", "B)", "B:", "B. dog"; a bare letter followed by text ("A cat") is not an option.
_LABELED_OPTION_RE = re.compile(r"(?:\(([A-Za-z])\)|([A-Za-z])[.):])(?:\s.*)?", re.DOTALL)
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
_REGRESSION_EPS = 1e-9


def extract_answer(text: str) -> str:
    """Text of the first `<answer>...</answer>` block, inner whitespace stripped; "" if none (docs/method.md#rewards)."""
    match = _ANSWER_RE.search(text)
    return match.group(1) if match else ""


def normalize_option(text: str) -> str:
    """Upper-case option letter of "B", "(B)", "B.", "B)", "B. dog", " b "; "" for anything else (docs/method.md#accuracy-by-problem-type)."""
    stripped = text.strip()
    match = _BARE_OPTION_RE.fullmatch(stripped) or _LABELED_OPTION_RE.fullmatch(stripped)
    if match is None:
        return ""
    return next(g for g in match.groups() if g).upper()


def parse_number(text: str) -> float | None:
    """Finite float of a plain decimal number, thousands commas removed; None if it is not one."""
    cleaned = text.strip().replace(",", "")
    if not _NUMBER_RE.fullmatch(cleaned):
        return None
    value = float(cleaned)
    return value if math.isfinite(value) else None


def multiple_choice_accuracy(pred: str, gold: str) -> float:
    """1 if the predicted option letter equals the gold one, else 0 (docs/method.md#accuracy-by-problem-type).

    A gold answer that is not an option letter is compared as stripped text, as the reference does.
    """
    gold_letter = normalize_option(gold)
    if gold_letter:
        return float(normalize_option(pred) == gold_letter)
    return float(bool(gold.strip()) and pred.strip() == gold.strip())


def numerical_accuracy(pred: str, gold: str) -> float:
    """1 if both parse and agree to 2 decimals; 0 if exactly one has a '.' or ',' (docs/method.md#accuracy-by-problem-type).

    The decimal-mark rule is the reference's: "3.0" vs gold "3" and "1,000" vs gold "1000" score 0.
    """
    if ("." in pred or "," in pred) != ("." in gold or "," in gold):
        return 0.0
    p, g = parse_number(pred), parse_number(gold)
    if p is None or g is None:
        return 0.0
    return float(round(p, 2) == round(g, 2))


def ocr_accuracy(pred: str, gold: str) -> float:
    """1 - word error rate of pred against gold, clipped to [0, 1] (docs/method.md#accuracy-by-problem-type).

    Words are split on any whitespace; an empty reference scores 1 only against an empty prediction
    (edit distance / max(1, #reference words)).
    """
    ref_words, hyp_words = gold.split(), pred.split()
    if not ref_words:
        return float(not hyp_words)
    error = jiwer.wer(" ".join(ref_words), " ".join(hyp_words))
    return min(1.0, max(0.0, 1.0 - error))


def free_form_accuracy(pred: str, gold: str) -> float:
    """Mean of ROUGE-1, ROUGE-2 and ROUGE-L F-measures (Porter stemmer on), clipped to [0, 1] (docs/method.md#accuracy-by-problem-type)."""
    scores = _ROUGE.score(gold, pred)
    mean_f = (scores["rouge1"].fmeasure + scores["rouge2"].fmeasure + scores["rougeL"].fmeasure) / 3
    return min(1.0, max(0.0, mean_f))


def regression_accuracy(pred: str, gold: str) -> float:
    """1 - clip(|pred - gold| / |gold|, 0, 1); unparsable gives 0 (docs/method.md#accuracy-by-problem-type).

    |gold| is floored at 1e-9 so gold 0 scores 1 for an exact 0 and 0 for anything else.
    """
    p, g = parse_number(pred), parse_number(gold)
    if p is None or g is None:
        return 0.0
    relative = abs(p - g) / max(abs(g), _REGRESSION_EPS)
    return 1.0 - min(1.0, relative)


# problem type -> its accuracy rule (pred, gold) -> [0, 1]; a new problem type is one entry here
ACCURACY_BY_TYPE: dict[str, Callable[[str, str], float]] = {
    "multiple choice": multiple_choice_accuracy,
    "numerical": numerical_accuracy,
    "OCR": ocr_accuracy,
    "free-form": free_form_accuracy,
    "regression": regression_accuracy,
}


def answer_accuracy(pred: str, gold: str, problem_type: str) -> float:
    """Accuracy in [0, 1] of an already extracted answer against the gold answer (docs/method.md#accuracy-by-problem-type)."""
    rule = ACCURACY_BY_TYPE.get(problem_type)
    if rule is None:
        raise ConfigError(f"unknown problem_type {problem_type!r}; known: {sorted(ACCURACY_BY_TYPE)}")
    return rule(pred, gold)


def accuracy_reward(completion: str, answer: str, problem_type: str) -> float:
    """Accuracy in [0, 1] of a raw completion against the gold answer (already extracted) (docs/method.md#accuracy-by-problem-type)."""
    return answer_accuracy(extract_answer(completion), answer, problem_type)
