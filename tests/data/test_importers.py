"""Importers: mapping per dataset, overrides, drop/dedup reporting, bad input, atomic output.

Fixtures under tests/fixtures/importers/ are a few hand-written rows in each set's real format
(harmful rows are placeholders). The last test runs every importer on the real shared data
when it is present and is skipped otherwise.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from so8t.data import DataError, read_jsonl
from so8t.data.importers import IMPORTERS, import_dataset, list_importers, resolve_mapping
from so8t.labels import ACTIONS, Action

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "importers"
REPO = Path(__file__).resolve().parents[2]

A, E, R = "ALLOW", "ESCALATE", "REFUSE"

# importer -> (fixture, expected (category, label) per kept record, in file order)
EXPECTED = {
    "advbench": ("advbench.csv", [("harmful behavior", R)] * 3),
    "strongreject": ("strongreject.csv", [("Violence", R), ("Sexual content", R), ("Non-violent crimes", R)]),
    "do-not-answer": (
        "do_not_answer.csv",
        [
            ("Adult Content", R),
            ("Mental Health or Overreliance Crisis", E),
            ("Treat Chatbot as a Human", A),
            ("Causing material harm by disseminating misinformation e.g. in medicine or law", E),
            ("Disseminating false or misleading information", A),
            ("Assisting illegal activities", R),
            ("Compromise privacy by leaking or inferring private information (person/individual)", R),
        ],
    ),
    "coconot": (
        "coconot.jsonl",
        [
            ("Requests with safety concerns", R),
            ("Incomplete requests", A),
            ("Unsupported requests", A),
            ("Indeterminate requests", A),
            ("Humanizing requests", A),
        ],
    ),
    "coconot-contrast": (
        "coconot_contrast.jsonl",
        [
            ("Requests with safety concerns", A),
            ("Incomplete requests", A),
            ("Unsupported requests", A),
        ],
    ),
    "toxic-chat": (
        "toxic_chat.json",
        [
            ("non-toxic", A),
            ("toxic", R),
            ("toxic+jailbreaking", R),
            ("jailbreaking", R),
        ],
    ),
    "medicheck": ("medicheck-expert.csv", [("not medical", A), ("non-serious", A), ("serious", E), ("critical", E)]),
    "medicheck-neg": ("medicheck-neg.csv", [("not medical", A)] * 3),
    "japanese-toxic": (
        "japanese_toxic.csv",
        [
            ("Not Toxic", A),
            ("Hard to Say", E),
            ("Toxic", R),
            ("Very Toxic", R),
            ("Toxic", R),  # 1 Not Toxic vs 1 Toxic: a tie goes to the more severe level
            ("Hard to Say", E),  # 1 Not Toxic vs 1 Hard to Say
        ],
    ),
    "xsafety": (
        "xsafety",
        [
            ("Insult", A),
            ("Insult", A),
            ("Mental_Health", E),
            ("Crimes_And_Illegal_Activities", R),
            ("Mental_Health", E),
            ("commonsense", A),
        ],
    ),
    "beavertails": (
        "beavertails.csv",
        [
            ("animal_abuse", R),
            ("controversial_topics,politics", E),
            ("financial_crime,property_crime,theft", R),
        ],
    ),
}


def _import_text(name, filename, text, folder, **kw):
    f = folder / filename
    f.write_text(text, encoding="utf-8")
    return import_dataset(name, f, **kw)


def problems_of(exc_info):
    return [(Path(p.file).name, p.line, p.field) for p in exc_info.value.problems]


def labelled(result):
    return [(r.category, r.label.name) for r in result.records]


def test_registry_has_one_importer_per_public_set():
    assert set(IMPORTERS) == set(EXPECTED)
    listed = list_importers()
    assert [name for name, _ in listed] == list(IMPORTERS)
    assert all(desc and "\n" not in desc for _, desc in listed)


def test_unknown_importer_names_the_known_ones():
    with pytest.raises(ValueError, match="known importers: advbench"):
        import_dataset("nope", FIXTURES / "advbench.csv")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_default_mapping_gives_the_expected_labels(name):
    fixture, expected = EXPECTED[name]
    result = import_dataset(name, FIXTURES / fixture)
    assert labelled(result) == expected
    for rec in result.records:
        assert rec.source == name
        assert rec.lang in ("en", "ja")
        assert rec.response is None and rec.difficulty is None
        assert rec.id.startswith(f"{name}-") and rec.id.endswith(f"-{rec.meta['row']}")
        assert rec.meta["file"] and rec.prompt == rec.prompt.strip()
    assert len({r.id for r in result.records}) == len(result.records)


def test_record_fields_and_provenance():
    rec = import_dataset("strongreject", FIXTURES / "strongreject.csv").records[1]
    assert rec.to_json() == {
        "prompt": "placeholder forbidden prompt about adult content",
        "label": "REFUSE",
        "lang": "en",
        "category": "Sexual content",
        "source": "strongreject",
        "id": "strongreject-2",
        "meta": {"file": "strongreject.csv", "row": 2, "origin": "DAN"},
    }


def test_medicheck_crowd_file_uses_its_label_column():
    crowd = import_dataset("medicheck", FIXTURES / "medicheck-crowd.csv")
    assert labelled(crowd) == EXPECTED["medicheck"][1]
    assert [r.id for r in crowd.records] == [f"medicheck-crowd-{i}" for i in range(1, 5)]


def test_medicheck_neg_reads_backslash_escaped_quotes():
    prompts = [r.prompt for r in import_dataset("medicheck-neg", FIXTURES / "medicheck-neg.csv").records]
    assert prompts[1] == 'What made you say "wow" today, and why?'


def test_xsafety_language_from_folder_category_from_file_name():
    result = import_dataset("xsafety", FIXTURES / "xsafety")
    langs = [(r.lang, r.category) for r in result.records]
    assert langs[:3] == [("en", "Insult"), ("en", "Insult"), ("en", "Mental_Health")]
    assert {lang for lang, _ in langs[3:]} == {"ja"}
    # BOM stripped, stray trailing comma ignored, leading space of the source removed
    assert result.records[0].prompt == "placeholder insult aimed at the assistant"
    assert result.records[2].prompt == "I feel stressed about exams and cannot sleep."
    assert result.records[0].meta == {"file": "en/Insult_n.csv", "row": 1}
    assert result.records[3].id == "xsafety-ja-Crimes_And_Illegal_Activities-1"
    # one language folder on its own works too
    assert {r.lang for r in import_dataset("xsafety", FIXTURES / "xsafety" / "ja").records} == {"ja"}


def test_japanese_toxic_keeps_votes_and_marks_ties():
    recs = import_dataset("japanese-toxic", FIXTURES / "japanese_toxic.csv").records
    assert recs[4].meta["votes"] == {"Not Toxic": 1, "Hard to Say": 0, "Toxic": 1, "Very Toxic": 0}
    assert recs[4].meta["tie"] == ["Not Toxic", "Toxic"]
    assert "tie" not in recs[0].meta


# --- overrides --------------------------------------------------------------------------------


def test_overrides_merge_over_the_default_mapping():
    result = import_dataset(
        "do-not-answer",
        FIXTURES / "do_not_answer.csv",
        mapping={
            "treat chatbot as a human": "drop",  # keys match ignoring case
            "Adult Content": "escalate",
            "Disseminating false or misleading information": "拒否",
        },
    )
    got = dict(labelled(result))
    assert "Treat Chatbot as a Human" not in got
    assert got["Adult Content"] == E
    assert got["Disseminating false or misleading information"] == R
    assert got["Assisting illegal activities"] == R  # untouched default


def test_resolve_mapping_keeps_defaults_and_drop_is_none():
    labels = resolve_mapping("toxic-chat", {"toxic": "ESCALATE", "jailbreaking": "DROP"})
    assert labels == {
        "non-toxic": Action.ALLOW,
        "toxic": Action.ESCALATE,
        "jailbreaking": None,
        "toxic+jailbreaking": Action.REFUSE,
    }
    assert IMPORTERS["toxic-chat"].mapping["toxic"] == "REFUSE"  # the default is not changed


def test_unknown_override_key_names_the_known_keys():
    with pytest.raises(ValueError) as err:
        import_dataset("medicheck", FIXTURES / "medicheck-expert.csv", mapping={"urgent": "ESCALATE"})
    msg = str(err.value)
    assert "'urgent'" in msg and "known keys" in msg
    assert all(repr(k) in msg for k in ("not medical", "non-serious", "serious", "critical"))


def test_bad_override_value_is_rejected():
    with pytest.raises(ValueError, match="'serious'.*'drop'"):
        import_dataset("medicheck", FIXTURES / "medicheck-expert.csv", mapping={"serious": "BLOCK"})


# --- drop and dedup reporting -----------------------------------------------------------------


def test_duplicates_and_empty_prompts_are_reported():
    result = import_dataset("advbench", FIXTURES / "advbench.csv")
    assert [(d.reason, d.row, d.line) for d in result.dropped] == [("duplicate", 3, 4), ("empty prompt", 4, 5)]
    dup = result.dropped[0]
    assert dup.detail == "same text as advbench.csv row 1"
    assert dup.excerpt == "Placeholder HARMFUL request 1"
    # a quoted field across two lines: the next row's line number still matches the file
    assert result.records[-1].meta["row"] == 5
    assert result.records[-1].prompt.endswith("with a comma\nand a second line")
    assert result.dropped_by_reason() == {"duplicate": 1, "empty prompt": 1}


def test_duplicate_across_json_instances():
    result = import_dataset("toxic-chat", FIXTURES / "toxic_chat.json")
    assert [(d.reason, d.row, d.detail) for d in result.dropped] == [
        ("duplicate", 5, "same text as toxic_chat.json row 1")
    ]


def test_duplicate_with_a_different_label_says_so(tmp_path):
    # row 1 grades 'Why is the sky blue?' 0 (ALLOW); a later copy graded 2 would be ESCALATE
    text = (FIXTURES / "medicheck-expert.csv").read_text(encoding="utf-8") + "Why is the sky blue?,2,r,X,,,,\n"
    result = _import_text("medicheck", "medicheck-expert.csv", text, tmp_path)
    assert (
        result.dropped[0].detail
        == "same text as medicheck-expert.csv row 1, which is ALLOW; this copy would be ESCALATE"
    )


def test_mapped_to_drop_and_unmapped_keys_are_reported():
    result = import_dataset("strongreject", FIXTURES / "strongreject.csv", mapping={"Violence": "drop"})
    assert [(d.reason, d.row, d.detail) for d in result.dropped] == [
        ("mapped to drop", 1, "key 'Violence'"),
        ("unmapped key", 3, "key 'Brand new category'"),
    ]


def test_dropped_row_does_not_hide_a_kept_copy(tmp_path):
    f = tmp_path / "sr.csv"
    f.write_text(
        "category,source,forbidden_prompt\nViolence,x,same text\nSexual content,x,Same  text\n", encoding="utf-8"
    )
    result = import_dataset("strongreject", f, mapping={"Violence": "drop"})
    assert labelled(result) == [("Sexual content", R)]
    assert [d.reason for d in result.dropped] == ["mapped to drop"]


def test_summary_counts_kept_by_label_and_dropped_by_reason():
    summary = import_dataset("advbench", FIXTURES / "advbench.csv").summary()
    assert "advbench: 5 rows read, 3 kept, 2 dropped" in summary
    assert "ALLOW 0, ESCALATE 0, REFUSE 3" in summary
    assert "duplicate 1, empty prompt 1" in summary
    clean = import_dataset("beavertails", FIXTURES / "beavertails.csv").summary()
    assert "dropped: none" in clean and "ALLOW 0, ESCALATE 1, REFUSE 2" in clean


# --- bad input --------------------------------------------------------------------------------


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ValueError, match="missing.csv: no such file; the advbench importer expects"):
        import_dataset("advbench", tmp_path / "missing.csv")


def test_missing_column_names_file_line_and_column(tmp_path):
    with pytest.raises(DataError) as err:
        _import_text("do-not-answer", "dna.csv", "id,risk_area,question\n0,x,q\n", tmp_path)
    assert problems_of(err) == [("dna.csv", 1, "types_of_harm")]
    assert "the header has 'id', 'risk_area', 'question'" in str(err.value)


def test_medicheck_needs_one_of_its_label_columns(tmp_path):
    with pytest.raises(DataError, match="query-label-expert.*query-expert"):
        _import_text("medicheck", "m.csv", "query,grade\nq,1\n", tmp_path)


def test_every_bad_row_is_reported_with_line_and_column(tmp_path):
    text = (
        "query,query-label-expert\n"
        "fine question?,1\n"
        "bad grade?,X\n"  # line 3
        "too,many,fields\n"  # line 4
        "another bad grade?,7\n"  # line 5
    )
    with pytest.raises(DataError) as err:
        _import_text("medicheck", "m.csv", text, tmp_path)
    assert problems_of(err) == [
        ("m.csv", 3, "query-label-expert"),
        ("m.csv", 4, ""),
        ("m.csv", 5, "query-label-expert"),
    ]
    assert "unknown grade 'X'" in str(err.value)


def test_malformed_jsonl_line(tmp_path):
    good = json.dumps({"category": "Incomplete requests", "prompt": "Translate it."})
    text = "\n".join([good, "{not json", json.dumps({"category": "Incomplete requests"}), json.dumps([1])]) + "\n"
    with pytest.raises(DataError) as err:
        _import_text("coconot", "c.jsonl", text, tmp_path)
    assert problems_of(err) == [("c.jsonl", 2, ""), ("c.jsonl", 3, "prompt"), ("c.jsonl", 4, "")]


def test_malformed_csv_quote(tmp_path):
    with pytest.raises(DataError) as err:
        _import_text("advbench", "a.csv", 'goal,target\nok,fine\n"broken" quote,x\n', tmp_path)
    assert problems_of(err) == [("a.csv", 3, "")]
    assert "malformed CSV" in str(err.value)


def test_bad_toxic_chat_flag_names_the_field(tmp_path):
    data = json.loads((FIXTURES / "toxic_chat.json").read_text(encoding="utf-8"))
    data["instances"][2]["annotations"]["jailbreaking"]["majority_human"] = "maybe"
    with pytest.raises(DataError) as err:
        _import_text("toxic-chat", "t.json", json.dumps(data), tmp_path)
    assert problems_of(err) == [("t.json", 0, "instances[2].annotations.jailbreaking.majority_human")]
    with pytest.raises(DataError, match=r"t.json:1: invalid JSON"):
        _import_text("toxic-chat", "t.json", "{oops", tmp_path)


def test_bad_vote_count(tmp_path):
    head = (FIXTURES / "japanese_toxic.csv").read_text(encoding="utf-8").splitlines()[0]
    with pytest.raises(DataError) as err:
        _import_text("japanese-toxic", "j.csv", head + "\n0,テキスト,2,x,0,0,0,0,0,0,0,0,0,2\n", tmp_path)
    assert problems_of(err) == [("j.csv", 2, "Hard to Say")]


def test_xsafety_needs_a_folder_and_one_column(tmp_path):
    with pytest.raises(DataError, match="XSafety folder"):
        import_dataset("xsafety", FIXTURES / "advbench.csv")
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "Insult_n.csv").write_text("ok\ntwo,fields\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        import_dataset("xsafety", tmp_path)
    assert problems_of(err) == [("Insult_n.csv", 2, "")]


def test_invalid_utf8_names_the_line(tmp_path):
    f = tmp_path / "a.csv"
    f.write_bytes(b"goal,target\nok,fine\n\xff\xfe,x\n")
    with pytest.raises(DataError, match=r"a.csv:3: not valid UTF-8"):
        import_dataset("advbench", f)


# --- output -----------------------------------------------------------------------------------


def test_out_is_written_and_reads_back(tmp_path):
    out = tmp_path / "sub" / "dna.jsonl"
    result = import_dataset("do-not-answer", FIXTURES / "do_not_answer.csv", out=out)
    assert result.out == out and f"wrote 7 record(s) to {out}" in result.summary()
    assert read_jsonl(out) == result.records
    assert [p.name for p in out.parent.iterdir()] == ["dna.jsonl"]  # no temp file left behind


def test_nothing_is_written_on_bad_input_or_bad_mapping(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("previous content\n", encoding="utf-8")
    with pytest.raises(DataError):
        _import_text("advbench", "a.csv", "target\nx\n", tmp_path, out=out)
    with pytest.raises(ValueError):
        import_dataset("advbench", FIXTURES / "advbench.csv", mapping={"nope": "ALLOW"}, out=out)
    assert out.read_text(encoding="utf-8") == "previous content\n"


def test_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    import so8t.data.io as io_mod

    out = tmp_path / "out.jsonl"
    out.write_text("previous content\n", encoding="utf-8")
    real_dumps, calls = io_mod.json.dumps, []

    def failing_dumps(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_dumps(*args, **kwargs)

    monkeypatch.setattr(io_mod.json, "dumps", failing_dumps)
    with pytest.raises(OSError, match="disk full"):
        import_dataset("advbench", FIXTURES / "advbench.csv", out=out)
    assert out.read_text(encoding="utf-8") == "previous content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_cli_import(tmp_path, capsys):
    from so8t.cli import main

    out = tmp_path / "bt.jsonl"
    rc = main(
        [
            "data",
            "import",
            "beavertails",
            str(FIXTURES / "beavertails.csv"),
            "-o",
            str(out),
            "--map",
            "controversial_topics,politics=ALLOW",
        ]
    )
    assert rc == 0
    assert "ALLOW 1, ESCALATE 0, REFUSE 2" in capsys.readouterr().out
    assert [r.label for r in read_jsonl(out)] == [Action.REFUSE, Action.ALLOW, Action.REFUSE]


def test_docs_list_every_importer_and_default_key():
    docs = (REPO / "docs" / "importers.md").read_text(encoding="utf-8")
    for name, importer in IMPORTERS.items():
        assert f"`{name}`" in docs, name
        for key, value in importer.mapping.items():
            assert f"| {key} | {value} |" in docs, (name, key)


# --- the real public data, when it is there ---------------------------------------------------

SHARED = Path(os.environ.get("SO8T_SHARED_DATA") or Path(__file__).resolve().parents[3] / "shared" / "data")

REAL_FILES = {
    "advbench": ["advbench/harmful_behaviors.csv"],
    "strongreject": ["strongreject/strongreject_dataset.csv"],
    "do-not-answer": ["do-not-answer/do_not_answer_en.csv"],
    "coconot": ["coconot/coconot_eval.jsonl"],
    "coconot-contrast": ["coconot/coconot_contrast_eval.jsonl"],
    "toxic-chat": ["toxic-chat/toxic_chat_train.json"],
    "medicheck": ["medical-safety/medicheck-expert.csv", "medical-safety/medicheck-crowd.csv"],
    "medicheck-neg": ["medical-safety/medicheck-neg.csv"],
    "japanese-toxic": ["japanese-toxic/subset.csv"],
    "xsafety": ["xsafety"],
    "beavertails": ["beavertails-sample/beavertails_sample.csv"],
}


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"no shared public data at {SHARED}")
def test_every_importer_on_the_real_data():
    assert set(REAL_FILES) == set(IMPORTERS)
    seen_labels = set()
    for name, paths in REAL_FILES.items():
        for rel in paths:
            result = import_dataset(name, SHARED / rel)
            rows = len(result.records) + len(result.dropped)
            assert result.records, rel
            assert len(result.dropped) < 0.05 * rows, (rel, result.summary())
            assert all(r.label is not None and r.source == name and r.category for r in result.records), rel
            assert {r.lang for r in result.records} <= {"en", "ja"}, rel
            assert len({r.id for r in result.records}) == len(result.records), rel
            seen_labels |= {r.label.name for r in result.records}
    assert seen_labels == set(ACTIONS)


# --- a missing file names what is expected (issue 17, item 4) ----------------------------------


@pytest.mark.parametrize("name", list(IMPORTERS))
def test_a_missing_path_names_the_expected_file_where_to_get_it_and_the_docs(tmp_path, name):
    importer = IMPORTERS[name]
    expected = importer.expects.rstrip("/")
    missing = tmp_path / "data" / expected
    with pytest.raises(DataError) as err:
        import_dataset(name, missing)
    [problem] = err.value.problems
    assert problem.file == str(missing)
    assert (
        f"expects the {'folder' if importer.expects.endswith('/') else 'file'} {Path(expected).name!r}"
        in problem.message
    )
    assert f"<shared data folder>/{expected}" in problem.message
    assert importer.origin and importer.origin in problem.message
    assert "docs/importers.md" in problem.message


def test_a_missing_file_suggests_the_closest_file_in_its_folder(tmp_path):
    (tmp_path / "harmful_behaviors.csv").write_text("goal,target\nx,y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"did you mean '.*harmful_behaviors\.csv'"):
        import_dataset("advbench", tmp_path / "harmful_behavior.csv")


def test_the_docs_give_every_importer_its_licence_source_and_file():
    docs = (REPO / "docs" / "importers.md").read_text(encoding="utf-8")
    section = docs.split("## Getting the data", 1)[1].split("\n## ", 1)[0]
    rows = {line.split("|")[1].strip().strip("`"): line for line in section.splitlines() if line.startswith("| `")}
    assert set(rows) == set(IMPORTERS)
    for name, importer in IMPORTERS.items():
        assert importer.expects.rstrip("/") in rows[name], name
