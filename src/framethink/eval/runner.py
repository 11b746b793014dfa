"""Resumable, batched evaluation runs that survive bad items (docs/evaluation.md#reports,
docs/evaluation.md#failures-and-the-lock).

`eval run --out OUT` writes `OUT/<frame order>/predictions.jsonl` (see `predictions`), then the report of every
frame order present in OUT (`OUT/report.json`, `OUT/report.md`, `OUT/item_scores.jsonl`). Each batch's lines are
appended and flushed as soon as they are generated; a rerun skips every item already in the file, so a crash
loses at most the batch in flight. A rerun with other settings is refused rather than mixed.

An item that cannot be prepared (missing or undecodable video, a prompt longer than the model's context) or
generated (an exception in the model) becomes a line with status "error" and its reason; the run goes on, and
the report lists it. A rerun on the same folder tries such items again.
"""
from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from framethink import __version__
from framethink.data.clips import FRAME_ORDERS
from framethink.data.prompts import get_template
from framethink.data.records import Record
from framethink.errors import ConfigError, FramethinkError
from framethink.eval.benchmarks import Benchmark
from framethink.eval.lock import output_lock
from framethink.eval.predictions import PREDICTIONS_FILE, header_line, prediction_line, read_predictions
from framethink.eval.protocols import parse_protocols
from framethink.eval.published import published_by_key
from framethink.eval.report import build_report, check_same_run, find_predictions, write_report
from framethink.models.adapter import Decoding, EncodedPrompt, PolicyAdapter

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
    min_pixels: int | None = None
    preset: str | None = None
    framethink_version: str = __version__

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.frame_order not in FRAME_ORDERS:
            raise ConfigError(f"frame order {self.frame_order!r} is not one of {', '.join(FRAME_ORDERS)}")

    def to_dict(self) -> dict:
        return asdict(self)


def template_for(mode: str, adapter: PolicyAdapter) -> str:
    """`reason`: the adapter's own (evaluation) template; `option`: answer with the letter directly."""
    return adapter.default_template if mode == "reason" else "option"


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


