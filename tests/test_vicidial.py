"""The VICIdial sync against a real MariaDB started by the tests (tests/mariadb_server.py)
holding VICIdial's do-not-call tables, and a real Redis: both directions, deletions,
idempotent reruns, VICIdial's database down during a live addition, both number forms,
campaign lists scoped to their principal, `serve` running the sync."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from dialguard.config import load_config
from dialguard.model import DncEntry
from dialguard.numbers import normalise
from dialguard.reload import compare, in_force
from dialguard.store import Store
from dialguard.store.keys import Keys
from tests.cli_runner import Result, run_dialguard
from tests.journal import audit_records
from tests.mariadb_server import MariaDbServer, running_mariadb
from tests.redis_server import RedisServer, free_port
from tests.test_reload import make_site, serving, started
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent
SYSINT = "-SYSINT-"
KEYS = Keys("dialguard:")  # the configuration's prefix

CONFIG = """
node = "vici-test"
[redis]
url = "redis://127.0.0.1:1/0"  # DIALGUARD_REDIS_URL
timeout_ms = 2000
[server]
port = {port}
[audit]
dir = "audit"
[policy]
file = "{policy}"
[campaigns.demo-prospecting]
principal = "ACME"
purpose = "prospecting"
[campaigns.demo-survey]
principal = "ACME"
purpose = "non_commercial"
[campaigns.other-survey]
principal = "OTHER"
purpose = "non_commercial"
[vicidial]
url = "{url}"
number_form = "{form}"
interval_s = 1
max_removals = {max_removals}
[vicidial.campaigns]
SALES1 = "demo-prospecting"
SALES2 = "demo-survey"
OTHER1 = "other-survey"
"""


@pytest.fixture(scope="module")
def mariadb() -> Iterator[MariaDbServer]:
    with running_mariadb() as server:
        yield server


@dataclass
class Vici:
    """VICIdial's database, as its admin pages would change it (root, over the socket)."""

    server: MariaDbServer
    database: str

    def sql(self, statement: str, *args: object) -> list[tuple[Any, ...]]:
        with self.server.root(self.database) as db, db.cursor() as cursor:
            cursor.execute(statement, args or None)
            return list(cursor.fetchall())

    def dnc(self) -> list[str]:
        return sorted(row[0] for row in self.sql("SELECT phone_number FROM vicidial_dnc"))

    def log(self) -> list[tuple[str, str, str, str]]:
        rows = self.sql("SELECT phone_number, campaign_id, action, user FROM vicidial_dnc_log")
        return sorted((str(a), str(b), str(c), str(d)) for a, b, c, d in rows)

    def admin_adds(self, number: str, campaign: str = SYSINT, user: str = "admin1") -> None:
        """What VICIdial's admin page does: the entry, and its log row."""
        if campaign == SYSINT:
            self.sql("INSERT INTO vicidial_dnc (phone_number) VALUES (%s)", number)
        else:
            self.sql(
                "INSERT INTO vicidial_campaign_dnc (phone_number, campaign_id) VALUES (%s, %s)",
                number,
                campaign,
            )
        self.sql(
            "INSERT INTO vicidial_dnc_log VALUES (%s, %s, 'add', '2026-12-01 10:00:00', %s)",
            number,
            campaign,
            user,
        )

    def admin_deletes(self, number: str, campaign: str = SYSINT, user: str = "admin2") -> None:
        if campaign == SYSINT:
            self.sql("DELETE FROM vicidial_dnc WHERE phone_number = %s", number)
        else:
            self.sql(
                "DELETE FROM vicidial_campaign_dnc WHERE phone_number = %s AND campaign_id = %s",
                number,
                campaign,
            )
        self.sql(
            "INSERT INTO vicidial_dnc_log VALUES (%s, %s, 'delete', '2026-12-02 11:00:00', %s)",
            number,
            campaign,
            user,
        )


