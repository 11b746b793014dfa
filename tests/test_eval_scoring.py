"""The framethink protocol's parsing, MRA and benchmark aggregation; published entries."""
from __future__ import annotations

import itertools

import pytest

from framethink.errors import ConfigError
from framethink.eval.protocols import answer_text, framethink_rule, mean_relative_accuracy, parse_protocols
from framethink.eval.published import match_published, published_by_key
from framethink.eval.scoring import score_predictions

_ids = itertools.count()


def _line(task="t", output="", answer="A", subtask=None, duration=None, ptype="multiple choice", bench="b",
          options=("A. cat", "B. dog", "C. cow", "D. pig"), status="ok"):
    return {"benchmark": bench, "id": str(next(_ids)), "task": task, "subtask": subtask, "duration": duration,
            "problem_type": ptype, "answer": answer, "options": list(options), "output": output, "status": status}


def _score(output, gold, ptype="multiple choice"):
    return framethink_rule(_line(output=output, answer=gold, ptype=ptype))


@pytest.mark.parametrize("output", ["B", "(B)", "B.", "B. dog", "<answer>B</answer>",
                                    "<think>x</think> <answer> (B) dog </answer>", "b"])
def test_option_forms_are_accepted(output):
    assert _score(output, "B").score == 1.0


@pytest.mark.parametrize("output", ["", "dog", "The answer is B", "The answer is (C)", "<answer></answer>",
                                    "<answer>B and C</answer>"])
def test_unparsable_option_is_wrong_and_counted_every_time(output):
    results = {_score(output, "B") for _ in range(20)}  # no random fallback
    assert len(results) == 1
    (result,) = results
    assert result.status == "unparsable" and result.score == 0.0 and result.answer == ""


def test_answer_text_uses_the_first_tag_or_the_raw_output():
    assert answer_text("  C. cat \n") == "C. cat"
    assert answer_text("<think>A?</think><answer> D </answer> B") == "D"
    assert answer_text("<answer>C</answer> then <answer>B</answer>") == "C"  # two tags: the first
    assert _score("<answer>C</answer><answer>B</answer>", "C").score == 1.0
    assert _score("C", "B").status == "scored"  # a wrong letter is not unparsable


def test_numeric_answers():
    assert _score("<answer>42</answer>", "42", "numerical").score == 1.0
    assert _score("42.0", "42", "numerical").score == 0.0  # the decimal-mark rule
    assert _score("1,234.5", "1234.50", "numerical").score == 1.0
    assert _score("1,000", "1000", "numerical").score == 0.0  # a comma counts as a decimal mark
    assert _score("forty-two", "42", "numerical").status == "unparsable"
    assert _score("2 meters", "2", "regression").status == "unparsable"


@pytest.mark.parametrize(("pred", "gold", "mra"), [
    (10, 10, 1.0), (12, 10, 0.7), (11, 10, 0.9), (5, 10, 0.1), (9.5, 10, 1.0), (15, 10, 0.1), (14, 10, 0.3),
    (19, 20, 1.0), (15, 20, 0.6), (0, 0, 1.0), (16, 10, 0.0),
])
def test_mean_relative_accuracy_uses_less_or_equal(pred, gold, mra):
    # |pred-gold|/gold <= 1-θ for θ in 0.50..0.95; e.g. 0.2 passes θ = .50 .. .80 -> 0.7; 1/20 = 0.05 passes all
    assert mean_relative_accuracy(pred, gold) == pytest.approx(mra)


def test_free_form_is_all_or_nothing():
    assert _score("<answer>Depth-First Search</answer>", "depth-first  search.", "free-form").score == 1.0
    assert _score("<answer>Breadth-First Search</answer>", "Depth-First Search", "free-form").score == 0.0
    assert _score("<answer> </answer>", "x", "OCR").status == "unparsable"  # an empty tag is an empty answer


def test_item_mean_task_mean_and_subtasks():
    lines = [_line("t1", "A"), _line("t1", "B"), _line("t1", "A"), _line("t2", "no idea")]
    micro = score_predictions(lines)["b"]
    assert micro.metric == "accuracy" and micro.overall.score == pytest.approx(50.0)
    macro = score_predictions([{**line, "benchmark": "mlvu"} for line in lines])["mlvu"]
    assert macro.metric == "task mean" and macro.overall.score == pytest.approx((200 / 3 + 0) / 2)
    assert macro.tasks["t2"].unparsable == 1 and macro.overall.unparsable == 1
    levels = [_line("dir", "A", subtask="easy", bench="vsibench"), _line("dir", "A", subtask="hard", bench="vsibench"),
              _line("dir", "B", subtask="hard", bench="vsibench"), _line("dir", "B", subtask="hard", bench="vsibench")]
    assert score_predictions(levels)["vsibench"].tasks["dir"].score == pytest.approx((100 + 100 / 3) / 2)
    # video-r1 takes the plain item mean everywhere
    assert score_predictions([{**line, "benchmark": "mlvu"} for line in lines], "video-r1")["mlvu"].metric == "accuracy"


def test_failed_items_score_zero_under_every_protocol_and_are_counted():
    lines = [_line(output="<answer>A</answer>"), _line(output="", status="error")]
    for protocol in ("framethink", "video-r1", "tinyllava"):
        group = score_predictions(lines, protocol)["b"].overall
        assert (group.score, group.items, group.errors) == (50.0, 2, 1)


def test_durations_are_ordered_short_medium_long():
    lines = [_line("t", "A", duration="long"), _line("t", "B", duration="short"), _line("t", "A", duration="medium")]
    score = score_predictions([{**line, "benchmark": "videomme"} for line in lines])["videomme"]
    assert list(score.durations) == ["short", "medium", "long"]
    assert [g.score for g in score.durations.values()] == [0.0, 100.0, 100.0]


def test_protocol_names():
    assert parse_protocols(None) == ("framethink",)
    assert parse_protocols("official, video-r1,official") == ("official", "video-r1")
    with pytest.raises(ConfigError, match="unknown scoring protocol lmms; known: framethink, video-r1"):
        parse_protocols("lmms")


def test_published_matching_and_numbers_from_the_benchmark_files():
    keys = [p.key for p in match_published("/ckpt/Video-R1-7B", mode="reason", frames=16)]
    assert keys == ["video-r1-7b-16f"]
    assert [p.key for p in match_published("video-r1-7b", mode="reason", frames=None)] == ["video-r1-7b-16f", "video-r1-7b-32f"]
    assert match_published("/ckpt/Video-R1-7B", mode="option", frames=16) == []
    assert [p.key for p in match_published("x/TinyLLaVA-Video-Qwen2.5-3B-Group-16-512", mode="option", frames=16)] == [
        "tinyllava-video-sft-option"]
    tiny = published_by_key("tinyllava-video-r1-reason")
    assert tiny.scores == {"mvbench": 49.5, "videomme": 46.6, "mlvu": 52.4, "mmvu": 46.9}
    assert tiny.protocol == "tinyllava"
    video_r1 = published_by_key("video-r1-7b-16f")
    assert video_r1.protocol == "video-r1"
    assert video_r1.scores == {"mvbench": 62.7, "videomme": 57.4, "mmvu": 64.2, "vsibench": 34.6, "tempcompass": 72.6,
                               "videommmu": 49.8}
    assert published_by_key("video-r1-7b-32f").scores["vsibench"] == 35.8
    with pytest.raises(ConfigError, match="unknown published result"):
        published_by_key("gpt-5")
