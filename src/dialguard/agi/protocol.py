"""The AGI wire protocol as a state machine over bytes, in the manner of h11: no sockets here.

Bytes read from Asterisk go into ``AgiConnection.receive_data`` and come out as events; a
``Command`` goes into ``AgiConnection.send`` and comes out as the bytes to write. The asyncio
loop around this only moves bytes and enforces deadlines. A FastAGI session (res_agi.c):

    Asterisk -> us   agi_network: yes\\n ... agi_arg_1: 0612345671\\n \\n     the agi_* block
    us -> Asterisk   SET VARIABLE "DIALGUARD_RESULT" "ALLOW"\\n            one command ...
    Asterisk -> us   200 result=1\\n                                        ... then its reply
    us               close the socket: Asterisk hands the call back to the dialplan

Asterisk writes the block one line per write() and TCP may split or merge anything, so no read
is assumed to hold a whole line, let alone a whole block.

Text: Asterisk sends C strings with no declared charset. Lines are decoded as UTF-8 with
errors="replace" (U+FFFD), which is deterministic and can never fail: a Latin-1 caller name
from a trunk must not cost the call, and the values we act on (the number, the campaign) are
ASCII, so a damaged one is simply rejected downstream. A NUL byte cannot come out of
Asterisk's printf, so it is a ProtocolError.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import ClassVar, TypeAlias

# Asterisk reads a command with fgets() into an 8192-byte buffer (AGI_BUF_LEN). A longer line
# is cut and each piece runs as its own command, and one byte is kept for C's NUL: a command,
# LF included, must fit in MAX_LINE - 1 bytes. (8191 bytes + LF would leave a bare LF behind,
# which runs as an empty command answered "510": that stray reply would then be taken as the
# answer to our next command.) Lines we receive get the same bound: no block line, and no reply
# to a command we send, comes anywhere near it.
MAX_LINE = 8192

# A real agi_* block is about 600 bytes: 22 fixed keys whose values are channel names, caller
# IDs and the like, plus one line per AGI() argument. 16 KiB is 25 times that, still nothing per
# connection, and anything bigger is not Asterisk.
MAX_BLOCK_BYTES = 16 * 1024

# 22 fixed keys + one per argument; our dialplan passes two or three (number, campaign).
# Asterisk would accept up to 128 arguments, but nobody calling us needs 100.
MAX_BLOCK_LINES = 128

# parse_args() in res_agi.c stores at most MAX_ARGS - 1 words and silently drops the rest, so
# a command with more words would not run as written: we refuse to build one.
MAX_ARGS = 128

# A multi-line 520 carries the command's usage text from Asterisk's XML docs: a few KiB at most.
# This bounds what we buffer while waiting for its closing "520 End of proper usage." line.
MAX_USAGE_BYTES = 64 * 1024


# Asterisk sends an unrequested HANGUP line when the channel hangs up, and once more when
# run_agi() ends (tests/agi/asterisk_peer.py does both): two in a session. More is not
# Asterisk, and a peer repeating it for ever would keep us parsing until the session bound.
MAX_HANGUPS = 4


class ProtocolError(Exception):
    """The peer broke the AGI protocol (or we were asked to); the message is one line."""


class UnsafeValue(ValueError):
    """A command that Asterisk would not read back exactly as meant; nothing was sent."""


class State(enum.Enum):
    AWAITING_BLOCK = "AWAITING_BLOCK"  # connected; the agi_* block is not complete yet
    IDLE = "IDLE"  # block received, no command in flight: only HANGUP may arrive
    AWAITING_REPLY = "AWAITING_REPLY"  # a command was sent; its final reply has not arrived
    CLOSED = "CLOSED"  # the peer sent EOF
    ERROR = "ERROR"  # a ProtocolError was raised; every further call raises too


@dataclass(frozen=True, slots=True)
class AgiRequest:
    """The agi_* block: what Asterisk tells us about the call before the first command."""

    env: Mapping[str, str]  # every agi_* pair, in the order received
    script: str  # agi_network_script (agi_request for classic AGI) without its ?query
    query: str  # after the first '?', '' if none
    args: tuple[str, ...]  # agi_arg_1 .. agi_arg_N

    # Values are passed through as Asterisk wrote them: a missing caller ID is "unknown".
    @property
    def channel(self) -> str:
        return self.env.get("agi_channel", "")

    @property
    def uniqueid(self) -> str:
        return self.env.get("agi_uniqueid", "")

    @property
    def callerid(self) -> str:
        return self.env.get("agi_callerid", "")

    @property
    def accountcode(self) -> str:
        return self.env.get("agi_accountcode", "")

    @property
    def network(self) -> bool:
        return self.env.get("agi_network") == "yes"


@dataclass(frozen=True, slots=True)
class Reply:
    """The final answer to a command: ``200 result=N [(data)] [key=val ...]``, 510, 511, 520."""

    code: int
    result: str | None  # the text after result= (may be '' or '-1'), None if absent
    data: str | None  # the text inside the parentheses after the result, None if absent
    extra: Mapping[str, str]  # key=val words after that, e.g. endpos=1234
    text: str  # the raw line, or the lines of a multi-line 520 joined by LF

    @property
    def ok(self) -> bool:
        return self.code == 200


@dataclass(frozen=True, slots=True)
class Hangup:
    """Unrequested HANGUP: the channel is gone and the session goes on in "dead" mode."""


@dataclass(frozen=True, slots=True)
class Trying:
    """``100 result=0 Trying...`` (GOSUB's first line): the final reply is still to come."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The peer closed the connection (EOF)."""


Event: TypeAlias = AgiRequest | Reply | Hangup | Trying | Closed

# --- Commands -------------------------------------------------------------------------------

# Asterisk splits a command on blanks; "..." groups and a backslash escapes the next character.
# So every argument is written as "..." with \ and " escaped. CR, LF and NUL cannot be escaped:
# LF ends the command (the rest would run as a new one, e.g. EXEC System), NUL ends the C
# string, and a CR would end up inside the value. We refuse them.
_VERB = re.compile(r"[A-Z]+(?: [A-Z]+)*")
_UNSAFE_CHARS = re.compile(r"[\r\n\x00]")
# Never a name built from input: a name ending in ')' writes a dialplan function (FILE(...)).
_VARIABLE_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,79}")


