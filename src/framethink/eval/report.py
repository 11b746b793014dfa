"""Evaluation reports (docs/evaluation.md#reports): per benchmark and scoring protocol, per task and per
Video-MME duration, the failed items, the published numbers beside the run's under the protocol they were
measured with, and the temporal sensitivity of the model.

One report covers an output folder OUT of `eval run` (one run per frame order in OUT/<order>/, runs that differ
in nothing but the frame order) or predictions files given to `eval score`. Temporal sensitivity is the
ordered-minus-shuffled (and -reversed) score under the first protocol, per benchmark and per task, over the
items evaluated in every order: a gap near 0 says the model answers the same without the order of its frames.
Scores are percentages. The report is a dict (`report.json`); `render_markdown` prints it (`report.md`);
`write_item_scores` writes one line per item and protocol (`item_scores.jsonl`).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from framethink import __version__
from framethink.data.clips import FRAME_ORDERS
from framethink.errors import ConfigError, DataError
from framethink.eval.benchmarks import BENCHMARKS
from framethink.eval.predictions import PREDICTIONS_FILE, Predictions, read_predictions
from framethink.eval.protocols import PROTOCOLS
from framethink.eval.published import match_published, published_by_key
from framethink.eval.scoring import BenchmarkScore, score_predictions

REPORT_JSON, REPORT_MD, ITEM_SCORES = "report.json", "report.md", "item_scores.jsonl"


def find_predictions(*paths: str | Path) -> list[Path]:
    """Predictions files themselves, or every `<frame order>/predictions.jsonl` of `eval run` folders."""
    files = []
    for path in map(Path, paths):
        if path.is_file():
            files.append(path)
            continue
        found = sorted(path.glob(f"*/{PREDICTIONS_FILE}"))
        if not found:
            raise DataError(path / "<frame order>" / PREDICTIONS_FILE, "-", "<file>",
                            "not found: expected the predictions of `eval run --out` here")
        files += found
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


def _read_runs(files: list[Path]) -> dict[str, Predictions]:
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
    check_same_run(list(runs.values()), next(iter(runs.values())).settings)
    return runs


def _bench_dict(by_protocol: dict[str, BenchmarkScore]) -> dict:
    """One benchmark: its cell per protocol, and its task and duration groups per protocol."""
    return {"protocols": {p: {"metric": s.metric, **asdict(s.overall)} for p, s in by_protocol.items()},
            "tasks": {p: {t: asdict(g) for t, g in s.tasks.items()} for p, s in by_protocol.items()},
            "durations": {p: {d: asdict(g) for d, g in s.durations.items()} for p, s in by_protocol.items()}}


def _run_dict(run: Predictions, protocols: tuple[str, ...]) -> dict:
    scores = {p: score_predictions(run.lines, p) for p in protocols}
    names = _sorted_benches({name for by_bench in scores.values() for name in by_bench})
    return {"settings": run.settings,
            "benchmarks": {b: _bench_dict({p: scores[p][b] for p in protocols if b in scores[p]}) for b in names},
            "failures": [{"benchmark": f["benchmark"], "id": f["id"], "reason": f.get("reason")}
                         for f in run.failures]}


def _published(run: Predictions, compare: str | None) -> list[dict]:
    """Each matching published entry beside the run's score under the protocol the entry was measured with."""
    settings = run.settings
    entries = ([published_by_key(compare)] if compare else
               match_published(settings["model"], mode=settings["mode"], frames=settings["frames"]))
    result = []
    for entry in entries:
        scores = score_predictions(run.lines, entry.protocol)
        rows = {b: {"run": scores[b].overall.score, "published": entry.scores[b],
                    "delta": scores[b].overall.score - entry.scores[b]}
                for b in _sorted_benches(scores) if b in entry.scores}
        result.append({"key": entry.key, "label": entry.label, "source": entry.source, "note": entry.note,
                       "protocol": entry.protocol, "rows": rows})
    return result


