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

A complex (chains separated by ':', `--chains`): `linker` reads the chains joined by
`--linker-length` glycines (embed.model_text) and scores the chains' residue sites only (the
linker is context: a causal LM reads it before the residues after it, wt-marginals in its one
pass); `separate` scores each chain as the protein of that sequence, the complex's total the sum.
Either way the protein's length and perplexity count its residues alone.

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
from protrans_cli.choices import DEFAULT_LINKER_LENGTH
from protrans_cli.errors import InputError, UsageError, expect_options, one_of, option
from protrans_cli.placement import PlacementOptions
from protrans_cli.variants import _Work, _works, work_log_probs  # (shared with variants --chains)

METHODS = ("pseudo", "causal", "wt-marginals")
LONG_POLICIES = ("error", "window", "skip")
INVALID_POLICIES = ("error", "skip")
COLUMNS = ("id", "length", "log_likelihood", "mean_log_likelihood", "perplexity", "method")
RESIDUE_COLUMNS = ("id", "position", "residue", "log_probability")
# --per-residue under --chains linker or separate: export's chain columns (each from 1)
CHAIN_COLUMNS = ("id", "position", "residue", "chain", "chain_position", "log_probability")
OFFERED = ("linker", "separate")  # the --chains policies a ':' of a complex is read under
RESIDUES_PER_UNIT = 4096   # residues of distinct proteins one unit of work scores (and --resume keeps)
PROTEINS_PER_UNIT = 64     # proteins one unit scores at most


