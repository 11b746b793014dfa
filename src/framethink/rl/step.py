"""One RL step, the single place a step happens: the trainer and every benchmark call `rl_step`.

    rl_step(run, batch, step)
        sample     one batched generate for the batch's prompts (+ shuffled clips under T-GRPO), scored with the
                   recipe's rewards (temporal bonus included); under dynamic sampling, groups whose rewards are
                   all equal are dropped and fresh prompts refill the batch (docs/method.md#dapo)
        rollout    advantages, then the sampling policy's and the reference model's log-probs: a `Rollout`,
                   complete and immutable from here on
        update     num_iterations x (policy log-probs, the recipe's policy loss normalised by the step's totals
                   over micro-batches and processes, backward), gradients averaged over processes, clip, AdamW,
                   schedule
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch

from framethink.config import TrainConfig
from framethink.data.records import Record
from framethink.engine import TrainingRun, micro_batches, sum_over_processes
from framethink.models.adapter import EncodedPrompt
from framethink.rl.advantages import compute_advantages
from framethink.rl.loss import LossBatch, StepTotals, loss_settings, policy_loss
from framethink.rl.rollout import SampledGroups, sample_groups


@dataclass(frozen=True)
class Rollout:
    """One generation batch, complete: B prompts x G ordered completions (the rows that train), their
    advantages and the log-probabilities the loss compares against. Built once by `build_rollout`."""

    prompts: list[EncodedPrompt]  # [B] ordered prompts
    row_prompt: list[int]  # [B*G] prompt index of each training row
    tokens: torch.Tensor  # [B*G, T]
    mask: torch.Tensor  # [B*G, T] the tokens that enter the loss: up to and including EOS
    advantages: torch.Tensor  # [B*G]
    rewards: torch.Tensor  # [B, G] total reward (incl. temporal bonus)
    texts: list[str]  # [B*G]
    metrics: dict[str, float] = field(default_factory=dict)
    old_logp: torch.Tensor | None = None  # [B*G, T] sampling policy's (only with num_iterations > 1)
    ref_logp: torch.Tensor | None = None  # [B*G, T] reference model's (only with a KL term)


@dataclass
class RLRun:
    """An RL run as a step sees it: the engine's run (model, optimiser, schedule, RNG, reference model) and the
    records that dynamic sampling draws fresh prompts from."""

    engine: TrainingRun
    records: list[Record]

    @property
    def config(self) -> TrainConfig:
        return self.engine.config

    @property
    def adapter(self):
        return self.engine.adapter


@dataclass(frozen=True)
class StepResult:
    rollout: Rollout
    metrics: dict[str, float]  # this process's: rewards, sampling, loss diagnostics, phase times


def shuffle_seed(run: RLRun, step: int, round_: int = 0) -> int:
    """The seed of the frame permutations of one sampling round: distinct per step, process and round."""
    engine = run.engine
    return run.config.run.seed * 1_000_003 + step * engine.world + engine.rank + round_ * 1_000_000_007


def refill_prompts(run: RLRun, step: int, round_: int, count: int) -> list[Record]:
    """`count` fresh prompts for refill round `round_` of `step`: drawn without replacement from all records by a
    generator seeded from the run seed, step, round and process, so a resumed run draws the same ones."""
    engine = run.engine
    rng = random.Random(((run.config.run.seed * 1_000_003 + step) * 101 + round_) * engine.world + engine.rank)
    return [run.records[i] for i in rng.sample(range(len(run.records)), min(count, len(run.records)))]


def sample_step_groups(run: RLRun, batch: list[Record], step: int) -> tuple[SampledGroups, dict[str, float]]:
    """The step's scored groups. With `rl.dynamic_sampling`, a group whose rewards are all equal (zero std: no
    advantage) is dropped and fresh prompts are sampled, up to `rl.max_sampling_rounds` extra rounds, until the
    batch holds as many informative groups as it has prompts; if the cap is reached first, dropped groups fill the
    rest (the batch keeps its size: every process steps through the same micro-batches). Metrics are over every
    group sampled, plus the drop rate."""
    rl, adapter = run.config.rl, run.adapter

    def sample(records: list[Record], round_: int) -> SampledGroups:
        return sample_groups(adapter, records, rl, template=run.config.data.template,
                             seed=shuffle_seed(run, step, round_), generator=run.engine.generator)

    first = sample(batch, 0)
    if not rl.dynamic_sampling:
        return first, first.metrics()
    parts, kept, dropped = [first], [], []
    for round_ in range(rl.max_sampling_rounds + 1):
        if round_ > 0:
            parts.append(sample(refill_prompts(run, step, round_, len(batch) - len(kept)), round_))
        part = parts[-1]
        base = sum(p.num_groups for p in parts[:-1])
        informative = (part.rewards.std(-1) > 0).tolist()  # [groups]
        kept += [base + i for i, ok in enumerate(informative) if ok]
        dropped += [base + i for i, ok in enumerate(informative) if not ok]
        if len(kept) >= len(batch):
            break
    everything = SampledGroups.concat(parts)
    chosen = (kept + dropped)[: len(batch)]
    metrics = everything.metrics()
    metrics.update({"sampling/drop_rate": len(dropped) / everything.num_groups, "sampling/rounds": len(parts),
                    "sampling/uninformative_kept": sum(i in dropped for i in chosen) / len(batch)})
    return everything.select(chosen), metrics


@torch.no_grad()
def completion_logprobs(adapter, prompts: list[EncodedPrompt], row_prompt: list[int], tokens: torch.Tensor,
                        model) -> torch.Tensor:
    """Log-probs [B*G, T] of the completions under `model` (the policy before its update, or the reference)."""
    return adapter.completion_logprobs(prompts, row_prompt, tokens, model=model)


def build_rollout(run: RLRun, groups: SampledGroups, metrics: dict[str, float]) -> Rollout:
    """Advantages, the loss mask (truncated completions out under `rl.mask_truncated`), the old-policy log-probs
    (several inner updates) and the reference log-probs (a KL term): the rollout, complete."""
    rl, adapter, engine = run.config.rl, run.adapter, run.engine
    advantages = compute_advantages(groups.rewards, rl.advantage, eps=rl.advantage_eps, noise_std=rl.advantage_noise,
                                    generator=engine.generator)  # [B, G]
    g = rl.num_generations
    row_prompt = [i for i in range(groups.num_groups) for _ in range(g)]
    mask = groups.mask
    if rl.mask_truncated:
        mask = mask * (~groups.truncated).unsqueeze(1).to(mask.dtype)  # [B*G, T]
    old = completion_logprobs(adapter, groups.prompts, row_prompt, groups.tokens, adapter.model) \
        if rl.num_iterations > 1 else None  # ratios need the sampling policy's log-probs, kept fixed
    ref = completion_logprobs(adapter, groups.prompts, row_prompt, groups.tokens, engine.reference) \
        if engine.reference is not None else None
    return Rollout(prompts=groups.prompts, row_prompt=row_prompt, tokens=groups.tokens, mask=mask,
                   advantages=advantages.reshape(-1), rewards=groups.rewards, texts=groups.texts, metrics=metrics,
                   old_logp=old, ref_logp=ref)


def step_totals(engine: TrainingRun, mask: torch.Tensor) -> StepTotals:
    """The step's completion tokens and rows over all its micro-batches and processes (one all-reduce)."""
    local = StepTotals.of(mask)
    tokens, rows = sum_over_processes([local.tokens, local.rows], engine.accelerator.device)
    return StepTotals(tokens=tokens, rows=rows, processes=engine.world)


