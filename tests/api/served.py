"""A real `dialguard serve` with an [api] section, in a process of its own, for the tests
that need the whole service (workers, the property tests)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dialguard.api.tokens import SCOPES, add_token
from tests.agi.test_server import write_serve_config
from tests.redis_server import free_port


@dataclass
class ServedApi:
    process: subprocess.Popen[bytes]
    directory: Path
    agi_port: int
    api_port: int
    token: str  # every scope

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def tokens_file(self) -> Path:
        return self.directory / "api-tokens.json"

    def events(self, name: str) -> list[dict[str, Any]]:
        lines = (self.directory / "stderr.log").read_text().splitlines()
        return [e for e in map(json.loads, filter(None, lines)) if e.get("event") == name]


@contextlib.contextmanager
def serving_api(directory: Path, redis_url: str, workers: int = 1) -> Iterator[ServedApi]:
    directory.mkdir(parents=True, exist_ok=True)
    agi_port, api_port = free_port(), free_port()
    tokens_file = directory / "api-tokens.json"
    token = add_token(tokens_file, "everything", SCOPES, "test")
    extra = f'[api]\nport = {api_port}\ntokens_file = "{tokens_file}"\n'
    extra += '[campaigns.demo-prospecting]\nprincipal = "ACME"\npurpose = "prospecting"\n'
    config = write_serve_config(directory, agi_port, extra)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIALGUARD_")}
    env |= {"DIALGUARD_CONFIG": str(config), "DIALGUARD_REDIS_URL": redis_url}
    command = [str(Path(sys.executable).parent / "dialguard"), "serve", "--workers", str(workers)]
    with (directory / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True
        )
    served = ServedApi(process, directory, agi_port, api_port, token)
    try:
        end = time.monotonic() + 20
        while len(served.events("started")) < workers:
            if process.poll() is not None or time.monotonic() > end:
                raise AssertionError((directory / "stderr.log").read_text())
            time.sleep(0.05)
        yield served
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
