"""Each scoring protocol against hand-computed cases drawn from its source's behaviour, and (where the lmms-eval
package is installed) the lmms-eval rules against its own task functions."""
from __future__ import annotations

import random

import pytest

from framethink.eval.benchmarks import mvbench, tempcompass, videomme, videommmu, vsibench
from framethink.eval.lmms_eval_rules import extract_mcq_answer, strip_reasoning_tags
from framethink.eval.protocols import PROTOCOLS, tinyllava_parse, video_r1_mean_relative_accuracy

OPTIONS = ["A. cat", "B. dog", "C. cow", "D. pig"]


def _line(output, *, bench="videomme", answer="B", ptype="multiple choice", options=OPTIONS, answer_text=None,
          task="t"):
    return {"benchmark": bench, "id": "1", "task": task, "subtask": None, "duration": None, "problem_type": ptype,
            "options": list(options) if ptype == "multiple choice" else [], "answer": answer,
            "answer_text": answer_text, "status": "ok", "output": output}


def _scores(output, protocol, **kw):
    item = PROTOCOLS[protocol].score(_line(output, **kw))
    return None if item is None else (item.score, item.status)


TWO_TAGS = "<think>A or B?</think><answer>B</answer><answer>C</answer>"
NO_TAG = "<think>It is B.</think>"
S, U, J = "scored", "unparsable", "needs_judge"

# Multiple choice, gold B of A-D, on a Video-MME item. Each expected value is worked out from the source:
#  framethink: first <answer> else the output; B / (B) / B. / "B. text" / b read as B; nothing else.
#  video-r1 (eval_bench.py reward_fn): exact string equality of the stripped <answer> contents (raw output
#    without a tag) with "B": "(B)", "B. dog", "b" all score 0.
#  official (Video-MME extract_characters_regex on the answer text): the first capital A-D after removing
#    "The answer is": "(C)" -> C; "b" has no capital -> "" -> left out of the denominator; NO_TAG's whole text
#    "<think>It is B.</think>" -> B.
#  lmms-eval (think tags stripped, then extract_mcq_answer over A-D): TWO_TAGS -> "<answer>B</answer><answer>C</answer>"
#    has no formatted letter, so the fallback takes the last capital letter: C. NO_TAG strips to "".
#  tinyllava (parse_multi_choice_response): no <answer> tag -> random.choice -> expected 1/4; an empty tag -> None
#    (wrong, not guessed); "<answer>b</answer>" -> "b" is a lower-case choice -> B.
MC_CASES = [
    # output, framethink, video-r1, official, lmms-eval, tinyllava
    ("(B)", (1.0, S), (0.0, U), (1.0, S), (1.0, S), (0.25, U)),
    ("B. dog", (1.0, S), (0.0, U), (1.0, S), (1.0, S), (0.25, U)),
    ("b", (1.0, S), (0.0, U), (0.0, U), (0.0, U), (0.25, U)),
    ("The answer is (C)", (0.0, U), (0.0, U), (0.0, S), (0.0, S), (0.25, U)),
    (TWO_TAGS, (1.0, S), (1.0, S), (1.0, S), (0.0, S), (1.0, S)),
    (NO_TAG, (0.0, U), (0.0, U), (1.0, S), (0.0, U), (0.25, U)),
    ("", (0.0, U), (0.0, U), (0.0, U), (0.0, U), (0.25, U)),
    ("<answer>b</answer>", (1.0, S), (0.0, U), (0.0, U), (0.0, U), (1.0, S)),
    ("<answer></answer>", (0.0, U), (0.0, U), (0.0, U), (0.0, U), (0.0, U)),
    ("<answer>The answer is (C)</answer>", (0.0, U), (0.0, U), (0.0, S), (0.0, S), (0.0, S)),
]


@pytest.mark.parametrize(("output", "framethink", "video_r1", "official", "lmms", "tinyllava"), MC_CASES)
def test_multiple_choice_outputs_under_every_protocol(output, framethink, video_r1, official, lmms, tinyllava):
    assert _scores(output, "framethink") == framethink
    assert _scores(output, "video-r1") == video_r1
    assert _scores(output, "official") == official
    assert _scores(output, "lmms-eval") == lmms
    assert _scores(output, "tinyllava") == pytest.approx(tinyllava)


