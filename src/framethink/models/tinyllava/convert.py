"""TinyLLaVA-Video checkpoints: the released layout, loading, conversion and tiny builds (docs/models.md).

A released checkpoint (TinyLLaVA_Factory) has `model_type "tinyllava"`, nested `text_config` /
`vision_config`, no `auto_map`, and full-model safetensors named after the reference's module
nesting. framethink's own layout is what `TinyLlavaVideoForConditionalGeneration.save_pretrained`
writes. The key mapping, released -> framethink:

    vision_tower._vision_tower.vision_model.*   -> vision_tower.vision_model.*
    connector._connector.layers.{i}.0.*         -> connector.blocks.{i}.attn.*
    connector._connector.layers.{i}.1.0.*       -> connector.blocks.{i}.ff.norm.*
    connector._connector.layers.{i}.1.1.*       -> connector.blocks.{i}.ff.fc1.*
    connector._connector.layers.{i}.1.3.*       -> connector.blocks.{i}.ff.fc2.*
    connector._connector.*                      -> connector.*   (latents, linear, norm)
    language_model.*                            -> language_model.*

Newer transformers keep SigLIP's weights without the `vision_model.` level (in memory and in the
files they save); every file is read in the form with it, which all versions load.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, GenerationConfig, PreTrainedTokenizerBase

from framethink.errors import ConfigError, FramethinkError
from framethink.models.tinyllava.modeling import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    TinyLlavaVideoConfig,
    TinyLlavaVideoForConditionalGeneration,
)
from framethink.models.tokenizer import build_offline_tokenizer

RELEASED_MODEL_TYPE = "tinyllava"
LAYOUTS = ("framethink", "released")
EOS_PAD_TOKEN = "<|endoftext|>"  # TinyLLaVA-Video's eos and pad (docs/models.md)

# (released prefix, framethink prefix); "{i}" stands for a resampler block index. First match wins.
KEY_RULES = (
    ("vision_tower._vision_tower.vision_model.", "vision_tower.vision_model."),
    ("connector._connector.layers.{i}.0.", "connector.blocks.{i}.attn."),
    ("connector._connector.layers.{i}.1.0.", "connector.blocks.{i}.ff.norm."),
    ("connector._connector.layers.{i}.1.1.", "connector.blocks.{i}.ff.fc1."),
    ("connector._connector.layers.{i}.1.3.", "connector.blocks.{i}.ff.fc2."),
    ("connector._connector.", "connector."),
    ("language_model.", "language_model."),
)

# Tiny sizes: SigLIP 56x56 / patch 14 / hidden 32, Qwen2 hidden 64 with 2 layers, 2 latents per group.
TINY_VISION = {
    "image_size": 56,
    "patch_size": 14,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
TINY_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}
TINY_CONNECTOR = {"group": 4, "num_queries": 8, "num_resampler_layers": 2}
TINY_VOCAB_MULTIPLE = 64


class CheckpointError(FramethinkError):
    """A checkpoint directory that cannot be loaded: names the path and what is wrong with it."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


def _compile(rules: tuple[tuple[str, str], ...]) -> list[tuple[re.Pattern, str]]:
    return [(re.compile("^" + r"(\d+)".join(map(re.escape, src.split("{i}")))), dst) for src, dst in rules]


_TO_FRAMETHINK = _compile(KEY_RULES)
_TO_RELEASED = _compile(tuple((dst, src) for src, dst in KEY_RULES))


def _rename(key: str, rules: list[tuple[re.Pattern, str]]) -> str | None:
    for pattern, target in rules:
        if match := pattern.match(key):
            return target.replace("{i}", match.group(1) if pattern.groups else "") + key[match.end():]
    return None


def _canonical(key: str) -> str:
    """framethink key with SigLIP's `vision_model.` level, whichever form transformers used."""
    if key.startswith("vision_tower.") and not key.startswith("vision_tower.vision_model."):
        return "vision_tower.vision_model." + key[len("vision_tower."):]
    return key


def released_to_framethink_key(key: str) -> str | None:
    """The framethink name of a released weight, None if the released layout has no such weight."""
    return _rename(key, _TO_FRAMETHINK)


def framethink_to_released_key(key: str) -> str:
    """The released name of a framethink weight (either SigLIP form)."""
    renamed = _rename(_canonical(key), _TO_RELEASED)
    if renamed is None:
        raise ConfigError(f"weight {key!r} has no place in the released TinyLLaVA-Video layout")
    return renamed


