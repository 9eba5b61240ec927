"""Settings read from `CHAT_*` environment variables and validated once at start."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from limits import RateLimitItem

from .errors import ConfigError
from .ratelimit import parse_limit
from .store import SUPPORTED_URLS, is_supported_url

PREFIX = "CHAT_"
SECRET_KEY_FILE = "secret_key"

T = TypeVar("T")

DEPARTMENT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Department:
    """A queue of its own, served by the agents who list it."""

    id: str
    name: str

    def to_wire(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name}


@dataclass(frozen=True)
class Settings:
    """Server settings: each field is read from `CHAT_` plus its name in upper case."""

    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    database_url: str = ""
    secret_key: str = ""
    cors_origins: tuple[str, ...] = ()
    # `*` in `cors_origins` lets any web page connect, so it needs this too.
    cors_allow_any: bool = False
    visitor_grace_s: float = 120.0
    agent_grace_s: float = 60.0
    ping_interval_s: float = 25.0
    ping_timeout_s: float = 20.0
    agent_token_ttl_s: int = 12 * 3600
    visitor_token_ttl_s: int = 30 * 24 * 3600
    max_payload_bytes: int = 1_000_000
    ws_compression: bool = False
    log_level: str = "INFO"
    log_format: str = "text"
    # Seconds that running handlers and open requests get to finish on
    # SIGTERM or SIGINT before the process exits anyway.
    shutdown_timeout_s: float = 10.0
    departments: tuple[Department, ...] = ()
    # Zero turns a timeout off.
    queue_timeout_s: float = 600.0
    agent_reply_timeout_s: float = 0.0
    visitor_idle_timeout_s: float = 1800.0
    timer_interval_s: float = 1.0
    # Rate limits as `limits` strings, such as "20/second;600/minute"; "off"
    # turns one off.
    limit_connect_per_ip: tuple[RateLimitItem, ...] = parse_limit("120/minute")
    limit_events_per_socket: tuple[RateLimitItem, ...] = parse_limit(
        "20/second;600/minute"
    )
    limit_messages_per_visitor: tuple[RateLimitItem, ...] = parse_limit(
        "10/second;120/minute"
    )
    limit_login_per_account: tuple[RateLimitItem, ...] = parse_limit("5/minute;30/hour")
    limit_login_per_ip: tuple[RateLimitItem, ...] = parse_limit("30/minute")
    max_sockets_per_visitor: int = 10
    max_sockets_per_agent: int = 20
    max_queue: int = 1000
    max_connections: int = 10_000
    # Take the client address from the last X-Forwarded-For entry, which the
    # reverse proxy in front of the server appends.
    trust_forwarded_for: bool = False
    # The Socket.IO Admin UI at /admin-ui/, for admin accounts; read-only
    # unless turned off here.
    admin_ui: bool = False
    admin_ui_read_only: bool = True
    # Several nodes share Redis for fan-out, presence and grace timers when
    # this is set; every node of one cluster has the same cluster name.
    redis_url: str = ""
    cluster_name: str = "chat"
    # Empty means the host name and process id.
    node_id: str = ""
    # How long a node's heartbeat lives in Redis: the others take over its
    # people this long after it dies.
    node_ttl_s: float = 10.0

    @property
    def department_ids(self) -> frozenset[str]:
        return frozenset(department.id for department in self.departments)

    @property
    def sqlite_path(self) -> Path:
        """Return the SQLite file used when no database URL is set."""
        return self.data_dir / "chat.sqlite3"

    @property
    def effective_database_url(self) -> str:
        """Return `database_url`, or the data dir's SQLite file when it is empty."""
        return self.database_url or f"sqlite:///{self.sqlite_path}"


