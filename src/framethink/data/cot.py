"""`framethink data cot`: chain-of-thought annotation by a teacher model, filtered by the reward rules.

This is how Video-R1 built Video-R1-COT-165k from Video-R1-260k (tulerfeng/Video-R1, src/generate_cot_vllm.py):
the teacher answers every record with the Video-R1 prompt in its "between the <think> and </think> tags" wording
plus the problem type's suffix (template `video-r1-eval`, framethink/templates/prompts.yaml), sampled at
temperature 1.0, top-p 0.95, at most 512 new tokens; an output is scored against the gold answer by the accuracy
rule of the record's problem type and kept when that score clears the threshold (the reference keeps
`reward > 0.6`); the kept output's reasoning becomes `process` = `<think>` + the stripped text between the tags +
`</think>`, and the record keeps its gold `solution`.

framethink adds what the reference script leaves out: the format rule (the whole output must be
`<think>...</think> <answer>...</answer>` with a non-empty reasoning, the Video-R1 format reward), up to K samples
per record (the best passing one is kept), per-type thresholds (`min_accuracy`, compared with `>=`), resumption
after a crash, several processes under torchrun, an OpenAI-compatible endpoint as the teacher, and a table of what
was kept and dropped. See docs/data.md ("Chain-of-thought annotation").

Output protocol: every finished record is appended to a journal (`OUT.work/rank<r>.jsonl`, one JSON line per
record, flushed and fsynced after each batch; a killed run leaves at most one torn last line, which the next run
cuts off). A re-run with the same input, teacher and settings skips every journalled record. When all records are
journalled, process 0 writes OUT in one atomic rename: OUT exists only when it is complete.
"""
from __future__ import annotations

import base64
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from framethink.config import apply_override, from_dict
from framethink.data.clips import ClipReader, FrameRule
from framethink.data.prompts import format_question, get_template
from framethink.data.records import PROBLEM_TYPES, Record, load_records
from framethink.data.video import load_image
from framethink.data.writing import atomic_write, record_object, records_text
from framethink.errors import ConfigError, FramethinkError, VideoDecodeError
from framethink.rewards import accuracy_reward, extract_answer, normalize_option, video_r1_format

REASONS = ("format", "accuracy", "media")  # why a record is dropped, in the order the table lists them
SOLUTION_SOURCES = ("gold", "teacher")
DTYPES = ("auto", "float32", "bfloat16", "float16")
RUN_ONLY_SETTINGS = ("batch_size", "retries", "timeout")  # may change when a run is resumed
_THINK_RE = re.compile(r"<think>\s*(.*?)\s*</think>", re.DOTALL)  # generate_cot_vllm.py's extract_think


class EndpointError(FramethinkError):
    """The teacher endpoint failed for a record after its retries; the run stops and can be resumed."""


@dataclass
class CotConfig:
    """Settings of one annotation run (`key=value` on the command line; docs/data.md lists them)."""

    template: str = "video-r1-eval"
    samples: int = 1  # outputs drawn per record; the best passing one is kept
    batch_size: int = 8  # records per generate call (local teacher) or requests in flight (endpoint)
    temperature: float = 1.0
    top_p: float = 0.95
    max_new_tokens: int = 512
    min_accuracy: dict[str, float] = field(default_factory=lambda: {t: 0.6 for t in PROBLEM_TYPES})
    solution: str = "gold"  # gold: keep the record's gold solution (the reference); teacher: the teacher's answer
    seed: int = 0
    max_frames: int | None = None  # frames per video (default: the teacher checkpoint's rule; endpoint: 16)
    max_pixels: int | None = None  # pixels per frame (default: the checkpoint's bounds; endpoint: as decoded)
    dtype: str = "auto"  # local teacher: auto = bfloat16 on a GPU, float32 on the CPU
    retries: int = 3  # endpoint: attempts after the first, with 1, 2, 4 ... s pauses
    timeout: float = 600.0  # endpoint: seconds per request
    # endpoint: send a video's sampling rate as `mm_processor_kwargs.fps` (vLLM's field; `framethink serve` reads
    # it to time the frames); off by default because hosted APIs refuse fields they do not know
    send_fps: bool = False


