"""The AGI protocol module: byte strings in, events out (and commands in, bytes out)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dialguard.agi.protocol import (
    MAX_ARGS,
    MAX_BLOCK_BYTES,
    MAX_BLOCK_LINES,
    MAX_LINE,
    MAX_USAGE_BYTES,
    AgiConnection,
    AgiRequest,
    Closed,
    Command,
    Event,
    Hangup,
    ProtocolError,
    Reply,
    State,
    Trying,
    UnsafeValue,
    command,
    hangup,
    set_variable,
    verbose,
)
from tests.agi.asterisk_peer import parse_args

# The block exactly as Asterisk 22.10.1 sends it for
# AGI(agi://127.0.0.1:4573/check,${EXTEN}) -- note "agi_accountcode: " with its blank.
ASTERISK_BLOCK = (
    b"agi_network: yes\n"
    b"agi_network_script: check\n"
    b"agi_request: agi://127.0.0.1:4573/check\n"
    b"agi_channel: Local/0612345671@outbound-00000000;2\n"
    b"agi_language: en\n"
    b"agi_type: Local\n"
    b"agi_uniqueid: 1795955366.1\n"
    b"agi_version: 22.10.1\n"
    b"agi_callerid: 0147000000\n"
    b"agi_calleridname: unknown\n"
    b"agi_callingpres: 0\n"
    b"agi_callingani2: 0\n"
    b"agi_callington: 0\n"
    b"agi_callingtns: 0\n"
    b"agi_dnid: unknown\n"
    b"agi_rdnis: unknown\n"
    b"agi_context: outbound\n"
    b"agi_extension: 0612345671\n"
    b"agi_priority: 3\n"
    b"agi_enhanced: 0.0\n"
    b"agi_accountcode: \n"
    b"agi_threadid: 140051474122432\n"
    b"agi_arg_1: 0612345671\n"
    b"\n"
)
ASTERISK_ENV = {
    "agi_network": "yes",
    "agi_network_script": "check",
    "agi_request": "agi://127.0.0.1:4573/check",
    "agi_channel": "Local/0612345671@outbound-00000000;2",
    "agi_language": "en",
    "agi_type": "Local",
    "agi_uniqueid": "1795955366.1",
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
    "agi_extension": "0612345671",
    "agi_priority": "3",
    "agi_enhanced": "0.0",
    "agi_accountcode": "",
    "agi_threadid": "140051474122432",
    "agi_arg_1": "0612345671",
}
SET_ALLOW = b'SET VARIABLE "DIALGUARD_RESULT" "ALLOW"\n'


def block(*lines: str) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode() + b"\n"


def parse_block(data: bytes) -> AgiRequest:
    events = AgiConnection().receive_data(data)
    assert len(events) == 1
    assert isinstance(events[0], AgiRequest)
    return events[0]


def idle() -> AgiConnection:
    conn = AgiConnection()
    conn.receive_data(ASTERISK_BLOCK)
    assert conn.state is State.IDLE
    return conn


def awaiting() -> AgiConnection:
    conn = idle()
    assert conn.set_variable("DIALGUARD_RESULT", "ALLOW") == SET_ALLOW
    assert conn.state is State.AWAITING_REPLY
    return conn


def feed(conn: AgiConnection, pieces: Sequence[bytes]) -> list[Event]:
    events: list[Event] = []
    for piece in pieces:
        events += conn.receive_data(piece)
    return events


def state(conn: AgiConnection) -> State:
    """conn.state, read afresh (mypy would keep an earlier assert's narrowing)."""
    return conn.state


def one_byte_at_a_time(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


def assert_failed(conn: AgiConnection) -> None:
    assert conn.state is State.ERROR
    with pytest.raises(ProtocolError):
        conn.receive_data(b"HANGUP\n")
    with pytest.raises(ProtocolError):
        conn.receive_data(b"")
    with pytest.raises(ProtocolError):
        conn.send(hangup())


# --- The agi_* block ----------------------------------------------------------------------


def test_asterisk_block_in_one_read() -> None:
    conn = AgiConnection()
    [request] = conn.receive_data(ASTERISK_BLOCK)
    assert request == AgiRequest(ASTERISK_ENV, "check", "", ("0612345671",))
    assert isinstance(request, AgiRequest)
    assert list(request.env) == list(ASTERISK_ENV)  # order kept
    assert request.channel == "Local/0612345671@outbound-00000000;2"
    assert request.uniqueid == "1795955366.1"
    assert request.callerid == "0147000000"
    assert request.accountcode == ""
    assert request.network is True
    assert conn.state is State.IDLE
    assert conn.request is request
    assert not conn.hung_up


def test_asterisk_block_one_byte_at_a_time() -> None:
    conn = AgiConnection()
    pieces = one_byte_at_a_time(ASTERISK_BLOCK)
    for piece in pieces[:-1]:
        assert conn.receive_data(piece) == []
        assert conn.state is State.AWAITING_BLOCK
    assert conn.receive_data(pieces[-1]) == [parse_block(ASTERISK_BLOCK)]


def test_asterisk_block_one_line_at_a_time() -> None:
    # Asterisk writes one line per write(): the block arrives in 24 reads.
    conn = AgiConnection()
    lines = ASTERISK_BLOCK.splitlines(keepends=True)
    assert len(lines) == 24
    for line in lines[:-1]:
        assert conn.receive_data(line) == []
    [request] = conn.receive_data(lines[-1])
    assert request == parse_block(ASTERISK_BLOCK)


def test_block_split_mid_line_everywhere() -> None:
    expected = parse_block(ASTERISK_BLOCK)
    for cut in range(1, len(ASTERISK_BLOCK)):
        conn = AgiConnection()
        events = feed(conn, [ASTERISK_BLOCK[:cut], ASTERISK_BLOCK[cut:]])
        assert events == [expected]


def test_block_with_crlf_line_ends() -> None:
    request = parse_block(ASTERISK_BLOCK.replace(b"\n", b"\r\n"))
    assert request.env == ASTERISK_ENV


def test_script_query_is_split_off() -> None:
    request = parse_block(
        block(
            "agi_network: yes",
            "agi_network_script: check?campaign=demo&fail=open",
            "agi_request: agi://127.0.0.1:4573/check?campaign=demo&fail=open",
        )
    )
    assert request.script == "check"
    assert request.query == "campaign=demo&fail=open"
    assert request.env["agi_network_script"] == "check?campaign=demo&fail=open"
    assert parse_block(block("agi_network_script: check?")).query == ""
    assert parse_block(block("agi_network_script: a?b?c")).query == "b?c"


def test_values_keep_their_colons() -> None:
    request = parse_block(
        block(
            "agi_channel: PJSIP/trunk:5060-00000001",
            "agi_calleridname: a: b: c",
            "agi_rdnis: ::",
            "agi_dnid:  leading blank",
        )
    )
    assert request.channel == "PJSIP/trunk:5060-00000001"
    assert request.env["agi_calleridname"] == "a: b: c"
    assert request.env["agi_rdnis"] == "::"
    assert request.env["agi_dnid"] == " leading blank"


def test_empty_value_with_and_without_the_blank() -> None:
    assert parse_block(block("agi_accountcode: ")).accountcode == ""
    assert parse_block(block("agi_accountcode:")).accountcode == ""


def test_multiple_args_in_order() -> None:
    request = parse_block(
        block(
            "agi_network_script: check",
            "agi_arg_1: 0612345671",
            "agi_arg_2: ",
            "agi_arg_3: demo energy: renovation",
        )
    )
    assert request.args == ("0612345671", "", "demo energy: renovation")


def test_args_in_any_order_come_out_numbered() -> None:
    lines = [f"agi_arg_{n}: {letter}" for n, letter in enumerate("abcdefghij", 1)]
    request = parse_block(block(*reversed(lines)))  # agi_arg_10 first, agi_arg_1 last
    assert request.args == tuple("abcdefghij")


def test_no_args() -> None:
    assert parse_block(block("agi_network: yes")).args == ()


def test_classic_agi_block_without_network_keys() -> None:
    request = parse_block(block("agi_request: dialguard-agi", "agi_channel: PJSIP/a-1"))
    assert request.network is False
    assert request.script == "dialguard-agi"
    assert request.callerid == ""


def test_block_then_hangup_in_the_same_read() -> None:
    conn = AgiConnection()
    events = conn.receive_data(ASTERISK_BLOCK + b"HANGUP\n")
    assert events == [parse_block(ASTERISK_BLOCK), Hangup()]
    assert conn.hung_up
    assert conn.state is State.IDLE


def test_non_utf8_is_replaced_not_fatal() -> None:
    request = parse_block(b"agi_calleridname: Soci\xe9t\xe9\nagi_arg_1: 06\xff\n\n")
    assert request.env["agi_calleridname"] == "Soci\ufffdt\ufffd"
    assert request.args == ("06\ufffd",)


@pytest.mark.parametrize(
    "data",
    [
        b"agi_network yes\n",  # no separator
        b"agi_network:yes\n",  # a colon, but not ": " and not at the end
        b"network: yes\n",  # not an agi_ key
        b"AGI_network: yes\n",
        b"agi_: x\n",
        b"agi_net work: yes\n",
        b": yes\n",
        b"agi_x:: y\n",
        b"agi_network: yes\nagi_network: no\n",  # repeated key
        b"agi_arg_2: x\n\n",  # gap: no agi_arg_1
        b"agi_arg_1: a\nagi_arg_3: c\n\n",
        b"agi_arg_0: x\n\n",
        b"agi_arg_01: x\n\n",
        b"agi_arg_x: x\n\n",
        b"\n",  # empty block
        b"\r\n",
        b"agi_network: y\x00es\n",  # NUL
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"HANGUP\n",
        b"200 result=1\n",
    ],
)
def test_malformed_block_is_a_protocol_error(data: bytes) -> None:
    conn = AgiConnection()
    with pytest.raises(ProtocolError):
        conn.receive_data(data)
    assert_failed(conn)


def test_malformed_block_fails_the_same_byte_by_byte() -> None:
    conn = AgiConnection()
    with pytest.raises(ProtocolError):
        feed(conn, one_byte_at_a_time(b"agi_network: yes\nbad line\n"))
    assert_failed(conn)


def test_error_message_is_one_line() -> None:
    with pytest.raises(ProtocolError) as info:
        AgiConnection().receive_data(b"x" * 100 + b"\n")
    assert "\n" not in str(info.value)
    assert len(str(info.value)) < 200


def test_request_is_kept_when_an_error_follows_in_the_same_read() -> None:
    conn = AgiConnection()
    with pytest.raises(ProtocolError):
        conn.receive_data(ASTERISK_BLOCK + b"agi_late: line\n")
    assert conn.request == parse_block(ASTERISK_BLOCK)
    assert_failed(conn)


# --- Limits -------------------------------------------------------------------------------


def test_line_of_max_line_bytes_passes() -> None:
    line = b"agi_calleridname: " + b"x" * (MAX_LINE - len(b"agi_calleridname: ") - 1) + b"\n"
    assert len(line) == MAX_LINE
    assert parse_block(line + b"\n").env["agi_calleridname"] == "x" * (MAX_LINE - 19)


def test_line_longer_than_max_line_fails() -> None:
    line = b"agi_calleridname: " + b"x" * (MAX_LINE - len(b"agi_calleridname: ")) + b"\n"
    conn = AgiConnection()
    with pytest.raises(ProtocolError, match="longer than"):
        conn.receive_data(line)
    assert_failed(conn)


def test_endless_line_fails_before_its_end_arrives() -> None:
    conn = AgiConnection()
    assert conn.receive_data(b"agi_x: " + b"x" * (MAX_LINE - 8)) == []  # MAX_LINE - 1 bytes
    with pytest.raises(ProtocolError, match="longer than"):
        conn.receive_data(b"x")


def test_endless_reply_line_fails() -> None:
    conn = awaiting()
    with pytest.raises(ProtocolError):
        feed(conn, [b"200 result=1 (" + b"x" * 4096] * 3)
    assert_failed(conn)


def _block_of_size(total: int) -> bytes:
    """A block of exactly ``total`` bytes, empty line included."""
    lines: list[bytes] = []
    remaining = total - 1
    n = 0
    while remaining:
        size = min(remaining, 4000)
        if remaining - size and remaining - size < 20:
            size -= 20
        n += 1
        key = f"agi_k{n:04d}: ".encode()
        lines.append(key + b"v" * (size - len(key) - 1) + b"\n")
        remaining -= size
    data = b"".join(lines) + b"\n"
    assert len(data) == total
    return data


def test_block_of_max_block_bytes_passes() -> None:
    assert len(parse_block(_block_of_size(MAX_BLOCK_BYTES)).env) == 5


def test_block_over_max_block_bytes_fails() -> None:
    conn = AgiConnection()
    with pytest.raises(ProtocolError, match="block longer than"):
        conn.receive_data(_block_of_size(MAX_BLOCK_BYTES + 1))
    assert_failed(conn)


def test_block_of_max_block_lines_passes() -> None:
    lines = [f"agi_arg_{n}: {n}" for n in range(1, MAX_BLOCK_LINES + 1)]
    assert len(parse_block(block(*lines)).args) == MAX_BLOCK_LINES


def test_block_over_max_block_lines_fails() -> None:
    lines = [f"agi_arg_{n}: {n}" for n in range(1, MAX_BLOCK_LINES + 2)]
    conn = AgiConnection()
    with pytest.raises(ProtocolError, match="lines"):
        conn.receive_data(block(*lines))
    assert_failed(conn)


def test_usage_over_max_usage_bytes_fails() -> None:
    conn = awaiting()
    conn.receive_data(b"520-Invalid command syntax.  Proper usage follows:\n")
    with pytest.raises(ProtocolError, match="usage"):
        feed(conn, [b"u" * 1000 + b"\n"] * (MAX_USAGE_BYTES // 1000 + 1))
    assert_failed(conn)


# --- Replies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "code", "result", "data", "extra"),
    [
        ("200 result=1", 200, "1", None, {}),
        ("200 result=0", 200, "0", None, {}),
        ("200 result=-1", 200, "-1", None, {}),
        ("200 result=132456", 200, "132456", None, {}),
        ("200 result=1 (timeout) endpos=1234", 200, "1", "timeout", {"endpos": "1234"}),
        ("200 result= (timeout)", 200, "", "timeout", {}),
        ("200 result=1 (some value)", 200, "1", "some value", {}),
        ("200 result=1 ()", 200, "1", "", {}),
        ("200 result=1 (a) b=c)", 200, "1", "a) b=c", {}),  # GET VARIABLE of "a) b=c"
        ("200 result=1 ((x))", 200, "1", "(x)", {}),
        ("200 result=1 (digit) digit=5 endpos=100", 200, "1", "digit",
         {"digit": "5", "endpos": "100"}),
        ("200 result=0 endpos=24807", 200, "0", None, {"endpos": "24807"}),
        ("200 result=49 endpos=8640", 200, "49", None, {"endpos": "8640"}),
        ("200 result=0 Gosub complete", 200, "0", None, {}),
        ("200 result=0 Gosub complete (abnormal exit)", 200, "0", None, {}),
        ("200 result=1 (fooBar) endpos=55468 Additional message", 200, "1", "fooBar",
         {"endpos": "55468"}),
        (
            '200 result=1 (speech) endpos=0 results=1 score0=900 text0="hi (there)" grammar0=g',
            200, "1", "speech",
            {"endpos": "0", "results": "1", "score0": "900", "text0": '"hi', "grammar0": "g"},
        ),
        ("510 Invalid or unknown command", 510, None, None, {}),
        ("511 Command Not Permitted on a dead channel or intercepted channel", 511, None, None, {}),
        ("520 Invalid command syntax.  Proper usage not available.", 520, None, None, {}),
        ("503 result=-2 Memory allocation failure", 503, "-2", None, {}),
    ],
)  # fmt: skip
def test_reply(
    line: str, code: int, result: str | None, data: str | None, extra: dict[str, str]
) -> None:
    conn = awaiting()
    assert conn.receive_data(line.encode() + b"\n") == [Reply(code, result, data, extra, line)]
    assert conn.state is State.IDLE


def test_reply_ok() -> None:
    assert Reply(200, "1", None, {}, "200 result=1").ok
    assert not Reply(510, None, None, {}, "510 Invalid or unknown command").ok


def test_reply_with_crlf() -> None:
    conn = awaiting()
    assert conn.receive_data(b"200 result=1\r\n") == [Reply(200, "1", None, {}, "200 result=1")]


def test_reply_one_byte_at_a_time() -> None:
    conn = awaiting()
    events = feed(conn, one_byte_at_a_time(b"200 result=1 (timeout) endpos=1234\n"))
    assert events == [Reply(200, "1", "timeout", {"endpos": "1234"}, events[0].text)]  # type: ignore[union-attr]


def test_next_command_after_reply() -> None:
    conn = awaiting()
    conn.receive_data(b"200 result=1\n")
    assert conn.verbose("decided") == b'VERBOSE "decided" "1"\n'
    assert conn.receive_data(b"200 result=1\n") == [Reply(200, "1", None, {}, "200 result=1")]
    assert conn.hangup() == b"HANGUP\n"
    assert conn.receive_data(b"200 result=1\nHANGUP\n") == [
        Reply(200, "1", None, {}, "200 result=1"),
        Hangup(),
    ]
    assert conn.state is State.IDLE


def test_gosub_trying_then_final_reply() -> None:
    conn = awaiting()
    assert conn.receive_data(b"100 result=0 Trying...\n") == [Trying()]
    assert state(conn) is State.AWAITING_REPLY
    [reply] = conn.receive_data(b"200 result=0 Gosub complete\n")
    assert reply == Reply(200, "0", None, {}, "200 result=0 Gosub complete")
    assert state(conn) is State.IDLE


def test_gosub_trying_and_reply_in_one_read() -> None:
    conn = awaiting()
    events = conn.receive_data(b"100 result=0 Trying...\n200 result=0 Gosub complete\n")
    assert events == [Trying(), Reply(200, "0", None, {}, "200 result=0 Gosub complete")]


USAGE_520 = (
    b"520-Invalid command syntax.  Proper usage follows:\n"
    b" Usage: VERBOSE <message> <level>\n"
    b"HANGUP\n"  # usage text, not a hangup: Asterisk never interleaves inside a reply
    b"200 result=1\n"
    b"\n"
    b"520 End of proper usage.\n"
)


def test_multiline_520_is_one_reply() -> None:
    conn = awaiting()
    [reply] = conn.receive_data(USAGE_520)
    assert reply == Reply(520, None, None, {}, USAGE_520.decode().removesuffix("\n"))
    assert conn.state is State.IDLE
    assert not conn.hung_up


def test_multiline_520_split_anywhere() -> None:
    expected = awaiting().receive_data(USAGE_520)
    for cut in range(1, len(USAGE_520)):
        conn = awaiting()
        first = conn.receive_data(USAGE_520[:cut])
        assert first == []
        assert conn.state is State.AWAITING_REPLY
        assert conn.receive_data(USAGE_520[cut:]) == expected


def test_multiline_520_one_byte_at_a_time() -> None:
    conn = awaiting()
    assert feed(conn, one_byte_at_a_time(USAGE_520)) == awaiting().receive_data(USAGE_520)


def test_multiline_520_end_glued_to_usage_without_lf() -> None:
    # Asterisk writes the usage with "%s": when it lacks a final LF the end marker is glued on.
    data = (
        b"520-Invalid command syntax.  Proper usage follows:\n"
        b"Returns the digits received from the channel at the other end.520 End of proper usage.\n"
    )
    conn = awaiting()
    [reply] = conn.receive_data(data)
    assert isinstance(reply, Reply)
    assert reply.code == 520
    assert conn.state is State.IDLE


def test_hangup_before_reply_same_read() -> None:
    conn = awaiting()
    events = conn.receive_data(b"HANGUP\n200 result=1\n")
    assert events == [Hangup(), Reply(200, "1", None, {}, "200 result=1")]
    assert conn.hung_up
    assert conn.state is State.IDLE


def test_hangup_before_reply_separate_reads() -> None:
    conn = awaiting()
    assert conn.receive_data(b"HANGUP\n") == [Hangup()]
    assert conn.state is State.AWAITING_REPLY  # the HANGUP line is not the reply
    assert conn.receive_data(b"200 result=1\n") == [Reply(200, "1", None, {}, "200 result=1")]


def test_hangup_split_across_reads() -> None:
    conn = awaiting()
    assert conn.receive_data(b"HANG") == []
    assert conn.receive_data(b"UP\n200 res") == [Hangup()]
    assert conn.receive_data(b"ult=1\n") == [Reply(200, "1", None, {}, "200 result=1")]


def test_dead_mode_goes_on_after_hangup() -> None:
    conn = awaiting()
    conn.receive_data(b"HANGUP\n200 result=1\n")
    conn.send(hangup())
    reply = b"511 Command Not Permitted on a dead channel or intercepted channel\n"
    [event] = conn.receive_data(reply)
    assert isinstance(event, Reply)
    assert event.code == 511


def test_hangup_while_idle_and_repeated() -> None:
    # run_agi() sends HANGUP when it notices the hangup and again when it ends.
    conn = idle()
    assert conn.receive_data(b"HANGUP\nHANGUP\n") == [Hangup(), Hangup()]
    assert conn.state is State.IDLE
    assert conn.receive_data(b"") == [Closed()]


def test_hangup_with_crlf() -> None:
    assert idle().receive_data(b"HANGUP\r\n") == [Hangup()]


@pytest.mark.parametrize(
    "line",
    [
        b"hello\n",
        b"\n",
        b"200\n",
        b"200 ok\n",
        b"200 Result=1\n",
        b" 200 result=1\n",
        b"2000 result=1\n",
        b"600 result=1\n",
        b"099 result=1\n",
        b"101 result=0 Trying...\n",
        b"hangup\n",
        b"HANGUP now\n",
        b"agi_network: yes\n",
        b"200 result=1\x00\n",
    ],
)
def test_garbage_reply_is_a_protocol_error(line: bytes) -> None:
    conn = awaiting()
    with pytest.raises(ProtocolError):
        conn.receive_data(line)
    assert_failed(conn)


@pytest.mark.parametrize(
    "data", [b"200 result=1\n", b"510 Invalid or unknown command\n", b"100 result=0 Trying...\n"]
)
def test_reply_while_idle_is_a_protocol_error(data: bytes) -> None:
    conn = idle()
    with pytest.raises(ProtocolError, match="no command in flight"):
        conn.receive_data(data)
    assert_failed(conn)


def test_two_replies_to_one_command_is_a_protocol_error() -> None:
    conn = awaiting()
    with pytest.raises(ProtocolError):
        conn.receive_data(b"200 result=1\n200 result=1\n")
    assert_failed(conn)


# --- EOF in every state ---------------------------------------------------------------------


def test_eof_before_anything() -> None:
    conn = AgiConnection()
    assert conn.receive_data(b"") == [Closed()]
    assert conn.state is State.CLOSED
    assert conn.receive_data(b"") == []  # idempotent
    with pytest.raises(ProtocolError, match="closed"):
        conn.send(hangup())
    assert conn.state is State.CLOSED
    with pytest.raises(ProtocolError, match="after EOF"):
        conn.receive_data(b"HANGUP\n")
    assert_failed(conn)


@pytest.mark.parametrize("partial", [b"agi_network: yes\n", b"agi_netw", b"\r"])
def test_eof_in_the_middle_of_the_block(partial: bytes) -> None:
    conn = AgiConnection()
    conn.receive_data(partial)
    with pytest.raises(ProtocolError, match="block"):
        conn.receive_data(b"")
    assert_failed(conn)


def test_eof_when_idle() -> None:
    conn = idle()
    assert conn.receive_data(b"") == [Closed()]
    assert conn.state is State.CLOSED


def test_eof_when_idle_after_partial_line() -> None:
    conn = idle()
    conn.receive_data(b"HANG")
    with pytest.raises(ProtocolError, match="line"):
        conn.receive_data(b"")
    assert_failed(conn)


def test_eof_while_awaiting_reply() -> None:
    # AGIEXITONHANGUP: Asterisk says HANGUP and closes with our command unanswered.
    conn = awaiting()
    assert conn.receive_data(b"HANGUP\n") == [Hangup()]
    assert conn.receive_data(b"") == [Closed()]
    assert conn.state is State.CLOSED


def test_eof_after_trying() -> None:
    conn = awaiting()
    assert conn.receive_data(b"100 result=0 Trying...\n") == [Trying()]
    assert conn.receive_data(b"") == [Closed()]


def test_eof_in_the_middle_of_a_reply_line() -> None:
    conn = awaiting()
    conn.receive_data(b"200 resu")
    with pytest.raises(ProtocolError, match="line"):
        conn.receive_data(b"")
    assert_failed(conn)


def test_eof_in_the_middle_of_a_multiline_520() -> None:
    conn = awaiting()
    conn.receive_data(USAGE_520[:60])
    with pytest.raises(ProtocolError, match="520"):
        conn.receive_data(b"")
    assert_failed(conn)


# --- Sending --------------------------------------------------------------------------------


def test_command_bytes() -> None:
    assert set_variable("DIALGUARD_RESULT", "ALLOW").encode() == SET_ALLOW
    assert verbose("hello world").encode() == b'VERBOSE "hello world" "1"\n'
    assert verbose("x", 4).encode() == b'VERBOSE "x" "4"\n'
    assert hangup().encode() == b"HANGUP\n"
    assert command("GET VARIABLE", "X").encode() == b'GET VARIABLE "X"\n'
    assert command("NOOP").encode() == b"NOOP\n"
    assert command("SET VARIABLE", "A", "") == Command("SET VARIABLE", ("A", ""))
    assert set_variable("A", "").encode() == b'SET VARIABLE "A" ""\n'


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ("a\\b", b'"a\\\\b"'),
        ('say "hi"', b'"say \\"hi\\""'),
        ("\\", b'"\\\\"'),
        ('"', b'"\\""'),
        ("a) b=c", b'"a) b=c"'),
        ("FILE(/tmp/x)", b'"FILE(/tmp/x)"'),  # a value, never a name: harmless when quoted
        ("tab\there", b'"tab\there"'),
        ("été", '"été"'.encode()),
        ("${SHELL(rm -rf /)}", b'"${SHELL(rm -rf /)}"'),  # AGI does not expand values
    ],
)
def test_quoting(value: str, wire: bytes) -> None:
    line = set_variable("X", value).encode()
    assert line == b'SET VARIABLE "X" ' + wire + b"\n"
    assert parse_args(line[:-1]) == [b"SET", b"VARIABLE", b"X", value.encode()]


@pytest.mark.parametrize(
    "value",
    ["a\nEXEC System rm", "a\r", "\r\n", "\n", "a\x00b", "ok\r\nHANGUP"],
)
def test_cr_lf_nul_refused(value: str) -> None:
    with pytest.raises(UnsafeValue):
        set_variable("DIALGUARD_REASON", value)
    with pytest.raises(UnsafeValue):
        verbose(value)
    with pytest.raises(UnsafeValue):
        command("GET VARIABLE", value)


def test_lone_surrogate_refused() -> None:
    with pytest.raises(UnsafeValue):
        set_variable("X", "\udcff")


def test_longest_line_accepted_and_one_more_byte_refused() -> None:
    overhead = len(b'SET VARIABLE "X" ""\n')
    longest = set_variable("X", "v" * (MAX_LINE - 1 - overhead)).encode()
    assert len(longest) == MAX_LINE - 1  # fits fgets() with its NUL, LF included
    with pytest.raises(UnsafeValue, match="longer than"):
        set_variable("X", "v" * (MAX_LINE - overhead))
    # escaping counts: 4000 backslashes are 8000 bytes on the wire
    with pytest.raises(UnsafeValue):
        set_variable("X", "\\" * 4096)
    # UTF-8 bytes count, not characters
    with pytest.raises(UnsafeValue):
        set_variable("X", "é" * 4096)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "lower",
        "Dialguard",
        "FILE(/tmp/x)",
        "X)",
        "CDR(userfield)",
        "A B",
        "1ABC",
        "_X",
        "__X",
        "A-B",
        "A" * 81,
        "ÉTAT",
        "X\n",
        'X"',
        "X\\",
    ],
)
def test_bad_variable_names_refused(name: str) -> None:
    with pytest.raises(UnsafeValue):
        set_variable(name, "v")
    with pytest.raises(ValueError):  # UnsafeValue is a ValueError
        idle().set_variable(name, "v")


