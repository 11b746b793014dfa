"""Smoke tests of the benchmark scripts: each core function runs on a minimal setting and reports what it counted.

No timing is asserted. The counts are hand-computed from the designs (per step, B prompts, G + G~ rows):
framethink calls the vision encoder once (the rollout; its frozen tower's output serves the reference and policy
forwards), 3 times with that reuse turned off, the reference design G + G~ + 2 times. The adapters with prefix
sharing or frozen-tower reuse turned off must give framethink's numbers.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import benchmarks.common as common
import framethink.rl.step as step_module
import framethink.rl.trainer as trainer
from benchmarks import bench_decode, bench_fastpaths, bench_gpu, bench_memory, bench_reference, bench_trl
from benchmarks.common import FramethinkRun, PerRowAdapter, convert, rl_config, write_video_records
from fixtures_models import SMALL_SIZES
from framethink.models.adapter import Decoding
from framethink.models.tiny import build_tiny

TINY_GPU_SIZES = {  # bench_gpu's layout, at SMALL_SIZES
    "text_config": {"vocab_size": 832, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                    "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
                    "tie_word_embeddings": True,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]}},
    "vision_config": {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
                      "fullatt_block_indexes": [1], "tokens_per_second": 2, "window_size": 112},
    "tie_word_embeddings": True,
}


def test_trl_benchmark_counts_vision_encodings(tmp_path: Path) -> None:
    result = bench_trl.run(tmp_path, prompts=1, g=2, new_tokens=2, image_size=56, steps=1, warmup=0, sizes=SMALL_SIZES)
    assert result["framethink"]["vision_calls_per_step"] == 1
    assert result["framethink"]["clips_encoded_per_step"] == 1  # one image, in the rollout: the tower is frozen
    assert result["trl"]["vision_calls_per_step"] == 3
    assert result["trl"]["clips_encoded_per_step"] == 6  # one copy of the image per completion
    assert result["framethink"]["mean_completion_length"] <= 2


@pytest.mark.parametrize("arch, sizes", [
    ("qwen2.5-vl", SMALL_SIZES),
    ("qwen3-vl", dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, vision_intermediate_size=128)),
])
def test_reference_benchmark_counts_vision_encodings(tmp_path: Path, arch: str, sizes: dict) -> None:
    result = bench_reference.run(tmp_path, prompts=1, g=2, gs=1, new_tokens=2, frames=4, size=56, steps=1, warmup=0,
                                 sizes=sizes, arch=arch)
    ref, ours, no_reuse = result["reference"], result["framethink"], result["framethink, no tower reuse"]
    assert (ref["vision_calls_per_step"], ref["clips_encoded_per_step"]) == (2 + 1 + 2, 2 + 1 + 2 * 2)
    assert (no_reuse["vision_calls_per_step"], no_reuse["clips_encoded_per_step"]) == (3, 2 + 1 + 1)
    assert (ours["vision_calls_per_step"], ours["clips_encoded_per_step"]) == (1, 2)
    assert ref["rows_per_step"] == ours["rows_per_step"] == no_reuse["rows_per_step"] == 3


def test_reference_design_feeds_qwen3_vl_what_framethink_does(tmp_path: Path) -> None:
    """The reference design's full-sequence forward on the processor's batched outputs (mm_token_type_ids, the
    timestamp text, one grid per clip, no second_per_grid_ts; pixels repeated per row) gives framethink's log-probs.
    (On Qwen2.5-VL the two differ by transformers' position rule, docs/inputs.md#positions.)"""
    visual, _ = bench_reference.ARCHS["qwen3-vl"]
    sizes = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, vision_intermediate_size=128)
    model_dir = build_tiny("qwen3-vl", tmp_path / "model", seed=0, **sizes)
    train_file = write_video_records(tmp_path / "clips", 2, num_frames=6, size=64)
    run = FramethinkRun.build(rl_config(model_dir, train_file, "data.max_frames=6", *visual(6, 64)))
    design, adapter = bench_reference.ReferenceDesign(run), run.adapter
    prompts = [design.encoder.encode(r, template=run.config.data.template) for r in run.records]
    assert "second_per_grid_ts" not in prompts[0].inputs and prompts[0].inputs["video_grid_thw"].tolist() == [[3, 4, 4]]
    rows = [0, 0, 0, 1, 1, 1]
    done = adapter.generate(prompts, rows, Decoding(max_new_tokens=4), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = design.logprobs(adapter.model, bench_reference.collate(prompts, adapter.pad_id, repeats=3), done)
    ours = adapter.completion_logprobs(prompts, rows, done.tokens)
    mask = done.mask.bool()
    torch.testing.assert_close(theirs[mask], ours[mask], rtol=1e-5, atol=1e-5)


def test_decode_benchmark_matches_decord(tmp_path: Path) -> None:
    result = bench_decode.run(tmp_path, clips=((3, 64),), frame_counts=(4,), repeats=1)
    (row,) = result["rows"]
    assert row["frames"] == 4
    assert row["max_pixel_difference"] == {"decord": 0}


def test_memory_benchmark_measures_one_step(tmp_path: Path, tiny_qwen25_vl_dir: Path) -> None:
    train_file = write_video_records(tmp_path / "clips", 1, num_frames=4, size=56)
    out = bench_memory.measure_in_fresh_process("reference", tiny_qwen25_vl_dir, train_file, frames=4, size=56,
                                                prompts=1, g=2, gs=1, new_tokens=2)
    assert out["rows"] == 3 and out["frames"] == 4
    assert out["step_peak_mib"] > 0


def test_fastpaths_benchmark_shares_vision(tmp_path: Path) -> None:
    result = bench_fastpaths.run(tmp_path, prompts=1, g=2, gs=1, new_tokens=2, frames=4, size=56, repeats=1,
                                 sizes=SMALL_SIZES)
    assert result["clips_encoded"] == {"generate, shared": 2, "generate, per row": 3,
                                       "reference forward, tower reused": 0, "reference forward, no reuse": 1}
    assert result["prefix_sharing_samples_the_same_tokens"]
    assert len(result["results"]) == 10


def test_gpu_benchmark_runs_on_cpu_and_computes_the_bound(tmp_path: Path) -> None:
    result = bench_gpu.benchmark(TINY_GPU_SIZES, tmp_path, device="cpu", frames=4, g=2, gs=1, new_tokens=3, steps=1,
                                 warmup=0, bandwidth_tbs=1.0)
    assert result["setting"]["prompt_tokens"] > 2 * 128  # 2 tubelets of 448x224 frames: 128 merged tokens each
    assert result["completion_tokens_per_step"] <= 3 * 3
    tokenizer = bench_gpu.build_offline_tokenizer()
    model = bench_gpu.build_model(TINY_GPU_SIZES, tokenizer, device="cpu", dtype=torch.bfloat16)
    bound = bench_gpu.decode_bound(model, rows=3, context=100, bandwidth=1e12)
    lm_bytes = 2 * sum(p.numel() for p in model.model.language_model.parameters())  # tied head = the embedding
    kv_bytes = 3 * 2 * 2 * 2 * 16 * 2 * 100  # rows * layers * (k, v) * kv heads * head dim * bf16 bytes * context
    assert bound["weight_gb"] == pytest.approx(lm_bytes / 1e9)
    assert bound["kv_gb_at_mean_context"] == pytest.approx(kv_bytes / 1e9)
    assert bound["tokens_per_s"] == pytest.approx(3 * 1e12 / (lm_bytes + kv_bytes))
    assert bench_gpu.card_bandwidth("NVIDIA H100 80GB HBM3") == 3.35
    assert bench_gpu.card_bandwidth("NVIDIA H200") == 4.8


def test_per_row_and_no_reuse_adapters_give_framethinks_numbers(tmp_path: Path, tiny_qwen25_vl_dir: Path) -> None:
    train_file = write_video_records(tmp_path / "clips", 2, num_frames=4, size=56)
    run = FramethinkRun.build(rl_config(tiny_qwen25_vl_dir, train_file))
    adapter, template = run.adapter, run.config.data.template
    prompts = [adapter.encode(r, template=template) for r in run.records]
    prompts.append(adapter.encode(run.records[1], template=template, frame_order="shuffled", seed=1))
    rows = [0, 0, 1, 1, 1, 2]
    done = adapter.generate(prompts, rows, Decoding(max_new_tokens=4), generator=torch.Generator().manual_seed(0))
    expected = adapter.completion_logprobs(prompts, rows, done.tokens)
    assert adapter.vision_encoder_calls == 1  # the tower is frozen: the log-probs reused the rollout's output
    for other in (convert(adapter, PerRowAdapter), convert(adapter, type(adapter), tower_reuse=False)):
        again = other.generate(prompts, rows, Decoding(max_new_tokens=4), generator=torch.Generator().manual_seed(0))
        assert torch.equal(again.tokens, done.tokens)
        for _ in range(2):
            torch.testing.assert_close(other.completion_logprobs(prompts, rows, done.tokens), expected,
                                       rtol=1e-5, atol=1e-5)
        # the count goes on from the adapter's 1: its generate, then the two log-prob forwards unless reused
        assert other.vision_encoder_calls == 1 + (1 if other.tower_cache.size else 3)
    shapes: list[tuple[int, int]] = []  # (rows, columns) of each language-model forward
    hook = adapter.model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    convert(adapter, PerRowAdapter).completion_logprobs(prompts, rows, done.tokens)
    adapter.completion_logprobs(prompts, rows, done.tokens)
    hook.remove()
    lp, t = max(p.inputs["input_ids"].shape[1] for p in prompts), done.tokens.shape[1]
    assert shapes == [(6, lp + t), (3, lp), (6, t - 1)]  # per row: whole rows; framethink: 3 prompts, then tokens



def test_rl_gain_pairs_items_for_mcnemar():
    from benchmarks.rl_gain import mcnemar_z, paired_change

    before = {"a": True, "b": False, "c": False, "d": True, "e": False}
    after = {"a": True, "b": True, "c": True, "d": False, "e": False}
    assert paired_change(before, after) == {"gained": 2, "lost": 1, "z": pytest.approx(1 / 3**0.5)}
    assert mcnemar_z(41, 25) == pytest.approx(16 / 66**0.5)
    assert mcnemar_z(0, 0) == 0.0


def test_trainer_and_benchmarks_step_through_the_same_function(tmp_path: Path, tiny_qwen25_vl_dir: Path,
                                                              monkeypatch) -> None:
    assert trainer.rl_step is common.rl_step is step_module.rl_step  # one step function, imported by both
    calls: list[tuple[str, int]] = []

    def spy(where):
        def record(run, batch, step):
            calls.append((where, step))
            return step_module.rl_step(run, batch, step)
        return record

    monkeypatch.setattr(trainer, "rl_step", spy("trainer"))
    monkeypatch.setattr(common, "rl_step", spy("benchmark"))
    train_file = write_video_records(tmp_path / "clips", 2, num_frames=4, size=56)
    config = rl_config(tiny_qwen25_vl_dir, train_file, "rl.num_generations=2", "rl.num_shuffled=1",
                       "rl.max_new_tokens=2", "optim.prompts_per_step=1", "run.max_steps=1")
    times = FramethinkRun.build(config).step(0)
    trainer.train_rl(config, quiet=True)
    assert calls == [("benchmark", 0), ("trainer", 0)]
    assert times.rows == 3 and times.update > 0
