"""`protrans perplexity`: per-protein (pseudo-)perplexity against plain transformers loops.

The references: AutoModelForMaskedLM over the protein tokenized as text, each residue replaced by
the mask token in turn, log-softmax there, the true residue's log-probability summed (ESM-2 and
BERT); AutoModelForCausalLM's log-probability of each residue given those before it
(Transformer-XL); T5ForConditionalGeneration with each residue replaced by <extra_id_0> and the
protein as labels (ProtT5's objective).
"""

from __future__ import annotations

import csv
import gzip
import io
import math

import pytest

torch = pytest.importorskip("torch")

from conftest import save_tiny_models  # noqa: E402

SEQS = {"p1": "MKTAYIAKQRQISFVKSHFSRQ", "p2": "LEERLGLIEVQAPILSRVG", "p3": "MKTAYIAKQRQISFVKSHFSRQ",
        "p4": "GDGTQDNLSGAEKAVW"}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    return save_tiny_models(tmp_path_factory)


def _fasta(path, records=SEQS):
    path.write_text("".join(f">{k} some description\n{v}\n" for k, v in records.items()))
    return path


def _table(text: str, delimiter: str = "\t") -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


def _plain_pll(model_dir, family_name: str, sequence: str) -> float:
    """Mask residue i, log_softmax at it, pick the true token, sum: plain transformers."""
    return sum(_plain_pll_sites(model_dir, family_name, sequence))


def _plain_pll_sites(model_dir, family_name: str, sequence: str) -> list[float]:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForMaskedLM.from_pretrained(str(model_dir), use_kernels=False).eval()
    text = sequence if family_name == "esm" else " ".join(sequence)
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    residue_ids = tokenizer.convert_tokens_to_ids(list(sequence))
    start = next(i for i in range(ids.shape[1]) if ids[0, i:i + len(sequence)].tolist() == residue_ids)
    sites = []
    with torch.no_grad():
        for i in range(len(sequence)):
            masked = ids.clone()
            masked[0, start + i] = tokenizer.mask_token_id
            lp = model(input_ids=masked).logits[0, start + i].log_softmax(-1)
            sites.append(float(lp[residue_ids[i]]))
    return sites


def _plain_unmasked(model_dir, sequence: str) -> float:
    return sum(_plain_unmasked_sites(model_dir, sequence))


def _plain_unmasked_sites(model_dir, sequence: str) -> list[float]:
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForMaskedLM.from_pretrained(str(model_dir), use_kernels=False).eval()
    ids = tokenizer(sequence, return_tensors="pt")["input_ids"]
    residue_ids = tokenizer.convert_tokens_to_ids(list(sequence))
    with torch.no_grad():
        lp = model(input_ids=ids).logits[0, 1:1 + len(sequence)].log_softmax(-1)
    return [float(lp[i, t]) for i, t in enumerate(residue_ids)]


