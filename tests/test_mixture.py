"""Sampling by weight across sources (training/mixture.py): proportions, determinism, resume, schedules,
epochs per source as pure functions; then the loader and the Trainer (no Ray) on real shards of two sources."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from raylm.training.mixture import MixturePlan, source_of_slots, weights_at
from tests.conftest import manifest


def _run(plan: MixturePlan, steps: range, drawn: np.ndarray):
    out = []
    for s in steps:
        src, ids, drawn = plan.step(s, drawn)
        out.append((src, ids))
    return out, drawn


def test_thousand_steps_within_one_percent_and_identical_across_runs():
    plan = MixturePlan([5000, 700], ["web", "books"], [(None, {"web": 0.8, "books": 0.2})], seed=3, slots=32)
    a, drawn = _run(plan, range(1000), np.zeros(2, np.int64))
    b, _ = _run(plan, range(1000), np.zeros(2, np.int64))
    counts = np.bincount(np.concatenate([s for s, _ in a]), minlength=2)
    assert abs(counts[0] / counts.sum() - 0.8) < 0.01 and abs(counts[1] / counts.sum() - 0.2) < 0.01
    assert (drawn == counts).all()
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(a, b))


def test_resume_from_the_position_in_every_source_is_exact():
    plan = MixturePlan([900, 130, 40], ["a", "b", "c"], [(None, {"a": 0.5, "b": 0.3, "c": 0.2})], seed=0, slots=24)
    whole, _ = _run(plan, range(400), np.zeros(3, np.int64))
    first, saved = _run(plan, range(250), np.zeros(3, np.int64))  # killed after step 250, its state checkpointed
    rest, _ = _run(plan, range(250, 400), saved)
    assert all((x[0] == y[0]).all() and (x[1] == y[1]).all() for x, y in zip(whole, first + rest))


def test_schedule_switches_at_the_step_and_zero_weight_is_never_drawn():
    schedule = [(800, {"web": 1.0, "task": 0.0}), (None, {"web": 0.5, "task": 0.5})]
    plan = MixturePlan([10_000, 10_000], ["web", "task"], schedule, seed=1, slots=16)
    steps, _ = _run(plan, range(1000), np.zeros(2, np.int64))
    before = np.concatenate([s for s, _ in steps[:800]])
    after = np.concatenate([s for s, _ in steps[800:]])
    assert (before == 0).all()
    assert abs((after == 1).mean() - 0.5) < 0.01
    assert weights_at(schedule, ["web", "task"], 799).tolist() == [1.0, 0.0] and weights_at(schedule, ["web", "task"], 800).tolist() == [0.5, 0.5]


def test_each_window_of_a_source_once_per_epoch_in_its_own_order():
    plan = MixturePlan([37, 400], ["small", "big"], [(None, {"small": 0.5, "big": 0.5})], seed=5, slots=10)
    steps, drawn = _run(plan, range(30), np.zeros(2, np.int64))
    small = np.concatenate([ids[src == 0] for src, ids in steps])
    assert drawn[0] == len(small) > 2 * 37
    for e in range(len(small) // 37):  # every full epoch of the small source is a permutation of its windows
        assert sorted(small[e * 37 : (e + 1) * 37]) == list(range(37))
    assert list(small[:37]) != list(small[37:74])  # a new order each epoch


@given(st.lists(st.floats(0.01, 1.0), min_size=1, max_size=6), st.integers(0, 10**9), st.integers(1, 4000))
def test_every_prefix_of_slots_tracks_the_weights(w, first, n):
    src = source_of_slots(first, n, np.array(w))
    share = np.array(w) / sum(w)
    counts = np.bincount(src, minlength=len(w))
    assert counts.sum() == n and (np.abs(counts - n * share) <= 2 + 2 * np.log2(n + 1)).all()


def _two_sources(tmp_path):
    """A manifest with two sources' shards (the shape the data stage will write for data.sources)."""
    from raylm.core.manifest import write_manifest
    from raylm.pipelines.shards import ShardWriter

    rng, srcs = np.random.default_rng(0), {}
    for name, docs, base in (("web", 60, 0), ("books", 15, 30000)):
        w = ShardWriter(str(tmp_path), f"train/{name}", np.dtype(np.uint16), shard_tokens=4000)
        for _ in range(docs):
            lengths = rng.integers(50, 300, size=4)
            w.add((base + rng.integers(0, 20000, size=int(lengths.sum()))).astype(np.uint32), lengths)  # books: ids >= 30000
        srcs[name] = w.close()
    train = {"tokens": sum(s["tokens"] for s in srcs.values()), "docs": sum(s["docs"] for s in srcs.values()), "sources": srcs}
    train["shards"] = [sh for s in srcs.values() for sh in s["shards"]]
    splits = {"train": train, "val": {"tokens": 0, "docs": 0, "shards": []}}
    write_manifest(str(tmp_path), manifest(splits=splits, tokenizer={"name": "t", "n_vocab": 50000, "eot": 0}))
    return str(tmp_path)


