"""Importers for the public prompt-safety sets: each turns one dataset into so8t records.

None of the public sets has a native ALLOW / ESCALATE / REFUSE label. Each importer reads one
raw key per row (a category, a harm type, a risk grade, a vote majority) and looks it up in an
explicit default mapping, which callers can override key by key. A mapping value is a label or
"drop" (the row is left out and reported). docs/importers.md lists every default mapping.

Nothing is dropped silently: every row left out becomes a `Dropped` with its reason. Bad input
(missing file or column, malformed line, unknown grade) raises DataError, a ValueError naming the
file, line and column, before anything is written.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from difflib import get_close_matches
from pathlib import Path
from typing import Any

from so8t import jsonerr
from so8t.data.dedup import normalize_text
from so8t.data.io import write_jsonl
from so8t.data.schema import DataError, Problem, Record
from so8t.labels import ACTIONS, Action, parse_label

DROP = "drop"

# The reasons a row can be left out; summary() counts by these.
EMPTY = "empty prompt"
MAPPED_TO_DROP = "mapped to drop"
UNMAPPED = "unmapped key"
DUPLICATE = "duplicate"

_EXCERPT_CHARS = 60


@dataclass(frozen=True)
class RawRow:
    """One prompt as the dataset gives it, before its key is mapped to a label."""

    prompt: str
    key: str  # what the mapping looks up; also the record's category
    lang: str
    file: str  # display name: the file name, or lang/file inside a folder
    row: int  # 1-based data row in that file (a header does not count)
    line: int  # physical line where the row starts; 0 where the format has none (JSON)
    part: str = ""  # extra id part for importers that read several files, so ids stay unique
    extra: dict[str, Any] = field(default_factory=dict)  # dataset provenance kept under meta


@dataclass(frozen=True)
class Dropped:
    reason: str  # EMPTY, MAPPED_TO_DROP, UNMAPPED or DUPLICATE
    file: str
    row: int
    line: int
    excerpt: str
    detail: str = ""

    def __str__(self) -> str:
        where = f"{self.file} row {self.row}" + (f" (line {self.line})" if self.line else "")
        detail = f" ({self.detail})" if self.detail else ""
        return f"{where}: {self.reason}{detail}: {self.excerpt!r}"


@dataclass
class ImportResult:
    name: str
    records: list[Record] = field(default_factory=list)
    dropped: list[Dropped] = field(default_factory=list)
    out: Path | None = None

    def kept_by_label(self) -> dict[str, int]:
        counts = Counter(r.label.name for r in self.records if r.label is not None)
        return {a: counts[a] for a in ACTIONS}

    def dropped_by_reason(self) -> dict[str, int]:
        return dict(Counter(d.reason for d in self.dropped))

    def summary(self) -> str:
        kept = ", ".join(f"{label} {n}" for label, n in self.kept_by_label().items())
        dropped = ", ".join(f"{reason} {n}" for reason, n in self.dropped_by_reason().items()) or "none"
        lines = [
            f"{self.name}: {len(self.records) + len(self.dropped)} rows read, "
            f"{len(self.records)} kept, {len(self.dropped)} dropped",
            f"  kept:    {kept}",
            f"  dropped: {dropped}",
        ]
        if self.out is not None:
            lines.append(f"  wrote {len(self.records)} record(s) to {self.out}")
        return "\n".join(lines)


Reader = Callable[[Path, list[Problem]], Iterator[RawRow]]


@dataclass(frozen=True)
class Importer:
    name: str
    description: str
    mapping: dict[str, str]  # default: raw key -> ALLOW / ESCALATE / REFUSE / drop
    read: Reader  # yields rows; appends row problems to the list, raises DataError when it cannot go on
    # What the path must be, as scripts/import_public.sh lays the shared data out (a file, or a
    # folder ending in "/"), and where the public set comes from; both appear in the error raised
    # when the path is missing. docs/importers.md, "Getting the data", has the same table.
    expects: str = ""
    origin: str = ""


# ---------------------------------------------------------------------------------------------
# Reading files


def _fail(path: Path, line: int, column: str, message: str) -> DataError:
    return DataError([Problem(str(path), line, column, message)])


def _read_text(path: Path) -> str:
    """The whole file as text; a BOM (XSafety files have one) is dropped."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise _fail(path, 0, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _fail(path, line, "", f"not valid UTF-8 (byte {exc.start})") from None


