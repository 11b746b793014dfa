"""The clipped GRPO policy loss with a k3 KL penalty (SPEC 5). Pure torch, no model."""
from __future__ import annotations

import torch
from torch import Tensor

from framethink.errors import ConfigError

NORMALIZATIONS = ("sequence", "token", "constant")


def _reduce(per_token: Tensor, mask: Tensor, normalization: str, max_completion_length: int | None) -> Tensor:
    """Masked [N, L] values -> scalar under the chosen normaliser."""
    masked = per_token * mask  # [N, L]
    if normalization == "token":
        return masked.sum() / mask.sum().clamp(min=1)
    if normalization == "constant":
        return (masked.sum(dim=1) / max_completion_length).mean()
    # clamp only guards an all-padding row; a real completion holds at least its EOS token
    return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()


def grpo_loss(logp: Tensor, old_logp: Tensor | None, ref_logp: Tensor | None, advantages: Tensor, mask: Tensor,
              *, epsilon: float = 0.2, beta: float = 0.04, normalization: str = "sequence",
              max_completion_length: int | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO loss `-(1/N) sum_i (1/|o_i|) sum_t [min(rho A_i, clip(rho, 1-eps, 1+eps) A_i) - beta KL_t]` (SPEC 5).

    logp, old_logp, ref_logp, mask: [N, L] over completion tokens (mask up to and including EOS);
    advantages: [N]. old_logp None means one update per generation batch: old = logp.detach(), so
    rho == 1 while the gradient stays that of the surrogate. KL_t is the k3 estimator
    exp(ref - logp) - (ref - logp) - 1; it enters the loss only when beta != 0 and ref_logp is given.

    normalization: "sequence" divides each completion's sum by |o_i|; "constant" (Dr. GRPO) by
    `max_completion_length`; "token" divides the batch's total by its number of tokens.
    Returns the loss and detached scalar diagnostics: policy_loss, kl (masked token mean),
    ratio_mean, clip_fraction (share of tokens where the clipped term is the active minimum), loss.
    """
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown loss normalization {normalization!r}; known: {list(NORMALIZATIONS)}")
    if normalization == "constant" and (max_completion_length is None or max_completion_length <= 0):
        raise ConfigError("normalization 'constant' needs a positive max_completion_length")
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp), ("mask", mask)):
        if t is not None and t.shape != logp.shape:
            raise ValueError(f"{name} must match logp's shape {tuple(logp.shape)}, got {tuple(t.shape)}")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be [N] = [{logp.shape[0]}], got {tuple(advantages.shape)}")

    mask = mask.to(logp.dtype)  # [N, L]
    if old_logp is None:
        old_logp = logp.detach()
    ratio = torch.exp(logp - old_logp)  # [N, L]
    adv = advantages.to(logp.dtype).unsqueeze(1)  # [N, 1]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)  # [N, L]
    policy_loss = _reduce(-surrogate, mask, normalization, max_completion_length)

    loss = policy_loss
    kl_mean = torch.zeros((), dtype=logp.dtype, device=logp.device)
    if ref_logp is not None:
        delta = ref_logp - logp  # [N, L]
        kl = torch.exp(delta) - delta - 1  # [N, L], k3 estimator, >= 0
        kl_mean = (kl * mask).sum() / mask.sum().clamp(min=1)
        if beta != 0:
            loss = _reduce(beta * kl - surrogate, mask, normalization, max_completion_length)

    n_tokens = mask.sum().clamp(min=1)
    # the clipped term wins the min only where it removes the gradient: rho above 1+eps with A > 0,
    # or below 1-eps with A < 0
    clipped = ((ratio > 1 + epsilon) & (adv > 0)) | ((ratio < 1 - epsilon) & (adv < 0))  # [N, L]
    diagnostics = {
        "policy_loss": policy_loss.detach(),
        "kl": kl_mean.detach(),
        "ratio_mean": ((ratio * mask).sum() / n_tokens).detach(),
        "clip_fraction": ((clipped.to(mask.dtype) * mask).sum() / n_tokens).detach(),
        "loss": loss.detach(),
    }
    return loss, diagnostics
