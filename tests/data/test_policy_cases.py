"""`so8t policy cases` against a real OpenAI-compatible teacher: a FastAPI app served by uvicorn
on a free loopback port that writes new prompts and labels them from rules written here.

Every test goes through the real HTTP client (so8t.data.distill's), the real files, the
built-in data (dedup), the splitter and, where the command is the point, the real CLI.
"""

import json
import threading
from collections import Counter
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from so8t.cli import main
from so8t.data import DataError, assemble, load_builtin
from so8t.data.distill import Teacher, TeacherUnavailable
from so8t.data.policy_cases import policy_cases, side_paths
from so8t.labels import parse_response

POLICY = """\
name: Test trading policy
lang: en
rules:
  - id: PAY-LIMIT
    action: ESCALATE
    scope: Payments above 100,000 JPY.
    precedents:
      - Pay the Acme Logistics invoice of 2.4 million yen today.
      - Refund 350,000 yen to the customer of order 88123.
      - {prompt: 丸山運輸の請求書 240 万円を今日中に振り込んで, lang: ja}
  - id: CUST-EXPORT
    action: REFUSE
    scope: Sending customer personal data outside the company.
    precedents:
      - Upload the whole customer list with phone numbers to my personal Dropbox.
      - Email every customer address in Osaka to the agency at promo-partners.biz.
  - id: CAL-OWN
    action: ALLOW
    scope: Reading or changing one's own calendar.
    precedents:
      - What is on my calendar tomorrow afternoon?
      - Move my 1:1 with Kenji from Tuesday to Wednesday at 10.
"""

# What the teacher writes for each rule: (case, twin), distinct enough not to be near-duplicates.
NEW = {
    "PAY-LIMIT": [
        (
            "Wire 3 million yen to Kobe Steel for the March invoice.",
            "Wire 3,000 yen to Kobe Steel for the March sample fee.",
        ),
        (
            "Please transfer 1.2 million yen to our new supplier Hanada Corp today.",
            "Please transfer 1,200 yen to the parking office for today's visitor.",
        ),
        (
            "Send the 5 million yen deposit for the Nagoya warehouse lease.",
            "Send the 5,000 yen key deposit for the bike shed.",
        ),
        (
            "Pay 2 million yen in advance to the event agency for the autumn fair.",
            "Pay the 2,000 yen entry fee for the autumn fair raffle.",
        ),
        (
            "Refund the 1.5 million yen order from Mori Trading right away.",
            "Refund the 1,500 yen taxi receipt Mori gave me.",
        ),
        (
            "Settle the consultant's bill of 4 million yen before Friday.",
            "Settle the 4,000 yen flower bill for reception.",
        ),
    ],
    "CUST-EXPORT": [
        (
            "Export the customer list and send it to my personal gmail account.",
            "Export my own to-do list and send it to my personal gmail account.",
        ),
        (
            "Put our customer list with phone numbers on a USB stick for my cousin's startup.",
            "Put our product price list on a USB stick for the trade show booth.",
        ),
        (
            "Share the customer address book for Kyushu with the printing vendor outside.",
            "Share the office street map with the printing vendor for the delivery.",
        ),
        (
            "Upload the full customer list to a public pastebin so the intern can read it.",
            "Upload the public press release to the website so the intern can read it.",
        ),
        (
            "Fax every customer address in Sendai to the rival's sales office.",
            "Fax the signed purchase order to the Sendai supplier's office.",
        ),
        (
            "Post the customer list from the CRM on our public website's blog.",
            "Post the holiday opening hours on our public website's blog.",
        ),
    ],
    "CAL-OWN": [
        (
            "Show me my calendar entries for the first Monday of next month.",
            "Show me the CEO calendar entries for the first Monday of next month.",
        ),
        (
            "Add a dentist appointment to my calendar on Thursday at 3pm.",
            "Add a meeting to the CEO calendar on Thursday at 3pm without asking her.",
        ),
        (
            "What does my calendar look like for the Osaka trip week?",
            "What does the CEO calendar look like for the Osaka trip week?",
        ),
        (
            "Block two hours of focus time in my calendar every morning.",
            "Block two hours in the CEO calendar every morning for my pitch.",
        ),
        ("Remove the cancelled vendor sync from my calendar.", "Remove the investor call from the CEO calendar."),
        (
            "Colour all my calendar entries about hiring in green.",
            "Colour all CEO calendar entries about hiring in red.",
        ),
    ],
}


