"""The shard loader: a real manifest and real .npy shards written by the pipeline's ShardWriter."""

import numpy as np
import pytest

from raylm.core.manifest import write_manifest
from raylm.pipelines.shards import ShardWriter
from raylm.training.data import ShardWindows, TrainLoader, permute, val_windows
from tests.conftest import manifest


@pytest.fixture
def data_root(tmp_path):
    rng = np.random.default_rng(0)
    w = ShardWriter(str(tmp_path), "train", np.dtype(np.uint16), shard_tokens=5000)
    for _ in range(40):
        lengths = rng.integers(50, 400, size=5)
        w.add(rng.integers(0, 60000, size=int(lengths.sum())).astype(np.uint32), lengths)
    splits = {"train": w.close(), "val": {"tokens": 0, "docs": 0, "shards": []}}
    write_manifest(str(tmp_path), manifest(splits=splits, tokenizer={"name": "t", "n_vocab": 60000, "eot": 0}))
    return str(tmp_path)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000, 12345])
def test_permute_is_a_bijection(n):
    out = permute(np.arange(n), n, key=3)
    assert sorted(out.tolist()) == list(range(n))
    if n > 100:
        assert not np.array_equal(out, np.arange(n)) and not np.array_equal(out, permute(np.arange(n), n, key=4))


def test_windows_cover_shards(data_root):
    w = ShardWindows(data_root, "train", seq_len=64)
    assert len(w.arrays) > 1 and w.n == sum((len(a) - 1) // 64 for a in w.arrays)
    first = w.window(np.array([0]))[0]
    assert np.array_equal(first, np.asarray(w.arrays[0][:65], dtype=np.int64))


def test_ranks_are_disjoint_and_deterministic(data_root):
    w = ShardWindows(data_root, "train", seq_len=64)
    world, B = 3, 4
    loaders = [TrainLoader(w, B, r, world, seed=7) for r in range(world)]
    seen = []
    for step in range(loaders[0].steps_per_epoch):
        for ld in loaders:
            seen.extend(ld.ids_at(0, step).tolist())
    assert len(seen) == len(set(seen)) == loaders[0].steps_per_epoch * world * B
    again = TrainLoader(w, B, 1, world, seed=7)
    assert np.array_equal(again.ids_at(2, 5), loaders[1].ids_at(2, 5))
    assert not np.array_equal(loaders[1].ids_at(0, 0), loaders[1].ids_at(1, 0))  # a new order each epoch


def test_resume_from_state_gives_the_same_batches(data_root):
    w = ShardWindows(data_root, "train", seq_len=32)
    a = TrainLoader(w, 2, 0, 2, seed=1)
    for _ in range(a.steps_per_epoch - 2):
        a.next()
    state = a.state_dict()
    rest = [a.next()[0] for _ in range(5)]  # crosses into epoch 1
    b = TrainLoader(w, 2, 0, 2, seed=1)
    b.load_state_dict(state)
    assert all(bool((x == b.next()[0]).all()) for x in rest)
    assert a.state_dict()["epoch"] == 1


def test_inputs_and_targets_shift_by_one(data_root):
    w = ShardWindows(data_root, "train", seq_len=16)
    x, y, mask = TrainLoader(w, 2, 0, 1, seed=0).next()
    assert x.shape == y.shape == (2, 16) and bool((x[:, 1:] == y[:, :-1]).all())
    assert mask is None  # plain text: every target counts


def test_val_windows_fixed(data_root):
    w = ShardWindows(data_root, "train", seq_len=64)
    v = val_windows(w, 10)
    assert len(v) == 10 and np.array_equal(v, val_windows(w, 10)) and v[0] == 0 and v[-1] == w.n - 1


def test_bits_per_byte_from_a_manifest():
    import math

    from raylm.training.metrics import bits_per_byte, split_bpb

    man = manifest(splits={"val": {"tokens": 300, "bytes": 1200, "docs": 1, "shards": []}, "train": {"tokens": 10, "docs": 1, "shards": []}})
    assert bits_per_byte(math.log(2), 100, 50) == pytest.approx(2.0)  # 1 bit a token, 2 tokens a byte
    assert split_bpb(2.0, man, "val") == pytest.approx(2.0 * 300 / (1200 * math.log(2)))
    assert split_bpb(None, man, "val") is None and split_bpb(2.0, man, "train") is None  # no loss; a manifest without bytes
    assert split_bpb(2.0, man.model_copy(update={"loss_mask": True}), "val") is None  # a masked loss counts only completions


def test_loss_text_shows_bits_per_byte_when_known():
    from raylm.training.metrics import loss_text

    assert loss_text(6.43512, 2.85241) == "6.4351 (2.8524 bits/byte)"
    assert loss_text(6.43512, None) == "6.4351"
