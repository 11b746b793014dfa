"""Rollouts: sample, score and compute advantages for a batch of prompts (SPEC 4-5).

For a batch mixing image, video and text-only records, every ordered prompt gets G completions and, under
T-GRPO, every video prompt also gets G~ completions on its own frames permuted once (one permutation per
prompt). All rows come from ONE batched generate call, and the vision encoder runs once per prompt
(ordered and shuffled prompts are separate clips, so each gets one encoding). Shuffled completions only
feed p~; they never enter the loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from framethink.config import RLConfig
from framethink.data.records import Record
from framethink.models.adapter import Decoding, EncodedPrompt
from framethink.rewards import CompletionGroup, accuracy_reward, get_reward
from framethink.rl.advantages import group_advantages, temporal_bonus


@dataclass
class Rollout:
    """One generation batch: B prompts x G ordered completions (the rows that train)."""

    prompts: list[EncodedPrompt]  # [B] ordered prompts
    row_prompt: list[int]  # [B*G] prompt index of each training row
    tokens: torch.Tensor  # [B*G, T]
    mask: torch.Tensor  # [B*G, T] up to and including EOS
    advantages: torch.Tensor  # [B*G]
    rewards: torch.Tensor  # [B, G] total reward (incl. temporal bonus)
    texts: list[str]  # [B*G]
    metrics: dict[str, float] = field(default_factory=dict)
    old_logp: torch.Tensor | None = None  # [B*G, T]
    ref_logp: torch.Tensor | None = None  # [B*G, T]


def score_group(texts: list[str], num_tokens: list[int], record: Record, rl: RLConfig) -> tuple[list[float], dict[str, list[float]]]:
    """Sum of the recipe's weighted reward functions for one prompt's completions, and every component."""
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
    if "accuracy" not in components:
        components["accuracy"] = [accuracy_reward(t, record.answer, record.problem_type) for t in texts]
    return total, components


@torch.no_grad()
def collect_rollout(
    adapter, records: list[Record], rl: RLConfig, *, template: str, seed: int, generator: torch.Generator,
) -> Rollout:
    """Generate, score and compute advantages for `records` (SPEC 5)."""
    g, gs = rl.num_generations, rl.num_shuffled
    prompts = [adapter.encode(r, template=template, frame_order="ordered") for r in records]
    is_video = [r.media_kind == "video" for r in records]
    shuffled_of: dict[int, int] = {}  # ordered prompt index -> shuffled prompt index
    all_prompts = list(prompts)
    if rl.algorithm == "tgrpo":
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
    acc = torch.zeros(b, g)
    acc_shuffled = torch.full((b, max(gs, 1)), math.nan)
    component_sums: dict[str, float] = {}
    for i, record in enumerate(records):
        rows = slice(i * g, (i + 1) * g)
        total, components = score_group(texts[rows], lengths[rows], record, rl)
        rewards[i] = torch.tensor(total)
        acc[i] = torch.tensor(components["accuracy"])
        for key, values in components.items():
            component_sums[key] = component_sums.get(key, 0.0) + sum(values)
    offset = b * g
    for k, i in enumerate(shuffled_of):
        shuffled_texts = texts[offset + k * gs: offset + (k + 1) * gs]
        acc_shuffled[i] = torch.tensor([accuracy_reward(t, records[i].answer, records[i].problem_type) for t in shuffled_texts])

    metrics = {f"{key}" if key.startswith("reward/") else f"reward/{key}": v / (b * g) for key, v in component_sums.items()}
    if rl.algorithm == "tgrpo":
        bonus = temporal_bonus(acc, acc_shuffled, torch.tensor(is_video), alpha=rl.temporal_alpha, mu=rl.temporal_mu,
                               strict=rl.temporal_strict)
        rewards = rewards + bonus.bonus  # [B, G]
        videos = torch.tensor(is_video)
        # NaN when the batch holds no video: every process reports the same keys (the trainer averages them
        # over processes in one collective, leaving NaN out)
        metrics["temporal/p"] = bonus.p[videos].mean().item()
        metrics["temporal/p_shuffled"] = bonus.p_shuffled[videos].mean().item()
        metrics["temporal/bonus_rate"] = bonus.applied[videos].float().mean().item()
    advantages = group_advantages(rewards, scale_by_std=rl.scale_by_std, eps=rl.advantage_eps,
                                  noise_std=rl.advantage_noise, generator=generator)  # [B, G]

    tokens, mask = completions.tokens[: b * g], completions.mask[: b * g]
    width = max(1, int(mask.sum(-1).max().item()))
    metrics.update({
        "reward/total": rewards.mean().item(),
        "accuracy": acc.mean().item(),
        "completion_length": mask.sum(-1).float().mean().item(),
        "zero_std_groups": (rewards.std(-1) == 0).float().mean().item(),
    })
    return Rollout(prompts=prompts, row_prompt=row_prompt, tokens=tokens[:, :width], mask=mask[:, :width],
                   advantages=advantages.reshape(-1), rewards=rewards, texts=texts[: b * g], metrics=metrics)
