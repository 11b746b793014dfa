"""Hand-computed values for every reward rule (docs/method.md#rewards)."""
from __future__ import annotations

import pytest

from framethink.errors import ConfigError
from framethink.rewards import (
    REWARDS,
    CompletionGroup,
    accuracy_reward,
    answer_accuracy,
    extract_answer,
    get_reward,
    normalize_option,
    overlong_penalty,
    parse_number,
    reward_components,
    think_length,
    tinyllava_format,
    tinyllava_length_reward,
    tinyllava_total,
    video_r1_format,
    video_r1_length_bonus,
)


def wrap(answer: str, think: str = "let me think") -> str:
    return f"<think>{think}</think>\n<answer>{answer}</answer>"


def group(completions: list[str], answer: str, problem_type: str = "multiple choice",
          num_tokens: list[int] | None = None) -> CompletionGroup:
    return CompletionGroup(completions=completions, num_tokens=num_tokens or [10] * len(completions),
                           answer=answer, problem_type=problem_type, options=[])


# --- extraction -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("<answer>B</answer>", "B"),
    ("<think>x</think><answer>  3.14 \n</answer>", "3.14"),
    ("<answer>\nline one\nline two\n</answer>", "line one\nline two"),
    ("<answer>first</answer> <answer>second</answer>", "first"),
    ("no tags at all", ""),
    ("<answer>unclosed", ""),
    ("<answer></answer>", ""),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("B. dog", "B"), (" b ", "B"), ("B)", "B"), ("B: dog", "B"),
    ("(c) a red car", "C"), ("", ""), ("dog", ""), ("B dog", ""), ("AB", ""), ("(B", ""), ("1", ""),
])
def test_normalize_option(text, expected):
    assert normalize_option(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("3", 3.0), (" -2.5 ", -2.5), ("1,000", 1000.0), (".5", 0.5), ("1e3", 1000.0),
    ("nan", None), ("inf", None), ("1e999", None), ("1_000", None), ("ten", None), ("", None), ("3 4", None),
])
def test_parse_number(text, expected):
    assert parse_number(text) == expected


# --- accuracy by type (docs/method.md#accuracy-by-problem-type) --------------------------------------------------------------

@pytest.mark.parametrize("pred, gold, expected", [
    ("B", "B", 1.0), ("(B)", "B", 1.0), ("B.", "B", 1.0), ("B. dog", "B", 1.0), (" b ", "B", 1.0),
    ("C", "B", 0.0), ("", "B", 0.0), ("B dog", "B", 0.0), ("dog", "B", 0.0),
    ("A", "A. cat", 1.0),  # gold given with its option text
    ("yes", "yes", 1.0), ("no", "yes", 0.0),  # non-letter gold: stripped text equality
])
def test_multiple_choice(pred, gold, expected):
    assert answer_accuracy(pred, gold, "multiple choice") == expected


@pytest.mark.parametrize("pred, gold, expected", [
    ("3", "3", 1.0),
    ("3.0", "3", 0.0),  # exactly one has a decimal point
    ("3", "3.0", 0.0),
    ("3.00", "3.0", 1.0),
    ("1,000", "1000", 0.0),  # exactly one has a comma
    ("1,000", "1,000", 1.0),
    ("1,000", "1000.0", 1.0),  # both carry a mark: parsed, commas removed
    ("3.14159", "3.14", 1.0),  # equal after round(.., 2)
    ("3.146", "3.14", 0.0),
    ("-2", "-2", 1.0),
    ("42", "24", 0.0),
    ("forty-two", "42", 0.0),
    ("", "42", 0.0),
    ("1.2.3", "1.2", 0.0),
])
def test_numerical(pred, gold, expected):
    assert answer_accuracy(pred, gold, "numerical") == expected


