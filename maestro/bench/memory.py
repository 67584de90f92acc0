"""``maestro bench memory``: message write rate and recall latency, SQLite and PostgreSQL.

Measured in one run, each beside a baseline on the same database so the numbers can be
judged on any machine:

- **Messages written per second** through ``ThreadRepository.add_message`` (one transaction
  per message, the durable path an agent uses), with 1 writer and with 8 (SQLite) / 32
  (PostgreSQL) concurrent writers; beside it the same single-writer inserts done with the raw
  driver (stdlib ``sqlite3`` / ``asyncpg``), so ``ratio_vs_raw`` is our overhead.
- **Recall latency** p50/p95 over 100k memory items (``--quick``: 2k) spread over 100 users
  (the per-user scope recall always has): full-text only, and hybrid (full text + 64-dim
  vectors from a deterministic hashing embedder, fused by RRF). The embedder's own time is
  excluded, since it is the model's cost, not the store's.

PostgreSQL: ``$MAESTRO_BENCH_PG_URL`` if set, else a throwaway local server when the binaries
exist (``maestro.memory.pgtemp``), else skipped with the reason in the report.
"""

from __future__ import annotations

import asyncio
import os
import platform
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from maestro.memory.database import Database

WORDS = [
    "alpha",
    "amber",
    "anchor",
    "apple",
    "archive",
    "atlas",
    "autumn",
    "balance",
    "banner",
    "basket",
    "beacon",
    "berry",
    "blossom",
    "bridge",
    "canyon",
    "carbon",
    "castle",
    "cedar",
    "chapter",
    "circuit",
    "cobalt",
    "comet",
    "copper",
    "coral",
    "crystal",
    "delta",
    "desert",
    "diesel",
    "dragon",
    "ember",
    "engine",
    "falcon",
    "feather",
    "ferry",
    "forest",
    "fossil",
    "galaxy",
    "garden",
    "glacier",
    "granite",
    "harbor",
    "hazel",
    "helmet",
    "horizon",
    "island",
    "ivory",
    "jasmine",
    "jungle",
    "kernel",
    "ladder",
    "lantern",
    "lemon",
    "lotus",
    "magnet",
    "maple",
    "marble",
    "meadow",
    "meteor",
    "mirror",
    "mosaic",
    "needle",
    "nickel",
    "oasis",
    "ocean",
    "olive",
    "orbit",
    "paper",
    "pepper",
    "pillar",
    "planet",
    "prism",
    "quartz",
    "radar",
    "raven",
    "ribbon",
    "river",
    "rocket",
    "saddle",
    "salmon",
    "signal",
    "silver",
    "spiral",
    "spruce",
    "summit",
    "tango",
    "temple",
    "thunder",
    "timber",
    "topaz",
    "tunnel",
    "velvet",
    "violin",
    "walnut",
    "willow",
    "winter",
    "yacht",
    "zephyr",
]
DIM = 64


def hashing_embed(texts: list[str]) -> np.ndarray[Any, np.dtype[np.float32]]:
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.split():
            out[i, hash(word) % DIM] += 1.0
    return out


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))


def _pct(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000.0, q))


async def _write_rate(db: Database, messages: int, writers: int) -> float:
    threads = [await db.threads.create_thread(title=f"bench {i}") for i in range(writers)]
    per = messages // writers

    async def write(thread_id: str) -> None:
        for i in range(per):
            await db.threads.add_message(thread_id, "user", f"benchmark message number {i}")

    start = time.perf_counter()
    await asyncio.gather(*(write(t.id) for t in threads))
    return per * writers / (time.perf_counter() - start)


async def _raw_rate(db: Database, messages: int) -> float:
    """The same one-row-per-transaction inserts through the bare driver."""
    thread = await db.threads.create_thread(title="raw")
    sql = "INSERT INTO messages (thread_id, role, content, data, created_at) VALUES "
    if db.dialect == "sqlite":
        conn = sqlite3.connect(str(db.url.database), isolation_level=None)
        conn.execute("PRAGMA synchronous = NORMAL")
        start = time.perf_counter()
        for i in range(messages):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql + "(?, 'user', ?, '{}', datetime('now'))", (thread.id, f"raw {i}"))
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        conn.close()
        return messages / elapsed
    return await _raw_async_rate(db, messages, thread.id, sql)


async def _raw_async_rate(db: Database, messages: int, thread_id: str, sql: str) -> float:
    """One row per transaction through the bare *async* driver (aiosqlite / asyncpg)."""
    if db.dialect == "sqlite":
        import aiosqlite

        async with aiosqlite.connect(str(db.url.database), isolation_level=None) as conn:
            await conn.execute("PRAGMA synchronous = NORMAL")
            start = time.perf_counter()
            for i in range(messages):
                await conn.execute("BEGIN IMMEDIATE")
                await conn.execute(
                    sql + "(?, 'user', ?, '{}', datetime('now'))", (thread_id, f"raw {i}")
                )
                await conn.execute("COMMIT")
            return messages / (time.perf_counter() - start)
    import asyncpg

    u = db.url
    pg = await asyncpg.connect(
        user=u.username, password=u.password, database=u.database,
        host=u.query.get("host") or u.host, port=int(u.query.get("port") or u.port or 5432),  # type: ignore[arg-type]
    )  # fmt: skip
    try:
        start = time.perf_counter()
        for i in range(messages):
            async with pg.transaction():
                await pg.execute(sql + "($1, 'user', $2, '{}', now())", thread_id, f"raw {i}")
        return messages / (time.perf_counter() - start)
    finally:
        await pg.close()


