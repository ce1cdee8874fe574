"""`protrans knn`: nearest neighbours in embedding space, and annotation transfer by them.

    protrans knn query.h5 --reference swissprot.h5 --labels swissprot_loc.fasta -o hits.tsv
    protrans knn test.h5 --reference train.h5 --labels train.fasta --score test.fasta
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE
from protrans_cli.heads.labels import FORMATS


@click.command("knn", context_settings={"show_default": True})
@click.argument("query", type=INPUT_FILE)
@click.option("--reference", required=True, type=INPUT_FILE, metavar="FILE",
              help="Embeddings to search (HDF5 with per-protein vectors, any layout).")
@click.option("-k", "k", type=int, default=1, help="Neighbours per query.")
@click.option("--metric", type=click.Choice(["euclidean", "cosine"]), default="euclidean",
              help="Distance: Euclidean (as EAT and goPredSim use with ProtT5), or 1 - cosine similarity.")
@click.option("--labels", type=INPUT_FILE, metavar="FILE", default=None,
              help="Per-protein labels of the reference (DeepLoc FASTA, id,label table, FLIP CSV, ...): "
                   "the neighbours' labels become columns of the output.")
@click.option("--score", type=INPUT_FILE, metavar="FILE", default=None,
              help="The queries' labels: score the labels transferred (the vote of the k neighbours, ties to "
                   "the nearer) with 95% CIs.")
@click.option("--label-format", type=click.Choice(list(FORMATS)), default="auto",
              help="Format of --labels and --score.")
@click.option("--exclude-self", is_flag=True,
              help="Leave out a reference protein with the query's id (leave-one-out, the query file as its own "
                   "reference).")
@click.option("--layer", type=int, default=-1, help="Layer to use when the embeddings hold several.")
@click.option("--allow-model-mismatch", is_flag=True,
              help="Compare embeddings of two models (their distances mean nothing unless the models are one).")
@click.option("-o", "--output", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              help="TSV: query, rank, neighbour, distance and the label columns; '-' = stdout; "
                   ".gz/.bz2/.xz/.zst compress.")
@click.option("--bootstrap", "n_bootstrap", type=int, default=1000,
              help="Bootstrap resamples for the 95% CI of --score (at least 10).")
@click.option("-j", "--threads", type=int, default=None,
              help="CPU threads for torch.  [default: $PROTRANS_THREADS, else min(cores, 4)]")
def command(query, reference, k, metric, labels, score, label_format, exclude_self, layer, allow_model_mismatch,
            output, n_bootstrap, threads):
    """Nearest neighbours in embedding space; transfers and scores labels.

    Every query protein's K nearest reference proteins by their per-protein vectors (the
    embedding-based annotation transfer of EAT and goPredSim): one TSV row per neighbour.

    \b
    protrans knn query.h5 --reference lookup.h5 --labels lookup.fasta -o hits.tsv
    protrans knn test.h5 --reference train.h5 --labels train.fasta \\
        --score test.fasta -k 3 -o -
    """
    from protrans_cli.knn import knn

    knn(query, reference, output, k=k, metric=metric, layer=layer, exclude_self=exclude_self, labels=labels,
        label_format=label_format, score=score, allow_model_mismatch=allow_model_mismatch, threads=threads,
        n_bootstrap=n_bootstrap)
