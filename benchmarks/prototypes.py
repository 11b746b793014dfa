"""Two further fast paths for the Qwen2.5-VL adapter, as adapter subclasses the benchmarks measure.

PrefixSharingAdapter
    The G (+ G~) rows of a prompt share its whole prompt: vision tokens and text. The released adapter runs the
    prompt through the LM once per ROW (prefill of N = B*G rows; every log-prob forward again over N rows).
    Here the prompt runs once per PROMPT, its KV cache is gathered to the rows (`Cache.reorder_cache`, an
    index_select that autograd follows), and only the completion tokens run per row. Same numbers up to
    float rounding (checked by tests/test_benchmarks_smoke.py), prompt work divided by G. transformers drops the
    KV cache in a training forward under gradient checkpointing, so there the policy forward keeps the
    released per-row path.

FrozenTowerAdapter
    With the vision tower frozen (SPEC 6), its output for a clip is the same in the rollout, the reference
    forward and the policy forward of a step: the policy and the reference model hold identical frozen towers.
    The tower output of each prompt's pixels is kept (bounded, keyed by the pixel tensor) and only the merger
    (the trainable connector, Video-R1 trains it) runs again per forward.

draw_inverse_cdf
    The sampling draw with one uniform number per row instead of torch.multinomial on the CPU.

decode_by_keyframes
    Frame decoding that jumps from keyframe to keyframe instead of decoding the whole clip up to the last
    sampled frame.
"""
from __future__ import annotations

import bisect
from collections import OrderedDict
from pathlib import Path

import av
import numpy as np
import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.vision_utils import get_vision_window_index

from framethink.models.adapter import Decoding, EncodedPrompt
from framethink.models.qwen_vl import PackedRows, QwenVLAdapter
from framethink.models.sampling import Completions, sample_completions

TOWER_CACHE_SIZE = 64  # prompts whose tower output is kept: a step's ordered and shuffled clips, with room


