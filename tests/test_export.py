"""`protrans export` and `protrans info`: tables and .npz files equal to the arrays h5py reads
from the file (every layout, float16 and float32, a layer of several, a FASTA's order and
residues), and the refusals that leave no output behind."""

from __future__ import annotations

import csv
import io
import json
import os
import shlex
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from protrans_cli.io.h5 import EmbeddingsWriter, escape_key, sequence_checksum

from conftest import heavy_imports_of

AA = "ACDEFGHIKLMNPQRSTVWY"


def _proteins(n=5, seed=0):
    """{id: sequence} with ids a table must quote or escape (a comma, a slash, a quote)."""
    rng = np.random.default_rng(seed)
    names = ["sp|P1|A_HUMAN", "b,comma", "c/slash", 'd"quote', "e"][:n] + [f"x{i}" for i in range(n - 5)]
    return {name: "".join(rng.choice(list(AA), int(rng.integers(1, 9)))) for name in names}


def _write(path, proteins, *, dim=6, dtype=np.float32, layers=None, kinds=("per_residue", "per_protein"),
           layout="grouped", seed=1):
    """An embed-like file of random rows: {id: (per_residue array, per_protein array)} back."""
    rng = np.random.default_rng(seed)
    attrs = {"model": "tiny", "family": "bert"}
    if layers:
        attrs |= {"layers": np.array(layers), "num_hidden_states": 3}
    out = {}
    with EmbeddingsWriter(path, kinds=kinds, layout=layout, attrs=attrs, storage_dtype=np.dtype(dtype).name) as w:
        for ident, seq in proteins.items():
            shape = (len(layers), len(seq), dim) if layers else (len(seq), dim)
            rows = rng.normal(size=shape).astype(dtype)
            mean = rows.astype(np.float32).mean(axis=-2).astype(dtype)
            given = {}
            if "per_residue" in kinds:
                given["per_residue"] = rows
            if "per_protein" in kinds:
                given["per_protein"] = mean
            w.write(ident, ident + " some protein", seq, **given)
            out[ident] = (rows, mean)
    return out


def _table(text: str, sep: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text), delimiter=sep)) if sep == "," else \
        [line.split("\t") for line in text.splitlines()]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_per_protein_tsv_gives_back_the_stored_values(tmp_path, run_cli, dtype):
    proteins = _proteins()
    arrays = _write(tmp_path / "e.h5", proteins, dtype=dtype)
    done = run_cli("export", tmp_path / "e.h5")
    assert done.exit_code == 0, done.stderr
    rows = _table(done.stdout, "\t")
    assert rows[0] == ["id"] + [f"dim_{i}" for i in range(6)]
    # in key order (the escaped ids as bytes): the file's order whatever the layout
    assert [r[0] for r in rows[1:]] == sorted(proteins, key=lambda i: escape_key(i).encode())
    for row in rows[1:]:
        np.testing.assert_array_equal(np.array(row[1:], dtype=np.float64).astype(dtype), arrays[row[0]][1])
    assert "export: 5 proteins (per-protein, 6 dimensions) into stdout" in done.stderr


def test_stdout_is_streamed_not_spooled(tmp_path, run_cli, monkeypatch):
    """`protrans export FILE | head`: the rows go to stdout as they are written, not into a
    TMPDIR spool of the whole table first (the other commands' `-o -`, which print nothing when
    stopped); a stopped export has printed its rows so far, and its source file stays."""
    import protrans_cli.io.files as files
    from protrans_cli import export as export_module

    def no_spool():
        raise AssertionError("export's stdout went through a TMPDIR spool")

    monkeypatch.setattr(files, "_spooled_stdout", no_spool)
    _write(tmp_path / "e.h5", _proteins())
    done = run_cli("export", tmp_path / "e.h5")
    assert done.exit_code == 0, done.stderr
    assert len(_table(done.stdout, "\t")) == 6
    real = export_module._write_table

    def stopped(stream, plan, *args):  # Ctrl-C once the header and rows are out
        real(stream, plan, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "_write_table", stopped)
    done = run_cli("export", tmp_path / "e.h5")
    assert done.exit_code == 130 and done.stdout.startswith("id\tdim_0"), (done.exit_code, done.stderr)


def test_every_layout_exports_the_same_table(tmp_path, run_cli):
    """grouped, flat and stacked files of one set of proteins: one table."""
    proteins = _proteins()
    tables = []
    for layout in ("grouped", "flat", "stacked"):
        _write(tmp_path / f"{layout}.h5", proteins, kinds=("per_protein",), layout=layout)
        done = run_cli("export", tmp_path / f"{layout}.h5", "-o", tmp_path / f"{layout}.csv")
        assert done.exit_code == 0, done.stderr
        tables.append((tmp_path / f"{layout}.csv").read_text())
    assert tables[0] == tables[1] == tables[2]
    rows = _table(tables[0], ",")
    assert {r[0] for r in rows[1:]} == set(proteins)  # the comma and the quote read back by csv


def test_an_id_with_a_slash_is_in_its_keys_order_in_every_layout(tmp_path, run_cli):
    """The order is the escaped ids' (a '/' is '%2F', before '-' and '.'), as a stacked file's rows
    and `info --ids` have it, not the ids' own: a grouped file's table lists the proteins as the
    stacked file of them does."""
    proteins = {"a.b": "MK", "a-b": "MKW", "a/b": "MKV"}
    for layout in ("grouped", "stacked"):
        _write(tmp_path / f"{layout}.h5", proteins, kinds=("per_protein",), layout=layout)
        done = run_cli("export", tmp_path / f"{layout}.h5")
        assert done.exit_code == 0, done.stderr
        assert [r[0] for r in _table(done.stdout, "\t")[1:]] == ["a/b", "a-b", "a.b"], layout
        assert run_cli("info", tmp_path / f"{layout}.h5", "--ids").stdout.split() == ["a/b", "a-b", "a.b"]


@pytest.mark.parametrize("extra", ["a group", "a link to its own group"])
def test_a_group_among_the_proteins_is_passed_over_as_the_other_commands_do(tmp_path, run_cli, extra):
    """A group inside per_protein (another tool's, or a hard link back to the group) is no
    protein: ids(), fit, predict and knn pass over it; export was a TypeError traceback."""
    proteins = _proteins()
    _write(tmp_path / "e.h5", proteins)
    clean = run_cli("export", tmp_path / "e.h5")
    with h5py.File(tmp_path / "e.h5", "a") as f:
        if extra == "a group":
            f["per_protein"].create_group("AAA")
        else:
            f["per_protein"]["loop"] = f["per_protein"]
    for args in ((), ("--format", "esm", "-o", tmp_path / "esm")):
        done = run_cli("export", tmp_path / "e.h5", *args)
        assert done.exit_code == 0, done.stderr
    assert done.stderr.startswith("export: 5 proteins")
    assert run_cli("export", tmp_path / "e.h5").stdout == clean.stdout


def test_a_vector_wider_than_the_files_embedding_dim_is_refused_unread(tmp_path, run_cli):
    """A dataset declaring 10**10 values (a few KB of HDF5) was read whole: 37 GiB, or "out of
    memory" naming no file."""
    _write(tmp_path / "e.h5", _proteins())
    with h5py.File(tmp_path / "e.h5", "a") as f:
        f.attrs["embedding_dim"] = 6  # (what embed records)
        key = sorted(f["per_protein"])[-1]  # (not the first: every protein is checked before it is read)
        attrs = dict(f["per_protein"][key].attrs)
        del f["per_protein"][key]
        f["per_protein"].create_dataset(key, shape=(10**10,), dtype="<f4", chunks=(1024,)).attrs.update(attrs)
    done = run_cli("export", tmp_path / "e.h5", "-o", tmp_path / "out.tsv")
    assert done.exit_code == 1 and "embedding has shape 10000000000, where the file's embedding_dim is 6" in done.stderr
    assert not (tmp_path / "out.tsv").exists()


def test_per_residue_npz(tmp_path, run_cli):
    proteins = _proteins(8)
    arrays = _write(tmp_path / "e.h5", proteins, dtype=np.float16)
    done = run_cli("export", tmp_path / "e.h5", "--per-residue", "-o", tmp_path / "r.npz")
    assert done.exit_code == 0, done.stderr
    with np.load(tmp_path / "r.npz", allow_pickle=False) as z:
        ids, x, offsets, lengths = list(z["ids"]), z["embeddings"], z["offsets"], z["lengths"]
        metadata = json.loads(str(z["metadata"]))
    assert x.dtype == np.float16 and x.shape == (sum(map(len, proteins.values())), 6)
    assert ids == sorted(proteins, key=lambda i: escape_key(i).encode())
    assert list(lengths) == [len(proteins[i]) for i in ids] and offsets[0] == 0 and offsets[-1] == len(x)
    for i, ident in enumerate(ids):
        np.testing.assert_array_equal(x[offsets[i]:offsets[i + 1]], arrays[ident][0])
    assert metadata["model"] == "tiny" and metadata["kind"] == "per_residue"


def test_per_protein_npz_and_a_layer_of_several(tmp_path, run_cli):
    proteins = _proteins()
    arrays = _write(tmp_path / "e.h5", proteins, layers=[-1, -2])
    done = run_cli("export", tmp_path / "e.h5", "--layer", "-2", "-o", tmp_path / "p.npz")
    assert done.exit_code == 0, done.stderr
    with np.load(tmp_path / "p.npz", allow_pickle=False) as z:
        for ident, vector in zip(z["ids"], z["embeddings"]):
            np.testing.assert_array_equal(vector, arrays[str(ident)][1][1])  # -2: the second stored
        assert set(z.files) == {"ids", "embeddings", "metadata"}
        metadata = json.loads(str(z["metadata"]))  # which of the file's layers the embeddings are
        assert metadata["layers"] == [-1, -2] and metadata["layer_index"] == 1 and metadata["layer_axis"] is False
        # (the hidden states they are counted from: -2 of 3 is esm-extract's and transformers' hidden_states[1])
        assert metadata["num_hidden_states"] == 3 and metadata["model"] == "tiny" and metadata["family"] == "bert"
    done = run_cli("export", tmp_path / "e.h5", "--layer", "0", "-o", tmp_path / "q.npz")  # 0 = -3: the embeddings
    assert done.exit_code == 1 and "holds layer(s) -1, -2" in done.stderr
    assert not (tmp_path / "q.npz").exists()


def test_ids_file_orders_selects_and_adds_residues(tmp_path, run_cli):
    proteins = _proteins()
    arrays = _write(tmp_path / "e.h5", proteins)
    chosen = ["e", "sp|P1|A_HUMAN"]
    (tmp_path / "q.fa").write_text("".join(f">{i} x\n{proteins[i].lower()}\n" for i in chosen))
    done = run_cli("export", tmp_path / "e.h5", "--per-residue", "--ids", tmp_path / "q.fa")
    assert done.exit_code == 0, done.stderr
    rows = _table(done.stdout, "\t")
    assert rows[0][:3] == ["id", "position", "residue"]
    expected = [(i, str(p + 1), proteins[i][p]) for i in chosen for p in range(len(proteins[i]))]
    assert [tuple(r[:3]) for r in rows[1:]] == expected
    values = np.array([r[3:] for r in rows[1:]], dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(values, np.concatenate([arrays[i][0] for i in chosen]))
    # a list of ids: first words, # comments (indented too: a first word from '#') and blank lines skipped
    (tmp_path / "ids.txt").write_text("# picked\nc/slash\tlabel\n\n  # then\ne\n")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "ids.txt")
    assert [r[0] for r in _table(done.stdout, "\t")[1:]] == ["c/slash", "e"]


def test_ids_file_on_stdin_with_a_bom_or_headers_alone(tmp_path, run_cli):
    """A gzipped FASTA on stdin (read twice, it "held no FASTA record"), an id list that starts
    with a byte-order mark (its first id had the mark), and `>id` lines without sequences (each
    was "of another sequence"): each is the list it looks like."""
    import gzip

    proteins = _proteins()
    _write(tmp_path / "e.h5", proteins)
    chosen = ["e", "c/slash"]
    fasta = "".join(f">{i} x\n{proteins[i]}\n" for i in chosen).encode()
    for given in (fasta, gzip.compress(fasta), b"\xef\xbb\xbf" + "\r\n".join(chosen).encode() + b"\r\n",
                  "".join(f">{i}\n" for i in chosen).encode()):
        done = run_cli("export", tmp_path / "e.h5", "--ids", "-", input=given)
        assert done.exit_code == 0, done.stderr
        assert [r[0] for r in _table(done.stdout, "\t")[1:]] == chosen


def test_a_latin1_id_list_selects_what_a_latin1_fasta_embedded(tmp_path, run_cli):
    """A FASTA in latin-1 embeds `Prot\xe9ine` under `Prot\xe9ine` (its header read as latin-1); a
    one-id-a-line list of the same bytes selects it, as the FASTA itself does (the list was
    refused: "not UTF-8 text"). A UTF-8 list of the same id selects it too."""
    fasta = ">Prot\xe9ine 37\xb0C\nMKTAYIAK\n>other\nMKV\n"
    (tmp_path / "in.fa").write_bytes(fasta.encode("latin-1"))
    assert run_cli("embed", tmp_path / "in.fa", "-m", "onehot", "-o", tmp_path / "e.h5", "-q").exit_code == 0
    (tmp_path / "latin1.txt").write_bytes("Prot\xe9ine\n".encode("latin-1"))
    (tmp_path / "utf8.txt").write_bytes("Prot\xe9ine\n".encode())
    for name, chosen in (("latin1.txt", ["Prot\xe9ine"]), ("utf8.txt", ["Prot\xe9ine"]),
                         ("in.fa", ["Prot\xe9ine", "other"])):
        done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / name)
        assert done.exit_code == 0, (name, done.stderr)
        assert [r[0] for r in _table(done.stdout, "\t")[1:]] == chosen, name


