"""The two contracts of the data stage (datatrove's PipelineStep is the model for both).

A `Stage` is one step of a run (read, process, dedup, tokenize, write; the list is `pipelines.run.STAGES`):
it reads what `reads` names in the run's data/ directory, writes what `writes` names, hands the next stage
what it made through the `DataRun`, and records its own counts and seconds in a `Stats` (stats.json:
`stages.<name>`). A `Step` is one per-document step inside the processing tasks (the list is
`pipelines.process.STEPS`): it sees a `Chunk` of documents, may rewrite their text, drop some with a
reason, or fill the per-document columns it declares in `columns` (datatrove's `Document.metadata` is the
model), and is timed under its name. A new stage or step is one module and one entry in its list: the staging
files, docs.parquet and stats.json take a step's columns and counts from the step table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from raylm.core.paths import WORK
from raylm.pipelines.config import DataConfig
from raylm.pipelines.stats import Stats

if TYPE_CHECKING:
    import pyarrow.dataset as pads

    from raylm.core.tokenizer import TokenizerSpec


@dataclass
class DataRun:
    """What the stages of one run share: the recipe's data section, the run's data/ directory, and what
    each stage leaves for the next (the attributes below, named by the stage that sets them)."""

    data: DataConfig
    root: str  # {storage_path}/{name}/data
    say: Callable[[str], None] = print
    tokenizer: TokenizerSpec | None = None  # the recipe's; the tokenize stage sets it when it trains one
    files: list = field(default_factory=list)  # read: the input files (pipelines.read.SourceFile)
    records: Any = None  # read: the input records, a lazy Ray Dataset (streamed into process, never materialized)
    staging: list[dict] = field(default_factory=list)  # process: one row per staging file (path, first_uid, last_uid, rows), in uid order
    processing: tuple[float, float] | None = None  # process: when the first block began and the last ended (time.time())
    tokenizing: tuple[float, float] | None = None  # tokenize: when the first file's task began and the last ended (time.time())
    dups: pads.Dataset | None = None  # dedup: uid -> reason, kept_id of every duplicate
    outputs: dict = field(default_factory=dict)  # write: splits, removed counts, docs_in, bytes_in
    assets: dict[str, str] = field(default_factory=dict)  # classifier: files the steps load, by name (Step.assets)
    quality: dict = field(default_factory=dict)  # classifier, select: each scorer's model and threshold, for the manifest
    scorer: Any = None  # the perplexity stage's actor class (pipelines/perplexity.py: DocScorer), given by the caller

    @property
    def docs_dir(self) -> str:
        return f"{self.root}/{WORK}/docs"

    @property
    def dups_dir(self) -> str:
        return f"{self.root}/{WORK}/dups"

    @property
    def source_starts(self) -> tuple[int, ...]:
        """The first file index of each source (read numbers files source after source): uid >> 32 -> source."""
        firsts: dict[int, int] = {}
        for f in self.files:
            firsts.setdefault(f.source, f.index)
        return tuple(firsts[k] for k in sorted(firsts)) or (0,)

    @property
    def trains_tokenizer(self) -> bool:
        return self.data.tokenizer.train is not None

    @property
    def workers(self) -> int:
        """Tasks at a time in the stage's Ray Data steps: data.execution.workers, else one per CPU of the cluster."""
        import ray

        return self.data.execution.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))


class Stage:
    """One step of a run over the whole corpus."""

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ()  # paths under data/ (globs), or what the recipe names
    writes: ClassVar[tuple[str, ...]] = ()  # paths under data/ (globs) this stage leaves behind

    def enabled(self, run: DataRun) -> bool:
        return True

    def run(self, run: DataRun, stats: Stats) -> None:
        raise NotImplementedError


@dataclass
class Block:
    """One block of input rows as the processing task sees it: the columns steps read, and what they fill in."""

    ids: list[str]
    prompt_chars: list[int | None]  # task records: the prompt's length in characters; else None
    status: list[str]  # "kept", or why the row was removed (reject:..., filter:...)
    hashes: np.ndarray  # uint64: exact-dedup hash of the cleaned text
    split: np.ndarray  # int8: SPLIT_TRAIN or SPLIT_VAL
    sig: np.ndarray | None  # (rows, num_perm) uint32 MinHash signatures, when near-dup is on
    urls: list = field(default_factory=list)  # web input: each record's URL; else None
    payloads: list = field(default_factory=list)  # web pages: the HTTP payload (bytes) the extract step reads; else None
    charsets: list = field(default_factory=list)  # ... and the charset of its Content-Type header
    kept: list[int] = field(default_factory=list)  # rows that passed every step, in order
    texts: list[str] = field(default_factory=list)  # per kept row: its cleaned text (the tokenize stage encodes it)
    text_bytes: list[int] = field(default_factory=list)  # per kept row: UTF-8 bytes of its cleaned text
    meta: dict[str, list] = field(default_factory=dict)  # the steps' declared columns (Step.columns): name -> a value per row, else None


