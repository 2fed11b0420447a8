"""What every servicer is built from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from grpc import aio

from ..access import CallSpec
from ..backend.core import Backend
from ..config import Settings
from ..stats import ServiceStats
from ..validation import Validator

Context = aio.ServicerContext[Any, Any]


@dataclass(frozen=True)
class Dependencies:
    """Shared by all servicers of one server."""

    settings: Settings
    backend: Backend
    validator: Validator
    stats: ServiceStats


class Servicer:
    """Base of our servicers: keeps the dependencies; `aclose` runs at shutdown, after
    in-flight calls have drained (override it to stop background tasks).

    `CALLS` declares what each RPC of the service needs (see access.py); the auth
    interceptor enforces it, so methods never check roles themselves."""

    CALLS: ClassVar[dict[str, CallSpec]] = {}

    def __init__(self, deps: Dependencies) -> None:
        self.deps = deps
        self.check = deps.validator

    async def aclose(self) -> None:
        return None
