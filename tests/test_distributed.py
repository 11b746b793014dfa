"""Data parallelism: two CPU processes under torchrun (gloo) train on different prompts, one of them without
a video, and end with identical weights that moved from the initial ones; each process's records."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from framethink.config import save_config
from framethink.engine import batch_indices, epoch_order

pytest_plugins = ["fixtures_training"]

# Runs train_rl and, when it exports, saves this process's weights as rank<N>.pt in the given folder.
ENTRY = """
import os, sys
import torch
import framethink.engine as engine
from framethink.config import load_config
from framethink.rl.trainer import train_rl

finish = engine.TrainingRun.finish

def finish_and_dump(run):
    torch.save(run.adapter.model.state_dict(), os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
    return finish(run)

engine.TrainingRun.finish = finish_and_dump
train_rl(load_config(sys.argv[1]), quiet=True)
"""


def test_two_processes_end_with_identical_weights(recipe, mixed_file, tiny_qwen25_vl_dir, tmp_path):
    # prompts_per_step 1 per process, records in file order (video, image, text): rank 0 trains on the video
    # then the text record, rank 1 on the image then the video, so each step one process has no video
    config = recipe(f"data.train_file={mixed_file}", "optim.prompts_per_step=1", "data.shuffle=false",
                    "run.max_steps=2", "rl.beta=0.04")
    save_config(config, tmp_path / "config.yaml")
    (tmp_path / "entry.py").write_text(ENTRY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(tmp_path / "entry.py"), str(tmp_path / "config.yaml"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    initial = load_file(tiny_qwen25_vl_dir / "model.safetensors")
    assert not torch.equal(initial["lm_head.weight"], rank0["lm_head.weight"])
    exported = load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert torch.equal(exported["lm_head.weight"], rank0["lm_head.weight"])
    # the temporal statistics are means over the processes that had a video prompt
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2] and all("temporal/p" in m for m in logged)


def test_each_process_takes_its_slice_of_one_permutation_per_epoch():
    # 5 records, 2 processes x 2 prompts: step 1 of rank 0 takes positions 4 and 5, i.e. the last record of
    # epoch 0's order and the first of epoch 1's; rank 1 takes positions 6 and 7 (epoch 1, offsets 1 and 2)
    seed = 3
    orders = [torch.randperm(5, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist() for epoch in (0, 1)]
    assert batch_indices(0, 2, 1, 2, 5, seed, True) == orders[0][2:4]
    assert batch_indices(1, 2, 0, 2, 5, seed, True) == [orders[0][4], orders[1][0]]
    assert batch_indices(1, 2, 1, 2, 5, seed, True) == orders[1][1:3]
    assert batch_indices(1, 2, 1, 2, 5, seed, False) == [1, 2]
    assert epoch_order(5, 1, seed, True) == orders[1] and sorted(orders[1]) == list(range(5))
