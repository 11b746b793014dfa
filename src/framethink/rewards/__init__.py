"""Rule-based rewards (docs/method.md#rewards): answer accuracy by problem type, format, length shaping, registry."""
from framethink.rewards.accuracy import (
    ACCURACY_BY_TYPE,
    CORRECT_THRESHOLD,
    accuracy_reward,
    answer_accuracy,
    extract_answer,
    normalize_option,
    parse_number,
)
from framethink.rewards.format import (
    think_length,
    tinyllava_format,
    tinyllava_length_reward,
    tinyllava_total,
    video_r1_format,
)
from framethink.rewards.registry import (
    REWARDS,
    CompletionGroup,
    RewardFn,
    RewardOutput,
    get_reward,
    overlong_penalty,
    reward_components,
    video_r1_length_bonus,
)

__all__ = [
    "ACCURACY_BY_TYPE",
    "CORRECT_THRESHOLD",
    "REWARDS",
    "CompletionGroup",
    "RewardFn",
    "RewardOutput",
    "accuracy_reward",
    "answer_accuracy",
    "extract_answer",
    "get_reward",
    "normalize_option",
    "overlong_penalty",
    "parse_number",
    "reward_components",
    "think_length",
    "tinyllava_format",
    "tinyllava_length_reward",
    "tinyllava_total",
    "video_r1_format",
    "video_r1_length_bonus",
]
