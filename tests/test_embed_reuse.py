"""`protrans embed --reuse FILE`: proteins an earlier output of the same model and settings holds
are copied by sequence (whatever their id there) instead of computed; the output is the file a
fresh run writes (compared with a fresh run and with a plain transformers forward pass)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import save_tiny_model
from protrans_cli import embed as embed_module
from protrans_cli.embed import EmbedOptions, embed
from protrans_cli.errors import UsageError
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader

SEQS = {"p1": "MKTAYIAKQRQISFVKSHFSRQ", "p2": "ACDEFGHIKLMNPQRSTVWY", "p3": "MKVLAAGIVGL", "p4": "GSHMLEDPVDAFQ",
        "p5": "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "p6": "MALWMRLLPLLALLALWGPDPAAA", "p7": "MKKLLPTAAAGLLLLAAQPAMA",
        "p8": "MSDKIIHLTDDSFDTDVLKADGAILVDFWAEW"}
# Settings that change the rows: the file's attributes that a run and a reusing run differ in are
# only those of the run itself
RUN_ONLY = {"command_line", "runs", "protrans_version"}


def _fasta(path, records):
    path.write_text("".join(f">{ident} the header of {ident}\n{seq}\n" for ident, seq in records.items()))
    return path


def _contents(path):
    """{kind: {id: (array, attributes)}} and the file's attributes."""
    with EmbeddingsReader(path) as reader:
        kinds = {}
        for kind in (PER_RESIDUE, PER_PROTEIN):
            group = reader.file if reader.layout == "flat" else reader.file.get(kind)
            if kind in str(reader.attrs["kinds"]):
                kinds[kind] = {i: (a, dict(group[i].attrs)) for i, a, _ in reader.items(kind)}
        attrs = {k: v for k, v in reader.attrs.items() if k not in RUN_ONLY}
    return kinds, attrs


def _spy(monkeypatch):
    """The sequences the model computes (every forward pass goes through embed_with_retry)."""
    seen: list[str] = []
    real = embed_module.embed_with_retry

    def spy(embedder, sequences, **kw):
        seen.extend(sequences)
        return real(embedder, sequences, **kw)

    monkeypatch.setattr(embed_module, "embed_with_retry", spy)
    return seen


