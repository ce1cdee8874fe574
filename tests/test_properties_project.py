"""project's PCA against scikit-learn's, for every set of vectors (Hypothesis; see
docs/development.md): the variance fractions are sklearn's; the map is the centred vectors
turned onto orthogonal axes (all of them: every distance kept); each axis is signed as
docs/project.md says (its largest loading positive); and it does not depend on the order of
the proteins or on the slices the vectors are read in."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("hypothesis")
decomposition = pytest.importorskip("sklearn.decomposition")
from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from protrans_cli import project as project_module  # noqa: E402
from protrans_cli.project import reduce  # noqa: E402


@st.composite
def vector_sets(draw):
    """Embedding-like float32 vectors: a few directions of large spread plus noise (distinct
    variances, so each axis is defined), sometimes a column held constant or rows repeated."""
    n, width = draw(st.integers(2, 40)), draw(st.integers(2, 12))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    spread = np.sort(rng.uniform(0.5, 10, size=width))[::-1] * (1 + np.arange(width)[::-1])
    vectors = (rng.normal(size=(n, width)) * spread + rng.normal(size=width) * 5).astype(np.float32)
    if draw(st.booleans()):
        vectors[:, draw(st.integers(0, width - 1))] = 1.5
    if draw(st.booleans()):
        vectors[draw(hnp.arrays(np.int64, draw(st.integers(0, n)), elements=st.integers(0, n - 1)))] = vectors[0]
    return vectors


@given(vector_sets(), st.integers(2, 3), st.sampled_from(["euclidean", "cosine"]))
# one direction seven times (cosine: rows of length 1 whose mean is not theirs in floating point;
# PC1 was said to carry 100% of the variance of the rounding)
@example(np.tile(np.array([1, 2, 3], np.float32), (7, 1)), 2, "cosine")
# two proteins in a plane (cosine): the centred rows' second singular value is rounding, just over
# lstsq's default cut-off, and the axis read back from the map was any solution, not PC1
@example(np.array([[1.5, 2.3593624], [1.5, 1.0964252]], np.float32), 2, "cosine")
def test_pca_equals_sklearns_and_keeps_what_a_rotation_keeps(vectors, dims, metric):
    n, width = vectors.shape
    dims = min(dims, width)
    coords, explained = reduce(vectors, dims=dims, metric=metric)
    rows = vectors.astype(np.float64)
    if metric == "cosine":
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    centred = rows - rows.mean(0)
    if (rows == rows[0]).all():  # one vector throughout: no variance to share (sklearn: NaN fractions)
        assert explained.tolist() == [0.0] * dims and not coords.any()
        return
    reference = decomposition.PCA(n_components=min(n, width), svd_solver="full").fit(rows)
    # (fewer proteins than axes: the axes past n - 1 carry nothing)
    ratios = np.pad(reference.explained_variance_ratio_, (0, dims))[:dims]
    assert explained == pytest.approx(ratios, abs=1e-9)
    # all the axes (the library's pca, which takes any number): the centred rows turned, every
    # distance between proteins kept
    full, _ = project_module.pca(vectors, width, metric=metric)
    np.testing.assert_allclose(np.linalg.norm(full[:, None] - full[None], axis=-1),
                               np.linalg.norm(centred[:, None] - centred[None], axis=-1), atol=1e-8)
    np.testing.assert_allclose(full[:, :dims], coords, atol=1e-9)
    # each axis (recovered from the map) signed so that its largest loading is positive; an axis
    # checked carries over 1e-6 of the variance (a singular value over 1e-3 of the largest), and
    # one under 1e-6 of the largest is rounding (fewer proteins than axes), left out of the solve
    axes = np.linalg.lstsq(centred, coords, rcond=1e-6)[0]
    for j in np.flatnonzero(explained > 1e-6):
        assert axes[np.abs(axes[:, j]).argmax(), j] > 0, j
    # orthogonal axes, each carrying its fraction of the variance
    gram = coords.T @ coords
    total = (centred ** 2).sum()
    np.testing.assert_allclose(np.diag(gram), explained * total, rtol=1e-7, atol=1e-8)
    np.testing.assert_allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-6 * max(total, 1))


@given(vector_sets(), st.integers(1, 7), st.randoms(use_true_random=False))
def test_the_map_does_not_depend_on_the_order_of_the_proteins_or_on_the_slices(vectors, rows_per_slice, rnd):
    # (a definite map: distinct leading variances, so that the two leading axes are defined)
    values = np.linalg.eigvalsh(np.cov(vectors.astype(np.float64).T))[::-1]
    if not (values[0] - values[1] > 1e-3 * values[0] and values[1] - values[2:3].sum() > 1e-3 * values[0]):
        return
    coords, _ = reduce(vectors, dims=2)
    order = list(range(len(vectors)))
    rnd.shuffle(order)
    saved = project_module.ROWS_PER_SLICE
    project_module.ROWS_PER_SLICE = rows_per_slice
    try:
        shuffled, _ = reduce(vectors[order], dims=2)
    finally:
        project_module.ROWS_PER_SLICE = saved
    np.testing.assert_allclose(shuffled, coords[order], atol=1e-6 * (1 + np.abs(coords).max()))
