"""A fake Asterisk 22.10.1 on the FastAGI client side, for end-to-end tests and load.

It behaves as res_agi.c does, byte for byte where it matters: it sends the agi_* block one
line per write, reads each command the way fgets() does (at most 8191 bytes, so a longer line
is cut and each piece runs as its own command), splits it with a port of parse_args(), and
answers SET VARIABLE / VERBOSE / HANGUP like Asterisk, everything else with 510. It also
flags what would be dangerous on a real Asterisk (a variable name ending in ')', a line that
split into unexpected words, a cut line...), so tests can assert that nothing was.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

AGI_BUF_LEN = 8192  # res_agi.c reads commands with fgets() into char buf[AGI_BUF_LEN]
MAX_ARGS = 128  # parse_args() keeps at most MAX_ARGS - 1 words
CONNECT_TIMEOUT = 2.0  # Asterisk's FastAGI connect timeout per address

REPLY_OK = b"200 result=1\n"
REPLY_UNKNOWN = b"510 Invalid or unknown command\n"
REPLY_DEAD = b"511 Command Not Permitted on a dead channel or intercepted channel\n"
USAGE_START = b"520-Invalid command syntax.  Proper usage follows:\n"
USAGE_END = b"520 End of proper usage.\n"
VERBOSE_USAGE = (
    b" Usage: VERBOSE <message> <level>\n"
    b"   Sends <message> to the console via verbose message system.\n"
)
_SAFE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_sessions = itertools.count(1)


def parse_args(line: bytes) -> list[bytes]:
    """res_agi.c parse_args(), transcribed: blanks split, "..." groups, \\ escapes one byte."""
    words: list[bytearray] = []
    quoted = escaped = False
    whitespace = True
    for byte in line:
        if byte == 0x22 and not escaped:  # '"'
            quoted = not quoted
            if quoted and whitespace:  # an opening quote after blanks starts a word
                words.append(bytearray())
                whitespace = False
            continue
        if byte in (0x20, 0x09) and not quoted and not escaped:  # ' ', '\t'
            whitespace = True
            continue
        if byte == 0x5C and not escaped:  # '\\'
            escaped = True
            continue
        if whitespace:
            if len(words) >= MAX_ARGS - 1:  # "Too many arguments, truncating": byte dropped
                continue
            words.append(bytearray())
            whitespace = False
        words[-1].append(byte)
        escaped = False
    return [bytes(word) for word in words]


def agi_env(
    host: str,
    port: int,
    *,
    script: str,
    args: Sequence[str],
    env_overrides: Mapping[str, str | None] | None = None,
    session: int = 0,
) -> dict[str, str]:
    """The agi_* pairs Asterisk 22.10.1 sends (setup_env()), in its order."""
    exten = args[0] if args else "s"
    env = {
        "agi_network": "yes",
        "agi_network_script": script,
        "agi_request": f"agi://{host}:{port}/{script}",
        "agi_channel": f"Local/{exten}@outbound-{session:08x};2",
        "agi_language": "en",
        "agi_type": "Local",
        "agi_uniqueid": f"{int(time.time())}.{session}",
        "agi_version": "22.10.1",
        "agi_callerid": "0147000000",
        "agi_calleridname": "unknown",
        "agi_callingpres": "0",
        "agi_callingani2": "0",
        "agi_callington": "0",
        "agi_callingtns": "0",
        "agi_dnid": "unknown",
        "agi_rdnis": "unknown",
        "agi_context": "outbound",
        "agi_extension": exten,
        "agi_priority": "3",
        "agi_enhanced": "0.0",
        "agi_accountcode": "",
        "agi_threadid": str(140051474122432 + session),
    }
    env.update({f"agi_arg_{n}": arg for n, arg in enumerate(args, 1)})
    for key, value in (env_overrides or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def encode_block(env: Mapping[str, str]) -> list[bytes]:
    """The block as Asterisk writes it: one write per line, then an empty line."""
    return [f"{key}: {value}\n".encode() for key, value in env.items()] + [b"\n"]


@dataclass
class SessionResult:
    uniqueid: str = ""
    variables: dict[str, str] = field(default_factory=dict)  # SET VARIABLE, as Asterisk set them
    commands: list[tuple[str, ...]] = field(default_factory=list)  # each command, split
    dangerous: list[str] = field(default_factory=list)  # what a real Asterisk would misread
    closed_by_server: bool = False  # the server closed the socket (the normal end)
    timed_out: bool = False  # the peer gave up waiting (read_timeout or session_timeout)
    elapsed: float = 0.0  # seconds from connect to close
    received: bytes = b""  # every byte the server sent


class _Peer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.result = SessionResult()
        self.buffer = bytearray()
        self.dead = False  # after a hangup Asterisk runs in "dead" mode
        self.eof = False

    async def write(self, *chunks: bytes) -> None:
        for chunk in chunks:  # ast_agi_send(): one write per line
            self.writer.write(chunk)
            await self.writer.drain()

    async def read_command(self, deadline: float, read_timeout: float) -> bytes | None:
        """One command as run_agi() reads it; None at EOF or when out of time."""
        while True:
            end = self.buffer.find(b"\n", 0, AGI_BUF_LEN - 1)
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) >= AGI_BUF_LEN - 1:
                self.result.dangerous.append(f"line longer than {AGI_BUF_LEN - 2} bytes was cut")
                line = bytes(self.buffer[: AGI_BUF_LEN - 1])
                del self.buffer[: AGI_BUF_LEN - 1]
                return line
            if self.eof:  # fgets() hands over a partial last line, and Asterisk runs it
                if not self.buffer:
                    return None
                self.result.dangerous.append("partial line without LF at EOF")
                line = bytes(self.buffer)
                self.buffer.clear()
                return line
            wait = min(read_timeout, deadline - time.monotonic())
            if wait <= 0:
                self.result.timed_out = True
                return None
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), wait)
            except TimeoutError:
                self.result.timed_out = True
                return None
            except ConnectionError:
                chunk = b""
            if not chunk:
                self.eof = self.result.closed_by_server = True
            self.result.received += chunk
            self.buffer += chunk

    def answer(self, line: bytes) -> list[bytes]:
        """What agi_handle_command() writes back for one command line."""
        flag = self.result.dangerous.append
        if b"\x00" in line:
            flag("NUL byte in a command (C truncates the line there)")
            line = line[: line.index(b"\x00")]
        if b"\r" in line:
            flag("CR in a command (it stays in the last word)")
        words = tuple(word.decode("utf-8", "replace") for word in parse_args(line))
        self.result.commands.append(words)
        verb = tuple(word.upper() for word in words[:2])
        if verb == ("SET", "VARIABLE"):  # runs on dead channels too
            if len(words) != 4:
                flag(f"SET VARIABLE split into {len(words)} words: {words!r}")
            if len(words) >= 4:
                name = words[2]
                if name.endswith(")"):
                    flag(f"SET VARIABLE {name} writes a dialplan function")
                elif not _SAFE_NAME.fullmatch(name):
                    flag(f"SET VARIABLE with a strange name {name!r}")
                self.result.variables[name] = words[3]
            return [REPLY_OK]
        if verb[:1] == ("VERBOSE",):  # runs on dead channels too
            if len(words) < 2:
                flag("VERBOSE without a message")
                return [USAGE_START, VERBOSE_USAGE, USAGE_END]
            return [REPLY_OK]
        if verb[:1] == ("HANGUP",):
            if self.dead:
                return [REPLY_DEAD]
            if len(words) > 1:
                flag(f"HANGUP of another channel {words[1]!r}")
                return [b"200 result=-1\n"]
            # The channel dies; run_agi() notices and tells the script with a HANGUP line.
            self.dead = True
            return [REPLY_OK, b"HANGUP\n"]
        flag(f"unexpected command {words!r}")
        return [REPLY_UNKNOWN]


async def run_session(
    host: str,
    port: int,
    *,
    script: str = "check",
    args: Sequence[str] = ("0612345671", "demo-energy"),
    env_overrides: Mapping[str, str | None] | None = None,
    hangup_before_reply: bool = False,
    disconnect_after_block: bool = False,
    write_line_by_line: bool = True,
    read_timeout: float = 5.0,
    session_timeout: float = 30.0,
) -> SessionResult:
    """One AGI(agi://host:port/script,args...) call, from connect to close.

    ``hangup_before_reply``: the caller hangs up while the first command runs, so Asterisk
    sends an unrequested ``HANGUP`` line before that command's reply. ``disconnect_after_block``:
    Asterisk drops the connection right after the block. ``env_overrides`` replaces or adds
    block keys (None removes one). Never waits longer than ``read_timeout`` for a read, nor
    ``session_timeout`` in all; a connection refused raises as it would for Asterisk.
    """
    start = time.monotonic()
    deadline = start + session_timeout
    session = next(_sessions)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), CONNECT_TIMEOUT)
    sock = writer.get_extra_info("socket")
    if sock is not None:  # so that one write() is one segment, as far as the kernel allows
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    peer = _Peer(reader, writer)
    env = agi_env(
        host, port, script=script, args=args, env_overrides=env_overrides, session=session
    )
    peer.result.uniqueid = env.get("agi_uniqueid", "")
    block = encode_block(env)
    try:
        # The reads watch the deadline themselves; this also bounds the writes (a server that
        # stops reading) so that no test can hang on the peer.
        async with asyncio.timeout(max(deadline - time.monotonic(), 0) + read_timeout):
            await peer.write(*(block if write_line_by_line else [b"".join(block)]))
            if not disconnect_after_block:
                await _converse(peer, deadline, read_timeout, hangup_before_reply)
    except ConnectionError:
        peer.result.closed_by_server = True
    except TimeoutError:
        peer.result.timed_out = True
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), read_timeout)
        except (ConnectionError, TimeoutError):
            writer.transport.abort()
        peer.result.elapsed = time.monotonic() - start
    return peer.result


async def _converse(
    peer: _Peer, deadline: float, read_timeout: float, hangup_before_reply: bool
) -> None:
    first = True
    while (line := await peer.read_command(deadline, read_timeout)) is not None:
        if line[:7].lower() == b"failure":  # run_agi(): "failure" ends the AGI with FAILURE
            peer.result.dangerous.append("line starting with 'failure' ends the AGI")
            return
        if first and hangup_before_reply:
            peer.dead = True
            await peer.write(b"HANGUP\n")
        first = False
        await peer.write(*peer.answer(line))
    if peer.result.closed_by_server:
        # run_agi() ends by telling the script "HANGUP", even though it is already gone.
        with contextlib.suppress(ConnectionError):
            await peer.write(b"HANGUP\n")
