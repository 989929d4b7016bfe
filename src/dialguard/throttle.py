"""At most one log line per interval for an error every call would repeat.

A full or broken audit disk fails every call: at 1,000 calls/s one line each would be
1,000 lines/s, written to a disk that may be the full one, hiding everything else. The
first failure logs at once; later ones within the interval are counted and the count is
given with the next line. The metrics count each failure (dialguard_journal_errors_total).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["Throttle"]


class Throttle:
    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self._suppressed = 0

    def due(self) -> int | None:
        """None: stay quiet (counted). Otherwise log now, giving this many suppressed since
        the last line."""
        now = self._clock()
        if self._last is not None and now - self._last < self.interval_s:
            self._suppressed += 1
            return None
        self._last = now
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed
