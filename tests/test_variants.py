"""`protrans variants`: zero-shot variant scores against two independent references.

The references: fair-esm 2.0.0's own masked-LM log-probabilities (fair-esm's model code, each
residue masked alone in a batch of one, as its examples/variant-prediction/predict.py does) for
the tiny ESM-2 and ESM-1b of tests/data/*_reference (scripts/make_esm_reference.py
--add-variants), and, for every masked-LM family, a plain transformers forward pass of
AutoModelForMaskedLM over the protein tokenized as text, one masked copy at a time.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import save_tiny_models  # noqa: E402
from protrans_cli.variants import Mutation, all_singles, covering_window, parse_variant, window_start  # noqa: E402

DATA = Path(__file__).parent / "data"
REFERENCES = {"esm2": DATA / "esm_reference", "esm1b": DATA / "esm1b_reference"}
MASKED_FAMILIES = ("bert", "roberta", "albert", "electra", "esm")
SEQ = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAV"


def _reference(arch: str):
    from safetensors import safe_open

    with safe_open(str(REFERENCES[arch] / "reference.safetensors"), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith("variants/")}, f.metadata()


def _proteins(arch: str) -> dict[str, str]:
    lines = (REFERENCES[arch] / "input.fa").read_text().split()
    return {lines[i][1:]: lines[i + 1] for i in range(0, len(lines), 2)}


def _table(text: str, delimiter: str = ",") -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


def _expected(log_probs: np.ndarray, vocab: list[str], sequence: str, mutant: str) -> float:
    """A variant's masked marginal from a reference's (L, V) log-probabilities: the sum over its
    sites of log p(mutant) - log p(wild type) (predict.py's additive rule)."""
    col = {t: i for i, t in enumerate(vocab)}
    total = 0.0
    for word in mutant.split(":"):
        wt, pos, mt = word[0], int(word[1:-1]) - 1, word[-1]
        assert sequence[pos] == wt
        total += float(log_probs[pos, col[mt]]) - float(log_probs[pos, col[wt]])
    return total


def _log_odds(text: str, log_probs_at, token_id) -> float:
    """A variant's marginal from a reference: the sum over its sites of log p(mutant) - log
    p(wild type) in the site's log-probabilities (`log_probs_at(position)`)."""
    total = 0.0
    for m in parse_variant(text, SEQ):
        lp = log_probs_at(m.position)
        total += float(lp[token_id(m.mt)] - lp[token_id(m.wt)])
    return total


@pytest.mark.parametrize("arch", sorted(REFERENCES))
@pytest.mark.parametrize("scoring", ["masked-marginals", "wt-marginals"])
def test_every_single_substitution_equals_fair_esm(run_cli, arch, scoring):
    """--all-singles over two proteins (one with X, U, Z, O and B residues, scored as wild-type
    letters through ESM's own tokens) against fair-esm's log-probabilities, to 2e-5."""
    ref, meta = _reference(arch)
    vocab = meta["variants_vocab"].split()
    proteins = _proteins(arch)
    kind = "masked" if scoring == "masked-marginals" else "unmasked"
    for ident in ("mixed_40", "rare"):
        seq = proteins[ident]
        r = run_cli("variants", "--all-singles", "--sequence", seq, "-m", REFERENCES[arch], "--scoring", scoring)
        assert r.exit_code == 0, r.stderr
        rows = _table(r.stdout)
        column = f"{arch}_reference_{scoring.replace('-', '_')}".replace("esm2_", "esm_")
        assert len(rows) == sum(20 - (c in "ACDEFGHIKLMNPQRSTVWY") for c in seq)
        got = np.array([float(row[column]) for row in rows])
        want = np.array([_expected(ref[f"variants/{kind}/{ident}"], vocab, seq, row["mutant"]) for row in rows])
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
        assert {row["mutant"][:-1] for row in rows} == {f"{c}{i + 1}" for i, c in enumerate(seq)}


@pytest.mark.parametrize("arch", sorted(REFERENCES))
def test_pseudo_ppl_and_multi_site_variants_equal_fair_esm(run_cli, tmp_path, arch):
    ref, meta = _reference(arch)
    vocab = meta["variants_vocab"].split()
    col = {t: i for i, t in enumerate(vocab)}
    seq = _proteins(arch)["mixed_40"]
    double = meta["variants_double_mutant"]
    single = double.split(":")[0]
    table = tmp_path / "dms.csv"
    table.write_text(f"mutant,score\n{double},1\n{single},2\nWT,3\n")
    r = run_cli("variants", table, "--sequence", seq, "-m", REFERENCES[arch], "--scoring", "pseudo-ppl",
                "--scoring", "masked-marginals", "--scoring", "wt-marginals")
    assert r.exit_code == 0, r.stderr
    rows = _table(r.stdout)
    prefix = f"{REFERENCES[arch].name}_"
    mutant = list(seq)
    for word in double.split(":"):
        mutant[int(word[1:-1]) - 1] = word[-1]
    pll = lambda lp, s: sum(float(lp[i, col[c]]) for i, c in enumerate(s))  # noqa: E731
    want = pll(ref["variants/masked/mixed_40_double"], mutant) - pll(ref["variants/masked/mixed_40"], seq)
    assert float(rows[0][prefix + "pseudo_ppl"]) == pytest.approx(want, abs=2e-4)
    assert float(rows[0][prefix + "masked_marginals"]) == pytest.approx(
        _expected(ref["variants/masked/mixed_40"], vocab, seq, double), abs=2e-5)
    assert float(rows[0][prefix + "wt_marginals"]) == pytest.approx(
        _expected(ref["variants/unmasked/mixed_40"], vocab, seq, double), abs=2e-5)
    # additive: the double's marginal is the sum of its sites'
    assert float(rows[2][prefix + "masked_marginals"]) == 0.0 and float(rows[2][prefix + "pseudo_ppl"]) == 0.0


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny random model directory per family, as `protrans train` writes them."""
    return save_tiny_models(tmp_path_factory)


def _plain_log_probs(model_dir: Path, family_name: str, sequence: str, position: int | None) -> np.ndarray:
    """Plain transformers: the tokenizer called on the text, the residue's token found by its id,
    replaced by the mask token (unless None), log-softmax of AutoModelForMaskedLM's logits there
    (position None: every residue's row of the unmasked pass)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    if family_name == "electra":
        model_dir = model_dir / "generator"
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForMaskedLM.from_pretrained(str(model_dir), use_kernels=False).eval()
    letters = sequence.translate(str.maketrans("UZOB", "XXXX")) if family_name != "esm" else sequence
    text = letters if family_name == "esm" else " ".join(letters)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    residue_ids = tokenizer.convert_tokens_to_ids(list(letters))
    start = next(i for i in range(ids.shape[1]) if ids[0, i:i + len(letters)].tolist() == residue_ids)
    with torch.no_grad():
        if position is None:
            logits = model(input_ids=ids).logits[0, start:start + len(letters)]
        else:
            ids[0, start + position] = tokenizer.mask_token_id
            logits = model(input_ids=ids).logits[0, start + position]
    return logits.log_softmax(-1).numpy(), tokenizer


@pytest.mark.parametrize("family_name", MASKED_FAMILIES)
def test_every_masked_family_equals_plain_transformers(run_cli, tmp_path, tiny_models, family_name):
    """Masked and wild-type marginals of each family with a masked-LM head (ELECTRA: the run's
    generator) against AutoModelForMaskedLM one masked copy at a time, a multi-site variant and
    a batch split to one copy per pass (--max-tokens 1) included."""
    variants = ["K2A", "T3W:Q9E", "p.Ser13Pro", "V15V", "WT"]
    table = tmp_path / "v.csv"
    table.write_text("mutant\n" + "\n".join(variants) + "\n")
    model = tiny_models[family_name]
    out = {}
    for tokens in ("4096", "1"):
        r = run_cli("variants", table, "--sequence", SEQ, "-m", model, "--scoring", "masked-marginals",
                    "--scoring", "wt-marginals", "--max-tokens", tokens)
        assert r.exit_code == 0, r.stderr
        out[tokens] = _table(r.stdout)
    label = model.name
    for a, b in zip(out["4096"], out["1"]):
        for key in a:
            if key != "mutant":
                assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-5)
    unmasked, tokenizer = _plain_log_probs(model, family_name, SEQ, None)
    for row, variant in zip(out["4096"], variants):
        masked_want = wt_want = 0.0
        for m in parse_variant(variant, SEQ):
            lp, _ = _plain_log_probs(model, family_name, SEQ, m.position)
            mt, wt = tokenizer.convert_tokens_to_ids([m.mt, m.wt])
            masked_want += float(lp[mt] - lp[wt])
            wt_want += float(unmasked[m.position, mt] - unmasked[m.position, wt])
        assert float(row[f"{label}_masked_marginals"]) == pytest.approx(masked_want, abs=2e-5)
        assert float(row[f"{label}_wt_marginals"]) == pytest.approx(wt_want, abs=2e-5)


def test_long_proteins_are_refused_or_read_in_windows_centred_on_each_site(run_cli, tmp_path, tiny_models):
    """--max-length 10 on a 55-residue protein: an error naming the way out, no output written;
    with --long-policy window, each masked site read in the 10 residues centred on it."""
    model = tiny_models["esm"]
    out = tmp_path / "o.csv"
    r = run_cli("variants", "--all-singles", "--sequence", SEQ, "-m", model, "--max-length", "10", "-o", out)
    assert r.exit_code == 1 and "--long-policy window" in r.stderr and "55 residues" in r.stderr
    assert not out.exists()
    # a --fasta record: the file and record named, as embed names them (the error named neither)
    fasta = tmp_path / "wt.fa"
    fasta.write_text(f">p1\n{SEQ}\n")
    r = run_cli("variants", "--all-singles", "--fasta", fasta, "-m", model, "--max-length", "10", "-o", out)
    assert r.exit_code == 1 and r.stderr.startswith(
        f"protrans: error: {fasta}, record 'p1': the wild type has 55 residues, more than --max-length 10"), r.stderr
    assert not out.exists()
    r = run_cli("variants", "--all-singles", "--sequence", SEQ, "-m", model, "--max-length", "10", "--long", "window",
                "-o", out, "--scoring", "masked-marginals", "--scoring", "wt-marginals")
    assert r.exit_code == 0, r.stderr
    rows = {row["mutant"]: row for row in _table(out.read_text())}
    for position in (0, 3, 27, 50, 54):
        start = window_start(position, len(SEQ), 10)
        assert 0 <= start <= position < start + 10 and start == min(max(position - 5, 0), 45)
        window = SEQ[start:start + 10]
        lp, tokenizer = _plain_log_probs(model, "esm", window, position - start)
        wt = SEQ[position]
        for aa in "ACW":
            if aa == wt:
                continue
            want = float(lp[tokenizer.convert_tokens_to_ids(aa)] - lp[tokenizer.convert_tokens_to_ids(wt)])
            assert float(rows[f"{wt}{position + 1}{aa}"][f"{model.name}_masked_marginals"]) == pytest.approx(
                want, abs=2e-5)
        # the unmasked pass: the window of stride 5 in which the site is farthest from an edge
        start = covering_window(position, len(SEQ), 10)
        lp, _ = _plain_log_probs(model, "esm", SEQ[start:start + 10], None)
        aa = "A" if wt != "A" else "C"
        want = float(lp[position - start, tokenizer.convert_tokens_to_ids(aa)]
                     - lp[position - start, tokenizer.convert_tokens_to_ids(wt)])
        assert float(rows[f"{wt}{position + 1}{aa}"][f"{model.name}_wt_marginals"]) == pytest.approx(want, abs=2e-5)
    # (a tie goes to the earlier window)
    assert [covering_window(p, 55, 10) for p in (0, 7, 8, 12, 13, 54)] == [0, 0, 5, 5, 10, 45]


def test_mutation_notations():
    seq = "MKTAYIAK"
    assert parse_variant("K2A", seq) == (Mutation(1, "K", "A"),)
    assert parse_variant("k2a", seq) == (Mutation(1, "K", "A"),)
    both = (Mutation(1, "K", "A"), Mutation(3, "A", "W"))
    for text in ("K2A:A4W", "K2A;A4W", "K2A,A4W", "K2A+A4W", "p.[Lys2Ala;Ala4Trp]", "p.Lys2Ala:p.Ala4Trp"):
        assert parse_variant(text, seq) == both, text
    assert parse_variant("p.(Lys2Ala)", seq) == (Mutation(1, "K", "A"),)
    assert parse_variant("K2*", seq) == (Mutation(1, "K", "*"),) == parse_variant("p.Lys2Ter", seq)
    for same in ("WT", "_wt", "p.=", "_sy", "K2K", "p.Lys2="):
        assert parse_variant(same, seq) == (), same
    # the wild type read as the scorer reads it (upper-case, gaps dropped): positions of its residues
    assert parse_variant("K2A", "mktayiak") == (Mutation(1, "K", "A"),)
    assert parse_variant("T3A", "MK-TAY.IAK") == (Mutation(2, "T", "A"),)
    assert parse_variant("M0A", seq, offset=0) == (Mutation(0, "M", "A"),)
    assert parse_variant("K25A", seq, offset=24) == (Mutation(1, "K", "A"),)
    errors = {"A2K": "residue 2 of the wild type is K, not A", "K9A": "outside the sequence",
              "K2del": "insertion, deletion", "K2_A4del": "insertion, deletion", "K2J": "not one of the 20",
              "K2A:K2C": "mutated twice", "p.Foo2Ala": "three-letter", "hello": "not a substitution",
              "::": "names no substitution", "": "names no variant", "NA": "names no variant"}
    for text, message in errors.items():
        with pytest.raises(ValueError, match=message):
            parse_variant(text, seq)
    # a ProtransError too, as every library error (the README's rule): it was a bare ValueError
    from protrans_cli.errors import InputError, ProtransError

    with pytest.raises(ProtransError) as raised:
        parse_variant("A2K", seq)
    assert isinstance(raised.value, InputError) and isinstance(raised.value, ValueError)
    assert str(raised.value).startswith("A2K: residue 2 of the wild type is K, not A")
    assert len(all_singles(seq)) == 19 * len(seq)


def test_the_table_comes_back_whole_with_its_score_columns(run_cli, tmp_path, tiny_models):
    """Quoted fields, TSV in and out, stdin, gzip, stops left empty with a warning, Spearman's rho
    against a measured column, and the table's rows in their order."""
    model = tiny_models["esm"]
    text = 'mutant,DMS_score,note\nK2A,0.5,"a, quoted"\nT3W:Q9E,-1.0,x\nK2*,-2,stop\nWT,0.0,\nS13P,1.5,y\n'
    r = run_cli("variants", "-", "--sequence", SEQ, "-m", model, "--truth-column", "DMS_score", "--column", "llr",
                input=text.encode())
    assert r.exit_code == 0, r.stderr
    rows = _table(r.stdout)
    assert [row["mutant"] for row in rows] == ["K2A", "T3W:Q9E", "K2*", "WT", "S13P"]
    assert rows[0]["note"] == "a, quoted" and rows[2]["llr"] == "" and rows[3]["llr"] == "0.000000"
    assert "1 variant with a stop" in r.stderr
    scores = np.array([float(rows[i]["llr"]) for i in (0, 1, 3, 4)])
    truth = np.array([0.5, -1.0, 0.0, 1.5])
    rho = np.corrcoef(np.argsort(np.argsort(scores)), np.argsort(np.argsort(truth)))[0, 1]
    assert f"Spearman rho llr vs DMS_score: {rho:.4f} over 4 variants" in r.stderr
    gz = tmp_path / "v.tsv.gz"
    gz.write_bytes(gzip.compress(text.replace(",", "\t").replace('"a\t quoted"', "q").encode()))
    r = run_cli("variants", gz, "--sequence", SEQ, "-m", model, "--column", "llr")
    assert r.exit_code == 0, r.stderr
    tsv = _table(r.stdout, "\t")
    assert [row["llr"] for row in tsv] == [row["llr"] for row in rows]


def test_a_table_from_a_pipe_is_read_whole_and_a_fasta_there_is_still_told(run_cli, tmp_path, tiny_models):
    """`variants <(zcat dms.csv.gz) ...` (a pipe, /dev/fd/N, read once): the check for a FASTA given
    as the table read its first bytes, and the table was then "/dev/fd/63: is empty" (exit 1; a
    named pipe, opened again, waited for ever). A FASTA given so is still told as one, once read."""
    import os

    model, text = tiny_models["esm"], "mutant,DMS_score\nK2A,0.5\nT3W:Q9E,-1.0\n"
    table = tmp_path / "v.csv"
    table.write_text(text)
    assert run_cli("variants", table, "--sequence", SEQ, "-m", model, "-o", tmp_path / "file.csv").exit_code == 0
    for name, data in (("pipe.csv", text), ("pipe.fa", f">wt\n{SEQ}\n")):
        read_end, write_end = os.pipe()
        os.write(write_end, data.encode())
        os.close(write_end)
        try:
            r = run_cli("variants", f"/dev/fd/{read_end}", "--sequence", SEQ, "-m", model, "-o", tmp_path / name)
        finally:
            os.close(read_end)
        if name == "pipe.csv":
            assert r.exit_code == 0, r.stderr
            assert (tmp_path / name).read_text() == (tmp_path / "file.csv").read_text()
        else:
            assert r.exit_code == 1 and r.stderr == (f"protrans: error: /dev/fd/{read_end}: is a FASTA file, not a "
                                                     "variants table (a CSV or TSV of substitutions): a wild type "
                                                     "goes to --fasta\n"), r.stderr
            assert not (tmp_path / name).exists()


def test_bad_tables_are_refused_before_any_model_and_leave_the_output_alone(run_cli, tmp_path, tiny_models):
    model = tiny_models["esm"]
    out = tmp_path / "scored.csv"
    out.write_text("previous\n")
    cases = {"mutant\nK2A\nA3W\n": ("v.csv:3: A3W: residue 3 of the wild type is T, not A", 1),
             "variant\nK2A\n": ("has no 'mutant' column", 1),
             "mutant\n": ("holds no variants", 1),
             "mutant,x\nK2A\n": ("has 1 field, the header has 2", 1),
             # (only delimiters, as a spreadsheet saves an empty sheet, or a lone quote: a
             # StopIteration's traceback)
             ",,,\n,,,\n": ("v.csv: is empty: no line names a column", 1),
             '"\n': ("v.csv: is empty: no line names a column", 1)}
    for text, (message, code) in cases.items():
        (tmp_path / "v.csv").write_text(text)
        r = run_cli("variants", tmp_path / "v.csv", "--sequence", SEQ, "-m", tmp_path / "no_such_model", "-o", out)
        assert r.exit_code == code and message in r.stderr, r.stderr
        assert out.read_text() == "previous\n"
    (tmp_path / "v.csv").write_text("mutant,llr\nK2A,1\n")
    r = run_cli("variants", tmp_path / "v.csv", "--sequence", SEQ, "-m", model, "--column", "llr", "-o", out)
    assert r.exit_code == 2 and "already has a column 'llr'" in r.stderr
    r = run_cli("variants", tmp_path / "v.csv", "-m", model)
    assert r.exit_code == 2 and "--sequence SEQ or --fasta FILE" in r.stderr
    r = run_cli("variants", "--sequence", SEQ, "-m", model)
    assert r.exit_code == 2 and "--all-singles" in r.stderr
    fasta = tmp_path / "two.fa"
    fasta.write_text(f">a\n{SEQ}\n>b\n{SEQ[:20]}\n")
    r = run_cli("variants", tmp_path / "v.csv", "--fasta", fasta, "-m", model, "--column", "s")
    assert r.exit_code == 2 and "holds 2 sequences" in r.stderr and "--id" in r.stderr
    r = run_cli("variants", tmp_path / "v.csv", "--fasta", fasta, "--id", "a", "-m", model, "--column", "s",
                "-o", out)
    assert r.exit_code == 0, r.stderr
    assert float(_table(out.read_text())[0]["s"]) != 0
    r = run_cli("variants", tmp_path / "v.csv", "--fasta", fasta, "-m", model, "-o", fasta)
    assert r.exit_code == 2 and "also an input" in r.stderr
    # a missing output folder: refused before any model is loaded (it was found after the scoring)
    r = run_cli("variants", tmp_path / "v.csv", "--sequence", SEQ, "-m", tmp_path / "no_such_model", "-o",
                tmp_path / "no_dir" / "o.csv")
    assert r.exit_code == 2 and "output directory does not exist" in r.stderr


def test_wild_type_and_option_mistakes_are_refused_in_one_line_before_any_model(run_cli, tmp_path):
    """A wild type that is no protein, an --id the FASTA lacks, a missing --truth-column, a model
    or a model name twice: each a one-line error before any model is loaded (-m names none here)."""
    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\n")
    fasta = tmp_path / "wt.fa"
    fasta.write_text(f">a\n{SEQ}\n")
    (tmp_path / "bad.fa").write_text(">b\nMK1TAY\n")
    (tmp_path / "empty.csv").write_text("\n\n")
    for sub in ("x", "y"):
        (tmp_path / sub / "esm").mkdir(parents=True)
    nothing = tmp_path / "no_such_model"
    cases = [
        # (an option's value: a usage error; the same in a --fasta record, bad input)
        ((table, "--sequence", "MKTA1Y", "-m", nothing), 2, "the wild-type sequence: invalid character '1' at residue 5"),
        ((table, "--fasta", fasta, "--id", "zz", "-m", nothing), 1, "wt.fa: holds no record 'zz'"),
        ((table, "--fasta", tmp_path / "bad.fa", "-m", nothing), 1,
         "bad.fa:1, record 'b': invalid character '1' at residue 3"),
        ((table, "--sequence", SEQ, "--id", "a", "-m", nothing), 2, "--id picks a record of --fasta"),
        ((table, "--sequence", SEQ, "--truth-column", "DMS", "-m", nothing), 1,
         "v.csv: has no 'DMS' column for --truth-column (columns: mutant)"),
        ((tmp_path / "empty.csv", "--sequence", SEQ, "-m", nothing), 1, "empty.csv: is empty"),
        ((table, "--sequence", SEQ, "-m", nothing, "-m", nothing), 2, "a model or a scoring is given twice"),
        ((table, "--sequence", SEQ, "-m", tmp_path / "x" / "esm", "-m", tmp_path / "y" / "esm"), 2,
         "two -m models have the same name"),
        ((table, "--sequence", SEQ, "-m", nothing, "-m", tmp_path / "x" / "esm", "--revision", "main"), 2,
         "--revision applies to one model"),
        (("--all-singles", "--sequence", SEQ, "-m", nothing, "--truth-column", "DMS"), 2,
         "--all-singles has none"),
        (("--all-singles", "--fasta", fasta, "-m", nothing, "--id-column", "id"), 2, "--all-singles has none"),
        (("--all-singles", "--sequence", SEQ, "-m", nothing, "--mutation-column", "variant"), 2,
         "--mutation-column variant reads the variants table; --all-singles has none"),
        # (the default's value, given: it was taken without a word)
        (("--all-singles", "--sequence", SEQ, "-m", nothing, "--mutation-column", "mutant"), 2,
         "--mutation-column mutant reads the variants table; --all-singles has none"),
        ((table, "--sequence", SEQ, "-m", nothing, "--device", "gpu"), 2, "--device gpu: use auto, cpu, cuda"),
        # the wild type's FASTA given as the table: was "has no 'mutant' column (columns: >a)", and
        # with --all-singles "give a variants table ... or --all-singles, one of them", both given
        # (exit 1, bad input, as a FASTA given as embeddings to knn, fit or export: it was exit 2)
        ((fasta, "--fasta", fasta, "-m", nothing), 1, f"{fasta}: is a FASTA file, not a variants table (a CSV or "
         "TSV of substitutions): a wild type goes to --fasta"),
        ((fasta, "--all-singles", "-m", nothing), 1, f"{fasta}: is a FASTA file, not a variants table"),
    ]
    for args, code, message in cases:
        r = run_cli("variants", *args)
        assert r.exit_code == code and message in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
        assert "cannot load model" not in r.stderr


def test_a_plot_named_by_the_file_stdout_goes_to_is_refused_beside_the_table_on_stdout(tmp_path):
    """`variants --all-singles ... --plot v.png > v.png`: the heatmap was renamed over the file
    the table had been written to, exit 0, the table lost."""
    import subprocess
    import sys

    with open(tmp_path / "v.png", "wb") as stdout:
        done = subprocess.run([sys.executable, "-m", "protrans_cli", "variants", "--all-singles", "--sequence", "MKT",
                               "-m", str(REFERENCES["esm2"]), "--plot", str(tmp_path / "v.png")],
                              stdout=stdout, stderr=subprocess.PIPE, text=True)
    assert done.returncode == 2 and f"--plot {tmp_path / 'v.png'} is where stdout goes" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and (tmp_path / "v.png").read_bytes() == b""


def test_an_output_partial_folder_of_something_else_is_refused_and_left_alone(run_cli, tmp_path):
    """-o o.csv beside an o.csv.partial/ that no variants run made (no marker): refused, with or
    without --resume, before any model; the folder and what it holds are not touched."""
    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\n")
    out = tmp_path / "o.csv"
    foreign = tmp_path / "o.csv.partial"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    for extra in ((), ("--resume",)):
        r = run_cli("variants", table, "--sequence", SEQ, "-m", tmp_path / "no_such_model", "-o", out, *extra)
        assert r.exit_code == 2 and "o.csv.partial exists and is not the work of a protrans variants run" in r.stderr
        assert [p.name for p in foreign.iterdir()] == ["notes.txt"] and not out.exists()


def test_a_link_to_nothing_called_output_partial_is_refused_before_any_model(run_cli, tmp_path):
    """-o o.csv beside an o.csv.partial that is a link to nothing: the model scored the first
    unit, then "cannot create o.csv.partial: File exists". Refused before any model now, with or
    without --resume, as a folder no variants run made is; the link is left as it is."""
    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\n")
    out = tmp_path / "o.csv"
    link = tmp_path / "o.csv.partial"
    link.symlink_to(tmp_path / "nowhere")
    for extra in ((), ("--resume",)):
        r = run_cli("variants", table, "--sequence", SEQ, "-m", tmp_path / "no_such_model", "-o", out, *extra)
        assert r.exit_code == 2 and r.stderr == (f"protrans: error: {link} is a link to {tmp_path / 'nowhere'}, which "
                                                 "does not exist, and is not the work of a protrans variants run: move "
                                                 "it away, or choose another -o\n"), r.stderr
        assert link.is_symlink() and not out.exists()


@pytest.mark.parametrize("kind, words", [("fifo", "a named pipe"), ("folder", "a directory")])
def test_a_fifo_or_folder_named_like_a_unit_in_output_partial_is_refused_before_any_model(run_cli, tmp_path,
                                                                                         tiny_models, monkeypatch,
                                                                                         kind, words):
    """A named pipe under a unit's name in o.csv.partial/ (a sweep's leftover) hung `variants
    --resume` for ever (np.load waited for its writer); a folder there was counted as a unit kept,
    then "is a directory, expected a file" once the model had scored the unit again. Refused in
    one line before any model now, and left as it is."""
    import os
    import subprocess
    import sys

    import protrans_cli.variants as variants

    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\n")
    out = tmp_path / "o.csv"
    flags = [table, "--sequence", SEQ[:12], "-m", tiny_models["esm"], "-o", out]
    monkeypatch.setattr(variants.UnitStore, "remove", lambda self: None)  # (its units kept, as a stop keeps them)
    assert run_cli("variants", *flags).exit_code == 0
    out.unlink()
    [unit] = (tmp_path / "o.csv.partial").glob("*.npy")
    unit.unlink()
    os.mkfifo(unit) if kind == "fifo" else unit.mkdir()
    # (a process of its own, with a timeout: a hang fails the test rather than blocking it)
    done = subprocess.run([sys.executable, "-m", "protrans_cli", "variants", *map(str, flags), "--resume"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert done.returncode == 1 and done.stderr == (
        f"protrans: error: {unit}: is {words}, not a regular file: a run keeps a unit of its work under this name, "
        f"in o.csv.partial (move it away, or delete {tmp_path / 'o.csv.partial'} to start afresh)\n"), done.stderr
    assert not out.exists() and os.path.lexists(unit) and (unit.is_fifo() if kind == "fifo" else unit.is_dir())


def test_a_max_length_beyond_the_position_table_and_a_single_pass_out_of_memory(run_cli, tmp_path, tiny_models):
    """--max-length over what a model's learned positions hold is refused naming the limit; an out
    of memory on a pass of one protein (nothing left to halve) says the way out, not a traceback."""
    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    loaded = load_model(tiny_models["bert"], masked_lm=True)  # (learned absolute positions)
    table_size = VariantScorer(loaded, progress=False).model_limit
    assert table_size
    r = run_cli("variants", "--all-singles", "--sequence", SEQ[:8], "-m", tiny_models["bert"], "--max-length",
                table_size + 1)
    assert r.exit_code == 2 and f"--max-length {table_size + 1} is more than" in r.stderr
    assert f"({table_size} residues, its learned positions)" in r.stderr
    from protrans_cli.errors import UsageError  # (from Python: the keyword it was given)

    with pytest.raises(UsageError, match=rf"^max_length={table_size + 1} is more than .*\({table_size} residues"):
        VariantScorer(loaded, progress=False, max_length=table_size + 1)
    assert VariantScorer(loaded, progress=False, max_length=table_size).max_length == table_size  # (all of them)
    scorer = VariantScorer(loaded, progress=False, max_tokens=1)

    def no_memory(**inputs):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    scorer.model = no_memory
    with pytest.raises(RuntimeFailure, match="out of memory scoring one sequence of 10 tokens .*--long-policy window"):
        scorer.score(SEQ[:8], all_singles(SEQ[:8]))



def test_all_singles_reads_the_wild_type_as_the_scorer_does(tiny_models):
    """docs/variants.md's scorer.score(wt, all_singles(wt)): all_singles took the letters as given,
    so a lower-case wild type, one with a gap or a final stop gave "m1A", "-4A" or "*9A", which
    score() refused (it reads wt upper-cased, without gaps or the stop, as parse_variant does)."""
    from protrans_cli.errors import UsageError
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    wt = SEQ[:8]
    scorer = VariantScorer(load_model(tiny_models["esm"], masked_lm=True), progress=False)
    plain = scorer.score(wt, all_singles(wt), "wt-marginals")
    for given in (wt.lower(), wt + "*", wt[:3] + "-" + wt[3:]):
        assert all_singles(given) == all_singles(wt)
        np.testing.assert_array_equal(scorer.score(given, all_singles(given), "wt-marginals"), plain)
    for value in (None, [wt]):  # (a TypeError; a list's one "letter" the whole sequence)
        with pytest.raises(UsageError, match="a sequence is a str or bytes"):
            all_singles(value)

def test_the_scorer_refuses_a_model_loaded_without_its_head_and_sites_outside_the_protein(tiny_models):
    from protrans_cli.errors import InputError, ModelError, UsageError
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    with pytest.raises(ModelError, match="loaded without its masked-LM head .*masked_lm=True"):
        VariantScorer(load_model(tiny_models["esm"]), progress=False)
    scorer = VariantScorer(load_model(tiny_models["esm"], masked_lm=True), progress=False)
    with pytest.raises(UsageError, match="site 8 is outside sequence 0 \\(8 residues\\)"):
        scorer.site_log_probs([SEQ[:8]], [(0, 8)])
    # a sequence index beyond those given was an IndexError traceback (and -1 read the last one);
    # one sequence not in a list, a sequence of each letter
    for site in ((1, 2), (-1, 2)):
        with pytest.raises(UsageError, match=f"site \\({site[0]}, 2\\) names sequence {site[0]}, but 1 sequence"):
            scorer.site_log_probs([SEQ[:8]], [site])
    with pytest.raises(UsageError, match="site_log_probs takes a list of sequences: put one in a list"):
        scorer.site_log_probs(SEQ[:8], [(0, 2)])
    # a gap, a final '*' or a letter that is no residue was encoded as a token of its own: every
    # site's log-probabilities shifted or changed without a word (lower case reads as upper case)
    for given in (SEQ[:3] + "-" + SEQ[3:8], SEQ[:8] + "*"):
        with pytest.raises(UsageError, match="sequence 0 holds gaps, whitespace or a final '\\*'"):
            scorer.site_log_probs([given], [(0, 2)])
    with pytest.raises(InputError, match="^sequence 1: invalid character '1' at residue 3$"):
        scorer.site_log_probs([SEQ[:8], "MK1T"], [(0, 2)])
    np.testing.assert_array_equal(scorer.site_log_probs([SEQ[:8].lower()], [(0, 2)]),
                                  scorer.site_log_probs([SEQ[:8]], [(0, 2)]))
    with pytest.raises(UsageError, match="^strategy must be one of masked-marginals, wt-marginals, pseudo-ppl, "
                                         "log-likelihood, got 'masked'$"):
        scorer.score(SEQ[:8], [], "masked")
    for bad, said in (({"long_policy": "crop"}, "^long_policy must be one of error, window, got 'crop'$"),
                      ({"max_length": 0}, "^max_length must be at least 1, got 0$"),
                      ({"max_tokens": 0}, "^max_tokens must be at least 1, got 0$"),
                      # (text: TypeErrors from inside, "'<' not supported between instances of 'str' and 'int'")
                      ({"max_tokens": "100"}, "^max_tokens must be a whole number or None, got str '100'$"),
                      ({"max_length": 512.0}, "^max_length must be a whole number or None, got float")):
        with pytest.raises(UsageError, match=said):
            VariantScorer(scorer.loaded, progress=False, **bad)
    # max_length is the longest protein read whole: one of exactly that many residues is scored
    exact = VariantScorer(scorer.loaded, progress=False, max_length=8)
    exact.check_length(SEQ[:8])
    assert exact.score(SEQ[:8], [parse_variant("K2A", SEQ)]).shape == (1,)
    with pytest.raises(InputError, match="has 9 residues, more than max_length=8 .*; long_policy='window' scores"):
        exact.check_length(SEQ[:9])
    # a model's name for the loaded model was "'str' object has no attribute 'model'"; an offset of
    # text "unsupported operand type(s) for -: 'int' and 'str'"
    with pytest.raises(UsageError, match="^VariantScorer takes a loaded model, load_model\\(name, masked_lm=True\\), got str"):
        VariantScorer(str(tiny_models["esm"]))
    with pytest.raises(UsageError, match="^offset is the whole number of the sequence's first residue, got str '1'"):
        parse_variant("K2A", SEQ, offset="1")
    assert parse_variant("K25A", SEQ, offset=np.int64(24)) == parse_variant("K2A", SEQ)


def test_onehot_is_refused_as_no_language_model(run_cli, tmp_path):
    """-m onehot (embed's encoding) was looked for on the hub, and the error said "hf download onehot"."""
    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\n")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", "onehot")
    assert r.exit_code == 2 and "one-hot encoding, not a language model" in r.stderr and "hf download" not in r.stderr


def test_a_truth_column_without_numbers_is_refused_before_any_model(run_cli, tmp_path):
    """A --truth-column of text (or of decimal commas) printed "rho nan over 0 variants" after the
    whole scoring, exit 0."""
    table = tmp_path / "v.csv"
    table.write_text("mutant,score,note\nK2A,\"0,5\",a\nT3W,NA,b\n")
    for column, shown in (("note", "'a', 'b'"), ("score", "'0,5', 'NA'")):
        r = run_cli("variants", table, "--sequence", SEQ, "-m", tmp_path / "no_such_model", "--truth-column", column)
        assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.stderr
        assert f"v.csv: its --truth-column '{column}' holds no numbers ({shown})" in r.stderr


def test_a_truth_column_with_some_unmeasured_variants_is_read(tmp_path):
    """A DMS table leaves some variants unmeasured (NA, an empty cell): its --truth-column is read
    while any row holds a number, those rows kept (scored, out of Spearman's rho)."""
    from protrans_cli.variants import VariantOptions, read_variant_table

    table = tmp_path / "v.csv"
    table.write_text("mutant,DMS_score\nK2A,0.5\nT3W,NA\nQ9E,\nS13P,-1.25\n")
    read = read_variant_table(table, [("sequence", SEQ)], VariantOptions(truth_column="DMS_score"))
    assert [row[0] for row in read.rows] == ["K2A", "T3W", "Q9E", "S13P"]
    assert read.variants[1] == (Mutation(2, "T", "W"),)


def test_models_without_a_masked_lm_head_are_refused(run_cli, tmp_path, tiny_models):
    from protrans_cli.models import FAMILIES

    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\n")
    # an ESM encoder saved without its head (what `save_pretrained` of EsmModel writes)
    from transformers import EsmModel

    family = FAMILIES["esm"]
    encoder = EsmModel.from_pretrained(str(tiny_models["esm"]), add_pooling_layer=False, use_kernels=False)
    encoder.save_pretrained(tmp_path / "encoder")
    family.build_tokenizer().save_pretrained(tmp_path / "encoder")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", tmp_path / "encoder")
    assert r.exit_code == 1 and "masked-LM head is not in the checkpoint" in r.stderr
    # an ELECTRA discriminator alone (no generator folder)
    from transformers import ElectraForPreTraining

    disc = ElectraForPreTraining.from_pretrained(str(tiny_models["electra"]), use_kernels=False)
    disc.save_pretrained(tmp_path / "disc")
    FAMILIES["electra"].build_tokenizer().save_pretrained(tmp_path / "disc")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", tmp_path / "disc")
    assert r.exit_code == 1 and "ELECTRA discriminator" in r.stderr and "generator" in r.stderr


def test_several_models_give_a_column_each_and_their_mean(run_cli, tmp_path, tiny_models):
    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\nT3W:Q9E\n")
    # (two scorings: each ensemble column is the mean of its own scoring's columns alone)
    r = run_cli("variants", table, "--sequence", SEQ, "-m", tiny_models["esm"], "-m", tiny_models["bert"],
                "--scoring", "masked-marginals", "--scoring", "wt-marginals")
    assert r.exit_code == 0, r.stderr
    rows = _table(r.stdout)
    for scoring in ("masked_marginals", "wt_marginals"):
        a, b = (f"{tiny_models[f].name}_{scoring}" for f in ("esm", "bert"))
        for row in rows:
            assert float(row[f"ensemble_{scoring}"]) == pytest.approx((float(row[a]) + float(row[b])) / 2, abs=2e-6)
    r = run_cli("variants", table, "--sequence", SEQ, "-m", tiny_models["esm"], "-m", tiny_models["bert"],
                "--column", "x")
    assert r.exit_code == 2 and "--column" in r.stderr


def test_the_ensemble_column_is_the_mean_of_every_models_column():
    """With several -m, ensemble_SCORING is the mean of that scoring's columns over all the models
    (three here: a median of two is their mean too), NaN where any model gave none."""
    from protrans_cli.variants import VariantOptions, _written

    options = VariantOptions(models=("a", "b", "c"), strategies=("masked-marginals",))
    columns = [(f"{m}_masked_marginals", m, "masked-marginals") for m in options.models]
    results = {"a_masked_marginals": np.array([0.0, 1.0, np.nan]), "b_masked_marginals": np.array([3.0, 2.0, 1.0]),
               "c_masked_marginals": np.array([9.0, 6.0, 2.0])}
    written = dict(_written(columns, ["ensemble_masked_marginals"], results, options))
    np.testing.assert_allclose(written["ensemble_masked_marginals"], [4.0, 3.0, np.nan])
    assert list(written)[:3] == [c for c, _, _ in columns]


@pytest.mark.gpu
def test_on_a_gpu_in_bfloat16_the_scores_are_the_cpus_within_its_precision(tmp_path):
    """The default GPU path (bfloat16 compute, float32 log-softmax) against the CPU in float32."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    seq = _proteins("esm2")["mixed_40"]
    variants = all_singles(seq)
    cpu = VariantScorer(load_model(REFERENCES["esm2"], masked_lm=True), progress=False)
    gpu = VariantScorer(load_model(REFERENCES["esm2"], device="cuda", dtype="bfloat16", masked_lm=True),
                        progress=False)
    assert gpu.compute_dtype == "bfloat16"
    for strategy in ("masked-marginals", "wt-marginals"):
        want, got = cpu.score(seq, variants, strategy), gpu.score(seq, variants, strategy)
        np.testing.assert_allclose(got, want, atol=0.1, rtol=0, err_msg=strategy)
        assert np.corrcoef(got, want)[0, 1] > 0.99


def test_one_table_of_many_proteins_names_each_rows_wild_type(run_cli, tmp_path, tiny_models):
    """--id-column: the rows of two proteins in one table, each checked and scored against its own
    record of --fasta, the same scores as a run per protein; a record the table does not name is
    neither checked nor scored."""
    model = tiny_models["esm"]
    other = SEQ[::-1]
    fasta = tmp_path / "wt.fa"
    fasta.write_text(f">a\n{SEQ}\n>b\n{other}\n>unused\n{'M' * 5000}\n")
    table = tmp_path / "v.csv"
    table.write_text(f"protein,mutant\na,K2A\nb,{other[1]}2W\na,T3W:Q9E\n")
    r = run_cli("variants", table, "--fasta", fasta, "--id-column", "protein", "-m", model, "--column", "s")
    assert r.exit_code == 0, r.stderr
    got = [float(row["s"]) for row in _table(r.stdout)]
    for ident, seq, rows in (("a", SEQ, (0, 2)), ("b", other, (1,))):
        lines = [table.read_text().splitlines()[1 + i].split(",", 1)[1] for i in rows]
        (tmp_path / f"{ident}.csv").write_text("mutant\n" + "\n".join(lines) + "\n")
        alone = run_cli("variants", tmp_path / f"{ident}.csv", "--sequence", seq, "-m", model, "--column", "s")
        assert alone.exit_code == 0, alone.stderr
        for i, row in zip(rows, _table(alone.stdout)):
            assert got[i] == pytest.approx(float(row["s"]), abs=1e-6)
    table.write_text("protein,mutant\na,K2A\nc,K2A\n")
    r = run_cli("variants", table, "--fasta", fasta, "--id-column", "protein", "-m", model)
    assert r.exit_code == 1 and "v.csv:3: protein 'c': no such record" in r.stderr
    r = run_cli("variants", table, "--sequence", SEQ, "--id-column", "protein", "-m", model)
    assert r.exit_code == 2 and "--id-column" in r.stderr


def test_id_column_of_a_latin1_table_names_the_records_of_a_latin1_fasta(run_cli, tmp_path, tiny_models):
    """A FASTA and a variants table in latin-1: the table's `Prot\xe9ine` is the record the FASTA's
    header `>Prot\xe9ine` gives (UTF-8, else latin-1, as the label and --ids readers decode); the
    table was refused as "not UTF-8 text". A line in UTF-8 among them reads as UTF-8 (line by
    line, field by field: its id is the same record)."""
    other = SEQ[::-1]
    fasta = tmp_path / "wt.fa"
    fasta.write_bytes(f">Prot\xe9ine 37\xb0C\n{SEQ}\n>b\n{other}\n".encode("latin-1"))
    table = tmp_path / "v.csv"
    table.write_bytes(f"protein,mutant,note\nProt\xe9ine,K2A,37\xb0C\nb,{other[1]}2W,\xb5m\n".encode("latin-1")
                      + "Prot\xe9ine,T3W,\xb5m\n".encode())
    r = run_cli("variants", table, "--fasta", fasta, "--id-column", "protein", "-m", tiny_models["esm"], "--column", "s")
    assert r.exit_code == 0, r.stderr
    rows = _table(r.stdout)
    assert [(row["protein"], row["note"]) for row in rows] == [("Prot\xe9ine", "37\xb0C"), ("b", "\xb5m"),
                                                               ("Prot\xe9ine", "\xb5m")]
    assert all(row["s"] for row in rows)


def test_id_column_neither_checks_nor_warns_about_records_the_table_does_not_name(run_cli, tmp_path, tiny_models):
    """--id-column over a FASTA whose other records cannot be read (a J, an inner stop) or read as
    DNA: the table's proteins are scored without a word about them (the run was refused for a
    record it never named, and warned of DNA it never scored); a row naming an unreadable record is
    that row's error, with the record's reason."""
    fasta = tmp_path / "wt.fa"
    fasta.write_text(f">a\n{SEQ}\n>bad\nMKJTAY\n>orf\nMK*TAY\n>dna\n{'ACGT' * 10}\n")
    table = tmp_path / "v.csv"
    table.write_text("protein,mutant\na,K2A\na,T3W\n")
    r = run_cli("variants", table, "--fasta", fasta, "--id-column", "protein", "-m", tiny_models["esm"], "--column", "s")
    assert r.exit_code == 0, r.stderr
    assert "DNA" not in r.stderr and "bad" not in r.stderr
    assert [row["mutant"] for row in _table(r.stdout)] == ["K2A", "T3W"]
    table.write_text("protein,mutant\na,K2A\nbad,K2A\n")
    r = run_cli("variants", table, "--fasta", fasta, "--id-column", "protein", "-m", tiny_models["esm"])
    assert r.exit_code == 1
    assert "v.csv:3: protein 'bad': " in r.stderr and "record 'bad': invalid character 'J'" in r.stderr
    table.write_text("protein,mutant\na,K2A\ndna,C2A\n")
    r = run_cli("variants", table, "--fasta", fasta, "--id-column", "protein", "-m", tiny_models["esm"], "--column", "s")
    assert r.exit_code == 0, r.stderr
    assert "1 of 2 wild type(s)" in r.stderr and "dna" in r.stderr


def test_a_header_with_a_nul_byte_stops_only_a_run_that_asks_for_its_record(run_cli, tmp_path, tiny_models):
    """--id or --id-column over a FASTA where a record nobody asked for has a header with a NUL byte
    (a damaged file): the records asked for are scored, as beside a record with an invalid sequence
    (the whole run stopped for it); a run that asks for it is still refused, naming it."""
    model = tiny_models["esm"]
    fasta, table = tmp_path / "wt.fa", tmp_path / "v.csv"
    fasta.write_bytes(f">a\n{SEQ}\n>b\x00y damaged\n{SEQ}\n".encode())
    table.write_text("mutant\nK2A\n")
    alone = run_cli("variants", table, "--sequence", SEQ, "-m", model, "--column", "s")
    r = run_cli("variants", table, "--fasta", fasta, "--id", "a", "-m", model, "--column", "s")
    assert r.exit_code == 0 and r.stdout == alone.stdout and "NUL" not in r.stderr, r.stderr
    (tmp_path / "p.csv").write_text("protein,mutant\na,K2A\n")
    r = run_cli("variants", tmp_path / "p.csv", "--fasta", fasta, "--id-column", "protein", "-m", model, "--column", "s")
    assert r.exit_code == 0 and [row["mutant"] for row in _table(r.stdout)] == ["K2A"], r.stderr
    r = run_cli("variants", table, "--fasta", fasta, "--id", "b", "-m", model)
    assert r.exit_code == 1 and r.stderr == (f"protrans: error: {fasta}: holds no record 'b'; the header at line 3, "
                                             "'b\\x00y', holds a NUL byte (a damaged file?)\n"), r.stderr
    r = run_cli("variants", "--all-singles", "--fasta", fasta, "-m", model)
    assert r.exit_code == 1 and f"{fasta}:3, record 'b\\x00y': the header holds a NUL byte (a damaged file?)" in r.stderr
    # without --id (no skip policy: the wild type is every record): the record named by its line
    fasta.write_bytes(f">b\x00y damaged\n{SEQ}\n".encode())
    r = run_cli("variants", table, "--fasta", fasta, "-m", model)
    assert r.exit_code == 1 and r.stderr == (f"protrans: error: {fasta}:1, record 'b\\x00y': the header holds a NUL "
                                             "byte (a damaged file?)\n"), r.stderr


def test_an_electra_pair_whose_generator_lacks_its_weights_names_that_folder(run_cli, tmp_path):
    """-m a run's ELECTRA pair whose generator/ holds no weights (a copy cut short): one line of ours
    naming that folder, as train --init-from and -m of the folder itself say it; it was transformers'
    "Error no file named model.safetensors, or pytorch_model.bin, found in directory" inside ours."""
    from protrans_cli.models import FAMILIES

    electra = FAMILIES["electra"]
    tokenizer = electra.build_tokenizer()
    pair = tmp_path / "pair"
    electra.save_pretrained(electra.pretraining_model(electra.build_config("tiny", tokenizer)), tokenizer, pair)
    (pair / "generator" / "model.safetensors").unlink()
    (tmp_path / "v.csv").write_text("mutant\nK2A\n")
    r = run_cli("variants", tmp_path / "v.csv", "--sequence", SEQ, "-m", pair, "-o", tmp_path / "out.csv")
    assert r.exit_code == 1 and r.stderr == (f"protrans: error: {pair}: its generator folder {pair / 'generator'} has "
                                             "no weights file (model.safetensors or pytorch_model.bin)\n"), r.stderr
    assert not (tmp_path / "out.csv").exists()


def test_a_wild_type_with_gaps_is_read_without_them_with_a_warning(run_cli, tmp_path, tiny_models):
    """An alignment's row given as the wild type lost its gaps without a word, so a table numbered
    by the alignment's columns scored other sites wherever the residues there agreed (A5G of the
    row MKA-AAK names column 5; residue 5 of MKAAAK is an A too). embed warns of gaps; variants
    says so too, naming the records."""
    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\n")
    r = run_cli("variants", table, "--sequence", "MK-TAYIAK", "-m", tiny_models["esm"], "--column", "s")
    assert r.exit_code == 0, r.stderr
    assert "--sequence: the wild type held gap characters ('-', '.'), removed" in r.stderr
    assert "not the alignment's columns" in r.stderr
    plain = run_cli("variants", table, "--sequence", "MKTAYIAK", "-m", tiny_models["esm"], "--column", "s")
    assert plain.exit_code == 0 and "gap" not in plain.stderr and plain.stdout == r.stdout
    fasta = tmp_path / "wt.fa"
    fasta.write_text(">a\nMK-TAY.IAK\n>b\nMKTAYIAK\n>c\n-MKTAYIAK\n")
    r = run_cli("variants", "--all-singles", "--fasta", fasta, "-m", tiny_models["esm"], "--column", "s")
    assert r.exit_code == 0 and "wt.fa: 2 wild type(s) held gap characters ('-', '.'), removed: a, c." in r.stderr
    # --id-column: only the records the table names
    table.write_text("protein,mutant\nb,K2A\n")
    r = run_cli("variants", table, "--fasta", fasta, "--id-column", "protein", "-m", tiny_models["esm"], "--column", "s")
    assert r.exit_code == 0 and "gap" not in r.stderr, r.stderr
    table.write_text("protein,mutant\nb,K2A\nc,K2A\n")
    r = run_cli("variants", table, "--fasta", fasta, "--id-column", "protein", "-m", tiny_models["esm"], "--column", "s")
    assert r.exit_code == 0 and "1 wild type(s) held gap characters ('-', '.'), removed: c." in r.stderr


def test_a_pipe_as_output_keeps_no_units_as_stdout_keeps_none(run_cli, tmp_path, tiny_models):
    """-o /dev/fd/N (`-o >(gzip > x.gz)`): the table goes down the pipe; it was refused after the
    model's load, "cannot create /dev/fd/N.partial" (exit 1), the folder kept for --resume beside
    a path that cannot hold one. --resume is refused, as for stdout."""
    import os

    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\nT3W:Q9E\n")
    read_end, write_end = os.pipe()
    try:
        r = run_cli("variants", table, "--sequence", SEQ, "-m", tiny_models["esm"], "--column", "s",
                    "-o", f"/dev/fd/{write_end}")
        os.close(write_end)
        write_end = None
        assert r.exit_code == 0, r.stderr
        with os.fdopen(read_end, "rb") as stream:
            read_end = None
            piped = stream.read().decode()
    finally:
        for fd in (read_end, write_end):
            if fd is not None:
                os.close(fd)
    alone = run_cli("variants", table, "--sequence", SEQ, "-m", tiny_models["esm"], "--column", "s")
    assert piped == alone.stdout and [row["mutant"] for row in _table(piped)] == ["K2A", "T3W:Q9E"]
    r = run_cli("variants", table, "--sequence", SEQ, "-m", tiny_models["esm"], "-o", "/dev/stdout", "--resume")
    assert r.exit_code == 2 and "keeps none" in r.stderr


def test_the_library_scores_what_parse_variant_read_and_refuses_other_variants(tiny_models):
    """parse_variant and VariantScorer.score read a wild type alike (lower case, gaps): the site
    scored is the residue named; a variant of another sequence is refused, not scored elsewhere."""
    from protrans_cli.errors import UsageError
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    scorer = VariantScorer(load_model(tiny_models["esm"], masked_lm=True), progress=False)
    gapped = SEQ[:5] + "--" + SEQ[5:].lower()
    want = scorer.score(SEQ, [parse_variant("I6W", SEQ)])
    assert scorer.score(gapped, [parse_variant("I6W", gapped)]) == pytest.approx(want, abs=1e-6)
    with pytest.raises(UsageError, match="not a substitution of this wild type"):
        scorer.score(SEQ, [(Mutation(5, "A", "W"),)])
    with pytest.raises(UsageError, match="outside the sequence"):
        scorer.score(SEQ[:5], [parse_variant("I6W", SEQ)])


def test_the_library_refuses_variants_given_as_text_or_a_bare_mutation(tiny_models):
    """score(wt, ["K2A"]) (texts, not parse_variant's tuples) or a Mutation outside a tuple was an
    AttributeError / TypeError traceback; a generator of parsed variants is read as a list."""
    from protrans_cli.errors import UsageError
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    scorer = VariantScorer(load_model(tiny_models["esm"], masked_lm=True), progress=False)
    for bad, said in ((["I6W"], "got str 'I6W'"), ("I6W", "got str 'I6W'"),
                      ([Mutation(5, "I", "W")], "got Mutation Mutation\\(position=5")):
        with pytest.raises(UsageError, match=f"^variants is a list of parse_variant\\(text, sequence\\) results .*{said}"):
            scorer.score(SEQ, bad)
    want = scorer.score(SEQ, [parse_variant("I6W", SEQ)])
    assert scorer.score(SEQ, (parse_variant(v, SEQ) for v in ["I6W"])) == pytest.approx(want)


def test_a_multi_mutant_with_a_stop_at_any_site_is_left_without_a_score(tiny_models):
    """A stop (*) has no residue in a language model: a variant with one at any of its sites,
    the last of several included, gets NaN under every scoring; its other variants keep theirs.
    The multi-mutant's score is the sum of its sites' log-odds (predict.py's additive rule)."""
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    scorer = VariantScorer(load_model(tiny_models["esm"], masked_lm=True), progress=False)
    texts = ["K2A:T3*", "K2*:T3W", "K2A:T3W", "K2A", "T3W"]
    for strategy in ("masked-marginals", "wt-marginals", "pseudo-ppl"):
        scores = scorer.score(SEQ[:20], [parse_variant(t, SEQ[:20]) for t in texts], strategy)
        assert np.isnan(scores[:2]).all() and np.isfinite(scores[2:]).all(), strategy
        if strategy != "pseudo-ppl":
            assert scores[2] == pytest.approx(scores[3] + scores[4], abs=1e-5), strategy


def test_pseudo_log_likelihoods_of_more_sequences_than_one_unit_are_each_sequences_own(tiny_models, monkeypatch):
    """pseudo_log_likelihood over more sequences than one unit computes (MUTANTS_PER_UNIT, 64; 2
    here) gives each sequence the sum it gets alone, whichever unit computed it."""
    import protrans_cli.variants as variants
    from protrans_cli.models import load_model

    scorer = variants.VariantScorer(load_model(tiny_models["esm"], masked_lm=True), progress=False)
    sequences = [SEQ[k:k + 6] for k in range(0, 25, 5)]  # 5 sequences: units of 2, 2 and 1
    alone = np.array([scorer.pseudo_log_likelihood([s])[0] for s in sequences])
    monkeypatch.setattr(variants, "MUTANTS_PER_UNIT", 2)
    np.testing.assert_allclose(scorer.pseudo_log_likelihood(sequences), alone, rtol=1e-6)


def test_the_likelihoods_of_one_sequence_or_a_dict_are_refused_not_scored_letter_by_letter(tiny_models):
    """pseudo_log_likelihood("MKT...") scored each letter as a sequence of its own (an array of L
    numbers, without a word), and a dict its ids."""
    from protrans_cli.errors import UsageError
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    scorer = VariantScorer(load_model(tiny_models["esm"], masked_lm=True), progress=False)
    for given, said in ((SEQ[:8], "takes a list of sequences: put one in a list"),
                        ({"P1": SEQ[:8]}, r"takes a list of sequences, not a dict: give list\(d.values\(\)\)")):
        with pytest.raises(UsageError, match=f"^pseudo_log_likelihood {said}"):
            scorer.pseudo_log_likelihood(given)
    assert scorer.pseudo_log_likelihood([SEQ[:8]]).shape == (1,)
    causal = VariantScorer(load_model(tiny_models["transfo_xl"], masked_lm=True), progress=False)
    with pytest.raises(UsageError, match="^log_likelihood takes a list of sequences: put one in a list"):
        causal.log_likelihood(SEQ[:8])
    assert causal.log_likelihood([SEQ[:8]]).shape == (1,)


def test_a_missing_value_is_the_one_the_heads_take_for_missing():
    """variants had a list of its own that lacked pandas' `<NA>` (a column of its nullable string
    dtype written with astype(str)): fit left such a label out, and variants stopped the run on
    `<NA>: not a substitution`."""
    from protrans_cli.heads.tasks import MISSING_NUMBERS, missing_number
    from protrans_cli.variants import is_missing, parse_variant

    for text in (*MISSING_NUMBERS, "<NA>", " NA ", "N/A", "NaN", "NULL"):
        assert is_missing(text) and missing_number(text), text
        with pytest.raises(ValueError, match="names no variant"):
            parse_variant(text, SEQ)
    assert not is_missing("K2A") and not is_missing("WT")


def test_rows_without_a_variant_and_misaligned_rows(run_cli, tmp_path, tiny_models):
    """An empty or NA cell (MaveDB's missing hgvs_pro) is no variant: no score, not the wild
    type's 0, and out of Spearman's rho; a row with more fields than the header is refused (they
    were dropped from the output), empty trailing fields are not."""
    model = tiny_models["esm"]
    table = tmp_path / "v.csv"
    table.write_text("hgvs_pro,score\np.Lys2Ala,1\nNA,2\n,3\n_wt,0\np.Thr3Trp,4\n")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", model, "--mutation-column", "hgvs_pro", "--column", "s",
                "--truth-column", "score")
    assert r.exit_code == 0, r.stderr
    rows = _table(r.stdout)
    assert [row["s"] for row in rows][1:3] == ["", ""] and rows[3]["s"] == "0.000000" and rows[0]["s"] != ""
    assert "2 rows of " in r.stderr and "v.csv with no variant in 'hgvs_pro'" in r.stderr and "over 3 variants" in r.stderr
    table.write_text("mutant\nNA\n\"\"\n")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", model)
    assert r.exit_code == 1 and "holds no variants" in r.stderr
    out = tmp_path / "o.csv"
    table.write_text("mutant,note\nK2A,a\nT3W,b,c\n")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", model, "-o", out)
    assert r.exit_code == 1 and "v.csv:3: has 3 fields, the header has 2" in r.stderr and not out.exists()
    table.write_bytes(b"mutant,note\nK2A,a\nT3W,\xb5m\n")  # (latin-1, as label files: it was "not UTF-8 text")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", model, "--column", "s")
    assert r.exit_code == 0, r.stderr
    assert [row["note"] for row in _table(r.stdout)] == ["a", "\xb5m"]
    table.write_text("mutant,note\nK2A,a,\nT3W,b\n")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", model, "--column", "s")
    assert r.exit_code == 0, r.stderr
    assert [row["note"] for row in _table(r.stdout)] == ["a", "b"]


def test_column_clashes_stdin_twice_and_duplicate_ids_are_refused(run_cli, tmp_path, tiny_models):
    table = tmp_path / "v.csv"
    table.write_text("mutant,ensemble_masked_marginals\nK2A,1\n")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", tiny_models["esm"], "-m", tiny_models["bert"])
    assert r.exit_code == 2 and "already has a column 'ensemble_masked_marginals'" in r.stderr
    r = run_cli("variants", "-", "--fasta", "-", "-m", tiny_models["esm"], input=f">a\n{SEQ}\n".encode())
    assert r.exit_code == 2 and "stdin" in r.stderr
    fasta = tmp_path / "twice.fa"
    fasta.write_text(f">a\n{SEQ}\n>a\n{SEQ}\n")
    r = run_cli("variants", tmp_path / "v.csv", "--fasta", fasta, "--id", "a", "-m", tiny_models["esm"])
    # FILE:LINE, record 'ID', as embed names a duplicate id (it was "FILE: the id 'a' is given twice")
    assert r.exit_code == 1 and r.stderr == f"protrans: error: {fasta}:3, record 'a': duplicate id (first seen on " \
        "line 1)\n", r.stderr
    r = run_cli("variants", "--all-singles", "--fasta", fasta, "-m", tiny_models["esm"])
    assert r.exit_code == 1 and f"{fasta}:3, record 'a': duplicate id" in r.stderr and r.stdout == ""


def test_all_singles_of_several_records_score_each_against_its_own(run_cli, tmp_path, tiny_models):
    model = tiny_models["esm"]
    fasta = tmp_path / "two.fa"
    fasta.write_text(f">a\n{SEQ[:12]}\n>b\n{SEQ[20:30]}\n")
    r = run_cli("variants", "--all-singles", "--fasta", fasta, "-m", model, "--column", "s")
    assert r.exit_code == 0, r.stderr
    rows = _table(r.stdout)
    assert [row["id"] for row in rows] == ["a"] * 19 * 12 + ["b"] * 19 * 10
    for ident, seq in (("a", SEQ[:12]), ("b", SEQ[20:30])):
        alone = _table(run_cli("variants", "--all-singles", "--sequence", seq, "-m", model, "--column", "s").stdout)
        assert [(row["mutant"], row["s"]) for row in rows if row["id"] == ident] == [
            (row["mutant"], row["s"]) for row in alone]


@pytest.mark.parametrize("no_room", [
    torch.OutOfMemoryError("CUDA out of memory (simulated)"),
    # (Apple's GPU: a plain RuntimeError, which was a traceback instead of a split pass)
    RuntimeError("MPS backend out of memory (MPS allocated: 17.90 GiB, other allocations: 1.02 GiB, max allowed: "
                 "18.13 GiB). Tried to allocate 256.00 MiB on private pool.")], ids=["cuda", "mps"])
def test_out_of_memory_halves_the_pass_and_the_passes_after(tiny_models, no_room):
    """A GPU out of memory (simulated: passes of more than 3 rows fail; CUDA's torch.OutOfMemoryError,
    or MPS's RuntimeError) retries the halves, gives the same numbers, and lowers --max-tokens so that
    later passes do not fail first again; another RuntimeError is no out of memory."""
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    scorer = VariantScorer(load_model(tiny_models["esm"], masked_lm=True), progress=False)
    variants = all_singles(SEQ[:30])
    want = scorer.score(SEQ[:30], variants)
    model, calls = scorer.model, []

    def limited(**inputs):
        calls.append(len(inputs["input_ids"]))
        if len(inputs["input_ids"]) > 3:
            raise no_room
        return model(**inputs)

    scorer.model = limited
    got = scorer.score(SEQ[:30], variants)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert sorted(c for c in calls if c > 3) == [7, 15, 30] and scorer.max_tokens < 4 * 32
    calls.clear()
    np.testing.assert_allclose(scorer.score(SEQ[:30], variants, "wt-marginals"),
                               VariantScorer(load_model(tiny_models["esm"], masked_lm=True),
                                             progress=False).score(SEQ[:30], variants, "wt-marginals"), atol=1e-6)
    np.testing.assert_allclose(scorer.score(SEQ[:30], variants), want, atol=1e-6)
    assert calls and max(calls) <= 3
    with pytest.raises(RuntimeError, match="^shape mismatch$"):
        scorer.model = lambda **inputs: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
        scorer.score(SEQ[:30], variants)


def test_scores_on_apple_gpu_where_there_is_no_float64(tiny_models):
    """Apple's GPU (MPS) has no float64 and no numpy view of its tensors (tests/conftest.py's
    mps_like refuses both as MPS does): a causal LM's log-likelihood was summed in float64 where
    the logits are, so `protrans variants --scoring log-likelihood` on a Mac ended in a TypeError
    traceback. Every scoring gives there what it gives on the CPU."""
    from types import SimpleNamespace

    from conftest import mps_like
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    variants = [parse_variant(text, SEQ[:20]) for text in ("K2A", "T3W:Q9E", "S13P", "WT")]
    for family, scorings in (("transfo_xl", ["log-likelihood"]),
                             ("esm", ["masked-marginals", "wt-marginals", "pseudo-ppl"])):
        scorer = VariantScorer(load_model(tiny_models[family], masked_lm=True), progress=False)
        want = [scorer.score(SEQ[:20], variants, scoring) for scoring in scorings]
        model = scorer.model
        scorer.model = lambda _model=model, **inputs: SimpleNamespace(logits=mps_like(_model(**inputs).logits))
        for scoring, expected in zip(scorings, want):
            np.testing.assert_array_equal(scorer.score(SEQ[:20], variants, scoring), expected)


@pytest.mark.parametrize("scoring", ["masked-marginals", "pseudo-ppl"])
def test_an_interrupted_run_goes_on_with_resume_to_the_uninterrupted_table(run_cli, tmp_path, tiny_models,
                                                                             monkeypatch, scoring):
    """A Ctrl-C after two units of work: exit 130 naming --resume, no table written, the units kept
    in OUT.partial/; the same command with --resume computes only the rest and writes the table an
    uninterrupted run writes, then removes OUT.partial/. Without --resume the kept work is not
    silently dropped."""
    import protrans_cli.variants as variants

    monkeypatch.setattr(variants, "SITES_PER_UNIT", 4)
    monkeypatch.setattr(variants, "MUTANTS_PER_UNIT", 2)
    model = tiny_models["esm"]
    seq = SEQ[:24]
    table = tmp_path / "v.csv"
    table.write_text("mutant\n" + "\n".join(f"{seq[p]}{p + 1}{'W' if seq[p] != 'W' else 'A'}" for p in range(0, 24, 2))
                     + "\nK2A:T3G\n")
    whole = run_cli("variants", table, "--sequence", seq, "-m", model, "--scoring", scoring, "-o", tmp_path / "w.csv")
    assert whole.exit_code == 0, whole.stderr
    out = tmp_path / "o.csv"
    original = variants.VariantScorer.site_log_probs
    calls = []

    def counting(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and interrupt:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(variants.VariantScorer, "site_log_probs", counting)
    interrupt = True
    r = run_cli("variants", table, "--sequence", seq, "-m", model, "--scoring", scoring, "-o", out)
    assert r.exit_code == 130 and "--resume" in r.stderr and "o.csv.partial" in r.stderr
    assert not out.exists() and len(list((tmp_path / "o.csv.partial").glob("*.npy"))) == 2
    interrupt = False
    r = run_cli("variants", table, "--sequence", seq, "-m", model, "--scoring", scoring, "-o", out)
    assert r.exit_code == 2 and "--resume goes on with it" in r.stderr
    calls.clear()
    r = run_cli("variants", table, "--sequence", seq, "-m", model, "--scoring", scoring, "-o", out, "--resume")
    assert r.exit_code == 0, r.stderr
    assert "2 units of work kept" in r.stderr
    # 13 distinct sites by fours; pseudo-ppl: the wild type's unit, then the 13 mutants' by twos
    total = 4 if scoring == "masked-marginals" else 1 + 7
    assert len(calls) == total - 2
    assert out.read_text() == (tmp_path / "w.csv").read_text()
    assert not (tmp_path / "o.csv.partial").exists()
    r = run_cli("variants", table, "--sequence", seq, "-m", model, "-o", tmp_path / "x.csv", "--resume")
    assert r.exit_code == 0 and "nothing kept" in r.stderr
    assert run_cli("variants", table, "--sequence", seq, "-m", model, "--resume").exit_code == 2


def test_an_interrupted_run_on_a_linked_output_names_the_work_beside_where_the_link_leads(run_cli, tmp_path,
                                                                                          tiny_models, monkeypatch):
    """-o a link of the user's own keeps its work in TARGET.partial/ (beside where the link leads);
    the Ctrl-C line named LINK.partial, which does not exist, and so left the --resume hint out."""
    import protrans_cli.variants as variants

    monkeypatch.setattr(variants, "SITES_PER_UNIT", 4)
    original = variants.VariantScorer.site_log_probs
    calls = []

    def counting(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    (tmp_path / "scratch").mkdir()
    link, real = tmp_path / "out.csv", tmp_path / "scratch" / "real.csv"
    link.symlink_to(real)
    args = ["variants", "--all-singles", "--sequence", SEQ[:12], "-m", tiny_models["esm"], "-o", link]
    with monkeypatch.context() as m:
        m.setattr(variants.VariantScorer, "site_log_probs", counting)
        r = run_cli(*args)
    assert r.exit_code == 130, r.stderr
    assert (f"what was computed is in {real}.partial; run the same command with --resume to go on"
            in r.stderr), r.stderr
    assert (tmp_path / "scratch" / "real.csv.partial").is_dir() and not (tmp_path / "out.csv.partial").exists()
    r = run_cli(*args, "--resume")
    assert r.exit_code == 0 and "1 unit of work kept" in r.stderr and real.is_file(), r.stderr


def test_a_masked_lm_checkpoint_without_a_contact_head_scores(run_cli, tmp_path, tiny_models):
    """The contact head is not part of what scores residues: an EsmForMaskedLM checkpoint saved
    without it (another tool's fine-tuned copy) scores as the full one does."""
    import shutil

    from safetensors.torch import load_file, save_file

    source = tiny_models["esm"]
    copy = tmp_path / "no_contact_head"
    shutil.copytree(source, copy)
    weights = load_file(copy / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "contact_head" not in k}, copy / "model.safetensors",
              metadata={"format": "pt"})
    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\nT3W:Q9E\n")
    full = run_cli("variants", table, "--sequence", SEQ, "-m", source, "--column", "s")
    lacking = run_cli("variants", table, "--sequence", SEQ, "-m", copy, "--column", "s")
    assert full.exit_code == 0 and lacking.exit_code == 0, lacking.stderr
    assert full.stdout == lacking.stdout


def test_a_table_or_heatmap_that_cannot_be_written_says_the_work_is_kept_for_resume(run_cli, tmp_path, tiny_models,
                                                                                     monkeypatch):
    """A heatmap in a read-only folder (or a full disk at the table) failed after the scoring with
    the write's error alone; the scores kept in OUT.partial/ made the same command refused ("holds
    the work of an interrupted run"). The line says where the work is and that --resume goes on."""
    import protrans_cli.variants as variants
    from protrans_cli.errors import RuntimeFailure

    def read_only(*args, **kwargs):
        raise RuntimeFailure("cannot write in this folder: Read-only file system", path=str(tmp_path / "ro"))

    out = tmp_path / "o.csv"
    args = ["variants", "--all-singles", "--sequence", SEQ[:12], "-m", tiny_models["esm"], "-o", out, "--plot",
            tmp_path / "scan.png"]
    with monkeypatch.context() as m:
        m.setattr(variants, "save_scan_png", read_only)
        r = run_cli(*args)
    assert r.exit_code == 1 and r.stderr.strip().splitlines()[-1] == (
        f"protrans: error: {tmp_path / 'ro'}: cannot write in this folder: Read-only file system; what was computed "
        f"is in {out}.partial: run the same command with --resume once the problem is solved"), r.stderr
    assert not out.exists()
    r = run_cli(*args, "--resume")
    assert r.exit_code == 0 and "1 unit of work kept" in r.stderr and out.is_file(), r.stderr
    assert (tmp_path / "scan.png").is_file() and not (tmp_path / "o.csv.partial").exists()


def test_a_damaged_unit_kept_for_resume_is_computed_again(tmp_path, tiny_models, monkeypatch):
    """A unit file that cannot be what its unit computed (empty, as a crash can leave one; cut
    short; another shape or dtype; not an array) is computed again, not read: an empty one was
    numpy's EOFError, which click took for a Ctrl-C (every --resume ended "interrupted", exit
    130), and a wrong shape a traceback."""
    import protrans_cli.variants as variants
    from protrans_cli.models import load_model

    monkeypatch.setattr(variants, "SITES_PER_UNIT", 4)
    monkeypatch.setattr(variants, "MUTANTS_PER_UNIT", 2)
    loaded = load_model(tiny_models["esm"], masked_lm=True)
    scorer = variants.VariantScorer(loaded, progress=False)
    seq = SEQ[:20]
    singles, some = all_singles(seq), all_singles(seq)[:40:3]
    want = scorer.score(seq, singles), scorer.score(seq, some, "pseudo-ppl")
    folder = tmp_path / "o.csv.partial"
    units = variants.UnitStore(folder, resume=False).for_model(loaded, scorer)
    scorer.score(seq, singles, store=units), scorer.score(seq, some, "pseudo-ppl", store=units)
    masked = sorted(folder.glob("*-masked-*.npy"))
    pll = sorted(folder.glob("*-pll-*.npy"))
    assert len(masked) == 5 and len(pll) == 8
    masked[0].write_bytes(b"")
    masked[1].write_bytes(masked[1].read_bytes()[:200])
    np.save(masked[2], np.zeros(3, dtype=np.float32))
    np.save(masked[3], np.load(masked[3]).astype(np.float64))
    kept = np.load(masked[4])
    with open(masked[4], "wb") as fh:
        np.savez(fh, kept)
    pll[0].write_bytes(b"")
    np.save(pll[1], np.zeros(5))
    calls = []
    original = variants.VariantScorer.site_log_probs

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(variants.VariantScorer, "site_log_probs", counting)
    units = variants.UnitStore(folder, resume=True).for_model(loaded, scorer)
    np.testing.assert_array_equal(scorer.score(seq, singles, store=units), want[0])
    np.testing.assert_array_equal(scorer.score(seq, some, "pseudo-ppl", store=units), want[1])
    assert len(calls) == 5 + 2
    # and written again whole: read the next time
    calls.clear()
    units = variants.UnitStore(folder, resume=True).for_model(loaded, scorer)
    np.testing.assert_array_equal(scorer.score(seq, singles, store=units), want[0])
    np.testing.assert_array_equal(scorer.score(seq, some, "pseudo-ppl", store=units), want[1])
    assert not calls


def test_resume_reads_no_unit_of_a_model_folder_trained_again_in_place_or_another_device(tmp_path, tiny_models,
                                                                                        monkeypatch):
    """A model folder has no commit: its path alone named the units, so a --resume after the
    folder was trained again (`protrans train -o model` anew, a checkpoint replaced) mixed the old
    model's kept units into the new model's table. The files' sizes and times name it now; so
    does the device, whose kernels give other last digits."""
    import shutil

    import protrans_cli.variants as variants
    from protrans_cli.models import FAMILIES, load_model

    monkeypatch.setattr(variants, "SITES_PER_UNIT", 4)
    folder = tmp_path / "model"
    shutil.copytree(tiny_models["esm"], folder)
    seq, store = SEQ[:20], variants.UnitStore(tmp_path / "o.csv.partial", resume=False)
    singles = all_singles(seq)
    loaded = load_model(str(folder), masked_lm=True)
    scorer = variants.VariantScorer(loaded, progress=False)
    scorer.score(seq, singles, store=store.for_model(loaded, scorer))
    family = FAMILIES["esm"]
    tokenizer = family.build_tokenizer()
    torch.manual_seed(123)
    family.save_pretrained(family.pretraining_model(family.build_config("tiny", tokenizer)).eval(), tokenizer, folder)
    loaded = load_model(str(folder), masked_lm=True)
    scorer = variants.VariantScorer(loaded, progress=False)
    want = scorer.score(seq, singles)
    np.testing.assert_array_equal(scorer.score(seq, singles, store=store.for_model(loaded, scorer)), want)
    # the same settings read what they kept; another device type does not
    units = store.for_model(loaded, scorer)
    assert units("k", lambda: np.zeros(2)).shape == (2,) and units("k", lambda: np.ones(3)).shape == (2,)
    scorer.device = torch.device("meta")
    assert store.for_model(loaded, scorer)("k", lambda: np.ones(3)).shape == (3,)


def test_resume_reads_the_units_of_a_model_folder_moved_since(tmp_path, tiny_models):
    """A model folder moved between the runs (a project folder renamed, copied to another cluster
    with its files' times): its path named the units, so --resume said "N units of work kept" and
    computed every one again. Its files name them now."""
    import shutil

    import protrans_cli.variants as variants
    from protrans_cli.models import load_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_models["esm"], folder)
    store = variants.UnitStore(tmp_path / "o.csv.partial", resume=False)
    loaded = load_model(str(folder), masked_lm=True)
    scorer = variants.VariantScorer(loaded, progress=False)
    assert store.for_model(loaded, scorer)("k", lambda: np.zeros(2)).shape == (2,)
    folder.rename(tmp_path / "moved")
    loaded = load_model(str(tmp_path / "moved"), masked_lm=True)
    assert store.for_model(loaded, scorer)("k", lambda: np.ones(3)).shape == (2,)  # kept, not computed again


def test_resume_reads_the_units_an_earlier_version_kept_for_a_model_folder(tmp_path, tiny_models):
    """Units kept by a version that named a model folder's units by its path as well as its files
    (before 7d3e3a59): a user who upgraded mid-run was told "N units of work kept" and every one was
    computed again. The folder where it was, its files unchanged, reads them."""
    import hashlib
    import shutil

    import protrans_cli.variants as variants
    from protrans_cli.models import load_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_models["esm"], folder)
    loaded = load_model(str(folder), masked_lm=True)
    scorer = variants.VariantScorer(loaded, progress=False)
    store = variants.UnitStore(tmp_path / "o.csv.partial", resume=False)
    store.for_model(loaded, scorer)("other", lambda: np.zeros(1))  # (the folder and its marker)
    old = "\n".join(str(v) for v in (loaded.path_or_hub_id, loaded.commit or "",
                                     variants._directory_state(loaded.path_or_hub_id), scorer.device.type,
                                     scorer.compute_dtype, scorer.max_length, scorer.long_policy))
    np.save(tmp_path / "o.csv.partial" / f"{hashlib.sha256(old.encode()).hexdigest()[:16]}-k.npy", np.zeros(2))
    store = variants.UnitStore(tmp_path / "o.csv.partial", resume=True)
    assert store.for_model(loaded, scorer)("k", lambda: np.ones(3)).shape == (2,)  # kept, not computed again
    folder.rename(tmp_path / "moved")  # (moved as well: its old name was in the key, so computed again)
    loaded = load_model(str(tmp_path / "moved"), masked_lm=True)
    assert store.for_model(loaded, scorer)("k", lambda: np.ones(3)).shape == (3,)