@pytest.mark.parametrize("pred, gold, expected", [
    ("hello big world", "hello big world", 1.0),
    ("hello small world", "hello big world", 2 / 3),  # one substitution / 3 reference words
    ("hello world", "hello big world", 2 / 3),  # one deletion
    ("a b c d", "a", 0.0),  # 3 insertions / 1 word -> 1 - 3 clipped to 0
    ("", "hello world", 0.0),
    ("a b", "a\nb", 1.0),  # any whitespace separates words
    ("", "", 1.0),  # empty reference: distance = #hyp words / max(1, 0)
    ("x", "  ", 0.0),
])
def test_ocr(pred, gold, expected):
    assert answer_accuracy(pred, gold, "OCR") == pytest.approx(expected)


def test_free_form_identical_partial_stemmed():
    assert answer_accuracy("The cat sat on the mat.", "the cat sat on the mat", "free-form") == pytest.approx(1.0)
    # R1: P 3/3 R 3/6 F 2/3; R2: P 2/2 R 2/5 F 4/7; RL: LCS 3 -> F 2/3; mean 40/63
    assert answer_accuracy("the cat sat", "the cat sat on the mat", "free-form") == pytest.approx(40 / 63)
    assert answer_accuracy("dogs running", "dog runs", "free-form") == pytest.approx(1.0)  # stemmer on
    assert answer_accuracy("zebra", "the cat", "free-form") == 0.0
    assert answer_accuracy("", "the cat", "free-form") == 0.0


@pytest.mark.parametrize("pred, gold, expected", [
    ("10", "10", 1.0), ("8", "10", 0.8), ("12", "10", 0.8), ("25", "10", 0.0), ("-10", "10", 0.0),
    ("1,200", "1000", 0.8), ("2.5", "2", 0.75),
    ("0", "0", 1.0), ("0.1", "0", 0.0),  # epsilon-guarded division by |gold|
    ("ten", "10", 0.0), ("", "10", 0.0), ("5", "n/a", 0.0),
])
def test_regression(pred, gold, expected):
    assert answer_accuracy(pred, gold, "regression") == pytest.approx(expected)


def test_accuracy_reward_extracts_from_completion():
    assert accuracy_reward(wrap("(B)"), "B", "multiple choice") == 1.0
    assert accuracy_reward("B", "B", "multiple choice") == 0.0  # no <answer> tag: nothing extracted
    assert accuracy_reward(wrap("8"), "10", "regression") == pytest.approx(0.8)


def test_unknown_problem_type_raises():
    with pytest.raises(ConfigError, match="multiple choice"):
        accuracy_reward(wrap("B"), "B", "Multiple Choice")


# --- format (docs/method.md#format) ------------------------------------------------------------------------

@pytest.mark.parametrize("text, video_r1, tiny", [
    ("<think>a</think><answer>B</answer>", 1.0, 1.0),
    ("<think>\nmulti\nline\n</think>\n\n<answer>B</answer>", 1.0, 1.0),
    ("<think></think><answer></answer>", 1.0, 1.0),
    (" <think>a</think><answer>B</answer>", 0.0, 0.0),  # fullmatch: nothing before
    ("<think>a</think><answer>B</answer> done", 0.0, 0.0),  # nor after
    ("<answer>B</answer>", 0.0, 0.0),
    ("<think>a</think> so <answer>B</answer>", 0.0, 0.0),
    ("<think>a</think><think>b</think><answer>B</answer>", 1.0, 0.0),  # a repeated tag breaks only TinyLLaVA's
    ("<think>a <answer>x</answer></think><answer>B</answer>", 1.0, 0.0),
])
def test_format_rules(text, video_r1, tiny):
    assert video_r1_format(text) == video_r1
    assert tinyllava_format(text) == tiny


# --- Video-R1 length bonus (docs/method.md#video-r1-total-reward) ---------------------------------------------------------

