"""Deadlines for many calls from a few shared loop timers.

`with within(budget):` bounds the current task the way `async with asyncio.timeout(budget)`
does, for a small part of its cost: asyncio.timeout makes, per call, a loop timer (a uv
timer malloc'd, started, stopped and closed on a later loop turn) and runs an async
context manager. Here the calls are grouped by when they expire, one loop timer per
group (a bucket); entering puts the call in its bucket, leaving takes it out. When a
bucket's timer fires, every call still in it is cancelled and marked; leaving a marked
call turns that cancellation into TimeoutError, with asyncio.timeout's rules: the task is
uncancel()ed, and a cancel that is not ours (the client's, gRPC's own deadline, server
shutdown) stays a CancelledError.

When a bucket's timer is set for: never after the budget ends, and less than budget/32
before, and never more than `MAX_SLACK` before (a 50 ms budget may end up to 1 ms early,
a 20 s or a 10 min one up to 62.5 ms early: a long blocking wait keeps nearly all its
time). A bucket's fire time is the budget's expiry rounded down to a power of two of
seconds no larger than budget/32 nor MAX_SLACK, so calls entering within that much of
each other share one timer. A budget under `EXACT_BELOW` gets a bucket of its exact
expiry.

A bucket lives until its timer fires, even once empty: taking the timer down when the last
call leaves would cost a timer per call again whenever calls do not overlap (one client
at a time). The count stays bounded: at most 64 buckets per power of two of budget
lengths in use up to 2 s, one per MAX_SLACK of the longest budget beyond (320 for 20 s
deadlines), plus the exact ones of the last `EXACT_BELOW` seconds.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from types import TracebackType
from typing import Any

__all__ = [
    "EXACT_BELOW",
    "MAX_SLACK",
    "Bound",
    "DeadlineScheduler",
    "fire_time",
    "scheduler_of",
    "within",
]

# Budgets shorter than this fire at their exact expiry: their slack (budget/32) would be
# under a millisecond, the loop timers' own resolution.
EXACT_BELOW = 2.0**-5
# The most a bucket fires before its budget ends, whatever the budget (seconds).
MAX_SLACK = 2.0**-4


class DeadlineScheduler:
    """The buckets of one event loop: fire time -> the bounds waiting in it."""

    __slots__ = ("_buckets",)

    def __init__(self) -> None:
        self._buckets: dict[float, set[Bound]] = {}

    def __len__(self) -> int:
        """Buckets whose timer has not fired yet."""
        return len(self._buckets)

    def fire_times(self) -> list[float]:
        """When the pending buckets fire (loop time), earliest first."""
        return sorted(self._buckets)

    def waiting(self) -> int:
        """Bounds entered and neither left nor expired."""
        return sum(len(members) for members in self._buckets.values())

    def _expire(self, fires: float) -> None:
        for bound in self._buckets.pop(fires):
            bound.expired = True
            bound._task.cancel()


def fire_time(expires: float, budget: float) -> float:
    """When the bucket of a budget that ends at `expires` fires."""
    if budget >= _CAPPED_FROM:
        # The common case (gRPC clients' deadlines are seconds long): no frexp/ldexp.
        return expires // MAX_SLACK * MAX_SLACK
    if budget < EXACT_BELOW:
        return expires
    # Down to a multiple of the largest power of two of seconds not over budget/32
    # (nor MAX_SLACK).
    granule = min(math.ldexp(1.0, math.frexp(budget)[1] - 6), MAX_SLACK)
    return expires // granule * granule


# From this budget on, budget/32 is at least MAX_SLACK: every bucket is MAX_SLACK wide.
_CAPPED_FROM = 32 * MAX_SLACK


# id(loop) -> its scheduler, until the loop is collected (the scheduler holds no
# reference to its loop; the loop's timers hold the scheduler). Keyed by id, not by a weak
# reference, so that a call's lookup is one dict.get.
_schedulers: dict[int, DeadlineScheduler] = {}


def scheduler_of(loop: asyncio.AbstractEventLoop) -> DeadlineScheduler:
    """`loop`'s scheduler."""
    scheduler = _schedulers.get(id(loop))
    if scheduler is None:
        scheduler = _schedulers[id(loop)] = DeadlineScheduler()
        weakref.finalize(loop, _schedulers.pop, id(loop), None)
    return scheduler


class Bound:
    """One task bounded by one budget: a synchronous context manager, entered once."""

    __slots__ = ("_budget", "_cancelling", "_members", "_task", "expired")

    def __init__(self, budget: float) -> None:
        self._budget = budget
        self.expired = False

    def __enter__(self) -> Bound:
        # Every call with a deadline passes here, so the scheduler's join is inlined and
        # the loop and task come from asyncio's table of the task each loop is running
        # now: when it holds one, that one is ours (we run in a task, on our loop).
        # asyncio.get_running_loop costs a getpid() system call per call on Python 3.11.
        task: asyncio.Task[Any] | None
        if len(_running_tasks) == 1:
            [(loop, task)] = _running_tasks.items()
        else:
            loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
        if task is None:
            raise RuntimeError("a deadline bounds a task: use it inside one")
        self._task = task
        self._cancelling = task.cancelling()
        scheduler = _schedulers.get(id(loop))
        if scheduler is None:
            scheduler = scheduler_of(loop)
        budget = self._budget
        fires = fire_time(loop.time() + budget, budget)
        buckets = scheduler._buckets
        members = buckets.get(fires)
        if members is None:
            members = buckets[fires] = set()
            loop.call_at(fires, scheduler._expire, fires)
        members.add(self)
        self._members = members
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if not self.expired:
            self._members.discard(self)
            return
        # Our cancel: take it back, and if no other cancel came meanwhile, the
        # CancelledError it raised is the deadline's.
        if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


# Each loop -> the task it is running a step of now (asyncio's own table; empty where a
# Python version keeps it elsewhere, and then Bound asks asyncio).
_running_tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] = getattr(
    asyncio.tasks, "_current_tasks", {}
)


def within(budget: float) -> Bound:
    """Bound the current task by `budget` seconds (less the slack above, at most): the
    block is cancelled then and raises TimeoutError, as under asyncio.timeout."""
    return Bound(budget)