@pytest.mark.slow  # real shards and steps: ~5-15 s, without Ray: beside the Ray tests (own_ray)
@pytest.mark.own_ray
def test_loader_draws_by_weight_disjoint_ranks_and_resumes_exactly(tmp_path):
    from raylm.training.data import ShardWindows
    from raylm.training.mixture import MixtureLoader

    root = _two_sources(tmp_path)
    sources = {n: ShardWindows(root, "train", 32, source=n) for n in ("web", "books")}
    schedule = [(None, {"web": 0.8, "books": 0.2})]

    def loaders():
        return [MixtureLoader(sources, schedule, micro_batch=4, rank=r, world=2, accum=2, seed=1) for r in range(2)]

    def steps(ls, n):
        out, counts = [], []
        for _ in range(n):
            batch = [torch.cat([ld.next()[0] for _ in range(2)]) for ld in ls]  # each rank's two micro-batches
            out.append(batch)
            counts.append(ls[0].counts.copy())
        return out, counts

    a, counts = steps(loaders(), 1000)
    total = np.sum(counts, axis=0)
    assert abs(total[0] / total.sum() - 0.8) < 0.01 and abs(total[1] / total.sum() - 0.2) < 0.01
    books = sum(int((b[r] >= 30000).all(dim=1).sum()) for b in a for r in range(2))  # windows read from books' shards
    assert books == total[1]
    assert all(not torch.equal(b[0], b[1]) for b in a[:50])  # the ranks read different windows
    first, _ = steps(ls := loaders(), 400)
    saved = [ld.state_dict() for ld in ls]
    resumed = loaders()
    for ld, state in zip(resumed, saved):
        ld.load_state_dict(state)
    rest, _ = steps(resumed, 600)
    assert all(torch.equal(x[r], y[r]) for x, y in zip(a, first + rest) for r in range(2))
    assert saved[0] == saved[1] and saved[0]["step"] == 400 and sum(saved[0]["drawn"].values()) == 400 * 16


