"""The dependency rule of ARCHITECTURE.md, checked on every import statement of the product.

Every module of the product packages (tests excluded, migrations included) is parsed with ast;
relative imports are resolved, and each import is sorted by when it runs: at module level, inside
a function, or under ``if TYPE_CHECKING:`` (type-only, never executed). The floor rules apply to
module- and function-level imports alike; type-only imports may cross them (so code can name a
type it refers to by label). Module-level imports may not form a cycle; a function-level import
is the usual way to break one.

The checker is plain functions (``scan``, ``rule_violations``, ``import_cycles``) so that the tests
at the bottom can show, on small synthetic trees, that it catches each kind of violation.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# workspaces is the floor everyone stands on (like auth): apps may import it, lib may not.
APPS = ("workspaces", "documents", "conversations", "training", "agents")
PACKAGES = ("masscer", *APPS)
# The top floor (views, forms, admin, API, urls, commands, template tags) may call any app.
DOOR_PARTS = frozenset({"views", "forms", "admin", "api", "urls", "management", "templatetags"})

MODULE, FUNCTION, TYPE = "module level", "inside a function", "type-only"


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    path: str  # file, relative to the scanned root
    line: int
    target: str  # dotted, relative imports resolved: "agents.models.Agent"
    kind: str  # MODULE | FUNCTION | TYPE
    module: str | None = None  # the scanned module the target names, if any

    def __str__(self) -> str:
        return f"{self.path}:{self.line} {self.importer} imports {self.target} ({self.kind})"


# -- reading the imports --------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_call(node: ast.Call) -> str | None:
    """The module of ``import_module("x")`` / ``__import__("x")`` with a constant name."""
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    if name in ("import_module", "__import__") and node.args:
        first = node.args[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value
    return None


class _Collector(ast.NodeVisitor):
    """(target, line, kind) for every import of one module, relative ones made absolute."""

    def __init__(self, module: str, *, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.kind = MODULE
        self.found: list[tuple[str, int, str]] = []

    def _within(self, nodes: Iterable[ast.AST], kind: str) -> None:
        outer = self.kind
        self.kind = TYPE if TYPE in (outer, kind) else kind
        for node in nodes:
            self.visit(node)
        self.kind = outer

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self._within(ast.iter_child_nodes(node), FUNCTION)

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if not _is_type_checking(node.test):
            self.generic_visit(node)
            return
        self._within(node.body, TYPE)
        for stmt in node.orelse:  # the else branch runs
            self.visit(stmt)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.extend((alias.name, node.lineno, self.kind) for alias in node.names)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._absolute(node.level, node.module)
        for alias in node.names:
            target = base if alias.name == "*" else f"{base}.{alias.name}".lstrip(".")
            self.found.append((target, node.lineno, self.kind))

    def visit_Call(self, node: ast.Call) -> None:
        name = _import_call(node)
        if name is not None:
            self.found.append((name, node.lineno, self.kind))
        self.generic_visit(node)

    def _absolute(self, level: int, module: str | None) -> str:
        if level == 0:
            return module or ""
        parts = self.package.split(".") if self.package else []
        # A level past the top-level package resolves from the root (Python would refuse it).
        base = parts[: max(0, len(parts) - (level - 1))]
        return ".".join([*base, *([module] if module else [])])


def _module_name(relative: Path) -> tuple[str, bool]:
    parts = list(relative.with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_package else parts), is_package


def _is_test_file(relative: Path) -> bool:
    return "tests" in relative.parts or relative.name == "conftest.py" or relative.name.startswith("test_")


def product_files(root: Path) -> list[Path]:
    files = (path for package in PACKAGES for path in (root / package).rglob("*.py"))
    return sorted(path for path in files if not _is_test_file(path.relative_to(root)))


def _resolve(target: str, modules: set[str]) -> str | None:
    """The longest scanned module that ``target`` names (``a.b.Name`` -> ``a.b``)."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def scan(root: Path) -> list[Import]:
    """Every import of every product module under ``root``."""
    parsed: list[tuple[str, str, list[tuple[str, int, str]]]] = []
    for path in product_files(root):
        relative = path.relative_to(root)
        name, is_package = _module_name(relative)
        collector = _Collector(name, is_package=is_package)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        parsed.append((name, relative.as_posix(), collector.found))
    modules = {name for name, _, _ in parsed}
    return [
        Import(name, path, line, target, kind, _resolve(target, modules))
        for name, path, found in parsed
        for target, line, kind in found
    ]


