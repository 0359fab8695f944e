"""Data ablations' sections (tuning/datasections.py) without Ray: one section per distinct data section, keyed
by its content, a trial's values leading to its section, and the search spaces refused before Ray starts."""

import pytest

from raylm.cluster.recipe import load_config
from raylm.core.schema import ConfigError
from raylm.tuning.campaign import check
from raylm.tuning.datasections import section_dirs, sections, value_key
from tests.conftest import ROOT

RECIPE = str(ROOT / "cluster" / "recipes" / "ablation.yaml")


def _cfg(tmp_path, *more):
    return load_config(RECIPE, [f"storage_path={tmp_path}", *more])


def test_one_section_per_setting_under_the_run(tmp_path):
    found = sections(_cfg(tmp_path))
    assert [s.values["data.quality.fasttext.keep_fraction"] for s in found] == [0.5, 0.7, 1.0]
    assert len({s.key for s in found}) == 3 and all(s.paths.data.startswith(f"{tmp_path}/shakespeare-ablation/data-sections/") for s in found)


def test_settings_that_make_the_same_section_share_it(tmp_path):
    space = "tune.param_space={data.quality.fasttext.keep_fraction: {grid: [0.5]}, data.dedup.partitions: {choice: [2, 2]}}"
    assert len(sections(_cfg(tmp_path, space))) == 1


def test_the_key_is_the_sections_content(tmp_path):
    a = {s.values["data.quality.fasttext.keep_fraction"]: s.key for s in sections(_cfg(tmp_path))}
    b = {s.values["data.quality.fasttext.keep_fraction"]: s.key for s in sections(_cfg(tmp_path, "data.output.seed=1"))}
    assert a.keys() == b.keys() and not set(a.values()) & set(b.values())


def test_the_sections_read_the_campaigns_trained_tokenizer(tmp_path):
    (s, *_) = sections(_cfg(tmp_path))
    assert s.data.tokenizer.train is None and s.data.tokenizer.path == f"{tmp_path}/shakespeare-ablation/data/tokenizer.tiktoken"


def test_a_trials_values_find_its_section(tmp_path):
    cfg = _cfg(tmp_path)
    dirs = section_dirs(cfg)
    by_value = {s.values["data.quality.fasttext.keep_fraction"]: s.paths.data for s in sections(cfg)}
    assert dirs[value_key({"data.quality.fasttext.keep_fraction": 0.7, "train.optim.lr": 1e-3})] == by_value[0.7]


def test_a_data_key_drawn_from_a_range_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="a data key takes grid or choice"):
        check(_cfg(tmp_path, "tune.search.type=random", "tune.param_space={data.quality.fasttext.keep_fraction: {uniform: [0.5, 1.0]}}"))


def test_data_keys_with_shards_of_another_run_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="leave train.data_path unset"):
        check(_cfg(tmp_path, f"train.data_path={tmp_path}/other"))
