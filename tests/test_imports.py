"""Imports go one way: no module of the package imports, at any depth or inside a function, a
module that imports it back, and no subpackage imports one that imports it back."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dcr_mllm"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``{module: the package's modules it imports}``, read from the source with ``ast`` (a
    ``from package import name`` counts as importing ``package.name`` when that is a module)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets |= {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
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


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_package_imports_one_that_imports_it_back():
    graph = import_graph()
    assert "dcr_mllm.training.ds_config" in graph["dcr_mllm.training.engine"]  # the graph is read, not empty
    assert cycles(graph) == []


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph folded onto ``dcr_mllm``'s subpackages (``dcr_mllm.training``, ...); a
    top-level module (``dcr_mllm.io``, the package's ``__init__``) stands for itself."""

    def package(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2])

    folded: dict[str, set[str]] = {}
    for module, targets in graph.items():
        folded.setdefault(package(module), set()).update(package(t) for t in targets)
    return {name: targets - {name} for name, targets in folded.items()}


def test_no_subpackage_imports_one_that_imports_it_back():
    packages = package_graph(import_graph())
    assert "dcr_mllm.components" in packages["dcr_mllm.presets"]  # folded, not empty
    assert cycles(packages) == []


#: the subpackages from the bottom up, as the README's layout lists them (top down): each imports
#: only packages below it (the top-level modules, dcr_mllm.io and the like, are not layered here)
LAYERS = (
    "data",
    "components",
    "world",
    "presets",
    "training",
    "towers",
    "diffusion",
    "objectives",
    "evaluation",
    "enhance",
    "llava",
    "tasks",
    "models",
    "pipeline",
    "cli",
)


def test_each_subpackage_imports_only_those_below_it():
    packages = package_graph(import_graph())
    rank = {f"dcr_mllm.{name}": i for i, name in enumerate(LAYERS)}
    assert set(rank) == {
        p for p in packages if (PACKAGE / p.removeprefix("dcr_mllm.")).is_dir()
    }  # every subpackage is placed
    upward = sorted(
        (p, t) for p, targets in packages.items() if p in rank for t in targets if t in rank and rank[t] > rank[p]
    )
    assert upward == []


#: the rooms inside a subpackage, from the bottom up; a room imports only rooms of a lower rank
#: (rooms of one rank, stage two's training and its checkpoint surgery, never import each other)
ROOMS = {
    "evaluation": {"freshness": 0, "intervals": 0, "tower": 1, "analysis": 2, "mllm": 3},
    "llava": {"shards": 0, "build": 1, "train": 2, "checkpoints": 2},
}


def test_each_room_imports_only_rooms_below_it():
    graph = import_graph()

    def room(module: str) -> tuple[str, str] | None:
        parts = module.split(".")
        return (parts[1], parts[2]) if len(parts) > 2 and parts[1] in ROOMS else None

    arrows = {(room(m), room(t)) for m, targets in graph.items() for t in targets if room(m) and room(t)}
    arrows = {(a, b) for a, b in arrows if a != b and a[0] == b[0]}
    assert (("llava", "checkpoints"), ("llava", "build")) in arrows  # read, not empty
    assert {name for package, rooms in ROOMS.items() for name in rooms} >= {a[1] for a, _ in arrows}  # all placed
    upward = sorted((a, b) for a, b in arrows if ROOMS[a[0]][b[1]] >= ROOMS[a[0]][a[1]])
    assert upward == []
