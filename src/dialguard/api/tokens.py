"""Bearer tokens of the HTTP API: the file of their hashes and scopes, and the check of a
presented token.

A token is 32 random bytes (`dg_` and 43 base64url characters), shown once when it is made
and never kept: the file holds its SHA-256. A fast hash is enough here, and the right one:
passwords are hashed slowly (argon2, bcrypt) because people choose guessable ones, and a
slow hash makes each guess expensive; nobody can guess 256 random bits however fast the
hash, while argon2's ~50 ms and tens of MiB per check would be paid by every request
(1,000 decisions a second). A stolen file reveals no token.

The file (JSON, written aside and renamed over, so a reader never sees half of it):

    {"format": 1, "tokens": [{"name": "crm", "sha256": "<64 hex>",
      "scopes": ["decide", "write-lists"], "created_at": "2026-12-01T09:00:00+00:00",
      "created_by": "alice"}]}

The service reads it at start and looks at it again at most once a second (its size,
time and inode): a token added or removed is in force within a second, without a reload.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import structlog

__all__ = [
    "SCOPES",
    "BadTokens",
    "Token",
    "TokenFile",
    "add_token",
    "digest_of",
    "new_secret",
    "read_tokens",
    "remove_token",
]

log = structlog.get_logger("dialguard.api")

# What a token may do: decide calls; change the lists (outcomes, do-not-call, consents,
# contracts); read a number's history from the journal.
SCOPES = ("decide", "write-lists", "read-audit")
FORMAT = 1
TOKEN_PREFIX = "dg_"  # so that secret scanners (and people) recognise one
# What an Authorization header may carry: a token of ours is 46 characters; anything
# longer or of other characters is refused before it is hashed.
_PRESENTED = re.compile(r"[A-Za-z0-9_-]{1,128}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
# How often the service looks whether the file changed.
RECHECK_S = 1.0


class BadTokens(Exception):
    """The tokens file cannot be read or used: one line naming it."""


@dataclass(frozen=True, slots=True)
class Token:
    name: str  # who, in the audit records of what it changes
    digest: bytes = field(repr=False)  # SHA-256 of the secret
    scopes: frozenset[str]
    created_at: str = ""
    created_by: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.digest.hex(),
            "scopes": sorted(self.scopes),
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


def new_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest_of(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii", "replace")).digest()


def is_valid_name(name: str) -> bool:
    return bool(_NAME.fullmatch(name))


def find(tokens: Iterable[Token], presented: str) -> Token | None:
    """The token whose secret is `presented`. Every entry is compared, each in constant
    time, so how long a refusal takes says nothing about the tokens on file."""
    if not _PRESENTED.fullmatch(presented):
        return None
    digest = digest_of(presented)
    found = None
    for token in tokens:
        if hmac.compare_digest(token.digest, digest):
            found = token
    return found


def read_tokens(path: Path) -> tuple[Token, ...]:
    """The tokens on file; none when there is no file yet. BadTokens otherwise."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise BadTokens(f"{path}: cannot read: {exc.strerror}") from None
    return _parse(path, raw)


