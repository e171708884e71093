"""Builds one adapter per configured deployment, and owns what they share.

One pooled keep-alive HTTP session per upstream (scheme, host and port), created when the
app starts and closed when it stops; the embedded model is loaded once, off the event loop.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp

from interlock.providers.anthropic import AnthropicProvider
from interlock.providers.base import Provider
from interlock.providers.http import create_session
from interlock.providers.local import LocalModelProvider
from interlock.providers.openai import OpenAIProvider
from interlock.settings import DeploymentConfig, Settings

# Enough connections for a busy instance; one upstream cannot take every socket.
_CONNECTIONS_PER_UPSTREAM = 1024


def _upstream_of(deployment: DeploymentConfig) -> str:
    parts = urlsplit(deployment.base_url)
    return f"{parts.scheme}://{parts.netloc}"


class ProviderRegistry:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._providers: dict[str, Provider] = {}
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._local: LocalModelProvider | None = None

    async def start(self) -> None:
        for model in self._settings.config.models.values():
            for deployment in model.deployments:
                self._providers[deployment.name] = self._build(deployment)
        if self._local is not None:
            await self._local.start()

    def _build(self, deployment: DeploymentConfig) -> Provider:
        if deployment.provider == "local":
            if self._local is None:
                self._local = LocalModelProvider(self._settings.config.local_model)
            return self._local
        upstream = _upstream_of(deployment)
        session = self._sessions.get(upstream)
        if session is None:
            session = create_session(max_connections=_CONNECTIONS_PER_UPSTREAM)
            self._sessions[upstream] = session
        api_key = self._settings.api_key_for(deployment)
        if deployment.provider == "openai":
            return OpenAIProvider(deployment, session, api_key)
        return AnthropicProvider(deployment, session, api_key)

    def get(self, deployment_name: str) -> Provider:
        return self._providers[deployment_name]

    def usable(self) -> list[str]:
        """Deployments that can take a request now (the embedded model once loaded)."""
        return [
            name
            for name, provider in self._providers.items()
            if provider is not self._local or self._local.ready()
        ]

    async def aclose(self) -> None:
        for provider in {id(p): p for p in self._providers.values()}.values():
            await provider.aclose()
        for session in self._sessions.values():
            await session.close()
        self._providers.clear()
        self._sessions.clear()
