"""`protrans embed` with the built-in onehot embedder: the pipeline (batching, dedup, resume,
long-sequence policies, OOM handling, failures) and the CLI, without any model weights."""

from __future__ import annotations

import os
import re
import sys
import warnings

import numpy as np
import pytest

from conftest import DATA, ROOT, another_process, released_after_error
from protrans_cli.embed import (EmbedOptions, OneHotEmbedder, _Piece, _Unit, chunk_windows, embed, embed_with_retry,
                                make_batches, stitch_windows)
from protrans_cli.embedders import ONEHOT_ALPHABET
from protrans_cli.errors import InputError, ModelError, UsageError
from protrans_cli.io.fasta import read_fasta
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader, EmbeddingsWriter, partial_path

SMALL = DATA / "embed" / "small.fa"


def onehot_reference(seq: str) -> np.ndarray:
    """Independent reference: row i has a 1 at the residue's alphabet position (X for U/Z/O/B)."""
    seq = seq.upper().replace("-", "").replace(".", "")
    out = np.zeros((len(seq), 21), dtype=np.float32)
    for i, c in enumerate(seq):
        out[i, ONEHOT_ALPHABET.index(c if c in ONEHOT_ALPHABET else "X")] = 1
    return out


def read_all(path, kind=PER_RESIDUE):
    with EmbeddingsReader(path) as r:
        return {i: a for i, a, _ in r.items(kind)}


def test_onehot_matches_reference_for_every_record(tmp_path):
    out = tmp_path / "o.h5"
    summary = embed(SMALL, out, EmbedOptions(model="onehot"))
    records = list(read_fasta(SMALL))
    res, prot = read_all(out), read_all(out, PER_PROTEIN)
    assert sorted(res) == sorted(r.id for r in records)
    for rec in records:
        ref = onehot_reference(rec.sequence)
        assert res[rec.id].shape == ref.shape  # one row per residue, X and U/Z/O/B included
        np.testing.assert_array_equal(res[rec.id], ref)
        np.testing.assert_allclose(prot[rec.id], ref.mean(0), atol=1e-7)
    assert summary.num_embedded == len(records) and summary.num_duplicates == 1
    assert res["one"].shape == (1, 21)
    with EmbeddingsReader(out) as r:
        assert r.dataset("sp|Q9/slash").attrs["header"] == "sp|Q9/slash id with slash"
        assert r.dataset("rare").attrs["length"] == 8
        assert r.attrs["family"] == "onehot" and r.failed() == {}



def test_embed_sequences_returns_a_lists_arrays_in_its_order_past_ten_items():
    """A list in, a list out, item i the array of sequence i: with 12 sequences of 12 lengths (the
    items are named 0, 1, ... 11 inside, which sort as text as 0, 1, 10, 11, 2, ...)."""
    from protrans_cli.embed import embed_sequences

    seqs = ["MKTAYIAKQRQI"[:n] for n in range(12, 0, -1)]
    rows = embed_sequences(seqs, EmbedOptions(model="onehot"), kind="per_residue")
    assert len(rows) == 12
    for seq, got in zip(seqs, rows):
        np.testing.assert_array_equal(got, onehot_reference(seq))
    means = embed_sequences(seqs, EmbedOptions(model="onehot"), kind="per_protein")
    for seq, got in zip(seqs, means):
        np.testing.assert_allclose(got, onehot_reference(seq).mean(0), atol=1e-7)

def test_embed_sequences_on_a_full_tmpdir_names_the_folder(tmp_path, monkeypatch):
    """A full $TMPDIR was "no room for a new output file: ... on the output's disk ...; nothing
    was written; free some space and run the command again", naming no folder (the caller gave no
    file, and the temporary's was dropped): the folder is named now, as $TMPDIR's."""
    import tempfile

    from protrans_cli.embed import embed_sequences
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io import disk

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(disk, "_reserve", lambda folder, nbytes: "No space left on device (a reservation of 1.0 MiB "
                                                                  "failed)")
    with pytest.raises(RuntimeFailure) as caught:
        embed_sequences(["MKT"], EmbedOptions(model="onehot", threads=1), kind="per_protein")
    assert str(caught.value) == (
        f"{tmp_path}: the embeddings' temporary file in this folder ($TMPDIR): no room for a new output file: No "
        "space left on device (a reservation of 1.0 MiB failed); nothing is kept: free some space (or set TMPDIR to "
        "a folder with room) and call again")
    assert list(tmp_path.iterdir()) == []


def test_embed_sequences_removes_the_temporary_folder_a_killed_call_left(tmp_path, monkeypatch):
    """embed_sequences embeds through a folder in $TMPDIR. It was a TemporaryDirectory: a kernel
    SIGKILLed during the call (the out-of-memory killer) left it, with its FASTA and partial file,
    for ever. Now the next call removes it (once its process is gone and it is an hour old)."""
    import os
    import signal
    import tempfile
    import time

    import protrans_cli.embed as embed_module
    from protrans_cli.embed import embed_sequences

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    pid = os.fork()
    if pid == 0:  # a call killed while it embeds
        try:
            def killed(fasta, output, *args, **kw):
                with open(f"{output}.partial", "wb") as fh:
                    fh.write(b"x" * 1000)
                os.kill(os.getpid(), signal.SIGKILL)

            monkeypatch.setattr(embed_module, "embed", killed)
            embed_sequences(["MKT"], EmbedOptions(model="onehot", threads=1), kind="per_protein")
        finally:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    left = list(tmp_path.iterdir())
    assert len(left) == 1 and len(list(left[0].iterdir())) == 2  # (its FASTA and the partial file)
    hours_ago = time.time() - 7200
    for path in [*left[0].iterdir(), left[0]]:
        os.utime(path, (hours_ago, hours_ago))
    rows = embed_sequences(["MKT"], EmbedOptions(model="onehot", threads=1), kind="per_protein")
    np.testing.assert_allclose(rows[0], onehot_reference("MKT").mean(0), atol=1e-7)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("max_tokens,max_batch_size", [(1, 1), (30, 2), (100000, 100)])
def test_results_do_not_depend_on_batching(tmp_path, max_tokens, max_batch_size):
    ref = read_all(_run(tmp_path / "ref.h5"))
    got = read_all(_run(tmp_path / "b.h5", max_tokens=max_tokens, max_batch_size=max_batch_size))
    assert ref.keys() == got.keys()
    for k in ref:
        np.testing.assert_array_equal(ref[k], got[k])


def _run(out, fasta=SMALL, **kw):
    embed(fasta, out, EmbedOptions(model="onehot", **kw))
    return out


def test_batches_respect_token_budget_and_size():
    pieces = [_Piece(_Unit("A" * n, []), 0, "A" * n) for n in (5, 50, 7, 30, 1, 12, 12)]
    batches = make_batches(pieces, max_tokens=64, max_batch_size=3, special_tokens=2)
    assert sorted(len(p.sequence) for b in batches for p in b) == sorted(len(p.sequence) for p in pieces)
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or max(len(p.sequence) + 2 for p in b) * len(b) <= 64
    assert [len(p.sequence) for p in batches[0]] == [50]  # longest first, alone when over half the budget


def test_chunk_windows_cover_and_stitch_exactly():
    windows = chunk_windows(100, 30, 10)
    assert windows[0] == (0, 30) and windows[-1][1] == 100
    assert all(b[0] < a[1] for a, b in zip(windows, windows[1:]))  # neighbours overlap
    truth = np.arange(100, dtype=np.float32)[None, :, None]
    stitched = stitch_windows(windows, [truth[:, s:e] for s, e in windows], 100)
    np.testing.assert_array_equal(stitched, truth)


@pytest.mark.parametrize("length,window,overlap", [(100, 30, 10), (33, 12, 4), (50, 10, 9), (1000, 100, 0)])
def test_chunk_windows_share_at_least_the_overlap_asked_for(length, window, overlap):
    # --chunk-overlap N: every row near a window's edge has N residues of context from its
    # neighbour; windows that overlapped by less than asked passed every stitching test
    windows = chunk_windows(length, window, overlap)
    assert windows[0][0] == 0 and windows[-1][1] == length
    assert all(e - s == window for s, e in windows)
    assert all(a[1] - b[0] >= overlap for a, b in zip(windows, windows[1:]))


@pytest.mark.parametrize("length,window,overlap", [(160, 100, 60), (100, 30, 10), (33, 12, 4), (50, 10, 9)])
def test_stitching_takes_each_row_from_the_window_with_the_most_context(length, window, overlap):
    # bidirectional: the window where the row is farthest from either edge; causal (Transformer-XL,
    # a row sees only the residues before it): the one with the most residues before the row. The
    # causal rows were stitched as the bidirectional ones (row 70 of windows (0,100), (40,140) came
    # from the second, 30 residues of context instead of 70)
    windows = chunk_windows(length, window, overlap)
    arrays = [np.full((1, e - s, 2), float(k), dtype=np.float32) for k, (s, e) in enumerate(windows)]
    for causal in (False, True):
        got = stitch_windows(windows, arrays, length, causal=causal)[0, :, 0]
        for row in range(length):
            holding = [k for k, (s, e) in enumerate(windows) if s <= row < e]
            if causal:
                best = max(row - windows[k][0] for k in holding)
                assert row - windows[int(got[row])][0] == best, (causal, row)
            else:
                best = max(min(row - windows[k][0], windows[k][1] - 1 - row) for k in holding)
                k = int(got[row])
                assert min(row - windows[k][0], windows[k][1] - 1 - row) >= best - 1, (causal, row)


def test_chunk_policy_gives_full_length_rows(tmp_path):
    out = _run(tmp_path / "c.h5", max_length=5, long_policy="chunk", chunk_overlap=2)
    res = read_all(out)
    for rec in read_fasta(SMALL):
        np.testing.assert_array_equal(res[rec.id], onehot_reference(rec.sequence))
    with EmbeddingsReader(out) as r:
        assert r.dataset("P1").attrs["chunks"] > 1


def test_skip_and_truncate_policies(tmp_path):
    skipped = _run(tmp_path / "s.h5", max_length=10, long_policy="skip")
    with EmbeddingsReader(skipped) as r:
        assert sorted(r.failed()) == ["P1", "P1copy", "sp|Q9/slash"]
        assert "P1" not in r.ids() and "rare" in r.ids()
    truncated = read_all(_run(tmp_path / "t.h5", max_length=10, long_policy="truncate"))
    np.testing.assert_array_equal(truncated["P1"], onehot_reference("MKTAYIAKQRQISFVKSHFSRQ"[:10]))


CUT_AT_10 = {"P1": 22, "P1copy": 22, "sp|Q9/slash": 20}  # SMALL's proteins longer than 10 residues


def _truncated_attr(path):
    import json

    import h5py

    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["truncated"]) if "truncated" in f.attrs else None


def test_truncated_proteins_are_said_in_the_summary_recorded_in_the_file_and_shown_by_info(run_cli, tmp_path):
    """--long-policy truncate cut proteins without a word: the summary and `info` said nothing of
    how many (esm-extract's silent truncation, a known complaint of ESM users)."""
    import json

    out = tmp_path / "t.h5"
    r = run_cli("embed", SMALL, "-m", "onehot", "--max-length", "10", "--long-policy", "truncate", "-o", out)
    assert r.exit_code == 0, r.stderr
    line = next(line for line in r.stderr.splitlines() if line.startswith("truncated "))
    assert line.startswith("truncated 3 proteins longer than --max-length 10 to their first 10 residues "
                           "(--long-policy truncate): ")
    assert sorted(line.split(": ", 1)[1].split("; ")[0].split(", ")) == sorted(CUT_AT_10)
    assert _truncated_attr(out) == CUT_AT_10
    shown = run_cli("info", out).stdout
    assert "truncated:     3 (P1: 22 residues; P1copy: 22 residues; sp|Q9/slash: 20 residues)" in shown, shown
    assert json.loads(run_cli("info", out, "--json").stdout)["truncated"] == CUT_AT_10
    # none cut: no line, and the file says none were (not "not recorded")
    r = run_cli("embed", SMALL, "-m", "onehot", "--max-length", "30", "--long-policy", "truncate", "-o", out, "--force")
    assert "\ntruncated " not in r.stderr and _truncated_attr(out) == {}
    assert "truncated:     0\n" in run_cli("info", out).stdout
    # another policy: nothing is cut, nothing said
    run_cli("embed", SMALL, "-m", "onehot", "-o", out, "--force")
    assert _truncated_attr(out) is None and "\ntruncated:" not in run_cli("info", out).stdout


@pytest.mark.parametrize("layout", ["grouped", "stacked"])
def test_a_resumed_run_lists_the_proteins_truncated_before_it_and_says_its_own(tmp_path, monkeypatch, layout):
    """The file lists every protein stored truncated, an interrupted run's too (even where a kill
    left its `truncated` attribute unwritten); the summary, the ones this run cut."""
    import h5py

    kw = dict(max_length=10, long_policy="truncate", max_batch_size=1, per_residue=layout != "stacked",
              per_protein=True, layout=layout)
    out = tmp_path / "t.h5"
    _interrupt(out, SMALL, monkeypatch, 3, **kw)
    with h5py.File(partial_path(out), "r+") as f:
        before = set(CUT_AT_10) & {f[PER_PROTEIN][k].attrs["id"] for k in f[PER_PROTEIN]}
        del f.attrs["truncated"]  # (as a SIGKILL leaves it: written at a close)
    assert before  # (the longest are computed first)
    summary = embed(SMALL, out, EmbedOptions(model="onehot", resume=True, **kw))
    assert sorted(summary.truncated) == sorted(set(CUT_AT_10) - before) and summary.max_length == 10
    assert _truncated_attr(out) == CUT_AT_10


def test_a_protein_exactly_max_length_long_is_embedded_whole_under_every_policy(tmp_path):
    """--max-length N is the longest protein embedded whole: one of N residues is no long protein
    (not refused, skipped, truncated or chunked); one of N + 1 is."""
    fasta = tmp_path / "edge.fa"
    fasta.write_text(">exact\nMKTAYIAKQR\n>over\nMKTAYIAKQRQ\n")
    for policy in ("skip", "truncate", "chunk"):
        out = _run(tmp_path / f"{policy}.h5", fasta=fasta, max_length=10, long_policy=policy,
                   chunk_overlap=2 if policy == "chunk" else 64)
        with EmbeddingsReader(out) as r:
            assert "exact" in r.ids() and "exact" not in r.failed(), policy
            attrs = dict(r.dataset("exact").attrs)
            assert "chunks" not in attrs and "truncated_from" not in attrs, (policy, attrs)
            np.testing.assert_array_equal(r.dataset("exact")[()], onehot_reference("MKTAYIAKQR"))
            assert ("over" in r.failed()) == (policy == "skip"), policy
    exact = tmp_path / "exact.fa"
    exact.write_text(">exact\nMKTAYIAKQR\n")
    np.testing.assert_array_equal(read_all(_run(tmp_path / "e.h5", fasta=exact, max_length=10))["exact"],
                                  onehot_reference("MKTAYIAKQR"))


def test_a_max_length_equal_to_the_models_limit_is_accepted():
    """--max-length may be anything up to the model's own limit, that limit included; one more is
    a usage error naming it."""
    from protrans_cli.embed import resolve_max_length

    assert resolve_max_length(EmbedOptions(model="onehot", max_length=2046), model_max=2046) == 2046
    assert resolve_max_length(EmbedOptions(model="onehot"), model_max=2046) == 2046
    with pytest.raises(UsageError, match=r"^max_length=2047 is more than the model accepts \(2046 residues"):
        resolve_max_length(EmbedOptions(model="onehot", max_length=2047), model_max=2046)


def test_invalid_policy_skip_records_bad_sequences_and_embeds_the_rest(tmp_path, run_cli):
    """One record with a J or an inner '*' (a translated ORF) stopped a whole run before any work,
    with no way to go on. `--invalid-policy skip` records each in `failed` with its reason and
    embeds the others exactly as a run without them does; the default still stops."""
    good = SMALL.read_text()
    bad = ">bad J protein\nMKJVL\n>orf\nMKV*LLA\n>empty\n\n"
    mixed = tmp_path / "mixed.fa"
    mixed.write_text(bad + good)
    result = run_cli("embed", mixed, "-m", "onehot", "-o", tmp_path / "strict.h5")
    assert result.exit_code == 1 and "record 'bad': invalid character 'J' at residue 3 (--invalid-policy skip " \
        "leaves such records out)" in result.stderr
    assert not (tmp_path / "strict.h5").exists()
    out = tmp_path / "o.h5"
    result = run_cli("embed", mixed, "-m", "onehot", "--invalid-policy", "skip", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "3 protein(s) have no embedding" in result.stderr
    with EmbeddingsReader(out) as r:
        assert r.failed() == {"bad": "skipped: invalid character 'J' at residue 3 (--invalid-policy skip)",
                              "orf": "skipped: internal stop '*' at residue 4 (--invalid-policy skip)",
                              "empty": "skipped: empty sequence (--invalid-policy skip)"}
    reference = read_all(_run(tmp_path / "ref.h5"))
    got = read_all(out)
    assert sorted(got) == sorted(reference)
    for ident, rows in reference.items():
        np.testing.assert_array_equal(got[ident], rows)
    # the same policy on --resume: nothing left to do, the file as it was
    before = out.read_bytes()
    result = run_cli("embed", mixed, "-m", "onehot", "--invalid-policy", "skip", "-o", out, "--resume")
    assert result.exit_code == 0 and out.read_bytes() == before, result.stderr
    # a skipped record's id is still a key: a duplicate of it is refused before any work
    (tmp_path / "dup.fa").write_text(bad + ">bad\nMKV\n")
    result = run_cli("embed", tmp_path / "dup.fa", "-m", "onehot", "--invalid-policy", "skip", "-o", tmp_path / "d.h5")
    assert result.exit_code == 1 and "record 'bad': duplicate id" in result.stderr
    # a header without an id cannot be listed failed under one: an error naming its line, either way
    (tmp_path / "noid.fa").write_text(">a\nMKV\n>  \nMKT\n")
    for extra in ([], ["--invalid-policy", "skip"]):
        result = run_cli("embed", tmp_path / "noid.fa", "-m", "onehot", *extra, "-o", tmp_path / "n.h5")
        assert result.exit_code == 1 and result.stderr == f"protrans: error: {tmp_path / 'noid.fa'}:3: header has " \
            "no id\n", result.stderr
        assert not (tmp_path / "n.h5").exists() and not (tmp_path / "n.h5.partial").exists()


def test_nucleotide_sequences_are_warned_about_once_and_still_embedded(tmp_path, run_cli):
    """A genome's .fna given for its .faa: A, C, G, T and N are amino acids too, so every model
    embedded a DNA or RNA FASTA as proteins without a word (DIAMOND's makedb stops on it). One
    warning with how many and which; the records are embedded as written (protein databases hold
    a few such sequences); a short peptide of those letters and a real protein say nothing."""
    dna = "ATGGCGATCGATCGATCGTAGCTAGCTAGCATCGATCGATCGATCGTAGC"
    fasta = tmp_path / "mixed.fa"
    fasta.write_text(f">cds1 a gene\n{dna}\n>mrna\n{dna.replace('T', 'U').lower()}\n>cds2\n{dna[::-1]}N\n"
                     f">peptide\nGAGACGTA\n>P1\nMKTAYIAKQRQISFVKSHFSRQ\n>cds4\n{dna}GG\n")
    out = tmp_path / "o.h5"
    result = run_cli("embed", fasta, "-m", "onehot", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert (f"protrans: warning: {fasta}: 4 of 6 protein(s) hold only the letters A, C, G, T, U and N (at least 30 "
            "residues), as nucleotide sequences do: cds1, mrna, cds2 and 1 more. Protein models read them as amino "
            "acids; translate DNA or RNA to proteins first\n") in result.stderr
    assert result.stderr.count("as nucleotide sequences do") == 1
    with EmbeddingsReader(out) as r:
        assert len(r.ids()) == 6 and r.get("cds1", "per_residue").shape == (len(dna), 21)
    protein_only = tmp_path / "protein.fa"
    protein_only.write_text(">peptide\nGAGACGTA\n>P1\nMKTAYIAKQRQISFVKSHFSRQ\n")
    result = run_cli("embed", protein_only, "-m", "onehot", "-o", tmp_path / "p.h5")
    assert result.exit_code == 0 and "as nucleotide sequences do" not in result.stderr, result.stderr

    # embed_sequences: the input named as given, not by its temporary file's path
    import contextlib
    import io

    from protrans_cli.embed import embed_sequences

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        vectors = embed_sequences({"cds1": dna, "P1": "MKTAYIAK"}, EmbedOptions(model="onehot"), kind="per_protein")
    assert sorted(vectors) == ["P1", "cds1"]
    assert err.getvalue().startswith("protrans: warning: <sequences>: 1 of 2 protein(s) hold only the letters "), \
        err.getvalue()
    # a list's proteins by position, as its warning about proteins left out names them (not "0, 2")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        vectors = embed_sequences([dna, "MKT-AYIAK", dna + "A", "M.KT"], EmbedOptions(model="onehot"),
                                  kind="per_protein")
    assert len(vectors) == 4 and all(v.shape == (21,) for v in vectors)
    assert "as nucleotide sequences do: item 0, item 2. Protein models" in err.getvalue(), err.getvalue()
    assert "held gap characters ('-', '.'), removed: item 1, item 3. Their rows" in err.getvalue(), err.getvalue()
    # (a dict's by id, as before; and a later call on a file, by id)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        embed_sequences({"0": dna}, EmbedOptions(model="onehot"), kind="per_protein")
    assert "as nucleotide sequences do: 0. Protein models" in err.getvalue(), err.getvalue()
    result = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "again.h5")
    assert "as nucleotide sequences do: cds1, mrna, cds2 and 1 more" in result.stderr, result.stderr


def test_gaps_removed_from_aligned_rows_are_said_once(tmp_path, run_cli):
    """An MSA's rows given to embed lose their gaps (docs/embed.md), so row i of a protein is its
    i-th residue, not the alignment's i-th column: a per-residue file that did not line up with the
    alignment, without a word. One warning with how many and which; rows as before."""
    fasta = tmp_path / "msa.fa"
    fasta.write_text(">q\nMKT--AYIAK\n>h1\n-KTQ-AY.AK\n>h2 no gaps\nMKTQEAYIAK\n>h3\nMKTQ\nEAY-IA-\n")
    out = tmp_path / "o.h5"
    result = run_cli("embed", fasta, "-m", "onehot", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert (f"protrans: warning: {fasta}: 3 of 4 protein(s) held gap characters ('-', '.'), removed: q, h1, h3. "
            "Their rows are the residues alone, not the alignment's columns\n") in result.stderr
    assert result.stderr.count("held gap characters") == 1
    with EmbeddingsReader(out) as r:
        assert [r.get(i, "per_residue").shape[0] for i in ("q", "h1", "h2", "h3")] == [8, 7, 10, 9]
    plain = tmp_path / "plain.fa"
    plain.write_text(">h2\nMKTQEAYIAK\n")
    result = run_cli("embed", plain, "-m", "onehot", "-o", tmp_path / "p.h5")
    assert result.exit_code == 0 and "gap characters" not in result.stderr, result.stderr


def test_a_record_gapped_with_dots_alone_is_said_too(tmp_path, run_cli):
    """An A3M's insert columns are '.', with no '-' in the row: its dots are removed as '-' are,
    and said alike."""
    fasta = tmp_path / "a3m.fa"
    fasta.write_text(">d\nMK..TAY\n>plain\nMKTAY\n")
    result = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "o.h5")
    assert result.exit_code == 0, result.stderr
    assert "1 of 2 protein(s) held gap characters ('-', '.'), removed: d." in result.stderr, result.stderr


def test_long_policy_error_names_the_record(tmp_path):
    with pytest.raises(InputError, match=r"P1.*longer than max_length=10 \(add long_policy="):  # (a field here)
        _run(tmp_path / "e.h5", max_length=10)
    assert not (tmp_path / "e.h5").exists()


def test_duplicate_ids_fail_before_compute(tmp_path, monkeypatch):
    def boom(self, seqs, **kw):
        raise AssertionError("computed before the duplicate check")

    monkeypatch.setattr(OneHotEmbedder, "embed_batch", boom)
    with pytest.raises(InputError, match="duplicate id"):
        _run(tmp_path / "d.h5", fasta=DATA / "embed" / "duplicate_ids.fa")
    assert not (tmp_path / "d.h5").exists() and not partial_path(tmp_path / "d.h5").exists()


def test_identical_sequences_are_computed_once(tmp_path, monkeypatch):
    seen = spy_on_batches(monkeypatch)
    _run(tmp_path / "u.h5")
    assert len(seen) == len(set(seen)) == 5


def _ctrl_c_on_batch(monkeypatch, n: int):
    """Make the onehot embedder raise KeyboardInterrupt (a Ctrl-C) on its n-th batch; returns the
    original method, to put back before resuming."""
    original = OneHotEmbedder.embed_batch
    calls = []

    def interrupted(self, seqs, **kw):
        calls.append(seqs)
        if len(calls) == n:
            raise KeyboardInterrupt
        return original(self, seqs, **kw)

    monkeypatch.setattr(OneHotEmbedder, "embed_batch", interrupted)
    return original


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, monkeypatch):
    full = read_all(_run(tmp_path / "full.h5", max_batch_size=1))
    out = tmp_path / "resumed.h5"
    original = _ctrl_c_on_batch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _run(out, max_batch_size=1)
    assert not out.exists()
    partial = read_all(partial_path(out))
    assert 0 < len(partial) < len(full)  # readable, with what was done before the interruption
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", original)
    summary = embed(SMALL, out, EmbedOptions(model="onehot", max_batch_size=1, resume=True))
    assert summary.num_resumed == len(partial)
    resumed = read_all(out)
    assert resumed.keys() == full.keys()
    for k in full:
        np.testing.assert_array_equal(resumed[k], full[k])
    assert not partial_path(out).exists()



def test_resume_computes_again_a_protein_that_lacks_one_of_the_kinds_asked_for(tmp_path, monkeypatch):
    # A run killed between a protein's per-residue and per-protein datasets (no sealed ledger: the
    # resume reads the file's proteins): the protein is done only when every kind asked for is
    # there, so the resume embeds it again and the finished file has both, equal to a whole run's.
    import h5py

    from protrans_cli.io.h5 import escape_key, ledger_path

    full = _run(tmp_path / "full.h5", max_batch_size=1, per_protein=True)
    out = tmp_path / "resumed.h5"
    _interrupt(out, SMALL, monkeypatch, 4, max_batch_size=1, per_protein=True)
    partial = partial_path(out)
    ledger_path(partial).unlink()  # as a SIGKILL leaves it: the proteins are read from the file
    done = read_all(partial)
    victim = sorted(done)[0]
    with h5py.File(partial, "r+") as f:
        del f[PER_PROTEIN][escape_key(victim)]
    summary = embed(SMALL, out, EmbedOptions(model="onehot", max_batch_size=1, per_protein=True, resume=True))
    assert summary.num_resumed == len(done) - 1
    for kind in (PER_RESIDUE, PER_PROTEIN):
        want, got = read_all(full, kind), read_all(out, kind)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])

def _reads_no_protein(monkeypatch):
    """Make reading an output's proteins back one by one (the resume scan) fail."""
    from protrans_cli.io import h5 as h5_module

    def refused(*args, **kwargs):
        raise AssertionError("the resume read the file's proteins one by one")

    monkeypatch.setattr(h5_module, "stored_proteins", refused)


def _interrupt(out, fasta, monkeypatch, n: int, **kw):
    original = _ctrl_c_on_batch(monkeypatch, n)
    with pytest.raises(KeyboardInterrupt):
        embed(fasta, out, EmbedOptions(model="onehot", **kw))
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", original)


def test_a_cleanly_stopped_run_resumes_from_its_ledger_without_reading_its_proteins(tmp_path, monkeypatch):
    # --resume read every protein of the partial file back (~90 us each: an hour and more for a
    # UniRef50 run stopped half-way). A run stopped cleanly (Ctrl-C, SIGTERM, an error) leaves a
    # sealed ledger of its complete proteins, which the resume reads instead.
    from protrans_cli.io.h5 import ledger_path

    fasta = generated_fasta(tmp_path / "g.fa", 60, repeat_every=7)
    full = file_content(_run(tmp_path / "full.h5", fasta=fasta, max_batch_size=4, per_protein=True))
    out = tmp_path / "out.h5"
    _interrupt(out, fasta, monkeypatch, 4, max_batch_size=4, per_protein=True)
    ledger = ledger_path(partial_path(out))
    assert ledger.is_file()
    done = len(read_all(partial_path(out)))
    _interrupt(out, fasta, monkeypatch, 3, max_batch_size=4, per_protein=True, resume=True)
    again = len(read_all(partial_path(out)))
    assert 0 < done < again < 60 and ledger.is_file()
    _reads_no_protein(monkeypatch)
    summary = embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=4, per_protein=True, resume=True))
    assert summary.num_resumed == again and summary.num_embedded + again == 60
    assert_same_content(file_content(out), full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.h5", "g.fa", "out.h5"]  # no ledger left


@pytest.mark.parametrize("fork", ["absent", "refused"])
def test_resume_reads_the_file_in_this_process_where_no_child_can_be_forked(tmp_path, monkeypatch, fork):
    """--resume reads a partial file in a forked child (HDF5 may crash on a killed run's file);
    where there is no fork (Windows), or the fork is refused (no memory for a copy of a process
    holding a model, under strict overcommit), it reads it here: the same proteins kept, the
    same refusal of other settings, the same finished file."""
    import errno

    from protrans_cli.io.h5 import ledger_path

    fasta = generated_fasta(tmp_path / "g.fa", 30, repeat_every=0)
    full = file_content(_run(tmp_path / "full.h5", fasta=fasta, max_batch_size=4, per_protein=True))
    out = tmp_path / "out.h5"
    _interrupt(out, fasta, monkeypatch, 3, max_batch_size=4, per_protein=True)
    ledger_path(partial_path(out)).unlink()  # as after a kill: the file itself is read
    done = len(read_all(partial_path(out)))
    if fork == "absent":
        monkeypatch.delattr(os, "fork")
    else:
        def refused():
            raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

        monkeypatch.setattr(os, "fork", refused)
    with pytest.raises(UsageError, match="cannot resume: the file was written with storage_dtype='float32', this "
                                         "run uses storage_dtype='float16'"):
        embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=4, per_protein=True, resume=True,
                                       storage_dtype="float16"))
    summary = embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=4, per_protein=True, resume=True))
    assert 0 < summary.num_resumed == done < 30 and summary.num_embedded + done == 30
    assert_same_content(file_content(out), full)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.h5", "g.fa", "out.h5"]  # no child's folder left


