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
import socket
from collections.abc import Awaitable, Callable

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

# Bytes read per recv: a whole block is ~600 bytes, a reply a few dozen.
_READ_SIZE = 4096

Variables = dict[str, str]
Handler = Callable[[AgiRequest, float], Awaitable[Variables]]


class FastAgiServer:
    def __init__(self, service: Service, settings: ServerSettings) -> None:
        self.service = service
        self.settings = settings
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()
        self._routes: dict[str, Handler] = {"check": self._check, "outcome": self._outcome}

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, *, reuse_port: bool = False) -> None:
        self._server = await asyncio.start_server(
            self._session,
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
        sessions = set(self._sessions)
        if sessions:
            _, late = await asyncio.wait(sessions, timeout=grace_s)
            for task in late:
                task.cancel()
        if self._server is not None:
            await self._server.wait_closed()
        log.info("stopped", finished=len(sessions))

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._sessions.add(task)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            async with asyncio.timeout(self.settings.session_timeout_ms / 1000):
                await self._converse(reader, writer, started + self.settings.deadline_ms / 1000)
        except TimeoutError:
            log.warning("session_timeout", peer=_peer(writer))
        except ProtocolError as exc:
            log.warning("protocol_error", peer=_peer(writer), error=str(exc))
        except (ConnectionError, OSError) as exc:
            log.info("connection_lost", peer=_peer(writer), error=str(exc))
        except AuditUnavailable as exc:
            # No durable record, no answer: the dialplan sees no result and fails closed.
            log.error("audit_unavailable", error=str(exc))
        except Exception:
            log.exception("session_failed", peer=_peer(writer))
        finally:
            self._sessions.discard(task)
            writer.close()

    async def _converse(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, deadline: float
    ) -> None:
        conn = AgiConnection()
        request = await _read_request(reader, conn)
        if request is None:
            return  # the client left before its block was complete
        handler = self._routes.get(request.script)
        if handler is None:
            log.warning("unknown_script", script=request.script, channel=request.channel)
            return
        variables = await handler(request, deadline)
        for name, value in variables.items():
            if not _SAFE_VALUE.match(value):
                raise UnsafeValue(f"refusing to write {name}={value!r}")
            writer.write(conn.set_variable(name, value))
            if not await _read_reply(reader, conn):
                return  # Asterisk closed: nothing more to tell it

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


async def _read_request(reader: asyncio.StreamReader, conn: AgiConnection) -> AgiRequest | None:
    while True:
        data = await reader.read(_READ_SIZE)
        for event in conn.receive_data(data):
            if isinstance(event, AgiRequest):
                return event
            if isinstance(event, Closed):
                return None
        if not data:
            return None


async def _read_reply(reader: asyncio.StreamReader, conn: AgiConnection) -> bool:
    """Wait for the reply to the command just sent; False when Asterisk has gone."""
    while True:
        data = await reader.read(_READ_SIZE)
        for event in conn.receive_data(data):
            if isinstance(event, Reply):
                return True
            if isinstance(event, Closed):
                return False
            # Hangup: the caller hung up; the session goes on in dead mode, and the
            # reply to our command is still to come. Trying: not the final reply.
        if not data:
            return False


def _peer(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
