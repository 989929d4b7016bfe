"""The HTTP API against a real socket, a real Redis and a real journal: every endpoint, its
answers the same as FastAGI's, its changes in force for the next FastAGI call, auth,
errors that change nothing, Idempotency-Key."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from dialguard.api.errors import CODES
from dialguard.api.idempotency import Reply, once
from dialguard.api.tokens import add_token, remove_token
from dialguard.store import Store
from tests.agi.test_server import (
    NUMBER,
    NUMBER_RAW,
    REDIS_DOWN,
    assert_decision,
    load_consent,
)
from tests.api.harness import Answer, Http, api_server
from tests.redis_server import RedisServer, running_redis
from tests.reliability.test_journal_read_only import immutable


@pytest.fixture
async def http(clean_redis: RedisServer, tmp_path: Path) -> AsyncIterator[Http]:
    async with api_server(clean_redis.url, tmp_path) as harness:
        yield harness


def assert_error(answer: Answer, code: str) -> None:
    """The error form: the code's status, {code, message}, the message one line."""
    assert answer.status == CODES[code], answer
    assert set(answer.body) == {"code", "message"}, answer.body
    assert answer.code == code, answer.body
    assert answer.body["message"] and "\n" not in answer.body["message"]


async def unchanged(http: Http) -> tuple[int, set[bytes]]:
    """What an error must leave as it was: the journal and Redis."""
    return len(http.records()), await http.redis_keys()


# --- decisions ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "campaign", "consent", "result", "reason", "e164"),
    [
        (NUMBER_RAW, "demo-prospecting", True, "ALLOW", "CONSENT", NUMBER.e164),
        (NUMBER_RAW, "demo-prospecting", False, "DENY", "NO_CONSENT", NUMBER.e164),
        ("06 12 34 56 78", "demo-press", False, "ALLOW", "PRESS", NUMBER.e164),
        ("112", "demo-prospecting", False, "ALLOW", "EMERGENCY", "112"),
        ("12", "demo-press", False, "DENY", "INVALID_NUMBER", None),
        (NUMBER_RAW, "no-such-campaign", False, "DENY", "UNKNOWN_CAMPAIGN", NUMBER.e164),
    ],
)
async def test_a_decision_is_fastagis_decision_counted_and_audited(
    http: Http,
    number: str,
    campaign: str,
    consent: bool,
    result: str,
    reason: str,
    e164: str | None,
) -> None:
    if consent:
        await load_consent(http.agi.admin)
    body = {"number": number, "campaign": campaign, "channel": "crm/7", "call_id": "c-1"}
    answer = await http.post("/v1/decisions", body)
    assert answer.status == 200
    assert answer.body == {
        "result": result,
        "reason": reason,
        "id": answer.body["id"],
        "number": e164,
    }
    (record,) = http.records("decision")
    assert record["id"] == answer.body["id"]
    assert (record["result"], record["reason"], record["number"]) == (result, reason, e164)
    assert (record["adapter"], record["channel"], record["uniqueid"]) == ("http", "crm/7", "c-1")
    # FastAGI, asked the same, answers the same.
    fastagi = await http.agi.call(number, campaign)
    assert (fastagi.variables["DIALGUARD_RESULT"], fastagi.variables["DIALGUARD_REASON"]) == (
        result,
        reason,
    )
    if reason == "CONSENT":
        assert await http.agi.attempts(NUMBER_RAW) == 2  # the API's call and FastAGI's


async def test_explain_adds_every_rule_and_record_false_writes_nothing(http: Http) -> None:
    await load_consent(http.agi.admin)
    body = {"number": NUMBER_RAW, "campaign": "demo-prospecting", "record": False}
    answer = await http.post("/v1/decisions", body, params={"explain": "1"})
    assert answer.status == 200 and answer.body["result"] == "ALLOW"
    assert answer.body["recorded"] is False
    assert [rule["rule"] for rule in answer.body["rules"]][:2] == ["emergency", "campaign"]
    assert answer.body["policy"]["name"] == "france"
    assert answer.body["evidence"]["consent"]["proof_ref"] == "crm:42"
    assert http.records() == []  # no record, no attempt: `dialguard check`
    assert await http.agi.attempts(NUMBER_RAW) == 0
    plain = await http.post("/v1/decisions", body)
    assert set(plain.body) == {"result", "reason", "id", "number"}