def test_ids_file_refusals_leave_no_output(tmp_path, run_cli):
    proteins = _proteins()
    _write(tmp_path / "e.h5", proteins)
    (tmp_path / "ids.txt").write_text("e\nnot_there\n")
    out = tmp_path / "o.tsv"
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "ids.txt", "-o", out)
    assert done.exit_code == 1 and "1 protein of the 2 it names is not in" in done.stderr and "not_there" in done.stderr
    assert not out.exists()
    (tmp_path / "twice.txt").write_text("e\ne\n")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "twice.txt", "-o", out)
    assert done.exit_code == 1 and "twice.txt:2: id 'e' is given twice (first at line 1)" in done.stderr, done.stderr
    # (a FASTA's records by their header lines)
    (tmp_path / "twice.fa").write_text(f">e\n{proteins['e']}\n>c/slash\n{proteins['c/slash']}\n>e\n{proteins['e']}\n")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "twice.fa", "-o", out)
    assert done.exit_code == 1 and "twice.fa:5: id 'e' is given twice (first at line 1)" in done.stderr, done.stderr
    (tmp_path / "other.fa").write_text(">e\nMKV" + proteins["e"] + "\n")  # another sequence under the id
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "other.fa", "-o", out)
    assert done.exit_code == 1 and "record 'e'" in done.stderr and "another sequence" in done.stderr
    assert not out.exists()
    # (a header alone after it does not make the FASTA a list of ids: e's sequence is still checked)
    (tmp_path / "other.fa").write_text(">e\nMKV" + proteins["e"] + "\n>c/slash\n")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "other.fa", "-o", out)
    assert done.exit_code == 1 and "record 'e'" in done.stderr and "another sequence" in done.stderr
    assert not out.exists()
    # an id list in latin-1 is read as a FASTA header's id is (it was "not UTF-8 text"): the id
    # the file lacks named in its own spelling
    (tmp_path / "latin1.txt").write_bytes("e\nprot\xe9ine\n".encode("latin-1"))
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "latin1.txt", "-o", out)
    assert done.exit_code == 1 and "1 protein of the 2 it names is not in" in done.stderr, done.stderr
    assert "prot\xe9ine" in done.stderr and not out.exists()
    # an id list that names no id (comments and blank lines alone)
    (tmp_path / "none.txt").write_text("# ids to export\n\n")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "none.txt", "-o", out)
    assert done.exit_code == 1 and "none.txt: holds no id: a FASTA file, or one id a line" in done.stderr
    assert not out.exists()
    # lines that end in CR alone (classic Mac OS): one line, whose first id alone was exported, exit 0
    (tmp_path / "cr.txt").write_bytes(b"e\rc/slash\r")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "cr.txt", "-o", out)
    assert done.exit_code == 1 and "cr.txt:1: a carriage return inside the line: lines that end in CR alone (old " \
        "Mac line endings) are not read" in done.stderr, done.stderr
    assert not out.exists()


def test_a_failure_midway_keeps_an_existing_output(tmp_path, run_cli):
    """Another tool's flat file whose third protein has another width: an error naming it, and the
    output of an earlier export left as it was."""
    with h5py.File(tmp_path / "f.h5", "w") as f:
        for i, dim in enumerate([4, 4, 5, 4]):
            f[f"p{i}"] = np.ones((3, dim), dtype=np.float32)
    out = tmp_path / "o.tsv"
    out.write_text("earlier\n")
    done = run_cli("export", tmp_path / "f.h5", "--per-residue", "-o", out)
    assert done.exit_code == 1 and "record 'p2'" in done.stderr and "4 dimensions" in done.stderr
    assert out.read_text() == "earlier\n"


@pytest.mark.parametrize("arrays, args, message", [
    # bio_embeddings' SeqVec (3, L, D): --layer indexes the axis (it was an IndexError traceback)
    ([np.ones((3, 2, 4))] * 2, ["--layer", "5"], "holds 3 layers on its arrays' first axis"),
    ([np.ones((2, 4))] * 2, ["--layer", "7"], "holds one layer"),  # (it was taken silently)
    # a (D,) vector among (L, D) rows: a TypeError in a table, D rows of garbage in an .npz numpy cannot read
    ([np.ones((2, 4)), np.ones(4)], [], "record 'p1': an array of shape (4,), where the first protein's has 2 axes, "
     "the last of 4 values"),
    ([np.float32(1)], [], "holds an array of shape scalar"),
])
@pytest.mark.parametrize("suffix", ["npz", "tsv"])
def test_another_tools_arrays_that_do_not_fit_are_refused(tmp_path, run_cli, arrays, args, message, suffix):
    with h5py.File(tmp_path / "f.h5", "w") as f:
        for i, array in enumerate(arrays):
            f[f"p{i}"] = np.asarray(array, dtype=np.float32)
    out = tmp_path / f"o.{suffix}"
    done = run_cli("export", tmp_path / "f.h5", *args, "-o", out)
    assert done.exit_code == 1 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not out.exists()


def test_layer_of_another_tools_file_indexes_its_layer_axis_to_its_ends(tmp_path, run_cli):
    """In a file that records no layer numbers (bio_embeddings' SeqVec, (3, L, D)), --layer
    indexes the layer axis from -3 to 2, as numpy indexes it, and 3 or -4 is refused (3 was an
    IndexError traceback); a file of (L, D) rows holds one layer, which --layer 0 and -1 both name."""
    rows = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    with h5py.File(tmp_path / "seqvec.h5", "w") as f:
        f["p"] = rows
    with h5py.File(tmp_path / "flat.h5", "w") as f:
        f["p"] = rows[0]
    for layer in (-3, -1, 0, 2):
        done = run_cli("export", tmp_path / "seqvec.h5", "--per-residue", "--layer", str(layer))
        assert done.exit_code == 0, done.stderr
        values = np.array([r[2:] for r in _table(done.stdout, "\t")[1:]], dtype=np.float32)
        np.testing.assert_array_equal(values, rows[layer])
    for layer in (3, -4):
        done = run_cli("export", tmp_path / "seqvec.h5", "--per-residue", "--layer", str(layer))
        assert done.exit_code == 1 and "Traceback" not in done.stderr, done.stderr
        assert f"holds 3 layers on its arrays' first axis (the file records no layer numbers: --layer indexes " \
               f"that axis, -3 to 2), not layer {layer}" in done.stderr, done.stderr
    for layer in ("0", "-1"):
        done = run_cli("export", tmp_path / "flat.h5", "--per-residue", "--layer", layer)
        assert done.exit_code == 0, done.stderr
        np.testing.assert_array_equal(np.array([r[2:] for r in _table(done.stdout, "\t")[1:]], dtype=np.float32),
                                      rows[0])


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped exception, on purpose
@pytest.mark.parametrize("suffix", ["npz", "tsv"])
@pytest.mark.parametrize("at", ["e", "the last"])
def test_a_ctrl_c_python_dropped_stops_the_export(tmp_path, monkeypatch, capsys, suffix, at):
    """Ctrl-C while h5py dropped an object (a weakref callback: "Exception ignored in ...") was
    lost: the export went on to the end, committed its output and exited 130. Dropped while the
    last protein is read, the check made before each protein cannot see it: the one made before
    the output is committed does (exit 130, no output, no temporary)."""
    import signal
    import weakref

    import protrans_cli.cli as cli_module
    import protrans_cli.export as export_module

    proteins = _proteins()
    _write(tmp_path / "e.h5", proteins)
    array = export_module._Plan.array
    read = []

    def dropped(self, ident):
        read.append(ident)
        if ident == "e" if at == "e" else len(read) == len(proteins):
            class Thing:
                pass

            thing = Thing()
            ref = weakref.ref(thing, lambda _: signal.raise_signal(signal.SIGINT))
            del thing  # (the handler raises inside the callback: dropped)
            assert ref() is None  # (its callback ran)
        return array(self, ident)

    monkeypatch.setattr(export_module._Plan, "array", dropped)
    out = tmp_path / f"o.{suffix}"
    with pytest.raises(SystemExit) as caught:
        cli_module.main(["export", str(tmp_path / "e.h5"), "--per-residue", "-o", str(out)])
    assert caught.value.code == 130 and not out.exists() and (at == "e" or len(read) == len(proteins))
    assert capsys.readouterr().err.strip().splitlines()[-1] == "protrans: error: interrupted"
    assert [p.name for p in tmp_path.iterdir()] == ["e.h5"]  # no temporary left


def test_prottrans_keys_that_are_header_lines_with_a_tab(tmp_path, run_cli):
    """The ProtTrans script keys a protein by its whole header line: one with a tab was listed
    by its line (info --ids) and then not found ("no per_protein embedding for this id")."""
    headers = ["sp|P1|A_HUMAN Alpha OS=Homo", "tr|Q2|B Beta\tfragment", "c 100%41"]
    with h5py.File(tmp_path / "pt.h5", "w") as f:
        for i, header in enumerate(headers):
            f[header] = np.full(3, i, dtype=np.float32)
    done = run_cli("export", tmp_path / "pt.h5", "-o", tmp_path / "pt.csv")
    assert done.exit_code == 0, done.stderr
    rows = _table((tmp_path / "pt.csv").read_text(), ",")[1:]
    assert {(r[0], float(r[1])) for r in rows} == {("sp|P1|A_HUMAN Alpha OS=Homo", 0), ("tr|Q2|B Beta\tfragment", 1),
                                                   ("c 100A", 2)}  # (the key unescaped, as for embed's keys)


def test_ids_of_the_fasta_find_the_prottrans_scripts_header_line_keys(tmp_path, run_cli):
    """The ProtTrans script keys a protein by its whole header line; the FASTA it embedded names
    it by its first word, which finds it in fit, predict and EmbeddingsReader.get. `export --ids`
    of that FASTA refused every protein ("2 proteins of the 2 it names are not in pt.h5")."""
    headers = {"sp|P1|A_HUMAN Alpha OS=Homo": "MKV", "tr|Q2|B_HUMAN Beta": "MKVLA"}
    with h5py.File(tmp_path / "pt.h5", "w") as f:
        for i, (header, seq) in enumerate(headers.items()):
            f[header] = np.full((len(seq), 2), i, dtype=np.float32)
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">{h}\n{s}\n" for h, s in reversed(headers.items())))
    done = run_cli("export", tmp_path / "pt.h5", "--per-residue", "--ids", fasta)
    assert done.exit_code == 0, done.stderr
    assert [tuple(r[:4]) for r in _table(done.stdout, "\t")[1:]] == [
        ("tr|Q2|B_HUMAN", str(i), letter, "1") for i, letter in enumerate("MKVLA", 1)] + [
        ("sp|P1|A_HUMAN", str(i), letter, "0") for i, letter in enumerate("MKV", 1)]
    (tmp_path / "ids.txt").write_text("sp|P1|A_HUMAN\nnone\n")
    done = run_cli("export", tmp_path / "pt.h5", "--ids", tmp_path / "ids.txt")  # (an id it lacks: as before)
    assert done.exit_code == 1 and "1 protein of the 2 it names is not in" in done.stderr and "(first: none)" in done.stderr


def test_ids_the_prottrans_script_rewrote_are_named_as_such(tmp_path, run_cli):
    """The ProtTrans script writes '.' and '/' in ids as '_' (NP_000509.1 is the key NP_000509_1):
    `export --ids` of the FASTA's ids said only "not in" the file; fit says why, and now export
    does (the same for an id differing in case, and a UniProt id's accession)."""
    with h5py.File(tmp_path / "pt.h5", "w") as f:
        for key in ("NP_000509_1", "WP_1_2", "Abc", "sp|P69905|HBA_HUMAN"):
            f[key] = np.zeros(2, dtype=np.float32)
    (tmp_path / "ids.txt").write_text("NP_000509.1\nWP_1/2\nabc\nP69905\nnone\n")
    done = run_cli("export", tmp_path / "pt.h5", "--ids", tmp_path / "ids.txt")
    assert done.exit_code == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert ("5 proteins of the 5 it names are not in" in done.stderr
            and "; 1 of them equal a stored id but for case or Unicode normalisation (given 'abc', stored 'Abc')"
            in done.stderr
            and "; 1 of them are the accession of a stored UniProt id (given 'P69905', stored 'sp|P69905|HBA_HUMAN')"
            in done.stderr
            and "; 2 of them equal a stored id with '.' and '/' written '_' (as ProtTrans's embedding script writes "
                "its keys) (given 'NP_000509.1', stored 'NP_000509_1')" in done.stderr), done.stderr


@pytest.mark.parametrize("layout", ["grouped", "flat", "stacked"])
def test_a_file_whose_every_protein_failed_exports_no_row(tmp_path, run_cli, layout):
    """Every protein skipped as too long: a header and empty arrays in every layout (grouped and
    flat files were refused, "holds no per_protein embeddings", where a stacked one was not)."""
    (tmp_path / "a.fa").write_text(">a\nMKVLA\n>b\nMKVLAW\n")
    kind = ["--per-protein"] if layout == "flat" else []
    done = run_cli("embed", tmp_path / "a.fa", "-m", "onehot", "--max-length", "3", "--long-policy", "skip",
                   "--layout", layout, *kind, "-o", tmp_path / "e.h5", "-q")
    assert done.exit_code == 0, done.stderr
    done = run_cli("export", tmp_path / "e.h5")
    assert done.exit_code == 0, done.stderr
    assert done.stdout == "\t".join(["id"] + [f"dim_{i}" for i in range(21)]) + "\n"
    assert run_cli("export", tmp_path / "e.h5", "-o", tmp_path / "e.npz").exit_code == 0
    with np.load(tmp_path / "e.npz", allow_pickle=False) as z:
        assert z["ids"].shape == (0,) and z["embeddings"].shape == (0, 21) and z["embeddings"].dtype == np.float32


def test_residue_column_of_a_truncated_protein_and_of_a_file_without_checksums(tmp_path, run_cli):
    """A protein embed truncated is its sequence's first residues; rows of a file without checksums
    are not named after a longer sequence's first residues (they were, silently)."""
    (tmp_path / "a.fa").write_text(">a\nMKVLA\n>b\nWC\n")
    done = run_cli("embed", tmp_path / "a.fa", "-m", "onehot", "--max-length", "3", "--long-policy", "truncate",
                   "-o", tmp_path / "e.h5", "-q")
    assert done.exit_code == 0, done.stderr
    done = run_cli("export", tmp_path / "e.h5", "--per-residue", "--ids", tmp_path / "a.fa")
    assert done.exit_code == 0, done.stderr
    assert [tuple(r[:3]) for r in _table(done.stdout, "\t")[1:]] == [
        ("a", "1", "M"), ("a", "2", "K"), ("a", "3", "V"), ("b", "1", "W"), ("b", "2", "C")]
    with h5py.File(tmp_path / "f.h5", "w") as f:  # another tool's: no checksum, no truncated_from
        f["a"] = np.ones((3, 4), dtype=np.float32)
        f["b"] = np.ones((2, 4), dtype=np.float32)
    done = run_cli("export", tmp_path / "f.h5", "--per-residue", "--ids", tmp_path / "a.fa")
    assert done.exit_code == 1 and "record 'a': 3 residue rows, where the FASTA's sequence has 5" in done.stderr


