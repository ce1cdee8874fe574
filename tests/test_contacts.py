"""`protrans contacts`: ESM's contact head, layer by layer, against two independent references.

The references: fair-esm 2.0.0's own contacts (`model(tokens, return_contacts=True)`, what
`esm-extract --include contacts` writes) for the tiny ESM-2 and ESM-1b of tests/data/*_reference
(scripts/make_esm_reference.py), and transformers' `EsmForMaskedLM.predict_contacts` on a padded
batch, which collects every layer's attention maps before the head reads them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

DATA = Path(__file__).parent / "data"
REFERENCES = {"esm2": DATA / "esm_reference", "esm1b": DATA / "esm1b_reference"}


def _reference(arch: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(REFERENCES[arch] / "reference.safetensors")


def _maps(path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {f["contacts"][k].attrs["id"]: f["contacts"][k][()] for k in f["contacts"]}


def _attrs(path, ident=None) -> dict:
    with h5py.File(path, "r") as f:
        obj = f if ident is None else f["contacts"][ident]
        return {k: obj.attrs[k] for k in obj.attrs}


def _stop_on_the_second_batch(monkeypatch):
    """ContactPredictor.predict raising KeyboardInterrupt (a Ctrl-C) on its second batch; returns
    the original method."""
    from protrans_cli.contacts import ContactPredictor

    original, calls = ContactPredictor.predict, []

    def stop_on_the_second_batch(self, seqs):
        calls.append(seqs)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, seqs)

    monkeypatch.setattr(ContactPredictor, "predict", stop_on_the_second_batch)
    return original


@pytest.mark.parametrize("arch", sorted(REFERENCES))
def test_maps_equal_fair_esm_contacts(run_cli, tmp_path, arch):
    """Every protein of the reference FASTA (rare residues, lowercase, one residue, a padded batch,
    1,100 residues truncated at 1,022 as esm-extract truncates) against fair-esm's own maps."""
    model = REFERENCES[arch]
    out = tmp_path / "c.h5"
    r = run_cli("contacts", model / "input.fa", "-m", model, "-o", out, "--long-policy", "truncate",
                "--storage-dtype", "float32")
    assert r.exit_code == 0, r.stderr
    assert "contacts: 7 proteins" in r.stderr
    ref, got = _reference(arch), _maps(out)
    assert set(got) == {"rare", "one", "lower", "mixed_5", "mixed_20", "mixed_40", "long"}
    for ident, values in got.items():
        assert values.dtype == np.float32 and np.array_equal(values, values.T)
        if ident == "long":
            assert values.shape == (1022, 1022) and _attrs(out, "long")["truncated_from"] == 1100
            np.testing.assert_allclose(values[:4], ref["long_truncated_contacts/first"], atol=1e-5, rtol=0)
            np.testing.assert_allclose(values[-4:], ref["long_truncated_contacts/last"], atol=1e-5, rtol=0)
        else:
            np.testing.assert_allclose(values, ref[f"contacts/{ident}"], atol=1e-5, rtol=0)
    attrs = _attrs(out)
    assert attrs["kinds"] == "contacts" and attrs["family"] == "esm" and attrs["max_length"] == 1022
    # float16, the default: the same maps to float16's precision
    r = run_cli("contacts", model / "input.fa", "-m", model, "-o", tmp_path / "h.h5", "--long", "truncate")
    assert r.exit_code == 0, r.stderr
    for ident, values in _maps(tmp_path / "h.h5").items():
        assert values.dtype == np.float16
        np.testing.assert_allclose(values.astype(np.float32), got[ident], atol=5e-4, rtol=0)


def test_maps_equal_transformers_predict_contacts_in_any_batching(tmp_path):
    """transformers' predict_contacts over one padded batch of mixed lengths is the second
    reference; the maps do not depend on how proteins were batched."""
    from transformers import EsmForMaskedLM, EsmTokenizer

    from protrans_cli.contacts import ContactOptions, predict_contacts

    model = REFERENCES["esm2"]
    rng = np.random.default_rng(1)
    seqs = {f"p{i}": "".join(rng.choice(list("ACDEFGHIKLMNPQRSTVWY"), size=n)) for i, n in
            enumerate((3, 57, 120, 8, 33, 120, 2))}
    seqs["copy"] = seqs["p1"]  # an identical sequence: computed once, written under both ids
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    hf = EsmForMaskedLM.from_pretrained(str(model), attn_implementation="eager").eval()
    tok = EsmTokenizer.from_pretrained(str(model))
    enc = tok(list(seqs.values()), return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = hf.predict_contacts(enc["input_ids"], enc["attention_mask"]).numpy()
    for budget, name in ((10_000, "one"), (130, "each"), (300, "some")):
        out = tmp_path / f"{name}.h5"
        summary = predict_contacts(fasta, out, ContactOptions(model=str(model), device="cpu", max_tokens=budget,
                                                             storage_dtype="float32"))
        assert summary.num_written == len(seqs) and not summary.failed
        got = _maps(out)
        for i, (ident, seq) in enumerate(seqs.items()):
            n = len(seq)
            np.testing.assert_allclose(got[ident], ref[i, :n, :n], atol=1e-5, rtol=0, err_msg=f"{name} {ident}")


def test_layer_contribution_is_the_heads_sum_of_corrected_maps():
    """The APC shortcut (row sums, no corrected copy of the maps) against the head's own steps."""
    from transformers.models.esm.modeling_esm import average_product_correct, symmetrize

    from protrans_cli.contacts import layer_contribution

    torch.manual_seed(0)
    attn = torch.softmax(torch.randn(2, 3, 9, 9), dim=-1)
    mask = torch.tensor([[0, 1, 1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1, 0]], dtype=torch.float32)
    weights = torch.randn(3)
    got = layer_contribution(attn, mask, weights)
    for b in range(2):
        keep = mask[b].bool()
        block = attn[b][:, keep][:, :, keep][None]  # (1, H, L, L): the residues' maps
        want = torch.einsum("bhij,h->bij", average_product_correct(symmetrize(block)), weights)[0]
        torch.testing.assert_close(got[b][keep][:, keep], want, atol=1e-6, rtol=1e-5)


def test_out_of_memory_splits_the_batch_and_records_a_protein_that_never_fits(tmp_path, monkeypatch):
    from protrans_cli.contacts import ContactOptions, ContactPredictor, predict_contacts

    model = str(REFERENCES["esm2"])
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMAAG\n>c\nMKVLAAGIVGLLLAW\n")
    ref = _maps(predict_contacts(fasta, tmp_path / "ref.h5", ContactOptions(model=model, device="cpu",
                                                                            storage_dtype="float32")).output)
    original = ContactPredictor.predict
    sizes = []

    def oom(self, seqs):
        sizes.append(len(seqs))
        if len(seqs) > 1 or len(seqs[0]) > 12:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, seqs)

    monkeypatch.setattr(ContactPredictor, "predict", oom)
    out = tmp_path / "oom.h5"
    summary = predict_contacts(fasta, out, ContactOptions(model=model, device="cpu", storage_dtype="float32"))
    assert sizes[0] == 3 and set(summary.failed) == {"c"} and "out of memory" in summary.failed["c"]
    got = _maps(out)
    assert set(got) == {"a", "b"}
    for k in got:
        np.testing.assert_allclose(got[k], ref[k], atol=1e-6, rtol=0)
    assert "out of memory" in _attrs(out)["failed"]