@dataclass
class PerplexityOptions(PlacementOptions):
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
    chains: str = "error"                # a ':' (chain break of a complex): error | linker | separate
    linker_length: int = DEFAULT_LINKER_LENGTH  # glycines between the chains under chains='linker' (ESMFold's)
    # a model spread over devices (embed's --device-map, protrans_cli/placement.py): auto | balanced |
    # sequential, None for one device; the most each device holds; the folder for what fits nowhere
    device_map: str | None = None
    max_memory: str | dict | None = None
    offload_folder: str | None = None
    # a FASTA of 3Di strings, one per record under its id (SaProt: each site masked as `#s`)
    structure_tokens: str | Path | None = None

    def structure(self):
        """The --structure-tokens file's 3Di strings by id (models/saprot.py), or None."""
        from protrans_cli.variants import structure_of

        return structure_of(self.structure_tokens)

    def validate(self) -> None:
        from protrans_cli.embed import check_chains
        from protrans_cli.threads import check_threads
        from protrans_cli.variants import check_scoring

        if not isinstance(self.model, (str, Path)) or not str(self.model):
            raise UsageError(f"model is the name of one model, got {type(self.model).__name__} {self.model!r:.40}")
        from protrans_cli.embedders import encoding_words, is_weightless

        if is_weightless(str(self.model)):
            name = str(self.model)
            raise UsageError(f"{option(f'-m {name}', f'model {name}')} is embed's {encoding_words(name)}, not a "
                             "language model: it gives no residue probabilities")
        if self.method is not None:
            one_of(self.method, METHODS, "--method", keyword="method")
        one_of(self.long_policy, LONG_POLICIES, "--long-policy", keyword="long_policy")
        one_of(self.invalid_policy, INVALID_POLICIES, "--invalid-policy", keyword="invalid_policy")
        check_scoring(self)
        check_chains(self)
        if self.threads is not None:
            check_threads(self.threads)
        if self.per_residue is not None and (not isinstance(self.per_residue, (str, Path)) or not str(self.per_residue)):
            # (the option named as its reader gives it: "per_residue is ..." at the command line)
            named = option("--per-residue", "per_residue")
            if isinstance(self.per_residue, str):
                raise UsageError(f"{named} is empty: give the path of a table (or '-' for stdout)")
            raise UsageError(f"{named} is the path of a table (or '-' for stdout), got "
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
    return _methods((scorer.causal, scorer.decoder, scorer.permutation))


def _methods(readings: tuple[bool, bool, bool]) -> tuple[str, ...]:
    """methods_of by variants.model_readings' (causal, decoder, permutation)."""
    causal, decoder, permutation = readings
    if causal:
        return ("causal",)
    if decoder or permutation:
        return ("pseudo",)
    return ("pseudo", "wt-marginals")


def _method_refusal(name: str, method: str, readings: tuple[bool, bool, bool]) -> str | None:
    """The one line refusing `method` to a model read so, or None."""
    can = _methods(readings)
    if method in can:
        return None
    return (f"{name}: {option(f'--method {method}', f'the method {method!r}')} is not one it can read "
            f"({'a causal LM' if readings[0] else 'a masked LM'}); it can: {', '.join(can)}")


def _check_method(options) -> None:
    """UsageError for a --method the model cannot read, from its config alone: before the model
    loads (refused after the load, a large model's minutes were spent for the one line)."""
    from protrans_cli.models import open_config
    from protrans_cli.variants import model_readings

    if options.method is None:
        return
    source = open_config(options.model, revision=options.revision)
    if (problem := _method_refusal(options.model, options.method, model_readings(source.config, source.family))):
        raise UsageError(problem)


@dataclass
class _Scan:
    """What the first pass over the FASTA keeps: a few numbers and ids, not the proteins."""

    records: int
    skipped: list          # ids that cannot be read (--invalid-policy skip)
    longest: int           # the most residues the model reads at once (embed.model_length)
    residues: int          # residues to score, each distinct reading once (the progress bar's total)
    repeated: set          # digests of the readings (_Work keys) more than one record needs


def _scan(source, name: str, options: PerplexityOptions) -> _Scan:
    """The first pass, as embed's: every record read and normalised, so that one that cannot be
    read fails (or is left out) and a duplicate id is refused before the model loads, keeping an
    8-byte digest of each id and reading (`_raise_duplicate_id` names a duplicate in a second
    look at the ids alone)."""
    from array import array

    from protrans_cli.embed import (InputScan, _digest64, _raise_duplicate_id, _records, _warn_gapped,
                                    _warn_nucleotide, model_length, residue_count)
    from protrans_cli.residues import looks_nucleotide, residue_text

    ids, keys, sizes = array("Q"), array("Q"), array("Q")
    skipped, nucleotide, gapped = [], console.Named(), console.Named()
    longest = residues = 0
    for prot in _records(source, name, options.invalid_policy == "skip", chains=options.chains, offered=OFFERED,
                         structure=options.structure()):
        ids.append(_digest64(prot.id))
        if prot.rejected is not None:
            skipped.append(prot.id)
            continue
        for work in _works(prot.sequence, options.chains, options.linker_length):
            keys.append(_digest64(work.key))
            sizes.append(work.size)
        longest = max(longest, model_length(prot.sequence, options.chains, options.linker_length))
        residues += residue_count(prot.sequence)
        if looks_nucleotide(residue_text(prot.sequence)):
            nucleotide.add(prot.id)
        if prot.gapped:
            gapped.add(prot.id)
    if not ids:
        raise InputError("no FASTA records", path=name)
    ordered = np.sort(np.frombuffer(ids, dtype=np.uint64))
    clash = ordered[1:] == ordered[:-1]
    if clash.any():
        _raise_duplicate_id(source, name, set(ordered[1:][clash].tolist()))
    records = len(ids)
    del ordered, clash, ids
    distinct, repeated = _distinct(keys, sizes)
    if skipped:
        console.warn(f"{name}: {console.counted(len(skipped), 'record')} that cannot be read left out "
                     f"({option('--invalid-policy skip', 'invalid_policy=' + repr('skip'))}): "
                     f"{console.some_named(len(skipped), skipped[:console.NAMED])}")
    said = InputScan(records, residues, longest, np.empty(0, dtype=np.uint64), nucleotide=nucleotide, gapped=gapped)
    _warn_nucleotide(said, name, True)
    _warn_gapped(said, name, True)
    return _Scan(records, skipped, longest, distinct, repeated)


def _distinct(keys, sizes) -> tuple[int, set]:
    """The residues of the distinct readings (`keys`: their digests, `sizes`: their residues, one
    a reading a record needs) and the digests of those more than one record needs."""
    digests = np.frombuffer(keys, dtype=np.uint64)
    order = np.argsort(digests, kind="stable")
    ordered = digests[order]
    first = np.ones(len(ordered), dtype=bool)
    first[1:] = ordered[1:] != ordered[:-1]
    distinct = int(np.frombuffer(sizes, dtype=np.uint64)[order][first].sum()) if len(ordered) else 0
    return distinct, set(np.unique(ordered[1:][~first[1:]]).tolist())


def run_perplexity(fasta, output="-", options: PerplexityOptions | None = None) -> PerplexitySummary:
    """Score every protein of `fasta` under `options.model` and write one row a protein (id, length,
    log_likelihood, mean_log_likelihood, perplexity, method) to `output` (TSV; CSV for a .csv name;
    `-`/None: stdout), atomically. Identical sequences are computed once. `options.per_residue`:
    also a long table, a row a residue (id, position from 1, residue, log_probability: the natural
    log-probability whose sum is the protein's log_likelihood; with `options.chains` linker or
    separate also chain and chain_position, both from 1), from the same passes, written with the
    main table (both or neither). Returns the summary, whose corpus perplexity is also said on
    stderr.

    Memory stays at one unit of work (RESIDUES_PER_UNIT residues) and the sequences that more
    than one record reads, whatever the FASTA's size: a first pass checks every record (and
    refuses a duplicate id) keeping 8-byte digests, the second reads the records in order, a
    unit of them at a time, and writes their rows as their unit ends (into the output's hidden
    temporary, renamed when all are written; a table for stdout into a temporary file, copied out
    at the end). stdin or a pipe, read twice, is first copied to a file (beside -o FILE, else in
    the temporary folder). Units are consecutive records, not a sort of the whole input by length:
    a pass holds copies of one protein (pseudo) or proteins of one length, so a global sort would
    gain little and hold every sequence."""
    import tempfile

    from protrans_cli.embed import _spool_input, is_stream, linker_length_ignored, refuse_inside_model
    from protrans_cli.io.files import display_name, staged_outputs, streamed_output, through_link
    from protrans_cli.variants import UnitStore, partial_folder, resumable_output, structure_said, unit_output_lock

    options = options or PerplexityOptions()
    expect_options(options, PerplexityOptions, "options")
    options.validate()
    if (ignored := linker_length_ignored(options)) is not None:
        console.warn(ignored)
    to_stdout = output in (None, "-")
    special = resumable_output(output, options.resume, (fasta, options.structure_tokens), (options.model,))
    per_residue = options.per_residue
    if per_residue is not None:
        _check_per_residue(per_residue, output, to_stdout, fasta)
        refuse_inside_model(per_residue, (options.model,), "--per-residue", "per_residue")
    name = display_name(fasta)
    to_file = not to_stdout and not special
    target = through_link(Path(output)) if to_file else output
    with contextlib.ExitStack() as held:
        source = fasta
        if str(fasta) == "-" or is_stream(fasta):  # (read twice: the check, then the scoring)
            where = Path(target) if to_file else Path(held.enter_context(tempfile.TemporaryDirectory())) / "input"
            source = _spool_input(where, fasta)
            held.callback(source.unlink, missing_ok=True)
        scan = _scan(source, name, options)
        held.enter_context(unit_output_lock(target, to_file))
        store = UnitStore(partial_folder(target), resume=options.resume, command="perplexity") if to_file else None
        _check_method(options)  # (before the model loads)
        # (the file's table written out first, then the one for stdout, then both renamed together:
        # an interruption between the two left a new table beside an old per-residue one)
        tables = [(output, COLUMNS)]
        if per_residue is not None:
            tables.append((per_residue, RESIDUE_COLUMNS if options.chains == "error" else CHAIN_COLUMNS))
        with staged_outputs() as staged, contextlib.ExitStack() as writing:
            writers = {}
            # (the table for stdout entered first, so copied out last, once the file's is written)
            for path, columns in sorted(tables, key=lambda t: t[0] not in (None, "-")):
                stream = writing.enter_context(streamed_output(path, staged=staged))
                text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
                writing.callback(text.detach)  # (the stream is closed by its own block)
                writer = csv.writer(text, delimiter=_delimiter(path) or "\t", lineterminator="\n")
                writer.writerow(columns)
                writers[columns] = (writer, text)
            summary = _score(source, name, scan, options, store, writers[tables[0][1]][0],
                             writers[tables[1][1]][0] if per_residue is not None else None)
            for _, text in writers.values():
                text.flush()
        summary.skipped = scan.skipped + summary.skipped
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
                 f"a residue; {summary.method}, {summary.model}{structure_said(options.structure())}){left_out}")
    return summary


