"""Turn files into plain text while remembering where each character came from.

Citations must point at a page and lines a person can open, so a loaded document keeps the
full text plus the character offset where each PDF page starts; line numbers are derived from
newlines of the same text, so offsets, lines and pages always agree. Formats:

* text, Markdown, reStructuredText: UTF-8 (invalid bytes replaced), as is;
* HTML: readable text (scripts and styles dropped), via :func:`tools.http.html_to_text`;
* PDF: ``pypdf`` (a maintained, pure-Python parser), one text block per page;
* CSV: one line per row, ``column: value`` pairs, so a row can be cited by its line.
"""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

from maestro import UserError
from tools.http import html_to_text

MAX_FILE_BYTES = 64 << 20
TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text", ""}
SUPPORTED_SUFFIXES = TEXT_SUFFIXES | {".html", ".htm", ".pdf", ".csv"}


@dataclass
class LoadedDocument:
    """A document's text and the offsets needed to cite it."""

    source: str
    title: str
    text: str
    kind: str
    page_starts: list[int] = field(default_factory=list)  # PDF only: offset of each page

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


def _pdf(data: bytes, source: str) -> tuple[str, list[int], str | None]:
    try:
        from pypdf import PdfReader
        from pypdf.errors import PdfReadError
    except ImportError as exc:
        raise UserError("PDF ingest needs pypdf: pip install 'maestro-agents[pdf]'") from exc
    try:
        reader = PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
        title = reader.metadata.title if reader.metadata else None
    except (PdfReadError, ValueError, KeyError) as exc:
        raise UserError(f"{source}: not a readable PDF ({exc})") from exc
    starts, parts, offset = [], [], 0
    for page_text in pages:
        starts.append(offset)
        parts.append(page_text.strip())
        offset += len(parts[-1]) + 2  # the "\n\n" joining pages
    return "\n\n".join(parts), starts, title


def _csv(text: str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return ""
    header, lines = rows[0], []
    for row in rows[1:]:
        pairs = [f"{h.strip() or f'col{i + 1}'}: {v.strip()}" for i, (h, v) in
                 enumerate(zip(header, row, strict=False)) if v.strip()]
        lines.append("; ".join(pairs))
    return "\n".join([", ".join(header), *lines])


def load_bytes(data: bytes, source: str, suffix: str | None = None) -> LoadedDocument:
    """Decode ``data`` according to its suffix (taken from ``source`` when not given)."""
    suffix = (suffix if suffix is not None else Path(source).suffix).lower()
    title = Path(source).name
    if suffix == ".pdf":
        text, starts, pdf_title = _pdf(data, source)
        return LoadedDocument(source, pdf_title or title, text, "pdf", starts)
    decoded = data.decode("utf-8", "replace")
    if suffix in (".html", ".htm"):
        text = html_to_text(decoded)
        if text.startswith("# "):  # html_to_text puts the <title> first
            title = text.split("\n", 1)[0][2:] or title
        return LoadedDocument(source, title, text, "html")
    if suffix == ".csv":
        return LoadedDocument(source, title, _csv(decoded), "csv")
    if suffix in TEXT_SUFFIXES:
        kind = "markdown" if suffix in (".md", ".markdown") else "text"
        for line in decoded.splitlines()[:20]:
            if kind == "markdown" and line.startswith("# "):
                title = line[2:].strip() or title
                break
        return LoadedDocument(source, title, decoded, kind)
    raise UserError(
        f"{source}: unsupported file type {suffix!r}; supported: "
        + ", ".join(sorted(s for s in SUPPORTED_SUFFIXES if s))
    )


def load_path(path: Path) -> LoadedDocument:
    """Read and decode one file (refusing special files and files over the size cap)."""
    if not path.is_file():
        raise UserError(f"{path}: not a regular file")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise UserError(f"{path}: {size} bytes is over the {MAX_FILE_BYTES} byte ingest cap")
    return load_bytes(path.read_bytes(), str(path))


def iter_files(paths: list[Path]) -> list[Path]:
    """The supported files named by ``paths``, directories expanded recursively, sorted."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()
                            and p.suffix.lower() in SUPPORTED_SUFFIXES - {""}
                            and not any(part.startswith(".") for part in p.parts))
        elif path.exists():
            found.append(path)
        else:
            raise UserError(f"{path}: no such file or directory")
    return found
