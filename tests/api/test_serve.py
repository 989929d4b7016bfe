"""The API as `dialguard serve` runs it, and the pieces around it: the [api] section, a
reload, the tokens file and `dialguard api token`."""

from __future__ import annotations

import asyncio
import json
import re
import stat
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest

from dialguard.api.tokens import BadTokens, add_token, digest_of, find, read_tokens
from dialguard.config import ApiSettings, ConfigError, load_config
from dialguard.reload import compare, in_force
from tests.agi.asterisk_peer import run_session
from tests.api.served import serving_api
from tests.cli_runner import run_dialguard
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "dialguard.toml"


# --- `dialguard serve` ------------------------------------------------------------------


async def test_two_workers_answer_on_one_port_as_fastagi_does(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    with serving_api(tmp_path, clean_redis.url, workers=2) as served:
        assert len(served.events("api_listening")) == 2
        assert {e["port"] for e in served.events("api_listening")} == {served.api_port}
        headers = {"Authorization": f"Bearer {served.token}"}
        body = {"number": "0612345678", "campaign": "demo-survey", "call_id": "x"}
        async with aiohttp.ClientSession() as session:

            async def decide(index: int) -> str:
                # A connection each: the kernel spreads them across the workers.
                async with (
                    aiohttp.ClientSession() as own,
                    own.post(
                        f"{served.base}/v1/decisions",
                        json={**body, "call_id": str(index)},
                        headers=headers,
                    ) as response,
                ):
                    assert response.status == 200
                    answer = await response.json()
                    return f"{answer['result']} {answer['reason']}"

            answers = await asyncio.gather(*(decide(i) for i in range(20)))
            assert set(answers) == {"ALLOW NON_COMMERCIAL"}
            # A do-not-call through the API: the next FastAGI call, on whichever worker.
            async with session.post(
                f"{served.base}/v1/dnc/0612345678", headers=headers
            ) as response:
                assert response.status == 200
        for _ in range(4):
            call = await run_session(
                "127.0.0.1", served.agi_port, args=("0612345678", "demo-survey")
            )
            assert call.variables["DIALGUARD_REASON"] == "INTERNAL_DNC"
        records = [
            json.loads(line)
            for path in sorted((tmp_path / "audit").glob("audit-*.jsonl"))
            for line in path.read_bytes().splitlines()
        ]
        decisions = [r for r in records if r.get("kind") == "decision" and r["adapter"] == "http"]
        assert sorted(r["uniqueid"] for r in decisions) == sorted(str(i) for i in range(20))
        # Each worker wrote decisions: a tag per process in the ids.
        assert len({r["id"][12:20] for r in decisions}) == 2


async def test_a_token_added_while_serving_is_taken_without_a_reload(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    with serving_api(tmp_path, clean_redis.url) as served:
        run = await asyncio.to_thread(
            run_dialguard,
            ["api", "token", "add", "crm", "--scope", "write-lists", "--operator", "alice"],
            {"DIALGUARD_CONFIG": str(tmp_path / "dialguard.toml")},
        )
        assert run.code == 0, run
        token = run.out.splitlines()[-1]
        async with aiohttp.ClientSession() as session:

            async def status() -> int:
                async with session.post(
                    f"{served.base}/v1/dnc/0612345678",
                    headers={"Authorization": f"Bearer {token}"},
                ) as response:
                    return response.status

            statuses: list[int] = []

            async def accepted() -> bool:
                statuses.append(await status())
                return statuses[-1] == 200

            for _ in range(40):
                if await accepted():
                    break
                await asyncio.sleep(0.05)
            assert statuses[-1] == 200 and len(statuses) <= 30, statuses


async def test_dialguard_reload_puts_a_new_body_limit_in_force(
    clean_redis: RedisServer, tmp_path: Path
) -> None:
    with serving_api(tmp_path, clean_redis.url) as served:
        config = tmp_path / "dialguard.toml"
        text = config.read_text()
        config.write_text(text.replace("[api]\n", "[api]\nmax_body_bytes = 100\n", 1))
        env = {"DIALGUARD_CONFIG": str(config)}
        run = await asyncio.to_thread(run_dialguard, ["reload", "--operator", "alice"], env)
        assert run.code == 0, run
        assert "api.max_body_bytes 16384 -> 100" in run.out
        body = {"number": "0612345678", "campaign": "demo-survey", "channel": "x" * 200}
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{served.base}/v1/decisions",
                json=body,
                headers={"Authorization": f"Bearer {served.token}"},
            ) as response,
        ):
            assert response.status == 413
            assert (await response.json())["code"] == "body_too_large"


