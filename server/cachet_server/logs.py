"""Process logging: text lines (the default) or JSON lines (`CACHET_LOG_FORMAT=json`),
with the trace_id and span_id of the current span on every line written inside a call.

grpc's Python loggers go through the same handler; grpc core's own C++ lines go to
stderr by themselves (their volume follows GRPC_VERBOSITY). The audit logger
`cachet.audit` writes its JSON object alone on the line, in both formats, so audit
lines parse as JSON whatever the format of the rest.
"""

from __future__ import annotations

import logging
import sys

from opentelemetry import trace
from pythonjsonlogger.json import JsonFormatter

from .config import LogFormat

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(trace_suffix)s"
JSON_FIELDS = ["asctime", "levelname", "name", "message", "trace_id", "span_id"]
AUDIT_LOGGER = "cachet.audit"
ACCESS_LOGGER = "cachet.access"


class TraceContext(logging.Filter):
    """Puts the current span's ids on the record (None outside a traced call); for
    text lines, as a ` trace_id=... span_id=...` suffix."""

    def __init__(self, text: bool) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        ids: dict[str, str | None] = {"trace_id": None, "span_id": None}
        if context.is_valid:
            ids = {
                "trace_id": format(context.trace_id, "032x"),
                "span_id": format(context.span_id, "016x"),
            }
        record.__dict__.update(ids)
        if self.text:
            record.trace_suffix = (
                f" trace_id={ids['trace_id']} span_id={ids['span_id']}" if context.is_valid else ""
            )
        return True


def formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format is LogFormat.JSON:
        return JsonFormatter(
            JSON_FIELDS,
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    return logging.Formatter(TEXT_FORMAT)


def setup_logging(level: str, log_format: LogFormat) -> None:
    """Configure the root logger (replacing any handler) and the audit logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(TraceContext(text=log_format is LogFormat.TEXT))
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    audit_handler = logging.StreamHandler(sys.stderr)
    audit_handler.setFormatter(logging.Formatter("%(message)s"))
    audit = logging.getLogger(AUDIT_LOGGER)
    audit.handlers = [audit_handler]
    audit.propagate = False
    # Python's own warnings (a deprecation in a library) as log lines in the same format.
    logging.captureWarnings(True)
