"""A thin ARI client on aiohttp: the few REST calls the Stasis app needs, and the events
websocket with reconnection.

ARI in one paragraph (Asterisk 22, shared/reference/asterisk.md): REST under `/ari`, Basic
auth with an `ari.conf` user; events on the websocket `/ari/events?app=NAME`. Asterisk
answers 204 to the calls that change a channel, 404 when the channel does not exist (it
hung up), 409 when it exists but is not in our Stasis application, 401 for bad
credentials. A channel stays in Stasis until the app acts on it, websocket or not.

Every error a person may see is one `AriError` line; the password is only ever in the
Authorization header, never in a URL, a message or a log. A 2xx whose body is not the JSON
ARI documents (a proxy's page, a cut answer) is `AriBadReply`, handled as any other client
error; the body of a change (POST, DELETE) is never read: its 2xx says it is done.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
import structlog

from dialguard.config import AriSettings

__all__ = [
    "AriAuthError",
    "AriBadReply",
    "AriClient",
    "AriError",
    "AriUnavailable",
    "Channel",
    "ChannelGone",
    "NotInStasis",
    "StasisStart",
]

log = structlog.get_logger("dialguard.ari")

T = TypeVar("T")

# A REST call is one small request to a local Asterisk: answered in a millisecond or two.
# Two seconds covers an Asterisk busy with a burst, and stays short of the time a person
# on a manual dial waits in silence before hanging up.
REST_TIMEOUT_S = 2.0
# Websocket pings: a half-open connection (Asterisk's host gone, no FIN) is noticed within
# two of these instead of never; parked channels wait for the reconnect meanwhile.
HEARTBEAT_S = 5.0
# Reconnection: quick first retries (an Asterisk `module reload` drops the socket for a
# moment), doubling up to a few seconds, never more: every second here is a second that
# parked calls wait. Jitter keeps several dialguard nodes from reconnecting in step.
BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 5.0


class AriError(Exception):
    """One line: what ARI said, and what to do about it."""


class AriAuthError(AriError):
    """401: the `[ari]` user or password is not what Asterisk's ari.conf has."""


class AriUnavailable(AriError):
    """Asterisk did not answer: not running, wrong URL, or too slow."""


class AriBadReply(AriError):
    """A 2xx answer whose body is not the JSON ARI documents (not JSON, or the wrong
    shape): something other than Asterisk's ARI answered, a proxy say."""


class ChannelGone(AriError):
    """404: the channel no longer exists (the call hung up)."""


class NotInStasis(AriError):
    """409: the channel exists but is not in our Stasis application (any more)."""


@dataclass(frozen=True, slots=True)
class Channel:
    """The parts of ARI's Channel model the app uses."""

    id: str  # Asterisk's uniqueid, e.g. "1795955366.1"
    name: str  # e.g. "Local/0612345678@outbound-00000000;2"
    caller_number: str
    accountcode: str
    app_name: str  # the dialplan application running: "Stasis" while parked with us
    app_data: str  # its arguments as written in the dialplan: "dialguard,NUMBER,CAMPAIGN"
    created: datetime | None

    @classmethod
    def from_json(cls, value: object) -> Channel:
        """TypeError or KeyError when `value` is not shaped as ARI's Channel."""
        data = _object(value, "a channel")
        caller = _object(data.get("caller") or {}, "its caller")
        dialplan = _object(data.get("dialplan") or {}, "its dialplan")
        return cls(
            id=str(data["id"]),
            name=str(data.get("name", "")),
            caller_number=str(caller.get("number", "")),
            accountcode=str(data.get("accountcode", "")),
            app_name=str(dialplan.get("app_name", "")),
            app_data=str(dialplan.get("app_data", "")),
            created=parse_time(str(data.get("creationtime", ""))),
        )

    def stasis_args(self, app: str) -> tuple[str, ...] | None:
        """The Stasis() arguments, read back from the dialplan: how a channel whose
        StasisStart was lost (websocket down) is settled. None: not parked in `app`."""
        if self.app_name.lower() != "stasis":
            return None
        # Asterisk splits Stasis()'s data on commas (quotes and escapes aside): a number
        # and a campaign name never hold either, so a plain split reads them back.
        name, *args = self.app_data.split(",")
        if name != app:
            return None
        return tuple(args)


