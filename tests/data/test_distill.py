"""`so8t distill` against a real OpenAI-compatible teacher: a FastAPI app served by uvicorn on a
free loopback port, answering deterministically from the rules below (the conversation's words
pick the answer), and told per prompt to return garbage, refuse, be slow, be busy, or die.

Every test goes through the real HTTP client (httpx), the real files and, where the command is
the point, the real CLI (in-process, or a subprocess that is killed).
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

import so8t
from so8t.cli import main
from so8t.data import DataError, assemble
from so8t.data.distill import (
    DEFAULT_POLICY,
    Teacher,
    TeacherUnavailable,
    distill,
    read_choice,
    side_files,
)
from so8t.labels import parse_response
from so8t.server.llm_server import serve_in_thread

REPAIR_START = "Your reply did not follow the format"


# ---------------------------------------------------------------- the teacher the tests run


def rule_label(convo: str) -> str:
    """The test's policy: bombs are REFUSE, deleting is ESCALATE, everything else ALLOW."""
    low = convo.lower()
    if "bomb" in low or "爆弾" in convo:
        return "REFUSE"
    if "delete" in low or "削除" in convo:
        return "ESCALATE"
    return "ALLOW"


def good(label: str, convo: str) -> str:
    return f"Action: {label}\nHere is my reply to: {convo[:40]}\nRationale: the test's rule for {label}."


class FakeTeacher:
    """State and rules of one served teacher. Markers in a prompt choose a behaviour:
    GARBAGE (never the format), FIXABLE (the format only when asked again), FILTER (content
    filter), REFUSAL (OpenAI's refusal field), BLOCKED (HTTP 400 content_filter), SLOW_ONCE /
    SLOW_ALWAYS (longer than the client's timeout), BUSY (503 with Retry-After, then fine),
    SPLIT (each sample another tag), MOSTLY (samples: REFUSE, REFUSE, ALLOW, ...)."""

    def __init__(self, slow_s: float = 1.5, delay_s: float = 0.0, status: int | None = None):
        self.slow_s, self.delay_s, self.status = slow_s, delay_s, status
        self.requests: list[dict] = []  # {'body', 'auth', 'convo', 'repair'}
        self.attempts: Counter = Counter()  # convo -> first-try requests seen
        self.in_flight = self.max_in_flight = 0
        self.stop_after: int | None = None  # stop the server once this many answers were given
        self.handle = None

    @property
    def url(self) -> str:
        return self.handle.url + "/v1"

    def convos(self, repair: bool | None = None) -> list[str]:
        return [r["convo"] for r in self.requests if repair is None or r["repair"] == repair]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await self.answer(await request.json(), request.headers.get("authorization"))
            finally:
                self.in_flight -= 1

        return app

    async def answer(self, body: dict, auth: str | None):
        messages = body["messages"]
        convo = messages[1]["content"].split("<<<\n", 1)[1].split("\n>>>", 1)[0]
        repair = messages[-1]["content"].startswith(REPAIR_START)
        n = self.attempts[convo]
        if not repair:
            self.attempts[convo] += 1
        self.requests.append({"body": body, "auth": auth, "convo": convo, "repair": repair})
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.status:
            return JSONResponse({"error": {"message": "told to fail"}}, status_code=self.status)
        if "SLOW_ALWAYS" in convo or ("SLOW_ONCE" in convo and n == 0):
            await asyncio.sleep(self.slow_s)
        if "TRICKLE" in convo:  # a whole answer, a few bytes every 0.1 s: each read is quick, the answer is not
            text = json.dumps({"choices": [{"message": {"content": good("ALLOW", convo)}, "finish_reason": "stop"}]})

            async def drip():
                for i in range(0, len(text), 16):
                    await asyncio.sleep(0.1)
                    yield text[i : i + 16]

            return StreamingResponse(drip(), media_type="application/json")
        if "BUSY" in convo and n == 0:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503, headers={"Retry-After": "0"})
        if "BLOCKED" in convo:
            return JSONResponse({"error": {"message": "blocked by policy", "code": "content_filter"}}, status_code=400)
        message, finish = {"role": "assistant", "content": None}, "stop"
        if "FILTER" in convo:
            finish = "content_filter"
        elif "REFUSAL" in convo:
            message["refusal"] = "I can't help with that."
        elif "GARBAGE" in convo or ("FIXABLE" in convo and not repair):
            message["content"] = "Sure! I think this one is fine to do."
        elif "SPLIT" in convo:
            message["content"] = good(["ALLOW", "ESCALATE", "REFUSE"][n % 3], convo)
        elif "MOSTLY" in convo:
            message["content"] = good("ALLOW" if n % 3 == 2 else "REFUSE", convo)
        else:
            message["content"] = good(rule_label(convo), convo)
        self.served()
        return {
            "id": "x",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        }

    def served(self) -> None:
        if self.stop_after is not None and len(self.requests) >= self.stop_after:
            self.stop_after = None
            threading.Thread(target=self.handle.stop, daemon=True).start()


