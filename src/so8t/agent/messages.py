"""What the user is told when the gate does not simply answer, in English and Japanese.

A refusal names no rule it could be argued with, offers safe alternatives, and gives the
decision's record id so an administrator can find it in the audit log.
"""

from __future__ import annotations

import re

_JA = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")


def language_of(conversation: list[dict[str, str]]) -> str:
    """'ja' when the last user message has Japanese characters, else 'en'."""
    last = next((m["content"] for m in reversed(conversation) if m.get("role") == "user"), "")
    return "ja" if _JA.search(last) else "en"


REFUSE = {
    "en": (
        "I can't help with this request: the safety gate refused it, and nothing was run.\n"
        "What I can do instead:\n"
        "- explain the topic at a general, safety-focused level;\n"
        "- help with the legitimate goal behind the request if you describe it (for example, "
        "securing your own system rather than getting into someone else's);\n"
        "- point you to official guidance or the right professional (a doctor, a lawyer, the police, "
        "or a crisis line if you or someone else is in danger).\n"
        "If you think this is a mistake, ask an administrator to review decision {ref}."
    ),
    "ja": (
        "このご依頼にはお応えできません。安全ゲートが拒否したため、何も実行していません。\n"
        "代わりにできること：\n"
        "・テーマについて、安全に配慮した一般的な説明をする\n"
        "・依頼の背景にある正当な目的を教えていただければ、その達成を手伝う"
        "（たとえば、他人のシステムに入る方法ではなく自分のシステムを守る方法）\n"
        "・公的な情報源や適切な専門家（医師、弁護士、警察、危険が迫っている場合は相談窓口）を案内する\n"
        "誤りだと思われる場合は、管理者に判定 {ref} の確認を依頼してください。"
    ),
}

ESCALATE = {
    "en": (
        "This request needs a person's approval before I act on it, so it is waiting in the approval "
        "queue (request {approval_id}, expires {expires} UTC). Nothing has been run yet. Once it is "
        "approved it runs exactly as you asked, once; if it is rejected or expires, it does not run."
    ),
    "ja": (
        "このご依頼は実行前に担当者の承認が必要なため、承認待ちにしました（依頼 {approval_id}、"
        "期限 {expires} UTC）。まだ何も実行していません。承認されると、依頼どおりの内容で一度だけ実行されます。"
        "却下または期限切れの場合は実行されません。"
    ),
}

GATE_FAILED = {
    "en": "The safety check could not be completed ({status}), so nothing was run. Please try again later. ",
    "ja": "安全チェックを完了できなかったため（{status}）、何も実行していません。しばらくしてから再度お試しください。",
}

BACKEND_FAILED = {
    "en": "The request was allowed, but the language model did not answer ({error}). Nothing else was run.",
    "ja": "依頼は許可されましたが、言語モデルから応答がありませんでした（{error}）。ほかには何も実行していません。",
}


def answer_text(generated: str) -> str:
    """What the user sees of an answer: a fine-tuned model may write the training format
    ('Action: ALLOW' / text / 'Rationale: ...'); the gate has already decided, so only the text
    is shown. Anything else is returned as it is."""
    from so8t.labels import parse_response

    parsed = parse_response(generated)
    return parsed.text if parsed is not None and parsed.text else generated


def refuse_message(lang: str, ref: str) -> str:
    return REFUSE.get(lang, REFUSE["en"]).format(ref=ref)


def escalate_message(lang: str, approval_id: str, expires: str) -> str:
    return ESCALATE.get(lang, ESCALATE["en"]).format(approval_id=approval_id, expires=expires)


def gate_failed_prefix(lang: str, status: str) -> str:
    return GATE_FAILED.get(lang, GATE_FAILED["en"]).format(status=status)


def backend_failed_message(lang: str, error: str) -> str:
    return BACKEND_FAILED.get(lang, BACKEND_FAILED["en"]).format(error=error)
