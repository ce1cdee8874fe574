"""`protrans labels` -> `protrans embed -m onehot` -> `protrans fit` -> `protrans predict`, on small
synthetic sets whose labels follow from the residues (so a one-hot head must learn them), plus the
errors: label/embedding mismatches, wrong dimension or model, an existing head directory."""

from __future__ import annotations

import collections
import contextlib
import csv
import gzip
import io
import json
import os
import re
import signal
import warnings

import h5py
import numpy as np
import pytest
import torch

from conftest import mkdir_refused_in, released_after_error
from protrans_cli.errors import InputError, UsageError
from protrans_cli.heads.fit import FitConfig, fit
from protrans_cli.heads.tasks import IGNORE, LOCATIONS, SS3, SS8, ss8_to_ss3
from protrans_cli.io.h5 import EmbeddingsReader

torch.set_num_threads(1)

AA = "ACDEFGHIKLMNPQRSTVWY"
# 8-state label of each residue type; 3 states follow by the standard reduction
RULE8 = {**dict.fromkeys("AEL", "H"), **dict.fromkeys("MQKR", "G"), **dict.fromkeys("VIY", "E"),
         **dict.fromkeys("FWT", "B"), **dict.fromkeys("GP", "T"), **dict.fromkeys("ND", "S")}
FAST = ["--max-residues", "300", "--lr", "0.02", "-j", "1", "--bootstrap", "100"]


def _netsurfp(path, seqs):
    with open(path, "w", newline="") as fh:
        fh.write("input, dssp3, dssp8, disorder\n")
        writer = csv.writer(fh)
        for seq in seqs:
            ss8 = "".join(RULE8.get(c, "C") for c in seq)
            writer.writerow([" ".join(seq), " ".join(ss8_to_ss3(ss8)), " ".join(ss8), " ".join(["1.0"] * len(seq))])


def _seqs(rng, n, lo=15, hi=45):
    return ["".join(rng.choice(list(AA), size=rng.integers(lo, hi))) for _ in range(n)]


@pytest.fixture(scope="module")
def ss_data(tmp_path_factory):
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.heads.labels import read_labels, write_embed_fasta

    root = tmp_path_factory.mktemp("ss")
    rng = np.random.default_rng(0)
    for name, n in (("train", 70), ("test", 20)):
        _netsurfp(root / f"{name}.csv", _seqs(rng, n))
        with open(root / f"{name}.fa", "wb") as fh:
            write_embed_fasta(read_labels(root / f"{name}.csv"), fh)
        embed(root / f"{name}.fa", root / f"{name}.h5", EmbedOptions(model="onehot", per_protein=False, threads=1))
    return root


def test_fit_predict_ss3_end_to_end(run_cli, ss_data, tmp_path):
    head = tmp_path / "ss3"
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--test", ss_data / "test.h5", ss_data / "test.csv", "--max-epochs", "12", *FAST, "-o", head)
    assert r.exit_code == 0, r.stderr
    config = json.loads((head / "config.json").read_text())
    assert config["task"]["outputs"][0]["classes"] == list(SS3)
    assert config["input_dim"] == 21 and config["embedding"]["model"] == "onehot"
    assert config["hyperparameters"]["standardise"] is False  # (a CNN reads raw rows; only FNN heads z-score)
    for name in ("weights.safetensors", "curves.png", "metrics.json", "metrics/test.json", "metrics/test.ss3.png",
                 "metrics/valid.json"):
        assert (head / name).is_file(), name
    history = [json.loads(line) for line in (head / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, len(history) + 1))
    summary = json.loads((head / "metrics.json").read_text())
    assert summary["test"]["ss3"]["metric"] == "Q3"
    assert summary["test"]["ss3"]["accuracy"] > 0.9  # the labels are a function of the residue
    detail = json.loads((head / "metrics" / "test.json").read_text())["outputs"]["ss3"]
    assert np.sum(detail["confusion"]) == detail["n"] == sum(v["support"] for v in detail["per_class"].values())

    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "nodir" / "pred.fa")
    assert r.exit_code == 2 and "nodir: output directory does not exist" in r.stderr
    out, probs = tmp_path / "pred.fa", tmp_path / "probs.h5"
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-o", out, "--probabilities", probs)
    assert r.exit_code == 0, r.stderr
    mask = os.umask(0)
    os.umask(mask)
    assert probs.stat().st_mode & 0o777 == out.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    lines = out.read_text().splitlines()
    with EmbeddingsReader(ss_data / "test.h5") as reader:
        lengths = {i: reader.get(i).shape[0] for i in reader.ids()}
    pred = dict(zip([line[1:] for line in lines[::2]], lines[1::2]))
    assert {k: len(v) for k, v in pred.items()} == lengths
    assert set("".join(pred.values())) <= set(SS3)
    with h5py.File(probs) as h5:
        assert h5.attrs["classes_ss3"] == "HEC"
        for ds in h5["ss3"].values():
            p = ds[()]
            np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
            assert "".join(SS3[i] for i in p.argmax(1)) == pred[ds.attrs["id"]]


def test_predictions_match_a_plain_torch_reference(run_cli, ss_data, tmp_path):
    """The states predict writes equal a convolution computed from the safetensors weights by hand."""
    from safetensors.torch import load_file

    head = tmp_path / "ss8"
    r = run_cli("fit", "ss8", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--max-epochs", "2", *FAST, "-o", head)
    assert r.exit_code == 0, r.stderr
    out = tmp_path / "pred.fa"
    assert run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-o", out).exit_code == 0
    w = load_file(str(head / "weights.safetensors"))
    lines = out.read_text().splitlines()
    with EmbeddingsReader(ss_data / "test.h5") as reader:
        for header, states in zip(lines[::2], lines[1::2]):
            x = torch.from_numpy(reader.get(header[1:])).T[None]  # (1, D, L)
            h = torch.relu(torch.nn.functional.conv1d(x, w["members.0.features.weight"],
                                                      w["members.0.features.bias"], padding=3))
            z = torch.nn.functional.conv1d(h, w["members.0.heads.ss8.weight"], w["members.0.heads.ss8.bias"], padding=3)
            assert "".join(SS8[i] for i in z[0].argmax(0)) == states
    # without -o (and without --labels) the same predictions go to stdout
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5")
    assert r.exit_code == 0 and r.stdout == out.read_text() and len(lines) > 0


def test_a_group_among_the_proteins_is_passed_over_by_predict(run_cli, ss_data, tmp_path):
    """A group inside /per_residue (a name with '/' written through h5py by another tool) is no
    protein, as EmbeddingsReader.ids has it: predict failed with an AttributeError traceback."""
    import shutil

    head = tmp_path / "ss3"
    assert run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                   "--max-epochs", "1", *FAST, "-o", head).exit_code == 0
    shutil.copy(ss_data / "test.h5", tmp_path / "g.h5")
    with h5py.File(tmp_path / "g.h5", "a") as f:
        f.create_dataset("per_residue/0grp/x", data=np.zeros((5, 21), np.float32))
    plain = run_cli("predict", head, "--embeddings", ss_data / "test.h5")
    r = run_cli("predict", head, "--embeddings", tmp_path / "g.h5")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == plain.stdout and r.stdout.count(">") == 20


def test_joint_ss3_ss8_ensemble(run_cli, ss_data, tmp_path, monkeypatch):
    head = tmp_path / "joint"
    r = run_cli("fit", "ss3+ss8", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--ensemble", "2", "--max-epochs", "2", *FAST, "-o", head)
    assert r.exit_code == 0, r.stderr
    config = json.loads((head / "config.json").read_text())
    assert config["ensemble"] == 2 and config["seeds"] == [0, 1]
    assert [o["name"] for o in config["task"]["outputs"]] == ["ss3", "ss8"]
    members = {json.loads(line)["member"] for line in (head / "metrics.jsonl").read_text().splitlines()}
    assert members == {0, 1}
    out = tmp_path / "p.fa"
    assert run_cli("predict", head, "--embeddings", ss_data / "test.h5", "--head-output", "ss8", "-o", out).exit_code == 0
    assert set("".join(out.read_text().splitlines()[1::2])) <= set(SS8)
    # without --head-output: the head's first output, ss3 (predict --help)
    assert run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "d.fa").exit_code == 0
    assert run_cli("predict", head, "--embeddings", ss_data / "test.h5", "--head-output", "ss3",
                   "-o", tmp_path / "ss3.fa").exit_code == 0
    assert (tmp_path / "d.fa").read_text() == (tmp_path / "ss3.fa").read_text() != out.read_text()
    assert run_cli("predict", head, "--embeddings", ss_data / "test.h5", "--head-output", "ss9", "-o", out).exit_code == 2
    # with --fasta the option is checked before the sequences are embedded (it was after)
    import protrans_cli.heads.predict as predict_module

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded before --head-output was checked")

    monkeypatch.setattr(predict_module, "embed_for_head", no_embedding)
    r = run_cli("predict", head, "--fasta", ss_data / "test.fa", "--head-output", "ss9", "-o", out)
    assert r.exit_code == 2 and "the head has no output 'ss9'" in r.stderr


def test_streamed_training_equals_in_memory(ss_data, tmp_path):
    base = dict(task="ss3", max_epochs=2, max_residues=300, lr=0.02, threads=1, n_bootstrap=50)
    a = fit(FitConfig(**base), ss_data / "train.h5", ss_data / "train.csv", tmp_path / "a")
    b = fit(FitConfig(**base, cache_bytes=0), ss_data / "train.h5", ss_data / "train.csv", tmp_path / "b")
    assert a.history[-1]["train_loss"] == pytest.approx(b.history[-1]["train_loss"], rel=1e-6)
    assert a.metrics["valid"]["ss3"]["accuracy"] == b.metrics["valid"]["ss3"]["accuracy"]


def test_labels_matched_by_checksum_when_ids_differ(ss_data, tmp_path):
    # embed the same sequences under other ids: the NetSurfP labels still find them by sequence
    from protrans_cli.embed import EmbedOptions, embed

    fasta = tmp_path / "renamed.fa"
    records = (ss_data / "train.fa").read_text().splitlines()
    fasta.write_text("\n".join(f">prot{i // 2}" if line.startswith(">") else line for i, line in enumerate(records)) + "\n")
    embed(fasta, tmp_path / "renamed.h5", EmbedOptions(model="onehot", per_protein=False, threads=1))
    result = fit(FitConfig(task="ss3", max_epochs=1, threads=1, n_bootstrap=50), tmp_path / "renamed.h5",
                 ss_data / "train.csv", tmp_path / "head")
    assert result.metrics["valid"]["ss3"]["n_proteins"] == 7


def test_repeated_sequences_matched_by_checksum_each_take_a_protein(run_cli, ss_data, tmp_path):
    # Proteins of one sequence under other ids: every label went to the same protein and the
    # others were reported as "have no label ... not scored" beside a score that counted them.
    rows = (ss_data / "test.csv").read_text().splitlines()
    labels = tmp_path / "rep.csv"
    labels.write_text("\n".join(rows + [rows[1], rows[1]]) + "\n")  # the first protein three times
    fasta = tmp_path / "rep.fa"
    lines = (ss_data / "test.fa").read_text().splitlines()
    seqs = lines[1::2] + [lines[1], lines[1]]
    fasta.write_text("".join(f">other{i}\n{s}\n" for i, s in reversed(list(enumerate(seqs)))))
    r = run_cli("embed", fasta, "-m", "onehot", "--per-residue", "-o", tmp_path / "rep.h5", "-j", "1")
    assert r.exit_code == 0, r.stderr
    head = tmp_path / "h"
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--max-epochs", "1", *FAST, "-o", head)
    assert r.exit_code == 0, r.stderr
    r = run_cli("predict", head, "--embeddings", tmp_path / "rep.h5", "--labels", labels, "-o", tmp_path / "p.fa")
    assert r.exit_code == 0, r.stderr
    assert "have no label" not in r.stderr and f"in {len(seqs)} proteins" in r.stderr


def test_a_checksum_match_leaves_the_proteins_labels_name_by_id_to_them(tmp_path):
    # 9XYZ_A (not embedded) took 1ABC_A's key by sequence, which 1ABC_A's label names by id:
    # 2DEF_A, of the same sequence, was then "without a label"
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.heads.data import match_labels
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.tasks import get_task

    same, other = "MKTAYIAKQR", "GSSGHHHHHH"
    (tmp_path / "e.fa").write_text(f">1ABC_A\n{same}\n>2DEF_A\n{same}\n>3GHI_A\n{other}\n")
    embed(tmp_path / "e.fa", tmp_path / "e.h5", EmbedOptions(model="onehot", per_protein=False, threads=1))
    rows = [("9XYZ", same), ("1ABC", same), ("3GHI", other)]
    (tmp_path / "l.csv").write_text("pdb_id,chain_code,seq,sst8,sst3\n" + "".join(
        f"{pdb},A,{seq},{'H' * len(seq)},{'H' * len(seq)}\n" for pdb, seq in rows))
    with EmbeddingsReader(tmp_path / "e.h5") as reader:
        matched, report = match_labels(read_labels(tmp_path / "l.csv"), reader, get_task("ss3"))
    assert {m.id: m.key for m in matched} == {"9XYZ_A": "2DEF_A", "1ABC_A": "1ABC_A", "3GHI_A": "3GHI_A"}
    assert report.unlabelled == set()


def test_label_mismatches_listed_or_skipped(run_cli, ss_data, tmp_path):
    rows = (ss_data / "test.csv").read_text().splitlines()
    header, first, rest = rows[0], rows[1].split(","), rows[2:]
    first = [" ".join(field.split()[:-1]) for field in first]  # one residue short: a new sequence
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join([header, ",".join(first), *rest]) + "\n")
    head = tmp_path / "h"
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "test.h5", "--labels", bad, "--max-epochs", "1", *FAST,
                "-o", head)
    assert r.exit_code == 1
    assert "1 label record does not match the embeddings: 1 without an embedding (seq-" in r.stderr
    assert not head.exists()  # nothing half-written
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "test.h5", "--labels", bad, "--skip-mismatched",
                "--max-epochs", "1", *FAST, "-o", head)
    assert r.exit_code == 0, r.stderr
    assert "skipped 1 label record" in r.stderr


def test_a_label_record_whose_sequence_differs_from_its_ids_embedding_is_a_mismatch(run_cli, loc_data, tmp_path):
    """A record matched by id whose sequence (one residue changed, the length the same) is not the
    one embedded under that id: listed as a mismatch, never trained on with another protein's row."""
    lines = (loc_data / "train.fasta").read_text().splitlines()
    assert lines[0].startswith(">train0 ")
    lines[1] = ("A" if lines[1][0] != "A" else "C") + lines[1][1:]
    bad = tmp_path / "bad.fasta"
    bad.write_text("\n".join(lines) + "\n")
    args = ["fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", bad, "--max-epochs", "1", "-j", "1",
            "--bootstrap", "10"]
    r = run_cli(*args, "-o", tmp_path / "h")
    assert r.exit_code == 1 and "1 label record does not match the embeddings: 1 whose sequence differs from the " \
        "embedded one (train0)" in r.stderr, r.stderr
    assert not (tmp_path / "h").exists()
    r = run_cli(*args, "--skip-mismatched", "-o", tmp_path / "h")
    assert r.exit_code == 0 and "skipped 1 label record" in r.stderr, r.stderr
    assert json.loads((tmp_path / "h" / "config.json").read_text())["training"]["proteins"] == 149 - 15  # 10% held out


def _zero_rows(h5, lengths: dict):
    """A per-residue embeddings file of zeros, `lengths` rows (4 wide) by id."""
    with h5py.File(h5, "w") as f:
        g = f.create_group("per_residue")
        for ident, length in lengths.items():
            ds = g.create_dataset(ident, data=np.zeros((length, 4), np.float32))
            ds.attrs["id"], ds.attrs["length"] = ident, length
    return h5


def test_per_protein_labels_for_a_per_residue_task_are_said_to_be_so(tmp_path, run_cli):
    """An `id,value` table (or id,class) given to `fit residue` or `fit ss3`: every record was a
    length mismatch ("p1 (4 vs 38)"), or its digits "not ss3 classes"; one line now names the file
    and the per-protein task that takes such labels."""
    h5 = _zero_rows(tmp_path / "e.h5", {"p1": 38, "p2": 30, "p3": 25})
    values = tmp_path / "tm.csv"
    values.write_text("id,value\np1,63.25\np2,48.5\np3,-1e2\n")
    classes = tmp_path / "loc.csv"
    classes.write_text("id,label\np1,Nucleus\np2,Cytoplasm\np3,Nucleus\n")
    for task in ("residue", "ss3"):
        for labels, fits in ((values, "fit value"), (classes, "fit protein")):
            r = run_cli("fit", task, "--embeddings", h5, "--labels", labels, "-o", tmp_path / "h", "-j", "1")
            assert r.exit_code == 1, r.stderr
            assert r.stderr.startswith(f"protrans: error: {labels}: holds one label a protein"), r.stderr
            assert f"the {task} task takes one label a residue" in r.stderr and fits in r.stderr, r.stderr
            assert r.stderr.count("\n") == 1 and "vs" not in r.stderr
            assert not (tmp_path / "h").exists()


def test_length_mismatch_by_id(tmp_path, run_cli):
    h5 = _zero_rows(tmp_path / "e.h5", {"p1": 5, "p2": 3, "p3": 4})
    flip = tmp_path / "flip.fasta"
    flip.write_text(">p1 SET=train VALIDATION=False\nCCHHE\n>p2 SET=train VALIDATION=False\nCEEC\n"
                    ">p3 SET=train VALIDATION=False\nHHHC\n")
    r = run_cli("fit", "ss3", "--embeddings", h5, "--labels", flip, "-o", tmp_path / "h", "-j", "1")
    assert r.exit_code == 1
    assert "label length differs from the embedding's (p2 (4 vs 3))" in r.stderr
    # the folders the fit made for its -o are not left behind, empty; one that was there stays
    (tmp_path / "mine").mkdir()
    for out in (tmp_path / "new" / "sub" / "h", tmp_path / "mine" / "h"):
        r = run_cli("fit", "ss3", "--embeddings", h5, "--labels", flip, "-o", out, "-j", "1")
        assert r.exit_code == 1 and "label length differs" in r.stderr
    assert not (tmp_path / "new").exists() and (tmp_path / "mine").is_dir() and not any((tmp_path / "mine").iterdir())


def test_valid_fraction_holds_out_the_rounded_share_at_least_one_and_leaves_one_to_train(tmp_path, run_cli):
    # round(fraction x proteins), at least 1, and never all of them (docs/heads.md says so)
    h5 = tmp_path / "e.h5"
    with h5py.File(h5, "w") as f:
        g = f.create_group("per_residue")
        for i in range(4):
            ds = g.create_dataset(f"p{i}", data=np.random.default_rng(i).normal(size=(4, 4)).astype(np.float32))
            ds.attrs["id"], ds.attrs["length"] = f"p{i}", 4
    flip = tmp_path / "flip.fasta"
    flip.write_text("".join(f">p{i} SET=train VALIDATION=False\n{'CHEC'[i:] + 'CHEC'[:i]}\n" for i in range(4)))
    base = ["fit", "ss3", "--embeddings", h5, "--labels", flip, "-j", "1", "--max-epochs", "1", "--bootstrap", "10"]
    for fraction, held in (("0.01", 1), ("0.3", 1), ("0.4", 2), ("0.74", 3)):  # 0.04, 1.2, 1.6, 2.96 proteins
        r = run_cli(*base, "--valid-fraction", fraction, "-o", tmp_path / fraction)
        assert r.exit_code == 0, r.stderr
        assert len(json.loads((tmp_path / fraction / "config.json").read_text())["training"]["held_out"]) == held
    r = run_cli(*base, "--valid-fraction", "0.9", "-o", tmp_path / "all")
    assert r.exit_code == 2 and "holds out 4 of the 4 training proteins, leaving none to train on" in r.stderr
    flip.write_text(">p0 SET=train VALIDATION=False\nCHEC\n")
    r = run_cli(*base, "--valid-fraction", "0.01", "-o", tmp_path / "one")
    assert r.exit_code == 1 and "too few training proteins to hold out a validation set" in r.stderr


def test_existing_head_dir_needs_force(run_cli, ss_data, tmp_path):
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "notes.txt").write_text("mine")  # (an empty folder is taken as new: the test below)
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "test.h5", "--labels", ss_data / "test.csv", "-o", tmp_path / "h")
    assert r.exit_code == 2 and "--force" in r.stderr


@pytest.fixture(scope="module")
def loc_data(tmp_path_factory):
    """DeepLoc-style FASTA where the location follows from the composition (K-rich = Nucleus, ...)."""
    from protrans_cli.embed import EmbedOptions, embed

    root = tmp_path_factory.mktemp("loc")
    write_loc_fastas(root, (("train", 150), ("test", 45)), background=40, rich=20)
    for name in ("train", "test"):
        embed(root / f"{name}.fasta", root / f"{name}.h5", EmbedOptions(model="onehot", per_residue=False, threads=1))
    return root


def write_loc_fastas(root, sizes, *, background: int, rich: int) -> None:
    """ROOT/<name>.fasta for each (name, n) of `sizes`: DeepLoc headers whose location follows the
    composition (K/R-rich Nucleus, C/W-rich Extracellular, L/I/V-rich Cell.membrane) and membrane
    M, S, U in turn; `background` random residues and `rich` of the location's."""
    rng = np.random.default_rng(1)
    residues = {"Nucleus": "KR", "Extracellular": "CW", "Cell.membrane": "LIV"}
    for name, n in sizes:
        with open(root / f"{name}.fasta", "w") as fh:
            for i in range(n):
                loc = list(residues)[i % 3]
                body = rng.choice(list(AA), size=background).tolist() + rng.choice(list(residues[loc]),
                                                                                   size=rich).tolist()
                rng.shuffle(body)
                fh.write(f">{name}{i} {loc}-{'MSU'[i % 3]}{' test' if name == 'test' else ''}\n{''.join(body)}\n")


def test_predict_max_residues_for_an_fnn_head_is_said_to_do_nothing(run_cli, loc_data, one_epoch_ss3, ss_data,
                                                                     tmp_path):
    """An FNN head reads one vector a protein, batched by proteins: predict --max-residues changed
    nothing without a word (fit warns of it). A CNN head takes it without a warning."""
    head = tmp_path / "loc"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--max-epochs", "1", "--no-plots", "-j", "1", "--bootstrap", "10", "-o", head)
    assert r.exit_code == 0, r.stderr
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "--max-residues", "100", "-o", tmp_path / "p.csv")
    assert r.exit_code == 0, r.stderr
    assert ("protrans: warning: --max-residues does nothing for an FNN head (the CNN and light-attention heads take "
            "it): ignored") in r.stderr
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "--max-residues", "300",
                "-o", tmp_path / "p.fa")
    assert r.exit_code == 0 and "warning" not in r.stderr, r.stderr


def test_dual_for_a_per_residue_task_is_said_to_do_nothing(run_cli, loc_data, ss_data, tmp_path):
    """--dual is DeepLoc's dual location label, a per-protein label: given to ss3 it changed nothing
    without a word. Given to loc it is not warned about."""
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv", "--dual",
                "skip", "--max-epochs", "1", "--no-plots", *FAST, "-o", tmp_path / "ss3")
    assert r.exit_code == 0, r.stderr
    assert "protrans: warning: --dual does nothing for ss3 (DeepLoc's dual location label, per protein): ignored" \
        in r.stderr
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "--dual",
                "skip", "--max-epochs", "1", "--no-plots", *FAST, "-o", tmp_path / "loc")
    assert r.exit_code == 0 and "--dual does nothing" not in r.stderr, r.stderr
    # nor for a per-protein task without DeepLoc's locations (a value, a generic protein label)
    from protrans_cli.io.h5 import EmbeddingsReader

    with EmbeddingsReader(loc_data / "train.h5") as reader:
        ids = list(reader.ids())
    (tmp_path / "v.csv").write_text("id,target\n" + "".join(f"{i},{k % 7}.5\n" for k, i in enumerate(ids)))
    r = run_cli("fit", "value", "--embeddings", loc_data / "train.h5", "--labels", tmp_path / "v.csv", "--dual",
                "skip", "--max-epochs", "1", "--no-plots", *FAST, "-o", tmp_path / "value")
    assert r.exit_code == 0, r.stderr
    assert "--dual does nothing for value (DeepLoc's dual location label, per protein): ignored" in r.stderr


def test_options_of_another_kind_of_head_are_said_to_do_nothing(run_cli, loc_data, ss_data, tmp_path):
    """--batch-size is the FNN's and --max-residues the CNN's: given for the other head, each was
    ignored without a word (train warns of its own unused options)."""
    loc = ("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "-j", "1",
           "--max-epochs", "1", "--no-plots", "--bootstrap", "10")
    r = run_cli(*loc, "--max-residues", "100", "-o", tmp_path / "fnn")
    assert r.exit_code == 0 and ("--max-residues does nothing for an FNN head (the CNN and light-attention heads "
                                 "take it): ignored") in r.stderr, r.stderr
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv", "-j", "1",
                "--max-epochs", "1", "--no-plots", "--bootstrap", "10", "--batch-size", "8", "--no-standardise",
                "-o", tmp_path / "cnn")
    assert r.exit_code == 0 and ("--batch-size, --standardise/--no-standardise do nothing for a CNN head (FNN heads "
                                 "take them): ignored") in r.stderr, r.stderr
    r = run_cli(*loc, "--batch-size", "8", "--kernel", "7", "-o", tmp_path / "plain")  # the FNN's own, and the CNN's
    assert r.exit_code == 0 and "warning: --kernel does nothing for an FNN head" in r.stderr, r.stderr
    r = run_cli(*loc, "--batch-size", "8", "-o", tmp_path / "quiet")
    assert r.exit_code == 0 and "does nothing" not in r.stderr, r.stderr


def test_options_of_another_kind_of_head_are_not_compared_on_resume(run_cli, loc_data, tmp_path):
    """They change nothing, as the warning says: --kernel and --max-residues given to an FNN fit,
    then left out of its --resume (or given otherwise), were refused "made with other settings
    (kernel, max_residues)"; a setting the FNN reads still is."""
    loc = ("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "-j", "1",
           "--max-epochs", "1", "--no-plots", "--bootstrap", "10", "-o", tmp_path / "fnn")
    r = run_cli(*loc, "--kernel", "5", "--max-residues", "100")
    assert r.exit_code == 0 and "do nothing for an FNN head" in r.stderr, r.stderr
    for extra in ((), ("--kernel", "3")):
        r = run_cli(*loc, *extra, "--resume")
        assert r.exit_code == 0 and "other settings" not in r.stderr, r.stderr
    r = run_cli(*loc, "--batch-size", "8", "--resume")
    assert r.exit_code == 2 and "other settings or inputs (batch_size)" in r.stderr, r.stderr


def test_loc_fit_predict_csv(run_cli, loc_data, tmp_path):
    head = tmp_path / "loc"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--test", loc_data / "test.h5", loc_data / "test.fasta", "-j", "1", "--bootstrap", "100", "-o", head)
    assert r.exit_code == 0, r.stderr
    summary = json.loads((head / "metrics.json").read_text())
    assert summary["test"]["loc"]["metric"] == "Q10" and summary["test"]["loc"]["accuracy"] > 0.8
    assert summary["test"]["membrane"]["n"] == 30  # U proteins left out of the membrane metric
    out = tmp_path / "loc.csv"
    assert run_cli("predict", head, "--embeddings", loc_data / "test.h5", "-o", out).exit_code == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    assert len(rows) == 45
    assert list(rows[0])[:3] == ["id", "loc", f"loc:{LOCATIONS[0]}"] and "membrane:M" in rows[0]
    for row in rows:
        # 6 significant digits (4 decimals made 0.0000 of small probabilities, and ties)
        assert sum(float(row[f"loc:{c}"]) for c in LOCATIONS) == pytest.approx(1, abs=2e-5)
        assert all(float(row[f"loc:{c}"]) > 0 for c in LOCATIONS)
        assert row["loc"] in LOCATIONS and row["membrane"] in ("M", "S")
    # --head-output picks the states of a per-residue head: on a per-protein head it did nothing
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "--head-output", "membrane", "-o", out)
    assert r.exit_code == 2 and "--head-output is for per-residue heads" in r.stderr
    # the .partial of an interrupted embed predicts what it holds, with a warning saying so
    import shutil
    partial = tmp_path / "test.h5.partial"
    shutil.copy(loc_data / "test.h5", partial)
    r = run_cli("predict", head, "--embeddings", partial, "-o", out)
    assert r.exit_code == 0 and "unfinished output of an interrupted embed" in r.stderr
    shutil.copy(loc_data / "train.h5", partial)
    r = run_cli("fit", "loc", "--embeddings", partial, "--labels", loc_data / "train.fasta", "--test", partial,
                loc_data / "train.fasta", "--max-epochs", "1", "-j", "1", "--bootstrap", "10", "-o", tmp_path / "h2")
    assert r.exit_code == 0 and r.stderr.count("unfinished output of an interrupted embed") == 1, r.stderr


def test_predict_refuses_other_dimension_and_model(run_cli, loc_data, ss_data, tmp_path):
    head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "1", "-j", "1", "-o", head).exit_code == 0
    wide = tmp_path / "wide.h5"
    with h5py.File(wide, "w") as f:
        f.create_group("per_protein").create_dataset("x", data=np.zeros(8, np.float32))
    r = run_cli("predict", head, "--embeddings", wide, "-o", tmp_path / "o.csv")
    assert r.exit_code == 1 and "dimension 8, the head was trained on 21-d" in r.stderr
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["model"] = "prot_bert"
        f.create_group("per_protein").create_dataset("x", data=np.zeros(21, np.float32))
    r = run_cli("predict", head, "--embeddings", other, "-o", tmp_path / "o.csv")
    assert r.exit_code == 1 and "'prot_bert', the head was trained on 'onehot'" in r.stderr
    assert not (tmp_path / "o.csv").exists()
    r = run_cli("predict", head, "--embeddings", other, "--allow-model-mismatch", "-o", tmp_path / "o.csv")
    assert r.exit_code == 0 and (tmp_path / "o.csv").read_text().count("\n") == 2


def test_fit_refuses_a_test_set_of_another_dimension_before_training(run_cli, loc_data, tmp_path, monkeypatch):
    """Test embeddings of another width than train's (another model or layer, the file's model
    attribute aside) are refused naming the set and both widths, before any epoch."""
    import shutil

    import protrans_cli.heads.fit as fit_module

    narrow = tmp_path / "narrow.h5"
    shutil.copy(loc_data / "test.h5", narrow)
    with h5py.File(narrow, "a") as f:
        f.attrs["embedding_dim"] = 8  # (as another model's file records it)
        group = f["per_protein"]
        for key in list(group):
            data, attrs = group[key][()], dict(group[key].attrs)
            del group[key]
            group.create_dataset(key, data=data[:8]).attrs.update(attrs)
    monkeypatch.setattr(fit_module, "_validate", lambda *a, **k: pytest.fail("an epoch was trained"))
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "--test",
                narrow, loc_data / "test.fasta", "--max-epochs", "1", "-j", "1", "-o", tmp_path / "head")
    assert r.exit_code == 1 and "narrow.h5: test embeddings have dimension 8, train 21" in r.stderr, r.stderr
    assert not (tmp_path / "head").exists()


def test_a_2d_array_where_a_per_protein_vector_is_read_is_refused_not_cut_to_a_row(run_cli, loc_data, tmp_path):
    """A (L, D) array among the per-protein (D,) vectors of a file that records no layers (another
    tool's file mixing kinds): its last row was taken as the protein's vector; refused naming it."""
    import shutil

    mixed = tmp_path / "mixed.h5"
    shutil.copy(loc_data / "train.h5", mixed)
    with h5py.File(mixed, "a") as f:
        for name in ("layers", "layer"):
            if name in f.attrs:
                del f.attrs[name]
        group = f["per_protein"]
        key = sorted(group)[0]
        vector, attrs = group[key][()], dict(group[key].attrs)
        del group[key]
        group.create_dataset(key, data=np.stack([vector] * 3)).attrs.update(attrs)
    r = run_cli("fit", "loc", "--embeddings", mixed, "--labels", loc_data / "train.fasta", "--max-epochs", "1", "-j",
                "1", "-o", tmp_path / "h")
    assert r.exit_code == 1 and f"record '{key}': holds a 3x21 array where per-protein (D,) vectors are read" \
        in r.stderr, r.stderr
    assert not (tmp_path / "h").exists()


def test_fit_and_predict_refuse_rows_made_with_another_input_prefix(run_cli, loc_data, tmp_path):
    """embed puts ProstT5's <AA2fold> before every protein (the file's `input_prefix`); files
    written before had none, and their rows differ. fit refuses an evaluation set made otherwise
    than train, predict a file made otherwise than the head's training file (a missing attribute
    is no prefix, on both sides); the head records what it learned from."""
    import shutil

    prefixed = tmp_path / "test_prefixed.h5"
    shutil.copy(loc_data / "test.h5", prefixed)
    with h5py.File(prefixed, "r+") as f:
        f.attrs["input_prefix"] = "<AA2fold>"
    head = tmp_path / "loc"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--test", prefixed, loc_data / "test.fasta", "--max-epochs", "1", "-j", "1", "-o", head)
    assert r.exit_code == 1 and "with <AA2fold> before every protein, train's with no token" in r.stderr, r.stderr
    assert not head.exists()
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "1", "-j", "1", "-o", head).exit_code == 0
    assert json.loads((head / "config.json").read_text())["embedding"]["input_prefix"] == ""
    r = run_cli("predict", head, "--embeddings", prefixed, "-o", tmp_path / "o.csv")
    assert r.exit_code == 1 and "fit the head again" in r.stderr and not (tmp_path / "o.csv").exists()
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "-o", tmp_path / "o.csv")
    assert r.exit_code == 0, r.stderr
    # a head fit on prefixed rows takes prefixed files only
    train_prefixed = tmp_path / "train_prefixed.h5"
    shutil.copy(loc_data / "train.h5", train_prefixed)
    with h5py.File(train_prefixed, "r+") as f:
        f.attrs["input_prefix"] = "<AA2fold>"
    head2 = tmp_path / "loc2"
    r = run_cli("fit", "loc", "--embeddings", train_prefixed, "--labels", loc_data / "train.fasta",
                "--test", prefixed, loc_data / "test.fasta", "--max-epochs", "1", "-j", "1", "-o", head2)
    assert r.exit_code == 0, r.stderr
    assert json.loads((head2 / "config.json").read_text())["embedding"]["input_prefix"] == "<AA2fold>"
    assert run_cli("predict", head2, "--embeddings", prefixed, "-o", tmp_path / "p.csv").exit_code == 0
    r = run_cli("predict", head2, "--embeddings", loc_data / "test.h5", "-o", tmp_path / "q.csv")
    assert r.exit_code == 1 and "with no token before the proteins, the head's" in r.stderr
    # embed --3di (<fold2AA>) against amino acids (<AA2fold>): the message says which is which
    three_di = tmp_path / "test_3di.h5"
    shutil.copy(loc_data / "test.h5", three_di)
    with h5py.File(three_di, "r+") as f:
        f.attrs["input_prefix"] = "<fold2AA>"
    r = run_cli("fit", "loc", "--embeddings", train_prefixed, "--labels", loc_data / "train.fasta",
                "--test", three_di, loc_data / "test.fasta", "--max-epochs", "1", "-j", "1", "-o", tmp_path / "loc3")
    assert r.exit_code == 1 and "the test set holds embeddings of 3Di strings (embed --3di), train of amino acids" \
        in r.stderr and "protrans version" not in r.stderr, r.stderr
    r = run_cli("predict", head2, "--embeddings", three_di, "-o", tmp_path / "r.csv")
    assert r.exit_code == 1 and "these are embeddings of 3Di strings (embed --3di), the head's of amino acids" \
        in r.stderr and "fit the head again" not in r.stderr, r.stderr


def test_fit_and_predict_refuse_per_protein_vectors_of_another_pooling(run_cli, loc_data, tmp_path):
    """embed --pooling cls: per-protein vectors of the cls token, as wide as the means and nothing
    like them. fit refuses an evaluation set pooled otherwise than train, predict a file pooled
    otherwise than the head's training file (it predicted from them without a word)."""
    import shutil

    cls = {}
    for name in ("train", "test"):
        cls[name] = tmp_path / f"{name}_cls.h5"
        shutil.copy(loc_data / f"{name}.h5", cls[name])
        with h5py.File(cls[name], "r+") as f:
            f.attrs["pooling"] = "cls: the hidden state of the [CLS] token"
    head = tmp_path / "loc"
    r = run_cli("fit", "loc", "--embeddings", cls["train"], "--labels", loc_data / "train.fasta",
                "--test", loc_data / "test.h5", loc_data / "test.fasta", "--max-epochs", "1", "-j", "1", "-o", head)
    assert r.exit_code == 1 and "test embeddings are per-protein vectors pooled by mean, train's by cls" in r.stderr
    assert not head.exists()
    r = run_cli("fit", "loc", "--embeddings", cls["train"], "--labels", loc_data / "train.fasta",
                "--test", cls["test"], loc_data / "test.fasta", "--max-epochs", "1", "-j", "1", "-o", head)
    assert r.exit_code == 0, r.stderr
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "-o", tmp_path / "o.csv")
    assert r.exit_code == 1 and "pooled by mean, the head was trained on vectors pooled by cls" in r.stderr
    assert not (tmp_path / "o.csv").exists()
    assert run_cli("predict", head, "--embeddings", cls["test"], "-o", tmp_path / "o.csv").exit_code == 0
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "--allow-model-mismatch", "-o",
                tmp_path / "p.csv")
    assert r.exit_code == 0 and "pooled by mean" in r.stderr


def _assert_loc_test_scores(path):
    """predict's metrics of a loc head on loc_data's 45 test proteins: classes named by words
    (Cell.membrane, Cytoplasm: one initial), each its own entry, by name."""
    scored = json.loads(path.read_text())["outputs"]["loc"]
    assert scored["n"] == 45
    assert scored["classes"] == list(LOCATIONS) and list(scored["per_class"]) == list(LOCATIONS)
    assert {c: v["support"] for c, v in scored["per_class"].items() if v["support"]} == {
        "Nucleus": 15, "Extracellular": 15, "Cell.membrane": 15}
    assert np.array(scored["confusion"]).shape == (10, 10) and scored["majority"]["class"] == "Cell.membrane"


def test_predict_scores_against_labels(run_cli, loc_data, tmp_path):
    head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "40", "-j", "1", "-o", head).exit_code == 0
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "--labels", loc_data / "test.fasta",
                "--metrics", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert "test loc: Q10" in r.stderr
    _assert_loc_test_scores(tmp_path / "m" / "test.json")
    # Run again over links planted under the metrics' names: the links are replaced, never
    # written through (and the files appear whole or not at all: written under a temporary name).
    victim = tmp_path / "victim.txt"
    victim.write_text("keep")
    for name in ("test.json", "test.loc.png"):
        (tmp_path / "m" / name).unlink()
        (tmp_path / "m" / name).symlink_to(victim)
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "--labels", loc_data / "test.fasta",
                "--metrics", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert victim.read_text() == "keep"
    assert not (tmp_path / "m" / "test.json").is_symlink() and (tmp_path / "m" / "test.loc.png").stat().st_size > 1000


def test_a_fifo_under_a_metrics_files_name_is_refused_not_written_into(run_cli, loc_data, tmp_path):
    """A named pipe called METRICS/test.json (a name predict chooses itself) was written in place,
    as a pipe the user named would be, and predict hung for ever waiting for its reader. Refused
    in one line now (exit 1): no prediction or metrics file is written, and the pipe is left."""
    import subprocess
    import sys

    head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "2", "-j", "1", "--bootstrap", "10", "--no-plots", "-o", head).exit_code == 0
    (tmp_path / "m").mkdir()
    os.mkfifo(tmp_path / "m" / "test.json")
    # (a process of its own, with a timeout: a hang fails the test rather than blocking it)
    result = subprocess.run([sys.executable, "-m", "protrans_cli", "predict", str(head), "--embeddings",
                             str(loc_data / "test.h5"), "--labels", str(loc_data / "test.fasta"), "--metrics",
                             str(tmp_path / "m"), "--no-plots", "-o", str(tmp_path / "p.csv")], capture_output=True,
                            text=True, timeout=30, env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert result.returncode == 1 and result.stderr.splitlines()[-1] == (
        f"protrans: error: {tmp_path / 'm' / 'test.json'}: is a named pipe, not a regular file: protrans names this "
        "file itself and writes it here (move it away)"), result.stderr
    assert os.listdir(tmp_path / "m") == ["test.json"] and not (tmp_path / "p.csv").exists()


def test_predict_metrics_of_labels_from_stdin_are_named_stdin(run_cli, loc_data, tmp_path):
    """`--labels - --metrics DIR` wrote DIR/<stdin>.json (a name a shell has to quote)."""
    from protrans_cli.heads.labels import LabelSet

    assert LabelSet("<stdin>", "deeploc", []).name == "stdin"
    assert LabelSet("test.fasta.gz", "deeploc", []).name == "test"
    # a shell's process substitution, `--labels <(zcat test.fasta.gz)`, was named 63
    for fd in ("/dev/fd/63", "/proc/self/fd/12", "/proc/4242/fd/3"):
        assert LabelSet(fd, "deeploc", []).name == "labels"
    assert LabelSet("/data/fd/63", "deeploc", []).name == "63"  # (only the descriptor folders)
    head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "2", "-j", "1", "--bootstrap", "10", "--no-plots", "-o", head).exit_code == 0
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "--labels", "-", "--metrics", tmp_path / "m",
                "--no-plots", input=(loc_data / "test.fasta").read_bytes())
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["stdin.json"]


def test_predict_metrics_without_plots_removes_an_earlier_runs_figure(run_cli, loc_data, tmp_path):
    """`--no-plots` (or no scored protein) left the last run's DIR/<set>.<output>.png beside the new
    JSON: a figure of other scores. It goes when the new files are renamed in, not before."""
    head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "1", "-j", "1", "--bootstrap", "10", "--no-plots", "-o", head).exit_code == 0
    metrics = tmp_path / "m"
    args = ("predict", head, "--embeddings", loc_data / "test.h5", "--labels", loc_data / "test.fasta",
            "--metrics", metrics)
    assert run_cli(*args).exit_code == 0
    assert sorted(p.name for p in metrics.iterdir()) == ["test.json", "test.loc.png", "test.membrane.png"]
    r = run_cli(*args, "--no-plots")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in metrics.iterdir()) == ["test.json"]
    # without --metrics there are no figures to leave out: said, not passed over
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "-o", tmp_path / "p.csv", "--no-plots")
    assert r.exit_code == 0 and "--no-plots does nothing without --metrics" in r.stderr
    assert "--plots" not in run_cli(*args).stderr


def test_predict_with_labels_reports_the_ci_that_fit_reported(run_cli, loc_data, tmp_path):
    """predict --labels seeded its bootstrap with 0 and drew 1000 resamples whatever the fit had
    used: after `fit --seed 3 --bootstrap 100`, fit and predict printed different CIs for the
    same predictions. It now uses the head's own seed and count: the same metrics, CI included."""
    head = tmp_path / "loc"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--test", loc_data / "test.h5", loc_data / "test.fasta", "--max-epochs", "1", "--seed", "3",
                "--bootstrap", "100", "-j", "1", "-o", head)
    assert r.exit_code == 0, r.stderr
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "--labels", loc_data / "test.fasta",
                "--metrics", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    by_fit = json.loads((head / "metrics" / "test.json").read_text())["outputs"]
    by_predict = json.loads((tmp_path / "m" / "test.json").read_text())["outputs"]
    assert by_fit["loc"]["ci95"][0] < by_fit["loc"]["ci95"][1]  # one epoch: a CI the seed can move
    assert by_predict == by_fit


@pytest.mark.parametrize("task", ["ss3+ss8", "loc", "value"])
def test_predict_with_labels_scores_the_predictions_it_writes(run_cli, ss_data, loc_data, tmp_path, monkeypatch,
                                                              task):
    """`predict --labels -o` read every protein and ran the head twice: once to write the
    predictions, once more (the labelled proteins) to score them, 45% of its CPU time on DeepLoc's
    test set. The prediction pass now keeps what the metrics need of the labelled proteins: the head
    runs once, and the files and the summary lines are those of predicting and scoring apart."""
    import protrans_cli.heads.fit as fit_module

    head = tmp_path / "head"
    if task == "ss3+ss8":
        train, embeddings, labels, out = (ss_data / "train.h5", ss_data / "train.csv"), ss_data / "test.h5", \
            ss_data / "test.csv", "p.fa"
    else:
        embeddings, labels, out = loc_data / "test.h5", loc_data / "test.fasta", "p.csv"
        train = (loc_data / "train.h5", loc_data / "train.fasta")
    if task == "value":  # a number per protein that follows its composition, as an id,label table
        for name in ("train", "test"):
            lines = (loc_data / f"{name}.fasta").read_text().split("\n")
            rows = [f"{h[1:].split()[0]},{(q.count('K') + q.count('R')) / len(q):.4f}"
                    for h, q in zip(lines[0::2], lines[1::2])]
            (tmp_path / f"{name}.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
        train, labels = (loc_data / "train.h5", tmp_path / "train.csv"), tmp_path / "test.csv"
    assert run_cli("fit", task, "--embeddings", train[0], "--labels", train[1], "--max-epochs", "2", *FAST,
                   "-o", head).exit_code == 0
    probabilities = ["--probabilities"] if task == "ss3+ss8" else []
    # apart: the predictions alone, then the scores alone (which read and predict the labelled proteins)
    apart, together = tmp_path / "apart", tmp_path / "together"
    apart.mkdir(), together.mkdir()
    r = run_cli("predict", head, "--embeddings", embeddings, "-o", apart / out,
                *(probabilities and [*probabilities, apart / "p.h5"]))
    assert r.exit_code == 0, r.stderr
    r = run_cli("predict", head, "--embeddings", embeddings, "--labels", labels, "--metrics", apart / "m")
    assert r.exit_code == 0, r.stderr
    summary = [line for line in r.stderr.splitlines() if line.startswith("test ")]
    calls = []

    def counted(*args, **kwargs):
        calls.append(len(args[2].items))
        return predict_data(*args, **kwargs)

    predict_data = fit_module.predict_data
    monkeypatch.setattr(fit_module, "predict_data", counted)
    r = run_cli("predict", head, "--embeddings", embeddings, "-o", together / out, "--labels", labels,
                "--metrics", together / "m", *(probabilities and [*probabilities, together / "p.h5"]))
    assert r.exit_code == 0, r.stderr
    with EmbeddingsReader(embeddings) as reader:
        assert calls == [len(reader.keys(reader.kinds[0]))]  # every protein once, the labelled ones not again
    assert summary and [line for line in r.stderr.splitlines() if line.startswith("test ")] == summary
    names = sorted(p.name for p in (apart / "m").iterdir())
    assert names == sorted(p.name for p in (together / "m").iterdir()) and "test.json" in names
    for name in [out, *(["p.h5"] if probabilities else []), *(f"m/{n}" for n in names)]:
        assert (together / name).read_bytes() == (apart / name).read_bytes(), name


def test_labels_command_writes_embed_fasta(run_cli, tmp_path):
    from conftest import DATA

    out = tmp_path / "x.fa"
    r = run_cli("labels", DATA / "heads" / "netsurfp_seq_header_repeated_sequence.csv", "-o", out)
    assert r.exit_code == 0 and "ids are made from the sequence checksum" in r.stderr
    lines = out.read_text().splitlines()
    assert lines[1::2] == ["GGHK", "WY", "GGHK"] and lines[4] == lines[0] + "-2"
    r = run_cli("labels", DATA / "heads" / "flip_with_sets.fasta", "-o", out)
    assert r.exit_code == 1 and "no sequence for 3 ids" in r.stderr
    seqs = tmp_path / "s.fa"
    seqs.write_text(">p1\nMKVLA\n>p2\nMKVL\n>p3\nMKVL\n")
    r = run_cli("labels", DATA / "heads" / "flip_with_sets.fasta", "--sequences", seqs, "--split", "test", "-o", "-")
    assert r.exit_code == 0 and r.stdout == ">p3\nMKVL\n"


def _flip_with_splits(ss_data, tmp_path):
    """ss_data's train set as a FLIP FASTA of 3-state labels: 5 of 7 train, 1 validation, 1 test."""
    lines = (ss_data / "train.fa").read_text().splitlines()
    flip = tmp_path / "flip.fasta"
    with open(flip, "w") as fh:
        for i, (header, seq) in enumerate(zip(lines[::2], lines[1::2])):
            split = ["SET=train VALIDATION=False"] * 5 + ["SET=train VALIDATION=True", "SET=test VALIDATION=False"]
            fh.write(f"{header} {split[i % 7]}\n{ss8_to_ss3(''.join(RULE8.get(c, 'C') for c in seq))}\n")
    return flip


def test_flip_file_declares_train_valid_and_test(ss_data, tmp_path):
    flip = _flip_with_splits(ss_data, tmp_path)
    result = fit(FitConfig(task="ss3", max_epochs=1, threads=1, n_bootstrap=50), ss_data / "train.h5", flip,
                 tmp_path / "head")
    assert result.metrics["valid"]["ss3"]["n_proteins"] == 10
    assert result.metrics["test"]["ss3"]["n_proteins"] == 10


def test_a_flip_files_test_records_are_left_out_when_test_sets_are_given(run_cli, ss_data, tmp_path):
    """With --test, the label file's SET=test records are neither trained on nor scored, and fit
    says so (the test metrics are the --test file's alone)."""
    flip = _flip_with_splits(ss_data, tmp_path)
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", flip, "--test", ss_data / "test.h5",
                ss_data / "test.csv", "--max-epochs", "1", *FAST, "--bootstrap", "10", "--no-plots", "-o",
                tmp_path / "h")
    assert r.exit_code == 0, r.stderr
    assert "flip.fasta: its SET=test records are left out of training (--test gives the test sets)" in r.stderr
    metrics = json.loads((tmp_path / "h" / "metrics.json").read_text())
    assert metrics["test"]["ss3"]["n_proteins"] == 20 and metrics["valid"]["ss3"]["n_proteins"] == 10
    assert json.loads((tmp_path / "h" / "config.json").read_text())["training"]["proteins"] == 50


def test_test_set_from_another_model_is_refused(ss_data, tmp_path):
    import shutil

    from protrans_cli.errors import ModelError

    other = tmp_path / "other.h5"
    shutil.copy(ss_data / "test.h5", other)
    with h5py.File(other, "a") as f:
        f.attrs["model"] = "esm2_t6_8M"
    with pytest.raises(ModelError, match="'esm2_t6_8M', train from 'onehot'"):
        fit(FitConfig(task="ss3", max_epochs=1, threads=1), ss_data / "train.h5", ss_data / "train.csv",
            tmp_path / "head", tests=[(other, ss_data / "test.csv")])
    assert not (tmp_path / "head").exists()


def test_layer_is_the_model_layer_embed_stored_not_an_axis_index(tmp_path):
    # `embed --layer -1 --layer -3` stores [-1, -3] on the layer axis; fit/predict indexed that axis
    # with the layer number, so the default -1 read layer -3.
    from protrans_cli.errors import InputError
    from protrans_cli.heads.data import Matched, ProteinData, ResidueData
    from protrans_cli.io.h5 import EmbeddingsWriter

    path = tmp_path / "two_layers.h5"
    with EmbeddingsWriter(path, kinds=("per_residue", "per_protein"), attrs={"layers": [-1, -3]}) as w:
        w.write("p", "p", "MKV", per_residue=np.stack([np.full((3, 4), 1.0), np.full((3, 4), 3.0)]),
                per_protein=np.array([np.full(4, 1.0), np.full(4, 3.0)]))
    with EmbeddingsReader(path) as reader:
        key = next(iter(reader._group("per_residue").keys()))
    item = Matched(id="p", key=key, length=3, targets={})
    for layer, value in ((-1, 1.0), (-3, 3.0)):
        assert ProteinData(str(path), [item], layer=layer).x[0, 0] == value
        residue = ResidueData(str(path), [item], layer=layer)
        assert residue.cached[0, 0] == value
    with pytest.raises(InputError, match=r"holds layer\(s\) -1, -3, not layer -2"):
        ProteinData(str(path), [item], layer=-2)
    # the default (-1) stands for a file's lone layer only: of several, none the last, it is refused
    with EmbeddingsWriter(path, kinds=("per_protein",), attrs={"layers": [-2, -3]}) as w:
        w.write("p", "p", "MKV", per_protein=np.array([np.full(4, 2.0), np.full(4, 3.0)]))
    with pytest.raises(InputError, match=r"holds layer\(s\) -2, -3, not layer -1"):
        ProteinData(str(path), [item])


@pytest.mark.parametrize("dtype", ["float32", "float16", ">f4", "float64", "layers"])
def test_rows_read_into_batches_are_the_rows_h5py_reads(tmp_path, dtype):
    """ResidueData reads (L, D) float32/float16 datasets straight into its cache or batch (speed);
    every dtype and shape must give the arrays numpy's own conversion of h5py's reads gives, the
    cache and the streamed batches alike, and a wrong length stays the same error."""
    from protrans_cli.errors import InputError
    from protrans_cli.heads.data import Matched, ResidueData, subset

    rng = np.random.default_rng(1)
    path, items, rows = tmp_path / "e.h5", [], []
    with h5py.File(path, "w") as f:
        f.attrs["layout"], f.attrs["kinds"] = "grouped", ["per_residue"]
        group = f.create_group("per_residue")
        for i, length in enumerate((5, 1, 9, 0, 3)):
            values = rng.normal(size=(length, 4)) * 1e3
            values[:1, :1] = 1e-6  # a float16 subnormal
            if dtype == "layers":
                group[f"p{i}"] = np.stack([-values, values]).astype(np.float32)  # layer -1: the last
                rows.append(values.astype(np.float32))
            else:
                group[f"p{i}"] = values.astype(dtype)
                rows.append(values.astype(dtype).astype(np.float32))
            items.append(Matched(f"p{i}", f"p{i}", length, {"ss3": np.zeros(length, np.int64)}))
    cached = ResidueData(str(path), items)
    np.testing.assert_array_equal(cached.cached, np.concatenate(rows))
    streamed = ResidueData(str(path), items, cache_bytes=0)
    for data in (cached, streamed):
        for batch in data.batches(20):
            for row, i in enumerate(batch.index):
                got = batch.x[row].numpy()
                np.testing.assert_array_equal(got[:len(rows[i])], rows[i])
                assert not got[len(rows[i]):].any()
        # a held-out part (--valid-fraction, a fold) reads its own proteins' rows, from the cache too
        part = subset(data, np.array([4, 2, 0]))
        assert [m.id for m in part.items] == ["p0", "p2", "p4"]
        for batch in part.batches(20):
            for row, i in enumerate(batch.index):
                np.testing.assert_array_equal(batch.x[row].numpy()[:len(rows[2 * i])], rows[2 * i])
    # and its own proteins' targets where they are one a protein (a light-attention head's)
    labelled = ResidueData(str(path), [Matched(m.id, m.key, m.length, {"loc": k}) for k, m in enumerate(items)])
    for batch in subset(labelled, np.array([4, 2, 0])).batches(20):
        assert batch.targets["loc"].tolist() == [2 * i for i in batch.index]
    with pytest.raises(InputError, match=r"embedding has shape (2x)?5x4, expected 6x4"):
        ResidueData(str(path), [Matched("p0", "p0", 6, {"ss3": np.zeros(6, np.int64)})])


@pytest.mark.parametrize("cache_bytes", [None, 0])  # read into RAM once, or streamed batch by batch
def test_residue_batches_hold_each_protein_once_within_the_budget_with_its_rows_mask_and_labels(ss_data, cache_bytes):
    """What the CNN trains on: every protein in exactly one batch per epoch, no batch over
    --max-residues padded residues (count x longest) unless it holds one protein, the rows of its
    dataset (h5py's own read), the mask True on its residues only, its labels there and IGNORE
    on the padding; unshuffled sorted by length, shuffled a reproducible permutation of batches."""
    from protrans_cli.heads.data import DEFAULT_CACHE_BYTES, ResidueData, load_data
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.tasks import get_task

    data, _ = load_data(ss_data / "train.h5", read_labels(ss_data / "train.csv"), get_task("ss3"),
                        cache_bytes=DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes)
    assert (data.cached is None) == (cache_bytes == 0)
    with h5py.File(ss_data / "train.h5", "r") as f:
        rows = [f["per_residue"][m.key][()].astype(np.float32) for m in data.items]
    budget, n = 150, len(data.items)
    orders = {}
    for shuffle, seed in ((False, None), (True, 1), (True, 1), (True, 2)):
        batches = list(data.batches(budget, shuffle=shuffle, rng=np.random.default_rng(seed), prefetch=2))
        order = np.concatenate([b.index for b in batches])
        assert sorted(order.tolist()) == list(range(n))
        for b in batches:
            lengths = data.lengths[b.index]
            assert len(b.index) == 1 or len(b.index) * lengths.max() <= budget
            assert b.x.shape == (len(b.index), lengths.max(), data.dim)
            for row, i in enumerate(b.index):
                length = len(rows[i])
                np.testing.assert_array_equal(b.x[row, :length].numpy(), rows[i])
                assert not b.x[row, length:].any()
                assert b.mask[row].tolist() == [True] * length + [False] * (b.x.shape[1] - length)
                np.testing.assert_array_equal(b.targets["ss3"][row, :length].numpy(), data.items[i].targets["ss3"])
                assert (b.targets["ss3"][row, length:] == IGNORE).all()
        orders.setdefault((shuffle, seed), []).append(order.tolist())
    unshuffled = orders[(False, None)][0]
    assert list(data.lengths[unshuffled]) == sorted(data.lengths)
    # greedy: a batch ends where the next protein (the next longer) would take it over the budget
    batches = data.plan(budget, False, None)
    for b, following in zip(batches, batches[1:]):
        assert (len(b) + 1) * data.lengths[following[0]] > budget
    assert orders[(True, 1)][0] == orders[(True, 1)][1] != orders[(True, 2)][0] != unshuffled
    # shuffled: the batches in a random order, not by length...
    assert list(data.lengths[orders[(True, 1)][0]]) != sorted(data.lengths)
    # ... each sorted by length within its window (here the whole set): no more padding than unshuffled
    padded = [sum(len(b) * data.lengths[b].max() for b in data.plan(budget, shuffle, np.random.default_rng(1)))
              for shuffle in (False, True)]
    assert padded[0] == padded[1]
    # "sets up to --cache-gb are read into RAM once": one of exactly that size too
    assert ResidueData(str(ss_data / "train.h5"), data.items, cache_bytes=data.nbytes).cached is not None
    assert ResidueData(str(ss_data / "train.h5"), data.items, cache_bytes=data.nbytes - 1).cached is None


def test_labels_of_another_task_name_the_label_file(run_cli, ss_data, tmp_path):
    # NetSurfP labels given to a loc head: the error named the record but not the file.
    r = run_cli("fit", "loc", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--max-epochs", "1", "-o", tmp_path / "h")
    assert r.exit_code == 1
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"protrans: error: {ss_data / 'train.csv'}:2, record 'seq-") and "has no location label" in line
    assert not (tmp_path / "h").exists()


def test_predict_output_that_is_the_embeddings_file_is_refused(run_cli, ss_data, tmp_path):
    # `predict ... --embeddings q.h5 -o q.h5` replaced the embeddings with the predictions.
    import shutil

    head = tmp_path / "ss3"
    assert run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                   "--max-epochs", "1", *FAST, "-o", head).exit_code == 0
    query = tmp_path / "q.h5"
    shutil.copy(ss_data / "test.h5", query)
    before = query.read_bytes()
    for flag in ("-o", "--probabilities"):
        r = run_cli("predict", head, "--embeddings", query, flag, str(tmp_path / "." / "q.h5"))
        assert r.exit_code == 2 and "is also an input" in r.stderr
        assert query.read_bytes() == before


def test_resume_of_a_finished_fit_is_a_no_op_and_other_settings_are_refused(run_cli, ss_data, tmp_path):
    """A job script that retries "the same command with --resume" failed after a success (exit 2,
    "exists"), where `embed --resume` of a finished file is a no-op."""
    head = tmp_path / "ss3"
    args = ["fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv", "--max-epochs", "1",
            *FAST, "-o", head]
    assert run_cli(*args).exit_code == 0
    files = {p.name: p.read_bytes() for p in head.iterdir() if p.is_file()}
    again = run_cli(*args, "--resume")
    assert again.exit_code == 0 and f"{head} is complete: nothing to resume" in again.stderr
    assert {p.name: p.read_bytes() for p in head.iterdir() if p.is_file()} == files
    other = run_cli(*args, "--max-epochs", "2", "--resume")  # the last --max-epochs counts
    assert other.exit_code == 2 and "a finished head made with other settings or inputs (max_epochs)" in other.stderr
    assert run_cli(*args).exit_code == 2  # without --resume: as before


def test_resume_of_a_head_of_a_version_that_recorded_no_fingerprint_says_so(run_cli, ss_data, tmp_path):
    """A head fitted before 2026-11-29 records no fingerprint: `fit --resume` of it (a job script
    run again after an upgrade) said only "exists (--force replaces it)", as for a folder of
    other files, though the same command had made it. It says the head is an earlier version's
    and leaves it as it is; --force still fits it again."""
    head = tmp_path / "ss3"
    args = ["fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv", "--max-epochs", "1",
            *FAST, "-o", head]
    assert run_cli(*args).exit_code == 0
    config = json.loads((head / "config.json").read_text())
    del config["fingerprint"]  # the earlier version's head
    (head / "config.json").write_text(json.dumps(config))
    files = {p.name: p.read_bytes() for p in head.iterdir() if p.is_file()}
    again = run_cli(*args, "--resume")
    assert again.exit_code == 2 and f"{head} is a head written by an earlier protrans" in again.stderr
    assert "--force fits it again" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in head.iterdir() if p.is_file()} == files
    assert run_cli(*args, "--force").exit_code == 0
    assert "fingerprint" in json.loads((head / "config.json").read_text())


def test_resume_after_a_kill_between_the_heads_rename_and_the_states_removal(run_cli, ss_data, tmp_path, monkeypatch):
    """A SIGKILL just after the head was renamed into place left HEAD.partial/ beside it, and every
    retry of the job (with --resume) failed with "exists"."""
    from protrans_cli.heads import fit as fit_module

    head = tmp_path / "ss3"
    args = ["fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv", "--max-epochs", "1",
            *FAST, "-o", head]
    with monkeypatch.context() as m:
        m.setattr(fit_module.FitState, "remove", lambda self: None)  # killed before it ran
        assert run_cli(*args).exit_code == 0
    partial = fit_module.partial_path(head)
    assert (partial / "state.pt").is_file()
    again = run_cli(*args, "--resume")
    assert again.exit_code == 0 and f"{head} is complete: nothing to resume" in again.stderr
    assert not partial.exists()
    # A state written after the head (a fit started again with --force, then stopped) is not stale.
    partial.mkdir()
    (partial / "state.pt").write_bytes(b"newer")
    later = (head / "metrics.json").stat().st_mtime_ns + 10**9
    os.utime(partial / "state.pt", ns=(later, later))
    assert run_cli(*args, "--resume").exit_code == 2 and (partial / "state.pt").read_bytes() == b"newer"
    # A kill between the state's removal and the folder's left it empty: every --resume was "exists".
    (partial / "state.pt").unlink()
    again = run_cli(*args, "--resume")
    assert again.exit_code == 0 and f"{head} is complete: nothing to resume" in again.stderr
    assert not partial.exists()
    config = json.loads((head / "config.json").read_text())["config"]
    assert "resume" not in config and "force" not in config  # how it was run, not what it is


def test_resume_removes_the_head_temporary_of_a_fit_killed_while_writing_it(run_cli, ss_data, tmp_path):
    """A SIGKILL while the head was written left `.HEAD.<host>.<pid>-XXXX.tmp/` (fit_kill_stress,
    mode head_tmp): the resumed fit wrote the head beside it, and make_temporary's sweep leaves a
    temporary of the last hour. Under the lock on HEAD.partial/ no live fit can own one."""
    import socket
    import subprocess
    import sys

    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:32] or "host"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    head = tmp_path / "ss3"
    killed = tmp_path / f".ss3.{host}.{gone.pid}-abcd.tmp"
    (killed / "metrics").mkdir(parents=True)
    (killed / "metrics.jsonl").write_text("{}\n")
    aside = tmp_path / f".ss3.old.{host}.{gone.pid}-efgh"  # an old head set aside by --force
    aside.mkdir()
    alive = tmp_path / f".ss3.{host}.{os.getppid()}-ijkl.tmp"  # a live process's: kept
    alive.mkdir()
    other = tmp_path / f".ss8.{host}.{gone.pid}-mnop.tmp"  # another head's: its own fit's to remove
    other.mkdir()
    args = ["fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv", "--max-epochs", "1",
            *FAST, "-o", head]
    assert run_cli(*args).exit_code == 0
    assert not killed.exists() and not aside.exists()
    assert alive.is_dir() and other.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name, "ss3"])


def test_a_full_disk_names_the_fits_state_or_the_head_and_resume_finishes(run_cli, ss_data, tmp_path, monkeypatch):
    """A full disk at the state's save said "No space left on device" naming no file; at the
    head's write it named a file in the hidden temporary folder. Now the file or the head, and
    the state written before is kept for --resume."""
    from protrans_cli.heads import fit as fit_module, model as head_model

    head = tmp_path / "ss3"
    args = ("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
            "--max-epochs", "1", *FAST, "-o", head)
    monkeypatch.setattr(fit_module, "create_fresh", lambda path, mode=0o666: os.open("/dev/full", os.O_WRONLY))
    r = run_cli(*args)
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == \
        f"protrans: error: {head}.partial/state.pt: cannot save the fit's state: No space left on device"
    monkeypatch.undo()

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(head_model, "save_head", full)
    r = run_cli(*args)
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {head}: cannot write the head: No space left on device (its state is kept: "
        "--resume finishes it)")
    assert not head.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    monkeypatch.undo()
    r = run_cli(*args, "--resume")
    assert r.exit_code == 0 and "1 member(s) finished" in r.stderr and (head / "config.json").exists()


def test_a_full_disk_at_the_heads_weights_is_one_line(run_cli, ss_data, tmp_path, monkeypatch):
    """safetensors' writer raises no OSError on a full disk: a SafetensorError "... I/O error: No
    space left on device (os error 28)", which was a traceback. Now fit's one line, the state kept."""
    import safetensors.torch
    from safetensors import SafetensorError

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    head = tmp_path / "ss3"
    args = ("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
            "--max-epochs", "1", *FAST, "-o", head)
    monkeypatch.setattr(safetensors.torch, "save_file", full)
    r = run_cli(*args)
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {head}: cannot write the head: No space left on device (its state is kept: "
        "--resume finishes it)")
    assert not head.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_predict_probabilities_on_a_full_disk_is_one_line(run_cli, ss_data, tmp_path, monkeypatch):
    # A full disk under --probabilities gave dozens of h5py tracebacks and a segmentation fault.
    import types

    from protrans_cli.io import disk

    head = tmp_path / "ss3"
    assert run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                   "--max-epochs", "1", *FAST, "-o", head).exit_code == 0
    probs = tmp_path / "p.h5"
    probs.write_bytes(b"an older file")
    monkeypatch.setattr(disk.os, "statvfs", lambda path: types.SimpleNamespace(f_bavail=1 << 20, f_frsize=1))
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "q.fa", "--probabilities", probs)
    assert r.exit_code == 1 and r.stderr.strip() == (f"protrans: error: {probs}: no room for the next batch: 1.0 MiB "
                                                     "free on the output's disk, 16.0 MiB needed (8 KiB of data and 16 MiB kept for "
                                                     "HDF5's own); the file was not written")
    assert probs.read_bytes() == b"an older file" and not (tmp_path / "q.fa").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

    # A write that fails inside HDF5 all the same (the room check off: a disk filled during the
    # write; here the file-size limit): one line, exit 1, the old file kept, no crash at exit.
    import subprocess
    import sys

    script = ("import resource, sys\n"
              "import protrans_cli.io.disk as disk, protrans_cli.heads.predict as p\n"
              "disk.ensure_room = p.ensure_room = lambda *a, **k: 0\n"
              "resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
              "from protrans_cli.cli import main\n"
              f"sys.argv = ['protrans', 'predict', {str(head)!r}, '--embeddings', {str(ss_data / 'train.h5')!r}, "
              f"'-o', {str(tmp_path / 'q.fa')!r}, '--probabilities', {str(probs)!r}]\n"
              "main()\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and r.stderr.strip() == (f"protrans: error: {probs}: cannot write the probabilities: File "
                                                      "too large; the file was not written"), (r.returncode, r.stderr)
    assert probs.read_bytes() == b"an older file" and not (tmp_path / "q.fa").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_predict_probabilities_are_written_without_truncating_their_new_temporary(run_cli, one_epoch_ss3, ss_data,
                                                                                 tmp_path, monkeypatch):
    """HDF5 opened mkstemp's empty temporary again with "w" (O_TRUNC): on ext4 a file truncated on
    opening is written back to disk when it is closed (auto_da_alloc), and predict waited for it."""
    from protrans_cli.heads import predict

    opened = []
    real = predict.h5_file
    monkeypatch.setattr(predict, "h5_file", lambda path, mode="r", **k: (opened.append((mode, os.path.lexists(path))),
                                                                         real(path, mode, **k))[1])
    probs = tmp_path / "p.h5"
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "q.fa",
                "--probabilities", probs)
    assert r.exit_code == 0, r.stderr
    assert opened and not [mode for mode, existed in opened if existed and mode != "r"]
    with h5py.File(probs) as f:
        assert f.attrs["task"] == "ss3" and len(f["ss3"]) > 0


def test_predict_never_writes_into_its_head_and_a_damaged_head_is_one_line(run_cli, ss_data, tmp_path):
    """`predict HEAD -o HEAD/config.json` replaced the head's config with predictions (exit 0);
    a weights file cut short by an interrupted copy then gave a safetensors traceback."""
    head = tmp_path / "ss3"
    assert run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                   "--max-epochs", "1", *FAST, "-o", head).exit_code == 0
    files = {p.name: p.read_bytes() for p in head.iterdir() if p.is_file()}
    for args in (["-o", head / "config.json"], ["-o", head / "new.fa"], ["--probabilities", head / "p.h5"],
                 ["--labels", ss_data / "test.csv", "--metrics", head / "m"]):
        r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", *map(str, args))
        assert r.exit_code == 2 and "inside the head directory" in r.stderr, r.stderr
    assert {p.name: p.read_bytes() for p in head.iterdir() if p.is_file()} == files
    weights = head / "weights.safetensors"
    weights.write_bytes(files["weights.safetensors"][: len(files["weights.safetensors"]) // 2])
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "q.fa")
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith(f"protrans: error: {weights}: cannot read the head's weights"), line
    # a head copied without its weights, and a folder that is no head at all: named, one line each
    weights.unlink()
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "q.fa")
    assert r.exit_code == 1 and r.stderr == f"protrans: error: {head}: head has no weights.safetensors\n", r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("predict", tmp_path / "empty", "--embeddings", ss_data / "test.h5", "-o", tmp_path / "q.fa")
    assert r.exit_code == 1 and r.stderr == f"protrans: error: {tmp_path / 'empty'}: not a head directory (no " \
        "config.json)\n", r.stderr
    assert not (tmp_path / "q.fa").exists()
    # a HEAD that is not there is a missing input, exit 1 as for every command's (it was click's
    # usage error, exit 2: "Invalid value for 'HEAD': Directory '...' does not exist")
    r = run_cli("predict", tmp_path / "nohead", "--embeddings", ss_data / "test.h5", "-o", tmp_path / "q.fa")
    assert r.exit_code == 1 and r.stderr == f"protrans: error: {tmp_path / 'nohead'}: no such file\n", r.stderr
    r = run_cli("embed", tmp_path / "nohead.fa", "-m", "onehot", "-o", tmp_path / "q.h5")
    assert r.exit_code == 1 and r.stderr == f"protrans: error: {tmp_path / 'nohead.fa'}: no such file\n", r.stderr


def test_predict_names_a_language_model_given_as_its_head(run_cli, ss_data, tmp_path):
    """A model directory (a train run, one of its checkpoints) given where the head goes was "head
    has no weights.safetensors", as if the head were damaged; a finetune output and a run's
    checkpoints folder were "no config.json" alone."""
    model = tmp_path / "run"
    (model / "checkpoints" / "step_00000010").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "bert", "hidden_size": 8}')
    (model / "checkpoints" / "step_00000010" / "training_state.pt").write_bytes(b"")
    (tmp_path / "ft" / "head").mkdir(parents=True)
    (tmp_path / "ft" / "head" / "config.json").write_text("{}")
    for given, said in ((model, "a language model directory (bert model), not a prediction head: a head is what "
                         f"`protrans fit`, `finetune` or `import-head` writes; embed with this model (protrans "
                         f"embed FASTA -m {model}) and fit a head on its embeddings"),
                        (tmp_path / "ft", f"not a head directory (no config.json); it is a finetune output: its "
                         f"head is {tmp_path / 'ft' / 'head'}"),
                        (model / "checkpoints", "not a head directory (no config.json); it is a training run's "
                         "checkpoints folder (language models, not heads)")):
        r = run_cli("predict", given, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "q.fa")
        assert r.exit_code == 1 and r.stderr == f"protrans: error: {given}: {said}\n", r.stderr
        assert not (tmp_path / "q.fa").exists()


def test_predict_names_an_embeddings_file_given_as_its_head(run_cli, ss_data, tmp_path):
    """`predict emb.h5 --embeddings e.h5` (the embeddings where the head goes) was click's "Invalid
    value for 'HEAD': Directory 'emb.h5' is a file", exit 2: the line says what the file is."""
    said = ("not a head directory: a head is the folder `protrans fit`, `finetune` or `import-head` writes "
            "(embeddings go to --embeddings)")
    other = tmp_path / "notes.txt"
    other.write_text("x\n")
    for given, what in ((ss_data / "test.h5", "an HDF5 file (such as embed writes)"), (other, "a file")):
        r = run_cli("predict", given, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "q.fa")
        assert r.exit_code == 1 and r.stderr == f"protrans: error: {given}: {what}, {said}\n", r.stderr
        assert not (tmp_path / "q.fa").exists()


def test_fit_force_never_deletes_a_directory_holding_its_inputs(run_cli, ss_data, tmp_path):
    import shutil

    out = tmp_path / "work"
    out.mkdir()
    shutil.copy(ss_data / "train.h5", out / "train.h5")
    r = run_cli("fit", "ss3", "--embeddings", out / "train.h5", "--labels", ss_data / "train.csv",
                "--max-epochs", "1", *FAST, "-o", out, "--force")
    assert r.exit_code == 2 and "--force would delete it" in r.stderr
    assert (out / "train.h5").is_file()


def test_fit_force_replaces_a_head_but_no_other_folder(run_cli, ss_data, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "notes.txt").write_text("mine")
    args = ["fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv", "--max-epochs", "1",
            *FAST, "--force"]
    r = run_cli(*args, "-o", project)
    assert r.exit_code == 2 and "holds files that are not fit's (data)" in r.stderr, r.stderr
    assert (project / "data" / "notes.txt").read_text() == "mine"
    # the working directory: refused with or without --force (`fit -o .` was a traceback)
    monkeypatch.chdir(project)
    for extra in ([], ["--resume"]):
        r = run_cli(*args[:-1], *extra, "-o", ".")
        assert r.exit_code == 2 and "a folder of its own" in r.stderr, r.stderr
    r = run_cli(*args, "-o", ".")
    assert r.exit_code == 2 and (project / "data" / "notes.txt").exists()
    # a head is replaced, also through a link to it (the link stays, the head it names is new)
    head = tmp_path / "real" / "head"
    assert run_cli(*args, "-o", head).exit_code == 0
    (tmp_path / "link").symlink_to(head)
    r = run_cli(*args, "-o", tmp_path / "link")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "link").is_symlink() and (head / "weights.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "project", "real"]
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["head"]


def test_a_second_fit_on_a_head_in_the_making_is_refused(run_cli, ss_data, tmp_path):
    """Two fits on one -o at once (a job started twice): the second, with or without --force or
    --resume, must not touch the first one's state."""
    from protrans_cli.heads.fit import partial_path
    from protrans_cli.io.files import folder_lock

    head = tmp_path / "ss3"
    args = ["fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv", "--max-epochs", "1",
            *FAST, "-o", head]
    with folder_lock(partial_path(head), "busy"):  # what the first fit holds while it runs
        for extra in ([], ["--force"], ["--resume"]):
            r = run_cli(*args, *extra)
            assert r.exit_code == 1 and "is in use by another protrans fit" in r.stderr, r.stderr
        assert not head.exists()
    assert not partial_path(head).exists()  # the lock's folder goes with it when left empty
    assert run_cli(*args).exit_code == 0

    # --force over an interrupted state removes the state, not the locked folder (removed, a
    # second fit locked the new one the first epoch made)
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.heads.fit import FitState

    partial = partial_path(tmp_path / "again")
    with folder_lock(partial, "busy"):
        FitState(partial, {"a": 1})._write()
        FitState.open(partial, {"a": 1}, resume=False, force=True)
        with pytest.raises(RuntimeFailure, match="busy"):
            with folder_lock(partial, "busy"):
                pass


def test_a_read_only_output_folder_is_said_in_every_commands_words(run_cli, loc_data, tmp_path, monkeypatch):
    """fit said "<folder>: cannot write here (Permission denied)" where every other command says
    "permission denied: no file can be created in this folder". (Root writes anywhere: the folder's
    mkdir is what the test refuses.)"""
    closed = tmp_path / "ro"
    closed.mkdir()
    mkdir_refused_in(monkeypatch, closed)
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--max-epochs", "1", "-j", "1", "-o", closed / "loc")
    assert r.exit_code == 1 and r.stderr == (f"protrans: error: {closed}: permission denied: no file can be created "
                                             "in this folder (read-only, or not yours to write)\n"), r.stderr
    assert os.listdir(closed) == []


@pytest.mark.parametrize("kind, words", [("fifo", "a named pipe"), ("file", "a regular file"),
                                         ("link to nothing", "a symbolic link")])
def test_something_other_than_a_folder_called_head_partial_is_named_in_one_line(run_cli, loc_data, tmp_path, kind,
                                                                                words):
    """A named pipe, a file or a link to nothing called HEAD.partial (where fit keeps its state,
    and its lock) said "<the folder above it>: cannot write here (File exists)", with --resume,
    --force or neither: the wrong path, and no word of what was wrong. It is named now, and left
    as it is."""
    head = tmp_path / "loc"
    partial = tmp_path / "loc.partial"
    if kind == "fifo":
        os.mkfifo(partial)
    elif kind == "file":
        partial.write_text("mine\n")
    else:
        partial.symlink_to(tmp_path / "nowhere")
    for extra in ([], ["--resume"], ["--force"]):
        r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                    "--max-epochs", "1", "-j", "1", "-o", head, *extra)
        assert r.exit_code == 1 and r.stderr == (f"protrans: error: {partial}: is {words}, not a folder: an unfinished "
                                                 "run keeps its state in a folder of this name (move it away, or "
                                                 "choose another -o)\n"), r.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["loc.partial"] and os.path.lexists(partial)


@pytest.mark.parametrize("kind, words", [("fifo", "a named pipe"), ("folder", "a directory")])
def test_a_fifo_or_folder_called_state_pt_in_head_partial_is_refused_before_training(run_cli, loc_data, tmp_path, kind,
                                                                                     words):
    """A folder called HEAD.partial/state.pt failed the first epoch's save, "HEAD.partial/state.pt.tmp:
    Is a directory" (a hidden temporary named, the epoch lost); a named pipe there was taken for no
    state and replaced, with --resume too. Refused before any training now, and left as it is."""
    partial = tmp_path / "loc.partial"
    partial.mkdir()
    state = partial / "state.pt"
    os.mkfifo(state) if kind == "fifo" else state.mkdir()
    for extra in ([], ["--resume"], ["--force"]):
        r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                    "--max-epochs", "1", "-j", "1", "-o", tmp_path / "loc", *extra)
        assert r.exit_code == 1 and r.stderr == (f"protrans: error: {state}: is {words}, not a saved state: an "
                                                 "unfinished run keeps its state in a file of this name (move it "
                                                 "away)\n"), r.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["loc.partial"] and os.listdir(partial) == ["state.pt"]


def test_device_choice_is_checked_before_any_work(run_cli, ss_data, tmp_path):
    head = tmp_path / "ss3"
    fit_args = ["fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--max-epochs", "1", *FAST, "-o", head]
    r = run_cli(*fit_args, "--device", "gpu")
    assert r.exit_code == 2 and "--device gpu: use auto, cpu, cuda, cuda:N or mps" in r.stderr
    assert not head.exists()
    if not torch.cuda.is_available():
        r = run_cli(*fit_args, "--device", "cuda")
        assert r.exit_code == 2 and "no CUDA device is available" in r.stderr
        r = run_cli(*fit_args, "--device", "cuda:1")  # (the device as given: it said "--device cuda")
        assert r.exit_code == 2 and "--device cuda:1: no CUDA device is available" in r.stderr
    assert run_cli(*fit_args, "--device", "cpu").exit_code == 0
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "--device", "gpu")
    assert r.exit_code == 2 and "--device gpu" in r.stderr


@pytest.mark.gpu
def test_a_head_fit_on_the_gpu_predicts_like_on_the_cpu(run_cli, ss_data, tmp_path):
    args = ["--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
            "--test", ss_data / "test.h5", ss_data / "test.csv", "--max-epochs", "6", *FAST]
    for device in ("cpu", "cuda"):
        r = run_cli("fit", "ss3", *args, "--device", device, "-o", tmp_path / device)
        assert r.exit_code == 0, r.stderr
    q3 = {d: json.loads((tmp_path / d / "metrics.json").read_text())["test"]["ss3"]["accuracy"] for d in ("cpu", "cuda")}
    assert abs(q3["cpu"] - q3["cuda"]) < 0.03  # cuDNN convolutions are not bit-identical to the CPU's
    # The same head predicts the same states on either device.
    outs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / f"pred.{device}.fa"
        assert run_cli("predict", tmp_path / "cuda", "--embeddings", ss_data / "test.h5", "--device", device,
                       "-o", out).exit_code == 0
        outs[device] = out.read_text().splitlines()[1::2]
    agree = np.mean([a == b for x, y in zip(outs["cpu"], outs["cuda"]) for a, b in zip(x, y)])
    assert agree > 0.99


@contextlib.contextmanager
def _stopped_after(monkeypatch, *, member: int, epoch: int):
    """A Ctrl-C right after the state of `member`'s `epoch` is saved (inside the block)."""
    from protrans_cli.heads.fit import FitState

    save_epoch = FitState.save_epoch

    def save_then_stop(self, current):
        save_epoch(self, current)
        if current["member"] == member and current["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(FitState, "save_epoch", save_then_stop)
    try:
        yield
    finally:
        monkeypatch.setattr(FitState, "save_epoch", save_epoch)


def _no_gpu_memory_after(monkeypatch, epoch: int, error: BaseException):
    """`error` raised right after the state of `epoch` is saved (a GPU out of memory in the next)."""
    from protrans_cli.heads.fit import FitState

    save_epoch = FitState.save_epoch

    def save_then_fail(self, current):
        save_epoch(self, current)
        if current["epoch"] == epoch:
            raise error

    monkeypatch.setattr(FitState, "save_epoch", save_then_fail)
    return save_epoch


def test_a_gpu_out_of_memory_in_fit_says_what_to_change(ss_data, tmp_path, monkeypatch, run_cli):
    """fit running out of GPU memory said torch's line alone ("CUDA out of memory. Tried to allocate
    ..."), nothing of what to lower: fit's own options now, and the advice holds: the epochs saved
    go on with --resume on the CPU."""
    from protrans_cli.heads.fit import FitState, partial_path

    says = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 7.79 GiB of which 1.06 GiB "
            "is free.")
    save_epoch = _no_gpu_memory_after(monkeypatch, 1, torch.OutOfMemoryError(says))
    args = ("-q", "fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
            "--max-epochs", "2", *FAST, "-o", tmp_path / "ss3")
    r = run_cli(*args)
    assert r.exit_code == 1 and r.stderr.strip() == (
        f"protrans: error: {says[:-1]}; lower --batch-size (FNN heads) or --max-residues (CNN, light-attention "
        "heads), with --force to start over, or go on with --resume on --device cpu"), r.stderr
    assert (partial_path(tmp_path / "ss3") / "state.pt").is_file()
    monkeypatch.setattr(FitState, "save_epoch", save_epoch)
    r = run_cli(*args, "--resume", "--device", "cpu")
    assert r.exit_code == 0 and (tmp_path / "ss3" / "weights.safetensors").is_file(), r.stderr


def test_apples_gpu_out_of_memory_is_one_line_too(ss_data, tmp_path, monkeypatch, run_cli):
    """On Apple's GPU torch's out of memory is a plain RuntimeError, "MPS backend out of memory
    (...)", not its OutOfMemoryError: it was a traceback. The same one line now, with fit's remedy;
    any other RuntimeError (a bug) is still not taken for one."""
    from protrans_cli.heads.fit import FitState

    says = ("MPS backend out of memory (MPS allocated: 17.36 GB, other allocations: 613.56 MB, max allowed: "
            "18.13 GB). Tried to allocate 192.00 MB on private pool.")
    # (torch's last sentence is left out, as CUDA's allocator advice is: the line says this command's remedy)
    advice = (" Use PYTORCH_MPS_HIGH_WATERMARK_RATIO=0.0 to disable upper limit for memory allocations (may cause system "
              "failure).")
    args = ("-q", "fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
            "--max-epochs", "2", *FAST)
    save_epoch = _no_gpu_memory_after(monkeypatch, 1, RuntimeError(says + advice))
    r = run_cli(*args, "-o", tmp_path / "a")
    assert r.exit_code == 1 and r.stderr.strip() == (
        f"protrans: error: {says[:-1]}; lower --batch-size (FNN heads) or --max-residues (CNN, light-attention "
        "heads), with --force to start over, or go on with --resume on --device cpu"), r.stderr
    monkeypatch.setattr(FitState, "save_epoch", save_epoch)
    # (one tensor past the GPU's largest buffer, as a long protein's attention on a 16 GB Mac: pytorch#141909)
    _no_gpu_memory_after(monkeypatch, 1, RuntimeError("Invalid buffer size: 19.45 GB"))
    r = run_cli(*args, "-o", tmp_path / "c")
    assert r.exit_code == 1 and r.stderr.strip() == (
        "protrans: error: out of memory on Apple's GPU, one tensor larger than its largest buffer (Invalid buffer "
        "size: 19.45 GB); lower --batch-size (FNN heads) or --max-residues (CNN, light-attention heads), with --force "
        "to start over, or go on with --resume on --device cpu"), r.stderr
    monkeypatch.setattr(FitState, "save_epoch", save_epoch)
    _no_gpu_memory_after(monkeypatch, 1, RuntimeError("mat1 and mat2 shapes cannot be multiplied (out of memory)"))
    with pytest.raises(RuntimeError, match="mat1 and mat2"):
        run_cli(*args, "-o", tmp_path / "b")


def test_an_interrupted_fit_resumes_to_the_head_an_uninterrupted_fit_gives(ss_data, tmp_path, monkeypatch, run_cli):
    from safetensors.torch import load_file

    from protrans_cli.heads import fit as fit_module
    from protrans_cli.heads.fit import FitConfig, fit, partial_path

    def config(**kw):
        return FitConfig(**{**dict(task="ss3", max_epochs=4, patience=10, ensemble=2, max_residues=300, lr=0.02,
                                   threads=1, n_bootstrap=10), **kw})

    args = (ss_data / "train.h5", ss_data / "train.csv")
    whole = fit(config(), *args, tmp_path / "whole")

    out = tmp_path / "parts"
    with _stopped_after(monkeypatch, member=1, epoch=2), pytest.raises(KeyboardInterrupt):
        fit(config(), *args, out)
    assert not out.exists() and (partial_path(out) / "state.pt").is_file()

    # Without --resume the kept state is neither lost nor silently reused; other settings are refused.
    r = run_cli("fit", "ss3", "--embeddings", args[0], "--labels", args[1], "-o", out, "--max-epochs", "4")
    assert r.exit_code == 2 and "holds an interrupted fit: add --resume" in r.stderr
    with pytest.raises(UsageError, match=r"other settings or inputs \(lr\)"):
        fit(config(resume=True, lr=0.03), *args, out)
    # Bytes changed on disk (bit rot) resumed into another head without a word: the state's
    # sha256 is checked first.
    state = partial_path(out) / "state.pt"
    good = state.read_bytes()
    damaged = bytearray(good)
    damaged[-200] ^= 0x01
    state.write_bytes(bytes(damaged))
    with pytest.raises(InputError, match=r"state.pt: the saved fit state is damaged \(its bytes no longer match"):
        fit(config(resume=True), *args, out)
    state.write_bytes(good)

    trained = []
    monkeypatch.setattr(fit_module, "_validate", lambda *a, _v=fit_module._validate: trained.append(1) or _v(*a))
    # (docs/heads.md: --bootstrap may change on --resume; it scores the head, it does not train it)
    parts = fit(config(resume=True, n_bootstrap=20), *args, out)
    assert len(trained) == 2  # only member 1's epochs 3 and 4 were trained again
    assert not partial_path(out).exists()
    a, b = load_file(str(whole.head_dir / "weights.safetensors")), load_file(str(parts.head_dir / "weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit on the CPU
    timing = ("train_seconds", "train_cpu_seconds", "seconds")
    strip = [{k: v for k, v in h.items() if k not in timing} for h in whole.history]
    assert [{k: v for k, v in h.items() if k not in timing} for h in parts.history] == strip
    assert parts.metrics.keys() == whole.metrics.keys()
    for name, outputs in whole.metrics.items():  # (the same numbers; the CI of 20 resamples, not 10)
        for output, m in outputs.items():
            assert {k: v for k, v in parts.metrics[name][output].items() if k != "ci95"} == \
                {k: v for k, v in m.items() if k != "ci95"}


def test_resume_compares_labels_read_from_stdin_by_their_bytes(run_cli, ss_data, tmp_path, monkeypatch):
    """Labels piped in (--labels -) were not compared at all: a finished head resumed with other
    labels on stdin said "complete: nothing to resume", and an interrupted fit continued on them.
    They are compared as the sha256 of the bytes read, as a file is by its size and time."""
    import sys
    from dataclasses import replace

    from protrans_cli.heads.fit import partial_path

    labels = (ss_data / "train.csv").read_bytes()
    other = b"".join(labels.splitlines(keepends=True)[:40])
    args = ("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", "-", "--max-epochs", "1", *FAST,
            "--bootstrap", "10", "--no-plots", "-o", tmp_path / "h")
    assert run_cli(*args, input=labels).exit_code == 0
    r = run_cli(*args, "--resume", input=other)
    assert r.exit_code == 2 and "other settings or inputs (labels_file)" in r.stderr, r.stderr
    r = run_cli(*args, "--resume", input=labels)
    assert r.exit_code == 0 and "is complete: nothing to resume" in r.stderr, r.stderr

    def piped(data):  # (fit's library call reads sys.stdin as the command does)
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
        return sys.stdin

    config = FitConfig(task="ss3", max_epochs=2, threads=1, n_bootstrap=10)
    piped(labels)
    with _stopped_after(monkeypatch, member=0, epoch=1), pytest.raises(KeyboardInterrupt):
        fit(config, ss_data / "train.h5", "-", tmp_path / "cut")
    assert (partial_path(tmp_path / "cut") / "state.pt").is_file()
    piped(other)
    with pytest.raises(UsageError, match=r"other settings or inputs \(labels_file\)"):
        fit(replace(config, resume=True), ss_data / "train.h5", "-", tmp_path / "cut")
    stdin = piped(labels)
    assert fit(replace(config, resume=True), ss_data / "train.h5", "-", tmp_path / "cut").history
    assert sys.stdin is stdin  # (put back)


def test_a_resume_of_a_fit_whose_labels_came_from_a_pipe_says_why_it_cannot(loc_data, tmp_path, monkeypatch,
                                                                            run_cli):
    """`--labels <(zcat labels.gz)` or a named pipe: each run names another pipe and there is no
    file to compare, so --resume was refused as "made with other settings or inputs (labels):
    run the same command with --resume", the command just run."""
    import os
    import threading
    from dataclasses import replace

    from protrans_cli.heads.fit import FitConfig, fit

    def pipe(name):  # a named pipe that one writer fills with the training labels
        path = tmp_path / name
        os.mkfifo(path)
        threading.Thread(target=lambda: path.write_bytes((loc_data / "train.fasta").read_bytes()), daemon=True).start()
        return path

    config = FitConfig(task="loc", max_epochs=2, threads=1, n_bootstrap=10, plots=False)
    with _stopped_after(monkeypatch, member=0, epoch=1), pytest.raises(KeyboardInterrupt):
        fit(config, loc_data / "train.h5", pipe("a"), tmp_path / "head")
    again = pipe("b")
    with pytest.raises(UsageError, match=rf"head.partial cannot be resumed: its inputs come from a pipe \({again}\), "
                                         "which can be read once .* the interrupted fit read; give them as files"):
        fit(replace(config, resume=True), loc_data / "train.h5", again, tmp_path / "head")
    again.read_bytes()  # (its writer, waiting for a reader, is let go)
    # as a file, from the start
    assert fit(replace(config, force=True), loc_data / "train.h5", loc_data / "train.fasta", tmp_path / "head").history

    # and the Ctrl-C itself says so (it said "run the same command with --resume to continue")
    with _stopped_after(monkeypatch, member=0, epoch=1):
        r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", pipe("c"), "-j", "1",
                    "--max-epochs", "2", "--bootstrap", "10", "--no-plots", "-o", tmp_path / "h2")
    assert r.exit_code == 130 and "--resume" not in r.stderr, r.stderr
    assert r.stderr.replace("\n", " ").endswith(f"a fit whose labels come from a pipe ({tmp_path / 'c'}) cannot be "
                                                "resumed: give them as files next time "), r.stderr


def test_predict_from_fasta_embeds_with_the_heads_model_and_keeps_the_fasta_order(run_cli, ss_data, loc_data, tmp_path):
    head = tmp_path / "ss3"
    assert run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                   "--max-epochs", "2", *FAST, "-o", head).exit_code == 0
    from_h5 = run_cli("predict", head, "--embeddings", ss_data / "test.h5")
    assert from_h5.exit_code == 0
    states = dict(zip(from_h5.stdout.splitlines()[::2], from_h5.stdout.splitlines()[1::2]))
    # Reversed FASTA: the predictions follow it, and equal those made from embed's file.
    records = ss_data.joinpath("test.fa").read_text().split(">")[1:]
    reversed_fasta = tmp_path / "reversed.fa"
    reversed_fasta.write_text("".join(">" + r for r in reversed(records)))
    r = run_cli("predict", head, "--fasta", reversed_fasta, "-o", tmp_path / "pred.fa")
    assert r.exit_code == 0, r.stderr
    lines = (tmp_path / "pred.fa").read_text().splitlines()
    assert lines[::2] == [">" + r.split(None, 1)[0] for r in reversed(records)]
    assert dict(zip(lines[::2], lines[1::2])) == states
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".protrans-predict")] == []  # no leftovers
    # stdin, a per-protein head, and the CSV in FASTA order
    loc_head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "5", "-j", "1", "--bootstrap", "10", "-o", loc_head).exit_code == 0
    r = run_cli("predict", loc_head, "--fasta", "-", input=(loc_data / "test.fasta").read_bytes())
    assert r.exit_code == 0, r.stderr
    ids = [row.split(",")[0] for row in r.stdout.splitlines()[1:]]
    assert ids == [f"test{i}" for i in range(45)]
    # a FIFO (as <(zcat ...) is) read once: the id pass used it up, and embed found no records
    import os
    import threading

    fifo = tmp_path / "query.fa"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_bytes((loc_data / "test.fasta").read_bytes()))
    feeder.start()
    r = run_cli("predict", loc_head, "--fasta", fifo)
    feeder.join()
    assert r.exit_code == 0, r.stderr
    assert [row.split(",")[0] for row in r.stdout.splitlines()[1:]] == ids
    # messages name stdin, not the hidden copy of it
    r = run_cli("predict", loc_head, "--fasta", "-", input=b">p1\n>p2\nMVL\n")
    assert r.exit_code == 1 and "<stdin>:1, record 'p1': empty sequence (--invalid-policy skip leaves such records " \
        "out)" in r.stderr, r.stderr
    # --invalid-policy skip, as embed's: no prediction for them, and a warning naming them
    r = run_cli("predict", loc_head, "--fasta", "-", "--invalid-policy", "skip", input=b">p1\n>p2\nMVL\n>p3\nMJK\n")
    assert r.exit_code == 0, r.stderr
    assert [row.split(",")[0] for row in r.stdout.splitlines()[1:]] == ["p2"]
    assert "2 protein(s) have no embedding" in r.stderr and "p3" in r.stderr, r.stderr
    # usage errors
    assert run_cli("predict", head, "--embeddings", ss_data / "test.h5", "--invalid-policy", "skip").exit_code == 2
    assert run_cli("predict", head).exit_code == 2
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-m", "onehot")
    assert r.exit_code == 2 and "--model goes with --fasta" in r.stderr


def test_predict_in_slices_writes_what_one_pass_writes(run_cli, ss_data, loc_data, tmp_path, monkeypatch):
    """predict works through big files a slice at a time; the slicing must not show in the output."""
    from protrans_cli.heads import predict as predict_module

    ss_head, loc_head = tmp_path / "ss", tmp_path / "loc"
    assert run_cli("fit", "ss3+ss8", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                   "--max-epochs", "2", *FAST, "-o", ss_head).exit_code == 0
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "3", "-j", "1", "--bootstrap", "10", "-o", loc_head).exit_code == 0

    def outputs(tag):
        run_cli("predict", ss_head, "--embeddings", ss_data / "test.h5", "-o", tmp_path / f"{tag}.fa",
                "--probabilities", tmp_path / f"{tag}.h5")
        run_cli("predict", loc_head, "--embeddings", loc_data / "test.h5", "-o", tmp_path / f"{tag}.csv")
        with h5py.File(tmp_path / f"{tag}.h5") as h5:
            probs = {f"{o}/{k}": h5[o][k][()] for o in ("ss3", "ss8") for k in h5[o]}
        return (tmp_path / f"{tag}.fa").read_text(), (tmp_path / f"{tag}.csv").read_text(), probs

    whole = outputs("whole")
    monkeypatch.setattr(predict_module, "CHUNK_RESIDUES", 70)  # a protein or two at a time
    monkeypatch.setattr(predict_module, "CHUNK_PROTEINS", 4)
    sliced = outputs("sliced")
    assert sliced[0] == whole[0]
    # the CSV: the same rows and classes; probabilities (6 significant digits) to float32 rounding
    # of batches of other sizes
    rows_whole, rows_sliced = list(csv.reader(io.StringIO(whole[1]))), list(csv.reader(io.StringIO(sliced[1])))
    assert len(rows_sliced) == len(rows_whole) and rows_sliced[0] == rows_whole[0]
    for a, b in zip(rows_sliced[1:], rows_whole[1:]):
        assert [x for x in a if not x[:1].isdigit()] == [x for x in b if not x[:1].isdigit()]  # ids, classes
        np.testing.assert_allclose([float(x) for x in a if x[:1].isdigit()],
                                   [float(x) for x in b if x[:1].isdigit()], rtol=0, atol=2e-6)
    assert len(whole[0].splitlines()) == 40 and len(whole[1].splitlines()) == 46
    assert sliced[2].keys() == whole[2].keys() and len(whole[2]) == 40
    for key in whole[2]:
        np.testing.assert_allclose(sliced[2][key], whole[2][key], rtol=0, atol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_predict_lets_go_of_a_slice_before_it_reads_the_next(run_cli, ss_data, tmp_path, monkeypatch):
    """Each slice's embeddings (read into RAM up to --cache-gb) and probabilities are freed before
    the next slice is read: two slices were held at once, and peak RSS grew with the file."""
    import weakref

    from protrans_cli.heads import data as data_module
    from protrans_cli.heads import predict as predict_module
    from protrans_cli.heads.data import ResidueData

    head = tmp_path / "ss"
    assert run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                   "--max-epochs", "1", *FAST, "-o", head).exit_code == 0
    alive, seen = [], []

    class Watched(ResidueData):
        def __init__(self, *args, **kwargs):
            seen.append(sum(ref() is not None for ref in alive))  # earlier slices still held
            super().__init__(*args, **kwargs)
            alive.append(weakref.ref(self))

    monkeypatch.setattr(data_module, "ResidueData", Watched)  # (what head_data builds)
    monkeypatch.setattr(predict_module, "CHUNK_RESIDUES", 70)  # a protein or two at a time
    predict_module.predict(head, ss_data / "test.h5", tmp_path / "out.fa", threads=1)
    assert len(seen) > 3 and seen == [0] * len(seen), seen


def _h5o_opens_listed(monkeypatch) -> list:
    """The names h5py.h5o.open is asked to open from now on, in order (a list it fills)."""
    opened = []
    h5o_open = h5py.h5o.open

    def counted(loc, name, *args, **kwargs):
        opened.append(name)
        return h5o_open(loc, name, *args, **kwargs)

    monkeypatch.setattr(h5py.h5o, "open", counted)
    return opened


def test_predict_opens_each_protein_of_a_grouped_file_once(run_cli, loc_data, tmp_path, monkeypatch):
    """An FNN head over a grouped per-protein file: each protein's dataset is opened once, for its
    attributes and its vector together (it was opened twice, once as every protein was listed and
    once for its row: 2.2 ms a protein, 223 s for 100,000), a slice at a time; the CSV is the one
    written by listing every protein first (as predict still does with an order to follow)."""
    from protrans_cli.heads import predict as predict_module

    head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "1", "-j", "1", "--bootstrap", "10", "-o", head).exit_code == 0
    monkeypatch.setattr(predict_module, "CHUNK_PROTEINS", 7)  # several slices, the last one short
    listed = tmp_path / "listed.csv"  # (an order to follow: every protein listed first, as before)
    with EmbeddingsReader(loc_data / "test.h5") as reader:
        predict_module.predict(head, loc_data / "test.h5", listed, threads=1, order=reader.ids())
    opened = _h5o_opens_listed(monkeypatch)
    out = tmp_path / "sliced.csv"
    assert run_cli("predict", head, "--embeddings", loc_data / "test.h5", "-o", out).exit_code == 0
    with h5py.File(loc_data / "test.h5") as h5:
        keys = [key.encode() for key in h5["per_protein"]]
    opens = [name for name in opened if name in keys]
    # (and the first one or two more times: the file's width is read from it as the file is checked)
    assert len(keys) == 45 and set(opens) == set(keys) and len(opens) <= len(keys) + 2, sorted(opens)
    assert out.read_text() == listed.read_text()


def test_predict_opens_a_flat_file_once_whatever_its_slices(run_cli, loc_data, tmp_path, monkeypatch):
    """A flat file (bio_embeddings' and the ProtTrans script's layout: a dataset per protein at the
    root) is opened, its root listed, twice whatever the number of slices predict reads it in
    (once to check it, once for the slices): a reader a slice listed the root of a 1,000,000-protein
    file 21 times, and looked up what each member is every time; the CSV is the grouped file's."""
    from protrans_cli.heads import predict as predict_module
    from protrans_cli.io import h5 as h5_module

    head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "1", "-j", "1", "--bootstrap", "10", "-o", head).exit_code == 0
    flat = tmp_path / "flat.h5"  # (another tool's: no attributes, its kind guessed from the shapes)
    with h5py.File(loc_data / "test.h5") as src, h5py.File(flat, "w") as dst:
        for key in src["per_protein"]:
            dst[key] = src["per_protein"][key][()]
    monkeypatch.setattr(predict_module, "CHUNK_PROTEINS", 7)  # 7 slices, the last one short
    whole = tmp_path / "grouped.csv"  # (the same vectors, in the same slices, from the grouped file)
    assert run_cli("predict", head, "--embeddings", loc_data / "test.h5", "-o", whole).exit_code == 0
    opened = []
    init = h5_module.EmbeddingsReader.__init__
    monkeypatch.setattr(h5_module.EmbeddingsReader, "__init__", lambda self, path: opened.append(path) or init(self, path))
    sliced = tmp_path / "sliced.csv"
    assert run_cli("predict", head, "--embeddings", flat, "-o", sliced, "--allow-model-mismatch").exit_code == 0
    assert len(whole.read_text().splitlines()) == 46 and sliced.read_text() == whole.read_text()
    assert len(opened) == 2, opened


def test_fit_opens_no_dataset_of_an_unlabelled_protein(run_cli, loc_data, tmp_path, monkeypatch):
    """fit on a file of many more proteins than labels (a UniRef50 run, a DeepLoc set) says how many
    proteins have no label, telling each dataset from a group among them by its object header: it
    opened every unlabelled protein's dataset (a fifth of fit's time on a grouped file of 100,000
    proteins, 20,000 labelled). The proteins read, and the count said, are as before."""
    from protrans_cli.io.fasta import read_fasta

    records = list(read_fasta(loc_data / "train.fasta"))
    labels = tmp_path / "some.fasta"
    labels.write_text("".join(f">{r.description}\n{r.sequence}\n" for r in records[:60]))
    opened = _h5o_opens_listed(monkeypatch)
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", labels, "--max-epochs", "1",
                "-j", "1", "--bootstrap", "10", "-o", tmp_path / "loc")
    assert r.exit_code == 0, r.stderr
    assert "90 protein(s) have no label" in r.stderr
    unlabelled = {rec.id.encode() for rec in records[60:]}
    assert len(unlabelled) == 90 and not unlabelled & set(opened), sorted(unlabelled & set(opened))[:5]


def test_value_task_regression_from_a_flip_csv(run_cli, tmp_path):
    """FLIP's per-protein regression splits: fit learns a value that follows the composition."""
    rng = np.random.default_rng(3)
    rows = ["sequence,target,set,validation"]
    for i in range(260):
        seq = "".join(rng.choice(list(AA), size=int(rng.integers(40, 70))))
        target = 10 * (seq.count("K") + seq.count("R")) / len(seq) + rng.normal(0, 0.05)
        split = "test" if i >= 200 else "train"
        rows.append(f"{seq},{target:.4f},{split},{'True' if split == 'train' and i % 5 == 0 else 'False'}")
    labels = tmp_path / "gb1_like.csv"
    labels.write_text("\n".join(rows) + "\n")
    assert run_cli("labels", labels, "-o", tmp_path / "all.fa").exit_code == 0
    assert run_cli("embed", tmp_path / "all.fa", "-m", "onehot", "--per-protein", "-o", tmp_path / "all.h5").exit_code == 0
    head = tmp_path / "value"
    r = run_cli("fit", "value", "--embeddings", tmp_path / "all.h5", "--labels", labels, "--max-epochs", "150",
                "--lr", "0.01", "-j", "1", "--bootstrap", "50", "-o", head)
    assert r.exit_code == 0, r.stderr
    assert "Spearman" in r.stderr
    summary = json.loads((head / "metrics.json").read_text())
    assert summary["test"]["value"]["metric"] == "Spearman" and summary["test"]["value"]["n"] == 60
    assert summary["test"]["value"]["spearman"] > 0.8
    config = json.loads((head / "config.json").read_text())
    mean, std = config["task"]["outputs"][0]["scale"]
    assert 0 < std and 0 < mean < 10
    assert (head / "metrics" / "test.value.png").is_file()
    # predict writes id,value in the target's own unit, and --labels scores it the same way
    out = tmp_path / "pred.csv"
    r = run_cli("predict", head, "--embeddings", tmp_path / "all.h5", "-o", out, "--labels", labels)
    assert r.exit_code == 0, r.stderr
    lines = out.read_text().splitlines()
    assert lines[0] == "id,value" and len(lines) == 261
    predicted = {line.split(",")[0]: float(line.split(",")[1]) for line in lines[1:]}
    from protrans_cli.heads.labels import read_labels

    truth = {rec.id: float(rec.labels["label"]) for rec in read_labels(labels).records}
    assert np.mean([abs(predicted[k] - truth[k]) for k in truth]) < 0.5 * np.std(list(truth.values()))
    # classification-only options are refused; a non-number label names its line
    r = run_cli("fit", "value", "--embeddings", tmp_path / "all.h5", "--labels", labels, "--class-weights",
                "-o", tmp_path / "cw")
    assert r.exit_code == 2 and "regression" in r.stderr
    # ... before any file is read (it was refused once every set had been read and matched)
    junk = tmp_path / "junk.csv"
    junk.write_text("not a label file\n")
    r = run_cli("fit", "value", "--embeddings", tmp_path / "all.h5", "--labels", junk, "--class-weights",
                "-o", tmp_path / "cw")
    assert r.exit_code == 2 and "regression" in r.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text(labels.read_text().replace(rows[3].split(",")[1], "high", 1))
    r = run_cli("fit", "value", "--embeddings", tmp_path / "all.h5", "--labels", bad, "-o", tmp_path / "b")
    assert r.exit_code == 1 and "'high' is not a number" in r.stderr and "bad.csv:4" in r.stderr


def test_layer_0_given_to_embed_is_layer_0_for_fit_and_predict(run_cli, ss_data, tmp_path):
    """embed stores --layer 0 as -(num_layers + 1); fit --layer 0 must find it (it was refused)."""
    from protrans_cli.models import FAMILIES

    bert = FAMILIES["bert"]
    tokenizer = bert.build_tokenizer()
    torch.manual_seed(0)
    bert.save_pretrained(bert.pretraining_model(bert.build_config("tiny", tokenizer)), tokenizer, tmp_path / "m")
    h5 = tmp_path / "train.h5"
    r = run_cli("embed", ss_data / "train.fa", "-m", tmp_path / "m", "--per-residue", "--layer", "0", "--layer", "-1",
                "-o", h5)
    assert r.exit_code == 0, r.stderr
    with h5py.File(h5) as f:
        states = int(f.attrs["num_hidden_states"])
        assert list(f.attrs["layers"]) == [-states, -1]
        first = f["per_residue"][next(iter(f["per_residue"]))][()]
    head = tmp_path / "ss3"
    r = run_cli("fit", "ss3", "--embeddings", h5, "--labels", ss_data / "train.csv", "--layer", "0",
                "--max-epochs", "1", *FAST, "-o", head)
    assert r.exit_code == 0, r.stderr
    # The layer read is the embedding layer's output (axis 0), not the last layer.
    from protrans_cli.heads.data import stored_layer_index

    with EmbeddingsReader(h5) as reader:
        assert stored_layer_index(reader, 0) == 0 and stored_layer_index(reader, states - 1) == 1
        assert not np.allclose(first[0], first[1])
    r = run_cli("predict", head, "--fasta", ss_data / "test.fa", "-o", tmp_path / "p.fa")  # embeds layer 0 again
    assert r.exit_code == 0, r.stderr
    r = run_cli("fit", "ss3", "--embeddings", h5, "--labels", ss_data / "train.csv", "--layer", "1", "-o", tmp_path / "x")
    assert r.exit_code == 1 and f"of {states} hidden states, 0 = -{states}" in r.stderr


def _both_loc(loc_data, tmp_path):
    """One DeepLoc FASTA holding the train records (no split) and the test records (' test'), and
    its embeddings: what a DeepLoc download looks like."""
    from protrans_cli.embed import EmbedOptions, embed

    both = tmp_path / "both.fasta"
    both.write_text((loc_data / "train.fasta").read_text() + (loc_data / "test.fasta").read_text())
    embed(both, tmp_path / "both.h5", EmbedOptions(model="onehot", per_residue=False, threads=1))
    return both, tmp_path / "both.h5"


def test_records_without_a_split_train_and_the_test_records_stay_out(run_cli, loc_data, tmp_path):
    both, h5 = _both_loc(loc_data, tmp_path)
    head = tmp_path / "loc"
    r = run_cli("fit", "loc", "--embeddings", h5, "--labels", both, "--max-epochs", "3", "-j", "1",
                "--bootstrap", "10", "-o", head)
    assert r.exit_code == 0, r.stderr
    assert "train: 150 proteins" in r.stderr  # before: 195, the 45 test records trained on
    assert json.loads((head / "config.json").read_text())["training"]["proteins"] == 150 - 15  # 10% validation
    assert json.loads((head / "metrics.json").read_text())["test"]["loc"]["n"] == 45
    only_test = tmp_path / "only_test.fasta"
    only_test.write_text((loc_data / "test.fasta").read_text())
    r = run_cli("fit", "loc", "--embeddings", h5, "--labels", only_test, "-j", "1", "-o", tmp_path / "t")
    assert r.exit_code == 1 and "no training records: the file assigns every record to test" in r.stderr


def test_a_valid_or_test_file_of_other_splits_only_is_refused_not_used_whole(run_cli, loc_data, tmp_path):
    """A DeepLoc FASTA of training and test records given as --valid was used whole: the epoch was
    chosen on its test proteins (and on training ones). A file of one split is still used whole,
    and a file's own split is still taken from it."""
    both, h5 = _both_loc(loc_data, tmp_path)
    base = ("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
            "--max-epochs", "1", "-j", "1", "--bootstrap", "10", "--no-plots")
    r = run_cli(*base, "--valid", h5, both, "-o", tmp_path / "v")
    assert r.exit_code == 1 and r.stderr.count("protrans: error:") == 1
    assert "assigns its records to test, train and none to valid: as --valid it would mix them" in r.stderr
    assert not (tmp_path / "v").exists() and not (tmp_path / "v.partial").exists()
    r = run_cli(*base, "--valid", loc_data / "test.h5", loc_data / "test.fasta", "--test", h5, both, "-o", tmp_path / "t")
    assert r.exit_code == 0, r.stderr
    metrics = json.loads((tmp_path / "t" / "metrics.json").read_text())
    assert metrics["valid"]["loc"]["n"] == 45 and metrics["both"]["loc"]["n"] == 45

def test_embeddings_without_a_label_are_reported(run_cli, loc_data, tmp_path):
    some = tmp_path / "some.fasta"
    some.write_text("".join((loc_data / "train.fasta").read_text().splitlines(keepends=True)[:200]))  # 100 records
    head = tmp_path / "loc"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", some, "--max-epochs", "2",
                "-j", "1", "-o", head)
    assert r.exit_code == 0, r.stderr
    assert "50 protein(s) have no label in" in r.stderr and "are not used (train100" in r.stderr
    r = run_cli("predict", head, "--embeddings", loc_data / "train.h5", "--labels", some)
    assert r.exit_code == 0 and "50 protein(s) have no label in" in r.stderr and "not scored" in r.stderr
    # valid and test sets taken from the same file are in use, not "without a label"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", some, "--test", loc_data / "train.h5",
                loc_data / "train.fasta", "--max-epochs", "1", "-j", "1", "--bootstrap", "10", "-o", tmp_path / "l2")
    assert r.exit_code == 0 and "have no label" not in r.stderr


def test_a_loc_head_without_membrane_labels_has_no_membrane_output(run_cli, loc_data, tmp_path):
    table = tmp_path / "loc.csv"
    rows = [line[1:].split()[:2] for line in (loc_data / "train.fasta").read_text().splitlines() if line[0] == ">"]
    table.write_text("".join(f"{ident},{label.split('-')[0]}\n" for ident, label in rows))
    head = tmp_path / "loc"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", table, "--max-epochs", "3",
                "-j", "1", "-o", head)
    assert r.exit_code == 0, r.stderr
    assert "no training protein has a membrane label" in r.stderr and "membrane 0.0000" not in r.stderr
    outputs = [o["name"] for o in json.loads((head / "config.json").read_text())["task"]["outputs"]]
    assert outputs == ["loc"]
    out = tmp_path / "p.csv"
    assert run_cli("predict", head, "--embeddings", loc_data / "test.h5", "-o", out).exit_code == 0
    assert not [c for c in next(csv.reader(out.read_text().splitlines())) if c.startswith("membrane")]


@pytest.fixture(scope="module")
def one_epoch_ss3(ss_data, tmp_path_factory):
    """An ss3 head after one epoch: for tests of predict's behaviour, not of its accuracy."""
    head = tmp_path_factory.mktemp("one_epoch") / "ss3"
    fit(FitConfig(task="ss3", max_epochs=1, max_residues=300, lr=0.02, threads=1, n_bootstrap=10),
        ss_data / "train.h5", ss_data / "train.csv", head)
    return head


def test_the_heads_metrics_json_gives_the_per_protein_accuracy(one_epoch_ss3):
    """CHANGELOG and docs/heads.md say metrics.json gives `accuracy_per_protein` beside the pooled
    Q3: it was only in metrics/<set>.json (the headlines left it out)."""
    summary = json.loads((one_epoch_ss3 / "metrics.json").read_text())["valid"]["ss3"]
    detail = json.loads((one_epoch_ss3 / "metrics" / "valid.json").read_text())["outputs"]["ss3"]
    assert summary["accuracy_per_protein"] == detail["accuracy_per_protein"]
    assert 0 <= summary["accuracy_per_protein"]["mean"] <= 1


def test_the_heads_metrics_json_gives_sov99_beside_q3(one_epoch_ss3):
    """A secondary-structure output is scored by SOV'99 too (per protein and pooled, 0-100), in
    metrics.json's headlines as in metrics/<set>.json; existing keys unchanged."""
    summary = json.loads((one_epoch_ss3 / "metrics.json").read_text())["valid"]["ss3"]
    detail = json.loads((one_epoch_ss3 / "metrics" / "valid.json").read_text())["outputs"]["ss3"]
    for key in ("sov99_per_protein", "sov99_pooled"):
        assert summary[key] == detail[key]
    assert 0 <= summary["sov99_per_protein"]["mean"] <= 100 and 0 <= summary["sov99_pooled"]["overall"] <= 100
    assert summary["sov99_per_protein"]["n_proteins"] == summary["n_proteins"]
    assert set(summary["sov99_pooled"]["per_class"]) == {"H", "E", "C"}
    assert {"metric", "accuracy", "ci95", "mcc", "accuracy_per_protein"} <= set(summary)


def test_predict_fasta_reads_a_bad_label_file_before_embedding(run_cli, monkeypatch, one_epoch_ss3, tmp_path):
    """`predict --fasta --labels BAD` embedded the whole FASTA, then failed on the label file's
    second line: the labels are read first now (a file; stdin is read once, later)."""
    from pathlib import Path

    import protrans_cli.embed as embed_module

    def no_embedding(*a, **k):
        raise AssertionError("the FASTA was embedded before the label file was read")

    monkeypatch.setattr(embed_module, "embed", no_embedding)
    bad = Path(__file__).parent / "data" / "heads" / "netsurfp_label_length_mismatch.csv"
    fasta = tmp_path / "q.fa"
    fasta.write_text(">p\nMKVL\n")
    r = run_cli("predict", one_epoch_ss3, "--fasta", fasta, "--labels", bad, "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and "netsurfp_label_length_mismatch.csv:2" in r.stderr, r.stderr
    assert "dssp3 has 3 labels for 4 residues" in r.stderr and not (tmp_path / "p.fa").exists()


@pytest.mark.parametrize("args, message", [
    (["--max-residues", "0"], "--max-residues must be at least 1, got 0"),
    (["--max-length", "0"], "--max-length must be at least 1, got 0"),
    (["--long-policy", "chunk", "--max-length", "5", "--chunk-overlap", "-1"],
     "--chunk-overlap must be at least 0, got -1"),
    (["--device", "gpu"], "--device gpu: use auto, cpu, cuda, cuda:N or mps"),
])
def test_predict_fasta_refuses_bad_values_before_reading_or_embedding(run_cli, monkeypatch, one_epoch_ss3,
                                                                      tmp_path, args, message):
    """`predict --fasta` embedded the whole FASTA before `--max-residues 0` was refused, and read it
    (or spooled stdin) before `--max-length 0`, a negative overlap or an unknown --device were."""
    import protrans_cli.embed as embed_module
    import protrans_cli.heads.predict as predict_module
    import protrans_cli.io.fasta as fasta_module

    def no_work(*a, **k):
        raise AssertionError("the FASTA was read or embedded before the options were checked")

    for module, name in ((predict_module, "open_input"), (fasta_module, "parse_fasta"), (embed_module, "embed")):
        monkeypatch.setattr(module, name, no_work)
    r = run_cli("predict", one_epoch_ss3, "--fasta", "-", *args, "-o", tmp_path / "p.fa", input=b">p\nMKV\n")
    assert r.exit_code == 2 and r.stderr.startswith(f"protrans: error: {message}"), r.stderr
    assert len(r.stderr.splitlines()) == 1 and not (tmp_path / "p.fa").exists()


def test_predict_fasta_on_a_head_that_cannot_say_how_to_embed_is_refused_before_reading(run_cli, monkeypatch,
                                                                                        one_epoch_ss3, tmp_path):
    """A head whose config.json is cut short, or records no model, and --metrics without --labels: each
    refused in one line naming what to do, before the FASTA is read or embedded."""
    import shutil

    import protrans_cli.embed as embed_module
    import protrans_cli.io.fasta as fasta_module

    def no_work(*a, **k):
        raise AssertionError("the FASTA was read or embedded")

    for module, name in ((fasta_module, "parse_fasta"), (embed_module, "embed")):
        monkeypatch.setattr(module, name, no_work)
    fasta = tmp_path / "q.fa"
    fasta.write_text(">p\nMKVL\n")
    r = run_cli("predict", one_epoch_ss3, "--fasta", fasta, "--metrics", tmp_path / "m", "-o", tmp_path / "p.fa")
    assert r.exit_code == 2 and "--metrics needs --labels" in r.stderr, r.stderr
    head = tmp_path / "head"
    shutil.copytree(one_epoch_ss3, head)
    config = json.loads((head / "config.json").read_text())
    del config["embedding"]["model"]
    (head / "config.json").write_text(json.dumps(config))
    r = run_cli("predict", head, "--fasta", fasta, "-o", tmp_path / "p.fa")
    assert r.exit_code == 2 and f"{head} does not record which model made its embeddings: give --model" \
        in r.stderr, r.stderr
    # fit on import-esm's file made without -m: its model is the tool, "esm-extract", which was
    # loaded as a hub model once the FASTA had been read (a download error, exit 1; knn said so)
    config["embedding"]["model"] = "esm-extract"
    (head / "config.json").write_text(json.dumps(config))
    r = run_cli("predict", head, "--fasta", fasta, "-o", tmp_path / "p.fa")
    assert r.exit_code == 2 and f"{head} was fit on embeddings imported from esm-extract without naming the model " \
        "(import-esm -m): give --model" in r.stderr, r.stderr
    (head / "config.json").write_text('{"kind": ')
    r = run_cli("predict", head, "--fasta", fasta, "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and "config.json: head config is incomplete or unreadable (Expecting value" in r.stderr, \
        r.stderr
    assert len(r.stderr.splitlines()) == 1 and not (tmp_path / "p.fa").exists() and not (tmp_path / "m").exists()


def test_predict_refuses_the_options_of_labels_without_labels(one_epoch_ss3, ss_data, tmp_path, run_cli):
    """--label-format, --mask, --mask-column, --skip-mismatched and --only-embedded say how --labels
    is read: without it they changed nothing, without a word (as --metrics without --labels is
    refused), before the head is run."""
    mask = tmp_path / "mask.fasta"
    mask.write_text(">p\n0101\n")
    for extra in (["--label-format", "netsurfp"], ["--mask", mask], ["--mask-column", "cb513_mask"],
                  ["--skip-mismatched"], ["--only-embedded"],
                  ["--label-format", "auto"]):  # (the default's value, given: it was taken without a word)
        out = tmp_path / "p.fa"
        r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "-o", out, *extra)
        assert r.exit_code == 2, (extra, r.stderr)
        assert f"protrans: error: {extra[0]} goes with --labels" in r.stderr, (extra, r.stderr)
        assert not out.exists()



def test_hostile_attributes_and_values_of_an_embeddings_file_are_one_line(run_cli, ss_data, one_epoch_ss3,
                                                                         tmp_path):
    """What a damaged or hostile file held made tracebacks, or worse: a `length` attribute of
    10**12 made predict allocate 116 TiB; `layers="abc"` and an `id` that is an array were
    ValueErrors; a dataset of text was converted to numbers where it held them."""
    import shutil

    import h5py

    expected = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "ok.fa")
    assert expected.exit_code == 0, expected.stderr
    bad = tmp_path / "bad.h5"

    def edited(change):
        shutil.copy(ss_data / "test.h5", bad)
        with h5py.File(bad, "r+") as f:
            change(f, f["per_residue"], sorted(f["per_residue"])[0])

    # a per-residue array's rows are its length, whatever its attribute says; an odd id is no id
    edited(lambda f, g, k: g[k].attrs.__setitem__("length", 10**12))
    r = run_cli("predict", one_epoch_ss3, "--embeddings", bad, "-o", tmp_path / "p.fa")
    assert r.exit_code == 0 and (tmp_path / "p.fa").read_bytes() == (tmp_path / "ok.fa").read_bytes()
    edited(lambda f, g, k: g[k].attrs.__setitem__("id", np.arange(3)))
    r = run_cli("predict", one_epoch_ss3, "--embeddings", bad, "-o", tmp_path / "p.fa")
    assert r.exit_code == 0, r.stderr
    edited(lambda f, g, k: f.attrs.__setitem__("layers", "abc"))
    r = run_cli("predict", one_epoch_ss3, "--embeddings", bad, "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and r.stderr.strip() == (
        f"protrans: error: {bad}: its `layers` (abc) and `num_hidden_states` (1) attributes are not layer "
        "numbers (a damaged file, or not embed's)")

    def text(f, g, k):
        rows = g[k].shape[0]
        del g[k]
        g.create_dataset(k, data=np.full((rows, 21), b"1", dtype="S1"))
    edited(text)
    r = run_cli("predict", one_epoch_ss3, "--embeddings", bad, "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and "embedding holds |S1 values, not numbers" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    # numbers of another type (another tool's one-hot rows as integers) are numbers
    def integers(f, g, k):
        rows = g[k][()]
        del g[k]
        g.create_dataset(k, data=rows.astype(np.int16))
    edited(integers)
    assert run_cli("predict", one_epoch_ss3, "--embeddings", bad, "-o", tmp_path / "p.fa").exit_code == 0
    # a `truncated_from` that is no count is no truncation (it was a traceback)
    edited(lambda f, g, k: g[k].attrs.__setitem__("truncated_from", "abc"))
    r = run_cli("predict", one_epoch_ss3, "--embeddings", bad, "-o", tmp_path / "p.fa")
    assert r.exit_code == 0 and "truncated" not in r.stderr, r.stderr


@pytest.mark.parametrize("worker", [False, True])
def test_running_out_of_memory_is_one_line(run_cli, monkeypatch, ss_data, one_epoch_ss3, worker):
    """numpy's MemoryError ("Unable to allocate 23.8 GiB for an array with shape ...") was a
    traceback: one line now, exit 1. A DataLoader worker's comes as "Caught MemoryError in
    DataLoader worker process 0." and the worker's traceback: its last line is the message."""
    import protrans_cli.heads.predict as predict_module

    numpy_says = "Unable to allocate 23.8 GiB for an array with shape (1, 200000000, 32) and data type float32"
    text = (f"Caught MemoryError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
            f'  File "worker.py", line 374, in _worker_loop\n    data = fetcher.fetch(index)\nMemoryError: {numpy_says}\n'
            if worker else numpy_says)

    def huge(*args, **kwargs):
        raise MemoryError(text)

    monkeypatch.setattr(predict_module, "predict", huge)
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "-o", "-")
    assert r.exit_code == 1 and r.stderr.strip() == f"protrans: error: out of memory ({numpy_says})"


@pytest.mark.parametrize("task", ["ss3", "loc"])
def test_fit_and_predict_on_apple_gpu_where_there_is_no_float64(run_cli, monkeypatch, ss_data, loc_data, tmp_path,
                                                               task):
    """fit and predict on Apple's GPU (MPS: no float64, no numpy view of a device tensor; the
    batches made such tensors by tests/conftest.py's mps_like) train and predict as on the CPU:
    a per-residue CNN head and a per-protein FNN one, its class weights and metrics included."""
    from conftest import mps_like
    from protrans_cli.heads.data import Batch

    data, labels = ((ss_data / "train.h5", ss_data / "train.csv") if task == "ss3" else
                    (loc_data / "train.h5", loc_data / "train.fasta"))
    fit = ["fit", "ss3" if task == "ss3" else "loc", "--embeddings", data, "--labels", labels, "--max-epochs", "2",
           "--class-weights", "--seed", "3"]
    predict = ["--embeddings", data, "-o", "-"]
    r = run_cli(*fit, "-o", tmp_path / "cpu")
    assert r.exit_code == 0, r.stderr
    want = run_cli("predict", tmp_path / "cpu", *predict).stdout
    monkeypatch.setattr(Batch, "to", lambda self, device: Batch(
        mps_like(self.x), None if self.mask is None else mps_like(self.mask),
        {k: mps_like(v) for k, v in self.targets.items()}, self.index))
    r = run_cli(*fit, "-o", tmp_path / "mps")
    assert r.exit_code == 0, r.stderr
    assert (json.loads((tmp_path / "mps" / "metrics.json").read_text())
            == json.loads((tmp_path / "cpu" / "metrics.json").read_text()))
    assert run_cli("predict", tmp_path / "mps", *predict).stdout == want


def test_predict_output_names_are_checked_before_any_work(run_cli, ss_data, one_epoch_ss3, tmp_path):
    head = one_epoch_ss3
    same = tmp_path / "same.h5"
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-o", same, "--probabilities", same)
    assert r.exit_code == 2 and "both name" in r.stderr and not same.exists()
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "x.fa",
                "--probabilities", tmp_path / "nodir" / "p.h5")
    assert r.exit_code == 2 and "nodir: output directory does not exist" in r.stderr
    assert not (tmp_path / "x.fa").exists()


def test_probabilities_named_by_the_file_stdout_goes_to_are_refused_beside_predictions_on_stdout(
        ss_data, one_epoch_ss3, tmp_path):
    """`predict HEAD --embeddings q.h5 --probabilities p.h5 > p.h5` (-o is stdout by default): the
    HDF5 file was renamed over the file the predictions had been written to, exit 0."""
    import subprocess
    import sys

    with open(tmp_path / "p.h5", "wb") as stdout:
        done = subprocess.run([sys.executable, "-m", "protrans_cli", "predict", str(one_epoch_ss3), "--embeddings",
                               str(ss_data / "test.h5"), "--probabilities", str(tmp_path / "p.h5")],
                              stdout=stdout, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 2 and f"--probabilities {tmp_path / 'p.h5'} is where stdout goes" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and (tmp_path / "p.h5").read_bytes() == b""


def test_a_predict_stopped_while_it_writes_the_metrics_leaves_every_earlier_output_as_it_was(
        run_cli, ss_data, one_epoch_ss3, tmp_path, monkeypatch):
    """-o, --probabilities and the --metrics folder's JSON and PNG are renamed together: a Ctrl-C
    while the confusion matrix was drawn (exit 130) had already replaced the predictions, the
    probabilities and the JSON, which then sat beside the PNG of the earlier run (docs: an
    interrupted run leaves existing outputs as they were)."""
    import shutil

    import protrans_cli.heads.fit as fit_module

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(ss_data / "train.csv", other / "test.csv")  # (another set under the same metrics names)
    outputs = ["-o", tmp_path / "q.fa", "--probabilities", tmp_path / "p.h5", "--metrics", tmp_path / "m"]
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "--labels", ss_data / "test.csv",
                *outputs)
    assert r.exit_code == 0, r.stderr

    def files():
        return {str(p.relative_to(tmp_path)): p.read_bytes() for p in [*tmp_path.glob("*.*"), *tmp_path.glob("m/*")]}

    before = files()
    assert sorted(before) == ["m/test.json", "m/test.ss3.png", "p.h5", "q.fa"]

    def stopped(*args, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "save_confusion_png", stopped)
    again = ["predict", one_epoch_ss3, "--embeddings", ss_data / "train.h5", "--labels", other / "test.csv", *outputs]
    r = run_cli(*again)
    assert r.exit_code == 130, r.stderr
    assert files() == before
    assert sorted(os.listdir(tmp_path)) == ["m", "other", "p.h5", "q.fa"]  # (no temporary left)
    assert sorted(os.listdir(tmp_path / "m")) == ["test.json", "test.ss3.png"]
    monkeypatch.undo()
    r = run_cli(*again)
    assert r.exit_code == 0, r.stderr
    after = files()
    assert sorted(after) == sorted(before) and all(after[name] != data for name, data in before.items())


@pytest.mark.parametrize("value", ["0", "-1"])
def test_predict_refuses_a_max_residues_below_one_as_fit_does(run_cli, ss_data, one_epoch_ss3, tmp_path, value):
    out = tmp_path / "p.fa"
    for extra in ([], ["--labels", ss_data / "test.csv"]):
        r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "-o", out, "--max-residues", value,
                    *extra)
        assert r.exit_code == 2 and f"--max-residues must be at least 1, got {value}" in r.stderr, r.stderr
        assert not out.exists()


def test_predict_leaves_the_callers_torch_generator_alone(ss_data, one_epoch_ss3, tmp_path):
    """Loading a head built its layers with a random initialisation (then replaced by the saved
    weights) from the global generator: a notebook's seeded torch RNG moved along with predict."""
    from protrans_cli.heads.predict import predict

    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    predict(one_epoch_ss3, ss_data / "test.h5", tmp_path / "p.fa", threads=1)
    assert torch.equal(torch.rand(4), expected)


def test_fit_leaves_the_callers_torch_generator_alone_and_stays_reproducible(ss_data, tmp_path):
    """fit seeded the global torch generator (and drew from it): a notebook's seeded random numbers
    changed after a fit. Its members still seed themselves, so two fits give the same head."""
    from safetensors.torch import load_file

    config = FitConfig(task="ss3", max_epochs=1, max_residues=300, lr=0.02, threads=1, n_bootstrap=10)
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    fit(config, ss_data / "train.h5", ss_data / "train.csv", tmp_path / "a")
    assert torch.equal(torch.rand(4), expected)
    fit(config, ss_data / "train.h5", ss_data / "train.csv", tmp_path / "b")
    a, b = (load_file(str(tmp_path / h / "weights.safetensors")) for h in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_head_config_nested_too_deeply_is_one_line(run_cli, ss_data, one_epoch_ss3, tmp_path):
    """A shared head whose config.json holds 100,000 nested brackets was a RecursionError traceback."""
    import shutil

    head = tmp_path / "head"
    shutil.copytree(one_epoch_ss3, head)
    (head / "config.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and "head config is unreadable (nested too deeply)" in r.stderr
    assert len(r.stderr.splitlines()) == 1 and not (tmp_path / "p.fa").exists()



@pytest.mark.parametrize("edit, said", [
    (lambda c: c.update(embedding="onehot"), "'embedding' is str, not an object"),
    (lambda c: c.update(layer="last"), "layer 'last' is not a whole number"),
    (lambda c: c["hyperparameters"].update(kernel=-7), "kernel -7 is not a positive whole number"),
    (lambda c: c["task"]["outputs"][0].update(classes=["Helix", "E", "C"]), "per-residue classes are single letters"),
    (lambda c: c["task"]["outputs"][0].update(classes=["H", "E", "H"]), "output 'ss3' names a class twice"),
    (lambda c: c.update(format_version=4), "format_version 4: this protrans reads heads of formats up to 3 (a later "
                                           "protrans wrote it: upgrade protrans)"),
    # (a string was said to be "of a later protrans")
    (lambda c: c.update(format_version="1"), "format_version '1' is not a whole number"),
    (lambda c: c.update(architecture="light-attention"), "architecture 'light-attention' is not one of cnn, linear"),
])
def test_a_hand_edited_head_config_is_one_line(run_cli, ss_data, one_epoch_ss3, tmp_path, edit, said):
    """Values predict reads besides the network (the embedding, the layer, the classes it writes)
    were tracebacks, and classes of several letters wrote garbage letters."""
    import shutil

    head = tmp_path / "head"
    shutil.copytree(one_epoch_ss3, head)
    config = json.loads((head / "config.json").read_text())
    edit(config)
    (head / "config.json").write_text(json.dumps(config))
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and said in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "p.fa").exists()

@pytest.mark.parametrize("name", ["x/y", "a\x00b", "L" * 300, "-"])
def test_a_head_output_name_that_cannot_name_a_file_is_refused(run_cli, loc_data, tmp_path, name):
    """predict --metrics names files after a head's outputs (DIR/<labels>.<output>.png): the output
    name of a shared head's config.json (its weights renamed to match) named a file in a folder
    ("x/y"), was a ValueError traceback (a NUL byte) or "File name too long", each after the JSON
    was written."""
    from safetensors.torch import load_file, save_file

    table = tmp_path / "labels.csv"
    rows = [line[1:].split() for line in (loc_data / "train.fasta").read_text().splitlines() if line[0] == ">"]
    table.write_text("".join(f"{ident},{loc.split('-')[0]}\n" for ident, loc in rows))
    head = tmp_path / "head"
    assert run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", table, "-j", "1",
                   "--max-epochs", "1", "--bootstrap", "10", "--no-plots", "-o", head).exit_code == 0
    config = json.loads((head / "config.json").read_text())
    config["task"]["outputs"][0]["name"] = name
    (head / "config.json").write_text(json.dumps(config))
    weights = load_file(str(head / "weights.safetensors"))
    save_file({k.replace(".label.", f".{name}."): v for k, v in weights.items()}, str(head / "weights.safetensors"),
              metadata={"format": "protrans-head"})
    (tmp_path / "m").mkdir()
    r = run_cli("predict", head, "--embeddings", loc_data / "train.h5", "--labels", table,
                "--metrics", tmp_path / "m", "-o", tmp_path / "p.csv")
    if name == "-":  # (a name a file takes: scored as any)
        assert r.exit_code == 0, r.stderr
        assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["labels.-.png", "labels.json"]
        return
    assert r.exit_code == 1 and "is not a name a file can take" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1 and not any((tmp_path / "m").iterdir()) and not (tmp_path / "p.csv").exists()


def test_the_wrong_file_for_a_head_is_named_with_its_remedy(run_cli, ss_data, one_epoch_ss3, tmp_path):
    # Each named the problem and not what to do: a per-protein file for a per-residue head,
    # embeddings of another model, the FASTA itself given as --embeddings, sequences as labels
    head = one_epoch_ss3
    pp = tmp_path / "pp.h5"
    assert run_cli("embed", ss_data / "test.fa", "-m", "onehot", "--per-protein", "-o", pp).exit_code == 0
    r = run_cli("predict", head, "--embeddings", pp, "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and "has no per_residue embeddings (it holds per_protein): embed without " \
        "--per-protein (or with --per-residue too)" in r.stderr, r.stderr
    r = run_cli("predict", head, "--embeddings", ss_data / "test.fa", "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and "it is a FASTA file: embed it first (protrans embed; predict and knn also take it " \
        "as --fasta)" in r.stderr, r.stderr
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.fa",
                "-o", tmp_path / "h")
    assert r.exit_code == 1 and "if the file holds sequences, not labels, give it to embed" in r.stderr, r.stderr


def test_predict_names_the_proteins_embed_could_not_embed(run_cli, ss_data, one_epoch_ss3, tmp_path):
    head = one_epoch_ss3
    h5 = tmp_path / "skipped.h5"
    r = run_cli("embed", ss_data / "test.fa", "-m", "onehot", "--per-residue", "--max-length", "30",
                "--long-policy", "skip", "-o", h5)
    assert r.exit_code == 0
    with EmbeddingsReader(h5) as reader:
        failed = reader.failed()
    assert failed
    r = run_cli("predict", head, "--embeddings", h5, "-o", tmp_path / "p.fa")
    assert r.exit_code == 0 and f"{len(failed)} protein(s) have no embedding" in r.stderr


def test_predict_and_knn_fasta_say_a_relative_model_directory_an_older_version_recorded(run_cli, one_epoch_ss3,
                                                                                          tmp_path, monkeypatch):
    """Versions before 2026-11-29 recorded `-m run_full` (a model directory) as given: `predict
    --fasta` and `knn --fasta` from another folder looked for a hub model of that name and said to
    `hf download run_full`, not that the head or file had recorded a directory relative to where
    embed ran."""
    import shutil

    import h5py

    head = tmp_path / "head"
    shutil.copytree(one_epoch_ss3, head)
    config = json.loads((head / "config.json").read_text())
    config["embedding"].update(model="run_full", family="bert")
    (head / "config.json").write_text(json.dumps(config))
    from protrans_cli.embed import EmbedOptions, embed

    fasta = tmp_path / "q.fa"
    fasta.write_text(">p\nMKVL\n")
    reference = tmp_path / "ref.h5"
    embed(fasta, reference, EmbedOptions(model="onehot", threads=1, per_residue=False))
    with h5py.File(reference, "r+") as f:
        f.attrs["model"], f.attrs["family"] = "run_full", "bert"
    monkeypatch.chdir(tmp_path)  # (no run_full here)
    said = "records the model as 'run_full', not found from here: a model directory that protrans recorded " \
           "before 2026-11-29 is named relative to the folder embed ran in; run from that folder, or give -m DIR"
    r = run_cli("predict", head, "--fasta", fasta, "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and f"{head} {said}" in r.stderr, r.stderr
    r = run_cli("knn", "--fasta", fasta, "--reference", reference, "-o", tmp_path / "hits.tsv")
    assert r.exit_code == 1 and f"{reference} {said}" in r.stderr, r.stderr


def test_predict_and_knn_fasta_say_no_relative_directory_of_a_catalogued_model(run_cli, one_epoch_ss3, tmp_path,
                                                                               monkeypatch):
    """A head or file recording prot_bert or Rostlab/prot_bert, not in the cache of an offline
    node: the message above (a directory named relative to where embed ran) sent the user to look
    for a folder; a catalogued model is a hub model, and the download hint is the message."""
    import shutil

    import h5py

    from protrans_cli.embed import EmbedOptions, embed

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fasta = tmp_path / "q.fa"
    fasta.write_text(">p\nMKVL\n")
    reference = tmp_path / "ref.h5"
    embed(fasta, reference, EmbedOptions(model="onehot", threads=1, per_residue=False))
    for n, model in enumerate(("prot_bert", "Rostlab/prot_bert")):
        head = tmp_path / f"head{n}"
        shutil.copytree(one_epoch_ss3, head)
        config = json.loads((head / "config.json").read_text())
        config["embedding"].update(model=model, family="bert")
        (head / "config.json").write_text(json.dumps(config))
        with h5py.File(reference, "r+") as f:
            f.attrs["model"], f.attrs["family"] = model, "bert"
        for r in (run_cli("predict", head, "--fasta", fasta, "-o", tmp_path / "p.fa"),
                  run_cli("knn", "--fasta", fasta, "--reference", reference, "-o", tmp_path / "hits.tsv")):
            assert r.exit_code == 1 and f"cannot load model '{model}'" in r.stderr, r.stderr
            assert "relative to the folder" not in r.stderr and "hf download Rostlab/prot_bert" in r.stderr


def _head_of_chunked_embeddings(run_cli, ss_data, tmp_path):
    """An ss3 head fitted on onehot rows embedded with --max-length 30 --long-policy chunk
    --chunk-overlap 4 (what it records for predict --fasta)."""
    h5 = tmp_path / "chunked.h5"
    assert run_cli("embed", ss_data / "train.fa", "-m", "onehot", "--per-residue", "--max-length", "30",
                   "--long-policy", "chunk", "--chunk-overlap", "4", "-o", h5).exit_code == 0
    head = tmp_path / "head"
    fit(FitConfig(task="ss3", max_epochs=1, max_residues=300, threads=1, n_bootstrap=10), h5,
        ss_data / "train.csv", head)
    return head


def test_predict_fasta_chunk_overlap_replaces_the_recorded_one(run_cli, ss_data, tmp_path, monkeypatch):
    # predict --fasta --chunk-overlap N embeds long proteins in windows overlapping by N, not by the
    # head's recorded overlap (a CLI handing the library None, so the recorded one, whatever the
    # user gave, passed every test)
    from protrans_cli.heads import predict as predict_module

    head = _head_of_chunked_embeddings(run_cli, ss_data, tmp_path)
    seen = []
    real = predict_module.recorded_embed_options

    def spy(*args, **kwargs):
        options = real(*args, **kwargs)
        seen.append((options.long_policy, options.max_length, options.chunk_overlap))
        return options

    monkeypatch.setattr(predict_module, "recorded_embed_options", spy)
    for extra, want in (((), 4), (("--chunk-overlap", "8"), 8)):
        r = run_cli("predict", head, "--fasta", ss_data / "test.fa", *extra, "-o", tmp_path / "p.fa")
        assert r.exit_code == 0, r.stderr
        assert seen.pop() == ("chunk", 30, want)
    r = run_cli("predict", head, "--fasta", ss_data / "test.fa", "--chunk-overlap", "30", "-o", tmp_path / "q.fa")
    assert r.exit_code == 2 and "--chunk-overlap" in r.stderr, r.stderr


def test_predict_fasta_embeds_long_proteins_as_the_training_embeddings_were(run_cli, ss_data, tmp_path):
    # A proteome holding one protein beyond the model's limit failed under predict --fasta, and
    # the error's remedy (--long-policy) was no option of predict
    head = _head_of_chunked_embeddings(run_cli, ss_data, tmp_path)
    recorded = json.loads((head / "config.json").read_text())["embedding"]
    assert (recorded["long_policy"], recorded["max_length"], recorded["chunk_overlap"]) == ("chunk", 30, 4)
    r = run_cli("predict", head, "--fasta", ss_data / "test.fa", "-o", tmp_path / "f.fa")
    assert r.exit_code == 0 and "proteins over 30 residues: --long-policy chunk, as in the head's training" in r.stderr
    # onehot windows stitch back to the whole protein: the predictions of the whole embeddings
    assert run_cli("predict", head, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "e.fa").exit_code == 0
    def records(path):
        return sorted(path.read_text().split(">"))

    assert records(tmp_path / "f.fa") == records(tmp_path / "e.fa")
    # the flags replace the recorded policy; without --fasta they are refused
    r = run_cli("predict", head, "--fasta", ss_data / "test.fa", "--long-policy", "skip", "-o", tmp_path / "s.fa")
    assert r.exit_code == 0 and "protein(s) have no embedding" in r.stderr, r.stderr
    # every protein skipped: the same warning and an empty output (it was "holds no per_residue
    # embeddings", exit 1, with no word of the skipped proteins)
    r = run_cli("predict", head, "--fasta", ss_data / "test.fa", "--long-policy", "skip", "--max-length", "2",
                "-o", tmp_path / "none.fa")
    assert r.exit_code == 0 and "20 protein(s) have no embedding" in r.stderr, r.stderr
    assert (tmp_path / "none.fa").read_text() == ""
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "--max-length", "30", "-o", tmp_path / "x.fa")
    assert r.exit_code == 2 and "--max-length goes with --fasta" in r.stderr


def _fit_stopped_after_an_epoch(monkeypatch, cfg: dict, embeddings, labels, out) -> None:
    """Run fit until its first epoch's state is saved, then stop it as a Ctrl-C there would."""
    from protrans_cli.heads.fit import FitState

    save_epoch = FitState.save_epoch

    def save_then_stop(self, current):
        save_epoch(self, current)
        raise KeyboardInterrupt

    monkeypatch.setattr(FitState, "save_epoch", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        fit(FitConfig(**cfg), embeddings, labels, out)
    monkeypatch.setattr(FitState, "save_epoch", save_epoch)


def test_resume_refuses_labels_rewritten_at_the_same_path(ss_data, tmp_path, monkeypatch):
    import shutil

    labels = tmp_path / "train.csv"
    shutil.copy(ss_data / "train.csv", labels)
    cfg = dict(task="ss3", max_epochs=3, max_residues=300, lr=0.02, threads=1, n_bootstrap=10)
    _fit_stopped_after_an_epoch(monkeypatch, cfg, ss_data / "train.h5", labels, tmp_path / "h")
    text = labels.read_text()
    labels.write_text(text.replace(" H ", " E "))  # other labels, same file name
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))
    with pytest.raises(UsageError, match=r"other settings or inputs \(labels_file\)"):
        fit(FitConfig(**cfg, resume=True), ss_data / "train.h5", labels, tmp_path / "h")


def test_resume_of_a_state_saved_before_input_files_were_recorded(ss_data, tmp_path, monkeypatch, capsys):
    """Versions before 2026-11-29 recorded the inputs by name only: their interrupted fit was
    refused "made with other settings or inputs (embeddings_file, labels_file, test_files)"
    after the same command. It resumes (with a warning) to the head an uninterrupted fit gives."""
    import io

    from safetensors.torch import load_file

    from protrans_cli.heads.fit import FitState, partial_path

    cfg = dict(task="ss3", max_epochs=2, max_residues=300, lr=0.02, threads=1, n_bootstrap=10)
    fit(FitConfig(**cfg), ss_data / "train.h5", ss_data / "train.csv", tmp_path / "whole")
    _fit_stopped_after_an_epoch(monkeypatch, cfg, ss_data / "train.h5", ss_data / "train.csv", tmp_path / "h")
    path = partial_path(tmp_path / "h") / FitState.FILE
    header, _, data = path.read_bytes().partition(b"\n")
    assert header.startswith(FitState.MAGIC)
    state = torch.load(io.BytesIO(data), weights_only=True)
    for key in ("embeddings_file", "labels_file", "valid_files", "test_files", "mask_file"):
        del state["fingerprint"][key]
    torch.save(state, path)  # as those versions wrote it: the torch file alone
    capsys.readouterr()
    fit(FitConfig(**cfg, resume=True), ss_data / "train.h5", ss_data / "train.csv", tmp_path / "h")
    assert "saved by an earlier version, which recorded the input files by name only" in capsys.readouterr().err
    whole, resumed = load_file(tmp_path / "whole" / "weights.safetensors"), load_file(tmp_path / "h" / "weights.safetensors")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_scale_saved_by_earlier_versions_loads_as_standardise_with_gives_it():
    """Before 2026-11-29 a feature constant in training was saved with scale 1e-6 (a query that
    differs there reached the network a million times too large); heads and interrupted fits of
    those versions load with scale 1, as standardise_with gives it now."""
    from protrans_cli.heads.fnn import ProteinFNN

    x = torch.tensor([[0.1, 0.0, 0.5], [0.3, 0.0, 0.5], [0.2, 0.0, 0.5]])
    now = ProteinFNN(3, {"loc": 2})
    now.standardise_with(x)
    old = {k: v.clone() for k, v in now.state_dict().items()}
    old["scale"] = x.std(dim=0).clamp_min(1e-6)  # what those versions saved
    loaded = ProteinFNN(3, {"loc": 2})
    loaded.load_state_dict(old)
    assert torch.equal(loaded.scale, now.scale) and loaded.scale.tolist()[1:] == [1.0, 1.0]


def test_a_single_class_error_names_the_label_file(run_cli, loc_data, tmp_path):
    table = tmp_path / "one.csv"
    rows = [line[1:].split()[0] for line in (loc_data / "train.fasta").read_text().splitlines() if line[0] == ">"]
    table.write_text("".join(f"{ident},A\n" for ident in rows))
    r = run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", table, "-j", "1",
                "-o", tmp_path / "h")
    assert r.exit_code == 1 and f"{table}: the training labels hold 1 class(es)" in r.stderr


def test_labels_split_that_no_record_is_in_is_an_error(run_cli, ss_data, tmp_path):
    out = tmp_path / "s.fa"
    r = run_cli("labels", ss_data / "train.csv", "--split", "test", "-o", out)
    assert r.exit_code == 1 and "--split test: no record is in that split (it assigns no record to a split)" in r.stderr
    assert not out.exists()
    assert run_cli("labels", ss_data / "train.csv", "--split", "train", "-o", out).exit_code == 0


@pytest.mark.parametrize("cache_gb", ["2", "0"])  # held in memory, streamed from the file
def test_nan_in_an_embedding_is_one_line_naming_the_file_and_protein(run_cli, ss_data, tmp_path, cache_gb):
    """Embeddings from another tool (or a float16 overflow) with NaN made the loss NaN for the
    whole run, and predict output a state for every NaN residue."""
    import shutil

    bad = tmp_path / "bad.h5"
    shutil.copy(ss_data / "train.h5", bad)
    with EmbeddingsReader(bad) as reader:
        victim = reader.ids()[7]
    with h5py.File(bad, "a") as f:
        group = f["per_residue"]
        key = next(k for k in group if group[k].attrs["id"] == victim)
        rows = group[key][()]
        rows[2, 3] = np.nan
        group[key][...] = rows
    r = run_cli("fit", "ss3", "--embeddings", bad, "--labels", ss_data / "train.csv", "--max-epochs", "1",
                "--cache-gb", cache_gb, *FAST, "-o", tmp_path / "head")
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {bad}, record '{victim}': embedding holds NaN or infinity (1 of its "
        f"{rows.size} numbers); leave the protein out or embed it again")
    assert not (tmp_path / "head").exists()
    if cache_gb == "2":
        head = tmp_path / "good"
        assert run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                       "--max-epochs", "1", *FAST, "-o", head).exit_code == 0
        r = run_cli("predict", head, "--embeddings", bad, "-o", tmp_path / "pred.fa")
        assert r.exit_code == 1 and f"record '{victim}': embedding holds NaN" in r.stderr
        assert not (tmp_path / "pred.fa").exists()


def test_infinity_in_a_per_protein_embedding_names_the_protein(tmp_path):
    from protrans_cli.errors import InputError
    from protrans_cli.heads.data import Matched, ProteinData
    from protrans_cli.io.h5 import EmbeddingsWriter

    path = tmp_path / "pp.h5"
    with EmbeddingsWriter(path, kinds=("per_protein",)) as w:
        w.write("a", "a", "MKV", per_protein=np.ones(4))
        w.write("b", "b", "MKVL", per_protein=np.array([1.0, np.inf, 0.0, 2.0]))
    with EmbeddingsReader(path) as reader:
        keys = {reader._group("per_protein")[k].attrs["id"]: k for k in reader._group("per_protein")}
    items = [Matched(id=i, key=keys[i], length=n, targets={}) for i, n in (("a", 3), ("b", 4))]
    assert ProteinData(str(path), items[:1]).x.shape == (1, 4)
    with pytest.raises(InputError, match=r"record 'b': embedding holds NaN or infinity \(1 of its 4 numbers\)"):
        ProteinData(str(path), items)


def test_a_layer_past_the_layer_axis_of_a_stacked_file_that_records_no_layers_is_refused(tmp_path):
    # the number indexes the layer axis there (-3 to 2 of three layers): past it, the file is named
    from protrans_cli.errors import InputError
    from protrans_cli.heads.data import Matched, ProteinData
    from protrans_cli.io.h5 import EmbeddingsWriter

    path = tmp_path / "st.h5"
    with EmbeddingsWriter(path, kinds=("per_protein",), layout="stacked", attrs={"layers": [-1, -2, -3]}) as w:
        for ident in "ab":
            w.write(ident, ident, "MKV", per_protein=np.stack([np.full(4, k, np.float32) for k in (1.0, 2.0, 3.0)]))
    with h5py.File(path, "a") as f:
        del f.attrs["layers"]
    items = [Matched(ident, ident, 3, {}) for ident in "ab"]
    np.testing.assert_array_equal(ProteinData(str(path), items, layer=1).x, np.full((2, 4), 2.0))
    for layer in (3, -4):
        with pytest.raises(InputError, match=r"st.h5: holds 3 layers on the layer axis of its per_protein array \(a "
                                             rf"layer indexes that axis, -3 to 2\), not layer {layer}$"):
            ProteinData(str(path), items, layer=layer)


def test_nan_in_a_residue_row_is_refused_where_the_proteins_hold_as_many_residues_as_there_are_proteins(tmp_path):
    # an empty protein beside one of two residues: 2 rows for 2 proteins were taken for one row a
    # protein, so only each protein's first row was checked and a NaN in the second was predicted on
    from protrans_cli.errors import InputError
    from protrans_cli.heads.data import Matched, ResidueData

    path = tmp_path / "e.h5"
    rows = np.ones((2, 4), np.float32)
    rows[1, 2] = np.nan
    with h5py.File(path, "w") as f:
        f.attrs["layout"], f.attrs["kinds"] = "grouped", ["per_residue"]
        f.create_group("per_residue")["a"] = np.zeros((0, 4), np.float32)
        f["per_residue"]["b"] = rows
    items = [Matched(i, i, n, {"ss3": np.zeros(n, np.int64)}) for i, n in (("a", 0), ("b", 2))]
    with pytest.raises(InputError, match=r"record 'b': embedding holds NaN or infinity \(1 of its 8 numbers\)"):
        ResidueData(str(path), items)
    with pytest.raises(InputError, match=r"record 'b': embedding holds NaN or infinity \(1 of its 8 numbers\)"):
        list(ResidueData(str(path), items, cache_bytes=0).batches())


@pytest.mark.parametrize("args,message", [
    (["--lr", "nan"], "--lr must be positive, got nan"), (["--lr", "0"], "--lr must be positive, got 0.0"),
    (["--lr", "inf"], "--lr must be positive, got inf"),
    (["--weight-decay", "-1"], "--weight-decay must be 0 or more"),
    (["--dropout", "1"], "--dropout must be in [0, 1), got 1.0"), (["--dropout", "nan"], "--dropout must be in"),
    (["--hidden", "0"], "--hidden must be at least 1"), (["--kernel", "6"], "--kernel must be odd"),
    (["--kernel", "-1"], "--kernel must be at least 1"), (["--seed", "-1"], "--seed must be at least 0, got -1"),
    (["--seed", str(2**64)], "--seed must be at most 18446744073709551615 (2**64 - 1: torch's seeds are unsigned "
     "64-bit), got 18446744073709551616"),
    (["--seed", str(2**64 - 1), "--ensemble", "2"], "--seed must be at most 18446744073709551614 (2**64 - 2 with "
     "--ensemble 2: member k seeds seed + k), got 18446744073709551615"),
    (["--cache-gb", "nan"], "--cache-gb must be a size in GB"), (["--bootstrap", "0"], "--bootstrap must be at least 10"),
    (["--bootstrap", "9"], "--bootstrap must be at least 10 (a 95% interval needs resamples beyond its 2.5% tails"),
    (["--mask", "-"], "--mask cannot be stdin ('-'): it is read for each label file; give it as a file"),
])
def test_fit_settings_out_of_range_are_usage_errors_before_any_work(run_cli, ss_data, tmp_path, args, message):
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv", *args,
                "-o", tmp_path / "h")
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("protrans: error: ") and message in lines[0], \
        r.stderr
    assert not (tmp_path / "h").exists()


def test_resume_from_another_folder_names_the_same_inputs(ss_data, tmp_path, monkeypatch):
    """The fingerprint held the paths as typed: the same inputs named from another folder
    (relative paths, a link) refused `--resume` as "other settings or inputs"."""
    work, other = tmp_path / "work", tmp_path / "other"
    work.mkdir()
    other.mkdir()
    (other / "emb.h5").symlink_to(ss_data / "train.h5")
    cfg = dict(task="ss3", max_epochs=2, max_residues=300, lr=0.02, threads=1, n_bootstrap=10)
    monkeypatch.chdir(work)
    _fit_stopped_after_an_epoch(monkeypatch, cfg, ss_data / "train.h5", os.path.relpath(ss_data / "train.csv"), "h")
    monkeypatch.chdir(other)
    result = fit(FitConfig(**cfg, resume=True), "emb.h5", ss_data / "train.csv", work / "h")
    assert (work / "h" / "config.json").exists() and result is not None


def test_resume_with_the_inputs_and_the_head_folder_moved(ss_data, tmp_path, monkeypatch):
    """The interrupted fit's folder and its inputs moved together (a project folder renamed, copied
    with its times to another cluster): `--resume` with the new paths was refused "made with other
    settings or inputs (embeddings, labels)" although the files were the same. A file of the same
    size and time at another path is the same file; one rewritten there is still refused."""
    import shutil

    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    for name in ("train.h5", "train.csv"):
        shutil.copy2(ss_data / name, old / name)
    cfg = dict(task="ss3", max_epochs=2, max_residues=300, lr=0.02, threads=1, n_bootstrap=10)
    _fit_stopped_after_an_epoch(monkeypatch, cfg, old / "train.h5", old / "train.csv", old / "h")
    old.rename(new)
    labels = new / "train.csv"
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns + 10**9))  # rewritten: refused
    with pytest.raises(UsageError, match=r"other settings or inputs \(labels, labels_file\)"):
        fit(FitConfig(**cfg, resume=True), new / "train.h5", labels, new / "h")
    os.utime(labels, ns=(labels.stat().st_atime_ns, labels.stat().st_mtime_ns - 10**9))
    result = fit(FitConfig(**cfg, resume=True), new / "train.h5", labels, new / "h")
    assert (new / "h" / "config.json").exists() and result is not None


def test_predict_reads_and_matches_its_labels_before_writing_any_prediction(run_cli, ss_data, one_epoch_ss3, tmp_path):
    """A bad --labels (a missing mask column, labels of other proteins) failed only after the
    whole prediction run, with exit 1 and the previous -o replaced by the new predictions."""
    out = tmp_path / "p.fa"
    out.write_text("earlier\n")
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "--labels", ss_data / "test.csv",
                "--mask-column", "cb513_mask", "-o", out)
    assert r.exit_code == 1 and "has no mask column cb513_mask" in r.stderr and "wrote predictions" not in r.stderr
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "--labels", ss_data / "train.csv", "-o", out)
    assert r.exit_code == 1 and "do not match the embeddings" in r.stderr
    assert out.read_text() == "earlier\n"
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "--labels", ss_data / "test.csv", "-o", out)
    assert r.exit_code == 0 and out.read_text().count(">") == 20 and "test ss3: Q3" in r.stderr


def test_evaluation_proteins_that_are_training_proteins_are_named(run_cli, ss_data, tmp_path):
    # NetSurfP's TS115 and CASP12 share four proteins: validated on them, a head reported scores
    # that are not independent of training, without a word
    import dataclasses

    from protrans_cli.heads.data import TrainingSet, load_data
    from protrans_cli.heads.labels import read_labels

    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--test", ss_data / "train.h5", ss_data / "train.csv", "--test", ss_data / "test.h5",
                ss_data / "test.csv", "--max-epochs", "1", "--bootstrap", "10", "-j", "1", "-o", tmp_path / "h")
    assert r.exit_code == 0, r.stderr
    # (7 of them held out for validation: the other 63 were trained on)
    assert "train: 63 of its 70 proteins are in the training set too (63 by id: " in r.stderr, r.stderr
    assert r.stderr.count("are in the training set too") == 1  # not the independent test set
    # the same sequence under another id is found by the checksum embed stored
    from protrans_cli.heads.tasks import TASKS

    items = load_data(ss_data / "train.h5", read_labels(ss_data / "train.csv"), TASKS["ss3"])[0].items
    renamed = [dataclasses.replace(m, id=f"other{i}") for i, m in enumerate(items[:5])]
    same_id, same_sequence = TrainingSet(items).overlap(renamed)
    assert same_id == [] and same_sequence == [f"other{i}" for i in range(5)]


def test_predict_scores_with_the_mask_columns_the_head_was_fit_with(run_cli, ss_data, tmp_path):
    # `fit --mask-column disorder --mask-column cb513_mask` and then `predict --labels` scored on
    # disorder alone: another number of positions than fit --test, without a word
    import re as regex

    from protrans_cli.heads.labels import read_labels

    def with_second_mask(src, dst):
        rng = np.random.default_rng(1)
        with open(dst, "w", newline="") as fh:
            fh.write("input, dssp3, dssp8, disorder, cb513_mask\n")
            writer = csv.writer(fh)
            for record in read_labels(src).records:
                n = len(record.labels["ss3"])
                writer.writerow([" ".join(record.sequence), " ".join(record.labels["ss3"]), " ".join(record.labels["ss8"]),
                                 " ".join(["1.0"] * n), " ".join(rng.choice(["0.0", "1.0"], n))])

    with_second_mask(ss_data / "train.csv", tmp_path / "train.csv")
    with_second_mask(ss_data / "test.csv", tmp_path / "test.csv")
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", tmp_path / "train.csv",
                "--mask-column", "disorder", "--mask-column", "cb513_mask", "--test", ss_data / "test.h5",
                tmp_path / "test.csv", "--max-epochs", "1", "--bootstrap", "10", "-j", "1", "-o", tmp_path / "h")
    assert r.exit_code == 0, r.stderr
    fitted = regex.search(r"test ss3: Q3 .*?([\d,]+) positions in", r.stderr).group(1)
    r = run_cli("predict", tmp_path / "h", "--embeddings", ss_data / "test.h5", "--labels", tmp_path / "test.csv")
    assert r.exit_code == 0 and regex.search(r"test ss3: Q3 .*?([\d,]+) positions in", r.stderr).group(1) == fitted
    r = run_cli("predict", tmp_path / "h", "--embeddings", ss_data / "test.h5", "--labels", tmp_path / "test.csv",
                "--mask-column", "disorder")
    assert r.exit_code == 0 and "scoring with --mask-column disorder; the head was fit with disorder cb513_mask" \
        in r.stderr
    assert int(regex.search(r"test ss3: Q3 .*?([\d,]+) positions in", r.stderr).group(1).replace(",", "")) \
        > int(fitted.replace(",", ""))


def test_predict_scores_the_test_records_of_a_file_that_declares_splits(run_cli, ss_data, one_epoch_ss3, tmp_path):
    """As a `fit --test` file: FLIP's sampled.fasta scored on embeddings of its SET=test records
    (what `labels --split test` writes) failed, its train and validation records having none."""
    from protrans_cli.heads.labels import read_labels

    flip = tmp_path / "sampled.fasta"
    with flip.open("w") as fh:
        for i, record in enumerate(read_labels(ss_data / "test.csv").records):
            fh.write(f">{record.id} SET=test VALIDATION=False\n{record.labels['ss3']}\n")
            fh.write(f">other{i} SET=train VALIDATION={i % 2 == 0}\n{record.labels['ss3']}\n")
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "--labels", flip,
                "--metrics", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert "scoring its 20 test records (its other 20 are train, valid)" in r.stderr
    r2 = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "--labels", ss_data / "test.csv",
                 "--metrics", tmp_path / "m2")
    assert r2.exit_code == 0, r2.stderr
    flip_ss3 = json.loads((tmp_path / "m" / "sampled.json").read_text())["outputs"]["ss3"]
    csv_ss3 = json.loads((tmp_path / "m2" / "test.json").read_text())["outputs"]["ss3"]
    assert (flip_ss3["n"], flip_ss3["accuracy"]) == (csv_ss3["n"], csv_ss3["accuracy"])
    # a file of train and validation records but no test ones: every record scored, and said
    no_test = tmp_path / "no_test.fasta"
    no_test.write_text(flip.read_text().replace("SET=test", "SET=train"))
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "--labels", no_test, "--only-embedded")
    assert r.exit_code == 0, r.stderr
    assert "assigns its records to train, valid and none to test: they are scored whatever their split" in r.stderr


def test_proteins_embed_truncated_are_named_by_predict_and_by_label_matching(run_cli, ss_data, one_epoch_ss3, tmp_path):
    """`embed --long-policy truncate` keeps the first residues: predict wrote their states for the
    prefix without a word, and --labels called them proteins whose sequence differs."""
    h5 = tmp_path / "cut.h5"
    assert run_cli("embed", ss_data / "test.fa", "-m", "onehot", "--per-residue", "--max-length", "30",
                   "--long-policy", "truncate", "-o", h5).exit_code == 0
    with EmbeddingsReader(h5) as reader:
        group = reader._group("per_residue")
        cut = sorted(str(group[k].attrs["id"]) for k in group if "truncated_from" in group[k].attrs)
    assert cut
    r = run_cli("predict", one_epoch_ss3, "--embeddings", h5, "-o", tmp_path / "p.fa")
    assert r.exit_code == 0 and f"{len(cut)} protein(s) were truncated by embed" in r.stderr
    assert f"{cut[0]} (30 of " in r.stderr
    r = run_cli("predict", one_epoch_ss3, "--embeddings", h5, "--labels", ss_data / "test.csv")
    assert r.exit_code == 1 and f"{len(cut)} that embed truncated" in r.stderr and "sequence differs" not in r.stderr


def test_per_protein_embeddings_of_several_layers_match_their_labels(run_cli, loc_data, tmp_path):
    """A per-protein array of several layers is (n_layers, D): its length is its `length`
    attribute, not its first axis (label matching took the layer count for the protein's length
    and refused every record that carries a sequence)."""
    import shutil

    h5 = tmp_path / "two.h5"
    shutil.copy(loc_data / "train.h5", h5)
    with h5py.File(h5, "r+") as f:  # as `embed --layer -2 --layer -1` writes them (one-hot twice)
        f.attrs["layers"], f.attrs["num_hidden_states"] = [-2, -1], 2
        group = f["per_protein"]
        for key in list(group):
            attrs, rows = dict(group[key].attrs), group[key][()]
            del group[key]
            group.create_dataset(key, data=np.stack([rows, rows])).attrs.update(attrs)
        assert group["train0"].shape == (2, 21) and group["train0"].attrs["length"] == 60
    r = run_cli("fit", "loc", "--embeddings", h5, "--labels", loc_data / "train.fasta", "--max-epochs", "1",
                "-j", "1", "--bootstrap", "10", "-o", tmp_path / "h")
    assert r.exit_code == 0, r.stderr


def test_a_per_protein_head_takes_one_thread_unless_told(loc_data, ss_data, tmp_path, monkeypatch):
    """A per-protein head's operations are a few thousand numbers: on two threads with the
    machine's other core busy an epoch of DeepLoc took 1.9-2.2 s, on one 0.04 s. One thread is
    its default now; -j and PROTRANS_THREADS still decide, and a per-residue head keeps min(cores, 4)."""
    from protrans_cli.threads import available_cores, resolve_threads

    assert resolve_threads(None, small_work=True) == 1 and resolve_threads(3, small_work=True) == 3
    set_to = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (set_to.append(n), real(n)))
    common = dict(max_epochs=1, n_bootstrap=10)
    fit(FitConfig(task="loc", **common), loc_data / "train.h5", loc_data / "train.fasta", tmp_path / "a")
    fit(FitConfig(task="loc", threads=2, **common), loc_data / "train.h5", loc_data / "train.fasta", tmp_path / "b")
    monkeypatch.setenv("PROTRANS_THREADS", "2")
    fit(FitConfig(task="loc", **common), loc_data / "train.h5", loc_data / "train.fasta", tmp_path / "c")
    monkeypatch.delenv("PROTRANS_THREADS")
    fit(FitConfig(task="ss3", max_residues=300, **common), ss_data / "train.h5", ss_data / "train.csv", tmp_path / "d")
    # (each call puts the caller's count back as it ends: every second value)
    assert set_to[::2] == [1, 2, 2, min(available_cores(), 4)]


def test_a_fasta_of_sequences_given_as_loc_labels_says_so(run_cli, loc_data, tmp_path):
    """`protrans labels` writes the FASTA that embed reads; given to `fit loc --labels`, each whole
    sequence was printed as an unknown location, with no word of the mix-up (ss3 already said)."""
    sequences = tmp_path / "seqs.fa"
    assert run_cli("labels", loc_data / "test.fasta", "-o", sequences).exit_code == 0
    r = run_cli("fit", "loc", "--embeddings", loc_data / "test.h5", "--labels", sequences, "-o", tmp_path / "h")
    assert r.exit_code == 1, r.stderr
    message = r.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert message.startswith(f"protrans: error: {sequences}: holds sequences, not labels: the loc task takes one "
                              "label a protein") and sequences.read_text().split()[1] not in message
    assert message.endswith("if the file holds sequences, give it to embed, and the labels to --labels")


def test_a_label_file_without_a_usable_label_says_so(run_cli, loc_data, tmp_path):
    """A --valid (or test split) whose every target is empty or nan: "no label record matched an
    embedding", when every record matched and none had a label."""
    from protrans_cli.heads.labels import read_labels

    ids = [r.id for r in read_labels(loc_data / "test.fasta").records]
    train = tmp_path / "train.csv"
    train.write_text("".join(f"{i},{n % 7}.5\n" for n, i in enumerate(ids[:30])))
    valid = tmp_path / "valid.csv"
    valid.write_text("".join(f"{i},{'nan' if n % 2 else ''}\n" for n, i in enumerate(ids[30:])))
    r = run_cli("fit", "value", "--embeddings", loc_data / "test.h5", "--labels", train, "--valid",
                loc_data / "test.h5", valid, "--no-plots", "-o", tmp_path / "h")
    assert r.exit_code == 1 and not (tmp_path / "h").exists(), r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"protrans: error: {valid}: none of its {len(ids) - 30} label record(s) gives a usable label (empty or "
        "nan, every residue masked, or a dual location under --dual skip): nothing to train on or score")


def test_per_residue_labels_given_to_a_per_protein_task_are_refused(run_cli, ss_data, tmp_path):
    """FLIP's secondary-structure labels (or biotrainer's residue_to_class file) given to a
    per-protein task: `fit protein` made each protein's string of states a class of its own and
    exited 0 (its held-out proteins scored 0), `fit value` printed a whole string as "not a
    number", `predict --labels` likewise. One line names the file and the mix-up, exit 1."""
    from protrans_cli.heads.labels import read_labels

    records = read_labels(ss_data / "train.csv").records
    flip = tmp_path / "ss.fa"
    flip.write_text("".join(f">{r.id} SET=train VALIDATION=False\n{r.labels['ss3']}\n" for r in records))
    bio = tmp_path / "bio.fa"
    bio.write_text("".join(f">{r.id} TARGET={r.labels['ss3']} SET=train\n{r.sequence}\n" for r in records))
    for task, labels in (("protein", flip), ("value", flip), ("protein", bio)):
        r = run_cli("fit", task, "--embeddings", ss_data / "train.h5", "--labels", labels, "--max-epochs", "1",
                    "--no-plots", "-o", tmp_path / "h")
        assert r.exit_code == 1 and not (tmp_path / "h").exists(), r.stderr
        fmt = "flip" if labels == flip else "biotrainer"
        assert r.stderr == (f"protrans: error: {labels}: holds per-residue labels ({fmt}: one letter a residue); the "
                            f"{task} task takes one label a protein (an id,label table, a FLIP CSV, a biotrainer "
                            "TARGET= file, a DeepLoc FASTA): per-residue labels are for ss3, ss8, ss3+ss8 or "
                            "residue\n"), r.stderr
    # (the same labels train an ss3 head)
    assert run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", flip, "--max-epochs", "1",
                   "--no-plots", "-o", tmp_path / "ss3").exit_code == 0


def test_a_per_protein_head_takes_proteins_embed_truncated(run_cli, loc_data, tmp_path):
    """A localization label is one per protein: `fit loc` refused every protein that `embed
    --long-policy truncate` cut short (13% of a DeepLoc set at --max-length 1000), the usual
    remedy for proteins over a model's limit. They are matched now, with a note; a label record
    whose sequence is not the one embedded (its kept prefix) is still refused."""
    h5 = tmp_path / "cut.h5"
    assert run_cli("embed", loc_data / "train.fasta", "-m", "onehot", "--per-protein", "--max-length", "50",
                   "--long-policy", "truncate", "-o", h5).exit_code == 0
    r = run_cli("fit", "loc", "--embeddings", h5, "--labels", loc_data / "train.fasta", "--max-epochs", "1",
                "-j", "1", "--bootstrap", "10", "-o", tmp_path / "head")
    assert r.exit_code == 0, r.stderr
    assert "150 labelled protein(s) were truncated by embed (--long-policy truncate)" in r.stderr
    summary = json.loads((tmp_path / "head" / "metrics.json").read_text())
    assert summary["valid"]["loc"]["n"] == 15  # a tenth of the 150, every one matched
    text = (loc_data / "train.fasta").read_text().splitlines()
    text[1] = "W" + text[1][1:]  # train0's first residue: inside the kept 50
    text[3] = text[3][:55] + "W" + text[3][56:]  # train1's 56th: beyond them, as embedded
    changed = tmp_path / "changed.fasta"
    changed.write_text("\n".join(text) + "\n")
    r = run_cli("fit", "loc", "--embeddings", h5, "--labels", changed, "--max-epochs", "1", "-j", "1",
                "-o", tmp_path / "head2")
    assert r.exit_code == 1 and "1 whose sequence differs from the embedded one (train0)" in r.stderr, r.stderr


def test_a_head_fit_on_a_file_of_one_other_layer_predicts_from_that_layer_only(run_cli, ss_data, tmp_path):
    """fit's default --layer -1 on a file of `embed --layer -2` reads layer -2, but the head
    recorded -1: predict took a file of the last layer (same model, same width) without a word,
    and `predict --fasta` embedded the last layer."""
    import shutil

    files = {}
    for name, layers in (("train", [-2]), ("test", [-2]), ("last", [-1])):
        files[name] = tmp_path / f"{name}.h5"
        shutil.copy(ss_data / ("train.h5" if name == "train" else "test.h5"), files[name])
        with h5py.File(files[name], "r+") as f:
            f.attrs["layers"] = layers
    head = tmp_path / "ss3"
    assert run_cli("fit", "ss3", "--embeddings", files["train"], "--labels", ss_data / "train.csv",
                   "--max-epochs", "1", *FAST, "-o", head).exit_code == 0
    config = json.loads((head / "config.json").read_text())
    assert config["layer"] == -2
    assert run_cli("predict", head, "--embeddings", files["test"], "-o", tmp_path / "p.fa").exit_code == 0
    r = run_cli("predict", head, "--embeddings", files["last"], "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and "not layer -2 (the head was trained on layer -2: embed with --layer -2)" in r.stderr
    config["layer"] = -1  # a head written before fit recorded the layer it read
    (head / "config.json").write_text(json.dumps(config))
    r = run_cli("predict", head, "--embeddings", files["last"], "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and "not layer -2" in r.stderr


def test_curves_leave_out_an_output_the_validation_set_has_no_label_for(tmp_path):
    """A validation set whose membrane labels are all U (unknown) has no `valid_membrane`: the plot
    at the end of fit raised KeyError, after the whole training, and no head was written."""
    from protrans_cli.heads.fit import _plot_curves
    from protrans_cli.heads.tasks import get_task

    history = [{"member": 0, "epoch": e, "train_loss": 1.0 / e, "valid_loss": 1.2 / e, "valid_loc": 0.3 * e}
               for e in (1, 2)]
    _plot_curves(history, get_task("loc"), tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_standardisation_keeps_constant_features_unscaled_and_one_protein_finite():
    """A feature constant in training (a residue no training protein has) was divided by 1e-6, so
    a query protein with it reached the network a million times too large; one training protein
    gave NaN deviations and a head whose every output was NaN, written without a word."""
    from protrans_cli.heads.fnn import ProteinFNN

    head = ProteinFNN(3, {"loc": 2})
    x = torch.tensor([[0.1, 0.0, 1.0], [0.3, 0.0, 3.0]])
    head.standardise_with(x)
    assert head.scale.tolist() == pytest.approx([x[:, 0].std().item(), 1.0, x[:, 2].std().item()])
    query = torch.tensor([[0.2, 0.05, 2.0]])  # the second feature, never seen in training
    assert ((query - head.shift) / head.scale).abs().max() < 1
    head.standardise_with(x[:1])
    assert torch.isfinite(head.scale).all() and head.scale.tolist() == [1.0, 1.0, 1.0]
    assert torch.isfinite(head(query)["loc"]).all()


def _foreign_copy(src, out, key=lambda ident, ds: ident, **attrs):
    """`src` (an embed output, flat or grouped, per residue) rewritten as another tool writes
    it: one dataset per protein at the root under `key(id, dataset)`, float32, no file attributes;
    `attrs` maps a dataset attribute name to `f(id, dataset)`."""
    with EmbeddingsReader(src) as r, h5py.File(out, "w") as f:
        for ident, array, ds_attrs in r.items("per_residue"):
            d = f.create_dataset(key(ident, ds_attrs), data=np.asarray(array, np.float32))
            for name, value in attrs.items():
                d.attrs[name] = value(ident, ds_attrs)
    return out


def test_predict_on_a_flat_file_with_nested_groups_warns_and_predicts_the_rest(run_cli, ss_data, one_epoch_ss3, tmp_path):
    # `f.create_dataset("grp/" + id)` nests: predict stopped with a traceback at the group.
    with EmbeddingsReader(ss_data / "test.h5") as reader:
        nested = sorted(reader.ids())[:2]
    h5 = _foreign_copy(ss_data / "test.h5", tmp_path / "nested.h5",
                       key=lambda ident, _: ("0grp/" + ident) if ident in nested else ident)
    with h5py.File(h5, "r") as f:
        flat = [k for k in f if k != "0grp"]
    r = run_cli("predict", one_epoch_ss3, "--embeddings", h5, "-o", tmp_path / "p.fa")
    assert r.exit_code == 0, r.stderr
    assert "1 group(s) at the top of this flat file are not read" in r.stderr and "0grp" in r.stderr
    assert (tmp_path / "p.fa").read_text().count(">") == len(flat)


def _bio_embeddings_copy(ss_data, out, original_id):
    """ss_data's test embeddings as bio_embeddings writes them: keys md5(sequence), the header
    line in `original_id`."""
    import hashlib

    from protrans_cli.io.fasta import read_fasta

    seqs = {r.id: r.sequence for r in read_fasta(ss_data / "test.fa")}
    return _foreign_copy(ss_data / "test.h5", out, key=lambda ident, _: hashlib.md5(seqs[ident].encode()).hexdigest(),
                         original_id=lambda ident, _: original_id(ident))


def test_bio_embeddings_files_predict_under_and_match_by_their_original_ids(run_cli, ss_data, one_epoch_ss3, tmp_path,
                                                                            capsys):
    # Their md5 keys were taken for ids: predictions were written under them, labels by id never matched.
    import dataclasses

    from protrans_cli.heads.data import match_labels
    from protrans_cli.heads.labels import LabelSet, read_labels
    from protrans_cli.heads.tasks import get_task

    h5 = _bio_embeddings_copy(ss_data, tmp_path / "embeddings_file.h5", lambda ident: f"{ident} from a header")
    r = run_cli("predict", one_epoch_ss3, "--embeddings", h5, "-o", tmp_path / "p.fa")
    assert r.exit_code == 0, r.stderr
    with EmbeddingsReader(ss_data / "test.h5") as reader:
        ids = set(reader.ids())
    written = {line[1:] for line in (tmp_path / "p.fa").read_text().splitlines() if line.startswith(">")}
    assert written == ids
    labels = read_labels(ss_data / "test.csv")
    by_id = LabelSet(labels.path, labels.format, [dataclasses.replace(r, sequence=None) for r in labels.records])
    with EmbeddingsReader(h5) as reader, EmbeddingsReader(ss_data / "test.h5") as embedded:
        first = sorted(ids)[0]
        np.testing.assert_array_equal(reader.get(first), embedded.get(first))
        assert sorted(reader.ids()) == sorted(ids)
        matched, report = match_labels(by_id, reader, get_task("ss3"))
        assert report.matched == len(labels.records) and report.by_checksum == 0
        # proteins without a label are named by their original ids, not by md5 keys
        _, partial = match_labels(LabelSet(labels.path, labels.format, by_id.records[:-1]), reader, get_task("ss3"))
    from protrans_cli.heads.data import report_unlabelled

    capsys.readouterr()
    report_unlabelled(h5, "labels.csv", [partial], "not used")
    err = capsys.readouterr().err
    assert "1 protein(s) have no label in labels.csv" in err and f"({by_id.records[-1].id})" in err, err
    # under other ids, the NetSurfP labels (sequences) find them by the md5 keys
    h5 = _bio_embeddings_copy(ss_data, tmp_path / "renamed.h5", lambda ident: "other-" + ident)
    with EmbeddingsReader(h5) as reader:
        matched, report = match_labels(labels, reader, get_task("ss3"))
        assert report.matched == len(labels.records) == report.by_checksum


def test_predict_refuses_a_file_whose_datasets_name_one_protein_twice(run_cli, ss_data, one_epoch_ss3, tmp_path):
    """Two datasets whose original_id names one protein ("P1 isoform a", "P1 isoform b"): the
    predictions were written twice under one id and --probabilities failed with a traceback."""
    first = sorted(EmbeddingsReader(ss_data / "test.h5").ids())[:2]
    h5 = _bio_embeddings_copy(ss_data, tmp_path / "twice.h5",
                              lambda ident: "P1 isoform " + ident if ident in first else ident)
    r = run_cli("predict", one_epoch_ss3, "--embeddings", h5, "-o", tmp_path / "p.fa", "--probabilities",
                tmp_path / "p.h5")
    assert r.exit_code == 1 and "two datasets name protein 'P1'" in r.stderr and "ids must be unique" in r.stderr
    assert len(r.stderr.splitlines()) == 1 and not (tmp_path / "p.fa").exists() and not (tmp_path / "p.h5").exists()


def test_embeddings_with_special_token_rows_are_refused_with_the_likely_reason(tmp_path, run_cli):
    # A ProtTrans-notebook file that kept [CLS] and [SEP]: (L + 2, D). Said so, not just "5 vs 7".
    h5 = tmp_path / "cls_sep.h5"
    with h5py.File(h5, "w") as f:
        for ident, length in (("p1", 5), ("p2", 4)):
            f.create_dataset(ident, data=np.zeros((length + 2, 4), np.float32))
    flip = tmp_path / "flip.fasta"
    flip.write_text(">p1 SET=train VALIDATION=False\nCCHHE\n>p2 SET=train VALIDATION=False\nCEEC\n")
    r = run_cli("fit", "ss3", "--embeddings", h5, "--labels", flip, "-o", tmp_path / "h", "-j", "1")
    errors = [line for line in r.stderr.strip().splitlines() if "FLIP labels without a mask" not in line]
    assert r.exit_code == 1 and len(errors) == 1
    assert "(p1 (5 vs 7), p2 (4 vs 6)); each embedding has 2 row(s) more than its protein has residues" in r.stderr
    assert "special-token rows" in r.stderr


def test_labels_shorter_than_their_own_sequence_are_not_blamed_on_special_token_rows(tmp_path, run_cli):
    # biotrainer residue_to_class: TARGET= one state short of the sequence below it. The embedding
    # (embed's, one row per residue) is right; the labels are off, which the error says (it said
    # the embedding had kept a special-token row).
    fasta = tmp_path / "seqs.fa"
    fasta.write_text(">p1\nMKTAY\n>p2\nMKTA\n")
    h5 = tmp_path / "e.h5"
    assert run_cli("embed", fasta, "-m", "onehot", "--per-residue", "-o", h5).exit_code == 0
    labels = tmp_path / "bt.fa"
    labels.write_text(">p1 TARGET=CCHH SET=train VALIDATION=False\nMKTAY\n"
                      ">p2 TARGET=CHHC SET=train VALIDATION=False\nMKTA\n")
    r = run_cli("fit", "ss3", "--embeddings", h5, "--labels", labels, "-o", tmp_path / "h", "-j", "1")
    assert r.exit_code == 1
    assert "(p1 (4 vs 5)); 1 of them have one row per residue of the label file's own sequence" in r.stderr
    assert "(p1 (4 labels for 5 residues))" in r.stderr
    assert "special-token rows" not in r.stderr


def test_flip_labels_one_short_of_an_embed_file_are_not_blamed_on_special_token_rows(tmp_path, run_cli):
    # FLIP labels (no sequence of their own) a state short for p1, against embed's file of one row
    # per residue: the labels are off, which the error says (it said the embedding had kept a
    # special-token row, as a file from a tool that keeps [CLS]/</s> would have).
    from conftest import DATA

    fasta = tmp_path / "seqs.fa"
    fasta.write_text(">p1\nMKTAY\n>p2\nMKTA\n")
    h5 = tmp_path / "e.h5"
    assert run_cli("embed", fasta, "-m", "onehot", "--per-residue", "-o", h5).exit_code == 0
    labels = DATA / "heads" / "flip_label_one_short.fasta"
    r = run_cli("fit", "ss3", "--embeddings", h5, "--labels", labels, "-o", tmp_path / "h", "-j", "1")
    errors = [line for line in r.stderr.strip().splitlines() if "FLIP labels without a mask" not in line]
    assert r.exit_code == 1 and len(errors) == 1, r.stderr
    assert "1 whose label length differs from the embedding's (p1 (4 vs 5))" in r.stderr
    assert "one row per residue: those labels do not count one per residue" in r.stderr
    assert "special-token rows" not in r.stderr
    assert not (tmp_path / "h").exists()


def test_an_fnn_on_a_protein_of_no_residue_names_it_not_nan(tmp_path, run_cli):
    # Another tool's flat file of per-residue arrays, one of them (0, D): an FNN head takes each
    # protein's mean, which for no residue was NaN: fit and predict said the embedding "holds NaN or
    # infinity" after two numpy RuntimeWarnings. They say it has no residue, as Light Attention's
    # error and predict_embeddings do.
    from conftest import DATA, flat_files_with_an_empty_protein

    whole, flat = tmp_path / "whole.h5", tmp_path / "flat.h5"
    flat_files_with_an_empty_protein(whole, flat, 6)
    labels = DATA / "heads" / "id_label_with_empty_protein.csv"
    common = ["-j", "1", "--max-epochs", "1", "--no-plots", "--bootstrap", "10"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = run_cli("fit", "protein", "--embeddings", flat, "--labels", labels, "-o", tmp_path / "h", *common)
    assert r.exit_code == 1, r.stderr
    assert "flat.h5, record 'empty': embedding has no residue (an (0, D) array)" in r.stderr
    assert "NaN" not in r.stderr and not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not (tmp_path / "h").exists()
    r = run_cli("fit", "protein", "--embeddings", whole, "--labels", labels, "--only-embedded", "-o",
                tmp_path / "ok", *common)
    assert r.exit_code == 0, r.stderr
    r = run_cli("predict", tmp_path / "ok", "--embeddings", flat, "-o", tmp_path / "p.csv")
    assert r.exit_code == 1
    assert "flat.h5, record 'empty': embedding has no residue" in r.stderr and "NaN" not in r.stderr
    assert not (tmp_path / "p.csv").exists()


def test_a_head_of_the_last_layer_refuses_a_file_of_one_other_layer(run_cli, one_epoch_ss3, ss_data, tmp_path):
    """The converse of the test above: a head fit on layer -1 took a file holding only layer -2
    (same model, same width) without a word, since a lone stored layer stood in for -1."""
    import shutil

    other = tmp_path / "other.h5"
    shutil.copy(ss_data / "test.h5", other)
    with h5py.File(other, "r+") as f:
        f.attrs["layers"] = [-2]
    assert json.loads((one_epoch_ss3 / "config.json").read_text())["layer"] == -1
    r = run_cli("predict", one_epoch_ss3, "--embeddings", other, "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and "not layer -1 (the head was trained on layer -1: embed with --layer -1)" in r.stderr
    assert not (tmp_path / "p.fa").exists()
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "p.fa")
    assert r.exit_code == 0


def test_fit_refuses_a_test_file_of_another_layer_than_train(run_cli, ss_data, tmp_path):
    """Train on the last layer, --test on a file holding layer -2 alone: the test set was scored
    on layer -2 without a word (a lone stored layer stood in for fit's default -1)."""
    import shutil

    other = tmp_path / "other.h5"
    shutil.copy(ss_data / "test.h5", other)
    with h5py.File(other, "r+") as f:
        f.attrs["layers"] = [-2]
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--test", other, ss_data / "test.csv", "--max-epochs", "1", *FAST, "-o", tmp_path / "ss3")
    assert r.exit_code == 1 and "not layer -1 (train was read from layer -1: embed the" in r.stderr
    assert not (tmp_path / "ss3").exists()


def _member_with_scripted_validation(loc_data, monkeypatch, scripted, patience=10):
    """Train a loc member for len(scripted) epochs, `_validate` returning the scripted (loss,
    scores) in turn; the member's lines and what FitState.save_epoch was given after each epoch."""
    from protrans_cli.heads import fit as fit_module
    from protrans_cli.heads.data import load_data
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.tasks import get_task

    task = get_task("loc")
    data, _ = load_data(loc_data / "train.h5", read_labels(loc_data / "train.fasta"), task)
    answers = iter(scripted)
    monkeypatch.setattr(fit_module, "_validate", lambda *a: next(answers))

    class Record:
        saved: list = []

        def save_epoch(self, current):
            self.saved.append(current)

    record = Record()
    config = FitConfig(task="loc", max_epochs=len(scripted), patience=patience, threads=1)
    model, lines = fit_module._train_member(config, task, data, data, 0, 0, None, state=record)
    if patience >= len(scripted):
        assert [line["epoch"] for line in lines] == list(range(1, len(scripted) + 1))
    return model, record.saved


def test_a_tie_in_validation_accuracy_keeps_the_tied_epoch_with_the_lower_loss(loc_data, monkeypatch):
    """docs/heads.md: the kept weights are the epoch with the best validation accuracy, a lower
    validation loss breaking ties. The tie was compared with the lowest loss of *any* epoch, so
    here epoch 4 (accuracy 0.8 like epoch 2, loss 0.4 < 0.5) lost to epoch 2 because epoch 3,
    a worse epoch, had had loss 0.3."""
    scripted = [(loss, {"loc": acc}) for loss, acc in [(1.0, 0.5), (0.5, 0.8), (0.3, 0.7), (0.4, 0.8), (0.9, 0.6)]]
    model, saved = _member_with_scripted_validation(loc_data, monkeypatch, scripted)
    assert saved[-1]["best_epoch"] == 4
    kept = saved[3]["model"]  # the weights after epoch 4 are the head's
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items())


def test_a_tie_in_validation_accuracy_with_a_higher_loss_keeps_the_earlier_epoch(loc_data, monkeypatch):
    """The other half of the tie rule: a later epoch as accurate but with a higher validation
    loss is not kept (a mutant keeping every tie, `score >= best_score`, passed the suite)."""
    scripted = [(loss, {"loc": acc}) for loss, acc in [(1.0, 0.5), (0.5, 0.8), (0.6, 0.8), (0.7, 0.8)]]
    model, saved = _member_with_scripted_validation(loc_data, monkeypatch, scripted)
    assert [epoch["best_epoch"] for epoch in saved] == [1, 2, 2, 2]
    kept = saved[1]["model"]
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items())


def test_patience_counts_epochs_that_improve_neither_accuracy_nor_loss(loc_data, monkeypatch):
    """docs/heads.md: training stops after `patience` epochs improving neither the validation
    accuracy nor the loss. Epoch 2 lowers the loss only (progress); epochs 3 and 4 improve
    nothing, so --patience 2 stops after epoch 4 (not after 3, counting accuracy alone, nor
    after 5, one epoch too many)."""
    scripted = [(loss, {"loc": acc}) for loss, acc in
                [(1.0, 0.5), (0.8, 0.4), (0.9, 0.4), (0.95, 0.4), (0.97, 0.4), (0.99, 0.4)]]
    _, saved = _member_with_scripted_validation(loc_data, monkeypatch, scripted, patience=2)
    assert [epoch["epoch"] for epoch in saved] == [1, 2, 3, 4]
    assert [epoch["stopped"] for epoch in saved] == [False, False, False, True]
    assert saved[-1]["best_epoch"] == 1


def test_an_epoch_is_adam_steps_with_the_given_lr_and_weight_decay_over_shuffled_batches(loc_data):
    """One epoch of an FNN member against Adam run by hand on the same batches: --lr and
    --weight-decay reach the optimizer (a fit that dropped --weight-decay passed every test), and
    --batch-size proteins a batch, shuffled with the member's seed."""
    from protrans_cli.heads import fit as fit_module
    from protrans_cli.heads.data import load_data
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.model import build_head
    from protrans_cli.heads.tasks import get_task

    task = get_task("loc")
    data, _ = load_data(loc_data / "train.h5", read_labels(loc_data / "train.fasta"), task)
    config = FitConfig(task="loc", batch_size=32, lr=0.05, weight_decay=0.5, dropout=0.0, max_epochs=1, patience=5)
    model, _ = fit_module._train_one(config, task, data, data, 3, 0, None)
    torch.manual_seed(3)
    same = build_head(task, data.dim, hidden=config.hidden, dropout=0.0)
    same.standardise_with(torch.from_numpy(data.x))
    adam = torch.optim.Adam(same.parameters(), lr=0.05, weight_decay=0.5)
    batches = list(data.batches(32, shuffle=True, rng=np.random.default_rng(3)))
    assert len(batches) == 5
    # every protein once, in a shuffled order (not the file's), each with its own row and class
    order = np.concatenate([b.index for b in batches])
    assert sorted(order) == list(range(len(data.items))) and not np.array_equal(order, np.sort(order))
    np.testing.assert_array_equal(torch.cat([b.x for b in batches]).numpy(), data.x[order])
    np.testing.assert_array_equal(torch.cat([b.targets["loc"] for b in batches]).numpy(), data.targets["loc"][order])
    for b in batches:
        adam.zero_grad()
        fit_module._loss(task, same(b.x, b.mask), b.targets, None)[0].backward()
        adam.step()
    for name, value in same.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, msg=name)


def test_ensemble_members_are_the_heads_their_own_seeds_give(loc_data, tmp_path):
    """--ensemble N: member i is the head a fit with --seed SEED+i gives (config.json's `seeds`);
    every member trained from SEED was N copies of one head, averaged, which passed every test."""
    from safetensors.torch import load_file

    settings = dict(task="loc", max_epochs=2, threads=1, n_bootstrap=10, plots=False)
    valid = (loc_data / "test.h5", loc_data / "test.fasta")
    fit(FitConfig(**settings, ensemble=2, seed=5), loc_data / "train.h5", loc_data / "train.fasta",
        tmp_path / "pair", valid=valid)
    fit(FitConfig(**settings, seed=6), loc_data / "train.h5", loc_data / "train.fasta", tmp_path / "one", valid=valid)
    pair, one = load_file(tmp_path / "pair" / "weights.safetensors"), load_file(tmp_path / "one" / "weights.safetensors")
    second = {k[len("members.1."):]: v for k, v in pair.items() if k.startswith("members.1.")}
    assert second and second.keys() == {k[len("members.0."):] for k in one}
    assert all(torch.equal(v, one[f"members.0.{k}"]) for k, v in second.items())
    assert not all(torch.equal(v, pair[f"members.0.{k}"]) for k, v in second.items())
    assert json.loads((tmp_path / "pair" / "config.json").read_text())["seeds"] == [5, 6]


def test_the_kept_epoch_is_chosen_by_the_mean_of_the_outputs_scores(loc_data, monkeypatch):
    """docs/heads.md: the best validation accuracy is the mean over outputs (loc's location and
    membrane). Epoch 2's mean (0.8 + 0.7) / 2 beats epoch 1's (0.5 + 0.9) / 2, though epoch 1
    has the higher score of any one output (a mutant choosing by the best output passed)."""
    scripted = [(1.0, {"loc": 0.5, "membrane": 0.9}), (1.0, {"loc": 0.8, "membrane": 0.7}),
                (1.0, {"loc": 0.2, "membrane": 0.95})]
    model, saved = _member_with_scripted_validation(loc_data, monkeypatch, scripted)
    assert [epoch["best_epoch"] for epoch in saved] == [1, 2, 2]
    assert saved[-1]["best_score"] == pytest.approx(0.75)
    assert all(torch.equal(saved[1]["model"][k], v) for k, v in model.state_dict().items())


def test_a_validation_loss_equal_to_the_lowest_is_no_progress(loc_data, monkeypatch):
    """Patience counts epochs that improve neither accuracy nor loss: an epoch whose loss only
    equals the lowest so far improves nothing, so --patience 2 stops after epoch 3 (a mutant
    counting an equal loss as progress trained on to the end)."""
    scripted = [(loss, {"loc": acc}) for loss, acc in [(1.0, 0.5), (1.0, 0.4), (1.0, 0.4), (1.0, 0.4), (1.0, 0.4)]]
    _, saved = _member_with_scripted_validation(loc_data, monkeypatch, scripted, patience=2)
    assert [epoch["epoch"] for epoch in saved] == [1, 2, 3]
    assert saved[-1]["stopped"] and saved[-1]["last_progress"] == 1


def test_patience_counts_from_the_lowest_validation_loss_of_any_epoch(loc_data, monkeypatch):
    """A loss below the last epoch's but above the lowest so far (epoch 4's 0.7 after 0.5 and 0.8)
    is no progress: --patience 2 stops after epoch 4 (a mutant comparing with the last epoch's
    loss trained on to epoch 6)."""
    scripted = [(loss, {"loc": acc}) for loss, acc in
                [(1.0, 0.5), (0.5, 0.4), (0.8, 0.4), (0.7, 0.4), (0.9, 0.4), (0.95, 0.4)]]
    _, saved = _member_with_scripted_validation(loc_data, monkeypatch, scripted, patience=2)
    assert [epoch["epoch"] for epoch in saved] == [1, 2, 3, 4]
    assert saved[-1]["stopped"] and saved[-1]["last_progress"] == 2 and saved[-1]["best_loss"] == 0.5


def test_validation_accuracy_counts_only_labelled_residues():
    """The valid_ss3 of metrics.jsonl (and the early-stopping score) is over the residues with a
    label: an unresolved residue (IGNORE) counted in the denominator halved it here."""
    from protrans_cli.heads import fit as fit_module
    from protrans_cli.heads.data import Batch
    from protrans_cli.heads.tasks import get_task

    task = get_task("ss3")
    (output,) = task.outputs
    targets = torch.tensor([[0, 1, IGNORE, IGNORE]])
    logits = torch.full((1, 4, len(output.classes)), -5.0)
    logits[0, 0, 0] = logits[0, 1, 1] = logits[0, 2, 0] = logits[0, 3, 0] = 5.0

    class Scripted(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x, mask):
            return {output.name: logits}

    class Data:
        def batches(self, *args, **kwargs):
            yield Batch(torch.zeros(1, 4, 3), torch.ones(1, 4, dtype=torch.bool), {output.name: targets},
                        np.arange(1))

    _, scores = fit_module._validate(Scripted(), task, Data(), FitConfig(task="ss3"))
    assert scores == {output.name: 1.0}


def test_class_weights_are_inverse_frequencies_of_the_labelled_residues():
    """--class-weights: n / (k * count_c) from the training labels, IGNORE left out (a rare
    class weighs more; inverted weights, which passed the suite, made it weigh less)."""
    from types import SimpleNamespace

    from protrans_cli.heads import fit as fit_module
    from protrans_cli.heads.tasks import get_task

    task = get_task("ss3")
    (output,) = task.outputs
    items = [SimpleNamespace(targets={output.name: np.array([0, 0, 0, 0, 1, IGNORE])}),
             SimpleNamespace(targets={output.name: np.array([0, 0, 1, IGNORE])})]
    weights = fit_module._class_weights(task, SimpleNamespace(items=items))[output.name]
    np.testing.assert_allclose(weights.numpy(), [8 / (3 * 6), 8 / (3 * 2), 8 / 3], rtol=1e-6)


def test_an_epoch_without_a_score_never_beats_a_scored_epoch(loc_data, monkeypatch):
    """A value head's epoch with no Spearman's rho (constant predictions) was scored 0.0, so it was
    kept over an earlier epoch whose rho was negative, however much lower that epoch's loss."""
    scripted = [(0.9, {}), (0.5, {"loc": -0.2}), (0.8, {}), (0.7, {"loc": -0.4}), (0.1, {})]
    model, saved = _member_with_scripted_validation(loc_data, monkeypatch, scripted)
    assert [epoch["best_epoch"] for epoch in saved] == [1, 2, 2, 2, 2]
    kept = saved[1]["model"]
    assert all(torch.equal(kept[k], v) for k, v in model.state_dict().items())


def test_validation_loss_is_each_outputs_mean_over_the_set_summed(loc_data):
    """metrics.jsonl's valid_loss (and early stopping's loss) for loc: each output's mean
    cross-entropy over the proteins it counts, summed over outputs, as the training loss is per
    batch. Batches were weighted by both outputs' counts together, which mixed the means wherever
    the counts differ (a U protein counts for location, not for membrane)."""
    import torch.nn.functional as F

    from protrans_cli.heads import fit as fit_module
    from protrans_cli.heads.data import load_data
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.model import build_head
    from protrans_cli.heads.tasks import get_task

    task = get_task("loc")
    data, _ = load_data(loc_data / "train.h5", read_labels(loc_data / "train.fasta"), task)
    torch.manual_seed(0)
    model = build_head(task, data.dim).eval()
    loss, _ = fit_module._validate(model, task, data, FitConfig(task="loc", batch_size=7))
    with torch.no_grad():
        logits = model(torch.from_numpy(data.x))
    expected = sum(float(F.cross_entropy(logits[name], torch.from_numpy(data.targets[name]), ignore_index=IGNORE))
                   for name in ("loc", "membrane"))
    assert (data.targets["membrane"] == IGNORE).any()  # U proteins: the two outputs count differently
    assert loss == pytest.approx(expected, rel=1e-6)

def test_a_value_head_is_trained_on_z_scores_that_predict_scales_back_to_the_targets_unit():
    """A value output's loss is the squared error against (target - mean) / std of the training
    targets, the z-scores an ensemble multiplies by std and shifts by mean again: the head whose
    outputs minimise the loss predicts the targets themselves (in the targets' own unit). Trained
    on target - mean alone, its predictions came out std times too far from the mean."""
    from protrans_cli.heads import fit as fit_module
    from protrans_cli.heads.model import Ensemble
    from protrans_cli.heads.tasks import get_task

    task = get_task("value").with_scale_from({"value": np.array([900.0, 1000.0, 1100.0, 1000.0])})
    mean, std = task.outputs[0].scale
    true = torch.tensor([900.0, 1100.0, float("nan"), 1040.0])  # (NaN: no value, not counted)
    best = ((true - mean) / std).nan_to_num(0.0).reshape(-1, 1)

    class Fixed(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = torch.nn.Parameter(out)

        def forward(self, x, mask=None):
            return {"value": self.out}

    loss, counts = fit_module._loss(task, {"value": best}, {"value": true}, None)
    assert counts == {"value": 3} and float(loss) == pytest.approx(0.0, abs=1e-12)
    zeros, _ = fit_module._loss(task, {"value": torch.zeros(4, 1)}, {"value": true}, None)
    kept = true[~true.isnan()]
    assert float(zeros) == pytest.approx(float((((kept - mean) / std) ** 2).mean()), rel=1e-6)
    predicted = Ensemble([Fixed(best)], task).probabilities(torch.zeros(4, 8), None)["value"].reshape(-1)
    torch.testing.assert_close(predicted[[0, 1, 3]], kept, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("standardise", [True, False])
def test_an_epochs_train_loss_is_the_mean_of_its_batches_losses_and_standardise_sets_the_fnn_inputs(loc_data,
                                                                                                    standardise):
    """metrics.jsonl's train_loss is the mean over the epoch's batches of their loss, here against
    the batches rebuilt by hand on a head that does not move (lr 0, no dropout); an FNN head's
    input shift and scale are the training set's mean and deviation with --standardise, and
    the identity with --no-standardise."""
    from protrans_cli.heads import fit as fit_module
    from protrans_cli.heads.data import load_data
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.model import build_head
    from protrans_cli.heads.tasks import get_task

    task = get_task("loc")
    data, _ = load_data(loc_data / "train.h5", read_labels(loc_data / "train.fasta"), task)
    config = FitConfig(task="loc", batch_size=16, lr=0.0, dropout=0.0, max_epochs=1, patience=5,
                       standardise=standardise)
    model, lines = fit_module._train_one(config, task, data, data, 3, 0, None)
    x = torch.from_numpy(data.x)
    if standardise:
        torch.testing.assert_close(model.shift, x.mean(0))
        torch.testing.assert_close(model.scale, _deviation_or_one(x))
    else:
        assert bool((model.shift == 0).all()) and bool((model.scale == 1).all())
    torch.manual_seed(3)
    same = build_head(task, data.dim, hidden=config.hidden, dropout=0.0)
    if standardise:
        same.standardise_with(x)
    with torch.no_grad():
        losses = [float(fit_module._loss(task, same(b.x, b.mask), b.targets, None)[0])
                  for b in data.batches(16, shuffle=True, rng=np.random.default_rng(3))]
    assert len(losses) == 10 and lines[0]["train_loss"] == pytest.approx(np.mean(losses), rel=1e-5)


def _deviation_or_one(x):
    """The training set's per-dimension sample deviation, 1 where a dimension is constant."""
    std = x.std(0)
    return torch.where(std > 0, std, torch.ones_like(std))


def test_predict_probabilities_to_stdout_is_refused(run_cli, ss_data, one_epoch_ss3, tmp_path, monkeypatch):
    # `--probabilities -` wrote an HDF5 file named `-` in the current directory (exit 0).
    monkeypatch.chdir(tmp_path)
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "x.fa",
                "--probabilities", "-")
    assert r.exit_code == 2 and "cannot be written to stdout" in r.stderr
    assert not (tmp_path / "-").exists() and not (tmp_path / "x.fa").exists()


def test_predict_probabilities_with_a_compression_suffix_is_refused(run_cli, ss_data, one_epoch_ss3, tmp_path):
    # `-o x.fa.gz` compresses, but `--probabilities x.h5.gz` wrote plain HDF5 under a gzip name (exit 0).
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "x.fa",
                "--probabilities", tmp_path / "p.h5.gz")
    assert r.exit_code == 2 and "an HDF5 file is written uncompressed: give a name without the .gz suffix" in r.stderr
    assert not (tmp_path / "p.h5.gz").exists() and not (tmp_path / "x.fa").exists()


def test_predict_probabilities_named_partial_is_refused(run_cli, ss_data, one_epoch_ss3, tmp_path):
    # `--probabilities p.h5.partial` wrote a finished file under an unfinished run's name, which
    # export and merge then took for unfinished ("finish it first"); refused as embed's -o is.
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "x.fa",
                "--probabilities", tmp_path / "p.h5.partial")
    assert r.exit_code == 2 and r.stderr.strip().endswith(
        "a name ending in .partial is an unfinished run's file (a run writes OUTPUT.partial and renames it OUTPUT once "
        "complete; info and merge take such a file for unfinished): name the output p.h5"), r.stderr
    assert "--probabilities" in r.stderr
    assert not (tmp_path / "p.h5.partial").exists() and not (tmp_path / "x.fa").exists()
    (tmp_path / "p.h5").symlink_to(tmp_path / "p.h5.partial")  # (written where the link leads: checked there)
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "-o", tmp_path / "x.fa",
                "--probabilities", tmp_path / "p.h5")
    assert r.exit_code == 2 and "a name ending in .partial is an unfinished run's file" in r.stderr, r.stderr
    assert not (tmp_path / "p.h5.partial").exists()


def test_embeddings_that_are_a_directory_is_one_line(run_cli, ss_data, one_epoch_ss3, tmp_path):
    # HDF5's message for a directory ran to two lines of C struct fields ("file descriptor = 3,
    # errno = 21, ... buf = 0x7ffc...").
    folder = tmp_path / "embeddings"
    folder.mkdir()
    for args in (["fit", "ss3", "--embeddings", folder, "--labels", ss_data / "train.csv", "-o", tmp_path / "h"],
                 ["predict", one_epoch_ss3, "--embeddings", folder, "-o", tmp_path / "p.fa"]):
        r = run_cli(*args)
        assert r.exit_code == 1 and ("\n" + r.stderr).endswith(f"\nprotrans: error: {folder}: is a directory, expected an HDF5 file\n")
        assert "errno" not in r.stderr
        assert not (tmp_path / "h").exists() and not (tmp_path / "p.fa").exists()


def test_an_empty_label_in_a_table_is_no_label_for_every_task(run_cli, loc_data, tmp_path):
    """A blank cell (pandas' to_csv writes a missing value so) failed every task with "expected
    'id,label'", though docs/heads.md says an empty label leaves a protein out."""
    import re

    ids = re.findall(r"^>(\S+)", (loc_data / "train.fasta").read_text(), flags=re.M)
    values = tmp_path / "values.csv"
    values.write_text("id,label\n" + "".join(f"{i},{'' if n % 10 == 0 else n % 7}\n" for n, i in enumerate(ids)))
    r = run_cli("fit", "value", "--embeddings", loc_data / "train.h5", "--labels", values, "--max-epochs", "2",
                "-j", "1", "--bootstrap", "10", "-o", tmp_path / "value")
    assert r.exit_code == 0, r.stderr
    classes = tmp_path / "classes.csv"
    classes.write_text("id,label\n" + "".join(f"{i},{'' if n == 3 else ('Nucleus', 'Cytoplasm')[n % 2]}\n"
                                              for n, i in enumerate(ids)))
    for task in ("protein", "loc"):
        r = run_cli("fit", task, "--embeddings", loc_data / "train.h5", "--labels", classes, "--max-epochs", "2",
                    "-j", "1", "--bootstrap", "10", "-o", tmp_path / task)
        assert r.exit_code == 0, r.stderr
        outputs = json.loads((tmp_path / task / "config.json").read_text())["task"]["outputs"]
        assert all("" not in o["classes"] for o in outputs)  # no class made of the blank label


def test_r_and_pandas_missing_values_in_a_value_table_leave_the_protein_out(run_cli, loc_data, tmp_path):
    """R's write.csv writes a missing target as NA (pandas' nullable columns <NA>, SQL NULL): `fit
    value` refused "label 'NA' is not a number" (exit 1). They leave the protein out as an empty
    cell does: the same head, the same metrics."""
    import re

    ids = re.findall(r"^>(\S+)", (loc_data / "train.fasta").read_text(), flags=re.M)
    metrics = {}
    for name, missing in (("empty", ("",) * 4), ("r", ("NA", "<NA>", "null", "N/A"))):
        values = tmp_path / f"{name}.csv"
        values.write_text("id,label\n" + "".join(
            f"{i},{missing[n // 10 % 4] if n % 10 == 0 else n % 7}\n" for n, i in enumerate(ids)))
        r = run_cli("fit", "value", "--embeddings", loc_data / "train.h5", "--labels", values, "--max-epochs", "2",
                    "-j", "1", "--bootstrap", "10", "--seed", "3", "-o", tmp_path / name)
        assert r.exit_code == 0, r.stderr
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert metrics["r"] == metrics["empty"]


def _claiming_file(path, kind: str, shape: tuple, length: int | None):
    """An embeddings file whose second protein's dataset claims `shape` (unwritten: a few KB on
    disk), beside a normal 4-d first protein."""
    import h5py

    from protrans_cli.io.h5 import EmbeddingsWriter

    rows = {"per_residue": np.ones((3, 4))} if kind == "per_residue" else {"per_protein": np.ones(4)}
    with EmbeddingsWriter(path, kinds=(kind,)) as w:
        w.write("a", "a", "MKV", **rows)
    with h5py.File(path, "a") as f:
        ds = f[kind].create_dataset("b", shape=shape, dtype="f4", chunks=(1,) * (len(shape) - 1) + (4,))
        ds.attrs["id"] = "b"
        if length is not None:
            ds.attrs["length"] = length


@pytest.mark.parametrize("kind,shape", [("per_residue", (2**60, 4)), ("per_protein", (2**61,)),
                                        ("per_residue", (3, 5))])
def test_a_dataset_claiming_another_shape_is_refused_before_it_is_read(tmp_path, kind, shape):
    # A dataset's shape is a claim: read whole first, 2**62 bytes claimed by a file of a few KB
    # were a MemoryError traceback (or, below the address space, a job killed for memory), and a
    # per-protein dataset of another dimension a numpy traceback ("must have the same shape").
    from protrans_cli.errors import InputError
    from protrans_cli.heads.data import Matched, ProteinData, ResidueData

    path = tmp_path / "claims.h5"
    _claiming_file(path, kind, shape, length=3)
    with EmbeddingsReader(path) as reader:
        keys = {reader._group(kind)[k].attrs["id"]: k for k in reader._group(kind)}
    items = [Matched(id=i, key=keys[i], length=3, targets={}) for i in ("a", "b")]
    reader_class = ResidueData if kind == "per_residue" else ProteinData
    with pytest.raises(InputError, match=r"record 'b': embedding has shape .*, expected "):
        data = reader_class(str(path), items, **({"cache_bytes": 0} if kind == "per_residue" else {}))
        for _ in data.batches():  # (streamed: read batch by batch)
            pass
    if kind == "per_residue":  # per protein from per-residue rows (the mean)
        with pytest.raises(InputError, match=r"record 'b': embedding has shape"):
            ProteinData(str(path), items)


def test_predict_refuses_a_dataset_claiming_terabytes(small_head, run_cli, tmp_path):
    head, _ = small_head
    query = tmp_path / "query.h5"
    _claiming_file(query, "per_protein", (2**61,), length=None)
    result = run_cli("predict", head, "--embeddings", query, "-o", tmp_path / "p.csv")
    assert result.exit_code == 1, result.stderr
    assert "record 'b': embedding has shape 2305843009213693952, expected 4" in result.stderr


@pytest.fixture
def small_head(tmp_path):
    """A per-protein head of 4-d inputs, fitted in a second; and its embeddings."""
    from protrans_cli.io.h5 import EmbeddingsWriter

    rng = np.random.default_rng(0)
    emb, labels = tmp_path / "train.h5", tmp_path / "train.csv"
    with EmbeddingsWriter(emb, kinds=("per_protein",)) as w:
        for i in range(20):
            w.write(f"p{i}", f"p{i}", "MKV", per_protein=rng.normal(size=4) + (i % 2))
    labels.write_text("id,label\n" + "".join(f"p{i},{'AB'[i % 2]}\n" for i in range(20)))
    fit(FitConfig(task="protein", max_epochs=1, threads=1, n_bootstrap=50), emb, labels, tmp_path / "head")
    return tmp_path / "head", emb


def test_head_weights_that_are_a_fifo_or_a_link_to_a_device_are_refused_unread(small_head):
    """A downloaded head whose weights.safetensors was a link to /dev/zero was read until the
    kernel killed the run for its memory; a FIFO hung for ever."""
    from protrans_cli.errors import ModelError
    from protrans_cli.heads.model import load_head

    head, _ = small_head
    weights = head / "weights.safetensors"
    weights.unlink()
    os.mkfifo(weights)  # (a link to /dev/zero is alike: a regular file is all that is read)

    def hung(*_):
        raise TimeoutError("load_head waited on the FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        with pytest.raises(ModelError, match="cannot read the head's weights \\(not a regular file"):
            load_head(head)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("field,value,message", [
    # 21 x 2**45 float32: petabytes, allocated before the weights were compared
    ("hidden", 2**45, r"weights do not fit the head's config \(size mismatch for members\.0\.features\.weight"),
    ("input_dim", 2**45, r"weights do not fit the head's config \(size mismatch"),
    # a trillion members were built one by one (for ever) before the weights were compared
    ("ensemble", 10**12, r"the head's config says 1000000000000 ensemble members, its weights hold 1"),
])
def test_head_config_sizes_are_checked_against_the_weights_before_building(small_head, run_cli, tmp_path,
                                                                            field, value, message):
    head, emb = small_head
    config = json.loads((head / "config.json").read_text())
    if field == "hidden":
        config["hyperparameters"]["hidden"] = value
    else:
        config[field] = value
    (head / "config.json").write_text(json.dumps(config))
    result = run_cli("predict", head, "--embeddings", emb, "-o", tmp_path / "p.csv")
    assert result.exit_code == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr


def test_fit_state_is_not_written_through_a_planted_link(tmp_path):
    # HEAD.partial/state.pt.tmp has a fixed name: a link planted there (a shared folder) made
    # every epoch's save overwrite the file it pointed to with the fit's state.
    from protrans_cli.io.h5 import EmbeddingsWriter

    emb, labels = tmp_path / "train.h5", tmp_path / "train.csv"
    with EmbeddingsWriter(emb, kinds=("per_protein",)) as w:
        for i in range(10):
            w.write(f"p{i}", f"p{i}", "MKV", per_protein=np.full(4, float(i % 2)))
    labels.write_text("id,label\n" + "".join(f"p{i},{'AB'[i % 2]}\n" for i in range(10)))
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    (tmp_path / "head.partial").mkdir()
    (tmp_path / "head.partial" / "state.pt.tmp").symlink_to(victim)
    fit(FitConfig(task="protein", max_epochs=2, threads=1, n_bootstrap=10), emb, labels, tmp_path / "head")
    assert victim.read_bytes() == b"precious\n"
    assert (tmp_path / "head" / "weights.safetensors").is_file() and not (tmp_path / "head.partial").exists()


def _flip_file(ss_data, path, states: int, splits, first_label: str | None = None):
    """ss_data's train proteins as a FLIP/biotrainer FASTA of 3- or 8-state labels, record i in
    splits[i % len(splits)]; `first_label` replaces the first record's labels."""
    lines = (ss_data / "train.fa").read_text().splitlines()
    with open(path, "w") as fh:
        for i, (header, seq) in enumerate(zip(lines[::2], lines[1::2])):
            ss8 = "".join(RULE8.get(c, "C") for c in seq)
            label = ss8 if states == 8 else ss8_to_ss3(ss8)
            if i == 0 and first_label is not None:
                label = first_label[:len(seq)].ljust(len(seq), "C")
            fh.write(f"{header} {splits[i % len(splits)]}\n{label}\n")
    return path


def test_ss8_from_a_flip_file_with_a_protein_of_helix_and_coil_only(run_cli, ss_data, tmp_path):
    # 8-state labels per FLIP record: a protein of H and C alone (CB513 has three, PISCES 97) was
    # refused as "3-state labels only", so no real 8-state FLIP file could be trained on.
    flip = _flip_file(ss_data, tmp_path / "flip8.fasta", 8, ["SET=train VALIDATION=False"], first_label="CHHHHHHC")
    r = run_cli("fit", "ss8", "--embeddings", ss_data / "train.h5", "--labels", flip, "--max-epochs", "1",
                *FAST, "-o", tmp_path / "h8")
    assert r.exit_code == 0, r.stderr
    three = _flip_file(ss_data, tmp_path / "flip3.fasta", 3, ["SET=train VALIDATION=False"])
    r = run_cli("fit", "ss8", "--embeddings", ss_data / "train.h5", "--labels", three, "-o", tmp_path / "h3", *FAST)
    assert r.exit_code == 1 and "flip3.fasta: holds 3-state labels only (H, E, C); ss8 needs 8-state" in r.stderr


def test_flip_mask_training_with_a_test_set_in_another_format(run_cli, ss_data, tmp_path):
    # ProtTrans' setting: train on FLIP's masked split, test on CB513 (NetSurfP CSV). The mask
    # was applied to every label file: "a mask file is only read with FLIP-style labels" (exit 2).
    flip = _flip_file(ss_data, tmp_path / "flip.fasta", 3, ["SET=train VALIDATION=False"] * 4
                      + ["SET=train VALIDATION=True"])
    records = flip.read_text().splitlines()
    mask = tmp_path / "mask.fasta"
    mask.write_text("".join(f"{h.split()[0]}\n{'0' + '1' * (len(lab) - 1)}\n"
                            for h, lab in zip(records[::2], records[1::2])))
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", flip, "--mask", mask,
                "--test", ss_data / "test.h5", ss_data / "test.csv", "--max-epochs", "1", *FAST, "-o", tmp_path / "h")
    assert r.exit_code == 0, r.stderr
    metrics = json.loads((tmp_path / "h" / "metrics.json").read_text())
    masked_valid = sum(len(lab) - 1 for h, lab in zip(records[::2], records[1::2]) if "VALIDATION=True" in h)
    assert metrics["valid"]["ss3"]["n"] == masked_valid  # the mask applies to the FLIP file
    test_residues = sum(len(s) for s in (ss_data / "test.fa").read_text().splitlines()[1::2])
    assert metrics["test"]["ss3"]["n"] == test_residues  # and not to the CSV
    # a FLIP test file the mask covers in part is an error naming both files
    part = tmp_path / "part.fasta"
    part.write_text("\n".join(records[:4] + [">other SET=test VALIDATION=False", "CCHH"]) + "\n")
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", flip, "--mask", mask,
                "--test", ss_data / "train.h5", part, "--max-epochs", "1", *FAST, "-o", tmp_path / "h2")
    assert r.exit_code == 1 and "mask.fasta: no mask for 1 of the ids of part.fasta: other" in r.stderr
    # FLIP labels scored without their mask: said, at fit and at predict (which names the head's mask)
    assert "without a mask" not in (tmp_path / "h" / "config.json").read_text()
    r = run_cli("predict", tmp_path / "h", "--embeddings", ss_data / "train.h5", "--labels", flip, "-o", tmp_path / "p.fa")
    assert r.exit_code == 0, r.stderr
    assert "warning: " in r.stderr and "FLIP labels without a mask" in r.stderr
    assert f"the head was fit with --mask {mask}" in r.stderr
    r = run_cli("predict", tmp_path / "h", "--embeddings", ss_data / "train.h5", "--labels", flip, "--mask", mask,
                "-o", tmp_path / "p2.fa")
    assert r.exit_code == 0 and "without a mask" not in r.stderr
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", flip, "--max-epochs", "1", *FAST,
                "-o", tmp_path / "h3")
    assert r.exit_code == 0 and "flip.fasta: FLIP labels without a mask: every residue is trained on" in r.stderr
    # biotrainer-style per-residue labels for a generic head have no FLIP mask to miss
    r = run_cli("fit", "residue", "--embeddings", ss_data / "train.h5", "--labels", flip, "--max-epochs", "1", *FAST,
                "-o", tmp_path / "h4")
    assert r.exit_code == 0 and "without a mask" not in r.stderr


def test_split_names_are_read_or_refused_never_dropped(run_cli, loc_data, tmp_path):
    rows = [line[1:].split()[:2] for line in (loc_data / "train.fasta").read_text().splitlines() if line[0] == ">"]
    table = tmp_path / "sets.csv"
    names = ["train", "training", "train", "validation", "test"]
    table.write_text("id,label,set\n" + "".join(f"{i},{lab.split('-')[0]},{names[k % 5]}\n"
                                                for k, (i, lab) in enumerate(rows)))
    r = run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", table, "--max-epochs", "2",
                "-j", "1", "--bootstrap", "10", "-o", tmp_path / "h")
    assert r.exit_code == 0, r.stderr
    metrics = json.loads((tmp_path / "h" / "metrics.json").read_text())
    assert metrics["valid"]["label"]["n"] == 30 and metrics["test"]["label"]["n"] == 30
    assert "have no label" not in r.stderr  # all 150 in use: 90 train, 30 validation, 30 test
    table.write_text(table.read_text().replace("validation", "holdout"))
    r = run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", table, "-o", tmp_path / "h2")
    assert r.exit_code == 1 and "sets.csv:5: unknown set 'holdout': train, valid or test" in r.stderr
    # a file's validation records beside an explicit --valid: said to be left out, not "no label"
    table.write_text(table.read_text().replace("holdout", "valid"))
    own = tmp_path / "own_valid.csv"
    own.write_text("".join(f"{i},{lab.split('-')[0]}\n" for i, lab in rows[:30]))
    r = run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", table, "--valid",
                loc_data / "train.h5", own, "--max-epochs", "1", "-j", "1", "--bootstrap", "10", "-o", tmp_path / "h3")
    assert r.exit_code == 0, r.stderr
    assert "its validation records are left out of training" in r.stderr and "have no label" not in r.stderr


def test_a_table_label_with_an_unquoted_comma_is_refused(run_cli, loc_data, tmp_path):
    table = tmp_path / "t.csv"
    table.write_text("train0,membrane\ntrain1,membrane, peripheral\n")
    r = run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", table, "-o", tmp_path / "h")
    assert r.exit_code == 1 and "t.csv:2: has 3 fields, more than the 2 of 'id,label' (no header)" in r.stderr
    table.write_text('id,label,set\ntrain0,membrane,train\ntrain1,"membrane, peripheral",train\n'
                     "train2,membrane, integral,train\n")
    r = run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", table, "-o", tmp_path / "h")
    assert r.exit_code == 1 and "t.csv:4: has 4 fields, more than the header's 3 (id,label,set)" in r.stderr
    # a header of two columns was taken for none ("more than 'id,label' (no header) 2")
    table.write_text("id,label\ntrain0,membrane\ntrain1,membrane, peripheral\n")
    r = run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", table, "-o", tmp_path / "h")
    assert r.exit_code == 1 and "t.csv:3: has 3 fields, more than the header's 2 (id,label)" in r.stderr


def test_predict_probabilities_without_an_output_is_refused(run_cli, ss_data, one_epoch_ss3, tmp_path):
    # with --labels alone nothing was predicted: --probabilities wrote nothing and exited 0
    for option in (["--probabilities", tmp_path / "p.h5"], ["--head-output", "ss3"]):
        r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "--labels", ss_data / "test.csv",
                    *option)
        assert r.exit_code == 2 and f"{option[0]} goes with the predictions: add -o FILE" in r.stderr
    assert not (tmp_path / "p.h5").exists()


def test_the_files_own_test_records_are_named_when_none_matches(run_cli, loc_data, tmp_path):
    # a table whose set=test records were embedded into another file: the message said only "no
    # label record matched an embedding", as if the training set had failed
    rows = [line[1:].split()[:2] for line in (loc_data / "train.fasta").read_text().splitlines() if line[0] == ">"]
    table = tmp_path / "t.csv"
    table.write_text("id,label,set\n" + "".join(f"{i},{lab.split('-')[0]},\n" for i, lab in rows)
                     + "elsewhere1,Nucleus,test\nelsewhere2,Nucleus,test\n")
    r = run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", table,
                "--max-epochs", "1", "-j", "1", "-o", tmp_path / "h")
    assert r.exit_code == 1
    assert "(the test records of" in r.stderr and "--test EMBEDDINGS" in r.stderr
    # (--skip-mismatched: the records left out with a warning, as --only-embedded leaves them)
    r = run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", table, "--skip-mismatched",
                "--max-epochs", "1", "-j", "1", "-o", tmp_path / "h")
    assert r.exit_code == 0, r.stderr
    assert (f"protrans: warning: {table}: none of its 2 test records matches an embedding in {loc_data / 'train.h5'} "
            "(skipped, above): no test set is scored (--skip-mismatched; --test EMBEDDINGS LABELS gives one)"
            in r.stderr), r.stderr
    assert "test" not in json.loads((tmp_path / "h" / "metrics.json").read_text())


def test_foreign_files_are_matched_by_original_id_and_their_layers_checked(run_cli, loc_data, tmp_path):
    # a biotrainer-style file keyed "0", "1", ... (ids in `original_id`) with numeric protein
    # ids: fit paired protein "1" with the dataset "1" (another protein's vector)
    import h5py

    rows = [line[1:].split()[:2] for line in (loc_data / "train.fasta").read_text().splitlines() if line[0] == ">"]
    table = tmp_path / "v.csv"
    table.write_text("".join(f"{k + 1},{k + 1}\n" for k in range(len(rows))))  # value = the protein's number
    with h5py.File(tmp_path / "bt.h5", "w") as f:
        for k in range(len(rows)):
            f.create_dataset(str(k), data=np.full(8, float(k + 1), np.float32))  # its vector holds it too
            f[str(k)].attrs["original_id"] = str(k + 1)
    from protrans_cli.heads.data import load_data
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.tasks import get_task

    data, report = load_data(tmp_path / "bt.h5", read_labels(table), get_task("value"))
    assert report.matched == len(rows) and not report.unlabelled
    assert data.targets["value"].dtype == np.float32  # (as class indices, 2.5 was trained on as 2)
    np.testing.assert_array_equal(data.x[:, 0], np.asarray(data.targets["value"], dtype=np.float32))
    # --layer on another tool's file: (3, L, D) indexed by it and checked; (L, D) holds one layer
    labels = tmp_path / "ss.fasta"
    labels.write_text(f">p1 SET=train VALIDATION=False\n{'CHHHHEEECC'}\n>p2 SET=train VALIDATION=True\nCCHHHHEECC\n")
    for name, shape in (("one", (10, 21)), ("three", (3, 10, 21))):
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            for ident in ("p1", "p2"):
                f.create_dataset(ident, data=np.random.default_rng(0).normal(size=shape).astype(np.float32))
        r = run_cli("fit", "ss3", "--embeddings", tmp_path / f"{name}.h5", "--labels", labels, "--layer", "5",
                    "--max-epochs", "1", "-j", "1", "--bootstrap", "10", "-o", tmp_path / f"h_{name}")
        assert r.exit_code == 1, r.stderr
        assert ("holds one layer (no layer axis" if name == "one" else "holds 3 layers on its first axis") in r.stderr
    # predict has no --layer: a head of layer 1 on the one-layer file is told what to do instead
    r = run_cli("fit", "ss3", "--embeddings", tmp_path / "three.h5", "--labels", labels, "--layer", "1",
                "--max-epochs", "1", "-j", "1", "--bootstrap", "10", "-o", tmp_path / "h1")
    assert r.exit_code == 0, r.stderr
    r = run_cli("predict", tmp_path / "h1", "--embeddings", tmp_path / "one.h5", "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and r.stderr.strip().endswith(
        "holds one layer (no layer axis, no layer numbers recorded), not layer 1: fit a head on it with --layer -1 "
        "(the default), or embed with --layer 1"), r.stderr


@pytest.mark.gpu
def test_a_fit_resumed_on_the_gpu_draws_the_dropout_masks_an_uninterrupted_fit_draws(ss_data, tmp_path, monkeypatch):
    # only the CPU generator was kept: on a GPU the resumed epochs replayed the first epoch's
    # dropout masks (the member's seed reset the device's generator)
    from safetensors.torch import load_file

    from protrans_cli.heads.fit import FitConfig, FitState, fit

    def config(**kw):
        return FitConfig(**{**dict(task="ss3", max_epochs=3, patience=10, max_residues=300, lr=0.02, threads=1,
                                   n_bootstrap=10, device="cuda"), **kw})

    args = (ss_data / "train.h5", ss_data / "train.csv")
    fit(config(), *args, tmp_path / "whole")
    save_epoch = FitState.save_epoch

    def save_then_stop(self, current):
        save_epoch(self, current)
        if current["epoch"] == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(FitState, "save_epoch", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        fit(config(), *args, tmp_path / "parts")
    monkeypatch.setattr(FitState, "save_epoch", save_epoch)
    fit(config(resume=True), *args, tmp_path / "parts")
    whole, parts = (load_file(str(tmp_path / d / "weights.safetensors")) for d in ("whole", "parts"))
    assert all(torch.allclose(whole[k], parts[k], atol=1e-6) for k in whole)



def test_stdin_and_pipes_where_they_cannot_work_are_said(run_cli, ss_data, tmp_path):
    """`fit --embeddings -` said "-: no such file"; stdin named twice said "<stdin>: is empty"."""
    # `-` for an HDF5 input is a usage error, refused before the labels are read (exit 2, as
    # `embed -o -` and `predict --probabilities -`; it was exit 1 after the labels' notes)
    for args in (["--embeddings", "-", "--labels", ss_data / "train.csv"],
                 ["--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                  "--test", "-", ss_data / "test.csv"]):
        r = run_cli("fit", "ss3", *args, "-o", tmp_path / "h")
        assert r.exit_code == 2 and r.stderr == ("protrans: error: an HDF5 file is read in place, not from stdin "
                                                 "('-'): give the embeddings as a file\n"), r.stderr
    r = run_cli("predict", tmp_path, "--embeddings", "-")
    assert r.exit_code == 2 and "an HDF5 file is read in place, not from stdin" in r.stderr, r.stderr
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", "-", "--test", ss_data / "test.h5", "-",
                "-o", tmp_path / "h", input=b"")
    assert r.exit_code == 2 and "stdin ('-') can be one label file at most" in r.stderr, r.stderr
    r = run_cli("predict", tmp_path, "--fasta", "-", "--labels", "-", input=b"")
    assert r.exit_code == 2 and "stdin ('-') can be one input at most" in r.stderr, r.stderr


def test_evaluation_set_names_differ_without_case():
    """Metrics files are named after their set: `DeepLoc.json` and `deeploc.json` are one file on
    macOS's and Windows' file systems, so the second test set replaced the first's metrics."""
    from protrans_cli.heads.fit import _unique_name

    assert _unique_name("deeploc", ["valid", "DeepLoc"]) == "deeploc-2"
    assert _unique_name("Valid", ["valid"]) == "Valid-2"
    assert _unique_name("deeploc", ["DEEPLOC", "deeploc-2"]) == "deeploc-3"
    assert _unique_name("cb513", ["valid"]) == "cb513"


def test_an_id_missing_but_for_case_or_normalisation_is_pointed_out(run_cli, tmp_path):
    """An id typed with a combining accent in the labels and a precomposed one in the FASTA (or
    in another case) never matched, and the message gave no hint why; ids still compare exactly."""
    from protrans_cli.embed import EmbedOptions, embed

    names = ["Q9X\u00e9", "P12345", "A1", "A2"]
    (tmp_path / "e.fa").write_text("".join(f">{n}\nMKTAYIAK{'G' * i}\n" for i, n in enumerate(names)))
    embed(tmp_path / "e.fa", tmp_path / "e.h5", EmbedOptions(model="onehot", per_protein=True, threads=1))
    table = tmp_path / "l.csv"
    table.write_text("Q9Xe\u0301,A\np12345,B\nA1,A\nA2,B\n", encoding="utf-8")
    r = run_cli("fit", "protein", "--embeddings", tmp_path / "e.h5", "--labels", table, "-j", "1",
                "-o", tmp_path / "h")
    assert r.exit_code == 1
    assert ("2 without an embedding (Q9Xe\u0301, p12345); 2 of them equal an embedded protein's id but for case or "
            "Unicode normalisation (label 'Q9Xe\u0301', embedded 'Q9X\u00e9'): ids are compared exactly") in r.stderr


def test_label_ids_that_are_accessions_of_uniprot_ids_are_pointed_out(run_cli, tmp_path):
    """A table keyed by accession (P69905) against embeddings of a UniProt FASTA, whose ids are
    sp|P69905|HBA_HUMAN: every record was "without an embedding", with no hint why."""
    from protrans_cli.embed import EmbedOptions, embed

    (tmp_path / "e.fa").write_text(">sp|P69905|HBA_HUMAN Hemoglobin subunit alpha\nMVLSPADKTN\n"
                                   ">tr|A0A024R161|A0A024R161_HUMAN x\nMKTAYIAKQR\n>other\nMKTAY\n")
    embed(tmp_path / "e.fa", tmp_path / "e.h5", EmbedOptions(model="onehot", per_protein=True, threads=1))
    table = tmp_path / "l.csv"
    table.write_text("id,label\nP69905,A\nA0A024R161,B\nother,A\n")
    r = run_cli("fit", "protein", "--embeddings", tmp_path / "e.h5", "--labels", table, "-j", "1",
                "-o", tmp_path / "h")
    assert r.exit_code == 1
    assert ("2 without an embedding (P69905, A0A024R161); 2 of them are the accession of an embedded protein's "
            "UniProt id (label 'P69905', embedded 'sp|P69905|HBA_HUMAN')") in r.stderr


def test_label_ids_that_prottrans_script_rewrote_are_pointed_out(run_cli, tmp_path):
    """ProtTrans's prott5_embedder.py keys a protein by its header with `.` and `/` written `_`:
    a label table keyed by RefSeq ids (NP_000509.1) found no embedding, with no hint why. Such
    ids are pointed out, not matched (NP_1.1 and NP_1_1 would become one)."""
    h5 = tmp_path / "prottrans.h5"
    with h5py.File(h5, "w") as f:  # the script's flat per-protein layout: one (D,) dataset per key
        for key in ("NP_000509_1", "sp|P0_1|X_HUMAN", "plain"):
            f.create_dataset(key, data=np.ones(4, np.float32))
    table = tmp_path / "l.csv"
    table.write_text("id,label\nNP_000509.1,A\nsp|P0.1|X_HUMAN,B\nplain,A\n")
    r = run_cli("fit", "protein", "--embeddings", h5, "--labels", table, "-j", "1", "-o", tmp_path / "h")
    assert r.exit_code == 1
    assert ("2 of them equal an embedded protein's id with '.' and '/' written '_' (label 'NP_000509.1', "
            "embedded 'NP_000509_1')") in r.stderr, r.stderr
    assert not (tmp_path / "h").exists()


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_records_without_a_label_are_left_out_counted_and_said(run_cli, loc_data, tmp_path):
    """Empty labels were left out of the loss, but counted as trained on ("train: 80 proteins",
    config.json's "proteins"), could be drawn into the validation hold-out, and nothing said so."""
    ids = [line[1:].split()[0] for line in (loc_data / "train.fasta").read_text().splitlines() if line[0] == ">"]
    table = tmp_path / "t.csv"
    table.write_text("".join(f"{ident},{'' if i < 5 else 'AB'[i % 2]}\n" for i, ident in enumerate(ids[:80])))
    head = tmp_path / "h"
    r = run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", table, "--max-epochs", "2",
                "-j", "1", "--valid-fraction", "0.25", "-o", head)
    assert r.exit_code == 0, r.stderr
    assert f"{table}: 5 record(s) give no usable label (empty or nan, every residue masked, or a dual location " \
           "under --dual skip) and are left out (train0, train1, train2, train3, train4)" in r.stderr
    assert "train: 75 proteins" in r.stderr and "19 proteins held out of train" in r.stderr
    config = json.loads((head / "config.json").read_text())
    assert config["training"]["proteins"] == 56  # 75 - 19
    held_out = config["training"]["held_out"]  # the split is recoverable
    assert len(held_out) == 19 and held_out == sorted(held_out) and set(held_out) <= set(ids[5:80])
    # their embeddings are not "without a label" a second time; the other 70 are
    assert f"{loc_data / 'train.h5'}: 70 protein(s) have no label in {table}" in r.stderr


def test_metrics_files_are_strict_json_when_a_set_has_nothing_to_score(run_cli, loc_data, tmp_path):
    """setHARD's membrane codes are all U: "accuracy": NaN made metrics.json unreadable to
    JSON.parse, jq and R (Python's json alone takes NaN)."""
    hard = tmp_path / "hard.fasta"
    hard.write_text(re.sub(r"-[MS] test", "-U test", (loc_data / "test.fasta").read_text()))
    head = tmp_path / "loc"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--test", loc_data / "test.h5", hard, "--max-epochs", "2", "-j", "1", "--bootstrap", "20", "-o", head)
    assert r.exit_code == 0, r.stderr
    summary = _strict_json((head / "metrics.json").read_text())
    assert summary["hard"]["membrane"]["accuracy"] is None and summary["hard"]["membrane"]["n"] == 0
    _strict_json((head / "metrics" / "hard.json").read_text())
    for line in (head / "metrics.jsonl").read_text().splitlines():
        _strict_json(line)
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "--labels", hard, "-o", tmp_path / "p.csv",
                "--metrics", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert _strict_json((tmp_path / "m" / "hard.json").read_text())["outputs"]["membrane"]["accuracy"] is None


def test_head_weights_have_one_metadata_key_so_their_bytes_repeat(run_cli, loc_data, tmp_path):
    """safetensors writes its metadata map in a random order (a Rust HashMap): with two keys, two
    fits with the same seed gave equal weights in files of other bytes (a sha256 check failed)."""
    head = tmp_path / "loc"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--max-epochs", "1", "-j", "1", "-o", head)
    assert r.exit_code == 0, r.stderr
    raw = (head / "weights.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert header["__metadata__"] == {"format": "protrans-head"}


def test_predict_does_not_call_the_label_files_other_splits_unlabelled(run_cli, loc_data, tmp_path):
    """`predict --labels` scores a split file's test records; it then said the training
    proteins in the embeddings "have no label" in that file, though they had."""
    ids = [line[1:].split()[0] for line in (loc_data / "train.fasta").read_text().splitlines() if line[0] == ">"]
    table = tmp_path / "t.csv"
    table.write_text("identifier,label,set\n" + "".join(
        f"{ident},{'AB'[i % 2]},{'test' if i >= 120 else ''}\n" for i, ident in enumerate(ids[:140])))
    head = tmp_path / "h"
    r = run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", table, "--max-epochs", "1",
                "-j", "1", "-o", head)
    assert r.exit_code == 0, r.stderr
    r = run_cli("predict", head, "--embeddings", loc_data / "train.h5", "--labels", table, "-o", tmp_path / "p.csv")
    assert r.exit_code == 0, r.stderr
    assert f"{table}: scoring its 20 test records (its other 120 are train)" in r.stderr
    assert f"{loc_data / 'train.h5'}: 10 protein(s) have no label in {table} and are not scored (train140," in r.stderr


def test_one_set_in_another_order_gets_the_same_bootstrap_ci(run_cli, loc_data, tmp_path):
    from protrans_cli.embed import EmbedOptions, embed

    records = (loc_data / "test.fasta").read_text().split(">")[1:]
    shuffled = tmp_path / "shuffled.fasta"
    order = np.random.default_rng(5).permutation(len(records))
    shuffled.write_text("".join(">" + records[i] for i in order))
    embed(shuffled, tmp_path / "shuffled.h5", EmbedOptions(model="onehot", per_residue=False, threads=1))
    head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "2", "-j", "1", "-o", head).exit_code == 0
    cis = []
    for emb, labels in ((loc_data / "test.h5", loc_data / "test.fasta"), (tmp_path / "shuffled.h5", shuffled)):
        out = tmp_path / f"m{len(cis)}"
        r = run_cli("predict", head, "--embeddings", emb, "--labels", labels, "-o", tmp_path / "p.csv",
                    "--metrics", out)
        assert r.exit_code == 0, r.stderr
        outputs = json.loads(next(out.glob("*.json")).read_text())["outputs"]
        cis.append((outputs["loc"]["ci95"], outputs["membrane"]["ci95"]))
    assert cis[0] == cis[1]


def test_predict_warns_when_the_extension_names_another_format(run_cli, loc_data, tmp_path):
    head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "1", "-j", "1", "-o", head).exit_code == 0
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "-o", tmp_path / "p.fasta.gz")
    assert r.exit_code == 0 and "p.fasta.gz: this head's predictions are CSV, tab-separated for a .tsv name (id, " \
        "then each output's columns), whatever the file's extension" in r.stderr
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "-o", tmp_path / "p.json")
    assert r.exit_code == 0 and "p.json: this head's predictions are CSV" in r.stderr
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "-o", tmp_path / "p.csv")
    assert r.exit_code == 0 and "extension" not in r.stderr
    # a .tsv name: the same table, tab-separated (it was CSV, which tools that go by the name misread)
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "-o", tmp_path / "p.tsv.gz")
    assert r.exit_code == 0 and "extension" not in r.stderr
    with gzip.open(tmp_path / "p.tsv.gz", "rt") as tsv, open(tmp_path / "p.csv") as comma:
        assert list(csv.reader(tsv, delimiter="\t")) == list(csv.reader(comma))


def test_predict_fasta_to_a_device_keeps_its_embeddings_elsewhere(run_cli, ss_data, tmp_path):
    """`predict --fasta q.fa -o /dev/stdout` put its temporary embeddings beside the output, in
    /dev, which embed (rightly) refuses: exit 2 where the predictions used to be printed."""
    head = tmp_path / "ss3"
    assert run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                   "--max-epochs", "1", *FAST, "-o", head).exit_code == 0
    r = run_cli("predict", head, "--fasta", ss_data / "test.fa", "-o", os.devnull)
    assert r.exit_code == 0, r.stderr


def test_dual_locations_taken_as_their_first_are_said(run_cli, loc_data, tmp_path):
    # DeepLoc's 23 Cytoplasm-Nucleus proteins became Cytoplasm without a word under --dual first
    # (the default); --dual skip said how many it left out
    fasta = tmp_path / "dual.fasta"
    text = (loc_data / "train.fasta").read_text()
    fasta.write_text(text.replace(" Nucleus-", " Cytoplasm-Nucleus-", 3))
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", fasta, "--max-epochs", "1",
                "-j", "1", "--bootstrap", "10", "-o", tmp_path / "h")
    assert r.exit_code == 0 and f"{fasta}: 3 record(s) labelled Cytoplasm-Nucleus count as Cytoplasm (--dual first; " \
        "--dual skip leaves them out)" in r.stderr, r.stderr
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", fasta, "--max-epochs", "1",
                "-j", "1", "--bootstrap", "10", "--dual", "skip", "-o", tmp_path / "s")
    assert r.exit_code == 0 and "count as Cytoplasm" not in r.stderr  # (their membrane labels still train)


def test_a_head_fit_without_a_mask_is_scored_without_one(ss_data, tmp_path):
    # mask_columns=() (no mask) was taken for "not given" and became disorder: a NetSurfP-style
    # file without that column then failed ("has no mask column disorder")
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.predict import evaluate_head

    for name in ("train", "test"):
        with open(tmp_path / f"{name}.csv", "w", newline="") as fh:
            fh.write("input, dssp3, dssp8\n")
            for record in read_labels(ss_data / f"{name}.csv").records:
                csv.writer(fh).writerow([" ".join(record.sequence), " ".join(record.labels["ss3"]),
                                         " ".join(record.labels["ss8"])])
    head = tmp_path / "h"
    fit(FitConfig(task="ss3", max_epochs=1, max_residues=300, threads=1, n_bootstrap=10, mask_columns=()),
        ss_data / "train.h5", tmp_path / "train.csv", head)
    for columns in (None, ()):
        scores = evaluate_head(head, ss_data / "test.h5", tmp_path / "test.csv", mask_columns=columns)
        assert scores["ss3"]["accuracy"] >= 0


def test_one_mask_column_given_as_a_str_is_that_column(ss_data, tmp_path):
    # FitConfig(mask_columns="disorder") (a name, not a tuple of names) was read letter by letter:
    # "has no mask column d, i, s, o, r, d, e, r"; evaluate_head(mask_columns="disorder") too
    from protrans_cli.heads.predict import evaluate_head

    head = tmp_path / "h"
    fit(FitConfig(task="ss3", max_epochs=1, max_residues=300, threads=1, n_bootstrap=10, mask_columns="disorder"),
        ss_data / "train.h5", ss_data / "train.csv", head)
    assert json.loads((head / "config.json").read_text())["config"]["mask_columns"] == ["disorder"]
    for columns in ("disorder", ["disorder"], None):
        assert evaluate_head(head, ss_data / "test.h5", ss_data / "test.csv", mask_columns=columns)["ss3"]["accuracy"] >= 0
    with pytest.raises(UsageError, match="mask_columns must be a column name or a list of them, got int 1"):
        evaluate_head(head, ss_data / "test.h5", ss_data / "test.csv", mask_columns=1)
    with pytest.raises(UsageError, match=r"FitConfig.mask_columns must be a column name or a list of them, got \(1,\)"):
        fit(FitConfig(task="ss3", mask_columns=(1,)), ss_data / "train.h5", ss_data / "train.csv", tmp_path / "h2")


@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_predict_fasta_still_stops_on_a_signal_after_its_embedding_step(tmp_path, loc_data, run_cli, monkeypatch,
                                                                          name, code):
    # predict --fasta embeds into a temporary file first; closing that file marked the command's
    # output complete, and a Ctrl-C or SIGTERM during the prediction itself was then swallowed:
    # exit 0, "nothing was lost", for predictions not yet written.
    import signal

    from protrans_cli.heads import predict as predict_module

    head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "2", "-j", "1", "--bootstrap", "10", "-o", head).exit_code == 0
    real = predict_module.predict

    def signalled(*args, **kwargs):
        signal.raise_signal(getattr(signal, name))
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_module, "predict", signalled)
    r = run_cli("predict", head, "--fasta", loc_data / "test.fasta", "-o", tmp_path / "pred.csv")
    assert r.exit_code == code and not (tmp_path / "pred.csv").exists(), r.stderr
    assert "nothing was lost" not in r.stderr


def test_a_sigterm_held_while_fit_finishes_its_head_exits_0(tmp_path, loc_data, run_cli, monkeypatch):
    # The final step runs with signals held; the held SIGTERM was delivered at the end of that
    # block, before the head was marked complete: exit 143 for a head already whole.
    import signal

    from protrans_cli.heads.fit import FitState

    real = FitState.remove

    def remove(self, *args, **kwargs):
        signal.raise_signal(signal.SIGTERM)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(FitState, "remove", remove)
    head = tmp_path / "loc"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--max-epochs", "2", "-j", "1", "--bootstrap", "10", "-o", head)
    assert r.exit_code == 0, r.stderr
    assert f"terminated once the output was complete ({head}): nothing was lost" in r.stderr
    assert (head / "config.json").is_file()


def test_biotrainer_sequence_file_labels_by_its_target(run_cli, loc_data, tmp_path):
    """biotrainer's sequence_to_class file (`>ID TARGET=Nucleus SET=train VALIDATION=False` +
    the sequence) was read as FLIP: the sequence line became the label, and fit trained a head
    with one "class" per sequence and exited 0. The TARGET is the label, the line the sequence,
    SET/VALIDATION the split."""
    from protrans_cli.io.fasta import read_fasta

    records = list(read_fasta(loc_data / "train.fasta"))
    bio = tmp_path / "sequences.fasta"
    with open(bio, "w") as fh:
        for i, rec in enumerate(records):
            location = rec.description.split()[1].rsplit("-", 1)[0]
            split = "test" if i % 5 == 0 else "train"
            fh.write(f">{rec.id} TARGET={location} SET={split} VALIDATION={split == 'train' and i % 5 == 1}\n"
                     f"{rec.sequence}\n")
    r = run_cli("labels", bio, "-o", "-")
    assert r.exit_code == 0, r.stderr
    written = tmp_path / "embed_me.fa"
    written.write_text(r.stdout)
    assert [(x.id, x.sequence) for x in read_fasta(written)] == [(x.id, x.sequence) for x in records]
    head = tmp_path / "h"
    r = run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", bio, *FAST, "-o", head)
    assert r.exit_code == 0, r.stderr
    config = json.loads((head / "config.json").read_text())
    assert sorted(config["task"]["outputs"][0]["classes"]) == ["Cell.membrane", "Extracellular", "Nucleus"]
    metrics = json.loads((head / "metrics.json").read_text())
    assert metrics["test"]["label"]["n"] == 30 and metrics["valid"]["label"]["n"] == 30
    # named FLIP, the file is refused rather than misread
    r = run_cli("fit", "protein", "--embeddings", loc_data / "train.h5", "--labels", bio, "--label-format", "flip",
                *FAST, "-o", tmp_path / "h2")
    assert r.exit_code == 1 and "TARGET= in its header: a biotrainer sequence file" in r.stderr


def test_an_ss3_ss8_head_is_scored_on_three_state_labels_for_ss3(run_cli, ss_data, tmp_path):
    """FLIP's secondary-structure sets hold 3-state labels. An ss3+ss8 head could be scored on
    them neither by predict --labels nor as fit's --test: the ss8 check refused the whole file.
    ss3 is scored, and ss8 has nothing to evaluate; training such a head on them stays refused."""
    from protrans_cli.heads.labels import read_labels

    flip = tmp_path / "three_state.fasta"
    flip.write_text("".join(f">{r.id}\n{ss8_to_ss3(r.labels['ss8'])}\n"
                            for r in read_labels(ss_data / "test.csv").records))
    head = tmp_path / "ss"
    r = run_cli("fit", "ss3+ss8", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--test", ss_data / "test.h5", flip, "--max-epochs", "3", *FAST, "-o", head)
    assert r.exit_code == 0, r.stderr
    assert "ss8 has nothing to evaluate" in r.stderr
    test = json.loads((head / "metrics" / "three_state.json").read_text())["outputs"]
    assert test["ss3"]["n"] > 0 and not test["ss8"]["n"]
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "--labels", flip, "--metrics", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert "three_state ss3: Q3" in r.stderr and "three_state ss8: nothing to evaluate" in r.stderr
    scored = json.loads((tmp_path / "m" / "three_state.json").read_text())["outputs"]
    assert scored["ss3"]["accuracy"] == test["ss3"]["accuracy"]
    r = run_cli("fit", "ss3+ss8", "--embeddings", ss_data / "test.h5", "--labels", flip, *FAST, "-o", tmp_path / "h2")
    assert r.exit_code == 1 and "holds 3-state labels only" in r.stderr


def test_proteins_embed_skipped_are_left_out_and_said_so_not_missing(run_cli, loc_data, tmp_path):
    """Proteins that `embed --long-policy skip` left out (listed in the file's `failed`
    attribute, with why) were "without an embedding": fit and predict failed until
    --skip-mismatched, which then warned as if ids did not match. They are left out, saying why."""
    from protrans_cli.embed import EmbedOptions, embed

    fasta = tmp_path / "t.fasta"
    records = (loc_data / "train.fasta").read_text().split(">")[1:]
    long_one = records[0].split("\n")
    records[0] = "\n".join([long_one[0], long_one[1] * 3, ""])  # 180 residues
    fasta.write_text("".join(">" + r for r in records))
    emb = tmp_path / "t.h5"
    embed(fasta, emb, EmbedOptions(model="onehot", per_residue=False, threads=1, max_length=100, long_policy="skip"))
    r = run_cli("fit", "loc", "--embeddings", emb, "--labels", fasta, *FAST, "--max-epochs", "2", "-o", tmp_path / "h")
    assert r.exit_code == 0, r.stderr
    assert ("1 label record(s) have no embedding because embed left them out (train0: skipped: 180 residues > "
            "--max-length 100): left out") in r.stderr
    assert "without an embedding" not in r.stderr
    r = run_cli("predict", tmp_path / "h", "--embeddings", emb, "--labels", fasta, "-o", tmp_path / "p.csv")
    assert r.exit_code == 0 and "1 label record(s) have no embedding because embed left them out" in r.stderr
    only = tmp_path / "only.fasta"  # labels of the skipped protein alone: said so, not "none matched"
    only.write_text(">" + records[0])
    r = run_cli("predict", tmp_path / "h", "--embeddings", emb, "--labels", only, "-o", tmp_path / "p2.csv")
    assert r.exit_code == 1 and "every labelled protein (1) was left out by embed" in r.stderr, r.stderr


def test_an_ss3_ss8_head_is_scored_on_a_csv_with_a_three_state_column_only(run_cli, ss_data, tmp_path):
    """A NetSurfP CSV without dssp8 (or a PISCES one without sst8) scored an ss3+ss8 head with
    "has no labels for ss8", record by record, where FLIP's 3-state files score ss3."""
    head = tmp_path / "ss"
    assert run_cli("fit", "ss3+ss8", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                   "--max-epochs", "2", *FAST, "-o", head).exit_code == 0
    rows = list(csv.reader((ss_data / "test.csv").read_text().splitlines()))
    keep = [i for i, name in enumerate(rows[0]) if name.strip() != "dssp8"]
    three = tmp_path / "three.csv"
    with open(three, "w", newline="") as fh:
        csv.writer(fh).writerows([[row[i] for i in keep] for row in rows])
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "--labels", three, "--metrics", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert "three ss3: Q3" in r.stderr and "three ss8: nothing to evaluate" in r.stderr
    r = run_cli("fit", "ss3+ss8", "--embeddings", ss_data / "test.h5", "--labels", three, *FAST, "-o", tmp_path / "h2")
    assert r.exit_code == 1 and "holds a 3-state column only (no 8-state one)" in r.stderr, r.stderr


def test_biotrainer_per_residue_file_with_masks_scores_only_the_masked_in_residues(run_cli, ss_data, tmp_path):
    """biotrainer's residue_to_class file carries per-residue TARGET= and MASK= in the header:
    the mask was dropped, and every residue was trained on and scored. SET=pred records (no
    label, to predict) were refused as an unknown set."""
    from protrans_cli.heads.labels import read_labels

    head = tmp_path / "ss3"
    assert run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                   "--max-epochs", "2", *FAST, "-o", head).exit_code == 0
    records = read_labels(ss_data / "test.csv").records
    bio, kept = tmp_path / "bio.fasta", 0
    with open(bio, "w") as fh:
        for r in records:
            mask = "".join("1" if i % 3 else "0" for i in range(len(r.sequence)))
            kept += mask.count("1")
            fh.write(f">{r.id} TARGET={ss8_to_ss3(r.labels['ss8'])} SET=test MASK={mask}\n{r.sequence}\n")
        fh.write(">unlabelled SET=pred\nMKTAY\n")
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "--labels", bio, "--metrics", tmp_path / "m")
    assert r.exit_code == 0, r.stderr
    assert "1 record(s) of SET=pred (to predict: no label) left out" in r.stderr
    assert json.loads((tmp_path / "m" / "bio.json").read_text())["outputs"]["ss3"]["n"] == kept
    bio.write_text(f">{records[0].id} TARGET=HHC MASK=10\n{records[0].sequence}\n")
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "--labels", bio)
    assert r.exit_code == 1 and "MASK= has 2 positions, TARGET= 3" in r.stderr


def test_predict_fasta_messages_name_the_fasta_not_a_temporary_file(run_cli, loc_data, tmp_path):
    """predict --fasta embeds into a temporary file that is gone when the command ends; its
    warnings and errors named that file (`.protrans-predict-x/embeddings.h5: ...`)."""
    head = tmp_path / "h"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "2", *FAST, "-o", head).exit_code == 0
    fasta = tmp_path / "q.fasta"
    fasta.write_text((loc_data / "test.fasta").read_text())
    r = run_cli("predict", head, "--fasta", fasta, "--labels", loc_data / "train.fasta", "-o", tmp_path / "p.csv")
    assert r.exit_code == 1, r.stderr
    assert ".protrans-predict-" not in r.stderr and f"the embeddings of {fasta}" in r.stderr, r.stderr


def test_predict_fasta_on_a_full_disk_names_the_folder_and_the_fasta_not_a_resume(run_cli, one_epoch_ss3, tmp_path,
                                                                                  monkeypatch):
    """A full disk while predict --fasta embedded named the hidden temporary file, removed as the
    command ended, and said that the work was kept there for --resume, which predict does not take."""
    from protrans_cli.io import disk

    def full(folder, nbytes):
        return "No space left on device (a reservation of 1.0 MiB failed)" if ".protrans-predict-" in str(folder) \
            else None

    monkeypatch.setattr(disk, "_reserve", full)
    fasta = tmp_path / "q.fa"
    fasta.write_text(">p\nMKVLAAGW\n")
    r = run_cli("predict", one_epoch_ss3, "--fasta", fasta, "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {tmp_path}: the embeddings of {fasta} (a temporary file in this folder, removed): no room "
        "for a new output file: No space left on device (a reservation of 1.0 MiB failed); nothing is kept: free some "
        "space and run the command again"), r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["q.fa"]


def test_predict_fasta_from_stdin_on_a_full_disk_names_the_folder(run_cli, one_epoch_ss3, tmp_path, monkeypatch):
    """stdin is copied beside -o to be read twice: a full disk there was "error: No space left on
    device", naming no file."""
    import errno
    import shutil

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfileobj", full)
    r = run_cli("predict", one_epoch_ss3, "--fasta", "-", "-o", tmp_path / "p.fa", input=b">p\nMKVLAAGW\n")
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {tmp_path}: the copy of <stdin> (a temporary file in this folder, removed): cannot write: "
        "No space left on device"), r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("below", ["sub", "sub/head"])
def test_an_output_below_a_file_is_a_usage_error_naming_the_file(run_cli, ss_data, tmp_path, below):
    """`-o afile/sub` was "afile: File exists" (exit 1), `-o afile/sub/head` "afile/sub: Not a
    directory", from making the head's parent folders; now what every output below a file says."""
    (tmp_path / "afile").write_text("x")
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--max-epochs", "1", *FAST, "-o", tmp_path / "afile" / below)
    assert r.exit_code == 2 and r.stderr.strip().splitlines()[-1] == \
        f"protrans: error: {tmp_path / 'afile'}: is not a directory, so no folder can go inside it", r.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["afile"]


def test_fit_mask_applies_to_a_flip_test_file_beside_csv_training_labels(run_cli, ss_data, tmp_path):
    """Training on a NetSurfP CSV with FLIP's test split as --test: the FLIP file's warning said
    to give --mask, and fit refused --mask because the training labels were not FLIP-style."""
    from protrans_cli.heads.labels import read_labels

    flip, mask, kept = tmp_path / "flip.fasta", tmp_path / "mask.fasta", 0
    with open(flip, "w") as fl, open(mask, "w") as mk:
        for r in read_labels(ss_data / "test.csv").records:
            bits = "".join("1" if i % 2 else "0" for i in range(len(r.sequence)))
            kept += bits.count("1")
            fl.write(f">{r.id}\n{ss8_to_ss3(r.labels['ss8'])}\n")
            mk.write(f">{r.id}\n{bits}\n")
    head = tmp_path / "h"
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--test", ss_data / "test.h5", flip, "--mask", mask, "--max-epochs", "2", *FAST, "-o", head)
    assert r.exit_code == 0, r.stderr
    assert json.loads((head / "metrics" / "flip.json").read_text())["outputs"]["ss3"]["n"] == kept
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--test", ss_data / "test.h5", ss_data / "test.csv", "--mask", mask, *FAST, "-o", tmp_path / "h2")
    assert r.exit_code == 2 and "none of the label files is FLIP-style labels whose ids it holds" in r.stderr


def test_fit_mask_column_with_no_netsurfp_label_file_is_refused(run_cli, loc_data, ss_data, tmp_path):
    """--mask-column picks NetSurfP CSV columns: beside DeepLoc labels alone it was read without
    them, every record trained on, without a word (as --mask beside no FLIP file is refused)."""
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--mask-column", "cb513_mask", "--max-epochs", "1", "--no-plots", *FAST, "-o", tmp_path / "h")
    assert r.exit_code == 2, r.stderr
    assert ("--mask-column cb513_mask: none of the label files is a NetSurfP CSV (deeploc), the only ones whose "
            "columns it picks") in r.stderr
    assert not (tmp_path / "h").exists()
    # NetSurfP labels: their columns are picked (a column named twice too)
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--mask-column", "disorder", "--mask-column", "disorder", "--max-epochs", "1", "--no-plots", *FAST,
                "-o", tmp_path / "h2")
    assert r.exit_code == 0, r.stderr


def _piped(data: bytes) -> str:
    """`data` behind a pipe whose writer is closed, by the path a process substitution gives
    (`<(zcat mask.fasta.gz)`: /dev/fd/N), readable once."""
    assert len(data) < 65536  # (what a pipe holds without a reader: a write of more would wait)
    read_end, write_end = os.pipe()
    os.write(write_end, data)
    os.close(write_end)
    return f"/dev/fd/{read_end}"


def test_a_piped_test_set_is_named_test(run_cli, loc_data, tmp_path):
    """`--test test.h5 <(zcat test.fasta.gz)`: its scores were named "labels" (metrics.json, the
    report), and finetune's after the descriptor ("63"); a test set of no file name is "test"."""
    from protrans_cli.heads.labels import name_of_test_set

    assert [name_of_test_set(p, "x") for p in ("-", "<stdin>", "/proc/self/fd/12", "/data/fd/63")] == \
        ["test", "test", "test", "x"]
    head = tmp_path / "h"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--test", loc_data / "test.h5", _piped((loc_data / "test.fasta").read_bytes()), "--max-epochs", "2",
                "-j", "1", "--bootstrap", "10", "--no-plots", "-o", head)
    assert r.exit_code == 0, r.stderr
    assert set(json.loads((head / "metrics.json").read_text())) == {"valid", "test"}
    assert "labels loc" not in r.stderr, r.stderr


def test_predict_fasta_with_a_model_of_another_width_says_to_leave_m_out(run_cli, loc_data, tmp_path):
    """`predict HEAD --fasta x.fa -m OTHER`: OTHER's 8-d embeddings against a head of onehot's 21 were
    refused with "embed with -m onehot, or give the sequences with --fasta", which were given."""
    import shutil

    model = tmp_path / "esm2_tiny"
    shutil.copytree(os.path.join(os.path.dirname(__file__), "data", "esm_reference"), model,
                    ignore=shutil.ignore_patterns("reference.safetensors", "input.fa", "*.md"))
    head = tmp_path / "h"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "2", "-j", "1", "--bootstrap", "10", "--no-plots", "-o", head).exit_code == 0
    r = run_cli("predict", head, "--fasta", loc_data / "test.fasta", "-m", model, "-o", tmp_path / "p.csv")
    assert r.exit_code == 2 and r.stderr.splitlines()[-1] == (
        f"protrans: error: -m {model} gives 8-d embeddings; the head was fit on 21-d embeddings of onehot: give -m a "
        "copy of that model, or leave -m out (--fasta embeds with the head's own)"), r.stderr
    assert not (tmp_path / "p.csv").exists()


def test_a_piped_mask_read_for_several_label_files_is_refused(run_cli, ss_data, tmp_path):
    """`--mask <(zcat mask.fasta.gz)` with --test: the training labels' read took the pipe's bytes
    and the test set was scored without the mask ("which holds none of its ids"), exit 0; a named
    pipe waited for a second writer for ever. One label file reads it once, as before."""
    from protrans_cli.heads.labels import read_labels

    flip, mask = tmp_path / "flip.fasta", b""
    with open(flip, "w") as fl:
        for r in read_labels(ss_data / "test.csv").records:
            fl.write(f">{r.id}\n{ss8_to_ss3(r.labels['ss8'])}\n")
            mask += f">{r.id}\n{'1' * len(r.sequence)}\n".encode()
    base = ("fit", "ss3", "--embeddings", ss_data / "test.h5", "--labels", flip, "--max-epochs", "1", *FAST)
    piped = _piped(mask)
    r = run_cli(*base, "--mask", piped, "--test", ss_data / "test.h5", flip, "-o", tmp_path / "h")
    assert r.exit_code == 2 and f"--mask {piped} is a pipe, which can be read once, and it is read for each " \
        "label file: give it as a file" in r.stderr, r.stderr
    assert not (tmp_path / "h").exists()
    r = run_cli(*base, "--mask", _piped(mask), "-o", tmp_path / "h")
    assert r.exit_code == 0 and "(1 = evaluated)" in r.stderr, r.stderr


def test_a_search_refuses_piped_labels_its_trials_would_read_again(run_cli, loc_data, tmp_path):
    """--search reads the labels for every trial: from a pipe (not stdin, which it replays) the
    second trial found it empty ("/dev/fd/63: is empty") after the first had trained."""
    piped = _piped((loc_data / "train.fasta").read_bytes())
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", piped, "-j", "1",
                "--max-epochs", "2", "--no-plots", "--bootstrap", "10", "--search", "hidden=8,16", "-o", tmp_path / "h")
    assert r.exit_code == 2 and f"{piped} is a pipe, which can be read once, and --search reads it for every " \
        "trial" in r.stderr, r.stderr
    assert not (tmp_path / "h.search").exists()


def test_a_value_head_without_a_spearman_to_validate_stops_by_the_loss(run_cli, loc_data, tmp_path):
    """One validation protein has no Spearman's rho: every epoch logged "value 0.0000", early
    stopping compared those zeros, and the member's line said "mean Spearman 0.0000"."""
    table = tmp_path / "v.csv"
    ids = [line[1:].split()[0] for line in (loc_data / "train.fasta").read_text().splitlines() if line[0] == ">"][:6]
    table.write_text("id,label\n" + "".join(f"{ident},{i * 0.5}\n" for i, ident in enumerate(ids)))
    head = tmp_path / "h"
    r = run_cli("fit", "value", "--embeddings", loc_data / "train.h5", "--labels", table, "--max-epochs", "3",
                *FAST, "-o", head)
    assert r.exit_code == 0, r.stderr
    assert "value 0.0000" not in r.stderr and "(by validation loss" in r.stderr, r.stderr
    lines = [json.loads(line) for line in (head / "metrics.jsonl").read_text().splitlines()]
    assert lines and not any("valid_value" in line for line in lines)


def test_value_labels_that_are_infinite_or_all_one_value_are_refused(run_cli, loc_data, tmp_path):
    """An `inf` regression label (as a number, it broke the targets' mean and scale) and targets that
    all hold one value (nothing to learn, and a zero scale to divide by): refused naming the
    label's record and line, or the output."""
    ids = [line[1:].split()[0] for line in (loc_data / "train.fasta").read_text().splitlines() if line[0] == ">"][:6]
    table = tmp_path / "v.csv"
    args = ["fit", "value", "--embeddings", loc_data / "train.h5", "--labels", table, "--max-epochs", "1", *FAST]
    for bad in ("inf", "-Infinity"):
        table.write_text("id,label\n" + "".join(f"{ident},{bad if i == 2 else i}\n" for i, ident in enumerate(ids)))
        r = run_cli(*args, "-o", tmp_path / "h")
        assert r.exit_code == 1 and f"v.csv:4, record '{ids[2]}': label {bad!r} is not a finite number" in r.stderr, \
            r.stderr
    table.write_text("id,label\n" + "".join(f"{ident},2.5\n" for ident in ids))
    r = run_cli(*args, "-o", tmp_path / "h")
    assert r.exit_code == 1 and "the training targets of value need at least two different values" in r.stderr, \
        r.stderr
    assert not (tmp_path / "h").exists()


def test_verbose_fit_prints_each_sets_per_class_table_and_confusion_matrix(run_cli, loc_data, tmp_path):
    """-v: each scored set's per-class precision/recall/F1 and its confusion matrix on stderr (a
    value output has none); without -v neither."""
    base = ["fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "--max-epochs",
            "1", "-j", "1", "--bootstrap", "10", "--no-plots"]
    r = run_cli(*base, "-v", "-o", tmp_path / "v")
    assert r.exit_code == 0, r.stderr
    for output in ("loc", "membrane"):
        assert f"valid {output}: per class" in r.stderr and "precision" in r.stderr, r.stderr
    # the loc matrix: each class a column and a row
    table = r.stderr.split("valid loc: confusion (rows true, columns predicted)", 1)[1].split("valid membrane", 1)[0]
    assert all(table.count(c) == 2 for c in ("Nucleus", "Extracellular", "Cell.membrane")), r.stderr
    r = run_cli(*base, "-o", tmp_path / "q")
    assert r.exit_code == 0 and "per class" not in r.stderr and "confusion" not in r.stderr, r.stderr


def test_fit_settings_errors_name_the_setting(run_cli, loc_data, tmp_path):
    """--cache-gb 1e300 was an OverflowError traceback; --valid-fraction 0.99 of 2 proteins said
    "too few training proteins" (exit 1) where the fraction left none to train on."""
    args = ["fit", "protein", "--embeddings", loc_data / "train.h5", "-j", "1", "-o", tmp_path / "h"]
    table = tmp_path / "t.csv"
    table.write_text("id,label\ntrain0,A\ntrain1,B\n")
    r = run_cli(*args, "--labels", table, "--cache-gb", "1e300")
    assert r.exit_code == 2 and "--cache-gb must be a size in GB, 0 or more, got 1e+300" in r.stderr, r.stderr
    r = run_cli(*args, "--labels", table, "--valid-fraction", "0.99")
    assert r.exit_code == 2 and "--valid-fraction 0.99 holds out 2 of the 2 training proteins" in r.stderr, r.stderr


def test_a_constant_test_set_is_undefined_in_the_scatter_title_too(run_cli, loc_data, tmp_path, monkeypatch):
    from protrans_cli.heads import fit as fit_module

    titles = []
    monkeypatch.setattr(fit_module, "save_scatter_png", lambda true, predicted, path, title, **kw: titles.append(title))
    ids = [line[1:].split()[0] for line in (loc_data / "train.fasta").read_text().splitlines() if line[0] == ">"]
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("id,label\n" + "".join(f"{i},{n % 7}\n" for n, i in enumerate(ids[:40])))
    test.write_text("id,label\n" + "".join(f"{i},1.0\n" for i in ids[40:50]))
    r = run_cli("fit", "value", "--embeddings", loc_data / "train.h5", "--labels", train, "--test",
                loc_data / "train.h5", test, "--max-epochs", "2", *FAST, "-o", tmp_path / "h")
    assert r.exit_code == 0, r.stderr
    assert "test value: Spearman undefined" in r.stderr and "test value: Spearman undefined" in titles


def test_no_plots_writes_every_number_and_no_png(run_cli, loc_data, tmp_path):
    # Run as a user runs it, in a fresh process: with --no-plots matplotlib is never imported
    # (the plots were 13-20% of a small fit), and the JSON files hold the same numbers.
    import subprocess
    import sys

    # (fit, then predict, in one process: a second process cost as much as the two commands)
    script = ("import json, sys\nfrom protrans_cli.cli import main\n"
              "for args in json.loads(sys.argv[1]):\n"
              "    try:\n        main(args)\n    except SystemExit as e:\n        assert not e.code, (args[0], e.code)\n"
              "    assert 'matplotlib' not in sys.modules, f'matplotlib imported by {args[0]}'\n")
    head = tmp_path / "loc"
    common = ["--embeddings", str(loc_data / "train.h5"), "--labels", str(loc_data / "train.fasta"),
              "--max-epochs", "5", "-j", "1", "--bootstrap", "50"]
    commands = [["fit", "loc", *common, "-o", str(head), "--no-plots"],
                ["predict", str(head), "--embeddings", str(loc_data / "test.h5"), "--labels",
                 str(loc_data / "test.fasta"), "--metrics", str(tmp_path / "m"), "--no-plots"]]
    r = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert not list(head.rglob("*.png")) and not list((tmp_path / "m").rglob("*.png"))
    assert json.loads((head / "metrics.json").read_text())["valid"]["loc"]["n"] > 0
    _assert_loc_test_scores(tmp_path / "m" / "test.json")
    # the same fit with plots: the same head, and the PNGs besides
    r = run_cli("fit", "loc", *common, "-o", tmp_path / "plotted")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "plotted" / "curves.png").is_file() and (tmp_path / "plotted" / "metrics" / "valid.loc.png").is_file()
    assert ((tmp_path / "plotted" / "weights.safetensors").read_bytes() == (head / "weights.safetensors").read_bytes())


def test_a_label_file_without_ids_finds_the_proteins_embed_truncated(run_cli, tmp_path, monkeypatch):
    """FLIP's CSVs carry sequences, not ids: a protein embedded with --long-policy truncate has
    its kept prefix's checksum, and was reported without an embedding. It is found by that
    prefix and its recorded full length."""
    rng = np.random.default_rng(5)
    long_seq = "".join(rng.choice(list(AA), size=60))
    others = ["".join(rng.choice(list(AA), size=int(rng.integers(12, 25)))) for _ in range(20)]
    rows = ["sequence,target,set,validation", f"{long_seq},1.5,train,False"]
    rows += [f"{s},{i / 10:.2f},train,False" for i, s in enumerate(others)]
    labels = tmp_path / "flip.csv"
    labels.write_text("\n".join(rows) + "\n")
    fasta = tmp_path / "all.fa"
    fasta.write_text(f">long\n{long_seq}\n" + "".join(f">o{i}\n{s}\n" for i, s in enumerate(others)))
    out = tmp_path / "t.h5"
    r = run_cli("embed", fasta, "-m", "onehot", "--per-protein", "--max-length", "30", "--long-policy", "truncate",
                "-o", out)
    assert r.exit_code == 0, r.stderr
    from protrans_cli.heads.data import match_labels
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.tasks import get_task
    from protrans_cli.io.h5 import EmbeddingsReader

    with EmbeddingsReader(out) as reader:
        items, report = match_labels(read_labels(labels, "auto"), reader, get_task("value"))
    assert report.missing == [] and len(items) == 21
    truncated = [m for m in items if m.key == "long"]
    assert len(truncated) == 1 and truncated[0].length == 30 and truncated[0].targets["value"] == 1.5
    assert len(report.truncated_used) == 1 and report.truncated_used[0].endswith("(30 of 60)")
    # before: only whole sequences were looked up, and the long protein had no embedding
    import protrans_cli.heads.data as data_module

    whole_only = data_module._checksum_maps

    def without_prefixes(*args):
        whole, _ = whole_only(*args)
        return whole, {}

    monkeypatch.setattr(data_module, "_checksum_maps", without_prefixes)
    with EmbeddingsReader(out) as reader:
        _, report = match_labels(read_labels(labels, "auto"), reader, get_task("value"), on_mismatch="skip")
    assert len(report.missing) == 1


def test_a_label_sequence_with_gaps_and_a_rare_residue_finds_its_protein(run_cli, tmp_path):
    """embed stores the checksum of the normalised sequence with U/Z/O/B kept: a label file's
    sequence with gaps (or a final '*') and a rare residue matched neither the checksum as read
    nor the one with rare residues as X, and its protein was said to have no embedding."""
    rng = np.random.default_rng(7)
    rare = "".join(rng.choice(list(AA), size=10)) + "U" + "".join(rng.choice(list(AA), size=10))
    others = ["".join(rng.choice(list(AA), size=int(rng.integers(12, 25)))) for _ in range(6)]
    fasta = tmp_path / "all.fa"
    fasta.write_text(f">rare\n{rare}\n" + "".join(f">o{i}\n{s}\n" for i, s in enumerate(others)))
    out = tmp_path / "r.h5"
    assert run_cli("embed", fasta, "-m", "onehot", "--per-protein", "-o", out).exit_code == 0
    from protrans_cli.heads.data import match_labels
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.tasks import get_task

    for written in (f"{rare[:5]}-{rare[5:]}", f"{rare.lower()}*"):
        labels = tmp_path / "flip.csv"
        labels.write_text("sequence,target,set,validation\n" + f"{written},1.5,train,False\n"
                          + "".join(f"{s},{i / 10:.2f},train,False\n" for i, s in enumerate(others)))
        with EmbeddingsReader(out) as reader:
            items, report = match_labels(read_labels(labels, "auto"), reader, get_task("value"))
        assert report.missing == [] and [m.targets["value"] for m in items if m.key == "rare"] == [1.5], written


def test_matching_by_prefix_passes_over_the_truncated_proteins_once(run_cli, tmp_path, monkeypatch):
    """A record looked up by its truncated protein's prefix gathered the file's kept lengths (and,
    not found, every prefix) anew from all the truncated proteins: 8 s for 10,000 FLIP records,
    growing with the square. The map is walked once, however many records go through it."""
    rng = np.random.default_rng(9)
    seqs = ["".join(rng.choice(list(AA), size=40)) for _ in range(40)]
    absent = ["".join(rng.choice(list(AA), size=40)) for _ in range(10)]
    fasta = tmp_path / "all.fa"
    fasta.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(seqs)))
    out = tmp_path / "t.h5"
    r = run_cli("embed", fasta, "-m", "onehot", "--per-protein", "--max-length", "30", "--long-policy", "truncate",
                "-o", out)
    assert r.exit_code == 0, r.stderr
    labels = tmp_path / "flip.csv"
    labels.write_text("sequence,target,set,validation\n"
                      + "".join(f"{s},{i % 5},train,False\n" for i, s in enumerate(seqs + absent)))
    import protrans_cli.heads.data as data_module
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.tasks import get_task

    passes = []

    class Counted(dict):
        def __iter__(self):
            passes.append(1)
            return super().__iter__()

        def items(self):
            passes.append(1)
            return super().items()

    maps = data_module._checksum_maps
    monkeypatch.setattr(data_module, "_checksum_maps", lambda *args: (maps(*args)[0], Counted(maps(*args)[1])))
    with EmbeddingsReader(out) as reader:
        items, report = data_module.match_labels(read_labels(labels, "auto"), reader, get_task("value"),
                                                 on_mismatch="skip")
    assert len(items) == 40 and len(report.missing) == 10 and len(report.truncated_used) == 40
    assert len(passes) <= 2


def test_a_protein_whose_labels_were_refused_as_truncated_is_not_also_said_to_have_no_label(run_cli, tmp_path):
    """With --skip-mismatched a truncated protein's per-residue labels are skipped as truncated;
    a second note then said the protein had no label at all."""
    rng = np.random.default_rng(2)
    long_seq = "".join(rng.choice(list(AA), size=60))
    others = ["".join(rng.choice(list(AA), size=int(rng.integers(12, 25)))) for _ in range(20)]
    fasta = tmp_path / "a.fa"
    fasta.write_text(f">long\n{long_seq}\n" + "".join(f">o{i}\n{s}\n" for i, s in enumerate(others)))
    out = tmp_path / "r.h5"
    r = run_cli("embed", fasta, "-m", "onehot", "--max-length", "30", "--long-policy", "truncate", "-o", out)
    assert r.exit_code == 0, r.stderr
    _netsurfp(tmp_path / "n.csv", [long_seq] + others)
    r = run_cli("fit", "ss3", "--embeddings", out, "--labels", tmp_path / "n.csv", "--max-epochs", "1",
                "--max-residues", "300", "-j", "1", "--skip-mismatched", "-o", tmp_path / "head")
    assert r.exit_code == 0, r.stderr
    assert "truncated" in r.stderr and "have no label" not in r.stderr, r.stderr


def test_a_label_sequence_with_a_rare_residue_matches_its_own_protein_not_the_one_with_x(tmp_path):
    """A label record found by its sequence, whose U matches a protein embedded with U and (as X)
    another embedded with X for it: the protein with U is its own. Its checksums were a set, and
    the hash seed chose, each record alike likely to take the protein with X (16 here: all right
    by chance once in 65,536 runs)."""
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.heads.data import match_labels
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.tasks import get_task

    rng = np.random.default_rng(7)
    seqs = ["".join(rng.choice(list(AA), size=int(rng.integers(12, 25)))) + "U" + "".join(rng.choice(list(AA), size=5))
            for _ in range(16)]
    fasta = tmp_path / "sel.fa"
    fasta.write_text("".join(f">selU{i}\n{s}\n>selX{i}\n{s.replace('U', 'X')}\n" for i, s in enumerate(seqs)))
    out = tmp_path / "sel.h5"
    embed(fasta, out, EmbedOptions(model="onehot", per_residue=False))
    # (half of them with a gap: their checksum is the normalised sequence's, rare residues kept)
    rows = ["sequence,target,set,validation"] + [f"{s[:3] + '-' + s[3:] if i % 2 else s},{i},train,False"
                                                 for i, s in enumerate(seqs)]
    labels = tmp_path / "sel.csv"
    labels.write_text("\n".join(rows) + "\n")
    with EmbeddingsReader(out) as reader:
        items, report = match_labels(read_labels(labels, "auto"), reader, get_task("value"))
    assert {m.key: m.targets["value"] for m in items} == {f"selU{i}": i for i in range(16)}
    assert report.by_checksum == 16 and report.problems == 0


def test_a_group_named_like_a_label_record_is_no_embedding_for_it(run_cli, tmp_path):
    """predict --labels over a grouped file where a label record's id names a group among the
    proteins (another tool's "P1/1-100"): the group was taken for the record's embedding ("has
    shape scalar, expected 21", exit 1, after the predictions were written); now the record has
    no embedding, the group is no unlabelled protein and no near miss of the id."""
    from conftest import ROOT

    example = ROOT / "protrans_cli" / "example_data"
    assert run_cli("embed", example / "loc_train.fasta", "-m", "onehot", "--per-protein",
                   "-o", tmp_path / "train.h5").exit_code == 0
    assert run_cli("embed", example / "loc_test.fasta", "-m", "onehot", "--per-protein",
                   "-o", tmp_path / "test.h5").exit_code == 0
    head = tmp_path / "head"
    assert run_cli("fit", "loc", "--embeddings", tmp_path / "train.h5", "--labels", example / "loc_train.fasta",
                   "--max-epochs", "1", "-j", "1", "-o", head).exit_code == 0
    with h5py.File(tmp_path / "test.h5", "a") as f:
        vector = f["per_protein/EX0004"][()]
        del f["per_protein/EX0004"]
        f.create_dataset("per_protein/EX0004/x", data=vector)
    args = ["predict", head, "--embeddings", tmp_path / "test.h5", "--labels", example / "loc_test.fasta"]
    r = run_cli(*args, "-o", tmp_path / "p.csv")
    assert r.exit_code == 1
    assert "1 label record does not match the embeddings: 1 without an embedding (EX0004) (" in r.stderr, r.stderr
    r = run_cli(*args, "--skip-mismatched", "-o", tmp_path / "p.csv")
    assert r.exit_code == 0, r.stderr
    assert "have no label" not in r.stderr and "99 proteins" in r.stderr


def test_test_proteins_that_are_validation_proteins_are_named(run_cli, ss_data, tmp_path):
    """--valid X --test X (or sets that share proteins): the validation set chose the epoch kept,
    so the test score is not an independent one; it was reported without a word."""
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--valid", ss_data / "test.h5", ss_data / "test.csv", "--test", ss_data / "test.h5",
                ss_data / "test.csv", "--max-epochs", "1", "--bootstrap", "10", "-j", "1", "--no-plots",
                "-o", tmp_path / "h")
    assert r.exit_code == 0, r.stderr
    assert "test: 20 of its 20 proteins are in the validation set too (20 by id: " in r.stderr, r.stderr
    assert "chose the epoch kept" in r.stderr and "in the training set too" not in r.stderr
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--test", ss_data / "test.h5", ss_data / "test.csv", "--max-epochs", "1", "--bootstrap", "10",
                "-j", "1", "--no-plots", "-o", tmp_path / "h2")
    assert r.exit_code == 0, r.stderr
    assert "in the validation set too" not in r.stderr


def test_valid_fraction_with_valid_warns_and_resume_does_not_compare_it(run_cli, ss_data, tmp_path):
    """--valid is the validation set: --valid-fraction beside it changes nothing. It was ignored
    without a word, and the same fit resumed without it was refused "other settings
    (valid_fraction)" (as --folds already had it)."""
    from protrans_cli.heads.fit import _changed

    args = ("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv", "--valid",
            ss_data / "test.h5", ss_data / "test.csv", "--max-epochs", "1", "--bootstrap", "10", "-j", "1",
            "--no-plots", "-o", tmp_path / "h")
    r = run_cli(*args, "--valid-fraction", "0.3")
    assert r.exit_code == 0, r.stderr
    assert "--valid-fraction does nothing with --valid" in r.stderr
    r = run_cli(*args, "--resume")
    assert r.exit_code == 0 and "is complete: nothing to resume" in r.stderr, r.stderr
    # (an interrupted one alike; without --valid the hold-out's share is still compared)
    given = ["v.h5", "v.csv"]
    assert _changed({"valid_fraction": 0.3, "valid": given}, {"valid_fraction": 0.1, "valid": given}) == []
    assert _changed({"valid_fraction": 0.3, "valid": None}, {"valid_fraction": 0.1, "valid": None}) == ["valid_fraction"]


def test_valid_fraction_beside_a_files_own_validation_records_is_not_compared_on_resume(ss_data, tmp_path,
                                                                                        monkeypatch):
    """A FLIP file's VALIDATION=True records are the validation set: --valid-fraction holds nothing
    out. The same fit resumed without it was refused "other settings or inputs (valid_fraction)"
    (exit 2), finished or interrupted; where the fraction held proteins out it is still compared."""
    flip = _flip_with_splits(ss_data, tmp_path)

    def config(**kw):
        return FitConfig(**{**dict(task="ss3", max_epochs=2, threads=1, n_bootstrap=10), **kw})

    done = fit(config(valid_fraction=0.3), ss_data / "train.h5", flip, tmp_path / "done")
    assert fit(config(resume=True), ss_data / "train.h5", flip, tmp_path / "done").metrics == done.metrics
    with _stopped_after(monkeypatch, member=0, epoch=1), pytest.raises(KeyboardInterrupt):
        fit(config(valid_fraction=0.3), ss_data / "train.h5", flip, tmp_path / "cut")
    assert fit(config(resume=True), ss_data / "train.h5", flip, tmp_path / "cut").metrics == done.metrics
    # (labels that declare no validation set: the fraction chose the hold-out)
    fit(config(valid_fraction=0.3), ss_data / "train.h5", ss_data / "train.csv", tmp_path / "held")
    with pytest.raises(UsageError, match=r"other settings or inputs \(valid_fraction\)"):
        fit(config(resume=True), ss_data / "train.h5", ss_data / "train.csv", tmp_path / "held")


def test_valid_fraction_beside_a_files_own_validation_records_warns_that_it_is_ignored(run_cli, ss_data, tmp_path):
    """The file's VALIDATION=True records are the validation set: a --valid-fraction given beside
    them was ignored without a word (as beside --valid, which warned)."""
    flip = _flip_with_splits(ss_data, tmp_path)
    args = ("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", flip, "--max-epochs", "1", *FAST,
            "--bootstrap", "10", "--no-plots")
    r = run_cli(*args, "--valid-fraction", "0.3", "-o", tmp_path / "a")
    assert r.exit_code == 0 and "--valid-fraction does nothing with" in r.stderr and \
        "flip.fasta's own validation records" in r.stderr, r.stderr
    r = run_cli(*args, "-o", tmp_path / "b")
    assert r.exit_code == 0 and "--valid-fraction does nothing" not in r.stderr, r.stderr


def test_valid_fraction_holds_out_proteins_of_one_sequence_together(run_cli, tmp_path):
    """The --valid-fraction hold-out drew proteins one by one: of a sequence given twice (CB513
    repeats 79), one copy was held out and its twin trained on (CB513: 12 of the 51 held out), so
    early stopping scored training proteins. Copies now fall on one side together."""
    from protrans_cli.embed import EmbedOptions, embed

    rng = np.random.default_rng(3)
    seqs = ["".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), 20 + i)) for i in range(20)]
    # 20 sequences, each under two ids: 40 proteins, 20 pairs
    (tmp_path / "e.fa").write_text("".join(f">p{i}a\n{s}\n>p{i}b\n{s}\n" for i, s in enumerate(seqs)))
    embed(tmp_path / "e.fa", tmp_path / "e.h5", EmbedOptions(model="onehot", per_protein=True, threads=1))
    (tmp_path / "l.csv").write_text("".join(f"p{i}a,{'AB'[i % 2]}\np{i}b,{'AB'[i % 2]}\n" for i in range(20)))
    head = tmp_path / "h"
    r = run_cli("fit", "protein", "--embeddings", tmp_path / "e.h5", "--labels", tmp_path / "l.csv",
                "--max-epochs", "1", "--valid-fraction", "0.25", "--no-plots", "-j", "1", "-o", head)
    assert r.exit_code == 0, r.stderr
    held_out = json.loads((head / "config.json").read_text())["training"]["held_out"]
    assert len(held_out) == 10 and "proteins of one sequence on one side" in r.stderr
    pairs = {ident[:-1] for ident in held_out}
    assert all(f"{p}a" in held_out and f"{p}b" in held_out for p in pairs)  # both copies, or neither
    assert "in the training set too" not in r.stderr


def test_predict_names_the_truncated_proteins_of_a_stacked_file_with_their_own_lengths(run_cli, loc_data, tmp_path):
    """A stacked file's truncated proteins (its truncated_from column) are named by predict with
    the residues kept and their full length, each its own row's, wherever the rows are."""
    head = tmp_path / "loc"
    fit(FitConfig(task="loc", max_epochs=1, threads=1, n_bootstrap=10, plots=False), loc_data / "train.h5",
        loc_data / "train.fasta", head)
    fasta = tmp_path / "q.fa"
    fasta.write_text(">a\nMKTAYIAK\n>b\nMKTAYIAKQRQISFVKSHFSRQ\n>c\nMAAGW\n>d\nMKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ\n")
    r = run_cli("embed", fasta, "-m", "onehot", "--per-protein", "--layout", "stacked", "--long-policy", "truncate",
                "--max-length", "10", "-o", tmp_path / "q.h5", "-j", "1")
    assert r.exit_code == 0, r.stderr
    r = run_cli("predict", head, "--embeddings", tmp_path / "q.h5", "-o", tmp_path / "p.csv")
    assert r.exit_code == 0, r.stderr
    assert "2 protein(s) were truncated by embed" in r.stderr
    assert "b (10 of 22)" in r.stderr and "d (10 of 33)" in r.stderr, r.stderr


def test_predictions_in_memory_are_what_predict_writes(run_cli, ss_data, loc_data, tmp_path):
    """predict_embeddings on a file's arrays and predict_sequences on its FASTA (a notebook's
    calls, no file on either side) give the letters, classes and probabilities `protrans
    predict` writes."""
    from protrans_cli import predict_embeddings, predict_sequences
    from protrans_cli.io.h5 import escape_key

    ss_head, loc_head = tmp_path / "ss", tmp_path / "loc"
    assert run_cli("fit", "ss3+ss8", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                   "--max-epochs", "2", *FAST, "-o", ss_head).exit_code == 0
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "3", "-j", "1", "--bootstrap", "10", "-o", loc_head).exit_code == 0
    r = run_cli("predict", ss_head, "--embeddings", ss_data / "test.h5", "--head-output", "ss8", "-o",
                tmp_path / "p.fa", "--probabilities", tmp_path / "p.h5")
    assert r.exit_code == 0, r.stderr
    lines = (tmp_path / "p.fa").read_text().splitlines()
    written = dict(zip((line[1:] for line in lines[::2]), lines[1::2]))
    with EmbeddingsReader(ss_data / "test.h5") as reader:
        arrays = {ident: array for ident, array, _ in reader.items("per_residue")}
    got = predict_embeddings(ss_head, arrays, threads=1, max_residues=300)
    assert got.keys() == written.keys() == arrays.keys() and len(got) == 20
    with h5py.File(tmp_path / "p.h5") as f:
        assert f.attrs["task"] == "ss3+ss8" and f.attrs["classes_ss8"] == "".join(SS8)
        for ident, prediction in got.items():
            assert prediction["ss8"].labels == written[ident] and len(written[ident]) == len(arrays[ident])
            assert set(prediction["ss3"].labels) <= set(SS3) and prediction["ss3"].classes == SS3
            key = escape_key(ident)
            assert f["ss8"][key].attrs["id"] == f["ss3"][key].attrs["id"] == ident  # (docs: dataset attribute id)
            np.testing.assert_allclose(prediction["ss8"].probabilities, f["ss8"][key][()], atol=1e-6)
            np.testing.assert_allclose(prediction["ss3"].probabilities, f["ss3"][key][()], atol=1e-6)
    # a list in, a list out; the same sequences embedded here give the same predictions
    fasta = dict(line.split("\n", 1) for line in ss_data.joinpath("test.fa").read_text().split(">")[1:])
    sequences = {header.split()[0]: body.replace("\n", "") for header, body in fasta.items()}
    again = predict_sequences(ss_head, list(sequences.values()), threads=1)
    assert [p["ss8"].labels for p in again] == [written[i] for i in sequences]
    # per protein: class and probabilities as the CSV gives them (6 significant digits)
    assert run_cli("predict", loc_head, "--embeddings", loc_data / "test.h5", "-o", tmp_path / "l.csv").exit_code == 0
    rows = {row["id"]: row for row in csv.DictReader((tmp_path / "l.csv").read_text().splitlines())}
    with EmbeddingsReader(loc_data / "test.h5") as reader:
        vectors = {ident: array for ident, array, _ in reader.items("per_protein")}
    for ident, prediction in predict_embeddings(loc_head, vectors, threads=1).items():
        assert prediction["loc"].labels == rows[ident]["loc"] and prediction["membrane"].labels == rows[ident]["membrane"]
        np.testing.assert_allclose(prediction["loc"].probabilities,
                                   [float(rows[ident][f"loc:{c}"]) for c in LOCATIONS], rtol=1e-5, atol=1e-6)
    # wrong calls: one line each, naming the protein
    with pytest.raises(UsageError, match=r"protein 'x': an embedding of shape \(5, 7\), the head takes \(L, D\) "
                                         r"with D = 21"):
        predict_embeddings(ss_head, {"x": np.zeros((5, 7))})
    with pytest.raises(UsageError, match=r"protein 'x': an embedding of shape \(2, 5, 21\).*several layers"):
        predict_embeddings(ss_head, {"x": np.zeros((2, 5, 21))})
    with pytest.raises(UsageError, match="protein 0: its embedding holds NaN"):
        predict_embeddings(loc_head, [np.full(21, np.nan)])
    with pytest.raises(UsageError, match="an embeddings file goes to protrans_cli.predict"):
        predict_embeddings(loc_head, str(loc_data / "test.h5"))
    with pytest.raises(UsageError, match=r"protein 'e': an embedding of no residue has no mean"):
        predict_embeddings(loc_head, {"e": np.zeros((0, 21), np.float32)})
    with pytest.raises(UsageError, match=r"protein 0: its embedding is not an array of numbers \(list\)"):
        predict_embeddings(loc_head, [["a"] * 21])
    for bad in (0, True, 2.5):
        with pytest.raises(UsageError, match=f"max_residues must be a whole number of at least 1, got {bad!r}"):
            predict_embeddings(ss_head, {"x": np.zeros((5, 21))}, max_residues=bad)


def test_a_cls_pooled_head_in_memory_refuses_rows_it_would_average(run_cli, loc_data, tmp_path):
    """A head fit on cls-pooled vectors (embed --pooling cls) never saw a mean of rows: an (L, D)
    array given to predict_embeddings was averaged and predicted on silently (a value head said
    13.3 where its cls vector gives 0.107), where predict refuses a file's mean for it."""
    from protrans_cli import predict_embeddings

    head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                   "--max-epochs", "1", "-j", "1", "--bootstrap", "10", "--no-plots", "-o", head).exit_code == 0
    rows = np.random.default_rng(0).random((7, 21)).astype(np.float32)
    assert predict_embeddings(head, {"m": rows})["m"]["loc"].labels  # a mean-pooled head averages them
    config = json.loads((head / "config.json").read_text())
    config["embedding"]["pooling"] = "cls: the hidden state of the [CLS] token"
    (head / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"protein 'm': an embedding of shape \(7, 21\) would be averaged over its "
                                         r"rows, and the head was fit on per-protein vectors pooled by cls"):
        predict_embeddings(head, {"m": rows})
    got = predict_embeddings(head, {"m": rows[0]})["m"]["loc"]  # its (D,) cls vector is read as it is
    assert got.probabilities.shape == (len(LOCATIONS),)


def test_predict_sequences_with_a_model_of_another_width_says_so(loc_data, tmp_path, tmp_path_factory):
    """predict_sequences(head, seqs, model=X) where X's embeddings are wider than the head's input
    said "protein 0: an embedding of shape (32,) ...": the protein blamed for the model given."""
    from conftest import save_tiny_model
    from protrans_cli import predict_sequences
    from protrans_cli.heads.fit import FitConfig, fit

    head = tmp_path / "loc"
    fit(FitConfig(task="loc", max_epochs=1, threads=1, plots=False), loc_data / "train.h5", loc_data / "train.fasta",
        head)
    bert = save_tiny_model(tmp_path_factory, "bert")
    with pytest.raises(UsageError, match=r"gives 32-d embeddings; the head was fit on 21-d embeddings of onehot: "
                                         r"give model= a copy of that model, or leave model out$"):
        predict_sequences(head, ["MKTAYIAK"], model=str(bert), threads=1)
    assert predict_sequences(head, ["MKTAYIAK"], threads=1)[0]["loc"].labels in LOCATIONS


def test_predict_embeddings_takes_torch_tensors_as_a_model_gives_them(loc_data, tmp_path):
    # a tensor that requires grad was a RuntimeError from inside numpy ("Can't call numpy() on
    # Tensor that requires grad"); a bfloat16 one "its embedding is not an array of numbers"
    from protrans_cli import predict_embeddings

    head = tmp_path / "loc"
    fit(FitConfig(task="loc", max_epochs=1, threads=1, n_bootstrap=10, plots=False), loc_data / "train.h5",
        loc_data / "train.fasta", head)
    with EmbeddingsReader(loc_data / "test.h5") as reader:
        vector = reader.get("test0", "per_protein")
    want = predict_embeddings(head, [vector], threads=1)[0]["loc"].probabilities
    for tensor, tolerance in ((torch.from_numpy(vector).requires_grad_(), 1e-6),
                              (torch.from_numpy(vector).bfloat16(), 1e-2)):
        got = predict_embeddings(head, [tensor], threads=1)[0]["loc"].probabilities
        np.testing.assert_allclose(got, want, atol=tolerance)



def test_a_per_protein_head_given_per_residue_rows_reads_their_mean(run_cli, loc_data, tmp_path):
    """A per-protein head given per-residue embeddings (a file without per-protein vectors, or
    (L, D) arrays in memory) predicts from each protein's mean row, as from the vectors embed
    would have written: numpy's mean of the stored rows is the reference."""
    from protrans_cli import predict_embeddings
    from protrans_cli.embed import EmbedOptions, embed

    head = tmp_path / "loc"
    fit(FitConfig(task="loc", max_epochs=1, threads=1, n_bootstrap=10, plots=False), loc_data / "train.h5",
        loc_data / "train.fasta", head)
    rows_file = tmp_path / "rows.h5"
    embed(loc_data / "test.fasta", rows_file, EmbedOptions(model="onehot", per_protein=False, threads=1))
    with EmbeddingsReader(rows_file) as reader:
        assert tuple(reader.kinds) == ("per_residue",)
        rows = {ident: array for ident, array, _ in reader.items("per_residue")}
    means = {ident: a.astype(np.float64).mean(0).astype(np.float32) for ident, a in rows.items()}
    want = predict_embeddings(head, means, threads=1)
    got = predict_embeddings(head, rows, threads=1)
    assert got.keys() == want.keys() and len(got) == 45
    for ident in want:
        np.testing.assert_allclose(got[ident]["loc"].probabilities, want[ident]["loc"].probabilities, atol=1e-6)
    r = run_cli("predict", head, "--embeddings", rows_file, "-o", tmp_path / "p.csv", "-j", "1")
    assert r.exit_code == 0, r.stderr
    written = {row["id"]: row for row in csv.DictReader((tmp_path / "p.csv").read_text().splitlines())}
    assert written.keys() == want.keys()
    for ident, prediction in want.items():
        assert written[ident]["loc"] == prediction["loc"].labels
        np.testing.assert_allclose([float(written[ident][f"loc:{c}"]) for c in LOCATIONS],
                                   prediction["loc"].probabilities, rtol=1e-5, atol=1e-6)

def test_only_embedded_leaves_out_records_without_an_embedding_and_no_other_mismatch(run_cli, ss_data, tmp_path):
    """A head trained on part of a label file needed --skip-mismatched, which also hides labels of
    the wrong length; --only-embedded (on_mismatch="missing") leaves out only the records that
    have no embedding."""
    from protrans_cli.embed import EmbedOptions, embed

    records = ss_data.joinpath("train.fa").read_text().split(">")[1:]
    part = tmp_path / "part.fa"
    part.write_text("".join(">" + r for r in records[:30]))
    embed(part, tmp_path / "part.h5", EmbedOptions(model="onehot", per_protein=False, threads=1))
    args = ["fit", "ss3", "--embeddings", tmp_path / "part.h5", "--labels", ss_data / "train.csv", "--max-epochs", "1",
            *FAST, "--no-plots"]
    r = run_cli(*args, "-o", tmp_path / "h0")
    assert r.exit_code == 1 and "40 label records do not match the embeddings: 40 without an embedding" in r.stderr
    assert "--only-embedded (on_mismatch='missing') leaves out the records without an embedding" in r.stderr
    r = run_cli(*args, "--only-embedded", "-o", tmp_path / "h1")
    assert r.exit_code == 0, r.stderr
    assert "40 label record(s) without an embedding left out (--only-embedded; 30 matched)" in r.stderr
    # predict --labels scores the embedded part of the file the same way
    r = run_cli("predict", tmp_path / "h1", "--embeddings", tmp_path / "part.h5", "--labels", ss_data / "train.csv",
                "--only-embedded", "--metrics", tmp_path / "m")
    assert r.exit_code == 0 and json.loads((tmp_path / "m" / "train.json").read_text())["outputs"]["ss3"]["n_proteins"] == 30
    # a label of the wrong length is still an error
    with EmbeddingsReader(tmp_path / "part.h5") as reader:
        first = next(iter(reader.items("per_residue")))
    flip = tmp_path / "labels.fasta"
    flip.write_text(f">{first[0]} SET=train VALIDATION=False\n{'C' * (len(first[1]) - 1)}\n"
                    ">nope SET=train VALIDATION=False\nCCH\n")
    r = run_cli("fit", "ss3", "--embeddings", tmp_path / "part.h5", "--labels", flip, "--only-embedded",
                "--max-epochs", "1", *FAST, "--no-plots", "-o", tmp_path / "h2")
    assert r.exit_code == 1 and "whose label length differs" in r.stderr and "--skip-mismatched" in r.stderr
    with pytest.raises(UsageError, match="^on_mismatch must be one of error, skip, missing, got 'some'$"):
        FitConfig(task="ss3", on_mismatch="some").check()


def test_predict_fasta_output_escapes_line_breaks_and_escapes_in_ids(run_cli, ss_data, tmp_path):
    """An embeddings file's ids (its `id` attributes) may hold anything: `a\\n>X\\nCCC` wrote a
    forged record X into the per-residue FASTA output, and a terminal escape went in raw. The
    id is written escaped, one record per protein."""
    head = tmp_path / "ss3"
    assert run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                   "--max-epochs", "1", *FAST, "-o", head).exit_code == 0
    hostile = tmp_path / "hostile.h5"
    ids = ["a\n>FORGED\nCCCC", "b\x1b[31mred"]
    with h5py.File(ss_data / "train.h5", "r") as src, h5py.File(hostile, "w") as out:
        for name, value in src.attrs.items():
            out.attrs[name] = value
        first = src["per_residue"][sorted(src["per_residue"])[0]]
        for i, ident in enumerate(ids):
            dataset = out.create_dataset(f"per_residue/k{i}", data=first[()])
            for name, value in first.attrs.items():
                dataset.attrs[name] = value
            dataset.attrs["id"] = ident
    r = run_cli("predict", head, "--embeddings", hostile, "-o", tmp_path / "p.fa")
    assert r.exit_code == 0, r.stderr
    lines = (tmp_path / "p.fa").read_text().splitlines()
    assert [line for line in lines if line.startswith(">")] == [">a\\n>FORGED\\nCCCC", ">b\\x1b[31mred"]
    assert len(lines) == 4 and "\x1b" not in (tmp_path / "p.fa").read_text()


# --- --folds: K-fold cross-validation -----------------------------------------------------------


def test_folds_partition_train_stratified_and_score_each_protein_out_of_fold(run_cli, loc_data, tmp_path):
    """--folds 3: every training protein in exactly one fold, the classes spread evenly, one member
    per fold, and the "cv" set is each protein predicted by the member that did not train on it
    (recomputed here member by member from the saved head)."""
    from protrans_cli.heads.data import load_data
    from protrans_cli.heads.fit import kept_for_scoring, predict_data, score_predictions, subset
    from protrans_cli.heads.labels import read_labels
    from protrans_cli.heads.model import Ensemble, load_head

    head = tmp_path / "cv"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--test", loc_data / "test.h5", loc_data / "test.fasta", "--folds", "3", "--max-epochs", "20",
                "-j", "1", "--bootstrap", "50", "--no-plots", "-o", head)
    assert r.exit_code == 0, r.stderr
    assert "validation: 3-fold cross-validation of the 150 training proteins (seed 0; folds of 50 proteins, " \
           "stratified by class)" in r.stderr
    config = json.loads((head / "config.json").read_text())
    folds = config["training"]["folds"]
    ids = [f">train{i}" for i in range(150)]
    assert sorted(i for f in folds for i in f) == sorted(i[1:] for i in ids) and len(folds) == 3
    for fold in folds:  # locations cycle i % 3 in the fixture: 50 a class, so 16 or 17 in every fold
        per_class = collections.Counter(int(i[len("train"):]) % 3 for i in fold)
        assert set(per_class.values()) <= {16, 17}, per_class
    assert config["ensemble"] == 3 and config["seeds"] == [0, 1, 2]
    summary = json.loads((head / "metrics.json").read_text())
    assert list(summary) == ["cv", "test"] and summary["cv"]["loc"]["n_proteins"] == 150
    history = [json.loads(line) for line in (head / "metrics.jsonl").read_text().splitlines()]
    assert {h["member"] for h in history} == {0, 1, 2}

    ensemble, task, _ = load_head(head)
    train, _ = load_data(loc_data / "train.h5", read_labels(loc_data / "train.fasta"), task)
    position = {m.id: i for i, m in enumerate(train.items)}
    items, kept = [], {o.name: [] for o in task.outputs}
    for member, fold in zip(ensemble.members, folds):
        part = subset(train, np.array([position[i] for i in fold]))
        for name, values in kept_for_scoring(task, predict_data(Ensemble([member], task), task, part)).items():
            kept[name] += values
        items += part.items
    again = score_predictions(task, items, kept, n_boot=50)
    cv = json.loads((head / "metrics" / "cv.json").read_text())["outputs"]
    for output in ("loc", "membrane"):
        assert cv[output]["accuracy"] == again[output]["accuracy"] and cv[output]["n"] == again[output]["n"]
    # predict uses all three members, as --ensemble 3 heads
    r = run_cli("predict", head, "--embeddings", loc_data / "test.h5", "-o", tmp_path / "p.csv")
    assert r.exit_code == 0 and len((tmp_path / "p.csv").read_text().splitlines()) == 46, r.stderr


def _noise_proteins(tmp_path, rng, n: int, dim: int, label_of):
    """(embeddings, labels): n proteins p0, p1, ... of random 30-residue sequences and random
    per-protein vectors of `dim`, then an id,label table of label_of(i)."""
    from protrans_cli.io.h5 import EmbeddingsWriter

    emb, labels = tmp_path / "noise.h5", tmp_path / "noise.csv"
    with EmbeddingsWriter(emb, kinds=("per_protein",)) as w:
        for i in range(n):
            w.write(f"p{i}", f"p{i}", "".join(rng.choice(list(AA), 30)), per_protein=rng.normal(size=dim).astype(np.float32))
    labels.write_text("id,label\n" + "".join(f"p{i},{label_of(i)}\n" for i in range(n)))
    return emb, labels


def test_folds_score_labels_that_cannot_be_learned_at_chance(tmp_path):
    """The point of scoring out of fold: labels drawn at random have nothing to learn, and the
    cv accuracy stays near chance however well the members fit their own folds."""
    rng = np.random.default_rng(5)
    emb, labels = _noise_proteins(tmp_path, rng, 300, 64, lambda i: "AB"[rng.integers(2)])
    result = fit(FitConfig(task="protein", folds=4, max_epochs=60, patience=60, hidden=128, dropout=0.0, lr=0.01,
                           threads=1, n_bootstrap=50, plots=False), emb, labels, tmp_path / "head")
    assert 0.38 < result.metrics["cv"]["label"]["accuracy"] < 0.62
    assert max(h["train_loss"] for h in result.history if h["epoch"] == 60) < 0.3  # (they did memorise)


def test_folds_per_residue_keep_proteins_of_one_sequence_in_one_fold(run_cli, ss_data, tmp_path):
    """ss3 with --folds: a CNN per fold, cv scored per residue; a sequence in two records (CB513
    repeats some) never has one copy training the member that scores the other."""
    labels = tmp_path / "twins.csv"
    rows = (ss_data / "train.csv").read_text().splitlines()
    labels.write_text("\n".join(rows + [rows[1], rows[2], rows[3]]) + "\n")  # three sequences twice
    fasta = tmp_path / "twins.fa"
    assert run_cli("labels", labels, "-o", fasta).exit_code == 0
    emb = tmp_path / "twins.h5"
    assert run_cli("embed", fasta, "-m", "onehot", "--per-residue", "-o", emb).exit_code == 0
    head = tmp_path / "ss3"
    r = run_cli("fit", "ss3", "--embeddings", emb, "--labels", labels, "--folds", "4", "--max-epochs", "3",
                *FAST, "--no-plots", "-o", head)
    assert r.exit_code == 0, r.stderr
    assert "proteins of one sequence in one fold" in r.stderr
    summary = json.loads((head / "metrics.json").read_text())
    assert summary["cv"]["ss3"]["metric"] == "Q3" and summary["cv"]["ss3"]["n_proteins"] == 73
    with EmbeddingsReader(emb) as reader:
        checksum = {attrs["id"]: attrs["checksum"] for _, _, attrs in reader.items("per_residue")}
    assert len(set(checksum.values())) == 70
    folds = json.loads((head / "config.json").read_text())["training"]["folds"]
    assert sum(map(len, folds)) == 73 and max(map(len, folds)) - min(map(len, folds)) <= 2
    owner = {}
    for k, fold in enumerate(folds):
        for i in fold:
            assert owner.setdefault(checksum[i], k) == k


def test_folds_of_a_value_task_span_its_range(tmp_path):
    from protrans_cli.heads.fit import cv_folds
    from protrans_cli.heads.data import Matched
    from protrans_cli.heads.tasks import get_task

    class Data:
        items = [Matched(id=f"p{i}", key=f"p{i}", length=5, targets={"value": float(i)}, checksum=str(i))
                 for i in range(100)]

    folds = cv_folds(FitConfig(task="value", folds=5), get_task("value"), Data, "labels.csv")
    assert sorted(np.concatenate(folds).tolist()) == list(range(100))
    for fold in folds:  # dealt in order of value: one protein of each run of five values
        assert len(fold) == 20 and sorted(f // 5 for f in fold) == list(range(20))
    other = cv_folds(FitConfig(task="value", folds=5, seed=1), get_task("value"), Data, "labels.csv")
    assert [f.tolist() for f in other] != [f.tolist() for f in folds]
    assert [f.tolist() for f in cv_folds(FitConfig(task="value", folds=5), get_task("value"), Data, "x")] == \
        [f.tolist() for f in folds]


def test_folds_refusals(run_cli, loc_data, tmp_path):
    base = ("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "-j", "1",
            "--max-epochs", "1", "--no-plots", "-o", tmp_path / "h")
    r = run_cli(*base, "--folds", "1")
    assert r.exit_code == 2 and "--folds must be at least 2" in r.stderr
    r = run_cli(*base, "--folds", "3", "--ensemble", "2")
    assert r.exit_code == 2 and "--folds 3 trains one member per fold (3 members): leave out --ensemble 2" in r.stderr
    r = run_cli(*base, "--folds", "3", "--ensemble", "1")  # (the default's value, given: taken without a word)
    assert r.exit_code == 2 and "--folds 3 trains one member per fold (3 members): leave out --ensemble 1" in r.stderr
    r = run_cli(*base, "--folds", "3", "--valid", loc_data / "test.h5", loc_data / "test.fasta")
    assert r.exit_code == 2 and "it takes no --valid" in r.stderr
    r = run_cli(*base, "--folds", "151")
    assert r.exit_code == 1 and "--folds 151 needs at least 151 training proteins, the set has 150" in r.stderr
    assert not (tmp_path / "h").exists()
    r = run_cli(*base, "--folds", "3", "--seed", str(2**64 - 2))
    assert r.exit_code == 2 and "--folds 3" in r.stderr


def test_folds_take_in_the_label_files_validation_records(ss_data, tmp_path):
    flip = _flip_with_splits(ss_data, tmp_path)
    result = fit(FitConfig(task="ss3", folds=3, max_epochs=1, threads=1, n_bootstrap=50, plots=False),
                 ss_data / "train.h5", flip, tmp_path / "head")
    assert result.metrics["cv"]["ss3"]["n_proteins"] == 60 and result.metrics["test"]["ss3"]["n_proteins"] == 10
    assert "valid" not in result.metrics


def test_folds_only_embedded_skip_the_label_files_own_test_set_where_none_of_it_is_embedded(run_cli, ss_data,
                                                                                              tmp_path):
    """--folds --only-embedded on a FLIP file whose SET=test records were not embedded stopped with
    "no label record matched" (the user asked for cross-validation of what is embedded): the
    implicit test set is left out with a warning counting its records, and the cv scores stand.
    A --test that matches nothing is still an error, as is the same run without --only-embedded."""
    from protrans_cli.embed import EmbedOptions, embed

    flip = _flip_with_splits(ss_data, tmp_path)
    records = ss_data.joinpath("train.fa").read_text().split(">")[1:]
    part = tmp_path / "part.fa"
    part.write_text("".join(">" + r for i, r in enumerate(records) if i % 7 != 6))  # (no SET=test record)
    embed(part, tmp_path / "part.h5", EmbedOptions(model="onehot", per_protein=False, threads=1))
    args = ["fit", "ss3", "--embeddings", tmp_path / "part.h5", "--labels", flip, "--folds", "3", "--max-epochs", "1",
            *FAST, "--bootstrap", "10", "--no-plots"]
    r = run_cli(*args, "--only-embedded", "-o", tmp_path / "h")
    assert r.exit_code == 0, r.stderr
    assert (f"protrans: warning: {flip}: none of its 10 test records has an embedding in {tmp_path / 'part.h5'}: no "
            "test set is scored (--only-embedded; --test EMBEDDINGS LABELS gives one)") in r.stderr
    # (the warning alone says it: an info line "10 label record(s) without an embedding left out
    # (--only-embedded; 0 matched)" came before it, like the training set's own)
    assert "0 matched" not in r.stderr and "without an embedding left out" not in r.stderr, r.stderr
    assert "left out of training (--test gives the test sets)" not in r.stderr
    summary = json.loads((tmp_path / "h" / "metrics.json").read_text())
    assert list(summary) == ["cv"] and summary["cv"]["ss3"]["n_proteins"] == 60
    r = run_cli(*args, "-o", tmp_path / "h2")
    assert r.exit_code == 1 and "10 without an embedding" in r.stderr and not (tmp_path / "h2").exists()
    r = run_cli(*args, "--only-embedded", "--test", tmp_path / "part.h5", flip, "-o", tmp_path / "h3")
    assert r.exit_code == 1 and "no label record matched an embedding" in r.stderr, r.stderr
    assert not (tmp_path / "h3").exists()


def test_only_embedded_without_the_label_files_validation_records_holds_out_a_fraction(run_cli, ss_data, tmp_path):
    """--only-embedded (or --skip-mismatched) on a FLIP file whose VALIDATION=True records were not
    embedded stopped with "no label record matched": the fit holds out --valid-fraction of train,
    as for a file without validation records, a warning saying so; the test set stays. With no
    training protein embedded either, a one-line error."""
    from protrans_cli.embed import EmbedOptions, embed

    flip = _flip_with_splits(ss_data, tmp_path)
    records = ss_data.joinpath("train.fa").read_text().split(">")[1:]
    part = tmp_path / "part.fa"
    part.write_text("".join(">" + r for i, r in enumerate(records) if i % 7 != 5))  # (no VALIDATION=True record)
    embed(part, tmp_path / "part.h5", EmbedOptions(model="onehot", per_protein=False, threads=1))
    args = ["fit", "ss3", "--embeddings", tmp_path / "part.h5", "--labels", flip, "--max-epochs", "1", *FAST,
            "--bootstrap", "10", "--no-plots"]
    for flag, none in (("--only-embedded", "has an embedding in"), ("--skip-mismatched", "matches an embedding in")):
        r = run_cli(*args, flag, "--valid-fraction", "0.2", "-o", tmp_path / flag)
        assert r.exit_code == 0, r.stderr
        assert (f"protrans: warning: {flip}: none of its 10 validation records {none} {tmp_path / 'part.h5'}"
                in r.stderr), r.stderr
        assert (f": --valid-fraction 0.2 of train is held out for validation instead ({flag}; --valid EMBEDDINGS "
                "LABELS gives a validation set)") in r.stderr
        assert "validation: 10 proteins held out of train (seed 0; 40 left to train on)" in r.stderr
        assert "--valid-fraction does nothing" not in r.stderr
        config = json.loads((tmp_path / flag / "config.json").read_text())
        assert len(config["training"]["held_out"]) == 10
        summary = json.loads((tmp_path / flag / "metrics.json").read_text())
        assert summary["valid"]["ss3"]["n_proteins"] == 10 and summary["test"]["ss3"]["n_proteins"] == 10
    r = run_cli(*args, "-o", tmp_path / "h2")  # (without either: an error, nothing written)
    assert r.exit_code == 1 and "(the valid records of" in r.stderr and not (tmp_path / "h2").exists()
    nothing = tmp_path / "nothing.fasta"
    nothing.write_text(">Z1 SET=train\nHHC\n>Z2 SET=train VALIDATION=True\nCCE\n")
    r = run_cli(*args[:5], nothing, *args[6:], "--only-embedded", "-o", tmp_path / "h3")
    assert r.exit_code == 1 and not (tmp_path / "h3").exists()
    assert r.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {nothing} vs {tmp_path / 'part.h5'}: no label record matched an embedding: none of its "
        "1 label record has one (--only-embedded left them out)"), r.stderr


def test_an_interrupted_cross_validation_resumes_to_the_same_head(loc_data, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from protrans_cli.heads.fit import partial_path

    def config(**kw):
        return FitConfig(**{**dict(task="loc", folds=3, max_epochs=4, patience=10, threads=1, n_bootstrap=10,
                                   plots=False), **kw})

    args = (loc_data / "train.h5", loc_data / "train.fasta")
    whole = fit(config(), *args, tmp_path / "whole")
    out = tmp_path / "parts"
    with _stopped_after(monkeypatch, member=1, epoch=2), pytest.raises(KeyboardInterrupt):
        fit(config(), *args, out)
    with pytest.raises(UsageError, match=r"other settings or inputs \(ensemble, folds\)"):
        fit(config(resume=True, folds=4), *args, out)
    # --valid-fraction does nothing with --folds (fit warns so): another one resumes all the same
    parts = fit(config(resume=True, valid_fraction=0.3), *args, out)
    a, b = load_file(whole.head_dir / "weights.safetensors"), load_file(parts.head_dir / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert parts.metrics == whole.metrics
    assert not partial_path(out).exists()


def test_folds_keep_a_test_set_named_cv_apart_report_each_fold_and_say_valid_fraction_is_unused(run_cli, loc_data,
                                                                                                  tmp_path):
    """A --test whose labels are cv.fasta took the name "cv" and replaced the cross-validation's
    scores in metrics.json and metrics/cv.json; --valid-fraction was ignored without a word;
    metrics/cv.json gives each fold's own score beside the pooled one."""
    for suffix in ("h5", "fasta"):
        (tmp_path / f"cv.{suffix}").write_bytes((loc_data / f"test.{suffix}").read_bytes())
    head = tmp_path / "head"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--test", tmp_path / "cv.h5", tmp_path / "cv.fasta", "--folds", "3", "--valid-fraction", "0.3",
                "--max-epochs", "5", "-j", "1", "--bootstrap", "20", "--no-plots", "-o", head)
    assert r.exit_code == 0, r.stderr
    assert "--valid-fraction does nothing with --folds" in r.stderr
    summary = json.loads((head / "metrics.json").read_text())
    assert list(summary) == ["cv", "cv-2"]
    assert summary["cv"]["loc"]["n_proteins"] == 150 and summary["cv-2"]["loc"]["n_proteins"] == 45
    cv = json.loads((head / "metrics" / "cv.json").read_text())["outputs"]
    assert json.loads((head / "metrics" / "cv-2.json").read_text())["outputs"]["loc"]["n_proteins"] == 45
    for output in ("loc", "membrane"):
        folds = cv[output]["folds"]
        assert [f["fold"] for f in folds] == [0, 1, 2] and sum(f["n"] for f in folds) == cv[output]["n"]
        pooled = sum(f["accuracy"] * f["n"] for f in folds) / cv[output]["n"]
        assert pooled == pytest.approx(cv[output]["accuracy"])
    assert re.search(r"cv loc: Q10 per fold \d\.\d{4}, \d\.\d{4}, \d\.\d{4}", r.stderr)
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--valid-fraction", "0.3", "--max-epochs", "1", "-j", "1", "--bootstrap", "10", "--no-plots",
                "-o", tmp_path / "plain")
    assert r.exit_code == 0 and "--valid-fraction does nothing" not in r.stderr, r.stderr


def test_folds_group_identical_sequences_of_a_file_without_checksums(loc_data, tmp_path):
    """An embeddings file of another tool stores no sequence checksums: the label records'
    sequences group the proteins instead (two records of one sequence were split over the folds,
    19 of 30 here, each scored by a member trained on its twin)."""
    with EmbeddingsReader(loc_data / "train.h5") as reader:
        rows = {attrs["id"]: np.asarray(x) for _, x, attrs in reader.items("per_protein")}
    lines = (loc_data / "train.fasta").read_text().splitlines()
    records = list(zip(lines[::2], lines[1::2]))
    emb, fasta = tmp_path / "plain.h5", tmp_path / "plain.fasta"
    with h5py.File(emb, "w") as f, open(fasta, "w") as fh:
        for header, seq in records + [(">twin" + h[1:], s) for h, s in records[:30]]:
            ident = header[1:].split()[0]
            f.create_dataset(ident, data=rows[ident.removeprefix("twin")])
            fh.write(f"{header}\n{seq}\n")
    result = fit(FitConfig(task="loc", folds=3, max_epochs=1, threads=1, n_bootstrap=10, plots=False), emb, fasta,
                 tmp_path / "head")
    config = json.loads((result.head_dir / "config.json").read_text())["training"]
    assert "proteins of one sequence in one fold" in config["validation"]
    fold_of = {i: k for k, fold in enumerate(config["folds"]) for i in fold}
    assert len(fold_of) == 180
    assert all(fold_of[i] == fold_of[i.removeprefix("twin")] for i in fold_of if i.startswith("twin"))


# --- --search: hyperparameter search ------------------------------------------------------------


def test_a_search_trial_scored_nan_never_beats_a_scored_one():
    """A value head's validation Spearman is NaN where its predictions are constant: such a trial
    scores as nothing scored (-inf), not as a NaN that compares false with every later trial."""
    from protrans_cli.heads.search import _score

    nan = {"valid": {"value": {"spearman": float("nan")}}}
    assert _score(nan, "valid") == float("-inf") and _score({}, "valid") == float("-inf")
    assert _score({"valid": {"a": {"accuracy": 0.5}, "b": {"spearman": float("nan")}}}, "valid") == 0.5
    assert _score({"valid": {"a": {"accuracy": 0.5}, "b": {"accuracy": 0.7}}}, "valid") == pytest.approx(0.6)


def test_search_keeps_the_trial_with_the_best_validation_score(run_cli, loc_data, tmp_path):
    from safetensors.torch import load_file

    head = tmp_path / "loc"
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--test", loc_data / "test.h5", loc_data / "test.fasta", "--search", "lr=0.0001,0.01",
                "--search", "hidden=8,32", "--max-epochs", "6", "-j", "1", "--bootstrap", "20", "--no-plots",
                "-o", head)
    assert r.exit_code == 0, r.stderr
    assert "search: 4 trials (2 x 2: lr, hidden), chosen by the valid score" in r.stderr
    table = [line for line in r.stderr.splitlines() if line.startswith("search: trial_") and "  " in line]
    assert len(table) == 4 and table[0].endswith("<- kept")  # the closing table, best first
    record = json.loads((head / "search.json").read_text())
    assert [t["settings"] for t in record["trials"]] == [{"lr": 0.0001, "hidden": 8}, {"lr": 0.0001, "hidden": 32},
                                                         {"lr": 0.01, "hidden": 8}, {"lr": 0.01, "hidden": 32}]
    trials = tmp_path / "loc.search"
    scores = []
    for t in record["trials"]:  # each score is its trial's mean validation Q10/Q2, as metrics.json has them
        summary = json.loads((trials / t["trial"] / "metrics.json").read_text())
        assert t["score"] == pytest.approx(np.mean([m["accuracy"] for m in summary["valid"].values()]))
        scores.append(t["score"])
    best = record["trials"][int(np.argmax(scores))]["trial"]  # (np.argmax: the first of a tie, as the search)
    assert record["best"] == best
    a, b = load_file(head / "weights.safetensors"), load_file(trials / best / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((head / "config.json").read_text())
    assert config["hyperparameters"]["lr"] == record["trials"][int(np.argmax(scores))]["settings"]["lr"]
    assert "test" in json.loads((head / "metrics.json").read_text())  # the test set scored, never chosen on
    # the kept head is the one `fit` with those settings gives: its --resume has nothing to do
    settings = record["trials"][int(np.argmax(scores))]["settings"]
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--test", loc_data / "test.h5", loc_data / "test.fasta", "--lr", str(settings["lr"]),
                "--hidden", str(settings["hidden"]), "--max-epochs", "6", "-j", "1", "--bootstrap", "20",
                "--no-plots", "--resume", "-o", head)
    assert r.exit_code == 0 and "member 0 epoch" not in r.stderr, r.stderr
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--search", "lr=0.0001,0.01", "--max-epochs", "6", "-j", "1", "--no-plots", "-o", head)
    assert r.exit_code == 2 and "holds an earlier search: --resume continues it, --force starts over" in r.stderr


def test_a_search_on_labels_from_stdin_gives_every_trial_the_labels(run_cli, loc_data, tmp_path):
    """--labels - with --search: the first trial read stdin to its end, and the second failed
    "<stdin>: is empty" (exit 1) after the first had trained. Every trial gets the bytes read once,
    and the search is the one the labels as a file give."""
    base = ("fit", "loc", "--embeddings", loc_data / "train.h5", "--search", "lr=0.0001,0.01", "--max-epochs", "3",
            "-j", "1", "--bootstrap", "10", "--no-plots")
    r = run_cli(*base, "--labels", "-", "-o", tmp_path / "piped", input=(loc_data / "train.fasta").read_bytes())
    assert r.exit_code == 0, r.stderr
    assert run_cli(*base, "--labels", loc_data / "train.fasta", "-o", tmp_path / "file").exit_code == 0
    piped, named = (json.loads((tmp_path / name / "search.json").read_text()) for name in ("piped", "file"))
    assert [t["score"] for t in piped["trials"]] == [t["score"] for t in named["trials"]]
    assert len(piped["trials"]) == 2


def _stop_at_save(monkeypatch, n: int):
    """FitState.save_epoch raising KeyboardInterrupt (a Ctrl-C) after its n-th save; returns the
    original method."""
    from protrans_cli.heads.fit import FitState

    save_epoch, saves = FitState.save_epoch, []

    def save_then_stop(self, current):
        save_epoch(self, current)
        saves.append(1)
        if len(saves) == n:
            raise KeyboardInterrupt

    monkeypatch.setattr(FitState, "save_epoch", save_then_stop)
    return save_epoch


def test_an_interrupted_search_resumes_to_the_same_head(loc_data, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from protrans_cli.heads.fit import FitState
    from protrans_cli.heads.search import search

    def config(**kw):
        return FitConfig(**{**dict(task="loc", max_epochs=3, threads=1, n_bootstrap=10, plots=False), **kw})

    grid = {"hidden": [8, 16, 32]}
    args = (loc_data / "train.h5", loc_data / "train.fasta")
    whole = search(config(), grid, *args, tmp_path / "whole")
    save_epoch = _stop_at_save(monkeypatch, 5)  # trial_01's second epoch
    with pytest.raises(KeyboardInterrupt):
        search(config(), grid, *args, tmp_path / "parts")
    monkeypatch.setattr(FitState, "save_epoch", save_epoch)
    assert (tmp_path / "parts.search" / "trial_00" / "config.json").is_file()
    assert (tmp_path / "parts.search" / "trial_01.partial").is_dir() and not (tmp_path / "parts").exists()
    with pytest.raises(UsageError, match="holds an earlier search: resume=True continues it"):
        search(config(), grid, *args, tmp_path / "parts")
    parts = search(config(resume=True), grid, *args, tmp_path / "parts")
    assert parts.best == whole.best and [t["score"] for t in parts.trials] == [t["score"] for t in whole.trials]
    a, b = load_file(tmp_path / "whole" / "weights.safetensors"), load_file(tmp_path / "parts" / "weights.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_second_search_on_a_head_in_the_making_is_refused(run_cli, loc_data, tmp_path, monkeypatch):
    """Two searches on one -o at once (a job started twice): the second was told "holds an earlier
    search: ... --force starts over", and its --force deleted the running search's trials (the
    lock of the trial in training with them, so two fits wrote one trial)."""
    from protrans_cli.heads.fit import FitState, partial_path
    from protrans_cli.heads.search import search, trials_path

    head = tmp_path / "loc"
    args = ["fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
            "--max-epochs", "2", "-j", "1", "--search", "hidden=8,16", "-o", head]
    save_epoch, seconds = FitState.save_epoch, []

    def second_run_meanwhile(self, current):
        save_epoch(self, current)
        if not seconds:  # trial_00's first epoch: the second job starts
            seconds.extend(run_cli(*args, *extra) for extra in ([], ["--force"], ["--resume"]))

    monkeypatch.setattr(FitState, "save_epoch", second_run_meanwhile)
    result = search(FitConfig(task="loc", max_epochs=2, threads=1, n_bootstrap=10, plots=False),
                    {"hidden": [8, 16]}, loc_data / "train.h5", loc_data / "train.fasta", head)
    for r in seconds:
        assert r.exit_code == 1 and f"{partial_path(head).name}: is in use by another protrans fit, fit --search or finetune" \
            in r.stderr, r.stderr
    assert [t["trial"] for t in result.trials] == ["trial_00", "trial_01"]
    assert sorted(p.name for p in trials_path(head).iterdir()) == ["search.json", "trial_00", "trial_01"]
    assert (head / "search.json").is_file() and not partial_path(head).exists()
    monkeypatch.setattr(FitState, "save_epoch", save_epoch)
    assert run_cli(*args[:-2], "--resume", "-o", head).exit_code == 0  # no lock left behind


def test_search_refusals(run_cli, loc_data, tmp_path):
    from protrans_cli.heads.search import parse_grid

    assert parse_grid(["lr=1e-3, 1e-4", "weight_decay=0,0.01", "class-weights=yes,no", "architecture=fnn,cnn"]) == {
        "lr": [1e-3, 1e-4], "weight_decay": [0.0, 0.01], "class_weights": [True, False], "architecture": ["fnn", "cnn"]}
    base = ("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "-j", "1",
            "--max-epochs", "1", "--no-plots", "-o", tmp_path / "h")
    for search, message in ((["lr=0.001"], "gives one setting only"),
                            (["seed=1,2"], "give NAME=V1,V2,... with NAME one of lr,"),
                            (["lr"], "give NAME=V1,V2,..."),
                            (["hidden=8,x"], "'x' is not a value of hidden"),
                            (["lr=0.1,0.1"], "a value given twice"),
                            (["lr=0.1,0.2", "lr=0.3,0.4"], "names lr twice"),
                            (["dropout=0.1,1.5"], "--dropout must be in [0, 1)"),
                            (["lr=0.1,nan"], "'nan' is not a value of lr"),
                            (["lr= , "], "--search 'lr= , ': no values after '='")):
        r = run_cli(*base, *[a for s in search for a in ("--search", s)])
        assert r.exit_code == 2 and message in r.stderr, (search, r.stderr)
    r = run_cli(*base, "--search", "lr=0.1,0.2", "--lr", "0.3")
    assert r.exit_code == 2 and "--lr is given and searched" in r.stderr
    assert not (tmp_path / "h").exists() and not (tmp_path / "h.search").exists()


def test_search_keeps_an_existing_head_without_force_and_files_it_did_not_write_with_it(run_cli, loc_data,
                                                                                        tmp_path):
    """A search onto an existing -o without --force is refused, as fit's; --force clears an earlier
    search's folder only when it holds nothing but what a search writes there (a file of the
    user's in HEAD.search/ was deleted with it)."""
    base = ("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "-j", "1",
            "--max-epochs", "1", "--no-plots", "--search", "lr=0.01,0.02", "-o", tmp_path / "h")
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "notes.txt").write_text("mine")
    r = run_cli(*base)
    assert r.exit_code == 2 and f"{tmp_path / 'h'} exists: --force replaces it" in r.stderr, r.stderr
    (tmp_path / "h" / "notes.txt").unlink()
    (tmp_path / "h").rmdir()
    (tmp_path / "h.search" / "trial_00").mkdir(parents=True)
    (tmp_path / "h.search" / "notes.txt").write_text("mine")
    r = run_cli(*base, "--force")
    assert r.exit_code == 2 and "h.search holds notes.txt, which a search did not write" in r.stderr, r.stderr
    assert (tmp_path / "h.search" / "notes.txt").read_text() == "mine" and not (tmp_path / "h").exists()


def test_an_empty_output_folder_is_taken_as_a_new_one(run_cli, loc_data, tmp_path):
    """A rule's `mkdir -p {output}` or a workflow engine makes -o's folder before the job: fit and
    fit --search refused it, "exists (--force replaces it)", as a head. An empty
    folder, or a link to one (a staged work folder), gets the head; the link stays a link."""
    base = ("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "-j", "1",
            "--max-epochs", "1", "--no-plots", "--bootstrap", "10")
    (tmp_path / "plain").mkdir()
    (tmp_path / "scratch" / "linked").mkdir(parents=True)
    (tmp_path / "linked").symlink_to(tmp_path / "scratch" / "linked", target_is_directory=True)
    (tmp_path / "searched").mkdir()
    for name, extra in (("plain", ()), ("linked", ()), ("searched", ("--search", "lr=0.01,0.02"))):
        r = run_cli(*base, *extra, "-o", tmp_path / name)
        assert r.exit_code == 0, (name, r.stderr)
        assert (tmp_path / name / "config.json").is_file() and (tmp_path / name / "weights.safetensors").is_file()
    assert (tmp_path / "linked").is_symlink() and (tmp_path / "scratch" / "linked" / "config.json").is_file()
    # (a head there now: the same fit again is refused, as before)
    r = run_cli(*base, "-o", tmp_path / "plain")
    assert r.exit_code == 2 and "exists (--force replaces it)" in r.stderr, r.stderr


def test_an_output_folder_that_is_a_mount_point_is_refused_before_the_fit(run_cli, loc_data, tmp_path, monkeypatch):
    """A container's bind mount as -o (empty, or a head there with --force): the head is written
    beside it and moved into its place at the end, which a mount point cannot take; fit trained to
    the end and then failed, "cannot replace this folder ... Device or resource busy". Refused first."""
    from protrans_cli.io import files

    mount = tmp_path / "mnt"
    mount.mkdir()
    real = files.os.path.ismount
    monkeypatch.setattr(files.os.path, "ismount", lambda p: str(p) == str(mount) or real(p))
    base = ("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "-j", "1",
            "--max-epochs", "1", "--no-plots", "--bootstrap", "10", "-o", mount)
    for extra, held in (((), []), (("--force",), ["config.json", "weights.safetensors"])):
        for name in held:  # (then a head's files there, with --force)
            (mount / name).write_bytes(b"{}")
        r = run_cli(*base, *extra)
        assert r.exit_code == 2, r.stderr
        assert r.stderr.strip().splitlines()[-1] == (
            f"protrans: error: {mount}: is a mount point: the output folder is written beside it and moved into its "
            "place at the end, which a mount point cannot take; give -o a folder inside it"), r.stderr
        assert sorted(p.name for p in mount.iterdir()) == held and [p.name for p in tmp_path.iterdir()] == ["mnt"]


def test_an_interrupted_search_says_where_its_trials_are_kept_and_how_to_continue(run_cli, loc_data, tmp_path,
                                                                                    monkeypatch):
    """Ctrl-C in a search: exit 130 and one line naming HEAD.search (not the plain fit's
    HEAD.partial, which a search does not keep) and --resume; the resumed search finishes."""
    from protrans_cli.heads.fit import FitState

    save_epoch = _stop_at_save(monkeypatch, 3)  # trial_01's first epoch
    base = ("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "-j", "1",
            "--max-epochs", "2", "--no-plots", "--bootstrap", "10", "--search", "hidden=8,16", "-o", tmp_path / "h")
    r = run_cli(*base)
    assert r.exit_code == 130 and f"the trials finished so far, and the epochs of the one in training, are kept in " \
        f"{tmp_path / 'h.search'}; run the same command with --resume to continue" in r.stderr, r.stderr
    monkeypatch.setattr(FitState, "save_epoch", save_epoch)
    r = run_cli(*base, "--resume")
    assert r.exit_code == 0 and (tmp_path / "h" / "search.json").is_file(), r.stderr


@pytest.mark.parametrize("name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_search_stops_on_a_signal_in_a_trial_after_the_first(run_cli, loc_data, tmp_path, monkeypatch, name, code):
    """trial_00's head marked the command's output complete: a Ctrl-C or SIGTERM in every later
    trial was noted and ignored, and the search ran on to its end (exit 0)."""
    import signal

    from protrans_cli.heads.fit import FitState

    save_epoch, saves = FitState.save_epoch, []

    def save_then_signal(self, current):
        save_epoch(self, current)
        saves.append(1)
        if len(saves) == 3:  # trial_01's first epoch
            signal.raise_signal(getattr(signal, name))

    monkeypatch.setattr(FitState, "save_epoch", save_then_signal)
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "-j", "1",
                "--max-epochs", "2", "--no-plots", "--bootstrap", "10", "--search", "hidden=8,16,32",
                "-o", tmp_path / "h")
    assert r.exit_code == code and "nothing was lost" not in r.stderr, r.stderr
    assert len(saves) == 3 and not (tmp_path / "h").exists() and not (tmp_path / "h.search" / "trial_02").exists()


def test_search_refuses_a_grid_one_trial_of_which_cannot_be_trained_before_any_is(run_cli, loc_data, tmp_path):
    """--search architecture=fnn,light-attention on per-protein embeddings trained trial_00 and then
    failed on trial_01 ("has no per_residue embeddings"); fnn,cnn for loc and class-weights=no,yes
    for a value task the same. A searched kernel of FNN heads trained identical trials."""
    base = ("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "-j", "1",
            "--max-epochs", "1", "--no-plots", "-o", tmp_path / "h")
    for search, message in (("architecture=fnn,light-attention", "has no per_residue embeddings"),
                            ("architecture=fnn,cnn", "--architecture cnn: loc is a per-protein task"),
                            ("kernel=3,5", "--search kernel: an FNN head does not read it")):
        r = run_cli(*base, "--search", search)
        assert r.exit_code != 0 and message in r.stderr and "trial_00" not in r.stderr, (search, r.stderr)
        assert not (tmp_path / "h").exists() and not (tmp_path / "h.search").exists()
    ids = [line[1:].split()[0] for line in (loc_data / "train.fasta").read_text().splitlines() if line[:1] == ">"]
    (tmp_path / "value.csv").write_text("id,label\n" + "".join(f"{i},{n % 5}\n" for n, i in enumerate(ids)))
    r = run_cli("fit", "value", "--embeddings", loc_data / "train.h5", "--labels", tmp_path / "value.csv", "-j", "1",
                "--max-epochs", "1", "--no-plots", "--search", "class-weights=no,yes", "-o", tmp_path / "h")
    assert r.exit_code == 2 and "--class-weights is for classification" in r.stderr and "trial_00" not in r.stderr
    # --kernel with fnn,light-attention: the light-attention trials read it (it was said to do nothing)
    r = run_cli(*base, "--kernel", "5", "--search", "architecture=fnn,light-attention")
    assert r.exit_code == 1 and "has no per_residue" in r.stderr and "--kernel does nothing" not in r.stderr


def test_search_replaces_only_a_head_and_writes_through_a_link(run_cli, loc_data, tmp_path):
    """The kept head replaced whatever -o named: with --force a project folder (and the inputs in
    it, which fit refuses), with --resume a plain fit's head; an -o link to a folder failed after
    every trial ("Is a directory")."""
    base = ("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "-j", "1",
            "--max-epochs", "1", "--no-plots", "--bootstrap", "10")
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "notes.txt").write_text("mine")
    r = run_cli(*base, "--search", "lr=0.001,0.01", "--force", "-o", tmp_path / "project")
    assert r.exit_code == 2 and "holds files that are not fit's (notes.txt)" in r.stderr
    assert (tmp_path / "project" / "notes.txt").read_text() == "mine" and not (tmp_path / "project.search").exists()
    r = run_cli(*base, "-o", tmp_path / "plain")
    assert r.exit_code == 0, r.stderr
    r = run_cli(*base, "--search", "lr=0.001,0.01", "--resume", "-o", tmp_path / "plain")
    assert r.exit_code == 2 and "is not the head a search kept" in r.stderr
    assert not (tmp_path / "plain" / "search.json").exists()
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    r = run_cli(*base, "--search", "lr=0.001,0.01", "-o", tmp_path / "link", "--force")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "search.json").is_file()
    assert (tmp_path / "real.search" / "trial_01").is_dir()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    r = run_cli(*base, "--search", "lr=0.001,0.01", "-o", tmp_path / "link", "--resume")  # (its own kept head)
    assert r.exit_code == 0 and "member 0 epoch" not in r.stderr, r.stderr


def test_a_search_no_trial_of_which_scores_says_so(run_cli, loc_data, tmp_path):
    """Spearman undefined for every trial (two validation proteins of one value): the search said
    "valid score -inf" and kept trial_00 as if chosen."""
    ids = [line[1:].split()[0] for line in (loc_data / "train.fasta").read_text().splitlines() if line[:1] == ">"]
    (tmp_path / "train.csv").write_text("id,label\n" + "".join(f"{i},{n % 5}\n" for n, i in enumerate(ids[:-2])))
    (tmp_path / "valid.csv").write_text("id,label\n" + "".join(f"{i},1.0\n" for i in ids[-2:]))
    r = run_cli("fit", "value", "--embeddings", loc_data / "train.h5", "--labels", tmp_path / "train.csv",
                "--valid", loc_data / "train.h5", tmp_path / "valid.csv", "-j", "1",
                "--max-epochs", "1", "--no-plots", "--bootstrap", "10", "--search", "lr=0.001,0.01",
                "-o", tmp_path / "h")
    assert r.exit_code == 0, r.stderr
    assert "-inf" not in r.stderr and "search: trial_01: no valid score" in r.stderr
    assert "no trial has a valid score" in r.stderr and "kept trial_00, the first, unchosen" in r.stderr
    assert json.loads((tmp_path / "h" / "search.json").read_text())["trials"][0]["score"] is None


def test_a_stopped_fit_through_a_link_names_where_its_state_is(run_cli, loc_data, tmp_path, monkeypatch):
    """-o a link to a folder is written through (the state beside the folder it names): the
    message after Ctrl-C named LINK.partial, which does not exist."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with _stopped_after(monkeypatch, member=0, epoch=1):
        r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                    "-j", "1", "--no-plots", "--force", "-o", tmp_path / "link")
    assert r.exit_code == 130 and f"kept in {tmp_path / 'real.partial'}" in r.stderr, r.stderr
    assert (tmp_path / "real.partial" / "state.pt").is_file()


def test_folds_class_weights_count_only_the_folds_a_member_trains_on(tmp_path, monkeypatch):
    """--folds --class-weights: member k's loss weights come from the labels of the folds it
    trains on (fold k, which scores it, is not counted), and config.json records each member's."""
    from protrans_cli.heads import fit as fit_module

    emb, labels = _noise_proteins(tmp_path, np.random.default_rng(6), 40, 8, lambda i: "A" if i < 30 else "B")
    seen = []
    real = fit_module._train_member

    def spy(config, task, member_train, member_valid, seed, member, weights, *args, **kwargs):
        counts = np.bincount(np.concatenate([np.atleast_1d(i.targets["label"]) for i in member_train.items]),
                             minlength=2)
        seen.append((weights["label"].numpy().copy(), counts))
        return real(config, task, member_train, member_valid, seed, member, weights, *args, **kwargs)

    monkeypatch.setattr(fit_module, "_train_member", spy)
    fit(FitConfig(task="protein", folds=4, class_weights=True, max_epochs=2, threads=1, n_bootstrap=20, plots=False),
        emb, labels, tmp_path / "head")
    assert len(seen) == 4
    for weights, counts in seen:
        assert counts.sum() == 30  # (three folds of 10)
        np.testing.assert_allclose(weights, counts.sum() / (2 * counts), rtol=1e-6)
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    recorded = config["training"]["class_weights_per_member"]
    np.testing.assert_allclose([r["label"] for r in recorded], [w for w, _ in seen], rtol=1e-6)
    # (the weights of all 40, which no member trained with, are not recorded as the head's)
    assert config["hyperparameters"]["class_weights"] is None and config["config"]["class_weights"] is True


def test_an_error_of_the_prefetching_thread_holds_nothing_of_the_caller_after_it():
    # `raise item` kept the error in a local of the frame its traceback holds: a fit that failed
    # on a bad batch kept the head, optimizer and arrays of the caller's frame until gc ran
    from protrans_cli.heads.data import _prefetched

    def batches():
        yield from range(3)
        raise InputError("bad batch", path="x.h5")

    def loop(head):  # the fitting loop's frame holds the head while it reads the batches
        for _ in _prefetched(batches(), 2):
            pass

    message, released = released_after_error(loop, InputError)
    assert "bad batch" in message
    assert released

def test_a_search_with_folds_of_a_value_task_chooses_by_the_cv_spearman(run_cli, loc_data, tmp_path):
    # with --folds the out-of-fold "cv" set chooses (there is no "valid" set); a value task's
    # headline is Spearman's rho
    ids = [line[1:].split()[0] for line in (loc_data / "train.fasta").read_text().splitlines() if line[:1] == ">"]
    (tmp_path / "train.csv").write_text("id,label\n" + "".join(f"{i},{(n * 7) % 11 * 0.5}\n" for n, i in enumerate(ids)))
    head = tmp_path / "h"
    r = run_cli("fit", "value", "--embeddings", loc_data / "train.h5", "--labels", tmp_path / "train.csv",
                "--folds", "3", "-j", "1", "--max-epochs", "2", "--no-plots", "--bootstrap", "10",
                "--search", "lr=0.001,0.01", "-o", head)
    assert r.exit_code == 0, r.stderr
    assert "chosen by the cv score" in r.stderr and "no cv score" not in r.stderr
    record = json.loads((head / "search.json").read_text())
    assert record["chosen_by"] == "cv"
    scores = []
    for t in record["trials"]:
        summary = json.loads((tmp_path / "h.search" / t["trial"] / "metrics.json").read_text())
        assert "valid" not in summary and t["score"] == pytest.approx(summary["cv"]["value"]["spearman"])
        scores.append(t["score"])
    assert record["best"] == record["trials"][int(np.argmax(scores))]["trial"]


def test_search_grid_values_are_typed_as_the_fit_settings():
    from protrans_cli.heads.search import parse_grid

    grid = parse_grid(["lr=1e-3,0.01", "--hidden=8, 32", "class_weights=on,off", "architecture=cnn,light-attention"])
    assert grid == {"lr": [0.001, 0.01], "hidden": [8, 32], "class_weights": [True, False],
                    "architecture": ["cnn", "light-attention"]}
    assert [type(v) for v in grid["hidden"]] == [int, int]
    assert parse_grid(["class-weights=yes,0"]) == {"class_weights": [True, False]}
    assert parse_grid(["class-weights=1,off"]) == {"class_weights": [True, False]}
    for bad in ("hidden=8,8.5", "lr=1e-3,nan", "class-weights=on,maybe", "lr=1e-3,0.001"):
        with pytest.raises(UsageError):
            parse_grid([bad])


def test_a_model_directory_retrained_since_the_heads_embeddings_is_refused(run_cli, tmp_path):
    """A local model directory has no hub commit: a head fit on embeddings of the model saved
    there, used after another model was trained into the same directory, embedded (predict
    --fasta) or read (--embeddings) rows of the new weights and predicted from them without a
    word; fit took a --valid set embedded after the retraining. The head records the training
    embeddings' `weights_fingerprint`: each is refused (predict --fasta before embedding
    anything), --allow-model-mismatch warns and goes on, the same weights copied elsewhere pass."""
    import shutil

    from protrans_cli.embed import EmbedOptions, embed
    from test_embed import save_bert_into

    model = tmp_path / "model"
    save_bert_into(model, seed=0)
    write_loc_fastas(tmp_path, (("train", 40), ("test", 8)), background=40, rich=20)
    train_h5 = tmp_path / "train.h5"
    embed(tmp_path / "train.fasta", train_h5, EmbedOptions(model=str(model), per_residue=False, threads=1))
    shutil.copytree(model, tmp_path / "copy")  # the same weights elsewhere
    head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", train_h5, "--labels", tmp_path / "train.fasta", "--max-epochs", "1",
                   *FAST, "-o", head).exit_code == 0
    recorded = json.loads((head / "config.json").read_text())["embedding"]["weights_fingerprint"]
    with EmbeddingsReader(train_h5) as r:
        assert recorded == r.attrs["weights_fingerprint"]

    save_bert_into(model, seed=1)  # retrained into the same directory
    r = run_cli("predict", head, "--fasta", tmp_path / "test.fasta", "-o", tmp_path / "p.csv")
    assert r.exit_code == 1 and not (tmp_path / "p.csv").exists()
    assert re.search(r"the model directory \S+ holds other weights than the head's training embeddings were made "
                     r"with \(weights_fingerprint [0-9a-f]{32}, now [0-9a-f]{32}: retrained or replaced since\?\) "
                     r"\(--allow-model-mismatch overrides\)", r.stderr)
    assert "embedding 8 proteins" not in r.stderr  # (refused before any protein was embedded)
    r = run_cli("predict", head, "--fasta", tmp_path / "test.fasta", "--allow-model-mismatch", "-o", tmp_path / "p.csv")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("other weights of the model directory") == 1  # (one warning, after embedding)
    # --embeddings made with the new weights, and a --valid set of them beside train's
    test_h5 = tmp_path / "test.h5"
    embed(tmp_path / "test.fasta", test_h5, EmbedOptions(model=str(model), per_residue=False, threads=1))
    r = run_cli("predict", head, "--embeddings", test_h5)
    assert r.exit_code == 1 and "embeddings come from other weights of the model directory" in r.stderr
    assert r.stdout == ""
    r = run_cli("fit", "loc", "--embeddings", train_h5, "--labels", tmp_path / "train.fasta", "--valid", test_h5,
                tmp_path / "test.fasta", "--max-epochs", "1", *FAST, "-o", tmp_path / "loc2")
    assert r.exit_code == 1 and not (tmp_path / "loc2").exists()
    assert "valid embeddings come from other weights of the model directory" in r.stderr
    # the head's own weights, copied elsewhere and named with --model: predicted as before
    r = run_cli("predict", head, "--fasta", tmp_path / "test.fasta", "--model", tmp_path / "copy")
    assert r.exit_code == 0, r.stderr
    assert "other weights" not in r.stderr


def test_a_model_directory_moved_since_the_heads_embeddings_is_the_same_model(run_cli, tmp_path):
    """A head fit on embeddings of a local model directory, the directory then moved (a project
    folder renamed, copied to another cluster): `predict --fasta` said "MODEL: no such model
    directory" without naming --model; embeddings of the same weights at the new place were refused
    as "another model" by predict, fit --valid, knn and merge. Now the first names --model, and
    the same weights (weights_fingerprint) at another path are the same model."""
    from protrans_cli.embed import EmbedOptions, embed
    from test_embed import save_bert_into

    model = tmp_path / "model"
    save_bert_into(model, seed=0)
    write_loc_fastas(tmp_path, (("train", 40), ("test", 8)), background=40, rich=20)
    train_h5, test_h5 = tmp_path / "train.h5", tmp_path / "test.h5"
    embed(tmp_path / "train.fasta", train_h5, EmbedOptions(model=str(model), per_residue=False, threads=1))
    head = tmp_path / "loc"
    assert run_cli("fit", "loc", "--embeddings", train_h5, "--labels", tmp_path / "train.fasta", "--max-epochs", "1",
                   *FAST, "-o", head).exit_code == 0
    model.rename(tmp_path / "moved")
    r = run_cli("predict", head, "--fasta", tmp_path / "test.fasta", "-o", tmp_path / "p.csv")
    assert r.exit_code == 2 and not (tmp_path / "p.csv").exists()
    assert (f"{model}, the model directory the head's training embeddings were made with, is not there (moved or "
            "renamed?): give --model with its new place") in r.stderr, r.stderr
    r = run_cli("predict", head, "--fasta", tmp_path / "test.fasta", "--model", tmp_path / "moved")
    assert r.exit_code == 0 and "come from model" not in r.stderr, r.stderr
    embed(tmp_path / "test.fasta", test_h5, EmbedOptions(model=str(tmp_path / "moved"), per_residue=False, threads=1))
    r = run_cli("predict", head, "--embeddings", test_h5)
    assert r.exit_code == 0, r.stderr
    r = run_cli("fit", "loc", "--embeddings", train_h5, "--labels", tmp_path / "train.fasta", "--valid", test_h5,
                tmp_path / "test.fasta", "--max-epochs", "1", *FAST, "-o", tmp_path / "loc2")
    assert r.exit_code == 0, r.stderr
    r = run_cli("knn", test_h5, "--reference", train_h5)
    assert r.exit_code == 0 and "come from model" not in r.stderr, r.stderr
    r = run_cli("merge", train_h5, test_h5, "-o", tmp_path / "all.h5")
    assert r.exit_code == 0, r.stderr


def test_a_metrics_folder_under_a_file_is_refused_before_any_prediction(run_cli, monkeypatch, one_epoch_ss3,
                                                                        ss_data, tmp_path):
    """`--metrics afile/sub` failed with "Not a directory" (exit 1) once every prediction had been
    made and scored; it is a usage error before anything is read."""
    import protrans_cli.heads.predict as predict_module

    def no_work(*a, **k):
        raise AssertionError("predicted before the metrics folder was checked")

    monkeypatch.setattr(predict_module, "head_data", no_work)
    (tmp_path / "afile").write_text("x")
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "--labels", ss_data / "test.csv",
                "--metrics", tmp_path / "afile" / "sub", "-o", tmp_path / "p.fa")
    assert r.exit_code == 2 and r.stderr == (f"protrans: error: {tmp_path / 'afile'}: is not a directory, so no folder "
                                             "can go inside it\n"), r.stderr
    assert not (tmp_path / "p.fa").exists()


def test_a_head_recording_too_few_resamples_is_scored_with_enough(run_cli, one_epoch_ss3, ss_data, tmp_path):
    """finetune took --bootstrap 1 before it was refused, and its heads record it: predict
    --labels printed a "95% CI" of one resample (lo == hi). Such a head is scored with 1000."""
    import shutil

    head = tmp_path / "head"
    shutil.copytree(one_epoch_ss3, head)
    config = json.loads((head / "config.json").read_text())
    config["config"]["n_bootstrap"] = 1
    (head / "config.json").write_text(json.dumps(config))
    r = run_cli("predict", head, "--embeddings", ss_data / "test.h5", "--labels", ss_data / "test.csv",
                "-o", tmp_path / "p.fa")
    assert r.exit_code == 0, r.stderr
    assert "the head records 1 bootstrap resample(s), too few for a 95% CI: scored with 1000" in r.stderr
    lo, hi = map(float, re.search(r"95% CI ([0-9.]+)-([0-9.]+)", r.stderr).groups())
    assert lo < hi


def test_cli_weight_decay_and_dropout_reach_the_optimizer_and_the_head(loc_data, run_cli, tmp_path, monkeypatch):
    # fit --weight-decay is Adam's and --dropout the head's (a CLI handing FitConfig the defaults,
    # 0.0 and 0.25, whatever the user gave, passed every test)
    import torch

    seen = []
    real = torch.optim.Adam.__init__

    def recording(self, params, *args, **kwargs):
        seen.append(kwargs.get("weight_decay"))
        real(self, params, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "__init__", recording)
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--weight-decay", "0.3", "--dropout", "0.1", "--max-epochs", "1", "--no-plots", "-j", "1",
                "-o", tmp_path / "head")
    assert r.exit_code == 0, r.stderr
    assert seen == [0.3]
    config = json.loads((tmp_path / "head" / "config.json").read_text())
    assert config["hyperparameters"]["dropout"] == 0.1 and config["hyperparameters"]["weight_decay"] == 0.3


def test_cli_patience_stops_a_member_after_that_many_epochs_without_progress(loc_data, run_cli, tmp_path,
                                                                              monkeypatch):
    # fit --patience N: N epochs improving neither validation accuracy nor loss end the member (the
    # CLI handing FitConfig None, the default, instead passed every test)
    from protrans_cli.heads import fit as fit_module

    calls = []

    def flat(*a):
        calls.append(1)
        return 1.0, {"loc": 0.5}  # (epoch 1 the best; no later epoch improves anything)

    monkeypatch.setattr(fit_module, "_validate", flat)
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                "--patience", "2", "--max-epochs", "8", "--no-plots", "-j", "1", "-o", tmp_path / "head")
    assert r.exit_code == 0, r.stderr
    assert len(calls) == 3


@pytest.mark.parametrize("task, improving, epochs", [("ss3", False, 6), ("ss3", True, 30), ("loc", False, 11),
                                                      ("loc", True, 200)])
def test_fit_without_max_epochs_or_patience_takes_the_defaults_its_help_gives(loc_data, ss_data, run_cli, tmp_path,
                                                                              monkeypatch, task, improving, epochs):
    # fit --help: --max-epochs "[default: 30 per residue, 200 per protein]", --patience "[default: 5
    # per residue, 10 per protein]", --kernel "[default: 7 for the CNN ...]" (an FNN has none: null
    # in its config): the library resolves each from None, and no test left them to their defaults
    from protrans_cli.heads import fit as fit_module

    calls = []

    def scripted(*a):
        calls.append(1)
        # (every epoch better than the last, or none better than the first)
        return 1.0, {task: len(calls) / 1000 if improving else 0.5}

    monkeypatch.setattr(fit_module, "_validate", scripted)
    data, labels = (ss_data, "train.csv") if task == "ss3" else (loc_data, "train.fasta")
    r = run_cli("fit", task, "--embeddings", data / "train.h5", "--labels", data / labels, "--no-plots", "-j", "1",
                "--bootstrap", "10", *(["--max-residues", "300"] if task == "ss3" else []), "-o", tmp_path / "head")
    assert r.exit_code == 0, r.stderr
    assert len(calls) == epochs
    hyper = json.loads((tmp_path / "head" / "config.json").read_text())["hyperparameters"]
    assert (hyper["max_epochs"], hyper["patience"], hyper["kernel"]) == ((30, 5, 7) if task == "ss3" else (200, 10, None))


@pytest.mark.parametrize("command", ["fit", "predict"])
def test_skip_mismatched_and_only_embedded_together_are_refused(loc_data, run_cli, tmp_path, command):
    """--only-embedded keeps a record of another length or sequence an error (its --help);
    --skip-mismatched leaves it out. Given both, --skip-mismatched won without a word."""
    head = tmp_path / "head"
    if command == "fit":
        args = ("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "-o", head)
    else:
        r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta",
                    "--max-epochs", "1", "--no-plots", "-j", "1", "--bootstrap", "10", "-o", head)
        assert r.exit_code == 0, r.stderr
        args = ("predict", head, "--embeddings", loc_data / "test.h5", "--labels", loc_data / "test.fasta")
    r = run_cli(*args, "--skip-mismatched", "--only-embedded")
    assert r.exit_code == 2 and r.stderr == (
        "protrans: error: --skip-mismatched and --only-embedded: give one (--skip-mismatched also leaves out the "
        "records of another length or sequence, which --only-embedded keeps as errors)\n"), r.stderr
    assert command == "predict" or not head.exists()


def test_search_help_names_what_search_can_vary():
    """fit --help lists the names --search takes: one added to heads.search.SEARCHABLE (or taken
    out) would otherwise be taken, or refused, unsaid."""
    import re

    from protrans_cli.cli.fit import command
    from protrans_cli.heads.search import SEARCHABLE

    (help_text,) = [p.help for p in command.params if p.name == "search_specs"]
    listed = re.search(r"fit every combination of the values given \((.*?); repeat for several\)", help_text).group(1)
    assert listed.split(", ") == list(SEARCHABLE)


@pytest.mark.parametrize("command", ["predict", "knn"])
def test_fasta_chunk_overlap_under_another_long_policy_is_said_to_be_ignored_whatever_its_value(
        command, run_cli, one_epoch_ss3, tmp_path):
    # --fasta --chunk-overlap 64 (embed's default value) under skip did nothing without a word,
    # where 32 was said to be ignored (by embed's own check, which takes 64 for its default)
    fasta = tmp_path / "q.fa"
    fasta.write_text(">q1\nMKVLA\n")
    target = one_epoch_ss3 if command == "predict" else None
    if target is None:  # (knn's reference: the same FASTA embedded by onehot)
        target = tmp_path / "ref.h5"
        assert run_cli("embed", fasta, "-m", "onehot", "-o", target).exit_code == 0
    for overlap in ("64", "32"):
        args = [target, "--fasta", fasta] if command == "predict" else ["--reference", target, "--fasta", fasta]
        r = run_cli(command, *args, "--long-policy", "skip", "--chunk-overlap", overlap,
                    "-o", tmp_path / f"out{overlap}.tsv")
        assert r.exit_code == 0, r.stderr
        line = (f"protrans: warning: --chunk-overlap {overlap} ignored: it sets the windows of --long-policy chunk, "
                "and this run's policy is skip\n")
        assert r.stderr.count(line) == 1 and r.stderr.count("--chunk-overlap") == 1, r.stderr


def test_cli_fit_hands_every_option_to_the_library(run_cli, tmp_path, monkeypatch):
    # Each option reaches FitConfig (and the sets reach fit): --hidden, --kernel, --bootstrap,
    # -j, --no-standardise, --max-epochs and --max-residues each dropped on the way passed every
    # test, the head then trained with the default without a word.
    from protrans_cli.heads import fit as fit_module

    calls = []
    monkeypatch.setattr(fit_module, "fit", lambda config, *args, **kwargs: calls.append((config, args, kwargs)))
    files = {name: tmp_path / name for name in ("e.h5", "l.fasta", "v.h5", "v.fasta", "t.h5", "t.fasta", "m.fasta")}
    for path in files.values():
        path.write_text("")
    r = run_cli("fit", "loc", "--embeddings", files["e.h5"], "--labels", files["l.fasta"], "-o", tmp_path / "head",
                "--valid", files["v.h5"], files["v.fasta"], "--test", files["t.h5"], files["t.fasta"],
                "--label-format", "deeploc", "--mask", files["m.fasta"], "--mask-column", "a", "--mask-column", "b",
                "--max-epochs", "3", "--patience", "2", "--lr", "0.01", "--weight-decay", "0.1", "--max-residues", "100",
                "--batch-size", "8", "--class-weights", "--folds", "2", "--ensemble", "2", "--seed", "5",
                "--valid-fraction", "0.2", "--architecture", "light-attention", "--hidden", "16", "--kernel", "5",
                "--dropout", "0.5", "--no-standardise", "--dual", "skip", "--layer", "0", "--only-embedded",
                "--cache-gb", "1", "--bootstrap", "50", "-j", "2", "--device", "cpu", "--resume", "--force",
                "--no-plots")
    assert r.exit_code == 0, r.stderr
    [(config, args, kwargs)] = calls
    assert config == FitConfig(
        task="loc", max_epochs=3, patience=2, lr=0.01, weight_decay=0.1, max_residues=100, batch_size=8,
        class_weights=True, ensemble=2, folds=2, seed=5, valid_fraction=0.2, architecture="light-attention",
        hidden=16, kernel=5, dropout=0.5, dual="skip", layer=0, on_mismatch="missing", cache_bytes=1 << 30,
        n_bootstrap=50, threads=2, label_format="deeploc", mask_path=str(files["m.fasta"]), mask_columns=("a", "b"),
        force=True, standardise=False, device="cpu", resume=True, plots=False)
    assert [str(a) for a in args] == [str(files["e.h5"]), str(files["l.fasta"]), str(tmp_path / "head")]
    assert kwargs == {"valid": (str(files["v.h5"]), str(files["v.fasta"])),
                      "tests": [(str(files["t.h5"]), str(files["t.fasta"]))]}


def test_cli_predict_hands_every_option_to_the_library(run_cli, tmp_path, monkeypatch):
    # Each option of predict reaches the functions that read the labels, predict and score, and
    # with --fasta the embedding of the sequences: one dropped on the way was the default without
    # a word (as fit's options once were).
    from protrans_cli.heads import model as model_module
    from protrans_cli.heads import predict as predict_module
    from protrans_cli.heads.tasks import get_task

    calls = {}

    def spy(name, returns):
        def record(*args, **kwargs):
            calls[name] = (args, kwargs)
            return returns
        monkeypatch.setattr(predict_module, name, record)

    predicted = object()
    spy("scored_labels", ("read", "labelled"))
    spy("predict", {"predicted": predicted, "proteins": 3})
    spy("evaluate_head", None)
    spy("check_labels_first", None)
    spy("embed_for_head", (tmp_path / "embedded.h5", ["b", "a"]))
    monkeypatch.setattr(model_module, "load_head", lambda head: (None, get_task("ss3+ss8"), {}))
    (tmp_path / "head").mkdir()
    for name in ("e.h5", "q.fasta", "l.csv", "m.fasta"):
        (tmp_path / name).write_text("")
    t = str(tmp_path)
    shared = ["--probabilities", f"{t}/p.h5", "--head-output", "ss8", "--labels", f"{t}/l.csv", "--metrics", f"{t}/m",
              "--label-format", "netsurfp", "--mask", f"{t}/m.fasta", "--mask-column", "a", "--only-embedded",
              "--max-residues", "100", "-j", "2", "--device", "cpu", "--no-plots", "-o", f"{t}/out.fa"]
    labels = dict(label_format="netsurfp", mask_path=f"{t}/m.fasta", mask_columns=("a",))
    r = run_cli("predict", f"{t}/head", "--embeddings", f"{t}/e.h5", "--allow-model-mismatch", *shared)
    assert r.exit_code == 0, r.stderr
    assert calls["scored_labels"] == ((f"{t}/head", f"{t}/e.h5", f"{t}/l.csv"),
                                      dict(labels, on_mismatch="missing", allow_model_mismatch=True))
    args, kwargs = calls["predict"]
    assert args == (f"{t}/head", f"{t}/e.h5", f"{t}/out.fa")
    assert {k: v for k, v in kwargs.items() if k != "staged"} == dict(
        probabilities=f"{t}/p.h5", output="ss8", max_residues=100, allow_model_mismatch=True, threads=2,
        device="cpu", order=None, labelled="labelled")
    args, kwargs = calls["evaluate_head"]
    assert args == (f"{t}/head", f"{t}/e.h5", f"{t}/l.csv")
    assert {k: v for k, v in kwargs.items() if k != "staged"} == dict(
        labels, metrics_dir=f"{t}/m", on_mismatch="missing", allow_model_mismatch=True, max_residues=100, threads=2,
        device="cpu", scored=("read", "labelled"), predicted=predicted, plots=False)
    # --fasta: embedded as asked, then predicted in the FASTA's order; a --model of its own is another model
    calls.clear()
    r = run_cli("predict", f"{t}/head", "--fasta", f"{t}/q.fasta", "--model", "onehot", "--max-length", "50",
                "--long-policy", "chunk", "--chunk-overlap", "8", "--invalid-policy", "skip", "--chains", "linker",
                "--linker-length", "7", *shared)
    assert r.exit_code == 0, r.stderr
    assert calls["check_labels_first"] == (({}, f"{t}/l.csv"), labels)
    args, kwargs = calls["embed_for_head"]
    assert (args[:2], kwargs) == ((f"{t}/head", f"{t}/q.fasta"), dict(
        model="onehot", device="cpu", threads=2, long_policy="chunk", max_length=50, chunk_overlap=8,
        invalid_policy="skip", chains="linker", linker_length=7, allow_model_mismatch=False))
    assert calls["predict"][1]["order"] == ["b", "a"] and calls["predict"][1]["allow_model_mismatch"] is True
    assert calls["scored_labels"][1]["allow_model_mismatch"] is True


def test_predict_without_max_residues_or_mask_columns_warns_of_neither_and_scores_as_the_head_was_fit(
        run_cli, small_head, one_epoch_ss3, ss_data, tmp_path):
    # (the warning that --max-residues does nothing for an FNN head is for a --max-residues given;
    # no --mask-column is the head's own columns, not none)
    head, emb = small_head
    r = run_cli("predict", head, "--embeddings", emb, "-o", tmp_path / "p.csv")
    assert r.exit_code == 0 and "warning" not in r.stderr, r.stderr
    r = run_cli("predict", one_epoch_ss3, "--embeddings", ss_data / "test.h5", "--labels", ss_data / "test.csv",
                "-o", tmp_path / "p.fa")
    assert r.exit_code == 0 and "scoring with --mask-column" not in r.stderr, r.stderr


def test_fasta_chunk_overlap_without_a_long_policy_names_the_policy_error(run_cli, one_epoch_ss3, tmp_path):
    # (no --long-policy, none recorded: the policy the run has is error, not "None")
    fasta = tmp_path / "q.fa"
    fasta.write_text(">q1\nMKVLA\n")
    r = run_cli("predict", one_epoch_ss3, "--fasta", fasta, "--chunk-overlap", "32", "-o", tmp_path / "out.tsv")
    assert r.exit_code == 0, r.stderr
    assert ("protrans: warning: --chunk-overlap 32 ignored: it sets the windows of --long-policy chunk, and this "
            "run's policy is error\n") in r.stderr, r.stderr


def test_folds_1_with_ensemble_1_is_refused_for_its_folds(run_cli, loc_data, tmp_path):
    # (one fold is no cross-validation: "leave out --ensemble 1" for "1 members" sent the user to
    # the wrong flag)
    r = run_cli("fit", "loc", "--embeddings", loc_data / "train.h5", "--labels", loc_data / "train.fasta", "-j", "1",
                "--max-epochs", "1", "--no-plots", "-o", tmp_path / "h", "--folds", "1", "--ensemble", "1")
    assert r.exit_code == 2 and "--folds must be at least 2" in r.stderr and "--ensemble" not in r.stderr, r.stderr


def test_search_refuses_a_grid_keyed_by_flag_names_naming_the_fields_it_takes(loc_data, tmp_path):
    # (the library's grid is keyed by FitConfig field, as parse_grid makes it: {"weight-decay": ...}
    # was refused with "it varies lr, weight-decay, ...", the very name it refused)
    from protrans_cli.heads.search import parse_grid, search

    with pytest.raises(UsageError) as caught:
        search(FitConfig(task="loc"), {"weight-decay": [0.0, 1e-4]}, loc_data / "train.h5",
               loc_data / "train.fasta", tmp_path / "h")
    message = str(caught.value)
    assert message.startswith("search cannot vary 'weight-decay'; it varies the FitConfig fields lr, weight_decay, ")
    assert "weight-decay," not in message and "parse_grid" in message
    assert list(parse_grid(["weight-decay=0,1e-4"])) == ["weight_decay"]  # (what the message sends to)
    assert not (tmp_path / "h").exists() and not (tmp_path / "h.search").exists()


def test_predict_in_a_given_order_from_a_stacked_file_writes_every_protein_as_without_one(small_head, tmp_path):
    # (the library's `order` on an `embed --layout stacked` file reads its rows by id rather than
    # slice by slice: the CLI gives an order only with --fasta, whose file is grouped)
    from protrans_cli.heads.predict import predict
    from protrans_cli.io.h5 import EmbeddingsWriter

    head, emb = small_head
    stacked = tmp_path / "stacked.h5"
    with EmbeddingsReader(emb) as reader, EmbeddingsWriter(stacked, kinds=("per_protein",), layout="stacked") as w:
        for ident, vector, _ in reader.items("per_protein"):
            w.write(ident, ident, "MKV", per_protein=vector)
    assert predict(head, stacked, tmp_path / "plain.csv", threads=1) == {"proteins": 20}
    assert predict(head, stacked, tmp_path / "ordered.csv", threads=1, order=["p7", "p12", "gone", "p0"]) == {
        "proteins": 20}
    plain = (tmp_path / "plain.csv").read_text().splitlines()
    ordered = (tmp_path / "ordered.csv").read_text().splitlines()
    assert ordered[0] == plain[0] and [line.split(",")[0] for line in ordered[1:4]] == ["p7", "p12", "p0"]
    assert sorted(ordered[1:]) == sorted(plain[1:])  # the same rows, probabilities and all
    rest = [line.split(",")[0] for line in ordered[4:]]
    assert rest == [line.split(",")[0] for line in plain[1:] if line.split(",")[0] not in ("p7", "p12", "p0")]


def test_predict_sequences_of_a_dict_gives_each_id_what_a_list_gives_in_its_place(tmp_path):
    # (docs/heads.md's call: predict_sequences(head, {id: sequence}); the tests called it with a list)
    from protrans_cli import predict_sequences

    head = _onehot_protein_head(tmp_path)
    queries = {"a": "MKVLAKKKK", "b": "MWWWWC", "c": "MKVLAKKKK"}
    by_id = predict_sequences(head, queries, threads=1)
    in_order = predict_sequences(head, list(queries.values()), threads=1)
    assert list(by_id) == ["a", "b", "c"]
    for ident, listed in zip(queries, in_order):
        assert by_id[ident]["label"].labels == listed["label"].labels in ("A", "B")
        np.testing.assert_array_equal(by_id[ident]["label"].probabilities, listed["label"].probabilities)
    np.testing.assert_array_equal(by_id["a"]["label"].probabilities, by_id["c"]["label"].probabilities)


def _onehot_protein_head(folder):
    """A per-protein head (classes A and B) fit in a second on one-hot vectors: the model predict
    --fasta and predict_sequences embed with is onehot, read without a download."""
    from protrans_cli.embed import EmbedOptions, embed

    rng = np.random.default_rng(0)
    seqs = {f"s{i}": "".join(rng.choice(list(AA), 12)) + ("KKKK" if i % 2 else "WWWW") for i in range(16)}
    (folder / "t.fa").write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    (folder / "t.csv").write_text("id,label\n" + "".join(f"s{i},{'AB'[i % 2]}\n" for i in range(16)))
    embed(folder / "t.fa", folder / "t.h5", EmbedOptions(model="onehot", per_residue=False, threads=1))
    fit(FitConfig(task="protein", max_epochs=1, threads=1, n_bootstrap=10, plots=False), folder / "t.h5",
        folder / "t.csv", folder / "head")
    return folder / "head"


def test_predict_takes_the_ids_of_embeds_own_grouped_file_from_its_keys(tmp_path, monkeypatch):
    """predict on embed's own grouped file reads no protein's `id` attribute (every key is its id's,
    escaped): the ids that escape ('/', '%', '.', '..', a leading dot) come out in the CSV as the
    attributes give them, the same CSV as with an order to follow (read through the attributes)."""
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.heads import predict as predict_module

    head = _onehot_protein_head(tmp_path)
    ids = ["a/b", "%41", "..", ".", ".hidden", "sp|P1|X", "50%/x.y"]
    (tmp_path / "q.fa").write_text("".join(f">{ident} q\nMKVLA{'KW'[i % 2] * 6}\n" for i, ident in enumerate(ids)))
    embed(tmp_path / "q.fa", tmp_path / "q.h5", EmbedOptions(model="onehot", per_residue=False, threads=1))
    with EmbeddingsReader(tmp_path / "q.h5") as reader:
        order = reader.ids("per_protein")
        assert sorted(order) == sorted(ids) and reader.keys("per_protein") != order  # (some keys escaped)
    predict_module.predict(head, tmp_path / "q.h5", tmp_path / "ordered.csv", threads=1, order=order)
    read = []
    exists = h5py.h5a.exists
    monkeypatch.setattr(h5py.h5a, "exists", lambda obj, name, *a, **kw: read.append(name) or exists(obj, name, *a, **kw))
    predict_module.predict(head, tmp_path / "q.h5", tmp_path / "out.csv", threads=1)
    assert b"id" not in read and b"original_id" not in read
    rows = (tmp_path / "out.csv").read_text().splitlines()[1:]
    assert sorted(row.split(",")[0] for row in rows) == sorted(ids)
    assert sorted(rows) == sorted((tmp_path / "ordered.csv").read_text().splitlines()[1:])


def test_predict_sequences_takes_the_invalid_policy_of_predict_fasta(tmp_path, capsys):
    # (one sequence with an inner '*' or a digit failed the whole call, with an error that named
    # "--invalid-policy skip", which predict_sequences did not take; predict --fasta and
    # embed_sequences did)
    from protrans_cli import predict_sequences

    head = _onehot_protein_head(tmp_path)
    queries = {"a": "MKVLAKKKK", "b": "MK*LA1", "c": "MWWWWC"}
    # (the error names the keyword this call takes, not predict --fasta's flag)
    with pytest.raises(InputError, match=r"^record 'b': internal stop '\*' at residue 3 \(invalid_policy='skip' "
                                         r"leaves such records out\)$"):
        predict_sequences(head, queries, threads=1)  # (the default: as before)
    capsys.readouterr()
    found = predict_sequences(head, queries, threads=1, invalid_policy="skip")
    assert list(found) == ["a", "c"] and found["a"]["label"].labels in ("A", "B")
    said = capsys.readouterr().err
    assert "1 protein(s) could not be embedded and are left out: b (skipped: internal stop '*' at residue 3" in said
    listed = predict_sequences(head, list(queries.values()), threads=1, invalid_policy="skip")
    assert listed[1] is None and [p["label"].labels for p in (listed[0], listed[2])] == [found["a"]["label"].labels,
                                                                                      found["c"]["label"].labels]
    assert "left out: item 1 (skipped: internal stop" in capsys.readouterr().err
    with pytest.raises(UsageError, match="^invalid_policy must be one of error, skip, got 'drop'$"):
        predict_sequences(head, queries, threads=1, invalid_policy="drop")


def test_predict_sequences_says_give_model_where_predict_says_give_its_flag(tmp_path, run_cli):
    # (head_embed_options' messages: "give --model" to the command, "give model=" to the call)
    import json

    from protrans_cli import predict_sequences

    head = _onehot_protein_head(tmp_path)
    config = json.loads((head / "config.json").read_text())
    del config["embedding"]["model"]
    (head / "config.json").write_text(json.dumps(config))
    with pytest.raises(UsageError, match=r"does not record which model made its embeddings: give model=$"):
        predict_sequences(head, {"a": "MKVL"}, threads=1)
    fasta = tmp_path / "q.fa"
    fasta.write_text(">a\nMKVL\n")
    r = run_cli("predict", head, "--fasta", fasta, "-o", tmp_path / "p.csv")
    assert r.exit_code == 2 and r.stderr.strip().endswith(
        f"{head} does not record which model made its embeddings: give --model"), r.stderr


def test_predict_fasta_reads_a_header_with_a_nul_byte_as_embed_does(run_cli, tmp_path):
    # (embed refuses such a record naming --invalid-policy skip, and skips it under that policy;
    # predict --fasta read the FASTA's ids first and refused the whole file whatever the policy)
    head = _onehot_protein_head(tmp_path)
    fasta, out = tmp_path / "q.fa", tmp_path / "p.csv"
    fasta.write_bytes(b">a\nMKVLAKKKK\n>b\x00y damaged\nMKVL\n>c\nMWWWWC\n")
    r = run_cli("predict", head, "--fasta", fasta, "-o", out)
    assert r.exit_code == 1 and not out.exists()
    assert (f"{fasta}:3, record 'b\\x00y': the header holds a NUL byte (a damaged file?) (--invalid-policy skip "
            "leaves such records out)") in r.stderr, r.stderr
    r = run_cli("predict", head, "--fasta", fasta, "--invalid-policy", "skip", "-o", out)
    assert r.exit_code == 0, r.stderr
    assert [row.split(",")[0] for row in out.read_text().splitlines()[1:]] == ["a", "c"]
    assert "1 protein(s) have no embedding" in r.stderr and "b\\x00y" in r.stderr, r.stderr


def test_predict_says_why_each_protein_embed_left_out_has_no_prediction(run_cli, tmp_path):
    # (predict --fasta --invalid-policy skip warned with the ids alone, the reasons in a temporary
    # file removed as the command ends; embed and predict_sequences say why each one was left out)
    head = _onehot_protein_head(tmp_path)
    fasta, out = tmp_path / "q.fa", tmp_path / "p.csv"
    fasta.write_text(">a\nMKVLAKKKK\n>b\nMK*LA\n>c\n\n>d\nMJK\n")
    r = run_cli("predict", head, "--fasta", fasta, "--invalid-policy", "skip", "-o", out)
    assert r.exit_code == 0, r.stderr
    # (no "(the file's 'failed' attribute)": the embeddings were a temporary file the user never sees)
    assert (f"the embeddings of {fasta}: 3 protein(s) have no embedding and get no prediction: b (skipped: internal "
            "stop '*' at residue 3 (--invalid-policy skip)), c (skipped: empty sequence (--invalid-policy skip)), "
            "d (skipped: invalid character 'J' at residue 2 (--invalid-policy skip))") in r.stderr, r.stderr
    # the reasons are embed's, and a file of embed's given with --embeddings is named with them too
    h5 = tmp_path / "q.h5"
    assert run_cli("embed", fasta, "-m", "onehot", "--per-protein", "--invalid-policy", "skip", "-o", h5).exit_code == 0
    with EmbeddingsReader(h5) as reader:
        failed = reader.failed()
    r = run_cli("predict", head, "--embeddings", h5, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert sorted(failed) == ["b", "c", "d"] and all(f"{i} ({why})" in r.stderr for i, why in failed.items())
    assert f"{h5}: 3 protein(s) have no embedding (the file's 'failed' attribute) and get no prediction" in r.stderr


def test_predict_on_a_per_protein_file_embed_left_every_protein_out_writes_an_empty_table(run_cli, tmp_path):
    """A per-protein head over embed's grouped file that holds no protein (every one left out by
    --invalid-policy skip, a --fasta of such records too): predict read the file's width from a
    first protein there is none of, "holds no per_protein embeddings", exit 1. Each one left out
    is named with why, and the table has its header alone."""
    head = _onehot_protein_head(tmp_path)
    fasta, h5, out = tmp_path / "q.fa", tmp_path / "q.h5", tmp_path / "p.csv"
    fasta.write_text(">b\nMK*LA\n>d\nMJK\n")
    assert run_cli("embed", fasta, "-m", "onehot", "--per-protein", "--invalid-policy", "skip", "-o", h5).exit_code == 0
    for given in (("--embeddings", h5), ("--fasta", fasta, "--invalid-policy", "skip")):
        r = run_cli("predict", head, *given, "-o", out)
        assert r.exit_code == 0, r.stderr
        assert "2 protein(s) have no embedding" in r.stderr and "wrote predictions for 0 proteins" in r.stderr
        assert out.read_text().splitlines() == ["id,label,label:A,label:B"]
        out.unlink()


def test_a_library_calls_id_with_a_nul_byte_is_said_to_be_the_id_not_a_damaged_files_header(tmp_path, capsys):
    """A dict key holding a NUL byte was "the header holds a NUL byte (a damaged file?)": there is
    no file, the header is the caller's key. embed_sequences and predict_sequences say the id; the
    command line still names the damaged file's header."""
    from protrans_cli import predict_sequences
    from protrans_cli.embed import EmbedOptions, embed, embed_sequences

    given = {"a": "MKVLAKKKK", "b\x00y": "MKVL"}
    with pytest.raises(InputError, match=r"^record 'b\\x00y': the id holds a NUL byte \(invalid_policy='skip' leaves "):
        embed_sequences(given, EmbedOptions(model="onehot", threads=1), kind="per_protein")
    assert list(embed_sequences(given, EmbedOptions(model="onehot", threads=1, invalid_policy="skip"),
                                kind="per_protein")) == ["a"]
    assert "left out: b\\x00y (skipped: the id holds a NUL byte (--invalid-policy skip))" in capsys.readouterr().err
    head = _onehot_protein_head(tmp_path)
    with pytest.raises(InputError, match=r"^record 'b\\x00y': the id holds a NUL byte "):
        predict_sequences(head, given, threads=1)
    assert list(predict_sequences(head, given, threads=1, invalid_policy="skip")) == ["a"]
    assert "left out: b\\x00y (skipped: the id holds a NUL byte (--invalid-policy skip))" in capsys.readouterr().err
    fasta = tmp_path / "q.fa"
    fasta.write_bytes(b">a\nMKV\n>b\x00y\nMKV\n")
    with pytest.raises(InputError, match=r":3, record 'b\\x00y': the header holds a NUL byte \(a damaged file\?\)"):
        embed(fasta, tmp_path / "o.h5", EmbedOptions(model="onehot", threads=1))


def test_a_fit_stopped_at_the_save_of_its_early_stopping_epoch_resumes_to_the_same_head(small_head, tmp_path,
                                                                                          monkeypatch):
    # (a Ctrl-C after the state of the epoch that stopped the member early was saved, before the
    # member was finished: --resume finishes it as it stood, without training an epoch more)
    from safetensors.torch import load_file

    from protrans_cli.heads.fit import FitState

    _, emb = small_head
    labels = emb.with_name("train.csv")

    def config(**kw):
        return FitConfig(**{**dict(task="protein", max_epochs=40, patience=1, lr=0.5, threads=1, n_bootstrap=10,
                                   plots=False), **kw})

    whole = fit(config(), emb, labels, tmp_path / "whole")
    epochs = len(whole.history)
    assert 1 < epochs < 40  # (stopped early, which this test is about)
    save_epoch = _stop_at_save(monkeypatch, epochs)
    with pytest.raises(KeyboardInterrupt):
        fit(config(), emb, labels, tmp_path / "parts")
    monkeypatch.setattr(FitState, "save_epoch", save_epoch)
    parts = fit(config(resume=True), emb, labels, tmp_path / "parts")
    strip = ("seconds", "train_seconds", "train_cpu_seconds")
    assert [{k: v for k, v in line.items() if k not in strip} for line in parts.history] == [
        {k: v for k, v in line.items() if k not in strip} for line in whole.history]
    a, b = load_file(tmp_path / "whole" / "weights.safetensors"), load_file(tmp_path / "parts" / "weights.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_predict_fasta_scores_labels_piped_in_as_it_scores_them_from_a_file(run_cli, tmp_path):
    # (--fasta reads a label file before embedding, to refuse a bad one early; piped labels are
    # read once, after: the same predictions and scores as from the file)
    from protrans_cli.embed import EmbedOptions, embed

    rng = np.random.default_rng(0)
    seqs = {f"s{i}": "".join(rng.choice(list(AA), 12)) + ("KKKK" if i % 2 else "WWWW") for i in range(16)}
    fasta, labels = tmp_path / "t.fa", tmp_path / "t.csv"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    labels.write_text("id,label\n" + "".join(f"s{i},{'AB'[i % 2]}\n" for i in range(16)))
    embed(fasta, tmp_path / "t.h5", EmbedOptions(model="onehot", per_residue=False, threads=1))
    fit(FitConfig(task="protein", max_epochs=1, threads=1, n_bootstrap=10, plots=False), tmp_path / "t.h5", labels,
        tmp_path / "head")
    scores = []
    for given, piped in ((labels, None), ("-", labels.read_bytes())):
        out = tmp_path / f"p{len(scores)}.csv"
        r = run_cli("predict", tmp_path / "head", "--fasta", fasta, "--labels", given, "-o", out, "-j", "1",
                    input=piped)
        assert r.exit_code == 0, r.stderr
        (line,) = [line for line in r.stderr.splitlines() if " label: accuracy " in line]
        scores.append((line.split(" label: ", 1)[1], out.read_text()))
    assert scores[0] == scores[1] and "16 proteins" in scores[0][0]


def test_a_head_name_too_long_for_its_partial_folder_is_named(run_cli, ss_data, tmp_path):
    """A head of 250 bytes is a valid name, HEAD.partial/ (258) is not: fit said ".: cannot
    write here (File name too long)", blaming the folder."""
    head = tmp_path / ("h" * 250)
    r = run_cli("fit", "ss3", "--embeddings", ss_data / "train.h5", "--labels", ss_data / "train.csv",
                "--max-epochs", "1", *FAST, "-o", head)
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # (in the words of every other command's name too long: errors.name_too_long's)
    assert ("partial: File name too long (a name of 258 bytes, more than the 255 the file system takes); an "
            "unfinished run keeps its state in a folder of this name, the output's with '.partial' added (choose "
            "a shorter -o)") in r.stderr
    assert list(tmp_path.iterdir()) == []
