"""The quickstart pipeline end to end through the real CLI: every output exists and agrees with the others."""

from __future__ import annotations

import csv
import json

from protrans_cli.io.fasta import read_fasta
from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader


def test_quickstart_end_to_end(tmp_path, run_cli):
    # One test, one run: a module fixture shared by several tests ran the pipeline once per
    # pytest-xdist worker (twice in CI).
    from protrans_cli.quickstart import run_quickstart

    out = tmp_path / "run"
    summary = run_quickstart(out, num_steps=8, head_epochs=2)
    _every_output_exists(out, summary)
    _outputs_are_consistent(out)
    _refuses_to_overwrite(out, run_cli)


def _every_output_exists(out, summary):
    for what, path in summary.outputs.items():
        assert path.exists(), f"{what}: {path} missing"
    lines = [x for x in (out / "commands.sh").read_text().splitlines() if x.startswith("protrans ")]
    assert lines == summary.commands and len(lines) == 20


def _outputs_are_consistent(out):
    ss_test = {r.id: r.sequence for r in read_fasta(out / "fasta" / "ss_test.fasta")}
    assert len(ss_test) == 64
    # per-residue embeddings: one row per residue, both models, ids as in the FASTA
    dims = {}
    for tag in ("onehot", "bert"):
        with EmbeddingsReader(out / "embeddings" / f"ss_test.{tag}.h5") as r:
            assert set(r.ids(PER_RESIDUE)) == set(ss_test)
            for ident, arr, _attrs in r.items(PER_RESIDUE):
                assert arr.shape[0] == len(ss_test[ident])
            dims[tag] = r.dim(PER_RESIDUE)
    assert dims["onehot"] == 21
    with EmbeddingsReader(out / "embeddings" / "loc_test.bert.h5") as r:
        assert r.dim(PER_PROTEIN) == dims["bert"]
    # predictions: one state per residue, from the 3-state alphabet
    preds = {r.id: r.sequence for r in read_fasta(out / "predictions" / "ss_test.ss3.fasta")}
    assert preds.keys() == ss_test.keys()
    for ident, states in preds.items():
        assert len(states) == len(ss_test[ident]) and set(states) <= set("HEC")
    loc_ids = {r.id for r in read_fasta(out / "fasta" / "loc_test.fasta")}
    with open(out / "predictions" / "loc_test.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {row["id"] for row in rows} == loc_ids
    # heads record the embedding dimension they were trained on, and metrics for the test set
    for head, dim in [("ss.onehot", 21), ("ss.bert", dims["bert"]), ("loc.onehot", 21)]:
        config = json.loads((out / "heads" / head / "config.json").read_text())
        assert config["input_dim"] == dim
        metrics = json.loads((out / "heads" / head / "metrics.json").read_text())
        test_set = next(k for k in metrics if k.endswith("_test"))
        for m in metrics[test_set].values():
            assert 0.0 <= m["accuracy"] <= 1.0 and m["n"] > 0


def _refuses_to_overwrite(out, run_cli):
    result = run_cli("quickstart", "-o", out)
    assert result.exit_code == 2
    assert "--force" in result.stderr
