"""Sessions, CSRF tokens and the login rate limit: the console's memory of who is in.

Sessions are kept on the server, in this process: the cookie holds a random 256-bit id
and nothing else, so there is no signing key to keep, and a logout, a removed user or a
changed password ends a session at once (the session keeps a digest of the hash it was
opened with). A restart of the console asks everyone to log in again; one console
process serves a site, so nothing needs sharing.

Each session has its own CSRF token, sent back with every form (POST): a page of another
site cannot read it, so it cannot post in the user's name (SameSite=Strict cookies are a
second lock on the same door). The login form, before any session, is guarded the same
way by a token in a cookie of its own (double submit).

The login rate limit counts failures per address and per user name over a window: past
either limit, the login is refused before the password is checked (argon2 is slow: a
flood of guesses must not become a flood of hashing). A success clears the name's count.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dialguard.console.users import Role

__all__ = ["LoginLimiter", "Session", "Sessions", "same_token", "token"]


def token() -> str:
    """A random 256-bit token, URL-safe."""
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def hash_digest(password_hash: str) -> str:
    return hashlib.sha256(password_hash.encode()).hexdigest()[:16]


@dataclass(slots=True)
class Session:
    id: str
    user: str
    role: Role
    hash_digest: str  # of the password hash at login: a new password ends the session
    csrf: str
    opened: float
    seen: float
    address: str = ""


@dataclass
class Sessions:
    lifetime_s: float
    idle_s: float
    clock: Callable[[], float] = time.monotonic
    _open: dict[str, Session] = field(default_factory=dict)

    def open(self, user: str, role: Role, password_hash: str, address: str) -> Session:
        self._expire()
        now = self.clock()
        digest = hash_digest(password_hash)
        session = Session(token(), user, role, digest, token(), now, now, address)
        self._open[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of this id (its idle time starts again), or None."""
        if not session_id:
            return None
        session = self._open.get(session_id)
        if session is None:
            return None
        now = self.clock()
        if now - session.opened > self.lifetime_s or now - session.seen > self.idle_s:
            del self._open[session_id]
            return None
        session.seen = now
        return session

    def close(self, session_id: str) -> None:
        self._open.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._open)

    def _expire(self) -> None:
        now = self.clock()
        for key, session in list(self._open.items()):
            if now - session.opened > self.lifetime_s or now - session.seen > self.idle_s:
                del self._open[key]


# Failures allowed within the window before logins are refused: five guesses of one
# user's password, more from one address (an office behind one NAT has many users).
PER_USER = 5
PER_ADDRESS = 20
WINDOW_S = 15 * 60
# Keys remembered at most (the oldest forgotten first): memory stays bounded whatever an
# attacker sends.
_KEYS = 10_000


class LoginLimiter:
    def __init__(
        self,
        per_user: int = PER_USER,
        per_address: int = PER_ADDRESS,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = {"user": per_user, "address": per_address}
        self.window_s = window_s
        self.clock = clock
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()

    def wait(self, address: str, user: str) -> float:
        """Seconds until a login from `address` as `user` is tried again; 0 now."""
        now = self.clock()
        longest = 0.0
        for key in (("address", address), ("user", user.lower())):
            failures = self._recent(key, now) if key in self._failures else deque()
            if len(failures) >= self.limits[key[0]]:
                longest = max(longest, failures[0] + self.window_s - now)
        return longest

    def failed(self, address: str, user: str) -> None:
        now = self.clock()
        for key in (("address", address), ("user", user.lower())):
            self._recent(key, now).append(now)
            self._failures.move_to_end(key)
        while len(self._failures) > _KEYS:
            self._failures.popitem(last=False)

    def succeeded(self, user: str) -> None:
        self._failures.pop(("user", user.lower()), None)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - self.window_s:
            failures.popleft()
        return failures
