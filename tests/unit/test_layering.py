"""The layering of docs/ARCHITECTURE.md, read from the source (every import, lazy ones inside functions too).

- generic code (``deploy/``, ``benchmarking/``, ``tools/``) never imports a model package;
- models never import ``deploy/``;
- the package's modules import each other without a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "anomalib_ext"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imports(path: Path, known: set[str]) -> set[str]:
    """The anomalib_ext modules a file imports anywhere in it (``from pkg import sub`` counts ``pkg.sub``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known}


def _with_parents(names: set[str], known: set[str]) -> set[str]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first: those are imported too."""
    parents = {".".join(name.split(".")[:i]) for name in names for i in range(1, name.count(".") + 1)}
    return names | (parents & known)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        own_parents = _with_parents({name}, set(modules))  # a module's own packages are already importing
        graph[name] = _with_parents(_imports(path, set(modules)), set(modules)) - own_parents
    return graph


def test_generic_code_never_imports_a_model_package():
    known = set(_modules())
    generic = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] in {"deploy", "benchmarking"}]
    generic += sorted((ROOT / "tools").glob("*.py"))
    offenders = {
        str(path.relative_to(ROOT)): sorted(m for m in _imports(path, known) if m.startswith("anomalib_ext.models"))
        for path in generic
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_models_never_import_deploy():
    offenders = {
        name: sorted(m for m in imported if m.startswith("anomalib_ext.deploy"))
        for name, imported in _graph().items()
        if name.startswith("anomalib_ext.models")
    }
    assert not {k: v for k, v in offenders.items() if v}


def test_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for start in sorted(graph):
        if start not in state:
            visit(start, [start])
    # A package's __init__ importing its own submodules is not a cycle of ours unless a submodule imports back.
    assert not cycles, cycles


def test_the_checker_sees_lazy_imports(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from anomalib_ext.models.amfs import alignment\n", encoding="utf-8")
    assert _imports(source, {"anomalib_ext.models.amfs", "anomalib_ext.models.amfs.alignment"}) == {
        "anomalib_ext.models.amfs",
        "anomalib_ext.models.amfs.alignment",
    }
