"""cluster/recipes/ablation.yaml, shortened in steps: a data ablation of three keep_fraction settings builds each
data section once (and a rerun none), trains a trial on each, and measures every trial on the campaign's own
val split. A `raylm tune` process with a Ray instance of its own (own_ray: beside the session's tests)."""

import csv
import json
import os
import subprocess
import sys

import pytest

from raylm.cluster.cli import _data_sections
from raylm.cluster.recipe import load_config
from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.own_ray]
RECIPE = str(ROOT / "cluster" / "recipes" / "ablation.yaml")
SHORT = [
    "train.max_steps=4",
    "train.schedule.warmup_steps=1",
    "train.eval={every: 2, batches: 2, tasks: [data/downstream/word-order.jsonl]}",
    "train.checkpoint.every=4",
    "train.model={arch: llama, n_layer: 1, n_head: 2, d_model: 64, seq_len: 64}",
    "train.batch={micro_batch_size: 8, global_batch_tokens: 512}",
]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ablation")
    sets = [f"storage_path={tmp}", "name=ab", *SHORT]
    cmd = [sys.executable, "-m", "raylm", "tune", RECIPE, *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "RAY_ADDRESS": "local"}
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "ab", sets, r.stdout


def test_each_data_section_is_built_once(campaign):
    run, _, out = campaign
    assert "data sections: 3, 3 built, 0 reused" in out
    built = json.loads((run / "tune" / "run.json").read_text())["result"]["data_sections"]
    assert [s["values"]["data.quality.fasttext.keep_fraction"] for s in built] == [0.5, 0.7, 1.0]


def test_a_lower_keep_fraction_keeps_fewer_documents(campaign):
    run, _, _ = campaign
    built = json.loads((run / "tune" / "run.json").read_text())["result"]["data_sections"]
    kept = [s["docs_kept"] for s in built]
    assert kept[0] < kept[1] < kept[2]


def test_a_rerun_builds_no_section(campaign):
    run, sets, _ = campaign
    _, report = _data_sections(load_config(RECIPE, sets), force=False)
    assert len(report) == 3 and not any(s["built"] for s in report)


def test_every_trial_trains_on_its_section_and_is_measured_on_the_campaigns_val_split(campaign):
    run, _, _ = campaign
    trains = [json.loads(p.read_text())["train"] for p in (run / "tune" / "trials").glob("*/train/checkpoint_*/meta.json")]
    assert len(trains) == 3  # each trial's train section, as its checkpoint records it
    assert {t["eval"]["data_path"] for t in trains} == {str(run / "data")}
    assert len({t["data_path"] for t in trains}) == 3 and all("/data-sections/" in t["data_path"] for t in trains)


def test_the_table_compares_the_settings_on_the_same_metrics(campaign):
    run, _, out = campaign
    with open(run / "tune" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["status"] for r in rows} == {"done"}
    assert all(float(r["final_val_loss"]) > 0 and float(r["final_val_bpb"]) > 0 for r in rows)
    assert "val_bpb" in out and "data.quality.fasttext.keep_fraction" in out


def test_best_yaml_trains_on_the_best_section_and_is_measured_alike(campaign):
    import yaml

    run, _, _ = campaign
    best = yaml.safe_load((run / "tune" / "best.yaml").read_text())
    with open(run / "tune" / "results.csv") as f:
        top = min(csv.DictReader(f), key=lambda r: float(r["final_val_loss"]))
    assert best["data"]["quality"]["fasttext"]["keep_fraction"] == float(top["data.quality.fasttext.keep_fraction"])
    assert "/data-sections/" in best["train"]["data_path"] and best["train"]["eval"]["data_path"] == str(run / "data")
