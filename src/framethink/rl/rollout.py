"""Sampling and scoring a batch of prompt groups (docs/method.md#rewards, docs/method.md#t-grpo).

For a batch mixing image, video and text-only records, every ordered prompt gets G completions and, under
T-GRPO, every video prompt also gets G~ completions on its own frames permuted once (one permutation per
prompt). All rows come from ONE batched generate call, and the vision encoder runs once per prompt (ordered and
shuffled prompts are separate clips, so each gets one encoding). Both groups are scored with the recipe's
rewards; the shuffled completions only feed p~ and never enter the loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from framethink.config import RLConfig
from framethink.data.records import Record
from framethink.models.adapter import Decoding, EncodedPrompt
from framethink.rewards import CompletionGroup, get_reward
from framethink.rl.advantages import temporal_bonus


def score_group(texts: list[str], num_tokens: list[int], record: Record, rl: RLConfig) -> tuple[list[float], dict[str, list[float]]]:
    """Sum of the recipe's weighted reward functions for one prompt's completions, and every component
    (`reward/<name>` per function, plus the components the functions report, e.g. `accuracy`)."""
    group = CompletionGroup(completions=texts, num_tokens=num_tokens, answer=record.answer,
                            problem_type=record.problem_type, options=record.options)
    total = [0.0] * len(texts)
    components: dict[str, list[float]] = {}
    for spec in rl.rewards:
        out = get_reward(spec.name)(group, **spec.params)
        total = [t + spec.weight * r for t, r in zip(total, out.rewards)]
        components[f"reward/{spec.name}"] = out.rewards
        for key, values in out.components.items():
            components.setdefault(key, values)  # e.g. "accuracy", shared by functions that report it
    return total, components


@dataclass(frozen=True)
class SampledGroups:
    """B prompts x G ordered completions, scored: what a step's advantages and loss are computed from.

    `group_stats` holds one value per group for each logged statistic (NaN where it does not apply, e.g. the
    temporal statistics of an image prompt); a batch's metric is its mean over groups, NaN left out.
    """

    prompts: list[EncodedPrompt]  # [B] ordered prompts
    tokens: torch.Tensor  # [B*G, T] ordered completions
    mask: torch.Tensor  # [B*G, T] up to and including EOS
    truncated: torch.Tensor  # [B*G] bool: cut at max_new_tokens without an EOS
    texts: list[str]  # [B*G]
    rewards: torch.Tensor  # [B, G] total reward, temporal bonus included
    group_stats: dict[str, torch.Tensor]  # name -> [B]

    @property
    def num_groups(self) -> int:
        return len(self.prompts)

    def select(self, groups: list[int]) -> SampledGroups:
        """The groups `groups`, in that order."""
        g = self.rewards.shape[1]
        rows = torch.tensor([i * g + j for i in groups for j in range(g)], dtype=torch.long)
        return SampledGroups(
            prompts=[self.prompts[i] for i in groups], tokens=self.tokens[rows], mask=self.mask[rows],
            truncated=self.truncated[rows], texts=[self.texts[r] for r in rows.tolist()],
            rewards=self.rewards[groups], group_stats={k: v[groups] for k, v in self.group_stats.items()},
        )

    @staticmethod
    def concat(parts: list[SampledGroups]) -> SampledGroups:
        """The groups of every part, in order (completions padded to the longest)."""
        width = max(p.tokens.shape[1] for p in parts)

        def pad(t: torch.Tensor, value: float) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

        return SampledGroups(
            prompts=[p for part in parts for p in part.prompts],
            tokens=torch.cat([pad(p.tokens, 0) for p in parts]), mask=torch.cat([pad(p.mask, 0.0) for p in parts]),
            truncated=torch.cat([p.truncated for p in parts]), texts=[t for p in parts for t in p.texts],
            rewards=torch.cat([p.rewards for p in parts]),
            group_stats={k: torch.cat([p.group_stats[k] for p in parts]) for k in parts[0].group_stats},
        )

    def metrics(self) -> dict[str, float]:
        """Each statistic's mean over the groups (NaN groups left out; NaN when no group has a value, so every
        process reports the same keys: the trainer's mean over processes leaves NaN out)."""
        return {k: (v.nanmean().item() if v.numel() else math.nan) for k, v in self.group_stats.items()}


