"""Headless Chromium driven over the DevTools protocol, for checking that a report page loads offline.

The protocol runs over --remote-debugging-pipe (fd 3 in, fd 4 out, messages ended by NUL), so no port and
no websocket library are needed, and Chromium can run in a network namespace of its own (`unshare -n`)
where there is no network to reach at all. Where namespaces are not allowed, the page is loaded with the
network emulated offline; either way every request the page makes is recorded.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars"]
TIMEOUT_S = 60.0

FIGURES_JS = """
Array.from(document.querySelectorAll('figure')).map(f => {
  const e = f.querySelector('img, svg');
  const r = e ? e.getBoundingClientRect() : {width: 0, height: 0};
  return {id: f.id, tag: e ? e.tagName.toLowerCase() : null, width: r.width, height: r.height,
          decoded: e && e.tagName === 'IMG' ? (e.complete && e.naturalWidth > 0) : !!e};
})
"""


class DevToolsError(RuntimeError):
    pass


def chromium_binary() -> str | None:
    return CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")


def network_namespace_prefix() -> list[str]:
    """`unshare -n` (root) or `unshare -rn` (user namespace) when this host allows one, else nothing."""
    if shutil.which("unshare") is None:
        return []
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        if subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return []


@dataclass
class PageLoad:
    url: str
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    figures: list[dict] = field(default_factory=list)
    screenshot: bytes = b""
    isolated: bool = False  # loaded inside a network namespace without network
    evaluated: object = None  # what the caller's expression returned in the page


class Chromium:
    def __init__(self, profile_dir: Path, binary: str | None = None):
        binary = binary or chromium_binary()
        if binary is None:
            raise DevToolsError("chromium not found: install chromium (Debian: apt-get install chromium)")
        self.prefix = network_namespace_prefix()
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Puts the pipes on fds 3 and 4, where Chromium expects them, just before exec (dash cannot
        # redirect fds above 9; a preexec_fn could clobber subprocess's own error pipe).
        script = ("import fcntl, os, sys\n"
                  "high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]\n"
                  "os.dup2(high[0], 3); os.dup2(high[1], 4)\n"
                  "os.execv(sys.argv[3], sys.argv[3:])\n")
        self.log = profile_dir / "chromium.log"
        profile_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-c", script, str(to_browser_r), str(from_browser_w), binary,
                 *FLAGS, "--remote-debugging-pipe",
                 f"--user-data-dir={profile_dir / 'profile'}", "about:blank"],
                pass_fds=(to_browser_r, from_browser_w), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def close(self) -> None:
        with contextlib.suppress(DevToolsError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self._to_browser)
        os.close(self._from_browser)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read_message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DevToolsError(f"chromium did not answer in time; see {self.log}")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise DevToolsError(f"chromium exited ({self.proc.poll()}); see {self.log}: "
                                        + self.log.read_text(errors="replace")[-800:])
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = TIMEOUT_S) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise DevToolsError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = TIMEOUT_S) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._read_message(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def load(self, path: Path, width: int = 1366, height: int = 900, media: str = "screen",
             full_page_px: int = 0, expression: str = "") -> PageLoad:
        """Opens path offline; returns every request, failure and error, the figures' sizes, a screenshot, and
        the value of expression (JavaScript) evaluated in the loaded page.

        The screenshot shows the first screen, or up to full_page_px pixels of the page when given.
        """
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.send(f"{domain}.enable", session=session)
        self.send("Network.emulateNetworkConditions", {"offline": True, "latency": 0, "downloadThroughput": -1,
                                                       "uploadThroughput": -1}, session=session)
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                                                         "deviceScaleFactor": 1, "mobile": False}, session=session)
        self.send("Emulation.setEmulatedMedia", {"media": media}, session=session)
        url = path.resolve().as_uri()
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session=session)
        self.wait_for("Page.loadEventFired")
        figures = self.send("Runtime.evaluate", {"expression": FIGURES_JS, "returnByValue": True},
                            session=session)["result"].get("value", [])
        evaluated = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                              session=session)["result"].get("value") if expression else None
        capture = {"format": "png"}
        if full_page_px:
            size = self.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
            capture.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size["width"], "scale": 1,
                                                             "height": min(size["height"], full_page_px)})
        shot = self.send("Page.captureScreenshot", capture, session=session)
        result = PageLoad(url=url, figures=figures, screenshot=base64.b64decode(shot["data"]),
                          isolated=bool(self.prefix), evaluated=evaluated)
        urls = {}
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Network.requestWillBeSent":
                urls[params["requestId"]] = params["request"]["url"]
                result.requests.append(params["request"]["url"])
            elif method == "Network.loadingFailed":
                result.failed.append(f"{urls.get(params['requestId'], '?')}: {params.get('errorText')}")
            elif method == "Runtime.exceptionThrown":
                result.errors.append(json.dumps(params.get("exceptionDetails", {}))[:500])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                result.errors.append(json.dumps(params.get("args", []))[:500])
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                entry = params["entry"]
                result.errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}")
        self.send("Target.closeTarget", {"targetId": target})
        return result