def _mixture_run(tmp_path, weights=None):
    """Shards of two sources (train and val each; vocab 512: web tokens < 256, books >= 256) and a tiny job on them."""
    from raylm.cluster.recipe import load_config
    from raylm.core.manifest import write_manifest
    from raylm.pipelines.shards import ShardWriter
    from tests.conftest import ROOT

    rng, splits = np.random.default_rng(1), {}
    for split, docs in (("train", 40), ("val", 6)):
        srcs = {}
        for name, lo in (("web", 0), ("books", 256)):
            w = ShardWriter(str(tmp_path / "data"), f"{split}/{name}", np.dtype(np.uint16), shard_tokens=3000)
            for _ in range(docs):
                lengths = rng.integers(40, 200, size=3)
                w.add((lo + rng.integers(0, 256, size=int(lengths.sum()))).astype(np.uint32), lengths)
            srcs[name] = {**w.close(), "bytes": 1}
        shards = [sh for s in srcs.values() for sh in s["shards"]]
        splits[split] = {"tokens": sum(s["tokens"] for s in srcs.values()), "docs": 1, "bytes": 2, "shards": shards, "sources": srcs}
    tok = {"name": "synthetic", "n_vocab": 512, "eot": 0, "sha256": "x"}
    man = {"format": "raylm-shards", "version": 1, "dtype": "uint16", "tokenizer": tok, "splits": splits}
    write_manifest(str(tmp_path / "data"), {**man, "sources": {"web": {"weight": 0.8}, "books": {"weight": 0.2}}})
    over = [f"storage_path={tmp_path}", "name=mix", f"train.data_path={tmp_path / 'data'}", "train.max_steps=40"]
    over += ["train.model={n_layer: 1, n_head: 2, d_model: 32, seq_len: 32}", "train.batch={micro_batch_size: 2, global_batch_tokens: 128}"]
    over += ["train.scaling={num_workers: 1, use_gpu: false, resources_per_worker: {CPU: 1}}", "train.eval.every=1000"]
    over += ["train.eval.tasks=[]"]  # local.yaml's downstream tasks need a real tokenizer: these shards are synthetic
    over += [f"train.mixture={weights}"] if weights else []
    return load_config(str(ROOT / "cluster" / "recipes" / "local.yaml"), over).train_job()


@pytest.mark.slow  # real shards and steps: ~5-15 s, without Ray: beside the Ray tests (own_ray)
@pytest.mark.own_ray
def test_trainer_steps_count_tokens_per_source_and_resume_bitwise(tmp_path):
    from raylm.training.worker import Trainer

    job = _mixture_run(tmp_path)
    a = Trainer(job, 0, 1, torch.device("cpu"))
    rows = [a.train_step() for _ in range(40)]
    tokens = np.sum([[r["source_tokens"]["web"], r["source_tokens"]["books"]] for r in rows], axis=0)
    assert tokens.sum() == 40 * 128 and abs(tokens[0] / tokens.sum() - 0.8) < 0.03  # 160 windows: discrepancy, not noise
    b = Trainer(job, 0, 1, torch.device("cpu"))
    first = [b.train_step() for _ in range(25)]
    state = b.state_dict()
    c = Trainer(job, 0, 1, torch.device("cpu"))
    c.load_state_dict(state)
    rest = [c.train_step() for _ in range(15)]
    assert [r["loss"] for r in first + rest] == [r["loss"] for r in rows]
    assert [r["source_tokens"] for r in first + rest] == [r["source_tokens"] for r in rows]


@pytest.mark.slow  # real shards and steps: ~5-15 s, without Ray: beside the Ray tests (own_ray)
@pytest.mark.own_ray
def test_a_schedule_and_an_unknown_source(tmp_path):
    from raylm.training.worker import Trainer

    job = _mixture_run(tmp_path, "[{until_step: 10, weights: {web: 1.0, books: 0.0}}, {weights: {web: 0.0, books: 1.0}}]")
    t = Trainer(job, 0, 1, torch.device("cpu"))
    rows = [t.train_step() for _ in range(14)]
    assert all(r["source_tokens"] == {"web": 128, "books": 0} for r in rows[:10])
    assert all(r["source_tokens"] == {"web": 0, "books": 128} for r in rows[10:])
    with pytest.raises(ValueError, match="names \\['code'\\]"):
        Trainer(_mixture_run(tmp_path / "b", "[{weights: {code: 1.0}}]"), 0, 1, torch.device("cpu"))


