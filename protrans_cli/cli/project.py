"""`protrans project`: a map of embedding space (PCA, t-SNE, UMAP) as a table, a picture and a page.

    protrans project proteome.h5 -o map.tsv --plot map.png
    protrans project train.h5 test.h5 --method umap --labels train.fasta --labels test.fasta --html map.html
"""

from __future__ import annotations

import click

from protrans_cli.choices import FORMATS
from protrans_cli.cli import INPUT_FILE, given_option


@click.command("project", context_settings={"show_default": True})
@click.argument("embeddings", nargs=-1, type=INPUT_FILE)
@click.option("--method", type=click.Choice(["pca", "tsne", "umap"]), default="pca",
              help="PCA (exact, needs nothing more), t-SNE (scikit-learn) or UMAP (umap-learn): "
                   "pip install 'protrans[project]' for the last two.")
@click.option("--dims", type=int, default=2, help="Dimensions of the map (2 or 3).")
@click.option("--metric", type=click.Choice(["euclidean", "cosine"]), default="euclidean",
              help="How vectors are compared: Euclidean distance, or cosine (the vectors scaled to unit "
                   "length; for PCA, the map of those).")
@click.option("--labels", "label_files", multiple=True, type=INPUT_FILE, metavar="FILE",
              help="Per-protein labels to colour by: a DeepLoc FASTA, a CSV/TSV table (with a header, every "
                   "column after the id: id,family,organism,tm), FLIP CSV; repeat for several files (a "
                   "training and a test set).")
@click.option("--label-format", type=click.Choice(list(FORMATS)), default="auto", help="Format of --labels.")
@click.option("--color-by", "colour_by", default=None, metavar="COLUMN",
              help="The label column the picture and page colour by (`source`: the input file).  "
                   "[default: the labels' first column; with several inputs and no labels, source]")
@click.option("-o", "--output", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              help="TSV: id, source (with several inputs), x, y[, z] and the label columns; '-' = stdout; "
                   ".gz/.bz2/.xz/.zst compress.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="The map as a picture: .png, .svg or .pdf.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="The map as a page to explore in a browser (hover: id and labels; wheel: zoom; a legend "
                   "entry: hide or show); self-contained, 2 dimensions.")
@click.option("--perplexity", type=float, default=None,
              help="t-SNE's perplexity.  [default: 30, at most a third of the proteins]")
@click.option("--neighbors", type=int, default=None,
              help="UMAP's neighbours.  [default: 15, fewer than the proteins]")
@click.option("--min-dist", type=float, default=0.1, help="UMAP's minimum distance between placed points.")
@click.option("--seed", type=int, default=0, help="Seed of t-SNE, UMAP, --sample and the proteins the quality figure samples.")
@click.option("--sample", type=int, default=None, metavar="N",
              help="Place N of the proteins, drawn by --seed (t-SNE or UMAP of a UniRef-sized file).  "
                   "[default: all]")
@click.option("--layer", type=int, default=-1, help="Layer to use when the embeddings hold several.")
@click.option("--allow-model-mismatch", is_flag=True,
              help="Map embeddings of two models together (their positions mean nothing unless the models are one).")
@click.option("-j", "--threads", type=int, default=None,
              help="CPU threads for t-SNE's neighbour search.  [default: $PROTRANS_THREADS, else min(cores, 4)]")
def command(embeddings, method, dims, metric, label_files, label_format, colour_by, output, plot, html_path,
            perplexity, neighbors, min_dist, seed, sample, layer, allow_model_mismatch, threads):
    """A map of embedding space: PCA, t-SNE or UMAP of per-protein vectors.

    Places every protein of one or more embeddings files (of one model) in 2 or 3 dimensions
    and writes the coordinates as TSV, the map as a picture (--plot) and as a page to explore
    in a browser (--html), coloured by labels (--labels) or by input file. A file of per-residue
    embeddings gives each protein the mean of its residues. On stderr: how much of the
    variance the PCA axes hold, and how many of each protein's 10 nearest neighbours stay
    nearest on the map.

    \b
    protrans project proteome.h5 --plot map.png -o map.tsv
    protrans project train.h5 test.h5 --method umap --metric cosine \\
        --labels train.fasta --labels test.fasta --plot map.png --html map.html
    """
    from protrans_cli.errors import UsageError

    if not embeddings:
        raise UsageError("give one embeddings file (HDF5) or more")
    if "-" in embeddings:
        from protrans_cli.io.h5 import HDF5_FROM_STDIN

        raise UsageError(HDF5_FROM_STDIN)
    if list(label_files).count("-") > 1:
        raise UsageError("stdin ('-') can be one input at most: give the others as files")
    if given_option("label_format") and not label_files:  # (it changed nothing, without a word; auto too)
        raise UsageError("--label-format goes with --labels (the format of the label files read)")
    if perplexity is not None and method != "tsne":
        raise UsageError("--perplexity goes with --method tsne")
    # (by where it came from: --min-dist 0.1, the default's value, was taken with PCA without a word)
    if (neighbors is not None or given_option("min_dist")) and method != "umap":
        raise UsageError("--neighbors and --min-dist go with --method umap")
    if threads is not None:  # (its value first: `-j -1 --method pca` warned that -j is ignored, then refused it)
        from protrans_cli.threads import check_threads

        check_threads(threads)
    if threads is not None and method != "tsne":  # (only t-SNE's neighbour search takes threads)
        from protrans_cli import console

        console.warn(f"-j does nothing with --method {method} (it sets t-SNE's threads"
                     f"{'; UMAP with a seed runs on one thread' if method == 'umap' else ''}): ignored")
    from protrans_cli.project import project
    from protrans_cli.threads import resolve_threads

    project(list(embeddings), output, method=method, dims=dims, metric=metric, layer=layer, labels=list(label_files),
            label_format=label_format, colour_by=colour_by, seed=seed, perplexity=perplexity, neighbors=neighbors,
            min_dist=min_dist, plot=plot, html_path=html_path, threads=resolve_threads(threads),
            allow_model_mismatch=allow_model_mismatch, sample=sample)
    from protrans_cli import console

    console.output_complete(output)
