"""`raylm eval --tasks ... --workers N`: the downstream tasks scored on Ray, a Ray Data `map_batches` over an actor
pool of N `TaskScorer`s, each holding the model (one CPU each, or one GPU each with --device cuda).

The driver reads the task files (its counts of skipped lines included) and hands the tasks to the actors, so the
files need be on the driver's machine only; each actor loads the checkpoint itself (a run directory or checkpoint
on storage every node reads, or a URL). An example is a row: the actor scores a batch of examples, each one's
choices together (they share the context), in forward passes of up to `batch` sequences; examples go out longest
first, so a batch pads little. Scores come back one row per (example, choice) and are put back in order, so the
metrics are training/tasks.py's `score` of the same log-likelihoods one process computes (within float noise:
the sequences are batched differently).
"""

from __future__ import annotations

import numpy as np

from raylm.core.taskfile import Task
from raylm.training.tasks import Scored, example_loglikelihoods, prepare, score, with_core

EXAMPLES_PER_CALL = 32  # examples an actor scores per map_batches call (packed: 8 a forward pass)


class TaskScorer:
    """A Ray Data actor: the checkpoint's model and the tasks tokenized once; a batch of (task, example) rows in,
    a row per (task, example, choice) out, with its log-likelihood and whether it was the greedy continuation."""

    def __init__(self, checkpoint: str, tasks: list[Task], device: str = "cpu", batch: int = 32):
        from raylm.training.checkpoint import load_model

        self.model, self.enc, _, _ = load_model(checkpoint, device)
        self.pairs = [prepare(t, self.enc).pairs for t in tasks]
        self.device, self.batch = device, batch

    def __call__(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        examples, keys = [], []
        for t, i in zip(rows["task"].tolist(), rows["example"].tolist()):
            examples.append(self.pairs[t][i])
            keys += [(t, i, j) for j in range(len(self.pairs[t][i]))]
        scored = [s for ex in example_loglikelihoods(self.model, examples, self.enc.n_vocab, self.device, self.batch) for s in ex]
        t, i, j = (np.array(col, dtype=np.int64) for col in zip(*keys))
        return {"task": t, "example": i, "choice": j, "loglik": np.array([s.loglik for s in scored]), "greedy": np.array([s.greedy for s in scored])}


def _rows_longest_first(tasks: list[Task]) -> list[dict]:
    """A row per example, the longest (context and its longest choice, in characters: the driver has no
    tokenizer) first."""
    rows = []
    for t, task in enumerate(tasks):
        for i, e in enumerate(task.examples):
            rows.append((-(len(task.header.fewshot) + len(e.context) + max(map(len, e.continuations))), t, i))
    return [{"task": t, "example": i} for _, t, i in sorted(rows)]


def score_on_ray(checkpoint: str, tasks: list[Task], workers: int, device: str = "cpu", batch: int = 32) -> dict:
    """Every task's metrics and the aggregate, as run_tasks gives them, scored by `workers` actors that each load
    the checkpoint (a checkpoint directory every node reads, or a URL)."""
    import ray.data

    gpu = str(device).startswith("cuda")
    rows = _rows_longest_first(tasks)
    by_key = {}
    if rows:  # tasks whose every line was skipped leave nothing to score
        ds = ray.data.from_items(rows, override_num_blocks=max(1, 4 * workers))
        out = ds.map_batches(
            TaskScorer,
            fn_constructor_kwargs={"checkpoint": checkpoint, "tasks": tasks, "device": device, "batch": batch},
            batch_size=EXAMPLES_PER_CALL,
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=0 if gpu else 1,
            num_gpus=1 if gpu else 0,
        )
        by_key = {(r["task"], r["example"], r["choice"]): Scored(float(r["loglik"]), bool(r["greedy"])) for r in out.iter_rows()}
    results = {}
    for t, task in enumerate(tasks):
        scored = [by_key[(t, i, j)] for i, e in enumerate(task.examples) for j in range(len(e.continuations))]
        results[task.header.name] = score(task, scored)
    return with_core(results)