def policy_update(engine: TrainingRun, rollout: Rollout) -> dict[str, float]:
    """`num_iterations` updates of the recipe's policy loss on one rollout; returns the mean diagnostics."""
    rl, optim = engine.config.rl, engine.config.optim
    adapter = engine.adapter
    settings = loss_settings(rl)
    totals = step_totals(engine, rollout.mask)
    parts = micro_batches(len(rollout.row_prompt), optim.grad_accum)
    diagnostics: dict[str, float] = {}
    for _ in range(rl.num_iterations):
        for rows in parts:
            logp = adapter.completion_logprobs(rollout.prompts, rollout.row_prompt[rows], rollout.tokens[rows])  # [n, T]
            batch = LossBatch(
                logp=logp,
                old_logp=None if rollout.old_logp is None else rollout.old_logp[rows].to(logp.device),
                ref_logp=None if rollout.ref_logp is None else rollout.ref_logp[rows].to(logp.device),
                advantages=rollout.advantages[rows].to(logp.device), mask=rollout.mask[rows].to(logp.device),
                totals=totals,
            )
            loss, diag = policy_loss(rl.loss, batch, settings)
            engine.backward(loss)  # already this micro-batch's share of the step's loss
            for key, value in diag.items():
                diagnostics[key] = diagnostics.get(key, 0.0) + value.item() / (rl.num_iterations * len(parts))
        diagnostics["grad_norm"] = diagnostics.get("grad_norm", 0.0) + engine.optimizer_step() / rl.num_iterations
    engine.advance_schedule()
    diagnostics["lr"] = engine.scheduler.get_last_lr()[0]
    return diagnostics


def rl_step(run: RLRun, batch: list[Record], step: int) -> StepResult:
    """One RL step on this process's `batch` (docs/method.md#one-rl-step): sample, build the rollout, update.
    Returns the rollout and this process's metrics (the caller averages them over processes and logs them)."""
    engine, adapter = run.engine, run.adapter
    sync = torch.cuda.synchronize if adapter.model.device.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    adapter.model.eval()
    with engine.generation_context():
        groups, metrics = sample_step_groups(run, batch, step)
    sync()
    t1 = time.perf_counter()
    rollout = build_rollout(run, groups, metrics)
    sync()
    t2 = time.perf_counter()
    adapter.model.train()
    diagnostics = policy_update(engine, rollout)
    sync()
    t3 = time.perf_counter()
    return StepResult(rollout, {**metrics, **{f"loss/{k}": v for k, v in diagnostics.items()},
                                "time/rollout": t1 - t0, "time/reference": t2 - t1, "time/update": t3 - t2})
