"""The console's server without a browser: aiohttp's test client against the real app, a
real SQLite central store shipped from a real journal, and a real Redis. Logins, CSRF,
roles, and each page's figures against the journal they come from."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from dialguard.audit import Journal
from dialguard.changes import CHANGE_KINDS, change_in
from dialguard.config import RedisSettings
from dialguard.console import pages
from dialguard.console.app import make_app, make_console
from dialguard.console.sessions import LoginLimiter
from dialguard.console.state import Console
from dialguard.numbers import normalise
from tests.console.site import (
    KNOWN,
    PARIS,
    PASSWORDS,
    PENDING_NUMBER,
    Site,
    csrf_of,
    figure,
    make_site,
    table,
    working_day_after,
)
from tests.redis_server import RedisServer, running_redis

# A working day after today, late afternoon (site.working_day_after says why after).
NOW = datetime.combine(working_day_after(date.today()), time(18, 30), PARIS)
DAY = NOW.date().isoformat()


@pytest.fixture(scope="module")
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this module's own: the site is built once, and other modules' tests
    empty the session's Redis between tests."""
    with running_redis() as server:
        yield server


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, private_redis: RedisServer) -> Site:
    return make_site(tmp_path_factory.mktemp("console"), private_redis.url, NOW)


class Browser:
    """The test client as one person's browser: its cookies, and the session's token."""

    def __init__(self, client: TestClient[Any, Any], console: Console) -> None:
        self.client = client
        self.console = console
        self.csrf = ""
        self.set_cookie: list[str] = []

    async def login(self, name: str, password: str | None = None) -> int:
        form = await (await self.client.get("/login")).text()
        answer = await self.client.post(
            "/login",
            data={
                "user": name,
                "password": PASSWORDS[name] if password is None else password,
                "csrf": csrf_of(form),
                "next": "/",
            },
            allow_redirects=False,
        )
        self.set_cookie = answer.headers.getall("Set-Cookie", [])
        if answer.status == 303:
            self.csrf = csrf_of(await self.page("/search"))
        return answer.status

    async def page(self, path: str, status: int = 200) -> str:
        answer = await self.client.get(path, allow_redirects=False)
        text = await answer.text()
        assert answer.status == status, (path, answer.status, text[:500])
        return text

    async def post(self, path: str, data: dict[str, str], csrf: bool = True) -> Any:
        body = {**data, "csrf": self.csrf} if csrf else data
        return await self.client.post(path, data=body, allow_redirects=False)


async def open_browser(site: Site, **config: Any) -> tuple[Browser, TestClient[Any, Any]]:
    console = make_console(site.config, clock=lambda: NOW)
    for name, value in config.items():
        setattr(console, name, value)
    client = TestClient(TestServer(make_app(console)))
    await client.start_server()
    return Browser(client, console), client


@pytest.fixture
async def browser(site: Site) -> AsyncIterator[Browser]:
    opened, client = await open_browser(site)
    yield opened
    await client.close()


@pytest.fixture
async def alice(browser: Browser) -> Browser:
    assert await browser.login("alice") == 303
    return browser


@pytest.fixture
async def bob(site: Site) -> AsyncIterator[Browser]:
    opened, client = await open_browser(site)
    assert await opened.login("bob") == 303
    yield opened
    await client.close()


def count(text: str) -> int:
    return int(text.replace(",", ""))


# --- logins -------------------------------------------------------------------------------

PAGES = ["/", "/search", f"/search?number={KNOWN[0]}", "/history?number=0612345678", "/lists",
         "/exports", "/decision/0123456789abcdef"]  # fmt: skip


async def test_every_page_needs_a_login_and_static_files_do_not(browser: Browser) -> None:
    for path in PAGES:
        answer = await browser.client.get(path, allow_redirects=False)
        assert answer.status == 303, path
        assert answer.headers["Location"].startswith("/login?next="), path
        assert "+336" not in await answer.text()
    refused = await browser.post("/exports", {"since": DAY, "until": DAY}, csrf=False)
    assert refused.status == 403
    style = await browser.client.get("/static/console.css")
    assert style.status == 200 and "text/css" in style.headers["Content-Type"]
    chart = await browser.client.get("/static/vendor/chart.umd.min.js")
    assert chart.status == 200 and b"Chart.js v4" in (await chart.read())[:200]


