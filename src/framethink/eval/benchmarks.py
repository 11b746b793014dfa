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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from framethink.data.records import Record, load_records
from framethink.errors import ConfigError, DataError
from framethink.rewards import normalize_option, parse_number

LETTERS = string.ascii_uppercase
_OPTION_LINE_RE = re.compile(r"([A-Z])\.\s")  # "A. text" at the start of a line


@dataclass
class Benchmark:
    name: str
    records: list[Record]
    origin: str  # where it was loaded from, for messages


# ---------------------------------------------------------------------------------------------
# Helpers: every fault names the file, the record and the field.


def _expect_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(path, "-", "<file>", f"not found: expected {what} here")
    return path


def _read_json(path: Path, what: str) -> Any:
    _expect_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(path, str(err.lineno), "<json>", f"not valid JSON: {err.msg} (column {err.colno})") from None


def _read_parquet(folder: Path, what: str) -> tuple[Path, list[dict]]:
    """Rows of the `test-*.parquet` shards in `folder` (the Hugging Face dataset layout)."""
    shards = sorted(folder.glob("test-*.parquet"))
    if not shards:
        raise DataError(folder / "test-*.parquet", "-", "<file>", f"not found: expected {what} here")
    return shards[0], [row for shard in shards for row in pq.read_table(shard).to_pylist()]


def _get(obj: Any, key: str, types: type | tuple[type, ...], file: Path, where: str) -> Any:
    if not isinstance(obj, dict):
        raise DataError(file, where, "<record>", f"expected an object, got {type(obj).__name__}")
    value = obj.get(key)
    if value is None or isinstance(value, bool) or not isinstance(value, types):
        names = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
        got = "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]
        raise DataError(file, where, key, f"expected {names}, got {got}")
    return value


def _list(data: Any, file: Path, what: str) -> list:
    if not isinstance(data, list):
        raise DataError(file, "-", "<json>", f"expected a list of {what}, got {type(data).__name__}")
    return data


def _video(path: Path, file: Path, where: str, field: str) -> Path:
    if not path.exists():
        raise DataError(file, where, field, f"video not found: expected it at {path}")
    return path


def _lettered(texts: list[str]) -> list[str]:
    return [f"{LETTERS[i]}. {text}" for i, text in enumerate(texts)]


def _letter_of(candidates: list, answer: Any, file: Path, where: str) -> str:
    """MVBench and MLVU give the answer as the candidate's text: its letter."""
    texts = [str(c) for c in candidates]
    if str(answer) not in texts:
        raise DataError(file, where, "answer", f"{answer!r} is not one of the candidates {texts}")
    return LETTERS[texts.index(str(answer))]


def _check_letter(answer: str, options: list[str], file: Path, where: str, field: str) -> str:
    letter = normalize_option(answer)
    if not letter or letter not in LETTERS[: len(options)]:
        raise DataError(file, where, field, f"{answer!r} is not the letter of one of the {len(options)} options")
    return letter


def _mc(rid: str, question: str, options: list[str], answer: str, task: str, video: Path, origin: str,
        extra: dict, **bounds: float | None) -> Record:
    return Record(id=rid, question=question, options=options, problem_type="multiple choice", answer=answer,
                  solution=f"<answer>{answer}</answer>", media_kind="video", media=[video], source=task,
                  origin=origin, extra=extra, **bounds)


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
        items = _list(_read_json(file, f"the MVBench task file of {task!r} (layout: json/<task>.json, video/<folder>/...)"),
                      file, "questions")
        for index, item in enumerate(items):
            where = f"[{index}]"
            candidates = _get(item, "candidates", list, file, where)
            bounds = {}
            if bounded:
                bounds = {k: float(_get(item, k, (int, float), file, where)) for k in ("start", "end")}
            extra = {"question_type": task}
            if task in MVBENCH_FRAME_FOLDER_FPS:
                extra["fps"] = MVBENCH_FRAME_FOLDER_FPS[task]
            video = _video(root / "video" / folder / _get(item, "video", str, file, where), file, where, "video")
            records.append(_mc(f"{task}/{index}", _get(item, "question", str, file, where), _lettered(candidates),
                               _letter_of(candidates, item.get("answer"), file, where), task, video,
                               f"{file}:{where}", extra, **bounds))
    return records


