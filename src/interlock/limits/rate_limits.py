"""Rate limits of callers: the pipeline's admit step.

Every limit is a GCRA bucket of the shared state refilled over a minute (``state.limits``;
with Redis, one atomic script round trip per decision, so instances together never admit
more than a limit), and every concurrency cap a pool of slots held under a lease
(``state.slots``; a crashed instance's slots free themselves when their lease ends).

Before authentication, per client IP (``before_auth``):
- ``[limits] ip_rpm`` requests per minute (off by default);
- failed authentications: once ``failed_auth_per_minute`` failures from an IP are counted
  (``note_failed_auth``), its requests get 429 before any key is looked at, until the count
  has drained. Only failures count, so valid callers are refused only while the same IP is
  failing.

After it, per request (``admit``), all in one decision (all or nothing):
- the key's ``rpm`` / ``tpm`` (when the key narrows its user's), the user's (the tier's),
  every user of the tier together (``[limits.tiers.NAME]``) and the user on the model
  (``[limits.models.NAME]``);
- tokens are reserved up front: the prompt's estimate plus ``max_tokens`` (or the routing
  default), and ``settle`` replaces the reservation by the real usage once the request has
  ended, however it ended;
- concurrent requests: ``max_concurrent`` of the key and of the user, released by
  ``settle``.

A principal with no limit costs no state call at all. On the in-process state (one instance,
no Redis) every operation is called synchronously: no coroutine, and no task to admit or to
settle (nothing can be left half taken when there is no await in between).

A refusal is a ``RateLimitExceeded`` (429, a code naming the scope, ``Retry-After`` in whole
seconds, and the ``x-ratelimit-*`` values); the shared state being down is handled as
``[limits] on_state_failure`` says (see ``interlock.limits.fallback``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from interlock.auth.principal import Principal, Scope
from interlock.chat.stream import estimate_tokens, request_length
from interlock.chat.types import ChatRequest
from interlock.errors import ServiceUnavailable
from interlock.limits.admission import (
    SCOPE_NAMES,
    Admission,
    RateLimitExceeded,
    pool_full,
    quotas_of,
    refunds,
    requests_quota,
    scope_kind,
    token_changes,
    unit_of,
    whole_seconds,
)
from interlock.limits.client_ip import client_ip, ip_bucket, peer_address
from interlock.limits.fallback import LimitState
from interlock.limits.quota import NO_QUOTAS, Quotas
from interlock.settings import LimitsConfig
from interlock.state import Decision, Limit, MemoryState, SharedState

WINDOW = 60.0  # every rate is per minute
DEFAULT_OUTPUT_TOKENS = 1024


def _narrower(key: int | None, user: int | None) -> int | None:
    """The key's limit if it is tighter than its user's, else None (the user's covers it)."""
    if key is None or (user is not None and key >= user):
        return None
    return key


def _no_rates(scope: Scope) -> bool:
    return scope.rpm is None and scope.tpm is None and scope.max_concurrent is None


def _in_process(backend: SharedState | None) -> MemoryState | None:
    return backend if isinstance(backend, MemoryState) else None


@dataclass(frozen=True, slots=True)
class _Rates:
    rpm: int | None
    tpm: int | None


class RateLimiter:
    """Admits requests within their rate limits (see the module docstring). One per app."""

    def __init__(
        self,
        state: SharedState,
        config: LimitsConfig,
        *,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
        local: SharedState | None = None,
    ) -> None:
        self.state = LimitState(state, config.on_state_failure, local=local)
        # Never unavailable, and never awaits: called directly (see the module docstring).
        self._memory = _in_process(state)
        self.trusted_proxies = tuple(config.trusted_proxies)
        self._ip_rpm = config.ip_rpm
        self._failures = config.failed_auth_per_minute
        self._lease = config.concurrency_lease
        self._default_output = default_output_tokens
        self._models = {name: _Rates(r.rpm, r.tpm) for name, r in config.models.items()}
        self._tiers = {name: _Rates(r.rpm, r.tpm) for name, r in config.tiers.items()}
        # Slot holders must be unique across instances: a random instance id and a counter.
        self._instance = os.urandom(6).hex()
        self._counter = itertools.count()
        # Admissions and settlements running on their own (see ``admit``, ``settle_soon``),
        # awaited by ``aclose``.
        self._pending: set[asyncio.Future[Any]] = set()
        # The same clients come back: their buckets are named once per address.
        self._ip_limits = lru_cache(maxsize=4096)(self._limits_of_ip)

    # --- before authentication ------------------------------------------------------------

    def client_ip(self, peer: str | None, x_forwarded_for: str | Sequence[str] | None) -> str:
        """The caller's address, honouring ``X-Forwarded-For`` from trusted proxies only."""
        if not self.trusted_proxies and peer is not None:
            return peer_address(peer)  # the header cannot matter: skip reading it
        return client_ip(peer, x_forwarded_for, self.trusted_proxies)

    def _limits_of_ip(self, ip: str) -> tuple[tuple[Limit, ...], Limit | None]:
        """What ``before_auth`` asks for ``ip`` (its requests bucket first, if any, then a
        look at its failures bucket), and the failures bucket charged with one failure."""
        bucket = ip_bucket(ip)
        checks: list[Limit] = []
        if self._ip_rpm is not None:
            checks.append(Limit(f"rl:ip:{bucket}:requests", self._ip_rpm, WINDOW, 1))
        if self._failures is None:
            return tuple(checks), None
        failures = f"rl:ip:{bucket}:auth_failures"
        checks.append(Limit(failures, self._failures, WINDOW, 0))  # cost 0: only looks
        return tuple(checks), Limit(failures, self._failures, WINDOW, 1)

    async def before_auth(self, ip: str) -> Quotas:
        """Count one request from ``ip`` and check it is not locked out by failed
        authentications; the IP's ``x-ratelimit-*`` values. Raises ``RateLimitExceeded``
        (or ``ServiceUnavailable`` when the state is down and ``on_state_failure`` is
        ``closed``)."""
        checks, _ = self._ip_limits(ip)
        if not checks:
            return NO_QUOTAS
        if self._memory is not None:
            decision = self._memory.limits.admit_now(checks)
        else:
            answer = await self.state.run("before_auth", lambda s: s.limits.admit(checks))
            if answer is None:
                return NO_QUOTAS
            decision = answer[0]
        scopes = decision.scopes  # in the order of ``checks``
        quotas = NO_QUOTAS if self._ip_rpm is None else requests_quota(scopes[0])
        failed = scopes[-1] if self._failures is not None else None
        if failed is not None and failed.remaining == 0:
            # Full: one more failure would not fit. Wait until one has drained.
            wait = max(0.0, failed.reset - (failed.limit - 1) * WINDOW / failed.limit)
            raise RateLimitExceeded(
                "Too many failed authentications from this IP address; retry in "
                f"{whole_seconds(wait):.0f} seconds.",
                code="auth_attempts_exceeded",
                retry_after=whole_seconds(wait),
                quotas=quotas,
            )
        if not decision.allowed:
            raise self._refusal(decision, quotas, None)
        return quotas

    async def note_failed_auth(self, ip: str) -> None:
        """Count one failed authentication from ``ip``. Never raises."""
        _, bucket = self._ip_limits(ip)
        if bucket is None:
            return
        # ``adjust``, not ``admit``: a failure always counts, even past the limit.
        if self._memory is not None:
            self._memory.limits.adjust_now((bucket,))
            return
        # Closed policy and the state down: nothing to refuse, this request failed anyway.
        with contextlib.suppress(ServiceUnavailable):
            await self.state.run("note_failed_auth", lambda s: s.limits.adjust((bucket,)))

    # --- after authentication -------------------------------------------------------------

    def reserved_tokens(self, request: ChatRequest) -> int:
        """The tokens ``request`` may use: its prompt estimate plus its output allowance."""
        output = request.max_tokens if request.max_tokens is not None else self._default_output
        return estimate_tokens(request_length(request)) + output

    def _buckets(self, principal: Principal, model: str, tokens: int) -> list[Limit]:
        buckets: list[Limit] = []
        user = principal.owner_scope

        def add(name: str, rpm: int | None, tpm: int | None) -> None:
            if rpm is not None:
                buckets.append(Limit(f"{name}:requests", rpm, WINDOW, 1))
            if tpm is not None:
                buckets.append(Limit(f"{name}:tokens", tpm, WINDOW, tokens))

        if principal.key_id is not None:
            key = principal.scope
            # A key limit no smaller than its user's is implied by the user's bucket, which
            # counts this key's requests too: one bucket less.
            add(
                f"rl:key:{principal.key_id}",
                _narrower(key.rpm, user.rpm),
                _narrower(key.tpm, user.tpm),
            )
        add(f"rl:user:{principal.user_id}", user.rpm, user.tpm)
        tier = self._tiers.get(principal.tier)
        if tier is not None:
            add(f"rl:tier:{principal.tier}", tier.rpm, tier.tpm)
        on_model = self._models.get(model)
        if on_model is not None:
            add(f"rl:model:{principal.user_id}:{model}", on_model.rpm, on_model.tpm)
        return buckets

    def _pools(self, principal: Principal) -> list[tuple[str, int]]:
        pools: list[tuple[str, int]] = []
        user_cap = principal.owner_scope.max_concurrent
        key_cap = _narrower(principal.scope.max_concurrent, user_cap)
        if principal.key_id is not None and key_cap is not None:
            pools.append((f"rl:key:{principal.key_id}:concurrent", key_cap))
        if user_cap is not None:
            pools.append((f"rl:user:{principal.user_id}:concurrent", user_cap))
        return pools

    def _unlimited(self, principal: Principal, model: str) -> bool:
        """True when no rate limit applies to ``principal`` on ``model`` (so ``_buckets`` and
        ``_pools`` would both be empty); False when one may."""
        return (
            _no_rates(principal.owner_scope)
            and (principal.key_id is None or _no_rates(principal.scope))
            and principal.tier not in self._tiers
            and model not in self._models
        )

    def holder(self) -> str:
        """A fresh id for one request's slots, unique across instances."""
        return f"{self._instance}-{next(self._counter)}"

    async def admit(
        self, principal: Principal, request: ChatRequest, *, before: Quotas = NO_QUOTAS
    ) -> Admission:
        """Admit ``request`` within every rate limit of ``principal``, or refuse it.

        Takes one request and the reserved tokens from every bucket at once, then a slot in
        every concurrency pool. Raises ``RateLimitExceeded`` naming the refusing scope that
        needs the longest wait (``ServiceUnavailable`` when the state is down and the policy
        is ``closed``). ``before`` are the quotas ``before_auth`` returned, reported too when
        tighter. The ``Admission`` must be given to ``settle`` when the request ends.
        """
        if self._unlimited(principal, request.model):
            return Admission(before)  # nothing to take: no need to estimate the tokens
        pools = self._pools(principal)
        tokens = self.reserved_tokens(request)
        buckets = self._buckets(principal, request.model, tokens)
        if not buckets and not pools:
            return Admission(before)
        if request.max_tokens is None:
            # The caller did not ask for this output: never refuse for our own default.
            caps = [b.limit for b in buckets if unit_of(b.key) == "tokens"]
            if caps and tokens > min(caps):
                tokens = min(caps)
                buckets = self._buckets(principal, request.model, tokens)
        if self._memory is not None:
            return self._admit_now(self._memory, buckets, pools, tokens, before)
        # Once something is taken it must be given back: a caller cancelled mid-way (the
        # client left) must not leave a slot held until its lease ends.
        task = asyncio.ensure_future(self._admit(buckets, pools, tokens, before))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(self._abandoned)
            raise

    def _abandoned(self, task: asyncio.Future[Admission]) -> None:
        if not task.cancelled() and task.exception() is None:
            self.settle_soon(task.result(), 0)

    async def _admit(
        self, buckets: list[Limit], pools: list[tuple[str, int]], tokens: int, before: Quotas
    ) -> Admission:
        quotas = before
        limits_backend: SharedState | None = None
        if buckets:
            answer = await self.state.run("admit", lambda s: s.limits.admit(buckets))
            if answer is not None:
                decision, limits_backend = answer
                quotas = self._decided(decision, before, tokens)
        admission = self._admission(quotas, buckets, tokens, limits_backend)
        if pools:
            await self._take_slots(admission, pools, buckets)
        return admission

    def _admit_now(
        self,
        memory: MemoryState,
        buckets: list[Limit],
        pools: list[tuple[str, int]],
        tokens: int,
        before: Quotas,
    ) -> Admission:
        """``_admit`` on the in-process state, synchronously."""
        quotas = before
        if buckets:
            quotas = self._decided(memory.limits.admit_now(buckets), before, tokens)
        admission = self._admission(quotas, buckets, tokens, memory if buckets else None)
        holder = admission.holder
        held: list[tuple[str, SharedState]] = []
        for name, cap in pools:
            if memory.slots.acquire_now(name, holder, limit=cap, lease=self._lease):
                held.append((name, memory))
                continue
            # Full: give back what this request took, since it will not run.
            for taken, _ in held:
                memory.slots.release_now(taken, holder)
            if admission.limits_backend is not None:
                memory.limits.adjust_now(refunds(buckets))
            admission.settled = True
            raise pool_full(name, cap, admission.quotas)
        self._hold(admission, held)
        return admission

    def _decided(self, decision: Decision, before: Quotas, tokens: int) -> Quotas:
        """The quotas after ``decision``; raises the refusal if it refused."""
        quotas = before.merged(quotas_of(decision.scopes))
        if not decision.allowed:
            raise self._refusal(decision, quotas, tokens)
        return quotas

    def _admission(
        self,
        quotas: Quotas,
        buckets: list[Limit],
        tokens: int,
        limits_backend: SharedState | None,
    ) -> Admission:
        charged = tuple(b for b in buckets if unit_of(b.key) == "tokens")
        return Admission(
            quotas,
            holder=self.holder(),
            tokens=charged if limits_backend is not None else (),
            reserved=tokens,
            limits_backend=limits_backend,
        )

    def _hold(self, admission: Admission, held: list[tuple[str, SharedState]]) -> None:
        admission.slots = tuple(held)
        if held:
            admission.renew_at = asyncio.get_running_loop().time() + self._lease / 2

    async def _acquire(self, name: str, holder: str, cap: int) -> tuple[bool, SharedState] | None:
        lease = self._lease
        return await self.state.run(
            "acquire", lambda s: s.slots.acquire(name, holder, limit=cap, lease=lease)
        )

    async def _take_slots(
        self, admission: Admission, pools: list[tuple[str, int]], buckets: list[Limit]
    ) -> None:
        held: list[tuple[str, SharedState]] = []
        holder = admission.holder
        for name, cap in pools:
            answer = await self._acquire(name, holder, cap)
            if answer is None:
                continue  # open: not counted
            got, backend = answer
            if got:
                held.append((name, backend))
                continue
            # Full: give back what this request took, since it will not run.
            for taken, owner in held:
                await self.state.undo("release", owner.slots.release(taken, holder))
            if admission.limits_backend is not None:
                refund = refunds(buckets)
                await self.state.undo("adjust", admission.limits_backend.limits.adjust(refund))
            admission.settled = True
            raise pool_full(name, cap, admission.quotas)
        self._hold(admission, held)

    def _refusal(self, decision: Decision, quotas: Quotas, tokens: int | None) -> RateLimitExceeded:
        refused = decision.refused
        assert refused is not None
        scope, unit = scope_kind(refused.key), unit_of(refused.key)
        per_minute = f"{refused.limit} {unit} per minute"
        code = f"{scope}_rate_limit_exceeded"
        if math.isinf(refused.retry_after):
            return RateLimitExceeded(
                f"This request needs {tokens} tokens, more than the {per_minute} of "
                f"{SCOPE_NAMES[scope]}; lower max_tokens or shorten the messages.",
                code=code,
                retry_after=None,
                quotas=quotas,
            )
        wait = whole_seconds(refused.retry_after)
        return RateLimitExceeded(
            f"Rate limit of {SCOPE_NAMES[scope]} reached ({per_minute}); "
            f"retry in {wait:.0f} seconds.",
            code=code,
            retry_after=wait,
            quotas=quotas,
        )

    # --- after the request ----------------------------------------------------------------

    async def renew(self, admission: Admission) -> None:
        """Extend the slots' leases if half has run (call it while a long answer streams;
        it costs nothing until then). Never raises."""
        if not admission.slots or admission.settled:
            return
        loop = asyncio.get_running_loop()
        if loop.time() < admission.renew_at:
            return
        admission.renew_at = loop.time() + self._lease / 2
        for name, backend in admission.slots:
            await self.state.undo(
                "renew", backend.slots.renew(name, admission.holder, lease=self._lease)
            )

    async def settle(self, admission: Admission, used_tokens: int) -> None:
        """The request has ended (finished, failed, cut or abandoned): free its slots and
        replace its token reservation by ``used_tokens`` (what it really used, 0 if nothing
        reached the provider). Idempotent; never raises (if the shared state is down, the
        slots' leases free them and the reservation stays charged)."""
        if admission.settled:
            return
        admission.settled = True
        for name, backend in admission.slots:
            await self.state.undo("release", backend.slots.release(name, admission.holder))
        limits = admission.limits_backend
        changes = token_changes(admission, used_tokens)
        if limits is not None and changes:
            await self.state.undo("adjust", limits.limits.adjust(changes))

    def settle_soon(self, admission: Admission, used_tokens: int) -> None:
        """``settle`` from synchronous code (where a stream's end is reported): at once when
        what the admission holds is in process memory (or nothing), else in a task."""
        if admission.settled or self._settled_now(admission, used_tokens):
            return
        task = asyncio.get_running_loop().create_task(self.settle(admission, used_tokens))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _settled_now(self, admission: Admission, used_tokens: int) -> bool:
        """``settle``, synchronously, if every state ``admission`` holds something in is
        in-process; False (nothing done) otherwise."""
        changes = token_changes(admission, used_tokens)
        limits = _in_process(admission.limits_backend) if changes else None
        if changes and limits is None:
            return False
        pools: list[tuple[str, MemoryState]] = []
        for name, backend in admission.slots:
            memory = _in_process(backend)
            if memory is None:
                return False
            pools.append((name, memory))
        admission.settled = True
        for name, memory in pools:
            memory.slots.release_now(name, admission.holder)
        if limits is not None:
            limits.limits.adjust_now(changes)
        return True

    async def wait_settled(self) -> None:
        """Wait for the settlements ``settle_soon`` started (and the admissions whose caller
        was cancelled, which settle when they are done)."""
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def aclose(self) -> None:
        """Wait for the settlements still running; close the local fallback state."""
        await self.wait_settled()
        await self.state.aclose()
