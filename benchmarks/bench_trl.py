"""Figure (a): GRPO step throughput, framethink against TRL's GRPOTrainer, in one process.

Same tiny Qwen2.5-VL checkpoint, same image prompts (identical user text and image), same G, prompts per step,
completion length, temperature / top-p, KL weight, optimiser and clipping, float32 and no gradient checkpointing
on both sides. TRL is driven through its public
trainer (`GRPOTrainer.train`) with a constant reward; framethink runs `framethink.rl.step.rl_step`, the step
`train_rl` takes, with its recipe rewards (both are negligible next to the model work). Image prompts, because
TRL 1.16's `GRPOTrainer` reads media only from its dataset's `image` / `images` columns (trl/trainer/grpo_trainer.py,
`_signature_columns`): it has no video input.

    .venv/bin/python -m benchmarks.bench_trl
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import warnings
from pathlib import Path

import torch
from PIL import Image

from benchmarks.common import (
    CLOCK_NOTE, FramethinkRun, count_vision_calls, limit_threads, print_result, rl_config, stats, write_image_records,
)
from framethink.data.prompts import format_question
from framethink.models.tiny import build_tiny


def trl_step_seconds(model_dir: Path, records, template: str, *, prompts: int, g: int, new_tokens: int,
                     beta: float, lr: float, steps: int, warmup: int, out: Path) -> dict:
    """Seconds per step of TRL's GRPOTrainer over `steps` steps after `warmup` steps, and what it did."""
    from datasets import Dataset
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepClock(TrainerCallback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

            self.cpu: list[float] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.t0, self.c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.t0)
            self.cpu.append(time.process_time() - self.c0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.mean_length = float(logs.get("completions/mean_length", "nan"))

    rows = [{"prompt": [{"role": "user", "content": format_question(r, template)}],
             "image": Image.open(r.media[0]).convert("RGB")} for r in records]
    args = GRPOConfig(
        output_dir=str(out), per_device_train_batch_size=prompts * g, num_generations=g,
        max_completion_length=new_tokens, temperature=1.0, top_p=1.0, beta=beta, learning_rate=lr,
        weight_decay=0.01, max_grad_norm=5.0, lr_scheduler_type="cosine", loss_type="grpo", scale_rewards="group",
        max_steps=warmup + steps, logging_steps=10_000, save_strategy="no", report_to="none", use_cpu=True,
        seed=0, disable_tqdm=True, dataloader_num_workers=0, shuffle_dataset=False, bf16=False,  # fp32, as framethink
        activation_checkpointing=False,  # TRL's GRPO default is on; framethink's recipe runs without it here
    )
    clock = StepClock()
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32)
    for name, param in model.model.visual.named_parameters():  # the same trainable set as framethink's recipe:
        param.requires_grad_(name.startswith("merger"))  # vision tower frozen (docs/method.md#recipes), merger trained
    trainer = GRPOTrainer(
        model=model, reward_funcs=[lambda completions, **_: [0.0] * len(completions)], args=args,
        train_dataset=Dataset.from_list(rows * (warmup + steps)),
        processing_class=AutoProcessor.from_pretrained(model_dir),
        callbacks=[clock],
    )
    with count_vision_calls(trainer.model, trainer.ref_model) as calls, warnings.catch_warnings():
        # TRL 1.16's generation context reads the model's deprecated `is_gradient_checkpointing` itself
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        trainer.train()
    total = warmup + steps
    return {"seconds": clock.seconds[warmup:], "cpu": clock.cpu[warmup:], "vision_calls_per_step": calls[0] / total,
            "clips_encoded_per_step": calls[1] / total,
            "mean_completion_length": clock.mean_length}