def test_residue_column_of_more_rows_than_the_fastas_residues_is_refused(tmp_path, run_cli):
    """Another tool's file (no checksum) holding more rows for a protein than the FASTA's sequence
    has residues: refused naming both counts and the record, no row named after a residue that
    is not there (and no IndexError), nothing written."""
    (tmp_path / "a.fa").write_text(">a\nMKV\n>b\nWC\n")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["a"] = np.ones((3, 4), dtype=np.float32)
        f["b"] = np.ones((3, 4), dtype=np.float32)
    done = run_cli("export", tmp_path / "f.h5", "--per-residue", "--ids", tmp_path / "a.fa", "-o", tmp_path / "t.tsv")
    assert done.exit_code == 1 and "Traceback" not in done.stderr, done.stderr
    assert "record 'b': 3 residue rows, where the FASTA's sequence has 2 residues" in done.stderr, done.stderr
    assert not (tmp_path / "t.tsv").exists()


def test_residue_rows_only_pool_to_their_mean(tmp_path, run_cli):
    proteins = _proteins()
    arrays = _write(tmp_path / "e.h5", proteins, kinds=("per_residue",))
    done = run_cli("export", tmp_path / "e.h5", "--per-protein")
    assert done.exit_code == 0, done.stderr
    for row in _table(done.stdout, "\t")[1:]:
        np.testing.assert_allclose(np.array(row[1:], dtype=float), arrays[row[0]][0].mean(axis=0), rtol=1e-6)
    assert "the mean of its residues" in done.stderr
    _write(tmp_path / "p.h5", proteins, kinds=("per_protein",))
    done = run_cli("export", tmp_path / "p.h5", "--per-residue")
    assert done.exit_code == 1 and "per-protein vectors only" in done.stderr
    # a protein without residue rows has no mean: refused naming it, no output
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["p0"], f["p1"] = np.ones((2, 4), dtype=np.float32), np.ones((0, 4), dtype=np.float32)
    done = run_cli("export", tmp_path / "f.h5", "--per-protein", "-o", tmp_path / "o.tsv")
    assert done.exit_code == 1 and "f.h5, record 'p1': has no residue rows: no mean to export" in done.stderr
    assert not (tmp_path / "o.tsv").exists()


def test_a_float16_files_residue_rows_pool_to_their_exact_mean_in_float32(tmp_path, run_cli):
    """The mean of float16 rows is taken in float64 and written as float32 (numpy's own float16
    mean rounds to float16: about 3 significant digits)."""
    proteins = {f"p{i}": "A" * (50 + 37 * i) for i in range(4)}
    arrays = _write(tmp_path / "e.h5", proteins, kinds=("per_residue",), dtype=np.float16)
    done = run_cli("export", tmp_path / "e.h5", "--per-protein", "-o", tmp_path / "m.npz")
    assert done.exit_code == 0, done.stderr
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert z["embeddings"].dtype == np.float32
        for ident, vector in zip(z["ids"], z["embeddings"]):
            exact = arrays[str(ident)][0].astype(np.float64).mean(axis=0).astype(np.float32)
            np.testing.assert_array_equal(vector, exact)


def test_a_mean_over_rows_that_are_not_finite_is_said_in_one_line(tmp_path, run_cli):
    """Rows of inf and -inf (another writer's file; embed records such proteins as failed) pool to
    NaN: written as such, said in one warning naming the protein, without numpy's two-line
    RuntimeWarning (found by the fuzzed export property)."""
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["ok"] = np.ones((2, 2), dtype=np.float32)
        f["bad"] = np.array([[0, -np.inf], [0, np.inf]], dtype=np.float32)
    for args in (["--per-protein"], ["--format", "esm", "-o", tmp_path / "esm"]):
        done = run_cli("export", tmp_path / "f.h5", *args)
        assert done.exit_code == 0, done.stderr
        assert "RuntimeWarning" not in done.stderr
        assert "1 protein with residue rows that are not finite (inf or NaN), so their mean is not either " \
               "(first: bad)" in done.stderr
    assert _table(run_cli("export", tmp_path / "f.h5", "--per-protein").stdout, "\t")[1] == ["bad", "0", "nan"]


@pytest.mark.parametrize("args, message", [
    (["--format", "npz"], "an .npz is written to a file"),
    (["-o", "{tmp}/x.npz.gz"], "leave out .gz"),
    (["-o", "{tmp}/x.dat"], "name the file .tsv, .csv or .npz"),
    (["-o", "{tmp}/x.npz", "--digits", "4"], "an .npz keeps the stored values"),
    (["--digits", "0"], "--digits must be between 1 and 17, got 0"),
    (["--format", "tsv", "-o", "{tmp}/e.h5"], "is also an input"),
    # (both flags: the last given was written, the other dropped without a word; esm-extract's
    # `--include mean per_tok` read as both, a folder of means alone)
    (["--per-residue", "--per-protein"], "export writes one kind"),
    (["--format", "esm", "-o", "{tmp}/esm", "--per-protein", "--per-residue"], "writes both without either flag"),
])
def test_usage_errors(tmp_path, run_cli, args, message):
    _write(tmp_path / "e.h5", _proteins())
    before = (tmp_path / "e.h5").read_bytes()
    done = run_cli("export", tmp_path / "e.h5", *[a.format(tmp=tmp_path) for a in args])
    assert done.exit_code == 2 and message in done.stderr, done.stderr
    assert (tmp_path / "e.h5").read_bytes() == before


@pytest.mark.parametrize("name", ["out.tsv", "out.npz"])
def test_a_link_of_the_users_own_is_written_where_it_leads(tmp_path, run_cli, name):
    """-o a link (onto scratch storage) writes its target, as predict's -o and the shell's `>`
    do, and as --format esm follows a link to a folder: renamed over, the link became a file
    beside it and its target was never written."""
    _write(tmp_path / "e.h5", _proteins())
    (tmp_path / "scratch").mkdir()
    target = tmp_path / "scratch" / name
    target.write_bytes(b"old")
    (tmp_path / name).symlink_to(target)
    done = run_cli("export", tmp_path / "e.h5", "-o", tmp_path / name)
    assert done.exit_code == 0, done.stderr
    assert (tmp_path / name).is_symlink() and target.read_bytes() != b"old"
    if name.endswith(".npz"):
        with np.load(target, allow_pickle=False) as z:
            assert sorted(z["ids"]) == sorted(_proteins())
    else:
        assert target.read_text().startswith("id\tdim_0")


def test_digits_and_compression(tmp_path, run_cli):
    import gzip

    _write(tmp_path / "e.h5", _proteins())
    done = run_cli("export", tmp_path / "e.h5", "--digits", "3", "-o", tmp_path / "e.tsv.gz")
    assert done.exit_code == 0, done.stderr
    rows = _table(gzip.decompress((tmp_path / "e.tsv.gz").read_bytes()).decode(), "\t")
    assert all(len(v.lstrip("-").replace(".", "").lstrip("0").split("e")[0]) <= 3 for r in rows[1:] for v in r[1:])


@pytest.mark.parametrize("name", ["e.txt", "E.TXT.bz2", "e.tsv.zstd"])
def test_a_txt_name_is_the_tsv_table(tmp_path, run_cli, name):
    """`-o NAME.txt` (compressed or not, in either case) is the TSV stdout gets, as the docs
    promise (`.tsv`/`.txt`); `.zstd` as every output reads it (was "name the file .tsv")."""
    import bz2

    import zstandard

    _write(tmp_path / "e.h5", _proteins())
    shown = run_cli("export", tmp_path / "e.h5")
    done = run_cli("export", tmp_path / "e.h5", "-o", tmp_path / name)
    assert done.exit_code == 0, done.stderr
    data = (tmp_path / name).read_bytes()
    text = (bz2.decompress(data) if name.endswith(".bz2") else zstandard.ZstdDecompressor().decompressobj()
            .decompress(data) if name.endswith(".zstd") else data).decode()
    assert text.startswith("id\tdim_0") and text == shown.stdout


@pytest.mark.parametrize("digits, code", [(1, 0), (17, 0), (18, 2)])
def test_digits_from_1_to_17(tmp_path, run_cli, digits, code):
    """--digits takes 1 to 17 (17: every float64 back exactly); 18 is a usage error."""
    _write(tmp_path / "e.h5", _proteins())
    done = run_cli("export", tmp_path / "e.h5", "--digits", str(digits))
    assert done.exit_code == code, done.stderr
    if code == 0:
        values = [v for row in _table(done.stdout, "\t")[1:] for v in row[1:]]
        assert values and all(len(v.lstrip("-").replace(".", "").lstrip("0").split("e")[0]) <= digits for v in values)
    else:
        assert f"--digits must be between 1 and 17, got {digits}" in done.stderr


def test_info(tmp_path, run_cli):
    proteins = _proteins()
    _write(tmp_path / "e.h5", proteins)
    with h5py.File(tmp_path / "e.h5", "a") as f:
        f.attrs["failed"] = json.dumps({"big": "out of memory"})
    done = run_cli("info", tmp_path / "e.h5", "--json", "--residues")
    assert done.exit_code == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["proteins"] == {"per_residue": 5, "per_protein": 5} and facts["dim"] == 6
    assert facts["layout"] == "grouped" and facts["stored_dtype"] == "float32" and facts["model"] == "tiny"
    assert facts["failed"] == {"big": "out of memory"} and facts["status"] == "finished"
    lengths = [len(s) for s in proteins.values()]
    assert facts["residues"]["total"] == sum(lengths) and facts["residues"]["longest"] == max(lengths)
    text = run_cli("info", tmp_path / "e.h5").stdout
    assert "proteins:" in text and "5 per-residue, 5 per-protein" in text and "failed:" in text and "big" in text
    ids = run_cli("info", tmp_path / "e.h5", "--ids").stdout.splitlines()
    assert ids == sorted(proteins, key=lambda i: escape_key(i).encode())


@pytest.mark.parametrize("layout", ["grouped", "stacked"])
@pytest.mark.parametrize("policy, counts", [("truncate", (8, 2, 0)), ("chunk", (17, 0, 2))])
def test_info_residues_counts_truncated_and_chunked_proteins(tmp_path, run_cli, layout, policy, counts):
    """`info --residues` counts the proteins embed truncated or chunked (2 of 3 longer than 4
    residues), and their residues as embedded (a truncated protein's kept ones), in every layout."""
    (tmp_path / "a.fa").write_text(">a\nMKVLA\n>b\nWC\n>c\nMKVLAWWWWW\n")
    limit = ["3"] if policy == "truncate" else ["4", "--chunk-overlap", "1"]
    done = run_cli("embed", tmp_path / "a.fa", "-m", "onehot", "--max-length", *limit, "--long-policy", policy,
                   "--layout", layout, "-o", tmp_path / "e.h5", "-q")
    assert done.exit_code == 0, done.stderr
    done = run_cli("info", tmp_path / "e.h5", "--json", "--residues")
    assert done.exit_code == 0, done.stderr
    residues = json.loads(done.stdout)["residues"]
    assert (residues["total"], residues["truncated"], residues["chunked"]) == counts and residues["counted"] == 3


def test_info_of_attributes_of_another_type_is_no_traceback(tmp_path, run_cli):
    """A `kinds` array was a numpy traceback in info and export ("truth value ... ambiguous"), a
    text `max_length` one in info ("Cannot specify ',' with 's'")."""
    _write(tmp_path / "e.h5", _proteins())
    with h5py.File(tmp_path / "e.h5", "a") as f:
        f.attrs["max_length"], f.attrs["long_policy"] = "x", "error"
    done = run_cli("info", tmp_path / "e.h5")
    assert done.exit_code == 0 and "long proteins: error beyond x residues" in done.stdout, done.stderr
    with h5py.File(tmp_path / "e.h5", "a") as f:
        f.attrs["kinds"] = np.arange(2)
    for args in (("info",), ("export",)):  # (the groups the file holds say its kinds)
        done = run_cli(*args, tmp_path / "e.h5")
        assert done.exit_code == 0, done.stderr


def test_a_scalar_as_the_first_dataset_is_one_line_naming_it(tmp_path, run_cli):
    """Another tool's flat file whose first dataset is a scalar (metadata among the vectors): the
    file's width was read from it, an IndexError traceback ("tuple index out of range") in info
    and in predict (EmbeddingsReader.dim)."""
    from protrans_cli.errors import InputError
    from protrans_cli.io.h5 import EmbeddingsReader

    with h5py.File(tmp_path / "e.h5", "w") as f:
        f["a_version"] = 3.0
        for i in range(3):
            f[f"p{i}"] = np.ones(8, np.float32)
    expected = (f"{tmp_path / 'e.h5'}, record 'a_version': holds a scalar where embeddings are read, so the file's "
                "width is unknown (a damaged file, or not embeddings: leave it out of the file)")
    done = run_cli("info", tmp_path / "e.h5")
    assert done.exit_code == 1 and done.stderr.strip().splitlines()[-1] == f"protrans: error: {expected}", done.stderr
    with EmbeddingsReader(tmp_path / "e.h5") as reader, pytest.raises(InputError) as caught:
        reader.dim()
    assert caught.value.format() == expected


