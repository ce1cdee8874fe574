"""Protein complexes in `protrans embed` (`--chains`): chains joined by ':' in one record, embedded
with ESMFold's glycine linker (its rows dropped) or chain by chain, compared with a plain
transformers forward pass of the joined sequence or of each chain alone."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import DATA, save_tiny_model
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader

torch = pytest.importorskip("torch")
from protrans_cli.models import FAMILIES  # noqa: E402
from test_embed_models import reference_rows  # noqa: E402

COMPLEXES = DATA / "embed" / "complexes.fa"
HEAVY, LIGHT = "MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQ"
TRIMER = ("ACDEFGHIK", "LMNPQRSTVWY", "MKV")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return {name: save_tiny_model(tmp_path_factory, name) for name in ("esm", "t5", "bert")}


def _embed(run_cli, model, out, *extra):
    r = run_cli("embed", COMPLEXES, "-m", model, "-o", out, "--device", "cpu", "-j", "1", "--max-tokens", "128",
                *extra)
    assert r.exit_code == 0, r.stderr
    assert "embedded 4 proteins (128 residues" in r.stderr  # the chains' residues: no ':', no linker
    with EmbeddingsReader(out) as reader:
        res = {i: a for i, a, _ in reader.items(PER_RESIDUE)}
        prot = {i: a for i, a, _ in reader.items(PER_PROTEIN)}
        attrs = {i: dict(reader.file[PER_RESIDUE][i].attrs) for i in res}
        file_attrs = dict(reader.attrs)
    return res, prot, attrs, file_attrs


def _linked(family, model, chains, n):
    rows = reference_rows(family, model, ("G" * n).join(chains))[0]
    keep, start = [], 0
    for c in chains:
        keep += range(start, start + len(c))
        start += len(c) + n
    return rows[keep]


@pytest.mark.parametrize("family_name", ["esm", "t5", "bert"])
@pytest.mark.parametrize("linker", [25, 10, 0])
def test_linker_rows_are_the_joined_forward_without_the_linker(run_cli, tmp_path, tiny, family_name, linker):
    family, model = FAMILIES[family_name], tiny[family_name]
    extra = ("--chains", "linker") + (() if linker == 25 else ("--linker-length", str(linker)))
    res, prot, attrs, file_attrs = _embed(run_cli, model, tmp_path / "e.h5", *extra)
    for ident, chains in (("heavy_light", (HEAVY, LIGHT)), ("trimer", TRIMER)):
        ref = _linked(family, model, chains, linker)
        assert res[ident].shape == (sum(map(len, chains)), ref.shape[-1])
        np.testing.assert_allclose(res[ident], ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(prot[ident], ref.mean(0), atol=1e-5, rtol=0)
        assert list(attrs[ident]["chains"]) == [len(c) for c in chains]
        assert attrs[ident]["length"] == sum(map(len, chains))
    # "A:B" and "AB" are different proteins: both written, "AB" a plain forward of one chain
    np.testing.assert_allclose(res["joined"], reference_rows(family, model, HEAVY + LIGHT)[0], atol=1e-5, rtol=0)
    assert "chains" not in attrs["joined"] and attrs["joined"]["checksum"] != attrs["heavy_light"]["checksum"]
    if linker:
        assert not np.allclose(res["joined"], res["heavy_light"], atol=1e-3)
    np.testing.assert_array_equal(res["copy"], res["heavy_light"])  # the same complex: computed once, copied
    assert file_attrs["chains"] == "linker" and file_attrs["linker_length"] == linker


@pytest.mark.parametrize("family_name", ["esm", "t5", "bert"])
def test_separate_rows_are_each_chain_alone(run_cli, tmp_path, tiny, family_name):
    family, model = FAMILIES[family_name], tiny[family_name]
    res, prot, attrs, file_attrs = _embed(run_cli, model, tmp_path / "e.h5", "--chains", "separate")
    for ident, chains in (("heavy_light", (HEAVY, LIGHT)), ("trimer", TRIMER)):
        ref = np.concatenate([reference_rows(family, model, c)[0] for c in chains])
        np.testing.assert_allclose(res[ident], ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(prot[ident], ref.mean(0), atol=1e-5, rtol=0)
        assert list(attrs[ident]["chains"]) == [len(c) for c in chains] and "chunks" not in attrs[ident]
    assert file_attrs["chains"] == "separate" and "linker_length" not in file_attrs


def test_info_says_the_chains_policy(run_cli, tmp_path):
    out = tmp_path / "e.h5"
    assert run_cli("embed", COMPLEXES, "-m", "onehot", "-o", out, "--chains", "linker").exit_code == 0
    r = run_cli("info", out)
    assert r.exit_code == 0 and "complexes:" in r.stdout and "linker (25 glycines between chains)" in r.stdout
    assert " of " not in r.stdout.split("complexes:")[1].splitlines()[0]  # (no count without a pass over them)
    # --residues reads every protein's attributes: the complexes are counted there
    r = run_cli("info", out, "--residues")
    assert "linker (25 glycines between chains), 3 of 4 proteins" in r.stdout, r.stdout
    import json

    assert json.loads(run_cli("info", out, "--residues", "--json").stdout)["residues"]["complexes"] == 3
    plain = tmp_path / "plain.fa"
    plain.write_text(f">a\n{HEAVY}\n")
    assert run_cli("embed", plain, "-m", "onehot", "-o", tmp_path / "p.h5").exit_code == 0
    r = run_cli("info", tmp_path / "p.h5", "--residues", "--json")
    assert "complexes" not in json.loads(r.stdout)["residues"]


def test_separate_chunks_inside_a_chain_only(run_cli, tmp_path, tiny):
    """A chain longer than --max-length gets windows of its own; no window crosses a chain break."""
    family, model = FAMILIES["esm"], tiny["esm"]
    res, _, attrs, _ = _embed(run_cli, model, tmp_path / "e.h5", "--chains", "separate", "--max-length", "12",
                              "--long-policy", "chunk", "--chunk-overlap", "4")
    trimer = res["trimer"]
    np.testing.assert_allclose(trimer[:9], reference_rows(family, model, TRIMER[0])[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(trimer[9:20], reference_rows(family, model, TRIMER[1])[0], atol=1e-5, rtol=0)
    # the heavy chain (22) in windows (0, 12) (8, 20) (10, 22); the light chain (13) in (0, 12) (1, 13)
    assert attrs["heavy_light"]["chunks"] == 5 and "chunks" not in attrs["trimer"]
    light = res["heavy_light"][len(HEAVY):]
    np.testing.assert_allclose(light[:6], reference_rows(family, model, LIGHT[:12])[0][:6], atol=1e-5, rtol=0)


def test_linker_max_length_counts_the_linker(run_cli, tmp_path, tiny):
    out = tmp_path / "e.h5"
    r = run_cli("embed", COMPLEXES, "-m", tiny["esm"], "-o", out, "--device", "cpu", "--chains", "linker",
                "--max-length", "40")
    assert r.exit_code == 1
    assert "60 residues with the linkers, longer than --max-length 40" in r.stderr and "'heavy_light'" in r.stderr
    r = run_cli("embed", COMPLEXES, "-m", tiny["esm"], "-o", out, "--device", "cpu", "--chains", "linker",
                "--max-length", "40", "--long-policy", "skip")
    assert r.exit_code == 0, r.stderr
    with EmbeddingsReader(out) as reader:
        assert sorted(reader.failed()) == ["copy", "heavy_light", "trimer"]
        assert sorted(reader.ids()) == ["joined"]


def test_a_colon_is_refused_by_default_naming_chains(run_cli, tmp_path):
    r = run_cli("embed", COMPLEXES, "-m", "onehot", "-o", tmp_path / "e.h5")
    assert r.exit_code == 1 and not (tmp_path / "e.h5").exists()
    line = r.stderr.strip().splitlines()[-1]
    assert "complexes.fa:1," in line and "'heavy_light'" in line and "chain break" in line
    assert "--chains linker" in line and "--chains separate" in line and "residue 23" in line


@pytest.mark.parametrize("sequence", [":MKV", "MKV:", "MK::V"])
def test_an_empty_chain_is_an_error_or_skipped(run_cli, tmp_path, sequence):
    fasta = tmp_path / "x.fa"
    fasta.write_text(f">bad\n{sequence}\n>good\nMKV:ACD\n")
    r = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "e.h5", "--chains", "separate")
    assert r.exit_code == 1 and "'bad'" in r.stderr and "is empty" in r.stderr
    r = run_cli("embed", fasta, "-m", "onehot", "-o", tmp_path / "e.h5", "--chains", "separate",
                "--invalid-policy", "skip")
    assert r.exit_code == 0, r.stderr
    with EmbeddingsReader(tmp_path / "e.h5") as reader:
        assert list(reader.ids()) == ["good"] and "empty" in reader.failed()["bad"]
        assert reader.get("good", PER_RESIDUE).shape[0] == 6


@pytest.mark.parametrize("args", [["--chains", "linker", "--linker-length", "-1"],
                                  ["--chains", "linker", "--max-length", "30", "--long-policy", "truncate"],
                                  ["--chains", "separate", "--max-length", "30", "--long-policy", "truncate"],
                                  ["--chains", "separate", "--pooling", "cls", "--per-protein"],
                                  ["--chains", "bogus"]])
def test_usage_errors(run_cli, tmp_path, args):
    r = run_cli("embed", COMPLEXES, "-m", "onehot", "-o", tmp_path / "e.h5", *args)
    assert r.exit_code == 2 and not (tmp_path / "e.h5").exists(), r.stderr


def test_resume_with_another_policy_is_refused(run_cli, tmp_path):
    out = tmp_path / "e.h5"
    assert run_cli("embed", COMPLEXES, "-m", "onehot", "-o", out, "--chains", "linker").exit_code == 0
    for args in (["--chains", "separate"], ["--chains", "linker", "--linker-length", "5"]):
        r = run_cli("embed", COMPLEXES, "-m", "onehot", "-o", out, "--resume", *args)
        assert r.exit_code != 0 and ("chains" in r.stderr or "linker_length" in r.stderr), r.stderr
    r = run_cli("embed", COMPLEXES, "-m", "onehot", "-o", out, "--resume", "--chains", "linker")
    assert r.exit_code == 0, r.stderr


def test_embed_sequences_takes_complexes():
    from protrans_cli import EmbedOptions, embed_sequences

    got = embed_sequences({"c": "MKV:AC", "p": "MKVAC"}, EmbedOptions(model="onehot", chains="separate"),
                          kind=PER_RESIDUE)
    np.testing.assert_array_equal(got["c"], got["p"])  # onehot: no context, the rows agree
    with pytest.raises(Exception, match="chains='linker'"):
        embed_sequences(["MKV:AC"], EmbedOptions(model="onehot"), kind=PER_RESIDUE)


@pytest.mark.parametrize("linker", [25, 3])
def test_contacts_linker_is_the_joined_map_without_the_linker(run_cli, tmp_path, linker):
    """The (L, L) map of a complex: transformers' predict_contacts over the chains joined by
    glycines, the linker's rows and columns removed (the inter-chain block kept)."""
    import h5py
    from transformers import EsmForMaskedLM, EsmTokenizer

    model = DATA / "esm_reference"
    out = tmp_path / "c.h5"
    r = run_cli("contacts", COMPLEXES, "-m", model, "-o", out, "--chains", "linker", "--linker-length", str(linker),
                "--storage-dtype", "float32", "--device", "cpu")
    assert r.exit_code == 0, r.stderr
    hf = EsmForMaskedLM.from_pretrained(str(model), attn_implementation="eager").eval()
    tok = EsmTokenizer.from_pretrained(str(model))
    with h5py.File(out, "r") as f:
        got = {f["contacts"][k].attrs["id"]: (f["contacts"][k][()], dict(f["contacts"][k].attrs)) for k in f["contacts"]}
        assert f.attrs["chains"] == "linker" and f.attrs["linker_length"] == linker
    for ident, chains in (("heavy_light", (HEAVY, LIGHT)), ("trimer", TRIMER), ("joined", (HEAVY + LIGHT,))):
        enc = tok([("G" * linker).join(chains)], return_tensors="pt")
        with torch.no_grad():
            ref = hf.predict_contacts(enc["input_ids"], enc["attention_mask"]).numpy()[0]
        keep, start = [], 0
        for c in chains:
            keep += range(start, start + len(c))
            start += len(c) + linker
        ref = ref[np.ix_(keep, keep)]
        contacts, attrs = got[ident]
        np.testing.assert_allclose(contacts, ref, atol=1e-5, rtol=0, err_msg=ident)
        assert attrs["length"] == len(keep)
        if len(chains) > 1:
            assert list(attrs["chains"]) == [len(c) for c in chains]
    np.testing.assert_array_equal(got["copy"][0], got["heavy_light"][0])