async def test_the_caller_id_is_judged_as_fastagis(http: Http) -> None:
    await load_consent(http.agi.admin)
    base = {"number": NUMBER_RAW, "campaign": "demo-dialer"}
    withheld = await http.post("/v1/decisions", {**base, "caller_id": "anonymous"})
    assert (withheld.body["result"], withheld.body["reason"]) == ("DENY", "CALLER_ID_MISSING")
    verified = await http.post("/v1/decisions", {**base, "caller_id": "0948120042"})
    assert (verified.body["result"], verified.body["reason"]) == ("ALLOW", "CONSENT")


async def test_redis_down_fails_closed_and_changes_stay_pending(tmp_path: Path) -> None:
    async with api_server(REDIS_DOWN, tmp_path, redis_timeout_ms=300) as http:
        decided = await http.post("/v1/decisions", {"number": NUMBER_RAW, "campaign": "demo-press"})
        assert decided.status == 200
        assert (decided.body["result"], decided.body["reason"]) == ("DENY", "STORE_UNAVAILABLE")
        (record,) = http.records("decision")
        assert record["degraded"]
        # An opt-out is never lost: journalled, pending, and already in force on this node.
        added = await http.post(f"/v1/dnc/{NUMBER_RAW}", {"reason": "asked by email"})
        assert added.status == 202 and added.body["status"] == "PENDING"
        assert http.records("dnc-add")[0]["id"] == added.body["id"]
        assert len(http.agi.service.pending) == 1
        # ... and already in force on this node: Redis away, the next call is denied for it.
        after = await http.post("/v1/decisions", {"number": NUMBER_RAW, "campaign": "demo-press"})
        assert (after.body["result"], after.body["reason"]) == ("DENY", "INTERNAL_DNC")


async def test_a_frozen_redis_gives_deadline_within_the_deadline(tmp_path: Path) -> None:
    with running_redis() as redis:
        async with api_server(redis.url, tmp_path, redis_timeout_ms=3000) as http:
            press = {"number": NUMBER_RAW, "campaign": "demo-press"}
            assert (await http.post("/v1/decisions", press)).body["result"] == "ALLOW"
            service = http.agi.service
            config = service.config
            service.config = replace(config, server=replace(config.server, deadline_ms=100))
            redis.pause()
            try:
                started = time.monotonic()
                answer = await http.post("/v1/decisions", press)
                elapsed = time.monotonic() - started
            finally:
                redis.resume()
            assert (answer.body["result"], answer.body["reason"]) == ("DENY", "DEADLINE")
            assert 0.09 <= elapsed < 1.0, elapsed


async def test_no_durable_record_no_answer(http: Http) -> None:
    press = {"number": NUMBER_RAW, "campaign": "demo-press"}
    assert (await http.post("/v1/decisions", press)).status == 200  # the journal's files exist
    with immutable(http.agi.service.config.audit_dir):
        refused = await http.post("/v1/decisions", press)
        dnc = await http.post(f"/v1/dnc/{NUMBER_RAW}")
    assert_error(refused, "audit_unavailable")
    assert_error(dnc, "audit_unavailable")
    await http.agi.drained()
    assert await http.agi.attempts(NUMBER_RAW) == 1  # the refused call's slot given back
    assert len(http.records()) == 1
    assert (await http.agi.call(NUMBER_RAW, "demo-press")).variables["DIALGUARD_RESULT"] == "ALLOW"


# --- changes, in force for the next FastAGI call -----------------------------------------