def test_video_mme_official_leaves_unanswered_items_out_and_lmms_eval_counts_them():
    official = PROTOCOLS["official"].score(_line("b"))
    lmms = PROTOCOLS["lmms-eval"].score(_line("b"))
    assert not official.counted and lmms.counted
    # the released prefix list lacks two commas: "The best option is" alone is not removed, so its "T" is skipped
    # and "best option is B" -> the first capital A-D is B
    assert videomme.extract_characters_regex("The best option is B") == "B"
    assert videomme.extract_characters_regex("The answer is B") == "B"
    assert videomme.extract_characters_regex("Answer: D because") == "A"  # "Answer:" is no prefix: its A is read
    assert videomme.extract_characters_regex("it is none of the eleven options given to me at this time") == ""


def test_tinyllava_random_fallback_is_its_expected_value():
    item = PROTOCOLS["tinyllava"].score(_line("no tag at all"))
    assert item.guessed and item.score == 0.25
    # the released function draws random.choice(all_choices): its mean over many draws is the expected value
    assert tinyllava_parse("no tag at all", ["A", "B", "C", "D"]) == "random"
    draws = [random.Random(seed).choice(["A", "B", "C", "D"]) == "B" for seed in range(4000)]
    assert sum(draws) / len(draws) == pytest.approx(item.score, abs=0.02)
    # content spanning lines does not match (no DOTALL): random
    assert PROTOCOLS["tinyllava"].score(_line("<answer>B\nC</answer>")).guessed
    assert not PROTOCOLS["tinyllava"].score(_line("<answer>\nB\n</answer>")).guessed  # \s* takes the newlines
    assert PROTOCOLS["tinyllava"].score(_line("<answer> B </answer>", bench="vsibench")).score == 1.0
    assert PROTOCOLS["tinyllava"].score(_line("<answer>3</answer>", ptype="regression", answer="3")) is None
    # eval_mmvu.py guesses among every choice key, the empty ones too
    mmvu_line = {**_line("no tag", bench="mmvu"), "all_choices": ["A", "B", "C", "D", "E"]}
    assert PROTOCOLS["tinyllava"].score(mmvu_line).score == pytest.approx(0.2)


# VSI-Bench numeric items. official: thinking-in-space (first space-separated word, float(), MRA with <= over
# np.linspace(.5, .95, 10)); lmms-eval: the first number anywhere (digits or number words), same MRA;
# video-r1: float() of the whole answer (commas removed), float32 MRA with <; framethink: one plain number, MRA <=.
VSI_CASES = [
    # output, gold, framethink, video-r1, official, lmms-eval
    ("19", "20", 1.0, 1.0, 1.0, 1.0),  # relative error 0.05: <= passes θ=0.95; float32 1-0.95 is 0.0500000119 > 0.05
    ("15", "20", 0.6, 0.5, 0.6, 0.6),  # 0.25 <= 1-0.75 passes with <=, not with <
    ("10", "20", 0.1, 0.0, 0.1, 0.1),
    ("<answer>19</answer>", "20", 1.0, 1.0, 1.0, 1.0),
    ("20 meters", "20", 0.0, 0.0, 1.0, 1.0),  # only the first-word / first-number readers take it
    ("1,000", "1000", 1.0, 1.0, 0.0, 0.0),  # float("1,000") fails; extract_number reads 1
    ("The answer is 19.", "20", 0.0, 0.0, 0.0, 1.0),
    ("nineteen", "20", 0.0, 0.0, 0.0, 1.0),
    ("", "20", 0.0, 0.0, 0.0, 0.0),
]


@pytest.mark.parametrize(("output", "gold", "framethink", "video_r1", "official", "lmms"), VSI_CASES)
def test_vsibench_numeric_outputs_under_every_protocol(output, gold, framethink, video_r1, official, lmms):
    kw = dict(bench="vsibench", answer=gold, ptype="regression")
    assert _scores(output, "framethink", **kw)[0] == pytest.approx(framethink)
    assert _scores(output, "video-r1", **kw)[0] == pytest.approx(video_r1)
    assert _scores(output, "official", **kw)[0] == pytest.approx(official)
    assert _scores(output, "lmms-eval", **kw)[0] == pytest.approx(lmms)


