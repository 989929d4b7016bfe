"""Every error of the HTTP API: a status, a stable `code` a client can branch on, and a
one-line `message` a person can act on, as the JSON body {"code": ..., "message": ...}.

An error never comes after a write: each is raised before anything is journalled or sent
to Redis (or, for `audit_unavailable`, when the journal refused the write, so nothing was
written either).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

__all__ = ["CODES", "ApiError", "error_response", "json_response"]

# Each code, its status, and when (docs/api.md lists them; the OpenAPI document too).
CODES: dict[str, int] = {
    "bad_json": 400,  # the body is not a JSON object
    "invalid_request": 400,  # a field missing, unknown, of the wrong type or form
    "invalid_idempotency_key": 400,  # the header is empty, too long or not printable ASCII
    "unauthorized": 401,  # no token, or not one on file
    "forbidden": 403,  # the token lacks the scope the endpoint needs
    "not_found": 404,
    "method_not_allowed": 405,
    "idempotency_in_progress": 409,  # the first request with this key has not finished
    "body_too_large": 413,  # over [api] max_body_bytes
    "invalid_number": 422,  # not a number a call could be placed to
    "unknown_campaign": 422,  # not a campaign of the configuration
    "idempotency_key_reused": 422,  # the key was used for another request
    "audit_unavailable": 503,  # the journal cannot be written: nothing was done
    "internal": 500,  # a bug of ours, logged
}


class ApiError(Exception):
    def __init__(self, code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = CODES[code]
        self.message = " ".join(message.split())  # one line, whatever it quotes
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return error_response(self.code, self.message, self.headers)


def json_response(
    status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps(body),
        content_type="application/json",
        headers=headers,
    )


def error_response(
    code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return json_response(CODES[code], {"code": code, "message": message}, headers)
