"""The resolved facts of the call being served: who calls, in which namespace.

The corridor's auth stage resolves them once per call and sets them here; servicers,
stats, spans and quotas read them with `current_call()` / `current_namespace()` and never
parse metadata themselves. grpc.aio serves every RPC in a task of its own, so a
ContextVar is exactly per call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from .access import CallSpec, Grants
from .config import QuotaOverrides


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller: `kind` is api_key, jwt, mtls or anonymous (auth off);
    `id` names the credential (never the secret itself)."""

    kind: str
    id: str
    grants: Grants
    # The credential's own quotas (config `quotas:` on an API key or mTLS identity);
    # None: the server's defaults.
    quotas: QuotaOverrides | None = None


@dataclass(slots=True)
class CallContext:
    """One call: its method, its namespace (resolved and checked), its caller. The inner
    stages fill in what the audit line and telemetry report at the end."""

    method: str
    spec: CallSpec
    namespace: str
    identity: Identity
    # The call's own gRPC context (its peer, its metadata).
    context: aio.ServicerContext[Any, Any]
    # The call's metadata as gRPC gave it, read once (it holds the credential: never
    # log it).
    metadata: Iterable[tuple[str, Any]]
    # The status the call ended with, set by the errors stage (None: OK or not ended).
    status: grpc.StatusCode | None = None
    # The ErrorInfo reason of a failed call.
    reason: str | None = None
    # How many keys the call touched, for the audit line (set by servicers that know).
    keys: int | None = None

    def text_metadata(self) -> dict[str, str]:
        """The text entries of the metadata by name (the last of a repeated name)."""
        return {name: value for name, value in self.metadata if isinstance(value, str)}


_current: ContextVar[CallContext] = ContextVar("cachet_call")


# The call being served. Raises LookupError outside a call (a bug: every servicer runs
# behind the corridor's auth stage). The ContextVar's own get, not a function around it:
# the corridor's stages ask for it several times per call.
current_call: Callable[[], CallContext] = _current.get


def current_call_or_none() -> CallContext | None:
    """The call being served, or None for calls outside the corridor (health, reflection)."""
    return _current.get(None)


def current_namespace() -> str:
    return _current.get().namespace


# Make a call current for the rest of its task (the ContextVar's own set, as
# current_call is its get). Never reset: grpc.aio serves every RPC in a task of its own,
# whose context ends with it, so one set per call suffices (a reset would cost a token and
# its check per call, and a streaming handler finalised late, from another context, could
# not reset anyway).
enter_call: Callable[[CallContext], object] = _current.set
