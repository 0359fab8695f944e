"""The run schema: one recipe YAML describes a whole run. Every default lives here.

Unknown keys are rejected with their dotted path and a "did you mean"; `--set a.b=c`
overrides are applied to the raw YAML before validation so they are checked the same way.
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Beta = Annotated[float, Field(ge=0, lt=1)]


# ---------------------------------------------------------------- data
class InputSpec(Strict):
    path: str  # local path, glob, or fsspec URL (s3://bucket/*.jsonl.zst)
    format: Literal["auto", "txt", "jsonl", "parquet"] = "auto"  # auto: from the extension
    text_field: str = "text"
    id_field: str | None = "id"  # absent or null: ids derived from path and line
    # a task set (fine-tuning): each record is prompt + completion, the loss counts completion tokens only
    # (shard-*.mask.npy); task records skip the quality filters, which are made for web text, not examples
    prompt_field: str | None = None
    completion_field: str | None = None

    @model_validator(mode="after")
    def _task_fields(self) -> InputSpec:
        if (self.prompt_field is None) != (self.completion_field is None):
            raise ValueError("set both prompt_field and completion_field (a prompt/completion task set), or neither")
        if self.prompt_field is not None and self.format == "txt":
            raise ValueError("prompt_field/completion_field need records: format jsonl or parquet")
        return self

    @property
    def is_task(self) -> bool:
        return self.prompt_field is not None


class NormalizeConfig(Strict):
    unicode: Literal["NFC", "NFKC"] | None = "NFC"
    strip_control: bool = True  # control characters other than \n and \t
    whitespace: bool = True  # \r\n -> \n, trailing spaces, runs of blank lines


class Range(Strict):
    enabled: bool = True
    min: float | None = Field(default=None, ge=0)
    max: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class MaxRatio(Strict):
    enabled: bool = True
    max: float = Field(ge=0)


class CleanConfig(Strict):
    """Gopher (Rae et al. 2021) / C4 style quality filters; each counted as filter:<name>."""

    enabled: bool = True
    normalize: NormalizeConfig = NormalizeConfig()
    chars: Range = Range(min=200, max=None)
    words: Range = Range(min=50, max=100_000)
    mean_word_length: Range = Range(min=3, max=10)
    symbol_ratio: MaxRatio = MaxRatio(max=0.1)  # ('#' + '...' + '…') per word
    ellipsis_lines: MaxRatio = MaxRatio(max=0.3)  # fraction of lines ending in an ellipsis
    dup_lines: MaxRatio = MaxRatio(max=0.3)  # fraction of lines that repeat an earlier line
    dup_paragraphs: MaxRatio = MaxRatio(max=0.3)  # fraction of paragraphs that repeat


class RejectConfig(Strict):
    """Input that is not a usable document at all; always on, counted as reject:<name>."""

    max_bytes: int = Field(default=10_000_000, gt=0, le=2**31)  # larger documents are rejected, not truncated


class ExactConfig(Strict):
    enabled: bool = True


class MinHashConfig(Strict):
    enabled: bool = True
    threshold: float = Field(default=0.8, gt=0, lt=1)
    num_perm: int = Field(default=128, ge=8, le=1024)
    ngram: int = Field(default=5, ge=1, le=1000)
    seed: int = Field(default=0, ge=0, lt=2**32)
    # bands x rows minimize (1-w)*false-positive area + w*false-negative area of the LSH S-curve; a missed
    # pair is lost for good while a false candidate is dropped by the Jaccard confirmation, hence w > 0.5
    false_negative_weight: float = Field(default=0.9, gt=0, lt=1)
    bands: int | None = Field(default=None, ge=1)  # null: chosen from threshold, num_perm and the weight above
    rows: int | None = Field(default=None, ge=1)
    max_bucket_pairs: int = Field(default=64, ge=2, le=1_000_000)  # larger buckets emit a star+chain instead of all pairs

    @model_validator(mode="after")
    def _bands_rows(self) -> MinHashConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


class DedupConfig(Strict):
    exact: ExactConfig = ExactConfig()
    minhash: MinHashConfig = MinHashConfig()
    partitions: int = Field(default=8, ge=1, le=100_000)  # hash partitions of every shuffle step (scale with corpus)


class TrainTokenizer(Strict):
    vocab_size: int = Field(ge=260, le=1_000_000)
    max_docs: int | None = Field(default=None, ge=1)  # train on at most this many kept docs (null: all)


class TokenizerConfig(Strict):
    name: str | None = "cl100k_base"
    path: str | None = None
    train: TrainTokenizer | None = None

    @model_validator(mode="before")
    @classmethod
    def _one_source(cls, v: Any) -> Any:
        if isinstance(v, dict) and ("path" in v or "train" in v) and "name" not in v:
            v = {**v, "name": None}
        return v

    @model_validator(mode="after")
    def _check(self) -> TokenizerConfig:
        given = [k for k in ("name", "path", "train") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of name, path, train (got {given or 'none'})")
        return self


class OutputConfig(Strict):
    shard_tokens: int = Field(default=100_000_000, gt=0)
    val_fraction: float = Field(default=0.01, ge=0, lt=1)
    seed: int = Field(default=0, ge=0, lt=2**64)  # xxhash seed of the train/val split


class ExecutionConfig(Strict):
    batch_docs: int = Field(default=4096, gt=0)  # a read block ends after this many documents
    batch_bytes: int = Field(default=8_000_000, gt=0)  # ... or this many bytes (also Ray Data's block size)
    workers: int | None = Field(default=None, ge=1)  # document-processing actors (null: one per CPU)


class DataConfig(Strict):
    inputs: list[InputSpec] = [InputSpec(path="data/sample/*.jsonl.gz", format="jsonl")]
    clean: CleanConfig = CleanConfig()
    reject: RejectConfig = RejectConfig()
    dedup: DedupConfig = DedupConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    output: OutputConfig = OutputConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @property
    def has_tasks(self) -> bool:
        """Whether any input is a prompt/completion task set (the shards then carry loss masks)."""
        return any(i.is_task for i in self.inputs)

    @model_validator(mode="after")
    def _task_tokenizer(self) -> DataConfig:
        if self.has_tasks and self.tokenizer.train is not None:
            raise ValueError(
                "tokenizer: a prompt/completion task set is tokenized with the pretrained run's tokenizer "
                "(tokenizer.path: RUN/data/tokenizer.tiktoken, or its name), not a newly trained one"
            )
        return self


# ---------------------------------------------------------------- train/tune
class MupConfig(Strict):
    """muP (Yang et al., Tensor Programs V): hyperparameters tuned at d_model = base_width transfer to wider models."""

    base_width: int = Field(gt=0)


class ModelConfig(Strict):
    n_layer: int = Field(default=4, ge=1)
    n_head: int = Field(default=4, ge=1)
    d_model: int = Field(default=256, ge=1)
    seq_len: int = Field(default=256, ge=1)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    bias: bool = False
    mup: MupConfig | None = None  # null: standard parametrization

    @model_validator(mode="after")
    def _heads(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        return self


class OptimConfig(Strict):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=1.0e-3, ge=0)  # 0 freezes the weights (a test of what init_from loaded)
    weight_decay: float = Field(default=0.1, ge=0)
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    grad_clip: float = Field(default=1.0, gt=0)  # max global gradient norm


class ScheduleConfig(Strict):
    warmup_steps: int = Field(default=100, ge=0)
    decay: Literal["cosine", "wsd", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    decay_fraction: float = Field(default=0.2, gt=0, le=1)  # wsd: the last fraction of steps decays linearly


class BatchConfig(Strict):
    micro_batch_size: int = Field(default=16, ge=1)  # sequences per worker per forward/backward
    global_batch_tokens: int = Field(default=65536, ge=1)  # tokens per optimizer step, all workers


class EvalConfig(Strict):
    every: int = Field(default=200, ge=1)  # steps between evaluations
    batches: int = Field(default=20, ge=1)


class CheckpointConfig(Strict):
    every: int = Field(default=500, ge=1)  # steps between checkpoints
    keep: int = Field(default=2, ge=1)


class ScalingConfig(Strict):
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    resources_per_worker: dict[str, Annotated[float, Field(ge=0)]] = {"CPU": 1}


class FailureConfig(Strict):
    max_failures: int = Field(default=3, ge=-1)  # -1: retry forever (Ray's FailureConfig)


class TrainConfig(Strict):
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    batch: BatchConfig = BatchConfig()
    max_steps: int = Field(default=2000, ge=1)
    seed: int = Field(default=0, ge=0, lt=2**32)
    eval: EvalConfig = EvalConfig()
    # ray.train.report at every eval and checkpoint step, and every `report_every` steps if set.
    # Not every step: Ray Train consumes one report per worker per health-check poll (2 s), and a
    # worker blocks on its next report until then (metrics.jsonl and TensorBoard get every step).
    report_every: int | None = Field(default=None, ge=1)
    checkpoint: CheckpointConfig = CheckpointConfig()
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    compile: Literal["auto", True, False] = "auto"  # auto: on GPU
    parallelism: Literal["ddp", "fsdp"] = "ddp"  # fsdp: FSDP2 fully_shard per block, for models too big for one GPU
    init_from: str | None = None  # a run dir or checkpoint: start from its weights (fresh optimizer)
    data_path: str | None = None  # shards to train on (null: this run's data/, written by `raylm data`)
    scaling: ScalingConfig = ScalingConfig()
    failure: FailureConfig = FailureConfig()


class TuneSchedulerConfig(Strict):
    type: Literal["asha", "hyperband", "pbt", "fifo"] = "asha"
    time_attr: Literal["step", "tokens"] = "step"  # a metric the loop reports
    grace_period: int | None = Field(default=None, ge=1)  # in time_attr units; null: the first evaluation (train.eval.every steps)
    reduction_factor: float = Field(default=3, gt=1)
    brackets: int = Field(default=1, ge=1)  # asha
    # pbt: every perturbation_interval (time_attr units; null: train.checkpoint.every steps) a trial in the
    # bottom quantile_fraction continues from a top trial's checkpoint with perturbed (or, with
    # resample_probability, redrawn) values. Trials checkpoint at that interval, which must be a multiple of
    # train.eval.every so that every checkpoint carries the metric.
    perturbation_interval: int | None = Field(default=None, ge=1)
    quantile_fraction: float = Field(default=0.25, gt=0, le=0.5)
    resample_probability: float = Field(default=0.25, ge=0, le=1)


class TuneSearchConfig(Strict):
    type: Literal["random", "grid", "optuna"] = "random"  # grid: only grid entries, each combination once
    seed: int = Field(default=0, ge=0, lt=2**32)


class TuneConfig(Strict):
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    num_samples: int = Field(default=8, ge=1)  # trials (with grid entries: repeats of the whole grid)
    max_concurrent_trials: int | None = Field(default=None, ge=1)  # null: cluster CPUs (GPUs) / one trial's
    time_budget_s: float | None = Field(default=None, gt=0)  # stop starting and running trials after this
    scheduler: TuneSchedulerConfig = TuneSchedulerConfig()
    search: TuneSearchConfig = TuneSearchConfig()
    param_space: dict[str, Any] = {}  # checked by tuning.space: dotted recipe key -> {loguniform|uniform|randint|choice|grid: ...}


class RayConfig(Strict):
    address: str | None = None  # null: RAY_ADDRESS, else a running `ray start`, else a local instance
    runtime_env: dict[str, Any] = {}


class RunConfig(Strict):
    name: str = "run"  # the run directory below storage_path (may contain '/', never leaves it)
    storage_path: str = "./runs"
    ray: RayConfig = RayConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()

    @field_validator("name")
    @classmethod
    def _inside_storage(cls, v: str) -> str:
        parts = v.split("/")
        if not v or v.startswith(("/", "~")) or "://" in v or "\\" in v or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"{v!r} must be a relative path below storage_path (no leading '/', '~', '..', '.' or empty parts)")
        return v

    @field_validator("name", "storage_path")
    @classmethod
    def _printable(cls, v: str) -> str:
        if any(ord(c) < 32 or ord(c) == 127 for c in v):
            raise ValueError(f"{v!r} holds a control character (newline, NUL, ...): not a usable path")
        return v

    @field_validator("storage_path")
    @classmethod
    def _no_parent_parts(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        if ".." in v.replace("\\", "/").split("/"):
            raise ValueError(f"{v!r} contains '..': give an absolute path (or one below the current directory) instead")
        return v

    @property
    def run_dir(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def data_dir(self) -> str:
        """The shards training reads: train.data_path, else the run's own data/."""
        return self.train.data_path or f"{self.run_dir}/data"


