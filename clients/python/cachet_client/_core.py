"""The layer both clients share: settings, channels, and calls written once.

Every wrapper method is written once, as a generator of steps (`Steps[T]`): it builds
requests, yields a `Call` (or a `Sleep`, or an `Invoke` of user code) and maps the
answers. A runner drives the generator: `AsyncRunner` awaits each step on a grpc.aio
channel, `SyncRunner` performs it on grpc's blocking channel. The `procedure`
descriptor binds such a method to a service object and hands its steps to that
object's runner, so `client.cache.get` is a coroutine function on the async client and
a plain function on the sync one, with the same signature, checked by mypy.

Retries: UNAVAILABLE is retried by gRPC itself (a `retryPolicy` in the channel's
service config: exponential backoff with jitter) on the channel that carries idempotent
calls only; non-idempotent calls go over a second channel without one. RESOURCE_EXHAUSTED
carrying a google.rpc.RetryInfo cannot be expressed in a service config (gRPC does not
read RetryInfo), so `Service._call` waits at least its `retry_delay` itself.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, overload

import grpc
from google.protobuf import duration_pb2
from google.protobuf.message import Message
from grpc import aio

from .errors import CachetError, ResourceExhausted, from_rpc_error
from .serializers import Serializer

NAMESPACE_METADATA = "cachet-namespace"
AUTHORIZATION_METADATA = "authorization"
# The largest answer a channel accepts: unlimited (-1), not gRPC's 4 MiB default. The
# server bounds what it sends (limits.max_message_bytes, 8 MiB unless raised) and sizes
# GetMany, Batch and collection answers to fit, so any cap here below it fails answers
# the server built and the caller asked for. `options` may set a cap again.
MAX_RECEIVE_MESSAGE_LENGTH = -1

P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R", bound=Message)

# A credential: a token, or a function answering a fresh one before every call (the
# async client also accepts a coroutine function).
SyncCredential = str | Callable[[], str]
Credential = str | Callable[[], str] | Callable[[], Awaitable[str]]


def _read(data: bytes | str | Path | None) -> bytes | None:
    """PEM given as bytes, or as a file path (str or Path)."""
    if data is None or isinstance(data, bytes):
        return data
    return Path(data).read_bytes()


@dataclass(frozen=True)
class TLS:
    """TLS to the server. `ca` (bytes, or a file path) is the CA that signed the server's
    certificate (the system roots when None); `cert` and `key` (bytes or paths) are the
    client certificate and key for mutual TLS; `server_name` overrides the name checked
    against the server certificate (when the target is an IP address or an alias)."""

    ca: bytes | str | Path | None = None
    cert: bytes | str | Path | None = None
    key: bytes | str | Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("TLS: cert and key go together (mutual TLS needs both)")

    def credentials(self) -> grpc.ChannelCredentials:
        """The grpc channel credentials these settings describe."""
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca),
            private_key=_read(self.key),
            certificate_chain=_read(self.cert),
        )


@dataclass(frozen=True)
class RetryPolicy:
    """How idempotent calls are retried on UNAVAILABLE (by gRPC, through the service
    config) and on RESOURCE_EXHAUSTED with a RetryInfo (by the client, waiting at least
    the server's retry delay). Backoff is exponential with full jitter: attempt n waits a
    random time in [0, min(max_backoff, initial_backoff * multiplier**n)].
    `max_attempts` counts the first call; gRPC allows at most 5."""

    max_attempts: int = 5
    initial_backoff: timedelta = timedelta(milliseconds=100)
    max_backoff: timedelta = timedelta(seconds=2)
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 5:
            raise ValueError("RetryPolicy.max_attempts must be in [1, 5] (gRPC's limit)")
        if self.initial_backoff <= timedelta(0) or self.max_backoff < self.initial_backoff:
            raise ValueError("RetryPolicy: 0 < initial_backoff <= max_backoff")
        if self.multiplier < 1:
            raise ValueError("RetryPolicy.multiplier must be at least 1")

    def service_config(self) -> str:
        """The gRPC service config (JSON) retrying UNAVAILABLE on every method."""
        config: dict[str, Any] = {"methodConfig": [{"name": [{}]}]}
        if self.max_attempts > 1:
            config["methodConfig"][0]["retryPolicy"] = {
                "maxAttempts": self.max_attempts,
                "initialBackoff": f"{self.initial_backoff.total_seconds():.3f}s",
                "maxBackoff": f"{self.max_backoff.total_seconds():.3f}s",
                "backoffMultiplier": self.multiplier,
                "retryableStatusCodes": ["UNAVAILABLE"],
            }
        return json.dumps(config)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (0 for the first retry)."""
        ceiling = min(
            self.max_backoff.total_seconds(),
            self.initial_backoff.total_seconds() * self.multiplier**attempt,
        )
        return random.uniform(0, ceiling)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass(frozen=True)
class Settings:
    """Everything a client needs to reach a server. See `cachet_client.connect`."""

    target: str
    namespace: str = "default"
    tls: TLS | None = None
    credential: Credential | None = None
    timeout: timedelta | None = timedelta(seconds=5)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    options: Sequence[tuple[str, Any]] = ()

    def channel_options(self, *, retrying: bool) -> list[tuple[str, Any]]:
        """grpc channel arguments: the service config, the receive limit, the TLS name
        override, and the extras, which replace those of the same name (grpc would keep
        the first of two)."""
        policy = self.retry if retrying else NO_RETRY
        options: list[tuple[str, Any]] = [
            ("grpc.service_config", policy.service_config()),
            ("grpc.enable_retries", 1 if retrying else 0),
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_LENGTH),
        ]
        if self.tls is not None and self.tls.server_name:
            options.append(("grpc.ssl_target_name_override", self.tls.server_name))
        replaced = {name for name, _ in self.options}
        return [*(option for option in options if option[0] not in replaced), *self.options]

    def deadline(self, extra: float) -> float | None:
        """The timeout of one call: the default deadline plus the time it may block."""
        if self.timeout is None:
            return None
        return self.timeout.total_seconds() + extra


