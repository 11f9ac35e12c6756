"""A written policy: an organisation's rules for its agent, in one YAML file (docs/policy.md).

    name: Example Corp office agent
    lang: en                              # optional: the default language of the precedents
    description: ...                      # optional: said to the teacher before the rules
    rules:
      - id: PAY-LIMIT                     # letters, digits, '.', '_', '-'; unique
        action: ESCALATE                  # ALLOW / ESCALATE / REFUSE (or 許可 / エスカレーション / 拒否)
        scope: Payments, refunds or transfers above 100,000 JPY.
        precedents:                       # at least one
          - Pay the Acme invoice of 2.4 million yen today.
          - {prompt: 請求書の振込を実行して, lang: ja, rationale: optional, one line}

Guarantees:

- `load_policy` returns a valid `Policy` or raises `PolicyError` listing every problem, each
  with the file, the line and the field (`rules[2].action`): invalid YAML, a missing or empty
  field, an unknown action or key (with the closest valid one), a duplicate rule id or YAML key
  (with the line of the first), the same precedent prompt twice.
- `render_policy` is the text a teacher gets as its system prompt: every rule with its id,
  action, scope and precedents, the rule for overlaps (the strictest action wins), and the
  request to cite the deciding rule's id in the rationale.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from so8t.canonical import hash_text
from so8t.data.dedup import normalize_text
from so8t.data.schema import DataError, Problem
from so8t.labels import ACTIONS, Action, parse_label

POLICY_KEYS = ("name", "lang", "description", "rules")
RULE_KEYS = ("id", "action", "scope", "precedents")
PRECEDENT_KEYS = ("prompt", "lang", "rationale")
RULE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LANG = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*")


@dataclass(frozen=True)
class Precedent:
    prompt: str
    lang: str | None
    rationale: str | None
    line: int


@dataclass(frozen=True)
class Rule:
    id: str
    action: Action
    scope: str
    precedents: tuple[Precedent, ...]
    line: int


@dataclass(frozen=True)
class Policy:
    path: str
    name: str
    rules: tuple[Rule, ...]
    lang: str | None = None
    description: str | None = None

    @property
    def policy_id(self) -> str:
        """A hash of the text the teacher sees: answers asked under another text are not reused."""
        return hash_text(render_policy(self))[:16]


class PolicyError(DataError):
    """Every problem of one policy file (file, line, field)."""

    def __init__(self, problems: list[Problem]):
        super().__init__(problems)
        shown = "\n".join(f"  {p}" for p in problems)
        self.args = (f"{len(problems)} problem(s) in the policy:\n{shown}",)


# ---------------------------------------------------------------- YAML with line numbers


class _Map(dict):
    line: int = 0
    key_lines: dict[Any, int]
    repeated: list[tuple[Any, int, int]]  # (key, line, line of the first): plain PyYAML keeps the last silently
    repeated_first: dict[Any, int]


class _Seq(list):
    line: int = 0
    item_lines: list[int]


class _Loader(yaml.SafeLoader):
    """SafeLoader whose mappings and lists remember their lines, and whose mappings note repeated keys."""


def _construct_map(loader: _Loader, node: yaml.MappingNode):
    data = _Map()
    data.line, data.key_lines, data.repeated, data.repeated_first = node.start_mark.line + 1, {}, [], {}
    yield data
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str | int | float | bool) and key is not None:
            key = str(key)
        if key in data.key_lines:  # the last value is the one kept: its line is the one to name
            data.repeated.append((key, line, data.repeated_first.setdefault(key, data.key_lines[key])))
        data.key_lines[key] = line
        data[key] = loader.construct_object(value_node, deep=True)


def _construct_seq(loader: _Loader, node: yaml.SequenceNode):
    data = _Seq()
    data.line, data.item_lines = node.start_mark.line + 1, [n.start_mark.line + 1 for n in node.value]
    yield data
    data.extend(loader.construct_object(n, deep=True) for n in node.value)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def _parse_yaml(text: str, file: str) -> tuple[Any, list[Problem]]:
    loader = _Loader(text)
    try:
        return loader.get_single_data(), []
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return None, [Problem(file, mark.line + 1 if mark else 0, "", f"invalid YAML: {getattr(exc, 'problem', exc)}")]
    finally:
        loader.dispose()


# ---------------------------------------------------------------- checking


class _Checker:
    """Collects problems while reading one file's mappings."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []

    def add(self, line: int, field: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, field, message))

    def keys(self, obj: _Map, known: tuple[str, ...], where: str) -> None:
        """Unknown keys (with the closest known one) and repeated ones."""
        for key, line, first in obj.repeated:
            self.add(
                line, _join(where, str(key)), f"repeated key (first on line {first}); YAML would keep only the last one"
            )
        for key, line in obj.key_lines.items():
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(known)}"
                self.add(line, _join(where, str(key)), f"unknown key ({hint})")

    def text(self, obj: _Map, key: str, where: str, required: bool = True, one_line: bool = False) -> str | None:
        """A string field, whitespace-trimmed; a problem when it is missing (if required), not a string, or empty."""
        field = _join(where, key)
        if key not in obj:
            if required:
                self.add(obj.line, field, "missing")
            return None
        value, line = obj[key], obj.key_lines[key]
        if not isinstance(value, str) or not value.strip():
            self.add(
                line, field, "empty" if value is None or value == "" else f"expected text, got {_kind(value)} {value!r}"
            )
            return None
        value = value.strip()
        return " ".join(value.split()) if one_line else value