def _plain_causal_sites(model_dir, sequence: str) -> list[float]:
    """AutoModelForCausalLM: the logits before each residue's token, over `<s> residues </s>`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
    ids = tokenizer(" ".join(sequence), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        lp = model(input_ids=ids).logits[0].log_softmax(-1)
    return [float(lp[t - 1, ids[0, t]]) for t in range(1, len(sequence) + 1)]


def _check_per_residue(rows, sites: list[dict], want: dict, tolerance: float):
    """The per-residue table: each protein's residues in input order, 1-based, each value the plain
    reference's, and their sum the protein's log_likelihood of the main table."""
    assert [(r["id"], int(r["position"]), r["residue"]) for r in sites] == [
        (row["id"], p, letter) for row in rows for p, letter in enumerate(SEQS[row["id"]], start=1)]
    for row in rows:
        seq = SEQS[row["id"]]
        values = [float(r["log_probability"]) for r in sites if r["id"] == row["id"]]
        np_values = torch.tensor(values, dtype=torch.float64)
        assert torch.allclose(np_values, torch.tensor(want[seq], dtype=torch.float64), rtol=0, atol=tolerance), (
            row["id"], values, want[seq])
        # (the table's values rounded to 6 decimals: their sum within half a unit of that a residue)
        assert sum(values) == pytest.approx(float(row["log_likelihood"]), abs=5e-7 * len(seq) + 1e-6)


def _check_rows(rows, want: dict, method: str, tolerance: float):
    assert [r["id"] for r in rows] == list(SEQS)
    for row in rows:
        seq = SEQS[row["id"]]
        ll = float(row["log_likelihood"])
        assert int(row["length"]) == len(seq) and row["method"] == method
        assert ll == pytest.approx(want[seq], abs=tolerance)
        assert float(row["mean_log_likelihood"]) == pytest.approx(ll / len(seq), abs=1e-6)
        assert float(row["perplexity"]) == pytest.approx(math.exp(-ll / len(seq)), rel=1e-6)


@pytest.mark.parametrize("family_name", ["esm", "bert"])
def test_pseudo_perplexity_equals_a_plain_transformers_loop(run_cli, tmp_path, tiny_models, family_name):
    """Every residue masked in turn, against the plain loop, to 1e-5; identical sequences (p1, p3)
    computed once; the corpus perplexity on stderr is token-weighted; --max-tokens 1 (a pass per
    masked copy) gives the same table."""
    from protrans_cli.variants import VariantScorer

    model = tiny_models[family_name]
    fasta = _fasta(tmp_path / "in.fa")
    calls = []
    original = VariantScorer.residue_log_probs

    def counting(self, sequences, **kwargs):
        calls.extend(sequences)
        return original(self, sequences, **kwargs)

    VariantScorer.residue_log_probs = counting
    try:
        r = run_cli("perplexity", fasta, "-m", model)
    finally:
        VariantScorer.residue_log_probs = original
    assert r.exit_code == 0, r.stderr
    assert sorted(calls) == sorted(set(SEQS.values()))  # p3 is p1: computed once
    want = {seq: _plain_pll(model, family_name, seq) for seq in set(SEQS.values())}
    rows = _table(r.stdout)
    _check_rows(rows, want, "pseudo", 1e-5)
    total = sum(want[s] for s in SEQS.values())
    residues = sum(len(s) for s in SEQS.values())
    summary = next(line for line in r.stderr.splitlines() if "corpus perplexity" in line)
    assert f"4 proteins, {residues} residues" in summary
    assert f"corpus perplexity {math.exp(-total / residues):.4f}" in summary
    one = run_cli("perplexity", fasta, "-m", model, "--max-tokens", "1")
    assert one.exit_code == 0, one.stderr
    for a, b in zip(_table(one.stdout), rows):
        assert float(a["log_likelihood"]) == pytest.approx(float(b["log_likelihood"]), abs=1e-5)


def test_the_library_returns_the_corpus_figures(tmp_path, tiny_models):
    from protrans_cli.perplexity import PerplexityOptions, run_perplexity

    out = tmp_path / "o.csv"
    summary = run_perplexity(_fasta(tmp_path / "in.fa"), out, PerplexityOptions(model=str(tiny_models["esm"])))
    rows = _table(out.read_text(), ",")  # a .csv name: comma-separated
    total = sum(float(r["log_likelihood"]) for r in rows)
    assert summary.proteins == 4 and summary.residues == sum(len(s) for s in SEQS.values())
    assert summary.log_likelihood == pytest.approx(total, abs=1e-5)
    assert summary.perplexity == pytest.approx(math.exp(-total / summary.residues), rel=1e-6)
    assert summary.method == "pseudo"


def test_wt_marginals_read_one_unmasked_pass(run_cli, tmp_path, tiny_models):
    model = tiny_models["esm"]
    r = run_cli("perplexity", _fasta(tmp_path / "in.fa"), "-m", model, "--method", "wt-marginals")
    assert r.exit_code == 0, r.stderr
    want = {seq: _plain_unmasked(model, seq) for seq in set(SEQS.values())}
    _check_rows(_table(r.stdout), want, "wt-marginals", 1e-5)


def test_a_causal_lm_reads_left_to_right_and_refuses_the_masked_methods(run_cli, tmp_path, tiny_models):
    """Transformer-XL: each residue given those before it, AutoModelForCausalLM's logits over the
    tokenizer's own encoding (`<s> residues </s>`); --method pseudo is a usage error naming what it
    can, and a masked LM refuses --method causal."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = tiny_models["transfo_xl"]
    fasta = _fasta(tmp_path / "in.fa")
    r = run_cli("perplexity", fasta, "-m", model_dir)
    assert r.exit_code == 0, r.stderr
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()

    def log_likelihood(sequence):
        ids = tokenizer(" ".join(sequence), return_tensors="pt")["input_ids"]
        with torch.no_grad():
            lp = model(input_ids=ids).logits[0].log_softmax(-1)
        return sum(float(lp[t - 1, ids[0, t]]) for t in range(1, len(sequence) + 1))

    want = {seq: log_likelihood(seq) for seq in set(SEQS.values())}
    _check_rows(_table(r.stdout), want, "causal", 1e-4)
    r = run_cli("perplexity", fasta, "-m", model_dir, "--method", "pseudo")
    assert r.exit_code == 2 and "it can: causal" in r.stderr, r.stderr
    r = run_cli("perplexity", fasta, "-m", tiny_models["esm"], "--method", "causal")
    assert r.exit_code == 2 and "it can: pseudo, wt-marginals" in r.stderr, r.stderr