def test_longest_variable_name_accepted() -> None:
    assert set_variable("A" * 80, "v").args == ("A" * 80, "v")


@pytest.mark.parametrize("verb", ["", "set variable", "SET  VARIABLE", " HANGUP", "EXEC\n", "A1"])
def test_bad_verbs_refused(verb: str) -> None:
    with pytest.raises(UnsafeValue):
        command(verb)


def test_verbose_level_range() -> None:
    for level in (0, 5, -1):
        with pytest.raises(UnsafeValue):
            verbose("x", level)


def test_too_many_words_refused() -> None:
    assert len(parse_args(command("NOOP", *["a"] * (MAX_ARGS - 2)).encode()[:-1])) == 127
    with pytest.raises(UnsafeValue, match="words"):
        command("NOOP", *["a"] * (MAX_ARGS - 1))


def test_send_before_block_refused_and_state_kept() -> None:
    conn = AgiConnection()
    with pytest.raises(ProtocolError, match="before the agi_"):
        conn.set_variable("X", "y")
    assert conn.state is State.AWAITING_BLOCK
    assert conn.receive_data(ASTERISK_BLOCK) == [parse_block(ASTERISK_BLOCK)]


def test_one_command_at_a_time() -> None:
    conn = awaiting()
    with pytest.raises(ProtocolError, match="awaits its reply"):
        conn.set_variable("X", "y")
    assert conn.state is State.AWAITING_REPLY  # nothing was sent: the session is intact
    assert conn.receive_data(b"200 result=1\n") == [Reply(200, "1", None, {}, "200 result=1")]


