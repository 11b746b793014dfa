"""`framethink eval run` and `framethink eval score`: from command-line arguments to a report
(docs/evaluation.md). The parser lives in `framethink.cli`."""
from __future__ import annotations

import argparse
import sys

from framethink.config import EvalConfig, load_config
from framethink.eval.benchmarks import load_benchmarks
from framethink.eval.presets import Preset, get_preset
from framethink.eval.protocols import parse_protocols
from framethink.eval.report import build_report, find_predictions, render_markdown, write_report
from framethink.eval.runner import RunSettings, evaluate, template_for
from framethink.models.adapter import Decoding


def resolve_decoding(base: Decoding, *, temperature: float | None = None, top_p: float | None = None,
                     max_new_tokens: int | None = None) -> Decoding:
    """`base` (a preset's or a recipe's decoding) with each flag given overriding it; temperature 0 is greedy."""
    temperature = base.temperature if temperature is None else temperature
    return Decoding(max_new_tokens=base.max_new_tokens if max_new_tokens is None else max_new_tokens,
                    temperature=temperature, top_p=base.top_p if top_p is None else top_p, do_sample=temperature > 0)


def _given(value, preset: Preset | None, field: str):
    """An explicit flag wins over the preset."""
    return value if value is not None or preset is None else getattr(preset, field)


def run_command(args: argparse.Namespace) -> int:
    import torch

    from framethink import models

    preset = get_preset(args.preset) if args.preset else None
    protocols = parse_protocols(args.protocol or (preset.protocol if preset else None))
    benchmarks = load_benchmarks([s.strip() for s in args.bench.split(",") if s.strip()], args.data_root)
    recipe = load_config(args.recipe).eval if args.recipe else None  # a recipe's decoding wins over a preset's
    if recipe is None and preset is not None:
        base = preset.decoding
    else:
        section = recipe or EvalConfig()
        base = Decoding(max_new_tokens=section.max_new_tokens, temperature=section.temperature, top_p=section.top_p,
                        do_sample=section.temperature > 0)
    decoding = resolve_decoding(base, temperature=args.temperature, top_p=args.top_p,
                                max_new_tokens=args.max_new_tokens)
    frames = _given(args.frames, preset, "frames")
    max_pixels = _given(args.max_pixels, preset, "max_pixels")
    min_pixels = _given(args.min_pixels, preset, "min_pixels")
    bounds = {k: v for k, v in (("max_pixels", max_pixels), ("video_min_pixels", min_pixels)) if v is not None}
    adapter = models.load_adapter(args.model, num_frames=frames, **bounds)
    torch.manual_seed(args.seed)  # sampled decoding (temperature > 0) is reproducible by seed
    template = "option" if args.mode == "option" else (preset.template if preset else template_for("reason", adapter))
    settings = RunSettings(model=str(args.model.resolve()), frames=frames, max_pixels=max_pixels,
                           min_pixels=min_pixels, mode=args.mode, template=template, frame_order=args.frame_order,
                           decoding=decoding, seed=args.seed, preset=args.preset)
    batch_size = args.batch_size or (recipe or EvalConfig()).batch_size
    report = evaluate(adapter, benchmarks, args.out, settings, batch_size=batch_size, limit=args.limit,
                      compare=args.compare, protocols=protocols,
                      log=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(render_markdown(report))
    failures = sum(len(run["failures"]) for run in report["runs"].values())
    if failures:
        print(f"{failures} items failed and were scored as wrong (listed in the report)", file=sys.stderr)
    return 1 if args.strict and failures else 0


def score_command(args: argparse.Namespace) -> int:
    files = find_predictions(*args.predictions)
    report = build_report(files, protocols=parse_protocols(args.protocol), compare=args.compare)
    if args.out is not None:
        write_report(report, args.out, files)
    print(render_markdown(report))
    return 0
