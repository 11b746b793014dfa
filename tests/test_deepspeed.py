"""DeepSpeed ZeRO-2 / ZeRO-3 through accelerate, on two CPU processes (torchrun, gloo).

The processes get accelerate's DeepSpeed switches in the environment, as `accelerate launch` sets them from
configs/accelerate/zero{2,3}.yaml. ZeRO only partitions where the data-parallel engine replicates, so the
weights after training must equal those of framethink's own data-parallel run of the same recipe.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from framethink.config import save_config
from framethink.engine import DataParallel, DeepSpeed, check_engine_settings
from framethink.engine.strategies import select_strategy
from framethink.errors import ConfigError

pytest_plugins = ["fixtures_training"]

# every process gets one prompt per step; noise gives every step a gradient on the random model
STEPS = ("optim.prompts_per_step=1", "data.shuffle=false", "run.max_steps=2", "rl.beta=0.04", "run.save_every=1")


def _train(config, tmp_path: Path, name: str, zero_stage: int | None, *extra: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    save_config(config, path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if zero_stage is not None:
        env |= {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": str(zero_stage)}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "framethink.cli", "train", "rl", "--config", str(path), *extra],
        env=env, capture_output=True, text=True, timeout=400, check=False,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return Path(config.run.out) / "final"


def _assert_same_weights(a: Path, b: Path, moved_from: Path) -> None:
    wa, wb, w0 = (load_file(p / "model.safetensors") for p in (a, b, moved_from))
    assert wa.keys() == wb.keys() == w0.keys()  # the exported layout is the plain Hugging Face one
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], atol=2e-6, rtol=0, msg=key)
    assert not torch.equal(wa["lm_head.weight"], w0["lm_head.weight"])


def test_zero2_trains_like_data_parallel_and_resumes(recipe, tiny_qwen25_vl_dir, tmp_path):
    # two micro-batches per step: DeepSpeed accumulates them as the data-parallel engine does
    overrides = (*STEPS, "optim.grad_accum=2")
    ddp = _train(recipe(*overrides, run="ddp"), tmp_path, "ddp", None)
    zero2 = _train(recipe(*overrides, run="zero2"), tmp_path, "zero2", 2)
    _assert_same_weights(ddp, zero2, tiny_qwen25_vl_dir)
    shards = tmp_path / "zero2" / "checkpoints" / "step-000001" / "deepspeed"
    assert len([p for p in shards.iterdir() if "optim_states" in p.name]) == 2  # one optimiser shard per process

    # resume from the step-1 checkpoint (the export removed): the second step is the same as uninterrupted
    resumed = recipe(*overrides, run="zero2")
    final = Path(resumed.run.out) / "final"
    for f in final.iterdir():
        f.unlink()
    final.rmdir()
    _train(resumed, tmp_path, "zero2-resume", 2, "--resume")
    _assert_same_weights(zero2, final, tiny_qwen25_vl_dir)
    logged = [json.loads(line)["step"] for line in (tmp_path / "zero2" / "metrics.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 2]  # the resumed run trained step 2 only


def test_zero3_trains_like_data_parallel(recipe, tiny_qwen25_vl_dir, tmp_path):
    # ZeRO-3 partitions the parameters too: generation gathers them once, the reference model is its own engine
    ddp = _train(recipe(*STEPS, run="ddp"), tmp_path, "ddp", None)
    zero3 = _train(recipe(*STEPS, run="zero3"), tmp_path, "zero3", 3)
    _assert_same_weights(ddp, zero3, tiny_qwen25_vl_dir)
    shards = tmp_path / "zero3" / "checkpoints" / "step-000001" / "deepspeed"
    assert len([p for p in shards.iterdir() if "model_states" in p.name]) == 2  # the parameters are partitioned


def _zero(stage: int) -> SimpleNamespace:
    plugin = SimpleNamespace(zero_stage=stage)
    return SimpleNamespace(distributed_type=DistributedType.DEEPSPEED, state=SimpleNamespace(deepspeed_plugin=plugin))


def test_zero3_refuses_mixed_records_and_accumulation_up_front(recipe, synth_records, mixed_records):
    config = recipe()
    check_engine_settings(config, synth_records, _zero(3))  # all video: fine
    check_engine_settings(config, mixed_records, _zero(2))  # ZeRO-2 runs mixed data
    with pytest.raises(ConfigError, match=r"image \(e\.g\. .*\), text \(e\.g\. .*\), video"):
        check_engine_settings(config, mixed_records, _zero(3))
    with pytest.raises(ConfigError, match="optim.grad_accum=2"):
        check_engine_settings(recipe("optim.grad_accum=2"), synth_records, _zero(3))
    # shards every node must read: no checkpoint per node
    with pytest.raises(ConfigError, match="run.shared_filesystem=false: DeepSpeed"):
        check_engine_settings(recipe("run.shared_filesystem=false"), synth_records, _zero(2))


def test_the_strategy_follows_accelerate_s_deepspeed_stage():
    zero2, zero3 = select_strategy(_zero(2)), select_strategy(_zero(3))
    assert isinstance(zero2, DeepSpeed) and (zero2.stage, zero3.stage) == (2, 3)
    assert type(select_strategy(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU))) is DataParallel
