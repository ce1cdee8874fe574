"""SaProt (westlake-repl/SaProt_*: an ESM-2 whose tokens pair each residue with a Foldseek 3Di
state, `Md`, `M#`) in `protrans embed`, against a plain transformers forward pass over the
tokens SaProt's README feeds it ("M#E#V#..." sequence-only, "MdEv..." with structure)."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
import torch

from protrans_cli.io.h5 import PER_PROTEIN, PER_RESIDUE, EmbeddingsReader

RESIDUES = "ACDEFGHIKLMNPQRSTVWY#"
STATES = "pynwrqhgdlvtmfsaeikc#"  # (the order of the published vocabulary is not assumed anywhere)
SEQS = {"a": "MKTAYIAKQRQISFVKSHFSRQ", "b": "MEVQLVQYKUXG", "c": "GSHMKT"}
THREE_DI = {"a": "dvvvlllcppvsvvlpdddpvn", "b": "DAVLCPPQ#-ND", "c": "ppvvdd"}


@pytest.fixture(scope="module")
def saprot(tmp_path_factory):
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    model_dir = tmp_path_factory.mktemp("saprot")
    vocab = ["<cls>", "<pad>", "<eos>", "<unk>"] + [a + d for a in RESIDUES for d in STATES] + ["<mask>"]
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    config = EsmConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=32, pad_token_id=1, mask_token_id=len(vocab) - 1,
                       position_embedding_type="rotary", max_position_embeddings=1026, token_dropout=True)
    EsmForMaskedLM(config).save_pretrained(model_dir)
    EsmTokenizer(str(model_dir / "vocab.txt")).save_pretrained(model_dir)
    return model_dir


def _reference(model_dir, text: str) -> np.ndarray:
    """A plain transformers forward pass over SaProt's input text: the residue rows."""
    from transformers import EsmModel, EsmTokenizer

    tokenizer = EsmTokenizer.from_pretrained(str(model_dir))
    model = EsmModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()
    enc = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).last_hidden_state[0, 1:-1].numpy()


def _sequence_only(seq: str) -> str:
    return "".join((r if r in RESIDUES else "#") + "#" for r in seq)


def _with_states(seq: str, states: str) -> str:
    return "".join((r if r in RESIDUES else "#") + (s.lower() if s.lower() in STATES else "#")
                   for r, s in zip(seq, states))


def _fasta(path, records):
    path.write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))
    return path


def _embed(run_cli, tmp_path, model_dir, *options, out="e.h5"):
    fasta = _fasta(tmp_path / "x.fa", SEQS)
    result = run_cli("embed", fasta, "-m", model_dir, "-o", tmp_path / out, "--device", "cpu", "-j", "1",
                     *options)
    return result, tmp_path / out


def _rows(path):
    with EmbeddingsReader(path) as r:
        return {i: a for i, a, _ in r.items(PER_RESIDUE)}, {i: a for i, a, _ in r.items(PER_PROTEIN)}


def test_sequence_only_rows_are_a_plain_forward_over_residue_hash_tokens(tmp_path, run_cli, saprot):
    result, out = _embed(run_cli, tmp_path, saprot)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.count("structure-aware model (SaProt)") == 1
    rows, means = _rows(out)
    for ident, seq in SEQS.items():
        assert rows[ident].shape[0] == len(seq)  # (U and X: one row each, read as '#')
        np.testing.assert_allclose(rows[ident], _reference(saprot, _sequence_only(seq)), atol=1e-5)
        np.testing.assert_allclose(means[ident], rows[ident].mean(0), atol=1e-5)
    with h5py.File(out, "r") as f:
        assert f.attrs["structure_tokens"] == "none"
    info = run_cli("info", out)  # (it said nothing of the 3Di states)
    assert "3Di states:    none: every residue read with an unknown structure" in info.stdout, info.output


def test_structure_tokens_pair_each_residue_with_its_state(tmp_path, run_cli, saprot):
    tokens = _fasta(tmp_path / "x.3di.fa", {"c": THREE_DI["c"], "a": THREE_DI["a"], "b": THREE_DI["b"]})
    result, out = _embed(run_cli, tmp_path, saprot, "--structure-tokens", tokens)
    assert result.exit_code == 0, result.stderr
    assert "structure-aware model (SaProt)" not in result.stderr
    rows, _ = _rows(out)
    for ident, seq in SEQS.items():
        expected = _reference(saprot, _with_states(seq, THREE_DI[ident]))
        np.testing.assert_allclose(rows[ident], expected, atol=1e-5)
        assert not np.allclose(rows[ident], _reference(saprot, _sequence_only(seq)), atol=1e-3)
    with h5py.File(out, "r") as f:
        assert f.attrs["structure_tokens"].startswith("blake2b:")
        assert f.attrs["structure_tokens_file"] == "x.3di.fa"
        digest = f.attrs["structure_tokens"]
    info = run_cli("info", out)
    assert f"3Di states:    from x.3di.fa ({digest})\n" in info.stdout, info.output
    with h5py.File(out, "r") as f:
        # the checksum is the amino-acid sequence's (labels match embeddings by it)
        from protrans_cli.io.h5 import sequence_checksum

        assert f[f"{PER_RESIDUE}/a"].attrs["checksum"] == sequence_checksum(SEQS["a"])


