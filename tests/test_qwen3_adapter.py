"""The Qwen3-VL / Qwen3.5 adapter's own behaviour: the timestamp text of the ordered clip under every frame order,
DeepStack features in every forward and through the frozen-tower cache, Qwen3.5's thinking opener, LoRA targets
(linear-attention projections included) and FSDP units, the MoE variants, and SFT, T-GRPO and evaluation on the tiny
checkpoints. What every family shares (the demo included) is tests/test_adapter_families.py."""
from __future__ import annotations

import copy
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer
from transformers import AutoConfig

from framethink.config import ModelConfig, load_config
from framethink.data.clips import FrameRule
from framethink.data.video import sample_frames
from framethink.engine import apply_lora
from framethink.eval.benchmarks import load_benchmark
from framethink.eval.predictions import read_predictions
from framethink.eval.runner import RunSettings, run_eval
from framethink.models import build_tiny, load_adapter
from framethink.models.adapter import Decoding
from framethink.models.qwen3_vl.adapter import QWEN3_MODEL_CLASSES
from framethink.models.qwen3_vl.inputs import VideoClip
from framethink.rl.trainer import train_rl
from framethink.sft.trainer import train_sft

pytest_plugins = ["fixtures_training"]
TEMPLATE = "video-r1"
SMALL = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, vision_intermediate_size=128)
ARCHS = {"qwen3-vl": SMALL, "qwen3.5": {**SMALL, "full_attention_interval": 2}}
TRAIN = ("optim.lr=0.001", "optim.weight_decay=0.0", "optim.prompts_per_step=2", "run.save_every=0",
         "run.sample_every=0", "run.report_to=[none]", "data.frame_rule=qwen3", "data.max_frames=16")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    return {arch: build_tiny(arch, tmp_path_factory.mktemp(arch), seed=0, **sizes) for arch, sizes in ARCHS.items()}


def test_the_prompt_carries_the_ordered_clips_times_under_every_frame_order(checkpoints, synth_records):
    adapter = load_adapter(checkpoints["qwen3-vl"])
    record = synth_records[0]
    sampled = sample_frames(record.media[0], rule="qwen3", fps=2.0, min_frames=4, max_frames=768)
    times = sampled.timestamps  # [T] seconds: frame index / the video's fps
    patch_times = [(times[i] + times[i + 1]) / 2 for i in range(0, len(times), 2)]
    ordered = adapter.encode(record, template=TEMPLATE)
    text = adapter.tokenizer.decode(ordered.inputs["input_ids"][0])
    assert re.findall(r"<(\d+\.\d) seconds><\|vision_start\|>", text) == [f"{t:.1f}" for t in patch_times]
    for order in ("shuffled", "reversed"):
        permuted = adapter.encode(record, template=TEMPLATE, frame_order=order, seed=3)
        frames = sampled.frames[permuted.meta["permutation"]] if order == "shuffled" else sampled.frames[::-1].copy()
        expected = adapter.processor.process_video(VideoClip(frames=frames, timestamps=times))  # the ordered times
        assert torch.equal(permuted.inputs["pixel_values_videos"], expected.pixel_values)
        assert torch.equal(permuted.inputs["input_ids"], ordered.inputs["input_ids"])
        assert permuted.meta["timestamps"] == times.tolist()


def test_qwen3_5_prompt_leaves_the_thinking_opener_to_the_completion(checkpoints, synth_records):
    adapter = load_adapter(checkpoints["qwen3.5"])
    text = adapter.tokenizer.decode(adapter.encode(synth_records[0], template=TEMPLATE).inputs["input_ids"][0])
    assert text.endswith("<|im_start|>assistant\n")
    rendered = adapter.tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                                     add_generation_prompt=True)
    assert rendered.endswith("<|im_start|>assistant\n<think>\n")  # what the released template writes


