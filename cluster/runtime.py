"""Connecting to Ray the way the recipe says: `ray.address`, else RAY_ADDRESS, else a running
`ray start` on this machine, else a fresh local instance."""
from __future__ import annotations

import logging
import os

import ray

from cluster.config import RayConfig


def init_ray(cfg: RayConfig) -> None:
    if ray.is_initialized():
        return
    kwargs = dict(runtime_env=cfg.runtime_env or None, log_to_driver=True, logging_level=logging.WARNING)
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kwargs)
        return
    try:
        ray.init(address="auto", **kwargs)
    except (ConnectionError, RuntimeError, ValueError):
        # the dashboard (on 127.0.0.1 only) serves the State API that Ray Train's controller queries
        ray.init(dashboard_host="127.0.0.1", **kwargs)
