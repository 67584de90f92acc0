"""``maestro serve`` wiring (without binding a port) and the import rule for the server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import typer
from typer.testing import CliRunner

from maestro.commands.serve import app, is_loopback, keys_from_env


def test_keys_from_env() -> None:
    assert keys_from_env({}) == {}
    assert keys_from_env({"MAESTRO_API_KEY": " k0 "}) == {"k0": "default"}
    keys = keys_from_env({"MAESTRO_API_KEY": "k0", "MAESTRO_API_KEYS": "alice=k1, bob=k2"})
    assert keys == {"k0": "default", "k1": "alice", "k2": "bob"}
    with pytest.raises(typer.BadParameter, match="user=key"):
        keys_from_env({"MAESTRO_API_KEYS": "alice"})


def test_loopback_detection() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2")


def test_serve_help_shows_the_loopback_default() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "127.0.0.1" in result.output and "--model" in result.output


def test_serve_rejects_a_bad_model_url() -> None:
    result = CliRunner().invoke(app, ["--model", "ftp://example.com/v1", "--no-store"])
    assert result.exit_code == 2
    assert "http" in result.output


def test_importing_maestro_does_not_import_the_server() -> None:
    code = (
        "import sys, maestro, maestro.agent, maestro.cli; "
        "bad = [m for m in sys.modules if m.startswith(('maestro.server', 'starlette', 'uvicorn'))]; "
        "print(bad); raise SystemExit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_maestro_serve_end_to_end(tmp_path: Path) -> None:
    """The real command in a subprocess, with a key from the environment."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MAESTRO_API_KEY": "sk-test", "MAESTRO_HOME": str(tmp_path)}
    command = [sys.executable, "-m", "maestro.cli", "serve", "--port", str(port)]
    command += ["--model", "scripted:hello from serve", "--log-level", "warning"]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "maestro serve did not listen"
                time.sleep(0.1)
        base = f"http://127.0.0.1:{port}/v1"
        client = openai.OpenAI(base_url=base, api_key="sk-test", max_retries=0, timeout=20)
        out = client.chat.completions.create(
            model="scripted", messages=[{"role": "user", "content": "hi"}]
        )
        assert out.choices[0].message.content == "hello from serve"
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base, api_key="nope", max_retries=0).models.list()
        # Runs go to the default database under MAESTRO_HOME.
        run = client.post("/runs", body={"input": "say hello"}, cast_to=httpx.Response).json()
        # The answer shows the run as it is then: a scripted model may already have finished.
        assert run["object"] == "run" and run["status"] in ("running", "completed")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert list(tmp_path.rglob("*.db")), "runs were not stored in the default database"


@pytest.mark.real_model
def test_serve_refuses_an_unknown_model_before_serving() -> None:
    from maestro.testing import allow_real_models

    with allow_real_models():
        result = CliRunner().invoke(app, ["--model", "no-such-model-xyz", "--no-store"])
    assert result.exit_code == 2
    assert "'no-such-model-xyz' is not a registered model" in result.stderr
    assert "Traceback" not in result.output
