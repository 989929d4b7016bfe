"""FastAGI server: `dialguard serve`. A thin asyncio loop around `agi.protocol`.

One task per session. Asterisk connects, sends its agi_* block, and waits for commands;
it has no read timeout of its own, so every wait here is bounded:

- the decision must be taken within `deadline_ms` of the connect, or the campaign's fail
  mode decides (reason DEADLINE);
- the whole session (a client slow to send its block, or to answer our commands) is cut
  off after `session_timeout_ms`; closing the socket hands the call back to the dialplan,
  which then sees no DIALGUARD_RESULT and must fail closed.

Scripts (the path of `agi://host:port/SCRIPT,args`):

- `check,NUMBER,CAMPAIGN[,CALLERID]`: decide, count the attempt, make the audit record
  durable, then SET VARIABLE DIALGUARD_RESULT / _REASON / _ID / _NUMBER and close.
  CALLERID: the number the call presents, when the dialplan passes it (else agi_callerid,
  with agi_callingpres telling a withheld presentation).
- `outcome,NUMBER,refused|do-not-call,CAMPAIGN`: record what the consumer said; sets
  DIALGUARD_OUTCOME (RECORDED, INVALID or PENDING) and DIALGUARD_ID.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
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
from dialguard.answers import (
    SAFE_VALUE,
    Variables,
    agi_call,
    check_variables,
    outcome_variables,
)
from dialguard.audit import AuditUnavailable
from dialguard.config import ServerSettings
from dialguard.service import Service

__all__ = ["FastAgiServer", "Variables"]

log = structlog.get_logger("dialguard.fastagi")

Handler = Callable[[AgiRequest, float, ServerSettings], Awaitable[Variables]]


class FastAgiServer:
    def __init__(self, service: Service, settings: ServerSettings) -> None:
        self.service = service
        self.settings = settings
        self._server: asyncio.Server | None = None
        self._port = settings.port
        self._sessions: set[_Session] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._routes: dict[str, Handler] = {"check": self._check, "outcome": self._outcome}

    @property
    def port(self) -> int:
        """The port listened on (the one bound when the configuration said 0)."""
        return self._port

    @property
    def sessions(self) -> int:
        """Sessions open now (accepted, not yet closed)."""
        return len(self._sessions)

    def reconfigure(self, settings: ServerSettings) -> None:
        """Sessions accepted from now on run under `settings` (a reload: deadline, session
        bound, campaign from the account code); where it listens stays as started."""
        self.settings = replace(settings, host=self.settings.host, port=self.settings.port)

    async def start(self, *, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_session,
            self.settings.host,
            self.settings.port,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])
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

    def _new_session(self) -> _Session:
        # Counted from the accept itself, so that a stop() right after it waits for it.
        session = _Session(self)
        self._sessions.add(session)
        self._idle.clear()
        return session

    def _closed(self, session: _Session) -> None:
        self._sessions.discard(session)
        if not self._sessions:
            self._idle.set()

    async def _check(
        self, request: AgiRequest, deadline: float, settings: ServerSettings
    ) -> Variables:
        remaining = deadline - asyncio.get_running_loop().time()
        call = agi_call(request)
        return await check_variables(self.service, settings, call, "fastagi", remaining)

    async def _outcome(
        self, request: AgiRequest, deadline: float, settings: ServerSettings
    ) -> Variables:
        return await outcome_variables(self.service, settings, agi_call(request), "fastagi")


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
        # The settings of the moment it arrived: a reload meanwhile does not change them.
        self.settings = settings = self.server.settings
        self.deadline = self.started + settings.deadline_ms / 1000
        # Asterisk has no read timeout: a client too slow to send its block, or to answer
        # our commands, would otherwise hold its call (and this session) for ever.
        self.timer = loop.call_at(
            self.started + settings.session_timeout_ms / 1000, self.abort, "session timeout"
        )

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
            variables = await handler(request, self.deadline, self.settings)
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
        if not SAFE_VALUE.fullmatch(value):  # again, right before it reaches Asterisk
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
