"""knn's search against a brute-force one, for every set of vectors (Hypothesis; see
docs/development.md): whatever the slice sizes, duplicates and ties, every query gets the k
references with the smallest exact distances, ties to the earlier reference, as docs/knn.md
promises, and leave-one-out never returns the query itself."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis")
torch = pytest.importorskip("torch")
from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from protrans_cli import knn as knn_module  # noqa: E402
from test_knn import distances  # noqa: E402


def _distances(q, r, metric, own=None):
    """float64 distances of every pair (the query itself infinitely far under leave-one-out)."""
    d = distances(q, r, metric)
    if own is not None:
        for row, column in enumerate(own):
            if column >= 0:
                d[row, column] = np.inf
    return d


@st.composite
def searches(draw):
    """Small whole-number vectors (so duplicates and exact ties are common, as in a reference
    holding one sequence under many accessions), queries drawn partly from the reference."""
    dim = draw(st.integers(1, 5))
    n_ref = draw(st.integers(1, 40))
    elements = st.integers(-2, 2).map(float)
    ref = draw(hnp.arrays(np.float32, (n_ref, dim), elements=elements))
    if draw(st.booleans()):  # many copies of one vector
        copies = draw(st.lists(st.integers(0, n_ref - 1), max_size=n_ref))
        ref[copies] = ref[0]
    picks = draw(st.lists(st.integers(0, n_ref - 1), max_size=5))
    extra = draw(hnp.arrays(np.float32, (draw(st.integers(0, 5)), dim), elements=elements))
    q = np.concatenate([ref[picks], extra]) if picks or len(extra) else ref[:1].copy()
    metric = draw(st.sampled_from(["euclidean", "cosine"]))
    if metric == "cosine":  # (a vector of length 0 is refused before the search)
        q, ref = q[q.any(1)], ref[ref.any(1)]
        if not len(q) or not len(ref):
            q, ref = np.ones((1, dim), np.float32), np.ones((1, dim), np.float32)
    k = draw(st.integers(1, 12))
    slices = draw(st.integers(1, 9)), draw(st.integers(1, 45))
    own = draw(st.none() | st.lists(st.integers(-1, len(ref) - 1), min_size=len(q), max_size=len(q)))
    return q, ref, k, metric, slices, own


@given(searches())
@example((np.full((1, 4), 2, np.float32), np.ones((30, 4), np.float32), 3, "euclidean", (1024, 16384), None))
@example((np.full((1, 4), 2, np.float32), np.ones((30, 4), np.float32), 3, "euclidean", (1024, 7), None))
@example((np.full((1, 1), -1, np.float32), np.array([[0.0]] * 16 + [[1.0], [-1.0]], np.float32), 5, "euclidean",
          (1, 1), None))
def test_the_search_finds_the_brute_forces_neighbours_ties_to_the_earlier_reference(case):
    """(The examples: 30 copies of one vector, whose three nearest were the 17th to 19th, or the
    10th, 12th and 17th with slices of 7, where the first three are meant; and copies that reach
    the cut only when the slices' candidates are merged, no longer in reference order.)"""
    q, ref, k, metric, (q_slice, r_slice), own = case
    saved = knn_module.QUERY_SLICE, knn_module.REFERENCE_SLICE
    knn_module.QUERY_SLICE, knn_module.REFERENCE_SLICE = q_slice, r_slice
    try:
        index, distance = knn_module._search(torch, q, ref, k, metric, own)
    finally:
        knn_module.QUERY_SLICE, knn_module.REFERENCE_SLICE = saved
    d = _distances(q, ref, metric, own)
    for row in range(len(q)):
        # leave-one-out leaves one reference fewer to find
        found = min(k, len(ref) - (own is not None and own[row] >= 0))
        got = index[row, :found]
        assert (index[row, found:] == -1).all() and np.isnan(distance[row, found:]).all()
        assert len(set(got.tolist())) == found and (own is None or own[row] not in got.tolist())
        # the k smallest distances, each that of the reference returned with it, in order (two
        # references at one distance in exact arithmetic may differ in the last bit either way)
        np.testing.assert_allclose(distance[row, :found], np.sort(d[row])[:found], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(d[row, got], distance[row, :found], rtol=1e-12, atol=1e-12)
        # copies of one vector: the earlier first, and never a later one in place of an earlier
        for j in got:
            earlier = [i for i in range(j) if (ref[i] == ref[j]).all() and (own is None or own[row] != i)]
            assert set(earlier) <= set(got.tolist()), (row, j, earlier)
            placed = got.tolist()
            assert all(placed.index(i) < placed.index(j) for i in earlier), (row, placed)
