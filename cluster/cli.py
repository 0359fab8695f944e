"""The `raylm` command. Exit codes: 0 done, 2 bad config or arguments, 1 failure of the run."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from raylm.cluster.provenance import recorded, set_command
from raylm.cluster.recipe import ConfigError, RecipeWarning, RunConfig, dump_config, load_config
from raylm.cluster.runtime import init_ray, sigterm_as_interrupt
from raylm.core.paths import LOSS_PLOT
from raylm.core.progress import LOG_ENV, verbose
from raylm.training.config import EvalOptions, SampleOptions, describe_batch

# the commands that take a recipe, which `raylm submit RECIPE -- COMMAND` can run on a cluster
RECIPE_COMMANDS = ("validate", "data", "train", "tune", "run", "eval")


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML (see cluster/recipes/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe key, e.g. --set data.dedup.minhash.threshold=0.7 (repeatable)",
    )


@dataclass(frozen=True)
class Command:
    """One `raylm` subcommand: its help line, its own options, and the function that runs it."""

    help: str
    run: Callable[[argparse.Namespace], int]
    options: Callable[[argparse.ArgumentParser], None] = lambda p: None
    recipe: bool = True  # takes RECIPE and --set


def _force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="rebuild the data even if complete")


def _run_options(p: argparse.ArgumentParser) -> None:
    _force(p)
    p.add_argument("--prompt", default="ROMEO:", help="prompt of the sample printed at the end")


def _tune_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue an interrupted campaign (finished trials are kept)")
    _force(p)


def _address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, help="the cluster's dashboard, http://HEAD:8265 (default: RAY_ADDRESS)")


def _submit_options(p: argparse.ArgumentParser) -> None:
    _address(p)
    p.add_argument("--no-wait", action="store_true", help="print the job id and return (default: follow the logs)")
    p.add_argument(
        "--no-deps",
        action="store_true",
        help="do not pip-install raylm's dependencies in the job (the cluster's image has them, as cluster/ray and cluster/k8s set up)",
    )
    p.epilog = "After --: the raylm command to run there, with its options (default: run), e.g. -- tune --resume"


def _jobs_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["status", "logs", "stop"])
    p.add_argument("job_id")
    _address(p)
    p.add_argument("--follow", action="store_true", help="logs: stream until the job ends")


def _eval_options(p: argparse.ArgumentParser) -> None:
    d = EvalOptions()
    p.add_argument("--checkpoint", default=None, help="a run directory or checkpoint (default: the recipe's run)")
    p.add_argument("--split", default=d.split, choices=["val", "train"])
    p.add_argument("--file", default=None, help="a .txt file (perplexity) or a prompt/completion .jsonl, instead of a split")
    p.add_argument("--max-windows", type=int, default=d.max_windows, help="LM metrics on at most N windows (default: all)")
    p.add_argument("--max-examples", type=int, default=d.max_examples, help="task metrics on the first N examples")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=None,
        metavar="FILE_OR_DIR",
        help="downstream tasks instead: task files (.jsonl: multiple choice or cloze) or directories of them -> eval/tasks.json",
    )
    p.add_argument("--device", default=d.device)
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="--tasks on N Ray Data actors, each holding the model (one CPU each; one GPU each with --device cuda); 0: in this process",
    )


def _export_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument(
        "--format",
        choices=["hf", "safetensors"],
        default="hf",
        help="hf: a transformers model directory (config.json, model.safetensors, tokenizer.json); safetensors: raylm's own "
        "tensors, config.json and tokenizer.tiktoken (raylm.training.export.load_safetensors)",
    )
    p.add_argument("out", metavar="OUT_DIR")
    p.add_argument("--force", action="store_true", help="replace an earlier raylm export in OUT_DIR (never any other directory)")


def _sample_options(p: argparse.ArgumentParser) -> None:
    d = SampleOptions()
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--prompt", default="\n", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature, help="0: greedy")
    p.add_argument("--top-k", type=int, default=d.top_k, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--num-samples", type=int, default=d.num_samples)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="raylm", description="LLM pretraining on Ray: data, train, tune, from one YAML recipe.")
    sub = ap.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help)
        if cmd.recipe:
            _recipe_args(p)
        cmd.options(p)
        p.add_argument("-v", "--verbose", action="store_true", help=f"show Ray's own log lines and the workers' output ({LOG_ENV}=debug does too)")
    return ap


# ---------------------------------------------------------------- the commands
def _recipe(args: argparse.Namespace) -> RunConfig:
    return load_config(args.recipe, args.overrides)


def _dump(cfg: RunConfig) -> dict:
    """The resolved recipe as run.json records it (runtime_env's env_vars values left out: credentials go there)."""
    from raylm.core.redact import redacted

    return redacted(cfg.model_dump(mode="json"))


def _validate(args: argparse.Namespace) -> int:
    print(dump_config(_recipe(args)), end="")
    return 0


def _check_inputs(cfg: RunConfig) -> None:
    """A recipe pointing at nothing, or at a file that cannot be used (tokenizer, decontamination sets,
    blocklists), is a user error, before Ray starts."""
    from raylm.pipelines.read import list_files
    from raylm.pipelines.userfiles import check_data_files

    try:
        list_files(cfg.data.all_inputs)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    check_data_files(cfg.data)
    if cfg.data.quality.perplexity.checkpoint is not None:
        _check_reference_model(cfg.data)


def _check_reference_model(data) -> None:
    """data.quality.perplexity.checkpoint names a complete raylm checkpoint whose tokenizer is the data stage's
    (the same ranks, by sha256): a model that read text otherwise would score another tokenization. A
    UserFileError (exit 2) naming the key, before Ray starts."""
    from raylm.core.tokenizer import describe
    from raylm.pipelines.tokenizers import spec_from_config
    from raylm.pipelines.userfiles import UserFileError
    from raylm.training.checkpoint import META, CheckpointError, latest, read_meta

    key, path = "data.quality.perplexity.checkpoint", data.quality.perplexity.checkpoint
    try:
        meta = read_meta(f"{latest(path)}/{META}")
    except (FileNotFoundError, CheckpointError) as e:
        raise UserFileError(key, path, str(e).removeprefix(f"{path}: ")) from None
    if data.tokenizer.train is not None:
        why = f"data.tokenizer trains a new tokenizer; set data.tokenizer.path to the checkpoint's ({meta['tokenizer']}) tokenizer.tiktoken"
        raise UserFileError(key, path, why)
    spec = spec_from_config(data.tokenizer)
    if describe(spec, spec.load())["sha256"] != meta.get("tokenizer_sha256"):
        why = f"its tokenizer ({meta['tokenizer']}) is not data.tokenizer ({spec.name}): other ranks; score with a model of this data's tokenizer"
        raise UserFileError(key, path, why)


def _data_stage(cfg: RunConfig, force: bool) -> None:
    """The data stage, on the recipe's Ray (started only when there is work, unless already connected);
    the caller has checked the inputs. A finished stage's reuse leaves the run.json of the run that made it."""
    from contextlib import contextmanager

    from raylm.pipelines.run import run_data

    @contextmanager
    def work():
        init_ray(cfg.ray, dashboard=False)  # a no-op under `run` and `tune`, which connected first (with it)
        # recorded when it ends: the stage starts by wiping an unfinished data/
        with recorded(cfg.paths.data, "data", _dump(cfg), at_start=False, code_of=exit_code):
            yield

    run_data(cfg.data, cfg.paths, force=force, work=work, scorer=_scorer(cfg.data))


def _scorer(data):
    """The perplexity stage's actor class when the data section scores with a checkpoint (else None: importing it
    imports torch, which the data stage otherwise never needs)."""
    if data.quality.perplexity.checkpoint is None:
        return None
    from raylm.training.docscore import PerplexityScorer

    return PerplexityScorer


def _data_sections(cfg: RunConfig, force: bool) -> tuple[dict[str, str], list[dict]]:
    """A data ablation's sections (tuning/datasections.py), each built once (a finished one is reused: a rerun
    builds none): the trials' data directories by their data values, and what was built or reused."""
    from raylm.core.manifest import has_manifest
    from raylm.pipelines.run import run_data
    from raylm.tuning.datasections import section_dirs, sections

    found, report = sections(cfg), []
    for k, sec in enumerate(found, 1):
        done = has_manifest(sec.paths.data) and not force
        shown = ", ".join(f"{key}={v}" for key, v in sec.values.items())
        print(f"[raylm tune] data section {k}/{len(found)} ({shown}): {'reused' if done else 'building'} {sec.paths.data}", flush=True)
        if not done:
            init_ray(cfg.ray, dashboard=False)
        man = run_data(sec.data, sec.paths, force=force, summary=False, scorer=_scorer(sec.data), say=lambda m: None)
        report.append({"key": sec.key, "values": sec.values, "built": not done, "docs_kept": man.stats.docs_kept, "tokens": man.stats.tokens})
    if found:
        n = sum(r["built"] for r in report)
        print(f"[raylm tune] data sections: {len(found)}, {n} built, {len(found) - n} reused", flush=True)
    return (section_dirs(cfg) if found else {}), report


def _own_shards(cfg: RunConfig) -> bool:
    """Whether `run` and `tune` build their shards (the run's data/, from the inputs: checked here) or read another
    run's (train.data_path: preflight checks they exist, and nothing is built). train.init_from is looked up here
    too: all before Ray starts, ahead of the data stage."""
    from raylm.training.driver import init_checkpoint

    if cfg.train.init_from:
        init_checkpoint(cfg.train.init_from)
    if cfg.train.data_path is None:
        _check_inputs(cfg)
        return True
    return False


def _owned(cfg: RunConfig, *stages: str):
    """The run's directory claimed for it (no nesting with another run) and its locks for `stages` held:
    checked before Ray starts, so a conflict costs nothing."""
    from raylm.pipelines.rundir import claim, locked

    claim(cfg.storage_path, cfg.name)
    return locked(cfg.paths.root, stages, lambda m: print(f"raylm: {m}", file=sys.stderr, flush=True))


def _data(args: argparse.Namespace) -> int:
    cfg = _recipe(args)
    _check_inputs(cfg)
    with _owned(cfg, "data"):
        _data_stage(cfg, args.force)
    return 0


def _train_job(cfg: RunConfig) -> int:
    from raylm.core.io import no_space
    from raylm.training.driver import optimizer_plan, preflight, run_train, summarize
    from raylm.training.metrics import loss_text

    started = time.time()
    job = preflight(cfg.train_job(), connect=lambda: init_ray(cfg.ray))  # what can be wrong fails before Ray starts
    with recorded(cfg.paths.train, "train", _dump(cfg), code_of=exit_code) as rec:
        rec["layout"] = describe_batch(job.train)
        print(f"raylm train: {rec['layout']}, {job.train.max_steps:,} steps", flush=True)
        for line in optimizer_plan(job):
            print(f"raylm train: {line}", flush=True)
        result = run_train(job, started)
        if result.error is not None and no_space(result.error) is not None:
            raise result.error  # a full disk: the one line main() prints
        if result.error is not None:
            rec.update(exit_code=1, error=str(result.error)[:2000])
            print(f"raylm: training failed: {result.error}", file=sys.stderr)
            return 1
        s = rec["result"] = summarize(cfg.paths, started)
    bpb = f", {s['val_bpb']:.4f} bits/byte" if s.get("val_bpb") is not None else ""
    val = f", val loss {s['val_loss']:.4f} (ppl {s['val_ppl']:.1f}{bpb}) at step {s['val_step']}" if "val_loss" in s else ""
    mfu = f", MFU {s['mfu']:.1%}" if s.get("mfu") is not None else ""
    print(
        f"raylm train: {cfg.paths.train}: step {s['step']}, {s['tokens']:,} tokens, train loss {s['loss']:.4f}{val}; "
        f"{s['tokens_per_s']:,.0f} tokens/s{mfu}; loss curve train/{LOSS_PLOT}"
    )
    if s.get("val_sources"):  # a mixture: each source's val loss beside the whole split's
        per = ", ".join(f"{n} {loss_text(v['loss'], v.get('bpb'))}" for n, v in s["val_sources"].items())
        mix = s.get("val_mixture")
        weighted = f"; weighted by the mixture {loss_text(mix['loss'], mix.get('bpb'))}" if mix else ""
        print(f"raylm train: val loss by source: {per}{weighted}")
    if s.get("tasks"):
        from raylm.training.tasks import summary_lines

        for line in summary_lines(cfg.train.eval.tasks, s["tasks"]):
            print(f"raylm train: tasks at step {s['tasks_step']}: {line}")
    if "first_step_s" in s:  # what a user waits before training moves, and how long it then ran
        print(f"raylm train: first step done {s['first_step_s']:.1f}s after start (Ray, workers, model, shards); last at {s['train_s']:.1f}s")
    return 0


def _train(args: argparse.Namespace) -> int:
    cfg = _recipe(args)
    with _owned(cfg, "train"):
        return _train_job(cfg)


def _run(args: argparse.Namespace) -> int:
    """The main job: the data stage (skipped when complete), training, a sample and the bar to clear."""
    from raylm.core.manifest import read_manifest
    from raylm.training.checkpoint import load_model
    from raylm.training.data import unigram_entropy
    from raylm.training.driver import summarize
    from raylm.training.metrics import split_bpb
    from raylm.training.sample import sample

    cfg = _recipe(args)
    own = _own_shards(cfg)
    with _owned(cfg, *(("data", "train") if own else ("train",))):
        if own:
            init_ray(cfg.ray)  # whether or not the data is done: say first which Ray
            _data_stage(cfg, args.force)
        rc = _train_job(cfg)
    if rc:
        return rc
    model, enc, _, _ = load_model(cfg.paths.root)
    print(f"--- sample (prompt {args.prompt!r}) ---")
    print(sample(model, enc, SampleOptions(prompt=args.prompt))[0])
    print("---")
    s = summarize(cfg.paths)
    h = unigram_entropy(cfg.paths.shards)
    if "val_loss" in s:
        print(
            f"raylm run: val loss {s['val_loss']:.3f} nats/token vs unigram entropy {h:.3f} of the train tokens "
            f"({h - s['val_loss']:+.3f}: what the model learned beyond token frequencies)"
        )
        h_bpb = split_bpb(h, read_manifest(cfg.paths.shards), "train")
        if s.get("val_bpb") is not None and h_bpb is not None:
            print(f"raylm run: val {s['val_bpb']:.4f} bits/byte vs unigram {h_bpb:.4f} bits/byte (comparable across tokenizers)")
    return 0


def _tune(args: argparse.Namespace) -> int:
    from raylm.core.manifest import has_manifest
    from raylm.tuning.campaign import check

    cfg = _recipe(args)
    check(cfg)  # a bad search space fails before Ray starts
    own = _own_shards(cfg)
    if own and not has_manifest(cfg.paths.data):
        print(f"[raylm tune] no shards at {cfg.paths.data} yet: running the data stage first, then the campaign", flush=True)
    with _owned(cfg, *(("data", "tune") if own else ("tune",))):
        return _campaign(cfg, args, own)


def _campaign(cfg: RunConfig, args: argparse.Namespace, own: bool) -> int:
    from raylm.training.driver import preflight
    from raylm.tuning.campaign import TRIALS_HINT, run_tune
    from raylm.tuning.results import OUTCOME, best_row, collect, interrupted_summary, print_summary, write_results

    if own:
        init_ray(cfg.ray)
        _data_stage(cfg, args.force)
    dirs, built = _data_sections(cfg, args.force)
    job = preflight(cfg.train_job(), own=False, hint=TRIALS_HINT, connect=lambda: init_ray(cfg.ray))
    with recorded(cfg.paths.tune, "tune", _dump(cfg), code_of=exit_code) as rec:
        grid = run_tune(cfg, job, resume=args.resume, data_dirs=dirs or None)
        rows = collect(cfg, grid)
        print_summary(cfg, rows, write_results(cfg, rows))
        best = best_row(cfg, rows)
        rec["result"] = {"trials": len(rows), "status": dict(Counter(r["status"] for r in rows))}
        if built:
            rec["result"]["data_sections"] = built
        rec["result"]["best"] = {k: v for k, v in best.items() if k != "history"} if best else None
        rec["exit_code"] = 0 if any(r["status"] != "error" for r in rows) else 1
        if OUTCOME.interrupted:  # Tune caught the interrupt, saved its state and returned: the campaign did not finish
            print(f"raylm tune: {interrupted_summary(cfg, rows)}", file=sys.stderr)
            raise KeyboardInterrupt
    return rec["exit_code"]


def _eval(args: argparse.Namespace) -> int:
    from raylm.training.evaluate import print_results, run_eval

    cfg = _recipe(args)
    opts = EvalOptions(
        checkpoint=args.checkpoint, split=args.split, file=args.file, max_windows=args.max_windows, max_examples=args.max_examples, device=args.device
    )
    with _owned(cfg, "eval"), recorded(cfg.paths.eval, "eval", _dump(cfg), code_of=exit_code) as rec:
        if args.tasks:
            from raylm.training.tasks import eval_tasks, print_task_results

            if args.workers < 0:
                raise UsageError(f"--workers {args.workers}: give 0 (this process) or a number of Ray actors")
            connect = lambda: init_ray(cfg.ray)  # noqa: E731 - only for --workers, once the files are found
            rec["result"] = eval_tasks(args.checkpoint or cfg.paths.root, args.tasks, cfg.paths.eval, args.device, args.workers, connect)
            print_task_results(rec["result"])
            return 0
        rec["result"] = run_eval(cfg.train_job(), opts)
        print_results(rec["result"])
    return 0


def _submit(args: argparse.Namespace) -> int:
    from raylm.cluster.submit import submit

    cfg = _recipe(args)
    command = args.job_command
    if command and command[0] not in RECIPE_COMMANDS:
        raise UsageError(f"submit runs a recipe command ({', '.join(RECIPE_COMMANDS)}), not {command[0]!r}")
    return submit(cfg, args.address, command, wait=not args.no_wait, deps=not args.no_deps)


def _jobs(args: argparse.Namespace) -> int:
    from raylm.cluster.submit import jobs

    return jobs(args.action, args.job_id, args.address, args.follow)


def _runs_options(p: argparse.ArgumentParser) -> None:
    what = "a storage path (list its runs) or a run's name or directory (show it)"
    p.add_argument("target", nargs="?", default=None, metavar="STORAGE_PATH_OR_NAME", help=what)
    default = RunConfig.model_fields["storage_path"].default
    p.add_argument("--storage", default=default, help=f"where a run NAME is looked up, and what is listed without one (default {default})")


def _runs(args: argparse.Namespace) -> int:
    from raylm.cluster.runs import show

    return show(args.target, args.storage)


def _sample(args: argparse.Namespace) -> int:
    from raylm.training.checkpoint import load_model
    from raylm.training.sample import sample

    model, enc, state, _ = load_model(args.path, args.device)
    opts = SampleOptions(
        prompt=args.prompt,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        seed=args.seed,
        num_samples=args.num_samples,
    )
    print(f"[raylm sample] step {state['step']} of {state['config']['name']}, tokenizer {state['tokenizer']['name']}", file=sys.stderr)
    for i, text in enumerate(sample(model, enc, opts, args.device)):
        if i:
            print("-" * 40)
        print(text)
    return 0


def _export(args: argparse.Namespace) -> int:
    from raylm.training.export import export_hf, export_safetensors

    write = export_hf if args.format == "hf" else export_safetensors
    info = write(args.path, args.out, force=args.force)
    how = (
        "transformers: AutoModelForCausalLM.from_pretrained / AutoTokenizer.from_pretrained"
        if args.format == "hf"
        else "raylm.training.export.load_safetensors, or safetensors and config.json"
    )
    print(f"raylm export: step {info['step']} of {info['run']} ({info['params']:,} parameters, vocab {info['n_vocab']:,}) -> {args.out} ({how})")
    return 0


def _quality_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["train"], help="train: fit data.quality.fasttext.train's classifier -> {run}/quality/")
    _recipe_args(p)


