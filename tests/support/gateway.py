"""Running a real Interlock for tests: config files, settings, and a uvicorn server on
127.0.0.1 in a background thread (the in-process ASGI transport buffers whole bodies, so
anything about streaming runs against this)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from opentelemetry.trace import TracerProvider
from sqlalchemy import select

from interlock.app import create_app
from interlock.serving import server_config
from interlock.settings import Settings, load_settings
from interlock.store.database import Database
from interlock.store.models import UsageRow

ADMIN_KEY = "test-admin-key-0123456789abcdef"
SECRET = "test-secret-0123456789abcdef0123456789"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def write_config(path: Path, config: Mapping[str, Mapping[str, Any]]) -> Path:
    """Write ``{"models.x": {...}, "server": {...}}`` as TOML tables with inline values."""
    lines = []
    for table, values in config.items():
        lines.append(f"[{table}]")
        lines.extend(f"{json.dumps(key)} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def make_settings(
    tmp_path: Path,
    config: Mapping[str, Mapping[str, Any]] | None = None,
    env: Mapping[str, str] | None = None,
) -> Settings:
    environ = {
        "INTERLOCK_DATA_DIR": str(tmp_path / "data"),
        "INTERLOCK_ADMIN_KEY": ADMIN_KEY,
        "INTERLOCK_SECRET": SECRET,
        "FAKE_PROVIDER_KEY": "sk-fake-provider-key-123",
        **(env or {}),
    }
    if config is not None and "health" not in config:
        # No background probes unless a test asks for them: a probe's GET would show up in
        # the fake upstream's ledger of every test that counts the calls it received.
        config = {**config, "health": {"probe_interval": 0}}
    config_path = write_config(tmp_path / "interlock.toml", config) if config is not None else None
    return load_settings(environ, host="127.0.0.1", port=free_port(), config_path=config_path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningGateway:
    settings: Settings
    url: str

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"


@contextmanager
def serve(
    settings: Settings, timeout: float = 30.0, *, tracer_provider: TracerProvider | None = None
) -> Iterator[RunningGateway]:
    """Run the gateway on a real socket in a thread until the block ends (its spans to
    ``tracer_provider``, if given)."""
    app = create_app(settings, announce=None, tracer_provider=tracer_provider)
    server = uvicorn.Server(server_config(app, settings.host, settings.port, loop="asyncio"))
    thread = threading.Thread(target=server.run, name="interlock-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the gateway failed to start")
        if time.monotonic() > deadline:
            raise TimeoutError("the gateway did not start in time")
        time.sleep(0.01)
    try:
        yield RunningGateway(settings, f"http://{settings.host}:{settings.port}")
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def usage_rows(gateway: RunningGateway, request_id: str, wait: float = 10.0) -> list[UsageRow]:
    """The usage rows of ``request_id``, once the gateway has written them (the ledger writes
    in batches, so this waits up to ``wait`` seconds for them)."""

    async def read() -> list[UsageRow]:
        database = Database(gateway.settings.database_url)
        try:
            async with database.session() as session:
                query = select(UsageRow).where(UsageRow.request_id == request_id)
                return list((await session.scalars(query)).all())
        finally:
            await database.aclose()

    deadline = time.monotonic() + wait
    while True:
        rows = asyncio.run(read())
        if rows or time.monotonic() > deadline:
            return rows
        time.sleep(0.02)
