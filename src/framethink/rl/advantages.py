"""Group-relative advantages and the T-GRPO temporal bonus (SPEC 5). Pure torch, no model."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def group_advantages(rewards: Tensor, *, scale_by_std: bool = True, eps: float = 1e-4,
                     noise_std: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """GRPO advantages `(r - mean(r)) / (std(r) + eps)` within each prompt's group (SPEC 5).

    rewards: [B, G], one row per prompt. std is torch's unbiased std. `scale_by_std=False` is
    Dr. GRPO (centre only). `noise_std > 0` adds N(0, noise_std^2) to every advantage (TinyLLaVA's
    0.02), drawn from `generator` when one is given. Returns [B, G].
    """
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [B, G], got shape {tuple(rewards.shape)}")
    if scale_by_std and rewards.shape[1] < 2:
        raise ValueError(f"the unbiased std needs G >= 2 completions per prompt, got G = {rewards.shape[1]}")
    advantages = rewards - rewards.mean(dim=1, keepdim=True)  # [B, G]
    if scale_by_std:
        advantages = advantages / (rewards.std(dim=1, keepdim=True) + eps)  # [B, 1] broadcast
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
    """T-GRPO temporal reward r_t per prompt group (SPEC 5).

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