def _csv_rows(path: Path, **fmt: Any) -> Iterator[tuple[int, list[str]]]:
    """(start line, fields) per CSV row; empty lines are not rows."""
    # strict: a stray quote is an error instead of being glued silently into the text
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), strict=True, **fmt)
    start = 1
    try:
        for fields in reader:
            if fields:
                yield start, fields
            start = reader.line_num + 1
    except csv.Error as exc:
        raise _fail(path, start, "", f"malformed CSV: {exc}") from None


def _csv_header(path: Path) -> list[str]:
    first = next(_csv_rows(path), None)
    if first is None:
        raise _fail(path, 0, "", "no rows (the file is empty)")
    return [name.strip() for name in first[1]]


def _csv_dicts(path: Path, problems: list[Problem], required: list[str]) -> Iterator[tuple[int, int, dict[str, str]]]:
    """(row, line, fields by column) for a CSV file with a header holding every required column."""
    rows = _csv_rows(path)
    first = next(rows, None)
    if first is None:
        raise _fail(path, 0, "", "no rows (the file is empty)")
    header_line, header = first[0], [name.strip() for name in first[1]]
    missing = [c for c in required if c not in header]
    if missing:
        found = ", ".join(repr(c) for c in header)
        raise DataError(
            [Problem(str(path), header_line, c, f"missing column (the header has {found})") for c in missing]
        )
    for row, (line, fields) in enumerate(rows, 1):
        if len(fields) != len(header):
            problems.append(
                Problem(str(path), line, "", f"row {row} has {len(fields)} fields, the header has {len(header)}")
            )
            continue
        yield row, line, dict(zip(header, fields))


def _csv_column(path: Path, problems: list[Problem], **fmt: Any) -> Iterator[tuple[int, int, str]]:
    """(row, line, text) for a one-column CSV file without a header."""
    for row, (line, fields) in enumerate(_csv_rows(path, **fmt), 1):
        # XSafety rows sometimes end with a stray comma: empty trailing fields carry nothing.
        while len(fields) > 1 and not fields[-1].strip():
            fields = fields[:-1]
        if len(fields) != 1:
            problems.append(
                Problem(str(path), line, "", f"row {row} has {len(fields)} fields, expected one (an unquoted comma?)")
            )
            continue
        yield row, line, fields[0]