def context_length(adapter: PolicyAdapter) -> int | None:
    """The language model's context (max_position_embeddings), when the adapter's model says."""
    config = getattr(getattr(adapter, "model", None), "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return value if isinstance(value, int) else None


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _prepare(adapter: PolicyAdapter, name: str, record: Record, settings: RunSettings,
             context: int | None) -> EncodedPrompt:
    prompt = adapter.encode(record, template=settings.template, frame_order=settings.frame_order,
                            seed=item_seed(name, record.id, settings.seed))
    ids = prompt.inputs.get("input_ids")
    if context is not None and ids is not None:
        needed = int(ids.shape[-1]) + settings.decoding.max_new_tokens
        if needed > context:
            raise ConfigError(f"the prompt has {int(ids.shape[-1])} tokens; with max_new_tokens "
                              f"{settings.decoding.max_new_tokens} that exceeds the model's context of {context}")
    return prompt


def _generate(adapter: PolicyAdapter, prompts: list[EncodedPrompt], decoding: Decoding) -> list[str | Exception]:
    """One batched call; when it fails, each prompt alone, so that one bad item costs only itself."""
    def call(chunk: list[EncodedPrompt]) -> list[str]:
        texts = adapter.generate_texts(chunk, decoding)
        if len(texts) != len(chunk):
            raise FramethinkError(f"adapter {adapter.name!r} returned {len(texts)} texts for {len(chunk)} prompts")
        return texts

    try:
        return list(call(prompts)) if prompts else []
    except Exception:  # noqa: BLE001 - any model failure is the items' failure, found below item by item
        results: list[str | Exception] = []
        for prompt in prompts:
            try:
                results.append(call([prompt])[0])
            except Exception as err:  # noqa: BLE001 - recorded as the item's error, the run goes on
                results.append(err)
        return results


def _run_batch(adapter: PolicyAdapter, batch: list[tuple[str, Record]], settings: RunSettings,
               context: int | None) -> list[dict]:
    lines: dict[int, dict] = {}
    prepared: list[tuple[int, EncodedPrompt]] = []
    for index, (name, record) in enumerate(batch):
        try:
            prepared.append((index, _prepare(adapter, name, record, settings, context)))
        except Exception as err:  # noqa: BLE001 - a bad item is recorded, the run goes on
            lines[index] = prediction_line(name, record, "", error=f"cannot prepare the item: {_reason(err)}")
    results = _generate(adapter, [prompt for _, prompt in prepared], settings.decoding)
    for (index, _), result in zip(prepared, results):
        name, record = batch[index]
        lines[index] = (prediction_line(name, record, result) if isinstance(result, str) else
                        prediction_line(name, record, "", error=f"generation failed: {_reason(result)}"))
    return [lines[i] for i in range(len(batch))]


def _resume(path: Path, settings: RunSettings) -> set[tuple[str, str]]:
    """The items already predicted in `path` (written with the same settings); failed items and a line cut by a
    crash are removed from the file so that they run again."""
    existing = read_predictions(path)
    diffs = [f"{k}={existing.settings.get(k)!r} (this run: {v!r})"
             for k, v in settings.to_dict().items() if existing.settings.get(k) != json.loads(json.dumps(v))]
    if diffs:
        raise ConfigError(f"{path} was written with {', '.join(diffs)}; resume with the same settings "
                          "or write to another --out")
    kept = [p for p in existing.lines if p.get("status", "ok") != "error"]
    if not existing.complete or len(kept) != len(existing.lines):
        partial = path.with_suffix(".jsonl.tmp")
        partial.write_text(header_line(existing.settings) + "".join(json.dumps(p) + "\n" for p in kept))
        os.replace(partial, path)
    return {(p["benchmark"], p["id"]) for p in kept}


def run_eval(adapter: PolicyAdapter, benchmarks: list[Benchmark], run_dir: str | Path, settings: RunSettings,
             *, batch_size: int = 8, limit: int | None = None,
             log: Callable[[str], None] | None = None) -> Path:
    """Generate every missing prediction of the first `limit` items of each benchmark into
    `run_dir/predictions.jsonl`, one batched `generate_texts` call per `batch_size` items; returns the file."""
    _check_templates(benchmarks, settings.template)
    path = Path(run_dir) / PREDICTIONS_FILE
    if path.exists():
        done = _resume(path, settings)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header_line(settings.to_dict()))
        done = set()
    todo = [(b.name, r) for b in benchmarks for r in b.records[:limit] if (b.name, r.id) not in done]
    context = context_length(adapter)
    failed = 0
    with path.open("a", encoding="utf-8") as out:
        for start in range(0, len(todo), batch_size):
            lines = _run_batch(adapter, todo[start:start + batch_size], settings, context)
            out.write("".join(json.dumps(line) + "\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())
            failed += sum(line["status"] == "error" for line in lines)
            if log is not None:
                note = f" ({failed} failed)" if failed else ""
                log(f"{settings.frame_order}: {start + len(lines)}/{len(todo)} items{note}")
    return path


def evaluate(adapter: PolicyAdapter, benchmarks: list[Benchmark], out: str | Path, settings: RunSettings, *,
             batch_size: int = 8, limit: int | None = None, compare: str | None = None,
             protocols: str | tuple[str, ...] | None = None, log: Callable[[str], None] | None = None) -> dict:
    """`eval run`: predictions into `out/<frame order>/` under the folder's lock, then the report over every frame
    order in `out` and every protocol asked for, written to `out/report.json`, `out/report.md` and
    `out/item_scores.jsonl`; returns the report."""
    out = Path(out)
    names = parse_protocols(protocols)  # an unknown protocol or published key fails now, not after generation
    if compare is not None:
        published_by_key(compare)
    with output_lock(out):
        others = [f for f in out.glob(f"*/{PREDICTIONS_FILE}") if f.parent.name != settings.frame_order]
        check_same_run([read_predictions(f) for f in others], settings.to_dict())  # before any generation
        run_eval(adapter, benchmarks, out / settings.frame_order, settings, batch_size=batch_size, limit=limit,
                 log=log)
        files = find_predictions(out)
        report = build_report(files, protocols=names, compare=compare)
        write_report(report, out, files)
    return report
