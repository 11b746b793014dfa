"""The demo pipeline end to end on tiny settings, and the pieces it is built on: fixed-option synthetic items,
the cold start's answer letters, and exported models that keep the pixel bounds they were trained with."""
from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from framethink.cli import main
from framethink.data.records import load_records
from framethink.data.synth import COLORS, write_synthetic_dataset
from framethink.engine import make_accelerator, start_run
from framethink.errors import ConfigError
from framethink.eval.predictions import read_predictions
from framethink.models.registry import load_adapter
from framethink.sft.trainer import mentioned_letters

pytest_plugins = ["fixtures_training"]
TINY_DEMO = ["data.train_per_task=2", "data.test_per_task=1", "sft.run.max_steps=2", "rl.run.max_steps=2",
             "sft.optim.prompts_per_step=2", "rl.optim.prompts_per_step=2", "rl.rl.num_generations=2",
             "rl.rl.num_shuffled=2", "rl.rl.max_new_tokens=4", "eval.max_new_tokens=4", "sft.run.report_to=[none]",
             "rl.run.report_to=[none]", "rl.run.sample_every=0", "sft.run.log_every=1"]


def test_fixed_options_list_every_colour_in_one_order(tmp_path):
    write_synthetic_dataset(tmp_path, n_train=6, n_test=0, seed=1, num_frames=4, size=28,
                            tasks=["color_first", "color_last"], fixed_options=True)
    records = load_records(tmp_path / "train.json")
    expected = [f"{letter}. {name}" for letter, name in zip("ABCDEF", COLORS)]
    for record in records:
        assert record.options == expected
        letters = mentioned_letters(record)  # the two colours the clip shows, by their fixed letters
        assert record.answer in letters and len(letters) == 2
        assert all(f"is {letter}." in record.cot for letter in letters)
    assert {r.answer for r in records if r.source == "color_first"} == set("ABCDEF")  # balanced gold letters


def test_short_chains_of_thought_state_the_same_facts(tmp_path):
    write_synthetic_dataset(tmp_path / "long", n_train=4, n_test=0, seed=3, num_frames=4, size=28,
                            tasks=["color_first", "color_last", "color"], fixed_options=True)
    write_synthetic_dataset(tmp_path / "short", n_train=4, n_test=0, seed=3, num_frames=4, size=28,
                            tasks=["color_first", "color_last", "color"], fixed_options=True, cot="short")
    for long, short in zip(load_records(tmp_path / "long/train.json"), load_records(tmp_path / "short/train.json")):
        assert (long.question, long.answer, long.options) == (short.question, short.answer, short.options)
        letters = mentioned_letters(long)
        assert mentioned_letters(short) == letters  # the random cold start draws from the same letters
        if long.source == "color":  # "the square is red. red is A." -> "colour? red A."
            colour = long.cot.split("the square is ")[1].split(".")[0]
            assert short.cot == f"<think>colour? {colour} {letters[0]}.</think>"
        else:  # "the clip starts X and ends Y. X is L. Y is M." -> "first? X L then Y M."
            start, end = long.cot.split("the clip starts ")[1].split(".")[0].split(" and ends ")
            word = long.source.split("_")[1]
            letter = {name: f"{chr(65 + i)}" for i, name in enumerate(COLORS)}
            assert short.cot == f"<think>{word}? {start} {letter[start]} then {end} {letter[end]}.</think>"
    with pytest.raises(ConfigError, match="chain-of-thought style"):
        write_synthetic_dataset(tmp_path / "bad", n_train=1, n_test=0, seed=0, num_frames=4, size=28, cot="terse")


def test_random_cold_start_letters_come_from_the_reasoning(synth_records):
    record = synth_records[0]  # "the clip starts X and ends Y. X is _. Y is _."
    letters = mentioned_letters(record)
    assert len(letters) == 2 and record.answer in letters
    assert all(f" is {letter}." in record.cot for letter in letters)
    rng = random.Random(0)
    assert {rng.choice(letters) for _ in range(20)} == set(letters)


def test_exported_models_keep_their_pixel_bounds(recipe, tmp_path):
    config = recipe("data.video_max_pixels=784", "data.video_min_pixels=784", "data.image_max_pixels=3136",
                    "data.image_min_pixels=784")
    run = start_run(config, make_accelerator(config), resume=False)
    final = run.finish()
    processor = load_adapter(final).processor  # no overrides: what the checkpoint itself says
    assert (processor.video_min_pixels, processor.video_max_pixels) == (784, 784)
    assert (processor.image_min_pixels, processor.image_max_pixels) == (784, 3136)


def check_demo_results(report: dict) -> None:
    """Every stage scored every task in [0, 100]; the untrained model with ordered frames only (eval.untrained_orders)."""
    assert set(report["results"]) == {"untrained", "sft", "rl"}
    for name, stage in report["results"].items():
        assert set(stage) == {"color_first", "color_last", "color"}
        evaluated = {"ordered"} if name == "untrained" else {"ordered", "shuffled", "reversed"}
        assert all(set(orders) == evaluated for orders in stage.values())
        assert all(0.0 <= v <= 100.0 for orders in stage.values() for v in orders.values())