def test_unsafe_value_leaves_connection_idle() -> None:
    conn = idle()
    with pytest.raises(UnsafeValue):
        conn.set_variable("DIALGUARD_REASON", "x\ny")
    assert state(conn) is State.IDLE
    assert conn.command("NOOP") == b"NOOP\n"
    assert state(conn) is State.AWAITING_REPLY


def test_send_after_error_refused() -> None:
    conn = AgiConnection()
    with pytest.raises(ProtocolError):
        conn.receive_data(b"junk\n")
    with pytest.raises(ProtocolError, match="failed"):
        conn.send(hangup())


# --- The reference splitter (tests.agi.asterisk_peer.parse_args, res_agi.c transcribed) ------


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"SET VARIABLE X Y", [b"SET", b"VARIABLE", b"X", b"Y"]),
        (b'a "b c" d', [b"a", b"b c", b"d"]),
        (b"a  \t b", [b"a", b"b"]),
        (b"a\\ b", [b"a b"]),
        (b'"a\\"b"', [b'a"b']),
        (b'"a\\\\"', [b"a\\"]),
        (b'""', [b""]),
        (b'a "" b', [b"a", b"", b"b"]),
        (b'ab"cd ef"gh', [b"abcd efgh"]),
        (b"a\\", [b"a"]),
        (b"\\n", [b"n"]),
        (b"", []),
        (b"   ", []),
        (b'"unterminated x', [b"unterminated x"]),
        (b'x "y\r"', [b"x", b"y\r"]),
    ],
)
def test_reference_splitter(line: bytes, words: list[bytes]) -> None:
    assert parse_args(line) == words


