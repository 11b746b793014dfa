"""GRPO / T-GRPO / Dr. GRPO training, read top to bottom (SPEC 5).

    for each step:
        rollout   one batched generate for all prompts (+ shuffled clips under T-GRPO), vision once per prompt
        scoring   recipe rewards per prompt group, temporal bonus per group, group advantages
        update    num_iterations x (old / reference / policy log-probs on the full multimodal inputs, clipped
                  objective with k3 KL), gradients averaged over processes, clip, AdamW, schedule
        logging   metrics.jsonl + TensorBoard, rollout samples; atomic checkpoints every N steps

The loop never branches on the model type: the adapter hides it.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from framethink.config import TrainConfig, validate
from framethink.data.records import load_records
from framethink.engine import (
    TrainingRun,
    check_engine_settings,
    make_accelerator,
    micro_batches,
    process_rank,
    seed_everything,
    start_run,
)
from framethink.rl.loss import grpo_loss
from framethink.rl.rollout import Rollout, collect_rollout


def policy_update(adapter, rollout: Rollout, run: TrainingRun) -> dict[str, float]:
    """`num_iterations` clipped-objective updates on one rollout; returns the mean diagnostics."""
    rl, optim = run.config.rl, run.config.optim
    n = len(rollout.row_prompt)
    parts = micro_batches(n, optim.grad_accum)
    totals: dict[str, float] = {}
    for _ in range(rl.num_iterations):
        for rows in parts:
            logp = adapter.completion_logprobs(rollout.prompts, rollout.row_prompt[rows], rollout.tokens[rows])  # [n, T]
            loss, diag = grpo_loss(
                logp,
                None if rollout.old_logp is None else rollout.old_logp[rows],
                None if rollout.ref_logp is None else rollout.ref_logp[rows],
                rollout.advantages[rows].to(logp.device), rollout.mask[rows].to(logp.device),
                epsilon=rl.epsilon, beta=rl.beta, normalization=rl.normalization,
                max_completion_length=rl.max_new_tokens,
            )
            run.backward(loss * (rows.stop - rows.start) / n)
            for key, value in diag.items():
                totals[key] = totals.get(key, 0.0) + value.item() / (rl.num_iterations * len(parts))
        totals["grad_norm"] = totals.get("grad_norm", 0.0) + run.optimizer_step() / rl.num_iterations
    run.scheduler.step()
    totals["lr"] = run.scheduler.get_last_lr()[0]
    return totals


@torch.no_grad()
def reference_logprobs(adapter, rollout: Rollout, model) -> torch.Tensor:
    return adapter.completion_logprobs(rollout.prompts, rollout.row_prompt, rollout.tokens, model=model)


def train_rl(config: TrainConfig, *, resume: bool = False, quiet: bool = False) -> Path:
    """Run the recipe; returns the directory of the exported final model."""
    validate(config)  # a config built in code gets the checks load_config makes, before any model loads
    accelerator = make_accelerator(config)
    seed_everything(config.run.seed + process_rank())
    records = load_records(config.data.train_file, root=config.data.root)  # a bad record stops here, before any model
    check_engine_settings(config, records, accelerator)
    run = start_run(config, accelerator, resume=resume, reference=config.rl.beta > 0, num_records=len(records))  # beta 0: no reference model (SPEC 5)
    adapter, rl, ref_model = run.adapter, config.rl, run.reference

    for step in (bar := run.steps("rl", quiet)):
        batch = [records[i] for i in run.batch_indices(step, len(records))]
        t0 = time.perf_counter()
        adapter.model.eval()
        with run.generation_context():
            rollout = collect_rollout(adapter, batch, rl, template=config.data.template,
                                      seed=config.run.seed * 1_000_003 + step * run.world + run.rank,
                                      generator=run.generator)
        t1 = time.perf_counter()
        if rl.num_iterations > 1:  # ratios need the sampling policy's log-probs, kept fixed
            rollout.old_logp = reference_logprobs(adapter, rollout, adapter.model)
        if ref_model is not None:
            rollout.ref_logp = reference_logprobs(adapter, rollout, ref_model)
        t2 = time.perf_counter()
        adapter.model.train()
        diag = policy_update(adapter, rollout, run)
        t3 = time.perf_counter()

        metrics = run.end_step(step, {**rollout.metrics, **{f"loss/{k}": v for k, v in diag.items()},
                                      "time/rollout": t1 - t0, "time/reference": t2 - t1, "time/update": t3 - t2})
        if config.run.sample_every and (step + 1) % config.run.sample_every == 0:
            run.logger.samples(step + 1, [
                {"question": rollout.prompts[i].record.question, "answer": rollout.prompts[i].record.answer,
                 "completion": text, "reward": rollout.rewards.view(-1)[row].item()}
                for row, (i, text) in enumerate(zip(rollout.row_prompt, rollout.texts))
                if row % rl.num_generations == 0
            ])
        bar.set_postfix(reward=f"{metrics['reward/total']:.3f}", acc=f"{metrics['accuracy']:.3f}")
    return run.finish()
