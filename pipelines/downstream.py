"""Downstream task files built from a run's validation split (never its train split: no example was trained on).

    python -m raylm.pipelines.downstream runs/NAME/data --out data/tasks [--examples 200] [--seed 0]

reads the val documents back from the shards (decoded with the run's tokenizer) and writes, for text in the
plays' layout (speaker headings, speeches; pipelines/tasks.py reads them):
- `next-line.jsonl` (multiple choice): the context is a few consecutive lines of a speech, the choices the true
  next line and 3 lines from other speeches, the nearest in length to it (so that length alone does not give the
  answer away); the gold's place among the choices is drawn at random. Random baseline 0.25.
- `word-order.jsonl` (multiple choice): the same contexts, the choices the true next line and 3 orderings of its
  own words drawn at random (the same words and length: only the order tells them apart, as in minimal-pair
  benchmarks). Random baseline 0.25.
- `next-line-cloze.jsonl` (cloze): the same contexts, the true next line as the continuation: greedy match and
  bits per byte.
Each file's header records how it was built (this command, the data directory, the seed) and its baseline.
Users run it on their own run's data.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from raylm.core.taskfile import Cloze, MultipleChoice, TaskHeader, write_task
from raylm.pipelines.tasks import speeches


def val_texts(data_root: str) -> list[str]:
    """The documents of the run's val split, decoded with the run's tokenizer."""
    from raylm.core.manifest import read_manifest
    from raylm.core.shards import iter_documents
    from raylm.core.tokenizer import load_encoding, run_tokenizer

    man = read_manifest(data_root)
    enc = load_encoding(run_tokenizer(man.tokenizer.as_json(), data_root))
    return [enc.decode([t for t in doc.tolist() if t != enc.eot_token]) for doc in iter_documents(data_root, "val")]


def next_line_examples(texts: list[str], n: int, context_lines: int = 3, choices: int = 4, seed: int = 0) -> list[tuple[str, list[str], int]]:
    """Up to `n` (context, choices, gold) of next-line prediction inside speeches, deterministic for a seed."""
    rng = random.Random(seed)
    spoken = [sp for t in texts for sp in speeches(t) if len(sp) > context_lines]
    pool = [(s, line) for s, sp in enumerate(spoken) for line in sp if len(line) >= 10]
    candidates = [(s, i) for s, sp in enumerate(spoken) for i in range(context_lines, len(sp)) if len(sp[i]) >= 10]
    rng.shuffle(candidates)
    out = []
    for s, i in candidates[:n]:
        gold = spoken[s][i]
        others = [line for t, line in rng.sample(pool, min(len(pool), 200)) if t != s and line != gold]
        distractors = sorted(dict.fromkeys(others), key=lambda line: abs(len(line) - len(gold)))[: choices - 1]
        if len(distractors) < choices - 1:
            continue
        opts = [gold, *distractors]
        rng.shuffle(opts)
        context = "\n".join(spoken[s][i - context_lines : i]) + "\n"
        out.append((context, opts, opts.index(gold)))
    return out


def word_order_examples(examples: list[tuple[str, list[str], int]], choices: int = 4, seed: int = 0) -> list[tuple[str, list[str], int]]:
    """For each (context, choices, gold): the gold line beside `choices - 1` other orderings of its words (lines of
    too few words to give them are left out)."""
    rng = random.Random(seed)
    out = []
    for context, opts, g in examples:
        words = opts[g].split(" ")
        orders: dict[str, None] = {opts[g]: None}
        for _ in range(50):
            if len(orders) == choices:
                break
            orders[" ".join(rng.sample(words, len(words)))] = None
        if len(orders) < choices:
            continue
        lines = list(orders)
        rng.shuffle(lines)
        out.append((context, lines, lines.index(opts[g])))
    return out


def build(data_root: str, out_dir: str, n: int = 200, seed: int = 0) -> dict[str, int]:
    """Write next-line.jsonl, word-order.jsonl and next-line-cloze.jsonl under `out_dir`; returns examples per file."""
    examples = next_line_examples(val_texts(data_root), n, seed=seed)
    if not examples:
        raise ValueError(f"{data_root}: its val split has no speeches of 4 or more lines to build next-line examples from")
    how = f"python -m raylm.pipelines.downstream {data_root} --examples {n} --seed {seed} (its val split)"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    mc = TaskHeader(name="next-line", kind="multiple_choice", built_by=how, random_baseline=0.25)
    write_task(f"{out_dir}/next-line.jsonl", mc, [MultipleChoice(context=c, choices=o, gold=g) for c, o, g in examples])
    order = word_order_examples(examples, seed=seed)
    wo = TaskHeader(name="word-order", kind="multiple_choice", built_by=how, random_baseline=0.25)
    write_task(f"{out_dir}/word-order.jsonl", wo, [MultipleChoice(context=c, choices=o, gold=g) for c, o, g in order])
    cz = TaskHeader(name="next-line-cloze", kind="cloze", built_by=how, random_baseline=0.0)
    write_task(f"{out_dir}/next-line-cloze.jsonl", cz, [Cloze(context=c, continuation=o[g]) for c, o, g in examples])
    return {"next-line": len(examples), "word-order": len(order), "next-line-cloze": len(examples)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", help="a run's data directory (its shards and manifest)")
    p.add_argument("--out", required=True, help="the directory the task files go to")
    p.add_argument("--examples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for name, count in build(a.data, a.out, a.examples, a.seed).items():
        print(f"{a.out}/{name}.jsonl: {count} examples")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
