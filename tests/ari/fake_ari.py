"""A protocol-faithful fake of Asterisk 22's ARI: REST and the events websocket.

What it keeps from Asterisk (res/ari/*, apps/app_stasis.c; shared/reference/asterisk.md):

- Auth on every request, REST or websocket: HTTP Basic with an ari.conf user, or the query
  parameter `api_key=user:password`; otherwise 401 with `{"error": "Authentication
  required"}` and a `WWW-Authenticate` header.
- The events websocket `/ari/events?app=NAME`; one connection per application.
- `Stasis(app,args...)` (here `start_call`): with no websocket for the app, Asterisk answers
  STASISSTATUS=FAILED at once and the dialplan goes on (`start_call` returns None). With one,
  the channel is parked and a StasisStart is sent, shaped as Asterisk 22 writes it.
- A parked channel stays parked when the websocket drops, until the app acts on it.
- POST .../variable (204; 400 without `variable`), POST .../continue (204, the channel
  leaves Stasis: StasisEnd), DELETE /channels/{id}?reason_code=N (204, StasisEnd), GET
  /channels, /channels/{id}, /applications/{app}; 404 `{"message": "Channel not found"}`
  for an unknown channel, 409 for a channel not in Stasis.

For the tests: every REST call is recorded (`calls`), the websocket can be dropped on
demand (`drop_websocket`), an event can be lost in transit (`deliver=False`, as when the
connection dies with it in a buffer), REST can be slowed down (`rest_delay_s`), a 2xx
answer can carry a body that is not ARI's (`bodies`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

ASTERISK_ID = "02:42:ac:11:00:02"


def ari_time(moment: float) -> str:
    """ARI's timestamp format: milliseconds, numeric offset without a colon."""
    value = datetime.fromtimestamp(moment, UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}+0000"


