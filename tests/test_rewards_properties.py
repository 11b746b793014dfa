"""Property tests: no string makes a reward raise, and every reward stays in its documented range (docs/method.md#rewards)."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from framethink.rewards import (
    CompletionGroup,
    accuracy_reward,
    extract_answer,
    get_reward,
    normalize_option,
    parse_number,
    tinyllava_length_reward,
    video_r1_format,
)

PROBLEM_TYPES = ["multiple choice", "numerical", "OCR", "free-form", "regression"]
# text biased towards what the rules look at: tags, option letters, digits, marks, whitespace
fragments = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "(", ")", ".", ",", "-", " ", "\n",
                             "B", "b", "A. cat", "3", "1,000", "0.5", "e5", "nan", "the cat", "dogs"])
texts = st.one_of(st.text(max_size=60), st.lists(st.one_of(fragments, st.text(max_size=5)), max_size=12).map("".join))
completions = st.one_of(texts, st.builds(lambda t, a: f"<think>{t}</think><answer>{a}</answer>", texts, texts))
few = settings(max_examples=60, deadline=None)


@few
@given(completion=completions, answer=texts, problem_type=st.sampled_from(PROBLEM_TYPES))
def test_accuracy_in_unit_interval(completion, answer, problem_type):
    assert 0.0 <= accuracy_reward(completion, answer, problem_type) <= 1.0


@few
@given(text=texts)
def test_parsers_are_total(text):
    assert isinstance(extract_answer(text), str)
    letter = normalize_option(text)
    assert letter == "" or (len(letter) == 1 and letter.isupper())
    number = parse_number(text)
    assert number is None or number == number  # never NaN


@few
@given(completion=completions)
def test_format_and_length_ranges(completion):
    assert video_r1_format(completion) in (0.0, 1.0)
    assert 0.0 <= tinyllava_length_reward(completion) <= 0.5


@few
@given(batch=st.lists(st.tuples(completions, st.integers(0, 1000)), min_size=1, max_size=6), answer=texts,
       problem_type=st.sampled_from(PROBLEM_TYPES), variant=st.sampled_from(["code", "paper"]))
def test_group_rewards_ranges(batch, answer, problem_type, variant):
    group = CompletionGroup(completions=[c for c, _ in batch], num_tokens=[n for _, n in batch], answer=answer,
                            problem_type=problem_type, options=[])
    tiny = get_reward("tinyllava")(group, variant=variant)
    assert all(-2.0 <= r <= 2.0 for r in tiny.rewards)
    assert all(f == 0.0 or 0.5 <= f <= 1.0 for f in tiny.components["format"])
    bonus = get_reward("length_bonus")(group)
    assert all(b in (0.0, 0.2) for b in bonus.rewards)
    for name in ("accuracy", "format"):
        out = get_reward(name)(group)
        assert len(out.rewards) == len(batch)
        assert all(0.0 <= r <= 1.0 for r in out.rewards)
