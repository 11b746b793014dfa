"""The Qwen-VL policy adapter's own behaviour: every forward of a training step gets the video and its 3-D
positions (M-RoPE blocks checked by hand), fps and each model's own encoder change the log-probs, vision special
tokens are never sampled, completion masks run through EOS, frame orders, and mixed-media batches. What every
family shares (generation against the full forward, the encoder once per prompt batch, prefix sharing against the
per-row path) is tests/test_adapter_families.py."""
from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers_video import index_frames, write_video
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen25

from framethink.data.records import load_records
from framethink.data.video import sample_frames
from framethink.errors import ConfigError
from framethink.models.adapter import Decoding
from framethink.models.qwen_vl.adapter import load_qwen_vl_adapter
from framethink.models.sampling import sample_completions
from framethink.rl.trainer import train_rl

pytest_plugins = ["fixtures_training"]
TEMPLATE = "video-r1"


def _spy_visual(adapter, monkeypatch) -> list[torch.Tensor]:
    """Record the pixels of every call of the adapter model's vision encoder."""
    visual, seen = adapter.model.model.visual, []
    forward = visual.forward

    def spy(pixels, **kwargs):
        seen.append(pixels.detach().clone())
        return forward(pixels, **kwargs)

    monkeypatch.setattr(visual, "forward", spy)
    return seen


def _bias_logits(adapter, token_ids: list[int], value: float = 50.0):
    """Add `value` to the logits of `token_ids` in every forward (a hook on lm_head); returns the handle."""
    bias = torch.zeros(adapter.model.lm_head.out_features)
    bias[token_ids] = value
    return adapter.model.lm_head.register_forward_hook(lambda module, args, out: out + bias)


def _check_positions(positions: torch.Tensor, attention: torch.Tensor) -> None:
    """Each row holds one 4-frame video block (grid (2, 4, 4): 2 time steps 2 apart, 2x2 merged tokens), and the
    text after it resumes at the block's max + 1."""
    for row in range(positions.shape[1]):
        p = positions[:, row, attention[row].bool()]  # [3, n] real tokens
        spatial = (p[0] != p[1]) | (p[1] != p[2])  # every video token but the block's first
        first = int(spatial.nonzero()[0]) - 1
        s = int(p[0, first])
        block = torch.tensor([[s] * 4 + [s + 2] * 4, [s, s, s + 1, s + 1] * 2, [s, s + 1, s, s + 1] * 2])
        assert torch.equal(p[:, first:first + 8], block)
        assert int(spatial.sum()) == 7  # nothing else is positioned as vision
        assert p[:, first + 8].tolist() == [s + 3] * 3
        assert torch.equal(p[:, first + 8:], torch.arange(s + 3, s + 3 + p.shape[1] - first - 8).expand(3, -1))


