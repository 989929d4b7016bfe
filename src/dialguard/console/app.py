"""The console's web application: its routes, the login, and what every response gets.

Every page needs a session but the login page and the static files. The static files
(the style sheet, the page script, the vendored chart library) hold nothing that is not
in the public source tree, so they are served to anyone: the login page needs its style
sheet before anyone is logged in.

Each form is a POST with the session's CSRF token; a POST without it is refused (403)
before its handler runs. Each response says, beside its content: no caching (pages hold
personal data), no referrer (URLs hold numbers), no framing, no script or style from
anywhere but the console itself (a Content-Security-Policy without 'unsafe-inline'), and
Server-Timing (`db`: the central store, `redis`, `total`), which the browser test reads.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from urllib.parse import urlencode

import structlog
from aiohttp import web

from dialguard.audit import Journal
from dialguard.central import CentralUnavailable
from dialguard.config import Config, central_settings, console_settings
from dialguard.console import exports, i18n, pages
from dialguard.console.reader import Reader
from dialguard.console.sessions import LoginLimiter, Sessions, hash_digest, same_token, token
from dialguard.console.state import (
    CONSOLE,
    Console,
    begin_visit,
    console_of,
    error_page,
    render,
    session_of,
    visit_of,
)
from dialguard.console.users import BadUsers, Users
from dialguard.store import StoreUnavailable

__all__ = ["SESSION_COOKIE", "make_app", "make_console"]

log = structlog.get_logger("dialguard.console")

SESSION_COOKIE = "dialguard_session"
LOGIN_COOKIE = "dialguard_login"  # the login form's CSRF token, before any session
STATIC = Path(__file__).parent / "static"
# Where a GET may go without a session; a POST, only /login.
_PUBLIC = ("/login", "/static/", "/lang/")
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_FORM_MAX = 64 * 1024  # a login or an export form: a few hundred bytes

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_console(config: Config, clock: Callable[[], datetime] | None = None) -> Console:
    settings = console_settings(config)
    console = Console(
        config=config,
        settings=settings,
        reader=Reader(central_settings(config)),
        users=Users(settings.users_file),
        sessions=Sessions(settings.session_hours * 3600.0, settings.idle_minutes * 60.0),
        limiter=LoginLimiter(),
        journal=Journal(config.audit_dir),
        mask_key=exports.mask_key(settings.mask_key_file, os.environ),
    )
    if clock is not None:
        console.clock = clock  # time is an input: tests give theirs
    return console


def make_app(console: Console) -> web.Application:
    app = web.Application(
        middlewares=[_headers, _errors, _authenticated, _csrf], client_max_size=_FORM_MAX
    )
    app[CONSOLE] = console
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/lang/{code}", language)
    pages.add_routes(app.router)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)

    async def closing(app: web.Application) -> None:
        await app[CONSOLE].close()

    app.on_cleanup.append(closing)
    return app


# --- what every response gets ---------------------------------------------------------


@web.middleware
async def _headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    begin_visit()
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # a redirect, a refusal: the same headers
        _secure(request, exc, started)
        raise
    _secure(request, response, started)
    return response


def _secure(request: web.Request, response: web.StreamResponse, started: float) -> None:
    total = (time.perf_counter() - started) * 1000
    headers = response.headers
    headers.setdefault("Content-Security-Policy", _CSP)
    headers["X-Content-Type-Options"] = "nosniff"
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"
    if not request.path.startswith("/static/"):
        headers["Cache-Control"] = "no-store"
    timings = [f"{name};dur={spent:.1f}" for name, spent in visit_of(request).timings.items()]
    headers["Server-Timing"] = ", ".join([*timings, f"total;dur={total:.1f}"])


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Expected failures as a page of one line; anything else logged, never a traceback
    in the browser."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except (CentralUnavailable, StoreUnavailable, BadUsers) as exc:
        return error_page(request, 503, "Unavailable", str(exc))
    except Exception as exc:
        log.exception("console_error", path=request.path, error=f"{type(exc).__name__}: {exc}")
        translate = i18n.translator(i18n.language_of(request))
        return error_page(
            request, 500, "Internal error", translate("An unexpected error; it is logged.")
        )


@web.middleware
async def _authenticated(request: web.Request, handler: Handler) -> web.StreamResponse:
    console = console_of(request)
    public = request.path.startswith(_PUBLIC)
    session = console.sessions.get(request.cookies.get(SESSION_COOKIE))
    user = console.users.get(session.user) if session is not None else None
    if session is not None and (user is None or hash_digest(user.hash) != session.hash_digest):
        # Removed, or given a new password, since this session began: it ends now.
        console.sessions.close(session.id)
        session = user = None
    if session is not None and user is not None:
        visit = visit_of(request)
        visit.session, visit.user = session, user
    elif not public:
        if request.method in ("GET", "HEAD"):
            raise web.HTTPSeeOther("/login?" + urlencode({"next": request.path_qs}))
        raise web.HTTPForbidden(text="log in first\n")
    return await handler(request)


@web.middleware
async def _csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method == "POST" and request.path != "/login":
        session = session_of(request)
        form = await request.post()
        given = form.get("csrf")
        if session is None or not isinstance(given, str) or not same_token(given, session.csrf):
            return _csrf_refused(request)
    return await handler(request)


def _csrf_refused(request: web.Request) -> web.Response:
    log.warning("console_csrf_refused", path=request.path, address=request.remote)
    translate = i18n.translator(i18n.language_of(request))
    message = translate(
        "This form has expired or did not come from the console (CSRF check): reload the page"
        " and send it again."
    )
    return error_page(request, 403, "Forbidden", message)


def local_path(value: str | None) -> str:
    """Where to go after a login or a language switch: a path of the console, never
    another site (`//host`, `/\\host` and schemes are refused)."""
    if (
        not value
        or not value.startswith("/")
        or value.startswith(("//", "/\\"))
        or len(value) > 2000
        or not value.isprintable()
    ):
        return "/"
    return value


def _cookie(
    response: web.StreamResponse, console: Console, name: str, value: str, path: str = "/"
) -> None:
    response.set_cookie(
        name,
        value,
        path=path,
        httponly=True,
        samesite="Strict",
        secure=console.settings.secure_cookies,
    )


# --- login, logout, language ----------------------------------------------------------


async def login_page(request: web.Request, error: str = "", status: int = 200) -> web.Response:
    console = console_of(request)
    if session_of(request) is not None and not error:
        raise web.HTTPSeeOther(local_path(request.query.get("next")))
    login_csrf = request.cookies.get(LOGIN_COOKIE, "")
    if len(login_csrf) != 43:
        login_csrf = token()
    translate = i18n.translator(i18n.language_of(request))
    response = render(
        request,
        "login.html",
        status,
        title=translate("Log in"),
        error=error,
        login_csrf=login_csrf,
        next=local_path(request.query.get("next")),
        name=visit_of(request).login_name,
        no_users=not console.users.current(),
    )
    _cookie(response, console, LOGIN_COOKIE, login_csrf, path="/login")
    return response


async def login(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    form = await request.post()
    name, password = str(form.get("user", ""))[:64], str(form.get("password", ""))
    given = form.get("csrf")
    if not isinstance(given, str) or not same_token(given, request.cookies.get(LOGIN_COOKIE, "")):
        return _csrf_refused(request)
    address = request.remote or ""
    translate = i18n.translator(i18n.language_of(request))
    visit_of(request).login_name = name
    wait = console.limiter.wait(address, name)
    if wait > 0:
        log.warning("console_login_limited", user=name, address=address, wait_s=round(wait))
        minutes = max(1, round(wait / 60))
        told = translate("Too many failed logins: try again in")
        response = await login_page(request, f"{told} {minutes} {translate('minutes')}.", 429)
        response.headers["Retry-After"] = str(round(wait))
        return response
    # argon2 takes tens of milliseconds of CPU: off the event loop.
    user = await asyncio.get_running_loop().run_in_executor(
        None, console.users.verify, name, password
    )
    if user is None:
        console.limiter.failed(address, name)
        log.warning("console_login_failed", user=name, address=address)
        return await login_page(request, translate("Wrong user name or password."), 401)
    console.limiter.succeeded(name)
    session = console.sessions.open(user.name, user.role, user.hash, address)
    log.info("console_login", user=user.name, role=user.role.value, address=address)
    response = web.HTTPSeeOther(local_path(str(form.get("next", "/"))))
    _cookie(response, console, SESSION_COOKIE, session.id)
    response.del_cookie(LOGIN_COOKIE, path="/login")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    console = console_of(request)
    session = session_of(request)
    if session is not None:
        console.sessions.close(session.id)
        log.info("console_logout", user=session.user, address=request.remote)
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def language(request: web.Request) -> web.StreamResponse:
    code = request.match_info["code"]
    response = web.HTTPSeeOther(local_path(request.query.get("next")))
    if code in i18n.LANGUAGES:
        response.set_cookie(
            i18n.COOKIE,
            code,
            path="/",
            max_age=365 * 86400,
            samesite="Strict",
            secure=console_of(request).settings.secure_cookies,
        )
    raise response
