"""`protrans import-esm`: fair-esm esm-extract outputs (LABEL.pt per protein) into embeddings HDF5.

    protrans import-esm esm_out/ -o esm.h5 --fasta proteins.fa --model esm2_t48_15B_UR50D
    protrans import-esm esm_out/ -o esm.h5 --per-protein --layout stacked
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE, given_option, invoked_as


@click.command("import-esm", context_settings={"show_default": True})
@click.argument("inputs", nargs=-1, required=True, type=INPUT_FILE)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="HDF5 file to write (written to OUTPUT.partial until complete).")
@click.option("--fasta", type=click.Path(dir_okay=False),
              help="The FASTA esm-extract read: each protein's checksum, length and truncated_from, as embed "
                   "records them; the row counts are checked against it.")
@click.option("--layer", "layers", type=int, multiple=True,
              help="esm-extract layer number (negative: from the last); repeat for several.  "
                   "[default: the highest in the files]")
@click.option("--per-residue", "per_residue", is_flag=True, help="Write (L, D) per-residue arrays.")
@click.option("--per-protein", "per_protein", is_flag=True,
              help="Write (D,) per-protein arrays (esm-extract's means, else the mean of its rows). Neither "
                   "flag: per-protein, and per-residue too where the files hold rows (--layout grouped).")
@click.option("--layout", type=click.Choice(["grouped", "flat", "stacked"]), default="grouped",
              help="As embed's: grouped, flat (one kind) or stacked (per-protein).")
@click.option("--storage-dtype", type=click.Choice(["float32", "float16"]), default=None,
              help="dtype of the stored arrays.  [default: float32; float16 with --contacts, as protrans contacts]")
@click.option("--bos", is_flag=True,
              help="Per-protein vectors from esm-extract's bos_representations (--include bos: the <cls> token's "
                   "hidden state), as embed --pooling cls writes them, instead of the means.")
@click.option("--contacts", is_flag=True,
              help="Import the contact maps instead (esm-extract --include contacts) into the file protrans "
                   "contacts writes (/contacts/<id>); no --layer, --per-residue, --per-protein or --layout.")
@click.option("-m", "--model", default=None,
              help="The ESM model esm-extract ran (e.g. esm2_t48_15B_UR50D): the file's `model` attribute and "
                   "its number of layers.  [default: esm-extract, its last layer the highest in the files]")
@click.option("--truncation-seq-length", type=int, default=1022,  # (its range: import_esm, as other commands word it)
              help="esm-extract's --truncation_seq_length (recorded as --max-length with --long-policy truncate).")
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT.")
def command(inputs, output, fasta, layers, per_residue, per_protein, layout, storage_dtype, bos, contacts, model,
            truncation_seq_length, force):
    """Import esm-extract's .pt files into one embeddings file (no computation).

    fair-esm's esm-extract writes one LABEL.pt per protein; this writes the HDF5 file `protrans
    embed` writes for the same model and settings (`--max-length 1022 --long-policy truncate`),
    which fit, predict and merge read. Each file is loaded weights-only. Everything is checked
    (structure, layers, one width, one file per id, row counts against --fasta) before anything
    is written.

    \b
    esm-extract esm2_t48_15B_UR50D proteins.fa esm_out/ --include per_tok mean
    protrans import-esm esm_out/ --fasta proteins.fa -m esm2_t48_15B_UR50D \\
        -o esm.h5
    protrans fit loc --embeddings esm.h5 --labels deeploc.fa -o loc_head/
    """

    from protrans_cli import console
    from protrans_cli.errors import UsageError
    from protrans_cli.esm_import import import_esm, import_esm_contacts

    if contacts:
        given = [flag for flag, on in (("--bos", bos), ("--layer", layers), ("--per-residue", per_residue),
                                       ("--per-protein", per_protein),
                                       # (by where it came from: --layout grouped, the default's value, was taken)
                                       ("--layout", given_option("layout"))) if on]
        if given:
            raise UsageError(f"{given[0]} is for embeddings: --contacts imports the contact maps alone")
        summary = import_esm_contacts(list(inputs), output, fasta=fasta, storage_dtype=storage_dtype or "float16",
                                      model=model, truncation_seq_length=truncation_seq_length, force=force,
                                      command_line=invoked_as())
        truncated = f"; {summary.truncated} truncated by esm-extract" if summary.truncated else ""
        console.output_complete(str(output))
        console.info(f"import-esm: {console.counted(summary.proteins, 'contact map')} into {output}{truncated}")
        console.list_failed(summary.failed, "contact map")
        return
    storage_dtype = storage_dtype or "float32"
    if not per_residue and not per_protein:
        per_residue = per_protein = None
    summary = import_esm(list(inputs), output, fasta=fasta, layers=layers, per_residue=per_residue,
                         per_protein=per_protein, layout=layout, storage_dtype=storage_dtype, model=model,
                         truncation_seq_length=truncation_seq_length, force=force,
                         command_line=invoked_as(), bos=bos)
    truncated = f"; {summary.truncated} truncated by esm-extract" if summary.truncated else ""
    failed = f"; {len(summary.failed)} not written (the 'failed' attribute)" if summary.failed else ""
    layers_said = ", ".join(map(str, summary.layers))
    console.info(f"import-esm: {console.counted(summary.proteins, 'protein')} (layer {layers_said}) into "
                 f"{output}{truncated}{failed}")