async def test_outcomes_are_in_force_for_the_next_call(http: Http) -> None:
    await load_consent(http.agi.admin)
    body = {"number": NUMBER_RAW, "campaign": "demo-prospecting", "outcome": "refused"}
    answer = await http.post("/v1/outcomes", body)
    assert answer.status == 200
    assert answer.body == {
        "status": "RECORDED",
        "id": answer.body["id"],
        "number": NUMBER.e164,
        "outcome": "refused",
        "principal": "ACME",
    }
    (record,) = http.records("outcome")
    assert (record["operator"], record["adapter"]) == ("all", "http")
    after = await http.agi.call(NUMBER_RAW, "demo-prospecting")
    assert_decision(http.agi, after, "DENY", "RECENT_REFUSAL")

    other = "0622222222"
    stop = {"number": other, "campaign": "demo-press", "outcome": "do-not-call"}
    assert (await http.post("/v1/outcomes", stop)).body["status"] == "RECORDED"
    denied = await http.agi.call(other, "demo-press")
    assert denied.variables["DIALGUARD_REASON"] == "INTERNAL_DNC"


async def test_do_not_call_added_and_removed(http: Http) -> None:
    added = await http.post("/v1/dnc/+33612345678", {"reason": "asked by email"})
    assert (added.status, added.body["status"], added.body["number"]) == (
        200,
        "RECORDED",
        NUMBER.e164,
    )
    denied = await http.agi.call(NUMBER_RAW, "demo-press")
    assert_decision(http.agi, denied, "DENY", "INTERNAL_DNC")
    (record,) = http.records("dnc-add")
    assert (record["why"], record["operator"], record["adapter"]) == (
        "asked by email",
        "all",
        "http",
    )

    no_reason = await http.call("DELETE", f"/v1/dnc/{NUMBER_RAW}")
    assert_error(no_reason, "invalid_request")
    removed = await http.call(
        "DELETE", f"/v1/dnc/{NUMBER_RAW}", params={"reason": "customer again"}
    )
    assert (removed.status, removed.body["was_listed"]) == (200, True)
    allowed = await http.agi.call(NUMBER_RAW, "demo-press")
    assert_decision(http.agi, allowed, "ALLOW", "PRESS")
    again = await http.call("DELETE", f"/v1/dnc/{NUMBER_RAW}", params={"reason": "twice"})
    assert again.body["was_listed"] is False
    # No body is a do-not-call all the same, with the API's reason.
    bare = await http.post("/v1/dnc/0622222222")
    assert bare.status == 200
    assert http.records("dnc-add")[-1]["why"] == "added through the API"


async def test_a_withdrawal_denies_the_next_call_within_the_same_second(http: Http) -> None:
    await load_consent(http.agi.admin)
    body = {"number": NUMBER_RAW, "principal": "ACME"}
    started = time.monotonic()
    answer = await http.post("/v1/consents/withdrawals", body)
    after = await http.agi.call(NUMBER_RAW, "demo-prospecting")
    assert time.monotonic() - started < 1.0
    assert answer.status == 200 and answer.body["principal"] == "ACME"
    assert_decision(http.agi, after, "DENY", "CONSENT_WITHDRAWN")
    (record,) = http.records("consent-withdraw")
    assert record["id"] == answer.body["id"] and record["adapter"] == "http"


async def reason(http: Http, campaign: str, number: str = NUMBER_RAW) -> str:
    """What the next FastAGI call is told."""
    return (await http.agi.call(number, campaign)).variables["DIALGUARD_REASON"]


async def test_a_consent_allows_the_next_fastagi_call_and_a_withdrawal_denies_it(
    http: Http,
) -> None:
    """Speed to lead: the web form's consent reaches the dialer's next call, then the
    consumer's withdrawal does, each within the same second."""
    assert await reason(http, "demo-prospecting") == "NO_CONSENT"
    consent = {
        "number": "+33 6 12 34 56 78",
        "principal": "ACME",
        "proof_ref": "form-2026-0042",
        "given_at": "2026-11-30T10:58:00",
        "source": "web form",
    }
    started = time.monotonic()
    added = await http.post("/v1/consents", consent, token="write-lists")
    allowed = await http.agi.call(NUMBER_RAW, "demo-prospecting")
    assert time.monotonic() - started < 1.0
    assert added.status == 200 and added.body["status"] == "RECORDED"
    record = assert_decision(http.agi, allowed, "ALLOW", "CONSENT")
    assert record["evidence"]["consent"]["proof_ref"] == "form-2026-0042"
    (journalled,) = http.records("consent-add")
    assert (journalled["id"], journalled["adapter"], journalled["operator"]) == (
        added.body["id"],
        "http",
        "write-lists",
    )
    assert (journalled["proof_ref"], journalled["source"]) == ("form-2026-0042", "web form")

    started = time.monotonic()
    withdrawn = await http.post(
        "/v1/consents/withdrawals", {"number": NUMBER_RAW, "principal": "ACME"}
    )
    denied = await http.agi.call(NUMBER_RAW, "demo-prospecting")
    assert time.monotonic() - started < 1.0
    assert withdrawn.status == 200
    assert_decision(http.agi, denied, "DENY", "CONSENT_WITHDRAWN")


