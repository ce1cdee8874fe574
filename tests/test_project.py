"""`protrans project`: PCA against numpy's SVD (and scikit-learn's PCA where installed), the
neighbourhood figure against a brute-force count, t-SNE and UMAP on separable clusters, the
outputs (TSV, picture, HTML page) and the refusals."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

from protrans_cli.errors import InputError, UsageError
from protrans_cli.io.h5 import EmbeddingsWriter

from conftest import heavy_imports_of

AA = "ACDEFGHIKLMNPQRSTVWY"
HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
HAS_UMAP = importlib.util.find_spec("umap") is not None


def _write(path, vectors, ids, *, model="onehot", residues=False, pooling=None):
    attrs = {"model": model} | ({"pooling": pooling} if pooling else {})
    rng = np.random.default_rng(len(vectors))
    with EmbeddingsWriter(path, kinds=("per_residue",) if residues else ("per_protein",), attrs=attrs) as w:
        for ident, v in zip(ids, vectors):
            seq = "".join(rng.choice(list(AA), 6))
            if residues:  # rows whose mean is v
                noise = rng.normal(size=(6, len(v)))
                w.write(ident, ident, seq, per_residue=(v + noise - noise.mean(axis=0)).astype(np.float32))
            else:
                w.write(ident, ident, seq, per_protein=np.asarray(v, dtype=np.float32))


def _clusters(n_per=15, dims=16, seed=0, spread=0.3):
    """Three well-separated clusters: (vectors (3n, dims), cluster of each row)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dims)) * 6
    vectors = np.concatenate([c + spread * rng.normal(size=(n_per, dims)) for c in centres])
    return vectors, np.repeat(np.arange(3), n_per)


def _svd_reference(x, dims):
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    return u[:, :dims] * s[:dims], s[:dims] ** 2 / (s ** 2).sum()


def _same_up_to_sign(a, b, tol):
    for axis in range(a.shape[1]):
        sign = np.sign(np.dot(a[:, axis], b[:, axis])) or 1.0
        np.testing.assert_allclose(a[:, axis], sign * b[:, axis], atol=tol)


@pytest.mark.parametrize("dims", [2, 3])
def test_pca_equals_numpys_svd(monkeypatch, dims):
    """Covariance summed over slices of 7 rows: the coordinates of numpy's SVD (up to each axis's
    sign) and its variance fractions; scikit-learn's PCA agrees where it is installed."""
    from protrans_cli import project as project_module

    monkeypatch.setattr(project_module, "ROWS_PER_SLICE", 7)
    assert len(list(project_module._slices(40))) == 6  # (the slices are those of 7 rows)
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(40, 12)) * np.linspace(3, 0.1, 12) + 5).astype(np.float32)
    coords, explained = project_module.reduce(x, method="pca", dims=dims)
    ref, ref_explained = _svd_reference(x.astype(np.float64), dims)
    _same_up_to_sign(coords, ref, 1e-9)
    np.testing.assert_allclose(explained, ref_explained, rtol=1e-9)
    if HAS_SKLEARN:
        from sklearn.decomposition import PCA

        theirs = PCA(n_components=dims, svd_solver="full").fit(x.astype(np.float64))
        _same_up_to_sign(coords, theirs.transform(x.astype(np.float64)), 1e-8)
        np.testing.assert_allclose(explained, theirs.explained_variance_ratio_, rtol=1e-8)


def test_pca_is_fixed_by_the_data_not_the_row_order():
    """Each axis is signed by its largest loading: the rows shuffled give each protein the same
    point (a map redrawn from a merged or resumed file does not flip)."""
    from protrans_cli.project import pca

    x, _ = _clusters()
    coords, _ = pca(x, 2)
    order = np.random.default_rng(3).permutation(len(x))
    shuffled, _ = pca(x[order], 2)
    np.testing.assert_allclose(shuffled, coords[order], atol=1e-9)
    flipped, _ = pca(-x, 2)  # (the same cloud mirrored: the axes follow it, signed by their loadings)
    assert np.allclose(np.abs(flipped), np.abs(coords), atol=1e-9)


def test_pca_cosine_maps_the_unit_vectors():
    from protrans_cli.project import reduce

    x, _ = _clusters()
    x = x * np.random.default_rng(2).uniform(0.5, 5, size=(len(x), 1))  # lengths that cosine ignores
    coords, explained = reduce(x, method="pca", metric="cosine")
    ref, ref_explained = _svd_reference(x / np.linalg.norm(x, axis=1, keepdims=True), 2)
    _same_up_to_sign(coords, ref, 1e-9)
    np.testing.assert_allclose(explained, ref_explained, rtol=1e-9)


def _kept_brute(x, y, k, metric, rows=None):
    """The kept figure by sorting every distance, over the proteins `rows` (all by default)."""
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
    rows = np.arange(len(x)) if rows is None else rows
    high = ((x[rows, None] - x[None]) ** 2).sum(-1)
    low = ((y[rows, None] - y[None]) ** 2).sum(-1)
    high[range(len(rows)), rows] = low[range(len(rows)), rows] = np.inf  # (itself)
    a, b = np.argsort(high, axis=1)[:, :k], np.argsort(low, axis=1)[:, :k]
    return float(np.mean([len(set(p) & set(q)) / k for p, q in zip(a, b)]))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_neighbourhoods_kept_equal_a_brute_force_count(monkeypatch, metric):
    from protrans_cli import project as project_module

    monkeypatch.setattr(project_module, "ROWS_PER_SLICE", 5)
    assert len(list(project_module._slices(37))) == 8
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(37, 9)), rng.normal(size=(37, 2))
    kept = project_module.neighbourhoods_kept(x, y, metric=metric, k=4)
    assert kept == pytest.approx(_kept_brute(x, y, 4, metric), abs=1e-12)
    # a map that only rotates the vectors keeps every neighbourhood
    plane = rng.normal(size=(37, 2))
    rotation = np.array([[0.6, -0.8], [0.8, 0.6]])
    assert project_module.neighbourhoods_kept(plane, plane @ rotation) == 1.0
    # over a sample of the proteins: the sample's own brute-force figure
    sample = project_module.neighbourhoods_kept(x, y, k=4, queries=10, seed=5)
    chosen = np.sort(np.random.default_rng(5).choice(37, 10, replace=False))
    assert sample == pytest.approx(_kept_brute(x, y, 4, "euclidean", chosen), abs=1e-12)


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.circles, self.titles, self.legend, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        if tag == "circle":
            self.circles.append(dict(attrs))
        elif tag == "li":
            self.legend.append(dict(attrs))
        self._in = tag

    def handle_data(self, data):
        if self._in == "title" and self.circles:
            self.titles.append(data)

    def handle_endtag(self, tag):
        self._in = None


def _table(text):
    lines = text.rstrip("\n").split("\n")
    head = lines[0].split("\t")
    return head, [dict(zip(head, line.split("\t"))) for line in lines[1:]]


def test_an_id_that_starts_with_a_quote_reads_back_from_the_tsv(tmp_path, run_cli):
    """Written as it stands, a TSV reader's quote handling (Python's csv, pandas, R) ate an id
    that starts with a quote up to the next quote: rows merged into one field."""
    import csv

    ids = ['"quoted', 'a"b', "c", "d"]
    _write(tmp_path / "x.h5", np.random.default_rng(0).normal(size=(4, 5)), ids)
    r = run_cli("project", tmp_path / "x.h5")
    assert r.exit_code == 0, r.stderr
    rows = list(csv.reader(r.stdout.splitlines(), delimiter="\t"))
    assert [row[0] for row in rows[1:]] == ids and all(len(row) == 3 for row in rows)


def test_the_table_and_the_page_cannot_both_go_to_stdout(tmp_path, run_cli):
    """`project x.h5 --html -` (-o is stdout by default) wrote the TSV and then the HTML page into
    one stream, exit 0; the page alone goes to stdout beside -o FILE."""
    _write(tmp_path / "x.h5", np.random.default_rng(0).normal(size=(6, 5)), [f"p{i}" for i in range(6)])
    r = run_cli("project", tmp_path / "x.h5", "--html", "-")
    assert r.exit_code == 2 and r.stdout == "" and "-o and --html cannot both go to stdout (-): give files" in r.stderr
    r = run_cli("project", tmp_path / "x.h5", "--html", "-", "-o", tmp_path / "map.tsv")
    assert r.exit_code == 0 and r.stdout.startswith("<!DOCTYPE html>"), r.stderr
    assert (tmp_path / "map.tsv").read_text().startswith("id\tx\ty\n")


def test_a_picture_or_page_named_by_the_file_stdout_goes_to_is_refused_beside_the_table_on_stdout(tmp_path):
    """`project x.h5 --plot map.png > map.png` (-o is stdout by default): the picture was renamed
    over the file the table had been written to, exit 0, the table lost; as prep's `--stats
    out.txt > out.txt`, the name of stdout's file counts as stdout."""
    import subprocess
    import sys

    _write(tmp_path / "x.h5", np.random.default_rng(0).normal(size=(6, 5)), [f"p{i}" for i in range(6)])
    for flag, name, extra in (("--plot", "map.png", []), ("--html", "map.html", []),
                              ("-o", "map.tsv", ["--html", "-"])):
        with open(tmp_path / name, "wb") as stdout:
            done = subprocess.run([sys.executable, "-m", "protrans_cli", "project", str(tmp_path / "x.h5"),
                                   flag, str(tmp_path / name), *extra], stdout=stdout, stderr=subprocess.PIPE,
                                  text=True)
        assert done.returncode == 2 and f"{flag} {tmp_path / name} is where stdout goes" in done.stderr, done.stderr
        assert (tmp_path / name).read_bytes() == b""