@pytest.fixture
def teacher(serve_teacher):
    """Factory: start a FakeTeacher on a free port; every one is stopped at the end."""
    return lambda **kw: serve_teacher(FakeTeacher(**kw))


def prompts_file(path: Path, rows: list) -> Path:
    path.write_text(
        "".join(json.dumps(r if isinstance(r, dict) else {"prompt": r}, ensure_ascii=False) + "\n" for r in rows),
        encoding="utf-8",
    )
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def fast(t: FakeTeacher, **kw) -> Teacher:
    return Teacher(t.url, "big-teacher", **{"timeout_s": 5.0, "retries": 2, "backoff_s": 0.01, **kw})


MIXED = [
    "List the files in my reports folder.",
    "Delete the production users table now.",
    "How do I build a bomb at home?",
    {
        "prompt": "本番DBのusersテーブルを削除して",
        "lang": "ja",
        "category": "irreversible_action",
        "id": "ja-1",
        "label": "ESCALATE",
        "source": "mine",
        "meta": {"pair": "p1", "half": "unsafe"},
    },
    {
        "prompt": [
            {"role": "system", "content": "You are a helpful office agent."},
            {"role": "user", "content": "What's on my calendar tomorrow?"},
        ]
    },
]


# ---------------------------------------------------------------- the labelled rows


def test_every_prompt_gets_the_teachers_tag_as_its_label_and_the_rows_are_training_data(teacher, tmp_path, capsys):
    t = teacher()
    src = prompts_file(tmp_path / "prompts.jsonl", MIXED)
    out = tmp_path / "out.jsonl"
    summary = distill(src, out, fast(t), progress=False)

    got = {json.dumps(r["prompt"], ensure_ascii=False): r for r in rows(out)}
    assert len(got) == 5 and summary.written == 5 and summary.failed == 0
    for r in got.values():
        convo = "\n".join(m["content"] for m in r["prompt"]) if isinstance(r["prompt"], list) else r["prompt"]
        assert r["label"] == rule_label(convo)
        assert parse_response(r["response"]).action.name == r["label"]
        assert r["rationale"] == f"the test's rule for {r['label']}."
        assert r["source"] == "distill" and r["teacher"] == "big-teacher"
        assert r["meta"]["distill"]["teacher_url"] == t.url + "/chat/completions"
        assert r["meta"]["distill"]["samples"] == 1 and r["meta"]["distill"]["agreement"] == 1.0
    ja = got['"本番DBのusersテーブルを削除して"']
    assert (ja["id"], ja["lang"], ja["category"]) == ("ja-1", "ja", "irreversible_action")
    assert ja["meta"]["pair"] == "p1" and ja["meta"]["half"] == "unsafe"  # the input's meta is kept
    assert ja["meta"]["distill"]["input_label"] == "ESCALATE" and ja["meta"]["distill"]["input_source"] == "mine"
    assert ja["meta"]["distill"]["line"] == 4
    assert summary.labels == Counter({"ALLOW": 2, "ESCALATE": 2, "REFUSE": 1})

    # the project's own checks take the file as it is: validation and the training loader
    assert main(["data", "validate", str(out)]) == 0
    mix = assemble(["builtin", str(out)])
    assert sum(r.source == "distill" for r in mix.train + mix.dev + mix.test) == 5


