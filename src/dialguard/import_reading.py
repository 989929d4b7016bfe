"""An import file's lines as text, read line by line or a block of lines at a time;
a line too long to be valid cut, never held whole; a file that is not UTF-8 refused."""

from __future__ import annotations

import codecs
import io
import os
from collections.abc import Callable, Iterator
from typing import IO

from dialguard import import_files

__all__ = ["BLOCK_BYTES", "READ_BYTES", "blocks", "cut", "decoded"]

# A line of MAX_LINE_CHARS characters (4 bytes each at most) and its line break fits in one
# read of this many bytes; a read that fills it without a line break holds more than
# MAX_LINE_CHARS characters, even cut in the middle of one.
READ_BYTES = 4 * import_files.MAX_LINE_CHARS + 8


def decoded(handle: IO[bytes]) -> Iterator[str]:
    """The file's lines as text. A line too long to be valid comes as its first
    READ_BYTES bytes, enough to be rejected as too long: a file of one 50 MB line must
    not be held whole to find that out."""
    readline = handle.readline  # ten million calls: the lookup once
    try:
        while raw := readline(READ_BYTES):
            if raw[-1] == 10 or len(raw) < READ_BYTES:  # 10: b"\n"
                yield raw.decode("utf-8")
                continue
            yield cut(raw, readline)
    except UnicodeDecodeError:
        raise import_files.BadImportFile("not UTF-8 text (export the file as UTF-8)") from None


def cut(raw: bytes, readline: Callable[[int], bytes]) -> str:
    """A line too long to be valid, from its first READ_BYTES bytes (`raw`): those,
    decoded; the rest of it read in bounded pieces and dropped, still checked (a file that
    is not UTF-8 is refused whole, wherever the bad byte is)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = decoder.decode(raw)  # a character cut at the end waits for the rest
    while (rest := readline(READ_BYTES)) and rest[-1] != 10:
        decoder.decode(rest)
    decoder.decode(rest, final=True)
    return line


# Consents and contracts are read this many bytes at a time, decoded whole, cut at the
# last line break (~4,000 lines of a consent file).
BLOCK_BYTES = 1 << 18


def blocks(handle: IO[bytes], stop: int = -1) -> Iterator[tuple[str, None]]:
    """The file's lines as `decoded` gives them, a block of whole lines at a time
    (import_files.blocks): ten million lines decoded one by one cost seconds. A line
    without a line break in READ_BYTES bytes comes as its own block, cut as `decoded`
    cuts it. `stop`: where to stop (a line's start), if not at the end of the file."""
    rest = b""

    def read(size: int) -> bytes:
        return handle.read(size if stop < 0 else min(size, stop - handle.tell()))

    try:
        while data := read(BLOCK_BYTES):
            data = rest + data if rest else data
            end = data.rfind(b"\n") + 1
            if end == 0 and len(data) < READ_BYTES:
                rest = data
                continue
            if end == 0:  # the start of a line too long to be valid
                handle.seek(-len(data), os.SEEK_CUR)
                yield cut(handle.readline(READ_BYTES), handle.readline), None
                rest = b""
                continue
            rest = data[end:]
            yield data[:end].decode("utf-8"), None
    except UnicodeDecodeError:
        raise import_files.BadImportFile("not UTF-8 text (export the file as UTF-8)") from None
    if rest:
        yield from ((line, None) for line in decoded(io.BytesIO(rest)))