def test_two_files_with_labels_into_a_table_a_picture_and_a_page(tmp_path, run_cli):
    """Train and test files, each labelled by its own file: one row per protein of each (in input
    order, a source column), the label columns, a PNG and a page with one point per protein
    whose hover text is the id (escaped) and its labels."""
    from protrans_cli.project import pca

    x, cluster = _clusters()
    ids = [f"sp|P{i:04d}|X_<b>&" if i == 0 else f"P{i:04d}" for i in range(len(x))]
    train, test = list(range(0, 45, 3)) + list(range(1, 45, 3)), list(range(2, 45, 3))
    _write(tmp_path / "train.h5", x[train], [ids[i] for i in train])
    _write(tmp_path / "test.h5", x[test], [ids[i] for i in test])
    names = ["Nucleus", "Cytoplasm", "Mitochondrion"]
    (tmp_path / "train.csv").write_text("id,label\n" + "".join(f"{ids[i]},{names[cluster[i]]}\n" for i in train[:-1]))
    (tmp_path / "test.csv").write_text("id,label\n" + "".join(f"{ids[i]},{names[cluster[i]]}\n" for i in test))
    r = run_cli("project", tmp_path / "train.h5", tmp_path / "test.h5", "--labels", tmp_path / "train.csv",
                "--labels", tmp_path / "test.csv", "--plot", tmp_path / "map.png", "--html", tmp_path / "map.html")
    assert r.exit_code == 0, r.stderr
    head, rows = _table(r.stdout)
    assert head == ["id", "source", "x", "y", "label"]
    row_of = {ident: i for i, ident in enumerate(ids)}
    order = [row_of[row["id"]] for row in rows]  # (each file's rows in its key order, as knn reads them)
    assert sorted(order[:len(train)]) == sorted(train) and sorted(order[len(train):]) == sorted(test)
    assert [row["source"] for row in rows] == ["train.h5"] * len(train) + ["test.h5"] * len(test)
    assert [row["label"] for row in rows] == ["" if i == train[-1] else names[cluster[i]] for i in order]
    coords, explained = pca(x[order], 2)
    np.testing.assert_allclose([[float(row["x"]), float(row["y"])] for row in rows], coords, rtol=1e-5, atol=1e-5)
    assert "1 of the 45 proteins mapped have no label" in r.stderr
    assert f"axes explain {100 * explained[0]:.1f}%, {100 * explained[1]:.1f}%" in r.stderr
    assert "10 nearest neighbours kept on the map" in r.stderr and "(a random map keeps 0.23)" in r.stderr
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = _Page()
    page.feed((tmp_path / "map.html").read_text())
    assert len(page.circles) == 45
    assert sorted(t.split("\n")[0] for t in page.titles) == sorted(ids)
    first = page.titles[[t.split("\n")[0] for t in page.titles].index(ids[0])]
    assert first == f"sp|P0000|X_<b>&\nsource: train.h5\nlabel: {names[cluster[0]]}"
    assert "<b>&" not in (tmp_path / "map.html").read_text().split("<title>")[2].split("</title>")[0]  # (escaped)
    groups = {li.get("data-group") for li in page.legend}
    assert groups == {"g0", "g1", "g2", "g3"}  # three labels and "no label"
    assert all(c["class"] in groups for c in page.circles)


def test_a_run_stopped_while_it_writes_the_page_leaves_every_earlier_output_as_it_was(tmp_path, run_cli,
                                                                                      monkeypatch):
    """The table, picture and page are renamed together: a Ctrl-C while the picture or page was
    drawn (exit 130) left the new table, already renamed, beside the old picture and page of
    another map (docs/project.md: an interrupted run leaves an existing output as it was)."""
    import protrans_cli.project as project_module

    x, _ = _clusters()
    _write(tmp_path / "old.h5", x[:20], [f"P{i}" for i in range(20)])
    _write(tmp_path / "new.h5", x, [f"Q{i}" for i in range(len(x))])
    outputs = ["-o", tmp_path / "map.tsv", "--plot", tmp_path / "map.png", "--html", tmp_path / "map.html"]
    assert run_cli("project", tmp_path / "old.h5", *outputs).exit_code == 0
    before = {p.name: p.read_bytes() for p in tmp_path.glob("map.*")}
    assert len(before) == 3

    def stopped(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(project_module, "save_map_page", stopped)
    r = run_cli("project", tmp_path / "new.h5", *outputs)
    assert r.exit_code == 130, r.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.glob("map.*")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.html", "map.png", "map.tsv", "new.h5", "old.h5"]
    monkeypatch.undo()
    assert run_cli("project", tmp_path / "new.h5", *outputs).exit_code == 0
    assert all((tmp_path / name).read_bytes() != data for name, data in before.items())


def test_the_page_draws_y_upwards_as_the_picture_and_the_table_have_it(tmp_path):
    """SVG's y runs down: the page places the point of the largest y at the top (the smallest
    cy), x from left to right, the map spanning the drawing less a margin of 20."""
    from protrans_cli.project import Projection, save_map_page

    coords = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.5, 1.0]])
    save_map_page(Projection(["low_left", "low_right", "top_left", "middle"], ["a"] * 4, coords),
                  tmp_path / "map.html")
    page = _Page()
    page.feed((tmp_path / "map.html").read_text())
    at = {title: (float(c["cx"]), float(c["cy"])) for c, title in zip(page.circles, page.titles)}
    assert at == {"low_left": (20.0, 980.0), "low_right": (980.0, 980.0), "top_left": (20.0, 20.0),
                  "middle": (500.0, 500.0)}


def test_labels_keyed_by_sequence_colour_the_proteins_of_those_sequences(tmp_path, run_cli):
    """A FLIP CSV's rows carry a sequence, no id: project matched labels by id only ("labels none
    of the proteins mapped"), where fit pairs them with embeddings made under accession ids by
    the sequence checksum embed stores; in two files, each protein of a labelled sequence."""
    rng = np.random.default_rng(8)
    seqs = ["".join(rng.choice(list(AA), int(rng.integers(10, 30)))) for _ in range(16)]
    for name, part in (("a", range(0, 10)), ("b", range(10, 16))):
        with EmbeddingsWriter(tmp_path / f"{name}.h5", kinds=("per_protein",), attrs={"model": "onehot"}) as w:
            for i in part:
                w.write(f"ACC{i:02d}", f"ACC{i:02d}", seqs[i], per_protein=rng.normal(size=5).astype(np.float32))
            if name == "b":  # ACC00's twin, which no record names
                w.write("TWIN", "TWIN", seqs[0], per_protein=rng.normal(size=5).astype(np.float32))
    (tmp_path / "flip.csv").write_text("sequence,target\n" + "".join(f"{seqs[i]},{'XY'[i % 2]}\n"
                                                                      for i in range(1, 16)))
    # a record found by id labels that protein, not its sequence's twin in the other file
    (tmp_path / "loc.fasta").write_text(f">ACC00 Nucleus-S\n{seqs[0]}\n")
    r = run_cli("project", tmp_path / "a.h5", tmp_path / "b.h5", "--labels", tmp_path / "flip.csv", "--labels",
                tmp_path / "loc.fasta", "-o", tmp_path / "map.tsv")
    assert r.exit_code == 0, r.stderr
    rows = [line.split("\t") for line in (tmp_path / "map.tsv").read_text().splitlines()]
    label, loc = rows[0].index("label"), rows[0].index("loc")
    assert {row[0]: row[label] for row in rows[1:]} == {f"ACC{i:02d}": "XY"[i % 2] if i else "" for i in range(16)} \
        | {"TWIN": ""}
    assert {row[0]: row[loc] for row in rows[1:] if row[loc]} == {"ACC00": "Nucleus"}


def test_a_file_keyed_by_whole_header_lines_takes_its_labels_by_their_first_word(tmp_path, run_cli):
    """The ProtTrans script keys each vector by the whole header line, `P3 Nucleus-S`; fit finds a
    label record `P3` there by the first word (docs/formats.md), but project refused "labels none
    of the proteins mapped"."""
    import h5py

    rng = np.random.default_rng(4)
    with h5py.File(tmp_path / "prottrans.h5", "w") as f:
        for i in range(6):
            f.create_dataset(f"P{i} {'NC'[i % 2]}-S", data=rng.normal(size=5).astype(np.float32))
    (tmp_path / "labels.csv").write_text("id,family\n" + "".join(f"P{i},fam{i % 3}\n" for i in range(6)))
    r = run_cli("project", tmp_path / "prottrans.h5", "--labels", tmp_path / "labels.csv", "-o", tmp_path / "map.tsv")
    assert r.exit_code == 0, r.stderr
    rows = [line.split("\t") for line in (tmp_path / "map.tsv").read_text().splitlines()]
    assert {row[0]: row[3] for row in rows[1:]} == {f"P{i} {'NC'[i % 2]}-S": f"fam{i % 3}" for i in range(6)}


