"""Benchmark loaders (SPEC 7): each benchmark's released layout, and files in the Video-R1 record format.

`load_benchmark(spec, data_root)` resolves one `--bench` value:
- a path to a record file (`.json` / `.jsonl`, e.g. the synthetic test set) is loaded with
  `load_records`, media resolved against the file's folder, and named after the file's stem;
- a benchmark name loads the released layout in `DATA_ROOT/<name>/` when that folder exists, else the
  Video-R1-eval file `DATA_ROOT/eval_<name>.json` (SPEC 1.1; media resolved against DATA_ROOT).

Every record a loader returns has `source` = its task, `answer` = the gold option letter (multiple
choice) or number (numeric), options as "A. text", and `extra` holding the benchmark's metadata
(`question_type`, `duration` for Video-MME, `subtask` for VSI-Bench's relative direction).
Each loader checks that every annotation file and every video exists: a missing or misplaced file
raises a `DataError` that names the path that was expected.
"""
from __future__ import annotations

import json
import re
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from framethink.data.records import Record, load_records
from framethink.errors import ConfigError, DataError
from framethink.eval.scoring import DURATIONS
from framethink.rewards import normalize_option, parse_number

LETTERS = string.ascii_uppercase
_OPTION_LINE_RE = re.compile(r"[A-Z]\.\s")  # "A. text" at the start of a line


@dataclass
class Benchmark:
    name: str
    records: list[Record]
    origin: str  # where it was loaded from, for messages


# ---------------------------------------------------------------------------------------------
# Helpers: every fault names the file, the record and the field.


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataError(path, "-", "<file>", f"not found: expected {what} here")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(path, str(err.lineno), "<json>", f"not valid JSON: {err.msg} (column {err.colno})") from None


def _json_list(path: Path, what: str) -> list:
    data = _read_json(path, what)
    if not isinstance(data, list):
        raise DataError(path, "-", "<json>", f"expected a list of questions, got {type(data).__name__}")
    return data


def _parquet_rows(folder: Path, what: str) -> Iterator[tuple[Path, int, dict]]:
    """(file, row index, row) over the `test-*.parquet` shards in `folder` (the Hugging Face layout)."""
    shards = sorted(folder.glob("test-*.parquet"))
    if not shards:
        raise DataError(folder / "test-*.parquet", "-", "<file>", f"not found: expected {what} here")
    for shard in shards:
        for index, row in enumerate(pq.read_table(shard).to_pylist()):
            yield shard, index, row


def _lettered(texts: list) -> list[str]:
    return [f"{LETTERS[i]}. {text}" for i, text in enumerate(texts)]


class _Item:
    """One annotation record: typed field access and record building, each fault a DataError naming it."""

    def __init__(self, obj: Any, file: Path, where: str) -> None:
        self.obj, self.file, self.where = obj, file, where
        if not isinstance(obj, dict):
            raise self.error("<record>", f"expected an object, got {type(obj).__name__}")

    def error(self, field: str, reason: str) -> DataError:
        return DataError(self.file, self.where, field, reason)

    def get(self, key: str, types: type | tuple[type, ...] = str) -> Any:
        value = self.obj.get(key)
        if value is None or isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            got = "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
            raise self.error(key, f"expected {names}, got {got}")
        return value

    def video(self, path: Path, field: str) -> Path:
        if not path.exists():
            raise self.error(field, f"video not found: expected it at {path}")
        return path

    def candidate_letter(self, candidates: list) -> str:
        """MVBench and MLVU give the answer as the candidate's text: its letter."""
        texts, answer = [str(c) for c in candidates], str(self.obj.get("answer"))
        if answer not in texts:
            raise self.error("answer", f"{answer!r} is not one of the candidates {texts}")
        return LETTERS[texts.index(answer)]

    def letter(self, field: str, options: list[str]) -> str:
        """The gold letter in `field` ("B" or "B. text"), which must name one of the options."""
        answer = self.get(field)
        letter, letters = normalize_option(answer), [normalize_option(o) for o in options]
        if not letter or letter not in letters:
            raise self.error(field, f"{answer!r} is not the letter of one of the options {', '.join(letters)}")
        return letter

    def record(self, rid: str, question: str, options: list[str], answer: str, task: str, video: Path,
               extra: dict, problem_type: str = "multiple choice", **bounds: float) -> Record:
        return Record(id=rid, question=question, options=options, problem_type=problem_type, answer=answer,
                      solution=f"<answer>{answer}</answer>", media_kind="video", media=[video], source=task,
                      origin=f"{self.file}:{self.where}", extra=extra, **bounds)