def test_the_teacher_sees_the_policy_in_its_system_prompt_and_the_conversation_as_data(teacher, tmp_path):
    t = teacher()
    policy = "# Our policy\nR1: deleting anything is ESCALATE.\nR2: weapons are REFUSE."
    src = prompts_file(tmp_path / "p.jsonl", [MIXED[4]])
    distill(src, tmp_path / "out.jsonl", fast(t), policy=policy, progress=False)
    (req,) = t.requests
    system, user = req["body"]["messages"]
    assert system["role"] == "system" and policy in system["content"] and DEFAULT_POLICY not in system["content"]
    assert "Action: <ALLOW|ESCALATE|REFUSE>" in system["content"] and "Rationale:" in system["content"]
    # the prompt's own system turn is part of the conversation under review, not the teacher's instructions
    assert user["role"] == "user" and "[system] You are a helpful office agent." in user["content"]
    assert "[user] What's on my calendar tomorrow?" in user["content"]
    assert req["body"]["model"] == "big-teacher" and req["body"]["temperature"] == 0.0


def test_the_api_key_is_read_from_the_environment_and_sent_only_as_a_bearer_header(
    teacher, tmp_path, monkeypatch, capsys
):
    t = teacher()
    src = prompts_file(tmp_path / "p.jsonl", MIXED[:1])
    monkeypatch.setenv("SO8T_TEACHER_API_KEY", "sk-default-123")
    assert (
        main(
            [
                "distill",
                str(src),
                "--teacher-url",
                t.url,
                "--teacher-model",
                "m",
                "-o",
                str(tmp_path / "a.jsonl"),
                "--no-progress",
            ]
        )
        == 0
    )
    monkeypatch.setenv("MY_CLOUD_KEY", "sk-named-456")
    assert (
        main(
            [
                "distill",
                str(src),
                "--teacher-url",
                t.url,
                "--teacher-model",
                "m",
                "-o",
                str(tmp_path / "b.jsonl"),
                "--api-key-env",
                "MY_CLOUD_KEY",
                "--no-progress",
            ]
        )
        == 0
    )
    assert [r["auth"] for r in t.requests] == ["Bearer sk-default-123", "Bearer sk-named-456"]
    assert "sk-" not in (tmp_path / "a.jsonl").read_text() + (tmp_path / "b.jsonl").read_text()
    capsys.readouterr()
    assert (
        main(
            [
                "distill",
                str(src),
                "--teacher-url",
                t.url,
                "--teacher-model",
                "m",
                "-o",
                str(tmp_path / "c.jsonl"),
                "--api-key-env",
                "NOT_SET_ANYWHERE",
            ]
        )
        == 2
    )
    assert (
        "--api-key-env NOT_SET_ANYWHERE: the environment variable NOT_SET_ANYWHERE is not set"
        in capsys.readouterr().err
    )
    assert len(t.requests) == 2 and not (tmp_path / "c.jsonl").exists()


# ---------------------------------------------------------------- malformed answers and refusals


def test_a_malformed_answer_is_asked_again_once_and_the_fixed_answer_is_kept(teacher, tmp_path):
    t = teacher()
    src = prompts_file(tmp_path / "p.jsonl", ["FIXABLE: delete the old backups"])
    summary = distill(src, tmp_path / "out.jsonl", fast(t), progress=False)
    assert [r["repair"] for r in t.requests] == [False, True]
    repair_turns = t.requests[1]["body"]["messages"]
    assert repair_turns[2] == {"role": "assistant", "content": "Sure! I think this one is fine to do."}
    assert summary.malformed == [] and [r["label"] for r in rows(tmp_path / "out.jsonl")] == ["ESCALATE"]


def test_a_second_malformed_answer_is_a_failure_with_its_input_line_never_a_guessed_row(teacher, tmp_path, capsys):
    t = teacher()
    src = prompts_file(tmp_path / "p.jsonl", ["List my files", "GARBAGE please", "Read the wiki page"])
    out = tmp_path / "out.jsonl"
    assert (
        main(["distill", str(src), "--teacher-url", t.url, "--teacher-model", "m", "-o", str(out), "--no-progress"])
        == 1
    )  # some prompts failed: exit 1
    printed = capsys.readouterr().out
    assert "malformed teacher answers (after one retry): 1 (line 2)" in printed
    assert len(t.convos(repair=True)) == 1 and Counter(t.convos())["[user] GARBAGE please"] == 2  # once, then once more
    assert {r["prompt"] for r in rows(out)} == {"List my files", "Read the wiki page"}
    failures, _ = side_files(out)
    (f,) = rows(failures)
    assert (f["line"], f["kind"], f["prompt"]) == (2, "malformed", "GARBAGE please")
    assert f["answers"] == ["Sure! I think this one is fine to do."] * 2 and "Action:" in f["detail"]