def test_every_forward_of_a_training_step_gets_the_video_and_its_positions(
    recipe, tiny_qwen25_vl_dir, synth_records, monkeypatch
):
    """Generation, old, reference and policy forwards (T-GRPO, beta > 0, 2 inner updates) each run their prompts
    once, right after their own model's vision encoder saw the video pixels, with [3, P, Lp] M-RoPE positions;
    the completion tokens and the decoding steps continue each row from its prompt's largest position + 1.
    The tower trains here, so every forward encodes (with it frozen the later forwards reuse the rollout's tower
    output: tests/test_frozen_tower.py)."""
    events: list[tuple] = []
    vision_class, text_class = qwen25.Qwen2_5_VisionTransformerPretrainedModel, qwen25.Qwen2_5_VLTextModel
    visual_forward, lm_forward = vision_class.forward, text_class.forward

    def visual(self, hidden_states, grid_thw=None, **kwargs):
        events.append(("visual", self, hidden_states.detach().clone()))
        return visual_forward(self, hidden_states, grid_thw=grid_thw, **kwargs)

    def language(self, *args, **kwargs):
        events.append(("lm", self, kwargs.get("position_ids"), kwargs["attention_mask"], kwargs["inputs_embeds"].shape))
        return lm_forward(self, *args, **kwargs)

    monkeypatch.setattr(vision_class, "forward", visual)
    monkeypatch.setattr(text_class, "forward", language)
    train_rl(recipe("rl.algorithm=tgrpo", "rl.num_iterations=2", "rl.beta=0.04", "model.freeze_vision=false"),
             quiet=True)

    reference = load_qwen_vl_adapter(tiny_qwen25_vl_dir)
    encoded = [reference.encode(r, template=TEMPLATE) for r in synth_records]
    clips = [p.inputs["pixel_values_videos"] for p in encoded]
    prompt_length = max(p.inputs["input_ids"].shape[1] for p in encoded)
    # rows: G = 4 per prompt, then G~ = 2 per shuffled clip (prompts 2 and 3) to generate; 4 per prompt to train
    generation_rows, training_rows = [0] * 4 + [1] * 4 + [2] * 2 + [3] * 2, [0] * 4 + [1] * 4
    prompt_forwards = [i for i, e in enumerate(events) if e[0] == "lm" and events[i - 1][0] == "visual"]
    assert len(prompt_forwards) == 5  # generation prefill, old, reference, policy x 2
    assert sum(e[0] == "visual" for e in events) == 5 and events[0][0] == "visual"
    pairs = set()
    for n, i in enumerate(prompt_forwards):
        _, visual_module, pixels = events[i - 1]  # the encoder ran for this very forward
        _, lm_module, positions, attention, shape = events[i]
        pairs.add((visual_module, lm_module))
        chunks = list(pixels.split(32))  # 32 patches per clip
        assert len(chunks) == (4 if n == 0 else 2)  # generation adds the 2 shuffled clips after the ordered ones
        assert all(any(torch.equal(chunk, clip) for chunk in chunks[:2]) for clip in clips)
        prompts = len(chunks)  # each prompt once, not once per row
        assert positions is not None and positions.shape == (3, prompts, prompt_length)
        assert tuple(shape[:2]) == (prompts, prompt_length)
        _check_positions(positions, attention)

        rows = torch.tensor(generation_rows if n == 0 else training_rows)
        start = positions.amax(-1, keepdim=True)[:, rows]  # [3, N, 1] each row's prompt's largest position
        end = prompt_forwards[n + 1] - 1 if n + 1 < len(prompt_forwards) else len(events)
        after = events[i + 1:end]  # the forwards that continue these prompts, up to the next vision call
        assert after and all(e[0] == "lm" and e[1] is lm_module for e in after)  # the same LM, on its own cache
        for e in after:  # each row attends to its own prompt's tokens, then to its completion
            assert torch.equal(e[3][:, :prompt_length], attention[rows])
            assert bool(e[3][:, prompt_length:].all())
        if n == 0:  # decoding: one token per row per step, positions one by one
            for k, e in enumerate(after, start=1):
                assert tuple(e[4][:2]) == (12, 1)
                assert torch.equal(e[2], start + k)
        else:  # one forward over all rows' completion tokens (the last one predicts nothing)
            (e,) = after
            width = e[4][1]
            assert tuple(e[4][:2]) == (8, width) and width >= 1
            assert torch.equal(e[2], start + torch.arange(1, width + 1))
    assert len(pairs) == 2  # policy and reference each use their own encoder and language model
    assert len({v for v, _ in pairs}) == 2 and len({m for _, m in pairs}) == 2


@torch.no_grad()
def test_pixels_fps_and_each_models_own_encoder_change_the_log_probs(adapter, synth_records):
    reference = copy.deepcopy(adapter.model)
    prompts = [adapter.encode(r, template=TEMPLATE) for r in synth_records]
    rows = [0, 1]
    tokens = torch.tensor(adapter.tokenizer("<think>red</think><answer>A</answer>")["input_ids"]).expand(2, -1)

    def variant(**changes):
        return [replace(p, inputs={**p.inputs, **{k: f(p.inputs[k]) for k, f in changes.items()}}) for p in prompts]

    inverted = variant(pixel_values_videos=lambda x: -x)
    slower = variant(second_per_grid_ts=lambda x: 2 * x)  # 1 fps: time step 4 instead of 2
    for model in (adapter.model, reference):
        base = adapter.completion_logprobs(prompts, rows, tokens, model=model)
        assert torch.equal(adapter.completion_logprobs(prompts, rows, tokens, model=model), base)
        assert (adapter.completion_logprobs(inverted, rows, tokens, model=model) - base).abs().max() > 1e-5
        assert (adapter.completion_logprobs(slower, rows, tokens, model=model) - base).abs().max() > 1e-5
    # the reference forward encodes the video with the reference model's own vision tower
    policy = adapter.completion_logprobs(prompts, rows, tokens)
    assert torch.equal(adapter.completion_logprobs(prompts, rows, tokens, model=reference), policy)
    reference.model.visual.merger.mlp[2].weight.mul_(3.0)
    assert (adapter.completion_logprobs(prompts, rows, tokens, model=reference) - policy).abs().max() > 1e-5


@pytest.mark.parametrize("do_sample", [True, False], ids=["sampled", "greedy"])
def test_vision_special_tokens_are_never_generated(adapter, synth_records, do_sample):
    prompts = [adapter.encode(r, template=TEMPLATE) for r in synth_records]
    rows = [0, 0, 1, 1]
    hook = _bias_logits(adapter, adapter.suppress_ids)  # the model now prefers vision tokens by far
    completions = adapter.generate(prompts, rows, Decoding(max_new_tokens=5, do_sample=do_sample),
                                   generator=torch.Generator().manual_seed(0))
    logits: list[torch.Tensor] = []
    probe = adapter.model.register_forward_hook(lambda module, args, out: logits.append(out.logits))
    adapter.completion_logprobs(prompts, rows, completions.tokens)
    hook.remove(), probe.remove()
    assert set(logits[0].argmax(-1).flatten().tolist()) <= set(adapter.suppress_ids)  # unsuppressed, they'd win
    assert not torch.isin(completions.tokens, torch.tensor(adapter.suppress_ids)).any()
    assert completions.tokens.shape == (4, 5)