def _delimiter(path) -> str | None:
    from protrans_cli.io.files import named_delimiter as delimiter_of

    return None if path is None or str(path) == "-" else delimiter_of(path)


def _check_per_residue(per_residue, output, to_stdout: bool, fasta) -> None:
    """UsageError for a per-residue table that cannot be written beside `output`."""
    from protrans_cli.io.files import input_named_by, names_stdout, output_directory, same_file

    flag = option("--per-residue", "per_residue")
    # (/dev/stdout, or the file `> x` opened, is stdout as `-` is: the two tables went out one
    # after the other, into one stream)
    if names_stdout(per_residue):
        if to_stdout or names_stdout(output):
            raise UsageError(f"{option(f'--per-residue {per_residue}', f'per_residue={str(per_residue)!r}')} writes "
                             f"to stdout, where the main table goes: give {option('-o FILE', 'an output file')} for "
                             f"it, or a file for {flag}")
        if str(per_residue) == "-":
            return
    if not to_stdout and (str(per_residue) == str(output) or same_file(per_residue, output)):
        raise UsageError(f"{flag} {per_residue} is also {option('-o', 'the output')}: give the two tables two names")
    if input_named_by(per_residue, [fasta]):
        raise UsageError(f"{per_residue} is also an input: writing it would replace it (choose another {flag})")
    output_directory(per_residue)