def _temporal(runs: dict[str, Predictions], protocol: str) -> dict | None:
    """Per benchmark and task, the score in each order and ordered minus each other order, on the items present
    in every order."""
    if "ordered" not in runs or len(runs) < 2:
        return None
    common = set.intersection(*({(p["benchmark"], p["id"]) for p in run.lines} for run in runs.values()))
    scores = {order: score_predictions((p for p in run.lines if (p["benchmark"], p["id"]) in common), protocol)
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
    return {"protocol": protocol, "orders": list(runs), "benchmarks": benches}


def build_report(files: list[Path], *, protocols: tuple[str, ...] = ("framethink",),
                 compare: str | None = None) -> dict:
    """The report of one or more predictions files, one per frame order, re-scored from their outputs under
    every protocol in `protocols` (the first one also gives the task tables and the temporal gaps)."""
    runs = _read_runs(files)
    return {
        "framethink_version": __version__,
        "protocols": {p: PROTOCOLS[p].source for p in protocols},
        "runs": {order: _run_dict(run, protocols) for order, run in runs.items()},
        "published": _published(runs["ordered"], compare) if "ordered" in runs else [],
        "temporal": _temporal(runs, protocols[0]),
    }


def item_scores(files: list[Path], protocols: tuple[str, ...]) -> list[dict]:
    """One line per item, frame order and protocol: {benchmark, id, frame_order, protocol, answer, score,
    status}; a protocol with no rule for an item (e.g. `official` on a record file) gives no line."""
    lines = []
    for order, run in _read_runs(files).items():
        for pred in run.lines:
            for name in protocols:
                item = PROTOCOLS[name].score(pred)
                if item is not None:
                    lines.append({"benchmark": pred["benchmark"], "id": pred["id"], "frame_order": order,
                                  "protocol": name, "answer": item.answer, "score": item.score,
                                  "status": item.status})
    return lines


def write_report(report: dict, out: str | Path, files: list[Path]) -> None:
    """`out/report.json`, `out/report.md` and `out/item_scores.jsonl` (the items of `files`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT_JSON).write_text(json.dumps(report, indent=2) + "\n")
    (out / REPORT_MD).write_text(render_markdown(report))
    lines = item_scores(files, tuple(report["protocols"]))
    (out / ITEM_SCORES).write_text("".join(json.dumps(line) + "\n" for line in lines))


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
    pixels = f"{s.get('min_pixels') or 'model default'} to {s['max_pixels'] or 'model default'}"
    preset = f"preset {s['preset']} · " if s.get("preset") else ""
    return (f"{preset}model `{s['model']}` · frames {s['frames'] or 'model default'} · pixels per frame {pixels} · "
            f"mode {s['mode']} (template `{s['template']}`) · decoding {decoding} · seed {s['seed']} · "
            f"framethink {s['framethink_version']}")


def _cell(c: dict) -> str:
    """score · items · unparsable · judge, and guessed / errors when there are any."""
    parts = [_pct(c["score"]), f"{c['items']} items", f"{c['unparsable']} unparsable", f"{c['needs_judge']} judge"]
    parts += [f"{c[k]} {k}" for k in ("guessed", "errors") if c[k]]
    return " · ".join(parts)


_GROUP_COLUMNS = ["score", "items", "unparsable", "needs judge"]


def _group_rows(groups: dict) -> list[list[str]]:
    return [[name, _pct(g["score"]), str(g["items"]), str(g["unparsable"]), str(g["needs_judge"])]
            for name, g in groups.items()]


def _run_markdown(order: str, run: dict, protocols: list[str]) -> list[str]:
    lines = [f"## {order.capitalize()} frames", "", _settings_line(run["settings"]), ""]
    benches = run["benchmarks"]
    lines += _table(["benchmark", *protocols],
                    [[b, *(_cell(r["protocols"][p]) if p in r["protocols"] else "n/a" for p in protocols)]
                     for b, r in benches.items()])
    first = protocols[0]
    for b, r in benches.items():
        if first not in r["tasks"]:
            continue
        lines += [f"### {b} ({order}, {first}) by task", "",
                  *_table(["task", *_GROUP_COLUMNS], _group_rows(r["tasks"][first]))]
        if r["durations"][first]:
            lines += [f"### {b} ({order}, {first}) by duration", "",
                      *_table(["duration", *_GROUP_COLUMNS], _group_rows(r["durations"][first]))]
    if run["failures"]:
        lines += [f"### Failed items ({order}): {len(run['failures'])}, scored as wrong", "",
                  *_table(["benchmark", "id", "reason"],
                          [[f["benchmark"], f["id"], str(f["reason"]).replace("|", "/")] for f in run["failures"]])]
    return lines


def render_markdown(report: dict) -> str:
    """The report as Markdown: the same tables `eval run` writes and `eval score` prints."""
    protocols = list(report["protocols"])
    lines = ["# framethink evaluation", "", "Scoring protocols: " + "; ".join(
        f"`{p}` ({source})" for p, source in report["protocols"].items()), ""]
    for order, run in report["runs"].items():
        lines += _run_markdown(order, run, protocols)
    if report["published"]:
        lines += ["## Published results (ordered frames)", ""]
        for p in report["published"]:
            lines += [f"### {p['label']} ({p['source']}), measured under `{p['protocol']}`", ""]
            if p["note"]:
                lines += [f"Note: {p['note']}.", ""]
            lines += _table(["benchmark", f"this run ({p['protocol']})", "published", "Δ"],
                            [[b, _pct(r["run"]), _pct(r["published"]), f"{r['delta']:+.1f}"]
                             for b, r in p["rows"].items()])
    temporal = report["temporal"]
    if temporal:
        others = [o for o in temporal["orders"] if o != "ordered"]
        lines += ["## Temporal sensitivity", "",
                  f"Score ({temporal['protocol']}) with ordered frames minus the score with " + " / ".join(others) +
                  " frames, on the items evaluated in every order. A gap near 0 means the answers do not depend on "
                  "the order of the frames.", ""]
        header = ["benchmark", "task", "items", *temporal["orders"], *(f"Δ {o}" for o in others)]
        rows = []
        for b, t in temporal["benchmarks"].items():
            for task, row in [("(all)", t["overall"]), *t["tasks"].items()]:
                rows.append([b, task, str(row["items"]), *(_pct(row[o]) for o in temporal["orders"]),
                             *(f"{row['gap_' + o]:+.1f}" for o in others)])
        lines += _table(header, rows)
    return "\n".join(lines)
