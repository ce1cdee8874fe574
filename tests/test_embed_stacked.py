"""`embed --layout stacked`: every per-protein vector in one (N, D) array with the ids beside it,
equal to the other layouts' vectors, and as safe on long jobs (interrupted, resumed, extended,
a disk filling up while it is written)."""

from __future__ import annotations

import errno
import json

import h5py
import numpy as np
import pytest

from conftest import DATA
from protrans_cli.embed import EmbedOptions, OneHotEmbedder, embed
from protrans_cli.errors import InputError, RuntimeFailure, UsageError
from protrans_cli.io import stacked as stacked_module
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader, ledger_path, partial_path
from test_embed import _ctrl_c_on_batch, _reads_no_protein

SMALL = DATA / "embed" / "small.fa"


def _stacked(out, fasta=SMALL, **kw):
    return embed(fasta, out, EmbedOptions(model="onehot", per_residue=False, layout="stacked", **kw))


def _columns(path) -> dict:
    with h5py.File(path, "r") as f:
        return {name: (f[name].asstr()[()].tolist() if f[name].dtype.kind == "O" else f[name][()])
                for name in f}


def test_the_stacked_file_holds_the_grouped_files_vectors_and_attributes_as_rows_sorted_by_id(tmp_path):
    grouped = tmp_path / "g.h5"
    embed(SMALL, grouped, EmbedOptions(model="onehot"))
    out = tmp_path / "s.h5"
    summary = _stacked(out)
    assert summary.num_embedded == 6 and summary.num_duplicates == 1
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["checksums", "chunks", "computed", "headers", "ids", "lengths", "per_protein",
                             "truncated_from"]
        ids = f["ids"].asstr()[()].tolist()
        vectors = f["per_protein"][()]
        assert ids == sorted(ids) and len(ids) == 6 and "sp|Q9/slash" in ids  # ids as written, not escaped
        assert vectors.shape == (6, 21) and vectors.dtype == np.float32
        assert f.attrs["layout"] == "stacked" and f.attrs["kinds"] == "per_protein"
        assert f.attrs["family"] == "onehot" and json.loads(f.attrs["failed"]) == {}
        headers = dict(zip(ids, f["headers"].asstr()[()]))
        lengths = dict(zip(ids, f["lengths"][()]))
    assert headers["sp|Q9/slash"] == "sp|Q9/slash id with slash" and lengths["one"] == 1 and lengths["rare"] == 8
    with EmbeddingsReader(grouped) as g, EmbeddingsReader(out) as s:
        assert s.layout == "stacked" and s.kinds == (PER_PROTEIN,)
        want = {i: (a, attrs) for i, a, attrs in g.items(PER_PROTEIN)}
        got = {i: (a, attrs) for i, a, attrs in s.items(PER_PROTEIN)}
        assert got.keys() == want.keys()
        for ident, (vector, attrs) in want.items():
            np.testing.assert_array_equal(got[ident][0], vector)
            assert got[ident][1] == attrs  # id, header, length, checksum: the same attributes
            np.testing.assert_array_equal(vectors[ids.index(ident)], vector)
            np.testing.assert_array_equal(s.get(ident, PER_PROTEIN), vector)
        assert s.ids(PER_PROTEIN) == ids and s.dim(PER_PROTEIN) == 21
        assert s.checksums(PER_PROTEIN) == g.checksums(PER_PROTEIN)
        assert s.key_for("sp|Q9/slash", PER_PROTEIN) == "sp|Q9%2Fslash" and s.key_for("nope", PER_PROTEIN) is None
        # matrix(): the one call for (ids, X), whatever the layout
        ids_g, x_g = g.matrix()
        ids_s, x_s = s.matrix()
        assert ids_g == ids_s == ids
        np.testing.assert_array_equal(x_g, x_s)
        with pytest.raises(InputError, match="has no per_residue embeddings"):
            s.get("one", PER_RESIDUE)
        with pytest.raises(InputError, match="no per_protein embedding for this id"):
            s.get("nope", PER_PROTEIN)
    # nothing left beside it: no partial file, no ledger, no hidden temporary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.h5", "s.h5"]


def test_several_layers_and_float16_storage(tmp_path):
    out = tmp_path / "s.h5"
    _stacked(out, storage_dtype="float16")
    with EmbeddingsReader(out) as r:
        ids, x = r.matrix()
    assert x.dtype == np.float16 and x.shape == (6, 21)
    with h5py.File(out) as f:
        assert f["per_protein"].dtype == np.float16
    # several layers (the onehot embedder has one): the (N, n_layers, D) array, float16 kept
    from protrans_cli.io.h5 import EmbeddingsWriter

    rng = np.random.default_rng(1)
    vectors = {ident: rng.standard_normal((3, 5)).astype(np.float16) for ident in ("b", "a", "c")}
    out = tmp_path / "layers.h5"
    with EmbeddingsWriter(out, kinds=(PER_PROTEIN,), layout="stacked", storage_dtype="float16",
                          attrs={"layers": [-3, -2, -1]}) as w:
        for ident, vector in vectors.items():
            w.write(ident, ident, "MKV", per_protein=vector)
    with EmbeddingsReader(out) as r:
        ids, x = r.matrix()
        assert ids == ["a", "b", "c"] and x.shape == (3, 3, 5) and x.dtype == np.float16
        np.testing.assert_array_equal(x, np.stack([vectors[i] for i in ids]))
        np.testing.assert_array_equal(r.get("c", PER_PROTEIN), vectors["c"])


