"""`protrans embed` on ESM-2 and ESM-1b against fair-esm's `esm-extract`
(tests/data/esm_reference/README.md, tests/data/esm1b_reference/README.md).

Each fixture holds a tiny model built in fair-esm 2.0.0 (ESM-2: rotary positions; ESM-1b: a
learned position table and a layer norm before the first block) and converted to a transformers
model directory as the published facebook/esm2_* and esm1b checkpoints are, and esm-extract's
per-residue rows and means of its three hidden states; fair-esm is not needed here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader

REFERENCES = {"esm2": Path(__file__).parent / "data" / "esm_reference",
              "esm1b": Path(__file__).parent / "data" / "esm1b_reference"}
REFERENCE = REFERENCES["esm2"]
N = 2  # the model's layers: esm-extract numbers its hidden states 0 (embeddings) .. N (final)
KEPT = [0, 1, 2, 3, -4, -3, -2, -1]  # rows of the long protein the fixture keeps


def _reference(arch):
    from safetensors.numpy import load_file

    return load_file(REFERENCES[arch] / "reference.safetensors")


def _model_dir(tmp_path, arch):
    to = tmp_path / f"{arch}_tiny"
    shutil.copytree(REFERENCES[arch], to, ignore=shutil.ignore_patterns("reference.safetensors", "input.fa", "*.md"))
    return to


@pytest.fixture(scope="module")
def reference():
    return _reference("esm2")


@pytest.fixture
def model_dir(tmp_path):
    return _model_dir(tmp_path, "esm2")


@pytest.fixture(params=sorted(REFERENCES))
def arch(request):
    return request.param


def _embed(run_cli, tmp_path, model_dir, *options):
    out = tmp_path / "e.h5"
    result = run_cli("embed", REFERENCE / "input.fa", "-m", model_dir, "-o", out, "--device", "cpu",
                     "-j", "1", *options)
    assert result.exit_code == 0, result.stderr
    with EmbeddingsReader(out) as r:
        rows = {i: a for i, a, _ in r.items(PER_RESIDUE)}
        means = {i: a for i, a, _ in r.items(PER_PROTEIN)}
        attrs = {i: dict(r.file[f"{PER_RESIDUE}/{i}"].attrs) for i in rows}
    return rows, means, attrs, result


def _extract_layer(layer: int) -> int:
    """esm-extract's --repr_layers number of a protrans --layer (both take negative indices)."""
    return layer % (N + 1)


def test_the_fixtures_vocabulary_is_protrans_esm_vocabulary(arch):
    from protrans_cli.models.esm import ESM_VOCAB

    assert (REFERENCES[arch] / "vocab.txt").read_text().splitlines() == ESM_VOCAB


@pytest.mark.parametrize("layers, options", [
    ((-1, -2, -3), ()),                                   # negative indices, padded batches
    ((0, 1, 2), ("--packing", "--max-tokens", "64")),     # positive indices, packed, other batches
], ids=["negative-padded", "positive-packed"])
def test_embed_equals_esm_extract(run_cli, tmp_path, arch, layers, options):
    # esm-extract --include per_tok mean --repr_layers ... (truncation at 1022 residues, its
    # default) == protrans embed --layer ... --max-length 1022 --long-policy truncate: rows without
    # BOS/EOS, the final layer after emb_layer_norm_after, rare residues as ESM's own tokens
    # (U/Z/O/B mapped to X would change the "rare" rows), lowercase read upper-cased.
    reference, model_dir = _reference(arch), _model_dir(tmp_path, arch)
    args = [a for layer in layers for a in ("--layer", str(layer))]
    rows, means, attrs, _ = _embed(run_cli, tmp_path, model_dir, *args, "--max-length", "1022",
                                   "--long-policy", "truncate", *options)
    assert sorted(rows) == sorted(["rare", "one", "lower", "mixed_5", "mixed_20", "mixed_40", "long"])
    for pid in rows:
        for i, layer in enumerate(layers):
            k = _extract_layer(layer)
            if pid == "long":
                assert rows[pid].shape == (len(layers), 1022, 8) and attrs[pid]["truncated_from"] == 1100
                np.testing.assert_allclose(rows[pid][i][KEPT], reference[f"long_truncated_rows/{k}"], atol=1e-5, rtol=0)
                np.testing.assert_allclose(means[pid][i], reference[f"long_truncated_mean/{k}"], atol=1e-5, rtol=0)
            else:
                np.testing.assert_allclose(rows[pid][i], reference[f"rows/{pid}/{k}"], atol=1e-5, rtol=0)
                np.testing.assert_allclose(means[pid][i], reference[f"mean/{pid}/{k}"], atol=1e-5, rtol=0)


def test_by_default_a_protein_past_1022_residues_is_embedded_whole(run_cli, tmp_path, model_dir, reference):
    # esm-extract truncates at 1022 residues by default; protrans embeds the whole protein (and
    # warns): its rows equal esm-extract's with --truncation_seq_length 1100.
    rows, means, _, result = _embed(run_cli, tmp_path, model_dir, "--per-protein", "--per-residue")
    assert "1,022" in result.stderr and "--long-policy chunk" in result.stderr
    long, mean = rows["long"], means["long"]
    assert long.shape == (1100, 8)
    np.testing.assert_allclose(long[KEPT], reference[f"long_full_rows/{N}"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(mean, reference[f"long_full_mean/{N}"], atol=1e-5, rtol=0)
    assert np.abs(mean - reference[f"long_truncated_mean/{N}"]).max() > 1e-3
    for pid in ("rare", "one", "lower", "mixed_40"):  # the others are esm-extract's at its defaults
        np.testing.assert_allclose(rows[pid], reference[f"rows/{pid}/{N}"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(means[pid], reference[f"mean/{pid}/{N}"], atol=1e-5, rtol=0)


def test_esm1b_refuses_past_its_position_table_before_any_output_and_chunks_on_request(run_cli, tmp_path):
    # ESM-1b's learned table holds 1,022 residues: by default the 1,100-residue protein is a
    # one-line error before anything is computed or written; --long-policy chunk embeds it whole,
    # its first rows those of the first window (esm-extract's truncated protein).
    reference, model_dir = _reference("esm1b"), _model_dir(tmp_path, "esm1b")
    out = tmp_path / "e.h5"
    result = run_cli("embed", REFERENCES["esm1b"] / "input.fa", "-m", model_dir, "-o", out, "--device", "cpu")
    assert result.exit_code == 1
    assert "record 'long': 1100 residues, longer than the 1022 residues the model accepts" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not list(tmp_path.glob("e.h5*"))
    rows, means, attrs, _ = _embed(run_cli, tmp_path, model_dir, "--long-policy", "chunk")
    assert rows["long"].shape == (1100, 8) and attrs["long"]["chunks"] == 2
    np.testing.assert_allclose(rows["long"][:4], reference[f"long_truncated_rows/{N}"][:4], atol=1e-5, rtol=0)
    for pid in ("rare", "one", "lower", "mixed_40"):
        np.testing.assert_allclose(rows[pid], reference[f"rows/{pid}/{N}"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(means[pid], reference[f"mean/{pid}/{N}"], atol=1e-5, rtol=0)
