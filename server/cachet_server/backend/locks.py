"""Locks and counted semaphores: grants, owner checks, fencing and a fair wait queue.

A lock is a semaphore of one permit; both run the one script `lock_permits.lua`
over the five keys of a name (see `PermitKeys`), which share one Cluster slot.

Waiting. A caller that wants to wait gets a ticket in the name's queue (arrival
order) and a lease on that ticket that it refreshes each time it looks. A permit
that becomes free is offered to the queue's head first: the script that frees it
PUBLISHes the head tickets on the name's wake channel. One pattern subscription
per server process (`WakeDispatcher`) receives every wake and sets the event of
the local waiter with that ticket, so waiting costs no Redis connection per
waiter. A waiter next in line also looks again on its own when the holder's TTL
runs out (no one publishes an expiry; when the queue moves up, the ticket that
became next in line is woken to learn that TTL) and at least every
`recheck_interval`, which covers a notification lost while the subscription was
reconnecting. A ticket whose lease lapses (its server died) is purged, so it never
blocks the queue for longer than `waiter_lease`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

from ..config import LockSettings
from ..errors import DeadlineExceeded, FailedPrecondition, Unavailable
from ..metrics import instruments
from . import wakes
from .core import Arg, Backend, ReplicaAck
from .keys import Kind, redis_key
from .scripts import Script, script

log = logging.getLogger(__name__)

_PERMITS = script("lock_permits")
# Release, leave, extend and inspect add nothing: they run under OOM too, so a full
# Redis never keeps a lock that its holder is giving back.
_PERMITS_IN_PLACE = script("lock_permits", allow_oom=True)
# The wake channel of a name is this prefix and its queue key; lock_permits.lua builds
# the same name when it publishes (one argument less to send on every call).
WAKE_CHANNEL_PREFIX = "cachet-lock-wake:"
# The own wait ends this long before the call deadline, so that the caller gets
# our answer (and our queue entry is gone) before its deadline passes.
DEADLINE_MARGIN = 0.05
# A waiter never looks again sooner than this, whatever the script suggests.
_MIN_RECHECK = 0.005


def _wrote(reply: Any) -> bool:
    """Whether a lock_permits answer is a write worth acknowledging (a grant, a
    release or an extension; not a refusal)."""
    return bool(reply[0] in (b"GRANTED", b"OK"))


_SECRET_BYTES = 24
# Secrets are read from the OS this many at a time: one system call per Acquire cost
# more than the rest of making its owner token.
_SECRETS_PER_READ = 64
_unused_secrets: list[str] = []
# A forked child must never hand out the secrets its parent has already read.
os.register_at_fork(after_in_child=_unused_secrets.clear)


def new_secret() -> str:
    """192 bits of the OS's cryptographic randomness (what `secrets` reads) as 48 hex
    digits; a fifth of what `secrets.token_urlsafe(24)` costs. Each is handed out once."""
    try:
        return _unused_secrets.pop()
    except IndexError:
        text = os.urandom(_SECRET_BYTES * _SECRETS_PER_READ).hex()
        step = 2 * _SECRET_BYTES
        _unused_secrets.extend(text[i : i + step] for i in range(0, len(text), step))
        return _unused_secrets.pop()


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()


class Family(enum.Enum):
    """Locks and semaphores: the same mechanism under separate names."""

    LOCK = (
        "lock",
        (Kind.LOCK, Kind.LOCK_OWNERS, Kind.LOCK_FENCE, Kind.LOCK_QUEUE, Kind.LOCK_WAITERS),
        "LOCK_HELD",
    )
    SEMAPHORE = (
        "semaphore",
        (
            Kind.SEMAPHORE,
            Kind.SEMAPHORE_OWNERS,
            Kind.SEMAPHORE_FENCE,
            Kind.SEMAPHORE_QUEUE,
            Kind.SEMAPHORE_WAITERS,
        ),
        "SEMAPHORE_FULL",
    )

    def __init__(self, noun: str, kinds: tuple[Kind, ...], busy_reason: str) -> None:
        self.noun = noun
        self.kinds = kinds
        self.busy_reason = busy_reason


@dataclass(frozen=True)
class PermitKeys:
    """The Redis keys of one lock or semaphore name (one slot: built from one name)."""

    holders: str
    owners: str
    fence: str
    queue: str
    waiters: str

    # What every script of this name is given, built with the keys.
    all: tuple[str, ...] = dataclasses.field(init=False, compare=False)

    def __post_init__(self) -> None:
        every = (self.holders, self.owners, self.fence, self.queue, self.waiters)
        object.__setattr__(self, "all", every)

    @classmethod
    def of(cls, namespace: str, family: Family, name: str) -> PermitKeys:
        return _KEYS_OF[family](namespace, name)


def _keys_of(family: Family) -> Callable[[str, str], PermitKeys]:
    """The keys of `family`'s names, built once per hot name: every Acquire and Release
    of it runs with these five keys. One cache per family, so that a look-up hashes two
    strings and no enum member (an Enum hashes in Python)."""
    kinds = family.kinds

    @functools.lru_cache(maxsize=4096)
    def keys(namespace: str, name: str) -> PermitKeys:
        return PermitKeys(*(redis_key(namespace, kind, name) for kind in kinds))

    return keys


_KEYS_OF = {family: _keys_of(family) for family in Family}


# Grant, Busy, Released and Extended are named tuples: one is built per call, and a
# tuple costs a fifth of a frozen dataclass to build.
class Grant(NamedTuple):
    owner_token: str
    fencing_token: int
    ttl_ms: int
    expire_ms: int
    server_us: int
    holders: int
    waited: float
    replicas_acked: int


class Busy(NamedTuple):
    """No permit now: when it is worth looking again, and the remaining TTL of the
    permit that expires first (0 when permits are free but promised to earlier
    waiters)."""

    retry_ms: int
    remaining_ms: int


class Released(NamedTuple):
    holders: int
    server_us: int
    replicas_acked: int


class Extended(NamedTuple):
    fencing_token: int
    ttl_ms: int
    expire_ms: int
    server_us: int
    replicas_acked: int


@dataclass(frozen=True)
class Permit:
    """A live permit as Inspect shows it (never its owner token)."""

    fencing_token: int
    remaining_ms: int
    holder: str


@dataclass(frozen=True)
class PermitState:
    server_us: int
    fencing_token: int
    limit: int
    waiters: int
    permits: list[Permit]


# ErrorInfo metadata that carries the Redis time of a refused decision.
SERVER_TIME_US = "server_time_us"


def not_owned(family: Family, name: str, server_us: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"this owner token does not hold {family.noun} {name!r} "
        "(wrong token, expired or already released)",
        reason="LOCK_NOT_OWNED",
        metadata={SERVER_TIME_US: str(server_us)},
    )


class WakeDispatcher(wakes.WakeDispatcher):
    """Lock and semaphore wakes: a message on a name's wake channel names the tickets
    that may now take a permit, and the local waiter holding one is woken."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend, WAKE_CHANNEL_PREFIX, names_in_message=True, what="lock")