def config_from_released(raw: dict[str, Any], source: str | Path) -> TinyLlavaVideoConfig:
    """A released `config.json` (model_type "tinyllava") -> framethink's config (docs/models.md).

    Fields absent from the file take the reference config class's defaults; the placeholder id is
    always -200 (the reference ignores the stored value). Raises CheckpointError naming the field.
    """
    for key in ("connector_type", "num_queries", "num_resampler_layers", "text_config", "vision_config"):
        if raw.get(key) is None:
            raise CheckpointError(source, f"field '{key}' is missing")
    if raw["connector_type"] == "groupresampler" and raw.get("group") is None:
        raise CheckpointError(source, "field 'group' is missing (connector_type groupresampler)")
    text = dict(raw["text_config"])
    # The reference stores where it downloaded SigLIP from inside vision_config; framethink does not need it.
    vision = {k: v for k, v in raw["vision_config"].items() if k not in ("model_name_or_path", "model_name_or_path2")}
    if text.get("model_type") != "qwen2":
        raise CheckpointError(
            source, f"field 'text_config.model_type': expected 'qwen2', got {text.get('model_type')!r}"
        )
    if vision.get("model_type", "siglip_vision_model") != "siglip_vision_model":
        raise CheckpointError(
            source, f"field 'vision_config.model_type': expected 'siglip_vision_model', got {vision['model_type']!r}"
        )
    strategy = raw.get("vision_feature_select_strategy", "patch")
    if strategy not in ("patch", "cls_patch"):
        raise CheckpointError(source, f"field 'vision_feature_select_strategy': unknown value {strategy!r}")
    for field, sub, width in (("hidden_size", text, "hidden_size"), ("vision_hidden_size", vision, "hidden_size")):
        if raw.get(field) is not None and raw[field] != sub.get(width):
            raise CheckpointError(
                source, f"field '{field}' ({raw[field]}) disagrees with the nested config ({sub.get(width)})"
            )
    try:
        return TinyLlavaVideoConfig(
            vision_config=vision,
            text_config=text,
            connector_type=raw["connector_type"],
            num_queries=raw["num_queries"],
            num_resampler_layers=raw["num_resampler_layers"],
            **({"group": raw["group"]} if raw.get("group") is not None else {}),
            vision_feature_layer=raw.get("vision_feature_layer", -2),
            drop_first_patch=strategy == "patch",
            image_token_index=IMAGE_TOKEN_INDEX,
            pad_token=raw.get("pad_token"),
            pad_token_id=raw.get("pad_token_id"),
            tokenizer_model_max_length=raw.get("tokenizer_model_max_length", 2048),
            tokenizer_padding_side=raw.get("tokenizer_padding_side", "right"),
        )
    except ConfigError as err:
        raise CheckpointError(source, str(err)) from err


def _released_config(config: TinyLlavaVideoConfig, text_config: dict, vision_config: dict) -> dict[str, Any]:
    """framethink's config -> a `config.json` as TinyLLaVA_Factory writes it (no auto_map), with the
    given nested `text_config` / `vision_config` dicts (written as transformers 4.x wrote them).

    The reference fixes the resampler at 8 heads of 64; other head settings raise ConfigError.
    """
    if (config.resampler_heads, config.resampler_head_dim) != (8, 64):
        raise ConfigError(
            f"the released layout fixes the resampler at 8 heads of 64, "
            f"got {config.resampler_heads} heads of {config.resampler_head_dim}"
        )
    return {
        "architectures": ["TinyLlavaForConditionalGeneration"],
        "model_type": RELEASED_MODEL_TYPE,
        "connector_type": config.connector_type,
        "group": config.group,
        "num_queries": config.num_queries,
        "num_resampler_layers": config.num_resampler_layers,
        "hidden_size": config.text_config.hidden_size,
        "vision_hidden_size": config.vision_config.hidden_size,
        "vocab_size": config.text_config.vocab_size,
        "image_token_index": IMAGE_TOKEN_INDEX,
        "ignore_index": IGNORE_INDEX,
        "pad_token": config.pad_token,
        "pad_token_id": config.pad_token_id,
        "tokenizer_model_max_length": config.tokenizer_model_max_length,
        "tokenizer_padding_side": config.tokenizer_padding_side,
        "vision_feature_layer": config.vision_feature_layer,
        "vision_feature_select_strategy": "patch" if config.drop_first_patch else "cls_patch",
        "image_aspect_ratio": "square",
        "use_cache": True,
        "text_config": {**text_config, "model_type": "qwen2"},
        "vision_config": {**vision_config, "model_type": "siglip_vision_model"},
    }


