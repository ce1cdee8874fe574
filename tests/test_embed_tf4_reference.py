"""`protrans embed` under transformers 5 against transformers 4.x's own forward pass
(tests/data/tf4_reference/README.md).

Every published checkpoint was saved by transformers 3.x/4.x and its published embeddings come
from 4.x's model code. The fixture holds one tiny random model per published layout, saved by
transformers 4.46.3 (pytorch_model.bin, old config keys, vocab.txt or spiece.model tokenizers,
ProtT5's float16 encoder-only checkpoint), and 4.46.3's hidden states as the ProtTrans notebooks
take them; transformers 4.x is not needed here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader

REFERENCE = Path(__file__).parent / "data" / "tf4_reference"
MODELS = ["t5_enc_half", "t5_full", "prostt5", "bert", "albert", "xlnet", "electra", "esm"]
LAYERS = (0, 1, -1)  # protrans --layer; the reference numbers hidden states 0, 1, 2


@pytest.fixture(scope="module")
def reference():
    from safetensors.numpy import load_file

    return load_file(REFERENCE / "reference.safetensors")


@pytest.mark.parametrize("model", MODELS)
def test_embed_equals_transformers4(run_cli, tmp_path, reference, model):
    # the published layouts load (no model_type, T5WithLMHeadModel, float16 weights, .bin,
    # spiece.model) and give 4.x's rows: float32 compute, rows without special tokens, the
    # last hidden state after T5's final layer norm / ESM's emb_layer_norm_after, the mean of
    # the rows per protein
    model_dir = tmp_path / model
    shutil.copytree(REFERENCE / model, model_dir)
    out = tmp_path / "e.h5"
    args = [a for layer in LAYERS for a in ("--layer", str(layer))]
    result = run_cli("embed", REFERENCE / "input.fa", "-m", model_dir, "-o", out, "--device", "cpu",
                     "--dtype", "float32", "-j", "1", "--per-residue", "--per-protein", *args)
    assert result.exit_code == 0, result.stderr
    with EmbeddingsReader(out) as r:
        rows = {i: a for i, a, _ in r.items(PER_RESIDUE)}
        means = {i: a for i, a, _ in r.items(PER_PROTEIN)}
    assert sorted(rows) == sorted(["rare", "one", "lower", "mixed_9"])
    for pid in rows:
        for i, layer in enumerate(LAYERS):
            expected = reference[f"rows/{model}/{pid}/{layer % 3}"]
            assert rows[pid][i].dtype == np.float32
            np.testing.assert_allclose(rows[pid][i], expected, atol=1e-5, rtol=0, err_msg=f"{pid} {layer}")
            np.testing.assert_allclose(means[pid][i], expected.mean(0), atol=1e-5, rtol=0, err_msg=f"{pid} {layer}")


def test_prostt5_packed_under_flex_equals_transformers4(reference):
    """ProstT5 as embed runs a T5 model on a GPU in bfloat16 by default (FlexAttention, the
    proteins packed into one row), here in float32 on the CPU: each protein's segment starts
    with its own <AA2fold>, and its rows are 4.x's rows 1..L of "<AA2fold> M K ..."."""
    from protrans_cli.embedders import TransformerEmbedder
    from protrans_cli.io.fasta import read_fasta
    from protrans_cli.models import load_model

    embedder = TransformerEmbedder(load_model(str(REFERENCE / "prostt5"), device="cpu", dtype="float32"),
                                   LAYERS, "cpu", "float32", attention="flex", packed=True)
    assert embedder.packed and embedder.attention == "flex" and embedder.input_prefix == "<AA2fold>"
    records = list(read_fasta(REFERENCE / "input.fa"))
    pairs = embedder.embed_arrays([r.sequence for r in records], rows=True, means=True)
    for rec, (rows, mean) in zip(records, pairs):
        for i, layer in enumerate(LAYERS):
            expected = reference[f"rows/prostt5/{rec.id}/{layer % 3}"]
            np.testing.assert_allclose(rows[i], expected, atol=1e-5, rtol=0, err_msg=f"{rec.id} {layer}")
            np.testing.assert_allclose(mean[i], expected.mean(0), atol=1e-5, rtol=0, err_msg=f"{rec.id} {layer}")
