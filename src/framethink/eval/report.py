"""Evaluation reports (SPEC 7): per benchmark, per task and per Video-MME duration, the published
numbers side by side (SPEC 7.1), and the temporal sensitivity of the model.

One report covers an output folder OUT of `eval run`: one run per frame order in OUT/<order>/, runs
that differ in nothing but the frame order. Temporal sensitivity is the ordered-minus-shuffled (and
-reversed) score, per benchmark and per task, over the items evaluated in every order: a gap near 0
says the model answers the same without the order of its frames, i.e. does not use time.
Scores are percentages. The report is a dict (`report.json`); `render_markdown` prints it (`report.md`).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from framethink import __version__
from framethink.errors import ConfigError, DataError
from framethink.eval.benchmarks import BENCHMARKS
from framethink.eval.predictions import PREDICTIONS_FILE, Predictions, read_predictions
from framethink.eval.published import match_published, published_by_key
from framethink.eval.scoring import BenchmarkScore, score_predictions
from framethink.data.clips import FRAME_ORDERS

REPORT_JSON, REPORT_MD = "report.json", "report.md"


def find_predictions(path: str | Path) -> list[Path]:
    """A predictions file itself, or every `<frame order>/predictions.jsonl` of an `eval run` folder."""
    path = Path(path)
    if path.is_file():
        return [path]
    files = sorted(path.glob(f"*/{PREDICTIONS_FILE}"))
    if not files:
        raise DataError(path / "<frame order>" / PREDICTIONS_FILE, "-", "<file>",
                        "not found: expected the predictions of `eval run --out` here")
    return files


def check_same_run(runs: list[Predictions], settings: dict) -> None:
    """Runs reported together must differ only in frame order (else their gap measures something else)."""
    for run in runs:
        diffs = [k for k, v in settings.items()
                 if k != "frame_order" and run.settings.get(k) != json.loads(json.dumps(v))]
        if diffs:
            raise ConfigError(f"{run.path} differs from the other runs of its folder in {', '.join(diffs)}; "
                              "the runs of one --out folder may differ only in frame order")


def _sorted_benches(names) -> list[str]:
    """The known benchmarks in their usual order, then record files by name."""
    return sorted(names, key=lambda n: (BENCHMARKS.index(n) if n in BENCHMARKS else len(BENCHMARKS), n))


def _bench_dict(score: BenchmarkScore) -> dict:
    return {"metric": score.metric, **asdict(score.overall),
            "tasks": {t: asdict(g) for t, g in score.tasks.items()},
            "durations": {d: asdict(g) for d, g in score.durations.items()}}


def _published(settings: dict, scores: dict[str, BenchmarkScore], compare: str | None) -> list[dict]:
    entries = ([published_by_key(compare)] if compare else
               match_published(settings["model"], mode=settings["mode"], frames=settings["frames"]))
    return [{"key": p.key, "label": p.label, "source": p.source, "note": p.note,
             "rows": {b: {"framethink": scores[b].overall.score, "published": p.scores[b],
                          "delta": scores[b].overall.score - p.scores[b]}
                      for b in _sorted_benches(scores) if b in p.scores}}
            for p in entries]


def _temporal(runs: dict[str, Predictions]) -> dict | None:
    """Per benchmark and task, the score in each order and ordered minus each other order, on the
    items present in every order."""
    if "ordered" not in runs or len(runs) < 2:
        return None
    common = set.intersection(*({(p["benchmark"], p["id"]) for p in run.lines} for run in runs.values()))
    scores = {order: score_predictions(p for p in run.lines if (p["benchmark"], p["id"]) in common)
              for order, run in runs.items()}
    others = [o for o in runs if o != "ordered"]

    def row(groups: dict) -> dict:
        return {"items": groups["ordered"].items, **{o: groups[o].score for o in runs},
                **{f"gap_{o}": groups["ordered"].score - groups[o].score for o in others}}

    benches = {}
    for name in _sorted_benches(scores["ordered"]):
        by_order = {o: scores[o][name] for o in runs}
        benches[name] = {"overall": row({o: s.overall for o, s in by_order.items()}),
                         "tasks": {t: row({o: s.tasks[t] for o, s in by_order.items()})
                                   for t in by_order["ordered"].tasks}}
    return {"orders": list(runs), "benchmarks": benches}


def build_report(files: list[Path], *, compare: str | None = None) -> dict:
    """The report of one or more predictions files, one per frame order, re-scored from their outputs."""
    runs: dict[str, Predictions] = {}
    for file in files:
        run = read_predictions(file)
        order = run.settings.get("frame_order")
        if order not in FRAME_ORDERS:
            raise DataError(file, "1", "frame_order", f"expected one of {', '.join(FRAME_ORDERS)}, got {order!r}")
        if order in runs:
            raise ConfigError(f"{file} and {runs[order].path} are both {order} runs; report them separately")
        runs[order] = run
    runs = {o: runs[o] for o in FRAME_ORDERS if o in runs}
    first = next(iter(runs.values()))
    check_same_run(list(runs.values()), first.settings)
    scores = {order: score_predictions(run.lines) for order, run in runs.items()}
    return {
        "framethink_version": __version__,
        "runs": {order: {"settings": run.settings,
                         "benchmarks": {b: _bench_dict(scores[order][b]) for b in _sorted_benches(scores[order])}}
                 for order, run in runs.items()},
        "published": _published(first.settings, scores["ordered"], compare) if "ordered" in runs else [],
        "temporal": _temporal(runs),
    }


def write_report(report: dict, out: str | Path) -> None:
    """`out/report.json` and `out/report.md`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (out / REPORT_MD).write_text(render_markdown(report))