def parse_min_accuracy(values: list[str]) -> dict[str, float]:
    """`--min-accuracy` values: a number (every type) or `TYPE=VALUE[,TYPE=VALUE...]`, later ones winning."""
    thresholds: dict[str, float] = {}
    for value in values:
        for part in value.split(","):
            name, sep, number = part.rpartition("=")
            try:
                threshold = float(number)
            except ValueError:
                raise ConfigError(f"--min-accuracy {value!r}: {number!r} is not a number") from None
            for problem_type in ([name.strip()] if sep else PROBLEM_TYPES):
                thresholds[problem_type] = threshold
    return thresholds


def cot_config(overrides: list[str] = (), **settings: Any) -> CotConfig:
    """CotConfig from keyword settings (None = default) then `key=value` overrides; every value checked."""
    data = dataclasses.asdict(CotConfig())
    for key, value in settings.items():
        if value is None:
            continue
        if key == "min_accuracy":
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    for override in overrides:
        apply_override(data, override)
    config = from_dict(CotConfig, data)
    _validate(config)
    return config


def _validate(config: CotConfig) -> None:
    get_template(config.template)
    unknown = sorted(set(config.min_accuracy) - set(PROBLEM_TYPES))
    if unknown:
        raise ConfigError(f"min_accuracy: unknown problem type {unknown[0]!r}; known: {', '.join(PROBLEM_TYPES)}")
    for problem_type, value in config.min_accuracy.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"min_accuracy.{problem_type}: expected a number in [0, 1], got {value!r}")
    checks = [
        (config.samples >= 1, f"samples: must be >= 1, got {config.samples}"),
        (config.batch_size >= 1, f"batch_size: must be >= 1, got {config.batch_size}"),
        (config.max_new_tokens >= 1, f"max_new_tokens: must be >= 1, got {config.max_new_tokens}"),
        (config.temperature >= 0, f"temperature: must be >= 0, got {config.temperature}"),
        (config.samples == 1 or config.temperature > 0,
         f"samples: {config.samples} greedy samples would all be the same output; set temperature > 0"),
        (0 < config.top_p <= 1, f"top_p: must be in (0, 1], got {config.top_p}"),
        (config.solution in SOLUTION_SOURCES, f"solution: {config.solution!r} is not one of gold, teacher"),
        (config.dtype in DTYPES, f"dtype: {config.dtype!r} is not one of {', '.join(DTYPES)}"),
        (config.retries >= 0 and config.timeout > 0, "retries must be >= 0 and timeout > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


# ------------------------------------------------------------------------------------------ judging outputs


@dataclass
class Verdict:
    """What the filter decided for one record: kept, or dropped with a reason (one of REASONS)."""

    kept: bool
    reason: str  # "kept" or one of REASONS
    sample: int | None  # index of the chosen output (the kept one, or the best dropped one)
    accuracy: float
    output: str  # the chosen output, or the media error


def judge(outputs: list[str], record: Record, min_accuracy: dict[str, float]) -> Verdict:
    """Keep the most accurate output that passes the format rule (with a non-empty reasoning) and whose answer
    scores at least `min_accuracy[problem type]` by that type's accuracy rule; the first one on ties.

    A record none of whose outputs passes is dropped for "accuracy" when some output had the format, else for
    "format"; the verdict then carries the most accurate formatted output (or the first output).
    """
    threshold = min_accuracy[record.problem_type]
    best: tuple[float, int] | None = None  # (accuracy, sample) of the best formatted output
    for index, output in enumerate(outputs):
        think = _THINK_RE.search(output)
        if not video_r1_format(output) or think is None or not think.group(1):
            continue
        accuracy = accuracy_reward(output, record.answer, record.problem_type)
        if best is None or accuracy > best[0]:
            best = (accuracy, index)
    if best is None:
        return Verdict(False, "format", 0, 0.0, outputs[0] if outputs else "")
    accuracy, index = best
    kept = accuracy >= threshold
    return Verdict(kept, "kept" if kept else "accuracy", index, accuracy, outputs[index])


def annotated(record: Record, verdict: Verdict, media_root: Path, solution: str) -> dict:
    """The kept record in the Video-R1 CoT format: `process` from the output's reasoning, `solution` gold or
    the teacher's answer."""
    obj = record_object(record, media_root)
    obj["process"] = f"<think>{_THINK_RE.search(verdict.output).group(1)}</think>"
    if solution == "teacher":  # a kept option answer ("B. dog", "(B)") is written as its letter, as options are
        answer = extract_answer(verdict.output)
        if record.problem_type == "multiple choice":
            answer = normalize_option(answer) or answer
        obj["solution"] = f"<answer>{answer}</answer>"
    return obj


# ------------------------------------------------------------------------------------------ teachers


class Teacher(Protocol):
    """Answers records: per record, `samples` output texts, or a VideoDecodeError for unusable media."""

    def answer(self, records: list[Record], samples: int, seed: int) -> list[list[str] | VideoDecodeError]:
        ...


class LocalTeacher:
    """Any checkpoint framethink loads (`load_adapter`). One generate call per batch: every record's prompt (its
    frames, through the vision encoder) is encoded once and shared by its `samples` rows."""

    def __init__(self, model: str | Path, config: CotConfig, *, device: str) -> None:
        import torch

        from framethink.models import load_adapter
        from framethink.models.adapter import Decoding

        dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
        self.adapter = load_adapter(model, num_frames=config.max_frames, max_pixels=config.max_pixels,
                                    dtype=getattr(torch, dtype), device=device, frame_cache_size=0)
        self.template = config.template
        self.decoding = Decoding(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                 top_p=config.top_p, do_sample=config.temperature > 0)

    def answer(self, records: list[Record], samples: int, seed: int) -> list[list[str] | VideoDecodeError]:
        import torch

        results: list[list[str] | VideoDecodeError] = [[] for _ in records]
        prompts, owners = [], []
        for index, record in enumerate(records):
            try:
                prompts.append(self.adapter.encode(record, template=self.template))
                owners.append(index)
            except VideoDecodeError as err:
                results[index] = err
        if prompts:
            rows = [k for k in range(len(prompts)) for _ in range(samples)]
            completions = self.adapter.generate(prompts, rows, self.decoding,
                                                generator=torch.Generator().manual_seed(seed))
            texts = self.adapter.decode(completions)
            for k, index in enumerate(owners):
                results[index] = texts[k * samples:(k + 1) * samples]
        return results


class EndpointTeacher:
    """An OpenAI-compatible chat-completions endpoint (vLLM, SGLang, `framethink serve`, a hosted API).

    One request per record, `n` = samples; a video is sent as its sampled frames, each a base64 PNG image part
    preceded by a text part with its time ("Frame 3 at 1.50s:"), then the question text, and with `send_fps` the
    frames' sampling rate. `batch_size` requests are in flight at once.
    """

    def __init__(self, url: str, served_model: str, config: CotConfig) -> None:
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.served_model, self.config = served_model, config
        self.reader = ClipReader(FrameRule(max_frames=config.max_frames or 16), cache_size=0)
        self.identity = {"endpoint": self.url, "served_model": served_model}

    def request(self, record: Record) -> dict:
        """The record's part of a request: its chat messages and, with `send_fps`, a video's sampling rate (raises
        VideoDecodeError for unusable media)."""
        content: list[dict] = []
        body: dict = {}
        if record.media_kind == "video":
            sampled = self.reader.sample(record)
            for number, (frame, time_s) in enumerate(zip(sampled.frames, sampled.timestamps), 1):
                content += [{"type": "text", "text": f"Frame {number} at {time_s:.2f}s:"}, self._image_part(frame)]
            if self.config.send_fps:
                body["mm_processor_kwargs"] = {"fps": sampled.fps}
        elif record.media_kind == "image":
            content.append(self._image_part(load_image(record.media[0]).frames[0]))
        content.append({"type": "text", "text": format_question(record, self.config.template)})
        return {"messages": [{"role": "user", "content": content}], **body}

    def _image_part(self, frame: np.ndarray) -> dict:
        image = Image.fromarray(frame)
        limit = self.config.max_pixels
        if limit is not None and image.width * image.height > limit:
            scale = (limit / (image.width * image.height)) ** 0.5
            image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))),
                                 Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
        return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{encoded}"}}

    def answer(self, records: list[Record], samples: int, seed: int) -> list[list[str] | VideoDecodeError]:
        with ThreadPoolExecutor(max_workers=max(1, min(len(records), self.config.batch_size))) as pool:
            return list(pool.map(lambda job: self._answer_one(job[1], samples, seed + job[0]), enumerate(records)))

    def _answer_one(self, record: Record, samples: int, seed: int) -> list[str] | VideoDecodeError:
        try:
            request = self.request(record)
        except VideoDecodeError as err:
            return err
        outputs: list[str] = []
        while len(outputs) < samples:  # a server that ignores `n` answers once per request
            payload = {"model": self.served_model, **request, "n": samples - len(outputs),
                       "temperature": self.config.temperature, "top_p": self.config.top_p,
                       "max_tokens": self.config.max_new_tokens, "seed": seed + len(outputs)}
            reply = self._post(payload, record)
            try:
                outputs += [choice["message"]["content"] or "" for choice in reply["choices"]]
            except (KeyError, TypeError) as err:
                raise EndpointError(f"{self.url}: reply for {record.origin} is not a chat completion "
                                    f"(missing {err}): {json.dumps(reply)[:300]}") from None
        return outputs[:samples]

    def _post(self, payload: dict, record: Record) -> dict:
        body = json.dumps(payload).encode("utf-8")
        last = ""
        for attempt in range(self.config.retries + 1):
            if attempt:
                time.sleep(2 ** (attempt - 1))
            request = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.config.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}: {err.read()[:300].decode('utf-8', 'replace')}"
                if err.code < 500 and err.code != 429:  # the request itself is wrong: retrying cannot help
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as err:
                last = str(err)
        raise EndpointError(f"{self.url} failed for {record.origin}: {last} (after {attempt + 1} attempts); "
                            "fix the endpoint and re-run the same command to resume")


