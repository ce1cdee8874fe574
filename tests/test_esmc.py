"""ESM C (EvolutionaryScale's ESM Cambrian): protrans's own implementation (models/esmc.py) against
the outputs of EvolutionaryScale's `esm` layers, and `import-model` of ESM C's `.pth` weights.

tests/data/esmc_reference (scripts/make_esmc_reference.py, run with the `esm` package, which is
not needed here) holds a tiny ESM C's state dict under ESMC's names, as the hub's .pth holds it,
and what ESMC gives for a few proteins: its `embeddings` (the final norm's output), its sequence
head's logits and its blocks' outputs, for each protein alone and for all of them padded in one
batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protrans_cli.io.h5 import PER_RESIDUE, EmbeddingsReader

DATA = Path(__file__).parent / "data" / "esmc_reference"
PTH = DATA / "esmc_tiny.pth"
PROTEINS = json.loads((DATA / "proteins.json").read_text())


@pytest.fixture(scope="module")
def reference():
    from safetensors.torch import load_file

    return load_file(DATA / "reference.safetensors")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The tiny ESM C converted by import-model (the library call the command makes)."""
    from protrans_cli.models.esmc import import_esmc

    out = tmp_path_factory.mktemp("esmc") / "esmc_tiny"
    summary = import_esmc(PTH, out)
    assert (summary.layers, summary.dim, summary.heads) == (2, 128, 2)
    return out


def _embed(run_cli, tmp_path, model, *extra, name="out"):
    fasta, out = tmp_path / "proteins.fa", tmp_path / f"{name}.h5"
    fasta.write_text("".join(f">{key}\n{seq}\n" for key, seq in PROTEINS.items()))
    r = run_cli("embed", fasta, "-m", model, "-o", out, "--device", "cpu", "-j", "1", *extra)
    assert r.exit_code == 0, r.stderr
    with EmbeddingsReader(out) as reader:
        return {i: a for i, a, _ in reader.items(PER_RESIDUE)}


def test_import_model_command_converts_the_pth(run_cli, tmp_path):
    r = run_cli("import-model", PTH, "-o", tmp_path / "esmc")
    assert r.exit_code == 0, r.stderr
    assert "imported ESM C (2 layers, 128 dimensions, 2 heads)" in r.stderr
    # its card: protrans's own model class, so no transformers snippet and no library_name
    card = (tmp_path / "esmc" / "README.md").read_text()
    assert f"ESM C from EvolutionaryScale's weights `{PTH.name}`" in card and "- Architecture: 2 layers" in card
    assert "library_name" not in card and "```python" not in card and "protrans embed -m ." in card
    config = json.loads((tmp_path / "esmc" / "config.json").read_text())
    assert config["model_type"] == "protrans_esmc" and config["architectures"] == ["EsmCForMaskedLM"]


def test_embed_rows_are_esm_c_embeddings(run_cli, tmp_path, imported, reference):
    """One row per residue (<cls> and <eos> dropped) equal to ESMC's `embeddings`, for every protein
    padded in one batch and each alone; a lower-case protein as its upper-case letters."""
    batched = _embed(run_cli, tmp_path, imported, name="batched")
    alone = _embed(run_cli, tmp_path, imported, "--max-batch-size", "1", name="alone")
    for key, seq in PROTEINS.items():
        expected = reference[f"embeddings_{key}"][1:-1].numpy()
        assert batched[key].shape == (len(seq), 128)
        np.testing.assert_allclose(batched[key], expected, atol=1e-5, rtol=0, err_msg=key)
        np.testing.assert_allclose(alone[key], expected, atol=1e-5, rtol=0, err_msg=key)


