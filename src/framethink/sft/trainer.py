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
from tqdm.auto import tqdm

from framethink.config import TrainConfig, validate
from framethink.data.prompts import sft_target
from framethink.data.records import Record, load_records
from framethink.engine import (
    RunLogger, average_gradients, batch_indices, build_optimizer, build_scheduler, latest_checkpoint,
    load_checkpoint, make_accelerator, mean_over_processes, prepare_run_dir, save_checkpoint, seed_everything,
)
from framethink.errors import ConfigError
from framethink.rl.trainer import build_adapter, export_model, trainable_parameters

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
    rank, world = accelerator.process_index, accelerator.num_processes
    seed_everything(config.run.seed + rank)
    records = load_records(config.sft.train_file, root=config.data.root)
    missing = [r.origin for r in records if r.cot is None]
    if missing:
        raise ConfigError(f"{len(missing)} SFT records have no <think> process, first: {missing[0]}")
    out = prepare_run_dir(config, accelerator)

    adapter = build_adapter(config, str(accelerator.device))
    params, lora = trainable_parameters(adapter, config)
    optimizer = build_optimizer(params, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.run.max_steps)
    generator = torch.Generator().manual_seed(config.run.seed * 1000 + rank)
    start_step = 0
    if resume and (ckpt := latest_checkpoint(out)) is not None:
        start_step = load_checkpoint(ckpt, adapter.model, optimizer, scheduler, generator, accelerator)["step"]
    logger = RunLogger(out, config.run.report_to, enabled=accelerator.is_main_process)

    adapter.model.train()
    bar = tqdm(range(start_step, config.run.max_steps), initial=start_step, total=config.run.max_steps,
               disable=quiet or not accelerator.is_main_process, desc="sft")
    for step in bar:
        t0 = time.perf_counter()
        indices = batch_indices(step, config.optim.prompts_per_step, rank, world, len(records), config.run.seed,
                                config.data.shuffle)
        batch = [records[i] for i in indices]
        rng = random.Random(config.run.seed * 1_000_003 + step * world + rank)  # the random answer letters
        prompts = [adapter.encode(r, template=config.data.template) for r in batch]
        targets = [build_target(adapter, r, config.sft.answer, rng) for r in batch]
        micro = -(-len(batch) // config.optim.grad_accum)
        total = 0.0
        for start in range(0, len(batch), micro):
            part = slice(start, start + micro)
            loss = sft_loss(adapter, prompts[part], targets[part]) * len(prompts[part]) / len(batch)
            loss.backward()
            total += loss.item()
        average_gradients(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.optim.grad_clip).item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        metrics = {"loss/sft": total, "loss/grad_norm": grad_norm, "loss/lr": scheduler.get_last_lr()[0],
                   "time/update": time.perf_counter() - t0}
        metrics = mean_over_processes(metrics, accelerator)
        if (step + 1) % config.run.log_every == 0:
            logger.log(step + 1, metrics)
        bar.set_postfix(loss=f"{metrics['loss/sft']:.3f}")
        if config.run.save_every and (step + 1) % config.run.save_every == 0 and step + 1 < config.run.max_steps:
            save_checkpoint(out, step + 1, adapter.model, params, optimizer, scheduler, generator, accelerator, {})
    logger.close()
    adapter.model.eval()
    return export_model(adapter, lora, out / "final", accelerator, config)
