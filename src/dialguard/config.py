"""Read `dialguard.toml` and the policy file it names; every error names file, key and fix."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from redis.connection import parse_url

from dialguard.callerids import BadCallerIds, CallerIds, parse_entry, read_file
from dialguard.model import Campaign, FailMode, Mode, Purpose, Sector
from dialguard.numbers import Kind
from dialguard.policy import Policy, Regime, Version
from dialguard.vicidial.forms import NumberForm

__all__ = [
    "DEFAULT_CONFIG",
    "ApiSettings",
    "AriSettings",
    "CentralSettings",
    "Config",
    "ConfigError",
    "ConsoleSettings",
    "RedisSettings",
    "VicidialSettings",
    "audit_dir_of",
    "central_settings",
    "console_settings",
    "load_config",
    "load_policy",
    "parse_sentinel_url",
    "redact_url",
]

DEFAULT_CONFIG = Path("config/dialguard.toml")

# Names that end up in Redis keys, channel variables and audit records: keep them plain.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_DAYS = {"mon": 0, "tue": 1, "wed": 2, "thu": 3, "fri": 4, "sat": 5, "sun": 6}
_LOCAL_DAY = re.compile(r"^(good_friday|(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))$")


class ConfigError(Exception):
    """One line: file: key: what is wrong."""


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """How to reach Redis (`[redis]`): one server by its URL, or the primary that Redis
    Sentinel names (then `sentinels` is not empty). dialguard.store.connect builds the
    client from these."""

    url: str = field(repr=False)  # may hold the password: redact_url() to show it
    prefix: str
    timeout_ms: int
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str = ""  # the primary's name in the sentinels' configuration
    db: int = 0  # with Sentinel (a plain URL carries its own)
    username: str | None = None  # with Sentinel (a plain URL carries its own)
    # From password_file or DIALGUARD_REDIS_PASSWORD, or a Sentinel URL's; never shown.
    password: str | None = field(default=None, repr=False)
    tls: bool = False  # rediss:// or rediss+sentinel:// (sentinels and primary alike)
    tls_ca_file: Path | None = None  # None: the system's CAs
    tls_cert_file: Path | None = None  # a client certificate, when Redis asks for one
    tls_key_file: Path | None = None
    # A live change counts as taken once this many replicas have it too (WAIT): a
    # failover then cannot lose it. 1 by default with Sentinel, 0 otherwise.
    replicas_ack: int = 0
    # The sentinels' own `requirepass` (sentinel_password_file or
    # DIALGUARD_REDIS_SENTINEL_PASSWORD), which may differ from the data nodes'.
    sentinel_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """`redis+sentinel://[user:password@]host:port[,host:port...]/service_name[/db]`."""

    tls: bool
    username: str | None
    password: str | None = field(repr=False)
    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Everything a listener on a loopback address can be reached from anyway.
LOOPBACK: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("127.0.0.0/8"),
    ipaddress.IPv6Network("::1/128"),
)
# A cap above what any call centre's Asterisk holds open at once (1,440 sessions/s at
# most on 2 cores, each a few ms), far below the fd limit serve raises itself to.
MAX_CONNECTIONS_LIMIT = 1_000_000


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str
    port: int
    deadline_ms: int
    session_timeout_ms: int = 5000
    workers: int = 1
    campaign_from_accountcode: bool = False
    # Who may connect: a connection from elsewhere is closed before a byte is read.
    allow: tuple[IPNetwork, ...] = LOOPBACK
    # Connections open at once, per worker; beyond it the oldest still silent is cut, or
    # the new one closed (dialguard.agi.server).
    max_connections: int = 4096


@dataclass(frozen=True, slots=True)
class AriSettings:
    """The Stasis application's connection to Asterisk's ARI (`[ari]`)."""

    url: str  # http://127.0.0.1:8088 (the /ari path is added by the client)
    app: str  # the Stasis application name the dialplan uses
    user: str
    password: str = field(repr=False)  # from the environment or a file, never the config
    on_deny: str = "hangup"  # "hangup": cause 21 from the app; "continue": the dialplan decides


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Health and metrics (`[metrics]`): GET http://host:port/healthz, /readyz, /metrics;
    `serve --workers N`: worker i on port + i."""

    host: str = "127.0.0.1"
    port: int = 9573
    ready_max_pending_s: int = 60  # /readyz fails once a change waits for Redis longer


# The tokens file when `[api] tokens_file` is not given: beside the audit directory, in the
# node's data directory (the service only reads it; `dialguard api token` writes it).
TOKENS_FILE = "api-tokens.json"
# What `[api] max_body_bytes` may be raised to: a consent or a decision is a few hundred
# bytes, and every byte of a body is held in memory before it is parsed.
MAX_BODY_LIMIT = 1 << 20


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """The HTTP API (`[api]`, docs/api.md): `serve` answers it on host:port, every worker
    on the same port (SO_REUSEPORT), each request authenticated by a bearer token from
    `tokens_file`."""

    tokens_file: Path
    host: str = "127.0.0.1"
    port: int = 8575
    max_body_bytes: int = 16_384  # larger bodies: 413, not a byte of them parsed
    # How long an Idempotency-Key's answer to a change is kept (a decision's: at most
    # dialguard.api.idempotency.DECISION_REPLAY_S).
    idempotency_hours: int = 24


@dataclass(frozen=True, slots=True)
class CentralSettings:
    """The central store (`[central]`, docs/central.md): a SQLite file (`path`) or a
    PostgreSQL database (`url`), and how `serve` ships this node's journal into it."""

    path: Path | None  # the SQLite file; None with a PostgreSQL url
    url: str = field(default="", repr=False)  # postgresql://...: may hold the password
    password: str | None = field(default=None, repr=False)  # password_file or the environment
    ship: bool = True  # `serve` (worker 0) ships the journal as it is written
    batch: int = 5000  # records per transaction
    poll_ms: int = 500  # how often the shipper looks for new records once caught up
    # `central prune` removes the months older than this (default: [audit] retention_days).
    keep_days: int = 3 * 365 + 1

    @property
    def shown(self) -> str:
        """Where the store is, for messages: the URL without its password, or the file."""
        return redact_url(self.url) if self.url else str(self.path)