# ---------------------------------------------------------------------------------------------
# Markdown


def _pct(value: float) -> str:
    return f"{value:.1f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _settings_line(s: dict) -> str:
    d = s["decoding"]
    decoding = (f"temperature {d['temperature']}, top_p {d['top_p']}, max_new_tokens {d['max_new_tokens']}"
                if d["do_sample"] else f"greedy, max_new_tokens {d['max_new_tokens']}")
    return (f"model `{s['model']}` · frames {s['frames'] or 'model default'} · max pixels "
            f"{s['max_pixels'] or 'model default'} · mode {s['mode']} (template `{s['template']}`) · "
            f"decoding {decoding} · seed {s['seed']} · framethink {s['framethink_version']}")


_GROUP_COLUMNS = ["score", "items", "unparsable"]


def _group_rows(groups: dict) -> list[list[str]]:
    return [[name, _pct(g["score"]), str(g["items"]), str(g["unparsable"])] for name, g in groups.items()]


def render_markdown(report: dict) -> str:
    """The report as Markdown: the same tables `eval run` writes and `eval score` prints."""
    lines = ["# framethink evaluation", ""]
    for order, run in report["runs"].items():
        lines += [f"## {order.capitalize()} frames", "", _settings_line(run["settings"]), ""]
        benches = run["benchmarks"]
        lines += _table(["benchmark", "metric", "score", "items", "unparsable"],
                        [[b, r["metric"], _pct(r["score"]), str(r["items"]), str(r["unparsable"])]
                         for b, r in benches.items()])
        for b, r in benches.items():
            lines += [f"### {b} ({order}) by task", "", *_table(["task", *_GROUP_COLUMNS], _group_rows(r["tasks"]))]
            if r["durations"]:
                lines += [f"### {b} ({order}) by duration", "",
                          *_table(["duration", *_GROUP_COLUMNS], _group_rows(r["durations"]))]
    if report["published"]:
        lines += ["## Published results (ordered frames)", ""]
        for p in report["published"]:
            lines += [f"### {p['label']} ({p['source']})", ""]
            if p["note"]:
                lines += [f"Note: {p['note']}.", ""]
            lines += _table(["benchmark", "framethink", "published", "Δ"],
                            [[b, _pct(r["framethink"]), _pct(r["published"]), f"{r['delta']:+.1f}"]
                             for b, r in p["rows"].items()])
    temporal = report["temporal"]
    if temporal:
        others = [o for o in temporal["orders"] if o != "ordered"]
        lines += ["## Temporal sensitivity", "",
                  "Score with ordered frames minus the score with " + " / ".join(others) + " frames, on the items "
                  "evaluated in every order. A gap near 0 means the answers do not depend on the order of the frames.", ""]
        header = ["benchmark", "task", "items", *temporal["orders"], *(f"Δ {o}" for o in others)]
        rows = []
        for b, t in temporal["benchmarks"].items():
            for task, row in [("(all)", t["overall"]), *t["tasks"].items()]:
                rows.append([b, task, str(row["items"]), *(_pct(row[o]) for o in temporal["orders"]),
                             *(f"{row['gap_' + o]:+.1f}" for o in others)])
        lines += _table(header, rows)
    return "\n".join(lines)
