"""Policy adapter for Qwen2-VL and Qwen2.5-VL.

Three things the reference trainers get wrong are done here, once, for every caller:
- each prompt runs once per forward, whatever its number of rows (completions): the vision encoder runs once
  over the batch's prompts, the LM runs each distinct prompt once (prefix sharing) and its KV cache is
  gathered to the prompt's rows, and only the completion tokens run per row, in generation and in every
  log-prob forward; while the vision tower is frozen it runs once per prompt per step, for the policy and the
  reference model alike, and only the merger runs again in each forward (`framethink.models.common`);
- every forward gets 3-D M-RoPE positions computed from the grids and the fps-derived `second_per_grid_ts`
  (transformers v5 silently falls back to 1-D positions without them, ENVIRONMENT.md); completion tokens
  continue from their prompt's largest position + 1;
- generation is one batched, KV-cached loop for all prompts, with the vision special tokens suppressed.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.vision_utils import get_vision_window_index

from framethink.data.clips import ClipReader, FrameRule, check_frame_order
from framethink.data.prompts import build_messages
from framethink.data.records import Record
from framethink.data.video import load_image
from framethink.models.adapter import Decoding, EncodedPrompt
from framethink.models.common import TOWER_CACHE_SIZE, AdapterCommon, FrozenTowerCache
from framethink.models.loader import load_qwen_vl
from framethink.models.mrope import mrope_position_ids
from framethink.models.qwen_vision import (
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    QwenVisionProcessor,
    build_qwen_inputs,
)
from framethink.models.sampling import (
    Completions,
    completion_logprobs_from_logits,
    drops_kv_cache,
    gather_prefill,
    logprobs_after_prefill,
    sample_completions,
)

VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", IMAGE_TOKEN, VIDEO_TOKEN)


@dataclass
class PackedRows:
    """Prompt rows (left-padded) followed by completion rows (right-padded), ready for the LM."""

    inputs_embeds: torch.Tensor  # [N, L, D]
    attention_mask: torch.Tensor  # [N, L]
    position_ids: torch.Tensor  # [3, N, L] M-RoPE (time, height, width)
    prompt_length: int  # Lp: columns before the first completion token


class QwenVLAdapter(AdapterCommon):
    """Qwen2-VL / Qwen2.5-VL behind the `PolicyAdapter` interface."""

    default_template = "video-r1-eval"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        processor: QwenVisionProcessor,
        *,
        frames: FrameRule = FrameRule(),
        system: str | None = None,
        frame_cache_size: int = 256,
        tower_cache_size: int = TOWER_CACHE_SIZE,
        name: str = "",
    ) -> None:
        """`tower_cache_size`: prompts whose frozen vision-tower output is kept across the forwards of a step
        (`framethink.models.common`); 0 turns that reuse off."""
        self.model, self.tokenizer, self.processor = model, tokenizer, processor
        self.system, self.name = system, name
        self.clips = ClipReader(frames, frame_cache_size)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} - {None})
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.suppress_ids = [i for i in tokenizer.convert_tokens_to_ids(list(VISION_SPECIAL_TOKENS)) if i is not None]
        self.tokens_per_second = getattr(model.config.vision_config, "tokens_per_second", 1)
        self.vision_encoder_calls = 0  # calls of the whole encoder (tower + merger), counted for the benchmarks
        self.tower_cache = FrozenTowerCache(tower_cache_size)

    # ------------------------------------------------------------------ parameters
    def parameter_groups(self, model: PreTrainedModel | None = None) -> dict[str, list[torch.nn.Parameter]]:
        """Parameters by part: the vision tower, the connector (patch merger) and the language model."""
        model = model or self.model
        visual = model.model.visual
        merger = [p for p in visual.merger.parameters()]
        merger_ids = {id(p) for p in merger}
        vision = [p for p in visual.parameters() if id(p) not in merger_ids]
        vision_ids = {id(p) for p in visual.parameters()}
        lm = [p for p in model.parameters() if id(p) not in vision_ids]
        return {"vision": vision, "connector": merger, "lm": lm}

    def fsdp_units(self) -> list[torch.nn.Module]:
        """Each decoder layer and vision block, the merger (called alone where the frozen tower's output is kept)
        and the vision tower (called by `pack`, outside the model's forward)."""
        visual = self.model.model.visual
        return [*self.model.model.language_model.layers, *visual.blocks, visual.merger, visual]

    def save_pretrained(self, out: Path) -> None:
        """Model, tokenizer and processor configs (with the pixel bounds in use), in the Hugging Face layout."""
        out = Path(out)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        self.processor.save_pretrained(out)

    # ------------------------------------------------------------------ encoding
    def encode(self, record: Record, *, template: str, frame_order: str = "ordered", seed: int = 0) -> EncodedPrompt:
        """Decode the record's media (frames reordered as asked) and build the prompt's model inputs."""
        check_frame_order(frame_order)
        messages = build_messages(record, template, system=self.system)
        images, videos, meta = [], [], {}
        if record.media_kind == "video":
            clip = self.clips.read(record, frame_order, seed)
            videos.append((clip.frames, clip.fps))
            meta = clip.meta
        elif record.media_kind == "image":
            images.append(load_image(record.media[0]).frames[0])
        inputs = build_qwen_inputs(self.tokenizer, self.processor, messages, images=images, videos=videos)
        return EncodedPrompt(record=record, inputs=inputs, frame_order=frame_order, meta=meta)

    # ------------------------------------------------------------------ forward
    def _tower_weights(self, model: PreTrainedModel) -> list[torch.Tensor]:
        """Parameters and buffers of the vision tower without the merger: what the tower's output depends on."""
        visual = model.model.visual
        merger = {id(t) for t in chain(visual.merger.parameters(), visual.merger.buffers())}
        return [t for t in chain(visual.parameters(), visual.buffers()) if id(t) not in merger]

    def _vision_features(self, model: PreTrainedModel, prompts: list[EncodedPrompt], kind: str) -> list[torch.Tensor]:
        """Merged visual tokens per prompt ([n_tokens, D] each, empty for prompts without `kind`), from ONE
        vision-encoder call over the batch's prompts, or only the merger where the frozen tower's output is kept
        (`AdapterCommon._encode_reusing_tower`)."""
        pixels_key, grid_key = ("pixel_values", "image_grid_thw") if kind == "image" else ("pixel_values_videos", "video_grid_thw")
        having = [i for i, p in enumerate(prompts) if pixels_key in p.inputs]
        features: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        if not having:
            return features
        visual = model.model.visual
        unit = visual.spatial_merge_size**2

        def encode(chosen: list[int], keep: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
            pixels = torch.cat([prompts[having[k]].inputs[pixels_key] for k in chosen]).to(visual.device, visual.dtype)
            grids = torch.cat([prompts[having[k]].inputs[grid_key] for k in chosen]).to(visual.device)  # [n, 3]
            out = visual(pixels, grid_thw=grids)
            merged = list(torch.split(out.pooler_output, (grids.prod(-1) // unit).tolist()))  # [n_tokens, D] each
            if not keep:
                return merged, []
            towers = torch.split(out.last_hidden_state, grids.prod(-1).tolist())  # [patches, C] each
            return merged, [self._merge_order(visual, tower, grid) for tower, grid in zip(towers, grids)]

        def connect(towers: list[torch.Tensor]) -> list[torch.Tensor]:
            return list(torch.split(visual.merger(torch.cat(towers)), [len(t) // unit for t in towers]))

        pixels = [prompts[i].inputs[pixels_key] for i in having]
        for i, feature in zip(having, self._encode_reusing_tower(model, pixels, encode, connect)):
            features[i] = feature
        return features

    @staticmethod
    def _merge_order(visual: torch.nn.Module, tower: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """One medium's tower output [patches, C] with its merge groups in sequence order, so that
        `visual.merger(tower)` gives its visual tokens in order: Qwen2.5-VL's tower returns them in window order
        (its forward reverses that after the merger); Qwen2-VL's has no windows."""
        if getattr(visual, "window_size", None) is None:
            return tower
        window, _ = get_vision_window_index(grid[None].cpu(), spatial_merge_size=visual.spatial_merge_size,
                                            window_size=visual.window_size, patch_size=visual.patch_size)
        groups = tower.unflatten(0, (len(window), -1))  # [n_tokens, merge_size**2, C]
        return groups[torch.argsort(window).to(tower.device)].flatten(0, 1)  # [patches, C]

    def pack(
        self,
        model: PreTrainedModel,
        prompts: list[EncodedPrompt],
        row_prompt: list[int],
        completion_ids: torch.Tensor | None = None,
    ) -> PackedRows:
        """Embed rows `[left-pad, prompt(row_prompt[i]), completion_ids[i]]` with vision features scattered in.

        Vision features are computed once per prompt and shared by all its rows.
        """
        device = model.device
        n = len(row_prompt)
        t = 0 if completion_ids is None else completion_ids.shape[1]
        lp = max(prompts[i].inputs["input_ids"].shape[1] for i in set(row_prompt))
        input_ids = torch.full((n, lp + t), self.pad_id, dtype=torch.long)  # [N, L]
        attention = torch.zeros((n, lp + t), dtype=torch.long)
        types = torch.zeros((n, lp + t), dtype=torch.long)  # completion tokens are text (0)
        for row, i in enumerate(row_prompt):
            ids = prompts[i].inputs["input_ids"][0]
            input_ids[row, lp - len(ids):lp] = ids
            attention[row, lp - len(ids):lp] = 1
            types[row, lp - len(ids):lp] = prompts[i].inputs["mm_token_type_ids"][0]
        if completion_ids is not None:
            input_ids[:, lp:] = completion_ids
            attention[:, lp:] = 1
        input_ids, attention, types = input_ids.to(device), attention.to(device), types.to(device)

        embeds = model.get_input_embeddings()(input_ids)  # [N, L, D]
        for kind, type_id in (("image", 1), ("video", 2)):
            features = self._vision_features(model, prompts, kind)
            rows = [features[i] for i in row_prompt if features[i].numel()]
            if rows:
                mask = (types == type_id).unsqueeze(-1).expand_as(embeds)
                embeds = embeds.masked_scatter(mask, torch.cat(rows).to(embeds.dtype))
        blocks = {i: self._row_blocks(prompts[i]) for i in set(row_prompt)}  # once per prompt, not per row
        positions = mrope_position_ids(
            types.cpu(), attention.cpu(), [blocks[i][0] for i in row_prompt], [blocks[i][1] for i in row_prompt],
            merge_size=self.processor.merge_size,
        ).to(device)  # [3, N, L]
        return PackedRows(inputs_embeds=embeds, attention_mask=attention, position_ids=positions, prompt_length=lp)

    def _row_blocks(self, prompt: EncodedPrompt) -> tuple[list[torch.Tensor], list[float]]:
        """Grids and temporal steps of a prompt's vision blocks in sequence order (one medium per prompt)."""
        if "video_grid_thw" in prompt.inputs:
            grids = list(prompt.inputs["video_grid_thw"])
            if "second_per_grid_ts" in prompt.inputs:  # Qwen2.5-VL: time in seconds
                steps = [float(s) * self.tokens_per_second for s in prompt.inputs["second_per_grid_ts"]]
            else:  # Qwen2-VL: one position per temporal grid
                steps = [1.0] * len(grids)
            return grids, steps
        if "image_grid_thw" in prompt.inputs:
            grids = list(prompt.inputs["image_grid_thw"])
            return grids, [1.0] * len(grids)
        return [], []

    def _prefill(
        self, model: PreTrainedModel, prompts: list[EncodedPrompt], row_prompt: list[int], cache: DynamicCache
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run each distinct prompt of the rows through `model` once and gather its KV cache in `cache` to its rows.

        -> (logits [N, V] at each row's last prompt position, the rows' prompt attention mask [N, Lp], each row's
        largest prompt position [3, N, 1], from which its completion continues).
        """
        used = sorted(set(row_prompt))
        packed = self.pack(model, prompts, used)  # [P, Lp]: one row per distinct prompt
        out = model(
            inputs_embeds=packed.inputs_embeds, attention_mask=packed.attention_mask,
            position_ids=packed.position_ids, past_key_values=cache, use_cache=True, logits_to_keep=1,
        )
        rows = gather_prefill(cache, used, row_prompt, model.device)  # [N] packed row of each row
        last = packed.position_ids.amax(-1, keepdim=True)  # [3, P, 1]
        return out.logits[:, -1][rows], packed.attention_mask[rows], last[:, rows]

    def completion_logprobs(
        self,
        prompts: list[EncodedPrompt],
        row_prompt: list[int],
        completion_ids: torch.Tensor,
        *,
        model: PreTrainedModel | None = None,
    ) -> torch.Tensor:
        """Log-probabilities [N, T] of `completion_ids` [N, T] under `model` (default: the policy).

        The prompts run once each (`_prefill`), then the completion tokens of all rows in one forward.
        """
        model = model or self.model
        if drops_kv_cache(model):
            return self._completion_logprobs_per_row(model, prompts, row_prompt, completion_ids)
        completion_ids = completion_ids.to(model.device)  # [N, T]
        cache = DynamicCache()
        first, attention, last = self._prefill(model, prompts, row_prompt, cache)  # [N, V], [N, Lp], [3, N, 1]

        def forward(inputs: torch.Tensor) -> torch.Tensor:  # [N, T-1] -> logits [N, T-1, V]
            return model(
                input_ids=inputs, attention_mask=torch.cat([attention, torch.ones_like(inputs)], dim=1),
                position_ids=last + torch.arange(1, inputs.shape[1] + 1, device=model.device),
                past_key_values=cache, use_cache=True,
            ).logits

        return logprobs_after_prefill(first, completion_ids, forward)  # [N, T]

    def _completion_logprobs_per_row(
        self, model: PreTrainedModel, prompts: list[EncodedPrompt], row_prompt: list[int], completion_ids: torch.Tensor
    ) -> torch.Tensor:
        """`completion_logprobs` with every row carrying its whole prompt through the LM, in one forward without a
        KV cache: the path for a training forward under gradient checkpointing (vision still once per prompt)."""
        packed = self.pack(model, prompts, row_prompt, completion_ids.to(model.device))  # [N, Lp+T]
        logits = model(
            inputs_embeds=packed.inputs_embeds,
            attention_mask=packed.attention_mask,
            position_ids=packed.position_ids,
            logits_to_keep=completion_ids.shape[1] + 1,
            use_cache=False,
        ).logits  # [N, T+1, V]
        return completion_logprobs_from_logits(logits, completion_ids)

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        prompts: list[EncodedPrompt],
        row_prompt: list[int],
        decoding: Decoding,
        *,
        generator: torch.Generator | None = None,
    ) -> Completions:
        """Sample one completion per row (row i continues prompt `row_prompt[i]`), all rows in one batch; each
        prompt is prefilled once."""
        model = self.model
        cache = DynamicCache()
        first, attention, position = self._prefill(model, prompts, row_prompt, cache)  # [N, V], [N, Lp], [3, N, 1]

        def step(tokens: torch.Tensor | None) -> torch.Tensor:
            nonlocal attention, position
            if tokens is None:
                return first
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)  # [N, L+1]
            position = position + 1  # [3, N, 1]
            out = model(
                input_ids=tokens.to(model.device).unsqueeze(-1), attention_mask=attention, position_ids=position,
                past_key_values=cache, use_cache=True,
            )
            return out.logits[:, -1]  # [N, V]

        return sample_completions(
            step, len(row_prompt), decoding, eos_ids=self.eos_ids, pad_id=self.pad_id,
            suppress_ids=self.suppress_ids, generator=generator,
        )



def load_qwen_vl_adapter(
    path: str | Path,
    *,
    frames: FrameRule = FrameRule(),
    vision_overrides: dict | None = None,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    system: str | None = None,
    frame_cache_size: int = 256,
) -> QwenVLAdapter:
    model, tokenizer, processor = load_qwen_vl(path, dtype=dtype, device=device, vision_overrides=vision_overrides)
    return QwenVLAdapter(
        model, tokenizer, processor, frames=frames, system=system, frame_cache_size=frame_cache_size,
        name=Path(path).name,
    )


