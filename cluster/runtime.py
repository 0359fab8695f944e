"""Connecting to Ray the way the recipe says.

A run joins a cluster only when told to: `ray.address` in the recipe (`auto` for a `ray start` on this
machine), or RAY_ADDRESS (which Ray Jobs sets for every job's driver). Otherwise it starts a local instance
of its own, never one it found running: that may be another raylm process's short-lived instance, whose end
would kill this run's actors. The first line of output says which it did.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from raylm.cluster.recipe import RayConfig
from raylm.core.progress import verbose


def _say(msg: str) -> None:
    print(f"[raylm] {msg}", flush=True)


def quiet_ray_logs() -> None:
    """Keep Ray's internal INFO and WARNING lines (Ray Data's execution plans and progress log, Ray's token
    setup notice, ...) off the console, leaving its ERROR lines and every log file as they are; a no-op
    under --verbose. Ray Data configures its loggers when it is imported, so that comes first."""
    if verbose():
        return
    import ray.data  # noqa: F401 - configures the "ray.data" loggers, which this then quiets

    loggers = [logging.getLogger(n) for n in ("ray", *logging.root.manager.loggerDict) if n == "ray" or n.startswith("ray.")]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False  # raylm prints its own progress
    _drop_worker_pool_notice()


def _drop_worker_pool_notice() -> None:
    """The raylet's notice that it started more Python workers than 4x the node's CPUs reaches the driver's
    console from its error channel, which log_to_driver does not govern. On a small machine every Tune trial
    (its trainable, Ray Train's controller, the workers: zero-CPU actors, as Ray designs them) counts, so a
    2-trial campaign on 2 cores trips it. It stays in the raylet's log; every other message on that channel
    (a worker killed, out of memory, ...) still prints."""
    import ray._private.worker as rw

    show = getattr(rw, "print_to_stdstream", None)
    if show is None or getattr(show, "raylm_filtered", False):
        return

    def filtered(data: dict, ignore_prefix: bool) -> None:
        if data.get("pid") == "raylet" and all("worker processes have been started" in ln for ln in data.get("lines") or [""]):
            return
        show(data, ignore_prefix)

    filtered.raylm_filtered = True
    rw.print_to_stdstream = filtered


def _interrupt(signum, frame) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    else:  # SIGINT ignored (a process started in the background by a non-interactive shell inherits that) or not Python's
        raise KeyboardInterrupt


def sigterm_as_interrupt() -> None:
    """SIGTERM (what Kubernetes, Slurm and `timeout` send) handled as Ctrl-C, by whatever handles SIGINT at that
    moment: Python's KeyboardInterrupt (run.json "interrupted", exit 1), Ray Train's graceful abort of the run,
    Ray Tune's end of the campaign with its state saved; a KeyboardInterrupt where SIGINT has no Python handler,
    as when the process started with SIGINT ignored. Installed again once Ray is up: its core worker puts its
    own SIGTERM handler in place, which prints C++ stack lines and ends the process as failed."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def ray_target(cfg: RayConfig) -> str | None:
    """The address to join, or None for a local instance of this process's own."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def init_ray(cfg: RayConfig, say: Callable[[str], None] = _say, dashboard: bool = True) -> None:
    """Connect this process to the recipe's Ray, once; `raylm validate`, `submit` and `jobs` never call it.
    `dashboard`: a local instance serves the State API (Ray Train's controller queries it); a command that
    runs no Ray Train (`raylm data`) starts without it, a few processes fewer to start on a small machine."""
    import ray  # here, not at the top: the commands that never start Ray do not pay for importing it

    if ray.is_initialized():
        return
    quiet_ray_logs()
    # the workers' output (Ray's C++ log lines from its own actors among it) stays in the session's log
    # files unless --verbose; a worker's error still reaches the driver as the exception it raised
    kwargs = dict(runtime_env=cfg.runtime_env or None, log_to_driver=verbose(), logging_level=logging.WARNING)
    address = ray_target(cfg)
    if address:
        where = "ray.address in the recipe" if cfg.address else "RAY_ADDRESS"
        ray.init(address=address, **kwargs)
        sigterm_as_interrupt()
        say(f"ray: joined the cluster at {ray.get_runtime_context().gcs_address} ({where}={address}): {_cpus()} CPUs")
        return
    # "local" starts a new instance even when another runs on this machine (None or "auto" would join it). The
    # dashboard (on 127.0.0.1 only) serves the State API that Ray Train's controller queries. Ray Train's
    # preemption watcher (an actor per run, polling for nodes being drained) has nothing to watch on one
    # machine: a process fewer per run and per trial, set before the instance starts so its workers inherit it.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    ray.init(address="local", include_dashboard=dashboard, dashboard_host="127.0.0.1", **kwargs)
    sigterm_as_interrupt()
    say(
        f"ray: started a local instance for this run at {ray.get_runtime_context().gcs_address}: {_cpus()} CPUs "
        "(to join a cluster instead: ray.address in the recipe, `auto` for a local `ray start`, or RAY_ADDRESS)"
    )


def _cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 0))
