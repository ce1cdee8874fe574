"""Per-protein (pseudo-)perplexity of a FASTA under a language model (`protrans perplexity`).

How well a model predicts each protein: its log-likelihood, the sum over residues of the natural
log-probability of the residue, its mean per residue, and the perplexity exp(-mean). The ways to
read a model, `--method`:

    pseudo        each residue masked in turn, read from the rest (the pseudo-log-likelihood of
                  Salazar et al. 2020; what ProtTrans' authors, ESM and ProteinGym compute for a
                  masked LM): one forward pass per residue. The default for masked LMs, ProtT5
                  (its decoder) and ProtXLNet included.
    causal        a causal LM's (Transformer-XL) likelihood, each residue given those before it:
                  one pass per protein. The default, and the only method, for a causal model.
    wt-marginals  each residue read from one unmasked pass of the whole protein: fast, but the
                  model sees the residue it predicts, so the figure is biased (far lower than
                  the pseudo-perplexity); for quick ranking only. Not for T5 or XLNet.

The forward passes are VariantScorer's (protrans_cli.variants): log-probabilities over the
model's whole vocabulary in float32, long proteins under `--long-policy window` read site by site
in a window centred on each, and the work kept in OUTPUT.partial/ (UnitStore) for `--resume`.

    summary = run_perplexity("designs.fa", "scores.tsv", PerplexityOptions(model="esm2_t6_8M_UR50D"))
    summary.perplexity   # the corpus's: exp(-sum of log-likelihoods / sum of residues)
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from protrans_cli import console
from protrans_cli.errors import InputError, UsageError, at_least, expect_options, one_of, option

METHODS = ("pseudo", "causal", "wt-marginals")
LONG_POLICIES = ("error", "window", "skip")
INVALID_POLICIES = ("error", "skip")
COLUMNS = ("id", "length", "log_likelihood", "mean_log_likelihood", "perplexity", "method")
RESIDUES_PER_UNIT = 4096   # residues of distinct proteins one unit of work scores (and --resume keeps)
PROTEINS_PER_UNIT = 64     # proteins one unit scores at most


@dataclass
class PerplexityOptions:
    """Everything `protrans perplexity` can be asked for; the CLI fills it from its options."""

    model: str = "esm2_t33_650M_UR50D"
    method: str | None = None            # None: pseudo for a masked LM, causal for a causal one
    revision: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    max_tokens: int | None = None
    max_length: int | None = None        # None: what the model was trained on or holds
    long_policy: str = "error"           # error | window | skip
    invalid_policy: str = "error"        # error | skip
    resume: bool = False                 # go on with OUTPUT.partial/, what an interrupted run kept
    threads: int | None = None

    def validate(self) -> None:
        from protrans_cli.embed import DTYPES
        from protrans_cli.embedders import check_device
        from protrans_cli.threads import check_threads

        if not isinstance(self.model, (str, Path)) or not str(self.model):
            raise UsageError(f"model is the name of one model, got {type(self.model).__name__} {self.model!r:.40}")
        if str(self.model) == "onehot":
            raise UsageError(f"{option('-m onehot', 'model onehot')} is embed's one-hot encoding, not a language "
                             "model: it gives no residue probabilities")
        if self.method is not None:
            one_of(self.method, METHODS, "--method", keyword="method")
        one_of(self.long_policy, LONG_POLICIES, "--long-policy", keyword="long_policy")
        one_of(self.invalid_policy, INVALID_POLICIES, "--invalid-policy", keyword="invalid_policy")
        if self.max_length is not None:
            at_least(self.max_length, 1, "--max-length", keyword="max_length")
        if self.max_tokens is not None:
            at_least(self.max_tokens, 1, "--max-tokens", keyword="max_tokens")
        check_device(self.device)
        one_of(self.dtype, DTYPES, "--dtype", keyword="dtype")
        if self.threads is not None:
            check_threads(self.threads)


@dataclass
class PerplexitySummary:
    """What a run scored: proteins and residues written, and the corpus's figures (token-weighted:
    every residue of every protein counts once, the figure a comparison of models needs)."""

    model: str
    method: str
    proteins: int = 0
    residues: int = 0
    log_likelihood: float = 0.0
    skipped: list = field(default_factory=list)   # ids left out (--invalid-policy / --long-policy skip)

    @property
    def mean_log_likelihood(self) -> float:
        return self.log_likelihood / self.residues if self.residues else float("nan")

    @property
    def perplexity(self) -> float:
        return perplexity_of(self.log_likelihood, self.residues) if self.residues else float("nan")


def methods_of(scorer) -> tuple[str, ...]:
    """The methods a VariantScorer's model can read: `causal` alone for a causal LM; `pseudo` for a
    masked one, and `wt-marginals` where its head reads an unmasked residue (not T5's decoder, which
    copies it, nor XLNet, which predicts a residue only from the others)."""
    if scorer.causal:
        return ("causal",)
    if scorer.decoder or scorer.permutation:
        return ("pseudo",)
    return ("pseudo", "wt-marginals")


def read_proteins(fasta, *, skip_invalid: bool = False) -> tuple[list[tuple[str, str]], list[str]]:
    """([(id, sequence)], [skipped ids]) of a FASTA (`-`: stdin; compressed or not) as embed reads it:
    normalised (rare letters kept, gaps removed with a warning), a duplicate id refused, a sequence
    that cannot be read refused (or, `skip_invalid`, left out with a warning)."""
    from protrans_cli.embed import _records
    from protrans_cli.io.files import display_name
    from protrans_cli.variants import _warn_gapped, _warn_nucleotide

    name = display_name(fasta)
    proteins, skipped, gapped = [], [], set()
    first_line: dict[str, int] = {}
    for prot in _records(fasta, name, skip_invalid):
        if prot.id in first_line:
            raise InputError(f"duplicate id (first seen on line {first_line[prot.id]}); ids must be unique because "
                             "they are the keys of the output", path=name, line=prot.line, record=prot.id)
        first_line[prot.id] = prot.line
        if prot.rejected is not None:
            skipped.append(prot.id)
            continue
        proteins.append((prot.id, prot.sequence))
        if prot.gapped:
            gapped.add(prot.id)
    if not first_line:
        raise InputError("no FASTA records", path=name)
    if skipped:
        console.warn(f"{name}: {console.counted(len(skipped), 'record')} that cannot be read left out "
                     f"({option('--invalid-policy skip', 'invalid_policy=' + repr('skip'))}): "
                     f"{console.some_named(len(skipped), skipped[:console.NAMED])}")
    _warn_nucleotide(proteins, name)
    _warn_gapped([p for p in proteins if p[0] in gapped], name)
    return proteins, skipped


def run_perplexity(fasta, output="-", options: PerplexityOptions | None = None) -> PerplexitySummary:
    """Score every protein of `fasta` under `options.model` and write one row a protein (id, length,
    log_likelihood, mean_log_likelihood, perplexity, method) to `output` (TSV; CSV for a .csv name;
    `-`/None: stdout), atomically. Identical sequences are computed once. Returns the summary,
    whose corpus perplexity is also said on stderr."""
    from protrans_cli.io.files import (display_name, input_named_by, output_directory, output_lock, special_output,
                                       through_link)
    from protrans_cli.variants import UnitStore, partial_folder

    options = options or PerplexityOptions()
    expect_options(options, PerplexityOptions, "options")
    options.validate()
    to_stdout = output in (None, "-")
    resume_beside = option("--resume goes on with the work kept beside -o FILE",
                           "resume=True goes on with the work kept beside the output file")
    if not to_stdout:
        if input_named_by(output, [fasta]):
            raise UsageError(f"{output} is also an input: writing it would replace it (choose another "
                             f"{option('-o', 'output')})")
        output_directory(output)
    elif options.resume:
        raise UsageError(f"{resume_beside}; stdout keeps none")
    special = special_output(output) if not to_stdout else None
    if special and options.resume:
        raise UsageError(f"{resume_beside}; {output} {special}, which keeps none")
    proteins, skipped = read_proteins(fasta, skip_invalid=options.invalid_policy == "skip")
    to_file = not to_stdout and not special
    target = through_link(Path(output)) if to_file else output
    busy = f"is the output of another protrans run that is running now: wait for it to end, or choose another " \
           f"{option('-o', 'output')}"
    with output_lock(target, busy) if to_file else contextlib.nullcontext():
        store = UnitStore(partial_folder(target), resume=options.resume, command="perplexity") if to_file else None
        summary, rows = _score(proteins, options, store, display_name(fasta))
        summary.skipped = skipped + summary.skipped
        _write_table(output, rows)
        if store is not None:
            store.remove()
    if not to_stdout:
        console.output_complete(str(output))
    left_out = f"; {console.counted(len(summary.skipped), 'protein')} left out" if summary.skipped else ""
    if not summary.residues:
        console.warn(f"perplexity: no protein scored{left_out}: the table holds its header alone")
        return summary
    console.info(f"perplexity: {console.counted(summary.proteins, 'protein')}, {summary.residues:,} residues: "
                 f"corpus perplexity {summary.perplexity:.4f} (mean log-likelihood {summary.mean_log_likelihood:.4f} "
                 f"a residue; {summary.method}, {summary.model}){left_out}")
    return summary


def _score(proteins, options: PerplexityOptions, store, name: str):
    """(summary, rows): the model loaded, each distinct sequence scored once (in units kept by `store`)."""
    from protrans_cli.embedders import resolve_device
    from protrans_cli.models import load_model
    from protrans_cli.threads import torch_threads
    from protrans_cli.variants import VariantScorer, _run_unit, _totals_check, _unit_key

    device, dtype = resolve_device(options.device, options.dtype)
    threads = torch_threads(options.threads) if options.threads else contextlib.nullcontext()
    with threads:
        loaded = load_model(options.model, device=device, dtype=dtype, revision=options.revision, masked_lm=True)
        scorer = VariantScorer(loaded, max_tokens=options.max_tokens, max_length=options.max_length,
                               long_policy="window" if options.long_policy == "window" else "error",
                               progress=console.progress_wanted())
        can = methods_of(scorer)
        method = options.method or can[0]
        if method not in can:
            raise UsageError(f"{loaded.name}: {option(f'--method {method}', f'the method {method!r}')} is not one it "
                             f"can read ({'a causal LM' if scorer.causal else 'a masked LM'}); it can: "
                             f"{', '.join(can)}")
        kept, skipped = [], []
        for ident, seq in proteins:
            if options.long_policy == "skip" and scorer.max_length is not None and len(seq) > scorer.max_length:
                skipped.append(ident)
                continue
            scorer.check_length(seq, "the protein", path=name, record=ident)  # (before any work)
            kept.append((ident, seq))
        if skipped:
            console.warn(f"{console.counted(len(skipped), 'protein')} over {scorer.max_length:,} residues left out "
                         f"({option('--long-policy skip', 'long_policy=' + repr('skip'))}): "
                         f"{console.some_named(len(skipped), skipped[:console.NAMED])}")
        distinct = sorted({seq for _, seq in kept}, key=lambda s: (len(s), s))
        units = store.for_model(loaded, scorer) if store is not None else None
        likelihood = {"causal": scorer.log_likelihood, "pseudo": scorer.pseudo_log_likelihood,
                      "wt-marginals": lambda c, bar: scorer.pseudo_log_likelihood(c, bar=bar, masked=False)}[method]
        total = sum(len(s) for s in distinct)
        bar = console.progress(total=total, desc="scoring", unit="residue") if scorer.progress and total > 1 else None
        values: dict[str, float] = {}
        try:
            for chunk in _units(distinct):
                got = _run_unit(units or _compute, _unit_key(f"perplexity-{method}", "", chunk),
                                lambda c=chunk: likelihood(c, bar=bar), bar, sum(len(s) for s in chunk),
                                _totals_check(len(chunk)))
                values.update(zip(chunk, got.tolist()))
        finally:
            if bar is not None:
                bar.close()
    summary = PerplexitySummary(model=loaded.name, method=method, skipped=skipped)
    rows = []
    for ident, seq in kept:
        ll = values[seq]
        mean = ll / len(seq)
        rows.append([ident, str(len(seq)), f"{ll:.6f}", f"{mean:.6f}", f"{perplexity_of(ll, len(seq)):.6f}", method])
        summary.proteins += 1
        summary.residues += len(seq)
        summary.log_likelihood += ll
    return summary, rows


def _compute(key, compute, check=None):
    return compute()


def _units(distinct: list[str]) -> list[list[str]]:
    """The distinct sequences (shortest first) in units of RESIDUES_PER_UNIT residues and
    PROTEINS_PER_UNIT proteins at most (a longer protein is a unit of its own)."""
    units, current, residues = [], [], 0
    for seq in distinct:
        if current and (residues + len(seq) > RESIDUES_PER_UNIT or len(current) >= PROTEINS_PER_UNIT):
            units.append(current)
            current, residues = [], 0
        current.append(seq)
        residues += len(seq)
    if current:
        units.append(current)
    return units


def _write_table(output, rows) -> None:
    from protrans_cli.io.files import atomic_output, named_delimiter

    delimiter = named_delimiter(output) or "\t"
    with atomic_output(output, "wb", follow_link=True) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
        writer = csv.writer(text, delimiter=delimiter, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
        text.flush()
        text.detach()


def perplexity_of(log_likelihood: float, residues: int) -> float:
    """exp(-log_likelihood / residues): a protein's perplexity, or a corpus's from its sums."""
    return math.exp(-log_likelihood / residues)


__all__ = ["METHODS", "PerplexityOptions", "PerplexitySummary", "methods_of", "perplexity_of", "read_proteins",
           "run_perplexity"]