def _torchrun_embed(*args):
    """`protrans embed ARGS` as two gloo ranks of torchrun (the finished process)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PROTRANS_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "protrans_cli", "embed", *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def esm(tmp_path_factory):
    pytest.importorskip("torch")
    return save_tiny_model(tmp_path_factory, "esm")


def _options(model, **kw):
    return EmbedOptions(model=str(model), device="cpu", max_tokens=128, threads=1, **kw)


def test_reusing_half_equals_a_fresh_run_and_computes_only_the_rest(tmp_path, esm, monkeypatch):
    from protrans_cli.models import FAMILIES
    from test_embed_models import reference_rows

    # the earlier file holds p1-p4 under other ids (and one protein the new input lacks)
    old = {f"old_{i}": SEQS[i] for i in ("p1", "p2", "p3", "p4")} | {"gone": "MKWVTFISLL"}
    embed(_fasta(tmp_path / "old.fa", old), tmp_path / "old.h5", _options(esm))
    fasta = _fasta(tmp_path / "new.fa", SEQS)
    embed(fasta, tmp_path / "fresh.h5", _options(esm))
    seen = _spy(monkeypatch)
    summary = embed(fasta, tmp_path / "reused.h5", _options(esm, reuse=(tmp_path / "old.h5",)))
    assert sorted(seen) == sorted(SEQS[i] for i in ("p5", "p6", "p7", "p8"))  # the reused were not computed
    assert (summary.num_reused, summary.num_embedded) == (4, 4)
    assert summary.num_residues == sum(len(SEQS[i]) for i in ("p5", "p6", "p7", "p8"))
    fresh, fresh_attrs = _contents(tmp_path / "fresh.h5")
    got, got_attrs = _contents(tmp_path / "reused.h5")
    stored, _ = _contents(tmp_path / "old.h5")
    assert sorted(got_attrs) == sorted(fresh_attrs)
    assert [k for k, v in got_attrs.items() if not np.array_equal(v, fresh_attrs[k])] == []
    for kind in (PER_RESIDUE, PER_PROTEIN):
        assert sorted(got[kind]) == sorted(SEQS)
        for ident, seq in SEQS.items():
            array, attrs = got[kind][ident]
            assert attrs == fresh[kind][ident][1]  # id, header, length, checksum: the input's
            assert attrs["header"] == f"{ident} the header of {ident}"
            np.testing.assert_allclose(array, fresh[kind][ident][0], atol=1e-5, rtol=0)
            ref = reference_rows(FAMILIES["esm"], esm, seq)[0]
            np.testing.assert_allclose(array, ref if kind == PER_RESIDUE else ref.mean(0), atol=1e-5, rtol=0)
            if ident in ("p1", "p2", "p3", "p4"):  # copied as stored
                np.testing.assert_array_equal(array, stored[kind][f"old_{ident}"][0])


def test_a_file_of_another_layer_or_model_is_refused_naming_it_and_the_setting(tmp_path, esm, run_cli):
    fasta = _fasta(tmp_path / "a.fa", {"p1": SEQS["p1"], "p2": SEQS["p2"]})
    embed(fasta, tmp_path / "layer.h5", _options(esm, layers=(-2,)))
    embed(fasta, tmp_path / "onehot.h5", EmbedOptions(model="onehot"))
    base = ("embed", fasta, "-m", esm, "--device", "cpu", "-j", "1")
    r = run_cli(*base, "-o", tmp_path / "x.h5", "--reuse", tmp_path / "layer.h5")
    assert r.exit_code == 2
    assert f"{tmp_path / 'layer.h5'}: cannot reuse its proteins: the file was written with layers=[-2]" in r.stderr
    r = run_cli(*base, "-o", tmp_path / "x.h5", "--reuse", tmp_path / "onehot.h5")
    assert r.exit_code == 2 and "onehot.h5: cannot reuse its proteins: the file was written with model='onehot'" \
        in r.stderr, r.stderr
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.h5.partial").exists()


def test_same_sequence_under_other_ids_is_reused_with_this_inputs_ids_and_headers(tmp_path, monkeypatch):
    embed(_fasta(tmp_path / "old.fa", {"A": "MKTAYIAKQRQ", "B": "ACDEFGHIK"}), tmp_path / "old.h5",
          EmbedOptions(model="onehot", layout="flat", per_residue=False))
    seen = _spy(monkeypatch)
    fasta = _fasta(tmp_path / "new.fa", {"x": "MKTAYIAKQRQ", "y": "MMMKKK", "z": "ACDEFGHIK", "w": "ACDEFGHIK"})
    summary = embed(fasta, tmp_path / "new.h5", EmbedOptions(model="onehot", per_residue=False,
                                                             reuse=[str(tmp_path / "old.h5")]))
    assert seen == ["MMMKKK"] and summary.num_reused == 3  # (w shares z's sequence: copied)
    got, _ = _contents(tmp_path / "new.h5")
    old, _ = _contents(tmp_path / "old.h5")
    assert got[PER_PROTEIN]["x"][1]["header"] == "x the header of x"
    np.testing.assert_array_equal(got[PER_PROTEIN]["x"][0], old[PER_PROTEIN]["A"][0])
    np.testing.assert_array_equal(got[PER_PROTEIN]["w"][0], old[PER_PROTEIN]["B"][0])


def test_resume_does_not_copy_again_what_the_output_holds(tmp_path, monkeypatch):
    from protrans_cli.embed_reuse import Reuse

    embed(_fasta(tmp_path / "old.fa", {"A": "MKTAYIAKQRQ", "B": "ACDEFGHIK", "C": "GSHMLEDP"}),
          tmp_path / "old.h5", EmbedOptions(model="onehot"))
    out, reuse = tmp_path / "out.h5", (tmp_path / "old.h5",)
    embed(_fasta(tmp_path / "a.fa", {"x": "MKTAYIAKQRQ"}), out, EmbedOptions(model="onehot", reuse=reuse))
    copied = []
    real = Reuse.arrays
    monkeypatch.setattr(Reuse, "arrays", lambda self, i: copied.append(i) or real(self, i))
    fasta = _fasta(tmp_path / "b.fa", {"x": "MKTAYIAKQRQ", "y": "ACDEFGHIK", "z": "MMM"})
    summary = embed(fasta, out, EmbedOptions(model="onehot", reuse=reuse, resume=True))
    assert len(copied) == 1 and (summary.num_resumed, summary.num_reused, summary.num_embedded) == (1, 1, 1)
    got, _ = _contents(out)
    assert sorted(got[PER_RESIDUE]) == ["x", "y", "z"]


def test_files_that_cannot_be_reused_are_refused_before_computing(tmp_path, run_cli):
    fasta = _fasta(tmp_path / "a.fa", {"x": "MKTAYIAKQRQ"})
    embed(fasta, tmp_path / "prot.h5", EmbedOptions(model="onehot", per_residue=False))
    embed(fasta, tmp_path / "stacked.h5", EmbedOptions(model="onehot", per_residue=False, layout="stacked"))
    embed(fasta, tmp_path / "half.h5", EmbedOptions(model="onehot", storage_dtype="float16"))
    out = tmp_path / "out.h5"
    cases = [
        (tmp_path / "prot.h5", "holds per_protein embeddings, this run writes per_residue too", ()),
        (tmp_path / "stacked.h5", "a stacked file is read by rows", ("--per-protein",)),
        (tmp_path / "half.h5", "storage_dtype='float16', this run uses storage_dtype='float32'", ()),
        (out, "--reuse names the output itself", ()),
        (tmp_path / "out.h5.partial", "--reuse names the output itself", ()),
    ]
    for path, words, extra in cases:
        r = run_cli("embed", fasta, "-m", "onehot", "-o", out, "--reuse", path, *extra)
        assert r.exit_code == 2 and f"{path}: " in r.stderr and words in r.stderr, r.stderr
        assert not out.exists()
    # a layout no run can reuse is refused before the model is looked for (a model that is not there)
    r = run_cli("embed", fasta, "-m", tmp_path / "no_model", "-o", out, "--reuse", tmp_path / "stacked.h5",
                "--per-protein")
    assert r.exit_code == 2 and "a stacked file is read by rows" in r.stderr, r.stderr
    r = run_cli("embed", fasta, "-m", "onehot", "-o", out, "--reuse", tmp_path / "missing.h5")
    assert r.exit_code == 1 and "missing.h5" in r.stderr
    with pytest.raises(UsageError, match="names it twice"):
        embed(fasta, out, EmbedOptions(model="onehot", reuse=(tmp_path / "half.h5", str(tmp_path / "half.h5"))))


@pytest.mark.parametrize("policy", ["truncate", "chunk"])
def test_long_proteins_are_reused_as_a_fresh_run_writes_them(tmp_path, policy):
    """Matched by what the model sees: a truncated protein by its kept prefix (a whole protein of
    exactly that prefix too), a chunked one by its whole sequence; attributes as a fresh run's."""
    kw = dict(model="onehot", max_length=8, long_policy=policy, chunk_overlap=2)
    embed(_fasta(tmp_path / "old.fa", {"A": "MKTAYIAKQRQ", "B": "ACDEFGHI", "C": "GSHMLEDPVDAFQ"}),
          tmp_path / "old.h5", EmbedOptions(**kw))
    fasta = _fasta(tmp_path / "new.fa", {"x": "MKTAYIAKQRQ", "y": "ACDEFGHIKLM", "z": "GSHMLEDPVDAFQ", "w": "MMM"})
    embed(fasta, tmp_path / "fresh.h5", EmbedOptions(**kw))
    summary = embed(fasta, tmp_path / "new.h5", EmbedOptions(**kw, reuse=(tmp_path / "old.h5",)))
    # truncate: y's first 8 residues are B; chunk: y is another sequence
    assert summary.num_reused == {"truncate": 3, "chunk": 2}[policy]
    got, got_attrs = _contents(tmp_path / "new.h5")
    fresh, fresh_attrs = _contents(tmp_path / "fresh.h5")
    assert [k for k, v in got_attrs.items() if not np.array_equal(v, fresh_attrs.get(k))] == []
    for kind in got:
        for ident in ("x", "y", "z", "w"):
            np.testing.assert_array_equal(got[kind][ident][0], fresh[kind][ident][0])
            assert got[kind][ident][1] == fresh[kind][ident][1]