# ---------------------------------------------------------------------------------------------
# Released layouts.

# task -> (video folder under video/, clip bounds). From MVBench's evaluation table (Ask-Anything).
MVBENCH_TASKS = {
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
MVBENCH_FRAME_FOLDER_FPS = {"episodic_reasoning": 3.0}  # clips stored as folders of JPEG frames


def load_mvbench(root: Path) -> list[Record]:
    """MVBench (OpenGVLab/MVBench): 20 tasks.

    Layout: `root/json/<task>.json` for each task of `MVBENCH_TASKS`, a list of
    `{"video", "question", "candidates": [...], "answer": <candidate text>, "start", "end"}`
    (start/end in seconds, for the tasks with bounds); videos at `root/video/<folder>/<video>` with the
    task's folder from `MVBENCH_TASKS`. episodic_reasoning's "video" is a folder of JPEG frames at 3 fps
    (`extra["fps"]`). Ids are "<task>/<index>".
    """
    records = []
    for task, (folder, bounded) in MVBENCH_TASKS.items():
        file = root / "json" / f"{task}.json"
        questions = _json_list(file, f"the MVBench task file of {task!r} (layout: json/<task>.json, video/<folder>/...)")
        for index, obj in enumerate(questions):
            item = _Item(obj, file, f"[{index}]")
            candidates = item.get("candidates", list)
            bounds = {k: float(item.get(k, (int, float))) for k in ("start", "end")} if bounded else {}
            extra = {"question_type": task}
            if task in MVBENCH_FRAME_FOLDER_FPS:
                extra["fps"] = MVBENCH_FRAME_FOLDER_FPS[task]
            records.append(item.record(f"{task}/{index}", item.get("question"), _lettered(candidates),
                                       item.candidate_letter(candidates), task,
                                       item.video(root / "video" / folder / item.get("video"), "video"), extra, **bounds))
    return records


def load_videomme(root: Path) -> list[Record]:
    """Video-MME (lmms-lab/Video-MME), without subtitles.

    Layout: `root/videomme/test-*.parquet` with columns question_id, videoID, duration
    (short | medium | long), domain, sub_category, task_type, question, options ["A. ...", ...],
    answer (a letter); videos at `root/data/<videoID>.mp4` (or .MP4 / .mkv). Task = task_type.
    """
    records = []
    what = "the Video-MME parquet (layout: videomme/test-*.parquet, data/<videoID>.mp4)"
    for file, index, row in _parquet_rows(root / "videomme", what):
        item = _Item(row, file, f"row {index}")
        duration = item.get("duration")
        if duration not in DURATIONS:
            raise item.error("duration", f"expected short, medium or long, got {duration!r}")
        candidates = [root / "data" / f"{item.get('videoID')}{ext}" for ext in (".mp4", ".MP4", ".mkv")]
        video = next((p for p in candidates if p.exists()), None)
        if video is None:
            raise item.error("videoID", f"video not found: expected it at {candidates[0]} (or .MP4 / .mkv)")
        options = item.get("options", list)
        extra = {"question_type": item.get("task_type"), "duration": duration,
                 "domain": row.get("domain"), "sub_category": row.get("sub_category")}
        records.append(item.record(item.get("question_id"), item.get("question"), options,
                                   item.letter("answer", options), item.get("task_type"), video, extra))
    return records


MLVU_TASKS = ("plotQA", "needle", "ego", "count", "order", "anomaly_reco", "topic_reasoning")  # json/1_plotQA.json ...


def load_mlvu(root: Path) -> list[Record]:
    """MLVU dev (the MLVU folder of MLVU/MVLU): the 7 multiple-choice tasks.

    Layout: `root/json/<n>_<task>.json` (1_plotQA, 2_needle, 3_ego, 4_count, 5_order, 6_anomaly_reco,
    7_topic_reasoning), a list of `{"video", "duration", "question", "candidates": [...],
    "answer": <candidate text>, "question_type"}`; videos at `root/video/<n>_<task>/<video>`.
    Ids are "<task>/<index>".
    """
    records = []
    for number, task in enumerate(MLVU_TASKS, 1):
        stem = f"{number}_{task}"
        file = root / "json" / f"{stem}.json"
        what = f"the MLVU dev task file of {task!r} (layout: json/<n>_<task>.json, video/<n>_<task>/...)"
        questions = _json_list(file, what)
        for index, obj in enumerate(questions):
            item = _Item(obj, file, f"[{index}]")
            candidates = item.get("candidates", list)
            records.append(item.record(f"{task}/{index}", item.get("question"), _lettered(candidates),
                                       item.candidate_letter(candidates), task,
                                       item.video(root / "video" / stem / item.get("video"), "video"),
                                       {"question_type": obj.get("question_type", task)}))
    return records


def load_mmvu(root: Path) -> list[Record]:
    """MMVU validation (yale-nlp/MMVU), multiple-choice subset.

    Layout: `root/validation.json`, a list of `{"id", "video": ".../resolve/main/videos/<Subject>/<n>.mp4",
    "question_type": "multiple-choice" | "open-ended", "metadata": {"subject"}, "question",
    "choices": {"A": ..., "E": ...}, "answer": <letter>}`; videos at `root/videos/<Subject>/<n>.mp4`
    (the part of the "video" URL after "resolve/main/"). Open-ended items are left out; empty
    choices are dropped. Task = subject.
    """
    file = root / "validation.json"
    records = []
    questions = _json_list(file, "the MMVU validation file (layout: validation.json, videos/<Subject>/<n>.mp4)")
    for index, obj in enumerate(questions):
        item = _Item(obj, file, f"[{index}]")
        if item.get("question_type") != "multiple-choice":
            continue
        options = [f"{k}. {v}" for k, v in sorted(item.get("choices", dict).items()) if str(v).strip()]
        video = item.video(root / item.get("video").split("resolve/main/", 1)[-1], "video")
        subject = _Item(item.get("metadata", dict), file, f"[{index}].metadata").get("subject")
        records.append(item.record(item.get("id"), item.get("question"), options, item.letter("answer", options),
                                   subject, video, {"question_type": "multiple-choice"}))
    return records


VSIBENCH_MC_TASKS = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard",
                     "object_rel_distance", "route_planning", "obj_appearance_order")
