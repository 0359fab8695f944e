"""Ray Tune campaigns end to end on the sample, each trial a Ray Train run: tune-local.yaml's ASHA campaign on 3
trials in 2 rounds on a `ray start` cluster (its data stage first, results.csv, plots, MLflow, best.yaml that `raylm
train` reproduces); `raylm tune --resume` after the campaign's driver was killed, which finishes the campaign
without rerunning finished trials; PBT through Ray Train checkpoints; 3 HyperBand trials in 2 rounds.

Each trial is a Ray Train run whose start-up (controller, workers, process group) costs far more than its
steps, so the campaigns are as short as their points allow: STEPS steps with an evaluation every EVERY
(ASHA's rung), 2 evaluation batches."""

import csv
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

from raylm.cluster.cli import main
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow

RECIPE = str(ROOT / "cluster" / "recipes" / "tune-local.yaml")
STEPS, EVERY = 10, 5  # a trial's steps; evaluations (the scheduler's decisions) every EVERY steps


def _sets(tmp_path, name, *more):
    over = [
        f"storage_path={tmp_path}",
        f"name={name}",
        "train.model={n_layer: 1, n_head: 2, d_model: 64, seq_len: 64}",
        "train.batch={micro_batch_size: 8, global_batch_tokens: 512}",
        f"train.max_steps={STEPS}",
        "train.schedule.warmup_steps=2",
        f"train.eval={{every: {EVERY}, batches: 2}}",
        f"train.checkpoint={{every: {STEPS}, keep: 1}}",
        "tune.num_samples=2",  # two trials run at once on 2 cores: one round
        f"tune.scheduler={{type: asha, grace_period: {EVERY}, reduction_factor: 2}}",
        *more,
    ]
    return [a for o in over for a in ("--set", o)]


def _results(run):
    with open(run / "tune" / "results.csv") as f:
        return list(csv.DictReader(f))


def _terminated(tune_dir) -> list[str]:
    """Ids of the trials Tune's newest saved experiment state records as finished."""
    states = sorted(tune_dir.glob("experiment_state-*.json"), key=lambda p: p.stat().st_mtime)
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"] if states else []
    except (ValueError, OSError):  # caught mid-write
        return []
    trials = [json.loads(t[0]) for t in trial_data]
    return [t["trial_id"] for t in trials if t["status"] == "TERMINATED"]


def test_resume_after_the_driver_is_killed(ray_session, sample_shards, tmp_path):
    import ray

    # Tune saves its experiment state every second here (default: auto, tens of seconds on a busy machine): a trial
    # that finished after the last save is, to Tune, still running, and a resumed campaign rightly runs it again
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "PYTHONPATH": str(ROOT), "TUNE_GLOBAL_CHECKPOINT_S": "1"}
    # two trials one after the other, on the session's shards: killed once the first has finished and the second begun
    sets = _sets(tmp_path, "tr", "tune.max_concurrent_trials=1", "tune.scheduler.type=fifo", f"train.data_path={sample_shards}")
    args = [sys.executable, "-m", "raylm", "tune", RECIPE, *sets]
    proc = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    trials = tmp_path / "tr" / "tune" / "trials"
    deadline, finished = time.time() + 240, []
    while time.time() < deadline and not finished:  # kill once Tune has recorded a finished trial and the next has begun
        done = _terminated(tmp_path / "tr" / "tune")
        if done and len(list(trials.glob("*"))) >= 2:
            finished = [trials / t / "train" / "metrics.jsonl" for t in done]
        time.sleep(0.2)
    assert finished and proc.poll() is None, "the campaign ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p: p.stat().st_mtime for p in finished}
    assert main(["tune", RECIPE, *sets, "--resume"]) == 0
    rows = _results(tmp_path / "tr")
    assert len(rows) == 2 and all(r["status"] == "done" for r in rows)
    assert {p: p.stat().st_mtime for p in finished} == before  # finished trials were not run again


