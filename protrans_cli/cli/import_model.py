"""`protrans import-model`: a fair-esm `.pt` checkpoint (ESM-2, ESM-1b, ESM-1v) as a transformers
model directory.

    protrans import-model ~/.cache/torch/hub/checkpoints/esm2_t33_650M_UR50D.pt -o esm2_650M/
    protrans embed proteins.fa -m esm2_650M/ -o proteins.h5
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE


@click.command("import-model", context_settings={"show_default": True})
@click.argument("checkpoint", type=INPUT_FILE)
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Model directory to write (transformers' EsmForMaskedLM, as the published facebook/esm2_* are).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it is a model directory.")
def command(checkpoint, output, force):
    """Convert a fair-esm .pt checkpoint into a model directory (no download).

    fair-esm's files (esm2_*.pt, esm1b_*.pt, esm1v_*.pt, as torch.hub keeps them in
    ~/.cache/torch/hub/checkpoints/, or a model fine-tuned with fair-esm's code) become the
    directory every command takes as -m. The file is read weights-only: the config objects it
    pickles are read as inert stand-ins, and nothing in it runs. The contact regression
    (NAME-contact-regression.pt beside NAME.pt) becomes the contact head, as fair-esm merges it.

    \b
    protrans import-model esm2_t33_650M_UR50D.pt -o esm2_650M/
    protrans embed proteins.fa -m esm2_650M/ -o proteins.h5
    """
    from protrans_cli import console
    from protrans_cli.models.fair_esm import describe, import_fair_esm

    console.info(describe(import_fair_esm(checkpoint, output, force=force)))
