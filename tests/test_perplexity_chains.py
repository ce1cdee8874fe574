"""`protrans perplexity --chains`: protein complexes (chains separated by ':') scored joined by
ESMFold's glycine linker (every residue of the chains scored, the linker read but not scored) or
chain by chain, against plain transformers loops over the joined sequence; and the FASTA read as a
stream, a unit of work at a time."""

from __future__ import annotations

import csv
import io
import math

import pytest

torch = pytest.importorskip("torch")

from conftest import save_tiny_model  # noqa: E402
from test_perplexity import _plain_causal_sites  # noqa: E402

HEAVY, LIGHT = "MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQ"
TRIMER = ("ACDEFGHIK", "LMNPQRSTVWY", "MKV")
RECORDS = {"hl": f"{HEAVY}:{LIGHT}", "joined": HEAVY + LIGHT, "trimer": ":".join(TRIMER), "heavy": HEAVY,
           "copy": f"{HEAVY}:{LIGHT}"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return {name: save_tiny_model(tmp_path_factory, name) for name in ("esm", "transfo_xl")}


def _fasta(path, records=RECORDS):
    path.write_text("".join(f">{k}\n{v}\n" for k, v in records.items()))
    return path


def _table(text: str, delimiter: str = "\t") -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


def _residue_sites(chains, linker: int) -> list[int]:
    """The positions of the chains' residues in the joined sequence (the linker's left out)."""
    keep, start = [], 0
    for chain in chains:
        keep += range(start, start + len(chain))
        start += len(chain) + linker
    return keep


def _plain_joined(model_dir, chains, linker: int, method: str) -> list[float]:
    """The plain loop over the joined sequence: each residue site of the chains masked in turn
    (pseudo) or read unmasked (wt-marginals), a transformers forward, log_softmax, the true
    residue's log-probability; the linker's sites neither masked nor read."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    joined = ("G" * linker).join(chains)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForMaskedLM.from_pretrained(str(model_dir), use_kernels=False).eval()
    ids = tokenizer(joined, return_tensors="pt")["input_ids"]
    residue_ids = tokenizer.convert_tokens_to_ids(list(joined))
    values = []
    with torch.no_grad():
        unmasked = model(input_ids=ids).logits[0].log_softmax(-1)
        for i in _residue_sites(chains, linker):
            if method == "pseudo":
                masked = ids.clone()
                masked[0, 1 + i] = tokenizer.mask_token_id
                lp = model(input_ids=masked).logits[0, 1 + i].log_softmax(-1)
            else:
                lp = unmasked[1 + i]
            values.append(float(lp[residue_ids[i]]))
    return values


def _chains_of(ident):
    return RECORDS[ident].split(":")


def _check_sites(rows, sites, want: dict, tolerance: float):
    """Per-residue rows under --chains: position over the complex's residues, its chain and place
    in the chain (export's columns, all from 1), each value the reference's, summing to the row."""
    assert list(sites[0]) == ["id", "position", "residue", "chain", "chain_position", "log_probability"]
    assert [(s["id"], s["position"], s["residue"], s["chain"], s["chain_position"]) for s in sites] == [
        (row["id"], str(p), letter, str(c), str(i)) for row in rows
        for p, (letter, (c, i)) in enumerate(zip(RECORDS[row["id"]].replace(":", ""),
                                                 [(c, i) for c, chain in enumerate(_chains_of(row["id"]), 1)
                                                  for i in range(1, len(chain) + 1)]), start=1)]
    for row in rows:
        values = [float(s["log_probability"]) for s in sites if s["id"] == row["id"]]
        assert values == pytest.approx(want[row["id"]], abs=tolerance), row["id"]
        assert sum(values) == pytest.approx(float(row["log_likelihood"]), abs=5e-7 * len(values) + 1e-6)
        assert int(row["length"]) == len(values)
        assert float(row["perplexity"]) == pytest.approx(math.exp(-sum(want[row["id"]]) / len(values)), rel=1e-4)


@pytest.mark.parametrize("linker", [25, 7])
def test_linker_scores_every_residue_of_the_joined_chains_as_the_plain_loop(run_cli, tmp_path, tiny, linker):
    """--chains linker, pseudo: each residue of the chains masked in the joined sequence, to 1e-5
    of the plain loop; the linker neither scored nor counted; `A:B` is not `AB`; the same complex
    twice is read once, and only its residue sites are masked (no pass for a linker site)."""
    from protrans_cli.variants import VariantScorer

    model = tiny["esm"]
    original = VariantScorer.site_log_probs
    masked_sites = []

    def counting(self, sequences, sites, **kwargs):
        masked_sites.extend((sequences[s], p) for s, p in sites)
        return original(self, sequences, sites, **kwargs)

    VariantScorer.site_log_probs = counting
    try:
        r = run_cli("perplexity", _fasta(tmp_path / "in.fa"), "-m", model, "--chains", "linker", "--linker-length",
                    str(linker), "-o", tmp_path / "o.tsv", "--per-residue", tmp_path / "s.tsv")
    finally:
        VariantScorer.site_log_probs = original
    assert r.exit_code == 0, r.stderr
    want = {ident: _plain_joined(model, _chains_of(ident), linker, "pseudo") for ident in RECORDS}
    rows = _table((tmp_path / "o.tsv").read_text())
    assert [row["id"] for row in rows] == list(RECORDS)
    for row in rows:
        assert float(row["log_likelihood"]) == pytest.approx(sum(want[row["id"]]), abs=1e-5)
    _check_sites(rows, _table((tmp_path / "s.tsv").read_text()), want, 1e-5)
    assert float(rows[0]["log_likelihood"]) != pytest.approx(float(rows[1]["log_likelihood"]), abs=1e-3)  # A:B, AB
    joined = {ident: ("G" * linker).join(_chains_of(ident)) for ident in RECORDS}
    expected = {(joined[i], p) for i in ("hl", "joined", "trimer", "heavy")
                for p in _residue_sites(_chains_of(i), linker)}
    assert sorted(masked_sites) == sorted(expected)  # each once: "copy" is "hl"; no linker site


def test_separate_is_the_sum_of_each_chain_run_alone(run_cli, tmp_path, tiny):
    """--chains separate: a complex's log-likelihood is the sum of its chains', each scored as a
    protein of that sequence alone (the same run over the chains as records), perplexity over all
    its residues; a chain that is also a record of its own is read once."""
    from protrans_cli.variants import VariantScorer

    model = tiny["esm"]
    chains = {f"c{i}": c for i, c in enumerate([HEAVY, LIGHT, *TRIMER, HEAVY + LIGHT])}
    alone = run_cli("perplexity", _fasta(tmp_path / "chains.fa", chains), "-m", model)
    assert alone.exit_code == 0, alone.stderr
    by_chain = {chains[row["id"]]: float(row["log_likelihood"]) for row in _table(alone.stdout)}
    calls = []
    original = VariantScorer.residue_log_probs

    def counting(self, sequences, **kwargs):
        calls.extend(sequences)
        return original(self, sequences, **kwargs)

    VariantScorer.residue_log_probs = counting
    try:
        r = run_cli("perplexity", _fasta(tmp_path / "in.fa"), "-m", model, "--chains", "separate",
                    "--per-residue", "-", "-o", tmp_path / "o.tsv")
    finally:
        VariantScorer.residue_log_probs = original
    assert r.exit_code == 0, r.stderr
    assert sorted(calls) == sorted({HEAVY, LIGHT, HEAVY + LIGHT, *TRIMER})
    rows = _table((tmp_path / "o.tsv").read_text())
    for row in rows:
        want = sum(by_chain[c] for c in _chains_of(row["id"]))
        residues = sum(len(c) for c in _chains_of(row["id"]))
        assert int(row["length"]) == residues
        assert float(row["log_likelihood"]) == pytest.approx(want, abs=1e-5)
        assert float(row["perplexity"]) == pytest.approx(math.exp(-want / residues), rel=1e-5)
    sites = _table(r.stdout)
    assert [s["chain"] for s in sites if s["id"] == "trimer"] == ["1"] * 9 + ["2"] * 11 + ["3"] * 3
    assert [s["chain_position"] for s in sites if s["id"] == "hl"][20:25] == ["21", "22", "1", "2", "3"]


@pytest.mark.parametrize("method", ["wt-marginals", "causal"])
def test_linker_under_one_pass_methods_reads_the_linker_as_context_only(run_cli, tmp_path, tiny, method):
    """wt-marginals (one unmasked pass of the joined sequence) and a causal LM (Transformer-XL,
    each residue given all tokens before it, the linker's included): the chains' residues' values
    of the plain forward, the linker's dropped."""
    family = "transfo_xl" if method == "causal" else "esm"
    model = tiny[family]
    records = {k: RECORDS[k] for k in ("hl", "trimer", "heavy")}
    r = run_cli("perplexity", _fasta(tmp_path / "in.fa", records), "-m", model, "--method", method, "--chains",
                "linker", "--linker-length", "5", "-o", tmp_path / "o.tsv", "--per-residue", tmp_path / "s.tsv")
    assert r.exit_code == 0, r.stderr
    if method == "causal":
        want = {i: [_plain_causal_sites(model, "GGGGG".join(_chains_of(i)))[p]
                    for p in _residue_sites(_chains_of(i), 5)] for i in records}
    else:
        want = {i: _plain_joined(model, _chains_of(i), 5, method) for i in records}
    rows = _table((tmp_path / "o.tsv").read_text())
    assert [row["id"] for row in rows] == list(records) and {row["method"] for row in rows} == {method}
    _check_sites(rows, _table((tmp_path / "s.tsv").read_text()), want, 1e-4 if method == "causal" else 1e-5)


def test_resume_keys_tell_complexes_linkers_and_policies_apart(run_cli, tmp_path, tiny, monkeypatch):
    """A unit kept under --chains linker --linker-length 25 is not read by a resumed run with
    another linker length (nor another policy): the resumed table is that of a fresh run of its
    own options; `A:B` read whole, `AB` and the chains alone are distinct readings."""
    import protrans_cli.perplexity as perplexity
    from protrans_cli.variants import VariantScorer

    keys = {w.key for seq, chains, n in ((f"{HEAVY}:{LIGHT}", "linker", 25), (f"{HEAVY}:{LIGHT}", "linker", 7),
                                         (HEAVY + LIGHT, "linker", 25), (HEAVY + LIGHT, "error", 25))
            for w in perplexity._works(seq, chains, n)}
    assert len(keys) == 3 and HEAVY + LIGHT in keys  # (a single chain is the same reading under any policy)
    assert {w.key for w in perplexity._works(f"{HEAVY}:{LIGHT}", "separate", 25)} == {HEAVY, LIGHT}

    monkeypatch.setattr(perplexity, "PROTEINS_PER_UNIT", 1)
    model = tiny["esm"]
    fasta = _fasta(tmp_path / "in.fa", {k: RECORDS[k] for k in ("hl", "trimer", "heavy")})
    fresh = run_cli("perplexity", fasta, "-m", model, "--chains", "linker", "--linker-length", "7", "-o",
                    tmp_path / "f.tsv")
    assert fresh.exit_code == 0, fresh.stderr
    original = VariantScorer.residue_log_probs
    calls = []

    def interrupting(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(VariantScorer, "residue_log_probs", interrupting)
    out = tmp_path / "o.tsv"
    r = run_cli("perplexity", fasta, "-m", model, "--chains", "linker", "-o", out)
    assert r.exit_code == 130 and len(list((tmp_path / "o.tsv.partial").glob("*.npy"))) == 2
    monkeypatch.setattr(VariantScorer, "residue_log_probs", original)
    r = run_cli("perplexity", fasta, "-m", model, "--chains", "linker", "--linker-length", "7", "-o", out, "--resume")
    assert r.exit_code == 0, r.stderr
    assert out.read_text() == (tmp_path / "f.tsv").read_text()


def test_the_fasta_is_read_a_unit_at_a_time_in_order(run_cli, tmp_path, tiny, monkeypatch):
    """Units of 2 readings: the table is the one-unit run's, rows in input order, a sequence that
    recurs units later read once; stdin (read twice: copied first) gives the same table."""
    import protrans_cli.perplexity as perplexity
    from protrans_cli.variants import VariantScorer

    model = tiny["esm"]
    records = {"a": "MKTAYIAK", "b": "GSHMLEDP", "c": f"{HEAVY}:{LIGHT}", "d": "ACDEFGHIK", "e": "MKTAYIAK",
               "f": "LMNPQRSTVWY", "g": f"{HEAVY}:{LIGHT}", "h": "GSHMLEDP"}
    fasta = _fasta(tmp_path / "in.fa", records)
    whole = run_cli("perplexity", fasta, "-m", model, "--chains", "linker")
    assert whole.exit_code == 0, whole.stderr
    monkeypatch.setattr(perplexity, "PROTEINS_PER_UNIT", 2)
    calls = []
    original = VariantScorer.residue_log_probs

    def counting(self, sequences, **kwargs):
        calls.append(list(sequences))
        return original(self, sequences, **kwargs)

    monkeypatch.setattr(VariantScorer, "residue_log_probs", counting)
    r = run_cli("perplexity", fasta, "-m", model, "--chains", "linker")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == whole.stdout
    assert [row["id"] for row in _table(r.stdout)] == list(records)
    assert len(calls) == 3 and sum(len(c) for c in calls) == 5  # 5 distinct readings, 2 a unit
    piped = run_cli("perplexity", "-", "-m", model, "--chains", "linker", input=fasta.read_bytes())
    assert piped.exit_code == 0, piped.stderr
    assert piped.stdout == whole.stdout


def test_chain_options_limits_and_warnings(run_cli, tmp_path, tiny):
    """--linker-length without --chains linker is said to be ignored (embed's warning); a complex
    over --max-length with its linkers is refused naming it, or left out under skip; a chain
    that is empty is refused in one line."""
    model = tiny["esm"]
    fasta = _fasta(tmp_path / "in.fa", {"hl": RECORDS["hl"], "short": "MKTAYIAK"})
    r = run_cli("perplexity", fasta, "-m", model, "--chains", "separate", "--linker-length", "5")
    assert r.exit_code == 0 and "--linker-length 5 ignored" in r.stderr, r.stderr
    r = run_cli("perplexity", fasta, "-m", model, "--chains", "linker", "--max-length", "50")
    assert r.exit_code == 1 and "record 'hl'" in r.stderr and "the complex with its linkers has 60" in r.stderr
    r = run_cli("perplexity", fasta, "-m", model, "--chains", "linker", "--max-length", "50", "--long-policy", "skip")
    assert r.exit_code == 0 and [row["id"] for row in _table(r.stdout)] == ["short"] and "left out" in r.stderr
    r = run_cli("perplexity", fasta, "-m", model, "--chains", "separate", "--max-length", "50")
    assert r.exit_code == 0 and len(_table(r.stdout)) == 2, r.stderr  # (each chain alone is within it)
    empty = tmp_path / "empty.fa"
    empty.write_text(">x\nMKT:\n")
    r = run_cli("perplexity", empty, "-m", model, "--chains", "linker", "-o", tmp_path / "x.tsv")
    assert r.exit_code == 1 and "chain 2 of 2 is empty" in r.stderr and not (tmp_path / "x.tsv").exists()
    r = run_cli("perplexity", fasta, "-m", model, "--chains", "linker", "--linker-length", "-1")
    assert r.exit_code == 2 and "--linker-length" in r.stderr