def test_chunked_windows_cut_the_3di_string_with_the_residues(tmp_path, run_cli, saprot):
    from protrans_cli.embed import chunk_windows, stitch_windows

    tokens = _fasta(tmp_path / "x.3di.fa", THREE_DI)
    result, out = _embed(run_cli, tmp_path, saprot, "--structure-tokens", tokens, "--max-length", "8",
                         "--long-policy", "chunk", "--chunk-overlap", "3")
    assert result.exit_code == 0, result.stderr
    rows, _ = _rows(out)
    seq, states = SEQS["a"], THREE_DI["a"]
    windows = chunk_windows(len(seq), 8, 3)
    assert len(windows) > 1
    parts = [_reference(saprot, _with_states(seq[s:e], states[s:e]))[None] for s, e in windows]
    expected = stitch_windows(windows, parts, len(seq))[0]
    np.testing.assert_allclose(rows["a"], expected, atol=1e-5)


@pytest.mark.parametrize("records, says", [
    ({**THREE_DI, "a": THREE_DI["a"][:-1]}, "the 3Di string has 21 letters for a sequence of 22 residues"),
    ({**THREE_DI, "b": "DAVLCPPQ#-N1"}, "'1' at position 12 is not a 3Di letter"),
    ({"a": THREE_DI["a"], "c": THREE_DI["c"]}, "no 3Di string for this record"),
], ids=["length", "letter", "missing"])
def test_bad_structure_tokens_are_one_line_before_any_computation(tmp_path, run_cli, saprot, records, says,
                                                                   monkeypatch):
    from protrans_cli.embedders import TransformerEmbedder

    def never(*args, **kwargs):
        raise AssertionError("computed")

    monkeypatch.setattr(TransformerEmbedder, "embed_arrays", never)
    tokens = _fasta(tmp_path / "bad.3di.fa", records)
    result, out = _embed(run_cli, tmp_path, saprot, "--structure-tokens", tokens)
    assert result.exit_code == 1, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    # (the 3Di file as given, not its name alone: a run over data/x.fa and structures/x.3di.fa named "x.3di.fa")
    assert says in result.stderr and str(tokens) in result.stderr, result.stderr
    record = next(k for k in ("a", "b", "c") if records.get(k) != THREE_DI[k])
    line = 1 + 2 * list(records).index(record) if record in records else None
    assert f"{tokens}{f':{line}' if line else ''}, record '{record}'" in result.stderr, result.stderr
    assert not out.exists()


def test_structure_tokens_with_onehot_is_a_usage_error(tmp_path, run_cli):
    tokens = _fasta(tmp_path / "x.3di.fa", THREE_DI)
    result, out = _embed(run_cli, tmp_path, "onehot", "--structure-tokens", tokens)
    assert result.exit_code == 2 and "--structure-tokens" in result.stderr, result.output
    assert not out.exists()


def test_structure_tokens_on_plain_esm_is_a_usage_error(tmp_path, run_cli):
    import shutil
    from pathlib import Path

    model = tmp_path / "esm"
    shutil.copytree(Path(__file__).parent / "data" / "esm_reference", model,
                    ignore=shutil.ignore_patterns("reference.safetensors", "input.fa", "*.md"))
    tokens = _fasta(tmp_path / "x.3di.fa", THREE_DI)
    result, out = _embed(run_cli, tmp_path, model, "--structure-tokens", tokens)
    assert result.exit_code == 2, result.output
    assert "not a structure-aware model" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_resume_refuses_to_mix_sequence_only_and_structure_rows(tmp_path, run_cli, saprot):
    result, out = _embed(run_cli, tmp_path, saprot)
    assert result.exit_code == 0, result.stderr
    tokens = _fasta(tmp_path / "x.3di.fa", THREE_DI)
    result, _ = _embed(run_cli, tmp_path, saprot, "--structure-tokens", tokens, "--resume")
    assert result.exit_code == 2, result.output
    assert "structure_tokens" in result.stderr, result.stderr


def _site_log_probs(model_dir, seq: str) -> np.ndarray:
    """SaProt's zero-shot reading, sequence-only, as a plain loop: residue i's token `R#` replaced
    by `##` (the residue half masked), log-softmax of the logits there: (L, V)."""
    from transformers import EsmForMaskedLM, EsmTokenizer

    tokenizer = EsmTokenizer.from_pretrained(str(model_dir))
    model = EsmForMaskedLM.from_pretrained(str(model_dir)).eval()
    tokens = [(r if r in RESIDUES else "#") + "#" for r in seq]
    out = []
    for i in range(len(seq)):
        masked = tokens[:i] + ["##"] + tokens[i + 1:]
        enc = tokenizer("".join(masked), return_tensors="pt")
        with torch.no_grad():
            out.append(model(**enc).logits[0, i + 1].log_softmax(-1).numpy())
    return np.array(out), tokenizer.get_vocab()


