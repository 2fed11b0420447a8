"""The innermost stage: every exception a handler raises becomes one gRPC status
(through errors.py), and a unary call's work is bounded by the call's deadline (through
the loop's shared deadline timers, deadlines.py: asyncio.timeout's rules without a
timer per call)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from grpc import aio

from ..callcontext import current_call_or_none
from ..deadlines import Bound
from ..errors import CachetError, Unimplemented, domain_error
from ._stage import Context, StreamBehavior, UnaryBehavior, abort_with

log = logging.getLogger(__name__)

__all__ = ["ErrorsStage", "abort_with"]

# The handler's own timeout fires at least this much before gRPC's deadline (or 10 % of
# the time left, when that is less; its shared timer may fire up to budget/32 sooner, and
# at most 62.5 ms: see deadlines.py), so cachet answers DEADLINE_EXCEEDED itself instead of
# racing gRPC's deadline timer to the same instant.
_DEADLINE_MARGIN = 0.002


def _handler_budget(remaining: float) -> float:
    return max(0.0, remaining - min(_DEADLINE_MARGIN, remaining * 0.1))


class _CallAlreadyEnded(logging.Filter):
    """grpc logs an ERROR, with a traceback, when a handler's answer meets a call that its
    deadline (or the client) already ended, though nothing went wrong on our side. The
    margin above makes that rare; this keeps the rest from reading as a server fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        message = record.getMessage()
        if message.startswith("ExecuteBatchError raised in core by servicer method"):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "%s: the call ended (deadline or cancel) before its answer was sent"
            record.args = (message,)
            record.exc_info = record.exc_text = None
        return True


_ALREADY_ENDED = _CallAlreadyEnded()


class ErrorsStage:
    """Exceptions -> one status mapping; unary calls -> bounded by their deadline. The
    status is recorded on the call context, where the outer stages read it."""

    def __init__(self) -> None:
        logging.getLogger("grpc._cython.cygrpc").addFilter(_ALREADY_ENDED)

    def unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def bounded(request: Any, context: Context) -> Any:
            try:
                remaining = context.time_remaining()
                if remaining is None:
                    response = await behavior(request, context)
                else:
                    with Bound(_handler_budget(remaining)):
                        response = await behavior(request, context)
                if context.done():
                    # Finished just as gRPC's deadline ended the call: nothing to send.
                    raise asyncio.CancelledError
                return response
            except aio.AbortError:
                raise
            except asyncio.CancelledError:
                _cancelled()
                raise
            except Exception as exc:
                await _fail(method, context, exc)

        return bounded

    def writing(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        async def written(request: Any, context: Context) -> Any:
            try:
                return await behavior(request, context)
            except aio.AbortError:
                raise
            except asyncio.CancelledError:
                _cancelled()
                raise
            except Exception as exc:
                await _fail(method, context, exc)

        return written

    def streaming(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        async def streamed(request: Any, context: Context) -> AsyncIterator[Any]:
            try:
                async for response in behavior(request, context):
                    yield response
            except aio.AbortError:
                raise
            except (asyncio.CancelledError, GeneratorExit):
                _cancelled()
                raise
            except Exception as exc:
                await _fail(method, context, exc)

        return streamed


def _cancelled() -> None:
    call = current_call_or_none()
    if call is not None:
        call.status = grpc.StatusCode.CANCELLED


async def _fail(method: str, context: Context, exc: Exception) -> NoReturn:
    error: CachetError = domain_error(exc)
    if isinstance(error, Unimplemented):
        error = Unimplemented(f"{method} is not implemented by this cachet server yet")
    if error.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
        log.warning("%s failed: %s", method, error.message)
    call = current_call_or_none()
    if call is not None:
        call.status = error.code
        call.reason = error.reason
    if context.done():
        # gRPC already ended the call (its own deadline won the race): there is no one
        # left to answer, and aborting would log a core error.
        raise asyncio.CancelledError from None
    await abort_with(context, error)
    raise AssertionError("abort returned")  # pragma: no cover
