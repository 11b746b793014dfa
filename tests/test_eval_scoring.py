"""Deterministic answer parsing, MRA and benchmark aggregation (SPEC 7)."""
from __future__ import annotations

import itertools

import pytest

from framethink.eval.published import match_published, published_by_key
from framethink.eval.scoring import answer_text, mean_relative_accuracy, score_benchmark, score_output
from framethink.errors import ConfigError


@pytest.mark.parametrize("output", ["B", "(B)", "B.", "B. dog", "<answer>B</answer>", "<think>x</think> <answer> (B) dog </answer>", "b"])
def test_option_forms_are_accepted(output):
    assert score_output(output, "B", "multiple choice").score == 1.0


@pytest.mark.parametrize("output", ["", "dog", "The answer is B", "<answer></answer>", "<answer>B and C</answer>"])
def test_unparsable_option_is_wrong_and_counted_every_time(output):
    results = {score_output(output, "B", "multiple choice") for _ in range(20)}  # no random fallback
    assert len(results) == 1
    (result,) = results
    assert result.unparsable and result.score == 0.0 and result.answer == ""


def test_answer_text_uses_the_raw_output_without_an_answer_tag():
    assert answer_text("  C. cat \n") == "C. cat"
    assert answer_text("<think>A?</think><answer> D </answer> B") == "D"
    assert score_output("C", "B", "multiple choice").unparsable is False  # a wrong letter is not unparsable


def test_numeric_answers():
    assert score_output("<answer>42</answer>", "42", "numerical").score == 1.0
    assert score_output("42.0", "42", "numerical").score == 0.0  # SPEC 4.1 decimal-mark rule
    assert score_output("1,234.5", "1234.50", "numerical").score == 1.0
    assert score_output("forty-two", "42", "numerical").unparsable


@pytest.mark.parametrize(("pred", "gold", "mra"), [
    (10, 10, 1.0), (12, 10, 0.6), (11, 10, 0.8), (5, 10, 0.0), (9.5, 10, 0.9), (15, 10, 0.0), (14, 10, 0.2), (0, 0, 1.0),
])
def test_mean_relative_accuracy(pred, gold, mra):
    # |pred-gold|/gold below 1-θ for θ in 0.50..0.95: e.g. 0.2 passes θ = .50 .55 .60 .65 .70 .75 -> 0.6
    assert mean_relative_accuracy(pred, gold) == pytest.approx(mra)


def test_regression_scores_by_mra_and_counts_unparsable():
    assert score_output("<answer>12</answer>", "10", "regression").score == pytest.approx(0.6)
    assert score_output("12 m", "10", "regression").unparsable


def test_free_form_and_ocr_use_the_reward_rules():
    assert score_output("<answer>a red ball</answer>", "a red ball", "free-form").score == pytest.approx(1.0)
    assert score_output("<answer>STOP HERE</answer>", "STOP NOW", "OCR").score == pytest.approx(0.5)
    assert score_output("<answer> </answer>", "x", "OCR").unparsable  # an empty tag is an empty answer
    assert score_output("", "x", "free-form").unparsable


_ids = itertools.count()


def _line(task, output, answer="A", subtask=None, duration=None, ptype="multiple choice"):
    return {"benchmark": "b", "id": str(next(_ids)), "task": task, "subtask": subtask, "duration": duration,
            "problem_type": ptype, "answer": answer, "output": output}


def test_item_mean_task_mean_and_subtasks():
    lines = [_line("t1", "A"), _line("t1", "B"), _line("t1", "A"), _line("t2", "no idea")]
    micro = score_benchmark("anything", lines)
    assert micro.metric == "accuracy" and micro.overall.score == pytest.approx(50.0)
    macro = score_benchmark("mlvu", lines)
    assert macro.metric == "task mean" and macro.overall.score == pytest.approx((200 / 3 + 0) / 2)
    assert macro.tasks["t2"].unparsable == 1 and macro.overall.unparsable == 1
    levels = [_line("dir", "A", subtask="easy"), _line("dir", "A", subtask="hard"), _line("dir", "B", subtask="hard"),
              _line("dir", "B", subtask="hard")]
    assert score_benchmark("vsibench", levels).tasks["dir"].score == pytest.approx((100 + 100 / 3) / 2)


def test_durations_are_ordered_short_medium_long():
    lines = [_line("t", "A", duration="long"), _line("t", "B", duration="short"), _line("t", "A", duration="medium")]
    score = score_benchmark("videomme", lines)
    assert list(score.durations) == ["short", "medium", "long"]
    assert [g.score for g in score.durations.values()] == [0.0, 100.0, 100.0]


def test_published_matching():
    keys = [p.key for p in match_published("/ckpt/Video-R1-7B", mode="reason", frames=16)]
    assert keys == ["video-r1-7b-16f"]
    assert [p.key for p in match_published("video-r1-7b", mode="reason", frames=None)] == ["video-r1-7b-16f", "video-r1-7b-32f"]
    assert match_published("/ckpt/Video-R1-7B", mode="option", frames=16) == []
    assert [p.key for p in match_published("x/TinyLLaVA-Video-Qwen2.5-3B-Group-16-512", mode="option", frames=16)] == [
        "tinyllava-video-sft-option"]
    assert published_by_key("tinyllava-video-r1-reason").scores == {"mvbench": 49.5, "videomme": 46.6, "mlvu": 52.4, "mmvu": 46.9}
    assert published_by_key("video-r1-7b-32f").scores["vsibench"] == 35.8
    with pytest.raises(ConfigError, match="unknown published result"):
        published_by_key("gpt-5")