@pytest.mark.slow  # real shards and steps: ~5-15 s, without Ray: beside the Ray tests (own_ray)
@pytest.mark.own_ray
def test_validation_per_source_beside_the_whole_split(tmp_path):
    from raylm.training.worker import Trainer

    t = Trainer(_mixture_run(tmp_path), 0, 1, torch.device("cpu"))
    for _ in range(5):
        t.train_step()
    v = t.validation()
    assert set(v["val_sources"]) == {"web", "books"} and v["val_loss"] > 0
    web, books = v["val_sources"]["web"], v["val_sources"]["books"]
    assert web["loss"] == t.evaluate(*t.val_sources["web"])["loss"] and web["loss"] != books["loss"]
    tokens = t.manifest.splits["val"].sources["books"].tokens
    assert books["bpb"] == books["loss"] * tokens / (1 * np.log(2))  # the synthetic manifest says 1 byte
    # beside the whole split's: the sources' losses weighted as training draws them (the manifest's 0.8 / 0.2)
    mix = v["val_mixture"]
    assert mix["weights"] == pytest.approx({"web": 0.8, "books": 0.2})
    assert mix["loss"] == pytest.approx(0.8 * web["loss"] + 0.2 * books["loss"])
    assert mix["bpb"] == pytest.approx(0.8 * web["bpb"] + 0.2 * books["bpb"])


def test_weighted_total_leaves_out_evaluation_only_sources():
    from raylm.training.mixture import weighted_total

    per = {"a": {"loss": 2.0, "bpb": 1.0}, "b": {"loss": 4.0, "bpb": None}, "c": {"loss": 9.0, "bpb": 3.0}}
    got = weighted_total(per, {"a": 3.0, "b": 1.0, "c": 0.0})
    assert got == {"loss": 2.5, "weights": {"a": 0.75, "b": 0.25}}  # b has no bytes: no weighted bpb
    assert weighted_total(per, {"a": 1.0, "c": 1.0})["bpb"] == 2.0
    assert weighted_total(per, {"c": 0.0}) is None


def test_weights_come_from_the_recipe_then_the_manifest():
    from raylm.training.config import TrainConfig
    from raylm.training.mixture import schedule_of

    empty = {"tokens": 0, "docs": 0, "shards": []}
    train = {**empty, "sources": {"web": empty, "books": empty}}
    man = manifest(splits={"train": train, "val": empty}, sources={"web": {"weight": 0.8}, "books": {"weight": 0.2}})
    t = TrainConfig()
    assert schedule_of(t, man) == [(None, {"web": 0.8, "books": 0.2})]
    assert schedule_of(t, man, {"web": 0.5, "books": 0.5}) == [(None, {"web": 0.5, "books": 0.5})]  # a weight changed since
    assert schedule_of(t, man, {"web": 0.5}) == [(None, {"web": 0.8, "books": 0.2})]  # another recipe's sources: the manifest's
    staged = TrainConfig(mixture=[{"until_step": 5, "weights": {"web": 1.0}}, {"weights": {"books": 1.0}}])
    assert schedule_of(staged, man, {"web": 0.5, "books": 0.5}) == [(5, {"web": 1.0}), (None, {"books": 1.0})]


def test_a_resume_with_other_source_weights_is_refused(tmp_path):
    from raylm.core.schema import ConfigError
    from raylm.training import checkpoint
    from raylm.training.config import TrainJob
    from raylm.training.driver import check_resume

    def recipe(web: float) -> dict:
        sources = {"web": {"inputs": [{"path": "w.jsonl"}], "weight": web}, "books": {"inputs": [{"path": "b.jsonl"}], "weight": 0.2}}
        return {"storage_path": str(tmp_path), "name": "r", "data": {"sources": sources}, "train": {}}

    job = TrainJob.from_recipe(recipe(0.8))
    ckpt = tmp_path / "r" / "train" / "checkpoint_000000"
    ckpt.mkdir(parents=True)
    state = {"step": 5, "tokenizer": {"name": "t", "sha256": "x"}, "config": {**job.recipe, "train": job.train.model_dump(mode="json")}}
    checkpoint.save(str(ckpt), 0, state)
    check_resume(job)  # the same weights: resumes
    with pytest.raises(ConfigError, match="data.sources weights are {'web': 0.8, 'books': 0.2} there, {'web': 0.5, 'books': 0.2} here"):
        check_resume(TrainJob.from_recipe(recipe(0.5)))