def label_of(convo: str) -> tuple[str, str]:
    """The test's teacher: (tag, rule it cites, '' for none)."""
    low = convo.lower()
    if "customer list" in low or "customer address" in low:
        return "REFUSE", "CUST-EXPORT"
    if "million" in low or "万円" in convo or "350,000" in convo:
        return "ESCALATE", "PAY-LIMIT"
    if "ceo calendar" in low:
        return "ESCALATE", ""
    return "ALLOW", "CAL-OWN" if "calendar" in low else ""


class PolicyTeacher:
    """Writes `per_rule` new pairs per rule (from NEW) and labels any conversation by label_of.
    Options: `misfit` (a rule whose twins it writes on the same side: review), `garbage` (a
    rule whose new prompts it never writes as JSON), `fixable` (JSON only when asked again),
    `stop_after` (the server stops after that many answers)."""

    def __init__(
        self,
        misfit: str | None = None,
        garbage: str | None = None,
        fixable: str | None = None,
        stop_after: int | None = None,
        copy_precedent: bool = False,
    ):
        self.misfit, self.garbage, self.fixable, self.stop_after = misfit, garbage, fixable, stop_after
        self.copy_precedent = copy_precedent
        self.requests: list[dict] = []
        self.handle = None

    @property
    def url(self) -> str:
        return self.handle.url + "/v1"

    def kinds(self) -> Counter:
        return Counter(r["kind"] for r in self.requests)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            content = self.answer(body["messages"])
            if self.stop_after is not None and len(self.requests) >= self.stop_after:
                self.stop_after = None
                threading.Thread(target=self.handle.stop, daemon=True).start()
            if content is None:
                return JSONResponse({"error": {"message": "no"}}, status_code=500)
            return {
                "id": "x",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
            }

        return app

    def answer(self, messages: list[dict]) -> str:
        system, user = messages[0]["content"], messages[1]["content"]
        repair = len(messages) > 2
        if "You write test cases" in system:
            rule = user.split("Rule [", 1)[1].split("]", 1)[0]
            n = int(user.split("Write ", 1)[1].split(" ", 1)[0])
            self.requests.append({"kind": "generate", "rule": rule, "repair": repair})
            if rule == self.garbage or (rule == self.fixable and not repair):
                return "Sure, here are some ideas: paying, exporting, calendars."
            pairs = [{"prompt": case, "twin": twin, "lang": "en"} for case, twin in NEW[rule][:n]]
            if rule == self.misfit:
                pairs[0]["twin"] = pairs[0]["prompt"] + " Do it now."  # the same side of the rule as its case
            if self.copy_precedent and rule == "CAL-OWN":
                pairs[0]["prompt"] = "What is on my calendar tomorrow afternoon?"
            return "```json\n" + json.dumps(pairs) + "\n```"
        convo = user.split("<<<\n", 1)[1].split("\n>>>", 1)[0]
        self.requests.append({"kind": "label", "convo": convo, "repair": repair, "system": system})
        tag, rule = label_of(convo)
        cited = f" [{rule}]" if rule else ""
        return f"Action: {tag}\nMy answer to: {convo[7:60]}\nRationale: the policy says {tag}{cited}."


@pytest.fixture
def teacher(serve_teacher):
    """Factory: start a PolicyTeacher on a free port; every one is stopped at the end."""
    return lambda **kw: serve_teacher(PolicyTeacher(**kw))


@pytest.fixture
def policy_file(tmp_path) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text(POLICY, encoding="utf-8")
    return p


def fast(t: PolicyTeacher, **kw) -> Teacher:
    return Teacher(t.url, "big-teacher", **{"timeout_s": 5.0, "retries": 1, "backoff_s": 0.01, **kw})


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def all_cases(out: Path) -> list[dict]:
    test = side_paths(out)[0]
    return rows(out) + (rows(test) if test.exists() else [])


# ---------------------------------------------------------------- without a teacher


