"""`train.scaling` resolved against the cluster when training starts: `auto` (the default of each key) means one
worker per GPU when the cluster has GPUs, else one worker per CPU node taking all of that node's CPUs as intra-op
threads (DDP between processes on one CPU box only splits the same cores); what the recipe sets explicitly wins.
A pure function of the nodes' resources (`resolve_scaling`), so it is tested without Ray."""

from __future__ import annotations

from raylm.core.schema import ConfigError
from raylm.training.config import AUTO, ScalingConfig, TrainJob, batch_layout_error


def resolve_scaling(s: ScalingConfig, nodes: list[dict[str, float]]) -> ScalingConfig:
    """`s` with every `auto` replaced, for a cluster of `nodes` (each node's resources: {"CPU": .., "GPU": ..})."""
    gpus = [n.get("GPU", 0.0) for n in nodes if n.get("GPU", 0.0) >= 1]
    cpus = [n.get("CPU", 0.0) for n in nodes if n.get("CPU", 0.0) >= 1]
    use_gpu = bool(gpus) if s.use_gpu == AUTO else s.use_gpu
    if use_gpu:
        workers = int(sum(gpus)) if s.num_workers == AUTO else s.num_workers
        # the CPUs beside each GPU go with its worker (loader, host work), on the node poorest in them
        per_gpu = min((n.get("CPU", 0.0) // n["GPU"] for n in nodes if n.get("GPU", 0.0) >= 1), default=1)
        res = {"GPU": 1, "CPU": max(1, int(per_gpu))} if s.resources_per_worker == AUTO else s.resources_per_worker
    else:
        workers = max(1, len(cpus)) if s.num_workers == AUTO else s.num_workers
        if s.resources_per_worker != AUTO:
            res = s.resources_per_worker
        elif s.num_workers == AUTO:
            res = {"CPU": max(1, int(min(cpus, default=1)))}  # one worker a node: all of the smallest node's CPUs
        else:  # the recipe's worker count: the cluster's CPUs split among them, within one node
            res = {"CPU": max(1, min(int(sum(cpus)) // workers, int(min(cpus, default=1))))}
    return ScalingConfig(num_workers=workers, use_gpu=use_gpu, resources_per_worker=res)


def cluster_nodes() -> list[dict[str, float]]:
    """The resources of the alive nodes of the Ray cluster this process is connected to."""
    import ray

    return [n["Resources"] for n in ray.nodes() if n.get("Alive")]


def resolve_job(job: TrainJob, nodes: list[dict[str, float]] | None = None) -> TrainJob:
    """The job with train.scaling resolved (for the cluster this process is connected to, unless `nodes` are
    given): what the workers and every checkpoint's recipe then carry. ConfigError (exit 2) when the global
    batch does not divide among the workers found."""
    s = job.train.scaling
    if s.resolved:
        return job
    r = resolve_scaling(s, cluster_nodes() if nodes is None else nodes)
    b, t = job.train.batch, job.train
    why = batch_layout_error(b.global_batch_tokens, b.micro_batch_size, t.model.seq_len, r.num_workers)
    if why:
        raise ConfigError(f"{why} (train.scaling.num_workers auto: {r.num_workers} on this cluster)")
    return job.with_train(scaling=r)
