"""The `dialguard` command as an operator runs it, against a real Redis.

Contract (DESIGN.md): exit 0 on success (a DENY is a successful answer), 1 on a usage or
input error with a one-line message, 2 when a dependency (Redis, journal) is unavailable.
Most invocations run in this process through the console script's `main()`
(tests/cli_runner.py): a Python start-up per invocation made this file most of the suite's
time. What only a process shows (the installed script, its exit status, nothing printed
at interpreter exit, `serve`) runs the real script (`Cli.processes`).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import re
import subprocess
import sys
import tomllib
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from dialguard.audit import Journal
from tests.cli_runner import run_dialguard
from tests.journal import audit_records
from tests.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = REPO / "config" / "dialguard.toml"
POLICY = REPO / "config" / "policy" / "france.toml"
SAMPLES = REPO / "config" / "sample"
DIALGUARD = Path(sys.executable).parent / "dialguard"
REDIS_DOWN = "redis://127.0.0.1:1/0"
T = TypeVar("T")

# Campaigns the tests add to a copy of the shipped configuration.
PROSPECT = "t-prospect"  # ACME, prospecting, general
ENERGY = "t-energy"  # ACME, prospecting, energy_renovation (a banned sector)
TEST_CAMPAIGNS = {
    PROSPECT: {"principal": "ACME", "purpose": "prospecting", "sector": "general"},
    ENERGY: {"principal": "ACME", "purpose": "prospecting", "sector": "energy_renovation"},
}

# A Tuesday, not a holiday, 10:30 in Paris: in the consent regime (from 2026-08-11),
# within the calling hours.
AT = "2026-12-01T10:30"
# A Tuesday in the Bloctel (opt-out) regime.
AT_OPTOUT = "2026-06-02T10:30"

AUDIT_FIELDS = {
    "id", "ts", "node", "result", "reason", "rules", "number_raw", "number", "campaign",
    "principal", "purpose", "sector", "local_time", "attempts_30d", "evidence", "policy",
    "channel", "uniqueid", "callerid", "adapter", "latency_us", "degraded",
}  # fmt: skip  # and `prev`, `hash`: see test_audit_records_carry_the_hash_chain
JSON_FIELDS = {"result", "reason", "number", "local_time", "rules", "evidence", "policy"}


# --- harness ----------------------------------------------------------------------------


def toml_dumps(data: Mapping[str, Any]) -> str:
    """Enough TOML for a dialguard configuration: scalars, lists, tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, date):
            return v.isoformat()
        if isinstance(v, list):
            return "[" + ", ".join(value(item) for item in v) + "]"
        if isinstance(v, dict):  # an inline table, inside a list
            return "{" + ", ".join(f"{key(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise TypeError(f"cannot write {v!r} as TOML")

    def key(k: str) -> str:
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)

    def table(prefix: str, body: Mapping[str, Any]) -> list[str]:
        lines = [f"{key(k)} = {value(v)}" for k, v in body.items() if not isinstance(v, dict)]
        out = ([f"[{prefix}]"] if prefix else []) + lines + [""]
        for k, v in body.items():
            if isinstance(v, dict):
                out += table(f"{prefix}.{key(k)}" if prefix else key(k), v)
        return out

    return "\n".join(table("", data))


def make_config(audit_dir: Path, **campaign_overrides: dict[str, Any]) -> dict[str, Any]:
    """The shipped configuration, its audit journal moved to `audit_dir`, the policy file
    made absolute, and the test campaigns added."""
    data = tomllib.loads(SHIPPED_CONFIG.read_text(encoding="utf-8"))
    data["node"] = "test-node"
    data.pop("metrics", None)  # a fixed port: two test runs on one machine would collide
    data.pop("api", None)  # the same
    data.pop("central", None)  # its SQLite file is beside the configuration, outside tmp_path
    data.setdefault("redis", {})["timeout_ms"] = 2000
    data.setdefault("audit", {})["dir"] = str(audit_dir)
    data.setdefault("policy", {})["file"] = str(POLICY)
    campaigns = data.setdefault("campaigns", {})
    campaigns.update({name: dict(body) for name, body in TEST_CAMPAIGNS.items()})
    for name, override in campaign_overrides.items():
        campaigns[name.replace("_", "-")].update(override)
    return data


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> dict[str, Any]:
        assert self.code in (0, 2), self
        data = json.loads(self.out)
        assert isinstance(data, dict)
        return data

    @property
    def first(self) -> str:
        """The headline of a human `check`: 'RESULT REASON  number  local ...  id ...'."""
        return self.out.splitlines()[0] if self.out else ""


@dataclass(frozen=True)
class Pending:
    args: tuple[str, ...]
    proc: subprocess.Popen[str]


