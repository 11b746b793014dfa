"""One suite run against every model family (docs/models.md, "Adding a family"): generation agrees with the log-prob
forward and with each row's whole-sequence forward; the vision encoder runs once per prompt batch; each prompt runs
through the LM once (its cache, Qwen3.5's linear-attention states included, gathered to its rows), with the same
log-probs and gradients as the per-row path under gradient checkpointing; a shuffled or reversed clip changes the
pixel content only (the prompt, its timestamp text, grids and positions stay those of the ordered clip); and in a
T-GRPO step every forward (generation, old policy, reference, policy) gets the pixels, grids, positions and
(Qwen3-VL) DeepStack features of its prompts; and `framethink demo --arch ARCH` runs end to end.

A new family adds its tiny architecture to FAMILIES below (and its modules to `_parts`)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from framethink.cli import main
from framethink.data.clips import FrameRule
from framethink.models import build_tiny, load_adapter
from framethink.models.adapter import Decoding
from framethink.models.registry import BY_TINY_ARCH, family_of
from framethink.rl.trainer import train_rl
from framethink.engine.parameters import enable_activation_checkpointing

pytest_plugins = ["fixtures_training"]
TEMPLATE = "video-r1"


@dataclass(frozen=True)
class Case:
    arch: str
    sizes: dict
    frames: FrameRule | None = None  # None: the family's default
    overrides: tuple[str, ...] = ()  # recipe overrides a training run on this family needs


SMALL_QWEN = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, vision_hidden_size=32,
                  vision_num_heads=2, vision_intermediate_size=128)
SMALL_QWEN3 = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=128, vision_intermediate_size=128)
TINYLLAVA_FRAMES = FrameRule(rule="uniform", num_frames=4)
FAMILIES = {
    "qwen2.5-vl": Case("qwen2.5-vl", SMALL_QWEN),
    "qwen2-vl": Case("qwen2-vl", SMALL_QWEN),
    "qwen3-vl": Case("qwen3-vl", SMALL_QWEN3),
    "qwen3.5": Case("qwen3.5", {**SMALL_QWEN3, "full_attention_interval": 2}),  # one linear, one full layer
    "tinyllava-video": Case("tinyllava-video", {}, TINYLLAVA_FRAMES,
                            ("data.frame_rule=uniform", "data.num_frames=4", "data.template=tinyllava-r1")),
}


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory) -> dict[str, Path]:
    return {}


@pytest.fixture(params=list(FAMILIES))
def case(request, family_dirs, tmp_path_factory) -> tuple[Case, Path]:
    case = FAMILIES[request.param]
    if case.arch not in family_dirs:
        family_dirs[case.arch] = build_tiny(case.arch, tmp_path_factory.mktemp(case.arch), seed=0, **case.sizes)
    return case, family_dirs[case.arch]


@pytest.fixture
def adapter(case):
    case, path = case
    return load_adapter(path, frames=case.frames)


def _parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(vision tower, text model) of a family's model: the modules whose inputs the spies read."""
    if hasattr(model, "vision_tower"):  # TinyLLaVA-Video: SigLIP, then Qwen2's decoder stack
        return model.vision_tower, model.language_model.model
    return model.model.visual, model.model.language_model  # Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5


def _flat(pixels: torch.Tensor) -> torch.Tensor:
    """A prompt's pixels as its tower receives them: TinyLLaVA's [1, T, 3, S, S] clip as T frames."""
    return pixels.flatten(0, 1) if pixels.dim() == 5 else pixels


def _lm_logits(adapter) -> tuple[list[torch.Tensor], object]:
    """Record the output head's logits of every forward; returns (the list, the hook handle)."""
    seen: list[torch.Tensor] = []
    hook = adapter.model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    return seen, hook


