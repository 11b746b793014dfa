"""`framethink demo`: the whole method on the embedded default, end to end.

    synthesise the temporal video-QA set -> build a tiny model (or take --model)
    -> evaluate (untrained) -> SFT cold start -> evaluate -> T-GRPO -> evaluate
each evaluation through the evaluation runner (`framethink.eval.runner.evaluate`, what `framethink eval run` calls)
on the held-out set with ordered, shuffled and reversed frames; then print the learning table and write
`report.json`, `report.md` and `curves.png` (both stages' training curves with the held-out evaluations marked).

The cold start teaches the answer format and a description of the clip that names the option letter of
each colour it saw, but its answer slot is trained on a random option letter (`sft.answer: random`):
choosing the right letter for "first" versus "last" must come from reward, so the RL stage has
something of its own to learn and its gain is measured separately from SFT's.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from framethink.config import TrainConfig, from_dict, read_recipe, save_config, validate
from framethink.errors import ConfigError

RECIPES = Path(__file__).parent / "recipes"
# the default recipe of each other architecture
ARCH_RECIPES = {"tinyllava-video": "demo-tinyllava.yaml", "qwen3-vl": "demo-qwen3.yaml", "qwen3.5": "demo-qwen3.yaml"}
STAGES = ("untrained", "sft", "rl")
# what one demo run writes besides its clips and initial model: a re-run into the same folder replaces all of it
# (training logs append and evaluations resume, so a leftover would mix two runs)
RUN_OUTPUTS = ("eval-untrained", "sft", "eval-sft", "eval-sft-sampled", "rl", "eval-rl", "eval-rl-sampled",
               "report.json", "report.md", "curves.png", "sft-config.yaml", "rl-config.yaml")
ORDERS = ("ordered", "shuffled", "reversed")


@dataclass
class DemoData:
    tasks: list[str] = field(default_factory=lambda: ["color_first", "color_last", "color"])
    train_per_task: int = 400
    test_per_task: int = 100
    frames: int = 16
    size: int = 56
    fixed_options: bool = True
    cot: str = "sentences"  # the chains of thought: "sentences" or "short" (framethink.data.synth.describe)
    # the tasks the RL stage trains on (default: every task); the others are still evaluated after RL
    rl_tasks: list[str] | None = None


@dataclass
class DemoEval:
    batch_size: int = 64
    max_new_tokens: int = 32
    # frame orders the untrained model is evaluated with: it scores 0-0.3 % with every order (it has no answer format),
    # so shuffled and reversed passes - the slowest ones, every output runs to max_new_tokens - tell nothing
    untrained_orders: list[str] = field(default_factory=lambda: ["ordered"])


@dataclass
class DemoConfig:
    data: DemoData = field(default_factory=DemoData)
    sft: TrainConfig = field(default_factory=TrainConfig)
    rl: TrainConfig = field(default_factory=TrainConfig)
    eval: DemoEval = field(default_factory=DemoEval)


def load_demo_config(path: Path | None, overrides: list[str]) -> DemoConfig:
    path = path or RECIPES / "demo.yaml"
    config = from_dict(DemoConfig, read_recipe(path, overrides))  # the recipes' own parser: 1e-3 is a number
    unknown = [o for o in config.eval.untrained_orders if o not in ORDERS]
    if unknown or not config.eval.untrained_orders:
        raise ConfigError(f"{path}: eval.untrained_orders {config.eval.untrained_orders} must be a non-empty list of "
                          f"{', '.join(ORDERS)}")
    rl_tasks = config.data.rl_tasks
    if rl_tasks is not None and (not rl_tasks or not set(rl_tasks) <= set(config.data.tasks)):
        raise ConfigError(f"{path}: data.rl_tasks {rl_tasks} must be a non-empty subset of data.tasks "
                          f"{config.data.tasks}")
    from framethink.data.synth import check_synthetic_settings

    data = config.data
    try:  # the clips are rendered after the previous run's outputs are replaced: a bad setting must fail first
        check_synthetic_settings(n_train=data.train_per_task, n_test=data.test_per_task, seed=0,
                                 num_frames=data.frames, size=data.size, tasks=data.tasks, cot=data.cot)
    except ConfigError as err:
        raise ConfigError(f"{path}: data: {err}") from None
    validate(config.sft)
    validate(config.rl)
    return config


def task_subset(train_file: Path, tasks: list[str]) -> Path:
    """`train_file`'s records of `tasks` (their `data_source`), written beside it so relative video paths resolve."""
    records = [r for r in json.loads(train_file.read_text()) if r["data_source"] in tasks]
    subset = train_file.with_name(f"{train_file.stem}-{'-'.join(tasks)}.json")
    subset.write_text(json.dumps(records))
    return subset


