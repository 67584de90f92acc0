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
    """A throwaway PostgreSQL server (the storage tests' ``PgServer``), or a skip where there is none."""
    from maestro.memory.pgtemp import PgServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql, or set MAESTRO_PG_BIN)")
    server = PgServer(bin_dir)
    try:
        server.start()
    except (RuntimeError, OSError, KeyError) as exc:
        server.stop()
        pytest.skip(f"could not start a PostgreSQL server: {exc}")
    try:
        yield server.url("postgres")
    finally:
        server.stop()
