"""The HDF5 embeddings file: key escaping, the streaming writer (layouts, attributes, failures,
partial files, resume) and the reader others rely on."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from protrans_cli.errors import InputError, UsageError
from protrans_cli.io.h5 import (PER_PROTEIN, PER_RESIDUE, EmbeddingsReader, EmbeddingsWriter, escape_key,
                                partial_path, sequence_checksum, unescape_key)


@pytest.mark.parametrize("ident", ["sp|P12345|X_HUMAN", "a/b", "a%2Fb", ".", "..", "tab\there", "100%", "é/ü"])
def test_escape_is_reversible_and_hdf5_safe(ident, tmp_path):
    key = escape_key(ident)
    assert unescape_key(key) == ident
    assert "/" not in key and key not in (".", "..")
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f.create_dataset(key, data=[1])
        assert list(f.keys()) == [key]


def test_sequence_checksum_is_the_md5_of_the_upper_cased_residues_without_whitespace():
    # how labels carrying sequences (NetSurfP's CSV) find their embeddings: the md5 of the residues
    import hashlib

    want = "md5:" + hashlib.md5(b"MKVLA").hexdigest()
    assert sequence_checksum("MKVLA") == want
    assert sequence_checksum("mkv la\n") == want and sequence_checksum(" MkV\tLa\r\n") == want


def test_pooling_kind_reads_the_pooling_attribute_embed_and_import_esm_write():
    # the attribute holds words ("cls: the hidden state of the <cls> token"), not a bare "cls":
    # fit, predict and knn compare a head's pooling with a file's through pooling_kind
    from protrans_cli.esm_import import BOS_POOLING, POOLING
    from protrans_cli.io.h5 import pooling_kind

    assert pooling_kind(BOS_POOLING) == "cls" and pooling_kind("cls: the hidden state of the [CLS] token") == "cls"
    assert pooling_kind(POOLING) == "mean" and pooling_kind(None) == "mean" and pooling_kind("") == "mean"


def test_a_percent_sign_that_starts_no_escape_is_read_as_written():
    # another tool's key (a ProtTrans header line) with a `%` not followed by two upper-case hex
    # digits: no escape of escape_key's, so the id is the key as written
    for key in ("growth 5%A-B", "x%1z", "100%", "a%2f"):
        assert unescape_key(key) == key


def test_escaping_never_collapses_two_ids():
    ids = ["a/b", "a%2Fb", "a_b", "a%b", "a%25b"]
    assert len({escape_key(i) for i in ids}) == len(ids)


def _write(path, ids, kinds=(PER_RESIDUE, PER_PROTEIN), layout="grouped", **kw):
    rng = np.random.default_rng(0)
    arrays = {}
    with EmbeddingsWriter(path, kinds=kinds, layout=layout, attrs={"model": "m", "layers": [-1]}, **kw) as w:
        for ident in ids:
            res = rng.standard_normal((3, 4)).astype(np.float32)
            arrays[ident] = res
            w.write(ident, f"{ident} some header", "MKV", per_residue=res, per_protein=res.mean(0))
            w.flush()
        w.record_failure("lost", "out of memory")
    return arrays


@pytest.mark.parametrize("layout, kinds", [("grouped", (PER_RESIDUE, PER_PROTEIN)), ("stacked", (PER_PROTEIN,))])
def test_an_id_that_is_not_a_str_is_a_usage_error(tmp_path, layout, kinds):
    # get(0) (ids read from a table as numbers, a list position) was a TypeError from inside the
    # key escaping: "expected string or bytes-like object, got 'int'"
    out = tmp_path / "e.h5"
    _write(out, ["0", "b"], kinds=kinds, layout=layout)
    with EmbeddingsReader(out) as r:
        for ident, hint in ((0, r"int 0 \(str\(0\) if that is its id\)"), (np.int64(0), r"int64 .*\(str\(0\) if"),
                            (None, "NoneType None")):
            with pytest.raises(UsageError, match=f"a protein id is a str, got {hint}"):
                r.get(ident, PER_PROTEIN)
            with pytest.raises(UsageError, match="a protein id is a str"):
                r.key_for(ident, PER_PROTEIN)
        assert r.get("0", PER_PROTEIN).shape == (4,)


def test_grouped_layout_round_trip(tmp_path):
    out = tmp_path / "e.h5"
    arrays = _write(out, ["a/1", "b"])
    assert out.exists() and not partial_path(out).exists()
    with EmbeddingsReader(out) as r:
        assert r.layout == "grouped" and r.kinds == (PER_RESIDUE, PER_PROTEIN)
        assert sorted(r.ids()) == ["a/1", "b"]
        np.testing.assert_array_equal(r.get("a/1"), arrays["a/1"])
        np.testing.assert_allclose(r.get("a/1", PER_PROTEIN), arrays["a/1"].mean(0), rtol=1e-6)
        ds = r.dataset("a/1")
        assert ds.attrs["length"] == 3 and ds.attrs["header"] == "a/1 some header"
        assert ds.attrs["checksum"] == sequence_checksum("MKV")
        assert r.failed() == {"lost": "out of memory"}
        assert r.attrs["model"] == "m" and r.attrs["layout"] == "grouped"
        assert r.checksums()[sequence_checksum("mkv")] in {"a/1", "b"}
        assert r.dim() == 4


@pytest.mark.parametrize("layout, kinds", [("grouped", (PER_RESIDUE, PER_PROTEIN)), ("flat", (PER_PROTEIN,)),
                                           ("stacked", (PER_PROTEIN,))])
def test_a_reader_pickles_to_one_that_reads_the_same_file(tmp_path, layout, kinds):
    # A torch Dataset holding a reader, in DataLoader workers under spawn (macOS) or forkserver
    # (Python 3.14 on Linux), is pickled: "TypeError: h5py objects cannot be pickled" in every worker
    import pickle

    out = tmp_path / "e.h5"
    arrays = _write(out, ["a/1", "b"], kinds=kinds, layout=layout)
    with EmbeddingsReader(out) as r:
        r.ids(PER_PROTEIN)  # (what the reader has learnt travels with it)
        copy = pickle.loads(pickle.dumps(r))
        try:
            assert copy.layout == r.layout and copy.kinds == r.kinds and copy.attrs == r.attrs
            assert copy.ids(PER_PROTEIN) == r.ids(PER_PROTEIN)
            for ident in arrays:
                np.testing.assert_array_equal(copy.get(ident, PER_PROTEIN), r.get(ident, PER_PROTEIN))
            np.testing.assert_array_equal(copy.matrix()[1], r.matrix()[1])
        finally:
            copy.close()
        assert r.get("b", PER_PROTEIN).shape == (4,)  # (the original still reads)
        state = pickle.dumps(r)
    with pytest.raises(UsageError, match="closed"):  # (a closed reader opens nothing elsewhere)
        pickle.dumps(r)
    _write(out, ["a/1", "b", "c"], kinds=kinds, layout=layout)  # (replaced in between)
    with pytest.raises(InputError, match=r"e\.h5: changed since the EmbeddingsReader was sent"):
        pickle.loads(state)
    os.unlink(out)
    with pytest.raises(InputError, match="removed since the EmbeddingsReader was sent"):
        pickle.loads(state)


def test_a_dataset_holding_a_reader_runs_in_spawned_dataloader_workers(tmp_path):
    torch = pytest.importorskip("torch")
    out = tmp_path / "e.h5"
    arrays = _write(out, ["a/1", "b", "c"])
    with EmbeddingsReader(out) as r:
        rows = list(torch.utils.data.DataLoader(_Residues(r), batch_size=None, num_workers=1,
                                                multiprocessing_context="spawn"))
    assert len(rows) == 3
    for ident, got in zip(sorted(arrays), rows):
        np.testing.assert_array_equal(got.numpy(), arrays[ident])


def _shared_lock_held(path) -> bool:
    """Whether another open file description holds a lock on `path` (an open reader's HDF5 shared
    lock makes an exclusive one fail)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return _others_lock(fd)
    finally:
        os.close(fd)


