"""FastAGI server: `dialguard serve`. A thin asyncio loop around `agi.protocol`.

One task per session. Asterisk connects, sends its agi_* block, and waits for commands;
it has no read timeout of its own, so every wait here is bounded:

- the decision must be taken within `deadline_ms` of the connect, or the campaign's fail
  mode decides (reason DEADLINE);
- the whole session (a client slow to send its block, or to answer our commands) is cut
  off after `session_timeout_ms`; closing the socket hands the call back to the dialplan,
  which then sees no DIALGUARD_RESULT and must fail closed.

Scripts (the path of `agi://host:port/SCRIPT,args`):

- `check,NUMBER,CAMPAIGN`: decide, count the attempt, make the audit record durable, then
  SET VARIABLE DIALGUARD_RESULT / _REASON / _ID / _NUMBER and close.
- `outcome,NUMBER,refused|do-not-call,CAMPAIGN`: record what the consumer said; sets
  DIALGUARD_OUTCOME (RECORDED, INVALID or PENDING) and DIALGUARD_ID.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from dialguard.agi.protocol import (
    AgiConnection,
    AgiRequest,
    Closed,
    ProtocolError,
    Reply,
    UnsafeValue,
)
from dialguard.audit import AuditUnavailable
from dialguard.config import ServerSettings
from dialguard.model import CallRequest
from dialguard.numbers import InvalidNumber, normalise
from dialguard.service import OutcomeKind, Service
from dialguard.store import StoreUnavailable

__all__ = ["FastAgiServer"]

log = structlog.get_logger("dialguard.fastagi")

# What we ever write as a variable value (DESIGN.md): a reason code, an id, an E.164
# number. Checked again right before writing, so no input can reach Asterisk's parser.
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_+.-]{0,64}$")

Variables = dict[str, str]
Handler = Callable[[AgiRequest, float], Awaitable[Variables]]


class FastAgiServer:
    def __init__(self, service: Service, settings: ServerSettings) -> None:
        self.service = service
        self.settings = settings
        self._server: asyncio.Server | None = None
        self._sessions: set[_Session] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._routes: dict[str, Handler] = {"check": self._check, "outcome": self._outcome}

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, *, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Session(self),
            self.settings.host,
            self.settings.port,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        log.info("listening", host=self.settings.host, port=self.port, reuse_port=reuse_port)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, then let the sessions in flight finish (up to `grace_s`)."""
        if self._server is not None:
            self._server.close()
        in_flight = len(self._sessions)
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            for session in list(self._sessions):
                session.abort("server stopping")
        if self._server is not None:
            await self._server.wait_closed()
        log.info("stopped", in_flight=in_flight)

    def _opened(self, session: _Session) -> None:
        self._sessions.add(session)
        self._idle.clear()

    def _closed(self, session: _Session) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._idle.set()

    async def _check(self, request: AgiRequest, deadline: float) -> Variables:
        number = request.args[0] if request.args else ""
        campaign = request.args[1] if len(request.args) > 1 else ""
        if not campaign and self.settings.campaign_from_accountcode:
            campaign = request.accountcode
        call = CallRequest(
            number_raw=number,
            campaign=campaign,
            channel=request.channel,
            uniqueid=request.uniqueid,
            callerid=request.callerid,
            adapter="fastagi",
        )
        remaining = deadline - asyncio.get_running_loop().time()
        verdict = await self.service.decide(call, record=True, deadline_s=max(remaining, 0.001))
        decision = verdict.decision
        return {
            "DIALGUARD_RESULT": decision.result.value,
            "DIALGUARD_REASON": decision.reason.value,
            "DIALGUARD_ID": verdict.id,
            "DIALGUARD_NUMBER": decision.number.e164 if decision.number else "",
        }

    async def _outcome(self, request: AgiRequest, deadline: float) -> Variables:
        args = (*request.args, "", "", "")
        raw, kind_text, campaign_name = args[0], args[1], args[2]
        if not campaign_name and self.settings.campaign_from_accountcode:
            campaign_name = request.accountcode
        campaign = self.service.campaign(campaign_name)
        try:
            kind = OutcomeKind(kind_text)
            number = normalise(raw, campaign.outside_prefix if campaign else "")
        except (ValueError, InvalidNumber) as exc:
            log.warning("outcome_invalid", error=str(exc), channel=request.channel)
            return {"DIALGUARD_OUTCOME": "INVALID"}
        if campaign is None or number.never_blocked:
            log.warning("outcome_invalid", campaign=campaign_name, number=number.e164)
            return {"DIALGUARD_OUTCOME": "INVALID"}
        call = CallRequest(
            raw, campaign_name, request.channel, request.uniqueid, request.callerid, "fastagi"
        )
        try:
            record_id = await self.service.record_outcome(
                number, campaign, kind, self.service.clock(), request=call
            )
        except StoreUnavailable:
            return {"DIALGUARD_OUTCOME": "PENDING"}  # kept in the audit journal, logged
        return {"DIALGUARD_OUTCOME": "RECORDED", "DIALGUARD_ID": record_id}