def test_reference_splitter_truncates_like_asterisk() -> None:
    assert len(parse_args(b" ".join([b"w"] * 200))) == MAX_ARGS - 1


# --- Properties -----------------------------------------------------------------------------

FRAGMENTS = [
    b"agi_network: yes\n",
    b"agi_arg_1: 0612345671\n",
    b"agi_",
    b"arg_2",
    b": ",
    b":",
    b"\n",
    b"\r\n",
    b"\r",
    b"200 result=1",
    b"200 result=",
    b" (",
    b")",
    b" endpos=1",
    b"100 result=0 Trying...\n",
    b"510 Invalid or unknown command\n",
    b"520-",
    b"520 End of proper usage.",
    b"HANGUP\n",
    b"HANGUP",
    b"\x00",
    b"\xff\xfe",
    b"\xc3\xa9",
    b"?",
    b" ",
]
# Known fragments twice as often as random bytes, so that some inputs get far into a session.
fragment = st.sampled_from(FRAGMENTS)
garbage = st.lists(st.one_of(fragment, fragment, st.binary(max_size=24)), max_size=40).map(b"".join)
start_states = st.sampled_from(["block", "idle", "awaiting"])


def _start(state: str) -> AgiConnection:
    return {"block": AgiConnection, "idle": idle, "awaiting": awaiting}[state]()


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def _run(conn: AgiConnection, pieces: list[bytes]) -> tuple[list[Event], bool]:
    """Feed pieces then EOF; (events, failed). Only ProtocolError may escape receive_data."""
    events: list[Event] = []
    try:
        for piece in [*pieces, b""]:
            events += conn.receive_data(piece)
    except ProtocolError:
        assert_failed(conn)
        return events, True
    assert conn.state is State.CLOSED
    assert events[-1] == Closed()
    return events, False


