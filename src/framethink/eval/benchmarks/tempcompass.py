"""TempCompass (lmms-lab/TempCompass, llyx97/TempCompass): the multiple-choice task, accuracy.

Layout (the release's `questions/multi-choice.json`; lmms-eval `lmms_eval/tasks/tempcompass/`):
`{video_id: {dim: [{"question": "...\\nA. ...\\nB. ...", "answer": "B. ..."}]}}` with dims action, speed,
direction, order, attribute_change; videos at `videos/<video_id>.mp4`. Task = dim; ids are
"<video_id>/<dim>/<index>". The released file's option lines are not uniform: some start with a space
(" D. away from the screen", item 1100319395_reverse.direction), some end with one ("C. slow "), and some lack
the space after the letter ("C.Both events happen at the same time", 1022115337.order); options are read with
the whitespace around them removed and the letters must run A, B, C, ... in order.
"""
from __future__ import annotations

import re
from pathlib import Path

from framethink.data.records import Record
from framethink.eval.benchmarks.base import LETTERS, BenchmarkSpec, Item, ItemScore, gold_text, read_json, scored

DIMENSIONS = ("action", "speed", "direction", "order", "attribute_change")
_OPTION_LINE_RE = re.compile(r"\s*([A-Z])\.\s*(.*?)\s*")


def split_options(item: Item) -> tuple[str, list[str]]:
    """'question\\nA. x\\n B.y ' -> ('question', ['A. x', 'B. y']): the lines from the first option line on are
    options, whitespace around each removed."""
    text = item.get("question")
    lines = text.split("\n")
    first = next((i for i, line in enumerate(lines) if i > 0 and _OPTION_LINE_RE.fullmatch(line)), None)
    matches = [_OPTION_LINE_RE.fullmatch(line) for line in lines[first:] if line.strip()] if first else []
    if not matches or not all(matches) or [m.group(1) for m in matches] != list(LETTERS[: len(matches)]):
        raise item.error("question", f"expected a question then option lines 'A. ...', 'B. ...' in order, "
                                     f"got {text[:120]!r}")
    return "\n".join(lines[:first]), [f"{m.group(1)}. {m.group(2)}" for m in matches]


def load(root: Path) -> list[Record]:
    file = root / "questions" / "multi-choice.json"
    data = Item(read_json(file, "the TempCompass multi-choice file (layout: questions/multi-choice.json, "
                                "videos/<video_id>.mp4)"), file, "-")
    records = []
    for video_id in data.obj:
        dims = Item(data.get(video_id, dict), file, video_id)
        video = root / "videos" / f"{video_id}.mp4"
        for dim in dims.obj:
            if dim not in DIMENSIONS:
                raise dims.error(dim, f"unknown dimension; the multi-choice task has {', '.join(DIMENSIONS)}")
            for index, obj in enumerate(dims.get(dim, list)):
                item = Item(obj, file, f"{video_id}.{dim}[{index}]")
                question, options = split_options(item)
                records.append(item.record(f"{video_id}/{dim}/{index}", question, options,
                                           item.letter("answer", options), dim, video,
                                           {"question_type": dim, "answer_text": item.get("answer")}))
    return records


def matching_rules(pred: str, answer: str) -> int | None:
    """The hand-crafted matching rules of llyx97/TempCompass `eval_multi-choice.py` `main` (also lmms-eval's
    `tempcompass_process_results_multi_choice`): the whole gold answer, a bare letter A-D, or an "X." or "X)"
    prefix; None where the release asks its LLM judge."""
    if pred == answer:
        return 1
    if pred in ["A", "B", "C", "D"]:
        return int(pred == answer[0])
    if any(pred.startswith(prefix) for prefix in ["A.", "B.", "C.", "D."]):
        return int(pred.split(".")[0] == answer[0])
    if any(pred.startswith(prefix) for prefix in ["A)", "B)", "C)", "D)"]):
        return int(pred.split(")")[0] == answer[0])
    return None


def _rate(pred: str, answer: str) -> ItemScore:
    rating = matching_rules(pred, answer)
    if rating is None:  # never guessed: counted apart, out of the score's denominator
        return ItemScore(answer=pred, score=0.0, status="needs_judge", counted=False)
    return scored(pred[:1], rating)


def official(line: dict, text: str) -> ItemScore:
    """`eval_multi-choice.py`: the prediction with "</s>" removed and stripped, against the answer as written."""
    return _rate(text.replace("</s>", "").strip(), gold_text(line))


def lmms_eval(line: dict, text: str) -> ItemScore:
    """lmms-eval v0.7.2 `tempcompass_process_results_multi_choice`: the same rules on the (reasoning-stripped)
    output; its GPT fallback is the judge."""
    return _rate(text, gold_text(line))


BENCHMARK = BenchmarkSpec(
    name="tempcompass", help="TempCompass multi-choice (questions/multi-choice.json + videos/), accuracy",
    load=load, metric="accuracy", official=official, lmms_eval=lmms_eval,
    published={"qwen2.5-vl-7b-cot-16f": 72.2, "qwen2.5-vl-7b-cot-32f": 72.6, "qwen2.5-vl-7b-sft-16f": 69.2,
               "qwen2.5-vl-7b-sft-32f": 69.9, "video-r1-7b-16f": 72.6, "video-r1-7b-32f": 73.2,
               "video-r1-7b-wo-temporal-16f": 71.3},
)
