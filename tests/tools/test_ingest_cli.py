"""``maestro ingest PATH...`` end to end through the real CLI app (``--no-embed`` keeps it fast;
the embedding path is covered by the slow retrieval test)."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from maestro.cli import build_app

CORPUS = Path(__file__).with_name("corpus")


def test_ingest_command(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'docs.db'}"
    runner = CliRunner()
    first = runner.invoke(build_app(), ["ingest", str(CORPUS), "--url", url, "--chunk-tokens", "50", "--no-embed"])
    assert first.exit_code == 0, first.output
    assert "ingested 4 document(s)" in first.output and "volcanoes.md" in first.output
    again = runner.invoke(build_app(), ["ingest", "--no-embed", "--url", url, str(CORPUS / "bread.txt")])
    assert again.exit_code == 0 and "1 unchanged" in again.output
    missing = runner.invoke(build_app(), ["ingest", str(tmp_path / "nope.txt"), "--url", url, "--no-embed"])
    assert missing.exit_code == 1 and "no such file" in missing.output
    odd = tmp_path / "data.xyz"
    odd.write_text("x")
    unsupported = runner.invoke(build_app(), ["ingest", str(odd), "--url", url, "--no-embed"])
    assert unsupported.exit_code == 1 and "unsupported file type" in unsupported.output
