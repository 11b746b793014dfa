"""Policy adapter for Qwen2-VL and Qwen2.5-VL (docs/models.md, Qwen-VL).

What is this family's own; the prefill / generate / log-prob machinery is `framethink.models.base`:
- the vision encoder runs once over the batch's prompts per forward, and while the tower is frozen only the merger
  runs again (frozen-tower reuse);
- every forward gets 3-D M-RoPE positions computed from the grids and the fps-derived `second_per_grid_ts`
  (transformers v5 silently falls back to 1-D positions without them) by the rule the released checkpoints were
  trained with (`framethink.models.qwen_vl.mrope`); completion tokens continue from their prompt's largest
  position + 1;
- the vision special tokens are never sampled (a completion holding one breaks every later forward).
"""
from __future__ import annotations

from itertools import chain
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.vision_utils import get_vision_window_index

from framethink.data.clips import FrameRule, check_frame_order
from framethink.data.prompts import build_messages
from framethink.data.records import Record
from framethink.data.video import load_image
from framethink.models.adapter import EncodedPrompt
from framethink.models.base import TOWER_CACHE_SIZE, AdapterBase, PackedRows
from framethink.models.qwen_vl.inputs import IMAGE_TOKEN, VIDEO_TOKEN, QwenVisionProcessor, build_qwen_inputs
from framethink.models.qwen_vl.loader import load_qwen_vl
from framethink.models.qwen_vl.mrope import mrope_position_ids

VISION_SPECIAL_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", IMAGE_TOKEN, VIDEO_TOKEN)
QWEN_FRAMES = FrameRule()  # the fps rule of qwen-vl-utils: 2 fps, 4 to 16 frames (docs/models.md)

# One prompt's visual features: the merged tokens [n, D] and the DeepStack features (one [n, D] per LM layer fed;
# none but on Qwen3-VL)
Features = tuple[torch.Tensor, list[torch.Tensor]]


