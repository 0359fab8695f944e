"""run.json (cluster/provenance.py) and `raylm runs` (cluster/runs.py) on real files; no Ray."""

import json

import pytest

from raylm.cluster.cli import main
from raylm.cluster.provenance import git_state, read_run_json, recorded, versions
from raylm.cluster.runs import find_runs, summary
from raylm.core.schema import ConfigError


def test_recorded_writes_running_then_the_outcome(tmp_path):
    d = str(tmp_path / "r" / "train")
    with recorded(d, "train", {"name": "r"}) as rec:
        mid = read_run_json(d)
        rec["result"] = {"step": 3}
    assert mid["status"] == "running" and mid["ended"] is None and mid["recipe"] == {"name": "r"}
    done = read_run_json(d)
    assert done["status"] == "succeeded" and done["exit_code"] == 0 and done["result"] == {"step": 3}
    assert done["started"] <= done["ended"] and done["command"][0] == "raylm"
    assert done["versions"]["ray"] and done["versions"]["torch"] and done["versions"]["python"]


def test_recorded_failure_keeps_the_error_and_exit_code(tmp_path):
    d = str(tmp_path / "e")
    with pytest.raises(ConfigError), recorded(d, "eval", {}, code_of=lambda e: 2 if isinstance(e, ConfigError) else 1):
        raise ConfigError("bad key")
    rec = read_run_json(d)
    assert (rec["status"], rec["exit_code"], rec["error"]) == ("failed", 2, "ConfigError: bad key")
    with recorded(d, "eval", {}) as rec:  # a non-zero code set by the body (training failed without raising)
        rec["exit_code"] = 1
    assert read_run_json(d)["status"] == "failed"


def test_git_state_of_this_checkout_and_outside_one(tmp_path):
    g = git_state()
    assert g is None or (len(g["commit"]) == 40 and isinstance(g["dirty"], bool))
    assert git_state(tmp_path) is None
    assert set(versions()) >= {"python", "raylm", "ray", "torch", "tiktoken"}


def test_runs_lists_runs_at_any_depth_and_shows_one(tmp_path, capsys):
    with recorded(str(tmp_path / "a" / "train"), "train", {"train": {"max_steps": 4}}):
        rows = [{"step": s, "loss": 5.0, "val_loss": v} for s, v in ((1, None), (2, 4.5), (3, None), (4, 4.7))]
        (tmp_path / "a" / "train" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "team" / "b" / "data").mkdir(parents=True)  # a name with "/", a data stage made before run.json
    (tmp_path / "team" / "b" / "data" / "manifest.json").write_text("{}")
    (tmp_path / "c" / "tune" / "trials" / "x" / "train").mkdir(parents=True)  # a trial is not a run
    (tmp_path / "c" / "tune" / "trials" / "x" / "train" / "metrics.jsonl").write_text("")
    assert [r.rsplit("/", 2)[-2:] for r in find_runs(str(tmp_path))] == [[str(tmp_path).rsplit("/", 1)[-1], "a"], ["team", "b"]]
    s = summary(str(tmp_path / "a"))
    assert s["states"] == {"data": None, "train": "succeeded", "tune": None, "eval": None}
    assert (s["step"], s["max_steps"], s["best_val_loss"]) == (4, 4, 4.5)
    assert summary(str(tmp_path / "team" / "b"))["states"]["data"] == "succeeded"
    assert main(["runs", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert "team/b" in listed and "4/4" in listed and "4.5000" in listed
    assert main(["runs", "a", "--storage", str(tmp_path)]) == 0
    assert "train: succeeded (exit 0)" in capsys.readouterr().out
    assert main(["runs", "nope", "--storage", str(tmp_path)]) == 2
