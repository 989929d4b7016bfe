"""2xx answers whose body is not ARI's JSON (a proxy's page, a cut connection, the wrong
shape): one AriBadReply line, handled as the app handles every client error, never an
exception escaping to the event loop. Against the fake ARI, the real app and service, and
the test session's Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from structlog.testing import capture_logs

from dialguard.ari.client import AriBadReply
from tests.ari.fake_ari import FakeAri
from tests.ari.test_ari import NUMBER_RAW, ari_harness
from tests.redis_server import RedisServer
from tests.waiting import wait_until

APPLICATION = ("GET", "/ari/applications/dialguard")
CHANNELS = ("GET", "/ari/channels")
PROXY_PAGE = b"<html><body>502 Bad Gateway</body></html>"


def loop_errors() -> list[dict[str, Any]]:
    """What reaches the running loop's exception handler from now on."""
    seen: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _, context: seen.append(context))
    return seen


@pytest.mark.parametrize(
    ("where", "body", "message"),
    [
        (APPLICATION, PROXY_PAGE, "not ARI's answer (41 bytes, not JSON)"),
        (APPLICATION, b"", "not ARI's answer (0 bytes, not JSON)"),
        (APPLICATION, b"[]", "(the application is not a JSON object)"),
        (APPLICATION, b'{"channel_ids": 3}', "its channel_ids is not a JSON array"),
        (CHANNELS, b'{"items": []}', "the channel list is not a JSON array"),
        (CHANNELS, b"[1]", "a channel is not a JSON object"),
        (CHANNELS, b'[{"name": "Local/x"}]', "not ARI's answer (no 'id' field)"),
        (CHANNELS, b'[{"id": "1.1", "caller": "0147000000"}]', "its caller is not a JSON"),
    ],
)
async def test_a_broken_body_is_one_ari_error_line(
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    tmp_path: Path,
    where: tuple[str, str],
    body: bytes,
    message: str,
) -> None:
    async with ari_harness(redis_server.url, tmp_path / "audit") as ari:
        ari.fake.bodies[where] = body
        client = ari.app.client
        read = client.application_channel_ids if where == APPLICATION else client.channels
        with pytest.raises(AriBadReply) as error:
            await read()
        path = where[1].removeprefix("/ari")
        assert str(error.value).startswith(f"ARI GET {path}: ")
        assert message in str(error.value)
        assert str(error.value).endswith(
            f"is {ari.fake.url} Asterisk's HTTP server, with res_ari loaded?"
        )
        del ari.fake.bodies[where]


async def test_one_channel_with_a_broken_body(
    redis_server: RedisServer, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    async with ari_harness(redis_server.url, tmp_path / "audit") as ari:
        channel_id = await ari.fake.start_call(NUMBER_RAW, "demo-press", deliver=False)
        assert channel_id is not None
        ari.fake.bodies[("GET", f"/ari/channels/{channel_id}")] = b'"Ring"'
        with pytest.raises(
            AriBadReply, match=r"^ARI GET /channels/\S+: not ARI's answer \(a channel is not"
        ):
            await ari.app.client.channel(channel_id)
        del ari.fake.bodies[("GET", f"/ari/channels/{channel_id}")]
        await ari.fake.drop_websocket()  # the sweep after the reconnect settles it
        await wait_until(lambda: not ari.fake.parked() and not ari.app.busy)


async def test_a_broken_sweep_is_logged_and_the_app_keeps_running(
    redis_server: RedisServer, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    errors = loop_errors()
    async with ari_harness(redis_server.url, tmp_path / "audit") as ari:
        fake: FakeAri = ari.fake
        channel_id = await fake.start_call(NUMBER_RAW, "demo-press", deliver=False)
        assert channel_id is not None
        for where, body in ((APPLICATION, PROXY_PAGE), (CHANNELS, b'{"items": "none"}')):
            fake.bodies = {where: body}  # the other one reads
            reconnected = ari.app.connections + 1
            with capture_logs() as logs:
                await fake.drop_websocket()
                # Awaited at once, within this round of the loop: B023 does not apply.
                await wait_until(lambda: ari.app.connections == reconnected)  # noqa: B023
                await wait_until(lambda: any(e["event"] == "ari_sweep_failed" for e in logs))
            # The first round may also catch the sweep of the first connection.
            failures = [e["error"] for e in logs if e["event"] == "ari_sweep_failed"]
            assert all(f.startswith(f"ARI GET {where[1].removeprefix('/ari')}: ") for f in failures)
            assert fake.parked()  # still waiting: the next reconnect sweeps again
        fake.bodies = {}
        await fake.drop_websocket()
        await wait_until(lambda: not fake.parked() and not ari.app.busy)
        assert [r["uniqueid"] for r in ari.records()] == [channel_id]
        assert fake.channels[channel_id].continued
    assert errors == []


async def test_a_change_answered_with_a_body_is_done(
    redis_server: RedisServer, redis_client: aioredis.Redis, tmp_path: Path
) -> None:
    """A 2xx to a change says it is done, whatever comes with it: the app must not take a
    continued channel for a failure and hang it up."""
    errors = loop_errors()
    async with ari_harness(redis_server.url, tmp_path / "audit") as ari:
        fake = ari.fake
        channel_id = await fake.start_call(NUMBER_RAW, "demo-press", deliver=False)
        assert channel_id is not None
        for action in ("variable", "continue"):
            fake.bodies[("POST", f"/ari/channels/{channel_id}/{action}")] = PROXY_PAGE
        await fake.drop_websocket()
        await wait_until(lambda: not fake.parked() and not ari.app.busy)
        channel = fake.channels[channel_id]
        assert channel.continued and channel.hangup_cause is None
        assert channel.variables["DIALGUARD_RESULT"] == "ALLOW"
    assert errors == []
