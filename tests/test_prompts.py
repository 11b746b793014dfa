"""Prompt templates (docs/data.md#prompts): the exact strings, option inlining, type suffixes, chat messages, SFT target."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from framethink.data.prompts import build_messages, format_question, get_template, sft_system, sft_target
from framethink.data.records import Record
from framethink.errors import ConfigError, DataError

# Copied verbatim from the Video-R1 and TinyLLaVA-Video-R1 reference code (docs/data.md#prompts).
VIDEO_R1 = ("{Question}\nPlease think about this question as if you were a human pondering deeply. Engage in an "
            "internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', 'let's break it "
            "down', etc, or other natural language thought expressions It's encouraged to include self-reflection or "
            "verification in the reasoning process. Provide your detailed reasoning between the <think> </think> tags, "
            "and then give your final answer between the <answer> </answer> tags.")
SUFFIX = {
    "multiple choice": " Please provide only the single option letter (e.g., A, B, C, D, etc.) within the "
                       "<answer> </answer> tags.",
    "numerical": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "regression": " Please provide the numerical value (e.g., 42 or 3.14) within the <answer> </answer> tags.",
    "OCR": " Please transcribe text from the image/video clearly and provide your text answer within the "
           "<answer> </answer> tags.",
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
}
TINYLLAVA = ("{question} Output the thinking process in <think> </think> and final answer (option) in "
             "<answer> </answer> tags.")
OPTION = "Answer with the option's letter from the given choices directly."


def record(problem_type: str = "multiple choice", media_kind: str = "video", **kwargs) -> Record:
    options = ["A. cat", "B. dog"] if problem_type == "multiple choice" else []
    fields = dict(id="1", question="What animal appears?", options=options, problem_type=problem_type, answer="B",
                  solution="<answer>B</answer>", media_kind=media_kind,
                  media=[] if media_kind == "text" else [Path("/d/a.mp4")], origin="train.jsonl:4")
    return Record(**{**fields, **kwargs})


def test_template_file_ships_as_package_data():
    assert resources.files("framethink").joinpath("templates/prompts.yaml").is_file()


def test_video_r1_multiple_choice_exact():
    mc_question = "What animal appears?" + "Options:\n" + "".join(opt + "\n" for opt in ["A. cat", "B. dog"])
    expected = VIDEO_R1.replace("{Question}", mc_question) + SUFFIX["multiple choice"]
    assert format_question(record(), "video-r1") == expected
    assert expected.startswith("What animal appears?Options:\nA. cat\nB. dog\n\nPlease think about")


@pytest.mark.parametrize("problem_type", ["numerical", "regression", "OCR", "free-form"])
def test_video_r1_type_suffixes(problem_type):
    expected = VIDEO_R1.replace("{Question}", "What animal appears?") + SUFFIX[problem_type]
    assert format_question(record(problem_type), "video-r1") == expected


def test_video_r1_eval_wording():
    eval_prompt = (VIDEO_R1.replace("between the <think> </think> tags", "between the <think> and </think> tags")
                   .replace("between the <answer> </answer> tags.", "between the <answer> and </answer> tags."))
    expected = eval_prompt.replace("{Question}", "What animal appears?") + SUFFIX["free-form"]
    assert format_question(record("free-form"), "video-r1-eval") == expected
    assert expected.endswith("Provide your detailed reasoning between the <think> and </think> tags, and then give "
                             "your final answer between the <answer> and </answer> tags. Please provide your text "
                             "answer within the <answer> </answer> tags.")


def test_tinyllava_rebuilds_the_inlined_problem():
    problem = "What happens first?\nOptions:\nA. run\nB. sit\nC. jump"
    rec = record(question="What happens first?", options=["A. run", "B. sit", "C. jump"], answer="C")
    assert format_question(rec, "tinyllava-r1") == TINYLLAVA.replace("{question}", problem)


def test_option_mode_is_multiple_choice_only():
    assert format_question(record(), "option") == "What animal appears?\nOptions:\nA. cat\nB. dog\n" + OPTION
    with pytest.raises(ConfigError, match="formats only multiple choice records; train.jsonl:4 is 'numerical'"):
        format_question(record("numerical"), "option")


def test_unknown_template_lists_known_ones():
    with pytest.raises(ConfigError, match="known: video-r1, video-r1-eval, tinyllava-r1, option"):
        get_template("r1")


@pytest.mark.parametrize("media_kind, parts", [("video", [{"type": "video"}]), ("image", [{"type": "image"}]),
                                                ("text", [])])
def test_build_messages_media_kinds(media_kind, parts):
    rec = record("free-form", media_kind)
    text = {"type": "text", "text": format_question(rec, "video-r1")}
    assert build_messages(rec, "video-r1") == [{"role": "user", "content": [*parts, text]}]
    assert build_messages(rec, "video-r1", system=sft_system()) == [
        {"role": "system", "content": [{"type": "text", "text": "You are a helpful assistant"}]},
        {"role": "user", "content": [*parts, text]}]


def test_sft_target():
    rec = record(cot="<think>It barks.</think>")
    assert sft_target(rec) == "<think>It barks.</think>\n<answer>B</answer>"
    with pytest.raises(DataError, match="train.jsonl:4: field 'process'"):
        sft_target(record())
