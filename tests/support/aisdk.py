"""What the AI SDK tests share: a gateway config in front of the fake upstream, with browser
sessions (HS256 session tokens, users created on first sight)."""

from __future__ import annotations

import time
from typing import Any

import jwt

from interlock.testing.fake_upstream import FakeUpstream

JWT_SECRET = "a-nextauth-style-shared-secret-0123456789abcdef"


def session_token(subject: str) -> str:
    """A browser's session token, as a NextAuth-style front-end would send it."""
    now = int(time.time())
    claims = {"sub": subject, "exp": now + 600, "iat": now, "name": "Web User"}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def config(upstream: FakeUpstream, **aisdk: Any) -> dict[str, dict[str, Any]]:
    return {
        "models.gpt-fake": {
            "deployments": [
                {
                    "provider": "openai",
                    "model": "fake-model",
                    "base_url": upstream.openai_base_url,
                    "api_key_env": "FAKE_PROVIDER_KEY",
                    "name": "openai-fake",
                }
            ]
        },
        "tiers.free": {"models": ["gpt-fake"], "rpm": 100_000},
        "aisdk": {"default_model": "gpt-fake", **aisdk},
    }


SESSIONS = {"INTERLOCK_JWT_SECRET": JWT_SECRET, "INTERLOCK_JWT_CREATE_USERS": "true"}
