"""The Stasis application: the same decisions as FastAGI, through ARI.

Dialplan: `Stasis(dialguard,${NUMBER},${CAMPAIGN}[,${CALLERID(num)}])` (the caller ID the
call presents; without it, the channel's caller number). On `StasisStart` the app decides (the
deadline and the campaign's fail mode exactly as FastAGI), sets DIALGUARD_RESULT / _REASON
/ _ID / _NUMBER on the channel, then:

- ALLOW: `continue` (the dialplan's next priority dials);
- DENY: `on_deny = "hangup"`: hang up with cause 21 (CALL_REJECTED); `"continue"`: back to
  the dialplan, which decides (DIALSTATUS=DNC, cause 21 or 34: asterisk-sample/).

`Stasis(dialguard,outcome,NUMBER,refused|do-not-call,CAMPAIGN)` records what the consumer
said (DIALGUARD_OUTCOME, as the FastAGI `outcome` script) and continues.

Resilience. A channel stays parked in Stasis until the app acts on it, with or without the
websocket. So each channel is tracked from its event to the action that releases it:

- in flight (a task deciding or acting): never started twice;
- decided, action not delivered (Asterisk unreachable): the same answer is delivered again
  after the reconnect, never a second decision (one decision, one audit record, one count);
- settled: remembered for `SETTLED_MEMORY_S`, so that a channel Asterisk still lists for a
  moment after our `continue` is not decided again.

After every (re)connect the app lists the channels parked in its application and settles
those it has not seen (their StasisStart was lost with the connection): it reads the
arguments back from the channel's dialplan (`app_data`). A channel parked for longer than
`recover_within_s` gets the campaign's fail mode (reason DEADLINE, audited as degraded),
not a fresh decision: see RECOVER_WITHIN_S.

Stopping: the websocket is closed first (new calls then get STASISSTATUS=FAILED and the
dialplan fails closed), the channels still parked are settled, the ones in flight finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from dialguard.answers import (
    SAFE_VALUE,
    ChannelCall,
    Variables,
    check_variables,
    outcome_variables,
)
from dialguard.ari.client import (
    AriClient,
    AriError,
    AriUnavailable,
    Channel,
    ChannelGone,
    NotInStasis,
    StasisStart,
)
from dialguard.audit import AuditUnavailable
from dialguard.config import AriSettings, ServerSettings
from dialguard.model import Reason, Result, Unavailable
from dialguard.service import Service
from dialguard.throttle import Throttle

__all__ = ["RECOVER_WITHIN_S", "SETTLED_MEMORY_S", "AriApp"]

log = structlog.get_logger("dialguard.ari")

CALL_REJECTED = 21  # Q.850 cause 21: the deliberate refusal; PJSIP sends 403 upstream

# A channel found parked after a reconnect, older than this (from its creation), is not
# decided afresh: the campaign's fail mode answers (DENY DEADLINE when failing closed).
# Ten seconds: past it, an agent on a manual dial has heard silence long enough to hang
# up, and a predictive dialer has paced other calls in its place; a fresh ALLOW would ring
# a consumer nobody is waiting to talk to (an abandoned call, itself regulated). Far above
# the deadline (300 ms), so a websocket blip (reconnect in 0.1 s) still gets real decisions.
RECOVER_WITHIN_S = 10.0
# How long a settled channel is remembered: well beyond the time Asterisk takes to take a
# continued or hung-up channel out of the application (milliseconds), and small enough that
# the memory stays bounded at any call rate (1,000 calls/s: 60,000 ids, a few MB).
SETTLED_MEMORY_S = 60.0
# Delivering a decided answer to an Asterisk that does not answer (a REST timeout, a
# restart): retried at once a few times with a short backoff (a blip, the websocket still
# up: nothing else would bring the channel back), then again after each reconnect; after
# DELIVERY_TRIES rounds the app gives up and logs it (the channel stays parked until the
# dialer gives up on it: blocked, never dialled).
RETRY_DELAYS_S = (0.05, 0.2, 0.5)
DELIVERY_TRIES = 5


@dataclass(frozen=True, slots=True)
class _Answer:
    """What to do to a channel: the variables, then continue or hang up."""

    variables: Variables
    hangup: bool


class AriApp:
    def __init__(
        self,
        service: Service,
        settings: AriSettings,
        server: ServerSettings,
        *,
        client: AriClient | None = None,
        recover_within_s: float = RECOVER_WITHIN_S,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.settings = settings
        self.server = server  # deadline_ms and campaign_from_accountcode, shared with FastAGI
        self.client = client or AriClient(settings)
        self.recover_within_s = recover_within_s
        self.wall = wall  # the age of a recovered channel; the policy's clock is the service's
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._audit_errors = Throttle()
        self._undelivered: dict[str, tuple[_Answer, int]] = {}
        self._settled: dict[str, float] = {}  # channel id -> monotonic time, oldest first
        self._runner: asyncio.Task[None] | None = None
        self._stopping = False
        self.connections = 0  # websocket connections opened (tests and logs)

    # --- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Connect once (AriError on failure: bad credentials, wrong URL), then run."""
        await self.client.connect()
        log.info("ari_connected", url=self.settings.url, app=self.settings.app)
        self._runner = asyncio.create_task(
            self.client.run_events(self._on_event, self._on_connected, connected=True)
        )

    async def start_retrying(self) -> None:
        """Run without a first connection: connect in the background, with backoff."""
        self._runner = asyncio.create_task(
            self.client.run_events(self._on_event, self._on_connected)
        )

    async def stop(self, grace_s: float = 10.0) -> None:
        self._stopping = True
        if self._runner is not None:  # first, or it would reconnect
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        # No new StasisStart for us: Asterisk answers STASISSTATUS=FAILED to new calls.
        await self.client.disconnect()
        # What is still parked (events not yet read, answers not yet delivered): settle it.
        with contextlib.suppress(AriError, TimeoutError):
            await asyncio.wait_for(self._sweep(), grace_s)
        in_flight = list(self._tasks.values())
        if in_flight:
            _, pending = await asyncio.wait(in_flight, timeout=grace_s)
            for task in pending:
                task.cancel()
        await self.client.close()
        log.info("ari_stopped", in_flight=len(in_flight), undelivered=len(self._undelivered))

    @property
    def _no_answer(self) -> _Answer:
        return _Answer({}, hangup=self.settings.on_deny == "hangup")

    @property
    def busy(self) -> int:
        """Channels being decided or acted on now."""
        return len(self._tasks)

    def busy_with(self, channel_id: str) -> bool:
        """Whether this channel is being decided or acted on now."""
        return channel_id in self._tasks

    # --- events -------------------------------------------------------------------------

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "ApplicationReplaced":
            # Another connection took our application (a second dialguard on the same app
            # name): its StasisStart events go there now. An operator must choose one.
            log.error("ari_application_replaced", app=self.settings.app)
        if kind != "StasisStart" or event.get("application") != self.settings.app:
            return  # StasisEnd, ChannelDestroyed...: nothing to do; 404s tell us the rest
        try:
            start = StasisStart.from_json(event)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ari_bad_stasis_start", error=str(exc))
            return
        deadline = asyncio.get_running_loop().time() + self.server.deadline_ms / 1000
        self._spawn(start.channel, start.args, deadline)

    async def _on_connected(self) -> None:
        self.connections += 1
        # Also on the first connection: channels a previous process left parked (it crashed,
        # or Asterisk was unreachable when it stopped) are waiting for somebody.
        try:
            await self._sweep()
        except AriError as exc:
            # The events still flow; the next reconnect sweeps again.
            log.error("ari_sweep_failed", error=str(exc))

    async def _sweep(self) -> None:
        """Settle every channel parked in the application that nothing is working on."""
        in_app = await self.client.application_channel_ids()
        for gone in self._undelivered.keys() - set(in_app):
            # Hung up while its answer waited: nothing left to deliver it to.
            del self._undelivered[gone]
            log.info("ari_channel_left", channel=gone, detail="hung up before delivery")
        parked = [
            channel_id
            for channel_id in in_app
            if channel_id not in self._tasks and not self._is_settled(channel_id)
        ]
        if not parked:
            return
        log.warning("ari_sweep", channels=len(parked))
        # Two requests for the whole sweep (the ids, then every channel), not one per channel:
        # after an outage there may be hundreds waiting.
        channels = {channel.id: channel for channel in await self.client.channels()}
        loop = asyncio.get_running_loop()
        for channel_id in parked:
            channel = channels.get(channel_id)
            if channel is None:
                continue  # hung up since
            if channel_id in self._undelivered:
                self._spawn(channel, (), 0.0)  # its answer, decided already, delivered again
                continue
            args = channel.stasis_args(self.settings.app)
            if args is None:
                continue  # in the application for another reason (not our Stasis() call)
            age = self.wall() - channel.created.timestamp() if channel.created else 0.0
            stale = age > self.recover_within_s
            log.warning("ari_recovered", channel=channel.name, age_s=round(age, 2), stale=stale)
            self._spawn(channel, args, loop.time() + self.server.deadline_ms / 1000, stale=stale)

    # --- one channel --------------------------------------------------------------------

    def _spawn(
        self, channel: Channel, args: tuple[str, ...], deadline: float, *, stale: bool = False
    ) -> None:
        if channel.id in self._tasks or self._is_settled(channel.id):
            return  # the same channel seen twice (event and sweep): one decision
        if channel.id in self._undelivered:
            answer, tries = self._undelivered.pop(channel.id)
            self._track(channel.id, self._deliver(channel.id, answer, tries + 1))
            return
        self._track(channel.id, self._settle(channel, args, deadline, stale))

    def _track(self, channel_id: str, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks[channel_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(channel_id, None))

    async def _settle(
        self, channel: Channel, args: tuple[str, ...], deadline: float, stale: bool
    ) -> None:
        try:
            answer = await self._answer(channel, args, deadline, stale)
        except AuditUnavailable as exc:
            # No durable record, no answer, as FastAGI: nothing is set, so a dialplan that
            # gets the channel back sees an empty DIALGUARD_RESULT and fails closed.
            suppressed = self._audit_errors.due()
            if suppressed is not None:
                log.error(
                    "audit_unavailable", error=str(exc), channel=channel.name, suppressed=suppressed
                )
            answer = self._no_answer
        except Exception:
            log.exception("ari_decision_failed", channel=channel.name)
            answer = self._no_answer
        await self._deliver(channel.id, answer, 1)

    async def _answer(
        self, channel: Channel, args: tuple[str, ...], deadline: float, stale: bool
    ) -> _Answer:
        call = ChannelCall(
            args[1:] if args and args[0] == "outcome" else args,
            channel.name,
            channel.id,
            channel.caller_number,
            channel.accountcode,
        )
        if args and args[0] == "outcome":
            variables = await outcome_variables(self.service, self.server, call, "ari")
            return _Answer(variables, hangup=False)
        remaining = deadline - asyncio.get_running_loop().time()
        # Stale: the store is not asked at all and the fail mode answers (a floor of 1 ms,
        # as FastAGI's, can be beaten by a local Redis).
        unavailable = None
        if stale:
            detail = f"channel found parked, older than {self.recover_within_s:g} s"
            unavailable = Unavailable(Reason.DEADLINE, detail)
        variables = await check_variables(
            self.service, self.server, call, "ari", remaining, unavailable
        )
        denied = variables["DIALGUARD_RESULT"] != Result.ALLOW.value
        return _Answer(variables, hangup=denied and self.settings.on_deny == "hangup")

    async def _deliver(self, channel_id: str, answer: _Answer, tries: int) -> None:
        try:
            for delay in RETRY_DELAYS_S:
                try:
                    await self._act(channel_id, answer)
                    break
                except AriUnavailable as exc:
                    if self._stopping:
                        raise
                    log.warning("ari_delivery_retry", channel=channel_id, error=str(exc))
                    await asyncio.sleep(delay)
            else:
                await self._act(channel_id, answer)
        except (ChannelGone, NotInStasis) as exc:
            # The caller hung up, or the channel left Stasis: the decision stays recorded.
            log.info("ari_channel_left", channel=channel_id, detail=str(exc))
        except AriUnavailable as exc:
            if tries < DELIVERY_TRIES and not self._stopping:
                self._undelivered[channel_id] = (answer, tries)
                log.warning("ari_delivery_deferred", channel=channel_id, error=str(exc))
                return
            log.error("ari_delivery_failed", channel=channel_id, error=str(exc))
        except (AriError, ValueError) as exc:
            log.error("ari_delivery_failed", channel=channel_id, error=str(exc))
            with contextlib.suppress(AriError):  # never leave it parked: fail closed
                await self.client.hangup(channel_id, CALL_REJECTED)
        self._remember(channel_id)

    async def _act(self, channel_id: str, answer: _Answer) -> None:
        # ARI sets one variable per request: the four go out together (one round trip of
        # latency instead of four; Asterisk serves each on its own HTTP thread, under the
        # channel's lock). Setting a variable twice (a retry) is harmless; the release
        # comes last, once all are set, so the dialplan never sees a partial answer.
        for name, value in answer.variables.items():
            if not SAFE_VALUE.fullmatch(value):  # again, right before it reaches Asterisk
                raise ValueError(f"refusing to write {name}={value!r}")
        results = await asyncio.gather(
            *(self.client.set_variable(channel_id, n, v) for n, v in answer.variables.items()),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if answer.hangup:
            await self.client.hangup(channel_id, CALL_REJECTED)
        else:
            await self.client.continue_in_dialplan(channel_id)

    def _remember(self, channel_id: str) -> None:
        now = time.monotonic()
        self._settled.pop(channel_id, None)  # re-inserted at the end: the order stays time's
        self._settled[channel_id] = now
        # Insertion order is time order: drop the expired ones from the front.
        while self._settled:
            oldest, when = next(iter(self._settled.items()))
            if now - when <= SETTLED_MEMORY_S:
                break
            del self._settled[oldest]

    def _is_settled(self, channel_id: str) -> bool:
        when = self._settled.get(channel_id)
        return when is not None and time.monotonic() - when <= SETTLED_MEMORY_S