def test_embed_layers_are_esm_c_hidden_states(run_cli, tmp_path, imported, reference):
    """--layer 1: the first block's output (ESMC's hidden_states[0]); --layer 0: the token embeddings."""
    from safetensors.torch import load_file

    first = _embed(run_cli, tmp_path, imported, "--layer", "1", name="first")
    tokens = _embed(run_cli, tmp_path, imported, "--layer", "0", name="tokens")
    table = load_file(Path(imported) / "model.safetensors")["esmc.embed.weight"].float()
    for key in PROTEINS:
        np.testing.assert_allclose(first[key], reference[f"hiddens_{key}"][0, 1:-1].numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(tokens[key], table[reference[f"ids_{key}"][1:-1]].numpy(), atol=0, rtol=0)


def test_tokens_and_logits_are_esm_c_s(imported, reference):
    """The tokenizer gives esm's EsmSequenceTokenizer's ids, and the masked-LM class its sequence
    head's logits (each protein alone, and the padded batch at its real tokens)."""
    from protrans_cli.models import load_model

    loaded = load_model(imported, masked_lm=True)
    assert type(loaded.model).__name__ == "EsmCForMaskedLM" and loaded.family.name == "esmc"
    keys = list(PROTEINS)
    inputs, residues = loaded.family.encode(loaded.tokenizer, [PROTEINS[k] for k in keys])
    ids = reference["batch_ids"]
    assert torch.equal(inputs["input_ids"], ids)
    with torch.no_grad():
        logits = loaded.model(**inputs).logits
        real = inputs["attention_mask"].bool()
        torch.testing.assert_close(logits[real], reference["batch_logits"][real], atol=1e-5, rtol=0)
        for key in keys:
            alone = loaded.model(input_ids=reference[f"ids_{key}"][None]).logits[0]
            torch.testing.assert_close(alone, reference[f"logits_{key}"], atol=1e-5, rtol=0)


def test_save_and_load_round_trip_without_remote_code(tmp_path, imported):
    """A saved ESM C loads through the Auto classes (registered by importing protrans_cli.models)
    with trust_remote_code off, and gives the same outputs."""
    from transformers import AutoModel, AutoModelForMaskedLM

    from protrans_cli.models import FAMILIES  # (importing it registers the classes)
    from protrans_cli.models.esmc import EsmCForMaskedLM, EsmCModel

    assert "esmc" in FAMILIES
    model = EsmCForMaskedLM.from_pretrained(imported, dtype=torch.float32).eval()
    model.save_pretrained(tmp_path / "again")
    again = AutoModelForMaskedLM.from_pretrained(tmp_path / "again", trust_remote_code=False).eval()
    encoder = AutoModel.from_pretrained(tmp_path / "again", trust_remote_code=False).eval()
    assert type(again) is EsmCForMaskedLM and type(encoder) is EsmCModel
    ids = torch.tensor([[0, 20, 15, 11, 2, 1], [0, 5, 6, 7, 8, 2]])
    with torch.no_grad():
        torch.testing.assert_close(again(input_ids=ids).logits, model(input_ids=ids).logits, atol=0, rtol=0)
        out = encoder(input_ids=ids, output_hidden_states=True)
        assert len(out.hidden_states) == 3  # (the token embeddings and each of the 2 blocks)
        torch.testing.assert_close(out.last_hidden_state, model.esmc(input_ids=ids).last_hidden_state)


@pytest.mark.parametrize("name", ["esmc_300m", "EvolutionaryScale/esmc-600m-2024-12"])
def test_short_name_says_how_to_get_the_weights(run_cli, tmp_path, name):
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nMKT\n")
    r = run_cli("embed", fasta, "-m", name, "-o", tmp_path / "a.h5")
    size = "300m" if "300m" in name else "600m"
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (f"`hf download EvolutionaryScale/esmc-{size}-2024-12 data/weights/esmc_{size}_2024_12_v0.pth "
            f"--local-dir D`, convert them with `protrans import-model D/data/weights/esmc_{size}_2024_12_v0.pth "
            f"-o esmc_{size}`, then give -m esmc_{size}") in r.stderr
    assert not (tmp_path / "a.h5").exists()


def test_short_name_with_the_weights_in_the_hugging_face_cache_names_the_cached_file(run_cli, tmp_path, monkeypatch):
    """`hf download EvolutionaryScale/esmc-300m-2024-12` puts the .pth in the cache: the advice to
    download it again is replaced by the import of the file there."""
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--EvolutionaryScale--esmc-300m-2024-12" / "snapshots" / ("a" * 40)
    (snapshot / "data" / "weights").mkdir(parents=True)
    (snapshot / "data" / "weights" / "esmc_300m_2024_12_v0.pth").write_bytes(b"PK not read")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    fasta = tmp_path / "a.fa"
    fasta.write_text(">a\nMKT\n")
    r = run_cli("embed", fasta, "-m", "esmc_300m", "-o", tmp_path / "a.h5")
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    pth = snapshot / "data" / "weights" / "esmc_300m_2024_12_v0.pth"
    assert (f"the Hugging Face cache holds them: convert them with `protrans import-model {pth} -o esmc_300m`, "
            "then give -m esmc_300m (the directory)") in r.stderr, r.stderr
    assert "hf download" not in r.stderr


def test_a_pth_missing_a_block_tensor_is_one_line(run_cli, tmp_path):
    state = torch.load(PTH, weights_only=True)
    del state["transformer.blocks.1.ffn.3.weight"]
    torch.save(state, tmp_path / "cut.pth")
    r = run_cli("import-model", tmp_path / "cut.pth", "-o", tmp_path / "out")
    assert r.exit_code == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cut.pth" in r.stderr and "ESM C" in r.stderr and "ffn.3.weight" in r.stderr
    assert not (tmp_path / "out").exists()


def test_tiny_preset_builds_and_embeds(run_cli, tmp_path, tmp_path_factory):
    from conftest import save_tiny_model

    model = save_tiny_model(tmp_path_factory, "esmc")
    rows = _embed(run_cli, tmp_path, model)
    assert {k: v.shape for k, v in rows.items()} == {k: (len(s), 32) for k, s in PROTEINS.items()}
    assert all(np.isfinite(v).all() for v in rows.values())
