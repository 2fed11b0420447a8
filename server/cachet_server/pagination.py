"""Page tokens for every list-style call: one format, one set of checks.

A token is base64url JSON holding a position and a digest of everything else in
the request (and the namespace), so a token only continues the listing it came
from. Tokens are stateless, so any cachet replica can continue any listing.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from google.protobuf.message import Message

from .errors import InvalidArgument

_TOKEN_VERSION = 1


class PageTokens:
    """Opaque page tokens: base64url JSON holding a position and a digest of everything
    else in the request (and the namespace), so a token only continues the listing it
    came from. Stateless, so any cachet replica can continue any listing."""

    @staticmethod
    def binding(method: str, namespace: str, request: Message, *free: str) -> str:
        """Digest of the request minus its paging fields and the `free` ones."""
        copy = type(request)()
        copy.CopyFrom(request)
        for name in ("page_token", "page_size", *free):
            copy.ClearField(name)
        body = copy.SerializeToString(deterministic=True)
        digest = hashlib.sha256(f"{method}\0{namespace}\0".encode() + body)
        return digest.hexdigest()[:24]

    @staticmethod
    def encode(binding: str, position: Mapping[str, Any]) -> str:
        body = json.dumps({"v": _TOKEN_VERSION, "b": binding, "p": position}, separators=(",", ":"))
        return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    @staticmethod
    def decode(token: str, binding: str) -> dict[str, Any] | None:
        """The position in a token (None for an empty token), or INVALID_ARGUMENT."""
        if not token:
            return None
        try:
            padded = token + "=" * (-len(token) % 4)
            data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        except ValueError:  # bad base64, non-ASCII input, bytes that are not JSON
            data = None
        if (
            not isinstance(data, dict)
            or data.get("v") != _TOKEN_VERSION
            or not isinstance(data.get("p"), dict)
        ):
            raise malformed_token()
        if data.get("b") != binding:
            raise InvalidArgument.field(
                "page_token",
                "belongs to a different listing: keep every other field and the namespace "
                "as in the call that returned it, or start over without a token",
            )
        position: dict[str, Any] = data["p"]
        return position


def malformed_token() -> InvalidArgument:
    return InvalidArgument.field(
        "page_token", "is not a page token of this call: pass next_page_token back unchanged"
    )
