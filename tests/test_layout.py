"""The write stage's layout (pipelines/layout.py): where each document and table row goes, computed group by
group from counts, equals the plain sequential definition whatever the grouping. Pure: no Ray."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from raylm.pipelines import layout
from raylm.pipelines.layout import Counts, ShardMap

K = 4  # streams: train and val of two sources (one source: streams 0 and 1, the splits)


def _sequential(lengths: list[int], streams: list[int], shard_tokens: int) -> list[tuple[int, int]]:
    """The definition, one document at a time: (shard, index in shard) of each document in its stream."""
    out, start, shard, index, window = [], [0] * K, [-1] * K, [0] * K, [None] * K
    for n, sp in zip(lengths, streams):
        w = start[sp] // shard_tokens
        if w != window[sp]:  # the first document starting in a new window opens the next shard
            shard[sp], index[sp], window[sp] = shard[sp] + 1, 0, w
        else:
            index[sp] += 1
        out.append((shard[sp], index[sp]))
        start[sp] += n
    return out


def _grouped(lengths: list[int], streams: list[int], cuts: list[int], shard_tokens: int) -> list[tuple[int, int]]:
    """The same through the write stage's steps: counts per group, starts, windows per group, merged maps, placing."""
    lengths_a, streams_a = np.array(lengths, np.int64), np.array(streams)
    bounds = [0, *sorted(set(c for c in cuts if 0 < c < len(lengths))), len(lengths)]
    groups = [(lengths_a[a:b], streams_a[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    counts = [Counts(tuple(int((s == sp).sum()) for sp in range(K)), tuple(int(n[s == sp].sum()) for sp in range(K)), 0) for n, s in groups]
    begins = layout.starts(counts)
    found = {sp: [] for sp in range(K)}
    for (n, s), b in zip(groups, begins):
        for sp in range(K):
            found[sp].append(layout.firsts(layout.windows(n[s == sp], b.token[sp], shard_tokens), b.ordinal[sp]))
    maps = {sp: ShardMap.merge(found[sp]) for sp in range(K)}
    out = []
    for (n, s), b in zip(groups, begins):
        placed = np.zeros((len(n), 2), np.int64)
        for sp in range(K):
            docs = np.flatnonzero(s == sp)
            win = layout.windows(n[docs], b.token[sp], shard_tokens)
            shard, index = maps[sp].place(win, b.ordinal[sp] + np.arange(len(docs)))
            placed[docs, 0], placed[docs, 1] = shard, index
        out += [tuple(map(int, p)) for p in placed]
    return out


@given(
    docs=st.lists(st.tuples(st.integers(1, 40), st.integers(0, 1)), max_size=60),
    cuts=st.lists(st.integers(0, 60), max_size=8),
    shard_tokens=st.integers(1, 100),
    sources=st.booleans(),
)
def test_grouped_layout_is_the_sequential_one_for_any_grouping(docs, cuts, shard_tokens, sources):
    # with two sources, files (hence documents) come source after source: the first half's are source 0
    lengths = [n for n, _ in docs]
    streams = [layout.stream_of(np.array([s]), int(sources and i >= len(docs) // 2))[0] for i, (_, s) in enumerate(docs)]
    assert _grouped(lengths, streams, cuts, shard_tokens) == _sequential(lengths, streams, shard_tokens)


def test_a_shard_holds_the_documents_starting_in_its_window():
    # windows of 10 tokens: 3+4 start in window 0, 5 starts at 7 (window 0), 12 at 12 (window 1), 2 at 24 (window 2)
    n = np.array([3, 4, 5, 12, 2])
    win = layout.windows(n, 0, 10)
    assert list(win) == [0, 0, 0, 1, 2]
    # a document longer than two windows skips a window: shards stay numbered without gaps
    win = layout.windows(np.array([35, 1]), 0, 10)
    m = ShardMap.merge([layout.firsts(win, 0)])
    assert list(m.place(win, np.arange(2))[0]) == [0, 1]


@given(start=st.integers(0, 50), n=st.integers(0, 50), per=st.integers(1, 12))
def test_table_parts_cover_the_rows_once(start, n, per):
    got = layout.parts(start, n, per)
    rows = [i for _, sl in got for i in range(sl.start, sl.stop)]
    assert rows == list(range(n))
    assert all((start + i) // per == j for j, sl in got for i in range(sl.start, sl.stop))


def test_the_sequential_shard_writer_cuts_where_the_layout_does(tmp_path):
    from raylm.pipelines.shards import ShardWriter

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 60, 300)
    w = ShardWriter(str(tmp_path), "train", np.dtype(np.uint16), shard_tokens=100)
    got, at = [], 0
    for n in rng.integers(1, 20, 40):  # handed over in batches of any size
        batch = lengths[at : at + n]
        shard, index = w.add(np.ones(int(batch.sum()), np.uint32), batch)
        got += list(zip(shard.tolist(), index.tolist()))
        at += len(batch)
    out = w.close()
    assert got == _sequential(lengths[:at].tolist(), [0] * at, 100)
    assert [s["docs"] for s in out["shards"]] == [sum(1 for s, _ in got if s == k) for k in range(len(out["shards"]))]


def test_streams_and_splits_of_a_mixture():
    from raylm.pipelines.write import layout_splits

    assert layout.streams([]) == ["train", "val"]
    names = layout.streams(["web", "books"])
    assert names == ["train/web", "val/web", "train/books", "val/books"]
    assert [names[k] for k in layout.stream_of(np.array([0, 1, 1, 0]), 1)] == ["train/books", "val/books", "val/books", "train/books"]
    entry = lambda n, path: {"tokens": n, "bytes": 2 * n, "docs": 1, "shards": [{"path": path, "tokens": n}]}  # noqa: E731
    streams = [entry(10, "train/web/a"), entry(1, "val/web/a"), entry(20, "train/books/a"), entry(2, "val/books/a")]
    splits = layout_splits(streams, ["web", "books"])
    assert splits["train"]["tokens"] == 30 and splits["val"]["bytes"] == 6 and splits["train"]["docs"] == 2
    assert [s["path"] for s in splits["train"]["shards"]] == ["train/web/a", "train/books/a"]
    assert splits["val"]["sources"]["books"] == streams[3]
    assert layout_splits(streams[:2], []) == {"train": streams[0], "val": streams[1]}
