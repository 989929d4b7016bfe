"""FastAGI server: `dialguard serve`. A thin asyncio loop around `agi.protocol`.

One task per session. Asterisk connects, sends its agi_* block, and waits for commands;
it has no read timeout of its own, so every wait here is bounded:

- the decision must be taken within `deadline_ms` of the connect, or the campaign's fail
  mode decides (reason DEADLINE);
- the whole session (a client slow to send its block, or to answer our commands) is cut
  off after `session_timeout_ms`; closing the socket hands the call back to the dialplan,
  which then sees no DIALGUARD_RESULT and must fail closed.

Who gets a session at all is settled in `connection_made`, before a byte is read:

- a peer outside `[server] allow` is closed at once (docs/security.md);
- beyond `max_connections` open at once, the oldest connection that has not sent its
  block within `deadline_ms` is cut to make room (a real Asterisk sends it within a
  millisecond: a flood of silent connections cannot lock the real calls out); with none
  to cut, the new connection is closed at once. Either way a log line, at most one a
  minute per address and cause, and `dialguard_connections_refused_total`.

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
import ipaddress
import itertools
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
    State,
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
from dialguard.config import MAX_CONNECTIONS_LIMIT, IPNetwork, ServerSettings
from dialguard.service import Service
from dialguard.throttle import Throttle

__all__ = ["FastAgiServer", "Variables"]

log = structlog.get_logger("dialguard.fastagi")
_AUDIT_ERRORS = Throttle()  # one line per 10 s while the journal cannot be written

Handler = Callable[[AgiRequest, float, ServerSettings], Awaitable[Variables]]

# A refused address or cause is logged at most this often (a flood must not flood the log).
REFUSAL_LOG_EVERY_S = 60.0
# Bounds of the per-address memories (the allow-list's verdicts, the last log line): past
# them they start again empty, which costs a parse or a log line, never a wrong answer.
MAX_REMEMBERED = 4096
# At the cap, how many of the oldest connections are looked at for a silent one to cut:
# a few, so that an accept under a flood stays cheap.
EVICT_LOOK_AT = 8


class FastAgiServer:
    def __init__(self, service: Service, settings: ServerSettings) -> None:
        self.service = service
        self.settings = settings
        self._server: asyncio.Server | None = None
        self._port = settings.port
        # In the order accepted (a dict keeps it): the oldest come first when one is cut.
        self._sessions: dict[_Session, None] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._routes: dict[str, Handler] = {"check": self._check, "outcome": self._outcome}
        # cap_connections() lowers it when the open-file limit leaves no room for it.
        self.max_connections = settings.max_connections
        self._room = MAX_CONNECTIONS_LIMIT  # no limit of its own until cap_connections()
        self._allowed: dict[str, bool] = {}  # peer address -> in [server] allow
        self._refusals_logged: dict[tuple[str, str], tuple[float, int]] = {}

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
        self.max_connections = min(settings.max_connections, self._room)
        self._allowed.clear()

    def cap_connections(self, room: int) -> None:
        """Never more than `room` connections at once, whatever the configuration says:
        what the open-file limit leaves room for (serve works it out at start)."""
        self._room = room
        self.max_connections = min(self.settings.max_connections, room)

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
        self._sessions[session] = None
        self._idle.clear()
        return session

    def _closed(self, session: _Session) -> None:
        self._sessions.pop(session, None)
        if not self._sessions:
            self._idle.set()

    def _admit(self, session: _Session, host: str, now: float) -> bool:
        """Whether `session` (just accepted from `host`) may go on; if not, it is counted,
        logged and forgotten, and the caller closes it."""
        allowed = self._allowed.get(host)
        if allowed is None:
            if len(self._allowed) >= MAX_REMEMBERED:
                self._allowed.clear()
            allowed = self._allowed[host] = _in_networks(host, session.settings.allow)
        if not allowed:
            self._refused(session, "not_allowed", host, now)
            return False
        if len(self._sessions) > self.max_connections and not self._cut_silent(now):
            self._refused(session, "max_connections", host, now)
            return False
        return True

    def _cut_silent(self, now: float) -> bool:
        """Close the oldest connection that has sent no block within its deadline."""
        for old in itertools.islice(self._sessions, EVICT_LOOK_AT):
            if old.conn.state is State.AWAITING_BLOCK and now > old.deadline:
                self._count("silent_cut")
                self._log_refusal("silent_cut", old.host, now)
                old.closed = True
                old.transport.abort()
                self._sessions.pop(old, None)
                return True
        return False

    def _refused(self, session: _Session, cause: str, host: str, now: float) -> None:
        self._sessions.pop(session, None)
        if not self._sessions:
            self._idle.set()
        self._count(cause)
        self._log_refusal(cause, host, now)

    def _count(self, cause: str) -> None:
        telemetry = self.service.telemetry
        if telemetry is not None:
            telemetry.connection_refused(cause)

    def _log_refusal(self, cause: str, host: str, now: float) -> None:
        key = (cause, host)
        last, since = self._refusals_logged.get(key, (-REFUSAL_LOG_EVERY_S, 0))
        if now - last < REFUSAL_LOG_EVERY_S:
            self._refusals_logged[key] = (last, since + 1)
            return
        if len(self._refusals_logged) >= MAX_REMEMBERED:
            self._refusals_logged.clear()
        self._refusals_logged[key] = (now, 0)
        log.warning(
            "connection_refused",
            cause=cause,
            peer=host,
            open=len(self._sessions),
            max_connections=self.max_connections,
            more_since_last_line=since,
        )

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
        peer = transport.get_extra_info("peername")
        self.host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        if not self.server._admit(self, self.host, self.started):
            # Before any parsing: not a byte of it is read.
            self.closed = True
            self.transport.abort()  # uvloop's are not asyncio.Transport subclasses
            return
        # Asterisk has no read timeout: a client too slow to send its block, or to answer
        # our commands, would otherwise hold its call (and this session) for ever.
        self.timer = loop.call_at(
            self.started + settings.session_timeout_ms / 1000, self.abort, "session timeout"
        )

    def data_received(self, data: bytes) -> None:
        if self.closed:  # refused or cut: what it still sends is not read
            return
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
            suppressed = _AUDIT_ERRORS.due()
            if suppressed is not None:
                log.error("audit_unavailable", error=str(exc), suppressed=suppressed)
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


def _in_networks(host: str, networks: tuple[IPNetwork, ...]) -> bool:
    """Whether the address `host` (as a socket names a peer) is in one of `networks`."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])  # fe80::1%eth0: no zone
    except ValueError:
        return False  # not an IP address (a UNIX socket): not in any network
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv4 peer on a dual-stack "::" listener
    return any(address in network for network in networks)
