"""The model card (README.md) every exported model carries (docs/serving.md#model-cards).

`write_model_card` is called by the export: it records the base model, the stage and method, the resolved config
(which reproduces the run), each data file the config names with its sha256, and the training length and final
metrics as the run logged them. `add_evaluation` puts an evaluation table into an exported model's card (the demo
adds its held-out table), replacing an earlier one, so the card always shows the latest evaluation.

The front matter is the Hugging Face Hub's model-card metadata (`library_name`, `base_model`, `tags`).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from framethink import __version__
from framethink.config import TrainConfig, to_dict
from framethink.errors import ConfigError

CARD_FILE = "README.md"
EVAL_BEGIN = "<!-- framethink: evaluation begins -->"
EVAL_END = "<!-- framethink: evaluation ends -->"
DATA_KEYS = ("data.train_file", "sft.train_file", "eval.test_file")  # config keys naming data files


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _get(config: dict, key: str):
    section, name = key.split(".")
    return config.get(section, {}).get(name)


def logged_metrics(run_dir: Path) -> list[dict]:
    """The rows of the run's metrics.jsonl (empty when it logged none)."""
    file = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()] if file.is_file() else []


def run_stage(rows: list[dict]) -> str:
    """"rl" or "sft", told by what the run logged (the RL step logs its reward, SFT its loss)."""
    keys = set().union(*rows) if rows else set()
    if "reward/total" in keys:
        return "rl"
    if "loss/sft" in keys:
        return "sft"
    return "unknown"


def _method(config: dict, stage: str) -> list[str]:
    rl, optim = config.get("rl", {}), config.get("optim", {})
    lines = []
    if stage == "rl":
        rewards = ", ".join(f"{r['name']} x{r['weight']:g}" for r in rl.get("rewards", []))
        lines.append(f"- Stage: reinforcement learning, `{rl.get('algorithm')}` (advantage `{rl.get('advantage')}`, "
                     f"loss `{rl.get('loss')}`), {rl.get('num_generations')} completions per prompt, KL weight "
                     f"{rl.get('beta')}, rewards: {rewards}"
                     + (f", dynamic sampling (up to {rl.get('max_sampling_rounds')} refill rounds)"
                        if rl.get("dynamic_sampling") else ""))
    elif stage == "sft":
        lines.append(f"- Stage: supervised fine-tuning (chain-of-thought cold start; answer slot "
                     f"`{config.get('sft', {}).get('answer')}`)")
    lines.append(f"- Optimiser: learning rate {optim.get('lr')}, schedule `{optim.get('schedule')}`, "
                 f"{optim.get('prompts_per_step')} prompts per step per process")
    data = config.get("data", {})
    frames = (f"{data.get('num_frames')} uniform frames" if data.get("frame_rule") == "uniform"
              else f"{data.get('fps')} fps, {data.get('min_frames')}-{data.get('max_frames')} frames")
    lines.append(f"- Prompt template `{data.get('template')}`; frames: {frames}")
    return lines


def _data_table(config: dict) -> list[str]:
    lines = ["| config key | file | sha256 |", "|---|---|---|"]
    seen = set()
    for key in DATA_KEYS:
        value = _get(config, key)
        if not value:
            continue
        path = Path(value)
        digest = file_sha256(path) if path.is_file() else "(not found at export)"
        seen.add(path)
        lines.append(f"| `{key}` | `{path}` | `{digest}` |")
    return lines if seen else ["(the config names no data file)"]


def _length(config: dict, rows: list[dict], processes: int) -> list[str]:
    steps = rows[-1]["step"] if rows else None
    per_step = (config.get("optim", {}).get("prompts_per_step") or 0) * processes
    lines = [f"- Steps: {steps if steps is not None else '(none logged)'} of `run.max_steps` "
             f"{config.get('run', {}).get('max_steps')}; {per_step} prompts per step over {processes} "
             f"process{'es' if processes > 1 else ''}"
             + (f", {steps * per_step} prompts in all" if steps is not None else "")]
    times = [r["time"] for r in rows if "time" in r]
    if len(times) > 1:
        lines.append(f"- Wall time between the first and the last logged step: {times[-1] - times[0]:.0f} s")
    if rows:
        last = {k: v for k, v in rows[-1].items() if k not in ("step", "time") and isinstance(v, (int, float))}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(last.items()) if not k.startswith("time/"))
        lines.append(f"- Last logged metrics (step {rows[-1]['step']}): {shown}")
    return lines


def write_model_card(out: Path, config: TrainConfig, run_dir: Path, *, processes: int = 1) -> Path:
    """Write OUT/README.md for the model exported to `out` by the run in `run_dir` under `config`."""
    resolved = to_dict(config)
    rows = logged_metrics(Path(run_dir))
    stage = run_stage(rows)
    base = resolved["model"]["path"]
    front = {"library_name": "transformers", "base_model": base,
             "tags": ["framethink", "video-reasoning", stage]}
    text = "\n".join([
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {Path(out).resolve().parent.name}", "",
        f"Trained with framethink {__version__} from `{base}`.", "",
        "## Training", "", *_method(resolved, stage), "",
        "## Training length", "", *_length(resolved, rows, processes), "",
        "## Data", "",
        "Files named by the config, with their sha256 at export (media files are not hashed):", "",
        *_data_table(resolved), "",
        "## Resolved config", "",
        "Saving this block as `config.yaml` and running `framethink train "
        f"{stage if stage != 'unknown' else 'rl|sft'} --config config.yaml` reproduces the run.", "",
        "```yaml", yaml.safe_dump(resolved, sort_keys=False).strip(), "```", "",
        "## Evaluation", "", EVAL_BEGIN, "(not evaluated)", EVAL_END, "",
    ])
    card = Path(out) / CARD_FILE
    card.write_text(text)
    return card


def add_evaluation(model: Path, table: str, *, source: str) -> Path:
    """Put `table` (markdown), measured by `source`, into the evaluation section of `model`'s card."""
    card = Path(model) / CARD_FILE
    text = card.read_text()
    begin, end = text.find(EVAL_BEGIN), text.find(EVAL_END)
    if begin < 0 or end < begin:
        raise ConfigError(f"{card}: no framethink evaluation section (was the model exported by framethink?)")
    section = f"{EVAL_BEGIN}\nMeasured by {source}.\n\n{table.strip()}\n{EVAL_END}"
    card.write_text(text[:begin] + section + text[end + len(EVAL_END):])
    return card
