"""raylm on a real multi-node Ray cluster on this machine: a head and two worker nodes started with
`ray start` and token auth; jobs go through `raylm submit` and the Ray Jobs API. A worker node killed
mid-training (its raylet, by pid) ends in a finished run resumed from the last checkpoint; a killed job
driver, then the same submission again, resumes too (one run meets both)."""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from raylm.cluster.cli import main
from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.slow

RECIPE = str(ROOT / "cluster" / "recipes" / "local.yaml")
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def kill_with_descendants(procs) -> None:
    """SIGKILL each process and every descendant of it (found before any is killed); one already gone is no error."""
    import psutil

    procs = list(procs)
    for p in list(procs):
        try:
            procs += p.children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def _kill_tree(marks) -> None:
    """Every process of this test's cluster, not other Ray instances: those whose command lines name its GCS
    port or a node's temp dir, and their descendants. A node's dashboard and runtime-env agents name neither
    once they have set their titles; orphaned by their raylet, they outlive it for a minute, busy on a core."""
    import psutil

    kill_with_descendants(p for p in psutil.process_iter(["cmdline"]) if any(m in " ".join(p.info["cmdline"] or []) for m in marks))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from local_cluster(tmp_path_factory)


def local_cluster(tmp_path_factory):
    """Head (no CPUs: drivers only) + nodes a and b (2 CPUs each), every one requiring the same token. Each node
    gets its own temp dir, as separate machines would have: nodes sharing one would unpack and delete the job's
    working_dir in one place; and a head in the default /tmp/ray would share `ray_current_cluster` (where a Ray
    Jobs supervisor looks up the address it gives each job's driver) with any other `ray start --head` of the
    machine, such as the on-prem test's running beside this one: the job's driver would then dial that head."""
    token = secrets.token_hex(16)
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",  # the job's `python` is this venv's
        # the GCS declares a node dead after this many failed health checks this far apart (Ray's defaults, 5 x 3 s,
        # are for networks that drop packets): a killed raylet refuses each check at once, so the tests' lost
        # nodes are found in ~2 s instead of ~15 s; a live raylet has health_check_timeout_ms (10 s) per check
        "RAY_health_check_period_ms": "500",
        "RAY_health_check_failure_threshold": "4",
    }
    env.pop("RAY_ADDRESS", None)
    dirs = [tempfile.mkdtemp(prefix=f"rl{n}", dir="/tmp") for n in "hab"]  # short: Ray's socket paths must fit
    port, dash = free_port(), free_port()
    run = lambda *a: subprocess.run([RAY, *a], env=env, check=True, capture_output=True, timeout=120)  # noqa: E731
    try:
        # every node's agent on a port of its own: the default (52365) is taken by the first Ray on the machine,
        # and the head's is the one the Jobs API submits through
        run(
            "start",
            "--head",
            f"--port={port}",
            "--num-cpus=0",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--include-dashboard=true",
            "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--temp-dir={dirs[0]}",
        )
        c = {"address": f"http://127.0.0.1:{dash}", "token": token, "port": port, "dirs": dirs, "env": env}
        c["storage"] = tmp_path_factory.mktemp("shared")
        for name, d in zip(("node_a", "node_b"), dirs[1:]):
            start_node(c, name, d)
        yield c
    finally:
        _teardown(port, dirs)


def start_node(cluster: dict, name: str, temp_dir: str) -> None:
    """A worker node with 2 CPUs joining the cluster, with a temp dir (and so a raylet) of its own."""
    subprocess.run(
        [
            RAY,
            "start",
            f"--address=127.0.0.1:{cluster['port']}",
            "--num-cpus=2",
            f"--resources={json.dumps({name: 1})}",
            f"--temp-dir={temp_dir}",
            f"--dashboard-agent-listen-port={free_port()}",
        ],
        env=cluster["env"],
        check=True,
        capture_output=True,
        timeout=120,
    )


def _teardown(port: int, dirs: list[str]) -> None:
    _kill_tree([f":{port} ", f':{port}"', f"port={port}", *dirs])
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)
    current = "/tmp/ray/ray_current_cluster"  # `ray.init("auto")` would keep dialing the dead head
    if os.path.exists(current) and f":{port}" in open(current).read():
        os.remove(current)


