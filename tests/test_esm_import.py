"""`protrans import-esm`: esm-extract's LABEL.pt files into the file `protrans embed` writes.

The .pt files are made here with torch.save in esm-extract's structure (fair-esm 2.0.0
scripts/extract.py); the independent reference is tests/data/esm_reference, esm-extract's own
rows and means of a tiny ESM-2, imported and compared with `protrans embed` on that model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader, sequence_checksum, truncated_by

REFERENCE = Path(__file__).parent / "data" / "esm_reference"


def _save(folder: Path, label: str, rows=None, means=None, **more) -> Path:
    """One esm-extract output: `rows`/`means` {layer: array}."""
    obj = {"label": label, **more}
    if rows is not None:
        obj["representations"] = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in rows.items()}
    if means is not None:
        obj["mean_representations"] = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in means.items()}
    path = folder / f"{label}.pt"  # (as esm-extract: a label with '/' makes a folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


SEQS = {"P1": "MKTAYIAKQR", "sp|Q2/x": "MAAG", "P3": "MKVL"}
HEADERS = {"P1": "P1 first protein", "sp|Q2/x": "sp|Q2/x second", "P3": "P3"}


@pytest.fixture
def extracted(tmp_path):
    """esm-extract --repr_layers 1 2 --include per_tok mean of SEQS (2 layers, D = 4)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "esm_out"
    arrays = {}
    for ident, seq in SEQS.items():
        rows = {k: rng.normal(size=(len(seq), 4)).astype(np.float32) for k in (1, 2)}
        means = {k: v.mean(0) + 0.5 for k, v in rows.items()}  # (not the rows' mean: shows which is taken)
        _save(folder, HEADERS[ident], rows, means)
        arrays[ident] = (rows, means)
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">{HEADERS[i]}\n{s}\n" for i, s in SEQS.items()))
    return folder, fasta, arrays


def _read(out):
    with EmbeddingsReader(out) as r:
        got = {kind: {i: (a, dict(meta)) for i, a, meta in r.items(kind)} for kind in r.kinds}
        return got, dict(r.attrs), r.layout


def _ok(result):
    assert result.exit_code == 0, result.stderr
    return result


def test_rows_means_and_attributes_round_trip(run_cli, tmp_path, extracted):
    folder, fasta, arrays = extracted
    out = tmp_path / "e.h5"
    r = _ok(run_cli("import-esm", folder, "-o", out, "--fasta", fasta))
    assert "3 proteins (layer 2)" in r.stderr
    got, attrs, layout = _read(out)
    assert layout == "grouped" and set(got) == {PER_RESIDUE, PER_PROTEIN}
    compared = 0
    for ident, (rows, means) in arrays.items():
        row, meta = got[PER_RESIDUE][ident]
        np.testing.assert_array_equal(row, rows[2])
        np.testing.assert_array_equal(got[PER_PROTEIN][ident][0], means[2])  # esm-extract's mean, as saved
        assert meta["id"] == ident and meta["header"] == HEADERS[ident] and meta["length"] == len(SEQS[ident])
        assert meta["checksum"] == sequence_checksum(SEQS[ident]) and "truncated_from" not in meta
        compared += 1
    assert compared == 3
    with h5py.File(out) as f:
        assert "sp|Q2%2Fx" in f[PER_RESIDUE]  # escaped as embed escapes ids
    assert attrs["model"] == "esm-extract" and attrs["family"] == "esm" and attrs["layout"] == "grouped"
    assert list(np.atleast_1d(attrs["layers"])) == [-1] and attrs["num_hidden_states"] == 3
    assert attrs["pooling"] == "mean over residue tokens (special tokens excluded)"
    assert attrs["storage_dtype"] == "float32" and attrs["embedding_dim"] == 4 and attrs["failed"] == "{}"
    assert attrs["max_length"] == 1022 and attrs["long_policy"] == "truncate"
    assert attrs["command_line"].startswith("protrans") and attrs["protrans_version"]  # (sys.argv: the CLI's)


def test_several_layers_a_model_and_means_from_rows(run_cli, tmp_path, extracted):
    folder, _, arrays = extracted
    for path in folder.rglob("*.pt"):  # per_tok only: the means are the rows'
        obj = torch.load(path, weights_only=True)
        del obj["mean_representations"]
        torch.save(obj, path)
    out = tmp_path / "e.h5"
    # (a fair-esm name, not catalogued: its width is not checked; esm2_t6_8M_UR50D's 320 is, below)
    _ok(run_cli("import-esm", folder, "-o", out, "--layer", "1", "--layer", "2", "-m", "esm1_t6_43M_UR50S",
                "--per-protein", "--storage-dtype", "float16"))
    got, attrs, _ = _read(out)
    assert set(got) == {PER_PROTEIN} and attrs["model"] == "esm1_t6_43M_UR50S"
    # esm1_t6: 6 blocks, 7 hidden states; layers 1 and 2 are -6 and -5, in the order given
    assert list(np.atleast_1d(attrs["layers"])) == [-6, -5] and attrs["num_hidden_states"] == 7
    for ident, (rows, _) in arrays.items():
        vec, meta = got[PER_PROTEIN][ident]
        assert vec.shape == (2, 4) and vec.dtype == np.float16 and "checksum" not in meta
        np.testing.assert_allclose(vec, [rows[1].mean(0), rows[2].mean(0)], atol=2e-3)
        assert meta["length"] == len(SEQS[ident])  # from the rows


@pytest.mark.parametrize("layout", ["flat", "stacked"])
def test_other_layouts_read_as_embeds(run_cli, tmp_path, extracted, layout):
    folder, fasta, arrays = extracted
    out = tmp_path / "e.h5"
    _ok(run_cli("import-esm", folder, "-o", out, "--per-protein", "--layout", layout, "--fasta", fasta))
    with EmbeddingsReader(out) as r:
        ids, matrix = r.matrix(PER_PROTEIN)
        assert r.layout == layout and sorted(ids) == sorted(SEQS)
        for ident, vec in zip(ids, matrix):
            np.testing.assert_array_equal(vec, arrays[ident][1][2])
        assert r.checksums(PER_PROTEIN) == {sequence_checksum(s): i for i, s in SEQS.items()}
    # no kind named: the per-protein vectors alone (the rows are the grouped layout's default only)
    _ok(run_cli("import-esm", folder, "-o", tmp_path / "d.h5", "--layout", layout, "--fasta", fasta))
    with EmbeddingsReader(tmp_path / "d.h5") as r:
        assert r.layout == layout and tuple(r.kinds) == (PER_PROTEIN,)


def test_fit_and_merge_read_the_imported_file(run_cli, tmp_path, extracted):
    folder, fasta, _ = extracted
    out = tmp_path / "e.h5"
    _ok(run_cli("import-esm", folder, "-o", out, "--per-protein", "--fasta", fasta))
    labels = tmp_path / "l.csv"
    labels.write_text("id,label\nP1,A\nsp|Q2/x,B\nP3,A\n")
    _ok(run_cli("fit", "protein", "--embeddings", out, "--labels", labels, "--max-epochs", "1", "--bootstrap", "10",
                "--no-plots", "-j", "1", "-o", tmp_path / "head"))
    _ok(run_cli("predict", tmp_path / "head", "--embeddings", out, "-o", tmp_path / "p.csv"))
    _ok(run_cli("merge", out, "-o", tmp_path / "m.h5", "--layout", "stacked"))