async def test_a_login_opens_a_session_and_logout_ends_it(browser: Browser) -> None:
    assert await browser.login("alice") == 303
    sent = next(c for c in browser.set_cookie if c.startswith("dialguard_session="))
    assert "HttpOnly" in sent and "SameSite=Strict" in sent and "Path=/" in sent
    assert "Secure" not in sent  # [console] secure_cookies = false: plain http on 127.0.0.1
    value = sent.split(";")[0].split("=", 1)[1]
    assert len(value) == 43  # 256 random bits, nothing else
    await browser.page("/")
    assert (await browser.post("/logout", {})).status == 303
    # The same cookie, sent again by hand, no longer opens anything.
    answer = await browser.client.get(
        "/", allow_redirects=False, headers={"Cookie": f"dialguard_session={value}"}
    )
    assert answer.status == 303 and answer.headers["Location"].startswith("/login")


async def test_wrong_passwords_are_refused_then_rate_limited(browser: Browser) -> None:
    for _ in range(5):
        assert await browser.login("alice", "not her password") == 401
    # Five failures for this name: even the right password waits now.
    refused = await browser.client.get("/login")
    form = csrf_of(await refused.text())
    answer = await browser.client.post(
        "/login",
        data={"user": "alice", "password": PASSWORDS["alice"], "csrf": form},
        allow_redirects=False,
    )
    assert answer.status == 429 and int(answer.headers["Retry-After"]) > 0
    assert "Too many failed logins" in await answer.text()
    assert await browser.login("bob") == 303  # another name from the same address: allowed


async def test_the_limit_per_address_covers_every_name(site: Site) -> None:
    opened, client = await open_browser(site, limiter=LoginLimiter(per_address=3))
    try:
        for name in ("x1", "x2", "x3"):
            form = csrf_of(await (await client.get("/login")).text())
            answer = await client.post(
                "/login", data={"user": name, "password": "whatever it is", "csrf": form}
            )
            assert answer.status == 401
        assert await opened.login("alice") == 429
    finally:
        await client.close()


async def test_a_removed_user_or_a_new_password_ends_the_session(
    site: Site, tmp_path: Path
) -> None:
    opened, client = await open_browser(site)
    try:
        assert await opened.login("bob") == 303
        await opened.page("/")
        replaced = await asyncio.to_thread(
            site.run, "console", "user", "add", "bob", "--role", "viewer", "--replace",
            "--password-stdin", stdin="a brand new password\n",
        )  # fmt: skip
        assert replaced.code == 0, replaced
        await opened.page("/", status=303)
        assert await opened.login("bob", "a brand new password") == 303
        removed = await asyncio.to_thread(site.run, "console", "user", "remove", "bob")
        assert removed.code == 0
        await opened.page("/", status=303)
        assert await opened.login("bob", "a brand new password") == 401
    finally:
        again = await asyncio.to_thread(
            site.run, "console", "user", "add", "bob", "--role", "viewer", "--replace",
            "--password-stdin", stdin=PASSWORDS["bob"] + "\n",
        )  # fmt: skip
        assert again.code == 0
        await client.close()


async def test_after_login_only_a_path_of_the_console(browser: Browser) -> None:
    for target, landing in (("//evil.example/x", "/"), ("https://evil.example", "/"),
                            ("/\\evil.example", "/"), ("/search?reason=NO_CONSENT",
                            "/search?reason=NO_CONSENT")):  # fmt: skip
        browser.client.session.cookie_jar.clear()
        form = csrf_of(await (await browser.client.get("/login")).text())
        answer = await browser.client.post(
            "/login",
            data={"user": "alice", "password": PASSWORDS["alice"], "csrf": form, "next": target},
            allow_redirects=False,
        )
        assert answer.headers["Location"] == landing, target


# --- CSRF ---------------------------------------------------------------------------------


async def test_a_form_without_its_token_is_refused(alice: Browser, site: Site) -> None:
    records = len(site.records())
    exports = sorted(alice.console.settings.exports_dir.glob("export-*"))
    form = {"since": DAY, "until": DAY, "format": "jsonl"}
    for sent in ({**form}, {**form, "csrf": "forged"}):
        answer = await alice.client.post("/exports", data=sent, allow_redirects=False)
        assert answer.status == 403
        assert "CSRF" in await answer.text()
    assert (await alice.client.post("/logout", data={}, allow_redirects=False)).status == 403
    await alice.page("/")  # still logged in: the logout was refused too
    assert len(site.records()) == records  # no export was recorded
    assert sorted(alice.console.settings.exports_dir.glob("export-*")) == exports
    # The login form has its own token (a cookie of its own and the field).
    answer = await alice.client.post(
        "/login", data={"user": "alice", "password": PASSWORDS["alice"]}, allow_redirects=False
    )
    assert answer.status == 403


