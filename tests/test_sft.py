"""Supervised cold start: the loss covers the assistant tokens only, the answer modes, and a run that learns."""
from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from framethink.data.prompts import sft_target
from framethink.errors import DataError
from framethink.models.qwen_vl.mrope import mrope_position_ids
from framethink.models.qwen_vl.adapter import load_qwen_vl_adapter
from framethink.sft.trainer import build_target, sft_loss, train_sft

pytest_plugins = ["fixtures_training"]
TEMPLATE = "video-r1"


def _ids(adapter, text: str) -> list[int]:
    return adapter.tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def _transformers_loss(adapter, prompt, target_ids: torch.Tensor, ignore: torch.Tensor) -> tuple[float, int]:
    """(mean NLL, number of targets) from transformers' own forward with labels: the prompt and the `ignore`d
    target tokens labelled -100. One row, no padding; the M-RoPE positions are given explicitly."""
    inputs = prompt.inputs
    ids = torch.cat([inputs["input_ids"][0], target_ids]).unsqueeze(0)  # [1, L]
    types = torch.cat([inputs["mm_token_type_ids"][0], torch.zeros_like(target_ids)]).unsqueeze(0)
    steps = [float(s) * adapter.tokens_per_second for s in inputs["second_per_grid_ts"]]
    positions = mrope_position_ids(types, torch.ones_like(ids), [list(inputs["video_grid_thw"])], [steps], merge_size=2)
    labels = ids.clone()
    labels[0, : inputs["input_ids"].shape[1]] = -100
    labels[0, inputs["input_ids"].shape[1]:][ignore] = -100
    out = adapter.model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions,
                        pixel_values_videos=inputs["pixel_values_videos"], video_grid_thw=inputs["video_grid_thw"],
                        labels=labels)
    return out.loss.item(), int((labels[0, 1:] != -100).sum())


@pytest.mark.parametrize("mode", ["gold", "mask"])
def test_loss_covers_only_the_assistant_tokens(adapter, synth_records, mode):
    prompts = [adapter.encode(r, template=TEMPLATE) for r in synth_records]  # different lengths: left padding
    targets = [build_target(adapter, r, mode, random.Random(0)) for r in synth_records]
    for record, target in zip(synth_records, targets):
        assert target.ids.tolist() == _ids(adapter, sft_target(record)) + [adapter.end_of_turn_id]
        assert not torch.isin(target.ids, torch.tensor(adapter.suppress_ids)).any()  # no vision pads
    with torch.no_grad():
        loss = sft_loss(adapter, prompts, targets).item()
    # transformers' loss per record, the prompt (vision pads included) and the masked tokens never labelled
    per_record = [_transformers_loss(adapter, p, t.ids, t.weights == 0) for p, t in zip(prompts, targets)]
    expected = sum(nll * n for nll, n in per_record) / sum(n for _, n in per_record)
    assert loss == pytest.approx(expected, abs=1e-5)


def test_answer_modes(adapter, synth_records):
    record = synth_records[0]
    assert record.solution == "<answer>A</answer>" and record.option_letters() == ["A", "B", "C", "D"]
    before, after = _ids(adapter, record.cot + "\n<answer>"), _ids(adapter, "</answer>") + [adapter.end_of_turn_id]

    gold = build_target(adapter, record, "gold", random.Random(0))
    assert gold.ids.tolist() == before + _ids(adapter, "A") + after and gold.weights.tolist() == [1.0] * len(gold.ids)

    mask = build_target(adapter, record, "mask", random.Random(0))
    assert torch.equal(mask.ids, gold.ids)  # the answer stays in the input, out of the loss
    assert mask.weights.tolist() == [1.0] * len(before) + [0.0] * len(_ids(adapter, "A")) + [1.0] * len(after)

    letters = []
    for seed in range(12):
        target = build_target(adapter, record, "random", random.Random(seed))
        assert torch.equal(target.ids, build_target(adapter, record, "random", random.Random(seed)).ids)  # by seed
        letter = adapter.tokenizer.decode(target.ids[len(before):-len(after)])
        assert target.ids.tolist() == before + _ids(adapter, letter) + after
        assert target.weights.tolist() == [1.0] * len(target.ids)
        letters.append(letter)
    assert set(letters) <= {"A", "B", "C", "D"} and len(set(letters)) > 1  # a valid letter, not the gold one alone

    numerical = replace(record, problem_type="numerical", options=[], answer="3", solution="<answer>3</answer>")
    with pytest.raises(DataError, match="options.*multiple-choice"):
        build_target(adapter, numerical, "random", random.Random(0))


def test_sft_run_lowers_the_loss_and_exports(recipe, tiny_qwen25_vl_dir, synth_records, tmp_path):
    config = recipe("run.max_steps=10", "optim.lr=0.003", "optim.schedule=constant", "sft.answer=gold")
    final = train_sft(config, quiet=True)

    logged = [json.loads(line)["loss/sft"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 10 and logged[-1] < 0.7 * logged[0]

    def loss_of(adapter) -> float:
        prompts = [adapter.encode(r, template=TEMPLATE) for r in synth_records]
        targets = [build_target(adapter, r, "gold", random.Random(0)) for r in synth_records]
        with torch.no_grad():
            return sft_loss(adapter, prompts, targets).item()

    assert loss_of(load_qwen_vl_adapter(final)) < 0.7 * loss_of(load_qwen_vl_adapter(tiny_qwen25_vl_dir))
    before = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_qwen25_vl_dir).state_dict()
    after = Qwen2_5_VLForConditionalGeneration.from_pretrained(final).state_dict()
    vision = [k for k in before if k.startswith("model.visual.") and ".merger." not in k]
    assert all(torch.equal(before[k], after[k]) for k in vision)
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])


def test_target_is_tokenised_whole_and_masks_exactly_the_answer_tokens(adapter, synth_records):
    # "<answer> E </answer>": in one piece the tokenizer writes "<answer>", " E", " ", "</answer>"; cut around the
    # answer it would write "<answer>", " ", "E", " ", "</answer>", a split the model never produces itself
    record = replace(synth_records[0], answer="E", solution="<answer> E </answer>")
    whole = _ids(adapter, sft_target(record))
    assert [adapter.tokenizer.decode([i]) for i in whole[-4:]] == ["<answer>", " E", " ", "</answer>"]
    for mode in ("gold", "mask"):
        target = build_target(adapter, record, mode, random.Random(0))
        assert target.ids.tolist() == whole + [adapter.end_of_turn_id]
    masked = build_target(adapter, record, "mask", random.Random(0)).weights.tolist()
    assert masked == [1.0] * (len(whole) - 3) + [0.0, 1.0, 1.0, 1.0]  # " E" out of the loss, the rest in
    target = build_target(adapter, record, "random", random.Random(0))
    letter = target.ids.tolist()[len(whole) - 3]
    assert adapter.tokenizer.decode([letter]) in {" A", " B", " C", " D"}  # the drawn letter, one token with its space
    assert target.ids.tolist() == _ids(adapter, sft_target(record).replace(" E ", adapter.tokenizer.decode([letter]) + " ")) + [adapter.end_of_turn_id]
