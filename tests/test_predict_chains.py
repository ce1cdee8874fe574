"""Complexes (embed --chains: chains joined by ':' in one record) through `protrans predict` and
`knn --fasta`: a per-residue head reads each chain as a protein of its own, compared with the same
head on the chains written as separate proteins; the states keep the record's ':'s."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest

from conftest import DATA

torch = pytest.importorskip("torch")

COMPLEXES = DATA / "embed" / "complexes.fa"
HEAVY, LIGHT = "MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQ"
TRIMER = ("ACDEFGHIK", "LMNPQRSTVWY", "MKV")
AA = "ACDEFGHIKLMNPQRSTVWY"


@pytest.fixture(scope="module")
def ss3_head(tmp_path_factory):
    """An ss3 CNN head of one epoch on one-hot rows: a fixed function of the rows, which is all
    these tests compare (not its accuracy)."""
    from protrans_cli.embed import EmbedOptions, embed
    from protrans_cli.heads.fit import FitConfig, fit
    from protrans_cli.heads.labels import read_labels, write_embed_fasta

    root = tmp_path_factory.mktemp("ss3_chains")
    rng = np.random.default_rng(0)
    with open(root / "train.csv", "w", newline="") as fh:
        fh.write("input, dssp3, dssp8, disorder\n")
        writer = csv.writer(fh)
        for _ in range(24):
            seq = "".join(rng.choice(list(AA), size=int(rng.integers(15, 40))))
            ss3 = "".join("H" if c in "AELMQKR" else "E" if c in "VIYFWT" else "C" for c in seq)
            writer.writerow([" ".join(seq), " ".join(ss3), " ".join(ss3.replace("H", "G")), " ".join(["1.0"] * len(seq))])
    with open(root / "train.fa", "wb") as fh:
        write_embed_fasta(read_labels(root / "train.csv"), fh)
    embed(root / "train.fa", root / "train.h5", EmbedOptions(model="onehot", per_protein=False, threads=1))
    head = root / "ss3"
    fit(FitConfig(task="ss3", max_epochs=1, max_residues=300, lr=0.02, threads=1, n_bootstrap=10),
        root / "train.h5", root / "train.csv", head)
    return head


def _states(path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return {lines[i][1:]: lines[i + 1] for i in range(0, len(lines), 2)}


def _probabilities(path) -> dict[str, tuple[np.ndarray, list | None]]:
    with h5py.File(path, "r") as f:
        return {ds.attrs["id"]: (ds[()], list(ds.attrs["chains"]) if "chains" in ds.attrs else None)
                for ds in f["ss3"].values()}


def test_a_cnn_reads_each_chain_as_a_protein_of_its_own(run_cli, ss3_head, tmp_path):
    """The complex's probabilities are those of its chains embedded and predicted as separate
    proteins, joined; its states carry a ':' between the chains, as its record does."""
    complexes = tmp_path / "complexes.h5"
    assert run_cli("embed", COMPLEXES, "-m", "onehot", "-o", complexes, "--chains", "separate").exit_code == 0
    chains = tmp_path / "chains.fa"
    chains.write_text(f">hl_1\n{HEAVY}\n>hl_2\n{LIGHT}\n"
                      + "".join(f">trimer_{i}\n{c}\n" for i, c in enumerate(TRIMER, 1)))
    assert run_cli("embed", chains, "-m", "onehot", "-o", tmp_path / "chains.h5").exit_code == 0
    for name, h5 in (("c", complexes), ("r", tmp_path / "chains.h5")):
        r = run_cli("predict", ss3_head, "--embeddings", h5, "-o", tmp_path / f"{name}.fa",
                    "--probabilities", tmp_path / f"{name}.h5", "--max-residues", "40")
        assert r.exit_code == 0, r.stderr
    got, ref = _states(tmp_path / "c.fa"), _states(tmp_path / "r.fa")
    assert got["heavy_light"] == f"{ref['hl_1']}:{ref['hl_2']}" == got["copy"]
    assert got["trimer"] == ":".join(ref[f"trimer_{i}"] for i in (1, 2, 3))
    assert ":" not in got["joined"] and len(got["joined"]) == len(HEAVY + LIGHT)
    probs, ref_probs = _probabilities(tmp_path / "c.h5"), _probabilities(tmp_path / "r.h5")
    for ident, parts in (("heavy_light", ("hl_1", "hl_2")), ("trimer", ("trimer_1", "trimer_2", "trimer_3"))):
        p, lengths = probs[ident]
        expected = np.concatenate([ref_probs[k][0] for k in parts])
        assert p.shape == expected.shape and lengths == [len(ref_probs[k][0]) for k in parts]
        np.testing.assert_allclose(p, expected, atol=1e-6, rtol=0)
    # the same rows read as one protein (what a CNN sliding across the break gives) differ at the break
    joined = probs["joined"][0]
    assert probs["joined"][1] is None
    assert np.abs(joined - probs["heavy_light"][0]).max(axis=1)[len(HEAVY) - 3:len(HEAVY) + 3].min() > 1e-6
    # (two convolutions of kernel 7 see 6 residues either side: farther from the break, the same)
    np.testing.assert_allclose(joined[:len(HEAVY) - 6], probs["heavy_light"][0][:len(HEAVY) - 6], atol=1e-6)

    # predict --labels without -o scores the same per-chain predictions (the labels, whose record
    # has no ':', are matched to the one-chain `joined` by sequence: pointed at the complex here)
    import dataclasses

    from protrans_cli.heads.predict import evaluate_head, scored_labels
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as fh:
        fh.write("input,dssp3\n")
        fh.write(f"{' '.join(HEAVY + LIGHT)},{' '.join(got['heavy_light'].replace(':', ''))}\n")
    label_set, items, report = scored_labels(ss3_head, complexes, labels, mask_columns=())
    assert [m.key for m in items] == ["joined"]
    for key, accuracy in (("heavy_light", 1.0), ("joined", None)):
        scored = (label_set, [dataclasses.replace(items[0], id=key, key=key)], report)
        result = evaluate_head(ss3_head, complexes, labels, n_boot=10, mask_columns=(), scored=scored)
        assert (result["ss3"]["accuracy"] == 1.0) == (accuracy == 1.0), result["ss3"]["accuracy"]


def test_a_damaged_chains_attribute_is_one_line_naming_the_protein(run_cli, ss3_head, tmp_path):
    h5 = tmp_path / "c.h5"
    assert run_cli("embed", COMPLEXES, "-m", "onehot", "-o", h5, "--chains", "separate").exit_code == 0
    with h5py.File(h5, "r+") as f:
        f["per_residue/trimer"].attrs["chains"] = np.array([9, 11, 4])
    r = run_cli("predict", ss3_head, "--embeddings", h5)
    assert r.exit_code == 1
    line = r.stderr.strip().splitlines()[-1]
    assert "'trimer'" in line and "chains attribute (9, 11, 4) does not add up to its 23 rows" in line


def test_predict_fasta_takes_chains(run_cli, ss3_head, tmp_path):
    r = run_cli("predict", ss3_head, "--fasta", COMPLEXES, "-o", tmp_path / "p.fa")
    assert r.exit_code == 1 and not (tmp_path / "p.fa").exists()
    line = r.stderr.strip().splitlines()[-1]
    assert "'heavy_light'" in line and "--chains linker" in line and "--chains separate" in line
    r = run_cli("predict", ss3_head, "--fasta", COMPLEXES, "-o", tmp_path / "p.fa", "--chains", "separate")
    assert r.exit_code == 0, r.stderr
    h5 = tmp_path / "c.h5"
    assert run_cli("embed", COMPLEXES, "-m", "onehot", "-o", h5, "--chains", "separate").exit_code == 0
    assert run_cli("predict", ss3_head, "--embeddings", h5, "-o", tmp_path / "e.fa").exit_code == 0
    assert _states(tmp_path / "p.fa") == _states(tmp_path / "e.fa")
    assert list(_states(tmp_path / "p.fa")) == ["heavy_light", "joined", "trimer", "copy"]  # the FASTA's order
    # onehot rows do not depend on the linker: the same states
    r = run_cli("predict", ss3_head, "--fasta", COMPLEXES, "-o", tmp_path / "l.fa", "--chains", "linker",
                "--linker-length", "5")
    assert r.exit_code == 0, r.stderr
    assert _states(tmp_path / "l.fa") == _states(tmp_path / "e.fa")


@pytest.mark.parametrize("flag", [("--chains", "linker"), ("--linker-length", "5")])
def test_chains_options_go_with_fasta(run_cli, ss3_head, tmp_path, flag):
    h5 = tmp_path / "c.h5"
    r = run_cli("predict", ss3_head, "--embeddings", h5, *flag)
    assert r.exit_code == 2 and f"{flag[0]} goes with --fasta" in r.stderr
    r = run_cli("knn", h5, "--reference", h5, *flag)
    assert r.exit_code == 2 and f"{flag[0]} goes with --fasta" in r.stderr


def test_knn_fasta_takes_chains(run_cli, tmp_path):
    ref = tmp_path / "ref.h5"
    assert run_cli("embed", COMPLEXES, "-m", "onehot", "-o", ref, "--chains", "separate", "--per-protein").exit_code == 0
    r = run_cli("knn", "--fasta", COMPLEXES, "--reference", ref, "-o", tmp_path / "hits.tsv")
    assert r.exit_code == 1 and "--chains linker" in r.stderr and "'heavy_light'" in r.stderr
    r = run_cli("knn", "--fasta", COMPLEXES, "--reference", ref, "-o", tmp_path / "hits.tsv", "--chains", "separate")
    assert r.exit_code == 0, r.stderr
    with open(tmp_path / "hits.tsv", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    hits = {row[0]: row for row in rows[1:]}
    assert float(hits["trimer"][3]) == 0.0  # its own vector, embedded the same way


@pytest.mark.parametrize("storage", ["float32", "float16"])
def test_chains_read_from_the_file_equal_the_cached_rows(tmp_path, run_cli, storage):
    """A complex's chains read as proteins of their own: the same rows streamed from the file
    (no cache) as from the cache, each its slice of the complex's rows (read alone from the file:
    a hyperslab, converted from float16 where stored so)."""
    from protrans_cli.heads.data import ResidueData
    from protrans_cli.heads.predict import _all_items, chain_items
    from protrans_cli.io.h5 import PER_RESIDUE, EmbeddingsReader

    h5 = tmp_path / "c.h5"
    assert run_cli("embed", COMPLEXES, "-m", "onehot", "-o", h5, "--chains", "separate",
                   "--storage-dtype", storage).exit_code == 0
    chains: dict = {}
    with EmbeddingsReader(h5) as reader:
        items, _ = _all_items(reader, PER_RESIDUE, chains)
        whole = {i: a for i, a, _ in reader.items(PER_RESIDUE)}
    assert chains == {"heavy_light": (22, 13), "trimer": (9, 11, 3), "copy": (22, 13)}
    pieces = chain_items(items, chains)
    assert sorted((p.id, p.length, getattr(p, "start", 0)) for p in pieces if p.id in ("trimer", "joined")) == \
        [("joined", 35, 0), ("trimer", 3, 20), ("trimer", 9, 0), ("trimer", 11, 9)]
    for cache in (0, 1 << 30):
        data = ResidueData(h5, pieces, cache_bytes=cache)
        assert (data.cached is None) == (cache == 0)
        for batch in data.batches(max_residues=40):
            for row, i in enumerate(batch.index):
                piece = pieces[i]
                start = getattr(piece, "start", 0)
                np.testing.assert_array_equal(batch.x[row, :piece.length].numpy(),
                                              whole[piece.id][start:start + piece.length])


def test_predict_sequences_takes_chains(ss3_head, tmp_path, run_cli):
    """The Python API reads complexes as predict --fasta does: each chain a protein of its own,
    labels with the record's ':'s, probabilities of all the chains' rows; the same as predict
    --fasta writes, and as the chains predicted as separate proteins."""
    from protrans_cli import predict_sequences
    from protrans_cli.errors import InputError

    sequences = {"heavy_light": f"{HEAVY}:{LIGHT}", "trimer": ":".join(TRIMER), "joined": HEAVY + LIGHT}
    with pytest.raises(InputError, match="chains"):
        predict_sequences(ss3_head, sequences, threads=1)
    alone = predict_sequences(ss3_head, {"h": HEAVY, "l": LIGHT, **{f"t{i}": c for i, c in enumerate(TRIMER)}},
                              threads=1)
    assert run_cli("predict", ss3_head, "--fasta", COMPLEXES, "-o", tmp_path / "p.fa", "--chains", "separate",
                   "--probabilities", tmp_path / "p.h5").exit_code == 0
    written, probs = _states(tmp_path / "p.fa"), _probabilities(tmp_path / "p.h5")
    for chains in ("separate", "linker"):
        got = predict_sequences(ss3_head, sequences, chains=chains, linker_length=5, threads=1)
        hl = got["heavy_light"]["ss3"]
        assert hl.labels == f"{alone['h']['ss3'].labels}:{alone['l']['ss3'].labels}" == written["heavy_light"]
        np.testing.assert_allclose(hl.probabilities, np.concatenate([alone["h"]["ss3"].probabilities,
                                                                     alone["l"]["ss3"].probabilities]), atol=1e-6)
        np.testing.assert_allclose(hl.probabilities, probs["heavy_light"][0], atol=1e-6)
        assert got["trimer"]["ss3"].labels == ":".join(alone[f"t{i}"]["ss3"].labels for i in range(3))
        assert got["joined"]["ss3"].labels == written["joined"] and ":" not in written["joined"]
    as_list = predict_sequences(ss3_head, list(sequences.values()), chains="separate", threads=1)
    assert [r["ss3"].labels for r in as_list] == [written[k] for k in sequences]


def test_export_of_probabilities_keeps_the_chains(run_cli, ss3_head, tmp_path):
    """A probabilities file of complexes exports with each row's chain and place in it (a table),
    or each protein's chain lengths (an .npz), as an embeddings file does."""
    h5 = tmp_path / "c.h5"
    assert run_cli("embed", COMPLEXES, "-m", "onehot", "-o", h5, "--chains", "separate").exit_code == 0
    assert run_cli("predict", ss3_head, "--embeddings", h5, "--probabilities", tmp_path / "p.h5").exit_code == 0
    r = run_cli("export", tmp_path / "p.h5", "-o", tmp_path / "p.tsv")
    assert r.exit_code == 0, r.stderr
    with open(tmp_path / "p.tsv", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0][:4] == ["id", "position", "chain", "chain_position"] and rows[0][4].startswith("ss3:")
    trimer = [(int(r[1]), int(r[2]), int(r[3])) for r in rows[1:] if r[0] == "trimer"]
    expected = [(c, k) for c, chain in enumerate(TRIMER, 1) for k in range(1, len(chain) + 1)]
    assert trimer == [(i, c, k) for i, (c, k) in enumerate(expected, 1)]
    assert {(r[2], r[3]) for r in rows[1:] if r[0] == "joined"} == {("1", str(k)) for k in range(1, 36)}
    probs = _probabilities(tmp_path / "p.h5")
    table = np.array([[float(x) for x in r[4:]] for r in rows[1:] if r[0] == "trimer"])
    np.testing.assert_allclose(table, probs["trimer"][0], rtol=1e-6)
    assert run_cli("export", tmp_path / "p.h5", "-o", tmp_path / "p.npz").exit_code == 0
    with np.load(tmp_path / "p.npz") as npz:
        starts = np.concatenate([[0], np.cumsum(npz["chain_counts"])])
        got = {i: list(npz["chains"][starts[k]:starts[k + 1]]) for k, i in enumerate(npz["ids"])}
    assert got == {"heavy_light": [22, 13], "copy": [22, 13], "joined": [35], "trimer": [9, 11, 3]}
    # probabilities of proteins of one chain: the columns as before
    plain = tmp_path / "plain.fa"
    plain.write_text(f">a\n{HEAVY}\n")
    assert run_cli("predict", ss3_head, "--fasta", plain, "--probabilities", tmp_path / "q.h5").exit_code == 0
    assert run_cli("export", tmp_path / "q.h5", "-o", tmp_path / "q.tsv").exit_code == 0
    assert (tmp_path / "q.tsv").read_text().startswith("id\tposition\tss3:")
    assert run_cli("export", tmp_path / "q.h5", "-o", tmp_path / "q.npz").exit_code == 0
    with np.load(tmp_path / "q.npz") as npz:
        assert "chains" not in npz.files