def duration(delta: timedelta | float | None) -> duration_pb2.Duration | None:
    """A protobuf Duration from a timedelta or seconds (None stays None)."""
    if delta is None:
        return None
    if not isinstance(delta, timedelta):
        delta = timedelta(seconds=delta)
    result = duration_pb2.Duration()
    result.FromTimedelta(delta)
    return result


def seconds(delta: timedelta | float | None) -> float:
    """Seconds of a timedelta or a number (None is 0)."""
    if delta is None:
        return 0.0
    return delta.total_seconds() if isinstance(delta, timedelta) else float(delta)


def timedelta_of(value: duration_pb2.Duration) -> timedelta:
    """A timedelta from a protobuf Duration."""
    return value.ToTimedelta()


@dataclass(frozen=True)
class Method(Generic[R]):
    """One unary RPC: its path and answer type, and whether repeating it is harmless."""

    path: str
    response: type[R]
    idempotent: bool


def rpc(service: str, name: str, response: type[R], *, idempotent: bool) -> Method[R]:
    """The Method `/{service}/{name}`."""
    return Method(f"/{service}/{name}", response, idempotent)


@dataclass(frozen=True)
class Call(Generic[R]):
    """Step: one attempt of a unary call (UNAVAILABLE retries happen inside gRPC)."""

    method: Method[R]
    request: Message
    retrying: bool
    blocks_for: float = 0.0


@dataclass(frozen=True)
class Sleep:
    """Step: wait this many seconds."""

    seconds: float


@dataclass(frozen=True)
class Invoke:
    """Step: run user code (awaited on the async client when it answers an awaitable)."""

    function: Callable[[], Any]


@dataclass(frozen=True)
class Parallel:
    """Step: run these steps-generators at once; answers their results in order, or
    raises the first error in order once every one has finished."""

    steps: Sequence[Generator[Step, Any, Any]]


Step = Call[Any] | Sleep | Invoke | Parallel
Steps = Generator[Step, Any, T]


class Async:
    """Marker: a service bound to the asyncio client."""


class Sync:
    """Marker: a service bound to the blocking client."""


F = TypeVar("F", Async, Sync)


class Runner(Protocol):
    """Performs steps; `run` answers a coroutine (async) or the result (sync)."""

    settings: Settings

    def run(self, steps: Steps[Any]) -> Any: ...