def test_length_bonus_interval_and_threshold():
    acc = [1.0, 1.0, 0.0, 1.0, 1.0, 0.1, 0.11]
    tokens = [320, 512, 400, 319, 513, 400, 400]
    # in [320, 512] and accuracy > 0.1; 0.1 itself is not correct
    assert video_r1_length_bonus(acc, tokens) == [0.2, 0.2, 0.0, 0.0, 0.0, 0.0, 0.2]
    assert video_r1_length_bonus(acc, tokens, omega=0.1) == [0.1, 0.1, 0.0, 0.0, 0.0, 0.0, 0.1]
    assert video_r1_length_bonus(acc, tokens, l_min=100, l_max=319) == [0.0] * 3 + [0.2] + [0.0] * 3


def test_length_bonus_needs_two_correct():
    acc, tokens = [1.0, 0.0, 0.0, 0.0], [400] * 4
    assert video_r1_length_bonus(acc, tokens) == [0.0] * 4
    assert video_r1_length_bonus(acc, tokens, require_two_correct=False) == [0.2, 0.0, 0.0, 0.0]
    assert video_r1_length_bonus([1.0, 1.0, 0.0, 0.0], tokens) == [0.2, 0.2, 0.0, 0.0]


def test_length_bonus_bad_interval():
    with pytest.raises(ConfigError):
        video_r1_length_bonus([1.0], [400], l_min=512, l_max=320)


def test_length_bonus_group_function():
    g = group([wrap("B"), wrap("B"), wrap("C"), wrap("B")], "B", num_tokens=[400, 100, 400, 512])
    out = get_reward("length_bonus")(g)
    assert out.rewards == [0.2, 0.0, 0.0, 0.2]
    assert out.components == {"length_bonus": [0.2, 0.0, 0.0, 0.2]}
    assert get_reward("length_bonus")(g, omega=0.1).rewards == [0.1, 0.0, 0.0, 0.1]


# --- TinyLLaVA-Video-R1 (docs/method.md#tinyllava-video-r1-reward) ------------------------------------------------------------

@pytest.mark.parametrize("length, ml, expected", [
    (0, 1200, 0.0), (300, 1200, 0.125), (600, 1200, 0.25), (1200, 1200, 0.5), (2400, 1200, 0.5), (50, 100, 0.25),
])
def test_tinyllava_length_reward(length, ml, expected):
    completion = wrap("C", think="x" * length)
    assert think_length(completion) == length
    assert tinyllava_length_reward(completion, ml=ml) == pytest.approx(expected)


def test_think_length_strips_whitespace():
    assert think_length("<think>\n  abc  \n</think><answer>C</answer>") == 3
    assert think_length("<answer>C</answer>") == 0
    assert tinyllava_length_reward(wrap("C", think="x" * 600), r1=1.0) == pytest.approx(0.5)


@pytest.mark.parametrize("correct, fr, code, paper", [
    (True, 0.75, 1.75, 1.75),  # AR + FR
    (False, 0.75, -0.75, -0.75),  # -FR
    (True, 0.0, 1.0, -2.0),  # correct, broken format: the code keeps AR = +1
    (False, 0.0, -2.0, -2.0),  # -(r0 + r1 + r2)
])
def test_tinyllava_total_cases(correct, fr, code, paper):
    assert tinyllava_total(correct, fr, variant="code") == pytest.approx(code)
    assert tinyllava_total(correct, fr, variant="paper") == pytest.approx(paper)


def test_tinyllava_total_custom_weights_and_bad_variant():
    assert tinyllava_total(False, 0.0, r0=0.5, r1=0.5, r2=2.0) == pytest.approx(-3.0)
    assert tinyllava_total(True, 0.0, r2=2.0, variant="code") == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="paper"):
        tinyllava_total(True, 0.5, variant="eq4")