def test_truncated_proteins_are_recorded_as_embeds_truncate_policy(run_cli, tmp_path):
    folder = tmp_path / "esm_out"
    seq = "MKTAYIAKQR"
    rows = np.arange(6 * 2, dtype=np.float32).reshape(6, 2)
    _save(folder, "long", {3: rows}, {3: rows.mean(0)})
    fasta = tmp_path / "in.fa"
    fasta.write_text(f">long\n{seq}\n")
    out = tmp_path / "e.h5"
    r = _ok(run_cli("import-esm", folder, "-o", out, "--fasta", fasta, "--truncation-seq-length", "6"))
    assert "1 truncated by esm-extract" in r.stderr
    got, attrs, _ = _read(out)
    meta = got[PER_RESIDUE]["long"][1]
    assert meta["length"] == 6 and meta["truncated_from"] == 10 and meta["checksum"] == sequence_checksum(seq[:6])
    assert attrs["max_length"] == 6
    # fit's and predict's messages say who cut it short (they said "truncated by embed")
    with EmbeddingsReader(out) as reader:
        assert truncated_by(reader.attrs) == "esm-extract (--truncation_seq_length)"
    # the default 1022: 6 rows of a 10-residue sequence is another sequence
    r = run_cli("import-esm", folder, "-o", tmp_path / "f.h5", "--fasta", fasta)
    assert r.exit_code == 1 and "long.pt: holds 6 rows; its sequence" in r.stderr and "10 residues" in r.stderr
    assert not list(tmp_path.glob("f.h5*"))


def test_means_alone_without_a_fasta_have_no_lengths_in_a_stacked_file_either(run_cli, tmp_path):
    """esm-extract --include mean, imported without --fasta: no residue count is known. A stacked
    file's columns hold 0 and "" for it; they were read back as a `length` of 0 and a `checksum`
    of "" (`info --residues`: "0 in 2 proteins", and merge wrote those attributes into a grouped
    file), where the grouped import has none."""
    from protrans_cli.export import info

    folder = tmp_path / "esm_out"
    for label in ("P1", "P2"):
        _save(folder, label, means={2: np.ones(4, dtype=np.float32)})
    for layout in ("stacked", "grouped"):
        _ok(run_cli("import-esm", folder, "-o", tmp_path / f"{layout}.h5", "--layout", layout))
        assert info(tmp_path / f"{layout}.h5", residues=True)["residues"] == {"counted": 0}
    _ok(run_cli("merge", tmp_path / "stacked.h5", "-o", tmp_path / "m.h5", "--layout", "grouped"))
    for name in ("stacked.h5", "m.h5"):
        got, _, _ = _read(tmp_path / name)
        assert {i: meta for i, (_, meta) in got[PER_PROTEIN].items()} == {"P1": {"id": "P1", "header": "P1"},
                                                                         "P2": {"id": "P2", "header": "P2"}}
        with EmbeddingsReader(tmp_path / name) as reader:
            assert reader.facts(reader.key_for("P1", PER_PROTEIN), PER_PROTEIN) == (None, None, None)
    assert info(tmp_path / "m.h5", residues=True)["residues"] == {"counted": 0}


def test_a_length_mismatch_or_a_protein_missing_from_the_fasta_writes_nothing(run_cli, tmp_path, extracted):
    folder, fasta, _ = extracted
    fasta.write_text(fasta.read_text().replace("MKVL", "MKVLA"))
    out = tmp_path / "e.h5"
    r = run_cli("import-esm", folder, "-o", out, "--fasta", fasta)
    assert r.exit_code == 1 and "P3.pt: holds 4 rows; its sequence" in r.stderr and r.stderr.count("\n") == 1
    fasta.write_text(">P1\nMKTAYIAKQR\n")
    r = run_cli("import-esm", folder, "-o", out, "--fasta", fasta)
    assert r.exit_code == 1 and "is not in" in r.stderr
    assert not list(tmp_path.glob("e.h5*")) and not list(tmp_path.glob(".e.h5*"))


def test_duplicate_ids_are_refused_naming_both_files(run_cli, tmp_path, extracted):
    folder, _, arrays = extracted
    _save(folder, "P1 another description", arrays["P1"][0], arrays["P1"][1])
    r = run_cli("import-esm", folder, "-o", tmp_path / "e.h5")
    assert r.exit_code == 1 and "protein id 'P1'" in r.stderr
    assert "P1 another description.pt" in r.stderr and "P1 first protein.pt" in r.stderr
    assert not list(tmp_path.glob("e.h5*"))


def test_a_pickle_with_other_objects_is_refused_unread(run_cli, tmp_path, extracted):
    import argparse

    folder, _, _ = extracted
    # (an object of a class that weights_only does not allow: fair-esm's own checkpoints hold one)
    torch.save({"label": "evil", "args": argparse.Namespace(a=1)}, folder / "evil.pt")
    r = run_cli("import-esm", folder, "-o", tmp_path / "e.h5")
    assert r.exit_code == 1 and "evil.pt: not an esm-extract output" in r.stderr
    assert "never unpickles" in r.stderr and r.stderr.count("\n") == 1
    # (a Namespace is what fair-esm's model files pickle: the other import command is named)
    assert f"it looks like a fair-esm model checkpoint, which protrans import-model {folder / 'evil.pt'} -o DIR" \
        in r.stderr
    (folder / "evil.pt").write_bytes(b"not torch at all")
    r = run_cli("import-esm", folder / "evil.pt", "-o", tmp_path / "e.h5")
    assert r.exit_code == 1 and "evil.pt: not an esm-extract output" in r.stderr
    torch.save([torch.zeros(3)], folder / "evil.pt")
    r = run_cli("import-esm", folder / "evil.pt", "-o", tmp_path / "e.h5")
    assert r.exit_code == 1 and "holds a list" in r.stderr
    assert not list(tmp_path.glob("e.h5*"))


def test_an_embeddings_or_fasta_file_given_as_a_pt_file_is_named(run_cli, tmp_path, extracted):
    """An HDF5 (embed's output, or import-esm's own) or the FASTA given for esm-extract's .pt files
    was "it holds objects other than tensors and plain values, which import-esm never unpickles":
    torch's unpickler had read its first byte as an opcode. What the file is is said instead."""
    folder, fasta, _ = extracted
    h5 = tmp_path / "e.h5"
    assert run_cli("import-esm", folder, "-o", h5).exit_code == 0
    (tmp_path / "empty.pt").write_bytes(b"")
    for given, said in ((h5, "it is an HDF5 file, such as embed writes: read it as it is (protrans info, export, "
                         "merge), with no import"),
                        (fasta, "it is a FASTA file: embed its proteins with protrans embed FASTA -m "
                         "esm2_t33_650M_UR50D"),
                        (tmp_path / "empty.pt", "the file is empty")):
        r = run_cli("import-esm", given, "-o", tmp_path / "out.h5")
        assert r.exit_code == 1 and r.stderr == f"protrans: error: {given}: not an esm-extract output: {said}\n", \
            r.stderr
        assert not list(tmp_path.glob("out.h5*"))