def test_a_resume_from_a_sealed_ledger_refuses_an_id_whose_sequence_changed(tmp_path, monkeypatch):
    """The ledger keeps each protein's sequence checksum, so a resume that trusts it (the file's
    proteins not read back) still refuses an id whose sequence changed since, as one that reads
    the file does. A ledger of ids alone passed every test: the old rows stayed under the id."""
    from protrans_cli.io.h5 import read_ledger

    fasta = generated_fasta(tmp_path / "g.fa", 20, repeat_every=0)
    out = tmp_path / "out.h5"
    _interrupt(out, fasta, monkeypatch, 2, max_batch_size=4)
    done = sorted(read_all(partial_path(out)))
    assert done and read_ledger(partial_path(out)) is not None
    changed = tmp_path / "changed.fa"
    changed.write_text("".join(">" + (r.rstrip("\n") + "W\n" if r.split(None, 1)[0] == done[0] else r)
                               for r in fasta.read_text().split(">")[1:]))
    _reads_no_protein(monkeypatch)
    with pytest.raises(InputError, match=f"record '{done[0]}': cannot resume: the output holds another sequence"):
        embed(changed, out, EmbedOptions(model="onehot", max_batch_size=4, resume=True))


@pytest.mark.parametrize("change", ["killed", "touched", "rewritten"])
def test_a_ledger_not_sealed_for_the_file_as_it_is_is_not_trusted(tmp_path, monkeypatch, capsys, change):
    # A SIGKILL leaves the ledger unsealed; a file changed after its run (touched, rewritten by
    # another program) no longer matches the seal: the resume reads the proteins from the file,
    # and seals a ledger of what it read, so the next resume need not.
    import h5py

    from protrans_cli.io.h5 import LEDGER_MAGIC, ledger_path, read_ledger

    fasta = generated_fasta(tmp_path / "g.fa", 40, repeat_every=0)
    full = file_content(_run(tmp_path / "full.h5", fasta=fasta, max_batch_size=4))
    out = tmp_path / "out.h5"
    _interrupt(out, fasta, monkeypatch, 5, max_batch_size=4)
    partial, ledger = partial_path(out), ledger_path(partial_path(out))
    assert read_ledger(partial) is not None
    if change == "killed":
        ledger.write_bytes(ledger.read_bytes()[:-64])
    elif change == "touched":
        os.utime(partial, ns=(1, 1))
    else:  # a protein removed: a ledger that listed it would leave it out of the finished file
        with h5py.File(partial, "a") as f:
            del f[PER_RESIDUE][sorted(f[PER_RESIDUE])[0]]
    assert read_ledger(partial) is None
    monkeypatch.setattr("protrans_cli.embed_resume._SAY_READ_BACK_BYTES", 0)  # (said from 64 MiB on)
    capsys.readouterr()
    _interrupt(out, fasta, monkeypatch, 2, max_batch_size=4, resume=True)  # read from the file, then stopped again
    # said before the read, which took minutes on a large file with nothing on stderr
    assert f"{partial}: reading back the proteins it holds (" in capsys.readouterr().err
    assert read_ledger(partial) is not None and ledger.read_bytes().startswith(LEDGER_MAGIC)
    _reads_no_protein(monkeypatch)
    embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=4, resume=True))
    assert_same_content(file_content(out), full)


def test_ledgers_are_never_written_through_a_link_and_a_short_write_drops_one(tmp_path, monkeypatch):
    # A shared output folder: links planted under the ledger's predictable names must not make a
    # run overwrite what they point to.
    from protrans_cli.io import h5 as h5_module
    from protrans_cli.io.h5 import ledger_path, read_ledger

    fasta = generated_fasta(tmp_path / "g.fa", 30, repeat_every=0)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out.h5"
    ledger = ledger_path(partial_path(out))
    ledger.symlink_to(victim)
    _interrupt(out, fasta, monkeypatch, 2, max_batch_size=4)
    assert victim.read_text() == "precious" and not ledger.is_symlink() and read_ledger(partial_path(out))
    ledger.unlink()  # read whole by the next resume, whose sealed ledger goes through a temporary
    tmp = ledger.with_name(ledger.name + ".tmp")
    tmp.symlink_to(victim)
    _interrupt(out, fasta, monkeypatch, 2, max_batch_size=4, resume=True)
    assert victim.read_text() == "precious" and not tmp.exists() and read_ledger(partial_path(out))
    # a short write (a nearly full disk) would shift every later record: the ledger goes instead
    writer = h5_module._Ledger(tmp_path / "x.partial", fresh=True, keep=None)
    writer.add("p1", "md5:00")
    monkeypatch.setattr(h5_module.os, "write", lambda fd, data: len(data) - 1)
    writer.flushed()
    monkeypatch.undo()
    assert writer.fd is None and not ledger_path(tmp_path / "x.partial").exists()


def test_a_finished_file_being_extended_starts_its_ledger_with_its_proteins(tmp_path, monkeypatch):
    # A finished output extended by --resume (new proteins in the FASTA) had no ledger: a stop,
    # and the next resume read every protein of the file again. Its ledger now starts with the
    # proteins read from it (an empty one, sealed at a stop, would have had the next resume take
    # every one of them for missing).
    from protrans_cli.io.h5 import ledger_path, read_ledger

    fasta = generated_fasta(tmp_path / "g.fa", 30, repeat_every=0)
    first = tmp_path / "first.fa"
    first.write_text("".join(f">{r.description}\n{r.sequence}\n" for r in list(read_fasta(fasta))[:12]))
    full = file_content(_run(tmp_path / "full.h5", fasta=fasta, max_batch_size=4))
    out = _run(tmp_path / "out.h5", fasta=first, max_batch_size=4)
    _interrupt(out, fasta, monkeypatch, 2, max_batch_size=4, resume=True)
    assert partial_path(out).exists() and ledger_path(partial_path(out)).exists()
    ids, _ = read_ledger(partial_path(out))
    assert len(ids) == len(read_all(partial_path(out))) > 12  # the finished file's 12 and this run's
    _reads_no_protein(monkeypatch)
    summary = embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=4, resume=True))
    assert summary.num_resumed == len(ids)
    assert_same_content(file_content(out), full)
    assert not ledger_path(partial_path(out)).exists() and not ledger_path(out).exists()


def test_resume_of_a_finished_file_with_nothing_to_add_leaves_it_untouched(tmp_path, monkeypatch, run_cli):
    """--resume on a finished output renamed it to OUT.partial until the run ended, even when
    there was nothing to compute: a Ctrl-C then left the user's finished file "gone"."""
    out = _run(tmp_path / "r.h5")
    before, stat = out.read_bytes(), out.stat()

    def no_model(*args, **kwargs):
        raise AssertionError("nothing should be computed")

    monkeypatch.setattr(OneHotEmbedder, "embed_batch", no_model)
    result = run_cli("embed", SMALL, "-m", "onehot", "-o", out, "--resume")
    assert result.exit_code == 0, result.stderr
    assert "embedded 0 proteins" in result.stderr and f"{len(list(read_fasta(SMALL)))} already there" in result.stderr
    assert out.read_bytes() == before and out.stat().st_mtime_ns == stat.st_mtime_ns
    assert out.stat().st_ino == stat.st_ino and not partial_path(out).exists()
    # one protein more: the file is extended (and is OUT.partial meanwhile)
    more = tmp_path / "more.fa"
    more.write_text(SMALL.read_text() + ">new\nMKV\n")
    monkeypatch.undo()
    summary = embed(more, out, EmbedOptions(model="onehot", resume=True))
    assert summary.num_embedded == 1 and "new" in read_all(out)


def test_resume_of_a_finished_file_counts_its_failed_proteins_as_failed(tmp_path, run_cli):
    """--resume of a finished file with nothing to add counted every record "already there",
    its skipped proteins too, and did not name them; resumed from its partial file (or a torchrun
    run's shards) the same proteins were counted apart and listed as failed."""
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKTAYIAK\n>b\nACDEFGHIKL\n>bad\nMKJL\n")
    out = tmp_path / "x.h5"
    first = run_cli("embed", fasta, "-m", "onehot", "-o", out, "--invalid-policy", "skip")
    assert first.exit_code == 0, first.stderr
    result = run_cli("embed", fasta, "-m", "onehot", "-o", out, "--invalid-policy", "skip", "--resume")
    assert result.exit_code == 0, result.stderr
    assert "embedded 0 proteins" in result.stderr and "; 2 already there" in result.stderr
    assert "1 protein(s) have no embedding" in result.stderr and "bad: skipped: invalid character" in result.stderr
    summary = embed(fasta, out, EmbedOptions(model="onehot", invalid_policy="skip", resume=True))
    assert summary.num_resumed == 2 and list(summary.failed) == ["bad"]


def test_resume_refuses_an_id_whose_sequence_changed(tmp_path):
    out = _run(tmp_path / "r.h5")
    changed = tmp_path / "changed.fa"
    changed.write_text(SMALL.read_text().replace("MKXUZOBA", "MKXUZOBAW"))
    with pytest.raises(InputError, match="record 'rare'.*another sequence"):
        embed(changed, out, EmbedOptions(model="onehot", resume=True))


def test_resume_with_other_settings_is_refused(tmp_path):
    out = _run(tmp_path / "r.h5")
    with pytest.raises(UsageError, match="kinds"):
        embed(SMALL, out, EmbedOptions(model="onehot", per_residue=False, resume=True))


@pytest.mark.parametrize("layout", ["flat", "grouped"])
@pytest.mark.parametrize("partial", [False, True])
def test_resume_refuses_a_file_another_tool_wrote(tmp_path, layout, partial):
    """A ProtTrans-script or bio_embeddings file (datasets at the root, no attributes) was
    "resumed": this run's proteins written beside its own (under other keys: bio_embeddings' md5
    ones), a grouped run's groups hiding them from every reader, and the file relabelled with this
    run's model. It is refused and left as it was."""
    import h5py

    out = tmp_path / "foreign.h5"
    target = partial_path(out) if partial else out
    with h5py.File(target, "w") as f:
        d = f.create_dataset("0123456789abcdef0123456789abcdef", data=np.ones((3, 21), np.float32))
        d.attrs["original_id"] = "P1"
        f.create_dataset("P2", data=np.ones((4, 21), np.float32))
    before = target.read_bytes()
    with pytest.raises(UsageError, match="not an output of protrans embed"):
        embed(SMALL, out, EmbedOptions(model="onehot", per_protein=layout == "grouped", layout=layout, resume=True))
    assert target.read_bytes() == before


def test_an_output_another_run_is_writing_is_left_alone(tmp_path, run_cli):
    """A second embed on the output of a live run truncated the first run's OUT.partial (h5py's
    "w" truncates before it meets the HDF5 lock), and both died; --resume advised deleting the
    live file. Now both kinds of second run are refused before touching it."""
    out = tmp_path / "busy.h5"
    partial = partial_path(out)
    with another_process(f"import h5py\nf = h5py.File({str(partial)!r}, 'w'); f.attrs['mine'] = 1; f.flush()"):
        before = partial.read_bytes()
        for extra in ([], ["--resume"]):
            result = run_cli("embed", SMALL, "-m", "onehot", "-o", out, *extra)
            assert result.exit_code == 1, result.stderr
            assert result.stderr.strip() == (f"protrans: error: {partial}: is being written by another process (it "
                                             "holds the HDF5 file lock): wait for that run to end, or choose another -o")
            assert partial.read_bytes() == before and not out.exists()
    # once it is gone: what it left is refused without --resume or --force, as OUTPUT is
    result = run_cli("embed", SMALL, "-m", "onehot", "-o", out)
    assert result.exit_code == 2 and "busy.h5.partial holds the work of an interrupted run" in result.stderr
    assert run_cli("embed", SMALL, "-m", "onehot", "-o", out, "--force").exit_code == 0


def test_a_second_run_on_the_output_of_a_live_run_is_refused(tmp_path, run_cli):
    """Two `embed -o out.h5` started together both passed the "exists" check while their models
    loaded; the later one then replaced the first one's finished file (exit 0 both), or removed
    its partial file ("the embeddings written there are lost"). The output is now locked for the
    whole run: a second run is refused, whatever its flags, and leaves the output as it was."""
    out = tmp_path / "busy.h5"
    assert run_cli("embed", SMALL, "-m", "onehot", "-o", out).exit_code == 0
    before = out.read_bytes()
    holder = ("from protrans_cli.io.files import output_lock\n"
              f"lock = output_lock({str(out)!r}, 'busy'); lock.__enter__()")
    with another_process(holder):
        for extra in ([], ["--force"], ["--resume"]):
            result = run_cli("embed", SMALL, "-m", "onehot", "--per-residue", "-o", out, *extra)
            assert result.exit_code == 1, result.stderr
            assert result.stderr.strip() == (f"protrans: error: {out}: is the output of another protrans run (embed, "
                                             "contacts, merge, import-esm) that is running now: wait for it to end, "
                                             "or choose another -o")
            assert out.read_bytes() == before and not partial_path(out).exists()
    # the lock goes with its holder, and a run removes its lock file as it ends, failed or not
    assert run_cli("embed", SMALL, "-m", "onehot", "-o", out).exit_code == 2  # (exists)
    assert run_cli("embed", SMALL, "-m", "onehot", "--per-residue", "-o", out, "--force").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy.h5"]


def test_a_refused_second_run_leaves_the_live_runs_copy_of_stdin(tmp_path, run_cli):
    """The copy of stdin is named after the output. A second `embed - -o OUT --resume` (or
    --force) replaced the live run's copy before it found OUTPUT.partial in use, and the first
    run, its proteins all written, then failed on removing a copy that was gone."""
    out = tmp_path / "busy.h5"
    spool = tmp_path / ".busy.h5.stdin.spool"
    spool.write_bytes(b">live\nMKV\n")  # the live run's copy of its stdin
    with another_process(f"import h5py\nf = h5py.File({str(partial_path(out))!r}, 'w'); f.flush()"):
        for extra in (["--resume"], ["--force"]):
            result = run_cli("embed", "-", "-m", "onehot", "-o", out, *extra, input=b">P1\nMKT\n")
            assert result.exit_code == 1 and "is being written by another process" in result.stderr
            assert spool.read_bytes() == b">live\nMKV\n"


@pytest.mark.parametrize("offset", [800, 2048, 4096])
def test_resume_on_a_partial_with_damaged_structure_is_one_line(tmp_path, run_cli, offset):
    # Object headers overwritten on disk gave a KeyError traceback from h5py. Now either the
    # readable proteins are salvaged and the rest embedded again, or one line says why not.
    full = read_all(_run(tmp_path / "full.h5"))
    out = _run(tmp_path / "d.h5")
    data = bytearray(out.read_bytes())
    data[offset:offset + 4096] = bytes(len(data[offset:offset + 4096]))
    partial_path(out).write_bytes(bytes(data))
    out.unlink()
    result = run_cli("embed", SMALL, "-m", "onehot", "-o", out, "--resume")
    assert "Traceback" not in result.stderr
    if result.exit_code == 0:
        assert "repaired the damaged file: the readable proteins copied into a fresh file" in result.stderr
        resumed = read_all(out)
        assert resumed.keys() == full.keys() and all(np.array_equal(resumed[k], full[k]) for k in full)
    else:
        assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
        assert f"{partial_path(out)}: cannot resume: not a readable HDF5 file (" in result.stderr
        assert partial_path(out).read_bytes() == bytes(data)


def test_resume_on_a_partial_that_is_not_hdf5_says_what_it_is(tmp_path, run_cli):
    """A stray file named OUTPUT.partial (notes, a FASTA, random bytes) or an empty one was "cannot
    resume: not a readable HDF5 file (Unable to synchronously open file (file signature not
    found))", HDF5's words; now "not an HDF5 file" and what it is, as the readers say it, with the
    same advice. The file is left as it was; so is an empty finished OUTPUT given to --resume."""
    out = tmp_path / "out.h5"
    partial = partial_path(out)
    said = {b"my notes, not embeddings\n": "it begins 'my notes, not em'", b">P1\nMKV\n": "it begins '>P1\\nMKV\\n'",
            b"\x01\x02\x00\x03" * 64: "the file is binary", b"": "the file is empty: 0 bytes"}
    for data, what in said.items():
        partial.write_bytes(data)
        result = run_cli("embed", SMALL, "-m", "onehot", "-o", out, "--resume")
        assert result.exit_code == 1 and result.stderr == (f"protrans: error: {partial}: cannot resume: not an HDF5 "
                                                           f"file ({what}); delete it to start again\n"), result.stderr
        assert partial.read_bytes() == data and not out.exists()
    partial.unlink()
    out.write_bytes(b"")
    result = run_cli("embed", SMALL, "-m", "onehot", "-o", out, "--resume")
    assert result.exit_code == 1 and result.stderr == (f"protrans: error: {out}: cannot resume: not an HDF5 file (the "
                                                       "file is empty: 0 bytes); delete it to start again\n")


