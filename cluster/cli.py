"""The `raylm` command. Exit codes: 0 done, 2 bad config or arguments, 1 failure of the run."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from cluster.config import ConfigError, RecipeWarning, RunConfig, dump_config, load_config
from training.config import EvalOptions, SampleOptions

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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="raylm", description="LLM pretraining on Ray: data, train, tune, from one YAML recipe.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="print the resolved config, or a clear error (exit 2)")
    _recipe_args(p)
    p = sub.add_parser("data", help="raw text -> deduplicated token shards")
    _recipe_args(p)
    p.add_argument("--force", action="store_true", help="rebuild even if the run's data is complete")
    p = sub.add_parser("train", help="shards -> checkpoints on Ray Train (resumes if the run exists)")
    _recipe_args(p)
    p = sub.add_parser("run", help="the main job: data, then train, then a sample")
    _recipe_args(p)
    p.add_argument("--force", action="store_true", help="rebuild the data even if complete")
    p.add_argument("--prompt", default="ROMEO:", help="prompt of the sample printed at the end")
    p = sub.add_parser("tune", help="hyperparameter search over tune.param_space (data first if needed; trials are Ray Train runs)")
    _recipe_args(p)
    p.add_argument("--resume", action="store_true", help="continue an interrupted campaign (finished trials are kept)")
    p.add_argument("--force", action="store_true", help="rebuild the data even if complete")
    p = sub.add_parser("submit", help="run the recipe on a Ray cluster through Ray Jobs: raylm submit RECIPE --address URL -- train")
    _recipe_args(p)
    p.add_argument("--address", default=None, help="the cluster's dashboard, http://HEAD:8265 (default: RAY_ADDRESS)")
    p.add_argument("--no-wait", action="store_true", help="print the job id and return (default: follow the logs)")
    p.add_argument(
        "--no-deps",
        action="store_true",
        help="do not pip-install raylm's dependencies in the job (the cluster's image has them, as cluster/ray and cluster/k8s set up)",
    )
    p.epilog = "After --: the raylm command to run there, with its options (default: run), e.g. -- tune --resume"
    p = sub.add_parser("jobs", help="a submitted job: status, logs (--follow), stop")
    p.add_argument("action", choices=["status", "logs", "stop"])
    p.add_argument("job_id")
    p.add_argument("--address", default=None, help="the cluster's dashboard, http://HEAD:8265 (default: RAY_ADDRESS)")
    p.add_argument("--follow", action="store_true", help="logs: stream until the job ends")
    p = sub.add_parser(
        "eval", help="loss, perplexity, next-token accuracy; task metrics (exact match, accuracy, macro-F1, BLEU) on a split or a file"
    )
    _recipe_args(p)
    d = EvalOptions()
    p.add_argument("--checkpoint", default=None, help="a run directory or checkpoint (default: the recipe's run)")
    p.add_argument("--split", default=d.split, choices=["val", "train"])
    p.add_argument("--file", default=None, help="a .txt file (perplexity) or a prompt/completion .jsonl, instead of a split")
    p.add_argument("--max-windows", type=int, default=d.max_windows, help="LM metrics on at most N windows (default: all)")
    p.add_argument("--max-examples", type=int, default=d.max_examples, help="task metrics on the first N examples")
    p.add_argument("--device", default=d.device)
    p = sub.add_parser("export", help="a run's latest checkpoint as a Hugging Face transformers GPT-2 directory")
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--format", choices=["hf"], default="hf", help="hf: config.json, model.safetensors, tokenizer.json")
    p.add_argument("out", metavar="OUT_DIR")
    p = sub.add_parser("sample", help="generate text from a run's latest checkpoint (or a checkpoint directory)")
    p.add_argument("path", metavar="RUN_DIR_OR_CHECKPOINT")
    _sample_args(p, prompt="\n")
    return ap


def _sample_args(p: argparse.ArgumentParser, prompt: str) -> None:
    d = SampleOptions()
    p.add_argument("--prompt", default=prompt, help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--temperature", type=float, default=d.temperature, help="0: greedy")
    p.add_argument("--top-k", type=int, default=d.top_k, help="sample among the k likeliest tokens (0: all)")
    p.add_argument("--num-samples", type=int, default=d.num_samples)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def _sample(args: argparse.Namespace) -> int:
    from training.sample import load_model, sample

    model, enc, state = load_model(args.path, args.device)
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


def _eval(cfg: RunConfig, args: argparse.Namespace) -> int:
    from training.evaluate import print_results, run_eval

    opts = EvalOptions(
        checkpoint=args.checkpoint, split=args.split, file=args.file, max_windows=args.max_windows, max_examples=args.max_examples, device=args.device
    )
    print_results(run_eval(cfg, opts))
    return 0


def _export(args: argparse.Namespace) -> int:
    from training.export import export_hf

    info = export_hf(args.path, args.out)
    print(
        f"raylm export: step {info['step']} of {info['run']} ({info['params']:,} parameters, vocab {info['n_vocab']:,}) "
        f"-> {args.out} (transformers GPT-2: GPT2LMHeadModel.from_pretrained / AutoTokenizer.from_pretrained)"
    )
    return 0


def _train(cfg: RunConfig) -> int:
    from training.trainer import run_train, summarize

    result = run_train(cfg)
    if result.error is not None:
        print(f"raylm: training failed: {result.error}", file=sys.stderr)
        return 1
    s = summarize(cfg)
    val = f", val loss {s['val_loss']:.4f} (ppl {s['val_ppl']:.1f}) at step {s['val_step']}" if "val_loss" in s else ""
    mfu = f", MFU {s['mfu']:.1%}" if s.get("mfu") is not None else ""
    print(
        f"raylm train: {cfg.run_dir}/train: step {s['step']}, {s['tokens']:,} tokens, train loss {s['loss']:.4f}{val}; "
        f"{s['tokens_per_s']:,.0f} tokens/s{mfu}; loss curve train/loss.png"
    )
    return 0


def _run(cfg: RunConfig, prompt: str) -> int:
    """data is done (or skipped as complete) by the caller; then train, sample and the bar to clear."""
    from training.data import unigram_entropy
    from training.sample import load_model, sample
    from training.trainer import summarize

    rc = _train(cfg)
    if rc:
        return rc
    model, enc, _ = load_model(cfg.run_dir)
    print(f"--- sample (prompt {prompt!r}) ---")
    print(sample(model, enc, SampleOptions(prompt=prompt))[0])
    print("---")
    s = summarize(cfg)
    h = unigram_entropy(cfg.data_dir)
    if "val_loss" in s:
        print(
            f"raylm run: val loss {s['val_loss']:.3f} nats/token vs unigram entropy {h:.3f} of the train tokens "
            f"({h - s['val_loss']:+.3f}: what the model learned beyond token frequencies)"
        )
    return 0


def _tune(cfg: RunConfig, resume: bool) -> int:
    from tuning.campaign import run_tune
    from tuning.results import collect, print_summary, write_results

    grid = run_tune(cfg, resume=resume)
    rows = collect(cfg, grid)
    print_summary(cfg, rows, write_results(cfg, rows))
    return 0 if any(r["status"] != "error" for r in rows) else 1


def _submit(cfg: RunConfig, args: argparse.Namespace) -> int:
    from cluster.submit import submit

    command = args.job_command
    if command and command[0] not in RECIPE_COMMANDS:
        raise UsageError(f"submit runs a recipe command ({', '.join(RECIPE_COMMANDS)}), not {command[0]!r}")
    return submit(cfg, args.address, command, wait=not args.no_wait, deps=not args.no_deps)


def _recipe_command(args: argparse.Namespace) -> int:
    cfg = load_config(args.recipe, args.overrides)
    if args.command == "validate":
        print(dump_config(cfg), end="")
        return 0
    if args.command == "train":
        return _train(cfg)
    if args.command == "eval":
        return _eval(cfg, args)
    if args.command == "submit":
        return _submit(cfg, args)
    if args.command == "tune":
        from tuning.campaign import check

        check(cfg)  # a bad search space fails before Ray starts
    from pipelines.run import run_data
    from pipelines.shards import has_manifest
    from pipelines.sources import list_files

    try:
        list_files(cfg.data.inputs)  # a recipe pointing at nothing is a config error, before Ray starts
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e)) from None
    if args.command == "tune" and not has_manifest(f"{cfg.run_dir}/data"):
        print(f"[raylm tune] no shards at {cfg.run_dir}/data yet: running the data stage first, then the campaign", flush=True)
    if args.command in ("run", "tune"):  # they need Ray whether or not the data is done: say first which Ray
        from cluster.runtime import init_ray

        init_ray(cfg.ray)
    run_data(cfg, force=args.force)
    if args.command == "run":
        return _run(cfg, args.prompt)
    if args.command == "tune":
        return _tune(cfg, args.resume)
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "sample":
        return _sample(args)
    if args.command == "export":
        return _export(args)
    if args.command == "jobs":
        from cluster.submit import jobs

        return jobs(args.action, args.job_id, args.address, args.follow)
    return _recipe_command(args)


class UsageError(ValueError):
    """Arguments that cannot work together: exit 2."""


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a user fixes (exit 2): the recipe, the arguments, a path that is not what it should be."""
    from pipelines.tokenize import TokenizerError
    from training.checkpoint import CheckpointError
    from training.export import ExportError

    return ConfigError, UsageError, TokenizerError, CheckpointError, ExportError, FileNotFoundError, NotADirectoryError