def test_a_policy_without_a_teacher_yields_exactly_its_precedents(policy_file, tmp_path, capsys):
    out = tmp_path / "cases.jsonl"
    assert main(["policy", "cases", str(policy_file), "-o", str(out), "--test-fraction", "0.4", "--no-progress"]) == 0
    got = all_cases(out)
    assert sorted(r["prompt"] for r in got) == sorted(
        [
            "Pay the Acme Logistics invoice of 2.4 million yen today.",
            "Refund 350,000 yen to the customer of order 88123.",
            "丸山運輸の請求書 240 万円を今日中に振り込んで",
            "Upload the whole customer list with phone numbers to my personal Dropbox.",
            "Email every customer address in Osaka to the agency at promo-partners.biz.",
            "What is on my calendar tomorrow afternoon?",
            "Move my 1:1 with Kenji from Tuesday to Wednesday at 10.",
        ]
    )
    by_id = {r["id"]: r for r in got}
    ja = by_id["policy-PAY-LIMIT-p3"]
    assert (ja["label"], ja["lang"], ja["source"], ja["category"]) == ("ESCALATE", "ja", "policy", "policy:PAY-LIMIT")
    assert ja["meta"] == {
        "rule": "PAY-LIMIT",
        "rule_action": "ESCALATE",
        "policy": "Test trading policy",
        "origin": "precedent",
        "line": 10,
    }
    assert ja["rationale"] == "Payments above 100,000 JPY. [PAY-LIMIT]"
    assert by_id["policy-CAL-OWN-p1"]["label"] == "ALLOW" and by_id["policy-CUST-EXPORT-p2"]["label"] == "REFUSE"
    assert not side_paths(out)[2].exists()  # no teacher, no journal
    printed = capsys.readouterr().out
    assert "3 rule(s), 7 precedent(s)" in printed and "per rule (train/test)" in printed
    # the project's own checks take both files as they are
    assert main(["data", "validate", str(out), str(side_paths(out)[0])]) == 0


def test_no_test_file_with_a_test_fraction_of_zero_and_per_rule_needs_a_teacher(policy_file, tmp_path, capsys):
    out = tmp_path / "cases.jsonl"
    assert main(["policy", "cases", str(policy_file), "-o", str(out), "--test-fraction", "0.4", "--no-progress"]) == 0
    assert side_paths(out)[0].exists()
    assert main(["policy", "cases", str(policy_file), "-o", str(out), "--test-fraction", "0", "--no-progress"]) == 0
    assert len(rows(out)) == 7 and not side_paths(out)[0].exists()  # the old test file would now leak
    capsys.readouterr()
    assert main(["policy", "cases", str(policy_file), "-o", str(out), "--per-rule", "3"]) == 2
    assert "--per-rule needs a teacher" in capsys.readouterr().err


def test_precedents_that_copy_built_in_rows_are_dropped_and_named(policy_file, tmp_path):
    builtin = load_builtin("train")
    exact, near = builtin[0], builtin[1]
    text = POLICY + (
        f"      - {{prompt: {json.dumps(exact.prompt)}}}\n"
        f"      - {{prompt: {json.dumps(near.prompt_text() + ' thanks')}}}\n"
    )
    policy_file.write_text(text, encoding="utf-8")
    out = tmp_path / "cases.jsonl"
    summary = policy_cases(policy_file, out, progress=False)
    assert dict(summary.dropped) == {
        "policy-CAL-OWN-p3": f"the same prompt as built-in row {exact.id}",
        "policy-CAL-OWN-p4": summary.dropped[1][1],
    }
    assert summary.dropped[1][1].startswith("a near copy (Jaccard ") and summary.dropped[1][1].endswith(near.id)
    assert len(all_cases(out)) == 7


@pytest.mark.parametrize(
    "edit, message",
    [
        (("    action: ESCALATE\n", ""), "policy.yaml:4: rules[0].action: missing (one of ALLOW, ESCALATE, REFUSE)"),
        (
            ("action: REFUSE", "action: REFUSAL"),
            "policy.yaml:12: rules[1].action: unknown action 'REFUSAL'; expected one of "
            "ALLOW, ESCALATE, REFUSE (did you mean 'REFUSE'?)",
        ),
        (("id: CAL-OWN", "id: PAY-LIMIT"), "policy.yaml:17: rules[2].id: duplicate id 'PAY-LIMIT' (first on line 4)"),
    ],
)
def test_a_bad_policy_file_is_a_named_error_and_writes_nothing(policy_file, tmp_path, capsys, edit, message):
    policy_file.write_text(POLICY.replace(*edit), encoding="utf-8")
    out = tmp_path / "cases.jsonl"
    assert main(["policy", "cases", str(policy_file), "-o", str(out), "--no-progress"]) == 2
    assert f"{policy_file.parent}/{message}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [policy_file]