def test_contacts_refuses_a_colon_and_separate(run_cli, tmp_path):
    model = DATA / "esm_reference"
    r = run_cli("contacts", COMPLEXES, "-m", model, "-o", tmp_path / "c.h5", "--device", "cpu")
    assert r.exit_code == 1 and "--chains linker reads it" in r.stderr and "'heavy_light'" in r.stderr
    assert "separate" not in r.stderr
    r = run_cli("contacts", COMPLEXES, "-m", model, "-o", tmp_path / "c.h5", "--chains", "separate")
    assert r.exit_code == 2
    r = run_cli("contacts", COMPLEXES, "-m", model, "-o", tmp_path / "c.h5", "--chains", "linker",
                "--linker-length", "-2")
    assert r.exit_code == 2 and not (tmp_path / "c.h5").exists()


def _all(path):
    with EmbeddingsReader(path) as reader:
        return {i: (a, dict(reader.file[PER_RESIDUE][i].attrs)) for i, a, _ in reader.items(PER_RESIDUE)}


def test_parts_merged_equal_one_run(run_cli, tmp_path, tiny):
    args = ("-m", tiny["esm"], "--device", "cpu", "--chains", "linker", "--linker-length", "7")
    assert run_cli("embed", COMPLEXES, "-o", tmp_path / "whole.h5", *args).exit_code == 0
    for k in (1, 2):
        r = run_cli("embed", COMPLEXES, "-o", tmp_path / f"p{k}.h5", "--part", f"{k}/2", *args)
        assert r.exit_code == 0, r.stderr
    r = run_cli("merge", tmp_path / "p1.h5", tmp_path / "p2.h5", "-o", tmp_path / "merged.h5")
    assert r.exit_code == 0, r.stderr
    whole, merged = _all(tmp_path / "whole.h5"), _all(tmp_path / "merged.h5")
    assert whole.keys() == merged.keys()
    for ident, (rows, attrs) in whole.items():
        np.testing.assert_allclose(merged[ident][0], rows, atol=1e-6, rtol=0)
        assert list(merged[ident][1].get("chains", [])) == list(attrs.get("chains", []))


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PROTRANS_NO_PROGRESS="1")
    args = ["embed", str(COMPLEXES), "-m", "onehot", "--chains", "separate"]
    single = subprocess.run([sys.executable, "-m", "protrans_cli", *args, "-o", str(tmp_path / "one.h5")], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "protrans_cli", *args, "-o", str(tmp_path / "two.h5")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = _all(tmp_path / "one.h5"), _all(tmp_path / "two.h5")
    assert one.keys() == two.keys()
    for ident, (rows, attrs) in one.items():
        np.testing.assert_array_equal(two[ident][0], rows)
        assert list(two[ident][1].get("chains", [])) == list(attrs.get("chains", []))


def test_resume_refuses_a_complex_turned_into_one_chain(run_cli, tmp_path):
    out, fasta = tmp_path / "e.h5", tmp_path / "x.fa"
    fasta.write_text(">c\nMKV:ACD\n")
    assert run_cli("embed", fasta, "-m", "onehot", "-o", out, "--chains", "separate").exit_code == 0
    fasta.write_text(">c\nMKVACD\n>d\nMKV\n")
    r = run_cli("embed", fasta, "-m", "onehot", "-o", out, "--chains", "separate", "--resume")
    assert r.exit_code == 1 and "another sequence under this id" in r.stderr and "'c'" in r.stderr


def test_contacts_resume_with_another_linker_is_refused(run_cli, tmp_path):
    model, out = DATA / "esm_reference", tmp_path / "c.h5"
    args = ("contacts", COMPLEXES, "-m", model, "-o", out, "--device", "cpu", "--chains", "linker")
    assert run_cli(*args).exit_code == 0
    r = run_cli(*args, "--linker-length", "5", "--resume")
    assert r.exit_code != 0 and "linker_length" in r.stderr, r.stderr
    assert run_cli(*args, "--resume").exit_code == 0


@pytest.mark.parametrize("kind", ["per_residue", "per_protein"])
def test_export_npz_keeps_each_complexs_chains(run_cli, tmp_path, kind):
    """An .npz of a complexes file gives each protein's chain lengths (`chain_counts`, `chains`)
    and the file's policy in its metadata: the ':'s of the records are not lost."""
    import json

    h5, out = tmp_path / "e.h5", tmp_path / "e.npz"
    assert run_cli("embed", COMPLEXES, "-m", "onehot", "-o", h5, "--chains", "linker", "--linker-length", "5").exit_code == 0
    flag = "--" + kind.replace("_", "-")
    r = run_cli("export", h5, "-o", out, flag)
    assert r.exit_code == 0, r.stderr
    with np.load(out) as npz:
        ids, counts, chains = list(npz["ids"]), npz["chain_counts"], npz["chains"]
        metadata = json.loads(str(npz["metadata"]))
        if kind == "per_residue":
            assert list(npz["lengths"]) == [35, 35, 35, 23]
    starts = np.concatenate([[0], np.cumsum(counts)])
    got = {ident: list(chains[starts[i]:starts[i + 1]]) for i, ident in enumerate(ids)}
    assert got == {"heavy_light": [len(HEAVY), len(LIGHT)], "copy": [len(HEAVY), len(LIGHT)],
                   "joined": [len(HEAVY + LIGHT)], "trimer": [len(c) for c in TRIMER]}
    assert metadata["chains"] == "linker" and metadata["linker_length"] == 5
    # a file without complexes: no such members
    plain = tmp_path / "plain.fa"
    plain.write_text(f">a\n{HEAVY}\n")
    assert run_cli("embed", plain, "-m", "onehot", "-o", tmp_path / "p.h5").exit_code == 0
    assert run_cli("export", tmp_path / "p.h5", "-o", tmp_path / "p.npz", flag).exit_code == 0
    with np.load(tmp_path / "p.npz") as npz:
        assert "chains" not in npz.files and "chain_counts" not in npz.files


def test_export_table_says_each_residues_chain(run_cli, tmp_path):
    """A per-residue table of a complexes file has `chain` and `chain_position` (1-based) beside
    `position`; with a FASTA its residue column holds the chains' letters (no ':' row). A file of
    no complexes, and a per-protein table, keep their columns."""
    import csv

    h5 = tmp_path / "e.h5"
    assert run_cli("embed", COMPLEXES, "-m", "onehot", "-o", h5, "--chains", "linker").exit_code == 0
    r = run_cli("export", h5, "-o", tmp_path / "e.tsv", "--per-residue", "--ids", COMPLEXES)
    assert r.exit_code == 0, r.stderr
    with open(tmp_path / "e.tsv", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    assert rows[0][:6] == ["id", "position", "residue", "chain", "chain_position", "dim_0"]
    by_id: dict = {}
    for row in rows[1:]:
        by_id.setdefault(row[0], []).append(row[1:5])
    for ident, chains in (("heavy_light", (HEAVY, LIGHT)), ("copy", (HEAVY, LIGHT)), ("trimer", TRIMER),
                          ("joined", (HEAVY + LIGHT,))):
        expected = [[letter, str(c), str(k)] for c, chain in enumerate(chains, 1) for k, letter in enumerate(chain, 1)]
        assert by_id[ident] == [[str(i), *e] for i, e in enumerate(expected, 1)], ident
    with EmbeddingsReader(h5) as reader:
        rows_of = {i: a for i, a, _ in reader.items(PER_RESIDUE)}
    got = np.array([[float(x) for x in row[5:]] for row in rows[1:] if row[0] == "trimer"])
    np.testing.assert_array_equal(got, rows_of["trimer"])
    # per protein: no chain columns; a file of no complexes: the columns it always had
    assert run_cli("export", h5, "-o", tmp_path / "p.tsv").exit_code == 0
    assert (tmp_path / "p.tsv").read_text().startswith("id\tdim_0\t")
    plain = tmp_path / "plain.fa"
    plain.write_text(f">a\n{HEAVY}\n")
    assert run_cli("embed", plain, "-m", "onehot", "-o", tmp_path / "q.h5").exit_code == 0
    assert run_cli("export", tmp_path / "q.h5", "-o", tmp_path / "q.csv", "--per-residue").exit_code == 0
    assert (tmp_path / "q.csv").read_text().startswith("id,position,dim_0,")


def test_export_esm_notes_the_chain_breaks_are_lost(run_cli, tmp_path):
    h5 = tmp_path / "e.h5"
    assert run_cli("embed", COMPLEXES, "-m", "onehot", "-o", h5, "--chains", "separate").exit_code == 0
    r = run_cli("export", h5, "--format", "esm", "-o", tmp_path / "esm")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("no chain breaks") == 1 and "an .npz export keeps them" in r.stderr
    entry = torch.load(tmp_path / "esm" / "trimer.pt", weights_only=True)
    assert entry["representations"][0].shape == (23, 21)  # (the chains' rows, in order)
    r = run_cli("export", h5, "--format", "esm", "-o", tmp_path / "esm2", "--per-protein")
    assert r.exit_code == 0 and "no chain breaks" not in r.stderr  # (vectors: no rows to place)


@pytest.mark.gpu
@pytest.mark.parametrize("packing", ["--packing", "--no-packing"])
@pytest.mark.parametrize("policy", ["linker", "separate"])
def test_complexes_on_the_gpu_match_the_fp32_reference(run_cli, tmp_path, tiny, policy, packing):
    """The GPU's paths (bfloat16, packed rows or padded batches) drop a linker's rows and stitch a
    complex's chains as the CPU does: its rows equal the plain fp32 forward's to bf16 accuracy."""
    family, model = FAMILIES["esm"], tiny["esm"]
    out = tmp_path / "g.h5"
    r = run_cli("embed", COMPLEXES, "-m", model, "-o", out, "--chains", policy, packing)
    assert r.exit_code == 0, r.stderr
    with EmbeddingsReader(out) as reader:
        assert str(reader.attrs["device"]).startswith("cuda")
        res = {i: a for i, a, _ in reader.items(PER_RESIDUE)}
        prot = {i: a for i, a, _ in reader.items(PER_PROTEIN)}
    for ident, chains in (("heavy_light", (HEAVY, LIGHT)), ("trimer", TRIMER)):
        ref = (_linked(family, model, chains, 25) if policy == "linker"
               else np.concatenate([reference_rows(family, model, c)[0] for c in chains]))
        assert res[ident].shape == ref.shape
        err = np.linalg.norm(res[ident] - ref) / np.linalg.norm(ref)
        assert err < 2e-2, (ident, err)
        np.testing.assert_allclose(prot[ident], res[ident].mean(0), rtol=1e-2, atol=1e-2)


def test_a_linker_length_without_the_linker_is_said_to_be_ignored(run_cli, tmp_path):
    r = run_cli("embed", COMPLEXES, "-m", "onehot", "-o", tmp_path / "s.h5", "--chains", "separate",
                "--linker-length", "10")
    assert r.exit_code == 0 and "--linker-length 10 ignored" in r.stderr and "this run's is separate" in r.stderr
    r = run_cli("embed", COMPLEXES, "-m", "onehot", "-o", tmp_path / "l.h5", "--chains", "linker",
                "--linker-length", "10")
    assert r.exit_code == 0 and "ignored" not in r.stderr
