"""The console's pure parts: query strings to searches (tables and a property), masking,
languages, the login rate limit and sessions on a test clock, the users file, and every
text of a template translated into French."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialguard.central.store import Filters
from dialguard.console import i18n
from dialguard.console.sessions import LoginLimiter, Sessions
from dialguard.console.users import BadUsers, Role, Users, add_user, read_users, remove_user
from dialguard.console.views import (
    BadInput,
    day_bounds,
    local_of,
    mask,
    parse_export,
    parse_search,
)

PARIS = ZoneInfo("Europe/Paris")
CONSOLE = Path(__file__).resolve().parents[2] / "src" / "dialguard" / "console"


def ms(text: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(text).timestamp() * 1000)


@pytest.mark.parametrize(
    "query, filters",
    [
        ({}, Filters()),
        ({"number": "06 12 34 56 78"}, Filters(number="+33612345678")),
        ({"number": "0033612345678"}, Filters(number="+33612345678")),
        ({"number": "+33 6 12 34 56 78"}, Filters(number="+33612345678")),
        ({"reason": "no_consent", "result": "DENY"}, Filters(reason="NO_CONSENT", result="DENY")),
        ({"campaign": " demo-press "}, Filters(campaign="demo-press")),
        ({"since": "2026-11-30", "until": "2026-11-30"},
         Filters(since_ms=ms("2026-11-30T00:00+01:00"), until_ms=ms("2026-12-01T00:00+01:00"))),
        ({"since": "2026-03-29", "until": "2026-03-29"},  # 23 hours: the clocks go forward
         Filters(since_ms=ms("2026-03-29T00:00+01:00"), until_ms=ms("2026-03-30T00:00+02:00"))),
        ({"since": "2026-11-30T14:00", "until": "2026-11-30T15:30"},
         Filters(since_ms=ms("2026-11-30T14:00+01:00"), until_ms=ms("2026-11-30T15:30+01:00"))),
        ({"degraded": "1", "kind": "decision", "node": "n2", "principal": "ACME"},
         Filters(degraded=True, kind="decision", node="n2", principal="ACME")),
    ],
)  # fmt: skip
def test_a_query_string_is_a_search(query: dict[str, str], filters: Filters) -> None:
    assert parse_search(query, PARIS).filters == filters


@pytest.mark.parametrize(
    "query, field",
    [
        ({"number": "hello"}, "number"),
        ({"result": "maybe"}, "result"),
        ({"reason": "NO CONSENT"}, "reason"),
        ({"kind": "anything"}, "kind"),
        ({"since": "30/11/2026"}, "since"),
        ({"until": "2026-02-30"}, "until"),
        ({"since": "2026-12-02", "until": "2026-12-01"}, "until"),
        ({"campaign": "x" * 200}, "campaign"),
        ({"principal": "a\nb"}, "principal"),
        ({"after": "12.x y"}, "after"),
        ({"order": "sideways"}, "order"),
    ],
)
def test_a_bad_field_says_which(query: dict[str, str], field: str) -> None:
    with pytest.raises(BadInput) as raised:
        parse_search(query, PARIS)
    assert raised.value.name == field and "\n" not in raised.value.message


@given(st.dictionaries(st.sampled_from(["number", "campaign", "principal", "result", "reason",
                                        "node", "kind", "since", "until", "degraded", "order",
                                        "after"]), st.text(max_size=40)))  # fmt: skip
def test_any_query_string_is_a_search_or_one_bad_field(query: dict[str, str]) -> None:
    try:
        search = parse_search(query, PARIS)
    except BadInput as exc:
        assert exc.name in query and exc.message
        return
    assert search.link().startswith("/search")
    if search.after is not None:
        assert search.after[0] >= 0


def test_the_page_links_keep_the_search() -> None:
    search = parse_search({"campaign": "demo-press", "after": "17.ab", "order": "oldest"}, PARIS)
    assert search.after == (17, "ab") and not search.newest_first
    assert search.link(after=None) == "/search?campaign=demo-press&order=oldest"
    assert search.link(after="18.cd").endswith("campaign=demo-press&order=oldest&after=18.cd")


def test_an_export_needs_a_range() -> None:
    with pytest.raises(BadInput):
        parse_export({"format": "jsonl"}, PARIS)
    filters, fmt, masked = parse_export(
        {"since": "2026-11-30", "until": "2026-11-30", "format": "csv", "mask": "1"}, PARIS
    )
    assert (fmt, masked) == ("csv", True) and filters.since_ms == ms("2026-11-30T00:00+01:00")
    with pytest.raises(BadInput):
        parse_export({"since": "2026-11-30", "until": "2026-11-30", "format": "xml"}, PARIS)


@pytest.mark.parametrize(
    "number, shown",
    [("+33612345678", "+336••••••78"), ("+262692123456", "+262•••••••56"), ("112", "112"),
     ("3179", "3179"), ("", "")],
)  # fmt: skip
def test_masked_numbers_keep_the_country_and_the_last_two_digits(number: str, shown: str) -> None:
    assert mask(number) == shown


def test_the_callee_s_time_is_the_record_s() -> None:
    assert local_of({"local_time": "2026-11-30T20:50:36+04:00"}) == "2026-11-30 20:50:36 +04:00"
    assert local_of({}) == ""
    assert day_bounds(date(2026, 10, 25), PARIS)[1] - day_bounds(date(2026, 10, 25), PARIS)[0] == (
        25 * 3_600_000
    )


@pytest.mark.parametrize(
    "header, language",
    [("fr-FR,fr;q=0.9,en;q=0.8", "fr"), ("en-GB,en;q=0.9,fr;q=0.8", "en"),
     ("de-DE,fr;q=0.5", "fr"), ("de-DE", "en"), ("", "en"), ("fr;q=0,en", "en"),
     ("en;q=0.2,fr-CA;q=0.8", "fr"), ("fr;q=abc", "en")],
)  # fmt: skip
def test_the_language_from_accept_language(header: str, language: str) -> None:
    assert i18n.negotiate(header) == language


def test_every_text_of_the_console_has_its_french() -> None:
    """Each `_("...")` of a template and each `translate("...")` of a page is in FRENCH."""
    texts: set[str] = set()
    for template in (CONSOLE / "templates").glob("*.html"):
        texts |= set(re.findall(r'_\("([^"]+)"\)', template.read_text(encoding="utf-8")))
    for module in CONSOLE.glob("*.py"):
        source = module.read_text(encoding="utf-8")
        for found in re.findall(r'translate\(\s*((?:"[^"]*"\s*)+)\)', source):
            texts.add("".join(re.findall(r'"([^"]*)"', found)))
        texts |= set(re.findall(r'error_page\(\s*request,\s*\d+,\s*"([^"]+)"', source))
    texts |= {role.value for role in Role}
    missing = sorted(text for text in texts if text not in i18n.FRENCH)
    assert len(texts) > 100 and missing == []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_login_limit_counts_failures_per_name_and_per_address() -> None:
    clock = Clock()
    limiter = LoginLimiter(per_user=3, per_address=5, window_s=600, clock=clock)
    for _ in range(3):
        assert limiter.wait("10.0.0.1", "Alice") == 0
        limiter.failed("10.0.0.1", "Alice")
    assert 599 <= limiter.wait("10.0.0.9", "alice") <= 600  # the name, from anywhere
    assert limiter.wait("10.0.0.1", "bob") == 0
    limiter.failed("10.0.0.1", "bob")
    limiter.failed("10.0.0.1", "carol")
    assert limiter.wait("10.0.0.1", "dave") > 0  # five from the address
    clock.now += 601
    assert limiter.wait("10.0.0.1", "alice") == 0  # the window has passed
    limiter.failed("10.0.0.2", "erin")
    limiter.succeeded("erin")
    assert limiter.wait("10.0.0.3", "erin") == 0


def test_a_session_ends_after_its_lifetime_or_when_idle() -> None:
    clock = Clock()
    sessions = Sessions(lifetime_s=3600, idle_s=600, clock=clock)
    first = sessions.open("alice", Role.COMPLIANCE, "hash", "127.0.0.1")
    assert len(first.id) == 43 and len(first.csrf) == 43 and first.id != first.csrf
    for _ in range(5):
        clock.now += 500
        assert sessions.get(first.id) is first  # each request starts the idle time again
    clock.now += 1200
    assert sessions.get(first.id) is None  # past its lifetime, busy or not
    second = sessions.open("bob", Role.VIEWER, "hash", "127.0.0.1")
    clock.now += 601
    assert sessions.get(second.id) is None and sessions.get("") is None


def test_the_users_file(tmp_path: Path) -> None:
    path = tmp_path / "data" / "users.json"
    add_user(path, "alice", Role.COMPLIANCE, "a long enough one", replace=False)
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(BadUsers, match="already a user"):
        add_user(path, "alice", Role.VIEWER, "a long enough one", replace=False)
    add_user(path, "alice", Role.VIEWER, "another long one", replace=True)
    users = Users(path)
    assert users.verify("alice", "another long one") is not None
    assert users.verify("alice", "a long enough one") is None
    assert users.verify("nobody", "another long one") is None
    assert read_users(path)["alice"].role is Role.VIEWER
    assert "argon2id" in path.read_text()
    for name, password in (("bad name", "long enough pw"), ("ok", "short")):
        with pytest.raises(BadUsers):
            add_user(path, name, Role.VIEWER, password, replace=False)
    remove_user(path, "alice")
    assert users.current() == {}
    path.write_text("{not json")
    with pytest.raises(BadUsers, match="not a console users file"):
        read_users(path)
