"""`framethink data stats FILE --root DIR`: what a dataset holds, to choose frame and pixel budgets from.

Per record: the video's duration, frame count and frame rate, the frame (or image) resolution, and the lengths
in words of the question, the gold answer and the reasoning (`process`, when the file has one). Summaries
(median, 90th percentile, maximum) by data source and problem type go to a table (`stats.txt`, `stats.json`)
and histograms by problem type to `histograms.png`. Media are probed from their headers (no decoding), in
parallel and through the media cache, so a 260k-record set is read once. See docs/data.md ("Statistics").
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from framethink.data.mediacache import MediaCache, compute_media
from framethink.data.records import PROBLEM_TYPES, load_records
from framethink.data.video import FRAME_IMAGE_SUFFIXES
from framethink.data.writing import atomic_write

METRICS = {  # name -> (label, unit)
    "duration": ("video duration", "s"),
    "frames": ("video frames", ""),
    "fps": ("video frame rate", "fps"),
    "pixels": ("pixels per frame or image", "px"),
    "question_words": ("question length", "words"),
    "answer_words": ("answer length", "words"),
    "process_words": ("reasoning length", "words"),
}
FOLDER_FPS = 3.0  # frame folders without an `fps` field (MVBench's episodic_reasoning clips are 3 fps)


def probe(key: tuple[Path, str]) -> dict:
    """Header facts of one media file: {"frames", "fps", "width", "height"} for a video or frame folder,
    {"width", "height"} for an image, or {"error": reason}."""
    path, kind = key
    try:
        if kind == "image":
            with Image.open(path) as image:
                return {"width": image.width, "height": image.height}
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_IMAGE_SUFFIXES)
            if not files:
                return {"error": "frame folder holds no images"}
            with Image.open(files[0]) as image:
                return {"frames": len(files), "fps": None, "width": image.width, "height": image.height}
        with av.open(str(path)) as container:
            if not container.streams.video:
                return {"error": "no video stream"}
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            return {"frames": frames, "fps": float(rate) if rate else None,
                    "width": stream.codec_context.width, "height": stream.codec_context.height}
    except (OSError, av.FFmpegError) as err:
        return {"error": str(err)}


@dataclass
class DatasetStats:
    """Per-record values of every metric (NaN where it does not apply) with each record's source and type."""

    file: Path
    sources: list[str]
    problem_types: list[str]
    values: dict[str, np.ndarray]  # metric -> [N] float
    media_errors: list[str]

    def groups(self) -> list[tuple[str, str, np.ndarray]]:
        """(source, problem type, row mask): every (source, type) pair present, then each source that has several
        types, each type (when there are several) and all records ("*" for any)."""
        sources, types = np.array(self.sources), np.array(self.problem_types)
        pairs = sorted(set(zip(self.sources, self.problem_types)))
        groups = [(s, t, (sources == s) & (types == t)) for s, t in pairs]
        mixed_sources = sorted(s for s in set(self.sources) if sum(1 for p in pairs if p[0] == s) > 1)
        groups += [(s, "*", sources == s) for s in mixed_sources]  # a source asking several problem types
        if len({t for _, t in pairs}) > 1:
            groups += [("*", t, types == t) for t in PROBLEM_TYPES if t in set(self.problem_types)]
        groups.append(("*", "*", np.ones(len(self.sources), dtype=bool)))
        return groups

    def summary(self) -> list[dict]:
        """One entry per group: records, and per metric count / median / p90 / max of the records it applies to."""
        rows = []
        for source, ptype, mask in self.groups():
            row = {"source": source, "problem_type": ptype, "records": int(mask.sum())}
            for metric, values in self.values.items():
                present = values[mask & ~np.isnan(values)]
                row[metric] = None if not len(present) else {
                    "count": int(len(present)), "median": float(np.median(present)),
                    "p90": float(np.percentile(present, 90)), "max": float(present.max())}
            rows.append(row)
        return rows

    def render(self) -> str:
        """The summary as a table: each cell median / p90 / max."""
        shown = [m for m in METRICS if np.any(~np.isnan(self.values[m]))]
        rows = self.summary()
        source_w = max(6, *(len(r["source"]) for r in rows))
        type_w = max(12, *(len(r["problem_type"]) for r in rows))
        cells = [[_cell(r[m]) for m in shown] for r in rows]
        names = [METRICS[m][0] + (f" ({METRICS[m][1]})" if METRICS[m][1] else "") for m in shown]
        widths = [max(len(name), *(len(c[i]) for c in cells)) for i, name in enumerate(names)]
        lines = [f"dataset {self.file}: {len(self.sources)} records; each cell: median / 90th percentile / max",
                 f"{'source':<{source_w}}  {'problem type':<{type_w}}  {'records':>7}  "
                 + "  ".join(f"{n:>{w}}" for n, w in zip(names, widths))]
        for row, cell in zip(rows, cells):
            lines.append(f"{row['source']:<{source_w}}  {row['problem_type']:<{type_w}}  {row['records']:>7}  "
                         + "  ".join(f"{c:>{w}}" for c, w in zip(cell, widths)))
        if self.media_errors:
            lines.append(f"{len(self.media_errors)} media could not be probed (run `framethink data check`), first: "
                         f"{self.media_errors[0]}")
        return "\n".join(lines)

    def histograms(self) -> bytes:
        """A histogram per metric, stacked by problem type, as PNG bytes."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        shown = [m for m in METRICS if np.any(~np.isnan(self.values[m]))]
        columns = 3
        rows = max(1, -(-len(shown) // columns))
        figure = Figure(figsize=(4.2 * columns, 3.2 * rows))
        types = [t for t in PROBLEM_TYPES if t in set(self.problem_types)]
        kinds = np.array(self.problem_types)
        for index, metric in enumerate(shown):
            axes = figure.add_subplot(rows, columns, index + 1)
            values = self.values[metric]
            data = [values[(kinds == t) & ~np.isnan(values)] for t in types]
            present = np.concatenate(data)
            bins = np.histogram_bin_edges(present, bins=min(40, max(1, len(np.unique(present)))))
            axes.hist(data, bins=bins, stacked=True, label=types)
            label, unit = METRICS[metric]
            axes.set_xlabel(f"{label} ({unit})" if unit else label)
            axes.set_ylabel("records")
            if index == 0:
                axes.legend(fontsize=7)
        figure.suptitle(f"{self.file.name}: {len(self.sources)} records")
        figure.tight_layout()
        buffer = io.BytesIO()
        FigureCanvasAgg(figure).print_png(buffer)
        return buffer.getvalue()


def _cell(stat: dict | None) -> str:
    if stat is None:
        return "-"
    return " / ".join(f"{stat[k]:.3g}" for k in ("median", "p90", "max"))


def _words(text: str | None) -> float:
    return float("nan") if text is None else float(len(text.split()))


def dataset_stats(path: str | Path, *, root: str | Path | None = None, cache: MediaCache | None = None,
                  workers: int = 1, progress: bool = False) -> DatasetStats:
    """Probe every record's media (once per file) and measure every record of a dataset file."""
    records = load_records(path, root=root)
    media = {(m, r.media_kind): m for r in records for m in r.media}
    found = compute_media(probe, media, name="probe", args={k: k for k in media}, cache=cache, workers=workers,
                          desc="probing media", progress=progress).values
    values = {metric: np.full(len(records), np.nan) for metric in METRICS}
    errors: list[str] = []
    for row, record in enumerate(records):
        values["question_words"][row] = _words(record.question)
        values["answer_words"][row] = _words(record.answer)
        values["process_words"][row] = _words(record.cot)
        if not record.media:
            continue
        info = found.get((record.media[0], record.media_kind), {"error": "no such file"})
        if "error" in info:
            errors.append(f"{record.origin}: {record.media[0]}: {info['error']}")
            continue
        values["pixels"][row] = info["width"] * info["height"]
        if record.media_kind == "video":
            fps = info["fps"] or float(record.extra.get("fps", FOLDER_FPS))
            values["frames"][row], values["fps"][row] = info["frames"], fps
            values["duration"][row] = info["frames"] / fps
    return DatasetStats(file=Path(path), sources=[r.source or "(none)" for r in records],
                        problem_types=[r.problem_type for r in records], values=values, media_errors=errors)


def write_stats(stats: DatasetStats, out_dir: str | Path) -> list[Path]:
    """stats.txt (the table), stats.json (the summary and the media errors) and histograms.png in `out_dir`."""
    out_dir = Path(out_dir)
    return [
        atomic_write(out_dir / "stats.txt", stats.render() + "\n"),
        atomic_write(out_dir / "stats.json", json.dumps({"file": str(stats.file), "records": len(stats.sources),
                                                          "groups": stats.summary(),
                                                          "media_errors": stats.media_errors}, indent=1) + "\n"),
        atomic_write(out_dir / "histograms.png", stats.histograms()),
    ]
