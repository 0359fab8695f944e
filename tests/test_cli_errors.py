"""The CLI on hostile-but-ordinary input: one line and exit 2 for what the user must fix, exit 1 for a run that
fails, never a traceback; reruns that would silently reuse another recipe's data; runs on their own Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import raylm.pipelines.run  # noqa: F401 - Ray (Data) set up their log handlers on import: here, not inside a capsys test
from raylm.cluster.cli import main
from tests.conftest import ROOT, sample_docs, write_jsonl

RECIPE = str(ROOT / "cluster" / "recipes" / "local.yaml")
TUNE = str(ROOT / "cluster" / "recipes" / "tune-local.yaml")


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return rc, out, err


@pytest.fixture()
def bad_files(tmp_path):
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "dup.yaml").write_text("name: a\ntrain:\n  max_steps: 5\n  max_steps: 6\n")
    (tmp_path / "broken.yaml").write_text("name: x\ntrain:\n  seed: [1\n")
    (tmp_path / "latin1.txt").write_bytes(b"line one\nline two: caf\xe9\n")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n')
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "a", "completion": \n')
    (tmp_path / "array.jsonl").write_text('["a", "b"]\n')
    (tmp_path / "none.jsonl").write_text("\n\n")
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "state.pt").write_bytes(b"\x80\x04not a torch file")
    meta = tmp_path / "run" / "train" / "checkpoint_000010"
    meta.mkdir(parents=True)
    (meta / "meta.json").write_text("{'step': 10")
    return tmp_path


EVAL_FILE = ["eval", RECIPE, "--set", "storage_path={d}/runs", "--file"]
CASES = {  # bad arguments, recipes and values: (argv, text the one line must hold)
    "set_unparsable": (["validate", RECIPE, "--set", "train.max_steps=[1"], "train.max_steps=[1"),
    "set_alias": (["validate", RECIPE, "--set", "name=*"], "name=*"),
    "recipe_not_utf8": (["validate", "{d}/latin1.yaml"], "not UTF-8"),
    "sample_not_a_checkpoint": (["sample", "{d}/ck"], "not a raylm checkpoint"),
    "export_not_a_checkpoint": (["export", "{d}/ck", "{d}/out"], "not a raylm checkpoint"),
    "sample_bad_meta": (["sample", "{d}/run"], "meta.json: not valid JSON"),
    "micro_batch_zero": (["train", RECIPE, "--set", "train.batch.micro_batch_size=0"], "train.batch.micro_batch_size"),
    "name_newline": (["validate", RECIPE, "--set", 'name="a\\nb"'], "control character"),
    "missing_input": (["data", RECIPE, "--set", "data.inputs=[{path: does/not/exist.jsonl}]"], "does/not/exist.jsonl"),
    "missing_recipe": (["data", "{d}/nope.yaml"], "nope.yaml"),
    "submit_bad_command": (["submit", RECIPE, "--", "frobnicate"], "frobnicate"),
    # inputs that do not exist: with train.data_path nothing is built from them
    "tune_data_path_empty": (["tune", TUNE, "--set", "train.data_path={d}/ck", "--set", "data.inputs=[{path: nope.jsonl}]"], "it is train.data_path"),
    "run_data_path_empty": (["run", RECIPE, "--set", "train.data_path={d}/ck"], "it is train.data_path"),
    # no inf or nan anywhere, and a bound on every count
    "lr_inf": (["validate", RECIPE, "--set", "train.optim.lr=.inf"], "train.optim.lr: not a finite number"),
    "beta_nan": (["validate", RECIPE, "--set", "train.optim.betas=[.nan, 0.95]"], "train.optim.betas.0: not a finite number"),
    "max_steps_1e23": (["validate", RECIPE, "--set", "train.max_steps=1e23"], "train.max_steps"),
    "max_steps_float_1e23": (["validate", RECIPE, "--set", "train.max_steps=1.0e+23"], "train.max_steps"),
    "max_steps_int_1e23": (["validate", RECIPE, "--set", "train.max_steps=100000000000000000000000"], "train.max_steps: Input should be less than"),
    "recipe_duplicate_key": (["validate", "{d}/dup.yaml"], "dup.yaml: invalid YAML at line 4, column 3: duplicate key 'max_steps' (first on line 3)"),
    "recipe_invalid_yaml": (["validate", "{d}/broken.yaml"], "broken.yaml: invalid YAML at line 4, column 1: expected ',' or ']'"),
    # raylm eval --file, read before any checkpoint loads
    "eval_file_not_utf8": ([*EVAL_FILE, "{d}/latin1.txt"], "latin1.txt:2: not UTF-8 text (byte 22)"),
    "eval_jsonl_not_utf8": ([*EVAL_FILE, "{d}/latin1.jsonl"], "latin1.jsonl:2: not UTF-8"),
    "eval_jsonl_malformed": ([*EVAL_FILE, "{d}/broken.jsonl"], "broken.jsonl:3: not a JSON record"),
    "eval_jsonl_not_object": ([*EVAL_FILE, "{d}/array.jsonl"], "array.jsonl:1: expected a JSON object"),
    "eval_jsonl_empty": ([*EVAL_FILE, "{d}/none.jsonl"], "none.jsonl: no prompt/completion records"),
    "eval_file_directory": ([*EVAL_FILE, "{d}/ck"], "cannot read --file"),
    "param_space_inf": (["validate", TUNE, "--set", "tune.param_space={train.optim.lr: {loguniform: [1.0e-4, .inf]}}"], "loguniform.1: not a finite"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_user_errors_are_one_line_and_exit_2(capsys, bad_files, case):
    argv, needle = CASES[case]
    rc, _, err = _cli(capsys, *[a.replace("{d}", str(bad_files)) for a in argv])
    assert rc == 2 and needle in err, err
    assert len(err.strip().splitlines()) <= 2, err  # "bad recipe:" may put the key on its own line


def test_empty_recipe_warns(capsys, bad_files):
    rc, out, err = _cli(capsys, "validate", str(bad_files / "empty.yaml"))
    assert rc == 0 and "warning" in err and "every key takes its default" in err and "name: run" in out


def test_unexpected_error_is_a_message_and_a_saved_traceback(capsys, monkeypatch):
    import raylm.cluster.cli as cli

    def boom(args):
        raise RuntimeError("something inside broke")

    monkeypatch.setitem(cli.COMMANDS, "validate", cli.COMMANDS["validate"].__class__("validate", boom))
    rc, _, err = _cli(capsys, "validate", RECIPE)
    assert rc == 1 and "RuntimeError: something inside broke" in err
    path = err.rsplit("traceback in ", 1)[1].rstrip(")\n")
    assert "Traceback" in open(path).read()


def _docs_file(tmp_path, name="in.jsonl"):
    return write_jsonl(tmp_path / name, [{"id": d["id"], "text": d["text"][:4000]} for d in sample_docs()[:6]])


def _sets(tmp_path, inputs: str, *more) -> list[str]:
    return [
        "--set",
        f"storage_path={tmp_path}/runs",
        "--set",
        "name=t",
        "--set",
        "data.tokenizer={name: cl100k_base}",
        "--set",
        f"data.inputs={inputs}",
        *[x for m in more for x in ("--set", m)],
    ]


@pytest.mark.slow
def test_rerun_with_another_data_section_is_refused(ray_session, capsys, tmp_path):
    good = _docs_file(tmp_path)
    assert _cli(capsys, "data", RECIPE, *_sets(tmp_path, f"[{{path: '{good}'}}]"))[0] == 0
    rc, out, _ = _cli(capsys, "data", RECIPE, *_sets(tmp_path, f"[{{path: '{good}'}}]", "data.execution.workers=1"))
    assert rc == 0 and "nothing to do" in out  # how it is computed is not what it computes
    other = _docs_file(tmp_path, "other.jsonl")
    rc, _, err = _cli(capsys, "data", RECIPE, *_sets(tmp_path, f"[{{path: '{other}'}}]", "data.clean.chars.min=100"))
    assert rc == 2 and "data.inputs[0].path" in err and "data.clean.chars.min" in err and "--force" in err
    rc, _, _ = _cli(capsys, "data", RECIPE, *_sets(tmp_path, f"[{{path: '{other}'}}]", "data.clean.chars.min=100"), "--force")
    assert rc == 0
    man = json.loads((tmp_path / "runs" / "t" / "data" / "manifest.json").read_text())
    assert man["config"]["inputs"][0]["path"] == str(other)


@pytest.mark.slow
def test_a_run_that_keeps_nothing_fails_with_its_reasons(ray_session, capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "\\ud800 lone surrogate"}\n{"text": 5}\n{"oops\n')
    rc, _, err = _cli(capsys, "data", RECIPE, *_sets(tmp_path, f"[{{path: '{bad}'}}]"))
    assert rc == 1, err
    for reason in ("reject:invalid_unicode 1", "reject:non_string_text 1", "reject:malformed_json 1", "removed.parquet"):
        assert reason in err, err
    assert not (tmp_path / "runs" / "t" / "data" / "manifest.json").exists()


@pytest.mark.slow
def test_two_runs_at_once_each_start_their_own_ray(ray_session, tmp_path):
    """Two `raylm data` processes of different recipes started together, beside this session's Ray instance:
    none joins another's; both finish."""
    src = _docs_file(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PYTHONPATH=str(ROOT), RAY_DATA_DISABLE_PROGRESS_BARS="1")
    procs = []
    for name, val in (("a", 0.0), ("b", 0.5)):
        args = [
            sys.executable,
            "-m",
            "raylm",
            "data",
            RECIPE,
            *_sets(tmp_path, f"[{{path: '{src}'}}]", f"name={name}", f"data.output.val_fraction={val}"),
        ]
        procs.append(subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    t0 = time.time()
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    firsts = [next(ln for ln in o[0].splitlines() if ln.startswith("[raylm]")) for o in outs]
    assert all("started a local instance for this run" in f for f in firsts), firsts
    addresses = {f.split(" at ", 1)[1].split(":")[0] + ":" + f.split(" at ", 1)[1].split(":")[1] for f in firsts}
    assert len(addresses) == 2 and ray_session.get_runtime_context().gcs_address not in addresses
    for name in "ab":
        assert (tmp_path / "runs" / name / "data" / "manifest.json").exists()
    print(f"two concurrent runs: {time.time() - t0:.1f}s")


def test_validate_imports_neither_torch_nor_ray():
    code = (
        f"import sys; from raylm.cluster.cli import main; rc = main(['validate', {RECIPE!r}]); "
        "assert rc == 0 and 'torch' not in sys.modules and 'ray' not in sys.modules, sorted(sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]


@pytest.mark.slow
@pytest.mark.parametrize("action", ["status", "logs", "stop"])
def test_an_unknown_job_id_exits_2_naming_it(ray_session, capsys, monkeypatch, action):
    """Against the Jobs API of the suite's own Ray instance (its dashboard serves it)."""
    from ray._private.worker import get_dashboard_url

    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    rc, _, err = _cli(capsys, "jobs", action, "raysubmit_nosuchjob", "--address", f"http://{get_dashboard_url()}")
    assert rc == 2 and "no job 'raysubmit_nosuchjob' at http://" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("address", ["notaurl", "htp://head:8265", "http://no host:8265"])
def test_an_address_that_is_none_exits_2_naming_it(capsys, monkeypatch, address):
    for var in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    submit = ["submit", RECIPE, "--set", "storage_path=/tmp/raylm-x", "--address", address, "--no-wait"]
    for argv in (submit, ["jobs", "status", "x", "--address", address]):
        rc, _, err = _cli(capsys, *argv)
        assert rc == 2 and f"--address {address!r} is not a Ray cluster address" in err and len(err.strip().splitlines()) == 1, err


def test_a_manifest_of_an_unknown_version_exits_2_naming_it(capsys, tmp_path):
    """Shards a later raylm made are refused before Ray starts, in one line naming the file and its version."""
    from tests.conftest import manifest

    data = tmp_path / "runs" / "v" / "data"
    data.mkdir(parents=True)
    (data / "manifest.json").write_text(json.dumps({**manifest().as_json(), "version": 999}))  # as a later raylm would write it
    rc, _, err = _cli(capsys, "train", RECIPE, "--set", f"storage_path={tmp_path}/runs", "--set", "name=v")
    assert rc == 2
    assert len(err.strip().splitlines()) == 1
    assert f"{data}/manifest.json: manifest version 999" in err
