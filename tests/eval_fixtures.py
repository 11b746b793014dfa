"""Small fixtures in each benchmark's released layout, and a scripted stand-in for a model.

Videos are empty files: loaders only check that they exist; decoding is the adapter's job.
Each writer returns the benchmark folder it wrote.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from framethink.data.prompts import format_question
from framethink.data.records import Record
from framethink.eval.benchmarks.mvbench import TASKS as MVBENCH_TASKS
from framethink.models.adapter import Decoding, EncodedPrompt


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_mvbench(data_root: Path) -> Path:
    """One question per task (gold 'green' = B), two for action_sequence (the second's gold 'stand' = A).
    Tasks with bounds get start 1.5 / end 4.0; episodic_reasoning's clip is a folder of frames."""
    root = data_root / "mvbench"
    for task, (folder, bounded) in MVBENCH_TASKS.items():
        items = [{"video": f"{task}_0.mp4", "question": f"What is the colour in {task}?",
                  "candidates": ["red", "green", "blue"], "answer": "green"}]
        if task == "action_sequence":
            items.append({"video": "seq_1.mp4", "question": "What did the person do?",
                          "candidates": ["stand", "sit"], "answer": "stand"})
        if task == "episodic_reasoning":
            items[0]["video"] = "clip_0"
            touch(root / "video" / folder / "clip_0" / "00001.jpg")
        else:
            for item in items:
                touch(root / "video" / folder / item["video"])
        if bounded:
            for item in items:
                item.update(start=1.5, end=4.0)
        write_json(root / "json" / f"{task}.json", items)
    return root


_VIDEOMME_OPTIONS = ["A. one", "B. two", "C. three", "D. four"]


def write_videomme(data_root: Path) -> Path:
    """Six questions, two per duration; gold letters A, B, C, D, A, B; video 003 is an .mkv."""
    root = data_root / "videomme"
    rows = []
    for i, (duration, answer) in enumerate(zip(["short", "short", "medium", "medium", "long", "long"], "ABCDAB")):
        video_id = f"00{i // 2 + 1}"
        rows.append({"video_id": video_id, "duration": duration, "domain": "Knowledge", "sub_category": "Astronomy",
                     "url": "https://example.invalid", "videoID": f"vid{video_id}", "question_id": f"{video_id}-{i % 2 + 1}",
                     "task_type": "Counting Problem" if i % 2 == 0 else "OCR Problems",
                     "question": f"How many stars are there in scene {i}?", "options": _VIDEOMME_OPTIONS, "answer": answer})
    write_parquet(root / "videomme" / "test-00000-of-00001.parquet", rows)
    for video_id in ("001", "002"):
        touch(root / "data" / f"vid{video_id}.mp4")
    touch(root / "data" / "vid003.mkv")
    return root


MLVU_FIXTURE = {  # task -> [(candidates, answer)]
    "plotQA": [(["a cat", "a dog"], "a dog"), (["left", "right", "up"], "left"), (["1", "2", "3", "4"], "3")],
    "needle": [(["red", "blue"], "blue")],
    "ego": [(["knife", "fork"], "knife")],
    "count": [(["2", "3", "4"], "4")],
    "order": [(["ABC", "CBA"], "CBA")],
    "anomaly_reco": [(["fight", "none"], "fight")],
    "topic_reasoning": [(["sports", "cooking"], "cooking")],
}


def write_mlvu(data_root: Path) -> Path:
    root = data_root / "mlvu"
    for number, (task, items) in enumerate(MLVU_FIXTURE.items(), 1):
        stem = f"{number}_{task}"
        questions = []
        for index, (candidates, answer) in enumerate(items):
            video = f"{task}_{index}.mp4"
            touch(root / "video" / stem / video)
            questions.append({"video": video, "duration": 300.0, "question": f"Question {index} about {task}?",
                              "candidates": candidates, "answer": answer, "question_type": task})
        write_json(root / "json" / f"{stem}.json", questions)
    return root


def write_mmvu(data_root: Path) -> Path:
    """Four items: one open-ended (left out), three multiple choice (Chemistry x2, Art)."""
    root = data_root / "mmvu"
    url = "https://huggingface.co/datasets/yale-nlp/MMVU/resolve/main/videos/{}/{}.mp4"
    empty = dict.fromkeys("ABCDE", "")
    items = [
        {"id": "validation_0", "video": url.format("Art", 0), "question_type": "open-ended",
         "metadata": {"subject": "Art"}, "question": "Which technique?", "choices": empty, "answer": "Dolly Zoom"},
        {"id": "validation_1", "video": url.format("Chemistry", 0), "question_type": "multiple-choice",
         "metadata": {"subject": "Chemistry"}, "question": "How many grams?",
         "choices": {"A": "10.0", "B": "5.0", "C": "12.0", "D": "15.0", "E": "20.0"}, "answer": "A"},
        {"id": "validation_2", "video": url.format("Chemistry", 1), "question_type": "multiple-choice",
         "metadata": {"subject": "Chemistry"}, "question": "Which gas?",
         "choices": {"A": "O2", "B": "CO2", "C": "N2", "D": "H2", "E": ""}, "answer": "B"},
        {"id": "validation_3", "video": url.format("Art", 1), "question_type": "multiple-choice",
         "metadata": {"subject": "Art"}, "question": "Which style?",
         "choices": {"A": "baroque", "B": "cubism", "C": "gothic", "D": "pop", "E": "dada"}, "answer": "E"},
    ]
    for item in items:
        touch(root / item["video"].split("resolve/main/")[1])
    write_json(root / "validation.json", items)
    return root


def write_vsibench(data_root: Path) -> Path:
    """Relative direction easy x1, medium x1, hard x3; route planning x1; counting x1 (gold 10);
    room size x2 (gold 20)."""
    root = data_root / "vsibench"
    mc = ["A. left", "B. right", "C. back", "D. front"]
    spec = [("object_rel_direction_easy", "A"), ("object_rel_direction_medium", "B"),
            ("object_rel_direction_hard", "C"), ("object_rel_direction_hard", "D"), ("object_rel_direction_hard", "A"),
            ("route_planning", "B"), ("object_counting", "10"), ("room_size_estimation", "20"),
            ("room_size_estimation", "20")]
    rows = []
    for i, (qtype, gold) in enumerate(spec):
        numeric = gold.isdigit()
        rows.append({"id": i, "dataset": "scannet" if i % 2 else "arkitscenes", "scene_name": f"scene{i}",
                     "question_type": qtype, "question": f"Question {i}?", "ground_truth": gold,
                     "options": None if numeric else mc})
        touch(root / rows[-1]["dataset"] / f"scene{i}.mp4")
    write_parquet(root / "test-00000-of-00001.parquet", rows)
    return root


def write_tempcompass(data_root: Path) -> Path:
    """Video 100: action x2, direction x1; video 200: order x1."""
    root = data_root / "tempcompass"
    data = {
        "100": {"action": [{"question": "What is the man doing?\nA. dunking\nB. dribbling\nC. passing", "answer": "A. dunking"},
                           {"question": "Which activity?\nA. passing\nB. dribbling\nC. dunking", "answer": "C. dunking"}],
                "direction": [{"question": "Which way does he move?\nA. left\nB. right", "answer": "B. right"}]},
        "200": {"order": [{"question": "What happens first?\nA. jump\nB. run\nC. sit\nD. fall", "answer": "D. fall"}]},
    }
    for video_id in data:
        touch(root / "videos" / f"{video_id}.mp4")
    write_json(root / "questions" / "multi-choice.json", data)
    return root


# Items copied from TempCompass's released questions/multi-choice.json (llyx97/TempCompass), quirks kept as published.
TEMPCOMPASS_RELEASE_ITEMS = {
    "1100319395_reverse": {"direction": [
        {"question": "What direction is the circular pattern moving?\nA. clockwise\nB. moving towards the camera\n"
                     "C. counter-clockwise\nD. moving away from the camera", "answer": "C. counter-clockwise"},
        {"question": "Which way is the circular pattern moving?\nA. spinning clockwise\nB. spinning "
                     "counter-clockwise\nC. vibrating back and forth", "answer": "B. spinning counter-clockwise"},
        {"question": "In which direction is the circular pattern spinning?\nA. towards the screen\nB. anticlockwise"
                     "\nC. clockwise\n D. away from the screen", "answer": "B. anticlockwise"},
    ]},
    "1083113449": {"speed": [  # the release's item [1]
        {"question": "What type of speed is applied to the video?\nA. rewind\nB. time-lapse\nC. slow ",
         "answer": "B. time-lapse"}]},
    "1022115337": {"order": [  # the release's items [1] and [2]
        {"question": "Which event occurs first?\nA. dancing\nB. sending an air kiss\nC.Both events happen at the "
                     "same time", "answer": "A. dancing"},
        {"question": "Which event occurs second?\nA. dancing\nB. sending an air kiss\nC.Both events happen at the "
                     "same time", "answer": "B. sending an air kiss"},
    ]},
}


def write_tempcompass_release_quirks(data_root: Path) -> Path:
    """TempCompass in its released layout with the option-line quirks of the real file."""
    root = data_root / "tempcompass"
    for video_id in TEMPCOMPASS_RELEASE_ITEMS:
        touch(root / "videos" / f"{video_id}.mp4")
    write_json(root / "questions" / "multi-choice.json", TEMPCOMPASS_RELEASE_ITEMS)
    return root


def write_videommmu(data_root: Path) -> Path:
    """Perception: Art (options unlettered), Biology; Comprehension: Finance; Adaptation: Math (MC),
    Physics (open, gold 42)."""
    root = data_root / "videommmu"
    tracks = {
        "Perception": [("validation_Art_1", ["red", "blue", "green"], "C", "multiple-choice"),
                       ("validation_Biology_2", ["A. cell", "B. atom"], "A", "multiple-choice")],
        "Comprehension": [("validation_Finance_3", ["A. 5%", "B. 10%"], "B", "multiple-choice")],
        "Adaptation": [("validation_Math_4", ["A. 1", "B. 2", "C. 3"], "B", "multiple-choice"),
                       ("validation_Physics_5", [], "42", "open")],
    }
    folders = {"Art": "Art", "Biology": "Science", "Finance": "Business", "Math": "Science", "Physics": "Science"}
    for track, items in tracks.items():
        rows = [{"id": vid, "question": f"Question on {vid}?", "options": options, "answer": answer,
                 "question_type": qtype, "link_selected": ""} for vid, options, answer, qtype in items]
        write_parquet(root / track / "test-00000-of-00001.parquet", rows)
        for vid, *_ in items:
            touch(root / folders[vid.split("_")[1]] / f"{vid}.mp4")
    return root


def write_video_r1_file(path: Path) -> Path:
    """A Video-R1-format file: three multiple choice, one numerical, one regression item, two tasks."""
    folder = path.parent
    records = [
        {"problem_id": 1, "problem": "Which colour comes first?", "data_type": "video", "problem_type": "multiple choice",
         "options": ["A. red", "B. green"], "solution": "<answer>A</answer>", "path": "./videos/a.mp4", "data_source": "first"},
        {"problem_id": 2, "problem": "Which colour comes last?", "data_type": "video", "problem_type": "multiple choice",
         "options": ["A. red", "B. green"], "solution": "<answer>B</answer>", "path": "./videos/b.mp4", "data_source": "last"},
        {"problem_id": 3, "problem": "Which colour comes first?", "data_type": "video", "problem_type": "multiple choice",
         "options": ["A. red", "B. green", "C. blue"], "solution": "<answer>C</answer>", "path": "./videos/c.mp4", "data_source": "first"},
        {"problem_id": 4, "problem": "How many squares?", "data_type": "video", "problem_type": "numerical",
         "options": [], "solution": "<answer>3</answer>", "path": "./videos/d.mp4", "data_source": "last"},
        {"problem_id": 5, "problem": "How long is it (m)?", "data_type": "video", "problem_type": "regression",
         "options": [], "solution": "<answer>10</answer>", "path": "./videos/e.mp4", "data_source": "last"},
    ]
    for name in "abcde":
        touch(folder / "videos" / f"{name}.mp4")
    return write_json(path, records)


class ScriptedAdapter:
    """A stand-in for a model: `answer(record, frame_order)` is its output for each item.

    It formats each prompt with the real template (so a template that cannot format a record fails as
    with a real model), records the ids of every generate call, and can raise on a given call to
    simulate a crash mid-run.
    """

    name = "scripted"
    default_template = "video-r1-eval"

    def __init__(self, answer: Callable[[Record, str], str], *, crash_on_call: int | None = None) -> None:
        self.answer, self.crash_on_call = answer, crash_on_call
        self.calls: list[list[str]] = []
        self.seeds: dict[str, int] = {}

    def encode(self, record: Record, *, template: str, frame_order: str = "ordered", seed: int = 0) -> EncodedPrompt:
        self.seeds[record.id] = seed
        return EncodedPrompt(record=record, inputs={}, frame_order=frame_order,
                             meta={"text": format_question(record, template)})

    def generate_texts(self, prompts: list[EncodedPrompt], decoding: Decoding) -> list[str]:
        if self.crash_on_call is not None and len(self.calls) == self.crash_on_call:
            raise KeyboardInterrupt  # the process is stopped: nothing of this batch is written
        self.calls.append([p.record.id for p in prompts])
        return [self.answer(p.record, p.frame_order) for p in prompts]


def scripted(outputs: dict[str, str]) -> ScriptedAdapter:
    """An adapter answering outputs[record.id] whatever the frame order."""
    return ScriptedAdapter(lambda record, _order: outputs[record.id])