class _Session(asyncio.Protocol):
    """One FastAGI connection: bytes in and out of the sans-I/O `AgiConnection`.

    A protocol object rather than a stream reader: Asterisk sends its block and then only
    short replies, and callbacks cost a fraction of what four awaited reads do.
    """

    def __init__(self, server: FastAgiServer) -> None:
        self.server = server
        self.conn = AgiConnection()
        self.transport: Any = None
        self.to_send: list[tuple[str, str]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        loop = asyncio.get_running_loop()
        self.started = loop.time()
        settings = self.server.settings
        self.deadline = self.started + settings.deadline_ms / 1000
        # Asterisk has no read timeout: a client too slow to send its block, or to answer
        # our commands, would otherwise hold its call (and this session) for ever.
        self.timer = loop.call_at(
            self.started + settings.session_timeout_ms / 1000, self.abort, "session timeout"
        )
        self.server._opened(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self.abort(f"protocol error: {exc}")
            return
        for event in events:
            if isinstance(event, AgiRequest):
                self.task = asyncio.get_running_loop().create_task(self._answer(event))
            elif isinstance(event, Reply):
                self._send_next()
            elif isinstance(event, Closed):
                self._close()
            # Hangup: the caller hung up; the session goes on in dead mode and the reply to
            # our command is still to come. Trying: not a final reply.

    def eof_received(self) -> bool:
        self.data_received(b"")
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        # A decision still being taken goes on to its audit record: counted and recorded,
        # even if Asterisk left before hearing it.
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None and not self.task.done():
            # Still in flight for a graceful stop until its record is written.
            self.task.add_done_callback(lambda _: self.server._closed(self))
        else:
            self.server._closed(self)

    async def _answer(self, request: AgiRequest) -> None:
        handler = self.server._routes.get(request.script)
        if handler is None:
            log.warning("unknown_script", script=request.script, channel=request.channel)
            self._close()
            return
        try:
            variables = await handler(request, self.deadline)
        except AuditUnavailable as exc:
            # No durable record, no answer: the dialplan sees no result and fails closed.
            log.error("audit_unavailable", error=str(exc))
            self._close()
            return
        except Exception:
            log.exception("session_failed", channel=request.channel)
            self._close()
            return
        self.to_send = list(variables.items())
        self.to_send.reverse()
        self._send_next()

    def _send_next(self) -> None:
        if self.closed:
            return
        if not self.to_send:
            self._close()  # closing the socket hands the call back to the dialplan
            return
        name, value = self.to_send.pop()
        if not _SAFE_VALUE.match(value):
            self.abort(f"refusing to write {name}={value!r}")
            return
        try:
            self.transport.write(self.conn.set_variable(name, value))
        except (ProtocolError, UnsafeValue) as exc:
            self.abort(str(exc))

    def abort(self, why: str) -> None:
        if not self.closed:
            log.warning("session_aborted", why=why, peer=self._peer())
            self._close()

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def _peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