def _quote(arg: str) -> str:
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class Command:
    """One AGI command: bare keywords (``verb``) then quoted arguments. Checked when built."""

    verb: str  # e.g. "SET VARIABLE"
    args: tuple[str, ...] = ()
    line: bytes = field(init=False, repr=False, compare=False)  # encoded once, when checked

    def __post_init__(self) -> None:
        if not _VERB.fullmatch(self.verb):
            raise UnsafeValue(f"command {self.verb[:40]!r} is not upper-case keywords")
        for arg in self.args:
            if _UNSAFE_CHARS.search(arg):
                raise UnsafeValue(f"{self.verb}: an argument contains CR, LF or NUL")
        if len(self.verb.split()) + len(self.args) > MAX_ARGS - 1:
            raise UnsafeValue(f"{self.verb}: more than {MAX_ARGS - 1} words")
        text = " ".join([self.verb, *map(_quote, self.args)]) + "\n"
        try:
            line = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no bytes would say what was meant
            raise UnsafeValue(f"{self.verb}: an argument is not valid Unicode") from None
        if len(line) > MAX_LINE - 1:
            raise UnsafeValue(f"{self.verb}: command longer than {MAX_LINE - 1} bytes")
        object.__setattr__(self, "line", line)

    def encode(self) -> bytes:
        return self.line


def command(verb: str, *args: str) -> Command:
    return Command(verb, args)


# A value made of these alone is its own quoted form (no backslash, quote, blank or line
# break), and short enough that no command built with it nears MAX_LINE.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_+.:-]{0,256}")


@lru_cache(maxsize=64)
def _set_variable_prefix(name: str) -> bytes:
    if not _VARIABLE_NAME.fullmatch(name):
        raise UnsafeValue(f"variable name {name[:40]!r} is not [A-Z][A-Z0-9_]{{0,79}}")
    return f'SET VARIABLE "{name}" "'.encode("ascii")


def set_variable(name: str, value: str) -> Command:
    if not _VARIABLE_NAME.fullmatch(name):
        raise UnsafeValue(f"variable name {name[:40]!r} is not [A-Z][A-Z0-9_]{{0,79}}")
    return Command("SET VARIABLE", (name, value))


