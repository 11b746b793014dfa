"""One batched sampling loop over a KV-cached model, shared by every adapter.

The adapter supplies `step`: called once with `None` it runs the prefill and returns the logits at the
last prompt position; then it is called with each new token column. The loop only samples: it applies
temperature / top-p, suppresses the vision special tokens (a completion holding one breaks every later
forward, docs/models.md), draws on the logits' device by inverse CDF, and masks every row up to and
including its EOS.

It also holds the log-prob pieces every adapter shares, prefix sharing among them: each distinct prompt of a
batch runs through the LM once, its KV cache is gathered to the prompt's rows (completions), and the completion
tokens of all rows run in one forward on that cache.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from framethink.models.adapter import Decoding


# Called with each sampled column: tokens [N] and which rows were still generating ([N] bool; a row's EOS is the
# last token it is called live with, pad_id follows).
TokenCallback = Callable[[torch.Tensor, torch.Tensor], None]


@dataclass
class Completions:
    tokens: torch.Tensor  # [N, T] completion ids; pad_id after EOS
    mask: torch.Tensor  # [N, T] 1.0 up to and including EOS, 0.0 after

    @property
    def lengths(self) -> torch.Tensor:  # [N]
        return self.mask.sum(-1).long()


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of tokens whose probability mass reaches `top_p` (always at least one)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # [N, V]
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs  # mass of strictly more likely tokens
    sorted_logits = sorted_logits.masked_fill(mass_before > top_p, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def draw_inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `probs` [N, V] (non-negative, any positive total) -> [N], on `probs`' device.

    One uniform u per row from the CPU `generator`; the token is the first index whose cumulative probability
    exceeds u * total: exactly the categorical distribution (docs/models.md), from N random numbers, where
    `torch.multinomial` with a CPU generator needs the probabilities on the CPU and draws N * V numbers there.
    """
    # u <= 1 - 2^-53, and such a product u * total rounds strictly below the total: the first index past it
    # always exists and holds mass (a token without mass repeats the cumulative value before it)
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64).to(probs.device)  # [N, 1]
    cdf = probs.double().cumsum(-1)  # [N, V]
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)  # [N]


@torch.no_grad()
def sample_completions(
    step: Callable[[torch.Tensor | None], torch.Tensor],
    num_rows: int,
    decoding: Decoding,
    *,
    eos_ids: Sequence[int],
    pad_id: int,
    suppress_ids: Sequence[int] = (),
    generator: torch.Generator | None = None,
    on_token: TokenCallback | None = None,
) -> Completions:
    """Sample up to `decoding.max_new_tokens` tokens for `num_rows` rows in lock step; `on_token`, when given,
    sees each sampled column as it is drawn (streaming, `framethink.infer`)."""
    eos = torch.tensor(list(eos_ids))
    suppress = torch.tensor(list(suppress_ids), dtype=torch.long)
    finished = torch.zeros(num_rows, dtype=torch.bool)
    tokens, masks = [], []
    logits = step(None)  # [N, V]
    greedy = not decoding.do_sample or decoding.temperature <= 0
    for position in range(decoding.max_new_tokens):
        logits = logits.float().index_fill(-1, suppress.to(logits.device), float("-inf"))  # a copy: the model's output stays intact
        if greedy:
            next_tokens = logits.argmax(-1)  # [N]
        else:
            probs = filter_top_p(logits / decoding.temperature, decoding.top_p).softmax(-1)
            next_tokens = draw_inverse_cdf(probs, generator)  # [N]
        next_tokens = next_tokens.cpu()
        masks.append((~finished).float())
        next_tokens = torch.where(finished, torch.full_like(next_tokens, pad_id), next_tokens)
        tokens.append(next_tokens)
        if on_token is not None:
            on_token(next_tokens, ~finished)
        finished |= torch.isin(next_tokens, eos)
        if bool(finished.all()) or position + 1 == decoding.max_new_tokens:
            break
        logits = step(next_tokens)
    return Completions(tokens=torch.stack(tokens, 1), mask=torch.stack(masks, 1))


def decode_completions(tokenizer, completions: Completions, eos_ids: Sequence[int]) -> list[str]:
    """Completion texts, cut at EOS, special tokens dropped."""
    texts = []
    for tokens, mask in zip(completions.tokens, completions.mask):
        kept = [tok for tok, keep in zip(tokens.tolist(), mask.tolist()) if keep and tok not in eos_ids]
        texts.append(tokenizer.decode(kept, skip_special_tokens=True))
    return texts


def token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logits [N, T, V] where position j predicts ids[:, j] -> log-probs [N, T] of ids [N, T]."""
    logits = logits.float()
    return torch.log_softmax(logits, -1).gather(-1, ids.to(logits.device).unsqueeze(-1)).squeeze(-1)


def completion_logprobs_from_logits(logits: torch.Tensor, completion_ids: torch.Tensor) -> torch.Tensor:
    """logits [N, T+1, V] of the last T+1 positions -> log-probs [N, T] of completion_ids [N, T]
    (position j predicts completion token j)."""
    return token_logprobs(logits[:, :-1], completion_ids)


def drops_kv_cache(model: torch.nn.Module) -> bool:
    """Whether a forward of `model` now keeps no KV cache: transformers turns the cache off in a training forward
    under gradient checkpointing, so there every row must carry its whole prompt instead of sharing a prefill."""
    return model.training and any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def gather_prefill(cache: DynamicCache, used: list[int], row_prompt: list[int], device: torch.device) -> torch.Tensor:
    """Gather the KV cache of a prefill that ran prompts `used` (one row each) to the rows, row i continuing prompt
    `row_prompt[i]`; -> each row's prefill row [N], to gather the prefill's other outputs alike.

    The gather is an index_select that autograd follows: a prompt's rows share its one prefill, gradients included.
    """
    rows = torch.tensor([used.index(i) for i in row_prompt], device=device)  # [N]
    cache.reorder_cache(rows)  # [P, H, Lp, d] -> [N, H, Lp, d] in every layer
    return rows


def logprobs_after_prefill(
    first: torch.Tensor, completion_ids: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Log-probs [N, T] of `completion_ids` [N, T] after a prefill whose logits at each row's last prompt position
    are `first` [N, V]: the prefill predicts token 0, and `forward` runs tokens 0..T-2 [N, T-1] on the prefill's KV
    cache in one call, its logits [N, T-1, V] predicting tokens 1..T-1."""
    logp = [token_logprobs(first.unsqueeze(1), completion_ids[:, :1])]  # [N, 1]
    if completion_ids.shape[1] > 1:
        logp.append(token_logprobs(forward(completion_ids[:, :-1]), completion_ids[:, 1:]))  # [N, T-1]
    return torch.cat(logp, dim=1)  # [N, T]