def test_resume_reads_no_unit_kept_under_another_max_length(tmp_path, tiny_models):
    """A windowed scan's numbers depend on --max-length (each site read in the window of that many
    residues around it): a --resume with another --max-length reads none of the units kept under
    the first, it gives what a fresh run with its own window gives."""
    import protrans_cli.variants as variants
    from protrans_cli.models import load_model

    seq, store = SEQ[:30], variants.UnitStore(tmp_path / "o.csv.partial", resume=False)
    singles = [v for v in all_singles(seq) if v[0].mt == "A"]
    loaded = load_model(str(tiny_models["esm"]), masked_lm=True)
    scores = []
    for length in (10, 20):
        scorer = variants.VariantScorer(loaded, progress=False, max_length=length, long_policy="window")
        want = scorer.score(seq, singles)
        np.testing.assert_array_equal(scorer.score(seq, singles, store=store.for_model(loaded, scorer)), want)
        scores.append(want)
    assert not np.allclose(scores[0], scores[1])  # (the two windows read other contexts)


def test_an_all_singles_scan_draws_its_landscape(run_cli, tmp_path, tiny_models):
    """--plot: a PNG heatmap per score column (20 amino acids x residues); refused without
    --all-singles or for several wild types, before any work."""
    model = tiny_models["esm"]
    png = tmp_path / "scan.png"
    r = run_cli("variants", "--all-singles", "--sequence", SEQ[:30], "-m", model, "--plot", png, "--scoring",
                "masked-marginals", "--scoring", "wt-marginals", "-o", tmp_path / "scan.csv")
    assert r.exit_code == 0, r.stderr
    from matplotlib.image import imread

    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 400 and image.shape[1] > 500  # two panels
    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\n")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", model, "--plot", tmp_path / "x.png")
    assert r.exit_code == 2 and "--all-singles" in r.stderr
    fasta = tmp_path / "two.fa"
    fasta.write_text(f">a\n{SEQ}\n>b\n{SEQ[:20]}\n")
    r = run_cli("variants", "--all-singles", "--fasta", fasta, "-m", model, "--plot", tmp_path / "y.png")
    assert r.exit_code == 2 and "holds 2" in r.stderr and not (tmp_path / "y.png").exists()


