"""`raylm submit` and `raylm jobs`: the same recipe on a Ray cluster, through the Ray Jobs API.

The job runs `python -m raylm COMMAND submitted.yaml ...` in a copy of this project (the runtime_env
`working_dir`, without runs, virtualenvs, caches and data other than the bundled sample), with raylm's
dependencies from its package metadata as the runtime_env `pip` list (`--no-deps` when the cluster's image
already has them, as the cluster/ray and cluster/k8s configs do). The recipe travels resolved (`--set`
applied) in the job's environment and is written to submitted.yaml in the job's directory.

Clusters started from cluster/ray or cluster/k8s require a token (RAY_AUTH_MODE=token): `raylm submit`
sends it as an Authorization header, read from RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else
~/.ray/auth_token. It is never printed and never written into the run.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
from pathlib import Path

import yaml

from raylm.cluster.recipe import ConfigError, RunConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPE_ENV = "RAYLM_RECIPE"
RECIPE_FILE = "submitted.yaml"
# gitignore syntax, last match wins: the sample corpus ships, other data does not
EXCLUDES = [".git", ".venv", "venv", "env", "runs", "bench-out", "build", "**/__pycache__", "*.egg-info", ".pytest_cache"]
EXCLUDES += [
    "data/*",
    "!data/sample",
    "!data/downstream",
    "!data/quality",
]  # the sample, its downstream tasks (local.yaml's) and label files (ablation.yaml's) travel
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
DEFAULT_ADDRESS = "http://127.0.0.1:8265"
SCHEMES = ("http", "https", "ray")


class JobError(ValueError):
    """A cluster address or job id the user gave that names nothing usable: the CLI prints it and exits 2."""


def auth_token() -> str | None:
    """The cluster's token, where Ray keeps it: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def _target(address: str | None) -> tuple[str, str]:
    """The address Ray's job client will use, and where it came from: Ray's environment variables win over
    the address passed to it (ray.dashboard.utils.get_address_for_submission_client)."""
    for var in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        if os.environ.get(var):
            return os.environ[var], var
    return (address, "--address") if address else (DEFAULT_ADDRESS, "the default address")


def client(address: str | None):
    from ray.job_submission import JobSubmissionClient

    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    target, source = _target(address)
    bad = f"{source} {target!r} is not a Ray cluster address (the dashboard's, http://HEAD:8265)"
    if "://" in target and target.split("://", 1)[0] not in SCHEMES:
        raise JobError(f"{bad}: the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}")
    try:
        return JobSubmissionClient(target, headers=headers)
    except ValueError as e:  # Ray cannot parse it (an invalid format, a URL that is none: requests' InvalidURL)
        raise JobError(f"{bad}: {e}") from None


def _require_job(c, job_id: str):
    """The job's info; an id the cluster does not know is the user's mistake (exit 2), not a failure."""
    try:
        return c.get_job_info(job_id)
    except RuntimeError as e:  # Ray's job client reports every HTTP error so: "Request failed with status code 404: ..."
        if "status code 404" in str(e):
            raise JobError(f"no job {job_id!r} at {c.get_address()} (`raylm submit` prints a job's id)") from None
        raise


def dependencies() -> list[str]:
    """raylm's runtime requirements, as pyproject.toml lists them."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(ROOT / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f)["project"]["dependencies"])


def check_storage(cfg: RunConfig) -> None:
    """A job's working directory is temporary and per node: the run must live on shared storage."""
    sp = cfg.storage_path
    if "://" not in sp and not os.path.isabs(sp):
        raise ConfigError(
            f"storage_path: {sp!r} is relative: on a cluster it would land in the job's temporary "
            "working directory; use an absolute path on shared storage (NFS) or an fsspec URL (s3://, gs://)"
        )


def job_spec(cfg: RunConfig, command: list[str], deps: bool = True) -> dict:
    """submit_job's arguments: the entrypoint and the runtime_env."""
    cmd = command or ["run"]
    recipe = cfg.model_dump(mode="json")
    env = dict(recipe["ray"]["runtime_env"])  # the recipe's runtime_env is the job's (the driver inherits it)
    recipe["ray"]["runtime_env"] = {}
    env_vars = {**env.pop("env_vars", {}), RECIPE_ENV: yaml.safe_dump(recipe, sort_keys=False)}
    runtime_env = {"working_dir": str(ROOT), "excludes": EXCLUDES + list(env.pop("excludes", [])), "env_vars": env_vars, **env}
    if deps:
        runtime_env["pip"] = sorted(set(dependencies()) | set(env.get("pip", [])))
    args = " ".join(shlex.quote(a) for a in cmd[1:])
    entrypoint = f"printenv {RECIPE_ENV} > {RECIPE_FILE} && python -m raylm {shlex.quote(cmd[0])} {RECIPE_FILE}" + (f" {args}" if args else "")
    return {"entrypoint": entrypoint, "runtime_env": runtime_env, "metadata": {"raylm_run": cfg.name}}


def submit(cfg: RunConfig, address: str | None, command: list[str], wait: bool = True, deps: bool = True) -> int:
    check_storage(cfg)
    c = client(address)
    spec = job_spec(cfg, command, deps)
    deadline = time.time() + 60
    while True:
        try:
            job_id = c.submit_job(**spec)
            break
        except RuntimeError as e:  # a cluster just started: its head's job agent comes up a few seconds after the API
            if "No available agent" not in str(e) or time.time() > deadline:
                raise
            time.sleep(2)
    print(f"raylm: submitted job {job_id} to {c.get_address()}", flush=True)
    if not wait:
        print(f"raylm: follow it with `raylm jobs logs {job_id} --follow`; stop it with `raylm jobs stop {job_id}`")
        return 0
    return follow(c, job_id)


def follow(c, job_id: str) -> int:
    """Stream the job's logs until it ends; exit 0 if it succeeded, 1 otherwise."""

    async def tail() -> None:
        async for lines in c.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        print(f"\nraylm: detached; job {job_id} goes on (`raylm jobs stop {job_id}` stops it)", file=sys.stderr)
        return 1
    status = _status(c, job_id)
    while status not in TERMINAL:  # the log stream can end a moment before the status does
        time.sleep(0.5)
        status = _status(c, job_id)
    print(f"raylm: job {job_id} {status}", file=sys.stderr)
    return 0 if status == "SUCCEEDED" else 1


def _status(c, job_id: str) -> str:
    status = c.get_job_status(job_id)
    return str(getattr(status, "value", status))


def jobs(action: str, job_id: str, address: str | None, follow_logs: bool = False) -> int:
    c = client(address)
    info = _require_job(c, job_id)
    if action == "status":
        print(f"{job_id}: {getattr(info.status, 'value', info.status)}" + (f" ({info.message})" if info.message else ""))
        return 0
    if action == "logs":
        if follow_logs:
            return follow(c, job_id)
        print(c.get_job_logs(job_id), end="")
        return 0
    stopped = c.stop_job(job_id)
    print(f"raylm: {'stopping' if stopped else 'not running:'} job {job_id}")
    return 0
