"""The one path every adapter (CLI, FastAGI, ARI, classic AGI) goes through.

`decide`: normalise -> facts (one round trip) -> policy (pure) -> count the attempt
(atomic) -> audit (durable) -> answer. `record_outcome` and the live list changes
(`dnc_add`, `dnc_remove`, `withdraw_consent`) normalise the same way and refuse the same
numbers, whoever asks.
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
from datetime import UTC, datetime

import structlog

from dialguard import policy
from dialguard.audit import Journal, decision_record
from dialguard.config import Config
from dialguard.model import CallRequest, Campaign, Decision, Facts, Reason, Unavailable
from dialguard.numbers import InvalidNumber, Number, listable, normalise
from dialguard.store import Store, StoreUnavailable

__all__ = [
    "OutcomeKind",
    "OutcomeResult",
    "OutcomeStatus",
    "Service",
    "Verdict",
    "listable_number",
    "new_id",
]

log = structlog.get_logger("dialguard.service")


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
    ) -> None:
        self.config = config
        self.store = store
        self.journal = journal
        self.clock = clock  # the only place the time of a call comes from; tests set it
        self._background: set[asyncio.Future[None]] = set()

    def campaign(self, name: str) -> Campaign | None:
        return self.config.campaigns.get(name)

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
        rules = self.config.policy
        campaign = self.campaign(request.campaign)
        number, number_error = _normalise(request.number_raw, campaign)

        if campaign is None or number is None or number.never_blocked:
            # The policy decides without reading anything.
            decision = policy.decide(campaign, number, Facts(), now, rules, number_error)
        elif unavailable is not None:
            decision = self._degraded(campaign, number, now, unavailable.reason, unavailable.detail)
        else:
            decision = await self._decide_with_facts(
                campaign, number, now, decision_id, record, deadline_s
            )

        if record and self.journal is not None:
            latency_us = (time.perf_counter_ns() - started) // 1000
            await self.journal.append(
                decision_record(
                    decision_id=decision_id,
                    ts=now,
                    node=self.config.node,
                    request=request,
                    campaign=campaign,
                    decision=decision,
                    latency_us=latency_us,
                )
            )
        return Verdict(decision_id, decision)

    async def _decide_with_facts(
        self,
        campaign: Campaign,
        number: Number,
        now: datetime,
        decision_id: str,
        record: bool,
        deadline_s: float | None,
    ) -> Decision:
        rules = self.config.policy
        prepared = policy.prepare(campaign, number, now, rules)
        reserve = None
        if record and prepared.would_count:
            reserve = (rules.max_attempts, decision_id)
        try:
            async with asyncio.timeout(deadline_s):
                facts = await self.store.facts(
                    number, campaign.principal, now, rules.window_days, reserve
                )
        except (StoreUnavailable, TimeoutError) as exc:
            if reserve is not None:
                # The script may still run in Redis (sent, unanswered): undo it either way.
                self.store.cancel_later(number, campaign.principal, decision_id)
            if isinstance(exc, StoreUnavailable):
                return self._degraded(campaign, number, now, Reason.STORE_UNAVAILABLE, str(exc))
            detail = f"no decision within {(deadline_s or 0) * 1000:.0f} ms"
            return self._degraded(campaign, number, now, Reason.DEADLINE, detail)
        decision = policy.decide(campaign, number, facts, now, rules, prepared=prepared)
        if facts.reserved:
            if decision.counts_attempt:
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
        self, campaign: Campaign, number: Number, now: datetime, reason: Reason, detail: str
    ) -> Decision:
        log.warning("degraded_decision", reason=reason.value, detail=detail, campaign=campaign.name)
        unavailable = Unavailable(reason, detail)
        # Counting is skipped: with the store out of reach, nothing can be counted.
        return policy.decide(campaign, number, unavailable, now, self.config.policy)

    async def record_outcome(
        self, request: CallRequest, kind: str, *, now: datetime | None = None
    ) -> OutcomeResult:
        """Record what the consumer said during a call (`kind`: an OutcomeKind value).

        The audit record is written whether or not Redis took the change, with `applied`
        saying which: a do-not-call request is never lost, even when Redis is down (then
        PENDING, the record durable). AuditUnavailable is raised when the journal cannot
        be written."""
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
        failure = ""
        try:
            if outcome is OutcomeKind.REFUSED:
                await self.store.record_refusal(number, campaign.principal, now)
            else:
                reason = f"do-not-call during campaign {campaign.name}"
                await self.store.dnc_add(number, reason, now)
        except StoreUnavailable as exc:
            failure = str(exc)
            log.error("outcome_not_applied", outcome=kind, number=number.e164, error=failure)
        record_id = new_id(now)
        if self.journal is not None:
            await self.journal.append(
                {
                    "id": record_id,
                    "ts": int(now.timestamp() * 1000),
                    "node": self.config.node,
                    "kind": "outcome",
                    "outcome": outcome.value,
                    "applied": not failure,
                    "number": number.e164,
                    "number_raw": number.raw,
                    "campaign": campaign.name,
                    "principal": campaign.principal,
                    "channel": request.channel,
                    "uniqueid": request.uniqueid,
                    "adapter": request.adapter,
                }
            )
        status = OutcomeStatus.PENDING if failure else OutcomeStatus.RECORDED
        return OutcomeResult(status, record_id, number, campaign.principal, failure)

    # --- live changes to the lists --------------------------------------------------------

    async def dnc_add(self, raw: str, reason: str, now: datetime | None = None) -> Number:
        """Put a number on the company's do-not-call list; effective for the next call."""
        number = listable_number(raw)
        await self.store.dnc_add(number, reason, now or self.clock())
        return number

    async def dnc_remove(self, raw: str) -> tuple[Number, bool]:
        """Take a number off the do-not-call list; whether it was on it."""
        number = listable_number(raw)
        return number, await self.store.dnc_remove(number)

    async def withdraw_consent(
        self, raw: str, principal: str, now: datetime | None = None
    ) -> Number:
        number = listable_number(raw)
        await self.store.withdraw_consent(number, principal, now or self.clock())
        return number

    @property
    def background(self) -> int:
        """Work started off the answer's path (slot releases) and not finished yet."""
        return len(self._background)

    async def aclose(self, timeout_s: float = 1.0) -> None:
        """Let the work done off the answer's path finish (slot releases), at most
        `timeout_s`. The store stays open: its owner closes it."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)


def _normalise(raw: str, campaign: Campaign | None) -> tuple[Number | None, str]:
    try:
        return normalise(raw, campaign.outside_prefix if campaign else ""), ""
    except InvalidNumber as exc:
        return None, str(exc)