@pytest.mark.parametrize("mode", ["--resume", "--force", "neither"])
def test_a_fifo_or_folder_named_output_partial_is_refused_before_anything_opens_it(tmp_path, mode):
    """A named pipe called OUTPUT.partial hung embed for ever, with --resume, --force or neither
    (HDF5's open waits for a writer that never comes); a folder of that name was HDF5's "[Errno
    21] Unable to synchronously open file (file read failed: time = ...)" under --resume, and
    under --force "Is a directory", naming a hidden .creating file it left behind. Each is one
    line naming the path now, before the model loads, and nothing is touched."""
    import subprocess

    out = tmp_path / "out.h5"
    partial = partial_path(out)
    said = {"fifo": "is a named pipe, not a regular file: an HDF5 file is read in place (move it away, or choose "
                    "another -o)",
            "folder": "is a directory, expected an HDF5 file (move it away, or choose another -o)"}
    for kind, message in said.items():
        os.mkfifo(partial) if kind == "fifo" else partial.mkdir()
        # (a process of its own, with a timeout: a hang fails the test rather than blocking it)
        result = subprocess.run([sys.executable, "-m", "protrans_cli", "embed", str(SMALL), "-m", "onehot", "-o",
                                 str(out), *([mode] if mode != "neither" else [])], capture_output=True, text=True,
                                timeout=20, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 1 and result.stderr == f"protrans: error: {partial}: {message}\n", result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == [partial.name]
        os.unlink(partial) if kind == "fifo" else partial.rmdir()


@pytest.mark.parametrize("side", ["ledger", "untrusted", "base"])
def test_a_fifo_beside_output_partial_under_a_side_files_name_is_refused(tmp_path, side):
    """A named pipe called OUTPUT.partial.untrusted (the proteins a failed write left unsure) hung
    `embed --resume` for ever, reading it; one called .ledger or .base was deleted or left behind
    by a run. Refused in one line now, with --resume, --force or neither, and left as it is."""
    import subprocess

    out = tmp_path / "out.h5"
    embed(SMALL, tmp_path / "first.h5", EmbedOptions(model="onehot", threads=1))
    os.replace(tmp_path / "first.h5", partial_path(out))  # (an interrupted run's work)
    fifo = partial_path(out).with_name(f"out.h5.partial.{side}")
    os.mkfifo(fifo)
    for mode in ("--resume", "--force", None):
        # (a process of its own, with a timeout: a hang fails the test rather than blocking it)
        result = subprocess.run([sys.executable, "-m", "protrans_cli", "embed", str(SMALL), "-m", "onehot", "-o",
                                 str(out), *([mode] if mode else [])], capture_output=True, text=True, timeout=20,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.returncode == 1 and result.stderr == (
            f"protrans: error: {fifo}: is a named pipe, not a regular file: a run keeps a file of its own under this "
            "name, beside out.h5.partial (move it away, or choose another -o)\n"), result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5.partial", fifo.name] and fifo.is_fifo()


@pytest.mark.parametrize("layout", ["grouped", "flat"])
def test_a_partial_killed_during_a_flush_is_repaired_and_resume_completes(tmp_path, monkeypatch, capsys, layout):
    """SIGKILL while HDF5 flushed (it writes the superblock, with the end-of-file address, last)
    left metadata beyond the recorded end of the file: "addr overflow", and --resume could only
    say "delete it". The damage is made here as such a kill leaves it: the end-of-file address
    of an earlier flush over a file that grew since, plus one record whose object header the kill
    cut off. Resume mends both and gives the uninterrupted content."""
    import struct

    import h5py

    kw = dict(max_batch_size=1) if layout == "grouped" else dict(max_batch_size=1, layout="flat", per_residue=False,
                                                                    per_protein=True)
    kind = PER_RESIDUE if layout == "grouped" else PER_PROTEIN
    full = read_all(_run(tmp_path / "full.h5", **kw), kind)
    out = tmp_path / "k.h5"
    original = _ctrl_c_on_batch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _run(out, **kw)
    early_eoa = partial_path(out).read_bytes()[40:48]
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", original)
    _ctrl_c_on_batch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        embed(SMALL, out, EmbedOptions(model="onehot", resume=True, **kw))
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", original)
    partial = partial_path(out)
    with h5py.File(partial, "r") as f:
        group = f[PER_RESIDUE] if layout == "grouped" else f
        last = sorted(group.keys(), key=lambda k: h5py.h5o.get_info(group[k].id).addr)[-1]
        header = h5py.h5o.get_info(group[last].id).addr
    data = bytearray(partial.read_bytes())
    assert struct.unpack("<Q", early_eoa)[0] < len(data)
    data[40:48] = early_eoa
    data[header:header + 64] = bytes(64)
    partial.write_bytes(bytes(data))
    with pytest.raises((OSError, RuntimeError, KeyError, ValueError)):
        with h5py.File(partial, "r") as f:  # what the kill left: unreadable
            group = f[PER_RESIDUE] if layout == "grouped" else f
            [group[k][()] for k in group.keys()]

    summary = embed(SMALL, out, EmbedOptions(model="onehot", resume=True, **kw))
    err = capsys.readouterr().err
    assert "repaired the damaged file: the end-of-file address moved from" in err
    assert "; the readable proteins copied into a fresh file; 1 record(s) the kill cut off left out (embedded again)" in err
    assert summary.num_embedded >= 1
    resumed = read_all(out, kind)
    assert resumed.keys() == full.keys()
    for k in full:
        np.testing.assert_array_equal(resumed[k], full[k])


def test_a_partial_with_other_damage_is_left_as_it_was(tmp_path, run_cli):
    """The repair touches only the damage it knows: anything else keeps the one-line error and
    the file's bytes."""
    out = _run(tmp_path / "d.h5")
    data = bytearray(out.read_bytes())
    data[96:96 + 512] = bytes(512)  # the root group's records, with the end-of-file address behind the data
    data[40:48] = (len(data) - 100).to_bytes(8, "little")
    partial_path(out).write_bytes(bytes(data))
    out.unlink()
    result = run_cli("embed", SMALL, "-m", "onehot", "-o", out, "--resume")
    assert result.exit_code == 1 and "not a readable HDF5 file" in result.stderr
    assert partial_path(out).read_bytes() == bytes(data)


def test_a_full_disk_stops_before_the_batch_and_the_partial_resumes(tmp_path, monkeypatch):
    """A write that failed inside HDF5 (disk full, ulimit -f) printed h5py tracebacks and ended in
    a segmentation fault, sometimes with an unreadable partial; now the batch that would not fit
    is refused before it is written, and --resume completes the file."""
    import os
    import types

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io import disk

    fasta = generated_fasta(tmp_path / "g.fa", 60, repeat_every=0)
    reference = _run(tmp_path / "ref.h5", fasta, max_batch_size=4)
    real, calls = os.statvfs, []

    def filling(path):
        calls.append(path)
        free = 10**12 if len(calls) < 5 else 1 << 20  # after the file's creation and three batches
        return types.SimpleNamespace(f_bavail=free, f_frsize=1)

    monkeypatch.setattr(disk.os, "statvfs", filling)
    out = tmp_path / "full.h5"
    with pytest.raises(RuntimeFailure, match=r"no room for the next batch: 1.0 MiB free on the output's disk, 16.0 MiB "
                                             r"needed \(\d+ KiB of data and 16 MiB kept for HDF5's own\); what was computed is kept in .*full.h5.partial"):
        _run(out, fasta, max_batch_size=4)
    monkeypatch.setattr(disk.os, "statvfs", real)
    with EmbeddingsReader(partial_path(out)) as r:
        assert len(r.ids()) == 12  # three batches of four
    _run(out, fasta, max_batch_size=4, resume=True)
    with EmbeddingsReader(out) as got, EmbeddingsReader(reference) as ref:
        assert sorted(got.ids()) == sorted(ref.ids())
        for ident in ref.ids():
            np.testing.assert_array_equal(got.get(ident), ref.get(ident))


def test_a_full_disk_under_force_says_resume_instead_of_force(tmp_path, run_cli, monkeypatch):
    """A --force run that met a full disk said "run the same command with --resume", and the same
    command with --resume added is refused (--resume and --force, not both): it says "--resume
    instead of --force" now, as an interrupted --force run says it, and that finishes the file."""
    import types

    from protrans_cli.io import disk

    old = _run(tmp_path / "o.h5", generated_fasta(tmp_path / "old.fa", 8, seed=1, repeat_every=0))
    fasta = generated_fasta(tmp_path / "g.fa", 40, repeat_every=0)
    reference = _run(tmp_path / "ref.h5", fasta, max_batch_size=4)
    calls = []

    def filling(path):
        calls.append(path)
        return types.SimpleNamespace(f_bavail=10**12 if len(calls) < 5 else 1 << 20, f_frsize=1)

    base = ["embed", fasta, "-m", "onehot", "--max-batch-size", "4", "-o", old]
    with monkeypatch.context() as m:
        m.setattr(disk.os, "statvfs", filling)
        r = run_cli(*base, "--force")
    assert r.exit_code == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith(
        "run the same command with --resume instead of --force once there is room"), r.stderr
    r = run_cli(*base, "--resume")
    assert r.exit_code == 0, r.stderr
    with EmbeddingsReader(old) as got, EmbeddingsReader(reference) as ref:
        assert sorted(got.ids()) == sorted(ref.ids())
        for ident in ref.ids():
            np.testing.assert_array_equal(got.get(ident), ref.get(ident))


def test_stdin_on_a_full_disk_names_its_copy(tmp_path, run_cli, monkeypatch):
    """stdin is copied beside the output to be read twice: a full disk there was "error: No space
    left on device", naming no file."""
    import protrans_cli.embed as embed_module

    monkeypatch.setattr(embed_module, "create_fresh", lambda path, mode=0o666: os.open("/dev/full", os.O_WRONLY))
    out = tmp_path / "o.h5"
    r = run_cli("embed", "-", "-m", "onehot", "-o", out, input=b">a\nMKTAYIAKQR\n>b\nMKV\n")
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == \
        f"protrans: error: {tmp_path / '.o.h5.stdin.spool'}: cannot write the copy of stdin: No space left on device", \
        r.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_write_failing_inside_hdf5_is_one_line_and_resume_embeds_what_it_may_have_lost(tmp_path):
    """A full disk the room check cannot see (a quota, another process filling it): HDF5 wrote a
    small dataset's data as h5py dropped it and the error was only printed ("Exception ignored"),
    the ledger recorded the protein, the process crashed at exit (segmentation fault), and
    --resume kept arrays of zeros. Here the file-size limit makes the writes fail for real with
    the room check off: one line, exit 1, and a resume equal to an uninterrupted run."""
    import subprocess
    import sys

    fasta = generated_fasta(tmp_path / "g.fa", 80, repeat_every=0)
    reference = _run(tmp_path / "ref.h5", fasta, max_batch_size=4, per_protein=False)
    out = tmp_path / "o.h5"
    script = (
        "import resource, sys\n"
        "import protrans_cli.io.disk as disk\n"
        "disk.ensure_room = lambda *a, **k: 0  # (the race it cannot see)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
        "from protrans_cli.cli import main\n"
        f"sys.argv = ['protrans', 'embed', {str(fasta)!r}, '-m', 'onehot', '--per-residue', '-o', {str(out)!r},"
        " '--max-batch-size', '4']\n"
        "main()\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(
        rf"protrans: error: {re.escape(str(partial_path(out)))}: cannot write to it: File too large; the proteins "
        r"written before are kept in it, and --resume embeds again the \d+ proteins? written since its last flush: "
        r"run the same command with --resume once the problem is solved", lines[0]), r.stderr
    assert (tmp_path / "o.h5.partial.untrusted").stat().st_size % 16 == 0
    _run(out, fasta, max_batch_size=4, per_protein=False, resume=True)
    assert not (tmp_path / "o.h5.partial.untrusted").exists()
    with EmbeddingsReader(out) as got, EmbeddingsReader(reference) as ref:
        assert sorted(got.ids()) == sorted(ref.ids())
        for ident in ref.ids():
            np.testing.assert_array_equal(got.get(ident), ref.get(ident))


def test_the_proteins_written_after_the_last_flush_of_a_failed_write_are_embedded_again(tmp_path, monkeypatch):
    """What --resume does with the list a failed write leaves: those proteins are not done, even
    where the file holds readable records of them (their data may never have reached the disk)."""
    from protrans_cli.io import h5

    fasta = generated_fasta(tmp_path / "g.fa", 12, repeat_every=0)
    out = _run(tmp_path / "o.h5", fasta)
    names = [p.id for p in read_fasta(fasta)]
    os.replace(out, partial_path(out))  # (as an interrupted run leaves it)
    h5.untrusted_path(partial_path(out)).write_bytes(b"".join(h5.digest128(i) for i in names[:3]))
    summary = _run_summary(out, fasta, resume=True)
    assert summary.num_embedded == 3 and summary.num_resumed == 9
    assert not h5.untrusted_path(partial_path(out)).exists()


def test_a_quota_the_free_space_does_not_show_is_said_before_hdf5_meets_it(tmp_path, monkeypatch):
    """The disk has room, the user's quota has not (cluster scratch): statvfs cannot tell, so the
    room is taken for real before each batch; a reservation refused is the one-line "no room"
    and the file stays resumable. A reservation ahead (64 MiB) that fails where the batch's own
    would fit is not a refusal."""
    import errno

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io import disk

    fasta = generated_fasta(tmp_path / "g.fa", 40, repeat_every=0)
    reference = _run(tmp_path / "ref.h5", fasta, max_batch_size=4)
    real, sizes = disk.fallocate, []

    def quota(fd, length):
        sizes.append(length)
        if length > (8 << 20) or len(sizes) > 12:  # room for 8 MiB at a time, and for 12 batches
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        return real(fd, length)

    monkeypatch.setattr(disk, "fallocate", quota)
    out = tmp_path / "o.h5"
    with pytest.raises(RuntimeFailure, match=r"o.h5.partial: no room for the next batch: Disk quota exceeded \(a "
                                             r"reservation of 1.\d MiB failed\); what was computed is kept in"):
        _run(out, fasta, max_batch_size=4)
    assert (64 << 20) in sizes  # (tried ahead first)
    monkeypatch.undo()
    with EmbeddingsReader(partial_path(out)) as r:
        assert 0 < len(r.ids()) < 40
    _run(out, fasta, max_batch_size=4, resume=True)
    with EmbeddingsReader(out) as got, EmbeddingsReader(reference) as ref:
        assert sorted(got.ids()) == sorted(ref.ids())


def test_the_batches_queued_behind_a_failed_write_are_not_written(tmp_path):
    """The writer thread went on with the batches queued behind a failed one once the caller had
    raised its error: after a write failing inside HDF5, into the abandoned file."""
    import threading

    from protrans_cli.embed import _Background

    gate, failed, raised, done = threading.Event(), threading.Event(), threading.Event(), []

    def work(item):
        if item == 0:
            gate.wait(5)
            failed.set()
            raise RuntimeError("write failed")
        done.append(item)

    background = _Background(work)
    real_get = background.queue.get

    def get(*args, **kwargs):  # (the thread takes the next batch only once the caller raised)
        if failed.is_set():
            raised.wait(5)
        return real_get(*args, **kwargs)

    background.queue.get = get
    with pytest.raises(RuntimeError, match="write failed"), background:
        background.submit(0)
        background.submit(1)
        background.submit(2)  # (queued behind the failing one)
        gate.set()
        for _ in range(500):
            if background.error is not None:
                break
            threading.Event().wait(0.01)
        try:
            background.submit(3)  # raises the error
        finally:
            raised.set()
    assert done == []


def test_a_failed_write_holds_nothing_of_the_run_once_caught():
    """The writer thread's error, raised in the caller from a local of the frame its traceback
    holds, kept the run's frames (the loaded model, the writer, the HDF5 file objects) alive
    after a library caller caught it, until the garbage collector ran."""
    from protrans_cli.embed import _Background

    def work(item):
        raise RuntimeError("write failed")

    def run(model):  # embed's frames hold the model while the writer thread runs
        with _Background(work) as background:
            background.submit(0)

    message, released = released_after_error(run, RuntimeError)
    assert message == "write failed"
    assert released


def test_a_merge_failing_inside_hdf5_is_one_line_not_a_crash(tmp_path):
    """copy_from had no failed-write handling: the merge's close after HDF5's failed copy was a
    traceback and a segmentation fault (exit -11)."""
    import subprocess
    import sys

    script = f"""
import resource, numpy as np
import protrans_cli.io.disk as disk
import protrans_cli.io.h5 as h5
from protrans_cli.embed_dist import _absorb_shards, shard_path
out = {str(tmp_path / "o.h5")!r}
shards = []
for rank in (0, 1):
    with h5.EmbeddingsWriter(shard_path(out, rank, 2), finalize=False) as w:
        for i in range(8):
            w.write(f"p{{rank}}_{{i}}", "h", "M" * 100, per_residue=np.ones((100, 256), np.float32))
    shards.append(h5.partial_path(shard_path(out, rank, 2)))
disk.ensure_room = lambda *a, **k: 0  # (the race it cannot see)
resource.setrlimit(resource.RLIMIT_FSIZE, (600_000, resource.RLIM_INFINITY))
try:
    with h5.EmbeddingsWriter(out) as merged:
        _absorb_shards(merged, shards)
except h5.RuntimeFailure as exc:
    print("FAILURE", exc)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "cannot write to it: File too large" in r.stdout, r.stdout + r.stderr[-2000:]
    assert all((tmp_path / f"o.h5.shard-00{rank}-of-002.partial").exists() for rank in (0, 1))


def test_a_shards_list_of_untrusted_proteins_survives_the_merge(tmp_path):
    """A one-process --resume of a torchrun run merges the shards and removes them with their
    lists: a protein a failed write may have lost counted as done at the next --resume."""
    from protrans_cli.embed_dist import _absorb_shards, shard_path
    from protrans_cli.embed_resume import _done_in
    from protrans_cli.io import h5

    out = tmp_path / "o.h5"
    with EmbeddingsWriter(shard_path(out, 0, 2), finalize=False) as writer:
        for ident in "ab":
            writer.write(ident, ident, "MKV", per_residue=np.ones((3, 4), np.float32))
    shard = partial_path(shard_path(out, 0, 2))
    h5.untrusted_path(shard).write_bytes(h5.digest128("a"))
    writer_kw = dict(kinds=(PER_RESIDUE,), layout="grouped", storage_dtype="float32", compression=None,
                     attrs=None, resume_equal=None)
    assert len(_done_in(shard, writer_kw)) == 1
    writer = EmbeddingsWriter(out, resume=True)
    _absorb_shards(writer, [shard])
    writer.close()  # (stopped before "a" is embedded again)
    assert len(_done_in(partial_path(out), writer_kw)) == 1


def test_a_read_only_file_system_is_not_called_full(tmp_path, monkeypatch):
    """A read-only mount counts 0 bytes free: "no room ... free some space" was the wrong advice."""
    import types

    from protrans_cli.io import disk

    from protrans_cli.errors import RuntimeFailure

    fasta = generated_fasta(tmp_path / "g.fa", 4, repeat_every=0)
    for flag in (0, os.ST_RDONLY):
        monkeypatch.setattr(disk.os, "statvfs", lambda path, flag=flag: types.SimpleNamespace(
            f_bavail=0, f_frsize=4096, f_flag=flag))
        if flag:  # not refused here: the writing says what is wrong (here, a writable folder, it works)
            assert disk.ensure_room(tmp_path / "o.h5", 1 << 20, "then") == 0
            _run(tmp_path / "o.h5", fasta)
        else:
            with pytest.raises(RuntimeFailure, match="no room for a new output file"):
                _run(tmp_path / "o.h5", fasta)


def test_a_merge_of_shards_without_room_is_one_line_and_keeps_the_shards(tmp_path, monkeypatch):
    """torchrun's merge (and a one-process --resume of it) copied the shards without a room check:
    on a full disk, an h5py traceback and a segmentation fault."""
    import types

    from protrans_cli.embed_dist import _absorb_shards, shard_path
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io import disk

    out = tmp_path / "o.h5"
    shards = []
    for rank in (0, 1):
        with EmbeddingsWriter(shard_path(out, rank, 2), finalize=False) as writer:  # (as embed's ranks write them)
            writer.write(f"p{rank}", f"p{rank}", "MKV", per_residue=np.ones((3, 4), np.float32))
        shards.append(partial_path(shard_path(out, rank, 2)))
    with EmbeddingsWriter(out) as merged:
        monkeypatch.setattr(disk.os, "statvfs", lambda path: types.SimpleNamespace(f_bavail=4 << 10, f_frsize=1))
        with pytest.raises(RuntimeFailure, match=r"no room for the proteins of o.h5.shard-000-of-002.partial: 0.0 MiB free .* "
                                                 r"call again with resume=True once there is room"):
            _absorb_shards(merged, shards)
        monkeypatch.undo()
    assert all(shard.exists() for shard in shards)


def test_a_disk_without_room_for_the_new_file_is_said_before_hdf5_meets_it(tmp_path, monkeypatch):
    """A few KiB free: the file's attributes and groups, flushed before any batch's room check,
    crashed h5py (segmentation fault) and left a hidden .creating file."""
    import types

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io import disk

    fasta = generated_fasta(tmp_path / "g.fa", 4, repeat_every=0)
    monkeypatch.setattr(disk.os, "statvfs", lambda path: types.SimpleNamespace(f_bavail=8 << 10, f_frsize=1))
    with pytest.raises(RuntimeFailure, match=r"o.h5: no room for a new output file: 0.0 MiB free on the output's disk"):
        _run(tmp_path / "o.h5", fasta)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.fa"]



def test_a_file_system_that_says_nothing_of_its_size_is_written(tmp_path, monkeypatch, run_cli):
    """A FUSE mount without statfs (libfuse answers zeros: 0 blocks, 0 free) was read as a full
    disk: "no room for a new output file: 0.0 MiB free on the output's disk", nothing written."""
    from protrans_cli.io import disk

    fasta = generated_fasta(tmp_path / "g.fa", 4, repeat_every=0)
    zeros = os.statvfs_result((512, 512, 0, 0, 0, 0, 0, 0, 0, 255))
    monkeypatch.setattr(disk.os, "statvfs", lambda path: zeros)
    r = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "o.h5")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.fa", "o.h5"]

def test_resume_after_the_hub_moved_on_is_refused(tmp_path):
    """The file records the hub commit the model came from (`main` resolves to the newest): a
    resume whose model files come from another commit would mix two models in one file. An
    unknown commit (a local directory) on either side is no objection."""
    class Hub(OneHotEmbedder):
        def __init__(self, commit):
            super().__init__()
            self.commit = commit

    out = tmp_path / "c.h5"
    embed(SMALL, out, EmbedOptions(model="onehot"), embedder=Hub("a" * 40))
    with EmbeddingsReader(out) as r:
        assert r.attrs["commit"] == "a" * 40
    with pytest.raises(UsageError, match=f"commit='{'a' * 40}', this run uses commit='{'b' * 40}'"):
        embed(SMALL, out, EmbedOptions(model="onehot", resume=True), embedder=Hub("b" * 40))
    for same in ("a" * 40, None):
        assert embed(SMALL, out, EmbedOptions(model="onehot", resume=True), embedder=Hub(same)).num_embedded == 0


def save_bert_into(directory, seed: int) -> None:
    """A tiny BERT of torch seed `seed` saved into `directory` (one already there replaced: the
    same model directory retrained)."""
    import torch

    from protrans_cli.models import FAMILIES

    torch.manual_seed(seed)
    family = FAMILIES["bert"]
    tokenizer = family.build_tokenizer()
    family.save_pretrained(family.pretraining_model(family.build_config("tiny", tokenizer)).eval(), tokenizer,
                           directory)


def _three_of_six_embedded_by_a_bert(tmp_path):
    """(model, fasta, out): a tiny BERT saved in {tmp_path}/model, six generated proteins, and the
    first three embedded per protein by that model into {tmp_path}/o.h5, as a stopped run leaves it."""
    model = tmp_path / "model"
    save_bert_into(model, seed=0)
    fasta = generated_fasta(tmp_path / "g.fa", 6, repeat_every=0)
    first = tmp_path / "first.fa"
    first.write_text("".join(">" + r for r in fasta.read_text().split(">")[1:4]))
    out = tmp_path / "o.h5"
    embed(first, out, EmbedOptions(model=str(model), threads=1, per_protein=True))
    return model, fasta, out


def test_resume_after_the_model_directory_was_retrained_is_refused(tmp_path):
    """A local model directory has no hub commit: a model retrained into it between two runs was
    not noticed by --resume, which added the new model's rows to the old model's file. The file
    records a fingerprint of the directory's weight files (`weights_fingerprint`), compared where
    both sides have one: the same weights copied elsewhere resume, a file without it (older) too."""
    import shutil

    from protrans_cli.models import weights_fingerprint

    model, fasta, out = _three_of_six_embedded_by_a_bert(tmp_path)
    options = dict(model=str(model), threads=1, per_protein=True)
    with EmbeddingsReader(out) as r:
        recorded = r.attrs["weights_fingerprint"]
    assert recorded == weights_fingerprint(model) and len(recorded) == 32
    shutil.copytree(model, tmp_path / "copy")  # the same weights elsewhere: the same fingerprint
    assert weights_fingerprint(tmp_path / "copy") == recorded
    save_bert_into(model, seed=1)  # retrained: same shapes, same file names and sizes
    assert weights_fingerprint(model) != recorded
    with pytest.raises(UsageError, match=r"holds other weights than the file was written with .*retrained or "
                                         r"replaced since\?\); its rows would mix two models"):
        embed(fasta, out, EmbedOptions(**options, resume=True))
    with EmbeddingsReader(out) as r:
        assert len(r.ids()) == 3  # nothing added
    import h5py

    with h5py.File(out, "a") as f:  # a file from before the attribute: not compared
        del f.attrs["weights_fingerprint"]
    assert embed(fasta, out, EmbedOptions(**options, resume=True)).num_embedded == 3
    # ... nor vouched for: its rows' weights are not known (here another model's), and the resumed
    # file recorded this run's fingerprint for every row (fit then put it in the head's config)
    with EmbeddingsReader(out) as r:
        assert "weights_fingerprint" not in r.attrs


def test_resume_with_the_model_directory_moved_goes_on(tmp_path):
    """A model directory moved or copied between two runs (a project folder renamed, a run copied
    to another cluster), the same weights at another path: --resume refused it ("the file was
    written with model='OLD', this run uses model='NEW'"); it goes on, and another directory of
    other weights is still refused."""
    model, fasta, out = _three_of_six_embedded_by_a_bert(tmp_path)
    model.rename(tmp_path / "moved")
    save_bert_into(tmp_path / "other", seed=1)
    with pytest.raises(UsageError, match=r"cannot resume: the file was written with model='.*model', this run uses "
                                         r"model='.*other'"):
        embed(fasta, out, EmbedOptions(model=str(tmp_path / "other"), threads=1, per_protein=True, resume=True))
    moved = EmbedOptions(model=str(tmp_path / "moved"), threads=1, per_protein=True, resume=True)
    assert embed(fasta, out, moved).num_embedded == 3
    with EmbeddingsReader(out) as r:
        assert len(r.ids()) == 6 and r.attrs["model"] == str(tmp_path / "moved")


@pytest.mark.parametrize("first,then,message", [
    (dict(max_length=10, long_policy="skip"), dict(max_length=12, long_policy="skip"),
     "max_length=10, this run uses max_length=12"),
    (dict(max_length=10, long_policy="skip"), dict(max_length=10, long_policy="truncate"),
     "long_policy='skip', this run uses long_policy='truncate'"),
    (dict(max_length=10, long_policy="skip"), dict(long_policy="skip"),
     r"max_length=10, this run uses max_length=none \(the model takes any length\)"),
    (dict(max_length=10, long_policy="chunk", chunk_overlap=2),
     dict(max_length=10, long_policy="chunk", chunk_overlap=4), "chunk_overlap=2, this run uses chunk_overlap=4"),
])
def test_resume_with_another_long_protein_policy_is_refused(tmp_path, monkeypatch, first, then, message):
    """One file, one policy: a resumed run with another --max-length, --long-policy or (chunk)
    --chunk-overlap would mix skipped, truncated and chunked proteins in one file."""
    out = tmp_path / "p.h5"
    # (stopped once a protein is written: a run stopped before its first leaves no partial file;
    # a chunked protein is written with its last window)
    _ctrl_c_on_batch(monkeypatch, 4 if first["long_policy"] == "chunk" else 2)
    with pytest.raises(KeyboardInterrupt):
        _run(out, max_batch_size=1, **first)
    before = partial_path(out).read_bytes()
    with pytest.raises(UsageError, match=message):
        _run(out, max_batch_size=1, resume=True, **then)
    assert partial_path(out).read_bytes() == before and not out.exists()  # left as it was


def test_resume_with_the_same_long_protein_policy_completes(tmp_path, monkeypatch):
    out = tmp_path / "p.h5"
    original = _ctrl_c_on_batch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _run(out, max_batch_size=1, max_length=10, long_policy="chunk", chunk_overlap=2)
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", original)
    _run(out, max_batch_size=1, max_length=10, long_policy="chunk", chunk_overlap=2, resume=True)
    full = _run(tmp_path / "full.h5", max_batch_size=1, max_length=10, long_policy="chunk", chunk_overlap=2)
    assert_same_content(file_content(out), file_content(full))
    with EmbeddingsReader(out) as r:
        assert (r.attrs["max_length"], r.attrs["long_policy"], r.attrs["chunk_overlap"]) == (10, "chunk", 2)


def test_resume_under_another_long_policy_takes_any_chunk_overlap(tmp_path, monkeypatch):
    """--chunk-overlap shapes the rows of --long-policy chunk alone: a run under truncate records
    none, so its --resume with another (or the default) overlap completes, equal to one run."""
    out = tmp_path / "p.h5"
    original = _ctrl_c_on_batch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _run(out, max_batch_size=1, max_length=10, long_policy="truncate", chunk_overlap=4)
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", original)
    _run(out, max_batch_size=1, max_length=10, long_policy="truncate", resume=True)
    full = _run(tmp_path / "full.h5", max_batch_size=1, max_length=10, long_policy="truncate")
    assert_same_content(file_content(out), file_content(full))
    with EmbeddingsReader(out) as r:
        assert (r.attrs["long_policy"], r.attrs.get("chunk_overlap")) == ("truncate", None)


def test_a_chunk_overlap_as_long_as_the_models_own_limit_is_a_usage_error(tmp_path):
    """Without --max-length the windows are the model's own limit: an overlap that long or longer
    is refused before any batch (windows of step 0 or less), as against --max-length."""
    from protrans_cli.embed import build_embedder

    save_bert_into(tmp_path / "bert", seed=0)
    options = EmbedOptions(model=str(tmp_path / "bert"), device="cpu", long_policy="chunk")
    limit = build_embedder(options).max_residues
    options.chunk_overlap = limit
    said = rf"^chunk_overlap must be smaller than the window \({limit}, the model's limit\), got {limit}"
    with pytest.raises(UsageError, match=said):
        embed(SMALL, tmp_path / "o.h5", options)
    assert not (tmp_path / "o.h5").exists() and not partial_path(tmp_path / "o.h5").exists()


def test_the_file_records_the_models_own_limit_where_no_max_length_was_given(tmp_path):
    """docs/formats.md: `max_length` is the length at which --long-policy applied, the model's own
    limit (a learned position table's) when --max-length was not given, 0 for none (onehot)."""
    from protrans_cli.embed import build_embedder

    save_bert_into(tmp_path / "bert", seed=0)
    options = EmbedOptions(model=str(tmp_path / "bert"), device="cpu", per_residue=False)
    limit = build_embedder(options).max_residues
    assert limit
    embed(SMALL, tmp_path / "b.h5", options)
    _run(tmp_path / "o.h5", per_residue=False)
    with EmbeddingsReader(tmp_path / "b.h5") as bert, EmbeddingsReader(tmp_path / "o.h5") as onehot:
        assert (bert.attrs["max_length"], onehot.attrs["max_length"]) == (limit, 0)


def test_summary_counts_the_residues_of_every_protein_written(run_cli, tmp_path):
    """P1 and P1copy share a sequence: computed once, written twice, and both count."""
    total = sum(len(r.sequence.replace("-", "").replace(".", "")) for r in read_fasta(SMALL))
    for window in (100, 1):  # a copy within a window, and one read back from an earlier window
        summary = _run_summary(tmp_path / f"w{window}.h5", window=window)
        assert summary.num_duplicates == 1 and summary.num_embedded == 6
        assert summary.num_residues == total == 81
    # a truncated protein counts the residues written (its kept prefix), not its whole length
    summary = _run_summary(tmp_path / "t.h5", max_length=10, long_policy="truncate")
    assert summary.num_residues == sum(len(a) for a in read_all(tmp_path / "t.h5").values()) == 47
    result = run_cli("embed", SMALL, "-m", "onehot", "-o", tmp_path / "cli.h5")
    assert "embedded 6 proteins (81 residues," in result.stderr
    assert "; of these 6, 1 repeats another's sequence (not computed again)" in result.stderr
    # where it ran and in what, as the file's attributes say ("is it on the GPU?")
    assert re.search(r"residues/s on cpu, float32\) into ", result.stderr), result.stderr
    assert (summary.device, summary.compute_dtype, summary.world_size) == ("cpu", "float32", 1)


def test_the_summary_counts_proteins_that_share_a_sequence_unambiguously(run_cli, tmp_path):
    """Three copies of one sequence and two of another: "3 identical sequences computed once" read
    as three sequences (or three copies of each); it is 3 proteins that share another's sequence."""
    fasta = tmp_path / "d.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMSTNPKPQRK\n>c\nMKTAYIAKQR\n>d\nMKTAYIAKQR\n>e\nMSTNPKPQRK\n")
    result = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "o.h5")
    assert result.exit_code == 0, result.stderr
    assert ("embedded 5 proteins (50 residues, " in result.stderr
            and "; of these 5, 3 repeat another's sequence (not computed again)\n" in result.stderr), \
        result.stderr


def test_the_summary_says_repeats_as_a_share_of_the_embedded_and_reused(run_cli, tmp_path):
    """With --reuse, "4,401 copied from --reuse; 41 proteins share the sequence of another" read as
    41 more: the repeats are said as a share of the embedded and copied proteins together."""
    (tmp_path / "old.fa").write_text(">x\nMKTAYIAKQR\n")
    assert run_cli("embed", tmp_path / "old.fa", "-m", "onehot", "-o", tmp_path / "old.h5").exit_code == 0
    fasta = tmp_path / "d.fa"  # a, c reused (c repeats a); b, d embedded (d repeats b)
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMSTNPKPQRK\n>c\nMKTAYIAKQR\n>d\nMSTNPKPQRK\n")
    result = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "o.h5", "--reuse", tmp_path / "old.h5")
    assert result.exit_code == 0, result.stderr
    assert re.search(r"embedded 2 proteins \(.*; 2 copied from --reuse; of these 4, 2 repeat another's "
                     r"sequence \(not computed again\)\n", result.stderr), result.stderr


def _run_summary(out, fasta=SMALL, **kw):
    return embed(fasta, out, EmbedOptions(model="onehot", **kw))


def test_skipped_protein_names_the_users_max_length(tmp_path):
    summary = _run_summary(tmp_path / "s.h5", max_length=10, long_policy="skip")
    assert summary.failed["P1"] == "skipped: 22 residues > --max-length 10"


def test_the_progress_counts_each_protein_whole_as_its_batch_ends(run_cli, tmp_path, monkeypatch):
    """The bar's total is the input's residues. A truncated protein counted only the residues it
    kept, a skipped one nothing until the window ended: with --max-length 10 --long-policy
    truncate the bar read 25 of 75 residues (33%, its ETA twice too long) when only the jump to
    the end was left. A chunked protein counts each residue once, not its overlaps twice."""
    monkeypatch.delenv("PROTRANS_NO_PROGRESS", raising=False)
    monkeypatch.setenv("PROTRANS_PROGRESS_INTERVAL", "0")  # one line per update
    fasta = tmp_path / "p.fa"
    fasta.write_text(">a\n" + "MKTAYIAKQR" * 4 + "\n>b\n" + "ACDEFGHIKL" * 3 + "\n>c\nMKTAY\n")  # 40, 30, 5
    for policy, expected in (("truncate", [30, 70, 75]), ("skip", [70, 75]), ("chunk", [10, 16, 22, 28, 34, 40,
                                                                                       50, 56, 62, 68, 70, 75])):
        result = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / f"{policy}.h5", "--max-length", "10",
                         "--long-policy", policy, "--chunk-overlap", "4", "--max-batch-size", "1")
        assert result.exit_code == 0, result.stderr
        counts = [int(m.group(1)) for m in re.finditer(r"^embed: (\d+)/75 res", result.stderr, re.M)]
        assert sorted(set(counts) - {0}) == expected, (policy, counts)


def test_a_resumed_runs_log_line_leaves_the_proteins_already_there_out_of_its_rate(run_cli, tmp_path,
                                                                                    log_progress_lines):
    """In a log (a requeued batch job's) the proteins a resumed output already holds count in the
    position, not in the rate: counted as this run's work, they showed several times the real
    residues/s, and a time left too short for as long as the first run had taken."""
    seen = log_progress_lines  # (position, this run's work) at each line
    first, whole = tmp_path / "first.fa", tmp_path / "whole.fa"
    first.write_text(">a\n" + "MKTAYIAKQR" * 4 + "\n>b\n" + "ACDEFGHIKL" * 3 + "\n")  # 40, 30
    whole.write_text(first.read_text() + ">c\nMKTAY\n")  # and 5 more
    out = tmp_path / "o.h5"
    assert run_cli("embed", first, "-m", "onehot", "-o", out).exit_code == 0
    seen.clear()
    result = run_cli("embed", whole, "-m", "onehot", "-o", out, "--resume")
    assert result.exit_code == 0 and "2 already there" in result.stderr, result.stderr
    assert seen and seen[-1] == (75, 5), seen
    assert re.search(r"^embed: 75/75 res \(100%\)", result.stderr, re.M), result.stderr


def test_chunk_overlap_under_another_long_policy_is_said_to_be_ignored(run_cli, tmp_path):
    """--chunk-overlap sets chunk's windows; under error, skip or truncate it did nothing, without
    a word (a user who meant --long-policy chunk got truncated or refused proteins). One warning;
    the default overlap and the chunk policy say nothing."""
    for args, warned in (([], False), (["--chunk-overlap", "4"], True),
                         (["--long-policy", "truncate", "--max-length", "10", "--chunk-overlap", "4"], True),
                         (["--long-policy", "chunk", "--max-length", "10", "--chunk-overlap", "4"], False)):
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}.h5"
        r = run_cli("embed", SMALL, "-m", "onehot", "-o", out, *args)
        assert r.exit_code == 0, r.stderr
        policy = args[args.index("--long-policy") + 1] if "--long-policy" in args else "error"
        line = (f"protrans: warning: --chunk-overlap 4 ignored: it sets the windows of --long-policy chunk, and this "
                f"run's policy is {policy}\n")
        assert r.stderr.count(line) == warned and r.stderr.count("--chunk-overlap") == warned, (args, r.stderr)


def test_compressed_stdin_error_names_stdin_not_the_spool_file(run_cli, tmp_path):
    import gzip

    out = tmp_path / "x.h5"
    truncated = gzip.compress(b"".join(b">p%d\nMKVL\n" % i for i in range(50)))[:40]
    result = run_cli("embed", "-", "-m", "onehot", "-o", out, input=truncated)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("protrans: error: <stdin>: corrupt or truncated compressed data")
    assert "spool" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no spool file, no output


def test_unavailable_mps_is_a_usage_error_before_the_model_is_loaded(run_cli, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    import protrans_cli.models

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the device was checked")

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(protrans_cli.models, "load_model", no_model)
    result = run_cli("embed", SMALL, "-m", "prot_bert", "--device", "mps", "-o", tmp_path / "x.h5")
    assert result.exit_code == 2, result.stderr  # as an unavailable --device cuda
    assert result.stderr == "protrans: error: --device mps: no MPS device is available (try --device cpu)\n"
    assert list(tmp_path.iterdir()) == []
    result = run_cli("embed", SMALL, "-m", "prot_bert", "--device", "mps:0", "-o", tmp_path / "x.h5")
    assert result.exit_code == 2 and "--device mps:0: no MPS device" in result.stderr  # mps:0 is a name for mps
    result = run_cli("embed", SMALL, "-m", "prot_bert", "--device", "mps:1", "-o", tmp_path / "x.h5")
    assert result.exit_code == 2 and "use auto, cpu, cuda, cuda:N or mps" in result.stderr


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "mps:1"], ids=["a-word", "cuda-x", "mps-1"])  # (not "gpu": a marker)
def test_an_unknown_device_is_refused_in_the_same_words_by_embed_and_fit(run_cli, tmp_path, device):
    """embed said "--device must be one of auto, cpu, cuda, mps or cuda:N" for `gpu` (and the other
    words for `mps:1`; with onehot, `cuda:x` was ignored); fit and predict say "--device gpu: use ...": one
    message for one option."""
    expected = f"protrans: error: --device {device}: use auto, cpu, cuda, cuda:N or mps\n"
    for args in (["embed", SMALL, "-m", "onehot", "-o", tmp_path / "x.h5"],
                 ["fit", "ss3", "--embeddings", tmp_path / "x.h5", "--labels", tmp_path / "x.csv", "-o", tmp_path / "h"]):
        result = run_cli(*args, "--device", device)
        assert result.exit_code == 2 and result.stderr == expected, (args[0], result.stderr)
    assert list(tmp_path.iterdir()) == []


