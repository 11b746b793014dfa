"""The policy adapter: the one interface the trainer, SFT and evaluation use for every model type.

An adapter turns a `Record` into model inputs (decode frames, build the prompt, patchify) and
hides every model-specific detail, so that no loop ever branches on the model type.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, Protocol

import torch

from framethink.data.records import Record


@dataclass(frozen=True)
class Decoding:
    """Sampling settings for generation (docs/models.md)."""

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
    """What every model type provides; the trainer, SFT and evaluation use nothing else.
    See `framethink.models.qwen_vl.QwenVLAdapter` for the reference implementation.

    Rows: a batch of N sequences where row i continues prompt `row_prompt[i]`; each prompt's vision input is
    encoded once and shared by all its rows.
    """

    name: str
    default_template: str
    model: Any  # the policy (a PreTrainedModel)
    tokenizer: Any
    frames: Any  # the frame rule clips are sampled with (recorded in exported models)
    pad_id: int
    eos_ids: list[int]
    end_of_turn_id: int  # appended to SFT targets

    def encode(self, record: Record, *, template: str, frame_order: str = "ordered", seed: int = 0) -> EncodedPrompt:
        """Decode the record's media in the given frame order and build the prompt inputs."""
        ...

    def generate(self, prompts: list[EncodedPrompt], row_prompt: list[int], decoding: Decoding, *,
                 generator: torch.Generator | None = None,
                 on_token: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> Any:
        """Sample one completion per row in ONE batched call -> `framethink.models.sampling.Completions`;
        `on_token(tokens [N], live [N])` sees each sampled column as it is drawn (streaming)."""
        ...

    def decode(self, completions: Any) -> list[str]:
        """Completion texts cut at EOS."""
        ...

    def generate_texts(self, prompts: list[EncodedPrompt], decoding: Decoding) -> list[str]:
        """One completion per prompt, from one batched generate call; returns the decoded texts."""
        ...

    def completion_logprobs(self, prompts: list[EncodedPrompt], row_prompt: list[int], completion_ids: torch.Tensor,
                            *, model: Any = None) -> torch.Tensor:
        """Log-probs [N, T] of completion_ids [N, T] under `model` (default: the policy), with the full
        multimodal inputs."""
        ...

    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """{"vision": [...], "connector": [...], "lm": [...]} for the freeze switches."""
        ...

    def fsdp_units(self) -> list[torch.nn.Module]:
        """The policy's modules FSDP shards one by one, children before parents: the repeated blocks and every
        module the adapter calls outside the model's forward (the vision tower, the connector), which must be a
        unit of its own to gather its weights when called. The engine adds the input embedding and the root."""
        ...

    def save_pretrained(self, out: Any) -> None:
        """Model, tokenizer and processor files in a layout `load_adapter` reads back."""
        ...
