"""The innermost stage: every exception a handler raises becomes one gRPC status
(through errors.py), and a unary call's work is bounded by the call's deadline."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from grpc import aio

from ..callcontext import current_call_or_none
from ..errors import CachetError, Unimplemented, domain_error, rpc_status_for
from ._stage import Around, Context, StageInterceptor

log = logging.getLogger(__name__)


async def abort_with(context: Context, error: CachetError) -> None:
    """End the call with `error`'s status and google.rpc details (raises AbortError)."""
    status = rpc_status_for(error)
    await context.abort(status.code, status.details, status.trailing_metadata)


# The handler's own timeout fires this much before gRPC's deadline (or 10 % of the time
# left, when that is less), so cachet answers DEADLINE_EXCEEDED itself instead of racing
# gRPC's deadline timer to the same instant.
_DEADLINE_MARGIN = 0.002


def _handler_budget(remaining: float | None) -> float | None:
    if remaining is None:
        return None
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


class ErrorsInterceptor(StageInterceptor):
    """Exceptions -> one status mapping; unary calls -> bounded by their deadline. The
    status is recorded on the call context, where the outer stages read it."""

    def __init__(self) -> None:
        super().__init__()
        logging.getLogger("grpc._cython.cygrpc").addFilter(_ALREADY_ENDED)

    def around(self, method: str, *, response_streaming: bool) -> Around:
        @contextlib.asynccontextmanager
        async def outcome(request: object, context: Context) -> AsyncIterator[None]:
            call = current_call_or_none()
            try:
                if not response_streaming:
                    async with asyncio.timeout(_handler_budget(context.time_remaining())):
                        yield
                    if context.done():
                        # Finished just as gRPC's deadline ended the call: nothing to send.
                        raise asyncio.CancelledError
                else:
                    yield
            except aio.AbortError:
                raise
            except (asyncio.CancelledError, GeneratorExit):
                if call is not None:
                    call.status = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                error = domain_error(exc)
                if isinstance(error, Unimplemented):
                    error = Unimplemented(f"{method} is not implemented by this cachet server yet")
                if error.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                    log.warning("%s failed: %s", method, error.message)
                if call is not None:
                    call.status = error.code
                    call.reason = error.reason
                if context.done():
                    # gRPC already ended the call (its own deadline won the race): there
                    # is no one left to answer, and aborting would log a core error.
                    raise asyncio.CancelledError from None
                await abort_with(context, error)

        return outcome
