"""`protrans merge`: the embed outputs of a split input into one file, equal to embedding the
whole input at once."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from protrans_cli.embed import EmbedOptions, embed
from protrans_cli.errors import InputError, UsageError
from protrans_cli.io.h5 import PER_PROTEIN, EmbeddingsReader, partial_path
from protrans_cli.merge import merge
from test_embed import assert_same_content, file_content, generated_fasta


def _split(fasta, parts, tmp_path, overlap=0):
    """The records of `fasta` in `parts` consecutive FASTA files, each but the first starting with
    the last `overlap` records of the one before (the same ids and sequences again)."""
    records = [">" + r for r in fasta.read_text().split(">")[1:]]
    size = -(-len(records) // parts)
    paths = []
    for i in range(parts):
        path = tmp_path / f"part{i}.fa"
        path.write_text("".join(records[max(0, i * size - overlap):(i + 1) * size]))
        paths.append(path)
    return paths


def _embed(fasta, out, **kw):
    embed(fasta, out, EmbedOptions(**{"model": "onehot", "threads": 1, **kw}))
    return out


def test_merged_parts_equal_the_whole_input_embedded_at_once(tmp_path):
    """Three parts of a split FASTA (the second and third repeating records of the part before):
    every dataset and attribute of the merged file equals one run over the whole input, each
    repeated protein kept once, and the file records the parts' runs and the merge's."""
    fasta = generated_fasta(tmp_path / "all.fa", 90, repeat_every=0, long_every=9)
    whole = _embed(fasta, tmp_path / "whole.h5", max_length=100, long_policy="skip")
    parts = [_embed(p, tmp_path / f"{p.stem}.h5", max_length=100, long_policy="skip")
             for p in _split(fasta, 3, tmp_path, overlap=4)]
    summary = merge(parts, tmp_path / "merged.h5", command_line="protrans merge parts")
    overlap = {f"g{i}" for start in (30, 60) for i in range(start - 4, start)}  # the records parts repeat
    assert summary.proteins + len(summary.failed) == 90 and summary.repeated == len(overlap - set(summary.failed))
    assert summary.failed and set(summary.failed) <= {f"g{i}" for i in range(0, 90, 9)}  # longer than 100
    assert_same_content(file_content(tmp_path / "merged.h5"), file_content(whole))
    with h5py.File(tmp_path / "merged.h5", "r") as f:
        runs = json.loads(f.attrs["runs"])
        # the parts' runs (three alike here, recorded once) and the merge's
        assert [r["command_line"].split(" called")[0] for r in runs] == ["protrans_cli.embed()", "protrans merge parts"]
        assert f.attrs["model"] == "onehot" and f.attrs["layout"] == "grouped"
        with h5py.File(whole, "r") as one:  # the settings every part ran with, as one run records them
            for key in ("device", "compute_dtype", "packing", "compiled"):
                assert f.attrs[key] == one.attrs[key], key
    assert not partial_path(tmp_path / "merged.h5").exists()


@pytest.mark.parametrize("layout", ["grouped", "stacked"])
def test_merged_parts_list_every_parts_truncated_proteins(tmp_path, layout):
    """The file's `truncated` list (embed --long-policy truncate) is every part's, as one run over
    the whole input records it (part 0's alone was kept, as one of its settings)."""
    fasta = generated_fasta(tmp_path / "all.fa", 40, repeat_every=0, long_every=5)
    kw = dict(max_length=70, long_policy="truncate", per_residue=False, layout=layout)
    whole = _embed(fasta, tmp_path / "whole.h5", **kw)
    parts = [_embed(p, tmp_path / f"{p.stem}.h5", **kw) for p in _split(fasta, 2, tmp_path)]
    merge(parts, tmp_path / "merged.h5")
    with h5py.File(whole, "r") as one, h5py.File(tmp_path / "merged.h5", "r") as merged:
        assert len(json.loads(one.attrs["truncated"])) == 8
        assert json.loads(merged.attrs["truncated"]) == json.loads(one.attrs["truncated"])


@pytest.mark.parametrize("layout", ["grouped", "stacked"])
def test_a_setting_the_parts_ran_with_differently_is_left_to_their_runs(tmp_path, layout):
    """A part embedded on a GPU in bfloat16, the other on the CPU: the merged file's `device` and
    `compute_dtype` would be one part's, so it has neither; the settings they share are kept, and
    each part's are in `runs`."""
    fasta = generated_fasta(tmp_path / "all.fa", 20, repeat_every=0)
    parts = [_embed(p, tmp_path / f"{p.stem}.h5", per_residue=False, layout=layout) for p in _split(fasta, 2, tmp_path)]
    with h5py.File(parts[1], "r+") as f:
        f.attrs["device"], f.attrs["compute_dtype"] = "cuda:0", "bfloat16"
        f.attrs["runs"] = json.dumps([dict(run, device="cuda:0", compute_dtype="bfloat16")
                                      for run in json.loads(f.attrs["runs"])])
    merge(parts, tmp_path / "merged.h5")
    with h5py.File(tmp_path / "merged.h5", "r") as f:
        assert "device" not in f.attrs and "compute_dtype" not in f.attrs and f.attrs["packing"] == False  # noqa: E712
        assert {run.get("compute_dtype") for run in json.loads(f.attrs["runs"])} >= {"float32", "bfloat16"}


def test_a_file_system_that_cannot_fsync_still_writes_a_stacked_file(tmp_path, monkeypatch):
    """Some FUSE mounts answer fsync with EINVAL (the file cannot be synced, its data written):
    a stacked embed stopped at its last step ("cannot write the stacked file ([Errno 22] Invalid
    argument)") and a stacked merge said only "Invalid argument", after all the work. A real
    failure of fsync (EIO) still stops the run, naming the output."""
    import errno

    fasta = generated_fasta(tmp_path / "all.fa", 12, repeat_every=0)
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EINVAL, "Invalid argument")))
    first, second = (_embed(p, tmp_path / f"{p.stem}.h5", per_residue=False, layout="stacked")
                     for p in _split(fasta, 2, tmp_path))
    assert merge([first, second], tmp_path / "merged.h5").proteins == 12
    monkeypatch.setattr(os, "fsync", real_fsync)
    whole = _embed(fasta, tmp_path / "whole.h5", per_residue=False, layout="stacked")
    with EmbeddingsReader(tmp_path / "merged.h5") as merged, EmbeddingsReader(whole) as one:
        assert merged.matrix()[0] == one.matrix()[0]
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")))
    with pytest.raises(OSError, match=f"Input/output error: '{tmp_path / 'again.h5'}'"):
        merge([first, second], tmp_path / "again.h5")
    assert not (tmp_path / "again.h5").exists()


def test_parts_of_any_layout_merge_into_a_stacked_file(tmp_path):
    """A grouped and a stacked part, merged into the stacked layout: the stacked file one run
    over the whole input writes."""
    fasta = generated_fasta(tmp_path / "all.fa", 40, repeat_every=0)
    first, second = _split(fasta, 2, tmp_path)
    parts = [_embed(first, tmp_path / "a.h5", per_residue=False, layout="flat"),
             _embed(second, tmp_path / "b.h5", per_residue=False, layout="stacked")]
    whole = _embed(fasta, tmp_path / "whole.h5", per_residue=False, layout="stacked")
    summary = merge(parts, tmp_path / "merged.h5", layout="stacked")
    assert summary.proteins == 40 and summary.repeated == 0
    with EmbeddingsReader(tmp_path / "merged.h5") as merged, EmbeddingsReader(whole) as one:
        assert merged.layout == "stacked"
        ids, x = merged.matrix()
        assert (ids, x.tolist()) == (lambda m: (m[0], m[1].tolist()))(one.matrix())
        for name in ("headers", "lengths", "checksums"):
            assert merged._stacked.column(name).tolist() == one._stacked.column(name).tolist()
    # and back into a grouped file, as the first part was flat
    merge([tmp_path / "merged.h5"], tmp_path / "grouped.h5", layout="grouped")
    with EmbeddingsReader(tmp_path / "grouped.h5") as r:
        assert r.layout == "grouped" and sorted(r.ids(PER_PROTEIN)) == sorted(ids)