# ------------------------------------------------------------------------------------------ journal and output


def work_dir(out: Path) -> Path:
    """Where a run keeps its header and journals: OUT.work/ beside OUT."""
    return out.with_name(out.name + ".work")


def journal_entries(work: Path) -> Iterator[dict]:
    """Every complete journal line of every process, in file order (a record may repeat only if two runs wrote
    at once, which the journal locks prevent; readers keep the first line of an index)."""
    for part in sorted(work.glob("rank*.jsonl")):
        with part.open("rb") as handle:
            for line in handle:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    continue  # the torn last line of a killed run


def read_journal(work: Path) -> dict[int, dict]:
    """The journal's entries by record index (the first line of an index wins)."""
    entries: dict[int, dict] = {}
    for entry in journal_entries(work):
        entries.setdefault(entry["index"], entry)
    return entries


class JournalWriter:
    """Appends this process's finished records to OUT.work/rank<r>.jsonl; holds an exclusive lock on it, so a
    second run on the same output stops with a message instead of writing the same records again."""

    def __init__(self, work: Path, rank: int) -> None:
        self.path = work / f"rank{rank}.jsonl"
        self.handle = open(self.path, "a+b")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise ConfigError(f"{self.path} is locked: another `data cot` run is writing this output") from None
        self.handle.seek(0)
        data = self.handle.read()
        if data and not data.endswith(b"\n"):  # a torn line from a killed run: cut it off
            self.handle.truncate(data.rfind(b"\n") + 1)
        self.handle.seek(0, os.SEEK_END)

    def append(self, entries: list[dict]) -> None:
        self.handle.write(b"".join(json.dumps(e, ensure_ascii=False).encode("utf-8") + b"\n" for e in entries))
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


