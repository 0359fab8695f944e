"""The package layout as a contract: imports flow cluster -> tuning -> training -> pipelines (never back,
nowhere hidden: function-level and TYPE_CHECKING imports count too), and functions stay short."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["pipelines", "training", "tuning", "cluster"]  # each may import only those before it (and itself)
MAX_FUNCTION_LINES = 60


def _modules():
    for pkg in LAYERS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield pkg, path, ast.parse(path.read_text(), filename=str(path))


def _imported(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


def test_imports_flow_one_way():
    bad = []
    for pkg, path, tree in _modules():
        allowed = set(LAYERS[: LAYERS.index(pkg) + 1])
        for line, name in _imported(tree):
            top = name.split(".")[0]
            if top in LAYERS and top not in allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {pkg} imports {name}")
    assert not bad, "imports against cluster -> tuning -> training -> pipelines:\n" + "\n".join(bad)


def test_the_direction_check_sees_hidden_imports():
    tree = ast.parse("def f():\n    from cluster.recipe import RunConfig\nif TYPE_CHECKING:\n    import tuning.config\n")
    assert [name for _, name in _imported(tree)] == ["cluster.recipe", "tuning.config"]


@pytest.mark.parametrize("pkg", LAYERS)
def test_functions_are_short(pkg):
    long = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
        for p, path, tree in _modules()
        if p == pkg
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(long)
