"""The fast paths of the Qwen-VL adapter, each measured against the same adapter with it turned off.

On one T-GRPO batch (video prompts, G ordered + G~ shuffled rows each), with the same sampling seed on both
sides so that both sample the same tokens. Every comparison but the last runs with frozen-tower reuse off on both
sides (its repeated calls would otherwise skip the tower on both), so that only the named fast path differs:
  prefix sharing           each prompt through the LM once, KV cache gathered to its rows (framethink), against
                           every row carrying its whole prompt (`PerRowAdapter`): generate, reference forward,
                           policy forward + backward
  vision once per prompt   each prompt's rows sharing its vision features, against every row carrying its own
                           copy of the prompt (the encoder runs per row); both sides run the prompt per row in the
                           LM (`PerRowAdapter`), so that only the vision work differs
  one batched generate     ordered and shuffled rows in one call, against one call for each
  frame cache              `encode` of a clip seen before (LRU hit), against decoding it again
  inverse-CDF draw         the sampling draw, against torch.multinomial on the CPU probabilities, for one token of
                           G + G~ rows over a real vocabulary (the tiny model's vocabulary hides this cost)
  frozen-tower reuse       the frozen vision tower's output kept from the rollout, only the merger re-run
                           (framethink's default), against the whole encoder per forward: reference forward,
                           policy forward + backward

    .venv/bin/python -m benchmarks.bench_fastpaths [--repeats N]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import torch

from benchmarks.common import (
    CLOCK_NOTE, FramethinkRun, PerRowAdapter, convert, count_vision_calls, limit_threads, print_result, rl_config,
    stats, timed, write_video_records,
)
from framethink.models.adapter import Decoding
from framethink.models.qwen_vl.adapter import QwenVLAdapter
from framethink.models.sampling import draw_inverse_cdf
from framethink.models.tiny import build_tiny

REAL_VOCAB = 152_064  # Qwen2.5-VL-7B's embedding rows


def compare(fast, slow, *, repeats: int) -> dict:
    """CPU seconds (min/median/max) of `fast` and `slow`, repeats interleaved, and the median ratio. The order
    alternates between rounds: a call runs measurably slower after one that left the heap in another shape."""
    fast_t, slow_t = [], []
    for k in range(repeats + 1):  # the first round warms up
        for fn, out in ((slow, slow_t), (fast, fast_t))[:: 1 if k % 2 else -1]:
            out += timed(fn, repeats=1, warmup=0)
    fast_s, slow_s = stats([c for _, c in fast_t[1:]]), stats([c for _, c in slow_t[1:]])
    return {"fast_cpu_s": fast_s, "slow_cpu_s": slow_s, "gain": slow_s["median"] / fast_s["median"]}


def vision_clips(fn, *models: torch.nn.Module) -> int:
    """Images or clips the models' vision encoders encoded during `fn()`."""
    with count_vision_calls(*models) as calls:
        fn()
    return calls[1]