def _too_long(source, name: str, options: PerplexityOptions, scorer, scan: _Scan) -> list[str]:
    """The ids of the records the model cannot read whole (over --max-length: a complex with its
    linkers, or its longest chain under separate) under --long-policy skip; under error (or for a
    causal LM) an InputError naming the first, before any work. Reads the FASTA again only when
    the first pass found such a record; records skipped, `scan.residues` (the progress bar's
    total) becomes the residues of the others' distinct readings (it counted theirs too, and
    the bar stopped short of its total)."""
    from array import array

    from protrans_cli.embed import _digest64, _records, model_length

    if scorer.max_length is None or scan.longest <= scorer.max_length:
        return []
    skipped = []
    keys, sizes = array("Q"), array("Q")  # (the readings of the records scored)
    for prot in _records(source, name, options.invalid_policy == "skip", chains=options.chains, offered=OFFERED,
                         structure=options.structure()):
        if prot.rejected is not None:
            continue
        if model_length(prot.sequence, options.chains, options.linker_length) <= scorer.max_length:
            for work in _works(prot.sequence, options.chains, options.linker_length):
                keys.append(_digest64(work.key))
                sizes.append(work.size)
            continue
        if options.long_policy == "skip":
            skipped.append(prot.id)
            continue
        what = ("the protein" if ":" not in prot.sequence else "a chain of the complex"
                if options.chains == "separate" else "the complex with its linkers")
        for work in _works(prot.sequence, options.chains, options.linker_length):
            scorer.check_length(work.text, what, path=name, record=prot.id)
    if skipped:
        scan.residues = _distinct(keys, sizes)[0]
        console.warn(f"{console.counted(len(skipped), 'protein')} over {scorer.max_length:,} residues left out "
                     f"({option('--long-policy skip', 'long_policy=' + repr('skip'))}): "
                     f"{console.some_named(len(skipped), skipped[:console.NAMED])}")
    return skipped


