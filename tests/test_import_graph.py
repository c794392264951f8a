"""The import graph of the project's own modules, read statically (ast, no import runs):
no module imports a test file (`test_*.py`) or a conftest.py, and the modules of
`infinilm_models` and `conformance` import each other without a circle.

Every import counts, the lazy ones inside functions included: a circle closed by a lazy
import still means two modules that cannot be understood (or moved) one without the other.
Imports under `if TYPE_CHECKING:` (for annotations only, never executed) do not.
`from package import name` is an edge to the submodule `package.name` where that is a
module, else to the package itself; a package's __init__ is a module like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("infinilm_models", "conformance")
# Folders whose files import modules of the project (tests/ and tools/ import too); only
# PACKAGES take part in the cycle check, every folder in the test-file check.
SCANNED = (*PACKAGES, "tools", "tests")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    found = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if ".cache" not in path.parts:
                found[module_name(path)] = path
    return found


def imported(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` (module `name`) imports, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    # tests/ runs with its own folder on sys.path: `from cli_helpers import ...` there
    local = name.rpartition(".")[0] if name.startswith("tests.") else None
    out: set[str] = set()

    def add(target: str) -> None:
        if target in modules:
            out.add(target)
        elif local and f"{local}.{target}" in modules:
            out.add(f"{local}.{target}")

    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    # `if TYPE_CHECKING:` imports exist for annotations only: they never run, so they
    # cannot close a circle (the idiom that keeps one from forming)
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and _is_type_checking(block.test)
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            for alias in node.names:
                sub = f"{base_name}.{alias.name}"
                if sub in modules or (local and f"{local}.{sub}" in modules):
                    add(sub)
                else:
                    add(base_name)
    out.discard(name)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported(path, name, modules) for name, path in modules.items()}


def is_test_module(name: str) -> bool:
    leaf = name.rpartition(".")[2]
    return leaf.startswith("test_") or leaf == "conftest"


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_nothing_imports_a_test_file_or_a_conftest() -> None:
    bad = sorted(f"{src} imports {dst}" for src, dsts in graph().items() for dst in dsts
                 if is_test_module(dst))
    assert not bad, "\n".join(bad)


def test_the_packages_import_without_a_circle() -> None:
    edges = {src: {d for d in dsts if d.split(".")[0] in PACKAGES}
             for src, dsts in graph().items() if src.split(".")[0] in PACKAGES}
    found = cycles(edges)
    assert not found, "\n".join(" <-> ".join(c) for c in found)


# -- the walker itself ----------------------------------------------------------------------


def test_the_walker_resolves_relative_imports_and_finds_the_shapes_it_forbids(tmp_path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from .b import f\n",
        "b.py": "def f():\n    from . import a\n",  # a lazy import closing a circle
        "c.py": "from .sub import d\nfrom . import test_x\n",
        "test_x.py": "helper = 1\n",
        "sub/__init__.py": "",
        "sub/d.py": "from .. import conftest\nimport pkg.a\n",
        "conftest.py": "fixture = 1\n",
    }
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    modules = {module_name(p, tmp_path): p for p in pkg.rglob("*.py")}
    edges = {n: imported(p, n, modules) for n, p in modules.items()}
    assert edges["pkg.a"] == {"pkg.b"} and edges["pkg.b"] == {"pkg.a"}
    assert edges["pkg.c"] == {"pkg.sub.d", "pkg.test_x"}
    assert edges["pkg.sub.d"] == {"pkg.conftest", "pkg.a"}
    assert cycles(edges) == [["pkg.a", "pkg.b"]]
    assert sorted(d for ds in edges.values() for d in ds if is_test_module(d)) == [
        "pkg.conftest", "pkg.test_x"]