def test_a_bad_tokens_file_stops_serve_in_one_line(tmp_path: Path) -> None:
    from tests.agi.test_server import write_serve_config
    from tests.redis_server import free_port

    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"format": 1, "tokens": [{"name": "x"}]}')
    config = write_serve_config(
        tmp_path, free_port(), f'[api]\nport = {free_port()}\ntokens_file = "{tokens}"\n'
    )
    run = run_dialguard(
        ["serve"], {"DIALGUARD_CONFIG": str(config), "DIALGUARD_REDIS_URL": "redis://127.0.0.1:1/0"}
    )
    assert run.code == 1
    assert run.err == f"dialguard: {tokens}: tokens[0]: sha256 must be 64 lowercase hex digits\n"


# --- the [api] section and reloads --------------------------------------------------------


def shipped_without_api() -> str:
    text = SHIPPED.read_text(encoding="utf-8")
    policy = ROOT / "config" / "policy" / "france.toml"
    text = text.replace('"policy/france.toml"', json.dumps(str(policy)))
    without, found = re.subn(r"(?m)^\[api\]\n(?:.+\n)*", "", text)
    assert found == 1, "the shipped configuration serves the API"
    return without


def test_the_shipped_configuration_serves_the_api_on_loopback() -> None:
    api = load_config(SHIPPED, env={}).api
    assert api is not None
    assert (api.host, api.port, api.max_body_bytes, api.idempotency_hours) == (
        "127.0.0.1",
        8575,
        16384,
        24,
    )
    assert api.tokens_file == SHIPPED.parent / "../var/api-tokens.json"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("", None),
        ("[api]\n", None),
        ("[api]\nport = 70000\n", "api.port: 70000 is not a TCP port"),
        ("[api]\npotr = 8575\n", "api.potr: unknown key"),
        ("[api]\nmax_body_bytes = 0\n", "api.max_body_bytes: 0 must be positive"),
        ("[api]\nmax_body_bytes = 2000000\n", "api.max_body_bytes: 2000000: at most 1048576"),
        ("[api]\nidempotency_hours = 1000\n", "api.idempotency_hours: 1000: at most 744"),
        ("[api]\nhost = 7\n", "api.host: 7 is not a str"),
    ],
)
def test_the_api_section(tmp_path: Path, section: str, message: str | None) -> None:
    path = tmp_path / "dialguard.toml"
    path.write_text(shipped_without_api() + section, encoding="utf-8")
    if message is not None:
        with pytest.raises(ConfigError, match=re.escape(f"{path}: {message}")):
            load_config(path, env={})
        return
    api = load_config(path, env={}).api
    if not section:
        assert api is None
    else:
        assert api == ApiSettings(tmp_path / "../var/api-tokens.json")  # beside the audit dir


def test_a_reload_puts_the_api_limits_in_force_and_keeps_where_it_listens() -> None:
    old = load_config(SHIPPED, env={})
    assert old.api is not None
    new = replace(
        old,
        api=replace(old.api, port=9999, max_body_bytes=1000, tokens_file=Path("/elsewhere.json")),
    )
    changes = compare(old, new)
    assert "api.max_body_bytes 16384 -> 1000" in changes.applied
    assert any(c.startswith("api.tokens_file ") for c in changes.applied)
    assert changes.restart_needed == ("api.port",)
    running = in_force(old, new).api
    assert running is not None
    assert (running.port, running.max_body_bytes) == (8575, 1000)
    assert compare(old, replace(old, api=None)).restart_needed == ("api",)
    assert in_force(old, replace(old, api=None)).api == old.api


