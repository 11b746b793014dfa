"""The `framethink` command line. Every argument of every command is defined here, in one place."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from framethink.errors import FramethinkError


def _data_check(args: argparse.Namespace) -> int:
    from framethink.data.check import check_dataset

    report = check_dataset(args.file, root=args.root)
    print(report.render())
    return 0 if report.ok else 1


def _data_synth(args: argparse.Namespace) -> int:
    from framethink.data.synth import write_synthetic_dataset

    summary = write_synthetic_dataset(
        args.out, n_train=args.train, n_test=args.test, seed=args.seed,
        num_frames=args.frames, size=args.size, tasks=args.tasks.split(",") if args.tasks else None,
    )
    print(summary)
    return 0


def _model_tiny(args: argparse.Namespace) -> int:
    from framethink.models.tiny import build_tiny

    out = build_tiny(args.arch, args.out, seed=args.seed)
    print(f"wrote tiny {args.arch} checkpoint to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="framethink", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    check = data.add_parser("check", help="validate every record of a dataset file")
    check.add_argument("file", type=Path)
    check.add_argument("--root", type=Path, default=None, help="data root media paths resolve against (default: the file's folder)")
    check.set_defaults(func=_data_check)
    synth = data.add_parser("synth", help="render the synthetic temporal video-QA dataset")
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--train", type=int, default=2000)
    synth.add_argument("--test", type=int, default=300)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--frames", type=int, default=16, help="frames per clip")
    synth.add_argument("--size", type=int, default=56, help="frame height and width in pixels")
    synth.add_argument("--tasks", default=None, help="comma-separated task names (default: all)")
    synth.set_defaults(func=_data_synth)

    model = commands.add_parser("model", help="model tools").add_subparsers(dest="model_command", required=True)
    tiny = model.add_parser("tiny", help="write a randomly initialised tiny checkpoint in the real layout")
    tiny.add_argument("--arch", required=True, choices=["qwen2.5-vl", "qwen2-vl"])
    tiny.add_argument("--out", type=Path, required=True)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=_model_tiny)
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
