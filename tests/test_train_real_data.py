"""prep -> train -> embed on a real proteome from ../shared/data (read in place; skipped when absent)."""

from __future__ import annotations

import pytest
import torch

from protrans_cli.training.metrics import read_metrics

torch.set_num_threads(1)


@pytest.mark.shared
@pytest.mark.slow
def test_prep_train_embed_on_the_ecoli_proteome(tmp_path, shared_data, run_cli):
    fasta = shared_data / "proteomes" / "UP000000625_83333.fasta"
    corpus, valid = tmp_path / "corpus.txt.gz", tmp_path / "valid.txt.gz"
    res = run_cli("prep", fasta, "-o", corpus, "--valid-fraction", "0.05", "--valid-output", valid)
    assert res.exit_code == 0, res.stderr
    run = tmp_path / "run"
    # Length 128: most E. coli proteins (median 271 residues) are randomly cropped.
    res = run_cli("train", "--family", "bert", "--corpus", corpus, "--val-corpus", valid, "-o", run,
                  "--num-steps", 40, "--max-length", 128, "--global-batch-size", 16, "--micro-batch-size", 8,
                  "--lr", "3e-3", "--warmup-steps", 4, "--log-every", 10, "-j", 1)
    assert res.exit_code == 0, res.stderr
    rows = read_metrics(run / "metrics.jsonl")
    losses = [r["loss"] for r in rows if "loss" in r]
    # From uniform over the vocabulary (ln 30 = 3.4) towards the residue composition (~2.9).
    assert losses[0] > losses[-1] and losses[-1] < 3.1
    assert 2.5 < rows[-1]["eval_loss"] < 3.4
    fa = tmp_path / "q.fa"
    fa.write_text(">p\nMKRISTTITTTITITTGNGAG\n")
    res = run_cli("embed", fa, "-m", run, "-o", tmp_path / "q.h5")
    assert res.exit_code == 0, res.stderr
