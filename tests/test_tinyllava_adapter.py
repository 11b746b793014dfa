"""The TinyLLaVA-Video policy adapter's own behaviour: prompts and frames, log-probs against the model's own
placeholder forward, positions on both LM paths, the video in every forward, an RL step of the TinyLLaVA recipe
(vision frozen, connector and LM trained), SFT, evaluation and the CLI. What every family shares (the demo
included) is tests/test_adapter_families.py."""
from __future__ import annotations

import copy
import json
import random
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from framethink.cli import main
from framethink.config import load_config
from framethink.data.clips import FrameRule
from framethink.data.prompts import format_question
from framethink.data.records import load_records
from framethink.data.synth import write_synthetic_dataset
from framethink.data.video import sample_frames
from framethink.errors import ConfigError
from framethink.eval.benchmarks import load_benchmark
from framethink.eval.predictions import read_predictions
from framethink.eval.runner import RunSettings, run_eval
from framethink.models.adapter import Decoding
from framethink.models.registry import load_adapter
from framethink.models.tinyllava.inputs import preprocess_siglip_frames
from framethink.models.tiny import build_tiny
from framethink.models.tinyllava.modeling import (
    TINYLLAVA_SYSTEM,
    TinyLlavaVideoForConditionalGeneration,
)
from framethink.models.tinyllava.adapter import TinyLlavaAdapter
from framethink.models.tinyllava.convert import build_tiny_tinyllava, load_tinyllava
from framethink.rl.trainer import train_rl
from framethink.sft.trainer import build_target, sft_loss, train_sft
from framethink.engine.parameters import enable_activation_checkpointing

