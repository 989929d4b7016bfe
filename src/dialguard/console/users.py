"""The console's users: a JSON file of names, roles and argon2id hashes.

`dialguard console user add|list|remove` edit it; the console reads it again whenever it
changes, so a user added, removed or given a new password counts at the next request
(a removed user's sessions end there too). The file is written whole, to a temporary
file renamed over it (never half-written), mode 0600: the hashes are slow to attack, not
public.

Two roles. `viewer`: the figures, searches and histories, numbers masked in lists and
shown whole one decision at a time. `compliance`: also exports, and whole numbers in
lists.
"""

from __future__ import annotations

import contextlib
import enum
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = [
    "MAX_PASSWORD",
    "MIN_PASSWORD",
    "BadUsers",
    "Role",
    "User",
    "Users",
    "add_user",
    "check_name",
    "check_password",
    "read_users",
    "remove_user",
]

# NIST SP 800-63B asks for at least 8 characters and no composition rules; 10 is a small
# margin. The ceiling keeps one login from costing more than hashing a page of text.
MIN_PASSWORD = 10
MAX_PASSWORD = 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")

# argon2id with the library's defaults (RFC 9106's second recommended option: 64 MiB,
# 3 passes, 4 lanes): ~50 ms a login here, and as much per guess for anyone who steals the
# file.
_HASHER = PasswordHasher()
# Verified when the name is unknown, so that a wrong name costs what a wrong password
# does (no telling which names exist from the time a login takes).
_DECOY = _HASHER.hash("not any user's password")


class BadUsers(Exception):
    """The users file or a user's name, role or password is not usable; one line."""


class Role(enum.StrEnum):
    VIEWER = "viewer"
    COMPLIANCE = "compliance"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    hash: str
    created: str

    @property
    def may_export(self) -> bool:
        return self.role is Role.COMPLIANCE


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise BadUsers(f"{name!r}: a user name is 1-64 letters, digits, '_', '.', '@', '-'")
    return name


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise BadUsers(f"the password is too short: at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise BadUsers(f"the password is too long: at most {MAX_PASSWORD} characters")
    return password


def read_users(path: Path) -> dict[str, User]:
    """The users in the file (none when it does not exist yet)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BadUsers(f"{path}: cannot read the console's users: {exc.strerror}") from None
    try:
        data = orjson.loads(raw)
        return {
            name: User(check_name(name), Role(item["role"]), str(item["hash"]), item["created"])
            for name, item in data["users"].items()
        }
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        raise BadUsers(
            f"{path}: not a console users file (edit it with `dialguard console user`)"
        ) from None


def _write(path: Path, users: dict[str, User]) -> None:
    data = {
        "users": {
            user.name: {"role": user.role.value, "hash": user.hash, "created": user.created}
            for user in sorted(users.values(), key=lambda u: u.name)
        }
    }
    body = orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor, temporary = tempfile.mkstemp(prefix=".users-", dir=path.parent)
        try:
            with os.fdopen(descriptor, "wb") as handle:  # mkstemp made it 0600
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
    except OSError as exc:
        raise BadUsers(f"{path}: cannot write the console's users: {exc.strerror}") from None


def add_user(path: Path, name: str, role: Role, password: str, *, replace: bool) -> User:
    """Add the user, or with `replace` give an existing one this role and password."""
    users = read_users(path)
    check_name(name)
    if name in users and not replace:
        raise BadUsers(f"{name}: already a user (--replace gives a new password and role)")
    user = User(
        name,
        role,
        _HASHER.hash(check_password(password)),
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
    users[name] = user
    _write(path, users)
    return user


def remove_user(path: Path, name: str) -> None:
    users = read_users(path)
    if name not in users:
        raise BadUsers(f"{name}: no such user in {path}")
    del users[name]
    _write(path, users)


class Users:
    """The file as the console sees it: read again when it changes (a stat a request)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._users: dict[str, User] = {}

    def current(self) -> dict[str, User]:
        try:
            info = self.path.stat()
            seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            seen = None
        except OSError as exc:
            raise BadUsers(
                f"{self.path}: cannot read the console's users: {exc.strerror}"
            ) from None
        if seen != self._seen:
            self._users = read_users(self.path) if seen is not None else {}
            self._seen = seen
        return self._users

    def get(self, name: str) -> User | None:
        return self.current().get(name)

    def verify(self, name: str, password: str) -> User | None:
        """The user when the password is theirs. Slow on purpose (argon2): run it off the
        event loop."""
        user = self.current().get(name)
        if len(password) > MAX_PASSWORD:
            return None
        try:
            _HASHER.verify(user.hash if user is not None else _DECOY, password)
        except (VerificationError, InvalidHashError):
            return None
        return user
