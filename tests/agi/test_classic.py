"""The classic AGI script (agi/dialguard.agi) run as Asterisk runs it: exec'd through its
shebang, the agi_* block on stdin, each command read from stdout and answered on stdin.

Asterisk's side is played by `fake_asterisk` below, which splits each command with the
port of res_agi.c's parse_args() from the FastAGI peer. Every test that expects an answer
uses a decision that does not depend on the clock (emergency, invalid number, unknown
campaign, a non-commercial campaign, Redis down) except one, which pins the time through
`main(clock=...)` in a subprocess: the production script has no way to set its time.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.agi.asterisk_peer import agi_env, encode_block, parse_args
from tests.journal import audit_records
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).parent.parent.parent
SCRIPT = ROOT / "agi" / "dialguard.agi"
OUTCOME_SCRIPT = ROOT / "agi" / "dialguard-outcome.agi"
VENV_BIN = Path(sys.executable).parent
CHECK_VARIABLES = ["DIALGUARD_RESULT", "DIALGUARD_REASON", "DIALGUARD_ID", "DIALGUARD_NUMBER"]
OK = b"200 result=1\n"
PINNED = (
    "import sys; from datetime import datetime; from dialguard.agi.classic import main; "
    "sys.exit(main(clock=lambda: datetime.fromisoformat('2026-11-30T11:00:00+01:00')))"
)


@dataclass
class Run:
    returncode: int
    variables: dict[str, str] = field(default_factory=dict)
    commands: list[tuple[str, ...]] = field(default_factory=list)
    stdout: bytes = b""
    stderr: str = ""

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.splitlines()


def classic_block(
    args: Sequence[str], request: str = "dialguard.agi", **overrides: str | None
) -> list[bytes]:
    """The block Asterisk writes for AGI(request,args): the FastAGI one minus agi_network*."""
    env = agi_env(
        "127.0.0.1",
        0,
        script=request,
        args=args,
        env_overrides={
            "agi_network": None,
            "agi_network_script": None,
            "agi_request": request,
            **overrides,
        },
        session=7,
    )
    assert not any(key.startswith("agi_network") for key in env)
    return encode_block(env)


def fake_asterisk(
    argv: Sequence[str],
    env: Mapping[str, str],
    stdin_chunks: Sequence[bytes],
    *,
    before_first_reply: bytes = b"",
    sighup_after_first_command: bool = False,
    reply: bytes = OK,
    close_stdin: bool = False,
) -> Run:
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    run = Run(returncode=-1)
    try:
        for chunk in stdin_chunks:  # Asterisk: one write per line
            process.stdin.write(chunk)
            process.stdin.flush()
        if close_stdin:
            process.stdin.close()
        while line := process.stdout.readline():
            run.stdout += line
            words = tuple(w.decode() for w in parse_args(line.rstrip(b"\n")))
            run.commands.append(words)
            if words[:2] == ("SET", "VARIABLE") and len(words) == 4:
                run.variables[words[2]] = words[3]
            if len(run.commands) == 1:
                if sighup_after_first_command:
                    process.send_signal(signal.SIGHUP)
                process.stdin.write(before_first_reply)
            process.stdin.write(reply)
            process.stdin.flush()
    except (BrokenPipeError, ValueError):  # the script left early: what it said is kept
        pass
    run.stdout += process.stdout.read()
    run.stderr = process.stderr.read().decode()
    run.returncode = process.wait(timeout=20)
    for pipe in (process.stdin, process.stdout, process.stderr):
        if not pipe.closed:
            pipe.close()
    return run


def write_config(
    directory: Path,
    *,
    session_timeout_ms: int = 10_000,
    campaign_from_accountcode: bool = False,
) -> Path:
    policy = ROOT / "config" / "policy" / "france.toml"
    path = directory / "dialguard.toml"
    path.write_text(
        f"""