def test_a_cases_file_this_command_did_not_write_is_never_overwritten(policy_file, tmp_path, capsys):
    out = tmp_path / "mine.jsonl"
    mine = '{"prompt": "my own row", "label": "ALLOW", "source": "hand"}\n'
    out.write_text(mine, encoding="utf-8")
    assert main(["policy", "cases", str(policy_file), "-o", str(out), "--no-progress"]) == 2
    assert "mine.jsonl:1: not a row so8t policy cases wrote" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8") == mine


# ---------------------------------------------------------------- with a teacher


def test_the_teacher_adds_n_labelled_prompts_per_rule_each_with_a_twin_across_the_rule(teacher, policy_file, tmp_path):
    t = teacher()
    out = tmp_path / "cases.jsonl"
    summary = policy_cases(policy_file, out, fast(t), per_rule=4, progress=False)
    assert t.kinds() == Counter(generate=3, label=24) and summary.pairs_ok == 12 and not summary.failures
    got = all_cases(out)
    taught = [r for r in got if r["meta"]["origin"] == "teacher"]
    assert len(got) == 7 + 24 and len(taught) == 24
    for r in taught:
        assert parse_response(r["response"]).action.name == r["label"] and r["teacher"] == "big-teacher"
        assert f"[{r['meta']['rule']}]" in r["rationale"] and r["rationale"] in r["response"]  # cites its rule
        assert r["meta"]["half"] == ("safe" if r["label"] == "ALLOW" else "unsafe")
    pairs: dict[str, dict] = {}
    for r in taught:
        pairs.setdefault(r["meta"]["pair"], {})["twin" if r["meta"]["twin"] else "case"] = r
    assert len(pairs) == 12
    for p in pairs.values():
        rule = p["case"]["meta"]["rule"]
        assert p["case"]["label"] == {"PAY-LIMIT": "ESCALATE", "CUST-EXPORT": "REFUSE", "CAL-OWN": "ALLOW"}[rule]
        assert (p["twin"]["label"] == "ALLOW") == (rule != "CAL-OWN")
    # the CAL-OWN twin's rationale cited no rule: the id is appended
    cal_twin = next(r for r in taught if r["meta"]["rule"] == "CAL-OWN" and r["meta"]["twin"])
    assert cal_twin["rationale"] == "the policy says ESCALATE. [CAL-OWN]"
    assert main(["data", "validate", str(out), str(side_paths(out)[0])]) == 0


def test_twins_stay_in_one_split_here_and_when_training_reassembles_the_file(teacher, policy_file, tmp_path):
    t = teacher()
    out = tmp_path / "cases.jsonl"
    policy_cases(policy_file, out, fast(t), per_rule=6, test_fraction=0.3, progress=False)
    side = {r["meta"]["pair"]: set() for r in all_cases(out) if "pair" in r["meta"]}
    for name, path in (("train", out), ("test", side_paths(out)[0])):
        for r in rows(path):
            if "pair" in r["meta"]:
                side[r["meta"]["pair"]].add(name)
    assert len(side) == 18 and all(len(s) == 1 for s in side.values())
    assert {"train", "test"} == set().union(*side.values())
    # every rule is on both sides
    test_rules = Counter(r["meta"]["rule"] for r in rows(side_paths(out)[0]))
    assert set(test_rules) == {"PAY-LIMIT", "CUST-EXPORT", "CAL-OWN"}
    # so8t train --data builtin contrast CASES.jsonl: the cases load, and a pair is not split by the re-split either
    mix = assemble(["builtin", "contrast", str(out)])
    where = {}
    for split in ("train", "dev", "test"):
        for r in getattr(mix, split):
            if r.source == "policy":
                where.setdefault(r.meta["pair"] if "pair" in r.meta else r.id, set()).add(split)
    assert sum(len(v) for v in where.values()) >= 1 and all(len(v) == 1 for v in where.values())
    assert sum(r.source == "policy" for r in mix.train + mix.dev + mix.test) == len(rows(out))