async def _recall(db: Database, items: int, queries: int) -> dict[str, Any]:
    rng = random.Random(7)
    users = 100
    per_user = items // users
    start = time.perf_counter()
    for u in range(users):
        texts = [_sentence(rng) for _ in range(per_user)]
        await db.memory.remember_many(f"user{u}", texts, embed=hashing_embed)
    load_s = time.perf_counter() - start
    out: dict[str, Any] = {"items": per_user * users, "users": users, "load_s": round(load_s, 2)}
    for mode in ("fulltext", "hybrid"):
        latencies: list[float] = []
        for q in range(queries):
            query = " ".join(rng.choice(WORDS) for _ in range(3))
            user = f"user{q % users}"
            if mode == "hybrid":
                vec = hashing_embed([query])  # embedded once, outside the timing

                def embed(_t: list[str], v: Any = vec) -> Any:
                    return v

                t0 = time.perf_counter()
                await db.memory.recall(user, query, 10, embed=embed)
            else:
                t0 = time.perf_counter()
                await db.memory.recall(user, query, 10)
            latencies.append(time.perf_counter() - t0)
        out[mode] = {
            "p50_ms": round(_pct(latencies, 50), 2),
            "p95_ms": round(_pct(latencies, 95), 2),
        }
    return out


async def _bench_one(url: str, quick: bool) -> dict[str, Any]:
    db = await Database.open(url)
    try:
        writers = 8 if db.dialect == "sqlite" else 32
        messages = 400 if quick else 4000
        ours = await _write_rate(db, messages, 1)
        raw = await _raw_rate(db, messages)
        raw_async = raw
        if db.dialect == "sqlite":
            thread = await db.threads.create_thread(title="raw async")
            raw_async = await _raw_async_rate(
                db, messages, thread.id,
                "INSERT INTO messages (thread_id, role, content, data, created_at) VALUES ",
            )  # fmt: skip
        concurrent = await _write_rate(db, messages, writers)
        recall = await _recall(db, 2_000 if quick else 100_000, 50 if quick else 200)
        return {
            "url": db.display_url,
            "messages_per_s": round(ours, 1),
            "raw_driver_messages_per_s": round(raw, 1),
            "ratio_vs_raw": round(ours / raw, 3),
            "raw_async_driver_messages_per_s": round(raw_async, 1),
            "ratio_vs_raw_async": round(ours / raw_async, 3),
            f"messages_per_s_{writers}_writers": round(concurrent, 1),
            "recall": recall,
        }
    finally:
        await db.close()


async def _run(quick: bool) -> dict[str, Any]:
    import sqlalchemy

    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "sqlite": sqlite3.sqlite_version,
            "sqlalchemy": sqlalchemy.__version__,
        },
        "settings": {"quick": quick, "sqlite": "WAL, synchronous=NORMAL"},
    }
    with tempfile.TemporaryDirectory(prefix="maestro-bench-") as tmp:
        report["sqlite"] = await _bench_one(f"sqlite:///{Path(tmp) / 'bench.db'}", quick)
    pg_url = os.environ.get("MAESTRO_BENCH_PG_URL")
    if pg_url:
        report["postgresql"] = await _bench_one(pg_url, quick)
        return report
    from maestro.memory.pgtemp import PgServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        report["postgresql"] = {"skipped": "no PostgreSQL binaries; set MAESTRO_BENCH_PG_URL"}
        return report
    server = PgServer(bin_dir)
    try:
        server.start()
        report["settings"]["postgresql"] = "throwaway local server, fsync=off, Unix socket"
        report["postgresql"] = await _bench_one(server.create_database(), quick)
    except (RuntimeError, OSError, KeyError) as exc:
        report["postgresql"] = {"skipped": f"could not start PostgreSQL: {exc}"}
    finally:
        server.stop()
    return report


def _print(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"maestro bench memory  ({m['platform']}, {m['cpus']} CPUs, Python {m['python']}, "
          f"SQLite {m['sqlite']}, SQLAlchemy {m['sqlalchemy']})")  # fmt: skip
    for name in ("sqlite", "postgresql"):
        r = report.get(name, {})
        if "skipped" in r:
            print(f"{name}: skipped ({r['skipped']})")
            continue
        conc = next(k for k in r if k.startswith("messages_per_s_"))
        rc = r["recall"]
        print(f"{name}: {r['messages_per_s']:.0f} msg/s (raw driver {r['raw_driver_messages_per_s']:.0f}, "
              f"ratio {r['ratio_vs_raw']:.3f}; raw async driver "
              f"{r['raw_async_driver_messages_per_s']:.0f}, ratio {r['ratio_vs_raw_async']:.3f}); "
              f"{conc.rsplit('_', 2)[1]} writers {r[conc]:.0f} msg/s")  # fmt: skip
        print(f"  recall over {rc['items']} items / {rc['users']} users: full-text p50 "
              f"{rc['fulltext']['p50_ms']} ms p95 {rc['fulltext']['p95_ms']} ms; hybrid p50 "
              f"{rc['hybrid']['p50_ms']} ms p95 {rc['hybrid']['p95_ms']} ms")  # fmt: skip


def main(json_output: bool = False, quick: bool = False) -> dict[str, Any]:
    report = asyncio.run(_run(quick))
    if not json_output:
        _print(report)
    return report
