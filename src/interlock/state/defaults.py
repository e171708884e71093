"""Default limits of the shared state, in one place for both backends and the settings."""

from __future__ import annotations

KEY_PREFIX = "interlock:"  # Redis keys and channels start with this
TIMEOUT = 0.25  # seconds: connecting to Redis, and each read
POOL_TIMEOUT = 1.0  # seconds waiting for a free connection when all are in use
MAX_CONNECTIONS = 64  # Redis connections per gateway instance
RETRY_INTERVAL = 0.5  # seconds without trying Redis after it was seen down
MEMORY_LIMIT_BYTES = 64 * 1024 * 1024  # in-process key/value store, all entries together
MAX_ITEM_BYTES = 1024 * 1024  # one key/value entry, both backends
