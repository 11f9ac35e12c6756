"""Issue 13, items 6 and 7, on the real gate (the tiny trained run, real forward passes): a
request that times out stops using the CPU within one scoring batch, and its timeout fails
closed that request only -- the requests queued behind it keep their places and are decided.
A full queue turns the next request away at once (status "busy", the fail action).

The gate is made slow the way a big model on a busy CPU is: each forward pass of the real
model sleeps first (the model's own `forward`, wrapped), so the tests count real batches."""

from __future__ import annotations

import threading
import time

import pytest

from so8t.gate import Gate
from so8t.labels import Action


class SlowForward:
    """Wraps the model's forward: records when each batch starts, sleeps `delays[k]` (or
    `default`) before the k-th one, then runs the real forward pass."""

    def __init__(self, gate: Gate, monkeypatch, default: float, delays: dict[int, float] | None = None):
        self.real, self.default, self.delays = gate.model.forward, default, delays or {}
        self.starts: list[float] = []
        self.lock = threading.Lock()
        monkeypatch.setattr(gate.model, "forward", self)

    def __call__(self, *args, **kwargs):
        with self.lock:
            k = len(self.starts)
            self.starts.append(time.monotonic())
        time.sleep(self.delays.get(k, self.default))
        return self.real(*args, **kwargs)

    def quiet_for(self, seconds: float, limit_s: float = 20.0) -> None:
        """Wait until no batch has started for `seconds` (the abandoned work, if any, is over)."""
        end = time.monotonic() + limit_s
        while time.monotonic() < end:
            last = self.starts[-1] if self.starts else 0.0
            if time.monotonic() - last > seconds:
                return
            time.sleep(0.05)


def many_turns(n: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"turn {i}: please list the files in my reports folder"} for i in range(n)]


@pytest.fixture
def gate_factory(tiny_run):
    made = []

    def make(**opts) -> Gate:
        g = Gate.load(tiny_run[0], **opts)
        assert g.ready, g.load_error
        made.append(g)
        return g

    yield make
    for g in made:
        g.close()


def test_a_timed_out_request_stops_scoring_within_one_batch(gate_factory, monkeypatch):
    # 150 turns -> 151 views -> 10 batches of 16 at 0.15 s each: 1.5 s of work, 0.5 s allowed.
    g = gate_factory(timeout_s=0.5, max_views=400)
    slow = SlowForward(g, monkeypatch, default=0.15)
    t0 = time.monotonic()
    d = g.decide(many_turns(150))
    returned = time.monotonic()
    assert (d.status, d.action) == ("timeout", Action.REFUSE) and returned - t0 < 1.5
    slow.quiet_for(1.0)
    after = [s for s in slow.starts if s > returned]
    # Before the fix the abandoned worker scored all 10 batches, 7 of them after the deadline.
    assert len(after) <= 1, f"{len(after)} batches started after the request had timed out"
    assert len(slow.starts) <= 6
    assert g.wait_idle(2.0) and g.queue_state() == {"pending": 0, "queued": 0, "running": 0, "retired": 0}


def test_one_timeout_does_not_fail_the_requests_queued_behind_it(gate_factory, monkeypatch):
    # The first forward pass hangs for 5 s (a stuck batch); the gate allows 3 s per request.
    g = gate_factory(timeout_s=3.0)
    SlowForward(g, monkeypatch, default=0.0, delays={0: 5.0})
    results: dict[str, object] = {}

    def ask(name: str, text: str) -> None:
        results[name] = g.decide(text)

    first = threading.Thread(target=ask, args=("slow", "Delete the production table now."))
    first.start()
    time.sleep(1.0)  # the others queue behind the stuck one, with 2 s of their own deadline left after it
    others = [threading.Thread(target=ask, args=(f"q{k}", f"List the files in folder {k}")) for k in range(6)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(30)
    assert results["slow"].status == "timeout"
    # Before the fix: the timeout shut the worker pool down with cancel_futures=True and every
    # queued request failed closed with CancelledError.
    statuses = {k: (results[k].status, results[k].reason) for k in results if k != "slow"}
    assert all(s == "ok" for s, _ in statuses.values()), statuses
    assert g.counts["fail_closed"] == 1


def test_a_full_queue_turns_the_next_request_away_at_once(gate_factory, monkeypatch):
    g = gate_factory(timeout_s=20.0, queue_max=2)
    SlowForward(g, monkeypatch, default=1.0)
    results: dict[int, tuple[object, float]] = {}

    def ask(k: int) -> None:
        t0 = time.monotonic()
        results[k] = (g.decide(f"List the files in folder {k}"), time.monotonic() - t0)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)  # both are in: one scored, one waiting
    assert g.queue_state()["pending"] == 2
    extra = [threading.Thread(target=ask, args=(k,)) for k in range(2, 5)]
    for t in extra:
        t.start()
    for t in threads + extra:
        t.join(30)
    busy = {k: r for k, r in results.items() if r[0].status == "busy"}
    assert sorted(busy) == [2, 3, 4] and all(r[0].action == Action.REFUSE and r[1] < 0.5 for r in busy.values())
    assert "gate_queue_max" in busy[2][0].reason
    assert [results[k][0].status for k in (0, 1)] == ["ok", "ok"]
    assert g.retry_after_s() >= 1 and g.wait_idle(2.0)


def test_a_busy_gate_never_allows_even_with_escalate_as_the_fail_action(gate_factory, monkeypatch):
    g = gate_factory(timeout_s=20.0, queue_max=1, fail_action="ESCALATE")
    SlowForward(g, monkeypatch, default=1.0)
    t = threading.Thread(target=g.decide, args=("List my files",))
    t.start()
    time.sleep(0.3)
    d = g.decide("List my files")
    t.join(30)
    assert (d.status, d.action, d.probs) == ("busy", Action.ESCALATE, None)


def test_closing_the_gate_stops_queued_and_running_work(gate_factory, monkeypatch):
    g = gate_factory(timeout_s=20.0, max_views=400)
    slow = SlowForward(g, monkeypatch, default=0.2)
    results = []
    threads = [threading.Thread(target=lambda: results.append(g.decide(many_turns(60)))) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    g.close()
    for t in threads:
        t.join(10)
    assert len(results) == 3 and all(r.status != "ok" and r.action == Action.REFUSE for r in results)
    assert g.wait_idle(2.0) and len(slow.starts) <= 5