def test_an_id_in_two_parts_with_other_sequences_is_refused_before_anything_is_written(tmp_path, run_cli):
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n>P2\nMKV\n")
    (tmp_path / "b.fa").write_text(">P3\nGGG\n>P1\nMKTAYIAR\n")
    for name in ("a", "b"):
        _embed(tmp_path / f"{name}.fa", tmp_path / f"{name}.h5")
    r = run_cli("merge", tmp_path / "a.h5", tmp_path / "b.h5", "-o", tmp_path / "m.h5")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1
    assert f"protrans: error: {tmp_path / 'b.h5'}: protein 'P1' is also in {tmp_path / 'a.h5'}, with another " \
           "sequence: an id names one protein" in r.stderr
    assert not (tmp_path / "m.h5").exists() and not partial_path(tmp_path / "m.h5").exists()


def test_an_id_in_two_parts_without_checksums_is_refused_not_taken_for_one_protein(tmp_path, run_cli):
    """Parts that record no sequence checksums (import-esm without --fasta) cannot tell whether
    an id in both names one protein: refused, naming both files, not merged as a repeat of the
    first (one of two possibly different embeddings silently dropped)."""
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n>P2\nMKV\n")
    (tmp_path / "b.fa").write_text(">P3\nGGG\n>P1\nMKTAYIAK\n")
    for name in ("a", "b"):
        _embed(tmp_path / f"{name}.fa", tmp_path / f"{name}.h5", per_residue=False)
        with h5py.File(tmp_path / f"{name}.h5", "r+") as f:
            for key in f[PER_PROTEIN]:
                del f[PER_PROTEIN][key].attrs["checksum"]
    r = run_cli("merge", tmp_path / "a.h5", tmp_path / "b.h5", "-o", tmp_path / "m.h5")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"protrans: error: {tmp_path / 'b.h5'}: protein 'P1' is also in {tmp_path / 'a.h5'}, with no sequence " \
           "checksum to compare" in r.stderr
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.parametrize("other, said", [
    ({"storage_dtype": "float16"}, "was written with storage_dtype='float16', "),
    ({"per_residue": False}, "was written with kinds='per_protein', "),
])
def test_parts_of_other_settings_are_refused_naming_the_setting(tmp_path, other, said):
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n")
    (tmp_path / "b.fa").write_text(">P2\nMKV\n")
    _embed(tmp_path / "a.fa", tmp_path / "a.h5")
    _embed(tmp_path / "b.fa", tmp_path / "b.h5", **other)
    with pytest.raises(InputError, match=said):
        merge([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


def test_parts_whose_layers_count_from_other_numbers_of_hidden_states_are_refused(tmp_path):
    """Layer -1 of 34 hidden states is not layer -1 of 33: two import-esm files made without -m,
    of esm-extract's --repr_layers 33 and 32, record `layers` [-1] alike and were merged into one
    file of 34 hidden states, half its vectors from another layer. A part from before the
    attribute is still merged."""
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n")
    (tmp_path / "b.fa").write_text(">P2\nMKV\n")
    parts = [_embed(tmp_path / "a.fa", tmp_path / "a.h5"), _embed(tmp_path / "b.fa", tmp_path / "b.h5")]
    for part, states in zip(parts, (34, 33)):
        with h5py.File(part, "r+") as f:
            f.attrs["num_hidden_states"] = states
    with pytest.raises(InputError, match="b.h5: was written with num_hidden_states=33, .*a.h5 with num_hidden_states=34"):
        merge(parts, tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()
    with h5py.File(parts[1], "r+") as f:
        del f.attrs["num_hidden_states"]
    assert merge(parts, tmp_path / "m.h5").proteins == 2


def test_parts_of_a_model_directory_retrained_between_them_are_refused(tmp_path):
    """A local model directory has no hub commit: parts embedded before and after a model was
    retrained into it were merged into one file of two models' rows. Their `weights_fingerprint`
    attributes differ; a part from before the attribute is merged, and the merged file then does
    not claim the fingerprint for every row."""
    from test_embed import save_bert_into

    model = tmp_path / "model"
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n")
    (tmp_path / "b.fa").write_text(">P2\nMKV\n")
    parts = []
    for name, seed in (("a", 0), ("b", 1)):
        save_bert_into(model, seed)  # the second retrains the model in the same directory
        parts.append(_embed(tmp_path / f"{name}.fa", tmp_path / f"{name}.h5", model=str(model)))
    with pytest.raises(InputError, match=r"b.h5: was written with other weights of the model .* than .*a.h5 "
                                         r"\(weights_fingerprint '[0-9a-f]{32}' and '[0-9a-f]{32}': the model "
                                         r"directory was retrained or replaced between the runs\)"):
        merge(parts, tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()
    with h5py.File(parts[1], "r+") as f:  # a part from before the attribute
        del f.attrs["weights_fingerprint"]
    assert merge(parts, tmp_path / "m.h5").proteins == 2
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert "weights_fingerprint" not in f.attrs
    with h5py.File(parts[0], "r") as a, h5py.File(parts[1], "r+") as f:  # the same weights: merged, kept
        f.attrs["weights_fingerprint"] = a.attrs["weights_fingerprint"]
    assert merge(parts, tmp_path / "m2.h5").proteins == 2
    with h5py.File(tmp_path / "m2.h5", "r") as f, h5py.File(parts[0], "r") as a:
        assert f.attrs["weights_fingerprint"] == a.attrs["weights_fingerprint"]


def test_a_short_name_and_its_hub_id_are_one_model_as_resume_takes_them(tmp_path):
    """embed records `-m` as given; --resume takes esm2_t6_8M_UR50D and facebook/esm2_t6_8M_UR50D
    for one model, and so does merge (it refused the parts of jobs that named it either way)."""
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n")
    (tmp_path / "b.fa").write_text(">P2\nMKV\n")
    for name, model in (("a", "esm2_t6_8M_UR50D"), ("b", "facebook/esm2_t6_8M_UR50D")):
        _embed(tmp_path / f"{name}.fa", tmp_path / f"{name}.h5")
        with h5py.File(tmp_path / f"{name}.h5", "a") as f:
            f.attrs["model"] = model
    assert merge([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m.h5").proteins == 2
    with h5py.File(tmp_path / "b.h5", "a") as f:
        f.attrs["model"] = "facebook/esm2_t12_35M_UR50D"
    with pytest.raises(InputError, match="was written with model='facebook/esm2_t12_35M_UR50D'"):
        merge([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m2.h5")


def test_a_part_without_a_hub_commit_merges_with_one_that_records_it_as_resume_takes_them(tmp_path):
    """import-esm -m esm2_t6_8M_UR50D records no hub commit (esm-extract's weights came from
    fair-esm), embed of that hub model the snapshot's: --resume takes them as one model, merge
    refused them ("commit=''"). The merged file records the commit known; two commits are refused."""
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n")
    (tmp_path / "b.fa").write_text(">P2\nMKV\n")
    for name, commit in (("a", ""), ("b", "b" * 40)):
        _embed(tmp_path / f"{name}.fa", tmp_path / f"{name}.h5")
        with h5py.File(tmp_path / f"{name}.h5", "a") as f:
            f.attrs["model"], f.attrs["commit"] = "esm2_t6_8M_UR50D", commit
    for n, order in enumerate((("a", "b"), ("b", "a"))):
        out = tmp_path / f"m{n}.h5"
        assert merge([tmp_path / f"{name}.h5" for name in order], out).proteins == 2
        with h5py.File(out) as f:
            assert f.attrs["commit"] == "b" * 40
    with h5py.File(tmp_path / "a.h5", "a") as f:
        f.attrs["commit"] = "c" * 40
    with pytest.raises(InputError, match="was written with commit='bbbb"):
        merge([tmp_path / "a.h5", tmp_path / "b.h5"], tmp_path / "m2.h5")

def test_a_part_of_a_version_that_recorded_no_max_length_merges_as_resume_takes_it(tmp_path):
    """Versions before 2026-11-29 recorded max_length 0 where --max-length was not given (the
    model's own limit), later ones the limit itself; `embed --resume` takes the two for one run,
    merge refused such a part beside a later one ("max_length=2046 ..., max_length=0"). Its
    proteins all within the limit, whole, it merges, and the merged file records the limit; a
    part of 0 holding a longer or a truncated protein is still refused."""
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n")
    (tmp_path / "b.fa").write_text(">P2\nMKV\n")
    (tmp_path / "c.fa").write_text(">P3\nMKVLA\n")
    old = _embed(tmp_path / "a.fa", tmp_path / "a.h5", max_length=6, long_policy="truncate")
    new = _embed(tmp_path / "b.fa", tmp_path / "b.h5", max_length=6, long_policy="truncate")
    other = _embed(tmp_path / "c.fa", tmp_path / "c.h5", max_length=6, long_policy="truncate")
    with h5py.File(old, "r+") as f:
        f.attrs["max_length"] = 0  # (P1 was truncated at 6: not a run within 6 whole)
    with pytest.raises(InputError, match="max_length=0"):
        merge([new, old], tmp_path / "m.h5")
    with h5py.File(other, "r+") as f:
        f.attrs["max_length"] = 0  # (P3, 5 residues: within 6)
    for n, order in enumerate(((new, other), (other, new))):
        out = tmp_path / f"m{n}.h5"
        assert merge(order, out).proteins == 2
        with h5py.File(out, "r") as f:
            assert f.attrs["max_length"] == 6
    with h5py.File(old, "r+") as f:
        f.attrs["max_length"] = 4  # (two limits recorded beside the 0: not one run's)
    with pytest.raises(InputError, match="max_length=0"):
        merge([new, other, old], tmp_path / "m2.h5")


def test_a_part_of_0_whose_longest_protein_is_the_limit_itself_merges(tmp_path):
    """A protein of exactly the limit's residues was embedded whole: a part recording 0 that holds
    one is within the limit, as one whose proteins are all shorter."""
    (tmp_path / "b.fa").write_text(">P2\nMKV\n")
    (tmp_path / "c.fa").write_text(">P3\nMKVLAW\n")
    new = _embed(tmp_path / "b.fa", tmp_path / "b.h5", max_length=6, long_policy="truncate")
    other = _embed(tmp_path / "c.fa", tmp_path / "c.h5", max_length=6, long_policy="truncate")
    with h5py.File(other, "r+") as f:
        f.attrs["max_length"] = 0  # (P3, 6 residues: whole)
    assert merge([new, other], tmp_path / "m.h5").proteins == 2
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert f.attrs["max_length"] == 6


def test_a_part_whose_max_length_is_not_a_number_is_named_not_a_traceback(tmp_path):
    """A hand-made part's max_length of text or an array beside a part recording 0 (the two-limit
    case above) was int()'d: a ValueError or TypeError traceback. It is a setting that differs."""
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n")
    (tmp_path / "b.fa").write_text(">P2\nMKV\n")
    (tmp_path / "c.fa").write_text(">P3\nMKVLA\n")
    parts = [_embed(tmp_path / f"{n}.fa", tmp_path / f"{n}.h5", max_length=6, long_policy="truncate") for n in "abc"]
    with h5py.File(parts[1], "r+") as f:
        f.attrs["max_length"] = 0
    for n, odd in enumerate(("none", np.array([6, 6]))):
        with h5py.File(parts[2], "r+") as f:
            f.attrs["max_length"] = odd
        with pytest.raises(InputError, match="max_length="):
            merge(parts, tmp_path / f"m{n}.h5")


def test_what_merge_refuses_in_one_line(tmp_path, run_cli):
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n")
    a = _embed(tmp_path / "a.fa", tmp_path / "a.h5")
    (tmp_path / "m.h5").write_bytes(b"keep")
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["P1"] = np.zeros(3)
    (tmp_path / "x.h5.partial").write_bytes(b"")
    (tmp_path / "head").mkdir()
    (tmp_path / "head" / "config.json").write_text('{"task": {}, "hyperparameters": {}}')
    cases = [
        (["-o", tmp_path / "m.h5", a], 2, "m.h5: exists: give --force to replace it"),
        (["-o", tmp_path / "n.h5", a, a], 2, "a.h5: named twice"),
        (["-o", a, a], 2, "a.h5: is also the output"),
        (["-o", tmp_path / "n.h5", tmp_path / "x.h5.partial"], 2, "an unfinished embed run's file"),
        (["-o", tmp_path / "n.h5", tmp_path / "missing.h5"], 1, "missing.h5: no such file"),
        # a head's folder was "not a file" alone: named as the other readers name it
        (["-o", tmp_path / "n.h5", a, tmp_path / "head"], 1, "head: is a directory, expected an HDF5 file (it is a "
         "prediction head's directory, which predict takes)"),
        (["-o", tmp_path / "n.h5", a, "-"], 2, "not from stdin ('-'): give each part as a file"),
        (["-o", tmp_path / "n.h5", tmp_path / "foreign.h5"], 1, "not an output of protrans embed"),
        (["-o", tmp_path / "n.h5", a, "--layout", "stacked"], 2, "the stacked layout holds per-protein vectors only"),
        (["-o", tmp_path / "n.h5", a, "--layout", "flat"], 2, "the flat layout holds one kind: merge into --layout "
         "grouped"),
    ]
    for args, code, said in cases:
        r = run_cli("merge", *args)
        assert r.exit_code == code and said in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    assert (tmp_path / "m.h5").read_bytes() == b"keep" and not (tmp_path / "n.h5").exists()
    # --force replaces an earlier output, not a file of another kind (a FASTA named by mistake)
    r = run_cli("merge", a, "-o", tmp_path / "m.h5", "--force")
    assert r.exit_code == 2 and "m.h5: is not an HDF5 file, it begins 'keep': --force replaces an earlier " \
        "embed or merge output only" in r.stderr, r.stderr
    assert (tmp_path / "m.h5").read_bytes() == b"keep"
    (tmp_path / "m.h5").write_bytes((tmp_path / "foreign.h5").read_bytes())
    r = run_cli("merge", a, "-o", tmp_path / "m.h5", "--force")
    assert r.exit_code == 0 and "merge: 1 protein from 1 file(s) into" in r.stderr
    with pytest.raises(UsageError, match="at least one"):
        merge([], tmp_path / "z.h5")
    # a merge (or embed) killed into this output left its partial file: kept unless --force
    partial_path(tmp_path / "p.h5").write_bytes(b"a killed run's")
    r = run_cli("merge", a, "-o", tmp_path / "p.h5")
    assert r.exit_code == 2 and r.stderr == (f"protrans: error: {tmp_path / 'p.h5'}: p.h5.partial exists (a run into "
                                             "this output that did not finish): give --force to replace it\n")
    assert partial_path(tmp_path / "p.h5").read_bytes() == b"a killed run's" and not (tmp_path / "p.h5").exists()
    r = run_cli("merge", a, "-o", tmp_path / "p.h5", "--force")
    assert r.exit_code == 0 and not partial_path(tmp_path / "p.h5").exists(), r.stderr
    assert EmbeddingsReader(tmp_path / "p.h5").keys() == ["P1"]


def test_force_over_a_folder_named_output_partial_is_one_line_leaving_nothing(tmp_path, run_cli):
    """A folder called OUT.partial under --force was "Is a directory", naming a hidden
    .OUT.partial.creating file the merge left behind; one line naming the folder now."""
    from test_embed import SMALL

    part = _embed(SMALL, tmp_path / "a.h5")
    partial_path(tmp_path / "m.h5").mkdir()
    r = run_cli("merge", part, "-o", tmp_path / "m.h5", "--force")
    assert r.exit_code == 1 and r.stderr == (f"protrans: error: {partial_path(tmp_path / 'm.h5')}: is a directory, "
                                             "expected an HDF5 file (move it away, or choose another -o)\n"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.h5", "m.h5.partial"]


def _merge_or_import_argv(command, tmp_path):
    """The arguments, before -o, of a merge of one part or of an import-esm of one protein (with
    --fasta), their inputs written under {tmp_path}/in."""
    import torch

    from test_embed import SMALL

    (tmp_path / "in").mkdir()
    if command == "merge":
        return ["merge", _embed(SMALL, tmp_path / "in" / "a.h5")]
    (tmp_path / "in" / "p.fa").write_text(">P1\nMKT\n")
    torch.save({"label": "P1", "mean_representations": {1: torch.zeros(4)}}, tmp_path / "in" / "P1.pt")
    return ["import-esm", tmp_path / "in", "--fasta", tmp_path / "in" / "p.fa"]


@pytest.mark.parametrize("command", ["merge", "import-esm"])
@pytest.mark.parametrize("kind", ["fifo", "link to a folder"])
@pytest.mark.parametrize("force", [False, True])
def test_a_fifo_or_link_to_a_folder_named_output_partial_is_refused_never_deleted(tmp_path, run_cli, command, kind,
                                                                               force):
    """A named pipe or a link to a folder called OUT.partial was "OUT.partial exists (a run into
    this output that did not finish): give --force to replace it" (merge and import-esm), and
    --force deleted it, though no run of protrans had made it. Refused whatever the flags now, as
    embed and contacts refuse it, and left as it is."""
    argv = _merge_or_import_argv(command, tmp_path)
    partial = partial_path(tmp_path / "m.h5")
    if kind == "fifo":
        os.mkfifo(partial)
    else:
        (tmp_path / "folder").mkdir()
        partial.symlink_to(tmp_path / "folder")
    r = run_cli(*argv, "-o", tmp_path / "m.h5", *(["--force"] if force else []))
    said = ("is a named pipe, not a regular file: an HDF5 file is read in place" if kind == "fifo"
            else "is a directory, expected an HDF5 file")
    assert r.exit_code == 1 and r.stderr == f"protrans: error: {partial}: {said} (move it away, or choose another -o)\n", \
        r.stderr
    assert partial.is_fifo() if kind == "fifo" else partial.is_symlink()
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.parametrize("command", ["merge", "import-esm"])
@pytest.mark.parametrize("force", [False, True])
def test_an_output_partial_another_process_writes_is_refused_never_deleted(tmp_path, run_cli, command, force):
    """OUT.partial held open for writing by a process that is not protrans (a notebook's
    h5py.File(..., "a"): HDF5's lock on it, which protrans' own output lock does not see): --force
    deleted it under that process (and the merge wrote a new one), and without --force it was "give
    --force to replace it". Refused in one line before any work now, as embed refuses it, and left
    as it is."""
    import fcntl

    argv = _merge_or_import_argv(command, tmp_path)
    partial = partial_path(tmp_path / "m.h5")
    with h5py.File(partial, "w") as f:
        f["notebook"] = np.arange(3)
    kept = partial.read_bytes()
    held = os.open(partial, os.O_RDONLY)  # (HDF5's lock, an flock, taken on an open of its own)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        r = run_cli(*argv, "-o", tmp_path / "m.h5", *(["--force"] if force else []))
    finally:
        os.close(held)
    assert r.exit_code == 1 and r.stderr == (f"protrans: error: {partial}: is being written by another process (it "
                                             "holds the HDF5 file lock): wait for that run to end, or choose another "
                                             "-o\n"), r.stderr
    assert partial.read_bytes() == kept and sorted(p.name for p in tmp_path.iterdir()) == ["in", "m.h5.partial"]


def test_the_failures_of_the_parts_are_the_merged_files(tmp_path):
    """A protein a part's run skipped (longer than --max-length) stays recorded as failed."""
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAKQRQISFVKSHFSRQ\n>P2\nMKV\n")
    (tmp_path / "b.fa").write_text(">P3\nGGG\n")
    a = _embed(tmp_path / "a.fa", tmp_path / "a.h5", max_length=10, long_policy="skip")
    b = _embed(tmp_path / "b.fa", tmp_path / "b.h5", max_length=10, long_policy="skip")
    summary = merge([a, b], tmp_path / "m.h5")
    assert summary.proteins == 2 and set(summary.failed) == {"P1"}
    with EmbeddingsReader(tmp_path / "m.h5") as r:
        assert sorted(r.ids()) == ["P2", "P3"] and set(r.failed()) == {"P1"}


@pytest.mark.parametrize("layout", ["grouped", "stacked"])
def test_a_protein_failed_in_one_part_and_held_by_another_is_not_failed(tmp_path, layout):
    """A protein that failed in one part (out of memory there) and was embedded by another part is
    in the merged file and not among its failures, in the stacked fast case as in the others;
    one no part holds stays failed."""
    (tmp_path / "a.fa").write_text(">P1\nMKV\n")
    (tmp_path / "b.fa").write_text(">P2\nGGG\n")
    a = _embed(tmp_path / "a.fa", tmp_path / "a.h5", per_residue=False, layout=layout)
    b = _embed(tmp_path / "b.fa", tmp_path / "b.h5", per_residue=False, layout=layout)
    with h5py.File(a, "r+") as f:
        f.attrs["failed"] = json.dumps({"P2": "out of memory", "P9": "out of memory"})
    summary = merge([a, b], tmp_path / "m.h5")
    assert summary.proteins == 2 and summary.failed == {"P9": "out of memory"}
    with EmbeddingsReader(tmp_path / "m.h5") as r:
        assert r.layout == layout and sorted(r.ids()) == ["P1", "P2"] and r.failed() == {"P9": "out of memory"}


def test_digests_ending_in_a_nul_byte_still_name_the_repeated_protein(tmp_path, monkeypatch):
    """numpy's 16-byte strings drop trailing NUL bytes: a repeated id whose digest ended in one
    was a KeyError (1 in 256 ids), and a checksum digest ending so could pass for none."""
    import hashlib

    import protrans_cli.merge as merge_module

    monkeypatch.setattr(merge_module, "digest128",
                        lambda text: hashlib.blake2b(text.encode(), digest_size=16).digest()[:14] + b"\0\0")
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n>P2\nMKV\n")
    (tmp_path / "b.fa").write_text(">P2\nMKV\n>P3\nGGG\n")
    (tmp_path / "c.fa").write_text(">P3\nGGA\n")
    parts = [_embed(tmp_path / f"{n}.fa", tmp_path / f"{n}.h5") for n in "abc"]
    summary = merge(parts[:2], tmp_path / "m.h5")
    assert summary.proteins == 3 and summary.repeated == 1
    with pytest.raises(InputError, match="protein 'P3' is also in .*b.h5, with another sequence"):
        merge(parts, tmp_path / "n.h5")


def test_stacked_parts_merge_row_by_row_into_the_stacked_file_of_one_run(tmp_path, monkeypatch):
    """Stacked parts into a stacked file: columns and rows copied in key order, never a dataset
    per protein on the way; the file equals one run over the whole input (repeated proteins kept
    once, the parts' failures and runs carried)."""
    from protrans_cli.io import stacked

    fasta = generated_fasta(tmp_path / "all.fa", 60, repeat_every=0, long_every=7)
    options = dict(per_residue=False, layout="stacked", max_length=100, long_policy="skip", storage_dtype="float16")
    whole = _embed(fasta, tmp_path / "whole.h5", **options)
    parts = [_embed(p, tmp_path / f"{p.stem}.h5", **options) for p in _split(fasta, 3, tmp_path, overlap=5)]

    def no_unstacking(*args, **kw):
        raise AssertionError("written back into datasets")

    monkeypatch.setattr(stacked, "unstack_file", no_unstacking)
    monkeypatch.setattr(stacked, "stack_file", no_unstacking)
    summary = merge(parts[::-1], tmp_path / "merged.h5")  # (any order of the parts: rows in key order)
    assert summary.failed and summary.proteins + len(summary.failed) == 60
    assert_same_content(file_content(tmp_path / "merged.h5"), file_content(whole))
    with h5py.File(tmp_path / "merged.h5", "r") as f:
        assert f.attrs["layout"] == "stacked" and f.attrs["storage_dtype"] == "float16"
        assert json.loads(f.attrs["runs"])[-1]["command_line"] == "protrans merge"
    with EmbeddingsReader(tmp_path / "merged.h5") as r:
        assert r.layout == "stacked" and len(r.ids(PER_PROTEIN)) == summary.proteins


@pytest.mark.parametrize("part_layout, layout", [("flat", "grouped"), ("grouped", "flat"), ("stacked", "flat")])
def test_parts_of_another_layout_carry_the_attributes_of_the_merged_layout(tmp_path, part_layout, layout):
    """embed gives a flat file's datasets an `original_id` (bio_embeddings' readers), the other
    layouts' none: a part of another layout merged kept its own (a flat part into a grouped file
    had one, a grouped or stacked part into a flat file none)."""
    fasta = generated_fasta(tmp_path / "all.fa", 20, repeat_every=0)
    first, second = _split(fasta, 2, tmp_path)
    parts = [_embed(p, tmp_path / f"{p.stem}.h5", per_residue=False, layout=part_layout) for p in (first, second)]
    whole = _embed(fasta, tmp_path / "whole.h5", per_residue=False, layout=layout)
    merge(parts, tmp_path / "merged.h5", layout=layout)
    assert_same_content(file_content(tmp_path / "merged.h5"), file_content(whole))


def test_a_flat_part_from_before_original_id_gets_it_in_the_flat_merged_file(tmp_path):
    """Versions before 2026-11-29 wrote flat files without `original_id`: such a part merged into
    a flat file kept its datasets as they were, beside later parts' with it (biotrainer's
    `f[k].attrs["original_id"]` a KeyError on some proteins of the merged file)."""
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n")
    (tmp_path / "b.fa").write_text(">P2\nMKV\n")
    parts = [_embed(tmp_path / f"{n}.fa", tmp_path / f"{n}.h5", per_residue=False, layout="flat") for n in "ab"]
    with h5py.File(parts[0], "r+") as f:  # the older version's part
        for key in f:
            del f[key].attrs["original_id"]
    merge(parts, tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5", "r") as f:
        assert {f[k].attrs["original_id"]: f[k].attrs["id"] for k in f} == {"P1": "P1", "P2": "P2"}


def test_a_merge_stopped_leaves_nothing_beside_the_output(tmp_path, monkeypatch):
    """Ctrl-C while a stacked part was written back (before any protein was copied): the partial
    file was removed, but its ledger, sealed as the writer closed, stayed (OUT.partial.ledger)."""
    from protrans_cli.io import stacked

    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n>P2\nMKV\n")
    part = _embed(tmp_path / "a.fa", tmp_path / "a.h5", per_residue=False, layout="stacked")
    (tmp_path / "out").mkdir()

    def interrupted(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(stacked, "unstack_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        merge([part], tmp_path / "out" / "m.h5", layout="grouped")
    assert list((tmp_path / "out").iterdir()) == []


def test_the_scratch_copy_a_sigkilled_merge_left_is_removed_by_the_next_merge_there(tmp_path, monkeypatch):
    """A stacked part is written back into a scratch folder beside the output. It was a plain
    mkdtemp (`.merge.XXXX`): a SIGKILL (the out-of-memory killer) while it was written left it, as
    large as the part unstacked, and no later run removed it; troubleshooting.md promises that the
    next run writing there removes a killed run's temporaries (once untouched for an hour)."""
    import os
    import signal
    import time

    from protrans_cli.io import stacked

    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n>P2\nMKV\n")
    part = _embed(tmp_path / "a.fa", tmp_path / "a.h5", per_residue=False, layout="stacked")
    out = tmp_path / "out"
    out.mkdir()
    pid = os.fork()
    if pid == 0:  # a merge killed while it writes the part back
        try:
            def killed(source, target):
                with open(target, "wb") as fh:
                    fh.write(b"x" * 1000)
                os.kill(os.getpid(), signal.SIGKILL)

            monkeypatch.setattr(stacked, "unstack_file", killed)
            merge([part], out / "m.h5", layout="grouped")
        finally:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    left = [p for p in out.iterdir() if p.name.startswith(".merge.")]
    assert len(left) == 1 and (left[0] / "part.h5").is_file()
    hours_ago = time.time() - 7200  # (the sweep leaves alone a folder written to in the last hour)
    for path in (left[0] / "part.h5", left[0]):
        os.utime(path, (hours_ago, hours_ago))
    merge([part], out / "m.h5", layout="grouped", force=True)  # (force: the killed run's m.h5.partial)
    assert sorted(p.name for p in out.iterdir()) == ["m.h5"]


def test_the_output_is_checked_and_locked_as_embed_does(tmp_path):
    """merge's output: a pipe was opened and waited on (merge hung), the user's own link to
    another folder was replaced by a regular file (embed writes where it leads), and a merge with
    --force into the output of an embed running now removed that run's partial file (both said
    they had written the output)."""
    import os

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io.files import output_lock

    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n>P2\nMKV\n")
    part = _embed(tmp_path / "a.fa", tmp_path / "a.h5")
    (tmp_path / "scratch").mkdir()
    (tmp_path / "link.h5").symlink_to(tmp_path / "scratch" / "m.h5")
    merge([part], tmp_path / "link.h5")
    assert (tmp_path / "link.h5").is_symlink() and (tmp_path / "scratch" / "m.h5").is_file()
    with pytest.raises(UsageError, match=r"an HDF5 file is written uncompressed: give a name without the \.gz suffix"):
        merge([part], tmp_path / "m.h5.gz")
    assert not (tmp_path / "m.h5.gz").exists()
    with output_lock(tmp_path / "busy.h5", "busy"):
        partial_path(tmp_path / "busy.h5").write_bytes(b"an embed's live file")
        with pytest.raises(RuntimeFailure, match=r"another protrans run \(embed, contacts, merge, import-esm\) that is running now"):
            merge([part], tmp_path / "busy.h5", force=True)
        assert partial_path(tmp_path / "busy.h5").read_bytes() == b"an embed's live file"
    os.mkfifo(tmp_path / "pipe.h5")
    with pytest.raises(UsageError, match="is a device, pipe or socket"):
        merge([part], tmp_path / "pipe.h5", force=True)


@pytest.mark.parametrize("layout", ["grouped", "stacked"])
def test_no_room_says_what_merge_does_next(tmp_path, monkeypatch, layout):
    """A full disk said embed's advice: "what was computed is kept in OUT.partial; run the same
    command with --resume" (or, writing the stacked file, "every protein is in OUT.partial"),
    but merge has no --resume and had removed its partial file."""
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io import disk

    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n>P2\nMKV\n")
    part = _embed(tmp_path / "a.fa", tmp_path / "a.h5", per_residue=False)

    def full(path, nbytes, then, *args, what="", **kw):
        # (the copy of the part's proteins; stacked: the stacked file written after it)
        if what == ("the stacked file" if layout == "stacked" else "the proteins of a.h5"):
            raise RuntimeFailure(f"no room for the next batch: 1 MiB free; {then}", path=str(path))
        return 0

    monkeypatch.setattr(disk, "ensure_room", full)
    with pytest.raises(RuntimeFailure) as caught:
        merge([part], tmp_path / "m.h5", layout=layout)
    said = caught.value.format()
    assert "--resume" not in said and ".partial" not in said and "run the merge again" in said, said
    assert "free some space" in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fa", "a.h5"]


def test_a_file_size_limit_says_to_raise_it_not_to_free_space(tmp_path):
    """`ulimit -f` under the merged file's size: the message named the limit, then said "free some
    space (or remove the cause)", which frees nothing of a limit (prlimit --fsize, a job's)."""
    import subprocess
    import sys

    (tmp_path / "a.fa").write_text("".join(f">P{i}\n{'MKTAYIAKQR' * 30}\n" for i in range(200)))
    _embed(tmp_path / "a.fa", tmp_path / "a.h5", per_residue=True)
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (3_500_000, resource.RLIM_INFINITY)); "
              "from protrans_cli._entry import main; sys.argv = ['protrans', 'merge', sys.argv[1], '-o', sys.argv[2]]; "
              "main()")
    r = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a.h5"), str(tmp_path / "m.h5")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "file-size limit (ulimit -f)" in r.stderr, r.stderr
    assert r.stderr.rstrip().endswith("nothing was kept: raise the limit and run the merge again"), r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.fa", "a.h5"]


def test_parts_chosen_by_embed_part_merge_into_the_whole_runs_file(tmp_path, run_cli):
    """`embed --part K/N` over the whole FASTA (no split files): every record in exactly one part,
    copies of one sequence together (computed once, as one run does), and the merged parts equal
    one run over the whole input, its `part` attribute included ("")."""
    fasta = generated_fasta(tmp_path / "all.fa", 80, repeat_every=7, long_every=9)
    options = dict(max_length=100, long_policy="skip")
    whole = _embed(fasta, tmp_path / "whole.h5", **options)
    parts = [_embed(fasta, tmp_path / f"p{k}.h5", part=f"{k}/3", **options) for k in (1, 2, 3)]
    held = []
    for path in parts:
        with EmbeddingsReader(path) as r:
            held.append(set(r.ids()) | set(r.failed()))
            assert r.attrs["part"] == f"{path.stem[1]}/3"
    assert sum(map(len, held)) == 80 and set().union(*held) == {f"g{i}" for i in range(80)}
    assert all(len(h) > 10 for h in held)  # (spread by digest: none empty)
    r = run_cli("merge", *parts[::-1], "-o", tmp_path / "merged.h5")
    assert r.exit_code == 0, r.stderr
    assert_same_content(file_content(tmp_path / "merged.h5"), file_content(whole))
    with h5py.File(tmp_path / "merged.h5", "r") as f:
        assert f.attrs["part"] == ""


@pytest.mark.parametrize("layout", ["grouped", "stacked"])
@pytest.mark.parametrize("model", ["onehot", "blosum62"])
def test_the_weightless_encodings_parts_merge_into_the_whole_runs_bytes(tmp_path, run_cli, model, layout):
    """docs/embed.md: for onehot and blosum62, `embed --part` jobs merged hold the same bytes as one
    run over the whole input: every dataset (per-residue and per-protein) of the same dtype, shape
    and bytes with the same attributes, and every file attribute but the command lines, the runs
    and the parts' `input_digest`. Lower case, rare letters (U, Z, O, B, X: rows of their own in
    BLOSUM62 or X's), a repeated sequence and a terminal `*`."""
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a one\nMKTAYIAKQR\n>b\nmktuBZXoAC\n>c\nMKTAYIAKQR\n>d\nWWYYVVTTSSRRQQPPNNMMLLKKIIHHGG\n"
                     ">e\nACDEFGHIKLMNPQRSTVWYUZOBX\n>f\nGG\n>g\nMSEQVLLKAWHH*\n>h\nPQRSTVWYACDE\n")
    r = run_cli("embed", fasta, "-m", model, "--layout", layout, "-o", tmp_path / "whole.h5")
    assert r.exit_code == 0, r.stderr
    parts = [tmp_path / f"p{k}.h5" for k in (1, 2)]
    for k, path in enumerate(parts, 1):
        r = run_cli("embed", fasta, "-m", model, "--layout", layout, "--part", f"{k}/2", "-o", path)
        assert r.exit_code == 0, r.stderr
        with EmbeddingsReader(path) as reader:
            assert reader.ids(), f"part {k}/2 holds no protein: the test would merge one file"
    r = run_cli("merge", *parts, "-o", tmp_path / "merged.h5")
    assert r.exit_code == 0, r.stderr

    def content(path):
        datasets = {}
        with h5py.File(path, "r") as f:
            def visit(name, obj):
                if isinstance(obj, h5py.Dataset):  # (strings, an object array: their values)
                    values = obj[()]
                    values = values.tolist() if values.dtype.kind == "O" else values.tobytes()
                    datasets[name] = (obj.dtype.str, obj.shape, values, dict(obj.attrs))
            f.visititems(visit)
            attrs = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in f.attrs.items()
                     if k not in ("command_line", "runs", "input_digest")}
        return datasets, attrs

    whole, merged = content(tmp_path / "whole.h5"), content(tmp_path / "merged.h5")
    assert len(whole[0]) >= 2 and whole[0].keys() == merged[0].keys()
    for name in whole[0]:
        assert whole[0][name][:3] == merged[0][name][:3], name
        assert whole[0][name][3].keys() == merged[0][name][3].keys(), name
        for key, value in whole[0][name][3].items():
            np.testing.assert_array_equal(value, merged[0][name][3][key], err_msg=f"{name} {key}")
    assert whole[1] == merged[1]
    assert merged[1]["model"] == model and merged[1]["part"] == ""


def test_what_is_not_every_part_of_one_input_is_refused(tmp_path, run_cli):
    fasta = generated_fasta(tmp_path / "all.fa", 30, repeat_every=0)
    p = {spec: _embed(fasta, tmp_path / f"p{spec.replace('/', 'of')}.h5", part=spec) for spec in ("1/3", "2/3", "3/3", "1/2")}
    whole = _embed(fasta, tmp_path / "whole.h5")
    # part 2 of a FASTA with one more record: its parts are not this input's
    other = tmp_path / "other.fa"
    other.write_text(fasta.read_text() + ">extra\nMKVLA\n")
    p["2/3 other"] = _embed(other, tmp_path / "p2other.h5", part="2/3")
    cases = [
        ([p["1/3"], p["2/3 other"], p["3/3"]], "part 2/3 was embedded from another input than part 1/3"),
        ([p["1/3"], p["3/3"]], "part(s) 2 of 3 are missing (embed --part K/3)"),
        ([p["1/3"], p["2/3"]], "part(s) 3 of 3 are missing (embed --part K/3)"),  # (the last part too)
        ([p["1/3"], p["2/3"], p["3/3"], p["1/2"]], "is part 1/2, "),
        ([p["1/3"], p["2/3"], p["3/3"], whole], "whole.h5: holds the whole input"),
    ]
    for parts, said in cases:
        r = run_cli("merge", *parts, "-o", tmp_path / "m.h5")
        assert r.exit_code == 1 and said in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "m.h5").exists()


def test_a_part_given_twice_is_refused_naming_both_files(tmp_path, run_cli):
    """docs/embed.md: merge checks that the parts are each part 1 to N exactly once. The same
    part twice (a job's output copied, a glob matching two runs of it) was merged without a word
    when the check was gone: its proteins, found in both, were taken for overlapping splits."""
    import shutil

    fasta = generated_fasta(tmp_path / "all.fa", 12, repeat_every=0)
    first, second = (_embed(fasta, tmp_path / f"p{k}.h5", part=f"{k}/2") for k in (1, 2))
    again = tmp_path / "p1-again.h5"
    shutil.copy(first, again)
    r = run_cli("merge", first, second, again, "-o", tmp_path / "m.h5")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"{again}: is part 1/2 of the input, and so is {first}: each part once" in r.stderr, r.stderr
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.parametrize("spec", ["0/3", "4/3", "3", "a/b", "1/0"])
def test_a_part_that_is_not_k_of_n_is_a_usage_error(tmp_path, run_cli, spec):
    (tmp_path / "a.fa").write_text(">P1\nMKV\n")
    r = run_cli("embed", tmp_path / "a.fa", "-m", "onehot", "--part", spec, "-o", tmp_path / "a.h5")
    assert r.exit_code == 2 and f"--part {spec}: give K/N" in r.stderr


def test_a_part_is_resumed_as_that_part_only(tmp_path):
    fasta = generated_fasta(tmp_path / "all.fa", 30, repeat_every=0)
    _embed(fasta, tmp_path / "p.h5", part="1/3")
    for other in (None, "2/3"):
        with pytest.raises(UsageError, match=f"written with part='1/3', this run uses part='{other or ''}'"):
            _embed(fasta, tmp_path / "p.h5", part=other, resume=True)
    _embed(fasta, tmp_path / "p.h5", part="1/3", resume=True)  # (its own part: nothing left to do)


def _seq_in_part(k, n, ident="x"):
    """A sequence of part k of n (`in_part`)."""
    from itertools import product

    from protrans_cli.embed import in_part

    return next(s for s in ("MKV" + "".join(p) for p in product("ACDEFGHIK", repeat=4)) if in_part(ident, s, (k, n)))


@pytest.mark.parametrize("first", ["other", "invalid"])
def test_a_duplicate_id_is_refused_by_every_part_whichever_part_each_copy_is_in(tmp_path, first):
    """One run over the whole input refuses a duplicate id: so does every part, whichever parts
    the two copies fall in (a copy with another sequence in another part was embedded by both
    parts and refused only by merge, hours later; an invalid copy skipped in one part and a valid
    one in the other were merged without a word, the skipped record's `failed` entry lost)."""
    from protrans_cli.embed import in_part

    valid = _seq_in_part(2, 2)
    if first == "other":
        ident, copy = "d", _seq_in_part(1, 2)
    else:  # (a record without a usable sequence is in the part of its id)
        ident, copy = next(i for i in (f"d{n}" for n in range(100)) if in_part(i, "", (1, 2))), "MK1V"
    fasta = tmp_path / "a.fa"
    fasta.write_text(f">{ident}\n{copy}\n>e\nMKVLA\n>{ident}\n{valid}\n")
    with pytest.raises(InputError, match="duplicate id"):
        _embed(fasta, tmp_path / "whole.h5", invalid_policy="skip")
    for k in (1, 2):
        with pytest.raises(InputError, match="duplicate id"):
            _embed(fasta, tmp_path / f"p{k}.h5", part=f"{k}/2", invalid_policy="skip")


def test_every_part_checks_every_record_as_one_run_does(tmp_path):
    """An invalid record fails every part (docs: each job's first pass checks every record), not
    only the part its id falls in: one run over the whole input fails on it."""
    fasta = tmp_path / "a.fa"
    fasta.write_text(f">a\n{_seq_in_part(1, 2)}\n>b\n{_seq_in_part(2, 2)}\n>bad\nMK1V\n")
    for k in (1, 2):
        with pytest.raises(InputError, match="invalid character"):
            _embed(fasta, tmp_path / f"p{k}.h5", part=f"{k}/2")


def test_a_record_skipped_as_invalid_is_recorded_by_one_part_only(tmp_path):
    """--invalid-policy skip with --part: each skipped record is listed failed by exactly one
    part (the one its id falls in), so that the merged parts' failures are one run's."""
    fasta = tmp_path / "a.fa"
    bad = [f"bad{i}" for i in range(6)]
    fasta.write_text(f">a\n{_seq_in_part(1, 2, 'a')}\n>b\n{_seq_in_part(2, 2, 'b')}\n"
                     + "".join(f">{ident}\nMK1V\n" for ident in bad))
    whole = _embed(fasta, tmp_path / "whole.h5", invalid_policy="skip")
    parts = [_embed(fasta, tmp_path / f"p{k}.h5", part=f"{k}/2", invalid_policy="skip") for k in (1, 2)]
    failed = []
    for path in parts:
        with EmbeddingsReader(path) as reader:
            failed.append(set(reader.failed()))
    assert failed[0] | failed[1] == set(bad) and not failed[0] & failed[1] and all(failed), failed
    merge(parts, tmp_path / "merged.h5")
    with EmbeddingsReader(tmp_path / "merged.h5") as merged, EmbeddingsReader(whole) as one:
        assert merged.failed() == one.failed() and sorted(merged.ids()) == ["a", "b"]


@pytest.mark.parametrize("layout", ["grouped", "stacked"])
def test_a_part_with_no_record_writes_an_empty_file_that_merge_takes(tmp_path, run_cli, layout):
    """More parts than records (a job array of 100 over a small FASTA): a part with no record is
    an empty file with its `part` attribute (it failed, exit 1, so its job failed and merge could
    never have every part), and merging every part still gives the one run's file."""
    fasta = generated_fasta(tmp_path / "all.fa", 5, repeat_every=0)
    kw = dict(layout=layout, per_residue=layout != "stacked")
    whole = _embed(fasta, tmp_path / "whole.h5", **kw)
    parts = []
    for k in range(1, 9):
        r = run_cli("embed", fasta, "-m", "onehot", "--part", f"{k}/8", "--layout", layout,
                    *(["--per-protein"] if layout == "stacked" else []), "-o", tmp_path / f"p{k}.h5")
        assert r.exit_code == 0, r.stderr
        parts.append(tmp_path / f"p{k}.h5")
    sizes = []
    for path in parts:
        with EmbeddingsReader(path) as reader:
            sizes.append(len(reader.ids(PER_PROTEIN)))
            assert reader.attrs["part"] == f"{path.stem[1:]}/8"
    assert 0 in sizes and sum(sizes) == 5
    _embed(fasta, parts[sizes.index(0)], resume=True, part=f"{sizes.index(0) + 1}/8", **kw)  # (resumable too)
    r = run_cli("merge", *parts, "-o", tmp_path / "merged.h5")
    assert r.exit_code == 0, r.stderr
    assert_same_content(file_content(tmp_path / "merged.h5"), file_content(whole))


def test_embed_sequences_embeds_every_sequence_whatever_options_part_says():
    """`embed_sequences` with the options of a `--part` job (reused in a notebook): every sequence
    given is embedded; it failed with "no per_protein embedding for this id" naming its
    temporary file, for the sequences of the other parts."""
    from protrans_cli.embed import embed_sequences

    seqs = [_seq_in_part(1, 2), _seq_in_part(2, 2), "MKVLA", "ACDEFG"]
    options = EmbedOptions(model="onehot", threads=1, part="1/2")
    got = embed_sequences(seqs, options, kind=PER_PROTEIN)
    want = embed_sequences(seqs, EmbedOptions(model="onehot", threads=1), kind=PER_PROTEIN)
    assert len(got) == 4 and all(a is not None for a in got)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert options.part == "1/2"  # (the caller's options as they were)


def test_merge_takes_one_path_or_a_generator_and_refuses_a_wrong_output_or_force(tmp_path):
    fasta = generated_fasta(tmp_path / "all.fa", 6)
    part = _embed(fasta, tmp_path / "part.h5")
    for name, inputs in (("one_str.h5", str(part)), ("one_path.h5", part), ("gen.h5", (p for p in [part]))):
        assert merge(inputs, tmp_path / name).proteins == 6
    for kw, match in (({"output": None}, "output must be a path"), ({"force": "no"}, "force must be a bool"),
                      ({"inputs": [part, 3]}, "inputs must be paths")):
        args = {"inputs": [part], "output": tmp_path / "x.h5", **kw}
        with pytest.raises(UsageError, match=match):
            merge(args.pop("inputs"), args.pop("output"), **args)
    assert not (tmp_path / "x.h5").exists()


def test_parts_resumed_on_an_extended_input_merge_whether_or_not_they_gained_proteins(tmp_path, run_cli):
    """Parts embedded from a FASTA, then each resumed on the FASTA with records added: a part that
    got none of the new records (its resume had nothing to add) recorded the old input's digest,
    and merge refused it as a part of another input."""
    fasta = generated_fasta(tmp_path / "v1.fa", 20, repeat_every=0)
    parts = [_embed(fasta, tmp_path / f"p{k}.h5", part=f"{k}/2") for k in (1, 2)]
    extended = tmp_path / "v2.fa"
    extended.write_text(fasta.read_text() + f">new1\n{_seq_in_part(1, 2, 'new1')}\n")
    for k, path in zip((1, 2), parts):
        _embed(extended, path, part=f"{k}/2", resume=True)
    with h5py.File(parts[0], "r") as a, h5py.File(parts[1], "r") as b:
        assert a.attrs["input_digest"] == b.attrs["input_digest"]
        assert "new1" in a["per_protein"] and "new1" not in b["per_protein"]  # (part 2's resume: nothing to add)
    r = run_cli("merge", *parts, "-o", tmp_path / "merged.h5")
    assert r.exit_code == 0, r.stderr
    assert_same_content(file_content(tmp_path / "merged.h5"), file_content(_embed(extended, tmp_path / "whole.h5")))


@pytest.mark.parametrize("value", [np.arange(4), 5])
def test_an_id_attribute_of_another_type_names_no_protein_in_merge_and_resume(tmp_path, run_cli, value):
    """An `id` attribute that is an array or an integer: merge and `embed --resume` (which read
    it through h5py's low-level calls) failed with AttributeError tracebacks ('int' object has no
    attribute 'encode'); fit and predict read it as the other readers do: an integer is its
    text, an array no id (the key names the protein)."""
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n>P2\nMKV\n")
    a = _embed(tmp_path / "a.fa", tmp_path / "a.h5")
    with h5py.File(a, "a") as f:
        for kind in ("per_residue", "per_protein"):
            f[f"{kind}/P2"].attrs["id"] = value
    expected = ["5", "P1"] if isinstance(value, int) else ["P1", "P2"]
    r = run_cli("merge", a, "-o", tmp_path / "m.h5")
    assert r.exit_code == 0, r.stderr
    with EmbeddingsReader(tmp_path / "m.h5") as m:
        assert sorted(m.ids()) == expected
    r = run_cli("embed", tmp_path / "a.fa", "-m", "onehot", "-o", a, "--resume")
    assert r.exit_code == 0 and "protrans: error" not in r.stderr, r.stderr


def test_a_kinds_attribute_naming_no_kind_is_one_line(tmp_path, run_cli):
    """`kinds` that names neither kind (a damaged file): an IndexError traceback."""
    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n")
    a = _embed(tmp_path / "a.fa", tmp_path / "a.h5")
    with h5py.File(a, "a") as f:
        f.attrs["kinds"] = np.arange(3)
    r = run_cli("merge", a, "-o", tmp_path / "m.h5")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"{a}: its 'kinds' attribute ([0, 1, 2]) names neither per_residue nor per_protein" in r.stderr
    assert not list(tmp_path.glob("m.h5*"))


def test_a_signal_once_the_merged_file_is_written_exits_0(tmp_path, run_cli, monkeypatch):
    """A SIGTERM as merge says its summary (the merged file written and renamed) was reported as
    an interruption, exit 143, for a file already whole; embed, fit, labels and prep exit 0
    there, saying nothing was lost."""
    from conftest import signal_when_said

    (tmp_path / "a.fa").write_text(">P1\nMKTAYIAK\n")
    (tmp_path / "b.fa").write_text(">P2\nMKV\n")
    for name in ("a", "b"):
        _embed(tmp_path / f"{name}.fa", tmp_path / f"{name}.h5")
    signal_when_said(monkeypatch, "merge:")
    out = tmp_path / "m.h5"
    r = run_cli("merge", tmp_path / "a.h5", tmp_path / "b.h5", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert f"terminated once the output was complete ({out}): nothing was lost" in r.stderr
    assert out.is_file()


@pytest.mark.parametrize("how", ["virtual dataset", "external storage"])
def test_a_part_whose_values_live_in_another_file_is_refused(tmp_path, how):
    """A part's dataset mapped from another file (a virtual dataset) or stored in one (external
    storage) was copied as it was: the merged file read that file wherever it was opened."""
    fasta = generated_fasta(tmp_path / "all.fa", 4, repeat_every=0)
    part = _embed(fasta, tmp_path / "part.h5")
    with h5py.File(part, "a") as f:
        group = f[PER_PROTEIN]
        key = sorted(group)[0]
        data, attrs = group[key][()], dict(group[key].attrs)
        del group[key]
        if how == "virtual dataset":
            with h5py.File(tmp_path / "secret.h5", "w") as s:
                s["data"] = data
            layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
            layout[:] = h5py.VirtualSource(str(tmp_path / "secret.h5"), "data", shape=data.shape)
            group.create_virtual_dataset(key, layout)
        else:
            (tmp_path / "secret.bin").write_bytes(data.tobytes())
            group.create_dataset(key, shape=data.shape, dtype=data.dtype,
                                 external=[(str(tmp_path / "secret.bin"), 0, data.nbytes)])
        group[key].attrs.update(attrs)
    message = "is a virtual dataset" if how == "virtual dataset" else "is a dataset whose values are stored in external"
    with pytest.raises(InputError, match=f"record '{key}': {message}"):
        merge([part], tmp_path / "merged.h5")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("merged")) == []


def test_a_protein_in_two_parts_is_kept_from_the_first_part(tmp_path):
    """docs/embed.md: an id in two parts with the same sequence is kept once, from the first part
    that has it (its values may differ in the last digits: another device or batch)."""
    from protrans_cli.io.h5 import PER_RESIDUE, EmbeddingsWriter

    values = {}
    for name, fill in (("one", 1.0), ("two", 2.0)):
        with EmbeddingsWriter(tmp_path / f"{name}.h5", kinds=(PER_RESIDUE, PER_PROTEIN),
                              attrs={"model": "m", "layers": [-1]}) as w:
            rows = np.full((3, 4), fill, np.float32)
            w.write("shared", "shared x", "MKV", per_residue=rows, per_protein=rows.mean(0))
            w.write(name, name, "GGH", per_residue=rows, per_protein=rows.mean(0))
        values[name] = rows
    merge([tmp_path / "one.h5", tmp_path / "two.h5"], tmp_path / "merged.h5")
    with h5py.File(tmp_path / "merged.h5", "r") as f:
        assert sorted(f[PER_RESIDUE]) == ["one", "shared", "two"]
        np.testing.assert_array_equal(f[PER_RESIDUE]["shared"][()], values["one"])
        np.testing.assert_array_equal(f[PER_PROTEIN]["shared"][()], values["one"].mean(0))


def test_a_records_part_is_its_sequence_digest_modulo_n(tmp_path):
    """docs/embed.md: a record is in part K of N when the digest of its normalised sequence modulo
    N is K - 1, the same in every run and every version (a part resumed by a later version must get
    the same records): the parts computed here with hashlib, lower-case and gapped copies included."""
    import hashlib

    seqs = {f"p{i}": "MKT" + "ACDEFGHIKLMNPQRSTVWY"[i % 20] * (i + 1) for i in range(12)}
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">{i}\n{s}\n" for i, s in seqs.items()) + ">low\nmkt-aa\n")
    seqs["low"] = "MKTAA"

    def part(seq):
        return int.from_bytes(hashlib.blake2b(seq.encode(), digest_size=8).digest(), "little") % 3 + 1

    for k in (1, 2, 3):
        with EmbeddingsReader(_embed(fasta, tmp_path / f"{k}.h5", part=f"{k}/3", per_residue=False)) as r:
            assert sorted(r.ids()) == sorted(i for i, s in seqs.items() if part(s) == k), k
    assert len({part(s) for s in seqs.values()}) == 3  # every part holds records: a shift would move them


def test_without_layout_the_merged_file_takes_the_first_inputs_layout(tmp_path, run_cli):
    """merge --help: --layout's default is "the first input's": a flat and a stacked part merge
    into a flat file given in that order, into a stacked one given the other way round."""
    fasta = generated_fasta(tmp_path / "all.fa", 12, repeat_every=0)
    first, second = _split(fasta, 2, tmp_path)
    flat = _embed(first, tmp_path / "flat.h5", per_residue=False, layout="flat")
    stacked = _embed(second, tmp_path / "stacked.h5", per_residue=False, layout="stacked")
    for parts, layout in (((flat, stacked), "flat"), ((stacked, flat), "stacked")):
        out = tmp_path / f"{layout}_first.h5"
        r = run_cli("merge", *parts, "-o", out)
        assert r.exit_code == 0, r.stderr
        with EmbeddingsReader(out) as merged:
            assert merged.layout == layout and len(merged.ids(PER_PROTEIN)) == 12


@pytest.mark.parametrize("spec", ["2 of 2", "2", "x/y", "2/2/2", "0/2", "3/2", "1/0"])
def test_a_part_attribute_that_is_not_k_of_n_is_named_not_a_traceback(tmp_path, run_cli, spec):
    """A `part` attribute embed --part did not write (hand-edited, another tool's): "2 of 2" or "2"
    was a ValueError traceback, and "0/2" or "3/2" was taken for a part (part 2 "missing")."""
    fasta = generated_fasta(tmp_path / "all.fa", 12, repeat_every=0)
    first, second = (_embed(fasta, tmp_path / f"p{k}.h5", part=f"{k}/2") for k in (1, 2))
    with h5py.File(second, "a") as f:
        f.attrs["part"] = spec
    r = run_cli("merge", first, second, "-o", tmp_path / "m.h5")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"{second}: its 'part' attribute ({spec!r}) is not K/N, part K of N" in r.stderr, r.stderr
    assert not list(tmp_path.glob("m.h5*"))


def test_merge_refuses_a_layout_it_does_not_write_before_reading_anything(tmp_path):
    """merge(layout=...) from Python (the CLI's --layout is a choice): a layout of another name is a
    UsageError naming the layouts, before a part is read or the output begun."""
    part = _embed(generated_fasta(tmp_path / "all.fa", 4), tmp_path / "part.h5")
    for layout in ("Grouped", "hdf5"):
        with pytest.raises(UsageError, match="^layout must be one of grouped, flat, stacked, got "):
            merge([part], tmp_path / "m.h5", layout=layout)
    assert not list(tmp_path.glob("m.h5*"))
