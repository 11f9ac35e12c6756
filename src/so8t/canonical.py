"""Canonical JSON: the one text form (and hash) of a request, a conversation or a tool call.

The gate hashes its input with it, the approval queue binds an approval to it, and the audit
log records it, so the same request has the same hash everywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any


def _check_json(obj: Any, path: str) -> None:
    # json.dumps alone is too lenient: it turns int keys into strings (two different dicts, one
    # hash) and writes NaN; walking first also lets the error say where the bad value is.
    if obj is None or isinstance(obj, (str, bool, int)):
        return
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"not canonical JSON: {obj!r} at {path} (NaN and infinity are not allowed)")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ValueError(f"not canonical JSON: key {k!r} at {path} is {type(k).__name__}, not str")
            _check_json(v, f"{path}.{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_json(v, f"{path}[{i}]")
        return
    raise ValueError(f"not canonical JSON: {type(obj).__name__} at {path} ({obj!r:.80})")


def canonical_json(obj: Any) -> str:
    """The one text form of a JSON value: sorted keys, no spaces, UTF-8 characters kept as is."""
    _check_json(obj, "$")
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: cannot be stored or hashed
        raise ValueError(f"not canonical JSON: {exc}") from None
    return text


def hash_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def request_hash(obj: Any) -> str:
    """sha256 hex of canonical_json(obj): the same request in any key order has the same hash."""
    return hash_text(canonical_json(obj))
