import json

import pytest

from so8t.data import DataError, Record, check_jsonl, read_jsonl, write_jsonl
from so8t.labels import Action

GOOD = {"prompt": "List my files", "label": "allow", "response": "Action: ALLOW\nListing.\nRationale: read-only."}


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_valid_file_loads_and_normalises_labels(tmp_path):
    rows = [
        GOOD,
        {"prompt": [{"role": "user", "content": "本番のテーブルを消して"}], "label": "エスカレーション", "lang": "ja"},
    ]
    f = write_lines(tmp_path / "ok.jsonl", [json.dumps(r, ensure_ascii=False) for r in rows])
    recs = read_jsonl(f)
    assert [r.label for r in recs] == [Action.ALLOW, Action.ESCALATE]
    assert recs[1].messages() == [{"role": "user", "content": "本番のテーブルを消して"}]


def test_every_problem_is_reported_with_line_and_field(tmp_path):
    f = write_lines(
        tmp_path / "bad.jsonl",
        [
            json.dumps(GOOD),
            json.dumps({"prompt": "x", "label": "BLOCK"}),  # 2: label
            "{not json",  # 3: json
            json.dumps({"prompt": "", "label": "ALLOW"}),  # 4: prompt
            json.dumps({"prompt": "x", "label": "REFUSE", "response": "Action: ALLOW\nok\nRationale: r"}),  # 5
            json.dumps({"prompt": "x", "label": "ALLOW", "difficulty": "trivial"}),  # 6: difficulty
            json.dumps({"prompt": "x", "label": "ALLOW", "colour": "red"}),  # 7: unknown field
            json.dumps({"prompt": "x"}),  # 8: missing label
            json.dumps([1, 2]),  # 9: not an object
            json.dumps({"prompt": [{"role": "assistant", "content": "hi"}], "label": "ALLOW"}),  # 10
        ],
    )
    checked = check_jsonl(f)
    got = {(p.line, p.field) for p in checked.problems}
    assert got == {
        (2, "label"),
        (3, ""),
        (4, "prompt"),
        (5, "response"),
        (6, "difficulty"),
        (7, "colour"),
        (8, "label"),
        (9, ""),
        (10, "prompt"),
    }
    assert len(checked.records) == 1  # the good row is kept, nothing silently dropped
    with pytest.raises(DataError) as exc:
        read_jsonl(f)
    assert f"{f}:2: label: unknown label 'BLOCK'" in str(exc.value)
    assert "unknown field" in str(exc.value)


def test_duplicate_ids_empty_file_and_bad_utf8(tmp_path):
    f = write_lines(tmp_path / "dup.jsonl", [json.dumps({**GOOD, "id": "a"}), json.dumps({**GOOD, "id": "a"})])
    assert [(p.line, p.field) for p in check_jsonl(f).problems] == [(2, "id")]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "empty" in str(check_jsonl(empty).problems[0])
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b'{"prompt": "\xff", "label": "ALLOW"}\n')
    assert "UTF-8" in str(check_jsonl(raw).problems[0])
    assert "cannot read" in str(check_jsonl(tmp_path / "missing.jsonl").problems[0])


def test_unlabeled_rows_allowed_when_asked(tmp_path):
    f = write_lines(tmp_path / "u.jsonl", [json.dumps({"prompt": "hello"})])
    assert read_jsonl(f, require_label=False)[0].label is None


def test_write_is_atomic_and_round_trips(tmp_path):
    out = tmp_path / "out.jsonl"
    recs = [
        Record.model_validate(GOOD),
        Record.model_validate({"prompt": "拒否して", "label": "拒否", "meta": {"k": 1}}),
    ]
    assert write_jsonl(out, recs) == 2
    assert read_jsonl(out) == recs
    assert json.loads(out.read_text(encoding="utf-8").splitlines()[1])["label"] == "REFUSE"

    def boom():
        yield recs[0]
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_jsonl(out, boom())
    assert read_jsonl(out) == recs  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left


def test_check_jsonl_gives_the_file_line_of_every_record_it_keeps(tmp_path):
    f = write_lines(
        tmp_path / "mixed.jsonl", [json.dumps(GOOD), "", "{broken", json.dumps({"prompt": "b", "label": "REFUSE"})]
    )
    checked = check_jsonl(f)
    assert [r.prompt for r in checked.records] == ["List my files", "b"]
    assert checked.lines == [1, 4]


def test_a_teacher_field_is_optional_and_round_trips(tmp_path):
    row = {**GOOD, "label": "ALLOW", "source": "distill", "teacher": "qwen2.5:32b"}
    f = write_lines(tmp_path / "t.jsonl", [json.dumps(row)])
    rec = read_jsonl(f)[0]
    assert rec.teacher == "qwen2.5:32b" and rec.to_json()["teacher"] == "qwen2.5:32b"
    assert "teacher" not in read_jsonl(write_lines(tmp_path / "u.jsonl", [json.dumps(GOOD)]))[0].to_json()


def test_a_step_that_needs_a_label_names_the_record_without_one():
    assert Record.model_validate(GOOD).required_label() == Action.ALLOW
    with pytest.raises(ValueError, match=r"record 'row-7' has no label"):
        Record(prompt="x", id="row-7").required_label()
    with pytest.raises(ValueError, match=r"record 'List my files' has no label"):
        Record(prompt="List my files").required_label()