class PermitStore:
    """Locks (limit 1) or semaphores of every namespace."""

    def __init__(
        self, backend: Backend, settings: LockSettings, wakes: WakeDispatcher, family: Family
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.wakes = wakes
        self.family = family
        # The keys of a name of this family (namespace, name) -> PermitKeys.
        self.keys = _KEYS_OF[family]
        self._recheck = _seconds(settings.recheck_interval)
        self._lease_ms = int(settings.waiter_lease / timedelta(milliseconds=1))
        self._cleanups: set[asyncio.Task[Any]] = set()
        self._kind = {"cachet.lock.kind": family.noun}
        self._wait_series = instruments.lock_wait.series(self._kind)

    async def _run(self, keys: PermitKeys, op: str, *args: Arg) -> Any:
        return await self.backend.run(_permits_for(op), keys.all, (op, *args))

    async def _run_acknowledged(
        self, keys: PermitKeys, replication: ReplicaAck | None, op: str, *args: Arg
    ) -> tuple[Any, int]:
        """Run the script; if it wrote what the caller asked to be acknowledged (its
        first answer is GRANTED or OK), WAIT for replicas on the same connection
        (`Backend.run_acknowledged`, the one primitive every durable write uses)."""
        script_args = (op, *args)
        script = _permits_for(op)
        if replication is None or replication.min_replicas == 0:
            return await self.backend.run(script, keys.all, script_args), 0
        return await self.backend.run_acknowledged(
            script, keys.all, script_args, replication, wrote=_wrote
        )

    # -- operations

    async def acquire(
        self,
        namespace: str,
        name: str,
        *,
        limit: int,
        ttl_ms: int,
        holder: str,
        wait: float,
        deadline: float | None,
        replication: ReplicaAck | None = None,
    ) -> Grant:
        """Take a permit, waiting up to `wait` seconds and never past `deadline`
        (seconds from now until the call's deadline; None: no deadline)."""
        keys = self.keys(namespace, name)
        token = new_secret()
        if wait <= 0:
            outcome = await self._attempt(keys, token, ttl_ms, holder, limit, "", replication)
            if isinstance(outcome, Grant):
                return self._counted(outcome)
            raise self._busy(name, outcome)

        loop = asyncio.get_running_loop()
        started = loop.time()
        wait_end = started + wait
        deadline_end = started + deadline - DEADLINE_MARGIN if deadline is not None else None
        end = wait_end if deadline_end is None else min(wait_end, deadline_end)
        ticket = new_secret()
        woken = self.wakes.register(ticket)
        granted: Grant | None = None
        waiters = self._kind
        instruments.lock_waiters.add(1, waiters)
        try:
            # Until the subscription is live a wake could be missed; the timed looks
            # below still cover that, so do not wait long for it.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, min(end - loop.time(), 1.0))):
                    await self.wakes.subscribed()
            queued = False
            while True:
                woken.clear()
                outcome = await self._attempt(
                    keys, token, ttl_ms, holder, limit, ticket, replication
                )
                if isinstance(outcome, Grant):
                    # A grant at the first look waited for nothing: exactly zero, not
                    # the few hundred microseconds the look itself took.
                    granted = self._counted(self._granted(outcome, started) if queued else outcome)
                    return granted
                queued = True
                busy = outcome
                left = end - loop.time()
                if left <= 0:
                    break
                nap = min(left, self._recheck, max(busy.retry_ms / 1000, _MIN_RECHECK))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(nap):
                        await woken.wait()
            if deadline_end is not None and deadline_end <= wait_end:
                raise DeadlineExceeded(
                    f"the call's deadline passed while waiting for {self.family.noun} {name!r}"
                )
            raise self._busy(name, busy)
        finally:
            instruments.lock_waiters.add(-1, waiters)
            self.wakes.unregister(ticket, woken)
            if granted is None:
                # Also runs when the call is cancelled: leave the queue, and give back a
                # grant that a cancelled attempt may have made, so that no grant
                # outlives the call that did not receive it.
                await self._shielded(self._run(keys, "leave", ticket, token))

    async def _attempt(
        self,
        keys: PermitKeys,
        token: str,
        ttl_ms: int,
        holder: str,
        limit: int,
        ticket: str,
        replication: ReplicaAck | None,
    ) -> Grant | Busy:
        """A grant, or why not and when to look again."""
        # Arguments the script would default are left off: each one more is a step in
        # the table Redis builds for the script's ARGV, on every call.
        if ticket:
            args: tuple[Arg, ...] = (token, ttl_ms, limit, holder, ticket, self._lease_ms)
        elif holder:
            args = (token, ttl_ms, limit, holder)
        else:
            args = (token, ttl_ms, limit)
        reply, acked = await self._run_acknowledged(keys, replication, "acquire", *args)
        outcome = reply[0]
        if outcome == b"GRANTED":
            server_us = reply[3]
            # Positional: a named tuple built with keywords costs twice as much.
            grant = Grant(
                token, reply[1], ttl_ms, server_us // 1000 + ttl_ms, server_us, reply[2], 0.0, acked
            )
            if replication is not None and acked < replication.min_replicas:
                await self._run(keys, "release", token)
                raise Unavailable(
                    f"only {acked} of {replication.min_replicas} replicas acknowledged the "
                    f"grant of {self.family.noun} {keys.holders!r} in time; it was released",
                    reason="REPLICATION_INCOMPLETE",
                    metadata={"replicas_acked": str(acked)},
                )
            return grant
        if outcome == b"BUSY":
            return Busy(retry_ms=reply[1], remaining_ms=reply[2])
        if outcome == b"LIMIT_MISMATCH":
            raise FailedPrecondition(
                f"semaphore has live holders admitted under limit {reply[1]}, not {limit}",
                reason="SEMAPHORE_LIMIT_MISMATCH",
                metadata={"limit": str(reply[1])},
            )
        raise RuntimeError(f"lock_permits acquire answered {outcome!r}")

    def _granted(self, grant: Grant, started: float) -> Grant:
        return grant._replace(waited=asyncio.get_running_loop().time() - started)

    def _counted(self, grant: Grant) -> Grant:
        """`grant`, once counted in the metrics with the time it waited."""
        instruments.lock_grants.add(1, self._kind)
        self._wait_series.record(grant.waited)
        return grant

    def _busy(self, name: str, busy: Busy) -> FailedPrecondition:
        what = "held" if self.family is Family.LOCK else "full"
        return FailedPrecondition(
            f"{self.family.noun} {name!r} is {what} (or promised to earlier waiters)",
            reason=self.family.busy_reason,
            metadata={"remaining_ttl_ms": str(busy.remaining_ms)},
        )

    async def _shielded(self, work: Awaitable[Any]) -> None:
        """Finish `work` even if the calling task is cancelled meanwhile; errors are
        logged (the TTL then cleans up)."""
        task = asyncio.ensure_future(work)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanup_done)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.shield(task)

    def _cleanup_done(self, task: asyncio.Task[Any]) -> None:
        self._cleanups.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s clean-up failed: %s", self.family.noun, task.exception())

    async def release(
        self,
        namespace: str,
        name: str,
        token: str,
        replication: ReplicaAck | None = None,
    ) -> Released:
        keys = self.keys(namespace, name)
        reply, acked = await self._run_acknowledged(keys, replication, "release", token)
        if reply[0] == b"NOT_OWNED":
            raise not_owned(self.family, name, reply[1])
        return Released(reply[1], reply[2], acked)

    async def release_quietly(self, namespace: str, name: str, token: str) -> None:
        """Give a permit back when its holder went away; survives cancellation."""
        await self._shielded(self._run(self.keys(namespace, name), "release", token))

    async def extend(
        self,
        namespace: str,
        name: str,
        token: str,
        ttl_ms: int,
        replication: ReplicaAck | None = None,
    ) -> Extended:
        keys = self.keys(namespace, name)
        reply, acked = await self._run_acknowledged(keys, replication, "extend", token, ttl_ms)
        if reply[0] == b"NOT_OWNED":
            raise not_owned(self.family, name, reply[1])
        server_us = reply[2]
        extended = Extended(
            fencing_token=reply[1],
            ttl_ms=ttl_ms,
            expire_ms=server_us // 1000 + ttl_ms,
            server_us=server_us,
            replicas_acked=acked,
        )
        if replication is not None and acked < replication.min_replicas:
            raise Unavailable(
                f"the extension of {self.family.noun} {name!r} is in effect, but only "
                f"{acked} of {replication.min_replicas} replicas acknowledged it in time",
                reason="REPLICATION_INCOMPLETE",
                metadata={"replicas_acked": str(acked), SERVER_TIME_US: str(extended.server_us)},
            )
        return extended

    async def inspect(self, namespace: str, name: str) -> PermitState:
        reply = await self._run(self.keys(namespace, name), "inspect")
        server_us, fence, limit, waiters, flat = reply
        permits = [
            Permit(flat[i], flat[i + 1], flat[i + 2].decode(errors="replace"))
            for i in range(0, len(flat), 3)
        ]
        permits.sort(key=lambda permit: permit.fencing_token)
        return PermitState(server_us, fence, limit, waiters, permits)

    async def aclose(self) -> None:
        """Let pending clean-ups (queue exits, releases) finish."""
        if self._cleanups:
            await asyncio.gather(*list(self._cleanups), return_exceptions=True)


def _permits_for(op: str) -> Script:
    """The lock script for `op`: refused under OOM only when it may add a holder."""
    return _PERMITS if op == "acquire" else _PERMITS_IN_PLACE