VSIBENCH_NUMERIC_TASKS = ("object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")


def load_vsibench(root: Path) -> list[Record]:
    """VSI-Bench (nyu-visionx/VSI-Bench): multiple-choice and numeric tasks.

    Layout: `root/test-*.parquet` with columns id, dataset (arkitscenes | scannet | scannetpp), scene_name,
    question_type, question, options (["A. ...", ...] for multiple choice, empty for numeric),
    ground_truth (a letter, or a number); videos at `root/<dataset>/<scene_name>.mp4`.
    Numeric tasks are "regression" records scored by MRA. The three relative-direction levels are one
    task, `object_rel_direction`, with the level in `extra["subtask"]`.
    """
    records = []
    what = "the VSI-Bench parquet (layout: test-*.parquet, <dataset>/<scene_name>.mp4)"
    for file, index, row in _parquet_rows(root, what):
        item = _Item(row, file, f"row {index}")
        qtype, rid, question = item.get("question_type"), str(item.get("id", (int, str))), item.get("question")
        video = item.video(root / item.get("dataset") / f"{item.get('scene_name')}.mp4", "scene_name")
        extra: dict = {"question_type": qtype}
        if qtype in VSIBENCH_MC_TASKS:
            options = item.get("options", list)
            task = qtype
            if qtype.startswith("object_rel_direction_"):
                task, extra["subtask"] = qtype.rsplit("_", 1)
            records.append(item.record(rid, question, options, item.letter("ground_truth", options), task, video, extra))
        elif qtype in VSIBENCH_NUMERIC_TASKS:
            gold = item.get("ground_truth")
            if parse_number(gold) is None:
                raise item.error("ground_truth", f"a numeric task needs a number, got {gold!r}")
            records.append(item.record(rid, question, [], gold, qtype, video, extra, problem_type="regression"))
        else:
            known = ", ".join(VSIBENCH_MC_TASKS + VSIBENCH_NUMERIC_TASKS)
            raise item.error("question_type", f"unknown {qtype!r}; known: {known}")
    return records