def test_info_text_of_embeds_outputs_says_layers_model_dtypes_pooling_runs_and_residues(tmp_path, run_cli):
    """What `info` tells a person of an embed output (two layers, resumed once), of a stacked file
    with --residues, of one with a later run's .partial beside it, and of another tool's layered
    arrays: the lines as printed."""
    model = Path(__file__).parent / "data" / "esm_reference"
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMAAG\n")
    out = tmp_path / "e.h5"
    args = ("embed", fasta, "-m", model, "-o", out, "--layer", "-1", "--layer", "-2", "--per-residue", "--per-protein")
    assert run_cli(*args).exit_code == 0
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMAAG\n>c\nMKV\n")
    assert run_cli(*args, "--resume").exit_code == 0
    done = run_cli("info", out)
    assert done.exit_code == 0, done.stderr
    lines = dict(line.split(":", 1) for line in done.stdout.splitlines())
    lines = {k: v.strip() for k, v in lines.items()}
    assert lines["status"] == "finished" and lines["proteins"] == "3 per-residue, 3 per-protein"
    assert lines["layers"] == "-1, -2 (of 3 hidden states; -1 the last)"
    assert lines["model"] == f"{model} (family esm)" and lines["dimension"] == "8"
    assert lines["dtype"] == "computed in float32 on cpu, stored as float32"
    assert lines["pooling"].startswith("mean over residue tokens") and lines["long proteins"] == "error (no limit)"
    assert lines["written with"].startswith("protrans ") and lines["written with"].endswith("(2 runs; the last:)")
    assert lines["command"] == shlex.join(["protrans", *map(str, args), "--resume"])  # the last run's
    (tmp_path / "e.h5.partial").write_bytes(b"")
    assert "finished; " + str(out) + ".partial beside it is a later run's" in run_cli("info", out).stdout
    stacked = tmp_path / "s.h5"
    assert run_cli("embed", fasta, "-m", model, "-o", stacked, "--layout", "stacked", "--per-protein").exit_code == 0
    done = run_cli("info", stacked, "--residues")
    assert done.exit_code == 0, done.stderr
    assert "residues:      17 in 3 proteins (mean 5.7, 3 to 10); truncated 0, chunked 0" in done.stdout
    with h5py.File(tmp_path / "seqvec.h5", "w") as f:  # (3, L, D): SeqVec's layers, no attributes
        f["p0"] = np.zeros((3, 5, 4), dtype=np.float32)
    done = run_cli("info", tmp_path / "seqvec.h5", "--residues")
    assert "layers:     3 stored" in done.stdout and "dimension:  4" in done.stdout
    # (one protein: "5 in 1 protein", where it said "1 proteins")
    assert "residues:   5 in 1 protein (mean 5.0, 5 to 5)" in done.stdout
    with h5py.File(tmp_path / "vectors.h5", "w") as f:  # per-protein vectors, no lengths anywhere
        f["p0"] = f["p1"] = np.zeros(4, dtype=np.float32)
    done = run_cli("info", tmp_path / "vectors.h5", "--residues")
    assert done.exit_code == 0 and "residues:   no lengths recorded" in done.stdout


def test_info_of_a_partial_a_stacked_and_another_tools_file(tmp_path, run_cli):
    proteins = _proteins()
    _write(tmp_path / "s.h5", proteins, kinds=("per_protein",), layout="stacked")
    with h5py.File(tmp_path / "bio.h5", "w") as f:  # bio_embeddings: md5 keys, the id in original_id
        for ident, seq in proteins.items():
            f[sequence_checksum(seq).split(":")[1]] = np.zeros(4, dtype=np.float32)
            f[sequence_checksum(seq).split(":")[1]].attrs["original_id"] = ident
    (tmp_path / "s.h5").rename(tmp_path / "t.h5.partial")
    done = run_cli("info", tmp_path / "t.h5.partial", tmp_path / "bio.h5", "--json")
    assert done.exit_code == 0, done.stderr
    partial, bio = map(json.loads, done.stdout.splitlines())
    assert partial["status"].startswith("unfinished") and partial["layout"] == "stacked"
    assert bio["written_by"].startswith("another tool") and bio["proteins"] == {"per_protein": 5} and bio["dim"] == 4
    assert run_cli("info", tmp_path / "bio.h5", "--ids").stdout.splitlines() == sorted(proteins, key=lambda i: escape_key(i).encode())
    done = run_cli("info", tmp_path / "missing.h5")
    assert done.exit_code == 1 and "no such file" in done.stderr


def test_info_of_a_running_embeds_partial_reads_its_ledger(tmp_path, run_cli):
    """`protrans info out.h5.partial` while embed writes it was refused (HDF5's lock), so an
    hours-long run's progress could not be looked up; its ledger says how many proteins are done."""
    from conftest import another_process
    from protrans_cli.io.h5 import LEDGER_MAGIC

    partial = tmp_path / "out.shard-001-of-002.partial"
    (tmp_path / (partial.name + ".ledger")).write_bytes(LEDGER_MAGIC + b"\x01" * 24 * 1234 + b"\x02" * 7)
    with another_process(f"import h5py\nf = h5py.File({str(partial)!r}, 'w'); f.flush()"):
        done = run_cli("info", partial)
        assert done.exit_code == 0, done.stderr
        assert "status:     being written by a running protrans embed (it holds the file's lock): read " \
               f"{tmp_path / 'out'} once the run ends" in done.stdout
        assert "proteins:   1,234 complete so far (from its ledger)" in done.stdout
        assert json.loads(run_cli("info", partial, "--json").stdout)["proteins_done"] == 1234
        busy = run_cli("info", partial, "--residues")  # (lengths cannot be read while it is written)
        assert busy.exit_code == 1 and "another process has it open for writing" in busy.stderr
    (tmp_path / (partial.name + ".ledger")).unlink()
    with another_process(f"import h5py\nf = h5py.File({str(partial)!r}, 'a'); f.flush()"):
        other = run_cli("info", partial)  # no ledger: not embed's run; as before
        assert other.exit_code == 1 and "another process has it open for writing" in other.stderr


def test_info_of_a_partial_with_a_named_pipe_for_its_ledger_never_opens_it(tmp_path):
    """A named pipe called OUTPUT.partial.ledger (a sweep's leftover) hung `protrans info
    OUTPUT.partial` for ever, a running run's or a stopped one's: the ledger, read for the
    progress count, was opened first (an open of a named pipe waits for a writer). It is no
    ledger now: a stopped run's file is described as any other, a running one's lock said."""
    import subprocess

    from conftest import another_process

    partial = tmp_path / "out.h5.partial"
    _write(partial, _proteins())
    os.mkfifo(tmp_path / "out.h5.partial.ledger")

    def info():  # (a process of its own, with a timeout: a hang fails the test rather than blocking it)
        return subprocess.run([sys.executable, "-m", "protrans_cli", "info", str(partial)], capture_output=True,
                              text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})

    stopped = info()
    assert stopped.returncode == 0 and "status:     unfinished: a run is writing it or was stopped" in stopped.stdout, \
        stopped.stderr
    with another_process(f"import h5py\nf = h5py.File({str(partial)!r}, 'a'); f.flush()"):
        running = info()
    assert running.returncode == 1 and running.stderr == (
        f"protrans: error: {partial}: another process has it open for writing (HDF5's file lock); protrans embed "
        "writes OUTPUT.partial and renames it OUTPUT once the run ends: read that file when it is done\n"), \
        running.stderr
    assert (tmp_path / "out.h5.partial.ledger").is_fifo()


@pytest.mark.parametrize("stdout, message", [
    (None, "standard output is closed: info writes there"),  # `>&-`: an AttributeError traceback
    ("/dev/full", "standard output: cannot write: No space left on device"),  # named nothing
])
def test_info_to_a_closed_or_full_stdout_is_one_line(tmp_path, stdout, message):
    import os
    import subprocess
    import sys

    if stdout and not os.path.exists(stdout):
        pytest.skip(f"needs {stdout}")
    _write(tmp_path / "e.h5", _proteins())
    with open(stdout or os.devnull, "wb") as out:
        done = subprocess.run([sys.executable, "-m", "protrans_cli", "info", str(tmp_path / "e.h5")], stdout=out,
                              stderr=subprocess.PIPE, text=True, preexec_fn=None if stdout else lambda: os.close(1))
    assert done.returncode == 1 and done.stderr == f"protrans: error: {message}\n", done.stderr


def test_info_of_a_contacts_file(tmp_path, run_cli):
    with EmbeddingsWriter(tmp_path / "c.h5", kinds=("contacts",), attrs={"model": "esm2_t6_8M_UR50D"},
                          storage_dtype="float16") as w:
        w.write("p", "p", "MKV", contacts=np.eye(3, dtype=np.float16))
    facts = json.loads(run_cli("info", tmp_path / "c.h5", "--json").stdout)
    assert facts["layout"] == "contacts" and facts["proteins"] == {"contacts": 1} and facts["stored_dtype"] == "float16"
    assert facts["model"] == "esm2_t6_8M_UR50D" and facts["written_by"] == "protrans contacts"
    assert run_cli("info", tmp_path / "c.h5", "--ids").stdout == "p\n"
    done = run_cli("info", tmp_path / "c.h5", "--residues")
    assert done.exit_code == 2 and "counts an embeddings file's residues" in done.stderr
    done = run_cli("export", tmp_path / "c.h5", "-o", tmp_path / "c.tsv")
    assert done.exit_code == 1 and "protrans contacts" in done.stderr and not (tmp_path / "c.tsv").exists()


def test_info_of_a_probabilities_file(tmp_path, run_cli):
    """predict --probabilities' file (no embeddings: a group per output) is described as such,
    not as another tool's flat file of no protein."""
    with h5py.File(tmp_path / "p.h5", "w") as f:  # as heads/predict.py writes it
        f.attrs["task"] = "ss3+ss8"
        f.attrs["classes_ss3"], f.attrs["classes_ss8"] = "HEC", "HGIEBTSC"
        for output, width in (("ss3", 3), ("ss8", 8)):
            group = f.create_group(output)
            for ident in ("a/1", "b"):
                group.create_dataset(escape_key(ident), data=np.full((4, width), 1 / width, dtype=np.float32))
                group[escape_key(ident)].attrs["id"] = ident
    facts = json.loads(run_cli("info", tmp_path / "p.h5", "--json").stdout)
    assert facts["layout"] == "probabilities" and facts["proteins"] == {"ss3": 2, "ss8": 2}
    assert facts["classes"] == {"ss3": "HEC", "ss8": "HGIEBTSC"} and facts["task"] == "ss3+ss8"
    assert "classes:" in run_cli("info", tmp_path / "p.h5").stdout
    assert run_cli("info", tmp_path / "p.h5", "--ids").stdout.splitlines() == ["a/1", "b"]


def test_export_of_a_partial_file_warns(tmp_path, run_cli):
    _write(tmp_path / "e.h5.partial", _proteins(), kinds=("per_protein",))
    done = run_cli("export", tmp_path / "e.h5.partial", "-o", tmp_path / "e.tsv")
    assert done.exit_code == 0 and "unfinished run's file" in done.stderr


def test_export_and_info_import_no_torch(tmp_path):
    _write(tmp_path / "e.h5", _proteins())
    done = heavy_imports_of([["export", str(tmp_path / "e.h5"), "-o", str(tmp_path / "e.npz"), "-q"],
                             ["info", str(tmp_path / "e.h5"), "--residues"]], ("torch", "transformers"))
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_ecoli_proteome_residues_line_up_with_the_fasta(shared_data, tmp_path, run_cli):
    """The E. coli proteome embedded one-hot: every exported residue row's one-hot position is the
    letter of the residue column the FASTA gives (rare residues as X), in the FASTA's order, and
    the .npz's offsets are the sequences' lengths."""
    from protrans_cli.embedders import ONEHOT_ALPHABET
    from protrans_cli.io.fasta import read_fasta
    from protrans_cli.residues import normalise

    fasta = shared_data / "proteomes" / "UP000000625_83333.fasta"
    assert run_cli("embed", fasta, "-m", "onehot", "--per-residue", "-o", tmp_path / "e.h5", "-q").exit_code == 0
    done = run_cli("export", tmp_path / "e.h5", "--per-residue", "--ids", fasta, "-o", tmp_path / "e.npz")
    assert done.exit_code == 0, done.stderr
    records = list(read_fasta(fasta))
    with np.load(tmp_path / "e.npz", allow_pickle=False) as z:
        assert list(z["ids"]) == [r.id for r in records]
        sequences = [normalise(r.sequence) for r in records]
        assert list(z["lengths"]) == [len(s) for s in sequences]
        letters = np.array(list(ONEHOT_ALPHABET))[z["embeddings"].argmax(axis=1)]
        assert "".join(letters) == "".join(sequences)
    # the table's residue column, for a few proteins, against the one-hot rows beside it
    (tmp_path / "some.fa").write_text("".join(f">{r.id}\n{r.sequence}\n" for r in records[:40]))
    done = run_cli("export", tmp_path / "e.h5", "--per-residue", "--ids", tmp_path / "some.fa", "--digits", "1")
    rows = [line.split("\t") for line in done.stdout.splitlines()[1:]]
    assert len(rows) == sum(len(s) for s in sequences[:40])
    for row in rows:
        assert ONEHOT_ALPHABET[row[3:].index("1")] == (row[2] if row[2] in ONEHOT_ALPHABET else "X")


def _probabilities_file(path, proteins: dict[str, int], seed=0):
    """A predict --probabilities file of ss3+ss8 (as heads/predict.py writes it): {id: (ss3, ss8)}."""
    rng = np.random.default_rng(seed)
    out = {}
    with h5py.File(path, "w") as f:
        f.attrs["task"] = "ss3+ss8"
        f.attrs["classes_ss3"], f.attrs["classes_ss8"] = "HEC", "HGIEBTSC"
        groups = {o: f.create_group(o) for o in ("ss3", "ss8")}
        for ident, length in proteins.items():
            arrays = tuple(rng.dirichlet(np.ones(w), length).astype(np.float32) for w in (3, 8))
            for (o, group), array in zip(groups.items(), arrays):
                group.create_dataset(escape_key(ident), data=array)
                group[escape_key(ident)].attrs["id"] = ident
            out[ident] = arrays
    return out


