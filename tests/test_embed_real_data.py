"""`protrans embed` on the shared pathological FASTA (skipped without ../shared): every family's
tiny model, every protein's rows against a plain transformers forward pass over that protein
alone; U/O/B/Z/X, lower case, a terminal `*` and a 35,000-residue protein chunked into windows."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from conftest import save_tiny_models
from protrans_cli.io.fasta import parse_fasta
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader

pytestmark = pytest.mark.shared
torch = pytest.importorskip("torch")
from protrans_cli.models import FAMILIES  # noqa: E402
from test_embed_models import reference_rows  # noqa: E402


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return save_tiny_models(tmp_path_factory)


def _records(path, limit=None):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as stream:
        records = list(parse_fasta(stream, str(path)))
    return records[:limit]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_pathological_residues_and_stops_every_family(family, tiny_models, shared_data, tmp_path, run_cli):
    """The alphabet's rare letters, lower case and metagenomic proteins ending in `*`: one row per
    residue (the stop is no residue), equal to transformers' rows for the protein alone."""
    illegal = shared_data / "pathological" / "illegal_amino_acids.fasta"
    meta = shared_data / "pathological" / "SRR492066.meta.faa.gz"
    fasta = tmp_path / "in.fa"
    picked = _records(illegal) + _records(meta, limit=6)
    with open(fasta, "w") as out:
        for record in picked:
            out.write(f">{record.description}\n{record.sequence}\n")
    assert sum(r.sequence.endswith("*") for r in picked) >= 5
    out = tmp_path / "out.h5"
    result = run_cli("embed", fasta, "-m", tiny_models[family], "-o", out, "--device", "cpu", "-q",
                     "--per-residue", "--per-protein")
    assert result.exit_code == 0, result.stderr
    with EmbeddingsReader(out) as r:
        assert sorted(r.ids(PER_RESIDUE)) == sorted(rec.id for rec in picked)
        for record in picked:
            residues = record.sequence.rstrip("*")
            rows = r.get(record.id, PER_RESIDUE)
            assert rows.shape[0] == len(residues), record.id
            expected = reference_rows(FAMILIES[family], tiny_models[family], residues)[0]
            np.testing.assert_allclose(rows, expected, atol=1e-5, rtol=1e-4, err_msg=record.id)
            np.testing.assert_allclose(r.get(record.id, PER_PROTEIN), rows.astype(np.float64).mean(0), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_titin_twice_chunked_into_full_windows(tiny_models, shared_data, tmp_path, run_cli):
    """Titin twice over in one record (68,700 residues) in windows of 1,000: one row per residue,
    and the rows each window owns equal a forward pass over that window alone (the first 1,000
    residues and, the last window ending at the protein's end, the last 1,000)."""
    titin = shared_data / "pathological" / "titin_twice.fasta"
    (record,) = _records(titin)
    sequence = record.sequence.rstrip("*")
    assert len(sequence) > 60_000
    out = tmp_path / "titin.h5"
    result = run_cli("embed", titin, "-m", tiny_models["esm"], "-o", out, "--device", "cpu", "-q",
                     "--max-length", "1000", "--long-policy", "chunk", "--per-residue", "--per-protein")
    assert result.exit_code == 0, result.stderr
    with EmbeddingsReader(out) as r:
        rows = r.get(record.id, PER_RESIDUE)
        pooled = r.get(record.id, PER_PROTEIN)
    assert rows.shape[0] == len(sequence) and np.isfinite(rows).all()
    np.testing.assert_allclose(pooled, rows.astype(np.float64).mean(0), atol=1e-6, rtol=1e-5)
    # (overlaps split at their middle: the first window owns its first 968 rows; the last one,
    # overlapping its neighbour by 692 residues here, its last 654)
    first = reference_rows(FAMILIES["esm"], tiny_models["esm"], sequence[:1000])[0]
    np.testing.assert_allclose(rows[:900], first[:900], atol=1e-5, rtol=1e-4)
    last = reference_rows(FAMILIES["esm"], tiny_models["esm"], sequence[-1000:])[0]
    np.testing.assert_allclose(rows[-640:], last[-640:], atol=1e-5, rtol=1e-4)
    assert not np.allclose(rows[-700:-660], last[-700:-660], atol=1e-3)  # the window before owns these
