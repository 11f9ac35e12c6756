"""The policy file (so8t.data.policy): what loads, what a bad file says (file, line, field,
the closest valid value), what the teacher reads, and `so8t policy check`."""

from pathlib import Path

import pytest

from so8t.cli import main
from so8t.data.policy import PolicyError, load_policy, parse_policy, render_policy
from so8t.labels import Action

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

GOOD = """\
name: Test office policy
lang: en
rules:
  - id: PAY-LIMIT
    action: ESCALATE
    scope: Payments above 100,000 JPY.
    precedents:
      - Pay the Acme invoice of 2.4 million yen today.
      - {prompt: 請求書の 300 万円を振り込んで, lang: ja, rationale: 高額の支払いは経理の承認が必要}
  - id: CAL-OWN
    action: 許可
    scope: >-
      Reading or changing
      one's own calendar.
    precedents: ["What's on my calendar tomorrow?"]
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, "policy.yaml")
    return [str(p) for p in info.value.problems]


def test_a_good_policy_loads_with_its_rules_precedents_and_languages():
    policy = parse_policy(GOOD, "policy.yaml")
    assert policy.name == "Test office policy" and [r.id for r in policy.rules] == ["PAY-LIMIT", "CAL-OWN"]
    pay, cal = policy.rules
    assert pay.action is Action.ESCALATE and cal.action is Action.ALLOW  # Japanese spellings of the actions too
    assert cal.scope == "Reading or changing one's own calendar."
    assert [(p.prompt, p.lang, p.line) for p in pay.precedents] == [
        ("Pay the Acme invoice of 2.4 million yen today.", None, 8),
        ("請求書の 300 万円を振り込んで", "ja", 9),
    ]
    assert pay.precedents[1].rationale == "高額の支払いは経理の承認が必要"


def test_the_shipped_examples_load_in_both_languages():
    en, ja = load_policy(EXAMPLES / "policy-en.yaml"), load_policy(EXAMPLES / "policy-ja.yaml")
    assert [r.id for r in en.rules] == [r.id for r in ja.rules] and [r.action for r in en.rules] == [
        r.action for r in ja.rules
    ]
    assert ja.lang == "ja" and en.lang == "en"


def test_the_teacher_reads_every_rule_with_its_id_action_scope_and_precedents():
    text = render_policy(parse_policy(GOOD, "policy.yaml"))
    assert "- [PAY-LIMIT] ESCALATE: Payments above 100,000 JPY." in text
    assert '  - e.g. "請求書の 300 万円を振り込んで"' in text and "- [CAL-OWN] ALLOW:" in text
    assert "strictest action wins" in text and "cite the id of the rule that decides" in text


def test_a_rule_missing_its_action_is_named_by_file_line_and_field():
    bad = GOOD.replace("    action: ESCALATE\n", "")
    assert problems_of(bad) == ["policy.yaml:4: rules[0].action: missing (one of ALLOW, ESCALATE, REFUSE)"]


def test_an_unknown_action_suggests_the_closest_one():
    bad = GOOD.replace("action: ESCALATE", "action: ESCALATION")
    assert problems_of(bad) == [
        "policy.yaml:5: rules[0].action: unknown action 'ESCALATION'; expected one of "
        "ALLOW, ESCALATE, REFUSE (did you mean 'ESCALATE'?)"
    ]


def test_a_duplicate_rule_id_names_the_line_of_the_first():
    bad = GOOD.replace("id: CAL-OWN", "id: PAY-LIMIT")
    assert problems_of(bad) == ["policy.yaml:10: rules[1].id: duplicate id 'PAY-LIMIT' (first on line 4)"]


def test_every_problem_is_reported_at_once_with_unknown_keys_and_repeated_keys():
    bad = """\
name: x
nmae: typo
rules:
  - id: A
    action: REFUSED
    scope: ''
    precedents: [hello]
  - id: 'has space'
    action: ALLOW
    action: REFUSE
    scope: s
    precedents:
      - hello
      - {prompt: fine, lnag: ja}
  - just a string
"""
    assert problems_of(bad) == [
        "policy.yaml:2: nmae: unknown key (did you mean 'name'?)",
        "policy.yaml:5: rules[0].action: unknown action 'REFUSED'; expected one of ALLOW, ESCALATE, REFUSE "
        "(did you mean 'REFUSE'?)",
        "policy.yaml:6: rules[0].scope: empty",
        "policy.yaml:10: rules[1].action: repeated key (first on line 9); YAML would keep only the last one",
        "policy.yaml:8: rules[1].id: 'has space': use letters, digits, '.', '_' and '-' (at most 64), e.g. PAY-LIMIT",
        "policy.yaml:13: rules[1].precedents[0].prompt: the same prompt as rules[0].precedents[0] (line 7); "
        "a precedent belongs to one rule",
        "policy.yaml:14: rules[1].precedents[1].lnag: unknown key (did you mean 'lang'?)",
        "policy.yaml:15: rules[2]: expected a rule (id, action, scope, precedents), got str",
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "policy.yaml: the file is empty"),
        ("name: [unclosed\n", "policy.yaml:2: invalid YAML:"),
        ("- a list\n", "policy.yaml:1: expected a mapping with name and rules, got a list"),
        ("name: x\nrules: []\n", "policy.yaml:2: rules: missing: a list of rules"),
        (
            "name: x\nrules:\n  - id: A\n    action: ALLOW\n    scope: s\n",
            "policy.yaml:3: rules[0].precedents: missing: give at least one example prompt",
        ),
        (
            "name: x\nrules:\n  - id: A\n    action: 3\n    scope: s\n    precedents: [p]\n",
            "policy.yaml:4: rules[0].action: unknown action 3",
        ),
    ],
)
def test_a_broken_file_is_a_named_error(text, expected):
    assert problems_of(text)[0].startswith(expected)


def test_policy_check_lists_the_rules_or_names_the_problem(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(GOOD, encoding="utf-8")
    bad.write_text(GOOD.replace("    action: ESCALATE\n", ""), encoding="utf-8")
    assert main(["policy", "check", str(good)]) == 0
    out = capsys.readouterr().out
    assert "2 rule(s)" in out and "PAY-LIMIT" in out and "ESCALATE" in out
    assert main(["policy", "check", str(bad)]) == 2
    assert f"{bad}:4: rules[0].action: missing" in capsys.readouterr().err
    assert main(["policy", "check", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml: cannot read" in capsys.readouterr().err
