"""The audit trail: one structured line per admin call, Reset, flush and denied call,
on the `cachet.audit` logger (JSON whatever the log format, so it can be shipped and
queried as is). It names the credential by id, never by its secret, and carries no
values."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import grpc

log = logging.getLogger("cachet.audit")


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
    line = {
        "audit": True,
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "credential": credential,
        "credential_kind": credential_kind,
        "peer": peer,
        "method": method,
        "namespace": namespace,
        "keys": keys,
        "outcome": outcome.name,
        "reason": reason,
    }
    log.info("%s", json.dumps(line, separators=(",", ":")))