# --- roles --------------------------------------------------------------------------------


async def test_a_viewer_cannot_export_and_sees_numbers_masked_in_lists(
    bob: Browser, site: Site
) -> None:
    for path in ("/exports", "/exports/export-0123.jsonl", "/exports/export-0123.jsonl/manifest"):
        await bob.page(path, status=403)
    refused = await bob.post("/exports", {"since": DAY, "until": DAY, "format": "jsonl"})
    assert refused.status == 403
    assert ">Exports<" not in await bob.page("/")
    rows = table(await bob.page(f"/search?since={DAY}&until={DAY}&kind=decision"), "results")
    numbers = [row[5] for row in rows]
    assert numbers and all("•" in n for n in numbers if len(n) > 6), numbers[:5]
    # ...and a decision, one at a time, with its whole number.
    record = next(r for r in site.day_records() if r.get("kind") == "decision")
    page = await bob.page(f"/decision/{record['id']}")
    assert record["number"] in page


async def test_compliance_sees_whole_numbers(alice: Browser, site: Site) -> None:
    rows = table(await alice.page(f"/search?since={DAY}&until={DAY}&kind=decision"), "results")
    assert all("•" not in row[5] for row in rows)
    assert {row[5] for row in rows} <= {r.get("number") for r in site.day_records()}


# --- Today --------------------------------------------------------------------------------


async def test_today_figures_are_the_journal_s(alice: Browser, site: Site) -> None:
    assert (await asyncio.to_thread(site.run, "audit", "ship")).code == 0
    expected = site.expected_stats()
    page = await alice.page("/")
    assert expected["decisions"] > 100 and expected["degraded"] >= 3
    for name in ("decisions", "allowed", "denied", "degraded"):
        assert count(figure(page, name)) == expected[name], name
    assert figure(page, "deny_rate") == f"{expected['deny_rate'] * 100:.1f}%"
    assert count(figure(page, "pending")) == 1  # the do-not-call Redis never took
    reasons = {(row[0], row[1]): count(row[2]) for row in table(page, "by-reason")}
    assert reasons == {(r["result"], r["reason"]): r["decisions"] for r in expected["by_reason"]}
    campaigns = {row[0]: [count(c) for c in row[1:4]] for row in table(page, "by-campaign")}
    assert campaigns == {
        r["campaign"]: [r["decisions"], r["allowed"], r["denied"]] for r in expected["by_campaign"]
    }
    hours = table(page, "by-hour")
    allowed = [count(c) for c in hours[0][1:]]
    assert allowed == [r["allowed"] for r in expected["by_hour"]]
    nodes = table(page, "nodes")
    assert [row[0] for row in nodes] == ["n1"]
    assert count(nodes[0][1]) == len(site.records()) and nodes[0][5] == "intact at ingest"
    pending = table(page, "pending")
    assert [row[3] for row in pending] == [PENDING_NUMBER] and pending[0][2] == "dnc-add"
    charts = json.loads(re.search(r'id="chart-data">(.*?)</script>', page, re.S).group(1))  # type: ignore[union-attr]
    assert sum(charts["hour"]["allowed"]) + sum(charts["hour"]["denied"]) == expected["decisions"]


