"""FSDP2 (torch `fully_shard`) through accelerate's FSDP settings, on two CPU processes (torchrun, gloo).

The processes get accelerate's FSDP switches in the environment, as `accelerate launch` sets them from
configs/accelerate/fsdp.yaml. FSDP only shards where the data-parallel engine replicates, so the weights after
training must equal those of framethink's own data-parallel run of the same recipe.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from framethink.config import save_config
from framethink.engine import FSDP2, apply_lora, check_engine_settings
from framethink.engine.strategies import select_strategy
from framethink.errors import ConfigError
from framethink.models.qwen_vl.adapter import load_qwen_vl_adapter
from framethink.models.tiny import build_tiny

pytest_plugins = ["fixtures_training"]

# every process gets one prompt per step, in two micro-batches; noise gives every step a gradient
STEPS = ("optim.prompts_per_step=1", "optim.grad_accum=2", "data.shuffle=false", "run.max_steps=2", "rl.beta=0.04")
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true",
            "FSDP_OFFLOAD_PARAMS": "false"}


def _train(config, tmp_path: Path, name: str, fsdp: bool, *extra: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    save_config(config, path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env |= FSDP_ENV if fsdp else {}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "framethink.cli", "train", "rl", "--config", str(path), *extra],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )
    assert run.returncode == 0, "\n".join(line for line in run.stderr.splitlines() if "[rank0]" in line)[-4000:]
    return Path(config.run.out) / "final"


def _assert_same_weights(a: Path, b: Path, moved_from: Path, moved: str) -> None:
    """`a` and `b` export the same keys and weights, and `moved` differs from the initial checkpoint's."""
    wa, wb, w0 = (load_file(p / "model.safetensors") for p in (a, b, moved_from))
    assert wa.keys() == wb.keys()  # the whole weights in the layout of the data-parallel export
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], atol=2e-6, rtol=0, msg=key)
    assert not torch.equal(wa[moved], w0[moved])


def test_fsdp_trains_like_data_parallel_and_resumes(recipe, tiny_qwen25_vl_dir, tmp_path):
    # the tiny Qwen2.5-VL has an untied embedding: it is a unit of its own, every parameter is sharded
    ddp = _train(recipe(*STEPS, run="ddp"), tmp_path, "ddp", False)
    fsdp = _train(recipe(*STEPS, "run.save_every=1", run="fsdp"), tmp_path, "fsdp", True)
    _assert_same_weights(ddp, fsdp, tiny_qwen25_vl_dir, "lm_head.weight")
    assert load_file(fsdp / "model.safetensors").keys() == load_file(tiny_qwen25_vl_dir / "model.safetensors").keys()
    shards = tmp_path / "fsdp" / "checkpoints" / "step-000001" / "fsdp"
    assert len(list(shards.glob("*.distcp"))) == 2  # one shard file per process

    # resume from the step-1 checkpoint (the export removed): the second step is the same as uninterrupted
    kept = tmp_path / "uninterrupted"
    shutil.move(fsdp, kept)
    _train(recipe(*STEPS, "run.save_every=1", run="fsdp"), tmp_path, "fsdp-resume", True, "--resume")
    _assert_same_weights(kept, fsdp, tiny_qwen25_vl_dir, "lm_head.weight")
    logged = [json.loads(line)["step"] for line in (tmp_path / "fsdp" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 2]  # the resumed run trained step 2 only


def test_fsdp_keeps_a_tied_embedding_whole(recipe, tmp_path):
    # TinyLLaVA-Video ties its embedding to the output head: that weight stays whole on every process, its
    # gradient averaged by the engine, while the layers, the SigLIP tower and the connector are sharded
    tiny = build_tiny("tinyllava-video", tmp_path / "tiny")
    steps = (f"model.path={tiny}", "data.template=tinyllava-r1", "data.frame_rule=uniform", "data.num_frames=4",
             "optim.prompts_per_step=1", "data.shuffle=false", "run.max_steps=1", "rl.beta=0")
    ddp = _train(recipe(*steps, run="ddp"), tmp_path, "ddp", False)
    fsdp = _train(recipe(*steps, run="fsdp"), tmp_path, "fsdp", True)
    _assert_same_weights(ddp, fsdp, tiny, "language_model.model.embed_tokens.weight")


def test_lora_starts_from_the_same_weights_on_every_process(recipe, tiny_qwen25_vl_dir):
    # the processes seed their generators by rank; FSDP shards, and data parallelism steps, from identical weights
    config = recipe("model.lora.enabled=true")
    weights = []
    for rank in (0, 1):
        torch.manual_seed(rank)
        model = load_qwen_vl_adapter(tiny_qwen25_vl_dir).model
        apply_lora(model, config.model, config.run.seed)
        weights.append({k: v for k, v in model.state_dict().items() if "lora_" in k})
    assert weights[0] and weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def _cpu_processes() -> SimpleNamespace:
    return SimpleNamespace(distributed_type=DistributedType.MULTI_CPU)


def test_fsdp_refuses_mixed_records_up_front(recipe, synth_records, mixed_records, monkeypatch):
    config = recipe()
    check_engine_settings(config, mixed_records, _cpu_processes())  # data parallelism runs mixed data
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    check_engine_settings(recipe("optim.grad_accum=2"), synth_records, _cpu_processes())  # all video: fine
    with pytest.raises(ConfigError, match=r"FSDP needs records of one kind.*image \(e\.g\. .*\), text \(e\.g\. .*\), video"):
        check_engine_settings(config, mixed_records, _cpu_processes())
    assert isinstance(select_strategy(_cpu_processes()), FSDP2)
    with pytest.raises(ConfigError, match="run.shared_filesystem=false: FSDP"):  # shards every node must read
        check_engine_settings(recipe("run.shared_filesystem=false"), synth_records, _cpu_processes())
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="FSDP version 1: framethink runs FSDP2"):
        check_engine_settings(config, synth_records, _cpu_processes())
