"""The dependency rule of ARCHITECTURE.md, checked on the import statements."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APPS = {"documents", "conversations", "training", "agents"}
# workspaces is the floor everyone stands on (like auth): apps may import it, lib may not.


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def python_files(folder: str, *, skip_tests: bool = True) -> list[Path]:
    files = sorted((ROOT / folder).rglob("*.py"))
    return [p for p in files if not (skip_tests and "tests" in p.relative_to(ROOT).parts)]


@pytest.mark.parametrize("path", python_files("masscer/lib"), ids=str)
def test_masscer_lib_imports_no_app(path: Path) -> None:
    assert not imported_roots(path) & (APPS | {"workspaces"})


@pytest.mark.parametrize("app", ["documents", "conversations"])
def test_sources_import_neither_each_other_nor_training_or_agents(app: str) -> None:
    forbidden = APPS - {app}
    for path in python_files(app):
        assert not imported_roots(path) & forbidden, path


def test_training_refers_to_agents_only_by_label() -> None:
    for name in ("models", "services", "tasks", "generation", "planning", "validation", "export"):
        path = ROOT / "training" / f"{name}.py"
        assert "agents" not in imported_roots(path), path


def test_workspaces_import_no_other_app() -> None:
    for path in python_files("workspaces"):
        assert not imported_roots(path) & APPS, path


def test_only_the_model_door_imports_openai() -> None:
    importers = [
        p.relative_to(ROOT).as_posix()
        for folder in ["masscer", *sorted(APPS)]
        for p in python_files(folder)
        if "openai" in imported_roots(p)
    ]
    assert importers == ["masscer/lib/llm.py"]