def run(work: Path, *, prompts: int = 2, g: int = 8, gs: int = 4, new_tokens: int = 64, frames: int = 16,
        size: int = 112, repeats: int = 6, sizes: dict | None = None) -> dict:
    """Every comparison of the module docstring on one batch; CPU seconds and gains."""
    model_dir = build_tiny("qwen2.5-vl", work / "model", seed=0, **(sizes or {}))
    train_file = write_video_records(work / "clips", prompts, num_frames=frames, size=size)
    config = rl_config(model_dir, train_file, "rl.algorithm=tgrpo", f"data.max_frames={frames}",
                       f"data.video_max_pixels={size * size}")
    run = FramethinkRun.build(config)  # the tower frozen (freeze_vision), as in every recipe
    adapter, template = run.adapter, config.data.template
    ordered = [adapter.encode(r, template=template) for r in run.records]
    shuffled = [adapter.encode(r, template=template, frame_order="shuffled", seed=i) for i, r in enumerate(run.records)]
    both = ordered + shuffled
    rows = [i for i in range(prompts) for _ in range(g)] + [prompts + i for i in range(prompts) for _ in range(gs)]
    per_row = [both[i] for i in rows]  # every row its own copy of its prompt
    decoding = Decoding(max_new_tokens=new_tokens, temperature=1.0, top_p=1.0)

    def gen(a: QwenVLAdapter, ps, rs):
        return lambda: a.generate(ps, rs, decoding, generator=torch.Generator().manual_seed(0))

    n = prompts * g  # ordered rows
    ordered_rows, shuffled_rows, singles = rows[:n], [r - prompts for r in rows[n:]], list(range(len(rows)))
    plain = convert(adapter, QwenVLAdapter, tower_reuse=False)  # framethink without frozen-tower reuse
    per_row_lm = convert(adapter, PerRowAdapter, tower_reuse=False)
    tokens = gen(plain, both, rows)().tokens[:n]  # the ordered rows' completions, for the forwards

    def logprobs(a: QwenVLAdapter, ps, rs, *, model=None):
        def fn():
            with torch.no_grad():
                return a.completion_logprobs(ps, rs, tokens, model=model)
        return fn

    def policy_backward(a: QwenVLAdapter):
        def fn():
            a.completion_logprobs(ordered, ordered_rows, tokens).mean().backward()
            a.model.zero_grad(set_to_none=True)
        return fn

    def encode(a: QwenVLAdapter):
        return lambda: a.encode(run.records[0], template=template)

    gen(adapter, both, rows)()  # the rollout keeps the frozen tower's output of the step's prompts
    uncached = QwenVLAdapter(adapter.model, adapter.tokenizer, adapter.processor, frames=adapter.frames,
                             frame_cache_size=0)
    probs = torch.rand(g + gs, REAL_VOCAB, generator=torch.Generator().manual_seed(0)).softmax(-1)  # [G+G~, V]
    pairs = {  # name: (fast, slow)
        "prefix sharing: generate": (gen(plain, both, rows), gen(per_row_lm, both, rows)),
        "prefix sharing: reference forward": (logprobs(plain, ordered, ordered_rows),
                                              logprobs(per_row_lm, ordered, ordered_rows)),
        "prefix sharing: policy forward + backward": (policy_backward(plain), policy_backward(per_row_lm)),
        "vision once per prompt: generate": (gen(per_row_lm, both, rows), gen(per_row_lm, per_row, singles)),
        "vision once per prompt: reference forward": (logprobs(per_row_lm, ordered, ordered_rows),
                                                      logprobs(per_row_lm, per_row[:n], singles[:n])),
        "one batched generate (ordered + shuffled)": (
            gen(plain, both, rows),
            lambda: (gen(plain, ordered, ordered_rows)(), gen(plain, shuffled, shuffled_rows)())),
        "frame cache: encode": (encode(adapter), encode(uncached)),
        "inverse-CDF draw: one token, 152,064-token vocabulary": (
            lambda: draw_inverse_cdf(probs, torch.Generator().manual_seed(0)),
            lambda: torch.multinomial(probs.cpu(), 1, generator=torch.Generator().manual_seed(0))),
        "frozen-tower reuse: reference forward": (logprobs(adapter, ordered, ordered_rows, model=run.ref_model),
                                                  logprobs(plain, ordered, ordered_rows, model=run.ref_model)),
        "frozen-tower reuse: policy forward + backward": (policy_backward(adapter), policy_backward(plain)),
    }
    results = {name: compare(fast, slow, repeats=repeats) for name, (fast, slow) in pairs.items()}
    # float rounding differs between the two LM paths; a token drawn differently would change the work compared
    same_tokens = torch.equal(gen(plain, both, rows)().tokens, gen(per_row_lm, both, rows)().tokens)
    models = (adapter.model, run.ref_model)
    clips = {"generate, shared": vision_clips(gen(per_row_lm, both, rows), *models),
             "generate, per row": vision_clips(gen(per_row_lm, per_row, singles), *models),
             "reference forward, tower reused": vision_clips(
                 logprobs(adapter, ordered, ordered_rows, model=run.ref_model), *models),
             "reference forward, no reuse": vision_clips(
                 logprobs(plain, ordered, ordered_rows, model=run.ref_model), *models)}
    return {"setting": {"prompts": prompts, "G": g, "G_shuffled": gs, "max_new_tokens": new_tokens, "frames": frames,
                        "frame": f"{size}x{size}", "prompt_tokens": ordered[0].inputs["input_ids"].shape[1],
                        "threads": torch.get_num_threads(), "clock": CLOCK_NOTE},
            "clips_encoded": clips, "prefix_sharing_samples_the_same_tokens": same_tokens, "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    limit_threads(1)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), repeats=args.repeats)
    print_result("adapter fast paths, each against itself turned off", result)
    for name, r in result["results"].items():
        print(f"{name:>52}: {r['slow_cpu_s']['median'] * 1e3:8.1f} -> {r['fast_cpu_s']['median'] * 1e3:8.1f} ms "
              f"CPU ({r['gain']:.2f}x)")


if __name__ == "__main__":
    main()