def test_probabilities_as_a_table_and_arrays(tmp_path, run_cli):
    """predict --probabilities' file: a row a residue with predict's column names, and an .npz of
    one array an output, each equal to the stored probabilities."""
    stored = _probabilities_file(tmp_path / "p.h5", {"b,2": 3, "a/1": 2})
    done = run_cli("export", tmp_path / "p.h5", "--format", "csv")
    assert done.exit_code == 0, done.stderr
    rows = _table(done.stdout, ",")
    assert rows[0] == ["id", "position", "ss3:H", "ss3:E", "ss3:C"] + [f"ss8:{c}" for c in "HGIEBTSC"]
    assert [tuple(r[:2]) for r in rows[1:]] == [("a/1", "1"), ("a/1", "2"), ("b,2", "1"), ("b,2", "2"), ("b,2", "3")]
    values = np.array([r[2:] for r in rows[1:]], dtype=np.float64).astype(np.float32)
    np.testing.assert_array_equal(values, np.concatenate([np.concatenate(stored[i], axis=1) for i in ("a/1", "b,2")]))
    (tmp_path / "ids.txt").write_text("b,2\n")
    done = run_cli("export", tmp_path / "p.h5", "--ids", tmp_path / "ids.txt", "-o", tmp_path / "p.npz")
    assert done.exit_code == 0, done.stderr
    with np.load(tmp_path / "p.npz", allow_pickle=False) as z:
        assert list(z["ids"]) == ["b,2"] and list(z["offsets"]) == [0, 3]
        np.testing.assert_array_equal(z["ss3"], stored["b,2"][0])
        np.testing.assert_array_equal(z["ss8"], stored["b,2"][1])
        assert json.loads(str(z["metadata"]))["classes"]["ss8"] == list("HGIEBTSC")
    for option in (["--per-residue"], ["--layer", "-1"]):  # (-1, the default's value, given: it was taken)
        done = run_cli("export", tmp_path / "p.h5", *option)
        assert done.exit_code == 2 and "are for embeddings files" in done.stderr, (option, done.stderr)
    with h5py.File(tmp_path / "p.h5", "a") as f:  # a protein's ss8 rows cut short: damaged, refused
        del f["ss8"]["b,2"]
        f["ss8"]["b,2"] = np.ones((2, 8), dtype=np.float32)
    done = run_cli("export", tmp_path / "p.h5", "-o", tmp_path / "q.tsv")
    assert done.exit_code == 1 and "record 'b,2'" in done.stderr and not (tmp_path / "q.tsv").exists()
    with h5py.File(tmp_path / "p.h5", "a") as f:  # a protein with ss3 probabilities but none of ss8
        del f["ss8"]["b,2"]
    done = run_cli("export", tmp_path / "p.h5", "-o", tmp_path / "q.tsv")
    assert done.exit_code == 1 and "record 'b,2': has ss3 probabilities for this protein but no ss8 ones" in done.stderr
    assert not (tmp_path / "q.tsv").exists()


def test_probabilities_of_classes_named_by_words_export_under_their_names(tmp_path, run_cli):
    """predict writes the classes of an output whose names are not one letter each as a JSON list
    (`["buried", "exposed"]`): the columns are named by them, not by the list's characters."""
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f.attrs["task"] = "rsa2"
        f.attrs["classes_rsa2"] = json.dumps(["buried", "exposed"])
        f.create_group("rsa2").create_dataset("a", data=np.array([[0.25, 0.75]], dtype=np.float32))
        f["rsa2"]["a"].attrs["id"] = "a"
    done = run_cli("export", tmp_path / "p.h5")
    assert done.exit_code == 0, done.stderr
    assert _table(done.stdout, "\t") == [["id", "position", "rsa2:buried", "rsa2:exposed"], ["a", "1", "0.25", "0.75"]]


@pytest.mark.parametrize("name, hint", [("out.csv", "protrans export OUT.h5 -o out.csv"), ("out.npz", "protrans export"),
                                        ("out.fasta", "")])
def test_embed_refuses_an_output_named_like_another_format(tmp_path, run_cli, name, hint):
    """embed -o out.csv wrote HDF5 under that name (a CSV reader then failed on its bytes): refused
    before any work, pointing to export for a table or arrays."""
    (tmp_path / "in.fa").write_text(">a\nMKV\n")
    done = run_cli("embed", tmp_path / "in.fa", "-m", "onehot", "-o", tmp_path / name)
    assert done.exit_code == 2 and "written as HDF5" in done.stderr and hint in done.stderr
    assert not (tmp_path / name).exists()


def test_an_earlier_embed_output_named_like_another_format_is_resumed_not_refused(tmp_path, run_cli):
    """The name check is for a new file: an embeddings file written before it under such a name
    (`-o proteome.txt`) is still finished with --resume."""
    (tmp_path / "in.fa").write_text(">a\nMKV\n>b\nMKTA\n")
    (tmp_path / "one.fa").write_text(">a\nMKV\n")
    assert run_cli("embed", tmp_path / "one.fa", "-m", "onehot", "-o", tmp_path / "old.h5").exit_code == 0
    (tmp_path / "old.h5").rename(tmp_path / "old.txt")
    done = run_cli("embed", tmp_path / "in.fa", "-m", "onehot", "-o", tmp_path / "old.txt", "--resume")
    assert done.exit_code == 0 and "written as HDF5" not in done.stderr, done.stderr
    from protrans_cli.io.h5 import EmbeddingsReader

    with EmbeddingsReader(tmp_path / "old.txt") as reader:
        assert sorted(i for i, _, _ in reader.items("per_residue")) == ["a", "b"]


def test_a_table_longer_than_a_spreadsheet_is_said(tmp_path, run_cli, monkeypatch):
    import protrans_cli.export as export_module

    _write(tmp_path / "e.h5", _proteins())
    monkeypatch.setattr(export_module, "SPREADSHEET_ROWS", 5)  # 5 proteins and a header: 6 rows
    done = run_cli("export", tmp_path / "e.h5", "-o", tmp_path / "e.csv")
    assert done.exit_code == 0 and "a spreadsheet (Excel, LibreOffice) opens the first 5 only" in done.stderr
    done = run_cli("export", tmp_path / "e.h5", "-o", tmp_path / "e.npz")
    assert done.exit_code == 0 and "spreadsheet" not in done.stderr
    # a table of as many rows as a spreadsheet holds, the header's included, opens whole: no warning
    monkeypatch.setattr(export_module, "SPREADSHEET_ROWS", 6)
    done = run_cli("export", tmp_path / "e.h5", "-o", tmp_path / "e.csv")
    assert done.exit_code == 0 and "spreadsheet" not in done.stderr, done.stderr


def test_a_tsv_id_starting_with_a_quote_reads_back(tmp_path, run_cli):
    """TSV has no quoting: an id starting with a quote was eaten by pandas' and R's quote handling
    up to the next quote; it is quoted as CSV quotes it, which a TSV reader undoes."""
    proteins = {'"odd" id': "MKV", 'mid"quote': "MKT", "plain": "MKL"}
    _write(tmp_path / "e.h5", proteins, kinds=("per_protein",))
    done = run_cli("export", tmp_path / "e.h5")
    assert done.exit_code == 0, done.stderr
    rows = list(csv.reader(io.StringIO(done.stdout), delimiter="\t"))
    assert sorted(r[0] for r in rows[1:]) == sorted(proteins) and all(len(r) == 7 for r in rows)


def test_all_layers_into_one_npz(tmp_path, run_cli):
    """--all-layers: the layer axis kept after the row axis, per protein and per residue (a
    residue's rows of every layer together), in the file's layer order; a table is refused."""
    proteins = _proteins()
    arrays = _write(tmp_path / "e.h5", proteins, layers=[-1, -2])
    for kind in ("--per-protein", "--per-residue"):
        out = tmp_path / f"all{kind}.npz"
        done = run_cli("export", tmp_path / "e.h5", kind, "--all-layers", "-o", out)
        assert done.exit_code == 0, done.stderr
        with np.load(out, allow_pickle=False) as z:
            metadata = json.loads(str(z["metadata"]))
            assert metadata["layers"] == [-1, -2] and metadata["layer_axis"] is True
            if kind == "--per-protein":
                assert z["embeddings"].shape == (5, 2, 6)
                for ident, vector in zip(z["ids"], z["embeddings"]):
                    np.testing.assert_array_equal(vector, arrays[str(ident)][1])
            else:
                offsets = z["offsets"]
                for i, ident in enumerate(z["ids"]):
                    np.testing.assert_array_equal(z["embeddings"][offsets[i]:offsets[i + 1]],
                                                  np.moveaxis(arrays[str(ident)][0], 0, 1))
    residues = _write(tmp_path / "r.h5", proteins, layers=[-1, -2], kinds=("per_residue",))
    done = run_cli("export", tmp_path / "r.h5", "--per-protein", "--all-layers", "-o", tmp_path / "m.npz")
    assert done.exit_code == 0, done.stderr
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:  # pooled: each layer's mean over the residues
        for ident, vectors in zip(map(str, z["ids"]), z["embeddings"]):
            np.testing.assert_allclose(vectors, residues[ident][0].astype(np.float64).mean(axis=-2), rtol=1e-6)
    for args, message in ((["-o", tmp_path / "t.tsv"], "--all-layers writes an .npz"),
                          (["--layer", "-2", "-o", tmp_path / "x.npz"], "leave out --layer"),
                          # (the default's value, given: it was taken without a word)
                          (["--layer", "-1", "-o", tmp_path / "x.npz"], "leave out --layer")):
        done = run_cli("export", tmp_path / "e.h5", "--all-layers", *args)
        assert done.exit_code == 2 and message in done.stderr


@pytest.mark.parametrize("layout", ["grouped", "stacked"])
def test_all_layers_of_a_file_of_one_layer_keep_a_layer_axis(tmp_path, run_cli, layout):
    """--all-layers gives embeddings of the documented shape (N, n_layers, D) whatever the number
    of layers the file stores: of a file of one (embed's default, arrays with no layer axis) it
    gave (N, D), and `embeddings[:, k]` of a script probing layer k read dimension k. A file of
    no protein has the axis of the layers it records. (Found by tests/test_properties_persistence.py.)"""
    proteins = _proteins()
    kinds = ("per_protein",) if layout == "stacked" else ("per_residue", "per_protein")
    arrays = _write(tmp_path / "e.h5", proteins, kinds=kinds, layout=layout)  # (L, D) and (D,) arrays
    with h5py.File(tmp_path / "e.h5", "a") as f:
        f.attrs["layers"] = np.array([-1])  # as embed records its one layer
    for kind in ("--per-protein", "--per-residue")[:len(kinds)]:
        out = tmp_path / f"all{kind}.npz"
        done = run_cli("export", tmp_path / "e.h5", kind, "--all-layers", "-o", out)
        assert done.exit_code == 0, done.stderr
        with np.load(out, allow_pickle=False) as z:
            assert json.loads(str(z["metadata"]))["layer_axis"] is True
            if kind == "--per-protein":
                assert z["embeddings"].shape == (5, 1, 6)
                for ident, vector in zip(z["ids"], z["embeddings"]):
                    np.testing.assert_array_equal(vector, arrays[str(ident)][1][None])
            else:
                assert z["embeddings"].shape == (sum(map(len, proteins.values())), 1, 6)
                offsets = z["offsets"]
                for i, ident in enumerate(z["ids"]):
                    np.testing.assert_array_equal(z["embeddings"][offsets[i]:offsets[i + 1], 0], arrays[str(ident)][0])
    _write(tmp_path / "none.h5", {}, layers=[-1, -2], kinds=("per_protein",))
    with h5py.File(tmp_path / "none.h5", "a") as f:
        f.attrs["embedding_dim"] = 6
    done = run_cli("export", tmp_path / "none.h5", "--all-layers", "-o", tmp_path / "none.npz")
    assert done.exit_code == 0, done.stderr
    with np.load(tmp_path / "none.npz", allow_pickle=False) as z:
        assert z["embeddings"].shape == (0, 2, 6)


@pytest.mark.parametrize("argv", [["info", "-"], ["info", "{tmp}/e.h5", "-"], ["export", "-"],
                                  ["export", "-", "-o", "{tmp}/e.tsv"]])
def test_info_and_export_refuse_stdin_as_a_usage_error(tmp_path, run_cli, argv):
    """An HDF5 file cannot come from stdin: `info -` and `export -` are usage errors (exit 2, said
    before anything is read), as in knn, project and predict; without the commands' own check the
    reader refused it as bad input, exit 1."""
    _write(tmp_path / "e.h5", _proteins())
    done = run_cli(*(a.format(tmp=tmp_path) for a in argv), input=b"")
    assert done.exit_code == 2, done.stderr
    assert done.stderr == ("protrans: error: an HDF5 file is read in place, not from stdin ('-'): give the "
                           "embeddings as a file\n") and done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5"]


@pytest.mark.parametrize("flag", ["--json", "--residues"])
def test_info_ids_alone(tmp_path, run_cli, flag):
    """`info --ids` lists ids, one a line, for a pipe: with --json or --residues it is a usage
    error (exit 2), not a list of ids with the other flag silently dropped."""
    _write(tmp_path / "e.h5", _proteins())
    done = run_cli("info", tmp_path / "e.h5", "--ids", flag)
    assert done.exit_code == 2 and done.stdout == "", done.stdout
    assert done.stderr == "protrans: error: --ids lists ids alone: leave out --json and --residues\n"


