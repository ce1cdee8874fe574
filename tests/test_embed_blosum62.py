"""`embed -m blosum62`: the BLOSUM62 baseline, each residue's row of substitution scores.

The reference is built here from Biopython's matrix directly (not from protrans' table): the
20 standard residues' columns in onehot's order, B, Z and X their own rows, U, O and any other
letter X's row, raw integer scores as float32."""

import numpy as np
import pytest
from Bio.Align import substitution_matrices

from protrans_cli.embed import EmbedOptions, embed, embed_sequences
from protrans_cli.embedders import Blosum62Embedder, OneHotEmbedder
from protrans_cli.errors import UsageError
from protrans_cli.io.fasta import read_fasta
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader, partial_path

from conftest import DATA

SMALL = DATA / "embed" / "small.fa"
MATRIX = substitution_matrices.load("BLOSUM62")
COLUMNS = "ACDEFGHIKLMNPQRSTVWY"


def blosum62_reference(seq: str) -> np.ndarray:
    """Row i: BLOSUM62[residue i][c] for the 20 standard residues c (U, O -> X; gaps removed)."""
    seq = seq.upper().replace("-", "").replace(".", "")
    return np.array([[MATRIX[r if r in "ACDEFGHIKLMNPQRSTVWYBZX" else "X"][c] for c in COLUMNS] for r in seq],
                    dtype=np.float32)


def read_all(path, kind=PER_RESIDUE):
    with EmbeddingsReader(path) as r:
        return {i: a for i, a, _ in r.items(kind)}


def test_every_letters_row_is_biopythons_blosum62_row():
    [rows] = Blosum62Embedder().embed_batch(["ACDEFGHIKLMNPQRSTVWYBZXUOacdy"])
    assert rows.shape == (1, 29, 20) and rows.dtype == np.float32
    for i, letter in enumerate("ACDEFGHIKLMNPQRSTVWYBZX"):
        np.testing.assert_array_equal(rows[0, i], [MATRIX[letter][c] for c in COLUMNS])
    x = [MATRIX["X"][c] for c in COLUMNS]
    np.testing.assert_array_equal(rows[0, 23], x)  # U: X's row (BLOSUM62 has none)
    np.testing.assert_array_equal(rows[0, 24], x)  # O
    np.testing.assert_array_equal(rows[0, 25:], rows[0, [0, 1, 2, 19]])  # lower case as upper case
    assert rows[0, 0, 0] == 4 and rows[0, 18, 18] == 11  # A/A, W/W: raw scores, not scaled
    # B and Z are their own rows, not X's (as onehot encodes them): B/D scores 4, X/D -1
    assert rows[0, 20, COLUMNS.index("D")] == 4 and rows[0, 22, COLUMNS.index("D")] == -1


def test_blosum62_matches_the_reference_for_every_record(tmp_path):
    out = tmp_path / "b.h5"
    summary = embed(SMALL, out, EmbedOptions(model="blosum62"))
    records = list(read_fasta(SMALL))
    res, prot = read_all(out), read_all(out, PER_PROTEIN)
    assert sorted(res) == sorted(r.id for r in records)
    for rec in records:
        ref = blosum62_reference(rec.sequence)
        np.testing.assert_array_equal(res[rec.id], ref)
        np.testing.assert_allclose(prot[rec.id], ref.mean(0), rtol=1e-6, atol=1e-6)
    assert summary.num_embedded == len(records) and summary.num_duplicates == 1
    with EmbeddingsReader(out) as r:
        assert r.attrs["model"] == "blosum62" and r.attrs["family"] == "blosum62"
        assert r.attrs["embedding_dim"] == 20 and r.failed() == {}


def test_embed_sequences_with_blosum62():
    seqs = ["MKTAYIAK", "W", "mkxuzob"]
    for seq, got in zip(seqs, embed_sequences(seqs, EmbedOptions(model="blosum62"), kind="per_residue")):
        np.testing.assert_array_equal(got, blosum62_reference(seq))
    for seq, got in zip(seqs, embed_sequences(seqs, EmbedOptions(model="blosum62"), kind="per_protein")):
        np.testing.assert_allclose(got, blosum62_reference(seq).mean(0), rtol=1e-6, atol=1e-6)


def test_cli_end_to_end_and_info(run_cli, tmp_path):
    out = tmp_path / "flat.h5"
    r = run_cli("embed", SMALL, "-m", "blosum62", "--per-protein", "--layout", "flat", "-o", out)
    assert r.exit_code == 0 and "embedded 6 proteins" in r.stderr, r.stderr
    import h5py

    with h5py.File(out, "r") as f:
        assert f["one"].shape == (20,) and f["one"].dtype == np.float32
        np.testing.assert_array_equal(f["one"][()], blosum62_reference("M")[0])
    r = run_cli("info", out)
    assert r.exit_code == 0 and "blosum62 (family blosum62)" in r.stdout and "dimension:     20" in r.stdout