class Cli:
    def __init__(self, tmp: Path, redis_url: str) -> None:
        self.tmp = tmp
        self.audit_dir = tmp / "audit"
        self.config = tmp / "cfg" / "dialguard.toml"
        self.config.parent.mkdir()
        self.config.write_text(toml_dumps(make_config(self.audit_dir)), encoding="utf-8")
        self.overrides = {
            "DIALGUARD_CONFIG": str(self.config),
            "DIALGUARD_REDIS_URL": redis_url,
            "COLUMNS": "200",  # rich: no wrapping of the human output
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
        self.process_env = {**env, **self.overrides, "PYTHONUTF8": "1"}

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        if isinstance(content, str):
            path.write_text(content, encoding="utf-8", newline="")
        else:
            path.write_bytes(content)
        return path

    def spawn(self, args: Sequence[str | Path], env: Mapping[str, str] | None = None) -> Pending:
        argv = tuple(map(str, args))
        proc = subprocess.Popen(
            [str(DIALGUARD), *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**self.process_env, **(env or {})},
            encoding="utf-8",
        )
        return Pending(argv, proc)

    @staticmethod
    def finish(pending: Sequence[Pending]) -> list[Run]:
        runs = []
        for p in pending:
            try:
                out, err = p.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                out, err = p.proc.communicate()
                pytest.fail(f"dialguard {' '.join(p.args)} hung; stderr: {err}")
            runs.append(Run(p.args, p.proc.returncode, out, err))
        return runs

    def processes(
        self, *calls: Sequence[str | Path], env: Mapping[str, str] | None = None
    ) -> list[Run]:
        """The installed script, one process per invocation, run concurrently; results in
        the order given."""
        return self.finish([self.spawn(args, env) for args in calls])

    def __call__(self, *args: str | Path, env: Mapping[str, str] | None = None) -> Run:
        argv = tuple(map(str, args))
        result = run_dialguard(argv, {**self.overrides, **(env or {})})
        return Run(argv, result.code, result.out, result.err)

    def many(self, *calls: Sequence[str | Path], env: Mapping[str, str] | None = None) -> list[Run]:
        """Independent invocations, one after the other; results in the order given."""
        return [self(*args, env=env) for args in calls]

    def check(self, number: str, *extra: str, campaign: str = PROSPECT, at: str = AT) -> list[str]:
        return ["check", number, "--campaign", campaign, "--at", at, "--json", *extra]

    def audit_records(self) -> list[dict[str, Any]]:
        return audit_records(self.audit_dir)


@pytest.fixture
def cli(tmp_path: Path, clean_redis: RedisServer) -> Cli:
    return Cli(tmp_path, clean_redis.url)


def ok(run: Run) -> Run:
    assert run.code == 0, run
    assert run.err == "", run
    return run


def decision(run: Run) -> tuple[str, str]:
    data = ok(run).json()
    return data["result"], data["reason"]


def one_line_error(run: Run, code: int, *needles: str) -> str:
    """Exactly one line on stderr, `dialguard: ...`, no traceback, the documented code."""
    assert "Traceback" not in run.err, run
    assert run.code == code, run
    lines = run.err.splitlines()
    assert len(lines) == 1, run
    assert lines[0].startswith("dialguard: "), run
    for needle in needles:
        assert needle in lines[0], (needle, run)
    return lines[0]


def default_rejects(path: Path) -> Path:
    """Where `import` writes the bad lines of `path` unless told (--rejects)."""
    return path.with_name(path.name + ".rejects.csv")


def rejects_rows(path: Path) -> list[list[str]]:
    """The rejects file: a `line,error,content` header, then one row per bad line."""
    with path.open(encoding="utf-8", newline="") as handle:
        header, *rows = list(csv.reader(handle))
    assert header == ["line", "error", "content"], header
    return rows


def rejected_file(run: Run, path: Path, bad_lines: Sequence[int]) -> list[str]:
    """A file with bad lines: each reported as `FILE: line N: ...`, then ONE `dialguard:`
    line saying nothing was loaded and where every bad line is listed; exit 1, no
    traceback. The rejects file holds the same lines."""
    assert "Traceback" not in run.err, run
    assert run.code == 1, run
    lines = run.err.splitlines()
    assert [line for line in lines if line.startswith("dialguard: ")] == [lines[-1]], run
    noun = "line" if len(bad_lines) == 1 else "lines"
    rejects = default_rejects(path)
    assert lines[-1] == (
        f"dialguard: {path}: {len(bad_lines)} bad {noun}; nothing loaded (all listed in {rejects})"
    ), run
    reports = lines[:-1]
    assert [r.split(":")[1].strip() for r in reports] == [f"line {n}" for n in bad_lines], run
    assert all(r.startswith(f"{path}: line ") for r in reports), run
    assert run.out == "", run
    assert [int(row[0]) for row in rejects_rows(rejects)] == list(bad_lines)
    return reports


@dataclass(frozen=True)
class Loaded:
    """The counts of a successful import's second line."""

    changed: int  # new (or, for --remove, removed)
    unchanged: int
    rejected: int
    target: str  # "dnc list (version 3)", "registry result set 4", ...
    size: int

    @property
    def version(self) -> str:
        found = re.search(r"(\d+)\)?$", self.target)
        assert found, self.target
        return found.group(1)


_SECOND_LINE = re.compile(
    r"(?P<read>\d+) lines read: (?P<changed>\d+) (?:new|removed),"
    r" (?P<unchanged>\d+) unchanged \([^)]*\),"
    r" (?P<rejected>\d+) rejected(?: \(listed in [^)]*\))?;"
    r" the (?P<target>.+) holds (?P<size>[\d,]+) (?:numbers|consents|pairs);"
    r" \d+\.\d s, [\d,]* ?(?:rows/s)?"
)


def loaded(run: Run, path: Path, rows: int, kind: str, done: str, *, quiet: bool = True) -> Loaded:
    """A successful import: exit 0, two lines on stdout, the first one exactly
    `FILE: N KIND rows loaded (DONE)`, the second the counts (not the timing)."""
    assert run.code == 0, run
    if quiet:
        assert run.err == "", run
    first, second = run.out.splitlines()
    assert first == f"{path}: {rows} {kind} rows loaded ({done})", run
    assert second.startswith(f"{path}: "), run
    found = _SECOND_LINE.fullmatch(second.removeprefix(f"{path}: "))
    assert found, second
    return Loaded(
        int(found["changed"]),
        int(found["unchanged"]),
        int(found["rejected"]),
        found["target"],
        int(found["size"].replace(",", "")),
    )


CONSENT_HEADER = "number,principal,given_at,expires_at,proof_ref\n"


# --- check ------------------------------------------------------------------------------


def test_check_human_and_json_output(cli: Cli) -> None:
    human, utc_offset, overseas, emergency = cli.many(
        ["check", "06 12 34 56 78", "--campaign", PROSPECT, "--at", AT],
        cli.check("+33612345678", at="2026-12-01T09:30:00+00:00"),
        cli.check("0262 12 34 56"),  # --at without offset: the policy's zone (Paris)
        ["check", "112", "--campaign", PROSPECT, "--json"],  # no --at: now
    )
    ok(human)
    assert human.first.startswith("DENY NO_CONSENT  +33612345678  local 2026-12-01T10:30:00+01:00")
    assert " id " in human.first
    for rule in ("emergency", "campaign", "number", "internal_dnc", "legal_basis"):
        assert f"\n{rule} " in human.out
    assert "no prior consent for this principal" in human.out
    assert "policy france " in human.out

    data = ok(utc_offset).json()
    assert not JSON_FIELDS - data.keys(), JSON_FIELDS - data.keys()
    assert (data["result"], data["reason"]) == ("DENY", "NO_CONSENT")
    assert (data["number"], data["number_raw"]) == ("+33612345678", "+33612345678")
    assert data["campaign"] == PROSPECT
    assert data["local_time"] == "2026-12-01T10:30:00+01:00"  # 09:30Z is 10:30 in Paris
    assert data["attempts_30d"] == 0
    assert data["evidence"] == {"attempts_30d": 0}
    assert data["policy"]["name"] == "france"
    assert data["policy"]["version"] == "2026-08-11"  # the consent regime's
    assert len(data["policy"]["hash"]) == 16
    assert (data["recorded"], data["degraded"]) == (False, "")
    rules = data["rules"]
    assert [r["rule"] for r in rules][:5] == [
        "emergency",
        "campaign",
        "number",
        "caller_id",
        "internal_dnc",
    ]
    assert rules[-1] == {
        "rule": "legal_basis",
        "outcome": "deny",
        "reason": "NO_CONSENT",
        "detail": "no prior consent for this principal",
    }
    assert all(set(r) == {"rule", "outcome", "reason", "detail"} for r in rules)

    data = ok(overseas).json()
    assert (data["number"], data["territory"]) == ("+262262123456", "RE")
    assert data["local_time"] == "2026-12-01T13:30:00+04:00"  # 10:30 Paris is 13:30 Réunion

    data = ok(emergency).json()
    assert (data["result"], data["reason"], data["number"]) == ("ALLOW", "EMERGENCY", "112")


def test_check_has_no_side_effect_unless_record(cli: Cli) -> None:
    consent = cli.file("c.csv", CONSENT_HEADER + "0612345678,ACME,2026-09-01,,web-1\n")
    ok(cli("import", "consent", consent))

    plain = ok(cli(*cli.check("06 12 34 56 78"))).json()
    assert (plain["result"], plain["reason"], plain["attempts_30d"]) == ("ALLOW", "CONSENT", 0)
    assert plain["recorded"] is False
    imported, done = cli.audit_records()  # the import's own records, and no decision
    assert (imported["kind"], imported["list"], imported["file"]) == ("import", "consent", "c.csv")
    assert (done["kind"], done["import"]) == ("import-done", imported["id"])

    recorded = ok(cli(*cli.check("+33 6 12 34 56 78", "--record"))).json()
    assert (recorded["result"], recorded["reason"]) == ("ALLOW", "CONSENT")
    assert (recorded["attempts_30d"], recorded["recorded"]) == (1, True)
    (record,) = [r for r in cli.audit_records() if r["kind"] == "decision"]
    assert not AUDIT_FIELDS - record.keys(), AUDIT_FIELDS - record.keys()
    assert record["id"] == recorded["id"]
    assert record["ts"] == 1796117400000  # 2026-12-01T10:30+01:00 in UTC ms
    assert record["node"] == "test-node"
    assert (record["result"], record["reason"]) == ("ALLOW", "CONSENT")
    assert (record["number_raw"], record["number"]) == ("+33 6 12 34 56 78", "+33612345678")
    assert (record["campaign"], record["principal"]) == (PROSPECT, "ACME")
    assert (record["purpose"], record["sector"]) == ("prospecting", "general")
    assert record["local_time"] == "2026-12-01T10:30:00+01:00"
    assert record["attempts_30d"] == 1
    assert record["evidence"]["consent"]["proof_ref"] == "web-1"
    assert record["rules"] == recorded["rules"]
    assert record["policy"] == recorded["policy"]
    assert (record["adapter"], record["degraded"]) == ("cli", "")
    assert isinstance(record["latency_us"], int)

    after = ok(cli(*cli.check("0612345678", at="2026-12-02T10:30"))).json()
    assert after["attempts_30d"] == 1  # counted once; the plain checks counted nothing
    assert [r["kind"] for r in cli.audit_records()] == ["import", "import-done", "decision"]


def test_audit_records_carry_the_hash_chain(cli: Cli) -> None:
    ok(cli(*cli.check("0612345678", "--record")))
    (record,) = cli.audit_records()
    assert {"prev", "hash"} <= record.keys()


# --- live events ------------------------------------------------------------------------


def test_dnc_add_and_remove_meet_every_spelling(cli: Cli) -> None:
    metro, overseas = cli.many(
        ["dnc", "add", "06 12 34 56 78"],
        ["dnc", "add", "0262123456", "--reason", "asked by letter"],
    )
    assert ok(metro).out.startswith("+33612345678 added to the do-not-call list (audit id ")
    assert ok(overseas).out.startswith("+262262123456 added to the do-not-call list (audit id ")

    runs = cli.many(
        cli.check("+33612345678"),
        cli.check("+262262123456"),
        cli.check("+33 262 12 34 56"),  # +33 before an overseas number: still one key
    )
    assert [decision(r) for r in runs] == [("DENY", "INTERNAL_DNC")] * 3
    assert runs[0].json()["evidence"]["dnc"]["reason"] == "added by operator"
    assert runs[1].json()["evidence"]["dnc"]["reason"] == "asked by letter"
    # The company's list is read before any legal basis is looked for.
    assert runs[0].json()["rules"][-1]["rule"] == "internal_dnc"

    removed = ok(cli("dnc", "remove", "0033 6 12 34 56 78", "--reason", "consent given"))
    assert removed.out.startswith("+33612345678 removed from the do-not-call list (audit id ")
    # Each change is an audit record of its own kind, with who made it and why.
    changes = [r for r in cli.audit_records() if r["kind"] in ("dnc-add", "dnc-remove")]
    assert [(r["kind"], r["number"], r["why"]) for r in changes] == [
        ("dnc-add", "+33612345678", "added by operator"),
        ("dnc-add", "+262262123456", "asked by letter"),
        ("dnc-remove", "+33612345678", "consent given"),
    ]
    assert all(r["operator"] and r["adapter"] == "cli" for r in changes)
    assert decision(cli(*cli.check("+33612345678"))) == ("DENY", "NO_CONSENT")


def test_consent_withdrawal_refusal_and_do_not_call(cli: Cli) -> None:
    consents = CONSENT_HEADER + "".join(
        f"06123456{n},ACME,2026-09-01,,proof-{n}\n" for n in (11, 22, 33)
    )
    ok(cli("import", "consent", cli.file("c.csv", consents)))
    withdraw, refused, dnc = cli.many(
        [
            "consent",
            "withdraw",
            "06 12 34 56 11",
            "--principal",
            "ACME",
            "--at",
            "2026-11-01T10:00",
        ],
        ["outcome", "0612345622", "refused", "--campaign", PROSPECT, "--at", "2026-11-20T10:00"],
        ["outcome", "+33612345633", "do-not-call", "--campaign", PROSPECT],
    )
    assert ok(withdraw).out.startswith("consent of +33612345611 to ACME withdrawn at 2026-11-01")
    assert ok(refused).out.startswith("refused recorded for +33612345622 (ACME), audit id ")
    assert ok(dnc).out.startswith("do-not-call recorded for +33612345633 (ACME), audit id ")

    runs = cli.many(
        cli.check("0612345611"),
        cli.check("0612345622"),  # 11 days after the refusal
        cli.check("0612345622", at="2027-01-20T10:30"),  # 61 days after: consent still gone
        cli.check("0612345633"),
    )
    assert [decision(r) for r in runs] == [
        ("DENY", "CONSENT_WITHDRAWN"),
        ("DENY", "RECENT_REFUSAL"),
        ("DENY", "CONSENT_WITHDRAWN"),
        ("DENY", "INTERNAL_DNC"),
    ]
    assert runs[0].json()["evidence"]["withdrawn_at"] == "2026-11-01T09:00:00+00:00"
    assert runs[1].json()["evidence"]["refused_at"] == "2026-11-20T09:00:00+00:00"
    assert runs[3].json()["evidence"]["dnc"]["reason"] == f"do-not-call during campaign {PROSPECT}"

    outcomes = sorted(
        (r["outcome"], r["number"]) for r in cli.audit_records() if r.get("kind") == "outcome"
    )
    assert outcomes == [("do-not-call", "+33612345633"), ("refused", "+33612345622")]


# --- imports ----------------------------------------------------------------------------


def test_import_each_kind_and_its_effect_on_check(cli: Cli) -> None:
    dnc = cli.file("dnc.csv", "\ufeffNumber;Reason\r\n06 11 11 11 11;asked, politely\r\n")
    consent = cli.file(
        "consent.csv",
        CONSENT_HEADER
        + "0622222201,ACME,2026-09-01,,web-1\n"
        + "0622222202,ACME,2026-06-01T12:00:00+02:00,2026-11-30,web-2\n",  # expired
    )
    contract = cli.file(
        "contract.csv",
        "number,principal,contract_id,sector,start,end\n"
        "0433333301,ACME,ENR-1,energy_renovation,2025-01-01,\n"  # ongoing
        "0433333302,ACME,ENR-2,energy_renovation,2025-01-01,2026-06-30\n",  # ended
    )
    bloctel = cli.file(
        "bloctel.csv",
        "Telephone;Identifiant;Statut\n0544444401;REQ-1;OK\n0692444402;REQ-2;INSCRIT\n",
    )
    loads = cli.many(
        ["import", "dnc", dnc],
        ["import", "consent", consent],
        ["import", "contract", contract],
        ["import", "bloctel", bloctel, "--checked-at", "2026-05-20"],
    )
    dnc_list, _, _, result_set = (
        loaded(loads[0], dnc, 1, "dnc", "merged"),
        loaded(loads[1], consent, 2, "consent", "merged"),
        loaded(loads[2], contract, 2, "contract", "merged"),
        loaded(loads[3], bloctel, 2, "bloctel", "merged"),
    )
    assert (dnc_list.changed, dnc_list.unchanged, dnc_list.rejected, dnc_list.size) == (1, 0, 0, 1)
    assert result_set.target == f"registry result set {result_set.version}"
    assert (result_set.changed, result_set.size) == (2, 2)

    runs = cli.many(
        cli.check("+33611111111"),
        cli.check("0622222201"),
        cli.check("0622222202"),
        cli.check("0433333301", campaign=ENERGY),
        cli.check("0433333302", campaign=ENERGY),
        cli.check("0544444401", at=AT_OPTOUT),
        cli.check("0692444402", at=AT_OPTOUT),
        cli.check("0544444401", at="2026-06-25T10:30"),  # the check is 36 days old
    )
    assert [decision(r) for r in runs] == [
        ("DENY", "INTERNAL_DNC"),
        ("ALLOW", "CONSENT"),
        ("DENY", "CONSENT_EXPIRED"),
        ("ALLOW", "CONTRACT"),
        ("DENY", "SECTOR_BAN"),
        ("ALLOW", "OPTOUT_CLEAR"),
        ("DENY", "OPTOUT_LISTED"),
        ("DENY", "OPTOUT_UNVERIFIED"),
    ]
    # An imported entry has no date of its own; it names the list version it is on.
    assert runs[0].json()["evidence"]["dnc"] == {
        "reason": "asked, politely",
        "added_at": None,
        "list_version": dnc_list.version,
    }
    # expires_at 2026-11-30, a date: midnight in Paris, so expired from that day on.
    assert runs[2].json()["evidence"]["consent"]["expires_at"] == "2026-11-29T23:00:00+00:00"
    assert runs[3].json()["evidence"]["contracts"] == [
        {"id": "ENR-1", "sector": "energy_renovation", "start": "2025-01-01", "end": None}
    ]
    # The line's Identifiant is checked, not stored: without --ref the evidence names
    # the result set.
    assert runs[5].json()["evidence"]["optout"] == {
        "listed": False,
        "checked_on": "2026-05-20",
        "ref": f"result set {result_set.version}",
    }


def test_merge_keeps_old_entries_and_replace_swaps_the_list(cli: Cli) -> None:
    first = cli.file("dnc1.csv", "number\n0611111101\n0611111102\n")
    second = cli.file("dnc2.csv", "number\n0611111103\n")
    swap = cli.file("dnc3.csv", "number,reason\n0611111104,new list\n")
    consents = cli.file("c1.csv", CONSENT_HEADER + "0622222201,ACME,2026-09-01,,old\n")
    consents_again = cli.file(
        "c2.csv",
        CONSENT_HEADER + "0622222201,ACME,2026-09-01,,old\n0622222202,ACME,2026-09-02,,new\n",
    )

    ok(cli("import", "dnc", first))
    merged, *others = cli.many(
        ["import", "dnc", second],
        ["import", "consent", consents],
        ["consent", "withdraw", "0622222201", "--principal", "ACME", "--at", "2026-11-01T10:00"],
    )
    merge = loaded(merged, second, 1, "dnc", "merged")
    assert (merge.changed, merge.unchanged, merge.rejected, merge.size) == (1, 0, 0, 3)
    for run in others:
        ok(run)
    runs = cli.many(cli.check("0611111101"), cli.check("0611111103"))
    assert [decision(r)[1] for r in runs] == ["INTERNAL_DNC", "INTERNAL_DNC"]

    replaced, consent_replaced = cli.many(
        ["import", "dnc", swap, "--replace"],
        ["import", "consent", consents_again, "--replace"],
    )
    swapped = loaded(replaced, swap, 1, "dnc", "replaced the list")
    assert (swapped.changed, swapped.size) == (1, 1)
    assert swapped.version != merge.version
    consents_swapped = loaded(consent_replaced, consents_again, 2, "consent", "replaced the list")
    assert (consents_swapped.changed, consents_swapped.size) == (2, 2)
    runs = cli.many(
        cli.check("0611111101"),
        cli.check("0611111104"),
        cli.check("0622222201"),
        cli.check("0622222202"),
    )
    assert [decision(r)[1] for r in runs] == [
        "NO_CONSENT",
        "INTERNAL_DNC",
        "CONSENT_WITHDRAWN",  # a nightly --replace never resurrects a withdrawn consent
        "CONSENT",
    ]
    assert runs[1].json()["evidence"]["dnc"]["reason"] == "new list"


def test_sample_files_import_cleanly(cli: Cli) -> None:
    """config/sample/*.csv, as `make run` loads them."""
    loads = cli.many(
        ["import", "dnc", SAMPLES / "dnc.csv"],
        ["import", "consent", SAMPLES / "consent.csv"],
        ["import", "contract", SAMPLES / "contract.csv"],
        ["import", "bloctel", SAMPLES / "bloctel.csv", "--checked-at", "2026-07-20"],
    )
    counts = [
        loaded(loads[0], SAMPLES / "dnc.csv", 4, "dnc", "merged"),
        loaded(loads[1], SAMPLES / "consent.csv", 5, "consent", "merged"),
        loaded(loads[2], SAMPLES / "contract.csv", 1, "contract", "merged"),
        loaded(loads[3], SAMPLES / "bloctel.csv", 5, "bloctel", "merged"),
    ]
    assert [(c.changed, c.unchanged, c.rejected, c.size) for c in counts] == [
        (4, 0, 0, 4),
        (5, 0, 0, 5),
        (1, 0, 0, 1),
        (5, 0, 0, 5),
    ]
    runs = cli.many(
        cli.check("0262304567"),
        cli.check("0465712345", campaign=ENERGY),
        cli.check("0692123456", at="2026-07-28T10:30"),
    )
    assert [decision(r)[1] for r in runs] == ["INTERNAL_DNC", "CONTRACT", "OPTOUT_LISTED"]


# --- import options: --dry-run, --max-rejects, --rejects, --remove, --ref ---------------


def test_dry_run_checks_every_line_and_loads_nothing(cli: Cli) -> None:
    good = cli.file("good.csv", "number,reason\n0611111111,a\n0611111112,\n")
    bad = cli.file("bad.csv", "number,reason\n0611111121,a\n0612,typo\n0611111122,b\n")
    header_only = cli.file("header-only.csv", "number,reason\n")
    tolerated_rejects = cli.tmp / "tolerated.rejects.csv"
    would_load, would_refuse, tolerated, would_empty, wrong_kind = cli.many(
        ["import", "dnc", good, "--dry-run"],
        ["import", "dnc", bad, "--dry-run"],
        ["import", "dnc", bad, "--dry-run", "--max-rejects", "1", "--rejects", tolerated_rejects],
        ["import", "dnc", header_only, "--dry-run", "--replace"],
        ["import", "consent", good, "--dry-run"],  # a wrong header: refused as ever
    )
    assert ok(would_load).out == f"{good}: 2 dnc rows good, 0 rejected; it would load (dry run)\n"
    assert not default_rejects(good).exists()

    rejects = default_rejects(bad)
    assert would_refuse.code == 1 and "Traceback" not in would_refuse.err, would_refuse
    assert would_refuse.out == (
        f"{bad}: 2 dnc rows good, 1 rejected (listed in {rejects}); it would be refused (dry run)\n"
    )
    report, verdict = would_refuse.err.splitlines()
    assert report.startswith(f"{bad}: line 3: '0612' is not a French national"), report
    assert verdict == f"dialguard: {bad}: 1 bad line; it would be refused (all listed in {rejects})"
    assert rejects_rows(rejects) == [["3", report.split(": ", 2)[2], "0612,typo"]]

    assert tolerated.code == 0, tolerated
    assert tolerated.out == (
        f"{bad}: 2 dnc rows good, 1 rejected (listed in {tolerated_rejects});"
        " it would load (dry run)\n"
    )
    assert tolerated.err.splitlines() == [report]
    assert [row[0] for row in rejects_rows(tolerated_rejects)] == ["3"]

    one_line_error(would_empty, 1, str(header_only), "no data rows", "refusing to replace")
    assert (
        would_empty.out
        == f"{header_only}: 0 dnc rows good, 0 rejected; it would be refused (dry run)\n"
    )
    one_line_error(wrong_kind, 1, "line 1: header 'number,reason' is not")

    # A dry run needs no Redis at all, so it can run where the file is made.
    offline = cli("import", "dnc", good, "--dry-run", env={"DIALGUARD_REDIS_URL": REDIS_DOWN})
    assert ok(offline).out == would_load.out

    # Nothing was loaded, not even by the dry runs that would have loaded.
    runs = cli.many(cli.check("0611111111"), cli.check("0611111121"), cli.check("0611111122"))
    assert [decision(r) for r in runs] == [("DENY", "NO_CONSENT")] * 3


def test_the_rejects_file_is_safe_to_open_in_a_spreadsheet(cli: Cli) -> None:
    # The bad lines of a hostile file, quoted in both the error and the content column.
    lines = ["=1+1,x", '=HYPERLINK("http://evil.example/x","click")', "\t@SUM(1)", "-1,a|b"]
    bad = cli.file("hostile.csv", "number,reason\n" + "".join(f"{line}\n" for line in lines))
    run = cli("import", "dnc", bad, "--dry-run")
    assert run.code == 1 and "Traceback" not in run.err, run
    rows = rejects_rows(default_rejects(bad))
    assert [row[2] for row in rows] == ["'" + line for line in lines]
    assert rows[0][1].startswith("''=1+1' contains"), rows[0]  # the message quotes the line
    for row in rows:
        assert all(value[:1] not in ("=", "+", "-", "@", "\t", "\r") for value in row), row


def test_max_rejects_loads_the_good_lines_and_lists_the_bad_ones(cli: Cli) -> None:
    content = (
        "number,reason\n"
        "0611111131,a\n"  # 2
        "abc,x\n"  # 3: bad
        "0611111132,\n"  # 4
        "0612,short\n"  # 5: bad
        "0611111133,c\n"  # 6
    )
    tolerant = cli.file("tolerant.csv", content)
    strict = cli.file("strict.csv", content.replace("061111113", "061111114"))
    elsewhere = cli.tmp / "bad-lines.csv"
    nowhere = cli.tmp / "no-such-dir" / "bad-lines.csv"
    tolerated, refused, unwritable = cli.many(
        ["import", "dnc", tolerant, "--max-rejects", "2"],
        ["import", "dnc", strict, "--max-rejects", "1", "--rejects", elsewhere],
        ["import", "consent", cli.file("c.csv", CONSENT_HEADER + "x,ACME,2026-09-01,,p\n"),
         "--rejects", nowhere],
    )  # fmt: skip

    counts = loaded(tolerated, tolerant, 3, "dnc", "merged", quiet=False)
    assert (counts.changed, counts.unchanged, counts.rejected, counts.size) == (3, 0, 2, 3)
    assert f"2 rejected (listed in {default_rejects(tolerant)})" in tolerated.out
    reports = tolerated.err.splitlines()
    assert [r.split(": ")[1] for r in reports] == ["line 3", "line 5"], tolerated
    assert not any(r.startswith("dialguard:") for r in reports)
    assert rejects_rows(default_rejects(tolerant)) == [
        ["3", reports[0].split(": ", 2)[2], "abc,x"],
        ["5", reports[1].split(": ", 2)[2], "0612,short"],
    ]
    assert "'abc' contains characters other than digits" in reports[0]

    assert refused.code == 1 and refused.out == "", refused
    assert refused.err.splitlines()[-1] == (
        f"dialguard: {strict}: 2 bad lines (--max-rejects 1); nothing loaded"
        f" (all listed in {elsewhere})"
    )
    assert [row[0] for row in rejects_rows(elsewhere)] == ["3", "5"]
    assert not default_rejects(strict).exists()  # --rejects PATH: written there only

    assert unwritable.code == 1 and "Traceback" not in unwritable.err, unwritable
    assert unwritable.err.splitlines()[-1].startswith(
        f"dialguard: {nowhere}: cannot write the rejects file"
    ), unwritable

    runs = cli.many(
        cli.check("0611111131"),
        cli.check("0611111132"),
        cli.check("0611111133"),
        cli.check("0611111141"),  # a good line of the refused file
    )
    assert [decision(r)[1] for r in runs] == ["INTERNAL_DNC"] * 3 + ["NO_CONSENT"]
    assert [r.json()["evidence"]["dnc"]["reason"] for r in runs[:3]] == ["a", "imported", "c"]


def test_remove_takes_numbers_off_the_dnc_list_only(cli: Cli) -> None:
    listed = cli.file("list.csv", "number,reason\n0611111151,a\n0611111152,b\n0611111153,c\n")
    loaded(cli("import", "dnc", listed), listed, 3, "dnc", "merged")
    ok(cli("dnc", "add", "0611111154"))
    removal = cli.file(
        "remove.csv",
        "number\n06 11 11 11 51\n+33611111154\n0611111159\n",  # imported, live, never listed
    )
    consents = cli.file("c.csv", CONSENT_HEADER + "0611111151,ACME,2026-09-01,,p\n")
    removed, consent_remove, both = cli.many(
        ["import", "dnc", removal, "--remove"],
        ["import", "consent", consents, "--remove"],
        ["import", "dnc", removal, "--remove", "--replace"],
    )
    counts = loaded(removed, removal, 3, "dnc", "removed")
    assert (counts.changed, counts.unchanged, counts.rejected, counts.size) == (2, 1, 0, 2)
    assert "(repeated, not there)" in removed.out
    one_line_error(consent_remove, 1, "--remove applies to dnc files only")
    one_line_error(both, 1, "--replace and --remove exclude each other")
    assert consent_remove.out == both.out == ""

    runs = cli.many(*(cli.check(f"06111111{n}") for n in (51, 52, 53, 54)))
    assert [decision(r)[1] for r in runs] == [
        "NO_CONSENT",
        "INTERNAL_DNC",
        "INTERNAL_DNC",
        "NO_CONSENT",  # a live entry goes too: the file says "do not block these"
    ]


def test_a_merged_older_consent_does_not_overwrite_a_newer_one(cli: Cli) -> None:
    stored = cli.file(
        "stored.csv",
        CONSENT_HEADER + "0622222251,ACME,2026-10-01,,newer\n0622222252,ACME,2026-09-01,,first\n",
    )
    merge = cli.file(
        "merge.csv",
        CONSENT_HEADER + "0622222251,ACME,2026-09-01,,older\n0622222252,ACME,2026-10-15,,second\n",
    )
    loaded(cli("import", "consent", stored), stored, 2, "consent", "merged")
    merged = cli("import", "consent", merge)
    counts = loaded(merged, merge, 2, "consent", "merged")
    assert (counts.changed, counts.unchanged, counts.size) == (1, 1, 2)
    assert "1 unchanged (repeated, already there or older)" in merged.out
    runs = cli.many(cli.check("0622222251"), cli.check("0622222252"))
    assert [decision(r) for r in runs] == [("ALLOW", "CONSENT")] * 2
    assert [r.json()["evidence"]["consent"]["proof_ref"] for r in runs] == ["newer", "second"]


def test_one_number_twice_in_a_dnc_file_counts_once(cli: Cli) -> None:
    twice = cli.file(
        "twice.csv", "number,reason\n06 11 11 11 61,first\n+33 6 11 11 11 61,second\n0611111162,\n"
    )
    counts = loaded(cli("import", "dnc", twice), twice, 3, "dnc", "merged")
    assert (counts.changed, counts.unchanged, counts.rejected, counts.size) == (2, 1, 0, 2)
    again = loaded(cli("import", "dnc", twice), twice, 3, "dnc", "merged")
    assert (again.changed, again.unchanged, again.size) == (0, 3, 2)
    runs = cli.many(cli.check("0611111161"), cli.check("0611111162"))
    # The reason comes from the last line; a line without one reads "imported".
    assert [r.json()["evidence"]["dnc"]["reason"] for r in runs] == ["second", "imported"]


def test_the_newest_registry_check_wins_and_ref_names_it(cli: Cli) -> None:
    header = "telephone;identifiant;statut\n"
    newer = cli.file("newer.csv", header + "0544444471;X1;INSCRIT\n0544444472;X2;OK\n")
    older = cli.file("older.csv", header + "0544444471;Y1;OK\n0544444473;Y3;OK\n")
    first = loaded(
        cli("import", "bloctel", newer, "--checked-at", "2026-05-25", "--ref", "BLT-0525"),
        newer,
        2,
        "bloctel",
        "merged",
    )
    second = loaded(
        cli("import", "bloctel", older, "--checked-at", "2026-05-10"), older, 2, "bloctel", "merged"
    )
    assert first.version != second.version
    assert (second.changed, second.size) == (2, 2)  # a result set of its own
    runs = cli.many(
        cli.check("0544444471", at=AT_OPTOUT),  # in both: the later check answers
        cli.check("0544444473", at=AT_OPTOUT),
        ["import", "dnc", cli.file("d.csv", "number\n0611111111\n"), "--ref", "R"],
    )
    assert [decision(r) for r in runs[:2]] == [("DENY", "OPTOUT_LISTED"), ("ALLOW", "OPTOUT_CLEAR")]
    assert runs[0].json()["evidence"]["optout"] == {
        "listed": True,
        "checked_on": "2026-05-25",
        "ref": "BLT-0525",
    }
    assert runs[1].json()["evidence"]["optout"] == {
        "listed": False,
        "checked_on": "2026-05-10",
        "ref": f"result set {second.version}",
    }
    one_line_error(runs[2], 1, "--ref applies to bloctel imports only")


# --- bad input: one line, no traceback, the documented exit code ------------------------


def test_garbage_numbers_are_input_errors(cli: Cli) -> None:
    garbage = ["abc", "+33", "0612", "1" * 50, "06123456789"]
    runs = cli.many(
        *(cli.check(number) for number in garbage),
        ["dnc", "add", "abc"],  # the live commands share one number check
        ["dnc", "add", "112"],  # emergency numbers are never blocked
    )
    for number, run in zip(garbage, runs, strict=False):
        one_line_error(run, 1)
        data = json.loads(run.out)  # the decision is still printed
        assert (data["result"], data["reason"], data["number"]) == ("DENY", "INVALID_NUMBER", None)
        assert data["number_raw"] == number
    assert one_line_error(runs[1], 1) == "dialguard: '+33': +33 must be followed by 9 digits"
    one_line_error(runs[3], 1, "longer than 40 characters")
    one_line_error(runs[5], 1, "'abc' contains characters other than digits")
    one_line_error(runs[6], 1, "'112' is an emergency or short number")
    assert runs[5].out == runs[6].out == ""


def test_unknown_campaign_and_bad_options(cli: Cli) -> None:
    runs = cli.many(
        cli.check("0612345678", campaign="nope"),
        ["outcome", "0612345678", "refused", "--campaign", "nope"],
        cli.check("0612345678", at="2026-02-30T10:00"),
        ["consent", "withdraw", "0612345678", "--principal", "ACME", "--at", "yesterday"],
    )
    one_line_error(runs[0], 1, "campaign")
    assert json.loads(runs[0].out)["reason"] == "UNKNOWN_CAMPAIGN"
    one_line_error(runs[1], 1, "unknown campaign 'nope'", PROSPECT)
    one_line_error(runs[2], 1, "--at '2026-02-30T10:00' is not an ISO 8601 date-time")
    one_line_error(runs[3], 1, "--at 'yesterday'")
    assert all(r.out == "" for r in runs[1:])


def test_malformed_files_are_reported_by_line_and_load_nothing(cli: Cli) -> None:
    before = cli.file("c0.csv", CONSENT_HEADER + "0688888888,ACME,2026-09-01,,p\n")
    for run in cli.many(["dnc", "add", "0699999999"], ["import", "consent", before]):
        ok(run)
    line7 = cli.file(
        "line7.csv",
        "number,reason\n"
        + "".join(f"061234500{n},ok\n" for n in range(5))  # lines 2-6
        + "06 12 34 56 7X,typo\n"  # line 7
        + "0612345005,ok\n",
    )
    fields = cli.file("fields.csv", "number,reason\n0612345006,ok\n0612345007,a,b\n")
    dates = cli.file("dates.csv", CONSENT_HEADER + "0677777777,ACME,2026-31-12,,p\n")
    several = cli.file(
        "several.csv",
        CONSENT_HEADER
        + "0677777701,ACME,01/09/2026,,p\n"  # 2: not ISO
        + "0677777702,ACME,2026-09-01,,p\n"  # 3: good
        + "0677777703,ACME,2026-09-01,,\n"  # 4: no proof
        + "abc,ACME,2026-09-01,,p\n"  # 5: bad number
        + "0677777705,ACME,2026-09-01\n",  # 6: field count
    )
    many_bad = cli.file("many.csv", "number\n" + "".join(f"x{n}\n" for n in range(25)))
    replace_bad = cli.file("replace.csv", "number\n0612345008\n0612\n")
    header = cli.file("header.csv", "phone,reason\n0612345678,x\n")
    runs = cli.many(
        ["import", "dnc", line7],
        ["import", "dnc", fields],
        ["import", "consent", dates],
        ["import", "consent", several],
        ["import", "dnc", many_bad],
        ["import", "dnc", replace_bad, "--replace"],
        ["import", "dnc", header],
    )
    (report,) = rejected_file(runs[0], line7, [7])
    assert "'06 12 34 56 7X' contains characters other than digits" in report
    assert rejected_file(runs[1], fields, [3]) == [f"{fields}: line 3: 3 fields, expected 2"]
    (report,) = rejected_file(runs[2], dates, [2])
    assert "given_at '2026-31-12' is not a date" in report
    reports = rejected_file(runs[3], several, [2, 4, 5, 6])
    assert "proof_ref is required" in reports[1]
    assert "3 fields, expected 5" in reports[3]
    # 25 bad lines: the first 20 listed, the rest counted.
    err = runs[4].err.splitlines()
    assert runs[4].code == 1 and "Traceback" not in runs[4].err
    assert len(err) == 22
    assert err[0].startswith(f"{many_bad}: line 2: ")
    assert err[19].startswith(f"{many_bad}: line 21: ")
    assert err[20] == f"{many_bad}: ... and 5 more bad lines"
    assert err[21] == (
        f"dialguard: {many_bad}: 25 bad lines; nothing loaded"
        f" (all listed in {default_rejects(many_bad)})"
    )
    assert [int(row[0]) for row in rejects_rows(default_rejects(many_bad))] == list(range(2, 27))
    rejected_file(runs[5], replace_bad, [3])
    one_line_error(runs[6], 1, "line 1: header 'phone,reason' is not 'number,reason'")

    # Nothing of any rejected file was loaded; what was there before is still there.
    after = cli.many(
        cli.check("0612345000"),  # a good line of line7.csv
        cli.check("0699999999"),  # on the list before the refused --replace
        cli.check("0688888888"),  # consented before the refused consent files
    )
    assert [decision(r)[1] for r in after] == ["NO_CONSENT", "INTERNAL_DNC", "CONSENT"]


def test_unreadable_empty_and_misused_import_files(cli: Cli) -> None:
    header_only = cli.file("header-only.csv", "number,reason\r\n")
    latin1 = cli.file("latin1.csv", "number,reason\n0612345678,opposé\n".encode("latin-1"))
    missing = cli.tmp / "missing.csv"
    bloctel = cli.file("b.csv", "telephone;identifiant;statut\n0612345678;R;OK\n")
    bloctel_header = cli.file("b0.csv", "telephone;identifiant;statut\n")
    runs = cli.many(
        ["import", "dnc", latin1],
        ["import", "dnc", missing],
        ["import", "dnc", cli.file("empty.csv", b"")],
        ["import", "dnc", header_only, "--replace"],
        ["import", "bloctel", bloctel],
        ["import", "bloctel", bloctel, "--checked-at", "2026-13-01"],
        ["import", "dnc", header_only, "--checked-at", "2026-05-20"],
        ["import", "bloctel", bloctel, "--checked-at", "2099-01-01"],
        ["import", "bloctel", bloctel_header, "--checked-at", "2026-11-20"],
    )
    one_line_error(runs[0], 1, str(latin1), "not UTF-8")
    one_line_error(runs[1], 1, str(missing), "file not found")
    one_line_error(runs[2], 1, "empty")
    one_line_error(runs[3], 1, str(header_only), "no data rows", "refusing to replace")
    one_line_error(runs[4], 1, "bloctel imports need --checked-at")
    one_line_error(runs[5], 1, "--checked-at '2026-13-01' is not a date")
    one_line_error(runs[6], 1, "--checked-at applies to bloctel imports only")
    one_line_error(runs[7], 1, "--checked-at 2099-01-01 is in the future")
    one_line_error(runs[8], 1, str(bloctel_header), "a registry result set needs")
    assert all(r.out == "" for r in runs)


def test_file_level_import_errors_name_the_file(cli: Cli) -> None:
    header = cli.file("header.csv", "phone\n0612345678\n")
    empty = cli.file("empty.csv", "")
    wrong_header, empty_file = cli.many(["import", "dnc", header], ["import", "dnc", empty])
    one_line_error(wrong_header, 1, f"dialguard: {header}: line 1: header")
    one_line_error(empty_file, 1, f"dialguard: {empty}: ")


def peak_bytes(call: Callable[[], T]) -> tuple[T, int]:
    """What `call` returns, and the most memory Python held at once while it ran."""
    tracemalloc.start()
    try:
        result = call()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


MB = 1_000_000


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"x" * (5 * MB), id="one line of 5 MB, no line break"),
        pytest.param(b"number," + b"z" * 5000 + b"\n0612345678,a\n", id="a 5,000-char header"),
        pytest.param(b"x" * 5000 + b"\n0612345678\n", id="5,000 chars, no delimiter"),
        pytest.param(b"number\rx,reason\n0612345678,a\n", id="a carriage return inside"),
    ],
)
def test_an_oversized_or_broken_header_is_one_short_line(cli: Cli, content: bytes) -> None:
    cli("import", "dnc", cli.file("warm-up.csv", "number\n0612345678\n"), "--dry-run")
    path = cli.file("header.csv", content)
    run, peak = peak_bytes(lambda: cli("import", "dnc", path, "--dry-run"))
    line = one_line_error(run, 1, f"dialguard: {path}: line 1")
    message = line.removeprefix(f"dialguard: {path}: ")
    assert len(message) < 200, message  # about 80 characters of the input, not all of it
    assert max(message.count(c) for c in "xz") <= 80, message
    assert run.out == ""
    assert peak < MB, peak  # the first line is read with a bounded read


