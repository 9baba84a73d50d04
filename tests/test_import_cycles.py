"""No import cycles between Balsam modules, deferred or not (STYLE.md: a function-level import is
never there to hide a cycle; if two modules need each other, one of them is in the wrong room).

Every import of a balsam module is an edge: at module level, inside functions, under
``if TYPE_CHECKING:`` and ``importlib.import_module("...")`` with a literal name, or with an
f-string (``f"{__name__}.{name}"``: see :func:`import_graph`). ``from a import
b`` is an edge to ``a.b`` when that is a module, else to ``a``. A package's ``__init__`` importing
its own submodules is ordinary (``balsam.api`` re-exports its classes); a submodule importing the
package back is an edge like any other.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Optional

from tests.test_imports import PACKAGE_ROOT, _write, iter_modules

# Cycles known and not yet dissolved, each as its sorted module list. Empty: add nothing here
# without an issue that says when it goes away.
KNOWN_CYCLES: list[list[str]] = []


def _called_name(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _literal_prefix(arg: ast.expr, module: str) -> Optional[str]:
    """The module name a literal argument of ``import_module`` gives, or the leading part of an
    f-string one (``{__name__}`` is the importing module); None if it starts with anything else."""
    if isinstance(arg, ast.Constant):
        return arg.value if isinstance(arg.value, str) else None
    if not isinstance(arg, ast.JoinedStr):
        return None
    prefix = ""
    for part in arg.values:
        if isinstance(part, ast.Constant) and isinstance(part.value, str):
            prefix += part.value
        elif isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name) \
                and part.value.id == "__name__":
            prefix += module
        else:
            break
    return prefix or None


def import_edges(source: str, module: str, is_package: bool,
                 modules: set[str]) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """{imported balsam module: first line importing it} for the module ``module``, and the
    (prefix, line) of each ``import_module`` of an f-string (resolved by :func:`import_graph`)."""
    package = module if is_package else module.rpartition(".")[0]
    found: dict[str, int] = {}
    dynamic: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        elif isinstance(node, ast.Call) and _called_name(node) in ("import_module", "__import__") \
                and node.args:
            prefix = _literal_prefix(node.args[0], module)
            if prefix is not None and isinstance(node.args[0], ast.Constant):
                targets = [prefix]
            elif prefix:
                dynamic.append((prefix, node.lineno))
        for target in targets:
            if target in modules and target != module:
                found[target] = min(found.get(target, node.lineno), node.lineno)
    return found, dynamic


def _strings(source: str) -> set[str]:
    return {n.value for n in ast.walk(ast.parse(source))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, dict[str, int]]:
    """{module: {module it imports: line}} over every Python source file under ``root``.

    ``import_module(f"{__name__}.{name}")`` (a plug-in table) is an edge to each module the
    prefix completes with a string literal of the importing module or of a module it imports
    (the table of names, such as ``FLAVOURS``, lives in one of them)."""
    sources = dict(iter_modules(root))
    names = set(sources)
    graph: dict[str, dict[str, int]] = {}
    dynamic: dict[str, list[tuple[str, int]]] = {}
    for m, p in sources.items():
        graph[m], dynamic[m] = import_edges(p.read_text(), m, p.name == "__init__.py", names)
    for m, calls in dynamic.items():
        if not calls:
            continue
        words = set().union(*(_strings(sources[n].read_text()) for n in {m, *graph[m]}))
        for prefix, line in calls:
            for word in words:
                if prefix + word in names and prefix + word != m:
                    graph[m].setdefault(prefix + word, line)
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module, each sorted (Tarjan's
    algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, {})))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return sorted(found)


def describe(component: list[str], graph: dict[str, dict[str, int]]) -> str:
    """One cycle and the imports that make it (``a:line -> b``)."""
    members = set(component)
    edges = [f"{a}:{line} -> {b}" for a in component for b, line in sorted(graph[a].items())
             if b in members]
    return " <-> ".join(component) + " (" + "; ".join(edges) + ")"


def test_no_module_imports_itself_back():
    graph = import_graph()
    new = [describe(c, graph) for c in cycles(graph) if c not in KNOWN_CYCLES]
    assert new == [], "import cycles:\n" + "\n".join(new)


def test_known_cycles_are_still_there():
    """An allow-listed cycle that was dissolved leaves the list too."""
    found = cycles(import_graph())
    assert [c for c in KNOWN_CYCLES if c not in found] == []


def test_the_graph_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "balsam"
    for sub in ("", "core", "api"):
        _write(pkg, f"{sub}/__init__.py".lstrip("/"), "")
    _write(pkg, "api/__init__.py", "from balsam.api.jobs import Job\n")  # a package's own children
    _write(pkg, "api/jobs.py", "Job = 1\n")
    _write(pkg, "core/a.py", "from balsam.core import b\n")  # a submodule: an edge to it
    _write(pkg, "core/b.py", "def f():\n    from balsam.core.a import X\n")  # deferred
    _write(pkg, "core/c.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                             "    from .d import Y\n")
    _write(pkg, "core/d.py", "import importlib\nimportlib.import_module('balsam.core.e')\n")
    _write(pkg, "core/e.py", "import balsam.core.c\n")
    _write(pkg, "core/f.py", "from balsam.core import a, schema\n")  # no cycle: only imports
    _write(pkg, "plug/__init__.py", "import importlib\nfrom .names import NAMES\n"
                                    "def get(n):\n    return importlib.import_module(f'{__name__}.{n}')\n")
    _write(pkg, "plug/names.py", "NAMES = ('one', 'two')\n")
    _write(pkg, "plug/one.py", "from balsam.plug.names import NAMES\n")  # no cycle
    _write(pkg, "plug/two.py", "from balsam.plug import get\n")  # the plug-in needs the loader
    _write(pkg, "plug/user.py", "from balsam import plug\n")  # uses get(); not a plug-in
    graph = import_graph(pkg)
    assert graph["balsam.core.a"] == {"balsam.core.b": 1}
    assert graph["balsam.core.f"] == {"balsam.core": 1, "balsam.core.a": 1}
    assert graph["balsam.plug"] == {"balsam.plug.names": 2, "balsam.plug.one": 4,
                                    "balsam.plug.two": 4}
    assert cycles(graph) == [["balsam.core.a", "balsam.core.b"],
                             ["balsam.core.c", "balsam.core.d", "balsam.core.e"],
                             ["balsam.plug", "balsam.plug.two"]]
    assert describe(["balsam.core.a", "balsam.core.b"], graph) == (
        "balsam.core.a <-> balsam.core.b (balsam.core.a:1 -> balsam.core.b; "
        "balsam.core.b:2 -> balsam.core.a)")
