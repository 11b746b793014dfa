"""Tiny offline checkpoints, the offline tokenizer and the loader."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from fixtures_models import SMALL_SIZES
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from framethink.errors import ConfigError
from framethink.models.qwen_vl.loader import load_qwen_vl
from framethink.models.qwen_vl.inputs import build_qwen_inputs
from framethink.models.qwen_vl.tiny import mrope_section
from framethink.models.tiny import build_tiny
from framethink.models.tokenizer import QWEN_SPECIAL_TOKENS, REASONING_TAGS, build_offline_tokenizer

ARCH_CLASSES = {"qwen2.5-vl": "Qwen2_5_VLForConditionalGeneration", "qwen2-vl": "Qwen2VLForConditionalGeneration"}
VIDEO_R1_PROMPT = (
    "What colour is the square?\nPlease think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I see', "
    "'let's break it down', etc, or other natural language thought expressions It's encouraged to include "
    "self-reflection or verification in the reasoning process. Provide your detailed reasoning between the "
    "<think> </think> tags, and then give your final answer between the <answer> </answer> tags. Please provide "
    "only the single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags."
)


def test_tokenizer_specials_and_round_trip(tmp_path, offline_tokenizer):
    tok = offline_tokenizer
    assert len(tok) == 768 + len(QWEN_SPECIAL_TOKENS) + len(REASONING_TAGS)
    # Qwen's special tokens follow the BPE vocabulary, in Qwen's order
    assert tok.convert_tokens_to_ids(list(QWEN_SPECIAL_TOKENS)) == list(range(768, 768 + 14))
    assert (tok.eos_token, tok.pad_token, tok.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert tok("Hello").input_ids == tok("Hello", add_special_tokens=False).input_ids  # no BOS, like Qwen

    text = "<think>Hmm, the café sign says 3.14 ✓</think>\n<answer>B</answer><|im_end|>"
    ids = tok(text).input_ids
    assert tok.decode(ids) == text
    # tags are single ordinary tokens: kept when special tokens are skipped
    assert tok.decode(ids, skip_special_tokens=True) == text.removesuffix("<|im_end|>")
    assert [tok.convert_tokens_to_ids(tag) for tag in REASONING_TAGS] == list(range(782, 786))
    assert len(tok(VIDEO_R1_PROMPT).input_ids) < len(VIDEO_R1_PROMPT) // 3  # the prompt vocabulary is compact

    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == tok.get_vocab()
    assert reloaded(text).input_ids == ids
    assert reloaded.chat_template == tok.chat_template
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (770, 768)


def test_tokenizer_is_deterministic_and_checks_corpus(offline_tokenizer):
    assert build_offline_tokenizer().get_vocab() == offline_tokenizer.get_vocab()
    small = build_offline_tokenizer(["red blue green"] * 4, vocab_size=260)
    assert len(small) == 260 + 18
    with pytest.raises(ConfigError, match="vocab_size=768"):
        build_offline_tokenizer(["red blue green"])


def test_chat_template_renders_qwen_format(offline_tokenizer):
    video_turn = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "Why?"}]}]
    assert offline_tokenizer.apply_chat_template(video_turn, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Why?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    sft = [
        {"role": "system", "content": "You are a helpful assistant"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q"}]},
        {"role": "assistant", "content": "<think>x</think>\n<answer>A</answer>"},
    ]
    assert offline_tokenizer.apply_chat_template(sft, tokenize=False) == (
        "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Q<|im_end|>\n"
        "<|im_start|>assistant\n<think>x</think>\n<answer>A</answer><|im_end|>\n"
    )


def test_mrope_section_adds_up_to_half_head_dim():
    assert mrope_section(128) == [16, 24, 24]  # Qwen2.5-VL-7B
    assert mrope_section(32) == [4, 6, 6]
    assert mrope_section(16) == [2, 3, 3]


@pytest.mark.parametrize("arch", ARCH_CLASSES)
def test_build_tiny_writes_a_real_checkpoint_layout(tmp_path, arch):
    out = build_tiny(arch, tmp_path / "ckpt")
    files = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
    } <= files
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == arch.replace(".", "_").replace("-", "_")
    assert config["architectures"] == [ARCH_CLASSES[arch]]
    text = config["text_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["intermediate_size"]) == (128, 4, 512)
    assert (text["num_attention_heads"], text["num_key_value_heads"]) == (4, 2)
    assert text["rope_parameters"]["mrope_section"] == [4, 6, 6]
    assert text["vocab_size"] == 832  # 786 tokens rounded up to a multiple of 64

    tok = AutoTokenizer.from_pretrained(out)
    assert config["video_token_id"] == tok.convert_tokens_to_ids("<|video_pad|>")
    assert config["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config["vision_start_token_id"] == tok.convert_tokens_to_ids("<|vision_start|>")
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert type(model).__name__ == ARCH_CLASSES[arch]
    assert 1_000_000 < sum(p.numel() for p in model.parameters()) < 2_000_000
    if arch == "qwen2.5-vl":
        vision = config["vision_config"]
        assert (vision["hidden_size"], vision["depth"], vision["out_hidden_size"]) == (64, 2, 128)
        assert vision["fullatt_block_indexes"] == [1]
        assert isinstance(Qwen2_5_VLForConditionalGeneration.from_pretrained(out), Qwen2_5_VLForConditionalGeneration)


def test_build_tiny_seed_and_sizes(tmp_path):
    first = load_file(build_tiny("qwen2.5-vl", tmp_path / "a", seed=3, **SMALL_SIZES) / "model.safetensors")
    again = load_file(build_tiny("qwen2.5-vl", tmp_path / "b", seed=3, **SMALL_SIZES) / "model.safetensors")
    other = load_file(build_tiny("qwen2.5-vl", tmp_path / "c", seed=4, **SMALL_SIZES) / "model.safetensors")
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
    assert 150_000 < sum(t.numel() for t in first.values()) < 300_000
    with pytest.raises(ConfigError, match="hidden"):
        build_tiny("qwen2.5-vl", tmp_path / "d", hiden_size=64)
    with pytest.raises(ConfigError, match="head_dim"):
        build_tiny("qwen2.5-vl", tmp_path / "d", hidden_size=60)
    with pytest.raises(ConfigError, match="llava"):
        build_tiny("llava", tmp_path / "e")


@pytest.mark.parametrize("arch", ARCH_CLASSES)
def test_load_qwen_vl_generates_on_a_video_prompt(tmp_path, arch):
    out = build_tiny(arch, tmp_path / "ckpt", **SMALL_SIZES)
    model, tokenizer, processor = load_qwen_vl(out, vision_overrides={"video_max_pixels": 128 * 28 * 28})
    assert type(model).__name__ == ARCH_CLASSES[arch] and not model.training
    assert processor.video_max_pixels == 128 * 28 * 28
    assert processor.absolute_time == (arch == "qwen2.5-vl")

    frames = np.random.default_rng(0).integers(0, 256, (6, 56, 56, 3), dtype=np.uint8)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What colour is it?"}]}]
    inputs = build_qwen_inputs(tokenizer, processor, messages, videos=[(frames, 2.0)])
    vision_ids = tokenizer.convert_tokens_to_ids(["<|video_pad|>", "<|image_pad|>", "<|vision_start|>"])
    generate = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False, suppress_tokens=vision_ids)
    output = model.generate(**inputs, **generate)
    prompt_len = inputs["input_ids"].shape[1]
    assert output.shape == (1, prompt_len + 4)
    assert torch.equal(output[:, :prompt_len], inputs["input_ids"])
    assert not set(output[0, prompt_len:].tolist()) & set(vision_ids)
    assert isinstance(tokenizer.decode(output[0, prompt_len:]), str)
    # the plain transformers load holds the same weights and decodes the same tokens
    reference = AutoModelForImageTextToText.from_pretrained(out)
    assert torch.equal(reference.generate(**inputs, **generate), output)


def test_load_qwen_vl_errors(tmp_path, tiny_qwen2_vl_dir):
    with pytest.raises(ConfigError, match="does not exist"):
        load_qwen_vl(tmp_path / "missing")
    broken = shutil.copytree(tiny_qwen2_vl_dir, tmp_path / "ckpt")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "model_type": "llava"}))
    with pytest.raises(ConfigError, match=r"ckpt/config.json: model_type 'llava'"):
        load_qwen_vl(broken)
    (broken / "config.json").write_text(json.dumps(config))
    (broken / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match="model.safetensors"):
        load_qwen_vl(broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="tokenizer.json"):
        load_qwen_vl(broken)
    (broken / "config.json").unlink()
    with pytest.raises(ConfigError, match="no config.json"):
        load_qwen_vl(broken)
