"""docs/architecture.md names only modules, files and functions that exist: every backticked path
(``balsam/db/cluster.py``, ``core/routing.py``, ``tests/test_routing.py``, ``launcher/dag*.py``),
every backticked ``module.name`` (``core/lifecycle.transition``, ``transitions.NEEDS_STAGE_IN``)
and every ``python -m`` module, and every file of the package map."""
from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
PACKAGE = REPO / "balsam"
TOP = ("balsam/", "tests/", "benchmarks/", "docs/", "examples/")
SUBPACKAGES = tuple(f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())


FILE = re.compile(r"\.(py|pyx|md|yml|yaml|json|sh|txt|cfg|toml|conf|c|html|template\.sh)$")
DOTTED = re.compile(r"[A-Za-z_]\w*(?:[./][A-Za-z_]\w*)+")
SETTINGS_SECTIONS = {"launcher": "LauncherSection", "service": "ServiceSection",
                     "transfers": "TransfersSection", "server": "ServerSection"}


def _path(text: str) -> Optional[Path]:
    """A backticked token as a repository path (None: not a path of ours)."""
    if text.startswith(TOP) or text in ("setup.py", "setup.cfg", "pyproject.toml"):
        return REPO / text
    if text.startswith(SUBPACKAGES):
        return PACKAGE / text
    return None


def _exists(path: Path) -> bool:
    return bool(list(path.parent.glob(path.name))) if "*" in path.name else path.exists()


def _top_names(module: Path) -> set[str]:
    """What ``module`` defines or imports at module level (and its classes' members)."""
    tree = ast.parse(module.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            found.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                found.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update((a.asname or a.name).split(".")[0] for a in node.names)
    return found


def _modules(dotted: str) -> list[Path]:
    """The files of module ``dotted`` (``core/lifecycle``, ``core.states``, ``balsam.api.hooks``)
    or, for one bare name, of every module of that name in the package (``transitions``)."""
    rel = dotted.replace(".", "/")
    rel = rel[len("balsam/"):] if rel.startswith("balsam/") else rel
    if rel == "balsam":
        return [PACKAGE / "__init__.py"]
    found = [c for c in (PACKAGE / f"{rel}.py", PACKAGE / rel / "__init__.py") if c.is_file()]
    if not found and "/" not in rel:
        found = sorted(PACKAGE.rglob(f"{rel}.py")) + sorted(
            p / "__init__.py" for p in PACKAGE.rglob(rel) if (p / "__init__.py").is_file())
    return found


def _settings_field(section: str, name: str) -> bool:
    tree = ast.parse((PACKAGE / "db" / "settings_schema.py").read_text())
    return any(isinstance(c, ast.ClassDef) and c.name == SETTINGS_SECTIONS[section] and any(
        isinstance(f, ast.AnnAssign) and isinstance(f.target, ast.Name) and f.target.id == name
        for f in c.body) for c in tree.body)


def _dotted_problem(token: str) -> Optional[str]:
    """``module.name`` (``core/lifecycle.transition``, ``web.auth.HostCheckMiddleware``,
    ``transitions.NEEDS_STAGE_IN/OUT``), a module (``processing/inputs``, ``core.states``) or a
    settings key (``launcher.max_retries``); None if it exists or names nothing of ours."""
    head, _, tail = token.partition(".")
    first = re.split(r"[./]", token)[0]
    if not _modules(first) and first != "balsam" and not token.startswith(SUBPACKAGES):
        return None  # ctx.exit_reason, os.environ: not a module of ours
    if first in SETTINGS_SECTIONS and "/" not in token and _settings_field(first, tail):
        return None
    parts = [head] + (tail.split(".") if tail else [])
    for k in range(len(parts), 0, -1):
        modules = _modules(".".join(parts[:k]))
        if not modules:
            continue
        if k == len(parts):
            return None
        first_attr, *alts = parts[k].split("/")
        # NEEDS_STAGE_IN/OUT: NEEDS_STAGE_IN and NEEDS_STAGE_OUT; HAS_IN/HAS_OUT: both
        names = [first_attr] + [a if "_" in a or not a.isupper() else
                                re.sub(r"[A-Z]+$", a, first_attr) for a in alts]
        for name in names:
            if not any(name in _top_names(m) or (m.parent / f"{name}.py").is_file()
                       or (m.parent / name / "__init__.py").is_file() for m in modules):
                return f"`{token}`: {', '.join(str(m.relative_to(REPO)) for m in modules)} has no {name}"
        return None
    return f"`{token}`: no module {parts[0]}"


def problems(text: str) -> list[str]:
    """What ``text`` (the architecture page) names that does not exist."""
    bad = []
    for token in sorted(set(re.findall(r"`([^`\n]+)`", text))):
        if FILE.search(token) or token.endswith("/") or "*" in token:
            path = _path(token)
            if path is not None and not _exists(path):
                bad.append(f"`{token}`: no {path.relative_to(REPO)}")
            elif path is None and re.fullmatch(r"\w+\.pyx?", token) and not list(PACKAGE.rglob(token)):
                bad.append(f"`{token}`: no such file in balsam/")
        elif DOTTED.fullmatch(token):
            problem = _dotted_problem(token)
            if problem:
                bad.append(problem)
    for module in re.findall(r"python -m (balsam(?:\.\w+)+)", text):
        if not _modules(module):
            bad.append(f"`python -m {module}`: no such module")
    return bad + _map_problems(text)


def _map_problems(text: str) -> list[str]:
    """The package map (the first code block from ``balsam/``): each ``name.py`` mentioned
    under a package exists somewhere in that package."""
    block = text.split("```\nbalsam/\n", 1)[1].split("```", 1)[0]
    bad, package = [], PACKAGE
    for line in block.splitlines():
        head = re.match(r"  (\w+)/(\s|$)", line)
        if head:
            package = PACKAGE / head.group(1)
        for name in re.findall(r"(?<![\w/.<*])((?:\w+/)*\w+\.pyx?)\b", line):
            if not list(package.rglob(name.split("/")[-1])) and not (PACKAGE / name).exists():
                bad.append(f"package map: no {name} under {package.relative_to(REPO)}")
    return bad


def test_the_checker_finds_stale_pointers() -> None:
    text = ("`core/routing.py` `core/gone.py` `balsam/db/nope.py` `launcher/dag*.py` "
            "`core/lifecycle.transition` `core/lifecycle.nothing` `transitions.PURE_DECIDERS` "
            "`nowhere.py` `python -m balsam.launcher.pyfunc_task` and python -m balsam.gone\n"
            "```\nbalsam/\n  core/  states.py, missing.py\n```\n")
    assert problems(text) == [
        "`balsam/db/nope.py`: no balsam/db/nope.py",
        "`core/gone.py`: no balsam/core/gone.py",
        "`core/lifecycle.nothing`: balsam/core/lifecycle.py has no nothing",
        "`nowhere.py`: no such file in balsam/",
        "`python -m balsam.gone`: no such module",
        "package map: no missing.py under balsam/core",
    ]


def test_architecture_names_only_what_exists() -> None:
    bad = problems(DOC.read_text())
    assert not bad, "docs/architecture.md names what does not exist:\n" + "\n".join(bad)
