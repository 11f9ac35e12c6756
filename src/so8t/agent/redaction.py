"""Redaction of secrets and personal data before anything reaches the audit log (``Redactor``).

Guaranteed, for the default rules (``DEFAULT_PATTERNS``, ``DEFAULT_SECRET_KEYS``, ``DEFAULT_ID_KEYS``):

* Matching runs on an NFKC view of the text: full-width digits, letters, ``＠``, ``．``, ``－``, ``（）``
  and the ideographic space count as their ASCII forms, half-width katakana as full-width. The
  replacement is made in the original string, so everything outside a redacted span is stored
  exactly as written.
* Caught shapes: e-mail addresses; API keys (OpenAI / Anthropic ``sk-``, Stripe ``sk_`` / ``rk_`` /
  ``pk_`` ``live`` / ``test`` and ``whsec_``, GitHub ``ghp_`` / ``gho_`` / ``ghu_`` / ``ghs_`` / ``ghr_`` /
  ``github_pat_``, GitLab ``glpat-``, AWS ``AKIA`` / ``ASIA``, Slack ``xox?-``, Google ``AIza``,
  Hugging Face ``hf_``, npm ``npm_``, JWTs) and PEM private keys; ``Bearer`` tokens;
  ``password=...``-style assignments (English and Japanese keywords); card numbers (13-19 digits,
  single spaces or hyphen-like characters between them, or dots between groups of four);
  Japanese phone numbers (``090-1234-5678``, ``(090) 1234-5678``, ``03(1234)5678``, any hyphen-like
  separator including ``ー``) and international ones (``+81 90 1234 5678``); My Number (12 digits).
* A value under a secret-looking dict key is replaced whole.
* Ids and hashes are never changed: a scalar under an id / hash key (``DEFAULT_ID_KEYS``: ``id``,
  ``hash``, ``approval_id``, ``request_hash``, ``input_hash``, ``prev_hash``, ``policy_version``,
  ``model_version``, anything ending in ``_id`` or ``_hash``, ...) is kept as is, and no match lying
  inside a hex token of 32+ digits (an approval id, a SHA-256) or a UUID in free text is replaced.
  Links from the audit log to the approval queue survive redaction.
* ``preview`` redacts before it shortens: a secret cut at the limit is still caught whole.
* Redacting redacted text changes nothing.

Records for the audit log (``clean_records``): the event and data are made plain JSON first
(``json_safe``: non-finite floats and unknown objects become strings, lone surrogates "?"), so a
stored record re-hashes identically after ``json.loads``; then the data is redacted.

Not guaranteed: redaction is pattern-based, not a secret detector. A bare password with no keyword,
a key of a service not listed (e.g. a plain 32-hex key), a number spelled out in words or split
oddly, or a secret glued into a 32+ hex token are not caught. Dict keys and JSON numbers are not
redacted. Values under id / hash keys are trusted to be ids: code must not put user text there.
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

# Lookarounds instead of \b: Python's \b is Unicode-aware, so "キーはsk-..." has no word boundary
# between "は" and "s", and a key followed by Japanese text would slip through.
_NA = r"(?<![A-Za-z0-9])"  # not preceded by an ASCII alphanumeric
_NZ = r"(?![A-Za-z0-9])"  # not followed by one
_ND, _NDZ = r"(?<![0-9])", r"(?![0-9])"
# Hyphen-like characters that survive NFKC (full-width "－" becomes "-" there; "ー" is the long
# vowel mark Japanese IMEs often type between digits), and one separator between digit groups.
_DASHES = r"\-\u2010-\u2015\u2212\u30fc"
_SEP = rf"[ {_DASHES}]"

_API_KEYS = (
    r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}"
    r"|(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|glpat-[A-Za-z0-9_-]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|AIza[0-9A-Za-z_-]{30,}"
    r"|hf_[A-Za-z0-9]{30,}|npm_[A-Za-z0-9]{36,}"
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"
)
_PHONE = "|".join(
    [
        # Japanese numbers start with 0 and have 10-11 digits (the lookahead counts them, so a date
        # like 01-12-2026 is not a phone number).
        _ND
        + r"0(?=(?:"
        + _SEP
        + r"?[0-9]){9,10}"
        + _NDZ
        + r")[0-9]{1,4}"
        + _SEP
        + r"?[0-9]{1,4}"
        + _SEP
        + r"?[0-9]{3,4}"
        + _NDZ,
        r"\(0[0-9]{1,4}\) ?[0-9]{1,4}" + _SEP + r"?[0-9]{4}" + _NDZ,  # (090) 1234-5678
        _ND + r"0[0-9]{1,4}\([0-9]{1,4}\)[0-9]{4}" + _NDZ,  # 03(1234)5678
        # International: + and >= 9 digits, "(0)" and a bracketed area code allowed.
        r"(?<![0-9A-Za-z+])\+(?=(?:[ ()" + _DASHES + r"]{0,3}[0-9]){9})[1-9][0-9]{0,2}"
        r"(?:" + _SEP + r"?(?:\(0\))?\(?[0-9]{1,4}\)?){2,5}" + _NDZ,
    ]
)

# Applied in this order (dicts keep insertion order): specific token shapes first, so a digit run
# inside an API key is tagged as the key, not as a card number.
DEFAULT_PATTERNS: dict[str, str] = {
    "private_key": (
        r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"
        r"(?:[\s\S]*?-----END (?:[A-Z0-9]+ )*PRIVATE KEY-----|[\s\S]*)"
    ),
    "api_key": _NA + "(?:" + _API_KEYS + ")" + _NZ,
    "bearer": _NA + r"(?i:bearer)\s+[A-Za-z0-9._~+/=-]{8,}",
    "password": (
        r"(?i)(?<![A-Za-z])(?:password|passwd|passphrase|pwd|secret|client[_-]?secret"
        r"|api[_-]?key|(?:access|auth|refresh|api)[_-]?token|パスワード|パスコード|暗証番号)"
        r"[\"']?\s*[:=：＝]\s*\S+"
    ),
    # The lookbehind makes the scan linear: only the start of a run can begin a match.
    "email": r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}",
    # 13-19 digits with single separators between them, or dotted groups (4111.1111.1111.1111,
    # 3782.822463.10005): a dot only between groups, so 3.14159265358979 is not a card.
    "credit_card": (
        _ND
        + r"(?:[0-9]"
        + _SEP
        + r"?){12,18}[0-9]"
        + _NDZ
        + "|"
        + _ND
        + r"[0-9]{4}(?:\.[0-9]{4}){2}\.[0-9]{1,7}"
        + _NDZ
        + "|"
        + _ND
        + r"[0-9]{4}\.[0-9]{6}\.[0-9]{4,5}"
        + _NDZ
    ),
    "phone": _PHONE,
    # My Number (個人番号): 12 digits, optionally grouped 4-4-4.
    "my_number": _ND + r"[0-9]{4}" + _SEP + r"?[0-9]{4}" + _SEP + r"?[0-9]{4}" + _NDZ,
}

# A dict value whose key ends in one of these words is replaced whole, whatever it looks like.
DEFAULT_SECRET_KEYS = (
    r"(?i)^(?:.*[_\-.\s])?(?:password|passwd|passphrase|pwd|secret|token|api[_-]?key|apikey"
    r"|access[_-]?key|private[_-]?key|authorization|cookie|credentials?|パスワード|暗証番号|個人番号)$"
)
# A scalar under a key matching this is an id or a hash: never redacted (it links records).
DEFAULT_ID_KEYS = (
    r"(?i)^(?:id|hash|approval_id|request_hash|input_hash|prev_hash|call_hash|result_hash|sha256"
    r"|policy_version|model_version|superseded_by|parent_id)$|_(?:id|hash)$"
)
# An approval id (32 hex), a SHA-1 / SHA-256 (40 / 64 hex) or a UUID inside free text.
_ID_TOKEN = re.compile(
    r"(?<![0-9A-Za-z])(?:[0-9a-fA-F]{32,}"
    r"|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"
    r"(?![0-9A-Za-z])"
)

_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _compile(name: str, pattern: str) -> re.Pattern[str]:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"invalid redaction pattern name {name!r} (use letters, digits, _ . -)")
    if not isinstance(pattern, str):
        raise ValueError(f"redaction pattern {name!r} must be a string, got {type(pattern).__name__}")
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"invalid regex for redaction pattern {name!r}: {e}") from e
    if rx.fullmatch(""):  # would stamp a tag between every character
        raise ValueError(f"redaction pattern {name!r} matches the empty string")
    return rx


# --- the NFKC view ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8192)
def _nfkc(s: str) -> str:
    return unicodedata.normalize("NFKC", s)


def _attaches(ch: str) -> bool:
    """A combining mark, or a half-width (semi-)voiced sound mark NFKC turns into one: NFKC
    composes it with the character before, so both are normalised together."""
    n = _nfkc(ch)
    return bool(n) and unicodedata.combining(n[0]) != 0


def _clusters(text: str) -> list[tuple[int, int]]:
    """(start, end) of each base character with the combining marks after it."""
    out, start = [], 0
    for i in range(1, len(text)):
        if not _attaches(text[i]):
            out.append((start, i))
            start = i
    if text:
        out.append((start, len(text)))
    return out


class _View:
    """``text``, its NFKC form (``norm``) and, for each character of ``norm``, the span of ``text``
    it came from; ``sub`` finds matches in ``norm`` and replaces the original characters."""

    def __init__(self, text: str) -> None:
        self.text, self.norm = text, text
        self.origin: list[tuple[int, int]] | None = None
        if text.isascii():  # NFKC leaves ASCII alone
            return
        parts: list[str] = []
        self.origin = []
        for s, e in _clusters(text):
            n = _nfkc(text[s:e])
            parts.append(n)
            self.origin.extend([(s, e)] * len(n))
        self.norm = "".join(parts)

    @functools.cached_property
    def ids(self) -> list[tuple[int, int]]:
        return [m.span() for m in _ID_TOKEN.finditer(self.norm)]

    def _original(self, s: int, e: int) -> tuple[int, int]:
        return (s, e) if self.origin is None else (self.origin[s][0], self.origin[e - 1][1])

    def _in_id(self, s: int, e: int) -> bool:
        return any(a <= s and e <= b for a, b in self.ids)

    def sub(self, rx: re.Pattern[str], tag: str) -> str:
        """The original text with every match of ``rx`` in the view replaced by ``tag`` (the same
        object when nothing matched)."""
        spans = [
            self._original(*m.span())
            for m in rx.finditer(self.norm)
            if m.end() > m.start() and not self._in_id(*m.span())
        ]
        if not spans:
            return self.text
        out, pos = [], 0
        for s, e in spans:
            if s < pos:  # two matches inside one expanded character: one tag covers both
                continue
            out += [self.text[pos:s], tag]
            pos = e
        return "".join(out) + self.text[pos:]


# --- the redactor -------------------------------------------------------------------------------


class Redactor:
    """Replaces secrets and personal data with ``[REDACTED:<name>]``.

    ``patterns`` maps a name to a regex (matched against the NFKC view); None means
    ``DEFAULT_PATTERNS``, ``{}`` redacts nothing by pattern. ``secret_keys`` is a regex on dict keys
    whose values are replaced whole (tag ``[REDACTED:secret_key]``); None turns that off. ``id_keys``
    is a regex on dict keys whose scalar values are kept as they are; None turns that off. Use
    ``from_config`` to add to / trim the defaults.
    """

    def __init__(
        self,
        patterns: dict[str, str] | None = None,
        *,
        secret_keys: str | None = DEFAULT_SECRET_KEYS,
        id_keys: str | None = DEFAULT_ID_KEYS,
    ) -> None:
        patterns = DEFAULT_PATTERNS if patterns is None else patterns
        self._rules = [(name, _compile(name, p)) for name, p in patterns.items()]
        self._secret_keys = _compile("secret_keys", secret_keys) if secret_keys is not None else None
        self._id_keys = _compile("id_keys", id_keys) if id_keys is not None else None

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> Redactor:
        """Build from a config mapping (e.g. the ``audit.redact`` section of a YAML file)::

        defaults: true            # start from DEFAULT_PATTERNS (false: start empty)
        disable: [phone]          # drop these default patterns
        patterns: {ticket: 'TCK-[0-9]{6}'}   # add (or replace, by name) patterns
        secret_keys: '(?i)^pin$'  # regex on dict keys; null turns key-based redaction off
        id_keys: '^ticket_no$'    # regex on keys whose values are never redacted; null: none
        """
        config = dict(config or {})
        unknown = set(config) - {"defaults", "disable", "patterns", "secret_keys", "id_keys"}
        if unknown:
            raise ValueError(f"unknown redaction config keys: {sorted(unknown)}")
        base = dict(DEFAULT_PATTERNS) if config.get("defaults", True) else {}
        disable = config.get("disable") or []
        if isinstance(disable, str):
            disable = [disable]
        for name in disable:
            if name not in DEFAULT_PATTERNS:
                raise ValueError(
                    f"cannot disable unknown redaction pattern {name!r}; defaults are {sorted(DEFAULT_PATTERNS)}"
                )
            base.pop(name, None)
        extra = config.get("patterns") or {}
        if not isinstance(extra, Mapping):
            raise ValueError("redaction config 'patterns' must be a mapping of name -> regex")
        base.update(extra)
        return cls(
            base,
            secret_keys=config.get("secret_keys", DEFAULT_SECRET_KEYS),
            id_keys=config.get("id_keys", DEFAULT_ID_KEYS),
        )

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self._rules]

    def redact_text(self, text: str) -> str:
        view = None
        for name, rx in self._rules:
            view = view or _View(text)
            new = view.sub(rx, f"[REDACTED:{name}]")
            if new is not text:  # the next rule sees the tags, through a fresh view
                text, view = new, None
        return text

    def preview(self, text: str, limit: int) -> str:
        """``text`` redacted, then cut to ``limit`` characters (+ "…"): redacting first means a
        secret that straddles the limit is still seen whole."""
        text = self.redact_text(text)
        return text if len(text) <= limit else text[:limit] + "…"

    def redact(self, obj: Any) -> Any:
        """A redacted copy: dicts (keys kept), lists and tuples (as lists) walked, strings redacted."""
        if isinstance(obj, str):
            return self.redact_text(obj)
        if isinstance(obj, Mapping):
            return {k: self._redact_item(k, v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [self.redact(v) for v in obj]
        return obj

    def _redact_item(self, key: Any, value: Any) -> Any:
        if not isinstance(key, str):
            return self.redact(value)
        if (
            self._id_keys is not None
            and self._id_keys.search(key)
            and (value is None or isinstance(value, (str, int, float, bool)))
        ):
            return value  # an id or a hash: it links records, and is not user text
        empty = value is None or (isinstance(value, str) and not value)  # nothing to hide
        if self._secret_keys is not None and not empty and self._secret_keys.search(_nfkc(key)):
            return "[REDACTED:secret_key]"
        return self.redact(value)


# --- records for the audit log ------------------------------------------------------------------


def json_safe(obj: Any) -> Any:
    """Plain JSON types only, so a stored record re-hashes identically after json.loads.

    Non-finite floats become strings (NaN is not JSON), unknown objects their str(), lone
    surrogates "?" (they cannot be encoded as UTF-8)."""
    if isinstance(obj, str):
        return obj.encode("utf-8", "replace").decode("utf-8")
    if obj is None or isinstance(obj, (bool, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, Mapping):
        return {json_safe(str(k)): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    return json_safe(str(obj))


def clean_records(items: list[tuple[str, Mapping[str, Any] | None]], redactor: Redactor) -> list[tuple[str, dict]]:
    """``(event, data)`` pairs as an audit store writes them: plain JSON (``json_safe``), ``data``
    redacted by ``redactor``. ValueError / TypeError (nothing written) for an empty event name, data
    that is not a dict, or no items at all."""
    clean = []
    for event, data in items:
        if not isinstance(event, str) or not event.strip():
            raise ValueError("audit event must be a non-empty string")
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise TypeError(f"audit data must be a dict, got {type(data).__name__}")
        clean.append((json_safe(event), redactor.redact(json_safe(data))))
    if not clean:
        raise ValueError("append_batch needs at least one record")
    return clean


__all__ = ["DEFAULT_ID_KEYS", "DEFAULT_PATTERNS", "DEFAULT_SECRET_KEYS", "Redactor", "clean_records", "json_safe"]