@settings(max_examples=300, deadline=timedelta(seconds=2))
@given(start=start_states, data=garbage, cuts=st.lists(st.integers(0, 10_000), max_size=12))
def test_any_bytes_any_chunking_only_protocol_error(
    start: str, data: bytes, cuts: list[int]
) -> None:
    chunked, chunked_failed = _run(_start(start), _chunks(data, cuts))
    whole, whole_failed = _run(_start(start), [data] if data else [])
    # Chunking changes when an error is raised, never whether; with no error, nothing at all.
    assert chunked_failed == whole_failed
    if not whole_failed:
        assert chunked == whole


@settings(max_examples=100, deadline=timedelta(seconds=2))
@given(data=st.binary(max_size=2 * MAX_LINE), start=start_states)
def test_any_bytes_one_read(data: bytes, start: str) -> None:
    _run(_start(start), [data])


block_keys = st.from_regex(r"agi_[a-z][a-z0-9_]{0,15}", fullmatch=True).filter(
    lambda key: not key.startswith("agi_arg")
)
block_values = st.text(
    st.characters(blacklist_characters="\r\n\x00", blacklist_categories=["Cs"]), max_size=60
)


@settings(max_examples=200, deadline=timedelta(seconds=2))
@given(
    env=st.dictionaries(block_keys, block_values, min_size=1, max_size=30),
    args=st.lists(block_values, max_size=5),
    cuts=st.lists(st.integers(0, 10_000), max_size=30),
    crlf=st.booleans(),
)
def test_block_parse_is_chunking_invariant(
    env: dict[str, str], args: list[str], cuts: list[int], crlf: bool
) -> None:
    pairs = {**env, **{f"agi_arg_{n}": arg for n, arg in enumerate(args, 1)}}
    end = "\r\n" if crlf else "\n"
    data = ("".join(f"{k}: {v}{end}" for k, v in pairs.items()) + end).encode()
    whole = AgiConnection().receive_data(data)
    conn = AgiConnection()
    assert feed(conn, _chunks(data, cuts)) == whole
    script, _, query = env.get("agi_network_script", env.get("agi_request", "")).partition("?")
    assert whole == [AgiRequest(pairs, script, query, tuple(args))]
    assert conn.state is State.IDLE


