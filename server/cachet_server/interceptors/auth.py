"""The outermost stage: credential -> identity -> namespace -> the call table's rule.

Runs before any other stage and before the handler, so a refused call never runs a
Redis command. It resolves the call's namespace once (from `cachet-namespace`, or the
credential's only grant) and makes the CallContext current for everything inside.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Mapping

import grpc

from .. import audit
from ..access import CallSpec, Scope
from ..backend.keys import NAMESPACE_PATTERN
from ..callcontext import CallContext, Identity, enter_call, leave_call
from ..config import Limits
from ..credentials import Authenticator
from ..errors import CachetError, InvalidArgument, PermissionDenied
from ._stage import Around, Context, StageInterceptor
from .errors import abort_with

NAMESPACE_METADATA = "cachet-namespace"
AUTHORIZATION_METADATA = "authorization"
DEFAULT_NAMESPACE = "default"
_HEALTH_PREFIX = "/grpc.health."
_REFLECTION_PREFIX = "/grpc.reflection."


class _CallMetadata:
    """A call's metadata, read once: text values by name, plus the two we resolve."""

    __slots__ = ("authorization", "namespaces", "text")

    def __init__(self, context: Context) -> None:
        self.text: dict[str, str] = {}
        self.authorization: list[str] = []
        self.namespaces: list[str] = []
        for name, value in context.invocation_metadata() or ():
            if not isinstance(value, str):
                continue
            if name == AUTHORIZATION_METADATA:
                self.authorization.append(value)
            elif name == NAMESPACE_METADATA:
                self.namespaces.append(value)
            self.text[name] = value


def resolve_namespace(values: list[str], identity: Identity, limits: Limits) -> str:
    """The call's namespace: the one `cachet-namespace` header, else the credential's only
    namespace, else `default`."""
    field = f"metadata:{NAMESPACE_METADATA}"
    if len(values) > 1:
        raise InvalidArgument.field(field, "must be given at most once")
    if not values:
        return identity.grants.only_namespace or DEFAULT_NAMESPACE
    namespace = values[0]
    if len(namespace.encode()) > limits.max_namespace_bytes:
        raise InvalidArgument.field(
            field, f"namespace is longer than {limits.max_namespace_bytes} bytes"
        )
    if not NAMESPACE_PATTERN.match(namespace):
        raise InvalidArgument.field(field, "namespace must be letters, digits, '_', '.' or '-'")
    return namespace


def _client_certificate(context: Context) -> bytes | None:
    pems = list(context.auth_context().get("x509_pem_cert", ()))
    return pems[0] if pems else None


class AuthInterceptor(StageInterceptor):
    def __init__(
        self,
        authenticator: Authenticator,
        table: Mapping[str, CallSpec],
        limits: Limits,
        *,
        protect_reflection: bool,
    ) -> None:
        super().__init__()
        self.authenticator = authenticator
        self.table = table
        self.limits = limits
        self.protect_reflection = protect_reflection and authenticator.enabled

    def around(self, method: str, *, response_streaming: bool) -> Around | None:
        if method.startswith(_HEALTH_PREFIX):
            return None
        if method.startswith(_REFLECTION_PREFIX):
            return self._authenticated_only(method) if self.protect_reflection else None
        spec = self.table.get(method)
        if spec is None:
            return self._refuse(method)
        return self._admit(method, spec)

    def _identify(self, metadata: _CallMetadata, context: Context) -> Identity:
        certificate = (
            _client_certificate(context)
            if not metadata.authorization and self.authenticator.maps_certificates
            else None
        )
        return self.authenticator.identify(metadata.authorization, certificate, time.time())

    def _admit(self, method: str, spec: CallSpec) -> Around:
        @contextlib.asynccontextmanager
        async def admit(request: object, context: Context) -> AsyncIterator[None]:
            metadata = _CallMetadata(context)
            identity: Identity | None = None
            namespace: str | None = None
            try:
                identity = self._identify(metadata, context)
                namespace = resolve_namespace(metadata.namespaces, identity, self.limits)
                _authorize(method, spec, identity, namespace, request)
            except CachetError as error:
                if error.code in (
                    grpc.StatusCode.UNAUTHENTICATED,
                    grpc.StatusCode.PERMISSION_DENIED,
                ):
                    audit.record(
                        method=method,
                        outcome=error.code,
                        credential=identity.id if identity else None,
                        credential_kind=identity.kind if identity else None,
                        namespace=namespace,
                        peer=context.peer(),
                        reason=error.reason,
                    )
                await abort_with(context, error)
                raise AssertionError("abort returned") from error  # pragma: no cover
            call = CallContext(method, spec, namespace, identity, metadata.text)
            token = enter_call(call)
            try:
                yield
            except BaseException:
                if spec.audit:
                    _audit_end(call, context, call.status or grpc.StatusCode.CANCELLED)
                raise
            else:
                if spec.audit:
                    _audit_end(call, context, grpc.StatusCode.OK)
            finally:
                leave_call(token)

        return admit

    def _authenticated_only(self, method: str) -> Around:
        @contextlib.asynccontextmanager
        async def authenticated(request: object, context: Context) -> AsyncIterator[None]:
            try:
                self._identify(_CallMetadata(context), context)
            except CachetError as error:
                audit.record(
                    method=method,
                    outcome=error.code,
                    credential=None,
                    credential_kind=None,
                    namespace=None,
                    peer=context.peer(),
                    reason=error.reason,
                )
                await abort_with(context, error)
            yield

        return authenticated

    def _refuse(self, method: str) -> Around:
        @contextlib.asynccontextmanager
        async def refuse(request: object, context: Context) -> AsyncIterator[None]:
            await abort_with(
                context,
                PermissionDenied(f"{method} has no access rule", reason="METHOD_NOT_ALLOWED"),
            )
            yield

        return refuse


def _authorize(
    method: str, spec: CallSpec, identity: Identity, namespace: str, request: object
) -> None:
    grants = identity.grants
    if spec.scope is Scope.NAMESPACE and not grants.allows_namespace(namespace):
        raise PermissionDenied(
            f"credential {identity.id!r} holds no grant for namespace {namespace!r}",
            reason="NAMESPACE_NOT_GRANTED",
        )
    if not spec.admits(grants.roles, request):
        raise PermissionDenied(
            f"{method.rsplit('/', 1)[-1]} needs the {spec.required()} role; credential "
            f"{identity.id!r} holds {', '.join(sorted(grants.roles)) or 'none'}",
            reason="ROLE_NOT_GRANTED",
        )


def _audit_end(call: CallContext, context: Context, outcome: grpc.StatusCode) -> None:
    audit.record(
        method=call.method,
        outcome=outcome,
        credential=call.identity.id,
        credential_kind=call.identity.kind,
        namespace=call.namespace if call.spec.scope is Scope.NAMESPACE else None,
        peer=context.peer(),
        keys=call.keys,
        reason=call.reason,
    )