def test_missing_representations_layers_and_widths_name_the_file(run_cli, tmp_path, extracted):
    folder, _, arrays = extracted
    _save(folder, "P9 means only", None, {2: np.zeros(4)})
    r = run_cli("import-esm", folder, "-o", tmp_path / "e.h5", "--per-residue")
    assert r.exit_code == 1 and "P9 means only.pt: has no 'representations'" in r.stderr
    r = run_cli("import-esm", folder, "-o", tmp_path / "e.h5", "--layer", "1", "--per-protein")
    assert r.exit_code == 1 and "P9 means only.pt: has no layer 1 in 'mean_representations'" in r.stderr
    (folder / "P9 means only.pt").unlink()
    _save(folder, "P9 wide", {2: np.zeros((3, 5))}, {2: np.zeros(5)})
    r = run_cli("import-esm", folder, "-o", tmp_path / "e.h5")
    assert r.exit_code == 1 and "P9 wide.pt: holds embeddings of width 5" in r.stderr
    r = run_cli("import-esm", folder, "-o", tmp_path / "e.h5", "--layer", "7")
    assert r.exit_code == 2 and "--layer 7" in r.stderr
    assert not list(tmp_path.glob("e.h5*"))


def test_pt_files_that_are_not_esm_extracts_are_refused_naming_the_file_and_what_is_wrong(run_cli, tmp_path):
    """A model's state dict, a 'representations' that is no {layer: tensor} dict, integer values, a
    label without an id, layers of different widths or row counts, more rows than esm-extract's
    cut: each a one-line error naming the file, and no output."""
    rows = torch.zeros(3, 4)
    both = ("--layer", "1", "--layer", "2")
    cases = [
        ({"weight": rows}, (), "not an esm-extract output: no 'label' string"),
        ({"label": "Q", "representations": [rows]}, (), "its 'representations' is not esm-extract's {layer number"),
        ({"label": "Q", "representations": {1: rows.long()}}, (), "its 'representations' layer 1 holds torch.int64"),
        ({"label": " ", "representations": {1: rows}}, (), "its label ' ' has no id (the header's first word)"),
        ({"label": "Q", "representations": {1: rows, 2: torch.zeros(3, 5)}}, both, "its layers have different widths"),
        ({"label": "Q", "representations": {1: rows, 2: torch.zeros(2, 4)}}, both,
         "its layers hold different numbers of rows (2, 3)"),  # (a list's repr, "([2, 3])", was shown)
    ]
    out = tmp_path / "e.h5"
    for obj, layers, message in cases:
        torch.save(obj, tmp_path / "x.pt")
        r = run_cli("import-esm", tmp_path / "x.pt", "-o", out, *layers)
        assert r.exit_code == 1 and f"x.pt: {message}" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not list(tmp_path.glob("e.h5*"))
    torch.save({"label": "Q", "representations": {1: rows}}, tmp_path / "x.pt")
    r = run_cli("import-esm", tmp_path / "x.pt", "-o", out, "--truncation-seq-length", "2")
    assert r.exit_code == 1 and "x.pt: holds 3 rows, more than --truncation-seq-length 2: give the value" in r.stderr
    assert not list(tmp_path.glob("e.h5*"))


@pytest.mark.parametrize("data", [b"hello world\n", b"label,representations\nP1,0.1\n", b"\x80\x02}q\x00(X"],
                         ids=["text", "csv", "cut-pickle"])
def test_a_foreign_or_cut_file_named_pt_is_one_line_naming_it(run_cli, tmp_path, data):
    # (a text file named .pt: torch's weights-only unpickler read its 'h' as a memo lookup, a
    # KeyError traceback, in the embeddings' import and the contact maps' alike)
    (tmp_path / "x.pt").write_bytes(data)
    for extra in ((), ("--contacts",)):
        r = run_cli("import-esm", tmp_path / "x.pt", "-o", tmp_path / "e.h5", *extra)
        assert r.exit_code == 1 and "Traceback" not in r.stderr, r.stderr
        assert "x.pt: not an esm-extract output" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not list(tmp_path.glob("e.h5*"))

def test_inputs_missing_named_twice_or_the_output_and_a_fasta_of_bad_records(run_cli, tmp_path, extracted):
    folder, fasta, _ = extracted
    out = tmp_path / "e.h5"
    one = folder / "P3.pt"
    r = run_cli("import-esm", tmp_path / "nothere", "-o", out)
    assert r.exit_code == 1 and "nothere: no such file or directory" in r.stderr
    # a file given and found in its directory too: said how each named it (it said "P3.pt: named
    # twice (also as P3.pt)")
    r = run_cli("import-esm", folder, one, "-o", out)
    assert r.exit_code == 2 and f"P3.pt: named twice (in {folder} and as {one})" in r.stderr
    _ok(run_cli("import-esm", folder, "-o", out))
    before = out.read_bytes()
    r = run_cli("import-esm", out, "-o", out, "--force")
    assert r.exit_code == 2 and "e.h5: is also the output" in r.stderr and out.read_bytes() == before
    twice = tmp_path / "twice.fa"
    twice.write_text(fasta.read_text() + ">P3\nMKVL\n")
    r = run_cli("import-esm", folder, "-o", tmp_path / "f.h5", "--fasta", twice)
    assert r.exit_code == 1 and "twice.fa:7: id 'P3' is in the FASTA twice" in r.stderr
    bad = tmp_path / "bad.fa"
    bad.write_text(fasta.read_text().replace("MKVL", "MK1L"))
    r = run_cli("import-esm", folder, "-o", tmp_path / "f.h5", "--fasta", bad)
    assert r.exit_code == 1 and "P3.pt: protein 'P3': its sequence in" in r.stderr
    assert "is refused (invalid character '1' at residue 3)" in r.stderr
    assert not list(tmp_path.glob("f.h5*"))



def test_a_fasta_header_with_a_nul_byte_stops_only_an_import_of_its_protein(run_cli, tmp_path, extracted):
    """--fasta holding a record no .pt file is of whose header has a NUL byte (a damaged file):
    the import goes on, as beside a record with an invalid sequence (the whole FASTA was refused
    for it); an import of that protein is refused, naming the record by its line, and writes nothing."""
    folder, fasta, _ = extracted
    text = fasta.read_bytes()
    extra = tmp_path / "extra.fa"
    extra.write_bytes(text + b">b\x00y damaged\nMKVL\n")
    r = _ok(run_cli("import-esm", folder, "-o", tmp_path / "e.h5", "--fasta", extra))
    assert "3 proteins (layer 2)" in r.stderr and "NUL" not in r.stderr, r.stderr
    for header, shown in ((b">P3 damaged\x00", "'P3'"), (b">P3\x00\x00", "'P3\\x00\\x00'")):  # (after the id; in it)
        damaged = tmp_path / "damaged.fa"
        damaged.write_bytes(text.replace(b">P3", header))
        r = run_cli("import-esm", folder, "-o", tmp_path / "f.h5", "--fasta", damaged)
        assert r.exit_code == 1 and r.stderr == (f"protrans: error: {damaged}:5, record {shown}: the header holds a NUL "
                                                 "byte (a damaged file?)\n"), r.stderr
        assert not list(tmp_path.glob("f.h5*"))

