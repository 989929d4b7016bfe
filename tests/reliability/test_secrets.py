"""No secret is ever logged or echoed (docs/security.md): a Redis password, an ARI
password and an export mask key are planted, the real commands are made to fail in the
ways an operator meets (Redis refusing the password, ARI answering 401, a call decided
without Redis, an export), and every byte they wrote (stdout, stderr, the structured
log, the audit journal, the export) is searched for each secret and for its halves.

tests/test_config_secrets.py does the same for passwords inside Redis URLs.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.agi.asterisk_peer import run_session
from tests.ari.fake_ari import FakeAri
from tests.redis_server import running_redis
from tests.reliability.served import HOST, dialguard_serve

REDIS_SECRET = "RedisPw-7f3a9c1e5b"
ARI_SECRET = "AriPw-d41d8cd98f"
MASK_SECRET = "MaskKey-0123456789abcdef"
SECRETS = (REDIS_SECRET, ARI_SECRET, MASK_SECRET)


def fragments() -> Iterator[str]:
    for secret in SECRETS:
        yield secret
        yield secret[: len(secret) // 2]
        yield secret[len(secret) // 2 :]


def everything_written(*texts: str, directories: tuple[Path, ...] = ()) -> str:
    parts = list(texts)
    for directory in directories:
        for path in sorted(directory.rglob("*")):
            if path.is_file() and not path.name.startswith("secret"):
                parts.append(path.read_bytes().decode("utf-8", "replace"))
    return "\n".join(parts)


def assert_no_secret(written: str) -> None:
    assert written  # something was written, so the search means something
    for part in fragments():
        assert part not in written, part


def cli(config: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    environment |= {"DIALGUARD_CONFIG": str(config), "COLUMNS": "200", **env}
    command = [str(Path(sys.executable).parent / "dialguard"), *args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, check=False)


async def test_no_secret_in_any_output(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret-redis"
    secret_file.write_text(REDIS_SECRET + "\n", encoding="utf-8")
    secret_file.chmod(0o600)
    outputs: list[str] = []
    # Redis asks for another password: every call to it is refused (WRONGPASS).
    with running_redis(acl=False) as server:
        with redis.Redis(host="127.0.0.1", port=server.port) as admin:
            admin.config_set("requirepass", "not-the-planted-one")
        url = f"redis://127.0.0.1:{server.port}/0"
        redis_file = {"DIALGUARD_REDIS_PASSWORD": REDIS_SECRET}
        async with dialguard_serve(tmp_path / "serve", url, env=redis_file) as served:
            result = await run_session(HOST, served.port, args=("0612345678", "demo-survey"))
            variables = result.variables
            assert (variables["DIALGUARD_RESULT"], variables["DIALGUARD_REASON"]) == (
                "DENY",
                "STORE_UNAVAILABLE",
            )
            outcome = await run_session(
                HOST,
                served.port,
                script="outcome",
                args=("0612345678", "do-not-call", "demo-survey"),
            )
            assert outcome.variables["DIALGUARD_OUTCOME"] == "PENDING"
            assert served.stop() == 0
            config = served.directory / "dialguard.toml"
            assert served.events("redis_unavailable_at_start")
            outputs.append(served.stderr.read_text(encoding="utf-8"))
        env = {"DIALGUARD_REDIS_URL": url, "DIALGUARD_REDIS_PASSWORD": REDIS_SECRET}
        runs = [
            cli(config, "check", "0612345678", "--campaign", "demo-survey", env=env),
            cli(config, "dnc", "add", "0612345678", env=env),
            cli(config, "audit", "pending", env=env),
            cli(config, "lists", "status", env=env),
        ]
        sample = Path(__file__).resolve().parents[2] / "config" / "sample" / "dnc.csv"
        runs.append(cli(config, "import", "dnc", str(sample), "--replace", env=env))
        # The password from a file named in the configuration instead.
        text = config.read_text(encoding="utf-8")
        config.write_text(
            text.replace("[redis]\n", f"[redis]\npassword_file = {json.dumps(str(secret_file))}\n"),
            encoding="utf-8",
        )
        runs.append(cli(config, "check", "0612345678", "--campaign", "demo-survey",
                        env={"DIALGUARD_REDIS_URL": url}))  # fmt: skip
    for run in runs:
        assert run.returncode in (0, 2), run  # 2: Redis unavailable; 0: check fails closed
        assert "Traceback" not in run.stderr, run
        outputs += [run.stdout, run.stderr]
    assert any("WRONGPASS" in o or "invalid username-password" in o for o in outputs), outputs

    # ARI: Asterisk refuses the planted password (401): serve stops, in one line.
    ari = FakeAri({"dialguard": "not-the-planted-one"})
    await ari.start()
    try:
        with running_redis(acl=False) as server:
            ari_config = (
                f'\n[ari]\nurl = "http://127.0.0.1:{ari.port}"\napp = "dialguard"\n'
                'user = "dialguard"\n'
            )
            env = {"DIALGUARD_REDIS_URL": server.url, "DIALGUARD_ARI_PASSWORD": ARI_SECRET}
            ari_dir = tmp_path / "ari"
            ari_dir.mkdir()
            config = ari_dir / "dialguard.toml"
            config.write_text(
                (tmp_path / "serve" / "dialguard.toml").read_text(encoding="utf-8") + ari_config,
                encoding="utf-8",
            )
            # In a thread: the fake ARI answers on this event loop.
            refused = await asyncio.to_thread(cli, config, "serve", env=env)
    finally:
        await ari.stop()
    assert refused.returncode == 1, refused
    (line,) = refused.stderr.strip().splitlines()[-1:]
    assert "401" in line and "dialguard" in line, refused.stderr
    assert ari.rejected >= 1
    outputs += [refused.stdout, refused.stderr]

    # The export mask key: a masked export, and one whose key file cannot be read.
    audit_dir = tmp_path / "serve" / "audit"
    exported = tmp_path / "export" / "out.jsonl"
    exported.parent.mkdir()
    mask_env = {"DIALGUARD_AUDIT_MASK_KEY": MASK_SECRET}
    export = cli(config, "audit", "export", "--mask", "--out", str(exported),
                 "--dir", str(audit_dir), env=mask_env)  # fmt: skip
    assert export.returncode == 0, export
    assert "0612345678" not in exported.read_text(encoding="utf-8")  # masked
    nope = str(tmp_path / "nope")
    missing = cli(config, "audit", "export", "--mask", "--out", str(exported), "--dir",
                  str(audit_dir), "--mask-key-file", nope, env=mask_env)  # fmt: skip
    assert missing.returncode == 1, missing
    outputs += [export.stdout, export.stderr, missing.stdout, missing.stderr]

    written = everything_written(*outputs, directories=(tmp_path,))
    assert_no_secret(written)


@pytest.mark.parametrize("secret", SECRETS)
def test_the_search_finds_a_planted_secret(secret: str) -> None:
    for leaked in (secret, secret[: len(secret) // 2], f"x{secret[len(secret) // 2 :]}y"):
        with pytest.raises(AssertionError):
            assert_no_secret(f'{{"event": "failed", "error": "{leaked}"}}')
