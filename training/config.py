"""The `train` section of the recipe (model, optimizer, schedule, batch, evaluation, checkpoints, scaling),
and the options of the training package's commands (`raylm sample`, `raylm eval`). Every default of
training lives here. Kept apart from the code that needs torch, so that the CLI can build its parser (and
`raylm validate`, `submit`, `jobs` can run) without importing torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from raylm.core.io import absolute
from raylm.core.paths import RunPaths
from raylm.core.schema import Strict

Beta = Annotated[float, Field(ge=0, lt=1)]
# upper bounds of counts: far beyond any run, low enough that a typo (1e23) is an error, not a run that never ends
MAX_STEPS = 10**9
MAX_BATCH_TOKENS = 2**40


class MupConfig(Strict):
    """muP (Yang et al., Tensor Programs V): hyperparameters tuned at d_model = base_width transfer to wider models."""

    base_width: int = Field(gt=0, le=2**20)


# The block design each `train.model.arch` gives to the options a recipe leaves unset (null).
ARCH_DEFAULTS: dict[str, dict[str, Any]] = {
    # GPT-2 (2019): LayerNorm, learned positions, GELU MLP of 4 x d_model, head tied to the token embedding
    "gpt2": {"norm": "layernorm", "position": "learned", "mlp": "gelu", "mlp_ratio": 4.0, "mlp_multiple": 1, "tie_embeddings": True},
    # Llama: RMSNorm, rotary positions, SwiGLU MLP of 8/3 x d_model (3 matrices: the parameters of a 4x GELU MLP)
    # rounded up to a multiple of 64, untied head
    "llama": {"norm": "rmsnorm", "position": "rope", "mlp": "swiglu", "mlp_ratio": 8 / 3, "mlp_multiple": 64, "tie_embeddings": False},
}


class ModelConfig(Strict):
    """The decoder: its shape, and its block design. `arch` gives the design's defaults (ARCH_DEFAULTS); each
    option set in the recipe overrides its arch's choice."""

    arch: Literal["gpt2", "llama"] = "gpt2"
    n_layer: int = Field(default=4, ge=1, le=10_000)
    n_head: int = Field(default=4, ge=1, le=2**16)
    d_model: int = Field(default=256, ge=1, le=2**20)
    seq_len: int = Field(default=256, ge=1, le=2**24)
    dropout: float = Field(default=0.0, ge=0, lt=1)
    bias: bool = False
    mup: MupConfig | None = None  # null: standard parametrization
    # attention stops at the end-of-text token between packed documents, positions restart at each: a window
    # trains as if each document were alone (fine-tuning on short examples). A training choice, not a shape
    document_mask: bool = False
    norm: Literal["layernorm", "rmsnorm"] | None = None  # the blocks' and the final norm
    position: Literal["learned", "rope"] | None = None  # learned embeddings, or rotary (RoPE) in attention
    rope_theta: float = Field(default=10_000.0, gt=1, le=1e9)  # RoPE's base: wavelengths up to 2 pi theta
    mlp: Literal["gelu", "swiglu", "relu2"] | None = None  # relu2: ReLU squared (modded-nanogpt, nanochat)
    mlp_ratio: float | None = Field(default=None, gt=0, le=64)  # the MLP's hidden size / d_model ...
    mlp_multiple: int | None = Field(default=None, ge=1, le=2**16)  # ... rounded up to a multiple of this
    n_kv_head: int | None = Field(default=None, ge=1, le=2**16)  # grouped-query attention: heads of keys and values (null: n_head)
    qk_norm: bool = False  # RMSNorm of each head's queries and keys before attention (OLMo 2, Qwen 3, nanochat)
    tie_embeddings: bool | None = None  # the output head shares the token embedding's matrix
    logit_softcap: float | None = Field(default=None, gt=0, le=1e4)  # logits -> cap * tanh(logits / cap) (Gemma 2)

    @model_validator(mode="after")
    def _heads(self) -> ModelConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of n_head ({self.n_head})")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            raise ValueError(f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})")
        if self.resolved("position") == "rope" and (self.d_model // self.n_head) % 2:
            raise ValueError(f"rotary positions need an even head size: d_model / n_head is {self.d_model // self.n_head}")
        return self

    def resolved(self, key: str) -> Any:
        """An option's value: the recipe's, or its arch's default."""
        value = getattr(self, key)
        return ARCH_DEFAULTS[self.arch][key] if value is None else value

    def mlp_hidden(self) -> int:
        """The MLP's hidden size: mlp_ratio x d_model rounded up to a multiple of mlp_multiple."""
        multiple = self.resolved("mlp_multiple")
        return multiple * math.ceil(round(self.resolved("mlp_ratio") * self.d_model, 6) / multiple)  # 8/3 x 96 is 256, not 257


class MuonConfig(Strict):
    """torch.optim.Muon for the 2-D matrices inside the blocks when optim.name is muon (the token embedding, the
    head, norm gains and biases keep AdamW at optim.lr): momentum, then each update orthogonalized by Newton-Schulz."""

    lr: float = Field(default=0.02, ge=0, le=1e3)  # the matrices' learning rate (Keller Jordan's default)
    momentum: float = Field(default=0.95, ge=0, lt=1)
    nesterov: bool = True
    ns_steps: int = Field(default=5, ge=1, le=100)  # Newton-Schulz iterations
    weight_decay: float = Field(default=0.0, ge=0, le=1e3)  # decoupled, times the Muon lr
    # the update's scale per matrix shape: sqrt(max(1, rows/cols)) (original), or 0.2 sqrt(max(rows, cols)),
    # the RMS of an AdamW update, so AdamW's lr carries over (match_rms_adamw, Moonshot's)
    adjust_lr: Literal["original", "match_rms_adamw"] = "original"


class OptimConfig(Strict):
    name: Literal["adamw", "sgd", "muon"] = "adamw"  # muon: Muon for the hidden matrices, AdamW for the rest
    lr: float = Field(default=1.0e-3, ge=0, le=1e3)  # 0 freezes the weights (a test of what init_from loaded)
    weight_decay: float = Field(default=0.1, ge=0, le=1e3)
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    grad_clip: float = Field(default=1.0, gt=0, le=1e9)  # max global gradient norm
    muon: MuonConfig = MuonConfig()  # used when name is muon


class ScheduleConfig(Strict):
    warmup_steps: int = Field(default=100, ge=0, le=MAX_STEPS)
    decay: Literal["cosine", "wsd", "constant"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    decay_fraction: float = Field(default=0.2, gt=0, le=1)  # wsd: the last fraction of steps decays linearly


class BatchConfig(Strict):
    micro_batch_size: int = Field(default=16, ge=1, le=2**24)  # sequences per worker per forward/backward
    global_batch_tokens: int = Field(default=65536, ge=1, le=MAX_BATCH_TOKENS)  # tokens per optimizer step, all workers


class EvalConfig(Strict):
    every: int = Field(default=200, ge=1, le=MAX_STEPS)  # steps between evaluations
    batches: int = Field(default=20, ge=1, le=10**7)
    # downstream task files or directories of them (training/tasks.py), scored at every evaluation across the
    # workers: metrics tasks/<name>/acc (acc_norm, bpb) and tasks/core in metrics.jsonl
    tasks: list[str] = []
    # shards whose val split every evaluation reads (null: the training shards'): one held-out set for runs trained
    # on different data (a data ablation); tokenized with the training shards' tokenizer
    data_path: str | None = None


class CheckpointConfig(Strict):
    """Checkpoints of a training run (training/checkpoint.py): each a Ray Train checkpoint in the run's storage."""

    # `async` is a Python keyword: the field is async_, read and written as `async`
    model_config = ConfigDict(**Strict.model_config, populate_by_name=True, serialize_by_alias=True)

    every: int = Field(default=500, ge=1, le=MAX_STEPS)  # steps between checkpoints (and the last step)
    keep: int = Field(default=2, ge=1, le=10**6)  # the newest this many are kept (Ray Train's num_to_keep)
    # sharded: every rank writes its own part of the model and optimizer state in parallel
    # (torch.distributed.checkpoint), nothing gathered; full: rank 0 gathers the whole state into one state.pt
    format: Literal["sharded", "full"] = "sharded"
    # sharded only: training goes on once the state is copied to host memory, while the files are written and
    # uploaded in the background; the checkpoint is reported (and counts) only once every rank's part is written
    async_: bool = Field(default=False, alias="async")
    # async only, what training goes on with while the files are written. copy: the state copied into host
    # buffers kept for the run (pinned on GPU), training held for that copy only; in_place: no copy, the files written from
    # the live tensors while the next step's forward and backward run, its optimizer update waiting until this
    # rank's part is written (no second copy of the state in memory); auto: copy on GPU, in_place on CPU (where a
    # copy would double the host memory that holds the state already)
    staging: Literal["auto", "copy", "in_place"] = "auto"

    @model_validator(mode="after")
    def _async_sharded(self) -> CheckpointConfig:
        if self.async_ and self.format != "sharded":
            raise ValueError("train.checkpoint.async needs train.checkpoint.format: sharded (a full save gathers on rank 0 first)")
        return self


AUTO = "auto"


class ScalingConfig(Strict):
    """Ray Train's ScalingConfig. `auto` (each key's default) is resolved against the cluster when training
    starts (training/scaling.py): one worker per GPU, else one per CPU node with all its CPUs; explicit values win."""

    num_workers: Annotated[int, Field(ge=1, le=10**6)] | Literal["auto"] = AUTO
    use_gpu: bool | Literal["auto"] = AUTO
    # CPU, GPU, custom resources, and memory in bytes
    resources_per_worker: dict[str, Annotated[float, Field(ge=0, le=1e18)]] | Literal["auto"] = AUTO

    @property
    def resolved(self) -> bool:
        return AUTO not in (self.num_workers, self.use_gpu, self.resources_per_worker)


class FailureConfig(Strict):
    max_failures: int = Field(default=3, ge=-1, le=10**6)  # -1: retry forever (Ray's FailureConfig)


class MixtureStage(Strict):
    """Source weights in force until `until_step` (exclusive; null: to the end), for shards made from data.sources."""

    until_step: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    weights: dict[str, Annotated[float, Field(ge=0, le=1e6)]]


def batch_layout_error(global_tokens: int, micro: int, seq_len: int, workers: int) -> str | None:
    """Why a global batch cannot be trained exactly (None if it can): it must be a whole number of micro-steps
    of micro x seq_len tokens on every worker. Names the nearest global batches and micro-batches that fit."""
    per = micro * seq_len * workers
    if global_tokens % per == 0:
        return None
    near = sorted({max(per, global_tokens // per * per), -(-global_tokens // per) * per})
    fixes = [f"global_batch_tokens {' or '.join(f'{g:,}' for g in near)}"]
    if global_tokens % (seq_len * workers) == 0:
        seqs = global_tokens // (seq_len * workers)  # sequences per worker per step: micro must divide it
        divisors = [d for d in range(1, seqs + 1) if seqs % d == 0]
        best = min(divisors, key=lambda d: (abs(d - micro), -d))
        fixes.append(f"micro_batch_size {best} ({seqs // best} micro-step{'s' if seqs > best else ''} per step)")
    return (
        f"train.batch.global_batch_tokens: {global_tokens:,} is not a whole number of micro-steps of micro_batch_size x "
        f"model.seq_len x scaling.num_workers = {micro} x {seq_len} x {workers} = {per:,} tokens; nearest that fit: " + "; ".join(fixes)
    )


def accumulation_steps(t: TrainConfig, world: int) -> int:
    """Micro-steps per optimizer step so that one step sees exactly `global_batch_tokens` on `world` workers."""
    b = t.batch
    per = b.micro_batch_size * t.model.seq_len * world
    if b.global_batch_tokens % per:  # the layout was checked for scaling.num_workers; another world is a bug, never a rounding
        raise ValueError(batch_layout_error(b.global_batch_tokens, b.micro_batch_size, t.model.seq_len, world))
    return b.global_batch_tokens // per


def describe_batch(t: TrainConfig) -> str:
    """The step's layout in words (of a resolved train.scaling), printed as training starts."""
    s, b = t.scaling, t.batch
    where = f"{s.resources_per_worker.get('CPU', 0):g} CPU" + (" + GPU" if s.use_gpu else "")
    return (
        f"{s.num_workers} worker{'s' if s.num_workers > 1 else ''} ({where} each) x {b.micro_batch_size} sequences x "
        f"{t.model.seq_len} tokens x {accumulation_steps(t, s.num_workers)} micro-step(s) = {b.global_batch_tokens:,} tokens per step"
    )


class TrainConfig(Strict):
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    batch: BatchConfig = BatchConfig()
    max_steps: int = Field(default=2000, ge=1, le=MAX_STEPS)
    seed: int = Field(default=0, ge=0, lt=2**32)
    eval: EvalConfig = EvalConfig()
    # training stops (exit 1) after this many consecutive steps whose loss is not finite (nan, inf); no checkpoint
    # is written from weights that are not finite, so the latest checkpoint stays the last finite one
    max_nonfinite_losses: int = Field(default=3, ge=1, le=10_000)
    # ray.train.report at every eval and checkpoint step, and every `report_every` steps if set.
    # Not every step: Ray Train consumes one report per worker per health-check poll (2 s), and a
    # worker blocks on its next report until then (metrics.jsonl and TensorBoard get every step).
    report_every: int | None = Field(default=None, ge=1, le=MAX_STEPS)
    # a progress line on the driver every this many steps (auto: about 20 lines a run), read from metrics.jsonl
    log_every: Annotated[int, Field(ge=1, le=MAX_STEPS)] | Literal["auto"] = AUTO
    # where per-step metrics go besides metrics.jsonl (training/tracking.py)
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = ["tensorboard"]
    # sampling weights of the shards' sources, as a schedule (null: the weights the data stage recorded); a
    # source of weight 0 is evaluation-only (training/mixture.py)
    mixture: list[MixtureStage] | None = None
    checkpoint: CheckpointConfig = CheckpointConfig()
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    compile: Literal["auto", True, False] = "auto"  # auto: on GPU
    parallelism: Literal["ddp", "fsdp"] = "ddp"  # fsdp: FSDP2 fully_shard per block, for models too big for one GPU
    init_from: str | None = None  # a run dir or checkpoint: start from its weights (fresh optimizer)
    data_path: str | None = None  # shards to train on (null: this run's data/, written by `raylm data`)
    scaling: ScalingConfig = ScalingConfig()
    failure: FailureConfig = FailureConfig()

    @model_validator(mode="after")
    def _mixture_order(self) -> TrainConfig:
        m = self.mixture or []
        ends = [x.until_step for x in m]
        if None in ends[:-1] or any(a >= b for a, b in zip(ends, ends[1:]) if b is not None):
            raise ValueError("train.mixture: until_step must rise from stage to stage; only the last may be null (to the end)")
        if any(sum(x.weights.values()) <= 0 for x in m):
            raise ValueError("train.mixture: every stage needs a weight above 0")
        return self

    @model_validator(mode="after")
    def _muon_layout(self) -> TrainConfig:
        if self.optim.name == "muon" and self.parallelism == "fsdp":
            raise ValueError(
                "train.optim.name: muon orthogonalizes whole matrices, which train.parallelism: fsdp shards across "
                "workers: use train.parallelism: ddp (each worker holds every matrix whole)"
            )
        return self

    @model_validator(mode="after")
    def _unique_loggers(self) -> TrainConfig:
        if len(set(self.loggers)) != len(self.loggers):
            raise ValueError(f"train.loggers: {self.loggers} names a logger twice")
        return self

    @model_validator(mode="after")
    def _exact_batch(self) -> TrainConfig:
        # the step trains on exactly the tokens asked for: a recipe ported from nanoGPT keeps its batch. With
        # num_workers auto, checked once the cluster is known (training/scaling.py: resolve_job)
        if self.scaling.num_workers != AUTO:
            why = batch_layout_error(self.batch.global_batch_tokens, self.batch.micro_batch_size, self.model.seq_len, self.scaling.num_workers)
            if why:
                raise ValueError(why)
        return self


def log_interval(t: TrainConfig) -> int:
    """Steps between progress lines: train.log_every, or about 20 lines over the run."""
    return t.log_every if t.log_every != AUTO else max(1, round(t.max_steps / 20))


@dataclass(frozen=True)
class TrainJob:
    """What training needs of a recipe: its own section, the run's paths, and the whole resolved recipe
    (JSON), which every checkpoint keeps as the record of what produced it."""

    train: TrainConfig
    paths: RunPaths
    recipe: dict[str, Any]

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any]) -> TrainJob:
        train = TrainConfig.model_validate(recipe.get("train") or {})
        return TrainJob(train, RunPaths(recipe["storage_path"], recipe["name"], train.data_path), recipe)

    def with_train(self, **values: Any) -> TrainJob:
        """The job with these train keys set, in its section and its recipe alike, to values already checked
        (the caller's: they are not validated again)."""
        train = self.train.model_copy(update=values)
        dumped = {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in values.items()}
        recipe = {**self.recipe, "train": {**(self.recipe.get("train") or {}), **dumped}}
        return TrainJob(train, RunPaths(recipe["storage_path"], recipe["name"], train.data_path), recipe)

    def absolute(self) -> TrainJob:
        """Local paths made absolute: Ray workers do not share the driver's working directory."""
        job = TrainJob(self.train, self.paths, {**self.recipe, "storage_path": absolute(self.paths.storage_path)})
        paths = {k: absolute(v) for k in ("data_path", "init_from") if (v := getattr(self.train, k))}
        ev = self.train.eval
        if ev.tasks or ev.data_path:
            paths["eval"] = ev.model_copy(update={"tasks": [absolute(p) for p in ev.tasks], "data_path": ev.data_path and absolute(ev.data_path)})
        return job.with_train(**paths)


@dataclass
class SampleOptions:
    """`raylm sample`: generation from a checkpoint."""

    prompt: str = "\n"
    max_new_tokens: int = 200
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = 200  # sample among the k likeliest tokens (None: all)
    seed: int = 0
    num_samples: int = 1


@dataclass
class EvalOptions:
    """`raylm eval`: LM and task metrics on a split or a file."""

    checkpoint: str | None = None  # run dir or checkpoint dir; None: the recipe's run
    split: str = "val"
    file: str | None = None  # a .txt (perplexity) or a prompt/completion .jsonl instead of a split
    max_windows: int | None = None  # LM metrics on at most this many windows (evenly spread); None: all
    max_examples: int = 1000  # task metrics on the first N examples
    max_labels: int = 50  # completions count as labels (accuracy, macro-F1) when there are at most this many distinct
    max_new_tokens: int = 64  # generation cap (also bounded by the longest reference + 2)
    device: str = "cpu"
