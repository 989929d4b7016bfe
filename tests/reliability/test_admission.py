"""Who gets a FastAGI session: `[server] allow`, `max_connections` (and the silent
connections cut to make room), the HANGUP bound, and the open-file limit.

The in-process server (tests/agi/test_server.py's harness) for what is about the
server's own decisions; the real `dialguard serve` in a subprocess for the open-file
limit (its own fd table, a limit it cannot raise).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from dialguard.config import Config, ConfigError, load_config
from dialguard.telemetry import Telemetry
from tests.agi.asterisk_peer import agi_env, encode_block
from tests.agi.test_server import NUMBER_RAW, agi_server, assert_decision
from tests.redis_server import RedisServer
from tests.reliability.served import HOST, Calls, dialguard_serve, one_call
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE = "127.0.0.2"  # a loopback address outside allow = ["127.0.0.1/32"]


def write(tmp_path: Path, server: str) -> Path:
    text = (ROOT / "config" / "dialguard.toml").read_text(encoding="utf-8")
    text = text.replace('file = "policy/france.toml"', f'file = "{ROOT}/config/policy/france.toml"')
    text = text.replace('host = "127.0.0.1"\nport = 4573\n', server, 1)
    text = text.replace("max_connections = 4096\n", "", 1) if "max_conn" in server else text
    path = tmp_path / "dialguard.toml"
    path.write_text(text, encoding="utf-8")
    return path


# --- the configuration --------------------------------------------------------------------


def test_allow_defaults_to_the_loopback_on_a_loopback_host(tmp_path: Path) -> None:
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.53"):
        config = load_config(write(tmp_path, f'host = "{host}"\nport = 4573\n'), env={})
        assert [str(n) for n in config.server.allow] == ["127.0.0.0/8", "::1/128"]
    assert config.server.max_connections == 4096


@pytest.mark.parametrize(
    ("server", "message"),
    [
        (
            'host = "0.0.0.0"\n',
            "server.allow: missing: host '0.0.0.0' is not a loopback address; list the"
            ' networks Asterisk connects from, e.g. allow = ["10.0.0.5/32"]'
            ' (["0.0.0.0/0", "::/0"]: anyone)',
        ),
        ('host = "10.1.2.3"\nallow = []\n', "server.allow: empty: nobody could connect"),
        (
            'host = "::"\nallow = ["10.0.0.5/24"]\n',
            "server.allow: '10.0.0.5/24' is not an address/prefix: 10.0.0.5/24 has host bits set",
        ),
        ('allow = ["eth0"]\n', "server.allow: 'eth0' is not an address/prefix:"),
        ("allow = [10]\n", 'server.allow: 10 is not "address/prefix", e.g. "10.0.0.5/32"'),
        ("max_connections = 0\n", "server.max_connections: 0 must be positive"),
        ("max_connections = 1_000_001\n", "server.max_connections: 1000001: at most 1000000"),
    ],
)
def test_allow_errors_are_one_line(tmp_path: Path, server: str, message: str) -> None:
    path = write(tmp_path, server)
    with pytest.raises(ConfigError) as failure:
        load_config(path, env={})
    text = str(failure.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: {message}"), text


def test_allow_given_on_any_host(tmp_path: Path) -> None:
    path = write(tmp_path, 'host = "0.0.0.0"\nallow = ["10.0.0.5/32", "fd00::/8"]\n')
    allow = load_config(path, env={}).server.allow
    assert allow == (ipaddress.ip_network("10.0.0.5/32"), ipaddress.ip_network("fd00::/8"))


# --- the allow-list -----------------------------------------------------------------------


async def raw_session(port: int, payload: bytes, source: str) -> tuple[bytes, float]:
    """Connect from `source`, send `payload`, read once: (what the server sent first, b""
    when it closed without a word; seconds to that)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
    received = b""
    try:
        writer.write(payload)
        await writer.drain()
        received = await asyncio.wait_for(reader.read(65536), 5)
    except ConnectionError:
        pass
    finally:
        writer.close()
    return received, time.monotonic() - started