def _split_inline_options(item: _Item) -> tuple[str, list[str]]:
    """'question\\nA. x\\nB. y' -> ('question', ['A. x', 'B. y'])."""
    text = item.get("question")
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if _OPTION_LINE_RE.match(line)), 0)
    options = [line for line in lines[first:] if line.strip()]
    if first == 0 or [o[:2] for o in options] != [f"{c}." for c in LETTERS[: len(options)]]:
        raise item.error("question", f"expected a question then option lines 'A. ...', 'B. ...' in order, got {text[:80]!r}")
    return "\n".join(lines[:first]), options


def load_tempcompass(root: Path) -> list[Record]:
    """TempCompass (llyx97/TempCompass), multiple-choice task.

    Layout: `root/questions/multi-choice.json`, `{video_id: {dim: [{"question": "...\\nA. ...\\nB. ...",
    "answer": "B. ..."}]}}` with dims action, speed, direction, order, attribute_change; videos at
    `root/videos/<video_id>.mp4`. Task = dim; ids are "<video_id>/<dim>/<index>".
    """
    file = root / "questions" / "multi-choice.json"
    data = _Item(_read_json(file, "the TempCompass multi-choice file (layout: questions/multi-choice.json, "
                                  "videos/<video_id>.mp4)"), file, "-")
    records = []
    for video_id in data.obj:
        dims = _Item(data.get(video_id, dict), file, video_id)
        video = dims.video(root / "videos" / f"{video_id}.mp4", "<video_id>")
        for dim in dims.obj:
            for index, obj in enumerate(dims.get(dim, list)):
                item = _Item(obj, file, f"{video_id}.{dim}[{index}]")
                question, options = _split_inline_options(item)
                records.append(item.record(f"{video_id}/{dim}/{index}", question, options, item.letter("answer", options),
                                           dim, video, {"question_type": dim}))
    return records