@dataclass
class Site:
    directory: Path
    redis: RedisServer
    vici: Vici

    @property
    def config(self) -> Path:
        return self.directory / "dialguard.toml"

    def env(self, **more: str) -> dict[str, str]:
        return {
            "DIALGUARD_CONFIG": str(self.config),
            "DIALGUARD_REDIS_URL": self.redis.url,
            "DIALGUARD_VICIDIAL_PASSWORD": self.vici.server.password,
            **more,
        }

    def run(self, *args: str, **env: str) -> Result:
        return run_dialguard(list(args), env=self.env(**env))

    def sync(self, *args: str, **env: str) -> Result:
        result = self.run("vicidial", "sync", "--once", *args, **env)
        assert "Traceback" not in result.err
        return result

    def synced(self, *args: str) -> dict[str, Any]:
        result = self.sync("--json", *args)
        assert result.code == 0, result
        counts: dict[str, Any] = json.loads(result.out)
        return counts

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in audit_records(self.directory / "audit") if r.get("kind") == kind]

    def dnc(self, number: str, principal: str = "ACME") -> DncEntry | None:
        """The do-not-call entry a decision for `principal` would meet."""

        async def read() -> DncEntry | None:
            store = Store.from_url(self.redis.admin_url, "dialguard:", 2000)
            try:
                facts = await store.facts(normalise(number), principal, _NOW, 30)
            finally:
                await store.close()
            return facts.dnc

        return asyncio.run(read())


# Any instant: a do-not-call entry does not depend on it.
_NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def _write_site(
    directory: Path, url: str, form: str = "national", max_removals: int = 1000
) -> None:
    text = CONFIG.format(
        port=free_port(),
        policy=ROOT / "config" / "policy" / "france.toml",
        url=url,
        form=form,
        max_removals=max_removals,
    )
    (directory / "dialguard.toml").write_text(text)


@pytest.fixture
def vici(mariadb: MariaDbServer) -> Iterator[Vici]:
    with mariadb.database() as name:
        yield Vici(mariadb, name)


@pytest.fixture
def site(tmp_path: Path, clean_redis: RedisServer, vici: Vici) -> Site:
    _write_site(tmp_path, vici.server.url(vici.database))
    return Site(tmp_path, clean_redis, vici)


def _with(site: Site, **settings: object) -> Site:
    text = site.config.read_text()
    for key, value in settings.items():
        old = next(line for line in text.splitlines() if line.startswith(f"{key} = "))
        text = text.replace(old, f"{key} = {json.dumps(value)}")
    site.config.write_text(text)
    return site


# --- VICIdial -> dialguard ----------------------------------------------------------------


def test_vicidial_entries_reach_dialguard_in_either_form_with_who_and_when(site: Site) -> None:
    vici = site.vici
    vici.admin_adds("0612345678", user="marie")  # national form
    vici.sql("INSERT INTO vicidial_dnc VALUES ('698765432')")  # nsn form, no log row
    vici.sql("INSERT INTO vicidial_dnc VALUES ('0698765432')")  # the same line again
    vici.sql("INSERT INTO vicidial_dnc VALUES ('201XXXXXXX')")  # an AREACODE entry
    vici.sql("INSERT INTO vicidial_dnc VALUES ('12')")  # a typing error

    counts = site.synced()
    assert counts["added"] == {SYSINT: 2}
    assert counts["unreadable_entries"] == 2

    first = site.dnc("0612345678")
    assert first is not None and first.reason == (
        "VICIdial internal DNC list, added by marie on 2026-12-01 10:00:00 (VICIdial's clock)"
    )
    assert site.dnc("0612345678", "OTHER") == first  # the company's list: every principal
    assert site.dnc("+33698765432") is not None
    adds = site.records("dnc-add")
    assert sorted(r["number"] for r in adds) == ["+33612345678", "+33698765432"]
    by_number = {r["number"]: r for r in adds}
    assert by_number["+33612345678"]["operator"] == "marie"
    assert by_number["+33612345678"]["vicidial_at"] == "2026-12-01 10:00:00"
    assert by_number["+33698765432"]["operator"] == "vicidial"  # no log row: who is unknown
    assert {r["adapter"] for r in adds} == {"vicidial"}
    assert {r["vicidial_list"] for r in adds} == {SYSINT}
    assert {r["principal"] for r in adds} == {""}

    # Idempotent: nothing changed in VICIdial, nothing is read or recorded again.
    again = site.synced()
    assert again["lists_read"] == [] and again["added"] == {}
    assert len(site.records("dnc-add")) == 2
    # Nor written back: they came from VICIdial.
    assert again["not_written_back"] == 2 and again["pushed"] == 0
    assert vici.dnc() == ["0612345678", "0698765432", "12", "201XXXXXXX", "698765432"]


