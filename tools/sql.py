"""Read-only SQL for the model: SQLite and PostgreSQL, with row and time caps.

The model writes the query, so the query is untrusted. Refusing writes by looking at the
text alone is a losing game (``WITH x AS (...) DELETE``, ``SELECT func_with_side_effects()``),
so the database itself enforces read-only and the text check only exists to give a clear,
early message:

* **SQLite** is opened with a URI in ``mode=ro`` plus ``PRAGMA query_only``, and an
  authorizer callback allows only reading actions (SELECT, READ, FUNCTION, RECURSIVE) — no
  ATTACH, no PRAGMA writes, no schema changes. A progress handler enforces the time cap.
* **PostgreSQL** (psycopg 3) runs every query in a ``READ ONLY`` transaction with a
  ``statement_timeout``, through the extended protocol (which rejects several statements in
  one call), and always rolls back.
* The text check refuses more than one statement and anything that does not start with
  SELECT / WITH / VALUES / EXPLAIN / SHOW / TABLE, after removing comments and string literals.

Results come back as a plain-text table, at most ``max_rows`` rows, cells truncated.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from maestro import Tool, ToolRetry, UserError, tool

_ALLOWED_FIRST_WORDS = {"select", "with", "values", "explain", "show", "table"}
_LITERALS_AND_COMMENTS = re.compile(
    r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\$(\w*)\$.*?\$\1\$", re.DOTALL
)
_SQLITE_READ_ACTIONS = {
    sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE,
}


class SQLRefused(ValueError):
    """The query was refused (not read-only, several statements) or failed; says why."""


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]
    truncated: bool
    elapsed_s: float

    def to_text(self, max_cell: int = 200) -> str:
        """A fixed-width text table; the model reads it, people can too."""
        def cell(value: Any) -> str:
            text = "NULL" if value is None else str(value).replace("\n", " ")
            return text if len(text) <= max_cell else text[: max_cell - 1] + "…"

        body = [[cell(v) for v in row] for row in self.rows]
        widths = [max([len(c)] + [len(r[i]) for r in body]) for i, c in enumerate(self.columns)]
        lines = [" | ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True))]
        lines.append("-+-".join("-" * w for w in widths))
        lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in body]
        footer = f"({len(self.rows)} row{'s' if len(self.rows) != 1 else ''}"
        footer += ", truncated)" if self.truncated else ")"
        return "\n".join([*lines, footer])


def check_read_only_statement(query: str) -> str:
    """Return the single statement without its trailing ';', or raise SQLRefused."""
    stripped = _LITERALS_AND_COMMENTS.sub(" ", query).strip()
    if stripped.endswith(";"):
        stripped = stripped[:-1].rstrip()
        query = query.rstrip().rstrip(";")
    if not stripped:
        raise SQLRefused("empty query")
    if ";" in stripped:
        raise SQLRefused("only one statement per call is allowed")
    first = stripped.split(None, 1)[0].lower().lstrip("(")
    if first not in _ALLOWED_FIRST_WORDS:
        raise SQLRefused(
            f"only read-only queries are allowed (SELECT, WITH, VALUES, EXPLAIN, SHOW); "
            f"got {first.upper()}"
        )
    return query


class ReadOnlySQL:
    """A read-only connection factory for ``sqlite:///path`` or ``postgresql://...`` URLs."""

    def __init__(self, url: str, *, max_rows: int = 200, timeout_s: float = 10.0) -> None:
        self.url = url
        self.max_rows = max_rows
        self.timeout_s = timeout_s
        scheme = urlparse(url).scheme.split("+", 1)[0]
        if scheme not in ("sqlite", "postgresql", "postgres"):
            raise UserError(f"unsupported database URL {url!r}; use sqlite:/// or postgresql://")
        self.dialect = "sqlite" if scheme == "sqlite" else "postgresql"

    def query(self, sql: str) -> QueryResult:
        statement = check_read_only_statement(sql)
        started = time.monotonic()
        if self.dialect == "sqlite":
            columns, rows = self._sqlite(statement, started)
        else:
            columns, rows = self._postgres(statement)
        truncated = len(rows) > self.max_rows
        return QueryResult(columns, rows[: self.max_rows], truncated, time.monotonic() - started)

    def _sqlite(self, statement: str, started: float) -> tuple[list[str], list[tuple[Any, ...]]]:
        path = self.url.split(":///", 1)[1] if ":///" in self.url else ""
        if not path or path == ":memory:":
            raise UserError("a read-only SQLite URL needs a file: sqlite:///path/to/db.sqlite")
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=self.timeout_s)
        except sqlite3.Error as exc:
            raise SQLRefused(f"cannot open {path!r} read-only: {exc}") from exc
        try:
            conn.execute("PRAGMA query_only = ON")

            def authorize(action: int, *_: object) -> int:
                return sqlite3.SQLITE_OK if action in _SQLITE_READ_ACTIONS else sqlite3.SQLITE_DENY

            conn.set_authorizer(authorize)
            deadline = started + self.timeout_s
            conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
            try:
                cursor = conn.execute(statement)
                rows = cursor.fetchmany(self.max_rows + 1)
            except sqlite3.Error as exc:
                if "interrupted" in str(exc):
                    raise SQLRefused(f"query exceeded the {self.timeout_s} s time cap") from exc
                raise SQLRefused(f"query failed: {exc}") from exc
            columns = [d[0] for d in cursor.description or ()]
            return columns, [tuple(r) for r in rows]
        finally:
            conn.close()

    def _postgres(self, statement: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        try:
            import psycopg
        except ImportError as exc:
            raise UserError("PostgreSQL needs psycopg: pip install 'maestro-agents[postgres]'") from exc
        url = self.url.replace("postgresql+psycopg://", "postgresql://", 1)
        try:
            # autocommit, so that our explicit BEGIN READ ONLY opens the transaction (psycopg
            # would otherwise have opened a read-write one already); the session default is
            # read-only as well, in case anything slips outside that transaction.
            conn = psycopg.connect(
                url, connect_timeout=max(1, int(self.timeout_s)), autocommit=True,
                options="-c default_transaction_read_only=on",
            )
        except psycopg.Error as exc:
            raise SQLRefused(f"cannot connect: {exc}") from exc
        try:
            with conn.cursor() as cur:
                cur.execute("BEGIN READ ONLY")
                cur.execute("SELECT set_config('statement_timeout', %s, true)",
                            (str(int(self.timeout_s * 1000)),))
                try:
                    # Parameters (even none) force the extended protocol: one statement only.
                    cur.execute(statement.replace("%", "%%"), [], prepare=False)
                    rows = cur.fetchmany(self.max_rows + 1) if cur.description else []
                except psycopg.errors.QueryCanceled as exc:
                    raise SQLRefused(f"query exceeded the {self.timeout_s} s time cap") from exc
                except psycopg.Error as exc:
                    raise SQLRefused(f"query failed: {exc}".strip()) from exc
                columns = [d.name for d in cur.description or ()]
                return columns, [tuple(r) for r in rows]
        finally:
            try:
                conn.execute("ROLLBACK")
            finally:
                conn.close()


def sql_tool(url: str, *, max_rows: int = 200, timeout_s: float = 10.0,
             name: str = "sql_query") -> Tool:
    """A tool running read-only queries against ``url``."""
    db = ReadOnlySQL(url, max_rows=max_rows, timeout_s=timeout_s)

    @tool(name=name, timeout=timeout_s + 5)
    def sql_query(query: str) -> str:
        """Run one read-only SQL query (SELECT / WITH) and return the rows as a table.

        Args:
            query: A single SELECT statement. Writes and multiple statements are refused.
        """
        try:
            return db.query(query).to_text()
        except SQLRefused as exc:
            raise ToolRetry(f"{exc}. Write a single read-only SELECT and try again.") from exc

    sql_query.description += f" Database dialect: {db.dialect}."
    return sql_query