def _quality(args: argparse.Namespace) -> int:
    """`raylm quality train RECIPE`: the fastText classifier of data.quality.fasttext.train (pipelines/quality.py)."""
    from raylm.pipelines.quality import train_classifier

    cfg = _recipe(args)
    spec = cfg.data.quality.fasttext.train
    if spec is None:
        raise UsageError("raylm quality train: the recipe has no data.quality.fasttext.train (labels: {name: [files]})")
    out = f"{cfg.paths.root}/quality"
    with _owned(cfg, "quality"), recorded(out, "quality", _dump(cfg), code_of=exit_code) as rec:
        rep = rec["result"] = train_classifier(cfg.data.label_files(), out)
    docs = ", ".join(f"{k} {v:,}" for k, v in rep["documents"].items())
    print(f"raylm quality: {docs} documents; trained on {rep['trained_on']:,}, held out {sum(v['held_out'] for v in rep['labels'].values()):,}")
    fmt = lambda v: "n/a" if v is None else f"{v:.2%}"  # noqa: E731 - no held-out document of a label: nothing to divide
    for name, m in rep["labels"].items():
        print(f"raylm quality: {name}: precision {fmt(m['precision'])}, recall {fmt(m['recall'])} ({m['held_out']:,} held out)")
    print(f"raylm quality: held-out accuracy {fmt(rep['accuracy'])}; {rep['model']} (sha256 {rep['sha256'][:16]}...)")
    return 0


