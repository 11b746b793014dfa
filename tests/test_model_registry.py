"""The model-family registry: every model_type and tiny architecture belongs to exactly one family, unknown ones are
named with the known ones, a setting the loaded family does not read is refused naming the key, and LoRA adapts the
family's own targets when a recipe names none."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from peft.tuners.lora import LoraLayer

from framethink.cli import main
from framethink.config import LoraConfig, ModelConfig
from framethink.engine import apply_lora
from framethink.errors import ConfigError
from framethink.models import load_adapter
from framethink.models.registry import BY_MODEL_TYPE, BY_TINY_ARCH, FAMILIES, family_of, tiny_archs
from framethink.models.tiny import build_tiny


@pytest.fixture(scope="module")
def tinyllava_dir(tmp_path_factory) -> Path:
    return build_tiny("tinyllava-video", tmp_path_factory.mktemp("tinyllava"), seed=0)


def test_every_model_type_and_tiny_architecture_has_one_family():
    types = [t for family in FAMILIES for t in family.model_types]
    archs = [a for family in FAMILIES for a in family.tiny_archs]
    assert len(types) == len(set(types)) and len(archs) == len(set(archs))
    assert {"qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe", "tinyllava",
            "framethink_tinyllava_video"} <= set(types)
    assert {"qwen2-vl", "qwen2.5-vl", "qwen3-vl", "qwen3.5", "tinyllava-video"} <= set(tiny_archs())
    assert family_of("qwen3_5_moe") is family_of("qwen3_vl") is not family_of("qwen2_5_vl")
    assert family_of("qwen2_5_vl") is family_of("qwen2_vl") is not family_of("tinyllava")
    with pytest.raises(ConfigError, match=r"somewhere: model_type 'llama' is not supported \(known: .*qwen2_5_vl"):
        family_of("llama", "somewhere")
    with pytest.raises(ConfigError, match="unknown tiny architecture 'gpt'; known: .*tinyllava-video"):
        build_tiny("gpt", Path("unused"))


def test_a_checkpoint_of_an_unknown_type_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ConfigError, match=f"{tmp_path}: model_type 'llava' is not supported"):
        load_adapter(tmp_path)


@pytest.mark.parametrize("setting, key", [({"max_pixels": 3136}, "video_max_pixels"),
                                          ({"image_min_pixels": 784}, "image_min_pixels")])
def test_a_pixel_bound_the_family_does_not_read_is_an_error_naming_it(tinyllava_dir, setting, key):
    with pytest.raises(ConfigError, match=rf"{key}=\d+ does not apply to TinyLLaVA-Video .*pixel settings it reads: "
                                          r"none\); remove it"):
        load_adapter(tinyllava_dir, **setting)
    assert load_adapter(tinyllava_dir).frames == BY_MODEL_TYPE["tinyllava"].default_frames


def test_qwen_vl_reads_every_pixel_bound(tiny_qwen25_vl_dir):
    adapter = load_adapter(tiny_qwen25_vl_dir, max_pixels=4 * 784, video_min_pixels=784, image_max_pixels=8 * 784,
                           image_min_pixels=2 * 784)
    bounds = adapter.processor
    assert (bounds.video_min_pixels, bounds.video_max_pixels, bounds.image_min_pixels, bounds.image_max_pixels) == (
        784, 4 * 784, 2 * 784, 8 * 784)


def test_lora_adapts_the_familys_targets_when_the_recipe_names_none(tinyllava_dir, tiny_qwen25_vl_dir):
    """TinyLLaVA-Video's SigLIP attention has q/k/v_proj too: its default LoRA stays in the language model, so the
    frozen tower stays frozen; Qwen-VL's default is the LM attention (its tower's attention is `qkv`)."""
    config = ModelConfig()
    assert config.lora.target_modules is None
    for path, lm_prefix in ((tinyllava_dir, "language_model."), (tiny_qwen25_vl_dir, "model.language_model.")):
        model = load_adapter(path).model
        apply_lora(model, config, seed=0)
        adapted = [name for name, module in model.named_modules() if isinstance(module, LoraLayer)]
        assert adapted and all(name.startswith(lm_prefix) for name in adapted)
        assert {name.rsplit(".", 1)[1] for name in adapted} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    model = load_adapter(tiny_qwen25_vl_dir).model  # a recipe's own targets win
    apply_lora(model, ModelConfig(lora=LoraConfig(target_modules=["qkv"])), seed=0)
    assert all(name.endswith(".qkv") for name, m in model.named_modules() if isinstance(m, LoraLayer))


@pytest.mark.parametrize("arch", tiny_archs())
def test_cli_writes_a_tiny_checkpoint_of_every_registered_architecture(tmp_path, arch):
    assert main(["model", "tiny", "--arch", arch, "--out", str(tmp_path / arch)]) == 0
    model_type = json.loads((tmp_path / arch / "config.json").read_text())["model_type"]
    assert family_of(model_type) is BY_TINY_ARCH[arch]
    assert load_adapter(tmp_path / arch).model.config.model_type == model_type
