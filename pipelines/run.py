"""The data stage built from a recipe: STAGES, in order, each reading and writing the run's data/ directory.

  classifier  data.quality.fasttext's classifier: trained into quality/ (or the user's model file)
  read      the recipe's inputs as a stream of records (lazy: it flows into process)
  process   every record through the per-document steps (pipelines/process.py: STEPS) -> staging files
  dedup     which documents are exact or near duplicates of which -> _work/dups
  paragraphs  data.dedup.paragraph: units repeated across documents removed from all but the first (staging rewritten)
  perplexity  data.quality.perplexity: each document's bits per byte under a raylm checkpoint (staging rewritten)
  select    keep_fraction of a quality score over the corpus (pipelines/select.py) -> _work/dups/quality-*
  tokenize  the documents that survive dedup -> tokens (after training a BPE on them, when `tokenizer.train` is set)
  write     shards (.npy) and removed.parquet; then the manifest, last and atomically, and stats.json

A run directory without a manifest is unfinished: it is wiped and redone, and because every stage
is a pure function of the input and recipe, the result is byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import fsspec

from raylm.core.changes import changes
from raylm.core.io import exists, makedirs, rm_tree, touch, write_json
from raylm.core.manifest import FORMAT, VERSION, Manifest, has_manifest, read_manifest, write_manifest
from raylm.core.paths import REMOVED, REMOVED_PLOT, STAGE_MARKER, STATS, TOKENIZER, WORK, RunPaths
from raylm.core.schema import ConfigError
from raylm.core.tokenizer import describe
from raylm.pipelines.config import DataConfig
from raylm.pipelines.dedup import Dedup
from raylm.pipelines.paragraphs import Paragraphs
from raylm.pipelines.perplexity import DocScorer, Perplexity
from raylm.pipelines.process import Process
from raylm.pipelines.quality import TrainClassifier
from raylm.pipelines.read import Read
from raylm.pipelines.rundir import RunConflict, holds_other_run
from raylm.pipelines.select import Select
from raylm.pipelines.stage import DataRun, Stage
from raylm.pipelines.staging import SKIP
from raylm.pipelines.stats import Stats
from raylm.pipelines.tokenize import Tokenize
from raylm.pipelines.tokenizers import spec_from_config
from raylm.pipelines.write import Write

STAGES: tuple[Stage, ...] = (TrainClassifier(), Read(), Process(), Dedup(), Paragraphs(), Perplexity(), Select(), Tokenize(), Write())


def _say(msg: str) -> None:
    print(f"[raylm data] {msg}", flush=True)


class DataStageError(RuntimeError):
    """The stage ran but produced nothing usable (every document removed): the CLI exits 1 with this message."""


# data keys a finished data stage may be reused under: how its output is computed (workers, block sizes), and a
# source's weight, which training reads (as it reads train.mixture); any other change asks for other shards
RERUN_SAFE = ("data.execution", "data.sources.*.weight")


def changed_keys(finished: dict, wanted: dict, schema: type[DataConfig] = DataConfig) -> list[str]:
    """Dotted data.* keys whose value differs between a finished run's config and the recipe's (core/changes.py)."""
    # a dump holds one of inputs and sources: a finished run's config lacking `inputs` read its sources
    defaults = {k: v for k, v in schema().model_dump(mode="json").items() if k != "inputs"}
    return list(changes(finished, wanted, "data", RERUN_SAFE, defaults))


def _reuse_finished(data: DataConfig, root: str, say: Callable[[str], None]) -> Manifest:
    """The finished run's manifest, if it was made by this recipe's data section; else a ConfigError."""
    man = read_manifest(root)
    diff = changed_keys(man.config or {}, data.model_dump(mode="json")) if man.config is not None else []
    if diff:
        shown = ", ".join(diff[:6]) + (f" and {len(diff) - 6} more" if len(diff) > 6 else "")
        raise ConfigError(
            f"{root} was built by a different data section ({shown} changed); rebuild it with --force, "
            f"or give this recipe a new name (--set name=...)"
        )
    say(f"{root} is complete (manifest.json present, same data section); nothing to do. Use --force to rebuild.")
    return man


def _start(root: str, say: Callable[[str], None]) -> None:
    """A clean work directory; an unfinished run's leftovers are wiped (every stage is redone from the inputs),
    but only a directory this stage made, holding no other run."""
    if exists(root):  # run_data has checked that it may be removed
        say(f"{root} has no manifest: an unfinished run; starting it again from scratch")
        rm_tree(root)
    makedirs(f"{root}/{WORK}/docs")
    touch(f"{root}/{STAGE_MARKER}")


def check_removable(root: str) -> None:
    """RunConflict unless `root` is a data directory raylm's data stage made (its marker, or the work directory
    of a run from before the marker) that holds no other run."""
    other = holds_other_run(root)
    if other is not None:
        raise RunConflict(f"{root} holds the run {other!r}: raylm will not remove it; give this recipe another name")
    fs, path = fsspec.core.url_to_fs(root)
    made = has_manifest(root) or any(fs.exists(f"{path}/{f}") for f in (STAGE_MARKER, WORK))  # the marker, or a run from before it
    if fs.isdir(path) and fs.ls(path) and not made:
        raise RunConflict(
            f"{root} has no manifest and was not made by raylm's data stage (no {STAGE_MARKER} or {WORK}/ in it): raylm removes "
            "only what it made; move it away or give this recipe another name"
        )


def run_stages(run: DataRun, stages: tuple[Stage, ...] = STAGES) -> dict[str, Stats]:
    """Each enabled stage in order, timed; returns every stage's stats, by name."""
    out = {}
    for stage in stages:
        if not stage.enabled(run):
            continue
        stats = out[stage.name] = Stats()
        with stats.timer("total"):
            stage.run(run, stats)
        run.say(f"{stage.name}: done in {stats.seconds['total']:.1f}s")
    return out


