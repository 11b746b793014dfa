"""Every exported model carries a model card: base model, stage and method, resolved config, the data files with
their sha256, training length, and the evaluation table once the model was evaluated."""
from __future__ import annotations

import hashlib

import pytest
import yaml

from framethink.config import TrainConfig, from_dict
from framethink.errors import ConfigError
from framethink.model_card import add_evaluation, file_sha256
from framethink.rl.trainer import train_rl
from framethink.sft.trainer import train_sft

pytest_plugins = ["fixtures_training"]


def test_sha256_of_a_file_in_blocks(tmp_path):
    data = bytes(range(256)) * 9000  # over one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("stage", ["rl", "sft"])
def test_an_exported_run_carries_its_card(stage, recipe, synth_dir):
    config = recipe("run.max_steps=2", "run.log_every=1")
    final = (train_rl if stage == "rl" else train_sft)(config, quiet=True)
    card = (final / "README.md").read_text()
    train = synth_dir / "train.json"
    front = yaml.safe_load(card.split("---")[1])
    assert front == {"library_name": "transformers", "base_model": config.model.path,
                     "tags": ["framethink", "video-reasoning", stage]}
    assert f"| `data.train_file` | `{train}` | `{hashlib.sha256(train.read_bytes()).hexdigest()}` |" in card
    assert f"| `sft.train_file` | `{train}` |" in card
    assert "- Steps: 2 of `run.max_steps` 2; 2 prompts per step over 1 process, 4 prompts in all" in card
    if stage == "rl":
        assert "- Stage: reinforcement learning, `tgrpo`" in card and "reward/total" in card
    else:
        assert "- Stage: supervised fine-tuning" in card and "loss/sft" in card
    # the resolved config in the card is the run's config
    block = card.split("```yaml\n")[1].split("```")[0]
    assert from_dict(TrainConfig, yaml.safe_load(block)) == config
    assert "(not evaluated)" in card


def test_an_evaluation_table_replaces_the_previous_one(recipe):
    final = train_sft(recipe("run.max_steps=1"), quiet=True)
    add_evaluation(final, "| task | acc |\n|---|---|\n| a | 10.0 |", source="a first check")
    add_evaluation(final, "| task | acc |\n|---|---|\n| a | 90.0 |", source="the held-out set")
    card = (final / "README.md").read_text()
    assert "Measured by the held-out set." in card and "| a | 90.0 |" in card
    assert "10.0" not in card and "(not evaluated)" not in card and "a first check" not in card
    (final / "README.md").write_text("# someone else's card\n")
    with pytest.raises(ConfigError, match="no framethink evaluation section"):
        add_evaluation(final, "| x |", source="y")


def test_the_demo_export_carries_its_evaluation(tmp_path):
    from framethink.cli import main
    from test_demo import TINY_DEMO  # the demo's own tiny settings

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY_DEMO]) == 0
    card = (out / "rl" / "final" / "README.md").read_text()
    assert "tags:\n- framethink\n- video-reasoning\n- rl" in card
    data = out / "data" / "train.json"
    assert f"`{hashlib.sha256(data.read_bytes()).hexdigest()}`" in card
    assert "Measured by `framethink demo` on its held-out synthetic clips (seed 0)." in card
    assert "rewards: accuracy x1, format x1, dynamic sampling (up to 3 refill rounds)" in card  # the demo's RL
    assert (out / "report.md").read_text().strip() in card  # the demo's table and summary, as it printed them
