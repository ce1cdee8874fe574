"""`protrans knn`: nearest neighbours of per-protein vectors against a brute-force reference
(every distance in float64 with numpy), label transfer and its score, and the refusals."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from protrans_cli.errors import InputError, ModelError, UsageError
from protrans_cli.io.h5 import EmbeddingsWriter

AA = "ACDEFGHIKLMNPQRSTVWY"


def _write(path, vectors, ids=None, *, layout="grouped", model="onehot", residues=False):
    ids = ids or [f"p{i:03d}" for i in range(len(vectors))]
    rng = np.random.default_rng(len(vectors))
    kinds = ("per_residue",) if residues else ("per_protein",)
    with EmbeddingsWriter(path, kinds=kinds, layout=layout, attrs={"model": model}) as w:
        for ident, v in zip(ids, vectors):
            seq = "".join(rng.choice(list(AA), 8))
            if residues:
                w.write(ident, ident, seq, per_residue=np.tile(v, (8, 1)).astype(np.float32))
            else:
                w.write(ident, ident, seq, per_protein=np.asarray(v, dtype=np.float32))
    return ids


def distances(q, r, metric):
    """Every query's distance to every reference, in float64 with numpy (the brute force)."""
    q, r = q.astype(np.float64), r.astype(np.float64)
    if metric == "cosine":
        return np.maximum(1 - (q @ r.T) / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(r, axis=1)[None, :], 0)
    return np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))


def _brute(q, r, k, metric, exclude=None):
    d = distances(q, r, metric)
    if exclude is not None:
        d[exclude] = np.inf
    index = np.argsort(d, axis=1, kind="stable")[:, :k]
    return index, np.take_along_axis(d, index, 1)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("layout", ["grouped", "stacked"])
def test_neighbours_equal_a_brute_force_search(tmp_path, monkeypatch, metric, layout):
    """Slices smaller than the sets (so the running top-k is merged across reference slices and
    queries come in several slices) give every query the brute force's neighbours and distances."""
    from protrans_cli import knn as knn_module

    monkeypatch.setattr(knn_module, "QUERY_SLICE", 7)
    monkeypatch.setattr(knn_module, "REFERENCE_SLICE", 11)
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(23, 16)), rng.normal(size=(60, 16)) + 0.3
    q_ids = _write(tmp_path / "q.h5", q, layout=layout)
    r_ids = _write(tmp_path / "r.h5", r, [f"r{i:02d}" for i in range(60)], layout=layout)
    found = knn_module.nearest(tmp_path / "q.h5", tmp_path / "r.h5", k=4, metric=metric, threads=1, device="cpu")
    index, distance = _brute(q.astype(np.float32), r.astype(np.float32), 4, metric)
    assert found.query_ids == q_ids and found.reference_ids == r_ids
    assert np.array_equal(found.index, index)
    np.testing.assert_allclose(found.distance, distance, rtol=1e-9, atol=1e-12)


def test_exclude_self_is_leave_one_out_and_ties_go_to_the_earlier_reference(tmp_path):
    from protrans_cli.knn import nearest

    rng = np.random.default_rng(1)
    v = rng.normal(size=(30, 8))
    v[7] = v[3]  # a twin: each other's neighbour at distance 0
    v[12] = v[3]
    _write(tmp_path / "a.h5", v)
    found = nearest(tmp_path / "a.h5", tmp_path / "a.h5", k=2, exclude_self=True, threads=1)
    index, distance = _brute(v.astype(np.float32), v.astype(np.float32), 2, "euclidean", np.eye(30, dtype=bool))
    assert np.array_equal(found.index, index)
    assert found.index[3].tolist() == [7, 12] and found.index[7].tolist() == [3, 12]  # ties: reference order
    assert found.distance[3].tolist() == [0.0, 0.0]
    plain = nearest(tmp_path / "a.h5", tmp_path / "a.h5", k=1, threads=1)
    assert plain.index[5, 0] == 5 and plain.distance[5, 0] == 0.0


def test_copies_of_one_vector_come_earliest_first_whatever_the_slices(tmp_path, monkeypatch):
    """One sequence under 30 accessions (embedded once, one vector 30 times): the three nearest
    are the first three accessions, as the file's order says; they were the 17th to 19th (the
    10th, 12th and 17th in slices of 7), whichever torch.topk picked among equal distances."""
    from protrans_cli import knn as knn_module

    _write(tmp_path / "q.h5", np.full((1, 4), 2.0))
    ids = _write(tmp_path / "r.h5", np.ones((30, 4)), [f"acc{i:02d}" for i in range(30)])
    for slice_size in (16384, 7):
        monkeypatch.setattr(knn_module, "REFERENCE_SLICE", slice_size)
        found = knn_module.nearest(tmp_path / "q.h5", tmp_path / "r.h5", k=3, threads=1, device="cpu")
        assert [found.reference_ids[i] for i in found.index[0]] == ids[:3], slice_size
        assert found.distance[0].tolist() == [2.0, 2.0, 2.0]


def test_cosine_distances_are_never_negative(tmp_path, run_cli):
    """1 - cos of a vector with itself is -2.2e-16 in float64 for some vectors (7 of these 40):
    the distance is 0 there, never below (the TSV would say -2.22045e-16)."""
    from protrans_cli.knn import nearest

    v = np.random.default_rng(0).normal(size=(40, 16))
    _write(tmp_path / "a.h5", v)
    found = nearest(tmp_path / "a.h5", tmp_path / "a.h5", k=3, metric="cosine", threads=1, device="cpu")
    assert found.index[:, 0].tolist() == list(range(40))  # (each its own nearest)
    assert (found.distance >= 0).all(), found.distance.min()
    r = run_cli("knn", tmp_path / "a.h5", "--reference", tmp_path / "a.h5", "--metric", "cosine", "-j", "1")
    assert r.exit_code == 0, r.stderr
    assert [line.split("\t")[3] for line in r.stdout.splitlines()[1:] if line.split("\t")[3].startswith("-")] == []


def test_the_tables_distances_are_the_brute_forces_to_six_digits(tmp_path, run_cli):
    """The distance column holds 6 significant digits of the exact distance, for both metrics."""
    rng = np.random.default_rng(5)
    q, r = rng.normal(size=(6, 10)), rng.normal(size=(15, 10))
    _write(tmp_path / "q.h5", q)
    _write(tmp_path / "r.h5", r, [f"r{i:02d}" for i in range(15)])
    for metric in ("euclidean", "cosine"):
        out = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "-k", "3", "--metric", metric,
                      "-j", "1")
        assert out.exit_code == 0, out.stderr
        rows = [line.split("\t") for line in out.stdout.splitlines()[1:]]
        index, distance = _brute(q.astype(np.float32), r.astype(np.float32), 3, metric)
        assert len(rows) == 18
        for row in rows:
            qi, rank = int(row[0][1:]), int(row[1]) - 1
            assert row[2] == f"r{index[qi, rank]:02d}"
            assert float(row[3]) == pytest.approx(distance[qi, rank], rel=5e-6), (metric, row)


def test_exclude_self_against_another_file_leaves_out_only_the_ids_it_holds(tmp_path):
    """Queries of another file beside the reference, --exclude-self: a query whose id the
    reference does not hold loses none of its neighbours (not the reference's first protein)."""
    from protrans_cli.knn import nearest

    rng = np.random.default_rng(3)
    r = rng.normal(size=(12, 6))
    q = np.concatenate([r[:3] + 0.01, rng.normal(size=(3, 6))])
    r_ids = _write(tmp_path / "r.h5", r, [f"p{i:03d}" for i in range(12)])
    _write(tmp_path / "q.h5", q, ["p000", "p005", "x1", "x2", "x3", "x4"])
    found = nearest(tmp_path / "q.h5", tmp_path / "r.h5", k=12, exclude_self=True, threads=1, device="cpu")
    own = np.zeros((6, 12), dtype=bool)
    own[0, 0] = own[1, 5] = True
    index, distance = _brute(q.astype(np.float32), r.astype(np.float32), 12, "euclidean", own)
    assert found.reference_ids == r_ids
    assert np.array_equal(found.index[2:], index[2:]) and (found.index[2:] >= 0).all()
    assert 0 not in found.index[0].tolist() and 5 not in found.index[1].tolist()
    assert np.array_equal(found.index[:2, :11], index[:2, :11]) and (found.index[:2, 11] == -1).all()


def test_near_neighbours_the_product_misorders_are_ranked_by_their_exact_distance(tmp_path):
    """Vectors of length 1,000 that differ by thousandths: in float32, |q|^2 + |r|^2 - 2 q.r is
    0 for every reference (the product's candidates a tie, in reference order), while the nearest
    is the last. The candidates beyond k measured again in float64 find it."""
    from protrans_cli.knn import nearest

    r = np.array([[1000.0, 0.001 * (6 - i)] for i in range(6)])  # the nearest to [1000, 0] last
    _write(tmp_path / "q.h5", np.array([[1000.0, 0.0]]))
    _write(tmp_path / "r.h5", r, [f"r{i}" for i in range(6)])
    found = nearest(tmp_path / "q.h5", tmp_path / "r.h5", k=2, threads=1, device="cpu")
    assert found.index[0].tolist() == [5, 4]
    np.testing.assert_allclose(found.distance[0], np.abs(r[[5, 4], 1].astype(np.float32)), rtol=1e-6)


def test_fewer_reference_proteins_than_k(tmp_path, run_cli):
    _write(tmp_path / "q.h5", np.eye(3))
    _write(tmp_path / "r.h5", np.eye(3)[:2], ["a", "b"])
    r = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "-k", "5")
    assert r.exit_code == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert rows[0] == ["query", "rank", "neighbour", "distance"]
    assert [row[:3] for row in rows[1:3]] == [["p000", "1", "a"], ["p000", "2", "b"]] and len(rows) == 7
    # said once on stderr (the rows were fewer than -k without a word)
    assert "-k 5: the reference holds 2 proteins, so 3 of the 3 queries have 2 neighbours" in (
        r.stderr.replace("\n", " "))
    r = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "q.h5", "-k", "3", "--exclude-self")
    assert r.exit_code == 0, r.stderr
    assert "3 of the 3 queries have 2 neighbours (besides the query itself" in r.stderr.replace("\n", " ")
    r = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "q.h5", "-k", "2", "--exclude-self")
    assert "-k 2:" not in r.stderr


def test_a_k_far_beyond_the_reference_allocates_no_queries_by_k_arrays(tmp_path, run_cli):
    """-k 100000000 on a few proteins allocated (queries x k) int64 and float64 arrays: an
    out-of-memory error (GBs) where the docs promise fewer rows; the arrays are the reference's width."""
    from protrans_cli.knn import nearest

    _write(tmp_path / "q.h5", np.eye(3))
    _write(tmp_path / "r.h5", np.eye(3)[:2], ["a", "b"])
    found = nearest(tmp_path / "q.h5", tmp_path / "r.h5", k=10**12, threads=1, device="cpu")
    assert found.index.shape == found.distance.shape == (3, 2) and (found.index >= 0).all()
    r = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "-k", str(10**12))
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.splitlines()) == 7 and "the reference holds 2 proteins" in r.stderr.replace("\n", " ")


def test_an_id_that_starts_with_a_quote_reads_back_from_the_tsv(tmp_path, run_cli):
    """A FASTA id may start with a quote: written as it stands, a TSV reader's quote handling
    (Python's csv, pandas, R) ate it up to the next quote, a row of 2 fields for 4."""
    import csv

    ids = _write(tmp_path / "q.h5", np.eye(3), ['"quoted', 'a"b', "c"])
    r = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "q.h5", "-k", "1", "--exclude-self")
    assert r.exit_code == 0, r.stderr
    rows = list(csv.reader(r.stdout.splitlines(), delimiter="\t"))
    assert [row[0] for row in rows[1:]] == ids and all(len(row) == 4 for row in rows)
    assert {row[2] for row in rows[1:]} <= set(ids)