def test_a_scan_stopped_while_its_heatmap_is_drawn_leaves_the_earlier_table_and_heatmap(run_cli, tmp_path,
                                                                                           tiny_models, monkeypatch):
    """-o and --plot are written out first and renamed together: a Ctrl-C while the heatmap was
    drawn left the new table beside the earlier run's heatmap (and advice to --resume a table
    that was complete). Now both are as they were (exit 130), and a run to its end replaces both."""
    import protrans_cli.variants as variants

    model = tiny_models["esm"]
    out, png = tmp_path / "scan.csv", tmp_path / "scan.png"
    args = ("variants", "--all-singles", "--sequence", SEQ[:20], "-m", model, "--plot", png, "-o", out)
    assert run_cli(*args, "--scoring", "masked-marginals").exit_code == 0
    before = out.read_bytes(), png.read_bytes()
    real = variants.save_scan_png

    def interrupted(*a, **kw):
        real(*a, **kw)  # (the heatmap written out, not yet renamed)
        raise KeyboardInterrupt

    monkeypatch.setattr(variants, "save_scan_png", interrupted)
    r = run_cli(*args, "--scoring", "wt-marginals")
    assert r.exit_code == 130
    assert (out.read_bytes(), png.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("scan.csv.partial")) == \
        ["scan.csv", "scan.png"]  # (no temporaries)
    monkeypatch.setattr(variants, "save_scan_png", real)
    assert run_cli(*args, "--scoring", "wt-marginals", "--resume").exit_code == 0
    assert out.read_bytes() != before[0] and png.read_bytes() != before[1]


