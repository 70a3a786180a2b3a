"""Layers point one way and nothing imports itself in a circle (issue 14).

The package's modules are read as text (``ast``), so the check sees every import, including the
ones inside functions, without running any of them. Layers, lowest first:

0  foundations   ``atomic``, ``types``, ``runs``, ``compat``, ``_lazy``
1  data          ``anomaly_bench.data``
2  models        ``anomaly_bench.models`` (torch models, components, the Lightning glue)
3  evaluation    ``anomaly_bench.metrics``, ``anomaly_bench.callbacks``
4  applications  ``benchmark``, ``deploy``, ``report``, ``loggers``, ``terminal``, ``weights_cli``
5  entry points  ``anomaly_bench.cli`` and the package facade ``anomaly_bench/__init__.py``

A module may import from its own layer or any lower one. ``AnomalyModule.configure_callbacks``
reaches the default callbacks through a ``module:function`` string (dependency inversion), which is
not an import and so not an upward edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "anomaly_bench"
LAYERS: list[tuple[int, str]] = [  # (layer, module prefix); the longest matching prefix wins
    (0, "anomaly_bench.atomic"), (0, "anomaly_bench.types"), (0, "anomaly_bench.runs"),
    (0, "anomaly_bench.compat"), (0, "anomaly_bench._lazy"), (0, "anomaly_bench.shipped"),
    (1, "anomaly_bench.data"),
    (2, "anomaly_bench.models"),
    (3, "anomaly_bench.metrics"), (3, "anomaly_bench.callbacks"),
    (4, "anomaly_bench.benchmark"), (4, "anomaly_bench.deploy"), (4, "anomaly_bench.report"),
    (4, "anomaly_bench.loggers"), (4, "anomaly_bench.terminal"), (4, "anomaly_bench.weights_cli"),
    (5, "anomaly_bench.export_cli"),
    (5, "anomaly_bench.cli"), (5, "anomaly_bench"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> int:
    best = max((prefix for _, prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len)
    return dict((p, layer) for layer, p in LAYERS)[best]


def imports_of(path: Path) -> set[str]:
    """Every ``anomaly_bench`` module imported anywhere in the file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    modules = {m for m in _all_modules()}
    # keep the names that are modules of the package (``from x import Class`` counts as x)
    return {m for m in found if m in modules} | {m.rpartition(".")[0] for m in found
                                                 if m not in modules and m.rpartition(".")[0] in modules}


def _all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    modules = _all_modules()
    return {name: {m for m in imports_of(path) if m != name} for name, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{src} (layer {layer_of(src)}) imports {dst} (layer {layer_of(dst)})"
                  for src, targets in graph.items() for dst in targets
                  if layer_of(dst) > layer_of(src) and not _is_parent_package(dst, src))


def _is_parent_package(dst: str, src: str) -> bool:
    # importing ``anomaly_bench.models.crad.torch_model`` executes ``anomaly_bench/__init__.py`` and
    # the subpackage facades; those lazy facades are not real dependencies
    return src.startswith(dst + ".")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if _is_parent_package(nxt, node):
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_from_a_higher_layer() -> None:
    problems = upward_imports(import_graph())
    assert not problems, "upward imports:\n  " + "\n  ".join(problems)


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n  " + "\n  ".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_a_cycle_and_an_upward_import() -> None:
    graph = {"anomaly_bench.data.a": {"anomaly_bench.data.b"}, "anomaly_bench.data.b": {"anomaly_bench.data.a"},
             "anomaly_bench.models.x": {"anomaly_bench.cli"}, "anomaly_bench.cli": set()}
    assert cycles(graph) == [["anomaly_bench.data.a", "anomaly_bench.data.b"]]
    assert upward_imports(graph) == ["anomaly_bench.models.x (layer 2) imports anomaly_bench.cli (layer 5)"]


@pytest.mark.parametrize("module", sorted(m for m in _all_modules() if m.endswith("torch_model")))
def test_torch_models_import_nothing_from_lightning(module: str) -> None:
    """A torch model's own imports (and their imports, inside the package) never reach Lightning."""
    graph = import_graph()
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph.get(name, ()))
    lightning_users = [m for m in seen if _imports_lightning(_all_modules()[m])]
    assert not lightning_users, f"{module} reaches Lightning through {sorted(lightning_users)}"


def _imports_lightning(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(n.split(".")[0] in ("lightning", "pytorch_lightning") for n in names):
            return True
    return False
