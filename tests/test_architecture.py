"""The package's shape: no import cycles among fer's modules, every module importable alone, a short top level.

The import graph is read from the source (imports inside functions count) the
way Python runs it: importing `fer.a.b` runs `fer/a/__init__.py` first, so an
import of a submodule is an import of every package above it too. A module's
own ancestors are already running when it runs, so an import of them does not
count; anything else that leads back to the module is a cycle.
"""

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fer"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_names(path: Path) -> set[str]:
    """Every fer module `path` imports, anywhere in it (a `from fer.x import y` of a submodule y counts as fer.x.y)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES}


def import_graph() -> dict[str, set[str]]:
    """module -> the modules importing it runs, each import widened to the packages above what it imports."""
    graph = {}
    for name, path in MODULES.items():
        runs = set()
        for target in imported_names(path):
            runs.update(ancestors(target) + [target])
        graph[name] = runs - set(ancestors(name)) - {name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle_through_a_package_init():
    # The flat layout's cycle: fer.images -> fer.data.splits, whose package runs fer.data's
    # __init__ -> fer.data.loading -> fer.data._bad -> fer.images.
    graph = {
        "fer.images": {"fer.data", "fer.data.splits"},
        "fer.data": {"fer.data.loading"},
        "fer.data.loading": {"fer.data._bad"},
        "fer.data._bad": {"fer.images"},
        "fer.data.splits": set(),
    }
    assert cycles(graph) == [["fer.data", "fer.data._bad", "fer.data.loading", "fer.images"]]


def test_no_import_cycles_among_fer_modules():
    assert cycles(import_graph()) == []


def test_the_top_level_is_short_and_concerns_have_folders():
    flat = sorted(path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py")
    assert len(flat) <= 8, f"fer/ holds {len(flat)} modules ({', '.join(flat)}): a new concern gets a folder"
    for folder in ("data", "training", "evaluation", "analysis", "sweep", "serving", "export"):
        assert (PACKAGE / folder / "__init__.py").is_file()
        assert ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text())), folder


def import_error(name: str) -> str | None:
    """The last line of what `import name` printed in a fresh interpreter, if it failed."""
    result = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=300)
    return (result.stderr.strip().splitlines() or ["no message"])[-1] if result.returncode else None


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    with ThreadPoolExecutor(max_workers=2) as pool:
        errors = dict(zip(sorted(MODULES), pool.map(import_error, sorted(MODULES))))
    assert {name: error for name, error in errors.items() if error} == {}
