"""`protrans export`: an embeddings file as a TSV/CSV table, NumPy arrays (.npz) or esm-extract's .pt files.

    protrans export proteome.h5 -o proteome.tsv
    protrans export proteome.h5 --per-residue --ids picked.fasta -o picked.npz
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE, given_option


@click.command("export", context_settings={"show_default": True})
@click.argument("embeddings", type=INPUT_FILE)
@click.option("-o", "--output", default="-", type=click.Path(allow_dash=True), metavar="FILE",
              help="File to write: .tsv, .csv (either compressed by .gz/.bz2/.xz/.zst) or .npz; '-' = TSV on "
                   "stdout; with --format esm a new (or empty) folder.")
@click.option("--format", "fmt", type=click.Choice(["tsv", "csv", "npz", "esm"]), default=None,
              help="The output's format; esm: a folder of esm-extract's ID.pt files (representations, "
                   "mean_representations by layer), for tools written around esm-extract.  [default: from -o's "
                   "name; TSV on stdout]")
@click.option("--per-protein", is_flag=True,
              help="Per-protein vectors: one row a protein (a file of per-residue rows only: their mean).  "
                   "[default: where the file has them, else --per-residue]")
@click.option("--per-residue", is_flag=True,
              help="Per-residue rows: one row a residue (id, position[, residue]).")
@click.option("--layer", type=int, default=-1, help="Layer to write when the file holds several (as given to embed).")
@click.option("--all-layers", is_flag=True,
              help="Every stored layer, into an .npz (embeddings of shape (rows, n_layers, D), the layers in "
                   "metadata: for probing layer by layer) or esm-extract's files (a key each).")
@click.option("--ids", "ids_file", type=INPUT_FILE, metavar="FILE", default=None,
              help="Write these proteins, in this order: a FASTA file (whose sequences must be the embedded ones; "
                   "per residue it adds a residue column) or one id a line.  [default: all, by id]")
@click.option("--digits", type=int, default=None,
              help="Significant digits of a table's numbers.  [default: those that give back the stored value: "
                   "9 for float32, 5 for float16]")
def command(embeddings, output, fmt, per_protein, per_residue, layer, all_layers, ids_file, digits):
    """An embeddings file as a TSV/CSV table, NumPy arrays (.npz) or esm-extract .pt files.

    For R, spreadsheets, scikit-learn and colleagues without h5py: one kind and one layer (an
    .npz or --format esm: every layer with --all-layers) of any layout (and of ProtTrans or
    bio_embeddings files), nothing computed. A table has a row
    per protein (id, dim_0 ..) or per residue (id, position[, residue], dim_0 ..); an .npz
    holds ids, embeddings and, per residue, offsets and lengths (numpy.load, no pickle), and is
    written a protein at a time, whatever the file's size. A `predict --probabilities` file
    exports its per-residue probabilities (id, position, ss3:H ..). --format esm writes what
    esm-extract writes: a folder of ID.pt files. Written whole or not at all.

    \b
    protrans export proteome.h5 -o proteome.tsv
    protrans export proteome.h5 --per-residue -o residues.npz
    protrans export proteome.h5 --ids kinases.txt --format csv -o kinases.csv
    protrans export proteome.h5 --format esm -o esm_reps/
    """
    from protrans_cli.errors import UsageError

    if embeddings == "-":
        from protrans_cli.io.h5 import HDF5_FROM_STDIN

        raise UsageError(HDF5_FROM_STDIN)
    if per_protein and per_residue:
        # (one flag sharing the other's destination: the last given was written and the first
        # dropped without a word, `--format esm --per-residue --per-protein` a folder of means alone)
        raise UsageError("--per-protein and --per-residue: export writes one kind (a file each); --format esm "
                         "writes both without either flag")
    kind = "per_protein" if per_protein else "per_residue" if per_residue else None
    from protrans_cli.export import export

    from protrans_cli import console

    # (--layer by where it came from: -1, the default's value, given beside --all-layers was taken)
    export(embeddings, output, kind=kind, layer=layer if given_option("layer") else None, ids=ids_file, fmt=fmt,
           digits=digits, all_layers=all_layers)
    console.output_complete(output)