def _manifest(run: DataRun) -> Manifest:
    o, data = run.outputs, run.data
    splits, removed, skipped, docs_in = o["splits"], o["removed"], o["skipped"], o["docs_in"]
    docs_kept = splits["train"]["docs"] + splits["val"]["docs"]
    if docs_in != docs_kept + sum(removed.values()):  # a bug, never an input problem
        raise AssertionError(f"conservation violated: {docs_in} in, {docs_kept} kept, {dict(removed)} removed")
    man = {
        "format": FORMAT,
        "version": VERSION,
        # a trained tokenizer is the run's own file: named relative to data/, so the manifest is the same wherever the run is
        "tokenizer": {**describe(run.tokenizer, o["enc"]), **({"path": TOKENIZER} if run.trains_tokenizer else {})},
        "dtype": o["dtype"].name,
        **({"loss_mask": True} if data.has_tasks else {}),  # shard-*.mask.npy beside every shard
        "splits": splits,
        # data.sources: each source's weight (training's default) and its own counts; its shards: splits.<split>.sources
        **({"sources": o["sources"]} if "sources" in o else {}),
        "stats": {
            "records_in": docs_in + sum(skipped.values()),  # every input record: documents_in + skipped
            "skipped": dict(sorted(skipped.items())),  # records that are no documents (web input: requests, redirects, images)
            "docs_in": docs_in,
            "docs_kept": docs_kept,
            "removed": dict(sorted(removed.items())),
            "bytes_in": o["bytes_in"],
            "tokens": splits["train"]["tokens"] + splits["val"]["tokens"],
        },
        **({"quality": run.quality} if run.quality else {}),
        "config": data.model_dump(mode="json"),
    }
    return Manifest.model_validate(man)


def _fixed_costs(run: DataRun, started: float) -> dict[str, float]:
    """What the stage costs besides its per-document work (processing blocks, tokenizing files): from its start
    (Ray already up) to the first block's processing (Ray Data planning, the workers' start and imports), from
    the last block processed to the first file tokenized (dedup; training a tokenizer when the recipe does), and
    from the last file tokenized to now (writing shards and tables)."""
    if run.processing is None or run.tokenizing is None:
        return {}
    (first, last), (tok_first, tok_last) = run.processing, run.tokenizing
    return {
        "to_first_block": round(first - started, 3),
        "process_to_tokenize": round(tok_first - last, 3),
        "after_last_block": round(time.time() - tok_last, 3),
    }


def _write_stats(root: str, stages: dict[str, Stats], total: float, docs_in: int, bytes_in: int, fixed: dict[str, float]) -> dict:
    """stats.json: wall seconds by stage, the fixed costs, each stage's own counts and seconds, and the rates."""
    stats = {
        "seconds": {**{name: round(st.seconds["total"], 3) for name, st in stages.items()}, "total": round(total, 3)},
        "fixed_seconds": fixed,
        "stages": {name: st.as_dict() for name, st in stages.items()},
        "mb_per_s": round(bytes_in / 1e6 / max(total, 1e-9), 3),
        "docs_per_s": round(docs_in / max(total, 1e-9), 1),
    }
    write_json(f"{root}/{STATS}", stats)
    return stats