REPLIES = [
    b"200 result=1\n",
    b"200 result=-1\n",
    b"200 result= (timeout)\n",
    b"200 result=1 (timeout) endpos=1234\n",
    b"200 result=1 (a) b=c)\n",
    b"510 Invalid or unknown command\n",
    b"511 Command Not Permitted on a dead channel or intercepted channel\n",
    b"520 Invalid command syntax.  Proper usage not available.\n",
    USAGE_520,
    b"100 result=0 Trying...\n200 result=0 Gosub complete\n",
]


@settings(max_examples=200, deadline=timedelta(seconds=2))
@given(
    before=st.integers(0, 2),
    reply=st.sampled_from(REPLIES),
    after=st.integers(0, 2),
    crlf=st.booleans(),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
)
def test_reply_parse_is_chunking_invariant(
    before: int, reply: bytes, after: int, crlf: bool, cuts: list[int]
) -> None:
    data = b"HANGUP\n" * before + reply + b"HANGUP\n" * after
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    whole, whole_failed = _run(awaiting(), [data])
    chunked, chunked_failed = _run(awaiting(), _chunks(data, cuts))
    assert not whole_failed and not chunked_failed
    assert chunked == whole
    finals = [event for event in whole if isinstance(event, Reply)]
    assert len(finals) == 1
    tail = [finals[0], *[Hangup()] * after, Closed()]
    assert whole[:before] == [Hangup()] * before
    assert whole[-len(tail) :] == tail


