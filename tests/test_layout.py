"""The package's layout holds: imports point down the layers only, no import circle, no module over
350 lines, at most one function over 60 (docs/architecture.md). The import graph is read with ast,
every import counted, those inside functions and under `if TYPE_CHECKING:` too."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bnnidr_hpc"

# Bottom first: a module may import from its own layer's other modules and from layers listed before
# its own, never from one listed after it (layers that share a floor ignore each other).
LAYERS = [["runtime"], ["model", "data"], ["config"], ["records"], ["train", "reduce"], ["cluster"], ["cli"],
          ["__init__"]]
MAX_MODULE_LINES = 350
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.AST, path: Path) -> list:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        here = _module_name(path).split(".")
        base = here if path.name == "__init__.py" else here[:-1]
        base = base[:len(base) - node.level + 1]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    # `from pkg import mod` imports the module pkg.mod; `from mod import name` the module itself.
    return [f"{module}.{a.name}" for a in node.names] + [module]


def import_graph() -> dict:
    """module -> the package's modules it imports (the most specific name that is a module)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _imported(node, path):
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("bnnidr_hpc"):
                    edges.add(target)
        graph[name] = edges
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _floor(module: str) -> int:
    layer = _layer(module)
    return next(i for i, names in enumerate(LAYERS) if layer in names)


def _cycle(graph: dict):
    """One import circle as a list of nodes, or None."""
    state: dict = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_every_layer_is_a_known_folder_with_a_docstring():
    layers = {_layer(m) for m in _modules()}
    known = {name for floor in LAYERS for name in floor}
    assert layers <= known, f"folders not placed in LAYERS: {sorted(layers - known)}"
    for folder in PACKAGE.iterdir():
        if folder.is_dir() and (folder / "__init__.py").exists():
            doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
            assert doc and len(doc) > 40, f"{folder.name}/__init__.py should say what the layer owns"


def test_imports_point_down_the_layers_only():
    upward = [f"{a} -> {b}" for a, targets in import_graph().items() for b in sorted(targets)
              if _floor(b) > _floor(a) or (_floor(b) == _floor(a) and _layer(b) != _layer(a))]
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_no_import_circle_between_modules_or_layers():
    graph = import_graph()
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"
    layers: dict = {}
    for a, targets in graph.items():
        layers.setdefault(_layer(a), set()).update(_layer(b) for b in targets if _layer(b) != _layer(a))
    assert _cycle(layers) is None, f"circle between folders: {' -> '.join(_cycle(layers))}"


def test_modules_and_functions_stay_small():
    long_modules = {m: n for m, p in _modules().items() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    long_functions = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} ({length})")
    assert len(long_functions) <= 1, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


@pytest.mark.parametrize("graph, expected", [({"a": {"b"}, "b": {"a"}}, True), ({"a": {"b"}, "b": set()}, False),
                                             ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)])
def test_the_circle_finder_finds_circles(graph, expected):
    assert (_cycle(graph) is not None) == expected
