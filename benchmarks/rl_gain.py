"""The RL stage's own gain on the synthetic temporal task, over several seeds: the demo pipeline (synthetic
clips -> tiny Qwen2.5-VL -> SFT cold start -> T-GRPO) per seed, with 300 held-out clips per task, reporting
held-out accuracy of the SFT checkpoint and of the RL model (greedy, and sampled at temperature 1 - the policy
RL trains) and the mean training reward of the first and last fifth of the RL steps. The sampled accuracies of the
SFT and RL models are compared item by item (McNemar's test on the items only one of them answers right). Per seed
it also reports each temporal task's greedy accuracy after RL with ordered, shuffled and reversed frames, whether
every temporal task reached TARGET % with ordered frames, and the seed's wall time (data and model set-up included).

    OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.rl_gain --seeds 0 1 2 --out runs/rl_gain \
        [--recipe recipes/demo-rl-choice.yaml] [key=value ...]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

from framethink.data.synth import TASKS
from framethink.demo import ORDERS, run_demo
from framethink.eval.predictions import read_predictions
from framethink.eval.protocols import framethink_rule

TARGET = 90.0  # % greedy held-out accuracy each temporal task should reach after RL, with ordered frames


def correct_by_item(run: Path) -> dict[str, bool]:
    """Item id -> answered right, from a sampled evaluation's ordered-frame predictions."""
    lines = read_predictions(run / "ordered" / "predictions.jsonl").lines
    return {r["id"]: framethink_rule(r).score == 1.0 for r in lines}


def mcnemar_z(gained: int, lost: int) -> float:
    """McNemar's z for `gained` items right only after a change against `lost` right only before it."""
    return (gained - lost) / math.sqrt(gained + lost) if gained + lost else 0.0


def paired_change(before: dict[str, bool], after: dict[str, bool]) -> dict[str, float]:
    """Items only `after` gets right, items only `before` gets right, and McNemar's z of the difference."""
    gained = sum(after[k] and not before[k] for k in before)
    lost = sum(before[k] and not after[k] for k in before)
    return {"gained": gained, "lost": lost, "z": mcnemar_z(gained, lost)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/rl_gain"))
    parser.add_argument("--test-per-task", type=int, default=300)
    parser.add_argument("--recipe", type=Path, default=None, help="demo recipe (default: the demo's own)")
    parser.add_argument("overrides", nargs="*", help="demo recipe overrides")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        start = time.perf_counter()
        report = run_demo(args.out / f"seed{seed}", seed=seed, recipe=args.recipe,
                          overrides=[f"data.test_per_task={args.test_per_task}", *args.overrides])
        wall = time.perf_counter() - start
        seed_dir = args.out / f"seed{seed}"
        rl = report["results"]["rl"]
        temporal = [task for task in report["tasks"] if TASKS.get(task)]
        pairs = paired_change(correct_by_item(seed_dir / "eval-sft-sampled"), correct_by_item(seed_dir / "eval-rl-sampled"))
        rows.append({
            "seed": seed,
            "sampled_items_gained": pairs["gained"],
            "sampled_items_lost": pairs["lost"],
            "mcnemar_z": pairs["z"],
            "greedy_temporal_sft": report["temporal_ordered"]["sft"],
            "greedy_temporal_rl": report["temporal_ordered"]["rl"],
            "sampled_all_sft": report["sampled_mean"]["sft"],
            "sampled_all_rl": report["sampled_mean"]["rl"],
            "reward_first": report["rl_reward_first"],
            "reward_last": report["rl_reward_last"],
            **{f"greedy_rl_{task}_{order}": rl[task][order] for task in temporal for order in ORDERS},
            "target_met": float(all(rl[task]["ordered"] >= TARGET for task in temporal)),
            "wall_s": wall,
        })
    summary = {key: statistics.mean(r[key] for r in rows) for key in rows[0] if key != "seed"}
    gained, lost = sum(r["sampled_items_gained"] for r in rows), sum(r["sampled_items_lost"] for r in rows)
    pooled = {"gained": gained, "lost": lost, "mcnemar_z": mcnemar_z(gained, lost)}
    result = {"test_per_task": args.test_per_task, "recipe": str(args.recipe) if args.recipe else None,
              "overrides": args.overrides, "target": TARGET, "seeds": rows, "mean": summary,
              "sampled_pooled_over_seeds": pooled}
    (args.out / "rl_gain.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
