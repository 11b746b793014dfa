"""Hand-computed policy-loss values, gradients and diagnostics (docs/method.md#policy-losses): GRPO, DAPO,
GSPO, GSPO-token, the KL guards and the step-level normalisation."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from framethink.config import RLConfig, load_config
from framethink.errors import ConfigError
from framethink.rl.loss import (
    POLICY_LOSSES,
    LossBatch,
    LossSettings,
    StepTotals,
    aggregate,
    k3_kl,
    loss_settings,
    policy_loss,
)


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, *, epsilon=0.2, beta=0.04, normalization="sequence",
              max_completion_length=None, name="grpo", epsilon_high=None, **guards):
    """The loss `name` (GRPO by default) of one batch that is the whole step."""
    settings = LossSettings(clip_low=epsilon, clip_high=epsilon if epsilon_high is None else epsilon_high, beta=beta,
                            normalization=normalization, max_completion_length=max_completion_length or 0, **guards)
    return policy_loss(name, LossBatch(logp, old_logp, ref_logp, advantages, mask), settings)

MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # |o| = 3 and 2
ADV = torch.tensor([1.0, -2.0])


@pytest.mark.parametrize("normalization, max_len, expected", [
    ("sequence", None, 0.5),  # mean(-1 * 3 / 3, 2 * 2 / 2)
    ("token", None, 0.2),  # (-3 + 4) / 5 tokens
    ("constant", 4, 0.125),  # mean(-3 / 4, 4 / 4)
])
def test_normalizations(normalization, max_len, expected):
    logp = torch.randn(2, 3)
    loss, diag = grpo_loss(logp, None, None, ADV, MASK, beta=0.0, normalization=normalization,
                           max_completion_length=max_len)
    assert loss.item() == pytest.approx(expected)
    assert diag["policy_loss"].item() == pytest.approx(expected)


def test_kl_value_and_masked_mean():
    logp = torch.zeros(1, 3)
    ref = torch.tensor([[math.log(2.0), 0.0, 5.0]])  # last token is padding
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    kl0 = 2.0 - math.log(2.0) - 1.0  # exp(d) - d - 1 with d = ln 2
    loss, diag = grpo_loss(logp, None, ref, torch.zeros(1), mask, beta=0.1)
    assert diag["kl"].item() == pytest.approx(kl0 / 2)
    assert loss.item() == pytest.approx(0.1 * kl0 / 2)
    assert diag["policy_loss"].item() == pytest.approx(0.0)
    # beta 0: KL is still reported but does not enter the loss
    loss0, diag0 = grpo_loss(logp, None, ref, torch.zeros(1), mask, beta=0.0)
    assert loss0.item() == 0.0 and diag0["kl"].item() == pytest.approx(kl0 / 2)
    _, no_ref = grpo_loss(logp, None, None, torch.zeros(1), mask)
    assert no_ref["kl"].item() == 0.0


def test_kl_and_policy_terms_add():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.5]])
    ref = torch.tensor([[-1.5, -2.0], [-0.5, -1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([0.5, -1.0])
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    # per sequence: -(A - beta * kl) summed over its tokens / |o|
    row0 = (-(0.5 - 0.04 * kl[0, 0]) - (0.5 - 0.04 * kl[0, 1])) / 2
    row1 = -(-1.0 - 0.04 * kl[1, 0])
    loss, diag = grpo_loss(logp, None, ref, adv, mask, beta=0.04)
    assert loss.item() == pytest.approx(((row0 + row1) / 2).item())
    assert diag["policy_loss"].item() == pytest.approx((-0.5 + 1.0) / 2)
    assert diag["loss"].item() == pytest.approx(loss.item())


def test_clipping_both_signs():
    ratio = torch.tensor([[1.5], [1.5], [0.5], [0.5]])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    logp = ratio.log().requires_grad_()
    old = torch.zeros(4, 1)
    loss, diag = grpo_loss(logp, old, None, adv, torch.ones(4, 1), epsilon=0.2, beta=0.0)
    # min terms: 1.2 (clipped), -1.5, 0.5, -0.8 (clipped)
    assert loss.item() == pytest.approx(-(1.2 - 1.5 + 0.5 - 0.8) / 4)
    assert diag["clip_fraction"].item() == pytest.approx(0.5)
    assert diag["ratio_mean"].item() == pytest.approx(1.0)
    loss.backward()
    # d/dlogp of -rho * A / N where unclipped, 0 where the clipped term is active
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0], [1.5 / 4], [-0.5 / 4], [0.0]]))


def test_zero_advantages_give_zero_gradient():
    logp = torch.randn(3, 4, requires_grad=True)
    old = logp.detach() + 0.3 * torch.randn(3, 4)
    ref = torch.randn(3, 4)
    loss, _ = grpo_loss(logp, old, ref, torch.zeros(3), torch.ones(3, 4), beta=0.0)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.zeros(3, 4))


@pytest.mark.parametrize("normalization, denom", [
    ("sequence", lambda lengths: lengths * 3),  # N * |o_i|
    ("token", lambda lengths: torch.full_like(lengths, 9.0)),  # total tokens
    ("constant", lambda lengths: torch.full_like(lengths, 6.0 * 3)),  # N * max_completion_length
])
def test_rho_one_gradient(normalization, denom):
    torch.manual_seed(0)
    lengths = torch.tensor([5.0, 3.0, 1.0])
    mask = (torch.arange(5)[None, :] < lengths[:, None]).float()  # [3, 5]
    adv = torch.randn(3)
    logp = torch.randn(3, 5, requires_grad=True)
    loss, diag = grpo_loss(logp, None, None, adv, mask, beta=0.0, normalization=normalization,
                           max_completion_length=6)
    loss.backward()
    expected = -adv[:, None] * mask / denom(lengths)[:, None]
    torch.testing.assert_close(logp.grad, expected)
    assert diag["ratio_mean"].item() == pytest.approx(1.0)
    assert diag["clip_fraction"].item() == 0.0
    # old_logp None is the same as passing the detached current log-probs
    logp2 = logp.detach().clone().requires_grad_()
    loss2, _ = grpo_loss(logp2, logp2.detach(), None, adv, mask, beta=0.0, normalization=normalization,
                         max_completion_length=6)
    loss2.backward()
    torch.testing.assert_close(loss2, loss)
    torch.testing.assert_close(logp2.grad, logp.grad)


def test_diagnostics_are_detached_scalars_and_bool_mask():
    logp = torch.randn(2, 3, requires_grad=True)
    loss, diag = grpo_loss(logp, None, torch.randn(2, 3), ADV, MASK.bool())
    assert set(diag) == {"policy_loss", "kl", "ratio_mean", "clip_fraction", "loss"}
    assert all(v.dim() == 0 and not v.requires_grad for v in diag.values())
    loss_float, _ = grpo_loss(logp, None, None, ADV, MASK, beta=0.0)
    loss_bool, _ = grpo_loss(logp, None, None, ADV, MASK.bool(), beta=0.0)
    torch.testing.assert_close(loss_float, loss_bool)


def test_bad_arguments():
    logp = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="sequence"):
        grpo_loss(logp, None, None, ADV, MASK, normalization="mean")
    with pytest.raises(ConfigError, match="max_completion_length"):
        grpo_loss(logp, None, None, ADV, MASK, normalization="constant")
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(logp, None, None, ADV, MASK[:, :2])
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logp, None, None, torch.zeros(3), MASK)


def test_registry_and_each_loss_defaults():
    assert set(POLICY_LOSSES) == {"grpo", "dapo", "gspo", "gspo-token"}
    grpo = loss_settings(RLConfig())
    assert (grpo.clip_low, grpo.clip_high, grpo.normalization, grpo.beta) == (0.2, 0.2, "sequence", 0.04)
    dapo = loss_settings(RLConfig(loss="dapo"))  # clip-higher, one token mean over the step, no KL
    assert (dapo.clip_low, dapo.clip_high, dapo.normalization, dapo.beta) == (0.2, 0.28, "token", 0.0)
    gspo = loss_settings(RLConfig(loss="gspo"))
    assert (gspo.clip_low, gspo.clip_high, gspo.normalization) == (3e-4, 4e-4, "sequence")
    custom = loss_settings(RLConfig(loss="gspo", epsilon=0.1, normalization="token", kl_clamp=100.0))
    assert (custom.clip_low, custom.clip_high, custom.normalization, custom.kl_clamp) == (0.1, 0.1, "token", 100.0)
    assert loss_settings(RLConfig(epsilon=0.1, epsilon_high=0.3)).clip_high == 0.3
    with pytest.raises(ConfigError, match="gspo-token"):
        loss_settings(RLConfig(loss="ppo"))


def test_dapo_clip_higher_and_batch_token_mean():
    # rows of 2 and 1 tokens; ratios 1.3 (A = +1) and 0.7 (A = -1) clip at 1 + 0.28 and 1 - 0.2
    ratio = torch.tensor([[1.3, 1.1], [0.7, 1.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    logp = ratio.log().requires_grad_()
    loss, diag = grpo_loss(logp, torch.zeros(2, 2), None, adv, mask, name="dapo", epsilon=0.2, epsilon_high=0.28,
                           beta=0.0, normalization="token")
    # min terms: 1.28 (clipped), 1.1, -0.8 (clipped); one mean over the 3 tokens
    assert loss.item() == pytest.approx(-(1.28 + 1.1 - 0.8) / 3)
    assert diag["clip_fraction"].item() == pytest.approx(2 / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, -1.1 / 3], [0.0, 0.0]]))
    grpo, _ = grpo_loss(ratio.log(), torch.zeros(2, 2), None, adv, mask, beta=0.0, normalization="token")
    assert grpo.item() == pytest.approx(-(1.2 + 1.1 - 0.8) / 3)  # symmetric 0.2 clips 1.3 at 1.2


def test_dapo_has_no_kl_term():
    logp, ref = torch.zeros(1, 2), torch.tensor([[1.0, -1.0]])
    loss, diag = grpo_loss(logp, None, ref, torch.zeros(1), torch.ones(1, 2), name="dapo", beta=0.0,
                           normalization="token")
    assert loss.item() == 0.0 and diag["kl"].item() > 0  # reported, not trained on


def test_gspo_sequence_ratio_and_clipping():
    # row 0: log r = [2e-4, 4e-4] -> s = exp(3e-4), inside (1 - 3e-4, 1 + 4e-4); row 1: s = exp(1e-3) > 1 + 4e-4
    # with A > 0: the clipped term 1.0004 A wins and carries no gradient
    old = torch.zeros(2, 2)
    logp = torch.tensor([[2e-4, 4e-4], [1e-3, 1e-3]], dtype=torch.float64, requires_grad=True)
    adv = torch.tensor([2.0, 1.0], dtype=torch.float64)
    mask = torch.ones(2, 2, dtype=torch.float64)
    loss, diag = grpo_loss(logp, old.double(), None, adv, mask, name="gspo", epsilon=3e-4, epsilon_high=4e-4,
                           beta=0.0)
    s0 = math.exp(3e-4)
    assert loss.item() == pytest.approx(-(s0 * 2.0 + 1.0004 * 1.0) / 2, rel=1e-12)
    assert diag["clip_fraction"].item() == pytest.approx(0.5)
    loss.backward()
    # d/dlogp_t of -(1/G) s_0 A_0 = -(1/2) A_0 s_0 / |o_0| for each token of row 0
    torch.testing.assert_close(logp.grad, torch.tensor([[-s0 / 2, -s0 / 2], [0.0, 0.0]], dtype=torch.float64))


def test_gspo_token_equals_gspo_with_one_advantage_per_completion():
    torch.manual_seed(0)
    old = torch.randn(3, 4, dtype=torch.float64)
    start = old + 1e-4 * torch.randn(3, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    out = {}
    for name in ("gspo", "gspo-token"):
        logp = start.clone().requires_grad_()
        loss, _ = grpo_loss(logp, old, None, adv, mask, name=name, epsilon=3e-4, epsilon_high=4e-4, beta=0.0)
        loss.backward()
        out[name] = (loss.detach(), logp.grad)
    torch.testing.assert_close(out["gspo"][0], out["gspo-token"][0])
    torch.testing.assert_close(out["gspo"][1], out["gspo-token"][1])


@pytest.mark.parametrize("guard, expected", [
    ({}, math.exp(12) - 13),  # unguarded k3 at ref - logp = 12
    ({"kl_log_ratio_clamp": 10.0}, math.exp(10) - 11),  # Video-R1: ref - logp clamped to [-10, 10]
    ({"kl_clamp": 100.0}, 100.0),  # TinyLLaVA-Video-R1: the estimate clamped at 100
])
def test_kl_guards(guard, expected):
    settings = LossSettings(clip_low=0.2, clip_high=0.2, beta=0.04, normalization="sequence",
                            max_completion_length=0, **guard)
    kl = k3_kl(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([[12.0, 0.5]], dtype=torch.float64), settings)
    assert kl[0, 0].item() == pytest.approx(expected)
    assert kl[0, 1].item() == pytest.approx(math.exp(0.5) - 1.5)  # inside every guard: unchanged


@pytest.mark.parametrize("normalization", ["sequence", "token", "constant"])
def test_micro_batches_and_processes_sum_to_the_whole_step(normalization):
    # rows of 5, 3, 1 and 2 tokens: a micro-batch's token mean weighted by its row share is not the step's token
    # mean; each micro-batch normalised by the step's totals is, and so is each process's share scaled by the
    # process count (the engine averages gradients over processes)
    lengths = torch.tensor([5.0, 3.0, 1.0, 2.0])
    mask = (torch.arange(5)[None, :] < lengths[:, None]).float()  # [4, 5]
    values = torch.randn(4, 5)
    whole = aggregate(values, mask, normalization, StepTotals.of(mask), 6)
    totals = StepTotals.of(mask)
    halves = [aggregate(values[rows], mask[rows], normalization, totals, 6) for rows in (slice(0, 1), slice(1, 4))]
    torch.testing.assert_close(sum(halves), whole)
    two = StepTotals(tokens=totals.tokens, rows=totals.rows, processes=2)
    per_process = [aggregate(values[rows], mask[rows], normalization, two, 6) for rows in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close(sum(per_process) / 2, whole)


def test_recipes_use_their_codes_kl_guard():
    recipes = Path(__file__).resolve().parents[1] / "recipes"
    video_r1 = loss_settings(load_config(recipes / "video-r1.yaml").rl)
    assert (video_r1.kl_log_ratio_clamp, video_r1.kl_clamp, video_r1.beta) == (10.0, None, 0.04)
    tinyllava = loss_settings(load_config(recipes / "tinyllava-video-r1.yaml").rl)
    assert (tinyllava.kl_log_ratio_clamp, tinyllava.kl_clamp, tinyllava.beta) == (None, 100.0, 0.01)


def test_completions_masked_out_entirely_are_not_counted():
    # a truncated completion kept out of the loss (rl.mask_truncated) adds no row to the sequence mean
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    assert StepTotals.of(mask) == StepTotals(tokens=3.0, rows=2.0)
    values = torch.tensor([[1.0, 3.0], [5.0, 5.0], [4.0, 0.0]])
    assert aggregate(values, mask, "sequence", StepTotals.of(mask), 2).item() == pytest.approx((2.0 + 4.0) / 2)