def _read_json(file: Path) -> dict[str, Any]:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CheckpointError(file.parent, f"no {file.name}") from err
    except json.JSONDecodeError as err:
        raise CheckpointError(file, f"invalid JSON: {err}") from err


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: one `model.safetensors` or the shards of its index."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(_read_json(index)["weight_map"].values()))
    elif (path / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise CheckpointError(path, "no model.safetensors or model.safetensors.index.json")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        if not (path / name).is_file():
            raise CheckpointError(path, f"shard {name} named by {index.name} is missing")
        state.update(load_file(path / name))
    return state


def _check_weights(path: Path, config: TinyLlavaVideoConfig, weights: dict[str, torch.Tensor]) -> None:
    """CheckpointError naming every weight the model lacks, misses (a tied lm_head may be absent) or
    holds in another shape; the model is built on the meta device, which costs no memory."""
    with torch.device("meta"):
        model = TinyLlavaVideoForConditionalGeneration(config)
    expected = {_canonical(key): value.shape for key, value in model.state_dict().items()}
    optional = {"language_model.lm_head.weight"} if config.text_config.tie_word_embeddings else set()
    faults = {
        "missing": sorted(expected.keys() - weights.keys() - optional),
        "unexpected": sorted(weights.keys() - expected.keys()),
        "wrong shape": sorted(
            f"{key} {tuple(weights[key].shape)} != {tuple(expected[key])}"
            for key in expected.keys() & weights.keys()
            if weights[key].shape != expected[key]
        ),
    }
    if any(faults.values()):
        listed = "; ".join(f"{kind}: {names}" for kind, names in faults.items() if names)
        raise CheckpointError(path, f"weights do not match the model: {listed}")


def checkpoint_layout(path: str | Path) -> str:
    """"released" or "framethink", told by the model_type of `path/config.json`."""
    path = Path(path)
    model_type = _read_json(path / "config.json").get("model_type")
    if model_type == RELEASED_MODEL_TYPE:
        return "released"
    if model_type == TinyLlavaVideoConfig.model_type:
        return "framethink"
    raise CheckpointError(
        path,
        f"config.json model_type {model_type!r} is neither {RELEASED_MODEL_TYPE!r} "
        f"nor {TinyLlavaVideoConfig.model_type!r}",
    )


def load_tinyllava(
    path: str | Path, *, dtype: torch.dtype | None = None, tokenizer_path: str | Path | None = None
) -> tuple[TinyLlavaVideoForConditionalGeneration, PreTrainedTokenizerBase]:
    """Load a TinyLLaVA-Video checkpoint directory in either layout -> (model in eval mode, tokenizer).

    Released checkpoints are mapped onto framethink's names as they are read. `dtype` defaults to
    the stored one. The tokenizer is read from `path`, or from `tokenizer_path` when given (for a
    checkpoint saved without tokenizer files). A weight the model lacks, a weight missing from the
    checkpoint (the tied `lm_head` excepted) or a pad token that disagrees with the config raises
    CheckpointError naming them.
    """
    path = Path(path)
    layout = checkpoint_layout(path)
    raw = _read_json(path / "config.json")
    weights = _read_weights(path)
    if layout == "released":
        config = config_from_released(raw, path / "config.json")
        renamed = {key: released_to_framethink_key(key) for key in weights}
        if unknown := sorted(key for key, new in renamed.items() if new is None):
            raise CheckpointError(path, f"weights outside the released TinyLLaVA-Video layout: {unknown}")
        weights = {renamed[key]: value for key, value in weights.items()}
        # SigLIP's pooling head is unused (features come from a hidden layer); build it only if it was saved.
        config.vision_config.vision_use_head = any(".vision_model.head." in key for key in weights)
    else:
        config = TinyLlavaVideoConfig.from_dict(raw)
    weights = {_canonical(key): value for key, value in weights.items()}
    if dtype is None:
        dtype = next(v.dtype for v in weights.values() if v.is_floating_point())

    _check_weights(path, config, weights)
    model = TinyLlavaVideoForConditionalGeneration.from_pretrained(
        None, config=config, state_dict=weights, dtype=dtype
    )

    tokenizer_dir = Path(tokenizer_path) if tokenizer_path is not None else path
    if not any((tokenizer_dir / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise CheckpointError(
            tokenizer_dir, "no tokenizer files (tokenizer.json / tokenizer_config.json); pass tokenizer_path"
        )
    # The text config names Qwen2's tokenizer without reading config.json, whose model_type transformers lacks.
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, config=config.text_config)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = config.pad_token
    if config.pad_token is not None and tokenizer.pad_token != config.pad_token:
        raise CheckpointError(
            path, f"tokenizer pad token {tokenizer.pad_token!r} differs from config pad_token {config.pad_token!r}"
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


def convert_released_checkpoint(
    src: str | Path, dst: str | Path, *, tokenizer_path: str | Path | None = None
) -> Path:
    """Write the released checkpoint `src` in framethink's layout to `dst` (weights in their stored
    dtype, config, generation config, tokenizer); returns `dst`. Raises CheckpointError if `src` is
    not in the released layout."""
    if checkpoint_layout(src) != "released":
        raise CheckpointError(
            src, "not a released TinyLLaVA-Video checkpoint (config.json model_type is not 'tinyllava')"
        )
    model, tokenizer = load_tinyllava(src, tokenizer_path=tokenizer_path)
    dst = Path(dst)
    model.save_pretrained(dst)
    tokenizer.save_pretrained(dst)
    return dst


def tiny_tinyllava_tokenizer() -> PreTrainedTokenizerBase:
    """The offline Qwen-style tokenizer with TinyLLaVA-Video's eos = pad = "<|endoftext|>" and no chat
    template (the `qwen2_base` prompt is plain text)."""
    tokenizer = build_offline_tokenizer()
    tokenizer.eos_token = EOS_PAD_TOKEN
    tokenizer.pad_token = EOS_PAD_TOKEN
    tokenizer.chat_template = None
    return tokenizer


def build_tiny_tinyllava(
    out: str | Path, *, seed: int = 0, layout: str = "framethink", connector_type: str = "groupresampler"
) -> Path:
    """Write a randomly initialised tiny TinyLLaVA-Video checkpoint into `out`; returns `out`.

    Sizes: SigLIP 56x56 / patch 14 (16 patches, 15 kept per frame) / hidden 32 / 2 layers; Qwen2 hidden 64,
    2 layers, tied embeddings; resampler with 2 blocks of 8 heads x 64, group 4 and 8 queries (2 latents
    per group). `layout` "framethink" writes `save_pretrained`'s files, "released" the TinyLLaVA_Factory
    files (config.json model_type "tinyllava", released weight names, tied lm_head left out). The same
    seed gives the same weights in both layouts.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown checkpoint layout {layout!r}; known: {', '.join(LAYOUTS)}")
    tokenizer = tiny_tinyllava_tokenizer()
    pad_id = tokenizer.pad_token_id
    vocab_size = -(-len(tokenizer) // TINY_VOCAB_MULTIPLE) * TINY_VOCAB_MULTIPLE
    ids = {"bos_token_id": pad_id, "eos_token_id": pad_id, "pad_token_id": pad_id}
    text_config = {**TINY_TEXT, "vocab_size": vocab_size, **ids}
    config = TinyLlavaVideoConfig(
        vision_config=TINY_VISION,
        text_config=text_config,
        connector_type=connector_type,
        **TINY_CONNECTOR,
        pad_token=EOS_PAD_TOKEN,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = TinyLlavaVideoForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=pad_id, eos_token_id=pad_id, pad_token_id=pad_id)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if layout == "framethink":
        model.save_pretrained(out)
    else:
        tied = "language_model.lm_head.weight" if config.text_config.tie_word_embeddings else None
        weights = {
            framethink_to_released_key(key): value.detach().clone().contiguous()
            for key, value in model.state_dict().items()
            if key != tied
        }
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
        config_json = _released_config(config, text_config, TINY_VISION)
        (out / "config.json").write_text(json.dumps(config_json, indent=2) + "\n")
        model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