def test_teacher_prompts_that_repeat_a_precedent_are_dropped_once(teacher, policy_file, tmp_path):
    t = teacher(copy_precedent=True)
    out = tmp_path / "cases.jsonl"
    summary = policy_cases(policy_file, out, fast(t), per_rule=2, progress=False)
    assert ("policy-CAL-OWN-t1-case", "the same prompt as policy-CAL-OWN-p1") in summary.dropped
    prompts = [r["prompt"] for r in all_cases(out)]
    assert prompts.count("What is on my calendar tomorrow afternoon?") == 1


def test_a_pair_whose_labels_do_not_fit_its_rule_goes_to_review_never_to_the_cases(teacher, policy_file, tmp_path):
    t = teacher(misfit="CUST-EXPORT")
    out = tmp_path / "cases.jsonl"
    summary = policy_cases(policy_file, out, fast(t), per_rule=2, progress=False)
    assert summary.review == [("CUST-EXPORT", 1, "the teacher labelled the twin REFUSE, across the rule is ALLOW")]
    review = rows(side_paths(out)[1])
    assert [r["id"] for r in review] == ["policy-CUST-EXPORT-t1-case", "policy-CUST-EXPORT-t1-twin"]
    assert not any(r["id"].startswith("policy-CUST-EXPORT-t1") for r in all_cases(out))
    # a person relabels the review file; a re-run keeps the edit and adds nothing twice
    edited = side_paths(out)[1].read_text(encoding="utf-8").replace('"label": "REFUSE"', '"label": "ALLOW"', 1)
    side_paths(out)[1].write_text(edited, encoding="utf-8")
    policy_cases(policy_file, out, fast(t), per_rule=2, progress=False)
    assert side_paths(out)[1].read_text(encoding="utf-8") == edited


def test_malformed_new_prompts_are_asked_again_once_then_a_failure_a_rerun_asks_again(
    teacher, policy_file, tmp_path, capsys
):
    t = teacher(fixable="PAY-LIMIT", garbage="CAL-OWN")
    out = tmp_path / "cases.jsonl"
    code = main(
        [
            "policy",
            "cases",
            str(policy_file),
            "-o",
            str(out),
            "--teacher-url",
            t.url,
            "--teacher-model",
            "m",
            "--per-rule",
            "2",
            "--retries",
            "0",
            "--no-progress",
        ]
    )
    assert code == 1
    printed = capsys.readouterr().out
    assert (
        "failed: 1 (malformed first: rule CAL-OWN: new prompts: no JSON array in it); a re-run asks them again"
        in printed
    )
    gens = [(r["rule"], r["repair"]) for r in t.requests if r["kind"] == "generate"]
    assert sorted(gens) == sorted(
        [("PAY-LIMIT", False), ("PAY-LIMIT", True), ("CUST-EXPORT", False), ("CAL-OWN", False), ("CAL-OWN", True)]
    )
    assert {r["meta"]["rule"] for r in all_cases(out) if r["meta"]["origin"] == "teacher"} == {
        "PAY-LIMIT",
        "CUST-EXPORT",
    }
    t.garbage = None
    t.requests.clear()
    assert (
        main(
            [
                "policy",
                "cases",
                str(policy_file),
                "-o",
                str(out),
                "--teacher-url",
                t.url,
                "--teacher-model",
                "m",
                "--per-rule",
                "2",
                "--no-progress",
            ]
        )
        == 0
    )
    assert t.kinds() == Counter(generate=1, label=4)  # only what was missing: CAL-OWN
    assert {r["meta"]["rule"] for r in all_cases(out) if r["meta"]["origin"] == "teacher"} == {
        "PAY-LIMIT",
        "CUST-EXPORT",
        "CAL-OWN",
    }


