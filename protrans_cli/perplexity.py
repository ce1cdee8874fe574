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

import numpy as np

from protrans_cli import console
from protrans_cli.errors import InputError, UsageError, expect_options, one_of, option

METHODS = ("pseudo", "causal", "wt-marginals")
LONG_POLICIES = ("error", "window", "skip")
INVALID_POLICIES = ("error", "skip")
COLUMNS = ("id", "length", "log_likelihood", "mean_log_likelihood", "perplexity", "method")
RESIDUE_COLUMNS = ("id", "position", "residue", "log_probability")
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
    per_residue: str | Path | None = None  # a long table of each residue's log-probability ("-": stdout)

    def validate(self) -> None:
        from protrans_cli.threads import check_threads
        from protrans_cli.variants import check_scoring

        if not isinstance(self.model, (str, Path)) or not str(self.model):
            raise UsageError(f"model is the name of one model, got {type(self.model).__name__} {self.model!r:.40}")
        if str(self.model) == "onehot":
            raise UsageError(f"{option('-m onehot', 'model onehot')} is embed's one-hot encoding, not a language "
                             "model: it gives no residue probabilities")
        if self.method is not None:
            one_of(self.method, METHODS, "--method", keyword="method")
        one_of(self.long_policy, LONG_POLICIES, "--long-policy", keyword="long_policy")
        one_of(self.invalid_policy, INVALID_POLICIES, "--invalid-policy", keyword="invalid_policy")
        check_scoring(self)
        if self.threads is not None:
            check_threads(self.threads)
        if self.per_residue is not None and (not isinstance(self.per_residue, (str, Path)) or not str(self.per_residue)):
            raise UsageError(f"per_residue is the path of a table (or '-' for stdout), got "
                             f"{type(self.per_residue).__name__} {self.per_residue!r:.40}")


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
    for prot in _records(fasta, name, skip_invalid, offered=()):  # (no --chains: a complex is refused)
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
    `-`/None: stdout), atomically. Identical sequences are computed once. `options.per_residue`:
    also a long table, a row a residue (id, position from 1, residue, log_probability: the natural
    log-probability whose sum is the protein's log_likelihood), from the same passes, written with
    the main table (both or neither). Returns the summary, whose corpus perplexity is also said on
    stderr."""
    from protrans_cli.io.files import (display_name, input_named_by, output_directory, output_lock, special_output,
                                       staged_outputs, through_link)
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
    per_residue = options.per_residue
    if per_residue is not None:
        _check_per_residue(per_residue, output, to_stdout, fasta)
    proteins, skipped = read_proteins(fasta, skip_invalid=options.invalid_policy == "skip")
    to_file = not to_stdout and not special
    target = through_link(Path(output)) if to_file else output
    busy = f"is the output of another protrans run that is running now: wait for it to end, or choose another " \
           f"{option('-o', 'output')}"
    with output_lock(target, busy) if to_file else contextlib.nullcontext():
        store = UnitStore(partial_folder(target), resume=options.resume, command="perplexity") if to_file else None
        summary, rows, residue_rows = _score(proteins, options, store, display_name(fasta))
        summary.skipped = skipped + summary.skipped
        # (written out first, then renamed together: an interruption between the two left a new
        # table beside an old per-residue one; the one on stdout, if any, last, once the file's
        # table is written out)
        tables = [(output, COLUMNS, rows)] + ([(per_residue, RESIDUE_COLUMNS, residue_rows)]
                                              if per_residue is not None else [])
        with staged_outputs() as staged:
            for path, columns, table in sorted(tables, key=lambda t: t[0] is None or str(t[0]) == "-"):
                _write_table(path, columns, table, staged=staged)
        if store is not None:
            store.remove()
    if not to_stdout:
        console.output_complete(str(output))
    if per_residue is not None and str(per_residue) != "-":
        console.output_complete(str(per_residue))
    left_out = f"; {console.counted(len(summary.skipped), 'protein')} left out" if summary.skipped else ""
    if not summary.residues:
        console.warn(f"perplexity: no protein scored{left_out}: the table holds its header alone")
        return summary
    console.info(f"perplexity: {console.counted(summary.proteins, 'protein')}, {summary.residues:,} residues: "
                 f"corpus perplexity {summary.perplexity:.4f} (mean log-likelihood {summary.mean_log_likelihood:.4f} "
                 f"a residue; {summary.method}, {summary.model}){left_out}")
    return summary


def _check_per_residue(per_residue, output, to_stdout: bool, fasta) -> None:
    """UsageError for a per-residue table that cannot be written beside `output`."""
    from protrans_cli.io.files import input_named_by, output_directory, same_file

    flag = option("--per-residue", "per_residue")
    if str(per_residue) == "-":
        if to_stdout:
            raise UsageError(f"{option('--per-residue -', 'per_residue=' + repr('-'))} writes to stdout, where the "
                             f"main table goes: give {option('-o FILE', 'an output file')} for it, or a file for "
                             f"{flag}")
        return
    if not to_stdout and (str(per_residue) == str(output) or same_file(per_residue, output)):
        raise UsageError(f"{flag} {per_residue} is also {option('-o', 'the output')}: give the two tables two names")
    if input_named_by(per_residue, [fasta]):
        raise UsageError(f"{per_residue} is also an input: writing it would replace it (choose another {flag})")
    output_directory(per_residue)


def _score(proteins, options: PerplexityOptions, store, name: str):
    """(summary, rows, residue rows): the model loaded, each distinct sequence scored once (in units
    kept by `store`, each the per-residue log-probabilities of its sequences one after another)."""
    from protrans_cli.embedders import resolve_device
    from protrans_cli.models import load_model
    from protrans_cli.threads import torch_threads
    from protrans_cli.variants import VariantScorer, _compute, _run_unit, _unit_key, site_sums

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
        per_site = {"causal": scorer.causal_residue_log_probs, "pseudo": scorer.residue_log_probs,
                    "wt-marginals": lambda c, bar: scorer.residue_log_probs(c, bar=bar, masked=False)}[method]
        total = sum(len(s) for s in distinct)
        bar = console.progress(total=total, desc="scoring", unit="residue") if scorer.progress and total > 1 else None
        sites: dict[str, np.ndarray] = {}
        try:
            for chunk in _units(distinct):
                size = sum(len(s) for s in chunk)
                # (a unit keeps each residue's value, the sequences' one after another: the totals are
                # their sums, and the per-residue table reads them; "residues-" names this format, a
                # unit of totals of an earlier version is not read as one)
                got = _run_unit(units or _compute, _unit_key(f"perplexity-residues-{method}", "", chunk),
                                lambda c=chunk: np.concatenate(per_site(c, bar=bar)), bar, size,
                                _residues_check(size))
                sites.update(zip(chunk, np.split(got, np.cumsum([len(s) for s in chunk])[:-1])))
        finally:
            if bar is not None:
                bar.close()
    totals = dict(zip(sites, site_sums(list(sites.values())).tolist()))
    summary = PerplexitySummary(model=loaded.name, method=method, skipped=skipped)
    rows, residue_rows = [], []
    for ident, seq in kept:
        ll = totals[seq]
        mean = ll / len(seq)
        rows.append([ident, str(len(seq)), f"{ll:.6f}", f"{mean:.6f}", f"{perplexity_of(ll, len(seq)):.6f}", method])
        if options.per_residue is not None:
            residue_rows.extend([ident, str(p), letter, f"{value:.6f}"]
                                for p, (letter, value) in enumerate(zip(seq, sites[seq].tolist()), start=1))
        summary.proteins += 1
        summary.residues += len(seq)
        summary.log_likelihood += ll
    return summary, rows, residue_rows


def _residues_check(residues: int):
    """A kept unit: the (residues,) float64 log-probabilities of its sequences' residues."""
    return lambda v: v.dtype == np.float64 and v.shape == (residues,)


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


def _write_table(output, columns, rows, *, staged: list | None = None) -> None:
    from protrans_cli.io.files import atomic_output, named_delimiter

    delimiter = named_delimiter(output) or "\t"
    with atomic_output(output, "wb", follow_link=True, staged=staged) as stream:
        text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
        writer = csv.writer(text, delimiter=delimiter, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        text.flush()
        text.detach()


def perplexity_of(log_likelihood: float, residues: int) -> float:
    """exp(-log_likelihood / residues): a protein's perplexity, or a corpus's from its sums."""
    return math.exp(-log_likelihood / residues)


__all__ = ["METHODS", "RESIDUE_COLUMNS", "PerplexityOptions", "PerplexitySummary", "methods_of", "perplexity_of", "read_proteins",
           "run_perplexity"]
