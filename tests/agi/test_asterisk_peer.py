"""Self-test of the fake Asterisk against minimal FastAGI servers written here."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from dialguard.agi.protocol import (
    AgiConnection,
    AgiRequest,
    Closed,
    Command,
    Event,
    Hangup,
    Reply,
    State,
    command,
    hangup,
    set_variable,
    verbose,
)
from tests.agi.asterisk_peer import AGI_BUF_LEN, agi_env, encode_block, run_session
from tests.waiting import wait_until

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
ASTERISK_KEYS = [
    "agi_network",
    "agi_network_script",
    "agi_request",
    "agi_channel",
    "agi_language",
    "agi_type",
    "agi_uniqueid",
    "agi_version",
    "agi_callerid",
    "agi_calleridname",
    "agi_callingpres",
    "agi_callingani2",
    "agi_callington",
    "agi_callingtns",
    "agi_dnid",
    "agi_rdnis",
    "agi_context",
    "agi_extension",
    "agi_priority",
    "agi_enhanced",
    "agi_accountcode",
    "agi_threadid",
]


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


class ScriptedServer:
    """A minimal FastAGI server on the protocol module: send each command in turn, then close.

    By default the one command is SET VARIABLE DIALGUARD_RESULT=ALLOW.
    """

    def __init__(self, *commands: Command) -> None:
        self.commands = list(commands) or [set_variable("DIALGUARD_RESULT", "ALLOW")]
        self.events: list[Event] = []

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = AgiConnection()
        todo = list(self.commands)
        try:
            while True:
                data = await asyncio.wait_for(reader.read(4096), 5)
                self.events += conn.receive_data(data)
                if conn.state is State.CLOSED:
                    return
                if conn.state is State.IDLE:  # the block, or the last reply, is in
                    if not todo:
                        return
                    writer.write(conn.send(todo.pop(0)))
        finally:
            writer.close()


async def test_peer_sees_allow_and_the_close() -> None:
    server = ScriptedServer()
    async with serving(server) as port:
        result = await run_session("127.0.0.1", port, args=("0612345671", "demo"))
    assert result.variables == {"DIALGUARD_RESULT": "ALLOW"}
    assert result.commands == [("SET", "VARIABLE", "DIALGUARD_RESULT", "ALLOW")]
    assert result.dangerous == []
    assert result.closed_by_server
    assert not result.timed_out
    assert result.received == b'SET VARIABLE "DIALGUARD_RESULT" "ALLOW"\n'
    assert 0 < result.elapsed < 5
    request, reply = server.events
    assert isinstance(request, AgiRequest)
    assert list(request.env) == [*ASTERISK_KEYS, "agi_arg_1", "agi_arg_2"]
    assert request.args == ("0612345671", "demo")
    assert request.script == "check"
    assert request.network
    assert request.uniqueid == result.uniqueid
    assert request.env["agi_request"] == f"agi://127.0.0.1:{port}/check"
    assert request.accountcode == ""
    assert reply == Reply(200, "1", None, {}, "200 result=1")


async def test_peer_with_hangup_before_reply() -> None:
    server = ScriptedServer()
    async with serving(server) as port:
        result = await run_session("127.0.0.1", port, hangup_before_reply=True)
    assert server.events[1:] == [Hangup(), Reply(200, "1", None, {}, "200 result=1")]
    assert result.variables == {"DIALGUARD_RESULT": "ALLOW"}  # SET VARIABLE runs on dead channels
    assert result.closed_by_server
    assert result.dangerous == []


async def test_peer_block_in_one_write_and_query() -> None:
    server = ScriptedServer()
    async with serving(server) as port:
        result = await run_session(
            "127.0.0.1", port, script="check?fail=open", write_line_by_line=False, args=()
        )
    request = server.events[0]
    assert isinstance(request, AgiRequest)
    assert (request.script, request.query, request.args) == ("check", "fail=open", ())
    assert result.variables == {"DIALGUARD_RESULT": "ALLOW"}


async def test_uniqueids_differ_and_overrides_apply() -> None:
    server = ScriptedServer()
    async with serving(server) as port:
        first = await run_session("127.0.0.1", port)
        second = await run_session(
            "127.0.0.1",
            port,
            env_overrides={"agi_callerid": "unknown", "agi_network": None, "agi_x": "1"},
        )
    assert first.uniqueid != second.uniqueid
    request = server.events[2]
    assert isinstance(request, AgiRequest)
    assert request.callerid == "unknown"
    assert "agi_network" not in request.env
    assert list(request.env)[-1] == "agi_x"


def test_block_bytes_are_asterisks() -> None:
    env = agi_env("127.0.0.1", 4573, script="check", args=["0612345671"], session=0)
    env["agi_uniqueid"] = "1795955366.1"
    data = b"".join(encode_block(env))
    assert data.startswith(b"agi_network: yes\nagi_network_script: check\n")
    assert b"\nagi_accountcode: \n" in data
    assert data.endswith(b"agi_threadid: 140051474122432\nagi_arg_1: 0612345671\n\n")
    assert b"agi_channel: Local/0612345671@outbound-00000000;2\n" in data


async def test_peer_answers_like_asterisk() -> None:
    server = ScriptedServer(
        verbose("checking"),
        command("VERBOSE"),  # no message: 520 with usage
        command("GET VARIABLE", "X"),  # not emulated: 510
        hangup(),  # 200, then Asterisk notices the hangup: HANGUP line
        hangup(),  # dead channel: 511
    )
    async with serving(server) as port:
        result = await run_session("127.0.0.1", port)
    replies = [event for event in server.events if isinstance(event, Reply)]
    assert [reply.code for reply in replies] == [200, 520, 510, 200, 511]
    assert replies[1].text.startswith("520-Invalid command syntax.  Proper usage follows:\n")
    assert replies[1].text.endswith("\n520 End of proper usage.")
    assert server.events[-3:] == [replies[3], Hangup(), replies[4]]
    assert result.commands == [
        ("VERBOSE", "checking", "1"),
        ("VERBOSE",),
        ("GET", "VARIABLE", "X"),
        ("HANGUP",),
        ("HANGUP",),
    ]
    assert result.dangerous == [
        "VERBOSE without a message",
        "unexpected command ('GET', 'VARIABLE', 'X')",
    ]
    assert result.closed_by_server


async def _raw_session(payload: bytes) -> list[str]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\n\n")
        writer.write(payload)
        await writer.drain()
        # The payload, then a pause before the close: the peer must judge what it read,
        # not a connection that ended while it was still reading.
        await asyncio.sleep(0.05)
        writer.close()

    async with serving(handler) as port:
        result = await run_session("127.0.0.1", port, read_timeout=2)
    assert result.closed_by_server
    return result.dangerous


@pytest.mark.parametrize(
    ("payload", "flag"),
    [
        (b'SET VARIABLE "FILE(/tmp/x,,,a)" "y"\n', "dialplan function"),
        (b'SET VARIABLE "A" "x"\nEXEC System "id"\n', "unexpected command"),
        (b'SET VARIABLE "A" x y\n', "split into 5 words"),
        (b'SET VARIABLE "A" "x"\r\n', "CR"),
        (b'SET VARIABLE "A" "x\x00y"\n', "NUL"),
        (b'SET VARIABLE "A" "' + b"v" * AGI_BUF_LEN + b'"\n', "cut"),
        (b'SET VARIABLE "A" "x"', "partial line"),
        (b"HANGUP PJSIP/other-0001\n", "another channel"),
    ],
)
async def test_peer_flags_what_asterisk_would_misread(payload: bytes, flag: str) -> None:
    dangerous = await _raw_session(payload)
    assert any(flag in entry for entry in dangerous), dangerous


async def test_peer_gives_up_on_a_silent_server() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # read the block, answer nothing, until the peer gives up
        writer.close()

    async with serving(handler) as port:
        result = await run_session("127.0.0.1", port, read_timeout=0.2)
    assert result.timed_out
    assert not result.closed_by_server
    assert result.elapsed < 2


async def test_peer_disconnect_after_block() -> None:
    server = ScriptedServer()
    async with serving(server) as port:
        result = await run_session("127.0.0.1", port, disconnect_after_block=True)
        await wait_until(lambda: bool(server.events) and isinstance(server.events[-1], Closed))
    assert isinstance(server.events[0], AgiRequest)
    assert server.events[-1] == Closed()
    assert result.commands == []
    assert not result.closed_by_server
