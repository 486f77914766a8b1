"""Browser fixtures for the end-to-end tests (Playwright driving the system Chromium): see tests/support/browser.py."""

from browser import (  # noqa: F401  (fixtures and the hook that stops the browser between browser tests)
    browser_session,
    chromium,
    page,
    page_events,
    pytest_runtest_teardown,
)