def test_two_runs_write_the_same_bytes(tmp_path):
    """As onehot's: the same input gives the same arrays, byte for byte, whatever the batching."""
    embed(SMALL, tmp_path / "a.h5", EmbedOptions(model="blosum62"))
    embed(SMALL, tmp_path / "b.h5", EmbedOptions(model="blosum62", max_batch_size=1))
    for kind in (PER_RESIDUE, PER_PROTEIN):
        a, b = read_all(tmp_path / "a.h5", kind), read_all(tmp_path / "b.h5", kind)
        assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_resume_after_interruption_gives_the_same_bytes(tmp_path, monkeypatch):
    full = read_all(embed(SMALL, tmp_path / "full.h5", EmbedOptions(model="blosum62", max_batch_size=1)).output)
    original, calls = Blosum62Embedder.embed_batch, []

    def interrupted(self, seqs, **kw):
        calls.append(seqs)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, seqs, **kw)

    monkeypatch.setattr(Blosum62Embedder, "embed_batch", interrupted)
    out = tmp_path / "resumed.h5"
    with pytest.raises(KeyboardInterrupt):
        embed(SMALL, out, EmbedOptions(model="blosum62", max_batch_size=1))
    partial = read_all(partial_path(out))
    assert 0 < len(partial) < len(full)
    monkeypatch.setattr(Blosum62Embedder, "embed_batch", original)
    summary = embed(SMALL, out, EmbedOptions(model="blosum62", max_batch_size=1, resume=True))
    assert summary.num_resumed == len(partial)
    resumed = read_all(out)
    assert resumed.keys() == full.keys() and all(resumed[k].tobytes() == full[k].tobytes() for k in full)
    # another encoding is another model: resuming a blosum62 file with onehot is refused
    embed(SMALL, tmp_path / "o.h5", EmbedOptions(model="onehot"))
    with pytest.raises(UsageError, match="blosum62|onehot"):
        embed(SMALL, tmp_path / "o.h5", EmbedOptions(model="blosum62", resume=True))


@pytest.mark.parametrize("model", ["onehot", "blosum62"])
def test_weightless_refusals_name_the_encoding(model, tmp_path):
    with pytest.raises(UsageError, match=f"the {model} embedder has a single layer: layer 3 does not exist"):
        embed(SMALL, tmp_path / "x.h5", EmbedOptions(model=model, layers=(3,)))
    with pytest.raises(UsageError, match=f"reads a model's cls token: the {model} embedder has none"):
        embed(SMALL, tmp_path / "x.h5", EmbedOptions(model=model, pooling="cls", per_protein=True))
    with pytest.raises(UsageError, match=f"not {model}"):
        embed(SMALL, tmp_path / "x.h5", EmbedOptions(model=model, three_di=True))
    with pytest.raises(UsageError, match=f"for a structure-aware model \\(SaProt\\), not {model}"):
        embed(SMALL, tmp_path / "x.h5", EmbedOptions(model=model, structure_tokens=str(SMALL)))
    with pytest.raises(UsageError, match=f"the {model} embedder has no model to spread over devices"):
        embed(SMALL, tmp_path / "x.h5", EmbedOptions(model=model, device_map="auto"))
    assert not (tmp_path / "x.h5").exists()


def test_weightless_options_of_a_gpu_run_warn_with_the_encodings_name(run_cli, tmp_path):
    r = run_cli("embed", SMALL, "-m", "blosum62", "--device", "cpu", "--dtype", "float32", "--compile",
                "-o", tmp_path / "x.h5")
    assert r.exit_code == 0 and "the blosum62 embedder has no model to compile: --compile ignored" in r.stderr


def test_commands_that_need_a_model_refuse_blosum62(run_cli, tmp_path):
    (tmp_path / "in.fa").write_text(">a\nMKT\n")
    r = run_cli("perplexity", tmp_path / "in.fa", "-m", "blosum62", "-o", tmp_path / "p.tsv")
    assert r.exit_code == 2 and "-m blosum62 is embed's BLOSUM62 encoding, not a language model" in r.stderr, r.stderr
    r = run_cli("esm-extract", "blosum62", tmp_path / "in.fa", tmp_path / "out", "--include", "mean")
    assert r.exit_code == 2 and "is embed's BLOSUM62 encoding" in r.stderr, r.stderr


def test_patching_one_baseline_leaves_the_other_alone(monkeypatch):
    """Tests patch OneHotEmbedder.embed_batch: the method both inherit stays blosum62's."""
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", lambda *a, **k: pytest.fail("onehot's called"))
    [rows] = Blosum62Embedder().embed_batch(["W"])
    np.testing.assert_array_equal(rows[0], blosum62_reference("W"))
    assert OneHotEmbedder.embedding_dim == 21 and Blosum62Embedder.embedding_dim == 20