def run_data(
    data: DataConfig,
    paths: RunPaths,
    force: bool = False,
    say: Callable[[str], None] = _say,
    summary: bool = True,
    work: Callable[[], AbstractContextManager] = nullcontext,
    scorer: type[DocScorer] | None = None,
) -> Manifest:
    """raw text -> shards + manifest + removed.parquet + stats.json in paths.data. Returns the manifest: a finished
    run's, when it was made by this data section (ConfigError when by another), unless `force`. `work`: what the
    stage runs inside when there is work to do (the CLI starts Ray and records the run there), entered only then.
    Runs on the Ray instance this process is connected to (cluster.runtime.init_ray), else a new local one.
    `scorer`: the perplexity stage's model (training/docscore.py's PerplexityScorer: the data stage does not
    import training/), needed with data.quality.perplexity."""
    if has_manifest(paths.data) and not force:
        return _reuse_finished(data, paths.data, say)
    if exists(paths.data):  # refused before `work` starts Ray: the stage would remove it
        check_removable(paths.data)
    if data.quality.perplexity.checkpoint is not None and scorer is None:
        raise ConfigError(
            "data.quality.perplexity needs a model to score with: run it through raylm's CLI, or pass "
            "run_data(..., scorer=raylm.training.docscore.PerplexityScorer)"
        )
    with work():
        return _build(data, paths.data, say, summary, scorer)


def _build(data: DataConfig, root: str, say: Callable[[str], None], summary: bool, scorer: type[DocScorer] | None = None) -> Manifest:
    """Every stage from the inputs, in a clean `root`; the manifest last."""
    t_start, started = time.perf_counter(), time.time()
    tok = None if data.tokenizer.train is not None else spec_from_config(data.tokenizer)  # a bad name fails before any work
    _start(root, say)
    run = DataRun(data, root, say, tokenizer=tok, scorer=scorer)
    stages = run_stages(run)
    manifest = _manifest(run)
    rm_tree(f"{root}/{WORK}")
    stats = _write_stats(root, stages, time.perf_counter() - t_start, run.outputs["docs_in"], run.outputs["bytes_in"], _fixed_costs(run, started))
    if manifest.stats.docs_kept == 0:  # no manifest: nothing to train on is a failed stage, not a finished one
        removed, docs_in = manifest.stats.removed, manifest.stats.docs_in
        reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(removed.items(), key=lambda x: -x[1])) or "no input records"
        raise DataStageError(f"no document kept of {docs_in:,} read ({reasons}); each one is listed with its file and line in {root}/{REMOVED}")
    write_manifest(root, manifest)
    _plot_removed(manifest, root)
    if summary:
        print_summary(manifest, stats, root)
    return manifest


def _plot_removed(manifest: Manifest, root: str) -> None:
    """removed.png, from the manifest alone (no run name, no time): the same bytes on every rerun, like the shards."""
    from raylm.core.plots import plot_removed

    st, sp = manifest.stats, manifest.splits
    kept = sp["train"].bytes + (sp["val"].bytes or 0) if sp["train"].bytes is not None else None
    plot_removed(st, {"in": st.bytes_in, "kept": kept}, f"{root}/{REMOVED_PLOT}", "documents by outcome")


def print_summary(manifest: Manifest, stats: dict, root: str) -> None:
    from rich.console import Console
    from rich.table import Table

    st = manifest.stats
    t = Table(show_header=True)
    t.add_column("what")
    t.add_column("documents", justify="right")
    t.add_column("share", justify="right")
    n = max(st.docs_in, 1)
    if st.skipped:  # web input: records that are no documents, before the documents' own accounting
        t.add_row("records in", f"{st.records_in:,}", "")
        for reason, c in st.skipped.items():
            t.add_row(f"skipped: {reason.removeprefix(SKIP)}", f"{c:,}", "")
    t.add_row("in", f"{st.docs_in:,}", "100%")
    t.add_row("kept", f"{st.docs_kept:,}", f"{100 * st.docs_kept / n:.1f}%")
    for reason, c in st.removed.items():
        t.add_row(f"removed: {reason}", f"{c:,}", f"{100 * c / n:.1f}%")
    con = Console()
    con.print(f"raylm data: {root}", soft_wrap=True)  # a path is copied, not read: never wrapped
    con.print(t)
    sp, tok = manifest.splits, manifest.tokenizer
    con.print(
        f"tokens: train {sp['train'].tokens:,} in {len(sp['train'].shards)} shard(s), val {sp['val'].tokens:,}; "
        f"tokenizer {tok.name} (n_vocab {tok.n_vocab:,}, {manifest.dtype}); "
        f"{st.bytes_in / 1e6:.1f} MB in {stats['seconds']['total']:.1f}s = {stats['mb_per_s']:.2f} MB/s, "
        f"{stats['docs_per_s']:,.0f} docs/s",
        soft_wrap=True,
    )
    for name, src in (manifest.sources or {}).items():
        val = sp["val"].sources[name].tokens
        con.print(
            f"source {name} (weight {src.weight:g}): {src.docs_kept:,} of {src.docs_in:,} documents kept, "
            f"train {src.tokens - val:,} / val {val:,} tokens",
            soft_wrap=True,
        )
