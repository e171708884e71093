"""What a provider adapter is.

An adapter translates a canonical ``ChatRequest`` into one provider's wire format and that
provider's reply back into canonical ``Event``s. It is built from a typed deployment config
and an injected HTTP session, maps its own errors to ``UpstreamError`` subclasses by status
code and structured error type, and knows nothing of retries, fallbacks or circuit breakers:
those wrap it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

from interlock.chat.types import ChatRequest, Event


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; ``None`` means no limit. The adapter applies ``connect`` and ``idle``
    (between two reads once the response started); the pipeline applies ``first_token`` and
    ``total`` because they span retries and the wait for content."""

    connect: float | None = 10.0
    first_token: float | None = 60.0
    idle: float | None = 60.0
    total: float | None = 600.0


class Provider(Protocol):
    """One deployment's adapter."""

    def stream(
        self, request: ChatRequest, timeouts: Timeouts, *, whole: bool = False
    ) -> AsyncGenerator[Event, None]:
        """Send ``request`` (its ``model`` is replaced by the deployment's upstream model)
        and yield the reply as canonical events, raising ``UpstreamError`` on failure.

        ``whole``: the caller wants only the whole answer (a non-streaming request), so the
        adapter may ask the provider for one reply instead of a stream, when its API has
        that; the events are the same. ``idle`` does not apply then: nothing arrives until
        the answer is whole.

        Closing the iterator early (``aclose``) must cancel the upstream request and free
        its connection.
        """
        ...

    async def aclose(self) -> None:
        """Release what the adapter owns (not the injected HTTP session)."""
        ...