variable_names = st.from_regex(r"[A-Z][A-Z0-9_]{0,79}", fullmatch=True)
safe_text = st.text(st.characters(blacklist_characters="\r\n\x00", blacklist_categories=["Cs"]))


@settings(max_examples=300, deadline=timedelta(seconds=2))
@given(name=variable_names, value=safe_text)
def test_set_variable_round_trips_through_asterisk_splitting(name: str, value: str) -> None:
    line = set_variable(name, value).encode()
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert b"\r" not in line and b"\x00" not in line
    assert len(line) <= MAX_LINE - 1
    words = parse_args(line[:-1])
    assert words == [b"SET", b"VARIABLE", name.encode(), value.encode()]


@settings(max_examples=100, deadline=timedelta(seconds=2))
@given(args=st.lists(safe_text, max_size=10))
def test_any_command_round_trips(args: list[str]) -> None:
    line = command("GET FULL VARIABLE", *args).encode()
    assert parse_args(line[:-1]) == [b"GET", b"FULL", b"VARIABLE", *(a.encode() for a in args)]


@settings(
    max_examples=100, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow]
)
@given(value=st.text(min_size=1), name=st.text(max_size=90))
def test_builders_raise_only_unsafe_value(value: str, name: str) -> None:
    for verb, args in (("SET VARIABLE", (name, value)), ("X", (name, value))):
        try:
            built = set_variable(*args) if verb == "SET VARIABLE" else command(verb, *args)
        except UnsafeValue:
            continue
        line = built.encode()
        assert len(line) <= MAX_LINE - 1
        assert line.count(b"\n") == 1 and b"\r" not in line and b"\x00" not in line


def _idle_connection() -> AgiConnection:
    conn = AgiConnection()
    conn.receive_data(b"agi_network: yes\nagi_arg_1: 0612345678\n\n")
    return conn


@settings(max_examples=300)
@given(
    st.one_of(st.from_regex(r"\A[A-Z][A-Z0-9_]{0,20}\Z"), st.text(max_size=12)),
    st.one_of(st.from_regex(r"\A[A-Za-z0-9_+.:-]{0,40}\Z"), st.text(max_size=40)),
)
def test_the_plain_value_shortcut_writes_what_the_general_path_writes(
    name: str, value: str
) -> None:
    conn = _idle_connection()
    try:
        expected = set_variable(name, value).encode()
    except UnsafeValue:
        with pytest.raises(UnsafeValue):
            conn.set_variable(name, value)
        assert conn.state is State.IDLE  # nothing was sent
        return
    assert conn.set_variable(name, value) == expected
    assert conn.state is State.AWAITING_REPLY
    with pytest.raises(ProtocolError):  # one command at a time, shortcut or not
        conn.set_variable(name, value)
