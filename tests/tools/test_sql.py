"""Read-only SQL: writes are refused by the database itself, not only by a text check."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from maestro import ToolContext, ToolRetry
from tools.sql import ReadOnlySQL, SQLRefused, check_read_only_statement, sql_tool

WRITES = [
    "INSERT INTO people VALUES (99, 'mallory')",
    "UPDATE people SET name = 'x'",
    "DELETE FROM people",
    "DROP TABLE people",
    "CREATE TABLE evil (x int)",
    "ALTER TABLE people ADD COLUMN y int",
    "SELECT 1; DROP TABLE people",
    "select 1;\n-- trailing\ndelete from people",
    "  /* comment */ TRUNCATE people",
]


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Path:
    path = tmp_path / "app.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT)")
    conn.executemany("INSERT INTO people VALUES (?, ?)", [(i, f"p{i}") for i in range(100)])
    conn.commit()
    conn.close()
    return path


def test_text_check() -> None:
    assert check_read_only_statement("SELECT 'a;b' -- x;\n;") == "SELECT 'a;b' -- x;\n"
    assert check_read_only_statement("(select 1)") == "(select 1)"
    for bad in [*WRITES, "", "   ;  "]:
        with pytest.raises(SQLRefused):
            check_read_only_statement(bad)


def test_sqlite_reads_with_caps(sqlite_db: Path) -> None:
    db = ReadOnlySQL(f"sqlite:///{sqlite_db}", max_rows=5)
    result = db.query("SELECT id, name FROM people WHERE name LIKE 'p1%' ORDER BY id")
    assert result.columns == ["id", "name"] and result.truncated
    assert result.rows == [(1, "p1"), (10, "p10"), (11, "p11"), (12, "p12"), (13, "p13")]
    text = result.to_text()
    assert text.splitlines()[0].startswith("id | name") and text.endswith("(5 rows, truncated)")
    slow = ReadOnlySQL(f"sqlite:///{sqlite_db}", timeout_s=0.3)
    started = time.monotonic()
    with pytest.raises(SQLRefused, match="time cap"):
        slow.query("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
                   "SELECT count(*) FROM c")
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("write", [*WRITES, "WITH x AS (SELECT 1) DELETE FROM people", "WITH x AS (SELECT 1) INSERT INTO people VALUES (1000, 'z')"])
def test_sqlite_refuses_writes(sqlite_db: Path, write: str) -> None:
    db = ReadOnlySQL(f"sqlite:///{sqlite_db}")
    with pytest.raises(SQLRefused):
        db.query(write)
    # Below the text check: the read-only connection and the authorizer refuse as well.
    single = write.split(";")[-1] if "--" not in write else "DELETE FROM people"
    with pytest.raises(SQLRefused):
        db._sqlite(single, time.monotonic())
    for sneaky in ("ATTACH DATABASE ':memory:' AS m", "PRAGMA user_version = 5"):
        with pytest.raises(SQLRefused):
            db._sqlite(sneaky, time.monotonic())
    assert db.query("SELECT count(*) FROM people").rows == [(100,)]


async def test_sql_tool(sqlite_db: Path) -> None:
    ctx = ToolContext(run_id="r", step_id="s", idempotency_key="k")
    sql_query = sql_tool(f"sqlite:///{sqlite_db}")
    assert "p42" in await sql_query.call({"query": "SELECT name FROM people WHERE id = 42"}, ctx)
    with pytest.raises(ToolRetry, match="read-only"):
        await sql_query.call({"query": "DELETE FROM people"}, ctx)


@pytest.mark.postgres
def test_postgres_read_only(postgres_url: str) -> None:
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS people; DROP SEQUENCE IF EXISTS s")
        conn.execute("CREATE TABLE people (id int, name text); CREATE SEQUENCE s")
        conn.execute("INSERT INTO people SELECT g, 'p' || g FROM generate_series(0, 99) g")
    db = ReadOnlySQL(postgres_url, max_rows=3, timeout_s=0.5)
    result = db.query("SELECT id, name FROM people WHERE name LIKE 'p1%' ORDER BY id")
    assert result.rows == [(1, "p1"), (10, "p10"), (11, "p11")] and result.truncated
    for write in [*WRITES, "WITH x AS (DELETE FROM people RETURNING *) SELECT * FROM x", "SELECT nextval('s')", "SELECT pg_sleep(3)"]:
        with pytest.raises(SQLRefused):
            db.query(write)
    # Below the text check: the READ ONLY transaction and the extended protocol refuse too.
    for raw in ("DELETE FROM people", "SELECT 1; DELETE FROM people", "CREATE TABLE e (x int)"):
        with pytest.raises(SQLRefused):
            db._postgres(raw)
    assert db.query("SELECT count(*) FROM people").rows == [(100,)]
