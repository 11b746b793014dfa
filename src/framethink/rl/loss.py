"""Policy losses, registered by name (docs/method.md#policy-losses). Pure torch, no model.

Each loss is one function and one `@register_policy_loss` line, the pattern of verl's
`verl/trainer/ppo/core_algos.py` (`register_policy_loss`, `agg_loss`): it takes the step's log-probabilities,
advantages and mask and returns `(loss, metrics)`, the loss already divided by the step's own normaliser
(`StepTotals`: all micro-batches and processes of the step), so summing the micro-batch losses and averaging
gradients over processes gives exactly the loss of the whole step in one batch.

Shapes: N = B*G completions of the step's micro-batch, L = completion tokens (padded).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from framethink.errors import ConfigError
from framethink.rl.registry import Registry

if TYPE_CHECKING:  # the config validates loss names through this module
    from framethink.config import RLConfig

NORMALIZATIONS = ("sequence", "token", "constant")


@dataclass(frozen=True)
class StepTotals:
    """What one optimiser step normalises by: its completion tokens and rows (those with a token in the loss: a
    completion masked out entirely, e.g. a truncated one under `rl.mask_truncated`, is not counted) summed over
    every micro-batch and process, and the number of processes (the engine averages gradients over them, so each
    process's share of the sum is scaled back up by it)."""

    tokens: float
    rows: float
    processes: int = 1

    @classmethod
    def of(cls, mask: Tensor) -> StepTotals:
        """The totals of a step that is this one batch on one process."""
        return cls(tokens=float(mask.sum()), rows=float((mask.sum(-1) > 0).sum()))


@dataclass(frozen=True)
class LossSettings:
    """A policy loss's resolved settings: the recipe's values, or the loss's own defaults where unset."""

    clip_low: float
    clip_high: float
    beta: float
    normalization: str
    max_completion_length: int
    kl_log_ratio_clamp: float | None = None
    kl_clamp: float | None = None

    def __post_init__(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"unknown loss normalization {self.normalization!r}; known: {list(NORMALIZATIONS)}")
        if self.normalization == "constant" and self.max_completion_length <= 0:
            raise ConfigError("normalization 'constant' needs a positive max_completion_length")


@dataclass(frozen=True)
class LossBatch:
    """One micro-batch's inputs to a policy loss."""

    logp: Tensor  # [B*G, L] policy log-probs (with gradient)
    old_logp: Tensor | None  # [B*G, L] sampling policy's; None = one update per batch (old = logp.detach())
    ref_logp: Tensor | None  # [B*G, L] reference model's; None = no KL term
    advantages: Tensor  # [B*G]
    mask: Tensor  # [B*G, L] 1 up to and including EOS
    totals: StepTotals | None = None  # None: this batch is the whole step

    def __post_init__(self) -> None:
        for name in ("old_logp", "ref_logp", "mask"):
            t = getattr(self, name)
            if t is not None and t.shape != self.logp.shape:
                raise ValueError(f"{name} must match logp's shape {tuple(self.logp.shape)}, got {tuple(t.shape)}")
        if self.advantages.shape != self.logp.shape[:1]:
            raise ValueError(f"advantages must be [N] = [{self.logp.shape[0]}], got {tuple(self.advantages.shape)}")


LossFn = Callable[[LossBatch, LossSettings], tuple[Tensor, dict[str, Tensor]]]


@dataclass(frozen=True)
class PolicyLoss:
    """A registered loss and its defaults (used where the recipe leaves `rl.epsilon`, `rl.epsilon_high`,
    `rl.normalization` unset); `kl` False: the loss has no KL term, and no reference model is loaded for it."""

    fn: LossFn
    clip: tuple[float, float]
    normalization: str
    kl: bool


POLICY_LOSSES: Registry[PolicyLoss] = Registry("policy loss")
get_policy_loss = POLICY_LOSSES.lookup


def register_policy_loss(name: str, *, clip: tuple[float, float], normalization: str,
                         kl: bool = True) -> Callable[[LossFn], LossFn]:
    def register(fn: LossFn) -> LossFn:
        POLICY_LOSSES[name] = PolicyLoss(fn, clip, normalization, kl)
        return fn

    return register


def loss_settings(rl: RLConfig) -> LossSettings:
    """The recipe's loss settings, each unset value taken from the loss's defaults."""
    entry = get_policy_loss(rl.loss)
    low = entry.clip[0] if rl.epsilon is None else rl.epsilon
    high = (entry.clip[1] if rl.epsilon is None else rl.epsilon) if rl.epsilon_high is None else rl.epsilon_high
    return LossSettings(clip_low=low, clip_high=high, beta=rl.beta if entry.kl else 0.0,
                        normalization=rl.normalization or entry.normalization,
                        max_completion_length=rl.max_new_tokens, kl_log_ratio_clamp=rl.kl_log_ratio_clamp,
                        kl_clamp=rl.kl_clamp)


def policy_loss(name: str, batch: LossBatch, settings: LossSettings) -> tuple[Tensor, dict[str, Tensor]]:
    """The loss `name` of one micro-batch, and its detached scalar metrics."""
    return get_policy_loss(name).fn(batch, settings)


def aggregate(per_token: Tensor, mask: Tensor, normalization: str, totals: StepTotals,
              max_completion_length: int) -> Tensor:
    """Masked per-token values [B*G, L] -> this micro-batch's share of the step's loss (verl's `agg_loss`).

    token:    sum over the step's tokens / the step's token count (DAPO's batch-level token mean);
    sequence: mean over the step's completions of each completion's token mean (GRPO);
    constant: mean over the step's completions of each completion's token sum / max_completion_length
              (Dr. GRPO).
    Each is multiplied by the process count, since the engine averages gradients over processes.
    """
    masked = per_token * mask  # [B*G, L]
    if normalization == "token":
        return masked.sum() * totals.processes / max(totals.tokens, 1.0)
    if normalization == "constant":
        per_row = masked.sum(dim=1) / max_completion_length  # [B*G]
    else:  # the clamp only guards an all-padding row; a real completion holds at least its EOS token
        per_row = masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [B*G]
    return per_row.sum() * totals.processes / max(totals.rows, 1.0)


def k3_kl(logp: Tensor, ref_logp: Tensor, settings: LossSettings) -> Tensor:
    """The k3 estimator `exp(ref - logp) - (ref - logp) - 1` per token [B*G, L], with the reference codes'
    guards where the settings ask for them: Video-R1 clamps `ref - logp` to [-10, 10] before the estimator
    (tulerfeng/Video-R1, src/r1-v/src/open_r1/trainer/grpo_trainer.py, `Qwen2VLGRPOTrainer.compute_loss`);
    TinyLLaVA-Video-R1 clamps the estimate itself to [-100, 100] (ZhangXJ199/TinyLLaVA-Video-R1,
    tinyllava/train/tinyllava_trainer_reason.py, `LLaVATrainer_Reason.compute_loss`)."""
    delta = ref_logp - logp  # [B*G, L]
    if settings.kl_log_ratio_clamp is not None:
        delta = delta.clamp(-settings.kl_log_ratio_clamp, settings.kl_log_ratio_clamp)
    kl = torch.exp(delta) - delta - 1  # [B*G, L], >= 0
    if settings.kl_clamp is not None:
        kl = kl.clamp(-settings.kl_clamp, settings.kl_clamp)
    return kl


def _clipped_surrogate(batch: LossBatch, settings: LossSettings) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token `-min(r A, clip(r, 1 - clip_low, 1 + clip_high) A)` with r = pi / pi_old, and its metrics."""
    mask = batch.mask.to(batch.logp.dtype)  # [B*G, L]
    old = batch.logp.detach() if batch.old_logp is None else batch.old_logp
    ratio = torch.exp(batch.logp - old)  # [B*G, L]
    adv = batch.advantages.to(batch.logp.dtype).unsqueeze(1)  # [B*G, 1]
    clipped_ratio = torch.clamp(ratio, 1 - settings.clip_low, 1 + settings.clip_high)  # [B*G, L]
    surrogate = torch.minimum(ratio * adv, clipped_ratio * adv)  # [B*G, L]
    # the clipped term wins the min only where it removes the gradient: r above 1 + clip_high with A > 0, or
    # below 1 - clip_low with A < 0
    clipped = ((ratio > 1 + settings.clip_high) & (adv > 0)) | ((ratio < 1 - settings.clip_low) & (adv < 0))
    return -surrogate, _ratio_metrics(ratio, clipped, mask)


def _ratio_metrics(ratio: Tensor, clipped: Tensor, mask: Tensor) -> dict[str, Tensor]:
    n_tokens = mask.sum().clamp(min=1)
    return {"ratio_mean": ((ratio * mask).sum() / n_tokens).detach(),
            "clip_fraction": ((clipped.to(mask.dtype) * mask).sum() / n_tokens).detach()}


def _with_kl(policy_per_token: Tensor, batch: LossBatch, settings: LossSettings,
             metrics: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Aggregate the policy term, add `beta * KL_t` when a reference is given and beta != 0; final metrics."""
    mask = batch.mask.to(batch.logp.dtype)  # [B*G, L]
    totals = batch.totals or StepTotals.of(mask)
    args = (mask, settings.normalization, totals, settings.max_completion_length)
    policy = aggregate(policy_per_token, *args)
    loss = policy
    kl_mean = torch.zeros((), dtype=batch.logp.dtype, device=batch.logp.device)
    if batch.ref_logp is not None:
        kl = k3_kl(batch.logp, batch.ref_logp, settings)  # [B*G, L]
        kl_mean = (kl * mask).sum() / mask.sum().clamp(min=1)
        if settings.beta != 0:
            loss = aggregate(policy_per_token + settings.beta * kl, *args)
    return loss, {"policy_loss": policy.detach(), "kl": kl_mean.detach(), **metrics, "loss": loss.detach()}


@register_policy_loss("grpo", clip=(0.2, 0.2), normalization="sequence")
def grpo(batch: LossBatch, settings: LossSettings) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO: `-(1/G) sum_i (1/|o_i|) sum_t [min(r A_i, clip(r, 1 - eps, 1 + eps) A_i) - beta KL_t]`, r the
    per-token ratio to the sampling policy (1 with one update per batch: the gradient is the surrogate's)."""
    per_token, metrics = _clipped_surrogate(batch, settings)  # [B*G, L]
    return _with_kl(per_token, batch, settings, metrics)


@register_policy_loss("dapo", clip=(0.2, 0.28), normalization="token", kl=False)
def dapo(batch: LossBatch, settings: LossSettings) -> tuple[Tensor, dict[str, Tensor]]:
    """DAPO (Yu et al. 2025, eq. 8): the clipped surrogate with clip-higher (1 - 0.2, 1 + 0.28) and one token
    mean over the whole step, `-(1 / sum_i |o_i|) sum_i sum_t min(r A_i, clip(r, 1 - eps_low, 1 + eps_high) A_i)`;
    no KL term."""
    per_token, metrics = _clipped_surrogate(batch, settings)  # [B*G, L]
    return _with_kl(per_token, batch, settings, metrics)


def _sequence_log_ratio(batch: LossBatch) -> Tensor:
    """`(1/|o_i|) sum_t log(pi / pi_old)` per completion [B*G], with gradient."""
    mask = batch.mask.to(batch.logp.dtype)  # [B*G, L]
    old = batch.logp.detach() if batch.old_logp is None else batch.old_logp
    return ((batch.logp - old) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)  # [B*G]


def _gspo_objective(ratio: Tensor, batch: LossBatch, settings: LossSettings) -> tuple[Tensor, dict[str, Tensor]]:
    """`-min(s A, clip(s, 1 - eps_l, 1 + eps_r) A)` for ratios `s` [B*G, L] (constant along a completion for
    GSPO, with per-token gradients for GSPO-token), and the KL term."""
    mask = batch.mask.to(batch.logp.dtype)  # [B*G, L]
    adv = batch.advantages.to(batch.logp.dtype).unsqueeze(1)  # [B*G, 1]
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - settings.clip_low, 1 + settings.clip_high) * adv)
    clipped = ((ratio > 1 + settings.clip_high) & (adv > 0)) | ((ratio < 1 - settings.clip_low) & (adv < 0))
    return _with_kl(-surrogate, batch, settings, _ratio_metrics(ratio, clipped, mask))


