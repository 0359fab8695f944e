"""`raylm eval`: a checkpoint measured on a split of the run's shards or on a file.

Language modelling: loss per target token, perplexity and next-token accuracy (over completion
tokens only when the shards carry loss masks). Task sets (prompt/completion records): greedy
completions scored by exact match and BLEU (sacrebleu); when the completions are a small set of
labels, each example is also classified by the likeliest label (the sum of the label's token
log-probabilities, closing end-of-text included, as lm-evaluation-harness scores multiple choice)
for accuracy and macro-F1, beside the majority-class baseline (the train split's most frequent label).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from raylm.core.io import write_json
from raylm.core.manifest import Split, require_shards
from raylm.core.schema import ConfigError
from raylm.core.shards import iter_documents
from raylm.core.tokenizer import encode_documents, encode_with_masks
from raylm.training.checkpoint import load_model
from raylm.training.config import EvalOptions, TrainJob
from raylm.training.data import ShardWindows, val_windows
from raylm.training.metrics import bits_per_byte, loss_text, split_bpb
from raylm.training.model import GPT


# ---------------------------------------------------------------- metrics on hand-checkable inputs
def classification_metrics(gold: list[str], pred: list[str]) -> dict:
    """Accuracy and macro-F1 (the unweighted mean of per-class F1 over every class in gold or pred,
    0 for a class never predicted correctly: scikit-learn's f1_score(average='macro', zero_division=0))."""
    if not gold:
        return {"accuracy": None, "macro_f1": None}
    tp, fp, fn = Counter(), Counter(), Counter()
    for g, p in zip(gold, pred):
        if g == p:
            tp[g] += 1
        else:
            fp[p] += 1
            fn[g] += 1
    f1s = []
    for c in set(gold) | set(pred):
        denom = 2 * tp[c] + fp[c] + fn[c]
        f1s.append(2 * tp[c] / denom if denom else 0.0)
    return {"accuracy": sum(tp.values()) / len(gold), "macro_f1": sum(f1s) / len(f1s)}


def bleu(hyps: list[str], refs: list[str]) -> float:
    """Corpus BLEU (sacrebleu's defaults: 13a tokenization, 4-grams), 0..100."""
    import sacrebleu

    return float(sacrebleu.corpus_bleu(hyps, [refs]).score)


# ---------------------------------------------------------------- model passes
@torch.no_grad()
def lm_metrics(
    model: torch.nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]],
    device: torch.device | str,
    amp=None,
    world: int = 1,
) -> dict:
    """Loss per counted target (mask == 1 positions under a loss mask), perplexity and next-token accuracy
    over (inputs, targets, mask) batches: the one language-model evaluator, of the training loop's
    validation (each rank passing its share of the windows, the sums all-reduced) and of `raylm eval`."""
    was_training = model.training
    model.eval()
    total = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, correct, targets
    for x, y, m in batches:
        x, y = x.to(device), y.to(device)
        with amp or contextlib.nullcontext():
            logits, _ = model(x)
        logits, tgt = logits.float().reshape(-1, logits.size(-1)), y.reshape(-1)  # (B*T, vocab), (B*T,)
        if m is not None:
            w = m.to(device).reshape(-1).bool()
            logits, tgt = logits[w], tgt[w]
        loss = F.cross_entropy(logits, tgt, reduction="sum")
        total += torch.stack(
            [loss.double(), (logits.argmax(-1) == tgt).sum().double(), torch.tensor(float(tgt.numel()), dtype=torch.float64, device=device)]
        )
    model.train(was_training)
    if world > 1:
        torch.distributed.all_reduce(total)
    loss_sum, correct, count = total.tolist()
    if count == 0:
        return {"loss": None, "ppl": None, "token_accuracy": None, "tokens": 0}
    loss = loss_sum / count
    return {"loss": loss, "ppl": math.exp(min(loss, 50)), "token_accuracy": correct / count, "tokens": int(count)}


def window_batches(windows: ShardWindows, ids: np.ndarray, micro_batch: int) -> Iterator:
    """(inputs, targets, mask) batches of the windows `ids`, in order."""
    for i in range(0, len(ids), micro_batch):
        yield windows.batch(ids[i : i + micro_batch])


