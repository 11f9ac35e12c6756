"""The record: one training or evaluation example, and its validation.

Validation never changes or drops a row silently: every problem becomes a `Problem` with the
file, the line and the field, and loading fails if there is any.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from so8t.labels import Action, parse_label, parse_response

Role = Literal["system", "user", "assistant"]
Difficulty = Literal["easy", "medium", "hard"]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str


class Record(BaseModel):
    """One example. `prompt` is a string or a chat (list of messages ending with a user turn)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str | list[Message]
    label: Action | None = None
    response: str | None = None
    rationale: str | None = None
    difficulty: Difficulty | None = None
    lang: str | None = None
    category: str | None = None
    source: str | None = None
    # The model whose answer gave the label (`so8t distill`), e.g. "qwen2.5:32b"; None: written by hand or imported.
    teacher: str | None = None
    id: str | None = None
    # Free-form extras (importer provenance, contrast-pair ids): kept, never interpreted by the schema.
    meta: dict[str, Any] | None = None

    @field_validator("label", mode="before")
    @classmethod
    def _label(cls, v: object) -> Action | None:
        return None if v is None else parse_label(v)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: str | list[Message]) -> str | list[Message]:
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("prompt is empty")
            return v
        if not v:
            raise ValueError("prompt is an empty message list")
        if v[-1].role != "user":
            raise ValueError("a chat prompt must end with a user message")
        if not any(m.content.strip() for m in v):
            raise ValueError("every message in the prompt is empty")
        return v

    @field_validator("difficulty", mode="before")
    @classmethod
    def _difficulty(cls, v: object) -> object:
        return v.strip().lower() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _response_matches_label(self) -> Record:
        if self.response is None:
            return self
        parsed = parse_response(self.response)
        if parsed is None:
            raise ValueError(
                "response: not in the output format 'Action: <ALLOW|ESCALATE|REFUSE>\\n<text>\\nRationale: <one line>'"
            )
        if self.label is not None and parsed.action != self.label:
            raise ValueError(f"response: its tag {parsed.action.name} differs from label {self.label.name}")
        return self

    def required_label(self) -> Action:
        """The label of a record that must have one (training and evaluation data, which
        `check_row` loads with require_label); ValueError naming the record when it has none."""
        if self.label is None:
            raise ValueError(
                f"record {self.id or self.prompt_text()[:60]!r} has no label; this step needs labelled data"
            )
        return self.label

    def messages(self) -> list[dict[str, str]]:
        """The prompt as chat messages (a string prompt becomes one user turn)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return [{"role": m.role, "content": m.content} for m in self.prompt]

    def prompt_text(self) -> str:
        """All prompt turns joined: what dedup and keyword baselines look at."""
        return self.prompt if isinstance(self.prompt, str) else "\n".join(m.content for m in self.prompt)

    def to_json(self) -> dict[str, Any]:
        out = self.model_dump(mode="json", exclude_none=True)
        if self.label is not None:
            out["label"] = self.label.name
        return out


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class DataError(ValueError):
    """Raised with every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:50])
        more = f"\n  ... and {len(problems) - 50} more" if len(problems) > 50 else ""
        super().__init__(f"{len(problems)} problem(s) in the data:\n{shown}{more}")


@dataclass
class Checked:
    records: list[Record] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # the file line of each record, in step with `records`


_KNOWN_FIELDS = ", ".join(Record.model_fields)


def check_row(obj: object, file: str, line: int, require_label: bool = True) -> tuple[Record | None, list[Problem]]:
    """Validate one decoded JSON value; returns the record or the problems (never both)."""
    if not isinstance(obj, dict):
        return None, [Problem(file, line, "", f"expected a JSON object, got {type(obj).__name__}")]
    try:
        rec = Record.model_validate(obj)
    except ValidationError as exc:
        return None, [_problem_from(err, file, line) for err in exc.errors()]
    if require_label and rec.label is None:
        return None, [Problem(file, line, "label", "missing (needed for training and evaluation)")]
    return rec, []


def _problem_from(err: Mapping[str, Any], file: str, line: int) -> Problem:
    loc = [str(p) for p in err.get("loc", ())]
    # pydantic reports union branches as extra loc parts ('str', 'list[Message]'); keep the field path.
    path = ".".join(
        p for p in loc if p not in ("str", "list[Message]", "function-after[_prompt(), union[str,list[Message]]]")
    )
    msg = err.get("msg", "invalid")
    if err.get("type") == "extra_forbidden":
        msg = f"unknown field (known fields: {_KNOWN_FIELDS}; put extras under 'meta')"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if msg.startswith("response: "):
        path, msg = "response", msg[len("response: ") :]
    return Problem(file, line, path, msg)
