"""Numbers gathered per bucket, and the write commands that carry them (pure: no I/O).

A number splits into a bucket (every digit but the last BUCKET_DIGITS) and an offset
0-9999; docs/data-model.md gives the figures behind each constant.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from dialguard.store.resp import bulk

__all__ = ["BUCKET_BYTES", "BUCKET_DIGITS", "INTSET_LIMIT", "MAX_GATHERED", "Buckets"]

# A bucket holds the numbers sharing every digit but the last BUCKET_DIGITS.
BUCKET_DIGITS = 4
# An intset of n members costs 2n + 8 bytes, a bucket bitmap 1,250: past ~620 members the
# bitmap is smaller. Redis turns an intset of more than `set-max-intset-entries` (512 by
# default) into a hashtable of ~50 bytes per member, so buckets convert before that.
INTSET_LIMIT = 500

_BUCKET_SPAN = 10**BUCKET_DIGITS
BUCKET_BYTES = _BUCKET_SPAN // 8
_EMPTY_BUCKET = bytes(BUCKET_BYTES)
# Buckets gathered before they are written out: 1.25 KB each, so at most ~80 MB whatever
# the file's size. The French mobile range is 20,000 buckets, so a list of mobiles, or a
# registry result set (listed and clear: 40,000), goes out once, at the end. Writing
# earlier costs more: each write then touches many buckets for a few numbers each.
MAX_GATHERED = 65_536
# Work per write, in numbers added to intsets (~0.1 µs each in Redis): a write holds
# Redis about a millisecond, so lookups keep going between writes. A bucket costs
# _BUCKET_WEIGHT more (four commands), a bitmap _BITMAP_WEIGHT (a SET, two BITCOUNTs).
_WRITE_WEIGHT = 5_000
_BUCKET_WEIGHT = 20
_BITMAP_WEIGHT = 40


class Buckets:
    """Numbers gathered per bucket as bitmaps (in Redis's bit order), then written in the
    fewest commands: a dense bucket whole, a sparse one as its offsets.

    One flat bytearray, a slot per bucket: at ten million numbers the gathering is bound
    by memory accesses, and this layout and integer bucket ids measured 25 % faster than a
    dict of one bytearray per bucket name."""

    def __init__(self) -> None:
        self._slots: dict[int, int] = {}  # bucket (the key without its last digits) -> bit
        self._bits = bytearray()
        self.repeated = 0  # numbers met twice

    def __len__(self) -> int:
        return len(self._slots)

    def add(self, keys: Iterable[str]) -> None:
        slots, bits = self._slots, self._bits
        get = slots.get
        repeated = 0
        for key in keys:
            bucket, offset = divmod(int(key), _BUCKET_SPAN)
            start = get(bucket)
            if start is None:
                start = slots[bucket] = len(bits) * 8
                bits.extend(_EMPTY_BUCKET)
            position = start + offset
            byte, bit = position >> 3, 0x80 >> (position & 7)  # SETBIT 0 is the high bit
            if bits[byte] & bit:
                repeated += 1
            else:
                bits[byte] |= bit
        self.repeated += repeated

    def writes(self, limit: int) -> Iterator[tuple[int, bytes]]:
        """The write script's arguments after the base key and limit, ~_WRITE_WEIGHT per
        write, already in Redis's wire format: (how many, the bytes). Encoding ten million
        offsets one by one through redis-py cost more than parsing the file; here each is
        a table lookup. Empties self."""
        parts: list[bytes] = []
        count = weight = 0
        bits = self._bits
        for bucket, start in self._slots.items():
            bitmap = bits[start >> 3 : (start >> 3) + BUCKET_BYTES]
            value = int.from_bytes(bitmap, "big")
            name = bulk(str(bucket).encode())
            if value.bit_count() > limit:
                parts += (name, _FORM_BITMAP, bulk(bytes(bitmap)))
                count += 3
                weight += _BITMAP_WEIGHT
            else:
                # The bits as text, high bit first: character i is offset i.
                text = format(value, f"0{_BUCKET_SPAN}b")
                offsets: list[bytes] = []
                at = text.find("1")
                while at >= 0:
                    offsets.append(_OFFSETS[at])
                    at = text.find("1", at + 1)
                parts += (name, _FORM_SET, bulk(str(len(offsets)).encode()), *offsets)
                count += 3 + len(offsets)
                weight += len(offsets) + _BUCKET_WEIGHT
            if weight >= _WRITE_WEIGHT:
                yield count, b"".join(parts)
                parts, count, weight = [], 0, 0
        if parts:
            yield count, b"".join(parts)
        self._slots, self._bits = {}, bytearray()


_OFFSETS = [bulk(str(offset).encode()) for offset in range(_BUCKET_SPAN)]
_FORM_BITMAP = bulk(b"B")
_FORM_SET = bulk(b"S")