def greedy(model: GPT, prompt: list[int], max_new: int, eot: int, vocab: int, device: str) -> list[int]:
    """Greedy continuation of `prompt`, stopped at end-of-text (not included)."""
    out = model.generate(torch.tensor([prompt], device=device), max_new, temperature=0, vocab_limit=vocab, stop_token=eot)
    new = out[0, len(prompt) :].tolist()
    return new[: new.index(eot)] if eot in new else new


@torch.no_grad()
def label_logprobs(model: GPT, prompt: list[int], labels: list[list[int]], device: str) -> torch.Tensor:
    """log p(label | prompt) of each label (token ids, closing EOT included), one batched forward."""
    seqs = [(prompt + lab)[-(model.cfg.seq_len + 1) :] for lab in labels]
    width = max(len(s) for s in seqs)
    x = torch.zeros(len(seqs), width - 1, dtype=torch.long)
    y = torch.zeros(len(seqs), width - 1, dtype=torch.long)
    m = torch.zeros(len(seqs), width - 1)
    for i, (s, lab) in enumerate(zip(seqs, labels)):
        x[i, : len(s) - 1] = torch.tensor(s[:-1])
        y[i, : len(s) - 1] = torch.tensor(s[1:])
        m[i, len(s) - 1 - len(lab) : len(s) - 1] = 1  # the label's positions (right padding is causal-safe)
    logits, _ = model(x.to(device))
    lp = torch.log_softmax(logits.float(), -1).gather(-1, y.to(device)[..., None])[..., 0]
    return (lp * m.to(device)).sum(-1).cpu()


