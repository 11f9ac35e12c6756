"""The markers chromium, postgres and smtp (pyproject.toml) select the tests that start that service,
and only those: `-m "not chromium and not postgres"` runs everything else. tests/conftest.py marks
every test that uses the postgresql, private_postgresql or smtp fixture (directly or through another
fixture); the Chromium tests and the ones that start a LocalSmtp in their body are marked by hand.

Checked on a few files in one subprocess that only collects (nothing is started): pytest deselects
with the README's kind of expression, and a small plugin reports every test's markers and whether it
was kept."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [
    "tests/agent/test_audit_db.py",
    "tests/agent/test_approvals_on_postgresql.py",
    "tests/agent/tools/test_mail.py",
    "tests/agent/tools/test_browser.py",
    "tests/server/test_a_database_that_goes_away_fails_closed.py",
]
SERVICES = {"chromium", "postgres", "smtp"}
PLUGIN = """
import json
DROPPED = []
def pytest_deselected(items):
    DROPPED.extend(items)
def pytest_collection_finish(session):
    rows = [(i, True) for i in session.items] + [(i, False) for i in DROPPED]
    print("MARKS " + json.dumps({i.nodeid: [sorted({m.name for m in i.iter_markers()}), kept] for i, kept in rows}))
"""


@pytest.fixture(scope="module")
def tests(tmp_path_factory) -> dict[str, tuple[set[str], bool]]:
    """nodeid -> (its service markers, kept by -m 'not chromium and not postgres and not smtp')."""
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "marker_dump.py").write_text(PLUGIN, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "marker_dump",
            "-m",
            "not chromium and not postgres and not smtp",
            *FILES,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("MARKS "))
    return {n: (set(marks) & SERVICES, kept) for n, (marks, kept) in json.loads(line[len("MARKS ") :]).items()}


def test_a_test_is_deselected_exactly_when_it_carries_a_service_marker(tests):
    assert tests and all(kept == (not marks) for marks, kept in tests.values())
    assert {m for marks, _ in tests.values() for m in marks} == SERVICES


def test_every_test_on_a_postgresql_server_is_marked_postgres_and_nothing_else_is(tests):
    gone = "tests/server/test_a_database_that_goes_away_fails_closed.py::"
    pg = {n for n, (marks, _) in tests.items() if "postgres" in marks}
    assert "tests/agent/test_audit_db.py::test_records_chain_as_in_the_file_and_read_back_exactly[postgresql]" in pg
    assert not any(n.endswith("[sqlite]") for n in pg)  # the SQLite half of the same tests
    assert any(n.startswith("tests/agent/test_approvals_on_postgresql.py::") for n in pg)  # through its db fixture
    assert gone + "test_a_database_that_goes_away_refuses_escalations_and_comes_back" in pg  # private_postgresql
    assert gone + "test_a_wrong_password_stops_serve_at_start_without_showing_it" in pg
    assert gone + "test_an_unreachable_database_stops_serve_at_start_naming_the_key_and_url" not in pg  # no server
    assert {n.split("::")[0] for n in pg} == {
        "tests/agent/test_audit_db.py",
        "tests/agent/test_approvals_on_postgresql.py",
        "tests/server/test_a_database_that_goes_away_fails_closed.py",
    }


def test_the_smtp_fixture_and_a_local_smtp_server_mark_a_test_smtp(tests):
    smtp = {n for n, (marks, _) in tests.items() if "smtp" in marks}
    mail = "tests/agent/tools/test_mail.py::"
    assert all(n.startswith(mail) for n in smtp)
    assert mail + "test_a_draft_is_sent_exactly_as_written_japanese_included" in smtp  # the smtp fixture
    assert mail + "test_header_like_text_on_one_line_is_sent_as_plain_text" in smtp  # a LocalSmtp in its body
    assert mail + "test_the_sender_name_is_checked_too" not in smtp  # starts no server


def test_the_tests_that_launch_chromium_are_marked_chromium(tests):
    chromium = {n for n, (marks, _) in tests.items() if "chromium" in marks}
    browser = "tests/agent/tools/test_browser.py::"
    assert browser + "test_a_page_is_read_with_its_title_text_screenshot_and_status" in chromium
    assert all(n.startswith(browser) for n in chromium)
    assert browser + "test_allowlist_entries" not in chromium
    assert not any(n.startswith(browser + "test_refused_urls_start_no_browser") for n in chromium)