@dataclass(frozen=True, slots=True)
class VicidialSettings:
    """VICIdial's database and how its do-not-call lists are kept in step with dialguard's
    (`[vicidial]`, docs/vicidial.md)."""

    host: str
    port: int
    user: str
    database: str
    # From password_file or DIALGUARD_VICIDIAL_PASSWORD; None when neither gives one (the
    # sync then refuses to start, saying so). Never shown.
    password: str | None = field(repr=False)
    state: Path  # the sync's cursors (SQLite), beside the audit directory by default
    number_form: NumberForm = NumberForm.NATIONAL
    interval_s: int = 10
    # VICIdial campaign_id -> dialguard campaign: whose campaign list is whose.
    campaigns: Mapping[str, str] = field(default_factory=dict)
    pull: bool = True  # read VICIdial's lists into dialguard's (false: write only)
    # Removals a pass applies at most; beyond it they wait for `vicidial sync --once
    # --accept-removals` (a table emptied by mistake must not empty dialguard's list).
    max_removals: int = 1000

    @property
    def shown(self) -> str:
        """Where VICIdial's database is, for messages (never with a password)."""
        return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}"


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """The supervisors' console (`[console]`, docs/console.md): where it listens, its users
    and its exports; the data it shows come from the central store and Redis."""

    users_file: Path  # console users and their argon2 hashes (`dialguard console user add`)
    exports_dir: Path  # the exports made in the console, until exports_keep_hours
    host: str = "127.0.0.1"
    port: int = 8574
    # Cookies sent over HTTPS only: true when the console is reached through HTTPS (a
    # reverse proxy ends TLS in front of it); false serves plain http on the loopback.
    secure_cookies: bool = False
    session_hours: int = 12  # a session ends this long after its login, whatever happens
    idle_minutes: int = 30  # ...or after this long without a request
    exports_keep_hours: int = 24  # an export's files are removed after this
    mask_key_file: Path | None = None  # the key of masked exports (or the environment's)


@dataclass(frozen=True, slots=True)
class Config:
    path: Path
    node: str
    redis: RedisSettings
    server: ServerSettings
    audit_dir: Path
    policy: Policy
    campaigns: Mapping[str, Campaign]
    audit_retention_days: int = 3 * 365 + 1  # three years (C. consommation: proof kept 3 years)
    ari: AriSettings | None = None  # None: the ARI application does not run
    metrics: MetricsSettings | None = None  # None: no metrics endpoint
    hash: str = ""  # of the configuration file's bytes (the policy has its own)
    # None: no [central] section, and `serve` ships nothing (the commands that read the
    # store then use central_settings(): the SQLite file beside the audit directory).
    central: CentralSettings | None = None
    api: ApiSettings | None = None  # None: no HTTP API
    vicidial: VicidialSettings | None = None  # None: no [vicidial] section, no sync
    # None: no [console] section (`dialguard console` then uses console_settings()).
    console: ConsoleSettings | None = None


class _Reader:
    """Typed access to one TOML table, with errors that say where."""

    def __init__(self, path: Path, data: Mapping[str, Any], prefix: str = "") -> None:
        self.path = path
        self.data = data
        self.prefix = prefix

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(f"{self.path}: {self.prefix}{key}: {message}")

    def table(self, key: str, required: bool = False) -> _Reader:
        value = self.data.get(key, None)
        if value is None:
            if required:
                raise self.fail(key, "missing table")
            value = {}
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return _Reader(self.path, value, f"{self.prefix}{key}.")

    def get(self, key: str, kind: type[Any], default: Any = ...) -> Any:
        if key not in self.data:
            if default is ...:
                raise self.fail(key, "missing")
            return default
        value = self.data[key]
        if kind is int and isinstance(value, bool):
            raise self.fail(key, f"{value!r} is not an integer")
        if not isinstance(value, kind):
            raise self.fail(key, f"{value!r} is not a {kind.__name__}")
        return value

    def positive(self, key: str, default: Any = ...) -> int:
        value: int = self.get(key, int, default)
        if value <= 0:
            raise self.fail(key, f"{value} must be positive")
        return value

    def choice(self, key: str, enum: type[Any], default: Any = ...) -> Any:
        value = self.get(key, str, default)
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(member.value for member in enum)
            raise self.fail(key, f"{value!r} is not one of {allowed}") from None

    def name(self, key: str) -> str:
        value: str = self.get(key, str)
        if not _NAME.match(value):
            raise self.fail(key, f"{value!r} must be 1-64 letters, digits, '_', '.', '-'")
        return value

    def unknown_keys(self, known: set[str]) -> None:
        for key in self.data:
            if key not in known:
                raise self.fail(key, f"unknown key (known: {', '.join(sorted(known))})")


