import gzip
import json
import os
from pathlib import Path

import pytest
from hypothesis import settings

# property tests: deterministic in CI (derandomize), modest by default; `--hypothesis-profile=thorough` runs more
settings.register_profile("ci", max_examples=100, derandomize=True, deadline=None, print_blob=True)
settings.register_profile("thorough", max_examples=1000, deadline=None, print_blob=True)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "shakespeare.jsonl.gz"

# Ray Train's controller polls its workers every 2 s by default: each of the suite's ~40 short Ray Train runs
# would wait out a poll or two at its start and end. Every Ray the suite starts inherits this.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")


def sample_docs() -> list[dict]:
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def pytest_configure(config):
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile("ci")


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


@pytest.fixture(scope="session")
def sample_shards(ray_session, tmp_path_factory) -> str:
    """The bundled sample through the data stage of cluster/recipes/local.yaml, once for the session: the
    data/ directory that tests which train or tune (and do not test the data stage) read as train.data_path."""
    from cluster.recipe import load_config
    from pipelines.run import run_data

    cfg = load_config(ROOT / "cluster" / "recipes" / "local.yaml", [f"storage_path={tmp_path_factory.mktemp('shards')}", "name=sample"])
    run_data(cfg.data, cfg.paths, summary=False)
    return cfg.paths.data


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    return path
