"""The machinery every model family shares, written once: prefix sharing (each distinct prompt through the LM once,
its cache gathered to the prompt's rows), generation, completion log-probs, the per-row path under gradient
checkpointing, decoding completions to text, and the reuse of a frozen vision tower's output. A family's adapter
subclasses `AdapterBase` and supplies only what is its own: how a record becomes model inputs (`encode`), how prompt
rows become LM inputs (`pack`), its parameter groups, FSDP units and LoRA targets (docs/models.md).

Prefix sharing. A batch holds N rows, row i continuing prompt `row_prompt[i]`. Each distinct prompt runs through the
LM once (one left-padded row per prompt), and the cache the LM filled (attention KV and, for hybrid models, the
linear-attention recurrent and convolution states) is gathered to the rows with an index_select that autograd follows,
so the rows of a prompt share its prefill, gradients included. Then the completion tokens of all rows run in one
forward on that cache. A training forward under gradient checkpointing keeps no cache in transformers: there every
row carries its whole prompt through the LM in one forward (the vision encoder still runs once per prompt).

Frozen-tower reuse. In one RL step the vision encoder sees each prompt's pixels in the rollout, the old-policy
forward, the reference forward and the policy forward. While the tower is frozen its output for those pixels
is the same every time, so it is computed once and kept; only the connector (Qwen-VL's merger, TinyLLaVA's
resampler), which may train, runs again in each forward. A forward with model M reuses kept tower outputs when
  1. reuse is on (`tower_cache_size` > 0),
  2. no parameter of the policy's tower requires grad (freeze_vision; under LoRA, no LoRA module in the tower),
  3. no parameter of M's tower requires grad, and
  4. M's tower holds the policy tower's weights: M is the policy, or M's tower tensors were compared equal to the
     policy's by value (the reference model: a copy of the initial policy, whose frozen tower never moved; not
     under ZeRO-3 or FSDP, where a process holds only partitions), and neither tower's tensors have been replaced or
     modified in place since (tensor version counters and storage pointers), else they are compared again.
Otherwise the forward runs exactly as without reuse: the whole encoder over all its prompts. A trainable tower
therefore never reuses anything, and its gradients flow as before. A family whose tower output feeds the LM in
more than one place (Qwen3-VL's DeepStack features) keeps all of it per prompt, so every forward gets it all.
"""
from __future__ import annotations

import inspect
import weakref
from abc import ABC, abstractmethod
from types import MethodType
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor
from transformers import DynamicCache, LlamaForCausalLM

from framethink.data.clips import ClipReader, FrameRule
from framethink.models.adapter import Decoding, EncodedPrompt
from framethink.models.sampling import (
    Completions,
    TokenCallback,
    completion_logprobs_from_logits,
    decode_completions,
    drops_kv_cache,
    gather_prefill,
    logprobs_after_prefill,
    sample_completions,
)

TOWER_CACHE_SIZE = 64  # prompts whose tower output is kept: a step's ordered and shuffled clips, with room


class TowerState:
    """The tensors of a vision tower (held weakly) and what tells an in-place change or a swap apart: the version
    counter and storage pointer of each."""

    def __init__(self, weights: list[torch.Tensor]) -> None:
        self.refs = [weakref.ref(w) for w in weights]
        self.marks = [(w._version, w.data_ptr()) for w in weights]

    def holds(self, weights: list[torch.Tensor]) -> bool:
        """True when `weights` are these very tensors, unchanged since."""
        return len(weights) == len(self.refs) and all(
            ref() is w and mark == (w._version, w.data_ptr()) for ref, mark, w in zip(self.refs, self.marks, weights))


def same_values(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    """Whether two towers' tensors hold the same values. A ZeRO-3 partition (DeepSpeed marks it `ds_id`) or an FSDP
    shard (a DTensor) holds no whole values here to compare, so a partitioned tower is never taken for equal."""
    if any(hasattr(t, "ds_id") or isinstance(t, DTensor) for t in (*a, *b)):
        return False
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and x.device == y.device and torch.equal(x, y) for x, y in zip(a, b))


