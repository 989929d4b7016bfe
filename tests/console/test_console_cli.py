"""`dialguard console user add|list|remove` and `dialguard console`'s start-up errors:
one line and an exit code, never a traceback; the password never printed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.cli_runner import run_dialguard
from tests.console.site import ROOT
from tests.test_cli import toml_dumps

CONFIG = {
    "node": "n1",
    "audit": {"dir": "audit"},
    "policy": {"file": str(ROOT / "config" / "policy" / "france.toml")},
    "campaigns": {"demo": {"principal": "ACME", "purpose": "prospecting"}},
}


def config(tmp_path: Path, **console: object) -> Path:
    path = tmp_path / "dialguard.toml"
    data = {**CONFIG, **({"console": console} if console else {})}
    path.write_text(toml_dumps(data), encoding="utf-8")
    return path


def test_users_are_added_listed_and_removed(tmp_path: Path) -> None:
    path = config(tmp_path)
    added = run_dialguard(
        ["console", "user", "add", "alice", "--role", "compliance", "--password-stdin",
         "--config", path],
        stdin="a long secret phrase\n",
    )  # fmt: skip
    assert added.code == 0, added
    users = tmp_path / "console-users.json"  # the data directory: beside the audit directory
    assert str(users) in added.out and "a long secret phrase" not in added.out + added.err
    assert users.stat().st_mode & 0o777 == 0o600
    listed = run_dialguard(["console", "user", "list", "--json", "--config", path])
    rows = [json.loads(line) for line in listed.out.splitlines()]
    assert [(row["name"], row["role"]) for row in rows] == [("alice", "compliance")]
    assert "hash" not in listed.out and "argon2" not in listed.out
    again = run_dialguard(
        ["console", "user", "add", "alice", "--role", "viewer", "--password-stdin",
         "--config", path],
        stdin="another long phrase\n",
    )  # fmt: skip
    assert again.code == 1 and "already a user" in again.err and len(again.err.splitlines()) == 1
    removed = run_dialguard(["console", "user", "remove", "alice", "--config", path])
    assert removed.code == 0, removed
    gone = run_dialguard(["console", "user", "remove", "alice", "--config", path])
    assert gone.code == 1 and gone.err.startswith("dialguard: alice: no such user")
    assert "no console user" in run_dialguard(["console", "user", "list", "--config", path]).out


def test_a_prompted_password_is_asked_twice(tmp_path: Path) -> None:
    path = config(tmp_path, users_file="people.json")
    added = run_dialguard(
        ["console", "user", "add", "bob", "--role", "viewer", "--config", path],
        stdin="bob's long password\nbob's long password\n",
    )
    assert added.code == 0, added
    assert (tmp_path / "people.json").exists()  # [console] users_file, relative to the file
    mismatch = run_dialguard(
        ["console", "user", "add", "carol", "--role", "viewer", "--config", path],
        stdin="one password here\nanother one here\none password here\none password here\n",
    )
    assert mismatch.code == 0  # asked again until both match, as a terminal would


def test_bad_users_are_one_line(tmp_path: Path) -> None:
    path = config(tmp_path)
    for args, stdin, said in (
        (["add", "bad name!", "--role", "viewer"], "long enough pass\n", "a user name is"),
        (["add", "dan", "--role", "viewer"], "short\n", "too short"),
        (["add", "dan", "--role", "admin"], "long enough pass\n", "admin"),
    ):
        done = run_dialguard(
            ["console", "user", *args, "--password-stdin", "--config", path], stdin=stdin
        )
        assert done.code == 1 and said in done.err and len(done.err.splitlines()) == 1, done
        assert "Traceback" not in done.err


def test_a_bad_console_section_is_one_line(tmp_path: Path) -> None:
    for console, said in (
        ({"port": 70000}, "console.port: 70000 is not a TCP port"),
        ({"idle_minutes": 2000, "session_hours": 1}, "longer than session_hours"),
        ({"colour": "blue"}, "console.colour: unknown key"),
        ({"secure_cookies": "yes"}, "console.secure_cookies: 'yes' is not a bool"),
    ):
        path = config(tmp_path, **console)
        done = run_dialguard(["console", "user", "list", "--config", path])
        assert done.code == 1 and said in done.err, (console, done)


def test_the_console_says_when_its_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = config(tmp_path, port=port)
        done = subprocess.run(
            [Path(sys.executable).parent / "dialguard", "console", "--config", path],
            capture_output=True, text=True, timeout=60, check=False,
            env={"PATH": "/usr/bin:/bin", "DIALGUARD_REDIS_URL": "redis://127.0.0.1:1/0"},
        )  # fmt: skip
    assert done.returncode == 2, done
    assert f"dialguard: console: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
