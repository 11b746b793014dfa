"""The RL training loop (docs/method.md): each step is `framethink.rl.step.rl_step`, the same function the
benchmarks time; the loop adds the data order, the logs and the checkpoints.

The loop never branches on the model type: the adapter hides it.
"""
from __future__ import annotations

from pathlib import Path

from framethink.config import TrainConfig, validate
from framethink.data.records import load_records
from framethink.engine import check_before_loading, make_accelerator, process_rank, seed_everything, start_run
from framethink.rl.loss import get_policy_loss
from framethink.rl.step import RLRun, rl_step


def needs_reference(config: TrainConfig) -> bool:
    """Whether the run keeps a frozen reference model: only for a KL term (beta > 0 and a loss that has one)."""
    return config.rl.beta > 0 and get_policy_loss(config.rl.loss).kl


def train_rl(config: TrainConfig, *, resume: bool = False, quiet: bool = False) -> Path:
    """Run the recipe; returns the directory of the exported final model."""
    validate(config)  # a config built in code gets the checks load_config makes, before any model loads
    accelerator = make_accelerator(config)
    seed_everything(config.run.seed + process_rank())
    records = load_records(config.data.train_file, root=config.data.root)  # a bad record stops here, before any model
    check_before_loading(config, records, accelerator)  # media and backend, before any model loads
    engine = start_run(config, accelerator, resume=resume, reference=needs_reference(config), num_records=len(records))
    run = RLRun(engine, records)

    with engine.running("rl", quiet) as bar:
        for step in bar:
            batch = [records[i] for i in engine.batch_indices(step, len(records))]
            with engine.guard(step, batch, records):  # a record failing to load stops the run with a checkpoint
                result = rl_step(run, batch, step)
            metrics = engine.end_step(step, result.metrics)
            if config.run.sample_every and (step + 1) % config.run.sample_every == 0:
                rollout, g = result.rollout, config.rl.num_generations
                engine.logger.samples(step + 1, [
                    {"question": rollout.prompts[i].record.question, "answer": rollout.prompts[i].record.answer,
                     "completion": rollout.texts[i * g], "reward": rollout.rewards[i, 0].item()}
                    for i in range(len(rollout.prompts))
                ])
            bar.set_postfix(reward=f"{metrics['reward/total']:.3f}",
                            acc=f"{metrics.get('accuracy', float('nan')):.3f}")
    return engine.finish()