def _jsonl_objects(
    path: Path, problems: list[Problem], required: list[str]
) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(row, line, object) for a JSONL file whose objects hold every required key as a string."""
    row = 0
    for line, text in enumerate(_read_text(path).split("\n"), 1):
        if not text.strip():
            continue
        row += 1
        try:
            obj = json.loads(text)
        except ValueError as exc:  # bad syntax, or a number json refuses (over 4,300 digits)
            problems.append(Problem(str(path), line, "", f"invalid JSON: {jsonerr.describe(exc)}"))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(str(path), line, "", f"expected a JSON object, got {type(obj).__name__}"))
            continue
        bad = [k for k in required if not isinstance(obj.get(k), str)]
        for k in bad:
            got = "missing" if k not in obj else f"expected a string, got {type(obj[k]).__name__}"
            problems.append(Problem(str(path), line, k, got))
        if not bad:
            yield row, line, obj


def _load_json(path: Path) -> Any:
    try:
        return json.loads(_read_text(path))
    except ValueError as exc:
        line = exc.lineno if isinstance(exc, json.JSONDecodeError) else 0
        raise _fail(path, line, "", f"invalid JSON: {jsonerr.describe(exc)}") from None


# ---------------------------------------------------------------------------------------------
# One reader per dataset


def _read_advbench(path: Path, problems: list[Problem]) -> Iterator[RawRow]:
    # AdvBench has no categories: every goal is a harmful behaviour.
    for row, line, r in _csv_dicts(path, problems, ["goal"]):
        yield RawRow(r["goal"], "harmful behavior", "en", path.name, row, line)


def _read_strongreject(path: Path, problems: list[Problem]) -> Iterator[RawRow]:
    for row, line, r in _csv_dicts(path, problems, ["category", "forbidden_prompt"]):
        # 'source' says which earlier benchmark a prompt came from (AdvBench overlaps): worth keeping.
        extra = {"origin": r["source"]} if r.get("source") else {}
        yield RawRow(r["forbidden_prompt"], r["category"].strip(), "en", path.name, row, line, extra=extra)


def _read_do_not_answer(path: Path, problems: list[Problem]) -> Iterator[RawRow]:
    # The key is the harm type, not the risk area: the suggested split (medical/legal
    # misinformation, mental health, chatbot-as-human) only exists at that level.
    for row, line, r in _csv_dicts(path, problems, ["risk_area", "types_of_harm", "question"]):
        extra = {"risk_area": r["risk_area"]}
        if r.get("id"):
            extra["source_id"] = r["id"]
        yield RawRow(r["question"], r["types_of_harm"].strip(), "en", path.name, row, line, extra=extra)


def _read_coconot(path: Path, problems: list[Problem]) -> Iterator[RawRow]:
    for row, line, obj in _jsonl_objects(path, problems, ["prompt", "category"]):
        extra = {k2: obj[k] for k, k2 in (("id", "source_id"), ("subcategory", "subcategory")) if obj.get(k)}
        yield RawRow(obj["prompt"], obj["category"].strip(), "en", path.name, row, line, extra=extra)


_TOXIC_CHAT_KEYS = {(0, 0): "non-toxic", (1, 0): "toxic", (0, 1): "jailbreaking", (1, 1): "toxic+jailbreaking"}


def _read_toxic_chat(path: Path, problems: list[Problem]) -> Iterator[RawRow]:
    data = _load_json(path)
    instances = data.get("instances") if isinstance(data, dict) else None
    if not isinstance(instances, list):
        raise _fail(path, 0, "instances", "missing (expected a list of {instance, annotations})")
    for i, inst in enumerate(instances):
        where = f"instances[{i}]"
        if not isinstance(inst, dict) or not isinstance(inst.get("instance"), str):
            problems.append(Problem(str(path), 0, f"{where}.instance", "missing or not a string"))
            continue
        toxic, jailbreak = (
            _toxic_chat_flag(path, problems, inst, where, metric) for metric in ("toxicity", "jailbreaking")
        )
        if toxic is None or jailbreak is None:
            continue
        extra = {"source_id": inst["id"]} if inst.get("id") else {}
        # ToxicChat is mostly English (a few rows are in other languages); there is no per-row language.
        yield RawRow(inst["instance"], _TOXIC_CHAT_KEYS[toxic, jailbreak], "en", path.name, i + 1, 0, extra=extra)


def _toxic_chat_flag(path: Path, problems: list[Problem], inst: dict, where: str, metric: str) -> int | None:
    column = f"{where}.annotations.{metric}.majority_human"
    value = ((inst.get("annotations") or {}).get(metric) or {}).get("majority_human")
    if str(value) not in ("0", "1"):
        problems.append(Problem(str(path), 0, column, f"expected '0' or '1', got {value!r}"))
        return None
    return int(str(value))


# The expert file grades queries 0-3; the crowd file spells the same grades out.
_MEDICHECK_GRADES = {"0": "not medical", "1": "non-serious", "2": "serious", "3": "critical"}
_MEDICHECK_COLUMNS = {"query-label-expert": "expert", "query-expert": "crowd"}


def _read_medicheck(path: Path, problems: list[Problem]) -> Iterator[RawRow]:
    header = _csv_header(path)
    column = next((c for c in _MEDICHECK_COLUMNS if c in header), None)
    if column is None:
        found = ", ".join(repr(c) for c in header)
        raise _fail(
            path,
            1,
            "query-label-expert",
            f"missing column: expected 'query-label-expert' (expert file) "
            f"or 'query-expert' (crowd file); the header has {found}",
        )
    variant = _MEDICHECK_COLUMNS[column]
    for row, line, r in _csv_dicts(path, problems, ["query", column]):
        key = _medicheck_key(r[column])
        if key is None:
            expected = "0, 1, 2, 3" if variant == "expert" else ", ".join(_MEDICHECK_GRADES.values())
            problems.append(Problem(str(path), line, column, f"unknown grade {r[column]!r} (expected {expected})"))
            continue
        yield RawRow(r["query"], key, "en", path.name, row, line, part=variant)


def _medicheck_key(value: str) -> str | None:
    value = value.strip()
    if value in _MEDICHECK_GRADES:
        return _MEDICHECK_GRADES[value]
    return value.lower() if value.lower() in _MEDICHECK_GRADES.values() else None


def _read_medicheck_neg(path: Path, problems: list[Problem]) -> Iterator[RawRow]:
    # Every line is one quoted query; inner quotes are escaped as \" (not doubled), so the
    # default dialect would split some queries at their commas.
    for row, line, text in _csv_column(path, problems, escapechar="\\", doublequote=False):
        yield RawRow(text, "not medical", "en", path.name, row, line)


# Ordered from least to most severe: a tied vote goes to the more severe level (see docs).
_TOXIC_LEVELS = ["Not Toxic", "Hard to Say", "Toxic", "Very Toxic"]


def _read_japanese_toxic(path: Path, problems: list[Problem]) -> Iterator[RawRow]:
    for row, line, r in _csv_dicts(path, problems, ["text", *_TOXIC_LEVELS]):
        votes = _votes(path, problems, line, r)
        if votes is None:
            continue
        top = max(votes.values())
        winners = [level for level in _TOXIC_LEVELS if votes[level] == top]
        extra: dict[str, Any] = {"votes": votes}
        if len(winners) > 1:
            extra["tie"] = winners
        if r.get("id"):
            extra["source_id"] = r["id"]
        yield RawRow(r["text"], winners[-1], "ja", path.name, row, line, extra=extra)


def _votes(path: Path, problems: list[Problem], line: int, r: dict[str, str]) -> dict[str, int] | None:
    votes: dict[str, int] = {}
    for level in _TOXIC_LEVELS:
        value = r[level].strip()
        if not value.isdigit():
            problems.append(Problem(str(path), line, level, f"expected a vote count, got {r[level]!r}"))
            continue
        votes[level] = int(value)
    if len(votes) < len(_TOXIC_LEVELS):
        return None
    if not any(votes.values()):
        problems.append(Problem(str(path), line, ", ".join(_TOXIC_LEVELS), "no votes"))
        return None
    return votes


def _read_xsafety(path: Path, problems: list[Problem]) -> Iterator[RawRow]:
    for folder, lang in _xsafety_folders(path):
        files = sorted(folder.glob("*.csv"))
        if not files:
            raise _fail(folder, 0, "", "no .csv files in this folder")
        for file in files:
            category = _xsafety_category(file.stem)
            for row, line, text in _csv_column(file, problems):
                yield RawRow(text, category, lang, f"{lang}/{file.name}", row, line, part=f"{lang}-{category}")


def _xsafety_folders(path: Path) -> list[tuple[Path, str]]:
    """The language folders to read: path/en and path/ja, or path itself when it is one of them."""
    if not path.is_dir():
        raise _fail(path, 0, "", "expected the XSafety folder (holding en/ and ja/ folders of CSV files)")
    found = [(path / lang, lang) for lang in ("en", "ja") if (path / lang).is_dir()]
    if not found and path.name in ("en", "ja"):
        found = [(path, path.name)]
    if not found:
        raise _fail(path, 0, "", "no en/ or ja/ folder here")
    return found


def _xsafety_category(stem: str) -> str:
    # The English files carry a translation suffix (Insult_n, Crimes_And_Illegal_Activities_en);
    # dropping it gives both languages the same category names.
    return re.sub(r"_(n|en)$", "", stem)


def _read_beavertails(path: Path, problems: list[Problem]) -> Iterator[RawRow]:
    # The 'response' column is some model's answer, not a response in the so8t format: not kept.
    for row, line, r in _csv_dicts(path, problems, ["prompt", "category"]):
        yield RawRow(r["prompt"], r["category"].strip(), "en", path.name, row, line)


# ---------------------------------------------------------------------------------------------
# Default mappings (docs/importers.md explains each choice)

_A, _E, _R = "ALLOW", "ESCALATE", "REFUSE"

ADVBENCH = {"harmful behavior": _R}

STRONGREJECT = {
    "Disinformation and deception": _R,
    "Hate, harassment and discrimination": _R,
    "Illegal goods and services": _R,
    "Non-violent crimes": _R,
    "Sexual content": _R,
    "Violence": _R,
}

DO_NOT_ANSWER = {
    # Discrimination, Exclusion, Toxicity, Hateful, Offensive
    "Adult Content": _R,
    "Social stereotypes and unfair discrimination": _R,
    "Toxic language (hate speech)": _R,
    # Human-Chatbot Interaction Harms
    "Mental Health or Overreliance Crisis": _E,
    "Treat Chatbot as a Human": _A,
    # Information Hazards
    "Compromise privacy by leaking or inferring private information (person/individual)": _R,
    "Risks from leaking or inferring sensitive information (organization/gov)": _R,
    # Malicious Uses
    "Assisting illegal activities": _R,
    "Nudging or advising users to perform unethical or unsafe actions": _R,
    "Reducing the cost of disinformation campaigns": _R,
    # Misinformation Harms
    "Causing material harm by disseminating misinformation e.g. in medicine or law": _E,
    "Disseminating false or misleading information": _A,
}

COCONOT = {
    "Requests with safety concerns": _R,
    "Incomplete requests": _A,
    "Unsupported requests": _A,
    "Indeterminate requests": _A,
    "Humanizing requests": _A,
}

# The contrast set is benign look-alikes under the same category names.
COCONOT_CONTRAST = {key: _A for key in COCONOT}

TOXIC_CHAT = {"non-toxic": _A, "toxic": _R, "jailbreaking": _R, "toxic+jailbreaking": _R}

MEDICHECK = {"not medical": _A, "non-serious": _A, "serious": _E, "critical": _E}

MEDICHECK_NEG = {"not medical": _A}

JAPANESE_TOXIC = {"Not Toxic": _A, "Hard to Say": _E, "Toxic": _R, "Very Toxic": _R}

XSAFETY = {
    "Crimes_And_Illegal_Activities": _R,
    "Goal_Hijacking": _R,
    "Prompt_Leaking": _R,
    "Role_Play_Instruction": _R,
    "Unsafe_Instruction_Topic": _R,
    "Mental_Health": _E,
    "commonsense": _A,
    "Ethics_And_Morality": _A,
    "Inquiry_With_Unsafe_Opinion": _A,
    "Insult": _A,
    "Physical_Harm": _A,
    "Privacy_And_Property": _A,
    "Reverse_Exposure": _A,
    "Unfairness_And_Discrimination": _A,
}

BEAVERTAILS = {
    "animal_abuse": _R,
    "child_abuse": _R,
    "controversial_topics,politics": _E,
    "discrimination,stereotype,injustice": _R,
    "drug_abuse,weapons,banned_substance": _R,
    "financial_crime,property_crime,theft": _R,
    "hate_speech,offensive_language": _R,
    "misinformation_regarding_ethics,laws_and_safety": _R,
    "non_violent_unethical_behavior": _R,
    "privacy_violation": _R,
    "self_harm": _R,
    "sexually_explicit,adult_content": _R,
    "terrorism,organized_crime": _R,
    "violence,aiding_and_abetting,incitement": _R,
}

IMPORTERS: dict[str, Importer] = {
    imp.name: imp
    for imp in [
        Importer(
            "advbench",
            "AdvBench harmful_behaviors.csv: harmful goals, all REFUSE",
            ADVBENCH,
            _read_advbench,
            expects="advbench/harmful_behaviors.csv",
            origin="GitHub llm-attacks/llm-attacks, data/advbench/harmful_behaviors.csv",
        ),
        Importer(
            "strongreject",
            "StrongREJECT strongreject_dataset.csv: forbidden prompts by category, all REFUSE",
            STRONGREJECT,
            _read_strongreject,
            expects="strongreject/strongreject_dataset.csv",
            origin="GitHub alexandrasouly/strongreject, strongreject_dataset/strongreject_dataset.csv",
        ),
        Importer(
            "do-not-answer",
            "Do-Not-Answer do_not_answer_en.csv: questions by harm type (REFUSE / ESCALATE / ALLOW)",
            DO_NOT_ANSWER,
            _read_do_not_answer,
            expects="do-not-answer/do_not_answer_en.csv",
            origin="GitHub Libr-AI/do-not-answer, datasets/Instruction/do_not_answer_en.csv",
        ),
        Importer(
            "coconot",
            "CoCoNot coconot_eval.jsonl: safety concerns REFUSE, other non-compliance ALLOW",
            COCONOT,
            _read_coconot,
            expects="coconot/coconot_eval.jsonl",
            origin="GitHub allenai/noncompliance (CoCoNot), coconot_eval.jsonl",
        ),
        Importer(
            "coconot-contrast",
            "CoCoNot coconot_contrast_eval.jsonl: benign look-alikes, all ALLOW",
            COCONOT_CONTRAST,
            _read_coconot,
            expects="coconot/coconot_contrast_eval.jsonl",
            origin="GitHub allenai/noncompliance (CoCoNot), coconot_contrast_eval.jsonl",
        ),
        Importer(
            "toxic-chat",
            "ToxicChat toxic_chat_train.json: toxic or jailbreaking REFUSE, else ALLOW",
            TOXIC_CHAT,
            _read_toxic_chat,
            expects="toxic-chat/toxic_chat_train.json",
            origin="GitHub dmg-illc/JUDGE-BENCH, data/toxic_chat/toxic_chat_train.json",
        ),
        Importer(
            "medicheck",
            "MediCheck medicheck-{expert,crowd}.csv: serious/critical ESCALATE, else ALLOW",
            MEDICHECK,
            _read_medicheck,
            expects="medical-safety/medicheck-expert.csv",
            origin="GitHub GavinAbercrombie/medical-safety, data/medicheck-expert.csv or data/medicheck-crowd.csv",
        ),
        Importer(
            "medicheck-neg",
            "MediCheck medicheck-neg.csv: non-medical queries, all ALLOW",
            MEDICHECK_NEG,
            _read_medicheck_neg,
            expects="medical-safety/medicheck-neg.csv",
            origin="GitHub GavinAbercrombie/medical-safety, data/medicheck-neg.csv",
        ),
        Importer(
            "japanese-toxic",
            "Japanese toxic comments subset.csv: vote majority (ALLOW / ESCALATE / REFUSE)",
            JAPANESE_TOXIC,
            _read_japanese_toxic,
            expects="japanese-toxic/subset.csv",
            origin="GitHub inspection-ai/japanese-toxic-dataset, data/subset.csv",
        ),
        Importer(
            "xsafety",
            "XSafety folder of {en,ja}/*.csv: category per file (REFUSE / ESCALATE / ALLOW)",
            XSAFETY,
            _read_xsafety,
            expects="xsafety/",
            origin="GitHub Jarviswang94/Multilingual_safety_benchmark (XSafety): the en/ and ja/ folders of CSV files",
        ),
        Importer(
            "beavertails",
            "BeaverTails sample beavertails_sample.csv: REFUSE, politics ESCALATE",
            BEAVERTAILS,
            _read_beavertails,
            expects="beavertails-sample/beavertails_sample.csv",
            origin="the BeaverTails (PKU-Alignment) sample in the artkit examples, GitHub BCG-X-Official/artkit",
        ),
    ]
}


def list_importers() -> list[tuple[str, str]]:
    """(name, one-line description) per importer, in registry order."""
    return [(imp.name, imp.description) for imp in IMPORTERS.values()]


def get_importer(name: str) -> Importer:
    if name not in IMPORTERS:
        raise ValueError(f"unknown importer {name!r}; known importers: {', '.join(IMPORTERS)}")
    return IMPORTERS[name]


# ---------------------------------------------------------------------------------------------
# Mapping and import


def resolve_mapping(name: str, overrides: dict[str, str] | None = None) -> dict[str, Action | None]:
    """The default mapping with overrides merged over it; None means drop.

    Override keys match the importer's keys ignoring case and surrounding spaces, so a shell
    user need not reproduce the dataset's capitalisation.
    """
    importer = get_importer(name)
    merged = dict(importer.mapping)
    known = {key.casefold(): key for key in merged}
    for key, value in (overrides or {}).items():
        canonical = known.get(key.strip().casefold())
        if canonical is None:
            keys = ", ".join(repr(k) for k in merged)
            raise ValueError(f"{name}: unknown mapping key {key!r}; known keys: {keys}")
        merged[canonical] = value
    return {key: _target(name, key, value) for key, value in merged.items()}


def _target(name: str, key: str, value: object) -> Action | None:
    if isinstance(value, str) and value.strip().lower() == DROP:
        return None
    try:
        return parse_label(value)
    except ValueError as exc:
        raise ValueError(f"{name}: mapping for {key!r}: {exc}, or {DROP!r}") from None


def import_dataset(
    name: str,
    path: str | Path,
    mapping: dict[str, str] | None = None,
    out: str | Path | None = None,
) -> ImportResult:
    """Read one public dataset, map its keys to labels, dedup; write JSONL atomically if `out` is given."""
    importer = get_importer(name)
    labels = resolve_mapping(name, mapping)  # checked first: a bad override should not cost a full read
    _check_path(importer, Path(path))
    rows = _read_all(importer, Path(path))
    result = _convert(name, rows, labels)
    if out is not None:
        write_jsonl(out, result.records)
        result.out = Path(out)
    return result


def _check_path(importer: Importer, path: Path) -> None:
    """DataError naming the expected file and where to get it when `path` is not there."""
    if path.exists():
        return
    wants_folder = importer.expects.endswith("/")
    what = "folder" if wants_folder else "file"
    expected = importer.expects.rstrip("/")
    hint = f"the {importer.name} importer expects the {what} {Path(expected).name!r}"
    if path.parent.is_dir() and not wants_folder:
        near = get_close_matches(path.name, [p.name for p in path.parent.iterdir() if p.is_file()], n=1)
        if near:
            hint += f" (did you mean {str(path.parent / near[0])!r}?)"
    message = (
        f"no such {what}; {hint}, laid out as <shared data folder>/{expected} by "
        f"scripts/import_public.sh; get it from {importer.origin} "
        f"(docs/importers.md, 'Getting the data', lists every set, its licence and its files)"
    )
    raise DataError([Problem(str(path), 0, "", message)])


def _read_all(importer: Importer, path: Path) -> list[RawRow]:
    """Every row, or DataError with every problem found (a fatal one ends the read)."""
    problems: list[Problem] = []
    try:
        rows = list(importer.read(path, problems))
    except DataError as exc:
        raise DataError(problems + exc.problems) from None
    if problems:
        raise DataError(problems)
    return rows


def _convert(name: str, rows: list[RawRow], labels: dict[str, Action | None]) -> ImportResult:
    result = ImportResult(name)
    first_seen: dict[str, RawRow] = {}
    for row in rows:
        # Mapping comes before dedup, so a dropped row never hides a later copy that is kept.
        reason, detail = _drop_reason(row, labels, first_seen)
        if reason:
            result.dropped.append(Dropped(reason, row.file, row.row, row.line, _excerpt(row.prompt), detail))
            continue
        first_seen[normalize_text(row.prompt)] = row
        result.records.append(_record(name, row, labels[row.key]))
    return result


def _drop_reason(row: RawRow, labels: dict[str, Action | None], first_seen: dict[str, RawRow]) -> tuple[str, str]:
    if not row.prompt.strip():
        return EMPTY, ""
    if row.key not in labels:
        return UNMAPPED, f"key {row.key!r}"
    if labels[row.key] is None:
        return MAPPED_TO_DROP, f"key {row.key!r}"
    first = first_seen.get(normalize_text(row.prompt))
    if first is not None:
        detail = f"same text as {first.file} row {first.row}"
        here, there = labels[row.key], labels[first.key]
        # (neither is None: a row mapped to None is dropped above and never becomes a first copy)
        if here is not None and there is not None and here != there:
            # the dataset labels one text two ways: worth seeing, the first copy wins
            detail += f", which is {there.name}; this copy would be {here.name}"
        return DUPLICATE, detail
    return "", ""


def _record(name: str, row: RawRow, label: Action | None) -> Record:
    record_id = "-".join(p for p in (name, row.part, str(row.row)) if p)
    meta = {"file": row.file, "row": row.row, **row.extra}
    # Leading/trailing spaces are artifacts of the source files (XSafety rows start with one).
    return Record(
        prompt=row.prompt.strip(), label=label, lang=row.lang, category=row.key, source=name, id=record_id, meta=meta
    )


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 1] + "…"
