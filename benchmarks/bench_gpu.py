"""Item 2: one T-GRPO step of a real-size Qwen2.5-VL-3B or -7B (random weights, bf16) on a GPU.

Video-R1's training setting: one prompt per GPU, a 16-frame clip at 128*28*28 pixels per frame (448x224,
128 merged tokens per 2-frame tubelet, 1,024 visual tokens), G = 8 ordered + 4 shuffled completions of 768 new
tokens, beta 0.04 (reference model loaded), vision tower frozen, merger and LM trained, AdamW.
A random model almost never samples EOS, so every row runs the full 768 tokens.

Reported: step time split into rollout (of which generate, of which prefill) / reference log-probs / update,
decode tokens per second against the card's memory-bandwidth bound (every decode step reads all LM weights
plus the KV cache of every row: bound = rows / ((weight bytes + KV bytes at the mean context) / bandwidth)),
and peak GPU memory. The configs below are those of the released checkpoints (config.json of
Qwen/Qwen2.5-VL-3B-Instruct and -7B-Instruct); the special-token ids are the offline tokenizer's.

    .venv/bin/python -m benchmarks.bench_gpu --model 3b
    .venv/bin/python -m benchmarks.bench_gpu --model 7b
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from benchmarks.common import FramethinkRun, print_result, rl_config, stats, write_clip
from framethink.data.records import load_records
from framethink.models.adapter import Decoding
from framethink.models.qwen_vl.inputs import QwenVisionProcessor
from framethink.models.qwen_vl.adapter import FrameRule, QwenVLAdapter
from framethink.models.tokenizer import build_offline_tokenizer

VISION_7B_3B = {  # the same tower in both; only the merger's output width differs
    "depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "in_chans": 3, "patch_size": 14,
    "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2, "hidden_act": "silu",
}
ROPE = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": [16, 24, 24]}  # head dim 128
CONFIGS = {
    "3b": {
        "text_config": {"vocab_size": 151_936, "hidden_size": 2048, "intermediate_size": 11_008,
                        "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
                        "max_position_embeddings": 128_000, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
                        "hidden_act": "silu", "rope_parameters": ROPE},
        "vision_config": {**VISION_7B_3B, "out_hidden_size": 2048},
        "tie_word_embeddings": True,
    },
    "7b": {
        "text_config": {"vocab_size": 152_064, "hidden_size": 3584, "intermediate_size": 18_944,
                        "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
                        "max_position_embeddings": 128_000, "rms_norm_eps": 1e-6, "tie_word_embeddings": False,
                        "hidden_act": "silu", "rope_parameters": ROPE},
        "vision_config": {**VISION_7B_3B, "out_hidden_size": 3584},
        "tie_word_embeddings": False,
    },
}
# HBM bandwidth in TB/s by device-name fragment, most specific first
BANDWIDTH_TBS = (("H200", 4.8), ("H100 PCIe", 2.0), ("H100", 3.35), ("A100-SXM4-80GB", 2.039), ("A100", 1.555))
VIDEO_PIXELS = 128 * 28 * 28  # Video-R1 training, per frame (recipes/video-r1.yaml)


def build_model(sizes: dict, tokenizer, *, device: str, dtype: torch.dtype) -> Qwen2_5_VLForConditionalGeneration:
    """A randomly initialised Qwen2.5-VL of `sizes`, created directly in `dtype` on `device`."""
    eos, pad, image, video, start, end = tokenizer.convert_tokens_to_ids(
        ["<|im_end|>", "<|endoftext|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"])
    text = {**sizes["text_config"], "bos_token_id": pad, "eos_token_id": eos, "pad_token_id": pad}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=sizes["vision_config"], image_token_id=image,
                              video_token_id=video, vision_start_token_id=start, vision_end_token_id=end,
                              tie_word_embeddings=sizes["tie_word_embeddings"])
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # no float32 copy of the weights on the way
    try:
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def decode_bound(model, *, rows: int, context: float, bandwidth: float) -> dict:
    """Tokens/s a decode step could reach if it only streamed the LM weights and the rows' KV cache."""
    lm = model.model.language_model
    embed = lm.embed_tokens.weight
    weights = sum(p.numel() * p.element_size() for p in lm.parameters() if p is not embed)
    weights += model.lm_head.weight.numel() * model.lm_head.weight.element_size()  # tied or not, read every step
    cfg = model.config.text_config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    kv = rows * cfg.num_hidden_layers * 2 * cfg.num_key_value_heads * head_dim * embed.element_size() * context
    return {"weight_gb": weights / 1e9, "kv_gb_at_mean_context": kv / 1e9,
            "tokens_per_s": rows * bandwidth / (weights + kv)}


