"""Maps of embedding space: every protein's per-protein vector placed in two (or three)
dimensions by PCA, t-SNE or UMAP, written as a table, a picture and an interactive page
(bio_embeddings' `project` and `visualize` stages).

    result = project(["train.h5", "test.h5"], "map.tsv", method="umap", labels=["deeploc.fasta"],
                     plot="map.png", html="map.html")
    coords, explained = reduce(vectors, method="pca", dims=2)     # a notebook's (N, D) array

PCA needs nothing beyond numpy: the covariance is summed a slice of rows at a time in float64 (a
proteome's vectors are never copied whole), its eigenvectors are the axes, each signed so that
its largest loading is positive (the same map from the same file, run after run). t-SNE is
scikit-learn's, UMAP is umap-learn's (`pip install 'protrans[project]'`), both seeded.

How far a map can be trusted is measured, not assumed (`map_quality`): `kept` is the fraction
of every protein's 10 nearest neighbours in embedding space (by the metric) that are among its
10 nearest on the map (Euclidean), averaged over the proteins (at most 1,000 of them, drawn by
the seed, each against all). 1.0 keeps every neighbourhood; a random placement keeps about
10/N. With class labels, `agreement` says how often the nearest labelled protein shares a
protein's label in embedding space and on the map: whether the map's colours separate as the
vectors do.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from protrans_cli import console
from protrans_cli.errors import (InputError, UsageError, at_least, expect_path, given, one_of, option, seed_in_range,
                                 type_problem)

METHODS = ("pca", "tsne", "umap")
METRICS = ("euclidean", "cosine")
NAMES = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}
# method -> (module imported, the package that provides it)
EXTRAS = {"tsne": ("sklearn", "scikit-learn"), "umap": ("umap", "umap-learn")}
ROWS_PER_SLICE = 16384       # rows of vectors in float64 at a time (16,384 x 1,024: 128 MiB)
KEPT_NEIGHBOURS = 10
KEPT_QUERIES = 1000  # (its figure's standard error about 0.006; each query is compared with every protein)
MAX_COLOURS = 20             # categories beyond the most frequent 19 are drawn as one "other"
CONTINUOUS_MIN_VALUES = 12   # numeric labels with at least this many distinct values: a colour scale
SOURCE = "source"            # the column naming each row's input file
RESERVED = ("id", SOURCE, "x", "y", "z")  # the table's own columns: a label column of one such name is renamed


@dataclass
class Projection:
    """What `project` made: a row per protein of every input, in input order."""

    ids: list[str]
    sources: list[str]                 # the input file each row came from
    coords: np.ndarray                 # (N, dims) float64
    method: str = "pca"
    metric: str = "euclidean"
    labels: dict = field(default_factory=dict)   # column -> [label or None per row]
    explained: np.ndarray | None = None          # PCA: the variance fraction of each axis
    kept: float | None = None                    # neighbourhoods kept (module docstring)
    colour_by: str | None = None                 # the column the picture and the page colour by
    # the colour column's nearest-labelled-neighbour agreement (map_quality): in the space, on the
    # map, proteins counted; None for numbers on a colour scale
    agreement: tuple[float, float, int] | None = None

    def axis_names(self) -> list[str]:
        name = "PC" if self.method == "pca" else f"{NAMES[self.method]} "
        names = [f"{name}{i + 1}" for i in range(self.coords.shape[1])]
        if self.explained is not None:
            names = [f"{n} ({100 * e:.1f}%)" for n, e in zip(names, self.explained)]
        return names


def check_method(method: str, dims: int, metric: str) -> None:
    """The settings' own refusals, before anything is read (and the optional package's)."""
    one_of(method, METHODS, "--method", keyword="method")
    one_of(metric, METRICS, "--metric", keyword="metric")
    if dims not in (2, 3):
        raise UsageError(f"{option('--dims', 'dims')} must be 2 or 3, got {dims}")
    if method in EXTRAS:
        module, package = EXTRAS[method]
        import importlib.util

        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # (a module set to None in sys.modules, or half-installed)
            found = False
        if not found:
            raise UsageError(f"{given('--method', 'method', method)} needs {package}, which is not installed: pip "
                             f"install 'protrans[project]' (or {package}); {given('--method', 'method', 'pca')} needs "
                             "nothing more")


# The numbers the Python calls take (project, reduce, map_quality), as their signatures have them
_NUMBERS = {"dims": "int", "seed": "int", "layer": "int", "sample": "int | None", "perplexity": "float | None",
            "neighbors": "int | None", "min_dist": "float", "threads": "int | None", "k": "int", "queries": "int"}


def check_numbers(**settings) -> None:
    """Each setting a number of its kind (numpy's count): seed="1", dims=2.0 or layer="-1" from a
    notebook were TypeErrors from inside ("'<=' not supported between instances of 'int' and
    'str'", "slice indices must be integers"), dims="2" "--dims 2: a map has 2 or 3 dimensions"."""
    for name, value in settings.items():
        if problem := type_problem(_NUMBERS[name], value):
            raise UsageError(f"{name} must be {problem}, got {type(value).__name__} {value!r:.40}")
    if settings.get("threads") is not None:  # (0 was scikit-learn's "n_jobs == 0 in Parallel has no meaning")
        from protrans_cli.threads import check_threads

        check_threads(settings["threads"])


def check_seed(seed: int) -> None:
    """scikit-learn, umap-learn and numpy take seeds of 0 to 2**32 - 1 (-1 was a traceback)."""
    seed_in_range(seed, 2**32 - 1, "2**32 - 1: scikit-learn's and umap-learn's seeds are 32-bit")


def check_bounds(method: str, *, perplexity: float | None = None, neighbors: int | None = None,
                 min_dist: float = 0.1, n: int | None = None) -> None:
    """t-SNE's and UMAP's settings against their bounds: those that need no data before anything
    is read (`n` None), and against the number of proteins `n` once it is known."""
    if method == "umap" and neighbors is not None:
        at_least(neighbors, 2, "--neighbors", keyword="neighbors")
        if n is not None and not neighbors < n:
            # ("must be at most the number of proteins less one (9)" left the reader to work it out)
            raise UsageError(f"{given('--neighbors', 'neighbors', neighbors)} is too many for {n} proteins (each has "
                             f"{n - 1} others): give {n - 1} or fewer, or leave it out ({min(15, n - 1)} is then "
                             "chosen)")
    if method == "umap" and not 0 <= min_dist <= 1:
        raise UsageError(f"{option('--min-dist', 'min_dist')} must be between 0 and 1, got {min_dist:g}")
    if method == "tsne" and perplexity is not None:
        if n is None and not perplexity > 0:
            raise UsageError(f"{option('--perplexity', 'perplexity')} must be positive, got {perplexity:g}")
        if n is not None and not perplexity > 0:  # (a library call: not checked before the proteins were read)
            raise UsageError(f"{option('--perplexity', 'perplexity')} must be positive, got {perplexity:g}")
        if n is not None and not perplexity < n:
            raise UsageError(f"{option(f'--perplexity {perplexity:g}', f'perplexity={perplexity!r}')} is too large for {n} proteins: give "
                             f"one below {n} ({(n - 1) / 3:.3g} or less is usual), or leave it out "
                             f"({min(30.0, (n - 1) / 3):.3g} is then chosen)")


def reduce(vectors: np.ndarray, *, method: str = "pca", dims: int = 2, metric: str = "euclidean", seed: int = 0,
           perplexity: float | None = None, neighbors: int | None = None, min_dist: float = 0.1,
           threads: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(coords (N, dims) float64, the PCA axes' variance fractions or None) of (N, D) vectors.

    `metric` cosine compares directions: the rows are scaled to unit length first (for PCA:
    the map of the unit vectors; t-SNE and UMAP are given metric="cosine" as well). t-SNE's
    `perplexity` defaults to 30 and UMAP's `neighbors` to 15, lowered for a small N (said
    on stderr); given, they must fit N."""
    check_numbers(dims=dims, seed=seed, perplexity=perplexity, neighbors=neighbors, min_dist=min_dist, threads=threads)
    check_method(method, dims, metric)
    check_seed(seed)
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise InputError(f"vectors of shape {vectors.shape}: expected (proteins, dimensions)")
    n, width = vectors.shape
    least = 2 if method == "pca" else 4
    if n < least:  # ("3 protein(s): t-SNE places 4 at least")
        instead = "" if method == "pca" else f", or {given('--method', 'method', 'pca')}, which places 2 or more"
        raise InputError(f"{console.counted(n, 'protein')} {'is' if n == 1 else 'are'} too few for "
                         f"{NAMES[method]}, which places {least} or more: give more proteins{instead}")
    if width < dims:
        raise InputError(f"vectors of {width} dimension(s) cannot be mapped into {dims}")
    for part in _slices(n):  # (a notebook's array: PCA's eigh failed to converge, t-SNE and UMAP refused it)
        if (bad := np.flatnonzero(~np.isfinite(np.asarray(vectors[part])).all(axis=1))).size:
            raise InputError(f"row {part.start + int(bad[0])} has NaN or infinite values")
    if metric == "cosine":
        _check_norms(vectors)
    check_bounds(method, perplexity=perplexity, neighbors=neighbors, min_dist=min_dist, n=n)
    if method == "pca":
        return pca(vectors, dims, metric=metric)
    if method == "tsne":
        return _tsne(vectors, dims, metric, seed, perplexity, threads), None
    return _umap(vectors, dims, metric, seed, neighbors, min_dist), None


def _slices(n: int, size: int | None = None):
    size = size or ROWS_PER_SLICE  # (read when called: a default of ROWS_PER_SLICE was fixed at import)
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _rows(vectors: np.ndarray, part: slice, metric: str) -> np.ndarray:
    rows = np.asarray(vectors[part], dtype=np.float64)
    if metric == "cosine":
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def _check_norms(vectors: np.ndarray, ids: list[str] | None = None, files: list[str] | None = None) -> None:
    """No vector of zeros under cosine; one is named by its id and `files`' entry for it (the file
    it was read from: "r3: a vector of zeros ..." named no file), else by its row."""
    for part in _slices(len(vectors)):
        norms = np.linalg.norm(np.asarray(vectors[part], dtype=np.float64), axis=1)
        if (zero := np.flatnonzero(norms == 0)).size:
            row = part.start + int(zero[0])
            text = "a vector of zeros has no direction, so no cosine distance (--metric euclidean places it)"
            if ids is None:
                raise InputError(f"row {row}: {text}")
            raise InputError(text, path=files[row] if files is not None else None, record=ids[row])


def pca(vectors: np.ndarray, dims: int = 2, *, metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """Principal components: (coords (N, dims), each axis's fraction of the total variance).

    The covariance is summed in float64 a slice of rows at a time; the axes are its top
    eigenvectors, each signed so that its largest loading is positive."""
    n, width = vectors.shape
    total = np.zeros(width)
    first, one_vector = _rows(vectors, slice(0, 1), metric), True
    for part in _slices(n):
        rows = _rows(vectors, part, metric)
        total += rows.sum(axis=0)
        one_vector = one_vector and bool((rows == first).all())
    if one_vector:
        # One vector throughout (one direction, with cosine) has no variance to share: its mean
        # in floating point is not always itself, and PC1 was said to hold 100% of the rounding.
        return np.zeros((n, dims)), np.zeros(dims)
    mean = total / n
    scatter = np.zeros((width, width))
    for part in _slices(n):
        centred = _rows(vectors, part, metric) - mean
        scatter += centred.T @ centred
    values, axes = np.linalg.eigh(scatter)  # ascending
    order = np.argsort(values)[::-1][:dims]
    values, axes = np.clip(values[order], 0.0, None), axes[:, order]
    strongest = np.abs(axes).argmax(axis=0)
    axes = axes * np.where(axes[strongest, range(dims)] < 0, -1.0, 1.0)
    coords = np.empty((n, dims))
    for part in _slices(n):
        coords[part] = (_rows(vectors, part, metric) - mean) @ axes
    variance = float(np.clip(np.trace(scatter), 0.0, None))
    explained = values / variance if variance > 0 else np.zeros(dims)
    return coords, explained


def _tsne(vectors, dims: int, metric: str, seed: int, perplexity: float | None, threads: int | None) -> np.ndarray:
    from sklearn.manifold import TSNE

    n = len(vectors)
    most = (n - 1) / 3  # (sklearn refuses a perplexity >= N; 3 perplexities of neighbours are what it reads)
    if perplexity is None:  # (one given was checked against n: check_bounds)
        perplexity = min(30.0, most)
        if perplexity < 30.0:  # ("perplexity 3 for 10 proteins (30 needs 91 at least)")
            console.info(f"t-SNE: {n} proteins are too few for the default perplexity 30 (it takes 91 or more): "
                         f"perplexity {perplexity:.3g} is used ({option('--perplexity', 'perplexity')} sets another, "
                         f"below {n})")
    model = TSNE(n_components=dims, perplexity=float(perplexity), metric=metric, init="pca",
                 learning_rate="auto", random_state=seed, n_jobs=threads)
    data = np.asarray(vectors, dtype=np.float32)
    if metric == "cosine":  # (init="pca" projects the vectors themselves: the unit ones, as for PCA)
        data = data / np.linalg.norm(data, axis=1, keepdims=True)
    return np.asarray(model.fit_transform(data), dtype=np.float64)


def _umap(vectors, dims: int, metric: str, seed: int, neighbors: int | None, min_dist: float) -> np.ndarray:
    import warnings

    n = len(vectors)
    if neighbors is None:  # (one given was checked against n, and min_dist: check_bounds)
        neighbors = min(15, n - 1)
        if neighbors < 15:
            console.info(f"UMAP: {n} proteins are too few for the default 15 neighbours (it takes 16 or more): "
                         f"{neighbors} are used ({option('--neighbors', 'neighbors')} sets another, 2 to {n - 1})")
    with warnings.catch_warnings():
        # What umap-learn's run says to a developer, not to our user, and only that: that a seed
        # makes it run on one thread; scikit-learn >= 1.6's FutureWarning at umap-learn 0.5.7's
        # check_array(force_all_finite=); numba's own warnings about the code it compiles for
        # umap-learn and pynndescent (deprecated decorator arguments, parallel=True with nothing
        # to parallelise, its caches). What umap-learn says of the data (a spectral initialisation
        # that failed, disconnected vertices) is shown: a blanket "ignore" hid it, and any other.
        warnings.filterwarnings("ignore", r"n_jobs value .* overridden to 1 by setting random_state", UserWarning)
        warnings.filterwarnings("ignore", r"'force_all_finite' was renamed to 'ensure_all_finite'", FutureWarning)
        try:  # (before umap-learn, which imports numba and compiles some of its code as it is imported)
            from numba.core.errors import NumbaWarning
        except ImportError:  # (no numba: umap-learn's import says so)
            pass
        else:
            warnings.filterwarnings("ignore", category=NumbaWarning)
        import umap

        model = umap.UMAP(n_components=dims, n_neighbors=int(neighbors), min_dist=float(min_dist), metric=metric,
                          random_state=seed, init="spectral" if n > dims + 1 else "random")
        coords = model.fit_transform(np.asarray(vectors, dtype=np.float32))
    return np.asarray(coords, dtype=np.float64)


def neighbourhoods_kept(vectors: np.ndarray, coords: np.ndarray, *, metric: str = "euclidean",
                        k: int = KEPT_NEIGHBOURS, queries: int = KEPT_QUERIES, seed: int = 0) -> float:
    """The mean fraction of a protein's k nearest neighbours in `vectors` (by `metric`) that
    are among its k nearest in `coords` (Euclidean), over `queries` proteins drawn by `seed`
    (every protein when there are no more), each against all; itself excluded. NaN for k + 1
    proteins or fewer, whose every map keeps every neighbourhood."""
    return map_quality(vectors, coords, metric=metric, k=k, queries=queries, seed=seed)[0]


def map_quality(vectors: np.ndarray, coords: np.ndarray, *, metric: str = "euclidean", labels=None,
                k: int = KEPT_NEIGHBOURS, queries: int = KEPT_QUERIES,
                seed: int = 0) -> tuple[float, tuple[float, float, int] | None]:
    """(neighbourhoods kept, as `neighbourhoods_kept`; with `labels`, one per row or None: the
    fraction of the sampled labelled proteins whose nearest labelled protein carries their label,
    in `vectors` and on the map, and how many were counted; None where fewer than 2 are labelled).
    The second says whether the map separates the labels as the embedding space does: a map
    whose figure is far below the space's draws clusters the vectors do not have, or mixes
    what they keep apart."""
    check_numbers(k=k, queries=queries, seed=seed)
    # (rows that do not pair up were an IndexError or a numpy traceback, and labels of another
    # length, such as the {id: label} dict itself, gave no figure without a word)
    shapes = np.shape(vectors), np.shape(coords)
    if len(shapes[0]) != 2 or len(shapes[1]) != 2 or shapes[0][0] != shapes[1][0]:
        raise UsageError(f"vectors of shape {shapes[0]} and coords of shape {shapes[1]}: expected (N, D) and (N, 2 "
                         "or 3), one row per protein in both")
    if labels is not None and (isinstance(labels, (str, bytes, dict)) or len(labels) != shapes[0][0]):
        given = "a dict" if isinstance(labels, dict) else f"{len(labels)}"
        raise UsageError(f"labels: {given} for {shapes[0][0]} rows of vectors; give one label (or None) a row, in "
                         "the rows' order ([location.get(i) for i in ids])")
    n = len(vectors)
    k = min(k, n - 1)
    if k < 1:
        return math.nan, None
    chosen = np.arange(n) if n <= queries else np.sort(np.random.default_rng(seed).choice(n, queries, replace=False))
    labelled = None
    if labels is not None:
        labelled = np.array([v is not None for v in labels])
        if labelled.sum() < 2:
            labelled = None
    codes = None if labelled is None else np.unique([str(v) for v in labels], return_inverse=True)[1]
    same = [0, 0]
    counted = 0
    high_norms = np.concatenate([(_rows(vectors, part, metric) ** 2).sum(axis=1) for part in _slices(n)])
    low = np.asarray(coords, dtype=np.float64)
    low_norms = (low ** 2).sum(axis=1)
    per_slice = max(1, (1 << 24) // n)  # query rows x N distances in float64 at a time: 128 MiB
    kept = 0.0
    for start in range(0, len(chosen), per_slice):
        rows = chosen[start:start + per_slice]
        q = _rows(vectors, rows, metric)
        # In place, and the k columns copied out of argpartition's (rows, N) indices: the
        # expressions' temporaries and the two index arrays held six times the 128 MiB. The same
        # sums in the same order (a - 2b is a + -2b, exactly), so the same numbers.
        high, near_low = _product(q, vectors, metric), low[rows] @ low.T
        for distances, norms in ((high, high_norms), (near_low, low_norms)):
            distances *= -2.0
            distances += norms[None, :]
            distances += norms[rows, None]
            distances[np.arange(len(rows)), rows] = np.inf  # (itself)
        high_k = np.argpartition(high, k - 1, axis=1)[:, :k].copy()
        low_k = np.argpartition(near_low, k - 1, axis=1)[:, :k].copy()
        for a, b in zip(high_k, low_k):
            kept += len(np.intersect1d(a, b, assume_unique=True)) / k
        if labelled is not None:
            asked = labelled[rows]
            for side, distances in enumerate((high, near_low)):
                distances[:, ~labelled] = np.inf  # (the nearest labelled protein)
                nearest = distances[asked].argmin(axis=1)
                same[side] += int((codes[nearest] == codes[rows[asked]]).sum())
            counted += int(asked.sum())
    agreement = (same[0] / counted, same[1] / counted, counted) if counted else None
    # (k of n - 1 others: any map keeps every neighbourhood, and 1.0 was given, stored in the
    # --html page as if measured: no figure, as for a single protein)
    return (math.nan if k >= n - 1 else kept / len(chosen)), agreement


def _product(q: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """q @ vectors.T with the vectors read a slice at a time (as `_rows` gives them)."""
    out = np.empty((len(q), len(vectors)))
    for part in _slices(len(vectors)):
        out[:, part] = q @ _rows(vectors, part, metric).T
    return out


def read_vectors(paths, *, layer: int = -1, allow_model_mismatch: bool = False):
    """(ids, sources, (N, D) float32) of every input's per-protein vectors, in input order.
    A file of per-residue embeddings only gives each protein's mean over its residues (what
    embed stores as per-protein). The files must come from one model and pooling."""
    from protrans_cli.io.files import same_file
    from protrans_cli.knn import _check_same_model, _check_same_pooling

    paths = list(paths)
    for i, path in enumerate(paths):
        if twice := next((p for p in paths[:i] if same_file(p, path)), None):
            raise UsageError(f"{path} is given twice ({twice}): every protein would be placed twice")
    names = _source_names(paths)
    ids: list[str] = []
    sources: list[str] = []
    blocks: list[np.ndarray] = []
    first = None
    for path, name in zip(paths, names):
        file_ids, matrix, attrs = _file_vectors(path, layer)
        if first is None:
            first = (path, matrix.shape[1], attrs)
        else:
            roles = ("its proteins", f"{first[0]}'s")  # (knn's own words: queries, the reference)
            _check_same_model(path, attrs, first[2], allow_model_mismatch, roles)
            _check_same_pooling(path, attrs, first[2], allow_model_mismatch, roles)
            if matrix.shape[1] != first[1]:
                raise InputError(f"vectors of {matrix.shape[1]} dimensions, where {first[0]}'s have {first[1]}: "
                                 "one map places vectors of one model", path=str(path))
        ids += file_ids
        sources += [name] * len(file_ids)
        blocks.append(matrix)
    vectors = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
    return ids, sources, vectors


def _source_names(paths) -> list[str]:
    """Each input's name in the source column: its file name, or as many of its path's last parts
    as tell it from the other inputs (run1/embed/e.h5 beside run2/embed/e.h5: run1/embed/e.h5;
    their file names alone coloured two inputs as one). A byte that is not UTF-8 in a name is
    spelled `\\xff` (`utf8_text`): the TSV, page and picture failed on it with a UnicodeEncodeError
    traceback, as on any non-ASCII name under LC_ALL=C."""
    from protrans_cli.io.files import utf8_text

    full = [Path(os.path.abspath(str(p))).parts for p in paths]
    names = []
    for i, parts in enumerate(full):
        for depth in range(1, len(parts) + 1):
            if all(other[-depth:] != parts[-depth:] for j, other in enumerate(full) if j != i):
                break
        names.append(utf8_text(str(Path(*parts[-depth:]))))
    return names


def _file_vectors(path, layer: int):
    from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader
    from protrans_cli.knn import _vectors, layer_on_axis

    with EmbeddingsReader(path) as reader:
        residues_only = PER_PROTEIN not in reader.kinds
        if residues_only:
            if PER_RESIDUE not in reader.kinds:
                raise InputError("holds no embeddings", path=str(path))
            attrs = dict(reader.attrs)
            ids, rows, empty = [], [], []
            for ident, array, _ in reader.items(PER_RESIDUE):
                array = np.asarray(array)
                if array.ndim == 3:  # several layers stored: (n_layers, L, D)
                    array = array[layer_on_axis(reader, layer, array.shape[0])]
                elif layer != -1:
                    layer_on_axis(reader, layer, None)
                if len(array) == 0:
                    empty.append(ident)
                    continue
                ids.append(ident)
                rows.append(array.astype(np.float64).mean(axis=0).astype(np.float32))
    if not residues_only:
        ids, matrix, attrs = _vectors(path, layer, "embeddings")
    else:
        if not ids:
            raise InputError("holds no protein", path=str(path))
        matrix = np.stack(rows)
        console.info(f"{path}: per-residue embeddings only; each protein is placed by their mean (as embed's "
                     "per-protein vectors)")
        if empty:
            console.warn(f"{path}: {console.counted(len(empty), 'protein')} without a residue left off the map "
                         f"({', '.join(empty[:3])}{', ...' if len(empty) > 3 else ''})")
        if not np.isfinite(matrix).all():
            bad = int(np.flatnonzero(~np.isfinite(matrix).all(axis=1))[0])
            raise InputError(f"embeddings: {ids[bad]} has NaN or infinite values", path=str(path))
    if not ids:
        raise InputError("holds no protein", path=str(path))
    return ids, matrix, attrs


def read_colour_labels(label_files, label_format: str, ids: list[str], embeddings=()) -> tuple[list[str], dict]:
    """(columns, id -> {column: label}) of one or more per-protein label files (DeepLoc FASTA,
    tables: every column after the id, by its header's name; FLIP CSV) for the proteins `ids`;
    labels meaning unknown (DeepLoc's
    membrane U) are left out. A protein two files label differently is an error; files that
    label none of the proteins are an error, those that label some are said on stderr. A record
    whose id is in none of the `embeddings` files labels the protein of its sequence there (as
    fit matches labels: a FLIP CSV's rows, keyed by sequence)."""
    from protrans_cli.knn import protein_labels

    wanted = set(ids)
    columns: list[str] = []
    by_id: dict[str, dict] = {}
    found_in: dict[tuple[str, str], str] = {}
    for path in label_files:
        file_columns, file_by_id, unknown, first = protein_labels(path, label_format,
                                                                  "a map colours each protein by one label",
                                                                  all_columns=True, embeddings=embeddings)
        # (an annotation table's own `source` or `x` column beside the map's: renamed label_source, label_x)
        renamed = {c: f"label_{c}" if c in RESERVED else c for c in file_columns}
        if clash := next((c for c in file_columns if c in RESERVED and f"label_{c}" in file_columns), None):
            # (`id,x,label_x`: the renamed x and the file's own label_x were one column, x's values lost)
            raise InputError(f"its column {clash!r}, a name the map's table has, would be label_{clash}, and it has "
                             f"a label_{clash} column too: rename one of them", path=str(path))
        file_columns = [renamed[c] for c in file_columns]
        file_by_id = {i: {renamed.get(c, c): v for c, v in labels.items()} for i, labels in file_by_id.items()}
        unknown = {renamed.get(c, c): v for c, v in unknown.items()}
        if not wanted & file_by_id.keys():
            raise InputError(f"labels none of the {len(ids):,} proteins mapped (ids such as {ids[0]!r}; the "
                             f"file's: {first or 'none'!r})", path=str(path))
        for column in file_columns:
            if column not in columns:
                columns.append(column)
        for ident, labels in file_by_id.items():
            if ident not in wanted:
                continue
            into = by_id.setdefault(ident, {})
            for column, value in labels.items():
                if value is None or value == "" or value in unknown.get(column, ()):
                    continue
                if column in into and into[column] != value:
                    raise InputError(f"{ident}: {column} {value!r} here, {into[column]!r} in "
                                     f"{found_in[(ident, column)]}", path=str(path))
                into[column] = value
                found_in[(ident, column)] = str(path)
    _drop_missing_numbers(columns, by_id)
    unlabelled = sum(1 for i in wanted if i not in by_id)
    if unlabelled:
        console.info(f"{unlabelled:,} of the {len(wanted):,} proteins mapped have no label (drawn in grey)")
    return columns, by_id


def _drop_missing_numbers(columns: list[str], by_id: dict) -> None:
    """In a column of numbers, a missing one as R, pandas or a spreadsheet writes it (NA, nan,
    N/A, NULL: fit value's MISSING_NUMBERS) is no label, as an empty cell is: R's `NA` among
    melting points was a class of its own, and the colour scale became one colour a number."""
    from protrans_cli.heads.tasks import missing_number

    for column in columns:
        values = [labels[column] for labels in by_id.values() if column in labels]
        numbers = [v for v in values if not missing_number(v)]
        if len(numbers) == len(values) or _numbers(numbers) is None:
            continue
        for ident in [i for i, labels in by_id.items() if missing_number(labels.get(column, "x"))]:
            del by_id[ident][column]
            if not by_id[ident]:
                del by_id[ident]


def project(inputs, output="-", *, method: str = "pca", dims: int = 2, metric: str = "euclidean", layer: int = -1,
            labels=(), label_format: str = "auto", colour_by: str | None = None, seed: int = 0,
            perplexity: float | None = None, neighbors: int | None = None, min_dist: float = 0.1,
            plot=None, html_path=None, threads: int | None = None, allow_model_mismatch: bool = False,
            measure: bool = True, sample: int | None = None) -> Projection:
    """Place the per-protein vectors of `inputs` (embeddings files of one model) on a map and
    write it: `output` a TSV (id, source with several inputs, x, y[, z], the label columns;
    '-' stdout, None nothing), `plot` a PNG/SVG/PDF picture, `html_path` a page to explore it
    in a browser (2 dimensions). Every output is written whole or not at all. `sample`: place
    that many of the proteins, drawn by `seed` (t-SNE of a UniRef-sized set), in input order."""
    from protrans_cli.io.files import input_named_by, names_stdout, output_directory, same_file, staged_outputs

    # (None, a number or a list of lists were TypeErrors from inside: "'NoneType' object is not
    # iterable", "expected str, bytes or os.PathLike object, not list")
    if inputs is None or not isinstance(inputs, (str, os.PathLike)) and not hasattr(inputs, "__iter__"):
        raise UsageError(f"inputs must be an embeddings file or a list of them, got {type(inputs).__name__} "
                         f"{inputs!r:.60}")
    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    labels = [labels] if isinstance(labels, (str, os.PathLike)) else list(labels or ())
    for name, paths in (("inputs", inputs), ("labels", labels)):
        for value in paths:
            expect_path(value, f"project: {name}", " (one file each)")
    if not inputs:
        raise UsageError("no embeddings to map: give one file or more")
    check_numbers(dims=dims, seed=seed, layer=layer, sample=sample, perplexity=perplexity, neighbors=neighbors,
                  min_dist=min_dist, threads=threads)
    check_method(method, dims, metric)
    check_seed(seed)
    # (the bounds that need no data, before it is read: they were said once every file was read)
    check_bounds(method, perplexity=perplexity, neighbors=neighbors, min_dist=min_dist)
    if sample is not None:  # (as many as the method places: PCA 2, t-SNE and UMAP 4)
        at_least(sample, 2 if method == "pca" else 4, "--sample", keyword="sample")
    if html_path is not None and dims != 2:
        page = option("--html", "html_path")
        raise UsageError(f"{page} draws 2 dimensions: leave out {given('--dims', 'dims', dims)} (or {page})")
    if plot is not None and Path(str(plot)).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"{option(f'--plot {plot}', f'plot {plot}')}: a picture is .png, .svg or .pdf")
    if html_path is not None and str(html_path) == "-" and output is not None and str(output) == "-":
        # (the page was written after the table, one stream of TSV and HTML)
        raise UsageError(f"{option('-o and --html', 'output and html_path')} cannot both go to stdout (-): give files")
    named = {"-o": option("-o", "output"), "--plot": option("--plot", "plot"), "--html": option("--html", "html_path")}
    outputs = [(o, named[flag]) for o, flag in ((output, "-o"), (plot, "--plot"), (html_path, "--html"))
               if o is not None and str(o) != "-"]
    for out, flag in outputs:
        if source := input_named_by(out, [*inputs, *labels]):
            raise UsageError(f"{flag} {out} is also an input: writing it would replace {source} (choose another name)")
        output_directory(out)
    if output is not None:
        from protrans_cli.knn import warn_tab_separated

        warn_tab_separated(output, "project")
    for i, (out, flag) in enumerate(outputs):
        for other, other_flag in outputs[i + 1:]:
            if same_file(out, other) or str(out) == str(other):
                raise UsageError(f"{flag} and {other_flag} name one file ({out}): give each its own")
    on_stdout = next((named[flag] for o, flag in ((output, "-o"), (html_path, "--html"))
                      if o is not None and str(o) == "-"), None)
    for out, flag in outputs if on_stdout else ():
        if names_stdout(out):  # (`--plot map.png > map.png`: the picture replaced the table without a word)
            raise UsageError(f"{flag} {out} is where stdout goes, and {on_stdout} - writes there too: one would "
                             f"replace the other (give {on_stdout} a file)")
    ids, sources, vectors = read_vectors(inputs, layer=layer, allow_model_mismatch=allow_model_mismatch)
    if sample is not None and sample < len(ids):
        chosen_rows = np.sort(np.random.default_rng(seed).choice(len(ids), sample, replace=False))
        console.info(f"placing {sample:,} of the {len(ids):,} proteins, drawn by --seed {seed} (--sample)")
        ids, sources = [ids[i] for i in chosen_rows], [sources[i] for i in chosen_rows]
        vectors = vectors[chosen_rows]
    if metric == "cosine":
        by_name = dict(zip(_source_names(inputs), map(str, inputs)))
        _check_norms(vectors, ids, [by_name[name] for name in sources])
    columns, by_id = read_colour_labels(labels, label_format, ids, inputs) if labels else ([], {})
    label_rows = {c: [by_id.get(i, {}).get(c) for i in ids] for c in columns}
    several = len(inputs) > 1
    if several:
        label_rows = {SOURCE: list(sources), **label_rows}
    if colour_by == SOURCE and not several:
        # (the help's "`source`: the input file": "no such label column (the columns: none: give
        # --labels)" sent the user to labels that have no such column either)
        raise UsageError(f"{given('--color-by', 'colour_by', SOURCE)} colours by input file: give two embeddings "
                         "files or more (one here)")
    if colour_by is not None and colour_by not in label_rows:
        known = ", ".join(label_rows) or f"none: give {option('--labels', 'labels')}"
        raise UsageError(f"{given('--color-by', 'colour_by', colour_by)}: no such label column (the columns: {known})")
    chosen = colour_by or next((c for c in columns), SOURCE if several else None)
    console.info(f"placing {console.counted(len(ids), 'protein')} ({vectors.shape[1]} dimensions) by "
                 f"{NAMES[method]} ({metric})")
    try:
        coords, explained = reduce(vectors, method=method, dims=dims, metric=metric, seed=seed,
                                   perplexity=perplexity, neighbors=neighbors, min_dist=min_dist, threads=threads)
    except InputError as exc:  # (too few proteins to place: the file they came from named, where one is)
        if exc.path is None and len(inputs) == 1:
            exc.path = str(inputs[0])
        raise
    result = Projection(ids, sources, coords, method, metric, label_rows, explained, None, chosen)
    if measure:
        # (the label agreement of classes: not of numbers on a colour scale)
        categories = label_rows[chosen] if chosen is not None and _scale_numbers(label_rows[chosen]) is None else None
        result.kept, result.agreement = map_quality(vectors, coords, metric=metric, labels=categories, seed=seed)
    # Every file written out first, then renamed together, signals held: a Ctrl-C while the
    # picture was drawn left the new table beside the old picture and page (of another map).
    with staged_outputs() as staged:
        if output is not None:
            write_table(result, output, staged=staged)
        if plot is not None:
            save_map_picture(result, plot, title=_title(result, inputs), staged=staged)
        if html_path is not None:
            save_map_page(result, html_path, title=_title(result, inputs), staged=staged)
    for line in _summary(result, output):
        console.info(line)
    return result


def _title(result: Projection, inputs) -> str:
    names = ", ".join(_source_names(inputs))  # (run1/embed/e.h5, run2/embed/e.h5: not e.h5, e.h5)
    return f"{NAMES[result.method]} ({result.metric}) of {names}: {console.counted(len(result.ids), 'protein')}"


def _summary(result: Projection, output) -> list[str]:
    """The lines said at the end: what was made, then how far to trust it (module docstring)."""
    made = f"project: {console.counted(len(result.ids), 'protein')} by {NAMES[result.method]}"
    if output is not None and str(output) != "-":
        made += f" into {output}"
    if result.explained is not None:
        made += "; axes explain " + ", ".join(f"{100 * e:.1f}%" for e in result.explained) + " of the variance"
    lines = [made]
    quality = []
    n = len(result.ids)
    if result.kept is not None and n - 1 <= KEPT_NEIGHBOURS:  # (measured, and nan: map_quality)
        # ("9 nearest neighbours kept on the map: 1.00 (random: 1)": any map keeps them all)
        quality.append(f"neighbours kept not measured: {n} proteins are too few (any map keeps each one's "
                       f"{n - 1} others as its nearest; {KEPT_NEIGHBOURS + 2} or more give a figure)")
    elif result.kept is not None and not math.isnan(result.kept):
        quality.append(f"{KEPT_NEIGHBOURS} nearest neighbours kept on the map: {result.kept:.2f} "
                       f"(a random map keeps {KEPT_NEIGHBOURS / (n - 1):.2g})")
    if result.agreement is not None:
        space, on_map, counted = result.agreement
        quality.append(f"the nearest labelled protein has the same {result.colour_by}: {space:.2f} in embedding "
                       f"space, {on_map:.2f} on the map ({console.counted(counted, 'protein')})")
    if quality:
        lines.append("map quality: " + "; ".join(quality))
    return lines


def write_table(result: Projection, output, *, staged: list | None = None) -> None:
    """The TSV: id, source (with several inputs), one column per axis, the label columns
    (`staged`: atomic_output's)."""
    from protrans_cli.io.files import atomic_output
    from protrans_cli.knn import _cell

    axes = ["x", "y", "z"][:result.coords.shape[1]]
    label_columns = [c for c in result.labels if c != SOURCE]
    head = ["id", *([SOURCE] if SOURCE in result.labels else []), *axes, *label_columns]
    with atomic_output(output, follow_link=True, staged=staged) as stream:
        stream.write(("\t".join(head) + "\n").encode())
        lines = []
        for row, ident in enumerate(result.ids):
            cells = [_cell(ident)]
            if SOURCE in result.labels:
                cells.append(_cell(result.sources[row]))
            cells += [f"{v:.6g}" for v in result.coords[row]]
            cells += [_cell("" if result.labels[c][row] is None else result.labels[c][row]) for c in label_columns]
            lines.append("\t".join(cells))
            if len(lines) == 4096:
                stream.write(("\n".join(lines) + "\n").encode())
                lines = []
        if lines:
            stream.write(("\n".join(lines) + "\n").encode())


@dataclass
class Colouring:
    """How the points are coloured: by category (a colour each, an `other` for the rare ones),
    by a scale of numbers, or one colour."""

    kind: str                      # "category", "scale" or "none"
    colours: list[str]             # one per row, "#rrggbb"
    legend: list[tuple[str, str, int]] = field(default_factory=list)  # (label, colour, count), categories
    low: float = math.nan
    high: float = math.nan
    column: str | None = None
    groups: list = field(default_factory=list)  # per row: its legend entry's index, or None (none, a scale's number)


UNLABELLED = "#c8c8c8"
OTHER = "#7f7f7f"
# tab20's greys are OTHER and (all but) UNLABELLED: two of tab20b's colours in their place
GREYS = {"#7f7f7f": "#393b79", "#c7c7c7": "#637939"}


def colouring(result: Projection) -> Colouring:
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    n = len(result.ids)
    column = result.colour_by
    if column is None:
        return Colouring("none", ["#1f77b4"] * n)
    values = result.labels[column]
    present = [v for v in values if v is not None]
    if (numbers := _scale_numbers(values)) is not None:
        low, high = float(min(numbers)), float(max(numbers))
        scale = colormaps["viridis"]
        span = high - low or 1.0
        colours = [UNLABELLED if v is None else to_hex(scale((float(v) - low) / span)) for v in values]
        unlabelled = n - len(present)
        legend = [("no label", UNLABELLED, unlabelled)] if unlabelled else []
        groups = [0 if v is None else None for v in values]
        return Colouring("scale", colours, legend, low, high, column, groups)
    counts: dict[str, int] = {}
    for v in present:
        counts[str(v)] = counts.get(str(v), 0) + 1
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    shown = ranked if len(ranked) <= MAX_COLOURS else ranked[:MAX_COLOURS - 1]
    shown = sorted(shown, key=float) if _numbers(shown) is not None else sorted(shown)  # (2 before 10)
    palette = _palette(len(shown))
    colour_of = {c: palette[i % len(palette)] for i, c in enumerate(shown)}
    legend = [(c, colour_of[c], counts[c]) for c in shown]
    group_of = {c: i for i, c in enumerate(shown)}
    rest = [c for c in ranked if c not in colour_of]
    other = unlabelled = None
    if rest:
        other = len(legend)
        legend.append((f"other ({len(rest)} labels)", OTHER, sum(counts[c] for c in rest)))
    if len(present) < n:
        unlabelled = len(legend)
        legend.append(("no label", UNLABELLED, n - len(present)))
    colours = [UNLABELLED if v is None else colour_of.get(str(v), OTHER) for v in values]
    groups = [unlabelled if v is None else group_of.get(str(v), other) for v in values]
    return Colouring("category", colours, legend, column=column, groups=groups)


def _palette(count: int) -> list[str]:
    """Colours of `count` categories: tab10's (tab20's beyond 9) without the greys that say
    "other" and "no label" (a category drawn in OTHER's grey was one with the rare labels)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    if count <= 9:
        return [c for c in map(to_hex, colormaps["tab10"].colors) if c not in GREYS]
    return [GREYS.get(c, c) for c in map(to_hex, colormaps["tab20"].colors)]


def _scale_numbers(values: list) -> list[float] | None:
    """The labels present as numbers where they are drawn on a colour scale (numbers, at least
    CONTINUOUS_MIN_VALUES distinct), else None: a column of classes."""
    numbers = _numbers([v for v in values if v is not None])
    return numbers if numbers is not None and len(set(numbers)) >= CONTINUOUS_MIN_VALUES else None


def _numbers(values: list) -> list[float] | None:
    out = []
    for v in values:
        try:
            number = float(v)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(number):
            return None
        out.append(number)
    return out if out else None


def _draw_order(colours: Colouring) -> np.ndarray:
    """Unlabelled points first (underneath), then the rare labels' (other), then the rest in
    row order (thousands of `other` points drawn over the coloured ones hid them)."""
    grey = np.array([c == UNLABELLED for c in colours.colours])
    other = np.array([colours.kind == "category" and c == OTHER for c in colours.colours], dtype=bool)
    return np.concatenate([np.flatnonzero(grey), np.flatnonzero(other), np.flatnonzero(~grey & ~other)])


def save_map_picture(result: Projection, path, *, title: str = "", staged: list | None = None) -> None:
    """The map as a scatter plot (PNG, SVG or PDF by the name), coloured by `colour_by` with a
    legend (or a colour bar for numbers); written atomically (`staged`: atomic_output's)."""
    from matplotlib.figure import Figure

    from protrans_cli.io.files import atomic_output

    colours = colouring(result)
    n, dims = result.coords.shape
    size = float(np.clip(15000.0 / max(n, 1), 2.0, 30.0))  # (points^2: 3.4 for a proteome of 4,400)
    fig = Figure(figsize=(8.5 if colours.legend or colours.kind == "scale" else 6.5, 6))
    ax = fig.add_subplot(projection="3d" if dims == 3 else None)
    order = _draw_order(colours)
    points = result.coords[order]
    scatter_colours = [colours.colours[i] for i in order]
    ax.scatter(*points.T, c=scatter_colours, s=size, linewidths=0, alpha=0.85)
    names = result.axis_names()
    ax.set_xlabel(names[0], fontsize=8)
    ax.set_ylabel(names[1], fontsize=8)
    if dims == 3:
        ax.set_zlabel(names[2], fontsize=8)
    ax.tick_params(labelsize=7)
    if colours.kind == "scale":
        from matplotlib import colormaps
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        mappable = ScalarMappable(norm=Normalize(colours.low, colours.high), cmap=colormaps["viridis"])
        fig.colorbar(mappable, ax=ax, fraction=0.04, pad=0.02).set_label(literal_text(colours.column), fontsize=8)
    if colours.legend:
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], marker="o", linestyle="", markersize=5, markerfacecolor=colour, markeredgewidth=0,
                          label=literal_text(f"{label} ({count:,})")) for label, colour, count in colours.legend]
        ax.legend(handles=handles, title=literal_text(colours.column), fontsize=7, title_fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), frameon=False)
    if title:
        ax.set_title(literal_text(title), fontsize=9)
    fig.tight_layout()
    suffix = Path(str(path)).suffix.lower().lstrip(".") or "png"
    # No date in an SVG's or PDF's metadata and a fixed salt for the SVG's element ids (random by
    # default): the same command gives the same file, byte for byte, as a PNG always was
    from matplotlib import rc_context

    metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(suffix)
    with atomic_output(path, follow_link=True, staged=staged) as stream, rc_context({"svg.hashsalt": "protrans"}):
        fig.savefig(stream, format=suffix, dpi=130, metadata=metadata)