def evaluate_stage(model: Path, test_file: Path, out: Path, settings: DemoEval, *, temperature: float = 0.0,
                   orders: tuple[str, ...] = ORDERS, seed: int = 0) -> dict[str, dict[str, float]]:
    """Held-out accuracy per task and frame order (greedy by default; temperature 1 measures the policy RL samples
    from), through the evaluation runner with the model's own template, frame rule and pixel bounds; the
    predictions and report land in `out` as `framethink eval run --out out` would write them."""
    import torch

    from framethink.eval.benchmarks import load_benchmarks
    from framethink.eval.runner import RunSettings, evaluate, template_for
    from framethink.models import load_adapter
    from framethink.models.adapter import Decoding

    benchmarks = load_benchmarks([str(test_file)], None)
    adapter = load_adapter(model)
    decoding = Decoding(max_new_tokens=settings.max_new_tokens, temperature=temperature, top_p=1.0,
                        do_sample=temperature > 0)
    report: dict = {}
    for order in orders:
        torch.manual_seed(seed)  # sampled decoding is reproducible by seed, order by order
        run = RunSettings(model=str(Path(model).resolve()), frames=None, max_pixels=None, mode="reason",
                          template=template_for("reason", adapter), frame_order=order, decoding=decoding, seed=seed)
        report = evaluate(adapter, benchmarks, out, run, batch_size=settings.batch_size)  # covers every order so far
    scores: dict[str, dict[str, float]] = {}
    for order, run in report["runs"].items():
        for bench in run["benchmarks"].values():
            for task, group in bench["tasks"]["framethink"].items():  # the default protocol
                scores.setdefault(task, {})[order] = group["score"]
    return scores


def smoothed(values: list[float], window: int) -> list[float]:
    """Trailing mean over the last `window` values (NaN values, steps that did not log the metric, skipped)."""
    out = []
    for i in range(len(values)):
        recent = [v for v in values[max(0, i - window + 1): i + 1] if v == v]
        out.append(sum(recent) / len(recent) if recent else float("nan"))
    return out


