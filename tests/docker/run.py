"""`make test-docker`: the Dockerfile and docker-compose.yml, built and run for real.

No image registry is needed (none is reachable on the project's test machines):

1. A Docker daemon of the test's own: Debian's `dockerd` on a private socket, with its
   data and run directories in a temporary directory, no iptables and no default bridge
   (the compose network is a user-defined bridge; published ports go through
   docker-proxy). Stopped, and its directory removed, however the test ends.
2. A base image made without a registry: Debian bookworm from `debootstrap
   --variant=minbase` with `python3` and `python3-venv` (what `python:3.12-slim` gives the
   Dockerfile), imported with `docker import`. The root file system is cached as a tar
   file in build/docker/ (git-ignored): `--fresh` makes it again.
3. The wheels: the project's built on the host (tests/wheel.py), its dependencies
   downloaded by pip running in the base image itself, so that they are chosen for the
   image's Python (environment markers such as `python_full_version < "3.11.3"` are
   evaluated by the interpreter that runs pip). The image is then built with
   `--build-arg WHEELS=build/wheels`: no network during the build.
4. A Redis image for compose: Debian's redis-server on the same base.
5. `docker compose up` (or docker-compose) of docker-compose.yml, unchanged, on private
   ports; then: the sample data loaded, health check healthy, FastAGI calls answered
   ALLOW and DENY through the published 127.0.0.1 port (tests/agi/asterisk_peer.py), the
   service not root, ports published on 127.0.0.1 only, Redis append-only, the journal
   verified on its volume, `dialguard reload` in the container, a clean stop on SIGTERM.

Without root, dockerd or a way to install it, prints one line saying the test is skipped
and exits 0. Any other failure exits 1 with what failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType

from tests.agi.asterisk_peer import SessionResult, run_session
from tests.wheel import build_wheel

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CACHE = ROOT / "build" / "docker"
WHEELS = ROOT / "build" / "wheels"  # inside the build context (.dockerignore lets it in)
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
BASE_IMAGE = f"dialguard-test/base:{SUITE}"
REDIS_IMAGE = "dialguard-test/redis:latest"
IMAGE = "dialguard:test"
PROJECT = "dialguard-test"
PACKAGES = {
    "dockerd": "docker.io",
    "docker-compose": "docker-compose",
    "debootstrap": "debootstrap",
}
# Numbers of config/sample/: one on the do-not-call list; 112 passes whatever the hour.
DNC_NUMBER = "0612345678"
EMERGENCY = "112"


class Skip(Exception):
    """The test cannot run on this machine (no daemon can be started)."""


class Failed(Exception):
    """What the test found wrong."""


def log(message: str) -> None:
    print(f"test-docker: {message}", flush=True)


def run(
    args: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 600,
    quiet: bool = False,
) -> subprocess.CompletedProcess[str]:
    argv = [str(a) for a in args]
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise Failed(f"{' '.join(argv)} exited {done.returncode}:\n{tail}")
    if not quiet and done.returncode != 0:
        log(f"{' '.join(argv[:3])}...: exit {done.returncode}")
    return done


def ensure_tools() -> None:
    """Debian's docker.io, docker-compose and debootstrap, installed when missing (as the
    Makefile installs redis-server)."""
    missing = [pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise Skip(f"{', '.join(missing)} missing and no apt-get to install them")
    log(f"installing {' '.join(missing)} (Debian packages)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        if run(argv, env=env, check=False).returncode != 0:
            raise Skip(f"could not install {' '.join(missing)} with apt-get")


class Daemon:
    """A dockerd of our own: private socket, data and run directories under `home`."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.socket = home / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        for key in ("DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
            self.env.pop(key, None)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        logfile = (self.home / "dockerd.log").open("wb")
        self.process = subprocess.Popen(
            [
                "dockerd",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--data-root", self.home / "data",
                "--exec-root", self.home / "exec",
                "--pidfile", self.home / "dockerd.pid",
                "--host", f"unix://{self.socket}",
            ],
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our Ctrl-C reaches the test, which stops it in order
        )  # fmt: skip
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise Skip(f"dockerd exited {self.process.returncode}: {self.log_tail()}")
            if run(["docker", "version"], env=self.env, check=False, quiet=True).returncode == 0:
                return
            time.sleep(0.5)
        raise Skip(f"dockerd did not answer within 60 s: {self.log_tail()}")

    def log_tail(self) -> str:
        path = self.home / "dockerd.log"
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        return " | ".join(lines[-3:])

    def docker(self, *args: str | Path, check: bool = True) -> str:
        return run(["docker", *args], env=self.env, check=check).stdout.strip()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # dockerd leaves its network namespace file (and, killed, container mounts) mounted
        # under its directories: unmount before removing them, deepest first.
        mounts = [
            line.split()[1]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(self.home) + "/")
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            run(["umount", "--lazy", mount], check=False, quiet=True)


