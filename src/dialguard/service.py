"""The one path every adapter (CLI, FastAGI, ARI, classic AGI, HTTP) goes through.

`decide`: normalise -> facts (one round trip) -> policy (pure) -> count the attempt
(atomic) -> audit (durable) -> answer. `record_outcome` and the live list changes
(`dnc_add`, `dnc_remove`, `add_consent`, `withdraw_consent`, `add_contract`,
`end_contract`) normalise the same way and refuse the same numbers, whoever asks (the CLI,
the HTTP API): each is a journal record first, then Redis, effective for the next call.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog

from dialguard import policy
from dialguard.audit import AuditUnavailable, Journal, decision_record
from dialguard.changes import (
    FUTURE_SLACK,
    Change,
    ChangeKind,
    InvalidChange,
    checked_contract_id,
    checked_principal,
    checked_proof_ref,
    checked_source,
    iso_ms,
    ms_of,
)
from dialguard.config import Config
from dialguard.import_files import in_supported_years
from dialguard.model import (
    SHADOW_PREFIX,
    CallerId,
    CallRequest,
    Campaign,
    Decision,
    Facts,
    Mode,
    Reason,
    Result,
    Sector,
    Unavailable,
)
from dialguard.numbers import InvalidNumber, Number, listable, normalise
from dialguard.pending import Pending
from dialguard.policy import Policy
from dialguard.store import Store, StoreUnavailable
from dialguard.telemetry import Telemetry

__all__ = [
    "UNKNOWN_CAMPAIGN",
    "OutcomeKind",
    "OutcomeResult",
    "OutcomeStatus",
    "Service",
    "Verdict",
    "listable_number",
    "new_id",
]

log = structlog.get_logger("dialguard.service")

# The campaign label of decisions for a campaign the configuration does not name (no
# configured name starts with "_").
UNKNOWN_CAMPAIGN = "_unknown"


class OutcomeKind(enum.StrEnum):
    REFUSED = "refused"
    DO_NOT_CALL = "do-not-call"


class OutcomeStatus(enum.StrEnum):
    RECORDED = "RECORDED"  # applied in Redis and audited
    PENDING = "PENDING"  # audited, not applied: Redis did not take it
    INVALID = "INVALID"  # a bad number, kind or campaign: nothing recorded


@dataclass(frozen=True, slots=True)
class OutcomeResult:
    status: OutcomeStatus
    id: str = ""  # the audit record's id (RECORDED, PENDING)
    number: Number | None = None
    principal: str = ""
    detail: str = ""  # why, for PENDING and INVALID: one line


@dataclass(frozen=True, slots=True)
class Verdict:
    id: str
    decision: Decision
    shadow: bool = False  # its campaign is in shadow mode: a denial is answered ALLOW

    @property
    def answer(self) -> tuple[Result, str]:
        """What the dialer is told: the decision, or in shadow mode ALLOW with
        SHADOW_<reason> for a denial (the decision itself stays what the law says)."""
        decision = self.decision
        if self.shadow and not decision.allowed:
            return Result.ALLOW, SHADOW_PREFIX + decision.reason.value
        return decision.result, decision.reason.value


def listable_number(raw: str, campaign: Campaign | None = None) -> Number:
    """The number a live change applies to, spelled as a call to it would be dialled
    (`campaign`'s outside-line prefix); InvalidNumber (NotListable for an emergency or
    short number) otherwise."""
    return listable(raw, campaign.outside_prefix if campaign else "")


_PROCESS_TAG = secrets.token_hex(4)  # tells apart the processes of every node
_SEQUENCE = itertools.count()


def _new_process() -> None:
    # `serve --workers N` forks after this module is imported: each worker draws its own.
    global _PROCESS_TAG, _SEQUENCE
    _PROCESS_TAG = secrets.token_hex(4)
    _SEQUENCE = itertools.count()


os.register_at_fork(after_in_child=_new_process)


def new_id(now: datetime) -> str:
    """Time-ordered, unique across nodes and processes, safe as a channel variable value.

    Milliseconds, a random tag drawn once per process, and a per-process counter: no
    system call per id (os.urandom per call showed in the server's profile).
    """
    return f"{int(now.timestamp() * 1000):012x}{_PROCESS_TAG}{next(_SEQUENCE) & 0xFFFFFF:06x}"


class Service:
    def __init__(
        self,
        config: Config,
        store: Store,
        journal: Journal | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        telemetry: Telemetry | None = None,
    ) -> None:
        # Replaced whole by a reload (`reconfigure`); each decision reads it once, so a
        # decision under way finishes under the configuration it started with.
        self.config = config
        self.store = store
        self.journal = journal
        self.clock = clock  # the only place the time of a call comes from; tests set it
        self.telemetry = telemetry  # None: decisions not counted (no metrics endpoint)
        self._background: set[asyncio.Future[None]] = set()
        # Changes the journal holds and Redis has not taken (see dialguard.pending).
        self.pending = Pending(store, journal.directory if journal is not None else None)

    def campaign(self, name: str) -> Campaign | None:
        return self.config.campaigns.get(name)

    def reconfigure(self, config: Config) -> None:
        """Decide the calls that start from now on under `config` (a reload): its policy
        and campaigns. Redis, the journal and the listeners stay as they were started."""
        self.config = config

    async def decide(
        self,
        request: CallRequest,
        *,
        now: datetime | None = None,
        record: bool = False,
        deadline_s: float | None = None,
        unavailable: Unavailable | None = None,
    ) -> Verdict:
        """Decide one call. With `record`, count the attempt and write the audit record.

        `unavailable`: the adapter knows already that no answer can wait for the store (a
        channel found long after it arrived): the campaign's fail mode decides, for that
        reason, and Redis is not asked."""
        started = time.perf_counter_ns()
        now = now or self.clock()
        decision_id = new_id(now)
        config = self.config  # one configuration for the whole decision, whatever reloads
        rules = config.policy
        campaign = config.campaigns.get(request.campaign)
        number, number_error = _normalise(request.number_raw, campaign)
        shadow = campaign is not None and campaign.mode is Mode.SHADOW
        checks_caller = campaign is not None and campaign.checks_caller_id
        caller = CallerId.of(request) if checks_caller else None

        if campaign is None or number is None or number.never_blocked:
            # The policy decides without reading anything.
            decision = policy.decide(campaign, number, Facts(), now, rules, number_error)
        elif unavailable is not None:
            decision = self._degraded(
                campaign, number, now, unavailable.reason, unavailable.detail, rules, caller
            )
        else:
            decision = await self._decide_with_facts(
                campaign, number, now, decision_id, record, deadline_s, rules, shadow, caller
            )

        if record and self.journal is not None:
            latency_us = (time.perf_counter_ns() - started) // 1000
            try:
                await self.journal.append(
                    decision_record(
                        decision_id=decision_id,
                        ts=now,
                        node=config.node,
                        request=request,
                        campaign=campaign,
                        decision=decision,
                        latency_us=latency_us,
                        shadow=shadow,
                    )
                )
            except AuditUnavailable:
                # No record, no answer: the call is not placed, so its slot goes back
                # (or the consumer's lawful calls would quietly run out).
                # (In shadow mode a denial may hold one too; giving back a slot never
                # taken changes nothing.)
                held = decision.counts_attempt or (shadow and not decision.allowed)
                if held and number is not None and campaign is not None:
                    self._release_soon(number, campaign.principal, decision_id)
                raise
        if self.telemetry is not None:
            # Up to the record being durable: what the caller waits for. A campaign name
            # the configuration does not know is one label, not one series per typo.
            self.telemetry.decided(
                decision.result.value,
                decision.reason.value,
                campaign.name if campaign is not None else UNKNOWN_CAMPAIGN,
                (time.perf_counter_ns() - started) / 1e9,
            )
        return Verdict(decision_id, decision, shadow)

    async def _decide_with_facts(
        self,
        campaign: Campaign,
        number: Number,
        now: datetime,
        decision_id: str,
        record: bool,
        deadline_s: float | None,
        rules: Policy,
        shadow: bool,
        caller: CallerId | None,
    ) -> Decision:
        prepared = policy.prepare(campaign, number, now, rules, caller=caller)
        reserve = None
        if record and shadow:
            # In shadow mode every call goes out, whatever the decision, past the cap too:
            # each is counted, so that once the campaign enforces, the 30-day count holds
            # the calls really placed. (The cap's rule reads the count before this call.)
            reserve = (_NO_CAP, decision_id)
        elif record and prepared.would_count:
            reserve = (prepared.version.max_attempts, decision_id)
        try:
            facts = await self.store.facts(
                number, campaign.principal, now, prepared.version.window_days, reserve, deadline_s
            )
        except (StoreUnavailable, TimeoutError) as exc:
            if reserve is not None:
                # The script may still run in Redis (sent, unanswered): undo it either way.
                self.store.cancel_later(number, campaign.principal, decision_id)
            if isinstance(exc, StoreUnavailable):
                return self._degraded(
                    campaign, number, now, Reason.STORE_UNAVAILABLE, str(exc), rules, caller
                )
            detail = f"no decision within {(deadline_s or 0) * 1000:.0f} ms"
            return self._degraded(campaign, number, now, Reason.DEADLINE, detail, rules, caller)
        facts = self.pending.overlay(number.key, campaign.principal, facts)
        decision = policy.decide(campaign, number, facts, now, rules, prepared=prepared)
        if facts.reserved:
            if decision.counts_attempt or (shadow and not decision.allowed):
                return replace(decision, attempts_30d=facts.attempts_30d + 1)
            self._release_soon(number, campaign.principal, decision_id)
        return decision

    def _release_soon(self, number: Number, principal: str, attempt_id: str) -> None:
        """Give a reserved slot back, off the answer's path."""
        task = asyncio.ensure_future(self.store.release(number, principal, attempt_id))
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Future[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The slot stays taken until the window passes: a later call may be denied
            # FREQUENCY_CAP early. Never an extra call, so logged rather than retried.
            log.error("release_failed", error=str(task.exception()))

    def _degraded(
        self,
        campaign: Campaign,
        number: Number,
        now: datetime,
        reason: Reason,
        detail: str,
        rules: Policy,
        caller: CallerId | None = None,
    ) -> Decision:
        log.warning("degraded_decision", reason=reason.value, detail=detail, campaign=campaign.name)
        if self.telemetry is not None:
            self.telemetry.degraded_decision(reason.value)
        # What this node took while Redis was away holds even when failing open: a
        # do-not-call, a refusal, a withdrawal (policy.decide_unavailable). Counting is
        # skipped: with the store out of reach, nothing can be counted.
        known = self.pending.overlay(number.key, campaign.principal, Facts())
        unavailable = Unavailable(reason, detail)
        return policy.decide_unavailable(campaign, number, known, unavailable, now, rules, caller)

    async def record_outcome(
        self,
        request: CallRequest,
        kind: str,
        *,
        now: datetime | None = None,
        operator: str = "",
    ) -> OutcomeResult:
        """Record what the consumer said during a call (`kind`: an OutcomeKind value).

        Write-ahead: the audit record first, then Redis. A change Redis does not take is
        PENDING: kept in the journal, applied in the background once Redis answers, and
        counted in decisions meanwhile. AuditUnavailable (nothing recorded, nothing
        applied) when the journal cannot be written."""
        now = now or self.clock()
        campaign = self.campaign(request.campaign)
        try:
            outcome = OutcomeKind(kind)
        except ValueError:
            kinds = ", ".join(k.value for k in OutcomeKind)
            return OutcomeResult(OutcomeStatus.INVALID, detail=f"outcome {kind!r}: not {kinds}")
        if campaign is None:
            detail = f"unknown campaign {request.campaign!r}"
            return OutcomeResult(OutcomeStatus.INVALID, detail=detail)
        try:
            number = listable_number(request.number_raw, campaign)
        except InvalidNumber as exc:
            return OutcomeResult(OutcomeStatus.INVALID, detail=str(exc))
        why = (
            f"do-not-call during campaign {campaign.name}"
            if outcome is OutcomeKind.DO_NOT_CALL
            else ""
        )
        fields = {"outcome": outcome.value, "campaign": campaign.name}
        change_id, applied = await self._change(
            ChangeKind.OUTCOME, number, now, request, operator, campaign.principal, why, fields
        )
        if applied is None:
            detail = "Redis did not take it; kept in the audit journal, applied once Redis answers"
            return OutcomeResult(
                OutcomeStatus.PENDING, change_id, number, campaign.principal, detail
            )
        return OutcomeResult(OutcomeStatus.RECORDED, change_id, number, campaign.principal)

    # --- live changes to the lists --------------------------------------------------------
    #
    # Each returns (the number, the audit record's id, whether Redis took it now: False
    # means it waits in the journal and is applied once Redis answers). A number is
    # refused as a call to it would be (InvalidNumber, one line); anything else asked
    # wrongly raises InvalidChange (one line). Nothing is written either way.

    async def dnc_add(
        self,
        raw: str,
        reason: str,
        now: datetime | None = None,
        *,
        operator: str = "",
        principal: str = "",
        adapter: str = "cli",
        fields: dict[str, str] | None = None,
    ) -> tuple[Number, str, bool]:
        """Put a number on the company's do-not-call list (or, with `principal`, on that
        principal's own), effective for the next call: (the number, the audit record's id,
        whether Redis took it now). `adapter` says where the change came from (the record's
        `adapter`), `fields` adds to its record."""
        number = listable_number(raw)
        change_id, applied = await self._change(
            ChangeKind.DNC_ADD,
            number,
            now or self.clock(),
            adapter,
            operator,
            principal,
            reason,
            fields or {},
        )
        return number, change_id, applied is not None

    async def dnc_remove(
        self,
        raw: str,
        reason: str,
        now: datetime | None = None,
        *,
        operator: str = "",
        principal: str = "",
        adapter: str = "cli",
        fields: dict[str, str] | None = None,
    ) -> tuple[Number, str, bool | None]:
        """Take a number off the do-not-call list (with `principal`: off that principal's
        own): (the number, the audit record's id, whether it was on it; None when Redis did
        not take the change yet)."""
        number = listable_number(raw)
        change_id, applied = await self._change(
            ChangeKind.DNC_REMOVE,
            number,
            now or self.clock(),
            adapter,
            operator,
            principal,
            reason,
            fields or {},
        )
        return number, change_id, applied

    async def add_consent(
        self,
        raw: str,
        principal: str,
        proof_ref: str,
        *,
        given_at: datetime | None = None,
        expires_at: datetime | None = None,
        source: str = "",
        now: datetime | None = None,
        operator: str = "",
        adapter: str = "cli",
    ) -> tuple[Number, str, bool]:
        """Record the consent the consumer gave `principal` (at `given_at`, default now;
        until `expires_at`, default the policy's longest validity), proven by `proof_ref`.

        The pair keeps the consent given last, whatever order changes arrive in; a
        withdrawal dated after `given_at` beats it, a consent given after a withdrawal
        makes the number callable again (docs/rules.md)."""
        now = now or self.clock()
        principal = checked_principal(principal)
        proof_ref = checked_proof_ref(proof_ref)
        source = checked_source(source)
        given = _instant("given_at", given_at or now)
        if given > now + FUTURE_SLACK:
            raise InvalidChange(f"given_at {iso_ms(given)} is in the future")
        fields: dict[str, Any] = {
            "given_at": iso_ms(given),
            "expires_at": None,
            "proof_ref": proof_ref,
            "source": source,
        }
        if expires_at is not None:
            fields["expires_at"] = iso_ms(_instant("expires_at", expires_at))
            if ms_of(fields["expires_at"]) <= ms_of(fields["given_at"]):
                raise InvalidChange("expires_at must come after given_at")
        number = listable_number(raw)
        details = {
            "given_ms": ms_of(fields["given_at"]),
            "expires_ms": ms_of(fields["expires_at"]) if fields["expires_at"] else 0,
            "proof_ref": proof_ref,
            "source": source,
        }
        change_id, applied = await self._change(
            ChangeKind.CONSENT_ADD, number, now, adapter, operator, principal, "", fields, details
        )
        return number, change_id, applied is not None

    async def withdraw_consent(
        self,
        raw: str,
        principal: str,
        now: datetime | None = None,
        *,
        operator: str = "",
        adapter: str = "cli",
    ) -> tuple[Number, str, bool]:
        """Record that the consumer withdrew the consent given to `principal` at `now`."""
        number = listable_number(raw)
        change_id, applied = await self._change(
            ChangeKind.CONSENT_WITHDRAW,
            number,
            now or self.clock(),
            adapter,
            operator,
            checked_principal(principal),
        )
        return number, change_id, applied is not None

    async def add_contract(
        self,
        raw: str,
        principal: str,
        contract_id: str,
        sector: Sector | str,
        *,
        start: date | None = None,
        end: date | None = None,
        now: datetime | None = None,
        operator: str = "",
        adapter: str = "cli",
    ) -> tuple[Number, str, bool]:
        """Record a contract between the consumer and `principal`, performed from `start`
        (default today in the policy's time zone) to `end` included (None: ongoing). Its
        sector opens the ongoing-contract exception (docs/rules.md). The same id again
        replaces it; an add recorded after an end of the same id signs it again."""
        now = now or self.clock()
        principal = checked_principal(principal)
        contract_id = checked_contract_id(contract_id)
        try:
            sector = Sector(sector)
        except ValueError:
            allowed = ", ".join(s.value for s in Sector)
            raise InvalidChange(f"sector {sector!r} is not one of {allowed}") from None
        start = start or self._today(now)
        for name, day in (("start", start), ("end", end)):
            if day is not None and not in_supported_years(datetime(day.year, 1, 1)):
                raise InvalidChange(f"{name} {day} is outside the years the rules are kept for")
        if end is not None and end < start:
            raise InvalidChange("end must not come before start")
        fields = {
            "contract_id": contract_id,
            "sector": sector.value,
            "start": start.isoformat(),
            "end": end.isoformat() if end else None,
        }
        details = {
            "contract_id": contract_id,
            "sector": sector.value,
            "start": start.isoformat(),
            "end": end.isoformat() if end else "",
        }
        number = listable_number(raw)
        change_id, applied = await self._change(
            ChangeKind.CONTRACT_ADD, number, now, adapter, operator, principal, "", fields, details
        )
        return number, change_id, applied is not None

    async def end_contract(
        self,
        raw: str,
        principal: str,
        contract_id: str,
        *,
        ended_at: datetime | date | None = None,
        now: datetime | None = None,
        operator: str = "",
        adapter: str = "cli",
    ) -> tuple[Number, str, bool]:
        """Record the end of a contract (imported or added live). `ended_at`: a date is
        the contract's last day (as the `end` column of a contract file); an instant
        (default now) ends it from that day on, in the policy's time zone: calls from that
        day no longer count it. Ending a contract nobody recorded changes nothing."""
        now = now or self.clock()
        principal = checked_principal(principal)
        contract_id = checked_contract_id(contract_id)
        when: datetime | date = ended_at or now
        if isinstance(when, datetime):
            when = _instant("ended_at", when)
            if when > now + FUTURE_SLACK:
                raise InvalidChange(
                    f"ended_at {iso_ms(when)} is in the future; give a date for its last day"
                )
            last_day = self._today(when) - timedelta(days=1)
            said = iso_ms(when)
        else:
            if not in_supported_years(datetime(when.year, 1, 1)):
                raise InvalidChange(f"ended_at {when} is outside the years the rules are kept for")
            last_day, said = when, when.isoformat()
        fields = {"contract_id": contract_id, "ended_at": said, "end": last_day.isoformat()}
        details = {"contract_id": contract_id, "end": last_day.isoformat()}
        number = listable_number(raw)
        change_id, applied = await self._change(
            ChangeKind.CONTRACT_END, number, now, adapter, operator, principal, "", fields, details
        )
        return number, change_id, applied is not None

    def _today(self, moment: datetime) -> date:
        return moment.astimezone(ZoneInfo(self.config.policy.default_timezone)).date()

    async def _change(
        self,
        kind: ChangeKind,
        number: Number,
        now: datetime,
        request: CallRequest | str,
        operator: str,
        principal: str,
        why: str = "",
        fields: dict[str, Any] | None = None,
        details: dict[str, Any] | None = None,
    ) -> tuple[str, bool | None]:
        """Journal a change, then apply it: (its id, what Redis said: see Pending.submit).
        `request`: the call it came from, or the adapter's name; `fields`: the record's
        own fields; `details`: the Change's. Without a journal (tests of the store alone)
        the change is applied directly."""
        if isinstance(request, str):
            request = CallRequest("", "", adapter=request)
        fields = fields or {}
        change_id = new_id(now)
        ts_ms = int(now.timestamp() * 1000)
        change = Change(
            change_id,
            ts_ms,
            kind,
            number.key,
            principal,
            str(fields.get("outcome", "")),
            why,
            **(details or {}),
        )
        self.pending.expect(change_id)
        if self.journal is not None:
            record: dict[str, object] = {
                "id": change_id,
                "ts": ts_ms,
                "node": self.config.node,
                "kind": kind.value,
                **fields,
                "number": number.e164,
                "number_raw": number.raw,
                "principal": principal,
                "why": why,
                "operator": operator,
                "adapter": request.adapter,
                "channel": request.channel,
                "uniqueid": request.uniqueid,
            }
            try:
                await self.journal.append(record)  # durable before Redis hears of it
            except AuditUnavailable:
                self.pending.unexpect(change_id)
                raise
        applied = await self.pending.submit(change)
        if applied is None:
            log.error("change_not_applied", kind=kind.value, number=number.e164, id=change_id)
        return change_id, applied

    @property
    def background(self) -> int:
        """Work started off the answer's path (slot releases) and not finished yet."""
        return len(self._background)

    async def start(self) -> None:
        """Queue the changes the journal holds and Redis never took, and keep applying
        them (and those other processes journal) in the background."""
        await self.pending.start(self.clock())

    async def aclose(self, timeout_s: float = 1.0) -> None:
        """Let the work done off the answer's path finish (slot releases), at most
        `timeout_s`, and stop the background. The store stays open: its owner closes it."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)
        await self.pending.aclose()


# The cap a shadow call reserves under: none (every call placed is counted).
_NO_CAP = 1 << 30


def _instant(name: str, moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise InvalidChange(f"{name} {moment.isoformat()} needs its UTC offset")
    if not in_supported_years(moment):
        raise InvalidChange(f"{name} {moment.isoformat()} is outside the years 1970-2199")
    return moment


def _normalise(raw: str, campaign: Campaign | None) -> tuple[Number | None, str]:
    try:
        return normalise(raw, campaign.outside_prefix if campaign else ""), ""
    except InvalidNumber as exc:
        return None, str(exc)