def test_layer_of_another_tools_file_must_exist_on_its_arrays(tmp_path, run_cli):
    """SeqVec's per-residue arrays in a bio_embeddings file, (3, L, D), are indexed by --layer, which
    must exist there, as export and fit read them (docs/formats.md): --layer 3 was an IndexError
    traceback, and --layer 1 of (L, D) arrays (one layer) was taken silently."""
    import h5py

    rng = np.random.default_rng(6)
    with h5py.File(tmp_path / "seqvec.h5", "w") as f, h5py.File(tmp_path / "rows.h5", "w") as g:
        for i in range(6):
            f.create_dataset(str(i), data=rng.normal(size=(3, 5 + i, 4)).astype(np.float32)).attrs["original_id"] = \
                f"P{i} a protein"
            g.create_dataset(f"P{i}", data=rng.normal(size=(5 + i, 4)).astype(np.float32))
    for path, layer, said in (("seqvec.h5", "3", "holds 3 layers on its arrays' first axis"),
                              ("seqvec.h5", "-4", "-3 to 2), not layer -4"),
                              ("rows.h5", "1", "holds one layer (no layer axis, no layer numbers recorded), not layer 1")):
        r = run_cli("project", tmp_path / path, "--layer", layer, "-o", tmp_path / "map.tsv")
        assert r.exit_code == 1 and said in r.stderr and "Traceback" not in r.stderr, r.stderr
    for path, layer in (("seqvec.h5", "-3"), ("rows.h5", "0")):
        assert run_cli("project", tmp_path / path, "--layer", layer, "-o", tmp_path / "map.tsv").exit_code == 0


def test_pictures_of_a_3d_map_without_labels_and_of_labels_on_a_colour_scale(tmp_path, run_cli, monkeypatch):
    """--dims 3 --plot with no label column (one colour, a z axis), and a column of numbers (a
    colour scale and its bar): each drawn whole, the table beside it with its axes."""
    from matplotlib.figure import Figure

    drawn, savefig = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **kw: (drawn.append(fig), savefig(fig, *a, **kw))[1])
    x, _ = _clusters(n_per=4)
    ids = [f"r{i}" for i in range(len(x))]
    _write(tmp_path / "a.h5", x, ids)
    r = run_cli("project", tmp_path / "a.h5", "--dims", "3", "--plot", tmp_path / "m3.png", "-o", tmp_path / "m3.tsv")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "m3.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "m3.tsv").read_text().splitlines()[0].split("\t") == ["id", "x", "y", "z"]
    [axes] = drawn.pop().axes  # a 3D map, its z axis named, one colour without a legend
    assert axes.name == "3d" and axes.get_zlabel().startswith("PC3 (") and axes.get_legend() is None
    assert len({tuple(c[:3]) for c in axes.collections[0].get_facecolor()}) == 1  # (alpha: depth shading)
    (tmp_path / "rsa.csv").write_text("id,rsa\n" + "".join(f"{i},{k / 10}\n" for k, i in enumerate(ids)))
    r = run_cli("project", tmp_path / "a.h5", "--labels", tmp_path / "rsa.csv", "--plot", tmp_path / "scale.png",
                "-o", tmp_path / "scale.tsv")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [row.split("\t") for row in (tmp_path / "scale.tsv").read_text().splitlines()]
    assert rows[0] == ["id", "x", "y", "rsa"] and {(r[0], r[-1]) for r in rows[1:]} == {
        (i, f"{k / 10}") for k, i in enumerate(ids)}
    axes, bar = drawn.pop().axes  # the map and a colour bar named by the column, not a legend of 12 classes
    assert bar.get_ylabel() == "rsa" and axes.get_legend() is None


def test_inputs_of_one_file_name_are_told_apart_by_their_folders(tmp_path, run_cli):
    """Two runs' run1/embed/e.h5 and run2/embed/e.h5 (bio_embeddings names every run's file
    alike): two sources, named by as much of their paths as tells them apart, not one `e.h5`."""
    x, _ = _clusters(n_per=4)
    for run, rows in (("run1", slice(0, 6)), ("run2", slice(6, 12))):
        (tmp_path / run / "embed").mkdir(parents=True)
        _write(tmp_path / run / "embed" / "e.h5", x[rows], [f"{run}_{i}" for i in range(6)])
    _write(tmp_path / "f.h5", x[:6], [f"f{i}" for i in range(6)])
    r = run_cli("project", tmp_path / "run1" / "embed" / "e.h5", tmp_path / "run2" / "embed" / "e.h5",
                tmp_path / "f.h5", "-q", "--html", tmp_path / "m.html")
    assert r.exit_code == 0, r.stderr
    assert "<title>PCA (euclidean) of run1/embed/e.h5, run2/embed/e.h5, f.h5: 18 proteins</title>" in (
        tmp_path / "m.html").read_text()
    _, rows = _table(r.stdout)
    assert [row["source"] for row in rows] == ["run1/embed/e.h5"] * 6 + ["run2/embed/e.h5"] * 6 + ["f.h5"] * 6


def test_an_input_whose_name_is_not_utf8_is_spelled_with_an_escape_in_the_table_and_page(tmp_path, run_cli):
    """A file name with byte 0xff (and any non-ASCII name under LC_ALL=C PYTHONUTF8=0) reaches
    Python with a surrogate escape: the TSV's source column and the page's title failed on it
    with a UnicodeEncodeError traceback, after the map was computed."""
    import os

    x, _ = _clusters(n_per=4)
    odd = os.path.join(os.fsencode(tmp_path), b"a\xff.h5")
    try:
        _write(os.fsdecode(odd), x[:6], [f"a{i}" for i in range(6)])
    except OSError:  # a file system that takes UTF-8 names only (macOS's APFS)
        pytest.skip("this file system refuses names that are not UTF-8")
    _write(tmp_path / "b.h5", x[6:], [f"b{i}" for i in range(6)])
    r = run_cli("project", os.fsdecode(odd), tmp_path / "b.h5", "-q", "--html", tmp_path / "m.html")
    assert r.exit_code == 0, r.stderr
    assert "<title>PCA (euclidean) of a\\xff.h5, b.h5: 12 proteins</title>" in (tmp_path / "m.html").read_text()
    _, rows = _table(r.stdout)
    assert [row["source"] for row in rows] == ["a\\xff.h5"] * 6 + ["b.h5"] * 6


_FAKE_DOM = """
function element(tag, attrs, classes) {
  var names = new Set(classes || []);
  return {tag: tag, attrs: attrs || {}, listeners: {}, dataset: {},
    classList: {toggle: function (c) { names.has(c) ? names.delete(c) : names.add(c); },
                contains: function (c) { return names.has(c); }},
    setAttribute: function (k, v) { this.attrs[k] = String(v); },
    addEventListener: function (t, f) { this.listeners[t] = f; },
    getBoundingClientRect: function () { return {left: 0, top: 0, width: 500, height: 500}; }};
}
var circles = PAGE.circles.map(function (c) { return element("circle", {r: c.r}, c.classes); });
var items = PAGE.groups.map(function (g) { var li = element("li"); li.dataset.group = g; return li; });
var svg = element("svg", {viewBox: "0 0 1000 1000"});
svg.getElementsByTagName = function () { return circles; };
svg.querySelectorAll = function (q) { var c = q.split(".")[1];
  return circles.filter(function (e) { return e.classList.contains(c); }); };
var window = element("window");
var document = {getElementById: function () { return svg; }, querySelectorAll: function () { return items; }};
"""


