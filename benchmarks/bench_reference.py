"""Figure (b): one video T-GRPO step, framethink against the reference design, with vision-encoder calls counted.

The reference design is what both reference trainers (Video-R1, TinyLLaVA-Video-R1) do per step:
  - build the prompt inputs once per step, decoding every clip again (no frame cache);
  - sample with one `model.generate` call per completion (`num_return_sequences=1`, looped G times, then G~ times
    on the shuffled clips), each call running the vision encoder again in its prefill;
  - score with full-sequence forwards of the policy and the reference model whose pixel rows are repeated once
    per completion, so the vision encoder re-encodes every clip for every completion.
Its prompts are batched across the step's prompts in each call (Video-R1 ran one prompt per device), which
favours the reference. It uses framethink's own rewards, temporal bonus, advantages and loss, so only the
design differs. Both start from the same weights, see the same records and take the same optimiser steps.
framethink runs twice: as it trains (the frozen tower's output reused across the step's forwards) and with that
reuse turned off (the whole encoder in every forward).

`--arch` picks the tiny checkpoint's family: qwen2.5-vl (default) or qwen3-vl. For Qwen3-VL the reference design
passes what that model's forward needs, as transformers' `Qwen3VLProcessor` outputs it and framethink's Qwen3 inputs
build it (docs/inputs.md#qwen3-vl-and-qwen35-the-timestamp-text): `mm_token_type_ids`, one `video_grid_thw` row per
clip, which the model splits into one vision block per temporal patch, each block preceded by its timestamp text in
the prompt, and no `second_per_grid_ts`; the DeepStack features are its own forward's.

    .venv/bin/python -m benchmarks.bench_reference [--arch qwen3-vl]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import torch
from transformers import GenerationConfig

from benchmarks.common import (
    CLOCK_NOTE, FramethinkRun, StepTimes, count_vision_calls, limit_threads, print_result, rl_config, stats,
    write_video_records,
)
from framethink.models.adapter import EncodedPrompt
from framethink.models.sampling import Completions
from framethink.models.tiny import build_tiny
from framethink.rl.advantages import compute_advantages, temporal_bonus
from framethink.rl.loss import LossBatch, loss_settings, policy_loss
from framethink.rl.rollout import score_group

PIXEL_KEYS = ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def collate(prompts: list[EncodedPrompt], pad_id: int, repeats: int = 1) -> dict[str, torch.Tensor]:
    """The processor's batched output for `prompts`, each repeated `repeats` times in a row: token fields
    left-padded, pixel fields concatenated (so each repeat carries its own copy of the clip)."""
    rows = [p for p in prompts for _ in range(repeats)]
    length = max(p.inputs["input_ids"].shape[1] for p in rows)
    batch = {"input_ids": torch.full((len(rows), length), pad_id),
             "attention_mask": torch.zeros(len(rows), length, dtype=torch.long),
             "mm_token_type_ids": torch.zeros(len(rows), length, dtype=torch.long)}
    for i, p in enumerate(rows):
        n = p.inputs["input_ids"].shape[1]
        for key in batch:
            batch[key][i, length - n:] = p.inputs[key][0]
    for key in PIXEL_KEYS:
        if key in rows[0].inputs:  # Qwen3-VL has no second_per_grid_ts
            batch[key] = torch.cat([p.inputs[key] for p in rows])
    return batch


class ReferenceDesign:
    """The reference trainers' step on a `FramethinkRun`'s model, reference model and optimiser."""

    def __init__(self, run: FramethinkRun) -> None:
        self.run = run
        a = run.adapter
        # the family's own adapter class builds the prompt inputs, without a frame cache
        self.encoder = type(a)(a.model, a.tokenizer, a.processor, frames=a.frames, system=a.system,
                               frame_cache_size=0)
        rl = run.config.rl
        self.generation = GenerationConfig(
            do_sample=True, temperature=rl.temperature, top_p=rl.top_p, top_k=0, max_new_tokens=rl.max_new_tokens,
            num_return_sequences=1, eos_token_id=a.eos_ids, pad_token_id=a.pad_id, suppress_tokens=a.suppress_ids,
        )

    def sample(self, batch: dict[str, torch.Tensor], calls: int) -> list[torch.Tensor]:
        """`calls` generate calls, one completion per prompt each. -> list of [B, T_k] completion ids."""
        out = []
        for _ in range(calls):
            sequences = self.run.adapter.model.generate(**batch, generation_config=self.generation)
            out.append(sequences[:, batch["input_ids"].shape[1]:])
        return out

    def completions(self, per_call: list[torch.Tensor]) -> Completions:
        """Prompt-major rows [B*calls, T] from per-call [B, T_k] tokens, masked after the first EOS."""
        width = max(t.shape[1] for t in per_call)
        pad = self.run.adapter.pad_id
        stacked = torch.stack([torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad) for t in per_call], 1)
        tokens = stacked.reshape(-1, width)  # [B, calls, T] -> [B*calls, T]
        is_eos = torch.isin(tokens, torch.tensor(self.run.adapter.eos_ids))
        after = (is_eos.cumsum(1) - is_eos.long()) > 0  # strictly after the first EOS
        return Completions(tokens=tokens.masked_fill(after, pad), mask=(~after).float())

    def logprobs(self, model, batch: dict[str, torch.Tensor], completions: Completions) -> torch.Tensor:
        """Full-sequence forward with the clip's pixels once per row; log-probs [N, T] of the completions."""
        t = completions.tokens.shape[1]
        ids = torch.cat([batch["input_ids"], completions.tokens], 1)  # [N, Lp+T]
        inputs = {**batch, "input_ids": ids,
                  "attention_mask": torch.cat([batch["attention_mask"], torch.ones_like(completions.tokens)], 1),
                  "mm_token_type_ids": torch.cat([batch["mm_token_type_ids"], torch.zeros_like(completions.tokens)], 1)}
        logits = model(**inputs).logits[:, :-1]  # [N, L-1, V]: every position, as the reference computes them
        logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return logp[:, -t:]

    def step(self, step: int) -> StepTimes:
        run, rl = self.run, self.run.config.rl
        model, template = run.adapter.model, run.config.data.template
        records = run.batch(step)
        seed = run.config.run.seed * 1_000_003 + step
        with count_vision_calls(model, run.ref_model) as calls:
            c0, t0 = time.process_time(), time.perf_counter()
            model.eval()
            ordered = [self.encoder.encode(r, template=template) for r in records]
            shuffled = [self.encoder.encode(r, template=template, frame_order="shuffled", seed=seed * 10_007 + i)
                        for i, r in enumerate(records)]
            pad = run.adapter.pad_id
            tg = time.perf_counter()
            with torch.no_grad():
                done = self.completions(self.sample(collate(ordered, pad), rl.num_generations))  # [B*G, T]
                done_shuffled = self.completions(self.sample(collate(shuffled, pad), rl.num_shuffled))  # [B*Gs, T]
            generate = time.perf_counter() - tg
            texts, shuffled_texts = run.adapter.decode(done), run.adapter.decode(done_shuffled)
            g, gs, b = rl.num_generations, rl.num_shuffled, len(records)
            rewards, acc, acc_shuffled = torch.zeros(b, g), torch.zeros(b, g), torch.zeros(b, gs)
            lengths = done.lengths.tolist()
            for i, r in enumerate(records):
                total, components = score_group(texts[i * g:(i + 1) * g], lengths[i * g:(i + 1) * g], r, rl)
                rewards[i], acc[i] = torch.tensor(total), torch.tensor(components["accuracy"])
                _, shuffled_components = score_group(shuffled_texts[i * gs:(i + 1) * gs],
                                                     done_shuffled.lengths[i * gs:(i + 1) * gs].tolist(), r, rl)
                acc_shuffled[i] = torch.tensor(shuffled_components["accuracy"])
            bonus = temporal_bonus(acc, acc_shuffled, torch.ones(b, dtype=torch.bool), alpha=rl.temporal_alpha,
                                   mu=rl.temporal_mu, strict=rl.temporal_strict)
            advantages = compute_advantages(rewards + bonus.bonus, rl.advantage, eps=rl.advantage_eps,
                                            noise_std=rl.advantage_noise, generator=run.engine.generator)
            advantages = advantages.reshape(-1)  # [B*G]
            t1 = time.perf_counter()
            rows = collate(ordered, pad, repeats=g)  # pixels repeated per completion
            with torch.no_grad():
                ref_logp = self.logprobs(run.ref_model, rows, done) if run.ref_model is not None else None
            t2 = time.perf_counter()
            model.train()
            logp = self.logprobs(model, rows, done)
            loss, _ = policy_loss(rl.loss, LossBatch(logp, None, ref_logp, advantages, done.mask), loss_settings(rl))
            loss.backward()
            run.engine.optimizer_step()  # the trainer's: clip, AdamW, zero the gradients
            run.engine.advance_schedule()
            t3, c3 = time.perf_counter(), time.process_time()
        return StepTimes(generate=generate, rollout=t1 - t0, reference=t2 - t1, update=t3 - t2, vision_calls=calls[0],
                         vision_clips=calls[1], rows=b * (g + gs),
                         completion_tokens=int(done.mask.sum() + done_shuffled.mask.sum()), cpu=c3 - c0)