def test_variants_masked_marginals_are_saprots_zero_shot_reading(run_cli, saprot):
    import csv
    import io

    seq = "MKTAYIAKQR"
    result = run_cli("variants", "--all-singles", "--sequence", seq, "-m", saprot, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 19 * len(seq)
    column = next(k for k in rows[0] if k.endswith("masked_marginals"))
    lp, vocab = _site_log_probs(saprot, seq)
    for row in rows:
        wt, pos, mt = row["mutant"][0], int(row["mutant"][1:-1]) - 1, row["mutant"][-1]
        want = lp[pos, vocab[mt + "#"]] - lp[pos, vocab[wt + "#"]]
        assert float(row[column]) == pytest.approx(want, abs=2e-5), row["mutant"]


def test_pseudo_perplexity_masks_the_residue_half(tmp_path, run_cli, saprot):
    import csv
    import io

    result = run_cli("perplexity", _fasta(tmp_path / "x.fa", {"a": SEQS["a"]}), "-m", saprot, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    row = next(csv.DictReader(io.StringIO(result.stdout), delimiter="\t"))
    lp, vocab = _site_log_probs(saprot, SEQS["a"])
    want = sum(lp[i, vocab[r + "#"]] for i, r in enumerate(SEQS["a"]))
    assert row["method"] == "pseudo" and int(row["length"]) == len(SEQS["a"])
    assert float(row["log_likelihood"]) == pytest.approx(want, abs=1e-4)


def test_packing_is_refused_not_misread(tmp_path, run_cli, saprot):
    result, out = _embed(run_cli, tmp_path, saprot, "--packing")
    assert result.exit_code == 2 and "--packing" in result.stderr and "SaProt" in result.stderr, result.output
    assert not out.exists()


def test_the_family_reads_both_alphabets_from_the_vocabulary(saprot):
    from transformers import EsmTokenizer

    from protrans_cli.models.saprot import SaProtFamily

    family = SaProtFamily(EsmTokenizer.from_pretrained(str(saprot)))
    assert family.residues == "".join(sorted(RESIDUES[:-1]))
    assert family.states == "".join(sorted(STATES[:-1]))
    assert family.prepare("MuX") == "M###" + "##"


@pytest.fixture(scope="module")
def prostt5_like(tmp_path_factory):
    """A tiny ProstT5-like T5 (as tests/test_translate.py's): translate --to 3di's model."""
    from conftest import save_tiny_models
    from test_embed_models import _prefixed_t5

    models = save_tiny_models(tmp_path_factory)
    return _prefixed_t5(tmp_path_factory.mktemp("translate") / "prostt5_like", models), models


def test_translate_to_3di_then_embed_with_its_strings(tmp_path, run_cli, saprot, prostt5_like):
    """The chain docs/embed.md shows: `protrans translate --to 3di` writes upper-case 3Di strings
    under the input's ids (with a description), which --structure-tokens reads as they are."""
    from protrans_cli.io.fasta import read_fasta

    model_dir, _ = prostt5_like
    fasta = _fasta(tmp_path / "x.fa", SEQS)
    states = tmp_path / "x.3di.fa"
    result = run_cli("translate", fasta, "-m", model_dir, "--to", "3di", "-o", states, "--device", "cpu", "-j", "1")
    assert result.exit_code == 0, result.stderr
    predicted = {r.id: r.sequence for r in read_fasta(states)}
    result, out = _embed(run_cli, tmp_path, saprot, "--structure-tokens", states)
    assert result.exit_code == 0, result.stderr
    rows, _ = _rows(out)
    for ident, seq in SEQS.items():
        np.testing.assert_allclose(rows[ident], _reference(saprot, _with_states(seq, predicted[ident])), atol=1e-5)


def test_the_catalog_counts_saprot_as_its_esm2_architecture_with_446_tokens():
    import torch as _torch
    from transformers import EsmConfig, EsmModel

    from protrans_cli.models import CHECKPOINTS, FAMILIES

    # SaProt's short names -> the ESM-2 preset of the same architecture
    architectures = {"saprot_35m_af2": "esm2_t12_35M", "saprot_650m_af2": "esm2_t33_650M",
                     "saprot_650m_pdb": "esm2_t33_650M"}
    assert {CHECKPOINTS[n].hub_id for n in CHECKPOINTS if n.startswith("saprot")} == {
        "westlake-repl/SaProt_35M_AF2", "westlake-repl/SaProt_650M_AF2", "westlake-repl/SaProt_650M_PDB"}
    for name, preset in architectures.items():
        kwargs = FAMILIES["esm"].preset_config(preset)
        with _torch.device("meta"):
            model = EsmModel(EsmConfig(vocab_size=446, pad_token_id=1, mask_token_id=445, **kwargs),
                             add_pooling_layer=False)
        ckpt = CHECKPOINTS[name]
        assert sum(p.numel() for p in model.parameters()) == ckpt.num_params, name
        assert (ckpt.embedding_dim, ckpt.num_layers) == (kwargs["hidden_size"], kwargs["num_hidden_layers"])


def test_merge_refuses_parts_of_sequence_only_and_structure_rows(tmp_path, run_cli, saprot):
    tokens = _fasta(tmp_path / "x.3di.fa", THREE_DI)
    one, first = _embed(run_cli, tmp_path, saprot, "--part", "1/2", out="p1.h5")
    two, second = _embed(run_cli, tmp_path, saprot, "--part", "2/2", "--structure-tokens", tokens, out="p2.h5")
    assert one.exit_code == 0 and two.exit_code == 0, one.stderr + two.stderr
    result = run_cli("merge", first, second, "-o", tmp_path / "all.h5")
    assert result.exit_code != 0 and "structure_tokens" in result.stderr, result.output
    assert not (tmp_path / "all.h5").exists()


# --- variants and perplexity with 3Di strings (SaProt's zero-shot recipe with structure) ------

def _site_log_probs_with_states(model_dir, seq: str, states: str):
    """SaProt's zero-shot reading with structure, as a plain loop: residue i's token `Rs` replaced
    by `#s` (the residue half masked, the state kept), log-softmax of the logits there: (L, V)."""
    from transformers import EsmForMaskedLM, EsmTokenizer

    tokenizer = EsmTokenizer.from_pretrained(str(model_dir))
    model = EsmForMaskedLM.from_pretrained(str(model_dir)).eval()
    pairs = [((r if r in RESIDUES else "#"), (s.lower() if s.lower() in STATES else "#")) for r, s in zip(seq, states)]
    out = []
    for i in range(len(seq)):
        tokens = [r + s for r, s in pairs]
        tokens[i] = "#" + pairs[i][1]
        enc = tokenizer("".join(tokens), return_tensors="pt")
        with torch.no_grad():
            out.append(model(**enc).logits[0, i + 1].log_softmax(-1).numpy())
    return np.array(out), tokenizer.get_vocab(), [s for _, s in pairs]


WT, WT_STATES = "MKTAYIAKQR", "dvvLLcp#vn"


def test_variants_with_structure_are_saprots_zero_shot_recipe(tmp_path, run_cli, saprot):
    import csv
    import io

    fasta = _fasta(tmp_path / "wt.fa", {"wt": WT})
    tokens = _fasta(tmp_path / "wt.3di.fa", {"other": "ppvv", "wt": WT_STATES})
    result = run_cli("variants", "--all-singles", "--fasta", fasta, "--structure-tokens", tokens, "-m", saprot,
                     "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 19 * len(WT)
    column = next(k for k in rows[0] if k.endswith("masked_marginals"))
    lp, vocab, states = _site_log_probs_with_states(saprot, WT, WT_STATES)
    sequence_only, _ = _site_log_probs(saprot, WT)
    differs = 0
    for row in rows:
        wt, pos, mt = row["mutant"][0], int(row["mutant"][1:-1]) - 1, row["mutant"][-1]
        s = states[pos]
        want = lp[pos, vocab[mt + s]] - lp[pos, vocab[wt + s]]
        assert float(row[column]) == pytest.approx(want, abs=2e-5), row["mutant"]
        differs += abs(want - (sequence_only[pos, vocab[mt + "#"]] - sequence_only[pos, vocab[wt + "#"]])) > 1e-3
    assert differs > len(rows) // 2  # (the states were read, not `#`)
    assert "wt.3di.fa (blake2b:" in result.stderr


def test_variants_pseudo_ppl_with_structure_keeps_the_wild_types_states(tmp_path, run_cli, saprot):
    """A mutant keeps the wild type's 3Di string: its pseudo-log-likelihood masks `#s` at each site
    of the mutant's residues paired with the wild type's states."""
    import csv
    import io

    tokens = _fasta(tmp_path / "one.3di.fa", {"anything": WT_STATES})
    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\nT3W:Y5G\n")
    result = run_cli("variants", table, "--sequence", WT, "--structure-tokens", tokens, "-m", saprot,
                     "--scoring", "pseudo-ppl", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))

    def pll(seq):
        lp, vocab, states = _site_log_probs_with_states(saprot, seq, WT_STATES)
        return sum(lp[i, vocab[r + s]] for i, (r, s) in enumerate(zip(seq, states)))

    wild = pll(WT)
    column = next(k for k in rows[0] if k.endswith("pseudo_ppl"))
    assert len(rows) == 2
    for row, mutant in zip(rows, ["MATAYIAKQR", "MKWAGIAKQR"]):
        assert float(row[column]) == pytest.approx(pll(mutant) - wild, abs=1e-4), row["mutant"]


def test_pseudo_perplexity_with_structure_masks_the_residue_half_keeping_the_state(tmp_path, run_cli, saprot):
    import csv

    tokens = _fasta(tmp_path / "x.3di.fa", THREE_DI)
    result = run_cli("perplexity", _fasta(tmp_path / "x.fa", SEQS), "--structure-tokens", tokens, "-m", saprot,
                     "--device", "cpu", "--per-residue", tmp_path / "r.tsv", "-o", tmp_path / "p.tsv")
    assert result.exit_code == 0, result.stderr
    rows = {r["id"]: r for r in csv.DictReader((tmp_path / "p.tsv").open(), delimiter="\t")}
    for ident, seq in SEQS.items():
        lp, vocab, states = _site_log_probs_with_states(saprot, seq, THREE_DI[ident])
        want = sum(lp[i, vocab[(r if r in RESIDUES else "#") + s]] for i, (r, s) in enumerate(zip(seq, states)))
        assert float(rows[ident]["log_likelihood"]) == pytest.approx(want, abs=1e-4), ident
    residues = list(csv.DictReader((tmp_path / "r.tsv").open(), delimiter="\t"))
    assert "".join(r["residue"] for r in residues if r["id"] == "a") == SEQS["a"]  # (the residues, not paired)
    assert "x.3di.fa (blake2b:" in result.stderr


@pytest.mark.parametrize("command, records, says, code", [
    ("perplexity", {"a": THREE_DI["a"]}, "no 3Di string for this record", 1),
    ("perplexity", {**THREE_DI, "c": "ppv"}, "the 3Di string has 3 letters for a sequence of 6 residues", 1),
    ("variants", {"x": THREE_DI["c"]}, "no 3Di string for the wild type 'c'", 1),
    ("variants", {"c": "ppvvd1"}, "'1' at position 6 is not a 3Di letter", 1),
    ("variants", {"c": "ppv"}, "the 3Di string has 3 letters for a sequence of 6 residues", 1),
    ("variants-sequence", {"c": THREE_DI["c"], "a": THREE_DI["a"]}, "has no id to pick one by", 2),
], ids=["pp-missing", "pp-length", "var-missing", "var-letter", "var-length", "var-sequence-two"])
def test_bad_structure_tokens_in_variants_and_perplexity(tmp_path, run_cli, saprot, command, records, says, code,
                                                        monkeypatch):
    from protrans_cli import models

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", never)
    tokens = _fasta(tmp_path / "bad.3di.fa", records)
    if command == "perplexity":
        args = ["perplexity", _fasta(tmp_path / "x.fa", SEQS)]
    elif command == "variants":
        args = ["variants", "--all-singles", "--fasta", _fasta(tmp_path / "x.fa", {"c": SEQS["c"]})]
    else:
        args = ["variants", "--all-singles", "--sequence", SEQS["c"]]
    result = run_cli(*args, "--structure-tokens", tokens, "-m", saprot, "--device", "cpu")
    assert result.exit_code == code, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert says in result.stderr, result.stderr
    if code == 1:
        assert "bad.3di.fa" in result.stderr


@pytest.mark.parametrize("command", ["variants", "perplexity"])
def test_structure_tokens_with_a_plain_esm_is_a_usage_error_in_scoring(tmp_path, run_cli, command):
    import shutil
    from pathlib import Path

    model = tmp_path / "esm"
    shutil.copytree(Path(__file__).parent / "data" / "esm_reference", model,
                    ignore=shutil.ignore_patterns("reference.safetensors", "input.fa", "*.md"))
    tokens = _fasta(tmp_path / "x.3di.fa", {"c": THREE_DI["c"]})
    fasta = _fasta(tmp_path / "x.fa", {"c": SEQS["c"]})
    args = (["variants", "--all-singles", "--fasta", fasta] if command == "variants" else ["perplexity", fasta])
    result = run_cli(*args, "--structure-tokens", tokens, "-m", model, "--device", "cpu", "-o", tmp_path / "out.tsv")
    assert result.exit_code == 2, result.output
    assert "not a structure-aware model" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.tsv").exists()


def test_embed_sequences_takes_3di_strings_in_the_form_of_the_sequences(tmp_path, run_cli, saprot):
    from protrans_cli.embed import EmbedOptions, embed_sequences

    tokens = _fasta(tmp_path / "x.3di.fa", THREE_DI)
    result, out = _embed(run_cli, tmp_path, saprot, "--structure-tokens", tokens)
    assert result.exit_code == 0, result.stderr
    rows, _ = _rows(out)
    options = EmbedOptions(model=str(saprot), device="cpu")
    given = embed_sequences(SEQS, options, kind="per_residue", structure=THREE_DI)
    listed = embed_sequences(list(SEQS.values()), options, kind="per_residue",
                             structure=[THREE_DI[i] for i in SEQS])
    for k, ident in enumerate(SEQS):
        np.testing.assert_allclose(given[ident], rows[ident], atol=1e-6)
        np.testing.assert_allclose(listed[k], rows[ident], atol=1e-6)
    plain = embed_sequences({"c": SEQS["c"]}, options, kind="per_residue")
    assert not np.allclose(plain["c"], rows["c"], atol=1e-3)


def test_an_embedder_built_alone_warns_only_where_sequences_go_in_without_3di(saprot, capsys):
    """build_embedder says nothing of the 3Di strings: embed_sequences(structure=...) may give them
    to its embedder. The run that reads sequences without them says so, once (it warned at the
    build, then the rows were computed with the structure the warning said was missing)."""
    from protrans_cli.embed import EmbedOptions, build_embedder, embed_sequences

    options = EmbedOptions(model=str(saprot), device="cpu", threads=1)
    embedder = build_embedder(options)
    assert "structure-aware" not in capsys.readouterr().err
    rows = embed_sequences({"c": SEQS["c"]}, options, kind="per_residue", embedder=embedder,
                           structure={"c": THREE_DI["c"]})
    assert "structure-aware" not in capsys.readouterr().err
    np.testing.assert_allclose(rows["c"], _reference(saprot, _with_states(SEQS["c"], THREE_DI["c"])), atol=1e-5)
    plain = embed_sequences({"c": SEQS["c"]}, options, kind="per_residue", embedder=embedder)
    said = [line for line in capsys.readouterr().err.splitlines() if "structure-aware model (SaProt)" in line]
    assert len(said) == 1 and "without structure_tokens every residue is read with an unknown structure" in said[0]
    np.testing.assert_allclose(plain["c"], _reference(saprot, _sequence_only(SEQS["c"])), atol=1e-5)


@pytest.mark.parametrize("sequences, structure, says", [
    (SEQS, {"a": THREE_DI["a"]}, "no 3Di string for protein 'b'"),
    (list(SEQS.values()), [THREE_DI["a"]], "holds 1 3Di string(s) for 3 sequence(s)"),
    (list(SEQS.values()), THREE_DI, "a list of 3Di strings"),
    ({"c": SEQS["c"]}, {"c": "ppv"}, "the 3Di string has 3 letters for a sequence of 6 residues"),
    (["GSHMKT"], ["ppvvd1"], "item 0"),
], ids=["missing", "count", "dict-for-list", "length", "letter"])
def test_embed_sequences_structure_errors(saprot, sequences, structure, says):
    from protrans_cli.embed import EmbedOptions, embed_sequences
    from protrans_cli.errors import ProtransError

    with pytest.raises(ProtransError) as info:
        embed_sequences(sequences, EmbedOptions(model=str(saprot), device="cpu"), kind="per_protein",
                        structure=structure)
    assert says in str(info.value), str(info.value)
    assert "protrans-embed-" not in str(info.value)  # (no temporary path)


def test_library_scorer_takes_a_3di_string(saprot):
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer, all_singles, with_structure

    scorer = VariantScorer(load_model(str(saprot), device="cpu", masked_lm=True), progress=False)
    variants = all_singles(WT)[:25]
    got = scorer.score(WT, variants, structure=WT_STATES)
    lp, vocab, states = _site_log_probs_with_states(saprot, WT, WT_STATES)
    for (m,), value in zip(variants, got):
        s = states[m.position]
        assert value == pytest.approx(lp[m.position, vocab[m.mt + s]] - lp[m.position, vocab[m.wt + s]], abs=2e-5)
    pll = scorer.pseudo_log_likelihood([with_structure(WT, WT_STATES)])[0]
    assert pll == pytest.approx(sum(lp[i, vocab[r + s]] for i, (r, s) in enumerate(zip(WT, states))), abs=1e-4)


def test_a_complex_under_separate_reads_each_chain_with_its_own_states(tmp_path, run_cli, saprot):
    """--chains separate: a site of chain 2 is scored in chain 2 read alone with its 3Di states
    (the 3Di string of a complex may hold its ':' or not)."""
    import csv
    import io

    fasta = _fasta(tmp_path / "ab.fa", {"ab": "GSHMKT:" + WT})
    tokens = _fasta(tmp_path / "ab.3di.fa", {"ab": "ppvvdd" + WT_STATES})
    table = tmp_path / "v.csv"
    table.write_text("mutant\nK8A\nM4W\n")
    result = run_cli("variants", table, "--fasta", fasta, "--structure-tokens", tokens, "--chains", "separate",
                     "-m", saprot, "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    column = next(k for k in rows[0] if k.endswith("masked_marginals"))
    lp, vocab, states = _site_log_probs_with_states(saprot, WT, WT_STATES)
    assert float(rows[0][column]) == pytest.approx(lp[1, vocab["A" + states[1]]] - lp[1, vocab["K" + states[1]]],
                                                   abs=2e-5)
    lp, vocab, states = _site_log_probs_with_states(saprot, "GSHMKT", "ppvvdd")
    assert float(rows[1][column]) == pytest.approx(lp[3, vocab["W" + states[3]]] - lp[3, vocab["M" + states[3]]],
                                                   abs=2e-5)


def test_reuse_copies_a_protein_only_from_one_read_in_the_same_3di_states(tmp_path, run_cli, saprot):
    # two structures of one amino-acid sequence share a checksum, not their embeddings: --reuse
    # copied c's rows (states ppvvdd) for d (qqqqqq), and an id of the same states is still reused
    seq = SEQS["c"]
    tokens = _fasta(tmp_path / "x.3di.fa", {"c": "ppvvdd", "d": "qqqqqq", "e": "ppvvdd"})
    first = _fasta(tmp_path / "first.fa", {"c": seq})
    result = run_cli("embed", first, "-m", saprot, "-o", tmp_path / "old.h5", "--device", "cpu", "-j", "1",
                     "--structure-tokens", tokens)
    assert result.exit_code == 0, result.stderr
    again = _fasta(tmp_path / "again.fa", {"d": seq, "e": seq})
    result = run_cli("embed", again, "-m", saprot, "-o", tmp_path / "new.h5", "--device", "cpu", "-j", "1",
                     "--structure-tokens", tokens, "--reuse", tmp_path / "old.h5")
    assert result.exit_code == 0, result.stderr
    assert "1 copied from --reuse" in result.stderr, result.stderr
    rows, _ = _rows(tmp_path / "new.h5")
    np.testing.assert_allclose(rows["d"], _reference(saprot, _with_states(seq, "qqqqqq")), atol=1e-5)
    np.testing.assert_allclose(rows["e"], _reference(saprot, _with_states(seq, "ppvvdd")), atol=1e-5)


def test_a_vocabulary_lacking_pairs_is_refused_naming_the_model_and_the_pairs(tmp_path, run_cli, saprot):
    """A residue-and-3Di vocabulary without some pairs: the tokenizer fallback said "made 21 residue
    tokens of a sequence of 22 residues (...)" with the pairs' private-use characters as the
    sequence; now one line at load naming the model and the missing tokens."""
    import shutil

    from transformers import EsmTokenizer

    from protrans_cli.errors import ModelError
    from protrans_cli.models.saprot import SaProtFamily
    from protrans_cli.residues import pair_char

    holed = tmp_path / "holed"
    shutil.copytree(saprot, holed)
    vocab = (holed / "vocab.txt").read_text().split("\n")
    (holed / "vocab.txt").write_text("\n".join(f"<{t}>" if t in ("Mp", "Kp") else t for t in vocab))
    tokens = _fasta(tmp_path / "x.3di.fa", {k: "p" * len(v) for k, v in SEQS.items()})
    result, out = _embed(run_cli, tmp_path, holed, "--structure-tokens", tokens)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"{holed}: its vocabulary pairs residues with Foldseek 3Di states" in result.stderr, result.stderr
    assert "lacks 'Kp', 'Mp'" in result.stderr and not out.exists()
    # a tokenizer's miscount names the amino acids, never the private-use characters of the pairs
    tokenizer = EsmTokenizer.from_pretrained(str(holed))
    paired = "".join(pair_char(r, "p") for r in SEQS["a"])
    with pytest.raises(ModelError) as caught:
        SaProtFamily(tokenizer).encode_with_tokenizer(tokenizer, [paired])
    assert SEQS["a"][:20] in str(caught.value), str(caught.value)
    assert not any(0xE000 <= ord(c) <= 0xF8FF for c in str(caught.value))


@pytest.mark.parametrize("how", ["pipe", "stdin"])
def test_structure_tokens_from_a_pipe_or_stdin_is_refused_not_read_empty(tmp_path, run_cli, saprot, how):
    # (a pipe was read to its end for the file's digest, then parsed empty: "no FASTA records")
    if how == "pipe":
        fifo = tmp_path / "tokens.fifo"
        os.mkfifo(fifo)
        given = str(fifo)
    else:
        given = "-"
    result, out = _embed(run_cli, tmp_path, saprot, "--structure-tokens", given)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"--structure-tokens {given}: the 3Di strings are read from a regular file" \
        in result.stderr, result.stderr
    assert not out.exists()


@pytest.mark.parametrize("records, says", [
    ({**THREE_DI, "b": "DAVLCPPQ#-N1"}, "'1' at position 12 is not a 3Di letter"),
    ({"a": THREE_DI["a"], "c": THREE_DI["c"]}, "no 3Di string for this record"),
    ({**THREE_DI, "b2": "pp", "a ": THREE_DI["a"]}, "duplicate id"),
], ids=["letter", "missing", "duplicate"])
@pytest.mark.parametrize("entry", ["cli", "build_embedder"])
def test_embed_checks_the_3di_file_before_the_model_loads(tmp_path, run_cli, saprot, monkeypatch, records, says,
                                                         entry):
    from protrans_cli import models
    from protrans_cli.embed import EmbedOptions, build_embedder
    from protrans_cli.errors import InputError

    def never(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_model", never)
    tokens = tmp_path / "bad.3di.fa"
    tokens.write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))
    if entry == "cli":
        result, out = _embed(run_cli, tmp_path, saprot, "--structure-tokens", tokens)
        assert result.exit_code == 1, result.output
        assert len(result.stderr.strip().splitlines()) == 1 and says in result.stderr, result.stderr
        assert not out.exists()
    elif says != "no 3Di string for this record":  # (which ids are needed: the input's, not build_embedder's)
        with pytest.raises(InputError, match=says):
            build_embedder(EmbedOptions(model=str(saprot), device="cpu", structure_tokens=str(tokens)))


def _plain_esm(tmp_path):
    import shutil
    from pathlib import Path

    model = tmp_path / "esm"
    shutil.copytree(Path(__file__).parent / "data" / "esm_reference", model,
                    ignore=shutil.ignore_patterns("reference.safetensors", "input.fa", "*.md"))
    return model


def _no_weights(monkeypatch):
    """from_pretrained of any model refused: a check that needs no weights comes before them."""
    from transformers import PreTrainedModel

    def never(cls, *args, **kwargs):
        raise AssertionError(f"{cls.__name__}'s weights were read")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(never))


@pytest.mark.parametrize("command", ["embed", "variants", "perplexity"])
def test_structure_tokens_on_a_plain_esm_is_refused_before_its_weights(tmp_path, run_cli, monkeypatch, command):
    model = _plain_esm(tmp_path)
    _no_weights(monkeypatch)
    tokens = _fasta(tmp_path / "x.3di.fa", {"c": THREE_DI["c"]})
    fasta = _fasta(tmp_path / "x.fa", {"c": SEQS["c"]})
    args = {"embed": ["embed", fasta], "variants": ["variants", "--all-singles", "--fasta", fasta],
            "perplexity": ["perplexity", fasta]}[command]
    result = run_cli(*args, "--structure-tokens", tokens, "-m", model, "--device", "cpu", "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == (f"protrans: error: --structure-tokens: {model} is not a structure-aware model (its "
                                     "vocabulary has no residue-and-3Di tokens such as SaProt's 'M#', 'Md')"), \
        result.stderr


def test_variants_checks_every_model_before_scoring_any(tmp_path, run_cli, saprot, monkeypatch):
    from transformers import PreTrainedModel

    model = _plain_esm(tmp_path)
    loads = []
    real = PreTrainedModel.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        loads.append(cls.__name__)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(counted))
    tokens = _fasta(tmp_path / "x.3di.fa", {"c": THREE_DI["c"]})
    fasta = _fasta(tmp_path / "x.fa", {"c": SEQS["c"]})
    result = run_cli("variants", "--all-singles", "--fasta", fasta, "--structure-tokens", tokens, "-m", saprot,
                     "-m", model, "--device", "cpu", "-o", tmp_path / "out.tsv")
    assert result.exit_code == 2, result.output
    assert f"{model} is not a structure-aware model" in result.stderr, result.stderr
    assert "scored with" not in result.stderr and loads == [], (loads, result.stderr)
    assert not (tmp_path / "out.tsv").exists()


@pytest.mark.parametrize("command", ["embed", "variants", "perplexity", "contacts"])
def test_saprot_without_3di_strings_is_said_once_in_every_command(tmp_path, run_cli, saprot, command):
    fasta = _fasta(tmp_path / "x.fa", {"c": SEQS["c"], "a": SEQS["a"]})
    args = {"embed": ["embed", fasta], "variants": ["variants", "--all-singles", "--fasta", fasta],
            "perplexity": ["perplexity", fasta], "contacts": ["contacts", fasta]}[command]
    result = run_cli(*args, "-m", saprot, "--device", "cpu", "-o", tmp_path / "out")
    assert result.exit_code == 0, result.output
    said = [line for line in result.stderr.splitlines() if "is a structure-aware model (SaProt)" in line]
    assert len(said) == 1, result.stderr
    if command == "contacts":
        assert "this command takes no 3Di strings, so every residue is read with an unknown structure" in said[0]
    else:
        assert "without --structure-tokens every residue is read with an unknown structure ('M#')" in said[0]


def test_a_3di_string_given_to_the_scorer_is_checked_as_the_files_are():
    """with_structure (the scorer's Python entry) and the --structure-tokens reader share one check:
    the same message, the bad letter's position included."""
    from protrans_cli.errors import InputError
    from protrans_cli.variants import with_structure

    with pytest.raises(InputError, match=r"'1' at position 4 is not a 3Di letter"):
        with_structure("MKTA", "dv-1")
    assert with_structure("MKTA", "DV-?") == with_structure("MKTA", "dv##")
