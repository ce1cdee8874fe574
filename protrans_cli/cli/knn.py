"""`protrans knn`: nearest neighbours in embedding space, and annotation transfer by them.

    protrans knn query.h5 --reference swissprot.h5 --labels swissprot_loc.fasta -o hits.tsv
    protrans knn test.h5 --reference train.h5 --labels train.fasta --score test.fasta
    protrans knn --fasta query.fa --reference lookup.h5 --labels lookup.fasta   # embeds with the reference's model
"""

from __future__ import annotations

import click

from protrans_cli.choices import FORMATS
from protrans_cli.cli import INPUT_FILE, completion, given_option
from protrans_cli.cli.predict import fasta_embedding_options


@click.command("knn", context_settings={"show_default": True})
@click.argument("query", type=INPUT_FILE, required=False)
@click.option("--reference", required=True, type=INPUT_FILE, metavar="FILE",
              help="Embeddings to search (HDF5 with per-protein vectors, any layout).")
@click.option("--fasta", type=INPUT_FILE, metavar="FILE", default=None,
              help="Query sequences instead of QUERY: embedded first with the model and layer of the reference "
                   "(into a temporary file); rows follow the FASTA's order.")
@click.option("--ids", "ids_file", type=INPUT_FILE, metavar="FILE", default=None,
              help="Search only these proteins of QUERY.h5, rows in this order: a FASTA file (whose sequences must "
                   "be the embedded ones) or one id a line, as export reads it; '-' = stdin.  [default: all]")
@click.option("-m", "--model", default=None, shell_complete=completion.models,
              help="With --fasta: the embedding model, when not the one the reference records (e.g. a local "
                   "copy; needed where it records none, or import-esm's without -m).")
@fasta_embedding_options("the reference's embeddings", "no neighbours")
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
@click.option("--device", default="auto", show_default=True,
              help="Where the distances are computed (a GPU holds the reference), and with --fasta the "
                   "queries embedded: auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps.")
def command(query, reference, fasta, ids_file, model, max_length, long_policy, chunk_overlap, chains, linker_length,
            invalid_policy, k, metric,
            labels, score, label_format, exclude_self, layer, allow_model_mismatch, output, n_bootstrap, threads,
            device):
    """Nearest neighbours in embedding space; transfers and scores labels.

    Every query protein's K nearest reference proteins by their per-protein vectors (the
    embedding-based annotation transfer of EAT and goPredSim): one TSV row per neighbour.
    Give the queries as embeddings (QUERY.h5; --ids: some of them) or as sequences (--fasta).

    \b
    protrans knn query.h5 --reference lookup.h5 --labels lookup.fasta -o hits.tsv
    protrans knn test.h5 --reference train.h5 --labels train.fasta \\
        --score test.fasta -k 3 -o -
    protrans knn --fasta query.fa --reference lookup.h5 -o hits.tsv
    protrans knn set.h5 --reference set.h5 --exclude-self --ids three.txt -k 5
    """
    from protrans_cli.errors import UsageError

    if (query is None) == (fasta is None):
        raise UsageError("give QUERY.h5 (embeddings) or --fasta (sequences), one of them")
    if "-" in (query, reference):  # (the reference: "read in place", exit 1, where the query's was exit 2)
        from protrans_cli.io.h5 import HDF5_FROM_STDIN

        raise UsageError(HDF5_FROM_STDIN)
    # (each changed nothing without the labels it reads or scores, without a word)
    if given_option("label_format") and labels is None and score is None:
        raise UsageError("--label-format goes with --labels or --score (the format of the label files read)")
    if given_option("n_bootstrap") and score is None:
        raise UsageError("--bootstrap goes with --score (the resamples of its confidence intervals)")
    if fasta is not None and ids_file is not None:
        raise UsageError("--ids picks proteins of QUERY.h5; with --fasta, the FASTA holds the queries (give those "
                         "alone)")
    if [fasta, labels, score, ids_file].count("-") > 1:  # the first read would take it all
        raise UsageError("stdin ('-') can be one input at most: give the others as files")
    from protrans_cli.knn import knn

    knn(query, reference, output, k=k, metric=metric, layer=layer, exclude_self=exclude_self, labels=labels,
        label_format=label_format, score=score, allow_model_mismatch=allow_model_mismatch, threads=threads,
        n_bootstrap=n_bootstrap, fasta=fasta, model=model, device=device, long_policy=long_policy,
        max_length=max_length, chunk_overlap=chunk_overlap, invalid_policy=invalid_policy, chains=chains,
        linker_length=linker_length, ids=ids_file)
    from protrans_cli import console

    console.output_complete(output)