def test_empty_input_and_stdout_are_refused(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_cli("import-esm", tmp_path / "empty", "-o", tmp_path / "e.h5")
    assert r.exit_code == 1 and "holds no .pt files" in r.stderr
    r = run_cli("import-esm", tmp_path / "empty", "-o", "-")
    assert r.exit_code == 2 and "cannot go to stdout" in r.stderr


def test_an_entry_named_pt_that_is_no_file_is_passed_over_and_said(run_cli, tmp_path, extracted):
    """A FIFO (or a folder) named X.pt in the directory was passed over without a word."""
    folder, _, _ = extracted
    os.mkfifo(folder / "ZZZ.pt")
    r = run_cli("import-esm", folder, "-o", tmp_path / "f.h5")
    assert r.exit_code == 0, r.stderr
    assert f"{folder}: 1 entry named *.pt that is not a regular file, passed over (first: {folder / 'ZZZ.pt'})" \
        in r.stderr, r.stderr
    with h5py.File(tmp_path / "f.h5") as f:
        assert len(f["per_residue"]) == len(SEQS)


def test_an_existing_output_is_refused_without_force(run_cli, tmp_path, extracted):
    folder, _, _ = extracted
    out = tmp_path / "e.h5"
    out.write_bytes(b"keep me")
    r = run_cli("import-esm", folder, "-o", out)
    assert r.exit_code == 2 and "exists: give --force" in r.stderr and out.read_bytes() == b"keep me"
    out.unlink()
    _ok(run_cli("import-esm", folder, "-o", out))
    _ok(run_cli("import-esm", folder, "-o", out, "--force", "--per-protein"))
    assert _read(out)[1]["kinds"] == "per_protein"


def test_an_output_naming_the_fasta_is_refused_as_an_input_not_as_an_existing_output(run_cli, tmp_path, extracted):
    """`import-esm DIR --fasta in.fa -o in.fa` said "exists: give --force to replace it" (of the
    user's FASTA); it is the input, refused as embed refuses `-o` naming its FASTA."""
    folder, fasta, _ = extracted
    before = fasta.read_bytes()
    link = tmp_path / "link.fa"
    link.symlink_to(fasta)
    for extra in ([], ["--force"], ["--contacts"]):
        for out in (fasta, link):
            r = run_cli("import-esm", folder, "--fasta", fasta, "-o", out, *extra)
            assert r.exit_code == 2 and "is also the --fasta input" in r.stderr, r.stderr
            assert len(r.stderr.strip().splitlines()) == 1 and fasta.read_bytes() == before


def test_predict_on_a_pt_file_points_to_import_esm(run_cli, tmp_path, extracted):
    folder, _, _ = extracted
    from protrans_cli.errors import InputError

    with pytest.raises(InputError, match="protrans import-esm"):
        EmbeddingsReader(next(folder.glob("P1*.pt")))


# --- the independent reference: esm-extract's own outputs of a tiny ESM-2 ---------------

PROTEINS = ["rare", "one", "lower", "mixed_5", "mixed_20", "mixed_40"]  # ("long": the fixture keeps 8 of its rows)


def test_importing_esm_extracts_outputs_gives_what_embed_gives(run_cli, tmp_path):
    from safetensors.numpy import load_file

    reference = load_file(REFERENCE / "reference.safetensors")
    folder = tmp_path / "esm_out"
    for pid in PROTEINS:  # esm-extract --repr_layers 0 1 2 --include per_tok mean
        _save(folder, pid, {k: reference[f"rows/{pid}/{k}"] for k in range(3)},
              {k: reference[f"mean/{pid}/{k}"] for k in range(3)})
    _save(folder, "long", None, {k: reference[f"long_truncated_mean/{k}"] for k in range(3)})
    model_dir = tmp_path / "esm2_tiny"
    shutil.copytree(REFERENCE, model_dir, ignore=shutil.ignore_patterns("reference.safetensors", "input.fa", "*.md"))
    outs = {}
    for what, args in (("embed", ("embed", REFERENCE / "input.fa", "-m", model_dir, "--device", "cpu", "-j", "1",
                                  "--max-length", "1022", "--long-policy", "truncate")),
                       ("import", ("import-esm", folder, "--fasta", REFERENCE / "input.fa")),
                       ):
        outs[what] = tmp_path / f"{what}.h5"
        _ok(run_cli(*args, "--per-protein", "--layer", "0", "--layer", "2", "-o", outs[what]))
    embedded, embed_attrs, _ = _read(outs["embed"])
    imported, import_attrs, _ = _read(outs["import"])
    assert sorted(imported[PER_PROTEIN]) == sorted(embedded[PER_PROTEIN]) == sorted([*PROTEINS, "long"])
    compared = 0
    for pid, (vec, meta) in embedded[PER_PROTEIN].items():
        got, got_meta = imported[PER_PROTEIN][pid]
        np.testing.assert_allclose(got, vec, atol=1e-5, rtol=0)
        assert {k: v for k, v in got_meta.items() if k != "computed"} == meta  # id, header, length, checksum, truncated_from
        compared += 1
    assert compared == 7 and imported[PER_PROTEIN]["long"][1]["truncated_from"] == 1100
    same = ("family", "layers", "num_hidden_states", "pooling", "embedding_dim", "storage_dtype", "layout", "kinds",
            "max_length", "long_policy", "part", "compute_dtype")
    assert {k: np.asarray(import_attrs[k]).tolist() for k in same} == \
           {k: np.asarray(embed_attrs[k]).tolist() for k in same}
    # per residue too, where the fixture holds every row
    _ok(run_cli("import-esm", folder / "rare.pt", folder / "mixed_40.pt", "--per-residue", "--layer", "-1",
                "-o", tmp_path / "rows.h5"))
    rows, _, _ = _read(tmp_path / "rows.h5")
    for pid in ("rare", "mixed_40"):
        np.testing.assert_array_equal(rows[PER_RESIDUE][pid][0], reference[f"rows/{pid}/2"])


def test_a_failure_while_writing_leaves_no_partial_file(tmp_path, extracted, monkeypatch):
    from protrans_cli import esm_import

    folder, _, _ = extracted
    real, calls = esm_import._write_entry, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(esm_import, "_write_entry", failing)
    with pytest.raises(OSError, match="disk went away"):
        esm_import.import_esm(folder, tmp_path / "e.h5")
    assert len(calls) == 2 and not [p for p in tmp_path.iterdir() if p.name != "esm_out" and p.suffix != ".fa"]


@pytest.mark.parametrize("kinds", [(), ("--per-protein",)])
def test_a_file_rewritten_between_the_passes_with_another_width_or_layers_writes_nothing(tmp_path, extracted,
                                                                                          monkeypatch, kinds):
    from protrans_cli import esm_import
    from protrans_cli.errors import InputError

    folder, _, _ = extracted
    real, calls = esm_import._write_entry, []
    rewrites = [lambda: _save(folder, "P3", {1: np.ones((4, 8)), 2: np.ones((4, 8))}, {1: np.ones(8), 2: np.ones(8)}),
                lambda: _save(folder, "P3", {1: np.ones((4, 4))}, {1: np.ones(4)})]  # width 8; layer 2 gone

    original = (folder / "P3.pt").read_bytes()
    for rewrite in rewrites:
        (folder / "P3.pt").write_bytes(original)

        def rewriting(*args, **kwargs):
            if not calls:
                rewrite()
            calls.append(1)
            return real(*args, **kwargs)

        calls.clear()
        monkeypatch.setattr(esm_import, "_write_entry", rewriting)
        per_protein = True if kinds else None
        with pytest.raises(InputError, match=r"P3\.pt: changed during the import \((another embedding width than 4|"
                                             r"other layers or shapes)\): import again$"):
            esm_import.import_esm(folder, tmp_path / "e.h5", per_protein=per_protein)
        assert not (tmp_path / "e.h5").exists() and not (tmp_path / "e.h5.partial").exists()


def test_a_plain_pickle_is_refused_in_one_line_without_torchs_warning(tmp_path):
    import pickle
    import warnings

    from protrans_cli.errors import InputError
    from protrans_cli.esm_import import load_pt

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(print, protocol=4))  # (torch warns of the protocol, on stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=r"evil\.pt: not an esm-extract output: it holds objects other than"):
            load_pt(tmp_path / "evil.pt")