def test_tinyllava_group_function_both_variants():
    think = "x" * 600  # LR = 0.25, FR = 0.75
    completions = [
        wrap("C", think),  # correct, formatted
        wrap("A", think),  # wrong, formatted
        "<answer>C</answer>",  # correct, no think block
        "I think A",  # wrong, no format
        f"<think>{think}</think><think>y</think><answer>C</answer>",  # correct, repeated tag
    ]
    g = group(completions, "C")
    code = get_reward("tinyllava")(g)
    assert code.rewards == pytest.approx([1.75, -0.75, 1.0, -2.0, 1.0])
    assert code.components["accuracy"] == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert code.components["format"] == pytest.approx([0.75, 0.75, 0.0, 0.0, 0.0])
    assert code.components["length"] == pytest.approx([0.25, 0.25, 0.0, 0.0, 0.0])
    paper = get_reward("tinyllava")(g, variant="paper")
    assert paper.rewards == pytest.approx([1.75, -0.75, -2.0, -2.0, -2.0])
    long = get_reward("tinyllava")(g, ml=600, r0=0.2, r1=0.4, r2=1.5)  # LR 0.4, FR 0.6
    assert long.rewards == pytest.approx([2.1, -0.6, 1.5, -2.1, 1.5])


# --- group interface and registry -------------------------------------------------------------

def test_accuracy_and_format_group_functions():
    g = group([wrap("12"), "<answer>10</answer>", wrap("x")], "10", problem_type="regression")
    acc = get_reward("accuracy")(g)
    assert acc.rewards == pytest.approx([0.8, 1.0, 0.0])
    assert acc.components == {"accuracy": acc.rewards}
    fmt = get_reward("format")(g)
    assert fmt.rewards == [1.0, 0.0, 1.0]
    assert fmt.components == {"format": [1.0, 0.0, 1.0]}


def test_registry():
    assert set(REWARDS) == {"accuracy", "format", "length_bonus", "tinyllava", "overlong"}
    with pytest.raises(ConfigError, match="tinyllava"):
        get_reward("accuracy_v2")
    assert reward_components("tinyllava") == ("accuracy", "format", "length")
    assert reward_components("format") == ("format",)


@pytest.mark.parametrize("num_tokens, expected", [
    (0, 0.0), (12, 0.0),  # |o| <= L_max - L_cache = 12: no penalty
    (13, -0.25), (14, -0.5), (16, -1.0),  # ((16 - 4) - |o|) / 4 inside the cache
    (17, -1.0), (100, -1.0),  # beyond L_max
])
def test_dapo_overlong_penalty(num_tokens, expected):
    # DAPO eq. 13 with L_max = 16, L_cache = 4
    assert overlong_penalty(num_tokens, max_length=16, cache=4) == pytest.approx(expected)


def test_overlong_group_function_and_bad_cache():
    out = get_reward("overlong")(group(["a", "b", "c"], "A", num_tokens=[10, 14, 20]), max_length=16, cache=4)
    assert out.rewards == pytest.approx([0.0, -0.5, -1.0]) and out.components == {"overlong": out.rewards}
    with pytest.raises(ConfigError, match="cache"):
        overlong_penalty(3, max_length=16, cache=0)


def test_group_length_mismatch():
    with pytest.raises(ValueError, match="num_tokens"):
        CompletionGroup(completions=["a", "b"], num_tokens=[1], answer="A", problem_type="multiple choice",
                        options=[])


@pytest.mark.parametrize("variant", ["code", "paper"])
def test_tinyllava_strips_the_completion_first(variant):
    # the released cold-start checkpoint answers " <think>..." after "ASSISTANT:"; the reference strips it
    # (TinyLLaVA-Video-R1 tinyllava/train/tinyllava_trainer_reason.py, LLaVATrainer_Reason.compute_loss) before
    # format_reward and accuracy_reward (tinyllava/train/train.py): format holds, LR = 600 / 1200 * 0.5
    completion = " <think>" + "x" * 600 + "</think> <answer> C </answer>"
    for text in (completion, "\n" + completion + "\n"):
        out = get_reward("tinyllava")(group([text], "C"), variant=variant)
        assert out.rewards == pytest.approx([1.75])
        assert out.components["format"] == pytest.approx([0.75])
