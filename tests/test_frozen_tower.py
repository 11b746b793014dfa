"""Frozen-tower reuse (framethink.models.base): with the vision tower frozen its output for a prompt is computed
once per step and only the connector runs again, for the policy and the reference model; the log-probs and the
connector's gradients are those of the computation without reuse; a trainable tower (or LoRA modules in it)
gets no reuse and its gradients; a reference tower whose weights differ, or a policy tower changed in place,
gets no stale output; the cache is bounded and forgets freed pixels."""
from __future__ import annotations

import copy
import gc
from pathlib import Path

import pytest
import torch
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen25

from framethink.config import ModelConfig
from framethink.data.clips import FrameRule
from framethink.data.records import load_records
from framethink.data.synth import write_synthetic_dataset
from framethink.engine import set_trainable
from framethink.models.adapter import Decoding
from framethink.models.base import FrozenTowerCache
from framethink.models.qwen_vl.adapter import load_qwen_vl_adapter
from framethink.models.registry import load_adapter
from framethink.models.tiny import build_tiny
from framethink.rl.trainer import train_rl

pytest_plugins = ["fixtures_training"]


def _tower(model: torch.nn.Module) -> torch.nn.Module:
    """The module whose forward is one vision-encoder call (Qwen-VL: tower + merger; TinyLLaVA: SigLIP)."""
    return model.vision_tower if hasattr(model, "vision_tower") else model.model.visual


def _connector(model: torch.nn.Module) -> torch.nn.Module:
    return model.connector if hasattr(model, "connector") else model.model.visual.merger


def _tower_calls(*models: torch.nn.Module) -> tuple[list[int], list]:
    """Counts forward calls of the models' vision encoders: ([calls], hook handles)."""
    calls = [0]

    def count(module, args) -> None:
        calls[0] += 1

    return calls, [_tower(m).register_forward_pre_hook(count) for m in models]


@pytest.fixture(params=["qwen2.5-vl", "qwen2-vl", "tinyllava-video"])
def frozen(request, tiny_qwen25_vl_dir: Path, tiny_qwen2_vl_dir: Path, synth_records, tmp_path: Path):
    """(adapter with the tower frozen as the engine freezes it, the same adapter with reuse off, the reference
    model, ordered + shuffled prompts) for each model family."""
    if request.param == "tinyllava-video":
        checkpoint = build_tiny("tinyllava-video", tmp_path / "model", seed=0)
        write_synthetic_dataset(tmp_path / "clips", n_train=1, n_test=0, seed=0, num_frames=4, size=28,
                                tasks=["color_first", "color"])
        adapter = load_adapter(checkpoint, frames=FrameRule(rule="uniform", num_frames=4))
        records, template = load_records(tmp_path / "clips" / "train.json"), "tinyllava-r1"
    else:
        checkpoint = tiny_qwen25_vl_dir if request.param == "qwen2.5-vl" else tiny_qwen2_vl_dir
        adapter, records, template = load_qwen_vl_adapter(checkpoint), synth_records, "video-r1"
    reference = copy.deepcopy(adapter.model).eval().requires_grad_(False)  # as start_run: before freezing
    set_trainable(adapter.parameter_groups(), ModelConfig(freeze_vision=True))
    plain = copy.copy(adapter)  # the same model and frame cache, reuse off
    plain.tower_cache = FrozenTowerCache(0)
    prompts = [adapter.encode(r, template=template) for r in records]
    prompts += [adapter.encode(r, template=template, frame_order="shuffled", seed=i) for i, r in enumerate(records)]
    return adapter, plain, reference, prompts


def _step(adapter, reference, prompts) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """A step's forwards: rollout over ordered + shuffled prompts, old, reference and policy log-probs of the
    ordered rows, the policy's backward. -> (old, reference, policy log-probs, gradients by parameter name)."""
    rows = [0, 0, 0, 1, 1]
    adapter.model.eval()
    done = adapter.generate(prompts, rows + [2, 3], Decoding(max_new_tokens=4), generator=torch.Generator().manual_seed(0))
    tokens = done.tokens[:len(rows)]
    with torch.no_grad():
        old = adapter.completion_logprobs(prompts, rows, tokens)
        ref = adapter.completion_logprobs(prompts, rows, tokens, model=reference)
    adapter.model.train()
    logp = adapter.completion_logprobs(prompts, rows, tokens)
    (logp * torch.arange(1.0, 6.0).unsqueeze(1)).sum().backward()  # rows weighted apart
    grads = {n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.grad is not None}
    adapter.model.zero_grad(set_to_none=True)
    return old, ref, logp.detach(), grads