def _others_lock(fd) -> bool:
    """Whether an open file description other than `fd`'s holds a lock on its file (flock's locks
    belong to open file descriptions: asked through the one that holds the only lock, an
    exclusive lock is granted, replacing it)."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _in_a_fork(work) -> str:
    """`work()`'s text (or its exception's) from a forked child, which ends by os._exit as
    multiprocessing's and DataLoader's workers do."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            said = work()
        except BaseException as exc:
            said = f"{type(exc).__name__}: {exc}"
        os.write(write, said.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        said = pipe.read().decode()
    assert os.waitpid(pid, 0)[1] == 0
    return said


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
@pytest.mark.parametrize("layout, kinds", [("grouped", (PER_RESIDUE, PER_PROTEIN)), ("flat", (PER_PROTEIN,)),
                                           ("stacked", (PER_PROTEIN,))])
def test_a_reader_forked_into_another_process_opens_the_file_again_there(tmp_path, layout, kinds):
    # Under fork (DataLoader workers, Linux's default start method before Python 3.14) the child read
    # through the parent's HDF5 handle, with a copy of HDF5's state and metadata cache of the parent's
    out = tmp_path / "e.h5"
    _write(out, ["a/1", "b", "c"], kinds=kinds, layout=layout)
    with EmbeddingsReader(out) as r:
        expected = {ident: r.get(ident, PER_PROTEIN) for ident in r.ids(PER_PROTEIN)}  # (read once: groups cached)
        theirs = r.file.id.get_vfd_handle()
        assert _shared_lock_held(out)

        def read_every_protein():
            got = {ident: r.get(ident, PER_PROTEIN) for ident in r.ids(PER_PROTEIN)}
            assert sorted(got) == sorted(expected)
            assert all(np.array_equal(got[i], expected[i]) for i in expected)
            # its own open of the file (HDF5's shared lock on its own open file description, beside the
            # parent's): through the parent's, inherited, an exclusive lock was granted
            assert _others_lock(r.file.id.get_vfd_handle())
            r.close()
            return "read"

        assert [_in_a_fork(read_every_protein) for _ in range(2)] == ["read", "read"]

        def close_unused():
            r.close()  # (a copy never used in the child)
            try:
                r.ids()
            except UsageError as exc:
                return str(exc)
            return "still open"

        assert "this EmbeddingsReader is closed" in _in_a_fork(close_unused)
        assert _shared_lock_held(out)  # the parent's lock, and its reads, are the parent's still
        assert r.file.id.get_vfd_handle() == theirs
        np.testing.assert_array_equal(np.stack([r.get(i, PER_PROTEIN) for i in expected]),
                                      np.stack(list(expected.values())))
        _write(tmp_path / "other.h5", ["x"], kinds=kinds, layout=layout)
        os.replace(tmp_path / "other.h5", out)  # (replaced after the parent opened it)
        assert "e.h5: changed since the EmbeddingsReader was opened in the process" in _in_a_fork(r.ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_dataset_holding_a_reader_runs_in_forked_dataloader_workers(tmp_path):
    torch = pytest.importorskip("torch")
    out = tmp_path / "e.h5"
    _write(out, [f"p{i}" for i in range(8)])
    with EmbeddingsReader(out) as r:
        expected = {ident: r.get(ident, PER_RESIDUE) for ident in r.ids(PER_RESIDUE)}
        loader = torch.utils.data.DataLoader(_ResiduesAndHandles(r), batch_size=None, num_workers=2,
                                             multiprocessing_context="fork")
        got = list(loader)
        assert [rows.numpy().tolist() for rows, _, _ in got] == [expected[i].tolist() for i in sorted(expected)]
        assert len({pid for _, pid, _ in got} - {os.getpid()}) == 2  # (both workers read)
        assert all(others for _, _, others in got)  # each through its own open of the file
        assert _shared_lock_held(out)
        np.testing.assert_array_equal(r.get("p3", PER_RESIDUE), expected["p3"])


class _ResiduesAndHandles:
    """A reader's per-residue arrays, each with the worker's pid and whether the reader's open file
    description is its own (another holds a lock on the file: the parent's)."""

    def __init__(self, reader):
        self.reader, self.ids = reader, sorted(reader.ids(PER_RESIDUE))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        import torch

        rows = torch.from_numpy(self.reader.get(self.ids[i], PER_RESIDUE))
        return rows, os.getpid(), _others_lock(self.reader.file.id.get_vfd_handle())


class _Residues:
    """A map-style Dataset of a reader's per-residue arrays (module level: spawn pickles it)."""

    def __init__(self, reader):
        self.reader, self.ids = reader, sorted(reader.ids(PER_RESIDUE))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        import torch

        return torch.from_numpy(self.reader.get(self.ids[i], PER_RESIDUE))


def test_flat_layout_is_what_prottrans_tools_read(tmp_path):
    out = tmp_path / "flat.h5"
    arrays = _write(out, ["x", "sp|y/2"], kinds=(PER_PROTEIN,), layout="flat", storage_dtype="float16")
    with h5py.File(out, "r") as f:  # a plain reader, as bio_embeddings users have
        assert sorted(f.keys()) == ["sp|y%2F2", "x"]
        assert f["x"].shape == (4,) and f["x"].dtype == np.float16
        # biotrainer's (and bio_embeddings users') way of reading a flat file: ids in original_id
        by_id = {f[k].attrs["original_id"]: f[k][()] for k in f}
        assert sorted(by_id) == ["sp|y/2", "x"]
        np.testing.assert_array_equal(by_id["sp|y/2"], f["sp|y%2F2"][()])
    with EmbeddingsReader(out) as r:
        assert r.layout == "flat" and r.kinds == (PER_PROTEIN,)
        np.testing.assert_allclose(r.get("x", PER_PROTEIN), arrays["x"].mean(0), atol=1e-3)


def test_a_flat_file_of_several_layers_per_protein_is_read_as_per_protein(tmp_path):
    # (n_layers, D) vectors have the shape of a per-residue array: the file's `kind` attribute says
    # which they are (guessed from the shapes, they were read as per-residue arrays of 2 rows)
    out = tmp_path / "flat.h5"
    vectors = {"a": np.arange(8, dtype=np.float32).reshape(2, 4), "b": -np.ones((2, 4), np.float32)}
    with EmbeddingsWriter(out, kinds=(PER_PROTEIN,), layout="flat", attrs={"layers": [-2, -1]}) as w:
        for ident, vector in vectors.items():
            w.write(ident, ident, "MKV", per_protein=vector)
    with EmbeddingsReader(out) as r:
        assert r.kinds == (PER_PROTEIN,)
        # (length, truncated_from, checksum): the `length` attribute, not the layer axis's 2
        assert r.facts("a") == (3, None, sequence_checksum("MKV"))
        ids, x = r.matrix()
    assert ids == ["a", "b"]
    np.testing.assert_array_equal(x, np.stack([vectors["a"], vectors["b"]]))


@pytest.mark.parametrize("kw,message", [
    (dict(kinds=(PER_RESIDUE, PER_PROTEIN), layout="flat"), "the flat layout holds one kind only"),
    (dict(kinds=("per_token",)), r"kinds must be a non-empty subset of \('per_residue', 'per_protein'\)"),
    (dict(kinds=()), "kinds must be a non-empty subset"),
    (dict(kinds=("contacts",), layout="flat"), "contact maps are written in the grouped layout only"),
    (dict(layout="table"), "^layout must be one of grouped, flat, stacked, got 'table'$"),
    (dict(layout="stacked"), "the stacked layout holds per-protein vectors only"),
    (dict(storage_dtype="int8"), "^storage_dtype must be one of float32, float16, got 'int8'$"),
    (dict(compression="zstd"), "^compression must be one of none, gzip, lzf, got 'zstd'$"),
])
def test_writer_arguments_a_caller_gets_wrong_are_refused_before_any_file(tmp_path, kw, message):
    with pytest.raises(UsageError, match=message):
        EmbeddingsWriter(tmp_path / "f.h5", **kw)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("compression", ["gzip", "lzf", "none"])
def test_compression_keeps_values(tmp_path, compression):
    out = tmp_path / "c.h5"
    arrays = _write(out, ["a"], compression=compression)
    with h5py.File(out, "r") as f:
        assert f["per_residue/a"].compression == (None if compression == "none" else compression)
        np.testing.assert_array_equal(f["per_residue/a"][()], arrays["a"])


def test_interrupted_writer_leaves_readable_partial_and_resume_completes(tmp_path):
    out = tmp_path / "r.h5"
    with pytest.raises(KeyboardInterrupt):
        with EmbeddingsWriter(out, kinds=(PER_RESIDUE,), attrs={"model": "m"}) as w:
            w.write("a", "a", "MK", per_residue=np.ones((2, 3)))
            w.flush()
            raise KeyboardInterrupt
    assert not out.exists()
    with EmbeddingsReader(partial_path(out)) as r:
        assert r.ids() == ["a"]
    with EmbeddingsWriter(out, kinds=(PER_RESIDUE,), attrs={"model": "m"}, resume=True) as w:
        assert w.done_ids() == {"a"}
        w.write("b", "b", "MKV", per_residue=np.zeros((3, 3)))
    with EmbeddingsReader(out) as r:
        assert sorted(r.ids()) == ["a", "b"]
    assert not partial_path(out).exists()


def test_resume_refuses_other_settings(tmp_path):
    out = tmp_path / "r.h5"
    _write(out, ["a"])
    with pytest.raises(UsageError, match="model"):
        EmbeddingsWriter(out, kinds=(PER_RESIDUE, PER_PROTEIN), attrs={"model": "other", "layers": [-1]},
                         resume=True)


def test_a_writer_stopped_before_its_first_protein_leaves_no_file(tmp_path):
    # an empty OUT.partial was refused by the same command run again as an interrupted run's work
    out = tmp_path / "e.h5"
    with pytest.raises(KeyboardInterrupt):
        with EmbeddingsWriter(out, kinds=(PER_PROTEIN,)):
            raise KeyboardInterrupt
    assert sorted(os.listdir(tmp_path)) == []
    with pytest.raises(KeyboardInterrupt):  # a failure recorded is work: kept, resumable
        with EmbeddingsWriter(out, kinds=(PER_PROTEIN,)) as w:
            w.record_failure("p", "longer than --max-length 10")
            raise KeyboardInterrupt
    with h5py.File(partial_path(out), "r") as f:
        assert json.loads(f.attrs["failed"]) == {"p": "longer than --max-length 10"}


def test_protein_missing_a_kind_is_not_done(tmp_path):
    out = tmp_path / "half.h5"
    w = EmbeddingsWriter(out, kinds=(PER_RESIDUE, PER_PROTEIN))
    w.file[PER_RESIDUE].create_dataset("a", data=np.ones((2, 2)))  # killed before per_protein
    w.close()
    w = EmbeddingsWriter(out, kinds=(PER_RESIDUE, PER_PROTEIN), resume=True)
    assert w.done_ids() == set()
    w.write("a", "a", "MK", per_residue=np.zeros((2, 2)), per_protein=np.zeros(2))  # overwrites
    w.close(complete=True)
    with EmbeddingsReader(out) as r:
        np.testing.assert_array_equal(r.get("a"), np.zeros((2, 2)))


@pytest.mark.parametrize("layout", ["grouped", "flat"])
def test_merge_copies_datasets_and_failures(tmp_path, layout):
    kinds = (PER_RESIDUE, PER_PROTEIN) if layout == "grouped" else (PER_PROTEIN,)
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    arrays = {**_write(a, ["x", "sp|P1/é"], kinds=kinds, layout=layout), **_write(b, ["y"], kinds=kinds, layout=layout)}
    with EmbeddingsWriter(b, kinds=kinds, layout=layout, attrs={"model": "m", "layers": [-1]}, resume=True) as w:
        w.record_failure("x", "failed in this shard, embedded in the other")
    with EmbeddingsWriter(tmp_path / "m.h5", kinds=kinds, layout=layout) as m:
        assert m.copy_from(str(a)) == 2
        assert m.copy_from(str(b)) == 1
        assert m.copy_from(str(b)) == 1  # a shard copied again (a merge killed before it removed them)
    with EmbeddingsReader(tmp_path / "m.h5") as r:
        assert sorted(r.ids(kinds[0])) == ["sp|P1/é", "x", "y"]
        assert r.dataset("sp|P1/é", kinds[0]).attrs["id"] == "sp|P1/é"
        for ident, res in arrays.items():
            np.testing.assert_allclose(r.get(ident, PER_PROTEIN), res.mean(0), rtol=1e-6)
        assert json.loads(r.attrs["failed"]) == {"lost": "out of memory"}  # x is done


def test_stored_proteins_reads_other_writers_attributes(tmp_path, monkeypatch):
    """The low-level reader behind --resume and the torchrun merge, on what older versions and
    other tools write: fixed-length byte strings, no id attribute, truncated proteins, groups."""
    from protrans_cli.io import h5 as h5_module
    from protrans_cli.io.h5 import stored_proteins

    monkeypatch.setattr(h5_module, "_ATTR_TYPES", {})  # a fresh process: a resume reads before it writes

    with h5py.File(tmp_path / "o.h5", "w") as f:
        d = f.create_dataset("a%2Fb", data=np.ones(3))
        d.attrs["id"], d.attrs["checksum"] = "a/b", "md5:x"
        d = f.create_dataset("c", data=np.ones(3))
        d.attrs["id"], d.attrs["checksum"] = np.bytes_(b"fixed"), np.bytes_(b"md5:y")
        d = f.create_dataset("t", data=np.ones(3))
        d.attrs["checksum"], d.attrs["truncated_from"] = "md5:z", 5
        f.create_group("group")
        f.create_dataset("no%2Fid", data=np.ones(3))
    with h5py.File(tmp_path / "o.h5", "r") as f:
        assert sorted(stored_proteins(f)) == [("a/b", "md5:x"), ("fixed", "md5:y"), ("no/id", None), ("t", None)]
        assert sorted(stored_proteins(f, checksums=False)) == [("a/b", None), ("fixed", None), ("no/id", None),
                                                               ("t", None)]
    _write(tmp_path / "then.h5", ["x"])  # the writer's attribute types after the reader's (a KeyError once)
    with EmbeddingsReader(tmp_path / "then.h5") as r:
        assert r.dataset("x").attrs["id"] == "x"


def test_failed_attribute_follows_every_change_though_written_only_on_change(tmp_path):
    """The writer rewrites `failed` only when it changed (speed): what a reader sees after each
    flush must still be the writer's list, also in a resumed file."""
    path = tmp_path / "f.h5"

    def on_disk():
        with h5py.File(partial_path(path), "r") as f:
            return json.loads(f.attrs["failed"])

    w = EmbeddingsWriter(path, kinds=(PER_PROTEIN,), attrs={"model": "m"})
    assert on_disk() == {}
    w.record_failure("a", "too long")
    w.flush()
    assert on_disk() == {"a": "too long"}
    w.flush()
    w.write("a", "a", "MKV", per_protein=np.zeros(2, np.float32))  # embedded after all
    w.record_failure("b", "out of memory")
    w.flush()
    assert on_disk() == {"b": "out of memory"}
    w.file.close()  # a kill: the partial file stays
    w2 = EmbeddingsWriter(path, kinds=(PER_PROTEIN,), attrs={"model": "m"}, resume=True)
    assert w2.failed == {"b": "out of memory"}
    w2.write("b", "b", "MKV", per_protein=np.zeros(2, np.float32))
    w2.close(complete=True)
    with h5py.File(path, "r") as f:
        assert json.loads(f.attrs["failed"]) == {}


def test_read_array_reads_what_h5py_reads(tmp_path):
    """fit and predict read per-protein (and other) arrays through `read_array` (speed): the same
    dtype, shape and values as `group[key][()]`, whatever was stored."""
    from protrans_cli.io.h5 import read_array

    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "a.h5", "w") as f:
        for dtype in ("<f4", "<f2", "<f8", ">f4", "<i8"):
            f[f"v{dtype}"] = (rng.normal(size=5) * 100).astype(dtype)
            f[f"m{dtype}"] = (rng.normal(size=(2, 3, 4)) * 100).astype(dtype)
        f["empty"] = np.zeros((0, 4), np.float32)
        f["scalar"] = np.float32(3.5)
        f.create_dataset("gzip", data=rng.normal(size=(6, 4)).astype(np.float32), compression="gzip")
    with h5py.File(tmp_path / "a.h5", "r") as f:
        for key in f.keys():
            got, want = read_array(f, key), f[key][()]
            assert np.asarray(got).dtype == np.asarray(want).dtype and np.shape(got) == np.shape(want), key
            np.testing.assert_array_equal(got, want)


def test_dataset_facts_read_low_level_what_h5py_reads(tmp_path, monkeypatch):
    """fit and predict match labels through `dataset_facts` / `dataset_checksum_of` (h5py's
    low-level calls, for speed): the same length, truncation and checksum as h5py's attributes
    give, on embed's files and on what other writers store (other integer and string types,
    bio_embeddings' md5 keys, no attributes at all, arrays with a layer axis)."""
    from protrans_cli.io import h5 as h5_module
    from protrans_cli.io.h5 import _plain, dataset_checksum, dataset_checksum_of, dataset_facts

    monkeypatch.setattr(h5_module, "_ATTR_TYPES", {})  # a fresh process: read before any write
    md5 = "0123456789abcdef0123456789abcdef"
    with h5py.File(tmp_path / "o.h5", "w") as f:
        d = f.create_dataset("embed", data=np.zeros((4, 2), np.float32))
        d.attrs["length"], d.attrs["checksum"] = 4, "md5:e"
        d = f.create_dataset("int32", data=np.zeros((2, 4, 2), np.float32))  # a layer axis
        d.attrs["length"], d.attrs["checksum"] = np.int32(4), np.bytes_(b"md5:fixed")
        d = f.create_dataset("uint8_text", data=np.zeros((5, 2), np.float16))
        d.attrs["length"], d.attrs["checksum"] = np.uint8(5), np.array(["md5:a"], dtype=h5py.string_dtype())
        d = f.create_dataset("text_length", data=np.zeros((3, 2)))
        d.attrs["length"], d.attrs["checksum"] = "3", ""
        d = f.create_dataset("cut", data=np.zeros((2, 2)))
        d.attrs["length"], d.attrs["truncated_from"], d.attrs["checksum"] = 2, np.int16(9), "md5:prefix"
        f.create_dataset(md5, data=np.zeros((6, 2))).attrs["original_id"] = "P1 some protein"
        f.create_dataset("bare", data=np.zeros((7, 2)))
        # 32 hex digits without `original_id`: a key written by hand (docs/formats.md: no checksum),
        # not bio_embeddings' md5 of the sequence
        f.create_dataset(md5[::-1], data=np.zeros((8, 2)))
        # 40 hex digits (a SHA-1 key) with `original_id`: no md5 of the sequence, no checksum
        f.create_dataset(md5 + "01234567", data=np.zeros((9, 2))).attrs["original_id"] = "P2"
        f.create_dataset("per_protein", data=np.zeros(3))
    with h5py.File(tmp_path / "o.h5", "r") as f:
        for key in f.keys():
            ds = f[key]
            length = int(ds.shape[-2]) if ds.ndim >= 2 else \
                int(_plain(ds.attrs["length"])) if "length" in ds.attrs else None
            cut = int(ds.attrs["truncated_from"]) if "truncated_from" in ds.attrs else None
            want = (length, cut, dataset_checksum(key, ds.attrs))  # (a truncated one's: its prefix's)
            assert dataset_facts(f, key) == want, key
            assert dataset_checksum_of(f, key) == dataset_checksum(key, ds.attrs), key
        assert dataset_facts(f, "int32") == (4, None, "md5:fixed")
        assert dataset_facts(f, md5) == (6, None, "md5:" + md5)
        assert dataset_facts(f, md5[::-1]) == (8, None, None)
        assert dataset_facts(f, md5 + "01234567") == (9, None, None)
        assert dataset_facts(f, "cut") == (2, 9, "md5:prefix") and dataset_checksum_of(f, "cut") == "md5:prefix"
        assert dataset_facts(f, "per_protein") == (None, None, None)
    with h5py.File(tmp_path / "counts.h5", "w") as f:  # counts written as floats: a whole one is that count
        f.create_dataset("float_length", data=np.zeros(3)).attrs.update(length=4.0, truncated_from=9.0)
        f.create_dataset("fraction", data=np.zeros(3)).attrs.update(length=2.5, truncated_from=9.5)
        assert dataset_facts(f, "float_length", per_residue=False) == (4, 9, None)
        assert dataset_facts(f, "fraction", per_residue=False) == (None, None, None)  # (a fraction none)


def test_per_protein_attributes_have_the_types_h5py_gives_them(tmp_path):
    """The writer sets id/header/length/checksum through h5py's low-level calls (speed): on disk
    they must be what `ds.attrs[name] = value` writes, so any HDF5 reader sees the same file."""
    with EmbeddingsWriter(tmp_path / "w.h5", kinds=(PER_RESIDUE,)) as w:
        w.write("sp|P1|é", "sp|P1|é résumé", "MKV", per_residue=np.zeros((3, 2), np.float32),
                extra_attrs={"truncated_from": 7})
    with h5py.File(tmp_path / "ref.h5", "w") as ref:
        ds = ref.create_dataset("x", data=np.zeros((3, 2), np.float32))
        for name, value in (("id", "sp|P1|é"), ("header", "sp|P1|é résumé"), ("length", 3), ("truncated_from", 7)):
            ds.attrs[name] = value
    with h5py.File(tmp_path / "w.h5", "r") as f, h5py.File(tmp_path / "ref.h5", "r") as ref:
        ours, theirs = next(iter(f[PER_RESIDUE].values())), ref["x"]
        for name in ("id", "header", "length", "truncated_from"):
            a, b = ours.attrs.get_id(name), theirs.attrs.get_id(name)
            assert a.get_type().equal(b.get_type()) and a.shape == b.shape == (), name
            assert ours.attrs[name] == theirs.attrs[name], name
        assert ours.attrs["checksum"] == "md5:" + __import__("hashlib").md5(b"MKV").hexdigest()
        # the dataset itself, created low-level too: h5py's layout, and no timestamps (h5py
        # writes none, so two runs of equal content give equal files)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape and np.array_equal(ours[()], theirs[()])
        mine, h5pys = ours.id.get_create_plist(), theirs.id.get_create_plist()
        for prop in ("get_layout", "get_fill_time", "get_alloc_time", "get_obj_track_times", "get_nfilters"):
            assert getattr(mine, prop)() == getattr(h5pys, prop)(), prop
        info = h5py.h5o.get_info(ours.id)
        assert getattr(info, "ctime", 0) == 0  # (h5py 3.10 and later show it)


def test_a_writer_stopped_while_creating_its_file_leaves_no_partial(tmp_path, monkeypatch):
    """A kill in the first milliseconds (before the attributes were flushed) left a 96-byte
    OUT.partial that --resume could not read; the file is now made under a hidden name."""
    out = tmp_path / "o.h5"

    def killed(self):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(EmbeddingsWriter, "_write_failed", killed)
        with pytest.raises(KeyboardInterrupt):
            EmbeddingsWriter(out, kinds=(PER_PROTEIN,))
    assert not partial_path(out).exists()
    with EmbeddingsWriter(out, kinds=(PER_PROTEIN,)) as w:  # the next run starts over
        assert partial_path(out).exists() and w.file.attrs["kinds"] == PER_PROTEIN
    assert [p.name for p in tmp_path.iterdir()] == ["o.h5"]



def test_mending_a_damaged_partial_on_a_full_disk_is_one_line(tmp_path, monkeypatch):
    """The repair copies the readable proteins into a fresh file; on a full disk it says so
    before HDF5 meets it (a write failing inside HDF5 can crash h5py)."""
    import types

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io import disk
    from protrans_cli.io.h5 import repair_after_kill

    out = tmp_path / "o.h5"
    w = EmbeddingsWriter(out, kinds=(PER_RESIDUE,), finalize=False)
    for i in range(50):
        w.write(f"p{i}", f"p{i}", "MKV", per_residue=np.ones((3, 4), np.float32))
        if i == 4:
            w.flush()
            early = partial_path(out).read_bytes()[40:48]
    w.close()
    partial = partial_path(out)
    with h5py.File(partial, "r") as f:
        header = h5py.h5o.get_info(f[PER_RESIDUE]["p49"].id).addr
    data = bytearray(partial.read_bytes())
    data[40:48], data[header:header + 64] = early, bytes(64)  # a kill during a flush, as in test_embed
    partial.write_bytes(bytes(data))
    monkeypatch.setattr(disk.os, "statvfs", lambda path: types.SimpleNamespace(f_bavail=1 << 20, f_frsize=1))
    with pytest.raises(RuntimeFailure, match=r"o.h5.partial: no room for a mended copy of this damaged file: 1.0 MiB "
                                             r"free .*; free some space and call again with resume=True"):
        repair_after_kill(partial, (PER_RESIDUE,), "grouped")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.h5.partial", "o.h5.partial.ledger"]  # (no salvage)
    monkeypatch.undo()
    note = repair_after_kill(partial, (PER_RESIDUE,), "grouped")  # room again: mended
    # (the first attempt had moved the end-of-file address already)
    assert note == ("repaired the damaged file: the readable proteins copied into a fresh file; 1 record(s) the kill "
                    "cut off left out (embedded again)")
    with EmbeddingsReader(partial) as r:
        assert sorted(r.ids()) == sorted(f"p{i}" for i in range(49))


def _h5py_without_locks(monkeypatch, code=37, words="No locks available", makes_first=False):
    """h5py.File as on a file system that grants no file locks (NFS without a lock daemon: errno 37;
    some FUSE mounts: 22): an open with HDF5's lock fails with HDF5's message, one without it goes
    through; with `makes_first` a new file is made (and left) before the lock fails, as HDF5 makes
    it. The warning said once per folder is forgotten and PROTRANS_FILE_LOCKING unset."""
    import h5py

    from protrans_cli.io import files as files_module

    real_file = h5py.File

    def unlocked_file(name, mode="r", *args, locking=None, **kwargs):
        if locking is not False:
            if makes_first and mode in ("x", "w-", "w", "a") and not os.path.exists(name):
                real_file(name, mode, *args, locking=False, **kwargs).close()  # (made, then the lock fails)
            raise OSError(f"[Errno {code}] Unable to synchronously {'create' if makes_first else 'open'} file "
                          f"(unable to lock file, errno = {code}, error message = '{words}')")
        return real_file(name, mode, *args, locking=locking, **kwargs)

    monkeypatch.setattr(h5py, "File", unlocked_file)
    monkeypatch.setattr(files_module, "_WARNED_NO_LOCKS", set())
    monkeypatch.delenv("PROTRANS_FILE_LOCKING", raising=False)


def test_a_file_system_without_locks_is_used_without_them(tmp_path, monkeypatch, run_cli, capsys):
    """NFS without a lock daemon, Lustre: HDF5 fails every open ("unable to lock file, errno = 37,
    'No locks available'") and the only way out was HDF5_USE_FILE_LOCKING=FALSE. Every HDF5 open
    of embed, fit and predict goes through h5_file, which then opens without locks and says so
    once; a lock another process holds is still refused."""
    import h5py

    from protrans_cli.io import files as files_module
    from protrans_cli.io import h5 as h5_module

    _h5py_without_locks(monkeypatch)
    fasta = tmp_path / "q.fa"
    fasta.write_text(">a\nMKTAYIAK\n>b\nACDEFGHIK\n>c\nMKKL\n")
    out = tmp_path / "q.h5"
    r = run_cli("embed", fasta, "-m", "onehot", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("grants no file locks") == 1
    assert "PROTRANS_FILE_LOCKING=TRUE makes such a file system an error" in r.stderr
    monkeypatch.setattr(files_module, "_WARNED_NO_LOCKS", set())
    monkeypatch.setenv("PROTRANS_FILE_LOCKING", "FALSE")  # (the warning silenced)
    r = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "quiet.h5")
    assert r.exit_code == 0 and "grants no file locks" not in r.stderr, r.stderr
    monkeypatch.setenv("PROTRANS_FILE_LOCKING", "best-effort")  # (said once, in one line, nothing written)
    r = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "bad.h5")
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        "protrans: error: PROTRANS_FILE_LOCKING must be BEST_EFFORT (the default: go on where the file system grants "
        "no file locks, with a warning), TRUE (refuse such a file system) or FALSE (go on without a warning), got "
        "'best-effort'"], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.fa", "q.h5", "quiet.h5"]
    monkeypatch.delenv("PROTRANS_FILE_LOCKING")
    monkeypatch.setattr(files_module, "_WARNED_NO_LOCKS", set())
    labels = tmp_path / "loc.fasta"
    labels.write_text(">a Nucleus-S\nMKTAYIAK\n>b Cytoplasm-S\nACDEFGHIK\n>c Nucleus-U\nMKKL\n")
    head = tmp_path / "head"
    r = run_cli("fit", "loc", "--embeddings", out, "--labels", labels, "--max-epochs", "1", "-j", "1",
                "--valid-fraction", "0.34", "-o", head)
    assert r.exit_code == 0, r.stderr
    r = run_cli("predict", head, "--embeddings", out, "-o", tmp_path / "p.csv")
    assert r.exit_code == 0, r.stderr
    with h5_module.EmbeddingsReader(out) as reader:
        assert sorted(reader.ids()) == ["a", "b", "c"]

    def busy_file(name, mode="r", *args, **kwargs):  # another process holds the lock
        raise BlockingIOError(11, "Unable to open file (unable to lock file, errno = 11)")

    monkeypatch.setattr(h5py, "File", busy_file)
    with pytest.raises(BlockingIOError):
        h5_module.h5_file(out)