def test_t5_reads_each_masked_residue_from_its_decoder(run_cli, tmp_path, tiny_models):
    """ProtT5's pseudo-perplexity (the authors' answer: mask one token at a time), against
    T5ForConditionalGeneration given the protein as labels; wt-marginals refused for T5."""
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    model_dir = tiny_models["t5"]
    records = {"a": SEQS["p2"], "b": SEQS["p4"]}
    fasta = _fasta(tmp_path / "in.fa", records)
    r = run_cli("perplexity", fasta, "-m", model_dir)
    assert r.exit_code == 0, r.stderr
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = T5ForConditionalGeneration.from_pretrained(str(model_dir), use_kernels=False).eval()
    sentinel = tokenizer.convert_tokens_to_ids("<extra_id_0>")
    for row in _table(r.stdout):
        seq = records[row["id"]]
        ids = tokenizer(" ".join(seq), return_tensors="pt")["input_ids"]
        sites = torch.arange(len(seq))
        copies = ids.repeat(len(seq), 1)
        copies[sites, sites] = sentinel
        with torch.no_grad():
            lp = model(input_ids=copies, labels=ids.repeat(len(seq), 1)).logits[sites, sites].log_softmax(-1)
        want = float(sum(lp[i, tokenizer.convert_tokens_to_ids(c)] for i, c in enumerate(seq)))
        assert float(row["log_likelihood"]) == pytest.approx(want, abs=2e-4)
    r = run_cli("perplexity", fasta, "-m", model_dir, "--method", "wt-marginals")
    assert r.exit_code == 2 and "it can: pseudo" in r.stderr


def test_stdin_gzip_and_csv_give_the_same_table(run_cli, tmp_path, tiny_models):
    model = tiny_models["esm"]
    plain = _fasta(tmp_path / "in.fa")
    r = run_cli("perplexity", plain, "-m", model, "-o", tmp_path / "a.tsv")
    assert r.exit_code == 0, r.stderr
    want = (tmp_path / "a.tsv").read_text()
    assert want.splitlines()[0].split("\t") == ["id", "length", "log_likelihood", "mean_log_likelihood",
                                                "perplexity", "method"]
    piped = run_cli("perplexity", "-", "-m", model, input=plain.read_bytes())
    assert piped.exit_code == 0, piped.stderr
    assert piped.stdout == want
    gz = tmp_path / "in.fa.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    r = run_cli("perplexity", gz, "-m", model, "-o", tmp_path / "b.csv")
    assert r.exit_code == 0, r.stderr
    assert (tmp_path / "b.csv").read_text() == want.replace("\t", ",")


@pytest.mark.parametrize("family, method", [("t5", "wt-marginals"), ("xlnet", "wt-marginals"),
                                            ("transfo_xl", "pseudo"), ("bert", "causal")])