def test_labels_are_transferred_and_scored(tmp_path, run_cli):
    """Three clusters, each with its own location; DeepLoc's membrane `U` (unknown) is never a
    label transferred for scoring: the nearest neighbour with M or S gives it."""
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(3, 12)) * 5
    locs = ["Nucleus", "Cytoplasm", "Extracellular"]
    ref = [centres[i % 3] + rng.normal(size=12) * 0.1 for i in range(30)]
    queries = [centres[i % 3] + rng.normal(size=12) * 0.1 for i in range(9)]
    _write(tmp_path / "r.h5", ref, [f"r{i}" for i in range(30)])
    _write(tmp_path / "q.h5", queries, [f"q{i}" for i in range(9)])
    # reference: every protein of cluster 0 but r0 has membrane U
    (tmp_path / "r.fasta").write_text("".join(
        f">r{i} {locs[i % 3]}-{'U' if i % 3 == 0 and i else 'M' if i % 3 == 0 else 'S'}\nMKV\n" for i in range(30)))
    # queries: the last one's true location is wrong on purpose (one miss of nine)
    (tmp_path / "q.fasta").write_text("".join(
        f">q{i} {locs[i % 3] if i < 8 else locs[0]}-{'M' if i % 3 == 0 else 'S'}\nMKV\n" for i in range(9)))
    out = tmp_path / "hits.tsv"
    r = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "--labels", tmp_path / "r.fasta",
                "--score", tmp_path / "q.fasta", "--bootstrap", "50", "-o", out)
    assert r.exit_code == 0, r.stderr
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert rows[0] == ["query", "rank", "neighbour", "distance", "loc", "membrane"] and len(rows) == 10
    for row in rows[1:]:
        assert int(row[2][1:]) % 3 == int(row[0][1:]) % 3  # the neighbour is of the query's cluster
        assert row[4] == locs[int(row[0][1:]) % 3]
    assert "transfer loc: Q10 0.8889" in r.stderr and ", 9 proteins" in r.stderr
    assert "transfer membrane: Q2 1.0000" in r.stderr  # (cluster 0's only M protein, r0, gave it)

    from protrans_cli.knn import knn

    result = knn(tmp_path / "q.h5", tmp_path / "r.h5", tmp_path / "x.tsv", labels=tmp_path / "r.fasta",
                 score=tmp_path / "q.fasta", n_bootstrap=50, k=3)
    assert result.scores["loc"]["accuracy"] == pytest.approx(8 / 9)
    assert result.columns == ["loc", "membrane"]


def test_vote_of_k_neighbours_ties_to_the_nearer():
    from protrans_cli.knn import _vote

    assert _vote(["A", "B", "B"]) == "B"
    assert _vote(["A", "B", "B", "A"]) == "A"
    assert _vote([None, "B", "A"]) == "B"
    assert _vote([None, None]) is None


def test_refusals(tmp_path, run_cli):
    _write(tmp_path / "q.h5", np.eye(4))
    _write(tmp_path / "r.h5", np.eye(4), ["a", "b", "c", "d"])
    _write(tmp_path / "r5.h5", np.eye(5), model="onehot")
    _write(tmp_path / "other.h5", np.eye(4), ["a", "b", "c", "d"], model="esm2_t6_8M")
    _write(tmp_path / "res.h5", np.eye(4), residues=True)
    base = ("knn", tmp_path / "q.h5", "--reference")
    r = run_cli(*base, tmp_path / "r5.h5")
    assert r.exit_code == 1 and "queries are 4-d, the reference (" in r.stderr and ") 5-d: embed both" in r.stderr
    r = run_cli(*base, tmp_path / "other.h5")
    assert r.exit_code == 1 and "--allow-model-mismatch overrides" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(*base, tmp_path / "other.h5", "--allow-model-mismatch")
    assert r.exit_code == 0 and "warning" in r.stderr
    r = run_cli(*base, tmp_path / "res.h5")
    assert r.exit_code == 1 and "per-residue embeddings only" in r.stderr
    import h5py

    h5py.File(tmp_path / "nothing.h5", "w").close()  # (another tool's file of no dataset: "per-residue only")
    r = run_cli(*base, tmp_path / "nothing.h5")
    assert r.exit_code == 1 and f"{tmp_path / 'nothing.h5'}: reference: holds no protein" in r.stderr, r.stderr
    r = run_cli(*base, tmp_path / "r.h5", "--score", tmp_path / "q.h5")
    assert r.exit_code == 2 and "give the reference's --labels" in r.stderr
    r = run_cli(*base, tmp_path / "r.h5", "-k", "0")
    assert r.exit_code == 2 and "-k must be at least 1" in r.stderr
    (tmp_path / "l.csv").write_text("id,label\nx,A\ny,B\n")
    r = run_cli(*base, tmp_path / "r.h5", "--labels", tmp_path / "l.csv", "-o", tmp_path / "out.tsv")
    assert r.exit_code == 1 and "labels none of the reference's 4 proteins" in r.stderr
    assert not (tmp_path / "out.tsv").exists()
    (tmp_path / "bt.fasta").write_text(">a TARGET=CCH SET=train\nMKV\n>b TARGET=HHE SET=train\nMKW\n")
    r = run_cli(*base, tmp_path / "r.h5", "--labels", tmp_path / "bt.fasta")  # biotrainer residue_to_class
    assert r.exit_code == 1 and "per-residue labels" in r.stderr
    (tmp_path / "ss.csv").write_text("input, dssp3, dssp8, disorder\nM K V, C C C, C C C, 1.0 1.0 1.0\n")
    r = run_cli(*base, tmp_path / "r.h5", "--labels", tmp_path / "ss.csv")
    assert r.exit_code == 1 and "per-residue labels" in r.stderr
    zero = tmp_path / "zero.h5"
    _write(zero, np.zeros((2, 4)))
    r = run_cli("knn", zero, "--reference", tmp_path / "r.h5", "--metric", "cosine")
    assert r.exit_code == 1 and "has no direction" in r.stderr
    with pytest.raises(UsageError):
        from protrans_cli.knn import nearest
        nearest(tmp_path / "q.h5", tmp_path / "r.h5", metric="manhattan")
    with pytest.raises((InputError, ModelError)):
        nearest(tmp_path / "q.h5", tmp_path / "r5.h5")


def test_a_reference_of_vectors_of_two_lengths_is_one_line_naming_them(tmp_path, run_cli):
    """Another tool's flat file holding vectors of two models (1024-d and 1280-d, put in one file
    by hand): knn stacked them and failed with numpy's ValueError traceback ("all input arrays
    must have the same shape")."""
    import h5py

    _write(tmp_path / "q.h5", np.eye(4))
    with h5py.File(tmp_path / "mixed.h5", "w") as f:
        f["a"] = np.ones(4, np.float32)
        f["b"] = np.ones(5, np.float32)
        f["c"] = np.ones(4, np.float32)
    r = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "mixed.h5")
    assert r.exit_code == 1 and r.stderr == (f"protrans: error: {tmp_path / 'mixed.h5'}: per-protein vectors of "
                                             "different shapes: 'a' has (4,), 'b' (5,) (a file holds the vectors of "
                                             "one model and layer)\n"), r.stderr


def test_non_finite_vectors_an_empty_reference_and_partly_labelled_sets(tmp_path, run_cli):
    """A NaN among the vectors (of either side) is refused naming the first protein; an empty
    reference is refused; reference proteins without a label and queries without a truth are
    counted in a note, and --score over the others; a query file that is its own reference is
    said."""
    _write(tmp_path / "q.h5", np.eye(4))
    _write(tmp_path / "r.h5", np.eye(4), ["a", "b", "c", "d"])
    nan = np.eye(4)
    nan[2, 1] = np.nan
    _write(tmp_path / "nan.h5", nan, ["a", "b", "c", "d"])
    _write(tmp_path / "empty.h5", np.zeros((0, 4)), [])
    out = tmp_path / "o.tsv"
    for args, message in (((tmp_path / "q.h5", "--reference", tmp_path / "nan.h5"),
                           "nan.h5: reference: 1 protein(s) have NaN or infinite values (first: c)"),
                          ((tmp_path / "nan.h5", "--reference", tmp_path / "r.h5"),
                           "nan.h5: query: 1 protein(s) have NaN or infinite values (first: c)"),
                          ((tmp_path / "q.h5", "--reference", tmp_path / "empty.h5"),
                           "empty.h5: reference: holds no protein\n")):  # (as nothing.h5's: "no proteins" here)
        r = run_cli("knn", *args, "-o", out)
        assert r.exit_code == 1 and message in r.stderr, r.stderr
        assert not out.exists()
    (tmp_path / "l.csv").write_text("id,label\na,A\nb,B\n")
    (tmp_path / "s.csv").write_text("id,label\np000,A\np001,A\n")
    r = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "--labels", tmp_path / "l.csv",
                "--score", tmp_path / "s.csv", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "l.csv: 2 of the reference's 4 proteins have no label (an empty column where one is a neighbour)" in r.stderr
    assert "s.csv: 2 of the 4 queries have no label and are not scored" in r.stderr
    assert "transfer label: accuracy 0.5000" in r.stderr and ", 2 proteins" in r.stderr
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert [row[-1] for row in rows[1:]] == ["A", "B", "", ""]
    (tmp_path / "none.csv").write_text("id,label\nzz,A\n")
    r = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "--labels", tmp_path / "l.csv",
                "--score", tmp_path / "none.csv", "-o", tmp_path / "n.tsv")
    assert r.exit_code == 1 and "none.csv: labels none of the 4 queries (ids such as 'p000')" in r.stderr
    assert not (tmp_path / "n.tsv").exists()
    r = run_cli("knn", tmp_path / "r.h5", "--reference", tmp_path / "r.h5")
    assert r.exit_code == 0 and "r.h5 is its own reference: each protein's first neighbour is itself" in r.stderr


def test_a_layer_of_several(tmp_path):
    from protrans_cli.knn import nearest

    path = tmp_path / "layers.h5"
    with EmbeddingsWriter(path, kinds=("per_protein",), attrs={"layers": [-1, -2], "model": "m"}) as w:
        for i in range(4):
            w.write(f"p{i}", f"p{i}", "MKV", per_protein=np.stack([np.eye(4)[i], np.eye(4)[3 - i]]).astype(np.float32))
    assert nearest(path, path, layer=-1, exclude_self=True).index[:, 0].tolist() == [1, 0, 0, 0]
    found = nearest(path, path, layer=-2, k=1)
    assert found.index[:, 0].tolist() == [0, 1, 2, 3] and found.distance.max() == 0
    with pytest.raises(InputError, match="not layer -3"):
        nearest(path, path, layer=-3)


# ---- knn --fasta: the queries embedded with the reference's model, layer and long-protein policy


def _fasta(path, n, seed, lengths=(12, 90), names="q"):
    rng = np.random.default_rng(seed)
    path.write_text("".join(f">{names}{i} a description\n{''.join(rng.choice(list(AA), rng.integers(*lengths)))}\n"
                            for i in range(n)))
    return path


def _no_temporaries(*folders):
    return [p.name for folder in folders for p in folder.iterdir() if p.name.startswith(".protrans-knn-")] == []