def test_a_deletion_in_vicidial_is_a_removal_here_audited_with_its_user(site: Site) -> None:
    vici = site.vici
    vici.admin_adds("0612345678")
    vici.admin_adds("0687654321")
    site.synced()
    assert site.dnc("0612345678") is not None

    vici.admin_deletes("0612345678", user="supervisor2")
    counts = site.synced()
    assert counts["removed"] == {SYSINT: 1} and counts["added"] == {}
    assert site.dnc("0612345678") is None
    assert site.dnc("0687654321") is not None
    (removal,) = site.records("dnc-remove")
    assert removal["number"] == "+33612345678"
    assert removal["operator"] == "supervisor2"
    assert removal["adapter"] == "vicidial"
    assert removal["why"] == (
        "deleted from VICIdial internal DNC list by supervisor2 on 2026-12-02 11:00:00"
        " (VICIdial's clock)"
    )
    # Rerun: nothing more; and the number is not put back into VICIdial either.
    assert site.synced()["removed"] == {}
    assert len(site.records("dnc-remove")) == 1
    assert vici.dnc() == ["0687654321"]


def test_a_number_kept_in_one_form_and_deleted_in_the_other_stays_listed(site: Site) -> None:
    vici = site.vici
    vici.admin_adds("0612345678")
    vici.admin_adds("612345678")
    site.synced()
    assert len(site.records("dnc-add")) == 1  # one line, two spellings
    vici.admin_deletes("612345678")
    site.synced()
    assert site.dnc("0612345678") is not None and site.records("dnc-remove") == []
    vici.admin_deletes("0612345678")
    site.synced()
    assert site.dnc("0612345678") is None


def test_campaign_lists_hold_for_their_campaigns_principal_only(site: Site) -> None:
    vici = site.vici
    vici.admin_adds("0611111111", "SALES1", user="paul")
    vici.admin_adds("0622222222", "OTHER1")
    vici.admin_adds("0633333333", "NOTMAPPD")  # a campaign dialguard does not know
    counts = site.synced()
    assert counts["added"] == {"SALES1": 1, "OTHER1": 1}

    acme = site.dnc("0611111111", "ACME")
    assert acme is not None and acme.reason.startswith("VICIdial campaign SALES1 DNC list")
    assert site.dnc("0611111111", "OTHER") is None
    assert site.dnc("0622222222", "OTHER") is not None
    assert site.dnc("0622222222", "ACME") is None
    assert site.dnc("0633333333", "ACME") is None and site.dnc("0633333333", "OTHER") is None
    scoped = {r["number"]: r["principal"] for r in site.records("dnc-add")}
    assert scoped == {"+33611111111": "ACME", "+33622222222": "OTHER"}

    # A decision: every campaign of the principal is refused, another principal's not.
    acme_call = site.run("check", "0611111111", "--campaign", "demo-survey", "--json")
    other_call = site.run("check", "0611111111", "--campaign", "other-survey", "--json")
    assert json.loads(acme_call.out)["reason"] == "INTERNAL_DNC", acme_call
    assert json.loads(other_call.out)["reason"] != "INTERNAL_DNC", other_call

    # `audit history` names whose entry it is; `lists status` counts them apart.
    history = site.run("audit", "history", "0611111111", "--json")
    in_force = [json.loads(line) for line in history.out.splitlines()]
    (entry,) = [e for e in in_force if e.get("kind") == "in-force" and e["list"] == "dnc"]
    assert entry["principal"] == "ACME" and entry["why"].startswith("VICIdial campaign SALES1")
    status = site.run("lists", "status", "--json")
    assert '"dnc:principal"' in status.out, status

    # Two lists of one principal (SALES1, SALES2: both ACME) hold one entry between them.
    vici.admin_adds("0611111111", "SALES2")
    assert site.synced()["added"] == {}
    vici.admin_deletes("0611111111", "SALES1")
    site.synced()
    assert site.dnc("0611111111", "ACME") is not None  # SALES2 still holds it
    assert site.records("dnc-remove") == []
    vici.admin_deletes("0611111111", "SALES2", user="lea")
    site.synced()
    assert site.dnc("0611111111", "ACME") is None
    (removal,) = site.records("dnc-remove")
    assert removal["principal"] == "ACME" and removal["operator"] == "lea"