def test_a_huge_data_line_is_a_bad_line_and_memory_stays_bounded(cli: Cli) -> None:
    cli("import", "dnc", cli.file("warm-up.csv", "number\n0612345678\n"), "--dry-run")
    huge = b"0" * (5 * MB)
    path = cli.file(
        "huge.csv",
        b"number,reason\n0611111111,a\n" + huge + b"\n0611111112,b\n0612,typo\n" + huge,
    )
    run, peak = peak_bytes(lambda: cli("import", "dnc", path, "--dry-run", "--max-rejects", "3"))
    rejects = default_rejects(path)
    assert run.code == 0, run
    assert run.out == (
        f"{path}: 2 dnc rows good, 3 rejected (listed in {rejects}); it would load (dry run)\n"
    )
    too_long = "line longer than 4096 characters, or not CSV"
    three, five, six = run.err.splitlines()
    assert (three, six) == (f"{path}: line 3: {too_long}", f"{path}: line 6: {too_long}")
    assert five.startswith(f"{path}: line 5: '0612' is not a French national"), five
    rows = rejects_rows(rejects)
    assert [row[:2] for row in rows] == [
        ["3", too_long],
        ["5", five.split(": ", 2)[2]],
        ["6", too_long],
    ]
    assert [len(row[2]) for row in rows] == [4096, len("0612,typo"), 4096]
    assert peak < 2 * MB, peak  # not the 10 MB a 5 MB line takes as bytes and text


