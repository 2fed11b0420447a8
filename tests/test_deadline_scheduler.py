"""The shared deadline timers (cachet_server/deadlines.py): asyncio.timeout's rules from a
few loop timers.

First the module on its own, on both loops the server may run (asyncio's and uvloop's):
when a bucket fires, a bound that outlives its budget, mixed budgets at once, a bound
left just before its bucket fires, cancels that are not ours, nesting with
asyncio.timeout, no bucket left behind. Then the errors stage: with a stand-in context,
through a live grpc.aio server (a handler that naps as long as the request says), and
through a live cachet.

No test asserts how late a timer fires (a loaded machine decides that); the lower
bound (never earlier than the slack allows) holds on any machine and is asserted.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import uvloop
from cachet_client.proto.cachet.cache.v1 import cache_pb2
from cachet_server import deadlines
from cachet_server.access import CallSpec, Grants
from cachet_server.callcontext import CallContext, Identity, current_call_or_none, enter_call
from cachet_server.deadlines import EXACT_BELOW, MAX_SLACK, fire_time, scheduler_of, within
from cachet_server.interceptors._stage import Corridor
from cachet_server.interceptors.errors import ErrorsStage, _handler_budget
from grpc import aio

# Timers fire on the loop's clock, which uvloop keeps in whole milliseconds.
TIMER_RESOLUTION = 0.002

LOOPS = pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)


def slack(budget: float) -> float:
    """How much before its budget a bound may fire."""
    return 0.0 if budget < EXACT_BELOW else min(budget / 32, MAX_SLACK)


def run(new_loop: Callable[[], asyncio.AbstractEventLoop], scenario: Awaitable[Any]) -> Any:
    """`scenario` on a fresh loop of that kind (the session's loop stays as it is)."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(scenario)  # type: ignore[arg-type]


async def forever() -> None:
    await asyncio.Event().wait()


def outcome(result: object) -> str:
    """What gather(return_exceptions=True) answered for one call: "ok" or the error's name."""
    return type(result).__name__ if isinstance(result, BaseException) else "ok"


@pytest.mark.parametrize(
    "budget", [0.0, 0.001, 0.005, 0.031, 0.03125, 0.05, 0.1, 0.999, 1.0, 20.0, 3600.0, 2.0e6]
)
def test_a_bucket_fires_never_after_the_budget_and_at_most_the_slack_before(budget):
    rng = random.Random(5)
    starts = [0.0, 1.0, 12345.678, 1e6 + 0.123] + [rng.uniform(0, 1e6) for _ in range(500)]
    for start in starts:
        expires = start + budget
        fires = fire_time(expires, budget)
        assert fires <= expires, (start, budget)
        if budget < EXACT_BELOW:
            assert fires == expires, "a short budget fires at its exact expiry"
        else:
            assert fires > expires - slack(budget), (start, budget, expires - fires)
    if budget == 1.0:
        earliest = max(start + 1.0 - fire_time(start + 1.0, 1.0) for start in starts)
        assert earliest >= 1.0 / 64, "1 s budgets share buckets of 1/64 s"
    if budget >= 20.0:
        earliest = max(start + budget - fire_time(start + budget, budget) for start in starts)
        assert earliest >= MAX_SLACK / 2, "long budgets share buckets of MAX_SLACK"


def test_budgets_a_little_apart_share_a_bucket():
    """What makes it cheap: calls entering within a granule of each other, with about
    the same budget, need one timer between them."""
    fires = {fire_time(100.0 + i * 0.0003 + 20.0, 20.0 - i * 0.0001) for i in range(1000)}
    # Their expiries span 0.2 s: one timer per MAX_SLACK of that, not one per call.
    assert len(fires) <= math.ceil(0.2 / MAX_SLACK) + 1, fires


@LOOPS
def test_a_bound_outliving_its_budget_raises_timeout_error_within_the_slack(new_loop):
    async def scenario() -> list[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        seen = []
        for budget in (0.0, 0.005, 0.05, 0.2):
            started = loop.time()
            with pytest.raises(TimeoutError):
                with within(budget):
                    await forever()
            elapsed = loop.time() - started
            assert elapsed >= budget - slack(budget) - TIMER_RESOLUTION, (budget, elapsed)
            task = asyncio.current_task()
            assert task is not None and task.cancelling() == 0, "our cancel is taken back"
            await asyncio.sleep(0.01)  # no stale cancel is waiting for the next await
            seen.append((budget, elapsed))
        return seen

    for budget, elapsed in run(new_loop, scenario()):
        print(f"budget {budget * 1000:.0f} ms: TimeoutError after {elapsed * 1000:.1f} ms")


@LOOPS
def test_of_many_concurrent_bounds_exactly_those_outliving_their_budget_fail(new_loop):
    budgets = (0.002, 0.01, 0.04, 0.5, 1.0)

    async def one(budget: float, work: str) -> str:
        with within(budget):
            if work == "forever":
                await forever()
            elif work == "brief" and budget >= 0.5:
                # A few loop turns, well inside even the earliest its bucket may fire on a
                # loaded machine (a 10 ms sleep under a 0.1 s budget once outlived it in
                # a full test run). Shorter budgets take no await: a loop turn of 300
                # calls may outlast them.
                await asyncio.sleep(0.001)
        return "ok"

    async def scenario() -> tuple[list[tuple[float, str, str]], int, int]:
        calls = [(budgets[i % 5], ("forever", "brief", "none")[i % 3]) for i in range(300)]
        results = await asyncio.gather(*(one(b, w) for b, w in calls), return_exceptions=True)
        waiting = scheduler_of(asyncio.get_running_loop()).waiting()
        await asyncio.sleep(max(budgets) + 0.05)
        outcomes = [(b, w, outcome(r)) for (b, w), r in zip(calls, results, strict=True)]
        return outcomes, waiting, len(scheduler_of(asyncio.get_running_loop()))

    outcomes, waiting, buckets = run(new_loop, scenario())
    wrong = [o for o in outcomes if o[2] != ("TimeoutError" if o[1] == "forever" else "ok")]
    assert not wrong, wrong
    assert waiting == 0 and buckets == 0


@LOOPS
def test_a_bound_left_before_its_bucket_fires_is_not_cancelled(new_loop):
    """The early call and its peer share one bucket (one timer); the early one leaves
    well before it fires, then keeps awaiting across the firing, untouched."""

    async def scenario() -> tuple[str, str, int]:
        loop = asyncio.get_running_loop()
        scheduler = scheduler_of(loop)
        peer_in = asyncio.Event()

        async def peer() -> None:
            with within(0.375):
                peer_in.set()
                await forever()

        peer_task = asyncio.create_task(peer())
        await peer_in.wait()
        [fires] = scheduler.fire_times()

        async def early() -> int:
            # A budget ending just past the peer's bucket time: the same bucket.
            with within(fires - loop.time() + 1e-6):
                assert len(scheduler) == 1 and scheduler.waiting() == 2
                done = loop.create_future()
                loop.call_at(fires - 0.1, done.set_result, None)
                await done
            await asyncio.sleep(max(0.0, fires - loop.time()) + 0.05)
            task = asyncio.current_task()
            assert task is not None
            return task.cancelling()

        early_cancelling = await early()
        [peer_result] = await asyncio.gather(peer_task, return_exceptions=True)
        return "ok", outcome(peer_result), early_cancelling

    early, peer, early_cancelling = run(new_loop, scenario())
    assert (early, peer, early_cancelling) == ("ok", "TimeoutError", 0)


@LOOPS
def test_a_cancel_that_is_not_ours_stays_a_cancelled_error(new_loop):
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        inside = asyncio.Event()

        async def bounded() -> None:
            with within(5.0):
                inside.set()
                await forever()

        task = asyncio.create_task(bounded())
        await inside.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert scheduler_of(loop).waiting() == 0, "a cancelled call leaves its bucket"

    run(new_loop, scenario())


def test_a_cancel_of_ours_and_one_not_ours_together_stay_a_cancelled_error():
    """As asyncio.timeout: when someone else cancels too, that cancel wins. On asyncio's
    loop, a callback at the bucket's own fire time runs in the same loop turn as the
    bucket (uvloop rounds each timer to its own millisecond)."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        inside = asyncio.Event()

        async def bounded() -> None:
            with within(0.2):
                inside.set()
                await forever()

        task = asyncio.create_task(bounded())
        await inside.wait()
        [fires] = scheduler_of(loop).fire_times()
        loop.call_at(fires, task.cancel)
        with pytest.raises(asyncio.CancelledError):
            await task

    run(asyncio.new_event_loop, scenario())


@LOOPS
def test_a_call_cancelled_for_its_deadline_is_not_hit_by_a_later_bucket(new_loop):
    """Its unwinding outlasts a later bucket (another call's): nothing cancels it again."""

    async def scenario() -> tuple[str, str, bool]:
        cleaned = False

        async def unwinding_slowly() -> None:
            nonlocal cleaned
            with within(0.05):
                try:
                    await forever()
                except asyncio.CancelledError:
                    await asyncio.sleep(0.2)  # across the other call's bucket
                    cleaned = True
                    raise

        async def later() -> None:
            with within(0.1):
                await forever()

        first, second = await asyncio.gather(unwinding_slowly(), later(), return_exceptions=True)
        return outcome(first), outcome(second), cleaned

    assert run(new_loop, scenario()) == ("TimeoutError", "TimeoutError", True)


@LOOPS
def test_asyncio_timeout_nested_either_way_keeps_its_own_meaning(new_loop):
    async def scenario() -> list[str]:
        seen = []
        # An inner asyncio.timeout firing first is the handler's own business.
        with within(5.0):
            try:
                async with asyncio.timeout(0.01):
                    await forever()
            except TimeoutError:
                seen.append("inner timeout handled")
            await asyncio.sleep(0)
        seen.append("outer bound not hit")
        # The bound firing under a longer asyncio.timeout: inner sees a cancel, not
        # its own timeout; the bound turns it into TimeoutError.
        try:
            with within(0.02):
                try:
                    async with asyncio.timeout(5.0):
                        await forever()
                except asyncio.CancelledError:
                    seen.append("inner saw a cancel")
                    raise
        except TimeoutError:
            seen.append("bound timed out")
        # And the other way round: an asyncio.timeout firing over a longer bound.
        try:
            async with asyncio.timeout(0.02):
                try:
                    with within(5.0):
                        await forever()
                except asyncio.CancelledError:
                    seen.append("bound let the cancel through")
                    raise
        except TimeoutError:
            seen.append("asyncio timeout timed out")
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        return seen

    assert run(new_loop, scenario()) == [
        "inner timeout handled",
        "outer bound not hit",
        "inner saw a cancel",
        "bound timed out",
        "bound let the cancel through",
        "asyncio timeout timed out",
    ]


@LOOPS
def test_no_bucket_is_left_behind_after_a_thousand_bounds(new_loop):
    async def scenario() -> tuple[Counter[str], int, int, int]:
        loop = asyncio.get_running_loop()
        scheduler = scheduler_of(loop)
        rng = random.Random(12)
        most = 0

        async def one(budget: float, work: int) -> str:
            nonlocal most
            with within(budget):
                most = max(most, len(scheduler))
                if work == 0:
                    await forever()
                for _ in range(work):
                    await asyncio.sleep(0)
            return "ok"

        outcomes: Counter[str] = Counter()
        for _ in range(4):
            batch = [one(rng.uniform(0.0, 0.15), rng.randrange(4)) for _ in range(250)]
            for result in await asyncio.gather(*batch, return_exceptions=True):
                outcomes[outcome(result)] += 1
        waiting = scheduler.waiting()
        await asyncio.sleep(0.2)
        return outcomes, waiting, len(scheduler), most

    outcomes, waiting, buckets, most = run(new_loop, scenario())
    print(f"outcomes {dict(outcomes)}; at most {most} buckets at once")
    assert sum(outcomes.values()) == 1000 and set(outcomes) == {"ok", "TimeoutError"}
    assert waiting == 0 and buckets == 0


@LOOPS
def test_a_loops_scheduler_goes_with_the_loop(new_loop):
    async def scenario() -> int:
        with within(30.0):
            await asyncio.sleep(0)
        return id(asyncio.get_running_loop())

    loop_id = run(new_loop, scenario())
    gc.collect()
    assert loop_id not in deadlines._schedulers


def test_bounds_while_another_threads_loop_is_inside_a_task_bound_their_own_task():
    """A bound finds its loop and task in asyncio's table of running tasks when that
    table holds only one (then it is ours), else asks asyncio. Here another thread's
    loop sits inside a task step (a blocking sleep) the whole time, so the table holds
    two: 200 calls, half outliving their budget, still each bound their own task; and
    with that thread's loop idle, the same calls take the table's one entry."""
    import threading

    inside = threading.Event()
    release = threading.Event()

    async def hold() -> None:
        inside.set()
        release.wait(30)  # blocking, inside this task's step

    def holder() -> None:
        run(asyncio.new_event_loop, hold())

    async def one(i: int) -> str:
        with within(0.02 if i % 2 else 5.0):
            if i % 2:
                await forever()
            for _ in range(3):
                await asyncio.sleep(0)
        return "ok"

    async def scenario() -> tuple[Counter[str], int]:
        outcomes = await asyncio.gather(*(one(i) for i in range(200)), return_exceptions=True)
        waiting = scheduler_of(asyncio.get_running_loop()).waiting()
        return Counter(outcome(r) for r in outcomes), waiting

    expected = (Counter({"ok": 100, "TimeoutError": 100}), 0)
    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert inside.wait(10)
        assert len(deadlines._running_tasks) == 1, "the other loop is inside a step"
        for new_loop in (asyncio.new_event_loop, uvloop.new_event_loop):
            assert run(new_loop, scenario()) == expected
    finally:
        release.set()
        thread.join(10)
    assert not deadlines._running_tasks
    assert run(uvloop.new_event_loop, scenario()) == expected


def test_a_bound_outside_a_task_is_refused():
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        refused = loop.create_future()

        def from_a_callback() -> None:
            try:
                within(1.0).__enter__()
            except RuntimeError as error:
                refused.set_result(str(error))

        loop.call_soon(from_a_callback)
        assert "inside" in await refused

    run(asyncio.new_event_loop, scenario())


# Through the errors stage.

NAP = "/test.Napper/Nap"
DEADLINE_MESSAGE = "the call's deadline passed before Redis answered"


def anonymous_call(context: Any) -> CallContext:
    """A call context for calls outside the auth stage: the errors stage records the
    status a call ends with on it."""
    anonymous = Identity("anonymous", "test", Grants.of([], []))
    return CallContext(NAP, CallSpec(frozenset()), "t", anonymous, context, ())


class _StandInContext:
    """What the errors stage reads of a gRPC context, with a fixed time remaining."""

    def __init__(self, remaining: float) -> None:
        self.remaining = remaining
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def time_remaining(self) -> float:
        return self.remaining

    def done(self) -> bool:
        return False

    async def abort(self, code: grpc.StatusCode, details: str, trailing: Any = None) -> None:
        self.aborted = (code, details)
        raise aio.AbortError()


@LOOPS
def test_the_errors_stage_answers_its_deadline_exceeded_when_the_bound_fires(new_loop):
    """The status and message are those asyncio.timeout's TimeoutError gave; a cancel
    that is not the deadline's (client, gRPC, shutdown) stays CANCELLED."""

    async def work(request: str, context: Any) -> str:
        if request == "forever":
            await forever()
        await asyncio.sleep(0)
        return "answer"

    async def serve(request: str, remaining: float, *, cancel: bool = False) -> tuple[Any, ...]:
        bounded = ErrorsStage().unary(NAP, work)
        context = _StandInContext(remaining)
        call = anonymous_call(context)

        async def one() -> Any:
            enter_call(call)
            return await bounded(request, context)

        task = asyncio.create_task(one())
        if cancel:
            await asyncio.sleep(0.01)
            task.cancel()
        [result] = await asyncio.gather(task, return_exceptions=True)
        status = call.status.name if call.status is not None else "OK"
        return outcome(result), status, call.reason, context.aborted

    async def scenario() -> list[tuple[Any, ...]]:
        return [
            await serve("forever", 0.05),
            await serve("forever", 0.005),
            await serve("quick", 0.05),
            await serve("forever", 5.0, cancel=True),
        ]

    exceeded = ("AbortError", "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED")
    assert run(new_loop, scenario()) == [
        (*exceeded, (grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_MESSAGE)),
        (*exceeded, (grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_MESSAGE)),
        ("ok", "OK", None, None),
        ("CancelledError", "CANCELLED", None, None),
    ]


class _Ends:
    """An outer stage that gives each call a call context and keeps, for each, (the
    status it ended with, how it left the errors stage): AbortError when cachet
    answered the status itself, CancelledError when the client or gRPC ended it."""

    def __init__(self) -> None:
        self.ends: list[tuple[str, str]] = []
        self.calls: list[CallContext] = []
        self.one_more = asyncio.Event()

    def stage_for(self, method: str, *, response_streaming: bool) -> _Ends:
        return self

    def enter(self, request: Any, context: Any) -> CallContext:
        call = anonymous_call(context)
        enter_call(call)
        return call

    def leave(self, call: CallContext, error: BaseException | None) -> None:
        status = call.status.name if call.status is not None else "OK"
        self.ends.append((status, type(error).__name__ if error is not None else "-"))
        self.calls.append(call)
        self.one_more.set()


@dataclass
class Nap:
    """One call as its handler saw it (loop time): when it began, the budget the errors
    stage gives what remained of its deadline then, when it was cancelled."""

    began: float
    budget: float | None
    cancelled_at: float | None = None


class Napper:
    """A live grpc.aio server whose one method naps for the seconds its request names
    ("forever": until cancelled), behind the real errors stage."""

    def __init__(self) -> None:
        self.ends = _Ends()
        self.started = asyncio.Event()
        self.naps: dict[int, Nap] = {}  # id(call context) -> its nap
        corridor = Corridor([self.ends], ErrorsStage())
        self.server = aio.server(handlers=[corridor])
        handler = grpc.unary_unary_rpc_method_handler(self._nap)
        corridor.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(NAP.split("/")[1], {"Nap": handler}),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    async def ended(self, calls: int) -> list[tuple[str, str]]:
        """How the calls ended, once `calls` of them have (a client may see its answer
        before the server's task has finished unwinding)."""
        async with asyncio.timeout(30):
            while len(self.ends.ends) < calls:
                self.ends.one_more.clear()
                await self.ends.one_more.wait()
        return self.ends.ends

    async def ended_naps(self, calls: int) -> list[tuple[str, Nap]]:
        """(status, nap) of the first `calls` calls to end, once they have."""
        await self.ended(calls)
        return [
            (call.status.name if call.status is not None else "OK", self.naps[id(call)])
            for call in self.ends.calls[:calls]
        ]

    async def _nap(self, request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        loop = asyncio.get_running_loop()
        remaining = context.time_remaining()
        budget = None if remaining is None else _handler_budget(remaining)
        nap = self.naps[id(current_call_or_none())] = Nap(loop.time(), budget)
        self.started.set()
        try:
            if request == b"forever":
                await forever()
            else:
                await asyncio.sleep(float(request))
        except asyncio.CancelledError:
            nap.cancelled_at = loop.time()
            raise
        return b"rested"


@pytest.fixture
async def napper() -> AsyncIterator[tuple[Napper, Any]]:
    napper = Napper()
    await napper.server.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{napper.port}") as channel:
            await channel.channel_ready()
            yield napper, channel.unary_unary(NAP)
    finally:
        await napper.server.stop(None)


# Over the wire, the bound races the client's own deadline by the errors stage's margin
# (2 ms) plus the bucket's slack, less however long the request took to reach the
# server's gRPC core (the server counts its deadline from there, the client from the
# send). A loaded machine can let the client's deadline win: the server then sees that
# cancel (CANCELLED), sooner than its own budget, and in a loop that wakes late with
# both due, gRPC's cancel is handled before the bound's timer. Every call still ends
# DEADLINE_EXCEEDED at the client; each server end is checked against the deadline that
# did end it, and the bound's own answers are counted: some must be there.
RACED = {"DEADLINE_EXCEEDED", "CANCELLED"}
# Rounds of calls at most, until the bound has answered some: the calls of one round
# share one bucket, so one late loop turn can give the client's deadline all of them.
ROUNDS = 10


async def call_codes(nap: Any, calls: list[tuple[float, bytes]]) -> list[str]:
    async def one(deadline: float, request: bytes) -> str:
        try:
            await nap(request, timeout=deadline)
            return "OK"
        except aio.AioRpcError as error:
            return error.code().name

    return await asyncio.gather(*(one(deadline, request) for deadline, request in calls))


def assert_ended_by_their_deadlines(ended: list[tuple[str, Nap]], sent: float, deadline: float):
    """A call the bound ended (DEADLINE_EXCEEDED) was cancelled no sooner than its budget
    less the slack; one the client's deadline ended (CANCELLED), no sooner than that
    deadline (counted from before any of the calls was sent)."""
    for status, nap in ended:
        assert status in RACED and nap.budget is not None and nap.cancelled_at is not None
        if status == "DEADLINE_EXCEEDED":
            after = nap.cancelled_at - nap.began
            assert after >= nap.budget - slack(nap.budget) - TIMER_RESOLUTION, (nap, after)
        else:
            assert nap.cancelled_at >= sent + deadline - TIMER_RESOLUTION, (nap, sent)


async def test_handlers_outliving_their_deadline_end_deadline_exceeded_from_the_bound(napper):
    server, nap = napper
    loop = asyncio.get_running_loop()
    ended: list[tuple[str, Nap]] = []
    for _ in range(ROUNDS):
        sent = loop.time()
        codes = await call_codes(nap, [(0.3, b"forever")] * 8)
        assert codes == ["DEADLINE_EXCEEDED"] * 8
        this_round = (await server.ended_naps(len(ended) + 8))[len(ended) :]
        assert_ended_by_their_deadlines(this_round, sent, 0.3)
        assert scheduler_of(loop).waiting() == 0
        ended += this_round
        if any(status == "DEADLINE_EXCEEDED" for status, _ in this_round):
            break
    statuses = Counter(status for status, _ in ended)
    assert statuses["DEADLINE_EXCEEDED"] >= 1, ("the bound never answered", ended)
    budgets = sorted(nap.budget or 0.0 for _, nap in ended)
    print(
        f"{len(ended) // 8} round(s); ended on the server: {dict(Counter(server.ends.ends))}; "
        f"budgets {budgets[0]:.4f}-{budgets[-1]:.4f} s"
    )


async def test_mixed_deadlines_through_the_server_fail_exactly_the_calls_outliving_them(napper):
    server, nap = napper
    deadlines = (0.2, 0.4, 0.8)
    calls = [(deadlines[i % 3], b"forever" if i % 4 == 0 else b"0.001") for i in range(24)]
    codes = await call_codes(nap, calls)
    expected = ["DEADLINE_EXCEEDED" if request == b"forever" else "OK" for _, request in calls]
    assert codes == expected, list(zip(calls, codes, strict=True))
    ends = await server.ended(len(calls))
    statuses = Counter(status for status, _ in ends)
    assert statuses["OK"] == expected.count("OK"), ends
    assert set(statuses) <= {"OK"} | RACED and statuses["DEADLINE_EXCEEDED"] >= 1, ends
    print(f"ended on the server: {dict(Counter(ends))}")
    assert scheduler_of(asyncio.get_running_loop()).waiting() == 0


async def test_a_client_cancel_stays_cancelled(napper):
    server, nap = napper
    call = nap(b"forever", timeout=10.0)
    await server.started.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await server.ended(1) == [("CANCELLED", "CancelledError")], "not DEADLINE_EXCEEDED"
    assert scheduler_of(asyncio.get_running_loop()).waiting() == 0


# Through a live cachet.

GET = "/cachet.cache.v1.CacheService/Get"


async def test_a_thousand_gets_with_deadlines_leave_no_bucket_behind(cachet, cache):
    """The in-process server runs on this test's loop: its scheduler is this loop's."""
    scheduler = scheduler_of(asyncio.get_running_loop())
    before = set(scheduler.fire_times())
    await cache.Set(cache_pb2.SetRequest(key="k", value=b"v"))
    rng = random.Random(7)
    codes: Counter[str] = Counter()

    async def one(deadline: float) -> None:
        try:
            await cache.Get(cache_pb2.GetRequest(key="k"), timeout=deadline)
            codes["OK"] += 1
        except aio.AioRpcError as error:
            codes[error.code().name] += 1

    for _ in range(20):
        await asyncio.gather(*(one(rng.uniform(0.2, 0.4)) for _ in range(50)))
    assert sum(codes.values()) == 1000
    assert set(codes) <= {"OK", "DEADLINE_EXCEEDED"}, codes
    assert scheduler.waiting() == 0
    await asyncio.sleep(0.45)
    left = set(scheduler.fire_times()) - before
    assert not left, f"{len(left)} buckets of these calls left behind"
    print(f"codes {dict(codes)}; {len(before)} buckets of earlier tests were pending")
