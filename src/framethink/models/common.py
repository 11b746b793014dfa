"""What every policy adapter does the same way once it can `generate`: its frame rule, decoding completions to
text, the evaluation path of one completion per prompt, and the reuse of a frozen vision tower's output.

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
therefore never reuses anything, and its gradients flow as before.
"""
from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch.distributed.tensor import DTensor

from framethink.data.clips import FrameRule
from framethink.models.adapter import Decoding, EncodedPrompt
from framethink.models.sampling import Completions, decode_completions

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


class FrozenTowerCache:
    """Outputs of the policy's frozen vision tower per prompt pixel tensor, bounded (least recently used go first).

    An entry is keyed by the identity of the pixel tensor and holds it only weakly: it goes when the prompt's
    pixels are freed (the step's shuffled clips right after the rollout, earlier steps' prompts when their
    rollout goes), so only live prompts hold tower outputs, and a freed tensor's id never finds a stale entry."""

    def __init__(self, size: int = TOWER_CACHE_SIZE) -> None:
        self.size = size
        self._entries: OrderedDict[int, tuple[weakref.ref, torch.Tensor]] = OrderedDict()
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

    def get(self, pixels: torch.Tensor) -> torch.Tensor | None:
        entry = self._entries.get(id(pixels))
        if entry is None or entry[0]() is not pixels:
            return None
        self._entries.move_to_end(id(pixels))
        return entry[1]

    def put(self, pixels: torch.Tensor, tower: torch.Tensor) -> None:
        """Keep `tower`, the output for `pixels`; a view is copied, as it would hold its whole batch's storage."""
        key = id(pixels)

        def forget(ref: weakref.ref) -> None:  # the pixels were freed: their entry goes (unless replaced since)
            if key in self._entries and self._entries[key][0] is ref:
                del self._entries[key]

        self._entries[key] = (weakref.ref(pixels, forget), tower if tower._base is None else tower.clone())
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


# Runs the whole encoder (tower + connector) over the prompts at the given positions:
# -> (connector output per prompt, tower output per prompt if asked to keep them, else []).
Encode = Callable[[list[int], bool], tuple[list[torch.Tensor], list[torch.Tensor]]]


class AdapterCommon:
    """Mixed into each adapter; expects `clips` (a ClipReader), `tokenizer`, `eos_ids`, `generate`, `model`,
    `tower_cache` (a FrozenTowerCache), `vision_encoder_calls` and `_tower_weights(model)`."""

    @property
    def frames(self) -> FrameRule:
        return self.clips.rule

    def decode(self, completions: Completions) -> list[str]:
        return decode_completions(self.tokenizer, completions, self.eos_ids)

    def generate_texts(self, prompts: list[EncodedPrompt], decoding: Decoding) -> list[str]:
        """One completion per prompt from one batched call (the evaluation path)."""
        return self.decode(self.generate(prompts, list(range(len(prompts))), decoding))

    def _encode_reusing_tower(
        self,
        model: torch.nn.Module,
        pixels: list[torch.Tensor],
        encode: Encode,
        connect: Callable[[list[torch.Tensor]], list[torch.Tensor]],
    ) -> list[torch.Tensor]:
        """Connector output per pixel tensor: the encoder runs (one call) over the prompts whose frozen-tower output
        is not kept, and only the connector (`connect`, one call) over those whose output is."""
        policy = self._tower_weights(self.model)
        reuse = self.tower_cache.reusable(policy, policy if model is self.model else self._tower_weights(model))
        kept = [self.tower_cache.get(p) if reuse else None for p in pixels]
        features: list[torch.Tensor] = [torch.empty(0)] * len(pixels)
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
