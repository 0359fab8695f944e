import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from hypothesis import settings

# property tests: deterministic in CI (derandomize), modest by default; `--hypothesis-profile=thorough` runs more
settings.register_profile("ci", max_examples=100, derandomize=True, deadline=None, print_blob=True)
settings.register_profile("thorough", max_examples=1000, deadline=None, print_blob=True)

# Ray Train's controller polls its workers every 2 s by default (each run waits on that poll to start and
# to end), and starts a preemption-watcher actor per run (one more process on 2 cores) that no test needs.
# Set here, before any Ray starts, so that the session's instance and every subprocess's inherit them. (At 0.1 s
# a 20-step run was ~1 s shorter, but a HyperBand campaign then once never ended: see CHANGELOG, Known issues.)
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# asynchronous checkpoint writes wait 2 s (training/saving.py): the window in which tests/test_train_parallel.py
# kills a worker while one is in flight; no other test saves asynchronously
os.environ.setdefault("RAYLM_TESTING_CHECKPOINT_WRITE_DELAY_S", "2")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "shakespeare.jsonl.gz"
# the pretrained run's model, which fine-tuning from it must match: the llama arch with grouped-query attention (the
# gpt2 arch trains in the other end-to-end tests: the tune campaigns, interrupts, S3, tracking)
MODEL = "{arch: llama, n_layer: 2, n_head: 2, n_kv_head: 1, d_model: 64, seq_len: 64}"
# the pretrained run's training (2 workers, 12 steps, AdamW: FSDP2 refuses Muon); tests/test_train_parallel.py runs
# it on 1 worker and on 2 FSDP2 workers to compare
TINY_MODEL = {"n_layer": 2, "n_head": 2, "d_model": 32, "seq_len": 16}  # tiny_trainer's
PRETRAIN = [
    f"train.model={MODEL}",
    "train.optim.name=adamw",
    "train.batch={micro_batch_size: 4, global_batch_tokens: 1024}",
    "train.max_steps=12",
    "train.schedule.warmup_steps=2",
    "train.eval.every=6",
    "train.eval.batches=2",
    "train.eval.tasks=[]",  # local.yaml's downstream tasks: scored in the pretrained run only (PRETRAIN_TASKS)
    "train.checkpoint={every: 6, keep: 2}",
    "train.scaling.num_workers=2",
]
PRETRAIN_TASKS = "train.eval.tasks=[data/downstream]"  # the bundled tasks, as local.yaml scores them


def sample_docs() -> list[dict]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def pytest_configure(config):
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile("ci")