def test_pbt_exploits_through_ray_train_checkpoints(ray_session, sample_shards, tmp_path):
    """PBT: a bottom trial continues from a top trial's Ray Train checkpoint with its own perturbed lr, in
    a new Ray Train run under from-<step>-*/. Its first step's loss (computed before the update, on the
    batch the loader state gives) equals the donor's loss at that step bit for bit: the same weights,
    data position and RNG, while its lr differs."""
    # Tune's synchronous PBT: both trials wait at step 5, then the bottom one continues from the top one's
    # checkpoint (asynchronous PBT exploits only from a trial it has seen in the top quantile at one of its own
    # perturbations: on 2 busy cores which trial runs faster, and so whether any exploit happens, is chance)
    assert (
        main(
            [
                "tune",
                RECIPE,
                *_sets(
                    tmp_path,
                    "tp",
                    "train.max_steps=8",
                    "train.checkpoint={every: 5, keep: 10}",
                    "tune.scheduler={type: pbt, perturbation_interval: 5, quantile_fraction: 0.5, synch: true}",
                    "tune.param_space={train.optim.lr: {loguniform: [1.0e-4, 3.0e-2]}}",
                    f"train.data_path={sample_shards}",
                ),
            ]
        )
        == 0
    )
    rows = _results(tmp_path / "tp")
    assert len(rows) == 2 and all(r["status"] == "done" and int(r["steps"]) == 8 for r in rows)
    trials = tmp_path / "tp" / "tune" / "trials"
    runs = {p: [json.loads(x) for x in p.read_text().splitlines()] for p in trials.glob("**/train/metrics.jsonl")}
    trial = {p: p.relative_to(trials).parts[0] for p in runs}
    exploits = 0
    for seg, hist in runs.items():
        if "from-" not in str(seg):
            continue
        start = int(seg.parent.parent.name.split("-")[1])
        if start == 8:  # handed a finished trial's final checkpoint: it holds that model, with its final row
            assert len(hist) == 1 and any(hist[0] == r for p, h in runs.items() if trial[p] != trial[seg] for r in h)
            continue
        # a continuation may itself be cut short when PBT hands the trial yet another checkpoint (every
        # trial's merged history ends at step 8: checked above)
        assert hist[0]["step"] == start + 1
        same = [(p, r) for p, h in runs.items() if p != seg for r in h if r["step"] == start + 1 and r["loss"] == hist[0]["loss"]]
        assert same, f"{seg}: its first loss matches no run's at step {start + 1}: not continued from a checkpoint"
        donors = [r for p, r in same if trial[p] != trial[seg]]
        if donors:
            exploits += 1
            assert all(r["lr"] != hist[0]["lr"] for r in donors)  # its own perturbed lr, not the donor's
    assert exploits, "no trial continued from another's checkpoint"


