"""Tiny Qwen3-VL / Qwen3.5 checkpoints load with transformers' Auto classes like released ones, and the real sizes
(Qwen/Qwen3-VL-8B-Instruct, Qwen/Qwen3.5-0.8B; their published config.json written out below) build on the meta
device with the parameter count and shapes computed by hand."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    Qwen3_5Config,
    Qwen3_5ForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from framethink.errors import ConfigError
from framethink.models.qwen3_vl.tiny import build_tiny_qwen3, chat_template, scaled_mrope_section

# Published config.json of Qwen/Qwen3-VL-8B-Instruct (transformers 4.57 layout: rope_scaling + rope_theta).
QWEN3_VL_8B = {
    "architectures": ["Qwen3VLForConditionalGeneration"],
    "image_token_id": 151655,
    "model_type": "qwen3_vl",
    "text_config": {
        "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 151643, "dtype": "bfloat16",
        "eos_token_id": 151645, "head_dim": 128, "hidden_act": "silu", "hidden_size": 4096,
        "initializer_range": 0.02, "intermediate_size": 12288, "max_position_embeddings": 262144,
        "model_type": "qwen3_vl_text", "num_attention_heads": 32, "num_hidden_layers": 36, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-06,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"},
        "rope_theta": 5000000, "tie_word_embeddings": False, "use_cache": True, "vocab_size": 151936,
    },
    "tie_word_embeddings": False,
    "transformers_version": "4.57.0.dev0",
    "video_token_id": 151656,
    "vision_config": {
        "deepstack_visual_indexes": [8, 16, 24], "depth": 27, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 1152,
        "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 4304, "model_type": "qwen3_vl",
        "num_heads": 16, "num_position_embeddings": 2304, "out_hidden_size": 4096, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2,
    },
    "vision_end_token_id": 151653,
    "vision_start_token_id": 151652,
}

# Published config.json of Qwen/Qwen3.5-0.8B.
QWEN3_5_0_8B = {
    "architectures": ["Qwen3_5ForConditionalGeneration"],
    "image_token_id": 248056,
    "model_type": "qwen3_5",
    "text_config": {
        "attention_bias": False, "attention_dropout": 0.0, "attn_output_gate": True, "dtype": "bfloat16",
        "eos_token_id": 248044, "full_attention_interval": 4, "head_dim": 256, "hidden_act": "silu",
        "hidden_size": 1024, "initializer_range": 0.02, "intermediate_size": 3584,
        "layer_types": ["linear_attention", "linear_attention", "linear_attention", "full_attention"] * 6,
        "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128, "linear_num_key_heads": 16,
        "linear_num_value_heads": 16, "linear_value_head_dim": 128, "max_position_embeddings": 262144,
        "mlp_only_layers": [], "model_type": "qwen3_5_text", "mtp_num_hidden_layers": 1,
        "mtp_use_dedicated_embeddings": False, "num_attention_heads": 8, "num_hidden_layers": 24,
        "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "tie_word_embeddings": True, "use_cache": True,
        "vocab_size": 248320, "mamba_ssm_dtype": "float32",
        "rope_parameters": {"mrope_interleaved": True, "mrope_section": [11, 11, 10], "rope_type": "default",
                            "rope_theta": 10000000, "partial_rotary_factor": 0.25},
    },
    "tie_word_embeddings": True,
    "transformers_version": "4.57.0.dev0",
    "video_token_id": 248057,
    "vision_config": {
        "deepstack_visual_indexes": [], "depth": 12, "hidden_act": "gelu_pytorch_tanh", "hidden_size": 768,
        "in_channels": 3, "initializer_range": 0.02, "intermediate_size": 3072, "model_type": "qwen3_5",
        "num_heads": 12, "num_position_embeddings": 2304, "out_hidden_size": 1024, "patch_size": 16,
        "spatial_merge_size": 2, "temporal_patch_size": 2,
    },
    "vision_end_token_id": 248054,
    "vision_start_token_id": 248053,
}


def vision_parameters(hidden: int, intermediate: int, depth: int, out: int, positions: int, deepstack: int) -> int:
    """Vision tower: Conv3d patch embedding (3 x 2 x 16 x 16, bias), learned positions, blocks (2 LayerNorms, qkv and
    proj with bias, 2-layer MLP with bias), the merger (LayerNorm before the 2x2 shuffle) and the DeepStack mergers
    (LayerNorm after it); each merger is Linear(4h, 4h) + Linear(4h, out) with bias."""
    block = 2 * 2 * hidden + (hidden * 3 * hidden + 3 * hidden) + (hidden * hidden + hidden) \
        + (hidden * intermediate + intermediate) + (intermediate * hidden + hidden)
    merged = 4 * hidden
    merger = (merged * merged + merged) + (merged * out + out)
    return (hidden * 3 * 2 * 16 * 16 + hidden) + positions * hidden + depth * block \
        + (2 * hidden + merger) + deepstack * (2 * merged + merger)


def test_qwen3_vl_8b_on_meta_device():
    config = Qwen3VLConfig.from_dict(json.loads(json.dumps(QWEN3_VL_8B)))
    assert config.text_config.rope_parameters["mrope_section"] == [24, 20, 20]
    assert config.text_config.rope_parameters["rope_theta"] == 5000000
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    v, h, i, layers, heads, kv, hd = 151936, 4096, 12288, 36, 32, 8, 128
    layer = h * heads * hd + 2 * h * kv * hd + heads * hd * h + 2 * hd + 3 * h * i + 2 * h  # attention, q/k norms, MLP, norms
    text = 2 * v * h + h + layers * layer  # embedding and untied LM head, final norm
    vision = vision_parameters(1152, 4304, 27, 4096, 2304, deepstack=3)
    assert sum(p.numel() for p in model.parameters()) == text + vision == 8_767_123_696
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes["model.language_model.embed_tokens.weight"] == (151936, 4096)
    assert shapes["lm_head.weight"] == (151936, 4096)
    assert shapes["model.language_model.layers.35.self_attn.k_proj.weight"] == (1024, 4096)
    assert shapes["model.language_model.layers.0.self_attn.q_norm.weight"] == (128,)
    assert shapes["model.visual.patch_embed.proj.weight"] == (1152, 3, 2, 16, 16)
    assert shapes["model.visual.pos_embed.weight"] == (2304, 1152)
    assert shapes["model.visual.merger.linear_fc2.weight"] == (4096, 4608)
    assert shapes["model.visual.deepstack_merger_list.2.norm.weight"] == (4608,)
    assert len(model.model.visual.deepstack_merger_list) == 3 and len(model.model.visual.blocks) == 27


def test_qwen3_5_0_8b_on_meta_device():
    config = Qwen3_5Config.from_dict(json.loads(json.dumps(QWEN3_5_0_8B)))
    with torch.device("meta"):
        model = Qwen3_5ForConditionalGeneration(config)
    v, h, i, layers, heads, kv, hd = 248320, 1024, 3584, 24, 8, 2, 256
    full = h * heads * hd * 2 + 2 * h * kv * hd + heads * hd * h + 2 * hd  # q_proj doubled by the output gate
    key_dim, value_dim, value_heads = 16 * 128, 16 * 128, 16
    conv = 2 * key_dim + value_dim
    # Gated DeltaNet: depthwise conv (kernel 4), in_proj_qkv / z / b / a, out_proj, dt_bias, A_log, gated norm
    linear = conv * 4 + h * conv + h * value_dim + 2 * h * value_heads + value_dim * h + 2 * value_heads + 128
    text = v * h + h + 6 * full + 18 * linear + layers * (3 * h * i + 2 * h)  # tied embedding
    vision = vision_parameters(768, 3072, 12, 1024, 2304, deepstack=0)
    assert sum(p.numel() for p in model.parameters()) == text + vision == 852_985_920
    layer_types = model.config.text_config.layer_types
    assert layer_types.count("full_attention") == 6 and layer_types[3] == "full_attention"
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes["model.language_model.layers.0.linear_attn.in_proj_qkv.weight"] == (6144, 1024)
    assert shapes["model.language_model.layers.0.linear_attn.conv1d.weight"] == (6144, 1, 4)
    assert shapes["model.language_model.layers.3.self_attn.q_proj.weight"] == (4096, 1024)
    assert shapes["model.visual.merger.linear_fc2.weight"] == (1024, 3072)
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight


@pytest.fixture(scope="module", params=("qwen3-vl", "qwen3.5"))
def tiny_dir(request, tmp_path_factory):
    return build_tiny_qwen3(request.param, tmp_path_factory.mktemp(request.param.replace(".", "")), seed=1)


def test_tiny_loads_with_transformers_auto_classes(tiny_dir):
    config = json.loads((tiny_dir / "config.json").read_text())
    qwen3_5 = config["model_type"] == "qwen3_5"
    processor = AutoProcessor.from_pretrained(tiny_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_dir)
    assert type(processor).__name__ == "Qwen3VLProcessor"
    assert type(processor.video_processor).__name__ == "Qwen3VLVideoProcessor"
    assert type(model).__name__ == ("Qwen3_5ForConditionalGeneration" if qwen3_5 else "Qwen3VLForConditionalGeneration")
    assert type(processor.tokenizer).__name__ == ("Qwen3_5Tokenizer" if qwen3_5 else "Qwen2Tokenizer")
    for name in ("model.safetensors", "generation_config.json", "tokenizer.json", "preprocessor_config.json",
                 "video_preprocessor_config.json"):
        assert (tiny_dir / name).is_file(), name

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What colour?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n" if qwen3_5 else "<|im_start|>assistant\n")
    video = np.random.default_rng(0).integers(0, 256, (9, 56, 56, 3), dtype=np.uint8)
    inputs = processor(text=[text], videos=[video], return_tensors="pt",
                       videos_kwargs={"video_metadata": [{"total_num_frames": 9, "fps": 4.0}]})
    assert "<0.4 seconds><|vision_start|>" in processor.tokenizer.decode(inputs["input_ids"][0])
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], config["text_config"]["vocab_size"])
    assert torch.isfinite(logits).all()
    if not qwen3_5:
        assert model.config.vision_config.deepstack_visual_indexes == [1, 2]


def test_tiny_tokenizer_has_the_family_tokens_and_template(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    ids = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|vision_start|>", "<|image_pad|>", "<|video_pad|>"])
    assert ids[1:] == [ids[0] + 9, ids[0] + 12, ids[0] + 13]  # Qwen's order (151643 / 151652 / 151655 / 151656)
    for token in ("<tool_call>", "</tool_response>", "<think>", "</think>"):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    qwen3_5 = json.loads((tiny_dir / "config.json").read_text())["model_type"] == "qwen3_5"
    assert tokenizer.chat_template == chat_template("qwen3.5" if qwen3_5 else "qwen3-vl")


def test_chat_templates_are_the_released_files():
    expected = {"qwen3-vl": "3636d0f0bd6bef02654cdffdc447b79cb2cef8ab02cc75267345946291a489e4",
                "qwen3.5": "a4aee8afcf2e0711942cf848899be66016f8d14a889ff9ede07bca099c28f715"}
    for arch, digest in expected.items():
        assert hashlib.sha256(chat_template(arch).encode()).hexdigest() == digest, arch


def test_mrope_sections_and_bad_sizes(tmp_path):
    assert scaled_mrope_section((24, 20, 20), 64) == [24, 20, 20]
    assert scaled_mrope_section((24, 20, 20), 16) == [6, 5, 5]
    assert scaled_mrope_section((11, 11, 10), 8) == [3, 3, 2]
    with pytest.raises(ConfigError, match="unknown tiny size"):
        build_tiny_qwen3("qwen3-vl", tmp_path, hidden=3)
    with pytest.raises(ConfigError, match="deepstack_layers"):
        build_tiny_qwen3("qwen3-vl", tmp_path, deepstack_layers=3)
    with pytest.raises(ConfigError, match="unknown tiny Qwen3"):
        build_tiny_qwen3("qwen3-omni", tmp_path)


@pytest.mark.parametrize("arch, model_type", [("qwen3-vl", "qwen3_vl"), ("qwen3.5", "qwen3_5")])
def test_model_tiny_command_writes_them(arch, model_type, tmp_path, capsys):
    from framethink.cli import main

    assert main(["model", "tiny", "--arch", arch, "--out", str(tmp_path / arch), "--seed", "2"]) == 0
    assert f"wrote tiny {arch} checkpoint" in capsys.readouterr().out
    assert json.loads((tmp_path / arch / "config.json").read_text())["model_type"] == model_type
    assert type(AutoProcessor.from_pretrained(tmp_path / arch)).__name__ == "Qwen3VLProcessor"
