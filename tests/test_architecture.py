"""The import rules of ARCHITECTURE.md §1, enforced.

- ``model/`` imports none of ``maestro``, ``tools``, ``agents``.
- ``maestro``'s core imports neither ``tools`` nor ``agents``; it reaches the engine
  (``model``) only lazily, inside ``maestro/llm/local.py``. The composition roots
  (``maestro/cli.py``, ``maestro/commands/``, ``maestro/bench/``, ``maestro/tui/``,
  ``maestro/server/``) may import everything.
- ``tools/`` imports neither ``agents`` nor the engine.
- ``agents/`` does not import the engine directly.
- ``import maestro`` (and building the CLI) must not import torch.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSITION_ROOTS = ("maestro/cli.py", "maestro/commands/", "maestro/bench/", "maestro/tui/", "maestro/server/")
LAZY_ENGINE_GATEWAY = "maestro/llm/local.py"


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.imported!r} ({self.rule})"


def _imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """(top-level package, line, at module level?) for every import in ``tree``."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((alias.name.split(".")[0], child.lineno, not in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                found.append((child.module.split(".")[0], child.lineno, not in_function))
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # imports for type checkers only never run
            visit(child, nested)

    visit(tree, False)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def check_source(rel_path: str, source: str) -> list[Violation]:
    """The import-rule violations of one file, given its path relative to the repo root."""
    package = rel_path.split("/")[0]
    violations = []
    for imported, line, module_level in _imports(ast.parse(source, rel_path)):
        rule = None
        if package == "model" and imported in {"maestro", "tools", "agents"}:
            rule = "model/ is standalone: it imports none of maestro, tools, agents"
        elif package == "maestro" and not rel_path.startswith(COMPOSITION_ROOTS):
            if imported in {"tools", "agents"}:
                rule = "maestro's core never imports tools/ or agents/"
            elif imported == "model" and rel_path != LAZY_ENGINE_GATEWAY:
                rule = f"maestro reaches the engine only through {LAZY_ENGINE_GATEWAY}"
            elif imported == "model" and module_level:
                rule = "the engine is imported lazily (inside a function) so `import maestro` stays light"
        elif package == "tools" and imported in {"agents", "model"}:
            rule = "tools/ uses maestro's API, not agents/ or the engine"
        elif package == "agents" and imported == "model":
            rule = "agents/ reach the engine through maestro's Model interface"
        if rule:
            violations.append(Violation(rel_path, line, imported, rule))
    return violations


def test_import_rules_hold_for_the_whole_tree() -> None:
    violations = []
    for package in ("model", "maestro", "tools", "agents"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            violations.extend(check_source(rel, path.read_text(encoding="utf-8")))
    assert not violations, "import rules broken:\n" + "\n".join(map(str, violations))


@pytest.mark.parametrize(
    ("path", "source", "broken"),
    [
        ("model/layers.py", "import maestro\n", True),
        ("model/layers.py", "from tools.calculator import x\n", True),
        ("model/layers.py", "import torch\n", False),
        ("maestro/agent.py", "from tools import python\n", True),
        ("maestro/agent.py", "def f():\n    import agents\n", True),
        ("maestro/agent.py", "def f():\n    import model\n", True),
        ("maestro/llm/local.py", "import model\n", True),
        ("maestro/llm/local.py", "def f():\n    from model import load\n", False),
        ("maestro/llm/local.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import model\n", False),
        ("maestro/cli.py", "import tools\nimport agents\nimport model\n", False),
        ("maestro/commands/model.py", "import model\n", False),
        ("tools/files.py", "import agents\n", True),
        ("tools/files.py", "from maestro import tool\n", False),
        ("agents/analyst.py", "import model\n", True),
    ],
)
def test_the_checker_catches_what_it_should(path: str, source: str, broken: bool) -> None:
    assert bool(check_source(path, source)) is broken


def _fresh_modules(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    return set(out.stdout.split())


def test_import_maestro_does_not_import_torch() -> None:
    modules = _fresh_modules("import maestro")
    assert "maestro" in modules
    heavy = {"torch", "triton", "transformers", "textual"} & modules
    assert not heavy, f"`import maestro` pulled in {sorted(heavy)}"


def test_building_the_cli_does_not_import_torch() -> None:
    modules = _fresh_modules("from maestro.cli import build_app\nbuild_app()")
    assert "typer" in modules
    assert "torch" not in modules, "`maestro --help` must not load torch"


def test_maestro_help_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "maestro.cli", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout
