"""Migrations, the newer-schema refusal, SQLite settings, and clear errors for bad databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from maestro.memory import Database, SchemaOutOfDateError, SchemaTooNewError, StorageError
from maestro.memory.errors import UserError
from maestro.memory.migrate import head_revision, upgrade_to

EXPECTED_TABLES = {
    "users", "agents", "threads", "messages", "runs", "steps", "events", "memory_items",
    "documents", "chunks", "model_states", "approvals", "alembic_version",
}  # fmt: skip


async def _tables(db: Database) -> set[str]:
    from sqlalchemy import inspect

    async with db.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


async def test_migration_from_an_empty_database(database_url: str) -> None:
    db = await Database.open(database_url)
    try:
        status = await db.status()
        assert status.current == status.head == head_revision()
        assert await _tables(db) >= EXPECTED_TABLES
        # Opening again is a no-op check, not a second migration.
        again = await Database.open(database_url)
        await again.close()
    finally:
        await db.close()


async def test_upgrade_from_the_first_released_schema(database_url: str) -> None:
    """Downgrade to nothing, rebuild the first released revision, then let ``open`` bring it
    to head: the path every existing installation takes when a new revision ships."""
    from alembic import command

    from maestro.memory.migrate import alembic_config

    fresh = await Database.open(database_url)
    async with fresh._connection(write=True) as conn:
        await conn.run_sync(lambda c: command.downgrade(alembic_config(c), "base"))
    assert await _tables(fresh) <= {"alembic_version"}
    async with fresh._connection(write=True) as conn:
        await conn.run_sync(lambda c: upgrade_to(c, "0001"))
    await fresh.close()
    db = await Database.open(database_url)
    try:
        assert (await db.status()).up_to_date
        await db.memory.remember("u", "the full-text triggers came back with the tables")
        assert len(await db.memory.recall("u", "triggers")) == 1
    finally:
        await db.close()


async def test_refuses_a_newer_schema(database_url: str) -> None:
    db = await Database.open(database_url)
    async with db._connection(write=True) as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    await db.close()
    with pytest.raises(SchemaTooNewError, match="newer than this Maestro knows") as err:
        await Database.open(database_url)
    assert "9999_future" in str(err.value)


async def test_without_migrate_an_empty_database_is_reported(database_url: str) -> None:
    with pytest.raises(SchemaOutOfDateError, match="maestro db upgrade"):
        await Database.open(database_url, migrate=False)


async def test_sqlite_connection_settings(tmp_path: Path) -> None:
    db = await Database.open(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        async with db.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
            assert (await conn.exec_driver_sql("PRAGMA busy_timeout")).scalar() >= 5000
    finally:
        await db.close()


async def test_corrupt_sqlite_file_is_a_clear_error_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "maestro.db"
    garbage = b"this is not an sqlite database\x00" * 200
    path.write_bytes(garbage)
    with pytest.raises(StorageError, match="not a valid SQLite database") as err:
        await Database.open(f"sqlite:///{path}")
    assert str(path) in str(err.value)
    assert path.read_bytes() == garbage
    assert (
        not (tmp_path / "maestro.db-wal").exists()
        or (tmp_path / "maestro.db-wal").stat().st_size == 0
    )


@pytest.mark.parametrize(
    "url",
    ["not a url", "mysql://root:hunter2@localhost/db", "sqlite+pysqlcipher:///x.db", "oracle://x"],
)
async def test_wrong_url_is_a_user_error_without_the_password(url: str) -> None:
    with pytest.raises(UserError) as err:
        await Database.open(url)
    assert "hunter2" not in str(err.value)


async def test_unreachable_server_names_the_url_with_password_masked() -> None:
    url = "postgresql://maestro:s3cret-pw@127.0.0.1:1/maestro"
    with pytest.raises(StorageError) as err:
        await Database.open(url)
    message = str(err.value)
    assert "cannot connect to" in message and "127.0.0.1:1" in message
    assert "s3cret-pw" not in message and "***" in message


@pytest.mark.postgres
async def test_missing_postgres_database_is_a_clear_error(pg_server: object) -> None:
    from maestro.memory.pgtemp import PgServer

    assert isinstance(pg_server, PgServer)
    with pytest.raises(StorageError, match="does not exist"):
        await Database.open(pg_server.url("no_such_database"))


async def test_missing_directory_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        await Database.open(f"sqlite:///{tmp_path / 'nope' / 'maestro.db'}")
    assert not (tmp_path / "nope").exists()


async def test_default_database_lives_in_maestro_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAESTRO_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MAESTRO_DATABASE_URL", raising=False)
    db = await Database.open()
    try:
        assert (tmp_path / "home" / "maestro.db").exists()
        assert db.dialect == "sqlite"
    finally:
        await db.close()