def test_labels_with_colons_match_a_complexs_chains(run_cli, ss3_head, tmp_path):
    """Per-residue labels written with ':' between a complex's chains (as predict writes its
    states) match the complex's rows, the ':'s removed, its chain lengths checked against the
    embedding's `chains`; a mismatch is one line naming the record."""
    h5 = tmp_path / "c.h5"
    assert run_cli("embed", COMPLEXES, "-m", "onehot", "-o", h5, "--chains", "separate").exit_code == 0
    assert run_cli("predict", ss3_head, "--embeddings", h5, "-o", tmp_path / "states.fa").exit_code == 0
    states = _states(tmp_path / "states.fa")
    assert ":" in states["trimer"]
    # the head's own states as labels: every residue right, chains and all
    r = run_cli("predict", ss3_head, "--embeddings", h5, "--labels", tmp_path / "states.fa")
    assert r.exit_code == 0, r.stderr
    assert "ss3: Q3 1.0000" in r.stderr and "128 positions in 4 proteins" in r.stderr, r.stderr

    def refused(ident: str, text: str) -> str:
        labels = tmp_path / f"{ident}.fa"
        labels.write_text(f">{ident}\n{text}\n")
        r = run_cli("predict", ss3_head, "--embeddings", h5, "--labels", labels)
        assert r.exit_code == 1, r.stdout + r.stderr
        line = r.stderr.strip().splitlines()[-1]
        assert f"'{ident}'" in line, line
        return line

    hl = states["heavy_light"].replace(":", "")
    line = refused("heavy_light", hl[:20] + ":" + hl[20:])
    assert "chains of 20, 15 residues" in line and "chains are of 22, 13" in line
    joined = states["joined"]
    assert "is of one chain" in refused("joined", joined[:22] + ":" + joined[22:])
    assert "empty chain" in refused("trimer", ":" + states["trimer"])