def test_a_long_line_is_read_in_pieces_but_checked_as_utf8_whole(cli: Cli) -> None:
    # "a" then 3-byte characters: the first piece ends in the middle of one.
    cut = cli.file("cut.csv", "number,reason\n0611111111,a\n" + "a" + "€" * 10_000 + "\n")
    latin1 = cli.file(
        "latin1-far.csv", b"number,reason\n" + b"0" * 50_000 + "é\n".encode("latin-1")
    )
    tolerated, refused = cli.many(
        ["import", "dnc", cut, "--dry-run", "--max-rejects", "1"],
        ["import", "dnc", latin1, "--dry-run", "--max-rejects", "1"],
    )
    assert tolerated.code == 0, tolerated
    assert tolerated.err == f"{cut}: line 3: line longer than 4096 characters, or not CSV\n"
    one_line_error(refused, 1, f"dialguard: {latin1}: not UTF-8 text")


def test_a_line_of_4096_characters_is_not_too_long(cli: Cli) -> None:
    reason = "r" * (4096 - len("0611111111,"))
    path = cli.file("limit.csv", f"number,reason\r\n0611111111,{reason}\r\n")
    run = cli("import", "dnc", path, "--dry-run")
    # Rejected for its reason, not for its length: the line break is not part of the line.
    assert run.err.splitlines()[0] == (
        f"{path}: line 2: reason must be at most 200 characters, without '|' or control characters"
    ), run


