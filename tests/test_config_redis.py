"""`[redis]`: one server by URL, or Redis Sentinel (a redis+sentinel:// URL or a
`sentinels` list), TLS files, the password from a file or the environment, replicas_ack;
every bad value one line naming file and key, the password never in it; and the client
each form builds (dialguard.store.connect)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool

from dialguard.config import ConfigError, RedisSettings, load_config, parse_sentinel_url, redact_url
from dialguard.store.connect import client_for, close_client

ROOT = Path(__file__).resolve().parents[1]
SECRET = "S3cr3tPw"
REDIS_TABLE = """[redis]
url = "redis://127.0.0.1:6379/0"
prefix = "dialguard:"
timeout_ms = 250
"""


def write_config(tmp_path: Path, redis_table: str) -> Path:
    text = (ROOT / "config" / "dialguard.toml").read_text(encoding="utf-8")
    start = text.index("[redis]")
    end = text.index("[server]")
    body = "\n".join(
        line for line in text[start:end].splitlines() if line.startswith("#") or not line.strip()
    )
    text = text[:start] + redis_table + body + "\n" + text[end:]
    text = text.replace('file = "policy/france.toml"', f'file = "{ROOT}/config/policy/france.toml"')
    path = tmp_path / "dialguard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def settings(tmp_path: Path, table: str, env: dict[str, str] | None = None) -> RedisSettings:
    return load_config(write_config(tmp_path, table), env=env or {}).redis


def problem(tmp_path: Path, table: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path, table), env=env or {})
    message = str(caught.value)
    assert "\n" not in message and SECRET not in message and SECRET[:4] not in message
    return message


def test_the_sample_configuration_reads_one_server_without_replicas() -> None:
    redis = load_config(ROOT / "config" / "dialguard.toml", env={}).redis
    assert (redis.url, redis.sentinels, redis.replicas_ack, redis.tls) == (
        "redis://127.0.0.1:6379/0",
        (),
        0,
        False,
    )


def test_a_sentinel_url_names_sentinels_service_db_and_credentials() -> None:
    url = f"redis+sentinel://dialguard:{SECRET}%2Fx@10.0.0.1:26379,[::1]:26380,s3:1/main/2"
    parsed = parse_sentinel_url(url)
    assert parsed.sentinels == (("10.0.0.1", 26379), ("::1", 26380), ("s3", 1))
    assert (parsed.service_name, parsed.db, parsed.tls) == ("main", 2, False)
    assert (parsed.username, parsed.password) == ("dialguard", f"{SECRET}/x")
    assert parse_sentinel_url("rediss+sentinel://h:26379/main").tls
    assert (
        redact_url(url) == "redis+sentinel://dialguard:***@10.0.0.1:26379,[::1]:26380,s3:1/main/2"
    )


def test_sentinel_defaults_to_one_replica_acknowledging(tmp_path: Path) -> None:
    redis = settings(
        tmp_path,
        '[redis]\nurl = "redis+sentinel://s1:26379,s2:26379/main"\n',
    )
    assert redis.sentinels == (("s1", 26379), ("s2", 26379))
    assert redis.replicas_ack == 1
    listed = settings(
        tmp_path,
        '[redis]\nsentinels = ["s1:26379", "s2:26379"]\nservice_name = "main"\ndb = 3\n'
        "replicas_ack = 0\ntls = true\n",
    )
    assert listed.sentinels == (("s1", 26379), ("s2", 26379))
    assert (listed.service_name, listed.db, listed.tls) == ("main", 3, True)
    assert listed.replicas_ack == 0
    assert listed.url == "rediss+sentinel://s1:26379,s2:26379/main/3"


def test_the_environment_url_overrides_the_sentinels_list(tmp_path: Path) -> None:
    table = '[redis]\nsentinels = ["s1:26379"]\nservice_name = "main"\n'
    redis = settings(tmp_path, table, {"DIALGUARD_REDIS_URL": "redis://127.0.0.1:7000/0"})
    assert redis.sentinels == ()


def test_the_password_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    (tmp_path / "redis.secret").write_text(SECRET + "\n")
    from_file = settings(
        tmp_path, '[redis]\nurl = "redis://u@h:1/0"\npassword_file = "redis.secret"\n'
    )
    assert from_file.password == SECRET
    assert SECRET not in repr(from_file)
    from_env = settings(tmp_path, REDIS_TABLE, {"DIALGUARD_REDIS_PASSWORD": SECRET})
    assert from_env.password == SECRET


def test_the_sentinels_password_is_their_own(tmp_path: Path) -> None:
    (tmp_path / "sentinel.secret").write_text(SECRET + "\n")
    sentinel = '[redis]\nurl = "redis+sentinel://h:1/main"\n'
    from_file = settings(tmp_path, sentinel + 'sentinel_password_file = "sentinel.secret"\n')
    assert (from_file.sentinel_password, from_file.password) == (SECRET, None)
    assert SECRET not in repr(from_file)
    env = {"DIALGUARD_REDIS_SENTINEL_PASSWORD": SECRET}
    assert settings(tmp_path, sentinel, env).sentinel_password == SECRET


BAD = [
    (
        'url = "redis+sentinel://u:S3cr3tPw@h1:26379/main?x=1"',
        "redis.url: 'redis+sentinel://u:***@",
    ),
    ('url = "redis+sentinel://u:S3cr3tPw@h1:port/main"', 'each sentinel must be "host:port"'),
    ('url = "redis+sentinel://u:S3cr3tPw@h1:1,/main"', 'each sentinel must be "host:port"'),
    ('url = "redis+sentinel://u:S3cr3tPw@h1:1"', "/service_name[/db]"),
    ('url = "redis+sentinel://u:S3cr3tPw@h1:1/main/x"', "must be a number"),
    ('url = "redis+sentinel://u:S3cr/tPw@h1:1/main"', "percent-encode"),
    ('url = "redis://h:1/0"\nsentinels = ["h:26379"]', "redis.sentinels: give either url or"),
    ('sentinels = ["h"]\nservice_name = "m"', "redis.sentinels: 'h' is not \"host:port\""),
    ('sentinels = ["h:1"]', "redis.service_name: missing"),
    ('url = "redis://h:1/0"\nservice_name = "m"', "redis.service_name: only read with"),
    ('url = "redis://h:1/0"\ntls_ca_file = "dialguard.toml"', "redis.tls_ca_file: TLS is off"),
    ('url = "rediss://h:1/0"\ntls_ca_file = "missing.pem"', "missing.pem: no such file"),
    (
        'url = "rediss://h:1/0"\ntls_cert_file = "dialguard.toml"',
        "redis.tls_cert_file: a client certificate needs tls_key_file",
    ),
    ('url = "redis://h:1/0"\npassword_file = "nowhere"', "redis.password_file: "),
    (
        'url = "redis://h:1/0"\nsentinel_password_file = "dialguard.toml"',
        "redis.sentinel_password_file: a Sentinel password is only read with sentinels",
    ),
    (
        'url = "redis+sentinel://h:1/m"\nsentinel_password_file = "nowhere"',
        "redis.sentinel_password_file: ",
    ),
    ('url = "redis://h:1/0"\nreplicas_ack = 17', "redis.replicas_ack: 17 must be from 0 to 16"),
    ('url = "redis://h:1/0"\nreplica_ack = 1', "redis.replica_ack: unknown key"),
    ('url = "rediz+sentinel://u:S3cr3tPw@h:1/m"', "must start with redis://"),
]


@pytest.mark.parametrize(("table", "expected"), BAD)
def test_bad_redis_settings_say_file_key_and_fix(tmp_path: Path, table: str, expected: str) -> None:
    message = problem(tmp_path, f"[redis]\n{table}\n")
    assert message.startswith(str(tmp_path / "dialguard.toml") + ": redis."), message
    assert expected in message


def test_a_password_given_twice_is_refused(tmp_path: Path) -> None:
    message = problem(
        tmp_path,
        f'[redis]\nurl = "redis://u:{SECRET}@h:1/0"\n',
        {"DIALGUARD_REDIS_PASSWORD": SECRET},
    )
    assert "redis.password_file: the URL holds a password" in message


def test_a_bad_sentinel_url_in_the_environment_names_the_variable(tmp_path: Path) -> None:
    message = problem(
        tmp_path, REDIS_TABLE, {"DIALGUARD_REDIS_URL": f"redis+sentinel://u:{SECRET}@h/m"}
    )
    assert message.startswith("DIALGUARD_REDIS_URL: 'redis+sentinel://u:***@h/m'")


async def test_a_sentinel_client_asks_the_sentinels_for_the_named_primary(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not read until a connection is made")
    table = (
        f'[redis]\nurl = "rediss+sentinel://dialguard:{SECRET}@s1:26379,s2:26380/main/2"\n'
        'tls_ca_file = "ca.pem"\ntimeout_ms = 300\n'
    )
    client = client_for(settings(tmp_path, table), timeout_ms=900)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "main" and pool.is_master and pool.max_connections == 2048
    options = pool.connection_kwargs
    assert (options["db"], options["username"], options["password"]) == (2, "dialguard", SECRET)
    assert options["socket_timeout"] == options["socket_connect_timeout"] == 0.9
    assert options["ssl_ca_certs"] == str(tmp_path / "ca.pem")
    sentinels = [s.connection_pool.connection_kwargs for s in pool.sentinel_manager.sentinels]
    assert [(s["host"], s["port"]) for s in sentinels] == [("s1", 26379), ("s2", 26380)]
    # The sentinels answer under the same timeout, over TLS too: a hung one cannot hold a
    # decision past its deadline, nor be read in clear.
    assert all(s["socket_timeout"] == 0.9 and s["ssl_ca_certs"] for s in sentinels)
    await close_client(client)
