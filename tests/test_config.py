import json
import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from raylm.cluster.recipe import load_config, load_yaml
from raylm.core.schema import ConfigError
from tests.conftest import ROOT

RECIPE = ROOT / "cluster" / "recipes" / "local.yaml"


def test_local_recipe_validates():
    cfg = load_config(RECIPE)
    assert cfg.name == "shakespeare-local"
    assert cfg.data.dedup.minhash.threshold == 0.8


def test_unknown_key_has_path_and_suggestion():
    with pytest.raises(ConfigError) as e:
        load_config(RECIPE, ["data.dedup.minhash.treshold=0.7"])
    assert "data.dedup.minhash.treshold: unknown key (did you mean 'data.dedup.minhash.threshold'?)" in str(e.value)


def test_unknown_top_level_key(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("name: x\ndtaa: {}\n")
    with pytest.raises(ConfigError, match=r"dtaa: unknown key \(did you mean 'data'\?\)"):
        load_config(p)


def test_override_types_are_yaml_scalars():
    cfg = load_config(RECIPE, ["data.output.val_fraction=0.2", "data.clean.enabled=false", "name=other"])
    assert cfg.data.output.val_fraction == 0.2 and cfg.data.clean.enabled is False and cfg.name == "other"


def test_bad_value_reports_path():
    with pytest.raises(ConfigError, match=r"data.dedup.minhash.threshold: .*less than 1"):
        load_config(RECIPE, ["data.dedup.minhash.threshold=1.5"])


def test_tokenizer_sources_are_exclusive():
    cfg = load_config(RECIPE, ["data.tokenizer={train: {vocab_size: 512}}"])
    assert cfg.data.tokenizer.name is None and cfg.data.tokenizer.train.vocab_size == 512
    with pytest.raises(ConfigError, match="exactly one of name, path, train"):
        load_config(RECIPE, ["data.tokenizer={name: cl100k_base, path: x.tiktoken}"])


def test_bands_rows_checked():
    with pytest.raises(ConfigError, match="exceeds num_perm"):
        load_config(RECIPE, ["data.dedup.minhash.bands=20", "data.dedup.minhash.rows=10"])


def test_cli_exit_codes(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "raylm", *a], capture_output=True, text=True, cwd=ROOT)  # noqa: E731
    ok = run("validate", str(RECIPE))
    assert ok.returncode == 0 and "threshold: 0.8" in ok.stdout
    bad = run("validate", str(RECIPE), "--set", "data.dedup.minhash.treshold=0.7")
    assert bad.returncode == 2 and "did you mean 'data.dedup.minhash.threshold'" in bad.stderr
    missing = run("data", str(RECIPE), "--set", f"data.inputs=[{{path: {tmp_path}/nothing*.jsonl}}]")
    assert missing.returncode == 2 and "no files match" in missing.stderr
    assert run("validate", str(tmp_path / "nope.yaml")).returncode == 2


TWO = "train.scaling={num_workers: 2, use_gpu: false, resources_per_worker: {CPU: 1}}"
M16 = "train.batch.micro_batch_size=16"


def test_a_global_batch_that_does_not_divide_fails_with_the_nearest_fits():
    # 4,096 tokens on 2 workers x 16 x 256: rounding 0.5 micro-steps up to 1 would train 8,192 a step, silently
    with pytest.raises(ConfigError) as e:
        load_config(RECIPE, [TWO, M16, "train.batch.global_batch_tokens=4096"])
    assert "train.batch.global_batch_tokens: 4,096" in str(e.value) and "16 x 256 x 2 = 8,192" in str(e.value)
    assert "global_batch_tokens 8,192;" in str(e.value) and "micro_batch_size 8 (1 micro-step per step)" in str(e.value)
    with pytest.raises(ConfigError, match="global_batch_tokens 8,192 or 16,384"):  # no micro-batch fits 10,000 / 512
        load_config(RECIPE, [TWO, M16, "train.batch.global_batch_tokens=10000"])
    with pytest.raises(ConfigError, match=r"micro_batch_size 12 \(2 micro-steps per step\)"):  # 24,576 = 2 x 12 x 256 x 4
        load_config(RECIPE, ["train.batch.global_batch_tokens=24576", "train.batch.micro_batch_size=16", "train.scaling.num_workers=4"])


