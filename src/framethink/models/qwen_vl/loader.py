"""Load a Qwen-VL checkpoint directory (real or tiny): Qwen2-VL / Qwen2.5-VL here, and through
`load_qwen_checkpoint` the Qwen3-VL / Qwen3.5 family's."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLForConditionalGeneration,
)

from framethink.errors import ConfigError
from framethink.models.qwen_vl.inputs import QwenVisionProcessor, read_json_object

QWEN_VL_MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "qwen2_vl": Qwen2VLForConditionalGeneration,
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
}


def load_qwen_vl(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    vision_overrides: dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, QwenVisionProcessor]:
    """Model (in eval mode), tokenizer and vision processor of the Qwen2-VL / Qwen2.5-VL checkpoint at `path`.

    The model class follows config.json's model_type (qwen2_vl or qwen2_5_vl); `vision_overrides` are
    `QwenVisionProcessor` fields, e.g. `{"video_max_pixels": 128 * 28 * 28}` for Video-R1 training (docs/models.md).
    Raises ConfigError for a missing directory or file, or an unknown model type.
    """
    return load_qwen_checkpoint(path, QWEN_VL_MODEL_CLASSES, QwenVisionProcessor, dtype=dtype, device=device,
                                vision_overrides=vision_overrides)


def load_qwen_checkpoint(
    path: str | Path,
    classes: dict[str, type[PreTrainedModel]],
    processor_class: type,
    *,
    dtype: torch.dtype,
    device: str | torch.device,
    vision_overrides: dict[str, Any] | None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Any]:
    """Model (in eval mode), tokenizer and vision processor of a Qwen-VL-style checkpoint: the model class is
    `classes[model_type]`, the processor `processor_class.from_pretrained(path, **vision_overrides)`. ConfigError for
    a missing directory or file, or a model type not in `classes`."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: checkpoint directory does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{path}: no config.json; not a model checkpoint directory")
    model_type = read_json_object(config_file).get("model_type")
    if model_type not in classes:
        raise ConfigError(f"{config_file}: model_type '{model_type}' is not one of {', '.join(classes)}")
    if not any((path / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        # AutoTokenizer would silently build an empty Qwen2Tokenizer from config.json alone.
        raise ConfigError(f"{path}: no tokenizer.json (or vocab.json + merges.txt)")
    processor = processor_class.from_pretrained(path, **(vision_overrides or {}))
    try:
        model = classes[model_type].from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:  # transformers reports missing weight or tokenizer files as OSError
        raise ConfigError(f"{path}: cannot load the {model_type} checkpoint: {err}") from err
    return model.to(device).eval(), tokenizer, processor
