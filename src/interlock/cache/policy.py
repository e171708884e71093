"""What the cache may do for one request: read, write, neither, and for how long.

Three inputs decide, most specific last: ``[cache]``, then ``[cache.models.NAME]`` for the
requested public model, then the caller's ``CacheDirective`` (the ``Cache-Control`` request
header or the body's ``interlock.cache`` field). A caller can only ask for *less* caching
than the operator configured, never more. By default only deterministic requests
(``temperature`` 0 or a fixed ``seed``) are cached: replaying a sampled answer would silently
turn a creative request into a fixed one.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from interlock.chat.types import ChatRequest
from interlock.config_file import CacheConfig
from interlock.errors import InvalidRequest


class CacheDirective(IntEnum):
    """The caller's wish, ordered from most to least caching (``max`` is the stricter)."""

    DEFAULT = 0  # read and write as the configuration allows
    NO_CACHE = 1  # do not answer from the cache; the fresh answer may be stored
    NO_STORE = 2  # neither read nor write

    @classmethod
    def from_header(cls, value: str | None) -> CacheDirective:
        """From a ``Cache-Control`` request header (RFC 9111 request directives).

        ``no-store`` wins over everything; ``no-cache`` and ``max-age=0`` mean "do not
        answer from the cache". Other directives are ignored, as a cache may.
        """
        directive = cls.DEFAULT
        if not value:
            return directive
        for item in value.split(","):
            name, _, argument = item.strip().lower().partition("=")
            name = name.strip()
            if name == "no-store":
                return cls.NO_STORE
            if name == "no-cache" or (name == "max-age" and argument.strip().strip('"') == "0"):
                directive = cls.NO_CACHE
        return directive

    @classmethod
    def from_body(cls, value: object, *, param: str = "interlock.cache") -> CacheDirective:
        """From the request body's cache field: ``true`` / ``"default"``, ``"no-cache"``,
        ``false`` / ``"no-store"``; ``None`` (absent) is the default. Anything else is the
        caller's mistake: ``InvalidRequest`` naming ``param``."""
        if value is None or value is True:
            return cls.DEFAULT
        if value is False:
            return cls.NO_STORE
        if isinstance(value, str):
            found = _BODY_VALUES.get(value.strip().lower())
            if found is not None:
                return found
        raise InvalidRequest(
            f'{param} must be true, false, "default", "no-cache" or "no-store".',
            code="invalid_value",
            param=param,
        )

    def combine(self, other: CacheDirective) -> CacheDirective:
        """The stricter of two directives (a header and a body field, say)."""
        return max(self, other)


_BODY_VALUES = {
    "default": CacheDirective.DEFAULT,
    "no-cache": CacheDirective.NO_CACHE,
    "no-store": CacheDirective.NO_STORE,
}


@dataclass(frozen=True, slots=True)
class CacheRule:
    """The decision for one request. ``reason`` says why, for logs, when it is not the
    default (``"disabled"``, ``"model_disabled"``, ``"no-store"``, ``"no-cache"``,
    ``"not_deterministic"``)."""

    read: bool
    write: bool
    ttl: float
    reason: str = ""

    @property
    def bypass(self) -> bool:
        return not (self.read or self.write)


def is_deterministic(request: ChatRequest) -> bool:
    """Whether the request asks for a repeatable answer: temperature 0 or a fixed seed."""
    return request.temperature == 0 or request.seed is not None


def decide(
    config: CacheConfig, request: ChatRequest, directive: CacheDirective = CacheDirective.DEFAULT
) -> CacheRule:
    """What the cache may do for ``request`` (see the module doc)."""
    model = config.models.get(request.model)
    ttl = config.ttl
    enabled = config.enabled
    deterministic_only = config.deterministic_only
    if model is not None:
        if model.ttl is not None:
            ttl = model.ttl
        if model.enabled is not None:
            enabled = model.enabled
        if model.deterministic_only is not None:
            deterministic_only = model.deterministic_only
    if not enabled:
        reason = "model_disabled" if model is not None and model.enabled is False else "disabled"
        return CacheRule(read=False, write=False, ttl=ttl, reason=reason)
    if directive is CacheDirective.NO_STORE:
        return CacheRule(read=False, write=False, ttl=ttl, reason="no-store")
    if deterministic_only and not is_deterministic(request):
        return CacheRule(read=False, write=False, ttl=ttl, reason="not_deterministic")
    if directive is CacheDirective.NO_CACHE:
        return CacheRule(read=False, write=True, ttl=ttl, reason="no-cache")
    return CacheRule(read=True, write=True, ttl=ttl)