def test_the_step_trains_exactly_the_global_batch():
    from raylm.training.config import accumulation_steps, describe_batch

    cfg = load_config(RECIPE, [TWO, "train.batch.global_batch_tokens=32768", "train.batch.micro_batch_size=4"])
    t = cfg.train
    assert accumulation_steps(t, 2) * t.batch.micro_batch_size * t.model.seq_len * 2 == 32768
    assert describe_batch(t) == "2 workers (1 CPU each) x 4 sequences x 256 tokens x 16 micro-step(s) = 32,768 tokens per step"
    with pytest.raises(ValueError, match="x 3 = "):  # a world other than the recipe's never rounds
        accumulation_steps(t, 3)


def test_train_before_data_is_a_clear_error(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "raylm", "train", str(RECIPE), "--set", f"storage_path={tmp_path}"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 2 and "run `raylm data` first" in out.stderr


@pytest.mark.parametrize("name", ["/etc/x", "../up", "a/../../b", "~/x", "s3://b/x", "a//b", ""])
def test_run_name_cannot_leave_storage_path(name):
    with pytest.raises(ConfigError, match=r"name: .*relative path below storage_path"):
        load_config(RECIPE, [f"name={name!r}" if name else "name=''"])


def test_nested_run_names_are_fine():
    assert load_config(RECIPE, ["name=team/exp-1"]).paths.root == "./runs/team/exp-1"


def test_data_sources_replace_inputs_and_are_checked():
    mix = ROOT / "cluster" / "recipes" / "mixture.yaml"
    cfg = load_config(mix)
    assert cfg.data.source_names == ["plays", "web"] and [k for k, _ in cfg.data.all_inputs] == [0, 1]
    assert "inputs" not in cfg.data.model_dump()  # a dumped recipe validates again
    assert load_config(None, [f"data={json.dumps(cfg.data.model_dump(mode='json'))}"]).data == cfg.data
    # a --set of sources replaces the recipe's inputs, and the other way round
    over = load_config(ROOT / "cluster" / "recipes" / "local.yaml", ["data.sources={a: {inputs: [{path: x.jsonl}]}}"])
    assert over.data.source_names == ["a"]
    assert load_config(mix, ["data.inputs=[{path: x.jsonl}]"]).data.source_names == []
    bad = [
        ({"inputs": [{"path": "x"}], "sources": {"a": {"inputs": [{"path": "y"}]}}}, "not both"),
        ({"sources": {"a/b": {"inputs": [{"path": "y"}]}}}, "shard directories"),
        ({"sources": {"a": {"inputs": [{"path": "y"}], "weight": 0}}}, "weight above 0"),
        ({"sources": {"a": {"inputs": []}}}, "at least 1"),
        ({"sources": {"a": {"inputs": [{"path": "y"}], "weight": -1}}}, "greater than or equal"),
    ]
    for data, why in bad:
        with pytest.raises(ConfigError, match=why):
            load_config(None, [f"data={json.dumps(data)}"])


def test_a_new_source_weight_needs_no_new_data_stage():
    from raylm.pipelines.config import DataConfig
    from raylm.pipelines.run import changed_keys

    mix = load_config(ROOT / "cluster" / "recipes" / "mixture.yaml").data.model_dump(mode="json")
    heavier = json.loads(json.dumps(mix))
    heavier["sources"]["web"]["weight"] = 0.5
    assert changed_keys(mix, heavier) == []
    heavier["sources"]["web"]["inputs"][0]["text_field"] = "body"
    assert changed_keys(mix, heavier) == ["data.sources.web.inputs[0].text_field"]
    # a list key whose default is empty ([] for url_filter.block_domains) compares by its items
    assert changed_keys(mix, mix) == [] and mix["url_filter"]["block_domains"]
    assert changed_keys(DataConfig().model_dump(mode="json"), mix)  # one source against two: a different section


# ---------------------------------------------------------------- duplicate keys, one-line YAML errors
@pytest.mark.parametrize(
    "text,line,key",
    [
        ("name: a\ntrain:\n  max_steps: 5\n  max_steps: 6\n", 4, "max_steps"),
        ("name: a\nname: b\n", 2, "name"),
        ("train: {seed: 1, seed: 2}\n", 1, "seed"),
        ("data:\n  sources:\n    web: {inputs: [{path: a.jsonl}]}\n    web: {inputs: [{path: b.jsonl}]}\n", 4, "web"),
    ],
    ids=["nested", "top", "flow", "source"],
)
def test_a_duplicate_key_is_an_error_naming_it_and_its_line(tmp_path, text, line, key):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: invalid YAML at line {line}, column ")
    assert f"duplicate key '{key}' (first on line " in str(e.value) and "\n" not in str(e.value)


def test_keys_beside_a_merge_still_override_it(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("train:\n  model:\n    <<: {n_layer: 2, n_head: 2, d_model: 64}\n    n_layer: 3\n")
    assert load_config(p).train.model.n_layer == 3


def test_a_duplicate_key_in_a_set_value_is_an_error():
    with pytest.raises(ConfigError, match=r"duplicate key 'seed' \(first on line 1\)"):
        load_config(RECIPE, ["train={seed: 1, seed: 2}"])


@pytest.mark.parametrize(
    "text,where",
    [
        ("train:\n  seed: [1\n", "line 3, column 1: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence at line 2, column 9)"),
        ("name: x\n  foo: 1\n", "line 2, column 6: mapping values are not allowed here"),
        ('name: "x\n', "line 2, column 1: found unexpected end of stream (while scanning a quoted scalar at line 1, column 7)"),
    ],
)
def test_invalid_yaml_is_one_line_with_file_line_and_column(tmp_path, text, where):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == f"{p}: invalid YAML at {where}"


_KEYS = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True), min_size=1, max_size=8, unique=True)


