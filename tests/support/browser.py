"""Browser tests on Playwright (sync API), driving the system Chromium; nothing is downloaded.

Chromium is Debian's package, found by :func:`find_chromium` (``$CHROMIUM``, else ``chromium`` or
``chromium-browser`` on PATH; ``scripts/ensure_chromium.sh`` installs it) and handed to Playwright as
``executable_path``. Never run ``playwright install``: no Playwright-built browser is used.

The fixtures below are exposed to the tests by ``tests/e2e/conftest.py``:

``chromium``
    The binary (session). Without one the test skips, or fails when ``CI`` is set. Depend on it in
    fixtures that build something expensive for a browser test, so the skip comes first.
``browser_session``
    One headless Chromium for the session, launched when the first test needs a page.
``page``
    A fresh browser context (1366x900, nothing shared with other tests) and a page in it.
``page_events``
    What happened in that context from its start (see :class:`PageEvents`): ``console_errors``,
    ``requests`` and ``dialogs``. Dialogs are dismissed at once, so a page never hangs on one.

Usage::

    def test_x(page, page_events):
        page.goto("file:///tmp/report.html")        # waits for the load event
        expect(page.locator("#verdict")).to_contain_text("anomalies")
        page.locator("input[name=username]").fill("admin")
        assert page_events.console_errors == [] and page_events.dialogs == []

While Playwright's sync API is running, the test process's main thread has a running asyncio loop
(Playwright's own): ``asyncio.run`` would fail there. So the browser is stopped after a test when the
next one does not use a page (see :func:`pytest_runtest_teardown`), and launched again if a later
test does: one launch for a run of browser tests in a row, and no Playwright during other tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect, sync_playwright

VIEWPORT = {"width": 1366, "height": 900}
#: Milliseconds an action, a wait or an ``expect`` may take (Playwright's own expect default is 5 s).
TIMEOUT_MS = 30_000
_SESSION_KEY = pytest.StashKey["BrowserSession"]()


class BrowserError(RuntimeError):
    """``$CHROMIUM`` names no executable."""


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


def launch_args() -> list[str]:
    """Chromium flags on top of Playwright's own (which has --no-sandbox, --no-first-run and the like)."""
    args = ["--disable-gpu", "--disable-background-networking"]
    if _small_dev_shm():
        args.append("--disable-dev-shm-usage")
    return args


class BrowserSession:
    """One headless Chromium under Playwright, launched on first use; :meth:`stop` ends both."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.launches = 0
        self._playwright: Playwright | None = None
        self._browser: Browser | None = None

    @property
    def browser(self) -> Browser:
        if self._browser is None or not self._browser.is_connected():
            self.stop()
            self._playwright = sync_playwright().start()
            try:
                self._browser = self._playwright.chromium.launch(
                    executable_path=self.executable, headless=True, args=launch_args()
                )
            except BaseException:
                self.stop()
                raise
            self.launches += 1
        return self._browser

    @property
    def running(self) -> bool:
        return self._playwright is not None

    def new_context(self, **options: Any) -> BrowserContext:
        """A fresh context (own cookies, storage, cache) with the report viewport and the long timeouts."""
        context = self.browser.new_context(viewport=VIEWPORT, device_scale_factor=1, **options)
        context.set_default_timeout(TIMEOUT_MS)
        return context

    def stop(self) -> None:
        """Close the browser and the Playwright driver; safe to call twice."""
        browser, playwright = self._browser, self._playwright
        self._browser = self._playwright = None
        try:
            if browser is not None and browser.is_connected():
                browser.close()
        finally:
            if playwright is not None:
                playwright.stop()


@dataclass
class PageEvents:
    """Everything the pages of a context did, recorded from its start.

    ``console_errors``: ``console.error``/``console.assert`` calls, browser log entries of level error
    (a resource that failed to load, a 404 for ``/favicon.ico`` on http pages) and uncaught exceptions.
    ``requests``: every URL requested, frames and workers included, in order (Playwright reports no
    ``data:`` URIs). ``dialogs``: alert/confirm/prompt/beforeunload, each dismissed at once.
    """

    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    dialogs: list[dict[str, str]] = field(default_factory=list)

    def watch(self, context: BrowserContext) -> None:
        context.on("request", lambda request: self.requests.append(request.url))
        context.on("console", self._console)
        context.on("weberror", lambda error: self.console_errors.append(f"uncaught exception: {error.error}"))
        context.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "assert"):
            where = message.location.get("url", "")
            self.console_errors.append(f"console.{message.type}: {message.text} {where}".strip())

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(
            {"type": dialog.type, "message": dialog.message, "url": dialog.page.url if dialog.page else ""}
        )
        dialog.dismiss()


def screenshot(page: Page, path: str | os.PathLike) -> Path:
    """Save a PNG of the first screen (the viewport, scrolled to the top) to ``path`` (folders created)."""
    page.evaluate("window.scrollTo(0, 0)")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=target)
    return target


# --------------------------------------------------------------------------- fixtures and hook


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary (skip without one, fail under CI)."""
    return require_chromium()


@pytest.fixture(scope="session")
def browser_session(chromium: str, pytestconfig: pytest.Config) -> Iterator[BrowserSession]:
    expect.set_options(timeout=TIMEOUT_MS)
    session = BrowserSession(chromium)
    pytestconfig.stash[_SESSION_KEY] = session
    try:
        yield session
    finally:
        del pytestconfig.stash[_SESSION_KEY]
        session.stop()


@pytest.fixture
def page_events() -> PageEvents:
    return PageEvents()


@pytest.fixture
def page(browser_session: BrowserSession, page_events: PageEvents) -> Iterator[Page]:
    """A new page in a new context of the session's browser; the context is closed after the test."""
    context = browser_session.new_context()
    page_events.watch(context)
    try:
        yield context.new_page()
    finally:
        context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """After the test's own teardown: stop the browser unless the next test uses a page too."""
    try:
        return (yield)
    finally:
        session = item.config.stash.get(_SESSION_KEY, None)
        if session is not None and session.running:
            if nextitem is None or "browser_session" not in getattr(nextitem, "fixturenames", ()):
                session.stop()
