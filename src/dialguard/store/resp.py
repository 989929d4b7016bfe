"""Commands in Redis's wire format (RESP), built as bytes: pure, no I/O."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["bulk", "command", "evalsha"]


def bulk(value: bytes) -> bytes:
    """One argument in Redis's wire format (RESP bulk string)."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def evalsha(sha: str, head: Sequence[bytes], count: int, encoded: bytes, keys: int = 0) -> bytes:
    """EVALSHA: the `head` arguments, then `count` arguments already encoded; the first
    `keys` of them all are the script's keys (none by default)."""
    return b"*%d\r\n%s%s%s%s%s" % (
        count + len(head) + 3,
        bulk(b"EVALSHA"),
        bulk(sha.encode()),
        bulk(b"%d" % keys),
        b"".join(bulk(argument) for argument in head),
        encoded,
    )


def command(*arguments: bytes) -> bytes:
    """A command and its arguments in Redis's wire format."""
    return b"*%d\r\n%s" % (len(arguments), b"".join(bulk(argument) for argument in arguments))
