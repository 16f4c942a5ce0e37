"""conversations imports neither documents nor training/agents; masscer.lib imports no app."""
from __future__ import annotations

import ast
from pathlib import Path

from django.conf import settings

ROOT = Path(settings.BASE_DIR)
FORBIDDEN = {"documents", "training", "agents"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_conversations_imports_no_other_app() -> None:
    for path in (ROOT / "conversations").rglob("*.py"):
        assert not imported_modules(path) & FORBIDDEN, path


def test_redact_imports_no_app() -> None:
    assert not imported_modules(ROOT / "masscer" / "lib" / "redact.py") & (FORBIDDEN | {"conversations"})
