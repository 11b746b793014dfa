"""The RL trainer on the tiny model: what trains and what stays frozen, exact zero gradients, no reference model
at beta 0, kept old log-probs over inner updates, Dr. GRPO and token normalisation, LoRA with a merged
export, exports that load with from_pretrained, atomic checkpoints and an exact resume, logs."""
from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError, replace
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as qwen25

import framethink.engine as engine
import framethink.rl.step as step_module
import framethink.rl.trainer as trainer
from framethink.config import load_config
from framethink.errors import CheckpointWriteError, ConfigError
from framethink.engine import (
    build_optimizer, build_scheduler, latest_checkpoint, make_accelerator, micro_batches, save_checkpoint, start_run,
)
from framethink.rl.rollout import sample_groups
from framethink.rl.step import RLRun, build_rollout, policy_update
from framethink.rl.trainer import train_rl

pytest_plugins = ["fixtures_training"]
METRICS = {
    "step", "time", "reward/total", "reward/accuracy", "reward/format", "accuracy", "completion_length",
    "zero_std_groups", "truncated", "temporal/p", "temporal/p_shuffled", "temporal/bonus_rate", "loss/policy_loss", "loss/kl",
    "loss/ratio_mean", "loss/clip_fraction", "loss/loss", "loss/grad_norm", "loss/lr", "time/rollout",
    "time/reference", "time/update",
}


