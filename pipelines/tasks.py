"""Task sets built from the bundled sample, for the fine-tuning worked example.

`python -m pipelines.tasks play --out data/tasks/play.jsonl` writes "name the play" records: a
passage of spoken verse (consecutive lines of one speech; speaker headings and stage directions
left out) as the prompt, the play's title as the completion, in the prompt/completion JSONL that
`data.inputs[*].prompt_field/completion_field` reads. Every passage is a separate, non-overlapping
piece of text, ids are stable, so the train/val split (a hash of the id) is too, and the records are
shuffled (seeded), as a task file for packed training must be.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from collections import Counter
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "shakespeare.jsonl.gz"
# six plays of the modern-spelling edition, of different lengths (so the majority class is a real baseline)
PLAYS = {
    "hamlet_gut": "Hamlet",
    "romeo_and_juliet_gut": "Romeo and Juliet",
    "julius_caesar_gut": "Julius Caesar",
    "macbeth_gut": "Macbeth",
    "tempest_gut": "The Tempest",
    "midsummer_nights_dream_gut": "A Midsummer Night's Dream",
}
PROMPT = "Passage:\n{passage}\nPlay:"

# a speaker heading alone on a line: "Ham." / "FIRST WITCH." / "HERMIA"
_SPEAKER = re.compile(r"^([A-Z][A-Za-z' ]{0,30}\.|[A-Z][A-Z' ]{1,30})$")
_HEADING = re.compile(r"^(ACT|SCENE|Scene|Act)\b")


def speeches(text: str) -> list[list[str]]:
    """Spoken lines, grouped by speech: a speech starts after a speaker heading and ends at a blank line."""
    out: list[list[str]] = []
    current: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            if current:
                out.append(current)
            current = None
        elif _SPEAKER.match(line):
            current = []
        elif current is not None and not _HEADING.match(line):
            spoken = re.sub(r"\[.*?\]\s*", "", line).strip()  # directions: [Exit.], [Aside.] ..., [To Ophelia.]
            if spoken and not spoken.startswith("["):  # (an unclosed "[" opens a direction over several lines)
                current.append(spoken)
    if current:
        out.append(current)
    return out


def passages(text: str, lines: int, min_chars: int) -> list[str]:
    """Non-overlapping runs of `lines` consecutive lines inside one speech, at least `min_chars` long."""
    out = []
    for sp in speeches(text):
        for i in range(0, len(sp) - lines + 1, lines):
            p = "\n".join(sp[i : i + lines])
            if len(p) >= min_chars:
                out.append(p)
    return out


def build_play_task(out: Path, sample: Path = SAMPLE, lines: int = 2, min_chars: int = 40, seed: int = 0) -> Counter:
    """Write the "name the play" records; returns the number of records per play."""
    with gzip.open(sample, "rt", encoding="utf-8") as f:
        docs = {d["id"]: d["text"] for d in map(json.loads, f)}
    missing = sorted(set(PLAYS) - set(docs))
    if missing:
        raise ValueError(f"{sample}: no document with id {', '.join(missing)}")
    counts: Counter = Counter()
    records = []
    for doc_id, title in PLAYS.items():
        for n, p in enumerate(passages(docs[doc_id], lines, min_chars)):
            records.append({"id": f"{doc_id}:{n}", "prompt": PROMPT.format(passage=p), "completion": f" {title}"})
            counts[title] += 1
    # shuffled: training packs records into windows in file order, and a window of one play's records
    # would teach "the same title as the record before" instead of reading the passage
    random.Random(seed).shuffle(records)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
    return counts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.tasks", description=__doc__.split("\n\n")[0])
    ap.add_argument("task", choices=["play"])
    ap.add_argument("--out", type=Path, default=Path("data/tasks/play.jsonl"))
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    ap.add_argument("--lines", type=int, default=2, help="lines per passage")
    args = ap.parse_args(argv)
    counts = build_play_task(args.out, args.sample, args.lines)
    total = sum(counts.values())
    print(f"{args.out}: {total:,} records; " + ", ".join(f"{t} {c:,} ({c / total:.0%})" for t, c in counts.most_common()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
