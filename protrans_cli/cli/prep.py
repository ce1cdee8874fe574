"""`protrans prep`: FASTA to the ProtTrans pretraining corpus (one spaced protein per line).

    protrans prep uniref50.fasta.gz -o corpus.txt.gz --valid-fraction 0.01 --valid-output valid.txt \\
        --dedup --stats prep.json -j 4

Parses options, calls `protrans_cli.corpus.build_corpus` and prints the summary; never imports
torch, transformers or h5py.
"""

from __future__ import annotations

import re

import click

from protrans_cli.errors import UsageError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """'500M', '2G', '1.5GiB', '1000' -> bytes (K/M/G/T are powers of 1024)."""
    match = _SIZE.match(text)
    if not match:
        raise UsageError(f"--shard-size: cannot read {text!r} as a size (examples: 500M, 2G)")
    number, unit = float(match.group(1)), match.group(2).lower()
    size = int(number * 1024 ** " kmgt".index(unit or " "))
    if size < 1:  # (0.1 said "must be positive, got 0")
        raise UsageError(f"--shard-size must be at least one byte, got {text!r}")
    return size


@click.command("prep", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-o", "--output", default="-", show_default=True, metavar="FILE",
              help="Corpus file ('-' = stdout); .gz/.bz2/.xz/.zst compress.")
@click.option("--rare", type=click.Choice(["x", "keep"]), default="x", show_default=True,
              help="U, Z, O, B become X (as ProtTrans), or are kept.")
@click.option("--strict", is_flag=True, help="The first record that fails normalisation is an error.")
@click.option("--rejects", metavar="FILE",
              help="TSV of every record left out: id, reason, detail, file, line ('-' = stdout).")
@click.option("--min-length", type=int, default=1, show_default=True, help="Fewer residues: left out.")
@click.option("--max-length", type=int, default=None, help="More residues: skipped, or cropped (--long crop).")
@click.option("--long", "--long-policy", "long_policy", type=click.Choice(["skip", "crop"]), default="skip",
              show_default=True,
              help="Proteins above --max-length: skip them, or cut them into windows of --max-length.")
@click.option("--dedup", is_flag=True, help="Drop exact duplicate sequences (first kept; two passes, bounded memory).")
@click.option("--valid-fraction", type=float, default=0.0, show_default=True,
              help="Share of proteins for validation, chosen by a hash of the id.")
@click.option("--valid-output", metavar="FILE", help="Where the validation proteins go.")
@click.option("--shards", "num_shards", type=int, default=1, show_default=True, metavar="N",
              help="Deal proteins round-robin into N files (corpus.00000.txt ...).")
@click.option("--shard-size", metavar="SIZE", help="Or start a new file every SIZE bytes of text, before compression (500M, 2G, "
                   "1.5GiB: K/M/G/T are powers of 1024).")
@click.option("--shuffle", is_flag=True,
              help="Write the training proteins in a random order, not the input's (a uniform shuffle in bounded "
                   "memory: scratch files of about the corpus's uncompressed size in --tmp-dir). train reads a "
                   "corpus in its order, so an input in a systematic order (by accession, cluster, organism) trains in that order.")
@click.option("--seed", type=int, default=None,  # (its range: CorpusOptions, as other commands word it)
              help="Seed of --shuffle (0 or more): the same input and seed give the same corpus.  [default: 0]")
@click.option("--clusters", metavar="TSV",
              help="Cluster id, member id per line (mmseqs createtsv): write each cluster's members together, "
                   "a line each, then an empty line; --valid-fraction splits whole clusters.")
@click.option("--stats", "stats_path", metavar="FILE", help="Write the summary as JSON ('-' = stdout).")
@click.option("-j", "--threads", type=int, default=None,
              help="Worker processes.  [default: $PROTRANS_THREADS, else min(cores, 4)]")
@click.option("--tmp-dir", metavar="DIR", help="Scratch space for --dedup, --shuffle, --clusters and the -j workers' hand-over files [default: "
                   "dedup, shuffle and clusters beside the output, workers /dev/shm when it has room, else $TMPDIR].")