def _page_in_node(tmp_path, page_text, actions):
    """The page's script run by node against a stand-in for the DOM (an SVG of 500 x 500 pixels
    on the screen): what `actions` (JavaScript) print."""
    import json
    import re
    import subprocess

    page = _Page()
    page.feed(page_text)
    dom = {"circles": [{"r": c["r"], "classes": [c["class"]] if "class" in c else []} for c in page.circles],
           "groups": [li["data-group"] for li in page.legend if "data-group" in li]}
    script = re.search(r"<script>(.*)</script>", page_text, re.S).group(1)
    (tmp_path / "page.js").write_text(f"var PAGE = {json.dumps(dom)};\n{_FAKE_DOM}\n{script}\n{actions}")
    done = subprocess.run(["node", str(tmp_path / "page.js")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_pages_script_zooms_about_the_pointer_pans_and_hides_a_legend_entry(tmp_path):
    """Zooming in keeps the point under the pointer where it is and the points their size on the
    screen (their radius scaled with the view: before, they grew with the zoom and the ones
    that overlapped never drew apart); dragging moves the view; a legend entry hides its points."""
    from protrans_cli.project import Projection, save_map_page

    n = 40
    coords = np.random.default_rng(0).normal(size=(n, 2))
    result = Projection([f"p{i}" for i in range(n)], ["a"] * n, coords,
                        labels={"loc": ["Nucleus" if i % 2 else "Cytoplasm" for i in range(n)]}, colour_by="loc")
    save_map_page(result, tmp_path / "m.html")
    out = _page_in_node(tmp_path, (tmp_path / "m.html").read_text(), """
      var r0 = +circles[0].attrs.r;
      svg.listeners.wheel({deltaY: -1, clientX: 125, clientY: 250, preventDefault: function () {}});
      var zoomed = svg.attrs.viewBox.split(" ").map(Number);
      svg.listeners.mousedown({clientX: 100, clientY: 100});
      svg.listeners.mousemove({clientX: 150, clientY: 100});
      window.listeners.mouseup({});
      var moved = svg.attrs.viewBox.split(" ").map(Number);
      items[0].listeners.click();
      console.log(JSON.stringify({r0: r0, r: +circles[0].attrs.r, zoomed: zoomed, moved: moved,
        hidden: circles.filter(function (c) { return c.classList.contains("hidden"); }).length,
        group0: circles.filter(function (c) { return c.classList.contains("g0"); }).length}));
    """)
    x, y, width, height = out["zoomed"]
    assert width == height == pytest.approx(800)
    assert (x + 125 / 500 * width, y + 250 / 500 * height) == pytest.approx((250, 500))  # (the pointer's point)
    assert out["r"] == pytest.approx(out["r0"] * 0.8, rel=1e-2)
    assert out["moved"] == pytest.approx([x - 50 / 500 * width, y, width, height])
    assert out["hidden"] == out["group0"] == n // 2


def test_per_residue_files_are_placed_by_their_mean(tmp_path, run_cli):
    x, _ = _clusters(n_per=5)
    ids = [f"q{i}" for i in range(len(x))]
    _write(tmp_path / "proteins.h5", x, ids)
    _write(tmp_path / "residues.h5", x, ids, residues=True)
    a = run_cli("project", tmp_path / "proteins.h5")
    b = run_cli("project", tmp_path / "residues.h5")
    assert a.exit_code == 0 and b.exit_code == 0, b.stderr
    assert "per-residue embeddings only; each protein is placed by their mean" in b.stderr
    ha, ra = _table(a.stdout)
    hb, rb = _table(b.stdout)
    assert ha == hb == ["id", "x", "y"]
    np.testing.assert_allclose([[float(r["x"]), float(r["y"])] for r in rb],
                               [[float(r["x"]), float(r["y"])] for r in ra], rtol=1e-4, atol=1e-5)


def test_per_residue_files_of_several_layers_are_placed_by_each_layers_mean(tmp_path, run_cli):
    """(n_layers, L, D) per-residue arrays: the mean over the residues of the layer asked for
    (the mean over the layers, read as a layer axis, placed every protein by its first residue)."""
    x, _ = _clusters(n_per=5, dims=8)
    y = -2 * x[::-1] + 1
    ids = [f"q{i}" for i in range(len(x))]
    attrs = {"model": "esm2_t6_8M_UR50D", "layers": [-1, -2], "num_hidden_states": 7}
    rng = np.random.default_rng(0)
    with EmbeddingsWriter(tmp_path / "residues.h5", kinds=("per_residue",), attrs=attrs) as w:
        for ident, a, b in zip(ids, x, y):
            noise = rng.normal(size=(2, 6, 8))
            w.write(ident, ident, "ACDEFG", per_residue=(np.stack([a, b])[:, None, :] + noise
                                                         - noise.mean(axis=1, keepdims=True)).astype(np.float32))
    for layer, vectors in (("-1", x), ("-2", y)):
        r = run_cli("project", tmp_path / "residues.h5", "--layer", layer, "-q")
        assert r.exit_code == 0, r.stderr
        _, rows = _table(r.stdout)
        ref, _ = _svd_reference(vectors[[ids.index(row["id"]) for row in rows]], 2)
        _same_up_to_sign(np.array([[float(row["x"]), float(row["y"])] for row in rows]), ref, 1e-3)


def _separated(coords, cluster) -> float:
    """The fraction of points whose nearest point on the map is of their own cluster."""
    d = ((coords[:, None] - coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return float(np.mean(cluster[d.argmin(axis=1)] == cluster))


@pytest.mark.skipif(not HAS_SKLEARN, reason="scikit-learn is not installed")
def test_tsne_separates_clusters_and_repeats_itself(tmp_path, run_cli):
    x, cluster = _clusters()
    ids = [f"t{i:02d}" for i in range(len(x))]
    _write(tmp_path / "e.h5", x, ids)
    runs = [run_cli("project", tmp_path / "e.h5", "--method", "tsne", "--seed", "3", "-j", "1") for _ in range(2)]
    assert all(r.exit_code == 0 for r in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    assert ("t-SNE: 45 proteins are too few for the default perplexity 30 (it takes 91 or more): perplexity 14.7 "
            "is used (--perplexity sets another, below 45)") in runs[0].stderr
    _, rows = _table(runs[0].stdout)
    coords = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    assert _separated(coords, cluster) == 1.0
    r = run_cli("project", tmp_path / "e.h5", "--method", "tsne", "--perplexity", "45")
    assert r.exit_code == 2 and ("--perplexity 45 is too large for 45 proteins: give one below 45 (14.7 or less is "
                                 "usual), or leave it out (14.7 is then chosen)") in r.stderr


@pytest.mark.slow
@pytest.mark.skipif(not HAS_UMAP, reason="umap-learn is not installed")
def test_umap_separates_clusters_and_repeats_itself(tmp_path, run_cli):
    x, cluster = _clusters()
    _write(tmp_path / "e.h5", x, [f"u{i:02d}" for i in range(len(x))])
    runs = [run_cli("project", tmp_path / "e.h5", "--method", "umap", "--metric", "cosine", "--dims", "3")
            for _ in range(2)]
    assert all(r.exit_code == 0 for r in runs), runs[0].stderr
    assert runs[0].stdout == runs[1].stdout
    head, rows = _table(runs[0].stdout)
    assert head == ["id", "x", "y", "z"]
    coords = np.array([[float(r[a]) for a in "xyz"] for r in rows])
    assert _separated(coords, cluster) == 1.0


def test_umap_silences_only_its_developer_warnings(monkeypatch):
    """_umap ignored every warning raised while umap-learn ran: a failed spectral initialisation,
    disconnected vertices, any other. Now only the seed's one-thread notice, scikit-learn's
    force_all_finite rename and numba's own (its category) are; the rest reach the user. (A
    stand-in umap-learn and numba: neither need be installed.)"""
    import types
    import warnings

    from protrans_cli.project import _umap

    class NumbaWarning(Warning):  # (numba.core.errors': each of numba's warnings is one)
        pass

    class NumbaPerformanceWarning(NumbaWarning):
        pass

    class UMAP:
        def __init__(self, n_components, **_):
            self.dims = n_components

        def fit_transform(self, x):
            warnings.warn("n_jobs value 1 overridden to 1 by setting random_state. Use no seed for parallelism.")
            warnings.warn("'force_all_finite' was renamed to 'ensure_all_finite' in 1.6 and will be removed in 1.8.",
                          FutureWarning)
            warnings.warn("parallel=True was specified but no transformation for parallel execution was possible",
                          NumbaPerformanceWarning)
            warnings.warn("Spectral initialisation failed! Falling back to random initialisation!")
            warnings.warn("a FutureWarning of something else", FutureWarning)
            return np.zeros((len(x), self.dims))

    errors = types.ModuleType("numba.core.errors")
    errors.NumbaWarning = NumbaWarning
    for name, module in (("numba", types.ModuleType("numba")), ("numba.core", types.ModuleType("numba.core")),
                         ("numba.core.errors", errors), ("umap", types.SimpleNamespace(UMAP=UMAP))):
        monkeypatch.setitem(sys.modules, name, module)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        coords = _umap(np.eye(6), 2, "euclidean", 0, None, 0.1)
    assert coords.shape == (6, 2)
    assert [str(w.message) for w in shown] == ["Spectral initialisation failed! Falling back to random initialisation!",
                                               "a FutureWarning of something else"]


def test_colours_by_category_by_scale_and_the_rare_ones_together():
    from protrans_cli.project import MAX_COLOURS, OTHER, UNLABELLED, Projection, colouring

    n = 60
    coords = np.zeros((n, 2))
    numbers = Projection([f"p{i}" for i in range(n)], ["a"] * n, coords,
                         labels={"tm": [None if i % 10 == 0 else f"{40 + i * 0.5}" for i in range(n)]}, colour_by="tm")
    scale = colouring(numbers)
    assert scale.kind == "scale" and (scale.low, scale.high) == (40.5, 69.5)
    assert scale.colours[0] == UNLABELLED and len(set(scale.colours)) > 20
    many = [f"c{i % 30}" for i in range(n)]
    many[:10] = ["c0"] * 10  # the most frequent
    categories = Projection([f"p{i}" for i in range(n)], ["a"] * n, coords, labels={"go": many}, colour_by="go")
    c = colouring(categories)
    assert c.kind == "category"
    assert len(c.legend) == MAX_COLOURS and c.legend[-1][0] == "other (11 labels)" and c.legend[-1][1] == OTHER
    assert ("c0", c.colours[0], 11) in c.legend
    assert sum(count for _, _, count in c.legend) == n
    # no category in the grey of `other` or of `no label` (tab10's and tab20's greys), whatever their number
    from protrans_cli.project import _draw_order

    for kinds in (3, 8, 10, 15, 20, 30):
        labels = [f"k{i % kinds:02d}" for i in range(n)] + [None]
        shown = colouring(Projection([f"p{i}" for i in range(n + 1)], ["a"] * (n + 1), np.zeros((n + 1, 2)),
                                     labels={"go": labels}, colour_by="go"))
        greys = {OTHER, UNLABELLED, "#c7c7c7"}
        assert not greys & {colour for label, colour, _ in shown.legend if not label.startswith(("other", "no label"))}
        assert len({colour for _, colour, _ in shown.legend}) == len(shown.legend)
    # the rare labels' points are drawn beneath the coloured ones (only the unlabelled further down)
    layer = [{UNLABELLED: 0, OTHER: 1}.get(shown.colours[i], 2) for i in _draw_order(shown)]
    assert layer == sorted(layer) and layer.count(0) == 1 and layer.count(1) > 0
    # a few numbers (classes 0 to 10) are categories in the order of the numbers, not of their text
    classes = Projection([f"p{i}" for i in range(n)], ["a"] * n, coords, labels={"c": [str(i % 11) for i in range(n)]},
                         colour_by="c")
    assert [label for label, _, _ in colouring(classes).legend] == [str(i) for i in range(11)]


def test_dollars_in_labels_and_file_names_are_drawn_as_they_are(tmp_path, run_cli):
    """matplotlib reads text between two `$` as mathtext: a label `$\\frac{a$` was a traceback
    from savefig (and `$x$` drawn as math); they are drawn literally."""
    x, _ = _clusters(n_per=3)
    ids = [f"d{i}" for i in range(len(x))]
    _write(tmp_path / "run_$1$.h5", x, ids)
    (tmp_path / "l.csv").write_text("id,label\nd0,$\\frac{a$\nd1,$x^$\nd2,plain\n")
    for picture in ("m.png", "m.svg"):
        r = run_cli("project", tmp_path / "run_$1$.h5", "--labels", tmp_path / "l.csv", "--plot", tmp_path / picture,
                    "-o", tmp_path / "m.tsv")
        assert r.exit_code == 0 and "Traceback" not in r.stderr, r.stderr
    svg = (tmp_path / "m.svg").read_text()
    assert "run_$1$.h5" in svg and "$\\frac{a$ (1)" in svg


def test_the_same_command_gives_the_same_picture_byte_for_byte(tmp_path, run_cli):
    """An SVG held the time it was written (dc:date) and element ids salted at random, a PDF its
    CreationDate: each run of one command wrote another file (a pipeline's checksum changed)."""
    import matplotlib

    x, _ = _clusters(n_per=3)
    _write(tmp_path / "e.h5", x, [f"p{i}" for i in range(len(x))])
    salt = matplotlib.rcParams["svg.hashsalt"]
    for suffix in ("png", "svg", "pdf"):
        pictures = []
        for run in (1, 2):
            picture = tmp_path / f"m{run}.{suffix}"
            r = run_cli("project", tmp_path / "e.h5", "--plot", picture, "-o", tmp_path / f"m{run}.tsv")
            assert r.exit_code == 0, r.stderr
            pictures.append(picture.read_bytes())
        assert pictures[0] == pictures[1], suffix
        assert b"dc:date" not in pictures[0] and b"CreationDate" not in pictures[0], suffix
    assert matplotlib.rcParams["svg.hashsalt"] == salt  # (the caller's setting is left as it was)


def test_refusals(tmp_path, run_cli, monkeypatch):
    x, _ = _clusters(n_per=4)
    ids = [f"r{i}" for i in range(len(x))]
    _write(tmp_path / "a.h5", x, ids)
    _write(tmp_path / "b.h5", x[:, :8], ids)
    _write(tmp_path / "other.h5", x, ids, model="esm2_t6_8M_UR50D")
    _write(tmp_path / "cls.h5", x, ids, pooling="cls")
    zero = x.copy()
    zero[3] = 0
    _write(tmp_path / "zero.h5", zero, ids)
    _write(tmp_path / "empty.h5", np.zeros((0, 4)), [])
    with EmbeddingsWriter(tmp_path / "no_rows.h5", kinds=("per_residue",), attrs={"model": "onehot"}) as w:
        w.write("r0", "r0", "", per_residue=np.zeros((0, 4), dtype=np.float32))
    nan = x.copy()
    nan[5, 2] = np.nan
    _write(tmp_path / "nan.h5", nan, ids)
    _write(tmp_path / "nan_rows.h5", nan, ids, residues=True)
    (tmp_path / "l1.csv").write_text("id,label\nr0,Nucleus\n")
    (tmp_path / "l2.csv").write_text("id,label\nr0,Cytoplasm\n")
    (tmp_path / "none.csv").write_text("id,label\nzz,Nucleus\n")
    (tmp_path / "ss.csv").write_text("input, dssp3, dssp8, disorder, cb513_mask\nA C D, C C E, C C E, 1.0 1.0 1.0, 1 1 1\n")
    (tmp_path / "seqs.fa").write_text(">r0\nMKVLAAGHW\n>r1\nMKTAYIAKQR\n")
    a = tmp_path / "a.h5"
    cases = [
        (["project"], 2, "give one embeddings file (HDF5) or more"),
        (["project", "-"], 2, "an HDF5 file is read in place"),
        (["project", a, tmp_path / "b.h5"], 1, "vectors of 8 dimensions, where"),
        (["project", a, tmp_path / "other.h5"], 1, "other.h5: its proteins come from model 'esm2_t6_8M_UR50D', "
         f"{a}'s from 'onehot'"),
        (["project", a, tmp_path / "cls.h5"], 1, f"cls.h5: its proteins are pooled by cls, {a}'s by mean"),
        (["project", a, "--labels", tmp_path / "l1.csv", "--labels", tmp_path / "l2.csv"], 1,
         "r0: label 'Cytoplasm' here, 'Nucleus' in"),
        (["project", a, "--labels", tmp_path / "none.csv"], 1, "labels none of the 12 proteins mapped"),
        (["project", a, "--labels", tmp_path / "ss.csv"], 1, "holds per-residue labels (netsurfp)"),
        # the proteins' FASTA given as labels: was "holds per-residue labels (flip)"
        (["project", a, "--labels", tmp_path / "seqs.fa"], 1, "seqs.fa: holds sequences, not labels; a map colours "
         "each protein by one label (a DeepLoc FASTA, an id,label table, FLIP CSV); if the file holds sequences, give "
         "it to embed"),
        (["project", a, "--color-by", "loc"], 2, "--color-by loc: no such label column (the columns: none"),
        (["project", a, "--dims", "3", "--html", tmp_path / "m.html"], 2, "--html draws 2 dimensions"),
        (["project", a, "--plot", tmp_path / "m.jpg"], 2, "a picture is .png, .svg or .pdf"),
        (["project", a, "-o", a], 2, "is also an input"),
        (["project", a, "-o", tmp_path / "m.x.png", "--plot", tmp_path / "m.x.png"], 2, "name one file"),
        (["project", a, "--perplexity", "5"], 2, "--perplexity goes with --method tsne"),
        # (the format of no label file: it changed nothing, without a word)
        (["project", a, "--label-format", "table"], 2, "--label-format goes with --labels"),
        (["project", a, "--label-format", "auto"], 2, "--label-format goes with --labels"),  # (the default's value)
        (["project", a, "--neighbors", "5"], 2, "--neighbors and --min-dist go with --method umap"),
        (["project", a, "--min-dist", "0.1"], 2, "--neighbors and --min-dist go with --method umap"),
        (["project", tmp_path / "empty.h5"], 1, "empty.h5: holds no protein"),
        (["project", tmp_path / "no_rows.h5"], 1, "no_rows.h5: holds no protein"),
        (["project", tmp_path / "nan.h5"], 1, "nan.h5: embeddings: 1 protein(s) have NaN or infinite values (first: r5)"),
        (["project", tmp_path / "nan_rows.h5"], 1, "nan_rows.h5: embeddings: r5 has NaN or infinite values"),
        (["project", a, tmp_path / "." / "a.h5"], 2, "is given twice"),
        (["project", a, "--method", "tsne", "--seed", "-1"], 2, "--seed must be at least 0, got -1"),
        (["project", a, "--seed", str(2**32)], 2, "--seed must be at most 4294967295 (2**32 - 1: scikit-learn's and "
         "umap-learn's seeds are 32-bit), got 4294967296"),
        # (named by its file and record: "r3: a vector of zeros ..." named no file)
        (["project", a, tmp_path / "zero.h5", "--metric", "cosine"], 1, f"{tmp_path / 'zero.h5'}, record 'r3': a "
         "vector of zeros has no direction"),
        (["project", tmp_path / "missing.h5"], 1, "no such file"),
    ]
    for argv, code, text in cases:
        out = tmp_path / "m.tsv"
        r = run_cli(*argv, "-o", out) if "-o" not in argv else run_cli(*argv)
        assert r.exit_code == code and text in r.stderr and "Traceback" not in r.stderr, (argv, r.stderr)
        assert not out.exists() and not (tmp_path / "m.x.png").exists()
    r = run_cli("project", a, tmp_path / "other.h5", "--allow-model-mismatch")
    assert r.exit_code == 0 and "warning" in r.stderr
    # t-SNE without scikit-learn: what to install, before anything is read
    monkeypatch.setitem(sys.modules, "sklearn", None)
    r = run_cli("project", tmp_path / "missing.h5", "--method", "tsne")
    assert r.exit_code == 2 and "--method tsne needs scikit-learn, which is not installed: pip install" in r.stderr


def test_threads_with_a_method_that_takes_none_are_said_to_do_nothing(tmp_path, run_cli):
    """-j sets t-SNE's threads only (UMAP with a seed runs on one): with PCA it changed nothing,
    without a word. A warning now, the map made; without -j, none."""
    x, _ = _clusters(n_per=4)
    _write(tmp_path / "a.h5", x, [f"r{i}" for i in range(len(x))])
    r = run_cli("project", tmp_path / "a.h5", "-j", "2", "-o", tmp_path / "m.tsv")
    assert r.exit_code == 0 and "-j does nothing with --method pca (it sets t-SNE's threads): ignored" in r.stderr
    assert len((tmp_path / "m.tsv").read_text().splitlines()) == len(x) + 1
    r = run_cli("project", tmp_path / "a.h5", "-o", tmp_path / "m.tsv")
    assert r.exit_code == 0 and "-j" not in r.stderr


def test_bounds_that_need_no_data_are_said_before_any_file_is_read(tmp_path, run_cli):
    """--min-dist 2, --neighbors 1, --perplexity 0 were refused only once every file was read (and
    UMAP's neighbours said): a usage error now before anything is read, as --seed is."""
    missing = tmp_path / "missing.h5"
    cases = [(["--method", "umap", "--min-dist", "2"], "--min-dist must be between 0 and 1, got 2"),
             (["--method", "umap", "--neighbors", "1"], "--neighbors must be at least 2, got 1"),
             (["--method", "tsne", "--perplexity", "0"], "--perplexity must be positive, got 0")]
    for args, message in cases:
        method = args[1]
        if not (HAS_UMAP if method == "umap" else HAS_SKLEARN):
            continue
        r = run_cli("project", missing, *args, "-o", tmp_path / "m.tsv")
        assert r.exit_code == 2 and r.stderr.startswith(f"protrans: error: {message}") and r.stderr.count("\n") == 1
    x, _ = _clusters(n_per=4)
    _write(tmp_path / "a.h5", x, [f"r{i}" for i in range(len(x))])
    if HAS_SKLEARN:  # (the bound that needs the proteins: said once they are counted)
        r = run_cli("project", tmp_path / "a.h5", "--method", "tsne", "--perplexity", "50", "-o", tmp_path / "m.tsv")
        assert r.exit_code == 2 and "--perplexity 50 is too large for 12 proteins: give one below 12" in r.stderr
    assert not (tmp_path / "m.tsv").exists()


def _page_facts(path) -> dict:
    """The facts a --html page stores (its generator meta's data-facts, JSON)."""
    import html as html_module

    text = path.read_text()
    return json.loads(html_module.unescape(text.split('data-facts="', 1)[1].split('"', 1)[0]))


def test_tiny_inputs_say_what_is_too_few_and_what_to_give(run_cli, tmp_path):
    """On 10 proteins the map's messages read oddly: "9 nearest neighbours kept on the map: 1.00
    (random: 1)" (any map keeps them all), "t-SNE: perplexity 3 for 10 proteins (30 needs 91 at
    least)", "3 protein(s): t-SNE places 4 at least". Each now says what is too few and what to give."""
    x, _ = _clusters(n_per=4)
    _write(tmp_path / "ten.h5", x[:10], [f"p{i}" for i in range(10)])
    r = run_cli("project", tmp_path / "ten.h5", "-o", tmp_path / "m.tsv")
    assert r.exit_code == 0, r.stderr
    assert ("map quality: neighbours kept not measured: 10 proteins are too few (any map keeps each one's 9 others "
            "as its nearest; 12 or more give a figure)\n") in r.stderr
    assert "random" not in r.stderr and "kept on the map" not in r.stderr
    r = run_cli("project", tmp_path / "ten.h5", "--method", "pca", "-o", "-", "--sample", "4")
    assert r.exit_code == 0 and "3 others" in r.stderr, r.stderr
    # --sample goes as low as the method places: PCA 2 (it was refused below t-SNE's 4)
    r = run_cli("project", tmp_path / "ten.h5", "--method", "pca", "-o", "-", "--sample", "2")
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 3, r.stderr
    r = run_cli("project", tmp_path / "ten.h5", "--method", "tsne", "-o", "-", "--sample", "3")
    assert r.exit_code == 2 and "--sample" in r.stderr, r.stderr
    _write(tmp_path / "twelve.h5", x, [f"p{i}" for i in range(12)])  # (12: a figure, against a random map's)
    r = run_cli("project", tmp_path / "twelve.h5", "-o", tmp_path / "m12.tsv", "--html", tmp_path / "m12.html")
    assert r.exit_code == 0 and "10 nearest neighbours kept on the map: " in r.stderr
    assert "(a random map keeps 0.91)" in r.stderr
    said = float(r.stderr.split("kept on the map: ")[1].split()[0])
    assert _page_facts(tmp_path / "m12.html")["neighbourhoods_kept"] == pytest.approx(said, abs=0.005)
    # (the page stored neighbourhoods_kept 1.0 for 11 proteins or fewer, which any map keeps: no figure)
    r = run_cli("project", tmp_path / "ten.h5", "-o", tmp_path / "m10.tsv", "--html", tmp_path / "m10.html")
    assert r.exit_code == 0 and "neighbours kept not measured: 10 proteins are too few" in r.stderr, r.stderr
    facts = _page_facts(tmp_path / "m10.html")
    assert facts["proteins"] == 10 and facts["neighbourhoods_kept"] is None
    from protrans_cli.project import map_quality, neighbourhoods_kept

    assert math.isnan(neighbourhoods_kept(x[:11], x[:11, :2]))  # (10 neighbours of 10 others: any map's)
    assert neighbourhoods_kept(x[:11], x[:11, :2], k=9) >= 0  # (9 of 10: a figure)
    assert math.isnan(map_quality(x[:5], x[:5, :2], k=4, labels=list("aabbb"))[0])
    assert map_quality(x[:5], x[:5, :2], k=4, labels=list("aabbb"))[1][2] == 5  # (the label figure stays)
    _write(tmp_path / "three.h5", x[:3], ["a", "b", "c"])
    if HAS_SKLEARN:
        r = run_cli("project", tmp_path / "ten.h5", "--method", "tsne", "-j", "1", "-o", tmp_path / "t.tsv")
        assert r.exit_code == 0, r.stderr
        assert ("t-SNE: 10 proteins are too few for the default perplexity 30 (it takes 91 or more): perplexity 3 "
                "is used (--perplexity sets another, below 10)\n") in r.stderr
        r = run_cli("project", tmp_path / "ten.h5", "--method", "tsne", "--perplexity", "20", "-o", tmp_path / "u.tsv")
        assert r.exit_code == 2 and r.stderr.endswith(
            "protrans: error: --perplexity 20 is too large for 10 proteins: give one below 10 (3 or less is usual), "
            "or leave it out (3 is then chosen)\n"), r.stderr
        r = run_cli("project", tmp_path / "three.h5", "--method", "tsne", "-o", tmp_path / "v.tsv")
        assert r.exit_code == 1 and r.stderr.endswith(
            f"protrans: error: {tmp_path / 'three.h5'}: 3 proteins are too few for t-SNE, which places 4 or more: "
            "give more proteins, or --method pca, which places 2 or more\n"), r.stderr
        assert not (tmp_path / "u.tsv").exists() and not (tmp_path / "v.tsv").exists()
    if HAS_UMAP:
        r = run_cli("project", tmp_path / "ten.h5", "--method", "umap", "--neighbors", "10", "-o", tmp_path / "w.tsv")
        assert r.exit_code == 2 and r.stderr.endswith(
            "protrans: error: --neighbors 10 is too many for 10 proteins (each has 9 others): give 9 or fewer, or "
            "leave it out (9 is then chosen)\n"), r.stderr


def test_library_call_and_few_proteins(tmp_path):
    from protrans_cli.project import project, reduce

    x, cluster = _clusters(n_per=6)
    _write(tmp_path / "e.h5", x, [f"e{i}" for i in range(len(x))])
    result = project(tmp_path / "e.h5", None, measure=True)
    assert result.coords.shape == (18, 2) and result.ids[0] == "e0" and result.explained.sum() <= 1.0
    assert 0.0 <= result.kept <= 1.0 and result.axis_names()[0].startswith("PC1 (")
    with pytest.raises(InputError, match="^1 protein is too few for PCA, which places 2 or more: give more proteins$"):
        reduce(x[:1])
    with pytest.raises(UsageError, match="^dims must be 2 or 3, got 4$"):
        reduce(x, dims=4)
    x[7, 2] = np.nan
    with pytest.raises(InputError, match="row 7 has NaN or infinite values"):
        reduce(x)


def test_map_quality_refuses_rows_that_do_not_pair_up_and_labels_of_another_length():
    """docs/project.md's map_quality(vectors, coords, labels=row_labels) from Python: coords of
    fewer rows were an IndexError traceback, a (N, layers, D) matrix a numpy one, and labels of
    another length (the {id: label} dict itself, say) gave no label figure without a word."""
    from protrans_cli.project import map_quality, neighbourhoods_kept, reduce

    x, cluster = _clusters(n_per=6)
    coords = reduce(x)[0]
    for vectors, low in ((x, coords[:10]), (x[:, None, :], coords)):
        with pytest.raises(UsageError, match="expected \\(N, D\\) and \\(N, 2 or 3\\), one row per protein in both"):
            neighbourhoods_kept(vectors, low)
    for labels, said in ((["a"], "labels: 1 for 18 rows"), ({"e0": "a", "e1": "b"}, "labels: a dict for 18 rows")):
        with pytest.raises(UsageError, match=said):
            map_quality(x, coords, labels=labels)
    assert map_quality(x, coords, labels=[str(c) for c in cluster])[1][2] == 18



def test_library_settings_of_the_wrong_type_are_usage_errors_and_numpy_numbers_serve(tmp_path):
    """seed="1", dims=2.0, layer="-1", sample="50" or k="5" from a notebook were TypeErrors from
    inside ("'<=' not supported between instances of 'int' and 'str'", "slice indices must be
    integers"); dims="2" said "--dims 2: a map has 2 or 3 dimensions". numpy's numbers serve."""
    from protrans_cli.project import map_quality, project, reduce

    x, _ = _clusters(n_per=6)
    _write(tmp_path / "e.h5", x, [f"e{i}" for i in range(len(x))])
    for kw, said in (({"seed": "1"}, "seed must be an int, got str '1'"), ({"dims": 2.0}, "dims must be an int, got float"),
                     ({"dims": "2"}, "dims must be an int, got str '2'"),
                     ({"perplexity": "5"}, "perplexity must be a float or None, got str")):
        with pytest.raises(UsageError, match=f"^{said}"):
            reduce(x, **kw)
    for kw, said in (({"layer": "-1"}, "layer must be an int, got str"), ({"sample": "8"}, "sample must be an int or None")):
        with pytest.raises(UsageError, match=f"^{said}"):
            project(tmp_path / "e.h5", None, **kw)
    with pytest.raises(UsageError, match="^k must be an int, got str '5'"):
        map_quality(x, reduce(x)[0], k="5")
    assert reduce(x, dims=np.int64(2), seed=np.int64(1))[0].shape == (18, 2)
    # inputs and labels that are no paths: "'NoneType' object is not iterable", "expected str,
    # bytes or os.PathLike object, not list"
    with pytest.raises(UsageError, match="^inputs must be an embeddings file or a list of them, got NoneType"):
        project(None, None)
    with pytest.raises(UsageError, match="^project: labels must be a path \\(one file each\\), got list"):
        project(tmp_path / "e.h5", None, labels=[[tmp_path / "l.csv"]])
    assert project(tmp_path / "e.h5", None, sample=np.int64(8), layer=np.int64(-1), measure=False).coords.shape == (8, 2)

def test_pca_imports_no_torch(tmp_path):
    x, _ = _clusters(n_per=3)
    _write(tmp_path / "e.h5", x, [f"e{i}" for i in range(len(x))])
    done = heavy_imports_of([["project", str(tmp_path / "e.h5"), "-o", str(tmp_path / "m.tsv"), "-q"]],
                            ("torch", "transformers", "sklearn"))
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
@pytest.mark.skipif(not HAS_SKLEARN, reason="scikit-learn is not installed")
def test_deeploc_maps(tmp_path, run_cli, shared_data):
    """DeepLoc's validation split (1,678 proteins, one-hot composition vectors): every protein
    placed and labelled from its header (membrane U left blank), and t-SNE keeps far more of the
    neighbourhoods than PCA, which keeps far more than chance."""
    fasta = shared_data / "deeploc_light_attention" / "deeploc_our_val_set.fasta"
    r = run_cli("embed", fasta, "-m", "onehot", "--per-protein", "-o", tmp_path / "val.h5")
    assert r.exit_code == 0, r.stderr
    kept = {}
    for method in ("pca", "tsne"):
        r = run_cli("project", tmp_path / "val.h5", "--method", method, "--labels", fasta,
                    "-o", tmp_path / f"{method}.tsv", "--html", tmp_path / f"{method}.html")
        assert r.exit_code == 0, r.stderr
        head, rows = _table((tmp_path / f"{method}.tsv").read_text())
        assert head == ["id", "x", "y", "loc", "membrane"] and len(rows) == 1678
        assert all(row["loc"] for row in rows) and {row["membrane"] for row in rows} == {"M", "S", ""}
        kept[method] = float(r.stderr.split("kept on the map: ")[1].split(" ")[0])
    assert kept["tsne"] > 3 * kept["pca"] > 3 * 10 * 10 / 1677


def test_an_annotation_table_colours_by_any_of_its_columns_and_a_sample_places_fewer(tmp_path, run_cli):
    """A headed table gives every column after the id (its own `source` renamed label_source,
    beside the map's); numbers colour by a scale; --sample places a seeded subset in input order."""
    from protrans_cli.project import Projection, colouring

    x, cluster = _clusters()
    ids = [f"a{i:02d}" for i in range(len(x))]
    _write(tmp_path / "one.h5", x[:20], ids[:20])
    _write(tmp_path / "two.h5", x[20:], ids[20:])
    table = tmp_path / "annotations.tsv"
    table.write_text("id\tfamily\ttm\tsource\n" + "".join(
        f"{ident}\t{'kinase protease lipase'.split()[cluster[i]]}\t{40 + i * 0.7:.1f}\tlab{i % 2}\n"
        for i, ident in enumerate(ids)))
    r = run_cli("project", tmp_path / "one.h5", tmp_path / "two.h5", "--labels", table, "--color-by", "tm",
                "--html", tmp_path / "m.html")
    assert r.exit_code == 0, r.stderr
    head, rows = _table(r.stdout)
    assert head == ["id", "source", "x", "y", "family", "tm", "label_source"]
    assert [row["source"] for row in rows] == ["one.h5"] * 20 + ["two.h5"] * 25
    assert [row["tm"] for row in rows] == [f"{40 + i * 0.7:.1f}" for i in range(45)]
    assert [row["label_source"] for row in rows] == [f"lab{i % 2}" for i in range(45)]
    page = (tmp_path / "m.html").read_text()
    assert 'class="scale"' in page and ">tm<" in page
    by_family = colouring(Projection(ids, [""] * 45, np.zeros((45, 2)),
                                     labels={"family": [row["family"] for row in rows]}, colour_by="family"))
    assert by_family.kind == "category" and [entry[0] for entry in by_family.legend] == ["kinase", "lipase", "protease"]
    sampled = [run_cli("project", tmp_path / "one.h5", tmp_path / "two.h5", "--sample", "10", "--seed", str(seed))
               for seed in (1, 1, 2)]
    assert all(s.exit_code == 0 for s in sampled), sampled[0].stderr
    assert "placing 10 of the 45 proteins, drawn by --seed 1 (--sample)" in sampled[0].stderr
    picked = [[row["id"] for row in _table(s.stdout)[1]] for s in sampled]
    assert picked[0] == picked[1] != picked[2] and len(picked[0]) == 10 and picked[0] == sorted(picked[0])
    r = run_cli("project", tmp_path / "one.h5", "--sample", "1")  # (PCA, the default, places 2 at least)
    assert r.exit_code == 2 and "--sample must be at least 2, got 1" in r.stderr


def test_a_renamed_column_that_meets_the_tables_own_is_an_error(tmp_path, run_cli):
    """`id,x,label_x`: the table's x becomes label_x beside the map's x, and its own label_x was
    the same column (x's values lost, silently): an error naming the file, exit 1."""
    x, _ = _clusters(n_per=3)
    ids = [f"a{i}" for i in range(len(x))]
    _write(tmp_path / "e.h5", x, ids)
    table = tmp_path / "t.csv"
    table.write_text("id,x,label_x\n" + "".join(f"{ident},{i},lx\n" for i, ident in enumerate(ids)))
    r = run_cli("project", tmp_path / "e.h5", "--labels", table, "-o", tmp_path / "m.tsv")
    assert r.exit_code == 1 and not (tmp_path / "m.tsv").exists()
    assert r.stderr.strip().endswith(f"{table}: its column 'x', a name the map's table has, would be label_x, "
                                     "and it has a label_x column too: rename one of them"), r.stderr
    table.write_text("id,x,y_label\n" + "".join(f"{ident},{i},lx\n" for i, ident in enumerate(ids)))
    r = run_cli("project", tmp_path / "e.h5", "--labels", table)
    assert r.exit_code == 0 and _table(r.stdout)[0] == ["id", "x", "y", "label_x", "y_label"], r.stderr


def test_a_protein_without_residues_is_left_off_with_a_warning(tmp_path, run_cli):
    x, _ = _clusters(n_per=3)
    with EmbeddingsWriter(tmp_path / "r.h5", kinds=("per_residue",), attrs={"model": "onehot"}) as w:
        for i, v in enumerate(x):
            w.write(f"r{i}", f"r{i}", "ACD", per_residue=np.tile(v, (3, 1)).astype(np.float32))
        w.write("empty", "empty", "", per_residue=np.zeros((0, x.shape[1]), dtype=np.float32))
    r = run_cli("project", tmp_path / "r.h5")
    assert r.exit_code == 0, r.stderr
    assert "1 protein without a residue left off the map (empty)" in r.stderr
    assert len(_table(r.stdout)[1]) == 9


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_label_agreement_equals_a_brute_force_count(monkeypatch, metric):
    """map_quality's second figure: over the labelled proteins, how often the nearest other
    labelled protein carries the same label, in the space and on the map (brute force here)."""
    from protrans_cli import project as project_module

    monkeypatch.setattr(project_module, "ROWS_PER_SLICE", 6)
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=(41, 7)), rng.normal(size=(41, 2))
    labels = [None if i % 5 == 0 else "abc"[rng.integers(3)] for i in range(41)]
    kept, (space, on_map, counted) = project_module.map_quality(x, y, metric=metric, labels=labels, k=3)
    assert kept == pytest.approx(_kept_brute(x, y, 3, metric), abs=1e-12)

    def agreement(points):
        d = ((points[:, None] - points[None]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        d[:, [i for i, v in enumerate(labels) if v is None]] = np.inf
        asked = [i for i, v in enumerate(labels) if v is not None]
        return np.mean([labels[int(d[i].argmin())] == labels[i] for i in asked]), len(asked)

    unit = x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x
    assert (space, counted) == pytest.approx(agreement(unit), abs=1e-12)
    assert on_map == pytest.approx(agreement(y)[0], abs=1e-12)
    assert project_module.map_quality(x, y, labels=[None] * 40 + ["a"])[1] is None


def test_the_quality_line_names_the_colour_column_and_leaves_out_numbers(tmp_path, run_cli):
    x, cluster = _clusters()
    ids = [f"c{i:02d}" for i in range(len(x))]
    _write(tmp_path / "e.h5", x, ids)
    (tmp_path / "l.csv").write_text("id,family,tm\n" + "".join(
        f"{ident},{'kinase protease lipase'.split()[cluster[i]]},{40 + i}\n" for i, ident in enumerate(ids)))
    r = run_cli("project", tmp_path / "e.h5", "--labels", tmp_path / "l.csv")
    assert r.exit_code == 0, r.stderr
    assert "the nearest labelled protein has the same family: 1.00 in embedding space, 1.00 on the map (45 proteins)" \
        in r.stderr
    r = run_cli("project", tmp_path / "e.h5", "--labels", tmp_path / "l.csv", "--color-by", "tm")
    assert r.exit_code == 0 and "map quality: 10 nearest neighbours kept" in r.stderr
    assert "the nearest labelled protein" not in r.stderr  # (a colour scale: no classes to agree on)


def test_stdin_is_one_labels_file_at_most(tmp_path, run_cli):
    """`--labels - --labels -`: the first read would take all of stdin and the second find it
    empty; a usage error (exit 2) before any file is read, and no output."""
    x, _ = _clusters(n_per=3)
    _write(tmp_path / "e.h5", x, [f"e{i}" for i in range(len(x))])
    r = run_cli("project", tmp_path / "e.h5", "--labels", "-", "--labels", "-", "-o", tmp_path / "m.tsv",
                input=b"id,label\ne0,Nucleus\n")
    assert r.exit_code == 2, r.stderr
    assert r.stderr == "protrans: error: stdin ('-') can be one input at most: give the others as files\n"
    assert not (tmp_path / "m.tsv").exists()


def test_deeplocs_membrane_u_is_no_label(tmp_path, run_cli):
    """DeepLoc's membrane `U` (unknown) is no label, as docs/project.md says: a blank cell and a
    grey point, not a class `U` (only the slow DeepLoc map checked it)."""
    from protrans_cli.project import UNLABELLED, colouring, project

    x, _ = _clusters(n_per=2)
    ids = [f"P{i}" for i in range(6)]
    _write(tmp_path / "e.h5", x, ids)
    (tmp_path / "l.fasta").write_text("".join(f">{ident} Nucleus-{'U' if n % 2 else 'M'}\nMKV\n"
                                              for n, ident in enumerate(ids)))
    r = run_cli("project", tmp_path / "e.h5", "--labels", tmp_path / "l.fasta")
    assert r.exit_code == 0, r.stderr
    head, rows = _table(r.stdout)
    assert head == ["id", "x", "y", "loc", "membrane"]
    assert [(row["id"], row["loc"], row["membrane"]) for row in rows] == [
        (ident, "Nucleus", "" if n % 2 else "M") for n, ident in enumerate(ids)]
    result = project(tmp_path / "e.h5", None, labels=tmp_path / "l.fasta", colour_by="membrane")
    assert result.labels["membrane"] == ["M", None, "M", None, "M", None]
    legend = colouring(result).legend
    assert [(label, count) for label, _, count in legend] == [("M", 3), ("no label", 3)]
    assert legend[1][1] == UNLABELLED


def test_r_and_pandas_missing_numbers_are_no_label_on_a_colour_scale(tmp_path, run_cli):
    """R's NA (pandas' nan, N/A, NULL) among melting points is no label, as an empty cell is and as
    fit value reads it: it was a class of its own, the scale became one colour a number, and the
    quality line scored neighbours agreeing on the same exact temperature."""
    x, _ = _clusters()
    ids = [f"c{i:02d}" for i in range(len(x))]
    _write(tmp_path / "e.h5", x, ids)
    (tmp_path / "l.csv").write_text("id,tm,family\n" + "".join(
        f"{ident},{['NA', 'nan', 'N/A'][i % 3] if i % 5 == 0 else 40 + i * 1.5},{'NA' if i % 2 else 'kinase'}\n"
        for i, ident in enumerate(ids)))
    r = run_cli("project", tmp_path / "e.h5", "--labels", tmp_path / "l.csv", "--color-by", "tm",
                "-o", tmp_path / "m.tsv")
    assert r.exit_code == 0, r.stderr
    assert "the nearest labelled protein" not in r.stderr  # (a colour scale, as without the NA)
    rows = [line.split("\t") for line in (tmp_path / "m.tsv").read_text().splitlines()]
    tm, family = rows[0].index("tm"), rows[0].index("family")
    assert [row[tm] for row in rows[1:6]] == ["", "41.5", "43.0", "44.5", "46.0"]
    assert {row[family] for row in rows[1:]} == {"NA", "kinase"}  # (words: NA a label like any)


def test_color_by_source_of_one_input_says_it_needs_several(tmp_path, run_cli):
    """--help: --color-by `source` is the input file. Of one input (no source column) it said
    "no such label column (the columns: none: give --labels)", labels that hold no such column
    either; of two, the map is coloured by file."""
    x, _ = _clusters(n_per=4)
    _write(tmp_path / "a.h5", x, [f"r{i}" for i in range(len(x))])
    _write(tmp_path / "b.h5", x, [f"s{i}" for i in range(len(x))])
    r = run_cli("project", tmp_path / "a.h5", "--color-by", "source", "-o", tmp_path / "m.tsv")
    assert r.exit_code == 2 and "--color-by source colours by input file: give two embeddings files or more (one " \
        "here)" in r.stderr, r.stderr
    assert not (tmp_path / "m.tsv").exists()
    r = run_cli("project", tmp_path / "a.h5", tmp_path / "b.h5", "--color-by", "source", "-o", tmp_path / "m.tsv")
    assert r.exit_code == 0 and "the nearest labelled protein has the same source" in r.stderr, r.stderr


def test_a_table_of_more_rows_than_one_write_holds_every_row_once_in_order(tmp_path):
    """write_table writes 4096 rows at a time: 4096 * 2 + 1 rows (a proteome's map) come out whole,
    each once and in order, a block's last row and the next block's first included."""
    from protrans_cli.project import SOURCE, Projection, write_table

    n = 4096 * 2 + 1
    ids = [f"p{i}" for i in range(n)]
    coords = np.stack([np.arange(n), -np.arange(n)], axis=1).astype(np.float64)
    result = Projection(ids=ids, sources=["a.h5"] * n, coords=coords,
                        labels={SOURCE: ["a.h5"] * n, "kind": [None if i % 2 else "odd" for i in range(n)]})
    write_table(result, tmp_path / "m.tsv")
    lines = (tmp_path / "m.tsv").read_text().split("\n")
    assert lines[0] == "id\tsource\tx\ty\tkind" and lines[-1] == ""
    assert lines[1:-1] == [f"p{i}\ta.h5\t{i:.6g}\t{-i:.6g}\t{'' if i % 2 else 'odd'}" for i in range(n)]


def test_map_quality_holds_about_three_slices_of_distances_not_five():
    """map_quality measures a slice of query rows against every protein at a time (128 MiB of
    float64 distances): the expressions' temporaries and argpartition's (rows, N) indices, kept
    by their k columns, held about 4.7 slices (1.2 GB for project on 1,000,000 proteins); in
    place and copied out, about 3, with the same figures."""
    import tracemalloc

    from protrans_cli.project import map_quality

    n = 20_000
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, 8)).astype(np.float32)
    labels = [("AB"[i % 2] if i % 3 else None) for i in range(n)]
    per_slice = (1 << 24) // n
    tracemalloc.start()
    try:
        kept, agreement = map_quality(vectors, vectors[:, :2].astype(np.float64), labels=labels, queries=per_slice)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / (per_slice * n * 8) < 3.5, peak / (per_slice * n * 8)
    assert kept == pytest.approx(0.007875894988066817, abs=1e-15) and agreement == (0.4876325088339223, 0.5, 566)
