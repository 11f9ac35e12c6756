"""The audit chain in a database (so8t.agent.audit_db), on SQLite and on a real PostgreSQL server:
the same records and verify as the JSONL file, one chain whoever appends, never a silent loss."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from so8t.agent.audit import GENESIS, KEYED_LOG, AuditError, Redactor, format_report, record_hash
from so8t.agent.audit_db import TABLE, DatabaseAuditLog, open_audit_store, tail_records, verify_database
from so8t.agent.sqlstore import StoreUnavailable
from so8t.cli import main as cli

KEY = b"replica-shared-key"
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    """An empty audit database: a SQLite file, or a fresh database on the session's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'audit.db'}"
    return request.getfixturevalue("postgresql").new_database(f"audit_{uuid.uuid4().hex[:12]}")


def plain(url: str, key: bytes | None = None) -> DatabaseAuditLog:
    return DatabaseAuditLog(url, redact=Redactor({}, secret_keys=None), key=key)


def rows(url: str) -> list[tuple[int, dict]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        out = [(s, json.loads(r)) for s, r in conn.execute(sa.text(f"SELECT seq, record FROM {TABLE} ORDER BY seq"))]
    engine.dispose()
    return out


def execute(url: str, sql: str, **params) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params)
    engine.dispose()


def kinds(report) -> list[tuple[str, int]]:
    return [(p.kind, p.line) for p in report.problems]


def test_records_chain_as_in_the_file_and_read_back_exactly(url):
    log = DatabaseAuditLog(url)  # the default redactor
    written = [
        log.append(
            "gate.refuse",
            {"i": i, "preview": "本番DBを削除して", "nul": "a\x00b", "token": "sk-abcdefghijklmnopqrstuvwxyz0123"},
        )
        for i in range(4)
    ]
    assert [r["seq"] for r in written] == [0, 1, 2, 3] and written[0]["prev"] == GENESIS
    assert all(r["prev"] == p["hash"] for p, r in zip(written, written[1:]))
    assert all(record_hash(r) == r["hash"] for r in written)
    assert written[0]["data"]["token"].startswith("[REDACTED:")  # redacted before it is stored
    assert [rec for _, rec in rows(url)] == written  # stored exactly as returned
    assert log.tail(2) == written[2:] and tail_records(url, 10) == written
    report = log.verify()
    assert report.ok and report.records == 4 and report.head_hash == written[-1]["hash"]
    assert log.health() is None and log.recover() == []
    log.close()


def test_an_edited_or_deleted_row_is_named_by_row_and_kind(url):
    log = plain(url)
    for i in range(5):
        log.append("gate.refuse", {"i": i})
    log.close()
    execute(url, f"UPDATE {TABLE} SET record = replace(record, '\"i\": 1', '\"i\": 9') WHERE seq = 1")
    execute(url, f"DELETE FROM {TABLE} WHERE seq = 3")
    report = verify_database(url)
    assert not report.ok and kinds(report) == [("edited", 2), ("deleted", 4)]
    text = format_report(report)
    assert "row 2 (seq 1): edited" in text and "row 4 (seq 4): deleted: 1 record(s) missing" in text


def test_a_keyed_chain_needs_its_key_to_verify_and_to_grow(url):
    log = plain(url, key=KEY)
    first = log.append("gate.refuse", {"i": 0})
    assert first["mac"] == "hmac-sha256" and first["hash"] != record_hash(first)
    assert verify_database(url, key=KEY).ok
    unkeyed = verify_database(url)
    assert kinds(unkeyed) == [("key_required", 1)] and unkeyed.problems[0].detail == KEYED_LOG
    with pytest.raises(AuditError, match="HMAC-keyed; set SO8T_AUDIT_KEY"):
        plain(url).append("gate.refuse", {"i": 1})  # a writer without the key never downgrades it
    with pytest.raises(AuditError, match="does not verify under this HMAC key"):
        plain(url, key=b"another key").append("gate.refuse", {"i": 1})
    assert len(rows(url)) == 1