def test_a_model_directory_gives_the_number_of_layers_and_the_width(run_cli, tmp_path, extracted):
    """-m DIR (a local ESM model, as embed takes it: `hf download ... --local-dir DIR` offline) was
    "a name with no number of layers": the highest layer in the files was taken as the model's
    last, so esm-extract --repr_layers 2 of a 5-block model was recorded as its last layer (-1 of
    3 hidden states), where embed's --layer 2 of DIR records -4 of 6 (merge refused the two)."""
    folder, _, _ = extracted
    model = tmp_path / "esm2_local"
    model.mkdir()
    config = {"model_type": "esm", "num_hidden_layers": 5, "hidden_size": 4}
    (model / "config.json").write_text(json.dumps(config))
    r = _ok(run_cli("import-esm", folder, "-o", tmp_path / "e.h5", "-m", model))
    assert "names no number of layers" not in r.stderr, r.stderr
    _, attrs, _ = _read(tmp_path / "e.h5")
    assert list(attrs["layers"]) == [2 - 6] and int(attrs["num_hidden_states"]) == 6
    # its width: a directory of another model's is refused, as a catalogued one's is
    (model / "config.json").write_text(json.dumps({**config, "hidden_size": 320}))
    r = run_cli("import-esm", folder, "-o", tmp_path / "f.h5", "-m", model)
    assert r.exit_code == 1 and "width 4, but -m " in r.stderr and "embeds in 320" in r.stderr, r.stderr


def test_a_catalogued_model_of_another_width_and_an_unknown_name(run_cli, tmp_path, extracted):
    """-m esm2_t6_8M_UR50D (320-d) over 4-d files was written as that model's; -m of a name with no
    number of layers was warned about as "no -m"."""
    folder, _, _ = extracted
    r = run_cli("import-esm", folder, "-o", tmp_path / "e.h5", "-m", "esm2_t6_8M_UR50D")
    assert r.exit_code == 1 and "width 4, but -m esm2_t6_8M_UR50D embeds in 320" in r.stderr
    assert not (tmp_path / "e.h5").exists() and "Traceback" not in r.stderr
    r = _ok(run_cli("import-esm", folder, "-o", tmp_path / "f.h5", "-m", "my_model"))
    assert "-m my_model names no number of layers" in r.stderr and "no -m naming" not in r.stderr
    # a catalogued checkpoint of another family: it was recorded as an ESM model's files, with a warning
    for args in (["-o", tmp_path / "g.h5"], ["--contacts", "-o", tmp_path / "g.h5"]):
        r = run_cli("import-esm", folder, *args, "-m", "prot_t5_xl_half")
        assert r.exit_code == 2 and r.stderr.strip().endswith(
            "-m prot_t5_xl_half is a t5 checkpoint; esm-extract runs ESM models: give -m the ESM model it ran "
            "(e.g. esm2_t33_650M_UR50D)"), r.stderr
        assert not (tmp_path / "g.h5").exists()


def test_a_model_with_fewer_layers_than_the_files_names_the_file_not_a_layer_never_given(run_cli, tmp_path,
                                                                                        extracted):
    # (-m of a 1-block model over files of layers 1 and 2 said "--layer 2: the model's layers are
    # 0 .. 1", exit 2, without any --layer)
    folder, _, _ = extracted
    r = run_cli("import-esm", folder, "-o", tmp_path / "e.h5", "-m", "esm2_t1_x")
    assert r.exit_code == 1 and "holds layer 2, but -m esm2_t1_x has layers 0 .. 1" in r.stderr
    assert "--layer 2" not in r.stderr and str(folder) in r.stderr
    assert not (tmp_path / "e.h5").exists() and "Traceback" not in r.stderr
    # (a --layer given is still the usage error it was)
    r = run_cli("import-esm", folder, "-o", tmp_path / "e.h5", "-m", "esm2_t1_x", "--layer", "2")
    assert r.exit_code == 2 and "--layer 2: the model's layers are 0 .. 1" in r.stderr

def test_two_names_of_one_layer_are_refused_as_embed_refuses_them(run_cli, tmp_path, extracted):
    # (--layer -1 --layer 2 of files whose last layer is 2 wrote layer 2 twice, `layers` [-1, -1])
    folder, _, _ = extracted
    r = run_cli("import-esm", folder, "-o", tmp_path / "e.h5", "--layer", "-1", "--layer", "2")
    assert r.exit_code == 2 and "--layer -1 and --layer 2 name one layer" in r.stderr, r.stderr
    assert not list(tmp_path.glob("e.h5*"))


