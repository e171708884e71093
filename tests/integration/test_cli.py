"""The ``interlock`` command as an operator runs it: a real process, real output."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from interlock.testing.fake_upstream import FakeUpstream
from tests.support.gateway import free_port, write_config

INTERLOCK = [sys.executable, "-m", "interlock"]


def run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*INTERLOCK, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INTERLOCK_", "DATABASE_"))}
    env["INTERLOCK_DATA_DIR"] = str(tmp_path / "data")
    return env


def test_config_check_accepts_the_defaults(tmp_path: Path) -> None:
    result = run(["config", "check"], base_env(tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "models: local" in result.stdout


def test_config_check_lists_every_problem_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[models.x]\ndeployments = [{ provider = "openai", weight = 0 }]\n')
    env = {**base_env(tmp_path), "INTERLOCK_PORT": "99999"}
    result = run(["config", "check", "--config", str(config)], env, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "error: INTERLOCK_PORT: 99999 is not a port number (1-65535)"
    assert any("models.x.deployments.0.weight" in line for line in lines)
    assert all(line.startswith("error: ") for line in lines)
    assert "Traceback" not in result.stderr


def test_serve_refuses_bad_config_with_status_2(tmp_path: Path) -> None:
    env = {**base_env(tmp_path), "INTERLOCK_LOG_FORMAT": "xml"}
    result = run(["serve"], env, tmp_path)
    assert result.returncode == 2
    assert result.stderr == "error: INTERLOCK_LOG_FORMAT: expected json or console\n"


def test_serve_reports_an_unreachable_database_in_one_line(tmp_path: Path) -> None:
    env = {
        **base_env(tmp_path),
        "DATABASE_URL": f"postgresql://admin:hunter2secret@127.0.0.1:{free_port()}/db",
        "INTERLOCK_SECRET": "x" * 40,
        "INTERLOCK_PORT": str(free_port()),
    }
    result = run(["serve"], env, tmp_path)
    assert result.returncode != 0
    assert "Interlock could not start" in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2secret" not in result.stderr + result.stdout


@contextmanager
def serving(env: dict[str, str], cwd: Path, port: int) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [*INTERLOCK, "serve", "--port", str(port)],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start: {process.communicate()[1]}")
            time.sleep(0.05)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_first_start_prints_an_admin_key_once(tmp_path: Path) -> None:
    with FakeUpstream() as upstream:
        config = write_config(
            tmp_path / "interlock.toml",
            {
                "models.fake": {
                    "deployments": [
                        {
                            "provider": "openai",
                            "model": "m",
                            "base_url": upstream.openai_base_url,
                            "api_key_env": "FAKE_KEY",
                        }
                    ]
                }
            },
        )
        env = {**base_env(tmp_path), "INTERLOCK_CONFIG": str(config), "FAKE_KEY": "sk-x"}
        port = free_port()
        with serving(env, tmp_path, port) as process:
            response = httpx.get(f"http://127.0.0.1:{port}/v1/models")
            assert response.status_code == 401
        output = process.stdout.read() if process.stdout else ""
        assert f"Interlock listening on http://127.0.0.1:{port}" in output
        match = re.search(r"^\s+(il_live_\w+)$", output, re.MULTILINE)
        assert match, output
        key = match.group(1)

        with serving(env, tmp_path, port) as process:
            response = httpx.get(
                f"http://127.0.0.1:{port}/v1/models", headers={"authorization": f"Bearer {key}"}
            )
            assert response.status_code == 200
            assert [m["id"] for m in response.json()["data"]] == ["fake"]
        output = process.stdout.read() if process.stdout else ""
        assert key not in output
        assert "admin key printed on first start" in output
        secret_file = tmp_path / "data" / "secret"
        assert secret_file.stat().st_mode & 0o077 == 0


def test_insecure_flag_is_loud(tmp_path: Path) -> None:
    with FakeUpstream() as upstream:
        config = write_config(
            tmp_path / "interlock.toml",
            {
                "models.fake": {
                    "deployments": [
                        {
                            "provider": "openai",
                            "model": "m",
                            "base_url": upstream.openai_base_url,
                            "api_key_env": "FAKE_KEY",
                        }
                    ]
                }
            },
        )
        env = {
            **base_env(tmp_path),
            "INTERLOCK_CONFIG": str(config),
            "FAKE_KEY": "sk-x",
            "INTERLOCK_INSECURE_NO_AUTH": "true",
        }
        port = free_port()
        with serving(env, tmp_path, port) as process:
            assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 200
        output = process.stdout.read() if process.stdout else ""
        assert "WITHOUT authentication" in output


@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "current"]])
def test_db_commands(tmp_path: Path, command: list[str]) -> None:
    result = run(command, base_env(tmp_path), tmp_path)
    assert result.returncode == 0, result.stderr
    assert "database at revision" in result.stdout