def test_the_delimiter_follows_a_tsv_name_without_a_table_and_a_tables_otherwise(run_cli, tmp_path, tiny_models):
    """`--all-singles -o scan.tsv` wrote comma-separated text: with no table to follow, the name
    decides (as predict and export); a table's delimiter is kept, with a warning where -o's
    extension says the other one."""
    model = tiny_models["esm"]
    r = run_cli("variants", "--all-singles", "--sequence", SEQ[:5], "-m", model, "-o", tmp_path / "scan.tsv")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "scan.tsv").read_text().splitlines()[1].startswith(f"{SEQ[0]}1A\t")
    r = run_cli("variants", "--all-singles", "--sequence", SEQ[:5], "-m", model, "-o", tmp_path / "scan.csv")
    assert (tmp_path / "scan.csv").read_text().splitlines()[1].startswith(f"{SEQ[0]}1A,")
    table = tmp_path / "v.csv"
    table.write_text(f"mutant,x\n{SEQ[1]}2A,1\n")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", model, "-o", tmp_path / "out.tsv")
    assert r.exit_code == 0, r.stderr
    assert "out.tsv: written comma-separated, as" in r.stderr and "whatever the file's extension" in r.stderr
    assert (tmp_path / "out.tsv").read_text().startswith("mutant,x,")


