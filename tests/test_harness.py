"""Three ways to score one checkpoint on the same examples agree: `raylm eval --tasks`, lm-evaluation-harness
through the bridge (`--model raylm`, training/harness.py), and lm-eval's own `hf` model on `raylm export`'s
directory. Per-example log-likelihoods within 1e-4, accuracies equal, for a multiple-choice task (some contexts
longer than the model's window, so the left truncation is compared too) and a cloze task. lm-eval reads the
examples from local JSONL files through task YAMLs (harness.write_lm_eval_tasks: no download; the cloze task
with a fewshot prefix, lm-eval's description); the bridge's rolling
log-likelihood and greedy generation are checked against the model directly."""

import json
import random

import pytest
import torch

pytest.importorskip("lm_eval", reason="raylm[eval]")  # in the test extras: runs in CI

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from raylm.cluster.cli import main  # noqa: E402
from raylm.training.harness import RaylmLM, write_lm_eval_tasks  # noqa: E402 - importing it registers the model `raylm`
from raylm.training.tasks import _packs, encode_pair  # noqa: E402
from tests.conftest import ROOT, sample_docs  # noqa: E402
from tests.test_export import bpe, write_checkpoint  # noqa: E402, F401 - bpe: the fixture write_checkpoint needs

pytestmark = [pytest.mark.slow, pytest.mark.own_ray]  # ~11 s (lm-eval twice), without Ray: run beside the Ray tests

SEQ = 128
MODEL = {"arch": "llama", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "d_model": 64, "seq_len": SEQ}


def _examples(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Multiple choice: a few lines of the sample, then its true next line or one of three others (a space
    before each choice, or a newline ending the context: lm-eval moves a context's trailing whitespace, newlines
    included, to the continuation); some contexts run past the window. Cloze: a
    line's first words, then the rest of the line."""
    rng = random.Random(seed)
    lines = [ln.strip() for d in sample_docs()[:20] for ln in d["text"].splitlines() if len(ln.strip()) > 20]
    mc, cloze = [], []
    for k in range(10):
        i = rng.randrange(20, len(lines) - 1)
        ctx = " ".join(lines[i - (1 if k % 3 else 20) : i])  # every third context is longer than the window
        others = rng.sample([ln for ln in lines if ln != lines[i]], 3)
        gold = rng.randrange(4)
        choices = others[:gold] + [lines[i]] + others[gold:]
        if k % 2:  # a space before each choice, or (as in the bundled tasks) a context ending in a newline
            mc.append({"context": ctx, "choices": [" " + c for c in choices], "gold": gold})
        else:
            mc.append({"context": ctx + "\n", "choices": choices, "gold": gold})
    for _ in range(6):
        words = rng.choice(lines).split()
        cloze.append({"context": " ".join(words[:3]), "continuation": " " + " ".join(words[3:])})
    return mc, cloze


@pytest.fixture(scope="module")
def setup(tmp_path_factory, bpe):  # noqa: F811
    import os

    d = tmp_path_factory.mktemp("harness")
    os.environ.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(d / "hf-datasets"))
    model = write_checkpoint(d / "ckpt", MODEL, bpe, seed=3)
    mc, cloze = _examples()
    (d / "tasks").mkdir()
    for name, kind, rows, fewshot in (("mc", "multiple_choice", mc, ""), ("cz", "cloze", cloze, "Lines of the plays.\n")):
        header = {"task": {"name": name, "kind": kind, "built_by": "tests/test_harness.py", "fewshot": fewshot}}
        (d / "tasks" / f"{name}.jsonl").write_text("\n".join(json.dumps(r) for r in [header, *rows]) + "\n")
    assert write_lm_eval_tasks([str(d / "tasks")], str(d / "lm-eval")) == ["raylm-cz", "raylm-mc"]
    assert main(["export", str(d / "ckpt"), "--format", "hf", str(d / "hf")]) == 0
    recipe = [str(ROOT / "cluster" / "recipes" / "local.yaml"), "--set", f"storage_path={d}", "--set", "name=ev"]
    assert main(["eval", *recipe, "--checkpoint", str(d / "ckpt"), "--tasks", str(d / "tasks")]) == 0
    ours = json.loads((d / "ev" / "eval" / "tasks.json").read_text())["tasks"]
    manager = TaskManager(include_path=str(d / "lm-eval"))
    runs = {
        "bridge": ("raylm", f"run={d / 'ckpt'}"),
        "hf": ("hf", f"pretrained={d / 'hf'},dtype=float32,device=cpu"),
    }
    theirs = {}
    for who, (model_name, args) in runs.items():
        theirs[who] = lm_eval.simple_evaluate(
            model=model_name, model_args=args, tasks=["raylm-mc", "raylm-cz"], task_manager=manager, batch_size=4, log_samples=True
        )
    return {"model": model, "ours": ours, "theirs": theirs, "dir": d, "mc": mc, "cloze": cloze}


def _logliks(res: dict, task: str) -> list:
    """Per example (in document order) its choices' log-likelihoods, or its continuation's."""
    rows = sorted(res["samples"][f"raylm-{task}"], key=lambda s: s["doc_id"])
    if task == "mc":
        return [[float(r[0]) for r in s["filtered_resps"]] for s in rows]
    return [float(s["filtered_resps"][0][0]) for s in rows]


