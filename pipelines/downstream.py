"""Downstream task files built from a run's validation split (never its train split: no example was trained on).

    python -m raylm.pipelines.downstream runs/NAME/data --out data/tasks [--layout plays|text] [--context 3]
        [--examples 200] [--seed 0]

reads the val documents back from the shards (decoded with the run's tokenizer) and cuts them into units: with
`--layout plays` (speaker headings, speeches; pipelines/tasks.py reads them) the lines of each speech, with
`--layout text` (web pages, prose) the sentences of each paragraph. Then it writes:
- `next-line.jsonl` (multiple choice): the context is `--context` consecutive units of a speech (paragraph), the
  choices the true next one and 3 units from other speeches (paragraphs), the nearest in length to it (so that
  length alone does not give the answer away); the gold's place among the choices is drawn at random. Random
  baseline 0.25.
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
import re
import sys
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


LAYOUTS = ("plays", "text")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def units(text: str, layout: str) -> tuple[list[list[str]], str]:
    """The runs of consecutive units a document holds, and what joins two units: `plays`, the lines of each speech
    (pipelines/tasks.speeches), joined by a newline; `text` (web pages, prose: any document), the sentences of each
    paragraph (blank-line separated; a sentence ends at . ! or ? before whitespace), joined by a space."""
    if layout == "plays":
        return speeches(text), "\n"
    paragraphs = (" ".join(p.split()) for p in re.split(r"\n\s*\n", text))
    return [_SENTENCE_END.split(p) for p in paragraphs if p], " "


def next_line_examples(
    texts: list[str], n: int, context_lines: int = 3, choices: int = 4, seed: int = 0, layout: str = "plays"
) -> list[tuple[str, list[str], int]]:
    """Up to `n` (context, choices, gold) of next-unit prediction inside a speech (`plays`: lines) or a paragraph
    (`text`: sentences), deterministic for a seed. The context ends with the joiner, so the choices start bare."""
    rng = random.Random(seed)
    runs = [units(t, layout) for t in texts]
    joiner = "\n" if layout == "plays" else " "
    spoken = [sp for groups, _ in runs for sp in groups if len(sp) > context_lines]
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
        context = joiner.join(spoken[s][i - context_lines : i]) + joiner
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


def build(data_root: str, out_dir: str, n: int = 200, seed: int = 0, layout: str = "plays", context: int = 3) -> dict[str, int]:
    """Write next-line.jsonl, word-order.jsonl and next-line-cloze.jsonl under `out_dir`; returns examples per file."""
    examples = next_line_examples(val_texts(data_root), n, context, seed=seed, layout=layout)
    if not examples:
        unit = "speeches of {} or more lines" if layout == "plays" else "paragraphs of {} or more sentences"
        raise ValueError(f"{data_root}: its val split has no {unit.format(context + 1)} (--layout {layout})")
    how = f"python -m raylm.pipelines.downstream {data_root} --layout {layout} --context {context} --examples {n} --seed {seed} (its val split)"
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
    p.add_argument("--layout", choices=LAYOUTS, default="plays", help="plays: lines of speeches; text: sentences of paragraphs")
    p.add_argument("--context", type=int, default=3, help="lines (sentences) before the one to predict")
    a = p.parse_args(argv)
    if a.examples < 1 or a.context < 1:
        p.error("--examples and --context must be at least 1")
    try:
        built = build(a.data, a.out, a.examples, a.seed, a.layout, a.context)
    except (ValueError, FileNotFoundError) as e:
        print(f"raylm downstream: {e}", file=sys.stderr)
        return 2
    for name, count in built.items():
        print(f"{a.out}/{name}.jsonl: {count} examples")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