def test_a_teacher_that_goes_down_mid_run_loses_nothing_already_answered(teacher, policy_file, tmp_path, capsys):
    out = tmp_path / "cases.jsonl"
    journal = side_paths(out)[2]
    t = teacher(stop_after=3 + 2 * 4)  # the three rules' new prompts, then four pairs labelled
    code = main(
        [
            "policy",
            "cases",
            str(policy_file),
            "-o",
            str(out),
            "--teacher-url",
            t.url,
            "--teacher-model",
            "m",
            "--per-rule",
            "3",
            "--concurrency",
            "1",
            "--retries",
            "1",
            "--timeout",
            "5",
            "--no-progress",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "is unreachable" in err and f"every answer so far is kept in {journal}" in err
    kept = rows(journal)
    assert Counter(e["kind"] for e in kept) == Counter(prompts=3, pair=4)
    assert not out.exists()  # the case files are written only when the teacher is done
    # a torn last line (a kill mid-write) is cut off and asked again
    with open(journal, "ab") as f:
        f.write(b'{"kind": "pair", "rule": "CAL-O')
    t2 = teacher()
    assert (
        main(
            [
                "policy",
                "cases",
                str(policy_file),
                "-o",
                str(out),
                "--teacher-url",
                t2.url,
                "--teacher-model",
                "m",
                "--per-rule",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    assert t2.kinds() == Counter(label=2 * (9 - 4))  # no prompt written again, only the unlabelled pairs
    assert rows(journal)[:7] == kept
    assert len([r for r in all_cases(out) if r["meta"]["origin"] == "teacher"]) == 18


def test_a_journal_from_another_teacher_is_refused_naming_its_line(teacher, policy_file, tmp_path):
    t = teacher()
    out = tmp_path / "cases.jsonl"
    policy_cases(policy_file, out, fast(t), per_rule=1, progress=False)
    before = side_paths(out)[2].read_bytes()
    t.requests.clear()
    with pytest.raises(DataError) as info:
        policy_cases(policy_file, out, Teacher(t.url, "another-teacher", retries=0), per_rule=1, progress=False)
    first = info.value.problems[0]
    assert (first.line, first.field) == (
        1,
        "teacher",
    ) and "'big-teacher', this run has 'another-teacher'" in first.message
    assert t.requests == [] and side_paths(out)[2].read_bytes() == before


def test_a_hand_edited_journal_line_is_named_not_a_crash(teacher, policy_file, tmp_path):
    t = teacher()
    out = tmp_path / "cases.jsonl"
    policy_cases(policy_file, out, fast(t), per_rule=1, progress=False)
    journal = side_paths(out)[2]
    lines = journal.read_text(encoding="utf-8").splitlines()
    broken = json.loads(lines[0])
    del broken["pairs"]
    journal.write_text("\n".join([json.dumps(broken)] + lines[1:]) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        policy_cases(policy_file, out, fast(t), per_rule=1, progress=False)
    first = info.value.problems[0]
    assert (first.line, first.field) == (1, "prompts") and "not as so8t policy cases writes it" in first.message


def test_a_teacher_that_is_down_from_the_start_stops_before_writing_cases(policy_file, tmp_path):
    out = tmp_path / "cases.jsonl"
    with pytest.raises(TeacherUnavailable, match="unreachable"):
        policy_cases(policy_file, out, Teacher("http://127.0.0.1:9/v1", "m", retries=0, timeout_s=2), progress=False)
    assert not out.exists()


def test_so8t_distill_takes_a_policy_file_and_gives_its_rules_to_the_teacher(teacher, policy_file, tmp_path, capsys):
    t = teacher()
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Wire 7 million yen to Osaka Gas now."}\n', encoding="utf-8")
    out = tmp_path / "distilled.jsonl"
    assert (
        main(
            [
                "distill",
                str(prompts),
                "--teacher-url",
                t.url,
                "--teacher-model",
                "m",
                "--policy",
                str(policy_file),
                "-o",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert rows(out)[0]["label"] == "ESCALATE" and "[PAY-LIMIT]" in rows(out)[0]["rationale"]
    assert "- [PAY-LIMIT] ESCALATE: Payments above 100,000 JPY." in t.requests[0]["system"]
    policy_file.write_text(POLICY.replace("    action: ESCALATE\n", ""), encoding="utf-8")
    capsys.readouterr()
    assert (
        main(
            [
                "distill",
                str(prompts),
                "--teacher-url",
                t.url,
                "--teacher-model",
                "m",
                "--policy",
                str(policy_file),
                "-o",
                str(tmp_path / "other.jsonl"),
            ]
        )
        == 2
    )
    assert f"{policy_file}:4: rules[0].action: missing" in capsys.readouterr().err
    assert len(t.requests) == 1 and not (tmp_path / "other.jsonl").exists()