# Per tiny architecture: the recipe's frame rule and video pixel bound for `frames` frames of size x size (Qwen3-VL's
# bound counts the pixels of the whole clip), and the default frame side: a multiple of the resize factor (patch x
# merge: 28, 32) giving both 16 merged tokens per temporal patch, 128 per 16-frame clip.
ARCHS = {
    "qwen2.5-vl": (lambda frames, size: ("data.frame_rule=qwen", f"data.video_max_pixels={size * size}"), 112),
    "qwen3-vl": (lambda frames, size: ("data.frame_rule=qwen3", f"data.video_max_pixels={frames * size * size}"), 128),
}


def run(work: Path, *, prompts: int = 2, g: int = 8, gs: int = 4, new_tokens: int = 64, frames: int = 16,
        size: int | None = None, steps: int = 4, warmup: int = 1, sizes: dict | None = None,
        arch: str = "qwen2.5-vl") -> dict:
    """framethink, framethink with frozen-tower reuse turned off, and the reference design, each on its own copy of
    the same tiny `arch` checkpoint, on the same records (a fresh clip every prompt: no frame-cache hits); `size`
    defaults to the arch's frame side."""
    visual, default_size = ARCHS[arch]
    size = size or default_size
    model_dir = build_tiny(arch, work / "model", seed=0, **(sizes or {}))
    train_file = write_video_records(work / "clips", prompts * (warmup + steps), num_frames=frames, size=size)
    config = rl_config(model_dir, train_file, "rl.algorithm=tgrpo", f"rl.num_generations={g}",
                       f"rl.num_shuffled={gs}", f"rl.max_new_tokens={new_tokens}", "rl.temperature=1.0",
                       f"optim.prompts_per_step={prompts}", f"run.max_steps={warmup + steps}",
                       f"data.max_frames={frames}", *visual(frames, size))
    steppers = {"framethink": FramethinkRun.build(config),
                "framethink, no tower reuse": FramethinkRun.build(config, tower_reuse=False),
                "reference": ReferenceDesign(FramethinkRun.build(config))}
    times: dict[str, list[StepTimes]] = {name: [] for name in steppers}
    for i in range(warmup + steps):  # interleaved, so that a change in machine load hits every design
        for name, stepper in steppers.items():
            times[name].append(stepper.step(i))
    ref = stats([t.cpu for t in times["reference"][warmup:]])
    ours = steppers["framethink"]
    prompt = ours.last_rollout.prompts[0].inputs  # an ordered clip's prompt, as every design's model received it
    result = {"setting": {"arch": arch, "model_type": ours.adapter.model.config.model_type,
                          "parameters": sum(p.numel() for p in ours.adapter.model.parameters()),
                          "prompts_per_step": prompts, "G": g, "G_shuffled": gs,
                          "max_new_tokens": new_tokens, "frames": frames, "frame": f"{size}x{size}",
                          "threads": torch.get_num_threads(), "video_grid_thw": prompt["video_grid_thw"].tolist(),
                          "visual_tokens_per_clip": int((prompt["mm_token_type_ids"] == 2).sum()),
                          "prompt_tokens": prompt["input_ids"].shape[1], "clock": CLOCK_NOTE}}
    for name, ts in times.items():
        ts = ts[warmup:]
        cpu = stats([t.cpu for t in ts])
        result[name] = {
            "cpu_s": cpu, "wall_s": stats([t.total for t in ts]),
            "speedup_vs_reference_cpu": ref["median"] / cpu["median"],
            "phases_median_wall_s": {k: stats([getattr(t, k) for t in ts])["median"]
                                     for k in ("generate", "rollout", "reference", "update")},
            "vision_calls_per_step": ts[-1].vision_calls, "clips_encoded_per_step": ts[-1].vision_clips,
            "rows_per_step": ts[-1].rows,
            "mean_completion_length": sum(t.completion_tokens for t in ts) / sum(t.rows for t in ts),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=None,
                        help="frame side in pixels (default: qwen2.5-vl 112, qwen3-vl 128: 128 visual tokens per clip)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--arch", choices=list(ARCHS), default="qwen2.5-vl", help="the tiny model's family")
    args = parser.parse_args()
    limit_threads(1)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), prompts=args.prompts, new_tokens=args.new_tokens, frames=args.frames,
                     size=args.size, steps=args.steps, arch=args.arch)
    print_result(f"video T-GRPO step ({args.arch}): framethink vs the reference design", result)
    print("CPU seconds per step: " + ", ".join(
        f"{name} {result[name]['cpu_s']['median']:.2f} ({result[name]['speedup_vs_reference_cpu']:.2f}x, "
        f"{result[name]['vision_calls_per_step']} vision calls, {result[name]['clips_encoded_per_step']} clips)"
        for name in ("reference", "framethink, no tower reuse", "framethink")))


if __name__ == "__main__":
    main()