# --- dialguard -> VICIdial ----------------------------------------------------------------


@pytest.mark.parametrize(("form", "written"), [("national", "0612345678"), ("nsn", "612345678")])
def test_live_additions_are_written_to_vicidial_in_the_configured_form(
    site: Site, form: str, written: str
) -> None:
    _with(site, number_form=form)
    vici = site.vici
    assert site.run("dnc", "add", "06 12 34 56 78", "--operator", "alice").code == 0
    outcome = ("outcome", "0698765432", "do-not-call", "--campaign", "demo-prospecting")
    assert site.run(*outcome).code == 0
    refused = ("outcome", "0655555555", "refused", "--campaign", "demo-prospecting")
    assert site.run(*refused).code == 0  # a refusal is no do-not-call: not written
    assert site.run("dnc", "add", "+44 7911 123456").code == 0  # no country code in VICIdial
    vici.sql("INSERT INTO vicidial_dnc VALUES (%s)", "0677777777" if form == "nsn" else "677777777")
    assert site.run("dnc", "add", "0677777777").code == 0  # VICIdial has it, other form

    counts = site.synced()
    assert counts["pushed"] == 2
    assert counts["already_in_vicidial"] == 1
    assert counts["not_writable"] == 1
    other = "698765432" if form == "nsn" else "0698765432"
    seventh = "0677777777" if form == "nsn" else "677777777"
    assert vici.dnc() == sorted([written, other, seventh])
    assert vici.log() == sorted(
        [(written, SYSINT, "add", "dialguard"), (other, SYSINT, "add", "dialguard")]
    )
    # What dialguard wrote is not read back as VICIdial's own addition, and a pass run
    # again writes and reads nothing.
    assert [r for r in site.records("dnc-add") if r["adapter"] == "vicidial"] == []
    again = site.synced()
    assert again["pushed"] == 0 and again["lists_read"] == [] and again["added"] == {}
    assert len(vici.log()) == 2


def test_an_addition_made_while_vicidials_database_is_down_is_written_once_it_is_back(
    site: Site,
) -> None:
    vici = site.vici
    site.synced()
    vici.server.stop()
    try:
        assert site.run("dnc", "add", "0612345678").code == 0  # dialguard itself is up
        down = site.sync()
        assert down.code == 2, down
        assert down.err.startswith("dialguard: VICIdial's database mysql://cron@127.0.0.1:")
        assert len(down.err.splitlines()) == 1
        assert vici.server.password not in down.err + down.out
        assert site.run("vicidial", "status").out.count("journal cursor") == 1
    finally:
        vici.server.start()
    assert site.synced()["pushed"] == 1
    assert vici.dnc() == ["0612345678"]
    assert site.synced()["pushed"] == 0


def test_a_wrong_password_is_one_line_without_it(site: Site) -> None:
    wrong = "wrong-s3cret-" + site.vici.server.password
    result = site.sync(DIALGUARD_VICIDIAL_PASSWORD=wrong)
    assert result.code == 2 and "Access denied for user 'cron'" in result.err, result
    assert wrong not in result.err + result.out and len(result.err.splitlines()) == 1


def test_the_shipped_example_loads_once_uncommented(tmp_path: Path) -> None:
    """config/dialguard.toml's commented [vicidial] block is a working section."""
    lines = (ROOT / "config" / "dialguard.toml").read_text().splitlines()
    start = lines.index("# [vicidial]")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("# SALES1"))

    def uncommented(line: str) -> str:
        setting = line.startswith("# ") and (" = " in line or line.startswith("# ["))
        return line.removeprefix("# ") if setting else line

    example = [uncommented(line) for line in lines[start : end + 1]]
    text = "\n".join(lines[:start] + example + lines[end + 1 :])
    text = text.replace('file = "policy/', f'file = "{ROOT}/config/policy/')
    (tmp_path / "dialguard.toml").write_text(text)
    config = load_config(tmp_path / "dialguard.toml", env={"DIALGUARD_VICIDIAL_PASSWORD": "x"})
    assert config.vicidial is not None
    assert config.vicidial.shown == "mysql://dialguard@127.0.0.1:3306/asterisk"
    assert dict(config.vicidial.campaigns) == {"SALES1": "demo-prospecting"}
    assert config.vicidial.state == tmp_path / "../var/vicidial.sqlite3"


