"""`protrans labels`: any supported label file to the FASTA that `protrans embed` needs.

    protrans labels Train_HHblits.csv.gz -o train.fasta
    protrans labels sampled.fasta.gz --sequences sequences.fasta.gz --split test -o flip_test.fasta
"""

from __future__ import annotations

import click

from protrans_cli.choices import FORMATS
from protrans_cli.cli import INPUT_FILE


@click.command("labels", context_settings={"show_default": True})
@click.argument("labels", type=INPUT_FILE)
@click.option("-o", "--output", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              help="FASTA to write ('-' = stdout; .gz/.bz2/.xz/.zst compress).")
# (metavar: the choices' list beside both names ran past 80 columns; they are in the help text)
@click.option("--format", "--label-format", "fmt", type=click.Choice(list(FORMATS)), default="auto",
              metavar="FORMAT",
              help=f"Label file format: {', '.join(FORMATS[:-1])} or {FORMATS[-1]} (--label-format, as fit "
                   "and predict call it).")
@click.option("--sequences", type=INPUT_FILE, metavar="FILE", default=None,
              help="FASTA with the sequences, for label files that hold none (FLIP labels, id,label tables).")
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default=None,
              help="Only the records the label file assigns to this split (FLIP SET=/VALIDATION=, a table's set).")
def command(labels, output, fmt, sequences, split):
    """Convert a label file (NetSurfP or PISCES CSV, FLIP, biotrainer, DeepLoc, id,label CSV/TSV) to FASTA for embed.

    NetSurfP CSVs carry no ids: each protein gets `seq-<first 12 hex of its sequence md5>` (`-2`,
    `-3` for repeats), the same id `protrans fit` gives it when reading the CSV.

    \b
    protrans labels Train_HHblits.csv.gz -o train.fasta
    protrans embed train.fasta -m onehot --per-residue -o train.h5
    """
    import dataclasses

    from protrans_cli import console
    from protrans_cli.errors import UsageError
    from protrans_cli.heads.labels import read_labels, read_sequences, write_embed_fasta
    from protrans_cli.io.files import atomic_output, display_name, input_named_by, output_directory

    if labels == "-" and sequences == "-":  # the labels' read took it all: "no sequence for 11156 ids"
        raise UsageError("stdin ('-') can be one input at most: give the labels or --sequences as a file")
    # DeepLoc labels are a FASTA too: `labels x.fasta -o x.fasta` replaced them, labels lost.
    if output not in (None, "-"):  # (-o "": ".: is a directory", exit 1, after reading the labels)
        output_directory(output)
    source = input_named_by(output, (labels, sequences))
    if source:
        raise UsageError(f"{output} is also an input: writing it would replace {source} (choose another name)")
    label_set = read_labels(labels, fmt)
    if split is not None:
        declared = sorted({r.split or "train" for r in label_set.records})
        kept = [r for r in label_set.records if (r.split or "train") == split]
        if not kept:
            from protrans_cli.errors import InputError

            where = ("it assigns no record to a split" if not any(r.split for r in label_set.records)
                     else f"its records are in: {', '.join(declared)}")
            raise InputError(f"--split {split}: no record is in that split ({where})", path=label_set.path)
        if not any(r.split for r in label_set.records):
            # (a record of no split is a training one, as fit reads it; a file of none written
            # whole without a word looked like the train split of a file the user took for split)
            console.warn(f"{label_set.path}: --split train: the file assigns no record to a split, so every record "
                         "is in the training split and all are written")
        label_set = dataclasses.replace(label_set, records=kept)
    if sequences and all(r.sequence is not None for r in label_set.records):
        # (read and never used: the FASTA written held the label file's own sequences, without a word)
        console.warn(f"--sequences {display_name(sequences)} is not read: {label_set.format} labels carry their "
                     "own sequences, which are written")
        sequences = None
    seqs = read_sequences(sequences) if sequences else None
    with atomic_output(output, follow_link=True) as stream:
        count = write_embed_fasta(label_set, stream, seqs,
                                  sequences_name=None if sequences is None else display_name(sequences))
    shown = "standard output" if output in (None, "-") else str(output)
    console.output_complete(shown)
    for note in label_set.notes:
        console.info(f"{label_set.path}: {note}")
    console.info(f"wrote {console.counted(count, 'sequence')} ({label_set.format} labels) to {shown}")