class PrefixSharingAdapter(QwenVLAdapter):
    """Prompt prefill once per prompt, KV cache gathered to the rows, in generation and in log-prob forwards."""

    def _prefill(self, model: PreTrainedModel, prompts: list[EncodedPrompt], row_prompt: list[int],
                 cache: DynamicCache) -> tuple[torch.Tensor, PackedRows, torch.Tensor]:
        """Run each used prompt once; leave the rows' KV in `cache`. -> (logits [N, V] at the last prompt
        position, the prompts' PackedRows [P, Lp], the prompt index of each row [N])."""
        used = sorted(set(row_prompt))
        local = {p: k for k, p in enumerate(used)}
        rows = torch.tensor([local[p] for p in row_prompt], device=model.device)  # [N] -> packed prompt rows
        packed = self.pack(model, prompts, used)  # [P, Lp]
        out = model(inputs_embeds=packed.inputs_embeds, attention_mask=packed.attention_mask,
                    position_ids=packed.position_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache.reorder_cache(rows)  # [P, H, Lp, d] -> [N, H, Lp, d]
        return out.logits[:, -1][rows], packed, rows

    @torch.no_grad()
    def generate(self, prompts: list[EncodedPrompt], row_prompt: list[int], decoding: Decoding, *,
                 generator: torch.Generator | None = None) -> Completions:
        model = self.model
        cache = DynamicCache()
        first, packed, rows = self._prefill(model, prompts, row_prompt, cache)
        attention = packed.attention_mask[rows]  # [N, Lp]
        position = packed.position_ids.amax(-1, keepdim=True)[:, rows]  # [3, N, 1]

        def step(tokens: torch.Tensor | None) -> torch.Tensor:
            nonlocal attention, position
            if tokens is None:
                return first
            attention = torch.cat([attention, torch.ones_like(attention[:, :1])], dim=1)
            position = position + 1
            out = model(input_ids=tokens.to(model.device).unsqueeze(-1), attention_mask=attention,
                        position_ids=position, past_key_values=cache, use_cache=True)
            return out.logits[:, -1]

        return sample_completions(step, len(row_prompt), decoding, eos_ids=self.eos_ids, pad_id=self.pad_id,
                                  suppress_ids=self.suppress_ids, generator=generator)

    def completion_logprobs(self, prompts: list[EncodedPrompt], row_prompt: list[int], completion_ids: torch.Tensor,
                            *, model: PreTrainedModel | None = None) -> torch.Tensor:
        model = model or self.model
        if model.training and model.is_gradient_checkpointing:
            # transformers drops past_key_values under gradient checkpointing: the rows would lose their prompt
            return super().completion_logprobs(prompts, row_prompt, completion_ids, model=model)
        completion_ids = completion_ids.to(model.device)
        t = completion_ids.shape[1]
        cache = DynamicCache()
        first, packed, rows = self._prefill(model, prompts, row_prompt, cache)  # first predicts token 0
        logits = [first.unsqueeze(1)]  # [N, 1, V]
        if t > 1:
            attention = torch.cat([packed.attention_mask[rows], torch.ones_like(completion_ids)], dim=1)  # [N, Lp+T]
            start = packed.position_ids.amax(-1, keepdim=True)[:, rows]  # [3, N, 1]
            positions = start + torch.arange(1, t, device=model.device)  # [3, N, T-1]
            logits.append(model(input_ids=completion_ids[:, :-1], attention_mask=attention[:, :-1],
                                position_ids=positions, past_key_values=cache, use_cache=True).logits)
        logits = torch.cat(logits, 1).float()  # [N, T, V]: position j predicts completion token j
        return torch.log_softmax(logits, -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)


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


class FastAdapter(PrefixSharingAdapter, FrozenTowerAdapter):
    """Both prototypes together."""


def convert(adapter: QwenVLAdapter, cls: type[QwenVLAdapter]) -> QwenVLAdapter:
    """The same adapter (model, tokenizer, processor, frame cache) as an instance of prototype class `cls`."""
    out = cls.__new__(cls)
    out.__dict__.update(adapter.__dict__)
    if issubclass(cls, FrozenTowerAdapter):
        out._towers, out.tower_cache_size = OrderedDict(), TOWER_CACHE_SIZE
    return out


def decode_by_keyframes(path: str | Path, indices: np.ndarray) -> np.ndarray:
    """Frames at `indices` [T] of a video -> [T, H, W, 3] uint8, decoding only from the keyframe before each
    wanted frame: a packet scan (no decoding) lists the keyframes, and decoding jumps to the keyframe before the
    next wanted frame whenever that keyframe lies past the current position (what decord does). framethink's
    `sample_frames` decodes every frame up to the last wanted one, which costs the whole clip on long videos."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps, base, origin = float(stream.average_rate), stream.time_base, stream.start_time or 0
        keys = sorted((round(float((p.pts - origin) * base) * fps), p.pts)
                      for p in container.demux(stream) if p.is_keyframe and p.pts is not None)
    key_index = [k for k, _ in keys]
    kept: dict[int, np.ndarray] = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        position, frames = -1, None  # index of the last decoded frame
        for target in sorted(set(indices.tolist())):
            key, pts = keys[bisect.bisect_right(key_index, target) - 1]
            if key > position:  # jumping to the keyframe beats decoding up to it
                container.seek(pts, stream=stream)
                frames = container.decode(stream)
            for frame in frames:
                position = round(float((frame.pts - origin) * base) * fps)
                if position == target:
                    kept[target] = frame.to_ndarray(format="rgb24")
                    break
    return np.stack([kept[i] for i in indices.tolist()])


def draw_inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row of `probs` [N, V] -> [N], on `probs`' device: u ~ U(0, 1) per row from the (CPU)
    generator, token = first index whose cumulative probability exceeds u * total. Exactly the categorical
    distribution, from N random numbers instead of the N * V that `torch.multinomial` draws on the CPU
    (`sample_completions` copies the probabilities to the CPU and draws there, every token)."""
    u = torch.rand(probs.shape[0], 1, generator=generator, dtype=torch.float64).to(probs.device)  # [N, 1]
    cdf = probs.double().cumsum(-1)  # [N, V]
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_max(probs.shape[-1] - 1).squeeze(-1)
