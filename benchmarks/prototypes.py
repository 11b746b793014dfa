"""A further fast path the benchmarks measure, not yet in framethink.

FrozenTowerAdapter
    With the vision tower frozen (SPEC 6), its output for a clip is the same in the rollout, the reference
    forward and the policy forward of a step: the policy and the reference model hold identical frozen towers.
    The tower output of each prompt's pixels is kept (bounded, keyed by the pixel tensor) and only the merger
    (the trainable connector, Video-R1 trains it) runs again per forward.

(Prefix sharing, the inverse-CDF sampling draw and keyframe-seeking frame decoding, measured here first, are
framethink's default now.)
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from transformers import PreTrainedModel
from transformers.vision_utils import get_vision_window_index

from framethink.models.adapter import EncodedPrompt
from framethink.models.qwen_vl import QwenVLAdapter

TOWER_CACHE_SIZE = 64  # prompts whose tower output is kept: a step's ordered and shuffled clips, with room


class FrozenTowerAdapter(QwenVLAdapter):
    """Vision-tower output kept per prompt pixels across the forwards of a step; the merger runs per forward.
    Valid only while the tower (not the merger) is frozen and the policy and reference towers are equal."""

    def __init__(self, *args, tower_cache_size: int = TOWER_CACHE_SIZE, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._towers: OrderedDict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self.tower_cache_size = tower_cache_size

    def _vision_features(self, model: PreTrainedModel, prompts: list[EncodedPrompt], kind: str) -> list[torch.Tensor]:
        pixels_key, grid_key = {"image": ("pixel_values", "image_grid_thw"),
                                "video": ("pixel_values_videos", "video_grid_thw")}[kind]
        having = [i for i, p in enumerate(prompts) if pixels_key in p.inputs]
        features: list[torch.Tensor] = [torch.empty(0)] * len(prompts)
        if not having:
            return features
        visual = model.model.visual

        def cached(i: int) -> bool:  # the entry holds the pixel tensor itself, so its id cannot be reused
            entry = self._towers.get(id(prompts[i].inputs[pixels_key]))
            return entry is not None and entry[0] is prompts[i].inputs[pixels_key]

        missing = [i for i in having if not cached(i)]
        if missing:
            pixels = torch.cat([prompts[i].inputs[pixels_key] for i in missing]).to(visual.device, visual.dtype)
            grids = torch.cat([prompts[i].inputs[grid_key] for i in missing]).to(visual.device)  # [n, 3]
            self.vision_encoder_calls += 1
            with torch.no_grad():
                tower = visual(pixels, grid_thw=grids).last_hidden_state  # [patches, C], window order per grid
            for i, chunk, grid in zip(missing, torch.split(tower, grids.prod(-1).tolist()), grids):
                window, _ = get_vision_window_index(grid[None].cpu(), spatial_merge_size=visual.spatial_merge_size,
                                                    window_size=visual.window_size, patch_size=visual.patch_size)
                self._towers[id(prompts[i].inputs[pixels_key])] = (prompts[i].inputs[pixels_key], chunk,
                                                                   torch.argsort(window).to(chunk.device))
        for i in having:
            _, chunk, reverse = self._towers[id(prompts[i].inputs[pixels_key])]
            features[i] = visual.merger(chunk)[reverse]  # [n_tokens, D]
        while len(self._towers) > self.tower_cache_size:  # oldest first
            self._towers.popitem(last=False)
        return features


def convert(adapter: QwenVLAdapter, cls: type[QwenVLAdapter]) -> QwenVLAdapter:
    """The same adapter (model, tokenizer, processor, frame cache) as an instance of another adapter class `cls`
    (a prototype, or the benchmarks' `PerRowAdapter`)."""
    out = cls.__new__(cls)
    out.__dict__.update(adapter.__dict__)
    if issubclass(cls, FrozenTowerAdapter):
        out._towers, out.tower_cache_size = OrderedDict(), TOWER_CACHE_SIZE
    return out