def test_an_interrupted_run_resumes_to_the_file_an_uninterrupted_run_writes(tmp_path, monkeypatch):
    whole = tmp_path / "whole.h5"
    _stacked(whole, max_batch_size=1)
    out = tmp_path / "s.h5"
    original = _ctrl_c_on_batch(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        _stacked(out, max_batch_size=1)
    assert not out.exists() and partial_path(out).exists() and ledger_path(partial_path(out)).exists()
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", original)
    summary = _stacked(out, max_batch_size=1, resume=True)
    assert 0 < summary.num_resumed < 6  # (what the batches before the Ctrl-C wrote)
    a, b = _columns(whole), _columns(out)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert not partial_path(out).exists() and not ledger_path(partial_path(out)).exists()


def test_a_finished_file_is_extended_by_resume_and_stays_whole_until_the_extension_is(tmp_path, monkeypatch):
    first = tmp_path / "first.fa"
    records = SMALL.read_text().split(">")[1:]
    first.write_text("".join(">" + r for r in records[:3]))
    out = tmp_path / "s.h5"
    _stacked(out, fasta=first)
    before = _columns(out)
    assert len(before["ids"]) == 3
    original = _ctrl_c_on_batch(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        _stacked(out, resume=True, max_batch_size=1)
    # the finished file is as it was (readable by whoever uses it) while the extension waits
    now = _columns(out)
    assert all(np.array_equal(before[k], now[k]) for k in before)
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", original)
    summary = _stacked(out, resume=True)
    assert summary.num_resumed == 3 and summary.num_embedded == 3
    _assert_one_runs_file(out, tmp_path / "whole.h5")
    with h5py.File(out) as f:
        assert len(json.loads(f.attrs["runs"])) == 3  # the first run, the one stopped, the one that finished
    # once more: nothing to add, the file is left as it is
    mtime = out.stat().st_mtime_ns
    assert _stacked(out, resume=True).num_resumed == 6
    assert out.stat().st_mtime_ns == mtime and not partial_path(out).exists()


def _assert_one_runs_file(out, whole, fasta=SMALL):
    """`out` holds, column by column, what one uninterrupted run over `fasta` writes (into `whole`)."""
    _stacked(whole, fasta=fasta)
    a, b = _columns(whole), _columns(out)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def _first_three(tmp_path):
    first = tmp_path / "first.fa"
    first.write_text("".join(">" + r for r in SMALL.read_text().split(">")[1:4]))
    return first


def _interrupted_extension(tmp_path, monkeypatch):
    """s.h5 finished with SMALL's first three proteins, then a --resume over SMALL stopped by a
    Ctrl-C on its second batch (of one protein each): its partial file holds one protein."""
    out = tmp_path / "s.h5"
    _stacked(out, fasta=_first_three(tmp_path))
    original = _ctrl_c_on_batch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _stacked(out, resume=True, max_batch_size=1)
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", original)
    return out


def test_an_extension_writes_the_new_proteins_alone_and_merges_them_with_the_finished_rows(tmp_path, monkeypatch):
    """--resume adding proteins to a finished stacked file wrote all of its proteins back as one
    dataset each, then stacked them again: 21.5 s and more to add 10 proteins to 99,990 (2.6 s now).
    Its partial file now holds the new proteins alone, beside a hard link to the finished file."""
    monkeypatch.setattr(stacked_module, "unstack_file", lambda *a, **k: pytest.fail("written back"))
    out = _interrupted_extension(tmp_path, monkeypatch)
    partial = partial_path(out)
    base = stacked_module.base_path(partial)
    assert base.exists() and base.stat().st_ino == out.stat().st_ino  # (a link: no copy)
    with h5py.File(partial, "r") as f:
        assert f.attrs["extends"] == 3 and len(f["per_protein"]) == 1  # the one batch it computed
    with EmbeddingsReader(partial) as r:
        assert len(r.ids(PER_PROTEIN)) == 1
    # the next resume reads the finished file's proteins through the link, from its columns
    summary = _stacked(out, resume=True)
    assert summary.num_resumed == 4 and summary.num_embedded == 2
    _assert_one_runs_file(out, tmp_path / "whole.h5")
    with h5py.File(out) as f:
        assert "extends" not in f.attrs and len(json.loads(f.attrs["runs"])) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.fa", "s.h5", "whole.h5"]


def test_an_extension_killed_after_its_rename_is_finished_again_by_resume(tmp_path, monkeypatch):
    """A kill between the rename of the merged file and the removal of the partial file and its
    link: the next --resume merges them again into the same file."""
    import os

    out = _interrupted_extension(tmp_path, monkeypatch)
    partial = partial_path(out)
    kept = {path: tmp_path / f"kept{i}" for i, path in enumerate(
        (partial, ledger_path(partial), stacked_module.base_path(partial)))}
    for path, copy in kept.items():
        os.link(path, copy)
    _stacked(out, resume=True)
    finished = _columns(out)
    for path, copy in kept.items():  # (as the kill left them)
        os.replace(copy, path)
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", lambda *a, **k: pytest.fail("computed again"))
    assert _stacked(out, resume=True).num_resumed == 6
    again = _columns(out)
    for name in finished:
        np.testing.assert_array_equal(finished[name], again[name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.fa", "s.h5"]


@pytest.mark.parametrize("damage", ["gone", "other"])
def test_an_extension_whose_finished_file_went_is_one_error_line(tmp_path, monkeypatch, damage):
    out = _interrupted_extension(tmp_path, monkeypatch)
    base = stacked_module.base_path(partial_path(out))
    base.unlink()
    if damage == "other":  # another stacked file in its place
        _stacked(base, fasta=SMALL)
    message = "which is gone" if damage == "gone" else "to the 3 of the finished file linked as s.h5.partial.base, " \
                                                         "which now holds 6"
    with pytest.raises(RuntimeFailure, match=message + r".*remove s\.h5\.partial and call again with resume=True"):
        _stacked(out, resume=True)
    assert len(_columns(out)["ids"]) == 3  # the finished file as it was


@pytest.mark.parametrize("why", ["no hard link", "rows out of key order"])
def test_an_extension_that_cannot_link_or_merge_the_finished_file_writes_it_back(tmp_path, monkeypatch, why):
    """A folder without hard links, or a stacked file not in key order (not embed's): the finished
    file is written back into the partial file, as before, and the result is the same."""
    import os

    out = tmp_path / "s.h5"
    _stacked(out, fasta=_first_three(tmp_path))
    if why == "no hard link":
        def no_link(*args, **kw):
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_link)
    else:
        with h5py.File(out, "r+") as f:  # rows 0 and 1 swapped
            for name in f:
                rows = f[name][()]
                rows[[0, 1]] = rows[[1, 0]]
                f[name][...] = rows
    unstacked = []
    real = stacked_module.unstack_file
    monkeypatch.setattr(stacked_module, "unstack_file", lambda *a: unstacked.append(a) or real(*a))
    summary = _stacked(out, resume=True)
    assert summary.num_resumed == 3 and summary.num_embedded == 3 and len(unstacked) == 1
    _assert_one_runs_file(out, tmp_path / "whole.h5")


def test_a_writer_extending_a_stacked_file_takes_a_protein_it_writes_again_from_this_run(tmp_path):
    from protrans_cli.io.h5 import EmbeddingsWriter

    out = tmp_path / "s.h5"
    kw = dict(kinds=(PER_PROTEIN,), layout="stacked")
    with EmbeddingsWriter(out, **kw) as w:
        for ident in ("c", "a", "e"):
            w.write(ident, ident, "MKV", per_protein=np.full(4, ord(ident), dtype=np.float32))
    with EmbeddingsWriter(out, resume=True, **kw) as w:
        assert w.done_ids() == {"a", "c", "e"}
        w.write("b", "b", "MK", per_protein=np.full(4, 1.0, dtype=np.float32))
        w.write("c", "c again", "MKV", per_protein=np.full(4, 2.0, dtype=np.float32))
        w.write("f", "f", "M", per_protein=np.full(4, 3.0, dtype=np.float32))
        assert w.done_ids() == {"a", "b", "c", "e", "f"}
    columns = _columns(out)
    assert columns["ids"] == ["a", "b", "c", "e", "f"]
    assert columns["headers"] == ["a", "b", "c again", "e", "f"] and list(columns["lengths"]) == [3, 2, 3, 3, 1]
    np.testing.assert_array_equal(columns["per_protein"][:, 0], [ord("a"), 1, 2, ord("e"), 3])


def test_no_room_for_the_stacked_file_keeps_every_protein_for_resume(tmp_path, monkeypatch):
    out = tmp_path / "s.h5"
    real = stacked_module.stack_file

    def full_disk(source, target, then, base=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stacked_module, "stack_file", full_disk)
    with pytest.raises(RuntimeFailure, match=r"cannot write the stacked file \(.*No space left on device\); every "
                                             r"protein is in .*s\.h5\.partial: call again with resume=True"):
        _stacked(out)
    assert not out.exists() and partial_path(out).exists()
    monkeypatch.setattr(stacked_module, "stack_file", real)
    # the partial file's sealed ledger says every protein is done: nothing computed, nothing read
    _reads_no_protein(monkeypatch)
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", lambda *a, **k: pytest.fail("computed again"))
    summary = _stacked(out, resume=True)
    assert summary.num_resumed == 6 and summary.num_embedded == 0
    assert len(_columns(out)["ids"]) == 6 and not partial_path(out).exists()


def test_truncated_chunked_and_failed_proteins_in_the_columns(tmp_path):
    out = tmp_path / "t.h5"
    _stacked(out, max_length=10, long_policy="truncate")
    cols = _columns(out)
    cut = dict(zip(cols["ids"], cols["truncated_from"]))
    assert cut["P1"] == 22 and cut["sp|Q9/slash"] == 20 and cut["one"] == 0
    assert dict(zip(cols["ids"], cols["lengths"]))["P1"] == 10
    out = tmp_path / "c.h5"
    _stacked(out, max_length=10, long_policy="chunk", chunk_overlap=2)
    cols = _columns(out)
    assert dict(zip(cols["ids"], cols["chunks"]))["P1"] == 3 and dict(zip(cols["ids"], cols["chunks"]))["one"] == 0
    with EmbeddingsReader(out) as r:
        attrs = {i: a for i, _, a in r.items(PER_PROTEIN)}
    assert attrs["P1"]["chunks"] == 3 and "chunks" not in attrs["one"] and "truncated_from" not in attrs["one"]
    out = tmp_path / "k.h5"
    _stacked(out, max_length=10, long_policy="skip")
    with EmbeddingsReader(out) as r:
        assert sorted(r.failed()) == ["P1", "P1copy", "sp|Q9/slash"] and len(r.ids(PER_PROTEIN)) == 3


def test_no_protein_embedded_is_an_empty_array_of_the_models_width(tmp_path):
    out = tmp_path / "e.h5"
    _stacked(out, max_length=1, long_policy="skip")
    with EmbeddingsReader(out) as r:
        ids, x = r.matrix()
        assert r.failed()
    assert ids == ["one"] and x.shape == (1, 21)
    fasta = tmp_path / "long.fa"
    fasta.write_text(">a\nMKV\n")
    _stacked(tmp_path / "n.h5", fasta=fasta, max_length=1, long_policy="skip")
    with EmbeddingsReader(tmp_path / "n.h5") as r:
        ids, x = r.matrix()
    assert ids == [] and x.shape == (0, 21)


def test_the_command_line(tmp_path, run_cli):
    out = tmp_path / "s.h5"
    r = run_cli("embed", SMALL, "-m", "onehot", "--layout", "stacked", "-o", out)  # neither kind: per-protein
    assert r.exit_code == 0, r.stderr
    with h5py.File(out) as f:
        assert f["per_protein"].shape == (6, 21)
    r = run_cli("embed", SMALL, "-m", "onehot", "--layout", "stacked", "--per-residue", "-o", tmp_path / "x.h5")
    assert r.exit_code == 2 and "the stacked layout holds per-protein vectors only" in r.stderr
    assert not list(tmp_path.glob("x.h5*"))
    with pytest.raises(UsageError, match="stacked layout holds per-protein vectors only"):
        embed(SMALL, tmp_path / "y.h5", EmbedOptions(model="onehot", layout="stacked"))


def test_fit_and_predict_read_a_stacked_file_as_they_read_the_grouped_one(tmp_path, run_cli):
    """The same proteins in both layouts: the same head (fit is seeded) and the same predictions,
    per protein; a per-residue task is refused in one line (a stacked file has no rows)."""
    from conftest import ROOT

    example = ROOT / "protrans_cli" / "example_data"
    outputs = {}
    for layout in ("grouped", "stacked"):
        emb = tmp_path / f"{layout}.h5"
        for fasta, h5 in ((example / "loc_train.fasta", emb), (example / "loc_test.fasta", tmp_path / f"t_{layout}.h5")):
            r = run_cli("embed", fasta, "-m", "onehot", "--per-protein", "--layout", layout, "-o", h5)
            assert r.exit_code == 0, r.stderr
        head = tmp_path / f"head_{layout}"
        r = run_cli("fit", "loc", "--embeddings", emb, "--labels", example / "loc_train.fasta", "--max-epochs", "3",
                    "-j", "1", "--valid-fraction", "0.2", "-o", head)
        assert r.exit_code == 0, r.stderr
        pred = tmp_path / f"p_{layout}.csv"
        r = run_cli("predict", head, "--embeddings", tmp_path / f"t_{layout}.h5", "-o", pred,
                    "--labels", example / "loc_test.fasta")
        assert r.exit_code == 0, r.stderr
        outputs[layout] = (pred.read_text(), json.loads((head / "metrics.json").read_text())
                           if (head / "metrics.json").exists() else None, r.stderr.splitlines()[-3:])
    assert outputs["grouped"][0] == outputs["stacked"][0] and outputs["grouped"][0].count("\n") > 100
    assert outputs["grouped"][1] == outputs["stacked"][1]
    r = run_cli("fit", "ss3", "--embeddings", tmp_path / "stacked.h5", "--labels", example / "ss_train.csv",
                "-o", tmp_path / "ss")
    assert r.exit_code == 1 and r.stderr.count("protrans: error:") == 1
    assert "has no per_residue embeddings (it holds per_protein): a stacked file holds per-protein vectors only: " \
           "embed with --layout grouped for per-residue rows" in r.stderr

def test_predict_streams_a_stacked_file_a_slice_of_rows_at_a_time(tmp_path, run_cli, monkeypatch):
    """predict over a stacked file reads a slice of rows at a time and lists only that slice's
    proteins: a list of every protein (about 1 KB each) and a dictionary of every id, built for
    each slice, made a 50-million-protein file take hours and tens of GB. The predictions are those
    of the grouped file, --labels scores them the same, and truncated proteins are still named."""
    from conftest import ROOT

    import protrans_cli.heads.predict as predict_module
    from protrans_cli.io.stacked import StackedView

    example = ROOT / "protrans_cli" / "example_data"
    for layout in ("grouped", "stacked"):
        r = run_cli("embed", example / "loc_test.fasta", "-m", "onehot", "--per-protein", "--layout", layout,
                    "--max-length", "60", "--long-policy", "truncate", "-o", tmp_path / f"t_{layout}.h5")
        assert r.exit_code == 0, r.stderr
    r = run_cli("embed", example / "loc_train.fasta", "-m", "onehot", "--per-protein", "-o", tmp_path / "train.h5")
    head = tmp_path / "head"
    assert run_cli("fit", "loc", "--embeddings", tmp_path / "train.h5", "--labels", example / "loc_train.fasta",
                   "--max-epochs", "2", "-j", "1", "-o", head).exit_code == 0
    monkeypatch.setattr(predict_module, "CHUNK_PROTEINS", 7)  # several slices, the last one short
    runs = {layout: run_cli("predict", head, "--embeddings", tmp_path / f"t_{layout}.h5", "--labels",
                            example / "loc_test.fasta", "-o", tmp_path / f"{layout}.csv")
            for layout in ("grouped", "stacked")}
    for r in runs.values():
        assert r.exit_code == 0, r.stderr
    predicted = (tmp_path / "grouped.csv").read_text()
    assert (tmp_path / "stacked.csv").read_text() == predicted and predicted.count("\n") > 40
    # the same warning naming the truncated proteins, the same scores
    assert runs["stacked"].stderr == runs["grouped"].stderr.replace("grouped", "stacked")
    assert "were truncated by embed" in runs["stacked"].stderr

    def no_dictionary(self):
        raise AssertionError("a dictionary of every id was built")

    # without labels to match, no list or dictionary of every protein
    monkeypatch.setattr(StackedView, "rows", no_dictionary)
    monkeypatch.setattr(StackedView, "ids", no_dictionary)
    r = run_cli("predict", head, "--embeddings", tmp_path / "t_stacked.h5")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == predicted


@pytest.mark.slow
@pytest.mark.parametrize("start", ["fresh", "extending"])
def test_torchrun_ranks_give_the_stacked_file_of_one_process(tmp_path, start):
    """Also when the ranks' shards extend a finished stacked file (--resume): rank 0 merges them
    with its rows through OUTPUT.partial.base."""
    import os
    import subprocess
    import sys

    single = tmp_path / "single.h5"
    _stacked(single)
    out = tmp_path / "dist.h5"
    if start == "extending":
        _stacked(out, fasta=_first_three(tmp_path))
        (tmp_path / "first.fa").unlink()
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PROTRANS_NO_PROGRESS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "protrans_cli", "embed", str(SMALL), "-m", "onehot", "-o", str(out), "--layout", "stacked",
           *(["--resume"] if start == "extending" else [])]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    a, b = _columns(single), _columns(out)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist.h5", "single.h5"]  # shards and partial gone


def test_the_stacked_file_keeps_the_permissions_of_the_file_it_is_written_from(tmp_path):
    # as in the other layouts, whose partial file is renamed: a finished file made private
    # (0600) and extended by --resume stays private, and a partial file's mode is the output's
    import os
    import stat

    first = tmp_path / "first.fa"
    first.write_text("".join(">" + r for r in SMALL.read_text().split(">")[1:][:3]))
    for layout in ("grouped", "stacked"):
        out = tmp_path / f"{layout}.h5"
        embed(first, out, EmbedOptions(model="onehot", per_residue=False, layout=layout))
        os.chmod(out, 0o600)
        embed(SMALL, out, EmbedOptions(model="onehot", per_residue=False, layout=layout, resume=True))
        assert stat.S_IMODE(out.stat().st_mode) == 0o600, layout
    partial = tmp_path / "p.h5.partial"
    embed(SMALL, tmp_path / "g.h5", EmbedOptions(model="onehot", per_residue=False, layout="stacked"))
    stacked_module.unstack_file(tmp_path / "g.h5", partial)
    os.chmod(partial, 0o640)
    stacked_module.stack_file(partial, tmp_path / "p.h5", then="")
    assert stat.S_IMODE((tmp_path / "p.h5").stat().st_mode) == 0o640


def test_matrix_of_no_protein_has_the_storage_dtype_in_every_layout(tmp_path):
    # an empty matrix() is what a non-empty one would be but for N: float16 stays float16 in
    # the grouped and flat layouts too (they gave float32), as the stacked file gives it
    fasta = tmp_path / "long.fa"
    fasta.write_text(">a\nMKV\n")
    for layout in ("grouped", "flat", "stacked"):
        out = tmp_path / f"{layout}.h5"
        embed(fasta, out, EmbedOptions(model="onehot", per_residue=False, layout=layout, storage_dtype="float16",
                                       max_length=1, long_policy="skip"))
        with EmbeddingsReader(out) as r:
            ids, x = r.matrix()
        assert ids == [] and x.shape == (0, 21) and x.dtype == np.float16, layout


def test_rows_picked_from_the_array_in_any_order_at_any_layer(tmp_path, monkeypatch):
    """What fit and predict read of a stacked file: rows in the labels' order (repeats too), at
    the layer asked for, read a block at a time whatever the block size."""
    from protrans_cli.io.h5 import EmbeddingsWriter

    rng = np.random.default_rng(0)
    vectors = {f"p{i:03d}": rng.standard_normal((2, 5)).astype(np.float32) for i in range(40)}
    out = tmp_path / "s.h5"
    with EmbeddingsWriter(out, kinds=(PER_PROTEIN,), layout="stacked", attrs={"layers": [-2, -1]}) as w:
        for ident, vector in reversed(list(vectors.items())):
            w.write(ident, ident, "MKV", per_protein=vector)
            w.flush()
    monkeypatch.setattr(stacked_module, "BLOCK_BYTES", 7 * 2 * 5 * 4)  # 7 rows a block
    ids = sorted(vectors)
    wanted = [ids[i] for i in rng.integers(0, 40, size=60)]
    with EmbeddingsReader(out) as r:
        at = r._stacked.rows()
        for layer in (0, 1, -1, None):
            got = r._stacked.take([at[i] for i in wanted], layer)
            expected = np.stack([vectors[i][-1 if layer is None else layer] for i in wanted])
            np.testing.assert_array_equal(got, expected)
        all_ids, matrix = r.matrix()
    assert all_ids == ids and matrix.shape == (40, 2, 5)
    np.testing.assert_array_equal(matrix, np.stack([vectors[i] for i in ids]))


def test_a_layer_the_stacked_file_does_not_hold_is_refused_in_one_line(tmp_path):
    # a stacked file that records no layer numbers (EmbeddingsWriter from Python without a
    # `layers` attribute): fit --layer 3 on its (N, 2, D) array was an IndexError traceback
    from protrans_cli.heads.data import Matched, ProteinData
    from protrans_cli.io.h5 import EmbeddingsWriter

    items = [Matched(i, i, 3, {"y": n}) for n, i in enumerate(("a", "b"))]
    for shape in ((2, 4), (4,)):
        out = tmp_path / f"s{len(shape)}.h5"
        with EmbeddingsWriter(out, kinds=(PER_PROTEIN,), layout="stacked") as w:
            for item in items:
                w.write(item.id, item.id, "MKV", per_protein=np.ones(shape, np.float32))
        with pytest.raises(InputError, match=r"not layer 3"):
            ProteinData(str(out), items, layer=3)
        assert ProteinData(str(out), items, layer=-1).x.shape == (2, 4)


def _matched(embeddings, labels, task="protein", layer=-1, **kw):
    """(matched items, report, ProteinData) for `labels` against `embeddings`, as fit reads them."""
    from protrans_cli.heads.data import ProteinData, match_labels
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.tasks import get_task

    label_set = read_labels(labels, "auto")
    task = get_task(task)
    if task.name == "protein":
        task = task.with_classes_from(label_set.records)
    with EmbeddingsReader(embeddings) as r:
        items, report = match_labels(label_set, r, task, **kw)
    return items, report, ProteinData(embeddings, items, layer=layer)


def test_a_stacked_file_without_embeds_attributes_is_matched_as_one_with_them(tmp_path):
    # another tool's stacked file (the columns, no `layout` attribute): the labels were matched
    # through the per-dataset keys of a grouped file, which it has not ("it has no dataset per protein")
    out = tmp_path / "s.h5"
    _stacked(out)
    with h5py.File(out, "r+") as f:
        for name in list(f.attrs):
            del f.attrs[name]
    labels = tmp_path / "l.csv"
    labels.write_text("id,label\none,A\nrare,B\nsp|Q9/slash,A\n")
    items, _, data = _matched(out, labels)
    assert [m.id for m in items] == ["one", "rare", "sp|Q9/slash"] and data.x.shape == (3, 21)


def test_a_stacked_row_without_a_checksum_or_length_is_not_another_sequence(tmp_path):
    # stack_file writes "" and 0 where a protein records no checksum or length (another tool's
    # file): they were compared with the labels' sequences as if recorded, so every DeepLoc
    # record was "whose sequence differs", where the grouped file without them matched each
    out = tmp_path / "s.h5"
    _stacked(out)
    with h5py.File(out, "r+") as f:
        f["checksums"][...] = np.array([b""] * len(f["ids"]), dtype=object)
        f["lengths"][...] = 0
    labels = tmp_path / "deeploc.fasta"
    labels.write_text(">P1 Nucleus-S\nMKTAYIAKQRQISFVKSHFSRQ\n>one Cytoplasm-M\nM\n>rare Nucleus-U\nMKXUZOBA\n")
    items, report, data = _matched(out, labels, "loc")
    assert [m.id for m in items] == ["P1", "one", "rare"] and not report.problems and data.x.shape == (3, 21)
    with EmbeddingsReader(out) as r:
        assert r.facts("P1", PER_PROTEIN) == (None, None, None) and r.checksum_of("one", PER_PROTEIN) is None


def _replace(f, name, data, **kw):
    del f[name]
    f.create_dataset(name, data=data, **kw)


@pytest.mark.parametrize("damage, message", [
    (lambda f: _replace(f, "ids", np.arange(len(f["ids"]))), "ids column(s) hold int64"),
    (lambda f: _replace(f, "checksums", np.arange(len(f["ids"]))), "checksums column(s) hold int64"),
    (lambda f: _replace(f, "lengths", f["lengths"][()].astype(float)), "lengths column(s) hold float64"),
    (lambda f: _replace(f, "ids", np.array([b"\xff" + i.encode() for i in f["ids"].asstr()[()]], dtype="S20")),
     "ids column is not UTF-8 text"),
    (lambda f: _replace(f, "per_protein", np.zeros(len(f["ids"]), np.float32)), "is a float32 array of shape (6,), "
     "not (N, D) or (N, n_layers, D)"),
    (lambda f: _replace(f, "per_protein", np.zeros((len(f["ids"]), 2, 2, 21), np.float32)),
     "not (N, D) or (N, n_layers, D)"),
    (lambda f: _replace(f, "per_protein", np.array(["x"] * len(f["ids"]), dtype=object),
                        dtype=h5py.string_dtype()), "is an object array of shape (6,), not (N, D) or (N, n_layers, D) "
     "numbers"),  # ("a object array")
    (lambda f: f.__delitem__("ids"), "without its ids column"),
    (lambda f: (f.__delitem__("headers"), f.create_group("headers")), "without its headers column"),
    (lambda f: _replace(f, "lengths", f["lengths"][()][:-1]), "columns are not one per row of per_protein: damaged"),
], ids=["int ids", "int checksums", "float lengths", "ids not utf-8", "1-d", "4-d", "text", "no ids", "a group",
        "a row short"])
def test_a_damaged_stacked_file_is_one_error_line(tmp_path, run_cli, damage, message):
    # another tool's or a damaged stacked file: a traceback where a column was first read (or a
    # flat file of one protein "per_protein", where the ids were lost), or taken as it came
    out = tmp_path / "s.h5"
    _stacked(out)
    with h5py.File(out, "r+") as f:
        damage(f)
    labels = tmp_path / "l.csv"
    labels.write_text("id,label\none,A\nrare,B\n")
    r = run_cli("fit", "protein", "--embeddings", out, "--labels", labels, "-o", tmp_path / "head")
    assert r.exit_code == 1 and r.stderr.count("protrans: error:") == 1 and "Traceback" not in r.stderr, r.stderr
    assert message in r.stderr


def test_a_layer_a_stacked_file_without_layer_numbers_does_not_hold_is_refused(tmp_path):
    # as a grouped file's is: a 2-D file read at any --layer (silently its one layer), and an
    # index past a 3-D file's layer axis a traceback (IndexError)
    from protrans_cli.io.h5 import EmbeddingsWriter

    one = tmp_path / "one.h5"
    _stacked(one)
    three = tmp_path / "three.h5"
    vectors = {f"p{i}": np.arange(i, i + 15, dtype=np.float32).reshape(3, 5) for i in range(4)}
    with EmbeddingsWriter(three, kinds=(PER_PROTEIN,), layout="stacked", attrs={"layers": [-3, -2, -1]}) as w:
        for ident, vector in vectors.items():
            w.write(ident, ident, "MKV", per_protein=vector)
    for path in (one, three):
        with h5py.File(path, "r+") as f:
            for name in ("layers", "num_hidden_states"):
                f.attrs.pop(name, None)
    labels = tmp_path / "l.csv"
    labels.write_text("id,label\none,A\nrare,B\n")
    with pytest.raises(InputError, match="holds one layer .* not layer 2"):
        _matched(one, labels, layer=2)
    assert _matched(one, labels, layer=0)[2].x.shape == (2, 21)
    labels.write_text("id,label\np1,A\np3,B\n")
    with pytest.raises(InputError, match="holds 3 layers on the layer axis .* not layer 5"):
        _matched(three, labels, layer=5)
    np.testing.assert_array_equal(_matched(three, labels, layer=1)[2].x, [vectors["p1"][1], vectors["p3"][1]])


def test_rows_are_in_key_order_in_every_layout_and_run(tmp_path, monkeypatch):
    """`a/` is keyed `a%2F`, before `a&` as bytes though after it as an id: the stacked rows, a
    resumed run's and matrix() of a grouped file all take the keys' order."""
    fasta = tmp_path / "k.fa"
    want = ["a!", "a\x01", "a%", "a/", "a&", "b"]
    fasta.write_text(">a&\nMKV\n>a/\nMKL\n>a\x01\nMKI\n>a!\nMKA\n>b\nMKW\n>a%\nMKQ\n")
    from protrans_cli.io.h5 import escape_key

    assert want == sorted(want, key=lambda i: escape_key(i).encode()) != sorted(want)
    out = tmp_path / "s.h5"
    _stacked(out, fasta=fasta)
    assert _columns(out)["ids"] == want
    grouped = tmp_path / "g.h5"
    embed(fasta, grouped, EmbedOptions(model="onehot", per_residue=False))
    with EmbeddingsReader(grouped) as g, EmbeddingsReader(out) as s:
        (ids_g, x_g), (ids_s, x_s) = g.matrix(), s.matrix()
    assert ids_g == ids_s == want
    np.testing.assert_array_equal(x_g, x_s)
    resumed = tmp_path / "r.h5"
    original = _ctrl_c_on_batch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _stacked(resumed, fasta=fasta, max_batch_size=1)
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", original)
    _stacked(resumed, fasta=fasta, max_batch_size=1, resume=True)
    a, b = _columns(out), _columns(resumed)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


@pytest.mark.slow
def test_sigkill_at_random_moments_and_while_stacking_loses_nothing(tmp_path):
    """SIGKILL cannot be caught: killed while it embeds, or while it writes the stacked file at
    the end (the hidden .OUT.stacking there), a run's --resume gives the uninterrupted file."""
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from test_embed import generated_fasta

    fasta = generated_fasta(tmp_path / "g.fa", 20000, repeat_every=0, long_every=0)
    whole = tmp_path / "whole.h5"
    _stacked(whole, fasta=fasta, max_batch_size=8)
    want = _columns(whole)
    rng, killed, while_stacking = random.Random(1), 0, 0
    env = {**os.environ, "PROTRANS_NO_PROGRESS": "1"}
    for trial in range(4):
        out = tmp_path / f"k{trial}.h5"
        stacking = out.with_name(f".{out.name}.stacking")
        proc = subprocess.Popen([sys.executable, "-m", "protrans_cli", "embed", str(fasta), "-m", "onehot",
                                 "--layout", "stacked", "--max-batch-size", "8", "-o", str(out)], env=env,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        aimed = trial % 2 == 1  # every other run: killed while the stacked file is written
        while proc.poll() is None and time.time() < deadline:
            if (stacking.exists() if aimed else partial_path(out).exists()):
                break
            time.sleep(0.002)
        if not aimed:
            time.sleep(rng.uniform(0.0, 0.5))
        if proc.poll() is None:
            killed += 1
            while_stacking += stacking.exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _stacked(out, fasta=fasta, max_batch_size=8, resume=True)
        got = _columns(out)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
        assert not stacking.exists() and not partial_path(out).exists()
    assert killed >= 2 and while_stacking >= 1, (killed, while_stacking)


def test_matrix_of_a_grouped_or_flat_file_equals_its_items_in_key_order(tmp_path):
    """matrix() reads embed's own files by their keys, without the attributes items() reads;
    another tool's file (no `layout` attribute) goes through items()."""
    from protrans_cli.io.h5 import escape_key

    for layout in ("grouped", "flat"):
        out = tmp_path / f"{layout}.h5"
        embed(SMALL, out, EmbedOptions(model="onehot", per_residue=False, layout=layout, storage_dtype="float16"))
        with EmbeddingsReader(out) as r:
            ids, x = r.matrix()
            items = sorted(((i, a) for i, a, _ in r.items(PER_PROTEIN)), key=lambda t: escape_key(t[0]).encode())
        assert ids == [i for i, _ in items] and x.dtype == np.float16
        np.testing.assert_array_equal(x, np.stack([a for _, a in items]))
        with h5py.File(out, "r+") as f:  # another tool's file now
            for name in list(f.attrs):
                del f.attrs[name]
        with EmbeddingsReader(out) as r:
            ids_foreign, x_foreign = r.matrix()
        assert ids_foreign == ids
        np.testing.assert_array_equal(x_foreign, x)


@pytest.mark.parametrize("kind", ["per_protein", "per_residue"])
def test_a_flat_file_of_proteins_named_per_protein_and_ids_is_not_taken_for_a_stacked_one(tmp_path, run_cli, kind):
    """Its root holds datasets "per_protein" and "ids" as a stacked file's does, and its `layout`
    attribute says flat: it was "a stacked embeddings file without its lengths ... column(s):
    damaged" for the reader, --resume and merge."""
    fasta = tmp_path / "names.fa"
    fasta.write_text(">per_protein\nMKT\n>ids\nMKA\n>headers\nMKW\n")
    out = tmp_path / "flat.h5"
    result = run_cli("embed", fasta, "-m", "onehot", "--layout", "flat", f"--{kind.replace('_', '-')}", "-o", out)
    assert result.exit_code == 0, result.stderr
    with EmbeddingsReader(out) as r:
        assert r.layout == "flat" and sorted(r.ids()) == ["headers", "ids", "per_protein"]
    with fasta.open("a") as f:
        f.write(">extra\nMMM\n")
    result = run_cli("embed", fasta, "-m", "onehot", "--layout", "flat", f"--{kind.replace('_', '-')}", "-o", out,
                     "--resume")
    assert result.exit_code == 0, result.stderr
    result = run_cli("merge", out, "-o", tmp_path / "merged.h5")
    assert result.exit_code == 0, result.stderr
    with EmbeddingsReader(tmp_path / "merged.h5") as r:
        assert sorted(r.ids()) == ["extra", "headers", "ids", "per_protein"]


def test_matrix_of_an_own_file_whose_datasets_are_scalars_goes_through_items(tmp_path):
    """A file with embed's `layout` attribute whose datasets are scalars (not vectors): the
    fast path read each into a numpy scalar and failed with h5py's TypeError; items() reads them."""
    out = tmp_path / "g.h5"
    embed(SMALL, out, EmbedOptions(model="onehot", per_residue=False))
    with h5py.File(out, "r+") as f:
        group = f[PER_PROTEIN]
        for i, name in enumerate(sorted(group)):
            del group[name]
            group[name] = np.float32(i)
    from protrans_cli.io.h5 import escape_key

    with EmbeddingsReader(out) as r:
        ids, x = r.matrix()
        want = {i: a for i, a, _ in r.items(PER_PROTEIN)}
    assert ids == sorted(want, key=lambda i: escape_key(i).encode()) and x.shape == (len(ids),)
    np.testing.assert_array_equal(x, np.array([want[i] for i in ids]))


def test_merge_force_over_an_interrupted_extension_removes_its_link_and_ledger(tmp_path, monkeypatch):
    """merge --force removed OUT.partial alone: OUT.partial.base, a link to the replaced finished
    file, kept all of its space, and the ledger stayed beside nothing."""
    from protrans_cli.merge import merge

    out = _interrupted_extension(tmp_path, monkeypatch)
    part = tmp_path / "part.h5"
    _stacked(part)
    merge([part], out, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.fa", "part.h5", "s.h5"]


def test_an_extension_whose_finished_file_was_replaced_by_one_of_as_many_rows_is_one_error_line(tmp_path, monkeypatch):
    """Only the row count was compared: another stacked file of as many rows in the link's place
    (here the same ids, other sequences) was merged silently, its rows taken for the finished ones."""
    out = tmp_path / "s.h5"
    first = _first_three(tmp_path)
    _stacked(out, fasta=first)
    original = _ctrl_c_on_batch(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        _stacked(out, resume=True, max_batch_size=1)
    monkeypatch.setattr(OneHotEmbedder, "embed_batch", original)
    base = stacked_module.base_path(partial_path(out))
    other = tmp_path / "other.fa"
    other.write_text("".join(f">{r.splitlines()[0]}\nMKV{i}\n".replace(str(i), "W" * i)
                             for i, r in enumerate(first.read_text().split(">")[1:])))
    base.unlink()
    _stacked(base, fasta=other)
    with pytest.raises(RuntimeFailure, match=r"been changed or replaced since.*remove s\.h5\.partial"):
        _stacked(out, resume=True)
    assert len(_columns(out)["ids"]) == 3  # the finished file as it was


def test_a_link_left_by_a_kill_after_the_partial_file_went_is_removed_by_the_next_resume(tmp_path, monkeypatch):
    """A kill between the removal of OUT.partial and of OUT.partial.base left the link, holding
    the file before the extension (all of its space), and a --resume with nothing to add kept it."""
    import os
    import shutil

    out = tmp_path / "s.h5"
    _stacked(out)
    base = stacked_module.base_path(partial_path(out))
    shutil.copy(out, tmp_path / "before.h5")
    os.link(tmp_path / "before.h5", base)  # (the pre-extension file: another inode than OUT's now)
    assert _stacked(out, resume=True).num_resumed == 6
    assert not base.exists()


def test_stack_file_reads_rows_and_counts_through_cached_types(tmp_path):
    """stack_file reads each vector and int attribute with memory types made once (io/stacked.py):
    the rows, counts and texts are each protein's."""
    import numpy as np

    from protrans_cli.io.h5 import PER_PROTEIN, EmbeddingsWriter
    from protrans_cli.io.stacked import stack_file

    for dtype in ("float16", "float32"):
        with EmbeddingsWriter(tmp_path / f"{dtype}.h5", kinds=(PER_PROTEIN,), storage_dtype=dtype, attrs={},
                              finalize=False) as w:
            for i in range(5):
                w.write(f"p{i}", f"p{i} h", "M" * (i + 1), per_protein=np.full(4, i, np.float32),
                        extra_attrs={"truncated_from": 10 + i} if i % 2 else {"chunks": i})
        stack_file(tmp_path / f"{dtype}.h5.partial", tmp_path / f"{dtype}.stacked.h5", then="")
        with h5py.File(tmp_path / f"{dtype}.stacked.h5", "r") as f:
            np.testing.assert_array_equal(f["per_protein"][()], np.repeat(np.arange(5.0), 4).reshape(5, 4))
            assert f["per_protein"].dtype == np.dtype(dtype)
            assert f["lengths"][()].tolist() == [1, 2, 3, 4, 5]
            assert f["truncated_from"][()].tolist() == [0, 11, 0, 13, 0]
            assert f["chunks"][()].tolist() == [0, 0, 2, 0, 4]
            assert f["headers"].asstr()[()].tolist() == [f"p{i} h" for i in range(5)]


@pytest.mark.parametrize("odd", [5, 3])
def test_a_vector_of_another_width_in_the_partial_file_is_refused_not_read_past_its_row(tmp_path, odd):
    """HDF5 read each vector into its row without comparing shapes: a longer one was written past
    the row (past the buffer at the last row), a shorter one left the row's old values."""
    from protrans_cli.io.h5 import EmbeddingsWriter
    from protrans_cli.io.stacked import stack_file

    with EmbeddingsWriter(tmp_path / "x.h5", kinds=(PER_PROTEIN,), attrs={}, finalize=False) as w:
        for i in range(4):
            w.write(f"p{i}", f"p{i}", "MKV", per_protein=np.full(odd if i == 3 else 4, i, np.float32))
    with pytest.raises(RuntimeFailure, match=rf"protein 'p3' has a vector of shape \({odd},\), the others \(4,\): "
                                             "not one embedding run's"):
        stack_file(tmp_path / "x.h5.partial", tmp_path / "s.h5", then="")
    assert not (tmp_path / "s.h5").exists()


def test_a_full_disk_while_stacking_is_said_in_balanced_words(tmp_path):
    """HDF5's message for a full disk, cut at its first line, left a parenthesis open."""
    hdf5 = OSError(28, "Unable to synchronously write data (file write failed: time = Thu Dec  3 05:59:01 2026\n, "
                       "filename = '/x/.s.h5.stacking', file descriptor = 5, errno = 28, error message = 'No space "
                       "left on device', buf = 0x55d0, total write size = 4096, bytes this sub-write = 4096, bytes "
                       "actually written = 18446744073709551615, offset = 0)")
    message = stacked_module.stacking_failure(hdf5, tmp_path / "s.h5.partial").message
    assert message.startswith("cannot write the stacked file (No space left on device); every protein is in ")
    assert message.count("(") == message.count(")")


def test_a_stacked_file_with_two_rows_of_one_id_is_refused_in_one_line(tmp_path, run_cli):
    """Two rows of one id (a damaged or crafted file): predict wrote a prediction for each under
    that id, `embed --resume` failed with HDF5's "name already exists" traceback, and merge said
    the protein was also in the same file. fit refused it already."""
    out = tmp_path / "s.h5"
    _stacked(out)
    with h5py.File(out, "a") as f:
        ids = f["ids"].asstr()[()].tolist()
        f["ids"][1] = ids[0]
    labels = tmp_path / "l.csv"
    labels.write_text("id,label\n" + "".join(f"{ident},{'AB'[i % 2]}\n" for i, ident in enumerate(ids)))
    head = tmp_path / "head"
    r = run_cli("fit", "protein", "--embeddings", tmp_path / "s.h5", "--labels", labels, "--max-epochs", "1",
                "--bootstrap", "10", "--no-plots", "-j", "1", "-o", head)
    assert r.exit_code == 1 and f"protein {ids[0]!r} has two rows: ids must be unique" in r.stderr, r.stderr
    _stacked(tmp_path / "ok.h5")
    r = run_cli("fit", "protein", "--embeddings", tmp_path / "ok.h5", "--labels", labels, "--max-epochs", "1",
                "--bootstrap", "10", "--no-plots", "-j", "1", "-o", head)
    assert r.exit_code == 0, r.stderr
    said = f"{out}: protein {ids[0]!r} has two rows: ids must be unique"
    for args in (("predict", head, "--embeddings", out, "-o", tmp_path / "p.csv"),
                 ("embed", SMALL, "-m", "onehot", "--layout", "stacked", "-o", out, "--resume"),
                 ("merge", out, "-o", tmp_path / "m.h5")):
        r = run_cli(*args)
        assert r.exit_code == 1 and r.stderr.count("\n") == 1 and said in r.stderr, (args, r.stderr)
    assert not (tmp_path / "p.csv").exists() and not list(tmp_path.glob("m.h5*"))
    assert sorted(p.name for p in tmp_path.glob("s.h5*")) == ["s.h5"]


def test_a_stacked_file_whose_per_protein_is_a_group_is_one_line_on_resume(tmp_path, run_cli):
    """`embed --resume` of a finished stacked file whose per_protein is a group (damaged): an
    AttributeError traceback ('Group' object has no attribute 'ndim')."""
    out = tmp_path / "s.h5"
    _stacked(out)
    with h5py.File(out, "a") as f:
        del f["per_protein"]
        f.create_group("per_protein")
    r = run_cli("embed", SMALL, "-m", "onehot", "--layout", "stacked", "-o", out, "--resume")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"{out}: a stacked embeddings file without its per_protein column(s)" in r.stderr


def _many_rows(out, n: int) -> None:
    """A stacked file of `n` rows (SMALL's first row repeated, ids P0 ... P{n-1})."""
    _stacked(out)
    with h5py.File(out, "a") as f:
        for name in ("per_protein", *stacked_module.COLUMNS):
            old, dtype = f[name][:1], f[name].dtype
            del f[name]
            f.create_dataset(name, data=np.repeat(old, n, axis=0), dtype=dtype,
                             maxshape=(None, *old.shape[1:]))
        f["ids"][:] = np.array([f"P{i}" for i in range(n)], dtype=object)


def test_checking_a_stacked_files_ids_for_two_rows_of_one_id_holds_a_few_bytes_a_protein(tmp_path):
    """predict's streamed pass checks the ids first: it held about 69 bytes a protein at once (its
    docstring said 16), for 50 M proteins over 3 GB, in a pass that keeps memory bounded."""
    import tracemalloc

    n = 200_000
    out = tmp_path / "many.h5"
    _many_rows(out, n)
    with EmbeddingsReader(out) as reader:
        tracemalloc.start()
        try:
            reader._stacked.check_unique()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak / n < 24, peak / n  # 8 a protein, and one block of ids read at a time
    with h5py.File(out, "a") as f:
        f["ids"][n - 1] = "P7"
    with EmbeddingsReader(out) as reader, pytest.raises(InputError, match="protein 'P7' has two rows"):
        reader._stacked.check_unique()


def test_an_extension_killed_without_its_ledger_keeps_the_finished_files_proteins_done(tmp_path, monkeypatch):
    """An extension's partial file whose run was killed (no sealed ledger: its proteins are read
    back from the file) counts the finished file's proteins as done too, through its link: only
    the proteins neither holds are embedded, and the file is the one run's."""
    out = _interrupted_extension(tmp_path, monkeypatch)
    partial = partial_path(out)
    ledger_path(partial).unlink()  # (a SIGKILL leaves none)
    summary = _stacked(out, resume=True)
    assert summary.num_resumed == 4 and summary.num_embedded == 2
    _assert_one_runs_file(out, tmp_path / "whole.h5")


def test_matching_labels_to_part_of_a_stacked_file_holds_no_set_of_its_every_key(tmp_path, capsys):
    """fit (and predict --labels) on a labelled part of a stacked file held every protein's key
    in sets and an id -> row dict, and every column as Python strings: about 600 bytes a protein
    of the file (958 MB for 20,000 labels among 1,000,000 proteins; UniRef50's 50 M in 30 GB).
    The ids are looked up in one sorted array, the unlabelled counted, with the same report."""
    import tracemalloc

    from protrans_cli.heads.data import match_labels, report_unlabelled
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.tasks import get_task

    n, labelled = 100_000, 50
    out, labels = tmp_path / "many.h5", tmp_path / "l.csv"
    _many_rows(out, n)
    labels.write_text("id,label\n" + "".join(f"P{i},{'AB'[i % 2]}\n" for i in range(labelled)))
    label_set = read_labels(labels)
    task = get_task("protein").with_classes_from(label_set.records)
    with EmbeddingsReader(out) as reader:
        tracemalloc.start()
        try:
            matched, report = match_labels(label_set, reader, task)
            report_unlabelled(out, labels, [report, report], "not used")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak / n < 150, peak / n  # (about 100: the sorted ids, their rows, lengths and checksums)
        assert [m.key for m in matched] == [f"P{i}" for i in range(labelled)] and len(report.unlabelled) == n - labelled
        unlabelled = sorted(f"P{i}" for i in range(labelled, n))
        assert (f"{out}: {n - labelled} protein(s) have no label in {labels} and are not used "
                f"({', '.join(unlabelled[:5])} and {n - labelled - 5} more)") in capsys.readouterr().err
        # near misses (of the unlabelled proteins' ids) still named where a record has no embedding
        labels.write_text("id,label\nP7,A\np7,A\np77777,B\n")
        _, report = match_labels(read_labels(labels), reader, task, on_mismatch="missing")
        assert report.missing == ["p7", "p77777"] and report.near_misses == [("p77777", "P77777")]


def test_knn_reads_a_stacked_reference_without_its_id_dict_or_a_copy_of_the_stored_array(tmp_path):
    """knn --reference (and project) on a stacked file held the id -> row dict beside the ids
    and the stored array whole beside its float32 copy: the ids are read as a list (their
    uniqueness checked by hash) and the vectors into float32 a block at a time, the same."""
    import tracemalloc

    from protrans_cli.knn import _vectors

    n = 100_000
    out = tmp_path / "many.h5"
    _many_rows(out, n)
    with h5py.File(out, "a") as f:  # (rows that differ, stored as float16)
        stored = np.random.default_rng(0).standard_normal((n, 64)).astype(np.float16)
        del f["per_protein"]
        f.create_dataset("per_protein", data=stored)
    tracemalloc.start()
    try:
        ids, vectors, _ = _vectors(out, -1, "reference")
        peak = tracemalloc.get_traced_memory()[1] - vectors.nbytes
    finally:
        tracemalloc.stop()
    assert peak / n < 150, peak / n  # (about 107: the ids' list and their hashes; 300 with the dict and array)
    assert ids == [f"P{i}" for i in range(n)] and vectors.dtype == np.float32
    assert np.array_equal(vectors, stored.astype(np.float32))


def test_an_id_that_is_not_utf8_text_is_in_no_stacked_file(tmp_path):
    """A stacked file's ids are looked up by their UTF-8 bytes: an id holding a byte that is not
    UTF-8 (a lone surrogate, as Python decodes such a byte of a command line or file name) was a
    UnicodeEncodeError traceback from get and key_for, where the id -> row dict said "no such
    protein". It is in no file (every stored id is UTF-8); the ids around it are still found."""
    out = tmp_path / "s.h5"
    _many_rows(out, 3)
    with EmbeddingsReader(out) as reader:
        assert reader.key_for("P\udcff") is None and reader.key_for("P1") == "P1"
        with pytest.raises(InputError, match="no per_protein embedding for this id"):
            reader._stacked.get("P\udcff")