def test_reuse_gives_the_log_probs_and_connector_gradients_of_the_uncached_computation(frozen):
    adapter, plain, reference, prompts = frozen
    calls, hooks = _tower_calls(adapter.model, reference)
    reused = _step(adapter, reference, prompts)
    assert calls[0] == adapter.vision_encoder_calls == 1  # the rollout's; old, reference and policy reuse it
    expected = _step(plain, reference, prompts)
    assert calls[0] == 1 + 4 and plain.vision_encoder_calls == 4
    for hook in hooks:
        hook.remove()
    for got, want in zip(reused[:3], expected[:3]):  # old, reference, policy log-probs
        torch.testing.assert_close(got, want)
    connector = {id(p) for p in _connector(adapter.model).parameters()}
    assert {n for n, p in adapter.model.named_parameters() if id(p) in connector} <= reused[3].keys()
    assert reused[3].keys() == expected[3].keys()  # the tower got no gradient on either path
    for name, grad in expected[3].items():
        torch.testing.assert_close(reused[3][name], grad, msg=name)


@pytest.mark.parametrize(("overrides", "calls", "clips"), [
    ((), 1, 4),  # freeze_vision (the default): the rollout's call, over 2 ordered + 2 shuffled clips
    (("model.freeze_vision=false",), 5, 4 + 4 * 2),  # rollout, old, reference, policy x 2: as without reuse
    (("model.lora.enabled=true",), 1, 4),  # LoRA in the LM only: the tower is frozen
    (("model.lora.enabled=true", "model.lora.target_modules=[qkv]"), 5, 4 + 4 * 2),  # LoRA trains the tower
])
def test_a_training_step_runs_a_frozen_tower_once_per_prompt(recipe, monkeypatch, overrides, calls, clips):
    counted = [0, 0]
    forward = qwen25.Qwen2_5_VisionTransformerPretrainedModel.forward

    def counting(self, hidden_states, grid_thw, **kwargs):  # the policy's and the reference model's towers alike
        counted[0] += 1
        counted[1] += grid_thw.shape[0]
        return forward(self, hidden_states, grid_thw, **kwargs)

    monkeypatch.setattr(qwen25.Qwen2_5_VisionTransformerPretrainedModel, "forward", counting)
    train_rl(recipe("rl.num_iterations=2", *overrides), quiet=True)  # old log-probs, reference, 2 updates
    assert counted == [calls, clips]


def test_a_trainable_tower_gets_no_reuse_and_its_gradients(adapter, synth_records):
    prompts = [adapter.encode(r, template="video-r1") for r in synth_records]  # freshly loaded: all trainable
    tokens = adapter.generate(prompts, [0, 1], Decoding(max_new_tokens=4), generator=torch.Generator()).tokens
    adapter.completion_logprobs(prompts, [0, 1], tokens).sum().backward()
    assert adapter.vision_encoder_calls == 2 and len(adapter.tower_cache) == 0
    tower = adapter.parameter_groups()["vision"]
    assert all(p.grad is not None for p in tower) and any(p.grad.abs().sum() > 0 for p in tower)


@torch.no_grad()
def test_towers_with_other_weights_get_no_stale_output(frozen):
    adapter, plain, reference, prompts = frozen
    rows, calls = [0, 1], adapter.vision_encoder_calls
    tokens = adapter.generate(prompts, rows, Decoding(max_new_tokens=4), generator=torch.Generator()).tokens
    weight = next(p for p in _tower(reference).parameters() if p.ndim == 2)
    weight.mul_(3.0)  # the reference tower no longer holds the policy's weights
    torch.testing.assert_close(adapter.completion_logprobs(prompts, rows, tokens, model=reference),
                               plain.completion_logprobs(prompts, rows, tokens, model=reference))
    assert adapter.vision_encoder_calls == calls + 2  # the rollout's call, then the reference's own
    policy_weight = next(p for n, p in _tower(adapter.model).named_parameters()
                         if p.ndim == 2 and "merger" not in n)
    policy_weight.mul_(3.0)  # a frozen policy tower changed in place (a weight load): its kept outputs go
    torch.testing.assert_close(adapter.completion_logprobs(prompts, rows, tokens),
                               plain.completion_logprobs(prompts, rows, tokens))
    assert adapter.vision_encoder_calls == calls + 3


def test_the_cache_is_bounded_and_forgets_freed_pixels():
    cache = FrozenTowerCache(2)
    weights = [torch.zeros(3)]
    assert cache.reusable(weights, weights)
    pixels = [torch.full((2,), float(i)) for i in range(3)]
    for i in range(3):
        cache.put(pixels[i], torch.full((4,), float(i)))
    assert cache.get(pixels[0]) is None and len(cache) == 2  # the least recently used went
    assert torch.equal(cache.get(pixels[2]), torch.full((4,), 2.0))
    assert cache.get(pixels[1].clone()) is None  # equal values, another tensor: no entry
    del pixels[2]
    gc.collect()
    assert len(cache) == 1  # the freed pixels' entry went with them
    assert cache.reusable(weights, [torch.zeros(3)])  # another tower with the same values
    partition = torch.zeros(0)
    partition.ds_id = 0  # a ZeRO-3 partition: no values to compare
    assert not cache.reusable([partition], [torch.zeros(0)])
    assert not FrozenTowerCache(0).reusable(weights, weights)  # reuse off
    assert not cache.reusable([torch.zeros(3, requires_grad=True)], weights)  # a trainable policy tower