_WRITER = """
import sys
from so8t.agent.audit import Redactor
from so8t.agent.audit_db import DatabaseAuditLog
log = DatabaseAuditLog(sys.argv[1], redact=Redactor({}, secret_keys=None))
for i in range(int(sys.argv[2])):
    log.append_batch([("proc.write", {"tag": sys.argv[3], "i": i}), ("proc.write", {"tag": sys.argv[3], "i": -i})])
"""


def test_two_processes_and_threads_appending_at_once_make_one_chain(url):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, url, "10", f"p{k}"], env=env, stderr=subprocess.PIPE, text=True
        )
        for k in range(2)
    ]
    log, errors = plain(url), []

    def work(tag: int) -> None:
        try:
            for i in range(10):
                log.append("thread.write", {"t": tag, "i": i})
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    assert errors == []
    stored = rows(url)
    assert [s for s, _ in stored] == list(range(60)) and [r["seq"] for _, r in stored] == list(range(60))
    # each batch of two is adjacent: appends are serialised whole, never interleaved
    by_seq = [r["data"] for _, r in stored]
    for k in ("p0", "p1"):
        at = [n for n, d in enumerate(by_seq) if d.get("tag") == k]
        assert all(b - a == 1 for a, b in zip(at[::2], at[1::2])), at
    report = verify_database(url)
    assert report.ok and report.records == 60, format_report(report)
    log.close()


def test_a_second_writer_cannot_reuse_a_seq_even_without_the_lock(url):
    log = plain(url)
    log.append("gate.refuse", {"i": 0})
    engine = sa.create_engine(url)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO {TABLE} (seq, record) VALUES (0, '{{}}')"))
    engine.dispose()
    assert verify_database(url).ok


def test_a_store_that_is_not_sqlite_or_postgresql_or_not_a_url_is_refused_by_name():
    with pytest.raises(ValueError, match="'mysql' is not supported; the audit chain is kept in SQLite"):
        DatabaseAuditLog("mysql+pymysql://so8t:pw@127.0.0.1/so8t")
    with pytest.raises(ValueError, match="not a database URL"):
        DatabaseAuditLog("audit.db")


def test_postgresql_without_its_driver_names_the_one_to_use():
    # psycopg2 (what postgresql:// means on SQLAlchemy 2.0) is not what so8t installs
    if importlib.util.find_spec("psycopg2") is not None:
        pytest.skip("psycopg2 is installed here: no missing driver to report")
    with pytest.raises(StoreUnavailable, match=r"driver is not installed.*postgresql\+psycopg://") as exc:
        DatabaseAuditLog("postgresql+psycopg2://so8t:hunter2@127.0.0.1/so8t")
    assert "hunter2" not in str(exc.value) and "so8t:***@" in str(exc.value)


def test_open_audit_store_picks_the_file_or_the_database(tmp_path):
    assert type(open_audit_store(str(tmp_path / "a.jsonl"))).__name__ == "AuditLog"
    store = open_audit_store(f"sqlite:///{tmp_path / 'a.db'}")
    assert isinstance(store, DatabaseAuditLog)
    store.close()


def test_so8t_audit_verify_and_tail_read_a_database_url(url, capsys):
    log = plain(url)
    for i in range(3):
        log.append("gate.escalate", {"i": i})
    log.close()
    assert cli(["audit", "verify", url]) == 0
    assert capsys.readouterr().out.startswith("OK: 3 records, head ")
    assert cli(["audit", "tail", url, "-n", "2"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["1", "2"]
    execute(url, f"UPDATE {TABLE} SET record = replace(record, '\"i\": 2', '\"i\": 5') WHERE seq = 2")
    assert cli(["audit", "verify", url]) == 1
    assert "row 3 (seq 2): edited" in capsys.readouterr().out


def test_verify_of_a_database_without_an_audit_table_says_so(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    assert cli(["audit", "verify", url]) == 2
    assert f"has no table {TABLE}" in capsys.readouterr().err
