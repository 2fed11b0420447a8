"""Adaptive coalescing: the scripts of concurrent calls share kept connections.

Each Redis node (the one primary outside Cluster, each primary on Cluster) has a
multiplexer: a few connections taken from the command pool and kept, each carrying the
commands of many calls at once. A command is packed and queued on the connection whose
next write is being gathered, else on the one with the fewest answers outstanding. The
write is gathered for as long as the event loop is busy (see IDLE_TURN), so under load
one write carries the commands of many calls, and the answers come back in order, each
to its own caller; no connection waits for the previous answers before writing again.
A lone caller waits for no window: a command queued while nothing else is outstanding on
the node, and no other unary call is being served, goes out at once.

What it saves against redis-py's ordinary path: per command, no pool checkout and
return (with their metrics), no retry wrapper, no write syscall of its own, no
`asyncio.timeout` around each read, no Task. The answers are parsed where they arrive:
the kept connection's transport is handed to `_Answers`, a protocol whose data_received
feeds hiredis and gives each complete reply to its caller's future — no reader Task, no
StreamReader, and one watchdog timer per connection instead of a timeout per read.

Every command keeps its own answer: an error reply (a script's own error) is given to
that caller only. Replies that call for the redirect and reload logic of the ordinary
path (NOSCRIPT, MOVED, ASK, TRYAGAIN, CLUSTERDOWN) answer RETRY_ALONE, and so does a
failed connection (or one that saw READONLY: a demoted master) for every command still
waiting on it: those go again, one by one, along the ordinary path, where the usual
retries, backoff and rediscovery apply. A connection with answers outstanding for
longer than the socket timeout is failed the same way. A caller cancelled (its deadline)
leaves the connection as it is: its answer is read and dropped when it comes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis._parsers.hiredis import NOT_ENOUGH_DATA
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)

# Replies that the ordinary path knows how to follow: the command goes again alone.
RETRY_ALONE_REPLIES = (NoScriptError, MovedError, AskError, TryAgainError, ClusterDownError)
# Kept connections per node. More than one, so that one large answer (a 16 MiB value)
# delays only the commands queued behind it on its own connection.
CONNECTIONS_PER_NODE = 2
# A write is gathered while the event loop has other work: each loop turn that took
# longer than IDLE_TURN (seconds; an idle turn takes about 0.5 µs under uvloop, a turn
# that runs a call's handler tens of µs) runs other calls,
# which may queue commands too, so the write waits one more turn; a turn with nothing
# else to do sends it. At most MAX_GATHER_TURNS turns, FLUSH_WINDOW seconds and
# MAX_BATCH commands. A lone caller's command does not gather at all (see
# Multiplexer._lone).
LONE_GAP = 0.0001
IDLE_TURN = 0.000003
MAX_GATHER_TURNS = 128
FLUSH_WINDOW = 0.002
MAX_BATCH = 256
# Bytes written and not yet taken by the socket above which a caller waits before
# queueing more on that connection (backpressure, as redis-py's drain after each write).
WRITE_BUFFER_LIMIT = 4 * 1024 * 1024
# After a connection cannot be opened, calls take the ordinary path alone this long
# (seconds) before the multiplexer tries again: no doubled connect waits while Redis is away.
_OPEN_BACKOFF = 0.5


class _Serving:
    """The unary calls this process is serving (the corridor counts them): more than
    one, and a command queued on an idle node gathers, as others may soon join it."""

    __slots__ = ("unary_calls",)

    def __init__(self) -> None:
        self.unary_calls = 0


serving = _Serving()


class _Signal:
    """A value a caller receives instead of its reply."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# "Your command got no answer here: run it on the ordinary path."
RETRY_ALONE = _Signal("RETRY_ALONE")
# (Within the module) "no connection is kept yet: wait for the one being opened."
_WAIT = _Signal("WAIT")


@dataclass
class CoalescingStats:
    """How much coalescing happened, for tests and docs/performance.md: `writes` socket
    writes carried `commands` commands between them; `retried_alone` came back to the
    ordinary path; `drains` callers waited for a socket to take what was written."""

    writes: int = 0
    commands: int = 0
    retried_alone: int = 0
    drains: int = 0