def _read_toml(path: Path) -> tuple[dict[str, Any], bytes]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8")), raw
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_config(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Load the service configuration; `DIALGUARD_CONFIG` / `DIALGUARD_REDIS_URL` override."""
    env = os.environ if env is None else env
    if path is None:
        path = Path(env.get("DIALGUARD_CONFIG") or DEFAULT_CONFIG)
    if not path.exists():
        raise ConfigError(f"{path}: file not found (set DIALGUARD_CONFIG or --config)")
    data, raw = _read_toml(path)
    top = _Reader(path, data)
    top.unknown_keys(
        {
            "node",
            "redis",
            "server",
            "audit",
            "policy",
            "campaigns",
            "ari",
            "metrics",
            "central",
            "api",
            "vicidial",
            "console",
        }
    )

    redis = _redis(top.table("redis"), env)

    server_table = top.table("server")
    server_table.unknown_keys(
        {
            "host",
            "port",
            "deadline_ms",
            "session_timeout_ms",
            "workers",
            "campaign_from_accountcode",
            "allow",
            "max_connections",
        }
    )
    port = server_table.positive("port", 4573)
    if port > 65535:
        raise server_table.fail("port", f"{port} is not a TCP port")
    workers = server_table.positive("workers", 1)
    if workers > 64:
        raise server_table.fail("workers", f"{workers}: at most 64 worker processes")
    host = server_table.get("host", str, "127.0.0.1")
    max_connections = server_table.positive("max_connections", 4096)
    if max_connections > MAX_CONNECTIONS_LIMIT:
        raise server_table.fail("max_connections", f"{max_connections}: at most 1000000")
    server = ServerSettings(
        host=host,
        port=port,
        deadline_ms=server_table.positive("deadline_ms", 300),
        session_timeout_ms=server_table.positive("session_timeout_ms", 5000),
        workers=workers,
        campaign_from_accountcode=server_table.get("campaign_from_accountcode", bool, False),
        allow=_allow(server_table, host),
        max_connections=max_connections,
    )

    audit_table = top.table("audit")
    audit_table.unknown_keys({"dir", "retention_days"})
    audit_dir = path.parent / audit_table.get("dir", str, "../var/audit")
    retention_days = audit_table.positive("retention_days", 3 * 365 + 1)

    policy_table = top.table("policy")
    policy_table.unknown_keys({"file"})
    policy = load_policy(path.parent / policy_table.get("file", str, "policy/france.toml"))

    campaigns_table = top.table("campaigns", required=True)
    campaigns = {name: _campaign(campaigns_table, name) for name in campaigns_table.data}
    if not campaigns:
        raise campaigns_table.fail("", "no campaign configured")
    node = top.get("node", str, "") or socket.gethostname()
    ari = _ari(top.table("ari"), env) if "ari" in data else None
    metrics = _metrics(top.table("metrics")) if "metrics" in data else None
    central = _central(top.table("central"), audit_dir, env, retention_days)
    api = _api(top.table("api"), audit_dir) if "api" in data else None
    vicidial = (
        _vicidial(top.table("vicidial"), audit_dir, campaigns, env) if "vicidial" in data else None
    )
    console = _console(top.table("console"), audit_dir)
    return Config(
        path,
        node,
        redis,
        server,
        audit_dir,
        policy,
        campaigns,
        retention_days,
        ari,
        metrics,
        hashlib.sha256(raw).hexdigest()[:16],
        central if "central" in data else None,
        api,
        vicidial,
        console if "console" in data else None,
    )


def central_settings(config: Config, env: Mapping[str, str] | None = None) -> CentralSettings:
    """The central store the commands read and write: `[central]`, or without the section
    the SQLite file beside the audit directory (DIALGUARD_CENTRAL_URL still applies)."""
    if config.central is not None:
        return config.central
    env = os.environ if env is None else env
    return _central(
        _Reader(config.path, {}, "central."), config.audit_dir, env, config.audit_retention_days
    )


def console_settings(config: Config) -> ConsoleSettings:
    """The console's settings: `[console]`, or without the section the defaults (its
    files in the data directory, beside the audit directory)."""
    if config.console is not None:
        return config.console
    return _console(_Reader(config.path, {}, "console."), config.audit_dir)


def is_loopback(host: str) -> bool:
    """Whether a listen address is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _allow(table: _Reader, host: str) -> tuple[IPNetwork, ...]:
    """`[server] allow`: the networks Asterisk may connect from. On a loopback listener
    it defaults to the loopback itself; on any other address it must be given, so that
    nobody opens the port to a network without deciding who may use it."""
    if "allow" not in table.data:
        if is_loopback(host):
            return LOOPBACK
        raise table.fail(
            "allow",
            f"missing: host {host!r} is not a loopback address; list the networks Asterisk"
            ' connects from, e.g. allow = ["10.0.0.5/32"] (["0.0.0.0/0", "::/0"]: anyone)',
        )
    networks: list[IPNetwork] = []
    for item in table.get("allow", list):
        if not isinstance(item, str):
            raise table.fail("allow", f'{item!r} is not "address/prefix", e.g. "10.0.0.5/32"')
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            raise table.fail("allow", f"{item!r} is not an address/prefix: {exc}") from None
    if not networks:
        raise table.fail("allow", "empty: nobody could connect (remove it for the default)")
    return tuple(networks)


def audit_dir_of(path: Path) -> Path:
    """The audit directory a configuration file names, read without the rest of it (to
    find the service running with a file that no longer loads whole)."""
    data, _ = _read_toml(path)
    table = _Reader(path, data).table("audit")
    directory: str = table.get("dir", str, "../var/audit")
    return path.parent / directory


_REDIS_KEYS = {
    "url",
    "prefix",
    "timeout_ms",
    "sentinels",
    "service_name",
    "db",
    "tls",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "password_file",
    "sentinel_password_file",
    "replicas_ack",
}
_SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")


def _redis(table: _Reader, env: Mapping[str, str]) -> RedisSettings:
    table.unknown_keys(_REDIS_KEYS)
    from_env = env.get("DIALGUARD_REDIS_URL", "")
    listed = table.get("sentinels", list, [])
    if listed and "url" in table.data and not from_env:
        raise table.fail("sentinels", "give either url or sentinels, not both")
    url = from_env or table.get("url", str, "redis://127.0.0.1:6379/0")

    def bad_url(problem: str) -> ConfigError:
        # The URL may hold the password: messages show it redacted, never as written.
        message = f"{redact_url(url)!r} {problem}"
        return (
            ConfigError(f"DIALGUARD_REDIS_URL: {message}")
            if from_env
            else table.fail("url", message)
        )

    sentinel: SentinelUrl | None = None
    if url.startswith(_SENTINEL_SCHEMES):
        try:
            sentinel = parse_sentinel_url(url)
        except ValueError as exc:
            raise bad_url(str(exc)) from None
    elif listed and not from_env:
        sentinel = _sentinel_keys(table, listed)
        url = _sentinel_url_shown(sentinel)
    elif problem := _redis_url_problem(url):
        raise bad_url(problem)
    for key in ("service_name", "db", "tls"):
        if key in table.data and not listed:
            raise table.fail(key, "only read with sentinels = [...] (a URL carries its own)")

    prefix = table.get("prefix", str, "dialguard:")
    if not re.match(r"^[A-Za-z0-9_.:-]{0,32}$", prefix):
        raise table.fail("prefix", f"{prefix!r} must be up to 32 of A-Z a-z 0-9 _ . : -")
    tls = url.startswith(("rediss://", "rediss+sentinel://")) or (
        sentinel is not None and sentinel.tls
    )
    files = {key: _tls_file(table, key) for key in ("tls_ca_file", "tls_cert_file", "tls_key_file")}
    for key, path in files.items():
        if path is not None and not tls:
            raise table.fail(key, "TLS is off: use a rediss:// or rediss+sentinel:// URL")
    if (files["tls_cert_file"] is None) != (files["tls_key_file"] is None):
        raise table.fail("tls_cert_file", "a client certificate needs tls_key_file too, and both")

    password = _redis_password(table, env)
    in_url = sentinel.password if sentinel is not None else _url_password(url)
    if password is not None and in_url:
        raise table.fail(
            "password_file",
            "the URL holds a password and so does password_file or DIALGUARD_REDIS_PASSWORD:"
            " give it in one place only",
        )
    sentinel_password = _secret(
        table, env, "sentinel_password_file", "DIALGUARD_REDIS_SENTINEL_PASSWORD"
    )
    if sentinel_password is not None and sentinel is None:
        raise table.fail(
            "sentinel_password_file",
            "a Sentinel password is only read with sentinels (a redis+sentinel:// URL or"
            " sentinels = [...])",
        )
    replicas_ack = table.get("replicas_ack", int, 1 if sentinel is not None else 0)
    if not 0 <= replicas_ack <= 16:
        raise table.fail("replicas_ack", f"{replicas_ack} must be from 0 to 16")
    return RedisSettings(
        url=url,
        prefix=prefix,
        timeout_ms=table.positive("timeout_ms", 250),
        sentinels=sentinel.sentinels if sentinel else (),
        service_name=sentinel.service_name if sentinel else "",
        db=sentinel.db if sentinel else 0,
        username=sentinel.username if sentinel else None,
        password=password if password is not None else (sentinel.password if sentinel else None),
        tls=tls,
        tls_ca_file=files["tls_ca_file"],
        tls_cert_file=files["tls_cert_file"],
        tls_key_file=files["tls_key_file"],
        replicas_ack=replicas_ack,
        sentinel_password=sentinel_password,
    )


