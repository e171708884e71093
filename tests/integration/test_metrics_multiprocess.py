"""Several gateway processes sharing ``PROMETHEUS_MULTIPROC_DIR``: a scrape of any one of
them counts the requests of all of them, also after one has stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from interlock.testing.fake_upstream import FakeUpstream
from tests.support.gateway import ADMIN_KEY, SECRET, free_port, write_config

ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def gateway_process(tmp_path: Path, name: str, config: Path, multiproc_dir: Path) -> Iterator[str]:
    """``interlock serve`` in its own process; yields its URL, stops it (SIGTERM) after."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "INTERLOCK_DATA_DIR": str(tmp_path / name),
        "INTERLOCK_ADMIN_KEY": ADMIN_KEY,
        "INTERLOCK_SECRET": SECRET,
        "FAKE_PROVIDER_KEY": "sk-fake-provider-key-123",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir),
    }
    log = (tmp_path / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "interlock", "serve", "--port", str(port), "--config", str(config)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError((tmp_path / f"{name}.log").read_text())
            try:
                if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} did not start")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def requests_total(url: str) -> float:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    return sum(
        sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if sample.name == "interlock_requests_total"
        and sample.labels.get("model") == "fast"
        and sample.labels.get("status") == "200"
    )


def chat(url: str) -> None:
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={"model": "fast", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text


@pytest.mark.timeout(180)
def test_two_processes_are_summed(tmp_path: Path) -> None:
    multiproc_dir = tmp_path / "prometheus"
    multiproc_dir.mkdir()
    with FakeUpstream() as upstream, ExitStack() as stack:
        deployment = {
            "provider": "openai",
            "model": "fake-model",
            "base_url": upstream.openai_base_url,
            "api_key_env": "FAKE_PROVIDER_KEY",
            "name": "fast-1",
        }
        config = write_config(
            tmp_path / "interlock.toml", {"models.fast": {"deployments": [deployment]}}
        )
        first = stack.enter_context(gateway_process(tmp_path, "first", config, multiproc_dir))
        with gateway_process(tmp_path, "second", config, multiproc_dir) as second:
            for _ in range(2):
                chat(first)
            for _ in range(3):
                chat(second)
            assert requests_total(first) == 5
            assert requests_total(second) == 5
            assert len(list(multiproc_dir.glob("counter_*.db"))) == 2  # one file per process
        # The second process has stopped; what it counted still counts.
        assert requests_total(first) == 5
        chat(first)
        assert requests_total(first) == 6
