"""The benchmark registry and the resolution of `--bench` values (docs/evaluation.md#benchmarks).

Each benchmark is one module of this package holding a `BENCHMARK` spec (loader, grouping, official and
lmms-eval scoring rules, published numbers, help text); adding one is that file and one line in `REGISTRY`.

`load_benchmark(spec, data_root)` resolves one `--bench` value:
- a path to a record file (`.json` / `.jsonl`, e.g. the synthetic test set) is loaded with `load_records`,
  media resolved against the file's folder, and named after the file's stem;
- a benchmark name loads the released layout in `DATA_ROOT/<name>/` when that folder exists, else the
  Video-R1-eval file `DATA_ROOT/eval_<name>.json` (media resolved against DATA_ROOT).

Every record has `source` = its task, `answer` = the gold option letter (multiple choice) or number (numeric),
options as "A. text", and `extra` holding the benchmark's metadata. A missing video does not stop loading: the
run records that item as an error. A benchmark none of whose videos exist is refused (the layout is wrong),
naming the first path that was expected.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from framethink.data.records import Record, load_records
from framethink.errors import ConfigError, DataError
from framethink.eval.benchmarks import mlvu, mmvu, mvbench, tempcompass, videomme, videommmu, vsibench
from framethink.eval.benchmarks.base import BenchmarkSpec
from framethink.rewards import parse_number

REGISTRY: dict[str, BenchmarkSpec] = {
    "mvbench": mvbench.BENCHMARK,
    "videomme": videomme.BENCHMARK,
    "mlvu": mlvu.BENCHMARK,
    "mmvu": mmvu.BENCHMARK,
    "vsibench": vsibench.BENCHMARK,
    "tempcompass": tempcompass.BENCHMARK,
    "videommmu": videommmu.BENCHMARK,
}
BENCHMARKS = tuple(REGISTRY)


@dataclass
class Benchmark:
    name: str
    records: list[Record]
    origin: str  # where it was loaded from, for messages


def bench_help() -> str:
    """The `--bench` help: one line per registered benchmark."""
    return "; ".join(spec.help for spec in REGISTRY.values())


def _check(bench: Benchmark) -> Benchmark:
    """Ids must be unique (resume keys on them), numeric gold answers must parse, and some media must exist."""
    seen: set[str] = set()
    for record in bench.records:
        file, _, where = record.origin.rpartition(":")
        if record.id in seen:
            raise DataError(file, where, "id", f"duplicate id {record.id!r} in benchmark {bench.name!r}")
        seen.add(record.id)
        if record.problem_type in ("numerical", "regression") and parse_number(record.answer) is None:
            raise DataError(file, where, "answer",
                            f"a {record.problem_type} record needs a numeric answer, got {record.answer!r}")
    if not bench.records:
        raise DataError(bench.origin, "-", "<records>", f"benchmark {bench.name!r} holds no items")
    media = [(r, m) for r in bench.records for m in r.media]
    if media and not any(m.exists() for _, m in media):
        record, first = media[0]
        file, _, where = record.origin.rpartition(":")
        raise DataError(file, where, record.media_field or "video",
                        f"none of the {len(media)} media files of benchmark {bench.name!r} exists; the first was "
                        f"expected at {first} (is --data-root the folder holding the benchmark?)")
    return bench


def load_benchmark(spec: str, data_root: str | Path | None) -> Benchmark:
    """One `--bench` value: a benchmark name (see the module docstring) or a record file path."""
    path = Path(spec)
    if spec not in REGISTRY:
        if path.suffix in (".json", ".jsonl") or path.is_file():
            if not path.is_file():
                raise DataError(path, "-", "<file>", "not found: expected a record file (Video-R1 format) here")
            return _check(Benchmark(name=path.stem, records=load_records(path), origin=str(path)))
        raise ConfigError(f"unknown benchmark {spec!r}; known: {', '.join(BENCHMARKS)}, or a record file path")
    if data_root is None:
        raise ConfigError(f"benchmark {spec!r} needs --data-root (the folder holding {spec}/ or eval_{spec}.json)")
    root = Path(data_root)
    folder, video_r1_file = root / spec, root / f"eval_{spec}.json"
    if folder.is_dir():
        return _check(Benchmark(name=spec, records=REGISTRY[spec].load(folder), origin=str(folder)))
    if video_r1_file.is_file():
        return _check(Benchmark(name=spec, records=load_records(video_r1_file), origin=str(video_r1_file)))
    raise DataError(folder, "-", "<file>", f"not found: benchmark {spec!r} expects its released layout in "
                    f"{folder}/ or the Video-R1-eval file {video_r1_file}, and neither exists")


def load_benchmarks(specs: list[str], data_root: str | Path | None) -> list[Benchmark]:
    """Every `--bench` value, in order; two values with the same name raise ConfigError."""
    benches = [load_benchmark(spec, data_root) for spec in specs]
    names = [b.name for b in benches]
    for name in names:
        if names.count(name) > 1:
            origins = ", ".join(b.origin for b in benches if b.name == name)
            raise ConfigError(f"benchmark name {name!r} given twice ({origins})")
    return benches
