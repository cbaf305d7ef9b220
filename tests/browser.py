"""Headless Chromium driven through the DevTools protocol: load a page from disk, inspect it, screenshot it.

Only the test suite uses this. It needs Debian's ``chromium`` (``make test``
installs it when missing and run as root; see ``tests/browser/ensure_chromium.sh``)
and the ``websocket-client`` package (the ``test`` extra).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium executable: ``$AIS_CHROMIUM`` or the first candidate on PATH."""
    env = os.environ.get("AIS_CHROMIUM")
    if env:
        return env
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless Chromium with one page; a context manager."""

    def __init__(self, executable: str, width: int = 1200, height: int = 900, timeout: float = 60.0) -> None:
        self.executable, self.width, self.height, self.timeout = executable, width, height, timeout
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen | None = None
        self._profile = tempfile.mkdtemp(prefix="ais-chromium-")
        self._ws = None

    def __enter__(self) -> "Browser":
        import websocket

        cmd = [
            self.executable, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--allow-file-access-from-files",
            f"--user-data-dir={self._profile}", "--remote-debugging-port=0",
            f"--window-size={self.width},{self.height}", "about:blank",
        ]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            port = self._wait_for_port()
            pages = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10).read())
            page = next(p for p in pages if p.get("type") == "page")
            self._ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=self.timeout,
                                                   suppress_origin=True)
            self.call("Page.enable")
            self.call("Runtime.enable")
        except BaseException:
            self.close()
            raise
        return self

    def _wait_for_port(self) -> int:
        # Chromium prints "DevTools listening on ws://127.0.0.1:PORT/..." on stderr.
        deadline = time.monotonic() + self.timeout
        seen = []
        assert self._proc is not None and self._proc.stderr is not None
        while time.monotonic() < deadline:
            line = self._proc.stderr.readline()
            if not line:
                if self._proc.poll() is not None:
                    break
                continue
            seen.append(line)
            match = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if match:
                return int(match.group(1))
        raise RuntimeError("Chromium did not start:\n" + "".join(seen[-20:]))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result (events in between are skipped)."""
        assert self._ws is not None
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def wait_event(self, name: str) -> dict[str, Any]:
        assert self._ws is not None
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            message = json.loads(self._ws.recv())
            if message.get("method") == name:
                return message.get("params", {})
        raise TimeoutError(name)

    def open(self, path: str | os.PathLike) -> None:
        """Load a local file and wait for its load event."""
        self.call("Page.navigate", url=Path(path).resolve().as_uri())
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed, released) at the centre of the first element matching ``selector``."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        if box is None:
            raise LookupError(f"no element matches {selector!r}")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def type_text(self, selector: str, text: str) -> None:
        """Focus the element matching ``selector``, clear it and type ``text`` as keyboard input."""
        self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.focus(); e.select(); }})()")
        if text:
            self.call("Input.insertText", text=text)
        else:
            self.press("Backspace")

    def press(self, key: str) -> None:
        """Press and release one key (``ArrowRight``, ``ArrowLeft``, ``Escape``, ``Enter``, ``Backspace``) on the focused page."""
        codes = {"ArrowLeft": 37, "ArrowUp": 38, "ArrowRight": 39, "ArrowDown": 40, "Escape": 27, "Enter": 13, "Backspace": 8}
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=codes[key],
                      nativeVirtualKeyCode=codes[key])

    def select(self, selector: str, value: str) -> None:
        """Choose ``value`` in a ``<select>`` as a user would (the value, then a ``change`` event)."""
        self.evaluate(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.value = {json.dumps(value)};"
                      " e.dispatchEvent(new Event('change', {bubbles: true})); })()")

    def screenshot(self, path: str | os.PathLike) -> None:
        """A PNG of the whole page (beyond the viewport)."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        Path(path).write_bytes(base64.b64decode(data))

    def close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except OSError:
                pass
            self._ws = None
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=30)
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            self._proc = None
        shutil.rmtree(self._profile, ignore_errors=True)

    def __exit__(self, *exc: object) -> None:
        self.close()
