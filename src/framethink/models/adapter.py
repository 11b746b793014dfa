"""The policy adapter: the one interface the trainer, SFT and evaluation use for every model type.

An adapter turns a `Record` into model inputs (decode frames, build the prompt, patchify) and
hides every model-specific detail, so that no loop ever branches on the model type.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from framethink.data.records import Record

FRAME_ORDERS = ("ordered", "shuffled", "reversed")


@dataclass(frozen=True)
class Decoding:
    """Sampling settings for generation (SPEC 5 and 7)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    do_sample: bool = True


@dataclass
class EncodedPrompt:
    """One prompt ready for the model.

    `inputs` holds the prompt's tensors exactly as the model's forward takes them (batch dim 1),
    e.g. input_ids [1, L], attention_mask [1, L], pixel_values_videos [N, D], video_grid_thw [1, 3],
    second_per_grid_ts [1], mm_token_type_ids [1, L]. `record` is the record it came from.
    """

    record: Record
    inputs: dict[str, torch.Tensor]
    frame_order: str = "ordered"
    meta: dict[str, Any] = field(default_factory=dict)


class PolicyAdapter(Protocol):
    """What every model type provides. See `framethink.models.qwen_vl` for the Qwen-VL one."""

    name: str
    default_template: str

    def encode(self, record: Record, *, template: str, frame_order: str = "ordered", seed: int = 0) -> EncodedPrompt:
        """Decode the record's media in the given frame order and build the prompt inputs."""
        ...

    def generate_texts(self, prompts: list[EncodedPrompt], decoding: Decoding) -> list[str]:
        """One completion per prompt, from one batched generate call; returns the decoded texts."""
        ...