@dataclass(frozen=True, slots=True)
class StasisStart:
    channel: Channel
    args: tuple[str, ...]
    application: str

    @classmethod
    def from_json(cls, event: Mapping[str, Any]) -> StasisStart:
        return cls(
            Channel.from_json(event["channel"]),
            tuple(str(arg) for arg in event.get("args", ())),
            str(event.get("application", "")),
        )


def parse_time(text: str) -> datetime | None:
    """ARI's timestamps: `2026-11-30T11:00:00.123+0100` (milliseconds, offset without colon)."""
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z")
    except ValueError:
        return None


EventHandler = Callable[[dict[str, Any]], None]
ConnectedHandler = Callable[[], Awaitable[None]]


class AriClient:
    def __init__(self, settings: AriSettings, *, timeout_s: float = REST_TIMEOUT_S) -> None:
        self.settings = settings
        self.base = f"{settings.url}/ari"
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._closing = False

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Basic auth in a header: never in a URL, where it could reach a log line.
            secret = f"{self.settings.user}:{self.settings.password}".encode()
            self._session = aiohttp.ClientSession(
                headers={"Authorization": "Basic " + base64.b64encode(secret).decode()},
                timeout=self._timeout,
            )
        return self._session

    async def close(self) -> None:
        self._closing = True
        await self.disconnect()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- REST ---------------------------------------------------------------------------

    async def set_variable(self, channel_id: str, name: str, value: str) -> None:
        await self._call(
            "POST", f"{_channel(channel_id)}/variable", {"variable": name, "value": value}
        )

    async def continue_in_dialplan(self, channel_id: str) -> None:
        """Back to the dialplan at the next priority (no context/extension/priority given)."""
        await self._call("POST", f"{_channel(channel_id)}/continue")

    async def hangup(self, channel_id: str, reason_code: int) -> None:
        await self._call("DELETE", _channel(channel_id), {"reason_code": str(reason_code)})

    async def channel(self, channel_id: str) -> Channel:
        return await self._get(_channel(channel_id), Channel.from_json)

    async def channels(self) -> list[Channel]:
        """Every channel of this Asterisk (`GET /channels`): one request for a whole sweep."""

        def read(data: object) -> list[Channel]:
            return [Channel.from_json(item) for item in _array(data, "the channel list")]

        return await self._get("/channels", read)

    async def application_channel_ids(self) -> list[str]:
        """The channels subscribed to our application: the ones parked in Stasis with us."""

        def read(data: object) -> list[str]:
            ids = _object(data, "the application").get("channel_ids", [])
            return [str(channel_id) for channel_id in _array(ids, "its channel_ids")]

        return await self._get(f"/applications/{self.settings.app}", read)

    async def _get(self, path: str, read: Callable[[object], T]) -> T:
        """GET `path` and read its JSON body; AriBadReply if it is not what ARI sends."""
        body = await self._call("GET", path)
        try:
            return read(orjson.loads(body))
        except orjson.JSONDecodeError:
            problem = f"{len(body)} bytes, not JSON"
        except KeyError as exc:
            problem = f"no {exc.args[0]!r} field"
        except TypeError as exc:
            problem = str(exc)
        raise AriBadReply(
            f"ARI GET {path}: not ARI's answer ({problem}): is {self.settings.url} Asterisk's "
            "HTTP server, with res_ari loaded?"
        )

    async def _call(self, method: str, path: str, params: Mapping[str, str] | None = None) -> bytes:
        """The body of a 2xx answer; one of the AriError kinds for anything else. Changes
        (POST, DELETE) answer 204: their body is never read, a 2xx says it is done."""
        what = f"ARI {method} {path}"
        try:
            async with self.session.request(method, self.base + path, params=params) as reply:
                body = await reply.read()
                status = reply.status
        except TimeoutError:
            raise AriUnavailable(
                f"{what}: no answer from {self.settings.url} within {self._timeout.total} s"
            ) from None
        except aiohttp.ClientError as exc:
            raise AriUnavailable(f"{what}: cannot reach {self.settings.url}: {exc}") from None
        if status < 300:
            return body
        message = _message(body)
        if status == 401:
            raise AriAuthError(self._auth_message())
        if status == 404:
            raise ChannelGone(f"{what}: not found ({message})")
        if status == 409:
            raise NotInStasis(f"{what}: conflict ({message})")
        raise AriError(f"{what}: HTTP {status} ({message})")

    def _auth_message(self) -> str:
        return (
            f"ARI at {self.settings.url} refused user {self.settings.user!r} (401): check "
            "[ari] user and its password against Asterisk's ari.conf"
        )

    # --- events -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the events websocket once; AriAuthError / AriError / AriUnavailable if not."""
        url = f"{self.base}/events"
        params = {"app": self.settings.app, "subscribeAll": "false"}
        try:
            self._ws = await self.session.ws_connect(url, params=params, heartbeat=HEARTBEAT_S)
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise AriAuthError(self._auth_message()) from None
            raise AriError(
                f"ARI events at {url}: HTTP {exc.status} (is {self.settings.url} Asterisk's "
                "HTTP server, with res_ari loaded?)"
            ) from None
        except TimeoutError:
            raise AriUnavailable(f"ARI events: no answer from {self.settings.url}") from None
        except aiohttp.ClientError as exc:
            raise AriUnavailable(f"ARI events: cannot reach {self.settings.url}: {exc}") from None

    async def disconnect(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def read_events(self, handler: EventHandler) -> None:
        """Hand every event of the open websocket to `handler` until it closes."""
        ws = self._ws
        if ws is None:
            return
        async for message in ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break  # CLOSE / ERROR: the connection is over
            try:
                event = orjson.loads(message.data)
            except orjson.JSONDecodeError:
                log.warning("ari_bad_event", size=len(message.data))
                continue
            if isinstance(event, dict):
                handler(event)

    async def run_events(
        self, handler: EventHandler, on_connected: ConnectedHandler, *, connected: bool = False
    ) -> None:
        """Read events for ever, reconnecting with backoff; `on_connected` after each connect.

        `connected`: the first connection was already opened (by `connect()` at start-up,
        where a failure is fatal rather than retried).
        """
        delay = BACKOFF_FIRST_S
        while not self._closing:
            if not connected:
                try:
                    await self.connect()
                except AriError as exc:
                    log.error("ari_connect_failed", error=str(exc), retry_s=round(delay, 2))
                    await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * 2, BACKOFF_MAX_S)
                    continue
                log.info("ari_connected", url=self.settings.url, app=self.settings.app)
            connected = False
            delay = BACKOFF_FIRST_S
            try:
                await on_connected()
                await self.read_events(handler)
            except (aiohttp.ClientError, ConnectionError) as exc:
                log.warning("ari_events_error", error=str(exc))
            finally:
                with contextlib.suppress(aiohttp.ClientError, ConnectionError):
                    await self.disconnect()
            if not self._closing:
                log.warning("ari_disconnected", url=self.settings.url)


def _channel(channel_id: str) -> str:
    """The REST path of a channel. Its id comes from Asterisk's events, and whoever
    originates a call may choose it (ARI's and AMI's channelId): quoted whole, so that
    "x/../../applications/..." or "a?b" stays one path segment of /channels and cannot
    reach another endpoint with our credentials."""
    return "/channels/" + quote(channel_id, safe="")


def _object(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} is not a JSON object")
    return value


def _array(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError(f"{what} is not a JSON array")
    return value


def _message(body: bytes) -> str:
    """Asterisk's error bodies are `{"message": "..."}` (or `{"error": ...}` for auth)."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:80].decode("utf-8", "replace").strip() or "no body"
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or data)
    return str(data)[:80]