@dataclass
class Chunk:
    """A few hundred documents of a block moving through the steps: the live rows and their current text."""

    block: Block
    rows: list[int]
    texts: list[str]
    words: list[list[str]] | None = None  # whitespace words, once a step has split them (shared by the filters and MinHash)

    def is_task(self, k: int) -> bool:
        return self.block.prompt_chars[self.rows[k]] is not None

    def set(self, column: str, k: int, value: Any) -> None:
        """Sets live document k's value in a column its step declares (Step.columns)."""
        values = self.block.meta.get(column)
        if values is None:  # not setdefault: its default, a list as long as the block, would be built on every call
            values = self.block.meta[column] = [None] * len(self.block.ids)
        values[self.rows[k]] = value

    def drop(self, verdicts: list[str | None]) -> None:
        """Removes the live documents whose verdict is a reason (None keeps one), recording the reason."""
        if not any(verdicts):
            return
        keep = [k for k, why in enumerate(verdicts) if why is None]
        for k, why in enumerate(verdicts):
            if why is not None:
                self.block.status[self.rows[k]] = why
        self.rows = [self.rows[k] for k in keep]
        self.texts = [self.texts[k] for k in keep]
        if self.words is not None:
            self.words = [self.words[k] for k in keep]


_BUILT: dict[tuple, Any] = {}


def built_once(cls: type, *args: Any) -> Any:
    """`cls(*args)`, built once per worker process and kept while the same arguments come back: a Ray Data
    task reuses what an earlier task on its worker built (steps, encoders, models), as an actor would,
    while read, process, dedup and write share the same warm workers. One object at a time: a new
    stage's arguments replace the last one."""
    key = (cls.__qualname__, *(a.model_dump_json() if hasattr(a, "model_dump_json") else repr(a) for a in args))
    if key not in _BUILT:
        _BUILT.clear()
        _BUILT[key] = cls(*args)
    return _BUILT[key]


def settle(refs: list) -> None:
    """After one of a stage's tasks failed: cancel the others and collect their outcomes. Each error left
    uncollected would print as Ray's "Unhandled error" with its traceback when dropped (a full disk fails
    every task): the stage's one failure is reported once, by the error its caller raises."""
    import ray

    for r in refs:
        ray.cancel(r)  # a finished task: nothing to cancel
    for r in refs:
        try:
            ray.get(r)
        except Exception:  # noqa: BLE001, S110 - the outcome is collected to be dropped: the first error is the one raised
            pass


def gather(refs: list) -> list:
    """Every task's result, in order; when one failed, the others cancelled and collected (settle) before its
    error is raised."""
    import ray

    try:
        return ray.get(refs)
    except BaseException:
        settle(refs)
        raise


@dataclass(frozen=True)
class Column:
    """A per-document column a step adds: in every staging file (null where the step did not run or left a row
    unset), and, with `docs`, in docs.parquet for every kept document, after the columns every run has."""

    name: str
    type: pa.DataType
    docs: bool = True  # False: staging only, for the write stage's own use (decontaminate's match: removed.parquet's kept_id)
    removed: bool = False  # True: in removed.parquet too, for removed documents (the score that removed one)


def columns_of(steps) -> tuple[Column, ...]:
    """The columns the steps declare, in step order (whether a recipe enables the step or not, so that a
    table's columns do not depend on the recipe)."""
    out: dict[str, Column] = {}
    for s in steps:
        for c in s.columns:
            if c.name in out:
                raise ValueError(f"step {s.name!r} declares column {c.name!r}, which another step declares too")
            out[c.name] = c
    return tuple(out.values())


def schema_of(fields: list[tuple[str, pa.DataType]]) -> pa.Schema:
    """A table's schema, its names unique: a step may not declare a column the table has already."""
    names = [n for n, _ in fields]
    if len(set(names)) < len(names):
        raise ValueError(f"a step declares a column the table has already: {sorted({n for n in names if names.count(n) > 1})}")
    return pa.schema(fields)


class Step:
    """A per-document step (built once per worker process; `enabled` leaves it out of a recipe that does not use it)."""

    name: ClassVar[str]
    columns: ClassVar[tuple[Column, ...]] = ()  # the per-document columns it fills (chunk.set), staging and docs.parquet
    # the files the run resolved for its steps, by name (a classifier the data stage trained): set by DocProcessor
    assets: dict[str, str] = {}

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.counts: dict[str, int] = {}  # what it counted in the current block (stats.json: stages.process.counts)

    @classmethod
    def enabled(cls, cfg: DataConfig) -> bool:
        return True

    def __call__(self, chunk: Chunk) -> None:
        raise NotImplementedError
