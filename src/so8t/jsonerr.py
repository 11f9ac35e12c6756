"""What is wrong with a JSON text, in words, for every parser of user-supplied JSON.

`json.loads` raises `json.JSONDecodeError` for bad syntax and a plain `ValueError` for input it
parses but refuses (an integer of more than 4,300 digits, Python's limit against quadratic
conversion). Catching only the first let the second escape as a crash with no file or line;
every parser in so8t catches `ValueError` and describes it with `describe`.
"""

from __future__ import annotations

import json


def describe(exc: ValueError) -> str:
    """'<reason> (line L, column C)' for a syntax error; the reason alone otherwise."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    return str(exc).split(";")[0]
