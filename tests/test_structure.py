"""The package layout as a contract: imports flow cluster -> tuning -> training -> pipelines -> core (never back,
nowhere hidden: function-level and TYPE_CHECKING imports count too), the data stage and training meet only
through the on-disk format in raylm.core, and functions stay short."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["core", "pipelines", "training", "tuning", "cluster"]  # each may import only those before it (and itself)
# what training and tuning may import of the data stage (raylm.pipelines): nothing. They read what it wrote
# (shards, manifest.json, the tokenizer) through raylm.core; a name added here needs a reason beside it.
DATA_STAGE_API: dict[str, str] = {}
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
    """The capability a module name belongs to ("raylm.training.worker": training), None outside them."""
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
    assert not bad, "imports against cluster -> tuning -> training -> pipelines -> core:\n" + "\n".join(bad)


@pytest.mark.parametrize("pkg", ["training", "tuning"])
def test_training_meets_the_data_stage_only_through_the_core(pkg):
    """Training and tuning read shards, manifests and tokenizers through raylm.core, never the data stage's modules."""
    used = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for p, path, tree in _modules()
        if p == pkg
        for line, name in _imported(tree)
        if _layer(name) == "pipelines" and name not in DATA_STAGE_API
    ]
    assert not used, f"{pkg} imports the data stage (raylm.pipelines); read what it wrote through raylm.core:\n" + "\n".join(used)


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {id(n.body[0].value) for n in ast.walk(tree) if isinstance(n, nodes) and n.body and isinstance(n.body[0], ast.Expr)}


def test_only_the_manifest_model_reads_and_writes_manifest_json():
    """core/manifest.py is the one reader and writer of manifest.json: no other module builds its path, and only
    `raylm runs` names the file, to recognise a data directory in a listing (it reads it through the model)."""
    own, lists = ROOT / "core" / "manifest.py", {ROOT / "cluster" / "runs.py"}
    bad = []
    for _, path, tree in _modules():
        if path == own:
            continue
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs and node.value.endswith("manifest.json"):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
            named = node.id if isinstance(node, ast.Name) else node.name if isinstance(node, ast.alias) else None
            if named == "MANIFEST" and path not in lists:
                bad.append(f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}: MANIFEST")
    assert not bad, "manifest.json outside core/manifest.py:\n" + "\n".join(bad)


def test_the_manifest_check_sees_a_path_built_by_hand():
    tree = ast.parse('"""Reads manifest.json."""\nopen(f"{root}/manifest.json")\n')
    found = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and id(n) not in _docstrings(tree) and n.value.endswith("manifest.json")]
    assert found == ["/manifest.json"]


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
