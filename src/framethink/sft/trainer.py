"""Supervised cold start (docs/method.md#cold-start): CoT records (target `process + "\\n" + solution`) or LLaVA conversations.

The loss covers the assistant tokens only: prompt and vision pads are never targets, because the target
is scored as a completion after the prompt. `sft.answer` chooses what the answer slot teaches:
  gold    the gold answer (the reference cold start);
  mask    nothing: the answer tokens are kept out of the loss;
  random  the letter of an option drawn uniformly among those the chain of thought mentions (all options
          if it mentions none): the model learns to answer with a letter its reasoning names, but which of
          them is right must come from reward (a cold start that leaves the choice to RL).
Same engine, checkpoints and logging as RL.
"""
from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from framethink.config import TrainConfig, validate
from framethink.data.prompts import sft_target
from framethink.data.records import Record, load_records
from framethink.engine import (
    check_before_loading,
    make_accelerator,
    micro_batches,
    process_rank,
    seed_everything,
    start_run,
    sum_over_processes,
)
from framethink.errors import ConfigError

ANSWER = re.compile(r"(<answer>\s*)(.*?)(\s*</answer>)", re.DOTALL)


@dataclass
class Target:
    ids: torch.Tensor  # [T] assistant tokens incl. the end-of-turn token
    weights: torch.Tensor  # [T] 1 where the token is a target, 0 where masked


def mentioned_letters(record: Record) -> list[str]:
    """Letters of the options whose text the chain of thought names (all letters if it names none)."""
    cot = (record.cot or "").lower()
    letters = [opt.split(".", 1)[0].strip() for opt in record.options
               if re.search(rf"\b{re.escape(opt.split('.', 1)[1].strip().lower())}\b", cot)]
    return letters or record.option_letters()


def build_target(adapter, record: Record, mode: str, rng: random.Random) -> Target:
    """Tokenise the assistant text `process + "\n" + solution` in one piece, as the model would write it, and
    weight its tokens by `mode`.

    Tokenising in pieces around the answer would give splits the model never produces ("> E </" as ">", " ",
    "E", " </" instead of ">", " E", " </"). The answer's tokens are found instead from the tokenizer's character
    offsets: every token overlapping the answer's characters (" E", with the space it carries) is an answer
    token, which `mask` keeps out of the loss. `random` writes the drawn letter into the text before tokenising.
    """
    text = sft_target(record)
    match = ANSWER.search(text)
    if match is None:
        raise record.error("solution", "the SFT target has no <answer> tag")
    start, end = match.span(2)
    if mode == "random":
        if not record.options:
            raise record.error("options", "sft.answer=random needs multiple-choice records (options)")
        answer = rng.choice(mentioned_letters(record))
        text, end = text[:start] + answer + text[end:], start + len(answer)
    if not adapter.tokenizer.is_fast:
        raise ConfigError("SFT needs a fast tokenizer (character offsets locate the answer tokens)")
    encoded = adapter.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    in_answer = [a < end and b > start for a, b in encoded["offset_mapping"]]
    answer_weight = 0.0 if mode == "mask" else 1.0
    weights = [answer_weight if inside else 1.0 for inside in in_answer] + [1.0]  # + the end-of-turn token
    return Target(torch.tensor(encoded["input_ids"] + [adapter.end_of_turn_id]), torch.tensor(weights))


def sft_loss(adapter, prompts, targets: list[Target], *, target_total: float | None = None,
             processes: int = 1) -> torch.Tensor:
    """Negative log-likelihood summed over the target tokens of a batch and divided by the step's target count
    `target_total` (all micro-batches and processes; default: this batch's), times the process count the engine
    averages gradients over: the micro-batch's share of the step's token mean."""
    width = max(len(t.ids) for t in targets)
    ids = torch.full((len(targets), width), adapter.pad_id, dtype=torch.long)  # [B, T]
    weights = torch.zeros(len(targets), width)  # [B, T]
    for row, target in enumerate(targets):
        ids[row, : len(target.ids)] = target.ids
        weights[row, : len(target.ids)] = target.weights
    logp = adapter.completion_logprobs(prompts, list(range(len(prompts))), ids)  # [B, T]
    weights = weights.to(logp.device)
    total = float(weights.sum()) if target_total is None else target_total
    return -(logp * weights).sum() * processes / max(total, 1.0)


def sft_update(run, prompts, targets: list[Target]) -> float:
    """One optimiser step on `targets`: `optim.grad_accum` micro-batches, each normalised by the step's target
    token count over every micro-batch and process (one all-reduce), so accumulation and several processes give
    the token mean of the whole step (docs/method.md#normalisation-across-micro-batches-and-processes).
    Returns the step's loss on this process."""
    local = sum(float(t.weights.sum()) for t in targets)
    (total,) = sum_over_processes([local], run.accelerator.device)
    loss_sum = 0.0
    for part in micro_batches(len(targets), run.config.optim.grad_accum):
        loss = sft_loss(run.adapter, prompts[part], targets[part], target_total=total, processes=run.world)
        run.backward(loss)
        loss_sum += loss.item()
    return loss_sum


def train_sft(config: TrainConfig, *, resume: bool = False, quiet: bool = False) -> Path:
    """Run the SFT recipe; returns the directory of the exported final model."""
    validate(config)  # a config built in code gets the checks load_config makes, before any model loads
    accelerator = make_accelerator(config)
    seed_everything(config.run.seed + process_rank())
    records = load_records(config.sft.train_file, root=config.data.root)
    missing = [r for r in records if r.cot is None]  # in memory: before the media check opens every file
    if missing:
        raise missing[0].error("process", f"an SFT record needs a <think> process ({len(missing)} records "
                                                   "lack one; this is the first)")
    check_before_loading(config, records, accelerator)  # media and backend, before any model loads
    run = start_run(config, accelerator, resume=resume, num_records=len(records))
    adapter = run.adapter

    adapter.model.train()
    with run.running("sft", quiet) as bar:
        for step in bar:
            t0 = time.perf_counter()
            batch = [records[i] for i in run.batch_indices(step, len(records))]
            rng = random.Random(config.run.seed * 1_000_003 + step * run.world + run.rank)  # the random answer letters
            with run.guard(step, batch):  # a record failing to load stops the run with a checkpoint
                prompts = [adapter.encode(r, template=config.data.template) for r in batch]
                targets = [build_target(adapter, r, config.sft.answer, rng) for r in batch]
            total = sft_update(run, prompts, targets)
            grad_norm = run.optimizer_step()
            run.advance_schedule()
            metrics = run.end_step(step, {"loss/sft": total, "loss/grad_norm": grad_norm,
                                          "loss/lr": run.scheduler.get_last_lr()[0],
                                          "time/update": time.perf_counter() - t0})
            bar.set_postfix(loss=f"{metrics['loss/sft']:.3f}")
    return run.finish()
