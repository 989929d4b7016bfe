"""Fuzz targets: bytes in, and an exception only where the code has a defect.

Each target feeds its input to one reader of outside data, as the service meets it, and
checks what must hold whatever the input: the AGI parser, number normalisation, each
import kind's line parser, the configuration and policy loaders, the ARI event decoder.
An expected refusal (ProtocolError, InvalidNumber, a rejected line, ConfigError...) is
the right answer to bad input; anything else escaping, or a property broken, is a crash.

Two drivers run them: tests/reliability/test_fuzz.py (Hypothesis, mutating the seeds
below, in `make test`) and tests/reliability/fuzz.py (atheris, coverage-guided, for
minutes, in `make test-reliability`). A crash either finds becomes a regression case in
test_fuzz.py's REGRESSIONS.
"""

from __future__ import annotations

import io
import json
import re
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

from dialguard.agi.protocol import (
    AgiConnection,
    AgiRequest,
    Closed,
    Command,
    Hangup,
    ProtocolError,
    Reply,
    State,
    Trying,
    UnsafeValue,
    set_variable,
)
from dialguard.ari.client import Channel, StasisStart, parse_time
from dialguard.config import ConfigError, load_config, load_policy
from dialguard.import_files import (
    KINDS,
    BadImportFile,
    DncRow,
    OptoutRow,
    Rejected,
    chunks,
    consent_entry,
    contract_entry,
    read_header,
    records,
)
from dialguard.import_reading import decoded
from dialguard.numbers import InvalidNumber, fast_key, import_key, listable, normalise
from tests.agi.asterisk_peer import agi_env, encode_block, parse_args

ROOT = Path(__file__).resolve().parents[2]
PARIS = ZoneInfo("Europe/Paris")
Target = Callable[[bytes], None]

# --- the AGI parser -------------------------------------------------------------------------


def _feed(head: list[bytes], tail: list[bytes]) -> tuple[list[object], bool]:
    """`head` (up to the block's end), then one command sent as the server does once the
    block is in, then `tail` (the replies) and EOF."""
    conn = AgiConnection()
    events: list[object] = []
    try:
        for piece in head:
            events += conn.receive_data(piece)
        if conn.state is State.IDLE:
            conn.send(set_variable("DIALGUARD_RESULT", "ALLOW"))
        for piece in [*tail, b""]:
            events += conn.receive_data(piece)
    except ProtocolError:
        assert conn.state is State.ERROR
        return events, True
    for event in events:
        assert isinstance(event, (AgiRequest, Reply, Hangup, Trying, Closed)), event
    return events, False


def _cut(data: bytes, step: int) -> list[bytes]:
    return [data[i : i + step] for i in range(0, len(data), step)]


def agi_parser(data: bytes) -> None:
    """The first byte says where to cut the rest into reads: the events must not depend
    on how TCP cut the bytes (the fast whole-block path and the line path agree)."""
    if not data:
        return
    step, body = data[0] % 17 + 1, data[1:]
    end = body.find(b"\n\n")
    head, tail = (body[: end + 2], body[end + 2 :]) if end >= 0 else (body, b"")
    whole, whole_failed = _feed([head], [tail] if tail else [])
    cut, cut_failed = _feed(_cut(head, step), _cut(tail, step))
    assert whole_failed == cut_failed, (whole_failed, cut_failed)
    if not whole_failed:
        assert whole == cut, (whole, cut)
    for event in whole:
        if isinstance(event, AgiRequest):
            assert len(event.env) <= 128
            assert all(key.startswith("agi_") for key in event.env)


def agi_commands(data: bytes) -> None:
    """A command built from any text either is refused (UnsafeValue) or reads back, in
    Asterisk's own parse_args(), as exactly the words it was built from."""
    text = data.decode("utf-8", "surrogateescape")  # bad bytes: lone surrogates
    name, _, value = text.partition("\x1f")
    try:
        command = set_variable(name, value)
    except UnsafeValue:
        return
    line = command.encode()
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and len(line) <= 8191
    words = parse_args(line[:-1])
    assert [w.decode() for w in words] == ["SET", "VARIABLE", name, value], (line, words)
    try:
        verb = Command("VERBOSE", (value, "1"))
    except UnsafeValue:
        return
    assert parse_args(verb.encode()[:-1])[1].decode() == value


