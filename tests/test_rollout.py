"""Sampling and scoring with a scripted stand-in for the model: weighted rewards, the per-group T-GRPO bonus
scored with the recipe's rewards, shuffled completions kept out of training, per-group statistics."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import framethink.rewards.registry as reward_registry
from framethink.config import RewardSpec, RLConfig, load_config
from framethink.data.records import Record
from framethink.errors import ConfigError
from framethink.models.adapter import EncodedPrompt
from framethink.models.sampling import Completions
from framethink.rewards import RewardOutput
from framethink.rl.advantages import compute_advantages
from framethink.rl.rollout import SampledGroups, sample_groups, score_group
from framethink.rl.step import RLRun, sample_step_groups

CF = "<think>a</think><answer>A</answer>"  # correct, formatted
CU = "<answer>A</answer>"  # correct, no <think>
WF = "<think>a</think><answer>B</answer>"  # wrong, formatted
WB = "B"  # wrong, no format
SHUFFLED_CF = "<think>shuffled</think><answer>A</answer>"
SHUFFLED_WB = "shuffled B"


def _record(rid: str, kind: str) -> Record:
    return Record(id=rid, question="Which?", options=["A. x", "B. y"], problem_type="multiple choice", answer="A",
                  solution="<answer>A</answer>", media_kind=kind, media=[Path(f"{rid}.mp4")])


class ScriptedAdapter:
    """Answers each (record id, frame order) prompt with the scripted texts, in row order; completion i has
    i % 3 + 1 tokens and its first token is i, so rows can be traced; token 99 is the end of a completion."""

    eos_ids = (99,)

    def __init__(self, script: dict[tuple[str, str], list[str]]):
        self.script = script
        self.encoded: list[tuple[str, str, int]] = []
        self.generated: list[tuple[list[tuple[str, str]], list[int]]] = []
        self.texts: list[str] = []

    def encode(self, record: Record, *, template: str, frame_order: str = "ordered", seed: int = 0) -> EncodedPrompt:
        self.encoded.append((record.id, frame_order, seed))
        return EncodedPrompt(record=record, inputs={}, frame_order=frame_order)

    def generate(self, prompts, row_prompt, decoding, *, generator=None) -> Completions:
        keys = [(p.record.id, p.frame_order) for p in prompts]
        self.generated.append((keys, list(row_prompt)))
        used: dict[tuple[str, str], int] = {}
        self.texts = []
        for i in row_prompt:
            self.texts.append(self.script[keys[i]][used.get(keys[i], 0)])
            used[keys[i]] = used.get(keys[i], 0) + 1
        n = len(row_prompt)
        lengths = torch.arange(n) % 3 + 1  # [N]
        mask = (torch.arange(3) < lengths.unsqueeze(1)).float()  # [N, 3]
        tokens = torch.where(mask.bool(), torch.arange(n).unsqueeze(1), torch.full((n, 3), -1))
        return Completions(tokens=tokens, mask=mask)

    def decode(self, completions: Completions) -> list[str]:
        return [self.texts[i] for i in completions.tokens[:, 0].tolist()]


def _rl(**changes) -> RLConfig:
    base = dict(num_generations=4, num_shuffled=2, rewards=[RewardSpec("accuracy"), RewardSpec("format", weight=0.5)])
    return RLConfig(**{**base, **changes})


def _advantages(rewards: list[list[float]]) -> torch.Tensor:
    r = torch.tensor(rewards)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()


SCRIPT = {
    ("v1", "ordered"): [CF, CU, WF, CF],  # p = 0.75
    ("v1", "shuffled"): [SHUFFLED_CF, SHUFFLED_WB],  # p~ = 0.5: 0.75 >= 0.8 * 0.5, bonus
    ("v2", "ordered"): [CF, WB, WB, WF],  # p = 0.25
    ("v2", "shuffled"): [SHUFFLED_CF, SHUFFLED_CF],  # p~ = 1.0: 0.25 < 0.8, no bonus
    ("i1", "ordered"): [CF, CF, CF, WB],  # an image: never a bonus, never a shuffled generation
}


def test_score_group_sums_the_weighted_rewards():
    rl = RLConfig(rewards=[RewardSpec("accuracy", weight=2.0), RewardSpec("format", weight=0.5),
                           RewardSpec("length_bonus", params={"omega": 0.2, "l_min": 2, "l_max": 3})])
    total, components = score_group([CF, CU, WF, CF], [2, 3, 2, 9], _record("v1", "video"), rl)
    # accuracy [1, 1, 0, 1] * 2 + format [1, 0, 1, 1] * 0.5 + length bonus (correct, 2..3 tokens) [0.2, 0.2, 0, 0]
    assert total == pytest.approx([2.7, 2.2, 0.5, 2.5])
    assert components["reward/accuracy"] == components["accuracy"] == [1.0, 1.0, 0.0, 1.0]
    assert components["reward/format"] == [1.0, 0.0, 1.0, 1.0]
    assert components["reward/length_bonus"] == pytest.approx([0.2, 0.2, 0.0, 0.0])


def test_no_accuracy_is_made_up_when_no_reward_reports_one():
    total, components = score_group([CF, WB], [1, 1], _record("v1", "video"), _rl(rewards=[RewardSpec("format")]))
    assert total == [1.0, 0.0] and "accuracy" not in components
    groups = sample_groups(ScriptedAdapter(SCRIPT), [_record("i1", "image")],
                           _rl(algorithm="grpo", rewards=[RewardSpec("format")]), template="t", seed=0,
                           generator=torch.Generator())
    assert math.isnan(groups.metrics()["accuracy"])  # left out of the logs, not computed by another rule
    with pytest.raises(ConfigError, match="T-GRPO compares the accuracy"):
        load_config(None, ["rl.algorithm=tgrpo", "rl.rewards=[{name: format}]"])


def test_shuffled_groups_are_scored_with_the_recipes_rewards(monkeypatch):
    # a recipe reward that judges every "shuffled" completion correct: p~ must come from it, not from another rule
    def judge(group):
        acc = [1.0 if "shuffled" in c else 0.0 for c in group.completions]
        return RewardOutput(rewards=acc, components={"accuracy": acc})

    monkeypatch.setitem(reward_registry.REWARDS, "judge", judge)
    groups = sample_groups(ScriptedAdapter(SCRIPT), [_record("v1", "video")], _rl(rewards=[RewardSpec("judge")]),
                           template="t", seed=0, generator=torch.Generator())
    m = groups.metrics()
    assert m["temporal/p"] == 0.0 and m["temporal/p_shuffled"] == 1.0  # SHUFFLED_WB counts as correct here
    assert m["accuracy"] == 0.0 and m["temporal/bonus_rate"] == 0.0


def test_tgrpo_rollout_bonus_statistics_and_advantages():
    adapter = ScriptedAdapter(SCRIPT)
    records = [_record("v1", "video"), _record("v2", "video"), _record("i1", "image")]
    rollout = sample_groups(adapter, records, _rl(), template="t", seed=7, generator=torch.Generator())

    # one generate call: 3 x 4 ordered rows, then 2 shuffled rows per video prompt; none for the image
    (keys, rows), = adapter.generated
    assert keys == [("v1", "ordered"), ("v2", "ordered"), ("i1", "ordered"), ("v1", "shuffled"), ("v2", "shuffled")]
    assert rows == [0] * 4 + [1] * 4 + [2] * 4 + [3, 3, 4, 4]
    shuffled_seeds = [seed for rid, order, seed in adapter.encoded if order == "shuffled"]
    assert [e[:2] for e in adapter.encoded if e[1] == "shuffled"] == [("v1", "shuffled"), ("v2", "shuffled")]
    assert len(set(shuffled_seeds)) == 2  # one permutation per prompt, different prompts differ

    # rewards: accuracy + 0.5 format, + 0.3 for the correct ordered answers of v1 only
    expected = [[1.8, 1.3, 0.5, 1.8], [1.5, 0.0, 0.0, 0.5], [1.5, 1.5, 1.5, 0.0]]
    assert torch.allclose(rollout.rewards, torch.tensor(expected))
    assert torch.allclose(compute_advantages(rollout.rewards).flatten(), _advantages(expected))

    # shuffled completions never train: only the 12 ordered rows, trimmed to their longest completion
    assert [p.frame_order for p in rollout.prompts] == ["ordered"] * 3
    assert rollout.tokens[:, 0].tolist() == list(range(12)) and rollout.tokens.shape == (12, 3)
    assert torch.equal(rollout.mask, (torch.arange(3) < (torch.arange(12) % 3 + 1).unsqueeze(1)).float())
    assert rollout.texts == SCRIPT["v1", "ordered"] + SCRIPT["v2", "ordered"] + SCRIPT["i1", "ordered"]

    m = rollout.metrics()
    assert m["temporal/p"] == pytest.approx((0.75 + 0.25) / 2)  # over the video prompts' own groups
    assert m["temporal/p_shuffled"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["temporal/bonus_rate"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(7 / 12)
    assert m["reward/format"] == pytest.approx(8 / 12)
    assert m["reward/total"] == pytest.approx(sum(map(sum, expected)) / 12)
    assert m["completion_length"] == pytest.approx(sum(i % 3 + 1 for i in range(12)) / 12)


@pytest.mark.parametrize(("strict", "bonus"), [(False, 0.3), (True, 0.0)], ids=["code->=", "paper->"])
def test_bonus_at_the_threshold(strict, bonus):
    # p = 0.5 and p~ = 1.0 with mu = 0.5: p == mu * p~
    script = {("v", "ordered"): [CF, CF, WF, WF], ("v", "shuffled"): [SHUFFLED_CF, SHUFFLED_CF]}
    rl = _rl(temporal_mu=0.5, temporal_strict=strict)
    rollout = sample_groups(ScriptedAdapter(script), [_record("v", "video")], rl, template="t", seed=0,
                            generator=torch.Generator())
    assert torch.allclose(rollout.rewards, torch.tensor([[1.5 + bonus, 1.5 + bonus, 0.5, 0.5]]))


def test_grpo_generates_no_shuffled_clips():
    adapter = ScriptedAdapter(SCRIPT)
    records = [_record("v1", "video"), _record("i1", "image")]
    rollout = sample_groups(adapter, records, _rl(algorithm="grpo"), template="t", seed=0,
                            generator=torch.Generator())
    assert [order for _, order, _ in adapter.encoded] == ["ordered", "ordered"]
    assert adapter.generated[0][1] == [0] * 4 + [1] * 4
    expected = [[1.5, 1.0, 0.5, 1.5], [1.5, 1.5, 1.5, 0.0]]
    assert torch.allclose(rollout.rewards, torch.tensor(expected))
    assert torch.allclose(compute_advantages(rollout.rewards).flatten(), _advantages(expected))
    assert not any(key.startswith("temporal/") for key in rollout.metrics())


def test_tgrpo_batch_without_video_reports_nan_temporal_statistics():
    # every process must report the same metric keys; the trainer's mean over processes leaves NaN out
    adapter = ScriptedAdapter(SCRIPT)
    rollout = sample_groups(adapter, [_record("i1", "image")], _rl(), template="t", seed=0,
                            generator=torch.Generator())
    assert adapter.generated[0][1] == [0] * 4
    assert all(math.isnan(rollout.metrics()[f"temporal/{key}"]) for key in ("p", "p_shuffled", "bonus_rate"))


def test_select_and_concat_keep_groups_whole():
    adapter = ScriptedAdapter(SCRIPT)
    a = sample_groups(adapter, [_record("v1", "video"), _record("v2", "video")], _rl(algorithm="grpo"), template="t",
                      seed=0, generator=torch.Generator())
    b = sample_groups(adapter, [_record("i1", "image")], _rl(algorithm="grpo"), template="t", seed=0,
                      generator=torch.Generator())
    both = SampledGroups.concat([a, b]).select([2, 0])
    assert [p.record.id for p in both.prompts] == ["i1", "v1"]
    assert both.texts == SCRIPT["i1", "ordered"] + SCRIPT["v1", "ordered"]
    assert torch.equal(both.rewards, torch.stack([b.rewards[0], a.rewards[0]]))
    assert torch.equal(both.tokens, torch.cat([b.tokens, a.tokens[:4]]))
    assert both.metrics()["reward/total"] == pytest.approx((b.rewards[0].mean() + a.rewards[0].mean()).item() / 2)


def test_truncated_completions_are_flagged():
    groups = sample_groups(ScriptedAdapter(SCRIPT), [_record("i1", "image")], _rl(algorithm="grpo", max_new_tokens=3),
                           template="t", seed=0, generator=torch.Generator())
    # lengths 1, 2, 3, 1 with no end token: only the one that reached max_new_tokens = 3 was cut
    assert groups.truncated.tolist() == [False, False, True, False]
    assert groups.metrics()["truncated"] == 0.25


def _run(rl: RLConfig, adapter, pool: list[Record]) -> RLRun:
    """An RL run around a scripted adapter: what `sample_step_groups` reads (config, adapter, RNG, rank)."""
    config = SimpleNamespace(rl=rl, data=SimpleNamespace(template="t"), run=SimpleNamespace(seed=0))
    return RLRun(SimpleNamespace(config=config, adapter=adapter, generator=torch.Generator(), world=1, rank=0), pool)


DYNAMIC = {**SCRIPT, ("c1", "ordered"): [CF] * 4, ("c2", "ordered"): [WB] * 4}  # all right / all wrong: std 0


def test_dynamic_sampling_drops_all_equal_groups_and_refills():
    adapter = ScriptedAdapter(DYNAMIC)
    rl = _rl(algorithm="grpo", dynamic_sampling=True, max_sampling_rounds=3)
    groups, metrics = sample_step_groups(_run(rl, adapter, [_record("v2", "video")]),
                                         [_record("c1", "video"), _record("v1", "video")], step=0)
    # round 0: c1 dropped (all correct), v1 kept; round 1: one fresh prompt (v2, the only record) kept
    assert [keys for keys, _ in adapter.generated] == [[("c1", "ordered"), ("v1", "ordered")], [("v2", "ordered")]]
    assert [p.record.id for p in groups.prompts] == ["v1", "v2"]
    assert groups.texts == DYNAMIC["v1", "ordered"] + DYNAMIC["v2", "ordered"]
    assert metrics["sampling/drop_rate"] == pytest.approx(1 / 3) and metrics["sampling/rounds"] == 2
    assert metrics["sampling/uninformative_kept"] == 0.0
    assert metrics["accuracy"] == pytest.approx((1.0 + 0.75 + 0.25) / 3)  # over every group sampled


def test_dynamic_sampling_stops_at_the_cap_and_keeps_the_batch_size():
    adapter = ScriptedAdapter(DYNAMIC)
    rl = _rl(algorithm="grpo", dynamic_sampling=True, max_sampling_rounds=1)
    groups, metrics = sample_step_groups(_run(rl, adapter, [_record("c1", "video")]),
                                         [_record("c1", "video"), _record("c2", "video")], step=0)
    assert len(adapter.generated) == 2  # the batch, then one extra round (the cap)
    assert [p.record.id for p in groups.prompts] == ["c1", "c2"]  # nothing informative: the dropped fill in
    assert metrics["sampling/drop_rate"] == 1.0 and metrics["sampling/uninformative_kept"] == 1.0


def test_without_dynamic_sampling_every_group_stays():
    adapter = ScriptedAdapter(DYNAMIC)
    groups, metrics = sample_step_groups(_run(_rl(algorithm="grpo"), adapter, []),
                                         [_record("c1", "video"), _record("v1", "video")], step=0)
    assert [p.record.id for p in groups.prompts] == ["c1", "v1"] and len(adapter.generated) == 1
    assert not any(key.startswith("sampling/") for key in metrics)
