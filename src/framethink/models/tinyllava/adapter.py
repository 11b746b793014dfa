"""Policy adapter for TinyLLaVA-Video (docs/models.md, TinyLLaVA-Video), on the shared machinery of
`framethink.models.base`.

A prompt is the `qwen2_base` text "{system}USER: <image>\\n{question} ASSISTANT:" with one placeholder id
(-200) where the video goes. Frames come from the uniform rule (16 by default), resized square to the SigLIP
image size and normalised, without torchvision. The adapter builds the prompts' embeddings itself:
  - the vision tower and connector run once per prompt batch (one call per distinct frame count, one in
    practice), and each prompt's `num_queries` embeddings serve all rows (completions) of that prompt; while
    the tower is frozen (the recipe) it runs once per prompt per step, for the policy and the reference model
    alike, and only the connector runs again in each forward;
  - a prompt row is left-padded `[pad, text before, video, text after]`;
  - the model's forward numbers positions by the attended tokens, so a left-padded row's positions count from
    its first real token, and the prefill, every cached step and a whole-row forward agree.
An image is a one-frame clip; a text-only record has no placeholder and no video. The frame count need not
equal the connector's `group`: the resampler splits a clip's T x P tokens into `group` contiguous chunks,
one frame per chunk at T = group = 16 (the released model), several frames per chunk in the tiny model.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from framethink.data.clips import FrameRule, check_frame_order
from framethink.data.prompts import format_question
from framethink.data.records import Record
from framethink.data.video import load_image
from framethink.errors import ConfigError
from framethink.models.adapter import EncodedPrompt
from framethink.models.base import TOWER_CACHE_SIZE, AdapterBase, PackedRows
from framethink.models.tinyllava.convert import load_tinyllava
from framethink.models.tinyllava.inputs import preprocess_siglip_frames
from framethink.models.tinyllava.modeling import (
    TINYLLAVA_SYSTEM,
    VIDEO_PLACEHOLDER,
    TinyLlavaVideoForConditionalGeneration,
    build_tinyllava_prompt_ids,
    tinyllava_prompt,
)

TINYLLAVA_FRAMES = FrameRule(rule="uniform", num_frames=16)  # exactly 16 uniform frames, as the reference


class TinyLlavaAdapter(AdapterBase):
    """TinyLLaVA-Video (SigLIP, resampler connector, Qwen2 base LM) behind the `PolicyAdapter` interface."""

    default_template = "tinyllava-r1"

    def __init__(
        self,
        model: TinyLlavaVideoForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        *,
        frames: FrameRule = TINYLLAVA_FRAMES,
        system: str | None = None,
        frame_cache_size: int = 256,
        tower_cache_size: int = TOWER_CACHE_SIZE,
        name: str = "",
    ) -> None:
        if system is not None and system != TINYLLAVA_SYSTEM:
            raise ConfigError(f"TinyLLaVA-Video's qwen2_base prompt fixes its system text; got {system!r}")
        super().__init__(model, tokenizer, frames=frames, frame_cache_size=frame_cache_size,
                         tower_cache_size=tower_cache_size, name=name)
        self.image_size = model.config.vision_config.image_size
        self.image_token_index = model.config.image_token_index
        # eos = pad = <|endoftext|>, as the released tokenizer; the SFT target ends with it too
        self.pad_id = tokenizer.pad_token_id

    # ------------------------------------------------------------------ parameters
    def parameter_groups(self) -> dict[str, list[torch.nn.Parameter]]:
        """Parameters by part: the SigLIP tower, the resampler connector and the language model."""
        model = self.model
        return {
            "vision": list(model.vision_tower.parameters()),
            "connector": list(model.connector.parameters()),
            "lm": list(model.language_model.parameters()),
        }

    def fsdp_units(self) -> list[torch.nn.Module]:
        """Each decoder layer, the SigLIP tower's layers and its other parts, and the connector (called through
        `get_video_features`, and alone where the frozen tower's output is kept). The tower is not a unit as a
        whole: `fully_shard` gives a unit a new class, and transformers finds by the class which layer outputs
        to keep, so the sharded tower would return no `hidden_states`."""
        model, tower = self.model, self.model.vision_tower
        parts = [m for m in tower.children() if m is not tower.encoder]  # embeddings, post-norm, pooling head
        return [*model.language_model.model.layers, *tower.encoder.layers, *parts, model.connector]

    def save_pretrained(self, out: Path) -> None:
        """Model and tokenizer in framethink's layout (`load_tinyllava` and `load_adapter` read it back)."""
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)

    # ------------------------------------------------------------------ encoding
    def encode(self, record: Record, *, template: str, frame_order: str = "ordered", seed: int = 0) -> EncodedPrompt:
        """Prompt ids [1, L] (one placeholder unless the record is text-only) and SigLIP pixels
        `pixel_values_videos` [1, T, 3, S, S] of the record's frames in the given order."""
        check_frame_order(frame_order)
        question = format_question(record, template)
        inputs, meta = {}, {}
        if record.media_kind == "text":
            text = tinyllava_prompt(question).replace(f"{VIDEO_PLACEHOLDER}\n", "")
            ids = torch.tensor(self.tokenizer(text, add_special_tokens=False).input_ids)
        else:
            if record.media_kind == "video":
                clip = self.clips.read(record, frame_order, seed)
                frames, meta = clip.frames, clip.meta  # [T, H, W, 3] uint8
            else:  # an image is a one-frame clip
                frames = load_image(record.media[0]).frames  # [1, H, W, 3]
                meta["num_frames"] = 1
            ids = build_tinyllava_prompt_ids(self.tokenizer, question, image_token_index=self.image_token_index)
            pixels = preprocess_siglip_frames(frames, size=self.image_size)  # [T, 3, S, S]
            inputs["pixel_values_videos"] = pixels[None]  # [1, T, 3, S, S]
        inputs["input_ids"] = ids[None]  # [1, L]
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        return EncodedPrompt(record=record, inputs=inputs, frame_order=frame_order, meta=meta)

    # ------------------------------------------------------------------ forward
    def _tower_weights(self, model: TinyLlavaVideoForConditionalGeneration) -> list[torch.Tensor]:
        """Parameters and buffers of the SigLIP tower: what the tower's output depends on."""
        return [*model.vision_tower.parameters(), *model.vision_tower.buffers()]

    def _video_features(self, model: TinyLlavaVideoForConditionalGeneration,
                        prompts: list[EncodedPrompt]) -> list[torch.Tensor | None]:
        """Connector embeddings [num_queries, D] per prompt (None without video): prompts with the same
        frame count go through the vision tower and connector together, as one [B, T, 3, S, S] batch, or through
        the connector alone where the frozen tower's output is kept (`AdapterBase._encode_reusing_tower`)."""
        features: list[torch.Tensor | None] = [None] * len(prompts)
        by_frames: dict[int, list[int]] = {}
        for i, prompt in enumerate(prompts):
            if "pixel_values_videos" in prompt.inputs:
                by_frames.setdefault(prompt.inputs["pixel_values_videos"].shape[1], []).append(i)
        for having in by_frames.values():
            pixels = [prompts[i].inputs["pixel_values_videos"] for i in having]  # [1, T, 3, S, S] each
            for i, video in zip(having, self._same_length_video_features(model, pixels)):
                features[i] = video
        return features

    def _same_length_video_features(self, model: TinyLlavaVideoForConditionalGeneration,
                                    pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Connector embeddings [num_queries, D] of videos with one frame count ([1, T, 3, S, S] each)."""

        def encode(chosen: list[int], keep: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            inputs: list[torch.Tensor] = []  # the connector's input [B, T*P, D_vision]: the tower's output
            hook = model.connector.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
            try:
                videos = model.get_video_features(torch.cat([pixels[k] for k in chosen]).to(model.device))
            finally:
                hook.remove()
            return list(videos), list(inputs[0]) if keep else []  # [num_queries, D], [T*P, D_vision] each

        def connect(towers: list[torch.Tensor]) -> list[torch.Tensor]:
            return list(model.connector(torch.stack(towers)))  # [num_queries, D] each

        return self._encode_reusing_tower(model, pixels, encode, connect)

    def pack(self, model: TinyLlavaVideoForConditionalGeneration, prompts: list[EncodedPrompt],
             row_prompt: list[int]) -> PackedRows:
        """Rows [N, Lp] `[pad, text before, video, text after]`, the placeholder replaced by the prompt's video
        embeddings; each distinct prompt is embedded once and gathered to its rows. No positions: the model counts
        them from the attention mask."""
        used = sorted(set(row_prompt))
        embed = model.get_input_embeddings()
        sequences = []
        for i, video in zip(used, self._video_features(model, [prompts[i] for i in used])):
            ids = prompts[i].inputs["input_ids"][0].to(model.device)  # [L_i]
            is_video = ids == self.image_token_index
            text = embed(ids.masked_fill(is_video, 0))  # [L_i, D]; the placeholder's row is dropped
            if video is None:
                sequences.append(text)
            else:
                p = int(is_video.nonzero()[0, 0])
                sequences.append(torch.cat([text[:p], video.to(text.dtype), text[p + 1:]]))  # [L_i + N - 1, D]
        lp = max(seq.shape[0] for seq in sequences)
        first = sequences[0]  # the embedding's weight may be an FSDP shard here: shape and dtype from its output
        embeds = first.new_zeros(len(sequences), lp, first.shape[1])  # [P, Lp, D]
        mask = torch.zeros(len(sequences), lp, dtype=torch.long, device=model.device)  # [P, Lp]
        for k, seq in enumerate(sequences):
            embeds[k, lp - seq.shape[0]:] = seq
            mask[k, lp - seq.shape[0]:] = 1
        rows = torch.tensor([used.index(i) for i in row_prompt], device=model.device)  # [N]
        return PackedRows(inputs_embeds=embeds[rows], attention_mask=mask[rows], position_ids=None, prompt_length=lp)


def load_tinyllava_adapter(
    path: str | Path,
    *,
    frames: FrameRule = TINYLLAVA_FRAMES,
    dtype: torch.dtype | None = None,
    device: str = "cpu",
    system: str | None = None,
    frame_cache_size: int = 256,
) -> TinyLlavaAdapter:
    """The adapter over a TinyLLaVA-Video checkpoint in either layout (framethink's or the released one)."""
    model, tokenizer = load_tinyllava(path, dtype=dtype)
    return TinyLlavaAdapter(model.to(device), tokenizer, frames=frames, system=system,
                            frame_cache_size=frame_cache_size, name=Path(path).name)
