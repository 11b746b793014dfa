"""Rules of lmms-eval 0.7 shared by several benchmarks: its reasoning front end and its multiple-choice extractor.

Ported line for line from EvolvingLMMs-Lab/lmms-eval v0.7.2 (commit 75571cf):
`lmms_eval/api/reasoning.py` `strip_reasoning_tags` with the command line's default tag pairs, and
`lmms_eval/tasks/_task_utils/mcq_extract.py` `extract_mcq_answer`. The tests compare both with the package's own
functions where lmms-eval is installed.
"""
from __future__ import annotations

# lmms_eval/__main__.py: --reasoning_tags default
REASONING_TAGS = (("<think>", "</think>"), ("<analysis>", "</analysis>"))

_DEFAULT_CHOICES = ["A", "B", "C", "D", "E", "F", "G", "H"]
_ANSWER_PHRASES = [
    "the answer is", "answer is", "the correct answer is", "correct answer is", "the best answer is", "best answer is",
    "the correct option is", "correct option is", "the best option is", "best option is", "the choice is", "choice is",
    "the correct choice is", "correct choice is", "i choose", "i select", "i pick", "my answer is", "my choice is",
    "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选", "答えは",
]
_FORMAT_PRIORITY = {"start": 10, "end": 9, "phrase": 7, "parentheses": 6, "period": 5, "colon": 4, "right_paren": 3,
                    "space": 2, "fallback": 0}


def strip_reasoning_tags(text: str, tag_pairs=REASONING_TAGS) -> str:
    """lmms-eval's `strip_reasoning_tags`: remove every closed reasoning block; when only a closing tag is left
    (a template that pre-fills the opening tag), keep what follows the last closing tag; strip whitespace."""
    result = text
    for start_tag, end_tag in tag_pairs:
        while start_tag in result and end_tag in result:
            start = result.find(start_tag)
            end = result.find(end_tag, start)
            if start != -1 and end != -1:
                result = result[:start] + result[end + len(end_tag):]
            else:
                break
        if end_tag in result and start_tag not in result:
            result = result.rsplit(end_tag, 1)[-1]
    return result.strip()


def extract_mcq_answer(response: str, choices: list[str] | None = None) -> str:
    """lmms-eval's `extract_mcq_answer`: candidates in ten formats, the highest-priority format wins and, within
    it, the last position; "" when no choice letter occurs at all."""
    if not response or not response.strip():
        return ""
    all_choices = choices or _DEFAULT_CHOICES
    text = response.strip()
    for char in [",", ".", "!", "?", ";", ":", "'", '"']:
        text = text.strip(char)
    text = " " + text + " "
    candidates: list[tuple[str, int, str]] = []
    for pattern, name in (("({})", "parentheses"), ("{}.", "period"), ("{}:", "colon"), ("{})", "right_paren"),
                          ("{} ", "space")):
        for ch in all_choices:
            if pattern.format(ch) in text:
                candidates.append((ch, text.rfind(pattern.format(ch)), name))
    text_lower = text.lower()
    for phrase in _ANSWER_PHRASES:
        idx = text_lower.find(phrase)
        if idx != -1:
            after = idx + len(phrase)
            for ch in all_choices:
                ch_pos = text.find(ch, after)
                if ch_pos != -1:
                    candidates.append((ch, ch_pos, "phrase"))
    stripped = text.strip()
    for ch in all_choices:
        if stripped.startswith(ch) and (len(stripped) == 1 or not stripped[1].isalpha()):
            candidates.append((ch, 0, "start"))
    for ch in all_choices:
        if stripped.endswith(ch) and (len(stripped) == 1 or not stripped[-2].isalpha()):
            candidates.append((ch, len(text) - 1, "end"))
    if not candidates:
        for ch in all_choices:
            if ch in text:
                candidates.append((ch, text.rfind(ch), "fallback"))
    if not candidates:
        return ""
    candidates.sort(key=lambda x: (_FORMAT_PRIORITY.get(x[2], 0), x[1]), reverse=True)
    return candidates[0][0]
