"""How values become bytes: one serializer per client (`connect(..., serializer=...)`).

`BYTES` (the default: values are bytes, passed through), `STR` (UTF-8) and `JSON` are
built in. `msgpack()` needs the `msgpack` extra (`pip install cachet-client[msgpack]`);
`PICKLE` is opt-in because unpickling runs code: use it only when every writer of the
namespace is trusted.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Protocol


class Serializer(Protocol):
    """Turns values into bytes and back."""

    def dumps(self, value: Any) -> bytes:
        """The bytes stored for `value`."""
        ...

    def loads(self, data: bytes) -> Any:
        """The value stored as `data`."""
        ...


class BytesSerializer:
    """Values are bytes (bytearray and memoryview are accepted), stored as they are."""

    def dumps(self, value: Any) -> bytes:
        """`value` itself; anything but bytes-like is refused."""
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(
                f"the bytes serializer stores bytes, not {type(value).__name__}; "
                "choose serializer=STR, JSON, MSGPACK or PICKLE"
            )
        return bytes(value)

    def loads(self, data: bytes) -> Any:
        """`data` itself."""
        return data


class StrSerializer:
    """Values are str, stored as UTF-8."""

    def dumps(self, value: Any) -> bytes:
        """UTF-8 of `value` (a str)."""
        if not isinstance(value, str):
            raise TypeError(f"the str serializer stores str, not {type(value).__name__}")
        return value.encode()

    def loads(self, data: bytes) -> Any:
        """The str encoded in `data`."""
        return data.decode()


class JsonSerializer:
    """Values are anything `json.dumps` accepts, stored as compact UTF-8 JSON."""

    def dumps(self, value: Any) -> bytes:
        """Compact JSON of `value`."""
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(self, data: bytes) -> Any:
        """The value whose JSON is `data`."""
        return json.loads(data)


class MsgpackSerializer:
    """MessagePack (the `msgpack` extra)."""

    def __init__(self) -> None:
        try:
            import msgpack  # type: ignore[import-untyped,import-not-found,unused-ignore]
        except ImportError as missing:  # pragma: no cover - depends on the extra
            raise ImportError(
                "the msgpack serializer needs `pip install cachet-client[msgpack]`"
            ) from missing
        self._msgpack: Any = msgpack

    def dumps(self, value: Any) -> bytes:
        """MessagePack of `value`."""
        data: bytes = self._msgpack.packb(value, use_bin_type=True)
        return data

    def loads(self, data: bytes) -> Any:
        """The value packed in `data`."""
        return self._msgpack.unpackb(data, raw=False)


class PickleSerializer:
    """pickle: any Python object. Loading runs code, so only for trusted namespaces."""

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        self._protocol = protocol

    def dumps(self, value: Any) -> bytes:
        """The pickle of `value`."""
        return pickle.dumps(value, protocol=self._protocol)

    def loads(self, data: bytes) -> Any:
        """The object pickled in `data` (runs code: trusted writers only)."""
        return pickle.loads(data)


BYTES = BytesSerializer()
STR = StrSerializer()
JSON = JsonSerializer()
PICKLE = PickleSerializer()


def msgpack() -> MsgpackSerializer:
    """The MessagePack serializer (needs the `msgpack` extra)."""
    return MsgpackSerializer()