def test_vsibench_boundary_gold_20_prediction_19():
    assert vsibench.mean_relative_accuracy(19.0, 20.0) == 1.0  # the authors' <=
    assert video_r1_mean_relative_accuracy(19.0, 20.0) == 1.0  # < in float32: the boundary happens to pass
    assert video_r1_mean_relative_accuracy(15.0, 20.0) == 0.5 and vsibench.mean_relative_accuracy(15.0, 20.0) == 0.6
    assert vsibench.fuzzy_matching("B. left of the chair") == "B"
    assert _scores("b", "official", bench="vsibench") == (1.0, S)  # exact_match is case-insensitive


def test_video_r1_numerical_decimal_mark_rule():
    kw = dict(bench="videommmu", answer="42", ptype="numerical")
    assert _scores("<answer>42</answer>", "video-r1", **kw) == (1.0, S)
    assert _scores("<answer>42.0</answer>", "video-r1", **kw) == (0.0, S)
    assert _scores("<answer>1,000</answer>", "video-r1", bench="videommmu", answer="1000", ptype="numerical") == (0.0, S)
    assert _scores("<answer>a dog</answer>", "video-r1", bench="videommmu", answer="a dog", ptype="free-form") == (0.0, S)


def test_videommmu_open_answers_are_all_or_nothing():
    kw = dict(bench="videommmu", answer="Depth-First Search", ptype="free-form")
    for protocol in ("framethink", "official", "lmms-eval", "video-r1"):
        assert _scores("<answer>Breadth-First Search</answer>", protocol, **kw)[0] == 0.0
    assert _scores("The algorithm is depth-first search (DFS).", "official", **kw) == (1.0, S)
    # the tail after "is ", normalised, plus its numbers: "1,234" (comma pattern) and "234" (the simple pattern
    # skips the "1" followed by a comma)
    assert set(videommmu.parse_open_response("The total is 1,234.")) == {1234.0, 234.0}
    assert _scores("<answer>42.0</answer>", "official", bench="videommmu", answer="42", ptype="numerical") == (1.0, S)
    assert not PROTOCOLS["official"].score(_line("", bench="videommmu", answer="42", ptype="numerical")).counted


def test_videommmu_multiple_choice_official_and_lmms_eval():
    kw = dict(bench="videommmu", answer="B")
    assert _scores("(B)", "official", **kw) == (1.0, S)
    assert _scores("B or C? I pick C.", "official", **kw) == (0.0, S)  # "C." and "B " -> period wins: C
    assert _scores("it is a dog, clearly the right one", "official", **kw) == (1.0, S)  # > 5 words: option text
    assert _scores("none", "official", **kw) == (0.0, U)  # "No Answer Found.", never a random pick
    assert videommmu.parse_multi_choice_response("none", ["A", "B"], {"A": "x", "B": "y"}) == videommmu.NO_ANSWER


def test_tempcompass_rules_and_judge_items():
    kw = dict(bench="tempcompass", answer="B", answer_text="B. anticlockwise",
              options=["A. towards the screen", "B. anticlockwise", "C. clockwise"])
    assert _scores("B", "official", **kw) == (1.0, S)
    assert _scores("B. anticlockwise", "official", **kw) == (1.0, S)
    assert _scores("C) clockwise", "official", **kw) == (0.0, S)
    assert _scores("B</s>", "official", **kw) == (1.0, S)
    for output in ("(B)", "b", "anticlockwise", "The answer is (C)"):
        item = PROTOCOLS["official"].score(_line(output, **kw))
        assert (item.status, item.counted, item.score) == (J, False, 0.0)  # never guessed
    assert tempcompass.matching_rules("A", "B. anticlockwise") == 0


def test_mvbench_mcq_acc():
    assert mvbench.mcq_acc("B", "(B)") == 1
    assert mvbench.mcq_acc("B", "b") == 1
    assert mvbench.mcq_acc("B", "The answer is (C)") == 0  # the standalone letter read is C
    assert mvbench.mcq_acc("B", NO_TAG) == 1  # "<think>It is B.</think>": punctuation removed, "b" stands alone
    item = PROTOCOLS["official"].score(_line("", bench="mvbench"))
    assert item.status == U and not item.counted