def test_contacts_are_imported_into_the_file_protrans_contacts_writes(run_cli, tmp_path):
    """esm-extract --include contacts: each file's (L, L) map, written as `protrans contacts`
    writes it (here: fair-esm's own contacts of the reference proteins, saved as esm-extract saves
    them, against `protrans contacts` on the same model)."""
    from safetensors.numpy import load_file

    ref = load_file(REFERENCE / "reference.safetensors")
    seqs = {line[1:]: nxt for line, nxt in zip(*[iter((REFERENCE / "input.fa").read_text().split())] * 2)}
    folder = tmp_path / "esm_out"
    folder.mkdir()
    kept = [i for i in seqs if f"contacts/{i}" in ref]
    for ident in kept:
        torch.save({"label": ident, "contacts": torch.from_numpy(ref[f"contacts/{ident}"])}, folder / f"{ident}.pt")
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">{i}\n{seqs[i]}\n" for i in kept))
    out = tmp_path / "imported.h5"
    r = run_cli("import-esm", folder, "--contacts", "--fasta", fasta, "--storage-dtype", "float32", "-m",
                "esm2_t6_8M_UR50D", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert f"import-esm: {len(kept)} contact maps" in r.stderr
    # without a FASTA: no sequence, no checksum, but each map's length (its side), as with one
    r = run_cli("import-esm", folder, "--contacts", "-o", tmp_path / "bare.h5")
    assert r.exit_code == 0, r.stderr
    with h5py.File(tmp_path / "bare.h5") as f:
        for key in kept:
            assert f["contacts"][key].attrs["length"] == len(seqs[key]) == f["contacts"][key].shape[0], key
    computed = tmp_path / "computed.h5"
    r = run_cli("contacts", fasta, "-m", REFERENCE, "--storage-dtype", "float32", "-o", computed)
    assert r.exit_code == 0, r.stderr
    with h5py.File(out) as a, h5py.File(computed) as b:
        assert a.attrs["kinds"] == b.attrs["kinds"] == "contacts" and a.attrs["imported_from"] == "esm-extract"
        assert set(a["contacts"]) == set(b["contacts"]) == set(kept)
        for key in kept:
            np.testing.assert_allclose(a["contacts"][key][()], b["contacts"][key][()], atol=1e-5)
            for name in ("id", "header", "length", "checksum"):
                assert a["contacts"][key].attrs[name] == b["contacts"][key].attrs[name], (key, name)
            # (a whole protein has no truncated_from, as contacts writes it)
            assert a["contacts"][key].attrs.get("truncated_from") == b["contacts"][key].attrs.get("truncated_from"), key
    # the embeddings' options, and files without contacts, are refused in one line
    r = run_cli("import-esm", folder, "--contacts", "--per-residue", "-o", tmp_path / "x.h5")
    assert r.exit_code == 2 and "--per-residue is for embeddings" in r.stderr
    _save(tmp_path / "plain", "P9", rows={1: np.zeros((3, 4), np.float32)})
    r = run_cli("import-esm", tmp_path / "plain", "--contacts", "-o", tmp_path / "y.h5")
    assert r.exit_code == 1 and "has no 'contacts' (esm-extract --include contacts)" in r.stderr
    assert not (tmp_path / "y.h5").exists() and not (tmp_path / "y.h5.partial").exists()
    # a map of another size than the FASTA's sequence
    torch.save({"label": "rare", "contacts": torch.zeros(5, 5)}, folder / "rare.pt")
    r = run_cli("import-esm", folder, "--contacts", "--fasta", fasta, "-o", tmp_path / "z.h5")
    assert r.exit_code == 1 and "holds a map of 5 residues" in r.stderr


def test_contacts_from_python_with_arguments_that_are_not_paths_name_them(tmp_path):
    """import_esm_contacts([1], ...) or an output that is no path: a UsageError saying which, as
    import_esm's (a TypeError from pathlib)."""
    from protrans_cli.errors import UsageError
    from protrans_cli.esm_import import import_esm_contacts

    with pytest.raises(UsageError, match="inputs must be paths"):
        import_esm_contacts([1], tmp_path / "c.h5")
    with pytest.raises(UsageError, match="output"):
        import_esm_contacts([tmp_path], 5)
    assert not list(tmp_path.iterdir())


def test_a_map_cut_at_another_length_names_the_truncation_to_give(run_cli, tmp_path):
    folder = tmp_path / "esm_out"
    folder.mkdir()
    torch.save({"label": "P1", "contacts": torch.zeros(6, 6)}, folder / "P1.pt")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">P1\nMKTAYIAKQR\n")
    r = run_cli("import-esm", folder, "--contacts", "--fasta", fasta, "-o", tmp_path / "c.h5")
    assert r.exit_code == 1 and "give --truncation-seq-length 6" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("import-esm", folder, "--contacts", "--fasta", fasta, "--truncation-seq-length", "6",
                "-o", tmp_path / "c.h5")
    assert r.exit_code == 0, r.stderr


def test_bos_representations_import_as_embed_pooling_cls_writes_them(run_cli, tmp_path):
    """esm-extract --include bos: the <cls> token's hidden state per layer, imported as per-protein
    vectors with the pooling embed --pooling cls records, so fit/predict/knn take them as cls
    vectors of that model (and refuse them beside means)."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(">P1\nMKTAYIAKQR\n>P2\nMAAGW\n")
    embedded = tmp_path / "cls.h5"
    r = run_cli("embed", fasta, "-m", REFERENCE, "--per-protein", "--pooling", "cls", "--layer", "-1", "-o", embedded)
    assert r.exit_code == 0, r.stderr
    with EmbeddingsReader(embedded) as reader:
        vectors = {i: a for i, a, _ in reader.items(PER_PROTEIN)}
        pooling = reader.attrs["pooling"]
    folder = tmp_path / "esm_out"
    for ident, vector in vectors.items():  # (layer 2: the last of the reference's two blocks)
        _save(folder, ident, bos_representations={2: torch.from_numpy(vector)},
              mean_representations={2: torch.zeros_like(torch.from_numpy(vector))})
    out = tmp_path / "imported.h5"
    r = run_cli("import-esm", folder, "--bos", "--fasta", fasta, "-m", REFERENCE.resolve(), "-o", out)
    assert r.exit_code == 0, r.stderr
    got, attrs, _ = _read(out)
    assert attrs["pooling"] == pooling and set(got) == {PER_PROTEIN}
    for ident, vector in vectors.items():
        np.testing.assert_array_equal(got[PER_PROTEIN][ident][0], vector)
    # knn compares it with embed's cls file, and refuses embed's means
    assert run_cli("knn", out, "--reference", embedded).exit_code == 0
    means = tmp_path / "mean.h5"
    assert run_cli("embed", fasta, "-m", REFERENCE, "--per-protein", "-o", means).exit_code == 0
    r = run_cli("knn", out, "--reference", means)
    assert r.exit_code == 1 and "pool" in r.stderr
    r = run_cli("import-esm", folder, "--bos", "--per-residue", "-o", tmp_path / "x.h5")
    assert r.exit_code == 2 and "--bos imports per-protein vectors" in r.stderr


def test_a_model_directory_is_recorded_as_embed_records_it(run_cli, tmp_path, monkeypatch):
    """import-esm -m DIR stored the folder as typed (`RUN`), embed its absolute path: the two
    files merged (or were compared by knn) only from the working directory they were made in."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(">P1\nMKTAYIAKQR\n")
    monkeypatch.chdir(REFERENCE.parent)
    embedded = tmp_path / "e.h5"
    assert run_cli("embed", fasta, "-m", REFERENCE.name, "--per-protein", "-o", embedded).exit_code == 0
    folder = tmp_path / "esm_out"
    _save(folder, "P2", None, {2: torch.zeros(8)})
    out = tmp_path / "imported.h5"
    r = run_cli("import-esm", folder, "-m", REFERENCE.name, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert _read(out)[1]["model"] == _read(embedded)[1]["model"] == str(REFERENCE.resolve())
    plain = tmp_path / "plain"
    _save(plain, "P9", means={2: np.zeros(8, np.float32)})
    r = run_cli("import-esm", plain, "--bos", "-o", tmp_path / "y.h5")
    assert r.exit_code == 1 and "bos_representations" in r.stderr and "--include bos" in r.stderr


def test_non_finite_or_out_of_range_values_are_recorded_as_failed_with_their_reason(run_cli, tmp_path, extracted):
    import json

    folder, fasta, arrays = extracted
    rows, means = arrays["P3"]
    _save(folder, HEADERS["P3"], {1: rows[1], 2: np.where(np.arange(4) == 1, np.nan, rows[2])}, means)
    rows, means = arrays["P1"]
    _save(folder, HEADERS["P1"], {1: rows[1], 2: rows[2] * 1e6}, means)
    out = tmp_path / "e.h5"
    r = run_cli("import-esm", folder, "-o", out, "--fasta", fasta, "--storage-dtype", "float16")
    got, attrs, _ = _read(out)
    assert set(got[PER_RESIDUE]) == {"sp|Q2/x"}, r.stderr
    failed = json.loads(attrs["failed"])
    assert set(failed) == {"P1", "P3"}, failed
    assert "NaN or infinity in esm-extract's output" in str(failed["P3"]), failed
    assert "beyond float16's range" in str(failed["P1"]) and "NaN" not in str(failed["P1"]), failed


def test_contact_maps_cut_not_square_or_not_finite(run_cli, tmp_path):
    # a map esm-extract cut at --truncation-seq-length is recorded as embed's truncate policy
    # records it; a NaN map is a failed protein with its reason; a map that is not (L, L) is refused
    import json

    folder = tmp_path / "esm_out"
    folder.mkdir()
    rng = np.random.default_rng(0)
    torch.save({"label": "P1", "contacts": torch.from_numpy(rng.random((6, 6), dtype=np.float32))}, folder / "P1.pt")
    bad = rng.random((4, 4), dtype=np.float32)
    bad[1, 2] = np.nan
    torch.save({"label": "P2", "contacts": torch.from_numpy(bad)}, folder / "P2.pt")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">P1\nMKTAYIAKQR\n>P2\nMKTA\n")
    out = tmp_path / "c.h5"
    r = run_cli("import-esm", folder, "--contacts", "--fasta", fasta, "--truncation-seq-length", "6", "-o", out)
    assert r.exit_code == 0 and "1 truncated by esm-extract" in r.stderr, r.stderr
    with h5py.File(out) as f:
        assert set(f["contacts"]) == {"P1"}
        attrs = f["contacts"]["P1"].attrs
        assert attrs["length"] == 6 and attrs["truncated_from"] == 10
        assert attrs["checksum"] == sequence_checksum("MKTAYI")
        failed = json.loads(f.attrs["failed"])
    assert set(failed) == {"P2"} and "NaN or infinity in esm-extract's contact map" in str(failed["P2"])
    square = tmp_path / "square"
    square.mkdir()
    torch.save({"label": "P3", "contacts": torch.zeros(4, 5)}, square / "P3.pt")
    r = run_cli("import-esm", square, "--contacts", "-o", tmp_path / "s.h5")
    assert r.exit_code == 1 and "its 'contacts' is (4, 5) float32, not an (L, L) floating-point map" in r.stderr
    torch.save({"label": "P3", "contacts": torch.zeros(4, 4, dtype=torch.long)}, square / "P3.pt")
    r = run_cli("import-esm", square, "--contacts", "-o", tmp_path / "s.h5")  # (square: its dtype is what is wrong)
    assert r.exit_code == 1 and "its 'contacts' is (4, 4) int64, not an (L, L) floating-point map" in r.stderr