def test_a_plot_naming_an_input_or_the_table_is_refused_before_any_model(run_cli, tmp_path):
    """--plot wt.fa drew the heatmap over the wild types' FASTA, and --plot naming -o over the
    table just written, exit 0 without a word: refused, both left as they were."""
    fasta = tmp_path / "wt.fa"
    fasta.write_text(f">wt\n{SEQ}\n")
    out = tmp_path / "scan.csv"
    r = run_cli("variants", "--all-singles", "--fasta", fasta, "-m", tmp_path / "no_such_model", "--plot", fasta,
                "-o", out)
    assert r.exit_code == 2 and f"--plot {fasta} is also an input" in r.stderr
    assert fasta.read_text() == f">wt\n{SEQ}\n" and not out.exists()
    r = run_cli("variants", "--all-singles", "--sequence", SEQ, "-m", tmp_path / "no_such_model", "--plot", out,
                "-o", tmp_path / "." / "scan.csv")
    assert r.exit_code == 2 and "is also -o" in r.stderr and not out.exists()


def test_t5_reads_a_masked_site_from_the_decoder_rebuilding_the_protein(run_cli, tmp_path, tiny_models):
    """ProtT5's objective (protrans train's t5): the site replaced by <extra_id_0> in the encoder's
    input, read from the decoder teacher-forced on the wild type. Reference: transformers'
    T5ForConditionalGeneration given the wild type as `labels` (its own shift to decoder inputs),
    the tokenizer called on the spaced text. wt-marginals are refused (the decoder would copy the
    residue), and so is an encoder saved without its decoder (ProtT5's -enc)."""
    from transformers import AutoTokenizer, T5EncoderModel, T5ForConditionalGeneration

    model_dir = tiny_models["t5"]
    variants = ["K2A", "T3W:Q9E", "S13P", "WT"]
    table = tmp_path / "v.csv"
    table.write_text("mutant\n" + "\n".join(variants) + "\n")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", model_dir, "--scoring", "masked-marginals",
                "--scoring", "pseudo-ppl", "--max-tokens", "300")
    assert r.exit_code == 0, r.stderr
    rows = _table(r.stdout)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = T5ForConditionalGeneration.from_pretrained(str(model_dir), use_kernels=False).eval()
    sentinel = tokenizer.convert_tokens_to_ids("<extra_id_0>")

    def site_log_probs(sequence):
        """Row i: the log-probabilities at site i with site i alone replaced by the sentinel (one copy
        of the protein per site, all in one pass: a pass per site was most of this test's time)."""
        ids = tokenizer(" ".join(sequence), return_tensors="pt")["input_ids"]
        sites = torch.arange(len(sequence))
        labels, copies = ids.repeat(len(sequence), 1), ids.repeat(len(sequence), 1)
        copies[sites, sites] = sentinel
        with torch.no_grad():
            return model(input_ids=copies, labels=labels).logits[sites, sites].log_softmax(-1).numpy()

    def pll(sequence):
        rows = site_log_probs(sequence)
        return sum(float(rows[i][tokenizer.convert_tokens_to_ids(c)]) for i, c in enumerate(sequence))

    wild, wild_rows = pll(SEQ), site_log_probs(SEQ)
    for row, text in zip(rows, variants):
        want = _log_odds(text, lambda p: wild_rows[p], tokenizer.convert_tokens_to_ids)
        assert float(row[f"{model_dir.name}_masked_marginals"]) == pytest.approx(want, abs=2e-5)
        mutant = SEQ
        for m in parse_variant(text, SEQ):
            mutant = mutant[:m.position] + m.mt + mutant[m.position + 1:]
        assert float(row[f"{model_dir.name}_pseudo_ppl"]) == pytest.approx(pll(mutant) - wild, abs=2e-4)
    r = run_cli("variants", table, "--sequence", SEQ, "-m", model_dir, "--scoring", "wt-marginals")
    assert r.exit_code == 2 and "copies it from the input" in r.stderr
    T5EncoderModel.from_pretrained(str(model_dir), use_kernels=False).save_pretrained(tmp_path / "enc")
    tokenizer.save_pretrained(tmp_path / "enc")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", tmp_path / "enc")
    assert r.exit_code == 1 and "without its decoder" in r.stderr


