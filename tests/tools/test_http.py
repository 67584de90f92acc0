"""HTTP fetch: allow-list on every hop, size and time caps, HTML to text (MockTransport only)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from maestro import ToolContext, ToolRetry
from tools.http import FetchRefused, HttpFetcher, html_to_text, http_tool

PAGE = (
    "<html><head><title>Docs  home</title><style>p{color:red}</style></head>"
    "<body><script>alert('x')</script><h1>Welcome</h1><p>Maestro &amp; tools.</p>"
    "<ul><li>one</li><li>two</li></ul></body></html>"
)


class Recorder:
    """A MockTransport handler that records every request it serves."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(str(request.url))
        path = request.url.path
        if path == "/page":
            return httpx.Response(200, html=PAGE)
        if path == "/json":
            return httpx.Response(200, json={"ok": True})
        if path == "/to-evil":
            return httpx.Response(302, headers={"location": "http://evil.test/steal"})
        if path == "/to-page":
            return httpx.Response(301, headers={"location": "/page"})
        if path == "/loop":
            return httpx.Response(302, headers={"location": "/loop"})
        if path == "/big-declared":
            return httpx.Response(200, content=b"x" * 10, headers={"content-length": "99999999"})
        if path == "/big-streamed":
            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(100):
                    yield b"y" * 1024
            return httpx.Response(200, content=chunks())
        if path == "/slow":
            raise httpx.ReadTimeout("slow", request=request)
        return httpx.Response(404, text="not found")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def fetcher(recorder: Recorder) -> HttpFetcher:
    return HttpFetcher(["docs.test", "*.api.test", "local.test:8080"], max_bytes=16 * 1024,
                       transport=httpx.MockTransport(recorder))


def test_html_to_text() -> None:
    assert html_to_text(PAGE) == "# Docs home\n\nWelcome\nMaestro & tools.\none\ntwo"


async def test_fetches_allowed_hosts(fetcher: HttpFetcher) -> None:
    page = await fetcher.fetch("https://docs.test/page")
    assert page.status == 200 and "Maestro & tools." in page.text and "alert" not in page.text
    data = await fetcher.fetch("https://v1.api.test/json")
    assert data.text == '{"ok":true}'
    redirected = await fetcher.fetch("https://docs.test/to-page")
    assert redirected.url == "https://docs.test/page" and "Welcome" in redirected.text
    assert (await fetcher.fetch("http://local.test:8080/page")).status == 200


@pytest.mark.parametrize(
    "url",
    [
        "https://evil.test/page",
        "https://docs.test.evil.test/page",
        "https://api.test/json",  # the wildcard covers subdomains only
        "https://x.api.test.evil.test/json",
        "https://docs.test@evil.test/page",
        "https://user:pw@docs.test/page",
        "file:///etc/passwd",
        "ftp://docs.test/page",
        "https://docs.test:22/page",
        "http://local.test/page",  # port 80 is not the listed 8080
        "http://127.0.0.1/page",
        "not a url",
    ],
)
async def test_refuses_urls_outside_the_allow_list(
    fetcher: HttpFetcher, recorder: Recorder, url: str
) -> None:
    with pytest.raises(FetchRefused):
        await fetcher.fetch(url)
    assert recorder.seen == []  # refused before any request was made


async def test_redirects_are_rechecked_and_bounded(
    fetcher: HttpFetcher, recorder: Recorder
) -> None:
    with pytest.raises(FetchRefused, match=r"evil\.test"):
        await fetcher.fetch("https://docs.test/to-evil")
    assert all("evil.test" not in seen for seen in recorder.seen)
    with pytest.raises(FetchRefused, match="redirects"):
        await fetcher.fetch("https://docs.test/loop")


@pytest.mark.parametrize(("path", "match"), [("/big-declared", "cap"), ("/big-streamed", "cap"),
                                             ("/slow", "timed out")])
async def test_size_and_time_caps(fetcher: HttpFetcher, path: str, match: str) -> None:
    with pytest.raises(FetchRefused, match=match):
        await fetcher.fetch(f"https://docs.test{path}")


async def test_tool(fetcher: HttpFetcher) -> None:
    ctx = ToolContext(run_id="r", step_id="s", idempotency_key="k")
    fetch_url = http_tool(fetcher)
    assert "docs.test" in fetch_url.description
    assert "Welcome" in await fetch_url.call({"url": "https://docs.test/page"}, ctx)
    with pytest.raises(ToolRetry, match="allow-list"):
        await fetch_url.call({"url": "https://evil.test/"}, ctx)