def _sets(storage, name):
    over = [
        f"storage_path={storage}",
        f"name={name}",
        "train.model={n_layer: 2, n_head: 2, d_model: 64, seq_len: 64}",
        "train.batch={micro_batch_size: 8, global_batch_tokens: 2048}",
        "train.max_steps=40",
        "train.schedule.warmup_steps=5",
        "train.eval={every: 10, batches: 2}",
        "train.checkpoint={every: 10, keep: 2}",
        "train.scaling={num_workers: 2, resources_per_worker: {CPU: 1}}",
        "train.failure.max_failures=3",
    ]
    return [a for o in over for a in ("--set", o)]


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait_for_step(metrics, step, timeout=400, cluster=None, name=None):
    """Until the run's metrics.jsonl has reached `step`; failing, with the status and log tail of the run's newest
    job when `cluster` and `name` are given."""
    deadline, asked = time.time() + timeout, time.time()
    while time.time() < deadline:
        rows = _rows(metrics)
        if rows and rows[-1]["step"] >= step:
            return rows[-1]["step"]
        if cluster and time.time() - asked > 2:  # a job that has ended will never get there: say so at once
            asked = time.time()
            if _job_status(cluster, name)[-1:] in (["FAILED"], ["STOPPED"], ["SUCCEEDED"]):
                break
        time.sleep(0.1)
    raise AssertionError(f"{metrics} never reached step {step}" + (_job_tail(cluster, name) if cluster else ""))


def _job_tail(cluster, name) -> str:
    from raylm.cluster.submit import client

    c = client(cluster["address"])
    jobs = sorted((j for j in c.list_jobs() if (j.metadata or {}).get("raylm_run") == name), key=lambda j: j.start_time or 0)
    if not jobs:
        return ": no job of the run"
    return f"; job {jobs[-1].status}: {c.get_job_logs(jobs[-1].submission_id)[-3000:]}"


def _procs(pattern):
    import psutil

    return [p for p in psutil.process_iter(["cmdline", "ppid"]) if pattern(" ".join(p.info["cmdline"] or []))]


def _submit(cluster, name, *command, wait=False):
    return main(
        [
            "submit",
            RECIPE,
            *_sets(cluster["storage"], name),
            "--address",
            cluster["address"],
            "--no-deps",
            *([] if wait else ["--no-wait"]),
            "--",
            *command,
        ]
    )


def _job_status(cluster, name):
    """The statuses of the run's jobs, oldest first."""
    from raylm.cluster.submit import client

    jobs = [j for j in client(cluster["address"]).list_jobs() if (j.metadata or {}).get("raylm_run") == name]
    jobs.sort(key=lambda j: j.start_time or 0)
    return [str(j.status.value if hasattr(j.status, "value") else j.status) for j in jobs]


def _wait_for_checkpoint(run_dir, after: int = 0, timeout=120):
    """Until Ray Train's controller has registered a checkpoint of a step past `after` (it collects reports on a
    poll, up to seconds after the step): before that, a restart would begin from an earlier one."""
    snap = run_dir / "train" / "checkpoint_manager_snapshot.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = json.loads(snap.read_text() or "{}") if snap.exists() else {}
        if any(r["metrics"].get("step", 0) > after for r in state.get("checkpoint_results", [])):
            return
        time.sleep(0.1)
    raise AssertionError(f"{run_dir}: no checkpoint past step {after} registered")


def _assert_resumed(rows, killed_at):
    """Rows up to a checkpoint (a multiple of 10) were written before the kill; the rest, redone, after it."""
    when = [(r["step"], round(r["time"] - killed_at, 1)) for r in rows]
    k = sum(1 for _, t in when if t < 0)
    assert k >= 10 and k % 10 == 0 and all(t < 0 for _, t in when[:k]) and all(t > 0 for _, t in when[k:]), when