def test_a_cuda_index_the_machine_lacks_is_a_usage_error(monkeypatch):
    torch = pytest.importorskip("torch")
    from protrans_cli.embed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.version, "hip", None)
    capability = {1: (8, 0), 0: (7, 5)}  # device 1 an A100, device 0 a T4: bfloat16 is emulated on a T4
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: capability[index])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index: ("Tesla T4", "NVIDIA A100")[index])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("cuda:1") == ("cuda:1", "bfloat16")
    assert resolve_device("cuda:0") == ("cuda:0", "float16")
    assert resolve_device("cuda") == ("cuda", "float16")
    with pytest.raises(UsageError, match=r"^device='cuda:2': this machine has 2 CUDA device\(s\), numbered from 0"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("capability, name, dtype, precision", [
    ((8, 0), "NVIDIA A100-SXM4-80GB", "bfloat16", "bf16"),
    ((7, 0), "Tesla V100-SXM2-32GB", "float16", "fp16"),
    ((7, 5), "Tesla T4", "float16", "fp16"),
    ((6, 0), "Tesla P100-PCIE-16GB", "float16", "fp16"),
    # float16 at 1/64 of float32's rate (compute capability 6.1), or without the tensor cores (GTX 16xx)
    ((6, 1), "NVIDIA GeForce GTX 1080 Ti", "float32", "fp32"),
    ((6, 1), "Tesla P40", "float32", "fp32"),
    ((7, 5), "NVIDIA GeForce GTX 1660 SUPER", "float32", "fp32"),
    ((5, 2), "NVIDIA GeForce GTX TITAN X", "float32", "fp32"),
    ((6, 2), "NVIDIA Tegra X2", "float16", "fp16")])
def test_auto_precision_is_float32_on_a_gpu_whose_float16_is_slow(monkeypatch, capability, name, dtype, precision):
    """--dtype auto (embed, contacts, variants) and train's --precision auto on a GPU without bfloat16
    hardware took float16 whatever the GPU: on a GTX 10xx, Titan Xp or Tesla P40 (compute capability 6.1)
    float16 runs at 1/64 of float32's rate, on a GTX 16xx (7.5 without tensor cores) its matrix
    products at a few percent: float32 there now; float16 where it is fast (V100, T4, P100)."""
    torch = pytest.importorskip("torch")
    from protrans_cli.embed import resolve_device
    from protrans_cli.training.config import resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: name)
    assert resolve_device("auto") == ("cuda", dtype) and resolve_device("cuda:0") == ("cuda:0", dtype)
    assert resolve_precision("auto", torch.device("cuda")) == precision
    assert resolve_device("cuda", "float16") == ("cuda", "float16")  # (asked for: as asked)