def test_bad_configuration_is_one_line_naming_file_and_key(cli: Cli) -> None:
    invalid = cli.file("invalid.toml", "[redis]\nurl = \n")
    typo = cli.file(
        "typo.toml", toml_dumps(make_config(cli.audit_dir, t_energy={"sector": "enrgy"}))
    )
    missing = cli.tmp / "nowhere.toml"
    invalid_run = cli(*cli.check("0612345678"), env={"DIALGUARD_CONFIG": str(invalid)})
    typo_run = cli("dnc", "add", "0612345678", env={"DIALGUARD_CONFIG": str(typo)})
    missing_env = cli(*cli.check("0612345678"), env={"DIALGUARD_CONFIG": str(missing)})
    missing_option = cli("import", "dnc", SAMPLES / "dnc.csv", "--config", str(missing))
    one_line_error(invalid_run, 1, str(invalid), "invalid TOML")
    message = one_line_error(typo_run, 1, f"{typo}: campaigns.t-energy.sector: 'enrgy'")
    assert message.endswith("is not one of general, energy_renovation, home_adaptation, cpf")
    one_line_error(missing_env, 1, str(missing), "file not found")
    one_line_error(missing_option, 1, str(missing), "file not found")
    assert all(r.out == "" for r in (invalid_run, typo_run, missing_env, missing_option))