def verbose(message: str, level: int = 1) -> Command:
    if not 1 <= level <= 4:  # Asterisk's verbose levels for VERBOSE run 1..4
        raise UnsafeValue(f"verbose level {level} is not 1..4")
    return Command("VERBOSE", (message, str(level)))


def hangup() -> Command:
    # No argument: HANGUP <channel> would hang up another channel.
    return Command("HANGUP")


# --- Replies --------------------------------------------------------------------------------

_REPLY = re.compile(r"(?P<code>100|[2-5][0-9]{2}) (?P<rest>.*)", re.ASCII)
_RESULT = re.compile(r"result=(?P<result>\S*)(?P<tail>.*)", re.ASCII)
# GET VARIABLE answers "200 result=1 (<value>)" and the value may hold ')' or ' k=v', while
# "(timeout) endpos=1234" is data then pairs. Rule: the data ends at the LAST ')' that is
# followed by nothing or by " key=": the greedy match below tries the rightmost ')' first.
_DATA = re.compile(r" \((?P<data>.*)\)(?P<tail>(?: \w+=.*)?)", re.ASCII)
_PAIR = re.compile(r"(?P<key>\w+)=(?P<value>.*)", re.ASCII)
# Asterisk writes the usage text with "%s" whether or not it ends in LF, so the closing line
# may come glued to the last line of text: we look for it at the END of a line.
_USAGE_END = "520 End of proper usage."
_NO_EXTRA: Mapping[str, str] = MappingProxyType({})
_SET_OK = Reply(200, "1", None, _NO_EXTRA, "200 result=1")


def _parse_reply(line: str) -> Reply | Trying:
    if line == "200 result=1":  # what SET VARIABLE always answers: skip the regexes
        return _SET_OK
    match = _REPLY.fullmatch(line)
    if match is None:
        raise ProtocolError(f"not an AGI reply: {line[:80]!r}")
    code, rest = int(match["code"]), match["rest"]
    if code == 100:
        return Trying()
    result = data = None
    extra: dict[str, str] = {}
    if found := _RESULT.match(rest):
        result, tail = found["result"], found["tail"]
        if grouped := _DATA.fullmatch(tail):
            data, tail = grouped["data"], grouped["tail"]
        # Free words ("200 result=0 Gosub complete") are kept only in `text`; a value with
        # blanks (SPEECH RECOGNIZE's text0="a b") is cut at the blank. We send neither command.
        for word in tail.split():
            if pair := _PAIR.fullmatch(word):
                extra[pair["key"]] = pair["value"]
    elif code == 200:
        raise ProtocolError(f"200 reply without result=: {line[:80]!r}")
    return Reply(code, result, data, MappingProxyType(extra) if extra else _NO_EXTRA, line)


# --- The block ------------------------------------------------------------------------------

_KEY = re.compile(r"agi_\w+", re.ASCII)
_ARG_KEY = re.compile(r"agi_arg_(?P<n>[1-9][0-9]*)", re.ASCII)


# One block line, as _split_block_line reads it: \w never matches ":" or " ", so the key
# ends at the first ": " (or at a final ":" with nothing after it).
_BLOCK_LINE = re.compile(r"^(agi_\w+):(?: (.*))?$", re.ASCII | re.MULTILINE)


def _split_block_line(line: str) -> tuple[str, str]:
    # "key: value", split on the FIRST ": " (values may hold colons); "agi_accountcode: " has
    # an empty value, and we also take "agi_accountcode:" with nothing after the colon.
    key, sep, value = line.partition(": ")
    if not sep:
        if not line.endswith(":"):
            raise ProtocolError(f"agi_* block line without ': ': {line[:80]!r}")
        key, value = line[:-1], ""
    if not _KEY.fullmatch(key):
        raise ProtocolError(f"not an agi_* key: {key[:80]!r}")
    return key, value


def _make_request(env: dict[str, str]) -> AgiRequest:
    numbered: dict[int, str] = {}
    for key, value in env.items():
        if key.startswith("agi_arg_"):
            if (arg := _ARG_KEY.fullmatch(key)) is None:
                raise ProtocolError(f"bad argument key: {key[:80]!r}")
            numbered[int(arg["n"])] = value
    if sorted(numbered) != list(range(1, len(numbered) + 1)):
        raise ProtocolError("agi_arg_N keys are not numbered 1..N without gaps")
    script, _, query = env.get("agi_network_script", env.get("agi_request", "")).partition("?")
    args = tuple(numbered[n] for n in range(1, len(numbered) + 1))
    return AgiRequest(MappingProxyType(env), script, query, args)


