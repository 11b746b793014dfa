"""MLVU dev (the MLVU folder of MLVU/MVLU): the 7 multiple-choice tasks, the macro average of task accuracies.

Layout (the dataset card; lmms-eval `lmms_eval/tasks/mlvu/`): `json/<n>_<task>.json` (1_plotQA, 2_needle, 3_ego,
4_count, 5_order, 6_anomaly_reco, 7_topic_reasoning), a list of `{"video", "duration", "question",
"candidates": [...], "answer": <candidate text>, "question_type"}`; videos at `video/<n>_<task>/<video>`.
Ids are "<task>/<index>".
"""
from __future__ import annotations

from pathlib import Path

from framethink.data.records import Record
from framethink.eval.benchmarks.base import BenchmarkSpec, Item, ItemScore, gold_letter, json_list, lettered, scored
from framethink.eval.lmms_eval_rules import extract_mcq_answer

TASKS = ("plotQA", "needle", "ego", "count", "order", "anomaly_reco", "topic_reasoning")


def load(root: Path) -> list[Record]:
    records = []
    for number, task in enumerate(TASKS, 1):
        stem = f"{number}_{task}"
        file = root / "json" / f"{stem}.json"
        what = f"the MLVU dev task file of {task!r} (layout: json/<n>_<task>.json, video/<n>_<task>/...)"
        for index, obj in enumerate(json_list(file, what)):
            item = Item(obj, file, f"[{index}]")
            candidates = item.get("candidates", list)
            records.append(item.record(f"{task}/{index}", item.get("question"), lettered(candidates),
                                       item.candidate_letter(candidates), task,
                                       root / "video" / stem / item.get("video"),
                                       {"question_type": obj.get("question_type", task),
                                        "answer_text": str(obj.get("answer"))}))
    return records


def rule(line: dict, text: str) -> ItemScore:
    """lmms-eval v0.7.2 `lmms_eval/tasks/mlvu/utils.py` `mlvu_process_results` (`extract_mcq_answer` over A-D)
    and `mlvu_aggregate_results_dev` (every item answered; mean of the task accuracies)."""
    pred = extract_mcq_answer(text, choices=["A", "B", "C", "D"])
    if pred == "":
        return ItemScore(answer="", score=0.0, status="unparsable")
    return scored(pred, pred == gold_letter(line))


BENCHMARK = BenchmarkSpec(
    name="mlvu", help="MLVU dev, 7 multiple-choice tasks (json/<n>_<task>.json + video/), macro task mean",
    load=load, metric="task mean", official=rule, lmms_eval=rule,
    published={"tinyllava-video-sft-option": 49.2, "tinyllava-video-coldstart-reason": 28.6,
               "tinyllava-video-r1-reason": 52.4},
)
