"""Background reachability probes of the model deployments, for ``/health/ready``.

A readiness check must never call a provider itself (a load balancer polls it every few
seconds, on every instance). Instead one task per app probes every deployment each
``[health] probe_interval`` seconds and keeps the last result; the health route only reads
them. A probe is cheap and generates nothing:

- OpenAI-compatible deployments: ``GET {base_url}/models``;
- Anthropic deployments: ``GET {base_url}/v1/models``;
- the embedded model: loaded or not (no I/O).

An HTTP answer means the upstream is reachable (``ok``), except 401/403 (our credentials
are refused: ``down``) and 5xx (``down``); a connection failure or no answer within
``[health] probe_timeout`` is ``down``. Results carry a fixed reason, never a URL, a key or
an exception's text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Literal

import aiohttp
import structlog

from interlock.providers.anthropic import ANTHROPIC_VERSION
from interlock.providers.classify import TRANSPORT_ERRORS
from interlock.providers.http import create_session
from interlock.settings import DeploymentConfig, HealthConfig, Settings

log = structlog.get_logger("interlock.providers.probes")

ProbeStatus = Literal["ok", "down", "unknown"]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The last probe of one deployment."""

    provider: str
    status: ProbeStatus
    reason: str | None = None  # a fixed label when down
    latency_ms: float | None = None
    checked_at: float | None = None  # time.time() of the probe; None: not probed yet

    def as_json(self, now: float) -> dict[str, object]:
        body: dict[str, object] = {"status": self.status, "provider": self.provider}
        if self.reason is not None:
            body["reason"] = self.reason
        if self.latency_ms is not None:
            body["latency_ms"] = self.latency_ms
        if self.checked_at is not None:
            body["checked_seconds_ago"] = round(max(0.0, now - self.checked_at), 1)
        return body


@dataclass(frozen=True, slots=True)
class _Target:
    name: str
    provider: str
    url: str  # "" for the embedded model
    headers: dict[str, str]


class DeploymentProbes:
    """Probes every deployment in the background and keeps the last result of each."""

    def __init__(
        self,
        settings: Settings,
        usable: Callable[[], Iterable[str]],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config: HealthConfig = settings.config.health
        self._usable = usable  # the registry's: the embedded model counts once loaded
        self._clock = clock
        self._targets = [
            _target(deployment, settings.api_key_for(deployment))
            for model in settings.config.models.values()
            for deployment in model.deployments
        ]
        self._results: dict[str, ProbeResult] = {
            target.name: ProbeResult(target.provider, "unknown") for target in self._targets
        }
        self.rounds = 0  # probe rounds completed (for tests and the health body)

    @property
    def enabled(self) -> bool:
        return self._config.probe_interval > 0

    def results(self) -> dict[str, ProbeResult]:
        return dict(self._results)

    async def probe_all(self, session: aiohttp.ClientSession) -> None:
        """One round: every deployment at once, each bounded by the probe timeout."""
        results = await asyncio.gather(*(self._probe(session, t) for t in self._targets))
        for target, result in zip(self._targets, results, strict=True):
            previous = self._results.get(target.name)
            if previous is not None and previous.status != result.status:
                log.info(
                    "deployment_probe_changed",
                    deployment=target.name,
                    status=result.status,
                    reason=result.reason,
                )
            self._results[target.name] = result
        self.rounds += 1

    async def _probe(self, session: aiohttp.ClientSession, target: _Target) -> ProbeResult:
        now = self._clock()
        if not target.url:
            ready = target.name in self._usable()
            return ProbeResult(
                target.provider,
                "ok" if ready else "down",
                None if ready else "not loaded",
                checked_at=now,
            )
        started = time.perf_counter()
        timeout = aiohttp.ClientTimeout(total=self._config.probe_timeout)
        try:
            async with session.get(
                target.url, headers=target.headers, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
        except TimeoutError:
            return ProbeResult(target.provider, "down", "timeout", checked_at=now)
        except TRANSPORT_ERRORS:
            return ProbeResult(target.provider, "down", "connection failed", checked_at=now)
        latency = round((time.perf_counter() - started) * 1000, 1)
        if status in (401, 403):
            reason: str | None = f"credentials refused (HTTP {status})"
        elif status >= 500:
            reason = f"HTTP {status}"
        else:
            reason = None
        return ProbeResult(
            target.provider, "down" if reason else "ok", reason, latency, checked_at=now
        )

    async def run(self) -> None:
        """Probe every ``probe_interval`` seconds until cancelled."""
        async with create_session(max_connections=16) as session:
            while True:
                try:
                    await self.probe_all(session)
                except Exception:  # a probe bug must not end the probing
                    log.exception("deployment_probe_failed")
                await asyncio.sleep(self._config.probe_interval)


def _target(deployment: DeploymentConfig, api_key: str | None) -> _Target:
    if deployment.provider == "local":
        return _Target(deployment.name, "local", "", {})
    if deployment.provider == "anthropic":
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return _Target(deployment.name, "anthropic", f"{deployment.base_url}/v1/models", headers)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return _Target(deployment.name, "openai", f"{deployment.base_url}/models", headers)


@asynccontextmanager
async def running_probes(
    settings: Settings, usable: Callable[[], Iterable[str]]
) -> AsyncIterator[DeploymentProbes]:
    """The probes, running in the background while the block runs (if the interval is not 0).
    ``usable``: the deployments that can take a request (``ProviderRegistry.usable``)."""
    probes = DeploymentProbes(settings, usable)
    if not probes.enabled or not probes.results():
        yield probes
        return
    task = asyncio.create_task(probes.run(), name="interlock-deployment-probes")
    try:
        yield probes
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)  # its own cancellation, not ours
