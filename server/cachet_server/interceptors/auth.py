"""The outermost stage: credential -> identity -> namespace -> the call table's rule.

Runs before any other stage and before the handler, so a refused call never runs a
Redis command. It resolves the call's namespace once (from `cachet-namespace`, or the
credential's only grant) and makes the CallContext current for everything inside.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable, Mapping
from typing import Any

import grpc

from .. import audit
from ..access import CallSpec, Scope
from ..backend.keys import NAMESPACE_PATTERN
from ..callcontext import CallContext, Identity, enter_call
from ..config import Limits
from ..credentials import ANONYMOUS, Authenticator
from ..errors import CachetError, InvalidArgument, PermissionDenied
from ._stage import Context, arrived_metadata

NAMESPACE_METADATA = "cachet-namespace"
AUTHORIZATION_METADATA = "authorization"
DEFAULT_NAMESPACE = "default"
_HEALTH_PREFIX = "/grpc.health."
_REFLECTION_PREFIX = "/grpc.reflection."
_NAMESPACE_FIELD = f"metadata:{NAMESPACE_METADATA}"


def _read_metadata(metadata: Iterable[tuple[str, Any]]) -> tuple[list[str], list[str]]:
    """The call's `authorization` and `cachet-namespace` values, read once."""
    authorization: list[str] = []
    namespaces: list[str] = []
    for name, value in metadata:
        if name == NAMESPACE_METADATA:
            if isinstance(value, str):
                namespaces.append(value)
        elif name == AUTHORIZATION_METADATA and isinstance(value, str):
            authorization.append(value)
    return authorization, namespaces


@functools.lru_cache(maxsize=4096)
def _namespace_problem(namespace: str, max_bytes: int) -> str | None:
    # Memoized: a server sees the same few namespaces on every call; bounded, so a
    # caller cycling through names only evicts.
    if len(namespace.encode()) > max_bytes:
        return f"namespace is longer than {max_bytes} bytes"
    if not NAMESPACE_PATTERN.match(namespace):
        return "namespace must be letters, digits, '_', '.' or '-'"
    return None


def resolve_namespace(values: list[str], identity: Identity, limits: Limits) -> str:
    """The call's namespace: the one `cachet-namespace` header, else the credential's only
    namespace, else `default`."""
    if len(values) > 1:
        raise InvalidArgument.field(_NAMESPACE_FIELD, "must be given at most once")
    if not values:
        return identity.grants.only_namespace or DEFAULT_NAMESPACE
    namespace = values[0]
    problem = _namespace_problem(namespace, limits.max_namespace_bytes)
    if problem is not None:
        raise InvalidArgument.field(_NAMESPACE_FIELD, problem)
    return namespace


def _client_certificate(context: Context) -> bytes | None:
    pems = list(context.auth_context().get("x509_pem_cert", ()))
    return pems[0] if pems else None


class AuthStage:
    def __init__(
        self,
        authenticator: Authenticator,
        table: Mapping[str, CallSpec],
        limits: Limits,
        *,
        protect_reflection: bool,
        denials: audit.Denials,
    ) -> None:
        self.authenticator = authenticator
        self.denials = denials
        self.table = table
        self.limits = limits
        self.enabled = authenticator.enabled
        self.protect_reflection = protect_reflection and self.enabled

    def stage_for(
        self, method: str, *, response_streaming: bool
    ) -> _Admit | _AuthenticatedOnly | _Refuse | None:
        if method.startswith(_HEALTH_PREFIX):
            return None
        if method.startswith(_REFLECTION_PREFIX):
            return _AuthenticatedOnly(self, method) if self.protect_reflection else None
        spec = self.table.get(method)
        if spec is None:
            return _Refuse(method)
        return _Admit(self, method, spec)

    def identify(self, authorization: list[str], context: Context) -> Identity:
        if not self.enabled:
            return ANONYMOUS
        certificate = (
            _client_certificate(context)
            if not authorization and self.authenticator.maps_certificates
            else None
        )
        return self.authenticator.identify(authorization, certificate, time.time())


class _Admit:
    """A method of the call table: identify, resolve the namespace, apply the rule, and
    make the CallContext current for everything inside. `enter` answers the call."""

    __slots__ = ("auth", "enabled", "limits", "method", "spec")

    def __init__(self, auth: AuthStage, method: str, spec: CallSpec) -> None:
        self.auth = auth
        self.method = method
        self.spec = spec
        self.enabled = auth.enabled
        self.limits = auth.limits

    def enter(self, request: Any, context: Context) -> CallContext:
        metadata = arrived_metadata() or context.invocation_metadata() or ()
        authorization, namespaces = _read_metadata(metadata)
        identity: Identity | None = None
        namespace: str | None = None
        try:
            identity = self.auth.identify(authorization, context) if self.enabled else ANONYMOUS
            namespace = resolve_namespace(namespaces, identity, self.limits)
            if self.enabled:
                # Auth off: the anonymous caller holds every grant, nothing to check.
                _authorize(self.method, self.spec, identity, namespace, request)
        except CachetError as error:
            if error.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                self.auth.denials.record(
                    method=self.method,
                    outcome=error.code,
                    credential=identity.id if identity else None,
                    credential_kind=identity.kind if identity else None,
                    namespace=namespace,
                    peer=context.peer(),
                    reason=error.reason,
                )
            raise
        call = CallContext(self.method, self.spec, namespace, identity, context, metadata)
        enter_call(call)
        return call

    def leave(self, call: CallContext, error: BaseException | None) -> None:
        if self.spec.audit:
            _audit_end(
                call,
                grpc.StatusCode.OK if error is None else call.status or grpc.StatusCode.CANCELLED,
            )


class _AuthenticatedOnly:
    """Reflection while auth is on: any valid credential, no namespace."""

    __slots__ = ("auth", "method")

    def __init__(self, auth: AuthStage, method: str) -> None:
        self.auth = auth
        self.method = method

    def enter(self, request: Any, context: Context) -> None:
        metadata = arrived_metadata() or context.invocation_metadata() or ()
        authorization, _ = _read_metadata(metadata)
        try:
            self.auth.identify(authorization, context)
        except CachetError as error:
            self.auth.denials.record(
                method=self.method,
                outcome=error.code,
                credential=None,
                credential_kind=None,
                namespace=None,
                peer=context.peer(),
                reason=error.reason,
            )
            raise

    def leave(self, entered: None, error: BaseException | None) -> None:
        return None


class _Refuse:
    """A method without an access rule: never served."""

    __slots__ = ("method",)

    def __init__(self, method: str) -> None:
        self.method = method

    def enter(self, request: Any, context: Context) -> None:
        raise PermissionDenied(f"{self.method} has no access rule", reason="METHOD_NOT_ALLOWED")

    def leave(self, entered: None, error: BaseException | None) -> None:
        return None


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


def _audit_end(call: CallContext, outcome: grpc.StatusCode) -> None:
    audit.record(
        method=call.method,
        outcome=outcome,
        credential=call.identity.id,
        credential_kind=call.identity.kind,
        namespace=call.namespace if call.spec.scope is Scope.NAMESPACE else None,
        peer=call.context.peer(),
        keys=call.keys,
        reason=call.reason,
    )
