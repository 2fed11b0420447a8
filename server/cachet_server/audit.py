"""The audit trail: one structured line per admin call, Reset, flush and denied call,
on the `cachet.audit` logger (JSON whatever the log format, so it can be shipped and
queried as is). It names the credential by id, never by its secret, and carries no
values.

Denied calls repeat: a client retrying with a revoked key, or one probing, can make
thousands a second, and a line each would make the audit log the cost of the attack
(and bury the other lines). So `Denials` writes the first of a kind at once and, for
REPEAT_WINDOW after it, only counts the same denial again (same credential, namespace,
method, outcome, reason and peer address); the count is written as one line
(`"repeated": N`) when the window closes, or when the server stops. Nothing goes
unrecorded, and each distinct denial still gets its own line at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

log = logging.getLogger("cachet.audit")

# How long repeats of a written denial are counted before their count is written.
REPEAT_WINDOW = 1.0
# Distinct denials whose repeats are counted at once. Past that, further new denials
# are counted together, as one line per window, so the table stays bounded whatever an
# attacker varies.
MAX_TRACKED = 4096

# What makes two denials the same: credential, namespace, method, outcome, reason, and
# the peer's address.
_Denial = tuple[str | None, str | None, str, str, str | None, str]


def record(
    *,
    method: str,
    outcome: grpc.StatusCode,
    credential: str | None,
    credential_kind: str | None,
    namespace: str | None,
    peer: str,
    keys: int | None = None,
    reason: str | None = None,
) -> None:
    """Write one audit line."""
    _write(_line(method, outcome, credential, credential_kind, namespace, peer, keys, reason))


@dataclass(slots=True)
class _Window:
    line: dict[str, Any]
    closing: asyncio.TimerHandle
    repeated: int = 0


@dataclass
class Denials:
    """The denied calls of one server, written with their repeats counted."""

    window: float = REPEAT_WINDOW
    max_tracked: int = MAX_TRACKED
    _open: dict[_Denial, _Window] = field(default_factory=dict)
    _untracked: int = 0
    _untracked_closing: asyncio.TimerHandle | None = None

    def record(
        self,
        *,
        method: str,
        outcome: grpc.StatusCode,
        credential: str | None,
        credential_kind: str | None,
        namespace: str | None,
        peer: str,
        reason: str | None,
    ) -> None:
        """Audit one denied call: a line now, or a count in the window of its kind."""
        denial = (credential, namespace, method, outcome.name, reason, _address(peer))
        opened = self._open.get(denial)
        if opened is not None:
            opened.repeated += 1
            return
        loop = asyncio.get_running_loop()
        if len(self._open) >= self.max_tracked:
            self._untracked += 1
            if self._untracked_closing is None:
                self._untracked_closing = loop.call_later(self.window, self._close_untracked)
            return
        line = _line(method, outcome, credential, credential_kind, namespace, peer, None, reason)
        _write(line)
        self._open[denial] = _Window(line, loop.call_later(self.window, self._close, denial))

    def close(self) -> None:
        """Write every count still open (the server is stopping)."""
        for denial in list(self._open):
            self._open[denial].closing.cancel()
            self._close(denial)
        if self._untracked_closing is not None:
            self._untracked_closing.cancel()
            self._close_untracked()

    def _close(self, denial: _Denial) -> None:
        opened = self._open.pop(denial)
        if opened.repeated:
            counted = {"time": _now(), "repeated": opened.repeated, "window_s": self.window}
            _write({**opened.line, **counted})

    def _close_untracked(self) -> None:
        self._untracked_closing = None
        repeated, self._untracked = self._untracked, 0
        _write(
            {
                "audit": True,
                "time": _now(),
                "outcome": "DENIED",
                "reason": "TOO_MANY_DISTINCT_DENIALS",
                "repeated": repeated,
                "window_s": self.window,
            }
        )


def _line(
    method: str,
    outcome: grpc.StatusCode,
    credential: str | None,
    credential_kind: str | None,
    namespace: str | None,
    peer: str,
    keys: int | None,
    reason: str | None,
) -> dict[str, Any]:
    return {
        "audit": True,
        "time": _now(),
        "credential": credential,
        "credential_kind": credential_kind,
        "peer": peer,
        "method": method,
        "namespace": namespace,
        "keys": keys,
        "outcome": outcome.name,
        "reason": reason,
    }


def _address(peer: str) -> str:
    """The peer without its port: a client that reconnects is still the same client."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0]
    return peer


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _write(line: dict[str, Any]) -> None:
    log.info("%s", json.dumps(line, separators=(",", ":")))
