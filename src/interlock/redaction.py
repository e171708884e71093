"""``scrub``: text made safe to log, report or show, with anything that looks like a credential
masked.

The last line of defence, used wherever text from outside (a provider's error body, an
exception message) or a log value may carry a secret: our own API keys (``il_live_…``,
``il_test_…``), provider keys (``sk-…``), ``Bearer`` tokens, JWTs, credentials in URLs
(``https://user:pass@host``) and ``key=…`` / ``api_key: …`` / ``password=…`` pairs in query
strings, JSON or headers. It is a handful of precompiled regular expressions; text that holds
no candidate is returned as it is, after one cheap scan.
"""

from __future__ import annotations

import re

MASK = "***"

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Interlock's own keys: prefix + 38 base62 characters (see interlock.auth.keys); a key's
    # public id (the prefix and 8 characters) is not a secret and stays.
    (re.compile(r"\bil_(live|test)_[A-Za-z0-9]{20,}"), r"il_\1_***"),
    (re.compile(r"(?i)\bbearer\s+[^\s\"',;]+"), "Bearer ***"),
    (re.compile(r"(?i)\bbasic\s+[A-Za-z0-9+/=]{8,}"), "Basic ***"),
    (re.compile(r"\b(sk|rk|pk)-[A-Za-z0-9_\-*.]{6,}"), r"\1-***"),
    # A JWT: three base64url parts, the first two JSON objects ("eyJ" = '{"').
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), "***.jwt"),
    # user:password@ (or a lone token@) in any URL.
    (re.compile(r"(?<=://)[^/\s@\"']+@"), "***@"),
    (
        re.compile(
            r"(?i)\b(api[_-]?key|x-api-key|key|token|access[_-]?token|refresh[_-]?token|"
            r"secret|client[_-]?secret|password|passwd|authorization|cookie|set-cookie|sig|"
            r"signature)([\"']?\s*[=:]\s*[\"']?)[^\s&\"',;]+"
        ),
        r"\1\2***",
    ),
)

# Substrings (lowercase) without which no pattern can match: clean text costs one search for
# plain literals in its lowercased copy, not the patterns above.
_MARKERS = (
    "il_live_",
    "il_test_",
    "bearer",
    "basic ",
    "sk-",
    "rk-",
    "pk-",
    "eyj",
    "@",
    "key",
    "token",
    "secret",
    "passw",
    "authorization",
    "cookie",
    "sig",
)
_MARKER = re.compile("|".join(re.escape(marker) for marker in _MARKERS))


def scrub(text: str, secret: str | None = None) -> str:
    """``text`` with credentials masked; ``secret`` (e.g. the provider key in use) too."""
    if secret and len(secret) >= 4 and secret in text:
        text = text.replace(secret, MASK)
    if _MARKER.search(text.lower()) is None:
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def looks_secret(text: str) -> bool:
    """True if ``scrub`` would change ``text``."""
    return scrub(text) != text