def server_with(**changes: object) -> Callable[[Config], Config]:
    def configure(config: Config) -> Config:
        return replace(config, server=replace(config.server, **changes))  # type: ignore[arg-type]

    return configure


async def test_a_peer_outside_allow_is_closed_before_a_byte_is_read(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    telemetry = Telemetry()
    block = b"".join(encode_block(agi_env(HOST, 1, script="check", args=(NUMBER_RAW, "x"))))
    garbage = b"\x00not agi at all\n" * 1000  # would be a protocol error, were it read
    with capture_logs() as logs:
        async with agi_server(
            clean_redis.url,
            tmp_path / "audit",
            configure=server_with(allow=(ipaddress.ip_network("127.0.0.1/32"),)),
            telemetry=telemetry,
        ) as agi:
            refused = [await raw_session(agi.port, p, OUTSIDE) for p in (block, garbage) * 5]
            inside = await agi.call(NUMBER_RAW, "demo-press")
            assert_decision(agi, inside, "ALLOW", "PRESS")
            await agi.settled()
            assert len(agi.records()) == 1  # the refused ones decided nothing
    assert all(received == b"" and seconds < 1 for received, seconds in refused), refused
    assert telemetry.connections_refused["not_allowed"] == 10
    events = [entry["event"] for entry in logs]
    assert "session_aborted" not in events  # nothing was parsed
    (line,) = [entry for entry in logs if entry["event"] == "connection_refused"]
    assert (line["cause"], line["peer"]) == ("not_allowed", OUTSIDE)  # once a minute, not 10


def test_ipv4_peers_of_a_dual_stack_listener_match_ipv4_networks() -> None:
    from dialguard.agi.server import _in_networks

    networks = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))
    assert _in_networks("::ffff:10.1.2.3", networks)
    assert _in_networks("10.1.2.3", networks)
    assert _in_networks("fd00::1%eth0", networks)
    assert not _in_networks("::ffff:192.168.1.1", networks)
    assert not _in_networks("/run/agi.sock", networks)


async def test_a_reload_changes_who_may_connect(clean_redis: RedisServer, tmp_path: Path) -> None:
    async with agi_server(clean_redis.url, tmp_path / "audit") as agi:
        block = b"".join(encode_block(agi_env(HOST, 1, script="check", args=(NUMBER_RAW,))))
        received, _ = await raw_session(agi.port, block, OUTSIDE)
        assert received.startswith(b"SET VARIABLE")  # 127.0.0.0/8 by default
        settings = agi.server.settings
        narrowed = (ipaddress.ip_network("127.0.0.1/32"),)
        agi.server.reconfigure(replace(settings, allow=narrowed))
        received, _ = await raw_session(agi.port, block, OUTSIDE)
        assert received == b""
        await agi.settled()


# --- max_connections ----------------------------------------------------------------------


