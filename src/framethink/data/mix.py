"""`framethink data mix`: one training file from several record files, by quotas or ratios per subset and
problem type, deduplicated and decontaminated against evaluation benchmarks.

Video-R1-260k is such a mixture: seven subsets (general video and image QA, charts, OCR, math, knowledge,
spatial) drawn from public sets and balanced by subset (recipes/mixes/video-r1-260k.yaml writes down the
published composition). A spec names, per subset, its files and filters, and either an exact `count`, or a
`ratio` (the spec's `total` less the counts is shared by the ratios), or neither (every record it has),
optionally split by problem type.

Steps, all deterministic for a given spec (`seed`):
1. every record of every file is parsed (a malformed record stops the mix with its file, record and field)
   and given to the first subset whose files and filters take it;
2. dedup: records with the same media content (SHA-256 of the bytes) and the same normalised question keep
   their first occurrence (spec order, file order, record order);
3. decontamination: records sharing a media file's content or a normalised question with an item of an
   evaluation benchmark found under `decontaminate.data_root` are removed (the benchmarks load through
   framethink's evaluation loaders);
4. each subset draws its quota from what is left, by a seeded permutation per subset and problem type.
Outputs: OUT (the records in the Video-R1 format, media paths relative to `media_root`), OUT's stem +
`.removed.jsonl` (every removed record and why), `.composition.txt` and `.composition.png`. Each file is
written whole through a temporary file and a rename, OUT last: an interrupted mix leaves no partial OUT.
See docs/data.md ("Mixing").
"""
from __future__ import annotations

import fnmatch
import io
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from framethink.config import _parse_yaml, from_dict
from framethink.data.mediacache import MediaCache, compute_media, content_hash
from framethink.data.records import MEDIA_KINDS, PROBLEM_TYPES, Record, load_records
from framethink.data.writing import atomic_write, record_object, records_text
from framethink.errors import ConfigError, DataError

MATCHES = ("video", "question")


@dataclass
class SubsetSpec:
    """One subset: where its records come from, which of them it takes, and how many it keeps."""

    name: str = ""
    files: list[str] = field(default_factory=list)  # record files, relative to the spec
    root: str | None = None  # media root of these files (default: each file's folder), relative to the spec
    data_type: str | None = None  # keep only image / video / text records
    data_source: list[str] = field(default_factory=list)  # keep only these data_source globs (empty: any)
    problem_type: list[str] = field(default_factory=list)  # keep only these problem types (empty: any)
    count: int | None = None  # exact number of records
    ratio: float | None = None  # share of what the spec's `total` leaves after the counts, by the subsets' ratios
    problem_types: dict[str, float] = field(default_factory=dict)  # split of the subset by problem type (ratios)


@dataclass
class DecontaminateSpec:
    data_root: str = ""  # folder holding the benchmarks (<name>/ or eval_<name>.json), relative to the spec
    benchmarks: list[str] = field(default_factory=list)  # empty: every known benchmark found under data_root
    match: list[str] = field(default_factory=lambda: list(MATCHES))  # video content, question text


@dataclass
class MixSpec:
    seed: int = 0
    total: int | None = None  # size of the mix; what the subsets' counts leave is shared by their ratios
    media_root: str | None = None  # output media paths are relative to it (default: the output's folder)
    dedup: bool = True
    decontaminate: DecontaminateSpec | None = None
    subsets: list[SubsetSpec] = field(default_factory=list)