@pytest.mark.parametrize("code, words", [(37, "No locks available"), (22, "Invalid argument")])
def test_a_file_system_without_locks_takes_a_new_output(tmp_path, monkeypatch, run_cli, code, words):
    """HDF5 creates a file before it locks it, and leaves it there when the lock fails: the open
    again without locks (mode "x") met "File exists", so embed stopped with "cannot create the
    output: File exists" and a hidden .creating file left (NFS without a lock daemon: errno 37).
    Some FUSE mounts refuse flock with EINVAL (22): "cannot create the output: Invalid argument"."""
    from protrans_cli.io import h5 as h5_module

    _h5py_without_locks(monkeypatch, code, words, makes_first=True)
    fasta = tmp_path / "q.fa"
    fasta.write_text(">a\nMKTAYIAK\n>b\nACDEFGHIK\n")
    out = tmp_path / "o" / "q.h5"
    out.parent.mkdir()
    r = run_cli("embed", fasta, "-m", "onehot", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["q.h5"]
    with h5_module.EmbeddingsReader(out) as reader:
        assert sorted(reader.ids()) == ["a", "b"]


def test_groups_in_a_flat_file_from_another_tool_are_not_proteins(tmp_path):
    """h5py writes an id with '/' as a dataset in a group: the reader's kind guess, dim() and
    items() met the group first and failed (a Group has no ndim or shape)."""
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f.create_dataset("0grp/P1", data=np.ones((3, 4), np.float32))
        f.create_dataset("P2", data=np.ones((5, 4), np.float32))
    with EmbeddingsReader(tmp_path / "n.h5") as r:
        assert r.layout == "flat" and r.kinds == (PER_RESIDUE,) and r.subgroups == ["0grp"]
        assert r.keys() == ["P2"] and r.dim() == 4
        assert [(ident, a.shape) for ident, a, _ in r.items()] == [("P2", (5, 4))]


def test_members_of_another_tools_flat_file_told_apart_by_their_headers(tmp_path, monkeypatch):
    """What each member of another tool's flat file is (a protein's dataset, a group, a named
    datatype) is read from its header in one low-level call, not through h5py's
    get(getclass=True): that cost 3x as much, 5-15 s for every reader of a bio_embeddings file of
    100,000 proteins (fit opens four). Groups and named datatypes are still no proteins."""
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f.create_dataset("0grp/P1", data=np.ones(4, np.float32))
        f["1type"] = np.dtype("f4")  # (a named datatype: no protein either)
        for name in ("P2", "P3"):
            f.create_dataset(name, data=np.ones(4, np.float32))
    looked_up = []
    get = h5py.Group.get
    monkeypatch.setattr(h5py.Group, "get", lambda self, name, *a, **k: looked_up.append(name) or get(self, name, *a, **k))
    with EmbeddingsReader(tmp_path / "n.h5") as r:
        assert r.layout == "flat" and r.kinds == (PER_PROTEIN,) and r.subgroups == ["0grp"]  # (a named datatype is no group)
        assert r.keys() == ["P2", "P3"] and r.ids() == ["P2", "P3"]
    assert not {"0grp", "1type", "P2", "P3"} & set(looked_up), looked_up


def test_a_named_datatype_named_as_a_kind_is_no_kind_group(tmp_path):
    """A named datatype at the top of another tool's flat file, named per_protein (h5py's
    `f["per_protein"] = np.dtype(...)`), was taken for the per-protein group: every reader of the
    file (export, info, predict, fit) stopped with h5py's AttributeError traceback. It is no
    protein and no group: the file is flat, its datasets its proteins."""
    with h5py.File(tmp_path / "n.h5", "w") as f:
        f["per_protein"] = np.dtype("f4")
        f.create_dataset("P1", data=np.arange(4, dtype=np.float32))
    with EmbeddingsReader(tmp_path / "n.h5") as r:
        assert r.layout == "flat" and r.kinds == (PER_PROTEIN,) and r.subgroups == []
        assert r.keys() == ["P1"] and r.ids() == ["P1"] and r.dim() == 4
        assert r.matrix()[0] == ["P1"]


def test_a_group_among_a_grouped_files_proteins_is_not_a_protein(tmp_path):
    """A group inside /per_protein (another tool's "P1/1-100" written through h5py, or a user's
    addition): ids() passed over it, but items(), matrix() and dim() met it and failed with a
    TypeError or AttributeError."""
    arrays = _write(tmp_path / "g.h5", ["A", "B"], kinds=(PER_PROTEIN,))
    with h5py.File(tmp_path / "g.h5", "a") as f:
        f.create_dataset("per_protein/0grp/x", data=np.zeros(4, np.float32))
    with EmbeddingsReader(tmp_path / "g.h5") as r:
        assert r.ids(PER_PROTEIN) == ["A", "B"] and r.dim(PER_PROTEIN) == 4
        assert [ident for ident, _, _ in r.items(PER_PROTEIN)] == ["A", "B"]
        ids, x = r.matrix()
        assert ids == ["A", "B"]
        np.testing.assert_allclose(x, [arrays["A"].mean(0), arrays["B"].mean(0)], rtol=1e-6)


def test_matrix_of_a_bio_embeddings_file_is_in_the_order_of_its_ids_not_its_md5_keys(tmp_path):
    """matrix() of any layout lists its rows in key order, the escaped ids as bytes (docs/formats.md,
    as `export` writes them): in a bio_embeddings file keyed by the sequences' md5, the ids'
    order, not the keys', and each row the vector of the id beside it."""
    import hashlib

    vectors = {"P2": np.full(3, 2.0, np.float32), "P1": np.full(3, 1.0, np.float32), "Q0": np.full(3, 0.0, np.float32),
               "a+": np.full(3, 4.0, np.float32), "a/": np.full(3, 5.0, np.float32)}
    sequences = {"P2": "MKV", "P1": "MKTAY", "Q0": "GGH", "a+": "WWY", "a/": "YYW"}
    with h5py.File(tmp_path / "reduced_embeddings_file.h5", "w") as f:
        for ident, vector in vectors.items():
            key = hashlib.md5(sequences[ident].encode()).hexdigest()
            f.create_dataset(key, data=vector).attrs["original_id"] = f"{ident} some protein"
        keyed = [f[k].attrs["original_id"].split()[0] for k in sorted(f)]
    assert keyed != sorted(vectors)  # (the md5 keys' order is another: the test tells them apart)
    with EmbeddingsReader(tmp_path / "reduced_embeddings_file.h5") as r:
        ids, x = r.matrix()
    # ("a/" is key "a%2F", before "a+" as bytes, where the ids' own order puts "a+" first)
    assert ids == ["P1", "P2", "Q0", "a/", "a+"]
    np.testing.assert_array_equal(x, [vectors[i] for i in ids])
    with EmbeddingsWriter(tmp_path / "embed.h5", kinds=(PER_PROTEIN,), attrs={"model": "m"}) as w:
        for ident, vector in vectors.items():  # embed's own file of these proteins: the same order
            w.write(ident, ident, sequences[ident], per_protein=vector)
    with EmbeddingsReader(tmp_path / "embed.h5") as r:
        assert r.matrix()[0] == ids


def test_matrix_of_vectors_another_writer_changed_reads_them_one_by_one(tmp_path):
    """matrix() of embed's own file reads every vector into one array at once; a vector another
    writer replaced (float16, or of another length) is read through items(): float16 rows come
    out as the others' dtype, rows of another length are one InputError naming two proteins."""
    arrays = _write(tmp_path / "g.h5", ["A", "B", "C"], kinds=(PER_PROTEIN,))
    with h5py.File(tmp_path / "g.h5", "a") as f:
        attrs = dict(f["per_protein/B"].attrs)
        del f["per_protein/B"]
        f.create_dataset("per_protein/B", data=arrays["B"].mean(0).astype(np.float16)).attrs.update(attrs)
    with EmbeddingsReader(tmp_path / "g.h5") as r:
        ids, x = r.matrix()
    assert ids == ["A", "B", "C"] and x.dtype == np.float32
    np.testing.assert_allclose(x, [arrays[i].mean(0) for i in ids], atol=1e-2)
    with h5py.File(tmp_path / "g.h5", "a") as f:
        del f["per_protein/C"]
        f.create_dataset("per_protein/C", data=np.zeros(5, np.float32)).attrs.update(attrs | {"id": "C"})
    with EmbeddingsReader(tmp_path / "g.h5") as r, pytest.raises(
            InputError, match=r"g.h5: per-protein vectors of different shapes: 'A' has \(4,\), 'C' \(5,\)"):
        r.matrix()


def test_dim_stops_at_the_first_dataset_without_listing_every_key(tmp_path, monkeypatch):
    """dim() listed every key of the group to read the first one's width: seconds a call on a file
    of millions of proteins (predict asks twice a file). It still passes over a group among them."""
    import protrans_cli.io.h5 as h5

    _write(tmp_path / "g.h5", [f"P{i:03d}" for i in range(40)], kinds=(PER_PROTEIN,))
    with h5py.File(tmp_path / "g.h5", "a") as f:
        f.create_dataset("per_protein/0grp/x", data=np.zeros(7, np.float32))  # (sorts first)
    seen = []
    iterate = h5.iterate_links
    monkeypatch.setattr(h5, "iterate_links", lambda gid, callback, **kw: iterate(
        gid, lambda *a: seen.append(a[0]) or callback(*a), **kw))
    with EmbeddingsReader(tmp_path / "g.h5") as r:
        seen.clear()
        assert r.dim(PER_PROTEIN) == 4
        assert seen == [b"0grp", b"P000"]


def test_an_empty_file_and_an_esm_extract_file_are_one_line_saying_what_they_are(tmp_path):
    # An empty file read as "holds no per_residue embeddings" for a per-protein head (the kind was a guess).
    h5py.File(tmp_path / "empty.h5", "w").close()
    with EmbeddingsReader(tmp_path / "empty.h5") as r, pytest.raises(InputError, match=r"empty.h5: holds no embeddings$"):
        r.dim()
    (tmp_path / "P1.pt").write_bytes(b"PK\x03\x04 a torch.save zip")
    with pytest.raises(InputError, match="esm-extract's .pt files are not read here: convert them with "
                       "protrans import-esm DIR -o OUT.h5, or embed the FASTA with protrans embed"):
        EmbeddingsReader(tmp_path / "P1.pt")


def test_stdin_and_a_pipe_are_refused_as_what_they_are_not_read_or_waited_on(tmp_path):
    """An HDF5 file is read in place: `-` was "no such file", and `<(cat e.h5)` (a pipe) HDF5's
    "file read failed"."""
    with pytest.raises(InputError, match=r"^<stdin>: an HDF5 file is read in place: give a regular file, not stdin "
                       "or a pipe$"):
        EmbeddingsReader("-")
    import threading

    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    # a writer at the other end, so that a reader opening the pipe (the check gone) reads its end
    # and fails on what it read instead of waiting for ever
    writer = threading.Thread(target=lambda: os.close(os.open(fifo, os.O_WRONLY)), daemon=True)
    writer.start()
    try:
        with pytest.raises(InputError, match="pipe.h5: an HDF5 file is read in place"):
            EmbeddingsReader(fifo)
    finally:
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # (lets the writer's open return,
        writer.join(5)                                       # held until it has: it may not have begun)
        os.close(reader)
    assert not writer.is_alive()


def test_text_attributes_of_another_encoding_are_read_not_a_unicode_error(tmp_path):
    """Another tool's byte-string attributes in Latin-1 (a model named "Modèle"): opening the file
    was a UnicodeDecodeError traceback. UTF-8 is read as UTF-8, anything else as Latin-1."""
    with h5py.File(tmp_path / "l.h5", "w") as f:
        f.attrs["model"] = np.bytes_("Modèle".encode("latin-1"))
        f.attrs["note"] = np.bytes_("naïve".encode("utf-8"))
        f.create_dataset("P1", data=np.ones(4, np.float32)).attrs["source"] = np.bytes_("café".encode("latin-1"))
    with EmbeddingsReader(tmp_path / "l.h5") as r:
        assert r.attrs["model"] == "Modèle" and r.attrs["note"] == "naïve"
        [(ident, vector, attrs)] = list(r.items())
    assert ident == "P1" and vector.shape == (4,) and attrs["source"] == "café"


def test_a_file_another_process_writes_is_said_to_be_in_use_not_unreadable(tmp_path):
    """`fit --embeddings out.h5.partial` while embed still writes it: HDF5's lock refused it as
    "not a readable HDF5 file (... unable to lock file ...)", which reads like a damaged file."""
    from conftest import another_process

    partial, other = tmp_path / "e.h5.partial", tmp_path / "other.h5"
    holder = "import h5py\n" + "\n".join(f"f{i} = h5py.File({str(p)!r}, 'w'); f{i}.flush()"
                                          for i, p in enumerate((partial, other)))
    with another_process(holder):
        with pytest.raises(InputError) as info:
            EmbeddingsReader(partial)
        assert info.value.format() == (f"{partial}: another process has it open for writing (HDF5's file lock); "
                                       "protrans embed writes OUTPUT.partial and renames it OUTPUT once the run "
                                       "ends: read that file when it is done")
        with pytest.raises(InputError, match=r"other.h5: another process has it open for writing \(HDF5's file "
                                             r"lock\): read it once that process is done$"):
            EmbeddingsReader(other)



def test_resuming_a_file_another_process_reads_is_refused_naming_it_and_leaves_it_finished(tmp_path):
    """A notebook's EmbeddingsReader holds out.h5 open; `embed --resume -o out.h5` elsewhere: HDF5's
    shared read lock let the in-use check through, and the run ended in h5py's "Unable to
    synchronously open file (unable to lock file, errno = 11 ...)" naming no file, with out.h5
    renamed out.h5.partial (and a ledger beside it). The run is refused naming out.h5, which is
    left as it was."""
    from conftest import another_process
    from protrans_cli.errors import RuntimeFailure

    out = tmp_path / "out.h5"
    _write(out, ["a"])
    kept = out.read_bytes()
    with another_process(f"import h5py\nf = h5py.File({str(out)!r}, 'r')"):
        with pytest.raises(RuntimeFailure) as info:
            EmbeddingsWriter(out, kinds=(PER_RESIDUE, PER_PROTEIN), attrs={"model": "m", "layers": [-1]}, resume=True,
                             finished_proteins=(np.array([b"a" * 16], "S16"), np.array([1], "<u8")))
        assert info.value.format() == (f"{out}: is open in another process (it holds the HDF5 file lock): close it "
                                       "there (an EmbeddingsReader or h5py.File), or wait for that process to end, "
                                       "and call again")
        assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"] and out.read_bytes() == kept
    with EmbeddingsWriter(out, kinds=(PER_RESIDUE, PER_PROTEIN), attrs={"model": "m", "layers": [-1]},
                          resume=True) as w:
        assert w.done_ids() == {"a"}

def test_writer_does_not_create_through_a_planted_link(tmp_path):
    # `.OUT.partial.creating` has a fixed name: HDF5's "w" truncated the file a link planted
    # there pointed to, wrote the embeddings into it, and the link became OUT.
    from protrans_cli.io.h5 import EmbeddingsWriter

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    (tmp_path / ".e.h5.partial.creating").symlink_to(victim)
    with EmbeddingsWriter(tmp_path / "e.h5", kinds=("per_protein",)) as w:
        w.write("a", "a", "MKV", per_protein=np.ones(4))
    assert victim.read_bytes() == b"precious\n"
    assert not (tmp_path / "e.h5").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5", "victim.txt"]


def test_keys_that_spell_other_ids_and_whole_header_keys_name_the_right_proteins(tmp_path):
    # biotrainer keys its datasets "0", "1", ... with the ids in `original_id`: with numeric ids
    # get("1") returned the second protein; the ProtTrans script keys a protein by its whole
    # header line, which read as an id with a space
    with h5py.File(tmp_path / "bt.h5", "w") as f:
        for position, ident in enumerate(["1", "2", "3"]):
            f.create_dataset(str(position), data=np.full((2, 4), float(ident), np.float32))
            f[str(position)].attrs["original_id"] = ident
    with EmbeddingsReader(tmp_path / "bt.h5") as r:
        assert [float(r.get(i)[0, 0]) for i in ("1", "2", "3")] == [1.0, 2.0, 3.0]
        assert r.key_for("0") is None  # no protein "0" in this file
    with h5py.File(tmp_path / "pt.h5", "w") as f:
        f.create_dataset("EX0029 Plastid-S", data=np.ones((3, 4), np.float32))
    with h5py.File(tmp_path / "pt.h5", "a") as f:  # ids with a space, written by hand: each its own
        f.create_dataset("protein 1", data=np.full((2, 4), 1.0, np.float32))
        f.create_dataset("protein 2", data=np.full((2, 4), 2.0, np.float32))
    with EmbeddingsReader(tmp_path / "pt.h5") as r:
        assert r.get("EX0029").shape == (3, 4) and r.get("EX0029 Plastid-S").shape == (3, 4)
        assert float(r.get("protein 1")[0, 0]) == 1.0 and float(r.get("protein 2")[0, 0]) == 2.0
    # an integer `id` attribute names its protein (str of it), not the key (docs/formats.md)
    with h5py.File(tmp_path / "int.h5", "w") as f:
        for position, ident in enumerate([7, 5]):
            f.create_dataset(str(position), data=np.full((2, 4), float(ident), np.float32)).attrs["id"] = ident
    with EmbeddingsReader(tmp_path / "int.h5") as r:
        assert r.ids() == ["7", "5"]
        assert [float(r.get(i)[0, 0]) for i in ("7", "5")] == [7.0, 5.0] and r.key_for("0") is None


@pytest.mark.parametrize("how", ["external link", "soft link", "external storage", "virtual dataset"])
def test_values_from_outside_the_file_are_refused(tmp_path, how):
    """An HDF5 file from elsewhere could make fit and predict read any file the user can read:
    h5py follows external links, reads raw data kept in external files and maps virtual
    datasets, silently. Only data stored in the file itself is read."""
    from protrans_cli.heads.data import read_rows

    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["data"] = np.full((3, 4), 7.0, dtype=np.float32)
    raw = tmp_path / "secret.bin"
    raw.write_bytes(np.full((3, 4), 7.0, dtype=np.float32).tobytes())
    path = tmp_path / "foreign.h5"
    with h5py.File(path, "w") as f:
        f["p1"] = np.zeros((3, 4), dtype=np.float32)
        if how == "external link":
            f["p2"] = h5py.ExternalLink(str(secret), "/data")
        elif how == "soft link":  # inside the file, on to another file through an external link
            f["elsewhere"] = h5py.ExternalLink(str(secret), "/")
            f["p2"] = h5py.SoftLink("/elsewhere/data")
        elif how == "external storage":
            f.create_dataset("p2", shape=(3, 4), dtype="<f4", external=[(str(raw), 0, 48)])
        else:
            layout = h5py.VirtualLayout(shape=(3, 4), dtype="<f4")
            layout[:] = h5py.VirtualSource(str(secret), "data", shape=(3, 4))
            f.create_virtual_dataset("p2", layout)
    message = {"external link": "is an external link to another file", "soft link": "is an external link",
               "external storage": "is a dataset whose values are stored in external files",
               "virtual dataset": "is a virtual dataset"}[how]
    if how in ("external link", "soft link"):  # refused as the file is opened (a missing target was a traceback, a FIFO hung)
        with pytest.raises(InputError, match=f"record '{'p2' if how == 'external link' else 'elsewhere'}': {message}"):
            EmbeddingsReader(path)
        return
    with EmbeddingsReader(path) as reader:
        with pytest.raises(InputError, match=f"record 'p2': {message}"):
            reader.get("p2")
        if how != "external link":
            np.testing.assert_array_equal(reader.get("p1"), 0.0)  # the file's own data is read
            with pytest.raises(InputError, match=message):
                read_rows(reader.file, "p2", 2, -1, (3, 4), str(path), "p2")



@pytest.mark.parametrize("column, how", [("per_protein", "virtual dataset"), ("per_protein", "external storage"),
                                         ("lengths", "virtual dataset"), ("lengths", "external storage"),
                                         ("ids", "virtual dataset")])  # (variable-length text: no external storage)
def test_a_stacked_file_whose_array_or_column_lives_outside_it_is_refused(tmp_path, column, how):
    """A stacked file's per_protein array and its columns were read as they came: a virtual
    dataset or external storage made export, knn, predict and merge read another file silently."""
    out = tmp_path / "e.h5"
    _write(out, ["a", "b"], kinds=(PER_PROTEIN,), layout="stacked")
    with h5py.File(out, "a") as f:
        data = f[column][()]
        shape, dtype = f[column].shape, f[column].dtype
        del f[column]
        if how == "virtual dataset":
            with h5py.File(tmp_path / "secret.h5", "w") as s:
                s.create_dataset("data", data=data, dtype=dtype)
            layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
            layout[:] = h5py.VirtualSource(str(tmp_path / "secret.h5"), "data", shape=shape)
            f.create_virtual_dataset(column, layout)
        else:
            raw = tmp_path / "secret.bin"
            raw.write_bytes(np.ascontiguousarray(data).tobytes())
            f.create_dataset(column, shape=shape, dtype=dtype, external=[(str(raw), 0, data.nbytes)])
    message = "a virtual dataset" if how == "virtual dataset" else "a dataset whose values are stored in external"
    with pytest.raises(InputError, match=f"record '{column}': is {message}"):
        with EmbeddingsReader(out) as r:
            r.matrix()


@pytest.mark.parametrize("attribute, value", [("model", np.arange(3)), ("pooling", np.arange(2)), ("family", 7)])
def test_a_text_attribute_of_another_type_is_one_line(tmp_path, attribute, value):
    """An array where embed writes text (a damaged or hand-made file) was a numpy traceback where
    knn, predict, info or export compared it ("The truth value of an array ... is ambiguous")."""
    out = tmp_path / "e.h5"
    _write(out, ["a", "b"])
    with h5py.File(out, "a") as f:
        f.attrs[attribute] = value
    with pytest.raises(InputError, match=f"its `{attribute}` attribute is .* not text"):
        EmbeddingsReader(out)


def test_another_tools_file_with_numbers_under_those_names_is_read(tmp_path):
    """The refusal above is for embed's files: another tool's (no `layout`) may keep `revision` 3 or
    `device` 0 for its own ends; it was refused by every reader ("its `revision` attribute is int
    3, not text"), where it had been read. Those attributes are read as absent."""
    out = tmp_path / "foreign.h5"
    with h5py.File(out, "w") as f:
        f.attrs.update(revision=3, device=0, model="my_plm")
        f["P1"] = np.ones(4, dtype="f4")
    with EmbeddingsReader(out) as r:
        assert r.ids() == ["P1"] and "revision" not in r.attrs and "device" not in r.attrs
        assert r.attrs["model"] == "my_plm"


@pytest.mark.parametrize("runs", ["[1, 2]", '"abc"', "5"])
def test_a_runs_attribute_that_lists_no_runs_gives_the_run_the_attributes_describe(tmp_path, runs):
    """merge compared each entry as a run (AttributeError: 'int' object has no attribute 'items')."""
    from protrans_cli.io.h5 import recorded_runs

    out = tmp_path / "e.h5"
    _write(out, ["a"])
    with h5py.File(out, "a") as f:
        del f.attrs["runs"]
        f.attrs["device"] = "cpu"
        expected = recorded_runs(f)  # (a file from before the attribute: the one run its attributes describe)
        f.attrs["runs"] = runs
        assert recorded_runs(f) == expected and expected and isinstance(expected[0], dict)


def test_a_checksum_attribute_that_is_no_text_is_no_checksum(tmp_path):
    """merge and --resume hashed an array `checksum` (a traceback): it is no checksum."""
    from protrans_cli.io.h5 import stored_proteins

    out = tmp_path / "e.h5"
    _write(out, ["a", "b"])
    with h5py.File(out, "a") as f:
        f["per_protein"]["a"].attrs["checksum"] = np.arange(3)
        assert dict(stored_proteins(f["per_protein"])) == {"a": None, "b": sequence_checksum("MKV")}


def test_a_vector_wider_than_the_files_embedding_dim_is_refused_before_it_is_read(tmp_path):
    """A per-protein dataset declaring 10**10 values in a few KB (chunks never written): the first
    protein's shape was taken as the width and the vector, or an (N, 10**10) matrix, allocated
    (37 GiB) before anything was compared: an out-of-memory error naming no file, or the memory."""
    out = tmp_path / "e.h5"
    _write(out, ["a", "b"])
    with h5py.File(out, "a") as f:
        f.attrs["embedding_dim"] = 4  # (what embed records)
        attrs = dict(f["per_protein"]["a"].attrs)
        del f["per_protein"]["a"]
        f["per_protein"].create_dataset("a", shape=(10**10,), dtype="<f4", chunks=(1024,)).attrs.update(attrs)
    message = "record 'a': embedding has shape 10000000000, where the file's embedding_dim is 4"
    with EmbeddingsReader(out) as r:
        for call in (r.matrix, lambda: r.dim(PER_PROTEIN)):
            with pytest.raises(InputError, match=message):
                call()
    with h5py.File(out, "a") as f:  # narrower than embedding_dim: not the file's vectors either
        del f["per_protein"]["a"]
        f["per_protein"].create_dataset("a", data=np.ones(3, np.float32)).attrs.update(attrs)
    with EmbeddingsReader(out) as r:
        for call in (r.matrix, lambda: r.dim(PER_PROTEIN)):
            with pytest.raises(InputError, match="record 'a': embedding has shape 3, where the file's embedding_dim is 4"):
                call()


@pytest.mark.parametrize("value", ["{not json", "5", '["a", 1]', "[" * 100_000 + "]" * 100_000])
def test_a_failed_attribute_not_as_embed_writes_it_is_one_line(tmp_path, value):
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as f:
        f["p1"] = np.zeros(4, dtype=np.float32)
        f.attrs["failed"] = value
    with EmbeddingsReader(path) as reader:
        with pytest.raises(InputError, match="its 'failed' attribute is not what embed writes"):
            reader.failed()


def test_two_datasets_naming_one_protein_are_refused(tmp_path):
    """A bio_embeddings file whose original_ids share a first word ("P1 isoform a", "P1 isoform b"):
    predict wrote two records >P1 (and --probabilities was a traceback), fit gave P1's label to
    whichever dataset came first."""
    from protrans_cli.heads.predict import _all_items

    path = tmp_path / "bio.h5"
    with h5py.File(path, "w") as f:
        for key, original in (("aa11", "P1 isoform a"), ("bb22", "P2"), ("cc33", "P1 isoform b")):
            f[key] = np.zeros((3, 4), dtype=np.float32)
            f[key].attrs["original_id"] = original
    with EmbeddingsReader(path) as reader:
        for call in (reader.ids, lambda: reader.key_for("P1"), lambda: _all_items(reader, PER_RESIDUE)):
            with pytest.raises(InputError, match="two datasets name protein 'P1'"):
                call()
        with pytest.raises(InputError, match=r"two datasets name protein 'P1' \('aa11' and 'cc33'\)"):
            reader.ids()  # (the two named: export and info said only "two datasets name protein 'P1'")
    # keys that are whole header lines (the ProtTrans script's), without attributes
    loose = tmp_path / "loose.h5"
    with h5py.File(loose, "w") as f:
        for key in ("P1 isoform a", "P2", "P1 isoform b"):
            f[key] = np.zeros((3, 4), dtype=np.float32)
    with EmbeddingsReader(loose) as reader:
        with pytest.raises(InputError, match="two datasets name protein 'P1'"):
            reader.key_for("P1")


def test_another_tools_creation_order_is_kept(tmp_path):
    """A file written with track_order (creation order = its FASTA's): listed in that order, as
    h5py lists it, so predict writes its proteins in that order."""
    path = tmp_path / "t.h5"
    with h5py.File(path, "w", track_order=True) as f:
        for key in ("zeta", "alpha", "mid"):
            f[key] = np.zeros((3, 4), dtype=np.float32)
    with EmbeddingsReader(path) as reader:
        assert reader.keys() == reader.ids() == ["zeta", "alpha", "mid"]


def test_the_failed_list_is_serialised_only_when_it_changes(tmp_path, monkeypatch):
    """embed flushes after every batch: serialising every recorded failure at each flush (to see
    whether it changed) made a run that skips many proteins quadratic (batches x failures)."""
    from protrans_cli.io import h5 as h5_module

    seen = []
    real = h5_module.json.dumps

    def counting(obj, *a, **k):
        if isinstance(obj, dict) and "p0" in obj:
            seen.append(len(obj))
        return real(obj, *a, **k)

    monkeypatch.setattr(h5_module.json, "dumps", counting)
    with EmbeddingsWriter(tmp_path / "f.h5", kinds=(PER_PROTEIN,), attrs={"model": "m"}) as w:
        for i in range(3):
            w.record_failure(f"p{i}", "skipped: too long")
            w.flush()
            w.flush()
            w.flush()
    assert seen == [1, 2, 3]
    with EmbeddingsReader(tmp_path / "f.h5") as reader:
        assert reader.failed() == {f"p{i}": "skipped: too long" for i in range(3)}


def test_many_failures_added_flush_after_flush_keep_the_file_small(tmp_path):
    """HDF5 leaves the space of each replaced `failed` attribute behind: rewritten at every
    window that skipped proteins, a file grew with the square of its failures (100,000 proteins,
    80% skipped, 20 windows: 68 MB where 19 MB hold the data). Beyond 1,024 entries it is
    rewritten when the failures doubled, and whole at close."""
    reason = "skipped: longer than --max-length 50 (1000 residues)"

    def run(path, windows: int) -> tuple[int, list[int]]:
        states = []
        with EmbeddingsWriter(path, kinds=(PER_PROTEIN,), attrs={"model": "m"}) as w:
            for window in range(windows):
                for i in range(6000 // windows):
                    w.record_failure(f"UniRef50_A0A{window:03d}{i:05d}", reason)
                w.write(f"ok{window}", "h", "MKV", per_protein=np.zeros(4, np.float32))
                w.flush()
                states.append(len(json.loads(w.file.attrs["failed"])))
        with EmbeddingsReader(path) as reader:
            assert len(reader.failed()) == 6000  # every failure, once closed
        return path.stat().st_size, states

    once, _ = run(tmp_path / "once.h5", 1)
    size, states = run(tmp_path / "windows.h5", 40)
    assert states[:6] == [150, 300, 450, 600, 750, 900]  # small lists: current after every flush
    assert len(set(states)) <= 10 and all(n >= i * 150 / 2 for i, n in enumerate(states, 1))
    assert size < 3 * once, (size, once)  # 20x before (9.9 MB against 0.49)


def test_embed_files_flush_without_rewriting_every_name_and_readers_list_them_by_name(tmp_path):
    """Old-style groups keep every name in one heap that each flush (each embed batch) wrote
    whole: the bytes a run wrote grew with the square of its proteins. Groups that track creation
    order are new-style. h5py lists the proteins in the order they were written (embed's order
    of computation, longest first); protrans's readers (fit, predict) list them by name, as
    before, whatever the batches, resumes or merges that made the file."""
    for layout, kinds in (("grouped", (PER_PROTEIN, PER_RESIDUE)), ("flat", (PER_PROTEIN,))):
        path = tmp_path / f"{layout}.h5"
        ids = [f"p{i:03d}" for i in range(300)][::-1]
        with EmbeddingsWriter(path, kinds=kinds, layout=layout, attrs={"model": "m"}) as w:
            for ident in ids:
                w.write(ident, ident, "MKT", per_protein=np.ones(4, np.float32),
                        **({"per_residue": np.ones((3, 4), np.float32)} if PER_RESIDUE in kinds else {}))
                w.flush()
        with h5py.File(path, "r") as f:
            for kind in kinds:
                group = f if layout == "flat" else f[kind]
                assert group.id.get_create_plist().get_link_creation_order() if layout == "grouped" else True
                if layout == "grouped" or tuple(int(v) for v in h5py.__version__.split(".")[:2]) >= (3, 12):
                    # (before h5py 3.12 a file's root was listed by name whatever it tracked)
                    assert [k for k in group.keys() if k in ids] == ids
        with EmbeddingsReader(path) as reader:
            assert reader.ids(kinds[0]) == sorted(ids) == reader.keys(kinds[0])


def test_compression_leaves_per_protein_vectors_alone(tmp_path):
    # each compressed dataset carries a chunk index of about 2 KB: a per-protein file of 100,000
    # proteins was 4x larger with gzip than without
    out = tmp_path / "pp.h5"
    with EmbeddingsWriter(out, kinds=(PER_RESIDUE, PER_PROTEIN), compression="gzip") as w:
        rows = np.arange(40 * 8, dtype=np.float32).reshape(40, 8)
        w.write("a", "a", "M" * 40, per_residue=rows, per_protein=rows.mean(0))
    with h5py.File(out, "r") as f:
        assert f["per_residue/a"].compression == "gzip" and f["per_protein/a"].compression is None
        np.testing.assert_array_equal(f["per_protein/a"][()], rows.mean(0))


def test_items_reads_what_h5py_reads(tmp_path):
    # items() reads through h5py's low-level calls (1.5x faster): the same arrays, dtypes and
    # attributes as h5py's dictionary interface
    out = tmp_path / "i.h5"
    rng = np.random.default_rng(0)
    with EmbeddingsWriter(out, kinds=(PER_RESIDUE,), storage_dtype="float16") as w:
        w.write("sp|a/1", "sp|a/1 first", "MKT", per_residue=rng.normal(size=(3, 4)))
        w.write("b", "b", "MKTAY", per_residue=rng.normal(size=(5, 4)))
    with EmbeddingsReader(out) as r, h5py.File(out, "r") as f:
        got = list(r.items())
        group = f["per_residue"]
        want = [(k, group[k][()], {a: (v.decode() if isinstance(v, bytes) else v) for a, v in group[k].attrs.items()})
                for k in r.keys()]
    assert [g[0] for g in got] == ["b", "sp|a/1"]
    for (_, values, attrs), (_, expected, expected_attrs) in zip(got, want):
        assert values.dtype == expected.dtype == np.float16 and np.array_equal(values, expected)
        assert attrs == expected_attrs and attrs["length"] in (3, 5)


def test_a_protein_embedded_after_it_failed_is_not_left_failed_by_a_kill(tmp_path):
    """Beyond 1,024 failures the attribute is rewritten when they double or halve: a protein
    embedded after failing left the list in memory only, and a SIGKILL then left it in the file,
    where the final file listed it as failed beside its embedding."""
    path = tmp_path / "f.h5"
    kw = dict(kinds=(PER_PROTEIN,), attrs={"model": "m"})
    with EmbeddingsWriter(path, finalize=False, **kw) as w:
        for i in range(2000):
            w.record_failure(f"p{i}", "out of memory")
    w2 = EmbeddingsWriter(path, resume=True, finalize=False, **kw)
    for i in range(600):
        w2.write(f"p{i}", f"p{i}", "MKV", per_protein=np.zeros(2, np.float32))
    w2.flush()
    w2.file.close()  # a SIGKILL: the attribute still lists 2,000
    w3 = EmbeddingsWriter(path, resume=True, **kw)
    assert len(w3.failed) == 1400 and "p0" not in w3.failed
    for i in range(600, 2000):
        w3.write(f"p{i}", f"p{i}", "MKV", per_protein=np.zeros(2, np.float32))
    w3.close(complete=True)
    with EmbeddingsReader(path) as reader:
        assert reader.failed() == {} and len(reader.ids(PER_PROTEIN)) == 2000


def test_a_small_file_size_limit_takes_a_small_file(tmp_path, monkeypatch):
    """ulimit -f 10 MiB: the 16 MiB kept for HDF5's own data on a disk refused a 22 KB output
    ("the batch needs 16 MiB ... free some space"); the limit is checked against the file's
    growth, and the remedy named is the limit."""
    import resource

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io.disk import ensure_room

    real = resource.getrlimit
    monkeypatch.setattr(resource, "getrlimit", lambda which: (10 << 20, resource.RLIM_INFINITY)
                        if which == resource.RLIMIT_FSIZE else real(which))
    path = tmp_path / "o.h5"
    ensure_room(path, 100_000, "nothing was written; free some space and run the command again")
    with pytest.raises(RuntimeFailure, match=r"o.h5: no room for the next batch: the file-size limit \(ulimit -f\) "
                                             r"is 10.0 MiB, the file 0.0 MiB and the next batch about 12.3 MiB; nothing "
                                             r"was written; raise the limit and run the command again"):
        ensure_room(path, 9 << 20, "nothing was written; free some space and run the command again")


def test_the_room_check_refuses_a_batch_one_byte_short_and_says_kib_where_mib_read_alike(tmp_path, monkeypatch):
    """The disk's free bytes against the batch's with 5% and the 16 MiB margin: exactly enough
    passes, one byte less is refused; a shortfall under a MiB is said in KiB, the free ones rounded
    down (in MiB both read "16.1 MiB", and rounded to the nearest KiB both "16,487 KiB": the
    refusal looked like a miscount)."""
    import types

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io import disk

    nbytes = 100_000
    need = int(nbytes * 1.05) + (16 << 20)  # 16,882,216 bytes
    free = [need]
    monkeypatch.setattr(disk.os, "statvfs", lambda path: types.SimpleNamespace(f_bavail=free[0], f_frsize=1, f_flag=0))
    assert disk.ensure_room(tmp_path / "o.h5", nbytes, "then", reserve=0) == 0
    free[0] = need - 1
    with pytest.raises(RuntimeFailure, match=r"o.h5: no room for the next batch: 16,486 KiB free on the output's "
                                             r"disk, 16,487 KiB needed \(0.1 MiB of data and 16 MiB kept for HDF5's "
                                             r"own\); then$"):
        disk.ensure_room(tmp_path / "o.h5", nbytes, "then", reserve=0)


def test_a_partial_file_removed_during_the_run_is_said(tmp_path):
    """`rm OUT.partial` mid-run: embed ran on and ended saying the finished embeddings were in the
    file that was gone."""
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io.h5 import EmbeddingsWriter, partial_path

    out = tmp_path / "r.h5"
    writer = EmbeddingsWriter(out)
    writer.write("a", "a", "MK", per_residue=np.ones((2, 3), np.float32))
    os.unlink(partial_path(out))
    with pytest.raises(RuntimeFailure, match=r"r.h5: r.h5.partial was removed during the run: the embeddings "
                                             r"written there are lost; call again"):  # (a library call's words)
        writer.close(complete=True)
    assert not out.exists()


def test_an_id_the_file_lacks_is_one_line_naming_it(tmp_path):
    # embed's own files answer key_for from the key alone; a key returned without checking that
    # it exists made reader.get("absent") a raw h5py error instead of this InputError
    out = tmp_path / "e.h5"
    _write(out, ["a", "b"])
    with EmbeddingsReader(out) as r:
        assert r.key_for("absent") is None
        with pytest.raises(InputError, match="no per_residue embedding for this id"):
            r.get("absent")


def test_a_merged_record_can_be_written_again(tmp_path):
    # A shard's record listed untrusted (a write failed after it) is merged, then embedded again
    # by the same run: the fresh writer refused it ("name already exists", a traceback).
    from protrans_cli.io.h5 import EmbeddingsWriter

    shard = tmp_path / "o.h5.shard-000-of-002"
    with EmbeddingsWriter(shard, finalize=False) as w:
        w.write("a", "a", "MKV", per_residue=np.zeros((3, 4), np.float32), per_protein=np.zeros(4, np.float32))
    with EmbeddingsWriter(tmp_path / "o.h5") as w:
        w.copy_from(partial_path(shard))
        w.write("a", "a", "MKV", per_residue=np.ones((3, 4), np.float32), per_protein=np.ones(4, np.float32))
    with EmbeddingsReader(tmp_path / "o.h5") as r:
        np.testing.assert_array_equal(r.get("a"), np.ones((3, 4), np.float32))


def test_marker_room_keeps_a_block_when_a_mebibyte_is_not_free(tmp_path, monkeypatch):
    """A disk with less than 1 MiB free: the list of untrusted ids still gets written."""
    import builtins
    import errno

    import protrans_cli.io.disk as disk
    import protrans_cli.io.h5 as h5

    if disk.native_fallocate() is None:
        pytest.skip("no fallocate(2)")
    real = disk.fallocate

    def small_disk(fd, nbytes):
        if nbytes > 64 << 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, nbytes)

    monkeypatch.setattr(disk, "fallocate", small_disk)
    partial = tmp_path / "o.h5.partial"
    room = h5._MarkerRoom(partial)
    assert room.fd is not None and room.size == room.SMALL  # (the patch reached it: the small block kept)
    real_open = open

    def full_open(path, mode="r", *a, **k):  # the disk is full by now: no new file's data fits
        if "untrusted" in str(path) and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(builtins, "open", full_open)
    digests = h5.digest128("P1") + h5.digest128("P2")
    room.write(digests)
    assert h5.untrusted_path(partial).read_bytes() == digests


@pytest.mark.parametrize("how", ["no ledger", "shards merged"])
def test_a_resumed_writer_keeps_the_files_list_of_untrusted_proteins_until_it_completes(tmp_path, how):
    """The proteins a failed write may have lost are embedded again by the next --resume; a
    resumed writer without a sealed ledger (or one merging shards) removed their list as it
    opened, so a run stopped before it reached them left them counted as done."""
    from protrans_cli.io import h5

    out = tmp_path / "o.h5"
    with EmbeddingsWriter(out, finalize=False) as w:
        for ident in "abc":
            w.write(ident, ident, "MKV", per_residue=np.ones((3, 4), np.float32))
    partial = partial_path(out)
    listed = h5.digest128("a")
    h5.untrusted_path(partial).write_bytes(listed)
    if how == "no ledger":
        h5.ledger_path(partial).unlink()
        w = EmbeddingsWriter(out, resume=True)
    else:
        shard = tmp_path / "o.h5.shard-000-of-002"
        with EmbeddingsWriter(shard, finalize=False) as s:
            s.write("d", "d", "MKV", per_residue=np.ones((3, 4), np.float32))
        w = EmbeddingsWriter(out, resume=True)
        w.copy_from(partial_path(shard))
    w.close()  # stopped before "a" was embedded again
    assert h5.untrusted_path(partial).read_bytes() == listed
    w = EmbeddingsWriter(out, resume=True)
    w.write("a", "a", "MKV", per_residue=np.ones((3, 4), np.float32))
    w.close(complete=True)
    assert not h5.untrusted_path(partial).exists() and out.exists()


def _format_readable_by_old_hdf5(path) -> None:
    """Files that older HDF5 libraries open (checked by hand with 1.10.8, 1.12.2, 1.14.2-1.14.6; the
    suite has only the installed one): the superblock and objects in the oldest format their
    features allow (creation order needs HDF5 1.8), not the newest the writing library knows
    (`libver="latest"` gives superblock 3, which HDF5 1.8 cannot open, and whatever object
    versions a later library adds)."""
    with open(path, "rb") as raw:
        head = raw.read(9)
    assert head[:8] == b"\x89HDF\r\n\x1a\n" and head[8] <= 2, f"{path}: superblock version {head[8]}"
    with h5py.File(path, "r") as f:
        assert f.libver[0] == "earliest", f"{path}: format lower bound {f.libver}"


@pytest.mark.parametrize("layout", ["grouped", "flat"])
def test_written_merged_and_mended_files_keep_the_oldest_format(tmp_path, layout):
    from protrans_cli.io.h5 import repair_after_kill

    kinds = (PER_RESIDUE, PER_PROTEIN) if layout == "grouped" else (PER_RESIDUE,)
    out = tmp_path / "e.h5"
    _write(out, ["a", "b"], kinds=kinds, layout=layout, storage_dtype="float16", compression="gzip")
    _format_readable_by_old_hdf5(out)
    with EmbeddingsWriter(tmp_path / "m.h5", kinds=kinds, layout=layout) as m:  # a torchrun merge
        m.copy_from(str(out))
    _format_readable_by_old_hdf5(tmp_path / "m.h5")
    w = EmbeddingsWriter(tmp_path / "p.h5", kinds=kinds, layout=layout, finalize=False)
    w.write("c", "c", "MKV", per_residue=np.ones((3, 4), np.float32), per_protein=np.ones(4, np.float32))
    w.close()
    assert repair_after_kill(partial_path(tmp_path / "p.h5"), kinds, layout, force=True)  # the mended copy
    _format_readable_by_old_hdf5(partial_path(tmp_path / "p.h5"))


def test_a_ctrl_c_while_the_proteins_are_listed_is_a_keyboardinterrupt(tmp_path, monkeypatch):
    """h5py turns an exception raised in a link-iteration callback into a SystemError; a Ctrl-C
    while a large file's proteins were listed reached a library caller as one."""
    import h5py

    from protrans_cli.io import h5 as h5_module

    out = tmp_path / "o.h5"
    with EmbeddingsWriter(out, kinds=(PER_RESIDUE,)) as w:
        for ident in ("a", "b", "c"):
            w.write(ident, ident, "MKV", per_residue=np.zeros((3, 4), np.float32))

    def interrupted(name, info=None):
        raise KeyboardInterrupt

    with h5py.File(out, "r") as f:
        with pytest.raises(KeyboardInterrupt):
            h5_module.iterate_links(f["per_residue"].id, interrupted, info=True)
        with pytest.raises(ValueError, match="mine"):
            h5_module.iterate_links(f["per_residue"].id, lambda *a: (_ for _ in ()).throw(ValueError("mine")))
    real = h5_module.iterate_links

    def ctrl_c_inside(gid, callback, **kwargs):
        return real(gid, lambda *a: interrupted(*a), **kwargs)

    monkeypatch.setattr(h5_module, "iterate_links", ctrl_c_inside)
    with pytest.raises(KeyboardInterrupt):
        EmbeddingsReader(out)


def test_a_failed_write_between_flushes_on_a_nearly_full_disk_stays_resumable(tmp_path):
    """embed flushes once a second; on a disk with less than 1 MiB free the list of the ids
    written since the last flush has a 4 KiB block (256 ids), and a second of small batches is
    more: a write failing inside HDF5 then said "do not resume it ... delete it" (the whole run
    lost) where a flush after each batch left it resumable. flush_due flushes when half the
    block is used."""
    import subprocess
    import sys

    import protrans_cli.io.disk as disk

    if disk.native_fallocate() is None:
        pytest.skip("no fallocate(2)")
    script = f"""
import builtins, errno, resource, numpy as np
import protrans_cli.io.disk as disk
import protrans_cli.io.h5 as h5
h5.FLUSH_SECONDS = 3600.0  # (a fast run: every batch within the second)
real = disk.fallocate
def small_disk(fd, nbytes):  # less than 1 MiB free when the run starts
    if nbytes > 64 << 10:
        raise OSError(errno.ENOSPC, "No space left on device")
    real(fd, nbytes)
disk.fallocate = small_disk
disk.ensure_room = lambda *a, **k: 0  # (the race it cannot see)
real_open = builtins.open
def full_open(path, mode="r", *a, **k):  # the disk is full by then
    if "untrusted" in str(path) and "a" in mode:
        raise OSError(errno.ENOSPC, "No space left on device")
    return real_open(path, mode, *a, **k)
builtins.open = full_open
try:
    with h5.EmbeddingsWriter({str(tmp_path / "o.h5")!r}, kinds=(h5.PER_PROTEIN,)) as w:
        resource.setrlimit(resource.RLIMIT_FSIZE, (3_000_000, resource.RLIM_INFINITY))
        for b in range(100000):
            for i in range(9):
                w.write(f"p{{b}}_{{i}}", "h", "M" * 50, per_protein=np.ones(1024, np.float32))
            w.flush_due()
except h5.RuntimeFailure as exc:
    print("FAILURE", exc, flush=True)
print("carried on", flush=True)  # (a library caller, a notebook, goes on after the error)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert "FAILURE" in r.stdout, r.stdout + r.stderr[-2000:]
    # The error's traceback, let go once handled, freed the h5py objects of the failed write, and
    # HDF5 crashed the process (SIGSEGV) there; they are kept with the file, and the exit handler
    # ends the process with exit 1 before HDF5's teardown.
    assert "carried on" in r.stdout and r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert "do not resume it" not in r.stdout, r.stdout
    assert "the proteins written before are kept in it, and resume=True embeds again the" in r.stdout, r.stdout


@pytest.mark.parametrize("layout", ["grouped", "stacked"])
def test_the_file_on_disk_between_two_flushes_is_the_last_flush_s(tmp_path, layout):
    """A SIGKILL leaves the file as it is on disk, which must be what the last flush wrote plus
    data no index points to yet. HDF5's metadata cache (2 MiB) wrote parts of a group's index
    whenever it overflowed between flushes, past some 5,000 proteins in a group: a kill then left
    the index half-updated ("incorrect metadata checksum", 1 kill in 8 at 30,000 proteins) and
    --resume found none of the proteins already embedded (a day's run begun again)."""
    import shutil

    out = tmp_path / "o.h5"
    vector = np.ones(21, np.float32)
    with EmbeddingsWriter(out, kinds=(PER_PROTEIN,), layout=layout) as w:
        for i in range(2000):
            w.write(f"p{i}", f"p{i} protein", "M" * 30, per_protein=vector)
        w.flush()
        for i in range(2000, 12000):  # (what a second of a fast run writes, more than the cache holds)
            w.write(f"p{i}", f"p{i} protein", "M" * 30, per_protein=vector)
        shutil.copyfile(w.partial, tmp_path / "killed.h5")  # (the file as a SIGKILL now would leave it)
    with h5py.File(tmp_path / "killed.h5", "r") as f:
        names = []
        group = f[PER_PROTEIN]
        group.id.links.iterate(names.append)  # (raised on the index a kill left)
        assert len(names) >= 2000
        assert f[PER_PROTEIN]["p1999"].attrs["length"] == 30


def test_a_merge_that_never_flushes_keeps_the_metadata_cache_bounded(tmp_path, monkeypatch):
    """Held until a flush, HDF5's metadata cache grows with every protein copied; a merge of a
    million proteins (torchrun's shards, `protrans merge`) has no flush of its own, and would
    have held some 7 GB of memory: past _MetadataHold.LIMIT the writer flushes, and the cache
    shrinks."""
    import protrans_cli.io.h5 as h5

    vector = np.ones(21, np.float32)
    with EmbeddingsWriter(tmp_path / "a.h5", kinds=(PER_PROTEIN,)) as w:
        for i in range(3000):
            w.write(f"p{i}", f"p{i}", "M" * 30, per_protein=vector)
    monkeypatch.setattr(h5._MetadataHold, "LIMIT", 256 << 10)
    monkeypatch.setattr(h5._MetadataHold, "CHECK_EVERY", 64)
    monkeypatch.setattr(h5._MetadataHold, "SHRUNK", 1 << 20)  # (HDF5's smallest cache)
    sizes = []
    real_flushed = h5._MetadataHold.flushed

    def flushed(self):
        sizes.append(self.file.id.get_mdc_size()[2])
        real_flushed(self)
    monkeypatch.setattr(h5._MetadataHold, "flushed", flushed)
    with EmbeddingsWriter(tmp_path / "b.h5", kinds=(PER_PROTEIN,)) as w:
        first = len(sizes)
        assert w.copy_from(tmp_path / "a.h5") == 3000
        during = sizes[first:]
        largest = w.file.id.get_mdc_size()[2]
    assert len(during) >= 3 and max(during) < 2 << 20, during  # flushed on the way, never far past LIMIT
    assert largest < 2 << 20
    with EmbeddingsReader(tmp_path / "b.h5") as r:
        assert len(r.ids(PER_PROTEIN)) == 3000


def test_done_ids_of_a_resumed_file_keeps_the_metadata_cache_bounded(tmp_path):
    """The writer holds HDF5's metadata cache between flushes (no evictions), and a read through
    it kept every object it met: `done_ids` of a resumed file of 100,000 proteins grew the cache
    to 118 MB as HDF5 counts it (1.5 GB of memory, 161 MB before the hold)."""
    vector = np.ones(4, np.float32)
    with EmbeddingsWriter(tmp_path / "a.h5", kinds=(PER_PROTEIN,)) as w:
        for i in range(6000):
            w.write(f"p{i}", f"p{i}", "M" * 30, per_protein=vector)
    with EmbeddingsWriter(tmp_path / "a.h5", kinds=(PER_PROTEIN,), resume=True) as w:
        assert len(w.done_ids()) == 6000
        assert w.file.id.get_mdc_size()[2] < 2 << 20
        w.write("new", "new", "M" * 30, per_protein=vector)
    with EmbeddingsReader(tmp_path / "a.h5") as r:
        assert len(r.ids(PER_PROTEIN)) == 6001


def test_a_write_failing_in_a_merge_of_shards_says_resume_copies_them_again(tmp_path):
    """torchrun's rank 0 copies the ranks' shards into the output; a write failing there said
    --resume "embeds again" the proteins since the last flush, which it copies again from the
    shards it keeps (they are removed only once the merged file is flushed)."""
    vector = np.ones(21, np.float32)
    with EmbeddingsWriter(tmp_path / "shard.h5", kinds=(PER_PROTEIN,)) as w:
        for i in range(3):
            w.write(f"p{i}", f"p{i}", "MKV", per_protein=vector)
    for merged, says in ((True, "resume=True copies again from the shards it keeps the 3 proteins written since"),
                         (False, "resume=True embeds again the 3 proteins written since")):
        out = tmp_path / f"out{merged}.h5"
        w = EmbeddingsWriter(out, kinds=(PER_PROTEIN,))
        w.flush()
        if merged:
            w.copy_from(tmp_path / "shard.h5")
        else:
            for i in range(3):
                w.write(f"p{i}", f"p{i}", "MKV", per_protein=vector)
        failure = w._abandon(OSError("file write failed"))
        assert says in str(failure), failure


@pytest.mark.parametrize("layout", ["grouped", "stacked"])
def test_a_reader_used_after_its_with_block_says_it_is_closed(tmp_path, layout):
    """r.ids() after `with EmbeddingsReader(...) as r:` was h5py's bare "ValueError: Invalid
    location identifier"."""
    with EmbeddingsWriter(tmp_path / "o.h5", kinds=(PER_PROTEIN,), layout=layout) as w:
        w.write("a", "a", "MKV", per_protein=np.ones(3, np.float32))
    with EmbeddingsReader(tmp_path / "o.h5") as r:
        assert r.ids() == ["a"]
    for call in (r.ids, r.matrix, lambda: r.get("a"), r.dim, lambda: list(r.items())):
        with pytest.raises(UsageError, match="this EmbeddingsReader is closed: use it inside its with block"):
            call()



@pytest.mark.parametrize("layout", ["grouped", "stacked"])
def test_items_begun_in_the_with_block_and_runs_say_the_reader_is_closed_after_it(tmp_path, layout):
    """An items() iterator begun inside the with block and resumed after it was h5py's bare
    "ValueError: Invalid location identifier" (grouped), and r.runs() h5py's KeyError "invalid
    identifier type to function": the closed reader's UsageError, as every other method says."""
    with EmbeddingsWriter(tmp_path / "o.h5", kinds=(PER_PROTEIN,), layout=layout) as w:
        for ident in ("a", "b"):
            w.write(ident, ident, "MKV", per_protein=np.ones(3, np.float32))
    with EmbeddingsReader(tmp_path / "o.h5") as r:
        rows = r.items()
        assert next(rows)[0] == "a"
        r.runs()  # (open: no error)
    for call in (lambda: next(rows), r.runs):
        with pytest.raises(UsageError, match="this EmbeddingsReader is closed: use it inside its with block"):
            call()

def test_cached_types_write_the_same_values_and_types(tmp_path):
    """The writer reuses its HDF5 types, dataspaces and memory types from one dataset to the next
    (io.h5._create_dataset, _set_attr): every dataset and attribute still holds its own value and
    the type h5py gives it (UTF-8 variable-length text, int64), whatever dtype and shape came before."""
    proteins = [("ü1", "ü1 37°C 蛋白", "MKT", np.float32, 3), ("p/2", "p/2 x", "MKTAY", np.float16, 3),
                ("p3", "p3 y", "MK", np.float32, 5), ("p4", "p4 z", "M", np.float32, 3)]
    for dtype in ("float32", "float16"):
        out = tmp_path / f"{dtype}.h5"
        with EmbeddingsWriter(out, kinds=(PER_RESIDUE, PER_PROTEIN), storage_dtype=dtype, attrs={}) as w:
            for i, (ident, header, seq, kind, dim) in enumerate(proteins):
                rows = (np.arange(len(seq) * dim, dtype=kind).reshape(len(seq), dim) + i)
                w.write(ident, header, seq, per_residue=rows, per_protein=rows.mean(axis=0),
                        extra_attrs={"computed": f"float32 ({i}) ß"} if i % 2 else {"truncated_from": 10 + i,
                                                                                   "flag": bool(i)})
        with h5py.File(out, "r") as f:
            for i, (ident, header, seq, kind, dim) in enumerate(proteins):
                ds = f[PER_RESIDUE][escape_key(ident)]
                assert ds.dtype == np.dtype(dtype) and ds.shape == (len(seq), dim)
                np.testing.assert_array_equal(ds[()], (np.arange(len(seq) * dim).reshape(len(seq), dim) + i)
                                              .astype(kind).astype(dtype))
                assert ds.attrs["id"] == ident and ds.attrs["header"] == header and ds.attrs["length"] == len(seq)
                assert ds.attrs.get_id("header").get_type().get_cset() == h5py.h5t.CSET_UTF8
                assert ds.attrs.get_id("length").dtype == np.dtype("int64")
                if i % 2:
                    assert ds.attrs["computed"] == f"float32 ({i}) ß"
                else:
                    assert ds.attrs["truncated_from"] == 10 + i
                    # (a bool is an int to Python: stored as h5py stores a bool, not as int64)
                    assert ds.attrs.get_id("flag").dtype == np.dtype(bool) and ds.attrs["flag"] is np.bool_(bool(i))


@pytest.mark.parametrize("value", [np.arange(3), 5])
def test_a_flat_files_kind_attribute_of_another_type_is_guessed_from_the_shapes(tmp_path, value):
    """A `kind` attribute that is not a string (another tool's file): an array was a numpy
    traceback ("truth value of an array ... is ambiguous") in every reader, fit, predict, merge."""
    with h5py.File(tmp_path / "k.h5", "w") as f:
        f.create_dataset("P1", data=np.ones(4, np.float32))
        f.attrs["kind"] = value
    with EmbeddingsReader(tmp_path / "k.h5") as r:
        assert r.layout == "flat" and r.kinds == (PER_PROTEIN,) and r.ids() == ["P1"]


def test_a_shards_run_that_differs_by_the_device_alone_is_this_run(tmp_path):
    """Under torchrun on GPUs each rank's shard records its own device (cuda:1, ...): merged by
    rank 0 (cuda:0), the file's `runs` lists this run once, as one process's run (the torchrun
    test checks that on CPU ranks); a shard's earlier run (another command) is kept, before it.
    Comparing the device too listed every rank's run and passed every test (CPU ranks agree)."""
    this = {"command_line": "torchrun -m protrans_cli embed x.fa -o o.h5", "protrans_version": "1.2",
            "compute_dtype": "bfloat16"}
    earlier = dict(this, command_line="protrans embed x.fa -o o.h5 --part 1/2", device="cpu")
    shard = tmp_path / "o.h5.shard-001-of-002"
    with EmbeddingsWriter(shard, kinds=(PER_PROTEIN,), attrs=dict(this, device="cuda:1")) as w:
        w.write("A", "A", "MKV", per_protein=np.ones(3, np.float32))
    with h5py.File(shard, "a") as f:
        f.attrs["runs"] = json.dumps([earlier, json.loads(f.attrs["runs"])[-1]])
    out = tmp_path / "o.h5"
    with EmbeddingsWriter(out, kinds=(PER_PROTEIN,), attrs=dict(this, device="cuda:0")) as w:
        w.write("B", "B", "MKL", per_protein=np.zeros(3, np.float32))
        w.copy_from(shard)
    with EmbeddingsReader(out) as r:
        assert [run["device"] for run in r.runs()] == ["cpu", "cuda:0"]
        assert r.runs()[0]["command_line"] == earlier["command_line"] and sorted(r.ids()) == ["A", "B"]


def test_an_id_or_header_with_a_nul_byte_is_refused_before_anything_is_written(tmp_path):
    """h5py refused the NUL ("VLEN strings do not support embedded NULLs") only at the attributes,
    after the dataset was made: a caller that went on closed a file holding a record without its
    id, header or length. Now a UsageError first, and the file is as if the call had not been made."""
    out = tmp_path / "x.h5"
    with EmbeddingsWriter(out, layout="flat") as writer:
        writer.write("a", "a", "MK", per_residue=np.ones((2, 3), np.float32))
        for ident, header in (("b\x00c", "b"), ("b", "b \x00 description")):
            with pytest.raises(UsageError, match="holds a NUL byte"):
                writer.write(ident, header, "MKT", per_residue=np.ones((3, 3), np.float32))
        writer.write("d", "d", "M", per_residue=np.ones((1, 3), np.float32))
    with h5py.File(out) as f:
        assert sorted(f) == ["a", "d"] and all("id" in f[k].attrs for k in f)
    reader = EmbeddingsReader(out)
    assert reader.ids() == ["a", "d"]


def test_reader_given_a_list_of_files_is_one_usage_error_naming_the_argument(tmp_path):
    """EmbeddingsReader(["x.h5"]) read the list as its text: "['x.h5']: no such file"."""
    _write(tmp_path / "x.h5", ["a"])
    with pytest.raises(UsageError, match=r"^EmbeddingsReader: path must be a path \(one embeddings file\), got list "
                                         r"\[.*; open a reader for each file$"):
        EmbeddingsReader([tmp_path / "x.h5"])
    with EmbeddingsReader(tmp_path / "x.h5") as reader:  # a pathlib.Path, as before
        assert reader.ids() == ["a"]


def test_a_probabilities_file_is_not_read_as_embeddings(tmp_path):
    """predict --probabilities' file (a group per output, no embeddings) was read as a flat file
    of no protein: fit found every label record "without an embedding", knn "per-residue
    embeddings only", and r.ids() was [] without a word. Refused as a contacts file is."""
    from types import SimpleNamespace

    from protrans_cli.heads.predict import _ProbabilityWriter
    from protrans_cli.heads.tasks import get_task

    path = tmp_path / "q.ss3.h5"
    with _ProbabilityWriter(path, get_task("ss3+ss8")) as writer:  # (as predict writes it)
        writer.add([SimpleNamespace(id="P1")], {"ss3": [np.full((4, 3), 1 / 3)], "ss8": [np.full((4, 8), 1 / 8)]})
    with pytest.raises(InputError, match=r"q.ss3.h5: holds the class probabilities of protrans predict "
                                         r"--probabilities \(task ss3\+ss8\), not embeddings"):
        EmbeddingsReader(path)


def test_a_readers_group_is_looked_up_once_a_kind_not_once_a_protein(tmp_path, monkeypatch):
    """fit and predict --labels, export --ids and knn ask the reader for a kind's group two or
    three times a protein (key_for, facts, the read): each was h5py's `file[kind]` and a link
    check, a fifth of the time fit took to match 20,000 label records to their datasets."""
    out = tmp_path / "e.h5"
    arrays = _write(out, ["a", "b", "c"])
    looked_up = []
    lookup = h5py.Group.__getitem__

    def counted(group, name):
        if name in (PER_RESIDUE, PER_PROTEIN):
            looked_up.append(name)
        return lookup(group, name)

    monkeypatch.setattr(h5py.Group, "__getitem__", counted)
    with EmbeddingsReader(out) as r:
        looked_up.clear()  # (opening the file looks at what its groups are)
        for ident in arrays:
            for kind in (PER_RESIDUE, PER_PROTEIN):
                key = r.key_for(ident, kind)
                assert r.facts(key, kind) == (3, None, sequence_checksum("MKV"))
                assert r.get(ident, kind).shape == ((3, 4) if kind == PER_RESIDUE else (4,))
    assert sorted(looked_up) == [PER_PROTEIN, PER_RESIDUE]
    with pytest.raises(UsageError, match="this EmbeddingsReader is closed"):  # (not a stale group's h5py error)
        r.get("a", PER_PROTEIN)


def test_a_dataset_declaring_gigabytes_it_does_not_store_is_refused_before_it_is_read(tmp_path, run_cli):
    """A per-residue dataset of a few KB declaring (10**9, 21) rows: export --per-residue and every
    reader allocated 78 GiB ("out of memory", naming no file) or, under that, filled the memory
    with the fill value. Refused naming the file and protein; a real array is still read."""
    path = tmp_path / "e.h5"
    _write(path, ["a", "b"])
    with h5py.File(path, "a") as f:
        group = f[PER_RESIDUE]
        attrs = dict(group["b"].attrs)
        del group["b"]
        group.create_dataset("b", shape=(10**9, 21), dtype="f4", chunks=(1024, 21)).attrs.update(attrs)
        # under 1 GiB declared: read as h5py reads it (its fill value), whatever it stores
        group.create_dataset("small", shape=(100, 64), dtype="f4", chunks=(10, 64), fillvalue=0.5)
    with EmbeddingsReader(path) as reader:
        assert reader.get("a", PER_RESIDUE).shape[0] == 3
        np.testing.assert_array_equal(reader.get("small", PER_RESIDUE), np.full((100, 64), 0.5, np.float32))
        with pytest.raises(InputError, match=r"record 'b'.*declares shape 1000000000x21 \(78.2 GiB\) but stores 0 "):
            reader.get("b", PER_RESIDUE)
        with pytest.raises(InputError, match="declares shape"):
            list(reader.items(PER_RESIDUE))
    r = run_cli("export", path, "--per-residue", "-o", tmp_path / "out.tsv")
    assert r.exit_code == 1 and f"{path}, record 'b': embedding declares shape" in r.stderr, r.stderr
    assert not (tmp_path / "out.tsv").exists()


def test_an_embeddings_file_packed_for_sending_says_how_to_unpack_it(tmp_path):
    """`gzip out.h5` (to send it), a zip of it and an empty copy were "not a readable HDF5 file
    (... file signature not found)" and no more: the reader now says what the file is. A PyTorch
    checkpoint (Hugging Face's pytorch_model.bin) is a zip too, but none to extract the HDF5 file from."""
    import bz2
    import gzip
    import lzma
    import zipfile

    import torch

    _write(tmp_path / "e.h5", ["a"])
    data = (tmp_path / "e.h5").read_bytes()
    (tmp_path / "e.h5.gz").write_bytes(gzip.compress(data))
    (tmp_path / "e.h5.bz2").write_bytes(bz2.compress(data))
    (tmp_path / "e.h5.xz").write_bytes(lzma.compress(data))
    with zipfile.ZipFile(tmp_path / "e.zip", "w") as z:
        z.write(tmp_path / "e.h5", "e.h5")
    (tmp_path / "empty.h5").write_bytes(b"")
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")  # (a zip, but none to extract)
    for name, said in (("e.h5.gz", "the file is gzip-compressed, and an HDF5 file is read uncompressed: decompress "
                        "it first (gunzip -k FILE)"),
                       ("e.h5.bz2", "the file is bz2-compressed, and an HDF5 file is read uncompressed: decompress "
                        "it first (bunzip2 -k FILE)"),
                       ("e.h5.xz", "the file is xz-compressed, and an HDF5 file is read uncompressed: decompress "
                        "it first (unxz -k FILE)"),
                       ("e.zip", "the file is a zip archive: extract the HDF5 file from it first"),
                       ("empty.h5", "the file is empty (0 bytes)"),
                       ("pytorch_model.bin", "the file is a PyTorch checkpoint (model weights or tensors, such as "
                        "torch.save writes), not embeddings")):
        with pytest.raises(InputError) as err:
            EmbeddingsReader(tmp_path / name)
        assert str(err.value) == f"{tmp_path / name}: not an HDF5 file; {said}"


def test_a_file_that_is_not_hdf5_at_all_is_said_so_plainly(tmp_path, run_cli):
    """A FASTA, a table or any other file given where embeddings go was "not a readable HDF5 file
    (Unable to synchronously open file (file signature not found))", HDF5's words for a file it
    has no signature in; now "not an HDF5 file" and what the file is, in every command that reads
    one. A damaged HDF5 file keeps HDF5's own reason (truncated file, ...)."""
    _write(tmp_path / "e.h5", ["a"])
    (tmp_path / "p.fa").write_text(">P1\nMKTAYIAKQR\n")
    (tmp_path / "t.csv").write_text("id,label\nP1,Nucleus\n")
    (tmp_path / "b.bin").write_bytes(b"\x01\x02\x00\x03" * 64)
    said = {"p.fa": "not an HDF5 file; it is a FASTA file: embed it first (protrans embed; predict and knn also take "
                    "it as --fasta)",
            "t.csv": "not an HDF5 file (it begins 'id,label\\nP1,Nucl')",
            "b.bin": "not an HDF5 file (the file is binary)"}
    for name, message in said.items():
        path = tmp_path / name
        with pytest.raises(InputError) as err:
            EmbeddingsReader(path)
        assert str(err.value) == f"{path}: {message}"
        for args in (["info", path], ["export", path, "-o", tmp_path / "out.tsv"],
                     ["merge", tmp_path / "e.h5", path, "-o", tmp_path / "m.h5"], ["knn", path, "--reference", path]):
            r = run_cli(*args)
            assert r.exit_code == 1 and r.stderr == f"protrans: error: {path}: {message}\n", (args, r.stderr)
    data = (tmp_path / "e.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match="cut.h5: not a readable HDF5 file \\(.*truncated file"):
        EmbeddingsReader(tmp_path / "cut.h5")
    assert not (tmp_path / "out.tsv").exists() and not (tmp_path / "m.h5").exists()


def test_a_model_or_head_folder_given_as_the_embeddings_says_what_it_is(tmp_path):
    """`info runs/bert`, `predict HEAD --embeddings HEAD`: "is a directory, expected an HDF5 file"
    and no more; the folder is now named for what it is."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "head").mkdir()
    (tmp_path / "head" / "config.json").write_text('{"task": {}, "hyperparameters": {}}')
    for name, said in (("run", "(it is a language model's directory, bert, which -m takes)"),
                       ("head", "(it is a prediction head's directory, which predict takes)")):
        with pytest.raises(InputError) as err:
            EmbeddingsReader(tmp_path / name)
        assert str(err.value) == f"{tmp_path / name}: is a directory, expected an HDF5 file {said}"



@pytest.mark.parametrize("layout", ["grouped", "flat", "stacked"])
def test_float16_storage_refuses_values_it_would_store_as_infinity(tmp_path, layout):
    # A library caller's float32 values beyond float16's range (65504) were stored as inf with
    # numpy's overflow warning alone; the commands check before they write, the writer now too.
    import warnings

    kind, shape = (PER_RESIDUE, (3, 4)) if layout == "grouped" else (PER_PROTEIN, (4,))
    big = np.ones(shape, np.float32)
    big.flat[-2] = 7e4
    out = tmp_path / "o.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (nor numpy's overflow warning)
        with EmbeddingsWriter(out, kinds=(kind,), layout=layout, storage_dtype="float16") as w:
            with pytest.raises(InputError, match=r"protein 'big': .* beyond float16's range \(largest magnitude 70000\)"):
                w.write("big", "big", "MKT", **{kind: big})
            big.flat[0] = np.inf  # (an infinite value beside it changes nothing)
            with pytest.raises(InputError, match=r"protein 'big': .* \(largest magnitude 70000\)"):
                w.write("big", "big", "MKT", **{kind: big})
            w.write("edge", "edge", "MKT", **{kind: np.full(shape, 65504, np.float32)})
            # (infinite where given: stored as given, as float32 storage does)
            w.write("inf", "inf", "MKT", **{kind: np.full(shape, np.inf, np.float32)})
    with EmbeddingsReader(out) as r:
        assert sorted(r.keys()) == ["edge", "inf"] and r.get("edge", kind).max() == 65504


def test_the_disk_is_probed_for_the_bytes_written_not_before_every_batch(tmp_path, monkeypatch):
    """The writer takes disk for real (fallocate) for ROOM_AHEAD of writes at a time. Each batch
    was counted as a MiB of metadata besides its data: a one-hot E. coli run (3,006 batches of a few
    KB, a 120 MB file) probed 51 times, 3.4 GB. Counted as the file grows, small batches share a
    probe, and no batch is written beyond what the last probe showed room for."""
    import protrans_cli.io.disk as disk

    partial = tmp_path / "e.h5.partial"
    probes = []  # (bytes taken, the file's size then)
    monkeypatch.setattr(disk, "_reserve", lambda folder, nbytes: probes.append(
        (nbytes, partial.stat().st_size if partial.exists() else 0)) or None)
    monkeypatch.setattr(EmbeddingsWriter, "ROOM_AHEAD", 8 << 20)
    with EmbeddingsWriter(tmp_path / "e.h5", kinds=(PER_RESIDUE,)) as w:
        opened = len(probes)
        for i in range(150):  # small batches: one probe for all (each was 1 MiB: 20 probes)
            w.ensure_room(84)
            w.write(f"s{i}", f"s{i}", "MKV", per_residue=np.ones((1, 21), np.float32))
        assert len(probes) - opened == 1, probes
        rows = np.ones(((2 << 20) // 84, 21), np.float32)
        for i in range(6):  # 2 MiB a batch: probed again as the file grows past the room ahead
            w.ensure_room(rows.nbytes)
            taken, then = probes[-1]
            w.write(f"b{i}", f"b{i}", "M" * len(rows), per_residue=rows)
            assert partial.stat().st_size - then <= taken
        assert len(probes) - opened - 1 >= 12 // 4, probes  # (8 MiB ahead, 4 of them kept for HDF5)
