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


def _layer(name: str) -> str | None:
    """The capability a module name belongs to ("raylm.training.loop": training), None outside them."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "raylm" and parts[1] in LAYERS else None


def test_imports_flow_one_way():
    bad = []
    for pkg, path, tree in _modules():
        allowed = set(LAYERS[: LAYERS.index(pkg) + 1])
        for line, name in _imported(tree):
            top = _layer(name)
            if top and top not in allowed:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {pkg} imports {name}")
    assert not bad, "imports against cluster -> tuning -> training -> pipelines:\n" + "\n".join(bad)


def test_the_direction_check_sees_hidden_imports():
    tree = ast.parse("def f():\n    from raylm.cluster.recipe import RunConfig\nif TYPE_CHECKING:\n    import raylm.tuning.config\n")
    assert [_layer(name) for _, name in _imported(tree)] == ["cluster", "tuning"]


def test_everything_is_imported_through_the_raylm_namespace():
    """`pip install` puts only `raylm` in an environment: a bare `import training` would work in a checkout only."""
    bare = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in sorted(ROOT.glob("[!.]*/**/*.py"))
        if not path.is_relative_to(ROOT / "build")
        for line, name in _imported(ast.parse(path.read_text(), filename=str(path)))
        if name.split(".")[0] in LAYERS
    ]
    assert not bare, "imports outside the raylm namespace:\n" + "\n".join(bare)


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
