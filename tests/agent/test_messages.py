from so8t.agent.messages import answer_text, escalate_message, language_of, refuse_message


def test_language_follows_the_last_user_message():
    assert (
        language_of(
            [
                {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "やあ"},
                {"role": "user", "content": "ファイルを一覧して"},
            ]
        )
        == "ja"
    )
    assert language_of([{"role": "user", "content": "会議"}, {"role": "user", "content": "list files"}]) == "en"


def test_messages_in_both_languages_carry_their_references():
    assert "abc123" in refuse_message("en", "abc123") and "abc123" in refuse_message("ja", "abc123")
    assert "代わりにできること" in refuse_message("ja", "x") and "What I can do instead" in refuse_message("xx", "x")
    assert "req-1" in escalate_message("ja", "req-1", "2026-12-02 10:00") and "承認" in escalate_message("ja", "r", "t")


def test_the_training_format_is_stripped_from_answers():
    assert answer_text("Action: ALLOW\nHere are your files.\nRationale: routine.") == "Here are your files."
    assert answer_text("Just text, no tag.") == "Just text, no tag."
