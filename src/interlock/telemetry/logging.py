"""Structured logging: JSON lines in production, readable lines in a terminal.

Every line goes through ``redact`` last before rendering: values under a sensitive name
(``authorization``, ``cookie``, ``api_key``, ``password``…) are masked whatever they hold,
and any string value that looks like a credential is scrubbed (``interlock.redaction``). The
code never logs prompts, completions or keys on purpose; this is the last line of defence.

Loggers that a deployment may want to route apart carry their name in the ``logger`` field:
``interlock.access`` (one line per request) and ``interlock.prompts`` (the opt-in prompt log).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

import msgspec
import structlog

from interlock.redaction import MASK, scrub
from interlock.telemetry.sentry import report_logged_exception

ACCESS_LOGGER = "interlock.access"
PROMPT_LOGGER = "interlock.prompts"

# Field names whose values are credentials, whatever they look like.
SENSITIVE_FIELDS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "api_key",
        "api-key",
        "x-api-key",
        "apikey",
        "password",
        "passwd",
        "secret",
        "token",
        "access_token",
        "refresh_token",
        "client_secret",
        "credential",
        "credentials",
    }
)


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written, not when logging was configured
    (a command run in-process, as tests do, swaps it for each run)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


# msgspec writes a line several times faster than the json module; what it cannot encode
# (an exception, a path) is written as its repr, as structlog's own fallback does.
_LINE_ENCODER = msgspec.json.Encoder(enc_hook=repr)


def _json_line(event_dict: Any, **_: Any) -> str:
    return _LINE_ENCODER.encode(event_dict).decode()


class _FastLines:
    """What ``write_access_line`` needs to write JSON lines past structlog's chain, and the
    chain it stands for (when structlog is configured otherwise, it steps aside)."""

    __slots__ = ("min_level", "out", "processors")

    def __init__(self, processors: list[Any], out: Any, min_level: int) -> None:
        self.processors = processors
        self.out = out
        self.min_level = min_level


_fast: _FastLines | None = None


def access_lines_written() -> bool:
    """False when ``write_access_line`` would write nothing (the JSON lines that
    ``configure_logging`` set, at a level above info), so the caller need not build the
    fields; True otherwise (with any other configuration, structlog decides)."""
    fast = _fast
    if fast is None or fast.min_level <= logging.INFO:
        return True
    return structlog.get_config()["processors"] is not fast.processors


def write_access_line(fields: dict[str, Any]) -> None:
    """One line on ``interlock.access`` at info level, with ``fields``.

    Written once per chat request, so it is made cheap: with the JSON format that
    ``configure_logging`` set (production), the line is encoded and written directly, the
    same JSON the chain would write. Its fields are ids, numbers and names the gateway chose,
    so the chain's redaction has nothing to do; the caller scrubs what a client chose. With
    any other configuration (a terminal, tests capturing logs) it goes through structlog.
    """
    fast = _fast
    if fast is None or structlog.get_config()["processors"] is not fast.processors:
        structlog.get_logger(ACCESS_LOGGER).bind(logger=ACCESS_LOGGER).info("request", **fields)
        return
    if fast.min_level > logging.INFO:
        return
    fields["logger"] = ACCESS_LOGGER
    fields["event"] = "request"
    fields["level"] = "info"
    fields["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    fast.out.write(_LINE_ENCODER.encode(fields).decode() + "\n")
    fast.out.flush()


def _clean(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if depth >= 2:
        return value
    if isinstance(value, Mapping):
        return {
            key: MASK if str(key).lower() in SENSITIVE_FIELDS else _clean(item, depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_clean(item, depth + 1) for item in value]
    return value


def redact(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The structlog processor that masks credentials (see the module doc)."""
    for key, value in event_dict.items():
        if key.lower() in SENSITIVE_FIELDS:
            event_dict[key] = MASK
        elif isinstance(value, str | Mapping | list | tuple):
            event_dict[key] = _clean(value)
    return event_dict


def configure_logging(
    level: str, format: Literal["json", "console"], stream: TextIO | None = None
) -> None:
    """Configure structlog for the process: ``level`` and up, to ``stream`` (stderr by
    default), as JSON lines or for a terminal."""
    global _fast
    out: Any = _Stderr() if stream is None else stream
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer(serializer=_json_line)
        if format == "json"
        else structlog.dev.ConsoleRenderer(colors=stream is None and sys.stderr.isatty())
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        report_logged_exception,  # before the exception becomes text
        structlog.processors.format_exc_info,
        redact,
        renderer,
    ]
    min_level = logging.getLevelName(level.upper())
    _fast = _FastLines(processors, out, min_level) if format == "json" else None
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=structlog.PrintLoggerFactory(out),
        # A captured stream is a test's: it may configure again, and loggers must follow.
        cache_logger_on_first_use=stream is None,
    )
