"""Video-MME (lmms-lab/Video-MME), without subtitles: accuracy, and per duration (short / medium / long).

Layout (the dataset card; lmms-eval `lmms_eval/tasks/videomme/`): `videomme/test-*.parquet` with columns
question_id, videoID, duration (short | medium | long), domain, sub_category, task_type, question, options
["A. ...", ...], answer (a letter); videos at `data/<videoID>.mp4` (or .MP4 / .mkv). Task = task_type.
"""
from __future__ import annotations

import re
from pathlib import Path

from framethink.data.records import Record
from framethink.eval.benchmarks.base import BenchmarkSpec, Item, ItemScore, abcd_rule, gold_letter, parquet_rows, scored

DURATIONS = ("short", "medium", "long")
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv")


def load(root: Path) -> list[Record]:
    records = []
    what = "the Video-MME parquet (layout: videomme/test-*.parquet, data/<videoID>.mp4)"
    for file, index, row in parquet_rows(root / "videomme", what):
        item = Item(row, file, f"row {index}")
        duration = item.get("duration")
        if duration not in DURATIONS:
            raise item.error("duration", f"expected short, medium or long, got {duration!r}")
        candidates = [root / "data" / f"{item.get('videoID')}{ext}" for ext in VIDEO_SUFFIXES]
        video = next((p for p in candidates if p.exists()), candidates[0])
        options = item.get("options", list)
        extra = {"question_type": item.get("task_type"), "duration": duration,
                 "domain": row.get("domain"), "sub_category": row.get("sub_category")}
        records.append(item.record(item.get("question_id"), item.get("question"), options,
                                   item.letter("answer", options), item.get("task_type"), video, extra))
    return records


# The list as released, including its two missing commas (four phrases fuse into two that never match).
_ANSWER_PREFIXES = [
    "The best answer is", "The correct answer is", "The answer is", "The answer",
    "The best option is" "The correct option is",  # noqa: ISC001 - the released list lacks this comma
    "Best answer:" "Best option:",  # noqa: ISC001 - and this one
]


def extract_characters_regex(s: str) -> str:
    """BradyFU/Video-MME `evaluation/eval_your_results.py` `extract_characters_regex`: remove the answer phrases,
    give up on a long answer (> 10 words) holding no A-D, else the first A, B, C or D anywhere."""
    s = s.strip()
    for answer_prefix in _ANSWER_PREFIXES:
        s = s.replace(answer_prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return ""
    matches = re.search(r"[ABCD]", s)
    if matches is None:
        return ""
    return matches[0]


def official(line: dict, text: str) -> ItemScore:
    """`eval_your_results`: an item whose extraction is empty is not "answered" and leaves the denominator."""
    pred = extract_characters_regex(text)
    if pred == "":
        return ItemScore(answer="", score=0.0, status="unparsable", counted=False)
    return scored(pred, pred == gold_letter(line))


BENCHMARK = BenchmarkSpec(
    name="videomme", help="Video-MME w/o subtitles (videomme/test-*.parquet + data/), accuracy and per duration",
    load=load, metric="accuracy", official=official, lmms_eval=abcd_rule,  # lmms-eval's videomme_process_results
    published={"qwen2.5-vl-7b-cot-16f": 53.1, "qwen2.5-vl-7b-cot-32f": 56.6, "qwen2.5-vl-7b-sft-16f": 52.8,
               "qwen2.5-vl-7b-sft-32f": 55.4, "video-r1-7b-16f": 57.4, "video-r1-7b-32f": 59.3,
               "video-r1-7b-wo-temporal-16f": 54.5, "tinyllava-video-sft-option": 42.2,
               "tinyllava-video-coldstart-reason": 26.6, "tinyllava-video-r1-reason": 46.6},
)
