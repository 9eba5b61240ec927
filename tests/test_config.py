"""Settings from `CHAT_*` variables, and the command line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sio_server.config import Settings, ensure_secret_key, load_settings
from sio_server.errors import ConfigError
from sio_server.store import PostgresStore, SQLiteStore, create_store
from tests.database import (
    create_postgres_database,
    drop_postgres_database,
    using_postgres,
)
from tests.support import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_defaults() -> None:
    settings = load_settings({})
    assert settings.port == 8080
    assert settings.data_dir == Path("data")
    assert settings.visitor_grace_s == 120
    assert settings.agent_grace_s == 60
    assert settings.effective_database_url == "sqlite:///data/chat.sqlite3"


def test_values_parsed() -> None:
    settings = load_settings(
        {
            "CHAT_PORT": "9000",
            "CHAT_CORS_ORIGINS": "https://shop.example, http://localhost:3000",
            "CHAT_VISITOR_GRACE_S": "2.5",
        }
    )
    assert settings.port == 9000
    assert settings.cors_origins == ("https://shop.example", "http://localhost:3000")
    assert settings.visitor_grace_s == 2.5


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHAT_PORT", "eighty"),
        ("CHAT_PORT", "70000"),
        ("CHAT_VISITOR_GRACE_S", "-1"),
        ("CHAT_AGENT_GRACE_S", "nan"),
        ("CHAT_PING_INTERVAL_S", "0"),
        ("CHAT_CORS_ORIGINS", "shop.example"),
        ("CHAT_CORS_ORIGINS", "https://shop.example/"),
        ("CHAT_WS_COMPRESSION", "maybe"),
        ("CHAT_LOG_LEVEL", "LOUD"),
        ("CHAT_DATABASE_URL", "mysql://x"),
        ("CHAT_MAX_PAYLOAD_BYTES", "1000"),
    ],
)
def test_bad_value_names_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("CHAT_PORT", "abc", "must be a whole number"),
        ("CHAT_MAX_QUEUE", "1.5", "must be a whole number"),
        ("CHAT_VISITOR_GRACE_S", "soon", "must be a number"),
        ("CHAT_QUEUE_TIMEOUT_S", "ten", "must be a number"),
    ],
)
def test_non_number_names_expected_kind(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({name: value})
    assert name in str(error.value)
    assert expected in str(error.value)
    assert "invalid literal" not in str(error.value)


def test_unknown_variable_rejected() -> None:
    with pytest.raises(ConfigError, match="CHAT_PROT"):
        load_settings({"CHAT_PROT": "9000"})


def test_secret_key_generated_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    first = ensure_secret_key(settings).secret_key
    second = ensure_secret_key(settings).secret_key
    assert len(first) >= 32
    assert first == second
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


def test_short_secret_key_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CHAT_SECRET_KEY"):
        ensure_secret_key(Settings(data_dir=tmp_path, secret_key="short"))


def run_cli(tmp_path: Path, *args: str, stdin: str = "", **env: str):
    return subprocess.run(
        [sys.executable, "-m", "sio_server", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("CHAT_")},
            "CHAT_DATA_DIR": str(tmp_path),
            **env,
        },
    )


@pytest.fixture
async def database_env() -> AsyncIterator[dict[str, str]]:
    """`CHAT_DATABASE_URL` of a new database under CHAT_TEST_DATABASE=postgres."""
    if not using_postgres():
        yield {}
        return
    url = await create_postgres_database()
    try:
        yield {"CHAT_DATABASE_URL": url}
    finally:
        await drop_postgres_database(url)


def test_create_agent_command(tmp_path: Path, database_env: dict[str, str]) -> None:
    args = ("create-agent", "--email", "ann@example.com", "--name", "Ann")
    created = run_cli(
        tmp_path, *args, "--password-stdin", stdin="long enough pw\n", **database_env
    )
    assert created.returncode == 0, created.stderr
    assert len(created.stdout.strip()) == 36

    again = run_cli(
        tmp_path, *args, "--password-stdin", stdin="long enough pw\n", **database_env
    )
    assert again.returncode == 2
    assert "ann@example.com" in again.stderr


def test_create_agent_short_password(tmp_path: Path) -> None:
    result = run_cli(
        tmp_path,
        "create-agent",
        "--email",
        "ann@example.com",
        "--name",
        "Ann",
        "--password-stdin",
        stdin="short\n",
    )
    assert result.returncode == 2
    assert "at least 10 characters" in result.stderr


def test_serve_bad_setting_exits(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "serve", CHAT_PORT="not-a-port")
    assert result.returncode == 2
    assert "CHAT_PORT" in result.stderr


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://chat:secret@127.0.0.1:5432/chat",
        "postgres://127.0.0.1/chat?sslmode=disable",
        "sqlite:///var/chat.sqlite3",
    ],
)
def test_database_url_accepted(url: str) -> None:
    assert load_settings({"CHAT_DATABASE_URL": url}).effective_database_url == url


def test_store_chosen_by_url(tmp_path: Path) -> None:
    assert isinstance(create_store("postgresql://127.0.0.1/chat"), PostgresStore)
    assert isinstance(create_store("postgres://127.0.0.1/chat"), PostgresStore)
    sqlite_url = f"sqlite:///{tmp_path / 'chat.sqlite3'}"
    assert isinstance(create_store(sqlite_url), SQLiteStore)
    with pytest.raises(ConfigError, match="postgresql://"):
        create_store("mysql://127.0.0.1/chat")


def test_serve_unreachable_database_exits(tmp_path: Path) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"postgresql://chat:hunter2secret@127.0.0.1:{port}/chat"
    result = run_cli(
        tmp_path, "serve", CHAT_DATABASE_URL=url, CHAT_PORT=str(free_port())
    )
    assert result.returncode == 2
    assert f"connecting to PostgreSQL at 127.0.0.1:{port}/chat failed" in result.stderr
    assert "hunter2secret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_busy_port_exits(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(tmp_path, "serve", CHAT_PORT=str(port))
    assert result.returncode == 2
    assert "set CHAT_PORT to a free port" in result.stderr
    assert "Traceback" not in result.stderr
    assert "serving on" not in result.stderr
