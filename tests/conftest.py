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


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    return path