@settings(max_examples=200, deadline=None)
@given(keys=_KEYS, values=st.lists(st.integers() | st.floats(allow_nan=False) | st.text(max_size=5), min_size=8, max_size=8))
def test_a_mapping_of_distinct_keys_loads_as_yaml_does(keys, values):
    doc = {"top": dict(zip(keys, values)), "other": {k: [v] for k, v in zip(keys, values)}}  # the same keys in two mappings
    text = yaml.safe_dump(doc)
    assert load_yaml(text) == yaml.safe_load(text)


@settings(max_examples=200, deadline=None)
@given(keys=_KEYS, data=st.data())
def test_any_repeated_key_is_refused_at_its_second_line(keys, data):
    dup = data.draw(st.sampled_from(keys))
    at = data.draw(st.integers(keys.index(dup) + 1, len(keys)))  # the repeat comes after the first
    lines = [f"  {k}: {i}" for i, k in enumerate(keys)]
    lines.insert(at, f"  {dup}: again")
    with pytest.raises(yaml.YAMLError) as e:
        load_yaml("section:\n" + "\n".join(lines) + "\n")
    assert e.value.problem == f"duplicate key '{dup}' (first on line {keys.index(dup) + 2})"
    assert e.value.problem_mark.line + 1 == at + 2


def test_empty_inputs_or_sources_are_recipe_errors():  # not a run that starts Ray for nothing, nor the default inputs
    with pytest.raises(ConfigError, match=r"^data\.inputs: empty"):
        load_config(RECIPE, ["data.inputs=[]"])
    with pytest.raises(ConfigError, match=r"^data\.inputs: empty"):  # replacing a mixture's sources with nothing
        load_config(ROOT / "cluster" / "recipes" / "mixture.yaml", ["data.inputs=[]"])
    with pytest.raises(ConfigError, match=r"^data\.sources: empty"):
        load_config(RECIPE, ["data.sources={}"])
    with pytest.raises(ConfigError, match=r"^data\.sources: empty"):
        load_config(None, ['data={"inputs": [{"path": "x.jsonl"}], "sources": {}}'])


def test_a_dumped_recipe_without_sources_validates_again():
    cfg = load_config(RECIPE)
    dumped = cfg.data.model_dump(mode="json")
    assert "sources" not in dumped and load_config(None, [f"data={json.dumps(dumped)}"]).data == cfg.data