def benchmark(sizes: dict, work: Path, *, device: str, dtype: torch.dtype = torch.bfloat16, frames: int = 16,
              g: int = 8, gs: int = 4, new_tokens: int = 768, steps: int = 2, warmup: int = 1, grad_accum: int = 1,
              checkpointing: bool = True, bandwidth_tbs: float) -> dict:
    """Phase times, decode throughput against the bandwidth bound, and peak memory of `steps` steps."""
    clip = write_clip(work / "clip.mp4", width=448, height=224, seconds=frames / 2, fps=24, gop=48)
    record = {"problem_id": 0, "problem": "Which colour appears first?", "data_type": "video",
              "problem_type": "multiple choice", "options": ["A. red", "B. green", "C. blue", "D. grey"],
              "solution": "<answer>A</answer>", "path": str(clip)}
    (work / "train.json").write_text(json.dumps([record]))
    config = rl_config(work, work / "train.json", "rl.algorithm=tgrpo", f"rl.num_generations={g}",
                       f"rl.num_shuffled={gs}", f"rl.max_new_tokens={new_tokens}", "rl.beta=0.04",
                       "optim.prompts_per_step=1", f"optim.grad_accum={grad_accum}",
                       f"run.max_steps={warmup + steps}", f"data.max_frames={frames}",
                       "model.dtype=bfloat16", f"model.gradient_checkpointing={str(checkpointing).lower()}")
    tokenizer = build_offline_tokenizer()
    model = build_model(sizes, tokenizer, device=device, dtype=dtype)
    processor = QwenVisionProcessor(video_min_pixels=VIDEO_PIXELS, video_max_pixels=VIDEO_PIXELS)
    adapter = QwenVLAdapter(model, tokenizer, processor, frames=FrameRule(max_frames=frames))
    run = FramethinkRun.from_adapter(config, adapter, load_records(work / "train.json"), work / "run")
    cuda = torch.device(device).type == "cuda"
    loaded = torch.cuda.memory_allocated() if cuda else 0

    times, peaks = [], []
    for i in range(warmup + steps):
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        times.append(run.step(i))
        peaks.append(torch.cuda.max_memory_allocated() if cuda else 0)
    times, peaks = times[warmup:], peaks[warmup:]

    template = config.data.template  # prefill alone: the same rows, one new token
    model.eval()  # the update left it in training mode (checkpointing on, no KV cache)
    prompts = [adapter.encode(run.records[0], template=template),
               adapter.encode(run.records[0], template=template, frame_order="shuffled", seed=1)]
    rows = [0] * g + [1] * gs
    prefill = []
    for _ in range(3):
        t0 = time.perf_counter()
        adapter.generate(prompts, rows, Decoding(max_new_tokens=1), generator=torch.Generator().manual_seed(0))
        prefill.append(time.perf_counter() - t0)
    prompt_len = prompts[0].inputs["input_ids"].shape[1]
    generate = stats([t.generate for t in times])["median"]
    tokens = stats([t.completion_tokens for t in times])["median"]
    decode_s = generate - stats(prefill)["median"]
    decode_tps = (tokens - len(rows)) / decode_s
    bound = decode_bound(model, rows=len(rows), context=prompt_len + new_tokens / 2, bandwidth=bandwidth_tbs * 1e12)
    return {
        "setting": {"frames": frames, "pixels_per_frame": VIDEO_PIXELS, "prompt_tokens": prompt_len, "G": g,
                    "G_shuffled": gs, "max_new_tokens": new_tokens, "dtype": str(dtype), "grad_accum": grad_accum,
                    "gradient_checkpointing": checkpointing, "device": torch.cuda.get_device_name() if cuda else device,
                    "bandwidth_tbs": bandwidth_tbs,
                    "parameters_b": sum(p.numel() for p in model.parameters()) / 1e9},
        "step_s": stats([t.total for t in times]),
        "phases_median_s": {"rollout": stats([t.rollout for t in times])["median"], "of_which_generate": generate,
                            "of_which_prefill": stats(prefill)["median"],
                            "reference_logprobs": stats([t.reference for t in times])["median"],
                            "update": stats([t.update for t in times])["median"]},
        "decode_tokens_per_s": decode_tps, "bandwidth_bound": bound,
        "fraction_of_bound": decode_tps / bound["tokens_per_s"],
        "completion_tokens_per_step": tokens,
        "memory_gib": {"models_and_state_loaded": loaded / 2**30, "step_peak": max(peaks) / 2**30},
    }


def card_bandwidth(name: str) -> float | None:
    return next((tbs for fragment, tbs in BANDWIDTH_TBS if fragment in name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=768)
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--no-checkpointing", action="store_true")
    parser.add_argument("--bandwidth-tbs", type=float, help="HBM bandwidth of the card (default: from its name)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device here; this benchmark needs a GPU (nothing was run, no numbers written)")
    name = torch.cuda.get_device_name()
    bandwidth = args.bandwidth_tbs or card_bandwidth(name)
    if bandwidth is None:
        sys.exit(f"bench_gpu: unknown bandwidth for {name!r}; pass --bandwidth-tbs")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        result = benchmark(CONFIGS[args.model], Path(tmp), device="cuda", steps=args.steps, new_tokens=args.new_tokens,
                           grad_accum=args.grad_accum, checkpointing=not args.no_checkpointing, bandwidth_tbs=bandwidth)
    print_result(f"Qwen2.5-VL-{args.model.upper()} T-GRPO step on {name}", result)


if __name__ == "__main__":
    main()
