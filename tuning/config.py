"""The `tune` section of the recipe: the search campaign (`raylm tune`). Every default of tuning lives here."""

from __future__ import annotations

from typing import Any, Literal, Protocol

from pydantic import Field, model_validator

from raylm.core.paths import RunPaths
from raylm.core.schema import Strict
from raylm.training.config import MAX_BATCH_TOKENS, MAX_STEPS, TrainConfig

# in time_attr units: steps, or tokens
_MAX_TIME = MAX_STEPS * MAX_BATCH_TOKENS


class TuneSchedulerConfig(Strict):
    type: Literal["asha", "hyperband", "pbt", "fifo"] = "asha"
    time_attr: Literal["step", "tokens"] = "step"  # a metric the loop reports
    grace_period: int | None = Field(default=None, ge=1, le=_MAX_TIME)  # in time_attr units; null: the first evaluation (train.eval.every steps)
    reduction_factor: float = Field(default=3, gt=1, le=1000)
    brackets: int = Field(default=1, ge=1, le=100)  # asha
    # pbt: every perturbation_interval (time_attr units; null: train.checkpoint.every steps) a trial in the
    # bottom quantile_fraction continues from a top trial's checkpoint with perturbed (or, with
    # resample_probability, redrawn) values. Trials checkpoint at that interval, which must be a multiple of
    # train.eval.every so that every checkpoint carries the metric.
    perturbation_interval: int | None = Field(default=None, ge=1, le=_MAX_TIME)
    quantile_fraction: float = Field(default=0.25, gt=0, le=0.5)
    resample_probability: float = Field(default=0.25, ge=0, le=1)
    # pbt: true waits for every live trial at each perturbation (each is paused, then continues from its
    # checkpoint): exploits do not depend on which trial runs faster, at one restart per trial per interval
    synch: bool = False


class TuneSearchConfig(Strict):
    type: Literal["random", "grid", "optuna"] = "random"  # grid: only grid entries, each combination once
    seed: int = Field(default=0, ge=0, lt=2**32)


class TuneConfig(Strict):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    # trials; with grid entries, repeats of the whole grid (Tune's meaning), so unset it is then 1: each grid point once
    num_samples: int = Field(default=8, ge=1, le=10**6)
    max_concurrent_trials: int | None = Field(default=None, ge=1, le=10**6)  # null: cluster CPUs (GPUs) / one trial's
    time_budget_s: float | None = Field(default=None, gt=0, le=1e9)  # ~30 years  # stop starting and running trials after this
    scheduler: TuneSchedulerConfig = TuneSchedulerConfig()
    search: TuneSearchConfig = TuneSearchConfig()
    param_space: dict[str, Any] = {}  # checked by tuning.space: dotted recipe key -> {loguniform|uniform|randint|choice|grid: ...}

    @model_validator(mode="after")
    def _grid_once(self) -> TuneConfig:
        # the default of 8 is for random draws; a grid repeated 8 times is never what an unset key meant
        if "num_samples" not in self.model_fields_set and any(isinstance(v, dict) and "grid" in v for v in self.param_space.values()):
            self.num_samples = 1
        return self


class Recipe(Protocol):
    """What tuning needs of a composed recipe (cluster.recipe.RunConfig is one): a campaign searches over
    any of its keys, so trials are validated against the recipe's own type (`type(cfg)`)."""

    name: str
    storage_path: str
    train: TrainConfig
    tune: TuneConfig

    @property
    def paths(self) -> RunPaths: ...

    def model_dump(self, **kwargs: Any) -> dict[str, Any]: ...
