"""keep_fraction's exact threshold (pipelines/select.py), without Ray: order-preserving keys, radix selection
over histograms of parts of the corpus equal to sorting the whole, and the score a key came from."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from raylm.pipelines.select import histogram, key_to_score, kth_largest, order_keys

finite = st.floats(width=32, allow_nan=False, allow_infinity=False)


@given(st.lists(finite, min_size=2, max_size=200))
def test_keys_order_documents_as_their_scores_do(scores):
    s = np.array(scores, dtype=np.float32)
    keys = order_keys(s, np.arange(len(s)))
    i, j = np.triu_indices(len(s), 1)
    strictly = s[i] != s[j]
    assert np.all((keys[i] > keys[j])[strictly] == (s[i] > s[j])[strictly])


@given(st.lists(finite, min_size=2, max_size=200))
def test_lower_is_better_reverses_the_order(scores):
    s = np.array(scores, dtype=np.float32)
    keys = order_keys(s, np.arange(len(s)), higher_is_better=False)
    i, j = np.triu_indices(len(s), 1)
    strictly = s[i] != s[j]
    assert np.all((keys[i] > keys[j])[strictly] == (s[i] < s[j])[strictly])


@given(finite, st.booleans())
def test_a_key_gives_back_its_score(score, higher):
    key = int(order_keys(np.array([score], np.float32), np.array([7]), higher)[0])
    assert key_to_score(key, higher) == float(np.float32(score)) or (score == 0 and key_to_score(key, higher) == 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=1, max_size=300), st.data(), st.integers(1, 5))
def test_radix_selection_over_parts_finds_the_kth_largest_key(scores, data, parts):
    keys = order_keys(np.array(scores, np.float32), np.arange(len(scores)) * 7919)
    k = data.draw(st.integers(1, len(scores)))
    chunks = np.array_split(keys, parts)  # the corpus's groups of staging files

    def histograms(prefix, depth):
        return np.sum([histogram(c, prefix, depth) for c in chunks], axis=0)

    assert kth_largest(histograms, k) == int(np.sort(keys)[::-1][k - 1])


def test_equal_scores_are_ordered_by_the_uids_hash_not_their_position():
    keys = order_keys(np.full(1000, 0.5, np.float32), np.arange(1000))
    kept = np.flatnonzero(keys >= np.sort(keys)[500])  # the top half of a corpus of ties
    assert len(kept) == 500
    assert 0.4 < np.mean(kept < 500) < 0.6  # not the first 500 documents
