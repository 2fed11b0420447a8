"""Rate-limit state in Redis: every decision is one run of `rl_check.lua`, which reads Redis
TIME, decides and consumes atomically, and answers the time it decided at.

A limit's state lives in one key, `redis_key(namespace, Kind.RATE, <name>)`, where the name
spells the algorithm, the period, the scope (a policy name, or none for inline limits) and the
caller's key, so a key under another algorithm or period never reads foreign state. Changing
only `limit` or `burst` keeps the state, as the proto promises. Every key carries a TTL that
ends when its state is back to a full allowance, so idle limits vanish.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import NamedTuple

from .core import Backend
from .keys import Kind, redis_key
from .scripts import script

_CHECK = script("rl_check")
_RESET = script("rl_reset")
_US_PER_MS = 1000


class Algorithm(StrEnum):
    """The algorithms of rl_check.lua, by the short names the script knows them by."""

    FIXED_WINDOW = "fw"
    SLIDING_WINDOW_LOG = "swl"
    SLIDING_WINDOW_COUNTER = "swc"
    TOKEN_BUCKET = "tb"
    GCRA = "gcra"

    @property
    def has_burst(self) -> bool:
        return self in (Algorithm.TOKEN_BUCKET, Algorithm.GCRA)


@dataclass(frozen=True)
class LimitSpec:
    """One limit: `limit` hits per `period_ms`, counted by `algorithm`; `burst` is the capacity
    of the token bucket and GCRA (0 means `limit`)."""

    algorithm: Algorithm
    limit: int
    period_ms: int
    burst: int = 0

    @cached_property
    def capacity(self) -> int:
        """The most hits admissible at once from an empty state (read per decision; a
        policy's spec lives as long as the configuration)."""
        if self.algorithm.has_burst and self.burst:
            return self.burst
        return self.limit

    @cached_property
    def script_args(self) -> tuple[str, int, int, int]:
        """The limit's part of an item's arguments to rl_check.lua (computed once per spec:
        a policy's spec lives as long as the configuration)."""
        return (self.algorithm.value, self.limit, self.period_ms * _US_PER_MS, self.capacity)


def state_key(namespace: str, spec: LimitSpec, scope: str, key: str) -> str:
    """The Redis key of the state of `key` under `spec`; `scope` is a policy name or "" for an
    inline limit. The scope is length-prefixed, so no (scope, key) pair can spell another."""
    name = f"{spec.algorithm}:{spec.period_ms}:{len(scope)}:{scope}:{key}"
    return redis_key(namespace, Kind.RATE, name)


# The per-decision values below are NamedTuples, immutable like a frozen dataclass but built
# without a frozen dataclass's object.__setattr__ per field (several µs per decision).


class LimitCheck(NamedTuple):
    """One item to decide. `hits == 0` is a peek: nothing is consumed and `allowed` says
    whether one more hit would be admitted. A `shadow` item never sinks an all-or-nothing
    group."""

    key: str  # from state_key()
    spec: LimitSpec
    hits: int
    shadow: bool = False


class Decision(NamedTuple):
    """The verdict on one item; times in microseconds of Redis time."""

    allowed: bool
    capacity: int
    remaining: int
    reset_after_us: int
    retry_after_us: int | None  # None when allowed, or when the cost exceeds the capacity
    server_time_us: int | None  # None only for a fail-open decision
    fail_open: bool = False

    @classmethod
    def failed_open(cls, spec: LimitSpec) -> Decision:
        """Admitted unchecked because Redis was unreachable: nothing counted or consumed."""
        return cls(True, spec.capacity, spec.capacity, 0, None, None, fail_open=True)


class GroupDecision(NamedTuple):
    """The verdicts on the items of one script run, and whether all of them passed."""

    decisions: list[Decision]
    allowed: bool


class RateLimitStore:
    """Decides and resets rate limits; every call is one script per Cluster slot."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def slot_groups(self, keys: Sequence[str]) -> list[list[int]]:
        """Indexes of `keys` grouped so that each group can be decided by one script."""
        if len(keys) == 1:
            return [[0]]
        return list(self.backend.group_by_slot(keys).values())

    async def check(self, items: Sequence[LimitCheck], *, all_or_nothing: bool) -> GroupDecision:
        """Decide items whose keys share one slot, atomically at one Redis time. With
        `all_or_nothing`, nothing is consumed unless every item (shadow ones aside) passes."""
        args: list[str | int] = ["all" if all_or_nothing else "each"]
        for item in items:
            hits = item.hits
            args += item.spec.script_args
            args += (max(hits, 1), "1" if hits > 0 else "0", "1" if item.shadow else "0")
        reply = await self.backend.run(_CHECK, [item.key for item in items], args)
        now_us = int(reply[0]) * 1_000_000 + int(reply[1])
        decisions = []
        at = 3
        for item in items:
            retry_after = int(reply[at + 3])
            decisions.append(
                Decision(
                    bool(int(reply[at])),
                    item.spec.capacity,
                    int(reply[at + 1]),
                    int(reply[at + 2]),
                    None if retry_after < 0 else retry_after,
                    now_us,
                )
            )
            at += 4
        return GroupDecision(decisions, bool(int(reply[2])))

    async def reset(self, keys: Sequence[str]) -> tuple[int, int]:
        """Delete the state of `keys`: (how many existed, the latest Redis time in µs)."""
        cleared, latest = 0, 0
        for group in self.slot_groups(keys):
            reply = await self.backend.run(_RESET, [keys[i] for i in group])
            latest = max(latest, int(reply[0]) * 1_000_000 + int(reply[1]))
            cleared += int(reply[2])
        return cleared, latest
