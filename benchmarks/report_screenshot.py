"""Open a comparison's ``report.html`` in headless Chromium and save a screenshot of the whole page.

    python benchmarks/report_screenshot.py benchmarks/results/compare-quality/report.html docs/report-screenshot.png

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages on
file descriptors 3 and 4, each ended by a NUL byte), with the standard library only. Host names resolve
to nothing (``--host-resolver-rules``), so a report that reached for the network could not load it, and
every request the page makes is recorded. ``tests/test_report_browser.py`` uses ``open_report`` to check
that every image of a committed report loaded and that nothing was requested from the network.
Needs a Chromium (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# what the page is asked once loaded: every image (how it ended up) and every resource it fetched
PAGE_STATE = """(() => ({
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src').slice(0, 80), complete: i.complete,
                                                 width: i.naturalWidth, height: i.naturalHeight})),
  resources: performance.getEntriesByType('resource').map(r => r.name),
  height: document.documentElement.scrollHeight,
  title: document.title,
}))()"""


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class ChromiumError(RuntimeError):
    pass


class Chromium:
    """A headless Chromium and one page, driven over ``--remote-debugging-pipe``."""

    def __init__(self, binary: str, profile: Path, log: Path, timeout: float = 30.0):
        self.timeout = timeout
        self.log = log
        # the browser reads commands from its fd 3 and writes replies and events to its fd 4
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        args = [binary, "--headless", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                "--no-sandbox",  # root in a container has no sandbox to give
                "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-extensions", "--mute-audio", "--hide-scrollbars",
                "--host-resolver-rules=MAP * ~NOTFOUND",  # no host name resolves: nothing can leave
                "about:blank"]

        def wire() -> None:  # in the child, before exec: the two pipe ends onto fds 3 and 4
            ends = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]  # clear of 3, 4
            os.dup2(ends[0], 3)
            os.dup2(ends[1], 4)

        self._log_file = open(log, "wb")
        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log_file,
                                         stderr=subprocess.STDOUT, pass_fds=(3, 4), preexec_fn=wire)
        finally:
            os.close(to_browser_r)
            os.close(from_browser_w)
        self._next_id = 0
        self._messages: queue.Queue = queue.Queue()
        self._pending: list[dict] = []  # read but not yet asked for
        self.events: list[dict] = []  # every event seen, in order
        threading.Thread(target=self._read, daemon=True).start()
        self.session: str | None = None

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                self._messages.put(None)  # the browser closed its end
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._messages.put(json.loads(message))

    def _wait(self, match, what: str) -> dict:
        """The first message (already read or still to come) that `match` accepts."""
        for i, message in enumerate(self._pending):
            if match(message):
                return self._pending.pop(i)
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            try:
                message = self._messages.get(timeout=max(left, 0))
            except queue.Empty:
                raise ChromiumError(f"no {what} within {self.timeout:.0f} s; browser log:\n{self.log_tail()}") from None
            if message is None:
                raise ChromiumError(f"the browser exited while waiting for {what} (exit code "
                                    f"{self.proc.poll()}); browser log:\n{self.log_tail()}")
            if "method" in message:
                self.events.append(message)
            if match(message):
                return message
            self._pending.append(message)

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        """Send one command (to the page's session unless `session` is False) and return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        reply = self._wait(lambda m, i=self._next_id: m.get("id") == i, f"reply to {method}")
        if "error" in reply:
            raise ChromiumError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_event(self, method: str) -> dict:
        return self._wait(lambda m: m.get("method") == method and m.get("sessionId") == self.session,
                          f"event {method}")

    def open_page(self, width: int, height: int) -> None:
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True},
                                 session=False)["sessionId"]
        self.send("Page.enable")
        self.send("Network.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def log_tail(self, lines: int = 20) -> str:
        self._log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                os.write(self._to_browser, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log_file.close()


@dataclass
class PageReport:
    """What a page did in the browser."""
    images: list[dict]  # src (first 80 characters), complete, width, height (natural)
    resources: list[str]  # resource URLs the page's performance timeline lists
    requests: list[str] = field(default_factory=list)  # every URL the page requested (DevTools Network events)
    failed: list[str] = field(default_factory=list)  # requests that failed, with the reason
    height: int = 0  # the page's full height in CSS pixels
    title: str = ""
    screenshot: bytes = b""  # PNG


def open_report(report: Path, binary: str, workdir: Path, width: int = 1280, max_height: int = 0,
                timeout: float = 30.0) -> PageReport:
    """Load `report` in headless Chromium, wait for its load event, and return what it loaded and
    requested with a PNG of the page (the full page, or its top `max_height` pixels if that is > 0)."""
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    browser = Chromium(binary, profile, workdir / "chromium.log", timeout=timeout)
    try:
        browser.open_page(width, 800)
        browser.send("Page.navigate", {"url": Path(report).resolve().as_uri()})
        browser.wait_event("Page.loadEventFired")  # every image has loaded or failed by then
        state = browser.send("Runtime.evaluate", {"expression": PAGE_STATE, "returnByValue": True})
        if "exceptionDetails" in state:
            raise ChromiumError(f"evaluating the page failed: {state['exceptionDetails']}")
        state = state["result"]["value"]
        height = state["height"] if max_height <= 0 else min(state["height"], max_height)
        shot = browser.send("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}})
        events = [e for e in browser.events if "method" in e and e.get("sessionId") == browser.session]
        by_id = {e["params"]["requestId"]: e["params"]["request"]["url"]
                 for e in events if e["method"] == "Network.requestWillBeSent"}
        failed = [f"{by_id.get(e['params']['requestId'], '?')[:120]}: {e['params'].get('errorText')}"
                  for e in events if e["method"] == "Network.loadingFailed"]
        return PageReport(images=state["images"], resources=state["resources"], requests=list(by_id.values()),
                          failed=failed, height=state["height"], title=state["title"],
                          screenshot=base64.b64decode(shot["data"]))
    finally:
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="a comparison's report.html")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in pixels (default 1280)")
    parser.add_argument("--max-height", type=int, default=2000,
                        help="crop the page to its top N pixels; 0 for the full page (default 2000)")
    args = parser.parse_args()
    binary = find_chromium()
    if binary is None:
        sys.exit("no Chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="report-screenshot-") as work:
        page = open_report(args.report, binary, Path(work), width=args.width, max_height=args.max_height)
    broken = [i["src"] for i in page.images if i["width"] == 0]
    if broken:
        sys.exit(f"{len(broken)} of {len(page.images)} images did not load: {broken}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(page.screenshot)
    print(f"wrote {args.out}: {len(page.screenshot) / 1024:.0f} KB, {args.width} px wide, page "
          f"{page.height} px high, {len(page.images)} images")


if __name__ == "__main__":
    main()
