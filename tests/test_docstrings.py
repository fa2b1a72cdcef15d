"""The public functions document their parameters: a module-level function that another room of the
package imports (``dcr_mllm.towers`` from ``dcr_mllm.enhance``, ``evaluation.tower`` from
``evaluation.mllm``, ...) or that a package exports in ``__all__``, with three or more parameters, has
an ``Args:`` section naming each of them."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dcr_mllm"
#: subpackages whose subpackages are rooms of their own (see tests/test_imports.py)
SPLIT = ("evaluation", "llava")


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:3] if len(parts) > 2 and parts[1] in SPLIT else parts[:2])


def _parameters(node: ast.FunctionDef) -> list[str]:
    arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
    return [a.arg for a in arguments if a.arg not in ("self", "cls")]


def public_functions() -> dict[tuple[str, str], ast.FunctionDef]:
    """``{(module, name): definition}`` of the functions other rooms import or ``__all__`` exports."""
    trees = {_module(p): ast.parse(p.read_text(encoding="utf-8")) for p in PACKAGE.rglob("*.py")}
    defined = {
        (module, node.name): node
        for module, tree in trees.items()
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")
    }
    public = {}
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    key = (node.module, alias.name)
                    if key in defined and (_room(node.module) != _room(module) or module.endswith("__init__")):
                        public[key] = defined[key]
    for module, tree in trees.items():  # a package's exports are defined where it imports them from
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and node.module and _module_path(module).name == "__init__.py":
                for alias in node.names:
                    if (node.module, alias.name) in defined:
                        public[(node.module, alias.name)] = defined[(node.module, alias.name)]
    return public


def _module_path(module: str) -> Path:
    path = PACKAGE.parent / module.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def undocumented() -> list[str]:
    missing = []
    for (module, name), node in sorted(public_functions().items()):
        parameters = _parameters(node)
        if len(parameters) < 3:
            continue
        doc = ast.get_docstring(node) or ""
        args = doc.partition("Args:")[2]
        absent = [p for p in parameters if f"{p}:" not in args and f"{p} (" not in args]
        if "Args:" not in doc or absent:
            missing.append(f"{module}.{name}: {', '.join(absent) or 'no Args: section'}")
    return missing


def test_public_functions_with_three_or_more_parameters_document_them():
    names = {name for _, name in public_functions()}
    assert {"load_tower", "swap_tower", "apply_lora"} <= names  # the scan finds the package's public functions
    assert undocumented() == []
