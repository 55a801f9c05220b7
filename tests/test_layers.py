"""The package's import graph: layers only import the layers below them (DESIGN §1), with no circle.

Every ``import`` and ``from … import`` of the package's own modules counts, also those inside
functions (a deferred import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import logitkit

ROOT = Path(logitkit.__file__).parent

#: Modules below the losses: none of them may import a loss.
BELOW_LOSSES = ("logitkit._namespace", "logitkit._layout", "logitkit._kernels", "logitkit._core",
                "logitkit._derivatives", "logitkit._ce_rows", "logitkit._autodiff")
LOSSES = ("logitkit.losses", "logitkit._losses", "logitkit._linear_cross_entropy")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the package's modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in modules else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_package_has_no_import_circle():
    assert circles(import_graph()) == []


def test_the_circle_detector_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_the_kernels_import_nothing_above_the_namespace():
    graph = import_graph()
    for name, deps in graph.items():
        if _under(name, ("logitkit._kernels",)):
            upward = {d for d in deps if not _under(d, ("logitkit._kernels", "logitkit._namespace"))}
            assert not upward, (name, upward)


def test_no_module_below_the_losses_imports_a_loss():
    graph = import_graph()
    assert "logitkit._ce_rows" in graph and "logitkit._kernels._problem" in graph
    for name, deps in graph.items():
        if _under(name, BELOW_LOSSES):
            assert not {d for d in deps if _under(d, LOSSES)}, name


def _private_imports(path: Path) -> set[str]:
    """What a module imports by a private name from outside ``logitkit.cli``: private modules
    of the package, and names starting with ``_`` (dunders such as ``__version__`` are public)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # logitkit.cli's own modules are its business
                continue
            module = node.module or ""
            if node.level == 0 and not _under(module, ("logitkit",)):
                continue  # another library's
            names = [*module.split("."), *(a.name for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [p for a in node.names if _under(a.name, ("logitkit",))
                     and not _under(a.name, ("logitkit.cli",)) for p in a.name.split(".")]
        else:
            continue
        found.update(n for n in names if n.startswith("_") and not n.endswith("__"))
    return found


def test_the_cli_uses_only_public_apis():
    """The command line is a client of the library: no private module and no private name of
    another part of the package (``logitkit.cli``'s own private modules are its business)."""
    graph = import_graph()
    for name, deps in graph.items():
        if _under(name, ("logitkit.cli",)):
            private = {d for d in deps if not _under(d, ("logitkit.cli",))
                       and any(part.startswith("_") for part in d.split(".")[1:])}
            assert not private, (name, private)
    for path in (ROOT / "cli").rglob("*.py"):
        assert not _private_imports(path), (path.name, _private_imports(path))


def test_the_private_import_check_sees_each_form(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from .. import __version__, softmax\nfrom . import _io\n"
                   "import numpy._core\nfrom ..calibration import bin_edges\n")
    assert _private_imports(src) == set()
    for line in ("from .._namespace import is_dask", "from ..calibration import _select",
                 "from ..calibration._binning import edges_of", "import logitkit._core",
                 "from logitkit.calibration import _diagram"):
        src.write_text(line + "\n")
        assert _private_imports(src), line