def test_completion_mask_runs_up_to_and_including_eos():
    eos, pad, vocab = 5, 0, 8
    script = [[1, 2, eos, 3, 3], [eos, 1, 1, 1, 1], [1, 2, 3, 4, 1]]  # the token each row prefers at each step
    t = -1

    def step(tokens):
        nonlocal t
        t += 1
        return torch.nn.functional.one_hot(torch.tensor([row[t] for row in script]), vocab).float() * 10

    out = sample_completions(step, 3, Decoding(max_new_tokens=4, do_sample=False), eos_ids=[eos], pad_id=pad)
    assert out.tokens.tolist() == [[1, 2, eos, pad], [eos, pad, pad, pad], [1, 2, 3, 4]]
    assert out.mask.tolist() == [[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert out.lengths.tolist() == [3, 1, 4]


def test_generation_stops_at_eos_and_decode_drops_it(adapter, synth_records):
    prompts = [adapter.encode(r, template=TEMPLATE) for r in synth_records]
    hook = _bias_logits(adapter, [adapter.end_of_turn_id])
    completions = adapter.generate(prompts, [0, 1], Decoding(max_new_tokens=5), generator=torch.Generator())
    hook.remove()
    assert completions.tokens.tolist() == [[adapter.end_of_turn_id]] * 2  # all rows done: the loop stops
    assert completions.mask.tolist() == [[1.0]] * 2  # the EOS token is part of the completion
    assert adapter.decode(completions) == ["", ""]


@pytest.fixture
def index_clip(tmp_path):
    """A record over a 4-frame clip whose frames are all different (grey level = 4 * index)."""
    write_video(tmp_path / "clip.mp4", index_frames(4, size=56), fps=2)
    row = {"problem_id": 0, "problem": "Which came first?", "data_type": "video", "path": "clip.mp4",
           "problem_type": "multiple choice", "options": ["A. dark", "B. light"], "solution": "<answer>A</answer>"}
    (tmp_path / "clip.json").write_text(json.dumps([row]))
    return load_records(tmp_path / "clip.json")[0]


def test_frame_orders(adapter, index_clip):
    decoded = sample_frames(index_clip.media[0])
    assert len(decoded.frames) == 4 and decoded.fps == 2.0

    def pixels(frames: np.ndarray) -> torch.Tensor:
        return adapter.processor.process_video(frames, decoded.fps)[0]

    ordered = adapter.encode(index_clip, template=TEMPLATE)
    assert torch.equal(ordered.inputs["pixel_values_videos"], pixels(decoded.frames))
    shuffled = adapter.encode(index_clip, template=TEMPLATE, frame_order="shuffled", seed=3)
    perm = shuffled.meta["permutation"]
    assert sorted(perm) == [0, 1, 2, 3] and perm != [0, 1, 2, 3]
    assert torch.equal(shuffled.inputs["pixel_values_videos"], pixels(decoded.frames[perm]))
    assert adapter.encode(index_clip, template=TEMPLATE, frame_order="shuffled", seed=3).meta["permutation"] == perm
    reversed_ = adapter.encode(index_clip, template=TEMPLATE, frame_order="reversed")
    assert torch.equal(reversed_.inputs["pixel_values_videos"], pixels(decoded.frames[::-1].copy()))
    for encoded in (shuffled, reversed_):  # same prompt, same grid, same time step
        assert torch.equal(encoded.inputs["input_ids"], ordered.inputs["input_ids"])
        assert torch.equal(encoded.inputs["second_per_grid_ts"], ordered.inputs["second_per_grid_ts"])
    with pytest.raises(ConfigError, match="sideways"):
        adapter.encode(index_clip, template=TEMPLATE, frame_order="sideways")


def test_mixed_image_video_and_text_batch(adapter, mixed_records, monkeypatch):
    prompts = [adapter.encode(r, template=TEMPLATE) for r in mixed_records]
    assert [("pixel_values_videos" in p.inputs, "pixel_values" in p.inputs) for p in prompts] == [
        (True, False), (False, True), (False, False)]
    seen = _spy_visual(adapter, monkeypatch)
    rows = [0, 0, 1, 1, 2, 2]
    greedy = Decoding(max_new_tokens=5, do_sample=False)
    batch = adapter.generate(prompts, rows, greedy)
    assert len(seen) == 2  # one encoder call per medium kind: the image, then the video
    logp = adapter.completion_logprobs(prompts, rows, batch.tokens)
    for i, prompt in enumerate(prompts):  # batching changes nothing: each prompt alone gives the same
        alone = adapter.generate([prompt], [0, 0], greedy)
        width = alone.tokens.shape[1]
        assert torch.equal(batch.tokens[2 * i:2 * i + 2, :width], alone.tokens)
        alone_logp = adapter.completion_logprobs([prompt], [0, 0], alone.tokens)
        assert torch.allclose(logp[2 * i:2 * i + 2, :width], alone_logp, atol=1e-4)
