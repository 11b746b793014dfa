"""Two "nodes" on one machine: torchrun --nnodes 2 with one process each, rendezvous on 127.0.0.1 (gloo).

The run must end with the weights one process reaches on the same records, and write its checkpoints and
export once on a filesystem both nodes share, or once on each node when `run.shared_filesystem=false` (and each
node then resumes from its own copy).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from framethink.config import save_config

pytest_plugins = ["fixtures_training"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
CHECKPOINT_FILES = {"trainable.pt", "optimizer.pt", "scheduler.pt", "state.json"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_on_two_nodes(config: Path, *per_node: list[str]) -> None:
    """`framethink train sft` under torchrun as node 0 and node 1 (one process each), with node-specific
    overrides."""
    port = _free_port()
    nodes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
             "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
             "-m", "framethink.cli", "train", "sft", "--config", str(config), *overrides],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank, overrides in enumerate(per_node)
    ]
    for node in nodes:
        _, err = node.communicate(timeout=400)
        assert node.returncode == 0, err[-4000:]


def _same_records(synth_dir: Path, folder: Path) -> Path:
    """Two records with the same question and target text on different clips: each holds as many target tokens,
    so the mean of the two per-record losses (one record per node) is the loss of the pair (one process)."""
    first, second = json.loads((synth_dir / "train.json").read_text())
    rows = [{**first, "path": str(synth_dir / first["path"])}, {**first, "path": str(synth_dir / second["path"])}]
    (folder / "same.json").write_text(json.dumps(rows))
    return folder / "same.json"


def test_two_nodes_train_like_one_process_and_write_once_per_run_or_per_node(recipe, synth_dir, tmp_path):
    train = _same_records(synth_dir, tmp_path)
    steps = (f"sft.train_file={train}", "data.shuffle=false", "run.max_steps=2", "run.save_every=1")
    one = recipe(*steps, "optim.prompts_per_step=2", run="one")
    save_config(one, tmp_path / "one.yaml")
    single = subprocess.run([sys.executable, "-m", "framethink.cli", "train", "sft", "--config", str(tmp_path / "one.yaml")],
                            env=ENV, capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-4000:]

    save_config(recipe(*steps, "optim.prompts_per_step=1", run="shared"), tmp_path / "two.yaml")
    _train_on_two_nodes(tmp_path / "two.yaml", [], [])
    expected = load_file(tmp_path / "one" / "final" / "model.safetensors")
    trained = load_file(tmp_path / "shared" / "final" / "model.safetensors")
    assert trained.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(trained[key], expected[key], atol=2e-6, rtol=0, msg=key)
    assert not torch.equal(expected["lm_head.weight"], load_file(recipe().model.path + "/model.safetensors")["lm_head.weight"])
    checkpoint = tmp_path / "shared" / "checkpoints" / "step-000001"
    assert {p.name for p in checkpoint.iterdir()} == CHECKPOINT_FILES | {"rng-rank0.pt", "rng-rank1.pt"}

    # nodes without a shared filesystem: each node's first process writes a complete copy on its own disk
    per_node = [["run.shared_filesystem=false", f"run.out={tmp_path / f'node{rank}'}"] for rank in (0, 1)]
    _train_on_two_nodes(tmp_path / "two.yaml", *per_node)
    for rank in (0, 1):
        node = tmp_path / f"node{rank}"
        assert {p.name for p in (node / "checkpoints" / "step-000001").iterdir()} == CHECKPOINT_FILES | {f"rng-rank{rank}.pt"}
        weights = load_file(node / "final" / "model.safetensors")
        assert weights.keys() == trained.keys() and all(torch.equal(weights[k], trained[k]) for k in trained)
    assert (tmp_path / "node1" / "config.yaml").is_file() and not (tmp_path / "node1" / "metrics.jsonl").exists()

    # each node resumes from its own copy of the step-1 checkpoint and ends where the uninterrupted run did
    for rank in (0, 1):
        shutil.rmtree(tmp_path / f"node{rank}" / "final")
    _train_on_two_nodes(tmp_path / "two.yaml", *[[*overrides, "--resume"] for overrides in per_node])
    for rank in (0, 1):
        weights = load_file(tmp_path / f"node{rank}" / "final" / "model.safetensors")
        assert all(torch.equal(weights[k], trained[k]) for k in trained)