def test_resume_after_a_stop_gives_the_uninterrupted_file(tmp_path, monkeypatch):
    from protrans_cli.contacts import ContactOptions, ContactPredictor, predict_contacts
    from protrans_cli.errors import InputError

    model = str(REFERENCES["esm2"])
    rng = np.random.default_rng(2)
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">p{i}\n{''.join(rng.choice(list('ACDEFGHIKLMNPQRSTVWY'), size=10 + 7 * i))}\n"
                             for i in range(6)))
    options = dict(model=model, device="cpu", max_batch_size=2)
    full = _maps(predict_contacts(fasta, tmp_path / "full.h5", ContactOptions(**options)).output)
    original = _stop_on_the_second_batch(monkeypatch)
    out = tmp_path / "out.h5"
    with pytest.raises(KeyboardInterrupt):
        predict_contacts(fasta, out, ContactOptions(**options))
    monkeypatch.setattr(ContactPredictor, "predict", original)
    partial = tmp_path / "out.h5.partial"
    assert partial.exists() and not out.exists() and len(_maps(partial)) == 2
    with pytest.raises(Exception, match="holds the work of an interrupted run"):
        predict_contacts(fasta, out, ContactOptions(**options))
    summary = predict_contacts(fasta, out, ContactOptions(**options, resume=True))
    assert summary.num_resumed == 2 and summary.num_written == 4
    got = _maps(out)
    assert got.keys() == full.keys() and all(np.array_equal(got[k], full[k]) for k in full)
    # the same id with another sequence: refused before any computation
    other = tmp_path / "other.fa"
    other.write_text(fasta.read_text().replace(">p0\n", ">p0\nW"))
    with pytest.raises(InputError, match="another sequence under this id"):
        predict_contacts(other, out, ContactOptions(**options, resume=True))
    # nothing left: the finished file stays as it is
    before = out.stat().st_mtime_ns
    assert predict_contacts(fasta, out, ContactOptions(**options, resume=True)).num_written == 0
    assert out.stat().st_mtime_ns == before


def test_a_stop_or_full_disk_under_force_says_resume_instead_of_force(run_cli, tmp_path, monkeypatch):
    """A --force run stopped by Ctrl-C or a full disk said "run the same command with --resume",
    which beside --force is refused (not both): "--resume instead of --force" now, as embed says."""
    import types

    from protrans_cli.io import disk

    model = REFERENCES["esm2"]
    rng = np.random.default_rng(2)
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">p{i}\n{''.join(rng.choice(list('ACDEFGHIKLMNPQRSTVWY'), size=10 + 7 * i))}\n"
                             for i in range(6)))
    out = tmp_path / "out.h5"
    base = ["contacts", fasta, "-m", model, "--device", "cpu", "--max-batch-size", "2", "-o", out]
    assert run_cli(*base).exit_code == 0
    full = _maps(out)
    with monkeypatch.context() as m:
        _stop_on_the_second_batch(m)
        r = run_cli(*base, "--force")
    assert r.exit_code == 130 and "run the same command with --resume instead of --force to finish" in r.stderr, \
        r.stderr
    calls = []

    def filling(path):
        calls.append(path)
        return types.SimpleNamespace(f_bavail=10**12 if len(calls) < 3 else 1 << 20, f_frsize=1)

    (tmp_path / "out.h5.partial").unlink()
    (tmp_path / "out.h5.partial.ledger").unlink(missing_ok=True)
    with monkeypatch.context() as m:
        m.setattr(disk.os, "statvfs", filling)
        r = run_cli(*base, "--force")
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1].endswith(
        "run the same command with --resume instead of --force once there is room"), r.stderr
    r = run_cli(*base, "--resume")
    assert r.exit_code == 0, r.stderr
    got = _maps(out)
    assert got.keys() == full.keys() and all(np.array_equal(got[k], full[k]) for k in full)


def test_long_and_invalid_proteins_follow_their_policies(run_cli, tmp_path):
    model = REFERENCES["esm2"]
    fasta = tmp_path / "in.fa"
    # (edge: exactly --max-length residues, not longer: mapped whole under every policy)
    fasta.write_text(">ok\nMKTAYIAKQR\n>long\n" + "MKV" * 10 + "\n>bad\nMKJT\n>edge\n" + "MKTAYIAKQR" * 2 + "\n")
    out = tmp_path / "c.h5"
    r = run_cli("contacts", fasta, "-m", model, "-o", out, "--max-length", "20")
    assert r.exit_code == 1 and "record 'bad'" in r.stderr and r.stderr.count("\n") == 1
    assert not out.exists() and not Path(f"{out}.partial").exists()
    r = run_cli("contacts", fasta, "-m", model, "-o", out, "--max-length", "20", "--invalid-policy", "skip")
    assert r.exit_code == 1 and "record 'long'" in r.stderr and "30 residues, longer than --max-length 20" in r.stderr
    assert "--long-policy skip or truncate" in r.stderr and "chunk" not in r.stderr and not out.exists()
    r = run_cli("contacts", fasta, "-m", model, "-o", out, "--max-length", "20", "--invalid-policy", "skip",
                "--long", "skip")
    assert r.exit_code == 0, r.stderr
    assert set(_maps(out)) == {"ok", "edge"} and "2 protein(s) have no contact map" in r.stderr
    failed = _attrs(out)["failed"]
    assert "long" in failed and "bad" in failed
    r = run_cli("contacts", fasta, "-m", model, "-o", out, "--max-length", "20", "--invalid-policy", "skip",
                "--long", "truncate", "--force")
    assert r.exit_code == 0, r.stderr
    assert _maps(out)["long"].shape == (20, 20) and _attrs(out, "long")["truncated_from"] == 30
    r = run_cli("contacts", fasta, "-m", model, "-o", out, "--long", "chunk")
    assert r.exit_code == 2