async def test_a_contract_opens_the_exception_and_its_end_closes_it(http: Http) -> None:
    assert await reason(http, "demo-energy") == "SECTOR_BAN"
    contract = {
        "number": NUMBER_RAW,
        "principal": "ACME",
        "id": "CT-9",
        "sector": "energy_renovation",
        "start": "2026-01-01",
    }
    added = await http.post("/v1/contracts", contract)
    assert (added.status, added.body["contract"]) == (200, "CT-9")
    assert await reason(http, "demo-energy") == "CONTRACT"
    end = {"number": NUMBER_RAW, "principal": "ACME", "id": "CT-9", "at": "2026-11-29"}
    ended = await http.post("/v1/contracts/end", end)
    assert ended.status == 200
    assert await reason(http, "demo-energy") == "SECTOR_BAN"
    kinds = [
        (r["kind"], r.get("end"), r["adapter"])
        for r in http.records()
        if r["kind"].startswith("contract")
    ]
    assert kinds == [("contract-add", None, "http"), ("contract-end", "2026-11-29", "http")]
    # Ended now (an instant): from today on.
    await http.post("/v1/contracts", {**contract, "id": "CT-10"})
    assert await reason(http, "demo-energy") == "CONTRACT"
    now = {"number": NUMBER_RAW, "principal": "ACME", "id": "CT-10"}
    assert (await http.post("/v1/contracts/end", now)).status == 200
    assert await reason(http, "demo-energy") == "SECTOR_BAN"


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        (
            "/v1/outcomes",
            {"number": "12", "campaign": "demo-press", "outcome": "refused"},
            "invalid_number",
        ),
        (
            "/v1/outcomes",
            {"number": NUMBER_RAW, "campaign": "nope", "outcome": "refused"},
            "unknown_campaign",
        ),
        (
            "/v1/outcomes",
            {"number": NUMBER_RAW, "campaign": "demo-press", "outcome": "maybe"},
            "invalid_request",
        ),
        ("/v1/outcomes", {"number": NUMBER_RAW, "campaign": "demo-press"}, "invalid_request"),
        (
            "/v1/outcomes",
            {
                "number": NUMBER_RAW,
                "campaign": "demo-press",
                "outcome": "refused",
                "at": "2999-01-01T00:00",
            },
            "invalid_request",
        ),
        (
            "/v1/outcomes",
            {
                "number": NUMBER_RAW,
                "campaign": "demo-press",
                "outcome": "refused",
                "at": "yesterday",
            },
            "invalid_request",
        ),
        ("/v1/dnc/112", {}, "invalid_number"),
        ("/v1/dnc/abc", {}, "invalid_number"),
        (f"/v1/dnc/{NUMBER_RAW}", {"reason": "a|b"}, "invalid_request"),
        (f"/v1/dnc/{NUMBER_RAW}", {"reason": 7}, "invalid_request"),
        (
            "/v1/consents/withdrawals",
            {"number": NUMBER_RAW, "principal": "not a name"},
            "invalid_request",
        ),
        (
            "/v1/consents/withdrawals",
            {"number": NUMBER_RAW, "principal": "ACME", "extra": 1},
            "invalid_request",
        ),
        ("/v1/consents", {"number": NUMBER_RAW, "principal": "ACME"}, "invalid_request"),
        (
            "/v1/consents",
            {"number": NUMBER_RAW, "principal": "ACME", "proof_ref": ""},
            "invalid_request",
        ),
        (
            "/v1/consents",
            {"number": NUMBER_RAW, "principal": "ACME", "proof_ref": "a|b"},
            "invalid_request",
        ),
        ("/v1/consents", {"number": "12", "principal": "ACME", "proof_ref": "p"}, "invalid_number"),
        (
            "/v1/consents",
            {
                "number": NUMBER_RAW,
                "principal": "ACME",
                "proof_ref": "p",
                "given_at": "2026-12-30T10:00",
            },
            "invalid_request",
        ),
        (
            "/v1/consents",
            {
                "number": NUMBER_RAW,
                "principal": "ACME",
                "proof_ref": "p",
                "given_at": "2026-11-01T10:00",
                "expires_at": "2026-10-01T10:00",
            },
            "invalid_request",
        ),
        (
            "/v1/contracts",
            {"number": NUMBER_RAW, "principal": "ACME", "id": "C", "sector": "gas"},
            "invalid_request",
        ),
        (
            "/v1/contracts",
            {
                "number": NUMBER_RAW,
                "principal": "ACME",
                "id": "C",
                "sector": "cpf",
                "start": "2026-13-01",
            },
            "invalid_request",
        ),
        (
            "/v1/contracts",
            {
                "number": NUMBER_RAW,
                "principal": "ACME",
                "id": "C",
                "sector": "cpf",
                "start": "2026-06-01",
                "end": "2026-01-01",
            },
            "invalid_request",
        ),
        ("/v1/contracts/end", {"number": NUMBER_RAW, "principal": "ACME"}, "invalid_request"),
        (
            "/v1/contracts/end",
            {"number": NUMBER_RAW, "principal": "ACME", "id": "C", "at": "2027-01-01T10:00"},
            "invalid_request",
        ),
        ("/v1/decisions", {"number": 612345678, "campaign": "demo-press"}, "invalid_request"),
        (
            "/v1/decisions",
            {"number": NUMBER_RAW, "campaign": "demo-press", "record": "yes"},
            "invalid_request",
        ),
        ("/v1/decisions", {"number": NUMBER_RAW, "campain": "demo-press"}, "invalid_request"),
        (
            "/v1/decisions",
            {"number": NUMBER_RAW + "\n", "campaign": "demo-press"},
            "invalid_request",
        ),
        ("/v1/decisions", {"number": "0" * 65, "campaign": "demo-press"}, "invalid_request"),
    ],
)
async def test_a_bad_request_is_one_line_and_changes_nothing(
    http: Http, path: str, body: dict[str, Any], code: str
) -> None:
    before = await unchanged(http)
    assert_error(await http.post(path, body), code)
    assert await unchanged(http) == before


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"{", "not JSON"),
        (b"", "empty"),
        (b"[1, 2]", "not an array"),
        (b'"text"', "a string"),
        (b"\xff\xfe", "not UTF-8"),
        (b"{" * 2000 + b"}" * 2000, "too deep"),
    ],
)
async def test_bad_json_is_400_and_changes_nothing(http: Http, raw: bytes, why: str) -> None:
    before = await unchanged(http)
    for path in (
        "/v1/decisions",
        "/v1/outcomes",
        "/v1/consents",
        "/v1/consents/withdrawals",
        "/v1/contracts",
        "/v1/contracts/end",
    ):
        assert_error(await http.post(path, raw=raw), "bad_json")
    assert await unchanged(http) == before