@torch.no_grad()
def test_deepstack_features_reach_every_forward_and_survive_frozen_tower_reuse(checkpoints, synth_records):
    adapter = load_adapter(checkpoints["qwen3-vl"])
    visual = adapter.model.model.visual
    assert len(visual.deepstack_merger_list) == 2
    prompts = [adapter.encode(r, template=TEMPLATE) for r in synth_records]
    rows = [0, 0, 1]
    tokens = torch.tensor(adapter.tokenizer("<think>red</think><answer>A</answer>")["input_ids"]).expand(3, -1)
    packed = adapter.pack(adapter.model, prompts, rows)
    video_tokens = int((packed.visual_pos_masks).sum())
    assert video_tokens == sum(int((prompts[i].inputs["mm_token_type_ids"] == 2).sum()) for i in rows)
    assert [d.shape for d in packed.deepstack_visual_embeds] == [(video_tokens, 64)] * 2

    # the tower is frozen: the second forward and the reference's reuse the first one's tower output (DeepStack
    # hidden states included) and give exactly what a full encoder run gives
    visual.requires_grad_(False)
    plain = load_adapter(checkpoints["qwen3-vl"])
    plain.tower_cache.size = 0
    calls = adapter.vision_encoder_calls
    base = adapter.completion_logprobs(prompts, rows, tokens)
    reference = copy.deepcopy(adapter.model)
    for model in (adapter.model, reference):
        assert torch.equal(adapter.completion_logprobs(prompts, rows, tokens, model=model), base)
    assert adapter.vision_encoder_calls == calls + 1 and len(adapter.tower_cache) == 2
    torch.testing.assert_close(plain.completion_logprobs(prompts, rows, tokens), base, rtol=1e-5, atol=1e-6)
    whole = adapter._completion_logprobs_per_row(adapter.model, prompts, rows, tokens)
    torch.testing.assert_close(whole, base, rtol=1e-5, atol=1e-5)

    # each DeepStack merger runs again in every forward (it may train): changing one changes the log-probs, on the
    # shared path, the per-row path and the reference model's reuse alike
    reference.model.visual.deepstack_merger_list[0].linear_fc2.weight.mul_(3.0)  # added after LM layer 0
    assert (adapter.completion_logprobs(prompts, rows, tokens, model=reference) - base).abs().max() > 1e-5
    visual.deepstack_merger_list[0].linear_fc2.weight.mul_(3.0)
    changed = adapter.completion_logprobs(prompts, rows, tokens)
    assert (changed - base).abs().max() > 1e-5 and adapter.vision_encoder_calls == calls + 1
    torch.testing.assert_close(adapter._completion_logprobs_per_row(adapter.model, prompts, rows, tokens), changed,
                               rtol=1e-5, atol=1e-5)


def test_qwen3_5_has_no_deepstack_and_a_hybrid_cache(checkpoints, synth_records):
    adapter = load_adapter(checkpoints["qwen3.5"])
    prompts = [adapter.encode(r, template=TEMPLATE) for r in synth_records]
    assert adapter.pack(adapter.model, prompts, [0, 1]).deepstack_visual_embeds is None
    cache = adapter._new_cache(adapter.model)
    kinds = [type(layer).__name__ for layer in cache.layers]
    assert adapter.model.config.text_config.layer_types == ["linear_attention", "full_attention"]
    assert "LinearAttention" in kinds[0] and "LinearAttention" not in kinds[1]


@torch.no_grad()
@pytest.mark.parametrize("arch", list(ARCHS))
def test_left_padding_changes_nothing(checkpoints, synth_records, mixed_records, arch):
    """A prompt padded on the left in a batch (video, image and text prompts of different lengths) gets the log-probs
    it gets alone: full attention masks the padding, and Qwen3.5's linear-attention layers see zeros there."""
    adapter = load_adapter(checkpoints[arch])
    prompts = [adapter.encode(r, template=TEMPLATE) for r in [*synth_records, *mixed_records]]
    assert len({p.inputs["input_ids"].shape[1] for p in prompts}) > 2
    tokens = torch.tensor(adapter.tokenizer("<think>red</think><answer>A</answer>")["input_ids"])
    rows = list(range(len(prompts)))
    batched = adapter.completion_logprobs(prompts, rows, tokens.expand(len(rows), -1))
    for i, prompt in enumerate(prompts):
        alone = adapter.completion_logprobs([prompt], [0], tokens[None])
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch, expected", [
    ("qwen3-vl", {"q_proj", "k_proj", "v_proj", "o_proj"}),
    ("qwen3.5", {"in_proj_qkv", "in_proj_z", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj"}),
])
def test_lora_targets_and_fsdp_units(checkpoints, arch, expected):
    adapter = load_adapter(checkpoints[arch])
    model = adapter.model
    units = adapter.fsdp_units()
    assert all(any(layer is u for u in units) for layer in model.model.language_model.layers)  # linear and full
    assert all(any(block is u for u in units) for block in model.model.visual.blocks)
    assert any(u is model.model.visual.merger for u in units) and units[-1] is model.model.visual
    apply_lora(model, ModelConfig(), seed=0)
    adapted = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
    assert all(name.startswith("model.language_model.layers.") for name in adapted)
    assert {name.rsplit(".", 1)[1] for name in adapted} == expected