def test_a_method_the_model_cannot_read_is_refused_before_it_loads(run_cli, tmp_path, tiny_models, monkeypatch,
                                                                    family, method):
    """The model's config says which methods it reads: refused in one line naming those it can,
    without loading it (a large model's load was spent for the refusal)."""
    import protrans_cli.models

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(protrans_cli.models, "load_model", no_load)
    r = run_cli("perplexity", _fasta(tmp_path / "in.fa"), "-m", tiny_models[family], "--method", method,
                "-o", tmp_path / "out.tsv")
    assert r.exit_code == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and f"--method {method} is not one it can read" in r.stderr
    assert "it can: " in r.stderr and not (tmp_path / "out.tsv").exists()


def test_bad_input_is_refused_in_one_line_and_leaves_no_output(run_cli, tmp_path, tiny_models):
    model = tiny_models["esm"]
    out = tmp_path / "o.tsv"
    dup = tmp_path / "dup.fa"
    dup.write_text(">a\nMKT\n>b\nMKV\n>a\nMKW\n")
    r = run_cli("perplexity", dup, "-m", model, "-o", out)
    assert r.exit_code == 1 and "duplicate id" in r.stderr and "dup.fa:5" in r.stderr and "'a'" in r.stderr
    assert not out.exists()
    bad = tmp_path / "bad.fa"
    bad.write_text(">a\nMKT\n>b\nMKJV\n")
    r = run_cli("perplexity", bad, "-m", model, "-o", out)
    assert r.exit_code == 1 and "--invalid-policy skip" in r.stderr and not out.exists()
    r = run_cli("perplexity", bad, "-m", model, "-o", out, "--invalid-policy", "skip")
    assert r.exit_code == 0, r.stderr
    assert [row["id"] for row in _table(out.read_text())] == ["a"] and "left out" in r.stderr
    only_bad = tmp_path / "only_bad.fa"
    only_bad.write_text(">b\nMKJV\n")
    r = run_cli("perplexity", only_bad, "-m", model, "--invalid-policy", "skip")
    assert r.exit_code == 0 and r.stdout.splitlines() == ["id\tlength\tlog_likelihood\tmean_log_likelihood\t"
                                                          "perplexity\tmethod"]
    assert "no protein scored" in r.stderr
    r = run_cli("perplexity", bad, "-m", model, "--resume")
    assert r.exit_code == 2 and "stdout keeps none" in r.stderr
    # A complex (':') without --chains: refused in one line naming the policies that read it
    complex_ = tmp_path / "complex.fa"
    complex_.write_text(">ab\nMKT:MKV\n")
    r = run_cli("perplexity", complex_, "-m", model, "-o", tmp_path / "c.tsv")
    assert r.exit_code == 1 and "complex.fa:1, record 'ab'" in r.stderr and "chain break" in r.stderr
    assert "--chains linker or --chains separate reads it" in r.stderr and not (tmp_path / "c.tsv").exists()
    r = run_cli("perplexity", bad, "-m", model, "-o", bad)
    assert r.exit_code == 2 and "is also an input" in r.stderr


def test_long_proteins_error_skip_or_window(run_cli, tmp_path, tiny_models):
    """Over --max-length: refused before any work naming the record, left out, or read site by
    site in windows (a protein within the limit scores as without it)."""
    model = tiny_models["esm"]
    fasta = _fasta(tmp_path / "in.fa", {"short": "MKTAYIAK", "long": SEQS["p1"]})
    r = run_cli("perplexity", fasta, "-m", model, "--max-length", "10")
    assert r.exit_code == 1 and "'long'" in r.stderr and "--long-policy window" in r.stderr, r.stderr
    r = run_cli("perplexity", fasta, "-m", model, "--max-length", "10", "--long-policy", "skip")
    assert r.exit_code == 0 and [row["id"] for row in _table(r.stdout)] == ["short"]
    short = _table(r.stdout)[0]
    r = run_cli("perplexity", fasta, "-m", model, "--max-length", "10", "--long-policy", "window")
    assert r.exit_code == 0, r.stderr
    rows = {row["id"]: row for row in _table(r.stdout)}
    assert rows["short"]["log_likelihood"] == short["log_likelihood"]
    assert math.isfinite(float(rows["long"]["log_likelihood"]))


