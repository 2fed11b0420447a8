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


class ErrorsInterceptor(StageInterceptor):
    """Exceptions -> one status mapping; unary calls -> bounded by their deadline. The
    status is recorded on the call context, where the outer stages read it."""

    def around(self, method: str, *, response_streaming: bool) -> Around:
        @contextlib.asynccontextmanager
        async def outcome(request: object, context: Context) -> AsyncIterator[None]:
            call = current_call_or_none()
            try:
                if not response_streaming:
                    async with asyncio.timeout(context.time_remaining()):
                        yield
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
                await abort_with(context, error)

        return outcome