def test_a_gpu_that_torch_cannot_use_is_said_once(monkeypatch, tmp_path, capsys):
    """--device auto on a machine with an NVIDIA GPU and a CPU build of torch (what `pip install
    torch==X` gives without a CUDA index) ran on the CPU, many times slower, and said nothing: it says
    so now, once a process, naming the way out; not where CUDA_VISIBLE_DEVICES hides the GPUs on
    purpose, nor with --device cpu."""
    torch = pytest.importorskip("torch")
    import protrans_cli.embedders as embedders
    from protrans_cli.embed import resolve_device

    node = tmp_path / "nvidia0"
    node.write_text("")
    monkeypatch.setattr(embedders, "_GPU_NODES", ((str(node), "CUDA_VISIBLE_DEVICES", "an NVIDIA GPU"),))
    monkeypatch.setattr(embedders, "_warned_unused_gpu", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(embedders, "mps_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert resolve_device("auto") == ("cpu", "float32") and capsys.readouterr().err == ""  # (hidden on purpose)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert resolve_device("cpu") == ("cpu", "float32") and capsys.readouterr().err == ""  # (the CPU asked for)
    assert resolve_device("auto") == ("cpu", "float32")
    err = capsys.readouterr().err
    assert "this machine has an NVIDIA GPU, but this torch" in err and "is a CPU build: computing on the CPU" in err
    assert "device='cpu'" in err or "--device cpu" in err
    resolve_device("auto")
    assert capsys.readouterr().err == ""  # (once a process)
    monkeypatch.setattr(embedders, "_warned_unused_gpu", False)
    monkeypatch.setattr(torch.version, "cuda", "12.6")  # (a CUDA build that cannot start: an old driver)
    embedders.warn_unused_gpu("hide it (CUDA_VISIBLE_DEVICES=)")
    err = capsys.readouterr().err
    assert "cannot start it" in err and "hide it (CUDA_VISIBLE_DEVICES=) to say the CPU is meant" in err
    node.unlink()  # (no GPU on the machine: nothing to say)
    monkeypatch.setattr(embedders, "_warned_unused_gpu", False)
    assert resolve_device("auto") == ("cpu", "float32") and capsys.readouterr().err == ""


def test_interrupted_torchrun_rank_points_at_its_shard(run_cli, tmp_path, monkeypatch):
    """Under torchrun each rank writes OUTPUT.shard-RRR-of-NNN.partial: an interrupted rank names
    its own shard and the --resume that continues it, as a single process names OUTPUT.partial."""
    import protrans_cli.embed as embed_module

    out = tmp_path / "d.h5"

    def interrupted(fasta, output, options):
        (tmp_path / "d.h5.shard-001-of-002.partial").write_bytes(b"")  # what rank 1 had written
        raise KeyboardInterrupt

    monkeypatch.setattr(embed_module, "embed", interrupted)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    result = run_cli("embed", SMALL, "-m", "onehot", "-o", out)
    assert result.exit_code == 130
    assert result.stderr.splitlines() == [
        f"protrans: error: interrupted: what was computed is in {out}.shard-001-of-002.partial; "
        "run the same command with --resume to finish"]


class _FakeOOM(OneHotEmbedder):
    """Runs out of memory above a residue budget, like a GPU would."""

    device = "cuda"

    def __init__(self, budget, cpu_ok=True):
        super().__init__()
        self.budget, self.cpu_ok = budget, cpu_ok

    def embed_batch(self, seqs, pooled=False):
        import torch

        if sum(map(len, seqs)) > self.budget:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().embed_batch(seqs, pooled=pooled)

    def on_cpu(self):
        return OneHotEmbedder() if self.cpu_ok else None


def test_apples_gpu_without_a_buffer_that_large_splits_the_batch_as_out_of_memory(monkeypatch):
    """On Apple's GPU one tensor larger than its largest buffer (a long protein's attention scores on
    a 16 GB Mac) is a plain RuntimeError, "Invalid buffer size: 19.45 GB" (pytorch/pytorch#141909),
    not "out of memory": it ended embed with a traceback. The batch is split as for out of memory,
    and a protein that alone does not fit is recorded as failed."""
    import torch

    class TooLarge(_FakeOOM):
        device = "mps"

        def embed_batch(self, seqs, pooled=False):
            if sum(map(len, seqs)) > self.budget:
                raise RuntimeError("Invalid buffer size: 19.45 GB")
            return OneHotEmbedder.embed_batch(self, seqs, pooled=pooled)

    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    seqs = ["MKV" * 3, "W" * 20, "K"]
    got = embed_with_retry(TooLarge(budget=10), seqs, cpu_fallback=False)
    np.testing.assert_array_equal(got[0][0][0], onehot_reference(seqs[0]))
    assert isinstance(got[1], str) and "out of memory" in got[1] and not isinstance(got[2], str)


def test_oom_splits_batches_then_falls_back_to_cpu():
    seqs = ["MKV" * 3, "ACD" * 2, "W" * 20, "K"]
    splits, calls = [], []
    oom = _FakeOOM(budget=10)
    real = oom.embed_batch
    oom.embed_batch = lambda batch, pooled=False: calls.append(list(batch)) or real(batch, pooled=pooled)
    got = embed_with_retry(oom, seqs, cpu_fallback=True, on_split=splits.append)
    # halves, down to one protein: 36 residues (4 proteins), then 9+6 and 20+1 (2 each); the 20
    # alone goes to the CPU; each protein that fitted ran once on the GPU
    assert splits == [4, 2, 2]
    assert calls == [seqs, seqs[:2], seqs[:1], seqs[1:2], seqs[2:], seqs[2:3], seqs[3:]]
    for s, g in zip(seqs, got):
        rows, mean = g
        assert mean is None  # not asked for
        np.testing.assert_array_equal(rows[0], onehot_reference(s))  # "W"*20 came from the CPU twin
    assert [getattr(g, "how", None) for g in got] == [None, None, "float32 on the CPU (out of memory on cuda)", None]
    got = embed_with_retry(_FakeOOM(budget=10), seqs, cpu_fallback=False)
    assert isinstance(got[2], str) and "out of memory" in got[2]
    assert not isinstance(got[0], str)


def test_a_cpu_fallback_out_of_memory_too_leaves_the_protein_failed_with_both_reasons():
    """The CPU has no room either (a huge protein on a small node): the reason says both, and
    the batch's other proteins are kept; an error that is not a lack of memory stops the run."""
    class NoRoom(OneHotEmbedder):
        def __init__(self, error):
            super().__init__()
            self.error = error

        def embed_batch(self, seqs, pooled=False):
            raise self.error

    tight = _FakeOOM(budget=10)
    tight.on_cpu = lambda: NoRoom(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                               "allocate memory: you tried to allocate 10200547328 bytes"))
    got = embed_with_retry(tight, ["K", "W" * 20], cpu_fallback=True)
    assert got[1] == "out of memory on cuda (20 residues); out of memory on the CPU too" and not isinstance(got[0], str)
    tight.on_cpu = lambda: NoRoom(ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        embed_with_retry(tight, ["W" * 20], cpu_fallback=True)


def test_the_failed_batch_is_released_before_the_gpu_cache_is_emptied(monkeypatch):
    """Out of memory, the cache is emptied for the retry once the failed pass's tensors are gone:
    emptied inside the except block, the traceback's frames still held them (a forward pass's
    activations) and their memory stayed with PyTorch through the split retry, on the GPU and
    again after the CPU twin ran out too."""
    import weakref

    import torch

    class Holding(OneHotEmbedder):
        device = "cuda"

        def __init__(self, budget, twin=None):
            super().__init__()
            self.budget, self.twin, self.held = budget, twin, []

        def embed_batch(self, seqs, pooled=False):
            if sum(map(len, seqs)) > self.budget:
                activations = torch.zeros(1024)  # (what a failed forward pass leaves in its frames)
                self.held.append(weakref.ref(activations))
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return super().embed_batch(seqs, pooled=pooled)

        def on_cpu(self):
            return self.twin

    alive = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: alive.append(sum(r() is not None for r in gpu.held
                                                                              + twin.held)))
    twin = Holding(budget=0)
    gpu = Holding(budget=4, twin=twin)
    got = embed_with_retry(gpu, ["MKV", "ACD", "W" * 6], cpu_fallback=True)
    assert got[2] == "out of memory on cuda (6 residues); out of memory on the CPU too"
    assert [g[0][0].shape[0] for g in got[:2]] == [3, 3]
    # the 3-protein batch, then its 2-protein half, then the 6 residues on the GPU and on the CPU
    assert len(alive) == 4 and alive == [0, 0, 0, 0]

    import contextlib

    from protrans_cli.embedders import NonFinite

    class Overflowing(Holding):  # float16 output not finite; no room for the float32 weights
        compute_dtype = "float16"

        def embed_arrays(self, seqs, *, rows=True, means=False, dtype="float32"):
            return [NonFinite("NaN or infinity in the model's float16 output", True) for _ in seqs]

        @contextlib.contextmanager
        def in_float32(self):
            weights = torch.zeros(1024)  # (a cast half made)
            self.held.append(weakref.ref(weights))
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            yield self

    alive.clear()
    gpu = Overflowing(budget=100, twin=twin)
    assert embed_with_retry(gpu, ["MKV"]) == ["NaN or infinity in the model's float16 output; out of memory for a "
                                              "float32 retry"]
    assert alive == [0]


@pytest.mark.parametrize("window", [100, 1])  # the copy in the same window, or copied from the file
def test_proteins_computed_on_the_cpu_say_so_and_their_copies_too(tmp_path, window):
    import h5py

    out = tmp_path / "cpu.h5"
    summary = embed(SMALL, out, EmbedOptions(model="onehot", cpu_fallback=True, max_tokens=100, window=window),
                    embedder=_FakeOOM(budget=21))
    assert summary.failed == {}
    with h5py.File(out) as f:
        computed = {ds.attrs["id"]: ds.attrs.get("computed") for kind in ("per_residue", "per_protein")
                    for ds in f[kind].values()}
    # P1 (22 residues) and its copy P1copy came from the CPU twin; the rest fit the "GPU".
    assert {k for k, v in computed.items() if v} == {"P1", "P1copy"}
    assert computed["P1copy"] == "float32 on the CPU (out of memory on cuda)"


def test_cli_cpu_fallback_reaches_the_pipeline(tmp_path, run_cli, monkeypatch):
    """`embed --cpu-fallback` retries a protein that alone ran out of GPU memory on the CPU, as
    docs/cli.md says; without the flag it is recorded as failed (a CLI that passed the default
    False whatever the flag said left the user's proteins failed)."""
    import h5py

    import protrans_cli.embed as embed_module

    real = embed_module.embed
    monkeypatch.setattr(embed_module, "embed",
                        lambda fasta, output, options: real(fasta, output, options, embedder=_FakeOOM(budget=21)))
    out = tmp_path / "cpu.h5"
    result = run_cli("embed", SMALL, "-m", "onehot", "--cpu-fallback", "--max-tokens", "100", "-o", out)
    assert result.exit_code == 0, result.stderr
    with h5py.File(out) as f:
        computed = {ds.attrs["id"]: ds.attrs.get("computed") for ds in f["per_residue"].values()}
        assert "failed" not in f or not len(f["failed"])
    assert {k for k, v in computed.items() if v} == {"P1", "P1copy"}
    result = run_cli("embed", SMALL, "-m", "onehot", "--max-tokens", "100", "-o", tmp_path / "gpu.h5")
    assert result.exit_code == 0 and "P1" in result.stderr and "out of memory" in result.stderr


def test_cli_window_bounds_the_proteins_embedded_at_a_time(tmp_path, run_cli, monkeypatch):
    """`embed --window N` reads and embeds N proteins at a time (a CLI passing the default window
    whatever the user gave, so the memory bound asked for did nothing, passed every test)."""
    import protrans_cli.embed as embed_module

    batches = []

    class Recording(OneHotEmbedder):
        def embed_batch(self, seqs, pooled=False):
            batches.append(len(seqs))
            return super().embed_batch(seqs, pooled=pooled)

    real = embed_module.embed
    monkeypatch.setattr(embed_module, "embed",
                        lambda fasta, output, options: real(fasta, output, options, embedder=Recording()))
    result = run_cli("embed", SMALL, "-m", "onehot", "--max-tokens", "10000", "--window", "1", "-o", tmp_path / "a.h5")
    assert result.exit_code == 0, result.stderr
    assert batches and set(batches) == {1}
    batches.clear()
    result = run_cli("embed", SMALL, "-m", "onehot", "--max-tokens", "10000", "-o", tmp_path / "b.h5")
    assert result.exit_code == 0, result.stderr
    assert max(batches) > 1


def test_protein_that_never_fits_is_recorded_not_dropped(tmp_path):
    out = tmp_path / "oom.h5"
    summary = embed(SMALL, out, EmbedOptions(model="onehot"), embedder=_FakeOOM(budget=15))
    assert sorted(summary.failed) == ["P1", "P1copy", "sp|Q9/slash"]
    with EmbeddingsReader(out) as r:
        assert sorted(r.failed()) == sorted(summary.failed)
        assert sorted(r.ids()) == ["lower", "one", "rare"]


def test_a_subclass_that_overrides_embed_batch_is_still_called():
    """The pipeline asks a TransformerEmbedder for embed_arrays; a library subclass that
    overrides embed_batch (its own post-processing) was bypassed (found in review)."""
    from protrans_cli.embed import TransformerEmbedder
    from protrans_cli.embed_retry import _uses_arrays

    class Scaled(TransformerEmbedder):
        def embed_batch(self, sequences, pooled=False):
            return [2 * a for a in super().embed_batch(sequences, pooled=pooled)]

    class Plain(TransformerEmbedder):
        pass

    assert not _uses_arrays(Scaled.__new__(Scaled)) and _uses_arrays(Plain.__new__(Plain))
    assert not _uses_arrays(OneHotEmbedder())


def test_other_errors_are_not_swallowed():
    class Broken(OneHotEmbedder):
        def embed_batch(self, seqs, pooled=False):
            raise ValueError("a real bug")

    with pytest.raises(ValueError):
        embed_with_retry(Broken(), ["MK", "MK"])


# --- CLI ----------------------------------------------------------------------------------

def test_cli_onehot_flat_per_protein(run_cli, tmp_path):
    out = tmp_path / "flat.h5"
    result = run_cli("embed", SMALL, "-m", "onehot", "--per-protein", "--layout", "flat", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "embedded 6 proteins" in result.stderr
    import h5py

    with h5py.File(out, "r") as f:
        assert f["one"].shape == (21,) and f.attrs["kind"] == PER_PROTEIN
        assert "sp|Q9%2Fslash" in f


@pytest.mark.parametrize("finished", [True, False])
def test_resume_of_a_flat_file_from_before_original_id_gives_every_dataset_one(tmp_path, finished):
    """Versions before 2026-11-29 wrote flat files without `original_id`; --resume of one added
    this run's proteins with it beside the older ones without: biotrainer's `{f[k].attrs[
    "original_id"]: ...}` failed with a KeyError on the file the upgrade completed."""
    import h5py

    (tmp_path / "a.fa").write_text(">P1 first\nMKTAYIAK\n>P2\nMKV\n")
    (tmp_path / "b.fa").write_text(">P1 first\nMKTAYIAK\n>P2\nMKV\n>P3\nMKVLA\n")
    out = tmp_path / "flat.h5"
    options = dict(model="onehot", threads=1, per_residue=False, layout="flat")
    embed(tmp_path / "a.fa", out, EmbedOptions(**options))
    with h5py.File(out, "r+") as f:  # the older version's file
        for key in f:
            del f[key].attrs["original_id"]
    if not finished:
        out.rename(partial_path(out))
    embed(tmp_path / "b.fa", out, EmbedOptions(**options, resume=True))
    with h5py.File(out, "r") as f:
        assert {f[k].attrs["original_id"]: f[k].attrs["id"] for k in f} == {i: i for i in ("P1", "P2", "P3")}


@pytest.mark.parametrize("flags", [(), ("--per-residue", "--per-protein")])
def test_cli_flat_with_both_kinds_says_to_give_one(run_cli, tmp_path, flags):
    """With both kinds asked for, the message said "add --per-residue or --per-protein" (one
    must go, not be added)."""
    result = run_cli("embed", SMALL, "-m", "onehot", *flags, "--layout", "flat", "-o", tmp_path / "f.h5")
    assert result.exit_code == 2
    assert "give exactly one of --per-residue and --per-protein" in result.stderr
    assert not (tmp_path / "f.h5").exists()


def test_cli_reads_stdin(run_cli, tmp_path):
    out = tmp_path / "s.h5"
    result = run_cli("embed", "-", "-m", "onehot", "-o", out, input=b">s\nMKV\n")
    assert result.exit_code == 0, result.stderr
    np.testing.assert_array_equal(read_all(out)["s"], onehot_reference("MKV"))


@pytest.mark.parametrize("fixture,code,message", [
    ("empty.fa", 1, "no FASTA records"),
    ("duplicate_ids.fa", 1, "duplicate id"),
    ("invalid_residue.fa", 1, "record 'bad': invalid character 'J'"),
])
def test_cli_bad_input_is_one_line_error(run_cli, tmp_path, fixture, code, message):
    out = tmp_path / "x.h5"
    result = run_cli("embed", DATA / "embed" / fixture, "-m", "onehot", "-o", out)
    assert result.exit_code == code
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_usage_errors(run_cli, tmp_path):
    out = tmp_path / "x.h5"
    r = run_cli("embed", SMALL, "-m", "onehot", "--layout", "flat", "-o", out)
    assert r.exit_code == 2 and "flat layout" in r.stderr
    r = run_cli("embed", SMALL, "-m", "onehot", "--max-length", "10", "--chunk-overlap", "10",
                "--long-policy", "chunk", "-o", out)
    assert r.exit_code == 2 and "--chunk-overlap" in r.stderr
    r = run_cli("embed", SMALL, "-m", "onehot", "--long-policy", "chunk", "-o", out)
    assert r.exit_code == 0 and "has no effect" in r.stderr  # a policy that cannot apply says so
    r = run_cli("embed", SMALL, "-m", "onehot", "--long", "chunk", "-o", out, "--force")
    assert r.exit_code == 0 and "has no effect" in r.stderr  # prep's spelling of the option
    r = run_cli("embed", SMALL, "-m", "onehot", "-o", "-")
    assert r.exit_code == 2 and "stdout" in r.stderr
    # a gzip name: plain HDF5 was written under it (zcat and readers of the name failed on it)
    for name in ("x.h5.gz", "x.h5.ZST"):
        r = run_cli("embed", SMALL, "-m", "onehot", "-o", tmp_path / name)
        assert r.exit_code == 2 and r.stderr.strip().endswith(
            "an HDF5 file is written uncompressed (--compression gzip compresses its arrays): give a name without "
            f"the {name[4:]} suffix (e.g. .h5)") and not (tmp_path / name).exists()
    r = run_cli("embed", SMALL, "-m", "onehot", "-o", tmp_path / "no" / "x.h5")
    assert r.exit_code == 2 and "output directory does not exist" in r.stderr  # as docs/embed.md says
    r = run_cli("embed", SMALL, "-m", "onehot", "--layer", "-3", "-o", tmp_path / "y.h5")
    assert r.exit_code == 2 and "single layer" in r.stderr
    # x.h5 was written above: running again replaces it only when asked to
    before = out.read_bytes()
    r = run_cli("embed", SMALL, "-m", "onehot", "-o", out)
    assert r.exit_code == 2 and r.stderr.strip() == (f"protrans: error: {out} exists: --resume keeps its proteins and "
                                                     "embeds what it lacks, --force replaces it")
    assert out.read_bytes() == before
    assert run_cli("embed", SMALL, "-m", "onehot", "--force", "-o", out).exit_code == 0
    r = run_cli("embed", SMALL, "-m", "onehot", "--force", "--resume", "-o", out)
    assert r.exit_code == 2 and "not both" in r.stderr


@pytest.mark.parametrize("layers,message", [
    (["-1", "-1"], "--layer -1 is given twice"),
    (["0", "-1"], "name it more than once"),  # onehot's one layer is both 0 and -1
])
def test_cli_a_layer_named_twice_is_a_usage_error(run_cli, tmp_path, layers, message):
    out = tmp_path / "x.h5"
    result = run_cli("embed", SMALL, "-m", "onehot", *[a for x in layers for a in ("--layer", x)], "-o", out)
    assert result.exit_code == 2, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists() and not partial_path(out).exists()


@pytest.mark.slow
@pytest.mark.shared
def test_ecoli_proteome_onehot(shared_data, tmp_path):
    fasta = shared_data / "proteomes" / "UP000000625_83333.fasta"
    out = tmp_path / "ecoli.h5"
    summary = embed(fasta, out, EmbedOptions(model="onehot", per_residue=False))
    records = list(read_fasta(fasta))
    assert summary.num_records == len(records) > 4000
    prot = read_all(out, PER_PROTEIN)
    assert len(prot) == len(records)
    for rec in records[:: len(records) // 50]:  # a spread of proteins, compared with the reference
        np.testing.assert_allclose(prot[rec.id], onehot_reference(rec.sequence).mean(0), atol=1e-6)


def test_shards_are_disjoint_complete_and_balanced():
    from protrans_cli.embed import shard_units

    units = [_Unit("A" * n, [type("P", (), {"id": f"p{n}"})()]) for n in range(1, 101)]
    shards = [shard_units(units, r, 3) for r in range(3)]
    ids = [u.sequence for s in shards for u in s]
    assert sorted(ids) == sorted(u.sequence for u in units)  # every unit exactly once
    loads = [sum(len(u.sequence) for u in s) for s in shards]
    assert max(loads) - min(loads) <= 100  # within one protein of each other
    assert shard_units(units, 1, 3) == shards[1]  # deterministic, so --resume finds the same shards


def test_shards_deal_the_longest_proteins_first():
    """Longest first: 200 one-residue proteins read before one of 100 end 150 / 150 residues on two
    ranks; dealt in input order they would end 200 / 100 (the rank that drew the long one waits)."""
    from protrans_cli.embed import shard_units

    units = [_Unit("A", [type("P", (), {"id": f"p{i:03d}"})()]) for i in range(200)]
    units.append(_Unit("A" * 100, [type("P", (), {"id": "long"})()]))
    loads = sorted(sum(len(u.sequence) for u in shard_units(units, r, 2)) for r in range(2))
    assert loads == [150, 150]


@pytest.mark.slow
def test_torchrun_two_ranks_give_one_merged_file(tmp_path):
    import os
    import subprocess
    import sys

    single = read_all(_run(tmp_path / "single.h5"))
    out = tmp_path / "dist.h5"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PROTRANS_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "protrans_cli", "embed", str(SMALL), "-m", "onehot", "-o", str(out), "--packing"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "embedded 6 proteins" in proc.stderr  # totals over both ranks, reported once
    assert "residues/s on 2 ranks on cpu, float32) into" in proc.stderr, proc.stderr
    assert proc.stderr.count("--packing ignored") == 1  # what the set-up says, said by rank 0 alone
    assert proc.stderr.count("embedded ") == 1
    merged = read_all(out)
    assert merged.keys() == single.keys()
    for k in single:
        np.testing.assert_array_equal(merged[k], single[k])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.h5", "single.h5"]  # shards removed
    import json

    import h5py

    with h5py.File(out) as f:
        assert len(json.loads(f.attrs["runs"])) == 1  # one run, whatever the ranks
        # the command that ran, not `protrans embed ...` as if one process had
        assert f.attrs["command_line"] == f"torchrun --nproc-per-node 2 -m protrans_cli embed {SMALL} -m onehot -o {out} --packing"


@pytest.mark.slow
def test_torchrun_says_and_records_every_ranks_truncated_proteins(tmp_path):
    """Each rank truncates its share: the summary (rank 0's) names all of them, as the merged file lists them."""
    import os
    import subprocess
    import sys

    out = tmp_path / "dist.h5"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PROTRANS_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "protrans_cli", "embed", str(SMALL), "-m", "onehot", "-o", str(out), "--max-length", "10",
           "--long-policy", "truncate", "--max-batch-size", "1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("truncated 3 proteins longer than --max-length 10") == 1, proc.stderr
    assert _truncated_attr(out) == CUT_AT_10


def test_the_command_line_under_torchrun_names_its_ranks(monkeypatch):
    from protrans_cli.cli.embed import command_line

    argv = ["embed", "a b.fa", "-o", "x.h5"]
    assert command_line(argv) == "protrans embed 'a b.fa' -o x.h5"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert command_line(argv) == "torchrun --nproc-per-node 2 -m protrans_cli embed 'a b.fa' -o x.h5"
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert command_line(argv) == "torchrun --nnodes 4 --nproc-per-node 2 -m protrans_cli embed 'a b.fa' -o x.h5"


@pytest.mark.parametrize("rank", [0, 1])
def test_each_rank_adds_only_what_it_said_differently_of_the_model_set_up(monkeypatch, capsys, rank):
    """Under torchrun rank 0 describes the model's set-up; another rank holds its lines back and
    shows only those rank 0 did not say (a kernel one node could not build), with its rank. A
    rank whose build failed fails after the exchange, and the others stop with it."""
    import torch.distributed

    import protrans_cli.embed as E
    from protrans_cli import console
    from protrans_cli.errors import RuntimeFailure

    def build(options, device=None):
        console.info("packing each batch into one row")
        console.warn("FlexAttention's kernel could not be built" if rank == 1 else "the same on every rank")
        return "embedder"

    main_said = [("info", "packing each batch into one row"), ("warning", "the same on every rank")]
    exchanged = []

    def gather(out, mine, group=None):
        exchanged.append(mine)
        out[:] = [(main_said, False), mine] if rank == 1 else [mine, (mine[0], False)]

    monkeypatch.setattr(E, "build_embedder", build)
    monkeypatch.setattr(torch.distributed, "all_gather_object", gather)
    dist = E._Dist(rank=rank, world_size=2)
    assert E._build_on_every_rank(EmbedOptions(model="m"), "cpu", dist) == "embedder"
    err = capsys.readouterr().err
    if rank == 0:
        assert err == "packing each batch into one row\nprotrans: warning: the same on every rank\n"
        assert exchanged == [(main_said, False)]
    else:
        assert err == "protrans: warning: rank 1: FlexAttention's kernel could not be built\n"

    def failing(options, device=None):
        raise ModelError("no such model")

    monkeypatch.setattr(E, "build_embedder", failing)
    with pytest.raises(ModelError, match="no such model"):
        E._build_on_every_rank(EmbedOptions(model="m"), "cpu", dist)  # after the exchange, not before
    assert exchanged[-1][1] is True
    monkeypatch.setattr(E, "build_embedder", build)
    monkeypatch.setattr(torch.distributed, "all_gather_object",
                        lambda out, mine, group=None: out.__setitem__(slice(None), [mine, (mine[0], True)] if rank == 0
                                                          else [(main_said, True), mine]))
    with pytest.raises(RuntimeFailure, match=f"rank\\(s\\) {1 - rank} could not load or build the model"):
        E._build_on_every_rank(EmbedOptions(model="m"), "cpu", dist)


def _two_ranks_patched(tmp_path, out, patch: str, port_base: int = 29500):
    """`embed SMALL -m onehot -o out` as two torchrun ranks (gloo) whose protrans_cli.embed (`E`) or
    protrans_cli.embed_dist (`D`) is patched by `patch` first: (exit codes, stderrs, the environment
    without RANK)."""
    import os
    import subprocess
    import sys

    wrapper = tmp_path / "wrap.py"
    wrapper.write_text("import os, signal, sys\nimport protrans_cli.embed as E\n"
                       "import protrans_cli.embed_dist as D\n" + patch
                       + "from protrans_cli.cli import main\nmain(sys.argv[1:])\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PROTRANS_NO_PROGRESS="1", MASTER_ADDR="127.0.0.1", WORLD_SIZE="2",
               MASTER_PORT=str(port_base + os.getpid() % 1000), PYTHONPATH=str(ROOT))
    args = [sys.executable, str(wrapper), "embed", str(SMALL), "-m", "onehot", "-o", str(out)]
    ranks = [subprocess.Popen(args, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stderr=subprocess.PIPE,
                              text=True) for r in (0, 1)]
    errs = [p.communicate(timeout=120)[1] for p in ranks]
    return [p.returncode for p in ranks], errs, env


@pytest.mark.slow
def test_a_rank_whose_merger_died_says_so_in_one_line_and_resume_merges(tmp_path):
    """The other ranks wait for rank 0's merge (leaving at once, one's gloo teardown made torchrun
    stop rank 0 mid-merge); rank 0 killed while merging: rank 1 said it in a gloo traceback."""
    import subprocess
    import sys

    out = tmp_path / "m.h5"
    codes, errs, env = _two_ranks_patched(tmp_path, out, "def merge(*a, **k):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
                                                         "D._merge_shards = merge\n")
    assert codes[1] == 1
    assert errs[1].strip().splitlines() == [
        line for line in errs[1].strip().splitlines() if line.startswith("protrans: error: the process merging")]
    assert "every protein is computed: run the same command with --resume" in errs[1]
    r = subprocess.run([sys.executable, "-m", "protrans_cli", "embed", str(SMALL), "-m", "onehot", "-o", str(out),
                        "--resume"], env={k: v for k, v in env.items() if k != "WORLD_SIZE"}, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "merged 2 shard file(s)" in r.stderr, r.stderr
    assert read_all(out).keys() == read_all(_run(tmp_path / "single.h5")).keys()


@pytest.mark.slow
@pytest.mark.parametrize("signame, when", [("SIGTERM", "merged"), ("SIGINT", "merged"), ("SIGTERM", "merging")])
def test_a_signal_while_rank_0_merges_is_said_by_rank_0_alone_and_the_waiting_ranks_exit_0(tmp_path, signame, when):
    """torchrun, 3 ranks: a SIGTERM (Ctrl-C) to every rank once rank 0's merged file is complete. Ranks 1
    and 2, whose shards were done and who waited for the merge, printed "protrans: error: terminated"
    and exited 143: two errors before rank 0's "nothing was lost", and torchrun, seeing a rank fail,
    called the whole run failed (exit 1, "ChildFailedError"). They leave the verdict to rank 0. The
    signal before the merge was complete: rank 0's line alone, and torchrun names rank 0's exit."""
    import subprocess
    import sys

    out, pids = tmp_path / "dist.h5", tmp_path / "pids"
    pids.mkdir()
    wrapper = tmp_path / "wrap.py"
    wrapper.write_text(
        "import os, signal, sys, time\nimport protrans_cli.embed_dist as D\n"
        f"pids = {str(pids)!r}\n"
        "open(os.path.join(pids, os.environ['RANK']), 'w').write(str(os.getpid()))\n"
        f"merge = D.{'_merge_shards' if when == 'merged' else '_absorb_shards'}\n"
        "def stopped(*a, **k):\n"
        f"    result = merge(*a, **k) if {when == 'merged'} else None  # (merged: the output renamed, complete)\n"
        "    time.sleep(1)  # (the other ranks wait at the end by now)\n"
        "    for rank in sorted(os.listdir(pids), reverse=True):\n"
        f"        os.kill(int(open(os.path.join(pids, rank)).read()), signal.{signame})\n"
        "    time.sleep(1)  # (the other ranks still wait for this one)\n"
        "    return result if result is not None else merge(*a, **k)\n"
        f"D.{'_merge_shards' if when == 'merged' else '_absorb_shards'} = stopped\n"
        "from protrans_cli.cli import main\nsys.argv = ['protrans', *sys.argv[1:]]\nmain()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PROTRANS_NO_PROGRESS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3", str(wrapper),
           "embed", str(SMALL), "-m", "onehot", "-o", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert sorted(os.listdir(pids)) == ["0", "1", "2"]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("protrans: ")
            and "gap characters" not in line]  # (small.fa's own warning)
    word = "terminated" if signame == "SIGTERM" else "interrupted"
    if when == "merging":
        # (stopped before the merge wrote its file: said bare, "protrans: error: terminated", where the shards hold it all)
        assert ours == [f"protrans: error: terminated: what was computed is in the shard files {out}.shard-*-of-003"
                        ".partial; run the same command with --resume to finish"], proc.stderr
        assert proc.returncode == 1 and not out.exists()
        root = proc.stderr[proc.stderr.index("Root Cause"):]
        assert "rank      : 0 " in root and "exitcode  : 143 " in root, proc.stderr[-3000:]
        assert "rank      : 1 " not in proc.stderr and "rank      : 2 " not in proc.stderr  # (exit 0)
        env.pop("WORLD_SIZE", None)
        subprocess.run([sys.executable, "-m", "protrans_cli", "embed", str(SMALL), "-m", "onehot", "-o", str(out),
                        "--resume"], env=env, check=True, capture_output=True, timeout=120)
        assert read_all(out).keys() == read_all(_run(tmp_path / "single.h5")).keys()
        return
    assert ours == [f"protrans: warning: {word} once the output was complete ({out}): nothing was lost"], proc.stderr
    assert proc.returncode == 0 and "ChildFailedError" not in proc.stderr, proc.stderr[-3000:]
    assert read_all(out).keys() == read_all(_run(tmp_path / "single.h5")).keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.h5", "pids", "single.h5", "wrap.py"]  # shards gone


def test_package_level_embed_is_callable(tmp_path):
    import protrans_cli

    summary = protrans_cli.embed(SMALL, tmp_path / "p.h5", protrans_cli.EmbedOptions(model="onehot"))
    assert summary.num_embedded == 6


@pytest.mark.slow
@pytest.mark.shared
def test_ctrl_c_leaves_a_readable_partial_file_and_resume_finishes_it(shared_data, tmp_path):
    """A real SIGINT to a running `protrans embed`: exit 130, a readable partial file, and
    --resume gives the same content as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    fasta = shared_data / "proteomes" / "UP000000625_83333.fasta"
    out = tmp_path / "ecoli.h5"
    cmd = [sys.executable, "-m", "protrans_cli", "embed", str(fasta), "-m", "onehot", "--per-protein",
           "--max-batch-size", "1", "-o", str(out)]
    env = {**os.environ, "PROTRANS_NO_PROGRESS": "1"}
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not partial_path(out).exists() or partial_path(out).stat().st_size < 200_000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130, stderr
    assert "--resume" in stderr and not out.exists()
    partial = read_all(partial_path(out), PER_PROTEIN)
    assert 0 < len(partial)
    subprocess.run(cmd + ["--resume"], env=env, check=True, capture_output=True)
    full = read_all(_run(tmp_path / "full.h5", fasta=fasta, per_residue=False), PER_PROTEIN)
    resumed = read_all(out, PER_PROTEIN)
    assert resumed.keys() == full.keys()
    for k in full:
        np.testing.assert_array_equal(resumed[k], full[k])


# --- bounded memory: windows --------------------------------------------------------------

def generated_fasta(path, num, seed=0, repeat_every=7, long_every=0):
    """`num` random proteins; every `repeat_every`-th repeats an earlier sequence (so identical
    sequences fall in different windows), every `long_every`-th is 80-120 residues long."""
    rng = np.random.default_rng(seed)
    letters = np.array(list(ONEHOT_ALPHABET[:20]))
    seqs = []
    with open(path, "w") as f:
        for i in range(num):
            if repeat_every and i % repeat_every == repeat_every - 1:
                seq = seqs[int(rng.integers(len(seqs)))]
            else:
                n = int(rng.integers(80, 121)) if long_every and i % long_every == 0 else int(rng.integers(5, 60))
                seq = "".join(rng.choice(letters, n))
            seqs.append(seq)
            f.write(f">g{i} generated protein {i}\n{seq}\n")
    return path


def file_content(path):
    """Everything a user reads from an output: every dataset with its attributes, and the file's
    `failed` attribute."""
    import h5py

    content = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                content[name] = (obj[()], dict(obj.attrs))
        f.visititems(visit)
        content["failed"] = f.attrs["failed"]
    return content


def assert_same_content(a, b):
    assert a.keys() == b.keys() and len(a) > 1  # compared something
    assert a.pop("failed") == b.pop("failed")
    for key in a:
        np.testing.assert_array_equal(a[key][0], b[key][0], err_msg=key)
        assert a[key][1] == b[key][1], key


def spy_on_batches(monkeypatch):
    seen = []
    original = OneHotEmbedder.embed_batch

    def spy(self, seqs, **kw):
        seen.extend(seqs)
        return original(self, seqs, **kw)

    monkeypatch.setattr(OneHotEmbedder, "embed_batch", spy)
    return seen


@pytest.mark.parametrize("policy", ["chunk", "skip", "truncate"])
def test_windowed_output_equals_unwindowed(tmp_path, monkeypatch, policy):
    fasta = generated_fasta(tmp_path / "g.fa", 300, long_every=11)
    seen = spy_on_batches(monkeypatch)
    kw = dict(max_length=50, long_policy=policy, chunk_overlap=8)
    whole = embed(fasta, tmp_path / "whole.h5", EmbedOptions(model="onehot", window=10**6, **kw))
    computed_whole = list(seen)
    seen.clear()
    windowed = embed(fasta, tmp_path / "win.h5", EmbedOptions(model="onehot", window=16, **kw))
    assert_same_content(file_content(tmp_path / "whole.h5"), file_content(tmp_path / "win.h5"))
    # Identical sequences in different windows are still computed once.
    assert sorted(seen) == sorted(computed_whole) and len(seen) == len(set(seen))
    assert windowed.num_duplicates == whole.num_duplicates > 20
    assert (windowed.num_embedded, windowed.num_residues, windowed.failed) == \
        (whole.num_embedded, whole.num_residues, whole.failed)


def test_windowed_copies_carry_failures_too(tmp_path):
    """A sequence that ran out of memory in one window is recorded as failed for its repeats in
    later windows, exactly as without windows."""
    fasta = generated_fasta(tmp_path / "g.fa", 60, repeat_every=3)
    # A 45-token budget: only proteins over 45 residues run out of memory (no batch splitting).
    whole = embed(fasta, tmp_path / "whole.h5", EmbedOptions(model="onehot", max_tokens=45),
                  embedder=_FakeOOM(budget=45))
    windowed = embed(fasta, tmp_path / "win.h5", EmbedOptions(model="onehot", max_tokens=45, window=7),
                     embedder=_FakeOOM(budget=45))
    assert len(whole.failed) > 5 and windowed.failed == whole.failed
    assert_same_content(file_content(tmp_path / "whole.h5"), file_content(tmp_path / "win.h5"))


def _peak_bytes(fasta, out, window):
    import tracemalloc

    embed(SMALL, out, EmbedOptions(model="onehot", per_residue=False, threads=1))  # imports outside the trace

    tracemalloc.start()
    try:
        embed(fasta, out, EmbedOptions(model="onehot", per_residue=False, window=window, threads=1, force=True))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_the_window_not_the_input(tmp_path, monkeypatch):
    """Peak Python memory grows by a few bytes per protein (the id and sequence digests) with a
    window, by the whole records without one. (A flush after every batch: these runs take less
    than the second between embed's flushes, and what waits for a flush, a second's proteins at
    most, would count as growth with the input.)"""
    import protrans_cli.io.h5 as h5

    monkeypatch.setattr(h5, "FLUSH_SECONDS", 0.0)
    small = generated_fasta(tmp_path / "small.fa", 300, repeat_every=0)
    large = generated_fasta(tmp_path / "large.fa", 1500, repeat_every=0)
    extra = 1500 - 300
    windowed = _peak_bytes(large, tmp_path / "l.h5", 50) - _peak_bytes(small, tmp_path / "s.h5", 50)
    unwindowed = _peak_bytes(large, tmp_path / "lu.h5", 10**6) - _peak_bytes(small, tmp_path / "su.h5", 10**6)
    assert windowed / extra < 40, windowed / extra        # bytes per additional protein
    assert unwindowed / extra > 200, unwindowed / extra   # what holding the records costs


def test_digest_collisions_change_nothing(tmp_path, monkeypatch):
    """8-byte digests only select what to look at: with every id and sequence colliding, no
    false duplicate id is reported, nothing is copied from a different sequence, and a real
    duplicate id is still found."""
    import protrans_cli.embed as embed_module

    fasta = generated_fasta(tmp_path / "g.fa", 60)
    reference = file_content(_run(tmp_path / "ref.h5", fasta=fasta, window=5))
    monkeypatch.setattr(embed_module, "_digest64", lambda text: 42)
    collided = file_content(_run(tmp_path / "col.h5", fasta=fasta, window=5))
    assert_same_content(reference, collided)
    with pytest.raises(InputError, match="duplicate id"):
        _run(tmp_path / "d.h5", fasta=DATA / "embed" / "duplicate_ids.fa", window=1)


@pytest.mark.parametrize("window", [1, 2])
def test_checks_still_come_before_any_computation_with_windows(tmp_path, monkeypatch, window):
    def boom(self, seqs, **kw):
        raise AssertionError("computed before the checks")

    original = OneHotEmbedder.embed_batch
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", boom)
    with pytest.raises(InputError, match="duplicate id"):
        _run(tmp_path / "d.h5", fasta=DATA / "embed" / "duplicate_ids.fa", window=window)
    with pytest.raises(InputError, match="P1.*max_length=10"):  # P1 is not in the first window
        _run(tmp_path / "e.h5", max_length=10, window=window)
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", original)
    out = _run(tmp_path / "r.h5")
    changed = tmp_path / "changed.fa"
    changed.write_text(SMALL.read_text().replace("MKXUZOBA", "MKXUZOBAW"))
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", boom)
    with pytest.raises(InputError, match="record 'rare'.*another sequence"):
        embed(changed, out, EmbedOptions(model="onehot", resume=True, window=window))
    assert not partial_path(tmp_path / "e.h5").exists()


def test_resume_with_windows_equals_uninterrupted_run(tmp_path, monkeypatch):
    fasta = generated_fasta(tmp_path / "g.fa", 200)
    full = file_content(_run(tmp_path / "full.h5", fasta=fasta, window=10**6))
    out = tmp_path / "resumed.h5"
    original = _ctrl_c_on_batch(monkeypatch, 12)
    with pytest.raises(KeyboardInterrupt):
        _run(out, fasta=fasta, window=20)
    partial = read_all(partial_path(out))
    assert 0 < len(partial) < 200
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", original)
    summary = embed(fasta, out, EmbedOptions(model="onehot", resume=True, window=20))
    assert summary.num_resumed == len(partial)
    assert_same_content(full, file_content(out))


def test_cli_stdin_spool_does_not_follow_a_planted_link(run_cli, tmp_path):
    # The spool's name is predictable: a link planted there (a shared scratch folder) made
    # open(..., "wb") overwrite the file it pointed to with the FASTA.
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    out_dir = tmp_path / "shared"
    out_dir.mkdir()
    (out_dir / ".s.h5.stdin.spool").symlink_to(victim)
    result = run_cli("embed", "-", "-m", "onehot", "-o", out_dir / "s.h5", input=b">a\nMKV\n")
    assert result.exit_code == 0, result.stderr
    assert victim.read_bytes() == b"precious\n"
    assert sorted(read_all(out_dir / "s.h5")) == ["a"]
    assert sorted(p.name for p in out_dir.iterdir()) == ["s.h5"]  # the link is gone, and the spool


def test_cli_stdin_with_windows_is_spooled_and_cleaned_up(run_cli, tmp_path):
    out = tmp_path / "s.h5"
    (tmp_path / ".s.h5.stdin.spool").write_bytes(b">left by a SIGKILLed run\nMMMM\n")  # replaced, then removed
    result = run_cli("embed", "-", "-m", "onehot", "--window", "1", "-o", out,
                     input=b">a\nMKV\n>b\nWWW\n>c\nMKV\n")
    assert result.exit_code == 0, result.stderr
    assert "of these 3, 1 repeats another's sequence" in result.stderr
    got = read_all(out)
    assert sorted(got) == ["a", "b", "c"]  # nothing of the old spool
    np.testing.assert_array_equal(got["c"], onehot_reference("MKV"))
    np.testing.assert_array_equal(got["b"], onehot_reference("WWW"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]  # the spool file is gone
    bad = run_cli("embed", "-", "-m", "onehot", "--window", "1", "-o", tmp_path / "d.h5", input=b">a\nMK\n>a\nMK\n")
    assert bad.exit_code == 1 and "<stdin>" in bad.stderr and "duplicate id" in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.h5"]
    assert run_cli("embed", SMALL, "-m", "onehot", "--window", "0", "-o", out).exit_code == 2


@pytest.mark.slow
def test_torchrun_with_windows_equals_one_process(tmp_path):
    """Two ranks share every window (repeated sequences pinned to one rank, which copies them):
    the merged file has the content of a single-process run."""
    import os
    import subprocess
    import sys

    fasta = generated_fasta(tmp_path / "g.fa", 120, long_every=9)
    kw = ["--max-length", "50", "--long-policy", "chunk", "--chunk-overlap", "8"]
    single = tmp_path / "single.h5"
    embed(fasta, single, EmbedOptions(model="onehot", max_length=50, long_policy="chunk", chunk_overlap=8))
    out = tmp_path / "dist.h5"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PROTRANS_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "protrans_cli", "embed", str(fasta), "-m", "onehot", "--window", "13", *kw, "-o", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "embedded 120 proteins" in proc.stderr and "repeat another's sequence" in proc.stderr
    assert_same_content(file_content(single), file_content(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.h5", "g.fa", "single.h5"]


# --- QA fixes -----------------------------------------------------------------------------

@pytest.mark.parametrize("output_name", ["in.fa", "in.fa.partial", "link.fa"])
def test_output_that_is_the_input_is_refused(run_cli, tmp_path, output_name):
    """`embed e2.fa -o e2.fa` replaced the FASTA with HDF5; its .partial (or a hard link to it)
    as the input was truncated on opening."""
    import os

    text = SMALL.read_bytes()
    fasta = tmp_path / "in.fa"
    fasta.write_bytes(text)
    os.link(fasta, tmp_path / "link.fa")
    source = tmp_path / ("in.fa" if output_name != "in.fa.partial" else "in.fa.partial")
    output = tmp_path / (output_name if output_name != "in.fa.partial" else "in.fa")
    if output_name == "in.fa.partial":
        os.rename(fasta, source)
    result = run_cli("embed", source, "-m", "onehot", "-o", output)
    assert result.exit_code == 2, result.stderr
    assert "is also the input" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert source.read_bytes() == text  # the FASTA is untouched
    assert not output_name == "in.fa.partial" or not output.exists()


def test_output_that_is_the_input_is_refused_before_it_exists(tmp_path):
    # Not created yet on either side: the resolved paths are compared.
    with pytest.raises(UsageError, match="is also the input"):
        embed(tmp_path / "sub" / ".." / "new.fa", tmp_path / "new.fa", EmbedOptions(model="onehot"))


@pytest.mark.parametrize("command", [["embed", "-m", "onehot"], ["merge"], ["import-esm"],
                                     ["contacts", "-m", "esm2_t6_8M_UR50D"]])
def test_an_output_named_partial_is_refused(run_cli, tmp_path, command):
    """`embed x.fa -o weird.h5.partial` wrote a finished file under the name of an unfinished one:
    info called it unfinished and merge refused it ("finish it first"). Every command whose
    unfinished output is OUTPUT.partial refuses such a name before any work (exit 2)."""
    (tmp_path / "in.fa").write_text(">a\nMKV\n")
    output = tmp_path / "weird.h5.partial"
    done = run_cli(command[0], tmp_path / "in.fa", *command[1:], "-o", output)
    assert done.exit_code == 2, done.stderr
    assert "a name ending in .partial is an unfinished run's file" in done.stderr and "name the output weird.h5" \
        in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.fa"]
    with pytest.raises(UsageError, match="ending in .partial"):  # the library's embed too
        embed(tmp_path / "in.fa", output, EmbedOptions(model="onehot"))


def test_too_long_record_names_file_and_line(run_cli, tmp_path):
    """The QA report read `record 'sp|...': 68700 residues, longer than ...`: no file, no line."""
    fasta = tmp_path / "long_second.fa"
    fasta.write_text(">short\nMKV\n>long a long one\nMKVLAAGIVG\nMKVLA\n")
    result = run_cli("embed", fasta, "-m", "onehot", "--max-length", "8", "-o", tmp_path / "x.h5")
    assert result.exit_code == 1, result.stderr
    assert result.stderr.strip() == (f"protrans: error: {fasta}:3, record 'long': 15 residues, longer than "
                                     "--max-length 8 (add --long-policy skip, truncate or chunk)")
    # The same message where the window planner meets it (no pre-check pass).
    from protrans_cli.embed import _Protein, plan_units

    with pytest.raises(InputError, match=r"^in\.fa:3, record 'long': 15 residues"):
        plan_units([_Protein("long", "long", "M" * 15, 3)], EmbedOptions(model="onehot", max_length=8), 8,
                   set(), None, "in.fa")


_SLOW_EMBED = """
import pathlib, signal, sys, time
from protrans_cli import embed as E
from protrans_cli.io.h5 import EmbeddingsWriter

signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored
marker = pathlib.Path(sys.argv[1])
compute, flush = E.OneHotEmbedder.embed_batch, EmbeddingsWriter.flush

def slow(self, seqs, **kw):
    time.sleep(0.05)  # a model's forward pass: the signal arrives mid-run
    return compute(self, seqs, **kw)

def flushed(self, **kw):
    flush(self, **kw)
    marker.touch()  # at least one batch is in OUTPUT.partial

E.OneHotEmbedder.embed_batch, EmbeddingsWriter.flush = slow, flushed
from protrans_cli.cli import main
main(sys.argv[2:])
"""


@pytest.mark.parametrize("signame,code,word", [("SIGINT", 130, "interrupted"), ("SIGTERM", 143, "terminated"),
                                               ("SIGUSR1", 138, "warned by SIGUSR1 (the job's time is nearly up)")])
def test_signal_after_first_batch_leaves_a_resumable_partial_and_one_line(tmp_path, signame, code, word):
    """Ctrl-C or SIGTERM (a scheduler, `timeout`) once a batch is written: exit 130/143, exactly one
    error line naming the partial file, and --resume then equals an uninterrupted run. So does
    Slurm's warning before the time limit (`--signal=USR1@120`), which killed embed on the spot,
    without the line that says how to finish (exit 138 now: the output is not complete)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    fasta = generated_fasta(tmp_path / "g.fa", 40, repeat_every=0)
    out, marker, script = tmp_path / "g.h5", tmp_path / "flushed", tmp_path / "slow_embed.py"
    script.write_text(_SLOW_EMBED)
    args = ["embed", str(fasta), "-m", "onehot", "--max-batch-size", "1", "-o", str(out)]
    env = {**os.environ, "PROTRANS_NO_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(marker), *args], env=env,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(getattr(signal, signame))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert stderr.splitlines() == [f"protrans: error: {word}: what was computed is in {partial_path(out)}; "
                                   "run the same command with --resume to finish"]
    assert not out.exists()
    partial = read_all(partial_path(out))
    assert 0 < len(partial) < 40  # readable, holding what was written before the signal
    summary = embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=1, resume=True))
    assert summary.num_resumed == len(partial) and not partial_path(out).exists()
    assert_same_content(file_content(out), file_content(_run(tmp_path / "full.h5", fasta=fasta, max_batch_size=1)))


@pytest.mark.parametrize("nohup", [False, True], ids=["hung-up", "nohup"])
def test_a_terminal_that_hangs_up_stops_embed_as_sigterm_does_and_a_nohup_run_goes_on(tmp_path, nohup):
    """An ssh connection that drops under `protrans embed` run without nohup or tmux: the SIGHUP
    killed it on the spot (status -1, its lock file left beside the output). It stops as for
    SIGTERM now: exit 129, the work in OUTPUT.partial and nothing else, --resume then equal to an
    uninterrupted run. Started under nohup (SIGHUP ignored) it runs on to the end, exit 0, its
    messages discarded where the terminal is gone (EIO: the summary's had failed it, exit 1)."""
    from conftest import hung_up

    # (the hung-up run stops after its first flush: enough proteins that a loaded machine's late
    # first flush still comes long before the end, which made it exit 0, the run complete)
    count = 40 if nohup else 400
    fasta = generated_fasta(tmp_path / "g.fa", count, repeat_every=0)
    out, marker, script = tmp_path / "g.h5", tmp_path / "flushed", tmp_path / "slow_embed.py"
    # (main() as the `protrans` command calls it, reading its arguments from sys.argv)
    script.write_text(_SLOW_EMBED.replace("main(sys.argv[2:])", "sys.argv[1:] = sys.argv[2:]\nmain()"))
    code = hung_up([sys.executable, str(script), str(marker), "embed", str(fasta), "-m", "onehot",
                    "--max-batch-size", "1", "-o", str(out)], marker.exists, nohup=nohup)
    full = file_content(_run(tmp_path / "full.h5", fasta=fasta, max_batch_size=1))
    left = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("g.fa", "flushed", "slow_embed.py", "full.h5"))
    if nohup:
        assert code == 0 and left == ["g.h5"]
    else:
        assert code == 129 and left == ["g.h5.partial", "g.h5.partial.ledger"]
        assert 0 < len(read_all(partial_path(out))) < count  # what was written before the hang-up
        embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=1, resume=True))
    assert_same_content(file_content(out), full)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_resume_completes(tmp_path):
    """SIGKILL (the out-of-memory killer, a hard time limit) cannot be caught: what was flushed
    must survive it. Killed at random moments of a write-heavy run (onehot, batches of 4, a flush
    once a second), the partial file stays readable and --resume gives the uninterrupted content."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    fasta = generated_fasta(tmp_path / "g.fa", 3000, repeat_every=0, long_every=3)
    full = file_content(_run(tmp_path / "full.h5", fasta=fasta, max_batch_size=4))
    rng, killed = random.Random(0), 0
    env = {**os.environ, "PROTRANS_NO_PROGRESS": "1"}
    for trial in range(4):
        out = tmp_path / f"k{trial}.h5"
        proc = subprocess.Popen([sys.executable, "-m", "protrans_cli", "embed", str(fasta), "-m", "onehot",
                                 "--max-batch-size", "4", "-o", str(out)], env=env, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while not partial_path(out).exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            killed += 1
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=4, resume=True))
        assert_same_content(file_content(out), dict(full))  # it pops "failed"
    assert killed >= 2, "the runs finished before the kill: the test proves nothing"


def test_missing_output_directory_is_refused_not_created(tmp_path, monkeypatch):
    # prep and predict refuse it too; checked before the input is read or a model loaded.
    import protrans_cli.embed as embed_module

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the output directory was checked")

    monkeypatch.setattr(embed_module, "build_embedder", no_model)
    with pytest.raises(UsageError, match="nodir: output directory does not exist"):
        embed(SMALL, tmp_path / "nodir" / "x.h5", EmbedOptions(model="onehot"))
    assert not (tmp_path / "nodir").exists()


def test_an_empty_or_directory_like_output_name_is_a_usage_error(tmp_path, run_cli):
    # -o "" (an unset variable) was a pathlib traceback; -o new.h5/ wrote a file named new.h5
    r = run_cli("embed", SMALL, "-m", "onehot", "-o", "")
    assert r.exit_code == 2 and r.stderr.strip() == "protrans: error: the output path is empty"
    r = run_cli("embed", SMALL, "-m", "onehot", "-o", f"{tmp_path / 'new.h5'}/")
    assert r.exit_code == 2 and "new.h5/: ends with '/', which names a directory" in r.stderr
    assert not (tmp_path / "new.h5").exists()
    r = run_cli("prep", SMALL, "-o", f"{tmp_path / 'c.txt'}/")
    assert r.exit_code == 2 and not (tmp_path / "c.txt").exists()


def test_an_existing_directory_as_output_is_refused_before_any_work(tmp_path, monkeypatch, run_cli):
    # From Python it embedded every protein, then failed the final rename ("Is a directory") and
    # left DIR.partial; without force it said "DIR exists: --resume ... --force ...", which led
    # there. (The command's -o already refused a directory.)
    import protrans_cli.embed as embed_module

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    out = tmp_path / "results"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    monkeypatch.setattr(embed_module, "build_embedder", no_model)
    for options in (EmbedOptions(model="onehot"), EmbedOptions(model="onehot", force=True),
                    EmbedOptions(model="onehot", resume=True)):
        with pytest.raises(UsageError, match="results: is a directory"):
            embed(SMALL, out, options)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    r = run_cli("embed", SMALL, "-m", "onehot", "-o", out, "--force")
    assert r.exit_code == 2 and "is a directory" in r.stderr


def test_a_failed_final_rename_says_where_the_finished_embeddings_are(tmp_path, monkeypatch):
    # It said only "OUT.partial: Operation not permitted" (an immutable OUT under --force).
    import protrans_cli.io.h5 as h5_module
    from protrans_cli.errors import RuntimeFailure

    real = os.replace
    out = tmp_path / "e.h5"

    def refuse(src, dst):
        if str(dst) == str(out):
            raise PermissionError(1, "Operation not permitted")
        return real(src, dst)

    monkeypatch.setattr(h5_module.os, "replace", refuse)
    with pytest.raises(RuntimeFailure) as caught:
        embed(SMALL, out, EmbedOptions(model="onehot"))
    assert caught.value.format() == (f"{out}: cannot replace it with the finished e.h5.partial (Operation not "
                                     f"permitted); the finished embeddings are in {partial_path(out)}")
    with EmbeddingsReader(partial_path(out)) as reader:  # complete, kept
        assert len(reader.keys(PER_RESIDUE)) == len(list(read_fasta(SMALL)))


def test_host_staging_hands_out_independent_arrays_in_the_storage_dtype():
    """The reused staging buffer (pinned on a GPU) behind embed_batch's device-to-host copy:
    each array is the rows in the storage dtype, converted exactly as numpy converts float32
    (what the writer did before rows came in float16), and stays intact while later batches
    reuse the buffer."""
    torch = pytest.importorskip("torch")
    from protrans_cli.embedders import _HostStaging

    staging = _HostStaging(pinned=False)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 7, generator=g).to(torch.bfloat16).reshape(1, n, 7) for n in (5, 3, 11, 11, 2)]
    out = [staging.stage(b, "float32") for b in batches]
    for b, a in zip(batches, out):
        assert a.dtype == np.float32 and a.shape == tuple(b.shape)
        np.testing.assert_array_equal(a, b.float().numpy())
    assert staging.buffer.numel() == 77 * 4  # bytes; grown twice (35, then 77 rows), not once per batch
    assert len({a.ctypes.data for a in out}) == len(out)
    # float16 storage: float32 values that round in every way (ties, subnormals, overflow, NaN)
    # come out as numpy's astype makes them, through the same buffer.
    tricky = np.array([1 + 2**-11, 1 + 3 * 2**-11, 2**-24, 2**-25, 3 * 2**-26, 65504, 65520, 1e6, -1e6,
                       np.nan, np.inf, -0.0, 1e-8, 0.1, 6.1e-5], dtype=np.float32)
    wide = np.concatenate([tricky, np.random.default_rng(0).standard_normal(49, dtype=np.float32) * 1e3])
    half = staging.stage(torch.from_numpy(wide).reshape(1, 8, 8), "float16")
    assert half.dtype == np.float16
    with np.errstate(over="ignore"):  # (the reference's overflow to inf is the point, not a warning)
        reference = wide.astype(np.float16)
    np.testing.assert_array_equal(half.reshape(-1), reference)
    np.testing.assert_array_equal(staging.to_host(torch.from_numpy(wide), "float16"), reference)
    # Above the cap the rows go straight to the host, and on the CPU nothing is staged.
    staging.MAX_BYTES = 40
    big = torch.randn(1, 20, 7)
    np.testing.assert_array_equal(staging.to_host(big), big.numpy())
    assert staging.buffer.numel() == 77 * 4


def test_onehot_ignores_compile(run_cli, tmp_path):
    result = run_cli("embed", SMALL, "-m", "onehot", "--compile", "-o", tmp_path / "o.h5")
    assert result.exit_code == 0 and "--compile ignored" in result.stderr
    with EmbeddingsReader(tmp_path / "o.h5") as r:
        assert not r.attrs["compiled"]


def test_a_plain_resume_merges_the_shards_of_an_interrupted_torchrun_run(tmp_path):
    """Rank files left by an interrupted torchrun run count as done for a --resume in one
    process; their proteins used to stay in the shards (exit 0, an incomplete file)."""
    from protrans_cli.io.fasta import write_fasta

    full = _run(tmp_path / "full.h5")
    records = list(read_fasta(SMALL))
    for rank, part in enumerate((records[:3], records[3:4])):  # two ranks' shards; the rest never ran
        fasta = tmp_path / f"rank{rank}.fa"
        with open(fasta, "wb") as fh:
            for rec in part:
                write_fasta(fh, rec.id, rec.sequence, rec.description)
        shard = _run(tmp_path / f"r{rank}.h5", fasta=fasta)
        shard.rename(tmp_path / f"out.h5.shard-{rank:03d}-of-002.partial")
    out = tmp_path / "out.h5"
    summary = embed(SMALL, out, EmbedOptions(model="onehot", resume=True, command_line="resumed"))
    assert summary.num_resumed == 4 and not list(tmp_path.glob("out.h5.shard-*"))
    assert_same_content(file_content(out), file_content(full))
    import json

    import h5py

    with h5py.File(out) as f:  # the shards' run first (both ranks' entries are one run here), then this one
        assert [r["command_line"] for r in json.loads(f.attrs["runs"])][-1] == "resumed"
        assert len(json.loads(f.attrs["runs"])) == 2


@pytest.mark.slow
def test_a_torchrun_resume_names_only_the_proteins_it_truncated_whichever_rank_stored_the_earlier_ones(tmp_path):
    """A torchrun --resume of an interrupted torchrun run: its summary (rank 0's) names the proteins
    this run truncated, not one that rank 1's shard already held truncated (every rank reads every
    shard, so rank 0 knows of it), and the merged file lists all of them with their full lengths."""
    import os
    import subprocess
    import sys

    from protrans_cli.io.fasta import write_fasta

    records = {rec.id: rec for rec in read_fasta(SMALL)}
    for rank, ids in enumerate((["one"], ["sp|Q9/slash", "rare"])):  # rank 1 stored sp|Q9/slash cut to 10
        fasta = tmp_path / f"rank{rank}.fa"
        with open(fasta, "wb") as fh:
            for ident in ids:
                write_fasta(fh, ident, records[ident].sequence, records[ident].description)
        shard = _run(tmp_path / f"r{rank}.h5", fasta=fasta, max_length=10, long_policy="truncate")
        shard.rename(tmp_path / f"out.h5.shard-{rank:03d}-of-002.partial")
    assert _truncated_attr(tmp_path / "out.h5.shard-001-of-002.partial") == {"sp|Q9/slash": 20}
    out = tmp_path / "out.h5"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PROTRANS_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "protrans_cli", "embed", str(SMALL), "-m", "onehot", "-o", str(out), "--max-length", "10",
           "--long-policy", "truncate", "--max-batch-size", "1", "--resume"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 already there" in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("truncated ")]
    assert len(lines) == 1 and lines[0].startswith("truncated 2 proteins longer than --max-length 10 "), proc.stderr
    assert sorted(lines[0].split(": ", 1)[1].split("; ")[0].split(", ")) == ["P1", "P1copy"]
    assert _truncated_attr(out) == CUT_AT_10
    assert not list(tmp_path.glob("out.h5.shard-*"))


def _rank0_share(tmp_path):
    """The first three proteins of SMALL as a FASTA of their own (what rank 0 of two embeds)."""
    from protrans_cli.io.fasta import write_fasta

    fasta = tmp_path / "rank0.fa"
    with open(fasta, "wb") as fh:
        for rec in list(read_fasta(SMALL))[:3]:
            write_fasta(fh, rec.id, rec.sequence, rec.description)
    return fasta


def test_the_shards_of_an_interrupted_torchrun_run_are_kept_unless_force_replaces_them(tmp_path):
    """A rank's shard left by an interrupted torchrun run is that run's work: a plain rerun is
    refused naming it (the shard kept as it was); --force embeds everything afresh and removes
    the shard and its ledger, which a later --resume would otherwise have merged into the file."""
    from protrans_cli.io.h5 import ledger_path

    full = _run(tmp_path / "full.h5")
    fasta = _rank0_share(tmp_path)
    shard = tmp_path / "out.h5.shard-000-of-002.partial"
    _run(tmp_path / "r0.h5", fasta=fasta).rename(shard)
    ledger_path(shard).write_bytes(b"a ledger")
    before = shard.read_bytes()
    out = tmp_path / "out.h5"
    with pytest.raises(UsageError, match=f"{re.escape(str(shard))} holds the work of an interrupted run: resume=True "
                                         "finishes it, force=True replaces it"):
        _run(out)
    assert shard.read_bytes() == before and not out.exists()
    summary = embed(SMALL, out, EmbedOptions(model="onehot", force=True))
    assert summary.num_resumed == 0 and summary.num_embedded == len(read_all(full))
    assert not shard.exists() and not ledger_path(shard).exists()
    assert_same_content(file_content(out), file_content(full))


def test_shards_of_an_output_named_with_glob_characters_are_found(tmp_path):
    """An output such as `run[1].h5` (a job array's index): its interrupted torchrun run's shards
    are found by their literal name, not as a glob pattern (`[1]` matches `1`, not `[1]`), and a
    plain --resume merges them. Read as a pattern, the shards were left out: an incomplete file,
    exit 0, which passed every test (their outputs had plain names)."""
    from protrans_cli.embed_dist import _shard_files

    full = _run(tmp_path / "full.h5")
    fasta = _rank0_share(tmp_path)
    _run(tmp_path / "r0.h5", fasta=fasta).rename(tmp_path / "run[1].h5.shard-000-of-002.partial")
    (tmp_path / "run1.h5.shard-000-of-002.partial").write_bytes(b"another output's shard")
    out = tmp_path / "run[1].h5"
    assert _shard_files(out) == [str(tmp_path / "run[1].h5.shard-000-of-002.partial")]
    summary = embed(SMALL, out, EmbedOptions(model="onehot", resume=True))
    assert summary.num_resumed == 3 and not list(tmp_path.glob("run[[]1].h5.shard-*"))
    assert_same_content(file_content(out), file_content(full))


def test_truncated_from_is_each_proteins_own_length(tmp_path):
    """Proteins that share their kept prefix each keep their own length; they are not identical
    sequences (counted as such within a window and not across windows, the summary's figure
    changed with --window)."""
    fasta = tmp_path / "t.fa"
    prefix = "ACDEFGHIKL" * 5
    fasta.write_text(f">a\n{prefix}KKKKKKKKKK\n>b\n{prefix}{'W' * 30}\n>c\n{prefix}\n")
    out = _run(tmp_path / "t.h5", fasta=fasta, max_length=50, long_policy="truncate")
    with EmbeddingsReader(out) as r:
        attrs = {k: dict(r.dataset(k).attrs) for k in ("a", "b", "c")}
    assert attrs["a"]["truncated_from"] == 60 and attrs["b"]["truncated_from"] == 80
    for window in (1, 100):
        summary = embed(fasta, tmp_path / f"w{window}.h5", EmbedOptions(model="onehot", max_length=50,
                                                                         long_policy="truncate", window=window))
        assert summary.num_duplicates == 0
    assert "truncated_from" not in attrs["c"] and attrs["c"]["length"] == 50


def test_an_embedder_with_the_documented_one_argument_embed_batch(tmp_path):
    """docs/embed.md: any object with `embed_batch(sequences) -> [array (n_layers, L, D)]`; per-protein
    means are then taken from its rows (an embedder that takes `pooled=` gets to pool itself)."""

    class Mine:
        name, family, revision, embedding_dim, layers = "mine", "custom", None, 3, (-1,)
        device, compute_dtype, special_tokens, max_residues = "cpu", "float32", 0, None

        def embed_batch(self, sequences):
            return [np.arange(3 * len(s), dtype=np.float32).reshape(1, len(s), 3) for s in sequences]

    for kinds in (dict(), dict(per_residue=False)):
        out = tmp_path / f"mine{len(kinds)}.h5"
        embed(SMALL, out, EmbedOptions(model="mine", **kinds), embedder=Mine())
        with EmbeddingsReader(out) as r:
            np.testing.assert_allclose(r.dataset("one", PER_PROTEIN)[()], [0, 1, 2])
            np.testing.assert_allclose(r.dataset("rare", PER_PROTEIN)[()], np.arange(24).reshape(8, 3).mean(0))


@pytest.mark.parametrize("shape, said", [
    (lambda n: (1, n + 2, 3), "shape (1, 10, 3) for a sequence of 8 residues; expected (1, 8, 3)"),  # special tokens kept
    (lambda n: (n, 3), "shape (8, 3) for a sequence of 8 residues; expected (1, 8, 3)"),             # no layer axis
    (lambda n: (1, n, 4), "shape (1, 8, 4) for a sequence of 8 residues; expected (1, 8, 3)"),       # another width
])
def test_a_library_embedder_of_the_wrong_shape_is_refused(tmp_path, shape, said):
    # Written as they came, with exit 0: rows longer than the protein's `length` attribute and a
    # mean over the special tokens' rows too, a 1-D "per-residue" array, a width other than the
    # file's embedding_dim.
    class Wrong:
        name, family, revision, embedding_dim, layers = "wrong", "custom", None, 3, (-1,)
        device, compute_dtype, special_tokens, max_residues = "cpu", "float32", 0, None

        def embed_batch(self, sequences):
            return [np.ones(shape(len(s)), dtype=np.float32) for s in sequences]

    fasta = tmp_path / "w.fa"
    fasta.write_text(">a\nMKTAYIAK\n")
    with pytest.raises(ModelError, match=re.escape(f"wrong: embed_batch returned an array of {said}")):
        embed(fasta, tmp_path / "w.h5", EmbedOptions(model="wrong"), embedder=Wrong())
    assert not (tmp_path / "w.h5").exists()


def test_a_library_embedder_of_several_layers_gives_one_array_per_layer(tmp_path):
    """n_layers is the length of the embedder's `layers` (docs/embed.md): (2, L, D) arrays of a
    two-layer embedder are written with their layer axis, and one layer's (1, L, D) refused."""
    class TwoLayers:
        name, family, revision, embedding_dim, layers = "two", "custom", None, 3, (-1, -2)
        device, compute_dtype, special_tokens, max_residues = "cpu", "float32", 0, None
        n_layers = 2

        def embed_batch(self, sequences):
            return [np.arange(self.n_layers * len(s) * 3, dtype=np.float32).reshape(self.n_layers, len(s), 3)
                    for s in sequences]

    fasta = tmp_path / "w.fa"
    fasta.write_text(">a\nMKTAYIAK\n")
    embed(fasta, tmp_path / "two.h5", EmbedOptions(model="two", layers=(-1, -2)), embedder=TwoLayers())
    with EmbeddingsReader(tmp_path / "two.h5") as r:
        np.testing.assert_array_equal(r.dataset("a")[()], np.arange(48, dtype=np.float32).reshape(2, 8, 3))
    one = TwoLayers()
    one.n_layers = 1
    with pytest.raises(ModelError, match=re.escape("shape (1, 8, 3) for a sequence of 8 residues; expected (2, 8, 3)")):
        embed(fasta, tmp_path / "one.h5", EmbedOptions(model="two", layers=(-1, -2)), embedder=one)
    assert not (tmp_path / "one.h5").exists()


def test_a_library_embedder_returning_fewer_arrays_than_sequences_is_refused(tmp_path):
    """One array for a batch of two (zip would pair them and drop the second protein unseen):
    refused naming the counts, nothing written."""
    class Short:
        name, family, revision, embedding_dim, layers = "short", "custom", None, 3, (-1,)
        device, compute_dtype, special_tokens, max_residues = "cpu", "float32", 0, None

        def embed_batch(self, sequences):
            return [np.ones((1, len(sequences[0]), 3), dtype=np.float32)]

    fasta = tmp_path / "w.fa"
    fasta.write_text(">a\nMKTAYIAK\n>b\nMKTAYIAQ\n")
    with pytest.raises(ModelError, match=r"^short: embed_batch returned 1 arrays for 2 sequences$"):
        embed(fasta, tmp_path / "w.h5", EmbedOptions(model="short", per_protein=False), embedder=Short())
    # (no partial file either: the run stopped before its first protein, with nothing to resume)
    assert not (tmp_path / "w.h5").exists() and not partial_path(tmp_path / "w.h5").exists()


def test_a_library_embedder_returning_more_arrays_than_sequences_is_refused(tmp_path):
    """An extra array (a batch-level one, or a special token's) was dropped by zip unseen, and the
    proteins' arrays may be off by one: refused naming the counts, nothing written."""
    class Long:
        name, family, revision, embedding_dim, layers = "long", "custom", None, 3, (-1,)
        device, compute_dtype, special_tokens, max_residues = "cpu", "float32", 0, None

        def embed_batch(self, sequences):
            return [np.ones((1, len(s), 3), dtype=np.float32) for s in [*sequences, sequences[0]]]

    fasta = tmp_path / "w.fa"
    fasta.write_text(">a\nMKTAYIAK\n>b\nMKTAYIAQ\n")
    with pytest.raises(ModelError, match=r"^long: embed_batch returned 3 arrays for 2 sequences$"):
        embed(fasta, tmp_path / "w.h5", EmbedOptions(model="long", per_protein=False), embedder=Long())
    assert not (tmp_path / "w.h5").exists() and not partial_path(tmp_path / "w.h5").exists()


def test_a_library_embedder_taking_keyword_arguments_pools_itself(tmp_path):
    """An embed_batch(sequences, **options) takes `pooled=` too: with per-protein output alone it
    is asked for its own pooled vectors (here the first residue's row, not the mean of its rows)."""
    class Pools:
        name, family, revision, embedding_dim, layers = "pools", "custom", None, 3, (-1,)
        device, compute_dtype, special_tokens, max_residues = "cpu", "float32", 0, None

        def embed_batch(self, sequences, **options):
            rows = [np.arange(3 * len(s), dtype=np.float32).reshape(1, len(s), 3) for s in sequences]
            return [r[:, 0] for r in rows] if options.get("pooled") else rows

    embed(SMALL, tmp_path / "p.h5", EmbedOptions(model="pools", per_residue=False), embedder=Pools())
    with EmbeddingsReader(tmp_path / "p.h5") as r:
        np.testing.assert_array_equal(r.dataset("rare", PER_PROTEIN)[()], [0, 1, 2])  # not the mean, [10.5, ...]


def test_values_beyond_float32_are_named_by_their_size(tmp_path):
    # A library embedder's float64 1e300 read "largest magnitude inf; --storage-dtype float32
    # keeps them" with float32 storage, after two numpy overflow warnings.
    class Huge:
        name, family, revision, embedding_dim, layers = "huge", "custom", None, 3, (-1,)
        device, compute_dtype, special_tokens, max_residues = "cpu", "float32", 0, None

        def embed_batch(self, sequences):
            return [np.full((1, len(s), 3), 1e300) for s in sequences]

    fasta = tmp_path / "h.fa"
    fasta.write_text(">a\nMKTAYIAK\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = embed(fasta, tmp_path / "h.h5", EmbedOptions(model="huge"), embedder=Huge())
    assert summary.failed == {"a": "values beyond float32's range (largest magnitude 1e+300)"}


def test_stdin_under_torchrun_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(UsageError, match="under torchrun the FASTA must be a regular file: <stdin>"):
        embed("-", tmp_path / "o.h5", EmbedOptions(model="onehot"))
    assert list(tmp_path.iterdir()) == []


def test_a_named_pipe_is_read_once_like_stdin(tmp_path):
    # <(zcat x.fa.gz) or a FIFO: the first pass read the pipe to its end and the run wrote an
    # empty, finished file (exit 0); a FIFO blocked the second open for ever
    import threading

    fifo = tmp_path / "in.fa"
    os.mkfifo(fifo)
    text = SMALL.read_bytes()
    writer = threading.Thread(target=lambda: fifo.write_bytes(text))
    writer.start()
    summary = embed(fifo, tmp_path / "pipe.h5", EmbedOptions(model="onehot", threads=1))
    writer.join(timeout=10)
    embed(SMALL, tmp_path / "file.h5", EmbedOptions(model="onehot", threads=1))
    piped, direct = read_all(tmp_path / "pipe.h5"), read_all(tmp_path / "file.h5")
    assert summary.num_embedded > 0 and piped.keys() == direct.keys()
    assert all(np.array_equal(piped[k], direct[k]) for k in direct)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.h5", "in.fa", "pipe.h5"]  # the copy removed


def test_resume_refuses_a_truncated_protein_whose_kept_residues_changed(tmp_path):
    # its stored checksum is the kept prefix's, and it was not compared at all: the old rows
    # stayed under the id
    first, changed = tmp_path / "a.fa", tmp_path / "b.fa"
    first.write_text(">long\nMKTAYIAKQRQISFVKSHFSRQ\n>short\nMKT\n")
    options = dict(model="onehot", max_length=10, long_policy="truncate", threads=1)
    embed(first, tmp_path / "out.h5", EmbedOptions(**options))
    changed.write_text(">long\nMKTAYIAKQRWWWWWWWWWWWW\n>short\nMKT\n>new\nAC\n")  # after the kept ten
    embed(changed, tmp_path / "out.h5", EmbedOptions(**options, resume=True))
    changed.write_text(">long\nWWWWWWWWWWQISFVKSHFSRQ\n>short\nMKT\n>new\nAC\n")  # within them
    with pytest.raises(InputError, match="record 'long': cannot resume: the output holds another sequence"):
        embed(changed, tmp_path / "out.h5", EmbedOptions(**options, resume=True))


def test_a_folder_named_like_the_model_is_no_model_directory(tmp_path, monkeypatch, run_cli):
    # `-o onehot/x.h5` was refused as "inside the model directory onehot"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "onehot").mkdir()
    assert run_cli("embed", SMALL, "-m", "onehot", "-o", "onehot/x.h5").exit_code == 0


def test_an_interrupted_resume_of_a_finished_file_is_not_replaced_by_a_plain_run(tmp_path, run_cli, monkeypatch):
    # --resume makes a finished file OUTPUT.partial until it ends; interrupted, the same command
    # without --resume replaced that file (all its proteins) with a warning
    out = tmp_path / "out.h5"
    assert run_cli("embed", SMALL, "-m", "onehot", "-o", out).exit_code == 0
    more = tmp_path / "more.fa"
    more.write_text(SMALL.read_text() + ">extra\nMKTAYIAK\n")
    from protrans_cli.io import h5

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(h5.EmbeddingsWriter, "write", interrupted)
    result = run_cli("embed", more, "-m", "onehot", "-o", out, "--resume")
    assert result.exit_code == 130 and partial_path(out).exists() and not out.exists()
    monkeypatch.undo()
    result = run_cli("embed", more, "-m", "onehot", "-o", out)
    assert result.exit_code == 2 and "out.h5.partial holds the work of an interrupted run: --resume" in result.stderr
    assert run_cli("embed", more, "-m", "onehot", "-o", out, "--resume").exit_code == 0
    assert len(read_all(out)) == len(list(read_fasta(more)))  # the finished file's proteins and the new one


@pytest.mark.parametrize("stop, code", [(ModelError("m: the model failed"), 1), (KeyboardInterrupt(), 130)])
def test_a_run_stopped_in_its_first_batch_leaves_no_partial_file(tmp_path, run_cli, monkeypatch, stop, code):
    # it left an empty OUT.partial, which the same command run again refused as "the work of an
    # interrupted run" (it held nothing), and an interrupt named it as "what was computed"
    import protrans_cli.embed as embed_module

    out = tmp_path / "out.h5"

    def fails(*args, **kwargs):
        raise stop
    monkeypatch.setattr(embed_module, "embed_with_retry", fails)
    result = run_cli("embed", SMALL, "-m", "onehot", "-o", out)
    assert result.exit_code == code and "what was computed" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    monkeypatch.undo()
    result = run_cli("embed", SMALL, "-m", "onehot", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert len(read_all(out)) == len(list(read_fasta(SMALL)))


def test_a_run_where_every_protein_failed_exits_1_and_one_of_skips_alone_exits_0(tmp_path, run_cli, monkeypatch):
    # it exited 0 with a file of no embedding: a pipeline (or a scheduler) took it for a result
    import protrans_cli.embed as embed_module

    longer = tmp_path / "long.fa"
    longer.write_text(">a\nMKTAYIAKQR\n>b\nMAAGKL\n")
    r = run_cli("embed", longer, "-m", "onehot", "-o", tmp_path / "s.h5", "--max-length", "5", "--long-policy", "skip")
    assert r.exit_code == 0, r.stderr  # (every protein skipped, as asked)
    monkeypatch.setattr(embed_module, "embed_with_retry",
                        lambda embedder, seqs, **kw: [f"out of memory on cpu ({len(s)} residues)" for s in seqs])
    out = tmp_path / "o.h5"
    r = run_cli("embed", SMALL, "-m", "onehot", "-o", out)
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {out}: no embedding was written: every protein failed (listed above and in the file's "
        "'failed' attribute); --resume computes them again once the cause is fixed")
    monkeypatch.undo()
    r = run_cli("embed", SMALL, "-m", "onehot", "-o", out, "--resume")
    assert r.exit_code == 0, r.stderr
    assert len(read_all(out)) == len(list(read_fasta(SMALL)))


def test_a_run_that_failed_every_protein_it_computed_is_refused_only_where_the_file_holds_nothing():
    """Exit 1 only where the file holds no embedding: not when a --resume kept earlier ones (the
    file is a result, its failures listed), nor when every protein left out was skipped as asked;
    one failure beside the skips (out of memory) is a failure."""
    from protrans_cli.cli import refuse_if_every_protein_failed
    from protrans_cli.errors import RuntimeFailure

    oom, skipped = "out of memory on cpu (900 residues)", "skipped: longer than --max-length 5"
    refuse_if_every_protein_failed({"a": oom}, 0, 3, "embedding", "o.h5")  # 3 kept from the run before
    refuse_if_every_protein_failed({"a": oom}, 1, 0, "embedding", "o.h5")
    refuse_if_every_protein_failed({"a": skipped, "b": skipped}, 0, 0, "embedding", "o.h5")
    with pytest.raises(RuntimeFailure, match="o.h5: no embedding was written: every protein failed"):
        refuse_if_every_protein_failed({"a": skipped, "b": oom}, 0, 0, "embedding", "o.h5")


@pytest.mark.parametrize("older_file", [False, True])
def test_every_run_that_wrote_a_file_is_listed_in_runs(tmp_path, older_file):
    import json

    import h5py

    first, out = tmp_path / "first.fa", tmp_path / "out.h5"
    first.write_text("".join(f">{r.id}\n{r.sequence}\n" for r in list(read_fasta(SMALL))[:3]))
    embed(first, out, EmbedOptions(model="onehot", command_line="protrans embed first.fa -o out.h5"))
    if older_file:  # written before the attribute existed
        with h5py.File(out, "a") as f:
            del f.attrs["runs"]
    summary = embed(SMALL, out, EmbedOptions(model="onehot", resume=True,
                                             command_line="protrans embed small.fa -o out.h5 --resume"))
    assert summary.num_resumed == 3
    with h5py.File(out) as f:
        runs = json.loads(f.attrs["runs"])
        assert f.attrs["command_line"] == "protrans embed small.fa -o out.h5 --resume"  # the last run's
    with EmbeddingsReader(out) as reader:
        assert reader.runs() == runs
    assert [r["command_line"] for r in runs] == ["protrans embed first.fa -o out.h5",
                                                 "protrans embed small.fa -o out.h5 --resume"]
    assert all(r["device"] == "cpu" and r["compute_dtype"] == "float32" for r in runs)


def test_a_nul_byte_in_a_header_is_one_line_before_any_output(run_cli, tmp_path):
    """HDF5 strings cannot hold NUL: a traceback after the dataset was made, and a damaged partial."""
    fasta, out = tmp_path / "nul.fa", tmp_path / "e.h5"
    fasta.write_bytes(b">a\nMKTA\n>b\x00c\nMKKL\n")
    result = run_cli("embed", fasta, "-m", "onehot", "--max-batch-size", "1", "-o", out)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        f"protrans: error: {fasta}:3, record 'b\\x00c': the header holds a NUL byte (a damaged file?) "
        "(--invalid-policy skip leaves such records out)"]
    assert list(tmp_path.iterdir()) == [fasta]


def test_an_output_that_cannot_be_created_names_the_output(tmp_path, monkeypatch):
    import h5py

    from protrans_cli.errors import RuntimeFailure

    real = h5py.File

    def refuse(name, mode="r", *args, **kwargs):
        if mode in ("w", "x"):  # (created exclusively: "x")
            raise OSError(f"Unable to synchronously create file (unable to open file: name = '{name}', errno = 13, "
                          "error message = 'Permission denied', flags = 13, o_flags = 242)")
        return real(name, mode, *args, **kwargs)

    monkeypatch.setattr(h5py, "File", refuse)
    with pytest.raises(RuntimeFailure) as caught:
        embed(SMALL, tmp_path / "e.h5", EmbedOptions(model="onehot"))
    assert caught.value.format() == f"{tmp_path / 'e.h5'}: cannot create the output: Permission denied"


def test_an_invalid_byte_is_reported_as_it_is_in_the_file(run_cli, tmp_path):
    fasta = tmp_path / "x.fa"
    fasta.write_bytes(b">a\nMK\xefAA\n")
    result = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "x.h5")
    assert result.exit_code == 1 and "invalid character '\\xef' at residue 3" in result.stderr, result.stderr


class _Scaled(OneHotEmbedder):
    """Onehot rows times `scale` for sequences holding a W, NaN with `nan`; OOM with `oom`."""

    def __init__(self, scale=1.0, nan=False, oom=False):
        super().__init__()
        self.scale, self.nan, self.oom = scale, nan, oom

    def embed_batch(self, seqs, pooled=False):
        import torch

        if self.oom and any("W" in s for s in seqs):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        out = super().embed_batch(seqs)
        for s, rows in zip(seqs, out):
            if "W" in s:
                rows *= float("nan") if self.nan else self.scale
        return out


def _every_protein_accounted_for(path, ids):
    with EmbeddingsReader(path) as r:
        written, failed = set(r.ids()), set(r.failed())
        assert all(np.isfinite(np.asarray(r.get(i))).all() for i in written)
    assert not written & failed and written | failed == set(ids), (set(ids) - written - failed)
    return written, failed


@pytest.mark.parametrize("kind", ["nan", "oom"])
@pytest.mark.parametrize("window", [1, 2, 100])
def test_a_failed_window_never_loses_a_later_protein(tmp_path, kind, window):
    """Pending windows were keyed by id(unit): once a unit whose window failed was freed, a later
    chunked protein could get its id and be dropped, neither written nor in `failed`."""
    rng = np.random.default_rng(0)
    fasta, ids = tmp_path / "w.fa", []
    with open(fasta, "w") as fh:
        for i in range(40):
            seq = "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVY"), 30))
            if i % 3 == 0:
                seq = seq[:15] + "W" + seq[16:]
            ids.append(f"q{i}")
            fh.write(f">q{i}\n{seq}\n")
    out = tmp_path / "w.h5"
    embed(fasta, out, EmbedOptions(model="onehot", long_policy="chunk", max_length=12, chunk_overlap=2,
                                   window=window, max_tokens=14), embedder=_Scaled(**{kind: True}))
    written, failed = _every_protein_accounted_for(out, ids)
    assert failed == {f"q{i}" for i in range(0, 40, 3)}


