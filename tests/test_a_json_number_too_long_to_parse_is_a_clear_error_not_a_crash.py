"""A JSON text with an integer of more than 4,300 digits is not a syntax error: `json.loads`
raises a plain ValueError for it. Every parser of user-supplied JSON used to catch only
JSONDecodeError, so such a line escaped as a crash with no file or line. Each now reports it
where the input came from (regression tests, one per parser)."""

import pytest

from so8t import jsonerr

HUGE = "9" * 5000


def test_describe_says_what_is_wrong_for_both_kinds_of_error():
    import json

    with pytest.raises(ValueError) as big:
        json.loads(HUGE)
    with pytest.raises(ValueError) as syntax:
        json.loads('{"a": }')
    assert "digits" in jsonerr.describe(big.value)
    assert jsonerr.describe(syntax.value).endswith("(line 1, column 7)")


def test_a_training_file_names_the_file_and_line(tmp_path):
    from so8t.data import DataError, read_jsonl

    f = tmp_path / "rows.jsonl"
    f.write_text(
        '{"prompt": "hi", "label": "ALLOW"}\n{"prompt": "x", "label": "ALLOW", "n": ' + HUGE + "}\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"rows.jsonl:2: invalid JSON: .*digits"):
        read_jsonl(f)


def test_an_imported_jsonl_names_the_file_and_line(tmp_path):
    from so8t.data import DataError
    from so8t.data.importers import import_dataset

    f = tmp_path / "coconot.jsonl"
    f.write_text('{"prompt": "p", "category": "c", "id": ' + HUGE + "}\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"coconot.jsonl:1: invalid JSON: .*digits"):
        import_dataset("coconot", f)


def test_a_tool_call_from_the_model_is_a_malformed_proposal_never_run():
    from so8t.agent.toolloop import parse_text_calls

    _, proposals = parse_text_calls('<tool_call>{"name": "files", "arguments": {"n": ' + HUGE + "}}</tool_call>")
    assert len(proposals) == 1 and proposals[0].arguments is None and "digits" in proposals[0].error


def test_an_autonomy_state_file_is_an_error_naming_the_file(tmp_path):
    from so8t.agent.autonomy import AutonomyError, read_state

    f = tmp_path / "autonomy.json"
    f.write_text('{"format": ' + HUGE + "}", encoding="utf-8")
    with pytest.raises(AutonomyError, match=r"autonomy.json: not valid JSON .*digits"):
        read_state(f)