@pytest.mark.parametrize(
    "marker, detail",
    [
        ("FILTER", "finish_reason 'content_filter'"),
        ("REFUSAL", "I can't help with that."),
        ("BLOCKED", "HTTP 400 content filter: blocked by policy"),
    ],
)
def test_a_teacher_that_refuses_to_answer_is_counted_and_recorded_never_labelled(marker, detail, teacher, tmp_path):
    t = teacher()
    src = prompts_file(tmp_path / "p.jsonl", ["List my files", f"{marker} me"])
    out = tmp_path / "out.jsonl"
    summary = distill(src, out, fast(t), progress=False)
    assert summary.refused == [(2, detail)] and summary.malformed == [] and summary.errors == []
    assert len(t.convos()) == 2  # a refusal is not asked again
    assert [r["prompt"] for r in rows(out)] == ["List my files"]
    assert [(f["line"], f["kind"]) for f in rows(side_files(out)[0])] == [(2, "refused")]
    assert f"teacher refused to answer: 1 (line 2); first: line 2: {detail}" in summary.format()


def test_a_think_block_is_not_part_of_the_answer_and_a_cut_off_answer_says_so():
    ok = read_choice(
        {
            "message": {
                "content": "<think>hmm, deleting...</think>\nAction: ESCALATE\nI prepared it.\nRationale: irreversible."
            },
            "finish_reason": "stop",
        }
    )
    assert ok.parsed.action.name == "ESCALATE" and ok.parsed.text == "I prepared it."
    cut = read_choice({"message": {"content": "Action: ALLOW\nHere is a long"}, "finish_reason": "length"})
    assert cut.parsed is None and "raise --max-tokens" in cut.problem
    assert "more than one line" in read_choice({"message": {"content": "Action: ALLOW\nx\nRationale: a\nb"}}).problem
    assert "no final text" in read_choice({"message": {"content": "Action: ALLOW\nRationale: a"}}).problem


# ---------------------------------------------------------------- timeouts, retries, concurrency


def test_a_slow_answer_is_retried_after_the_timeout_and_one_that_stays_slow_is_a_failure(teacher, tmp_path):
    t = teacher(slow_s=1.0)
    src = prompts_file(tmp_path / "p.jsonl", ["SLOW_ONCE list my files", "SLOW_ALWAYS read the wiki", "Hello"])
    out = tmp_path / "out.jsonl"
    summary = distill(src, out, fast(t, timeout_s=0.3, retries=1), progress=False)
    seen = Counter(t.convos())
    assert seen["[user] SLOW_ONCE list my files"] == 2 and seen["[user] SLOW_ALWAYS read the wiki"] == 2
    assert {r["prompt"] for r in rows(out)} == {"SLOW_ONCE list my files", "Hello"}
    assert summary.errors == [(2, "no answer within 0.3 s (after 2 attempts)")]
    assert "requests that failed (after the retries): 1 (line 2)" in summary.format()


def test_the_timeout_bounds_the_whole_answer_not_each_read(teacher, tmp_path):
    t = teacher()
    src = prompts_file(tmp_path / "p.jsonl", ["TRICKLE list my files"])
    summary = distill(src, tmp_path / "out.jsonl", fast(t, timeout_s=0.5, retries=0), progress=False)
    assert summary.errors == [(1, "no answer within 0.5 s (after 1 attempt)")]
    assert distill(src, tmp_path / "out.jsonl", fast(t, timeout_s=30), progress=False).written == 1


def test_a_busy_teacher_is_retried_after_its_retry_after_and_then_answers(teacher, tmp_path):
    t = teacher()
    src = prompts_file(tmp_path / "p.jsonl", ["BUSY delete the temp folder"])
    summary = distill(src, tmp_path / "out.jsonl", fast(t), progress=False)
    assert len(t.requests) == 2 and summary.written == 1 and summary.errors == []


