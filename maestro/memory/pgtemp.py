"""A throwaway PostgreSQL server: for the storage tests and ``maestro bench memory``.

Not for production data. Uses the system's PostgreSQL binaries (``/usr/lib/postgresql/<v>/bin``
or ``$MAESTRO_PG_BIN``); ``find_bin_dir()`` is ``None`` when they are missing.

``initdb`` refuses to run as root, so as root the cluster is created and run as the
``postgres`` system user, in a temporary directory that user owns; as any other user it runs
as that user. The server listens only on a Unix socket inside the temp dir, with durability
off (fsync, synchronous_commit, full_page_writes): these tests exercise SQL semantics and
concurrency, not crash safety of PostgreSQL itself.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

CANDIDATE_BIN_DIRS = [Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14, 13)]


def find_bin_dir() -> Path | None:
    env = os.environ.get("MAESTRO_PG_BIN")
    dirs = [Path(env)] if env else CANDIDATE_BIN_DIRS
    for d in dirs:
        if (d / "initdb").exists() and (d / "pg_ctl").exists():
            return d
    return None


class PgServer:
    def __init__(self, bin_dir: Path) -> None:
        """Prepare (not start) a cluster in a fresh temporary directory."""
        self.bin_dir = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="maestro-pg-"))
        self.data = self.dir / "data"
        self.port = 5432  # only names the socket file: no TCP listener
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            [*self._as_user, *args], capture_output=True, text=True, timeout=60, cwd=self.dir
        )
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")

    def start(self) -> None:
        self._run(
            str(self.bin_dir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses='' -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
        )
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data), "-o", options,
            "-l", str(self.dir / "server.log"), "-w", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Immediate shutdown (SIGQUIT), then SIGKILL to the server's process group if it has
        not gone within 3 s — on a loaded machine ``pg_ctl stop`` could wait a minute — and
        delete the files."""
        pid_file = self.data / "postmaster.pid"
        try:
            if not pid_file.exists():
                return
            pid = int(pid_file.read_text().split()[0])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGQUIT)
                deadline = time.monotonic() + 3.0
                while time.monotonic() < deadline:
                    os.kill(pid, 0)  # raises ProcessLookupError once it has exited
                    time.sleep(0.05)
                if os.getpgid(pid) == pid:  # the postmaster leads its own process group
                    os.killpg(pid, signal.SIGKILL)
                else:
                    os.kill(pid, signal.SIGKILL)
        finally:
            self._remove_files()

    def _remove_files(self) -> None:
        # A test session leaves tens of databases (tens of thousands of files): deleting them
        # can take half a minute on a busy machine, so a detached `rm` does it in the background.
        try:
            subprocess.Popen(
                ["rm", "-rf", str(self.dir)],
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@/{dbname}?host={self.dir}&port={self.port}"

    def create_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._run(
            str(self.bin_dir / "psql"), "-h", str(self.dir), "-p", str(self.port), "-U",
            "postgres", "-d", "postgres", "-q", "-c", f'CREATE DATABASE "{name}" TEMPLATE template0',
        )  # fmt: skip
        return self.url(name)

    def __enter__(self) -> PgServer:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