def base_tarball(fresh: bool) -> Path:
    """Debian bookworm minbase with python3 and python3-venv, as a tar of its root."""
    tarball = CACHE / f"base-{SUITE}.tar"
    if tarball.exists() and not fresh:
        log(f"base: cached {tarball.relative_to(ROOT)} (--fresh to make it again)")
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dialguard-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        log(f"base: debootstrap --variant=minbase {SUITE} (python3, python3-venv)")
        run(
            [
                "debootstrap", "--variant=minbase", "--include=python3,python3-venv",
                SUITE, rootfs, MIRROR,
            ]
        )  # fmt: skip
        # What Debian's -slim images leave out too: package caches, docs, man pages, locales.
        for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            for child in (rootfs / junk).glob("*"):
                if child.is_file() or child.is_symlink():
                    child.unlink()
                else:
                    shutil.rmtree(child)
        shutil.rmtree(rootfs / "usr/share/locale", ignore_errors=True)
        partial = tarball.with_suffix(".partial")
        run(["tar", "-C", rootfs, "-cf", partial, "."])
        partial.replace(tarball)
    log(f"base: made in {time.monotonic() - started:.0f} s")
    return tarball


def host_ca_bundle() -> Path | None:
    """The CA bundle the host's pip trusts (a TLS-inspecting proxy's CA may be only there)."""
    for candidate in (os.environ.get("PIP_CERT"), ssl.get_default_verify_paths().cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_wheels(daemon: Daemon) -> None:
    """build/wheels: dialguard's wheel and every dependency's, for the base's Python."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    wheel = build_wheel(WHEELS)  # from a clean copy of the sources, as tests/test_packaging.py
    mounts = ["-v", f"{WHEELS}:/wheels"]
    ca = host_ca_bundle()
    if ca is not None:
        mounts += ["-v", f"{ca}:/run/host-ca.crt:ro", "-e", "PIP_CERT=/run/host-ca.crt"]
    if os.environ.get("PIP_INDEX_URL"):
        mounts += ["-e", f"PIP_INDEX_URL={os.environ['PIP_INDEX_URL']}"]
    daemon.docker(
        "run", "--rm", "--network", "host", *mounts, BASE_IMAGE, "sh", "-ec",
        "python3 -m venv /tmp/venv; /tmp/venv/bin/pip download --quiet"
        f" --disable-pip-version-check --dest /wheels /wheels/{wheel.name}",
    )  # fmt: skip


class Compose:
    def __init__(self, daemon: Daemon, env: Mapping[str, str]) -> None:
        plugin = run(["docker", "compose", "version"], env=daemon.env, check=False, quiet=True)
        self.command: list[str]
        if plugin.returncode == 0:
            self.command = ["docker", "compose"]
        elif shutil.which("docker-compose"):
            self.command = ["docker-compose"]
        else:
            raise Failed("neither `docker compose` nor docker-compose is installed")
        self.env = {**daemon.env, **env}

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        argv = [
            *self.command,
            "--project-name",
            PROJECT,
            "--file",
            str(ROOT / "docker-compose.yml"),
        ]
        return run([*argv, *args], env=self.env, check=check, timeout=timeout).stdout.strip()

    def container(self, service: str) -> str:
        ids = self("ps", "-q", service).split()
        if len(ids) != 1:
            raise Failed(f"compose service {service}: {len(ids)} containers")
        return ids[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def inspect(daemon: Daemon, container: str) -> dict[str, object]:
    data = json.loads(daemon.docker("inspect", container))
    assert isinstance(data, list) and isinstance(data[0], dict)
    return data[0]


def wait_healthy(daemon: Daemon, container: str, timeout: float = 120) -> float:
    start = time.monotonic()
    status = "?"
    while time.monotonic() - start < timeout:
        status = daemon.docker("inspect", "-f", "{{.State.Health.Status}}", container)
        if status == "healthy":
            return time.monotonic() - start
        if status == "unhealthy" or "running" not in daemon.docker(
            "inspect", "-f", "{{.State.Status}}", container
        ):
            break
        time.sleep(1)
    logs = run(["docker", "logs", "--tail", "20", container], env=daemon.env, check=False)
    raise Failed(f"health check {status}, not healthy; logs:\n{logs.stdout}{logs.stderr}")


def expect(what: str, found: object, wanted: object) -> None:
    if found != wanted:
        raise Failed(f"{what}: {found!r}, expected {wanted!r}")
    log(f"ok: {what}: {found}")


def agi_call(port: int, number: str, campaign: str) -> SessionResult:
    result = asyncio.run(run_session("127.0.0.1", port, args=(number, campaign)))
    if result.dangerous:
        raise Failed(f"FastAGI session {number}: {result.dangerous}")
    return result


def exercise(
    daemon: Daemon, compose: Compose, agi_port: int, metrics_port: int, api_port: int
) -> None:
    log("docker compose up")
    compose("up", "--detach")
    loader = compose("ps", "-q", "sample-data").split()
    if loader:
        code = daemon.docker("inspect", "-f", "{{.State.ExitCode}}", loader[0])
        expect("sample-data loader exit code", code, "0")
    service = compose.container("dialguard")
    waited = wait_healthy(daemon, service)
    log(f"ok: health check healthy after {waited:.0f} s")

    allowed = agi_call(agi_port, EMERGENCY, "demo-prospecting").variables
    expect(
        "FastAGI 112",
        (allowed.get("DIALGUARD_RESULT"), allowed.get("DIALGUARD_REASON")),
        ("ALLOW", "EMERGENCY"),
    )
    denied = agi_call(agi_port, DNC_NUMBER, "demo-prospecting").variables
    expect(
        f"FastAGI {DNC_NUMBER} (sample do-not-call list)",
        (denied.get("DIALGUARD_RESULT"), denied.get("DIALGUARD_REASON")),
        ("DENY", "INTERNAL_DNC"),
    )

    uid = daemon.docker("exec", service, "id", "-u")
    if uid in ("", "0"):
        raise Failed(f"the service runs as uid {uid!r}")
    log(f"ok: the service runs as uid {uid}")
    expect("process 1", daemon.docker("exec", service, "cat", "/proc/1/comm"), "dialguard")

    details = inspect(daemon, service)
    bindings = details["NetworkSettings"]["Ports"]  # type: ignore[index]
    published = sorted(
        (binding["HostIp"], int(binding["HostPort"]))
        for port in bindings.values()
        for binding in port or ()
    )
    ports = (agi_port, metrics_port, api_port)
    expect("published", published, sorted(("127.0.0.1", port) for port in ports))

    redis = compose.container("redis")
    aof = daemon.docker("exec", redis, "redis-cli", "config", "get", "appendonly").split()
    expect("Redis appendonly", aof[-1:], ["yes"])

    verified = run(
        ["docker", "exec", service, "dialguard", "audit", "verify", "--json"],
        env=daemon.env,
        check=False,
    )
    expect("audit verify on the volume (exit)", verified.returncode, 0)
    reloaded = run(
        ["docker", "exec", service, "dialguard", "reload", "--operator", "test-docker"],
        env=daemon.env,
        check=False,
    )
    expect("dialguard reload in the container (exit)", reloaded.returncode, 0)

    started = time.monotonic()
    compose("stop", "dialguard")
    took = time.monotonic() - started
    code = daemon.docker("inspect", "-f", "{{.State.ExitCode}}", service)
    expect("exit code after SIGTERM", code, "0")
    if took > 10:
        raise Failed(f"stopping took {took:.1f} s: SIGTERM was not handled")
    log(f"ok: stopped on SIGTERM in {took:.1f} s")


@contextlib.contextmanager
def signals_end_the_test() -> Iterator[None]:
    """SIGTERM and SIGHUP (CI cancelling, a closed terminal) run the clean-up too."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--fresh", action="store_true", help="debootstrap the base again")
    options = parser.parse_args()
    started = time.monotonic()
    try:
        if not sys.platform.startswith("linux") or os.geteuid() != 0:
            raise Skip("a private dockerd needs Linux and root")
        ensure_tools()
    except Skip as why:
        log(f"SKIPPED: no Docker daemon can be started here ({why})")
        return 0
    home = Path(tempfile.mkdtemp(prefix="dialguard-docker-"))
    daemon = Daemon(home)
    compose: Compose | None = None
    try:
        with signals_end_the_test():
            try:
                daemon.start()
            except Skip as why:
                log(f"SKIPPED: no Docker daemon can be started here ({why})")
                return 0
            log(f"dockerd {daemon.docker('version', '-f', '{{.Server.Version}}')} on {home}")
            tarball = base_tarball(options.fresh)
            run(["docker", "import", tarball, BASE_IMAGE], env=daemon.env)
            build_wheels(daemon)
            log("docker build: Redis image (Debian's redis-server on the base)")
            daemon.docker(
                "build", "--quiet", "--network", "host", "--build-arg", f"BASE={BASE_IMAGE}",
                "-t", REDIS_IMAGE, "-f", HERE / "redis.Dockerfile", HERE,
            )  # fmt: skip
            log("docker build: the dialguard image (offline, from build/wheels)")
            build_started = time.monotonic()
            daemon.docker(
                "build", "--quiet", "--build-arg", f"BASE={BASE_IMAGE}",
                "--build-arg", f"WHEELS={WHEELS.relative_to(ROOT)}", "-t", IMAGE, ROOT,
            )  # fmt: skip
            log(f"ok: image built in {time.monotonic() - build_started:.0f} s")
            agi_port, metrics_port, api_port = free_port(), free_port(), free_port()
            compose = Compose(
                daemon,
                {
                    "DIALGUARD_IMAGE": IMAGE,
                    "REDIS_IMAGE": REDIS_IMAGE,
                    "DIALGUARD_AGI_PORT": str(agi_port),
                    "DIALGUARD_METRICS_PORT": str(metrics_port),
                    "DIALGUARD_API_PORT": str(api_port),
                },
            )
            exercise(daemon, compose, agi_port, metrics_port, api_port)
            size = int(daemon.docker("image", "inspect", "-f", "{{.Size}}", IMAGE))
            base = int(daemon.docker("image", "inspect", "-f", "{{.Size}}", BASE_IMAGE))
            log(
                f"image {IMAGE}: {size / 1e6:.0f} MB ({base / 1e6:.0f} MB of it the base,"
                f" Debian {SUITE} minbase + python3)"
            )
        log(f"PASSED in {time.monotonic() - started:.0f} s")
        return 0
    except Failed as failure:
        log(f"FAILED: {failure}")
        return 1
    except KeyboardInterrupt as why:
        log(f"interrupted ({why or 'SIGINT'}): cleaning up")
        return 1
    finally:
        if compose is not None:
            with contextlib.suppress(Exception):
                compose("down", "--volumes", "--remove-orphans", "--timeout", "10", check=False)
        daemon.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