def test_demo_runs_every_stage_and_writes_its_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY_DEMO]) == 0
    check_demo_results(json.loads((out / "report.json").read_text()))
    table = (out / "report.md").read_text()
    assert "| color_first | rl |" in table and "RL stage: mean training reward" in table
    assert "the RL stage's own change, greedy, ordered frames: color_first " in table
    assert "| color_first | untrained |" in table and " | - | - |" in table  # not evaluated: marked, not invented
    assert (out / "curves.png").stat().st_size > 0
    assert json.loads((out / "rl/final/framethink.json").read_text())["template"] == "tinyllava-r1"
    assert "| task | stage | ordered | shuffled | reversed |" in capsys.readouterr().out


def test_a_rerun_with_other_data_settings_renders_the_clips_again(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY_DEMO]) == 0
    first = (out / "model-init" / "model.safetensors").read_bytes()
    assert len(load_records(out / "data" / "test.json")) == 3
    assert main(["demo", "--out", str(out), "--seed", "1", *TINY_DEMO, "data.test_per_task=2"]) == 0
    assert len(load_records(out / "data" / "test.json")) == 6  # not the first run's 3 clips
    assert (out / "model-init" / "model.safetensors").read_bytes() != first  # seed 1's weights
    assert json.loads((out / "inputs.json").read_text())["data"]["test_per_task"] == 2
    steps = [json.loads(line)["step"] for line in (out / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # the second run's log alone
    report = json.loads((out / "report.json").read_text())
    assert report["seed"] == 1
    assert len(read_predictions(out / "eval-sft" / "ordered" / "predictions.jsonl").lines) == 6  # no stale answers


def test_a_bad_data_setting_fails_before_the_previous_run_is_replaced(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "rl").mkdir(parents=True)
    (out / "report.md").write_text("the previous run")
    assert main(["demo", "--out", str(out), *TINY_DEMO, "data.cot=shrot"]) == 2
    assert "demo.yaml: data: chain-of-thought style 'shrot'" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "the previous run" and (out / "rl").is_dir()


def test_rl_choice_recipe_is_the_gold_demo_with_the_choice_left_to_reward():
    # the recipes BENCHMARKS.md's commands reproduce, stated as their differences: they must not drift apart
    from framethink.demo import RECIPES, load_demo_config

    gold = RECIPES / "demo-gold.yaml"
    overrides = ["sft.sft.answer=random", "sft.run.max_steps=1500", "rl.optim.lr=3.0e-4",
                 "rl.optim.schedule=constant", "rl.run.max_steps=200"]
    assert load_demo_config(RECIPES / "demo-rl-choice.yaml", []) == load_demo_config(gold, overrides)
    assert load_demo_config(gold, []) != load_demo_config(gold, overrides)


def test_the_demo_is_the_choice_recipe_with_the_short_cold_start_and_dynamic_sampling():
    from framethink.demo import RECIPES, load_demo_config

    overrides = ["data.cot=short", "sft.run.max_steps=200", "sft.optim.prompts_per_step=16",
                 "rl.rl.max_new_tokens=24", "eval.max_new_tokens=24", "rl.rl.dynamic_sampling=true",
                 "rl.run.max_steps=300", "data.test_per_task=300"]
    choice = RECIPES / "demo-rl-choice.yaml"
    assert load_demo_config(None, []) == load_demo_config(choice, overrides)


def test_rl_tasks_pick_the_records_the_rl_stage_trains_on(tmp_path):
    from framethink.demo import load_demo_config, task_subset

    write_synthetic_dataset(tmp_path, n_train=3, n_test=0, seed=0, num_frames=4, size=28,
                            tasks=["color_first", "color_last", "color"], fixed_options=True, cot="short")
    subset = task_subset(tmp_path / "train.json", ["color_first", "color_last"])
    records = load_records(subset)  # beside train.json: the relative video paths still resolve
    assert [r.source for r in records] == [r.source for r in load_records(tmp_path / "train.json")
                                           if r.source != "color"]
    assert len(records) == 6 and all(r.media[0].is_file() for r in records)
    with pytest.raises(ConfigError, match="data.rl_tasks"):
        load_demo_config(None, ["data.rl_tasks=[color_first,shape]"])
    with pytest.raises(ConfigError, match="data.rl_tasks"):
        load_demo_config(None, ["data.rl_tasks=[]"])


def test_demo_recipes_are_read_by_the_recipes_own_parser(tmp_path):
    from framethink.demo import RECIPES, load_demo_config

    recipe = tmp_path / "demo.yaml"
    recipe.write_text((RECIPES / "demo.yaml").read_text().replace("lr: 1.0e-3", "lr: 1e-3"))
    assert "lr: 1e-3" in recipe.read_text()
    config = load_demo_config(recipe, ["rl.optim.lr=2e-4"])
    assert config.sft.optim.lr == 1e-3 and isinstance(config.sft.optim.lr, float)  # plain YAML would give '1e-3'
    assert config.rl.optim.lr == 2e-4
    with pytest.raises(ConfigError, match="untrained_orders"):
        load_demo_config(recipe, ["eval.untrained_orders=[sideways]"])


def test_the_demo_does_not_import_the_command_line():
    # the demo calls the evaluation runner itself: no cli <-> demo import cycle
    probe = "import sys, framethink.demo; print('framethink.cli' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_curves_smooth_with_a_trailing_mean():
    from framethink.demo import smoothed

    nan = float("nan")
    assert smoothed([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    assert smoothed([2.0, nan, 4.0], 3) == [2.0, 2.0, 3.0]  # steps that did not log the metric are skipped
    assert smoothed([4.0, 8.0], 1) == [4.0, 8.0]