async def test_a_body_cut_short_changes_nothing_and_the_api_goes_on(http: Http) -> None:
    before = await unchanged(http)
    reader, writer = await asyncio.open_connection("127.0.0.1", http.api.port)
    head = (
        "POST /v1/decisions HTTP/1.1\r\nHost: dialguard\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {http.secrets['all']}\r\nContent-Length: 100\r\n\r\n"
    )
    with capture_logs() as logs:
        writer.write(head.encode() + b'{"number": "0612345678", "camp')  # then it leaves
        writer.write_eof()
        answer = await asyncio.wait_for(reader.read(), 5.0)
        writer.close()
        await asyncio.sleep(0.1)  # the server's side of it has run
    # Nobody is left to read an answer; if one is written, it is a client error, not a 500,
    # and the log has no internal error with a traceback.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert not [line for line in logs if line["log_level"] == "error"], logs
    assert await unchanged(http) == before
    whole = await http.post("/v1/decisions", {"number": NUMBER_RAW, "campaign": "demo-press"})
    assert whole.status == 200


async def test_an_oversized_body_is_413_before_it_is_read(
    tmp_path: Path, clean_redis: RedisServer
) -> None:
    async with api_server(clean_redis.url, tmp_path, settings={"max_body_bytes": 200}) as http:
        before = await unchanged(http)
        padding = "x" * 300
        big = {"number": NUMBER_RAW, "campaign": "demo-press", "channel": padding}
        assert_error(await http.post("/v1/decisions", big), "body_too_large")

        async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as read
            yield b'{"number": "0612345678", "campaign": "demo-press", "channel": "'
            for _ in range(10):
                yield b"x" * 50
            yield b'"}'

        async with http.session.post(
            f"{http.base}/v1/decisions",
            data=chunked(),
            headers={"Authorization": f"Bearer {http.secrets['all']}"},
        ) as response:
            assert response.status == 413
            assert (await response.json())["code"] == "body_too_large"
        assert await unchanged(http) == before
        small = await http.post("/v1/decisions", {"number": NUMBER_RAW, "campaign": "demo-press"})
        assert small.status == 200


