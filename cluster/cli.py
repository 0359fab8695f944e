"""The `raylm` command. Exit codes: 0 done, 2 bad config or arguments, 1 failure of the run."""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from cluster.config import ConfigError, dump_config, load_config


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML (see cluster/recipes/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set data.dedup.minhash.threshold=0.7 (repeatable)")


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
    p = sub.add_parser("run", help="the main job (today: the data stage; training follows with the train stage)")
    _recipe_args(p)
    p.add_argument("--force", action="store_true", help="rebuild the data even if complete")
    return ap


def main(argv: Optional[list[str]] = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.recipe, args.overrides)
    except ConfigError as e:
        print(f"raylm: bad recipe:\n{e}", file=sys.stderr)
        return 2
    if args.command == "validate":
        print(dump_config(cfg), end="")
        return 0
    if args.command == "train":
        from training.trainer import run_train

        try:
            result = run_train(cfg)
        except FileNotFoundError as e:  # `train` before `data`
            print(f"raylm: {e}", file=sys.stderr)
            return 2
        return 0 if result.error is None else 1

    from pipelines.sources import list_files
    from pipelines.tokenize import TokenizerError

    try:
        list_files(cfg.data.inputs)  # a recipe pointing at nothing is a config error, before Ray starts
    except (FileNotFoundError, ValueError) as e:
        print(f"raylm: bad recipe: {e}", file=sys.stderr)
        return 2
    try:
        from pipelines.run import run_data

        run_data(cfg, force=args.force)
    except TokenizerError as e:
        print(f"raylm: bad recipe: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("raylm: interrupted; run the same command again to redo the unfinished stage", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