@pytest.fixture
def own_tmpdir(tmp_path, monkeypatch):
    """$TMPDIR of the temporary embeddings when the output is stdout: a folder of the test's."""
    import tempfile

    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_fasta_gives_the_rows_of_embed_then_knn_in_the_fastas_order(tmp_path, run_cli, own_tmpdir):
    ref_fa, q_fa = _fasta(tmp_path / "ref.fa", 40, 3, names="r"), _fasta(tmp_path / "q.fa", 15, 4)
    # a long-protein policy the queries must follow: chunked at 30 residues, overlap 4
    r = run_cli("embed", ref_fa, "-m", "onehot", "--per-protein", "--max-length", "30", "--long-policy", "chunk",
                "--chunk-overlap", "4", "-o", tmp_path / "ref.h5")
    assert r.exit_code == 0, r.stderr
    (tmp_path / "ref.csv").write_text("id,label\n" + "".join(f"r{i},{'AB'[i % 2]}\n" for i in range(40)))
    r = run_cli("embed", q_fa, "-m", "onehot", "--per-protein", "--max-length", "30", "--long-policy", "chunk",
                "--chunk-overlap", "4", "-o", tmp_path / "q.h5")
    assert r.exit_code == 0, r.stderr
    args = ("--reference", tmp_path / "ref.h5", "--labels", tmp_path / "ref.csv", "-k", "3")
    independent = run_cli("knn", tmp_path / "q.h5", *args)
    assert independent.exit_code == 0, independent.stderr
    # reversed FASTA: the rows follow it (embed's file holds them in another order)
    records = q_fa.read_text().split(">")[1:]
    reversed_fa = tmp_path / "reversed.fa"
    reversed_fa.write_text("".join(">" + rec for rec in reversed(records)))
    out = tmp_path / "hits.tsv"
    r = run_cli("knn", "--fasta", reversed_fa, *args, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "proteins over 30 residues: --long-policy chunk, as in the reference's embeddings" in r.stderr
    assert "with onehot" in r.stderr and ".protrans-knn-" not in r.stderr
    lines = out.read_text().splitlines()
    expected = independent.stdout.splitlines()
    assert lines[0] == expected[0] and sorted(lines[1:]) == sorted(expected[1:])
    order = list(dict.fromkeys(line.split("\t")[0] for line in lines[1:]))
    assert order == [f"q{i}" for i in reversed(range(15))]
    assert list(dict.fromkeys(line.split("\t")[0] for line in expected[1:])) != order  # (a test of the order)
    # stdin; the temporary embeddings were next to -o, then in $TMPDIR: none left
    r = run_cli("knn", "--fasta", "-", *args, input=reversed_fa.read_bytes())
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines() == lines
    assert _no_temporaries(tmp_path, own_tmpdir)
    # the Python API, with the scores of the labels transferred
    from protrans_cli.knn import knn

    (tmp_path / "q.csv").write_text("id,label\n" + "".join(f"q{i},A\n" for i in range(15)))
    result = knn(None, tmp_path / "ref.h5", tmp_path / "api.tsv", fasta=reversed_fa, labels=tmp_path / "ref.csv",
                 score=tmp_path / "q.csv", k=3, n_bootstrap=10)
    assert (tmp_path / "api.tsv").read_text().splitlines() == lines
    assert result.neighbours.query_ids == order and result.scores["label"]["n"] == 15


def test_fasta_with_a_tiny_models_reference_embeds_the_layer_it_holds(tmp_path, run_cli, own_tmpdir):
    import shutil

    import torch

    from protrans_cli.models import FAMILIES

    bert = FAMILIES["bert"]
    tokenizer = bert.build_tokenizer()
    torch.manual_seed(0)
    bert.save_pretrained(bert.pretraining_model(bert.build_config("tiny", tokenizer)), tokenizer, tmp_path / "m")
    ref_fa, q_fa = _fasta(tmp_path / "ref.fa", 12, 5, names="r"), _fasta(tmp_path / "q.fa", 6, 6)
    r = run_cli("embed", ref_fa, "-m", tmp_path / "m", "--per-protein", "--layer", "-1", "--layer", "-2",
                "--device", "cpu", "-o", tmp_path / "ref.h5")
    assert r.exit_code == 0, r.stderr
    r = run_cli("embed", q_fa, "-m", tmp_path / "m", "--per-protein", "--layer", "-2", "--device", "cpu",
                "-o", tmp_path / "q.h5")
    assert r.exit_code == 0, r.stderr
    args = ("--reference", tmp_path / "ref.h5", "--layer", "-2", "-k", "2")
    independent = run_cli("knn", tmp_path / "q.h5", *args)
    assert independent.exit_code == 0, independent.stderr
    r = run_cli("knn", "--fasta", q_fa, *args, "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == independent.stdout  # (q.h5 holds the FASTA's order already)
    # -m: the same weights elsewhere (the reference names the first copy)
    shutil.copytree(tmp_path / "m", tmp_path / "copy")
    r = run_cli("knn", "--fasta", q_fa, *args, "-m", tmp_path / "copy", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == independent.stdout
    # the other layer gives other distances
    r = run_cli("knn", "--fasta", q_fa, "--reference", tmp_path / "ref.h5", "-k", "2", "--device", "cpu")
    assert r.exit_code == 0 and r.stdout != independent.stdout
    assert _no_temporaries(tmp_path, own_tmpdir)


def test_fasta_refusals(tmp_path, run_cli, own_tmpdir):
    import h5py

    q_fa = _fasta(tmp_path / "q.fa", 3, 7)
    assert run_cli("embed", q_fa, "-m", "onehot", "--per-protein", "-o", tmp_path / "ref.h5").exit_code == 0
    ref = ("--reference", tmp_path / "ref.h5")
    # both, or neither, of QUERY and --fasta; embedding options without --fasta
    r = run_cli("knn", tmp_path / "ref.h5", "--fasta", q_fa, *ref)
    assert r.exit_code == 2 and "QUERY.h5 (embeddings) or --fasta (sequences), one of them" in r.stderr
    r = run_cli("knn", *ref)
    assert r.exit_code == 2 and "one of them" in r.stderr
    for extra in (("-m", "onehot"), ("--long-policy", "skip"), ("--invalid-policy", "skip")):
        r = run_cli("knn", tmp_path / "ref.h5", *ref, *extra)
        assert r.exit_code == 2 and f"{extra[0]} goes with --fasta" in r.stderr, (extra, r.stderr)
    # options of the labels read without any: they changed nothing, without a word
    for extra, said in ((("--bootstrap", "50"), "--bootstrap goes with --score"),
                        (("--label-format", "table"), "--label-format goes with --labels or --score"),
                        (("--label-format", "auto"), "--label-format goes with --labels or --score")):
        r = run_cli("knn", tmp_path / "ref.h5", *ref, "-o", tmp_path / "hits.tsv", *extra)
        assert r.exit_code == 2 and f"protrans: error: {said}" in r.stderr, (extra, r.stderr)
        assert not (tmp_path / "hits.tsv").exists()
    # a reference without a `model` attribute (another tool's file): -m names the model
    bare = tmp_path / "bare.h5"
    _write(bare, np.eye(21)[:3], ["a", "b", "c"])
    with h5py.File(bare, "a") as f:
        del f.attrs["model"]
    r = run_cli("knn", "--fasta", q_fa, "--reference", bare)
    assert r.exit_code == 2 and r.stderr.strip().count("\n") == 0
    assert "does not record which model made its embeddings: give -m" in r.stderr
    r = run_cli("knn", "--fasta", q_fa, "--reference", bare, "-m", "onehot")
    assert r.exit_code == 0, r.stderr
    # import-esm without -m records the tool as the model: it was loaded as a model "esm-extract"
    # (a hub download error, once the FASTA had been read); -m names the model
    with h5py.File(bare, "a") as f:
        f.attrs["model"] = "esm-extract"
    r = run_cli("knn", "--fasta", q_fa, "--reference", bare)
    assert r.exit_code == 2 and "imported from esm-extract without naming the model" in r.stderr
    assert "cannot load model" not in r.stderr and "embedding 3" not in r.stderr
    r = run_cli("knn", "--fasta", q_fa, "--reference", bare, "-m", "onehot")
    assert r.exit_code == 0, r.stderr
    # a per-residue reference is refused before anything is embedded
    assert run_cli("embed", q_fa, "-m", "onehot", "--per-residue", "-o", tmp_path / "res.h5").exit_code == 0
    r = run_cli("knn", "--fasta", q_fa, "--reference", tmp_path / "res.h5")
    assert r.exit_code == 1 and "per-residue embeddings only" in r.stderr and "embedding 3" not in r.stderr
    # a sequence embed refuses: an error naming the FASTA, or left out with a warning
    bad = tmp_path / "bad.fa"
    bad.write_text(">x1\nMKVJL\n>x2\nMKVLA\n")
    out = tmp_path / "hits.tsv"
    r = run_cli("knn", "--fasta", bad, *ref, "-o", out)
    assert r.exit_code == 1 and "invalid character 'J'" in r.stderr and "bad.fa" in r.stderr
    assert not out.exists()
    r = run_cli("knn", "--fasta", bad, *ref, "--invalid-policy", "skip", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "1 protein(s) could not be embedded and have no neighbours: x1" in r.stderr
    assert [line.split("\t")[0] for line in out.read_text().splitlines()] == ["query", "x2"]
    # an error after embedding (the reference of another width) names the FASTA, leaves no temporary file
    _write(tmp_path / "narrow.h5", np.eye(5), model="onehot")
    r = run_cli("knn", "--fasta", q_fa, "--reference", tmp_path / "narrow.h5", "-o", out)
    assert r.exit_code == 1 and ") 5-d: embed both" in r.stderr and f"the embeddings of {q_fa}" in r.stderr
    assert ".protrans-knn-" not in r.stderr
    r = run_cli("knn", "--fasta", bad, *ref)  # (stdout: the temporary file in $TMPDIR)
    assert r.exit_code == 1
    assert _no_temporaries(tmp_path, own_tmpdir)


def test_fasta_reads_a_header_with_a_nul_byte_as_embed_does(tmp_path, run_cli, own_tmpdir):
    # (embed refuses such a record naming --invalid-policy skip, and skips it under that policy;
    # knn --fasta refused the whole file whatever the policy, and with --score matched by sequence
    # named the temporary copy of stdin)
    ref_fa = _fasta(tmp_path / "ref.fa", 6, 3, names="r")
    assert run_cli("embed", ref_fa, "-m", "onehot", "--per-protein", "-o", tmp_path / "ref.h5").exit_code == 0
    labels, score = tmp_path / "ref.fasta", tmp_path / "score.fasta"  # (DeepLoc FASTA: ids, locations, sequences)
    labels.write_text(ref_fa.read_text().replace(" a description", " Nucleus-S"))
    score.write_text(">z1 Nucleus-S\nMKVLA\n")  # (the last query's sequence, under another id: matched by sequence)
    query = b">a\nMKVLW\n>b\x00y damaged\nMKVL\n>c\nMKVLA\n"
    ref = ("--reference", tmp_path / "ref.h5", "-k", "1")
    r = run_cli("knn", "--fasta", "-", *ref, input=query)
    assert r.exit_code == 1, r.stderr
    assert ("<stdin>:3, record 'b\\x00y': the header holds a NUL byte (a damaged file?) (--invalid-policy skip "
            "leaves such records out)") in r.stderr, r.stderr
    for extra in ((), ("--labels", labels, "--score", score)):
        r = run_cli("knn", "--fasta", "-", *ref, "--invalid-policy", "skip", *extra, input=query)
        assert r.exit_code == 0, (extra, r.stderr)
        assert [line.split("\t")[0] for line in r.stdout.splitlines()] == ["query", "a", "c"]
        assert "<stdin>: 1 protein(s) could not be embedded and have no neighbours: b\\x00y" in r.stderr, r.stderr
        assert not extra or "score.fasta: 1 protein labelled by sequence checksum" in r.stderr, r.stderr
    assert _no_temporaries(tmp_path, own_tmpdir)


def test_fasta_says_why_each_query_left_out_has_no_neighbours(tmp_path, run_cli):
    # (--invalid-policy skip warned with the ids alone, the reasons in a temporary file removed as
    # the command ends; embed and predict_sequences say why each one was left out)
    ref_fa = _fasta(tmp_path / "ref.fa", 4, 3, names="r")
    assert run_cli("embed", ref_fa, "-m", "onehot", "--per-protein", "-o", tmp_path / "ref.h5").exit_code == 0
    query = tmp_path / "q.fa"
    query.write_text(">x1\nMKVJL\n>x2\nMKVLA\n>x3\nMK*VL\n")
    r = run_cli("knn", "--fasta", query, "--reference", tmp_path / "ref.h5", "--invalid-policy", "skip")
    assert r.exit_code == 0, r.stderr
    assert (f"{query}: 2 protein(s) could not be embedded and have no neighbours: x1 (skipped: invalid character "
            "'J' at residue 4 (--invalid-policy skip)), x3 (skipped: internal stop '*' at residue 3 (--invalid-policy "
            "skip))") in r.stderr, r.stderr
    assert [line.split("\t")[0] for line in r.stdout.splitlines()] == ["query", "x2"]


def test_a_column_no_reference_protein_knows_and_an_input_as_output(tmp_path, run_cli):
    """setHARD as its own reference: every membrane label is `U`, so none is transferred (an empty
    search was a traceback); `-o` naming an input is refused (the query file was replaced by the TSV)."""
    _write(tmp_path / "q.h5", np.eye(4), ["a", "b", "c", "d"])
    (tmp_path / "l.fasta").write_text("".join(f">{i} {loc}-U\nMKV\n" for i, loc in
                                              zip("abcd", ["Nucleus", "Nucleus", "Cytoplasm", "Cytoplasm"])))
    base = ("knn", tmp_path / "q.h5", "--reference", tmp_path / "q.h5", "--exclude-self")
    r = run_cli(*base, "--labels", tmp_path / "l.fasta", "--score", tmp_path / "l.fasta", "--bootstrap", "20",
                "-o", tmp_path / "hits.tsv")
    assert r.exit_code == 0, r.stderr
    assert "transfer membrane: nothing to evaluate (no reference protein has a known label)" in r.stderr
    before = (tmp_path / "q.h5").read_bytes()
    for out, source in (("q.h5", "q.h5"), ("l.fasta", "l.fasta")):
        r = run_cli(*base, "--labels", tmp_path / "l.fasta", "-o", tmp_path / out)
        assert r.exit_code == 2 and "is also an input: writing it would replace" in r.stderr and source in r.stderr
    assert (tmp_path / "q.h5").read_bytes() == before


@pytest.mark.gpu
def test_the_search_on_a_gpu_finds_what_the_cpu_finds(tmp_path):
    from protrans_cli.knn import nearest

    rng = np.random.default_rng(7)
    _write(tmp_path / "q.h5", rng.normal(size=(50, 32)))
    _write(tmp_path / "r.h5", rng.normal(size=(3000, 32)), [f"r{i:04d}" for i in range(3000)])
    for metric in ("euclidean", "cosine"):
        cpu = nearest(tmp_path / "q.h5", tmp_path / "r.h5", k=5, metric=metric, device="cpu")
        gpu = nearest(tmp_path / "q.h5", tmp_path / "r.h5", k=5, metric=metric, device="cuda")
        assert np.array_equal(cpu.index, gpu.index) and np.array_equal(cpu.distance, gpu.distance)


def test_a_missing_output_folder_and_a_reference_from_stdin_are_usage_errors_before_the_search(
        tmp_path, run_cli, monkeypatch):
    # (the missing folder was found when the TSV was written, after the whole search: exit 2 then,
    # and with --fasta exit 1 "cannot write in this folder"; `--reference -` was exit 1, QUERY - exit 2)
    from protrans_cli import knn as knn_module

    _write(tmp_path / "q.h5", np.eye(3))
    _write(tmp_path / "r.h5", np.eye(3), ["a", "b", "c"])

    def no_search(*args, **kwargs):
        raise AssertionError("searched")

    monkeypatch.setattr(knn_module, "_neighbours", no_search)
    r = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "-o", tmp_path / "nodir" / "x.tsv")
    assert r.exit_code == 2 and "output directory does not exist" in r.stderr, r.stderr
    _fasta(tmp_path / "q.fa", 2, 0)
    r = run_cli("knn", "--fasta", tmp_path / "q.fa", "--reference", tmp_path / "r.h5", "-o",
                tmp_path / "nodir" / "x.tsv")
    assert r.exit_code == 2 and "output directory does not exist" in r.stderr, r.stderr
    r = run_cli("knn", tmp_path / "q.h5", "--reference", "-")
    assert r.exit_code == 2 and "read in place" in r.stderr


def test_fasta_queries_are_embedded_from_the_hub_commit_the_reference_was(tmp_path):
    """A reference embedded from a hub model records its revision and commit: `--fasta` queries
    are embedded from that commit (the hub model may have changed since), unless -m names
    another model; `predict --fasta` does the same with a head fit on such a file."""
    import json

    import h5py

    from protrans_cli.heads.predict import head_embed_options
    from protrans_cli.knn import reference_embed_options

    ref = tmp_path / "ref.h5"
    with h5py.File(ref, "w") as f:
        f.attrs.update(model="Rostlab/prot_t5_xl_half_uniref50-enc", revision="main",
                       commit="0123456789abcdef0123456789abcdef01234567", layout="flat", kind="per_protein",
                       kinds="per_protein", layers=[-1])
        f.create_dataset("P1", data=np.zeros(4, dtype=np.float32)).attrs["id"] = "P1"
    assert reference_embed_options(ref).revision == "0123456789abcdef0123456789abcdef01234567"
    from protrans_cli.heads.fit import FitConfig, _embedding_info

    info, _ = _embedding_info(FitConfig(task="loc"), ref)  # (what fit's head records: predict --fasta reads it)
    assert info["commit"] == "0123456789abcdef0123456789abcdef01234567" and info["revision"] == "main"
    assert reference_embed_options(ref, model="./my_copy").revision is None
    assert reference_embed_options(ref).pooling == "mean"
    with h5py.File(ref, "a") as f:  # (a reference of cls vectors: queries embedded the same way)
        f.attrs["pooling"] = "cls: the hidden state of the <cls> token"
    assert reference_embed_options(ref).pooling == "cls"
    with h5py.File(ref, "a") as f:
        f.attrs["commit"] = ""  # (a hub model whose commit was not known: its revision)
    assert reference_embed_options(ref).revision == "main"
    head = tmp_path / "head"
    head.mkdir()
    from protrans_cli.heads.tasks import get_task

    (head / "config.json").write_text(json.dumps({
        "format": "protrans-head", "task": get_task("loc").to_json(), "kind": "per_protein", "architecture": "fnn",
        "layer": -1, "embedding": {"model": "Rostlab/prot_t5_xl_half_uniref50-enc", "revision": "main",
                                   "commit": "fedcba9876543210fedcba9876543210fedcba98", "layers": [-1]}}))
    options, _ = head_embed_options(head)
    assert options.revision == "fedcba9876543210fedcba9876543210fedcba98" and options.model.startswith("Rostlab/")
    assert head_embed_options(head, model="./local")[0].revision is None
    config = json.loads((head / "config.json").read_text())
    config["embedding"]["pooling"] = "cls: the hidden state of the [CLS] token"  # (fit on embed --pooling cls)
    (head / "config.json").write_text(json.dumps(config))
    assert head_embed_options(head)[0].pooling == "cls"


def test_fasta_queries_offline_with_the_model_cached_at_another_commit(tmp_path):
    """Offline, a hub model cached at another commit than the reference's (any commit of the
    repository moves `main`) is used, with a warning: passing the recorded commit made `knn
    --fasta` fail "not in the local Hugging Face cache" with the model in it. A hub name that is
    a local model directory here is loaded without a word of a `--revision` no one gave."""
    import os
    import shutil
    import subprocess
    import sys

    import torch

    from protrans_cli.io.h5 import EmbeddingsReader
    from protrans_cli.models import FAMILIES

    family = FAMILIES["bert"]
    tokenizer = family.build_tokenizer()
    torch.manual_seed(0)
    family.save_pretrained(family.pretraining_model(family.build_config("tiny", tokenizer)).eval(), tokenizer,
                           tmp_path / "tiny")
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny"
    shutil.copytree(tmp_path / "tiny", repo / "snapshots" / ("a" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (tmp_path / "q.fa").write_text(">p1\nMKTAYIAKQR\n>p2\nMAAGWLLK\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")

    def run(*args, cwd=tmp_path):
        return subprocess.run([sys.executable, "-m", "protrans_cli", *map(str, args)], capture_output=True,
                              text=True, env=env, cwd=cwd, timeout=120)

    r = run("embed", tmp_path / "q.fa", "-m", "someone/tiny", "-o", tmp_path / "ref.h5", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    with EmbeddingsReader(tmp_path / "ref.h5") as reader:
        assert reader.attrs["commit"] == "a" * 40
    (repo / "snapshots" / ("a" * 40)).rename(repo / "snapshots" / ("b" * 40))  # `main` moved on
    (repo / "refs" / "main").write_text("b" * 40)
    r = run("knn", "--fasta", tmp_path / "q.fa", "--reference", tmp_path / "ref.h5", "-k", "1", "-o", "-")
    assert r.returncode == 0, r.stderr
    assert f"made from its commit {'a' * 40}, which the local Hugging Face cache lacks (offline): using the " \
           f"cached {'b' * 40}" in r.stderr
    assert [line.split("\t")[:3] for line in r.stdout.splitlines()[1:]] == [["p1", "1", "p1"], ["p2", "1", "p2"]]
    (tmp_path / "here" / "someone").mkdir(parents=True)  # a local copy under the hub name
    shutil.copytree(tmp_path / "tiny", tmp_path / "here" / "someone" / "tiny")
    r = run("knn", "--fasta", tmp_path / "q.fa", "--reference", tmp_path / "ref.h5", "-k", "1", "-o", "-",
            cwd=tmp_path / "here")
    assert r.returncode == 0 and "--revision" not in r.stderr and "warning" not in r.stderr, r.stderr


def test_vectors_of_another_pooling_are_refused(tmp_path):
    """embed --pooling cls against the mean: vectors of one width and nothing alike (knn compared
    them without a word)."""
    import h5py

    from protrans_cli.knn import nearest

    rng = np.random.default_rng(0)
    _write(tmp_path / "q.h5", rng.normal(size=(3, 4)))
    _write(tmp_path / "r.h5", rng.normal(size=(5, 4)))
    with h5py.File(tmp_path / "r.h5", "a") as f:
        f.attrs["pooling"] = "cls: the hidden state of the <cls> token"
    with pytest.raises(ModelError, match="queries are pooled by mean, the reference by cls"):
        nearest(tmp_path / "q.h5", tmp_path / "r.h5")
    assert len(nearest(tmp_path / "q.h5", tmp_path / "r.h5", allow_model_mismatch=True).query_ids) == 3
    with h5py.File(tmp_path / "q.h5", "a") as f:
        f.attrs["pooling"] = "cls: the hidden state of the <cls> token"
    assert len(nearest(tmp_path / "q.h5", tmp_path / "r.h5").query_ids) == 3


def test_a_dual_location_is_scored_as_cytoplasm_and_a_table_scores_a_deeploc_reference(tmp_path, run_cli):
    """DeepLoc's `Cytoplasm-Nucleus` counts as Cytoplasm in Q10, as fit's loc task counts it (it was
    scored as an 11th class: a Cytoplasm query whose neighbour was dual was a miss); an id,label
    table (the bio_embeddings annotations) scores a DeepLoc FASTA reference's `loc` and the other
    way round (it said "nothing to evaluate"), and a column the --score file lacks says so."""
    _write(tmp_path / "r.h5", np.eye(3) * 5, ["r0", "r1", "r2"])
    _write(tmp_path / "q.h5", np.eye(3) * 5 + 0.1, ["q0", "q1", "q2"])
    (tmp_path / "r.fasta").write_text(">r0 Cytoplasm-Nucleus-U\nMKV\n>r1 Nucleus-S\nMKV\n>r2 Cytoplasm-S\nMKV\n")
    (tmp_path / "q.fasta").write_text(">q0 Cytoplasm-S\nMKV\n>q1 Nucleus-S\nMKV\n>q2 Cytoplasm-S\nMKV\n")
    (tmp_path / "q.csv").write_text("identifier,label,set\nq0,Cytoplasm,test\nq1,Nucleus,test\nq2,Cytoplasm,test\n")
    (tmp_path / "r.csv").write_text("id,label\nr0,Cytoplasm\nr1,Nucleus\nr2,Cytoplasm\n")
    base = ("knn", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "--bootstrap", "20", "-o", tmp_path / "h.tsv")
    r = run_cli(*base, "--labels", tmp_path / "r.fasta", "--score", tmp_path / "q.fasta")
    assert r.exit_code == 0, r.stderr
    assert "transfer loc: Q10 1.0000" in r.stderr
    assert "Cytoplasm-Nucleus" in (tmp_path / "h.tsv").read_text()  # the neighbour's own label is written
    r = run_cli(*base, "--labels", tmp_path / "r.fasta", "--score", tmp_path / "q.csv")
    assert r.exit_code == 0, r.stderr
    assert "transfer loc: Q10 1.0000" in r.stderr
    assert "transfer membrane: nothing to evaluate (" in r.stderr and "gives no query a membrane label" in r.stderr
    r = run_cli(*base, "--labels", tmp_path / "r.csv", "--score", tmp_path / "q.fasta")
    assert r.exit_code == 0, r.stderr
    assert "transfer label: accuracy 1.0000" in r.stderr


def test_a_dual_query_location_counts_as_cytoplasm_against_a_tables_labels(tmp_path, run_cli):
    """A reference labelled by an id,label table (the bio_embeddings annotations, column `label`)
    scored against a DeepLoc FASTA whose query is `Cytoplasm-Nucleus`: counted as Cytoplasm, as
    with a DeepLoc FASTA reference (it was an 11th class, a miss whatever its neighbour)."""
    _write(tmp_path / "r.h5", np.eye(3) * 5, ["r0", "r1", "r2"])
    _write(tmp_path / "q.h5", np.eye(3) * 5 + 0.1, ["q0", "q1", "q2"])
    (tmp_path / "q.fasta").write_text(">q0 Cytoplasm-Nucleus-U\nMKV\n>q1 Nucleus-S\nMKV\n>q2 Cytoplasm-S\nMKV\n")
    (tmp_path / "r.csv").write_text("id,label\nr0,Cytoplasm\nr1,Nucleus\nr2,Cytoplasm\n")
    (tmp_path / "r.fasta").write_text(">r0 Cytoplasm-S\nMKV\n>r1 Nucleus-S\nMKV\n>r2 Cytoplasm-S\nMKV\n")
    base = ("knn", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "--score", tmp_path / "q.fasta",
            "--bootstrap", "20", "-o", tmp_path / "h.tsv")
    r = run_cli(*base, "--labels", tmp_path / "r.fasta")
    assert r.exit_code == 0, r.stderr
    assert "transfer loc: Q10 1.0000" in r.stderr
    r = run_cli(*base, "--labels", tmp_path / "r.csv")
    assert r.exit_code == 0, r.stderr
    assert "transfer label: accuracy 1.0000" in r.stderr and "balanced accuracy 1.000" in r.stderr


def test_a_column_of_numbers_is_scored_with_a_warning(tmp_path, run_cli):
    """knn --score of a FLIP CSV's target (a fitness, a melting point: many distinct non-integer
    numbers) scores each number as a class, right only where it equals the query's exactly: a
    warning says so (an accuracy of 0 came without a word); a few integer classes get none."""
    rng = np.random.default_rng(3)
    ids = [f"p{i:03d}" for i in range(30)]
    _write(tmp_path / "e.h5", rng.normal(size=(30, 4)), ids)
    (tmp_path / "v.csv").write_text("id,label\n" + "".join(f"{i},{rng.normal():.4f}\n" for i in ids))
    (tmp_path / "c.csv").write_text("id,label\n" + "".join(f"{i},{j % 3}\n" for j, i in enumerate(ids)))
    base = ("knn", tmp_path / "e.h5", "--reference", tmp_path / "e.h5", "--exclude-self", "--bootstrap", "20",
            "-o", tmp_path / "h.tsv")
    r = run_cli(*base, "--labels", tmp_path / "v.csv", "--score", tmp_path / "v.csv")
    assert r.exit_code == 0, r.stderr
    assert "transfer label: accuracy 0.0000" in r.stderr
    assert "its label column holds 30 distinct numbers, each scored as a class" in r.stderr
    r = run_cli(*base, "--labels", tmp_path / "c.csv", "--score", tmp_path / "c.csv")
    assert r.exit_code == 0, r.stderr
    assert "distinct numbers" not in r.stderr


def test_labels_keyed_by_sequence_are_matched_to_the_references_proteins_as_fit_matches_them(tmp_path, run_cli):
    """A FLIP CSV's rows carry a sequence, no id: knn matched labels by id only, and refused
    "labels none of the reference's proteins" where fit and predict pair the same files by the
    sequence checksum embed stores. The labels transferred are those of an id,label table."""
    rng = np.random.default_rng(5)
    seqs = ["".join(rng.choice(list(AA), int(rng.integers(10, 30)))) for _ in range(12)]
    ids = [f"ACC{i:02d}" for i in range(12)]
    with EmbeddingsWriter(tmp_path / "ref.h5", kinds=("per_protein",), attrs={"model": "onehot"}) as w:
        for ident, seq in zip(ids, seqs):
            w.write(ident, ident, seq, per_protein=rng.normal(size=4).astype(np.float32))
    (tmp_path / "flip.csv").write_text("sequence,target,set\n" + "".join(
        f"{seq.lower()},{'AB'[i % 2]},train\n" for i, seq in enumerate(seqs[:10])))
    (tmp_path / "table.csv").write_text("id,label\n" + "".join(f"{ident},{'AB'[i % 2]}\n"
                                                               for i, ident in enumerate(ids[:10])))
    base = ("knn", tmp_path / "ref.h5", "--reference", tmp_path / "ref.h5", "--exclude-self", "-k", "2")
    r = run_cli(*base, "--labels", tmp_path / "flip.csv")
    assert r.exit_code == 0, r.stderr
    assert "flip.csv: 10 proteins labelled by sequence checksum" in r.stderr
    by_table = run_cli(*base, "--labels", tmp_path / "table.csv")
    assert r.stdout == by_table.stdout and r.stdout.count("\tA\n") + r.stdout.count("\tB\n") > 12


def test_score_labels_keyed_by_sequence_score_the_queries_of_those_sequences(tmp_path, run_cli, own_tmpdir):
    """--score of a FLIP CSV (rows keyed by sequence) against queries embedded under their own ids
    was refused "labels none of the queries", from QUERY.h5 and from --fasta alike; it scores what
    an id,label table of the same labels scores."""
    ref_fa, q_fa = _fasta(tmp_path / "ref.fa", 20, 3, names="r"), _fasta(tmp_path / "q.fa", 12, 4)
    for fa in (ref_fa, q_fa):
        assert run_cli("embed", fa, "-m", "onehot", "--per-protein", "-o", fa.with_suffix(".h5")).exit_code == 0
    q_seqs = q_fa.read_text().splitlines()[1::2]
    (tmp_path / "ref.csv").write_text("id,label\n" + "".join(f"r{i},{'AB'[i % 2]}\n" for i in range(20)))
    (tmp_path / "q.csv").write_text("id,label\n" + "".join(f"q{i},{'AB'[i % 3 % 2]}\n" for i in range(12)))
    (tmp_path / "q_flip.csv").write_text("sequence,target\n" + "".join(f"{seq},{'AB'[i % 3 % 2]}\n"
                                                                      for i, seq in enumerate(q_seqs)))
    base = ("--reference", tmp_path / "ref.h5", "--labels", tmp_path / "ref.csv", "-k", "3", "--bootstrap", "10")
    by_id = run_cli("knn", tmp_path / "q.h5", *base, "--score", tmp_path / "q.csv")
    assert by_id.exit_code == 0 and "transfer label: accuracy" in by_id.stderr, by_id.stderr
    scored = [line for line in by_id.stderr.splitlines() if line.startswith("transfer label:")]
    for queries in ((tmp_path / "q.h5",), ("--fasta", q_fa)):
        r = run_cli("knn", *queries, *base, "--score", tmp_path / "q_flip.csv")
        assert r.exit_code == 0, r.stderr
        assert "q_flip.csv: 12 proteins labelled by sequence checksum" in r.stderr
        assert [line for line in r.stderr.splitlines() if line.startswith("transfer label:")] == scored
    # a table of ids labelling some queries: matched once, before the embedding (it was matched
    # again after it, and its "have no label" line said twice)
    (tmp_path / "some.csv").write_text("id,label\n" + "".join(f"q{i},{'AB'[i % 2]}\n" for i in range(6)))
    r = run_cli("knn", "--fasta", q_fa, *base, "--score", tmp_path / "some.csv")
    assert r.exit_code == 0 and r.stderr.count("6 of the 12 queries have no label and are not scored") == 1, r.stderr
    # ids that match nothing, in a file without sequences: still refused before anything is embedded
    (tmp_path / "other.csv").write_text("id,label\nx1,A\n")
    r = run_cli("knn", "--fasta", q_fa, *base, "--score", tmp_path / "other.csv")
    assert r.exit_code == 1 and "labels none of the 12 queries" in r.stderr and "embedding" not in r.stderr
    # and in a file with sequences (a FLIP CSV, a DeepLoc FASTA) whose ids and sequences match no
    # query: refused before the embedding too (it was found after a proteome's embedding)
    (tmp_path / "other_flip.csv").write_text("sequence,target\nWWWWWWWWWW,A\nCCCCCCCCCC,B\n")
    r = run_cli("knn", "--fasta", q_fa, *base, "--score", tmp_path / "other_flip.csv")
    assert r.exit_code == 1 and "other_flip.csv: labels none of the 12 queries, by id or by sequence" in r.stderr
    assert "embedding" not in r.stderr, r.stderr


def test_a_score_file_of_sequences_or_residue_labels_is_refused_as_labels_is(tmp_path, run_cli):
    """--score given the queries' FASTA (or FLIP's per-residue labels): read as FLIP labels, each
    sequence was a query's "location", and knn reported Q10 0.0000 over every query without a
    word; --labels refuses such a file, and --score now does too."""
    ids = _write(tmp_path / "e.h5", np.random.default_rng(2).normal(size=(6, 4)))
    (tmp_path / "loc.fasta").write_text("".join(f">{i} {'Nucleus' if n % 2 else 'Cytoplasm'}-S\nMKVL\n"
                                                for n, i in enumerate(ids)))
    (tmp_path / "seqs.fasta").write_text("".join(f">{i}\nMKVLAAGH\n" for i in ids))
    r = run_cli("knn", tmp_path / "e.h5", "--reference", tmp_path / "e.h5", "--exclude-self", "--labels",
                tmp_path / "loc.fasta", "--score", tmp_path / "seqs.fasta", "-o", tmp_path / "h.tsv")
    # (said as fit says it: it was "holds per-residue labels (flip)", which a FASTA of sequences is not)
    assert r.exit_code == 1 and "seqs.fasta: holds sequences, not labels; knn --score compares" in r.stderr, \
        r.stderr
    assert r.stderr.rstrip().endswith("if the file holds sequences, give it to embed"), r.stderr
    assert not (tmp_path / "h.tsv").exists()
    for option in ("--labels", "--score"):  # FLIP's per-residue labels, and the sequences as --labels
        (tmp_path / "ss3.fasta").write_text("".join(f">{i}\nCCHHHEEC\n" for i in ids))
        given = {"--labels": tmp_path / "ss3.fasta", "--score": tmp_path / "ss3.fasta"}
        r = run_cli("knn", tmp_path / "e.h5", "--reference", tmp_path / "e.h5", "--exclude-self", "--labels",
                    given.get(option) if option == "--labels" else tmp_path / "loc.fasta",
                    *(["--score", given[option]] if option == "--score" else []), "-o", tmp_path / "h.tsv")
        assert r.exit_code == 1 and "ss3.fasta: holds per-residue labels (flip)" in r.stderr, r.stderr
    r = run_cli("knn", tmp_path / "e.h5", "--reference", tmp_path / "e.h5", "--exclude-self", "--labels",
                tmp_path / "seqs.fasta", "-o", tmp_path / "h.tsv")
    assert r.exit_code == 1 and "seqs.fasta: holds sequences, not labels; knn transfers" in r.stderr, r.stderr
    assert not (tmp_path / "h.tsv").exists()


def test_the_ci_does_not_depend_on_the_order_of_the_queries():
    """`knn --fasta` lists queries in the FASTA's order, `knn QUERY.h5` in the file's: the same
    queries and neighbours got two bootstrap CIs. Resampled in the order of their ids, as fit's."""
    from protrans_cli.knn import Neighbours, _score_column

    rng = np.random.default_rng(5)
    ids = [f"q{i:03d}" for i in range(300)]
    truth = {i: {"label": str(rng.integers(3))} for i in ids}
    by_id = {f"r{j}": {"label": str(j % 3)} for j in range(6)}
    index = rng.integers(6, size=(300, 1))
    scores = []
    for order in (np.arange(300), rng.permutation(300)):
        found = Neighbours([ids[i] for i in order], list(by_id), index[order], np.zeros((300, 1)))
        scores.append(_score_column(found, "label", by_id, set(), truth, 200))
    assert scores[0]["accuracy"] == scores[1]["accuracy"] and scores[0]["ci95"] == scores[1]["ci95"]


@pytest.mark.parametrize("args", [["--labels", "-", "--score", "-"], ["--fasta", "-", "--labels", "-"]])
def test_stdin_is_one_input_at_most(tmp_path, run_cli, monkeypatch, args):
    """Two of --fasta, --labels and --score given as `-`: the first read would take all of stdin
    and the second find it empty; a usage error (exit 2) before anything is read or embedded."""
    import protrans_cli.knn as knn_module

    def no_search(*a, **k):
        raise AssertionError("searched")

    monkeypatch.setattr(knn_module, "_neighbours", no_search)
    _write(tmp_path / "r.h5", np.eye(3), ["a", "b", "c"])
    query = [] if "--fasta" in args else [tmp_path / "r.h5"]
    r = run_cli("knn", *query, "--reference", tmp_path / "r.h5", *args, "-o", tmp_path / "hits.tsv",
                input=b"id,label\na,x\n")
    assert r.exit_code == 2, r.stderr
    assert r.stderr == ("protrans: error: stdin ('-') can be one input at most: give the others as files\n")
    assert not (tmp_path / "hits.tsv").exists()


def test_labels_and_scores_from_stdin_are_named_as_every_reader_names_stdin(tmp_path, run_cli):
    """`knn --labels -` said "transferring label from -" (and `-: 1 of the reference's ...`),
    where every other message calls stdin `<stdin>`: named one way."""
    _write(tmp_path / "r.h5", np.eye(3), ["a", "b", "c"])
    args = ["knn", tmp_path / "r.h5", "--reference", tmp_path / "r.h5", "-o", tmp_path / "hits.tsv"]
    r = run_cli(*args, "--labels", "-", input=b"id,label\na,x\nb,y\n")
    assert r.exit_code == 0, r.stderr
    assert "transferring label from <stdin>\n" in r.stderr and "<stdin>: 1 of the reference's 3 proteins" in r.stderr
    (tmp_path / "l.csv").write_text("id,label\na,x\nb,y\nc,x\n")
    r = run_cli(*args, "--labels", tmp_path / "l.csv", "--score", "-", input=b"id,label\na,x\n")
    assert r.exit_code == 0, r.stderr
    assert "<stdin>: 2 of the 3 queries have no label" in r.stderr, r.stderr
    assert "-:" not in r.stderr and "from -" not in r.stderr


def test_a_query_whose_membrane_is_unknown_is_not_scored_on_it(tmp_path):
    """DeepLoc's membrane `U` (unknown) in the --score file: that query is left out of the
    membrane score (fit leaves it out too), its location still scored. Scored, U counted as a
    miss against every neighbour's M or S; that passed every other test."""
    from protrans_cli.knn import knn

    _write(tmp_path / "r.h5", np.eye(4), ["r0", "r1", "r2", "r3"])
    _write(tmp_path / "q.h5", np.eye(4), ["q0", "q1", "q2", "q3"])
    (tmp_path / "r.fasta").write_text(">r0 Nucleus-M\nMKV\n>r1 Nucleus-S\nMKV\n>r2 Cytoplasm-M\nMKV\n"
                                      ">r3 Cytoplasm-S\nMKV\n")
    (tmp_path / "q.fasta").write_text(">q0 Nucleus-M\nMKV\n>q1 Nucleus-U\nMKV\n>q2 Cytoplasm-U\nMKV\n"
                                      ">q3 Cytoplasm-S\nMKV\n")
    scores = knn(tmp_path / "q.h5", tmp_path / "r.h5", tmp_path / "hits.tsv", labels=tmp_path / "r.fasta",
                 score=tmp_path / "q.fasta", n_bootstrap=10).scores
    assert scores["membrane"]["n_proteins"] == 2 and scores["membrane"]["accuracy"] == 1.0
    assert scores["loc"]["n_proteins"] == 4 and scores["loc"]["accuracy"] == 1.0


def test_an_empty_label_is_neither_transferred_nor_scored(tmp_path):
    """A blank label cell (pandas' missing value) is no label, as fit reads it: the label comes
    from the nearest reference that has one, and a query without one is not scored. It was
    transferred as a class "" (counted a miss) and scored as one: accuracy 0.333 here, not 1.0."""
    from protrans_cli.knn import knn

    _write(tmp_path / "r.h5", np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.1, 0.0]]), ["r0", "r1", "r2", "r3"])
    _write(tmp_path / "q.h5", np.array([[0.0, 0.05], [5.0, 0.05], [2.5, 9.0]]), ["q0", "q1", "q2"])
    (tmp_path / "r.csv").write_text("id,label\nr0,\nr1,Nucleus\nr2,Cytoplasm\nr3,Nucleus\n")
    (tmp_path / "q.csv").write_text("id,label\nq0,Nucleus\nq1,Cytoplasm\nq2,\n")
    scores = knn(tmp_path / "q.h5", tmp_path / "r.h5", tmp_path / "hits.tsv", labels=tmp_path / "r.csv",
                 score=tmp_path / "q.csv", n_bootstrap=10).scores
    assert scores["label"]["n_proteins"] == 2 and scores["label"]["accuracy"] == 1.0
    assert scores["label"]["classes"] == ["Cytoplasm", "Nucleus", "(none)"]


def test_a_query_without_a_labelled_neighbour_is_scored_a_miss(tmp_path):
    """Leave-one-out where one protein alone has a label: it has no labelled neighbour besides
    itself, so nothing is transferred to it, which counts as a miss (a class "(none)"), not as
    the first class (a hit for a query of that class)."""
    from protrans_cli.knn import knn

    _write(tmp_path / "a.h5", np.eye(3), ["a", "b", "c"])
    (tmp_path / "r.csv").write_text("id,label\na,Nucleus\nb,\nc,\n")
    (tmp_path / "q.csv").write_text("id,label\na,Nucleus\nb,Nucleus\nc,Nucleus\n")
    result = knn(tmp_path / "a.h5", tmp_path / "a.h5", tmp_path / "hits.tsv", labels=tmp_path / "r.csv",
                 score=tmp_path / "q.csv", exclude_self=True, n_bootstrap=10)
    assert result.scores["label"]["n_proteins"] == 3
    assert result.scores["label"]["accuracy"] == pytest.approx(2 / 3)


def test_a_tab_inside_a_label_becomes_a_space(tmp_path, run_cli):
    """A quoted CSV label holding a tab: one field of the TSV, as the docs say (written as it
    stands, the tab split the row into one field too many)."""
    _write(tmp_path / "q.h5", np.eye(2), ["q0", "q1"])
    _write(tmp_path / "r.h5", np.eye(2), ["r0", "r1"])
    (tmp_path / "r.csv").write_text('id,label\nr0,"Cell\tmembrane"\nr1,Nucleus\n')
    r = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "--labels", tmp_path / "r.csv")
    assert r.exit_code == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()]
    assert len(rows) == 3 and all(len(row) == 5 for row in rows), rows
    assert [row[4] for row in rows[1:]] == ["Cell membrane", "Nucleus"]


def test_a_list_of_files_from_python_is_one_usage_error_naming_the_argument(tmp_path):
    """knn(["q.h5"], ...) was "stat: path should be string ... not list", a TypeError from inside."""
    from protrans_cli.errors import UsageError
    from protrans_cli.knn import knn

    _write(tmp_path / "q.h5", np.eye(3))
    with pytest.raises(UsageError, match=r"^knn: query must be a path \(one file\), got list"):
        knn([tmp_path / "q.h5"], tmp_path / "q.h5", tmp_path / "k.tsv")
    with pytest.raises(UsageError, match=r"^knn: labels must be a path \(one file\), got list"):
        knn(tmp_path / "q.h5", tmp_path / "q.h5", tmp_path / "k.tsv", labels=[tmp_path / "l.csv"])
    assert not (tmp_path / "k.tsv").exists()



def test_numpy_integers_for_k_and_layer_are_the_numbers_they_stand_for_and_text_is_refused(tmp_path):
    """k=np.int64(3) (a loop over np.arange, a value from a DataFrame) was refused as "-k must be
    at least 1, got np.int64(3)", and layer="-1" was a TypeError from the layer lookup."""
    from protrans_cli.knn import knn, nearest

    rng = np.random.default_rng(1)
    _write(tmp_path / "q.h5", rng.normal(size=(5, 4)))
    _write(tmp_path / "r.h5", rng.normal(size=(9, 4)), [f"r{i}" for i in range(9)])
    plain = nearest(tmp_path / "q.h5", tmp_path / "r.h5", k=3, threads=1, device="cpu")
    found = nearest(tmp_path / "q.h5", tmp_path / "r.h5", k=np.int64(3), layer=np.int64(-1), threads=1, device="cpu")
    assert np.array_equal(found.index, plain.index) and found.index.shape == (5, 3)
    knn(tmp_path / "q.h5", tmp_path / "r.h5", tmp_path / "k.tsv", k=np.int32(2), threads=1, device="cpu")
    assert len((tmp_path / "k.tsv").read_text().splitlines()) == 1 + 5 * 2
    for call in (nearest, knn):
        with pytest.raises(UsageError, match=r"^layer is a whole number \(-1: the last layer\), got str '-1'"):
            call(tmp_path / "q.h5", tmp_path / "r.h5", layer="-1")
        with pytest.raises(UsageError, match=r"^k must be at least 1, got 2.0"):
            call(tmp_path / "q.h5", tmp_path / "r.h5", k=2.0)
    with pytest.raises(UsageError, match=r"^n_bootstrap must be a whole number of resamples, got str '100'"):
        knn(tmp_path / "q.h5", tmp_path / "r.h5", tmp_path / "k.tsv", n_bootstrap="100")

def test_queries_of_a_model_directory_retrained_since_the_reference_are_refused(tmp_path, run_cli, own_tmpdir):
    """A local model directory has no hub commit: queries embedded after another model was trained
    into the reference's model directory (a file, or --fasta) were searched among the old
    weights' vectors without a word. Their `weights_fingerprint` attributes differ: refused
    (--fasta before embedding anything), --allow-model-mismatch warns; -m naming the weights
    the user means goes on."""
    from test_embed import save_bert_into

    model = tmp_path / "model"
    save_bert_into(model, seed=0)
    ref_fa, q_fa = _fasta(tmp_path / "ref.fa", 12, 3, names="r"), _fasta(tmp_path / "q.fa", 4, 4)
    assert run_cli("embed", ref_fa, "-m", model, "--per-protein", "-o", tmp_path / "ref.h5").exit_code == 0
    save_bert_into(model, seed=1)  # retrained into the same directory
    r = run_cli("knn", "--fasta", q_fa, "--reference", tmp_path / "ref.h5")
    assert r.exit_code == 1 and r.stdout == ""
    assert re.search(r"the model directory \S+ holds other weights than the reference's embeddings were made with "
                     r"\(weights_fingerprint [0-9a-f]{32}, now [0-9a-f]{32}: retrained or replaced since\?\)", r.stderr)
    assert "embedding" not in r.stderr.replace("reference's embeddings", "")  # (before any query was embedded)
    assert _no_temporaries(tmp_path, own_tmpdir)
    assert run_cli("embed", q_fa, "-m", model, "--per-protein", "-o", tmp_path / "q.h5").exit_code == 0
    r = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "ref.h5")
    assert r.exit_code == 1 and r.stdout == ""
    assert "the queries and the reference come from other weights of the model directory" in r.stderr
    r = run_cli("knn", tmp_path / "q.h5", "--reference", tmp_path / "ref.h5", "--allow-model-mismatch")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 5
    assert r.stderr.count("other weights of the model directory") == 1
    r = run_cli("knn", "--fasta", q_fa, "--reference", tmp_path / "ref.h5", "-m", model)
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 5, r.stderr


