"""Adaptive coalescing: scripts bound for one Redis node go out together under load.

Each node has a lane. A script that finds its lane idle goes out at once, alone, on the
ordinary path (so one caller at a time pays nothing: no timer, no window). Scripts that
arrive while one is in flight wait in the lane; when the one in flight ends, the first
of them leads the next round trip and sends every script waiting by then as one
pipeline on one connection. The window therefore opens only while the node is busy,
and it is exactly as long as the round trip before it.

No Task is made per command or per batch: waiting callers await a future; the leader
is one of them, and the lane passes on to the next leader when its round trip ends.

Every script keeps its own answer: an error reply (a script's own error) is raised for
that caller only. Replies that call for the redirect and reload logic of the ordinary
path (NOSCRIPT, MOVED, ASK, TRYAGAIN, CLUSTERDOWN) and a connection failure of the
pipeline send those scripts back along the ordinary path, one by one, where the usual
retries apply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    TryAgainError,
)

# The most scripts one pipeline carries; the rest wait for the next round trip.
MAX_BATCH = 256
# Replies that the ordinary path knows how to follow: the script goes again alone.
RETRY_ALONE_REPLIES = (NoScriptError, MovedError, AskError, TryAgainError, ClusterDownError)


class _Signal:
    """A value a waiting caller receives instead of its reply."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# "The lane is yours: send the batch you were given."
LEAD = _Signal("LEAD")
# "Your script did not get an answer in the batch: run it on the ordinary path."
RETRY_ALONE = _Signal("RETRY_ALONE")


class Pending:
    """One script waiting in a lane."""

    __slots__ = ("args", "batch", "future", "keys", "script")

    def __init__(
        self, script: Any, keys: Sequence[str], args: Sequence[Any], future: asyncio.Future[Any]
    ) -> None:
        self.script = script
        self.keys = keys
        self.args = args
        self.future = future
        # Set on the leader: the scripts it sends (itself first).
        self.batch: list[Pending] = []


class Lane:
    """The scripts bound for one node: whether a round trip is in flight, and who waits."""

    __slots__ = ("busy", "waiting")

    def __init__(self) -> None:
        self.busy = False
        self.waiting: list[Pending] = []

    def pass_on(self) -> None:
        """The round trip in flight ended: hand the lane to the first caller still
        waiting, with every waiting script as its batch, or leave it idle."""
        waiting = [p for p in self.waiting if not p.future.done()]
        if not waiting:
            self.waiting = []
            self.busy = False
            return
        batch, self.waiting = waiting[:MAX_BATCH], waiting[MAX_BATCH:]
        leader = batch[0]
        leader.batch = batch
        leader.future.set_result(LEAD)


@dataclass
class CoalescingStats:
    """How much coalescing happened, for tests and the figures in docs/performance.md:
    `alone` scripts went out on their own; `pipelines` round trips carried `batched`
    scripts between them; `retried_alone` came back from a batch to the ordinary path."""

    alone: int = 0
    pipelines: int = 0
    batched: int = 0
    retried_alone: int = 0
