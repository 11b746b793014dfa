"""Resumable, batched evaluation runs (SPEC 7).

`eval run --out OUT` writes `OUT/<frame order>/predictions.jsonl` (see `predictions`), then the report
of every frame order present in OUT (`OUT/report.json`, `OUT/report.md`). Each batch's predictions
are appended and flushed as soon as they are generated; a rerun skips every item already in the file,
so a crash loses at most the batch in flight. A rerun with other settings is refused rather than mixed.
"""
from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from framethink import __version__
from framethink.config import EvalConfig
from framethink.data.prompts import get_template
from framethink.errors import ConfigError, FramethinkError
from framethink.eval.benchmarks import Benchmark
from framethink.eval.predictions import PREDICTIONS_FILE, header_line, prediction_line, read_predictions
from framethink.eval.published import published_by_key
from framethink.eval.report import build_report, check_same_run, find_predictions, write_report
from framethink.data.clips import FRAME_ORDERS
from framethink.models.adapter import Decoding, PolicyAdapter

MODES = ("reason", "option")


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides a run's outputs; recorded in the predictions header and the report."""

    model: str
    frames: int | None  # None: the model's own default
    max_pixels: int | None
    mode: str  # reason | option
    template: str
    frame_order: str
    decoding: Decoding
    seed: int = 0
    framethink_version: str = __version__

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.frame_order not in FRAME_ORDERS:
            raise ConfigError(f"frame order {self.frame_order!r} is not one of {', '.join(FRAME_ORDERS)}")

    def to_dict(self) -> dict:
        return asdict(self)


def template_for(mode: str, adapter: PolicyAdapter) -> str:
    """`reason`: the adapter's own (evaluation) template; `option`: answer with the letter directly (SPEC 3)."""
    return adapter.default_template if mode == "reason" else "option"


def eval_decoding(config: EvalConfig, *, temperature: float | None = None, top_p: float | None = None,
                  max_new_tokens: int | None = None) -> Decoding:
    """Decoding from a recipe's eval section (default: Video-R1's temperature 0.1, top_p 0.001,
    1024 new tokens, SPEC 7), each flag given overriding it; temperature 0 decodes greedily."""
    temperature = config.temperature if temperature is None else temperature
    return Decoding(max_new_tokens=config.max_new_tokens if max_new_tokens is None else max_new_tokens,
                    temperature=temperature, top_p=config.top_p if top_p is None else top_p,
                    do_sample=temperature > 0)


def item_seed(benchmark: str, item_id: str, seed: int) -> int:
    """Frame-shuffle seed of one item: fixed by its id, so a resumed run shuffles it the same way."""
    return (zlib.crc32(f"{benchmark}/{item_id}".encode()) + seed) % 2**31


def _check_templates(benchmarks: list[Benchmark], template: str) -> None:
    """Refuse before generating anything if the template cannot format some record (e.g. option
    mode on a numeric task)."""
    formats = get_template(template).suffix
    for bench in benchmarks:
        others = sorted({r.problem_type for r in bench.records} - set(formats))
        if others:
            raise ConfigError(f"template {template!r} formats only {', '.join(formats)} questions; benchmark "
                              f"{bench.name!r} has {', '.join(others)} questions")


def run_eval(adapter: PolicyAdapter, benchmarks: list[Benchmark], run_dir: str | Path, settings: RunSettings,
             *, batch_size: int = 8, limit: int | None = None,
             log: Callable[[str], None] | None = None) -> Path:
    """Generate every missing prediction of the first `limit` items of each benchmark into
    `run_dir/predictions.jsonl`, one batched `generate_texts` call per `batch_size` items; returns the file."""
    _check_templates(benchmarks, settings.template)
    path = Path(run_dir) / PREDICTIONS_FILE
    done: set[tuple[str, str]] = set()
    if path.exists():
        existing = read_predictions(path)
        diffs = [f"{k}={existing.settings.get(k)!r} (this run: {v!r})"
                 for k, v in settings.to_dict().items() if existing.settings.get(k) != json.loads(json.dumps(v))]
        if diffs:
            raise ConfigError(f"{path} was written with {', '.join(diffs)}; resume with the same settings "
                              "or write to another --out")
        if not existing.complete:  # drop the line a crash cut in half: that item runs again
            path.write_text(header_line(existing.settings) + "".join(json.dumps(p) + "\n" for p in existing.lines))
        done = {(p["benchmark"], p["id"]) for p in existing.lines}
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header_line(settings.to_dict()))
    todo = [(b.name, r) for b in benchmarks for r in b.records[:limit] if (b.name, r.id) not in done]
    with path.open("a", encoding="utf-8") as out:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            prompts = [adapter.encode(record, template=settings.template, frame_order=settings.frame_order,
                                      seed=item_seed(name, record.id, settings.seed)) for name, record in batch]
            texts = adapter.generate_texts(prompts, settings.decoding)
            if len(texts) != len(batch):
                raise FramethinkError(f"adapter {adapter.name!r} returned {len(texts)} texts for {len(batch)} prompts")
            out.write("".join(json.dumps(prediction_line(name, record, text)) + "\n"
                              for (name, record), text in zip(batch, texts)))
            out.flush()
            os.fsync(out.fileno())
            if log is not None:
                log(f"{settings.frame_order}: {start + len(batch)}/{len(todo)} items")
    return path


def evaluate(adapter: PolicyAdapter, benchmarks: list[Benchmark], out: str | Path, settings: RunSettings, *,
             batch_size: int = 8, limit: int | None = None, compare: str | None = None,
             log: Callable[[str], None] | None = None) -> dict:
    """`eval run`: predictions into `out/<frame order>/`, then the report over every frame order in `out`,
    written to `out/report.json` and `out/report.md`; returns the report."""
    out = Path(out)
    if compare is not None:
        published_by_key(compare)  # an unknown key fails now, not after generation
    others = [f for f in out.glob(f"*/{PREDICTIONS_FILE}") if f.parent.name != settings.frame_order]
    check_same_run([read_predictions(f) for f in others], settings.to_dict())  # before any generation
    run_eval(adapter, benchmarks, out / settings.frame_order, settings, batch_size=batch_size, limit=limit, log=log)
    report = build_report(find_predictions(out), compare=compare)
    write_report(report, out)
    return report