def test_the_progress_bar_counts_the_residues_scored_not_those_left_out(run_cli, tmp_path, tiny_models,
                                                                          progress_bars):
    """--long-policy skip: the bar's total counted the proteins left out too, and it ended short of
    it (8 of 8 + 40 residues); an identical sequence is one reading, counted once."""
    bars = progress_bars
    fasta = _fasta(tmp_path / "in.fa", {"short": "MKTAYIAK", "again": "MKTAYIAK", "other": "GSLEK",
                                        "long": SEQS["p1"]})
    r = run_cli("perplexity", fasta, "-m", tiny_models["esm"], "--max-length", "10", "--long-policy", "skip")
    assert r.exit_code == 0 and [row["id"] for row in _table(r.stdout)] == ["short", "again", "other"], r.stderr
    (bar,) = [b for b in bars if getattr(b, "desc", None) == "scoring"]
    assert bar.total == bar.n == 8 + 5


def test_an_interrupted_run_goes_on_with_resume_to_the_same_table(run_cli, tmp_path, tiny_models, monkeypatch):
    """A Ctrl-C after two units: exit 130 naming --resume, no table (nor per-residue table), the
    units kept in OUT.partial/; --resume computes the rest only and writes the uninterrupted tables
    (the kept units hold each residue's value: a --per-residue given on the resume alone is whole)."""
    import protrans_cli.perplexity as perplexity
    from protrans_cli.variants import VariantScorer

    monkeypatch.setattr(perplexity, "PROTEINS_PER_UNIT", 1)
    model = tiny_models["esm"]
    fasta = _fasta(tmp_path / "in.fa")
    whole = run_cli("perplexity", fasta, "-m", model, "-o", tmp_path / "w.tsv", "--per-residue", tmp_path / "ws.tsv")
    assert whole.exit_code == 0, whole.stderr
    original = VariantScorer.residue_log_probs
    calls = []

    def counting(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and interrupt:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VariantScorer, "residue_log_probs", counting)
    out = tmp_path / "o.tsv"
    interrupt = True
    r = run_cli("perplexity", fasta, "-m", model, "-o", out, "--per-residue", tmp_path / "s.tsv")
    assert r.exit_code == 130 and "--resume" in r.stderr and "o.tsv.partial" in r.stderr
    assert not (tmp_path / "s.tsv").exists()
    assert not out.exists() and len(list((tmp_path / "o.tsv.partial").glob("*.npy"))) == 2
    interrupt = False
    r = run_cli("perplexity", fasta, "-m", model, "-o", out)
    assert r.exit_code == 2 and "--resume goes on with it" in r.stderr
    calls.clear()
    r = run_cli("perplexity", fasta, "-m", model, "-o", out, "--resume", "--per-residue", tmp_path / "s.tsv")
    assert r.exit_code == 0, r.stderr
    assert "2 units of work kept" in r.stderr and len(calls) == 1  # 3 distinct sequences, 2 kept
    assert out.read_text() == (tmp_path / "w.tsv").read_text()
    assert (tmp_path / "s.tsv").read_text() == (tmp_path / "ws.tsv").read_text()
    assert not (tmp_path / "o.tsv.partial").exists()
    # a variants run's folder is not perplexity's work
    (tmp_path / "v.tsv.partial").mkdir()
    (tmp_path / "v.tsv.partial" / "protrans-variants.json").write_text("{}")
    r = run_cli("perplexity", fasta, "-m", model, "-o", tmp_path / "v.tsv", "--resume")
    assert r.exit_code == 2 and "not the work of a protrans perplexity run" in r.stderr