def test_xlnet_predicts_a_hidden_site_from_all_the_others(run_cli, tmp_path, tiny_models):
    """ProtXLNet's permutation LM: the site hidden from every position by perm_mask and predicted
    by the query stream at it (target_mapping). Reference: XLNetLMHeadModel on the tokenizer's own
    encoding of the text (left padding, `<sep> <cls>` at the end), the masks built here; the
    result does not depend on the site's own token (it is never seen). wt-marginals refused."""
    from transformers import AutoTokenizer, XLNetLMHeadModel

    model_dir = tiny_models["xlnet"]
    variants = ["K2A", "T3W:Q9E", "S13P"]
    table = tmp_path / "v.csv"
    table.write_text("mutant\n" + "\n".join(variants) + "\n")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", model_dir, "--max-tokens", "100")
    assert r.exit_code == 0, r.stderr
    rows = _table(r.stdout)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = XLNetLMHeadModel.from_pretrained(str(model_dir), use_kernels=False).eval()

    def site_log_probs(sequence, position, shown=None):
        text = list(sequence)
        if shown is not None:
            text[position] = shown
        ids = tokenizer(" ".join(text), return_tensors="pt")["input_ids"]
        assert ids.shape[1] == len(sequence) + 2  # residues, <sep>, <cls>
        perm_mask = torch.zeros(1, ids.shape[1], ids.shape[1])
        perm_mask[0, :, position] = 1.0
        target_mapping = torch.zeros(1, 1, ids.shape[1])
        target_mapping[0, 0, position] = 1.0
        with torch.no_grad():
            out = model(input_ids=ids, perm_mask=perm_mask, target_mapping=target_mapping)
        return out.logits[0, 0].log_softmax(-1).numpy()

    np.testing.assert_allclose(site_log_probs(SEQ, 4), site_log_probs(SEQ, 4, shown="W"), atol=1e-6)
    for row, text in zip(rows, variants):
        want = _log_odds(text, lambda p: site_log_probs(SEQ, p), tokenizer.convert_tokens_to_ids)
        assert float(row[f"{model_dir.name}_masked_marginals"]) == pytest.approx(want, abs=2e-5)
    # Each site's log-probabilities themselves, tighter than the log-odds: a tiny random model's
    # leak of the site's own residue (perm_mask hiding every position from the site rather than
    # the site from every position) moved them by 1e-4 and the log-odds by less than 2e-5.
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    scorer = VariantScorer(load_model(model_dir, masked_lm=True), progress=False)
    shown = SEQ[:4] + "W" + SEQ[5:]
    got = scorer.site_log_probs([SEQ, shown], [(0, 4), (1, 4), (0, 12)])
    np.testing.assert_allclose(got[0], site_log_probs(SEQ, 4), atol=1e-6)
    np.testing.assert_allclose(got[1], got[0], atol=1e-6)  # the site's own residue is never seen
    np.testing.assert_allclose(got[2], site_log_probs(SEQ, 12), atol=1e-6)
    r = run_cli("variants", table, "--sequence", SEQ, "-m", model_dir, "--scoring", "wt-marginals")
    assert r.exit_code == 2 and "only from the others" in r.stderr


