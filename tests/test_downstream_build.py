"""The task builder (pipelines/downstream.py) on text in the plays' layout: next-line examples whose gold is the
line that follows the context, distractors from other speeches nearest in length, word-order examples of the same
words, deterministic for a seed; what it writes is read back as task files."""

import random

from raylm.core.taskfile import MultipleChoice, TaskHeader, read_task, write_task
from raylm.pipelines.downstream import next_line_examples, word_order_examples


def _play(seed: int, speeches: int = 12) -> str:
    rng = random.Random(seed)
    words = "love death king night crown sword heaven blood honour grief sweet gentle noble".split()
    out = []
    for s in range(speeches):
        out.append(f"SPEAKER{s % 3}.")
        out += [" ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + f" {seed}.{s}-{i}" for i in range(6)]
        out.append("")
    return "\n".join(out)


TEXTS = [_play(0), _play(1)]


def test_the_gold_is_the_line_after_the_context():
    for context, choices, gold in next_line_examples(TEXTS, 20):
        last = context.rstrip("\n").split("\n")[-1]  # lines end in "<speech>-<line>": the next line is <line> + 1
        speech, line = last.rsplit(" ", 1)[-1].split("-")
        assert choices[gold].endswith(f" {speech}-{int(line) + 1}")


def test_distractors_come_from_other_speeches():
    speech = lambda line: line.rsplit(" ", 1)[-1].split("-")[0]  # noqa: E731 - "<play>.<speech>"
    for context, choices, gold in next_line_examples(TEXTS, 20):
        here = speech(context.rstrip("\n").split("\n")[-1])
        others = [c for i, c in enumerate(choices) if i != gold]
        assert len(others) == 3 and all(speech(c) != here for c in others)


def test_the_same_seed_gives_the_same_examples():
    assert next_line_examples(TEXTS, 15, seed=3) == next_line_examples(TEXTS, 15, seed=3)


def test_word_order_choices_are_the_gold_line_s_words():
    for _context, choices, gold in word_order_examples(next_line_examples(TEXTS, 20)):
        assert len(set(choices)) == 4 and all(sorted(c.split(" ")) == sorted(choices[gold].split(" ")) for c in choices)


def test_a_written_task_reads_back(tmp_path):
    examples = [MultipleChoice(context=c, choices=o, gold=g) for c, o, g in next_line_examples(TEXTS, 5)]
    write_task(str(tmp_path / "t.jsonl"), TaskHeader(name="t", kind="multiple_choice", random_baseline=0.25), examples)
    task = read_task(str(tmp_path / "t.jsonl"))
    assert task.examples == examples and not task.skipped and task.baseline == 0.25


def _prose(seed: int, paragraphs: int = 10) -> str:
    """Paragraphs of sentences, each ending in its marker m<doc>p<paragraph>s<sentence>, then . ! or ?"""
    rng = random.Random(seed)
    words = "the page said that every cookie and menu link was kept for later reading".split()
    paras = []
    for p in range(paragraphs):
        sents = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 9))) + f" m{seed}p{p}s{i}" + rng.choice(".!?") for i in range(5)]
        paras.append(" ".join(sents[:3]) + "\n" + " ".join(sents[3:]))  # a line break inside a paragraph
    return "\n\n".join(paras)


PROSE = [_prose(0), _prose(1)]


def test_text_units_are_the_sentences_of_each_paragraph():
    from raylm.pipelines.downstream import units

    groups, joiner = units(PROSE[0], "text")
    assert joiner == " " and len(groups) == 10 and all(len(g) == 5 for g in groups)
    assert groups[2][4].endswith(("m0p2s4.", "m0p2s4!", "m0p2s4?"))


def test_text_layout_the_gold_is_the_sentence_after_the_context():
    examples = next_line_examples(PROSE, 20, context_lines=2, layout="text")
    assert len(examples) == 20
    for context, choices, gold in examples:
        assert context.endswith(" ") and "\n" not in context
        where, k = context.rstrip(" ").rsplit(" ", 1)[-1][:-1].rsplit("s", 1)  # the context's last sentence marker
        assert choices[gold][:-1].endswith(f" {where}s{int(k) + 1}")
        assert all(where not in c for i, c in enumerate(choices) if i != gold)  # distractors: other paragraphs