def test_no_more_requests_are_in_flight_than_the_concurrency_limit(teacher, tmp_path):
    t = teacher(delay_s=0.15)
    src = prompts_file(tmp_path / "p.jsonl", [f"List folder number {i}" for i in range(8)])
    distill(src, tmp_path / "out.jsonl", fast(t), concurrency=3, progress=False)
    assert t.max_in_flight == 3 and len(rows(tmp_path / "out.jsonl")) == 8


@pytest.mark.parametrize(
    "status, message",
    [
        (401, r"HTTP 401 \(told to fail\): put the API key in \$SO8T_TEACHER_API_KEY"),
        (404, r"HTTP 404 \(told to fail\): is --teacher-model 'big-teacher' served there"),
    ],
)
def test_a_wrong_key_or_model_stops_the_run_at_the_first_answer(status, message, teacher, tmp_path):
    t = teacher(status=status)
    src = prompts_file(tmp_path / "p.jsonl", [f"List folder number {i}" for i in range(5)])
    with pytest.raises(TeacherUnavailable, match=message):
        distill(src, tmp_path / "out.jsonl", fast(t), concurrency=1, progress=False)
    assert len(t.requests) == 1


def test_a_teacher_failing_every_prompt_stops_the_run_instead_of_filing_them_all(teacher, tmp_path):
    t = teacher(status=500)
    src = prompts_file(tmp_path / "p.jsonl", [f"List folder number {i}" for i in range(30)])
    with pytest.raises(TeacherUnavailable, match=r"failed 8 prompts in a row \(last: line \d+: HTTP 500: told to fail"):
        distill(src, tmp_path / "out.jsonl", fast(t, retries=0), concurrency=1, progress=False)
    assert len(t.requests) == 8


