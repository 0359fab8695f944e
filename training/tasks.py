"""Downstream tasks scored by log-likelihood as lm-evaluation-harness scores them (the task file format and its
reader: core/taskfile.py).

- multiple choice: the log-likelihood of each choice given the context; `acc` takes the choice of the highest sum
  of log-probs, `acc_norm` of the highest sum divided by the choice's length in UTF-8 bytes;
- cloze: `acc`, whether greedy decoding gives the continuation (every one of its tokens the argmax), and the
  continuation's bits per byte.
A context and continuation are tokenized as lm-eval does: whole = encode(context + continuation), the
continuation's tokens those of whole past encode(context) (the context's trailing whitespace, spaces and newlines
alike, moves to the continuation first). Inputs longer than the model's window keep their last seq_len + 1 tokens
(truncated from the left; a continuation longer than the window keeps its last seq_len tokens). The aggregate is CORE's: each task's
accuracy centered by its random baseline, (acc - b) / (1 - b), then averaged over tasks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from raylm.core.taskfile import Cloze, Task, TaskFileError, read_task


def encode_pair(enc, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split of context and continuation into tokens (see the module's docstring). An empty context is
    the end-of-text token, as every training document begins (lm-eval's prefix token)."""
    moved = trailing_space(context)  # any trailing whitespace, newlines included, as lm-eval
    if moved:
        context, continuation = context[: -len(moved)], moved + continuation
    if context == "":
        cont = enc.encode_ordinary(continuation)
        return ([enc.eot_token], cont) if cont[:1] != [enc.eot_token] else (cont[:1], cont[1:])
    whole = enc.encode_ordinary(context + continuation)
    ctx = enc.encode_ordinary(context)
    return ctx, whole[len(ctx) :]


def trailing_space(context: str) -> str:
    """The whitespace ending a context, which lm-eval's tokenization scores as the continuation's start."""
    return context[len(context.rstrip()) :]


@dataclass
class Scored:
    loglik: float  # sum of log p(continuation token | everything before it)
    greedy: bool  # every continuation token was the argmax


def _scored(logits: torch.Tensor, targets: list[list[int]], n_vocab: int) -> list[Scored]:
    """Each continuation's Scored from the logits (N, padded vocab) predicting its tokens, the continuations'
    rows one after another in the order of `targets`; log-softmax over the real vocabulary."""
    lp = torch.log_softmax(logits[:, :n_vocab].float(), -1)  # (N, vocab)
    target = torch.tensor([t for ts in targets for t in ts], device=lp.device)  # (N,)
    tok = lp.gather(-1, target[:, None])[:, 0].cpu().tolist()
    hit = (lp.argmax(-1) == target).cpu().tolist()
    out, i = [], 0
    for ts in targets:
        out.append(Scored(float(sum(tok[i : i + len(ts)])), all(hit[i : i + len(ts)])))
        i += len(ts)
    return out


@torch.no_grad()
def loglikelihoods(
    model, pairs: list[tuple[list[int], list[int]]], n_vocab: int, device="cpu", batch: int = 32, seq_len: int | None = None
) -> list[Scored]:
    """log p(continuation | context) of each (context ids, continuation ids), over the real vocabulary (the padded
    rows left out), in batches of `batch` sequences padded on the right (causal: padding never reaches a scored
    position), longest first so that a batch pads little (as lm-eval orders its requests); returned in the order
    given. Each input keeps its last seq_len + 1 tokens (`seq_len`: the model's, given when `model` is wrapped)."""
    window = (seq_len or model.cfg.seq_len) + 1
    order = sorted(range(len(pairs)), key=lambda k: -min(window, len(pairs[k][0]) + len(pairs[k][1])))
    out: list[Scored | None] = [None] * len(pairs)
    for i in range(0, len(order), batch):
        # a continuation longer than the window keeps its last seq_len tokens (lm-eval's truncation from the left)
        chunk = [(pairs[k][0], pairs[k][1][-(window - 1) :]) for k in order[i : i + batch]]
        seqs = [(ctx + cont)[-window:] for ctx, cont in chunk]
        width = max(len(s) for s in seqs) - 1
        x = torch.zeros(len(seqs), width, dtype=torch.long)
        for r, s in enumerate(seqs):
            x[r, : len(s) - 1] = torch.tensor(s[:-1])
        # the positions that predict each continuation, row by row
        rows = [r for r, (_, cont) in enumerate(chunk) for _ in cont]
        cols = [p for s, (_, cont) in zip(seqs, chunk) for p in range(len(s) - 1 - len(cont), len(s) - 1)]
        at = (torch.tensor(rows, device=device), torch.tensor(cols, device=device))
        logits, _ = model(x.to(device), at=at)  # (N, padded vocab)
        for k, sc in zip(order[i : i + batch], _scored(logits, [cont for _, cont in chunk], n_vocab)):
            out[k] = sc
    return out


