"""Headless Chromium for the dashboard tests: Debian's build (`make browser` installs it), driven by Playwright.
`playwright install` is never needed: it downloads browsers from a CDN this project does not rely on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO

CHROMIUM = Path(os.environ.get("RAGLOOP_CHROMIUM", "/usr/bin/chromium"))
# Without the background-networking flags Chromium keeps calling home, which a closed network answers slowly.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]  # fmt: skip
# Every wait in these tests is for content (a run's name, an alias), never a fixed delay; this limit only says
# when to give up. Sized for a slow, loaded 2-core machine, where MLflow's page still read "Loading..." after 5 s.
TIMEOUT_MS = 120_000


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where the screenshots go: $RAGLOOP_TEST_OUTPUT/browser, by default test-output/browser in the repo."""
    out = Path(os.environ.get("RAGLOOP_TEST_OUTPUT") or REPO / "test-output") / "browser"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module", autouse=True)
def chromium() -> Path:
    """Fail (never skip) before any server starts when the browser is missing: a skipped UI check reads as green."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make browser` (apt-get install --no-install-recommends "
                    "chromium), or point RAGLOOP_CHROMIUM at a Chromium binary", pytrace=False)  # fmt: skip
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.fail("the browser tests need Playwright: pip install -c constraints.txt -e '.[dev]'", pytrace=False)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:  # stops Playwright's driver process on the way out
        browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser) -> Iterator:
    """A fresh browser context (no cookies, no storage) per test, with every wait at TIMEOUT_MS: the context's
    actions and navigations, and `expect(...)` assertions, whose own default (5 s) the context does not change."""
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()
