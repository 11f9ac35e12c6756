"""The three actions, their aliases, and the one output format every stage shares.

Output format (what the task head is taught to write, and what `parse_response` reads):

    Action: <ALLOW|ESCALATE|REFUSE>
    <final text, one or more lines>
    Rationale: <one line>

The tag comes first on purpose: the model commits to a decision before it writes anything
else, the tag sits at a fixed place (right after the prompt) so training can read the LM's
probability of each tag from one forward pass, and a runtime can stop generation at the tag.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Action(enum.IntEnum):
    """Class index order is the safety head's output order: 0 ALLOW, 1 ESCALATE, 2 REFUSE.

    An Action is an int (comparisons, indexing, `int()`, `%d` and JSON give 0 / 1 / 2), but it
    prints as its name: `str()`, `print()`, f-strings and `format()` give "ALLOW", not "0"
    (Python 3.11's IntEnum would print the number).
    """

    ALLOW = 0
    ESCALATE = 1
    REFUSE = 2

    def __str__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        return format(self.name, spec)


ACTIONS: tuple[str, ...] = tuple(a.name for a in Action)

_ALIASES: dict[str, Action] = {
    "allow": Action.ALLOW,
    "許可": Action.ALLOW,
    "escalate": Action.ESCALATE,
    "エスカレーション": Action.ESCALATE,
    "エスカレート": Action.ESCALATE,
    "refuse": Action.REFUSE,
    "拒否": Action.REFUSE,
}


def parse_label(value: object) -> Action:
    """Turn a label spelling (case-insensitive, Japanese aliases accepted) into an Action.

    Raises ValueError naming the accepted spellings, so callers can attach file/line context.
    """
    if isinstance(value, Action):
        return value
    if isinstance(value, str):
        found = _ALIASES.get(value.strip().lower())
        if found is not None:
            return found
    accepted = ", ".join(ACTIONS) + " (any case), 許可, エスカレーション, 拒否"
    raise ValueError(f"unknown label {value!r}; expected one of {accepted}")


ACTION_PREFIX = "Action: "
RATIONALE_PREFIX = "Rationale: "
_RESPONSE_RE = re.compile(
    r"\A\s*Action:\s*(?P<action>[A-Za-z]+)[ \t]*\n(?P<text>.*?)\n?[ \t]*Rationale:[ \t]*(?P<rationale>.+?)\s*\Z",
    re.S,
)


@dataclass(frozen=True)
class ParsedResponse:
    action: Action
    text: str
    rationale: str


def format_response(action: Action | str, text: str, rationale: str) -> str:
    action = parse_label(action)
    if "\n" in rationale.strip():
        raise ValueError("rationale must be one line")
    return f"{ACTION_PREFIX}{action.name}\n{text.strip()}\n{RATIONALE_PREFIX}{rationale.strip()}"


def parse_response(response: str) -> ParsedResponse | None:
    """Parse a response in the output format; None when it does not follow the format."""
    m = _RESPONSE_RE.match(response or "")
    if not m:
        return None
    try:
        action = parse_label(m.group("action"))
    except ValueError:
        return None
    if not m.group("action").isupper():
        return None
    return ParsedResponse(action, m.group("text").strip(), m.group("rationale").strip())