def _moe_checkpoint(dense: Path, out: Path, model_type: str) -> Path:
    """A tiny MoE checkpoint of the dense tiny one's sizes: 4 experts, 2 per token (tokenizer and processor copied)."""
    config = json.loads((dense / "config.json").read_text())
    text = {**config["text_config"], "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32}
    if model_type == "qwen3_5_moe":
        text["shared_expert_intermediate_size"] = 32
    cls = QWEN3_MODEL_CLASSES[model_type]
    moe_config = AutoConfig.for_model(model_type, text_config=text, vision_config=config["vision_config"],
                                      **{k: config[k] for k in ("image_token_id", "video_token_id",
                                                                "vision_start_token_id", "vision_end_token_id")})
    torch.manual_seed(0)
    cls(moe_config).save_pretrained(out)
    for file in dense.iterdir():
        if file.name not in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(file, out / file.name)
    return out


@pytest.mark.parametrize("dense, model_type", [("qwen3-vl", "qwen3_vl_moe"), ("qwen3.5", "qwen3_5_moe")])
def test_moe_variants_load_and_train(checkpoints, synth_dir, tmp_path, dense, model_type):
    path = _moe_checkpoint(checkpoints[dense], tmp_path / model_type, model_type)
    adapter = load_adapter(path)
    assert type(adapter.model) is QWEN3_MODEL_CLASSES[model_type]
    train = synth_dir / "train.json"
    config = load_config(None, [f"model.path={path}", f"data.train_file={train}", f"run.out={tmp_path / 'rl'}",
                                "rl.num_generations=2", "rl.num_shuffled=2", "rl.max_new_tokens=4",
                                "run.max_steps=1", "rl.advantage_noise=0.1", *TRAIN])
    final = train_rl(config, quiet=True)
    before, after = adapter.model.state_dict(), load_adapter(final).model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if "experts" in k)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_sft_then_tgrpo_then_evaluation(checkpoints, tmp_path, arch):
    """The tiny checkpoint of each new family through the whole method: an SFT cold start, T-GRPO from its output
    (vision frozen, as the recipes), and evaluation in every frame order."""
    from framethink.data.synth import write_synthetic_dataset

    data = tmp_path / "synth"
    write_synthetic_dataset(data, n_train=1, n_test=1, seed=0, num_frames=4, size=64, tasks=["color_first", "color"])
    train = data / "train.json"
    base = [f"data.train_file={train}", f"sft.train_file={train}", *TRAIN]
    sft = train_sft(load_config(None, [f"model.path={checkpoints[arch]}", f"run.out={tmp_path / 'sft'}",
                                       "run.max_steps=2", *base]), quiet=True)
    rl = train_rl(load_config(None, [f"model.path={sft}", f"run.out={tmp_path / 'rl'}", "run.max_steps=1",
                                     "rl.algorithm=tgrpo", "rl.num_generations=2", "rl.num_shuffled=2",
                                     "rl.max_new_tokens=4", "rl.advantage_noise=0.1", *base]), quiet=True)
    weights = [load_adapter(p).model.state_dict() for p in (checkpoints[arch], sft, rl)]
    for before, after in zip(weights, weights[1:]):
        assert any(not torch.equal(before[k], after[k]) for k in before if "language_model" in k)
    adapter = load_adapter(rl)
    assert adapter.frames.rule == "qwen3" and adapter.frames.max_frames == 16  # framethink.json travels
    bench = load_benchmark(str(data / "test.json"), None)
    decoding = Decoding(max_new_tokens=4, temperature=0.0, do_sample=False)
    for order in ("ordered", "shuffled", "reversed"):
        settings = RunSettings(model=str(rl), frames=None, max_pixels=None, mode="reason", template=TEMPLATE,
                               frame_order=order, decoding=decoding)
        lines = read_predictions(run_eval(adapter, [bench], tmp_path / order, settings, batch_size=2)).lines
        assert sorted(p["id"] for p in lines) == sorted(r.id for r in bench.records)