def load_videomme(root: Path) -> list[Record]:
    """Video-MME (lmms-lab/Video-MME), without subtitles.

    Layout: `root/videomme/test-*.parquet` with columns question_id, videoID, duration
    (short | medium | long), domain, sub_category, task_type, question, options ["A. ...", ...],
    answer (a letter); videos at `root/data/<videoID>.mp4` (or .MP4 / .mkv). Task = task_type.
    """
    file, rows = _read_parquet(root / "videomme", "the Video-MME parquet (layout: videomme/test-*.parquet, data/<videoID>.mp4)")
    records = []
    for index, row in enumerate(rows):
        where = f"row {index}"
        duration = _get(row, "duration", str, file, where)
        if duration not in ("short", "medium", "long"):
            raise DataError(file, where, "duration", f"expected short, medium or long, got {duration!r}")
        options = _get(row, "options", list, file, where)
        video_id = _get(row, "videoID", str, file, where)
        candidates = [root / "data" / f"{video_id}{ext}" for ext in (".mp4", ".MP4", ".mkv")]
        video = next((p for p in candidates if p.exists()), None)
        if video is None:
            raise DataError(file, where, "videoID", f"video not found: expected it at {candidates[0]} (or .MP4 / .mkv)")
        extra = {"question_type": row.get("task_type"), "duration": duration,
                 "domain": row.get("domain"), "sub_category": row.get("sub_category")}
        records.append(_mc(str(_get(row, "question_id", str, file, where)), _get(row, "question", str, file, where),
                           options, _check_letter(_get(row, "answer", str, file, where), options, file, where, "answer"),
                           _get(row, "task_type", str, file, where), video, f"{file}:{where}", extra))
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
        items = _list(_read_json(file, f"the MLVU dev task file of {task!r} (layout: json/<n>_<task>.json, video/<n>_<task>/...)"),
                      file, "questions")
        for index, item in enumerate(items):
            where = f"[{index}]"
            candidates = _get(item, "candidates", list, file, where)
            video = _video(root / "video" / stem / _get(item, "video", str, file, where), file, where, "video")
            records.append(_mc(f"{task}/{index}", _get(item, "question", str, file, where), _lettered(candidates),
                               _letter_of(candidates, item.get("answer"), file, where), task, video,
                               f"{file}:{where}", {"question_type": item.get("question_type", task)}))
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
    items = _list(_read_json(file, "the MMVU validation file (layout: validation.json, videos/<Subject>/<n>.mp4)"),
                  file, "questions")
    records = []
    for index, item in enumerate(items):
        where = f"[{index}]"
        if _get(item, "question_type", str, file, where) != "multiple-choice":
            continue
        choices = _get(item, "choices", dict, file, where)
        options = [f"{k}. {v}" for k, v in sorted(choices.items()) if str(v).strip()]
        url = _get(item, "video", str, file, where)
        video = _video(root / url.split("resolve/main/", 1)[-1], file, where, "video")
        subject = _get(_get(item, "metadata", dict, file, where), "subject", str, file, where)
        records.append(_mc(str(_get(item, "id", str, file, where)), _get(item, "question", str, file, where),
                           options, _check_letter(_get(item, "answer", str, file, where), options, file, where, "answer"),
                           subject, video, f"{file}:{where}", {"question_type": "multiple-choice"}))
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
    file, rows = _read_parquet(root, "the VSI-Bench parquet (layout: test-*.parquet, <dataset>/<scene_name>.mp4)")
    records = []
    for index, row in enumerate(rows):
        where = f"row {index}"
        qtype = _get(row, "question_type", str, file, where)
        video = _video(root / _get(row, "dataset", str, file, where) / f"{_get(row, 'scene_name', str, file, where)}.mp4",
                       file, where, "scene_name")
        gold = _get(row, "ground_truth", str, file, where)
        rid, question, origin = str(_get(row, "id", (int, str), file, where)), _get(row, "question", str, file, where), f"{file}:{where}"
        extra: dict = {"question_type": qtype}
        if qtype in VSIBENCH_MC_TASKS:
            options = _get(row, "options", list, file, where)
            task = qtype
            if qtype.startswith("object_rel_direction_"):
                task, extra["subtask"] = qtype.rsplit("_", 1)
            records.append(_mc(rid, question, options, _check_letter(gold, options, file, where, "ground_truth"),
                               task, video, origin, extra))
        elif qtype in VSIBENCH_NUMERIC_TASKS:
            if parse_number(gold) is None:
                raise DataError(file, where, "ground_truth", f"a numeric task needs a number, got {gold!r}")
            records.append(Record(id=rid, question=question, options=[], problem_type="regression", answer=gold,
                                  solution=f"<answer>{gold}</answer>", media_kind="video", media=[video],
                                  source=qtype, origin=origin, extra=extra))
        else:
            raise DataError(file, where, "question_type",
                            f"unknown {qtype!r}; known: {', '.join(VSIBENCH_MC_TASKS + VSIBENCH_NUMERIC_TASKS)}")
    return records