def test_changes_taken_while_redis_is_down_are_kept_and_not_recorded_twice(site: Site) -> None:
    site.vici.admin_adds("0612345678")
    down = site.sync(DIALGUARD_REDIS_URL="redis://127.0.0.1:1/0")
    assert down.code == 2 and "kept in the audit journal" in down.err, down
    assert len(site.records("dnc-add")) == 1  # journalled: it counts from now on
    assert site.dnc("0612345678") is None
    assert site.run("audit", "apply-pending").code == 0
    assert site.dnc("0612345678") is not None
    assert site.synced()["added"] == {}
    assert len(site.records("dnc-add")) == 1


def test_removals_beyond_max_removals_wait_for_an_operator(site: Site) -> None:
    _with(site, max_removals=2)
    vici = site.vici
    numbers = [f"061234567{i}" for i in range(5)]
    for number in numbers:
        vici.admin_adds(number)
    site.synced()
    vici.sql("DELETE FROM vicidial_dnc")  # emptied by mistake, say
    held = site.sync()
    assert held.code == 0 and "5 removals found in VICIdial's lists" in held.err
    assert all(site.dnc(n) is not None for n in numbers)
    assert site.synced()["removals_held"] == 5  # held again, pass after pass
    assert site.synced("--accept-removals")["removed"] == {SYSINT: 5}
    assert all(site.dnc(n) is None for n in numbers)


def test_a_schema_without_the_log_still_syncs_both_ways(site: Site) -> None:
    vici = site.vici
    vici.sql("DROP TABLE vicidial_dnc_log")
    vici.sql("INSERT INTO vicidial_dnc VALUES ('0612345678')")
    site.run("dnc", "add", "0698765432")
    counts = site.synced()
    assert counts["pushed"] == 1 and counts["added"] == {SYSINT: 1}
    assert vici.dnc() == ["0612345678", "0698765432"]
    (pulled,) = [r for r in site.records("dnc-add") if r["adapter"] == "vicidial"]
    assert pulled["operator"] == "vicidial" and pulled["why"] == "VICIdial internal DNC list"


def test_the_state_of_another_vicidial_database_is_refused(
    site: Site, mariadb: MariaDbServer
) -> None:
    site.synced()
    with mariadb.database() as other:
        _write_site(site.directory, mariadb.url(other))
        result = site.sync()
    assert result.code == 1
    assert "keeps the sync with 127.0.0.1:" in result.err and "remove it to start" in result.err


def test_status_shows_the_cursor_and_the_lists(site: Site) -> None:
    site.vici.admin_adds("0612345678")
    site.vici.admin_adds("0611111111", "SALES1")
    site.synced()
    # The next pass reads the journal up to its end (the first found it empty).
    assert site.synced()["not_written_back"] == 1  # the campaign list's entry is no addition
    status = site.run("vicidial", "status", "--json")
    item = json.loads(status.out)
    assert item["lists"] == {SYSINT: 1, "SALES1": 1}
    assert item["cursor"].startswith("audit-") and item["last_pass"]


# --- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('url = "postgresql://cron@h/asterisk"', "vicidial.url: must start with mysql://"),
        (
            'url = "mysql://cron:s3cret@h/asterisk"',
            "vicidial.url: 'mysql://cron:***@h/asterisk' holds a password",
        ),
        ('url = "mysql://cron@h"', "needs the database VICIdial uses"),
        ('url = "mysql://h/asterisk"', "needs a user and a host"),
        ('url = "mysql://cron@h:99999/asterisk"', "host or port unreadable"),
        ('number_form = "e164"', "vicidial.number_form: 'e164' is not one of national, nsn"),
        ("interval_s = 0", "vicidial.interval_s: 0 must be positive"),
        ("max_removals = -1", "vicidial.max_removals: -1 must be 0 (no limit) or more"),
        ('SALES1 = "nope"', "vicidial.campaigns.SALES1: 'nope' is not a configured campaign"),
        ('"TOO-LONG-ID" = "demo-survey"', "vicidial.campaigns.TOO-LONG-ID: a VICIdial"),
        ('"-SYSINT-" = "demo-survey"', "vicidial.campaigns.-SYSINT-: a VICIdial"),
    ],
)
def test_a_bad_vicidial_section_is_one_line(site: Site, line: str, expected: str) -> None:
    key = line.split(" = ")[0]
    head, section = site.config.read_text().split("[vicidial]\n")
    old = next((x for x in section.splitlines() if x.startswith(f"{key} = ")), None)
    section = section.replace(old, line) if old else section + line + "\n"
    site.config.write_text(f"{head}[vicidial]\n{section}")
    result = site.run("vicidial", "sync", "--once")
    assert result.code == 1, result
    assert expected in result.err and len(result.err.splitlines()) == 1, result.err
    assert "s3cret" not in result.err


