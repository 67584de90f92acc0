"""The files tools stay inside the workspace: no '..', no absolute paths, no symlinks."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from maestro import ToolContext, ToolRetry
from tools.files import Workspace, files_tools
from tools.python.harvest import UnsafePathError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("TOP SECRET\n")
    root = tmp_path / "ws"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "guide.md").write_text("# Guide\nInstall with pip.\nThen run maestro.\n")
    (root / "data.csv").write_text("a,b\n1,2\n")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02")
    os.symlink(outside / "secret.txt", root / "link_to_secret.txt")
    os.symlink(outside, root / "link_dir")
    os.symlink("docs/guide.md", root / "inner_link.md")  # inside, but still not followed
    os.mkfifo(root / "pipe")
    return root


@pytest.fixture
def ws(tree: Path) -> Iterator[Workspace]:
    with Workspace(tree) as workspace:
        yield workspace


def test_reads_lists_and_searches(ws: Workspace) -> None:
    assert ws.read_text("docs/guide.md") == "     1  # Guide\n     2  Install with pip.\n     3  Then run maestro."
    assert ws.read_text("docs/guide.md", start_line=2, max_lines=1).startswith("     2  Install")
    listing = ws.list_dir()
    assert "docs/" in listing and "data.csv" in listing
    assert "link_dir (symlink, not followed)" in listing and "pipe (special)" in listing
    assert ws.list_dir(".", "*.md", recursive=True) == ["docs/guide.md", "inner_link.md (symlink, not followed)"]
    hits = ws.search("MAESTRO")
    assert [(h.path, h.line) for h in hits] == [("docs/guide.md", 3)]
    assert [h.line for h in ws.search(r"^Install|^Then", regex=True)] == [2, 3]


@pytest.mark.parametrize(
    "escape",
    [
        "../outside/secret.txt",
        "docs/../../outside/secret.txt",
        "/etc/passwd",
        str(Path("/etc/passwd")),
        "link_to_secret.txt",
        "link_dir/secret.txt",
        "inner_link.md",
        "pipe",
        "docs",
        "blob.bin",
        "",
        "nul\x00byte",
    ],
)
def test_escapes_are_refused(ws: Workspace, escape: str) -> None:
    with pytest.raises((UnsafePathError, OSError)):
        ws.read_text(escape)


def test_listing_and_search_do_not_cross_symlinks(ws: Workspace) -> None:
    with pytest.raises((UnsafePathError, OSError)):
        ws.list_dir("link_dir")
    with pytest.raises(UnsafePathError):
        ws.list_dir("../")
    assert ws.search("TOP SECRET") == []


async def test_tools_turn_refusals_into_retries(ws: Workspace) -> None:
    ctx = ToolContext(run_id="r", step_id="s", idempotency_key="k")
    read_file, list_files, search_files = files_tools(ws)
    assert "Install with pip." in await read_file.call({"path": "docs/guide.md"}, ctx)
    assert "data.csv" in await list_files.call({}, ctx)
    assert "docs/guide.md:2" in await search_files.call({"query": "pip"}, ctx)
    for bad in ("../outside/secret.txt", "link_to_secret.txt"):
        with pytest.raises(ToolRetry, match="workspace"):
            await read_file.call({"path": bad}, ctx)