def test_malformed_redis_url_is_a_one_line_configuration_error(cli: Cli) -> None:
    run = cli(*cli.check("0612345678"), env={"DIALGUARD_REDIS_URL": "redis://127.0.0.1:port/0"})
    one_line_error(run, 1, "redis")


# --- dependencies down ------------------------------------------------------------------


def test_redis_down_fails_closed_with_exit_2(cli: Cli) -> None:
    dnc = cli.file("dnc.csv", "number\n0612345678\n")
    runs = cli.many(
        ["check", "0612345678", "--campaign", PROSPECT, "--at", AT],
        cli.check("0612345678", "--record"),
        ["dnc", "add", "0612345678"],
        ["import", "dnc", dnc],
        cli.check("112"),  # emergency numbers need no facts: still answered
        env={"DIALGUARD_REDIS_URL": REDIS_DOWN},
    )
    human, recorded = runs[:2]
    assert human.first.startswith("DENY STORE_UNAVAILABLE  +33612345678")
    for run in (human, recorded):
        one_line_error(run, 2, "Redis unavailable", "failing closed")
    data = recorded.json()
    assert (data["result"], data["reason"]) == ("DENY", "STORE_UNAVAILABLE")
    assert "failing closed" in data["degraded"]
    for run in runs[2:4]:
        one_line_error(run, 2, "Redis unavailable")
        assert run.out == ""
    assert decision(runs[4]) == ("ALLOW", "EMERGENCY")
    # The degraded decision was audited, and the do-not-call request kept, written first.
    record, kept = cli.audit_records()
    assert (record["reason"], record["id"]) == ("STORE_UNAVAILABLE", data["id"])
    assert "failing closed" in record["degraded"]
    assert (kept["kind"], kept["number"]) == ("dnc-add", "+33612345678")
    assert f"kept in the audit journal as {kept['id']}" in runs[2].err


