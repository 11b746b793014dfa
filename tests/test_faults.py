"""Faults a long run meets: a stop signal, a non-finite update, a checkpoint that cannot be written, a record
whose media is missing or fails to load. Each ends with the run resumable from an intact checkpoint."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import framethink.engine.parameters as parameters
from framethink.config import save_config
from framethink.engine import TrainingRun, build_optimizer, build_scheduler, latest_checkpoint, load_checkpoint, save_checkpoint
from framethink.engine.faults import MediaCheckError
from framethink.errors import CheckpointWriteError, DataError, TrainingStopped
from framethink.rl.trainer import train_rl
from framethink.sft.trainer import train_sft

pytest_plugins = ["fixtures_training"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "framethink.cli", "train", *args], env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------------------- SIGTERM / SIGINT
def test_sigterm_mid_run_checkpoints_and_resume_ends_bit_identical(recipe, tmp_path):
    overrides = ("run.max_steps=12", "rl.beta=0.04", "run.log_every=1")
    for name in ("a", "b"):
        save_config(recipe(*overrides, run=name), tmp_path / f"{name}.yaml")
    uninterrupted = _cli("rl", "--config", str(tmp_path / "a.yaml"))
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()[-3000:]

    killed = _cli("rl", "--config", str(tmp_path / "b.yaml"))
    metrics = tmp_path / "b" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().strip()):  # the first step is done
        assert killed.poll() is None and time.monotonic() < deadline, killed.stderr.read()[-3000:]
        time.sleep(0.02)
    killed.send_signal(signal.SIGTERM)
    _, err = killed.communicate(timeout=240)
    assert killed.returncode == 2, err[-3000:]
    assert "stopped by SIGTERM after step" in err
    checkpoint = latest_checkpoint(tmp_path / "b")
    stopped_at = int(checkpoint.name.removeprefix("step-"))
    assert 1 <= stopped_at < 12 and not (tmp_path / "b" / "final").exists()
    assert f"Checkpoint: {checkpoint}" in err

    command = re.search(r"Resume with: framethink (train .*? --resume)", err).group(1).split()
    resumed = subprocess.run([sys.executable, "-m", "framethink.cli", *command], env=ENV, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _same_weights(tmp_path / "a" / "final", tmp_path / "b" / "final")
    steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines()]
    assert steps == [*range(1, stopped_at + 1), *range(stopped_at + 1, 13)]  # each step trained once


# ---------------------------------------------------------------------------- non-finite updates
@pytest.fixture
def nan_in_forward(monkeypatch):
    """`nan_in_forward({1})`: the policy's output head returns NaN in the training forwards of step 2 (steps
    0-based; None: every step)."""
    def install(steps: set[int] | None) -> None:
        current = {"step": -1}
        original_indices, original_build = TrainingRun.batch_indices, parameters.build_adapter

        def batch_indices(run, step, num_records):
            current["step"] = step
            return original_indices(run, step, num_records)

        def build(config, device):
            adapter = original_build(config, device)

            def poison(module, args, output):
                return output * float("nan") if module.training and (steps is None or current["step"] in steps) else None

            adapter.model.get_output_embeddings().register_forward_hook(poison)
            return adapter

        monkeypatch.setattr(TrainingRun, "batch_indices", batch_indices)
        monkeypatch.setattr(parameters, "build_adapter", build)

    return install


def test_a_nan_loss_skips_that_update_and_logs_its_prompts(recipe, tmp_path, nan_in_forward):
    nan_in_forward({1})  # step 2 of 3 (one micro-batch per step)
    config = recipe("run.max_steps=3", "run.save_every=1", "optim.prompts_per_step=1", "data.shuffle=false")
    final = train_sft(config, quiet=True)

    weights = [torch.load(tmp_path / "run" / "checkpoints" / f"step-{s:06d}" / "trainable.pt") for s in (1, 2)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # step 2 changed nothing
    exported = load_file(final / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in exported.values())
    assert not torch.equal(exported["lm_head.weight"], weights[1]["lm_head.weight"])  # step 3 trained
    (event,) = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert event["event"] == "nonfinite_update_skipped" and event["step"] == 2
    second = config.sft.train_file  # the 2nd record of the file is step 2's prompt
    assert len(event["prompts"]) == 1 and event["prompts"][0].endswith(f"({second}:[1])")
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [1, 2, 3] and "loss/sft" not in logged[1]


def test_a_skipped_first_update_moves_the_schedule_without_a_warning(recipe, tmp_path, nan_in_forward):
    nan_in_forward({0})  # step 1: the optimiser has not stepped yet when the schedule moves
    config = recipe("run.max_steps=3", "optim.prompts_per_step=1", "optim.warmup_steps=2", "optim.lr=1e-3",
                    "optim.schedule=constant")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "lr_scheduler.step() before optimizer.step()" would raise here
        train_sft(config, quiet=True)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["loss/lr"] for m in logged] == pytest.approx([5e-4, 1e-3, 1e-3])  # the skip did not shift the warm-up


def test_an_error_outside_a_record_gives_the_signal_handlers_back(recipe, monkeypatch):
    # the demo calls the trainers in its own process: after any failure its Ctrl-C must be its own again
    import framethink.sft.trainer as sft_trainer

    def fail(*args, **kwargs):
        raise RuntimeError("an update failed")

    monkeypatch.setattr(sft_trainer, "sft_update", fail)
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError, match="an update failed"):
        train_sft(recipe("run.max_steps=2"), quiet=True)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_consecutive_nan_updates_write_a_checkpoint_and_stop(recipe, tmp_path, nan_in_forward):
    nan_in_forward(None)  # every step
    config = recipe("run.max_steps=5", "run.max_nonfinite_steps=2")
    with pytest.raises(TrainingStopped, match=r"2 consecutive updates had a non-finite loss or gradient \(steps 1, 2"):
        train_sft(config, quiet=True)
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoints" / "step-000002"
    assert not (tmp_path / "run" / "final").exists()


# ---------------------------------------------------------------------------- checkpoint writes
def _tiny_state(recipe):
    config = recipe()
    model = torch.nn.Linear(2, 2)
    params = list(model.parameters())
    optimizer = build_optimizer(params, config.optim)
    model(torch.ones(1, 2)).sum().backward()
    optimizer.step()  # the optimiser has state to save
    return model, params, optimizer, build_scheduler(optimizer, config.optim, 2), torch.Generator()


@pytest.mark.parametrize(("target", "error"), [
    ("optimizer.pt", OSError(errno.ENOSPC, "No space left on device")),
    ("state.json", PermissionError(errno.EACCES, "Permission denied")),
])
def test_a_failed_checkpoint_write_keeps_the_previous_one(recipe, tmp_path, monkeypatch, target, error):
    model, params, optimizer, scheduler, generator = _tiny_state(recipe)
    out = tmp_path / "run"
    save_checkpoint(out, 1, model, params, optimizer, scheduler, generator, {})
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(1.0)  # the state of step 2 differs
    real_save, real_write = torch.save, Path.write_text

    def failing_save(obj, path, *args, **kwargs):
        if Path(path).name == target:
            raise OSError(error.errno, error.strerror, str(path))
        return real_save(obj, path, *args, **kwargs)

    def failing_write(path, *args, **kwargs):
        if path.name == target:
            raise PermissionError(error.errno, error.strerror, str(path))
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    monkeypatch.setattr(Path, "write_text", failing_write)
    with pytest.raises(CheckpointWriteError) as failure:
        save_checkpoint(out, 2, model, params, optimizer, scheduler, generator, {})
    message = str(failure.value)
    assert str(out / "checkpoints" / "step-000002") in message and error.strerror in message
    needed = 2 * 3 * 4 * 3  # weight and bias (6 floats), Adam's two moments of each, 4 bytes a float
    assert failure.value.needed >= needed and f"needs about {failure.value.needed:,} bytes" in message
    assert "step-000001 is intact" in message
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]  # no half-written directory

    monkeypatch.undo()
    assert latest_checkpoint(out) == out / "checkpoints" / "step-000001"  # what --resume picks
    assert load_checkpoint(latest_checkpoint(out), model, optimizer, scheduler, generator)["step"] == 1
    assert all(torch.equal(model.state_dict()[k], expected[k]) for k in expected)


def test_keep_checkpoints_keeps_the_newest(recipe, tmp_path):
    model, params, optimizer, scheduler, generator = _tiny_state(recipe)
    for step in range(1, 5):
        save_checkpoint(tmp_path, step, model, params, optimizer, scheduler, generator, {}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000003", "step-000004"]
    train_rl(recipe("run.max_steps=4", "run.save_every=1", "run.keep_checkpoints=1"), quiet=True)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000003"]


# ---------------------------------------------------------------------------- records whose media fails
def _data_file(synth_dir: Path, folder: Path) -> Path:
    """The two synthetic records with their videos copied into `folder` (so a test may break one)."""
    rows = json.loads((synth_dir / "train.json").read_text())
    for i, row in enumerate(rows):
        shutil.copy(synth_dir / row["path"], folder / f"{i}.mp4")
        row["path"] = f"{i}.mp4"
    (folder / "train.json").write_text(json.dumps(rows))
    return folder / "train.json"


def test_a_missing_video_is_caught_before_the_model_loads(recipe, synth_dir, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        pytest.fail("a model was loaded")

    monkeypatch.setattr(parameters, "build_adapter", no_model)
    train = _data_file(synth_dir, tmp_path)
    (tmp_path / "0.mp4").unlink()
    (tmp_path / "1.mp4").write_bytes(b"not a video")
    with pytest.raises(MediaCheckError) as failure:
        train_rl(recipe(f"data.train_file={train}"), quiet=True)
    assert [(f.where, f.field) for f in failure.value.faults] == [("[0]", "path"), ("[1]", "path")]  # both at once
    assert f"{train}:[0]: field 'path': {tmp_path / '0.mp4'}: no such file" in str(failure.value)
    assert f"{tmp_path / '1.mp4'}: does not open" in str(failure.value)
    with pytest.raises(MediaCheckError):
        train_sft(recipe(f"sft.train_file={train}"), quiet=True)


def test_a_record_failing_during_training_checkpoints_and_resumes_after_the_fix(recipe, synth_dir, tmp_path):
    overrides = ("optim.prompts_per_step=1", "data.shuffle=false", "run.max_steps=2", "rl.beta=0.04")
    (tmp_path / "data").mkdir()
    train = _data_file(synth_dir, tmp_path / "data")
    uninterrupted = train_rl(recipe(f"data.train_file={train}", *overrides, run="a"), quiet=True)

    video = tmp_path / "data" / "1.mp4"
    kept = video.rename(tmp_path / "kept.mp4")  # step 2's video vanishes after the check (or the check is skipped)
    config = recipe(f"data.train_file={train}", *overrides, "run.check_data=false", run="b")
    with pytest.raises(DataError) as failure:
        train_rl(config, quiet=True)
    assert (failure.value.file, failure.value.where, failure.value.field) == (str(train), "[1]", "path")
    assert str(video) in failure.value.reason and "during step 2" in failure.value.reason
    checkpoint = tmp_path / "b" / "checkpoints" / "step-000001"
    assert latest_checkpoint(tmp_path / "b") == checkpoint and str(checkpoint) in failure.value.reason

    kept.rename(video)  # the data fixed
    resumed = train_rl(config, resume=True, quiet=True)
    assert _same_weights(uninterrupted, resumed)


def test_skip_data_check_flag(recipe, synth_dir, tmp_path):
    train = _data_file(synth_dir, tmp_path)
    (tmp_path / "1.mp4").unlink()
    save_config(recipe(f"data.train_file={train}", "optim.prompts_per_step=1", "data.shuffle=false",
                       "run.max_steps=2"), tmp_path / "recipe.yaml")
    checked = _cli("rl", "--config", str(tmp_path / "recipe.yaml"))
    assert checked.wait(timeout=300) == 2 and "checked before loading the model" in checked.stderr.read()
    assert not (tmp_path / "run" / "checkpoints").exists()
    skipped = _cli("rl", "--config", str(tmp_path / "recipe.yaml"), "--skip-data-check")
    _, err = skipped.communicate(timeout=300)
    assert skipped.returncode == 2 and "during step 2" in err  # step 1 trained, step 2's video failed
    assert latest_checkpoint(tmp_path / "run") == tmp_path / "run" / "checkpoints" / "step-000001"