class Service(Generic[F]):
    """Base of the per-service surfaces: a runner and the client's serializer."""

    def __init__(self, runner: Runner, serializer: Serializer) -> None:
        self._runner = runner
        self._serializer = serializer
        self._settings = runner.settings

    def _call(
        self,
        method: Method[R],
        request: Message,
        *,
        idempotent: bool | None = None,
        blocks_for: float = 0.0,
    ) -> Steps[R]:
        """One call, retried after RESOURCE_EXHAUSTED + RetryInfo when idempotent."""
        retrying = method.idempotent if idempotent is None else idempotent
        policy = self._settings.retry
        budget = self._settings.deadline(blocks_for)
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                answer: R = yield Call(method, request, retrying, blocks_for)
                return answer
            except ResourceExhausted as exhausted:
                attempt += 1
                if not retrying or exhausted.retry_after is None or attempt >= policy.max_attempts:
                    raise
                # At least the server's delay; the jitter spreads the callers it told.
                wait = exhausted.retry_after.total_seconds() + policy.backoff(attempt - 1)
                if budget is not None and time.monotonic() - started + wait > budget:
                    raise  # the call's deadline would pass before the retry
                yield Sleep(wait)

    def _deduplicated(self, request: Message) -> bool:
        """Give `request` a fresh `request_id` when its message has one: the server
        answers a repeat of that id (within its window) without applying it again, so
        the call may be retried. Answers whether it did."""
        field = request.DESCRIPTOR.fields_by_name.get("request_id")
        if field is None:
            return False
        token = uuid.uuid4()
        # setattr: the field is looked up at run time, so the Message type does not name it.
        value = token.bytes if field.type == field.TYPE_BYTES else token.hex
        setattr(request, "request_id", value)  # noqa: B010
        return True

    def _encode(self, value: Any) -> bytes:
        return self._serializer.dumps(value)

    def _decode(self, data: bytes) -> Any:
        return self._serializer.loads(data)


class procedure(Generic[P, T]):
    """Binds a steps-generator method to its service's runner: on a `Service[Async]`
    it is a coroutine function, on a `Service[Sync]` a plain one."""

    def __init__(self, build: Callable[Concatenate[Any, P], Steps[T]]) -> None:
        self._build = build
        self.__doc__ = build.__doc__
        self.__name__ = build.__name__
        self.__wrapped__ = build

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> procedure[P, T]: ...
    @overload
    def __get__(
        self, obj: Service[Async], owner: type[Any]
    ) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, obj: Service[Sync], owner: type[Any]) -> Callable[P, T]: ...
    def __get__(self, obj: Service[Any] | None, owner: type[Any]) -> Any:
        if obj is None:
            return self
        build, runner = self._build, obj._runner

        def bound(*args: Any, **kwargs: Any) -> Any:
            return runner.run(build(obj, *args, **kwargs))

        bound.__doc__, bound.__name__, bound.__wrapped__ = build.__doc__, build.__name__, build  # type: ignore[attr-defined]
        bound.__qualname__ = f"{type(obj).__name__}.{build.__name__}"
        return bound


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class _Channels:
    """The two channels of a client: one retrying UNAVAILABLE (idempotent calls), one not."""

    def __init__(self, retrying: Any, plain: Any) -> None:
        self.retrying = retrying
        self.plain = plain
        self._unary: dict[tuple[bool, str], Any] = {}

    def unary(self, call: Call[Any]) -> Any:
        key = (call.retrying, call.method.path)
        if (callable_ := self._unary.get(key)) is None:
            channel = self.retrying if call.retrying else self.plain
            callable_ = channel.unary_unary(
                call.method.path,
                request_serializer=_serialize,
                response_deserializer=call.method.response.FromString,
            )
            self._unary[key] = callable_
        return callable_


def _first_error_or(results: list[Any]) -> list[Any]:
    """`results`, unless one is an exception: then the first of them is raised."""
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


def _fixed_metadata(settings: Settings) -> list[tuple[str, str]]:
    return [(NAMESPACE_METADATA, settings.namespace)]