@pytest.mark.parametrize("window", [1, 100])
def test_a_repeat_of_a_reused_sequence_counts_as_reused_in_whichever_window(tmp_path, monkeypatch, window):
    """z repeats x, whose sequence is reused: in x's window z is copied with it, in a later window
    from the output; either way a reused protein (not this run's computation, nor in its residues)
    that shares another's sequence. It counted as embedded in a later window."""
    embed(_fasta(tmp_path / "old.fa", {"A": "MKTAYIAKQRQ"}), tmp_path / "old.h5", EmbedOptions(model="onehot"))
    seen = _spy(monkeypatch)
    fasta = _fasta(tmp_path / "new.fa", {"x": "MKTAYIAKQRQ", "y": "ACDEFGHIK", "z": "MKTAYIAKQRQ"})
    summary = embed(fasta, tmp_path / "new.h5", EmbedOptions(model="onehot", window=window,
                                                             reuse=(tmp_path / "old.h5",)))
    assert seen == ["ACDEFGHIK"]
    assert (summary.num_reused, summary.num_embedded, summary.num_duplicates) == (2, 1, 1)
    assert summary.num_residues == len("ACDEFGHIK")
    got, _ = _contents(tmp_path / "new.h5")
    old, _ = _contents(tmp_path / "old.h5")
    for kind in (PER_RESIDUE, PER_PROTEIN):
        for ident in ("x", "z"):
            np.testing.assert_array_equal(got[kind][ident][0], old[kind]["A"][0])


