"""`protrans variants --chains`: mutations of a complex (chains separated by ':'), numbered over
the complex's residues across its chains, scored with the chains joined by ESMFold's glycine
linker (against a plain transformers loop over the joined sequence) or each site in its own chain
read alone (against the single-chain path on that chain)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import save_tiny_model  # noqa: E402
from test_perplexity import _plain_causal_sites  # noqa: E402

HEAVY, LIGHT = "MKTAYIAKQRQISFVKSHFSRQ", "GSHMLEDPVDAFQ"
COMPLEX = f"{HEAVY}:{LIGHT}"
N = len(HEAVY)
# a heavy-chain site, a light-chain site (numbered on across the chains: light residue 4 is N + 4),
# a double over both chains, a synonymous site and the wild type
VARIANTS = ["K2A", f"M{N + 4}W", f"T3W:L{N + 5}E", "V15V", "WT"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return {name: save_tiny_model(tmp_path_factory, name) for name in ("esm", "transfo_xl")}


def _table(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _variants(tmp_path, variants=VARIANTS):
    path = tmp_path / "v.csv"
    path.write_text("mutant\n" + "\n".join(variants) + "\n")
    return path


def _sites(text: str) -> list[tuple[int, str, str]]:
    """(0-based position over the complex's residues, wild type, mutant) of each site of a variant."""
    if text == "WT":
        return []
    return [(int(w[1:-1]) - 1, w[0], w[-1]) for w in text.split(":")]


def _plain_linker(model_dir, chains, linker: int, variant: str, masked: bool) -> float:
    """The plain loop over the joined sequence: each site mapped past the linkers before it, masked
    (or the one unmasked pass), log_softmax, log p(mutant) - log p(wild type), summed."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    joined = ("G" * linker).join(chains)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForMaskedLM.from_pretrained(str(model_dir), use_kernels=False).eval()
    ids = tokenizer(joined, return_tensors="pt")["input_ids"]
    starts = np.cumsum([0] + [len(c) for c in chains])
    total = 0.0
    with torch.no_grad():
        for p, wt, mt in _sites(variant):
            chain = int(np.searchsorted(starts, p, side="right")) - 1
            at = p + chain * linker
            assert joined[at] == wt
            row = ids.clone()
            if masked:
                row[0, 1 + at] = tokenizer.mask_token_id
            lp = model(input_ids=row).logits[0, 1 + at].log_softmax(-1)
            mt_id, wt_id = tokenizer.convert_tokens_to_ids([mt, wt])
            total += float(lp[mt_id] - lp[wt_id])
    return total


def _plain_pll(model_dir, chains, linker: int) -> float:
    """The pseudo-log-likelihood of the joined chains: each residue of the chains masked in turn
    (the linker's sites neither masked nor counted)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    joined = ("G" * linker).join(chains)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForMaskedLM.from_pretrained(str(model_dir), use_kernels=False).eval()
    ids = tokenizer(joined, return_tensors="pt")["input_ids"]
    total, start = 0.0, 0
    with torch.no_grad():
        for chain in chains:
            for at in range(start, start + len(chain)):
                row = ids.clone()
                row[0, 1 + at] = tokenizer.mask_token_id
                lp = model(input_ids=row).logits[0, 1 + at].log_softmax(-1)
                total += float(lp[tokenizer.convert_tokens_to_ids(joined[at])])
            start += len(chain) + linker
    return total


@pytest.mark.parametrize("linker", [25, 3])
def test_linker_marginals_equal_a_plain_loop_over_the_joined_chains(run_cli, tmp_path, tiny, linker):
    table = _variants(tmp_path)
    r = run_cli("variants", table, "--sequence", COMPLEX, "-m", tiny["esm"], "--chains", "linker",
                "--linker-length", linker, "--scoring", "masked-marginals", "--scoring", "wt-marginals")
    assert r.exit_code == 0, r.stderr
    rows = _table(r.stdout)
    assert [row["mutant"] for row in rows] == VARIANTS
    for row, variant in zip(rows, VARIANTS):
        for masked, column in ((True, f"{tiny['esm'].name}_masked_marginals"),
                               (False, f"{tiny['esm'].name}_wt_marginals")):
            want = _plain_linker(tiny["esm"], [HEAVY, LIGHT], linker, variant, masked)
            assert float(row[column]) == pytest.approx(want, abs=1e-5), (variant, column)


def test_linker_pseudo_ppl_counts_the_chains_residues_alone(run_cli, tmp_path, tiny):
    variant = f"K2A:M{N + 4}W"
    r = run_cli("variants", _variants(tmp_path, [variant]), "--sequence", COMPLEX, "-m", tiny["esm"],
                "--chains", "linker", "--linker-length", "4", "--scoring", "pseudo-ppl")
    assert r.exit_code == 0, r.stderr
    mutant_heavy, mutant_light = "MA" + HEAVY[2:], LIGHT[:3] + "W" + LIGHT[4:]
    want = _plain_pll(tiny["esm"], [mutant_heavy, mutant_light], 4) - _plain_pll(tiny["esm"], [HEAVY, LIGHT], 4)
    assert float(_table(r.stdout)[0][f"{tiny['esm'].name}_pseudo_ppl"]) == pytest.approx(want, abs=1e-4)


def test_linker_log_likelihood_of_a_causal_lm_reads_the_linker_as_context(run_cli, tmp_path, tiny):
    variant = f"M{N + 4}W"
    r = run_cli("variants", _variants(tmp_path, [variant]), "--sequence", COMPLEX, "-m", tiny["transfo_xl"],
                "--chains", "linker", "--linker-length", "5", "--scoring", "log-likelihood")
    assert r.exit_code == 0, r.stderr
    sites = list(range(N)) + list(range(N + 5, N + 5 + len(LIGHT)))  # (the linker's left out)

    def ll(light):
        values = _plain_causal_sites(tiny["transfo_xl"], HEAVY + "G" * 5 + light)
        return sum(values[i] for i in sites)

    want = ll(LIGHT[:3] + "W" + LIGHT[4:]) - ll(LIGHT)
    column = f"{tiny['transfo_xl'].name}_log_likelihood"
    assert float(_table(r.stdout)[0][column]) == pytest.approx(want, abs=1e-4)


def test_separate_scores_each_site_in_its_own_chain_alone(run_cli, tmp_path, tiny):
    r = run_cli("variants", _variants(tmp_path), "--sequence", COMPLEX, "-m", tiny["esm"], "--chains", "separate",
                "--scoring", "masked-marginals", "--scoring", "wt-marginals", "--scoring", "pseudo-ppl")
    assert r.exit_code == 0, r.stderr
    rows = {row["mutant"]: row for row in _table(r.stdout)}
    # the single-chain path on each chain, its sites numbered in the chain
    alone = {}
    for name, seq, words in (("heavy", HEAVY, ["K2A", "T3W"]), ("light", LIGHT, ["M4W", "L5E"])):
        r = run_cli("variants", _variants(tmp_path, words), "--sequence", seq, "-m", tiny["esm"],
                    "--scoring", "masked-marginals", "--scoring", "wt-marginals", "--scoring", "pseudo-ppl")
        assert r.exit_code == 0, r.stderr
        alone.update({(name, row["mutant"]): row for row in _table(r.stdout)})
    for column in (f"{tiny['esm'].name}_{s}" for s in ("masked_marginals", "wt_marginals", "pseudo_ppl")):
        assert float(rows["K2A"][column]) == pytest.approx(float(alone["heavy", "K2A"][column]), abs=1e-6)
        assert float(rows[f"M{N + 4}W"][column]) == pytest.approx(float(alone["light", "M4W"][column]), abs=1e-6)
        both = float(alone["heavy", "T3W"][column]) + float(alone["light", "L5E"][column])
        assert float(rows[f"T3W:L{N + 5}E"][column]) == pytest.approx(both, abs=2e-6)
        assert float(rows["V15V"][column]) == 0.0 and float(rows["WT"][column]) == 0.0


def test_all_singles_of_a_complex_scan_every_residue_of_every_chain(run_cli, tmp_path, tiny):
    fasta = tmp_path / "wt.fa"
    fasta.write_text(f">hl\n{COMPLEX}\n")
    r = run_cli("variants", "--all-singles", "--fasta", fasta, "-m", tiny["esm"], "--chains", "separate")
    assert r.exit_code == 0, r.stderr
    rows = _table(r.stdout)
    letters = HEAVY + LIGHT
    assert len(rows) == 19 * len(letters)
    assert {row["mutant"][:-1] for row in rows} == {f"{c}{i + 1}" for i, c in enumerate(letters)}
    # a light-chain row is the light chain's own scan at its place in the chain
    r = run_cli("variants", "--all-singles", "--sequence", LIGHT, "-m", tiny["esm"])
    light = {row["mutant"]: float(row[f"{tiny['esm'].name}_masked_marginals"]) for row in _table(r.stdout)}
    for row in rows[19 * N:]:
        place = int(row["mutant"][1:-1]) - N
        assert float(row[f"{tiny['esm'].name}_masked_marginals"]) == pytest.approx(
            light[f"{row['mutant'][0]}{place}{row['mutant'][-1]}"], abs=1e-6)


def test_a_complex_without_chains_and_wrong_mutations_are_refused_in_one_line_before_any_model(run_cli, tmp_path):
    missing = tmp_path / "no-model"  # (never loaded: each is refused first)
    # a ':' without --chains: in --sequence a usage error (exit 2, as generate's --template), in a
    # --fasta record bad input (exit 1)
    r = run_cli("variants", "--all-singles", "--sequence", COMPLEX, "-m", missing)
    assert r.exit_code == 2 and "--chains linker or --chains separate" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    (tmp_path / "complex.fa").write_text(f">ab\n{COMPLEX}\n")
    r = run_cli("variants", "--all-singles", "--fasta", tmp_path / "complex.fa", "-m", missing)
    assert r.exit_code == 1 and "--chains linker or --chains separate" in r.stderr and "record 'ab'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    cases = {f"K{N + 2}A": f"residue {N + 2} of the complex, residue 2 of its chain 2, is S, not K",
             f"Q{N + len(LIGHT) + 1}A": f"position {N + len(LIGHT) + 1} is outside the complex (residues 1.."
                                        f"{N + len(LIGHT)} over its 2 chains",
             "B/M4W": "not a substitution"}
    for text, said in cases.items():
        r = run_cli("variants", _variants(tmp_path, [text]), "--sequence", COMPLEX, "-m", missing, "--chains", "linker")
        assert r.exit_code == 1, (text, r.stderr)
        assert said in r.stderr and "numbered on across its chains" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("variants", _variants(tmp_path, ["K2A"]), "--sequence", f"{HEAVY}::{LIGHT}", "-m", missing,
                "--chains", "linker")
    assert r.exit_code == 2 and "chain 2 of 3 is empty" in r.stderr
    r = run_cli("variants", _variants(tmp_path, ["K2A"]), "--sequence", COMPLEX, "-m", missing, "--chains", "linker",
                "--linker-length", "-1")
    assert r.exit_code == 2 and "--linker-length" in r.stderr


def test_kept_units_tell_a_complex_from_its_joined_letters_and_one_linker_from_another(tiny):
    from protrans_cli.embed import model_text
    from protrans_cli.models import load_model
    from protrans_cli.variants import VariantScorer, parse_variant, score_wild_type

    scorer = VariantScorer(load_model(str(tiny["esm"]), masked_lm=True), progress=False)

    def keys(sequence, chains, linker, strategy):
        seen = []

        def store(key, compute, check=None):
            seen.append(key)
            return compute()

        score_wild_type(scorer, sequence, [parse_variant("K2A", sequence)], strategy, chains=chains,
                        linker_length=linker, store=store)
        return set(seen)

    for strategy in ("masked-marginals", "pseudo-ppl"):
        joined = keys(model_text(COMPLEX, "linker", 25), "error", 25, strategy)
        linked = keys(COMPLEX, "linker", 25, strategy)
        assert linked.isdisjoint(joined) and linked.isdisjoint(keys(COMPLEX, "linker", 24, strategy))
        assert linked == keys(COMPLEX, "linker", 25, strategy)
        # (separate: a chain read alone is that protein, its units the single-chain path's)
        assert keys(COMPLEX, "separate", 25, strategy) == keys(HEAVY, "error", 25, strategy)
    # a linker of 0 joins A:B into the letters of AB, whose units are still not the complex's
    assert keys(COMPLEX, "linker", 0, "pseudo-ppl").isdisjoint(keys(HEAVY + LIGHT, "error", 0, "pseudo-ppl"))


def test_resume_of_a_complex_reads_the_units_it_kept(run_cli, tmp_path, tiny, monkeypatch):
    out = tmp_path / "scored.csv"
    table = _variants(tmp_path)
    args = ("variants", table, "--sequence", COMPLEX, "-m", tiny["esm"], "--chains", "linker", "-o", out)
    r = run_cli(*args)
    assert r.exit_code == 0, r.stderr
    first = out.read_text()
    from protrans_cli import variants

    computed = []
    real = variants.VariantScorer.site_log_probs
    monkeypatch.setattr(variants.VariantScorer, "site_log_probs",
                        lambda self, *a, **k: computed.append(1) or real(self, *a, **k))
    # a run stopped after its units were kept: the folder left as it was, the table gone
    partial = variants.partial_folder(out)
    keep = {}
    original = variants.UnitStore.remove
    monkeypatch.setattr(variants.UnitStore, "remove", lambda self: keep.setdefault("folder", self.folder))
    out.unlink()
    computed.clear()
    r = run_cli(*args)
    assert r.exit_code == 0 and computed and partial.is_dir()
    out.unlink()
    computed.clear()
    monkeypatch.setattr(variants.UnitStore, "remove", original)
    r = run_cli(*args, "--resume")
    assert r.exit_code == 0, r.stderr
    assert not computed and out.read_text() == first and not partial.exists()


def test_a_complex_with_an_empty_chain_is_named_by_the_library_too():
    """parse_variant and all_singles read a complex's chains as embed does: an empty chain is named
    (they said "empty sequence")."""
    from protrans_cli.residues import SequenceRejected
    from protrans_cli.variants import all_singles, parse_variant

    for call in (lambda: parse_variant("A1G", "AB:"), lambda: all_singles(":AB")):
        with pytest.raises(SequenceRejected, match=r"chain \d of 2 is empty"):
            call()
    assert parse_variant("A3G", "mk:ab") == parse_variant("A3G", "MK:AB")
    assert len(all_singles("MK:AC")) == 4 * 19
