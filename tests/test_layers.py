"""The src packages form layers: their imports point one way only.

utils <- data <- models <- training <- evaluation <- experiments: training validates with its
own pass (src/training/validation.py), evaluation builds on training but not on its loop.
Inside training, the run's lifecycle (src/training/run/) and the device code
(src/training/device/) sit below the rest: they import only src.utils and each other. src/utils/
holds the generic helpers and imports no JAX.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers import REPO

SRC = REPO / "src"


def imports(path: Path, prefix: str = "src.") -> set[str]:
    """The modules under prefix that path imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m == prefix.rstrip(".") or m.startswith(prefix)}


def package_graph() -> dict[str, set[str]]:
    """package -> the other src packages its modules import."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        package = path.relative_to(SRC).parts[0]
        if package.endswith(".py"):
            continue
        targets = {m.split(".")[1] for m in imports(path)}
        graph.setdefault(package, set()).update(targets - {package})
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of graph as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, [*path, nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [node])
            if cycle:
                return cycle
    return None


def test_the_src_packages_import_each_other_without_a_cycle():
    graph = package_graph()
    assert {"data", "models", "training", "evaluation", "utils"} <= graph.keys()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])
    assert "evaluation" not in graph["training"]
    assert graph["utils"] == set()


def test_evaluation_does_not_import_the_training_loop():
    for path in (SRC / "evaluation").rglob("*.py"):
        assert "src.training.loop" not in imports(path), path


def test_the_run_lifecycle_and_device_code_import_only_utils_and_each_other():
    below = ("src.utils", "src.training.run", "src.training.device")
    for folder in ("run", "device"):
        for path in (SRC / "training" / folder).rglob("*.py"):
            stray = {m for m in imports(path) if not m.startswith(below)}
            assert not stray, (path, stray)


def test_utils_imports_no_jax():
    for path in (SRC / "utils").rglob("*.py"):
        for library in ("jax", "flax", "optax", "orbax"):
            assert not imports(path, library + "."), (path, library)


def test_imports_sees_a_jax_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    import jax.numpy as jnp\n")
    assert imports(module, "jax.") == {"jax.numpy"}
    module.write_text("import jax\nfrom src.training.run import checkpoint\n")
    assert imports(module, "jax.") == {"jax"}
    assert imports(module) == {"src.training.run"}


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
