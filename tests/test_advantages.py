"""Hand-computed advantages (GRPO, Dr. GRPO, RLOO, noise) and the T-GRPO temporal bonus (docs/method.md)."""
from __future__ import annotations

import math

import pytest
import torch

from framethink.errors import ConfigError
from framethink.rl.advantages import ADVANTAGES, compute_advantages, get_advantage, temporal_bonus


def group_advantages(rewards, *, scale_by_std=True, **kwargs):
    return compute_advantages(rewards, "grpo" if scale_by_std else "dr_grpo", **kwargs)


def test_single_group_hand_values():
    # mean 0.25, unbiased std sqrt((0.75^2 + 3 * 0.25^2) / 3) = 0.5
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))
    expected = torch.tensor([[0.75, -0.25, -0.25, -0.25]]) / 0.5001
    torch.testing.assert_close(adv, expected)


def test_statistics_are_per_group_not_per_batch():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0],
                            [3.0, 3.0, 1.0, 1.0]])
    adv = group_advantages(rewards)
    s = 1 / (math.sqrt(4 / 3) + 1e-4)  # row 1: mean 2, unbiased std sqrt(4/3)
    expected = torch.tensor([[0.75 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001, -0.25 / 0.5001],
                             [s, s, -s, -s]])
    torch.testing.assert_close(adv, expected)
    whole_batch = (rewards - rewards.mean()) / (rewards.std() + 1e-4)
    assert not torch.allclose(adv, whole_batch, atol=0.1)


def test_zero_std_group_and_dr_grpo():
    rewards = torch.tensor([[2.0, 2.0, 2.0, 2.0],
                            [1.0, 0.0, 0.5, 0.5]])
    adv = group_advantages(rewards)
    torch.testing.assert_close(adv[0], torch.zeros(4))
    dr = group_advantages(rewards, scale_by_std=False)  # centred only
    torch.testing.assert_close(dr, torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, -0.5, 0.0, 0.0]]))


def test_noise_with_seeded_generator():
    rewards = torch.tensor([[2.0, 2.0, 2.0, 2.0], [1.0, 0.0, 0.0, 0.0]])
    adv = group_advantages(rewards, noise_std=0.02, generator=torch.Generator().manual_seed(0))
    again = group_advantages(rewards, noise_std=0.02, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(adv, again)
    expected_noise = 0.02 * torch.randn((2, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(adv - group_advantages(rewards), expected_noise)
    assert adv[0].std() > 0  # an all-equal group still gives a signal
    big = group_advantages(torch.zeros(512, 8), noise_std=0.02, generator=torch.Generator().manual_seed(1))
    assert abs(big.std().item() - 0.02) < 0.001
    assert abs(big.mean().item()) < 0.001


def test_rloo_leave_one_out_hand_values():
    # A_i = r_i - mean_{j != i} r_j: [1 - 0, 0 - 1/3, 0 - 1/3, 0 - 1/3]; [3 - 5/3, 3 - 5/3, 1 - 7/3, 1 - 7/3]
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0], [3.0, 3.0, 1.0, 1.0]])
    expected = torch.tensor([[1.0, -1 / 3, -1 / 3, -1 / 3], [4 / 3, 4 / 3, -4 / 3, -4 / 3]])
    torch.testing.assert_close(compute_advantages(rewards, "rloo"), expected)
    torch.testing.assert_close(compute_advantages(rewards, "rloo"), 4 / 3 * compute_advantages(rewards, "dr_grpo"))


def test_registry():
    assert set(ADVANTAGES) == {"grpo", "dr_grpo", "rloo"}
    with pytest.raises(ConfigError, match="rloo"):
        get_advantage("ppo")


def test_advantage_shape_errors():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.tensor([[1.0]]))
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        group_advantages(torch.tensor([1.0, 0.0]))


def test_temporal_bonus_per_prompt_groups():
    acc_ordered = torch.tensor([[1.0, 1.0, 0.0, 0.0],  # video, p 0.5 >= 0.8 * 0.5
                                [1.0, 0.0, 0.0, 0.0],  # video, p 0.25 < 0.8 * 1.0
                                [1.0, 1.0, 1.0, 1.0]])  # image
    acc_shuffled = torch.tensor([[1.0, 0.0],
                                 [1.0, 1.0],
                                 [float("nan"), float("nan")]])
    is_video = torch.tensor([True, True, False])
    out = temporal_bonus(acc_ordered, acc_shuffled, is_video)
    torch.testing.assert_close(out.bonus, torch.tensor([[0.3, 0.3, 0.0, 0.0], [0.0] * 4, [0.0] * 4]))
    torch.testing.assert_close(out.p, torch.tensor([0.5, 0.25, 1.0]))
    torch.testing.assert_close(out.p_shuffled, torch.tensor([0.5, 1.0, float("nan")]), equal_nan=True)
    assert out.applied.tolist() == [True, False, False]
    # the reference pooled the video rows into one group: p 3/8 < 0.8 * 3/4, so no row got the bonus
    pooled = temporal_bonus(acc_ordered[:2].reshape(1, 8), acc_shuffled[:2].reshape(1, 4), torch.tensor([True]))
    assert pooled.applied.tolist() == [False]


def test_temporal_bonus_boundary_ge_vs_gt():
    acc_ordered = torch.tensor([[1.0, 1.0, 0.0, 0.0]])  # p = 0.5 = mu * p~ exactly
    acc_shuffled = torch.tensor([[1.0, 1.0]])
    is_video = torch.tensor([True])
    code = temporal_bonus(acc_ordered, acc_shuffled, is_video, mu=0.5)
    paper = temporal_bonus(acc_ordered, acc_shuffled, is_video, mu=0.5, strict=True)
    assert code.applied.tolist() == [True]
    torch.testing.assert_close(code.bonus, torch.tensor([[0.3, 0.3, 0.0, 0.0]]))
    assert paper.applied.tolist() == [False]
    torch.testing.assert_close(paper.bonus, torch.zeros(1, 4))


def test_temporal_bonus_threshold_alpha_and_image_rows():
    acc_ordered = torch.tensor([[0.1, 0.5, 0.05, 1.0],
                                [1.0, 1.0, 1.0, 1.0]])
    acc_shuffled = torch.zeros(2, 2)  # the image row's zeros would pass p >= mu * p~ if it were counted
    out = temporal_bonus(acc_ordered, acc_shuffled, torch.tensor([True, False]), alpha=0.5)
    torch.testing.assert_close(out.bonus, torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.0] * 4]))
    assert out.applied.tolist() == [True, False]


def test_temporal_bonus_shape_errors():
    with pytest.raises(ValueError, match="is_video"):
        temporal_bonus(torch.zeros(2, 4), torch.zeros(2, 2), torch.tensor([True]))
    with pytest.raises(ValueError, match="Gs >= 1"):
        temporal_bonus(torch.zeros(1, 4), torch.zeros(1, 0), torch.tensor([True]))
    with pytest.raises(ValueError, match="acc_shuffled"):
        temporal_bonus(torch.zeros(2, 4), torch.zeros(3, 2), torch.tensor([True, True]))