async def test_unknown_paths_and_methods_are_json_errors(http: Http) -> None:
    assert_error(await http.call("GET", "/v1/nothing"), "not_found")
    assert_error(await http.call("GET", "/"), "not_found")
    wrong = await http.call("GET", "/v1/decisions")
    assert_error(wrong, "method_not_allowed")
    assert "POST" in wrong.headers["Allow"]
    assert_error(await http.call("GET", "/v1/decisions", token=None), "unauthorized")


# --- a number's history ---------------------------------------------------------------------


async def test_a_numbers_history_is_the_journals_then_what_is_in_force(http: Http) -> None:
    await load_consent(http.agi.admin)
    decided = await http.post(
        "/v1/decisions", {"number": NUMBER_RAW, "campaign": "demo-prospecting"}
    )
    dnc = await http.post(f"/v1/dnc/{NUMBER_RAW}", {"reason": "asked"})
    await http.post("/v1/decisions", {"number": "0622222222", "campaign": "demo-press"})
    story = await http.call("GET", "/v1/numbers/+33612345678/history", token="read-audit")
    assert story.status == 200 and story.body["number"] == NUMBER.e164
    assert [e["id"] for e in story.body["events"]] == [decided.body["id"], dnc.body["id"]]
    lists = {entry["list"] for entry in story.body["in_force"]}
    assert {"dnc", "consent", "attempts"} <= lists
    same = await http.call("GET", "/v1/numbers/06 12 34 56 78/history")
    assert same.body["events"] == story.body["events"]
    assert_error(await http.call("GET", "/v1/numbers/abc/history"), "invalid_number")


async def test_history_without_redis_still_tells_the_journal(tmp_path: Path) -> None:
    async with api_server(REDIS_DOWN, tmp_path, redis_timeout_ms=300) as http:
        await http.post(f"/v1/dnc/{NUMBER_RAW}")
        story = await http.call("GET", f"/v1/numbers/{NUMBER_RAW}/history")
        assert story.status == 200 and len(story.body["events"]) == 1
        assert story.body["in_force"] is None and "Redis" in story.body["in_force_error"]


# --- tokens and scopes ---------------------------------------------------------------------

ENDPOINTS = [
    ("POST", "/v1/decisions", "decide"),
    ("POST", "/v1/outcomes", "write-lists"),
    ("POST", f"/v1/dnc/{NUMBER_RAW}", "write-lists"),
    ("DELETE", f"/v1/dnc/{NUMBER_RAW}", "write-lists"),
    ("POST", "/v1/consents", "write-lists"),
    ("POST", "/v1/consents/withdrawals", "write-lists"),
    ("POST", "/v1/contracts", "write-lists"),
    ("POST", "/v1/contracts/end", "write-lists"),
    ("GET", f"/v1/numbers/{NUMBER_RAW}/history", "read-audit"),
]


