"""MVBench (OpenGVLab/MVBench): 20 tasks, accuracy over all items.

Layout (the dataset card; lmms-eval `lmms_eval/tasks/mvbench/`): `json/<task>.json` per task, a list of
`{"video", "question", "candidates": [...], "answer": <candidate text>, "start", "end"}` (start/end in seconds
for the sources with bounds); videos at `video/<folder>/<video>` with the task's folder from `TASKS`.
episodic_reasoning's "video" is a folder of JPEG frames at 3 fps. Ids are "<task>/<index>".
Scoring: lmms-eval's `mvbench_process_results` (`mcq_acc`), whose aggregation leaves empty outputs out.
"""
from __future__ import annotations

import re
from pathlib import Path

from framethink.data.records import Record
from framethink.eval.benchmarks.base import BenchmarkSpec, Item, ItemScore, gold_letter, json_list, lettered, scored

# task -> (video folder under video/, clip bounds). From MVBench's evaluation table (Ask-Anything).
TASKS = {
    "action_sequence": ("star/Charades_v1_480", True),
    "action_prediction": ("star/Charades_v1_480", True),
    "action_antonym": ("ssv2_video", False),
    "fine_grained_action": ("Moments_in_Time_Raw/videos", False),
    "unexpected_action": ("FunQA_test/test", False),
    "object_existence": ("clevrer/video_validation", False),
    "object_interaction": ("star/Charades_v1_480", True),
    "object_shuffle": ("perception/videos", False),
    "moving_direction": ("clevrer/video_validation", False),
    "action_localization": ("sta/sta_video", True),
    "scene_transition": ("scene_qa/video", False),
    "action_count": ("perception/videos", False),
    "moving_count": ("clevrer/video_validation", False),
    "moving_attribute": ("clevrer/video_validation", False),
    "state_change": ("perception/videos", False),
    "fine_grained_pose": ("nturgbd", False),
    "character_order": ("perception/videos", False),
    "egocentric_navigation": ("vlnqa", False),
    "episodic_reasoning": ("tvqa/frames_fps3_hq", True),
    "counterfactual_inference": ("clevrer/video_validation", False),
}
FRAME_FOLDER_FPS = {"episodic_reasoning": 3.0}  # clips stored as folders of JPEG frames


def load(root: Path) -> list[Record]:
    records = []
    for task, (folder, bounded) in TASKS.items():
        file = root / "json" / f"{task}.json"
        questions = json_list(file, f"the MVBench task file of {task!r} (layout: json/<task>.json, video/<folder>/...)")
        for index, obj in enumerate(questions):
            item = Item(obj, file, f"[{index}]")
            candidates = item.get("candidates", list)
            bounds = {k: float(item.get(k, (int, float))) for k in ("start", "end")} if bounded else {}
            extra = {"question_type": task, "answer_text": str(obj.get("answer"))}
            if task in FRAME_FOLDER_FPS:
                extra["fps"] = FRAME_FOLDER_FPS[task]
            records.append(item.record(f"{task}/{index}", item.get("question"), lettered(candidates),
                                       item.candidate_letter(candidates), task,
                                       root / "video" / folder / item.get("video"), extra, **bounds))
    return records


_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_OPTION_RE = re.compile(r"^([A-E])\.\s*(.+)$", re.IGNORECASE)
_LETTER_RE = re.compile(r"\b([A-E])\b", re.IGNORECASE)


def _process_punctuation(in_text: str) -> str:
    out_text = in_text
    for p in _PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (re.search(_COMMA_STRIP, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return _PERIOD_STRIP.sub("", out_text, re.UNICODE)


def _process(answer: str) -> str:
    match = _OPTION_RE.match(answer.strip())
    if match:
        return match.group(1).upper()
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    answer = _process_punctuation(answer)
    answer = answer.strip("'").strip('"').strip(")").strip("(").strip().lower()
    letter_match = _LETTER_RE.search(answer)
    if letter_match:
        return letter_match.group(1).upper()
    return answer


def mcq_acc(answer: str, pred: str) -> int:
    """lmms-eval `lmms_eval/tasks/mvbench/utils.py` `mcq_acc`: both sides normalised by `process` (an "X. text"
    prefix, else punctuation removed and the first standalone A-E letter), then compared."""
    return int(_process(pred) == _process(answer))


def rule(line: dict, text: str) -> ItemScore:
    """`mvbench_process_results` + `mvbench_aggregate_results` (lmms-eval v0.7.2): `mcq_acc` against the gold
    letter; an empty prediction is left out of the denominator."""
    if text == "":
        return ItemScore(answer="", score=0.0, status="unparsable", counted=False)
    parsed = _process(text)
    if len(parsed) != 1 or parsed not in "ABCDE":  # no option letter read: the rule scores it 0
        return ItemScore(answer="", score=float(mcq_acc(gold_letter(line), text)), status="unparsable")
    return scored(parsed, mcq_acc(gold_letter(line), text))


BENCHMARK = BenchmarkSpec(
    name="mvbench", help="MVBench: 20 tasks (json/<task>.json + video/), accuracy", load=load, metric="accuracy",
    official=rule, lmms_eval=rule,
    published={"qwen2.5-vl-7b-cot-16f": 57.4, "qwen2.5-vl-7b-cot-32f": 59.0, "qwen2.5-vl-7b-sft-16f": 59.4,
               "qwen2.5-vl-7b-sft-32f": 60.5, "video-r1-7b-16f": 62.7, "video-r1-7b-32f": 63.9,
               "video-r1-7b-wo-image-16f": 60.9, "video-r1-7b-wo-temporal-16f": 61.1,
               "tinyllava-video-sft-option": 49.0, "tinyllava-video-coldstart-reason": 33.2,
               "tinyllava-video-r1-reason": 49.5},
)
