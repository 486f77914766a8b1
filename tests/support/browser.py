"""A small headless-Chromium driver for browser tests, over the Chrome DevTools Protocol (CDP).

It starts the system Chromium (Debian's package; nothing is downloaded) with::

    --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking

plus a free DevTools port, a throwaway ``--user-data-dir`` and the window size, and talks to it
over a websocket (``websockets``, already pinned in requirements.txt). Usage::

    from browser import Browser

    with Browser.launch() as page:           # skips the test if there is no Chromium (fails under CI)
        page.open("file:///tmp/report.html")  # waits for the load event
        assert page.evaluate("document.title") == "..."
        page.type_text("#username", "admin")  # real text input: React's onChange fires
        page.click("button[type=submit]")
        page.wait_for("location.pathname === '/'")
        page.screenshot("var/screenshots/x.png")
        assert page.console_errors == [] and page.dialogs == []
        page.requests                         # every request URL the page made, in order

Everything the page does is recorded from the moment the browser starts: ``console_errors``
(``console.error``/``console.assert``, uncaught exceptions, browser log entries of level error
such as a failed resource), ``requests`` (every URL, data: URIs included) and ``dialogs``
(alert/confirm/prompt/beforeunload; each is dismissed at once so the page never hangs).
On http(s) pages Chromium also asks for ``/favicon.ico``: it shows in ``requests``, and a 404
there shows in ``console_errors``. ``open`` waits for a load event, so use it for a new document
(not a ``#fragment`` change); for pages that render later, follow it with ``wait_for``.
Leaving the ``with`` block always closes the browser, stops its processes and removes the
profile, also when the test failed.

Chromium is found by :func:`find_chromium`: ``$CHROMIUM``, else ``chromium`` or
``chromium-browser`` on PATH (``scripts/ensure_chromium.sh`` installs it).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REQUIRED_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
)
VIEWPORT = (1366, 900)
DEFAULT_TIMEOUT = 30.0


class BrowserError(RuntimeError):
    """Chromium did not start, a CDP command failed, or something was not there in time."""


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def find_chromium() -> str | None:
    """The Chromium to use: ``$CHROMIUM`` (must exist), else ``chromium``/``chromium-browser`` on PATH."""
    named = os.environ.get("CHROMIUM")
    if named:
        found = shutil.which(named)
        if not found:
            raise BrowserError(f"CHROMIUM={named!r} is not an executable")
        return found
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def require_chromium() -> str:
    """The Chromium binary; ``pytest.skip`` without one, unless ``CI`` is set: then the test fails."""
    binary = find_chromium()
    if binary:
        return binary
    reason = "no Chromium: install Debian's 'chromium' package (scripts/ensure_chromium.sh) or set CHROMIUM"
    if _in_ci():
        pytest.fail(f"{reason} (CI is set, so this is a failure)", pytrace=False)
    pytest.skip(reason)


def _small_dev_shm() -> bool:
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return True
    return stat.f_bavail * stat.f_frsize < 1 << 30  # containers often have 64 MB: renderers would crash


class Browser:
    """One headless Chromium with one page (tab); every method acts on that page.

    Build it with :meth:`launch` and use it as a context manager.
    """

    def __init__(
        self, binary: str, *, viewport: tuple[int, int] = VIEWPORT, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.binary = binary
        self.viewport = viewport
        self.timeout = timeout
        self.console_errors: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[dict[str, str]] = []
        self._profile = tempfile.mkdtemp(prefix="chromium-test-")
        self._stderr = open(Path(self._profile).parent / (Path(self._profile).name + ".stderr"), "w+b")  # noqa: SIM115
        self._proc: subprocess.Popen | None = None
        self._ws: Any = None
        self._reader: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._closed = False
        self._session: str | None = None

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def launch(cls, binary: str | None = None, **kwargs: Any) -> Browser:
        """Start Chromium (skipping the test when there is none, see :func:`require_chromium`)."""
        browser = cls(binary or require_chromium(), **kwargs)
        try:
            browser._start()
        except BaseException:
            browser.close()
            raise
        return browser

    @property
    def command(self) -> list[str]:
        width, height = self.viewport
        cmd = [
            self.binary,
            *REQUIRED_FLAGS,
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={self._profile}",
            f"--window-size={width},{height}",
        ]
        if _small_dev_shm():
            cmd.append("--disable-dev-shm-usage")
        return [*cmd, "about:blank"]

    def _start(self) -> None:
        from websockets.sync.client import connect

        self._proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            start_new_session=True,
        )
        port_file = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while True:
            lines = port_file.read_text().splitlines() if port_file.exists() else []
            if len(lines) >= 2:
                break
            if self._proc.poll() is not None:
                raise BrowserError(
                    f"Chromium exited with {self._proc.returncode} before it listened: {self._stderr_text()}"
                )
            if time.monotonic() > deadline:
                raise BrowserError(
                    f"Chromium did not open its DevTools port in {self.timeout:.0f}s: {self._stderr_text()}"
                )
            time.sleep(0.05)
        url = f"ws://127.0.0.1:{int(lines[0])}{lines[1]}"
        self._ws = connect(
            url, max_size=None, proxy=None, ping_interval=None, open_timeout=self.timeout, compression=None
        )
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()

        target = self._send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self._session = self._send(
            "Target.attachToTarget", {"targetId": target, "flatten": True}, session=False
        )["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        width, height = self.viewport
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def close(self) -> None:
        """Close the browser, end its processes and remove its profile; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        proc = self._proc
        if self._ws is not None:
            if proc is not None and proc.poll() is None:
                try:
                    self._ws.send(json.dumps({"id": next(self._ids), "method": "Browser.close"}))
                except Exception:  # noqa: BLE001 - the connection may already be gone
                    pass
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001
                pass
        if proc is not None and proc.returncode is None:  # started and not reaped yet
            if not _exited(proc, 5):
                _signal_group(proc.pid, signal.SIGTERM)
                if not _exited(proc, 5):
                    _signal_group(proc.pid, signal.SIGKILL)
            # The browser has exited but is not reaped yet, so its process group id cannot have been
            # reused: end any helper left in that group, then reap.
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self._stderr.close()
        os.unlink(self._stderr.name)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _stderr_text(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-3000:]

    # ------------------------------------------------------------------ protocol

    def _read_loop(self) -> None:
        try:
            for raw in self._ws:
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        self._replies[message["id"]] = message
                        self._lock.notify_all()
                else:
                    self._on_event(message)
        except Exception:  # noqa: BLE001 - connection closed: waiters see it through _closed / timeouts
            pass
        finally:
            with self._lock:
                self._replies[-1] = {"error": {"message": "connection to Chromium closed"}}
                self._lock.notify_all()

    def _on_event(self, event: dict[str, Any]) -> None:
        method, params = event.get("method"), event.get("params", {})
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = params.get("args", [])
            text = " ".join(str(a.get("value", a.get("description", a.get("type")))) for a in args)
            self.console_errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description") or details.get("text", "")
            self.console_errors.append(f"uncaught exception: {description}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.console_errors.append(
                f"log {entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip()
            )
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(
                {
                    "type": params.get("type", ""),
                    "message": params.get("message", ""),
                    "url": params.get("url", ""),
                }
            )
            # Dismiss at once (without waiting for the reply: this is the reader thread).
            self._ws.send(json.dumps({"id": next(self._ids), "method": "Page.handleJavaScriptDialog",
                                      "params": {"accept": False}, "sessionId": event.get("sessionId")}))  # fmt: skip
        with self._lock:
            self._events.append(event)
            self._lock.notify_all()

    def _send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: bool = True,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        if self._closed or self._ws is None:
            raise BrowserError(f"{method}: the browser is closed")
        msg_id = next(self._ids)
        message: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        self._ws.send(json.dumps(message))
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._lock:
            while msg_id not in self._replies:
                if -1 in self._replies:
                    raise BrowserError(f"{method}: connection to Chromium closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"{method}: no answer from Chromium in {timeout or self.timeout:.0f}s")
                self._lock.wait(left)
            reply = self._replies.pop(msg_id)
        if "error" in reply:
            raise BrowserError(
                f"{method}: {reply['error'].get('message')} {reply['error'].get('data', '')}".strip()
            )
        return reply.get("result", {})

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> dict[str, Any]:
        """Send any CDP command to the page; return its result (raises :class:`BrowserError`)."""
        return self._send(method, params, timeout=timeout)

    def _wait_event(
        self,
        method: str,
        since: int,
        predicate: Callable[[dict], bool] = lambda p: True,
        timeout: float | None = None,
    ) -> dict:
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._lock:
            while True:
                for event in self._events[since:]:
                    if event.get("method") == method and predicate(event.get("params", {})):
                        return event["params"]
                since = len(self._events)
                left = deadline - time.monotonic()
                if left <= 0 or -1 in self._replies:
                    raise BrowserError(f"no {method} within {timeout or self.timeout:.0f}s")
                self._lock.wait(left)

    # ------------------------------------------------------------------ page actions

    def open(self, url: str, *, timeout: float | None = None) -> None:
        """Navigate to ``url`` (``file://``, ``http://``, ...) and wait for its load event."""
        with self._lock:
            since = len(self._events)
        result = self.send("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise BrowserError(f"could not open {url}: {result['errorText']}")
        self._wait_event("Page.loadEventFired", since, timeout=timeout)

    def evaluate(self, expression: str, *, timeout: float | None = None) -> Any:
        """The JSON value of a JS expression in the page (promises are awaited); JS errors raise."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True, "userGesture": True},
            timeout=timeout,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(
                f"JS error in {expression!r}: {details.get('exception', {}).get('description') or details.get('text')}"
            )
        return result.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout: float | None = None, interval: float = 0.1) -> Any:
        """Poll a JS expression until it is truthy; return its value (for pages that render later)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression!r} still falsy after {timeout or self.timeout:.0f}s")
            time.sleep(interval)

    def _center(self, selector: str) -> tuple[float, float]:
        box = self.wait_for(
            f"""(() => {{
                const el = document.querySelector({json.dumps(selector)});
                if (!el) return null;
                el.scrollIntoView({{block: "center", inline: "center", behavior: "instant"}});
                const r = el.getBoundingClientRect();
                return r.width && r.height ? [r.left + r.width / 2, r.top + r.height / 2] : null;
            }})()"""
        )
        return box[0], box[1]

    def click(self, selector: str) -> None:
        """Click the centre of the first element matching ``selector`` with real mouse events."""
        x, y = self._center(selector)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            extra = {"button": "left", "clickCount": 1} if kind != "mouseMoved" else {}
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, **extra})

    def type_text(self, selector: str, text: str, *, clear: bool = True) -> None:
        """Focus an input (by clicking it) and type ``text`` as real text input (``Input.insertText``),
        so frameworks such as React see the input events; ``clear`` first selects and deletes what is there."""
        self.click(selector)
        if clear:
            self.evaluate(f"document.querySelector({json.dumps(selector)}).select?.()")
            self.press_key("Delete")
        self.send("Input.insertText", {"text": text})

    _KEYS = {
        "Enter": {"code": "Enter", "windowsVirtualKeyCode": 13, "text": "\r"},
        "Tab": {"code": "Tab", "windowsVirtualKeyCode": 9},
        "Delete": {"code": "Delete", "windowsVirtualKeyCode": 46},
        "Backspace": {"code": "Backspace", "windowsVirtualKeyCode": 8},
        "Escape": {"code": "Escape", "windowsVirtualKeyCode": 27},
    }

    def press_key(self, key: str) -> None:
        """Press and release a key in the focused element: Enter, Tab, Delete, Backspace or Escape."""
        spec = dict(self._KEYS[key])
        text = spec.pop("text", None)
        self.send(
            "Input.dispatchKeyEvent",
            {
                "type": "keyDown" if text else "rawKeyDown",
                "key": key,
                **spec,
                **({"text": text} if text else {}),
            },
        )
        self.send("Input.dispatchKeyEvent", {"type": "keyUp", "key": key, **spec})

    def set_cookie(self, name: str, value: str, url: str, **extra: Any) -> None:
        """Set a cookie for ``url`` (extra CDP ``Network.setCookie`` fields: path, httpOnly, ...)."""
        self.send("Network.setCookie", {"name": name, "value": value, "url": url, **extra})

    def screenshot(self, path: str | os.PathLike) -> Path:
        """Save a PNG of the first screen (the viewport, scrolled to the top) to ``path`` (folders created)."""
        self.evaluate("window.scrollTo(0, 0)")
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})["data"]
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(base64.b64decode(data))
        return target


def _exited(proc: subprocess.Popen, timeout: float) -> bool:
    """Wait up to ``timeout`` for ``proc`` to exit, leaving it unreaped (its pid stays reserved)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:  # already reaped
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _signal_group(pid: int, sig: int) -> None:
    """Signal the process group Chromium was started in (its own session: only its processes)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