def _packs(pairs: list[tuple[list[int], list[int]]], seq_len: int) -> bool:
    """Whether an example's choices can share one row: several, one non-empty context, all within the window."""
    ctx = pairs[0][0]
    return len(pairs) > 1 and len(ctx) > 0 and all(c == ctx for c, _ in pairs) and len(ctx) + sum(len(x) for _, x in pairs) <= seq_len


def _packed_row(pairs: list[tuple[list[int], list[int]]], width: int) -> tuple[list[int], list[int], torch.Tensor]:
    """One example as one row of `width`: the context, then each choice; the tokens, their positions (each choice
    continuing the context's: L, L + 1, ...) and the attention mask (T, T): causal, a choice seeing the context
    and itself, never another choice (padding sees the context and itself, so no row of the mask is empty)."""
    ctx = pairs[0][0]
    toks, pos, branch = list(ctx), list(range(len(ctx))), [0] * len(ctx)
    for b, (_, cont) in enumerate(pairs, 1):
        toks += cont
        pos += range(len(ctx), len(ctx) + len(cont))
        branch += [b] * len(cont)
    pad = width - len(toks)
    br = torch.tensor(branch + [-1 - j for j in range(pad)])
    mask = torch.ones(width, width, dtype=torch.bool).tril() & ((br[None, :] == 0) | (br[None, :] == br[:, None]))
    return toks + [0] * pad, pos + [0] * pad, mask


@torch.no_grad()
def _packed(model, examples: list[list[tuple[list[int], list[int]]]], n_vocab: int, device) -> list[list[Scored]]:
    """Prefix-shared scoring: each example one row (_packed_row), one forward pass for them all. A choice's first
    token is predicted at the context's last position, each later one at the choice's own previous token."""
    width = max(len(ex[0][0]) + sum(len(c) for _, c in ex) for ex in examples)
    rows = [_packed_row(ex, width) for ex in examples]
    x = torch.tensor([r[0] for r in rows], device=device)  # (B, T)
    pos = torch.tensor([r[1] for r in rows], device=device)  # (B, T)
    mask = torch.stack([r[2] for r in rows])[:, None].to(device)  # (B, 1, T, T)
    at_rows, at_cols, targets = [], [], []
    for r, ex in enumerate(examples):
        last_ctx = len(ex[0][0]) - 1
        start = last_ctx + 1
        for _, cont in ex:
            at_cols += [last_ctx, *range(start, start + len(cont) - 1)][: len(cont)]
            at_rows += [r] * len(cont)
            targets.append(cont)
            start += len(cont)
    at = (torch.tensor(at_rows, device=device), torch.tensor(at_cols, device=device))
    logits, _ = model(x, layout=(pos, mask), at=at)  # (N, padded vocab)
    scored = iter(_scored(logits, targets, n_vocab))
    return [[next(scored) for _ in ex] for ex in examples]