def test_scored_queries_that_are_reference_proteins_are_warned_of(tmp_path, run_cli, own_tmpdir):
    """knn --score scored queries that are reference proteins too (a copy under the same id, or
    the same sequence under another) without a word: each finds itself at distance 0 and its own
    label, and the score is a lookup, not a transfer. One warning counts the queries whose
    neighbours include themselves, as fit warns of test proteins in train; --exclude-self leaves
    the same id out, not another id of the sequence."""
    rng = np.random.default_rng(5)
    ref = {f"r{i}": "".join(rng.choice(list(AA), 30)) for i in range(8)}
    new = {f"q{i}": "".join(rng.choice(list(AA), 30)) for i in range(4)}
    queries = {**new, "r2": ref["r2"], "x5": ref["r5"]}
    for name, records in (("ref", ref), ("q", queries), ("new", new)):
        (tmp_path / f"{name}.fa").write_text("".join(f">{i}\n{s}\n" for i, s in records.items()))
        (tmp_path / f"{name}.csv").write_text("id,label\n" + "".join(f"{i},{'AB'[n % 2]}\n"
                                                                     for n, i in enumerate(records)))
        assert run_cli("embed", tmp_path / f"{name}.fa", "-m", "onehot", "--per-protein",
                       "-o", tmp_path / f"{name}.h5").exit_code == 0
    args = ("--reference", tmp_path / "ref.h5", "--labels", tmp_path / "ref.csv", "--bootstrap", "20")
    r = run_cli("knn", tmp_path / "q.h5", *args, "--score", tmp_path / "q.csv")
    assert r.exit_code == 0, r.stderr
    assert (f"q.csv: 2 of the 6 scored queries have themselves among their neighbours in the reference "
            f"({tmp_path / 'ref.h5'}) (1 by id, 1 by an identical sequence: r2, x5); their transferred labels are "
            "not an independent test (--exclude-self leaves a query's own id out)") in r.stderr.replace("\n", " ")
    r = run_cli("knn", tmp_path / "q.h5", *args, "--score", tmp_path / "q.csv", "--exclude-self")
    assert r.exit_code == 0 and "2 of the 6" not in r.stderr
    assert "1 of the 6 scored queries have themselves" in r.stderr and "(1 by an identical sequence: x5)" in r.stderr
    r = run_cli("knn", "--fasta", tmp_path / "q.fa", *args, "--score", tmp_path / "q.csv")
    assert r.exit_code == 0 and "2 of the 6 scored queries have themselves" in r.stderr, r.stderr
    for query in (("--fasta", tmp_path / "new.fa"), (tmp_path / "new.h5",)):  # new proteins: not a word
        r = run_cli("knn", *query, *args, "--score", tmp_path / "new.csv")
        assert r.exit_code == 0 and "scored queries" not in r.stderr, r.stderr