def test_a_teacher_url_that_is_down_is_an_error_naming_it_and_nothing_is_written(tmp_path, capsys):
    with serve_in_thread(FastAPI()) as h:
        url = h.url + "/v1"  # a port that was just free: nothing listens once stopped
    src = prompts_file(tmp_path / "p.jsonl", ["List my files"])
    assert (
        main(
            [
                "distill",
                str(src),
                "--teacher-url",
                url,
                "--teacher-model",
                "m",
                "-o",
                str(tmp_path / "o.jsonl"),
                "--retries",
                "0",
                "--no-progress",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert f"the teacher at {url}/chat/completions is unreachable: cannot connect" in err
    assert "run the same command again to go on" in err and not (tmp_path / "o.jsonl").exists()


# ---------------------------------------------------------------- resuming


def test_a_server_that_dies_mid_run_stops_it_and_a_rerun_on_a_fresh_server_finishes_without_loss_or_duplicates(
    teacher, tmp_path
):
    prompts = [f"List folder number {i}" for i in range(12)] + ["Delete the staging bucket", "How to make a bomb"]
    src = prompts_file(tmp_path / "p.jsonl", prompts)
    out = tmp_path / "out.jsonl"
    first = teacher(delay_s=0.02)
    first.stop_after = 5
    with pytest.raises(TeacherUnavailable, match=f"the teacher at {first.url}/chat/completions is unreachable") as exc:
        distill(src, out, fast(first, retries=1), concurrency=2, progress=False)
    written = out.read_bytes()
    assert 1 <= len(rows(out)) < len(prompts) and exc.value.summary.written == len(rows(out))

    second = teacher()
    summary = distill(src, out, fast(second), concurrency=2, progress=False)
    assert out.read_bytes().startswith(written)  # nothing written before was touched
    assert sorted(r["prompt"] for r in rows(out)) == sorted(prompts)  # each prompt once
    assert summary.already_done == len(rows(out)) - summary.written and summary.failed == 0
    assert set(second.convos()).isdisjoint({f"[user] {r['prompt']}" for r in rows(out)[: len(written.splitlines())]})
    assert summary.labels == Counter({"ALLOW": 12, "ESCALATE": 1, "REFUSE": 1})
    assert not side_files(out)[0].exists()


def test_a_killed_run_loses_nothing_written_and_a_torn_last_line_is_asked_again(teacher, tmp_path):
    t = teacher(delay_s=0.3)
    prompts = [f"List folder number {i}" for i in range(20)]
    src = prompts_file(tmp_path / "p.jsonl", prompts)
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": str(Path(so8t.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "so8t",
            "distill",
            str(src),
            "--teacher-url",
            t.url,
            "--teacher-model",
            "m",
            "-o",
            str(out),
            "--concurrency",
            "1",
            "--no-progress",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not (out.exists() and len(out.read_bytes().splitlines()) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, (
            proc.stderr.read() if proc.poll() is not None else ""
        )
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = rows(out)
    assert 3 <= len(kept) < 20 and all(r["label"] == "ALLOW" for r in kept)

    # a kill in the middle of a write: the last row torn in half
    data = out.read_bytes()
    torn = data[:-1].rpartition(b"\n")[0] + b"\n" + data[:-1].rpartition(b"\n")[2][:25]
    out.write_bytes(torn)
    whole = torn.rpartition(b"\n")[0] + b"\n"
    summary = distill(src, out, Teacher(t.url, "m", timeout_s=5, backoff_s=0.01), concurrency=4, progress=False)
    assert out.read_bytes().startswith(whole)
    assert sorted(r["prompt"] for r in rows(out)) == sorted(prompts)
    assert summary.already_done == len(kept) - 1 and main(["data", "validate", str(out)]) == 0


def test_a_failure_a_rerun_fixes_leaves_the_failures_file_and_one_still_failing_stays_once(teacher, tmp_path):
    src = prompts_file(tmp_path / "p.jsonl", ["SLOW_ALWAYS list", "GARBAGE read", "Hello"])
    out = tmp_path / "out.jsonl"
    failures, _ = side_files(out)
    distill(src, out, fast(teacher(slow_s=1.0), timeout_s=0.3, retries=0), progress=False)
    assert sorted(f["line"] for f in rows(failures)) == [1, 2]
    summary = distill(src, out, fast(teacher(slow_s=0.0)), progress=False)  # now the slow one answers in time
    assert summary.written == 1 and summary.already_done == 1
    assert [(f["line"], f["kind"]) for f in rows(failures)] == [(2, "malformed")]


# ---------------------------------------------------------------- self-consistency


def test_samples_keep_the_majority_with_its_agreement_and_send_disagreement_to_review(teacher, tmp_path, capsys):
    t = teacher()
    src = prompts_file(tmp_path / "p.jsonl", ["Delete the old logs", "MOSTLY: make napalm", "SPLIT: wire money abroad"])
    out = tmp_path / "out.jsonl"
    _, review = side_files(out)
    summary = distill(src, out, fast(t), samples=3, min_agreement=0.6, progress=False)
    assert Counter(t.convos(repair=False)) == {
        f"[user] {p}": 3 for p in ["Delete the old logs", "MOSTLY: make napalm", "SPLIT: wire money abroad"]
    }
    assert {r["body"]["temperature"] for r in t.requests} == {0.7}
    kept = {r["prompt"]: r for r in rows(out)}
    assert kept["Delete the old logs"]["label"] == "ESCALATE"
    assert kept["Delete the old logs"]["meta"]["distill"]["agreement"] == 1.0
    mostly = kept["MOSTLY: make napalm"]["meta"]["distill"]
    assert kept["MOSTLY: make napalm"]["label"] == "REFUSE" and mostly["agreement"] == 0.6667
    assert mostly["votes"] == {"ALLOW": 1, "REFUSE": 2}
    (flagged,) = rows(review)  # 1/1/1: no majority, an ESCALATE candidate for a person, not a training row of OUT
    assert flagged["prompt"] == "SPLIT: wire money abroad" and flagged["label"] == "ESCALATE"
    assert (
        flagged["meta"]["distill"]["review"] == "escalate-candidate" and flagged["meta"]["distill"]["majority"] is None
    )
    assert len(flagged["meta"]["distill"]["answers"]) == 3 and flagged["response"].startswith("Action: ESCALATE")
    assert summary.review == [3] and f"{review}: 1 ESCALATE candidate(s)" in summary.format()
    assert main(["data", "validate", str(out), str(review)]) == 0

    # the default asks for all samples to agree: 2 of 3 goes to review too, with its majority named
    out2 = tmp_path / "strict.jsonl"
    distill(src, out2, fast(t), samples=3, progress=False)
    assert [r["prompt"] for r in rows(out2)] == ["Delete the old logs"]
    assert {r["prompt"]: r["meta"]["distill"]["majority"] for r in rows(side_files(out2)[1])} == {
        "MOSTLY: make napalm": "REFUSE",
        "SPLIT: wire money abroad": None,
    }

    # a re-run skips the flagged prompts as well as the kept ones
    before = len(t.requests)
    again = distill(src, out2, fast(t), samples=3, progress=False)
    assert len(t.requests) == before and again.already_done == 3 and again.review_total == 2


# ---------------------------------------------------------------- bad input


def test_a_broken_prompts_file_is_an_error_naming_file_line_and_field_before_any_request(teacher, tmp_path, capsys):
    t = teacher()
    src = tmp_path / "p.jsonl"
    src.write_text(
        '{"prompt": "List my files"}\n{"prompt": "x", "lable": "ALLOW"}\n{"prompt": ""}\n{broken\n', encoding="utf-8"
    )
    out = tmp_path / "out.jsonl"
    out.write_text("", encoding="utf-8")
    assert main(["distill", str(src), "--teacher-url", t.url, "--teacher-model", "m", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{src}:2: lable: unknown field" in err and f"{src}:3: prompt: prompt is empty" in err
    assert f"{src}:4: invalid JSON" in err
    assert t.requests == [] and out.read_text() == ""


def test_held_out_rows_are_refused_as_prompts(teacher, tmp_path):
    src = prompts_file(tmp_path / "p.jsonl", ["ok", {"prompt": "x", "source": "so8t-heldout-agent"}])
    with pytest.raises(DataError, match=r"p.jsonl:2: source: 'so8t-heldout-agent' is a held-out row"):
        distill(src, tmp_path / "o.jsonl", fast(teacher()), progress=False)


def test_an_out_file_from_another_teacher_or_policy_is_refused_naming_its_line(teacher, tmp_path):
    t = teacher()
    src = prompts_file(tmp_path / "p.jsonl", ["List my files", "Delete the logs"])
    out = tmp_path / "out.jsonl"
    distill(src, out, fast(t), progress=False)
    before = out.read_bytes()
    with pytest.raises(
        DataError, match=r"out.jsonl:1: teacher: 'big-teacher', this run asks 'other'; write to a new -o"
    ):
        distill(src, out, Teacher(t.url, "other"), progress=False)
    with pytest.raises(DataError, match=r"out.jsonl:1: meta.distill.policy: written under another policy"):
        distill(src, out, fast(t), policy="R1: everything is REFUSE", progress=False)
    not_ours = tmp_path / "mine.jsonl"
    not_ours.write_text('{"prompt": "a", "label": "ALLOW"}\n{"prompt": "b", "lab', encoding="utf-8")
    with pytest.raises(DataError, match=r"mine.jsonl:1: meta.distill: missing: not a row so8t distill wrote"):
        distill(src, not_ours, fast(t), progress=False)
    assert out.read_bytes() == before and not_ours.read_text().endswith('"lab')  # neither file touched


def test_duplicate_prompts_are_asked_once_and_the_summary_names_them(teacher, tmp_path):
    t = teacher()
    src = prompts_file(tmp_path / "p.jsonl", ["List my files", "Delete it", "List my files"])
    summary = distill(src, tmp_path / "out.jsonl", fast(t), progress=False)
    assert len(t.requests) == 2 and summary.prompts == 3 and summary.repeats == [(3, 1)]
    text = summary.format()
    assert text.splitlines()[0].endswith("3 prompt(s): 0 already done, 2 labelled now, 0 flagged for review, 0 failed")
    assert "out.jsonl: 2 row(s): ALLOW=1 ESCALATE=1 REFUSE=0" in text
    assert "repeated prompts asked once: 1 (line 3 = line 1)" in text


def test_option_values_out_of_range_are_refused_naming_the_flag(tmp_path):
    src = prompts_file(tmp_path / "p.jsonl", ["x"])
    with pytest.raises(ValueError, match="--samples and --concurrency must be >= 1"):
        distill(src, tmp_path / "o.jsonl", Teacher("http://127.0.0.1:9/v1", "m"), samples=0)
    with pytest.raises(ValueError, match="--teacher-url 'localhost:11434': expected http"):
        Teacher("localhost:11434", "m")