def test_whole_proteins_batched_with_windows_are_checked_against_float16(tmp_path):
    """A batch holding chunk windows comes as float32; its whole proteins were written without the
    float16 range check, as infinity."""
    fasta = tmp_path / "m.fa"
    fasta.write_text(">short\nMKWAA\n>long\n" + "ACDEF" * 8 + "W\n>plain\nMKTAA\n")
    out = tmp_path / "m.h5"
    embed(fasta, out, EmbedOptions(model="onehot", long_policy="chunk", max_length=20, chunk_overlap=4,
                                   storage_dtype="float16", max_tokens=1000), embedder=_Scaled(scale=1e6))
    written, failed = _every_protein_accounted_for(out, ["short", "long", "plain"])
    assert written == {"plain"} and failed == {"short", "long"}
    with EmbeddingsReader(out) as r:
        assert r.failed()["short"].startswith("values beyond float16's range")


def test_float16_vectors_of_a_batch_with_windows_are_the_float32_ones_rounded(tmp_path):
    """A batch that holds chunk windows brings float32 rows: the per-protein vectors (the chunked
    protein's, and a whole protein's in that batch) are means of those, rounded once to float16,
    as every other protein's; a mean of rows already rounded to float16 differed in the last bit."""
    save_bert_into(tmp_path / "bert", seed=0)
    fasta = tmp_path / "m.fa"
    fasta.write_text(">long\n" + "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ" + "\n>short\nACDEFGHIKLMNPQRS\n")
    got = {}
    for storage in ("float32", "float16"):
        out = tmp_path / f"{storage}.h5"
        embed(fasta, out, EmbedOptions(model=str(tmp_path / "bert"), device="cpu", dtype="float32",
                                       storage_dtype=storage, long_policy="chunk", max_length=20,
                                       chunk_overlap=6, max_tokens=1000))
        got[storage] = read_all(out), read_all(out, PER_PROTEIN)
    (rows32, means32), (rows16, means16) = got["float32"], got["float16"]
    for ident in ("long", "short"):
        np.testing.assert_array_equal(rows16[ident], rows32[ident].astype(np.float16))
        assert means16[ident].dtype == np.float16
        np.testing.assert_array_equal(means16[ident], means32[ident].astype(np.float16), err_msg=ident)
        np.testing.assert_allclose(means32[ident], rows32[ident].mean(0), atol=1e-6)


