"""train.scaling auto, resolved from the cluster's nodes (no Ray: a pure function of their resources)."""

import pytest

from raylm.cluster.recipe import load_config
from raylm.core.schema import ConfigError
from raylm.training.config import ScalingConfig, describe_batch
from raylm.training.scaling import resolve_job, resolve_scaling
from tests.conftest import ROOT

RECIPE = ROOT / "cluster" / "recipes" / "local.yaml"
AUTO = ScalingConfig()


def test_auto_is_one_worker_per_cpu_node_with_all_its_cpus():
    assert resolve_scaling(AUTO, [{"CPU": 2.0, "memory": 1e9}]) == ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 2})
    # a head without CPUs holds no worker; nodes of different sizes: the smallest one's CPUs, so each fits
    nodes = [{"CPU": 0.0}, {"CPU": 16.0}, {"CPU": 8.0}]
    assert resolve_scaling(AUTO, nodes) == ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 8})


def test_auto_is_one_worker_per_gpu():
    nodes = [{"CPU": 8.0}, {"CPU": 32.0, "GPU": 4.0}, {"CPU": 16.0, "GPU": 4.0}]
    assert resolve_scaling(AUTO, nodes) == ScalingConfig(num_workers=8, use_gpu=True, resources_per_worker={"GPU": 1, "CPU": 4})


def test_explicit_values_win():
    nodes = [{"CPU": 4.0}]
    assert resolve_scaling(ScalingConfig(num_workers=2), nodes).resources_per_worker == {"CPU": 2}  # the node's CPUs split
    assert resolve_scaling(ScalingConfig(num_workers=3, resources_per_worker={"CPU": 1}), nodes).num_workers == 3
    s = resolve_scaling(ScalingConfig(use_gpu=False), [{"CPU": 8.0, "GPU": 1.0}])
    assert not s.use_gpu and s.num_workers == 1 and s.resources_per_worker == {"CPU": 8}
    explicit = ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1})
    assert explicit.resolved and resolve_scaling(explicit, nodes) == explicit


def test_the_resolved_layout_must_divide_the_global_batch():
    auto = "train.scaling={num_workers: auto, use_gpu: auto, resources_per_worker: auto}"
    job = load_config(RECIPE, [auto, "train.batch={micro_batch_size: 16, global_batch_tokens: 4096}"]).train_job()  # 16 x 256 = 4,096 on one worker
    one = resolve_job(job, [{"CPU": 2.0}])
    assert one.train.scaling.num_workers == 1 and one.recipe["train"]["scaling"]["resources_per_worker"] == {"CPU": 2}
    assert describe_batch(one.train) == "1 worker (2 CPU each) x 16 sequences x 256 tokens x 1 micro-step(s) = 4,096 tokens per step"
    with pytest.raises(ConfigError, match=r"16 x 256 x 2 = 8,192 tokens.*num_workers auto: 2 on this cluster"):
        resolve_job(job, [{"CPU": 2.0}, {"CPU": 2.0}])