def _whole_number(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _number(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("must be a number") from None


def _parse_port(raw: str) -> int:
    value = _whole_number(raw)
    if not 1 <= value <= 65535:
        raise ValueError("must be between 1 and 65535")
    return value


def _parse_positive_float(raw: str) -> float:
    value = _number(raw)
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number of seconds")
    return value


def _parse_timeout(raw: str) -> float:
    value = _number(raw)
    if not 0 <= value < float("inf"):
        raise ValueError("must be a number of seconds, or 0 to turn it off")
    return value


def _parse_departments(raw: str) -> tuple[Department, ...]:
    departments: list[Department] = []
    for item in raw.split(","):
        if not item.strip():
            continue
        key, _, label = item.partition("=")
        key, label = key.strip(), label.strip()
        if not DEPARTMENT_ID.match(key):
            raise ValueError(
                f"department id {key!r} must be 1 to 32 lower-case letters, digits,"
                " '-' or '_', starting with a letter or digit"
            )
        if any(department.id == key for department in departments):
            raise ValueError(f"department id {key!r} is listed twice")
        departments.append(Department(key, label or key))
    return tuple(departments)


def _parse_positive_int(raw: str) -> int:
    value = _whole_number(raw)
    if value <= 0:
        raise ValueError("must be a positive whole number")
    return value


def _parse_origins(raw: str) -> tuple[str, ...]:
    origins = tuple(item.strip() for item in raw.split(",") if item.strip())
    for origin in origins:
        if origin == "*":
            continue
        scheme, _, rest = origin.partition("://")
        if scheme not in ("http", "https") or not rest:
            raise ValueError(f"origin {origin!r} must start with http:// or https://")
        if "/" in rest:
            # Browsers send the Origin header without a path or trailing
            # slash, so such an entry would never match.
            raise ValueError(
                f"origin {origin!r} must not have a path: use {scheme}://{rest.split('/')[0]}"
            )
    return origins


def _parse_switch(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"on", "true", "1", "yes"}:
        return True
    if value in {"off", "false", "0", "no"}:
        return False
    raise ValueError("must be on or off")


def _parse_log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return level


def _parse_log_format(raw: str) -> str:
    value = raw.strip().lower()
    if value not in {"text", "json"}:
        raise ValueError("must be text or json")
    return value


def _parse_database_url(raw: str) -> str:
    if raw and not is_supported_url(raw):
        raise ValueError(f"unsupported database URL: use {SUPPORTED_URLS}")
    return raw


def _parse_redis_url(raw: str) -> str:
    value = raw.strip()
    if value and not value.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError("must be a redis://, rediss:// or unix:// URL")
    return value


def _parse_name(raw: str) -> str:
    value = raw.strip()
    if not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
        raise ValueError("use 1 to 64 letters, digits and _ . : -")
    return value


def _parse_node_ttl(raw: str) -> float:
    value = _parse_positive_float(raw)
    if value < 1:
        raise ValueError("must be at least 1 second")
    return value


_PARSERS: dict[str, Callable[[str], object]] = {
    "host": str.strip,
    "port": _parse_port,
    "data_dir": Path,
    "database_url": _parse_database_url,
    "secret_key": str,
    "cors_origins": _parse_origins,
    "cors_allow_any": _parse_switch,
    "visitor_grace_s": _parse_positive_float,
    "agent_grace_s": _parse_positive_float,
    "ping_interval_s": _parse_positive_float,
    "ping_timeout_s": _parse_positive_float,
    "agent_token_ttl_s": _parse_positive_int,
    "visitor_token_ttl_s": _parse_positive_int,
    "max_payload_bytes": _parse_positive_int,
    "ws_compression": _parse_switch,
    "log_level": _parse_log_level,
    "log_format": _parse_log_format,
    "shutdown_timeout_s": _parse_positive_float,
    "departments": _parse_departments,
    "queue_timeout_s": _parse_timeout,
    "agent_reply_timeout_s": _parse_timeout,
    "visitor_idle_timeout_s": _parse_timeout,
    "timer_interval_s": _parse_positive_float,
    "limit_connect_per_ip": parse_limit,
    "limit_events_per_socket": parse_limit,
    "limit_messages_per_visitor": parse_limit,
    "limit_login_per_account": parse_limit,
    "limit_login_per_ip": parse_limit,
    "max_sockets_per_visitor": _parse_positive_int,
    "max_sockets_per_agent": _parse_positive_int,
    "max_queue": _parse_positive_int,
    "max_connections": _parse_positive_int,
    "trust_forwarded_for": _parse_switch,
    "admin_ui": _parse_switch,
    "admin_ui_read_only": _parse_switch,
    "redis_url": _parse_redis_url,
    "cluster_name": _parse_name,
    "node_id": _parse_name,
    "node_ttl_s": _parse_node_ttl,
}


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build `Settings` from the environment, raising `ConfigError` on a bad value."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name, parse in _PARSERS.items():
        variable = PREFIX + name.upper()
        raw = env.get(variable)
        if raw is None:
            continue
        try:
            values[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{variable}={raw!r} is invalid: {exc}") from exc
    unknown = sorted(
        key
        for key in env
        if key.startswith(PREFIX) and key[len(PREFIX) :].lower() not in _PARSERS
    )
    if unknown:
        raise ConfigError(
            f"unknown setting {unknown[0]}: check the spelling against the README"
        )
    settings = Settings(**values)  # type: ignore[arg-type]
    if "*" in settings.cors_origins and not settings.cors_allow_any:
        raise ConfigError(
            "CHAT_CORS_ORIGINS=* lets any web site open chats and call the API in"
            " its visitors' browsers: list the sites' origins instead, or set"
            " CHAT_CORS_ALLOW_ANY=on as well if that is what you want"
        )
    if settings.max_payload_bytes < 64 * 1024:
        raise ConfigError(
            "CHAT_MAX_PAYLOAD_BYTES must be at least 65536 so that an oversize "
            "message gets an error reply instead of a dropped connection"
        )
    return settings


def ensure_secret_key(settings: Settings) -> Settings:
    """Return settings with a secret key, creating one in the data dir when unset.

    The generated key is kept in `DATA_DIR/secret_key` (mode 0600) so that tokens
    signed before a restart stay valid after it.
    """
    if settings.secret_key:
        if len(settings.secret_key) < 32:
            raise ConfigError(
                "CHAT_SECRET_KEY is too short: use at least 32 characters"
            )
        return settings
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / SECRET_KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text(encoding="ascii").strip()
    else:
        key = secrets.token_urlsafe(48)
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(key + "\n")
    if len(key) < 32:
        raise ConfigError(
            f"{path} contains a key shorter than 32 characters: delete it"
        )
    return replace(settings, secret_key=key)
