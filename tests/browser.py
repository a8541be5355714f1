"""Headless Chromium for the studio and docs tests: Debian's ``chromium`` package (installed by
``make test``), driven by Playwright's Python package. Never a downloaded browser."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
#: --no-sandbox: the tests may run as root. The background-networking flags stop Chromium's own
#: calls to Google's hosts, which a closed network refuses many at a time.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium():
    """Yields a launched headless Chromium, closed afterwards. For a module-scoped fixture: the
    Playwright sync API marks an asyncio loop as running in this thread while it is open, which
    would break later tests that call ``asyncio.run``."""
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is not installed; `make test` installs it (make browser)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def only_loopback(context, refused: list[str]) -> None:
    """Abort every request of ``context`` to a host other than 127.0.0.1, recording its URL in
    ``refused``: the page then runs as on a machine without network."""

    def route(r):
        url = r.request.url
        host = url.split("/")[2].split(":")[0] if "://" in url else ""
        if url.startswith(("data:", "blob:")) or host == "127.0.0.1":
            r.continue_()
        else:
            refused.append(url)
            r.abort()

    context.route("**/*", route)
