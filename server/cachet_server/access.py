"""Who may call what: roles, namespace grants, and the call table servicers declare.

A servicer never checks a role itself. Each servicer class declares, in `CALLS`, what
every one of its methods needs (a `CallSpec`); `call_table` gathers them into one table
keyed by the full gRPC method path, and the auth interceptor enforces it before the
handler runs, so a refused call never reaches Redis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor


class Role(StrEnum):
    """What a credential may do; roles do not imply each other."""

    READ = "read"  # reads, Subscribe, Consume, Inspect, peeks
    WRITE = "write"  # everything that changes a namespace's data
    ADMIN = "admin"  # namespace-scoped admin: the caller's own keys, stats, flush, Reset
    OPERATOR = "operator"  # whole-server admin: server info, slow log, clients, SetConfig
    RATELIMIT = "ratelimit"  # Envoy's ShouldRateLimit only


class Scope(StrEnum):
    """What a call addresses: one namespace (which must be granted) or the whole server."""

    NAMESPACE = "namespace"
    SERVER = "server"


class StreamKind(StrEnum):
    """Long-lived streams with a per-namespace quota of their own."""

    SUBSCRIBE = "subscribe"
    HOLD = "hold"
    WATCH = "watch"


@dataclass(frozen=True, slots=True)
class CallSpec:
    """What one RPC needs.

    `roles`: any one of them admits the call. `read_if`: for unary calls whose request can
    make them read-only (a rate-limit peek), a predicate on the request; when it holds, the
    `read` role admits the call too (`read_when` says when, for the docs). `audit`: the
    call writes an audit line.

    What the quota stage counts (servicers never check quotas themselves):
    `blocking_if`: a predicate on a unary request, true when the call may wait in Redis
    (a ListPop `wait`, a Read `block`); it then takes a blocking-call slot of its
    namespace as well. `stream`: the call is a long-lived stream of that kind and takes
    one of its namespace's slots for it while open.
    """

    roles: frozenset[Role]
    scope: Scope = Scope.NAMESPACE
    read_if: Callable[[Any], bool] | None = None
    read_when: str = ""
    audit: bool = False
    blocking_if: Callable[[Any], bool] | None = None
    stream: StreamKind | None = None

    def blocks(self, request: Any) -> bool:
        return self.blocking_if is not None and request is not None and self.blocking_if(request)

    def admits(self, roles: frozenset[Role], request: Any) -> bool:
        if roles & self.roles:
            return True
        if Role.READ not in roles or self.read_if is None or request is None:
            return False
        try:
            return bool(self.read_if(request))
        except Exception:
            # Not a request this predicate understands (say, a malformed body): a read it
            # cannot vouch for is no read.
            return False

    def required(self) -> str:
        names = sorted(role.value for role in self.roles)
        text = " or ".join(names)
        if self.read_if is not None:
            text += f"; read {self.read_when}"
        return text


def calls(
    roles: Role | Iterable[Role],
    *,
    scope: Scope = Scope.NAMESPACE,
    read_if: Callable[[Any], bool] | None = None,
    read_when: str = "",
    audit: bool = False,
) -> CallSpec:
    """A CallSpec; `roles` may be one role or several (any of them admits)."""
    chosen = frozenset([roles] if isinstance(roles, Role) else roles)
    return CallSpec(chosen, scope, read_if, read_when, audit)


def blocking(spec: CallSpec, when: Callable[[Any], bool] = lambda request: True) -> CallSpec:
    """`spec` for a call that may wait in Redis whenever `when(request)` holds."""
    return replace(spec, blocking_if=when)


def streaming(spec: CallSpec, kind: StreamKind) -> CallSpec:
    """`spec` for a long-lived stream counted against its namespace's `kind` quota."""
    return replace(spec, stream=kind)


def waits(field: str) -> Callable[[Any], bool]:
    """A `blocking_if` predicate: the request sets a positive Duration in `field`."""

    def requested(request: Any) -> bool:
        if not request.HasField(field):
            return False
        duration = getattr(request, field)
        return bool(duration.seconds > 0 or duration.nanos > 0)

    return requested


READ = calls(Role.READ)
WRITE = calls(Role.WRITE)
ADMIN = calls(Role.ADMIN, audit=True)
OPERATOR = calls(Role.OPERATOR, scope=Scope.SERVER, audit=True)


@dataclass(frozen=True, slots=True)
class NamespaceGrant:
    """One granted namespace: an exact name, or `prefix*` for every name that starts
    with prefix (`shop-*` grants `shop-eu` but not `shop`; `*` grants every namespace)."""

    pattern: str

    @property
    def is_prefix(self) -> bool:
        return self.pattern.endswith("*")

    def matches(self, namespace: str) -> bool:
        if self.is_prefix:
            return namespace.startswith(self.pattern[:-1])
        return namespace == self.pattern


@dataclass(frozen=True, slots=True)
class Grants:
    """The namespaces and roles one credential holds."""

    namespaces: tuple[NamespaceGrant, ...]
    roles: frozenset[Role]
    # The grants as an exact-name set and a prefix tuple, so a check is one set lookup
    # and one str.startswith, not a loop over the grants.
    _exact: frozenset[str] = field(init=False, repr=False, compare=False)
    _prefixes: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        exact = frozenset(grant.pattern for grant in self.namespaces if not grant.is_prefix)
        prefixes = tuple(grant.pattern[:-1] for grant in self.namespaces if grant.is_prefix)
        object.__setattr__(self, "_exact", exact)
        object.__setattr__(self, "_prefixes", prefixes)

    @classmethod
    def of(cls, namespaces: Iterable[str], roles: Iterable[Role | str]) -> Grants:
        return cls(
            tuple(NamespaceGrant(pattern) for pattern in namespaces),
            frozenset(Role(role) for role in roles),
        )

    def allows_namespace(self, namespace: str) -> bool:
        return namespace in self._exact or namespace.startswith(self._prefixes)

    @property
    def only_namespace(self) -> str | None:
        """The namespace a call may leave out of its metadata: the one exact grant of a
        credential that holds exactly one namespace."""
        if len(self.namespaces) == 1 and not self.namespaces[0].is_prefix:
            return self.namespaces[0].pattern
        return None

    @property
    def all_namespaces(self) -> bool:
        return any(grant.pattern == "*" for grant in self.namespaces)


EVERYTHING = Grants.of(["*"], list(Role))


def call_table(
    servicers: Iterable[tuple[ServiceDescriptor, Mapping[str, CallSpec]]],
) -> dict[str, CallSpec]:
    """Every RPC's CallSpec keyed by `/package.Service/Method`. A method a servicer does
    not declare is a startup error: no RPC is ever served without an access rule."""
    table: dict[str, CallSpec] = {}
    for service, specs in servicers:
        methods = {method.name for method in service.methods}
        missing = sorted(methods - specs.keys())
        unknown = sorted(specs.keys() - methods)
        if missing or unknown:
            raise RuntimeError(
                f"{service.full_name}: call table out of step with the proto "
                f"(undeclared: {missing}, not in the proto: {unknown})"
            )
        for name, spec in specs.items():
            table[f"/{service.full_name}/{name}"] = spec
    return table