def plot_curves(sft_metrics: Path, rl_metrics: Path, report: dict, png: Path, *, sft_steps: int, rl_steps: int) -> None:
    """Both stages on one figure: the SFT loss, then RL's reward, sampled training accuracy, temporal-bonus rate and
    response length; raw values faint, a trailing mean over ~1/20 of the run solid. The held-out evaluations are
    marked where they were taken: temporal-task greedy accuracy before and after SFT (steps 0 and `sft_steps`) on
    the loss panel (right axis), and greedy temporal and sampled all-task accuracy at RL's start and end (steps 0
    and `rl_steps`) on the accuracy panel. A stage shorter than its logging interval has an empty panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(file: Path, key: str) -> tuple[list[int], list[float]]:
        rows = [json.loads(line) for line in file.read_text().splitlines()] if file.is_file() else []
        rows = [r for r in rows if key in r]
        return [r["step"] for r in rows], [float(r[key]) for r in rows]

    panels = [(sft_metrics, "loss/sft", "SFT loss", "SFT step"),
              (rl_metrics, "reward/total", "RL reward (total)", "RL step"),
              (rl_metrics, "accuracy", "RL accuracy", "RL step"),
              (rl_metrics, "temporal/bonus_rate", "temporal-bonus rate", "RL step"),
              (rl_metrics, "completion_length", "response length (tokens)", "RL step")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (file, key, title, xlabel) in zip(axes, panels):
        steps, values = series(file, key)
        ax.plot(steps, values, color="tab:blue", alpha=0.25, linewidth=0.8)
        ax.plot(steps, smoothed(values, max(1, len(values) // 20)), color="tab:blue", linewidth=1.6)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
    temporal, sampled = report["temporal_ordered"], report["sampled_mean"]

    def mark(ax, steps: list[int], percents: list[float], style: str, color: str, label: str) -> None:
        ax.plot(steps, [p / 100 for p in percents], style, color=color, label=label, markersize=7)
        for step, percent in zip(steps, percents):
            ax.annotate(f"{percent:.0f}%", (step, percent / 100), textcoords="offset points", xytext=(4, 5),
                        fontsize=7, color=color)

    held_out = axes[0].twinx()  # held-out accuracy before and after SFT, on the loss panel
    mark(held_out, [0, sft_steps], [temporal["untrained"], temporal["sft"]], "o", "tab:red", "held-out temporal (greedy)")
    held_out.set_ylim(-0.05, 1.1)
    held_out.set_ylabel("held-out accuracy")
    held_out.legend(loc="upper center", fontsize=7)
    accuracy = axes[2]
    mark(accuracy, [0, rl_steps], [temporal["sft"], temporal["rl"]], "o", "tab:red", "held-out temporal (greedy)")
    mark(accuracy, [0, rl_steps], [sampled["sft"], sampled["rl"]], "s", "tab:green", "held-out all tasks (sampled)")
    accuracy.plot([], [], color="tab:blue", label="training rollouts (sampled)")
    accuracy.set_ylim(-0.05, 1.1)
    accuracy.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def learning_table(results: dict[str, dict[str, dict[str, float]]], tasks: list[str]) -> str:
    """Markdown: one row per task and stage, one column per frame order ("-": not evaluated with that order)."""
    lines = ["| task | stage | ordered | shuffled | reversed |", "|---|---|---|---|---|"]
    for task in tasks:
        for stage in STAGES:
            if stage in results and task in results[stage]:
                row = results[stage][task]
                lines.append(f"| {task} | {stage} | " + " | ".join(f"{row[o]:.1f}" if o in row else "-" for o in ORDERS)
                             + " |")
    return "\n".join(lines)


def run_demo(out: Path, *, model: Path | None = None, arch: str = "qwen2.5-vl", seed: int = 0,
             recipe: Path | None = None, overrides: list[str] = ()) -> dict:
    """Run every stage; returns the report (also written to OUT/report.json)."""
    from framethink.data.synth import write_synthetic_dataset
    from framethink.model_card import add_evaluation
    from framethink.models.tiny import build_tiny
    from framethink.rl.trainer import train_rl
    from framethink.sft.trainer import train_sft

    recipe = recipe or RECIPES / ARCH_RECIPES.get(arch, "demo.yaml")
    config = load_demo_config(recipe, list(overrides))  # a recipe typo fails here, before any work
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    previous = [out / name for name in RUN_OUTPUTS if (out / name).exists()]
    if previous:
        print(f"replacing the previous demo run in {out} (its models, evaluations and report)", flush=True)
        for path in previous:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    data_dir = out / "data"
    # the clips and the tiny model are reused by a re-run into the same folder only if they were made with the same
    # settings: a changed recipe, seed or architecture re-renders and rebuilds instead of training on stale inputs
    data = {key: value for key, value in asdict(config.data).items() if key != "rl_tasks"}  # rl_tasks: a filter
    inputs = {"data": data, "seed": seed, "arch": arch}
    stamp = out / "inputs.json"
    fresh = not stamp.is_file() or json.loads(stamp.read_text()) != inputs
    if fresh or not (data_dir / "test.json").is_file():
        print(write_synthetic_dataset(data_dir, n_train=config.data.train_per_task, n_test=config.data.test_per_task,
                                      seed=seed, num_frames=config.data.frames, size=config.data.size,
                                      tasks=config.data.tasks, fixed_options=config.data.fixed_options,
                                      cot=config.data.cot), flush=True)
    train_file, test_file = data_dir / "train.json", data_dir / "test.json"
    if model is None:
        model = out / "model-init"
        if fresh or not (model / "config.json").is_file():
            build_tiny(arch, model, seed=seed)
    stamp.write_text(json.dumps(inputs, indent=1))
    results: dict[str, dict] = {}

    print("== evaluating the untrained model", flush=True)
    results["untrained"] = evaluate_stage(model, test_file, out / "eval-untrained", config.eval,
                                          orders=tuple(config.eval.untrained_orders))

    print("== SFT cold start", flush=True)
    sft = config.sft
    sft.model.path, sft.sft.train_file, sft.data.train_file = str(model), str(train_file), str(train_file)
    sft.run.out, sft.run.seed = str(out / "sft"), seed
    sft_model = train_sft(sft)
    results["sft"] = evaluate_stage(sft_model, test_file, out / "eval-sft", config.eval)
    sampled = {"sft": evaluate_stage(sft_model, test_file, out / "eval-sft-sampled", config.eval, temperature=1.0,
                                     orders=("ordered",), seed=seed)}

    print("== T-GRPO", flush=True)
    rl = config.rl
    rl_train = train_file if config.data.rl_tasks is None else task_subset(train_file, config.data.rl_tasks)
    rl.model.path, rl.data.train_file = str(sft_model), str(rl_train)
    rl.run.out, rl.run.seed = str(out / "rl"), seed
    rl_model = train_rl(rl)
    results["rl"] = evaluate_stage(rl_model, test_file, out / "eval-rl", config.eval)
    sampled["rl"] = evaluate_stage(rl_model, test_file, out / "eval-rl-sampled", config.eval, temperature=1.0,
                                   orders=("ordered",), seed=seed)

    report = summarise(results, sampled, out / "rl" / "metrics.jsonl", config.data.tasks, seed)
    plot_curves(out / "sft" / "metrics.jsonl", out / "rl" / "metrics.jsonl", report, out / "curves.png",
                sft_steps=sft.run.max_steps, rl_steps=rl.run.max_steps)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    summary = render_summary(report, out)
    add_evaluation(rl_model, summary, source=f"`framethink demo` on its held-out synthetic clips (seed {seed})")
    (out / "report.md").write_text(summary + "\n")
    save_config_pair(config, out)
    print(summary)
    return report


def summarise(results: dict, sampled: dict, metrics_file: Path, tasks: list[str], seed: int) -> dict:
    """The numbers the demo reports: greedy held-out accuracy per stage, task and frame order; sampled
    (temperature 1) held-out accuracy of the SFT and RL models; the RL stage's own change in mean training
    reward (first vs last fifth of its steps) and in held-out accuracy (RL minus SFT)."""
    from framethink.data.synth import TASKS

    rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    window = max(1, len(rows) // 5)
    temporal = [t for t in tasks if TASKS.get(t)]

    def ordered(stage: str) -> float:
        return sum(results[stage][t]["ordered"] for t in temporal) / max(1, len(temporal))

    return {
        "results": results, "tasks": tasks, "seed": seed, "window": window,
        "rl_reward_first": sum(r["reward/total"] for r in rows[:window]) / window,
        "rl_reward_last": sum(r["reward/total"] for r in rows[-window:]) / window,
        "temporal_ordered": {stage: ordered(stage) for stage in STAGES},
        "temporal_shuffled": {stage: sum(results[stage][t]["shuffled"] for t in temporal) / max(1, len(temporal))
                              for stage in STAGES if all("shuffled" in results[stage][t] for t in temporal)},
        "sampled": sampled,
        "sampled_mean": {stage: sum(sampled[stage][t]["ordered"] for t in tasks) / len(tasks) for stage in sampled},
    }


def render_summary(report: dict, out: Path) -> str:
    """The learning table and plain sentences about what each stage did."""
    ordered, shuffled, results = report["temporal_ordered"], report["temporal_shuffled"], report["results"]
    rl_gain = ordered["rl"] - ordered["sft"]
    lines = [
        learning_table(results, report["tasks"]), "",
        "held-out accuracy (%), greedy decoding, per task and frame order; curves: " + str(out / "curves.png"),
        f"temporal tasks, ordered frames: untrained {ordered['untrained']:.1f} -> SFT {ordered['sft']:.1f} -> "
        f"RL {ordered['rl']:.1f} (shuffled frames after RL: {shuffled['rl']:.1f})",
        "the RL stage's own change, greedy, ordered frames: " + ", ".join(
            f"{task} {results['sft'][task]['ordered']:.1f} -> {results['rl'][task]['ordered']:.1f}"
            for task in report["tasks"]),
        f"RL stage: mean training reward {report['rl_reward_first']:.3f} (first {report['window']} steps) -> "
        f"{report['rl_reward_last']:.3f} (last {report['window']} steps); held-out ordered accuracy on the "
        f"temporal tasks {rl_gain:+.1f} points (greedy) over its SFT starting checkpoint.",
        f"held-out accuracy sampled at temperature 1 (the policy RL trains), all tasks, ordered frames: "
        f"SFT {report['sampled_mean']['sft']:.1f} -> RL {report['sampled_mean']['rl']:.1f} "
        f"({report['sampled_mean']['rl'] - report['sampled_mean']['sft']:+.1f} points).",
    ]
    if rl_gain <= 0 and report["sampled_mean"]["rl"] <= report["sampled_mean"]["sft"]:
        lines.append("The RL stage did not improve held-out accuracy over its starting checkpoint in this run.")
    return "\n".join(lines)



def save_config_pair(config: DemoConfig, out: Path) -> None:
    save_config(config.sft, out / "sft-config.yaml")
    save_config(config.rl, out / "rl-config.yaml")
