"""MLVU dev (the MLVU folder of MLVU/MVLU): the 7 multiple-choice tasks, the macro average of task accuracies.

Layout (the dataset card; lmms-eval `lmms_eval/tasks/mlvu/`): `json/<n>_<task>.json` (1_plotQA, 2_needle, 3_ego,
4_count, 5_order, 6_anomaly_reco, 7_topic_reasoning), a list of `{"video", "duration", "question",
"candidates": [...], "answer": <candidate text>, "question_type"}`; videos at `video/<n>_<task>/<video>`.
Ids are "<task>/<index>".
"""
from __future__ import annotations

from pathlib import Path

from framethink.data.records import Record
from framethink.eval.benchmarks.base import BenchmarkSpec, Item, abcd_rule, json_list, lettered

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


BENCHMARK = BenchmarkSpec(
    name="mlvu", help="MLVU dev, 7 multiple-choice tasks (json/<n>_<task>.json + video/), macro task mean",
    # both: lmms-eval's `mlvu_process_results` + `mlvu_aggregate_results_dev` (mean of the task accuracies), on the
    # answer text (official) or on the reasoning-stripped output (lmms-eval)
    load=load, metric="task mean", official=abcd_rule, lmms_eval=abcd_rule,
    published={"tinyllava-video-sft-option": 49.2, "tinyllava-video-coldstart-reason": 28.6,
               "tinyllava-video-r1-reason": 52.4},
)