node = "test-node"
[redis]
url = "redis://127.0.0.1:1/0"  # DIALGUARD_REDIS_URL overrides it
timeout_ms = 250
[server]
# Generous: a loaded test machine must not turn the answers below into DEADLINE.
deadline_ms = 5000
session_timeout_ms = {session_timeout_ms}
campaign_from_accountcode = {str(campaign_from_accountcode).lower()}
[audit]
dir = "{directory / "audit"}"
[policy]
file = "{policy}"
[campaigns.demo-prospecting]
principal = "ACME"
purpose = "prospecting"
[campaigns.demo-press]
principal = "ACME"
purpose = "press"
[campaigns.demo-survey]
principal = "ACME"
purpose = "non_commercial"
"""
    )
    return path


def script_env(config: Path, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    # The shebang is `#!/usr/bin/env python3`: put this virtualenv's python first, as a
    # production install points the shebang at its virtualenv.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DIALGUARD_CONFIG"] = str(config)
    env["DIALGUARD_REDIS_URL"] = redis_url
    return env


@pytest.fixture
def env(tmp_path: Path, clean_redis: RedisServer) -> dict[str, str]:
    return script_env(write_config(tmp_path), clean_redis.url)


def check(env: Mapping[str, str], number: str, campaign: str) -> Run:
    return fake_asterisk([str(SCRIPT)], env, classic_block([number, campaign]))


def assert_check_answered(run: Run) -> None:
    assert run.returncode == 0, run.stderr
    assert [c[:3] for c in run.commands] == [("SET", "VARIABLE", n) for n in CHECK_VARIABLES]
    assert "Traceback" not in run.stderr


# --- the script as installed -----------------------------------------------------------------


def test_script_is_an_executable_python_file_and_outcome_is_its_symlink() -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env python3\n")
    assert OUTCOME_SCRIPT.is_symlink()
    assert OUTCOME_SCRIPT.resolve() == SCRIPT.resolve()


# --- check: the four variables ---------------------------------------------------------------


def test_emergency_number_is_allowed(env: dict[str, str], tmp_path: Path) -> None:
    run = check(env, "112", "demo-prospecting")
    assert_check_answered(run)
    assert run.variables["DIALGUARD_RESULT"] == "ALLOW"
    assert run.variables["DIALGUARD_REASON"] == "EMERGENCY"
    assert run.variables["DIALGUARD_NUMBER"] == "112"
    (record,) = audit_records(tmp_path / "audit")
    assert record["id"] == run.variables["DIALGUARD_ID"]
    assert record["adapter"] == "classic-agi"
    assert record["uniqueid"].endswith(".7")
    assert record["channel"] == "Local/112@outbound-00000007;2"


def test_invalid_number_is_denied(env: dict[str, str]) -> None:
    run = check(env, "12", "demo-prospecting")
    assert_check_answered(run)
    assert run.variables["DIALGUARD_RESULT"] == "DENY"
    assert run.variables["DIALGUARD_REASON"] == "INVALID_NUMBER"
    assert run.variables["DIALGUARD_NUMBER"] == ""


def test_unknown_campaign_is_denied(env: dict[str, str]) -> None:
    run = check(env, "0612345678", "no-such-campaign")
    assert_check_answered(run)
    assert run.variables["DIALGUARD_RESULT"] == "DENY"
    assert run.variables["DIALGUARD_REASON"] == "UNKNOWN_CAMPAIGN"


def test_non_commercial_call_reads_redis_and_is_allowed(env: dict[str, str]) -> None:
    run = check(env, "06 12 34 56 78", "demo-survey")
    assert_check_answered(run)
    assert run.variables["DIALGUARD_RESULT"] == "ALLOW"
    assert run.variables["DIALGUARD_REASON"] == "NON_COMMERCIAL"
    assert run.variables["DIALGUARD_NUMBER"] == "+33612345678"


def test_press_call_at_a_pinned_time_is_allowed_and_counted(
    env: dict[str, str], tmp_path: Path
) -> None:
    # Same code path as the script; only the clock is pinned, from Python.
    argv = [sys.executable, "-c", PINNED]
    run = fake_asterisk(argv, env, classic_block(["0612345678", "demo-press"]))
    assert_check_answered(run)
    assert run.variables["DIALGUARD_RESULT"] == "ALLOW"
    assert run.variables["DIALGUARD_REASON"] == "PRESS"
    (record,) = audit_records(tmp_path / "audit")
    assert record["attempts_30d"] == 1
    assert record["local_time"].startswith("2026-11-30T11:00")


def test_campaign_from_accountcode(tmp_path: Path, clean_redis: RedisServer) -> None:
    env = script_env(write_config(tmp_path, campaign_from_accountcode=True), clean_redis.url)
    block = classic_block(["0612345678"], agi_accountcode="demo-survey")
    run = fake_asterisk([str(SCRIPT)], env, block)
    assert_check_answered(run)
    assert run.variables["DIALGUARD_REASON"] == "NON_COMMERCIAL"


def test_redis_down_fails_closed_with_an_answer(tmp_path: Path) -> None:
    env = script_env(write_config(tmp_path), f"redis://127.0.0.1:{free_port()}/0")
    run = check(env, "0612345678", "demo-survey")
    assert_check_answered(run)
    assert run.variables["DIALGUARD_RESULT"] == "DENY"
    assert run.variables["DIALGUARD_REASON"] == "STORE_UNAVAILABLE"
    (record,) = audit_records(tmp_path / "audit")
    assert record["degraded"]


# --- outcome mode: the symlinked name ------------------------------------------------------


def test_do_not_call_outcome_then_the_next_check_is_denied(env: dict[str, str]) -> None:
    block = classic_block(
        ["0612345678", "do-not-call", "demo-survey"], request="dialguard-outcome.agi"
    )
    run = fake_asterisk([str(OUTCOME_SCRIPT)], env, block)
    assert run.returncode == 0, run.stderr
    assert run.variables["DIALGUARD_OUTCOME"] == "RECORDED"
    assert run.variables["DIALGUARD_ID"]
    again = check(env, "0612345678", "demo-survey")
    assert_check_answered(again)
    assert again.variables["DIALGUARD_RESULT"] == "DENY"
    assert again.variables["DIALGUARD_REASON"] == "INTERNAL_DNC"


def test_outcome_with_a_bad_kind_is_invalid(env: dict[str, str]) -> None:
    block = classic_block(["0612345678", "maybe", "demo-survey"], request="dialguard-outcome.agi")
    run = fake_asterisk([str(OUTCOME_SCRIPT)], env, block)
    assert run.returncode == 0, run.stderr
    assert run.variables == {"DIALGUARD_OUTCOME": "INVALID"}


# --- hangups -------------------------------------------------------------------------------


def test_interleaved_hangup_line_is_not_taken_for_a_reply(env: dict[str, str]) -> None:
    block = classic_block(["112", "demo-prospecting"])
    run = fake_asterisk([str(SCRIPT)], env, block, before_first_reply=b"HANGUP\n")
    assert_check_answered(run)
    assert run.variables["DIALGUARD_RESULT"] == "ALLOW"


def test_sighup_from_asterisk_does_not_kill_the_session(env: dict[str, str]) -> None:
    # What Asterisk really does to a classic script when the channel hangs up.
    block = classic_block(["112", "demo-prospecting"])
    run = fake_asterisk([str(SCRIPT)], env, block, sighup_after_first_command=True)
    assert_check_answered(run)


# --- failures: one line on stderr, nothing on stdout, non-zero exit ------------------------


@pytest.mark.parametrize(
    "stdin",
    [
        pytest.param(b"", id="eof"),
        pytest.param(b"hello world\n\n", id="not-a-block"),
        pytest.param(b"agi_request: dialguard.agi\nagi_arg_1: 0612\x00\n\n", id="nul"),
        pytest.param(b"\xff\xfe garbage\r\n\n", id="binary"),
        pytest.param(b"agi_request: dialguard.agi\nagi_arg_1: 0612345678\n", id="cut-block"),
        pytest.param(b"agi_arg_1: 112\n\n", id="no-agi_request"),
        pytest.param(b"x" * 20_000, id="endless-line"),
    ],
)
def test_garbage_on_stdin(env: dict[str, str], stdin: bytes) -> None:
    run = fake_asterisk([str(SCRIPT)], env, [stdin], close_stdin=True)
    assert run.returncode == 1
    assert run.stdout == b""
    assert len(run.stderr_lines) == 1, run.stderr
    assert run.stderr.startswith("dialguard.agi: ")


def test_garbage_reply_ends_the_session(env: dict[str, str]) -> None:
    run = fake_asterisk(
        [str(SCRIPT)], env, classic_block(["112", "demo-prospecting"]), reply=b"bogus\n"
    )
    assert run.returncode == 1
    assert len(run.commands) == 1  # no second command after a reply it cannot read
    assert len(run.stderr_lines) == 1, run.stderr
    assert "Traceback" not in run.stderr


def test_no_audit_record_no_answer(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "audit").write_text("a file where the audit directory should be")
    run = check(env, "112", "demo-prospecting")
    assert run.returncode == 2
    assert run.stdout == b""  # the decision reached nobody: nothing set
    assert len(run.stderr_lines) == 1, run.stderr
    assert "cannot write the audit record" in run.stderr


def test_bad_configuration(tmp_path: Path, clean_redis: RedisServer) -> None:
    env = script_env(tmp_path / "missing.toml", clean_redis.url)
    run = check(env, "112", "demo-prospecting")
    assert run.returncode == 1
    assert run.stdout == b""
    assert run.stderr_lines == [
        f"dialguard.agi: {tmp_path / 'missing.toml'}: file not found "
        "(set DIALGUARD_CONFIG or --config)"
    ]


def test_a_python_without_dialguard_is_one_line(env: dict[str, str]) -> None:
    system = shutil.which("python3", path="/usr/bin:/bin")
    probe = [system or "false", "-c", "import dialguard"]
    if system is None or subprocess.run(probe, stderr=subprocess.DEVNULL).returncode == 0:
        pytest.skip("no system python3 without dialguard")
    run = check({**env, "PATH": "/usr/bin:/bin"}, "112", "demo-prospecting")
    assert run.returncode == 1
    assert run.stdout == b""
    assert len(run.stderr_lines) == 1, run.stderr
    assert "is the shebang the virtualenv's python?" in run.stderr


def test_a_silent_asterisk_cannot_hold_the_script(tmp_path: Path, clean_redis: RedisServer) -> None:
    env = script_env(write_config(tmp_path, session_timeout_ms=300), clean_redis.url)
    half_block = classic_block(["112", "demo-prospecting"])[:3]  # then nothing, pipe open
    run = fake_asterisk([str(SCRIPT)], env, half_block)
    assert run.returncode == 3
    assert run.stdout == b""
    assert run.stderr_lines == [
        "dialguard.agi: session_timeout_ms passed; exiting without an answer"
    ]
