"""Group-level reward functions and the registry a recipe names them from (docs/method.md#rewards).

A reward function takes one prompt's group of completions and keyword parameters from the recipe,
and returns the value it contributes to each completion plus named components for logging. The
trainer sums the `rewards` of the functions a recipe lists; the `accuracy` component is what the
T-GRPO bonus (docs/method.md#t-grpo) reads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from framethink.errors import ConfigError
from framethink.rewards.accuracy import CORRECT_THRESHOLD, accuracy_reward
from framethink.rewards.format import (
    tinyllava_format,
    tinyllava_length_reward,
    tinyllava_total,
    video_r1_format,
)


@dataclass(frozen=True)
class CompletionGroup:
    """One prompt's G completions with what the rewards need to score them."""

    completions: list[str]
    num_tokens: list[int]  # completion lengths in tokens
    answer: str  # gold answer (already extracted)
    problem_type: str
    options: list[str]

    def __post_init__(self) -> None:
        if len(self.completions) != len(self.num_tokens):
            raise ValueError(
                f"CompletionGroup: {len(self.completions)} completions but {len(self.num_tokens)} num_tokens"
            )


@dataclass
class RewardOutput:
    """What one reward function gives one group."""

    rewards: list[float]  # the value this function contributes, one per completion
    components: dict[str, list[float]]  # per-component values for logging


RewardFn = Callable[..., RewardOutput]


def _accuracies(group: CompletionGroup) -> list[float]:
    return [accuracy_reward(c, group.answer, group.problem_type) for c in group.completions]


def accuracy(group: CompletionGroup) -> RewardOutput:
    """Accuracy reward of each completion by the group's problem type (docs/method.md#accuracy-by-problem-type)."""
    acc = _accuracies(group)
    return RewardOutput(rewards=acc, components={"accuracy": acc})


def video_r1_format_reward(group: CompletionGroup) -> RewardOutput:
    """Video-R1 format reward, 1 or 0 (docs/method.md#format)."""
    fmt = [video_r1_format(c) for c in group.completions]
    return RewardOutput(rewards=fmt, components={"format": fmt})


def video_r1_length_bonus(accuracies: list[float], num_tokens: list[int], *, omega: float = 0.2,
                          l_min: int = 320, l_max: int = 512, require_two_correct: bool = True) -> list[float]:
    """omega for each correct response (accuracy > 0.1) whose token length is in [l_min, l_max] (docs/method.md#video-r1-total-reward).

    omega is 0.2 in the reference code (0.1 in the paper). With `require_two_correct` (the code's
    behaviour) nothing is awarded unless at least two responses of the group are correct.
    """
    if l_min > l_max:
        raise ConfigError(f"length_bonus needs l_min <= l_max, got [{l_min}, {l_max}]")
    correct = [a > CORRECT_THRESHOLD for a in accuracies]
    if require_two_correct and sum(correct) < 2:
        return [0.0] * len(accuracies)
    return [omega if ok and l_min <= n <= l_max else 0.0 for ok, n in zip(correct, num_tokens)]


def length_bonus(group: CompletionGroup, *, omega: float = 0.2, l_min: int = 320, l_max: int = 512,
                 require_two_correct: bool = True) -> RewardOutput:
    """Video-R1 length bonus of each completion of the group (docs/method.md#video-r1-total-reward)."""
    bonus = video_r1_length_bonus(_accuracies(group), group.num_tokens, omega=omega, l_min=l_min,
                                  l_max=l_max, require_two_correct=require_two_correct)
    return RewardOutput(rewards=bonus, components={"length_bonus": bonus})


def tinyllava(group: CompletionGroup, *, variant: str = "code", ml: int = 1200, r0: float = 0.5,
              r1: float = 0.5, r2: float = 1.0) -> RewardOutput:
    """The whole TinyLLaVA-Video-R1 reward: accuracy, format-with-length and the total rule
    (docs/method.md#tinyllava-video-r1-reward).

    Every rule reads the completion stripped of surrounding whitespace, as the reference does: its trainer
    strips each decoded completion before calling the reward functions (TinyLLaVA-Video-R1,
    tinyllava/train/tinyllava_trainer_reason.py, `LLaVATrainer_Reason.compute_loss`:
    `completion.strip()`), and `format_reward` / `accuracy_reward` (tinyllava/train/train.py) then fullmatch
    the format on that text. A completion starting with a space or newline (what the cold-start checkpoint
    writes after "ASSISTANT:") therefore keeps its format and length reward.

    Components: `accuracy` (raw, in [0, 1]), `format` (FR = r0 + LR, or 0 if the format is broken),
    `length` (LR where the format holds, else 0).
    """
    stripped = [c.strip() for c in group.completions]
    acc = [accuracy_reward(c, group.answer, group.problem_type) for c in stripped]
    ok = [tinyllava_format(c) > 0 for c in stripped]
    length = [tinyllava_length_reward(c, ml=ml, r1=r1) if f else 0.0 for c, f in zip(stripped, ok)]
    fmt = [r0 + lr if f else 0.0 for lr, f in zip(length, ok)]
    total = [tinyllava_total(a > CORRECT_THRESHOLD, fr, r0=r0, r1=r1, r2=r2, variant=variant)
             for a, fr in zip(acc, fmt)]
    return RewardOutput(rewards=total, components={"accuracy": acc, "format": fmt, "length": length})


def overlong_penalty(num_tokens: int, *, max_length: int, cache: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13): 0 up to `max_length - cache` tokens, then
    `((max_length - cache) - |o|) / cache` falling linearly to -1 at `max_length`, and -1 beyond it."""
    if not 0 < cache <= max_length:
        raise ConfigError(f"overlong needs 0 < cache <= max_length, got cache {cache}, max_length {max_length}")
    free = max_length - cache
    if num_tokens <= free:
        return 0.0
    if num_tokens <= max_length:
        return (free - num_tokens) / cache
    return -1.0


def overlong(group: CompletionGroup, *, max_length: int, cache: int) -> RewardOutput:
    """DAPO's overlong reward shaping of each completion by its length in tokens (docs/method.md#dapo)."""
    penalty = [overlong_penalty(n, max_length=max_length, cache=cache) for n in group.num_tokens]
    return RewardOutput(rewards=penalty, components={"overlong": penalty})


# name -> (function, the components it reports); `accuracy` is what the T-GRPO bonus reads
_REGISTRY: dict[str, tuple[RewardFn, tuple[str, ...]]] = {
    "accuracy": (accuracy, ("accuracy",)),
    "format": (video_r1_format_reward, ("format",)),
    "length_bonus": (length_bonus, ("length_bonus",)),
    "tinyllava": (tinyllava, ("accuracy", "format", "length")),
    "overlong": (overlong, ("overlong",)),
}
REWARDS: dict[str, RewardFn] = {name: fn for name, (fn, _) in _REGISTRY.items()}


def get_reward(name: str) -> RewardFn:
    """The registered group reward function called `name` (docs/method.md#rewards)."""
    if name not in REWARDS:
        raise ConfigError(f"unknown reward {name!r}; known: {sorted(REWARDS)}")
    return REWARDS[name]


def reward_components(name: str) -> tuple[str, ...]:
    """The component names the reward `name` reports for logging (and `accuracy` for T-GRPO)."""
    get_reward(name)
    return _REGISTRY[name][1]
