"""The HTTP API on a real socket: the app `serve` runs (HttpApi) in this process, on the
same Service as a FastAGI server (tests/agi/test_server.py's harness: its fixed clock, its
journal in tmp_path, the test session's private Redis), tokens in a real tokens file, and
requests made over HTTP with aiohttp."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from dialguard.api.app import HttpApi
from dialguard.api.tokens import SCOPES, add_token
from dialguard.config import ApiSettings
from tests.agi.test_server import Agi, Record, admin_url, agi_server

# The tokens every harness has: one with every scope, one per scope.
TOKENS = {"all": SCOPES, **{scope: (scope,) for scope in SCOPES}}


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def code(self) -> str:
        assert isinstance(self.body, dict), self.body
        return str(self.body.get("code", ""))


@dataclass
class Http:
    agi: Agi
    api: HttpApi
    session: aiohttp.ClientSession
    secrets: dict[str, str]  # token name -> the token
    redis_url: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api.port}"

    async def call(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        token: str | None = "all",
        raw: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Answer:
        """One request; `token`: the name of one of the harness's tokens, or None."""
        sent = dict(headers or {})
        if token is not None:
            sent.setdefault("Authorization", f"Bearer {self.secrets[token]}")
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.base + path, data=data, headers=sent, params=params
        ) as response:
            text = await response.read()
            assert response.content_type == "application/json", (response.status, text)
            return Answer(response.status, json.loads(text), dict(response.headers))

    async def post(self, path: str, body: object = None, **options: Any) -> Answer:
        return await self.call("POST", path, body, **options)

    def records(self, kind: str | None = None) -> list[Record]:
        return [r for r in self.agi.records() if kind is None or r.get("kind") == kind]

    async def redis_keys(self) -> set[bytes]:
        client = aioredis.Redis.from_url(admin_url(self.redis_url))
        try:
            return {
                key if isinstance(key, bytes) else key.encode() for key in await client.keys("*")
            }
        finally:
            await client.aclose()


@asynccontextmanager
async def api_server(
    url: str, directory: Path, *, settings: Mapping[str, Any] | None = None, **agi: Any
) -> AsyncIterator[Http]:
    tokens_file = directory / "api-tokens.json"
    secrets = {
        name: add_token(tokens_file, name, scopes, "test") for name, scopes in TOKENS.items()
    }
    api_settings = ApiSettings(tokens_file, port=0, **(settings or {}))

    def with_api(config: Any) -> Any:
        return replace(config, api=api_settings)

    async with agi_server(url, directory / "audit", configure=with_api, **agi) as harness:
        api = HttpApi(harness.service, api_settings)
        await api.start()
        try:
            async with aiohttp.ClientSession() as session:
                yield Http(harness, api, session, secrets, url)
        finally:
            await api.stop()