async def test_at_the_cap_a_silent_connection_makes_room_or_the_new_one_is_closed(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    telemetry = Telemetry()
    async with agi_server(
        clean_redis.url,
        tmp_path / "audit",
        deadline_ms=300,
        configure=server_with(max_connections=3),
        telemetry=telemetry,
    ) as agi:
        silent = [await asyncio.open_connection(HOST, agi.port) for _ in range(3)]
        await wait_until(lambda: agi.server.sessions == 3)
        # Within their deadline they may still speak: the newcomer is the one refused.
        received, _ = await raw_session(agi.port, b"", HOST)
        assert received == b""
        assert telemetry.connections_refused["max_connections"] == 1
        await asyncio.sleep(0.4)  # now silent past the deadline: the oldest makes room
        assert_decision(agi, await agi.call(NUMBER_RAW, "demo-press"), "ALLOW", "PRESS")
        assert telemetry.connections_refused["silent_cut"] == 1
        assert await asyncio.wait_for(silent[0][0].read(), 2) == b""  # the oldest was cut
        for _, writer in silent:
            writer.close()
        await agi.settled()


# --- HANGUP -------------------------------------------------------------------------------


async def test_a_hangup_flood_ends_the_session(clean_redis: RedisServer, tmp_path: Path) -> None:
    async with agi_server(clean_redis.url, tmp_path / "audit") as agi:
        env = agi_env(HOST, agi.port, script="check", args=(NUMBER_RAW, "demo-press"))
        block = b"".join(encode_block(env))
        # With the block: refused before a decision is asked for (none taken, none owed).
        received, seconds = await raw_session(agi.port, block + b"HANGUP\n" * 10_000, HOST)
        assert (received, agi.records()) == (b"", [])
        assert seconds < 2
        # Interleaved with the replies: the decision taken is recorded; the session is
        # cut at the fifth HANGUP, before the third variable.
        reader, writer = await asyncio.open_connection(HOST, agi.port)
        writer.write(block)
        commands = []
        while line := await asyncio.wait_for(reader.readline(), 5):
            commands.append(line)
            writer.write(b"HANGUP\n" * 3 + b"200 result=1\n")
        writer.close()
        assert [c.split()[2] for c in commands] == [b'"DIALGUARD_RESULT"', b'"DIALGUARD_REASON"']
        await agi.settled()
        (record,) = agi.records()
        assert (record["result"], record["reason"]) == ("ALLOW", "PRESS")
        # Within the bound (Asterisk's own two) the session goes on as usual.
        result = await agi.call(NUMBER_RAW, "demo-press", hangup_before_reply=True)
        assert_decision(agi, result, "ALLOW", "PRESS")


# --- the open-file limit ------------------------------------------------------------------


async def test_at_the_open_file_limit_serve_refuses_cleanly_and_recovers(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    """A hard limit of 96 open files that serve cannot raise: it lowers max_connections
    to what fits (16) and says so; 300 connections at once get refused or cut, the
    process neither dies nor spins, and serves normally once they are gone."""
    async with dialguard_serve(tmp_path, clean_redis.url, nofile=96) as served:
        (lowered,) = served.events("max_connections_lowered")
        assert (lowered["configured"], lowered["max_connections"]) == (4096, 16)
        assert served.events("fd_limit_unchanged") == []  # soft == hard: nothing to raise
        cpu_before = served.cpu_s()
        flood = []
        for _ in range(300):
            # OSError: the backlog full, refused by the kernel, as a caller would see it.
            with contextlib.suppress(OSError):
                flood.append(await asyncio.open_connection(HOST, served.port))
        await asyncio.sleep(2.0)
        assert served.alive()
        assert served.sample().fds <= 96
        assert served.cpu_s() - cpu_before < 1.0, "the loop spins at the limit"
        calls = Calls()
        await one_call(served.port, calls)  # during: cuts a silent one to make room
        assert calls.answered == 1, calls
        for _, writer in flood:
            writer.close()
        await asyncio.sleep(0.5)
        await asyncio.gather(*(one_call(served.port, calls) for _ in range(10)))
        assert calls.answers == {"ALLOW NON_COMMERCIAL": 11}, calls
        refused = served.events("connection_refused")
        assert {entry["cause"] for entry in refused} <= {"max_connections", "silent_cut"}
        assert served.stop() == 0
        assert served.events("session_failed") == []


async def test_serve_raises_its_soft_open_file_limit(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= hard:
        # Below the hard limit, yet above what this test process holds open already (the
        # whole suite's run leaves it a few hundred descriptors: browsers, servers' pipes).
        held = len(os.listdir("/proc/self/fd"))
        lowered = max(min(hard, 1024) // 2, held + 256)
        assert lowered < hard, f"{held} descriptors open in the test process"
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        async with dialguard_serve(tmp_path, clean_redis.url) as served:
            (raised,) = served.events("fd_limit_raised")
            assert raised["soft"] == min(hard, 1 << 20) > raised["soft_was"]
            limits = Path(f"/proc/{served.pid}/limits").read_text().splitlines()
            (line,) = [x for x in limits if x.startswith("Max open files")]
            assert line.split()[3] == str(raised["soft"])
            assert served.events("max_connections_lowered") == []
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