@pytest.mark.parametrize("who", ["bridge", "hf"])
def test_multiple_choice_logliks_agree_within_1e_4(setup, who):
    ours = [row["loglik"] for row in setup["ours"]["mc"]["per_example"]]
    theirs = _logliks(setup["theirs"][who], "mc")
    assert len(ours) == len(theirs) == 10
    diff = max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
    assert diff <= 1e-4, f"max |loglik difference| {diff}"


@pytest.mark.parametrize("who", ["bridge", "hf"])
def test_cloze_logliks_agree_within_1e_4(setup, who):
    ours = [row["loglik"] for row in setup["ours"]["cz"]["per_example"]]
    theirs = _logliks(setup["theirs"][who], "cz")
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1e-4


# raylm's acc_norm divides by the choice's UTF-8 bytes: lm-eval's acc_bytes (its acc_norm divides by characters)
@pytest.mark.parametrize("who", ["bridge", "hf"])
@pytest.mark.parametrize(
    ("task", "ours_key", "their_key"), [("mc", "acc", "acc,none"), ("mc", "acc_norm", "acc_bytes,none"), ("cz", "acc", "acc,none")]
)
def test_accuracies_are_equal(setup, who, task, ours_key, their_key):
    assert setup["ours"][task][ours_key] == pytest.approx(setup["theirs"][who]["results"][f"raylm-{task}"][their_key], abs=1e-12)


def test_some_contexts_were_truncated_and_the_logliks_are_not_trivial(setup, bpe):  # noqa: F811
    enc = bpe[1]
    assert sum(len(enc.encode_ordinary(e["context"])) > SEQ for e in setup["mc"]) >= 3
    # ... and others whose choices raylm scores packed in one row with their context (tasks.example_loglikelihoods)
    assert sum(_packs([encode_pair(enc, e["context"], c) for c in e["choices"]], SEQ) for e in setup["mc"]) >= 3
    spread = [max(row["loglik"]) - min(row["loglik"]) for row in setup["ours"]["mc"]["per_example"]]
    assert min(spread) > 1e-3  # choices the model tells apart: equal accuracies are not ties broken alike


@pytest.fixture(scope="module")
def bridge(setup):
    return RaylmLM(run=str(setup["dir"] / "ckpt"), batch_size=4)


def test_loglikelihood_rolling_is_the_sum_over_windows(bridge, setup):
    """A text of 3+ windows: the rolling log-likelihood sums each token's log-prob, the first given the end-of-text
    token, in disjoint windows of SEQ predictions, each window's input the SEQ tokens before its last prediction
    (so the last, shorter window sees a full window of context, as lm-eval's hf model does): computed here on the
    model itself."""
    text = " ".join(d["text"] for d in sample_docs()[:3])[:1500]
    (got,) = bridge.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)])
    ids = [bridge.eot_token_id] + bridge.tok_encode(text)
    assert len(ids) > 3 * SEQ and (len(ids) - 1) % SEQ  # a last window shorter than the others
    want = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, SEQ):  # predicts ids[start + 1 : end + 1]
            end = min(start + SEQ, len(ids) - 1)
            x = torch.tensor([ids[max(0, end - SEQ) : end]])
            logp = torch.log_softmax(setup["model"](x)[0][0, :, : bridge.enc.n_vocab].float(), -1)[-(end - start) :]
            y = torch.tensor(ids[start + 1 : end + 1])
            want += float(logp[torch.arange(len(y)), y].sum())
    assert got == pytest.approx(want, abs=1e-3)


def test_generate_until_is_greedy_and_stops_at_the_stop_string(bridge, setup):
    ctx = "ROMEO:"
    ids = bridge.tok_encode(ctx)
    with torch.no_grad():
        full = setup["model"].generate(torch.tensor([ids]), 20, temperature=0.0, vocab_limit=bridge.enc.n_vocab)
    greedy = bridge.tok_decode(full[0, len(ids) :].tolist())
    (free,) = bridge.generate_until([Instance("generate_until", {}, (ctx, {"until": ["\x00never"], "max_gen_toks": 20}), 0)])
    assert free == greedy
    stop = greedy[len(greedy) // 2 : len(greedy) // 2 + 2]
    (cut,) = bridge.generate_until([Instance("generate_until", {}, (ctx, {"until": [stop], "max_gen_toks": 20}), 0)])
    assert cut == greedy[: greedy.index(stop)]


def test_raylm_lm_eval_is_lm_evals_command_line_with_the_raylm_model(setup, capsys):
    d = setup["dir"]
    argv = ["--model", "raylm", "--model_args", f"run={d / 'ckpt'}", "--tasks", "raylm-mc", "--include_path", str(d / "lm-eval")]
    assert main(["lm-eval", *argv, "--output_path", str(d / "cli-out")]) == 0
    (written,) = (d / "cli-out").rglob("results_*.json")
    acc = json.loads(written.read_text())["results"]["raylm-mc"]["acc,none"]
    assert acc == pytest.approx(setup["ours"]["mc"]["acc"], abs=1e-12)