def _weights(path) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint directory, loaded the way a user would."""
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path).state_dict()


def _loss_calls(monkeypatch) -> list[dict]:
    """Loss name, old_logp, ref_logp, settings and diagnostics of every policy-loss call of the RL step."""
    calls, original = [], step_module.policy_loss

    def spy(name, batch, settings):
        loss, diag = original(name, batch, settings)
        calls.append({"name": name, "old": batch.old_logp, "ref": batch.ref_logp, "settings": settings, "diag": diag})
        return loss, diag

    monkeypatch.setattr(step_module, "policy_loss", spy)
    return calls


def _rollout(config, run, records, *, lengths: list[int] | None = None):
    """A complete rollout of `records` on `run` (no KL term: beta 0), its loss mask cut to `lengths` tokens per
    row when given, so that rows differ in length."""
    groups = sample_groups(run.adapter, records, config.rl, template="video-r1", seed=0,
                           generator=torch.Generator().manual_seed(0))
    rollout = build_rollout(RLRun(run, records), groups, {})
    if lengths is not None:
        width = rollout.tokens.shape[1]
        mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()  # [N, T]
        rollout = replace(rollout, mask=mask)
    return rollout


def test_tgrpo_step_trains_the_unfrozen_parts_and_exports_them(recipe, tiny_qwen25_vl_dir, tmp_path, monkeypatch):
    exported = {}
    original = engine.TrainingRun.finish

    def capture(run):
        exported.update({k: v.detach().clone() for k, v in run.adapter.model.state_dict().items()})
        return original(run)

    monkeypatch.setattr(engine.TrainingRun, "finish", capture)
    config = recipe("rl.algorithm=tgrpo", "rl.beta=0.04", "run.report_to=[tensorboard]")
    final = train_rl(config, quiet=True)

    before, after = _weights(tiny_qwen25_vl_dir), _weights(final)
    assert after.keys() == exported.keys()
    assert all(torch.equal(after[k], exported[k]) for k in after)  # the export holds the trained weights
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    vision = {k for k in before if k.startswith("model.visual.") and ".merger." not in k}
    assert vision and not vision & changed  # the vision tower is frozen (freeze_vision defaults to true)
    assert {k for k in before if ".merger." in k} <= changed  # the connector trains: gradients reach the video
    lm_matrices = {k for k in before if k.startswith("model.language_model.layers.") and before[k].ndim == 2}
    assert lm_matrices <= changed and "lm_head.weight" in changed

    run = tmp_path / "run"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0].keys() == METRICS and lines[0]["step"] == 1
    assert all(math.isfinite(v) for v in lines[0].values())
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert load_config(run / "config.yaml") == config


def test_zero_advantages_give_an_exactly_zero_gradient(recipe, synth_records):
    config = recipe("rl.beta=0", "rl.algorithm=grpo")
    run = start_run(config, make_accelerator(config), resume=False)
    adapter, params = run.adapter, run.params
    grads: list[list[torch.Tensor | None]] = []
    run.optimizer.register_step_pre_hook(lambda opt, args, kwargs: grads.append([p.grad for p in params]))
    rollout = _rollout(config, run, synth_records)
    with pytest.raises(FrozenInstanceError):  # built once, complete: never changed afterwards
        rollout.advantages = torch.zeros_like(rollout.advantages)
    for advantages in (torch.zeros_like(rollout.advantages), torch.linspace(-1, 1, len(rollout.advantages))):
        policy_update(run, replace(rollout, advantages=advantages))
    zero, control = grads
    assert all(g is not None for g in zero)  # the graph reached every trainable parameter ...
    assert all(torch.equal(g, torch.zeros_like(g)) for g in zero)  # ... with exactly zero gradient
    assert any(g.abs().max() > 0 for g in control)  # while non-zero advantages move it


def test_micro_batches_are_exactly_grad_accum_near_equal_slices():
    # DeepSpeed counts micro-batches to find the step boundary, so a step has exactly grad_accum of them
    assert micro_batches(12, 1) == [slice(0, 12)]
    assert micro_batches(5, 2) == [slice(0, 3), slice(3, 5)]
    assert micro_batches(7, 3) == [slice(0, 3), slice(3, 5), slice(5, 7)]
    with pytest.raises(ConfigError, match="grad_accum=4 is more than the 3 rows"):
        micro_batches(3, 4)


@pytest.mark.parametrize("normalization", ["sequence", "token", "constant"])
def test_gradient_accumulation_matches_one_batch(recipe, synth_records, normalization):
    # lr 0: every update sees the same weights; rows of 6, 1, 1, 1, 6, 2, 3, 6 tokens, so that a micro-batch's
    # token mean weighted by its row share would differ from the step's token mean
    config = recipe("rl.beta=0", "rl.algorithm=grpo", "optim.lr=0", f"rl.normalization={normalization}")
    run = start_run(config, make_accelerator(config), resume=False)
    params = run.params
    grads = []
    run.optimizer.register_step_pre_hook(lambda opt, args, kwargs: grads.append([p.grad.clone() for p in params]))
    rollout = _rollout(config, run, synth_records, lengths=[6, 1, 1, 1, 6, 2, 3, 6])
    rollout = replace(rollout, advantages=torch.linspace(-1, 1, 8))
    for accum in (1, 2, 4):
        config.optim.grad_accum = accum
        policy_update(run, rollout)
    one, *accumulated = grads
    assert any(g.abs().max() > 0 for g in one)
    for other in accumulated:  # 8 rows in 2 or 4 micro-batches: the same step loss
        assert all(torch.allclose(a, b, atol=1e-7) for a, b in zip(one, other))


def test_beta_zero_loads_no_reference_model(recipe, monkeypatch):
    copies = []
    monkeypatch.setattr(engine.strategies, "copy", SimpleNamespace(deepcopy=lambda obj: copies.append(obj) or obj))
    losses = _loss_calls(monkeypatch)
    models = set()
    forward = qwen25.Qwen2_5_VLTextModel.forward

    def language(self, *args, **kwargs):
        models.add(id(self))
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(qwen25.Qwen2_5_VLTextModel, "forward", language)
    train_rl(recipe("rl.beta=0"), quiet=True)
    assert not copies  # no reference copy of the policy was made
    assert len(losses) == 1 and losses[0]["ref"] is None
    assert len(models) == 1  # one language model ran: the policy


def test_two_inner_updates_keep_the_old_log_probs(recipe, monkeypatch):
    losses = _loss_calls(monkeypatch)
    train_rl(recipe("rl.num_iterations=2", "rl.beta=0.04"), quiet=True)
    first, second = losses
    assert first["old"] is not None and torch.equal(first["old"], second["old"])  # the sampling policy's, fixed
    assert abs(first["diag"]["ratio_mean"].item() - 1) < 1e-6  # before any update the policy is the old one
    assert abs(second["diag"]["ratio_mean"].item() - 1) > 1e-6  # after one update it is not
    assert first["diag"]["kl"].item() < 1e-6 < second["diag"]["kl"].item()  # the policy leaves the reference


@pytest.mark.parametrize(
    ("overrides", "advantage", "loss", "normalization"),
    [(("rl.advantage=dr_grpo", "rl.normalization=constant"), "dr_grpo", "grpo", "constant"),
     (("rl.normalization=token",), "grpo", "grpo", "token"),
     (("rl.advantage=rloo", "rl.loss=dapo"), "rloo", "dapo", "token"),
     (("rl.loss=gspo",), "grpo", "gspo", "sequence"),
     (("rl.loss=gspo-token", "rl.dynamic_sampling=true"), "grpo", "gspo-token", "sequence")],
    ids=["dr-grpo", "token", "rloo-dapo", "gspo", "gspo-token-dynamic"],
)
def test_each_algorithm_is_one_override_and_trains(recipe, tiny_qwen25_vl_dir, monkeypatch, overrides, advantage, loss,
                                                   normalization):
    losses = _loss_calls(monkeypatch)
    names = []
    compute_advantages = step_module.compute_advantages
    monkeypatch.setattr(step_module, "compute_advantages",
                        lambda rewards, name, **kw: (names.append(name), compute_advantages(rewards, name, **kw))[1])
    final = train_rl(recipe(*overrides), quiet=True)
    assert names == [advantage]
    (call,) = losses
    assert call["name"] == loss and call["settings"].normalization == normalization
    assert call["settings"].max_completion_length == 6
    assert (call["ref"] is None) == (loss == "dapo")  # DAPO has no KL term: no reference model
    assert math.isfinite(call["diag"]["loss"].item())
    before, after = _weights(tiny_qwen25_vl_dir), _weights(final)
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])


def test_truncated_completions_can_be_masked_out_of_the_loss(recipe, synth_records):
    config = recipe("rl.beta=0", "rl.mask_truncated=true", "rl.max_new_tokens=3")
    run = start_run(config, make_accelerator(config), resume=False)
    groups = sample_groups(run.adapter, synth_records, config.rl, template="video-r1", seed=0,
                           generator=torch.Generator().manual_seed(0))
    rollout = build_rollout(RLRun(run, synth_records), groups, {})
    assert groups.truncated.any()  # a random tiny model rarely stops within 3 tokens
    assert torch.equal(rollout.mask.sum(-1) == 0, groups.truncated)  # exactly the cut rows leave the loss
    assert torch.equal(rollout.mask[~groups.truncated], groups.mask[~groups.truncated])


def test_lora_trains_only_adapters_and_exports_a_merged_model(recipe, tiny_qwen25_vl_dir, monkeypatch):
    trained, frozen = [], []
    original = engine.parameters.trainable_parameters

    def record(adapter, config):
        params, lora = original(adapter, config)
        ids = {id(p) for p in params}
        for name, p in adapter.model.named_parameters():
            (trained if id(p) in ids else frozen).append((name, p.requires_grad))
        return params, lora

    monkeypatch.setattr(engine.parameters, "trainable_parameters", record)
    final = train_rl(recipe("model.lora.enabled=true", "model.lora.r=4", "model.lora.alpha=8"), quiet=True)

    assert trained and all("lora_" in name and grad for name, grad in trained)
    assert frozen and not any("lora_" in name or grad for name, grad in frozen)
    before, after = _weights(tiny_qwen25_vl_dir), _weights(final)
    assert after.keys() == before.keys()  # merged: plain weight names, no adapter tensors
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    targets = {k for k in before if k.startswith("model.language_model.") and
               any(f"self_attn.{m}.weight" in k for m in ("q_proj", "k_proj", "v_proj", "o_proj"))}
    assert changed == targets  # exactly the LoRA-adapted projections moved, by their merged update


def test_checkpoints_are_atomic(recipe, tmp_path, monkeypatch):
    config = recipe()
    model = torch.nn.Linear(2, 2)
    params = list(model.parameters())
    optimizer = build_optimizer(params, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, 2)
    out = tmp_path / "run"
    args = (model, params, optimizer, scheduler, torch.Generator(), {})
    assert latest_checkpoint(out) is None
    save_checkpoint(out, 1, *args)
    real_save = torch.save

    def crash(obj, path, *a, **kw):
        if str(path).endswith("optimizer.pt"):
            raise OSError("disk full")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(CheckpointWriteError, match="disk full"):
        save_checkpoint(out, 2, *args)
    assert not (out / "checkpoints" / ".tmp-000002").exists()  # the failed write is removed, never renamed
    assert latest_checkpoint(out) == out / "checkpoints" / "step-000001"
    monkeypatch.setattr(torch, "save", real_save)
    save_checkpoint(out, 2, *args)
    assert latest_checkpoint(out) == out / "checkpoints" / "step-000002"
    assert json.loads((out / "checkpoints" / "step-000002" / "state.json").read_text())["step"] == 2


def test_kill_and_resume_gives_identical_weights(recipe, tmp_path, monkeypatch):
    overrides = ("run.max_steps=2", "run.save_every=1", "rl.beta=0.04")
    uninterrupted = train_rl(recipe(*overrides, run="a"), quiet=True)

    config = recipe(*overrides, run="b")
    calls, sample = [], step_module.sample_groups

    def killed_at_step_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process dies in the middle of step 2
        return sample(*args, **kwargs)

    monkeypatch.setattr(step_module, "sample_groups", killed_at_step_2)
    with pytest.raises(KeyboardInterrupt):
        train_rl(config, quiet=True)
    monkeypatch.setattr(step_module, "sample_groups", sample)
    checkpoints = tmp_path / "b" / "checkpoints"
    (checkpoints / ".tmp-000002").mkdir()  # a checkpoint whose write was cut short
    (checkpoints / ".tmp-000002" / "state.json").write_text('{"step": 2}')
    assert latest_checkpoint(tmp_path / "b") == checkpoints / "step-000001"
    resumed = train_rl(config, resume=True, quiet=True)

    a, b = load_file(uninterrupted / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    initial = load_file(config.model.path + "/model.safetensors")
    assert not torch.equal(initial["lm_head.weight"], a["lm_head.weight"])
    logged = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2]
    assert [m["loss/loss"] for m in logged] == [m["loss/loss"] for m in reference]

