"""The three ways to install dialguard, as far as they are checked without Docker
(`make test-docker` builds and runs the image and docker-compose.yml):

- pip: the built wheel installed in a fresh virtualenv outside the source tree, its
  `dialguard` script run there (--help, an import, a check, `serve` answering FastAGI);
  an editable install would hide a module or a data file the wheel lacks;
- systemd: contrib/systemd/ passes `systemd-analyze verify` and stays hardened;
- containers: the container's configuration is the shipped one but for what it
  documents (listeners, journal, Redis).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.agi.asterisk_peer import run_session
from tests.redis_server import RedisServer, free_port
from tests.test_cli import toml_dumps
from tests.wheel import build_wheel

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "contrib" / "systemd"
EXEC = "/opt/dialguard/venv/bin/dialguard"  # where README.md installs the script


# --- pip: the wheel in a fresh virtualenv --------------------------------------------


class Installed:
    """A virtualenv holding the wheel alone, and a directory outside the source tree to
    run its `dialguard` from."""

    def __init__(self, home: Path, redis_url: str) -> None:
        self.home = home
        self.bin = home / "venv" / "bin"
        config = home / "etc" / "dialguard.toml"
        shutil.copytree(ROOT / "config" / "policy", config.parent / "policy")
        data = tomllib.loads((ROOT / "config" / "dialguard.toml").read_text(encoding="utf-8"))
        self.agi_port, self.metrics_port = free_port(), free_port()
        data["server"]["port"] = self.agi_port
        data["metrics"]["port"] = self.metrics_port
        self.api_port = data["api"]["port"] = free_port()
        data["audit"]["dir"] = str(home / "audit")
        config.write_text(toml_dumps(data), encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DIALGUARD_", "PYTHON"))}
        env.pop("VIRTUAL_ENV", None)
        self.env = {
            **env,
            "DIALGUARD_CONFIG": str(config),
            "DIALGUARD_REDIS_URL": redis_url,
            "PATH": f"{self.bin}{os.pathsep}{env.get('PATH', '')}",
        }

    def run(self, *args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "dialguard"), *map(str, args)],
            cwd=self.home,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built wheel installed, with its dependencies, in a new virtualenv."""
    home = tmp_path_factory.mktemp("installed")
    wheel = build_wheel(home / "dist")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        scripts = archive.read(entry_points).decode()
    assert "dialguard/py.typed" in names
    # The console's pages and static files, its vendored chart library with its licence.
    for data in ("templates/today.html", "templates/base.html", "static/console.css",
                 "static/console.js", "static/vendor/chart.umd.min.js",
                 "static/vendor/LICENSE.md"):  # fmt: skip
        assert f"dialguard/console/{data}" in names, data
    assert "dialguard/api/openapi.json" in names  # served at GET /v1/openapi.json
    name, version = wheel.name.split("-")[:2]
    assert {n.split("/")[0] for n in names} == {"dialguard", f"{name}-{version}.dist-info"}
    assert "dialguard = dialguard.cli:main" in scripts
    subprocess.run([sys.executable, "-m", "venv", home / "venv"], check=True)
    pip = subprocess.run(
        [home / "venv" / "bin" / "python", "-m", "pip", "install", "--quiet",
         "--disable-pip-version-check", "--no-compile", wheel],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr[-3000:]
    return home / "venv"


@pytest.fixture
def installed(venv: Path, tmp_path: Path, clean_redis: RedisServer) -> Installed:
    (tmp_path / "venv").symlink_to(venv)
    return Installed(tmp_path, clean_redis.url)


@pytest.fixture
def serving(installed: Installed) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [str(installed.bin / "dialguard"), "serve"],
        cwd=installed.home,
        env=installed.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + 30
        while not _answers(installed.agi_port):
            if proc.poll() is not None or time.monotonic() > end:
                proc.kill()
                _, err = proc.communicate()
                pytest.fail(f"serve did not listen (exit {proc.returncode}): {err[-2000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), 0.2):
            return True
    except OSError:
        return False


def test_the_wheel_runs_from_a_fresh_virtualenv(installed: Installed) -> None:
    where = subprocess.run(
        [installed.bin / "python", "-c", "import dialguard; print(dialguard.__file__)"],
        cwd=installed.home, env=installed.env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    module = Path(where.stdout.strip())
    assert module.is_relative_to(installed.home / "venv"), module  # not the source tree's
    assert not module.resolve().is_relative_to(ROOT), module

    helped = installed.run("--help")
    assert helped.returncode == 0, helped
    for command in ("check", "serve", "import", "audit", "reload", "console"):
        assert f"  {command} " in helped.stdout, helped.stdout

    imported = installed.run("import", "dnc", ROOT / "config" / "sample" / "dnc.csv")
    assert imported.returncode == 0, imported
    checked = installed.run("check", "06 12 34 56 78", "--campaign", "demo-survey", "--json")
    assert checked.returncode == 0, checked
    decision = json.loads(checked.stdout)
    assert (decision["result"], decision["reason"]) == ("DENY", "INTERNAL_DNC")
    assert decision["policy"]["name"] == "france"
    bad = installed.run("check", "0612345678", "--campaign", "no-such-campaign")
    assert bad.returncode == 1 and bad.stderr.startswith("dialguard: "), bad
    assert "Traceback" not in bad.stderr


def test_the_installed_service_answers_fastagi(
    installed: Installed, serving: subprocess.Popen[str]
) -> None:
    assert installed.run("dnc", "add", "0612345678", "--operator", "test").returncode == 0
    denied = asyncio.run(
        run_session("127.0.0.1", installed.agi_port, args=("0612345678", "demo-prospecting"))
    )
    assert not denied.dangerous, denied.dangerous
    assert denied.variables["DIALGUARD_RESULT"] == "DENY"
    assert denied.variables["DIALGUARD_REASON"] == "INTERNAL_DNC"
    allowed = asyncio.run(
        run_session("127.0.0.1", installed.agi_port, args=("112", "demo-prospecting"))
    )
    assert (allowed.variables["DIALGUARD_RESULT"], allowed.variables["DIALGUARD_REASON"]) == (
        "ALLOW",
        "EMERGENCY",
    )
    url = f"http://127.0.0.1:{installed.metrics_port}/healthz"
    with urllib.request.urlopen(url, timeout=5) as answer:
        assert answer.status == 200
    # The HTTP API: a token made by the installed command, taken by the running service.
    made = installed.run("api", "token", "add", "ops", "--scope", "read-audit")
    assert made.returncode == 0, made.stderr
    document = urllib.request.Request(
        f"http://127.0.0.1:{installed.api_port}/v1/openapi.json",
        headers={"Authorization": f"Bearer {made.stdout.splitlines()[-1]}"},
    )
    time.sleep(1.1)  # the service looks at the tokens file once a second
    with urllib.request.urlopen(document, timeout=5) as answer:
        assert json.load(answer)["openapi"] == "3.1.0"

    serving.send_signal(signal.SIGTERM)
    _, err = serving.communicate(timeout=30)
    assert serving.returncode == 0, err[-2000:]
    events = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert events[-1] == "stopped", events


# --- systemd ---------------------------------------------------------------------------


def _unit_files() -> list[Path]:
    return sorted(UNITS.glob("dialguard*.*"))


def _verify(units: Sequence[Path], cwd: Path) -> str:
    """`systemd-analyze verify`'s complaints (exit status and every line it prints)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze not found: run the tests through `make test`")
    done = subprocess.run(
        [analyze, "verify", *units], cwd=cwd, capture_output=True, text=True, check=False
    )
    return f"exit {done.returncode}: {done.stdout}{done.stderr}" if (
        done.returncode or done.stdout or done.stderr
    ) else ""  # fmt: skip


def _with_script(units: Sequence[Path], into: Path, replace: Mapping[str, str]) -> list[Path]:
    """Copies of the units whose ExecStart names a script that exists here (verify
    checks that the command is an executable file); `replace` changes more."""
    script = Path(sys.executable).parent / "dialguard"
    copies = []
    for unit in units:
        text = unit.read_text(encoding="utf-8").replace(EXEC, str(script))
        for old, new in replace.items():
            text = text.replace(old, new)
        copy = into / unit.name
        copy.write_text(text, encoding="utf-8")
        copies.append(copy)
    return copies


def test_systemd_units_verify(tmp_path: Path) -> None:
    units = _unit_files()
    assert [u.name for u in units] == [
        "dialguard-prune.service",
        "dialguard-prune.timer",
        "dialguard.service",
    ]
    assert _verify(_with_script(units, tmp_path, {}), tmp_path) == ""
    # ...and the check sees a mistake: a misspelt value, a script that is not there.
    broken = tmp_path / "broken"
    broken.mkdir()
    typo = _with_script(units, broken, {"ProtectSystem=strict": "ProtectSystem=strikt"})
    assert "ignoring: strikt" in _verify(typo, broken)
    assert "is not executable" in _verify(units, tmp_path)  # EXEC does not exist here


def _directives(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_systemd_service_is_confined_to_its_journal(tmp_path: Path) -> None:
    service = _directives(UNITS / "dialguard.service")
    assert service["ExecStart"] == [f"{EXEC} serve"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert service["User"] == ["dialguard"] and service["Restart"] == ["on-failure"]
    assert service["ProtectSystem"] == ["strict"] and service["NoNewPrivileges"] == ["yes"]
    assert service["ReadWritePaths"] == ["/var/lib/dialguard"]
    assert service["Environment"] == ["DIALGUARD_CONFIG=/etc/dialguard/dialguard.toml"]
    prune = _directives(UNITS / "dialguard-prune.service")
    assert prune["ExecStart"] == [f"{EXEC} audit prune", f"{EXEC} central prune"]
    assert prune["ReadWritePaths"] == ["/var/lib/dialguard"]
    assert _directives(UNITS / "dialguard-prune.timer")["Persistent"] == ["true"]

    # systemd's own score of the sandbox (0 safe .. 10 exposed): keep it under 2.
    services = [UNITS / "dialguard.service", UNITS / "dialguard-prune.service"]
    for copy in _with_script(services, tmp_path, {}):
        scored = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", "--threshold=20", copy],
            cwd=tmp_path, capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert scored.returncode == 0, scored.stdout[-1500:] + scored.stderr


# --- containers ------------------------------------------------------------------------


def _toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def test_the_container_configuration_is_the_shipped_one_but_where_it_says() -> None:
    shipped = _toml(ROOT / "config" / "dialguard.toml")
    container = _toml(ROOT / "contrib" / "docker" / "dialguard.toml")
    assert container["server"]["host"] == container["metrics"]["host"] == "0.0.0.0"
    assert container["api"]["host"] == "0.0.0.0"
    assert container["api"]["tokens_file"] == "/var/lib/dialguard/api-tokens.json"  # the volume
    assert container["console"]["host"] == "0.0.0.0"
    assert container["audit"]["dir"] == "/var/lib/dialguard/audit"  # the image's VOLUME
    assert container["redis"]["url"] == "redis://redis:6379/0"  # the compose service
    assert container["central"]["path"] == "/var/lib/dialguard/central.sqlite3"  # the volume
    # Not loopback: allow is required; the host's port mapping is the boundary.
    assert container["server"].pop("allow") == ["0.0.0.0/0", "::/0"]
    assert "allow" not in shipped["server"]
    differ = (
        ("server", "host"),
        ("metrics", "host"),
        ("console", "host"),
        ("audit", "dir"),
        ("redis", "url"),
        ("central", "path"),
        ("api", "host"),
        ("api", "tokens_file"),
    )
    for table, key in differ:
        del shipped[table][key], container[table][key]
    assert container == shipped
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert 'VOLUME ["/var/lib/dialguard"]' in dockerfile
    assert "EXPOSE 4573 9573 8575" in dockerfile