@pytest.mark.parametrize("compression", ["gzip", "lzf"])
def test_compression_option_compresses_the_maps_and_keeps_their_values(run_cli, tmp_path, compression):
    """contacts --compression gzip|lzf writes compressed maps of the same values (a CLI handing the
    library None whatever the user gave passed every test)."""
    model = REFERENCES["esm2"]
    fasta = tmp_path / "in.fa"
    fasta.write_text(">ok\nMKTAYIAKQR\n>two\nMKVLAAGIVGLLLAW\n")
    plain, packed = tmp_path / "plain.h5", tmp_path / "packed.h5"
    assert run_cli("contacts", fasta, "-m", model, "-o", plain).exit_code == 0
    r = run_cli("contacts", fasta, "-m", model, "-o", packed, "--compression", compression)
    assert r.exit_code == 0, r.stderr
    with h5py.File(packed, "r") as f:
        assert {f["contacts"][k].compression for k in f["contacts"]} == {compression}
    with h5py.File(plain, "r") as f:
        assert {f["contacts"][k].compression for k in f["contacts"]} == {None}
    got, want = _maps(packed), _maps(plain)
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def test_resume_with_nothing_kept_refuses_a_long_protein_before_any_map(run_cli, tmp_path):
    """--resume on a fresh output (a script that always passes it) skipped the length check made
    before any computation: the short proteins' maps were computed and written to OUTPUT.partial,
    then the long protein ended the run (exit 1, no line number, no way out named)."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMKTAYIAKQRQISF\n>long\n" + "MKV" * 10 + "\n")
    out = tmp_path / "c.h5"
    r = run_cli("contacts", fasta, "-m", REFERENCES["esm2"], "-o", out, "--max-length", "20", "--resume",
                "--max-tokens", "20")
    assert r.exit_code == 1
    assert "in.fa:5, record 'long': 30 residues, longer than --max-length 20" in r.stderr
    assert "--long-policy skip or truncate" in r.stderr
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_stdin_and_gzip_inputs(run_cli, tmp_path):
    import gzip

    model = REFERENCES["esm2"]
    text = ">a/1 first\nMKTAYIAKQR\n>b\nmaag*\n"
    (tmp_path / "in.fa.gz").write_bytes(gzip.compress(text.encode()))
    r = run_cli("contacts", "-", "-m", model, "-o", tmp_path / "s.h5", input=text.encode())
    assert r.exit_code == 0, r.stderr
    r = run_cli("contacts", tmp_path / "in.fa.gz", "-m", model, "-o", tmp_path / "g.h5")
    assert r.exit_code == 0, r.stderr
    s, g = _maps(tmp_path / "s.h5"), _maps(tmp_path / "g.h5")
    assert set(s) == {"a/1", "b"} and s["b"].shape == (4, 4)
    assert all(np.array_equal(s[k], g[k]) for k in s)
    assert _attrs(tmp_path / "s.h5", "a%2F1")["header"] == "a/1 first"


def test_nucleotide_and_gapped_proteins_are_warned_about_as_embed_warns(run_cli, tmp_path):
    """contacts reads FASTA as embed does and says what embed says (embed's own warnings, once
    each): a DNA record's map is a map of alanines, cysteines, glycines and threonines, and a gapped
    row's map has the residues' rows, not the alignment's columns. Maps are written as before."""
    model = REFERENCES["esm2"]
    dna = "ATGGCGATCGATCGATCGTAGCTAGCTAGCATCGATCGATCGATCGTAGC"
    fasta = tmp_path / "in.fa"
    fasta.write_text(f">cds1\n{dna}\n>q\nMKT--AYIAK\n>P1\nMKTAYIAKQR\n")
    out = tmp_path / "c.h5"
    r = run_cli("contacts", fasta, "-m", model, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert (f"protrans: warning: {fasta}: 1 of 3 protein(s) hold only the letters A, C, G, T, U and N (at least 30 "
            "residues), as nucleotide sequences do: cds1. Protein models read them as amino acids; translate DNA or "
            "RNA to proteins first\n") in r.stderr
    assert (f"protrans: warning: {fasta}: 1 of 3 protein(s) held gap characters ('-', '.'), removed: q. Their rows "
            "are the residues alone, not the alignment's columns\n") in r.stderr
    assert r.stderr.count("as nucleotide sequences do") == 1 and r.stderr.count("held gap characters") == 1
    maps = _maps(out)
    assert maps["cds1"].shape == (len(dna), len(dna)) and maps["q"].shape == (8, 8)
    # a resume with nothing left to add says nothing again
    r = run_cli("contacts", fasta, "-m", model, "-o", out, "--resume")
    assert r.exit_code == 0 and "warning" not in r.stderr, r.stderr
    plain = tmp_path / "plain.fa"
    plain.write_text(">P1\nMKTAYIAKQR\n")
    r = run_cli("contacts", plain, "-m", model, "-o", tmp_path / "p.h5")
    assert r.exit_code == 0 and "warning" not in r.stderr, r.stderr


def test_models_without_a_trained_contact_head_are_refused(run_cli, tmp_path):
    from safetensors.torch import load_file, save_file

    from protrans_cli.models import get_family

    fasta = REFERENCES["esm2"] / "input.fa"
    # a model that protrans train pretrained: its head was never fitted
    family = get_family("esm")
    tokenizer = family.build_tokenizer()
    trained = tmp_path / "trained"
    family.save_pretrained(family.pretraining_model(family.build_config("tiny", tokenizer)), tokenizer, trained)
    r = run_cli("contacts", fasta, "-m", trained, "-o", tmp_path / "a.h5")
    assert r.exit_code == 1 and "pretrained by protrans train" in r.stderr and r.stderr.count("\n") == 1
    # a checkpoint saved without the head's weights
    headless = tmp_path / "headless"
    shutil.copytree(REFERENCES["esm2"], headless)
    weights = load_file(headless / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "contact_head" not in k}, headless / "model.safetensors",
              metadata={"format": "pt"})
    r = run_cli("contacts", fasta, "-m", headless, "-o", tmp_path / "b.h5")
    assert r.exit_code == 1 and "no contact head weights" in r.stderr
    # another family
    bert = get_family("bert")
    tokenizer = bert.build_tokenizer()
    bert.save_pretrained(bert.pretraining_model(bert.build_config("tiny", tokenizer)), tokenizer, tmp_path / "bert")
    r = run_cli("contacts", fasta, "-m", tmp_path / "bert", "-o", tmp_path / "c.h5")
    assert r.exit_code == 1 and "a bert model has no contact head" in r.stderr
    albert = get_family("albert")  # (its article: "a albert model" was written)
    albert.save_pretrained(albert.pretraining_model(albert.build_config("tiny", tokenizer)), tokenizer,
                           tmp_path / "albert")
    r = run_cli("contacts", fasta, "-m", tmp_path / "albert", "-o", tmp_path / "c.h5")
    assert r.exit_code == 1 and "an albert model has no contact head" in r.stderr
    # ESM-1v, released without a fitted regression (a copy named as the checkpoint is)
    shutil.copytree(REFERENCES["esm1b"], tmp_path / "esm1v_t33_650M_UR90S_1")
    r = run_cli("contacts", fasta, "-m", tmp_path / "esm1v_t33_650M_UR90S_1", "-o", tmp_path / "d.h5")
    assert r.exit_code == 1 and "ESM-1v was released without" in r.stderr
    assert not any(tmp_path.glob("*.h5*"))