def test_contacts_beyond_the_storage_dtype_are_recorded_failed_without_numpys_warning(run_cli, tmp_path):
    """A map whose values float16 cannot hold was stored as inf, with numpy's two-line overflow
    warning among the messages: recorded as failed with why (as the embeddings' import records
    such rows), and kept whole under --storage-dtype float32."""
    folder = tmp_path / "esm_out"
    folder.mkdir()
    torch.save({"label": "big", "contacts": torch.full((3, 3), 1e6)}, folder / "big.pt")
    torch.save({"label": "ok", "contacts": torch.full((3, 3), 0.5)}, folder / "ok.pt")
    r = run_cli("import-esm", folder, "--contacts", "-o", tmp_path / "c.h5")
    assert r.exit_code == 0 and "RuntimeWarning" not in r.stderr and "overflow" not in r.stderr, r.stderr
    with h5py.File(tmp_path / "c.h5") as f:
        assert set(f["contacts"]) == {"ok"}
        failed = json.loads(f.attrs["failed"])
    assert "values beyond float16's range (largest magnitude 1e+06; --storage-dtype float32 keeps them)" \
        in str(failed["big"])
    r = run_cli("import-esm", folder, "--contacts", "--storage-dtype", "float32", "-o", tmp_path / "c32.h5")
    assert r.exit_code == 0, r.stderr
    with h5py.File(tmp_path / "c32.h5") as f:
        assert f["contacts"]["big"][0, 0] == 1e6



def test_contacts_ids_twice_labels_without_id_longer_maps_and_force(run_cli, tmp_path, monkeypatch):
    """Contact maps: an id in two files, a label without an id, a map longer than
    --truncation-seq-length are refused naming the file, before anything is written; --force
    replaces an earlier import; a failure while writing leaves neither the output nor a partial."""
    from protrans_cli import esm_import

    folder = tmp_path / "esm_out"
    folder.mkdir()
    torch.save({"label": "P1 first", "contacts": torch.zeros(4, 4)}, folder / "a.pt")
    out = tmp_path / "c.h5"
    torch.save({"label": "P1 again", "contacts": torch.zeros(4, 4)}, folder / "b.pt")
    r = run_cli("import-esm", folder, "--contacts", "-o", out)
    assert r.exit_code == 1 and "b.pt: protein id 'P1' is also that of" in r.stderr and "a.pt" in r.stderr
    torch.save({"label": " ", "contacts": torch.zeros(4, 4)}, folder / "b.pt")
    r = run_cli("import-esm", folder, "--contacts", "-o", out)
    assert r.exit_code == 1 and "b.pt: its label ' ' has no id" in r.stderr
    (folder / "b.pt").unlink()
    r = run_cli("import-esm", folder, "--contacts", "-o", out, "--truncation-seq-length", "3")
    assert r.exit_code == 1 and "a.pt: holds a map of 4 residues, more than --truncation-seq-length 3" in r.stderr
    assert not list(tmp_path.glob("c.h5*"))
    _ok(run_cli("import-esm", folder, "--contacts", "-o", out))
    torch.save({"label": "P2", "contacts": torch.ones(3, 3)}, folder / "b.pt")
    r = run_cli("import-esm", folder, "--contacts", "-o", out)
    assert r.exit_code == 2 and "exists: give --force" in r.stderr
    _ok(run_cli("import-esm", folder, "--contacts", "-o", out, "--force"))
    with h5py.File(out) as f:
        assert sorted(f["contacts"]) == ["P1", "P2"]

    def failing(writer, entry, summary):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(esm_import, "_write_contacts", failing)
    with pytest.raises(OSError):
        esm_import.import_esm_contacts(folder, tmp_path / "d.h5")
    assert not list(tmp_path.glob("d.h5*"))


