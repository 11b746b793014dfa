"""Every loss normalisation (RL: sequence, token, constant; SFT: token mean) gives the same gradient for one step
whether its rows run as one batch, as accumulated micro-batches, or split over two processes (torchrun, gloo):
each micro-batch is divided by the step's totals over all micro-batches and processes
(docs/method.md#normalisation-across-micro-batches-and-processes). Rows differ in length, so a micro-batch's own token mean
weighted by its row share would not give the step's token mean."""
from __future__ import annotations

import os
import subprocess
import sys

import torch

from framethink.config import save_config

pytest_plugins = ["fixtures_training"]

# Writes {case: [gradient of every trainable parameter]} for this process's share of one fixed step: 2 prompts x 4
# completions of fixed random tokens and lengths (RL), and the 2 records' SFT targets. Two processes take one prompt
# (4 rows) and one SFT record each; one process takes all, in `accum` micro-batches. lr 0: the weights never move.
ENTRY = """
import os, sys
import torch
from framethink.config import load_config
from framethink.engine import make_accelerator, process_count, process_rank, start_run
from framethink.data.records import load_records
from framethink.rl.step import Rollout, policy_update
from framethink.sft.trainer import build_target, sft_update
import random

config = load_config(sys.argv[1])
run = start_run(config, make_accelerator(config), resume=False)
grads = []
run.optimizer.register_step_pre_hook(lambda opt, args, kwargs: grads.append([p.grad.clone() for p in run.params]))
records = load_records(config.data.train_file)
prompts = [run.adapter.encode(r, template="video-r1") for r in records]
g = torch.Generator().manual_seed(0)
tokens = torch.randint(0, 700, (8, 6), generator=g)
lengths = torch.tensor([6, 1, 2, 1, 5, 6, 3, 6])
mask = (torch.arange(6)[None, :] < lengths[:, None]).float()
advantages = torch.linspace(-1, 1, 8)
world, rank = process_count(), process_rank()
rows = slice(rank * 8 // world, (rank + 1) * 8 // world)
mine = slice(rank * 2 // world, (rank + 1) * 2 // world)
out = {}
for accum in [int(a) for a in sys.argv[3].split(",")]:
    config.optim.grad_accum = accum
    for normalization in ("sequence", "token", "constant"):
        config.rl.normalization = normalization
        rollout = Rollout(prompts=prompts, row_prompt=[0] * 4 + [1] * 4, tokens=tokens, mask=mask,
                          advantages=advantages, rewards=torch.zeros(2, 4), texts=[""] * 8)
        part = Rollout(prompts=prompts, row_prompt=rollout.row_prompt[rows], tokens=tokens[rows], mask=mask[rows],
                       advantages=advantages[rows], rewards=rollout.rewards, texts=rollout.texts[rows])
        policy_update(run, part)
        out[f"rl-{normalization}-{accum}"] = grads.pop()
    if accum <= 2 // world:
        targets = [build_target(run.adapter, r, "gold", random.Random(0)) for r in records]
        assert len(targets[0].ids) != len(targets[1].ids)
        sft_update(run, prompts[mine], targets[mine])
        run.optimizer_step()
        out[f"sft-{accum}"] = grads.pop()
if rank == 0:
    torch.save(out, os.path.join(sys.argv[2], f"grads-{world}.pt"))
"""

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_accumulation_one_batch_and_two_processes_agree(recipe, tmp_path):
    config = recipe("rl.beta=0", "optim.lr=0", "optim.grad_clip=1e9", "rl.num_generations=4")
    save_config(config, tmp_path / "config.yaml")
    (tmp_path / "entry.py").write_text(ENTRY)
    args = [str(tmp_path / "entry.py"), str(tmp_path / "config.yaml"), str(tmp_path)]
    one = subprocess.run([sys.executable, *args, "1,2,4"], env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *args, "1"], env=ENV, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]

    single, split = torch.load(tmp_path / "grads-1.pt"), torch.load(tmp_path / "grads-2.pt")
    cases = [(f"rl-{n}", accums) for n in ("sequence", "token", "constant") for accums in [(2, 4)]] + [("sft", (2,))]
    for case, accums in cases:
        whole = single[f"{case}-1"]
        assert any(g.abs().max() > 0 for g in whole), case
        for other in [single[f"{case}-{a}"] for a in accums] + [split[f"{case}-1"]]:
            assert all(torch.allclose(a, b, atol=1e-7, rtol=1e-5) for a, b in zip(whole, other)), case