@pytest.mark.parametrize(("method", "path", "scope"), ENDPOINTS)
async def test_every_endpoint_wants_a_token_with_its_scope(
    http: Http, method: str, path: str, scope: str
) -> None:
    before = await unchanged(http)
    missing = await http.call(method, path, {}, token=None)
    assert_error(missing, "unauthorized")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    for header in (
        "Bearer dg_not-a-token",
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "dg_x",
        "Bearer " + "a" * 500,
    ):
        assert_error(
            await http.call(method, path, {}, headers={"Authorization": header}), "unauthorized"
        )
    for other in {"decide", "write-lists", "read-audit"} - {scope}:
        denied = await http.call(method, path, {}, token=other)
        assert_error(denied, "forbidden")
        assert scope in denied.body["message"]
    assert await unchanged(http) == before
    allowed = await http.call(method, path, {}, token=scope)
    assert allowed.code not in ("unauthorized", "forbidden")


async def test_the_document_wants_a_token_of_any_scope(http: Http) -> None:
    assert_error(await http.call("GET", "/v1/openapi.json", token=None), "unauthorized")
    document = await http.call("GET", "/v1/openapi.json", token="read-audit")
    assert document.status == 200 and document.body["openapi"].startswith("3.1")


async def test_a_token_added_or_removed_is_in_force_within_a_second(http: Http) -> None:
    tokens_file = http.api.tokens.path
    secret = add_token(tokens_file, "late", ["decide"], "test")
    http.secrets["late"] = secret
    press = {"number": NUMBER_RAW, "campaign": "demo-press"}

    async def status(token: str) -> int:
        return (await http.post("/v1/decisions", press, token=token)).status

    started = time.monotonic()
    while await status("late") != 200:
        assert time.monotonic() - started < 1.5
        await asyncio.sleep(0.05)
    remove_token(tokens_file, "late")
    started = time.monotonic()
    while await status("late") != 401:
        assert time.monotonic() - started < 1.5
        await asyncio.sleep(0.05)
    assert await status("all") == 200


async def test_a_broken_tokens_file_keeps_the_tokens_read_last(http: Http) -> None:
    path = http.api.tokens.path
    path.write_text("{not json")
    await asyncio.sleep(1.1)
    assert (
        await http.post("/v1/decisions", {"number": NUMBER_RAW, "campaign": "demo-press"})
    ).status == 200


# --- Idempotency-Key ----------------------------------------------------------------------


async def test_a_replayed_change_gets_the_first_answer_and_writes_once(http: Http) -> None:
    key = {"Idempotency-Key": "consent-form-1234"}
    body = {"number": NUMBER_RAW, "principal": "ACME"}
    first = await http.post("/v1/consents/withdrawals", body, headers=key)
    # The same request, its JSON spelt differently.
    again = await http.post(
        "/v1/consents/withdrawals", raw=b'{ "principal":"ACME","number":"0612345678" }', headers=key
    )
    assert first.status == again.status == 200
    assert again.body == first.body
    assert again.headers["Idempotency-Replayed"] == "true"
    assert "Idempotency-Replayed" not in first.headers
    assert len(http.records("consent-withdraw")) == 1
    # Another request with the key: refused, nothing written.
    other = await http.post("/v1/consents/withdrawals", {**body, "principal": "OTHER"}, headers=key)
    assert_error(other, "idempotency_key_reused")
    assert len(http.records("consent-withdraw")) == 1
    # Keys are the token's own: another token's same key is another request.
    theirs = await http.post("/v1/consents/withdrawals", body, headers=key, token="write-lists")
    assert "Idempotency-Replayed" not in theirs.headers and theirs.body["id"] != first.body["id"]


