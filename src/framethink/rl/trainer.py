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

import copy
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from framethink.config import TrainConfig, validate
from framethink.data.records import load_records
from framethink.engine import (
    DTYPES, RunLogger, apply_lora, average_gradients, batch_indices, build_optimizer, build_scheduler,
    latest_checkpoint, load_checkpoint, make_accelerator, mean_over_processes, prepare_run_dir, save_checkpoint,
    seed_everything, set_trainable,
)
from framethink.models.qwen_vl import FrameRule
from framethink.models.registry import load_adapter, write_training_settings
from framethink.rl.loss import grpo_loss
from framethink.rl.rollout import Rollout, collect_rollout


def build_adapter(config: TrainConfig, device: str):
    """The policy adapter with the recipe's frame rule and pixel bounds."""
    data = config.data
    frames = FrameRule(rule=data.frame_rule, fps=data.fps, min_frames=data.min_frames, max_frames=data.max_frames,
                       num_frames=data.num_frames)
    return load_adapter(
        config.model.path, frames=frames, max_pixels=data.video_max_pixels, video_min_pixels=data.video_min_pixels,
        image_max_pixels=data.image_max_pixels, image_min_pixels=data.image_min_pixels, template=data.template,
        system=data.system, dtype=DTYPES[config.model.dtype], device=device, frame_cache_size=data.frame_cache_size,
    )


def trainable_parameters(adapter, config: TrainConfig) -> tuple[list[torch.nn.Parameter], object | None]:
    """Freeze switches, or LoRA adapters when enabled; returns (parameters, peft LoRA model or None)."""
    if config.model.lora.enabled:
        lora = apply_lora(adapter.model, config.model)
        return [p for p in adapter.model.parameters() if p.requires_grad], lora
    return set_trainable(adapter.parameter_groups(), config.model), None