def command(inputs, output, rare, strict, rejects, min_length, max_length, long_policy, dedup,
            valid_fraction, valid_output, num_shards, shard_size, shuffle, seed, clusters, stats_path, threads,
            tmp_dir):
    """FASTA to the ProtTrans pretraining corpus: one protein per line, residues separated by
    spaces, an empty line after each protein.

    INPUT is a FASTA file (gzip/bz2/xz/zstd detected from its bytes) or - for stdin.

    \b
    protrans prep uniref50.fasta.gz -o corpus.txt.gz
    protrans prep a.fa b.fa.gz --dedup --max-length 1024 --long crop -o corpus.txt
    protrans prep uniref50.fasta.gz --shuffle --shard-size 2G -o corpus.txt.gz
    zcat x.fa.gz | protrans prep - --valid-fraction 0.05 \\
        --valid-output valid.txt -o train.txt
    """
    from protrans_cli import console
    from protrans_cli.corpus import CorpusOptions, build_corpus
    from protrans_cli.threads import resolve_threads

    if seed is not None and not shuffle:
        raise click.UsageError("--seed is the seed of --shuffle: give --shuffle too")
    options = CorpusOptions(
        output=output, rare=rare, strict=strict, rejects=rejects, min_length=min_length,
        max_length=max_length, long=long_policy, dedup=dedup, valid_fraction=valid_fraction,
        valid_output=valid_output, num_shards=num_shards,
        shard_size=parse_size(shard_size) if shard_size is not None else None,  # ('' is refused, not ignored)
        threads=resolve_threads(threads), tmp_dir=tmp_dir, progress=console.progress_wanted(), stats=stats_path,
        shuffle=shuffle, seed=seed or 0, clusters=clusters,
    )
    stats = build_corpus(inputs, options)
    _print_summary(stats, num_shards)


def _print_summary(stats, num_shards: int = 1) -> None:
    from protrans_cli import console

    if stats.records_in == 0:
        console.warn("no FASTA records in the input")
    elif stats.proteins_out == 0:
        console.warn(f"no protein written: all {stats.records_in:,} records were left out (reasons below)")
    training = stats.proteins_out - stats.valid_proteins
    unit = "training protein"
    if stats.train_clusters is not None:  # (--clusters deals whole clusters to the shards)
        training, unit = stats.train_clusters, "training cluster"
    if 0 < training < num_shards:  # (train then called the empty shards "a copy that failed?")
        console.warn(f"--shards {num_shards}: {console.counted(training, unit)} for {num_shards:,} "
                     f"shards, so the last {num_shards - training:,} are empty")
    if stats.unclustered:
        shown = console.some_named(stats.unclustered, stats.unclustered_ids)
        console.warn(f"--clusters: {stats.unclustered:,} of {stats.proteins_out:,} protein(s) written have an id "
                     f"that is no member in the TSV, each written as a cluster of its own: {shown}"
                     + (" (ids are matched exactly: UniRef90_P12345 is not P12345)"
                        if stats.unclustered == stats.proteins_out else ""))
    if stats.nucleotide_like:
        from protrans_cli.residues import NUCLEOTIDE_RULE

        shown = console.some_named(stats.nucleotide_like, stats.nucleotide_ids)
        console.warn(f"{stats.nucleotide_like:,} of {stats.proteins_out:,} protein(s) written {NUCLEOTIDE_RULE}: "
                     f"{shown}. A model trained on them learns them as amino acids; translate DNA or RNA to "
                     "proteins first")
    rows = [
        ["records in", f"{stats.records_in:,}"],
        ["proteins out", f"{stats.proteins_out:,}"],
        ["residues out", f"{stats.residues_out:,}"],
    ]
    if stats.lines_out != stats.proteins_out:
        rows.append(["lines out (windows)", f"{stats.lines_out:,}"])
    if stats.valid_proteins:
        rows.append(["  of which validation", f"{stats.valid_proteins:,} proteins, {stats.valid_residues:,} residues"])
    if stats.rare_to_x:
        rows.append(["U/Z/O/B written as X", f"{stats.rare_to_x:,}"])
    if stats.clusters_out is not None:
        rows.append(["clusters out", f"{stats.clusters_out:,}"])
        rows.append(["  proteins without a cluster", f"{stats.unclustered:,}"])
    if stats.shuffle_seed is not None:
        what = "clusters" if stats.clusters_out is not None else "proteins"
        rows.append([f"training {what} shuffled", f"seed {stats.shuffle_seed}"])
    if stats.crop_dropped:
        rows.append(["residues dropped (crop windows < --min-length)", f"{stats.crop_dropped:,}"])
    for reason, count in stats.rejected.items():
        if count:
            rows.append([f"left out: {reason}", f"{count:,}"])
    pct = stats.length_percentiles()
    if pct:
        rows.append(["length p0/p5/p25/p50/p75/p95/p100", "/".join(str(v) for v in pct.values())])
    mbps = stats.input_bytes / 1e6 / stats.seconds if stats.seconds else 0.0
    rows.append(["time", f"{stats.seconds:.2f} s ({mbps:.1f} MB/s of FASTA)"])
    if console.state.verbosity < 0:
        return
    console.load_rich()
    from rich.table import Table

    table = Table(title="protrans prep", title_justify="left", show_header=False)
    # (on a narrow terminal, wrapped rather than cut: "309/309/329/422…" lost the upper percentiles)
    table.add_column(style="bold", overflow="fold")
    table.add_column(justify="right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.stderr_console().print(table)
