"""The failures of a provider connection that have no ``OSError`` of their own.

Raised by ``upstream_client`` and ``upstream_connection``; ``classify`` maps them (and the
sockets' ``OSError``) to the gateway's errors.
"""

from __future__ import annotations


class UpstreamTransportError(Exception):
    """A provider connection failed in a way that has no ``OSError`` of its own."""


class ConnectTimeout(UpstreamTransportError, TimeoutError):
    """No connection within the connect timeout (pool wait, TCP and TLS handshakes)."""


class ReadTimeout(UpstreamTransportError, TimeoutError):
    """The provider sent nothing for longer than the read timeout."""


class ServerDisconnected(UpstreamTransportError, ConnectionError):
    """The connection closed before a response head arrived."""


class BodyIncomplete(UpstreamTransportError):
    """The connection closed in the middle of the response body."""


class InvalidRequestHeader(UpstreamTransportError, ValueError):
    """A request header cannot be sent as is (a line break, a character beyond Latin-1)."""


class InvalidResponse(UpstreamTransportError):
    """What the provider sent is not HTTP/1.1 (or uses an encoding this client lacks)."""