def policy_update(adapter, rollout: Rollout, config: TrainConfig, ref_model, optimizer, scheduler,
                  params: list[torch.nn.Parameter]) -> dict[str, float]:
    """`num_iterations` clipped-objective updates on one rollout; returns the mean diagnostics."""
    rl, optim = config.rl, config.optim
    n = len(rollout.row_prompt)
    micro = -(-n // optim.grad_accum)  # rows per micro-batch
    totals: dict[str, float] = {}
    for _ in range(rl.num_iterations):
        for start in range(0, n, micro):
            rows = slice(start, start + micro)
            logp = adapter.completion_logprobs(rollout.prompts, rollout.row_prompt[rows], rollout.tokens[rows])  # [n, T]
            loss, diag = grpo_loss(
                logp,
                None if rollout.old_logp is None else rollout.old_logp[rows],
                None if rollout.ref_logp is None else rollout.ref_logp[rows],
                rollout.advantages[rows].to(logp.device), rollout.mask[rows].to(logp.device),
                epsilon=rl.epsilon, beta=rl.beta, normalization=rl.normalization,
                max_completion_length=rl.max_new_tokens,
            )
            (loss * (min(n, start + micro) - start) / n).backward()
            for key, value in diag.items():
                totals[key] = totals.get(key, 0.0) + value.item() / (rl.num_iterations * -(-n // micro))
        average_gradients(params)
        totals["grad_norm"] = totals.get("grad_norm", 0.0) + torch.nn.utils.clip_grad_norm_(params, optim.grad_clip).item() / rl.num_iterations
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    totals["lr"] = scheduler.get_last_lr()[0]
    return totals


@torch.no_grad()
def reference_logprobs(adapter, rollout: Rollout, model) -> torch.Tensor:
    return adapter.completion_logprobs(rollout.prompts, rollout.row_prompt, rollout.tokens, model=model)


def train_rl(config: TrainConfig, *, resume: bool = False, quiet: bool = False) -> Path:
    """Run the recipe; returns the directory of the exported final model."""
    validate(config)  # a config built in code gets the checks load_config makes, before any model loads
    accelerator = make_accelerator(config)
    rank, world = accelerator.process_index, accelerator.num_processes
    seed_everything(config.run.seed + rank)
    records = load_records(config.data.train_file, root=config.data.root)  # a bad record stops here, before any model
    out = prepare_run_dir(config, accelerator)

    adapter = build_adapter(config, str(accelerator.device))
    # beta = 0 loads no reference model at all (SPEC 5)
    ref_model = copy.deepcopy(adapter.model).eval().requires_grad_(False) if config.rl.beta > 0 else None
    params, lora = trainable_parameters(adapter, config)
    optimizer = build_optimizer(params, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.run.max_steps)
    generator = torch.Generator().manual_seed(config.run.seed * 1000 + rank)
    start_step = 0
    if resume and (ckpt := latest_checkpoint(out)) is not None:
        start_step = load_checkpoint(ckpt, adapter.model, optimizer, scheduler, generator, accelerator)["step"]
    logger = RunLogger(out, config.run.report_to, enabled=accelerator.is_main_process)

    bar = tqdm(range(start_step, config.run.max_steps), initial=start_step, total=config.run.max_steps,
               disable=quiet or not accelerator.is_main_process, desc="rl")
    for step in bar:
        batch = [records[i] for i in batch_indices(step, config.optim.prompts_per_step, rank, world, len(records),
                                                   config.run.seed, config.data.shuffle)]
        t0 = time.perf_counter()
        adapter.model.eval()
        rollout = collect_rollout(adapter, batch, config.rl, template=config.data.template,
                                  seed=config.run.seed * 1_000_003 + step * world + rank, generator=generator)
        t1 = time.perf_counter()
        if config.rl.num_iterations > 1:  # ratios need the sampling policy's log-probs, kept fixed
            rollout.old_logp = reference_logprobs(adapter, rollout, adapter.model)
        if ref_model is not None:
            rollout.ref_logp = reference_logprobs(adapter, rollout, ref_model)
        t2 = time.perf_counter()
        adapter.model.train()
        diag = policy_update(adapter, rollout, config, ref_model, optimizer, scheduler, params)
        t3 = time.perf_counter()

        metrics = {**rollout.metrics, **{f"loss/{k}": v for k, v in diag.items()},
                   "time/rollout": t1 - t0, "time/reference": t2 - t1, "time/update": t3 - t2}
        metrics = mean_over_processes(metrics, accelerator)
        if (step + 1) % config.run.log_every == 0:
            logger.log(step + 1, metrics)
        if config.run.sample_every and (step + 1) % config.run.sample_every == 0:
            logger.samples(step + 1, [
                {"question": rollout.prompts[i].record.question, "answer": rollout.prompts[i].record.answer,
                 "completion": text, "reward": rollout.rewards.view(-1)[row].item()}
                for row, (i, text) in enumerate(zip(rollout.row_prompt, rollout.texts))
                if row % config.rl.num_generations == 0
            ])
        bar.set_postfix(reward=f"{metrics['reward/total']:.3f}", acc=f"{metrics['accuracy']:.3f}")
        if config.run.save_every and (step + 1) % config.run.save_every == 0 and step + 1 < config.run.max_steps:
            save_checkpoint(out, step + 1, adapter.model, params, optimizer, scheduler, generator, accelerator, {})
    logger.close()
    return export_model(adapter, lora, out / "final", accelerator, config)


def export_model(adapter, lora, out: Path, accelerator, config: TrainConfig) -> Path:
    """The trained model in the Hugging Face layout (loads with from_pretrained); LoRA weights merged.
    `framethink.json` records the template, system message and frame rule it was trained with."""
    if lora is not None:
        adapter.model = lora.merge_and_unload()
    if accelerator.is_main_process:
        adapter.save_pretrained(out)
        write_training_settings(out, template=config.data.template, system=config.data.system, frames=adapter.frames)
    accelerator.wait_for_everyone()
    return out