def test_outcome_with_redis_down_is_kept_and_reported_in_one_line(cli: Cli) -> None:
    run = cli(
        "outcome", "0612345678", "do-not-call", "--campaign", PROSPECT,
        env={"DIALGUARD_REDIS_URL": REDIS_DOWN},
    )  # fmt: skip
    (record,) = cli.audit_records()  # never lost: the journal has it, written first
    assert (record["kind"], record["outcome"]) == ("outcome", "do-not-call")
    one_line_error(run, 2, "Redis unavailable", f"kept in the audit journal as {record['id']}")


def test_journal_unavailable_is_exit_2(cli: Cli) -> None:
    blocker = cli.file("not-a-dir", "")
    config = cli.file("journal.toml", toml_dumps(make_config(blocker / "audit")))
    record, outcome = cli.many(
        cli.check("0612345678", "--record"),
        ["outcome", "0612345678", "refused", "--campaign", PROSPECT],
        env={"DIALGUARD_CONFIG": str(config)},
    )
    one_line_error(record, 2, "cannot write the audit record")
    one_line_error(outcome, 2, "cannot write the audit record")


# --- the installed script, as a process ------------------------------------------------


def test_the_installed_script_keeps_the_contract_as_a_process(cli: Cli) -> None:
    """What only a process shows: the console script's wiring, the exit status the shell
    sees, and nothing more on stderr at interpreter exit (the journal's writer thread,
    Redis connections, an event loop torn down)."""
    missing = cli.tmp / "nowhere.toml"
    outcome, recorded, usage, no_config, redis_down = cli.finish(
        [
            cli.spawn(["outcome", "0612345678", "do-not-call", "--campaign", PROSPECT]),
            cli.spawn(cli.check("0699999999", "--record")),
            cli.spawn(["check", "0612345678"]),
            cli.spawn(cli.check("0612345678"), env={"DIALGUARD_CONFIG": str(missing)}),
            cli.spawn(cli.check("0612345678", "--record"), env={"DIALGUARD_REDIS_URL": REDIS_DOWN}),
        ]
    )
    assert ok(outcome).out.startswith("do-not-call recorded for +33612345678 (ACME), audit id ")
    assert decision(recorded) == ("DENY", "NO_CONSENT")
    one_line_error(usage, 1, "--campaign")
    one_line_error(no_config, 1, str(missing), "file not found")
    one_line_error(redis_down, 2, "Redis unavailable", "failing closed")
    assert usage.out == no_config.out == ""
    assert redis_down.json()["reason"] == "STORE_UNAVAILABLE"
    ids = {r["id"] for r in cli.audit_records()}
    assert {recorded.json()["id"], redis_down.json()["id"]} <= ids and len(ids) == 3


# --- contract gaps found while writing these tests --------------------------------------


def test_usage_errors_exit_1_with_one_line(cli: Cli) -> None:
    one_line_error(cli("check", "0612345678"), 1, "--campaign")


def test_at_out_of_range_is_an_input_error(cli: Cli) -> None:
    one_line_error(cli(*cli.check("0612345678", at="9999-12-31T23:59:59-05:00")), 1, "--at")


def test_consent_dates_out_of_range_do_not_poison_the_store(cli: Cli) -> None:
    poison = cli.file(
        "poison.csv", CONSENT_HEADER + "0612345678,ACME,9999-12-31T23:59:59-05:00,,p\n"
    )
    imported = cli("import", "consent", poison)
    check = cli(*cli.check("0612345678"))
    assert "Traceback" not in check.err, check
    assert decision(check) == ("DENY", "NO_CONSENT")
    rejected_file(imported, poison, [2])


def test_conflicting_bloctel_rows_fail_closed(cli: Cli) -> None:
    bloctel = cli.file(
        "b.csv", "telephone;identifiant;statut\n0612345678;R1;INSCRIT\n+33 6 12 34 56 78;R2;OK\n"
    )
    ok(cli("import", "bloctel", bloctel, "--checked-at", "2026-05-20"))
    assert decision(cli(*cli.check("0612345678", at=AT_OPTOUT))) == ("DENY", "OPTOUT_LISTED")


# --- lists status -----------------------------------------------------------------------


def test_lists_status_shows_size_memory_age_and_what_goes_stale(cli: Cli) -> None:
    today = datetime.now(UTC).date()
    dnc = cli.file("dnc.csv", "number\n0611111111\n0611111112\n0611111113\n")
    recent = cli.file("recent.csv", "telephone;identifiant;statut\n0622222221;R1;OK\n")
    ageing = cli.file(
        "ageing.csv", "telephone;identifiant;statut\n0633333331;R2;OK\n0633333332;R3;INSCRIT\n"
    )
    for run in cli.many(
        ["import", "dnc", dnc, "--replace"],
        ["import", "bloctel", recent, "--checked-at", str(today - timedelta(days=2))],
    ):
        assert run.code == 0, run
    aged: list[str | Path] = ["import", "bloctel", ageing, "--checked-at"]
    assert cli(*aged, str(today - timedelta(days=25)), "--ref", "BT-25").code == 0
    ok(cli("dnc", "add", "0644444444"))

    status = cli("lists", "status", "--json")
    assert status.code == 0, status
    rows = [json.loads(line) for line in status.out.splitlines()]
    by_list: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_list.setdefault(row["list"], []).append(row)
    (dnc_row,) = by_list["dnc"]
    assert dnc_row["entries"] == 3 and dnc_row["bytes"] > 0 and dnc_row["age_days"] == 0
    assert dnc_row["source"] == "dnc.csv"
    assert by_list["dnc:live"][0]["entries"] == 1
    assert by_list["consent"][0]["state"] == "never imported"
    newest, older = by_list["bloctel"]  # newest check first
    assert (newest["entries"], newest["stale_in_7_days"]) == (1, 0)
    assert older["checked_on"] == str(today - timedelta(days=25))
    assert older["entries"] == 2
    assert older["stale_in_7_days"] == 1  # the clear number; a listing keeps denying
    assert older["state"].startswith("stale in ")

    human = cli("lists", "status")
    assert human.code == 0 and "1 registry-checked numbers go stale within 7 days" in human.out


def test_lists_status_counts_live_entries_of_a_list_never_imported(cli: Cli) -> None:
    # A site that takes its opt-outs during calls and its consents from a web form, and has
    # never imported a file, must still see them: not a bare "never imported".
    ok(cli("dnc", "add", "0655555555"))
    ok(cli("consent", "add", "0666666666", "--principal", "ACME", "--proof-ref", "web-1"))

    status = cli("lists", "status", "--json")
    assert status.code == 0, status
    by_list = {row["list"]: row for row in map(json.loads, status.out.splitlines())}
    assert by_list["dnc"]["state"] == "never imported"
    assert by_list["dnc:live"]["entries"] == 1
    assert by_list["consent"]["state"] == "never imported"
    assert by_list["consent:live"]["entries"] == 1
    assert "contract:live" not in by_list  # nothing live: no row, as beside an import


def test_lists_status_with_redis_down_is_one_line(cli: Cli) -> None:
    run = cli("lists", "status", env={"DIALGUARD_REDIS_URL": REDIS_DOWN})
    assert run.code == 2 and run.out == ""
    assert run.err.startswith("dialguard: Redis unavailable") and run.err.count("\n") == 1


def test_serve_refuses_lists_left_in_the_old_layout(cli: Cli, redis_server: RedisServer) -> None:
    # An earlier version kept the do-not-call list in one hash: silently ignoring it would
    # let every number on it through.
    client = redis.Redis.from_url(redis_server.admin_url)
    client.hset("dialguard:dnc", "33612345678", "1700000000000|asked")
    # A process: were the refusal to regress, `serve` would start serving in pytest's own.
    (run,) = cli.processes(["serve"])
    client.close()
    assert run.code == 2, run
    assert run.err.count("\n") == 1 and "dialguard:dnc" in run.err
    assert "docs/data-model.md" in run.err


