"""VideoMMMU (lmms-lab/VideoMMMU): Perception, Comprehension and Adaptation tracks, accuracy.

Layout (the dataset card; lmms-eval `lmms_eval/tasks/videommmu/`): `<Track>/test-*.parquet` with columns id
("<split>_<Subject>_<n>"), question, options (list; empty for open questions), answer (a letter, or the open
answer), question_type; videos at `<Discipline>/<id>.mp4`, the discipline folder from the subject (`FOLDERS`).
Task = track; ids are "<Track>/<id>". Open questions with a numeric answer are "numerical", other open questions
"free-form". Open answers score all or nothing (MMMU's `eval_open`), never by partial text overlap.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from framethink.data.records import Record
from framethink.eval.benchmarks.base import (
    LETTERS,
    BenchmarkSpec,
    Item,
    ItemScore,
    lettered,
    option_texts,
    parquet_rows,
    scored,
)
from framethink.eval.lmms_eval_rules import extract_mcq_answer
from framethink.rewards import parse_number

TRACKS = ("Perception", "Comprehension", "Adaptation")
# subject -> video folder (one zip per discipline in the release)
FOLDERS = {
    **dict.fromkeys(("Art", "Art_Theory", "Design", "Music"), "Art"),
    **dict.fromkeys(("Biology", "Chemistry", "Geography", "Math", "Physics"), "Science"),
    **dict.fromkeys(("History", "Literature", "Sociology", "Psychology"), "Humanities"),
    **dict.fromkeys(("Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                     "Energy_and_Power", "Materials", "Mechanical_Engineering"), "Engineering"),
    **dict.fromkeys(("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                     "Pharmacy", "Public_Health"), "Medicine"),
    **dict.fromkeys(("Accounting", "Economics", "Finance", "Manage", "Marketing"), "Business"),
}
_ID_RE = re.compile(r"^[^_]+_(.+?)_\d+$")  # "validation_Art_Theory_12" -> "Art_Theory"


def load(root: Path) -> list[Record]:
    records = []
    for track in TRACKS:
        what = f"the VideoMMMU {track} parquet (layout: <Track>/test-*.parquet, <Discipline>/<id>.mp4)"
        for file, index, row in parquet_rows(root / track, what):
            item = Item(row, file, f"row {index}")
            vid = item.get("id")
            match = _ID_RE.match(vid)
            if match is None or match.group(1) not in FOLDERS:
                raise item.error("id", f"expected '<split>_<Subject>_<n>' with a known subject, got {vid!r}")
            video = root / FOLDERS[match.group(1)] / f"{vid}.mp4"
            extra = {"question_type": row.get("question_type"), "subject": match.group(1)}
            options = [str(o) for o in row.get("options") or []]
            if options:
                if not all(o.startswith(f"{LETTERS[i]}.") for i, o in enumerate(options)):
                    options = lettered(options)
                records.append(item.record(f"{track}/{vid}", item.get("question"), options,
                                           item.letter("answer", options), track, video, extra))
            else:
                answer = item.get("answer")
                ptype = "numerical" if parse_number(answer) is not None else "free-form"
                records.append(item.record(f"{track}/{vid}", item.get("question"), [], answer, track, video, extra,
                                           problem_type=ptype))
    return records


# ---------------------------------------------------------------------------------------------
# MMMU-style parsing, as lmms-eval ships it for VideoMMMU (EvolvingLMMs-Lab/lmms-eval v0.7.0:
# `lmms_eval/tasks/_task_utils/mmmu_mcq_utils.py` `parse_videommmu_multi_choice_response`;
# `lmms_eval/tasks/videommmu/utils.py` `parse_open_response`, `extract_numbers`, `normalize_str`, `eval_open`).

NO_ANSWER, API_ERROR = "No Answer Found.", "API Error"


def parse_multi_choice_response(response: str, all_choices: list[str], index2ans: dict[str, str]) -> str:
    """The letter read from "X." / "X:" (else "(X)", else "X "), or from an option's text in a response of more
    than five words; the last occurrence wins among several; "No Answer Found." when none (no random guess)."""
    if response == API_ERROR or response == "":
        return API_ERROR
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    index_ans, ans_with_brack, ans_with_period, ans_with_colon = True, False, False, False
    candidates = []
    for choice in all_choices:
        if f"{choice}." in response:
            candidates.append(choice)
            ans_with_period = True
    for choice in all_choices:
        if f"{choice}:" in response:
            candidates.append(choice)
            ans_with_colon = True
    if len(candidates) == 0:
        for choice in all_choices:
            if f"({choice})" in response:
                candidates.append(choice)
                ans_with_brack = True
    if len(candidates) == 0:
        for choice in all_choices:
            if f"{choice} " in response:
                candidates.append(choice)
    if len(candidates) == 0 and len(response.split()) > 5:
        for index, ans in index2ans.items():
            if ans.lower() in response.lower():
                candidates.append(index)
                index_ans = False
    if len(candidates) == 0:
        return NO_ANSWER
    if len(candidates) == 1:
        return candidates[0]
    if not index_ans:
        starts = [response.lower().rfind(index2ans[can].lower()) for can in candidates]
    elif ans_with_period:
        starts = [response.rfind(f"{can}.") for can in candidates]
    elif ans_with_colon:
        starts = [response.rfind(f"{can}:") for can in candidates]
    elif ans_with_brack:
        starts = [response.rfind(f"({can})") for can in candidates]
    else:
        starts = [response.rfind(f" {can} ") for can in candidates]
    return candidates[int(np.argmax(starts))]


def extract_numbers(string: str) -> list[str]:
    pattern_commas = r"-?\b\d{1,3}(?:,\d{3})+\b"
    pattern_scientific = r"-?\d+(?:\.\d+)?[eE][+-]?\d+"
    pattern_simple = r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"
    return re.findall(pattern_commas, string) + re.findall(pattern_scientific, string) + re.findall(pattern_simple,
                                                                                                    string)


def _check_is_number(string: str) -> bool:
    try:
        float(string.replace(",", ""))
        return True
    except ValueError:
        return False


def normalize_str(string: str) -> list:
    """A number becomes [round(float, 2)]; a string is lower-cased, a one-character string padded with a space
    on either side so that it cannot match inside a word."""
    string = string.strip()
    if _check_is_number(string):
        return [round(float(string.replace(",", "")), 2)]
    string = string.lower()
    if len(string) == 1:
        return [" " + string, string + " "]
    return [string]


_KEY_INDICATORS = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ", "are ",
                   "in total ", "total ", "identify ", "recognize ", "calculated as ", "counted as ", "measured as ",
                   "observed as ", "concluded as ", "found to be ", "equals ", "determined to be ", "number of ",
                   "value is ", "adds up to ", "have ", "has "]


def _key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    sub_responses = re.split(r"\.\s(?=[A-Z])|\n", response)
    indicators = list(_KEY_INDICATORS)
    key_responses = []
    for index, resp in enumerate(sub_responses):
        if index == len(sub_responses) - 1:
            indicators.extend(["="])
        shortest = None
        for indicator in indicators:
            if indicator in resp:
                tail = resp.split(indicator)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in [":", ",", ".", "!", "?", ";", ":", "'"]:
            key_responses.append(shortest)
    return key_responses or [response]


def parse_open_response(response: str) -> list | str:
    """The tails after answer indicators ("is ", "so ", "=" ...), plus every number in them, normalised;
    "API Error" for an empty response (the aggregation then leaves the item out)."""
    if response == API_ERROR or response == "":
        return API_ERROR
    key_responses = _key_subresponses(response)
    pred_list: list = key_responses.copy()
    for resp in key_responses:
        pred_list.extend(extract_numbers(resp))
    normalized = []
    for pred in pred_list:
        normalized.extend(normalize_str(pred))
    return list(set(normalized))


def eval_open(gold: str, preds: list) -> bool:
    """Correct when a normalised gold string occurs in a predicted string, or a gold number equals a predicted
    number; all or nothing."""
    norm_answers = normalize_str(gold)
    for pred in preds:
        if isinstance(pred, str):
            for norm_ans in norm_answers:
                if isinstance(norm_ans, str) and norm_ans in pred:
                    return True
        elif pred in norm_answers:
            return True
    return False


def _score(line: dict, text: str, parse_mc) -> ItemScore:
    if line["problem_type"] == "multiple choice":
        index2ans = option_texts(line)
        pred = parse_mc(text, list(index2ans), index2ans)
        if pred == API_ERROR:
            return ItemScore(answer="", score=0.0, status="unparsable", counted=False)
        if pred == NO_ANSWER:
            return ItemScore(answer="", score=0.0, status="unparsable")
        return scored(pred, pred == str(line["answer"]))  # `eval_multi_choice`: exact equality
    preds = parse_open_response(text)
    if preds == API_ERROR:
        return ItemScore(answer="", score=0.0, status="unparsable", counted=False)
    return scored(text.strip(), eval_open(str(line["answer"]), preds))


def official(line: dict, text: str) -> ItemScore:
    """VideoMMMU's scorer as lmms-eval v0.7.0 shipped it: `videommmu_process_results` with MMMU's
    multiple-choice parser, `parse_open_response` + `eval_open` for open answers, and the aggregation that
    leaves "API Error" (empty) responses out."""
    return _score(line, text, parse_multi_choice_response)


def _lmms_multi_choice(response: str, all_choices: list[str], _index2ans: dict[str, str]) -> str:
    """lmms-eval v0.7.2 `parse_multi_choice_response`: the shared `extract_mcq_answer`."""
    return extract_mcq_answer(response, choices=all_choices) or NO_ANSWER


def lmms_eval(line: dict, text: str) -> ItemScore:
    """lmms-eval v0.7.2 `videommmu_process_results`: `extract_mcq_answer` for multiple choice, the same open
    parsing and aggregation."""
    return _score(line, text, _lmms_multi_choice)


BENCHMARK = BenchmarkSpec(
    name="videommmu", help="VideoMMMU, 3 tracks (<Track>/test-*.parquet + <Discipline>/), accuracy",
    load=load, metric="accuracy", official=official, lmms_eval=lmms_eval,
    published={"qwen2.5-vl-7b-cot-16f": 47.8, "qwen2.5-vl-7b-cot-32f": 48.1, "qwen2.5-vl-7b-sft-16f": 47.4,
               "qwen2.5-vl-7b-sft-32f": 49.4, "video-r1-7b-16f": 49.8, "video-r1-7b-32f": 52.3,
               "video-r1-7b-wo-image-16f": 45.8, "video-r1-7b-wo-temporal-16f": 48.3},
)