def pytest_itemcollected(item):
    """The tests that start Ray are marked slow. `make test` runs those on the session's instance, and those that
    stop processes at chosen moments, in one pytest, one after another; beside it, in a second pytest, the tests
    without Ray and the slow ones marked own_ray (a Ray instance of their own or none, no moment timed), on the core that
    the first leaves idle while its runs start and end. A test in the second using the session's instance would
    start a second one."""
    session = "ray_session" in getattr(item, "fixturenames", ())
    if session and (not item.get_closest_marker("slow") or item.get_closest_marker("own_ray")):
        raise pytest.UsageError(f"{item.nodeid} uses the session's Ray instance: mark it slow, and not own_ray")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for every end-to-end test (2 CPUs, like CI)."""
    import ray

    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    # the dashboard serves the State API that Ray Train V2 uses to clean up after a controller
    # address="local": a fresh instance of the suite's own, never one found running on the machine (a stale
    # /tmp/ray/ray_current_cluster of a killed `ray start` would make ray.init try to join it and refuse num_cpus)
    ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1", log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a server or process group a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_train_workers() -> list[int]:
    """The pids of the Ray Train workers alive on the session's instance, by its State API: not those of the Ray
    instances that the second pytest's tests start beside it, which a test killing "a worker" must leave alone."""
    import ray
    from ray.util.state import list_actors

    # the address named: without it the State API looks for the machine's one instance, and refuses several
    actors = list_actors(address=ray.get_runtime_context().gcs_address, filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return sorted(a.pid for a in actors if a.pid)


@pytest.fixture(scope="session")
def pretrained(ray_session, tmp_path_factory):
    """`raylm run` of a small model on the sample, once for the session: (storage path, the --set arguments,
    captured stdout). Its run is `tr`; tests/test_train_e2e.py checks it and trains it further."""
    from raylm.cluster.cli import main

    tmp = tmp_path_factory.mktemp("pre")
    over = [f"storage_path={tmp}", "name=tr", *PRETRAIN, PRETRAIN_TASKS]
    sets = [a for o in over for a in ("--set", o)]
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(["run", str(ROOT / "cluster" / "recipes" / "local.yaml"), *sets, "--prompt", "KING"]) == 0
    return tmp, sets, buf.getvalue()


@pytest.fixture(scope="session")
def sample_shards(pretrained) -> str:
    """The shards of the pretrained run (the sample through local.yaml's data stage): what the tests that
    train or tune, and do not test the data stage, read as train.data_path."""
    return str(pretrained[0] / "tr" / "data")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1 (its own SQLite store and artifacts), for the session: its URL."""
    port = free_port()
    srv = tmp_path_factory.mktemp("mlflow-server")
    args = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    args += ["--backend-store-uri", f"sqlite:///{srv}/db.sqlite", "--artifacts-destination", str(srv / "artifacts")]
    # without MLflow's job runner (8 processes of ~2 s CPU each, for GenAI evaluation jobs this test never sends)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=open(srv / "log", "w"), start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"mlflow server did not start: {(srv / 'log').read_text()[-2000:]}") from None
            time.sleep(0.5)
    yield url
    # the server's whole session at once: a graceful stop (SIGTERM) waits seconds on its workers, and nothing it
    # would flush is read after the tests
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def tracked_run(pretrained, sample_shards, mlflow_server, tmp_path_factory):
    """`raylm train` of 4 steps on one worker, initialized from the pretrained run's weights (train.init_from), with
    train.loggers [tensorboard, mlflow, wandb]: MLflow on `mlflow_server`, W&B offline (no API key). One run for two
    points: tests/test_tracking_e2e.py checks what it logged, tests/test_train_parallel.py that it starts where the
    pretrained run ended. Returns (storage path, the server's URL); the run is `trk`."""
    from raylm.cluster.cli import main

    tmp = tmp_path_factory.mktemp("trk")
    over = [f"storage_path={tmp}", "name=trk", *PRETRAIN, PRETRAIN_TASKS, f"train.data_path={sample_shards}"]
    over += [f"train.init_from={pretrained[0] / 'tr'}", "train.max_steps=4", "train.eval.every=2", "train.eval.batches=1"]
    over += ["train.checkpoint.every=4", "train.loggers=[tensorboard, mlflow, wandb]"]
    over += ["train.scaling.num_workers=1"]  # rank 0 logs: a second worker (~4.5 s of CPU to start) adds nothing here
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        for var in ("WANDB_API_KEY", "WANDB_MODE"):
            mp.delenv(var, raising=False)
        assert main(["train", str(ROOT / "cluster" / "recipes" / "local.yaml"), *[a for o in over for a in ("--set", o)]]) == 0
    return tmp, mlflow_server


@pytest.fixture
def tiny_shards(tmp_path):
    """Synthetic shards (vocab 100, end-of-text 99) under tmp_path/data, for the Trainer driven without Ray."""
    return write_tiny_shards(tmp_path)


def write_tiny_shards(tmp_path: Path) -> Path:
    """tiny_shards' shards under tmp_path/data (60 train and 12 val documents of 20-59 tokens); returns tmp_path."""
    from benchmarks.corpus import random_shards

    random_shards(tmp_path / "data", (60, 12), (20, 60), shard_tokens=2000)
    return tmp_path


def manifest(**fields):
    """A manifest (core/manifest.py) of synthetic shards: `fields` over a vocabulary of 100 and two empty splits."""
    from raylm.core.manifest import Manifest

    empty = {"tokens": 0, "docs": 0, "shards": []}
    base = {"tokenizer": {"name": "t", "n_vocab": 100, "eot": 99}, "dtype": "uint16", "splits": {"train": empty, "val": empty}}
    return Manifest.model_validate({**base, **fields})


def tiny_trainer(root, **train):
    """The Trainer Ray Train drives, on tiny_shards, one CPU worker, no Ray; `train` overrides the train section."""
    import torch

    from raylm.training.config import TrainJob
    from raylm.training.worker import Trainer

    t = {"model": TINY_MODEL, "batch": {"micro_batch_size": 2, "global_batch_tokens": 64}, "max_steps": 4, "data_path": str(root / "data")}
    t["scaling"] = {"num_workers": 1, "use_gpu": False, "resources_per_worker": {"CPU": 1}}
    job = TrainJob.from_recipe({"storage_path": str(root), "name": "g", "train": {**t, **train}})
    return Trainer(job, 0, 1, torch.device("cpu"))


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    return path