def test_many_registry_result_sets_get_a_hint_to_merge_them(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    from dialguard import importing
    from dialguard.cli.imports import report
    from dialguard.store.loading import Summary

    request = importing.Request(
        "bloctel", tmp_path / "b.csv", "add", ZoneInfo("Europe/Paris"), date(2026, 11, 30),
        "", False, None, 0,
    )  # fmt: skip
    check = importing.Check(rows=10, lines=10, seconds=0.5)

    def lines(sets: int) -> list[str]:
        summary = Summary("bloctel", "add", rows=10, changed=10, version="9", size=10)
        summary.result_sets = sets
        return report(request, importing.Outcome(check, 0, None, summary, "", 0.5))

    assert len(lines(8)) == 2
    assert lines(9)[2].endswith(
        "9 registry result sets in force: each adds lookups to every decision;"
        " load a merged check with --replace to keep them few"
    )


def test_a_change_redis_missed_is_listed_and_applied_by_hand(cli: Cli) -> None:
    taken = cli(
        "dnc", "add", "0612345678", "--operator", "alice", env={"DIALGUARD_REDIS_URL": REDIS_DOWN}
    )
    (kept,) = cli.audit_records()
    one_line_error(taken, 2, "Redis unavailable", f"kept in the audit journal as {kept['id']}")
    assert (kept["kind"], kept["operator"]) == ("dnc-add", "alice")
    listed = ok(cli("audit", "pending", "--json"))
    assert [json.loads(line)["id"] for line in listed.out.splitlines()] == [kept["id"]]
    assert ok(cli("audit", "apply-pending")).out == "1 change applied\n"
    assert ok(cli("audit", "pending")).out.startswith("no change waits for Redis")
    assert ok(cli("audit", "apply-pending")).out == "0 changes applied\n"  # once only
    assert decision(cli(*cli.check("0612345678"))) == ("DENY", "INTERNAL_DNC")


def test_history_tells_when_we_learned_they_objected(cli: Cli) -> None:
    consents = CONSENT_HEADER + "0612345678,ACME,2026-09-01,,crm-42\n"
    ok(cli("import", "consent", cli.file("leads.csv", consents)))
    called = ok(cli(*cli.check("0612345678", "--record"))).json()  # at AT, 10:30
    said = ok(
        cli("outcome", "06 12 34 56 78", "do-not-call", "--campaign", PROSPECT, "--at", f"{AT}:05")
    )
    refused = ["outcome", "0612345678", "refused", "--campaign", PROSPECT, "--at", f"{AT}:10"]
    ok(cli(*refused, "--operator", "carol"))
    ok(cli(*cli.check("0612345678", "--record", at="2026-12-01T10:50")))
    ok(cli(*cli.check("0699999999", "--record")))  # another number: not in its story
    # Later (now), an operator takes it off the list.
    ok(cli("dnc", "remove", "+33612345678", "--reason", "asked to be called", "--operator", "bob"))

    run = ok(cli("audit", "history", "0033612345678", "--json"))
    events = [json.loads(line) for line in run.out.splitlines()]
    story = [e for e in events if e["kind"] != "in-force"]
    kinds = ["decision", "outcome", "outcome", "decision", "dnc-remove"]
    assert [e["kind"] for e in story] == kinds
    assert story[0]["id"] == called["id"] and story[0]["reason"] == "CONSENT"
    assert story[1]["outcome"] == "do-not-call" and story[1]["id"] in said.out
    assert (story[2]["outcome"], story[2]["operator"]) == ("refused", "carol")
    assert story[3]["reason"] == "INTERNAL_DNC"
    assert (story[4]["operator"], story[4]["why"]) == ("bob", "asked to be called")
    now = {e["list"]: e for e in events if e["kind"] == "in-force"}
    assert now["consent"]["source"] == "leads.csv" and now["consent"]["proof_ref"] == "crm-42"
    assert "refusal" in now and "withdrawal" in now and "dnc" not in now  # refused, removed
    human = ok(cli("audit", "history", "0612345678"))
    assert "outcome do-not-call" in human.out and "In force now" in human.out
    # An inspector's copy of the journal: the story, without a Redis to ask.
    copy = ok(cli("audit", "history", "0612345678", "--json", "--dir", str(cli.audit_dir)))
    assert [json.loads(line)["kind"] for line in copy.out.splitlines()] == kinds


def test_an_import_is_recorded_and_its_file_kept(cli: Cli) -> None:
    import gzip
    import hashlib

    content = b"number,reason\n0612345678,asked\n0622222222,\nnot-a-number,\n"
    path = cli.file("crm-export.csv", content)
    args = ["import", "dnc", str(path), "--replace", "--max-rejects", "1", "--operator", "eve"]
    ok_but_rejects = cli(*args)
    assert ok_but_rejects.code == 0, ok_but_rejects
    record, done = cli.audit_records()
    assert (done["kind"], done["import"]) == ("import-done", record["id"])
    digest = hashlib.sha256(content).hexdigest()
    assert (record["kind"], record["list"], record["mode"]) == ("import", "dnc", "replace")
    assert (record["file"], record["sha256"], record["operator"]) == (
        "crm-export.csv",
        digest,
        "eve",
    )
    assert (record["rows"], record["new"], record["rejected"], record["size"]) == (2, 2, 1, 2)
    assert record["version"] and record["kept"] == f"{digest}.dnc.csv.gz"
    kept = cli.audit_dir / "imports" / record["kept"]
    assert gzip.decompress(kept.read_bytes()) == content  # what the list held, on file
    ok_again = cli(*args)
    assert ok_again.code == 0 and len(list((cli.audit_dir / "imports").iterdir())) == 1
    # A refused file is not an imported one: no copy of it stays (it is kept while read).
    refused = cli("import", "dnc", str(cli.file("bad.csv", b"number\nnot-a-number\n")), "--replace")
    assert refused.code != 0 and len(list((cli.audit_dir / "imports").iterdir())) == 1
    assert ok(cli("audit", "verify")).code == 0


def test_lists_rebuild_from_the_journal_gives_the_same_answers(
    cli: Cli, clean_redis: RedisServer
) -> None:
    ok(cli("import", "dnc", cli.file("dnc.csv", "number\n0611111111\n0633333333\n"), "--replace"))
    ok(cli("dnc", "add", "0622222222", "--reason", "asked by phone"))
    ok(cli("dnc", "remove", "0633333333", "--reason", "a mistake"))
    stale = CONSENT_HEADER + "0677777777,ACME,2026-09-01,,old\n"
    ok(cli("import", "consent", cli.file("stale.csv", stale)))  # replaced whole below
    consents = CONSENT_HEADER + "".join(
        f"06{n * 11111111:08d},ACME,2026-09-01,,crm-{n}\n" for n in (4, 5, 6)
    )
    ok(cli("import", "consent", cli.file("consents.csv", consents), "--replace"))
    withdraw = ["consent", "withdraw", "0655555555", "--principal", "ACME"]
    ok(cli(*withdraw, "--at", "2026-11-15T10:00"))
    ok(cli("outcome", "0666666666", "refused", "--campaign", PROSPECT, "--at", "2026-11-20T10:00"))
    table = [f"06{n * 11111111:08d}" for n in range(1, 8)]

    def answers() -> list[tuple[str, str]]:
        return [decision(run) for run in cli.many(*(cli.check(number) for number in table))]

    before = answers()
    assert [reason for _, reason in before] == [
        "INTERNAL_DNC",  # imported
        "INTERNAL_DNC",  # live
        "NO_CONSENT",  # removed from the list
        "CONSENT",
        "CONSENT_WITHDRAWN",
        "RECENT_REFUSAL",
        "NO_CONSENT",  # only in the consent list that was replaced
    ]
    with redis.Redis.from_url(clean_redis.admin_url) as client:
        client.flushall()
    assert answers() != before
    rebuilt = cli("lists", "rebuild", "--from-journal")
    assert rebuilt.code == 0, rebuilt
    assert "2 imports replayed (1 replaced later, skipped), 4 live changes applied" in rebuilt.out
    assert answers() == before


def test_a_rebuild_refuses_a_kept_file_that_was_edited(cli: Cli) -> None:
    ok(cli("import", "dnc", cli.file("dnc.csv", "number\n0611111111\n"), "--replace"))
    (kept,) = (cli.audit_dir / "imports").iterdir()
    import gzip

    kept.write_bytes(gzip.compress(b"number\n0699999999\n"))  # someone swapped the file
    run = cli("lists", "rebuild", "--from-journal")
    one_line_error(run, 1, "does not match the journal's SHA-256")
    kept.write_bytes(b"not gzip at all")
    one_line_error(cli("lists", "rebuild", "--from-journal"), 1, "cannot be replayed")


def test_a_rebuild_replays_only_imports_in_force_and_refuses_a_pruned_journal(cli: Cli) -> None:
    ok(cli("import", "dnc", cli.file("dnc.csv", "number\n0611111111\n"), "--replace"))
    records = cli.audit_records()
    # An import whose swap failed: its record landed, its completion never did.
    # Another id (ids end with a per-process counter: its last digit may be anything).
    other = records[0]["id"][:-1] + ("e" if records[0]["id"].endswith("f") else "f")
    failed = {**records[0], "id": other, "file": "wrong.csv"}
    failed.update(mode="replace", kept="missing.dnc.csv.gz")
    unsealed = {k: v for k, v in failed.items() if k not in ("prev", "hash")}
    asyncio.run(Journal(cli.audit_dir).append(unsealed))  # through the real writer
    run = cli("lists", "rebuild", "--from-journal")
    assert run.code == 0 and "1 imports replayed (0 replaced later, skipped)" in run.out, run
    (cli.audit_dir / "audit.start").write_text("0" * 64 + "\n")
    one_line_error(cli("lists", "rebuild", "--from-journal"), 1, "was pruned")