def load_mix_spec(path: str | Path) -> tuple[MixSpec, Path]:
    """The spec and the folder its relative paths resolve against; every key and value checked."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"mix spec {path} does not exist")
    data = _parse_yaml(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"mix spec {path}: the top level must be a mapping")
    try:
        spec = from_dict(MixSpec, data)
        _validate(spec)
    except ConfigError as err:
        raise ConfigError(f"mix spec {path}: {err}") from None
    return spec, path.parent


def _validate(spec: MixSpec) -> None:
    if not spec.subsets:
        raise ConfigError("subsets: a mix needs at least one subset")
    names = [s.name for s in spec.subsets]
    for i, subset in enumerate(spec.subsets):
        key = f"subsets[{i}] ({subset.name or 'unnamed'})"
        if not subset.name or names.count(subset.name) > 1:
            raise ConfigError(f"{key}.name: every subset needs a name of its own")
        if not subset.files:
            raise ConfigError(f"{key}.files: a subset needs at least one record file")
        if subset.count is not None and subset.ratio is not None:
            raise ConfigError(f"{key}: give count or ratio, not both")
        if subset.count is not None and subset.count < 0 or subset.ratio is not None and subset.ratio <= 0:
            raise ConfigError(f"{key}: count must be >= 0 and ratio > 0")
        if subset.ratio is not None and spec.total is None:
            raise ConfigError(f"{key}.ratio: ratios need the spec's total")
        if subset.data_type is not None and subset.data_type not in MEDIA_KINDS:
            raise ConfigError(f"{key}.data_type: {subset.data_type!r} is not one of {', '.join(MEDIA_KINDS)}")
        for ptype in [*subset.problem_type, *subset.problem_types]:
            if ptype not in PROBLEM_TYPES:
                raise ConfigError(f"{key}: unknown problem type {ptype!r}; known: {', '.join(PROBLEM_TYPES)}")
        if any(r <= 0 for r in subset.problem_types.values()):
            raise ConfigError(f"{key}.problem_types: every ratio must be > 0")
    if spec.total is not None:
        counted = sum(s.count for s in spec.subsets if s.count is not None)
        if any(s.count is None and s.ratio is None for s in spec.subsets):
            raise ConfigError("total: with a total, every subset needs a count or a ratio")
        if counted > spec.total:
            raise ConfigError(f"total: {spec.total} is less than the subsets' counts ({counted})")
        if counted < spec.total and not any(s.ratio is not None for s in spec.subsets):
            raise ConfigError(f"total: {spec.total} is more than the subsets' counts ({counted}) and no subset "
                              "gives a ratio to share the rest")
    if spec.decontaminate is not None:
        if not spec.decontaminate.data_root:
            raise ConfigError("decontaminate.data_root: the folder holding the benchmarks is required")
        bad = [m for m in spec.decontaminate.match if m not in MATCHES]
        if bad or not spec.decontaminate.match:
            raise ConfigError(f"decontaminate.match: each must be one of {', '.join(MATCHES)}, got {bad or '[]'}")


def normalized_question(text: str) -> str:
    """Case-folded words and numbers of a question, joined by single spaces (punctuation and spacing ignored)."""
    return " ".join(re.findall(r"\w+", text.casefold()))


def largest_remainder(total: int, weights: list[float]) -> list[int]:
    """Integers proportional to `weights` that add up to `total` exactly (Hamilton's method; ties to the first)."""
    shares = [total * w / sum(weights) for w in weights]
    counts = [int(s) for s in shares]
    order = sorted(range(len(weights)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass
class Candidate:
    record: Record
    subset: int
    position: int  # order of first appearance over the whole spec (dedup keeps the lowest)


@dataclass
class MixResult:
    """What `build_mix` wrote, and the counts of its composition table."""

    out: Path
    selected: dict[str, Counter]  # subset -> problem type -> records
    available: dict[str, int]  # subset -> records its files and filters gave
    duplicates: dict[str, int]
    contaminated: dict[str, int]
    removed: list[dict]
    benchmarks: list[str]
    missing_eval_media: list[str] = field(default_factory=list)  # compared by question only

    def render(self) -> str:
        types = [t for t in PROBLEM_TYPES if any(c[t] for c in self.selected.values())]
        total = sum(sum(c.values()) for c in self.selected.values())
        name_w = max(6, *(len(n) for n in self.selected))
        head = (f"{'subset':<{name_w}}  {'available':>9}  {'dupes':>6}  {'contam':>6}  "
                + "  ".join(f"{t:>15}" for t in types) + f"  {'mixed':>8}  {'share':>6}")
        lines = [f"mix {self.out}: {total} records", head]
        for name, counts in self.selected.items():
            n = sum(counts.values())
            lines.append(f"{name:<{name_w}}  {self.available[name]:>9}  {self.duplicates[name]:>6}  "
                         f"{self.contaminated[name]:>6}  " + "  ".join(f"{counts[t]:>15}" for t in types)
                         + f"  {n:>8}  {100 * n / max(total, 1):>5.1f}%")
        by_type = sum(self.selected.values(), Counter())
        lines.append(f"{'total':<{name_w}}  {sum(self.available.values()):>9}  {sum(self.duplicates.values()):>6}  "
                     f"{sum(self.contaminated.values()):>6}  " + "  ".join(f"{by_type[t]:>15}" for t in types)
                     + f"  {total:>8}  {100.0 if total else 0.0:>5.1f}%")
        if self.benchmarks:
            lines.append(f"decontaminated against: {', '.join(self.benchmarks)}")
        if self.missing_eval_media:
            lines.append(f"{len(self.missing_eval_media)} evaluation media do not exist and were compared by question "
                         f"only, first: {self.missing_eval_media[0]}")
        return "\n".join(lines)


def sidecar(out: Path, suffix: str) -> Path:
    """OUT's companion file: mix.json -> mix.removed.jsonl, mix.composition.txt, mix.composition.png."""
    return out.with_name(out.stem + suffix)


def build_mix(
    spec_path: str | Path,
    out: str | Path,
    *,
    cache: MediaCache | None = None,
    workers: int = 1,
    progress: bool = False,
) -> MixResult:
    """Compose the mix a spec describes and write OUT with its removed list, composition table and chart."""
    spec, base = load_mix_spec(spec_path)
    out = Path(out)
    candidates, available = _gather(spec, base)
    removed: list[dict] = []
    names = [s.name for s in spec.subsets]
    duplicates, contaminated = Counter(), Counter()
    needs_hash = spec.dedup or (spec.decontaminate is not None and "video" in spec.decontaminate.match)
    hashes = _hashes([c.record for c in candidates], cache, workers, progress) if needs_hash else {}
    if spec.dedup:
        candidates = _dedup(candidates, hashes, names, removed, duplicates)
    benchmarks: list[str] = []
    missing_eval_media: list[str] = []
    if spec.decontaminate is not None:
        candidates, benchmarks, missing_eval_media = _decontaminate(
            candidates, hashes, spec.decontaminate, base, names, removed, contaminated, cache, workers, progress)
    selected = _select(spec, candidates)
    result = MixResult(out=out, selected={n: Counter() for n in names}, available=available,
                       duplicates={n: duplicates[n] for n in names}, contaminated={n: contaminated[n] for n in names},
                       removed=removed, benchmarks=benchmarks, missing_eval_media=missing_eval_media)
    for candidate in selected:
        result.selected[names[candidate.subset]][candidate.record.problem_type] += 1
    media_root = _resolve(base, spec.media_root) if spec.media_root is not None else out.parent
    objects = [record_object(c.record, media_root) for c in selected]
    atomic_write(sidecar(out, ".removed.jsonl"), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in removed))
    atomic_write(sidecar(out, ".composition.txt"), result.render() + "\n")
    atomic_write(sidecar(out, ".composition.png"), composition_chart(result))
    atomic_write(out, records_text(objects, out))
    return result


def _resolve(base: Path, path: str) -> Path:
    return Path(path) if Path(path).is_absolute() else base / path


def _takes(subset: SubsetSpec, record: Record) -> bool:
    return ((subset.data_type is None or record.media_kind == subset.data_type)
            and (not subset.problem_type or record.problem_type in subset.problem_type)
            and (not subset.data_source or any(fnmatch.fnmatchcase(record.source, g) for g in subset.data_source)))


def _gather(spec: MixSpec, base: Path) -> tuple[list[Candidate], dict[str, int]]:
    """Every record each subset's files and filters take; a record two subsets could take goes to the first."""
    loaded: dict[tuple[Path, Path | None], list[Record]] = {}
    claimed: set[str] = set()
    candidates: list[Candidate] = []
    available: dict[str, int] = {}
    for index, subset in enumerate(spec.subsets):
        root = _resolve(base, subset.root) if subset.root is not None else None
        available[subset.name] = 0
        for name in subset.files:
            file = _resolve(base, name)
            if not file.is_file():
                raise DataError(file, "-", "<file>", f"not found: subset {subset.name!r} of the mix spec lists it")
            key = (file.absolute(), root)
            if key not in loaded:
                loaded[key] = load_records(file, root=root)
            for record in loaded[key]:
                if record.origin in claimed or not _takes(subset, record):
                    continue
                claimed.add(record.origin)
                candidates.append(Candidate(record, index, len(candidates)))
                available[subset.name] += 1
    return candidates, available


def _hashes(records: list[Record], cache: MediaCache | None, workers: int, progress: bool, *,
            required: bool = True) -> dict[Path, str]:
    """Content hash of every media path of `records` that exists; with `required`, a missing file is a DataError
    naming its record."""
    media = {m: m for r in records for m in r.media}
    found = compute_media(content_hash, media, name="sha256", cache=cache, workers=workers, desc="hashing media",
                          progress=progress).values
    for record in records if required else []:
        for m in record.media:
            if m not in found:
                file, _, where = record.origin.rpartition(":")
                raise DataError(file, where, record.media_field, f"media not found: {m}")
    return found


def _dedup(candidates: list[Candidate], hashes: dict[Path, str], names: list[str], removed: list[dict],
           duplicates: Counter) -> list[Candidate]:
    first: dict[tuple, Candidate] = {}
    kept = []
    for candidate in candidates:
        record = candidate.record
        key = (tuple(hashes[m] for m in record.media), normalized_question(record.question))
        if key in first:
            duplicates[names[candidate.subset]] += 1
            detail = f"same media and question as {first[key].record.origin}"
            removed.append(_removal(candidate, names, "duplicate", detail))
            continue
        first[key] = candidate
        kept.append(candidate)
    return kept


def _removal(candidate: Candidate, names: list[str], reason: str, detail: str) -> dict:
    file, _, where = candidate.record.origin.rpartition(":")
    return {"file": file, "where": where, "id": candidate.record.id, "subset": names[candidate.subset],
            "reason": reason, "detail": detail}


def present_benchmarks(data_root: Path) -> list[str]:
    """The known benchmarks found under `data_root`, in their released layout or as Video-R1-eval files."""
    from framethink.eval.benchmarks import BENCHMARKS

    return [name for name in BENCHMARKS if (data_root / name).is_dir() or (data_root / f"eval_{name}.json").is_file()]


def _decontaminate(candidates: list[Candidate], hashes: dict[Path, str], spec: DecontaminateSpec, base: Path,
                   names: list[str], removed: list[dict], contaminated: Counter, cache: MediaCache | None,
                   workers: int, progress: bool) -> tuple[list[Candidate], list[str], list[str]]:
    from framethink.eval.benchmarks import load_benchmark

    data_root = _resolve(base, spec.data_root)
    if not data_root.is_dir():
        raise DataError(data_root, "-", "<file>", "not found: decontaminate.data_root of the mix spec")
    benchmarks = spec.benchmarks or present_benchmarks(data_root)
    if not benchmarks:
        raise DataError(data_root, "-", "<file>", "holds no known benchmark (<name>/ or eval_<name>.json) to "
                        "decontaminate against")
    by_hash: dict[str, str] = {}
    by_question: dict[str, str] = {}
    unreadable: list[str] = []  # evaluation media that do not exist: compared by question only
    for name in benchmarks:
        bench = load_benchmark(name, data_root)
        eval_hashes = _hashes(bench.records, cache, workers, progress, required=False) \
            if "video" in spec.match else {}
        for record in bench.records:
            label = f"{bench.name} item {record.id}"
            for m in record.media if "video" in spec.match else []:
                if m in eval_hashes:
                    by_hash.setdefault(eval_hashes[m], f"{label} ({m})")
                else:
                    unreadable.append(f"{label}: {m}")
            by_question.setdefault(normalized_question(record.question), label)
    kept = []
    for candidate in candidates:
        record = candidate.record
        video = next((by_hash[hashes[m]] for m in record.media if hashes.get(m) in by_hash), None) \
            if "video" in spec.match else None
        question = by_question.get(normalized_question(record.question)) if "question" in spec.match else None
        if video is None and question is None:
            kept.append(candidate)
            continue
        contaminated[names[candidate.subset]] += 1
        reason, detail = ("same video", f"media {record.media[0]} has the content of {video}") if video else \
            ("same question", f"question {record.question[:80]!r} is that of {question}")
        removed.append(_removal(candidate, names, reason, detail))
    return kept, list(benchmarks), unreadable


def _select(spec: MixSpec, candidates: list[Candidate]) -> list[Candidate]:
    """Each subset's quota, drawn by a seeded permutation per (subset, problem type); kept in input order."""
    ratios = [s.ratio for s in spec.subsets if s.ratio is not None]
    shared = (spec.total or 0) - sum(s.count for s in spec.subsets if s.count is not None)
    from_ratio = iter(largest_remainder(shared, ratios)) if ratios else iter(())
    chosen: list[Candidate] = []
    for index, subset in enumerate(spec.subsets):
        pool = [c for c in candidates if c.subset == index]
        wanted = subset.count if subset.count is not None else next(from_ratio) if subset.ratio is not None \
            else len(pool)
        if subset.problem_types:
            types = list(subset.problem_types)
            parts = zip(types, largest_remainder(wanted, [subset.problem_types[t] for t in types]))
        else:
            parts = [(None, wanted)]
        for type_index, (ptype, count) in enumerate(parts):
            group = [c for c in pool if ptype is None or c.record.problem_type == ptype]
            if count > len(group):
                what = f"{count} {ptype} records" if ptype else f"{count} records"
                raise ConfigError(f"subset {subset.name!r} asks for {what}, but only {len(group)} are left after "
                                  "its filters, dedup and decontamination (see the .removed.jsonl list); lower "
                                  "its count or ratio or add files")
            order = np.random.default_rng([spec.seed, index, type_index]).permutation(len(group))
            chosen += [group[i] for i in sorted(order[:count].tolist())]
    return sorted(chosen, key=lambda c: (c.subset, c.position))


def composition_chart(result: MixResult) -> bytes:
    """A horizontal bar per subset, stacked by problem type, as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(result.selected)
    types = [t for t in PROBLEM_TYPES if any(c[t] for c in result.selected.values())]
    figure = Figure(figsize=(8, 0.5 * len(names) + 1.5))
    axes = figure.add_subplot()
    left = np.zeros(len(names))
    for ptype in types:
        values = np.array([result.selected[n][ptype] for n in names], dtype=float)
        axes.barh(names, values, left=left, label=ptype)
        left += values
    for y, total in enumerate(left):
        axes.text(total, y, f" {int(total)}", va="center", fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("records")
    axes.set_title(f"{result.out.name}: {int(left.sum())} records")
    if types:
        axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()