# --- numbers --------------------------------------------------------------------------------


def numbers(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    prefix, _, raw = text.partition("\x00") if "\x00" in text else ("", "", text)
    try:
        number = normalise(raw, prefix[:4])
    except InvalidNumber as exc:
        assert "\n" not in str(exc).replace("\\n", "")
        number = None
    if number is not None:
        assert re.fullmatch(r"\+?[0-9]{2,15}", number.e164), number
        if number.e164.startswith("+"):
            again = normalise(number.e164)
            assert again.e164 == number.e164 and again.kind == number.kind, (number, again)
    key = fast_key(raw)
    if key is not None:  # the fast path agrees with the general one
        assert key == normalise(raw).key, raw
    try:
        imported = import_key(raw)
    except InvalidNumber:
        return
    assert imported == listable(raw.replace(" ", "")).key, raw


# --- import files ---------------------------------------------------------------------------


def imports(data: bytes) -> None:
    """One file of any kind (the first byte picks it) through the real reader: the
    header, then the fast path (`chunks`) and the general path (`records`), which must
    find the same rows and reject the same lines."""
    if not data:
        return
    kind = KINDS[data[0] % len(KINDS)]
    try:
        lines = list(decoded(io.BytesIO(data[1:])))
        header = read_header(kind, lines[0] if lines else None)
    except BadImportFile as exc:
        assert "\n" not in str(exc)
        return
    body = lines[1:]
    general = list(records(header, body, PARIS))
    fast = list(chunks(header, body, PARIS, 7))
    rejected = [(n, r.message) for n, r in general if isinstance(r, Rejected)]
    assert [(n, r.message) for c in fast for n, r in c.rejected] == rejected
    rows = [r for _, r in general if not isinstance(r, Rejected)]
    if kind == "dnc" and len(header.columns) == 1:
        # The loader takes the fast path's bare keys and the general path's rows alike.
        keys = [k for c in fast for k in c.keys] + [r.key for c in fast for r in c.rows]
        assert all(isinstance(r, DncRow) and not r.reason for c in fast for r in c.rows)
        assert sorted(keys) == sorted(r.key for r in rows if isinstance(r, DncRow))
    elif kind == "bloctel":
        optout = [r for r in rows if isinstance(r, OptoutRow)]
        listed = sorted(r.key for r in optout if r.listed)
        clear = sorted(r.key for r in optout if not r.listed)
        assert sorted(k for c in fast for k in c.listed) == listed
        assert sorted(k for c in fast for k in c.keys) == clear
    elif kind == "consent":
        # Consents and contracts come out of chunks as the loader's plain tuples.
        assert [r for c in fast for r in c.rows] == [consent_entry(r) for r in rows]
    elif kind == "contract":
        assert [r for c in fast for r in c.rows] == [contract_entry(r) for r in rows]
    else:
        assert [r for c in fast for r in c.rows] == rows
    for _, row in general:
        if isinstance(row, Rejected):
            assert "\n" not in row.message


# --- configuration and policy ---------------------------------------------------------------

_scratch = Path(tempfile.mkdtemp(prefix="dialguard-fuzz-"))


def config(data: bytes) -> None:
    """A dialguard.toml of any bytes (its policy the shipped one, by absolute path)."""
    path = _scratch / "dialguard.toml"
    path.write_bytes(data)
    try:
        load_config(path, env={})
    except ConfigError as exc:
        assert "\n" not in str(exc), str(exc)


def policy(data: bytes) -> None:
    path = _scratch / "policy.toml"
    path.write_bytes(data)
    try:
        load_policy(path)
    except ConfigError as exc:
        assert "\n" not in str(exc), str(exc)


# --- ARI events -----------------------------------------------------------------------------


def ari_events(data: bytes) -> None:
    """What AriClient.read_events and AriApp._on_event do with one websocket message:
    a JSON object or a warning; a StasisStart decoded or refused with the errors the app
    catches (KeyError, TypeError, ValueError). Anything else would end the events loop."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        return
    if not isinstance(event, dict):
        return
    try:
        start = StasisStart.from_json(event)
    except (KeyError, TypeError, ValueError):
        return
    assert isinstance(start.channel, Channel)
    assert all(isinstance(arg, str) for arg in start.args)
    start.channel.stasis_args("dialguard")
    parse_time(str(event.get("timestamp", "")))


TARGETS: dict[str, Target] = {
    "agi_parser": agi_parser,
    "agi_commands": agi_commands,
    "numbers": numbers,
    "imports": imports,
    "config": config,
    "policy": policy,
    "ari_events": ari_events,
}


# --- seeds ----------------------------------------------------------------------------------


def _block(*args: str) -> bytes:
    return b"".join(encode_block(agi_env("127.0.0.1", 4573, script="check", args=args)))


def _shipped_config() -> bytes:
    text = (ROOT / "config" / "dialguard.toml").read_text(encoding="utf-8")
    policy_path = json.dumps(str(ROOT / "config" / "policy" / "france.toml"))
    return text.replace('file = "policy/france.toml"', f"file = {policy_path}").encode()


def _stasis_start() -> bytes:
    created = datetime(2026, 11, 30, 10, 0, tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")
    channel = {
        "id": "1795955366.1",
        "name": "Local/0612345678@outbound-00000001;2",
        "state": "Ring",
        "caller": {"name": "", "number": "0147000000"},
        "accountcode": "",
        "dialplan": {"app_name": "Stasis", "app_data": "dialguard,0612345678,demo"},
        "creationtime": created,
    }
    event = {
        "type": "StasisStart",
        "timestamp": created,
        "args": ["0612345678", "demo"],
        "channel": channel,
        "application": "dialguard",
    }
    return orjson.dumps(event)


def seeds() -> dict[str, list[bytes]]:
    """Valid inputs each target starts from (built here, from the shipped files: no
    corpus is committed)."""
    block = _block("0612345678", "demo-press")
    samples = ROOT / "config" / "sample"
    files = {kind: (samples / f"{kind}.csv").read_bytes() for kind in KINDS}
    return {
        "agi_parser": [
            b"\x00" + block,
            b"\x03" + block + b"200 result=1\n",
            b"\x05" + block + b"HANGUP\n200 result=1\nHANGUP\n",
            b"\x01" + block.replace(b"\n", b"\r\n"),
            b"\x02" + block + b"520-Invalid command syntax.\n usage\n520 End of proper usage.\n",
            b"\x04" + block + b"100 result=0 Trying...\n200 result=1 (timeout) endpos=12\n",
            b"\x06" + _block() + b"510 Invalid or unknown command\n",
        ],
        "agi_commands": [
            b"DIALGUARD_RESULT\x1fALLOW",
            b'DIALGUARD_NUMBER\x1f+33612345678 "quoted" \\ back',
            b"X\x1fa b\tc",
        ],
        "numbers": [
            b"0612345678",
            b"+33 6 12 34 56 78",
            b"0033612345678",
            b"0\x0000612345678",
            b"+262 262 12 34 56",
            b"+44 20 7946 0958",
            b"112",
            b"+33 (0)6 12 34 56 78",
            b"0590 12 34 56",
        ],
        "imports": [bytes([KINDS.index(kind)]) + content for kind, content in files.items()],
        "config": [_shipped_config()],
        "policy": [(ROOT / "config" / "policy" / "france.toml").read_bytes()],
        "ari_events": [_stasis_start(), b'{"type":"StasisEnd","channel":{"id":"1"}}'],
    }