def _kind(value: Any) -> str:
    return "a mapping" if isinstance(value, dict) else "a list" if isinstance(value, list) else type(value).__name__


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _action(c: _Checker, rule: _Map, where: str) -> Action | None:
    field = _join(where, "action")
    if "action" not in rule:
        c.add(rule.line, field, f"missing (one of {', '.join(ACTIONS)})")
        return None
    value, line = rule["action"], rule.key_lines["action"]
    try:
        return parse_label(value)
    except ValueError:
        close = difflib.get_close_matches(str(value).upper(), ACTIONS, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        c.add(line, field, f"unknown action {value!r}; expected one of {', '.join(ACTIONS)}{hint}")
        return None


def _lang(c: _Checker, obj: _Map, where: str) -> str | None:
    lang = c.text(obj, "lang", where, required=False)
    if lang is not None and not LANG.fullmatch(lang):
        c.add(obj.key_lines["lang"], _join(where, "lang"), f"{lang!r} is not a language code such as 'en' or 'ja'")
        return None
    return lang


def _precedents(c: _Checker, rule: _Map, where: str, seen: dict[str, tuple[str, int]]) -> list[Precedent]:
    field = _join(where, "precedents")
    items = rule.get("precedents")
    if "precedents" not in rule or items is None or items == []:
        c.add(
            rule.key_lines.get("precedents", rule.line),
            field,
            "missing: give at least one example prompt the rule decides",
        )
        return []
    if not isinstance(items, _Seq):
        c.add(rule.key_lines["precedents"], field, f"expected a list of prompts, got {_kind(items)}")
        return []
    out = []
    for i, (item, line) in enumerate(zip(items, items.item_lines)):
        here = f"{field}[{i}]"
        if isinstance(item, str):
            item_map = _Map(prompt=item)
            item_map.line, item_map.key_lines, item_map.repeated = line, {"prompt": line}, []
            item = item_map
        if not isinstance(item, _Map):
            c.add(line, here, f"expected a prompt or {{prompt: ..., lang: ...}}, got {_kind(item)}")
            continue
        c.keys(item, PRECEDENT_KEYS, here)
        prompt = c.text(item, "prompt", here)
        rationale = c.text(item, "rationale", here, required=False, one_line=True)
        lang = _lang(c, item, here)
        if prompt is None:
            continue
        key = normalize_text(prompt)
        if key in seen:
            first_field, first_line = seen[key]
            c.add(
                line,
                _join(here, "prompt"),
                f"the same prompt as {first_field} (line {first_line}); a precedent belongs to one rule",
            )
            continue
        seen[key] = (here, line)
        out.append(Precedent(prompt, lang, rationale, item.line))
    return out


def _rule(
    c: _Checker, obj: Any, line: int, where: str, ids: dict[str, int], seen: dict[str, tuple[str, int]]
) -> Rule | None:
    if not isinstance(obj, _Map):
        c.add(line, where, f"expected a rule (id, action, scope, precedents), got {_kind(obj)}")
        return None
    c.keys(obj, RULE_KEYS, where)
    rule_id = c.text(obj, "id", where)
    if rule_id is not None:
        id_line = obj.key_lines["id"]
        if not RULE_ID.fullmatch(rule_id):
            c.add(
                id_line,
                f"{where}.id",
                f"{rule_id!r}: use letters, digits, '.', '_' and '-' (at most 64), e.g. PAY-LIMIT",
            )
            rule_id = None
        elif rule_id in ids:
            c.add(id_line, f"{where}.id", f"duplicate id {rule_id!r} (first on line {ids[rule_id]})")
            rule_id = None
        else:
            ids[rule_id] = id_line
    action = _action(c, obj, where)
    scope = c.text(obj, "scope", where, one_line=True)
    precedents = _precedents(c, obj, where, seen)
    if rule_id is None or action is None or scope is None or not precedents:
        return None
    return Rule(rule_id, action, scope, tuple(precedents), obj.line)


def parse_policy(text: str, file: str) -> Policy:
    """The policy in `text` (read from `file`, named in every problem), or PolicyError."""
    data, problems = _parse_yaml(text, file)
    c = _Checker(file)
    c.problems += problems
    if data is None and not problems:
        c.add(0, "", "the file is empty")
    elif data is not None and not isinstance(data, _Map):
        c.add(1, "", f"expected a mapping with name and rules, got {_kind(data)}")
    if c.problems:
        raise PolicyError(c.problems)
    c.keys(data, POLICY_KEYS, "")
    name = c.text(data, "name", "", one_line=True)
    lang = _lang(c, data, "")
    description = c.text(data, "description", "", required=False)
    rules: list[Rule] = []
    items = data.get("rules")
    if not isinstance(items, _Seq) or not items:
        c.add(
            data.key_lines.get("rules", data.line),
            "rules",
            "missing: a list of rules (id, action, scope, precedents)"
            if not items
            else f"expected a list of rules, got {_kind(items)}",
        )
    else:
        ids: dict[str, int] = {}
        seen: dict[str, tuple[str, int]] = {}
        for i, (obj, line) in enumerate(zip(items, items.item_lines)):
            rule = _rule(c, obj, line, f"rules[{i}]", ids, seen)
            if rule is not None:
                rules.append(rule)
    if c.problems:
        raise PolicyError(c.problems)
    assert name is not None  # a missing or empty name is a problem above
    return Policy(file, name, tuple(rules), lang, description)


def load_policy(path: str | Path) -> Policy:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise PolicyError([Problem(str(path), 0, "", f"cannot read: {why}")]) from None
    return parse_policy(text, str(path))


def is_policy_file(path: str | Path) -> bool:
    """A YAML file (by its name): `so8t distill --policy` reads it as a policy, anything else as plain text."""
    return Path(path).suffix.lower() in (".yaml", ".yml")


# ---------------------------------------------------------------- for the teacher

OVERLAP = (
    "When several rules fit a request, the strictest action wins (REFUSE over ESCALATE over ALLOW). "
    "A request no rule covers is judged by the spirit of the rules; when in doubt, ESCALATE."
)


def render_policy(policy: Policy) -> str:
    """The policy as the teacher reads it (Markdown)."""
    lines = [f"# {policy.name}", ""]
    if policy.description:
        lines += [policy.description.strip(), ""]
    lines += ["Each rule has an id, the action it requires and its scope. " + OVERLAP, ""]
    for rule in policy.rules:
        lines.append(f"- [{rule.id}] {rule.action.name}: {rule.scope}")
        lines += [f"  - e.g. {_quote(p.prompt)}" for p in rule.precedents]
    example = policy.rules[0].id
    lines += ["", f"In the rationale, cite the id of the rule that decides, in brackets, e.g. [{example}]."]
    return "\n".join(lines)


def _quote(prompt: str) -> str:
    return '"' + " ".join(prompt.split()) + '"'