# ---------------------------------------------------------------- examples
def task_examples(documents: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids with the leading EOT, completion ids without the closing EOT) of the task records
    among (tokens, loss mask) documents: those whose mask starts at 0 (see encode_with_masks)."""
    out = []
    for tokens, mask in documents:
        if len(mask) and mask[0] == 0 and mask.any():
            k = int(np.argmax(mask))
            out.append(([int(t) for t in tokens[:k]], [int(t) for t in tokens[k:-1]]))
    return out


def split_examples(data_root: str, split: str) -> list[tuple[list[int], list[int]]]:
    """The task records of a split of the shards."""
    return task_examples(iter_documents(data_root, split, with_masks=True))


class EvalFileError(ValueError):
    """A --file that raylm eval cannot read as text or as prompt/completion records: exit 2, naming the file (and line)."""


def read_eval_file(path: str) -> tuple[list[str], list[int] | None]:
    """A text file -> its text; a prompt/completion .jsonl -> each record's prompt + completion, and the
    prompt's length in characters. Read before the checkpoint loads: the user's file fails first."""
    try:
        data = Path(path).read_bytes()
        text = data.decode("utf-8")
    except OSError as e:
        raise EvalFileError(f"cannot read --file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise EvalFileError(f"{path}:{line}: not UTF-8 text (byte {e.start})") from None
    if not path.endswith((".jsonl", ".json")):
        return [text], None
    texts, prompt_chars = [], []
    for n, line in enumerate(text.split("\n"), 1):  # JSON Lines end at \n only (a string may hold U+2028)
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise EvalFileError(f"{path}:{n}: not a JSON record ({e.msg} at column {e.colno})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not isinstance(rec.get("completion"), str):
            raise EvalFileError(f"{path}:{n}: expected a JSON object with string fields 'prompt' and 'completion'")
        texts.append(rec["prompt"] + rec["completion"])
        prompt_chars.append(len(rec["prompt"]))
    if not texts:
        raise EvalFileError(f"{path}: no prompt/completion records")
    return texts, prompt_chars


def file_documents(texts: list[str], prompt_chars: list[int] | None, enc) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
    """read_eval_file's texts as the data stage encodes them: task records with their loss masks; a text file
    as one document (EOT first) and no masks."""
    if prompt_chars is None:
        return encode_documents(enc, texts), None
    return encode_with_masks(enc, texts, prompt_chars)


def _token_batches(tokens: np.ndarray, seq_len: int, mask: np.ndarray | None = None, batch: int = 16):
    """Non-overlapping windows over one token stream (the last one shorter), in batches of equal length."""
    arr = np.asarray(tokens, dtype=np.int64)
    msk = np.asarray(mask, dtype=np.uint8) if mask is not None else None
    starts = list(range(0, max(len(arr) - 1, 0), seq_len))
    full = [s for s in starts if s + seq_len + 1 <= len(arr)]
    for i in range(0, len(full), batch):
        idx = full[i : i + batch]
        w = torch.from_numpy(np.stack([arr[s : s + seq_len + 1] for s in idx]))
        m = torch.from_numpy(np.stack([msk[s + 1 : s + seq_len + 1] for s in idx])) if msk is not None else None
        yield w[:, :-1], w[:, 1:], m
    tail = [s for s in starts if s + seq_len + 1 > len(arr)]
    for s in tail:
        w = torch.from_numpy(arr[s:])[None]
        yield w[:, :-1], w[:, 1:], (torch.from_numpy(msk[s + 1 :])[None] if msk is not None else None)


def _split_batches(data_root: str, split: str, seq_len: int, max_windows: int | None, micro_batch: int, source: str | None = None):
    w = ShardWindows(data_root, split, seq_len, source=source)
    return window_batches(w, np.arange(w.n) if max_windows is None else val_windows(w, max_windows), micro_batch)


# ---------------------------------------------------------------- the command
def task_metrics(model: GPT, enc, examples: list[tuple[list[int], list[int]]], train_labels: list[str], opts: EvalOptions) -> dict:
    """Exact match and BLEU of greedy completions; accuracy and macro-F1 by label scoring, with the
    majority baseline, when the references are a small label set."""
    device, eot = opts.device, enc.eot_token
    examples = examples[: opts.max_examples]
    refs = [enc.decode(c) for _, c in examples]
    longest = max(len(c) for _, c in examples)
    hyps = [enc.decode(greedy(model, p, min(opts.max_new_tokens, longest + 2), eot, enc.n_vocab, device)) for p, _ in examples]
    out = {
        "examples": len(examples),
        "exact_match": sum(h.strip() == r.strip() for h, r in zip(hyps, refs)) / len(examples),
        "bleu": bleu(hyps, refs),
        "samples": [{"reference": r, "generated": h} for r, h in list(zip(refs, hyps))[:5]],
    }
    labels = sorted(set(refs) | set(train_labels))
    if len(labels) > opts.max_labels:
        out["labels"] = f"{len(labels)} distinct completions > max_labels ({opts.max_labels}): not a classification set"
        return out
    label_ids = [enc.encode_ordinary(lab) + [eot] for lab in labels]
    pred = [labels[int(label_logprobs(model, p, label_ids, device).argmax())] for p, _ in examples]
    majority = Counter(train_labels or refs).most_common(1)[0][0]
    out.update(
        labels=len(labels),
        **classification_metrics(refs, pred),
        majority_label=majority,
        majority=classification_metrics(refs, [majority] * len(refs)),
    )
    return out


def _source_metrics(model: GPT, data_root: str, opts: EvalOptions, sources: dict[str, Split], seq_len: int, micro_batch: int) -> dict:
    """LM metrics (and bits per byte) of each source of a split that has a window to score."""
    out = {}
    for name, entry in sources.items():
        if entry.tokens > seq_len:
            lm = lm_metrics(model, _split_batches(data_root, opts.split, seq_len, opts.max_windows, micro_batch, source=name), opts.device)
            out[name] = {**lm, "bpb": bits_per_byte(lm["loss"], entry.tokens, entry.bytes)}
    return out


def run_eval(job: TrainJob, opts: EvalOptions) -> dict:
    """Evaluate, write `{run_dir}/eval/<what>@<run>-step<N>.json`, return the results."""
    import fsspec

    texts = read_eval_file(opts.file) if opts.file is not None else None
    model, enc, state, ckpt = load_model(opts.checkpoint or job.paths.root, opts.device)
    t0 = time.perf_counter()
    res: dict = {"checkpoint": ckpt, "run": state["config"]["name"], "step": state["step"]}
    seq_len = model.cfg.seq_len
    if texts is not None:
        docs, masks = file_documents(*texts, enc)
        what = Path(opts.file).stem
        mask = np.concatenate(masks) if masks is not None else None
        res["lm"] = lm_metrics(model, _token_batches(np.concatenate(docs), seq_len, mask), opts.device)
        if masks is None:  # the file's text: every token after the first predicted; end-of-text tokens decode to no bytes
            nbytes = sum(len(enc.decode_bytes(d[d != enc.eot_token].tolist())) for d in docs)
            res["lm"]["bpb"] = bits_per_byte(res["lm"]["loss"], res["lm"]["tokens"], nbytes)
        examples = task_examples(zip(docs, masks)) if masks is not None else []
        train_labels: list[str] = []
    else:
        data_root, what = job.paths.shards, opts.split
        man = require_shards(data_root, " (or pass --file)")
        if man.tokenizer.sha256 != state["tokenizer"]["sha256"]:
            raise ConfigError(
                f"{ckpt} was trained with tokenizer {state['tokenizer']['name']}, {data_root} was made with {man.tokenizer.name} (different ranks)"
            )
        res["lm"] = lm_metrics(model, _split_batches(data_root, opts.split, seq_len, opts.max_windows, job.train.batch.micro_batch_size), opts.device)
        res["lm"]["bpb"] = split_bpb(res["lm"]["loss"], man, opts.split)
        sources = man.splits[opts.split].sources or {}
        if len(sources) > 1:  # a mixture: each source's LM metrics beside the whole split's
            res["lm_sources"] = _source_metrics(model, data_root, opts, sources, seq_len, job.train.batch.micro_batch_size)
        examples = split_examples(data_root, opts.split) if man.loss_mask else []
        train_labels = [enc.decode(c) for _, c in split_examples(data_root, "train")] if examples else []
    if examples:
        res["task"] = task_metrics(model, enc, examples, train_labels, opts)
    res["seconds"] = round(time.perf_counter() - t0, 2)
    out = f"{job.paths.eval}/{what}@{state['config']['name'].replace('/', '_')}-step{state['step']}.json"
    fs, _ = fsspec.core.url_to_fs(out)
    fs.makedirs(out.rsplit("/", 1)[0], exist_ok=True)
    write_json(out, res)
    res["path"] = out
    return res


def print_results(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"raylm eval: {res['run']} step {res['step']}", show_header=True)
    t.add_column("metric")
    t.add_column("value", justify="right")
    lm = res["lm"]
    if lm["loss"] is not None:
        t.add_row("loss (nats/token)", f"{lm['loss']:.4f}")
        t.add_row("perplexity", f"{lm['ppl']:.2f}")
        if lm.get("bpb") is not None:
            t.add_row("bits per byte", f"{lm['bpb']:.4f}")
        t.add_row("next-token accuracy", f"{lm['token_accuracy']:.2%}")
        t.add_row("tokens scored", f"{lm['tokens']:,}")
    for name, s in (res.get("lm_sources") or {}).items():  # a mixture's sources
        t.add_row(f"loss of source {name}", loss_text(s["loss"], s.get("bpb")))
    task = res.get("task")
    if task:
        t.add_row("examples", f"{task['examples']:,}")
        t.add_row("exact match (greedy)", f"{task['exact_match']:.2%}")
        t.add_row("BLEU (greedy)", f"{task['bleu']:.2f}")
        if task.get("accuracy") is not None:
            t.add_row(f"accuracy ({task['labels']} labels)", f"{task['accuracy']:.2%}")
            t.add_row("macro-F1", f"{task['macro_f1']:.4f}")
            t.add_row(f"majority baseline ({task['majority_label'].strip()!r}): accuracy", f"{task['majority']['accuracy']:.2%}")
            t.add_row("majority baseline: macro-F1", f"{task['majority']['macro_f1']:.4f}")
    Console().print(t)
    print(f"raylm eval: results in {res['path']}")
