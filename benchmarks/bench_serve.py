"""What serving costs on top of generation: one video question answered directly (`framethink.infer.ask` on a video
file, decoded afresh each time), with and without the reasoning streamed through the per-token hook, and through `framethink serve`'s chat-completions API over HTTP on
127.0.0.1, non-streaming and streaming (time to the first text piece and to [DONE]).

The model is the tiny random Qwen2.5-VL (`framethink model tiny`), so the numbers measure the machinery around
generation, not a model: every way decodes the same tokens (same frames, prompt and seed, sampled at temperature 1;
checked by comparing the texts), and the number of tokens generated is reported.

    .venv-test/bin/python -m benchmarks.bench_serve
"""
from __future__ import annotations

import argparse
import base64
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from benchmarks.common import CLOCK_NOTE, limit_threads, print_result, stats
from framethink.data.video import write_video
from framethink.infer import ask, decoding_settings, question_record
from framethink.models import load_adapter
from framethink.models.registry import build_tiny
from framethink.serve.app import build_app, serving_in_background
from framethink.serve.session import ServeLimits


def _post(url: str, payload: dict) -> tuple[float, float, str, float]:
    """(seconds to the first text piece, seconds to the end, the text, CPU seconds of this process: client and
    server) of one request."""
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    t0, c0 = time.perf_counter(), time.process_time()
    first, text = None, []
    with urllib.request.urlopen(request, timeout=600) as response:
        if not payload.get("stream"):
            body = json.loads(response.read())
            end = time.perf_counter() - t0
            return end, end, body["choices"][0]["message"]["content"], time.process_time() - c0
        for line in response:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                piece = choice["delta"].get("content")
                if piece:
                    first = first if first is not None else time.perf_counter() - t0
                    text.append(piece)
    return first, time.perf_counter() - t0, "".join(text), time.process_time() - c0


def run(work: Path, *, requests: int = 5, new_tokens: int = 128, frames: int = 16, size: int = 56) -> dict:
    """Median wall seconds of each way over `requests` questions (after one untimed warm-up each)."""
    model = build_tiny("qwen2.5-vl", work / "model", seed=0)
    video = np.random.default_rng(0).integers(0, 256, (frames, size, size, 3), dtype=np.uint8)
    clip = write_video(work / "clip.mp4", video, 8)
    adapter = load_adapter(model)
    decoding = decoding_settings(temperature=1.0, top_p=1.0, max_new_tokens=new_tokens)
    result: dict = {"requests": requests, "max_new_tokens": new_tokens, "frames": frames, "size": size}

    copies = iter(range(10**6))

    def direct(streamed: bool) -> tuple[float, str, int, float]:
        """A new file each time, as each question of a server brings its own video (no decoded clip is reused)."""
        path = work / f"question{next(copies)}.mp4"
        shutil.copy(clip, path)
        t0, c0 = time.perf_counter(), time.process_time()
        record = question_record(path, "video", "What happens in the clip?")
        (reply,) = ask(adapter, record, decoding, seed=1, template="plain",
                       on_text=(lambda row, text: None) if streamed else None)
        return time.perf_counter() - t0, reply.text, reply.num_tokens, time.process_time() - c0

    texts = set()
    direct(False)
    timings = {False: [], True: []}
    for _ in range(requests):  # interleaved
        for streamed in (False, True):
            timings[streamed].append(direct(streamed))
    for name, streamed in (("direct", False), ("direct_streamed", True)):
        result[name] = stats([t for t, _, _, _ in timings[streamed]])
        result[name + "_cpu"] = stats([cpu for _, _, _, cpu in timings[streamed]])
        texts |= {text for _, text, _, _ in timings[streamed]}
    result["tokens"] = timings[False][0][2]
    app = build_app(adapter, "bench", limits=ServeLimits(max_new_tokens=new_tokens))
    content = [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(clip.read_bytes()).decode()}},
               {"type": "text", "text": "What happens in the clip?"}]
    payload = {"model": "bench", "messages": [{"role": "user", "content": content}], "max_tokens": new_tokens,
               "temperature": 1.0, "top_p": 1.0, "seed": 1}
    with serving_in_background(app) as url:
        _post(url, payload)
        runs = {False: [], True: []}
        for _ in range(requests):  # interleaved, so that a change in machine load hits both
            for stream in (False, True):
                runs[stream].append(_post(url, {**payload, "stream": stream}))
        for name, stream in (("api", False), ("api_stream", True)):
            result[name] = stats([end for _, end, _, _ in runs[stream]])
            result[name + "_cpu"] = stats([cpu for _, _, _, cpu in runs[stream]])
            texts |= {text for _, _, text, _ in runs[stream]}
        result["api_stream_first_piece"] = stats([first for first, _, _, _ in runs[True]])
    result["same_text_every_way"] = len(texts) == 1
    result["api_overhead_vs_direct_cpu"] = result["api_cpu"]["median"] / result["direct_cpu"]["median"]
    result["streaming_overhead_direct_cpu"] = result["direct_streamed_cpu"]["median"] / result["direct_cpu"]["median"]
    result["clock"] = CLOCK_NOTE
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    limit_threads()
    with tempfile.TemporaryDirectory() as work:
        print_result("serve", run(Path(work), requests=args.requests, new_tokens=args.new_tokens))


if __name__ == "__main__":
    main()