def test_without_a_password_the_sync_and_serve_refuse_in_one_line(site: Site) -> None:
    result = site.run("vicidial", "sync", "--once", DIALGUARD_VICIDIAL_PASSWORD="")
    assert result.code == 1 and "no password for mysql://cron@127.0.0.1:" in result.err
    served = site.run("serve", DIALGUARD_VICIDIAL_PASSWORD="")
    assert served.code == 1 and "set DIALGUARD_VICIDIAL_PASSWORD" in served.err
    assert site.run("check", "0612345678", "--campaign", "demo-survey").code == 0
    secret = site.directory / "vicidial.secret"
    secret.write_text(site.vici.server.password + "\n")
    text = site.config.read_text().replace(
        "[vicidial]\n", '[vicidial]\npassword_file = "vicidial.secret"\n'
    )
    site.config.write_text(text)
    assert site.run("vicidial", "sync", "--once", DIALGUARD_VICIDIAL_PASSWORD="").code == 0


def test_a_reload_keeps_the_vicidial_section_until_a_restart(site: Site) -> None:
    old = load_config(site.config, env=site.env())
    _with(site, interval_s=30)
    new = load_config(site.config, env=site.env())
    assert compare(old, new).restart_needed == ("vicidial",)
    assert in_force(old, new).vicidial == old.vicidial


def test_no_vicidial_section_is_one_line(tmp_path: Path, clean_redis: RedisServer) -> None:
    config = tmp_path / "dialguard.toml"
    config.write_text(
        (ROOT / "config" / "dialguard.toml")
        .read_text()
        .replace('file = "policy/', f'file = "{ROOT}/config/policy/')
    )
    result = run_dialguard(["vicidial", "sync", "--once", "--config", str(config)])
    assert result.code == 1 and "no [vicidial] section" in result.err


# --- serve --------------------------------------------------------------------------------


async def test_serve_runs_the_sync_both_ways_and_stops_it(
    tmp_path: Path, clean_redis: RedisServer, vici: Vici
) -> None:
    site = make_site(tmp_path)
    (tmp_path / "vicidial.secret").write_text(vici.server.password)
    site.edit_config(
        "[policy]",
        f'[vicidial]\nurl = "{vici.server.url(vici.database)}"\npassword_file = "vicidial.secret"\n'
        'interval_s = 1\n[vicidial.campaigns]\nSALES1 = "demo-prospecting"\n[policy]',
    )
    checker = Site(tmp_path, clean_redis, vici)
    with serving(site, clean_redis.url) as running:
        await started(running)
        await wait_until(lambda: bool(running.events("vicidial_sync_started")), 10)
        helper = running.events("vicidial_sync_started")[0]["pid"]
        await asyncio.to_thread(vici.admin_adds, "0612345678")
        # Journalled first, then in Redis: wait for Redis.
        live = redis.Redis.from_url(clean_redis.admin_url)
        await wait_until(lambda: bool(live.hexists(KEYS.dnc_live, "33612345678")), 15)
        live.close()
        assert await asyncio.to_thread(checker.dnc, "0612345678") is not None
        assert [r["adapter"] for r in site.records("dnc-add")] == ["vicidial"]
        added = await asyncio.to_thread(run_dialguard, ["dnc", "add", "0698765432"], checker.env())
        assert added.code == 0, added
        await wait_until(lambda: "0698765432" in vici.dnc(), 15)
        running.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(running.process.wait, 20)
        assert running.process.returncode == 0
    assert not Path(f"/proc/{helper}").exists() or _zombie(helper)


def _zombie(pid: int) -> bool:
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    return True