class AsyncRunner:
    """Drives steps on grpc.aio channels."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Read now, so a missing PEM file fails connect(), not the first call.
        self._credentials = settings.tls.credentials() if settings.tls else None
        self._channels: _Channels | None = None

    @property
    def channels(self) -> _Channels:
        """The channels, made on first use: a grpc.aio channel belongs to the event loop
        running when it is made, so `connect()` may be called before any loop runs."""
        if self._channels is None:
            self._channels = _Channels(self._channel(retrying=True), self._channel(retrying=False))
        return self._channels

    def _channel(self, *, retrying: bool) -> aio.Channel:
        options = self.settings.channel_options(retrying=retrying)
        if self._credentials is None:
            return aio.insecure_channel(self.settings.target, options=options)
        return aio.secure_channel(self.settings.target, self._credentials, options=options)

    async def metadata(self) -> list[tuple[str, str]]:
        """Metadata of every call: the namespace and, when set, the bearer credential."""
        metadata = _fixed_metadata(self.settings)
        credential = self.settings.credential
        if credential is not None:
            token = credential if isinstance(credential, str) else credential()
            if inspect.isawaitable(token):
                token = await token
            metadata.append((AUTHORIZATION_METADATA, f"Bearer {token}"))
        return metadata

    async def unary(self, call: Call[R]) -> R:
        """One attempt of a unary call; failures as CachetError."""
        try:
            answer: R = await self.channels.unary(call)(
                call.request,
                metadata=await self.metadata(),
                timeout=self.settings.deadline(call.blocks_for),
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return answer

    async def run(self, steps: Steps[T]) -> T:
        """Perform every step of `steps`; answer what it returns."""
        try:
            step = next(steps)
            while True:
                try:
                    if isinstance(step, Call):
                        result: Any = await self.unary(step)
                    elif isinstance(step, Sleep):
                        await asyncio.sleep(step.seconds)
                        result = None
                    elif isinstance(step, Parallel):
                        done = await asyncio.gather(
                            *(self.run(each) for each in step.steps), return_exceptions=True
                        )
                        result = _first_error_or(done)
                    else:
                        result = step.function()
                        if inspect.isawaitable(result):
                            result = await result
                except BaseException as error:  # handed to the procedure, which may handle it
                    step = steps.throw(error)
                else:
                    step = steps.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            steps.close()

    async def close(self) -> None:
        """Close both channels (if they were ever made)."""
        if self._channels is not None:
            await self._channels.retrying.close(None)
            await self._channels.plain.close(None)
            self._channels = None


class SyncRunner:
    """Drives steps on grpc's blocking channels (no event loop; threads only for `Parallel`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.channels = _Channels(self._channel(retrying=True), self._channel(retrying=False))

    def _channel(self, *, retrying: bool) -> grpc.Channel:
        options = self.settings.channel_options(retrying=retrying)
        if self.settings.tls is None:
            return grpc.insecure_channel(self.settings.target, options=options)
        return grpc.secure_channel(
            self.settings.target, self.settings.tls.credentials(), options=options
        )

    def metadata(self) -> list[tuple[str, str]]:
        """Metadata of every call: the namespace and, when set, the bearer credential."""
        metadata = _fixed_metadata(self.settings)
        credential = self.settings.credential
        if credential is not None:
            token = credential if isinstance(credential, str) else credential()
            if not isinstance(token, str):
                raise TypeError("the sync client's credential must answer a str")
            metadata.append((AUTHORIZATION_METADATA, f"Bearer {token}"))
        return metadata

    def unary(self, call: Call[R]) -> R:
        """One attempt of a unary call; failures as CachetError."""
        try:
            answer: R = self.channels.unary(call)(
                call.request,
                metadata=self.metadata(),
                timeout=self.settings.deadline(call.blocks_for),
            )
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        return answer

    def run(self, steps: Steps[T]) -> T:
        """Perform every step of `steps`; answer what it returns."""
        try:
            step = next(steps)
            while True:
                try:
                    if isinstance(step, Call):
                        result: Any = self.unary(step)
                    elif isinstance(step, Sleep):
                        time.sleep(step.seconds)
                        result = None
                    elif isinstance(step, Parallel):
                        result = self._parallel(step)
                    else:
                        result = step.function()
                        if inspect.isawaitable(result):
                            close = getattr(result, "close", None)
                            if close is not None:
                                close()
                            raise TypeError("the sync client cannot run a coroutine function")
                except BaseException as error:
                    step = steps.throw(error)
                else:
                    step = steps.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            steps.close()

    def _parallel(self, step: Parallel) -> list[Any]:
        """The sync client's concurrency: one thread per steps-generator but the first,
        which runs on the calling thread (grpc's blocking calls release the GIL)."""
        first, *others = step.steps
        if not others:
            return [self.run(first)]
        with ThreadPoolExecutor(max_workers=len(others)) as pool:
            futures = [pool.submit(self.run, each) for each in others]
            done: list[Any] = []
            try:
                done.append(self.run(first))
            except Exception as error:
                done.append(error)
            for future in futures:
                try:
                    done.append(future.result())
                except Exception as error:
                    done.append(error)
        return _first_error_or(done)

    def close(self) -> None:
        """Close both channels."""
        self.channels.retrying.close()
        self.channels.plain.close()


__all__ = [
    "NO_RETRY",
    "TLS",
    "CachetError",
    "Credential",
    "RetryPolicy",
    "Settings",
    "SyncCredential",
]