@torch.no_grad()
def example_loglikelihoods(
    model, examples: list[list[tuple[list[int], list[int]]]], n_vocab: int, device="cpu", batch: int = 32, seq_len: int | None = None
) -> list[list[Scored]]:
    """Each example's pairs scored. A multiple-choice example whose context and choices fit the window in one row
    is packed (the context computed once for all its choices: _packed, `batch` // 4 examples a pass, longest
    first); the others go through loglikelihoods, as lm-eval computes each pair."""
    window = seq_len or model.cfg.seq_len
    packed = sorted((k for k, ex in enumerate(examples) if _packs(ex, window)), key=lambda k: -sum(len(c) for _, c in examples[k]))
    out: list[list[Scored] | None] = [None] * len(examples)
    per = max(1, batch // 4)
    for i in range(0, len(packed), per):
        for k, scored in zip(packed[i : i + per], _packed(model, [examples[k] for k in packed[i : i + per]], n_vocab, device)):
            out[k] = scored
    rest = [k for k in range(len(examples)) if out[k] is None]
    flat = iter(loglikelihoods(model, [p for k in rest for p in examples[k]], n_vocab, device, batch, seq_len))
    for k in rest:
        out[k] = [next(flat) for _ in examples[k]]
    return out


def _example_pairs(task: Task, enc) -> list[list[tuple[list[int], list[int]]]]:
    """Each example's (context ids, continuation ids) pairs: one for a cloze example, one per choice."""
    pre = task.header.fewshot
    return [[encode_pair(enc, pre + e.context, c) for c in e.continuations] for e in task.examples]


def score(task: Task, scored: list[Scored]) -> dict:
    """A task's metrics from the loglikelihoods of its pairs (its examples in order, each example's continuations
    in order): per example and overall."""
    rows, k = [], 0
    for e in task.examples:
        if isinstance(e, Cloze):
            s = scored[k]
            k += 1
            nbytes = len((trailing_space(task.header.fewshot + e.context) + e.continuation).encode())  # what was scored
            rows.append({"loglik": s.loglik, "acc": float(s.greedy), "bpb": -s.loglik / (math.log(2) * nbytes)})
            continue
        ll = [scored[k + j].loglik for j in range(len(e.choices))]
        k += len(e.choices)
        norm = [v / len(c.encode()) for v, c in zip(ll, e.choices)]
        pick, pick_norm = max(range(len(ll)), key=ll.__getitem__), max(range(len(norm)), key=norm.__getitem__)
        rows.append({"loglik": ll, "acc": float(pick == e.gold), "acc_norm": float(pick_norm == e.gold)})
    n = len(rows)
    res = {"name": task.header.name, "kind": task.header.kind, "examples": n, "skipped": dict(task.skipped), "random_baseline": task.baseline}
    for key in ("acc", "acc_norm", "bpb"):
        vals = [r[key] for r in rows if key in r]
        if vals:
            res[key] = sum(vals) / len(vals)
    res["centered"] = centered(res.get("acc", 0.0), task.baseline)
    res["per_example"] = rows
    return res


def with_core(results: dict) -> dict:
    """The tasks' results and the CORE-style aggregate: the mean of their centered accuracies (None without tasks)."""
    core = sum(r["centered"] for r in results.values()) / len(results) if results else None
    return {"tasks": results, "core": core}


def centered(acc: float, baseline: float) -> float:
    """CORE's centering: 0 at the random baseline, 1 at perfect accuracy."""
    return (acc - baseline) / (1 - baseline) if baseline < 1 else 0.0


@dataclass
class Prepared:
    """A task with each example's (context ids, continuation ids) pairs, tokenized once."""

    task: Task
    pairs: list[list[tuple[list[int], list[int]]]]


def prepare(task: Task, enc) -> Prepared:
    return Prepared(task, _example_pairs(task, enc))


@torch.no_grad()
def sharded_results(model, prepared: list[Prepared], n_vocab: int, device, rank: int, world: int, seq_len: int) -> dict:
    """run_tasks across `world` ranks (a collective): rank r scores examples r, r + world, ..., each example its own
    batch (so its numbers never depend on what it was batched with); the scores are gathered back in example order,
    so every rank gets what one worker computes. Every rank runs the same number of forward passes (FSDP's
    collectives need it): a rank short of examples scores its first one again and drops it."""
    mine = []
    for p in prepared:
        idx = list(range(rank, len(p.pairs), world))
        rounds = -(-len(p.pairs) // world)
        scored = [example_loglikelihoods(model, [p.pairs[i]], n_vocab, device, seq_len=seq_len)[0] for i in idx]
        for _ in range(rounds - len(idx)):
            example_loglikelihoods(model, [p.pairs[idx[0] if idx else 0]], n_vocab, device, seq_len=seq_len)
        mine.append(dict(zip(idx, scored)))
    gathered = [mine]
    if world > 1:
        gathered = [None] * world
        torch.distributed.all_gather_object(gathered, mine)
    results = {}
    for t, p in enumerate(prepared):
        by_example = {i: s for g in gathered for i, s in g[t].items()}
        results[p.task.header.name] = score(p.task, [s for i in range(len(p.pairs)) for s in by_example[i]])
    return with_core(results)


def metric_row(res: dict) -> dict:
    """The flat metrics of sharded_results for a metrics row: tasks/<name>/<acc|acc_norm|bpb>, tasks/core."""
    row = {f"tasks/{name}/{k}": r[k] for name, r in res["tasks"].items() for k in ("acc", "acc_norm", "bpb") if k in r}
    row["tasks/core"] = res["core"]
    return row


def scalars(row: dict) -> dict:
    """The task metrics of a metrics row (tasks/<name>/<acc|acc_norm|bpb>, tasks/core): what TensorBoard, MLflow
    and W&B get beside the loss."""
    return {k: v for k, v in row.items() if k.startswith("tasks/") and isinstance(v, (int, float))}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion k / n (95% at z = 1.96): where the accuracy of a task
    of n examples could lie."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    mid, half = (p + z * z / (2 * n)), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (mid - half) / (1 + z * z / n), (mid + half) / (1 + z * z / n)


def summary_lines(paths: list[str], row: dict) -> list[str]:
    """A line per task of `paths` with its accuracy in `row` (a metrics row or metric_row's): the count of examples
    right, the 95% interval, the random baseline and whether the interval lies above it; then the aggregate."""
    lines = []
    for t in (read_task(f) for f in task_files(paths)):
        name, n, b = t.header.name, len(t.examples), t.baseline
        acc = row.get(f"tasks/{name}/acc")
        if acc is None:
            continue
        k = round(acc * n)
        lo, hi = wilson(k, n)
        verdict = "above chance" if lo > b else "not clearly above chance"
        bpb = f", {row[f'tasks/{name}/bpb']:.3f} bits/byte" if row.get(f"tasks/{name}/bpb") is not None else ""
        lines.append(f"{name}: acc {acc:.2%} ({k}/{n}, 95% interval {lo:.1%}-{hi:.1%}){bpb}; random {b:.0%}: {acc - b:+.1%}, {verdict}")
    if row.get("tasks/core") is not None:
        lines.append(f"CORE (mean centered accuracy): {row['tasks/core']:.4f}")
    return lines


def run_tasks(model, enc, tasks: list[Task], device: str = "cpu") -> dict:
    """Every task's metrics and the CORE-style aggregate (the mean of the tasks' centered accuracies)."""
    results = {}
    for t in tasks:
        scored = example_loglikelihoods(model, _example_pairs(t, enc), enc.n_vocab, device)
        results[t.header.name] = score(t, [s for ex in scored for s in ex])
    return with_core(results)


def task_files(paths: list[str]) -> list[str]:
    """The task files `paths` name: files as given, directories by their *.jsonl (sorted). A path that does not
    exist is a FileNotFoundError naming it."""
    import fsspec

    out = []
    for p in paths:
        fs, _ = fsspec.core.url_to_fs(p)
        if not fs.exists(p):
            raise FileNotFoundError(f"{p}: no such task file or directory")
        if fs.isdir(p):
            found = sorted(fs.glob(f"{p.rstrip('/')}/*.jsonl"))
            if not found:
                raise TaskFileError(f"{p}: a directory without task files (*.jsonl)")
            out += [fs.unstrip_protocol(f) if "://" in p else f for f in found]
        else:
            out.append(p)
    return out


def eval_tasks(checkpoint: str, paths: list[str], out_dir: str, device: str = "cpu", workers: int = 0, connect=None) -> dict:
    """`raylm eval --tasks`: the tasks of `paths` on the checkpoint (a run directory's latest or a checkpoint),
    in this process (`workers` 0) or on `workers` Ray Data actors (training/tasks_ray.py; `connect` starts or
    joins Ray once the files and the checkpoint are found), written to `{out_dir}/tasks.json`; returns the
    results. `seconds`: the scoring (on Ray, each actor loading the model included)."""
    import os
    import time

    from raylm.core.io import absolute, makedirs, write_json
    from raylm.training.checkpoint import META, check_complete, latest, load_model, read_meta

    tasks = [read_task(p) for p in task_files(paths)]  # every file read before the model loads
    if workers:
        from raylm.training.tasks_ray import score_on_ray

        ckpt = latest(absolute(checkpoint))
        check_complete(ckpt)  # here, in one line, rather than in every actor
        meta = read_meta(f"{ckpt}/{META}")
        if connect is not None:
            connect()
        t0 = time.perf_counter()
        head = {"checkpoint": ckpt, "run": os.path.basename(meta["run_dir"].rstrip("/")), "step": meta["step"], "workers": workers}
        res = {**head, **score_on_ray(ckpt, tasks, workers, device)}
    else:
        model, enc, state, ckpt = load_model(checkpoint, device)
        t0 = time.perf_counter()
        res = {"checkpoint": ckpt, "run": state["config"]["name"], "step": state["step"], **run_tasks(model, enc, tasks, device)}
    res["seconds"] = round(time.perf_counter() - t0, 2)
    res["path"] = f"{out_dir}/tasks.json"
    makedirs(out_dir)
    write_json(res["path"], res)
    return res


def print_task_results(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"raylm eval: tasks on {res['run']} step {res['step']}")
    for col in ("task", "kind", "examples", "skipped", "acc", "acc_norm", "bits/byte", "random", "centered"):
        t.add_column(col, justify="left" if col in ("task", "kind") else "right")
    pct = lambda v: "" if v is None else f"{v:.2%}"  # noqa: E731
    for name, r in res["tasks"].items():
        skipped = sum(r["skipped"].values())
        bpb = f"{r['bpb']:.4f}" if r.get("bpb") is not None else ""
        accs = (pct(r.get("acc")), pct(r.get("acc_norm")), bpb, pct(r["random_baseline"]), f"{r['centered']:.4f}")
        t.add_row(name, r["kind"], f"{r['examples']:,}", f"{skipped:,}", *accs)
    Console().print(t)
    for name, r in res["tasks"].items():
        for why, n in r["skipped"].items():
            print(f"raylm eval: {name}: {n} line(s) skipped: {why}")
    if res["core"] is not None:
        print(f"raylm eval: CORE (mean centered accuracy over {len(res['tasks'])} task(s)): {res['core']:.4f}")
    print(f"raylm eval: results in {res['path']}")