def run(work: Path, *, prompts: int = 4, g: int = 8, new_tokens: int = 64, image_size: int = 112, steps: int = 6,
        warmup: int = 1, sizes: dict | None = None) -> dict:
    """TRL and framethink on the same checkpoint and prompts; returns seconds per step, completions/s and the
    ratios.

    framethink's steps are split in two halves around TRL's run so that a drift in machine load hits both.
    """
    model_dir = build_tiny("qwen2.5-vl", work / "model", seed=0, **(sizes or {}))
    # TRL's processor reads the checkpoint's image bounds: give it the recipe's, as framethink uses
    bounds = model_dir / "preprocessor_config.json"
    recipe_bounds = {"min_pixels": 4 * 28 * 28, "max_pixels": 256 * 28 * 28}
    bounds.write_text(json.dumps({**json.loads(bounds.read_text()), **recipe_bounds}))
    train_file = write_image_records(work / "images", prompts, size=image_size)
    beta, lr = 0.04, 1e-5
    config = rl_config(model_dir, train_file, "rl.algorithm=grpo", f"rl.num_generations={g}",
                       f"rl.max_new_tokens={new_tokens}", "rl.temperature=1.0", f"rl.beta={beta}", f"optim.lr={lr:.8f}",
                       f"optim.prompts_per_step={prompts}", f"run.max_steps={warmup + steps}")
    runs = {"framethink": FramethinkRun.build(config)}
    times: dict[str, list] = {name: [] for name in runs}
    for name, ours in runs.items():
        times[name] += [ours.step(i) for i in range(warmup + steps // 2)][warmup:]
    theirs = trl_step_seconds(model_dir, runs["framethink"].records, config.data.template, prompts=prompts, g=g,
                              new_tokens=new_tokens, beta=beta, lr=lr, steps=steps, warmup=warmup, out=work / "trl")
    for name, ours in runs.items():
        times[name] += [ours.step(warmup + steps // 2 + i) for i in range(steps - steps // 2)]

    completions = prompts * g
    trl_cpu = stats(theirs["cpu"])
    trl_wall = stats(theirs["seconds"])
    result = {
        "setting": {"prompts_per_step": prompts, "G": g, "max_new_tokens": new_tokens,
                    "image": f"{image_size}x{image_size}",
                    "prompt_tokens": runs["framethink"].last_rollout.prompts[0].inputs["input_ids"].shape[1],
                    "temperature": 1.0, "top_p": 1.0, "beta": beta, "threads": torch.get_num_threads(),
                    "parameters": sum(p.numel() for p in runs["framethink"].adapter.model.parameters()),
                    "clock": CLOCK_NOTE},
        "trl": {"cpu_s": trl_cpu, "wall_s": trl_wall, "completions_per_cpu_s": completions / trl_cpu["median"],
                "vision_calls_per_step": theirs["vision_calls_per_step"],
                "clips_encoded_per_step": theirs["clips_encoded_per_step"],
                "mean_completion_length": theirs["mean_completion_length"]},
    }
    for name, ts in times.items():
        cpu, wall = stats([t.cpu for t in ts]), stats([t.total for t in ts])
        result[name] = {
            "cpu_s": cpu, "wall_s": wall, "completions_per_cpu_s": completions / cpu["median"],
            "speedup_vs_trl_cpu": trl_cpu["median"] / cpu["median"],
            "speedup_vs_trl_wall": trl_wall["median"] / wall["median"],
            "phases_median_wall_s": {k: stats([getattr(t, k) for t in ts])["median"]
                                     for k in ("generate", "rollout", "reference", "update")},
            "vision_calls_per_step": ts[-1].vision_calls, "clips_encoded_per_step": ts[-1].vision_clips,
            "mean_completion_length": sum(t.completion_tokens for t in ts) / (len(ts) * completions),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--g", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    limit_threads(1)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), prompts=args.prompts, g=args.g, new_tokens=args.new_tokens,
                     image_size=args.image_size, steps=args.steps)
    print_result("grpo step: framethink vs TRL GRPOTrainer", result)
    ours = result["framethink"]
    print(f"completions per CPU-second: TRL {result['trl']['completions_per_cpu_s']:.2f}, "
          f"framethink {ours['completions_per_cpu_s']:.2f} ({ours['speedup_vs_trl_cpu']:.2f}x)")


if __name__ == "__main__":
    main()
