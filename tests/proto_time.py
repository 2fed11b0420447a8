"""Protobuf durations and timestamps in the units the tests think in."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp


def ms(milliseconds: int) -> Duration:
    """A Duration of `milliseconds`."""
    duration = Duration()
    duration.FromMilliseconds(milliseconds)
    return duration


def us(stamp: Timestamp) -> int:
    """A Timestamp in whole microseconds since the epoch."""
    return stamp.seconds * 1_000_000 + stamp.nanos // 1000
