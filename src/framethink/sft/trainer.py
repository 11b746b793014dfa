"""Supervised cold start (SPEC 3, 6): CoT records (target `process + "\\n" + solution`) or LLaVA conversations.

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
    check_engine_settings,
    make_accelerator,
    micro_batches,
    process_rank,
    seed_everything,
    start_run,
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
    """Tokenise `process + "\\n" + solution` in three pieces (before, inside and after the answer) so the
    answer tokens can be masked or replaced."""
    text = sft_target(record)
    match = ANSWER.search(text)
    if match is None:
        raise ConfigError(f"{record.origin}: SFT target has no <answer> tag")
    answer = match.group(2)
    if mode == "random":
        if not record.options:
            raise ConfigError(f"{record.origin}: sft.answer=random needs multiple-choice records")
        answer = rng.choice(mentioned_letters(record))
    pieces = [text[: match.start(2)], answer, text[match.end(2):]]
    ids = [adapter.tokenizer(piece, add_special_tokens=False)["input_ids"] for piece in pieces]
    weight = [1.0, 0.0 if mode == "mask" else 1.0, 1.0]
    tokens = ids[0] + ids[1] + ids[2] + [adapter.end_of_turn_id]
    weights = [weight[0]] * len(ids[0]) + [weight[1]] * len(ids[1]) + [weight[2]] * (len(ids[2]) + 1)
    return Target(torch.tensor(tokens), torch.tensor(weights))


def sft_loss(adapter, prompts, targets: list[Target]) -> torch.Tensor:
    """Mean negative log-likelihood over the target tokens of a batch."""
    width = max(len(t.ids) for t in targets)
    ids = torch.full((len(targets), width), adapter.pad_id, dtype=torch.long)  # [B, T]
    weights = torch.zeros(len(targets), width)  # [B, T]
    for row, target in enumerate(targets):
        ids[row, : len(target.ids)] = target.ids
        weights[row, : len(target.ids)] = target.weights
    logp = adapter.completion_logprobs(prompts, list(range(len(prompts))), ids)  # [B, T]
    weights = weights.to(logp.device)
    return -(logp * weights).sum() / weights.sum().clamp(min=1.0)


def train_sft(config: TrainConfig, *, resume: bool = False, quiet: bool = False) -> Path:
    """Run the SFT recipe; returns the directory of the exported final model."""
    validate(config)  # a config built in code gets the checks load_config makes, before any model loads
    accelerator = make_accelerator(config)
    seed_everything(config.run.seed + process_rank())
    records = load_records(config.sft.train_file, root=config.data.root)
    check_engine_settings(config, records, accelerator)
    missing = [r.origin for r in records if r.cot is None]
    if missing:
        raise ConfigError(f"{len(missing)} SFT records have no <think> process, first: {missing[0]}")
    run = start_run(config, accelerator, resume=resume, num_records=len(records))
    adapter = run.adapter

    adapter.model.train()
    for step in (bar := run.steps("sft", quiet)):
        t0 = time.perf_counter()
        batch = [records[i] for i in run.batch_indices(step, len(records))]
        rng = random.Random(config.run.seed * 1_000_003 + step * run.world + run.rank)  # the random answer letters
        prompts = [adapter.encode(r, template=config.data.template) for r in batch]
        targets = [build_target(adapter, r, config.sft.answer, rng) for r in batch]
        total = 0.0
        for part in micro_batches(len(batch), config.optim.grad_accum):
            loss = sft_loss(adapter, prompts[part], targets[part]) * len(prompts[part]) / len(batch)
            run.backward(loss)
            total += loss.item()
        grad_norm = run.optimizer_step()
        run.scheduler.step()
        metrics = run.end_step(step, {"loss/sft": total, "loss/grad_norm": grad_norm,
                                      "loss/lr": run.scheduler.get_last_lr()[0], "time/update": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{metrics['loss/sft']:.3f}")
    return run.finish()
