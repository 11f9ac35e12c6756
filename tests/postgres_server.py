"""Throwaway PostgreSQL servers for the tests (the SQL tool's, and approvals / audit on a shared
database): initdb in a temporary folder, then pg_ctl on a free loopback port with its unix socket in
that folder; stopped and removed at the end. tests/conftest.py exposes two fixtures:

* ``postgresql``: one server for the whole test session; each test module asks it for a database
  of its own (``new_database``).
* ``private_postgresql``: a server of the test's own, which the test may stop and start again
  (a database that goes away mid-run).

./setup.sh installs the server binaries (Debian's postgresql) and the psycopg driver (the dev
extra). Without the binaries the tests that use them are skipped, saying so; when the binaries are
there but the server does not start, they fail with its log. PostgreSQL refuses to run as root:
run as root, the server runs as the 'postgres' user that Debian's package creates."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

PASSWORD = "s3cret-pg-pw"  # the 'so8t' role's password (the 'postgres' role needs none: trust)


def _pg_bin(name: str) -> str | None:
    """A PostgreSQL server program: Debian keeps them off PATH, in /usr/lib/postgresql/N/bin."""
    versions = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return versions[-1] if versions else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    port: int
    folder: Path
    _run: object = None  # runs a server program as the right user

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self, name: str) -> str:
        """An empty database (dropped first if a test left one behind); its SQLAlchemy URL."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def password_url(self, database: str) -> str:
        """The URL of ``database`` for the role 'so8t' with a password (created on first use; the
        server checks it), as a deployment would write it: for tests that check a password is
        needed, and never shown."""
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'so8t'").fetchone() is None:
                conn.execute(f"CREATE ROLE so8t LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
        return f"postgresql+psycopg://so8t:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        """Stop the server now: every client's connection is cut, new ones are refused. (A "fast"
        stop, not "immediate": with synchronous_commit off, an immediate one loses recent commits.)"""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def start(self) -> None:
        """Start it again, on the same port."""
        _start(self._run, self.data, self.folder, self.port)


def _start(run, data: Path, folder: Path, port: int, check: bool = True):
    # No fsync anywhere: a throwaway cluster, and the fsyncs cost seconds on a busy disk.
    options = (
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    return run(
        _pg_bin("pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(folder / "log"),
        "-w",
        "-t",
        "60",
        "-o",
        options,
        "start",
        check=check,
    )


def _server():
    """A started server (a generator: the server is stopped and removed when it is closed)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl): ./setup.sh installs Debian's "
            "postgresql with apt-get when it may (root or passwordless sudo), or install it yourself"
        )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.fail(
            "the PostgreSQL tests need the psycopg driver, in the dev extra: "
            ".venv/bin/pip install -e '.[dev]' (./setup.sh does)"
        )

    as_root = os.geteuid() == 0
    user = None
    if as_root:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail(
                "running as root, and PostgreSQL refuses root, but there is no 'postgres' user "
                "to run it as (Debian's postgresql package creates one)"
            )
    # As root, not under pytest's temporary folder or a TMPDIR of root's: the postgres user must
    # reach this folder, and the unix socket path must stay short.
    folder = Path(tempfile.mkdtemp(prefix="so8t-pg-", dir="/tmp" if as_root else None))
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    data, log = folder / "data", folder / "log"

    def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        done = subprocess.run(
            cmd,
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
            **as_user,
        )
        if check and done.returncode != 0:
            server_log = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            pytest.fail(
                f"{Path(cmd[0]).name} failed ({done.returncode}): "
                f"{(done.stdout + done.stderr).strip()[-2000:]}\n{server_log}"
            )
        return done

    try:
        run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale", "--no-sync")
        # The role 'so8t' (password_url) must give its password over TCP, so a wrong one fails;
        # 'postgres' stays trusted.
        hba = data / "pg_hba.conf"
        hba.write_text("host all so8t 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
        for attempt in range(3):
            port = _free_port()
            if _start(run, data, folder, port, check=attempt == 2).returncode == 0:
                break
            # The free port was taken between our look and the server's bind: another port.
            run(pg_ctl, "-D", str(data), "-m", "immediate", "stop", check=False)
        yield PostgresServer(port=port, folder=folder, _run=run)
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgresql():
    """The session's PostgreSQL server (PostgresServer)."""
    yield from _server()


@pytest.fixture
def private_postgresql():
    """A PostgreSQL server of this test's own (PostgresServer), which it may stop and start."""
    yield from _server()
