"""Policy adapter for Qwen3-VL (qwen3_vl, qwen3_vl_moe) and Qwen3.5 (qwen3_5, qwen3_5_moe) (docs/models.md, Qwen3-VL
and Qwen3.5), on the shared machinery of `framethink.models.base`.

What is this family's own:
- inputs: `framethink.models.qwen3_vl.inputs` builds them as transformers' `Qwen3VLProcessor` does, with the timestamp
  text of every temporal patch computed from the sampled frames' times in the video. A shuffled or reversed clip
  (T-GRPO, temporal evaluation) permutes the pixel content only: its timestamps, hence its prompt text and positions,
  stay those of the ordered clip, so the model cannot read the true order back from the text;
- positions: interleaved M-RoPE with one vision block per temporal patch (`framethink.models.qwen3_vl.positions`),
  passed to every forward; completion tokens continue from their prompt's largest position + 1;
- DeepStack (Qwen3-VL): the features of the vision blocks named by `deepstack_visual_indexes`, each through its own
  merger, are added to the first LM layers' hidden states at the visual positions. They are computed with the merged
  visual tokens, once per prompt, and reach every forward that sees a prompt: the generation prefill, the old-policy,
  reference and policy forwards, the per-row path, and through the frozen-tower cache (which keeps the tower's
  hidden states at those blocks beside its last one, so that only the mergers run again);
- Qwen3.5's language model mixes Gated-DeltaNet linear-attention layers with full attention: its cache holds the
  recurrent and convolution states of the linear layers beside the KV of the attention layers. The cache is built
  from the model's config (`DynamicCache(config=...)`) and gathered to the rows like KV, so prefix sharing,
  generation and the per-row path under gradient checkpointing work alike. Left padding is exact for the linear
  layers: transformers zeroes padded positions' inputs there, and a zero input leaves a zero state zero;
- Qwen3.5's chat template opens the assistant turn with `<think>\\n`; framethink's templates ask the model to write its
  own `<think> ... </think>` (the Video-R1 format reward reads the completion), so that opener is left out of the
  prompt (docs/models.md).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3_5ForConditionalGeneration,
    Qwen3_5MoeForConditionalGeneration,
    Qwen3VLForConditionalGeneration,
    Qwen3VLMoeForConditionalGeneration,
)

from framethink.data.clips import FrameRule, check_frame_order
from framethink.data.prompts import build_messages
from framethink.data.records import Record
from framethink.data.video import load_image
from framethink.models.adapter import EncodedPrompt
from framethink.models.base import TOWER_CACHE_SIZE, PackedRows
from framethink.models.qwen3_vl.inputs import Qwen3VisionProcessor, VideoClip, build_qwen3_inputs
from framethink.models.qwen3_vl.positions import qwen3_position_ids
from framethink.models.qwen_vl.adapter import QwenVLAdapter
from framethink.models.qwen_vl.loader import load_qwen_checkpoint

QWEN3_MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "qwen3_vl": Qwen3VLForConditionalGeneration,
    "qwen3_vl_moe": Qwen3VLMoeForConditionalGeneration,
    "qwen3_5": Qwen3_5ForConditionalGeneration,
    "qwen3_5_moe": Qwen3_5MoeForConditionalGeneration,
}
THINKING_OPENER = "<think>\n"  # what Qwen3.5's generation prompt ends with in thinking mode
# The video processor's own sampling: 2 fps, 4 to 768 frames (recipes and `eval --frames` cap it)
QWEN3_FRAMES = FrameRule(rule="qwen3", fps=2.0, min_frames=4, max_frames=768)


class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL / Qwen3.5 (and their MoE variants) behind the `PolicyAdapter` interface: the Qwen-VL adapter with
    this family's inputs, positions, DeepStack mergers and thinking opener."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        processor: Qwen3VisionProcessor,
        *,
        frames: FrameRule = QWEN3_FRAMES,
        system: str | None = None,
        frame_cache_size: int = 256,
        tower_cache_size: int = TOWER_CACHE_SIZE,
        name: str = "",
    ) -> None:
        super().__init__(model, tokenizer, processor, frames=frames, system=system, frame_cache_size=frame_cache_size,
                         tower_cache_size=tower_cache_size, name=name)
        self.thinking_opener = tokenizer(THINKING_OPENER, add_special_tokens=False)["input_ids"]

    @staticmethod
    def _connectors(visual: torch.nn.Module) -> list[torch.nn.Module]:
        """The merger and, on Qwen3-VL, the DeepStack mergers (one per LM layer fed)."""
        return [visual.merger, *getattr(visual, "deepstack_merger_list", ())]

    def encode(self, record: Record, *, template: str, frame_order: str = "ordered", seed: int = 0) -> EncodedPrompt:
        """Decode the record's media and build the prompt's model inputs. A reordered clip permutes the frames'
        pixels only: the timestamps (text and positions) are those of the ordered clip."""
        check_frame_order(frame_order)
        messages = build_messages(record, template, system=self.system)
        images, videos, meta = [], [], {}
        if record.media_kind == "video":
            clip = self.clips.read(record, frame_order, seed)  # its timestamps are the ordered clip's
            videos.append(VideoClip(frames=clip.frames, timestamps=np.asarray(clip.meta["timestamps"])))
            meta = clip.meta
        elif record.media_kind == "image":
            images.append(load_image(record.media[0]).frames[0])
        inputs = build_qwen3_inputs(self.tokenizer, self.processor, messages, images=images, videos=videos)
        return EncodedPrompt(record=record, inputs=self._without_thinking_opener(inputs), frame_order=frame_order,
                             meta=meta)

    def _without_thinking_opener(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The prompt without the `<think>\\n` a thinking chat template ends with (the completion writes its own)."""
        k = len(self.thinking_opener)
        if inputs["input_ids"][0, -k:].tolist() != self.thinking_opener:
            return inputs
        return {key: value[:, :-k] if key in ("input_ids", "attention_mask", "mm_token_type_ids") else value
                for key, value in inputs.items()}

    def _positions(self, prompts: list[EncodedPrompt], types: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Interleaved M-RoPE positions [3, P, Lp]: one vision block per temporal patch, the timestamp text between."""
        grids = [torch.cat(g) if (g := [p.inputs[key] for p in prompts if key in p.inputs]) else None
                 for key in ("image_grid_thw", "video_grid_thw")]
        return qwen3_position_ids(types, attention, *grids, merge_size=self.processor.merge_size)

    def _forward(self, model: PreTrainedModel, rows: PackedRows, **kwargs: Any) -> torch.Tensor:
        """Logits over packed rows; DeepStack features reach the language model's first layers through its own
        forward arguments (`visual_pos_masks`, `deepstack_visual_embeds`), given to it by a hook for this one call:
        the model's forward itself computes them only from pixels, which framethink encodes once per prompt."""
        if rows.deepstack_visual_embeds is None:
            return super()._forward(model, rows, **kwargs)

        def inject(module: torch.nn.Module, args: tuple, call: dict) -> tuple[tuple, dict]:
            return args, {**call, "visual_pos_masks": rows.visual_pos_masks,
                          "deepstack_visual_embeds": rows.deepstack_visual_embeds}

        hook = model.model.language_model.register_forward_pre_hook(inject, with_kwargs=True)
        try:
            return model(inputs_embeds=rows.inputs_embeds, attention_mask=rows.attention_mask,
                         position_ids=rows.position_ids, **kwargs).logits
        finally:
            hook.remove()


def load_qwen3_adapter(
    path: str | Path,
    *,
    frames: FrameRule = QWEN3_FRAMES,
    vision_overrides: dict | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    system: str | None = None,
    frame_cache_size: int = 256,
) -> Qwen3VLAdapter:
    """The adapter over the Qwen3-VL / Qwen3.5 checkpoint at `path`; `vision_overrides` are `Qwen3VisionProcessor`
    fields (e.g. `video_max_pixels`, which counts the pixels of a whole clip)."""
    model, tokenizer, processor = load_qwen_checkpoint(path, QWEN3_MODEL_CLASSES, Qwen3VisionProcessor, dtype=dtype,
                                                       device=device, vision_overrides=vision_overrides)
    return Qwen3VLAdapter(model, tokenizer, processor, frames=frames, system=system,
                          frame_cache_size=frame_cache_size, name=Path(path).name)