@pytest.mark.parametrize("name, model", [("qwen3-vl-video-r1.yaml", "runs/qwen3-vl-sft/final"),
                                         ("qwen3.5-video-r1.yaml", "runs/qwen3.5-sft/final")])
def test_recipes_are_video_r1_with_the_familys_visual_settings(name, model):
    recipes = Path(__file__).parents[1] / "recipes"
    assert (recipes / name).resolve() == (recipes.resolve() / name)  # recipes/ is the package's recipe folder
    video_r1, recipe = load_config(recipes / "video-r1.yaml"), load_config(recipes / name)
    assert (recipe.rl, recipe.optim, recipe.eval, recipe.sft) == (video_r1.rl, video_r1.optim, video_r1.eval,
                                                                   video_r1.sft)
    visual = {"frame_rule": "qwen3", "video_max_pixels": 16 * 128 * 32 * 32, "image_max_pixels": 256 * 32 * 32,
              "image_min_pixels": 4 * 32 * 32}
    assert {key: getattr(recipe.data, key) for key in visual} == visual
    assert replace(recipe.data, **{key: getattr(video_r1.data, key) for key in visual}) == video_r1.data
    assert replace(recipe.model, path=video_r1.model.path) == video_r1.model and recipe.model.path == model
    assert replace(recipe.run, out=video_r1.run.out) == video_r1.run


@pytest.mark.parametrize("arch", list(ARCHS))
def test_fsdp_trains_like_data_parallel(checkpoints, recipe, tmp_path, arch):
    """FSDP2 over the adapter's units (linear- and full-attention layers, vision blocks, the merger and DeepStack
    mergers) on two CPU processes ends at the weights of the data-parallel run (Qwen3.5's tied embedding whole)."""
    from test_fsdp import STEPS, _assert_same_weights, _train

    steps = (f"model.path={checkpoints[arch]}", "data.frame_rule=qwen3", "data.max_frames=16", *STEPS)
    ddp = _train(recipe(*steps, run="ddp"), tmp_path, "ddp", False)
    fsdp = _train(recipe(*steps, run="fsdp"), tmp_path, "fsdp", True)
    _assert_same_weights(ddp, fsdp, checkpoints[arch], "model.language_model.layers.0.mlp.up_proj.weight")


def test_the_checkpoints_video_processor_sets_the_default_frame_rule(checkpoints, tmp_path, synth_records):
    """Without framethink.json a checkpoint samples frames by its own video processor's settings, as transformers'
    Qwen3VLVideoProcessor does; a recipe's or the caller's frame rule wins."""
    path = tmp_path / "ckpt"
    shutil.copytree(checkpoints["qwen3-vl"], path)
    config = json.loads((path / "video_preprocessor_config.json").read_text())
    assert (config["fps"], config["min_frames"], config["max_frames"]) == (2.0, 4, 768)
    assert load_adapter(path).frames == FrameRule(rule="qwen3", fps=2.0, min_frames=4, max_frames=768)
    (path / "video_preprocessor_config.json").write_text(json.dumps({**config, "fps": 1.0, "max_frames": 6}))
    adapter = load_adapter(path)
    assert adapter.frames == FrameRule(rule="qwen3", fps=1.0, min_frames=4, max_frames=6)
    assert adapter.encode(synth_records[0], template=TEMPLATE).meta["num_frames"] == 4  # a 2 s clip at 1 fps: min 4
    assert load_adapter(path, num_frames=2).frames.max_frames == 2
