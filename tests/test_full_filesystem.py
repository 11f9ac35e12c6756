"""The tests' full-disk helper itself: filling and freeing the ``dev_full`` kind while another
thread keeps appending to the log never leaves a moment without a file at the log's path.

Regression: CI failed with ``FileExistsError: '/dev/full' -> '.../audit.jsonl'`` because ``fill()``
moved the real log aside and then created the symlink: a server thread appending in between
created a fresh log in the gap, and the symlink could not be made."""

from __future__ import annotations

import threading

from so8t.agent.audit import AuditError, AuditLog

from full_filesystem import full_filesystem


def test_filling_and_freeing_races_no_writer_and_keeps_every_record(tmp_path):
    gen = full_filesystem("dev_full", tmp_path)
    store = next(gen)
    log = AuditLog(store.log)
    log.append("test.first", {})
    stop, written = threading.Event(), []

    def keep_appending() -> None:
        while not stop.is_set():
            try:
                log.append("test.tick", {})
                written.append(1)
            except AuditError:
                pass  # full: the record is refused, as it should be

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        for _ in range(300):
            store.fill()
            assert store.log.is_symlink()
            store.free()
            assert not store.log.is_symlink()
    finally:
        stop.set()
        writer.join()
        gen.close()
    lines = store.log.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + len(written)  # every append that succeeded is in the one real file