def _score(source, name: str, scan: _Scan, options: PerplexityOptions, store, rows, residue_rows):
    """The summary: the model loaded, the records read again in order, each distinct reading scored
    once (in units kept by `store`, each the per-residue log-probabilities of its readings one
    after another), and each record's row written to the csv writer `rows` (and its residues' to
    `residue_rows`) as its unit ends."""
    from protrans_cli.embed import _digest64, _records, model_length
    from protrans_cli.models import load_model
    from protrans_cli.threads import torch_threads
    from protrans_cli.variants import VariantScorer, _compute, _run_unit, _say_map, _unit_key, structure_hook

    device, dtype, placing = options.loading([options.model])
    threads = torch_threads(options.threads) if options.threads else contextlib.nullcontext()
    with threads:
        loaded = load_model(options.model, device=device, dtype=dtype, revision=options.revision, masked_lm=True,
                            before_weights=structure_hook(options, [options.model]), **placing)
        _say_map(options, loaded)
        scorer = VariantScorer(loaded, max_tokens=options.max_tokens, max_length=options.max_length,
                               long_policy="window" if options.long_policy == "window" else "error",
                               progress=console.progress_wanted())
        method = options.method or methods_of(scorer)[0]
        if (problem := _method_refusal(loaded.name, method, (scorer.causal, scorer.decoder, scorer.permutation))):
            raise UsageError(problem)
        too_long = _too_long(source, name, options, scorer, scan)
        units = store.for_model(loaded, scorer) if store is not None else None
        summary = PerplexitySummary(model=loaded.name, method=method, skipped=too_long)
        bar = (console.progress(total=scan.residues, desc="scoring", unit="residue")
               if scorer.progress and scan.residues > 1 else None)

        def read(works: list[_Work]) -> np.ndarray:
            return np.concatenate(work_log_probs(scorer, works, method, bar))

        kept: dict[str, np.ndarray] = {}     # readings more than one record needs: for the run
        window: list[tuple[str, str, list[_Work]]] = []  # records waiting for their unit
        unit: dict[str, _Work] = {}          # the readings of the unit being filled

        def flush() -> None:
            values: dict[str, np.ndarray] = {}
            if unit:
                chunk = sorted(unit.values(), key=lambda w: (len(w.text), w.key))
                size = sum(w.size for w in chunk)
                # (a unit keeps each residue's value, the readings' one after another; "residues-"
                # names this format, a unit of totals of an earlier version is not read as one)
                got = _run_unit(units or _compute, _unit_key(f"perplexity-residues-{method}", "",
                                                             [w.key for w in chunk]),
                                lambda: read(chunk), bar, size, _residues_check(size))
                for w, v in zip(chunk, np.split(got, np.cumsum([w.size for w in chunk])[:-1])):
                    values[w.key] = v
                    if _digest64(w.key) in scan.repeated:
                        kept[w.key] = v
            for ident, seq, works in window:
                _write_rows(ident, seq, np.concatenate([values.get(w.key, kept.get(w.key)) for w in works]), method, options, rows,
                            residue_rows, summary)
            window.clear()
            unit.clear()

        try:
            residues = 0
            for prot in _records(source, name, options.invalid_policy == "skip", chains=options.chains,
                                 offered=OFFERED, structure=options.structure()):
                if prot.rejected is not None:
                    continue
                if (options.long_policy == "skip" and scorer.max_length is not None
                        and model_length(prot.sequence, options.chains, options.linker_length) > scorer.max_length):
                    continue
                works = _works(prot.sequence, options.chains, options.linker_length)
                new = {w.key: w for w in works if w.key not in kept and w.key not in unit}
                grow = sum(w.size for w in new.values())
                if unit and new and (residues + grow > RESIDUES_PER_UNIT or len(unit) + len(new) > PROTEINS_PER_UNIT):
                    flush()
                    residues = 0
                    new = {w.key: w for w in works if w.key not in kept}
                    grow = sum(w.size for w in new.values())
                unit.update(new)
                residues += grow
                window.append((prot.id, prot.sequence, works))
            flush()
        finally:
            if bar is not None:
                bar.close()
    return summary


def _write_rows(ident: str, sequence: str, values: np.ndarray, method: str, options: PerplexityOptions, rows,
                residue_rows, summary: PerplexitySummary) -> None:
    """A record's row (and its residues' rows), its figures added to `summary`: `values` its
    residues' log-probabilities in order (a complex's chains one after another)."""
    from protrans_cli.variants import site_sums

    residues = len(values)
    ll = float(site_sums([values])[0])
    rows.writerow([ident, str(residues), f"{ll:.6f}", f"{ll / residues:.6f}", f"{perplexity_of(ll, residues):.6f}",
                   method])
    if residue_rows is not None:
        from protrans_cli.residues import residue_text

        letters = residue_text(sequence.replace(":", ""))  # (SaProt's residues paired with 3Di states: the residues)
        if options.chains == "error":
            residue_rows.writerows([ident, str(p), letter, f"{value:.6f}"]
                                   for p, (letter, value) in enumerate(zip(letters, values.tolist()), start=1))
        else:  # (export's chain columns: each residue's chain and place in it, both from 1)
            places = [(c, i) for c, chain in enumerate(sequence.split(":"), 1) for i in range(1, len(chain) + 1)]
            residue_rows.writerows([ident, str(p), letter, str(c), str(i), f"{value:.6f}"] for p, (letter, (c, i), value)
                                   in enumerate(zip(letters, places, values.tolist()), start=1))
    summary.proteins += 1
    summary.residues += residues
    summary.log_likelihood += ll


def _residues_check(residues: int):
    """A kept unit: the (residues,) float64 log-probabilities of its readings' residues."""
    return lambda v: v.dtype == np.float64 and v.shape == (residues,)


def perplexity_of(log_likelihood: float, residues: int) -> float:
    """exp(-log_likelihood / residues): a protein's perplexity, or a corpus's from its sums."""
    return math.exp(-log_likelihood / residues)


__all__ = ["CHAIN_COLUMNS", "COLUMNS", "METHODS", "RESIDUE_COLUMNS", "PerplexityOptions", "PerplexitySummary", "methods_of",
           "perplexity_of", "run_perplexity"]