def _lm_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("lm_eval_args", nargs="*", metavar="ARGS", help="lm-eval's own arguments (raylm lm-eval --help shows them)")


def _lm_eval(args: argparse.Namespace) -> int:
    """lm-eval's command line with the `raylm` model registered (training/harness.py); its exit code."""
    try:
        from raylm.training.harness import main as harness_main
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("lm_eval"):
            raise
        raise UsageError(f"raylm lm-eval needs lm-evaluation-harness ({e.name} is not installed): pip install 'raylm[eval]'") from None
    try:
        harness_main(args.lm_eval_args)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


COMMANDS: dict[str, Command] = {
    "validate": Command("print the resolved config, or a clear error (exit 2)", _validate),
    "data": Command("raw text -> deduplicated token shards", _data, _force),
    "train": Command("shards -> checkpoints on Ray Train (resumes if the run exists)", _train),
    "run": Command("the main job: data, then train, then a sample", _run, _run_options),
    "tune": Command("hyperparameter search over tune.param_space (data first if needed; trials are Ray Train runs)", _tune, _tune_options),
    "submit": Command("run the recipe on a Ray cluster through Ray Jobs: raylm submit RECIPE --address URL -- train", _submit, _submit_options),
    "jobs": Command("a submitted job: status, logs (--follow), stop", _jobs, _jobs_options, recipe=False),
    "eval": Command(
        "loss, perplexity, next-token accuracy; task metrics (exact match, accuracy, macro-F1, BLEU) on a split or a file", _eval, _eval_options
    ),
    "quality": Command(
        "model-based data quality: raylm quality train RECIPE fits data.quality.fasttext.train's classifier", _quality, _quality_options, recipe=False
    ),
    "lm-eval": Command(
        "lm-evaluation-harness with raylm's model: raylm lm-eval --model raylm --model_args run=runs/NAME --tasks ...",
        _lm_eval,
        _lm_eval_options,
        recipe=False,
    ),
    "export": Command("a run's latest checkpoint as a transformers directory, or as safetensors", _export, _export_options, recipe=False),
    "runs": Command("the runs under a storage path (stages, steps, best val loss, when), or one run's record", _runs, _runs_options, recipe=False),
    "sample": Command("generate text from a run's latest checkpoint (or a checkpoint directory)", _sample, _sample_options, recipe=False),
}