@torch.no_grad()
def sample_groups(
    adapter, records: list[Record], rl: RLConfig, *, template: str, seed: int, generator: torch.Generator,
) -> SampledGroups:
    """Generate and score G completions per record (and the shuffled-frame groups under T-GRPO)."""
    g, gs = rl.num_generations, rl.num_shuffled
    temporal = rl.algorithm == "tgrpo"
    prompts = [adapter.encode(r, template=template, frame_order="ordered") for r in records]
    is_video = [r.media_kind == "video" for r in records]
    shuffled_of: dict[int, int] = {}  # ordered prompt index -> shuffled prompt index
    all_prompts = list(prompts)
    if temporal:
        for i, r in enumerate(records):
            if is_video[i]:
                shuffled_of[i] = len(all_prompts)
                all_prompts.append(adapter.encode(r, template=template, frame_order="shuffled", seed=seed * 10_007 + i))
    row_prompt = [i for i in range(len(prompts)) for _ in range(g)]
    shuffled_rows = [j for j in shuffled_of.values() for _ in range(gs)]
    decoding = Decoding(max_new_tokens=rl.max_new_tokens, temperature=rl.temperature, top_p=rl.top_p)
    completions = adapter.generate(all_prompts, row_prompt + shuffled_rows, decoding, generator=generator)
    texts = adapter.decode(completions)
    lengths = completions.lengths.tolist()

    b = len(records)
    rewards = torch.zeros(b, g)
    acc = torch.full((b, g), math.nan)
    acc_shuffled = torch.full((b, max(gs, 1)), math.nan)
    stats: dict[str, list[float]] = {}
    for i, record in enumerate(records):
        rows = slice(i * g, (i + 1) * g)
        total, components = score_group(texts[rows], lengths[rows], record, rl)
        rewards[i] = torch.tensor(total)
        if "accuracy" in components:
            acc[i] = torch.tensor(components["accuracy"])
        for key, values in components.items():
            name = key if key.startswith("reward/") else f"reward/{key}"
            stats.setdefault(name, [math.nan] * b)[i] = sum(values) / g
    offset = b * g
    for k, i in enumerate(shuffled_of):
        rows = slice(offset + k * gs, offset + (k + 1) * gs)
        _, components = score_group(texts[rows], lengths[rows], records[i], rl)  # the recipe's rewards, as ordered
        acc_shuffled[i] = torch.tensor(components["accuracy"])

    group_stats = {key: torch.tensor(values) for key, values in stats.items()}
    if temporal:
        bonus = temporal_bonus(acc, acc_shuffled, torch.tensor(is_video), alpha=rl.temporal_alpha, mu=rl.temporal_mu,
                               strict=rl.temporal_strict)
        rewards = rewards + bonus.bonus  # [B, G]
        videos = torch.tensor(is_video)
        nan = torch.full((b,), math.nan)
        group_stats["temporal/p"] = torch.where(videos, bonus.p, nan)
        group_stats["temporal/p_shuffled"] = bonus.p_shuffled
        group_stats["temporal/bonus_rate"] = torch.where(videos, bonus.applied.float(), nan)

    tokens, mask = completions.tokens[: b * g], completions.mask[: b * g]
    eos = torch.tensor(list(adapter.eos_ids))
    last = tokens.gather(1, (mask.sum(-1).long() - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # [B*G]
    truncated = (mask.sum(-1) >= rl.max_new_tokens) & ~torch.isin(last, eos)  # [B*G]
    width = max(1, int(mask.sum(-1).max().item()))
    group_stats.update({
        "reward/total": rewards.mean(-1),
        "accuracy": acc.mean(-1),
        "completion_length": mask.sum(-1).view(b, g).float().mean(-1),
        "truncated": truncated.view(b, g).float().mean(-1),
        "zero_std_groups": (rewards.std(-1) == 0).float(),
    })
    return SampledGroups(prompts=prompts, tokens=tokens[:, :width], mask=mask[:, :width], truncated=truncated,
                         texts=texts[: b * g], rewards=rewards, group_stats=group_stats)