def test_embed_sequences_odd_inputs_and_torchrun_environment(tmp_path, monkeypatch):
    """embed_sequences: a lone string was taken as a list of its letters (one array per letter);
    an error named the temporary FASTA and its line; under torchrun each rank embedded its share
    into its own temporary folder and the merge failed (or waited for the group)."""
    from protrans_cli.embed import embed_sequences

    opts = EmbedOptions(model="onehot", threads=1)
    with pytest.raises(UsageError, match="put one sequence in a list"):
        embed_sequences("MKTAY", opts, kind="per_protein")
    for given, said in (({"a b": "MKT"}, "protein id 'a b': ids are non-empty strings without whitespace"),
                        ({"": "MKT"}, "protein id '': ids are non-empty strings"),
                        ([b"MKT"], "item 0: a sequence is a string of residues, got b'MKT'"),
                        ({"a": ">a\nMKT"}, "protein 'a': a sequence is a string of residues, got '>a\\nMKT'")):
        with pytest.raises(UsageError, match=re.escape(said)):
            embed_sequences(given, opts, kind="per_protein")
    with pytest.raises(UsageError, match="kind must be 'per_residue' or 'per_protein', not 'mean'"):
        embed_sequences(["MKT"], opts, kind="mean")
    with pytest.raises(InputError) as caught:
        embed_sequences({"good": "MKT", "bad": "M*KT"}, opts, kind="per_residue")
    assert str(caught.value) == "record 'bad': internal stop '*' at residue 2 (invalid_policy='skip' leaves such " \
        "records out)"  # (the option as this call takes it, not embed's --invalid-policy)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets them, with no group to join
    monkeypatch.setenv("RANK", "1")
    rows = embed_sequences({"a/b": "MKT", "c": "acdW"}, opts, kind="per_residue")
    np.testing.assert_array_equal(rows["c"], onehot_reference("acdW"))
    assert rows["a/b"].shape == (3, 21) and not list(tmp_path.iterdir())


def test_embed_sequences_says_why_a_protein_is_left_out(capsys):
    """The warning named the left-out proteins only (a list's by a bare position, "1"): a notebook
    has no embed log to find the reason in."""
    from dataclasses import replace

    from protrans_cli.embed import embed_sequences

    opts = replace(EmbedOptions(model="onehot", threads=1), max_length=5, long_policy="skip")
    assert embed_sequences(["MKT", "MKTAYIAK"], opts, kind="per_protein")[1] is None
    assert "left out: item 1 (skipped: 8 residues > --max-length 5)" in capsys.readouterr().err


def test_embed_sequences_errors_name_a_lists_protein_by_its_position():
    """An error of a list's protein said `record '1'`, an id the caller never gave; it says
    `item 1`, as the warnings do (a dict's proteins keep their ids)."""
    from protrans_cli.embed import embed_sequences
    from protrans_cli.errors import InputError, UsageError

    opts = EmbedOptions(model="onehot", threads=1)
    with pytest.raises(InputError) as caught:
        embed_sequences(["MKV", "MK1V"], opts, kind="per_protein")
    assert str(caught.value).startswith("item 1: invalid character '1' at residue 3"), str(caught.value)
    with pytest.raises(UsageError, match=r"^item 2: a sequence is a string of residues, got 3$"):
        embed_sequences(["MKV", "MKT", 3], opts, kind="per_protein")
    with pytest.raises(InputError, match=r"^record 'b': empty sequence"):
        embed_sequences({"a": "MKV", "b": ""}, opts, kind="per_protein")


def test_resume_of_a_finished_file_whose_only_absentees_were_skipped_leaves_it_as_it_is(tmp_path):
    # a protein the length policy skipped was counted as left to do: the finished file was made
    # partial, rewritten and given a second run record
    fasta = tmp_path / "a.fa"
    fasta.write_text(">long\nMKTAYIAKQRQISFVKSHFSRQ\n>short\nMKT\n")
    options = dict(model="onehot", max_length=10, long_policy="skip", threads=1)
    embed(fasta, tmp_path / "o.h5", EmbedOptions(**options))
    before = (tmp_path / "o.h5").read_bytes()
    summary = embed(fasta, tmp_path / "o.h5", EmbedOptions(**options, resume=True))
    assert (tmp_path / "o.h5").read_bytes() == before
    assert summary.num_resumed == 1 and list(summary.failed) == ["long"]  # (the skipped one is no embedding)


def test_torchrun_ranks_share_the_visible_gpus_as_train_does(monkeypatch, tmp_path):
    # rank 1 of two on a machine with one visible GPU asked for cuda:1 ("invalid device ordinal")
    import torch

    from protrans_cli import embed as embed_mod

    chosen = []

    class Stop(Exception):
        pass

    def build(options, device=None):
        chosen.append(device)
        raise Stop

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: chosen.append(index))
    monkeypatch.setattr(embed_mod, "build_embedder", build)
    # (the ranks' exchange after the build, without a process group here: every rank alike)
    monkeypatch.setattr(torch.distributed, "all_gather_object",
                        lambda out, mine, group=None: out.__setitem__(slice(None), [mine] * 2))
    with pytest.raises(Stop):
        embed_mod._embed_ranked(SMALL, "small.fa", None, tmp_path / "o.h5", EmbedOptions(model="prot_bert"), None,
                                embed_mod._Dist(1, 2, 1, False), None)
    assert chosen == [0, "cuda:0"]


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_a_callers_nccl_group_exchanges_on_this_ranks_gpu_from_the_first_exchange(monkeypatch, tmp_path, device):
    # NCCL's object collectives run on torch.cuda.current_device(): the GPU was made current only
    # after the ranks had compared their settings (never with --device cpu), so in a script that
    # bound its group with init_process_group(device_id=...) alone rank 1 exchanged on cuda:0
    import types

    import torch
    import torch.distributed as tdist

    from protrans_cli import embed as embed_mod

    current, seen = [0], []

    class Stop(Exception):
        pass

    def build(options, device=None):
        raise Stop

    def gather(out, mine, group=None):
        seen.append(current[0])
        out[:] = [mine] * 2

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: current.__setitem__(0, getattr(index, "index", index)))
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(tdist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(tdist, "group", types.SimpleNamespace(WORLD=None))
    monkeypatch.setattr(tdist, "all_gather_object", gather)
    monkeypatch.setattr(embed_mod, "build_embedder", build)
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    with pytest.raises(Stop):
        embed_mod.embed(fasta, tmp_path / "o.h5", EmbedOptions(model="prot_bert", device=device))
    assert seen == [1, 1]
    # bound by the caller to another GPU: that one
    monkeypatch.setattr(tdist, "group", types.SimpleNamespace(WORLD=types.SimpleNamespace(
        bound_device_id=torch.device("cuda", 0))))
    from protrans_cli import embed_dist

    current[0] = 1
    embed_dist._select_callers_gpu(1)
    assert current[0] == 0


def test_a_skipped_protein_shortened_since_is_embedded_on_resume(tmp_path):
    # a finished file's skipped proteins counted as done whatever the FASTA now says: one
    # shortened below the limit was never embedded
    fasta = tmp_path / "a.fa"
    fasta.write_text(">P1\n" + "MKTAYIAKQR" * 5 + "\n>P2\nMKT\n")
    options = dict(model="onehot", max_length=30, long_policy="skip", threads=1)
    embed(fasta, tmp_path / "o.h5", EmbedOptions(**options))
    fasta.write_text(">P1\nMKTAYIAKQR\n>P2\nMKT\n")
    summary = embed(fasta, tmp_path / "o.h5", EmbedOptions(**options, resume=True))
    assert summary.num_embedded == 1 and sorted(read_all(tmp_path / "o.h5")) == ["P1", "P2"]
    with EmbeddingsReader(tmp_path / "o.h5") as reader:
        assert reader.failed() == {}


def test_the_duplicate_count_does_not_depend_on_the_window(tmp_path):
    """A sequence repeated within a window and again in a later one: the in-window repeats were
    counted twice ("3 identical sequences computed once" for 4 proteins of 2 sequences)."""
    fasta = tmp_path / "d.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMSTNPKPQRK\n>c\nMKTAYIAKQR\n>d\nMKTAYIAKQR\n")
    counts = {window: embed(fasta, tmp_path / f"w{window}.h5", EmbedOptions(model="onehot", window=window,
                                                                            per_residue=False)).num_duplicates
              for window in (1, 2, 3, 100)}
    assert set(counts.values()) == {2}, counts


def test_special_files_are_never_renamed_over(run_cli, tmp_path, monkeypatch):
    """`embed -o /dev/null --force` (and `predict --probabilities`) renamed the HDF5 file over
    the device: as root, /dev/null became a regular file. A device, a link to one, a FIFO or a
    path in /dev is refused before any work; `-` for a folder output made a folder named `-`."""
    monkeypatch.chdir(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    null_link = tmp_path / "null"
    null_link.symlink_to(os.devnull)
    for target in (fifo, null_link, os.devnull):
        r = run_cli("embed", SMALL, "-m", "onehot", "-o", target, "--force")
        assert r.exit_code == 2 and "is a device, pipe or socket: an HDF5 file is written under a temporary name" \
            in r.stderr, r.stderr
    assert null_link.is_symlink() and fifo.is_fifo()
    assert not os.path.isfile(os.devnull)
    r = run_cli("embed", SMALL, "-m", "onehot", "-o", "/dev/shm/../protrans-test-x.h5")
    assert r.exit_code == 2 and "is in /dev or /proc" in r.stderr
    for args in (["fit", "ss3", "--embeddings", "e.h5", "--labels", "l.csv", "-o", "-"],
                 ["train", "--preset", "tiny", "--corpus", SMALL, "-o", "-"],
                 ["quickstart", "-o", "-"]):
        r = run_cli(*args)
        assert r.exit_code == 2 and "cannot go to stdout; give a path" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "null"]


def test_a_replaced_output_keeps_its_permissions(run_cli, tmp_path):
    """The shell's `>` keeps a file's mode; the rename of a new version gave 644 to a 640 file."""
    out = tmp_path / "c.txt"
    out.write_text("old\n")
    out.chmod(0o640)
    fasta = tmp_path / "x.fa"
    fasta.write_text(">a\nMKT\n")
    assert run_cli("prep", fasta, "-o", out).exit_code == 0
    assert out.read_text().startswith("M K T\n") and (out.stat().st_mode & 0o777) == 0o640
    fresh = tmp_path / "d.txt"
    assert run_cli("prep", fasta, "-o", fresh).exit_code == 0
    assert (fresh.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _dies_in_children(parent: int, signame: str = "SIGSEGV"):
    """A stand-in for HDF5 crashing (a segmentation fault): the forked reader dies by a signal."""
    import faulthandler
    import signal

    if os.getpid() != parent:
        faulthandler.disable()  # (pytest's: its traceback of the child is noise here)
        os.kill(os.getpid(), getattr(signal, signame))


@pytest.mark.parametrize("failure", ["crashed", "hung"])
def test_resume_survives_hdf5_failing_on_a_record(tmp_path, monkeypatch, failure):
    """On some files a SIGKILL cut off mid-flush HDF5 crashed the process (segmentation fault)
    while --resume read them: opening a record, or copying it into the mended file. After failed
    writes it looped for good in C instead, reading a record's string attribute from a damaged
    global heap (--resume hung with no word, and a kill left its files behind). The reader is a
    forked child now, ended by an alarm when a call takes too long: the record it died or hung on
    is left out, the rest copied into a fresh file, and the resumed run equals an uninterrupted one."""
    import contextlib
    import io
    import time

    import h5py

    from protrans_cli.io import h5 as h5_module

    fasta = generated_fasta(tmp_path / "g.fa", 40, repeat_every=0)
    full = file_content(_run(tmp_path / "full.h5", fasta=fasta, max_batch_size=4))
    out = _run(tmp_path / "out.h5", fasta=fasta, max_batch_size=4)
    victim = sorted(h5py.File(out)["per_residue"].keys())[5].encode()
    real_open, parent = h5py.h5o.open, os.getpid()

    def failing_open(loc, name, *args, **kwargs):
        if name == victim:
            if failure == "crashed":
                _dies_in_children(parent)
            elif os.getpid() != parent:
                time.sleep(600)
        return real_open(loc, name, *args, **kwargs)

    monkeypatch.setattr(h5py.h5o, "open", failing_open)
    if failure == "hung":
        monkeypatch.setattr(h5_module.CrashGuard, "HANG_DEFAULT", 2)
    messages = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stderr(messages):
        summary = embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=4, resume=True))
    monkeypatch.undo()
    assert time.monotonic() - started < 60
    assert (f"protrans: warning: {out}: HDF5 {failure} reading record {victim.decode()!r}; it is left out (a SIGKILL "
            "cut the file off in the middle of a write, or a write failed)") in messages.getvalue(), messages.getvalue()
    assert summary.num_embedded == 1 and summary.num_resumed == 39  # the one left out, embedded again
    assert_same_content(file_content(out), dict(full))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full.h5", "g.fa", "out.h5"]


def test_resume_does_not_take_slow_sorting_after_the_reads_for_a_hang(tmp_path, monkeypatch):
    """The alarm a note arms stayed armed after the last HDF5 call: sorting the ids of tens of
    millions of proteins past HANG_DEFAULT was blamed on the last record read, which was left
    out, then the one before it in the next child, and so on: every record "hung"."""
    import contextlib
    import io
    import time

    from protrans_cli import embed_resume
    from protrans_cli.io import h5 as h5_module

    fasta = generated_fasta(tmp_path / "g.fa", 6, repeat_every=0)
    out = _run(tmp_path / "out.h5", fasta=fasta, max_batch_size=4)
    parent, real = os.getpid(), embed_resume._Done.union.__func__

    def slow_union(cls, parts):  # (as sorting tens of millions of digests)
        if os.getpid() != parent:
            time.sleep(2.5)
        return real(cls, parts)

    monkeypatch.setattr(embed_resume._Done, "union", classmethod(slow_union))
    monkeypatch.setattr(h5_module.CrashGuard, "HANG_DEFAULT", 1)
    messages = io.StringIO()
    with contextlib.redirect_stderr(messages):
        summary = embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=4, resume=True))
    assert "hung" not in messages.getvalue(), messages.getvalue()
    assert summary.num_embedded == 0 and summary.num_resumed == 6


def test_resume_reads_a_group_that_crashes_hdf5_when_iterated_by_name(tmp_path, monkeypatch):
    from protrans_cli.io import h5 as h5_module

    fasta = generated_fasta(tmp_path / "g.fa", 30, repeat_every=0)
    full = file_content(_run(tmp_path / "full.h5", fasta=fasta, max_batch_size=4))
    out = _run(tmp_path / "out.h5", fasta=fasta, max_batch_size=4)
    real, parent, marker = h5_module._link_names, os.getpid(), tmp_path / "crashed-once"

    def crashing_names(group):
        if not marker.exists() and os.getpid() != parent:
            marker.touch()
            h5_module._CRASH_GUARD.note("iterate", group.name.lstrip("/"))  # (as the real one does, first)
            _dies_in_children(parent)
        return real(group)

    monkeypatch.setattr(h5_module, "_link_names", crashing_names)
    summary = embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=4, resume=True))
    assert summary.num_embedded == 0 and summary.num_resumed == 30 and marker.exists()
    assert_same_content(file_content(out), dict(full))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_the_resume_reader_dies_with_a_killed_parent(tmp_path):
    """A SIGKILL of embed while its forked child read the partial file back: the child read on
    alone, holding the output's lock (the next --resume was refused as "running now") and leaving
    its result in the output folder."""
    import signal
    import subprocess
    import time

    script = tmp_path / "reader.py"
    script.write_text(f"""
import os, sys, time
from pathlib import Path
from protrans_cli import embed_resume

def slow(*args, **kwargs):
    Path({str(tmp_path / "child")!r}).write_text(str(os.getpid()))
    time.sleep(60)

embed_resume._done_in_process = slow
embed_resume._done_in_child(Path({str(tmp_path / "x.h5")!r}), {{}}, None, set(), set(), False)
""")
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        for _ in range(600):
            if (tmp_path / "child").exists() and (tmp_path / "child").read_text():
                break
            time.sleep(0.05)
        child = int((tmp_path / "child").read_text())
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for _ in range(100):
            try:  # (gone, or a zombie that no init reaps in a container)
                with open(f"/proc/{child}/stat") as fh:
                    state = fh.read().rsplit(")", 1)[1].split()[0]
                if state == "Z":
                    break
            except (FileNotFoundError, ProcessLookupError):
                break
            time.sleep(0.05)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the reader outlived its killed parent")
    finally:
        proc.kill()


@pytest.mark.parametrize("where,signame,message", [
    # crashing HDF5 before any record is read: nothing to leave out
    ("_check_resumable", "SIGSEGV", "cannot resume: HDF5 crashed reading this damaged file, and it could not be "
                                    "mended; delete it to start again"),
    # ended by the alarm (HDF5 hung): it said "crashed" too
    ("_check_resumable", "SIGALRM", "cannot resume: HDF5 hung reading this damaged file, and it could not be "
                                    "mended; delete it to start again"),
    # the out-of-memory killer's SIGKILL (or a SIGTERM) of the reader was taken for an HDF5 crash,
    # and the good file rewritten without a record: only crash signals count
    ("stored_proteins", "SIGKILL", "reading it for --resume was stopped by SIGKILL (the out-of-memory killer "
                                   "sends SIGKILL)"),
])
def test_a_resume_reader_that_dies_leaves_one_line_and_the_file(tmp_path, monkeypatch, run_cli, where, signame,
                                                                message):
    from protrans_cli.io import h5 as h5_module

    fasta = generated_fasta(tmp_path / "g.fa", 10, repeat_every=0)
    out = _run(tmp_path / "out.h5", fasta=fasta)
    before = out.read_bytes()
    parent, real = os.getpid(), getattr(h5_module, where)

    def dying(*args, **kwargs):
        _dies_in_children(parent, signame)
        return real(*args, **kwargs)

    monkeypatch.setattr(h5_module, where, dying)
    r = run_cli("embed", fasta, "-m", "onehot", "-o", out, "--resume")
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == f"protrans: error: {out}: {message}"
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.fa", "out.h5"]


def test_a_resume_reader_that_hung_and_cannot_mend_the_file_says_it_hung(tmp_path, monkeypatch, run_cli):
    """The reader that mends the file after an earlier one hung on a record, and finds no damage it
    can mend, said "HDF5 crashed reading this damaged file": it hung."""
    import h5py

    from protrans_cli.io import h5 as h5_module

    fasta = generated_fasta(tmp_path / "g.fa", 10, repeat_every=0)
    out = _run(tmp_path / "out.h5", fasta=fasta)
    before = out.read_bytes()
    victim = sorted(h5py.File(out)["per_residue"].keys())[3].encode()
    real_open, parent = h5py.h5o.open, os.getpid()

    def hanging_open(loc, name, *args, **kwargs):
        if name == victim:
            _dies_in_children(parent, "SIGALRM")  # (as the alarm ends a child that hung)
        return real_open(loc, name, *args, **kwargs)

    monkeypatch.setattr(h5py.h5o, "open", hanging_open)
    monkeypatch.setattr(h5_module, "repair_after_kill", lambda *args, **kwargs: None)
    r = run_cli("embed", fasta, "-m", "onehot", "-o", out, "--resume")
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        f"protrans: warning: {out}: HDF5 hung reading record {victim.decode()!r}; it is left out (a SIGKILL cut the "
        "file off in the middle of a write, or a write failed)",
        f"protrans: error: {out}: cannot resume: HDF5 hung reading this damaged file, and it could not be mended; "
        "delete it to start again"], r.stderr
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.fa", "out.h5"]


def test_a_mended_copy_keeps_creation_order_tracking_and_the_mode(tmp_path):
    """The mended copy's groups were old-style (no creation order): each later flush rewrote
    every name again (writes growing with the square of the proteins); and 640 became 644."""
    import h5py

    from protrans_cli.io.h5 import repair_after_kill

    out = _run(tmp_path / "out.h5", fasta=generated_fasta(tmp_path / "g.fa", 12, repeat_every=0))
    out.chmod(0o640)
    note = repair_after_kill(out, ["per_residue"], "grouped", force=True)
    assert note == "repaired the damaged file: the readable proteins copied into a fresh file"
    with h5py.File(out) as f:
        assert h5py.h5g.open(f.id, b"/").get_create_plist().get_link_creation_order()
        assert len(f["per_residue"]) == 12
        assert f["per_residue"].id.get_create_plist().get_link_creation_order()
    assert (out.stat().st_mode & 0o777) == 0o640


def test_damage_met_while_adding_to_a_resumed_file_is_one_line(tmp_path, monkeypatch, run_cli):
    """A kill could leave a group's index half updated in a way reading passes over; the next
    insertion then failed inside h5py ("incorrect metadata checksum") with a traceback."""
    from protrans_cli.io import h5 as h5_module

    fasta = generated_fasta(tmp_path / "g.fa", 12, repeat_every=0)
    out = tmp_path / "out.h5"
    _run(out, fasta=generated_fasta(tmp_path / "first.fa", 6, repeat_every=0))

    def damaged(group, key, data):
        raise ValueError("Unable to synchronously create dataset (incorrect metadata checksum after all read "
                         "attempts)")

    monkeypatch.setattr(h5_module, "_create_dataset", damaged)
    r = run_cli("embed", fasta, "-m", "onehot", "-o", out, "--resume")
    assert r.exit_code == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"protrans: error: {out}.partial: cannot add protein ") and last.endswith(
        " to this resumed file: Unable to synchronously create dataset (incorrect metadata checksum after all read "
        "attempts); the file is damaged: delete it to start again")


def test_a_large_inputs_first_pass_is_announced(tmp_path, monkeypatch, capsys):
    # A silent minute per GB of FASTA before the model loads (some ten minutes for 50 million
    # proteins): from 256 MiB on, a line says what is happening
    from protrans_cli import embed as embed_module

    embed(SMALL, tmp_path / "a.h5", EmbedOptions(model="onehot"))
    assert "checking every record and id" not in capsys.readouterr().err
    monkeypatch.setattr(embed_module, "_SAY_FIRST_PASS_BYTES", 1)
    embed(SMALL, tmp_path / "b.h5", EmbedOptions(model="onehot"))
    assert f"reading {SMALL}: checking every record and id before embedding" in capsys.readouterr().err


def test_writer_thread_stops_even_when_an_interrupt_lost_its_wakeup():
    """Ctrl-C inside Queue.put can interrupt Condition.notify after it took the waiting writer
    thread off the list but before waking it (CPython gh-92530). The writer must still see the
    end of the work and stop, or the interrupted run hangs instead of saving its .partial file."""
    import threading
    import time

    from protrans_cli.embed import _Background

    done = []
    background = _Background(lambda x: done.append(x))
    background.__enter__()
    background.submit(1)
    waiters = background.queue.not_empty._waiters
    deadline = time.monotonic() + 5
    while not waiters and time.monotonic() < deadline:  # the writer is asleep in get()
        time.sleep(0.01)
    assert waiters
    waiters.popleft()  # what an interrupted notify leaves behind: a waiter nobody will wake
    closer = threading.Thread(target=background.__exit__, args=(KeyboardInterrupt, None, None),
                              daemon=True)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive(), "the writer thread never woke up"
    assert done == [1]


