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

from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
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
from framethink.errors import ConfigError
from framethink.models.adapter import EncodedPrompt
from framethink.models.base import TOWER_CACHE_SIZE, AdapterBase, PackedRows
from framethink.models.qwen3_vl.inputs import Qwen3VisionProcessor, VideoClip, build_qwen3_inputs
from framethink.models.qwen3_vl.positions import qwen3_position_ids
from framethink.models.qwen_vl.adapter import VISION_SPECIAL_TOKENS
from framethink.models.qwen_vl.inputs import read_json_object

QWEN3_MODEL_CLASSES: dict[str, type[PreTrainedModel]] = {
    "qwen3_vl": Qwen3VLForConditionalGeneration,
    "qwen3_vl_moe": Qwen3VLMoeForConditionalGeneration,
    "qwen3_5": Qwen3_5ForConditionalGeneration,
    "qwen3_5_moe": Qwen3_5MoeForConditionalGeneration,
}
THINKING_OPENER = "<think>\n"  # what Qwen3.5's generation prompt ends with in thinking mode
# The video processor's own sampling: 2 fps, 4 to 768 frames (recipes and `eval --frames` cap it)
QWEN3_FRAMES = FrameRule(rule="qwen3", fps=2.0, min_frames=4, max_frames=768)

# One prompt's visual features: the merged tokens [n, D] and the DeepStack features (one [n, D] per LM layer fed)
Features = tuple[torch.Tensor, list[torch.Tensor]]