def test_the_search_holds_about_two_slices_of_distances():
    # heads.md: memory is the reference plus the distances of a slice (1,024 x 16,384 float32,
    # 64 MB). The expressions made three or four such temporaries at once, besides the previous
    # slice's distances: some 265 MB more than the reference at the peak, now 2 slices' worth.
    import subprocess
    import sys

    script = """
import resource, sys
import numpy as np, torch
from protrans_cli import knn
torch.set_num_threads(1)
ref = np.random.default_rng(0).random((2 * knn.REFERENCE_SLICE, 8), dtype=np.float32)
q = ref[:knn.QUERY_SLICE].copy()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
knn._search(torch, q, ref, 3, sys.argv[1], None)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    slice_mb = 1024 * 16384 * 4 // (1 << 20)
    for metric in ("euclidean", "cosine"):
        grown = int(subprocess.run([sys.executable, "-c", script, metric], capture_output=True, text=True,
                                   check=True).stdout)
        assert grown <= 2.75 * slice_mb, (metric, grown)


def test_a_csv_name_for_the_tab_separated_output_is_warned_about(tmp_path, run_cli):
    """`knn -o hits.csv` and `project -o map.csv` wrote tab-separated text without a word (read.csv
    and a spreadsheet took each row for one field)."""
    rng = np.random.default_rng(1)
    _write(tmp_path / "r.h5", list(rng.normal(size=(12, 6))), [f"r{i}" for i in range(12)])
    r = run_cli("knn", tmp_path / "r.h5", "--reference", tmp_path / "r.h5", "--exclude-self", "-o", tmp_path / "x.csv")
    assert r.exit_code == 0 and "x.csv: knn writes tab-separated text (TSV), whatever the file's extension" in r.stderr
    assert "\t" in (tmp_path / "x.csv").read_text()
    r = run_cli("project", tmp_path / "r.h5", "-o", tmp_path / "m.csv")
    assert r.exit_code == 0, r.stderr
    assert "m.csv: project writes tab-separated text (TSV), whatever the file's extension" in r.stderr
    r = run_cli("knn", tmp_path / "r.h5", "--reference", tmp_path / "r.h5", "--exclude-self", "-o", tmp_path / "x.tsv")
    assert r.exit_code == 0 and "whatever the file's extension" not in r.stderr


def test_a_reference_keyed_by_whole_header_lines_takes_its_labels_by_their_first_word(tmp_path, run_cli):
    """The ProtTrans script's files (EAT's lookup sets among them) key each vector by the whole
    header line, `r0 Nucleus-S`; fit finds a label record `r0` there by the first word
    (docs/formats.md), but knn refused "labels none of the reference's proteins" for a DeepLoc
    FASTA and for an id,label table alike, and --score none of such queries."""
    import h5py

    rng = np.random.default_rng(9)
    centres = rng.normal(size=(2, 6)) * 5
    locs = ["Nucleus", "Cytoplasm"]
    with h5py.File(tmp_path / "lookup.h5", "w") as f:  # as the ProtTrans embedding script writes it
        for i in range(10):
            f.create_dataset(f"r{i} {locs[i % 2]}-S", data=(centres[i % 2] + rng.normal(size=6) * 0.1)
                             .astype(np.float32))
    (tmp_path / "lookup.fasta").write_text("".join(f">r{i} {locs[i % 2]}-S\nMKV\n" for i in range(10)))
    (tmp_path / "lookup.csv").write_text("".join(f"r{i},{locs[i % 2]}\n" for i in range(10)))
    base = ("knn", tmp_path / "lookup.h5", "--reference", tmp_path / "lookup.h5", "--exclude-self")
    r = run_cli(*base, "--labels", tmp_path / "lookup.fasta", "--score", tmp_path / "lookup.fasta",
                "--bootstrap", "20")
    assert r.exit_code == 0, r.stderr
    rows = [line.split("\t") for line in r.stdout.splitlines()[1:]]
    assert len(rows) == 10 and all(row[2].split()[1] == f"{row[4]}-S" for row in rows)  # the neighbour's own label
    assert "transfer loc: Q10 1.0000" in r.stderr and ", 10 proteins" in r.stderr
    by_table = run_cli(*base, "--labels", tmp_path / "lookup.csv")
    assert by_table.exit_code == 0, by_table.stderr
    assert [line.split("\t")[4] for line in by_table.stdout.splitlines()[1:]] == [row[4] for row in rows]


def test_layer_of_another_tools_file_must_exist_on_its_arrays(tmp_path, run_cli):
    """A file that records no layer numbers (another tool's) is indexed by --layer, which must exist
    there, as export and fit read it (docs/formats.md): an index past a (N, 3, D) layer axis was an
    IndexError traceback, and --layer 1 of vectors without one was taken silently."""
    import h5py

    rng = np.random.default_rng(3)
    with h5py.File(tmp_path / "layered.h5", "w") as f, h5py.File(tmp_path / "flat.h5", "w") as g:
        f.attrs["kind"] = "per_protein"  # ((3, D) arrays would be guessed per-residue rows)
        for i in range(6):
            f.create_dataset(f"P{i}", data=rng.normal(size=(3, 4)).astype(np.float32))
            g.create_dataset(f"P{i}", data=rng.normal(size=4).astype(np.float32))
    layered, flat = tmp_path / "layered.h5", tmp_path / "flat.h5"
    from protrans_cli.knn import _vectors

    ids, vectors, _ = _vectors(layered, -3, "reference")
    with h5py.File(layered) as f:
        assert np.array_equal(vectors[ids.index("P2")], f["P2"][0])
    for path, layer, said in ((layered, 3, "holds 3 layers on its arrays' first axis"),
                              (layered, -4, "-3 to 2), not layer -4"),
                              (flat, 1, "holds one layer (no layer axis, no layer numbers recorded), not layer 1")):
        r = run_cli("knn", path, "--reference", path, "--layer", str(layer))
        assert r.exit_code == 1 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert run_cli("knn", flat, "--reference", flat, "--layer", "0").exit_code == 0


def test_a_fasta_given_as_the_query_embeddings_points_at_knn_fasta(tmp_path, run_cli):
    """`knn proteins.fa --reference ref.h5`: the hint named predict's --fasta only, where knn
    takes the FASTA as --fasta itself."""
    ids = _write(tmp_path / "ref.h5", np.random.default_rng(3).normal(size=(4, 4)))
    (tmp_path / "q.fa").write_text("".join(f">{i}\nMKVL\n" for i in ids))
    r = run_cli("knn", tmp_path / "q.fa", "--reference", tmp_path / "ref.h5", "-o", tmp_path / "h.tsv")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.rstrip().endswith("it is a FASTA file: embed it first (protrans embed; predict and knn also take "
                                      "it as --fasta)"), r.stderr
    assert not (tmp_path / "h.tsv").exists()


def test_fasta_follows_the_long_protein_options_given(tmp_path, run_cli):
    # --max-length, --long-policy and --chunk-overlap given to knn --fasta replace the reference's
    # (here none): the queries are embedded as `embed` with the same flags embeds them (knn
    # dropping any of the three passed every test)
    ref_fa, q_fa = _fasta(tmp_path / "ref.fa", 30, 5, names="r"), _fasta(tmp_path / "q.fa", 8, 6, lengths=(40, 90))
    assert run_cli("embed", ref_fa, "-m", "onehot", "--per-protein", "-o", tmp_path / "ref.h5").exit_code == 0
    ref = ("--reference", tmp_path / "ref.h5", "-k", "3")
    for flags in (("--max-length", "10", "--long-policy", "truncate"),
                  ("--max-length", "20", "--long-policy", "chunk", "--chunk-overlap", "4")):
        r = run_cli("embed", q_fa, "-m", "onehot", "--per-protein", *flags, "-o", tmp_path / "q.h5", "--force")
        assert r.exit_code == 0, r.stderr
        independent = run_cli("knn", tmp_path / "q.h5", *ref)
        r = run_cli("knn", "--fasta", q_fa, *ref, *flags)
        assert r.exit_code == 0, r.stderr
        assert r.stdout == independent.stdout
    # (the truncated queries are other vectors than the whole proteins: the test can tell them apart)
    whole = run_cli("knn", "--fasta", q_fa, *ref)
    assert whole.exit_code == 0 and whole.stdout != run_cli("knn", "--fasta", q_fa, *ref, "--max-length", "10",
                                                            "--long-policy", "truncate").stdout


def test_bootstrap_sets_the_resamples_of_the_scores_ci(tmp_path, run_cli):
    # --bootstrap N: the 95% CI of --score from N resamples, under 10 refused naming the option (the
    # CLI handing the library 1000 whatever was given passed every test)
    from protrans_cli.heads.metrics import summary_line
    from protrans_cli.knn import knn

    rng = np.random.default_rng(7)
    _write(tmp_path / "r.h5", rng.normal(size=(20, 6)), [f"r{i}" for i in range(20)])
    _write(tmp_path / "q.h5", rng.normal(size=(30, 6)), [f"q{i}" for i in range(30)])
    (tmp_path / "r.csv").write_text("id,label\n" + "".join(f"r{i},{'AB'[i % 2]}\n" for i in range(20)))
    (tmp_path / "q.csv").write_text("id,label\n" + "".join(f"q{i},{'AB'[i % 3 % 2]}\n" for i in range(30)))
    args = ("knn", tmp_path / "q.h5", "--reference", tmp_path / "r.h5", "--labels", tmp_path / "r.csv",
            "--score", tmp_path / "q.csv", "-o", tmp_path / "h.tsv")
    lines = {}
    for n in (20, 1000):
        scores = knn(tmp_path / "q.h5", tmp_path / "r.h5", tmp_path / "x.tsv", labels=tmp_path / "r.csv",
                     score=tmp_path / "q.csv", n_bootstrap=n).scores["label"]
        lines[n] = summary_line("transfer", "label", scores)
    assert lines[20] != lines[1000]  # (the CIs of 20 and 1000 resamples differ here)
    r = run_cli(*args, "--bootstrap", "20")
    assert r.exit_code == 0 and lines[20] in r.stderr, r.stderr
    r = run_cli(*args, "--bootstrap", "5")
    assert r.exit_code == 2 and "--bootstrap must be at least 10" in r.stderr, r.stderr


@pytest.mark.parametrize("command", ["knn", "project"])
def test_label_format_is_the_format_the_labels_are_read_in(tmp_path, run_cli, command):
    # a DeepLoc FASTA given with --label-format table is read as a table (and refused as one, naming
    # the file and line), not sniffed as DeepLoc (the CLI dropping the option passed every test);
    # knn's --labels and project's, the same option read by the same reader
    _write(tmp_path / "r.h5", np.eye(4), ["a", "b", "c", "d"])
    (tmp_path / "r.fasta").write_text("".join(f">{i} Nucleus-M\nMKV\n" for i in "abcd"))
    where = ("--reference", tmp_path / "r.h5") if command == "knn" else ("-o", tmp_path / "m.tsv")
    base = (command, tmp_path / "r.h5", *where, "--labels", tmp_path / "r.fasta")
    assert run_cli(*base).exit_code == 0
    r = run_cli(*base, "--label-format", "table")
    assert r.exit_code == 1 and "r.fasta:1: expected 'id,label'" in r.stderr, r.stderr


def test_label_format_with_score_alone_is_refused_for_the_missing_labels_not_the_format(tmp_path, run_cli):
    # (--score without --labels: what is missing is the reference's labels; --label-format, which
    # goes with --score, is not the mistake to name)
    _write(tmp_path / "r.h5", np.eye(4), ["a", "b", "c", "d"])
    (tmp_path / "s.csv").write_text("id,label\na,A\n")
    r = run_cli("knn", tmp_path / "r.h5", "--reference", tmp_path / "r.h5", "--score", tmp_path / "s.csv",
                "--label-format", "table", "-o", tmp_path / "o.tsv")
    assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1] == (
        "protrans: error: --score compares the labels transferred from the reference: give the reference's --labels")


def test_knn_from_python_needs_the_query_embeddings_or_a_fasta_exactly_one(tmp_path):
    """knn(None, ref) and knn(q.h5, ref, fasta=...): a UsageError saying to give one of the two,
    before any file is read (neither exists here) or the output begun."""
    from protrans_cli.knn import knn

    for query, fasta in ((None, None), (tmp_path / "q.h5", tmp_path / "q.fa")):
        with pytest.raises(UsageError, match=r"^give the queries' embeddings \(query\) or their sequences "
                                             r"\(fasta\), one of them"):
            knn(query, tmp_path / "r.h5", tmp_path / "k.tsv", fasta=fasta)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_distances_on_apple_gpu_are_the_cpus(metric):
    """knn's matrix products on Apple's GPU (MPS: no float64, no numpy view of a device tensor;
    tests/conftest.py's mps_like stands for its tensors) rank and measure as on the CPU, ties at
    the cut and a query's own protein left out included."""
    import types

    import torch

    from conftest import mps_like
    from protrans_cli.knn import _search

    rng = np.random.default_rng(0)
    ref, q = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(20, 8)).astype(np.float32)
    ref[5] = ref[6] = ref[7]  # (a tie)
    own = [3] * 10 + [-1] * 10
    want = _search(torch, q, ref, 40, metric, own)
    on_mps = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
    on_mps.from_numpy = lambda a: mps_like(torch.from_numpy(a))
    got = _search(on_mps, q, ref, 40, metric, own, torch.device("mps"))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def _proteome(path, n=20, dim=8, layout="grouped"):
    """A set of `n` proteins of known sequences and vectors (ids p00 ..): (ids, sequences, vectors)."""
    rng = np.random.default_rng(11)
    ids = [f"p{i:02d}" for i in range(n)]
    sequences = ["".join(rng.choice(list(AA), 10 + i)) for i in range(n)]
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    with EmbeddingsWriter(path, kinds=("per_protein",), layout=layout, attrs={"model": "onehot"}) as w:
        for ident, seq, v in zip(ids, sequences, vectors):
            w.write(ident, ident, seq, per_protein=v)
    return ids, sequences, vectors


def _rows(text):
    return [line.split("\t") for line in text.splitlines()[1:]]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("layout", ["grouped", "flat", "stacked"])
def test_ids_gives_the_rows_of_the_whole_search_for_those_queries_in_the_files_order(tmp_path, run_cli, metric,
                                                                                      layout):
    """`knn set.h5 --reference set.h5 --exclude-self --ids three.txt -k 5`: the rows of the whole
    file's search for those three, in the list's order (not the file's), and each query's
    neighbours those of a numpy brute force without the query itself."""
    ids, _, vectors = _proteome(tmp_path / "set.h5", layout=layout)
    picked = ["p13", "p02", "p07"]
    (tmp_path / "three.txt").write_text("# the three\n" + "\n".join(picked) + "\n")
    base = ("knn", tmp_path / "set.h5", "--reference", tmp_path / "set.h5", "--exclude-self", "-k", "5",
            "--metric", metric, "-j", "1")
    whole = run_cli(*base)
    some = run_cli(*base, "--ids", tmp_path / "three.txt")
    assert whole.exit_code == 0 and some.exit_code == 0, some.stderr
    assert "knn: 3 query proteins against 20 reference proteins" in some.stderr
    expected = [row for p in picked for row in _rows(whole.stdout) if row[0] == p]
    assert _rows(some.stdout) == expected and len(expected) == 15
    index, distance = _brute(vectors, vectors, 5, metric, np.eye(20, dtype=bool))
    for row in _rows(some.stdout):
        qi, rank = ids.index(row[0]), int(row[1]) - 1
        assert row[2] == ids[index[qi, rank]] != row[0]
        assert float(row[3]) == pytest.approx(distance[qi, rank], rel=5e-6, abs=1e-9)
    assert some.stdout.splitlines()[0] == whole.stdout.splitlines()[0]


@pytest.mark.parametrize("layout", ["grouped", "flat", "foreign"])
def test_ids_reads_the_selected_proteins_alone(tmp_path, run_cli, monkeypatch, layout):
    """--ids of a grouped or flat file (or another tool's) read every protein's vector into one
    matrix to keep a few: now the named proteins' datasets alone (no matrix() of the query file,
    one read_array a protein), with the rows of a search of a file of those proteins alone."""
    import h5py

    import protrans_cli.io.h5 as h5

    if layout == "foreign":
        rng = np.random.default_rng(5)
        vectors = rng.normal(size=(20, 8)).astype(np.float32)
        with h5py.File(tmp_path / "set.h5", "w") as f:
            for i, v in enumerate(vectors):
                f.create_dataset(f"p{i:02d} Nucleus-S", data=v)
        ids = [f"p{i:02d} Nucleus-S" for i in range(20)]
    else:
        ids, _, vectors = _proteome(tmp_path / "set.h5", layout=layout)
    picked = [12, 3, 17]
    _write(tmp_path / "ref.h5", vectors[[1, 5, 9, 3]], ["r1", "r5", "r9", "r3"])
    _write(tmp_path / "alone.h5", vectors[picked], [ids[i] for i in picked], layout="flat")
    (tmp_path / "three.txt").write_text("".join(f"p{i:02d}\n" for i in picked))
    base = ("--reference", tmp_path / "ref.h5", "-k", "2", "-j", "1", "--allow-model-mismatch")
    alone = run_cli("knn", tmp_path / "alone.h5", *base)
    read, matrices = [], []
    real_read, real_matrix = h5.read_array, h5.EmbeddingsReader.matrix
    monkeypatch.setattr(h5, "read_array", lambda group, key, *a, **k: read.append(key) or real_read(group, key, *a, **k))
    monkeypatch.setattr(h5.EmbeddingsReader, "matrix",
                        lambda self, *a, **k: matrices.append(Path(self.path).name) or real_matrix(self, *a, **k))
    some = run_cli("knn", tmp_path / "set.h5", *base, "--ids", tmp_path / "three.txt")
    assert alone.exit_code == 0 and some.exit_code == 0, some.stderr
    expected = [row for i in picked for row in _rows(alone.stdout) if row[0] == ids[i]]  # (in the list's order)
    assert _rows(some.stdout) == expected and len(expected) == 6
    assert some.stdout.splitlines()[0] == alone.stdout.splitlines()[0]
    assert matrices == ["ref.h5"] and read == [h5.escape_key(ids[i]) for i in picked]


def test_ids_from_python_a_fasta_and_stdin(tmp_path, run_cli):
    """nearest(ids=) and knn(ids=) search those queries alone; a FASTA of the embedded sequences
    selects them as a list does; `--ids -` reads the list (or the FASTA) from stdin."""
    from protrans_cli.knn import knn, nearest

    ids, sequences, vectors = _proteome(tmp_path / "set.h5")
    (tmp_path / "two.fa").write_text(f">p09 some protein\n{sequences[9]}\n>p04\n{sequences[4]}\n")
    found = nearest(tmp_path / "set.h5", tmp_path / "set.h5", k=3, ids=tmp_path / "two.fa", exclude_self=True,
                    threads=1, device="cpu")
    index, distance = _brute(vectors[[9, 4]], vectors, 3, "euclidean", np.eye(20, dtype=bool)[[9, 4]])
    assert found.query_ids == ["p09", "p04"] and found.reference_ids == ids
    assert np.array_equal(found.index, index)
    np.testing.assert_allclose(found.distance, distance, rtol=1e-9)
    transfer = knn(tmp_path / "set.h5", tmp_path / "set.h5", tmp_path / "hits.tsv", k=3, exclude_self=True,
                   ids=tmp_path / "two.fa", threads=1, device="cpu")
    assert transfer.neighbours.query_ids == ["p09", "p04"]
    from_file = (tmp_path / "hits.tsv").read_text()
    for given in (b"p09\np04\n", (tmp_path / "two.fa").read_bytes()):
        r = run_cli("knn", tmp_path / "set.h5", "--reference", tmp_path / "set.h5", "--exclude-self", "-k", "3",
                    "--ids", "-", "-j", "1", input=given)
        assert r.exit_code == 0, r.stderr
        assert r.stdout == from_file


def test_ids_refusals_say_what_export_says(tmp_path, run_cli):
    """An id QUERY does not hold: one line naming it and the list, exit 1, as export says it, and
    nothing written; a FASTA of another sequence under an id: refused as export refuses it;
    --ids beside --fasta: a usage error (exit 2), from Python too."""
    _, sequences, _ = _proteome(tmp_path / "set.h5")
    (tmp_path / "ids.txt").write_text("p03\nP99\np05\n")
    base = ("knn", tmp_path / "set.h5", "--reference", tmp_path / "set.h5", "-j", "1")
    r = run_cli(*base, "--ids", tmp_path / "ids.txt", "-o", tmp_path / "hits.tsv")
    exported = run_cli("export", tmp_path / "set.h5", "--ids", tmp_path / "ids.txt")
    assert r.exit_code == 1 and exported.exit_code == 1
    assert r.stderr.startswith(f"protrans: error: {tmp_path / 'ids.txt'}: 1 protein of the 3 it names is not in ")
    assert "(first: P99)" in r.stderr and len(r.stderr.splitlines()) == 1
    assert r.stderr == exported.stderr
    assert not (tmp_path / "hits.tsv").exists()
    (tmp_path / "other.fa").write_text(f">p03\nMKV{sequences[3]}\n")
    r = run_cli(*base, "--ids", tmp_path / "other.fa")
    exported = run_cli("export", tmp_path / "set.h5", "--ids", tmp_path / "other.fa")
    assert r.exit_code == 1 and "another sequence" in r.stderr and r.stderr == exported.stderr
    (tmp_path / "q.fa").write_text(f">p03\n{sequences[3]}\n")
    r = run_cli("knn", "--fasta", tmp_path / "q.fa", "--reference", tmp_path / "set.h5", "--ids",
                tmp_path / "ids.txt")
    assert r.exit_code == 2
    assert r.stderr == ("protrans: error: --ids picks proteins of QUERY.h5; with --fasta, the FASTA holds the "
                        "queries (give those alone)\n")
    from protrans_cli.knn import knn

    with pytest.raises(UsageError, match="ids picks proteins of query"):
        knn(None, tmp_path / "set.h5", fasta=tmp_path / "q.fa", ids=tmp_path / "ids.txt")
    r = run_cli(*base, "--ids", "-", "--labels", "-", input=b"p03\n")
    assert r.exit_code == 2 and "stdin ('-') can be one input at most" in r.stderr


def test_ids_of_a_file_keyed_by_whole_header_lines_finds_them_by_their_first_word(tmp_path, run_cli):
    """The ProtTrans script's keys are whole header lines (`r3 Cytoplasm-S`): `--ids` naming `r3`
    finds it, as export does; its rows are the whole search's (the query named as there), and
    --exclude-self still leaves the query itself out."""
    import h5py

    rng = np.random.default_rng(4)
    with h5py.File(tmp_path / "lookup.h5", "w") as f:
        for i in range(8):
            f.create_dataset(f"r{i} {'Nucleus' if i % 2 else 'Cytoplasm'}-S", data=rng.normal(size=6)
                             .astype(np.float32))
    (tmp_path / "two.txt").write_text("r5\nr2\n")
    base = ("knn", tmp_path / "lookup.h5", "--reference", tmp_path / "lookup.h5", "--exclude-self", "-k", "2")
    whole, some = run_cli(*base), run_cli(*base, "--ids", tmp_path / "two.txt")
    assert some.exit_code == 0, some.stderr
    expected = [row for p in ("r5 Nucleus-S", "r2 Cytoplasm-S") for row in _rows(whole.stdout) if row[0] == p]
    assert _rows(some.stdout) == expected and len(expected) == 4
    assert all(row[0] != row[2] for row in expected)
