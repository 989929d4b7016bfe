"""The console in a real browser: Debian's headless Chromium driven by Playwright, against
a real `dialguard console` process reading a real SQLite store shipped from a real
journal, and a real Redis.

It is refused without a login; it logs in, checks the figures on Today against the
journal, searches a number, opens a decision and the number's history, reads the lists,
runs an export and checks the file; a form without its CSRF token is refused; a viewer
cannot export. Each page's Server-Timing header is printed (`-s` shows them).

DIALGUARD_SCREENSHOTS=1 saves a screenshot of each page into docs/console/ (for
docs/supervisors.md): the console then shows a working day after today at 17:40 (its
hidden --at), so that the pictures show a day's calls whatever the hour of the run.
Skipped, with one line, where no Chromium is installed (`make test` installs Debian's
`chromium` when it can).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time as clock
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import pytest

from dialguard.numbers import normalise
from tests.console.site import (
    KNOWN,
    PARIS,
    PASSWORDS,
    Site,
    day_range,
    env_without_dialguard,
    make_site,
    working_day_after,
)
from tests.redis_server import RedisServer, free_port, running_redis

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "console"
SCREENSHOTS = os.environ.get("DIALGUARD_SCREENSHOTS") == "1"
# As the issue asks: a headless Chromium that talks to nothing but the console.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class Served:
    site: Site
    base: str
    timings: list[tuple[str, str]]


@pytest.fixture(scope="module")
def browser_path() -> str:
    found = chromium()
    if found is None:
        pytest.skip("no Chromium (Debian's chromium package; `make test` installs it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install -e '.[dev]')")
    return found


@pytest.fixture(scope="module")
def served(browser_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with running_redis() as redis_server:
        yield from _serve(tmp_path_factory.mktemp("browser"), redis_server)


def _serve(directory: Path, redis_server: RedisServer) -> Iterator[Served]:
    now = datetime.now(UTC)
    extra: list[str] = []
    if SCREENSHOTS:
        now = datetime.combine(working_day_after(date.today()), time(17, 40), PARIS)
        extra = ["--at", now.isoformat()]
    site = make_site(directory, redis_server.url, now, count=420)
    port = free_port()
    console = subprocess.Popen(
        [Path(sys.executable).parent / "dialguard", "console", "--config", site.config_path,
         "--port", str(port), *extra],
        env=env_without_dialguard(site.env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        end = clock.monotonic() + 30
        while not _answers(port):
            if console.poll() is not None or clock.monotonic() > end:
                console.kill()
                _, err = console.communicate()
                pytest.fail(f"dialguard console did not listen: {err[-2000:]}")
            clock.sleep(0.05)
        yield Served(site, f"http://127.0.0.1:{port}", [])
    finally:
        console.terminate()
        try:
            console.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            console.kill()
            console.communicate()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def chrome(browser_path: str, served: Served) -> Iterator[Any]:
    """The browser; after the site (whose making runs asyncio, which Playwright's sync
    API, running a loop of its own in this thread, would refuse)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def new_page(chrome: Any, served: Served, locale: str = "en-GB") -> Any:
    context = chrome.new_context(
        viewport={"width": 1280, "height": 900}, locale=locale, accept_downloads=True
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors

    def timing(response: Any) -> None:
        if response.request.resource_type == "document":
            path = response.url.removeprefix(served.base)
            served.timings.append((path, response.headers.get("server-timing", "")))

    page.on("response", timing)
    return page


def shoot(page: Any, name: str) -> None:
    if SCREENSHOTS:
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def log_in(page: Any, served: Served, name: str) -> None:
    page.goto(served.base + "/")
    assert page.url.startswith(served.base + "/login")
    page.fill("input[name=user]", name)
    page.fill("input[name=password]", PASSWORDS[name])
    page.click("section.login button[type=submit]")
    page.wait_for_url(served.base + "/")


def number_of(text: str) -> int:
    return int(text.replace(",", "").replace("\u202f", ""))


# --- the tests ----------------------------------------------------------------------------


def test_without_a_login_nothing_but_the_login_page(chrome: Any, served: Served) -> None:
    page = new_page(chrome, served)
    e164 = normalise(KNOWN[1]).e164
    for path in ("/", f"/search?number={e164}", "/lists", "/exports"):
        page.goto(served.base + path)
        assert page.url.startswith(served.base + "/login?next="), path
        assert page.locator("#results, #figures, #lists, #exports").count() == 0
        assert "demo-" not in page.content()  # no campaign, no record: only the form
    refused = page.request.post(served.base + "/exports", form={"since": "2026-01-01"})
    assert refused.status == 403
    shoot(page, "login")
    page.context.close()


def test_a_compliance_officer_s_day(chrome: Any, served: Served) -> None:
    site = served.site
    page = new_page(chrome, served)
    log_in(page, served, "alice")

    # Today: the figures are the journal's.
    expected = site.expected_stats()
    assert expected["decisions"] > 0
    for name in ("decisions", "allowed", "denied", "degraded"):
        shown = page.inner_text(f'[data-figure="{name}"]')
        assert number_of(shown) == expected[name], name
    assert page.inner_text('[data-figure="deny_rate"]') == f"{expected['deny_rate'] * 100:.1f}%"
    assert page.inner_text('[data-figure="pending"]') == "1"
    for chart in ("chart-reason", "chart-campaign", "chart-hour"):
        assert page.evaluate(f"Chart.getChart('{chart}') !== undefined"), chart
    reasons = page.locator("#by-reason tbody tr").count()
    assert reasons == len(expected["by_reason"])
    assert page.inner_text("#nodes tbody tr td >> nth=0") == "n1"
    shoot(page, "today")

    # Search a number, spelt as a consumer says it.
    page.click("header nav >> text=Search")
    page.fill("input[name=number]", KNOWN[2])
    page.click("#search-form button[type=submit]")
    e164 = normalise(KNOWN[2]).e164
    journal = sorted(
        (r for r in site.records() if r.get("number") == e164),
        key=lambda r: (r["ts"], r["id"]),
        reverse=True,
    )
    assert journal
    ids = page.locator("#results tbody a.id").all_inner_texts()
    assert ids == [r["id"] for r in journal][:50]
    shoot(page, "search")

    # A decision: every rule, the evidence, the policy, the call.
    chosen = next((r for r in journal if r.get("kind") == "decision" and r.get("evidence")
                   and len(r["evidence"]) > 1), journal[0])  # fmt: skip
    page.click(f"#results a.id >> text={chosen['id']}")
    assert page.inner_text("#verdict").startswith(f"{chosen['result']} {chosen['reason']}")
    assert page.locator("#rules tbody tr").count() == len(chosen["rules"])
    assert chosen["policy"]["hash"] in page.inner_text("#policy")
    assert e164 in page.inner_text("#facts")
    shoot(page, "decision")

    # ...and the number's history.
    page.click("#history-link")
    events = page.locator("#events tbody a.id").all_inner_texts()
    assert events == [r["id"] for r in reversed(journal)]
    shoot(page, "history")

    page.click("header nav >> text=Lists")
    assert page.locator("#lists tbody tr").count() >= 5
    shoot(page, "lists")

    # An export of the day: the journal's lines of that day, and a manifest that says so.
    page.click("header nav >> text=Exports")
    day = site.day.isoformat()
    page.fill("input[name=since]", day)
    page.fill("input[name=until]", day)
    page.click("#export-form button[type=submit]")
    page.wait_for_selector("#exports tr.fresh")
    with page.expect_download() as download:
        page.click("#exports tr.fresh a.download")
    body = Path(download.value.path()).read_bytes()
    start, end = day_range(site.day)
    lines = [line for line in site.journal_lines() if start <= json.loads(line)["ts"] < end]
    exported = [line for line in body.splitlines() if json.loads(line)["kind"] != "export"]
    assert exported == [line for line in lines if json.loads(line)["kind"] != "export"]
    with page.expect_download() as download:
        page.click("#exports tr.fresh a.manifest")
    manifest = json.loads(Path(download.value.path()).read_bytes())
    assert manifest["sha256"] == hashlib.sha256(body).hexdigest()
    assert manifest["records"] == len(body.splitlines()) and manifest["exported_by"] == "alice"
    recorded = site.records()[-1]
    assert recorded["kind"] == "export" and recorded["operator"] == "alice"
    assert recorded["sha256"] == manifest["sha256"]
    shoot(page, "exports")

    # A form without its CSRF token, sent with the session's cookie: refused.
    forged = page.request.post(served.base + "/exports", form={"since": day, "until": day})
    assert forged.status == 403
    assert site.records()[-1]["id"] == recorded["id"]  # nothing more exported

    # In French.
    page.click("header .lang >> text=FR")
    page.click("header nav >> text=Aujourd'hui")
    assert "Taux de refus" in page.text_content("#figures")
    shoot(page, "today-fr")
    assert page.errors == []
    page.context.close()
    for path, timing in served.timings:
        assert "total;dur=" in timing, path
        print(f"server-timing {path[:60]}: {timing}")


def test_a_viewer_cannot_export_and_sees_masked_numbers(chrome: Any, served: Served) -> None:
    page = new_page(chrome, served, locale="fr-FR")
    log_in(page, served, "bob")
    assert "Taux de refus" in page.text_content("#figures")  # French from Accept-Language
    assert page.locator("header nav >> text=Exports").count() == 0
    response = page.goto(served.base + "/exports")
    assert response is not None and response.status == 403
    page.goto(served.base + "/search?kind=decision")
    numbers = page.locator("#results td.number").all_inner_texts()
    assert numbers and all("•" in number for number in numbers if len(number) > 6)
    shoot(page, "search-viewer")
    page.context.close()
