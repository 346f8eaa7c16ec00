"""Values read back from Redis: the client answers bytes (or str, with decode_responses)."""

from __future__ import annotations

from typing import Any


def as_str(value: Any) -> str:
    """A Redis reply's value as text: bytes decoded as UTF-8, anything else through str()."""
    return value.decode() if isinstance(value, bytes) else str(value)