def test_reuse_leaves_the_callers_options_as_validate_does(tmp_path):
    """embed() keeps the checked paths in the options it was given (validate() normalises `part`
    and `layers` there alike): a str list becomes a tuple of Paths, and the run is the same again."""
    from pathlib import Path

    fasta = _fasta(tmp_path / "a.fa", {"x": "MKTAYIAKQRQ"})
    embed(fasta, tmp_path / "old.h5", EmbedOptions(model="onehot"))
    options = EmbedOptions(model="onehot", reuse=[str(tmp_path / "old.h5")], force=True)
    assert embed(fasta, tmp_path / "out.h5", options).num_reused == 1
    assert options.reuse == (Path(tmp_path / "old.h5"),)
    assert embed(fasta, tmp_path / "out.h5", options).num_reused == 1


@pytest.mark.slow
def test_reuse_under_torchrun_equals_one_process(tmp_path):
    """Two gloo ranks, each copying the reused proteins of its own share (a repeated sequence is
    pinned to one rank, which copies its later windows' repeats from its shard): the merged file is
    a one-process --reuse run's, arrays and attributes, and the summary counts every rank's."""
    import re

    from protrans_cli.io.fasta import read_fasta
    from test_embed import assert_same_content, file_content, generated_fasta

    fasta = generated_fasta(tmp_path / "g.fa", 120, long_every=9)
    records = list(read_fasta(fasta))
    # the earlier file holds every third sequence (repeated ones among them) under other ids
    _fasta(tmp_path / "old.fa", {f"old{i}": r.sequence for i, r in enumerate(records[::3])})
    kw = dict(model="onehot", max_length=50, long_policy="chunk", chunk_overlap=8, window=13)
    embed(tmp_path / "old.fa", tmp_path / "old.h5", EmbedOptions(**kw))
    single = embed(fasta, tmp_path / "single.h5", EmbedOptions(**kw, reuse=(tmp_path / "old.h5",)))
    old = {r.sequence for r in records[::3]}
    assert single.num_reused == sum(r.sequence in old for r in records) > 40
    assert single.num_embedded + single.num_reused == 120 and single.num_duplicates > 0
    out = tmp_path / "dist.h5"
    proc = _torchrun_embed(fasta, "-m", "onehot", "--window", "13", "--max-length", "50", "--long-policy", "chunk",
                           "--chunk-overlap", "8", "-o", out, "--reuse", tmp_path / "old.h5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.count("embedded ") == 1  # rank 0 reports, every rank's counts
    assert re.search(rf"embedded {single.num_embedded} proteins .*; {single.num_reused} copied from --reuse; "
                     rf"of these 120, {single.num_duplicates} repeats? another's sequence", proc.stderr), proc.stderr
    assert_same_content(file_content(tmp_path / "single.h5"), file_content(out))
    one_attrs, both_attrs = _contents(tmp_path / "single.h5")[1], _contents(out)[1]  # (file attributes)
    assert sorted(both_attrs) == sorted(one_attrs)
    assert [k for k, v in both_attrs.items() if not np.array_equal(v, one_attrs[k])] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.h5", "g.fa", "old.fa", "old.h5", "single.h5"]


@pytest.mark.parametrize("resume", [False, True])
def test_rows_from_a_file_without_weights_fingerprint_are_not_vouched_for(tmp_path, esm, resume):
    """A file of a local model directory from before weights_fingerprint: its rows' weights are
    not known, so an output that copies them records none (as a resumed or merged one does),
    rather than this run's fingerprint vouching for them; its own fingerprint goes too."""
    import h5py

    fasta = _fasta(tmp_path / "a.fa", {"p1": SEQS["p1"], "p2": SEQS["p2"]})
    embed(fasta, tmp_path / "old.h5", _options(esm))
    with h5py.File(tmp_path / "old.h5", "a") as f:
        assert f.attrs["weights_fingerprint"]
        del f.attrs["weights_fingerprint"]
    out = tmp_path / "out.h5"
    if resume:  # an output of this run's weights, extended with the unknown rows
        embed(_fasta(tmp_path / "b.fa", {"x": SEQS["p3"]}), out, _options(esm))
    more = _fasta(tmp_path / "c.fa", {"x": SEQS["p3"], "y": SEQS["p1"], "z": SEQS["p4"]})
    summary = embed(more, out, _options(esm, reuse=(tmp_path / "old.h5",), resume=resume))
    assert summary.num_reused == 1
    with h5py.File(out, "r") as f:
        assert "weights_fingerprint" not in f.attrs
    # a file that has one is compared, and the output records it
    embed(fasta, tmp_path / "new.h5", _options(esm))
    embed(more, tmp_path / "out2.h5", _options(esm, reuse=(tmp_path / "new.h5",)))
    with h5py.File(tmp_path / "out2.h5", "r") as f, h5py.File(tmp_path / "new.h5", "r") as g:
        assert f.attrs["weights_fingerprint"] == g.attrs["weights_fingerprint"]


@pytest.mark.slow
def test_under_torchrun_rows_from_a_file_without_weights_fingerprint_are_not_vouched_for(tmp_path, esm):
    """As in one process: two gloo ranks copying rows of unknown weights (each into its shard,
    rank 0 merging the shards) write an output that records no weights_fingerprint, not this
    run's."""
    import h5py

    _fasta(tmp_path / "a.fa", {"p1": SEQS["p1"], "p2": SEQS["p2"]})
    embed(tmp_path / "a.fa", tmp_path / "old.h5", _options(esm))
    with h5py.File(tmp_path / "old.h5", "a") as f:
        del f.attrs["weights_fingerprint"]
    fasta = _fasta(tmp_path / "c.fa", {"x": SEQS["p3"], "y": SEQS["p1"], "z": SEQS["p4"], "w": SEQS["p2"]})
    out = tmp_path / "dist.h5"
    proc = _torchrun_embed(fasta, "-m", esm, "--device", "cpu", "-o", out, "--reuse", tmp_path / "old.h5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 copied from --reuse" in proc.stderr, proc.stderr[-2000:]
    with h5py.File(out, "r") as f:
        assert "weights_fingerprint" not in f.attrs
