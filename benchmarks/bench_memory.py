"""Figure (d): peak memory of one video T-GRPO step against the number of frames (4, 8, 16, 32).

Method: every (design, frame count) runs in a fresh process. The process builds everything a step needs
(policy, reference model, optimiser, records), reads its resident set size (VmRSS), resets the kernel's
peak-RSS mark (`echo 5 > /proc/self/clear_refs`), runs ONE step, and reads the peak (VmHWM). The figure is
peak - RSS before the step: what the step adds on top of the loaded models (activations, KV caches, logits,
gradients and the optimiser state created by the first step, which is the same 2 x parameters for every
setting). Designs: framethink (each prompt through the LM once, KV cache gathered to its rows), framethink with
prefix sharing turned off (`PerRowAdapter`: every row carries its whole prompt through the LM), and the
reference design of bench_reference.py (pixels and prompts repeated once per completion).

    .venv/bin/python -m benchmarks.bench_memory
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_reference import ReferenceDesign
from benchmarks.common import FramethinkRun, PerRowAdapter, limit_threads, print_result, rl_config, write_video_records
from framethink.models.tiny import build_tiny

DESIGNS = ("framethink", "framethink, prompt per row", "reference")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(design: str, model_dir: Path, train_file: Path, *, frames: int, size: int, prompts: int, g: int,
            gs: int, new_tokens: int) -> dict:
    """Peak RSS (MiB) that one step of `design` adds, in this process."""
    config = rl_config(model_dir, train_file, "rl.algorithm=tgrpo", f"rl.num_generations={g}",
                       f"rl.num_shuffled={gs}", f"rl.max_new_tokens={new_tokens}", f"optim.prompts_per_step={prompts}",
                       "run.max_steps=1", f"data.max_frames={frames}", f"data.video_max_pixels={size * size}")
    run = FramethinkRun.build(config, PerRowAdapter if design == "framethink, prompt per row" else None)
    stepper = ReferenceDesign(run) if design == "reference" else run
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    times = stepper.step(0)
    peak = _status_kib("VmHWM")
    return {"design": design, "frames": frames, "step_peak_mib": (peak - before) / 1024,
            "rss_before_mib": before / 1024, "rows": times.rows, "wall_s": times.total}


def measure_in_fresh_process(design: str, model_dir: Path, train_file: Path, **setting) -> dict:
    """`measure` in a new Python process, so that nothing allocated before the step hides its peak."""
    spec = {"design": design, "model_dir": str(model_dir), "train_file": str(train_file), **setting}
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_memory", "--child", json.dumps(spec)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(work: Path, *, frame_counts: tuple[int, ...] = (4, 8, 16, 32), size: int = 224, prompts: int = 2, g: int = 8,
        gs: int = 4, new_tokens: int = 32) -> dict:
    """One fresh process per (design, frame count); returns the step peaks by design and frame count."""
    model_dir = build_tiny("qwen2.5-vl", work / "model", seed=0)
    rows = []
    for frames in frame_counts:
        train_file = write_video_records(work / f"clips{frames}", prompts, num_frames=frames, size=size)
        for design in DESIGNS:
            rows.append(measure_in_fresh_process(design, model_dir, train_file, frames=frames, size=size,
                                                 prompts=prompts, g=g, gs=gs, new_tokens=new_tokens))
    by = {d: {r["frames"]: r["step_peak_mib"] for r in rows if r["design"] == d} for d in DESIGNS}
    tokens = {f: f // 2 * (size // 28) ** 2 for f in frame_counts}  # merged tokens: tubelets x (size / 28)^2
    return {"setting": {"frame": f"{size}x{size}", "visual_tokens_per_clip": tokens,
                        "prompts_per_step": prompts, "G": g, "G_shuffled": gs, "max_new_tokens": new_tokens,
                        "method": "fresh process per setting; VmHWM after one step minus VmRSS before it"},
            "step_peak_mib": by, "rows": rows,
            "reference_over_framethink": {f: by["reference"][f] / by["framethink"][f] for f in frame_counts}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", help="internal: run one setting (JSON) and print its result")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    limit_threads(1)
    if args.child:
        spec = json.loads(args.child)
        design, model_dir, train_file = spec.pop("design"), Path(spec.pop("model_dir")), Path(spec.pop("train_file"))
        print(json.dumps(measure(design, model_dir, train_file, **spec)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = run(Path(tmp), size=args.size, new_tokens=args.new_tokens)
    print_result("peak memory per T-GRPO step against frames", result)
    for design, peaks in result["step_peak_mib"].items():
        print(f"{design:>22}: " + ", ".join(f"{f} frames {mib:7.1f} MiB" for f, mib in peaks.items()))


if __name__ == "__main__":
    main()
