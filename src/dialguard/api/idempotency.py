"""`Idempotency-Key`: a request sent again with the key of one already answered gets the
first answer again, and nothing is done twice.

A client that timed out cannot tell whether its consent, its do-not-call or its decision
went through; with a key it sends the same request again, safely. The answer is kept in
Redis (dialguard.store.replies: shared by every worker and node, it survives a restart
and forgets by itself), scoped by the token's name: two clients never share keys.

- The first request with a key marks it taken (one atomic step), runs, and then keeps its
  answer: `[api] idempotency_hours` for a change, DECISION_REPLAY_S for a decision.
- The same key again, for the same request (method, path, query, the JSON body in any
  spelling): the kept answer, with `Idempotency-Replayed: true`; still running: 409
  `idempotency_in_progress`; for another request: 422 `idempotency_key_reused`.
- An error answer is not kept (nothing was written): the key is freed for a retry.
- Redis unreachable: the request runs without its key (logged). A change is then journalled
  and pending; sent again, it is journalled again, which changes nothing (a change applied
  twice is applied once: dialguard.changes). A decision cannot count an attempt without
  Redis either.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
import structlog

from dialguard.api.errors import ApiError
from dialguard.store import StoreUnavailable
from dialguard.store.replies import Replies
from dialguard.throttle import Throttle

__all__ = ["DECISION_REPLAY_S", "HEADER", "REPLAYED", "Reply", "fingerprint", "once"]

log = structlog.get_logger("dialguard.api")

HEADER = "Idempotency-Key"
REPLAYED = "Idempotency-Replayed"
# A decision's answer is replayed for five minutes at most: a dialer retries within
# seconds, and an ALLOW read back hours later must not place a call (the hours and the
# 30-day count have moved since).
DECISION_REPLAY_S = 300
# A key taken by a request that never finished (the process killed in between) is free
# again after this; every request finishes far sooner (the Redis and journal timeouts).
RUNNING_MS = 60_000
# Printable ASCII, as the IETF draft and the payment APIs that use the header allow.
_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_UNAVAILABLE = Throttle()


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Mapping[str, Any]
    replayed: bool = False


def fingerprint(method: str, path: str, query: Mapping[str, str], body: object) -> str:
    """What makes two requests the same: the method, the path, the query, and the body as
    parsed (key order and spacing do not count)."""
    canonical = orjson.dumps(
        [method, path, sorted(query.items()), body], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(canonical).hexdigest()


async def once(
    replies: Replies,
    scope: str,
    key: str | None,
    request_fingerprint: str,
    ttl_s: int,
    work: Callable[[], Awaitable[Reply]],
) -> Reply:
    """`work()`, or the answer it gave for this key before (see the module's text)."""
    if key is None:
        return await work()
    if not _KEY.fullmatch(key):
        raise ApiError("invalid_idempotency_key", f"{HEADER}: 1-255 printable ASCII characters")
    digest = hashlib.sha256(f"{scope}\0{key}".encode()).hexdigest()
    taken = orjson.dumps({"state": "running", "fingerprint": request_fingerprint})
    try:
        old = await replies.claim(digest, taken, RUNNING_MS)
    except StoreUnavailable as exc:
        suppressed = _UNAVAILABLE.due()
        if suppressed is not None:
            log.warning("idempotency_key_not_kept", error=str(exc), suppressed=suppressed)
        return await work()
    if old is not None:
        return _earlier(old, request_fingerprint)
    try:
        reply = await work()
    except BaseException:
        await _forget(replies, digest)
        raise
    if reply.status >= 300:
        await _forget(replies, digest)
        return reply
    kept = {"state": "done", "fingerprint": request_fingerprint, "status": reply.status}
    try:
        await replies.keep(digest, orjson.dumps({**kept, "body": reply.body}), ttl_s * 1000)
    except StoreUnavailable as exc:
        # Done and answered; a retry after this would do it again (harmless, see above).
        log.warning("idempotency_answer_not_kept", error=str(exc))
    return reply


def _earlier(kept: bytes, request_fingerprint: str) -> Reply:
    try:
        earlier = orjson.loads(kept)
    except orjson.JSONDecodeError:
        earlier = {}
    if not isinstance(earlier, dict) or earlier.get("fingerprint") != request_fingerprint:
        raise ApiError(
            "idempotency_key_reused",
            f"this {HEADER} was used for another request; use a new key for each request",
        )
    if earlier.get("state") != "done":
        raise ApiError(
            "idempotency_in_progress",
            f"the first request with this {HEADER} is still running; send it again shortly",
            {"Retry-After": "1"},
        )
    return Reply(int(earlier["status"]), earlier["body"], replayed=True)


async def _forget(replies: Replies, digest: str) -> None:
    try:
        await replies.forget(digest)
    except StoreUnavailable as exc:
        # The mark expires after RUNNING_MS: until then a retry is told to wait.
        log.warning("idempotency_key_not_freed", error=str(exc))
