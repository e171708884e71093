"""Checks on the text fields of identities, shared by the admin API and the CLI.

Text must be printable: no NUL, control characters or lone surrogates (PostgreSQL refuses
NUL and invalid UTF-8 with an error, and control characters have no place in a name). A
refusal is an ``InvalidRequest`` naming the field, and never quotes the value.
"""

from __future__ import annotations

import re

from interlock.errors import InvalidRequest

_ID = re.compile(r"[0-9a-f]{32}")

MAX_NAME = 200
MAX_EMAIL = 320
MAX_EXTERNAL_ID = 255


def check_text(value: object, field: str) -> None:
    """Refuse text (or a list of texts) that is not printable."""
    values = value if isinstance(value, list) else [value]
    for item in values:
        if isinstance(item, str) and not item.isprintable():
            raise InvalidRequest("Must be printable text.", param=field)


def check_length(value: str, field: str, low: int, high: int) -> str:
    if not low <= len(value) <= high:
        raise InvalidRequest(f"Must be {low} to {high} characters long.", param=field)
    check_text(value, field)
    return value


def check_email(email: str) -> str:
    """``email`` if it looks like an address (no full RFC 5322 parse: the mail server's job)."""
    check_length(email, "email", 3, MAX_EMAIL)
    local, at, domain = email.rpartition("@")
    if not at or not local or "." not in domain.strip(".") or any(c.isspace() for c in email):
        raise InvalidRequest("Not an email address.", param="email")
    return email


def looks_like_id(value: str) -> bool:
    """Whether ``value`` has the shape of our ids (32 hex digits): anything else cannot be
    found, so it need not be looked up."""
    return _ID.fullmatch(value) is not None
