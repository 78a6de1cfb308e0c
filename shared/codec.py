"""JSON codec (orjson): strict on the way in, compact on the way out.

orjson rejects NaN, Infinity and numbers that overflow a double (``1e999``),
which is exactly the strictness the contracts need, so every service parses
with :func:`loads` and never with :mod:`json`.
"""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def dumps(obj: Any) -> bytes:
    """Serialize to compact JSON bytes (numpy scalars and arrays allowed)."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raises :class:`JSONDecodeError` on invalid or non-finite input."""
    return orjson.loads(data)