def _split_inline_options(text: str, file: Path, where: str) -> tuple[str, list[str]]:
    """'question\\nA. x\\nB. y' -> ('question', ['A. x', 'B. y'])."""
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if _OPTION_LINE_RE.match(line)), None)
    if first is None or first == 0:
        raise DataError(file, where, "question", f"expected a question then option lines 'A. ...', got {text[:80]!r}")
    options = [line for line in lines[first:] if line.strip()]
    if [o[0] for o in options] != list(LETTERS[: len(options)]) or not all(map(_OPTION_LINE_RE.match, options)):
        raise DataError(file, where, "question", f"option lines must be 'A. ...', 'B. ...' in order, got {options}")
    return "\n".join(lines[:first]), options


def load_tempcompass(root: Path) -> list[Record]:
    """TempCompass (llyx97/TempCompass), multiple-choice task.

    Layout: `root/questions/multi-choice.json`, `{video_id: {dim: [{"question": "...\\nA. ...\\nB. ...",
    "answer": "B. ..."}]}}` with dims action, speed, direction, order, attribute_change; videos at
    `root/videos/<video_id>.mp4`. Task = dim; ids are "<video_id>/<dim>/<index>".
    """
    file = root / "questions" / "multi-choice.json"
    data = _read_json(file, "the TempCompass multi-choice file (layout: questions/multi-choice.json, videos/<video_id>.mp4)")
    if not isinstance(data, dict):
        raise DataError(file, "-", "<json>", f"expected an object keyed by video id, got {type(data).__name__}")
    records = []
    for video_id in data:
        video = _video(root / "videos" / f"{video_id}.mp4", file, video_id, "<video_id>")
        dims = _get(data, video_id, dict, file, video_id)
        for dim in dims:
            for index, item in enumerate(_get(dims, dim, list, file, f"{video_id}.{dim}")):
                where = f"{video_id}.{dim}[{index}]"
                question, options = _split_inline_options(_get(item, "question", str, file, where), file, where)
                answer = _check_letter(_get(item, "answer", str, file, where), options, file, where, "answer")
                records.append(_mc(f"{video_id}/{dim}/{index}", question, options, answer, dim, video,
                                   f"{file}:{where}", {"question_type": dim}))
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
        file, rows = _read_parquet(root / track, f"the VideoMMMU {track} parquet (layout: <Track>/test-*.parquet, <Discipline>/<id>.mp4)")
        for index, row in enumerate(rows):
            where = f"row {index}"
            vid = _get(row, "id", str, file, where)
            match = _VIDEOMMMU_ID_RE.match(vid)
            if match is None or match.group(1) not in VIDEOMMMU_FOLDERS:
                raise DataError(file, where, "id", f"expected '<split>_<Subject>_<n>' with a known subject, got {vid!r}")
            video = _video(root / VIDEOMMMU_FOLDERS[match.group(1)] / f"{vid}.mp4", file, where, "id")
            question, answer = _get(row, "question", str, file, where), _get(row, "answer", str, file, where)
            options = [str(o) for o in row.get("options") or []]
            extra = {"question_type": row.get("question_type"), "subject": match.group(1)}
            rid, origin = f"{track}/{vid}", f"{file}:{where}"
            if options:
                if not all(o.startswith(f"{LETTERS[i]}.") for i, o in enumerate(options)):
                    options = _lettered(options)
                records.append(_mc(rid, question, options, _check_letter(answer, options, file, where, "answer"),
                                   track, video, origin, extra))
            else:
                ptype = "numerical" if parse_number(answer) is not None else "free-form"
                records.append(Record(id=rid, question=question, options=[], problem_type=ptype, answer=answer,
                                      solution=f"<answer>{answer}</answer>", media_kind="video", media=[video],
                                      source=track, origin=origin, extra=extra))
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
            raise DataError(file, where, "answer", f"a {record.problem_type} record needs a numeric answer, got {record.answer!r}")
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
            raise ConfigError(f"benchmark name {name!r} given twice ({', '.join(b.origin for b in benches if b.name == name)})")
    return benches
