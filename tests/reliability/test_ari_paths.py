"""A channel id is one path segment of ARI's /channels, whatever it holds.

Whoever originates a call may choose its channel id (ARI's and AMI's `channelId`), and
dialguard puts it in the URL of every REST call it makes for that channel, with its own
credentials. Unquoted, `x/../../applications/dialguard` reached another endpoint and
`a?b` cut the path (docs/security.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable

import pytest

from dialguard.ari.client import AriClient, AriError
from dialguard.config import AriSettings
from tests.ari.fake_ari import FakeAri

USER, PASSWORD = "dialguard", "ari-test-password"


@pytest.mark.parametrize(
    "channel_id",
    ["x/../../applications/dialguard", "../../asterisk/info", "a?variable=X&value=Y#", "a b"],
)
async def test_a_channel_id_cannot_leave_its_path(channel_id: str) -> None:
    fake = FakeAri({USER: PASSWORD})
    await fake.start()
    client = AriClient(AriSettings(f"http://127.0.0.1:{fake.port}", "dialguard", USER, PASSWORD))
    try:
        requests: list[Awaitable[object]] = [
            client.set_variable(channel_id, "DIALGUARD_RESULT", "DENY"),
            client.continue_in_dialplan(channel_id),
            client.hangup(channel_id, 21),
            client.channel(channel_id),
        ]
        for request in requests:
            with contextlib.suppress(AriError):  # no such channel: 404, as it should
                await request
    finally:
        await client.close()
        await fake.stop()
    assert len(fake.calls) == 4
    for call in fake.calls:
        assert call.path.startswith("/ari/channels/"), call
        assert call.channel == channel_id, call  # routed as the {id} of /channels/{id}
        assert "variable" not in call.query or call.query["variable"] == "DIALGUARD_RESULT"