def _sentinel_keys(table: _Reader, listed: list[Any]) -> SentinelUrl:
    """`sentinels = ["host:port", ...]` with `service_name` (and `db`, `tls`)."""
    sentinels = []
    for item in listed:
        address = _address(item) if isinstance(item, str) else None
        if address is None:
            raise table.fail("sentinels", f'{item!r} is not "host:port"')
        sentinels.append(address)
    if "service_name" not in table.data:
        raise table.fail("service_name", "missing: the primary's name in the sentinels' setup")
    db = table.get("db", int, 0)
    if not 0 <= db <= 65535:
        raise table.fail("db", f"{db} is not a Redis database number")
    tls = table.get("tls", bool, False)
    return SentinelUrl(tls, None, None, tuple(sentinels), table.name("service_name"), db)


def _sentinel_url_shown(sentinel: SentinelUrl) -> str:
    """The URL the sentinels = [...] form stands for, for messages (no password in it)."""
    hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in sentinel.sentinels)
    scheme = "rediss+sentinel" if sentinel.tls else "redis+sentinel"
    return f"{scheme}://{hosts}/{sentinel.service_name}/{sentinel.db}"


def _address(text: str) -> tuple[str, int] | None:
    """("host", port) of "host:port" or "[v6]:port"; None when it is neither."""
    host, colon, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        return None
    if any(c in host for c in "@/?#,[] "):
        return None
    return host, int(port)


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Read `redis+sentinel://[user:password@]h1:p1[,h2:p2...]/service_name[/db]`
    (`rediss+sentinel://`: TLS to the sentinels and the primary). ValueError says what is
    wrong in words that never quote the URL (it may hold the password)."""
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    if "@" in path or "?" in rest or "#" in rest:
        raise ValueError(
            "is not a Sentinel URL: percent-encode '/', '?' and '#' in the user name and "
            "password (%2F, %3F, %23); options go in [redis] keys, not after '?'"
        )
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = []
    for item in hosts.split(","):
        address = _address(item)
        if address is None:
            raise ValueError('is not a Sentinel URL: each sentinel must be "host:port"')
        sentinels.append(address)
    service, _, db = path.partition("/")
    if not _NAME.match(service):
        raise ValueError(
            "is not a Sentinel URL: the path must be /service_name[/db] (the primary's name"
            " in the sentinels' setup)"
        )
    if db and not (db.isdigit() and int(db) <= 65535):
        raise ValueError(
            "is not a Sentinel URL: the database after the service name must be a number"
        )
    tls = scheme == "rediss+sentinel"
    return SentinelUrl(tls, username, password, tuple(sentinels), service, int(db or 0))


def _tls_file(table: _Reader, key: str) -> Path | None:
    name: str = table.get(key, str, "")
    if not name:
        return None
    path = table.path.parent / name
    if not path.is_file():
        raise table.fail(key, f"{path}: no such file")
    return path


def _redis_password(table: _Reader, env: Mapping[str, str]) -> str | None:
    """The password from `password_file` (relative to the configuration file) or
    DIALGUARD_REDIS_PASSWORD; None when neither gives one."""
    return _secret(table, env, "password_file", "DIALGUARD_REDIS_PASSWORD")


def _secret(table: _Reader, env: Mapping[str, str], key: str, variable: str) -> str | None:
    """The secret in the file `key` names (relative to the configuration file), else in
    the environment's `variable`; None when neither gives one."""
    name: str = table.get(key, str, "")
    if name:
        text = _secret_file(table, name, key)
        if not text:
            raise table.fail(key, f"{table.path.parent / name}: empty")
        return text
    return env.get(variable) or None


