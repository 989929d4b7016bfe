"""Scrub a lead file before a campaign: every lead decided as a call to it would be at one
instant, without calling, counting or recording a decision (`dialguard scrub`, docs/scrub.md).

The same rules (`policy.outcome`, held equal to `policy.decide` by tests), the same facts
(the decision's script, store.bulk), the same changes still waiting for Redis in the
journal. What differs from a call: nothing is counted and no decision record is written
(one `scrub` record for the whole file), the caller-ID rule is left out (it judges the
call's presentation, not the lead: `check --caller-id` tries it), and a number is read as
a lead file writes it (no outside-line prefix).

A million leads must take seconds, so a lead is mostly a few dictionary lookups: every
number of one kind, territory and zones is decided alike for the same facts, so the
decision of each (kind of number, the script's raw reply) is kept; only a lead with facts
never met (a consent's own dates, say) is decided afresh. No Number is made on the common
path: `fast_key` gives the store key, and its first digits the kind of number.

No terminal here: the CLI (dialguard.cli.scrub) draws the progress and the summary.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NamedTuple
from zoneinfo import ZoneInfo

from dialguard import lawful, leads
from dialguard import policy as rules
from dialguard.audit import Journal
from dialguard.changes import Change
from dialguard.importing import NoProgress, Progress
from dialguard.leads import LeadHeader, without_newline
from dialguard.model import Campaign, Facts, Purpose, Reason, Result, Unavailable
from dialguard.numbers import MAX_INPUT, InvalidNumber, Number, fast_key, normalise
from dialguard.pending import PENDING_DAYS, Pending, journal_changes
from dialguard.policy import Policy
from dialguard.service import new_id
from dialguard.store import Store
from dialguard.store.bulk import MAX_BATCH, NOTHING, PER_NUMBER, split_times
from dialguard.store.facts import Decoder, ListsInForce
from dialguard.store.packed import consent_seconds

__all__ = [
    "REPORT_COLUMNS",
    "Judge",
    "Outcome",
    "Request",
    "ScrubFailed",
    "Verdict",
    "run_scrub",
]

REPORT_COLUMNS = ("result", "reason", "number_e164", "callable_from")
# Decisions kept (per kind of number and raw facts shared by many numbers): far more
# than the shapes a file has (no facts, listed, clear, on the imported do-not-call list
# with one of its reasons...); past it, the memory is given back.
KEPT_DECISIONS = 20_000
# Report cells kept, by verdict object: far more than a file's verdicts without an instant.
KEPT_CELLS = 1000
# How often (batches) the progress is told.
PROGRESS_EVERY = 16


class ScrubFailed(Exception):
    """One line for the user; nothing was written."""


class Verdict(NamedTuple):
    result: Result
    reason: Reason
    callable_from: datetime | None = None  # blocked by what time lifts: when it is lawful


@dataclass(frozen=True)
class Request:
    path: Path
    campaign: Campaign
    now: datetime
    column: str | None = None
    out: Path | None = None  # the callable leads
    report: Path | None = None  # the blocked leads, and why
    operator: str = ""
    # The file writes French numbers without their trunk 0 (VICIdial's `phone_number`,
    # "612345678"): nine digits are read as the national number "0" + them.
    nsn: bool = False


@dataclass
class Outcome:
    file: str
    sha256: str = ""
    bytes: int = 0
    leads: int = 0
    callable: int = 0
    blocked: int = 0
    by_reason: Counter[tuple[str, str]] = field(default_factory=Counter)  # (result, reason)
    # The earliest and latest callable_from of each reason (blocked leads only).
    earliest: dict[str, datetime] = field(default_factory=dict)
    latest: dict[str, datetime] = field(default_factory=dict)
    never: Counter[str] = field(default_factory=Counter)  # blocked by time, no answer found
    pending: int = 0  # changes waiting for Redis in the journal, counted
    header: LeadHeader | None = None
    record: str = ""  # the scrub record's id
    seconds: float = 0.0
    # Leads by verdict while the file is read: verdicts without an instant, a few dozen
    # at most, shared by many leads (a count each); those with one go to `timed`.
    tally: Counter[Verdict] = field(default_factory=Counter)

    def timed(self, verdict: Verdict) -> None:
        """Count a verdict with its callable_from (few, and each instant its own)."""
        reason, when = verdict.reason.value, verdict.callable_from
        assert when is not None
        self.by_reason[(verdict.result.value, reason)] += 1
        self.leads += 1
        self.blocked += 1
        if reason not in self.earliest or when < self.earliest[reason]:
            self.earliest[reason] = when
        if reason not in self.latest or when > self.latest[reason]:
            self.latest[reason] = when

    def settle(self) -> None:
        """The counts of the tally."""
        for verdict, count in self.tally.items():
            result, reason, _ = verdict
            self.leads += count
            self.by_reason[(result.value, reason.value)] += count
            if result is Result.ALLOW:
                self.callable += count
                continue
            self.blocked += count
            if reason in lawful.TIME_LIFTS:
                self.never[reason.value] += count
        self.tally.clear()


def scrub_campaign(campaign: Campaign) -> Campaign:
    """The campaign a lead is judged for: without the caller-ID rule (the presented
    number is the call's, the same for every lead; `check --caller-id` judges it)."""
    return replace(campaign, automated=False, caller_ids=None)


class Judge:
    """A lead's decision, with what decides it kept: pure (the facts are arguments)."""

    def __init__(self, campaign: Campaign, policy: Policy, now: datetime) -> None:
        if now.tzinfo is None:
            raise ValueError("the instant must carry its time zone")
        self.campaign = scrub_campaign(campaign)
        self.policy = policy
        self.now = now
        self.min_cap = min(v.max_attempts for v in policy.versions)
        self.longest_window = max(v.window_days for v in policy.versions)
        # What the store need not read (store.bulk.BulkFacts.scan): the registry but
        # as the consent regime reads it, when no version of the opt-out regime is in
        # force from now on; nothing but the entry of a number on the company's list,
        # when the campaign honours it (the list denies before any other rule reads the
        # facts); no attempts of a number without a consent or a contract, when the
        # consent regime holds from now on and the campaign prospects (no legal basis
        # then, at this instant or any later one: the frequency rule, last, is never
        # reached). The journal's changes only add denials (Pending.overlay).
        self.consent_regime = not policy.optout_regime_from(now)
        self.dnc_final = self.campaign.honour_dnc
        self.basis_first = self.consent_regime and self.campaign.purpose is Purpose.PROSPECTING
        self._moment = rules.Moment(self.campaign, policy, now)
        # The first five digits of a number of the French plan's national significant
        # number -> its country code, the Number standing for its kind, its window: they
        # fix all three (numbers._territory). At most 100,000, whatever the file's size;
        # the file's loop reads a "0612345678" with one lookup here (`prefixes`).
        self.prefixes: dict[str, tuple[str, Number, int]] = {}
        self._shared: dict[tuple[str, Number, int], tuple[str, Number, int]] = {}
        self._kinds: dict[tuple[Any, ...], Number] = {}  # one Number for each kind
        # Verdicts by (kind of number, the store's raw entries): see `keep`.
        self.decided: dict[tuple[int, tuple[Any, ...]], Verdict] = {}
        # Verdicts with a callable_from by (kind, entries with the consent's standing),
        # for the leads whose consent holds until then (`timed_verdict`).
        self.timed: dict[tuple[int, tuple[Any, ...]], Verdict] = {}
        self._daily: dict[tuple[Any, ...], Any] = {}
        self._verdicts: dict[tuple[Result, Reason], Verdict] = {}
        # The longest a consent holds, by kind (`_kinds` holds them: ids stay theirs).
        self._validity: dict[int, int] = {}

    def number(self, cell: str) -> tuple[str, Number, int] | Verdict:
        """(store key, the Number standing for its kind, the attempts window in days) of
        a lead's number, or the verdict of one decided without facts (invalid, emergency
        or short)."""
        text = cell.strip()
        spelled = text.replace(" ", "") if " " in text else text
        # Over MAX_INPUT characters, spaces included, normalise refuses it.
        key = fast_key(spelled) if len(text) <= MAX_INPUT else None
        if key is not None:  # a key of the French plan: a country code, then 9 digits
            known = self.prefixes.get(key[-9:-4])
            if known is None:
                kind = self._kind(normalise("+" + key))
                found = (key[:-9], kind, self.window_days(kind))
                # One tuple for all the prefixes it holds for (a few dozen): the dictionary
                # holds keys, not 100,000 tuples.
                known = self.prefixes[key[-9:-4]] = self._shared.setdefault(found, found)
            return key, known[1], known[2]
        try:
            number = normalise(text)
        except InvalidNumber as exc:
            decision = rules.decide(self.campaign, None, Facts(), self.now, self.policy, str(exc))
            return self.verdict(decision.result, decision.reason)
        if number.never_blocked:
            decision = rules.decide(self.campaign, number, Facts(), self.now, self.policy)
            return self.verdict(decision.result, decision.reason)
        kind = self._kind(number)
        return number.key, kind, self.window_days(kind)

    def _kind(self, number: Number) -> Number:
        # What the rules read of a number besides its key: kind, territory, zones.
        return self._kinds.setdefault((number.kind, number.territory, number.timezones), number)

    def window_days(self, kind: Number) -> int:
        """The attempts window of the version in force on the lead's date."""
        zone = ZoneInfo((kind.timezones or (self.policy.default_timezone,))[0])
        return self.policy.at(self.now.astimezone(zone).date()).window_days

    def keep(
        self,
        kind: Number,
        entry: tuple[Any, ...],
        verdict: Verdict,
        standing: tuple[Any, ...] | None = None,
    ) -> None:
        """Keep the verdict of a lead of this kind whose facts the store read as `entry`,
        when other leads may have those entries too: every lead of its kind with them
        has it (`decided`). Entries of one number alone (a consent's, a withdrawal's, a
        refusal's instants, a contract, a live entry) are not kept: they
        would come back for no other lead, and hold memory that grows with the file.
        A lead whose one entry of its own is its consent is kept by the consent's
        `standing` instead, when time cannot lift its verdict (a callable_from would
        read the consent's instants)."""
        if standing is not None:
            if verdict.reason not in lawful.TIME_LIFTS:
                self._remember(kind, standing, verdict)
            elif verdict.callable_from is not None:
                given, expires = consent_seconds(entry[2])  # decoded by `standing` already
                if self._moment.consent_holds(given, expires, verdict.callable_from):
                    if len(self.timed) >= KEPT_DECISIONS:
                        self.timed.clear()
                    self.timed[(id(kind), standing)] = verdict
            return
        dnc, _, consent, withdrawal, contracts, refusal, _, live, live_contracts = entry
        if consent or withdrawal or contracts or refusal or live or live_contracts:
            return
        if dnc and dnc[:2] != b"I|":
            return
        self._remember(kind, entry, verdict)

    def _remember(self, kind: Number, entry: tuple[Any, ...], verdict: Verdict) -> None:
        if len(self.decided) >= KEPT_DECISIONS:
            self.decided.clear()
        self.decided[(id(kind), entry)] = verdict

    def standing(self, kind: Number, entry: tuple[Any, ...]) -> tuple[Any, ...] | None:
        """The entries of a lead whose one entry of its own is an imported consent, with
        the consent's standing at the scrub's instant in its place (policy.Moment:
        given yet, expired), when the rules read nothing more of it: no withdrawal, and
        no registry listing (both compared with the consent's instants). None otherwise,
        or for a consent that does not decode (the lead is decided afresh, as unreadable).
        """
        dnc, optout, consent, withdrawal, contracts, refusal, attempts, live, live_contracts = entry
        if not consent or withdrawal or contracts or refusal or live or live_contracts:
            return None
        if (dnc and dnc[:2] != b"I|") or (optout and optout[-2:] == b"|L"):
            return None
        try:
            given, expires = consent_seconds(consent)
        except (ValueError, OverflowError, IndexError):
            return None
        validity = self._validity.get(id(kind))
        if validity is None:
            validity = self._validity[id(kind)] = self._moment.validity_s(kind)
        standing = self._moment.standing_of(validity, given, expires)
        return (dnc, optout, standing, None, None, None, attempts, None, None)

    def timed_verdict(
        self, kind: Number, entry: tuple[Any, ...], standing: tuple[Any, ...]
    ) -> Verdict | None:
        """The verdict time lifts of a lead with these entries whose consent holds until
        its callable_from: the one kept for another lead of its kind with the same
        entries but its consent, which held that long too (`keep`): the rules decided
        that lead at every instant up to then as they decide this one."""
        verdict = self.timed.get((id(kind), standing))
        if verdict is None or verdict.callable_from is None:
            return None
        given, expires = consent_seconds(entry[2])
        if not self._moment.consent_holds(given, expires, verdict.callable_from):
            return None
        return verdict

    def verdict(self, result: Result, reason: Reason) -> Verdict:
        """The one Verdict of this result and reason without an instant: a file's leads
        share a few dozen, and are counted by them (`Tally`)."""
        found = self._verdicts.get((result, reason))
        if found is None:
            found = self._verdicts[(result, reason)] = Verdict(result, reason)
        return found

    def needs_attempts(self, verdict: Verdict, facts: Facts) -> bool:
        """Whether `callable_from` needs the attempts' instants: only a count that some
        version's cap could stop (below every cap, the count can only fall)."""
        return verdict.reason in lawful.TIME_LIFTS and facts.attempts_30d >= self.min_cap

    def decide(self, kind: Number, facts: Facts, attempts_ms: list[int] | None = None) -> Verdict:
        """A lead's verdict from its facts; callable_from for a denial time lifts (without
        `attempts_ms` when `needs_attempts` says so: None)."""
        result, reason = self._moment.outcome(kind, facts)
        if result is Result.ALLOW or reason not in lawful.TIME_LIFTS:
            return self.verdict(result, reason)
        if attempts_ms is None and facts.attempts_30d >= self.min_cap:
            return self.verdict(result, reason)
        when = lawful.callable_from(
            self.campaign, kind, facts, self.now, self.policy, attempts_ms, self._daily
        )
        return Verdict(result, reason, when)

    def unreadable(self, kind: Number, detail: str) -> Verdict:
        """An entry the store holds but cannot decode: the campaign's fail mode decides,
        as for that call."""
        gone = Unavailable(Reason.STORE_UNAVAILABLE, f"undecodable entry in Redis: {detail}")
        decision = rules.decide_unavailable(
            self.campaign, kind, Facts(), gone, self.now, self.policy
        )
        return self.verdict(decision.result, decision.reason)


# One lead of a batch: its raw bytes, its store key (or ""), the Number of its kind, and
# its verdict when decided without facts.
_Lead = tuple[bytes, str, Number | None, Verdict | None]


async def run_scrub(
    request: Request,
    policy: Policy,
    store: Store,
    journal: Journal | None,
    node: str,
    *,
    progress: Progress | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Outcome:
    """Scrub one file: read every lead, decide it, write the outputs, then the `scrub`
    record (`journal`), then put the outputs in place. leads.BadLeadFile (one line) for
    a file that is not a lead file; ScrubFailed for one that cannot be read or written.
    Nothing is left behind on failure."""
    progress = progress or NoProgress()
    started = time.monotonic()
    judge = Judge(request.campaign, policy, request.now)
    principal = request.campaign.principal
    outcome = Outcome(file=request.path.name)
    digest = hashlib.sha256()
    handle = _open(request.path)
    outputs = _Outputs(request)
    try:
        lines = leads.physical_lines(handle, digest)
        # The file first: a file that is no lead file is said so, whatever Redis does.
        header = outcome.header = leads.read_header(lines, request.column)
        waiting = await _waiting(store, journal)
        outcome.pending = len(waiting.pending)
        outputs.open(header)
        size = os.fstat(handle.fileno()).st_size or 1
        progress.start("scrubbing", size)
        batches = _batches(leads.rows(lines, header), judge, request.nsn)
        decoder = Decoder()
        sent = rows = 0
        tally = _Tally(outcome)
        count = tally.count
        write = outputs.write
        callable_out = outputs.callable_out
        allow = Result.ALLOW
        scan = store.bulk.scan(
            principal,
            request.now,
            batches,
            consent_regime=judge.consent_regime,
            dnc_final=judge.dnc_final,
            basis_first=judge.basis_first,
            times_from=judge.min_cap,
            times_window_days=judge.longest_window,
        )
        async with contextlib.aclosing(scan) as answers:
            async for scanned in answers:
                batch = scanned.payload
                verdicts = _decide(batch, scanned.entries, scanned.lists, judge, decoder, waiting)
                for (raw, key, kind, _), verdict in zip(batch, verdicts, strict=True):
                    if verdict.callable_from is None:
                        count(verdict)
                    else:
                        outcome.timed(verdict)
                    if verdict.result is allow:
                        if callable_out is not None:
                            callable_out(raw)
                    else:
                        write(raw, key, kind, verdict)
                rows += len(batch)
                sent += 1
                if sent % PROGRESS_EVERY == 0:
                    progress.advance(handle.tell(), rows, time.monotonic() - started)
        outcome.bytes = handle.tell()
        outcome.sha256 = digest.hexdigest()
        tally.settle()
        outcome.settle()
        progress.advance(size, outcome.leads, time.monotonic() - started)
        outputs.finish()
        if journal is not None:
            outcome.record = await _account(journal, node, request, policy, outcome, clock())
        outputs.publish()
    except BaseException:
        outputs.abandon()
        raise
    finally:
        handle.close()
        progress.finish()
    outcome.seconds = time.monotonic() - started
    return outcome


def _batches(
    rows: Iterator[leads.Row], judge: Judge, nsn: bool = False
) -> Iterator[tuple[list[_Lead], list[tuple[str, int]]]]:
    """The leads in batches of at most MAX_BATCH that need the store's facts (blank
    lines left out), and those requests: (store key, window days). `nsn`: nine digits
    not starting with 0 are a national number without its 0."""
    payload: list[_Lead] = []
    requests: list[tuple[str, int]] = []
    number_of = judge.number
    prefixes = judge.prefixes
    invalid = judge.verdict(Result.DENY, Reason.INVALID_NUMBER)
    for _, raw, text, problem in rows:
        if text is None:
            if problem:
                payload.append((raw, "", None, invalid))
            continue  # else a blank line: no lead
        if nsn and len(text) == 9 and text[0] != "0" and text.isdigit() and text.isascii():
            text = "0" + text
        if len(text) == 10 and text[0] == "0" and text.isdigit() and text.isascii():
            # "0612345678", as fast_key reads it: its national significant number's first
            # five digits fix its country code, kind and window (`judge.number` found
            # them); "00..." is never among them.
            known = prefixes.get(text[1:6])
            if known is not None:
                national = known[0] + text[1:]
                payload.append((raw, national, known[1], None))
                requests.append((national, known[2]))
                if len(requests) == MAX_BATCH:
                    yield payload, requests
                    payload, requests = [], []
                continue
        key: str | None = None
        if text[:1] != "+":
            # A national number, or 0033..., as CRMs write it ("06 12 34 56 78",
            # "06.12.34.56.78"): spaces and dots are all `normalise` takes out of digits
            # alone (no "+", no "(0)" to read), so without them it reads the same.
            spelled = text
            if not text.isdigit() and len(text) <= MAX_INPUT:
                spelled = text.replace(" ", "").replace(".", "")
            if len(spelled) == 10 and spelled.isdigit() and spelled.isascii():
                if spelled[0] == "0":
                    known = prefixes.get(spelled[1:6])
                    if known is not None:
                        key = known[0] + spelled[1:]
            elif len(spelled) == 13:
                key = fast_key(spelled)
        elif len(text) == 12:
            key = fast_key(text)  # "+33612345678"
        if key is not None:
            known = prefixes.get(key[-9:-4])
            if known is not None:
                payload.append((raw, key, known[1], None))
                requests.append((key, known[2]))
                if len(requests) == MAX_BATCH:
                    yield payload, requests
                    payload, requests = [], []
                continue
        found = number_of(text)
        if isinstance(found, Verdict):
            payload.append((raw, "", None, found))
            continue
        key, kind, window = found
        payload.append((raw, key, kind, None))
        requests.append((key, window))
        if len(requests) == MAX_BATCH:
            yield payload, requests
            payload, requests = [], []
    if payload:
        yield payload, requests


def _decide(
    batch: list[_Lead],
    entries: list[Any],
    lists: ListsInForce,
    judge: Judge,
    decoder: Decoder,
    waiting: _Waiting,
) -> list[Verdict]:
    """Each lead's verdict, in order. A lead at the 30-day cap comes with its attempts'
    instants (the scan sends them from `judge.min_cap` on): its callable_from needs them."""
    verdicts: list[Verdict] = []
    decided = judge.decided
    waiting_keys = waiting.keys
    numbers = iter(entries)
    for _, key, kind, verdict in batch:
        if verdict is not None:
            verdicts.append(verdict)
            continue
        assert kind is not None
        reply = next(numbers)
        times = None
        if reply is None:
            entry = NOTHING
        elif len(reply) == PER_NUMBER:
            entry = tuple(reply)
        else:
            entry, times = split_times(reply)
        overlaid = key in waiting_keys
        standing = None
        if not overlaid:
            # An entry with an imported consent is never kept as it is (`keep`).
            verdict = None if entry[2] else decided.get((id(kind), entry))
            if verdict is not None:
                verdicts.append(verdict)
                continue
            if entry[2]:  # an imported consent: most leads with one share its standing
                standing = judge.standing(kind, entry)
                if standing is not None:
                    verdict = decided.get((id(kind), standing))
                    if verdict is None and standing[2] == (True, False):
                        verdict = judge.timed_verdict(kind, entry, standing)
                    if verdict is not None:
                        verdicts.append(verdict)
                        continue
        facts = decoder.facts(entry, lists)
        if isinstance(facts, Exception):
            verdicts.append(judge.unreadable(kind, str(facts)))
            continue
        if overlaid:
            facts = waiting.pending.overlay(key, judge.campaign.principal, facts)
        verdict = judge.decide(kind, facts, times)
        # One at the cap is its attempts' instants' alone: kept, it would answer for
        # other leads of the same count.
        if not overlaid and not judge.needs_attempts(verdict, facts):
            judge.keep(kind, entry, verdict, standing)
        verdicts.append(verdict)
    return verdicts


class _Tally:
    """The leads of each verdict without an instant, counted by the verdict object (the
    Judge's: a few dozen, `Judge.verdict`), not its value: hashing a verdict's enums
    costs more than the rest of a kept lead. Bounded whatever the verdicts: past
    KEPT_COUNTS objects, the counts go to the outcome's tally (by value)."""

    KEPT_COUNTS = 1000

    def __init__(self, outcome: Outcome) -> None:
        self._outcome = outcome
        # id -> [the verdict (holding it keeps its id its own), its leads]
        self._counts: dict[int, list[Any]] = {}

    def count(self, verdict: Verdict) -> None:
        counted = self._counts.get(id(verdict))
        if counted is None:
            if len(self._counts) >= self.KEPT_COUNTS:
                self.settle()
            self._counts[id(verdict)] = [verdict, 1]
        else:
            counted[1] += 1

    def settle(self) -> None:
        tally = self._outcome.tally
        for verdict, number in self._counts.values():
            tally[verdict] += number
        self._counts.clear()


@dataclass(frozen=True)
class _Waiting:
    pending: Pending
    keys: frozenset[str]  # the numbers they are about


async def _waiting(store: Store, journal: Journal | None) -> _Waiting:
    """The changes the journal holds and Redis has not taken (a do-not-call asked for
    while Redis was down): a scrub counts them, as decisions do."""
    pending = Pending(store, None)
    if journal is None or not journal.directory.is_dir():
        return _Waiting(pending, frozenset())
    changes = journal_changes(journal.directory, PENDING_DAYS, datetime.now(UTC))
    applied = await store.applied([change.id for change in changes])
    waiting: list[Change] = [change for change in changes if change.id not in applied]
    pending.queue(waiting)
    return _Waiting(pending, frozenset(change.number_key for change in waiting))


def _open(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except FileNotFoundError:
        raise ScrubFailed(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ScrubFailed(f"{path}: is a directory, not a file") from None
    except OSError as exc:
        raise ScrubFailed(f"{path}: cannot read: {exc.strerror}") from None


class _Outputs:
    """CALLABLE and REPORT, written beside their final names and put there at the end:
    a scrub that fails leaves neither, nor half of one."""

    def __init__(self, request: Request) -> None:
        self._targets = [p for p in (request.out, request.report) if p is not None]
        self._out_path = request.out
        self._report_path = request.report
        self._out: IO[bytes] | None = None
        self._report: IO[bytes] | None = None
        self._sep = b","
        self._newline = b"\n"
        self._width = 1
        self._cells: dict[int, tuple[bytes, bytes, Verdict]] = {}

    @staticmethod
    def _partial(path: Path) -> Path:
        return path.with_name(path.name + ".part")

    def _create(self, path: Path) -> IO[bytes]:
        partial = self._partial(path)
        try:
            # 0600: a lead file is personal data, as the journal and its exports are.
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ScrubFailed(f"{path}: cannot write: {exc.strerror}") from None
        return open(fd, "wb", buffering=1 << 20)

    def open(self, header: LeadHeader) -> None:
        self._sep = header.delimiter.encode()
        self._newline = header.newline
        self._width = len(header.columns)
        if self._out_path is not None:
            self._out = self._create(self._out_path)
            self._out.write(header.raw)
        if self._report_path is not None:
            self._report = self._create(self._report_path)
            added = self._sep.join(name.encode() for name in REPORT_COLUMNS)
            self._report.write(without_newline(header.raw) + self._sep + added + self._newline)

    @property
    def callable_out(self) -> Callable[[bytes], Any] | None:
        """What writes a callable row as it is, None when no CALLABLE file is asked."""
        return None if self._out is None else self._out.write

    def write(self, raw: bytes, key: str, kind: Number | None, verdict: Verdict) -> None:
        """A blocked lead's row in REPORT (a callable one: `callable_out`)."""
        if verdict.result is Result.ALLOW:
            if self._out is not None:
                self._out.write(raw)
            return
        if self._report is None:
            return
        if raw[-2:] == b"\r\n":
            body, ending = raw[:-2], b"\r\n"
        elif raw[-1:] == b"\n":
            body, ending = raw[:-1], b"\n"
        else:
            body, ending = raw, self._newline
        zones = kind.timezones if kind is not None else ()
        before, after = self._added(verdict, zones)
        missing = self._width - self._fields(body)
        if missing > 0:  # a short row: its cells, empty ones, then ours under our names
            body += self._sep * missing
        # "+33...": a spreadsheet would take it for a formula, so it gets its quote, as
        # csv_cells.cell gives every cell starting with "+".
        e164 = b"'+" + key.encode() if key else b""
        self._report.write(b"".join((body, before, e164, after, ending)))

    def _fields(self, body: bytes) -> int:
        if b'"' not in body:
            return body.count(self._sep) + 1
        try:
            text = body.decode("latin-1")  # the csv module sees the bytes (leads.py)
            return len(next(csv.reader([text], delimiter=self._sep.decode()), []))
        except csv.Error:
            return body.count(self._sep) + 1

    def _added(self, verdict: Verdict, zones: tuple[str, ...]) -> tuple[bytes, bytes]:
        """What goes before the number_e164 cell (result and reason, with their
        separators) and after it (callable_from); those without an instant kept (a few
        dozen, for most blocked leads)."""
        when = verdict.callable_from
        if when is None:
            # By the verdict object (the Judge's, a few dozen: `Judge.verdict`), held
            # with its cells so that its id stays its own; hashing its enums costs more.
            found = self._cells.get(id(verdict))
            if found is None:
                if len(self._cells) >= KEPT_CELLS:
                    self._cells.clear()
                found = self._cells[id(verdict)] = (self._head(verdict), self._sep, verdict)
            return found[0], found[1]
        # In the callee's zone, with its offset: what the campaign manager plans by.
        zone = ZoneInfo(zones[0]) if zones else UTC
        instant = when.astimezone(zone).isoformat(timespec="seconds").encode()
        return self._head(verdict), self._sep + instant

    def _head(self, verdict: Verdict) -> bytes:
        sep = self._sep
        return sep + verdict.result.value.encode() + sep + verdict.reason.value.encode() + sep

    def finish(self) -> None:
        """Everything on disk (fsync), still under the partial names."""
        for handle in (self._out, self._report):
            if handle is None:
                continue
            try:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
            except OSError as exc:
                raise ScrubFailed(f"{handle.name}: cannot write: {exc.strerror}") from None

    def publish(self) -> None:
        for path in self._targets:
            try:
                os.replace(self._partial(path), path)
            except OSError as exc:
                raise ScrubFailed(f"{path}: cannot write: {exc.strerror}") from None

    def abandon(self) -> None:
        for handle in (self._out, self._report):
            if handle is not None:
                with contextlib.suppress(OSError):
                    handle.close()
        for path in self._targets:
            with contextlib.suppress(OSError):
                self._partial(path).unlink()


async def _account(
    journal: Journal,
    node: str,
    request: Request,
    policy: Policy,
    outcome: Outcome,
    now: datetime,
) -> str:
    """The one audit record of a scrub: which file, for which campaign, as of when, what
    it found. Written before the outputs are put in place."""
    ref = policy.ref_at(request.now.astimezone(ZoneInfo(policy.default_timezone)).date())
    record_id = new_id(now)
    await journal.append(
        {
            "id": record_id,
            "ts": int(now.timestamp() * 1000),
            "node": node,
            "kind": "scrub",
            "campaign": request.campaign.name,
            "principal": request.campaign.principal,
            "at": request.now.isoformat(),
            "policy": ref.as_json(),
            "file": request.path.name,
            "sha256": outcome.sha256,
            "bytes": outcome.bytes,
            "column": outcome.header.number_name if outcome.header else None,
            **({"number_form": "nsn"} if request.nsn else {}),
            "leads": outcome.leads,
            "callable": outcome.callable,
            "blocked": outcome.blocked,
            "by_reason": {
                reason: count for (_, reason), count in sorted(outcome.by_reason.items())
            },
            "pending": outcome.pending,
            "out": request.out.name if request.out else None,
            "report": request.report.name if request.report else None,
            "operator": request.operator,
            "adapter": "cli",
        }
    )
    return record_id
