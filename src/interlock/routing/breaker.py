"""Circuit breakers, one per deployment, shared between instances.

    closed ──(failure rate ≥ threshold over the window, with ≥ min_calls calls)──► open
    open ──(cooldown over)──► half-open: at most ``probes`` requests at a time go through
    half-open ──(``probes`` successes)──► closed (the failure window starts afresh)
    half-open ──(a probe fails)──► open again, the cooldown doubled (capped)

What counts: every failure of the deployment (connection errors, timeouts, 5xx, malformed
replies, refused credentials). A client's own bad request is not a failure of the
deployment, and neither is a rate limit (a cooldown handles that; see ``cooldown``).

Where it lives, so that every instance agrees:

- the outcome window: ``state.outcomes`` under ``circuit:<deployment>`` (one round trip
  per finished attempt);
- the circuit itself: a small record ``circuit:<deployment>`` (absent = closed) holding
  when the cooldown ends and how many times in a row it opened; read through the cached
  reads, so a closed or open circuit costs no round trip per request, and an instance that
  opens a circuit stops the others within one second;
- half-open probes: a slot pool ``circuit-probe:<deployment>`` of ``probes`` slots (held
  under a lease, so a probe whose instance died frees itself), and their successes in
  ``state.outcomes`` under ``circuit-probe:<deployment>``.

If the shared state is down, all of this falls back to the instance's own (see
``failsafe``). Times are on the injected ``clock``: tests never sleep for a cooldown.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

import msgspec

from interlock.routing.failsafe import FailSafeState
from interlock.settings import BreakerConfig
from interlock.state import SharedState


class _Circuit(msgspec.Struct, frozen=True, array_like=True):
    until: float  # when the cooldown ends (clock time); half-open after it
    trips: int  # times opened in a row without closing in between


_encode = msgspec.json.encode
_decode_circuit = msgspec.json.Decoder(_Circuit).decode

# How long a probe slot is kept when nobody asks a shorter lease.
_PROBE_LEASE = 60.0
# A busy half-open circuit is worth asking again about this soon.
_PROBE_RETRY_AFTER = 1.0


class Gate(enum.Enum):
    """What the breaker says about one request."""

    CLOSED = "closed"  # go
    PROBE = "probe"  # go, as one of the half-open probes; report the outcome
    OPEN = "open"  # do not call


class CircuitState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Probe:
    """A held probe slot: where it is held, so it is released there."""

    __slots__ = ("backend", "holder")

    def __init__(self, holder: str, backend: SharedState) -> None:
        self.holder = holder
        self.backend = backend


class CircuitBreakers:
    """Every deployment's circuit (see the module docstring)."""

    def __init__(
        self,
        state: FailSafeState,
        config: BreakerConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._state = state
        self._failure_rate = config.failure_rate
        self._min_calls = config.min_calls
        self._window = config.window
        self._cooldown = config.cooldown
        self._max_cooldown = config.max_cooldown
        self._probes = config.probes
        self._clock = clock
        self._decoded: dict[str, tuple[bytes, _Circuit]] = {}

    @staticmethod
    def key(deployment: str) -> str:
        return "circuit:" + deployment

    @staticmethod
    def probe_key(deployment: str) -> str:
        return "circuit-probe:" + deployment

    def cooldown_for(self, trips: int) -> float:
        """The cooldown after the circuit opened ``trips`` times in a row."""
        return min(self._max_cooldown, self._cooldown * 2.0 ** max(0, trips - 1))

    async def _circuit(self, deployment: str) -> _Circuit | None:
        raw = await self._state.read(self.key(deployment))
        if raw is None:
            return None
        seen = self._decoded.get(deployment)
        if seen is not None and seen[0] is raw:
            return seen[1]
        try:
            circuit = _decode_circuit(raw)
        except msgspec.DecodeError:
            return None
        self._decoded[deployment] = (raw, circuit)
        return circuit

    async def state_of(self, deployment: str) -> tuple[CircuitState, float]:
        """The circuit's state and, when open, the seconds until it turns half-open."""
        circuit = await self._circuit(deployment)
        if circuit is None:
            return CircuitState.CLOSED, 0.0
        left = circuit.until - self._clock()
        if left > 0:
            return CircuitState.OPEN, left
        return CircuitState.HALF_OPEN, 0.0

    async def enter(
        self, deployment: str, holder: str, *, lease: float = _PROBE_LEASE
    ) -> tuple[Gate, float, Probe | None]:
        """May a request call ``deployment`` now? ``(gate, retry_after, probe)``: when the
        gate is ``OPEN``, ``retry_after`` says when to ask again; when it is ``PROBE``,
        ``probe`` is the slot to hand back to ``record``."""
        circuit = await self._circuit(deployment)
        if circuit is None:
            return Gate.CLOSED, 0.0, None
        left = circuit.until - self._clock()
        if left > 0:
            return Gate.OPEN, left, None
        probes = self._probes
        name = self.probe_key(deployment)
        held, backend = await self._state.run(
            "circuit_probe",
            lambda s: s.slots.acquire(name, holder, limit=probes, lease=lease),
        )
        if not held:
            return Gate.OPEN, _PROBE_RETRY_AFTER, None
        return Gate.PROBE, 0.0, Probe(holder, backend)

    async def record(self, deployment: str, *, ok: bool, probe: Probe | None = None) -> None:
        """Report the outcome of a call let through by ``enter``."""
        if probe is not None:
            await self._record_probe(deployment, ok, probe)
            return
        key = self.key(deployment)
        window = self._window
        memory = self._state.in_process
        if memory is not None:
            stats = memory.outcomes.record_now(key, ok=ok, window=window)
        else:
            stats, _ = await self._state.run(
                "circuit_outcome", lambda s: s.outcomes.record(key, ok=ok, window=window)
            )
        if (
            not ok
            and stats.total >= self._min_calls
            and stats.failure_rate >= self._failure_rate
            and await self._circuit(deployment) is None  # already open: leave it be
        ):
            await self._open(deployment, trips=1)

    async def _record_probe(self, deployment: str, ok: bool, probe: Probe) -> None:
        name = self.probe_key(deployment)
        try:
            if not ok:
                circuit = await self._circuit(deployment)
                await self._open(deployment, trips=(circuit.trips if circuit else 0) + 1)
                return
            window = self._cooldown + self._max_cooldown  # successes of this half-open spell
            stats, _ = await self._state.run(
                "circuit_probe", lambda s: s.outcomes.record(name, ok=True, window=window)
            )
            if stats.successes >= self._probes:
                await self.close(deployment)
        finally:
            await self._state.release_slot(probe.backend, name, probe.holder)

    async def abandon(self, deployment: str, probe: Probe) -> None:
        """Give back a probe slot whose call said nothing about the deployment (the client
        left, or the request was at fault)."""
        await self._state.release_slot(probe.backend, self.probe_key(deployment), probe.holder)

    async def _open(self, deployment: str, *, trips: int) -> None:
        cooldown = self.cooldown_for(trips)
        record = _Circuit(self._clock() + cooldown, trips)
        # Kept past the cooldown so that the half-open state, and the count of trips that
        # doubles the next cooldown, survive until the probes have had their chance.
        ttl = cooldown + max(self._window, self._max_cooldown)
        await self._state.write(self.key(deployment), _encode(record), ttl=ttl)
        name = self.probe_key(deployment)
        await self._state.run("circuit_probe", lambda s: s.outcomes.clear(name))

    async def close(self, deployment: str) -> None:
        """Close the circuit: forget the record, the failure window and the probes' count."""
        await self._state.delete(self.key(deployment))
        key, name = self.key(deployment), self.probe_key(deployment)
        await self._state.run("circuit_outcome", lambda s: s.outcomes.clear(key))
        await self._state.run("circuit_probe", lambda s: s.outcomes.clear(name))