def _secret_file(table: _Reader, name: str, key: str = "password_file") -> str:
    """The secret in the file `key` names (relative to the configuration file), stripped;
    the error quotes the file, never its content."""
    secret = table.path.parent / name
    try:
        return secret.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise table.fail(key, f"{secret}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise table.fail(key, f"{secret}: not UTF-8 text") from None


def _url_password(url: str) -> bool:
    try:
        return bool(urlsplit(url).password)
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """`url` with what follows the user name up to the host shown as `***`:
    `redis://user:***@host:6379/0`. Everything before the last `@` counts, so a password
    holding `@`, `/` or `#` unencoded is hidden too."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if not at:
        # No user part; but `redis://:secret` (the host left out) reads as a port.
        end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
        host, colon, port = rest[:end].rpartition(":")
        if colon and not port.isdigit() and not port.endswith("]"):
            return f"{scheme}{separator}{host}:***{rest[end:]}"
        return url
    user, colon, _ = userinfo.partition(":")
    # Without a colon the one part may be a password (`redis://secret@host`): hide it all.
    shown = f"{user}:***" if colon else "***"
    return f"{scheme}{separator}{shown}@{host}"


def _redis_url_problem(url: str) -> str:
    """What is wrong with a Redis URL, in words that never quote it; "" if nothing."""
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return "must start with redis://, rediss://, unix:// or redis+sentinel://"
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced [ of an IPv6 host, say
        return "is not a Redis URL: its host cannot be read"
    if "@" in parts.path + parts.query + parts.fragment:
        # The URL was cut before its host: redis-py would take part of the password for
        # the host or the port, and echo it in every connection error.
        return (
            "is not a Redis URL: percent-encode '/', '?' and '#' in the user name and "
            "password (%2F, %3F, %23)"
        )
    try:
        _ = parts.port  # reading it checks it
    except ValueError:
        # Not its text: what stands where the port should is sometimes the password.
        return "is not a Redis URL: the port must be a number from 0 to 65535"
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        # redis-py's remaining messages name a query option, never a value.
        return f"is not a Redis URL: {exc}"
    return ""


_CENTRAL_SCHEMES = ("postgresql://", "postgres://")
# The SQLite file when neither `url` nor `path` is given: beside the audit directory, in
# the node's data directory (var/central.sqlite3 with the sample configuration).
CENTRAL_FILE = "central.sqlite3"


def _central(
    table: _Reader, audit_dir: Path, env: Mapping[str, str], retention_days: int
) -> CentralSettings:
    table.unknown_keys({"url", "path", "password_file", "ship", "batch", "poll_ms", "keep_days"})
    from_env = env.get("DIALGUARD_CENTRAL_URL", "")
    url = from_env or table.get("url", str, "")
    if url and "path" in table.data and not from_env:
        raise table.fail("path", "give either url (PostgreSQL) or path (SQLite), not both")
    if url:
        if problem := _postgres_url_problem(url):
            message = f"{redact_url(url)!r} {problem}"
            if from_env:
                raise ConfigError(f"DIALGUARD_CENTRAL_URL: {message}")
            raise table.fail("url", message)
        path = None
    else:
        name: str = table.get("path", str, "")
        path = table.path.parent / name if name else audit_dir.parent / CENTRAL_FILE
    password = None
    secret_name: str = table.get("password_file", str, "")
    if secret_name and not url:
        raise table.fail("password_file", "only read with a PostgreSQL url")
    if secret_name:
        secret = table.path.parent / secret_name
        try:
            password = secret.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise table.fail("password_file", f"{secret}: cannot read: {exc.strerror}") from None
        if not password:
            raise table.fail("password_file", f"{secret}: empty")
    elif url:
        password = env.get("DIALGUARD_CENTRAL_PASSWORD") or None
    if password is not None and _url_password(url):
        raise table.fail(
            "password_file",
            "the URL holds a password and so does password_file or DIALGUARD_CENTRAL_PASSWORD:"
            " give it in one place only",
        )
    batch = table.positive("batch", 5000)
    if batch > 100_000:
        raise table.fail("batch", f"{batch}: at most 100000 records a transaction")
    poll_ms = table.positive("poll_ms", 500)
    if poll_ms > 60_000:
        raise table.fail("poll_ms", f"{poll_ms}: at most 60000 (a minute)")
    return CentralSettings(
        path=path,
        url=url,
        password=password,
        ship=table.get("ship", bool, True),
        batch=batch,
        poll_ms=poll_ms,
        # The store is a copy of the journal: by default it keeps what the journal keeps.
        keep_days=table.positive("keep_days", retention_days),
    )


def _postgres_url_problem(url: str) -> str:
    """What is wrong with a PostgreSQL URL, in words that never quote it; "" if nothing."""
    if not url.startswith(_CENTRAL_SCHEMES):
        return "must start with postgresql:// (leave url out for the SQLite file: [central] path)"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "is not a PostgreSQL URL: its host cannot be read"
    if "@" in parts.path + parts.query + parts.fragment:
        return (
            "is not a PostgreSQL URL: percent-encode '/', '?', '#' and '@' in the user name"
            " and password (%2F, %3F, %23, %40)"
        )
    try:
        _ = parts.port
    except ValueError:
        return "is not a PostgreSQL URL: the port must be a number from 0 to 65535"
    if parts.fragment:
        return "is not a PostgreSQL URL: it has a '#' part"
    return ""


# The sync's cursors when `state` is not given: beside the audit directory, as the
# central store's SQLite file is.
VICIDIAL_STATE_FILE = "vicidial.sqlite3"
# VICIdial's campaign_id: VARCHAR(8), letters, digits and a few signs in its admin pages.
_VICIDIAL_CAMPAIGN = re.compile(r"^[A-Za-z0-9_.-]{1,8}$")
_MYSQL_NAME = re.compile(r"^[A-Za-z0-9_$]{1,64}$")


def _vicidial(
    table: _Reader, audit_dir: Path, campaigns: Mapping[str, Campaign], env: Mapping[str, str]
) -> VicidialSettings:
    table.unknown_keys(
        {
            "url",
            "password_file",
            "number_form",
            "interval_s",
            "campaigns",
            "pull",
            "max_removals",
            "state",
        }
    )
    url: str = table.get("url", str)
    host, port, user, database = _mysql_url(table, url)
    password_name: str = table.get("password_file", str, "")
    if password_name:
        password: str | None = _secret_file(table, password_name)
        if not password:
            raise table.fail("password_file", f"{table.path.parent / password_name}: empty")
    else:
        password = env.get("DIALGUARD_VICIDIAL_PASSWORD") or None
    interval_s = table.positive("interval_s", 10)
    if interval_s > 3600:
        raise table.fail("interval_s", f"{interval_s}: at most 3600 (an hour)")
    max_removals = table.get("max_removals", int, 1000)
    if max_removals < 0:
        raise table.fail("max_removals", f"{max_removals} must be 0 (no limit) or more")
    mapping = table.table("campaigns")
    mapped: dict[str, str] = {}
    for campaign_id, name in mapping.data.items():
        if not _VICIDIAL_CAMPAIGN.match(campaign_id) or campaign_id == "-SYSINT-":
            raise mapping.fail(
                campaign_id, "a VICIdial campaign_id is 1-8 letters, digits, '_', '.', '-'"
            )
        if not isinstance(name, str) or name not in campaigns:
            known = ", ".join(sorted(campaigns))
            raise mapping.fail(campaign_id, f"{name!r} is not a configured campaign ({known})")
        mapped[campaign_id] = name
    state_name: str = table.get("state", str, "")
    return VicidialSettings(
        host=host,
        port=port,
        user=user,
        database=database,
        password=password,
        state=table.path.parent / state_name
        if state_name
        else audit_dir.parent / VICIDIAL_STATE_FILE,
        number_form=table.choice("number_form", NumberForm, "national"),
        interval_s=interval_s,
        campaigns=mapped,
        pull=table.get("pull", bool, True),
        max_removals=max_removals,
    )


def _mysql_url(table: _Reader, url: str) -> tuple[str, int, str, str]:
    """(host, port, user, database) of `mysql://user@host:port/database`; the error never
    quotes the URL (it may hold a password)."""
    if not url.startswith(("mysql://", "mariadb://")):
        raise table.fail("url", "must start with mysql:// (mysql://user@host:3306/asterisk)")
    try:
        parts = urlsplit(url)
        port = parts.port or 3306
    except ValueError:
        raise table.fail("url", "is not a MySQL URL: host or port unreadable") from None
    if parts.password is not None:
        raise table.fail(
            "url",
            f"{redact_url(url)!r} holds a password: give it in password_file or"
            " DIALGUARD_VICIDIAL_PASSWORD, never in this file",
        )
    if parts.query or parts.fragment:
        raise table.fail("url", "is not a MySQL URL: it has a '?' or '#' part")
    user = unquote(parts.username or "")
    if not user or not parts.hostname:
        raise table.fail("url", "needs a user and a host: mysql://user@host:3306/asterisk")
    database = parts.path.lstrip("/")
    if not _MYSQL_NAME.match(database):
        raise table.fail("url", "needs the database VICIdial uses after the host (/asterisk)")
    return parts.hostname, port, user, database


# The console's files when the section names none: in the node's data directory, beside
# the audit directory (var/ with the sample configuration), as the central store's file.
CONSOLE_USERS_FILE = "console-users.json"
CONSOLE_EXPORTS_DIR = "exports"


def _console(table: _Reader, audit_dir: Path) -> ConsoleSettings:
    table.unknown_keys(
        {
            "host",
            "port",
            "users_file",
            "exports_dir",
            "secure_cookies",
            "session_hours",
            "idle_minutes",
            "exports_keep_hours",
            "mask_key_file",
        }
    )
    port = table.positive("port", 8574)
    if port > 65535:
        raise table.fail("port", f"{port} is not a TCP port")

    def place(key: str, default: Path) -> Path:
        name: str = table.get(key, str, "")
        return table.path.parent / name if name else default

    session_hours = table.positive("session_hours", 12)
    if session_hours > 24 * 7:
        raise table.fail("session_hours", f"{session_hours}: at most 168 (a week)")
    idle_minutes = table.positive("idle_minutes", 30)
    if idle_minutes > session_hours * 60:
        raise table.fail("idle_minutes", f"{idle_minutes}: longer than session_hours")
    mask_key: str = table.get("mask_key_file", str, "")
    return ConsoleSettings(
        users_file=place("users_file", audit_dir.parent / CONSOLE_USERS_FILE),
        exports_dir=place("exports_dir", audit_dir.parent / CONSOLE_EXPORTS_DIR),
        host=table.get("host", str, "127.0.0.1"),
        port=port,
        secure_cookies=table.get("secure_cookies", bool, False),
        session_hours=session_hours,
        idle_minutes=idle_minutes,
        exports_keep_hours=table.positive("exports_keep_hours", 24),
        mask_key_file=table.path.parent / mask_key if mask_key else None,
    )


def _metrics(table: _Reader) -> MetricsSettings:
    table.unknown_keys({"host", "port", "ready_max_pending_s"})
    port = table.positive("port", 9573)
    if port > 65535:
        raise table.fail("port", f"{port} is not a TCP port")
    return MetricsSettings(
        table.get("host", str, "127.0.0.1"), port, table.positive("ready_max_pending_s", 60)
    )


def _api(table: _Reader, audit_dir: Path) -> ApiSettings:
    table.unknown_keys({"host", "port", "tokens_file", "max_body_bytes", "idempotency_hours"})
    port = table.positive("port", 8575)
    if port > 65535:
        raise table.fail("port", f"{port} is not a TCP port")
    name: str = table.get("tokens_file", str, "")
    tokens_file = table.path.parent / name if name else audit_dir.parent / TOKENS_FILE
    max_body = table.positive("max_body_bytes", 16_384)
    if max_body > MAX_BODY_LIMIT:
        raise table.fail("max_body_bytes", f"{max_body}: at most {MAX_BODY_LIMIT} (1 MiB)")
    hours = table.positive("idempotency_hours", 24)
    if hours > 24 * 31:
        raise table.fail("idempotency_hours", f"{hours}: at most {24 * 31} (a month)")
    return ApiSettings(
        tokens_file=tokens_file,
        host=table.get("host", str, "127.0.0.1"),
        port=port,
        max_body_bytes=max_body,
        idempotency_hours=hours,
    )


def _ari(table: _Reader, env: Mapping[str, str]) -> AriSettings:
    table.unknown_keys({"url", "app", "user", "password_env", "password_file", "on_deny"})
    url = table.get("url", str, "http://127.0.0.1:8088")
    if not url.startswith(("http://", "https://")):
        raise table.fail("url", f"{url!r} must start with http:// or https://")
    password_env = table.get("password_env", str, "DIALGUARD_ARI_PASSWORD")
    password_file = table.get("password_file", str, "")
    password = _secret_file(table, password_file) if password_file else env.get(password_env, "")
    if not password:
        raise table.fail(
            "password_env", f"no ARI password: set {password_env} or [ari] password_file"
        )
    on_deny = table.get("on_deny", str, "hangup")
    if on_deny not in ("hangup", "continue"):
        raise table.fail("on_deny", f"{on_deny!r} is not one of hangup, continue")
    return AriSettings(url.rstrip("/"), table.name("app"), table.name("user"), password, on_deny)


def _campaign(campaigns: _Reader, name: str) -> Campaign:
    if not _NAME.match(name):
        raise campaigns.fail(name, "campaign names must be 1-64 letters, digits, '_', '.', '-'")
    table = campaigns.table(name)
    table.unknown_keys(
        {
            "principal",
            "purpose",
            "sector",
            "fail_mode",
            "outside_line_prefix",
            "honour_dnc",
            "mode",
            "automated",
            "caller_ids",
            "caller_ids_file",
        }
    )
    prefix = table.get("outside_line_prefix", str, "")
    if not re.match(r"^\d{0,4}$", prefix):
        raise table.fail("outside_line_prefix", f"{prefix!r} must be up to 4 digits")
    return Campaign(
        name=name,
        principal=table.name("principal"),
        purpose=table.choice("purpose", Purpose),
        sector=table.choice("sector", Sector, "general"),
        fail_mode=table.choice("fail_mode", FailMode, "closed"),
        outside_prefix=prefix,
        honour_dnc=table.get("honour_dnc", bool, True),
        mode=table.choice("mode", Mode, "enforce"),
        automated=table.get("automated", bool, False),
        caller_ids=_all_caller_ids(table, table.name("principal")),
        caller_ids_file=(
            table.path.parent / table.get("caller_ids_file", str)
            if "caller_ids_file" in table.data
            else None
        ),
    )


def _all_caller_ids(table: _Reader, principal: str) -> CallerIds | None:
    """The numbers of `caller_ids` and those of `caller_ids_file` (a CSV file beside the
    configuration, read again on each reload: dialguard.callerids.read_file, the rows of
    the campaign's principal); None when the campaign has neither."""
    listed = _caller_ids(table) if "caller_ids" in table.data else None
    if "caller_ids_file" not in table.data:
        return listed
    name = table.get("caller_ids_file", str)
    try:
        imported = read_file(table.path.parent / name, principal)
    except BadCallerIds as exc:
        raise table.fail("caller_ids_file", str(exc)) from None
    return CallerIds((*(listed.entries if listed else ()), *imported.entries))


def _caller_ids(table: _Reader) -> CallerIds:
    """`caller_ids = ["01 62 00 00 00..01 62 00 09 99", {numbers = "+33 9 48 12 34 56",
    ref = "ARCEP 2023-0042", valid_from = 2024-01-01, valid_until = 2026-12-31}]`."""
    entries = []
    for item in table.get("caller_ids", list):
        if isinstance(item, str):
            text, ref, valid_from, valid_until = item, "", None, None
        elif isinstance(item, dict):
            entry = _Reader(table.path, item, f"{table.prefix}caller_ids.")
            entry.unknown_keys({"numbers", "ref", "valid_from", "valid_until"})
            text = entry.get("numbers", str)
            ref = entry.get("ref", str, "")
            valid_from = _plain_date(entry, "valid_from") if "valid_from" in item else None
            valid_until = _plain_date(entry, "valid_until") if "valid_until" in item else None
        else:
            raise table.fail(
                "caller_ids",
                f'{item!r} is not "NUMBER", "FROM..TO" or {{numbers = ..., ref = ...}}',
            )
        try:
            entries.append(parse_entry(text, ref, valid_from, valid_until))
        except BadCallerIds as exc:
            raise table.fail("caller_ids", str(exc)) from None
    return CallerIds(tuple(entries))


# The keys of a [[versions]] entry: its date and source, then the values it sets (a later
# version inherits every value it does not set from the version before it).
_VERSION_KEYS = {
    "effective_from",
    "source",
    "title",
    "regime",
    "out_of_scope_kinds",
    "optout",
    "consent",
    "refusal",
    "hours",
    "holidays",
    "frequency",
    "sectors",
    "caller_id",
}
# The format before versions: the values at the top, the regime switch as one date.
_OLD_FORMAT_KEYS = (_VERSION_KEYS - {"effective_from", "source", "title", "regime"}) | {
    "consent_regime_from"
}
# Where the old format's first version starts: the Bloctel opt-out regime (any date would
# do: the first version also answers for the days before it).
_OPTOUT_REGIME_FROM = date(2016, 6, 1)


def load_policy(path: Path) -> Policy:
    """Read a policy file: its versions by effective date (docs/policy.md)."""
    data, raw = _read_toml(path)
    top = _Reader(path, data)
    top.unknown_keys({"name", "default_timezone", "versions", *_OLD_FORMAT_KEYS})
    name = top.name("name")
    zone = top.get("default_timezone", str, "Europe/Paris")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise top.fail("default_timezone", f"{zone!r} is not an IANA time zone") from None
    digest = hashlib.sha256(raw).hexdigest()[:16]
    if "versions" not in data:
        return _old_format_policy(top, name, digest, zone)
    for key in sorted(_OLD_FORMAT_KEYS & data.keys()):
        raise top.fail(key, "goes inside a [[versions]] entry, not at the top (docs/policy.md)")
    entries = top.get("versions", list)
    if not entries:
        raise top.fail("versions", "at least one [[versions]] entry is needed")
    merged: dict[str, Any] = {}
    versions: list[Version] = []
    for index, entry in enumerate(entries):
        prefix = f"versions[{index}]."
        if not isinstance(entry, dict):
            raise top.fail(f"versions[{index}]", "must be a table ([[versions]])")
        own = _Reader(path, entry, prefix)
        own.unknown_keys(_VERSION_KEYS)
        effective_from = _plain_date(own, "effective_from")
        if versions and effective_from <= versions[-1].effective_from:
            previous = versions[-1].effective_from
            raise own.fail(
                "effective_from",
                f"{effective_from} is not after versions[{index - 1}]'s {previous}: "
                "versions go in date order, one per date, each in force until the next",
            )
        source = own.get("source", str)
        if not source.strip():
            raise own.fail("source", "empty: name the text that puts this version in force")
        title = own.get("title", str, "")
        merged = _merge(merged, entry)
        versions.append(_version(_Reader(path, merged, prefix), effective_from, source, title))
    return Policy(name, digest, zone, tuple(versions))


def _old_format_policy(top: _Reader, name: str, digest: str, zone: str) -> Policy:
    """A file in the format before versions (`consent_regime_from` and the values at the
    top): read as two versions with the same values, the opt-out regime, then the
    consent regime from that date. Decisions are the same; `policy check` says how to
    convert it."""
    switch = _plain_date(top, "consent_regime_from")
    values = {key: value for key, value in top.data.items() if key in _OLD_FORMAT_KEYS}
    first = min(_OPTOUT_REGIME_FROM, switch - timedelta(days=1))
    optout = _version(
        _Reader(top.path, {**values, "regime": "optout"}),
        first,
        "C. consommation L223-1 (Bloctel opt-out regime)",
        "opt-out regime (read from consent_regime_from)",
    )
    consent = _version(
        _Reader(top.path, {**values, "regime": "consent"}),
        switch,
        "Loi n° 2025-594 art. 13 (consent regime)",
        "consent regime (read from consent_regime_from)",
    )
    note = (
        f"{top.path}: consent_regime_from: the format before versions, read as two versions "
        f"(opt-out, then consent from {switch}); convert it to [[versions]] (docs/policy.md)"
    )
    return Policy(name, digest, zone, (optout, consent), notes=(note,))


def _plain_date(table: _Reader, key: str) -> date:
    value: date = table.get(key, date)
    if isinstance(value, datetime):  # TOML date-times are dates too, to isinstance
        raise table.fail(key, f"{value.isoformat()} must be a date (YYYY-MM-DD), no time")
    return value


def _merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `update`'s keys over it, tables merged key by key (a later version
    states only what changes)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _version(top: _Reader, effective_from: date, source: str, title: str) -> Version:
    """One version's values from `top` (a version's table merged over the ones before)."""
    kinds = top.get("out_of_scope_kinds", list, [])
    out_of_scope = set()
    for kind in kinds:
        try:
            out_of_scope.add(Kind(kind))
        except ValueError:
            allowed = ", ".join(k.value for k in Kind)
            raise top.fail("out_of_scope_kinds", f"{kind!r} is not one of {allowed}") from None

    optout = top.table("optout", required=True)
    consent = top.table("consent", required=True)
    refusal = top.table("refusal", required=True)
    hours = top.table("hours", required=True)
    holiday_table = top.table("holidays", required=True)
    frequency = top.table("frequency", required=True)
    # A misspelt key would leave its rule at the default, silently: refuse it as the
    # main configuration does.
    optout.unknown_keys({"freshness_days", "suppress_in_consent_regime"})
    consent.unknown_keys({"max_validity_days"})
    refusal.unknown_keys({"enabled", "block_days"})
    hours.unknown_keys({"days", "windows"})
    holiday_table.unknown_keys({"national", "local", "local_days"})
    frequency.unknown_keys({"max_attempts", "window_days"})

    days = frozenset(_day(hours, d) for d in hours.get("days", list))
    windows = tuple(_window(hours, w) for w in hours.get("windows", list))
    if not windows:
        raise hours.fail("windows", "at least one [start, end] window is needed")

    local_table = holiday_table.table("local_days")
    local_days: dict[str, tuple[str, ...]] = {}
    for territory in local_table.data:
        if not re.fullmatch(r"[A-Z]{2}", territory):
            # Numbers name their territory so ("RE"): any other key would never match.
            raise local_table.fail(territory, "not a territory code (ISO 3166, e.g. FR, RE)")
        specs = tuple(local_table.get(territory, list))
        for spec in specs:
            if not isinstance(spec, str) or not _LOCAL_DAY.match(spec):
                raise local_table.fail(territory, f'{spec!r} is not "MM-DD" or "good_friday"')
        local_days[territory] = specs

    caller_id = top.table("caller_id")
    caller_id.unknown_keys({"verified_prefixes", "special_excluded_prefixes"})
    verified = _prefixes(caller_id, "verified_prefixes")
    special_excluded = _prefixes(caller_id, "special_excluded_prefixes")

    sectors = top.table("sectors")
    bans: dict[Sector, date] = {}
    for sector_name in sectors.data:
        try:
            sector = Sector(sector_name)
        except ValueError:
            allowed = ", ".join(s.value for s in Sector)
            raise sectors.fail(sector_name, f"not one of {allowed}") from None
        ban = sectors.table(sector_name)
        ban.unknown_keys({"banned_from"})
        bans[sector] = _plain_date(ban, "banned_from")

    return Version(
        effective_from=effective_from,
        source=source,
        title=title,
        regime=top.choice("regime", Regime),
        out_of_scope_kinds=frozenset(out_of_scope),
        optout_freshness_days=optout.positive("freshness_days"),
        optout_suppress_in_consent_regime=optout.get("suppress_in_consent_regime", bool, True),
        consent_max_validity_days=consent.positive("max_validity_days"),
        refusal_enabled=refusal.get("enabled", bool, True),
        refusal_block_days=refusal.positive("block_days"),
        days=days,
        windows=windows,
        holidays_national=holiday_table.get("national", bool, True),
        holidays_local=holiday_table.get("local", bool, True),
        local_days=local_days,
        max_attempts=frequency.positive("max_attempts"),
        window_days=frequency.positive("window_days"),
        sector_bans=bans,
        caller_id_verified_prefixes=verified,
        caller_id_special_excluded=special_excluded,
    )


def _prefixes(table: _Reader, key: str) -> tuple[str, ...]:
    """National number prefixes ("0162", "09475"): a 0, then 1 to 9 digits."""
    found = table.get(key, list, [])
    for prefix in found:
        if not isinstance(prefix, str) or not re.fullmatch(r"0[1-9]\d{0,8}", prefix):
            raise table.fail(key, f'{prefix!r} is not the start of a national number ("0162")')
    return tuple(found)


def _day(hours: _Reader, value: object) -> int:
    if not isinstance(value, str) or value not in _DAYS:
        raise hours.fail("days", f"{value!r} is not one of {', '.join(_DAYS)}")
    return _DAYS[value]


def _window(hours: _Reader, value: object) -> tuple[time, time]:
    if not (isinstance(value, list) and len(value) == 2):
        raise hours.fail("windows", f'{value!r} must be ["HH:MM", "HH:MM"]')
    try:
        start, end = (time.fromisoformat(part) for part in value)
    except (TypeError, ValueError):
        raise hours.fail("windows", f'{value!r} must be ["HH:MM", "HH:MM"]') from None
    if start.tzinfo is not None or end.tzinfo is not None:
        # The callee's local time is what counts (the numbers say which zone): an offset
        # here would mean nothing, and comparing it with a plain time raised TypeError.
        raise hours.fail("windows", f"{value!r}: local times, without a UTC offset")
    if start >= end:
        raise hours.fail("windows", f"{value!r}: the start must come before the end")
    return start, end
