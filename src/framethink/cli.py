"""The `framethink` command line. Every argument of every command is defined here, in one place."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from framethink.errors import FramethinkError


def _data_check(args: argparse.Namespace) -> int:
    from framethink.data.check import run_check
    from framethink.data.mediacache import open_cache

    cache = open_cache(args.cache, enabled=not args.no_cache)
    return run_check(args.file, root=args.root, workers=args.workers, cache=cache, report_file=args.report)


def _data_cot(args: argparse.Namespace) -> int:
    from framethink.data.cot import cot_command, cot_config, parse_min_accuracy

    config = cot_config(args.overrides, samples=args.samples, batch_size=args.batch_size,
                        min_accuracy=parse_min_accuracy(args.min_accuracy) if args.min_accuracy else None)
    return cot_command(args.input, args.out, root=args.root, model=args.model, endpoint=args.endpoint,
                       served_model=args.served_model, config=config)


def _data_mix(args: argparse.Namespace) -> int:
    from framethink.data.mediacache import open_cache
    from framethink.data.mix import build_mix

    result = build_mix(args.spec, args.out, cache=open_cache(args.cache, enabled=not args.no_cache),
                       workers=args.workers, progress=True)
    print(result.render())
    print(f"{len(result.removed)} records removed (duplicates, contamination): see the .removed.jsonl beside {args.out}")
    return 0


def _data_stats(args: argparse.Namespace) -> int:
    from framethink.data.mediacache import open_cache
    from framethink.data.stats import dataset_stats, write_stats

    stats = dataset_stats(args.file, root=args.root, cache=open_cache(args.cache, enabled=not args.no_cache),
                          workers=args.workers, progress=True)
    print(stats.render())
    out = args.out or args.file.with_name(args.file.stem + ".stats")
    print("wrote " + ", ".join(str(p) for p in write_stats(stats, out)))
    return 0


def _media_options(parser: argparse.ArgumentParser) -> None:
    from framethink.data.mediacache import default_workers

    parser.add_argument("--workers", type=int, default=default_workers(), help="processes reading media (default: the CPUs)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="media cache file (default: $XDG_CACHE_HOME/framethink/media.sqlite); unchanged files are skipped")
    parser.add_argument("--no-cache", action="store_true", help="read every media file, keep nothing")


def _data_synth(args: argparse.Namespace) -> int:
    from framethink.data.synth import write_synthetic_dataset

    summary = write_synthetic_dataset(
        args.out, n_train=args.train, n_test=args.test, seed=args.seed,
        num_frames=args.frames, size=args.size, tasks=args.tasks.split(",") if args.tasks else None,
        fixed_options=args.fixed_options,
    )
    print(summary)
    return 0


def _model_tiny(args: argparse.Namespace) -> int:
    from framethink.models.tiny import build_tiny

    out = build_tiny(args.arch, args.out, seed=args.seed)
    print(f"wrote tiny {args.arch} checkpoint to {out}")
    return 0


class _TinyArchs:
    """`--arch` choices: the model-family registry's tiny architectures, read only when the argument is checked or
    its help is shown (importing the models is slow)."""

    def __contains__(self, arch: object) -> bool:
        from framethink.models.registry import tiny_archs

        return arch in tiny_archs()

    def __iter__(self):
        from framethink.models.registry import tiny_archs

        return iter(tiny_archs())


def _model_convert(args: argparse.Namespace) -> int:
    from framethink.models.tinyllava.convert import convert_released_checkpoint

    out = convert_released_checkpoint(args.src, args.out, tokenizer_path=args.tokenizer)
    print(f"wrote {args.src} in framethink's layout to {out}")
    return 0


def _eval_run(args: argparse.Namespace) -> int:
    from framethink.eval.commands import run_command

    return run_command(args)


def _eval_score(args: argparse.Namespace) -> int:
    from framethink.eval.commands import score_command

    return score_command(args)


def _train(args: argparse.Namespace) -> int:
    from framethink.config import load_config

    overrides = [*args.overrides, *(["run.check_data=false"] if args.skip_data_check else [])]
    config = load_config(args.config, overrides)  # every key checked before any model loads
    if args.train_command == "rl":
        from framethink.rl.trainer import train_rl as train
    else:
        from framethink.sft.trainer import train_sft as train
    print(f"final model: {train(config, resume=args.resume)}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from framethink.demo import run_demo

    run_demo(args.out, model=args.model, arch=args.arch, seed=args.seed, recipe=args.recipe, overrides=args.overrides)
    return 0


def _infer(args: argparse.Namespace) -> int:
    from framethink.infer import run_infer

    media, kind = (args.video, "video") if args.video is not None else (args.image, "image")
    run_infer(args.model, media, kind, args.question, options=args.options.split(",") if args.options else (),
              frame_order=args.frame_order, frames=args.frames, temperature=args.temperature, top_p=args.top_p,
              max_new_tokens=args.max_new_tokens, seed=args.seed, device=args.device)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from framethink.inspect import run_inspect

    return run_inspect(args.model, video=args.video, image=args.image, question=args.question, frames=args.frames,
                       fps=args.fps, max_pixels=args.max_pixels, frame_order=args.frame_order, seed=args.seed,
                       out=args.out, device=args.device)


def _serve(args: argparse.Namespace) -> int:
    from framethink.serve.app import serve

    serve(args.model, host=args.host, port=args.port, name=args.served_model_name, frames=args.frames,
          max_upload_mb=args.max_upload_mb, max_new_tokens=args.max_new_tokens, max_samples=args.max_samples,
          examples=args.examples, device=args.device)
    return 0


def _bench_help() -> str:
    from framethink.eval.benchmarks import bench_help

    return bench_help()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="framethink", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="validate every record of a dataset file")
    check.add_argument("file", type=Path)
    check.add_argument("--root", type=Path, default=None, help="data root media paths resolve against (default: the file's folder)")
    check.add_argument("--report", type=Path, default=None, help="write every bad record here as JSON lines")
    _media_options(check)
    check.set_defaults(func=_data_check)
    cot = data.add_parser("cot", help="chain-of-thought annotation by a teacher, kept by the reward rules (resumable)")
    cot.add_argument("--in", dest="input", type=Path, required=True, help="records to annotate")
    cot.add_argument("--out", type=Path, required=True, help="the kept records, in the CoT format `train sft` reads")
    cot.add_argument("--root", type=Path, default=None, help="data root media paths resolve against (default: the input's folder)")
    cot.add_argument("--model", type=Path, default=None, help="teacher checkpoint folder (any model framethink loads)")
    cot.add_argument("--endpoint", default=None, help="teacher as an OpenAI-compatible server, e.g. http://host:8000/v1")
    cot.add_argument("--served-model", default=None, help="the model name the endpoint serves")
    cot.add_argument("--samples", type=int, default=None, help="outputs per record; the best passing one is kept (default 1)")
    cot.add_argument("--batch-size", type=int, default=None, help="records per generate call or requests in flight (default 8)")
    cot.add_argument("--min-accuracy", action="append", default=[],
                     help="accuracy an answer needs: a number for every type, or TYPE=VALUE[,TYPE=VALUE] (default 0.6)")
    cot.add_argument("overrides", nargs="*", help="key=value settings, e.g. temperature=0.7 max_new_tokens=1024")
    cot.set_defaults(func=_data_cot)
    mix = data.add_parser("mix", help="one training file from several, by quotas, deduplicated and decontaminated")
    mix.add_argument("--spec", type=Path, required=True, help="mix spec YAML (see recipes/mixes/)")
    mix.add_argument("--out", type=Path, required=True)
    _media_options(mix)
    mix.set_defaults(func=_data_mix)
    stats = data.add_parser("stats", help="durations, frames, resolutions and text lengths by source and type")
    stats.add_argument("file", type=Path)
    stats.add_argument("--root", type=Path, default=None, help="data root media paths resolve against (default: the file's folder)")
    stats.add_argument("--out", type=Path, default=None, help="folder for stats.txt, stats.json, histograms.png (default: FILE's stem + .stats)")
    _media_options(stats)
    stats.set_defaults(func=_data_stats)
    synth = data.add_parser("synth", help="render the synthetic temporal video-QA dataset")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--train", type=int, default=2000)
    synth.add_argument("--test", type=int, default=300)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--frames", type=int, default=16, help="frames per clip")
    synth.add_argument("--size", type=int, default=56, help="frame height and width in pixels")
    synth.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    synth.add_argument("--fixed-options", action="store_true",
                       help="list every value of a task as options in one fixed order (A-F for colours)")
    synth.set_defaults(func=_data_synth)

    model = commands.add_parser("model", help="model tools").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("tiny", help="write a randomly initialised tiny checkpoint in the real layout")
    tiny.add_argument("--arch", required=True, choices=_TinyArchs())
    tiny.add_argument("--out", type=Path, required=True)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_model_tiny)
    convert = model.add_parser("convert", help="rewrite a released TinyLLaVA-Video checkpoint in framethink's layout")
    convert.add_argument("src", type=Path, help="released checkpoint folder (config.json model_type 'tinyllava')")
    convert.add_argument("--out", type=Path, required=True)
    convert.add_argument("--tokenizer", type=Path, default=None,
                         help="tokenizer folder, for a checkpoint saved without tokenizer files")
    convert.set_defaults(func=_model_convert)

    evaluation = commands.add_parser("eval", help="benchmark evaluation").add_subparsers(dest="eval_command", required=True)
    run = evaluation.add_parser("run", help="evaluate a model on benchmarks (resumable); writes OUT/<frame order>/ and OUT/report.*")
    run.add_argument("--model", type=Path, required=True, help="model checkpoint folder")
    run.add_argument("--bench", required=True, help="comma-separated benchmark names or record file paths: "
                     + _bench_help())
    run.add_argument("--data-root", type=Path, default=None,
                     help="folder holding <bench>/ (released layout) or eval_<bench>.json (Video-R1-eval)")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--preset", choices=["video-r1-16f", "video-r1-32f", "video-r1-64f", "tinyllava"], default=None,
                     help="a reference evaluation's frames, pixels, decoding, template and protocol; flags override it")
    run.add_argument("--protocol", default=None,
                     help="comma-separated scoring protocols: framethink (default), video-r1, official, lmms-eval, tinyllava")
    run.add_argument("--frames", type=int, default=None, help="frames per video (default: the preset's, else the model's)")
    run.add_argument("--max-pixels", type=int, default=None, help="max pixels per frame (default: the preset's, else the model's)")
    run.add_argument("--min-pixels", type=int, default=None, help="min pixels per video frame (default: the preset's, else the model's)")
    run.add_argument("--mode", choices=["reason", "option"], default="reason",
                     help="reason: the model's reasoning template; option: answer with the letter directly")
    run.add_argument("--frame-order", choices=["ordered", "shuffled", "reversed"], default="ordered")
    run.add_argument("--limit", type=int, default=None, help="evaluate only the first K items of each benchmark")
    run.add_argument("--batch-size", type=int, default=None, help="prompts per generate call (default: the recipe's, 8)")
    run.add_argument("--recipe", type=Path, default=None, help="recipe whose eval section gives the decoding")
    run.add_argument("--temperature", type=float, default=None, help="overrides the preset / recipe (default 0.1; 0 is greedy)")
    run.add_argument("--top-p", type=float, default=None, help="overrides the preset / recipe (default 0.001)")
    run.add_argument("--max-new-tokens", type=int, default=None, help="overrides the preset / recipe (default 1024)")
    run.add_argument("--seed", type=int, default=0, help="seed of the frame shuffle and of sampled decoding")
    run.add_argument("--compare", default=None, help="published result to compare with (default: matched by model folder name)")
    run.add_argument("--strict", action="store_true", help="exit 1 when any item failed (default: report it and exit 0)")
    run.set_defaults(func=_eval_run)
    score = evaluation.add_parser("score", help="re-score predictions offline under one or more protocols")
    score.add_argument("predictions", type=Path, nargs="+", help="predictions.jsonl files, or `eval run` output folders")
    score.add_argument("--protocol", default=None,
                       help="comma-separated scoring protocols: framethink (default), video-r1, official, lmms-eval, tinyllava")
    score.add_argument("--compare", default=None, help="published result to compare with (default: matched by model folder name)")
    score.add_argument("--out", type=Path, default=None, help="also write report.json, report.md and item_scores.jsonl here")
    score.set_defaults(func=_eval_score)
    train = commands.add_parser("train", help="training").add_subparsers(dest="train_command", required=True)
    for name, text in (("rl", "GRPO / T-GRPO / Dr. GRPO"), ("sft", "supervised cold start")):
        cmd = train.add_parser(name, help=text)
        cmd.add_argument("--config", type=Path, required=True, help="recipe YAML (see recipes/)")
        cmd.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
        cmd.add_argument("--skip-data-check", action="store_true",
                         help="do not check that every record's media opens before the model loads")
        cmd.add_argument("overrides", nargs="*", help="key=value overrides, e.g. rl.beta=0 optim.lr=1e-6")
        cmd.set_defaults(func=_train)

    demo = commands.add_parser("demo", help="synthetic data -> tiny model -> SFT -> T-GRPO -> evaluation, with a report")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--model", type=Path, default=None, help="start from this checkpoint instead of a tiny random one")
    demo.add_argument("--arch", default="qwen2.5-vl", help="architecture of the tiny model")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--recipe", type=Path, default=None,
                      help="demo recipe (default: recipes/demo.yaml; demo-tinyllava.yaml for tinyllava-video, "
                           "demo-qwen3.yaml for qwen3-vl and qwen3.5)")
    demo.add_argument("overrides", nargs="*", help="key=value overrides of the demo recipe")
    demo.set_defaults(func=_demo)

    infer = commands.add_parser("infer", help="ask a model about one video or image; the reasoning streams as it is generated")
    infer.add_argument("--model", type=Path, required=True, help="model checkpoint folder")
    media = infer.add_mutually_exclusive_group(required=True)
    media.add_argument("--video", type=Path)
    media.add_argument("--image", type=Path)
    infer.add_argument("--question", required=True)
    infer.add_argument("--options", default=None, help="comma-separated options, e.g. red,green (lettered A, B, ...)")
    infer.add_argument("--frame-order", choices=["ordered", "shuffled", "reversed"], default="ordered")
    infer.add_argument("--frames", type=int, default=None, help="frames per video (default: the model's frame rule)")
    infer.add_argument("--temperature", type=float, default=None, help="default 0.1 (evaluation's); 0 is greedy")
    infer.add_argument("--top-p", type=float, default=None, help="default 0.001 (evaluation's)")
    infer.add_argument("--max-new-tokens", type=int, default=None, help="default 1024")
    infer.add_argument("--seed", type=int, default=0, help="seed of the shuffled order and of sampling")
    infer.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    infer.set_defaults(func=_infer)

    serve = commands.add_parser("serve", help="OpenAI-compatible chat-completions API and a web page for one model")
    serve.add_argument("--model", type=Path, required=True, help="model checkpoint folder")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", default=None, help="the API's model name (default: the folder's name)")
    serve.add_argument("--frames", type=int, default=None, help="frames per video (default: the model's frame rule)")
    serve.add_argument("--max-upload-mb", type=float, default=64.0, help="largest request body or uploaded file")
    serve.add_argument("--max-new-tokens", type=int, default=1024, help="most new tokens a request may ask for")
    serve.add_argument("--max-samples", type=int, default=8, help="largest `n` of a chat-completions request")
    serve.add_argument("--examples", type=Path, default=None, help="folder of videos the page offers to pick")
    serve.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    serve.set_defaults(func=_serve)

    inspect = commands.add_parser("inspect", help="show (and save) what a model receives for one video or image")
    inspect.add_argument("--model", type=Path, required=True, help="model checkpoint folder")
    media = inspect.add_mutually_exclusive_group(required=True)
    media.add_argument("--video", type=Path)
    media.add_argument("--image", type=Path)
    inspect.add_argument("--question", default=None, help="default: a generic question about the video or image")
    inspect.add_argument("--frames", type=int, default=None, help="frames per video (default: the model's frame rule)")
    inspect.add_argument("--fps", type=float, default=None, help="sampling fps of a model that samples by fps")
    inspect.add_argument("--max-pixels", type=int, default=None, help="the model's video_max_pixels")
    inspect.add_argument("--frame-order", choices=["ordered", "shuffled", "reversed"], default="ordered")
    inspect.add_argument("--seed", type=int, default=0, help="seed of the shuffled order")
    inspect.add_argument("--out", type=Path, default=None, help="FILE.safetensors: every tensor the forward gets")
    inspect.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    inspect.set_defaults(func=_inspect)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except FramethinkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