@pytest.mark.slow
def test_a_merge_stopped_by_sigterm_names_the_merged_file(tmp_path):
    """Rank 0 stopped while merging the shards named its own shard as where the work was, not
    OUTPUT.partial, the file it was merging into (which --resume finishes)."""
    import subprocess
    import sys

    out = tmp_path / "m.h5"
    codes, errs, env = _two_ranks_patched(
        tmp_path, out, "real = E.EmbeddingsWriter.copy_from\n"
                       "def copy_from(self, shard, **kw):\n    real(self, shard, **kw)\n    os.kill(os.getpid(), signal.SIGTERM)\n"
                       "E.EmbeddingsWriter.copy_from = copy_from\n", port_base=28500)
    assert codes[0] == 143, errs[0]
    assert (f"what was computed is in {partial_path(out)}; run the same command with --resume to finish"
            in errs[0]), errs[0]
    r = subprocess.run([sys.executable, "-m", "protrans_cli", "embed", str(SMALL), "-m", "onehot", "-o", str(out),
                        "--resume"], env={k: v for k, v in env.items() if k != "WORLD_SIZE"}, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert read_all(out).keys() == read_all(_run(tmp_path / "single.h5")).keys()


def test_writer_thread_writes_a_batch_submitted_while_its_wait_timed_out():
    """The writer's timed wait ran out, and before it looked at `finished` the main thread put the
    last batch and finished: the thread left with that batch in the queue, never written."""
    import threading
    import time

    from protrans_cli.embed import _Background

    class LateLook(threading.Event):  # the writer pauses between its timed-out wait and this look
        def is_set(self):
            time.sleep(0.1)
            return super().is_set()

    written = []
    background = _Background(lambda x: written.append(x))
    background.finished = LateLook()
    with background:
        time.sleep(0.25)
        background.submit("last batch")
    assert written == ["last batch"]


@pytest.mark.slow
@pytest.mark.shared
def test_ctrl_c_in_the_first_second_exits_130_not_by_the_signal(shared_data, tmp_path):
    """About one Ctrl-C in five landing while embed was starting up printed "interrupted" and
    then Python killed itself by SIGINT (status -2): callers reading the status saw a death by
    signal, not exit 130."""
    import os
    import random
    import select
    import signal
    import subprocess
    import sys
    import time

    fasta = shared_data / "proteomes" / "UP000000625_83333.fasta"
    rng = random.Random(11)
    # The console script's function (pyproject's protrans_cli._entry:main), called once the interpreter
    # runs protrans code: a Ctrl-C while Python itself starts (its default SIGINT disposition, or site's
    # imports) kills it by the signal before any protrans code could answer, which a loaded machine showed.
    start = ("import sys; import protrans_cli._entry as entry; print('ready', file=sys.stderr, flush=True); "
             "entry.main()")
    codes = []
    for i in range(12):
        out = tmp_path / f"u{i}.h5"
        proc = subprocess.Popen([sys.executable, "-c", start, "embed", str(fasta), "-m", "onehot",
                                 "--max-batch-size", "1", "-j", "1", "-o", str(out)],
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            ready, _, _ = select.select([proc.stderr], [], [], 60)
            assert ready and proc.stderr.readline() == "ready\n", f"run {i}: no ready line"
            time.sleep(rng.uniform(0.7, 1.3))
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=60)
        finally:
            proc.kill()
            proc.wait()
        codes.append(proc.returncode)
        assert proc.returncode in (0, 130), (i, codes, stderr[-2000:])
    assert set(codes) <= {0, 130}, codes  # (0: the run ended before the interrupt)


def test_resume_says_when_the_output_holds_proteins_the_fasta_no_longer_has(tmp_path, run_cli):
    """--resume only adds: records removed from the FASTA since stay in the output, which is then
    not what a fresh run on the edited FASTA makes. That was silent."""
    records = SMALL.read_text().split(">")[1:]
    edited = tmp_path / "edited.fa"
    edited.write_text("".join(">" + r for r in records[2:]) + ">new1\nMKTAYIAK\n")
    out = tmp_path / "o.h5"
    assert run_cli("embed", SMALL, "-m", "onehot", "-o", out).exit_code == 0
    r = run_cli("embed", edited, "-m", "onehot", "-o", out, "--resume")
    assert r.exit_code == 0, r.stderr
    assert f"{out}: 2 protein(s) in the output are not in {edited} (removed from it since?): kept" in r.stderr
    with EmbeddingsReader(out) as reader:
        assert len(reader.ids()) == len(records) + 1
    every = tmp_path / "every.fa"
    every.write_text(SMALL.read_text() + ">new1\nMKTAYIAK\n")
    r = run_cli("embed", every, "-m", "onehot", "-o", out, "--resume")  # nothing gone: nothing said
    assert r.exit_code == 0 and "not in" not in r.stderr, r.stderr


def test_a_rank_whose_peers_never_join_stops_after_the_join_timeout(monkeypatch):
    # A node that stopped before joining (an error on it alone) was waited for 24 hours, the
    # barriers' timeout; joining now has its own (30 minutes; 2 s here), then one line.
    import datetime
    import socket

    import torch.distributed as torch_dist

    from protrans_cli import embed_dist
    from protrans_cli.errors import RuntimeFailure

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setattr(embed_dist, "JOIN_TIMEOUT", datetime.timedelta(seconds=2))
    with pytest.raises(RuntimeFailure, match=r"rank 0: the other ranks did not join within 2 s "
                                             r"\(one stopped before starting"):
        embed_dist._setup_distributed()
    assert not torch_dist.is_initialized()


def test_embeds_group_after_another_in_the_same_processes_joins_under_keys_of_its_own(monkeypatch):
    # A script under torchrun that trains, then embeds (or embeds, then trains): the second group
    # read the first one's addresses from torchrun's store under torch's keys, and the ranks hung
    import datetime

    import torch.distributed as torch_dist
    from torch.distributed import TCPStore

    from protrans_cli import embed_dist
    from protrans_cli.training import dist as groups

    server = TCPStore("127.0.0.1", 0, 1, is_master=True, wait_for_workers=False,
                      timeout=datetime.timedelta(seconds=10))
    for key, value in {"RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_USE_AGENT_STORE": "True",
                       "TORCHELASTIC_RESTART_COUNT": "0", "GROUP_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(server.port)}.items():
        monkeypatch.setenv(key, value)
    joined = []
    monkeypatch.setattr(torch_dist, "init_process_group", lambda backend, **kw: joined.append(kw))
    monkeypatch.setattr(torch_dist, "new_group", lambda **kw: None)
    monkeypatch.setattr(groups, "_groups_started", 1)  # train's group came first
    embed_dist._setup_distributed()
    joined[0]["store"].set("default_pg/0//cpu/rank_1", "embed's address")
    assert server.get("protrans/restart_0/group_1/default_pg/0//cpu/rank_1") == b"embed's address"
    assert groups._groups_started == 2  # (and a train after it joins under keys of its own too)


@pytest.mark.parametrize("command, signame", [("embed", "SIGINT"), ("train", "SIGTERM"), ("train", "SIGHUP")])
def test_a_signal_while_a_rank_waits_for_the_others_to_join_ends_it_at_once(tmp_path, command, signame):
    """Joining the process group waits inside a C call that runs no Python handler: a Ctrl-C (or
    a scheduler's SIGTERM) there was ignored until the 30-minute join timeout, and under torchrun
    the rank was killed after the launcher's grace without a word."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    if not hasattr(signal, signame):
        pytest.skip(f"no {signame} on this platform")
    signum = getattr(signal, signame)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("M K V L A A G\n\nM K T A Y I A K Q R\n")
    args = (["embed", str(SMALL), "-m", "onehot", "-o", str(tmp_path / "o.h5")] if command == "embed" else
            ["train", "--family", "bert", "--preset", "tiny", "--corpus", str(corpus), "-o", str(tmp_path / "run"),
             "--num-steps", "2"])
    marker = tmp_path / "joining"
    script = ("import sys, torch.distributed as d\n"
              "join = d.init_process_group\n"
              "def marked(*a, **k):\n"
              f"    open({str(marker)!r}, 'w').close()\n"
              "    return join(*a, **k)\n"
              "d.init_process_group = marked\n"
              "from protrans_cli.cli import main\n"
              f"sys.argv = ['protrans', *{args!r}]\n"
              "main()\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    # rank 1 of two, whose rank 0 (the store's host) never starts
    env.update(RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), proc.stderr.read() if proc.poll() is not None else "never joined"
        time.sleep(0.5)
        proc.send_signal(signum)
        code = proc.wait(timeout=15)  # (it waited 30 minutes)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    proc.stderr.close()
    word, expected = {"SIGINT": ("interrupted", 130), "SIGTERM": ("terminated", 143), "SIGHUP": ("hung up", 129)}[signame]
    assert code == expected, err
    lines = err.strip().splitlines()
    # (a signal that cuts the TCP connect to the store short makes torch's own C++ code log its
    # retry first, "[W... TCPStore.cpp:...] [c10d] TCP client failed to connect ... Interrupted
    # system call" with a C++ stack, before Python runs any handler: about 1 run in 12 here)
    if lines and lines[0].startswith("[W") and "[c10d]" in lines[0]:
        lines = lines[[i for i, line in enumerate(lines) if line.startswith("protrans:")][0]:]
    assert lines == [f"protrans: error: {word}: rank 1 was waiting for the other processes to "
                     f"join; nothing was {'computed' if command == 'embed' else 'trained'} or "
                     "written"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["corpus.txt", "joining"])


def test_the_file_is_flushed_once_a_second_at_most_and_a_clean_stop_keeps_every_batch(tmp_path, monkeypatch):
    """A flush after each of many small batches was a third of the writer's time: embed flushes
    after a batch when the last flush is FLUSH_SECONDS old (the first batch's at once), and a
    stop between flushes (an error here, as Ctrl-C) still leaves every written batch in the
    partial file, which --resume completes to the uninterrupted content."""
    import protrans_cli.io.h5 as h5

    fasta = generated_fasta(tmp_path / "g.fa", 60, repeat_every=0)
    clock = [100.0]
    monkeypatch.setattr(h5.time, "monotonic", lambda: clock[0])
    calls, flushed = [], []
    real_due, real_flush, real_embed = (EmbeddingsWriter.flush_due, EmbeddingsWriter.flush,
                                        OneHotEmbedder.embed_batch)

    def timed_due(self, *args):
        calls.append(len(calls) + 1)
        clock[0] += 0.3  # each batch's writing takes 0.3 s
        return real_due(self, *args)

    def counted_flush(self, **kw):
        if calls:
            flushed.append(calls[-1])
        return real_flush(self, **kw)

    def failing_embed(self, seqs, **kw):
        if failing_embed.n == 11:
            raise RuntimeError("stopped")
        failing_embed.n += 1
        return real_embed(self, seqs, **kw)

    failing_embed.n = 0
    monkeypatch.setattr(EmbeddingsWriter, "flush_due", timed_due)
    monkeypatch.setattr(EmbeddingsWriter, "flush", counted_flush)
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", failing_embed)
    out = tmp_path / "g.h5"
    with pytest.raises(RuntimeError, match="stopped"):
        embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=3, threads=1))
    # batch k written at 100 + 0.3 k s: flushed after batches 1, 5 and 9, none after the others
    assert len(calls) == 11 and flushed[:3] == [1, 5, 9], (calls, flushed)
    kept = read_all(partial_path(out))
    assert len(kept) == 3 * len(calls)  # those after the last flush too: the stop closed the file whole
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", real_embed)
    summary = embed(fasta, out, EmbedOptions(model="onehot", max_batch_size=3, threads=1, resume=True))
    assert summary.num_resumed == len(kept)
    assert_same_content(file_content(out), file_content(_run(tmp_path / "full.h5", fasta=fasta, max_batch_size=3)))


def test_a_chunked_proteins_windows_are_batched_together(tmp_path):
    """Its last, shorter window went among the short proteins at the end of the window of input,
    and the protein, written only once every window was in, was held in memory until then (and
    lost to a stop): 291 MB at the peak for E. coli at --max-length 100, 154 MB now."""
    from protrans_cli.embed import make_batches

    units = [_Unit("M" * 25, [], windows=[(0, 10), (6, 16), (12, 22), (18, 25)]), _Unit("K" * 8, []),
             _Unit("A" * 9, []), _Unit("C" * 3, [])]
    for i, unit in enumerate(units):
        unit.proteins = [type("P", (), {"id": f"p{i}"})()]
    pieces = [_Piece(units[0], i, "M" * (e - s)) for i, (s, e) in enumerate(units[0].windows)]
    pieces += [_Piece(u, 0, u.sequence) for u in units[1:]]
    order = [(p.unit.sequence[:1], p.index) for batch in make_batches(pieces, 1000, 1) for p in batch]
    assert order == [("M", 0), ("M", 1), ("M", 2), ("M", 3), ("A", 0), ("K", 0), ("C", 0)]


def test_force_replaces_an_earlier_output_not_a_file_of_another_kind(tmp_path, run_cli):
    """`-o proteome.fa --force` (or an -o that is a link to a FASTA, which embed writes through)
    replaced the FASTA with embeddings; --force is for an earlier output, an HDF5 file."""
    fasta = tmp_path / "other.fa"
    fasta.write_bytes(SMALL.read_bytes())
    (tmp_path / "link.h5").symlink_to(fasta)
    for out in (fasta, tmp_path / "link.h5"):
        r = run_cli("embed", SMALL, "-m", "onehot", "-o", out, "--force")
        assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"{fasta}: is not an HDF5 file, it begins '>" in r.stderr and "--force replaces an earlier embed " \
            "output only" in r.stderr, r.stderr
    r = run_cli("embed", SMALL, "-m", "onehot", "-o", fasta, "--resume")  # (it said "delete it to start again")
    assert r.exit_code == 2 and "is not an HDF5 file, it begins '>" in r.stderr and "not an output of embed to " \
        "resume (choose another -o)" in r.stderr, r.stderr
    assert fasta.read_bytes() == SMALL.read_bytes() and "b'" not in r.stderr  # (the start as text, not bytes' repr)
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")  # (an empty file holds nothing to lose)
    assert run_cli("embed", SMALL, "-m", "onehot", "-o", empty, "--force").exit_code == 0
    assert run_cli("embed", SMALL, "-m", "onehot", "-o", empty, "--force").exit_code == 0  # an output: replaced


def test_resume_never_writes_through_a_planted_partial_or_someone_elses_output_link(tmp_path):
    """A symbolic link planted as OUTPUT.partial (protrans never makes one), or as OUTPUT by
    someone else, in a shared folder: --resume read the file it led to and wrote the new
    proteins into it (another user chose which file of ours was rewritten). Refused now, and
    the file is untouched; the user's own link as -o is still followed."""
    fasta = tmp_path / "two.fa"
    fasta.write_text(">p1\nMKTAYIAK\n>p2\nMKLLV\n")
    first = tmp_path / "one.fa"
    first.write_text(">p1\nMKTAYIAK\n")
    victim = tmp_path / "victim.h5"
    embed(first, victim, EmbedOptions(model="onehot", threads=1))
    before = victim.read_bytes()
    out = tmp_path / "out.h5"
    partial_path(out).symlink_to(victim)
    with pytest.raises(InputError, match="symbolic link"):
        embed(fasta, out, EmbedOptions(model="onehot", threads=1, resume=True))
    assert victim.read_bytes() == before
    partial_path(out).unlink()
    if os.geteuid() == 0:  # (a link owned by another user needs root to make)
        theirs = tmp_path / "theirs.h5"
        theirs.symlink_to(victim)
        os.lchown(theirs, 65534, 65534)
        with pytest.raises(InputError, match="someone else owns"):
            embed(fasta, theirs, EmbedOptions(model="onehot", threads=1, resume=True))
        assert victim.read_bytes() == before
    mine = tmp_path / "mine.h5"
    mine.symlink_to(victim)
    embed(fasta, mine, EmbedOptions(model="onehot", threads=1, resume=True))
    with EmbeddingsReader(victim) as reader:
        assert sorted(reader.ids()) == ["p1", "p2"]


@pytest.mark.parametrize("name, message", [("SIGTERM", "terminated"), ("SIGINT", "interrupted")])
def test_a_signal_once_the_output_has_its_final_name_exits_0(run_cli, tmp_path, monkeypatch, name, message):
    """A SIGTERM or Ctrl-C in the moments after OUTPUT.partial was renamed to OUTPUT (the file
    closed, the lock released, the summary on its way) said "protrans: error: terminated" and
    exit 143 (or the "embedded ..." line and then "interrupted", 130) for a file already whole
    (found by a kill sweep). The rename marks the output complete, as fit's last step does."""
    import signal

    from protrans_cli.io.h5 import EmbeddingsWriter

    real = EmbeddingsWriter.close

    def close(self, complete=False):
        real(self, complete)
        if complete and self.finalize:
            signal.raise_signal(getattr(signal, name))  # (just after the rename)

    monkeypatch.setattr(EmbeddingsWriter, "close", close)
    out = tmp_path / "d.h5"
    result = run_cli("embed", SMALL, "-m", "onehot", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"protrans: warning: {message} once the output was complete ({out}): nothing was lost")
    assert out.is_file() and not (tmp_path / "d.h5.partial").exists()


@pytest.mark.parametrize("kinds,warned", [(["--per-protein"], True), (["--per-protein", "--layout", "stacked"], True),
                                          (["--per-residue"], False), ([], False)])
def test_compression_of_a_file_without_per_residue_arrays_is_said_to_be_ignored(run_cli, tmp_path, kinds, warned):
    """`--compression gzip` compresses per-residue arrays only: with per-protein vectors alone it
    was accepted without a word and the file came out uncompressed."""
    import h5py

    out = tmp_path / "o.h5"
    result = run_cli("embed", SMALL, "-m", "onehot", *kinds, "--compression", "gzip", "-o", out)
    assert result.exit_code == 0, result.stderr
    said = "--compression gzip ignored: it compresses per-residue arrays, and this run writes per-protein vectors only"
    assert (said in result.stderr) is warned, result.stderr
    with h5py.File(out) as f:
        if "per_residue" in f:
            assert all(d.compression == "gzip" for d in f["per_residue"].values())


def test_lzf_compression_compresses_per_residue_arrays_and_reads_back_the_same(run_cli, tmp_path):
    """--compression lzf (gzip's level is set, lzf takes none): per-residue arrays stored with
    lzf, their values those of an uncompressed run; per-protein vectors stay uncompressed."""
    import h5py

    plain, packed = tmp_path / "plain.h5", tmp_path / "lzf.h5"
    for out, extra in ((plain, []), (packed, ["--compression", "lzf"])):
        result = run_cli("embed", SMALL, "-m", "onehot", *extra, "-o", out)
        assert result.exit_code == 0, result.stderr
    with h5py.File(plain) as a, h5py.File(packed) as b:
        assert sorted(b["per_residue"]) == sorted(a["per_residue"]) and len(b["per_residue"]) > 0
        for key in a["per_residue"]:
            assert b["per_residue"][key].compression == "lzf"
            assert np.array_equal(b["per_residue"][key][()], a["per_residue"][key][()])
        assert all(d.compression is None for d in b["per_protein"].values())


@pytest.mark.parametrize("args,said", [
    (["--dtype", "float16"], "the onehot embedder runs on the CPU in float32: --device/--dtype ignored"),
    (["--device", "cuda"], "the onehot embedder runs on the CPU in float32: --device/--dtype ignored"),
    (["--long-policy", "truncate"], "--long-policy truncate has no effect: no --max-length, and the model takes "
                                    "proteins of any length"),
])
def test_an_option_onehot_cannot_use_is_said_to_be_ignored(run_cli, tmp_path, args, said):
    """The weight-free onehot embedder has no device, dtype or length limit: these options
    change nothing, and the run says so (it still writes the same float32 file)."""
    import h5py

    out = tmp_path / "o.h5"
    result = run_cli("embed", SMALL, "-m", "onehot", *args, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert f"protrans: warning: {said}" in result.stderr, result.stderr
    with h5py.File(out) as f:
        assert {d.dtype for d in f["per_residue"].values()} == {np.dtype("float32")}
    quiet = run_cli("embed", SMALL, "-m", "onehot", "--long-policy", "truncate", "--max-length", "5",
                    "-o", tmp_path / "t.h5")
    assert quiet.exit_code == 0 and "has no effect" not in quiet.stderr, quiet.stderr


def test_compression_none_of_a_library_caller_is_no_compression_to_ignore(capsys):
    """EmbedOptions(compression="none") is no compression (the writer takes "none" as the CLI's
    default): a per-protein run warned "--compression none ignored"."""
    from protrans_cli.embed import EmbedOptions, build_embedder

    build_embedder(EmbedOptions(model="onehot", per_residue=False, compression="none"))
    assert "--compression" not in capsys.readouterr().err
    build_embedder(EmbedOptions(model="onehot", per_residue=False, compression="gzip"))
    assert "--compression gzip ignored" in capsys.readouterr().err


def test_an_option_build_embedder_ignores_is_said_by_rank_0_alone(capsys, monkeypatch):
    """Under torchrun every rank builds its embedder from the same options: the warning that an
    option is ignored came once a rank (eight identical lines on a node of eight GPUs)."""
    from protrans_cli.embed import EmbedOptions, build_embedder

    options = EmbedOptions(model="onehot", compile=True, per_residue=False, compression="gzip")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank, said in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        build_embedder(options)
        err = capsys.readouterr().err
        assert ("--compile ignored" in err) is said and ("--compression gzip ignored" in err) is said, (rank, err)


def test_cli_max_tokens_and_max_batch_size_bound_the_batches_the_model_gets(run_cli, tmp_path, monkeypatch):
    # --max-tokens (padded tokens: longest x count) and --max-batch-size (sequences) bound every batch
    # the model is given; a protein over the budget alone (the vectors do not depend on the batches:
    # the CLI handing the library None for --max-tokens passed the tests that give it)
    import protrans_cli.embed as embed_module

    real = embed_module.embed_with_retry
    batches = []

    def recording(embedder, seqs, **kw):
        batches.append([len(s) for s in seqs])
        return real(embedder, seqs, **kw)

    monkeypatch.setattr(embed_module, "embed_with_retry", recording)
    for flags, fits in ((("--max-batch-size", "2"), lambda b: len(b) <= 2),
                        (("--max-tokens", "25"), lambda b: len(b) == 1 or max(b) * len(b) <= 25)):
        batches.clear()
        r = run_cli("embed", SMALL, "-m", "onehot", *flags, "-o", tmp_path / "e.h5", "--force")
        assert r.exit_code == 0, r.stderr
        assert len(batches) > 1 and all(map(fits, batches)), batches
    batches.clear()
    assert run_cli("embed", SMALL, "-m", "onehot", "-o", tmp_path / "e.h5", "--force").exit_code == 0
    assert len(batches) == 1  # (the defaults take the file in one batch: the test can tell)


def test_a_huge_id_or_one_with_a_terminal_escape_is_shown_short_and_escaped(tmp_path, run_cli):
    """A 200,000-character id made embed's duplicate-id error a 200 KB "line", and an id holding
    ESC[31m in a warning recoloured the terminal: a message shows the first 100 characters and the
    length, control characters escaped; the output file holds the ids whole."""
    huge = "A" * 200_000
    (tmp_path / "dup.fa").write_text(f">{huge}\nMKV\n>{huge}\nMKV\n")
    result = run_cli("embed", tmp_path / "dup.fa", "-m", "onehot", "-o", tmp_path / "d.h5")
    assert result.exit_code == 1 and result.stderr == (
        f"protrans: error: {tmp_path / 'dup.fa'}:3, record '{'A' * 100}...' (200,000 characters): duplicate id "
        "(first seen on line 1); ids must be unique because they are the keys of the output\n")
    dna = "ATGGCGATCGATCGATCGTAGCTAGCTAGCATCGATCGATCGATCGTAGC"
    (tmp_path / "dna.fa").write_text(f">red\x1b[31mcds\n{dna}\n>{huge}\n{dna}\n")
    result = run_cli("embed", tmp_path / "dna.fa", "-m", "onehot", "-o", tmp_path / "o.h5")
    assert result.exit_code == 0, result.stderr[:1000]
    (line,) = [line for line in result.stderr.splitlines() if "nucleotide" in line]
    assert f"as nucleotide sequences do: red\\x1b[31mcds, {'A' * 100}... (200,000 characters). Protein" in line
    assert "\x1b" not in result.stderr and len(line) < 500
    with EmbeddingsReader(tmp_path / "o.h5") as r:
        assert sorted(r.ids()) == sorted([huge, "red\x1b[31mcds"])


def test_a_nul_byte_in_a_header_is_skipped_under_invalid_policy_skip_as_prep_leaves_it_out(run_cli, tmp_path):
    """A header holding NUL bytes (a damaged file: zeroed blocks) stopped `embed --invalid-policy
    skip` whole, where prep leaves the record out: it is skipped and named in `failed` like any
    other record that cannot be embedded, the others embedded, and a --resume has nothing to do."""
    fasta, out = tmp_path / "nul.fa", tmp_path / "e.h5"
    fasta.write_bytes(b">a\nMKTA\n>b\x00\x00c desc\nMKKL\n>d\nMKV\n")
    result = run_cli("embed", fasta, "-m", "onehot", "--invalid-policy", "skip", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "b\\x00\\x00c: skipped: the header holds a NUL byte (a damaged file?) (--invalid-policy skip)" in \
        result.stderr, result.stderr
    with EmbeddingsReader(out) as r:
        assert sorted(r.ids()) == ["a", "d"]
        assert r.failed() == {"b\x00\x00c": "skipped: the header holds a NUL byte (a damaged file?) "
                                            "(--invalid-policy skip)"}
    result = run_cli("embed", fasta, "-m", "onehot", "--invalid-policy", "skip", "-o", out, "--resume")
    assert result.exit_code == 0 and "embedded 0 proteins" in result.stderr, result.stderr


def test_a_file_of_old_mac_line_endings_is_named_by_its_first_record_as_prep_names_it(run_cli, tmp_path):
    """A FASTA whose lines end in CR alone reads as one header line: prep's error named the record
    ('a'), embed's and the library reader's only the line; both name it now."""
    fasta = tmp_path / "cr.fa"
    fasta.write_bytes(b">a desc\rMKTA\rGGH\r>b\rMKKL\r")
    said = f"{fasta}:1, record 'a': a carriage return inside the header line: lines that end in CR alone"
    for command in ("prep", "embed"):
        result = run_cli(command, fasta, *(["-m", "onehot"] if command == "embed" else []), "-o", tmp_path / "out")
        assert result.exit_code == 1 and result.stderr.startswith(f"protrans: error: {said}"), result.stderr
    with pytest.raises(InputError, match=re.escape(said)):
        list(read_fasta(fasta))
    # No id before the first CR: the line alone, in prep too (it named the record by its first
    # sequence line, 'MKTA', the id read across the CR)
    fasta.write_bytes(b">\rMKTA\r>b\rMKKL\r")
    for command in ("prep", "embed"):
        result = run_cli(command, fasta, *(["-m", "onehot"] if command == "embed" else []), "-o", tmp_path / "out")
        assert result.exit_code == 1 and result.stderr.startswith(
            f"protrans: error: {fasta}:1: a carriage return inside the header"), (command, result.stderr)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["out.h5", "out.h5.partial"])
def test_resume_into_another_tools_file_is_refused_and_the_file_left_as_it_is(tmp_path, run_cli, name):
    """--resume where OUTPUT (or OUTPUT.partial) was written by another tool (ProtTrans' script,
    bio_embeddings, h5py by hand: no 'layout' or 'kinds'): a usage error saying so; adding this
    run's datasets beside its own would have relabelled it with this run's model."""
    import h5py

    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n>P2\nMKV\n")
    with h5py.File(tmp_path / name, "w") as f:
        f["P1"] = np.arange(4, dtype=np.float32)
    before = (tmp_path / name).read_bytes()
    result = run_cli("embed", tmp_path / "a.fa", "-m", "onehot", "-o", tmp_path / "out.h5", "--resume")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"{tmp_path / name}: cannot resume: not an output of protrans embed (no 'layout' or 'kinds' attribute" \
        in result.stderr, result.stderr
    assert (tmp_path / name).read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.fa", name]


def test_resume_with_a_limit_into_a_file_of_none_says_the_file_has_none(tmp_path, run_cli):
    """onehot takes any length (max_length 0 recorded): --resume with --max-length 100 is refused
    saying the file was written with no limit, not "max_length=0" (a limit of 0 residues)."""
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n")
    out = tmp_path / "a.h5"
    assert run_cli("embed", tmp_path / "a.fa", "-m", "onehot", "-o", out).exit_code == 0
    result = run_cli("embed", tmp_path / "a.fa", "-m", "onehot", "-o", out, "--resume", "--max-length", "100")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "cannot resume: the file was written with no max_length (the model takes any length), this run uses " \
        "max_length=100 (use the same settings" in result.stderr, result.stderr


def test_only_outputs_that_could_harm_the_model_directory_are_refused(tmp_path, monkeypatch):
    """refuse_inside_model: a name of the model's or its run's files (whatever its case; one its
    weights' index names; a link to one), a folder it uses, a folder holding a model of its own,
    the directory itself as a folder output; any other name is allowed."""
    from protrans_cli.embed import refuse_inside_model

    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "disc").mkdir()
    (run / "plots").mkdir()
    (run / "config.json").write_text("{}")
    (run / "disc" / "config.json").write_text("{}")
    (run / "model.safetensors.index.json").write_text('{"weight_map": {"a": "part-one.data"}}')
    (run / "link.h5").symlink_to(run / "config.json")
    refused = ["run/config.json", "run/CONFIG.JSON", "run/model-00001-of-00002.safetensors", "run/tokenizer.json",
               "run/vocab_embeddings.h5", "run/spiece.model", "run/adapter_config.json", "run/README.md",
               "run/metrics.jsonl", "run/loss_curve.png", "run/training_state.pt", "run/complete.json",
               "run/part-one.data", "run/link.h5", "run/checkpoints/x.h5", "run/generator/x.h5", "run/disc/x.h5",
               "run/model.safetensors/x.h5", "run", "./run/../run/config.json"]
    for path in refused:
        with pytest.raises(UsageError, match=r"\(choose another output\)$"):
            refuse_inside_model(path, ("run",), "-o", "output")
    for path in ("run/x.h5", "run/scores.tsv", "run/plots/x.h5", "run/new/x.h5", "run/./y.h5", "run/model.h5",
                 "elsewhere/config.json", "-", None):
        refuse_inside_model(path, ("run",), "-o", "output")
    refuse_inside_model("run/config.json", ("onehot", "esm2_t6_8M_UR50D"), "-o", "output")  # (no directory)
    for folder, said in (("run", "is the model directory run: the .pt files would go among the model's files"),
                         ("run/disc", "is a folder of the model directory that holds a config.json of its own"),
                         ("run/checkpoints", "is the folder of the training run's checkpoints")):
        with pytest.raises(UsageError, match=re.escape(f"{folder} {said}")):
            refuse_inside_model(folder, ("run",), "OUTPUT_DIR", "output_dir", contents="the .pt files")
    refuse_inside_model("run/plots", ("run",), "OUTPUT_DIR", "output_dir", contents="the .pt files")
    with pytest.raises(UsageError, match=re.escape("run/config.json is one of the model directory's files (its "
                                                   "config): writing it would replace it (choose another output)")):
        refuse_inside_model("run/config.json", ("run",), "-o", "output")
    # model_output_problem asked of a path outside the directory: nothing to say (it said "is the
    # model directory" of any path outside it)
    from protrans_cli.embed import model_output_problem
    from protrans_cli.io.files import is_inside, parts_below

    (tmp_path / "elsewhere").mkdir()
    for outside in ("elsewhere/config.json", "elsewhere", "x.h5"):
        assert model_output_problem(outside, run) is None and parts_below(outside, run) is None
        assert not is_inside(outside, run)
    assert parts_below("run/./disc/../checkpoints/x.h5", run) == ("checkpoints", "x.h5")
    assert parts_below("run", run) == () and is_inside("run", run)