# --- The connection -------------------------------------------------------------------------


class AgiConnection:
    """Server side of one AGI session. Not thread-safe; one per connection.

    A ProtocolError from ``receive_data`` moves to ERROR (close the socket). Misuse of
    ``send`` (wrong state) and ``UnsafeValue`` raise without changing the state: no bytes
    were produced, so the session is as it was.
    """

    def __init__(self) -> None:
        self._state = State.AWAITING_BLOCK
        self._buffer = bytearray()
        self._scanned = 0  # bytes of _buffer already searched for LF
        self._env: dict[str, str] = {}  # the block so far
        self._usage: list[str] = []  # a multi-line 520 so far
        self._pending_bytes = 0  # size of the block or of the 520 so far
        self.request: AgiRequest | None = None  # kept for logging even if an error follows
        self.hung_up = False  # a HANGUP line was seen: dead mode
        self._hangups = 0

    @property
    def state(self) -> State:
        return self._state

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes read from the socket (b"" for EOF); get the complete events in them."""
        if self._state is State.ERROR:
            raise ProtocolError("the connection already failed; close it")
        try:
            if not data:
                return self._receive_eof()
            if self._state is State.CLOSED:
                raise ProtocolError("data received after EOF")
            self._buffer += data
            events: list[Event] = []
            if self._state is State.AWAITING_BLOCK and not self._env:
                request = self._whole_block()
                if request is not None:
                    events.append(request)
            while (line := self._next_line()) is not None:
                event = self._LINE_HANDLERS[self._state](self, *line)
                if event is not None:
                    events.append(event)
            return events
        except ProtocolError:
            self._state = State.ERROR
            raise

    def send(self, command: Command) -> bytes:
        """The bytes to write for ``command``; AGI allows one command in flight at a time."""
        if self._state is not State.IDLE:
            raise ProtocolError(_SEND_REFUSED[self._state])
        data = command.encode()
        self._state = State.AWAITING_REPLY
        return data

    def set_variable(self, name: str, value: str) -> bytes:
        # The values dialguard writes (codes, ids, E.164 numbers) need no escaping: those
        # skip building a Command. The name is checked all the same; anything else takes
        # the general path.
        if self._state is State.IDLE and _PLAIN_VALUE.fullmatch(value):
            line = _set_variable_prefix(name) + value.encode("ascii") + b'"\n'
            self._state = State.AWAITING_REPLY
            return line
        return self.send(set_variable(name, value))

    def verbose(self, message: str, level: int = 1) -> bytes:
        return self.send(verbose(message, level))

    def hangup(self) -> bytes:
        return self.send(hangup())

    def command(self, verb: str, *args: str) -> bytes:
        return self.send(command(verb, *args))

    def _whole_block(self) -> AgiRequest | None:
        """The usual case, parsed in one go: the whole block is in the buffer.

        Same rules as line by line (`_on_block_line`), which handles every case this
        declines: a block still incomplete, CRLF line ends, NUL bytes, anything near a limit.
        """
        end = self._buffer.find(b"\n\n")
        if end <= 0 or end + 2 >= min(MAX_LINE, MAX_BLOCK_BYTES):
            return None
        raw = bytes(self._buffer[: end + 1])
        if b"\x00" in raw or b"\r" in raw:
            return None
        text = raw.decode("utf-8", errors="replace")
        pairs = _BLOCK_LINE.findall(text)
        env = dict(pairs)
        if len(env) != len(pairs) or len(pairs) != text.count("\n"):
            return None  # a bad or repeated line: let the line-by-line path name it
        if len(env) > MAX_BLOCK_LINES:
            return None
        del self._buffer[: end + 2]
        self._scanned = 0
        self.request = _make_request(env)
        self._state = State.IDLE
        return self.request

    def _next_line(self) -> tuple[str, int] | None:
        end = self._buffer.find(b"\n", self._scanned)
        if end < 0:
            self._scanned = len(self._buffer)
            if self._scanned >= MAX_LINE:  # fail now rather than buffer without end
                raise ProtocolError(f"line longer than {MAX_LINE} bytes")
            return None
        raw = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        self._scanned = 0
        if len(raw) > MAX_LINE:
            raise ProtocolError(f"line longer than {MAX_LINE} bytes")
        if b"\x00" in raw:
            raise ProtocolError("NUL byte in a line")
        # Asterisk ends lines with LF alone; we tolerate CRLF by dropping one trailing CR.
        text = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        return text.decode("utf-8", errors="replace"), len(raw)

    def _receive_eof(self) -> list[Event]:
        if self._state is State.CLOSED:
            return []
        if self._env or (self._buffer and self._state is State.AWAITING_BLOCK):
            raise ProtocolError("connection closed in the middle of the agi_* block")
        if self._usage:
            raise ProtocolError("connection closed in the middle of a multi-line 520 reply")
        if self._buffer:
            raise ProtocolError("connection closed in the middle of a line")
        # Nothing half-said: a port probe that never spoke, or Asterisk leaving (it closes
        # after HANGUP when AGIEXITONHANGUP is set, with or without a command in flight).
        self._state = State.CLOSED
        return [Closed()]

    def _on_block_line(self, line: str, size: int) -> AgiRequest | None:
        self._pending_bytes += size
        if self._pending_bytes > MAX_BLOCK_BYTES:
            raise ProtocolError(f"agi_* block longer than {MAX_BLOCK_BYTES} bytes")
        if line == "":  # the empty line ends the block
            if not self._env:
                raise ProtocolError("empty agi_* block")
            self.request = _make_request(self._env)
            self._env, self._pending_bytes = {}, 0
            self._state = State.IDLE
            return self.request
        if len(self._env) >= MAX_BLOCK_LINES:
            raise ProtocolError(f"agi_* block longer than {MAX_BLOCK_LINES} lines")
        key, value = _split_block_line(line)
        if key in self._env:  # Asterisk never repeats a key: someone is injecting lines
            raise ProtocolError(f"repeated key in agi_* block: {key}")
        self._env[key] = value
        return None

    def _on_idle_line(self, line: str, size: int) -> Hangup:
        # With no command in flight, Asterisk has nothing to say except that the channel hung
        # up. Anything else (a reply to nothing, or a block line after the empty line, e.g. a
        # caller name with an LF in it) would desynchronise replies, so we stop here.
        if line == "HANGUP":
            return self._hangup()
        raise ProtocolError(f"unexpected line with no command in flight: {line[:80]!r}")

    def _hangup(self) -> Hangup:
        self._hangups += 1
        if self._hangups > MAX_HANGUPS:
            raise ProtocolError(f"more than {MAX_HANGUPS} HANGUP lines")
        self.hung_up = True
        return Hangup()

    def _on_reply_line(self, line: str, size: int) -> Event | None:
        if self._usage:  # inside a multi-line 520: every line is usage text, even "HANGUP"
            self._usage.append(line)
            self._pending_bytes += size
            if line.endswith(_USAGE_END):
                text, self._usage, self._pending_bytes = "\n".join(self._usage), [], 0
                self._state = State.IDLE
                return Reply(520, None, None, _NO_EXTRA, text)
            if self._pending_bytes > MAX_USAGE_BYTES:
                raise ProtocolError(f"520 usage text longer than {MAX_USAGE_BYTES} bytes")
            return None
        if line == "HANGUP":  # not the reply: the command's answer still follows
            return self._hangup()
        if line.startswith("520-"):
            self._usage, self._pending_bytes = [line], size
            return None
        event = _parse_reply(line)
        if isinstance(event, Reply):
            self._state = State.IDLE
        return event

    # Which reader handles a line in each state (CLOSED and ERROR never get that far).
    _LINE_HANDLERS: ClassVar[dict[State, Callable[[AgiConnection, str, int], Event | None]]] = {
        State.AWAITING_BLOCK: _on_block_line,
        State.IDLE: _on_idle_line,
        State.AWAITING_REPLY: _on_reply_line,
    }


_SEND_REFUSED = {
    State.AWAITING_BLOCK: "cannot send a command before the agi_* block is complete",
    State.AWAITING_REPLY: "cannot send a command while the previous one awaits its reply",
    State.CLOSED: "cannot send a command: the peer closed the connection",
    State.ERROR: "cannot send a command: the connection already failed",
}
