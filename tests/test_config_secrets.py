"""A Redis URL holding a password: no message, on stdout or stderr, ever shows it.

Through the `dialguard` command's own main() (tests/cli_runner.py), with the URL in
DIALGUARD_REDIS_URL or in the configuration file: unreachable, malformed, and with the
characters that make a URL parser take part of the password for the host or the port (an
unencoded '/' or '#').
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dialguard.config import redact_url
from tests.cli_runner import Result, run_dialguard

ROOT = Path(__file__).resolve().parents[1]
SECRET = "S3cr3tPw"
# Unreachable: nothing listens on port 1.
UNREACHABLE = f"redis://dialguard:{SECRET}@127.0.0.1:1/0"
BAD_URLS = [
    (UNREACHABLE, 2),
    (f"rediz://dialguard:{SECRET}@127.0.0.1:1/0", 1),
    (f"redis://dialguard:{SECRET}@127.0.0.1:port/0", 1),
    (f"redis://dialguard:{SECRET}@127.0.0.1:1/0?socket_timeout=soon", 1),
    # redis-py took "7391" for the port of host "dialguard" and said so on every call.
    (f"redis://dialguard:7391/{SECRET}@127.0.0.1:1/0", 1),
    (f"redis://dialguard:{SECRET[:4]}#{SECRET[4:]}@127.0.0.1:1/0", 1),
    (f"redis://:{SECRET}", 1),
]


def write_config(tmp_path: Path, url: str | None = None) -> Path:
    text = (ROOT / "config" / "dialguard.toml").read_text(encoding="utf-8")
    text = text.replace('dir = "../var/audit"', f'dir = "{tmp_path / "audit"}"')
    text = text.replace(
        'file = "policy/france.toml"', f'file = "{ROOT / "config/policy/france.toml"}"'
    )
    if url is not None:
        text = text.replace('url = "redis://127.0.0.1:6379/0"', f'url = "{url}"')
    path = tmp_path / "dialguard.toml"
    path.write_text(text, encoding="utf-8")
    return path


def dialguard(config: Path, *args: str, url: str | None) -> Result:
    env = {"DIALGUARD_CONFIG": str(config), "COLUMNS": "200"}
    if url is not None:
        env["DIALGUARD_REDIS_URL"] = url
    return run_dialguard(args, env)


def assert_no_secret(run: Result, code: int) -> str:
    assert "Traceback" not in run.err, run
    assert run.code == code, run
    (line,) = run.err.splitlines()
    assert line.startswith("dialguard: "), run
    for part in (SECRET, SECRET[:4], SECRET[4:], "7391"):
        assert part not in run.out + run.err, (part, run)
    return line


@pytest.mark.parametrize(("url", "code"), BAD_URLS)
def test_check_never_shows_the_redis_password(tmp_path: Path, url: str, code: int) -> None:
    config = write_config(tmp_path)
    run = dialguard(config, "check", "0612345678", "--campaign", "demo-prospecting", url=url)
    line = assert_no_secret(run, code)
    if code == 1:
        assert "DIALGUARD_REDIS_URL: 'r" in line and ":***" in line


def test_a_recorded_decision_keeps_no_password_either(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    url = f"redis://dialguard:7391/{SECRET}@127.0.0.1:1/0"
    for args in (
        ["check", "0612345678", "--campaign", "demo-prospecting", "--record"],
        ["outcome", "0612345678", "refused", "--campaign", "demo-prospecting"],
        ["dnc", "add", "0612345678"],
    ):
        assert_no_secret(dialguard(config, *args, url=url), 1)
    journal = tmp_path / "audit"
    texts = [path.read_text() for path in journal.glob("*")] if journal.exists() else []
    assert not any(SECRET in text or "7391" in text for text in texts)


def test_the_url_in_the_configuration_file_is_redacted_too(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"redis://dialguard:{SECRET}@127.0.0.1:port/0")
    run = dialguard(config, "check", "0612345678", "--campaign", "demo-prospecting", url=None)
    line = assert_no_secret(run, 1)
    assert f"{config}: redis.url: 'redis://dialguard:***@127.0.0.1:port/0'" in line


def test_redact_url() -> None:
    assert redact_url("redis://u:pw@host:6379/0") == "redis://u:***@host:6379/0"
    assert redact_url("redis://pw@host") == "redis://***@host"
    assert redact_url("redis://u:p/w@host/0") == "redis://u:***@host/0"
    assert redact_url("unix://u:pw@/run/redis.sock") == "unix://u:***@/run/redis.sock"
    assert redact_url("redis://:pw") == "redis://:***"
    assert redact_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert redact_url("redis://[::1]:6379/0") == "redis://[::1]:6379/0"
