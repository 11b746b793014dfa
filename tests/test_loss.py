"""Hand-computed GRPO loss values, gradients and diagnostics (SPEC 5)."""
from __future__ import annotations

import math

import pytest
import torch

from framethink.errors import ConfigError
from framethink.rl.loss import grpo_loss

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