def _flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _start_header(work: Path, header: dict) -> None:
    """Write the run's header, or check that a journal being resumed was written by the same run."""
    path = work / "header.json"
    if path.is_file():
        found = json.loads(path.read_text())
        flat_header, flat_found = _flatten(header), _flatten(found)
        keys = sorted(set(flat_header) | set(flat_found))
        changed = [key for key in keys if flat_header.get(key) != flat_found.get(key)]
        if changed:
            raise ConfigError(f"{work} holds a run with other settings: "
                              + ", ".join(f"{k} {flat_found.get(k)!r} (now {flat_header.get(k)!r})" for k in changed)
                              + "; resume it with the same input, teacher and settings, or choose another --out")
        return
    atomic_write(path, json.dumps(header, indent=1) + "\n")


# ------------------------------------------------------------------------------------------ the run


@dataclass
class CotSummary:
    """Counts of one finished run, by (source, problem type) and outcome ("kept" or a reason)."""

    input: str
    out: str
    teacher: dict
    counts: dict[tuple[str, str], Counter]

    @property
    def total(self) -> Counter:
        return sum(self.counts.values(), Counter())

    def to_json(self) -> dict:
        return {"input": self.input, "out": self.out, "teacher": self.teacher,
                "groups": [{"source": s, "problem_type": t, **c} for (s, t), c in sorted(self.counts.items())],
                "total": dict(self.total)}

    def render(self) -> str:
        """A table: records, kept and dropped by reason, per source and problem type, then the totals."""
        columns = ["records", "kept", *(f"drop:{r}" for r in REASONS)]
        keys = ["kept", *REASONS]
        rows = [(s, t, [sum(c.values()), *(c[k] for k in keys)]) for (s, t), c in sorted(self.counts.items())]
        total = self.total
        rows.append(("total", "", [sum(total.values()), *(total[k] for k in keys)]))
        source_w = max(6, *(len(r[0]) for r in rows))
        type_w = max(12, *(len(r[1]) for r in rows))
        teacher = self.teacher.get("model") or f"{self.teacher.get('served_model')} at {self.teacher.get('endpoint')}"
        kept, count = total["kept"], sum(total.values())
        lines = [f"CoT annotation of {self.input} by {teacher}",
                 f"{count} records: {kept} kept ({100 * kept / max(count, 1):.1f} %), {count - kept} dropped; "
                 f"written to {self.out}", "",
                 f"{'source':<{source_w}}  {'problem type':<{type_w}}  " + "  ".join(f"{c:>13}" for c in columns)]
        for source, ptype, values in rows:
            lines.append(f"{source:<{source_w}}  {ptype:<{type_w}}  " + "  ".join(f"{v:>13}" for v in values))
        return "\n".join(lines)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _processes() -> tuple[int, int, bool]:
    """(rank, world size, whether this call started the process group) under torchrun; (0, 1, False) alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    import torch.distributed as dist

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("gloo")  # only barriers travel between the processes
    return dist.get_rank(), dist.get_world_size(), started


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def default_device() -> str:
    """cuda:<LOCAL_RANK> when a GPU is visible, else the CPU."""
    import torch

    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"


def run_cot(
    input_file: str | Path,
    out: str | Path,
    make_teacher: Callable[[], Teacher],
    teacher_identity: dict,
    config: CotConfig,
    *,
    root: str | Path | None = None,
    progress: bool = True,
) -> CotSummary | None:
    """Annotate every record of `input_file` (media under `root`, default its folder) and write the kept ones to
    `out`; resumes a journalled run. Returns the summary on process 0 (None on the others).

    Every record is parsed before the teacher loads, so a malformed input stops with the file, record and field.
    `make_teacher` is called only when this process has records left to annotate.
    """
    input_file, out = Path(input_file), Path(out)
    media_root = Path(root if root is not None else input_file.parent)
    records = load_records(input_file, root=media_root)
    for record in records:  # a type the template cannot prompt stops the run before any model loads
        format_question(record, config.template)
    work = work_dir(out)
    if out.exists() and not work.is_dir():
        raise ConfigError(f"{out} exists and is not the output of a resumable run ({work} is missing); "
                          "choose another --out or remove it")
    rank, world, started = _processes()
    try:
        header = {"input": str(input_file.absolute()), "input_sha256": _file_sha256(input_file),
                  "root": str(media_root.absolute()), "teacher": teacher_identity,
                  "config": {k: v for k, v in dataclasses.asdict(config).items() if k not in RUN_ONLY_SETTINGS}}
        if rank == 0:
            work.mkdir(parents=True, exist_ok=True)
            _start_header(work, header)
        _barrier(world)
        if rank != 0:
            _start_header(work, header)
        writer = JournalWriter(work, rank)
        try:
            _barrier(world)  # every process has cut its torn line before any reads what is done
            done = {entry["index"] for entry in journal_entries(work)}
            todo = [i for i in range(len(records)) if i not in done and i % world == rank]
            if todo:
                _annotate(records, todo, make_teacher(), writer, config, media_root, progress and rank == 0)
        finally:
            writer.close()
        _barrier(world)
        summary = _assemble(records, work, out, input_file, teacher_identity) if rank == 0 else None
        _barrier(world)
        return summary
    finally:
        if started:
            import torch.distributed as dist

            dist.destroy_process_group()


def _annotate(records: list[Record], todo: list[int], teacher: Teacher, writer: JournalWriter, config: CotConfig,
              media_root: Path, progress: bool) -> None:
    with tqdm(total=len(todo), desc="cot", unit="record", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(todo), config.batch_size):
            batch = todo[start:start + config.batch_size]
            answers = teacher.answer([records[i] for i in batch], config.samples, config.seed * 1_000_003 + batch[0])
            entries = []
            for index, outputs in zip(batch, answers):
                record = records[index]
                if isinstance(outputs, VideoDecodeError):
                    verdict = Verdict(False, "media", None, 0.0, str(outputs))
                else:
                    verdict = judge(outputs, record, config.min_accuracy)
                entries.append({
                    "index": index, "id": record.id, "origin": record.origin, "source": record.source,
                    "problem_type": record.problem_type, "status": "kept" if verdict.kept else "dropped",
                    "reason": verdict.reason, "sample": verdict.sample, "accuracy": verdict.accuracy,
                    "output": verdict.output,
                    "record": annotated(record, verdict, media_root, config.solution) if verdict.kept else None,
                })
            writer.append(entries)
            bar.update(len(batch))


def _assemble(records: list[Record], work: Path, out: Path, input_file: Path, teacher: dict) -> CotSummary:
    """Write OUT from the journals, streamed (at 260k records the teacher outputs do not all fit in memory)."""
    seen: set[int] = set()
    kept: dict[int, dict] = {}
    counts: dict[tuple[str, str], Counter] = {}
    for entry in journal_entries(work):
        if entry["index"] in seen:
            continue
        seen.add(entry["index"])
        counts.setdefault((entry["source"] or "(none)", entry["problem_type"]), Counter())[entry["reason"]] += 1
        if entry["status"] == "kept":
            kept[entry["index"]] = entry["record"]
    missing = [i for i in range(len(records)) if i not in seen]
    if missing:
        raise FramethinkError(f"{work}: records {missing[:5]} of {input_file} were not annotated by any process")
    summary = CotSummary(input=str(input_file), out=str(out), teacher=teacher, counts=counts)
    atomic_write(work / "summary.json", json.dumps(summary.to_json(), indent=1) + "\n")
    atomic_write(out, records_text([kept[i] for i in sorted(kept)], out))
    return summary


def cot_command(input_file: Path, out: Path, *, root: Path | None, model: Path | None, endpoint: str | None,
                served_model: str | None, config: CotConfig) -> int:
    """`framethink data cot`: choose the teacher, run (or resume) the annotation, print the table."""
    if (model is None) == (endpoint is None):
        raise ConfigError("data cot needs exactly one teacher: --model DIR, or --endpoint URL with --served-model")
    if endpoint is not None:
        if not served_model:
            raise ConfigError("--endpoint needs --served-model, the model name the endpoint serves")
        teacher = EndpointTeacher(endpoint, served_model, config)
        summary = run_cot(input_file, out, lambda: teacher, teacher.identity, config, root=root)
    else:
        if not (model / "config.json").is_file():
            raise ConfigError(f"--model {model}: no config.json; not a model checkpoint directory")
        identity = {"model": str(model.absolute())}
        summary = run_cot(input_file, out, lambda: LocalTeacher(model, config, device=default_device()), identity,
                          config, root=root)
    if summary is not None:
        print(summary.render())
    return 0