def test_a_csv_id_with_a_line_break_is_quoted_and_reads_back(tmp_path, run_cli):
    """Another tool's key may hold a line break (FASTA ids never do): CSV quotes such an id, as
    it quotes one with a comma or a quote, so its row reads back whole. Quoting only commas and
    quotes passed every test: the row was cut in two."""
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f["two\nlines"] = np.full(2, 1, dtype=np.float32)
        f["carriage\rreturn"] = np.full(2, 2, dtype=np.float32)
        f["plain"] = np.full(2, 3, dtype=np.float32)
    done = run_cli("export", tmp_path / "k.h5", "-o", tmp_path / "k.csv")
    assert done.exit_code == 0, done.stderr
    with open(tmp_path / "k.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "dim_0", "dim_1"] and len(rows) == 4
    assert {r[0]: float(r[1]) for r in rows[1:]} == {"two\nlines": 1, "carriage\rreturn": 2, "plain": 3}


def test_a_signal_as_export_says_its_summary_exits_0(tmp_path, run_cli, monkeypatch):
    """A SIGTERM while export said its summary (the output committed) was reported as an
    interruption, exit 143, for a file already whole: the CLI marked the output complete only
    after the library's summary. It exits 0 now, saying nothing was lost."""
    from conftest import signal_when_said

    _write(tmp_path / "e.h5", _proteins())
    signal_when_said(monkeypatch, "export:")
    out = tmp_path / "o.tsv"
    r = run_cli("export", tmp_path / "e.h5", "--per-residue", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert f"terminated once the output was complete ({out}): nothing was lost" in r.stderr
    assert out.is_file()


# --- --format esm: esm-extract's .pt files (tests/test_esm_import.py compares them with
# esm-extract's own and imports them back) ---------------------------------------------------

def _esm(folder) -> dict:
    """{file name: the .pt file's dict}, each read as import-esm reads them (weights_only)."""
    import torch

    return {p.name: torch.load(p, weights_only=True) for p in sorted(Path(folder).iterdir())}


@pytest.mark.parametrize("layout", ["grouped", "flat"])
def test_esm_files_are_named_by_escaped_ids_and_labelled_by_headers(tmp_path, run_cli, layout):
    proteins = _proteins()
    kinds = ("per_residue", "per_protein") if layout == "grouped" else ("per_residue",)  # (flat: one kind)
    arrays = _write(tmp_path / "e.h5", proteins, layout=layout, dtype=np.float16, kinds=kinds)
    done = run_cli("export", tmp_path / "e.h5", "--format", "esm", "-o", f"{tmp_path / 'esm'}/")
    assert done.exit_code == 0, done.stderr
    got = _esm(tmp_path / "esm")
    assert sorted(got) == sorted(escape_key(i) + ".pt" for i in proteins) and "c%2Fslash.pt" in got
    for ident, (rows, mean) in arrays.items():
        entry = got[escape_key(ident) + ".pt"]
        assert entry["label"] == ident + " some protein"
        # no layer numbers recorded (another tool's file): the layer as given, -1
        assert set(entry) == {"label", "representations", "mean_representations"}
        assert list(entry["representations"]) == list(entry["mean_representations"]) == [-1]
        np.testing.assert_array_equal(entry["representations"][-1].numpy(), rows.astype(np.float32))
        if layout == "grouped":  # the stored vector
            np.testing.assert_array_equal(entry["mean_representations"][-1].numpy(), mean.astype(np.float32))
        else:  # the rows' mean (esm-extract's `mean`)
            np.testing.assert_allclose(entry["mean_representations"][-1].numpy(),
                                       rows.astype(np.float64).mean(axis=0), rtol=1e-6)
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "esm").stat().st_mode & 0o777 == 0o777 & ~mask  # (not mkdtemp's 0700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5", "esm"]  # (no partial folder left)


def test_esm_layers_are_numbered_as_esm_extract_numbers_them(tmp_path, run_cli):
    """embed's layers -1 and -3 of 3 hidden states are esm-extract's 2 and 0; one layer is asked
    for by either number."""
    proteins = _proteins()
    arrays = _write(tmp_path / "e.h5", proteins, layers=[-1, -3])
    done = run_cli("export", tmp_path / "e.h5", "--format", "esm", "--all-layers", "-o", tmp_path / "all")
    assert done.exit_code == 0 and "layers 2, 0)" in done.stderr, done.stderr
    for ident, (rows, mean) in arrays.items():
        entry = _esm(tmp_path / "all")[escape_key(ident) + ".pt"]
        assert list(entry["representations"]) == [2, 0]
        for k, number in enumerate((2, 0)):
            np.testing.assert_array_equal(entry["representations"][number].numpy(), rows[k])
            np.testing.assert_array_equal(entry["mean_representations"][number].numpy(), mean[k])
    for layer in ("-3", "0"):
        out = tmp_path / f"layer{layer}"
        assert run_cli("export", tmp_path / "e.h5", "--format", "esm", "--layer", layer, "-o", out).exit_code == 0
        entry = _esm(out)["e.pt"]
        assert list(entry["representations"]) == [0]
        np.testing.assert_array_equal(entry["representations"][0].numpy(), arrays["e"][0][1])


def test_esm_of_a_file_whose_unused_layer_count_is_no_number_numbers_the_layer_as_given(tmp_path, run_cli):
    """Another tool's file recording no `layers` but a `num_hidden_states` that is no number: its
    layer is the one given (that count numbers nothing without `layers`), as the table export of
    it reads it. (_esm_layer_numbers' `except InputError` is for this file: without it, "not layer
    numbers" refused the esm-extract files of what the table export reads.)"""
    import h5py

    arrays = _write(tmp_path / "e.h5", _proteins())
    with h5py.File(tmp_path / "e.h5", "a") as f:
        f.attrs["num_hidden_states"] = "twelve"
    assert run_cli("export", tmp_path / "e.h5", "-o", tmp_path / "e.tsv").exit_code == 0
    done = run_cli("export", tmp_path / "e.h5", "--format", "esm", "-o", tmp_path / "esm")
    assert done.exit_code == 0 and "layer -1) into" in done.stderr, done.stderr
    entry = _esm(tmp_path / "esm")["e.pt"]
    assert list(entry["representations"]) == [-1]
    np.testing.assert_array_equal(entry["representations"][-1].numpy(), arrays["e"][0])


def test_esm_kinds_means_from_rows_cls_vectors_and_a_stacked_file(tmp_path, run_cli):
    proteins = _proteins()
    arrays = _write(tmp_path / "r.h5", proteins, kinds=("per_residue",))
    assert run_cli("export", tmp_path / "r.h5", "--format", "esm", "-o", tmp_path / "both").exit_code == 0
    for ident, (rows, _) in arrays.items():  # esm-extract's `mean`: of the rows
        entry = _esm(tmp_path / "both")[escape_key(ident) + ".pt"]
        np.testing.assert_allclose(entry["mean_representations"][-1].numpy(), rows.mean(axis=0), rtol=1e-6)
    assert run_cli("export", tmp_path / "r.h5", "--format", "esm", "--per-residue", "-o", tmp_path / "rows").exit_code == 0
    assert set(_esm(tmp_path / "rows")["e.pt"]) == {"label", "representations"}
    # per-protein vectors only: no rows to write; cls vectors are esm-extract's bos_representations
    arrays = _write(tmp_path / "p.h5", proteins, kinds=("per_protein",))
    done = run_cli("export", tmp_path / "p.h5", "--format", "esm", "--per-residue", "-o", tmp_path / "none")
    assert done.exit_code == 1 and "per-protein vectors only" in done.stderr and not (tmp_path / "none").exists()
    with h5py.File(tmp_path / "p.h5", "a") as f:
        f.attrs["pooling"] = "cls: the hidden state of the <cls> token"
    assert run_cli("export", tmp_path / "p.h5", "--format", "esm", "-o", tmp_path / "cls").exit_code == 0
    entry = _esm(tmp_path / "cls")["e.pt"]
    assert set(entry) == {"label", "bos_representations"}
    np.testing.assert_array_equal(entry["bos_representations"][-1].numpy(), arrays["e"][1])
    # a stacked file: its vectors and header column
    arrays = _write(tmp_path / "s.h5", proteins, kinds=("per_protein",), layout="stacked")
    assert run_cli("export", tmp_path / "s.h5", "--format", "esm", "-o", tmp_path / "stacked").exit_code == 0
    got = _esm(tmp_path / "stacked")
    for ident, (_, mean) in arrays.items():
        assert got[escape_key(ident) + ".pt"]["label"] == ident + " some protein"
        np.testing.assert_array_equal(got[escape_key(ident) + ".pt"]["mean_representations"][-1].numpy(), mean)


@pytest.mark.parametrize("args, message", [
    (["-o", "{tmp}/full"], "a folder that is not empty"),
    (["-o", "{tmp}/e.h5"], "exists and is not a folder"),
    ([], "give -o FOLDER"),
    (["-o", "{tmp}/new", "--digits", "3"], "keep the stored values"),
    (["-o", "."], "the current directory"),
])
def test_esm_refusals_write_nothing(tmp_path, run_cli, monkeypatch, args, message):
    _write(tmp_path / "e.h5", _proteins())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.pt").write_bytes(b"another run's")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")  # (empty: `-o .` is refused as the current directory alone)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    done = run_cli("export", tmp_path / "e.h5", "--format", "esm", *[a.format(tmp=tmp_path) for a in args])
    assert done.exit_code == 2 and message in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "full" / "x.pt").read_bytes() == b"another run's"


def test_esm_on_a_full_disk_is_one_line_naming_the_file(tmp_path, run_cli, monkeypatch):
    """torch.save meeting a full disk raises its zip writer's RuntimeError ("unexpected pos")
    while handling the OSError: that was a traceback; now one line naming the file, exit 1, and
    no folder left."""
    import builtins
    import errno

    from protrans_cli import export as export_module

    class Full:  # a file on a disk that takes 100 bytes
        def __init__(self, path, mode):
            self.handle, self.written = builtins.open(path, mode), 0

        def write(self, data):
            self.written += len(data)
            if self.written > 100:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    _write(tmp_path / "e.h5", _proteins())
    monkeypatch.setattr(export_module, "open", Full, raising=False)
    done = run_cli("export", tmp_path / "e.h5", "--format", "esm", "-o", tmp_path / "out")
    assert done.exit_code == 1, done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(": cannot write: No space left on device"), done.stderr
    assert f"{tmp_path / 'out'}{os.sep}" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5"]


def test_esm_into_an_empty_folder_or_through_a_link_to_one(tmp_path, run_cli):
    _write(tmp_path / "e.h5", {".hidden": "MKV", **_proteins()})
    (tmp_path / "empty").mkdir()
    assert run_cli("export", tmp_path / "e.h5", "--format", "esm", "-o", tmp_path / "empty").exit_code == 0
    got = _esm(tmp_path / "empty")
    # an id's leading '.' escaped: a hidden file was skipped by `ls` and glob("*.pt")
    assert len(got) == 6 and got["%2Ehidden.pt"]["label"] == ".hidden some protein"
    assert len(list((tmp_path / "empty").glob("*.pt"))) == 6
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert run_cli("export", tmp_path / "e.h5", "--format", "esm", "-o", tmp_path / "link").exit_code == 0
    assert (tmp_path / "link").is_symlink() and len(_esm(tmp_path / "real")) == 6


def test_esm_an_id_whose_file_name_is_255_bytes_is_written_and_256_refused(tmp_path, run_cli):
    """A file name can have 255 bytes (Linux, macOS): an id whose `ID.pt` is that long is written,
    one a byte longer is refused naming its length (a name of 255 bytes is no error of the file
    system's)."""
    fits, over = "x" * 252, "y" * 253
    _write(tmp_path / "e.h5", {fits: "MKV"})
    done = run_cli("export", tmp_path / "e.h5", "--format", "esm", "-o", tmp_path / "esm")
    assert done.exit_code == 0, done.stderr
    assert [p.name for p in (tmp_path / "esm").iterdir()] == [fits + ".pt"] and len(fits + ".pt") == 255
    _write(tmp_path / "o.h5", {over: "MKV"})
    done = run_cli("export", tmp_path / "o.h5", "--format", "esm", "-o", tmp_path / "esm2")
    assert done.exit_code == 1 and "its id makes a file name of 256 bytes, over the 255" in done.stderr, done.stderr
    assert not (tmp_path / "esm2").exists()


def test_esm_failures_leave_no_folder(tmp_path, run_cli, monkeypatch):
    """A failure midway, an id too long for a file name, and two ids that a file system blind to
    case makes one name (emulated): no folder, no partial folder left."""
    import builtins

    import torch

    from protrans_cli import export as export_module
    from protrans_cli.errors import InputError, RuntimeFailure

    _write(tmp_path / "e.h5", _proteins())
    saved = []

    def failing_save(obj, handle):
        if saved:
            raise OSError(28, "No space left on device")
        saved.append(obj)
        torch.serialization.save(obj, handle)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", failing_save)
        with pytest.raises(RuntimeFailure, match="cannot write: No space left on device"):
            export_module.export(tmp_path / "e.h5", tmp_path / "out", fmt="esm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5"]
    _write(tmp_path / "long.h5", {"x" * 300: "MKV", "short": "MK"})
    done = run_cli("export", tmp_path / "long.h5", "--format", "esm", "-o", tmp_path / "out")
    assert done.exit_code == 1 and f"record '{'x' * 100}...' (300 characters)" in done.stderr, done.stderr
    assert "over the 255" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5", "long.h5"]
    _write(tmp_path / "case.h5", {"AB": "MKV", "ab": "MK"})
    blind = lambda path, mode: builtins.open(Path(path).parent / Path(path).name.lower(), mode)  # noqa: E731
    monkeypatch.setattr(export_module, "open", blind, raising=False)
    with pytest.raises(InputError, match=r"its file ab.pt is 'AB''s on this file system"):
        export_module.export(tmp_path / "case.h5", tmp_path / "out", fmt="esm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.h5", "e.h5", "long.h5"]


def test_library_arguments_of_the_wrong_type_are_one_usage_error_naming_the_argument(tmp_path):
    """From Python, export(["x.h5"]) and info(["x.h5"]) said "['x.h5']: no such file" (the list
    read as its text), and export(..., layer="-1") was a TypeError traceback from deep inside."""
    from protrans_cli.errors import UsageError
    from protrans_cli.export import export, file_ids, info

    _write(tmp_path / "e.h5", _proteins())
    cases = [
        (lambda: export([tmp_path / "e.h5"]), r"^export: path must be a path \(one embeddings file\), got list \["),
        (lambda: export(tmp_path / "e.h5", layer="-1"), r"^export: layer must be an int or None, got str '-1'$"),
        (lambda: export(tmp_path / "e.h5", digits="3"), r"^export: digits must be an int or None, got str '3'$"),
        (lambda: export(tmp_path / "e.h5", all_layers="no"), r"^export: all_layers must be a bool, got str 'no'$"),
        (lambda: export(tmp_path / "e.h5", ids=["a"]), r"^export: ids must be a path, got list \['a'\]$"),
        (lambda: info([tmp_path / "e.h5"]), r"^info: path must be a path \(one file or directory\), got list \["),
        (lambda: file_ids([tmp_path / "e.h5"]), r"^file_ids: path must be a path \(one file\), got list \["),
    ]
    for call, message in cases:
        with pytest.raises(UsageError, match=message):
            call()
    # numpy's integers are ints (a layer picked from an array)
    assert export(tmp_path / "e.h5", tmp_path / "e.tsv", layer=np.int64(-1)).proteins == len(_proteins())


