"""MMVU validation (yale-nlp/MMVU), multiple-choice subset: accuracy.

Layout (the dataset card; lmms-eval `lmms_eval/tasks/mmvu/`): `validation.json`, a list of `{"id",
"video": ".../resolve/main/videos/<Subject>/<n>.mp4", "question_type": "multiple-choice" | "open-ended",
"metadata": {"subject"}, "question", "choices": {"A": ..., "E": ...}, "answer": <letter>}`; videos at
`videos/<Subject>/<n>.mp4` (the part of the "video" URL after "resolve/main/"). Open-ended items are left out;
empty choices are dropped. Task = subject.
"""
from __future__ import annotations

import re
import string
from pathlib import Path

from framethink.data.records import Record
from framethink.eval.benchmarks.base import (
    BenchmarkSpec,
    Item,
    ItemScore,
    gold_letter,
    json_list,
    option_texts,
    scored,
)


def load(root: Path) -> list[Record]:
    file = root / "validation.json"
    records = []
    questions = json_list(file, "the MMVU validation file (layout: validation.json, videos/<Subject>/<n>.mp4)")
    for index, obj in enumerate(questions):
        item = Item(obj, file, f"[{index}]")
        if item.get("question_type") != "multiple-choice":
            continue
        options = [f"{k}. {v}" for k, v in sorted(item.get("choices", dict).items()) if str(v).strip()]
        video = root / item.get("video").split("resolve/main/", 1)[-1]
        subject = Item(item.get("metadata", dict), file, f"[{index}].metadata").get("subject")
        # every choice key, empty ones too: TinyLLaVA-Video-R1's eval_mmvu.py guesses among all of them
        extra = {"question_type": "multiple-choice", "all_choices": sorted(item.get("choices", dict))}
        records.append(item.record(item.get("id"), item.get("question"), options, item.letter("answer", options),
                                   subject, video, extra))
    return records


def evaluate_with_rule_based(choices: dict[str, str], answer: str, prediction: str) -> bool:
    """lmms-eval v0.7.2 `lmms_eval/tasks/mmvu/utils.py` `evaluate_with_rule_based`, multiple-choice branch: the
    first standalone A-E letter; else the gold letter standing alone; else the gold choice's text in the output,
    or the gold letter together with one of that text's words longer than two characters."""
    pred_str, answer_str = str(prediction).strip(), str(answer).strip()
    letter_match = re.search(r"\b([A-E])\b", pred_str, re.IGNORECASE)
    if letter_match and letter_match.group(1).upper() == answer_str.upper():
        return True
    if answer_str.upper() in pred_str.upper() and re.search(rf"\b{re.escape(answer_str)}\b", pred_str, re.IGNORECASE):
        return True
    if answer_str in choices:
        choice_text = choices[answer_str].strip().lower()
        pred_lower = pred_str.lower()
        if choice_text in pred_lower:
            return True
        if answer_str.upper() in pred_str.upper():
            words = [w.strip(string.punctuation) for w in choice_text.split() if len(w.strip(string.punctuation)) > 2]
            if words and any(word in pred_lower for word in words):
                return True
    return False


def rule(line: dict, text: str) -> ItemScore:
    """`mmvu_process_results` for a multiple-choice item: rule-based only (lmms-eval calls its judge for
    open-ended items alone); the logged answer is the first standalone A-E letter."""
    correct = evaluate_with_rule_based(option_texts(line), gold_letter(line), text)
    letter = re.search(r"\b([A-E])\b", text)
    if letter is None and not correct:
        return ItemScore(answer="", score=0.0, status="unparsable")
    return scored(letter.group(1) if letter else gold_letter(line), correct)


BENCHMARK = BenchmarkSpec(
    name="mmvu", help="MMVU validation, multiple-choice subset (validation.json + videos/), accuracy",
    load=load, metric="accuracy", official=rule, lmms_eval=rule,
    published={"qwen2.5-vl-7b-cot-16f": 59.2, "qwen2.5-vl-7b-cot-32f": 60.0, "qwen2.5-vl-7b-sft-16f": 61.3,
               "qwen2.5-vl-7b-sft-32f": 63.5, "video-r1-7b-16f": 64.2, "video-r1-7b-32f": 63.8,
               "video-r1-7b-wo-image-16f": 60.6, "video-r1-7b-wo-temporal-16f": 62.1,
               "tinyllava-video-sft-option": 46.1, "tinyllava-video-coldstart-reason": 22.7,
               "tinyllava-video-r1-reason": 46.9},
)