def test_esm_1v_is_told_by_the_models_own_names_not_a_parent_folders(run_cli, tmp_path):
    """ESM-1v was refused where "esm1v" stood anywhere in the path: an ESM-2 kept under a study's
    folder of that name was refused. The model's own names decide: its directory's, config.json's
    `_name_or_path`, a cache snapshot's repository, a hub id's last part."""
    import json
    from types import SimpleNamespace

    from protrans_cli.contacts import model_identities

    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    model = tmp_path / "esm1v_study" / "my_esm2"
    shutil.copytree(REFERENCES["esm2"], model)
    r = run_cli("contacts", fasta, "-m", model, "-o", tmp_path / "a.h5")
    assert r.exit_code == 0, r.stderr
    # an ESM-1v whose directory was renamed, its config naming what it was saved from
    renamed = tmp_path / "renamed"
    shutil.copytree(REFERENCES["esm1b"], renamed)
    config = json.loads((renamed / "config.json").read_text())
    config["_name_or_path"] = "/scratch/esm1v_t33_650M_UR90S_3/"
    (renamed / "config.json").write_text(json.dumps(config))
    r = run_cli("contacts", fasta, "-m", renamed, "-o", tmp_path / "b.h5")
    assert r.exit_code == 1 and "ESM-1v was released without" in r.stderr
    # a snapshot of the Hugging Face cache (its folder named by the commit)
    snapshot = tmp_path / "hub" / "models--facebook--esm1v_t33_650M_UR90S_1" / "snapshots" / "0123abcd"
    shutil.copytree(REFERENCES["esm1b"], snapshot)
    r = run_cli("contacts", fasta, "-m", snapshot, "-o", tmp_path / "c.h5")
    assert r.exit_code == 1 and "ESM-1v was released without" in r.stderr
    assert not (tmp_path / "b.h5").exists() and not (tmp_path / "c.h5").exists()
    # hub ids: the repository's name, not the organisation's
    hub = SimpleNamespace(checkpoint=None, path_or_hub_id="facebook/esm1v_t33_650M_UR90S_1")
    assert "esm1v_t33_650M_UR90S_1" in model_identities(hub)
    assert model_identities(SimpleNamespace(checkpoint=None, path_or_hub_id="esm1v-lab/esm2_small")) == ["esm2_small"]


def test_esm_1v_is_told_through_the_chain_of_origins(run_cli, tmp_path):
    """A model fine-tuned (or trained further) from ESM-1v has ESM-1v's unfitted contact head:
    finetune's OUT/model is named `model` whatever it began with, and transformers 5 records no
    `_name_or_path`, so its own names say nothing of ESM-1v (its path, with "esm1v" in a parent
    folder, refused it before the model's own names alone decided). Its origins' names decide too."""
    import json

    from protrans_cli.models import load_model

    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    esm1v = tmp_path / "esm1v_t33_650M_UR90S_1"
    shutil.copytree(REFERENCES["esm1b"], esm1v)
    loaded = load_model(REFERENCES["esm1b"])
    for origin in (str(esm1v), "facebook/esm1v_t33_650M_UR90S_2"):  # (a local folder; a hub id)
        out_dir = tmp_path / f"ft{len(origin)}"
        loaded.family.save_pretrained(loaded.model, loaded.tokenizer, out_dir / "model")
        config = json.loads((out_dir / "model" / "config.json").read_text())
        config.pop("_name_or_path", None)
        (out_dir / "model" / "config.json").write_text(json.dumps(config))
        (out_dir / "finetune.json").write_text(json.dumps({"format": "protrans-finetune", "model": origin}))
        r = run_cli("contacts", fasta, "-m", out_dir / "model", "-o", tmp_path / "c.h5")
        assert r.exit_code == 1 and "ESM-1v was released without" in r.stderr, r.stderr
    assert not (tmp_path / "c.h5").exists()


def test_a_contacts_file_is_not_read_as_embeddings(run_cli, tmp_path):
    from protrans_cli.errors import InputError
    from protrans_cli.io.h5 import EmbeddingsReader

    model = REFERENCES["esm2"]
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    out = tmp_path / "c.h5"
    assert run_cli("contacts", fasta, "-m", model, "-o", out).exit_code == 0
    with pytest.raises(InputError, match="holds contact maps"):
        EmbeddingsReader(out)
    # nor resumed by embed (other kinds), nor the reverse
    r = run_cli("embed", fasta, "-m", model, "-o", out, "--resume")
    assert r.exit_code == 2 and "kinds" in r.stderr
    assert run_cli("embed", fasta, "-m", model, "-o", tmp_path / "e.h5").exit_code == 0
    r = run_cli("contacts", fasta, "-m", model, "-o", tmp_path / "e.h5", "--resume")
    assert r.exit_code == 2 and "kinds" in r.stderr


@pytest.mark.gpu
def test_on_a_gpu_in_bfloat16_the_maps_are_the_cpus_within_its_precision(tmp_path):
    from protrans_cli.contacts import ContactOptions, predict_contacts

    model = REFERENCES["esm2"]
    cpu = _maps(predict_contacts(model / "input.fa", tmp_path / "cpu.h5", ContactOptions(
        model=str(model), device="cpu", long_policy="truncate", storage_dtype="float32")).output)
    gpu = predict_contacts(model / "input.fa", tmp_path / "gpu.h5", ContactOptions(
        model=str(model), device="cuda", long_policy="truncate", storage_dtype="float32"))
    assert _attrs(gpu.output)["compute_dtype"] in ("bfloat16", "float16") and not gpu.failed
    for ident, values in _maps(gpu.output).items():
        np.testing.assert_allclose(values, cpu[ident], atol=2e-2, rtol=0, err_msg=ident)


def test_the_default_model_and_every_model_named_to_users_are_short_names():
    """The default was `esm2_t33_650M`, a `train` preset and no checkpoint: `protrans contacts
    in.fa -o out.h5` failed ("not a short name: did you mean esm2_t33_650M_UR50D?"), and so did
    the docs' example and the `-m` the refusals suggest."""
    import re

    from protrans_cli.cli.contacts import command
    from protrans_cli.contacts import DEFAULT_MODEL, ContactOptions
    from protrans_cli.models.checkpoints import CHECKPOINTS

    default = next(p.default for p in command.params if p.name == "model")
    assert default in CHECKPOINTS and DEFAULT_MODEL in CHECKPOINTS and ContactOptions().model in CHECKPOINTS
    root = DATA.parent.parent
    guide = (root / "docs" / "embed.md").read_text()
    section = guide[guide.index("### Contact maps: `protrans contacts`"):]
    section = section[:section.index("\n## ")]
    texts = [(root / "protrans_cli" / "contacts.py").read_text(), (root / "protrans_cli" / "cli" / "contacts.py")
             .read_text(), section]
    named = {n for text in texts for n in re.findall(r"\besm(?:2|1b|1v)_t\d+_\w+", text)}
    assert named and not named - set(CHECKPOINTS), named - set(CHECKPOINTS)


