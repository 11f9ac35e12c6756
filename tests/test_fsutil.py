"""so8t.fsutil's guarantees: a write replaces the file whole (a reader, or a kill, sees the old file
or the new one, never half), the data is fsynced before the rename, a failed write leaves the old
file as it was and no temporary file behind, an existing file keeps its permissions and a new one
gets the usual ones (0644 less the umask, not mkstemp's 0600), and writing never touches the umask.

Failures are real where they can be: text that UTF-8 cannot encode, data that is not bytes, a
folder in the target's place, a full and a read-only filesystem (a small tmpfs, where mounting is
permitted), a writer killed with SIGKILL. Only the fsync order is observed by wrapping os calls:
losing power cannot be done in a test."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from so8t import fsutil
from so8t.fsutil import atomic_write_bytes, atomic_write_text

from full_filesystem import mount_tmpfs, unmount

SRC = str(Path(fsutil.__file__).resolve().parents[1])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def old(tmp_path) -> Path:
    path = tmp_path / "state.json"
    path.write_bytes(b'{"old": true}\n')
    return path


def test_a_write_replaces_the_file_creates_missing_folders_and_returns_the_path(tmp_path, old):
    assert atomic_write_bytes(str(old), b"new\n") == old and old.read_bytes() == b"new\n"
    deep = tmp_path / "a" / "b" / "c.txt"
    assert atomic_write_text(deep, "日本語のテキスト\n") == deep
    assert deep.read_bytes() == "日本語のテキスト\n".encode() and leftovers(tmp_path) == leftovers(deep.parent) == []


def test_an_existing_file_keeps_its_permissions(tmp_path):
    for bits in (0o600, 0o640, 0o755):
        path = tmp_path / f"f{bits:o}"
        path.write_bytes(b"x")
        path.chmod(bits)
        atomic_write_bytes(path, b"y")
        assert mode(path) == bits


def test_a_new_file_gets_0644_less_the_umask_read_at_import(tmp_path):
    # A fresh interpreter under umask 027: 0640, not mkstemp's 0600 (and not 0644).
    script = f"from so8t.fsutil import atomic_write_bytes; atomic_write_bytes({str(tmp_path / 'new')!r}, b'x')"
    subprocess.run(
        ["sh", "-c", f'umask 027 && exec "{sys.executable}" -c "{script}"'],
        check=True,
        env={**os.environ, "PYTHONPATH": SRC},
        timeout=60,
    )
    assert mode(tmp_path / "new") == 0o640
    atomic_write_bytes(tmp_path / "here", b"x")
    assert mode(tmp_path / "here") == 0o644 & ~fsutil._UMASK


def test_a_write_never_sets_the_umask(tmp_path, monkeypatch):
    # Setting it (even to read it) would give files that other threads create meanwhile the wrong mode.
    def umask(_mask):
        raise AssertionError("fsutil set the process umask during a write")

    monkeypatch.setattr(os, "umask", umask)
    atomic_write_bytes(tmp_path / "new", b"x")
    atomic_write_text(tmp_path / "new", "y")


def test_the_data_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd))
        real_fsync(fd)

    def replace(src, dst, **kw):
        events.append(("replace", str(src), Path(src).read_bytes()))
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes(tmp_path / "f", b"durable")
    assert [e[0] for e in events] == ["fsync", "replace"]
    assert events[1][2] == b"durable"  # whole before the rename
    if isinstance(events[0][1], str):
        assert events[0][1] == events[1][1]  # the temporary file itself was fsynced


@pytest.mark.parametrize(
    "write, error",
    [
        (lambda p: atomic_write_text(p, "a lone surrogate \ud800 cannot be UTF-8"), UnicodeEncodeError),
        (lambda p: atomic_write_bytes(p, "text where bytes belong"), TypeError),  # fails inside the temp file's write
    ],
)
def test_a_value_that_cannot_be_written_leaves_the_old_file_and_no_temporary(old, write, error):
    with pytest.raises(error):
        write(old)
    assert old.read_bytes() == b'{"old": true}\n' and leftovers(old.parent) == []


def test_a_folder_in_the_files_place_is_left_alone_and_no_temporary_stays(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("kept")
    with pytest.raises(IsADirectoryError):  # os.replace refuses: the last step fails, after the fsync
        atomic_write_bytes(target, b"x")
    assert (target / "inside").read_text() == "kept" and leftovers(tmp_path) == []


@pytest.fixture
def small_fs(tmp_path):
    folder = tmp_path / "small"
    mount_tmpfs(folder, "64k")
    try:
        yield folder
    finally:
        unmount(folder)


def test_a_full_disk_leaves_the_old_file_whole_and_no_temporary(small_fs):
    path = small_fs / "state.json"
    atomic_write_bytes(path, b"old contents\n")
    with pytest.raises(OSError) as info:
        atomic_write_bytes(path, b"n" * (1 << 20))  # 1 MiB on a 64 KiB filesystem: ENOSPC mid-write
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == b"old contents\n" and leftovers(small_fs) == []
    atomic_write_bytes(path, b"fits\n")  # and the space the failed write took is free again
    assert path.read_bytes() == b"fits\n"


def test_a_read_only_filesystem_leaves_the_old_file_and_says_so(small_fs):
    path = small_fs / "state.json"
    atomic_write_bytes(path, b"old contents\n")
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True, capture_output=True)
    with pytest.raises(OSError) as info:
        atomic_write_text(path, "new")
    assert info.value.errno == errno.EROFS and path.read_bytes() == b"old contents\n"


def test_a_reader_never_sees_half_a_file(tmp_path):
    path = tmp_path / "big.bin"
    a, b = b"A" * (4 << 20), b"B" * (4 << 20)
    atomic_write_bytes(path, a)
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(path.read_bytes()[:: 1 << 16])  # a sample of every 64 KiB: enough to tell a mix

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(20):
            atomic_write_bytes(path, b if i % 2 == 0 else a)
    finally:
        stop.set()
        reader.join()
    assert seen <= {a[:: 1 << 16], b[:: 1 << 16]}


def test_a_writer_killed_mid_write_leaves_the_old_file_or_the_new_one(tmp_path):
    path = tmp_path / "state.bin"
    a, b = b"A" * (8 << 20), b"B" * (8 << 20)
    atomic_write_bytes(path, a)
    loop = textwrap.dedent(f"""
        from so8t.fsutil import atomic_write_bytes
        print("ready", flush=True)
        i = 0
        while True:
            atomic_write_bytes({str(path)!r}, (b"B" if i % 2 == 0 else b"A") * (8 << 20))
            i += 1
    """)
    for delay in (0.05, 0.2, 0.35):
        proc = subprocess.Popen(
            [sys.executable, "-c", loop], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": SRC}
        )
        try:
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(delay)
        finally:
            proc.kill()
            proc.wait(timeout=30)
            proc.stdout.close()
        assert path.read_bytes() in (a, b)  # a stray .tmp may stay behind after SIGKILL; the file is whole
