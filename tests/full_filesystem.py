"""A folder whose filesystem really fills up, for tests of what happens when the disk is full.

Two kinds, both giving ENOSPC from the kernel (no mock):

* ``tmpfs``: a 64 KiB tmpfs mounted on the folder (needs root / CAP_SYS_ADMIN; the fixture skips
  with the reason when mount is not permitted). ``fill()`` writes a filler file until the kernel
  says ENOSPC, then small ``test.disk_filler`` records until the log's last page is full too (a
  file's allocated page takes writes after the disk is full); ``free()`` deletes the filler file.
* ``dev_full``: always available. The log file is a symlink to ``/dev/full`` while full (every
  write fails with ENOSPC); ``fill()`` swaps the link in over the real file in one rename,
  ``free()`` puts the real file back. Probes written next to the log still succeed: only the log
  itself is full.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

KINDS = ("tmpfs", "dev_full")
FILLER_EVENT = "test.disk_filler"  # small records that fill the log's last page on a tmpfs


class FullFilesystem:
    def __init__(self, kind: str, folder: Path, filename: str = "audit.jsonl"):
        self.kind, self.folder = kind, folder
        self.log = folder / filename
        self._filler = folder / "filler.bin"
        self._aside = folder / f".{filename}.real"
        self.full = False

    def fill(self) -> None:
        if self.kind == "tmpfs":
            fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                for size in (65536, 4096, 512, 1):  # down to the last byte the kernel gives
                    try:
                        while os.write(fd, b"\0" * size) == size:
                            pass
                    except OSError as exc:
                        assert exc.errno == errno.ENOSPC, exc
            finally:
                os.close(fd)
            if self.log.exists():  # the log's last page still has room: ordinary traffic fills it
                from so8t.agent.audit import AuditError, AuditLog

                filler = AuditLog(self.log)
                try:
                    while True:
                        filler.append(FILLER_EVENT, {})
                except AuditError:
                    pass
        else:
            # Swapped in one rename: the server's threads keep appending while the test fills the
            # store, and a moment with no file at the log's path lets one of them create a fresh log
            # there (the symlink then failed with EEXIST in CI). A hard link keeps the real records.
            link = self.folder / f".{self.log.name}.full"
            link.unlink(missing_ok=True)
            os.symlink("/dev/full", link)
            if self.log.exists() and not self.log.is_symlink():
                self._aside.unlink(missing_ok=True)
                os.link(self.log, self._aside)
            os.replace(link, self.log)
        self.full = True

    def free(self) -> None:
        if self.kind == "tmpfs":
            self._filler.unlink(missing_ok=True)
        else:
            if self._aside.exists():
                os.replace(self._aside, self.log)  # one rename over the link: no moment without a log
            else:
                self.log.unlink()
        self.full = False


def mount_tmpfs(folder: Path, size: str = "64k") -> None:
    """Mount a tmpfs of ``size`` on ``folder``, or skip the test saying why it cannot be done."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot mount a small tmpfs to fill")
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        check=False,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(
            f"mounting a {size} tmpfs is not permitted here (needs root / CAP_SYS_ADMIN): "
            f"{done.stderr.strip() or done.returncode}"
        )


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


def full_filesystem(kind: str, base: Path):
    """Generator for a fixture: yields a FullFilesystem of ``kind`` under ``base``, cleans up."""
    folder = base / f"store-{kind}"
    if kind == "tmpfs":
        mount_tmpfs(folder)
        try:
            yield FullFilesystem(kind, folder)
        finally:
            unmount(folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        yield FullFilesystem(kind, folder)
