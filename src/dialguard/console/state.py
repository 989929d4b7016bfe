"""What every handler shares: the configuration, the users and sessions, the store's
reader, Redis, the journal the exports are recorded in, and the page renderer."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import jinja2
from aiohttp import web

from dialguard.audit import Journal
from dialguard.central import CentralStore
from dialguard.config import Config, ConsoleSettings
from dialguard.console import i18n
from dialguard.console.reader import Reader
from dialguard.console.sessions import LoginLimiter, Session, Sessions
from dialguard.console.users import User, Users
from dialguard.store import Store

__all__ = ["CONSOLE", "Console", "console_of", "db", "error_page", "render", "timed", "user_of"]

T = TypeVar("T")
TEMPLATES = Path(__file__).parent / "templates"
# Redis calls of the console: lists status counts whole lists; a page may wait for it,
# a decision never does (the console has its own client).
REDIS_TIMEOUT_MS = 10_000


@dataclass
class Console:
    config: Config
    settings: ConsoleSettings
    reader: Reader
    users: Users
    sessions: Sessions
    limiter: LoginLimiter
    journal: Journal
    mask_key: bytes | None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    _redis: Store | None = None
    templates: jinja2.Environment = field(init=False)

    def __post_init__(self) -> None:
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.templates.filters["num"] = i18n.number
        self.templates.filters["pct"] = i18n.percent

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.config.policy.default_timezone)

    @property
    def zone_label(self) -> str:
        return self.zone.key

    def redis(self) -> Store:
        """The console's Redis client, made at its first use (inside the event loop)."""
        if self._redis is None:
            self._redis = Store.from_settings(self.config.redis, REDIS_TIMEOUT_MS)
        return self._redis

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.close()
            self._redis = None
        self.reader.close()


CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)


def console_of(request: web.Request) -> Console:
    return request.app[CONSOLE]


@dataclass
class Visit:
    """What the middlewares learn of a request for its handler: who is in, and where
    the time went (Server-Timing)."""

    session: Session | None = None
    user: User | None = None
    timings: dict[str, float] = field(default_factory=dict)
    login_name: str = ""


# Each request is handled in a task of its own, middlewares and handler alike: a context
# variable is the request's own (and needs nothing of aiohttp's request storage).
_VISIT: ContextVar[Visit] = ContextVar("dialguard_console_visit")


def begin_visit() -> Visit:
    visit = Visit()
    _VISIT.set(visit)
    return visit


def visit_of(_request: web.Request) -> Visit:
    return _VISIT.get()


def user_of(request: web.Request) -> User:
    user = visit_of(request).user
    assert user is not None  # the authentication middleware let the request in
    return user


def session_of(request: web.Request) -> Session | None:
    return visit_of(request).session


async def db(request: web.Request, query: Callable[[CentralStore], T]) -> T:
    """Run a store query for this request; its time counts in Server-Timing's `db`."""
    result, elapsed = await console_of(request).reader.run(query)
    timings = visit_of(request).timings
    timings["db"] = timings.get("db", 0.0) + elapsed
    return result


async def timed(request: web.Request, name: str, call: Awaitable[T]) -> T:
    """Await `call`, its time counted in Server-Timing as `name` (Redis)."""
    started = time.perf_counter()
    try:
        return await call
    finally:
        timings = visit_of(request).timings
        timings[name] = timings.get(name, 0.0) + (time.perf_counter() - started) * 1000


def render(request: web.Request, template: str, status: int = 200, **values: Any) -> web.Response:
    """A page, with what every page needs (the language, the user, the CSRF token)."""
    console = console_of(request)
    lang = i18n.language_of(request)
    session = session_of(request)
    context = {
        "lang": lang,
        "_": i18n.translator(lang),
        "user": visit_of(request).user,
        "csrf": session.csrf if session is not None else "",
        "here": request.path_qs,
        "page": "",
        "error": "",
        "title": "",
        "zone_label": console.zone_label,
        "paris": console.zone_label == "Europe/Paris",
        **values,
    }
    body = console.templates.get_template(template).render(context)
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def error_page(request: web.Request, status: int, heading: str, message: str) -> web.Response:
    """A page of one line saying what went wrong (`heading` in English: translated)."""
    translate = i18n.translator(i18n.language_of(request))
    return render(
        request,
        "error.html",
        status,
        heading=translate(heading),
        message=message,
        title=translate(heading),
    )