class QwenVLAdapter(AdapterBase):
    """Qwen2-VL / Qwen2.5-VL behind the `PolicyAdapter` interface; the Qwen3-VL / Qwen3.5 adapter extends it."""

    default_template = "video-r1-eval"

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        processor: QwenVisionProcessor,
        *,
        frames: FrameRule = QWEN_FRAMES,
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
        self.tokens_per_second = getattr(model.config.vision_config, "tokens_per_second", 1)

    # ------------------------------------------------------------------ parameters
    @staticmethod
    def _connectors(visual: torch.nn.Module) -> list[torch.nn.Module]:
        """The modules that turn the vision tower's hidden states into LM inputs: the merger."""
        return [visual.merger]

    def parameter_groups(self, model: PreTrainedModel | None = None) -> dict[str, list[torch.nn.Parameter]]:
        """Parameters by part: the vision tower, the connector (the mergers) and the language model (with the output
        head)."""
        model = model or self.model
        visual = model.model.visual
        connector = [p for m in self._connectors(visual) for p in m.parameters()]
        connector_ids = {id(p) for p in connector}
        vision = [p for p in visual.parameters() if id(p) not in connector_ids]
        vision_ids = {id(p) for p in visual.parameters()}
        lm = [p for p in model.parameters() if id(p) not in vision_ids]
        return {"vision": vision, "connector": connector, "lm": lm}

    def fsdp_units(self) -> list[torch.nn.Module]:
        """Each decoder layer and vision block, the mergers (called alone where the frozen tower's output is kept)
        and the vision tower (called by `pack`, outside the model's forward)."""
        visual = self.model.model.visual
        return [*self.model.model.language_model.layers, *visual.blocks, *self._connectors(visual), visual]

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
        """Parameters and buffers of the vision tower without its mergers: what the tower's output depends on."""
        visual = model.model.visual
        merger = {id(t) for m in self._connectors(visual) for t in chain(m.parameters(), m.buffers())}
        return [t for t in chain(visual.parameters(), visual.buffers()) if id(t) not in merger]

    def _vision_features(self, model: PreTrainedModel, prompts: list[EncodedPrompt], kind: str) -> list[Features | None]:
        """Visual features per prompt (None for prompts without `kind`), from ONE vision-encoder call over the
        batch's prompts, or only the mergers where the frozen tower's output is kept
        (`AdapterBase._encode_reusing_tower`): the tower output kept per prompt is each merger's input."""
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
            merged = torch.split(out.pooler_output, tokens)  # [n_tokens, D] each
            stacks = [torch.split(f, tokens) for f in (getattr(out, "deepstack_features", None) or [])]
            encoded = [(merged[k], [layer[k] for layer in stacks]) for k in range(len(chosen))]
            if not keep:
                return encoded, []
            patches = grids.prod(-1).tolist()
            towers = [tuple(self._merge_order(visual, tower, grids[k]) for tower in per_prompt)
                      for k, per_prompt in enumerate(zip(*(torch.split(inputs[m], patches) for m in connectors)))]
            return encoded, towers  # one tuple per prompt: [patches, C] per merger

        def connect(towers: list[tuple[torch.Tensor, ...]]) -> list[Features]:
            tokens = [len(t[0]) // unit for t in towers]
            outs = [torch.split(m(torch.cat([t[j] for t in towers])), tokens) for j, m in enumerate(connectors)]
            return [(outs[0][k], [out[k] for out in outs[1:]]) for k in range(len(towers))]

        pixels = [prompts[i].inputs[pixels_key] for i in having]
        for i, feature in zip(having, self._encode_reusing_tower(model, pixels, encode, connect)):
            features[i] = feature
        return features

    @staticmethod
    def _merge_order(visual: torch.nn.Module, tower: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        """One medium's tower output [patches, C] with its merge groups in sequence order, so that
        `visual.merger(tower)` gives its visual tokens in order: Qwen2.5-VL's tower returns them in window order
        (its forward reverses that after the merger); Qwen2-VL's and Qwen3-VL's have no windows."""
        if getattr(visual, "window_size", None) is None:
            return tower
        window, _ = get_vision_window_index(grid[None].cpu(), spatial_merge_size=visual.spatial_merge_size,
                                            window_size=visual.window_size, patch_size=visual.patch_size)
        groups = tower.unflatten(0, (len(window), -1))  # [n_tokens, merge_size**2, C]
        return groups[torch.argsort(window).to(tower.device)].flatten(0, 1)  # [patches, C]

    def pack(self, model: PreTrainedModel, prompts: list[EncodedPrompt], row_prompt: list[int]) -> PackedRows:
        """Rows `[left-pad, prompt(row_prompt[i])]` embedded with the visual tokens scattered in, their M-RoPE
        positions [3, N, Lp] (`_positions`, once per prompt) and, where the model has them (Qwen3-VL), the DeepStack
        features of their visual positions. Vision runs once per prompt; its features serve all the prompt's rows."""
        device = model.device
        used = sorted(set(row_prompt))
        lp = max(prompts[i].inputs["input_ids"].shape[1] for i in used)
        input_ids = torch.full((len(used), lp), self.pad_id, dtype=torch.long)  # [P, Lp]: one row per prompt
        attention = torch.zeros((len(used), lp), dtype=torch.long)
        types = torch.zeros((len(used), lp), dtype=torch.long)  # 0 text, 1 image, 2 video
        for k, i in enumerate(used):
            ids = prompts[i].inputs["input_ids"][0]
            input_ids[k, lp - len(ids):] = ids
            attention[k, lp - len(ids):] = 1
            types[k, lp - len(ids):] = prompts[i].inputs["mm_token_type_ids"][0]
        positions = self._positions([prompts[i] for i in used], types, attention)  # [3, P, Lp]
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

    def _positions(self, prompts: list[EncodedPrompt], types: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """M-RoPE positions [3, P, Lp] of left-padded prompt rows (token types and attention mask [P, Lp])."""
        blocks = [self._row_blocks(prompt) for prompt in prompts]
        return mrope_position_ids(types, attention, [grids for grids, _ in blocks], [steps for _, steps in blocks],
                                  merge_size=self.processor.merge_size)

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


def load_qwen_vl_adapter(
    path: str | Path,
    *,
    frames: FrameRule = QWEN_FRAMES,
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