@pytest.mark.parametrize("name", ["p.h5.partial", "p.h5"])
def test_info_calls_a_probabilities_file_finished_whatever_its_name(tmp_path, run_cli, name):
    """predict --probabilities writes its file whole under the name given (no OUTPUT.partial, no
    --resume): one named p.h5.partial was said to be "unfinished ... (embed --resume continues
    it)", and p.h5 beside an unrelated p.h5.partial "finished; ... a later run's"."""
    with h5py.File(tmp_path / name, "w") as f:
        f.attrs["task"] = "rsa2"
        f.attrs["classes_rsa2"] = json.dumps(["buried", "exposed"])
        f.create_group("rsa2").create_dataset("a", data=np.array([[0.25, 0.75]], dtype=np.float32))
        f["rsa2"]["a"].attrs["id"] = "a"
    (tmp_path / "p.h5.partial").touch(exist_ok=True)
    done = run_cli("info", tmp_path / name, "--json")
    assert done.exit_code == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["status"] == "finished" and facts["written_by"] == "protrans predict --probabilities"


def test_groups_at_the_top_of_another_tools_file_are_said_by_export_and_info(tmp_path, run_cli):
    """A file written with h5py by hand under ids holding '/' (`f["Q8WZ42/1-300"] = rows`: h5py
    makes a group `Q8WZ42` holding a dataset `1-300`): its groups are not proteins and are not
    read. export wrote the other proteins and info counted them, neither saying a word of the
    groups (predict warned): proteins were left out silently."""
    with h5py.File(tmp_path / "hand.h5", "w") as f:
        f["Q8WZ42/1-300"] = np.ones((3, 2), dtype=np.float32)
        f["P69905"] = np.zeros((4, 2), dtype=np.float32)
    for args in (["-o", tmp_path / "t.tsv"], ["--format", "esm", "-o", tmp_path / "esm"]):
        done = run_cli("export", tmp_path / "hand.h5", *args)
        assert done.exit_code == 0, done.stderr
        assert "1 group(s) at the top of this flat file are not read" in done.stderr and "Q8WZ42" in done.stderr
    assert {r[0] for r in _table((tmp_path / "t.tsv").read_text(), "\t")[1:]} == {"P69905"}
    done = run_cli("info", tmp_path / "hand.h5")
    assert done.exit_code == 0, done.stderr
    assert "not read:" in done.stdout and "1 group(s) at the top, not proteins" in done.stdout and "Q8WZ42" in done.stdout
    facts = json.loads(run_cli("info", tmp_path / "hand.h5", "--json").stdout)
    assert facts["groups_not_read"] == ["Q8WZ42"] and facts["proteins"] == {"per_residue": 1}


def test_another_tools_flat_file_with_a_kind_attribute_counts_only_its_datasets(tmp_path, run_cli):
    """Another tool's flat file that says its kind (`f.attrs["kind"] = "per_protein"`, as embed's
    own flat files do, but no `layout`): its members were not typed, so info counted a group and a
    named datatype at its top as proteins (3 where export wrote 1) and said nothing of the group."""
    with h5py.File(tmp_path / "hand.h5", "w") as f:
        f.attrs["kind"] = "per_protein"
        f["P69905"] = np.zeros(2, dtype=np.float32)
        f["Q8WZ42/1-300"] = np.ones(2, dtype=np.float32)
        f["residue_type"] = np.dtype("float32")
    facts = json.loads(run_cli("info", tmp_path / "hand.h5", "--json").stdout)
    assert facts["proteins"] == {"per_protein": 1} and facts["groups_not_read"] == ["Q8WZ42"], facts
    done = run_cli("export", tmp_path / "hand.h5", "--per-protein", "-o", tmp_path / "t.tsv")
    assert done.exit_code == 0, done.stderr
    assert "1 group(s) at the top of this flat file are not read" in done.stderr
    assert {r[0] for r in _table((tmp_path / "t.tsv").read_text(), "\t")[1:]} == {"P69905"}


def test_a_named_datatype_at_the_top_of_another_tools_file_is_no_group_and_no_protein(tmp_path, run_cli):
    """A datatype committed at the top of a hand-written file (h5py's `f["t"] = np.dtype(...)`) is
    neither a protein nor a group of them: export and info said "1 group(s) at the top of this flat
    file are not read, and the datasets in them are not exported", of a member holding none."""
    with h5py.File(tmp_path / "hand.h5", "w") as f:
        f["residue_type"] = np.dtype("float32")
        f["P69905"] = np.zeros((4, 2), dtype=np.float32)
    done = run_cli("export", tmp_path / "hand.h5", "-o", tmp_path / "t.tsv")
    assert done.exit_code == 0, done.stderr
    assert "group" not in done.stderr, done.stderr
    assert {r[0] for r in _table((tmp_path / "t.tsv").read_text(), "\t")[1:]} == {"P69905"}
    facts = json.loads(run_cli("info", tmp_path / "hand.h5", "--json").stdout)
    assert "groups_not_read" not in facts and facts["proteins"] == {"per_residue": 1}


def test_info_of_another_tools_grouped_file_counts_its_datasets_not_its_groups(tmp_path, run_cli):
    """`f["per_protein/P1/a"] = v` (an id with '/', by hand) makes a group among the proteins: info
    counted it as one (3 per-protein, where --ids and export listed 2) and said nothing of it."""
    with h5py.File(tmp_path / "g.h5", "w") as f:
        f["per_protein/P69905"] = np.ones(2, dtype=np.float32)
        f["per_protein/P68871"] = np.zeros(2, dtype=np.float32)
        f["per_protein/Q8WZ42/1-300"] = np.ones(2, dtype=np.float32)
    facts = json.loads(run_cli("info", tmp_path / "g.h5", "--json").stdout)
    assert facts["proteins"] == {"per_protein": 2} and facts["groups_not_read"] == ["per_protein/Q8WZ42"]
    assert len(run_cli("info", tmp_path / "g.h5", "--ids").stdout.split()) == 2
    done = run_cli("info", tmp_path / "g.h5")
    assert "proteins:   2 per-protein" in done.stdout
    assert "1 group(s) among the proteins, not proteins" in done.stdout and "per_protein/Q8WZ42" in done.stdout


def test_ids_of_a_fasta_find_a_bio_embeddings_protein_by_its_sequence(tmp_path, run_cli):
    """bio_embeddings keys a sequence by its md5, once, naming one of the ids that share it in
    `original_id`; fit finds the others by their sequence. `export --ids` of the FASTA it embedded
    refused them ("1 protein of the 3 it names is not in ..."), so its proteins could not be
    written in the FASTA's order, one row each."""
    seqs = {"P1": "MKVLA", "P1_copy": "MKVLA", "P2": "MKW"}
    with h5py.File(tmp_path / "bio.h5", "w") as f:
        for i, ident in enumerate(["P1", "P2"]):
            key = sequence_checksum(seqs[ident]).split(":")[1]
            f[key] = np.full((len(seqs[ident]), 2), i + 1, dtype=np.float32)
            f[key].attrs["original_id"] = f"{ident} some description"
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">{i}\n{s}\n" for i, s in reversed(seqs.items())))
    done = run_cli("export", tmp_path / "bio.h5", "--ids", fasta, "--per-protein", "-o", tmp_path / "t.csv")
    assert done.exit_code == 0, done.stderr
    assert [tuple(r) for r in _table((tmp_path / "t.csv").read_text(), ",")[1:]] == [
        ("P2", "2", "2"), ("P1_copy", "1", "1"), ("P1", "1", "1")]
    done = run_cli("export", tmp_path / "bio.h5", "--ids", fasta, "--format", "esm", "-o", tmp_path / "esm")
    assert done.exit_code == 0, done.stderr
    import torch
    copy = torch.load(tmp_path / "esm" / "P1_copy.pt", weights_only=True)
    assert copy["label"] == "P1_copy" and copy["representations"][-1].tolist() == [[1.0, 1.0]] * 5
    fasta.write_text(">P3\nMKKK\n")  # (a sequence the file does not hold: refused, as before)
    done = run_cli("export", tmp_path / "bio.h5", "--ids", fasta)
    assert done.exit_code == 1 and "is not in" in done.stderr and "P3" in done.stderr


def test_a_fasta_given_for_the_embeddings_is_named_with_a_byte_order_mark_and_blank_lines_before(tmp_path, run_cli):
    """`protrans export proteins.fa` (the sequences in place of their embeddings), of a FASTA a
    Windows editor saved with a byte-order mark and blank lines before its first header: one line
    saying it is a FASTA file and what to do, as for any other FASTA."""
    fasta = tmp_path / "proteins.fa"
    fasta.write_bytes(b"\xef\xbb\xbf\r\n\r\n>P1 a protein\r\nMKVLA\r\n")
    done = run_cli("export", fasta, "-o", tmp_path / "t.tsv")
    assert done.exit_code == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "it is a FASTA file: embed it first" in done.stderr and "proteins.fa" in done.stderr, done.stderr
    assert not (tmp_path / "t.tsv").exists()


def test_without_a_kind_a_file_of_residue_rows_alone_exports_its_rows(tmp_path, run_cli):
    """--help: per-protein vectors by default "where the file has them, else --per-residue": a
    file of residue rows alone gives one row a residue (not their mean, which --per-protein asks)."""
    proteins = _proteins()
    arrays = _write(tmp_path / "e.h5", proteins, kinds=("per_residue",))
    done = run_cli("export", tmp_path / "e.h5")
    assert done.exit_code == 0, done.stderr
    rows = _table(done.stdout, "\t")
    assert rows[0][:3] == ["id", "position", "dim_0"] and len(rows) == 1 + sum(map(len, proteins.values()))
    first = [r for r in rows[1:] if r[0] == rows[1][0]]
    np.testing.assert_array_equal(np.array([r[2:] for r in first], dtype=np.float64).astype(np.float32),
                                  arrays[rows[1][0]][0])


@pytest.mark.parametrize("given, said", [
    (b"\0" * 5000, "is a binary file (it holds NUL bytes), not a list of ids or a FASTA file"),
    (b"e\nc/slash\n#" + b"-" * 5000 + b"\n" + b"\0" * 64,  # (NULs after the first bytes looked at)
     ":4: is a binary file (it holds NUL bytes), not a list of ids or a FASTA file"),
    (b"\x89HDF\r\n\x1a\n" + b"\0" * 100, "is an HDF5 file (such as embed writes), not a list of ids or a FASTA file"),
    (b"PK\x03\x04" + b"\0" * 100, "is not a list of ids or a FASTA file: the file is a zip archive"),
], ids=["nuls", "nuls-after-ids", "hdf5", "npz"])
def test_an_ids_file_that_is_not_text_is_refused_in_one_short_line(tmp_path, run_cli, given, said):
    """--ids took any bytes for a list of ids: a file of NULs (a preallocated or damaged
    download) was one 'id' echoed whole, escaped, in the error (5,000 NULs, 20,000 characters;
    a 300 MB one ran out of memory writing it: a traceback). The label and variants readers
    refuse such files already."""
    _write(tmp_path / "e.h5", _proteins())
    (tmp_path / "ids.txt").write_bytes(given)
    out = tmp_path / "o.tsv"
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "ids.txt", "-o", out)
    assert done.exit_code == 1 and said in done.stderr and "ids.txt" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1 and len(done.stderr) < 400, done.stderr
    assert not out.exists()


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-le", "utf-16-be"])
@pytest.mark.parametrize("as_fasta", [False, True])
def test_an_ids_file_in_utf16_is_read_as_the_label_and_variants_readers_read_it(tmp_path, run_cli, codec, as_fasta):
    """A UTF-16 id list or FASTA (PowerShell's `>`, Notepad's "Unicode"): its ids were 'e\\x00',
    '\\x00c\\x00' ..., "not in" the file, where `protrans labels` and `variants` read such files."""
    proteins = _proteins()
    _write(tmp_path / "e.h5", proteins)
    chosen = ["e", "c/slash"]
    text = "".join(f">{i}\r\n{proteins[i]}\r\n" for i in chosen) if as_fasta else "\r\n".join(chosen) + "\r\n"
    (tmp_path / "ids.txt").write_bytes(text.encode(codec))
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "ids.txt", "--per-residue")
    assert done.exit_code == 0, done.stderr
    assert list(dict.fromkeys(r[0] for r in _table(done.stdout, "\t")[1:])) == chosen


def test_an_ids_fasta_header_with_a_nul_byte_is_refused_naming_its_record(tmp_path, run_cli):
    """--ids has no skip policy: every record is a protein to write, and one whose header holds a
    NUL byte (a damaged file) embed refused or left out. One line naming the record by its line,
    as embed's refusal does, and nothing written (not "not in e.h5", nor a whole file's error)."""
    proteins = _proteins()
    _write(tmp_path / "e.h5", proteins)
    out = tmp_path / "o.tsv"
    for given, line in ((f">e\n{proteins['e']}\n>b\0y damaged\nMKV\n", 3), (">e\n>b\0y\n", 2)):  # (headers alone too)
        (tmp_path / "ids.fa").write_bytes(given.encode())
        done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "ids.fa", "-o", out)
        assert done.exit_code == 1 and done.stderr == (f"protrans: error: {tmp_path / 'ids.fa'}:{line}, record "
                                                       "'b\\x00y': the header holds a NUL byte (a damaged file?)\n")
        assert not out.exists()


def test_an_ids_file_in_fastq_is_said_to_be_fastq(tmp_path, run_cli):
    """A FASTQ given to --ids was read one id a line: its reads' names, bases and '+' lines were
    ids the file did not hold ("first: @r1, MKTAY, +"). It is said to be FASTQ, as the FASTA
    reader says; a list whose ids start with '@' is still a list."""
    proteins = _proteins()
    _write(tmp_path / "e.h5", proteins)
    (tmp_path / "reads.fq").write_text("@r1 run=1\nMKTAY\n+\nIIIII\n@r2\nMKV\n+\nIII\n")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "reads.fq", "-o", tmp_path / "o.tsv")
    assert done.exit_code == 1 and done.stderr == (
        f"protrans: error: {tmp_path / 'reads.fq'}: is not a list of ids or a FASTA file: the file looks like FASTQ "
        "('@' read headers): protein FASTA has '>' headers\n")
    (tmp_path / "ids.txt").write_text("@a\ne\n")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "ids.txt", "-o", tmp_path / "o.tsv")
    assert done.exit_code == 1 and "1 protein of the 2 it names is not in" in done.stderr and "(first: @a)" in done.stderr