def test_a_max_length_beyond_esm1b_learned_positions_is_a_usage_error(run_cli, tmp_path):
    """ESM-1b's position table ends at 1,022 residues: --max-length 1100 ran into it, an IndexError
    traceback (exit 1) that left OUTPUT.partial behind. embed refuses it; so does contacts now."""
    from protrans_cli.contacts import ContactPredictor
    from protrans_cli.errors import UsageError
    from protrans_cli.models import load_model

    model = REFERENCES["esm1b"]
    fasta = tmp_path / "in.fa"
    fasta.write_text(">big\n" + "MKTAYIAKQR" * 110 + "\n")
    out = tmp_path / "c.h5"
    r = run_cli("contacts", fasta, "-m", model, "-o", out, "--max-length", "1100")
    assert r.exit_code == 2 and "--max-length 1100 is more than" in r.stderr and "1022 residues" in r.stderr
    assert r.stderr.count("\n") == 1 and not any(tmp_path.glob("c.h5*"))
    # (all the learned positions hold: accepted)
    (tmp_path / "short.fa").write_text(">a\nMKTAYIAKQR\n")
    r = run_cli("contacts", tmp_path / "short.fa", "-m", model, "-o", tmp_path / "s.h5", "--max-length", "1022")
    assert r.exit_code == 0, r.stderr
    with pytest.raises(UsageError, match="1100 residues"):
        ContactPredictor(load_model(model)).predict(["MKTAYIAKQR" * 110])
    # (at the edge: one residue over what the positions hold is refused, not the position table's
    # IndexError; exactly that many are mapped)
    predictor = ContactPredictor(load_model(model))
    with pytest.raises(UsageError, match="sequence 1 of the list has 1023 residues; the model accepts at most 1022"):
        predictor.predict(["MKT", "MKTAYIAKQR" * 102 + "MKT"])
    assert predictor.predict(["MKTAYIAKQR" * 102 + "MK"])[0].shape == (1022, 1022)


def test_a_protein_over_the_default_length_is_not_said_to_be_more_than_the_model_accepts(run_cli, tmp_path):
    """Without --max-length the limit is contacts' default, 1,022 (ESM's training crops), not the
    model's: ESM-2 takes a protein of 1,100 residues with --max-length 1100. The error said
    "longer than the 1022 residues the model accepts (... --max-length N for a smaller limit)"."""
    fasta = tmp_path / "in.fa"
    fasta.write_text(">big\n" + "MKTAYIAKQR" * 110 + "\n")
    r = run_cli("contacts", fasta, "-m", REFERENCES["esm2"], "-o", tmp_path / "c.h5")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and "record 'big'" in r.stderr
    assert "1100 residues, longer than the default --max-length 1022" in r.stderr
    assert "the model accepts" not in r.stderr and "smaller limit" not in r.stderr


def test_a_model_fine_tuned_by_protrans_finetune_keeps_its_published_head_with_a_warning(run_cli, tmp_path):
    """`protrans finetune` writes OUT/model (save_pretrained: protrans_version in its config.json, no
    train_config.json) beside OUT/finetune.json: its contact head is the published model's, as for
    `train --init-from`. It was refused as "pretrained by protrans train"."""
    import json

    from protrans_cli.models import load_model

    loaded = load_model(REFERENCES["esm2"])
    out_dir = tmp_path / "ft"
    loaded.family.save_pretrained(loaded.model, loaded.tokenizer, out_dir / "model")
    (out_dir / "finetune.json").write_text(json.dumps({"format": "protrans-finetune",
                                                       "model": str(REFERENCES["esm2"])}))
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    r = run_cli("contacts", fasta, "-m", out_dir / "model", "-o", tmp_path / "c.h5")
    assert r.exit_code == 0, r.stderr
    assert "fine-tuned by protrans finetune from" in r.stderr and "pretrained by protrans train" not in r.stderr
    assert set(_maps(tmp_path / "c.h5")) == {"a"}


def test_a_model_trained_further_from_a_published_one_keeps_its_head_with_a_warning(run_cli, tmp_path):
    """`protrans train --init-from` writes protrans_version in config.json and init_from in
    train_config.json: the published model's head, said in a warning, not refused as untrained."""
    import json

    model = tmp_path / "further"
    shutil.copytree(REFERENCES["esm2"], model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "protrans_version": "0.1.0"}))
    (model / "train_config.json").write_text(json.dumps({"init_from": "esm2_t6_8M_UR50D"}))
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    r = run_cli("contacts", fasta, "-m", model, "-o", tmp_path / "c.h5")
    assert r.exit_code == 0, r.stderr
    assert "was trained further by protrans train from esm2_t6_8M_UR50D: its contact head is " in r.stderr
    assert set(_maps(tmp_path / "c.h5")) == {"a"}