@register_policy_loss("gspo", clip=(3e-4, 4e-4), normalization="sequence")
def gspo(batch: LossBatch, settings: LossSettings) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025, eq. 5-7): the sequence ratio `s_i = exp((1/|o_i|) sum_t log r_{i,t})` clipped
    once per completion, `-(1/G) sum_i min(s_i A_i, clip(s_i, 1 - eps_l, 1 + eps_r) A_i)` (paper: 3e-4, 4e-4)."""
    s = torch.exp(_sequence_log_ratio(batch))  # [B*G]
    ratio = s.unsqueeze(1).expand_as(batch.logp)  # [B*G, L]: the token mean of a constant row is the row's value
    return _gspo_objective(ratio, batch, settings)


@register_policy_loss("gspo-token", clip=(3e-4, 4e-4), normalization="sequence")
def gspo_token(batch: LossBatch, settings: LossSettings) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO-token (Zheng et al. 2025, eq. 13-14): per-token ratios `s_{i,t} = sg[s_i] pi(o_t) / sg[pi(o_t)]`,
    clipped per token, averaged per completion; equal to GSPO in value and gradient when every token of a
    completion has the same advantage."""
    s = torch.exp(_sequence_log_ratio(batch)).detach()  # [B*G]
    ratio = s.unsqueeze(1) * torch.exp(batch.logp - batch.logp.detach())  # [B*G, L]
    return _gspo_objective(ratio, batch, settings)