class Qwen3VLAdapter(AdapterBase):
    """Qwen3-VL / Qwen3.5 (and their MoE variants) behind the `PolicyAdapter` interface."""

    default_template = "video-r1-eval"

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
        super().__init__(model, tokenizer, frames=frames, frame_cache_size=frame_cache_size,
                         tower_cache_size=tower_cache_size, name=name)
        self.processor, self.system = processor, system
        self.eos_ids = sorted({tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} - {None})
        self.end_of_turn_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.suppress_ids = [i for i in tokenizer.convert_tokens_to_ids(list(VISION_SPECIAL_TOKENS)) if i is not None]
        self.thinking_opener = tokenizer(THINKING_OPENER, add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ parameters
    @staticmethod
    def _connectors(visual: torch.nn.Module) -> list[torch.nn.Module]:
        """The merger and, on Qwen3-VL, the DeepStack mergers: what turns the tower's hidden states into LM inputs."""
        return [visual.merger, *getattr(visual, "deepstack_merger_list", ())]

    def parameter_groups(self, model: PreTrainedModel | None = None) -> dict[str, list[torch.nn.Parameter]]:
        """Parameters by part: the vision tower, the connector (merger and DeepStack mergers) and the language
        model (with the output head)."""
        model = model or self.model
        visual = model.model.visual
        connector = [p for m in self._connectors(visual) for p in m.parameters()]
        connector_ids = {id(p) for p in connector}
        vision = [p for p in visual.parameters() if id(p) not in connector_ids]
        vision_ids = {id(p) for p in visual.parameters()}
        lm = [p for p in model.parameters() if id(p) not in vision_ids]
        return {"vision": vision, "connector": connector, "lm": lm}

    def fsdp_units(self) -> list[torch.nn.Module]:
        """Each decoder layer (full and linear attention alike) and vision block, the mergers (called alone where
        the frozen tower's output is kept) and the vision tower (called by `pack`, outside the model's forward)."""
        visual = self.model.model.visual
        return [*self.model.model.language_model.layers, *visual.blocks, *self._connectors(visual), visual]

    def save_pretrained(self, out: Path) -> None:
        """Model, tokenizer and processor configs (with the pixel bounds in use), in the released layout."""
        out = Path(out)
        self.model.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        self.processor.save_pretrained(out)

    # ------------------------------------------------------------------ encoding
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

    # ------------------------------------------------------------------ forward
    def _tower_weights(self, model: PreTrainedModel) -> list[torch.Tensor]:
        """Parameters and buffers of the vision tower without its mergers: what the tower's output depends on."""
        visual = model.model.visual
        merger = {id(t) for m in self._connectors(visual) for t in chain(m.parameters(), m.buffers())}
        return [t for t in chain(visual.parameters(), visual.buffers()) if id(t) not in merger]

    def _vision_features(self, model: PreTrainedModel, prompts: list[EncodedPrompt], kind: str) -> list[Features | None]:
        """Visual features per prompt (None for prompts without `kind`), from ONE vision-encoder call over the
        batch's prompts, or only the mergers where the frozen tower's output is kept."""
        pixels_key, grid_key = ("pixel_values", "image_grid_thw") if kind == "image" else ("pixel_values_videos", "video_grid_thw")
        having = [i for i, p in enumerate(prompts) if pixels_key in p.inputs]
        features: list[Features | None] = [None] * len(prompts)
        if not having:
            return features
        visual = model.model.visual
        unit = visual.spatial_merge_size**2
        connectors = self._connectors(visual)

        def encode(chosen: list[int], keep: bool) -> tuple[list[Features], list[tuple[torch.Tensor, ...]]]:
            pixels = torch.cat([prompts[having[k]].inputs[pixels_key] for k in chosen]).to(visual.device, visual.dtype)
            grids = torch.cat([prompts[having[k]].inputs[grid_key] for k in chosen]).to(visual.device)  # [n, 3]
            inputs: dict[torch.nn.Module, torch.Tensor] = {}  # each merger's input: the tower's hidden states
            hooks = [m.register_forward_pre_hook(lambda module, args: inputs.__setitem__(module, args[0]))
                     for m in (connectors if keep else [])]
            try:
                out = visual(pixels, grid_thw=grids)
            finally:
                for hook in hooks:
                    hook.remove()
            tokens = (grids.prod(-1) // unit).tolist()
            merged = torch.split(out.pooler_output, tokens)
            stacks = [torch.split(f, tokens) for f in (getattr(out, "deepstack_features", None) or [])]
            encoded = [(merged[k], [layer[k] for layer in stacks]) for k in range(len(chosen))]
            if not keep:
                return encoded, []
            patches = grids.prod(-1).tolist()
            towers = list(zip(*(torch.split(inputs[m], patches) for m in connectors)))  # one tuple per prompt
            return encoded, towers

        def connect(towers: list[tuple[torch.Tensor, ...]]) -> list[Features]:
            tokens = [len(t[0]) // unit for t in towers]
            outs = [torch.split(m(torch.cat([t[j] for t in towers])), tokens) for j, m in enumerate(connectors)]
            return [(outs[0][k], [out[k] for out in outs[1:]]) for k in range(len(towers))]

        pixels = [prompts[i].inputs[pixels_key] for i in having]
        for i, feature in zip(having, self._encode_reusing_tower(model, pixels, encode, connect)):
            features[i] = feature
        return features

    def pack(self, model: PreTrainedModel, prompts: list[EncodedPrompt], row_prompt: list[int]) -> PackedRows:
        """Rows `[left-pad, prompt(row_prompt[i])]` embedded with the visual tokens scattered in, their interleaved
        M-RoPE positions [3, N, Lp], and (Qwen3-VL) the DeepStack features of their visual positions. Vision runs
        once per prompt; its features are shared by the prompt's rows."""
        device = model.device
        used = sorted(set(row_prompt))
        lp = max(prompts[i].inputs["input_ids"].shape[1] for i in used)
        input_ids = torch.full((len(used), lp), self.pad_id, dtype=torch.long)  # [P, Lp]: one row per prompt
        attention = torch.zeros((len(used), lp), dtype=torch.long)
        types = torch.zeros((len(used), lp), dtype=torch.long)
        for k, i in enumerate(used):
            ids = prompts[i].inputs["input_ids"][0]
            input_ids[k, lp - len(ids):] = ids
            attention[k, lp - len(ids):] = 1
            types[k, lp - len(ids):] = prompts[i].inputs["mm_token_type_ids"][0]
        grids = {key: [prompts[i].inputs[key] for i in used if key in prompts[i].inputs]
                 for key in ("image_grid_thw", "video_grid_thw")}
        positions = qwen3_position_ids(  # [3, P, Lp], once per prompt
            types, attention, *(torch.cat(g) if g else None for g in grids.values()),
            merge_size=self.processor.merge_size)
        rows = torch.tensor([used.index(i) for i in row_prompt])  # [N] the packed prompt of each row
        input_ids, attention, types = input_ids[rows].to(device), attention[rows].to(device), types[rows].to(device)

        embeds = model.get_input_embeddings()(input_ids)  # [N, Lp, D]
        by_prompt: dict[int, Features] = {}  # each prompt's one medium
        for kind, type_id in (("image", 1), ("video", 2)):
            features = self._vision_features(model, prompts, kind)
            by_prompt.update((i, f) for i, f in enumerate(features) if f is not None)
            per_row = [features[i] for i in row_prompt if features[i] is not None]
            if per_row:
                mask = (types == type_id).unsqueeze(-1).expand_as(embeds)
                embeds = embeds.masked_scatter(mask, torch.cat([merged for merged, _ in per_row]).to(embeds.dtype))
        # DeepStack: per LM layer, the rows' features in the row-major order of their visual positions
        stacked = [by_prompt[i][1] for i in row_prompt if i in by_prompt and by_prompt[i][1]]
        deepstack = [torch.cat(layer).to(embeds.dtype) for layer in zip(*stacked)] if stacked else None
        return PackedRows(inputs_embeds=embeds, attention_mask=attention, position_ids=positions[:, rows].to(device),
                          prompt_length=lp, visual_pos_masks=types != 0 if deepstack else None,
                          deepstack_visual_embeds=deepstack)

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


def load_qwen3(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    vision_overrides: dict[str, Any] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Qwen3VisionProcessor]:
    """Model (in eval mode), tokenizer and vision processor of the Qwen3-VL / Qwen3.5 checkpoint at `path`;
    `vision_overrides` are `Qwen3VisionProcessor` fields (e.g. `video_max_pixels`). ConfigError for a missing
    directory or file, or a model type of another family."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{path}: no config.json; not a model checkpoint directory")
    model_type = read_json_object(path / "config.json").get("model_type")
    if model_type not in QWEN3_MODEL_CLASSES:
        raise ConfigError(f"{path / 'config.json'}: model_type '{model_type}' is not a Qwen3-VL / Qwen3.5 type "
                          f"({', '.join(QWEN3_MODEL_CLASSES)})")
    if not any((path / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise ConfigError(f"{path}: no tokenizer.json (or vocab.json + merges.txt)")
    processor = Qwen3VisionProcessor.from_pretrained(path, **(vision_overrides or {}))
    try:
        model = QWEN3_MODEL_CLASSES[model_type].from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:  # transformers reports missing weight or tokenizer files as OSError
        raise ConfigError(f"{path}: cannot load the {model_type} checkpoint: {err}") from err
    return model.to(device).eval(), tokenizer, processor


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
    model, tokenizer, processor = load_qwen3(path, dtype=dtype, device=device, vision_overrides=vision_overrides)
    return Qwen3VLAdapter(model, tokenizer, processor, frames=frames, system=system,
                          frame_cache_size=frame_cache_size, name=Path(path).name)
