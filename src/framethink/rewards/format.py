"""Format rewards and the TinyLLaVA-Video-R1 format/length/total reward (docs/method.md#format,
docs/method.md#tinyllava-video-r1-reward)."""
from __future__ import annotations

import re

from framethink.errors import ConfigError

_FORMAT_RE = re.compile(r"<think>.*?</think>\s*<answer>.*?</answer>", re.DOTALL)
_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
TINYLLAVA_VARIANTS = ("code", "paper")


def video_r1_format(completion: str) -> float:
    """1 if the whole completion is `<think>...</think> <answer>...</answer>`, else 0 (docs/method.md#format)."""
    return float(_FORMAT_RE.fullmatch(completion) is not None)


def tinyllava_format(completion: str) -> float:
    """The Video-R1 rule, and each of the four tags occurs exactly once (docs/method.md#format)."""
    return float(bool(video_r1_format(completion)) and all(completion.count(tag) == 1 for tag in _TAGS))


def think_length(completion: str) -> int:
    """Characters of the first `<think>` block, surrounding whitespace stripped; 0 if none (docs/method.md#tinyllava-video-r1-reward)."""
    match = _THINK_RE.search(completion)
    return len(match.group(1).strip()) if match else 0


def tinyllava_length_reward(completion: str, *, ml: int = 1200, r1: float = 0.5) -> float:
    """LR = min(1, Len / ML) * r1, Len in characters inside `<think></think>` (docs/method.md#tinyllava-video-r1-reward)."""
    if ml <= 0:
        raise ConfigError(f"tinyllava ml must be positive, got {ml}")
    return min(1.0, think_length(completion) / ml) * r1


def tinyllava_total(correct: bool, format_reward: float, *, r0: float = 0.5, r1: float = 0.5,
                    r2: float = 1.0, variant: str = "code") -> float:
    """Total TinyLLaVA-Video-R1 reward from correctness and FR (docs/method.md#tinyllava-video-r1-reward).

    paper (eq. 4): AR + FR if FR > 0 and correct; -FR if FR > 0 and wrong; -(r0 + r1 + r2) if FR = 0.
    code: the same, except a correct answer with broken format earns AR (= r2, i.e. +1), not the penalty.
    """
    if variant not in TINYLLAVA_VARIANTS:
        raise ConfigError(f"unknown tinyllava variant {variant!r}; known: {list(TINYLLAVA_VARIANTS)}")
    if format_reward > 0:
        return r2 + format_reward if correct else -format_reward
    if correct and variant == "code":
        return r2
    return -(r0 + r1 + r2)
