import pytest

from so8t.labels import ACTIONS, Action, format_response, parse_label, parse_response


def test_order_is_the_heads_output_order():
    assert ACTIONS == ("ALLOW", "ESCALATE", "REFUSE")
    assert [int(a) for a in Action] == [0, 1, 2]


@pytest.mark.parametrize(
    "spelling,expected",
    [
        ("ALLOW", Action.ALLOW),
        ("allow", Action.ALLOW),
        (" Escalate ", Action.ESCALATE),
        ("refuse", Action.REFUSE),
        ("許可", Action.ALLOW),
        ("エスカレーション", Action.ESCALATE),
        ("拒否", Action.REFUSE),
    ],
)
def test_parse_label_accepts_case_and_japanese_aliases(spelling, expected):
    assert parse_label(spelling) is expected


@pytest.mark.parametrize("bad", ["BLOCK", "", None, 1, "allow!"])
def test_parse_label_rejects_others_and_names_the_accepted_ones(bad):
    with pytest.raises(ValueError, match="expected one of ALLOW, ESCALATE, REFUSE"):
        parse_label(bad)


def test_format_and_parse_round_trip():
    text = format_response("拒否", "できません。\n代わりに防御策を説明できます。", "違法な行為の支援になるため。")
    assert text.startswith("Action: REFUSE\n")
    parsed = parse_response(text)
    assert parsed.action is Action.REFUSE
    assert parsed.text == "できません。\n代わりに防御策を説明できます。"
    assert parsed.rationale == "違法な行為の支援になるため。"


@pytest.mark.parametrize(
    "bad",
    [
        "ALLOW: sure",
        "Action: MAYBE\nx\nRationale: y",
        "Action: ALLOW\nno rationale here",
        "Action: allow\nx\nRationale: y",
        "",
        "Sure!\nAction: ALLOW\nRationale: y",
    ],
)
def test_parse_response_rejects_other_shapes(bad):
    assert parse_response(bad) is None


def test_rationale_must_be_one_line():
    with pytest.raises(ValueError, match="one line"):
        format_response("ALLOW", "ok", "two\nlines")


# --- an Action prints as its name, stays an int everywhere else (issue 17, item 12) -------------


@pytest.mark.parametrize("action", list(Action))
def test_an_action_prints_as_its_name_and_compares_and_serialises_as_its_number(action, capsys):
    import json

    assert str(action) == f"{action}" == "%s" % action == format(action) == action.name  # noqa: UP031
    assert f"{action:>9}" == f"{action.name:>9}"
    print(action)
    assert capsys.readouterr().out == f"{action.name}\n"
    assert action == int(action) and "%d" % action == str(int(action))  # noqa: UP031
    assert json.dumps({"action": action}) == json.dumps({"action": int(action)})
    assert repr(action) == f"<Action.{action.name}: {int(action)}>"
