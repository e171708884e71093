"""The ASGI lifespan of a served gateway: what startup leaves the process with."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path
from typing import Any

import pytest

from interlock.app import GC_YOUNG_THRESHOLD, create_app
from tests.support.gateway import make_settings

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_startup_freezes_its_objects_and_collects_young_ones_rarely(
    tmp_path: Path,
) -> None:
    app = create_app(make_settings(tmp_path), announce=None)
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    # Another test's lifespan may have frozen objects and raised the threshold already.
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)  # Python's default
    gc.unfreeze()  # and the lifespan freezes them again
    await received.put({"type": "lifespan.startup"})
    lifespan = asyncio.create_task(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, received.get, sent.put)
    )
    try:
        assert (await asyncio.wait_for(sent.get(), 30))["type"] == "lifespan.startup.complete"
        # Startup's long-lived objects are out of the collector's way, and the young
        # generation is collected past the requests in flight, not every ~15 requests.
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
        assert GC_YOUNG_THRESHOLD > 5 * 700  # well past the default
    finally:
        await received.put({"type": "lifespan.shutdown"})
        await asyncio.wait_for(lifespan, 30)
        # Left frozen, as startup leaves it: unfrozen, every full collection would re-scan
        # this test process's whole heap and stall the gateways later tests run in threads.
        gc.set_threshold(*before)
    assert (await sent.get())["type"] == "lifespan.shutdown.complete"
