"""The page of `framethink serve` in a real headless browser (Debian's chromium, driven over the Chrome DevTools
protocol on a pipe): the page loads, a question on a synthetic clip gets its reasoning streamed in and then its
answer and frame strip, side by side with shuffled frames; a bad upload and an oversized one show an error and the
server goes on. The browser may reach 127.0.0.1 only.

Skipped only where chromium is not installed and CI is not set; under CI (.ci/run installs chromium) it runs.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from framethink.cli import main
from framethink.models import load_adapter
from framethink.serve.app import build_app, serving_in_background
from framethink.serve.session import ServeLimits
from serve_helpers import colour_clip

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
UPLOAD_LIMIT = 1_000_000  # bytes

pytestmark = pytest.mark.skipif(CHROMIUM is None and os.environ.get("CI", "").lower() not in ("true", "1"),
                                reason="chromium is not installed (apt-get install chromium); CI runs this test")


class Browser:
    """Headless chromium and one page, over `--remote-debugging-pipe` (fd 3: commands in, fd 4: replies out, each
    message JSON ended by a NUL byte), with the page's session attached in flat mode."""

    def __init__(self, profile: Path) -> None:
        if CHROMIUM is None:
            raise RuntimeError("chromium is not installed: apt-get install chromium")
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-extensions", f"--user-data-dir={profile}",
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--remote-debugging-pipe",
                "--window-size=1400,1600", "about:blank"]
        # bash moves the pipe ends to the fds chromium reads and writes
        script = f'exec "$@" 3<&{to_browser} 4>&{from_browser} {to_browser}<&- {from_browser}>&-'
        self.process = subprocess.Popen(["bash", "-c", script, "bash", *args], pass_fds=(to_browser, from_browser),
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser)
        os.close(from_browser)
        self._buffer = b""
        self._next_id = 0
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._replies, 1 << 16)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 120.0, what: str = ""):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what or expression}; page text: {self.js('document.body.innerText')[:2000]}")

    def upload(self, selector: str, path: Path) -> None:
        root = self.call("DOM.getDocument", session=True, depth=-1, pierce=True)["root"]["nodeId"]
        node = self.call("DOM.querySelector", session=True, nodeId=root, selector=selector)["nodeId"]
        assert node, f"no element {selector}"
        self.call("DOM.setFileInputFiles", session=True, nodeId=node, files=[str(path)])

    def type_into(self, selector: str, text: str) -> None:
        self.js(f"(() => {{ const box = document.querySelector({json.dumps(selector)}); box.value = {json.dumps(text)};"
                " box.dispatchEvent(new Event('input', {bubbles: true})); })()")

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except RuntimeError:
            pass
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        os.close(self._commands)
        os.close(self._replies)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    model = root / "model"
    assert main(["model", "tiny", "--arch", "qwen2.5-vl", "--out", str(model)]) == 0
    examples = root / "examples"
    examples.mkdir()
    colour_clip(examples / "red-then-blue.mp4")
    app = build_app(load_adapter(model), "tiny-qwen", examples=[examples / "red-then-blue.mp4"],
                    limits=ServeLimits(max_upload_bytes=UPLOAD_LIMIT, max_new_tokens=160))
    with serving_in_background(app) as url:
        yield url, root


@pytest.fixture
def page(site, tmp_path):
    url, _ = site
    browser = Browser(tmp_path / "profile")
    try:
        open_page(browser, url)
        yield browser
    finally:
        browser.close()


def open_page(browser: Browser, url: str) -> None:
    browser.call("Page.navigate", session=True, url=url + "/")
    browser.wait_for("!!document.querySelector('#question textarea') && !!document.querySelector('#ask') && "
                     "!!document.querySelector('#examples button.gallery-item')", what="the page to load")


def server_alive(url: str) -> bool:
    with urllib.request.urlopen(url + "/v1/models", timeout=30) as response:
        return response.status == 200


def ask_with_upload(page: Browser, video: Path, question: str) -> None:
    page.upload("#video input[type=file]", video)
    page.type_into("#question textarea", question)


def wait_for_video(page: Browser, name: str) -> None:
    """Until the video input holds the file `name` (uploaded or picked)."""
    page.wait_for(f"(document.querySelector('#video video')?.src || '').includes({json.dumps(name)})",
                  what=f"{name} in the video input")


def test_page_streams_the_reasoning_then_shows_answer_and_frames(site, page):
    url, _ = site
    assert "tiny-qwen" in page.js("document.body.innerText")
    page.js("document.querySelector('#examples button.gallery-item').click()")  # pick the example clip
    wait_for_video(page, "red-then-blue.mp4")
    page.type_into("#question textarea", "Which colour comes first?")
    page.type_into("#options textarea", "red, blue")
    # record every value the streamed box takes, sampled every few milliseconds inside the page
    page.js("window.seen = []; setInterval(() => { const box = document.querySelector('#reasoning-ordered textarea');"
            " if (box && window.seen[window.seen.length - 1] !== box.value) window.seen.push(box.value); }, 2)")
    page.js("document.querySelector('#ask').click()")
    answer = page.wait_for("document.querySelector('#answer-ordered textarea').value", timeout=180, what="the answer")
    page.wait_for("document.querySelectorAll('#frames-ordered img').length >= 4", what="the frame strip")
    final = page.js("document.querySelector('#reasoning-ordered textarea').value")
    seen = [value for value in page.js("window.seen") if value]
    assert len(final) > 20 and seen[-1] == final
    assert len(set(seen)) >= 3, seen  # the text arrived in pieces
    assert all(final.startswith(value) for value in seen)  # each piece extended what was there
    assert answer  # an answer letter, or the note that the reply had no <answer> tag
    strip = page.js("document.querySelector('#frames-ordered').innerText")
    # the qwen rule's 4 frames of the 2 s clip at 8 fps: frames 0, 5, 10, 15
    assert strip.split("\n")[1:] == ["0.00 s", "0.62 s", "1.25 s", "1.88 s"]
    # side by side: the shuffled column got its own reasoning and frame strip
    assert page.js("document.querySelector('#reasoning-shuffled textarea').value")
    assert page.js("document.querySelectorAll('#frames-shuffled img').length") == 4
    assert server_alive(url)


def test_a_bad_upload_shows_an_error_and_the_server_goes_on(site, page, tmp_path):
    url, _ = site
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    ask_with_upload(page, broken, "What happens?")
    wait_for_video(page, "broken.mp4")
    page.js("document.querySelector('#ask').click()")
    message = page.wait_for("(() => { const t = document.body.innerText; return t.includes('cannot decode video') && t; })()",
                            what="the error message")
    assert "broken.mp4: cannot decode video" in message
    assert server_alive(url)
    # the server goes on: the page, loaded again, answers a question on a good clip
    open_page(page, url)
    page.js("document.querySelector('#examples button.gallery-item').click()")
    wait_for_video(page, "red-then-blue.mp4")
    page.type_into("#question textarea", "Which colour comes first?")
    page.js("document.querySelector('#ask').click()")
    page.wait_for("document.querySelectorAll('#frames-ordered img').length >= 4", timeout=180, what="the answer")


def test_an_oversized_upload_is_refused_with_a_message(site, page, tmp_path):
    url, _ = site
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(UPLOAD_LIMIT + 500_000))
    page.upload("#video input[type=file]", big)
    text = page.wait_for("(() => { const t = document.body.innerText; return /exceed|too large|maximum/i.test(t) && t; })()",
                         what="the size error")
    assert 'exceed the maximum allowed size' in text and '"big.mp4"' in text
    assert server_alive(url)