Acquire = Callable[[], Awaitable[Any]]
Release = Callable[[Any], Awaitable[None]]
# (connection, command name, seconds from queueing to answer, the error reply or None);
# called where the answer is parsed, so it must not block or await.
Observe = Callable[[Any, str, float, BaseException | None], None]
# RESP3 pushes (hiredis >= 3.2) are no one's answer.
_PUSH = getattr(hiredis, "PushNotification", None)


class _Kept:
    """One kept connection: the commands written and not yet answered (their futures, in
    order), the packed commands of this loop turn not yet written, and what reads its
    answers."""

    __slots__ = (
        "answered_at",
        "answers",
        "broken",
        "connection",
        "flush_scheduled",
        "gathering_since",
        "last_turn",
        "loop",
        "outgoing",
        "queued",
        "turns_left",
        "waiting",
        "watchdog",
    )

    def __init__(self, connection: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.connection = connection
        # The loop its transport runs on, kept: asyncio.get_running_loop() costs a getpid()
        # system call per call on Python 3.11, and every command queued here needs it.
        self.loop = loop
        self.waiting: collections.deque[tuple[asyncio.Future[Any], str, float]] = (
            collections.deque()
        )
        self.outgoing: list[bytes] = []
        self.queued = 0
        # While the next write is gathered (see IDLE_TURN): since when, the end of the
        # last loop turn looked at (perf_counter), and how many turns it may still wait.
        self.gathering_since = 0.0
        self.last_turn = 0.0
        self.turns_left = 0
        self.flush_scheduled = False
        self.answers: _Answers | None = None
        # Loop time of the last answer (or of the first command queued on an idle
        # connection), and the timer that retires the connection when answers stall.
        self.answered_at = 0.0
        self.watchdog: asyncio.TimerHandle | None = None
        self.broken = False


class Multiplexer:
    """The kept connections to one node, opened on first use and again after a failure."""

    def __init__(
        self,
        name: str,
        acquire: Acquire,
        release: Release,
        *,
        socket_timeout: float | None,
        stats: CoalescingStats,
        observe: Observe | None = None,
        size: int = CONNECTIONS_PER_NODE,
        write_buffer_limit: int = WRITE_BUFFER_LIMIT,
    ) -> None:
        self.name = name
        self._acquire = acquire
        self._release = release
        self._socket_timeout = socket_timeout
        self._stats = stats
        self._observe = observe
        self._size = size
        self._write_buffer_limit = write_buffer_limit
        self._kept: list[_Kept] = []
        self._opening: asyncio.Future[None] | None = None
        # After a failed open, the ordinary path alone until then (loop time).
        self._open_again_at = 0.0
        self._closed = False
        # Tasks that give retired connections back to their pool, kept until done.
        self._chores: set[asyncio.Future[None]] = set()
        # Held by tests: while set, queued commands are not written.
        self.held = False

    async def call(self, args: Sequence[Any]) -> Any:
        """Send one command and answer its reply: a value, the error reply (returned, not
        raised), or RETRY_ALONE."""
        # The usual case without a coroutine of its own: a kept connection takes it now.
        picked = self._pick_now()
        kept = picked if isinstance(picked, _Kept) and not self._over_limit(picked) else None
        if kept is None:
            if picked is None:
                return RETRY_ALONE
            kept = await self._writable()
            if kept is None:
                return RETRY_ALONE
        return await self._send_one(kept, args)

    async def call_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send commands back to back on one connection (they reach Redis in order, as a
        pipeline: not atomically) and answer each reply as `call` does."""
        kept = await self._writable()
        if kept is None:
            return [RETRY_ALONE] * len(commands)
        futures = self._send(kept, commands)
        return [await future for future in futures]

    async def _writable(self) -> _Kept | None:
        """A kept connection to queue on, once its socket has taken what was written
        before beyond the write buffer limit; None: the ordinary path."""
        kept = await self._pick()
        if kept is None:
            return None
        if self._over_limit(kept):
            writer = kept.connection._writer
            self._stats.drains += 1
            try:
                await writer.drain()
            except Exception as exc:  # the connection is gone: its reader retires it
                self._fail(kept, exc)
                return None
            if kept.broken:
                return None
        return kept

    def _over_limit(self, kept: _Kept) -> bool:
        """Whether the socket holds more written bytes than the write buffer limit."""
        writer = kept.connection._writer
        return bool(
            writer is not None
            and writer.transport.get_write_buffer_size() > self._write_buffer_limit
        )

    def _send_one(self, kept: _Kept, args: Sequence[Any]) -> asyncio.Future[Any]:
        """`_send` of one command, without its lists (every unary call comes here)."""
        loop = kept.loop
        now = loop.time()
        kept.outgoing.append(hiredis.pack_command(tuple(args)))
        future: asyncio.Future[Any] = loop.create_future()
        waiting = kept.waiting
        waiting.append((future, str(args[0]), now))
        kept.queued += 1
        if len(waiting) == 1:
            lone = self._lone(kept, now)
            self._waiting_starts(kept, loop, now)
            if lone:
                self._flush(kept)
                return future
        if not kept.flush_scheduled:
            self._start_gathering(kept, loop)
        return future

    def _send(self, kept: _Kept, commands: Sequence[Sequence[Any]]) -> list[asyncio.Future[Any]]:
        loop = kept.loop
        now = loop.time()
        # hiredis packs in C (redis-py's asyncio packer is Python: 10x slower on a
        # GetMany of 100 keys), the same bytes for every argument type we send. All are
        # packed before any is queued, so a bad argument queues nothing.
        packed = [hiredis.pack_command(tuple(args)) for args in commands]
        kept.outgoing += packed
        futures = []
        for args in commands:
            future: asyncio.Future[Any] = loop.create_future()
            kept.waiting.append((future, str(args[0]), now))
            futures.append(future)
        kept.queued += len(commands)
        if len(kept.waiting) == len(commands):
            lone = self._lone(kept, now)
            self._waiting_starts(kept, loop, now)
            if lone:
                self._flush(kept)
                return futures
        if not kept.flush_scheduled:
            self._start_gathering(kept, loop)
        return futures

    def _lone(self, kept: _Kept, now: float) -> bool:
        """Whether `kept`'s commands are all the node has to do and no other unary call
        is being served, which might queue more: then they go out now instead of
        gathering. A lone caller (concurrency 1) would otherwise wait out several loop
        turns: a turn is rarely idle by IDLE_TURN's measure while the gRPC poller, the
        Redis socket and other processes on the core wake the loop, and each turn costs
        an epoll_pwait and a callback (9 to 14 turns per call measured at c1 on a loaded
        machine, up to MAX_GATHER_TURNS). The calls in flight are what tells a lone
        caller from a busy server: at concurrency 32 the node itself is often idle for a
        moment (its answers came back before the next call queued), and sending then
        cut the commands per write from 4 to 1.2. So does an answer within LONE_GAP:
        under load the next call's command follows its neighbour's answer closely."""
        if serving.unary_calls > 1:
            return False
        for other in self._kept:
            if (other.waiting and other is not kept) or now - other.answered_at < LONE_GAP:
                return False
        return True

    def _waiting_starts(self, kept: _Kept, loop: asyncio.AbstractEventLoop, now: float) -> None:
        """Nothing was outstanding on `kept`: the wait for answers starts now."""
        kept.answered_at = now
        if kept.watchdog is None and self._socket_timeout is not None:
            kept.watchdog = loop.call_at(now + self._socket_timeout, self._stalled, kept)

    def _start_gathering(self, kept: _Kept, loop: asyncio.AbstractEventLoop) -> None:
        kept.flush_scheduled = True
        kept.turns_left = MAX_GATHER_TURNS
        kept.gathering_since = kept.last_turn = time.perf_counter()
        loop.call_soon(self._gather, kept)

    async def _pick(self) -> _Kept | None:
        """The kept connection whose write is being gathered, else the one with the fewest
        answers outstanding. While fewer than `size` are kept and every one has some,
        another is opened for later calls; a call waits for an opening only when no
        connection is kept. None when no connection can be had (the ordinary path then
        reports why)."""
        kept = self._pick_now()
        if not isinstance(kept, _Signal):
            return kept
        assert self._opening is not None
        await asyncio.shield(self._opening)
        return self._pick_open()

    def _pick_now(self) -> _Kept | _Signal | None:
        """`_pick` up to its one wait: _WAIT when no connection is kept and one is being
        opened (it was started here if it was not)."""
        best: _Kept | None = None
        for kept in self._kept:
            if kept.broken:
                continue
            if kept.outgoing:
                return kept  # join the write being gathered
            if best is None or len(kept.waiting) < len(best.waiting):
                best = kept
        if best is not None and (not best.waiting or len(self._kept) >= self._size):
            return best
        if self._closed or asyncio.get_running_loop().time() < self._open_again_at:
            return best
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._open())
        if best is not None:
            return best
        return _WAIT

    def _pick_open(self) -> _Kept | None:
        live = [kept for kept in self._kept if not kept.broken]
        return min(live, key=lambda kept: len(kept.waiting)) if live else None

    async def _open(self) -> None:
        connection = None
        try:
            connection = await self._acquire()
            if not connection.is_connected:
                await connection.connect()
        except Exception as exc:
            if connection is not None:  # its pool slot is not ours to keep
                with contextlib.suppress(Exception):
                    await self._release(connection)
            # Callers take the ordinary path meanwhile, which reports why Redis is away.
            log.debug("multiplexer %s: no connection (%s)", self.name, exc)
            self._open_again_at = asyncio.get_running_loop().time() + _OPEN_BACKOFF
            return
        finally:
            self._opening = None
        kept = _Kept(connection, asyncio.get_running_loop())
        if self._closed:
            await self._give_back(kept)
            return
        kept.answers = _Answers(self, kept)
        self._kept.append(kept)

    def _gather(self, kept: _Kept) -> None:
        """One loop turn passed since the write began gathering: send it, unless the
        turn was busy (other calls ran and may queue more) and a limit is not reached."""
        now = time.perf_counter()
        kept.turns_left -= 1
        if (
            now - kept.last_turn > IDLE_TURN
            and kept.turns_left > 0
            and now - kept.gathering_since < FLUSH_WINDOW
            and kept.queued < MAX_BATCH
        ):
            kept.last_turn = now
            kept.loop.call_soon(self._gather, kept)
            return
        self._flush(kept)

    def _flush(self, kept: _Kept) -> None:
        kept.flush_scheduled = False
        if self.held or kept.broken or not kept.outgoing:
            if self.held and kept.outgoing and not kept.broken:
                kept.flush_scheduled = True
                kept.loop.call_later(0.001, self._flush, kept)
            return
        outgoing, kept.outgoing = kept.outgoing, []
        self._stats.writes += 1
        self._stats.commands += kept.queued
        kept.queued = 0
        try:
            writer = kept.connection._writer
            writer.writelines(outgoing)
        except Exception as exc:  # a closed transport: the reader sees it too
            self._fail(kept, exc)
            return

    def _stalled(self, kept: _Kept) -> None:
        """The watchdog: retire a connection whose answers stopped for longer than the
        socket timeout (its callers go the ordinary path, which reports it)."""
        kept.watchdog = None
        timeout = self._socket_timeout
        if kept.broken or not kept.waiting or timeout is None:
            return
        due = kept.answered_at + timeout
        loop = asyncio.get_running_loop()
        if loop.time() < due:
            kept.watchdog = loop.call_at(due, self._stalled, kept)
            return
        self._fail(kept, TimeoutError(f"no answer from Redis within {timeout:g}s"))

    def _fail(self, kept: _Kept, exc: BaseException | None) -> None:
        """Retire a connection: every command still waiting on it goes the ordinary
        path; the connection is dropped and given back to its pool."""
        if kept.broken:
            return
        kept.broken = True
        if exc is not None and not self._closed:
            log.info("multiplexer %s: connection failed (%r); reconnecting", self.name, exc)
        with contextlib.suppress(ValueError):
            self._kept.remove(kept)
        if kept.watchdog is not None:
            kept.watchdog.cancel()
            kept.watchdog = None
        if kept.answers is not None:
            # Its connection goes back to the pool and may be reconnected for another
            # user: redis-py's own protocol gets the transport back first.
            kept.answers.hand_back()
        while kept.waiting:
            future, _, _ = kept.waiting.popleft()
            if not future.done():
                future.set_result(RETRY_ALONE)
        kept.outgoing = []
        kept.queued = 0
        self._chore(self._give_back(kept))

    def _chore(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _give_back(self, kept: _Kept) -> None:
        with contextlib.suppress(Exception):
            await kept.connection.disconnect(nowait=True)
        with contextlib.suppress(Exception):
            await self._release(kept.connection)

    def waiting(self) -> int:
        """Commands written or queued and not yet answered."""
        return sum(len(kept.waiting) for kept in self._kept)

    async def close(self) -> None:
        """Stop using the kept connections; commands still waiting go the ordinary path."""
        self._closed = True
        for kept in list(self._kept):
            self._fail(kept, None)
        if self._chores:
            await asyncio.gather(*self._chores, return_exceptions=True)


class _Answers(asyncio.Protocol):
    """The protocol of a kept connection's transport while the multiplexer keeps it.

    Each chunk Redis sends is fed to the connection's own hiredis reader (set up by
    redis-py, with its error classes) where it arrives, and each complete reply goes to
    the oldest waiting caller. Flow control and the end of the connection are passed on
    to redis-py's protocol, so the connection's writer (drain, close) works as before."""

    def __init__(self, multiplexer: Multiplexer, kept: _Kept) -> None:
        self.multiplexer = multiplexer
        self.kept = kept
        connection = kept.connection
        self.reader = connection._parser._reader
        self.loop = kept.loop
        self.transport = connection._writer.transport
        self.own = self.transport.get_protocol()
        self.transport.set_protocol(self)
        # Bytes redis-py's stream took before the hand-over are answers too.
        buffered = connection._reader._buffer
        if buffered:
            data = bytes(buffered)
            buffered.clear()
            self.data_received(data)

    def hand_back(self) -> None:
        if self.transport.get_protocol() is self:
            self.transport.set_protocol(self.own)

    def data_received(self, data: bytes) -> None:
        kept = self.kept
        if kept.broken:
            return
        reader = self.reader
        waiting = kept.waiting
        observe = self.multiplexer._observe
        connection = kept.connection
        reader.feed(data)
        kept.answered_at = answered_at = self.loop.time()
        try:
            # Each complete reply goes to the oldest waiting caller (one whose call was
            # cancelled is done already: its reply is dropped). Inline, as this loop runs
            # once per command carried.
            while (reply := reader.gets()) is not NOT_ENOUGH_DATA:
                error = None
                if isinstance(reply, Exception):
                    # As redis-py's parser: a reply that is a connection error (LOADING,
                    # MASTERDOWN...) fails the connection, and every waiting call goes
                    # the ordinary path, whose retries and backoff apply.
                    if isinstance(reply, RedisConnectionError):
                        raise reply
                    error = reply
                elif isinstance(reply, list):
                    if type(reply) is _PUSH:  # a list too, and no one's answer
                        continue
                    if reply and isinstance(reply[0], RedisConnectionError):
                        raise reply[0]
                if not waiting:
                    raise ConnectionError("Redis sent an answer no command was waiting for")
                future, name, sent = waiting.popleft()
                if error is not None:
                    if isinstance(error, ReadOnlyError):
                        # A demoted master: this connection must not serve again.
                        if not future.done():
                            future.set_result(RETRY_ALONE)
                        raise ConnectionResetError("the node is read-only now")
                    if isinstance(error, RETRY_ALONE_REPLIES):
                        reply = RETRY_ALONE
                if observe is not None:
                    observe(connection, name, answered_at - sent, error)
                if not future.done():
                    future.set_result(reply)
        except Exception as exc:
            self.multiplexer._fail(kept, exc)

    def eof_received(self) -> bool | None:
        self.multiplexer._fail(self.kept, ConnectionError("Redis closed the connection"))
        keep_open: bool | None = self.own.eof_received()
        return keep_open

    def connection_lost(self, exc: Exception | None) -> None:
        self.multiplexer._fail(self.kept, exc or ConnectionError("connection closed"))
        self.own.connection_lost(exc)

    def pause_writing(self) -> None:
        self.own.pause_writing()

    def resume_writing(self) -> None:
        self.own.resume_writing()