# -- the rules ------------------------------------------------------------------------------


def within(*prefixes: str) -> Callable[[str], bool]:
    return lambda name: any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def targets(*prefixes: str) -> Callable[[Import], bool]:
    inside = within(*prefixes)
    return lambda imported: inside(imported.target)


def is_door(name: str) -> bool:
    return any(part in DOOR_PARTS or part.endswith(("_views", "_urls", "_api", "_forms")) for part in name.split("."))


def is_test_code(name: str) -> bool:
    parts = name.split(".")
    return parts[0] in ("testing", "conftest") or "tests" in parts


def _below_the_doors(*prefixes: str) -> Callable[[str], bool]:
    inside = within(*prefixes)
    return lambda name: inside(name) and not is_door(name)


@dataclass(frozen=True)
class Rule:
    text: str
    binds: Callable[[str], bool]  # the importing modules the rule applies to
    forbids: Callable[[Import], bool]  # what they may not import
    type_only_ok: bool = True

    def broken_by(self, imported: Import) -> bool:
        if self.type_only_ok and imported.kind == TYPE:
            return False
        return self.binds(imported.importer) and self.forbids(imported)


RULES = (
    Rule("masscer.lib imports no app", within("masscer.lib"), targets(*APPS)),
    Rule(
        "documents imports neither conversations nor training or agents",
        within("documents"),
        targets("conversations", "training", "agents"),
    ),
    Rule(
        "conversations imports neither documents nor training or agents",
        within("conversations"),
        targets("documents", "training", "agents"),
    ),
    Rule(
        "training refers to agents by label only (its doors may call agents)",
        _below_the_doors("training"),
        targets("agents"),
    ),
    Rule("workspaces is the floor: it imports no other app", within("workspaces"), targets(*APPS[1:])),
    Rule(
        "views, forms, admin, API, urls and commands are the top floor: nothing below imports them",
        _below_the_doors("masscer.lib", *APPS),
        lambda imported: imported.module is not None and is_door(imported.module),
    ),
    Rule("the product imports no test code", within(*PACKAGES), lambda i: is_test_code(i.target), type_only_ok=False),
    Rule(
        "only the model door (masscer.lib.llm) imports openai",
        lambda name: not within("masscer.lib.llm")(name),
        targets("openai"),
        type_only_ok=False,
    ),
)


def rule_violations(imports: Iterable[Import], rules: Iterable[Rule] = RULES) -> list[str]:
    rules = tuple(rules)
    return [f"{imported}: {rule.text}" for imported in imports for rule in rules if rule.broken_by(imported)]


# -- cycles ---------------------------------------------------------------------------------


def _graph(imports: Iterable[Import]) -> dict[str, dict[str, Import]]:
    """Module-level imports between scanned modules: importer -> {imported module: first import}."""
    graph: dict[str, dict[str, Import]] = {}
    for imported in imports:
        if imported.kind == MODULE and imported.module not in (None, imported.importer):
            graph.setdefault(imported.importer, {}).setdefault(str(imported.module), imported)
    return graph


