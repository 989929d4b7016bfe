"""The HTTP API's server: aiohttp on `[api] host:port`, run by `serve` in every worker
(SO_REUSEPORT on one port, as the FastAGI listener), beside FastAGI and ARI.

Every request, in this order: its bearer token (401), the endpoint (404, 405), the
token's scope for it (403), its body within `[api] max_body_bytes` (413) and as a JSON
object (400), its Idempotency-Key (dialguard.api.idempotency), then the endpoint itself
(dialguard.api.routes). Every error is JSON with a stable code (dialguard.api.errors); a
bug is logged and answered 500 `internal`, never a traceback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from dialguard.api.errors import ApiError, error_response, json_response
from dialguard.api.idempotency import HEADER, REPLAYED, Reply, fingerprint, once
from dialguard.api.routes import ROUTES, Call, Route
from dialguard.api.schema import parse_json
from dialguard.api.tokens import Token, TokenFile, find
from dialguard.audit import AuditUnavailable
from dialguard.changes import InvalidChange
from dialguard.config import MAX_BODY_LIMIT, ApiSettings
from dialguard.numbers import InvalidNumber
from dialguard.service import Service
from dialguard.throttle import Throttle

__all__ = ["HttpApi"]

log = structlog.get_logger("dialguard.api")

_CHALLENGE = 'Bearer realm="dialguard"'
# A refused token, a journal that cannot be written: one line per 10 s, with the count.
_REFUSED = Throttle()
_AUDIT_ERRORS = Throttle()
# From SIGTERM, how long requests in flight may take to finish.
STOP_GRACE_S = 10.0


class HttpApi:
    def __init__(self, service: Service, settings: ApiSettings) -> None:
        self.service = service
        self.settings = settings
        self.tokens = TokenFile(settings.tokens_file)
        self.busy = 0  # requests in flight
        # aiohttp's own cap only guards the bodies it reads itself; ours are read here,
        # against the reloadable limit.
        self.app = web.Application(
            middlewares=[self._every_request], client_max_size=MAX_BODY_LIMIT
        )
        for route in ROUTES:
            self.app.router.add_route(route.method, route.path, self._endpoint(route))
        self._runner: web.AppRunner | None = None
        self._port = settings.port

    @property
    def port(self) -> int:
        """The port listened on (the one bound when the configuration said 0)."""
        return self._port

    def reconfigure(self, settings: ApiSettings) -> None:
        """A reload: the tokens file, the body limit and the replies' lifetime from now on;
        where it listens stays as started."""
        self.settings = settings
        self.tokens.moved(settings.tokens_file)

    async def start(self, *, reuse_port: bool = False) -> None:
        """Read the tokens (BadTokens: the service does not start) and listen (OSError)."""
        tokens = self.tokens.load()
        if not tokens:
            log.warning(
                "api_no_tokens",
                tokens_file=str(self.tokens.path),
                hint="every request is refused until `dialguard api token add` makes one",
            )
        runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=STOP_GRACE_S)
        await runner.setup()
        site = web.TCPSite(
            runner,
            self.settings.host,
            self.settings.port,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        address = runner.addresses[0]
        self._port = int(address[1])
        log.info("api_listening", host=self.settings.host, port=self._port, tokens=len(tokens))

    async def stop(self) -> None:
        """Stop accepting; requests in flight finish (up to STOP_GRACE_S)."""
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _every_request(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.busy += 1
        try:
            if request.match_info.http_exception is not None:
                # No such endpoint; but who asks is checked first, so that nobody learns
                # the API's paths without a token.
                self._authenticate(request)
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            return _http_error(exc, request)
        except Exception:
            log.exception("api_request_failed", method=request.method, path=request.path)
            return error_response("internal", "internal error (logged); please report it")
        finally:
            self.busy -= 1

    def _authenticate(self, request: web.Request) -> Token:
        header = request.headers.get("Authorization", "")
        if not header:
            raise ApiError(
                "unauthorized",
                "no token: send Authorization: Bearer TOKEN (dialguard api token add)",
                {"WWW-Authenticate": _CHALLENGE},
            )
        scheme, _, secret = header.partition(" ")
        token = find(self.tokens.tokens, secret.strip()) if scheme.lower() == "bearer" else None
        if token is None:
            suppressed = _REFUSED.due()
            if suppressed is not None:
                log.warning("api_token_refused", peer=request.remote, suppressed=suppressed)
            raise ApiError(
                "unauthorized",
                "the token is not one on file (mistyped, or removed): Authorization: Bearer TOKEN",
                {"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
            )
        return token

    def _endpoint(self, route: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            started = asyncio.get_running_loop().time()
            token = self._authenticate(request)
            if route.scope is not None and route.scope not in token.scopes:
                raise ApiError(
                    "forbidden",
                    f"token {token.name!r} lacks the scope {route.scope!r} that"
                    f" {route.method} {route.path} needs",
                )
            data: dict[str, Any] = {}
            if route.body != "none":
                data = parse_json(await self._body(request), empty_ok=route.body == "optional")
            call = Call(
                self.service,
                token,
                data,
                request.query,
                request.match_info,
                started,
            )
            key = request.headers.get(HEADER) if route.method != "GET" else None
            if key is None:
                # Most requests (every decision a dialer sends) carry no key: no
                # fingerprint, no Redis, nothing to keep.
                reply = await _run(route, call)
            else:
                reply = await once(
                    self.service.store.replies,
                    token.name,
                    key,
                    fingerprint(request.method, request.path, request.query, data),
                    route.replay_s(self.settings),
                    lambda: _run(route, call),
                )
            headers = {REPLAYED: "true"} if reply.replayed else None
            return json_response(reply.status, reply.body, headers)

        return handle

    async def _body(self, request: web.Request) -> bytes:
        """The whole body, refused (413) as soon as it is known to be over the limit: a
        declared length at once, a chunked one at the first byte past it."""
        limit = self.settings.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise _too_large(limit)
        if declared == 0:
            return b""  # (aiohttp's empty body refuses even a read of 0 bytes)
        try:
            if declared is not None:
                # The parser stops the body at its declared length: read whole, at once.
                return await request.content.readexactly(declared)
            chunks: list[bytes] = []
            size = 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
            return b"".join(chunks)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            # The client left before the end of its body: nothing done, and not our fault
            # (no traceback in the log).
            raise ApiError("bad_json", "the body ended early: the connection was closed") from None


def _too_large(limit: int) -> ApiError:
    return ApiError("body_too_large", f"the body is over {limit} bytes ([api] max_body_bytes)")


async def _run(route: Route, call: Call) -> Reply:
    """The endpoint, its failures said in the API's terms."""
    try:
        return await route.handler(call)
    except InvalidNumber as exc:
        raise ApiError("invalid_number", str(exc)) from None
    except InvalidChange as exc:  # what the service refuses to record, before writing
        raise ApiError("invalid_request", str(exc)) from None
    except AuditUnavailable as exc:
        # Nothing was done: no change without its record, no answer without a durable
        # decision (a dialer must fail closed, as the dialplan does without an answer).
        suppressed = _AUDIT_ERRORS.due()
        if suppressed is not None:
            log.error("audit_unavailable", error=str(exc), suppressed=suppressed)
        raise ApiError(
            "audit_unavailable",
            f"the audit journal cannot be written, so nothing was done: {exc}",
        ) from None


def _http_error(exc: web.HTTPException, request: web.Request) -> web.Response:
    """aiohttp's own refusals (no such path, method, body too large) in the API's form."""
    where = f"{request.method} {request.path}"
    if exc.status == 404:
        return error_response("not_found", f"no endpoint {where} (GET /v1/openapi.json lists them)")
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        return error_response(
            "method_not_allowed",
            f"{where}: method not allowed (allowed: {allowed})",
            {"Allow": allowed},
        )
    if exc.status == 413:
        return error_response("body_too_large", f"{where}: the body is too large")
    if exc.status < 500:
        return error_response("invalid_request", f"{where}: {exc.reason}")
    return error_response("internal", f"{where}: {exc.reason}")