async def test_a_replayed_decision_is_counted_once(http: Http) -> None:
    await load_consent(http.agi.admin)
    key = {"Idempotency-Key": "dialer-call-77"}
    body = {"number": NUMBER_RAW, "campaign": "demo-prospecting"}
    first = await http.post("/v1/decisions", body, headers=key)
    second = await http.post("/v1/decisions", body, headers=key)
    assert second.body == first.body and second.headers["Idempotency-Replayed"] == "true"
    assert await http.agi.attempts(NUMBER_RAW) == 1
    assert len(http.records("decision")) == 1
    ttl = await http.agi.admin._redis.pttl(next(iter(await _replies(http))))
    assert 0 < ttl <= 300_000  # a decision's answer is replayed for 5 minutes at most


async def _replies(http: Http) -> list[bytes]:
    return [key for key in await http.redis_keys() if b":reply:" in key]


async def test_an_error_is_not_kept_and_the_key_is_free_again(http: Http) -> None:
    key = {"Idempotency-Key": "retry-me"}
    body = {"number": NUMBER_RAW, "campaign": "demo-press", "outcome": "do-not-call"}
    await http.post("/v1/decisions", {"number": NUMBER_RAW, "campaign": "demo-press"})
    with immutable(http.agi.service.config.audit_dir):
        failed = await http.post("/v1/outcomes", body, headers=key)
    assert_error(failed, "audit_unavailable")
    assert await _replies(http) == []
    done = await http.post("/v1/outcomes", body, headers=key)
    assert done.status == 200 and "Idempotency-Replayed" not in done.headers
    assert len(http.records("outcome")) == 1
    ttl = await http.agi.admin._redis.pttl((await _replies(http))[0])
    assert 23 * 3600_000 < ttl <= 24 * 3600_000  # [api] idempotency_hours


async def test_a_key_still_running_is_409(clean_redis: RedisServer) -> None:
    store = Store.from_url(clean_redis.url, "dialguard:", 2000)
    started, release = asyncio.Event(), asyncio.Event()

    async def slow() -> Reply:
        started.set()
        await release.wait()
        return Reply(200, {"done": True})

    try:
        first = asyncio.create_task(once(store.replies, "crm", "k1", "f" * 64, 60, slow))
        await started.wait()
        with pytest.raises(Exception) as raised:
            await once(store.replies, "crm", "k1", "f" * 64, 60, slow)
        assert getattr(raised.value, "code", "") == "idempotency_in_progress"
        release.set()
        assert (await first).body == {"done": True}
        replayed = await once(store.replies, "crm", "k1", "f" * 64, 60, slow)
        assert replayed.replayed and replayed.body == {"done": True}
    finally:
        await store.close()


@pytest.mark.parametrize("value", ["", "x" * 256, "é-key", "tab\tkey"])
async def test_a_bad_idempotency_key_is_400(http: Http, value: str) -> None:
    before = await unchanged(http)
    sent = value.encode().decode("latin-1")
    answer = await http.post(
        "/v1/decisions",
        {"number": NUMBER_RAW, "campaign": "demo-press"},
        headers={"Idempotency-Key": sent},
    )
    assert_error(answer, "invalid_idempotency_key")
    assert await unchanged(http) == before


async def test_without_redis_a_keyed_change_is_journalled_all_the_same(tmp_path: Path) -> None:
    async with api_server(REDIS_DOWN, tmp_path, redis_timeout_ms=300) as http:
        key = {"Idempotency-Key": "k"}
        first = await http.post(f"/v1/dnc/{NUMBER_RAW}", headers=key)
        second = await http.post(f"/v1/dnc/{NUMBER_RAW}", headers=key)
        # Not kept (Redis is where keys are): journalled twice, which changes nothing.
        assert first.status == second.status == 202
        assert len(http.records("dnc-add")) == 2


async def test_a_recorded_change_is_marked_applied_in_redis(http: Http) -> None:
    """RECORDED: journalled, then taken by Redis with its applied mark, nothing pending."""
    answer = await http.post(f"/v1/dnc/{NUMBER_RAW}")
    assert answer.status == 200
    assert await http.agi.store.applied([answer.body["id"]]) == {answer.body["id"]}
    assert len(http.agi.service.pending) == 0
