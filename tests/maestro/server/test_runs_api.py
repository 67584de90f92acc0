"""The runs API over uvicorn: create, poll, stream events, persistence, auth and scoping."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from maestro.errors import ModelHTTPError
from maestro.messages import Message, ModelRequestOptions
from maestro.server import create_app
from maestro.testing import FunctionModel, judge, plan, plan_step
from tests.maestro.server.conftest import LiveServer


async def planner_model(messages: list[Message], options: ModelRequestOptions) -> str:
    """Plans one calculator step, drafts from its result, and passes every requirement."""
    import asyncio

    properties = (options.response_format or {}).get("properties", {})
    if "steps" in properties:
        return plan(plan_step("s1", "calculator", {"expression": "17 * 3"}))
    if "score" in properties:
        return judge(1.0, "the answer states the product")
    await asyncio.sleep(0.2)  # slow enough that an event stream follows the run live
    context = "\n".join(m.content or "" for m in messages if isinstance(m.content, str))
    return "17 times 3 is 51." if "51" in context else "I could not compute it."


def model() -> FunctionModel:
    return FunctionModel(planner_model, model_name="planner")


def sse_events(response: httpx.Response) -> list[dict[str, Any]]:
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            events.append(json.loads(line[len("data: ") :]))
    return events


def wait_done(http: httpx.Client, run_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body: dict[str, Any] = http.get(f"/runs/{run_id}").raise_for_status().json()
        if body["status"] != "running":
            return body
        assert time.monotonic() < deadline, f"run {run_id} still running"
        time.sleep(0.05)


RUN = {
    "input": "What is 17 times 3?",
    "requirements": [{"description": "States the product", "mandatory": True}],
    "budget": "low",
    "tools": ["calculator"],
}


def test_create_poll_and_stream(serve: Callable[..., LiveServer]) -> None:
    live = serve(create_app(model()))
    with httpx.Client(base_url=live.base_url, timeout=20) as http:
        created = http.post("/runs", json=RUN)
        assert created.status_code == 201
        run = created.json()
        assert run["object"] == "run" and run["status"] == "running"
        assert run["id"].startswith("run_") and run["input"] == RUN["input"]
        with http.stream("GET", f"/runs/{run['id']}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = sse_events(stream)
        types = [e["type"] for e in events]
        assert types[0] == "run_started" and types[-1] == "run_finished"
        assert {"plan_made", "tool_call_finished", "requirement_scored"} <= set(types)
        assert "text_delta" in types  # a live stream carries the tokens too
        tool = next(e for e in events if e["type"] == "tool_call_finished")
        assert tool["tool"] == "calculator" and tool["result"] == "51"
        assert all(e["run_id"] == run["id"] for e in events)

        done = wait_done(http, run["id"])
        assert done["status"] == "completed"
        assert done["result"] == "17 times 3 is 51."
        assert done["passed"] is True
        report = done["requirements_result"]
        assert report["passed"] is True
        assert [r["description"] for r in report["requirements"]] == ["States the product"]
        assert done["usage"]["requests"] >= 3  # plan, draft, judge
        assert done["tool_calls"] and done["finish_reason"]
        assert isinstance(done["data_sources"], list)
        # A second reader after the end replays the same log and stops.
        with http.stream("GET", f"/runs/{run['id']}/events") as again:
            assert [e["type"] for e in sse_events(again)] == types


def test_bad_run_requests(serve: Callable[..., LiveServer]) -> None:
    live = serve(create_app(model()))
    with httpx.Client(base_url=live.base_url, timeout=20) as http:
        unknown_tool = http.post("/runs", json={"input": "x", "tools": ["shell"]})
        assert unknown_tool.status_code == 400
        error = unknown_tool.json()["error"]
        assert error["code"] == "unknown_tool" and "calculator" in error["message"]
        empty = http.post("/runs", json={"input": ""})
        assert empty.status_code == 400 and empty.json()["error"]["param"] == "input"
        budget = http.post("/runs", json={"input": "x", "budget": "infinite"})
        assert budget.status_code == 400 and budget.json()["error"]["param"] == "budget"
        missing = http.get("/runs/run_doesnotexist")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "run_not_found"


def test_auth_required_when_keys_are_set(serve: Callable[..., LiveServer]) -> None:
    live = serve(create_app(model(), api_key={"key-alice": "alice", "key-bob": "bob"}))
    anonymous = openai.OpenAI(base_url=live.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        anonymous.models.list()
    assert info.value.code == "invalid_api_key"
    with httpx.Client(base_url=live.base_url) as http:
        for path in ("/models", "/runs/run_x", "/me"):
            refused = http.get(path)
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "missing_api_key"
            assert refused.headers["www-authenticate"] == "Bearer"
        refused_post = http.post("/runs", json=RUN)
        assert refused_post.status_code == 401
        # The user header is not an identity when keys are set.
        spoofed = http.get("/me", headers={"X-Maestro-User": "alice"})
        assert spoofed.status_code == 401
        assert http.get(f"http://127.0.0.1:{live.port}/health").status_code == 200
    alice = openai.OpenAI(base_url=live.base_url, api_key="key-alice", max_retries=0)
    assert [m.id for m in alice.models.list().data] == ["planner"]


def test_one_users_run_is_invisible_to_another(serve: Callable[..., LiveServer]) -> None:
    live = serve(create_app(model(), api_key={"key-alice": "alice", "key-bob": "bob"}))

    def as_user(key: str) -> httpx.Client:
        return httpx.Client(
            base_url=live.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=20
        )

    with as_user("key-alice") as alice, as_user("key-bob") as bob:
        assert alice.get("/me").json() == {"user": "alice", "auth": True}
        run_id = alice.post("/runs", json=RUN).raise_for_status().json()["id"]
        for path in (f"/runs/{run_id}", f"/runs/{run_id}/events"):
            hidden = bob.get(path)
            assert hidden.status_code == 404, path
            assert hidden.json()["error"]["code"] == "run_not_found"
        assert wait_done(alice, run_id)["status"] == "completed"
        assert bob.get(f"/runs/{run_id}").status_code == 404  # finished runs too
        assert [r["id"] for r in alice.get("/runs").json()["data"]] == [run_id]
        assert bob.get("/runs").json() == {"object": "list", "data": []}
        assert alice.get("/runs", params={"limit": 0}).status_code == 400


def test_too_many_active_runs(serve: Callable[..., LiveServer]) -> None:
    live = serve(create_app(model(), max_active_runs=1))
    with httpx.Client(base_url=live.base_url, timeout=20) as http:
        first = http.post("/runs", json=RUN).raise_for_status().json()["id"]
        busy = http.post("/runs", json=RUN)
        assert busy.status_code == 429 and busy.json()["error"]["code"] == "too_many_runs"
        wait_done(http, first)
        assert http.post("/runs", json=RUN).status_code == 201


def test_user_header_scopes_runs_without_auth(serve: Callable[..., LiveServer]) -> None:
    live = serve(create_app(model()))
    with httpx.Client(base_url=live.base_url, timeout=20) as http:
        carol = {"X-Maestro-User": "carol"}
        run_id = http.post("/runs", json=RUN, headers=carol).raise_for_status().json()["id"]
        assert http.get(f"/runs/{run_id}").status_code == 404  # anonymous
        assert http.get(f"/runs/{run_id}", headers={"X-Maestro-User": "dave"}).status_code == 404
        assert http.get(f"/runs/{run_id}", headers=carol).status_code == 200
        bad = http.get("/me", headers={"X-Maestro-User": "no spaces allowed"})
        assert bad.status_code == 400
        with httpx.Client(base_url=live.base_url, headers=carol, timeout=20) as as_carol:
            assert wait_done(as_carol, run_id)["status"] == "completed"


def test_runs_persist_in_the_database(serve: Callable[..., LiveServer], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    first = serve(create_app(model(), database=url, api_key={"k": "alice"}))
    auth = {"Authorization": "Bearer k"}
    with httpx.Client(base_url=first.base_url, headers=auth, timeout=20) as http:
        run_id = http.post("/runs", json=RUN).raise_for_status().json()["id"]
        assert wait_done(http, run_id)["status"] == "completed"
    first.stop()

    # A new server on the same database (a restart) answers from the stored run and events.
    second = serve(create_app(model(), database=url, api_key={"k": "alice", "k2": "bob"}))
    with httpx.Client(base_url=second.base_url, headers=auth, timeout=20) as http:
        stored = http.get(f"/runs/{run_id}").raise_for_status().json()
        assert stored["status"] == "completed" and stored["result"] == "17 times 3 is 51."
        assert stored["requirements_result"]["passed"] is True
        with http.stream("GET", f"/runs/{run_id}/events") as stream:
            types = [e["type"] for e in sse_events(stream)]
        assert types[0] == "run_started" and types[-1] == "run_finished"
        assert "tool_call_finished" in types and "text_delta" not in types
        other = http.get(f"/runs/{run_id}", headers={"Authorization": "Bearer k2"})
        assert other.status_code == 404


def test_a_failing_model_fails_the_run(serve: Callable[..., LiveServer]) -> None:
    def broken(_m: list[Message], _o: ModelRequestOptions) -> str:
        raise ModelHTTPError(503, "upstream overloaded")

    live = serve(create_app(FunctionModel(broken)))
    with httpx.Client(base_url=live.base_url, timeout=20) as http:
        run_id = http.post("/runs", json={"input": "hello"}).raise_for_status().json()["id"]
        done = wait_done(http, run_id)
        assert done["status"] == "failed"
        assert "upstream overloaded" in done["error"]
        with http.stream("GET", f"/runs/{run_id}/events") as stream:
            last = sse_events(stream)[-1]
        assert last["type"] == "run_finished" and last["status"] == "failed"


def sse_ids_and_events(response: httpx.Response) -> list[tuple[int, dict[str, Any]]]:
    out, current = [], None
    for line in response.iter_lines():
        if line.startswith("id: "):
            current = int(line[len("id: ") :])
        elif line.startswith("data: "):
            assert current is not None, "every event carries an id"
            out.append((current, json.loads(line[len("data: ") :])))
    return out


def test_event_stream_resumes_after_last_event_id(serve: Callable[..., LiveServer]) -> None:
    live = serve(create_app(model()))
    with httpx.Client(base_url=live.base_url, timeout=20) as http:
        run_id = http.post("/runs", json=RUN).raise_for_status().json()["id"]
        with http.stream("GET", f"/runs/{run_id}/events") as stream:
            full = sse_ids_and_events(stream)
        ids = [i for i, _ in full]
        assert ids == sorted(set(ids)) and len(ids) > 4
        cut = ids[3]
        with http.stream("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": str(cut)}) as again:
            rest = sse_ids_and_events(again)
        assert rest == full[4:]  # exactly the events after the cut: none lost, none twice
        with http.stream("GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": str(ids[-1])}) as end:
            assert sse_ids_and_events(end) == []
        bad = http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": "yesterday"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "Last-Event-ID"


def test_cancel_a_running_run(serve: Callable[..., LiveServer]) -> None:
    async def slow(messages: list[Message], options: ModelRequestOptions) -> str:
        import asyncio

        if "steps" in (options.response_format or {}).get("properties", {}):
            return plan(plan_step("s1", "calculator", {"expression": "2 + 2"}))
        await asyncio.sleep(60)  # the draft never comes unless cancelled
        return "4"

    live = serve(create_app(FunctionModel(slow), api_key={"key-alice": "alice", "key-bob": "bob"}))
    alice = httpx.Client(base_url=live.base_url, headers={"Authorization": "Bearer key-alice"}, timeout=20)
    bob = httpx.Client(base_url=live.base_url, headers={"Authorization": "Bearer key-bob"}, timeout=20)
    with alice, bob:
        run_id = alice.post("/runs", json={"input": "2 + 2?", "tools": ["calculator"]}).raise_for_status().json()["id"]
        assert bob.post(f"/runs/{run_id}/cancel").status_code == 404  # not bob's run
        assert alice.post("/runs/run_nosuchrun/cancel").status_code == 404
        started = time.monotonic()
        cancelled = alice.post(f"/runs/{run_id}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
        assert time.monotonic() - started < 10  # did not wait for the 60 s draft
        assert alice.get(f"/runs/{run_id}").json()["status"] == "cancelled"
        with alice.stream("GET", f"/runs/{run_id}/events") as stream:
            last = sse_events(stream)[-1]
        assert last["type"] == "run_finished" and last["status"] == "cancelled"
        again = alice.post(f"/runs/{run_id}/cancel")
        assert again.status_code == 409 and again.json()["error"]["code"] == "run_finished"