def _owned(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, or a copy of it if it is a view (which would keep its whole batch's storage alive)."""
    return tensor if tensor._base is None else tensor.clone()


class FrozenTowerCache:
    """Outputs of the policy's frozen vision tower per prompt pixel tensor, bounded (least recently used go first).

    An entry is keyed by the identity of the pixel tensor and holds it only weakly: it goes when the prompt's
    pixels are freed (the step's shuffled clips right after the rollout, earlier steps' prompts when their
    rollout goes), so only live prompts hold tower outputs, and a freed tensor's id never finds a stale entry."""

    def __init__(self, size: int = TOWER_CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple[weakref.ref, Any]] = OrderedDict()
        self._policy: TowerState | None = None  # the policy tower the entries came from
        self._checked: list[tuple[TowerState, bool]] = []  # other towers compared with it, and the verdict

    def reusable(self, policy: list[torch.Tensor], tower: list[torch.Tensor]) -> bool:
        """Whether a forward whose tower tensors are `tower` may use and fill the entries, the policy's tower
        tensors being `policy` (the conditions of the module docstring)."""
        if self.size <= 0 or any(w.requires_grad for w in policy) or any(w.requires_grad for w in tower):
            return False
        if self._policy is None or not self._policy.holds(policy):  # first use, or the policy tower changed
            self._entries.clear()
            self._policy, self._checked = TowerState(policy), []
        if tower is policy:
            return True
        verdict = next((same for state, same in self._checked if state.holds(tower)), None)
        if verdict is None:
            verdict = same_values(policy, tower)
            self._checked = [c for c in self._checked if all(r() is not None for r in c[0].refs)]
            self._checked.append((TowerState(tower), verdict))
        return verdict

    def get(self, pixels: torch.Tensor) -> Any:
        entry = self._entries.get(id(pixels))
        if entry is None or entry[0]() is not pixels:
            return None
        self._entries.move_to_end(id(pixels))
        return entry[1]

    def put(self, pixels: torch.Tensor, tower: torch.Tensor | tuple[torch.Tensor, ...]) -> None:
        """Keep `tower`, the output for `pixels` (a tensor, or a tuple of them where the tower feeds several
        connectors); a view is copied, as it would hold its whole batch's storage."""
        key = id(pixels)

        def forget(ref: weakref.ref) -> None:  # the pixels were freed: their entry goes (unless replaced since)
            if key in self._entries and self._entries[key][0] is ref:
                del self._entries[key]

        owned = tuple(map(_owned, tower)) if isinstance(tower, tuple) else _owned(tower)
        self._entries[key] = (weakref.ref(pixels, forget), owned)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


# Runs the whole encoder (tower + connector) over the prompts at the given positions:
# -> (connector output per prompt, tower output per prompt if asked to keep them, else []).
Encode = Callable[[list[int], bool], tuple[list[Any], list[Any]]]


# The name of the cache argument of transformers' forwards: `cache` where the installed version has it (5.25 renamed
# `past_key_values`, and warns about the old name), else `past_key_values` (5.17). Read from one of its causal LMs:
# every model of one transformers version follows the same convention.
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def keep_recurrent_state(layer: Any, recurrent_states: torch.Tensor | list[torch.Tensor], state_idx: int = 0,
                         **_: Any) -> torch.Tensor:
    """A linear-attention cache layer's `update_recurrent_state` that keeps the new state tensor instead of copying
    it into the old one. transformers copies in place (a fixed address for CUDA graphs); in a training forward that
    continues a shared prefill, the old state (gathered to the rows) is saved for the backward pass, and the copy
    would overwrite it. Keeping the new tensor gives the same values and a sound backward."""
    if not layer.is_recurrent_states_initialized[state_idx]:
        layer.lazy_initialization(recurrent_states=recurrent_states, state_idx=state_idx)
    last = recurrent_states if isinstance(recurrent_states, torch.Tensor) else recurrent_states[-1]
    layer.recurrent_states[state_idx] = last
    return last


@dataclass
class PackedRows:
    """Rows ready for the LM: each prompt left-padded to Lp columns, optionally followed by completion columns."""

    inputs_embeds: torch.Tensor  # [N, L, D], vision features scattered in
    attention_mask: torch.Tensor  # [N, L]
    position_ids: torch.Tensor | None  # [A, N, L] the family's positions (M-RoPE: A = 3); None: counted by the model
    prompt_length: int  # Lp: columns before the first completion token
    # DeepStack (Qwen3-VL): visual features of the tower's middle layers added to the first LM layers' hidden states
    # at the visual positions; [N, L] mask and one [n_visual, D] tensor per LM layer, in row-major order of the mask
    visual_pos_masks: torch.Tensor | None = None
    deepstack_visual_embeds: list[torch.Tensor] | None = None

    def last_positions(self) -> torch.Tensor | None:
        """Each row's largest position [A, N, 1], from which its completion continues (None without positions)."""
        return None if self.position_ids is None else self.position_ids.amax(-1, keepdim=True)

    def extended(self, completion_embeds: torch.Tensor) -> PackedRows:
        """These rows followed by completion tokens embedded as `completion_embeds` [N, T, D]: attended, positions
        continuing from each row's largest prompt position + 1, never visual."""
        n, t = completion_embeds.shape[:2]
        device = self.attention_mask.device
        positions = None
        if self.position_ids is not None:
            after = self.last_positions() + torch.arange(1, t + 1, device=device)  # [A, N, T]
            positions = torch.cat([self.position_ids, after], dim=-1)
        masks = None
        if self.visual_pos_masks is not None:
            masks = torch.cat([self.visual_pos_masks, self.visual_pos_masks.new_zeros(n, t)], dim=1)
        return PackedRows(
            inputs_embeds=torch.cat([self.inputs_embeds, completion_embeds.to(self.inputs_embeds.dtype)], dim=1),
            attention_mask=torch.cat([self.attention_mask, self.attention_mask.new_ones(n, t)], dim=1),
            position_ids=positions, prompt_length=self.prompt_length, visual_pos_masks=masks,
            deepstack_visual_embeds=self.deepstack_visual_embeds,
        )


@dataclass
class Prefill:
    """What a prefill leaves for the rows that continue it (the cache itself is filled in place)."""

    logits: torch.Tensor  # [N, V] at each row's last prompt position: they predict completion token 0
    attention_mask: torch.Tensor  # [N, Lp] the rows' prompt attention mask
    last_positions: torch.Tensor | None  # [A, N, 1] each row's largest prompt position (None: counted by the model)

    def next_inputs(self, done: int, width: int) -> dict[str, torch.Tensor]:
        """attention_mask and position_ids of the `width` completion tokens after the first `done`, on the cache."""
        n = self.attention_mask.shape[0]
        inputs = {"attention_mask": torch.cat([self.attention_mask, self.attention_mask.new_ones(n, done + width)], 1)}
        if self.last_positions is not None:
            steps = torch.arange(done + 1, done + width + 1, device=self.last_positions.device)
            inputs["position_ids"] = self.last_positions + steps  # [A, N, width]
        return inputs


@dataclass(frozen=True)
class Family:
    """A model family: everything framethink knows about it, registered by one entry in `framethink.models.registry`.

    `load(path, *, frames, pixels, dtype, device, system, frame_cache_size)` returns the family's adapter over the
    checkpoint at `path`; `pixels` holds only the `pixel_settings` the caller set. `build_tiny(arch, out, *, seed,
    **sizes)` writes a tiny random checkpoint of one of `tiny_archs` (`framethink model tiny --arch`).
    `lora_targets` is what LoRA adapts when a recipe names no modules: module-name suffixes, or one regular
    expression matched against the whole module name (peft's `target_modules`)."""

    name: str
    model_types: tuple[str, ...]  # config.json model_type values of its checkpoints
    tiny_archs: tuple[str, ...]
    load: Callable[..., Any]
    build_tiny: Callable[..., Path]
    default_frames: FrameRule
    pixel_settings: tuple[str, ...]  # pixel-bound settings it reads (video_max_pixels, ...); any other is refused
    lora_targets: list[str] | str
    # the frame rule a checkpoint's own processor configs give (their sampling settings); None: `default_frames`
    checkpoint_frames: Callable[[Path], FrameRule] | None = None


class AdapterBase(ABC):
    """The shared part of every policy adapter (`framethink.models.adapter.PolicyAdapter`).

    A subclass sets `default_template`, calls `__init__` with its model and tokenizer, sets the ids
    it needs (`pad_id`, `eos_ids`, `end_of_turn_id`, `suppress_ids`) and implements `encode`, `pack`,
    `_tower_weights`, `parameter_groups`, `fsdp_units` and `save_pretrained`.
    """

    default_template: str

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        frames: FrameRule,
        frame_cache_size: int,
        tower_cache_size: int,
        name: str,
    ) -> None:
        """`tower_cache_size`: prompts whose frozen vision-tower output is kept across the forwards of a step; 0 turns
        that reuse off."""
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.clips = ClipReader(frames, frame_cache_size)
        self.tower_cache = FrozenTowerCache(tower_cache_size)
        self.vision_encoder_calls = 0  # calls of the whole encoder (tower + connector), counted for the benchmarks
        self.pad_id: int = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids: list[int] = [tokenizer.eos_token_id]
        self.end_of_turn_id: int = tokenizer.eos_token_id
        self.suppress_ids: list[int] = []  # tokens never sampled (vision special tokens)

    # ------------------------------------------------------------------ the family's part
    @abstractmethod
    def encode(self, record: Any, *, template: str, frame_order: str = "ordered", seed: int = 0) -> EncodedPrompt:
        """See the adapter protocol (framethink.models.adapter.PolicyAdapter)."""

    @abstractmethod
    def pack(self, model: torch.nn.Module, prompts: list[EncodedPrompt], row_prompt: list[int]) -> PackedRows:
        """Rows [N, Lp], row i prompt `row_prompt[i]` left-padded, its vision features computed by `model` once per
        distinct prompt and shared by the prompt's rows."""

    @abstractmethod
    def _tower_weights(self, model: torch.nn.Module) -> list[torch.Tensor]:
        """The tensors a vision tower's output depends on (for frozen-tower reuse)."""

    @abstractmethod
    def save_pretrained(self, out: Path) -> None:
        """See the adapter protocol (framethink.models.adapter.PolicyAdapter)."""

    # ------------------------------------------------------------------ shared
    @property
    def frames(self) -> FrameRule:
        return self.clips.rule

    def decode(self, completions: Completions) -> list[str]:
        return decode_completions(self.tokenizer, completions, self.eos_ids)

    def generate_texts(self, prompts: list[EncodedPrompt], decoding: Decoding) -> list[str]:
        """One completion per prompt from one batched call (the evaluation path)."""
        return self.decode(self.generate(prompts, list(range(len(prompts))), decoding))

    def _new_cache(self, model: torch.nn.Module) -> DynamicCache:
        """An empty cache laid out for `model`'s layers (attention KV, and linear-attention states where it has
        them), whose linear-attention layers keep each new recurrent state as it is (`keep_recurrent_state`)."""
        cache = DynamicCache(config=model.config)
        for layer in cache.layers:
            if hasattr(layer, "update_recurrent_state"):
                layer.update_recurrent_state = MethodType(keep_recurrent_state, layer)
        return cache

    def _forward(self, model: torch.nn.Module, rows: PackedRows, **kwargs: Any) -> torch.Tensor:
        """Logits of `model` over packed rows (`kwargs`: cache, use_cache, logits_to_keep)."""
        if rows.deepstack_visual_embeds is not None:
            # a family that packs DeepStack features must override this to feed them; dropping them would be silent
            raise TypeError(f"{type(self).__name__} packs DeepStack features but its _forward does not feed them")
        inputs = {"inputs_embeds": rows.inputs_embeds, "attention_mask": rows.attention_mask}
        if rows.position_ids is not None:
            inputs["position_ids"] = rows.position_ids
        return model(**inputs, **kwargs).logits

    def _continue(self, model: torch.nn.Module, cache: DynamicCache, prefill: Prefill, tokens: torch.Tensor,
                  done: int) -> torch.Tensor:
        """Logits [N, k, V] of completion tokens [N, k] (after the first `done`) on the prefill's cache."""
        inputs = prefill.next_inputs(done, tokens.shape[1])
        return model(input_ids=tokens, **inputs, **{CACHE_ARGUMENT: cache}, use_cache=True).logits

    def _prefill(self, model: torch.nn.Module, prompts: list[EncodedPrompt], row_prompt: list[int],
                 cache: DynamicCache) -> Prefill:
        """Run each distinct prompt of the rows through `model` once and gather the cache it fills to the rows."""
        used = sorted(set(row_prompt))
        packed = self.pack(model, prompts, used)  # [P, Lp]: one row per distinct prompt
        logits = self._forward(model, packed, **{CACHE_ARGUMENT: cache}, use_cache=True, logits_to_keep=1)
        rows = gather_prefill(cache, used, row_prompt, logits.device)  # [N] packed row of each row
        last = packed.last_positions()
        return Prefill(logits=logits[:, -1][rows], attention_mask=packed.attention_mask[rows],
                       last_positions=None if last is None else last[:, rows])

    def completion_logprobs(
        self,
        prompts: list[EncodedPrompt],
        row_prompt: list[int],
        completion_ids: torch.Tensor,
        *,
        model: torch.nn.Module | None = None,
    ) -> torch.Tensor:
        """Log-probabilities [N, T] of `completion_ids` [N, T] under `model` (default: the policy), with every
        model input of the prompts, vision encoded by that model's own tower and connector.

        The prompts run once each (`_prefill`), then the completion tokens of all rows in one forward."""
        model = model or self.model
        if drops_kv_cache(model):
            return self._completion_logprobs_per_row(model, prompts, row_prompt, completion_ids)
        device = next(model.parameters()).device
        completion_ids = completion_ids.to(device)  # [N, T]
        cache = self._new_cache(model)
        prefill = self._prefill(model, prompts, row_prompt, cache)
        return logprobs_after_prefill(prefill.logits, completion_ids,
                                      lambda inputs: self._continue(model, cache, prefill, inputs, 0))

    def _completion_logprobs_per_row(
        self, model: torch.nn.Module, prompts: list[EncodedPrompt], row_prompt: list[int], completion_ids: torch.Tensor
    ) -> torch.Tensor:
        """`completion_logprobs` with every row carrying its whole prompt through the LM, in one forward without a
        cache: the path for a training forward under gradient checkpointing (vision still once per prompt)."""
        packed = self.pack(model, prompts, row_prompt)  # [N, Lp]
        completion_ids = completion_ids.to(packed.inputs_embeds.device)  # [N, T]
        rows = packed.extended(model.get_input_embeddings()(completion_ids))  # [N, Lp + T]
        logits = self._forward(model, rows, logits_to_keep=completion_ids.shape[1] + 1, use_cache=False)
        return completion_logprobs_from_logits(logits, completion_ids)  # [N, T]

    @torch.no_grad()
    def generate(
        self,
        prompts: list[EncodedPrompt],
        row_prompt: list[int],
        decoding: Decoding,
        *,
        generator: torch.Generator | None = None,
        on_token: TokenCallback | None = None,
    ) -> Completions:
        """Sample one completion per row (row i continues prompt `row_prompt[i]`), all rows in one cached batch;
        each prompt is prefilled once. `on_token` sees each sampled column as it is drawn (streaming)."""
        model = self.model
        cache = self._new_cache(model)
        prefill = self._prefill(model, prompts, row_prompt, cache)
        device = prefill.logits.device
        done = 0

        def step(tokens: torch.Tensor | None) -> torch.Tensor:
            nonlocal done
            if tokens is None:
                return prefill.logits
            logits = self._continue(model, cache, prefill, tokens.to(device).unsqueeze(-1), done)
            done += 1
            return logits[:, -1]  # [N, V]

        return sample_completions(step, len(row_prompt), decoding, eos_ids=self.eos_ids, pad_id=self.pad_id,
                                  suppress_ids=self.suppress_ids, generator=generator, on_token=on_token)

    def _encode_reusing_tower(
        self,
        model: torch.nn.Module,
        pixels: list[torch.Tensor],
        encode: Encode,
        connect: Callable[[list[Any]], list[Any]],
    ) -> list[Any]:
        """Connector output per pixel tensor: the encoder runs (one call) over the prompts whose frozen-tower output
        is not kept, and only the connector (`connect`, one call) over those whose output is."""
        policy = self._tower_weights(self.model)
        reuse = self.tower_cache.reusable(policy, policy if model is self.model else self._tower_weights(model))
        kept = [self.tower_cache.get(p) if reuse else None for p in pixels]
        features: list[Any] = [None] * len(pixels)
        missing = [k for k, tower in enumerate(kept) if tower is None]
        if missing:
            self.vision_encoder_calls += 1
            encoded, towers = encode(missing, reuse)
            for k, feature in zip(missing, encoded):
                features[k] = feature
            for k, tower in zip(missing, towers):
                self.tower_cache.put(pixels[k], tower)
        hits = [k for k, tower in enumerate(kept) if tower is not None]
        if hits:
            for k, feature in zip(hits, connect([kept[k] for k in hits])):
                features[k] = feature
        return features
