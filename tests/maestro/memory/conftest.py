"""Fixtures for the storage tests: every test that takes ``database_url`` (or ``db``) runs
once on SQLite and once on a real PostgreSQL server started for the session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import numpy as np
import pytest

from maestro.memory import Database
from maestro.memory.pgtemp import PgServer, find_bin_dir

REPO_ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL binaries not found (apt-get install postgresql, or set MAESTRO_PG_BIN)"
        )
    server = PgServer(bin_dir)
    try:
        server.start()
    except (RuntimeError, OSError, KeyError) as exc:
        server.stop()
        pytest.skip(f"could not start a PostgreSQL server: {exc}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'maestro.db'}"
    server: PgServer = request.getfixturevalue("pg_server")
    return server.create_database()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await Database.open(database_url)
    yield database
    await database.close()


def hashing_embedder(texts: list[str]) -> np.ndarray:
    """A deterministic bag-of-words embedder (no model): shared words -> similar vectors."""
    out = np.zeros((len(texts), 64), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split():
            word = word.strip(".,!?")
            out[i, sum(map(ord, word)) * 2654435761 % 64] += 1.0
    return out