class UsageError(ValueError):
    """Arguments that cannot work together: exit 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user fixes (exit 2): the recipe, the arguments, a path that is not what it should be."""
    from raylm.cluster.submit import JobError
    from raylm.core.manifest import ManifestError
    from raylm.core.tokenizer import TokenizerError
    from raylm.pipelines.quality import QualityError
    from raylm.pipelines.rundir import RunConflict
    from raylm.pipelines.userfiles import UserFileError
    from raylm.training.checkpoint import CheckpointError
    from raylm.training.evaluate import EvalFileError
    from raylm.training.export import ExportError
    from raylm.training.tasks import TaskFileError

    user = ConfigError, UsageError, RunConflict, JobError, TokenizerError, UserFileError, CheckpointError, ExportError, EvalFileError, ManifestError
    user = (*user, TaskFileError, QualityError)
    return (*user, FileNotFoundError, NotADirectoryError)


def exit_code(e: BaseException) -> int:
    """The exit code an exception ends a command with: 2 for what the user fixes, else 1."""
    return 2 if isinstance(e, (ConfigError, *_user_errors())) else 1


def _crash(e: BaseException) -> int:
    """An unexpected error: one line here, the traceback in a file (--verbose prints it too)."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    fd, path = tempfile.mkstemp(prefix="raylm-error-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if verbose():
        print(text, file=sys.stderr)
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if first.endswith(":") and len(lines) > 1:  # a header over a worker's traceback: its last line is the error
        first = f"{first} {lines[-1].strip()}"
    print(f"raylm: error: {type(e).__name__}{': ' + first[:500] if first else ''} (traceback in {path})", file=sys.stderr)
    return 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, RecipeWarning):
        print(f"raylm: warning: {message}", file=sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad recipe, arguments or input paths, 1 the run failed. Never a traceback."""
    ap = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    set_command(argv)
    job_command = []
    if argv[:1] == ["submit"] and "--" in argv:  # submit's own options, then the job's command line
        i = argv.index("--")
        argv, job_command = argv[:i], argv[i + 1 :]
    if argv[:1] == ["lm-eval"]:  # every argument after it is lm-eval's, options included
        args = argparse.Namespace(command="lm-eval", lm_eval_args=argv[1:], verbose=False)
    else:
        args = ap.parse_args(argv)
    args.job_command = job_command
    if args.verbose:
        os.environ[LOG_ENV] = "debug"
    warnings.showwarning = _show_warning
    sigterm_as_interrupt()
    try:
        return COMMANDS[args.command].run(args)
    except ConfigError as e:
        print(f"raylm: bad recipe:\n{e}" if "\n" in str(e) else f"raylm: bad recipe: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = "the same command with --resume" if args.command == "tune" else "the same command again"
        print(f"raylm: interrupted; run {again} to go on (finished stages are kept, training resumes)", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the one place that turns every error into a message and an exit code
        from raylm.core.io import no_space
        from raylm.pipelines.run import DataStageError
        from raylm.training.driver import TrainingDiverged

        if (where := no_space(e)) is not None:  # wherever it happened, in this process or a Ray worker
            print(f"raylm: no space left on device{f' writing {where}' if where else ''}", file=sys.stderr)
            return 1
        if isinstance(e, _user_errors()):
            print(f"raylm: {e}", file=sys.stderr)
            return 2
        if isinstance(e, DataStageError):
            print(f"raylm data: {e}", file=sys.stderr)
            return 1
        if isinstance(e, TrainingDiverged):
            print(f"raylm train: {e}", file=sys.stderr)
            return 1
        if isinstance(e, ConnectionError):  # ray.address, RAY_ADDRESS or --address that nothing answers at
            print(f"raylm: cannot reach the Ray cluster: {e}", file=sys.stderr)
            return 1
        return _crash(e)


if __name__ == "__main__":
    sys.exit(main())