@dataclass(frozen=True)
class Call:
    """One REST request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    channel: str  # the channel id in the path, "" if none


@dataclass
class FakeChannel:
    json: dict[str, Any]
    app: str
    in_stasis: bool = True
    variables: dict[str, str] = field(default_factory=dict)
    continued: bool = False
    hangup_cause: int | None = None

    @property
    def id(self) -> str:
        return str(self.json["id"])

    @property
    def settled(self) -> bool:
        return self.continued or self.hangup_cause is not None


class FakeAri:
    def __init__(self, users: dict[str, str], *, app_name: str = "dialguard") -> None:
        self.users = users
        self.app_name = app_name
        self.channels: dict[str, FakeChannel] = {}
        self.calls: list[Call] = []
        self.rest_delay_s = 0.0
        self.down = False  # Asterisk unreachable: every request is cut off unanswered
        self.record_calls = True  # off for the load benchmark
        # Called when a channel leaves Stasis by our app's hand (the benchmark's clock).
        self.on_release: Callable[[FakeChannel], None] | None = None
        self.connections = 0  # websockets accepted
        self.rejected = 0  # requests refused with 401
        # (method, path) -> the body of a 2xx answer in place of ARI's: what a proxy in
        # front of Asterisk, or a cut connection, hands back.
        self.bodies: dict[tuple[str, str], bytes] = {}
        self._ws: dict[str, web.WebSocketResponse] = {}
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- running ----------------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/ari/events", self._events)
        app.router.add_get("/ari/applications/{app}", self._application)
        app.router.add_get("/ari/channels", self._list_channels)
        app.router.add_get("/ari/channels/{id}", self._get_channel)
        app.router.add_post("/ari/channels/{id}/variable", self._set_variable)
        app.router.add_post("/ari/channels/{id}/continue", self._continue)
        app.router.add_delete("/ari/channels/{id}", self._hangup)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        for ws in list(self._ws.values()):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- what Asterisk's dialplan and network do ----------------------------------------

    async def start_call(
        self,
        number: str,
        campaign: str,
        *,
        args: tuple[str, ...] | None = None,
        deliver: bool = True,
        created: float | None = None,
        accountcode: str = "",
        app: str | None = None,
    ) -> str | None:
        """`Stasis(app,NUMBER,CAMPAIGN)` on a new Local channel: its id, or None when no app
        is connected (STASISSTATUS=FAILED)."""
        app = app or self.app_name
        if app not in self._ws:
            return None
        serial = next(self._ids)
        args = args if args is not None else (number, campaign)
        created = time.time() if created is None else created
        channel = {
            "id": f"1795955366.{serial}",
            "name": f"Local/{number}@outbound-{serial:08x};2",
            "state": "Ring",
            "caller": {"name": "", "number": "0147000000"},
            "connected": {"name": "", "number": ""},
            "accountcode": accountcode,
            "dialplan": {
                "context": "outbound-ari",
                "exten": number,
                "priority": 3,
                "app_name": "Stasis",
                "app_data": ",".join((app, *args)),
            },
            "creationtime": ari_time(created),
            "language": "en",
        }
        fake = FakeChannel(channel, app)
        self.channels[fake.id] = fake
        if deliver:
            await self.send(
                app,
                {
                    "type": "StasisStart",
                    "timestamp": ari_time(time.time()),
                    "args": list(args),
                    "channel": channel,
                    "asterisk_id": ASTERISK_ID,
                    "application": app,
                },
            )
        return fake.id

    async def send(self, app: str, event: dict[str, Any]) -> None:
        ws = self._ws.get(app)
        if ws is not None and not ws.closed:
            with contextlib.suppress(ConnectionError):
                await ws.send_str(json.dumps(event))

    async def drop_websocket(self, app: str | None = None) -> None:
        """The connection dies (Asterisk restart of res_ari, a network blip)."""
        ws = self._ws.pop(app or self.app_name, None)
        if ws is not None:
            await ws.close()

    async def go_down(self) -> None:
        """Asterisk's HTTP server unreachable (a restart of res_ari, a firewall): the
        websocket drops, REST calls are cut off; the parked channels stay parked."""
        self.down = True
        for app in list(self._ws):
            await self.drop_websocket(app)

    def connected(self, app: str | None = None) -> bool:
        return (app or self.app_name) in self._ws

    def parked(self) -> list[FakeChannel]:
        return [c for c in self.channels.values() if c.in_stasis]

    def calls_for(self, channel_id: str) -> list[Call]:
        return [call for call in self.calls if call.channel == channel_id]

    # --- HTTP ---------------------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.down:
            # Unreachable: the connection closes without an answer (ServerDisconnected).
            if request.transport is not None:
                request.transport.close()
            raise web.HTTPServiceUnavailable()
        if not self._authorised(request):
            self.rejected += 1
            return web.json_response(
                {"error": "Authentication required"},
                status=401,
                headers={"WWW-Authenticate": 'Basic realm="Asterisk REST Interface"'},
            )
        if request.path != "/ari/events":
            channel = request.match_info.get("id", "")
            if self.record_calls:
                self.calls.append(Call(request.method, request.path, dict(request.query), channel))
            if self.rest_delay_s:
                await asyncio.sleep(self.rest_delay_s)
        response: web.StreamResponse = await handler(request)
        body = self.bodies.get((request.method, request.path))
        if body is not None and response.status < 300:
            return web.Response(body=body, status=200, content_type="text/html")
        return response

    def _authorised(self, request: web.Request) -> bool:
        api_key = request.query.get("api_key")
        if api_key is not None:
            user, _, password = api_key.partition(":")
            return self.users.get(user) == password
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return user in self.users and self.users[user] == password

    async def _events(self, request: web.Request) -> web.StreamResponse:
        app = request.query.get("app", "")
        if not app:
            return web.json_response({"message": "Missing parameter app"}, status=400)
        ws = web.WebSocketResponse(protocols=("ari",))
        await ws.prepare(request)
        previous = self._ws.get(app)
        self._ws[app] = ws
        self.connections += 1
        if previous is not None:
            await previous.send_str(json.dumps({"type": "ApplicationReplaced", "application": app}))
            await previous.close()
        async for message in ws:
            if message.type is WSMsgType.ERROR:
                break
        if self._ws.get(app) is ws:
            del self._ws[app]
        return ws

    async def _application(self, request: web.Request) -> web.Response:
        app = request.match_info["app"]
        ids = [c.id for c in self.channels.values() if c.in_stasis and c.app == app]
        return web.json_response(
            {
                "name": app,
                "channel_ids": ids,
                "bridge_ids": [],
                "endpoint_ids": [],
                "device_names": [],
                "events_allowed": [],
                "events_disallowed": [],
            }
        )

    async def _list_channels(self, request: web.Request) -> web.Response:
        alive = [c.json for c in self.channels.values() if c.hangup_cause is None]
        return web.json_response(alive)

    def _channel(self, request: web.Request) -> FakeChannel | web.Response:
        channel = self.channels.get(request.match_info["id"])
        if channel is None or channel.hangup_cause is not None:
            return web.json_response({"message": "Channel not found"}, status=404)
        return channel

    async def _get_channel(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if isinstance(channel, web.Response):
            return channel
        return web.json_response(channel.json)

    async def _set_variable(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if isinstance(channel, web.Response):
            return channel
        name = request.query.get("variable")
        if not name:
            return web.json_response({"message": "Variable name is required"}, status=400)
        channel.variables[name] = request.query.get("value", "")
        return web.Response(status=204)

    async def _continue(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if isinstance(channel, web.Response):
            return channel
        if not channel.in_stasis:
            return web.json_response({"message": "Channel not in Stasis application"}, status=409)
        channel.in_stasis = False
        channel.continued = True
        await self._stasis_end(channel)
        return web.Response(status=204)

    async def _hangup(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if isinstance(channel, web.Response):
            return channel
        code = request.query.get("reason_code", "16")  # 16: normal clearing
        channel.hangup_cause = int(code)
        was_parked, channel.in_stasis = channel.in_stasis, False
        if was_parked:
            await self._stasis_end(channel)
        return web.Response(status=204)

    async def _stasis_end(self, channel: FakeChannel) -> None:
        if self.on_release is not None:
            self.on_release(channel)
        event = {
            "type": "StasisEnd",
            "timestamp": ari_time(time.time()),
            "channel": channel.json,
            "asterisk_id": ASTERISK_ID,
            "application": channel.app,
        }
        await self.send(channel.app, event)
