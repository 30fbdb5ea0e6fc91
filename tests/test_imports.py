"""The import graph of kdbench's modules has no circle (imports for type annotations only do not count)."""

from __future__ import annotations

import ast
from pathlib import Path

import kdbench

PACKAGE_DIR = Path(kdbench.__file__).parent
#: the folders of the kdbench modules and the package each holds (the built-in methods install as kdbench.methods)
ROOTS = {PACKAGE_DIR: "kdbench", PACKAGE_DIR.parent / "methods": "kdbench.methods"}


def module_name(path: Path, root: Path) -> str:
    parts = [*ROOTS[root].split("."), *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def imported_modules(tree: ast.AST, current: str, is_package: bool, known: set[str]) -> set[str]:
    """The kdbench modules ``current`` imports anywhere (at the top or inside functions), as known module names."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if is_type_checking_block(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = current.split(".") if is_package else current.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in known:  # `import kdbench.a.b` counts as a use of the closest module
                name = name.rpartition(".")[0]
            if name and name != current:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {path: root for root in ROOTS for path in sorted(root.rglob("*.py"))}
    known = {module_name(path, root) for path, root in files.items()}
    graph = {}
    for path, root in files.items():
        name = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = imported_modules(tree, name, path.name == "__init__.py", known)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A circle of the graph as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_circle() -> None:
    graph = import_graph()
    assert "kdbench.cli" in graph and "kdbench.scheduler" in graph["kdbench.commands.run"]
    assert "kdbench.losses" in graph["kdbench.methods.kd"]
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_layers_keep_their_places() -> None:
    graph = import_graph()
    # options and store are below everything: they import nothing of kdbench but errors (and the store, options)
    assert graph["kdbench.options"] == set()
    assert graph["kdbench.store"] <= {"kdbench.errors", "kdbench.options"}
    # the spec layer never imports the engine, the executors or the scheduler (tune asks the scheduler for trials)
    spec_layer = [m for m in graph if m == "kdbench.sweep" or m.startswith("kdbench.sweep.")]
    for module in spec_layer:
        assert not graph[module] & {"kdbench.engine", "kdbench.executors", "kdbench.scheduler"}, module
    for module in (m for m in graph if m.startswith("kdbench.tune")):
        assert not graph[module] & {"kdbench.engine", "kdbench.executors"}, module
    # run, sweep and tune reach training through the one scheduler
    for command in ("run", "sweep"):
        assert "kdbench.scheduler" in graph[f"kdbench.commands.{command}"]
        assert "kdbench.engine" not in graph[f"kdbench.commands.{command}"]
    assert "kdbench.scheduler" in graph["kdbench.tune.loop"]


def test_the_checker_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import kdbench.b\n"
              "def f():\n    import kdbench.c\n")
    assert imported_modules(ast.parse(source), "kdbench.a", False, {"kdbench.b", "kdbench.c"}) == {"kdbench.c"}