def test_a_model_begun_from_a_run_trained_from_scratch_has_its_untrained_head_and_is_refused(run_cli, tmp_path,
                                                                                               monkeypatch):
    """`train --init-from` a run that protrans pretrained from scratch (and a finetune of such a
    continuation) has that run's contact head, as initialised: only its first step back was looked
    at, so it was taken for a published model's head, with a warning, and gave noise maps. The
    chain is followed through train_config.json's resolved init_from (init_from is as given,
    relative to where train ran) and finetune.json's model."""
    import json

    monkeypatch.chdir(tmp_path)
    corpus = Path(__file__).parent / "data" / "train" / "learnable.txt"
    common = ("--corpus", corpus, "--num-steps", 1, "--max-length", 32, "--global-batch-size", 4,
              "--micro-batch-size", 4, "-j", 1)
    assert run_cli("train", "--family", "esm", "--preset", "tiny", "-o", "scratch", *common).exit_code == 0
    r = run_cli("train", "--init-from", "scratch", "-o", "further", *common)
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "further" / "train_config.json").read_text())["init_from"] == "scratch"
    # a finetune of the continuation, its OUT/model beside OUT/finetune.json
    from protrans_cli.models import load_model

    loaded = load_model(tmp_path / "further")
    loaded.family.save_pretrained(loaded.model, loaded.tokenizer, tmp_path / "ft" / "model")
    (tmp_path / "ft" / "finetune.json").write_text(json.dumps({"format": "protrans-finetune",
                                                                "model": str(tmp_path / "further")}))
    (tmp_path / "in.fa").write_text(">a\nMKTAYIAKQR\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # (init_from "scratch" names no folder from here: the resolved path does)
    r = run_cli("contacts", tmp_path / "in.fa", "-m", tmp_path / "further", "-o", tmp_path / "c.h5")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert (f"it was trained further by protrans train from {tmp_path / 'scratch'}, which was pretrained by "
            "protrans train, whose masked-LM objective leaves the contact head as initialised") in r.stderr
    r = run_cli("contacts", tmp_path / "in.fa", "-m", tmp_path / "ft" / "model", "-o", tmp_path / "d.h5")
    assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
    assert (f"it was fine-tuned by protrans finetune from {tmp_path / 'further'}, which was trained further by "
            f"protrans train from {tmp_path / 'scratch'}, which was pretrained by protrans train") in r.stderr
    assert not (tmp_path / "c.h5").exists() and not (tmp_path / "d.h5").exists()


def test_library_predict_reads_sequences_as_embed_and_keeps_the_heads_float32_weights():
    from safetensors.torch import load_file

    from protrans_cli.contacts import ContactPredictor
    from protrans_cli.errors import InputError
    from protrans_cli.models import load_model

    model = REFERENCES["esm2"]
    predictor = ContactPredictor(load_model(str(model), device="cpu"))
    assert predictor.predict([]) == []
    upper, lower = predictor.predict(["MKTAYIAKQR", "mkt-ayiakqr*"])
    assert np.array_equal(upper, lower)
    with pytest.raises(InputError):
        predictor.predict(["MKJT"])
    # a model loaded in bfloat16: the head's weights as the checkpoint stores them, not rounded
    half = ContactPredictor(load_model(str(model), device="cpu", dtype="bfloat16"))
    stored = load_file(model / "model.safetensors")["esm.contact_head.regression.weight"].reshape(-1)
    assert half.weights.dtype == torch.float32 and torch.equal(half.weights.reshape(-1), stored)
    assert not torch.equal(stored.bfloat16().float(), stored)  # (which rounding would have changed)
    # the model loaded with its masked-LM head (as VariantScorer takes it): the same maps ("the
    # model has no contact head" was said of it)
    with_head = ContactPredictor(load_model(str(model), device="cpu", masked_lm=True))
    for got, want in zip(with_head.predict(["MKTAYIAKQR", "MKT"]), predictor.predict(["MKTAYIAKQR", "MKT"])):
        np.testing.assert_array_equal(got, want)


def test_a_sharded_checkpoint_loaded_in_bfloat16_keeps_the_heads_float32_weights(tmp_path):
    """ESM-2 3B and 15B are published in shards (model.safetensors.index.json, no
    model.safetensors): their head's weights were taken as loaded, rounded to bfloat16, where
    the docs promise the checkpoint's float32 ones."""
    from safetensors.torch import load_file
    from transformers import EsmForMaskedLM

    from protrans_cli.contacts import ContactPredictor
    from protrans_cli.models import load_model

    model = REFERENCES["esm2"]
    sharded = tmp_path / "sharded"
    EsmForMaskedLM.from_pretrained(model).save_pretrained(sharded, max_shard_size="2KB")
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(model / name, sharded)
    assert not (sharded / "model.safetensors").exists() and (sharded / "model.safetensors.index.json").is_file()
    stored = load_file(model / "model.safetensors")
    weight = stored["esm.contact_head.regression.weight"].reshape(-1)
    half = ContactPredictor(load_model(str(sharded), device="cpu", dtype="bfloat16"))
    assert torch.equal(half.weights.reshape(-1), weight)
    assert half.bias == float(stored["esm.contact_head.regression.bias"])
    assert not torch.equal(weight.bfloat16().float(), weight)  # (which rounding would have changed)


def test_library_predict_names_the_sequence_it_refuses_and_refuses_a_dict():
    """predict(["MKT", "MK1"]) said "invalid character '1' at residue 3" without saying which of
    the list; a dict ({id: sequence}, as embed_sequences takes) had its ids read as sequences."""
    from protrans_cli.contacts import ContactPredictor
    from protrans_cli.errors import UsageError
    from protrans_cli.models import load_model
    from protrans_cli.residues import SequenceRejected

    predictor = ContactPredictor(load_model(str(REFERENCES["esm2"]), device="cpu"))
    with pytest.raises(SequenceRejected, match=r"^sequence 1 of the list: invalid character '1' at residue 3$") as err:
        predictor.predict(["MKT", "MK1"])
    assert err.value.reason == "invalid_character"
    with pytest.raises(UsageError, match=r"not a dict: give list\(d.values\(\)\)"):
        predictor.predict({"MKT": "MKTAYIAKQR"})


def test_onehot_is_refused_as_no_model(run_cli, tmp_path):
    """-m onehot (embed's encoding) was looked for on the hub: "hf download onehot", exit 1."""
    (tmp_path / "in.fa").write_text(">a\nMKV\n")
    done = run_cli("contacts", tmp_path / "in.fa", "-m", "onehot", "-o", tmp_path / "c.h5")
    assert done.exit_code == 2 and "not a model" in done.stderr and "hf download" not in done.stderr
    assert not (tmp_path / "c.h5").exists()


def test_an_existing_output_needs_resume_or_force(run_cli, tmp_path):
    """A second run to the same -o is refused (exit 2, nothing computed, the file untouched), as
    embed's is: the maps of hours of work were replaced by a command run again; --force replaces
    them, --resume keeps them."""
    model = REFERENCES["esm2"]
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    out = tmp_path / "c.h5"
    assert run_cli("contacts", fasta, "-m", model, "-o", out).exit_code == 0
    before = out.read_bytes()
    fasta.write_text(">b\nMKV\n")
    r = run_cli("contacts", fasta, "-m", model, "-o", out)
    assert r.exit_code == 2 and r.stderr == (f"protrans: error: {out} exists: --resume keeps its proteins and "
                                             "computes what it lacks, --force replaces it\n"), r.stderr
    assert out.read_bytes() == before
    r = run_cli("contacts", fasta, "-m", model, "-o", out, "--force")
    assert r.exit_code == 0, r.stderr
    assert set(_maps(out)) == {"b"}


@pytest.mark.parametrize("mode", ["--resume", "--force"])
def test_a_fifo_or_folder_named_output_partial_is_refused_before_the_model_loads(tmp_path, mode):
    """A named pipe called OUTPUT.partial hung contacts for ever (HDF5's open waits for a writer),
    once the model had loaded; a folder of that name was HDF5's "[Errno 21] ... (file read
    failed: time = ...)" under --resume. One line naming the path now, as embed says it."""
    import os
    import subprocess
    import sys

    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    out = tmp_path / "c.h5"
    partial = tmp_path / "c.h5.partial"
    said = {"fifo": "is a named pipe, not a regular file: an HDF5 file is read in place (move it away, or choose "
                    "another -o)",
            "folder": "is a directory, expected an HDF5 file (move it away, or choose another -o)"}
    for kind, message in said.items():
        os.mkfifo(partial) if kind == "fifo" else partial.mkdir()
        # (a process of its own, with a timeout: a hang fails the test rather than blocking it)
        result = subprocess.run([sys.executable, "-m", "protrans_cli", "contacts", str(fasta), "-m",
                                 str(REFERENCES["esm2"]), "-o", str(out), mode], capture_output=True, text=True,
                                timeout=20, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
        assert result.returncode == 1 and result.stderr == f"protrans: error: {partial}: {message}\n", result.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5.partial", "in.fa"]
        os.unlink(partial) if kind == "fifo" else partial.rmdir()


def test_outputs_that_would_replace_an_input_or_cannot_be_written_are_refused(run_cli, tmp_path):
    """-o - (HDF5 to stdout), -o the FASTA, -o inside the model's directory, --resume with --force:
    usage errors before any model is loaded, every file left as it was."""
    model = tmp_path / "model"
    shutil.copytree(REFERENCES["esm2"], model)
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    cases = [(("-o", "-"), "an HDF5 file cannot be written to stdout: give -o FILE.h5"),
             (("-o", fasta), f"{fasta} is also the input: writing it would replace the FASTA"),
             (("-o", model / "model.safetensors"), f"{model / 'model.safetensors'} is one of the model directory's "
                                                   "files (its weights): writing it would replace it"),
             (("-o", tmp_path / "c.h5", "--resume", "--force"), "give --resume (keep OUTPUT's proteins) or --force")]
    for args, message in cases:
        r = run_cli("contacts", fasta, "-m", model, *args)
        assert r.exit_code == 2 and message in r.stderr, r.stderr
    assert fasta.read_text() == ">a\nMKTAYIAKQR\n"
    assert sorted(p.name for p in model.iterdir()) == sorted(p.name for p in REFERENCES["esm2"].iterdir())
    assert not list(tmp_path.glob("c.h5*"))


def test_a_ctrl_c_says_where_the_work_is_and_a_non_finite_map_is_recorded_as_failed(run_cli, tmp_path, monkeypatch):
    import json

    from protrans_cli.contacts import ContactPredictor

    model = REFERENCES["esm2"]
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMAAGKL\n>c\nMKVLAAGIVG\n")
    original = _stop_on_the_second_batch(monkeypatch)
    out = tmp_path / "c.h5"
    r = run_cli("contacts", fasta, "-m", model, "-o", out, "--max-batch-size", "1")
    assert r.exit_code == 130 and not out.exists()
    assert (f"interrupted: what was computed is in {out}.partial; run the same command with --resume to finish"
            in r.stderr)

    def nan_for_b(self, seqs):  # (one entry of b's map: an overflow in one attention weight)
        maps = [m.copy() for m in original(self, seqs)]
        for seq, m in zip(seqs, maps):
            if seq == "MAAGKL":
                m[1, 3] = np.nan
        return maps

    monkeypatch.setattr(ContactPredictor, "predict", nan_for_b)
    r = run_cli("contacts", fasta, "-m", model, "-o", tmp_path / "n.h5")
    assert r.exit_code == 0, r.stderr
    assert "b: NaN or infinity in its contact map (the attention maps of the model's float32 pass)" in r.stderr
    assert set(_maps(tmp_path / "n.h5")) == {"a", "c"}
    assert json.loads(_attrs(tmp_path / "n.h5")["failed"]) == {
        "b": "NaN or infinity in its contact map (the attention maps of the model's float32 pass)"}


def test_a_max_length_beyond_what_the_head_was_fitted_on_is_warned_about(run_cli, tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    r = run_cli("contacts", fasta, "-m", REFERENCES["esm2"], "-o", tmp_path / "c.h5", "--max-length", "2000")
    assert r.exit_code == 0, r.stderr
    assert ("--max-length 2000: ESM's contact head was fitted on proteins of at most 1022 residues; longer maps "
            "come from positions it never met") in r.stderr
    r = run_cli("contacts", fasta, "-m", REFERENCES["esm2"], "-o", tmp_path / "d.h5", "--max-length", "1022")
    assert r.exit_code == 0 and "fitted on proteins" not in r.stderr


def test_the_summary_counts_a_truncated_proteins_residues_mapped(run_cli, tmp_path):
    """The residues contacts reports (`N proteins (R residues, ...)`) are those of the maps
    written: a protein truncated by --long truncate counts its kept prefix, as embed's summary
    does. Counting its whole length passed every test. Only a protein cut short records
    `truncated_from`: one of exactly --max-length residues is whole."""
    from protrans_cli.contacts import ContactOptions, predict_contacts

    model = REFERENCES["esm2"]
    fasta = tmp_path / "in.fa"
    fasta.write_text(">ok\nMKTAYIAKQR\n>long\n" + "MKV" * 10 + "\n>edge\n" + "MKTAYIAKQR" * 2 + "\n")
    summary = predict_contacts(fasta, tmp_path / "c.h5", ContactOptions(
        model=str(model), device="cpu", max_length=20, long_policy="truncate", threads=1))
    assert summary.num_written == 3 and summary.num_residues == 10 + 20 + 20
    assert _attrs(summary.output, "long")["truncated_from"] == 30
    for whole in ("ok", "edge"):
        assert "truncated_from" not in _attrs(summary.output, whole)
    assert _maps(summary.output)["edge"].shape == (20, 20)
    r = run_cli("contacts", fasta, "-m", model, "-o", tmp_path / "d.h5", "--max-length", "20", "--long", "truncate")
    assert r.exit_code == 0 and "contacts: 3 proteins (50 residues," in r.stderr, r.stderr


def test_a_resumed_runs_log_line_leaves_the_maps_already_there_out_of_its_rate(run_cli, tmp_path,
                                                                                log_progress_lines):
    """In a log (a requeued batch job's) the proteins a resumed output already holds count in the
    position, not in the rate and time left, as embed's."""
    seen = log_progress_lines  # (position, this run's work) at each line
    first, whole = tmp_path / "first.fa", tmp_path / "whole.fa"
    first.write_text(">a\nMKTAYIAKQRQISFVKSHFS\n>b\nACDEFGHIKLMNPQ\n")  # 20, 14
    whole.write_text(first.read_text() + ">c\nMKTAYIAK\n")  # and 8 more
    out = tmp_path / "c.h5"
    assert run_cli("contacts", first, "-m", REFERENCES["esm2"], "-o", out).exit_code == 0
    seen.clear()
    r = run_cli("contacts", whole, "-m", REFERENCES["esm2"], "-o", out, "--resume")
    assert r.exit_code == 0, r.stderr
    assert seen and seen[-1] == (42, 8), seen


def test_a_map_not_finite_in_half_precision_is_computed_again_in_float32(tmp_path, monkeypatch):
    # (as embed retries such a protein; contacts recorded it as failed, whatever float32 gave)
    import json

    from protrans_cli.contacts import ContactOptions, ContactPredictor, predict_contacts
    from protrans_cli.models import load_model

    model = str(REFERENCES["esm2"])
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMAAGKL\n>c\nMKVLAAGIVG\n")
    exact = _maps(predict_contacts(fasta, tmp_path / "f32.h5", ContactOptions(
        model=model, device="cpu", dtype="float32", storage_dtype="float32")).output)
    original, dtypes = ContactPredictor.predict, []

    def overflow(self, seqs):  # b's map in half precision: an attention weight that overflowed
        dtypes.append((self.compute_dtype, str(next(self.model.parameters()).dtype)))
        maps = [m.copy() for m in original(self, seqs)]
        for seq, m in zip(seqs, maps):
            if seq in ("MAAGKL", "MKVLAAGIVG") and self.compute_dtype != "float32":
                m[1, 3] = np.inf
            if seq == "MKVLAAGIVG":  # (c overflows in float32 too)
                m[1, 3] = np.nan
        return maps

    monkeypatch.setattr(ContactPredictor, "predict", overflow)
    out = tmp_path / "bf16.h5"
    predictor = ContactPredictor(load_model(model, device="cpu", dtype="bfloat16"))  # (the CLI's GPU dtype)
    summary = predict_contacts(fasta, out, ContactOptions(model=model, device="cpu", storage_dtype="float32"),
                               predictor=predictor)
    assert dtypes == [("bfloat16", "torch.bfloat16"), ("float32", "torch.float32")]
    assert summary.failed == {"c": "NaN or infinity in its contact map (the attention maps of the model's bfloat16 "
                                   "pass, and of a float32 pass too)"}
    maps = _maps(out)
    assert set(maps) == {"a", "b"}
    # b's map is float32 compute over the weights as loaded (their bfloat16 values), as embed's retry
    rounded = ContactPredictor(load_model(model, device="cpu", dtype="bfloat16"))
    rounded.model.float()
    rounded.compute_dtype = "float32"
    np.testing.assert_allclose(maps["b"], original(rounded, ["MAAGKL"])[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(maps["b"], exact["b"], atol=2e-3, rtol=0)  # (float32 weights: near)
    assert _attrs(out, "b")["computed"] == "float32 on cpu (NaN or infinity in bfloat16)"
    assert "computed" not in _attrs(out, "a") and json.loads(_attrs(out)["failed"]) == summary.failed
    assert _attrs(out)["compute_dtype"] == "bfloat16"
    # the model is cast back: the next batch is half precision again
    assert {p.dtype for p in predictor.model.parameters()} == {torch.bfloat16}
    assert predictor.compute_dtype == "bfloat16"


def test_a_run_where_every_protein_failed_exits_1_and_one_of_skips_alone_exits_0(run_cli, tmp_path, monkeypatch):
    # it exited 0 with an empty file when every map failed: a pipeline (or a scheduler) took it for a result
    import json

    from protrans_cli.contacts import ContactPredictor

    model = REFERENCES["esm2"]
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n>b\nMAAGKL\n")
    r = run_cli("contacts", fasta, "-m", model, "-o", tmp_path / "s.h5", "--max-length", "5", "--long-policy", "skip")
    assert r.exit_code == 0, r.stderr  # (what --long-policy skip asked for)
    original = ContactPredictor.predict
    monkeypatch.setattr(ContactPredictor, "predict", lambda self, seqs: [m * np.nan for m in original(self, seqs)])
    out = tmp_path / "n.h5"
    r = run_cli("contacts", fasta, "-m", model, "-o", out)
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {out}: no contact map was written: every protein failed (listed above and in the file's "
        "'failed' attribute); --resume computes them again once the cause is fixed")
    monkeypatch.undo()
    r = run_cli("contacts", fasta, "-m", model, "-o", out, "--resume")
    assert r.exit_code == 0, r.stderr
    assert set(_maps(out)) == {"a", "b"} and json.loads(_attrs(out).get("failed", "{}")) == {}


def test_bad_settings_are_one_line_usage_errors_before_the_model_or_the_fasta(run_cli, tmp_path):
    """--max-length, --max-tokens or --max-batch-size 0 and a device of no such name (which click
    lets through) are refused before any model is loaded (-m names none here) and the FASTA
    read; the library's ContactOptions refuse what the CLI's choices keep out, "window" (embed's
    policy) among them."""
    from protrans_cli.contacts import ContactOptions, predict_contacts
    from protrans_cli.errors import UsageError

    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKTAYIAKQR\n")
    out = tmp_path / "c.h5"
    cases = [
        (("--max-length", "0"), "--max-length must be at least 1, got 0"),
        (("--max-tokens", "0"), "--max-tokens must be at least 1, got 0"),
        (("--max-batch-size", "0"), "--max-batch-size must be at least 1, got 0"),
        (("--device", "gpu"), "--device gpu: use auto, cpu, cuda, cuda:N or mps"),
    ]
    for extra, message in cases:
        r = run_cli("contacts", fasta, "-m", tmp_path / "no_such_model", "-o", out, *extra)
        assert r.exit_code == 2 and message in r.stderr and r.stderr.count("\n") == 1, (extra, r.stderr)
    library = [
        (dict(long_policy="window"), "long_policy must be one of error, skip, truncate, got 'window'; a contact "
                                     "map is not stitched from windows"),
        (dict(invalid_policy="keep"), "invalid_policy must be one of error, skip, got 'keep'"),
        (dict(storage_dtype="int8"), "storage_dtype must be one of float32, float16, got 'int8'"),
        (dict(compression="zstd"), "compression must be one of none, gzip, lzf, got 'zstd'"),
        (dict(dtype="fp8"), "dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"),
        (dict(window=0), "window must be at least 1, got 0"),  # (its field: no --window flag to give)
    ]
    for kw, message in library:
        with pytest.raises(UsageError) as err:
            predict_contacts(fasta, out, ContactOptions(model=str(tmp_path / "no_such_model"), **kw))
        assert str(err.value) == message, kw
    assert not list(tmp_path.glob("c.h5*"))


def test_library_predict_refuses_one_str():
    """predict("MKTAYIAK") would have read each letter as a sequence of one residue: eight (1, 1)
    maps and no error."""
    from protrans_cli.contacts import ContactPredictor
    from protrans_cli.errors import UsageError
    from protrans_cli.models import load_model

    predictor = ContactPredictor(load_model(str(REFERENCES["esm2"]), device="cpu"))
    with pytest.raises(UsageError, match="^predict takes a list of sequences, not one str$"):
        predictor.predict("MKTAYIAK")
    assert [m.shape for m in predictor.predict(["MKTAYIAK"])] == [(8, 8)]