async def test_today_parses_only_the_changes_redis_has_not_taken(
    alice: Browser, site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three days of a busy site hold thousands of changes, nearly all taken by Redis:
    # parsing each line was most of Today's time at 10 M records. Redis is asked first.
    assert (await asyncio.to_thread(site.run, "audit", "ship")).code == 0
    parsed: list[bytes] = []

    def counted(line: bytes) -> Any:
        parsed.append(line)
        return change_in(line)

    monkeypatch.setattr(pages, "change_in", counted)
    page = await alice.page("/")
    changes = [r for r in site.records() if r.get("kind") in CHANGE_KINDS]
    assert len(changes) >= 2  # all but one applied when recorded: not pending, not parsed
    pending = table(page, "pending")
    assert [row[3] for row in pending] == [PENDING_NUMBER]
    assert [orjson.loads(line)["number"] for line in parsed] == [PENDING_NUMBER]


async def test_another_day_and_a_bad_day(alice: Browser) -> None:
    empty = await alice.page("/?day=2026-11-29")
    assert count(figure(empty, "decisions")) == 0
    bad = await alice.page("/?day=30/11/2026")
    assert "is not a date" in bad and count(figure(bad, "decisions")) > 0  # today shown


async def test_pending_changes_are_unknown_without_redis(site: Site) -> None:
    config = site.config
    nobody = RedisSettings("redis://127.0.0.1:1/0", "dialguard:", 200)
    opened, client = await open_browser(site, config=replace(config, redis=nobody))
    try:
        assert await opened.login("alice") == 303
        page = await opened.page("/")
        assert figure(page, "pending") == "?" and "Pending changes unknown" in page
        assert count(figure(page, "decisions")) > 0  # the store still answers
        lists = await opened.page("/lists")
        assert "The lists cannot be read" in lists
    finally:
        await client.close()


# --- Search -------------------------------------------------------------------------------


async def test_a_number_in_any_spelling(alice: Browser, site: Site) -> None:
    e164 = normalise(KNOWN[1]).e164
    expected = sorted(
        (r for r in site.records() if r.get("number") == e164), key=lambda r: (-r["ts"], r["id"])
    )
    assert len(expected) >= 2
    for spelling in (KNOWN[1], e164, "0033" + e164[3:], e164[:3] + " " + e164[3:]):
        page = await alice.page("/search?" + _query(number=spelling))
        ids = [row[8] for row in table(page, "results")]
        assert set(ids) == {r["id"] for r in expected}, spelling
    bad = await alice.page("/search?number=not+a+number", status=400)
    assert "is not a French national" in bad or "contains characters" in bad


def _query(**fields: str) -> str:
    from urllib.parse import urlencode

    return urlencode(fields)


async def test_pages_of_a_day_newest_first_then_oldest_first(alice: Browser, site: Site) -> None:
    expected = sorted(site.day_records(), key=lambda r: (r["ts"], r["id"]), reverse=True)
    seen: list[str] = []
    path = f"/search?since={DAY}&until={DAY}"
    pages = 0
    while path:
        page = await alice.page(path)
        rows = table(page, "results")
        assert len(rows) <= 50
        seen += [row[8] for row in rows]
        found = re.search(r'<a href="([^"]+)" rel="next"', page)
        path = found.group(1).replace("&amp;", "&") if found else ""
        pages += 1
    assert seen == [r["id"] for r in expected] and pages == len(expected) // 50 + 1
    oldest = table(await alice.page(f"/search?since={DAY}&until={DAY}&order=oldest"), "results")
    assert [row[8] for row in oldest] == [r["id"] for r in reversed(expected)][:50]


@pytest.mark.parametrize(
    "query, keep",
    [
        ({"result": "DENY"}, lambda r: r.get("result") == "DENY"),
        ({"reason": "no_consent"}, lambda r: r.get("reason") == "NO_CONSENT"),
        ({"campaign": "demo-press", "result": "ALLOW"},
         lambda r: r.get("campaign") == "demo-press" and r.get("result") == "ALLOW"),
        ({"degraded": "1"}, lambda r: bool(r.get("degraded"))),
        ({"kind": "outcome"}, lambda r: r.get("kind") == "outcome"),
        ({"principal": "ACME", "node": "n1", "since": DAY + "T12:00", "until": DAY + "T14:00"},
         lambda r: r.get("principal") == "ACME" and "T12" <= _paris(r["ts"]) < "T14"),
        ({"principal": "nobody"}, lambda r: False),
    ],
)  # fmt: skip
async def test_filters_select_what_the_journal_holds(
    alice: Browser, site: Site, query: dict[str, str], keep: Any
) -> None:
    newest = sorted(site.records(), key=lambda r: (r["ts"], r["id"]), reverse=True)
    expected = [r["id"] for r in newest if keep(r)]
    page = await alice.page("/search?" + _query(**query))
    shown = [row[8] for row in table(page, "results") if len(row) > 1]
    assert shown == expected[:50], query


def _paris(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, PARIS).strftime("T%H")


@pytest.mark.parametrize(
    "query, field",
    [("result=MAYBE", "ALLOW or DENY"), ("reason=no%20such", "is not a reason code"),
     ("since=yesterday", "is not a date"), ("since=2026-12-01&until=2026-11-01", "ends before"),
     ("after=123", "not a position"), ("kind=nothing", "one of"), ("order=up", "newest or")],
)  # fmt: skip
async def test_bad_search_fields_are_one_line(alice: Browser, query: str, field: str) -> None:
    page = await alice.page("/search?" + query, status=400)
    assert field in page


# --- a decision, a number's history -------------------------------------------------------


async def test_a_decision_shows_every_rule_its_evidence_policy_and_call(
    alice: Browser, site: Site
) -> None:
    record = next(
        r for r in site.day_records() if r.get("reason") == "CONSENT" and r.get("evidence")
    )
    page = await alice.page(f"/decision/{record['id']}")
    rules = table(page, "rules")
    assert [row[0] for row in rules] == [rule["rule"] for rule in record["rules"]]
    assert [row[1] for row in rules] == [rule["outcome"] for rule in record["rules"]]
    assert [row[3] for row in rules] == [rule["detail"] for rule in record["rules"]]
    evidence = dict(table(page, "evidence"))
    assert set(evidence) == set(record["evidence"])
    assert record["evidence"]["consent"]["proof_ref"] in evidence["consent"]
    policy = table(page, "policy")
    assert [row[1] for row in policy] == [record["policy"][k] for k in ("name", "version", "hash")]
    call = dict(table(page, "channel"))
    assert call["Channel"] == record["channel"] and call["Unique id"] == record["uniqueid"]
    assert call["Adapter"] == "fastagi"
    facts = dict(table(page, "facts"))
    assert facts["Number"] == record["number"] and facts["Callee's local time"].startswith(
        record["local_time"][:10]
    )
    assert f'href="/history?number=%2B{record["number"][1:]}"' in page
    await alice.page("/decision/0000000000000000000000dead", status=404)
    await alice.page("/decision/..%2F..%2Fetc", status=404)


async def test_a_number_s_history_is_its_records_in_order_and_its_lists(
    alice: Browser, site: Site
) -> None:
    e164 = normalise(KNOWN[0]).e164  # on the sample do-not-call list
    expected = sorted((r for r in site.records() if r.get("number") == e164), key=lambda r: r["ts"])
    page = await alice.page("/history?" + _query(number="06.12.34.56.78"))
    assert [row[7] for row in table(page, "events")] == [r["id"] for r in expected]
    held = table(page, "in-force")
    assert held[0][0] == "dnc" and "asked not to be called again" in held[0][1]
    consented = await alice.page("/history?" + _query(number=KNOWN[1]))
    lists = {row[0] for row in table(consented, "in-force")}
    assert "consent" in lists and "refusal" in lists  # the refusal recorded today
    assert "contains characters other than digits" in await alice.page(
        "/history?number=12ab", status=400
    )


# --- Lists --------------------------------------------------------------------------------


async def test_lists_are_what_lists_status_says(alice: Browser, site: Site) -> None:
    status = await asyncio.to_thread(site.run, "lists", "status", "--json")
    assert status.code == 0, status
    expected = [json.loads(line) for line in status.out.splitlines()]
    rows = table(await alice.page("/lists"), "lists")
    assert [(row[0], row[1], count(row[2])) for row in rows] == [
        (r["list"], r["version"], r["entries"]) for r in expected
    ]
    assert any(row[0] == "bloctel" and row[9].startswith("fresh") for row in rows)


# --- exports ------------------------------------------------------------------------------


async def test_an_export_is_audit_export_s_file_and_is_recorded(
    alice: Browser, site: Site, tmp_path: Path
) -> None:
    for fmt in ("jsonl", "csv"):
        # The store as the journal is now (the export before this one is a record too).
        assert (await asyncio.to_thread(site.run, "audit", "ship")).code == 0
        cli = tmp_path / f"cli.{fmt}"
        exported = await asyncio.to_thread(
            site.run, "audit", "export", "--since", DAY, "--until", DAY, "--format", fmt,
            "--out", cli,
        )  # fmt: skip
        assert exported.code == 0, exported
        before = len(site.records())
        answer = await alice.post("/exports", {"since": DAY, "until": DAY, "format": fmt})
        assert answer.status == 303, await answer.text()
        fresh = answer.headers["Location"].split("fresh=")[1]
        listing = await alice.page(answer.headers["Location"])
        name = f"export-{fresh}.{fmt}"
        assert name in listing
        body = await (await alice.client.get(f"/exports/{name}")).read()
        assert body == cli.read_bytes(), fmt  # byte for byte what `audit export` writes
        manifest = json.loads(await (await alice.client.get(f"/exports/{name}/manifest")).read())
        cli_manifest = json.loads(cli.with_name(cli.name + ".manifest.json").read_bytes())
        for key in ("format", "sha256", "records", "first_hash", "last_hash", "first_prev",
                    "since", "until", "timezone", "masked"):  # fmt: skip
            assert manifest[key] == cli_manifest[key], key
        assert manifest["exported_by"] == "alice" and manifest["record"] == fresh
        records = site.records()
        assert len(records) == before + 1
        recorded = records[-1]
        assert recorded["kind"] == "export" and recorded["id"] == fresh
        assert recorded["operator"] == "alice" and recorded["address"] == "127.0.0.1"
        assert recorded["sha256"] == manifest["sha256"] and recorded["records"] > 100
        mode = (alice.console.settings.exports_dir / name).stat().st_mode & 0o777
        assert mode == 0o600


async def test_a_filtered_export_holds_only_what_the_filters_select(
    alice: Browser, site: Site
) -> None:
    answer = await alice.post(
        "/exports",
        {"since": DAY, "until": DAY, "format": "jsonl", "campaign": "demo-press", "result": "DENY"},
    )
    assert answer.status == 303
    fresh = answer.headers["Location"].split("fresh=")[1]
    body = await (await alice.client.get(f"/exports/export-{fresh}.jsonl")).read()
    exported = [json.loads(line) for line in body.splitlines()]
    expected = [
        r["id"]
        for r in site.day_records()
        if r.get("campaign") == "demo-press" and r.get("result") == "DENY"
    ]
    assert [r["id"] for r in exported] == expected and expected
    assert site.records()[-1]["filters"] == {"campaign": "demo-press", "result": "DENY"}


async def test_no_export_without_its_audit_record(site: Site, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    opened, client = await open_browser(site, journal=Journal(blocker / "audit"))
    exports = opened.console.settings.exports_dir
    try:
        assert await opened.login("alice") == 303
        before = sorted(exports.glob("export-*"))
        answer = await opened.post("/exports", {"since": DAY, "until": DAY, "format": "jsonl"})
        assert answer.status == 503
        assert "its audit record cannot be written" in await answer.text()
        assert sorted(exports.glob("export-*")) == before  # its file is gone with it
    finally:
        await client.close()


async def test_a_masked_export_needs_a_key_and_pseudonymises(alice: Browser) -> None:
    refused = await alice.post("/exports", {"since": DAY, "until": DAY, "mask": "1"})
    assert refused.status == 400 and "need a key" in await refused.text()
    alice.console.mask_key = b"k" * 32
    answer = await alice.post("/exports", {"since": DAY, "until": DAY, "mask": "1"})
    assert answer.status == 303
    fresh = answer.headers["Location"].split("fresh=")[1]
    body = await (await alice.client.get(f"/exports/export-{fresh}.jsonl")).read()
    assert b'"number":"p-' in body and b"+336" not in body


# --- languages, headers -------------------------------------------------------------------


async def test_french_from_accept_language_and_the_switch(alice: Browser) -> None:
    french = await alice.client.get("/", headers={"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"})
    text = await french.text()
    assert "Décisions" in text and "Taux de refus" in text and 'lang="fr"' in text
    switched = await alice.client.get("/lang/en?next=/lists", allow_redirects=False)
    assert switched.headers["Location"] == "/lists"
    english = await alice.client.get("/", headers={"Accept-Language": "fr-FR"})
    assert "Deny rate" in await english.text()  # the switch wins over the header


async def test_every_response_says_no_cache_no_referrer_no_inline_script(alice: Browser) -> None:
    for path in ("/", "/search", "/login"):
        answer = await alice.client.get(path, allow_redirects=False)
        headers = answer.headers
        assert "script-src 'self'" in headers["Content-Security-Policy"], path
        assert "unsafe-inline" not in headers["Content-Security-Policy"]
        assert (
            headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "no-referrer"
        )
        assert headers["X-Frame-Options"] == "DENY"
        assert "total;dur=" in headers["Server-Timing"]
    today = await alice.client.get("/")
    assert re.search(r"db;dur=\d", today.headers["Server-Timing"])
    assert "<script>" not in await today.text()