def _crash(e: BaseException) -> int:
    """An unexpected error: one line here, the traceback in a file (RAYLM_LOG=debug prints it too)."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    fd, path = tempfile.mkstemp(prefix="raylm-error-", suffix=".txt")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if os.environ.get("RAYLM_LOG", "").lower() == "debug":
        print(text, file=sys.stderr)
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
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
    job_command = []
    if argv[:1] == ["submit"] and "--" in argv:  # submit's own options, then the job's command line
        i = argv.index("--")
        argv, job_command = argv[:i], argv[i + 1 :]
    args = ap.parse_args(argv)
    args.job_command = job_command
    warnings.showwarning = _show_warning
    try:
        return _dispatch(args)
    except ConfigError as e:
        print(f"raylm: bad recipe:\n{e}" if "\n" in str(e) else f"raylm: bad recipe: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raylm: interrupted; run the same command again to go on (finished stages are kept, training resumes)", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the one place that turns every error into a message and an exit code
        from pipelines.run import DataStageError

        if isinstance(e, _user_errors()):
            print(f"raylm: {e}", file=sys.stderr)
            return 2
        if isinstance(e, DataStageError):
            print(f"raylm data: {e}", file=sys.stderr)
            return 1
        if isinstance(e, ConnectionError):  # ray.address, RAY_ADDRESS or --address that nothing answers at
            print(f"raylm: cannot reach the Ray cluster: {e}", file=sys.stderr)
            return 1
        return _crash(e)


if __name__ == "__main__":
    sys.exit(main())