VIDEOMMMU_TRACKS = ("Perception", "Comprehension", "Adaptation")
# subject -> video folder (one zip per discipline in the release)
VIDEOMMMU_FOLDERS = {
    **dict.fromkeys(("Art", "Art_Theory", "Design", "Music"), "Art"),
    **dict.fromkeys(("Biology", "Chemistry", "Geography", "Math", "Physics"), "Science"),
    **dict.fromkeys(("History", "Literature", "Sociology", "Psychology"), "Humanities"),
    **dict.fromkeys(("Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                     "Energy_and_Power", "Materials", "Mechanical_Engineering"), "Engineering"),
    **dict.fromkeys(("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                     "Pharmacy", "Public_Health"), "Medicine"),
    **dict.fromkeys(("Accounting", "Economics", "Finance", "Manage", "Marketing"), "Business"),
}
_VIDEOMMMU_ID_RE = re.compile(r"^[^_]+_(.+?)_\d+$")  # "validation_Art_Theory_12" -> "Art_Theory"


def load_videommmu(root: Path) -> list[Record]:
    """VideoMMMU (lmms-lab/VideoMMMU): Perception, Comprehension and Adaptation tracks.

    Layout: `root/<Track>/test-*.parquet` with columns id ("<split>_<Subject>_<n>"), question, options
    (list; empty for open questions), answer (a letter, or the open answer), question_type; videos at
    `root/<Discipline>/<id>.mp4`, the discipline folder from the subject (`VIDEOMMMU_FOLDERS`).
    Task = track; ids are "<Track>/<id>". Open questions with a numeric answer are "numerical",
    other open questions "free-form".
    """
    records = []
    for track in VIDEOMMMU_TRACKS:
        what = f"the VideoMMMU {track} parquet (layout: <Track>/test-*.parquet, <Discipline>/<id>.mp4)"
        for file, index, row in _parquet_rows(root / track, what):
            item = _Item(row, file, f"row {index}")
            vid = item.get("id")
            match = _VIDEOMMMU_ID_RE.match(vid)
            if match is None or match.group(1) not in VIDEOMMMU_FOLDERS:
                raise item.error("id", f"expected '<split>_<Subject>_<n>' with a known subject, got {vid!r}")
            video = item.video(root / VIDEOMMMU_FOLDERS[match.group(1)] / f"{vid}.mp4", "id")
            extra = {"question_type": row.get("question_type"), "subject": match.group(1)}
            options = [str(o) for o in row.get("options") or []]
            if options:
                if not all(o.startswith(f"{LETTERS[i]}.") for i, o in enumerate(options)):
                    options = _lettered(options)
                records.append(item.record(f"{track}/{vid}", item.get("question"), options,
                                           item.letter("answer", options), track, video, extra))
            else:
                answer = item.get("answer")
                ptype = "numerical" if parse_number(answer) is not None else "free-form"
                records.append(item.record(f"{track}/{vid}", item.get("question"), [], answer, track, video, extra,
                                           problem_type=ptype))
    return records


LOADERS: dict[str, Callable[[Path], list[Record]]] = {
    "mvbench": load_mvbench,
    "videomme": load_videomme,
    "mlvu": load_mlvu,
    "mmvu": load_mmvu,
    "vsibench": load_vsibench,
    "tempcompass": load_tempcompass,
    "videommmu": load_videommmu,
}
BENCHMARKS = tuple(LOADERS)


# ---------------------------------------------------------------------------------------------
# Resolution of --bench values.


def load_record_file(path: Path, name: str | None = None) -> Benchmark:
    """A file in the Video-R1 record format (SPEC 1.1), scored by problem_type; media resolve
    against the file's folder and must exist."""
    records = load_records(path)
    for record in records:
        file, _, where = record.origin.rpartition(":")
        for media in record.media:
            if not media.exists():
                raise DataError(file, where, record.media_field, f"media not found: expected it at {media}")
    return Benchmark(name=name or path.stem, records=records, origin=str(path))


def _check(bench: Benchmark) -> Benchmark:
    """Ids must be unique (resume keys on them) and numeric gold answers must parse."""
    seen: set[str] = set()
    for record in bench.records:
        file, _, where = record.origin.rpartition(":")
        if record.id in seen:
            raise DataError(file, where, "id", f"duplicate id {record.id!r} in benchmark {bench.name!r}")
        seen.add(record.id)
        if record.problem_type in ("numerical", "regression") and parse_number(record.answer) is None:
            raise DataError(file, where, "answer",
                            f"a {record.problem_type} record needs a numeric answer, got {record.answer!r}")
    if not bench.records:
        raise DataError(bench.origin, "-", "<records>", f"benchmark {bench.name!r} holds no items")
    return bench


def load_benchmark(spec: str, data_root: str | Path | None) -> Benchmark:
    """One `--bench` value: a benchmark name (see the module docstring) or a record file path."""
    path = Path(spec)
    if spec not in LOADERS:
        if path.suffix in (".json", ".jsonl") or path.is_file():
            if not path.is_file():
                raise DataError(path, "-", "<file>", "not found: expected a record file (Video-R1 format) here")
            return _check(load_record_file(path))
        raise ConfigError(f"unknown benchmark {spec!r}; known: {', '.join(BENCHMARKS)}, or a record file path")
    if data_root is None:
        raise ConfigError(f"benchmark {spec!r} needs --data-root (the folder holding {spec}/ or eval_{spec}.json)")
    root = Path(data_root)
    folder, video_r1_file = root / spec, root / f"eval_{spec}.json"
    if folder.is_dir():
        return _check(Benchmark(name=spec, records=LOADERS[spec](folder), origin=str(folder)))
    if video_r1_file.is_file():
        return _check(load_record_file(video_r1_file, name=spec))
    raise DataError(folder, "-", "<file>", f"not found: benchmark {spec!r} expects its released layout in "
                    f"{folder}/ or the Video-R1-eval file {video_r1_file}, and neither exists")


def load_benchmarks(specs: list[str], data_root: str | Path | None) -> list[Benchmark]:
    """Every `--bench` value, in order; two values with the same name raise ConfigError."""
    benches = [load_benchmark(spec, data_root) for spec in specs]
    names = [b.name for b in benches]
    for name in names:
        if names.count(name) > 1:
            origins = ", ".join(b.origin for b in benches if b.name == name)
            raise ConfigError(f"benchmark name {name!r} given twice ({origins})")
    return benches
