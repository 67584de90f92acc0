"""Fixtures for the built-in tools' tests.

Sandbox tests are marked ``sandbox`` and skipped, with the probe's one-line reason, where
bubblewrap or unprivileged user namespaces are missing. A module-scoped session serves the
escape attempts that leave it usable; tests that kill or exhaust a session start their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import pytest

from tools.python import PythonSandbox, SandboxLimits
from tools.python.sandbox import bwrap_available


@cache
def sandbox_unavailable_reason() -> str | None:
    return bwrap_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("sandbox") is None:
            continue
        reason = sandbox_unavailable_reason()
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"sandbox unavailable: {reason}"))


SMALL_LIMITS = SandboxLimits(
    memory_bytes=1 << 30,
    cpu_seconds=120,
    file_size_bytes=4 << 20,
    open_files=256,
    tmp_bytes=4 << 20,
    workdir_bytes=8 << 20,
)


@pytest.fixture(scope="module")
def shared_sandbox() -> Iterator[PythonSandbox]:
    with PythonSandbox(limits=SMALL_LIMITS, default_timeout=10, kill_grace=1.0) as sandbox:
        sandbox.run("x = 41")
        yield sandbox


@pytest.fixture
def fresh_sandbox() -> Iterator[PythonSandbox]:
    with PythonSandbox(limits=SMALL_LIMITS, default_timeout=10, kill_grace=1.0) as sandbox:
        yield sandbox


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a Unix socket, or a skip where there is none.

    initdb refuses to run as root, so the cluster belongs to the ``postgres`` user.
    """
    import glob
    import os
    import shutil
    import subprocess
    import tempfile

    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins or os.geteuid() != 0 or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL binaries (or root, to run them as postgres) not available")
    bindir = os.path.dirname(bins[-1])
    base = tempfile.mkdtemp(prefix="maestro-pg-")
    os.chmod(base, 0o755)
    shutil.chown(base, "postgres", "postgres")
    data = os.path.join(base, "data")

    def as_postgres(*argv: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=True,
                       capture_output=True, timeout=60)

    try:
        as_postgres(f"{bindir}/initdb", "-D", data, "-A", "trust", "--no-sync", "-U", "postgres")
        as_postgres(f"{bindir}/pg_ctl", "-D", data, "-w", "-l", f"{base}/log", "-o",
                    f"-k {base} -c listen_addresses='' -c fsync=off -p 5439", "start")
        yield f"postgresql://postgres@/postgres?host={base}&port=5439"
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", f"{bindir}/pg_ctl", "-D", data,
                        "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)