def test_a_causal_lm_scores_the_log_likelihood_ratio(run_cli, tmp_path, tiny_models):
    """Transformer-XL (ProtTXL): log p(mutant) - log p(wild type), each the sum over residues of
    log p(residue | those before it), from AutoModelForCausalLM's logits over the tokenizer's own
    encoding (`<s> residues </s>`); a causal LM is refused the two-sided scorings, and a masked LM
    the causal one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tiny_models["transfo_xl"]
    variants = ["K2A", "T3W:Q9E", "S13P", "WT"]
    table = tmp_path / "v.csv"
    table.write_text("mutant\n" + "\n".join(variants) + "\n")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", model_dir, "--scoring", "log-likelihood",
                "--max-tokens", "120")
    assert r.exit_code == 0, r.stderr
    rows = _table(r.stdout)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()

    def log_likelihood(sequence):
        ids = tokenizer(" ".join(sequence), return_tensors="pt")["input_ids"]
        assert ids.shape[1] == len(sequence) + 2
        with torch.no_grad():
            lp = model(input_ids=ids).logits[0].log_softmax(-1)
        return sum(float(lp[t - 1, ids[0, t]]) for t in range(1, len(sequence) + 1))

    wild = log_likelihood(SEQ)
    for row, text in zip(rows, variants):
        mutant = SEQ
        for m in parse_variant(text, SEQ):
            mutant = mutant[:m.position] + m.mt + mutant[m.position + 1:]
        want = log_likelihood(mutant) - wild
        assert float(row[f"{model_dir.name}_log_likelihood"]) == pytest.approx(want, abs=1e-4)
    r = run_cli("variants", table, "--sequence", SEQ, "-m", model_dir)
    assert r.exit_code == 2 and "--scoring log-likelihood" in r.stderr
    r = run_cli("variants", table, "--sequence", SEQ, "-m", tiny_models["esm"], "--scoring", "log-likelihood")
    assert r.exit_code == 2 and "causal" in r.stderr


def test_a_scoring_the_model_cannot_read_names_no_keyword_the_scorer_lacks(tiny_models, monkeypatch):
    """VariantScorer.score(seq, variants, strategy) with a causal LM and a two-sided scoring was
    told "give strategies=('log-likelihood',)", VariantOptions' field, which score() has not (its
    keyword is `strategy`): the scoring is named as the masked LM's refusal names it, and the
    command line keeps its flag."""
    from protrans_cli import console
    from protrans_cli.errors import UsageError
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    causal = VariantScorer(load_model(tiny_models["transfo_xl"], masked_lm=True), progress=False)
    variants = [parse_variant("K2A", SEQ)]
    with pytest.raises(UsageError) as caught:
        causal.score(SEQ, variants, "masked-marginals")
    assert str(caught.value).endswith("a causal language model reads left to right: give the scoring "
                                      "'log-likelihood'"), str(caught.value)
    monkeypatch.setattr(console.state, "command_line", True)
    with pytest.raises(UsageError, match="reads left to right: give --scoring log-likelihood$"):
        causal.score(SEQ, variants, "masked-marginals")


@pytest.mark.parametrize("families, scorings, says", [
    (("bert", "transfo_xl"), ("masked-marginals",), "reads left to right: give --scoring log-likelihood"),
    (("roberta",), ("log-likelihood",), "is for causal language models"),
    (("albert", "t5"), ("masked-marginals", "wt-marginals"), "a T5 decoder rebuilding"),
    (("electra", "xlnet"), ("wt-marginals",), "XLNet predicts a residue only from the others"),
])
def test_a_scoring_a_model_cannot_read_is_refused_before_any_model_loads(run_cli, tmp_path, tiny_models, monkeypatch,
                                                                         families, scorings, says):
    """A model's config says which scorings it reads: an ensemble whose second model refuses the
    scoring (a causal LM among masked ones, T5 or XLNet given wt-marginals) was refused only after
    the first had been loaded and had scored every variant; now in one line, no model loaded."""
    import protrans_cli.models

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(protrans_cli.models, "load_model", no_load)
    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\n")
    args = ["variants", table, "--sequence", SEQ, "-o", tmp_path / "out.csv"]
    for family in families:
        args += ["-m", tiny_models[family]]
    for scoring in scorings:
        args += ["--scoring", scoring]
    r = run_cli(*args)
    assert r.exit_code == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and says in r.stderr, r.stderr
    assert str(tiny_models[families[-1]]) in r.stderr and not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("family", ["bert", "transfo_xl", "esm"])
def test_a_protein_over_a_given_max_length_is_not_said_to_exceed_what_the_model_was_trained_on(tiny_models, family):
    """--max-length given: the refusal names it as the limit given, with the model's own limit
    beside it (a ProtTXL, which holds any length, was said to hold 10 residues). Not given: the
    model's own limit, not `--max-length` (named as though the user had given it), and whether
    --max-length can raise it (to its learned positions' length), from the scorer's own numbers."""
    from protrans_cli.errors import InputError
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    loaded = load_model(tiny_models[family], masked_lm=True)
    scorer = VariantScorer(loaded, max_length=10, progress=False)
    with pytest.raises(InputError) as caught:
        scorer.check_length(SEQ)
    own = VariantScorer(loaded, progress=False)
    mine = ("none: it reads any length" if own.max_length is None else
            f"{own.max_length:,} residues, what it was trained on or holds")
    way_out = "a causal LM's" if family == "transfo_xl" else "long_policy='window' scores"
    assert (f"the sequence has 55 residues, more than max_length=10 (the limit given; the model's own: {mine}); "
            f"{way_out}") in str(caught.value), str(caught.value)
    if own.max_length is None:  # (any length read: never refused)
        own.check_length("A" * 3000)
        return
    with pytest.raises(InputError) as caught:
        own.check_length("A" * 3000)
    said = str(caught.value)
    assert "max_length=" not in said and "the limit given" not in said
    assert f"has 3,000 residues, more than the {own.max_length:,} residues {loaded.name} was trained on or holds " \
           "(its own limit; " in said, said
    if own.model_limit is not None and own.model_limit <= own.max_length:
        assert "its learned positions hold no more, so max_length cannot raise it)" in said, said
    else:
        assert "a larger max_length reads more, past what it was trained on" in said, said
        assert (own.model_limit is None) == ("(its learned positions)" not in said), said


def test_a_causal_lm_refuses_a_long_wild_type_under_long_policy_window(tiny_models):
    """A causal LM's likelihood is not read in windows: a wild type over --max-length is refused
    under --long-policy window too (it was scored on its first window alone, without a word)."""
    from protrans_cli.errors import InputError
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    scorer = VariantScorer(load_model(tiny_models["transfo_xl"], masked_lm=True), progress=False, max_length=10,
                           long_policy="window")
    with pytest.raises(InputError, match="has 20 residues, more than max_length=10 .*not read in windows"):
        scorer.score(SEQ[:20], [parse_variant("K2A", SEQ[:20])], "log-likelihood")


def test_prostt5_is_refused_its_decoder_writes_3di(run_cli, tmp_path, tiny_models):
    """A T5 whose input starts with ProstT5's <AA2fold>: its decoder translates into 3Di letters,
    so reading amino acids from it would be noise: refused naming the reason."""
    from transformers import AutoTokenizer

    from protrans_cli.models import FAMILIES
    from protrans_cli.models.tokenizers import save_tokenizer

    family = FAMILIES["t5"]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_models["t5"]))
    tokenizer.add_tokens(list("acdefghiklmnpqrstvwy") + ["<AA2fold>", "<fold2AA>"])
    model = family.pretraining_model(family.build_config("tiny", tokenizer))
    model.resize_token_embeddings(len(tokenizer))
    model.save_pretrained(tmp_path / "prostt5")
    save_tokenizer(tokenizer, tmp_path / "prostt5")
    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\n")
    r = run_cli("variants", table, "--sequence", SEQ, "-m", tmp_path / "prostt5")
    assert r.exit_code == 1 and "<AA2fold>" in r.stderr and "score with ProtT5" in r.stderr


def test_a_utf16_table_is_read_and_a_binary_file_refused(run_cli, tmp_path, tiny_models):
    """Excel's "Unicode Text" (UTF-16 with a byte-order mark, tab-separated) and UTF-16 without
    one are tables like any other; an HDF5 file given as the table is refused in one line."""
    model = tiny_models["esm"]
    text = "mutant\tnote\nK2A\tx\nT3W:Q9E\ty\n"
    (tmp_path / "plain.tsv").write_text(text)
    want = run_cli("variants", tmp_path / "plain.tsv", "--sequence", SEQ, "-m", model, "--column", "s")
    assert want.exit_code == 0, want.stderr
    for name, data in (("bom.tsv", text.encode("utf-16")), ("le.tsv", text.encode("utf-16-le"))):
        (tmp_path / name).write_bytes(data)
        r = run_cli("variants", tmp_path / name, "--sequence", SEQ, "-m", model, "--column", "s")
        assert r.exit_code == 0, r.stderr
        assert r.stdout == want.stdout
    (tmp_path / "e.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    r = run_cli("variants", tmp_path / "e.h5", "--sequence", SEQ, "-m", model)
    assert r.exit_code == 1 and "e.h5: is an HDF5 file (such as embed writes), not a variants table" in r.stderr


def test_offset_numbers_the_all_singles_labels_and_reads_a_table_at_the_same_sites(run_cli, tmp_path, tiny_models):
    # --offset N: the first residue is N, in the labels --all-singles writes as in a table read
    model, seq = tiny_models["esm"], SEQ[:6]
    plain = _table(run_cli("variants", "--all-singles", "--sequence", seq, "-m", model, "--column", "s").stdout)
    r = run_cli("variants", "--all-singles", "--sequence", seq, "-m", model, "--column", "s", "--offset", "24")
    assert r.exit_code == 0, r.stderr
    shifted = _table(r.stdout)
    relabel = [f"{row['mutant'][0]}{int(row['mutant'][1:-1]) + 23}{row['mutant'][-1]}" for row in plain]
    assert [(row["mutant"], row["s"]) for row in shifted] == list(zip(relabel, [row["s"] for row in plain]))
    assert shifted[0]["mutant"].startswith(f"{seq[0]}24")
    table = tmp_path / "v.csv"
    table.write_text("mutant\n" + "\n".join(row["mutant"] for row in shifted[::7]) + "\n")
    r = run_cli("variants", str(table), "--sequence", seq, "-m", model, "--column", "s", "--offset", "24")
    assert r.exit_code == 0, r.stderr
    assert [(row["mutant"], row["s"]) for row in _table(r.stdout)] == [(row["mutant"], row["s"]) for row in shifted[::7]]


def test_a_signal_as_variants_reports_its_spearman_exits_0(run_cli, tmp_path, tiny_models, monkeypatch):
    """A SIGTERM while variants said Spearman's rho (its table and plot written) exited 143 for an
    output already whole: the CLI marked it complete only after the library call. Exit 0 now,
    saying nothing was lost."""
    from conftest import signal_when_said

    table = tmp_path / "v.csv"
    table.write_text("mutant,DMS_score\nK2A,0.5\nT3W,-1.0\nS13P,1.5\n")
    signal_when_said(monkeypatch, "Spearman rho")
    out = tmp_path / "scored.csv"
    r = run_cli("variants", table, "--sequence", SEQ, "-m", tiny_models["esm"], "--truth-column", "DMS_score",
                "-o", out)
    assert r.exit_code == 0, r.stderr
    assert f"terminated once the output was complete ({out}): nothing was lost" in r.stderr
    assert out.is_file()


def test_a_wild_type_of_dna_or_rna_is_scored_with_a_warning(run_cli, tmp_path, tiny_models):
    """A coding sequence given for its protein was scored as alanines, cysteines, glycines and
    threonines without a word (embed and prep warn): one warning naming it, the scores still
    written; a protein wild type gets none."""
    model = tiny_models["esm"]
    dna = "ATGGCTAGCAAAGGAGAAGAACTTTTCACTGGAGTTGTCCC"
    fasta = tmp_path / "mixed.fa"
    fasta.write_text(f">gene\n{dna}\n>prot\n{SEQ[:12]}\n>rna\n{dna.replace('T', 'U')}\n")
    r = run_cli("variants", "--all-singles", "--fasta", fasta, "-m", model, "--column", "s")
    assert r.exit_code == 0, r.stderr
    assert r.stderr.count("warning") == 1 and "2 of 3 wild type(s) hold only the letters A, C, G, T, U" in r.stderr
    assert "gene, rna. Protein models read them as amino acids" in r.stderr and "prot," not in r.stderr
    assert {row["id"] for row in _table(r.stdout)} == {"gene", "prot", "rna"}
    r = run_cli("variants", "--all-singles", "--sequence", dna.lower(), "-m", model, "--column", "s")
    assert r.exit_code == 0 and "--sequence: 1 of 1 wild type(s) hold only" in r.stderr, r.stderr
    r = run_cli("variants", "--all-singles", "--sequence", SEQ[:12], "-m", model, "--column", "s")
    assert r.exit_code == 0 and r.stderr.count("warning") == 0, r.stderr


def test_a_link_as_output_keeps_its_work_and_lock_beside_where_it_leads(run_cli, tmp_path, monkeypatch):
    """-o a link of the user's own: the table is written where it leads, and so the lock and the
    work kept for --resume are the target's (beside the link, a run on the link and one on its
    target took two locks, and --resume of one missed the other's work). A device takes none."""
    from protrans_cli import variants
    from protrans_cli.io import files

    made, locked = [], []
    real_store, real_lock = variants.UnitStore, files.output_lock
    monkeypatch.setattr(variants, "UnitStore", lambda folder, **kw: made.append(Path(folder)) or real_store(folder, **kw))
    monkeypatch.setattr(files, "output_lock", lambda path, *a, **kw: locked.append(Path(path)) or real_lock(path, *a, **kw))
    (tmp_path / "scratch").mkdir()
    (tmp_path / "out.csv").symlink_to(tmp_path / "scratch" / "real.csv")
    r = run_cli("variants", "--all-singles", "--sequence", "MKTA", "-m", REFERENCES["esm2"], "-o", tmp_path / "out.csv")
    assert r.exit_code == 0, r.stderr
    assert made == [tmp_path / "scratch" / "real.csv.partial"] and locked == [tmp_path / "scratch" / "real.csv"]
    assert (tmp_path / "out.csv").is_symlink() and (tmp_path / "scratch" / "real.csv").read_text().startswith("mutant")
    made.clear(), locked.clear()
    r = run_cli("variants", "--all-singles", "--sequence", "MKTA", "-m", REFERENCES["esm2"], "-o", "/dev/null")
    assert r.exit_code == 0 and made == [] and locked == [], r.stderr


def test_a_log_gets_progress_lines(run_cli, monkeypatch):
    """stderr that is no terminal (a batch job's log) gets a plain progress line every
    PROTRANS_PROGRESS_INTERVAL seconds (0 here: one per update) while sites are scored; it got none."""
    monkeypatch.delenv("PROTRANS_NO_PROGRESS", raising=False)
    monkeypatch.setenv("PROTRANS_PROGRESS_INTERVAL", "0")
    seq = _proteins("esm2")["mixed_40"]
    r = run_cli("variants", "--all-singles", "--sequence", seq, "-m", REFERENCES["esm2"], "--scoring",
                "masked-marginals", "--max-tokens", "200")
    assert r.exit_code == 0, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("scoring: ")]
    assert lines and "(100%)" in lines[-1], r.stderr


