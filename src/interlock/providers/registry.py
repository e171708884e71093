"""Builds one adapter per configured deployment, and owns what they share.

One pool of keep-alive connections per upstream origin (scheme, host and port), an
``UpstreamClient`` created when the app starts and closed when it stops; the embedded model
is loaded once, off the event loop.
"""

from __future__ import annotations

from interlock.providers.anthropic import AnthropicProvider
from interlock.providers.base import Provider
from interlock.providers.local import LocalModelProvider
from interlock.providers.openai import OpenAIProvider
from interlock.providers.upstream_client import UpstreamClients
from interlock.settings import DeploymentConfig, Settings

# Enough connections for a busy instance; one upstream cannot take every socket.
_CONNECTIONS_PER_UPSTREAM = 1024


class ProviderRegistry:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._providers: dict[str, Provider] = {}
        self._clients = UpstreamClients(max_connections=_CONNECTIONS_PER_UPSTREAM)
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
        client = self._clients.for_url(deployment.base_url)
        api_key = self._settings.api_key_for(deployment)
        if deployment.provider == "openai":
            return OpenAIProvider(deployment, client, api_key)
        return AnthropicProvider(deployment, client, api_key)

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
        await self._clients.close()
        self._providers.clear()
