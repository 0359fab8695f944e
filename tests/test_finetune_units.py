"""Fine-tuning and evaluation pieces without Ray: task records and their loss masks, mask-carrying
shards and windows, the masked loss and its gradient, metrics on hand-made cases, init_from checks."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raylm.cluster.recipe import RunConfig
from raylm.core.manifest import write_manifest
from raylm.core.schema import ConfigError
from raylm.core.shards import iter_documents
from raylm.core.tokenizer import encode_with_masks, load_encoding
from raylm.pipelines.config import DataConfig, InputSpec, TokenizerConfig
from raylm.pipelines.read import _record_text
from raylm.pipelines.shards import ShardWriter
from raylm.pipelines.tasks import build_play_task, speeches
from raylm.pipelines.tokenizers import spec_from_config
from raylm.training.config import ModelConfig
from raylm.training.data import ShardWindows
from raylm.training.evaluate import bleu, classification_metrics, label_logprobs, lm_metrics, split_examples
from raylm.training.model import GPT, GPTConfig
from tests.conftest import manifest


@pytest.fixture(scope="module")
def enc():
    return load_encoding(spec_from_config(TokenizerConfig()))


def test_task_records_fields_and_rejects():
    spec = InputSpec(path="x.jsonl", prompt_field="q", completion_field="a")
    assert _record_text({"q": "Line:\n", "a": " Hamlet"}, spec) == ("Line:\n Hamlet", None, 6)
    assert _record_text({"q": "Line:"}, spec)[1] == "missing_completion"
    assert _record_text({"a": "x", "q": 3}, spec)[1] == "non_string_prompt"
    assert _record_text({"q": "Line:", "a": "  "}, spec)[1] == "empty_completion"
    with pytest.raises(ValueError, match="both prompt_field and completion_field"):
        InputSpec(path="x.jsonl", prompt_field="q")
    with pytest.raises(ValueError, match="jsonl or parquet"):
        InputSpec(path="x.txt", format="txt", prompt_field="q", completion_field="a")
    with pytest.raises(ValueError, match="pretrained run's tokenizer"):
        DataConfig(inputs=[spec], tokenizer={"train": {"vocab_size": 512}})


def test_encode_with_masks_marks_completion_and_closing_eot(enc):
    docs, masks = encode_with_masks(enc, ["Passage:\nTo be\nPlay: Hamlet", "plain text"], [len("Passage:\nTo be\nPlay:"), None])
    p, c = enc.encode_ordinary("Passage:\nTo be\nPlay:"), enc.encode_ordinary(" Hamlet")
    eot = enc.eot_token
    assert docs[0].tolist() == [eot] + p + c + [eot]
    assert masks[0].tolist() == [0] * (1 + len(p)) + [1] * (len(c) + 1)
    assert docs[1].tolist() == [eot] + enc.encode_ordinary("plain text") and masks[1].tolist() == [1] * len(docs[1])


def _model(vocab=128, seq_len=16, seed=0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig.from_config(ModelConfig(n_layer=2, n_head=2, d_model=32, seq_len=seq_len), n_vocab=vocab))


def test_prompt_targets_contribute_nothing_to_loss_or_gradient():
    m = _model()
    torch.manual_seed(1)
    x = torch.randint(0, 128, (2, 16))
    y = torch.randint(0, 128, (2, 16))
    mask = torch.zeros(2, 16, dtype=torch.uint8)
    mask[0, 10:] = 1
    mask[1, 4:7] = 1

    def loss_and_grads(targets):
        m.zero_grad()
        _, loss = m(x, targets, loss_mask=mask)
        loss.backward()
        return loss.item(), [p.grad.clone() for p in m.parameters()]

    l1, g1 = loss_and_grads(y)
    y2 = y.clone()
    y2[mask == 0] = torch.randint(0, 128, (int((mask == 0).sum()),))  # other targets at the prompt positions
    l2, g2 = loss_and_grads(y2)
    assert l1 == l2 and all(torch.equal(a, b) for a, b in zip(g1, g2))
    logits, _ = m(x)
    want = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none")[mask.reshape(-1).bool()].mean()
    assert abs(l1 - want.item()) < 1e-6
    y3 = y.clone()
    y3[0, 12] = (y3[0, 12] + 1) % 128  # a completion target does count
    assert loss_and_grads(y3)[0] != l1


def _task_shards(root, enc):
    texts = ["Passage:\nTo be\nPlay: Hamlet", "Passage:\nFair is foul\nPlay: Macbeth", "Passage:\nWherefore art thou\nPlay: Romeo"]
    prompts = [t.index(":", len("Passage:")) + 1 for t in texts]
    docs, masks = encode_with_masks(enc, texts, prompts)
    tokens = np.concatenate(docs)
    w = ShardWriter(str(root), "val", np.dtype(np.uint32), shard_tokens=20, masks=True)
    w.add(tokens, np.array([len(d) for d in docs]), np.concatenate(masks))
    split = w.close()
    write_manifest(
        str(root),
        {
            "format": "raylm-shards",
            "version": 1,
            "loss_mask": True,
            "tokenizer": {"name": "cl100k_base", "n_vocab": enc.n_vocab, "eot": enc.eot_token, "sha256": "x"},
            "dtype": "uint32",
            "splits": {"train": {"tokens": 0, "docs": 0, "shards": []}, "val": split},
        },
    )
    return docs, masks, split


def test_mask_shards_round_trip_and_windows_align_masks_with_targets(tmp_path, enc):
    docs, masks, split = _task_shards(tmp_path, enc)
    assert len(split["shards"]) >= 2 and all("mask_sha256" in s for s in split["shards"])  # cut into several shards
    assert (tmp_path / "val" / "shard-000000.mask.npy").exists()
    got = list(iter_documents(str(tmp_path), "val", with_masks=True))
    assert [d.tolist() for d, _ in got] == [d.tolist() for d in docs]
    assert [m.tolist() for _, m in got] == [m.tolist() for m in masks]
    w = ShardWindows(str(tmp_path), "val", seq_len=4)
    x, y, m = w.batch(np.arange(w.n))
    for s in range(w.n):  # the mask of a target is the mask of that token in its shard
        shard = int(np.searchsorted(w.starts, s, side="right") - 1)
        off = int(s - w.starts[shard]) * 4
        assert m[s].tolist() == w.masks[shard][off + 1 : off + 5].tolist()
        assert y[s].tolist() == w.arrays[shard][off + 1 : off + 5].tolist()
    ex = split_examples(str(tmp_path), "val")
    assert [enc.decode(c) for _, c in ex] == [" Hamlet", " Macbeth", " Romeo"]
    assert enc.decode(ex[1][0][1:]) == "Passage:\nFair is foul\nPlay:"


def test_classification_metrics_hand_made():
    r = classification_metrics(["a", "a", "b", "c"], ["a", "b", "b", "a"])
    # a: tp1 fp1 fn1 -> 0.5; b: tp1 fp1 fn0 -> 2/3; c: tp0 fn1 -> 0 (scikit-learn gives 0.38888...)
    assert r["accuracy"] == 0.5 and abs(r["macro_f1"] - (0.5 + 2 / 3 + 0) / 3) < 1e-12
    assert classification_metrics(["x", "y"], ["x", "y"]) == {"accuracy": 1.0, "macro_f1": 1.0}
    maj = classification_metrics(["a", "a", "a", "b"], ["a"] * 4)  # a: 2*3/(6+1) = 6/7; b: 0
    assert maj["accuracy"] == 0.75 and abs(maj["macro_f1"] - 3 / 7) < 1e-12


def test_bleu_bounds():
    refs = ["the cat sat on the mat today", "a quick brown fox jumps over it"]
    assert bleu(refs, refs) == pytest.approx(100.0)
    assert bleu(["zz yy xx ww vv uu", "qq rr ss tt oo pp"], refs) == pytest.approx(0.0)
    assert 0 < bleu(["the cat sat on the mat", "a quick brown fox jumps over it"], refs) < 100


def test_label_logprobs_and_masked_lm_metrics_match_direct_computation():
    m = _model().eval()
    prompt, labels = [5, 9, 11, 3], [[7, 1], [8, 2, 1], [4]]
    got = label_logprobs(m, prompt, labels, "cpu")
    for i, lab in enumerate(labels):
        seq = torch.tensor([prompt + lab])
        lp = torch.log_softmax(m(seq[:, :-1])[0][0], -1)
        want = sum(lp[len(prompt) - 1 + j, t].item() for j, t in enumerate(lab))
        assert abs(got[i].item() - want) < 1e-5
    torch.manual_seed(2)
    x, y = torch.randint(0, 128, (3, 16)), torch.randint(0, 128, (3, 16))
    mask = (torch.rand(3, 16) > 0.5).to(torch.uint8)
    res = lm_metrics(m, iter([(x, y, mask)]), "cpu")
    logits = m(x)[0]
    sel = mask.bool()
    assert res["tokens"] == int(sel.sum())
    assert abs(res["loss"] - F.cross_entropy(logits[sel], y[sel]).item()) < 1e-5
    assert res["token_accuracy"] == (logits.argmax(-1)[sel] == y[sel]).float().mean().item()


def test_play_task_builder(tmp_path):
    counts = build_play_task(tmp_path / "play.jsonl")
    recs = [json.loads(line) for line in open(tmp_path / "play.jsonl")]
    assert len(recs) == sum(counts.values()) > 3000 and len(counts) == 6
    assert len({r["id"] for r in recs}) == len(recs)
    assert all(r["prompt"].startswith("Passage:\n") and r["prompt"].endswith("\nPlay:") for r in recs)
    assert max(counts.values()) / len(recs) < 0.3  # no class dwarfs the rest
    assert speeches("HAMLET.\nTo be, or not to be\n[Aside.] that is\n\n[Exit.]\n") == [["To be, or not to be", "that is"]]


def test_init_from_must_match_model_and_tokenizer(tmp_path):
    from raylm.core.tokenizer import describe
    from raylm.pipelines.tokenizers import train_bpe
    from raylm.training.driver import check_init_from
    from tests.conftest import sample_docs
    from tests.test_export import write_checkpoint

    spec = train_bpe((d["text"] for d in sample_docs()[:3]), 400, str(tmp_path / "tok" / "tokenizer.tiktoken"))
    tok = (spec, load_encoding(spec), str(tmp_path / "tok"))
    write_checkpoint(tmp_path / "pre" / "train" / "checkpoint_000", {"n_layer": 1, "n_head": 2, "d_model": 32, "seq_len": 16}, tok)
    data = tmp_path / "data"
    data.mkdir()
    write_manifest(str(data), manifest(tokenizer=describe(*tok[:2])))
    base = {
        "name": "ft",
        "storage_path": str(tmp_path),
        "train": {"init_from": str(tmp_path / "pre"), "data_path": str(data), "model": {"n_layer": 1, "n_head": 2, "d_model": 32, "seq_len": 16}},
    }
    assert check_init_from(RunConfig.model_validate(base).train_job()).endswith("checkpoint_000")
    wider = json.loads(json.dumps(base))
    wider["train"]["model"]["d_model"] = 64
    with pytest.raises(ConfigError, match="train.model.d_model is 32 there, 64 here"):
        check_init_from(RunConfig.model_validate(wider).train_job())
    write_manifest(str(data), manifest(tokenizer={"name": "cl100k_base", "n_vocab": 100277, "eot": 100257, "sha256": "other"}))
    with pytest.raises(ConfigError, match="another tokenizer"):
        check_init_from(RunConfig.model_validate(base).train_job())


def test_eval_on_files_text_and_task_records(tmp_path):
    """`raylm eval --file`: a text file gives LM metrics over all its tokens; a prompt/completion .jsonl
    gives masked LM metrics and task metrics, with the labels read from the file itself."""
    from raylm.cluster.cli import main
    from raylm.pipelines.tokenizers import train_bpe
    from tests.conftest import sample_docs
    from tests.test_export import write_checkpoint

    spec = train_bpe((d["text"] for d in sample_docs()[:3]), 400, str(tmp_path / "tok" / "tokenizer.tiktoken"))
    enc = load_encoding(spec)
    write_checkpoint(tmp_path / "ckpt", {"n_layer": 1, "n_head": 2, "d_model": 32, "seq_len": 16}, (spec, enc, str(tmp_path / "tok")))
    text = "ROMEO: But soft, what light through yonder window breaks? It is the east, and Juliet is the sun."
    (tmp_path / "t.txt").write_text(text)
    recs = [{"prompt": "Who? ", "completion": lab} for lab in ["Romeo", "Juliet", "Romeo"]]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: ev\nstorage_path: {tmp_path}\n")
    common = ["eval", str(recipe), "--checkpoint", str(tmp_path / "ckpt")]
    assert main([*common, "--file", str(tmp_path / "t.txt")]) == 0
    res = json.loads((tmp_path / "ev" / "eval" / "t@export-test-step7.json").read_text())
    assert res["lm"]["tokens"] == len(enc.encode_ordinary(text)) and "task" not in res  # every token after the leading EOT
    assert main([*common, "--file", str(tmp_path / "t.jsonl")]) == 0
    res = json.loads((tmp_path / "ev" / "eval" / "t@export-test-step7.json").read_text())
    assert res["lm"]["tokens"] == sum(len(enc.encode_ordinary(r["completion"])) + 1 for r in recs)  # completions + EOT only
    assert res["task"]["examples"] == 3 and res["task"]["labels"] == 2
    assert res["task"]["majority"]["accuracy"] == pytest.approx(2 / 3)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n')
    assert main([*common, "--file", str(tmp_path / "bad.jsonl")]) == 2


def test_masked_accumulation_weighs_tokens_not_micro_batches():
    """Two micro-batches with 2 and 20 completion tokens: one step of train_step equals one step on the
    mean over all 22 targets (not the mean of the two micro-batch means)."""
    import copy
    from contextlib import nullcontext

    from raylm.training.worker import train_step

    a = _model()
    b = copy.deepcopy(a)
    torch.manual_seed(3)
    x, y = torch.randint(0, 128, (4, 16)), torch.randint(0, 128, (4, 16))
    mask = torch.zeros(4, 16, dtype=torch.uint8)
    mask[0, 14:] = 1
    mask[2:, 6:16] = 1
    micro = [(x[:2], y[:2], mask[:2]), (x[2:], y[2:], mask[2:])]

    class Loader:
        def __init__(self):
            self.it = iter(micro)

        def next(self):
            return next(self.it)

    opt = torch.optim.SGD(a.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    loss, _ = train_step(a, opt, sched, Loader(), 2, clip=1e9, amp=nullcontext(), device=torch.device("cpu"), world=1)

    with torch.no_grad():
        means = [b(xx, yy, loss_mask=mm)[1].item() for xx, yy, mm in micro]
    _, want = b(x, y, loss_mask=mask)  # the mean over all 22 counted targets
    assert abs(sum(means) / 2 - want.item()) > 1e-3  # the naive mean of means differs: the test can fail
    want.backward()
    with torch.no_grad():
        for p in b.parameters():
            p -= p.grad
    assert abs(loss.item() - want.item()) < 1e-5
    assert all(torch.allclose(pa, pb, atol=1e-6) for pa, pb in zip(a.parameters(), b.parameters()))