def test_predict_fasta_reads_complexes_as_the_heads_training_embeddings_did(run_cli, tmp_path):
    """A head fit on embeddings of complexes (embed --chains separate) records the policy, and
    predict --fasta reads complexes so without --chains (saying so), as finetune's heads do."""
    import json

    h5 = tmp_path / "train.h5"
    assert run_cli("embed", COMPLEXES, "-m", "onehot", "-o", h5, "--chains", "separate", "--per-residue").exit_code == 0
    labels = tmp_path / "labels.csv"
    rows = {"heavy_light": "MKTAYIAKQRQISFVKSHFSRQ:GSHMLEDPVDAFQ", "joined": "MKTAYIAKQRQISFVKSHFSRQGSHMLEDPVDAFQ",
            "trimer": "ACDEFGHIK:LMNPQRSTVWY:MKV", "copy": "MKTAYIAKQRQISFVKSHFSRQ:GSHMLEDPVDAFQ"}
    labels.write_text("id,ss3\n" + "".join(f"{i},{''.join('H' if c in 'AELMQKR' else 'C' for c in s.replace(':', ''))}\n"
                                           for i, s in rows.items()))
    head = tmp_path / "head"
    r = run_cli("fit", "ss3", "--embeddings", h5, "--labels", labels, "-o", head, "--max-epochs", "1",
                "--valid-fraction", "0.25", "--bootstrap", "10")
    assert r.exit_code == 0, r.stderr
    recorded = json.loads((head / "config.json").read_text())["embedding"]
    assert recorded["chains"] == "separate" and "linker_length" not in recorded
    r = run_cli("predict", head, "--fasta", COMPLEXES, "-o", tmp_path / "p.fa")
    assert r.exit_code == 0, r.stderr
    assert "complexes: --chains separate, as in the head's training embeddings" in r.stderr
    assert _states(tmp_path / "p.fa")["trimer"].count(":") == 2