def test_a_huge_id_the_file_does_not_hold_is_named_short(tmp_path, run_cli):
    """An --ids list naming an id of 200,000 characters that the file does not hold: the error
    names its first 100 characters and its length (it was echoed whole)."""
    _write(tmp_path / "e.h5", _proteins())
    huge = "Q" * 200_000
    (tmp_path / "ids.txt").write_text(f"e\n{huge}\n")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "ids.txt", "-o", tmp_path / "o.tsv")
    assert done.exit_code == 1 and f"(first: {'Q' * 100}... (200,000 characters))" in done.stderr, done.stderr[:500]
    assert len(done.stderr) < 500


def test_info_names_a_huge_failed_id_briefly_and_json_whole(tmp_path, run_cli):
    """`info`'s failed line named each of the first three failures by its id whole: a 200,000-
    character id, a 200 KB line of the summary. Its first 100 characters and length; --json, which
    scripts read, holds it whole."""
    huge = "B" * 200_000
    (tmp_path / "in.fa").write_text(f">{huge}\nMK1V\n>ok\nMKV\n")
    assert run_cli("embed", tmp_path / "in.fa", "-m", "onehot", "--invalid-policy", "skip", "-o",
                   tmp_path / "e.h5").exit_code == 0
    text = run_cli("info", tmp_path / "e.h5").stdout
    assert (f"failed:        1 ({'B' * 100}... (200,000 characters): skipped: invalid character '1' at residue 3 "
            "(--invalid-policy skip))\n") in text and len(text) < 2000
    assert json.loads(run_cli("info", tmp_path / "e.h5", "--json").stdout)["failed"] == {
        huge: "skipped: invalid character '1' at residue 3 (--invalid-policy skip)"}


def test_an_id_of_150_characters_is_named_by_its_first_100_wherever_export_and_info_name_it(tmp_path, run_cli):
    """An id longer than 100 characters (shorter than the 250 any message is cut to) is shown by
    its first 100 and its length, as docs/troubleshooting.md says: given twice in --ids, missing
    after failing in embed, and as a group info does not read."""
    long_id = "L" * 150
    shown = f"{'L' * 100}... (150 characters)"
    (tmp_path / "in.fa").write_text(f">{long_id}\nMK1V\n>ok\nMKV\n")
    assert run_cli("embed", tmp_path / "in.fa", "-m", "onehot", "--invalid-policy", "skip", "-o",
                   tmp_path / "e.h5").exit_code == 0
    (tmp_path / "ids.txt").write_text(f"ok\n{long_id}\n")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "ids.txt", "-o", tmp_path / "o.tsv")
    assert done.exit_code == 1 and f"(first: {shown}); failed in embed: {shown}: skipped" in done.stderr, done.stderr
    (tmp_path / "ids.txt").write_text(f"{long_id}\n{long_id}\n")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "ids.txt", "-o", tmp_path / "o.tsv")
    assert done.exit_code == 1 and f"id '{'L' * 100}...' (150 characters) is given twice" in done.stderr, done.stderr
    with h5py.File(tmp_path / "hand.h5", "w") as f:
        f[f"{long_id}/1-300"] = np.ones((3, 2), dtype=np.float32)
        f["P69905"] = np.zeros((4, 2), dtype=np.float32)
    done = run_cli("info", tmp_path / "hand.h5")
    assert done.exit_code == 0 and f"not proteins (ids with '/' written as they were?): {shown}\n" in done.stdout, (
        done.stdout)


def test_fastq_given_to_ids_is_told_by_its_first_three_lines_blank_ones_left_out(tmp_path, run_cli):
    """An --ids FASTQ is told by its first three non-blank lines ('@' header, bases, '+'): one that
    starts with a blank line is FASTQ all the same, and a list of three ids starting with '@'
    (no '+' line) is a list."""
    _write(tmp_path / "e.h5", _proteins())
    (tmp_path / "reads.fq").write_text("\n@r1\nMKTAY\n\n+\nIIIII\n")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "reads.fq", "-o", tmp_path / "o.tsv")
    assert done.exit_code == 1 and "the file looks like FASTQ" in done.stderr, done.stderr
    (tmp_path / "ids.txt").write_text("@a\ne\n@b\n")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "ids.txt", "-o", tmp_path / "o.tsv")
    assert done.exit_code == 1 and "2 proteins of the 3 it names are not in" in done.stderr, done.stderr


def test_esm_refusing_a_full_folder_leaves_no_directory_handle_open(tmp_path, run_cli):
    """The not-empty check read one entry of os.scandir and left the iterator open: a
    ResourceWarning, and a directory handle held until the collector ran (a notebook's loop)."""
    import gc
    import warnings

    _write(tmp_path / "e.h5", _proteins())
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.pt").write_bytes(b"another run's")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        done = run_cli("export", tmp_path / "e.h5", "--format", "esm", "-o", tmp_path / "full")
        gc.collect()
    assert done.exit_code == 2 and "a folder that is not empty" in done.stderr
    assert not [w for w in caught if issubclass(w.category, ResourceWarning) and "scandir" in str(w.message)]


def test_info_names_the_part_of_an_embed_part_run_and_not_of_a_whole_run(tmp_path, run_cli):
    """`embed --part K/N` records its part; info says it (a job array's output told from the
    whole input's), and says nothing of a part for a run over the whole input."""
    from protrans_cli.embed import EmbedOptions, embed

    (tmp_path / "a.fa").write_text("".join(f">p{i}\nMKTAYIAK{AA[i]}\n" for i in range(6)))
    for name, part in (("part.h5", "2/3"), ("whole.h5", None)):
        embed(tmp_path / "a.fa", tmp_path / name, EmbedOptions(model="onehot", threads=1, part=part))
    done = run_cli("info", tmp_path / "part.h5")
    assert done.exit_code == 0 and "\npart:          2/3\n" in done.stdout, done.stdout
    done = run_cli("info", tmp_path / "whole.h5")
    assert done.exit_code == 0 and "\npart:" not in done.stdout, done.stdout


def test_a_table_format_into_an_existing_folder_is_refused_and_the_folder_left_alone(tmp_path, run_cli):
    """-o FOLDER with --format tsv (or csv, npz): a usage error naming the folder, not a write
    into it or an IsADirectoryError; the folder keeps what it held."""
    _write(tmp_path / "e.h5", _proteins())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "kept.txt").write_text("x")
    for fmt in ("tsv", "npz"):
        done = run_cli("export", tmp_path / "e.h5", "--format", fmt, "-o", tmp_path / "out")
        assert done.exit_code == 2 and done.stderr.count("\n") == 1, done.stderr
        assert f"-o {tmp_path / 'out'}: is a folder: a {fmt} output needs a file name" in done.stderr, done.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["kept.txt"]


def test_esm_per_protein_of_a_file_of_residue_rows_alone_is_their_mean_said_once(tmp_path, run_cli):
    """--format esm --per-protein of a file without per-protein vectors: each .pt file's
    mean_representations is the mean of its residue rows (as embed's), and stderr says so."""
    proteins = _proteins()
    arrays = _write(tmp_path / "e.h5", proteins, kinds=("per_residue",))
    done = run_cli("export", tmp_path / "e.h5", "--format", "esm", "--per-protein", "-o", tmp_path / "esm")
    assert done.exit_code == 0, done.stderr
    assert done.stderr.count("per-residue embeddings only; each protein's vector is the mean of its residues") == 1
    got = _esm(tmp_path / "esm")
    for ident, (rows, _) in arrays.items():
        entry = got[escape_key(ident) + ".pt"]
        assert set(entry) == {"label", "mean_representations"}
        np.testing.assert_allclose(entry["mean_representations"][-1].numpy(), rows.astype(np.float64).mean(axis=0),
                                   rtol=1e-6)


def test_an_ids_fasta_starting_with_a_byte_order_mark_line_and_blank_lines_is_read_as_fasta(tmp_path, run_cli):
    """A byte-order mark on a line of its own, then blank lines, then the records (as the FASTA
    reader and prep skip them): the file was read as a list of ids, '>e' and 'MK' among them, and
    refused as naming proteins the embeddings lack."""
    proteins = _proteins()
    _write(tmp_path / "e.h5", proteins)
    (tmp_path / "ids.fa").write_bytes(b"\xef\xbb\xbf\n\n>e\n" + proteins["e"].encode() + b"\n>b,comma\n"
                                      + proteins["b,comma"].encode() + b"\n")
    done = run_cli("export", tmp_path / "e.h5", "--ids", tmp_path / "ids.fa",
                   "--per-protein", "-o", tmp_path / "o.tsv")
    assert done.exit_code == 0, done.stderr
    assert [row[0] for row in _table((tmp_path / "o.tsv").read_text(), "\t")[1:]] == ["e", "b,comma"]


def test_a_probabilities_file_is_not_written_as_esm_pt_files(tmp_path, run_cli):
    """--format esm of predict --probabilities' file: a usage error saying the .pt files hold
    embeddings, and no folder made (a table or an .npz of it is written)."""
    _probabilities_file(tmp_path / "p.h5", {"a": 3, "b": 2})
    done = run_cli("export", tmp_path / "p.h5", "--format", "esm", "-o", tmp_path / "esm")
    assert done.exit_code == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "holds predict --probabilities' probabilities: esm-extract's .pt files hold embeddings" in done.stderr
    assert not (tmp_path / "esm").exists()


def test_per_protein_arrays_of_two_axes_without_layers_are_refused_not_exported_as_rows(tmp_path, run_cli):
    """A hand-made file whose per_protein datasets are (2, D) and that records no `layers`: the
    first axis could be layers or anything else, so export refuses it naming the shape (exit 1,
    no output), rather than guessing."""
    with h5py.File(tmp_path / "hand.h5", "w") as f:
        for ident in ("A", "B"):
            f.create_dataset(f"per_protein/{ident}", data=np.ones((2, 4), dtype=np.float32))
    done = run_cli("export", tmp_path / "hand.h5", "-o", tmp_path / "o.tsv")
    assert done.exit_code == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "holds 2x4 arrays where per-protein (D,) vectors are read, and no `layers` attribute says" in done.stderr
    assert not (tmp_path / "o.tsv").exists()


def test_info_keeps_a_failed_id_with_a_line_separator_on_its_line(tmp_path, run_cli):
    """`info`'s lines escaped control characters but not Unicode's line and paragraph separators
    nor format characters: a failed id holding U+2028 split the `failed:` line for a log viewer
    or str.splitlines, and U+202E showed the rest of it reversed. Escaped as messages escape them."""
    (tmp_path / "in.fa").write_text(">a\u2028b\u202ec\nMK1V\n>ok\nMKV\n", encoding="utf-8")
    assert run_cli("embed", tmp_path / "in.fa", "-m", "onehot", "--invalid-policy", "skip", "-o",
                   tmp_path / "e.h5").exit_code == 0
    text = run_cli("info", tmp_path / "e.h5").stdout
    assert "failed:        1 (a\\u2028b\\u202ec: skipped:" in text
    assert "\u2028" not in text and "\u202e" not in text


def _dataset_reads(monkeypatch) -> list[str]:
    """The names of the datasets read from here on (h5py's Dataset.__getitem__), one per read."""
    reads = []
    read = h5py.Dataset.__getitem__

    def counted(self, selection, *args, **kwargs):
        reads.append(self.name)
        return read(self, selection, *args, **kwargs)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counted)
    return reads


def test_a_stacked_file_is_exported_a_block_of_rows_at_a_time(tmp_path, run_cli, monkeypatch):
    """A stacked file's vectors are read a block of rows at a time, not a row a protein (an h5py
    read each: about 60 us a protein, most of an export of a million), in the file's order and in an
    --ids file's that follows it; an --ids file in another order is still exported in its own."""
    from protrans_cli.io import stacked

    proteins = {f"p{i:03d}": "MKV" for i in range(300)}
    _write(tmp_path / "s.h5", proteins, kinds=("per_protein",), layout="stacked", dtype=np.float16)
    _write(tmp_path / "g.h5", proteins, kinds=("per_protein",), dtype=np.float16)
    monkeypatch.setattr(stacked, "BLOCK_ROWS", 64)
    reads = _dataset_reads(monkeypatch)
    reversed_ids = tmp_path / "reversed.txt"
    reversed_ids.write_text("".join(f"{ident}\n" for ident in reversed(proteins)))
    odd_ids = tmp_path / "odd.txt"
    odd_ids.write_text("".join(f"{ident}\n" for ident in list(proteins)[1::2]))
    for name, extra in (("all", []), ("odd", ["--ids", odd_ids]), ("reversed", ["--ids", reversed_ids])):
        for suffix in ("tsv", "npz"):
            reads.clear()
            done = run_cli("export", tmp_path / "s.h5", *extra, "-o", tmp_path / f"s.{name}.{suffix}")
            assert done.exit_code == 0, done.stderr
            if name != "reversed":
                assert reads.count("/per_protein") == 5, (name, suffix)  # (300 rows, 64 a block)
            assert run_cli("export", tmp_path / "g.h5", *extra, "-o", tmp_path / f"g.{name}.{suffix}").exit_code == 0
        assert (tmp_path / f"s.{name}.tsv").read_text() == (tmp_path / f"g.{name}.tsv").read_text()
        with np.load(tmp_path / f"s.{name}.npz") as ours, np.load(tmp_path / f"g.{name}.npz") as theirs:
            assert (ours["ids"] == theirs["ids"]).all() and (ours["embeddings"] == theirs["embeddings"]).all()


def test_info_counts_a_stacked_files_proteins_by_its_rows_not_its_ids(tmp_path, run_cli, monkeypatch):
    """`info` of a stacked file reads no column (its rows are its proteins): it read, checked and
    escaped every id to count them, 7 s for a million proteins where it is to answer at once."""
    _write(tmp_path / "s.h5", _proteins(40), kinds=("per_protein",), layout="stacked")
    reads = _dataset_reads(monkeypatch)
    done = run_cli("info", tmp_path / "s.h5", "--json")
    assert done.exit_code == 0, done.stderr
    assert json.loads(done.stdout)["proteins"] == {"per_protein": 40}
    assert reads == []