# --- tokens -------------------------------------------------------------------------------


def test_the_token_is_printed_once_alone_on_the_last_line_and_only_its_hash_kept(
    tmp_path: Path,
) -> None:
    config = tmp_path / "dialguard.toml"
    config.write_text(shipped_without_api() + '[api]\ntokens_file = "tokens.json"\n')
    env = {"DIALGUARD_CONFIG": str(config)}
    add = ["api", "token", "add", "crm", "--scope", "decide", "--scope", "write-lists"]
    run = run_dialguard([*add, "--operator", "alice"], env)
    assert run.code == 0, run
    *said, token = run.out.splitlines()
    assert re.fullmatch(r"dg_[A-Za-z0-9_-]{43}", token)
    assert said and token not in "\n".join(said)
    path = tmp_path / "tokens.json"
    assert token not in path.read_text()
    (entry,) = read_tokens(path)
    assert entry.digest == digest_of(token)
    assert (entry.name, entry.scopes, entry.created_by) == (
        "crm",
        frozenset({"decide", "write-lists"}),
        "alice",
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert find(read_tokens(path), token) == entry
    assert find(read_tokens(path), token[:-1] + ("A" if token[-1] != "A" else "B")) is None

    listed = run_dialguard(["api", "token", "list", "--json"], env)
    assert json.loads(listed.out) == {
        "name": "crm",
        "scopes": ["decide", "write-lists"],
        "created_at": entry.created_at,
        "created_by": "alice",
    }
    again = run_dialguard([*add], env)
    assert again.code == 1 and again.err.count("\n") == 1 and "exists" in again.err
    bad = run_dialguard(["api", "token", "add", "x y", "--scope", "decide"], env)
    assert bad.code == 1 and "token name" in bad.err
    scope = run_dialguard(["api", "token", "add", "x", "--scope", "admin"], env)
    assert scope.code == 1 and scope.err.count("\n") == 1

    assert run_dialguard(["api", "token", "remove", "crm"], env).code == 0
    assert read_tokens(path) == ()
    gone = run_dialguard(["api", "token", "remove", "crm"], env)
    assert gone.code == 1 and "no token named 'crm'" in gone.err


def test_token_commands_without_an_api_section_say_so(tmp_path: Path) -> None:
    config = tmp_path / "dialguard.toml"
    config.write_text(shipped_without_api())
    run = run_dialguard(["api", "token", "list"], {"DIALGUARD_CONFIG": str(config)})
    assert run.code == 1
    assert run.err == f"dialguard: {config}: no [api] section: the HTTP API is off (docs/api.md)\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "not JSON"),
        ('{"format": 2, "tokens": []}', "not a dialguard tokens file"),
        ('{"format": 1, "tokens": {}}', "tokens: must be a list"),
        (
            '{"format": 1, "tokens": [{"name": "a b", "sha256": "'
            + "0" * 64
            + '", "scopes": ["decide"]}]}',
            "name must be",
        ),
        (
            '{"format": 1, "tokens": [{"name": "a", "sha256": "'
            + "0" * 64
            + '", "scopes": ["root"]}]}',
            "scopes must be",
        ),
        (
            '{"format": 1, "tokens": [{"name": "a", "sha256": "' + "0" * 64 + '", "scopes": []}]}',
            "scopes must be",
        ),
    ],
)
def test_a_bad_tokens_file_is_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(BadTokens, match=re.escape(message)) as raised:
        read_tokens(path)
    assert str(raised.value).startswith(str(path)) and "\n" not in str(raised.value)


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    add_token(path, "a", ["decide"], "t")
    path.chmod(0o600)
    add_token(path, "b", ["read-audit"], "t")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [t.name for t in read_tokens(path)] == ["a", "b"]