def _parse(path: Path, raw: bytes) -> tuple[Token, ...]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadTokens(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BadTokens(f"{path}: not a dialguard tokens file (format {FORMAT})")
    entries = data.get("tokens")
    if not isinstance(entries, list):
        raise BadTokens(f"{path}: tokens: must be a list")
    tokens: list[Token] = []
    for index, entry in enumerate(entries):
        where = f"{path}: tokens[{index}]"
        if not isinstance(entry, dict):
            raise BadTokens(f"{where}: must be an object")
        name, digest, scopes = entry.get("name"), entry.get("sha256"), entry.get("scopes")
        if not isinstance(name, str) or not is_valid_name(name):
            raise BadTokens(f"{where}: name must be 1-64 letters, digits, '_', '.', '-'")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise BadTokens(f"{where}: sha256 must be 64 lowercase hex digits")
        if not isinstance(scopes, list) or not scopes or not set(scopes) <= set(SCOPES):
            raise BadTokens(f"{where}: scopes must be a list of {', '.join(SCOPES)}")
        if any(t.name == name for t in tokens):
            raise BadTokens(f"{where}: a second token named {name!r}")
        tokens.append(
            Token(
                name,
                bytes.fromhex(digest),
                frozenset(scopes),
                str(entry.get("created_at", "")),
                str(entry.get("created_by", "")),
            )
        )
    return tuple(tokens)


def _write(path: Path, tokens: Iterable[Token]) -> None:
    """Write the file aside and rename it over: a reader sees the old file or the new one.
    An existing file keeps its mode (and, for root, its owner): the service's user must
    still read it."""
    body = orjson.dumps(
        {"format": FORMAT, "tokens": [t.as_json() for t in tokens]}, option=orjson.OPT_INDENT_2
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = path.stat()
    except FileNotFoundError:
        old = None
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, old.st_mode & 0o777 if old else 0o640)
        if old is not None and os.geteuid() == 0:
            os.chown(temporary, old.st_uid, old.st_gid)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Any:
    """One `dialguard api token` change at a time (read, change, write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def add_token(path: Path, name: str, scopes: Iterable[str], created_by: str) -> str:
    """Put a new token on file; return its secret (shown once, never kept)."""
    chosen = frozenset(scopes)
    if not is_valid_name(name):
        raise BadTokens(f"token name {name!r}: 1-64 letters, digits, '_', '.', '-'")
    if not chosen or not chosen <= set(SCOPES):
        raise BadTokens(f"scopes: give one or more of {', '.join(SCOPES)}")
    secret = new_secret()
    with _locked(path):
        tokens = read_tokens(path)
        if any(t.name == name for t in tokens):
            raise BadTokens(f"a token named {name!r} exists; remove it first, or choose a name")
        created = datetime.now(UTC).isoformat(timespec="seconds")
        _write(path, (*tokens, Token(name, digest_of(secret), chosen, created, created_by)))
    return secret


def remove_token(path: Path, name: str) -> None:
    with _locked(path):
        tokens = read_tokens(path)
        kept = tuple(t for t in tokens if t.name != name)
        if len(kept) == len(tokens):
            known = ", ".join(t.name for t in tokens) or "none"
            raise BadTokens(f"no token named {name!r} in {path} (on file: {known})")
        _write(path, kept)


class TokenFile:
    """The tokens the service checks requests against, following the file as it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._tokens: tuple[Token, ...] = ()
        self._seen: tuple[int, int, int] | None = None
        self._checked = float("-inf")

    def load(self) -> tuple[Token, ...]:
        """Read the file now: at start (BadTokens stops the service) and at a reload."""
        self._seen = self._identity()
        self._tokens = read_tokens(self.path)
        self._checked = time.monotonic()
        return self._tokens

    def moved(self, path: Path) -> None:
        """A reload named another file: read it at the next request."""
        if path != self.path:
            self.path = path
            self._seen = None
            self._checked = float("-inf")

    @property
    def tokens(self) -> tuple[Token, ...]:
        """The tokens in force: the file as it was at most RECHECK_S ago. A file that no
        longer reads keeps the tokens read last (logged): the CLI never writes one so."""
        now = time.monotonic()
        if now - self._checked >= RECHECK_S:
            self._checked = now
            identity = self._identity()
            if identity != self._seen:
                try:
                    self._tokens = read_tokens(self.path)
                except BadTokens as exc:
                    log.error("api_tokens_unreadable", error=str(exc), kept=len(self._tokens))
                else:
                    log.info("api_tokens_read", tokens=len(self._tokens))
                self._seen = identity
        return self._tokens

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return (stat.st_ino, stat.st_size, stat.st_mtime_ns)