def test_export_as_esm_gives_esm_extracts_own_files_and_imports_back(run_cli, tmp_path):
    """`protrans export --format esm`: each protein's LABEL.pt holds what fair-esm's esm-extract
    saves for it (the reference's own rows and means, layers 0-2 by esm-extract's numbers, the
    header line as label), loadable with weights_only=True; import-esm of that folder gives back
    the file that was exported."""
    from safetensors.numpy import load_file

    reference = load_file(REFERENCE / "reference.safetensors")
    embedded = tmp_path / "embed.h5"
    _ok(run_cli("embed", REFERENCE / "input.fa", "-m", REFERENCE, "--device", "cpu", "--max-length", "1022",
                "--long-policy", "truncate", "--layer", "0", "--layer", "1", "--layer", "2", "-o", embedded))
    folder = tmp_path / "esm_out"
    done = _ok(run_cli("export", embedded, "--format", "esm", "--all-layers", "-o", f"{folder}/"))
    assert "7 proteins (representations, mean_representations; 8 dimensions, layers 0, 1, 2)" in done.stderr
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{pid}.pt" for pid in [*PROTEINS, "long"])
    for pid in PROTEINS:
        got = torch.load(folder / f"{pid}.pt", weights_only=True)
        assert set(got) == {"label", "representations", "mean_representations"} and got["label"] == pid
        for k in range(3):
            assert got["representations"][k].dtype == got["mean_representations"][k].dtype == torch.float32
            np.testing.assert_allclose(got["representations"][k].numpy(), reference[f"rows/{pid}/{k}"], atol=1e-5,
                                       rtol=0)
            np.testing.assert_allclose(got["mean_representations"][k].numpy(), reference[f"mean/{pid}/{k}"],
                                       atol=1e-5, rtol=0)
    long = torch.load(folder / "long.pt", weights_only=True)
    assert long["representations"][2].shape == (1022, 8)
    for k in range(3):
        np.testing.assert_allclose(long["mean_representations"][k].numpy(), reference[f"long_truncated_mean/{k}"],
                                   atol=1e-5, rtol=0)
    # one layer, by either of its numbers; the last is esm-extract's 2
    for layer in ("-1", "2"):
        _ok(run_cli("export", embedded, "--format", "esm", "--layer", layer, "-o", tmp_path / f"one{layer}"))
        got = torch.load(tmp_path / f"one{layer}" / "mixed_5.pt", weights_only=True)
        assert list(got["representations"]) == list(got["mean_representations"]) == [2]
    # back through import-esm: the arrays, ids, headers, lengths and checksums that were exported
    back = tmp_path / "back.h5"
    _ok(run_cli("import-esm", folder, "--fasta", REFERENCE / "input.fa", "--layer", "0", "--layer", "1", "--layer", "2",
                "-o", back))
    original, original_attrs, _ = _read(embedded)
    imported, imported_attrs, _ = _read(back)
    for kind in (PER_RESIDUE, PER_PROTEIN):
        assert sorted(imported[kind]) == sorted(original[kind])
        for pid, (array, meta) in original[kind].items():
            np.testing.assert_array_equal(imported[kind][pid][0], array)
            assert {k: v for k, v in imported[kind][pid][1].items() if k != "computed"} == meta
    assert [int(x) for x in imported_attrs["layers"]] == [int(x) for x in original_attrs["layers"]]


def test_an_output_another_run_holds_names_every_command_that_shares_its_lock(tmp_path):
    """embed, contacts, merge and import-esm lock an HDF5 output alike (`.OUT.lock`): import-esm's
    refusal named "embed, merge or import-esm" (a contacts run held it just as well) and its
    contact maps' import only "another protrans run"; merge's "embed or merge"."""
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.esm_import import import_esm, import_esm_contacts
    from protrans_cli.io.files import output_lock

    (tmp_path / "reps").mkdir()
    torch.save({"label": "P1", "mean_representations": {33: torch.zeros(4)}}, tmp_path / "reps" / "P1.pt")
    busy = tmp_path / "busy.h5"
    with output_lock(busy, "busy"):
        for run in (import_esm, import_esm_contacts):
            with pytest.raises(RuntimeFailure, match=r"another protrans run \(embed, contacts, merge, import-esm\) "
                                                     "that is running now"):
                run([tmp_path / "reps"], busy)
    assert not busy.exists()


@pytest.mark.parametrize("layout", ["grouped", "stacked"])
def test_contacts_refuse_a_layout_given_even_the_defaults(run_cli, tmp_path, layout):
    """--help: --contacts takes "no --layer, --per-residue, --per-protein or --layout". --layout
    grouped, the default's value, was taken without a word (it lays out embeddings, not maps)."""
    folder = tmp_path / "esm_out"
    folder.mkdir()
    torch.save({"label": "P1", "contacts": torch.full((3, 3), 0.5)}, folder / "P1.pt")
    r = run_cli("import-esm", folder, "--contacts", "--layout", layout, "-o", tmp_path / "c.h5")
    assert r.exit_code == 2 and "--layout is for embeddings: --contacts imports the contact maps alone" in r.stderr
    assert not list(tmp_path.glob("c.h5*"))


def test_rows_or_vectors_of_another_shape_are_refused_naming_the_layer_and_the_shape(run_cli, tmp_path):
    """A layer of the wrong rank (a batch dimension left on, as a model's own output has it: (1, L,
    D)), or with no rows: one line naming the file, the layer and its shape, and no output (the
    width check after it read the (1, L, D) rows' last axis as their width)."""
    cases = [
        ({"representations": {1: torch.zeros(1, 3, 4)}}, "its 'representations' layer 1 has shape (1, 3, 4), not "
                                                         "(L, D) rows"),
        ({"representations": {1: torch.zeros(0, 4)}}, "its 'representations' layer 1 has shape (0, 4), not (L, D) "
                                                      "rows"),
        ({"mean_representations": {1: torch.zeros(1, 4)}}, "its 'mean_representations' layer 1 has shape (1, 4), "
                                                           "not a (D,) vector"),
    ]
    out = tmp_path / "e.h5"
    for more, message in cases:
        torch.save({"label": "Q", **more}, tmp_path / "x.pt")
        r = run_cli("import-esm", tmp_path / "x.pt", "-o", out)
        assert r.exit_code == 1 and f"x.pt: {message}" in r.stderr and r.stderr.count("\n") == 1, r.stderr
        assert not list(tmp_path.glob("e.h5*"))


def test_layer_and_layout_mistakes_and_stdin_are_refused_in_one_line_before_any_file_is_read(run_cli, tmp_path,
                                                                                            extracted):
    """A layer given twice, --per-residue with --layout stacked (one (N, D) array of vectors), both
    kinds with --layout flat (one kind a file) and `-` (esm-extract writes files): exit 2 in one
    line, and no output."""
    folder, _, _ = extracted
    out = tmp_path / "e.h5"
    cases = [
        ((folder, "--layer", "1", "--layer", "1"), "--layer given twice: 1, 1"),
        ((folder, "--per-residue", "--layout", "stacked"),
         "the stacked layout holds per-protein vectors only: choose --per-protein alone"),
        ((folder, "--per-residue", "--per-protein", "--layout", "flat"),
         "the flat layout holds one kind only: choose --per-residue or --per-protein"),
        (("-",), "esm-extract's outputs are read from files, not stdin ('-'): give their directory"),
    ]
    for args, message in cases:
        r = run_cli("import-esm", *args, "-o", out)
        assert r.exit_code == 2 and message in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
        assert not list(tmp_path.glob("e.h5*"))


def test_more_rows_than_the_fasta_sequence_is_another_sequence_without_a_truncation_hint(run_cli, tmp_path,
                                                                                         extracted):
    """Rows short of the sequence may be esm-extract's cut (said, with the value to give); rows
    beyond it cannot be: named as another sequence alone, in one line, and nothing written."""
    folder, fasta, _ = extracted
    fasta.write_text(fasta.read_text().replace("MKVL", "MKV"))
    out = tmp_path / "e.h5"
    r = run_cli("import-esm", folder, "-o", out, "--fasta", fasta)
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.rstrip().endswith("P3.pt: holds 4 rows; its sequence in " + str(fasta) + " has 3 residues, 3 "
                                      "rows: another sequence (or a FASTA with gaps, which esm-extract embeds as rows)")
    assert "truncation" not in r.stderr and not list(tmp_path.glob("e.h5*"))