def test_lmms_eval_front_end_strips_think_blocks():
    assert strip_reasoning_tags("<think>A?</think> B ") == "B"
    assert strip_reasoning_tags("pre-filled reasoning</think> C") == "C"
    assert strip_reasoning_tags("<think>never closed B") == "<think>never closed B"
    assert extract_mcq_answer("The correct answer is (B).") == "B"
    assert extract_mcq_answer("A is wrong; B: dog") == "A"  # "start" outranks a colon


# ---------------------------------------------------------------------------------------------
# Against the lmms-eval package itself (skipped where it is not installed).


def test_shared_lmms_eval_functions_match_the_package():
    reasoning = pytest.importorskip("lmms_eval.api.reasoning")
    mcq = pytest.importorskip("lmms_eval.tasks._task_utils.mcq_extract")
    outputs = [o for o, *_ in MC_CASES] + ["The correct answer is (B).", "A is wrong; B: dog", "I choose D", "B) C)",
                                           "Option C. is it? no, A", "答案是C", "ABCD"]
    tags = [["<think>", "</think>"], ["<analysis>", "</analysis>"]]
    for output in outputs:
        stripped = reasoning.strip_reasoning_tags(output, tags)
        assert strip_reasoning_tags(output) == stripped
        for choices in (None, ["A", "B", "C", "D"]):
            assert extract_mcq_answer(stripped, choices) == mcq.extract_mcq_answer(stripped, choices), output


def test_task_rules_match_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # the task modules read it when imported
    mvbench_utils = pytest.importorskip("lmms_eval.tasks.mvbench.utils")
    vsibench_utils = pytest.importorskip("lmms_eval.tasks.vsibench.utils")
    videommmu_utils = pytest.importorskip("lmms_eval.tasks.videommmu.utils")
    outputs = [o for o, *_ in MC_CASES] + [o for o, *_ in VSI_CASES] + ["E. none", "(d)", "B, C"]
    for output in outputs:
        assert mvbench.mcq_acc("B", output) == mvbench_utils.mcq_acc("B", output), output
        assert vsibench.fuzzy_matching(output) == vsibench_utils.fuzzy_matching(output)
        assert vsibench.extract_number(output) == vsibench_utils.extract_number(output)
        if output:
            assert set(videommmu.parse_open_response(output)) == set(videommmu_utils.parse_open_response(output))
    for pred, gold in ((19.0, 20.0), (15.0, 20.0), (12.0, 10.0), (3.3, 3.0)):
        assert vsibench.mean_relative_accuracy(pred, gold) == vsibench_utils.mean_relative_accuracy(
            pred, gold, 0.5, 0.95, 0.05)
    for gold, preds in (("Depth-First Search", ["breadth-first search"]), ("42", [42.0]), ("a", ["a cat"])):
        assert videommmu.eval_open(gold, preds) == videommmu_utils.eval_open(gold, preds)


def test_multiple_choice_task_rules_match_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    mlvu_utils = pytest.importorskip("lmms_eval.tasks.mlvu.utils")
    mmvu_utils = pytest.importorskip("lmms_eval.tasks.mmvu.utils")
    tempcompass_utils = pytest.importorskip("lmms_eval.tasks.tempcompass.utils")
    from framethink.eval.benchmarks import mmvu

    outputs = [strip_reasoning_tags(o) for o, *_ in MC_CASES] + ["dog", "B is a dog", "E. none", "A) cat", "B"]
    choices = {"A": "cat", "B": "dog", "C": "cow", "D": "pig"}
    for output in outputs:
        ours = PROTOCOLS["lmms-eval"].score(_line(output, bench="mlvu"))
        theirs = mlvu_utils.mlvu_process_results({"question": "q", "task_type": "count", "answer": "B"}, [output])
        assert ours.answer == theirs["mlvu_percetion_score"]["pred_answer"], output
        doc = {"answer": "B", "question_type": "multiple-choice", "choices": choices}
        assert mmvu.evaluate_with_rule_based(choices, "B", output) == mmvu_utils.evaluate_with_rule_based(doc, output)
        doc = {"answer": "B. dog", "video_id": "1", "question": "q", "dim": "speed"}
        if tempcompass.matching_rules(output, "B. dog") is not None:  # the package asks GPT otherwise
            result = tempcompass_utils.tempcompass_process_results_multi_choice(doc, [output])
            assert tempcompass.matching_rules(output, "B. dog") == result["avg_accuracy"]["rating"], output
