"""The data stage across nodes: `raylm data` submitted with `raylm submit` to a head and two worker nodes
(separate raylets on loopback, token auth, as in test_cluster_e2e.py) loses a worker node during the
process stage (a replacement joins, as an autoscaler's would) and another during dedup, and still ends
with shards, tables and manifest byte-identical to a run of the same recipe on one node; with fastText scoring and
keep_fraction on, so its threshold is shown not to depend on the nodes either."""

import hashlib
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from raylm.cluster.cli import main
from raylm.pipelines.run import run_data
from tests.test_cluster_e2e import RECIPE, _end_of, _procs, kill_with_descendants, local_cluster, start_node

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    yield from local_cluster(tmp_path_factory)


SETS = [
    "data.tokenizer={name: cl100k_base}",  # no BPE stage: the kills aim at process and dedup
    "data.execution={batch_bytes: 400000}",  # ~25 blocks of the sample: the process stage lasts long enough to lose a node in
    # ~150 dedup tasks (S1..S6 over 16 partitions), ~2 s on the surviving node: a window the test can catch a
    # task of, where 4 partitions ran the whole stage in 0.1-0.3 s
    "data.dedup.partitions=16",
    # fastText scores and keep_fraction's corpus-wide threshold: the same documents kept on three nodes losing two
    # as on one
    "data.quality.fasttext={train: {labels: {prose: [data/quality/prose.txt], boilerplate: [data/quality/boilerplate.txt]}, bucket: 100000}, "
    "keep_fraction: 0.5}",
]


def _digest(root: Path) -> dict[str, str]:
    """sha256 of every output file (stats.json holds timings and run.json how and when it ran: left out)."""
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.name not in ("stats.json", "run.json")]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _cluster_workers(cluster, title: str) -> list:
    """This cluster's Ray worker processes whose title holds `title` (not another Ray's on this machine)."""
    import psutil

    out = []
    for w in _procs(lambda c: title in c):
        try:
            parent = " ".join(psutil.Process(w.info["ppid"]).cmdline())
        except psutil.NoSuchProcess:
            continue
        if any(d in parent for d in cluster["dirs"]):
            out.append(w)
    return out


def _kill_node_of(worker) -> str:
    """SIGKILL a worker's raylet and everything under it: the node is lost, as a machine would be."""
    import psutil

    raylet = psutil.Process(worker.info["ppid"])
    assert "raylet" in raylet.name(), raylet.cmdline()
    node = next((a for a in raylet.cmdline() if "/tmp/rl" in a), str(raylet.pid))
    kill_with_descendants([raylet])
    return node


def _wait_for(what: str, cond, timeout: float = 300, every: float = 0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"never saw {what}")


def test_data_stage_survives_lost_nodes_byte_identical(cluster, ray_session, monkeypatch, tmp_path):
    from raylm.cluster.recipe import load_config

    ref = load_config(RECIPE, [f"storage_path={tmp_path}", "name=one", *SETS])
    run_data(ref.data, ref.paths, say=lambda m: None, summary=False)  # one node: this test's session Ray

    monkeypatch.setenv("RAY_AUTH_TOKEN", cluster["token"])
    name, storage = "lost", cluster["storage"]
    sets = [a for o in [f"storage_path={storage}", f"name={name}", *SETS] for a in ("--set", o)]
    assert main(["submit", RECIPE, *sets, "--address", cluster["address"], "--no-deps", "--no-wait", "--", "data"]) == 0
    staging = storage / name / "data" / "_work" / "docs"
    _wait_for("a staging file", lambda: staging.exists() and any(staging.glob("*.parquet")))
    actors = _wait_for("processing tasks", lambda: _cluster_workers(cluster, "MapBatches(process_block)"))
    lost = [_kill_node_of(actors[0])]
    assert not (storage / name / "data" / "_work" / "dups").exists(), "the process stage ended before the kill"
    cluster["dirs"].append(tempfile.mkdtemp(prefix="rlc", dir="/tmp"))
    # the replacement joins while the stage goes on (as an autoscaler's would): started beside the watch for dedup
    with ThreadPoolExecutor(1) as pool:
        joining = pool.submit(start_node, cluster, "node_c", cluster["dirs"][-1])
        dedup = _wait_for("a dedup task", lambda: _cluster_workers(cluster, "ray::_s"), every=0.02)
        lost.append(_kill_node_of(dedup[0]))
        joining.result()  # its `ray start` failing fails the test here
    assert _end_of(cluster, name) == ["SUCCEEDED"], lost

    got, want = _digest(storage / name / "data"), _digest(tmp_path / "one" / "data")
    assert got.keys() == want.keys() and got == want
    # every block's staging file once: a block redone after the loss replaced its file, never added one
    stats = [json.loads((r / "data" / "stats.json").read_text())["stages"]["process"]["counts"] for r in (storage / name, tmp_path / "one")]
    assert stats[0]["staging_files"] == stats[1]["staging_files"] >= 20
