"""The learning-rate schedule and its horizon: each shipped recipe reproduces the rate curve its reference run
actually had (docs/method.md#learning-rate-horizon), values computed by hand from transformers' schedule
formulas (transformers/optimization.py, `_get_cosine_schedule_with_warmup_lr_lambda`,
`_get_linear_schedule_with_warmup_lr_lambda`) and the Trainer's step count (`num_update_steps_per_epoch`)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from framethink.config import load_config
from framethink.engine import build_scheduler, schedule_horizon
from framethink.errors import ConfigError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _rates(config, num_records: int, world: int, steps: list[int]) -> list[float]:
    """The learning rate the optimiser uses at each of `steps` (0-based) under the recipe's schedule."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=config.optim.lr)
    scheduler = build_scheduler(optimizer, config.optim, schedule_horizon(config, num_records, world))
    rates = []
    for step in range(max(steps) + 1):
        if step in steps:
            rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_video_r1_rate_stays_near_its_peak_over_the_1200_steps():
    # the reference: cosine over one epoch of Video-R1-260k (263,071 rows) at 1 prompt x 4 processes per step,
    # i.e. 65,768 steps, stopped after 1.2k steps
    config = load_config(RECIPES / "video-r1.yaml")
    assert config.run.max_steps == 1200 and config.optim.weight_decay == 0.01
    assert schedule_horizon(config, 263_071, 4) == 65_768
    first, last = _rates(config, 263_071, 4, [0, 1199])
    assert first == pytest.approx(1e-6, rel=1e-12)
    assert last == pytest.approx(0.99918016e-6, rel=1e-7)  # 1e-6 * (1 + cos(pi * 1199 / 65768)) / 2, not ~1.7e-12


def test_tinyllava_rate_is_a_warmed_up_cosine_over_one_epoch():
    # NextQA 0-30 s: 5,496 records, 1 prompt x 8 processes per step -> 687 steps; warmup ceil(0.03 * 687) = 21
    config = load_config(RECIPES / "tinyllava-video-r1.yaml")
    assert schedule_horizon(config, 5_496, 8) == 687 == config.run.max_steps
    rates = _rates(config, 5_496, 8, [0, 1, 20, 21, 100, 686])
    expected = [0.0, 1e-6 / 21, 20e-6 / 21, 1e-6, 0.96568264e-6, 5.5627621e-12]
    assert rates == pytest.approx(expected, rel=1e-6, abs=1e-18)
    assert config.optim.weight_decay == 0.0


def test_video_r1_sft_runs_the_trainer_defaults():
    # the reference SFT script passes no schedule: transformers' defaults, linear decay to 0, weight decay 0, no
    # warmup; 165,000 records at 1 x accumulation 2 x 4 processes -> 41,250 per process // 2 = 20,625 steps
    config = load_config(RECIPES / "video-r1-sft.yaml")
    assert config.optim.schedule == "linear" and config.optim.weight_decay == 0.0
    assert schedule_horizon(config, 165_000, 4) == 20_625 == config.run.max_steps
    rates = _rates(config, 165_000, 4, [0, 1, 10_000, 20_624])
    assert rates == pytest.approx([1e-6, 1e-6 * 20_624 / 20_625, 1e-6 * 10_625 / 20_625, 1e-6 / 20_625], rel=1e-9)


def test_horizon_defaults_to_the_run_length_and_takes_steps_or_epochs():
    config = load_config(None, ["run.max_steps=10"])
    assert schedule_horizon(config, 1_000, 1) == 10
    assert schedule_horizon(load_config(None, ["optim.schedule_steps=40"]), 1_000, 1) == 40
    # ceil(2.5 epochs x (ceil(1001 / 2) // 4 = 125 steps per epoch)) = ceil(312.5) = 313
    epochs = load_config(None, ["optim.schedule_epochs=2.5", "optim.prompts_per_step=4"])
    assert schedule_horizon(epochs, 1_001, 2) == 313
    with pytest.raises(ConfigError, match="schedule_steps and optim.schedule_epochs"):
        load_config(None, ["optim.schedule_steps=40", "optim.schedule_epochs=1"])
    with pytest.raises(ConfigError, match="schedule_epochs"):
        load_config(None, ["optim.schedule_epochs=0"])


def test_constant_schedule_after_warmup():
    config = load_config(None, ["optim.schedule=constant", "optim.warmup_steps=4", "optim.lr=1.0", "run.max_steps=8"])
    assert _rates(config, 100, 1, list(range(8))) == pytest.approx([0, 0.25, 0.5, 0.75, 1, 1, 1, 1])
