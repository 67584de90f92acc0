"""``maestro bench tools``: sandbox start and call overhead, ingest throughput, search latency.

Each number comes with a baseline measured in the same run, so machine noise cancels in the
ratio:

* **sandbox start** — a fresh :class:`PythonSandbox` (bubblewrap, user/PID/net/mount
  namespaces, rlimits, Landlock, seccomp, handshake) vs starting the bare interpreter
  (``python3 -I -c pass``) as a subprocess;
* **per-call overhead** — ``run("pass")`` round trips on a warm session vs ``exec`` of the
  same compiled cell in-process (the floor: what isolation adds is the pipe and the capture);
* **ingest** — PDF pages per second through load (pypdf) + chunk + store (SQLite FTS5), for a
  generated PDF of ~350 words a page;
* **search** — median latency over a store of 10k chunks (1k with ``--quick``): full text
  alone, vector alone (384-dim vectors from a hashing embedder, ranked in numpy) and hybrid
  (both, fused by RRF), which is what the retrieval tool runs.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import subprocess
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from maestro.bench import machine_info

_SYLLABLES = ("ka", "lo", "mi", "ren", "tas", "vo", "quel", "dor", "pi", "sa", "nu", "bex",
              "tor", "ly", "gan", "fe", "zu", "mar", "ol", "wen")


def _vocabulary(size: int = 5000) -> list[str]:
    """Deterministic pseudo-words; sampled with Zipf weights they give text whose term
    statistics look like natural language (a few very common words, a long tail)."""
    rng = random.Random(11)
    words: dict[str, None] = {}
    while len(words) < size:
        words["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4)))] = None
    return list(words)


_WORDS = _vocabulary()
_ZIPF = [1.0 / (rank + 1) for rank in range(len(_WORDS))]


def _hash_embed(texts: list[str]) -> Any:
    import numpy as np

    out = np.zeros((len(texts), 384), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            out[row, zlib.crc32(word.encode()) % 384] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choices(_WORDS, weights=_ZIPF, k=n)) + "."


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 3)


def bench_sandbox(starts: int, calls: int) -> dict[str, Any]:
    from tools.python import PythonSandbox
    from tools.python.sandbox import bwrap_available

    reason = bwrap_available()
    if reason is not None:
        return {"skipped": reason}
    start_s, bare_s = [], []
    for _ in range(starts):
        t = time.perf_counter()
        sandbox = PythonSandbox()
        sandbox.start()
        start_s.append(time.perf_counter() - t)
        sandbox.close()
        t = time.perf_counter()
        subprocess.run(["/usr/bin/python3", "-I", "-c", "pass"], check=True)
        bare_s.append(time.perf_counter() - t)
    call_s, exec_s = [], []
    code = compile("pass", "<cell>", "exec")
    with PythonSandbox() as sandbox:
        sandbox.run("pass")
        for _ in range(calls):
            t = time.perf_counter()
            sandbox.run("pass")
            call_s.append(time.perf_counter() - t)
            t = time.perf_counter()
            exec(code, {})
            exec_s.append(time.perf_counter() - t)
        landlock = sandbox.info.get("landlock_abi")
    return {
        "session_start_ms": _median_ms(start_s),
        "bare_python_start_ms": _median_ms(bare_s),
        "start_ratio_vs_bare_python": round(statistics.median(start_s) / statistics.median(bare_s), 2),
        "call_overhead_ms": _median_ms(call_s),
        "in_process_exec_ms": _median_ms(exec_s),
        "starts": starts,
        "calls": calls,
        "landlock_abi": landlock,
    }


async def bench_retrieval(pages: int, chunks: int, queries: int) -> dict[str, Any]:
    from maestro.memory import ChunkInput, Database
    from tools.retrieval import Retriever
    from tools.retrieval.pdfgen import make_pdf

    rng = random.Random(7)
    with tempfile.TemporaryDirectory(prefix="maestro-bench-tools-") as tmp:
        pdf = Path(tmp) / "bench.pdf"
        pdf.write_bytes(make_pdf([[_sentence(rng, 12) for _ in range(30)] for _ in range(pages)]))
        db = await Database.open(f"sqlite+aiosqlite:///{tmp}/ingest.db")
        try:
            report = await Retriever(db).ingest_paths([pdf])
        finally:
            await db.close()
        db = await Database.open(f"sqlite+aiosqlite:///{tmp}/search.db")
        try:
            doc = await db.documents.add_document("synthetic", title="synthetic corpus")
            batch = 2000
            for lo in range(0, chunks, batch):
                texts = [_sentence(rng, 120) for _ in range(min(batch, chunks - lo))]
                await db.documents.add_chunks(
                    doc.id, [ChunkInput(t, 0, len(t)) for t in texts], _hash_embed(texts))
            # Queries mix a common word with two mid-frequency ones, like real questions.
            asked = [" ".join([rng.choice(_WORDS[:20]), *rng.sample(_WORDS[50:1000], 2)])
                     for _ in range(queries)]
            timings: dict[str, list[float]] = {"fulltext": [], "vector": [], "hybrid": []}
            hybrid = Retriever(db, embedder=_hash_embed)
            for query in asked:
                t = time.perf_counter()
                await db.documents.search_chunks_fulltext(query, 10)
                timings["fulltext"].append(time.perf_counter() - t)
                t = time.perf_counter()
                await db.documents.search_chunks_vector(_hash_embed([query])[0], 10)
                timings["vector"].append(time.perf_counter() - t)
                t = time.perf_counter()
                await hybrid.search(query, 5)
                timings["hybrid"].append(time.perf_counter() - t)
        finally:
            await db.close()
    return {
        "ingest_pages": pages,
        "ingest_chunks": report.chunks,
        "ingest_seconds": round(report.seconds, 3),
        "ingest_pages_per_s": round(pages / report.seconds, 1) if report.seconds else None,
        "search_chunks": chunks,
        "search_queries": queries,
        **{f"search_{k}_ms": _median_ms(v) for k, v in timings.items()},
    }


def main(json_output: bool = False, quick: bool = False) -> dict[str, Any]:
    """Run the benchmark; print a table unless ``json_output`` (the caller prints JSON)."""
    settings = {"quick": quick, "starts": 3 if quick else 10, "calls": 50 if quick else 300,
                "pdf_pages": 20 if quick else 100, "search_chunks": 1000 if quick else 10_000,
                "queries": 10 if quick else 30}
    report: dict[str, Any] = {
        "machine": machine_info(),
        "settings": settings,
        "sandbox": bench_sandbox(settings["starts"], settings["calls"]),
        "retrieval": asyncio.run(bench_retrieval(settings["pdf_pages"],
                                                 settings["search_chunks"], settings["queries"])),
    }
    if not json_output:
        machine = report["machine"]
        print(f"maestro bench tools — {machine.get('cpu', machine['processor'])}, "
              f"{machine['cpu_count']} CPUs, Python {machine['python']}")
        print(f"settings: {json.dumps(settings)}")
        for section in ("sandbox", "retrieval"):
            for key, value in report[section].items():
                print(f"  {section:<9} {key:<32} {value}")
    return report
