"""The cluster YAMLs (cluster/ray: `ray up` configs, cluster/k8s: KubeRay manifests) and what `raylm submit`
sends: Ray's own config validation, token auth on every node, no public dashboard; the job spec. No Ray cluster."""

import copy
from pathlib import Path

import pytest
import yaml

from raylm.cluster.recipe import load_config
from raylm.cluster.submit import EXCLUDES, RECIPE_ENV, check_storage, job_spec
from raylm.core.schema import ConfigError
from tests.conftest import ROOT

RAY_UP = sorted((ROOT / "cluster" / "ray").glob("*.yaml"))
K8S = sorted((ROOT / "cluster" / "k8s").glob("*.yaml"))


def _validate(cfg: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` runs on the file


def test_there_are_configs_for_aws_gcp_onprem_and_kuberay():
    assert {p.stem for p in RAY_UP} == {"aws", "gcp", "onprem"}
    assert {p.stem for p in K8S} == {"raycluster", "rayjob"}


@pytest.mark.parametrize("path", RAY_UP, ids=lambda p: p.name)
def test_ray_up_configs_pass_rays_validation_with_token_auth(path: Path):
    cfg = yaml.safe_load(path.read_text())
    _validate(cfg)
    head, workers = cfg["head_start_ray_commands"], cfg["worker_start_ray_commands"]
    for cmds in (head, workers):
        starts = [c for c in cmds if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts)
    assert all("--dashboard-host=127.0.0.1" in c for c in head if "ray start" in c)
    assert "~/.ray/auth_token" in cfg["file_mounts"]  # the token is copied, not typed into a command
    assert any("pip install" in c and "-e" in c for c in cfg["setup_commands"])  # installs the project
    # ... into ~/raylm/.venv, and Ray starts with it activated: a job's `python` is the raylet's PATH's
    assert any("python3 -m venv .venv" in c and ".venv/bin/pip install" in c for c in cfg["setup_commands"])
    assert all(c.startswith("source ~/raylm/.venv/bin/activate && ") for c in head + workers), head + workers
    if cfg["provider"]["type"] != "local":
        gpu = [t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]]
        assert gpu, "a GPU worker group"


def test_validation_rejects_a_broken_config():
    cfg = yaml.safe_load((ROOT / "cluster" / "ray" / "aws.yaml").read_text())
    cfg["head_start_ray_comands"] = cfg.pop("head_start_ray_commands")
    with pytest.raises(Exception, match="head_start_ray_comands"):
        _validate(cfg)


def _containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


@pytest.mark.parametrize("path", K8S, ids=lambda p: p.name)
def test_kuberay_manifests_have_required_fields_and_token_auth(path: Path):
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    if doc["kind"] == "RayJob":
        assert doc["spec"]["entrypoint"].startswith("python -m raylm ")
        assert doc["spec"]["shutdownAfterJobFinishes"] is True
    else:
        assert doc["kind"] == "RayCluster"
    assert spec["rayVersion"] and isinstance(spec["headGroupSpec"]["rayStartParams"], dict)
    assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"  # no LoadBalancer / NodePort
    for g in spec["workerGroupSpecs"]:
        assert g["groupName"] and isinstance(g["rayStartParams"], dict)
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    containers = _containers(spec)
    if doc["kind"] == "RayJob":
        containers += doc["spec"]["submitterPodTemplate"]["spec"]["containers"]
    for c in containers:
        assert c["image"] and c["name"]
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]  # from a Secret, not inline
    assert any(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") for c in _containers(spec))


def _cfg(*more):
    return load_config(ROOT / "cluster" / "recipes" / "local.yaml", ["storage_path=/shared/raylm", *more])


def test_job_spec_ships_the_resolved_recipe_and_the_project():
    cfg = _cfg("train.max_steps=7", "ray.runtime_env={env_vars: {HF_HOME: /tmp/hf}}")
    spec = job_spec(cfg, ["tune", "--resume"])
    env = spec["runtime_env"]
    assert spec["entrypoint"].endswith("python -m raylm tune submitted.yaml --resume")
    assert env["working_dir"] == str(ROOT) and env["excludes"] == EXCLUDES
    shipped = yaml.safe_load(env["env_vars"][RECIPE_ENV])
    assert shipped["train"]["max_steps"] == 7 and shipped["storage_path"] == "/shared/raylm"
    assert shipped["ray"]["runtime_env"] == {} and env["env_vars"]["HF_HOME"] == "/tmp/hf"
    assert any(d.startswith("torch") for d in env["pip"]) and any(d.startswith("ray[") for d in env["pip"])
    assert "pip" not in job_spec(cfg, [], deps=False)["runtime_env"]
    assert job_spec(cfg, [])["entrypoint"].endswith("python -m raylm run submitted.yaml")


def test_excludes_ship_the_sample_and_its_tasks_but_not_runs_or_other_data():
    from ray._private.runtime_env.packaging import _get_excludes  # what Ray applies when it packs working_dir

    excluded = _get_excludes(ROOT, list(EXCLUDES))
    assert not excluded(ROOT / "data/sample/shakespeare.jsonl.gz") and not excluded(ROOT / "training/model.py")
    assert not excluded(ROOT / "data/downstream")  # local.yaml's train.eval.tasks (Ray skips an excluded directory whole)
    assert not excluded(ROOT / "data/quality")  # ablation.yaml's label files
    assert all(excluded(ROOT / p) for p in ("data/crawl", "runs/x", ".venv/bin", "training/__pycache__/m.pyc"))


def test_a_relative_storage_path_cannot_be_submitted():
    with pytest.raises(ConfigError, match="relative"):
        check_storage(_cfg("storage_path=./runs"))
    check_storage(_cfg("storage_path=s3://bucket/raylm"))