def _end_of(cluster, name, timeout=600) -> list[str]:
    """The statuses of the run's jobs (_job_status) once its newest has ended, or when `timeout` runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline and _job_status(cluster, name)[-1] not in ("SUCCEEDED", "FAILED", "STOPPED"):
        time.sleep(0.5)
    return _job_status(cluster, name)


def test_a_killed_driver_resubmitted_then_a_killed_worker_node_and_the_run_ends_whole(cluster, monkeypatch):
    """One run through both failures a cluster job meets (each Ray Train run on these 2-CPU nodes costs ~12 s of
    CPU to start, so one run serves both): its job's driver is killed after a checkpoint (the job fails), the same
    submission (`train`) resumes from that checkpoint, and its Ray Train workers' node is then lost (its raylet,
    killed by pid, with the workers): Ray Train restarts them on the other node from the newest checkpoint and the
    job ends SUCCEEDED, with each of the 40 steps' rows once, every one written after the last kill before it was
    redone."""
    import psutil

    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster["token"])
    run = cluster["storage"] / "nodes"
    metrics = run / "train" / "metrics.jsonl"
    assert _submit(cluster, "nodes", "run") == 0
    _wait_for_step(metrics, 13, cluster=cluster, name="nodes")
    _wait_for_checkpoint(run)
    drivers = _procs(lambda c: "-m raylm run submitted.yaml" in c and "printenv" not in c)
    assert len(drivers) == 1
    driver_killed = time.time()
    drivers[0].send_signal(signal.SIGKILL)
    assert _end_of(cluster, "nodes", timeout=120) == ["FAILED"]

    with ThreadPoolExecutor(1) as pool:
        # the same submission again, followed: `raylm submit` prints the job's logs and exits 0 when it succeeded
        following = pool.submit(_submit, cluster, "nodes", "train", wait=True)
        _wait_for_step(metrics, 23, cluster=cluster, name="nodes")
        _wait_for_checkpoint(run, after=10)
        # the raylet of the node hosting the Ray Train workers (their parent process), killed with its workers
        workers = [
            w
            for w in _procs(lambda c: "RayTrainWorker" in c)  # of this cluster's nodes, not another Ray's
            if any(d in " ".join(psutil.Process(w.info["ppid"]).cmdline()) for d in cluster["dirs"])
        ]
        assert len(workers) == 2, "two Ray Train workers"
        raylet = psutil.Process(workers[0].info["ppid"])
        assert "raylet" in raylet.name() and "node_" in " ".join(raylet.cmdline())
        node_killed = time.time()
        kill_with_descendants([raylet])
        assert following.result(timeout=600) == 0
    assert _job_status(cluster, "nodes") == ["FAILED", "SUCCEEDED"]

    rows = _rows(metrics)
    assert [r["step"] for r in rows] == list(range(1, 41))
    _assert_resumed(rows, driver_killed)
    _assert_resumed(rows, node_killed)
    assert (run / "data" / "manifest.json").exists()
    # the cluster token is in no job log and nowhere in the run directory
    from raylm.cluster.submit import client

    c = client(cluster["address"])
    for job in [j for j in c.list_jobs() if (j.metadata or {}).get("raylm_run") == "nodes"]:
        logs = c.get_job_logs(job.submission_id)
        assert "raylm train" in logs and cluster["token"] not in logs
    for f in run.rglob("*"):
        if f.is_file():
            assert cluster["token"].encode() not in f.read_bytes(), f


@pytest.mark.own_ray
def test_onprem_head_started_as_its_config_says_runs_jobs_in_raylms_environment(tmp_path, monkeypatch):
    """cluster/ray/onprem.yaml's own head start commands, run as `ray up` runs them (bash, the node's HOME with
    ~/raylm/.venv, a PATH without that virtualenv): a submitted job's `python` must be raylm's, not the system's.
    Test-only changes: free ports, a temp dir of its own, no `ray stop` (it would stop every Ray on this machine), no
    autoscaler file."""
    import yaml

    cfg = yaml.safe_load((ROOT / "cluster" / "ray" / "onprem.yaml").read_text())
    home = tmp_path / "home"
    (home / "raylm").mkdir(parents=True)
    (home / "raylm" / ".venv").symlink_to(sys.prefix)
    token = secrets.token_hex(16)
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text(token)  # what the config's file_mounts push
    port, dash = free_port(), free_port()
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    temp = tempfile.mkdtemp(prefix="rlo", dir="/tmp")  # not /tmp/ray, which other heads of this machine share
    try:
        for cmd in cfg["head_start_ray_commands"]:
            if "ray stop" in cmd:
                continue
            cmd = cmd.replace("--port=6379", f"--port={port}").replace("--autoscaling-config=~/ray_bootstrap_config.yaml", "")
            cmd += (
                f" --num-cpus=1 --dashboard-port={dash} --dashboard-agent-listen-port={free_port()} --disable-usage-stats --include-dashboard=true"
                f" --temp-dir={temp}"
            )
            out = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr[-2000:]
        monkeypatch.setenv("RAY_AUTH_TOKEN", token)
        rc = main(
            ["submit", RECIPE, "--set", f"storage_path={tmp_path}/runs", "--address", f"http://127.0.0.1:{dash}", "--no-deps", "--", "validate"]
        )
        assert rc == 0, "the job failed: its `python` is not raylm's environment"
    finally:
        _teardown(port, [temp])