def test_a_unit_kept_for_resume_advances_a_log_line_out_of_its_rate():
    """In a log (a requeued batch job's) the work a resumed run finds kept counts in the
    position, not in the rate and time left: counted as this run's, the rate was several times
    the real one; a unit computed now counts in both."""
    from protrans_cli import console
    from protrans_cli.variants import _run_unit

    bar = console.LogProgress(total=10, desc="scoring", unit="site", interval=3600)
    kept = _run_unit(lambda key, compute, check: "kept", "u1", lambda: "new", bar, 4, None)
    assert kept == "kept" and (bar.n, bar.n - bar.initial) == (4, 0)
    computed = _run_unit(lambda key, compute, check: compute(), "u2", lambda: "new", bar, 6, None)
    assert computed == "new" and (bar.n, bar.n - bar.initial) == (4, 0)  # (its scoring advances the bar)


def test_spearman_against_the_truth_column_over_two_one_and_no_scored_variants():
    """Spearman's rho over the rows with both numbers: two variants give +-1 (all two points can
    say), one or none give nan (said as such, never a number of one point); a row whose truth is
    not a number, or whose score is empty (a stop), is not counted."""
    from protrans_cli.variants import VariantOptions, VariantTable, _report_truth

    header = ["mutant", "DMS_score"]
    rows = [["K2A", "0.5"], ["T3W", "-1"], ["K2*", "2"], ["S13P", "NA"]]
    table = VariantTable("t.csv", header, rows, [2, 3, 4, 5])
    options = VariantOptions(truth_column="DMS_score")
    nan = float("nan")
    for scores, want in (([1.0, 2.0, nan, 0.0], -1.0), ([2.0, 1.0, nan, 0.0], 1.0), ([1.0, nan, nan, 5.0], nan),
                         ([nan, nan, nan, 1.0], nan)):
        got = _report_truth(table, [("s", np.array(scores))], options)["s"]
        assert got == want or (np.isnan(want) and np.isnan(got)), (scores, got)


def test_a_tsv_whose_header_holds_a_comma_is_read_as_a_tsv(tmp_path):
    """A tab in the header line makes a TSV, as label tables are read: a header holding a comma
    (`score (log2, norm)`) made a comma-separated table of it, "has no 'mutant' column (columns:
    mutant\\tDMS_score\\t...)" though the column was there. A CSV with commas in its data is a CSV."""
    from protrans_cli.variants import VariantOptions, read_variant_table

    (tmp_path / "v.tsv").write_text("mutant\tscore (log2, norm)\tnote\nK2A\t0.5\ta, b\nT3W:Q9E\t-1\tx\n")
    table = read_variant_table(tmp_path / "v.tsv", [("wt", SEQ)], VariantOptions(truth_column="score (log2, norm)"))
    assert table.delimiter == "\t" and table.header == ["mutant", "score (log2, norm)", "note"]
    assert table.rows == [["K2A", "0.5", "a, b"], ["T3W:Q9E", "-1", "x"]]
    (tmp_path / "v.csv").write_text('mutant,score\nK2A,"0,5"\n')
    table = read_variant_table(tmp_path / "v.csv", [("wt", SEQ)], VariantOptions())
    assert table.delimiter == "," and table.rows == [["K2A", "0,5"]]


def test_zero_limits_and_the_librarys_own_option_mistakes_are_usage_errors_before_any_model(run_cli, tmp_path):
    """--max-length 0 and --max-tokens 0 (which click lets through) are refused in one line before
    any model is loaded (-m names none here); VariantOptions refuse what the CLI's choices and
    defaults keep out: one str for the tuples, no model, an unknown scoring, embed's --long-policy
    chunk, an unknown dtype."""
    from protrans_cli.errors import UsageError
    from protrans_cli.variants import VariantOptions, run_variants

    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\n")
    out = tmp_path / "s.csv"
    for flag in ("--max-length", "--max-tokens"):
        r = run_cli("variants", table, "--sequence", SEQ, "-m", tmp_path / "no_such_model", flag, "0", "-o", out)
        assert r.exit_code == 2 and f"{flag} must be at least 1, got 0" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1
    nothing = (str(tmp_path / "no_such_model"),)
    cases = [
        (dict(models="esm2_t6_8M_UR50D"), "models and strategies are tuples of names, not one str"),
        (dict(models=()), "no model given"),
        (dict(models=nothing, strategies=("masked_marginals",)),
         "strategies must be one of masked-marginals, wt-marginals, pseudo-ppl, log-likelihood, got "
         "'masked_marginals'"),
        (dict(models=nothing, strategies=()),
         "strategies: give one or more of masked-marginals, wt-marginals, pseudo-ppl, log-likelihood"),
        (dict(models=nothing, long_policy="chunk"), "long_policy must be one of error, window, got 'chunk'"),
        (dict(models=nothing, dtype="fp8"), "dtype must be one of auto, float32, bfloat16, float16, got 'fp8'"),
    ]
    for kw, message in cases:
        with pytest.raises(UsageError) as err:
            run_variants(out, VariantOptions(**kw), variants_file=table, sequence=SEQ)
        assert str(err.value) == message, kw
    assert not out.exists() and not (tmp_path / "s.csv.partial").exists()


def test_an_output_another_run_holds_is_refused_by_every_command_that_keeps_units(run_cli, tmp_path, tiny_models):
    """variants.unit_output_lock, the one lock of variants', perplexity's, generate's and
    translate's -o FILE: a run on a file another run holds stops at once, naming -o (and writes
    nothing); stdout takes no lock."""
    from protrans_cli.io.files import output_lock
    from protrans_cli.variants import unit_output_lock

    table = tmp_path / "v.csv"
    table.write_text("mutant\nK2A\n")
    fasta = tmp_path / "a.fa"
    fasta.write_text(f">a\n{SEQ[:12]}\n")
    for command, args, out in (("variants", [table, "--sequence", SEQ[:12]], tmp_path / "o.csv"),
                               ("perplexity", [fasta], tmp_path / "o.tsv")):
        with output_lock(out, "held by the test"):
            r = run_cli(command, *args, "-m", tiny_models["esm"], "-o", out)
        assert r.exit_code == 1 and (f"{out}: is the output of another protrans run that is running now: wait for "
                                     "it to end, or choose another -o") in r.stderr, (command, r.stderr)
        assert not out.exists() and not (tmp_path / f"{out.name}.partial").exists()
    with unit_output_lock("-", False):
        pass