def absolute(path: str) -> str:
    """A local path made absolute (Ray workers do not share the driver's working directory); URLs as given."""
    return path if "://" in path else os.path.abspath(path)


# ---------------------------------------------------------------- loading
class ConfigError(ValueError):
    """A recipe problem the user must fix; the CLI prints it and exits 2."""


class RecipeWarning(UserWarning):
    """A recipe that works but is probably not what was meant; the CLI prints it as one line."""


def _fields_at(path: tuple, model: type[BaseModel] = RunConfig) -> list[str]:
    """Field names valid at a dotted path, for did-you-mean suggestions."""
    for part in path:
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        # unwrap Optional[...] and list[...] to the model inside
        for arg in getattr(ann, "__args__", None) or (ann,):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
                break
        else:
            if isinstance(part, int):
                continue
            return []
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith(("function-", "literal["))))
        path = ".".join(str(p) for p in loc) or "(recipe)"
        if e["type"] == "extra_forbidden":
            known = _fields_at(loc[:-1])
            near = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f" (did you mean '{'.'.join(str(p) for p in loc[:-1] + (near[0],))}'?)" if near else ""
            lines.append(f"{path}: unknown key{hint}")
        else:
            lines.append(f"{path}: {e['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value")
    key, value = item.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"--set {item!r}: bad key")
    try:
        return key.split("."), yaml.safe_load(value) if value != "" else ""
    except yaml.YAMLError as e:
        problem = (getattr(e, "problem", None) or str(e).splitlines()[0]).replace("'\\x00'", "the end")
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({problem}); quote it: --set '{key}=\"...\"'") from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            if not isinstance(node.get(k, {}), dict):
                raise ConfigError(f"--set {item!r}: '{k}' is not a section")
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    return raw


def read_recipe(path: str | Path) -> dict:
    """The recipe file as a mapping; every way it can be unusable is a ConfigError naming the file."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read recipe {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}): a recipe is a YAML file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if raw is None:
        warnings.warn(f"{path} is empty: every key takes its default (raylm validate {path} prints them)", RecipeWarning, stacklevel=2)
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the recipe must be a mapping at the top level, not a {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    raw = read_recipe(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e)) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
