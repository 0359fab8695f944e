"""The run directory, defined once: every path under `{storage_path}/{name}/` (a local path or a URL).

    {name}/data/        manifest.json (core/manifest.py), shard-*.npy (+ .idx.npy, .mask.npy), removed.parquet, stats.json, removed.png,
                        tokenizer.tiktoken (a trained or file tokenizer); _work/ while the stage runs
    {name}/train/       Ray Train's run: checkpoint_*/ (dcp/ or state.pt, trainer.pt, rng-*.pt, meta.json), metrics.jsonl,
                        tensorboard/, loss.png
    {name}/eval/        <what>@<run>-step<N>.json from `raylm eval`
    {name}/tune/        Ray Tune's experiment; trials/<trial_id>/ is each trial's own run directory

Each stage directory also holds run.json (cluster/provenance.py). docs/run-directory.md describes each file.
"""

from __future__ import annotations

from dataclasses import dataclass

# file names at a run's root (pipelines/rundir.py): whose run it is, and each stage's lock
RUN_MARKER = ".raylm-run"

# file names inside a data directory (the run's data/, or any train.data_path)
REMOVED = "removed.parquet"
DOCS = "docs.parquet"  # every kept document: where it is in the shards, where it came from
STATS = "stats.json"
REMOVED_PLOT = "removed.png"  # documents removed by reason, and bytes kept, drawn from the manifest
TOKENIZER = "tokenizer.tiktoken"
WORK = "_work"
STAGE_MARKER = ".raylm-data"  # in a data directory the data stage made: the only kind it ever removes
# file names inside train/
METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
LOSS_PLOT = "loss.png"


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run. `data_path` is `train.data_path`: shards made by another run, when set."""

    storage_path: str
    name: str
    data_path: str | None = None

    @classmethod
    def of(cls, recipe) -> RunPaths:
        """From a composed recipe (anything with storage_path, name and train.data_path)."""
        return cls(recipe.storage_path, recipe.name, recipe.train.data_path)

    @classmethod
    def at(cls, root: str) -> RunPaths:
        """The paths of the run whose directory is `root` (as a checkpoint's meta.json names it)."""
        storage, _, name = root.rstrip("/").rpartition("/")
        return cls(storage, name)

    @property
    def root(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def data(self) -> str:
        """What `raylm data` writes."""
        return f"{self.root}/data"

    @property
    def shards(self) -> str:
        """What training, tuning and evaluation read: train.data_path, else this run's data/."""
        return self.data_path or self.data

    @property
    def train_name(self) -> str:
        """Ray Train's run name (RunConfig.name, below storage_path)."""
        return f"{self.name}/train"

    @property
    def train(self) -> str:
        return f"{self.root}/train"

    @property
    def metrics(self) -> str:
        return f"{self.train}/{METRICS}"

    @property
    def tensorboard(self) -> str:
        return f"{self.train}/{TENSORBOARD}"

    @property
    def loss_plot(self) -> str:
        return f"{self.train}/{LOSS_PLOT}"

    @property
    def eval(self) -> str:
        return f"{self.root}/eval"

    @property
    def tune_name(self) -> str:
        """Ray Tune's experiment name (below storage_path)."""
        return f"{self.name}/tune"

    @property
    def tune(self) -> str:
        return f"{self.root}/tune"

    def trial(self, trial_id: str) -> RunPaths:
        """A trial's own run directory inside the campaign (it reads this run's shards)."""
        return RunPaths(self.storage_path, f"{self.tune_name}/trials/{trial_id}", self.shards)
