"""`so8t chat`: a conversation in the terminal through the same router as the server (gate first).

Guarantees:
- every message goes through ``Router.handle``; a turn that was not answered (pending, refused,
  failed) does not stay in the conversation's context;
- an escalated message is followed until it is decided: before every prompt, each request of
  this session that still waits is looked up (``Service.follow_up``); once a person approves it
  (on the approvals page of a server sharing the queue, or with ``so8t approvals approve``) it is
  run exactly once and its answer is printed; a rejection (with its reason), an expiry or a failure
  is printed too, and an edit is followed to the request it became;
- ``/wait`` polls until every waiting request is decided (Ctrl-C stops waiting, not the chat);
  ``/pending`` lists them; an empty line checks again. An answer that arrives later is shown, not added to the context
  (the conversation has moved on since).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from so8t.agent.approvals import Status
from so8t.agent.messages import answer_text

COMMANDS = ("/quit", "/exit", "/reset", "/pending", "/wait")
HELP = (
    "so8t chat: every message goes through the Safety Gate. /reset starts over, /pending lists requests "
    "waiting for approval, /wait waits for them, /quit (or Ctrl-D) ends."
)


class TerminalChat:
    """One user's conversation; ``say`` prints a line."""

    def __init__(self, service, user: str, say: Callable[[str], None] = print):
        self.service, self.user, self.say = service, user, say
        self.convo: list[dict[str, str]] = []
        self.waiting: list[str] = []  # approval ids of this session's escalated messages

    def send(self, text: str) -> None:
        self.convo.append({"role": "user", "content": text})
        res = self.service.router.handle(self.convo, self.user)
        d = res.decision
        probs = " ".join(f"{a[0]}={p:.2f}" for a, p in zip(("ALLOW", "ESCALATE", "REFUSE"), d.probs or ()))
        self.say(f"[{d.action.name} {d.status}{' ' + probs if probs else ''}] {res.outcome}")
        self.say(f"so8t> {res.text}")
        if res.outcome == "answered":
            self.convo.append({"role": "assistant", "content": res.text})
        else:
            self.convo.pop()
        if res.outcome == "pending" and res.approval_id:
            self.waiting.append(res.approval_id)
            self.say("(the answer appears here once a person approves it; /wait waits for it)")

    def check(self) -> int:
        """Print every waiting request that has been decided since; returns how many still wait."""
        still = []
        for approval_id in self.waiting:
            try:
                f = self.service.follow_up(approval_id)
            except Exception as exc:  # noqa: BLE001 - the queue or the log failing must not end the chat
                self.say(f"[approval {approval_id[:12]}: cannot be read now: {exc}]")
                still.append(approval_id)
                continue
            if f.done:
                self._report(f)
            else:
                still.append(approval_id)
        self.waiting = still
        return len(still)

    def _report(self, f) -> None:
        edited = f" (edited into {f.id[:12]})" if f.id != f.asked_id else ""
        head = f"[approval {f.asked_id[:12]}{edited}: {f.status}"
        if f.status is Status.EXECUTED:
            self.say(f"{head}, approved by {f.by}]")
            self.say(f"so8t> {answer_text(f.answer or '')}")
        elif f.status is Status.REJECTED:
            self.say(f"{head} by {f.by}: {f.reason}] nothing was run")
        elif f.status is Status.TIMEOUT:
            self.say(f"{head}: nobody decided before it expired] nothing was run")
        else:
            self.say(f"{head}: {f.reason}]")

    def pending(self) -> None:
        self.say(
            "\n".join(f"  {a[:12]}: {self.service.follow_up(a).status}" for a in self.waiting)
            if self.waiting
            else "(nothing waits for approval)"
        )

    def wait(self, poll_s: float = 1.0, sleep: Callable[[float], None] = time.sleep) -> None:
        if not self.waiting:
            self.say("(nothing waits for approval)")
            return
        self.say(f"waiting for {len(self.waiting)} request(s) to be decided; Ctrl-C stops waiting")
        try:
            while self.check():
                sleep(poll_s)
        except KeyboardInterrupt:
            self.say(f"\n(stopped waiting; {len(self.waiting)} still wait)")

    def command(self, line: str) -> bool:
        """Run one of COMMANDS; False when the chat should end."""
        if line in ("/quit", "/exit"):
            return False
        if line == "/reset":
            self.convo = []
            self.say("(new conversation)")
        elif line == "/pending":
            self.pending()
        elif line == "/wait":
            self.wait()
        return True


def run_chat(
    service, user: str | None = None, read: Callable[[str], str] | None = None, say: Callable[[str], None] = print
) -> None:
    """The loop: decided requests first, then a line from ``read`` (input) as a message or command."""
    read = read or input
    chat = TerminalChat(service, user or os.environ.get("USER", "terminal"), say)
    say(HELP)
    while True:
        chat.check()  # an empty line just checks again
        try:
            line = read("you> ").strip()
        except EOFError:
            say("")
            break
        if line in COMMANDS:
            if not chat.command(line):
                break
        elif line:
            chat.send(line)  # anything else is a message, "/etc/hosts?" too