def literal_text(text: str) -> str:
    """Text from the input (a label, a file name) as matplotlib draws it literally: a pair of `$`
    in it is otherwise mathtext (`$x$` drawn as math, `$\\frac{a$` a traceback from savefig)."""
    return str(text).replace("$", r"\$")


def save_map_page(result: Projection, path, *, title: str = "", staged: list | None = None) -> None:
    """A self-contained HTML page (no script or style from elsewhere): the map as SVG, a point's
    id and labels on hover, the mouse wheel zooms, dragging pans, a click on a legend entry
    hides or shows its points. 2 dimensions. Written atomically (`staged`: atomic_output's)."""
    from protrans_cli.io.files import atomic_output

    if result.coords.shape[1] != 2:
        raise UsageError("the HTML map draws 2 dimensions")
    colours = colouring(result)
    xy = result.coords
    low, high = xy.min(axis=0), xy.max(axis=0)
    span = np.where(high - low > 0, high - low, 1.0)
    side = 1000.0
    scaled = np.empty_like(xy)
    scaled[:, 0] = 20 + (xy[:, 0] - low[0]) / span[0] * (side - 40)
    scaled[:, 1] = side - 20 - (xy[:, 1] - low[1]) / span[1] * (side - 40)  # (SVG's y runs down)
    radius = float(np.clip(60.0 / math.sqrt(max(len(xy), 1)), 1.5, 6.0))
    label_columns = list(result.labels)
    circles = []
    for row in _draw_order(colours):
        tip = [result.ids[row]] + [f"{c}: {result.labels[c][row]}" for c in label_columns
                                   if result.labels[c][row] is not None]
        group = colours.groups[row] if colours.groups else None
        klass = f' class="g{group}"' if group is not None else ""
        circles.append(f'<circle cx="{scaled[row, 0]:.1f}" cy="{scaled[row, 1]:.1f}" r="{radius:.2g}" '
                       f'fill="{colours.colours[row]}"{klass}><title>{html.escape(chr(10).join(tip))}</title></circle>')
    legend = "".join(
        f'<li data-group="g{i}"><span style="background:{colour}"></span>{html.escape(str(label))} ({count:,})</li>'
        for i, (label, colour, count) in enumerate(colours.legend))
    if colours.kind == "scale":
        legend = (f'<li class="scale"><span class="bar"></span>{colours.low:.4g} to {colours.high:.4g}</li>'
                  + legend)
    axes = result.axis_names()
    page = _PAGE.format(title=html.escape(title), legend_title=html.escape(colours.column or ""),
                        legend=legend, circles="\n".join(circles), side=int(side), radius=f"{radius:.2g}",
                        x=html.escape(axes[0]),
                        y=html.escape(axes[1]), facts=html.escape(json.dumps(
                            {"method": result.method, "metric": result.metric, "proteins": len(result.ids),
                             "neighbourhoods_kept": None if result.kept is None or math.isnan(result.kept)
                             else round(result.kept, 4),
                             "same_label_nearest": None if result.agreement is None else
                             {"column": result.colour_by, "space": round(result.agreement[0], 4),
                              "map": round(result.agreement[1], 4), "proteins": result.agreement[2]}})))
    with atomic_output(path, follow_link=True, staged=staged) as stream:
        stream.write(page.encode("utf-8"))


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="generator" content="protrans project" data-facts="{facts}">
<style>
body {{ font: 13px sans-serif; margin: 12px; }}
#wrap {{ display: flex; gap: 16px; align-items: flex-start; }}
svg {{ width: min(85vh, 70vw); height: min(85vh, 70vw); border: 1px solid #ddd; cursor: grab; }}
circle {{ fill-opacity: 0.85; vector-effect: non-scaling-stroke; }}
circle:hover {{ stroke: black; stroke-width: 1px; }}
.hidden {{ display: none; }}
ul {{ list-style: none; padding: 0; margin: 4px 0; }}
li {{ cursor: pointer; margin: 2px 0; user-select: none; }}
li.off {{ opacity: 0.35; }}
li span {{ display: inline-block; width: 10px; height: 10px; border-radius: 5px; margin-right: 6px; }}
li span.bar {{ width: 60px; border-radius: 0; background: linear-gradient(to right, #440154, #21918c, #fde725); }}
</style></head>
<body><h3>{title}</h3>
<div id="wrap"><svg id="map" viewBox="0 0 {side} {side}" xmlns="http://www.w3.org/2000/svg">
<g id="points">
{circles}
</g></svg>
<div><b>{legend_title}</b><ul id="legend">{legend}</ul>
<p>x: {x}<br>y: {y}</p><p>wheel: zoom; drag: move; double click: whole map;<br>
a legend entry: hide or show its points</p></div></div>
<script>
(function () {{
  var svg = document.getElementById("map"), side = {side}, radius = {radius};
  var box = [0, 0, side, side], drag = null, circles = svg.getElementsByTagName("circle");
  function show() {{
    svg.setAttribute("viewBox", box.join(" "));
    // the points keep their size on the screen: zooming in draws apart the ones that overlap
    var r = String(+(radius * box[2] / side).toPrecision(3));
    for (var i = 0; i < circles.length; i++) circles[i].setAttribute("r", r);
  }}
  function point(e) {{
    var r = svg.getBoundingClientRect();
    return [box[0] + (e.clientX - r.left) / r.width * box[2], box[1] + (e.clientY - r.top) / r.height * box[3]];
  }}
  svg.addEventListener("wheel", function (e) {{
    e.preventDefault();
    var p = point(e), f = e.deltaY < 0 ? 0.8 : 1.25;
    box = [p[0] - (p[0] - box[0]) * f, p[1] - (p[1] - box[1]) * f, box[2] * f, box[3] * f]; show();
  }}, {{passive: false}});
  svg.addEventListener("mousedown", function (e) {{ drag = point(e); }});
  window.addEventListener("mouseup", function () {{ drag = null; }});
  svg.addEventListener("mousemove", function (e) {{
    if (!drag) return;
    var p = point(e); box[0] -= p[0] - drag[0]; box[1] -= p[1] - drag[1]; show();
  }});
  svg.addEventListener("dblclick", function () {{ box = [0, 0, side, side]; show(); }});
  document.querySelectorAll("#legend li[data-group]").forEach(function (li) {{
    li.addEventListener("click", function () {{
      li.classList.toggle("off");
      svg.querySelectorAll("circle." + li.dataset.group).forEach(function (c) {{ c.classList.toggle("hidden"); }});
    }});
  }});
}})();
</script></body></html>
"""
