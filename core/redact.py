"""Secrets kept out of what is recorded beyond the run's own process (run.json, MLflow params, W&B config)."""

from __future__ import annotations

REDACTED = "<redacted>"


def redacted(recipe: dict) -> dict:
    """The recipe without the values of `ray.runtime_env.env_vars` (where credentials go)."""
    env = ((recipe.get("ray") or {}).get("runtime_env") or {}).get("env_vars")
    if not env:
        return recipe
    ray_cfg = recipe["ray"]
    return {**recipe, "ray": {**ray_cfg, "runtime_env": {**ray_cfg["runtime_env"], "env_vars": dict.fromkeys(env, REDACTED)}}}