TEMPLATE = "tinyllava-r1"
FRAMES = FrameRule(rule="uniform", num_frames=4)  # 4 frames x 15 SigLIP tokens -> 4 groups of 2 latents
RECIPES = Path(__file__).parents[1] / "src/framethink/recipes"
TINY_TRAIN = (
    "data.frame_rule=uniform",
    "data.num_frames=4",
    "data.template=tinyllava-r1",
    "optim.lr=0.001",
    "optim.weight_decay=0.0",  # parameters move only through gradients
    "optim.prompts_per_step=2",
    "run.save_every=0",
    "run.sample_every=0",
    "run.report_to=[none]",
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return build_tiny("tinyllava-video", tmp_path_factory.mktemp("tinyllava"), seed=0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """A temporal clip and a control clip (4 frames of 28x28, each with a CoT process), two test clips."""
    out = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(out, n_train=1, n_test=1, seed=0, num_frames=4, size=28, tasks=["color_first", "color"])
    return out


@pytest.fixture(scope="module")
def records(synth):
    return load_records(synth / "train.json")


@pytest.fixture
def adapter(checkpoint) -> TinyLlavaAdapter:
    return load_adapter(checkpoint, frames=FRAMES)


def _decoded_prompt(adapter, ids: torch.Tensor) -> str:
    """The prompt text with `<image>` where the placeholder id stands."""
    parts, current = [], []
    for tok in ids.tolist():
        if tok == adapter.image_token_index:
            parts.append(adapter.tokenizer.decode(current))
            current = []
        else:
            current.append(tok)
    return "<image>".join([*parts, adapter.tokenizer.decode(current)])


def test_encode_builds_the_qwen2_base_prompt_and_siglip_frames(adapter, records):
    record = records[0]
    prompt = adapter.encode(record, template=TEMPLATE)
    ids = prompt.inputs["input_ids"][0]
    question = format_question(record, TEMPLATE)
    assert (ids == -200).sum() == 1
    assert _decoded_prompt(adapter, ids) == f"{TINYLLAVA_SYSTEM}USER: <image>\n{question} ASSISTANT:"
    assert question.endswith("Output the thinking process in <think> </think> and final answer (option) in "
                             "<answer> </answer> tags.")
    frames = sample_frames(record.media[0], rule="uniform", num_frames=4).frames  # [4, 28, 28, 3]
    pixels = prompt.inputs["pixel_values_videos"]
    assert pixels.shape == (1, 4, 3, 56, 56)  # the tiny SigLIP's image size
    assert torch.equal(pixels[0], preprocess_siglip_frames(frames, size=56))
    assert pixels.min() >= -1 and pixels.max() <= 1

    reversed_ = adapter.encode(record, template=TEMPLATE, frame_order="reversed").inputs["pixel_values_videos"]
    assert torch.equal(reversed_, pixels.flip(1))
    shuffled = adapter.encode(record, template=TEMPLATE, frame_order="shuffled", seed=3)
    perm = shuffled.meta["permutation"]
    assert sorted(perm) == [0, 1, 2, 3] and perm != [0, 1, 2, 3]
    assert torch.equal(shuffled.inputs["pixel_values_videos"], pixels[:, perm])

    text_only = replace(record, media_kind="text", media=[])
    ids = adapter.encode(text_only, template=TEMPLATE).inputs["input_ids"][0]
    assert adapter.tokenizer.decode(ids) == f"{TINYLLAVA_SYSTEM}USER: {question} ASSISTANT:"
    eos = adapter.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert adapter.pad_id == adapter.end_of_turn_id == eos and adapter.eos_ids == [eos]

    with pytest.raises(ConfigError, match="frame order"):
        adapter.encode(record, template=TEMPLATE, frame_order="sideways")
    with pytest.raises(ConfigError, match="system"):
        TinyLlavaAdapter(adapter.model, adapter.tokenizer, system="You are a helpful assistant")


def test_default_frame_rule_and_template(checkpoint):
    adapter = load_adapter(checkpoint)
    assert isinstance(adapter, TinyLlavaAdapter)
    assert adapter.frames == FrameRule(rule="uniform", num_frames=16) and adapter.default_template == TEMPLATE
    assert load_adapter(checkpoint, num_frames=8).frames.num_frames == 8


@torch.no_grad()
def test_log_probs_match_the_models_own_placeholder_forward(adapter, records, tmp_path, monkeypatch):
    """Left-padded rows sharing prompts of a video, a text-only and an image record (a one-frame clip) give
    each row the log-probs of that row alone through the model's forward, the -200 placeholder expanded inside."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    mixed = [records[0], replace(records[1], media_kind="text", media=[]),
             replace(records[1], media_kind="image", media=[tmp_path / "a.png"])]
    prompts = [adapter.encode(r, template=TEMPLATE) for r in mixed]
    assert "pixel_values_videos" not in prompts[1].inputs
    assert prompts[2].inputs["pixel_values_videos"].shape == (1, 1, 3, 56, 56)
    calls = []
    features = adapter.model.get_video_features
    monkeypatch.setattr(adapter.model, "get_video_features", lambda pixels: calls.append(pixels.shape) or features(pixels))
    rows = [1, 0, 2, 1, 0]
    tokens = torch.randint(0, len(adapter.tokenizer), (5, 5), generator=torch.Generator().manual_seed(0))
    batched = adapter.completion_logprobs(prompts, rows, tokens)
    assert sorted(calls) == [(1, 1, 3, 56, 56), (1, 4, 3, 56, 56)]  # one call per frame count
    for row, i in enumerate(rows):
        ids = torch.cat([prompts[i].inputs["input_ids"], tokens[row:row + 1]], dim=1)
        logits = adapter.model(input_ids=ids, pixel_values_videos=prompts[i].inputs.get("pixel_values_videos")).logits
        alone = logits[0, -6:-1].log_softmax(-1).gather(-1, tokens[row, :, None]).squeeze(-1)
        assert torch.allclose(batched[row], alone, atol=1e-5)


def _spy_language_model(adapter, monkeypatch) -> list[tuple[tuple[int, int], torch.Tensor]]:
    """Record the (rows, columns) and position ids of every call of the adapter model's language model."""
    lm, seen = adapter.model.language_model, []
    forward = lm.forward

    def spy(*args, **kwargs):
        seen.append((tuple(kwargs["inputs_embeds"].shape[:2]), kwargs["position_ids"]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(lm, "forward", spy)
    return seen


def test_positions_count_from_each_rows_first_real_token_on_both_paths(adapter, records, monkeypatch):
    """The model numbers positions by the attended tokens: a left-padded row's prompt and completion positions are
    the same whether the prompts run once (cache gathered to the rows) or once per row (gradient checkpointing)."""
    calls = _spy_language_model(adapter, monkeypatch)
    prompts = [adapter.encode(r, template=TEMPLATE) for r in records]
    lengths = [p.inputs["input_ids"].shape[1] + adapter.model.config.num_queries - 1 for p in prompts]
    assert lengths[0] != lengths[1]  # the shorter prompt is left-padded
    lp = max(lengths)
    rows = [1, 0, 0, 1, 0, 1]  # 3 rows per prompt, interleaved
    tokens = torch.tensor(adapter.tokenizer("<think>red</think><answer>A</answer>").input_ids).expand(6, -1)
    t = tokens.shape[1]
    adapter.model.train()
    adapter.completion_logprobs(prompts, rows, tokens)
    enable_activation_checkpointing(adapter.model)
    adapter.completion_logprobs(prompts, rows, tokens)
    (_, prefill), (_, completion), (_, per_row) = calls
    assert torch.equal(per_row[:, :lp], prefill[rows]) and torch.equal(per_row[:, lp:-1], completion)
    for row, i in enumerate(rows):
        assert per_row[row, lp - lengths[i]:].tolist() == list(range(lengths[i] + t))


@torch.no_grad()
def test_pixels_and_each_models_own_tower_change_the_log_probs(adapter, records):
    prompts = [adapter.encode(r, template=TEMPLATE) for r in records]
    rows = [0, 1]
    tokens = torch.tensor(adapter.tokenizer("<think>red</think><answer>A</answer>").input_ids).expand(2, -1)
    inverted = [replace(p, inputs={**p.inputs, "pixel_values_videos": -p.inputs["pixel_values_videos"]})
                for p in prompts]
    base = adapter.completion_logprobs(prompts, rows, tokens)
    assert torch.equal(adapter.completion_logprobs(prompts, rows, tokens), base)
    assert (adapter.completion_logprobs(inverted, rows, tokens) - base).abs().min() > 0  # every token sees the video
    reference = copy.deepcopy(adapter.model)
    assert torch.equal(adapter.completion_logprobs(prompts, rows, tokens, model=reference), base)
    weights = dict(reference.vision_tower.named_parameters())  # names differ across transformers versions
    next(w for name, w in weights.items() if name.endswith("layers.0.mlp.fc1.weight")).mul_(3.0)
    assert (adapter.completion_logprobs(prompts, rows, tokens, model=reference) - base).abs().max() > 1e-5


def test_parameter_groups_split_tower_connector_and_lm(adapter):
    groups = adapter.parameter_groups()
    model = adapter.model
    ids = {name: {id(p) for p in params} for name, params in groups.items()}
    assert ids["vision"] == {id(p) for p in model.vision_tower.parameters()}
    assert ids["connector"] == {id(p) for p in model.connector.parameters()}
    assert ids["lm"] == {id(p) for p in model.language_model.parameters()}
    assert sum(len(v) for v in ids.values()) == len(list(model.parameters()))


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> list[bool]:
    return [not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)]


def test_rl_step_of_the_tinyllava_recipe(checkpoint, synth, tmp_path, monkeypatch):
    recipe = load_config(RECIPES / "tinyllava-video-r1.yaml")
    rl = recipe.rl
    assert (rl.algorithm, rl.beta, rl.advantage_noise, rl.num_generations, rl.max_new_tokens) == (
        "grpo", 0.01, 0.02, 8, 512)
    scheme = {"variant": "code", "ml": 1200, "r0": 0.5, "r1": 0.5, "r2": 1.0}  # docs/method.md#tinyllava-video-r1-reward, the code's
    assert [(r.name, r.params) for r in rl.rewards] == [("tinyllava", scheme)]
    assert (recipe.data.frame_rule, recipe.data.num_frames, recipe.data.template) == ("uniform", 16, TEMPLATE)
    assert recipe.model.freeze_vision and not recipe.model.freeze_connector and not recipe.model.freeze_lm

    events: list[tuple[str, int]] = []
    model_cls = TinyLlavaVideoForConditionalGeneration
    features, lm_forward = model_cls.get_video_features, model_cls.forward

    def video(self, pixels):
        events.append(("video", id(self)))
        return features(self, pixels)

    def forward(self, *args, **kwargs):
        if kwargs.get("inputs_embeds") is not None:  # prefill or whole-sequence forward (not a cached step)
            events.append(("full", id(self)))
        return lm_forward(self, *args, **kwargs)

    monkeypatch.setattr(model_cls, "get_video_features", video)
    monkeypatch.setattr(model_cls, "forward", forward)
    config = load_config(RECIPES / "tinyllava-video-r1.yaml", [
        f"model.path={checkpoint}", "model.dtype=float32", "model.gradient_checkpointing=false",
        f"data.train_file={synth / 'train.json'}", f"data.root={synth}", f"run.out={tmp_path / 'rl'}",
        "rl.num_generations=4", "rl.max_new_tokens=6", "run.max_steps=2", *TINY_TRAIN,
    ])
    final = train_rl(config, quiet=True)

    # per step: generation (policy) right after its video; the reference (its own copy) and the policy update
    # reuse the frozen tower's output of the step's clip, only the connector runs again
    assert [kind for kind, _ in events] == ["video", "full", "full", "full"] * 2
    models = [model for _, model in events]
    assert models[0] == models[1] == models[3] == models[4] != models[2] == models[6]

    before = load_tinyllava(checkpoint)[0].state_dict()
    after = load_tinyllava(final)[0].state_dict()
    assert not any(_changed(before, after, "vision_tower."))
    assert any(_changed(before, after, "connector.")) and any(_changed(before, after, "language_model."))
    exported = load_adapter(final)
    assert isinstance(exported, TinyLlavaAdapter)
    assert exported.frames == FrameRule(rule="uniform", num_frames=4) and exported.default_template == TEMPLATE
    metrics = [json.loads(line) for line in (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all("reward/tinyllava" in m for m in metrics)
    assert all(-2.0 <= m["reward/tinyllava"] <= 2.0 for m in metrics)


def test_sft_step_lowers_the_loss_on_its_batch(checkpoint, synth, records, tmp_path):
    config = load_config(None, [
        f"model.path={checkpoint}", f"sft.train_file={synth / 'train.json'}", f"data.train_file={synth / 'train.json'}",
        f"run.out={tmp_path / 'sft'}", "run.max_steps=3", "data.shuffle=false", *TINY_TRAIN,
    ])
    final = train_sft(config, quiet=True)
    start, trained = load_adapter(checkpoint, frames=FRAMES), load_adapter(final)
    target = build_target(start, records[0], "gold", random.Random(0))
    assert target.ids[-1] == start.end_of_turn_id  # the target ends with <|endoftext|>
    with torch.no_grad():
        losses = []
        for adapter in (start, trained):
            prompts = [adapter.encode(r, template=TEMPLATE) for r in records]
            targets = [build_target(adapter, r, "gold", random.Random(0)) for r in records]
            losses.append(sft_loss(adapter, prompts, targets).item())
    assert losses[1] < losses[0]
    before, after = start.model.state_dict(), trained.model.state_dict()
    assert not any(_changed(before, after, "vision_tower.")) and any(_changed(before, after, "connector."))


def test_eval_run_on_the_synthetic_test_set(adapter, synth, tmp_path):
    bench = load_benchmark(str(synth / "test.json"), None)
    decoding = Decoding(max_new_tokens=4, temperature=0.0, do_sample=False)
    for order in ("ordered", "shuffled"):
        settings = RunSettings(model="tiny", frames=4, max_pixels=None, mode="reason", template=TEMPLATE,
                               frame_order=order, decoding=decoding)
        path = run_eval(adapter, [bench], tmp_path / order, settings, batch_size=2)
        lines = read_predictions(path).lines
        assert sorted(p["id"] for p in lines) == sorted(r.id for r in bench.records)
    ordered = read_predictions(tmp_path / "ordered" / "predictions.jsonl").lines
    prompts = [adapter.encode(r, template=TEMPLATE) for r in bench.records]
    expected = dict(zip([r.id for r in bench.records], adapter.generate_texts(prompts, decoding)))
    assert {p["id"]: p["output"] for p in ordered} == expected


def test_cli_builds_and_converts_tiny_checkpoints(tmp_path, records, capsys):
    assert main(["model", "tiny", "--arch", "tinyllava-video", "--out", str(tmp_path / "tiny")]) == 0
    assert json.loads((tmp_path / "tiny/config.json").read_text())["model_type"] == "framethink_tinyllava_video"

    released = build_tiny_tinyllava(tmp_path / "released", seed=0, layout="released")
    assert main(["model", "convert", str(released), "--out", str(tmp_path / "converted")]) == 0
    assert json.loads((tmp_path / "converted/config.json").read_text())["model_type"] == "framethink_tinyllava_video"
    assert main(["model", "convert", str(tmp_path / "tiny"), "--out", str(tmp_path / "again")]) == 2
    assert "not a released TinyLLaVA-Video checkpoint" in capsys.readouterr().err

    tokens = torch.tensor([[5, 6, 7]])
    logprobs = []
    for path in (tmp_path / "tiny", released, tmp_path / "converted"):
        adapter = load_adapter(path, frames=FRAMES)
        with torch.no_grad():
            logprobs.append(adapter.completion_logprobs([adapter.encode(records[0], template=TEMPLATE)], [0], tokens))
    assert torch.equal(logprobs[0], logprobs[1]) and torch.equal(logprobs[0], logprobs[2])