def test_help_lists_the_command_and_its_help_imports_no_torch(run_cli):
    import subprocess
    import sys

    r = run_cli("--help")
    assert any(line.split()[:1] == ["perplexity"] for line in r.stdout.splitlines()), r.stdout
    code = ("import sys\nfrom protrans_cli.cli import main\n"
            "try:\n    main(['perplexity', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "--method [pseudo|causal|wt-marginals]" in done.stdout, done.stdout + done.stderr
    assert done.stderr.strip().endswith("False"), done.stderr


@pytest.mark.parametrize("method", ["pseudo", "wt-marginals", "causal"])
def test_per_residue_log_probabilities_are_the_plain_loops_and_sum_to_the_table(run_cli, tmp_path, tiny_models,
                                                                                 method):
    """--per-residue: a row a residue in input order (p3, p1's sequence, computed once but written
    under its own id), each value the plain transformers reference's for the method, summing to
    the protein's log_likelihood; computed from the same passes (no call beyond the table's)."""
    from protrans_cli.variants import VariantScorer

    family = "transfo_xl" if method == "causal" else "esm"
    model = tiny_models[family]
    fasta = _fasta(tmp_path / "in.fa")
    name = "causal_residue_log_probs" if method == "causal" else "residue_log_probs"
    original = getattr(VariantScorer, name)
    calls = []

    def counting(self, sequences, **kwargs):
        calls.extend(sequences)
        return original(self, sequences, **kwargs)

    setattr(VariantScorer, name, counting)
    try:
        r = run_cli("perplexity", fasta, "-m", model, "--method", method, "-o", tmp_path / "o.tsv",
                    "--per-residue", tmp_path / "sites.csv")
    finally:
        setattr(VariantScorer, name, original)
    assert r.exit_code == 0, r.stderr
    assert sorted(calls) == sorted(set(SEQS.values()))
    reference = {"pseudo": lambda s: _plain_pll_sites(model, "esm", s),
                 "wt-marginals": lambda s: _plain_unmasked_sites(model, s),
                 "causal": lambda s: _plain_causal_sites(model, s)}[method]
    want = {seq: reference(seq) for seq in set(SEQS.values())}
    rows = _table((tmp_path / "o.tsv").read_text())
    text = (tmp_path / "sites.csv").read_text()
    assert text.splitlines()[0] == "id,position,residue,log_probability"  # (a .csv name: commas)
    _check_per_residue(rows, _table(text, ","), want, 1e-4 if method == "causal" else 1e-5)
    # on stdout when the main table goes to a file; a usage error when both would
    r = run_cli("perplexity", fasta, "-m", model, "--method", method, "-o", tmp_path / "o2.tsv", "--per-residue", "-")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == text.replace(",", "\t")
    assert (tmp_path / "o2.tsv").read_text() == (tmp_path / "o.tsv").read_text()


def test_per_residue_refusals_leave_no_output(run_cli, tmp_path, tiny_models):
    model = tiny_models["esm"]
    fasta = _fasta(tmp_path / "in.fa")
    out = tmp_path / "o.tsv"
    r = run_cli("perplexity", fasta, "-m", model, "--per-residue", "-")
    assert r.exit_code == 2 and "--per-residue -" in r.stderr and "stdout" in r.stderr and not r.stdout, r.stderr
    r = run_cli("perplexity", fasta, "-m", model, "-o", out, "--per-residue", out)
    assert r.exit_code == 2 and "is also -o" in r.stderr and not out.exists(), r.stderr
    r = run_cli("perplexity", fasta, "-m", model, "-o", out, "--per-residue", fasta)
    assert r.exit_code == 2 and "is also an input" in r.stderr and not out.exists(), r.stderr
    r = run_cli("perplexity", fasta, "-m", model, "-o", out, "--per-residue", tmp_path / "no" / "such" / "s.tsv")
    assert r.exit_code != 0 and not out.exists(), r.stderr
    from protrans_cli.errors import UsageError
    from protrans_cli.perplexity import PerplexityOptions

    with pytest.raises(UsageError, match="per_residue"):
        PerplexityOptions(model=str(model), per_residue=3).validate()
    # an empty --per-residue: the option named as the command line gives it ("per_residue is the
    # path of a table ..., got str ''" named the Python argument), and to a library call its keyword
    r = run_cli("perplexity", fasta, "-m", model, "-o", out, "--per-residue", "")
    assert r.exit_code == 2 and r.stderr == ("protrans: error: --per-residue is empty: give the path of a table (or "
                                             "'-' for stdout)\n") and not out.exists(), r.stderr
    with pytest.raises(UsageError, match=r"^per_residue is empty: give the path of a table"):
        PerplexityOptions(model=str(model), per_residue="").validate()


def test_the_scorers_likelihoods_are_the_sums_of_its_per_residue_values(tiny_models):
    """One code path: pseudo_log_likelihood and log_likelihood are the sums, in order, of
    residue_log_probs and causal_residue_log_probs (what variants' pseudo-ppl units keep)."""
    import numpy as np

    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer

    seqs = [SEQS["p2"], SEQS["p4"]]
    for family, sums, sites in (("esm", "pseudo_log_likelihood", "residue_log_probs"),
                                ("transfo_xl", "log_likelihood", "causal_residue_log_probs")):
        scorer = VariantScorer(load_model(str(tiny_models[family]), masked_lm=True), progress=False)
        per_site = getattr(scorer, sites)(seqs)
        assert [len(v) for v in per_site] == [len(s) for s in seqs]
        assert all(v.dtype == np.float64 for v in per_site)
        totals = getattr(scorer, sums)(seqs)
        assert totals.dtype == np.float64
        assert totals.tolist() == [sum(v.tolist()) for v in per_site]  # (in order: to the last bit)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_on_a_gpu_the_tables_are_the_cpus_within_its_precision(tmp_path, dtype):
    """Perplexity on cuda (pseudo and wt-marginals, with --per-residue) against the CPU's float32
    tables for a tiny ESM-2: bfloat16 to 0.1 a residue (variants' GPU test's tolerance), float32
    to 1e-4."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    from pathlib import Path

    from protrans_cli.perplexity import PerplexityOptions, run_perplexity

    reference = Path(__file__).parent / "data" / "esm_reference"
    lines = (reference / "input.fa").read_text().split()
    proteins = {lines[i][1:]: lines[i + 1] for i in range(0, len(lines), 2) if lines[i][1:] != "long"}
    fasta = _fasta(tmp_path / "in.fa", proteins)
    tolerance = 0.1 if dtype == "bfloat16" else 1e-4
    for method in ("pseudo", "wt-marginals"):
        tables = {}
        for where, device, compute in (("cpu", "cpu", "float32"), ("gpu", "cuda", dtype)):
            out, sites = tmp_path / f"{where}-{method}.tsv", tmp_path / f"{where}-{method}-sites.tsv"
            options = PerplexityOptions(model=str(reference), method=method, device=device, dtype=compute,
                                        per_residue=str(sites))
            run_perplexity(fasta, out, options)
            tables[where] = _table(out.read_text()), _table(sites.read_text())
        (cpu_rows, cpu_sites), (gpu_rows, gpu_sites) = tables["cpu"], tables["gpu"]
        assert [r["id"] for r in gpu_rows] == [r["id"] for r in cpu_rows] == list(proteins)
        assert [(r["id"], r["position"]) for r in gpu_sites] == [(r["id"], r["position"]) for r in cpu_sites]
        for a, b in zip(gpu_sites, cpu_sites):
            assert float(a["log_probability"]) == pytest.approx(float(b["log_probability"]), abs=tolerance), (method, a)
        for a, b in zip(gpu_rows, cpu_rows):
            assert float(a["mean_log_likelihood"]) == pytest.approx(float(b["mean_log_likelihood"]), abs=tolerance)
            assert float(a["log_likelihood"]) == pytest.approx(float(b["log_likelihood"]),
                                                               abs=tolerance * int(b["length"]))


@pytest.mark.parametrize("args", [["--per-residue", "/dev/stdout"], ["-o", "-", "--per-residue", "/dev/stdout"],
                                  ["-o", "/dev/stdout", "--per-residue", "-"], ["--per-residue", "STDOUT_FILE"]])
def test_both_tables_on_stdout_are_refused(tmp_path, tiny_models, args):
    """Only `--per-residue -` beside the main table on stdout was refused: /dev/stdout, or the
    file `> x` opened, is stdout too, and the two tables went out one after the other."""
    import subprocess
    import sys

    fasta = _fasta(tmp_path / "in.fa")
    target = tmp_path / "both.tsv"
    args = [str(target) if a == "STDOUT_FILE" else a for a in args]
    with open(target, "wb") as out:
        proc = subprocess.run([sys.executable, "-m", "protrans_cli", "perplexity", str(fasta), "-m",
                               str(tiny_models["esm"]), *args], stdout=out, stderr=subprocess.PIPE, text=True)
    shown = args[args.index("--per-residue") + 1]
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"protrans: error: --per-residue {shown} writes to stdout, where the main table goes: give -o FILE for it, "
        "or a file for --per-residue"), proc.stderr
    assert target.read_bytes() == b""
