"""Recipes: bad keys, types and values are named before any model loads; overrides; each paper ablation is
one override; a saved config reloads to the same config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import framethink
import framethink.engine.parameters as engine
import framethink.rl.trainer as rl_trainer
import framethink.sft.trainer as sft_trainer
from framethink.config import RewardSpec, load_config, save_config, to_dict
from framethink.errors import ConfigError, DataError

pytest_plugins = ["fixtures_training"]
RECIPES = Path(framethink.__file__).parent / "recipes"


@pytest.fixture
def no_model(monkeypatch):
    """Any attempt to load a model fails the test."""
    def load(*args, **kwargs):
        pytest.fail("a model was loaded")

    monkeypatch.setattr(engine, "build_adapter", load)


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "params":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _changed(a, b) -> dict:
    """The keys whose values differ between two configs, with b's value."""
    fa, fb = _flat(to_dict(a)), _flat(to_dict(b))
    return {k: fb[k] for k in fa if fa[k] != fb[k]}


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["rl.bta=0"], "unknown key rl.bta"),
        (["model.lora.rank=4"], "unknown key model.lora.rank"),
        (["rl.num_generations=four"], "rl.num_generations"),
        (["model.freeze_vision=1"], "model.freeze_vision"),
        (["optim.betas=[0.9, high]"], r"optim.betas\[1\]"),
        (["rl.beta=true"], "rl.beta"),
        (["rl.normalization=mean"], "rl.normalization"),
        (["data.template=video-r2"], "data.template"),
        (["run.report_to=[tensorbord]"], "run.report_to"),
        (["rl.rewards=[{name: format, params: {omega: 0.1}}]"], r"rl.rewards\[0\]"),
        (["rl.rewards=[{name: accuracy, weight: 1, parms: {}}]"], r"unknown key rl.rewards\[0\].parms"),
        (["rl.rewards=[{name: accurracy}]"], r"rl.rewards\[0\]"),
        (["sft.answer=silver"], "sft.answer"),
        (["rl"], "key=value"),
    ],
)
def test_bad_keys_types_and_values_are_named_before_any_model_loads(no_model, overrides, key):
    with pytest.raises(ConfigError, match=key):
        rl_trainer.train_rl(load_config(RECIPES / "video-r1.yaml", overrides))


def test_unknown_key_in_a_recipe_file(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model:\n  path: m\n  lora:\n    enabled: true\n    rnak: 8\n")
    with pytest.raises(ConfigError, match="unknown key model.lora.rnak"):
        load_config(recipe)


def test_trainers_check_a_config_built_in_code(recipe, no_model):
    config = recipe()
    config.rl.normalization = "mean"
    with pytest.raises(ConfigError, match="rl.normalization"):
        rl_trainer.train_rl(config)
    config = recipe()
    config.sft.answer = "silver"
    with pytest.raises(ConfigError, match="sft.answer"):
        sft_trainer.train_sft(config)


def test_a_bad_record_stops_the_run_before_any_model_loads(recipe, tmp_path, no_model):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"problem_id": 7, "problem": "?", "data_type": "video", "problem_type": "numerical",
                                "solution": "3", "path": "x.mp4"}]))
    with pytest.raises(DataError, match="solution"):
        rl_trainer.train_rl(recipe(f"data.train_file={bad}"))


def test_overrides_parse_values_and_reach_nested_sections():
    config = load_config(RECIPES / "video-r1.yaml", [
        "rl.beta=0", "model.lora.enabled=true", "model.lora.r=4", "optim.lr=1e-5", "run.report_to=[none]",
        "rl.rewards=[{name: accuracy, weight: 2}, {name: length_bonus, params: {omega: 1e-1}}]", "data.root=null",
    ])
    assert config.rl.beta == 0.0 and isinstance(config.rl.beta, float)
    assert config.model.lora.enabled and config.model.lora.r == 4 and config.model.lora.alpha == 32
    assert config.optim.lr == 1e-5  # YAML 1.1 would read 1e-5 as a string
    assert config.run.report_to == ["none"]
    assert config.rl.rewards == [RewardSpec("accuracy", 2.0), RewardSpec("length_bonus", params={"omega": 0.1})]
    assert config.data.root is None


@pytest.mark.parametrize(
    ("recipe_file", "overrides", "changed"),
    [
        ("video-r1.yaml", ["rl.algorithm=grpo"], {"rl.algorithm": "grpo"}),  # T-GRPO -> GRPO
        ("video-r1.yaml", ["rl.beta=0"], {"rl.beta": 0.0}),  # "Del KL"
        ("video-r1.yaml", ["rl.advantage=dr_grpo", "rl.normalization=constant"],  # Dr. GRPO
         {"rl.advantage": "dr_grpo", "rl.normalization": "constant"}),
        ("video-r1.yaml", ["rl.advantage=rloo"], {"rl.advantage": "rloo"}),
        ("video-r1.yaml", ["rl.loss=gspo"], {"rl.loss": "gspo"}),
        ("video-r1.yaml", ["rl.loss=dapo"], {"rl.loss": "dapo"}),
        ("video-r1.yaml", ["rl.rewards=[{name: accuracy}, {name: format}]"],  # no length reward
         {"rl.rewards": [{"name": "accuracy", "weight": 1.0, "params": {}},
                         {"name": "format", "weight": 1.0, "params": {}}]}),
        ("tinyllava-video-r1.yaml", ["rl.advantage_noise=0"], {"rl.advantage_noise": 0.0}),  # no advantage noise
        ("tinyllava-video-r1.yaml", ["rl.rewards=[{name: tinyllava, params: {variant: paper}}]"],  # paper's reward
         {"rl.rewards": [{"name": "tinyllava", "weight": 1.0, "params": {"variant": "paper"}}]}),
    ],
    ids=["grpo", "del-kl", "dr-grpo", "rloo", "gspo", "dapo", "no-length-reward", "no-advantage-noise",
         "tinyllava-paper-reward"],
)
def test_each_paper_ablation_is_one_override(recipe_file, overrides, changed):
    base = load_config(RECIPES / recipe_file)
    assert _changed(base, load_config(RECIPES / recipe_file, overrides)) == changed


def test_saved_config_reloads_identically(tmp_path):
    config = load_config(RECIPES / "video-r1.yaml", [
        "optim.lr=1e-6", 'data.system="You are a helpful assistant: \'think\' #1"',
        "model.lora.target_modules=[q_proj]",
    ])
    assert config.data.system == "You are a helpful assistant: 'think' #1"
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
