"""`protrans import-head`: a published prediction head as a protrans head directory.

    protrans import-head secstruct_checkpoint.pt -o heads/prott5_ss
    protrans predict heads/prott5_ss --fasta proteins.fa -o proteins.ss.fa
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE


@click.command("import-head", context_settings={"show_default": True})
@click.argument("checkpoint", type=INPUT_FILE)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Head directory to write (as fit writes them).")
@click.option("--from", "source", type=click.Choice(["prottrans-secstruct", "la-location", "la-membrane"]),
              default="prottrans-secstruct",
              help="The checkpoint's kind: prottrans-secstruct, the ProtT5 secondary-structure CNN of the "
                   "ProtTrans notebooks and bio_embeddings (secstruct_checkpoint.pt); la-location and "
                   "la-membrane, bio_embeddings' Light Attention DeepLoc models "
                   "(la_prott5_subcellular_localization.pt, la_prott5_subcellular_solubility.pt).")
@click.option("-m", "--model", default=None,
              help="The embedding model to record (what predict --fasta embeds with).  [default: "
                   "Rostlab/prot_t5_xl_half_uniref50-enc, the model the notebooks embed with]")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it is a head directory.")
def command(checkpoint, output, source, model, force):
    """Import a published prediction head (no training).

    The ProtTrans secondary-structure CNN (3 and 8 states, trained on NetSurfP-2.0 with ProtT5-XL-U50
    embeddings; `secstruct_checkpoint.pt`, loaded weights-only) becomes a head directory that
    `protrans predict` applies as it applies fit's heads: `--fasta` embeds with ProtT5 and
    predicts as the ProtTrans notebook does. bio_embeddings' Light Attention location and
    membrane models (DeepLoc) become `loc` heads with one output each.

    The checkpoint: secstruct_checkpoint.pt under
    http://data.bioembeddings.com/public/embeddings/feature_models/t5/

    \b
    protrans import-head secstruct_checkpoint.pt -o heads/prott5_ss
    protrans predict heads/prott5_ss --fasta proteins.fa -o proteins.ss.fa
    """
    from protrans_cli import console
    from protrans_cli.heads.imported import describe, import_head

    console.info(describe(import_head(checkpoint, output, source=source, model=model, force=force)))
