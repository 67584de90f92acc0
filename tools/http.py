"""HTTP fetch for the model: only allow-listed hosts, bounded size and time, text out.

A model that can fetch arbitrary URLs can be steered (by a prompt injection in a page it
read) into exfiltrating data or probing the internal network. So every request — and every
redirect hop, which is re-checked rather than followed blindly — must name an allow-listed
host over http(s), with no user-info in the URL. Entries are exact host names, ``host:port``,
or ``*.example.com`` (any subdomain, not the bare domain and not ``example.com.evil.net``).
Bodies are streamed and cut off at ``max_bytes`` (a lying or missing Content-Length does not
help), the whole exchange has a deadline, and HTML is reduced to readable text.

Not covered: the allow-list is by name, so a listed host whose DNS points at an internal
address is still reached — list only hosts you trust.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx

from maestro import Tool, ToolRetry, UserError, tool

_SKIP_TAGS = {"script", "style", "noscript", "template", "svg", "head"}
_BLOCK_TAGS = {
    "p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
    "header", "footer", "table", "ul", "ol", "pre", "blockquote", "title",
}


class FetchRefused(ValueError):
    """The URL is not allowed, the body is too large, or the fetch failed; says which."""


@dataclass
class FetchResult:
    url: str
    status: int
    content_type: str
    text: str
    truncated: bool

    def to_text(self) -> str:
        head = f"{self.status} {self.url} ({self.content_type or 'unknown type'})"
        return head + "\n\n" + self.text + ("\n[... truncated]" if self.truncated else "")


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in _SKIP_TAGS:
            self.skip_depth += 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in _SKIP_TAGS and self.skip_depth:
            self.skip_depth -= 1
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        elif not self.skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    """Readable text of an HTML page: scripts and styles dropped, whitespace collapsed."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    body = "\n".join(line for line in lines if line)
    title = " ".join(parser.title.split())
    return f"# {title}\n\n{body}" if title else body


class HttpFetcher:
    """GET pages from allow-listed hosts. ``transport`` is the seam for tests."""

    def __init__(
        self,
        allowed_hosts: list[str],
        *,
        max_bytes: int = 2 << 20,
        max_chars: int = 20_000,
        timeout_s: float = 15.0,
        max_redirects: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not allowed_hosts:
            raise UserError("HttpFetcher needs at least one allowed host")
        self.allowed = [h.lower().strip() for h in allowed_hosts]
        self.max_bytes = max_bytes
        self.max_chars = max_chars
        self.timeout_s = timeout_s
        self.max_redirects = max_redirects
        self.transport = transport

    def check_url(self, url: str) -> httpx.URL:
        """Parse ``url`` and refuse it unless it is http(s) to an allow-listed host."""
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise FetchRefused(f"invalid URL {url!r}: {exc}") from exc
        if parsed.scheme not in ("http", "https"):
            raise FetchRefused(f"only http and https URLs are allowed, not {parsed.scheme!r}")
        if parsed.userinfo:
            raise FetchRefused("URLs with user names or passwords are not allowed")
        host = parsed.host.lower().rstrip(".")
        port = parsed.port
        for entry in self.allowed:
            name, _, entry_port = entry.partition(":")
            if entry_port and str(port or "") != entry_port:
                continue
            if not entry_port and port not in (None, 80, 443):
                continue
            if name.startswith("*."):
                if host.endswith(name[1:]) and host != name[2:]:
                    return parsed
            elif host == name:
                return parsed
        raise FetchRefused(f"host {host!r} is not in the allow-list ({', '.join(self.allowed)})")

    async def fetch(self, url: str) -> FetchResult:
        """GET ``url``, following allow-listed redirects; body capped, HTML turned to text."""
        deadline = time.monotonic() + self.timeout_s
        target = self.check_url(url)
        async with httpx.AsyncClient(
            transport=self.transport, follow_redirects=False, timeout=self.timeout_s,
            headers={"User-Agent": "maestro-fetch/0.1", "Accept-Encoding": "identity"},
        ) as client:
            for _hop in range(self.max_redirects + 1):
                try:
                    result = await self._get(client, target, deadline)
                except httpx.TimeoutException as exc:
                    raise FetchRefused(f"fetching {target} timed out") from exc
                except httpx.HTTPError as exc:
                    raise FetchRefused(f"fetching {target} failed: {exc}") from exc
                if isinstance(result, FetchResult):
                    return result
                target = self.check_url(urljoin(str(target), result))
        raise FetchRefused(f"more than {self.max_redirects} redirects")

    async def _get(
        self, client: httpx.AsyncClient, url: httpx.URL, deadline: float
    ) -> FetchResult | str:
        async with client.stream("GET", url) as response:
            if response.is_redirect and "location" in response.headers:
                return response.headers["location"]
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                raise FetchRefused(f"body of {declared} bytes exceeds the {self.max_bytes} cap")
            body = bytearray()
            async for chunk in response.aiter_bytes():  # decoded; checked chunk by chunk
                body += chunk
                if len(body) > self.max_bytes:
                    raise FetchRefused(f"body exceeds the {self.max_bytes} byte cap")
                if time.monotonic() > deadline:
                    raise FetchRefused(f"fetching {url} took longer than {self.timeout_s} s")
            content_type = response.headers.get("content-type", "").split(";")[0].strip()
            text = bytes(body).decode(response.encoding or "utf-8", "replace")
            if content_type in ("text/html", "application/xhtml+xml") or (
                not content_type and text.lstrip()[:15].lower().startswith(("<!doctype", "<html"))
            ):
                text = html_to_text(text)
            elif not (content_type.startswith("text/") or content_type.endswith(("json", "xml"))
                      or not content_type):
                text = f"[binary content of {len(body)} bytes not shown]"
            truncated = len(text) > self.max_chars
            return FetchResult(str(url), response.status_code, content_type,
                               text[: self.max_chars], truncated)


def http_tool(fetcher: HttpFetcher, *, name: str = "fetch_url") -> Tool:
    """A tool fetching pages through ``fetcher`` (its allow-list is stated in the description)."""

    @tool(name=name, timeout=fetcher.timeout_s + 5)
    async def fetch_url(url: str) -> str:
        """Fetch a web page or API response over HTTP(S) and return it as text.

        Args:
            url: Absolute http(s) URL on an allowed host.
        """
        try:
            return (await fetcher.fetch(url)).to_text()
        except FetchRefused as exc:
            raise ToolRetry(f"fetch_url refused or failed: {exc}") from exc

    fetch_url.description += " Allowed hosts: " + ", ".join(fetcher.allowed) + "."
    return fetch_url
