"""Advantage estimators, registered by name, and the T-GRPO temporal bonus, a reward-stage step
(docs/method.md#advantages, docs/method.md#t-grpo). Pure torch, no model.

An estimator is one function and one `@register_advantage` line (the pattern of verl's
`verl/trainer/ppo/core_algos.py`, `register_adv_est`): rewards [B, G] of B prompt groups in, advantages [B, G] out.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from framethink.rl.registry import Registry


AdvantageFn = Callable[..., Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")
get_advantage = ADVANTAGES.lookup


def register_advantage(name: str) -> Callable[[AdvantageFn], AdvantageFn]:
    def register(fn: AdvantageFn) -> AdvantageFn:
        ADVANTAGES[name] = fn
        return fn

    return register


def _check_groups(rewards: Tensor) -> None:
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    if rewards.shape[1] < 2:
        raise ValueError(f"a group needs G >= 2 completions per prompt, got G = {rewards.shape[1]}")


@register_advantage("grpo")
def grpo(rewards: Tensor, *, eps: float = 1e-4) -> Tensor:
    """GRPO: `A_i = (r_i - mean(r)) / (std(r) + eps)` within each prompt's group, torch's unbiased std, as both
    reference trainers compute it. rewards [B, G] -> [B, G]."""
    _check_groups(rewards)
    centred = rewards - rewards.mean(dim=1, keepdim=True)  # [B, G]
    return centred / (rewards.std(dim=1, keepdim=True) + eps)  # [B, 1] broadcast


@register_advantage("dr_grpo")
def dr_grpo(rewards: Tensor, *, eps: float = 1e-4) -> Tensor:
    """Dr. GRPO (Liu et al. 2025): `A_i = r_i - mean(r)`, no division by the std (`eps` unused). [B, G] -> [B, G]."""
    _check_groups(rewards)
    return rewards - rewards.mean(dim=1, keepdim=True)  # [B, G]


@register_advantage("rloo")
def rloo(rewards: Tensor, *, eps: float = 1e-4) -> Tensor:
    """RLOO (Ahmadian et al. 2024): `A_i = r_i - mean_{j != i} r_j = G / (G - 1) (r_i - mean(r))` (`eps` unused).
    [B, G] -> [B, G]."""
    _check_groups(rewards)
    g = rewards.shape[1]
    leave_one_out = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)  # [B, G]
    return rewards - leave_one_out


def compute_advantages(rewards: Tensor, name: str = "grpo", *, eps: float = 1e-4, noise_std: float = 0.0,
                       generator: torch.Generator | None = None) -> Tensor:
    """The estimator `name` on rewards [B, G] -> [B, G], plus N(0, noise_std^2) per completion when
    `noise_std > 0` (TinyLLaVA-Video-R1's 0.02, so that all-equal groups still give a signal), drawn from
    `generator` when one is given."""
    advantages = get_advantage(name)(rewards, eps=eps)  # [B, G]
    if noise_std > 0:
        noise = torch.randn(advantages.shape, generator=generator, dtype=advantages.dtype,
                            device=advantages.device)  # [B, G]
        advantages = advantages + noise_std * noise
    return advantages


@dataclass
class TemporalBonus:
    """The T-GRPO bonus of a batch and the per-prompt statistics behind it."""

    bonus: Tensor  # [B, G] reward added to each ordered response
    p: Tensor  # [B] mean accuracy of the ordered group
    p_shuffled: Tensor  # [B] mean accuracy of the shuffled group (NaN for non-video prompts)
    applied: Tensor  # [B] bool, the prompt earned the bonus


def temporal_bonus(acc_ordered: Tensor, acc_shuffled: Tensor, is_video: Tensor, *, alpha: float = 0.3,
                   mu: float = 0.8, correct_threshold: float = 0.1, strict: bool = False) -> TemporalBonus:
    """T-GRPO temporal reward r_t per prompt group (docs/method.md#t-grpo), added to the rewards before the
    advantages.

    acc_ordered: [B, G] accuracy of responses to the ordered frames; acc_shuffled: [B, Gs] accuracy on
    the shuffled frames; is_video: [B] bool. For a video prompt with p >= mu * p~ (p > mu * p~ when
    `strict`, as the paper writes) every ordered response with accuracy > `correct_threshold` gets
    alpha. p and p~ are means over each prompt's own group. Non-video rows get no bonus, whatever
    their acc_shuffled holds (NaN included).
    """
    if acc_ordered.dim() != 2 or acc_shuffled.dim() != 2 or acc_shuffled.shape[0] != acc_ordered.shape[0]:
        raise ValueError(f"need acc_ordered [B, G] and acc_shuffled [B, Gs], got "
                         f"{tuple(acc_ordered.shape)} and {tuple(acc_shuffled.shape)}")
    if is_video.shape != acc_ordered.shape[:1]:
        raise ValueError(f"is_video must be [B] = [{acc_ordered.shape[0]}], got {tuple(is_video.shape)}")
    is_video = is_video.to(torch.bool)
    if bool(is_video.any()) and acc_shuffled.shape[1] == 0:
        raise ValueError("video prompts need at least one shuffled-frame response (Gs >= 1)")
    p = acc_ordered.mean(dim=1)  # [B]
    nan = torch.full_like(p, float("nan"))
    p_shuffled = torch.where(is_video, acc_shuffled.mean(dim=1), nan)  # [B]
    beats_shuffled = p > mu * p_shuffled if strict else p >= mu * p_shuffled  # [B], False where NaN
    applied = is_video & beats_shuffled  # [B]
    correct = acc_ordered > correct_threshold  # [B, G]
    bonus = alpha * (correct & applied.unsqueeze(1)).to(acc_ordered.dtype)  # [B, G]
    return TemporalBonus(bonus=bonus, p=p, p_shuffled=p_shuffled, applied=applied)