def test_generation_agrees_with_the_log_prob_forward_and_whole_rows(adapter, synth_records):
    prompts = [adapter.encode(r, template=TEMPLATE) for r in synth_records]  # prompt lengths differ: left padding
    assert prompts[0].inputs["input_ids"].shape != prompts[1].inputs["input_ids"].shape
    rows = [0, 0, 1, 1]

    # sampled: each cached step's log-probs (one prefill per prompt, cache gathered to the rows) equal the log-prob
    # forward's and those of a forward of each row's whole sequence without any cache
    steps, hook = _lm_logits(adapter)
    sampled = adapter.generate(prompts, rows, Decoding(max_new_tokens=6), generator=torch.Generator().manual_seed(0))
    hook.remove()
    tokens, mask = sampled.tokens, sampled.mask.bool()
    assert steps[0].shape[0] == 2  # the prefill ran the 2 prompts, not the 4 rows
    incremental = torch.stack([steps[0][:, -1][rows], *(s[:, -1] for s in steps[1: tokens.shape[1]])], 1)
    incremental = incremental.float().log_softmax(-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [N, T]
    full = adapter.completion_logprobs(prompts, rows, tokens)
    torch.testing.assert_close(full[mask], incremental[mask], rtol=1e-4, atol=1e-4)
    whole = adapter._completion_logprobs_per_row(adapter.model, prompts, rows, tokens)
    torch.testing.assert_close(full, whole, rtol=1e-5, atol=1e-5)

    # the same draw as every row prefilling its own copy of its prompt
    copies = adapter.generate([prompts[i] for i in rows], list(range(len(rows))), Decoding(max_new_tokens=6),
                              generator=torch.Generator().manual_seed(0))
    assert torch.equal(copies.tokens, tokens) and torch.equal(copies.mask, sampled.mask)

    # greedy: every generated token is the argmax (suppressed tokens excluded) of the log-prob forward's logits
    greedy = adapter.generate(prompts, rows, Decoding(max_new_tokens=6, do_sample=False))
    logits, hook = _lm_logits(adapter)
    logp = adapter.completion_logprobs(prompts, rows, greedy.tokens)
    hook.remove()
    prefill, completion = logits  # [2, 1, V] once per prompt, then [N, T-1, V] over the rows' tokens
    forward = torch.cat([prefill[rows], completion], 1).float()  # [N, T, V]
    assert torch.allclose(forward.log_softmax(-1).gather(-1, greedy.tokens.unsqueeze(-1)).squeeze(-1), logp)
    forward[..., adapter.suppress_ids] = float("-inf")
    assert torch.equal(forward.argmax(-1)[greedy.mask.bool()], greedy.tokens[greedy.mask.bool()])
    assert adapter.generate_texts(prompts, Decoding(max_new_tokens=6, do_sample=False)) == adapter.decode(greedy)[::2]


def test_vision_encoder_runs_once_per_prompt_batch(adapter, synth_records, monkeypatch):
    tower, _ = _parts(adapter.model)
    seen: list[torch.Tensor] = []
    forward = tower.forward
    monkeypatch.setattr(tower, "forward", lambda pixels, *a, **kw: seen.append(pixels.detach().clone()) or forward(
        pixels, *a, **kw))
    prompts = [adapter.encode(r, template=TEMPLATE) for r in synth_records]
    pixels = torch.cat([_flat(p.inputs["pixel_values_videos"]) for p in prompts])
    rows = [0] * 4 + [1] * 4  # G = 4 completions per prompt
    completions = adapter.generate(prompts, rows, Decoding(max_new_tokens=4), generator=torch.Generator())
    assert len(seen) == 1 and torch.equal(seen[0], pixels)  # the 2 prompts' pixels, not 8 rows' worth
    adapter.completion_logprobs(prompts, rows, completions.tokens)
    assert len(seen) == 2 and torch.equal(seen[1], pixels)
    enable_activation_checkpointing(adapter.model)  # the whole-row path shares the features too
    adapter.model.train()
    adapter.completion_logprobs(prompts, rows, completions.tokens)
    assert len(seen) == 3 and torch.equal(seen[2], pixels)
    assert adapter.vision_encoder_calls == 3


def test_prefix_sharing_equals_the_per_row_path_in_log_probs_and_gradients(adapter, synth_records, monkeypatch):
    """Each prompt runs through the LM once and its cache (attention KV; for Qwen3.5 also the linear-attention
    recurrent and convolution states) is gathered to its rows; under gradient checkpointing, where transformers keeps
    no cache, every row carries its whole prompt. Log-probs and every gradient agree."""
    _, text = _parts(adapter.model)
    calls: list[tuple[int, int]] = []
    forward = text.forward
    monkeypatch.setattr(text, "forward", lambda *a, **kw: calls.append(tuple(kw["inputs_embeds"].shape[:2]))
                        or forward(*a, **kw))
    prompts = [adapter.encode(r, template=TEMPLATE) for r in synth_records]
    lp = adapter.pack(adapter.model, prompts, [0, 1]).prompt_length
    rows = [1, 0, 0, 1, 0, 1]  # 3 rows per prompt, interleaved
    tokens = torch.tensor(adapter.tokenizer("<think>red</think><answer>A</answer>")["input_ids"]).expand(6, -1)
    t = tokens.shape[1]
    adapter.model.train()

    def logprobs_and_gradients() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logp = adapter.completion_logprobs(prompts, rows, tokens)
        (logp * torch.arange(1.0, 7.0).unsqueeze(1)).sum().backward()  # rows weighted apart: gradients tell them apart
        grads = {n: p.grad.clone() for n, p in adapter.model.named_parameters() if p.grad is not None}
        adapter.model.zero_grad(set_to_none=True)
        return logp.detach(), grads

    shared, shared_grads = logprobs_and_gradients()
    assert calls == [(2, lp), (6, t - 1)]  # the 2 prompts once, then the rows' completion tokens
    enable_activation_checkpointing(adapter.model)
    whole, whole_grads = logprobs_and_gradients()
    assert calls[2:] == [(6, lp + t)]  # every row with its whole prompt, in one forward
    torch.testing.assert_close(shared, whole, rtol=1e-5, atol=1e-5)
    assert shared_grads.keys() == whole_grads.keys()
    groups = adapter.parameter_groups()
    for part in ("connector", "lm"):  # gradients reach the connector through the shared prefill too
        ids = {id(p) for p in groups[part]}
        assert any(id(p) in ids for n, p in adapter.model.named_parameters() if n in shared_grads)
    for name, grad in shared_grads.items():
        torch.testing.assert_close(grad, whole_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("order", ["shuffled", "reversed"])
def test_a_reordered_clip_changes_the_pixel_content_only(adapter, synth_records, order):
    """The prompt (with Qwen3-VL's timestamp text), token types, grids and positions stay those of the ordered clip:
    otherwise the model could read the true order back from them and the temporal test would test nothing."""
    record = synth_records[0]
    ordered = adapter.encode(record, template=TEMPLATE)
    permuted = adapter.encode(record, template=TEMPLATE, frame_order=order, seed=3)
    pixels = "pixel_values_videos"
    assert ordered.inputs.keys() == permuted.inputs.keys()
    for key, value in ordered.inputs.items():
        if key == pixels:
            assert value.shape == permuted.inputs[key].shape and not torch.equal(value, permuted.inputs[key])
        else:
            assert torch.equal(value, permuted.inputs[key]), key
    positions = [adapter.pack(adapter.model, [p], [0]).position_ids for p in (ordered, permuted)]
    assert (positions[0] is None and positions[1] is None) or torch.equal(*positions)


def test_every_forward_of_a_tgrpo_step_gets_pixels_grids_positions_and_deepstack(case, recipe, synth_records,
                                                                                   monkeypatch):
    """Generation, old, reference and policy forwards (T-GRPO, beta > 0, 2 inner updates, vision trained so that
    every forward encodes) each run right after their own model's vision encoder saw their prompts' pixels (and
    grids), with the positions the adapter computes for those prompts and, on Qwen3-VL, one DeepStack feature per
    fed LM layer at exactly the visual positions."""
    case, path = case
    reference = load_adapter(path, frames=case.frames)
    tower, text = _parts(reference.model)
    events: list[tuple] = []
    tower_forward, text_forward = type(tower).forward, type(text).forward

    def vision(self, pixels, *args, **kwargs):
        events.append(("vision", pixels.detach().clone(), kwargs.get("grid_thw")))
        return tower_forward(self, pixels, *args, **kwargs)

    def language(self, *args, **kwargs):
        events.append(("lm", kwargs["inputs_embeds"].shape, kwargs.get("position_ids"), kwargs.get("visual_pos_masks"),
                       kwargs.get("deepstack_visual_embeds")))
        return text_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(tower), "forward", vision)
    monkeypatch.setattr(type(text), "forward", language)
    train_rl(recipe(f"model.path={path}", "rl.algorithm=tgrpo", "rl.num_iterations=2", "rl.beta=0.04",
                    "model.freeze_vision=false", "data.shuffle=false", *case.overrides), quiet=True)
    monkeypatch.undo()

    template = "tinyllava-r1" if case.arch == "tinyllava-video" else TEMPLATE
    prompts = [reference.encode(r, template=template) for r in synth_records]
    packed = reference.pack(reference.model, prompts, [0, 1])
    lp = packed.prompt_length
    clips = [p.inputs["pixel_values_videos"] for p in prompts]
    prefills = [i for i, e in enumerate(events) if e[0] == "lm" and e[1][1] == lp]
    assert len(prefills) == 5  # generation, old, reference, policy x 2
    for n, i in enumerate(prefills):
        _, pixels, grids = events[i - 1]  # the encoder ran for this very forward
        _, shape, positions, visual, deepstack = events[i]
        prompts_in = 4 if n == 0 else 2  # generation adds the 2 shuffled clips after the ordered ones
        assert shape[0] == prompts_in
        for clip in map(_flat, clips):  # each ordered clip's pixels
            assert any(torch.equal(chunk, clip) for chunk in _flat(pixels).split(len(clip)))
        if "video_grid_thw" in prompts[0].inputs:
            assert torch.equal(grids[:2], torch.cat([p.inputs["video_grid_thw"] for p in prompts]).to(grids))
        if packed.position_ids is None:
            assert positions is None or positions.dim() == 2  # counted from the attention mask
        else:
            assert torch.equal(positions[:, :2], packed.position_ids)  # the ordered prompts' positions
            assert torch.equal(positions[:, 2:], packed.position_ids) if n == 0 else True  # shuffled: the same
        if packed.deepstack_visual_embeds is None:
            assert deepstack is None
        else:
            layers = len(packed.deepstack_visual_embeds)
            assert len(deepstack) == layers and torch.equal(visual[:2], packed.visual_pos_masks)
            assert all(d.shape[0] == int(visual.sum()) for d in deepstack)


DEMO_FRAMES = {"tinyllava-video": {"rule": "uniform", "num_frames": 8}, "qwen3-vl": {"rule": "qwen3", "max_frames": 8},
               "qwen3.5": {"rule": "qwen3", "max_frames": 8}}  # the demo of Qwen2-VL / Qwen2.5-VL: tests/test_demo.py


@pytest.mark.parametrize("arch", list(DEMO_FRAMES))
def test_demo_runs_end_to_end(tmp_path, arch):
    from test_demo import check_demo_results  # the demo report's shape, as tests/test_demo.py checks it

    out = tmp_path / "demo"
    code = main(["demo", "--arch", arch, "--out", str(out), "data.train_per_task=2", "data.test_per_task=1",
                 "sft.run.max_steps=1", "rl.run.max_steps=1", "sft.optim.prompts_per_step=2",
                 "rl.optim.prompts_per_step=2", "rl.rl.num_generations=2", "rl.rl.num_shuffled=2",
                 "rl.rl.max_new_tokens=4", "eval.max_new_tokens=4", "sft.run.report_to=[none]",
                 "rl.run.report_to=[none]", "rl.run.sample_every=0"])
    assert code == 0
    check_demo_results(json.loads((out / "report.json").read_text()))
    model_type = json.loads((out / "model-init/config.json").read_text())["model_type"]
    assert family_of(model_type) is BY_TINY_ARCH[arch]
    frames = json.loads((out / "rl/final/framethink.json").read_text())["frames"]
    assert {key: frames[key] for key in DEMO_FRAMES[arch]} == DEMO_FRAMES[arch]