def _components(graph: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for neighbour in graph.get(node, {}):
            if neighbour not in index:
                visit(neighbour)
                low[node] = min(low[node], low[neighbour])
            elif neighbour in stack:
                low[node] = min(low[node], index[neighbour])
        if low[node] == index[node]:
            component = {stack.pop()}
            while node not in component:
                component.add(stack.pop())
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _shortest_cycle(graph: dict[str, dict[str, Import]], component: set[str]) -> list[Import]:
    """The imports of a shortest cycle through the component's first module (breadth first)."""
    start = min(component)
    came_by: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following: list[str] = []
        for node in frontier:
            for neighbour, imported in sorted(graph[node].items()):
                if neighbour == start:
                    path = [imported]
                    while path[0].importer != start:
                        path.insert(0, came_by[path[0].importer])
                    return path
                if neighbour in component and neighbour not in came_by:
                    came_by[neighbour] = imported
                    following.append(neighbour)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # a component always has one


def import_cycles(imports: Iterable[Import]) -> list[str]:
    graph = _graph(imports)
    reports = []
    for component in _components(graph):
        cycle = _shortest_cycle(graph, component)
        chain = " -> ".join([*(i.importer for i in cycle), cycle[0].importer])
        where = ", ".join(f"{i.path}:{i.line}" for i in cycle)
        reports.append(f"import cycle {chain} ({where}); all of {sorted(component)}")
    return sorted(reports)


def check(root: Path) -> list[str]:
    imports = scan(root)
    return rule_violations(imports) + import_cycles(imports)


# -- the product ----------------------------------------------------------------------------


def test_the_product_keeps_the_dependency_rule() -> None:
    assert rule_violations(scan(ROOT)) == []


def test_no_module_level_import_cycle_in_the_product() -> None:
    # To break one: import inside the function that needs it, or under TYPE_CHECKING for a type.
    assert import_cycles(scan(ROOT)) == []


def test_the_scan_reads_every_module_of_every_package() -> None:
    scanned = {i.path for i in scan(ROOT)}
    with_imports = {
        path.relative_to(ROOT).as_posix()
        for path in product_files(ROOT)
        if any(isinstance(node, ast.Import | ast.ImportFrom) for node in ast.walk(ast.parse(path.read_text())))
    }
    assert scanned == with_imports
    assert {path.split("/")[0] for path in scanned} == set(PACKAGES)
    assert not any("/tests/" in path for path in scanned)


def test_every_project_app_is_scanned() -> None:
    from django.conf import settings

    local = {app.split(".")[0] for app in settings.INSTALLED_APPS if (ROOT / app.split(".")[0]).is_dir()}
    assert local <= set(PACKAGES)


def test_the_model_door_is_the_one_importer_of_openai() -> None:
    importers = {i.importer for i in scan(ROOT) if within("openai")(i.target)}
    assert importers and all(within("masscer.lib.llm")(name) for name in importers)


# -- the checker, on injected violations -------------------------------------------------------

# A small product that keeps every rule: each injection below adds or replaces files in it.
CLEAN = {
    "masscer/__init__.py": "",
    "masscer/lib/__init__.py": "",
    "masscer/lib/tokens.py": "import re\n",
    "masscer/lib/llm.py": "import openai\nfrom . import tokens\n",
    "workspaces/__init__.py": "",
    "workspaces/models.py": "from masscer.lib import tokens\n",
    "documents/__init__.py": "",
    "documents/models.py": "from workspaces.models import Workspace\n",
    "documents/tasks.py": "def ingest():\n    from documents import services\n",
    "documents/services.py": "from documents.tasks import ingest\n",
    "conversations/__init__.py": "",
    "conversations/models.py": "from workspaces.models import Workspace\n",
    "training/__init__.py": "",
    "training/models.py": "from documents.models import Document\nfrom conversations.models import Conversation\n",
    "training/services.py": "from . import models\n",
    "training/views.py": "from agents.selectors import agents_for\n",
    "agents/__init__.py": "",
    "agents/selectors.py": "from training.models import Completion\n",
    "masscer/tests/__init__.py": "",
    "masscer/tests/test_x.py": "from testing.fakellm import FakeLLMServer\n",
}

INJECTED = {
    "lib imports an app": (
        {"masscer/lib/tokens.py": "from workspaces.models import Workspace\n"},
        "masscer/lib/tokens.py:1 masscer.lib.tokens imports workspaces.models.Workspace (module level): "
        "masscer.lib imports no app",
    ),
    "documents imports conversations": (
        {"documents/services.py": "import conversations.models\n"},
        "documents/services.py:1 documents.services imports conversations.models (module level): "
        "documents imports neither conversations nor training or agents",
    ),
    "a relative import climbs into a forbidden app": (
        {"documents/tasks.py": "from ..training import models\n"},
        "documents/tasks.py:1 documents.tasks imports training.models (module level): "
        "documents imports neither conversations nor training or agents",
    ),
    "a relative import reaches a door from below": (
        {"training/services.py": "from .views import job_detail\n"},
        "training/services.py:1 training.services imports training.views.job_detail (module level): "
        "views, forms, admin, API, urls and commands are the top floor: nothing below imports them",
    ),
    "a relative import reaches the tests": (
        {"masscer/lib/llm.py": "import openai\nfrom ..tests import test_x\n"},
        "masscer/lib/llm.py:2 masscer.lib.llm imports masscer.tests.test_x (module level): "
        "the product imports no test code",
    ),
    "the product imports testing": (
        {"agents/playground.py": "def serve():\n    from testing.fakellm import FakeLLMServer\n"},
        "agents/playground.py:2 agents.playground imports testing.fakellm.FakeLLMServer (inside a function): "
        "the product imports no test code",
    ),
    "workspaces imports training": (
        {"workspaces/services.py": "from training.models import Completion\n"},
        "workspaces/services.py:1 workspaces.services imports training.models.Completion (module level): "
        "workspaces is the floor: it imports no other app",
    ),
    "training services import agents inside a function": (
        {"training/services.py": "def job_start():\n    from agents.models import Agent\n"},
        "training/services.py:2 training.services imports agents.models.Agent (inside a function): "
        "training refers to agents by label only (its doors may call agents)",
    ),
    "the else branch of TYPE_CHECKING runs": (
        {"training/services.py": "if TYPE_CHECKING:\n    pass\nelse:\n    from agents import models\n"},
        "training/services.py:4 training.services imports agents.models (module level): "
        "training refers to agents by label only (its doors may call agents)",
    ),
    "import_module by name": (
        {"conversations/tasks.py": "import importlib\nmodels = importlib.import_module('documents.models')\n"},
        "conversations/tasks.py:2 conversations.tasks imports documents.models (module level): "
        "conversations imports neither documents nor training or agents",
    ),
    "openai outside the door, even type-only": (
        {"training/generation.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import openai\n"},
        "training/generation.py:3 training.generation imports openai (type-only): "
        "only the model door (masscer.lib.llm) imports openai",
    ),
    "a cycle of two modules": (
        {"documents/tasks.py": "from documents import services\n"},
        "import cycle documents.services -> documents.tasks -> documents.services "
        "(documents/services.py:1, documents/tasks.py:1); all of ['documents.services', 'documents.tasks']",
    ),
    "a longer cycle across packages": (
        {"workspaces/models.py": "from masscer.lib import tokens\nimport training.services\n"},
        "import cycle conversations.models -> workspaces.models -> training.services -> training.models -> "
        "conversations.models (conversations/models.py:1, workspaces/models.py:2, training/services.py:1, "
        "training/models.py:2)",
    ),
}


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in {**CLEAN, **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_clean_tree_passes(tmp_path: Path) -> None:
    assert check(_tree(tmp_path, {})) == []


@pytest.mark.parametrize("case", INJECTED)
def test_it_reports_an_injected_violation(tmp_path: Path, case: str) -> None:
    files, expected = INJECTED[case]
    problems = check(_tree(tmp_path, files))
    assert any(problem.startswith(expected) for problem in problems), problems


def test_a_type_only_import_may_cross_the_floors(tmp_path: Path) -> None:
    files = {
        "training/services.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import agents.models\n",
        "documents/services.py": "import typing\nif typing.TYPE_CHECKING:\n    from conversations import models\n",
    }
    assert check(_tree(tmp_path, files)) == []


def test_a_type_only_import_of_test_code_is_still_reported(tmp_path: Path) -> None:
    files = {"agents/selectors.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import testing\n"}
    assert check(_tree(tmp_path, files)) == [
        "agents/selectors.py:3 agents.selectors imports testing (type-only): the product imports no test code"
    ]


def test_function_level_and_type_only_imports_make_no_cycle(tmp_path: Path) -> None:
    files = {
        "training/tasks.py": "from training.services import job_start\n",
        "training/services.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from training import tasks\n"
            "def job_start():\n    from training.tasks import generate\n"
        ),
    }
    imports = scan(_tree(tmp_path, files))
    assert import_cycles(imports) == []
    kinds = {(i.importer, i.target): i.kind for i in imports}
    assert kinds[("training.services", "training.tasks")] == TYPE
    assert kinds[("training.services", "training.tasks.generate")] == FUNCTION


def test_the_doors_may_call_any_app(tmp_path: Path) -> None:
    files = {
        "training/review_views.py": "from agents.selectors import agents_for\nfrom training import services\n",
        "training/management/commands/train.py": "from agents.services import agent_get_or_create\n",
        "agents/views.py": "from training.review import completions_assign\n",
    }
    assert check(_tree(tmp_path, files)) == []
