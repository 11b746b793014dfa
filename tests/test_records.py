"""Dataset loaders (docs/data.md#record-formats): the three formats, media resolution, origins and every typed fault."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from framethink.data.records import PROBLEM_TYPES, iter_record_results, load_records
from framethink.errors import ConfigError, DataError

MC = {"problem_id": 7, "problem": "What animal appears?", "data_type": "video", "problem_type": "multiple choice",
      "options": ["A. cat", "B. dog"], "solution": "<answer>B</answer>", "path": "./clips/a.mp4",
      "data_source": "LLaVA-Video-178K/0_30_s", "process": "<think>I see a dog.</think>"}
NUM = {"problem_id": "n1", "problem": "How many?", "data_type": "image", "problem_type": "numerical",
       "options": [], "solution": "<answer>\n 3.14 \n</answer>", "path": "img/b.png"}
TEXT = {"problem_id": 9, "problem": "Say hi.", "problem_type": "free-form", "solution": "<answer>hi there</answer>"}
TINY = {"problem_id": 3, "problem": "What happens first?\nOptions:\nA. run\nB. sit\nC. jump\nD. eat\nE. swim",
        "data_type": "video", "problem_type": ["reasoning"], "solution": "<answer>C</answer>",
        "video_filename": "./NextQA/1.mp4"}
LLAVA = {"id": "c1", "video": "./NextQA/2.mp4", "conversations": [
    {"from": "human", "value": "<image>\nWhy did the boy fall?\nOptions:\nA. slipped\nB. pushed"},
    {"from": "gpt", "value": "<think> He steps on ice. </think> <answer> A </answer>"}]}


def write_json(path: Path, rows: list) -> Path:
    path.write_text(json.dumps(rows))
    return path


def write_jsonl(path: Path, lines: list) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def faults(path: Path, **kwargs) -> list[tuple[str, str]]:
    """(where, field) of every fault in the file."""
    return [(e.where, e.field) for _, _, errors in iter_record_results(path, **kwargs) for e in errors]


def test_video_r1_json_list(tmp_path):
    path = write_json(tmp_path / "train.json", [MC, NUM, TEXT])
    mc, num, text = load_records(path)

    assert (mc.id, mc.question, mc.options, mc.problem_type) == ("7", "What animal appears?", ["A. cat", "B. dog"],
                                                              "multiple choice")
    assert (mc.answer, mc.solution, mc.cot) == ("B", "<answer>B</answer>", "<think>I see a dog.</think>")
    assert (mc.media_kind, mc.media, mc.media_field) == ("video", [tmp_path / "clips" / "a.mp4"], "path")
    assert (mc.source, mc.origin, mc.option_letters()) == ("LLaVA-Video-178K/0_30_s", f"{path}:[0]", ["A", "B"])
    assert (num.id, num.answer, num.media_kind, num.media) == ("n1", "3.14", "image", [tmp_path / "img" / "b.png"])
    assert (num.source, num.cot, num.origin) == ("", None, f"{path}:[1]")
    assert (text.media_kind, text.media, text.options, text.answer) == ("text", [], [], "hi there")


def test_jsonl_origins_are_one_based_lines_and_blank_lines_are_skipped(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [MC, "", NUM])
    records = load_records(path)
    assert [r.origin for r in records] == [f"{path}:1", f"{path}:3"]


def test_media_root_override_and_absolute_paths(tmp_path):
    absolute = dict(NUM, path=str(tmp_path / "elsewhere" / "c.png"))
    (tmp_path / "data").mkdir()
    path = write_jsonl(tmp_path / "data" / "train.jsonl", [MC, absolute])
    mc, num = load_records(path, root=tmp_path / "media")
    assert mc.media == [tmp_path / "media" / "clips" / "a.mp4"]
    assert num.media == [tmp_path / "elsewhere" / "c.png"]
    assert load_records(path)[0].media == [tmp_path / "data" / "clips" / "a.mp4"]


def test_tinyllava_options_are_split_out(tmp_path):
    (record,) = load_records(write_jsonl(tmp_path / "nextqa.jsonl", [TINY]))
    assert record.question == "What happens first?"
    assert record.options == ["A. run", "B. sit", "C. jump", "D. eat", "E. swim"]
    assert (record.problem_type, record.answer, record.media_kind) == ("multiple choice", "C", "video")
    assert (record.media, record.media_field) == ([tmp_path / "NextQA" / "1.mp4"], "video_filename")


def test_llava_conversation(tmp_path):
    image_qa = {"id": 5, "image": "pics/x.jpg", "conversations": [
        {"from": "human", "value": "<image>\nDescribe it."},
        {"from": "gpt", "value": "<answer>a red ball</answer>"}]}
    letter_no_options = {"id": 6, "conversations": [
        {"from": "human", "value": "Which letter?"}, {"from": "gpt", "value": "<think>x</think><answer>B</answer>"}]}
    video, image, text = load_records(write_json(tmp_path / "cold.json", [LLAVA, image_qa, letter_no_options]))

    assert (video.id, video.question, video.options) == ("c1", "Why did the boy fall?", ["A. slipped", "B. pushed"])
    assert (video.cot, video.solution) == ("<think> He steps on ice. </think>", "<answer> A </answer>")
    assert video.answer == "A"
    assert (video.problem_type, video.media, video.media_field) == ("multiple choice", [tmp_path / "NextQA" / "2.mp4"],
                                                                    "video")
    assert video.extra["response"] == LLAVA["conversations"][1]["value"]
    assert (image.question, image.problem_type, image.cot) == ("Describe it.", "free-form", None)
    assert image.answer == "a red ball"
    assert (image.media_kind, image.media) == ("image", [tmp_path / "pics" / "x.jpg"])
    assert (text.problem_type, text.media_kind, text.answer) == ("free-form", "text", "B")


def test_format_override(tmp_path):
    path = write_jsonl(tmp_path / "nextqa.jsonl", [TINY])
    # read as Video-R1, the TinyLLaVA list-valued problem_type and missing `path` are faults
    assert faults(path, fmt="video-r1") == [("1", "problem_type"), ("1", "path")]
    assert faults(path, fmt="tinyllava") == []
    with pytest.raises(ConfigError, match="known: auto, video-r1, tinyllava, llava"):
        load_records(path, fmt="sharegpt")


def test_every_fault_of_a_record_is_reported(tmp_path):
    bad = dict(MC, problem_id=True, options=["A. cat", 3], solution="B", data_type="audio")
    path = write_jsonl(tmp_path / "bad.jsonl", [bad])
    (origin, record, errors) = next(iter_record_results(path))
    assert (origin, record) == (f"{path}:1", None)
    assert [(e.where, e.field) for e in errors] == [("1", "problem_id"), ("1", "options"), ("1", "solution"),
                                                    ("1", "data_type")]
    assert "expected int or str, got bool" in errors[0].reason
    assert "no <answer>...</answer> tag" in errors[2].reason


@pytest.mark.parametrize("row, field, reason", [
    (dict(MC, problem_type="yes/no"), "problem_type", "known: " + ", ".join(PROBLEM_TYPES)),
    (dict(MC, solution="<answer>E</answer>"), "solution", "'E' is not one of the option letters A, B"),
    (dict(MC, options=["cat", "B. dog"]), "options", "does not start with a letter"),
    (dict(MC, options=[]), "options", "needs options"),
    (dict(MC, options="A. cat"), "options", "expected list, got str"),
    (dict(MC, problem=["q"]), "problem", "expected str"),
    ({k: v for k, v in MC.items() if k != "path"}, "path", "missing (data_type is 'video')"),
    ({k: v for k, v in MC.items() if k != "data_type"}, "data_type", "must be 'image' or 'video'"),
    ({k: v for k, v in MC.items() if k != "problem_id"}, "problem_id", "missing"),
    (dict(TINY, problem="What?"), "problem", "needs options"),
    (dict(TINY, solution="<answer>F</answer>"), "solution", "not one of the option letters A, B, C, D, E"),
    (dict(LLAVA, conversations=[LLAVA["conversations"][0]]), "conversations", "one human turn then one gpt turn"),
    (dict(LLAVA, conversations=[LLAVA["conversations"][0], {"from": "gpt", "value": "A"}]), "conversations",
     "no <answer>"),
    (dict(LLAVA, image="x.png"), "video", "not both"),
    ({"question": "?"}, "<record>", "cannot tell the format"),
    ([1, 2], "<record>", "expected a JSON object, got list"),
])
def test_typed_faults(tmp_path, row, field, reason):
    path = write_jsonl(tmp_path / "d.jsonl", [TEXT, row])
    (_, record, errors) = list(iter_record_results(path))[1]
    assert record is None
    assert [(e.file, e.where, e.field) for e in errors] == [(str(path), "2", field)]
    assert reason in errors[0].reason
    with pytest.raises(DataError) as raised:
        load_records(path)
    assert (raised.value.where, raised.value.field) == ("2", field)


def test_file_level_faults(tmp_path):
    unparsable = write_jsonl(tmp_path / "a.jsonl", [MC, '{"problem_id": 1,', NUM, "[oops"])
    assert faults(unparsable) == [("2", "<json>"), ("4", "<json>")]
    assert [r is not None for _, r, _ in iter_record_results(unparsable)] == [True, False, True, False]

    not_a_list = tmp_path / "b.json"
    not_a_list.write_text(json.dumps(MC))
    assert faults(not_a_list) == [("1", "<json>")]

    broken_list = tmp_path / "c.json"
    broken_list.write_text("[\n" + json.dumps(MC) + ",\n{oops}\n]")
    assert faults(broken_list) == [("3", "<json>")]

    assert faults(write_json(tmp_path / "d.json", [])) == [("1", "<json>")]
    assert faults(tmp_path / "missing.json") == [("-", "<file>")]
    with pytest.raises(DataError, match="not valid JSON"):
        load_records(unparsable)
