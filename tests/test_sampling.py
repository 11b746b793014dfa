"""The sampling loop's draw: inverse CDF with one uniform per row follows the categorical distribution after
temperature, top-p and suppression, reproduces from a seeded generator, and greedy decoding draws nothing."""
from __future__ import annotations

import math

import torch

from framethink.models.adapter import Decoding
from framethink.models.sampling import draw_inverse_cdf, sample_completions

CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27}  # chi-square quantile at 0.999 by degrees of freedom


def _chi_square(tokens: torch.Tensor, expected: list[float]) -> tuple[float, int]:
    """Pearson's statistic of the token counts against `expected` probabilities, over the tokens with mass
    (asserting that none without mass was drawn), and its degrees of freedom."""
    counts = torch.bincount(tokens, minlength=len(expected)).double()
    n = len(tokens)
    assert all(counts[i] == 0 for i, p in enumerate(expected) if p == 0)  # never a token without mass
    kept = [i for i, p in enumerate(expected) if p > 0]
    stat = sum(float((counts[i] - n * expected[i]) ** 2 / (n * expected[i])) for i in kept)
    return stat, len(kept) - 1


def test_draw_follows_the_categorical_distribution():
    expected = [0.1, 0.0, 0.45, 0.3, 0.0, 0.15]
    probs = torch.tensor(expected).repeat(20_000, 1)  # [20000, 6]
    tokens = draw_inverse_cdf(probs, torch.Generator().manual_seed(0))
    assert tokens.shape == (20_000,) and tokens.dtype == torch.long
    stat, dof = _chi_square(tokens, expected)
    assert stat < CHI2_999[dof], stat
    # unnormalised rows are drawn by their share of the total
    scaled = draw_inverse_cdf(probs * 7.0, torch.Generator().manual_seed(0))
    assert torch.equal(scaled, tokens)


def test_draw_edges_never_land_on_a_token_without_mass(monkeypatch):
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.625, 0.0]])  # [1, 5]: tokens 0, 2 and 4 have no mass; total 0.875
    # u from 0 to the largest double torch.rand gives; u * 0.875 is compared with the cumulative sums 0.25, 0.875
    for u, token in ((0.0, 1), (2 / 7 - 1e-9, 1), (2 / 7 + 1e-9, 3), (1.0 - 2.0**-53, 3)):
        monkeypatch.setattr(torch, "rand", lambda *shape, u=u, **kwargs: torch.full(shape, u, dtype=torch.float64))
        assert draw_inverse_cdf(probs).tolist() == [token]


def test_draw_uses_one_uniform_per_row_and_reproduces_from_the_seed():
    probs = torch.rand(5, 1000, generator=torch.Generator().manual_seed(1)).softmax(-1)  # [5, 1000]
    first = draw_inverse_cdf(probs, torch.Generator().manual_seed(7))
    assert torch.equal(draw_inverse_cdf(probs, torch.Generator().manual_seed(7)), first)
    assert not torch.equal(draw_inverse_cdf(probs, torch.Generator().manual_seed(8)), first)
    used, fresh = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    draw_inverse_cdf(probs, used)
    torch.rand(5, 1, generator=fresh, dtype=torch.float64)  # the same stream advanced by 5 uniforms
    assert torch.equal(torch.rand(3, generator=used), torch.rand(3, generator=fresh))


def _constant_step(logits: torch.Tensor):
    """A model whose next-token logits are always `logits` [N, V]."""
    return lambda tokens: logits


def test_sampling_applies_temperature_top_p_and_suppression_before_the_draw():
    # token 4 has the largest logit but is suppressed; at temperature 0.5 the rest weigh p^2 = (1, 4, 9, 16) / 30;
    # top-p 0.6 keeps 16/30 (0.53) and 9/30 (mass before it 0.53 <= 0.6), renormalised to 16/25 and 9/25
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4, 0.9])).repeat(8_000, 1)  # [8000, 5]
    out = sample_completions(_constant_step(logits), 8_000, Decoding(max_new_tokens=1, temperature=0.5, top_p=0.6),
                             eos_ids=[99], pad_id=0, suppress_ids=[4], generator=torch.Generator().manual_seed(3))
    stat, dof = _chi_square(out.tokens[:, 0], [0.0, 0.0, 9 / 25, 16 / 25, 0.0])
    assert dof == 1 and stat < CHI2_999[1], stat
    # temperature alone: p^2 / 30 over the four unsuppressed tokens
    out = sample_completions(_constant_step(logits), 8_000, Decoding(max_new_tokens=1, temperature=0.5),
                             eos_ids=[99], pad_id=0, suppress_ids=[4], generator=torch.Generator().manual_seed(3))
    stat, dof = _chi_square(out.tokens[:, 0], [1 / 30, 4 / 30, 9 / 30, 16 / 30, 0.0])
    assert dof == 3 and stat < CHI2_999[3], stat
    assert math.isclose(float(out.mask.sum()), 8_000)


def test_seeded_sampling_reproduces_and_greedy_draws_nothing():
    logits = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))  # [6, 50]
    decoding = Decoding(max_new_tokens=5, temperature=1.0)

    def sample(seed: int):
        return sample_completions(_constant_step(logits), 6, decoding, eos_ids=[99], pad_id=0,
                                  generator=torch.Generator().manual_seed(seed)).tokens

    assert torch.equal(sample(11), sample(11))
    assert not torch.equal(sample(11), sample(12))
    generator = torch.Generator().manual_seed(11)  # each token: one inverse-CDF draw, one uniform per row
    assert torch.equal(sample(11), torch.stack([draw_inverse_cdf(logits.softmax(-1), generator) for _ in range(5)], 1))
    generator = torch.Generator().manual_seed(11)
    state = generator.get_state()
    greedy = sample_completions(_constant_step(logits), 6, Decoding(max_new_tokens=3, do_sample=False),
                                eos_ids=[99], pad_id=0, suppress_ids=[int(logits[0].argmax())], generator=generator)
    assert torch.equal(generator.get_state(), state)  # greedy decoding leaves the generator untouched
    expected = logits.index_fill(-1, torch.tensor([int(logits[0].argmax())]), float("-inf")).argmax(-1)
    assert torch.equal(greedy.tokens, expected.unsqueeze(1).expand(-1, 3))