@pytest.fixture(scope="module")
def bare_cluster():
    """A `ray start` head of 2 CPUs without the dashboard, so without the State API: Ray Train's own cleaner then
    never sees a stopped trial's controller die, and only raylm's release frees the trial's reservation."""
    from tests.test_cluster_e2e import RAY, _teardown

    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))  # the caller's too (benchmarks/train_runs.py)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16), "PYTHONPATH": path}
    env.pop("RAY_ADDRESS", None)
    temp, port = tempfile.mkdtemp(prefix="rlt", dir="/tmp"), free_port()
    start = [RAY, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"]
    try:
        subprocess.run([*start, f"--dashboard-agent-listen-port={free_port()}"], env=env, check=True, capture_output=True, timeout=120)
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:
        _teardown(port, [temp])


def _raylm(env: dict, *args: str, timeout: int) -> subprocess.CompletedProcess:
    """`python -m raylm ARGS` on the cluster `env` names (RAY_ADDRESS), its output captured."""
    return subprocess.run([sys.executable, "-m", "raylm", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.own_ray  # its own `ray start` head: beside the session's tests
def test_tune_local_as_the_readme_gives_it(bare_cluster, tmp_path):
    """`raylm tune cluster/recipes/tune-local.yaml` (8 ASHA trials, 4 rounds on 2 CPUs), shortened in steps,
    evaluation batches and trials: 3 trials (a grid of learning rates, so that ASHA's stops do not hang on which
    trial reaches the rung first), 2 rounds (the third trial waits for a first-round one to end), each trial a Ray
    Train run whose start costs ~19 s of CPU on 2 cores. Every trial reaches its first rung and the campaign ends on
    its own: on this cluster (no State API) only raylm's release of the first round's reservations lets the second
    round start. The one ASHA campaign of the suite, so it is checked for everything a campaign leaves: it builds
    its data first (no shards yet), results.csv, plots, the console's table and lines, run.json, MLflow's parent and
    child runs, and a best.yaml that `raylm train` runs as is to the val loss reported."""
    steps = [f"train.max_steps={STEPS}", "train.schedule.warmup_steps=2", f"train.eval={{every: {EVERY}, batches: 2}}", "tune.num_samples=1"]
    # three learning rates in launch order, the second round's far too small: it reaches the rung after a
    # first-round result it cannot beat, so ASHA stops it
    space = "{train.optim.lr: {grid: [3.0e-3, 2.0e-3, 1.0e-6]}, train.optim.weight_decay: {uniform: [0.0, 0.2]}}"
    steps.append(f"tune.param_space={space}")
    steps += [f"train.checkpoint.every={STEPS}", f"tune.scheduler.grace_period={EVERY}", "train.loggers=[tensorboard, mlflow]"]
    sets = [a for o in [f"storage_path={tmp_path}", *steps] for a in ("--set", o)]
    r = _raylm(bare_cluster, "tune", RECIPE, *sets, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "shakespeare-tune"
    rows = _results(run)
    assert len(rows) == 3
    assert all(int(row["steps"]) >= EVERY for row in rows), rows
    assert {row["status"] for row in rows} == {"done", "stopped"}
    assert len({r["train.optim.lr"] for r in rows}) == 3
    for png in ("curves.png", "params.png"):
        assert (run / "tune" / png).read_bytes()[:4] == b"\x89PNG"
    _check_console(r.stdout)
    rec = json.loads((run / "tune" / "run.json").read_text())
    assert rec["stage"] == "tune" and rec["status"] == "succeeded" and rec["result"]["trials"] == 3
    assert rec["result"]["best"]["trial_id"] and rec["recipe"]["tune"]["param_space"]["train.optim.lr"]["grid"][2] == 1.0e-6
    _check_mlflow(run, rows)
    # best.yaml is a complete recipe: `raylm train` runs it as is and lands on the reported val loss
    best = yaml.safe_load((run / "tune" / "best.yaml").read_text())
    top = min((r for r in rows if r["status"] == "done"), key=lambda r: float(r["final_val_loss"]))
    assert best["train"]["optim"]["lr"] == pytest.approx(float(top["train.optim.lr"]))
    r = _raylm(bare_cluster, "train", str(run / "tune" / "best.yaml"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = [json.loads(x) for x in (tmp_path / "shakespeare-tune-best" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["val_loss"] == pytest.approx(float(top["final_val_loss"]), rel=0.02)


def _check_console(out: str) -> None:
    """A campaign's console: the data stage said to run first, a table of trials as they run, a line as each ends,
    how to train the best, and none of Tune's own output."""
    assert out.splitlines()[0].startswith("[raylm tune] no shards at")
    assert "raylm train" in out and "best.yaml" in out
    # the table (printed at most every 30 s off a terminal: the trials Tune had drawn by then) and a line per trial
    assert re.search(r"raylm tune: [123] trial\(s\)", out) and "train.optim.lr" in out
    ended = [ln for ln in out.splitlines() if ln.startswith("[raylm tune] trial ")]
    assert len(ended) == 3 and all("val_loss" in ln for ln in ended)
    assert "Configuration for experiment" not in out and "Trial status" not in out and "View detailed results" not in out


def _check_mlflow(run, rows: list[dict]) -> None:
    """MLflow (the run's own SQLite store): one parent run for the campaign, a child run per trial."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(run.name).experiment_id])
    (parent,) = [r for r in runs if r.info.run_name == f"{run.name}-tune"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == sorted(r["trial_id"] for r in rows) and parent.info.status == "FINISHED"


def test_hyperband_campaign_of_two_rounds_ends(ray_session, sample_shards, tmp_path):
    """3 HyperBand trials, 2 at a time on 2 CPUs (a second round: more trials than the cluster fits at once): each
    reaches its first evaluation and the campaign ends. Its objective is a downstream task's accuracy (tune.metric
    tasks/word-order/acc, mode max: the bundled task scored at each evaluation), so the scheduler, the table and
    best.yaml go by it."""
    task = ["train.eval.tasks=[data/downstream/word-order.jsonl]", "tune.metric=tasks/word-order/acc", "tune.mode=max"]
    sets = _sets(tmp_path, "hb", f"train.data_path={sample_shards}", "tune.num_samples=3", "tune.scheduler={type: hyperband}", *task)
    assert main(["tune", RECIPE, *sets]) == 0
    rows = _results(tmp_path / "hb")
    assert len(rows) == 3
    assert all(int(row["steps"]) >= EVERY for row in rows), rows
    assert {row["status"] for row in rows} <= {"done", "stopped"}
    accs = [float(row["final_tasks/word-order/acc"]) for row in rows]
    assert all(0 <= a <= 1 for a in accs) and len(set(accs)) > 1, accs  # each trial's own accuracy
    best = yaml.safe_load((tmp_path / "hb" / "tune" / "best.yaml").read_text())
    top = max(rows, key=lambda r: float(r["final_tasks/word-order/acc"]))
    assert best["train"]["optim"]["lr"] == pytest.approx(float(top["train.optim.lr"]))
