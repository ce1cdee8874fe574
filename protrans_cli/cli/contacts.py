"""`protrans contacts`: residue-residue contact maps from ESM's contact head into HDF5.

    protrans contacts proteins.fa -m esm2_t33_650M_UR50D -o contacts.h5
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE, completion, invoked_as
from protrans_cli.cli.embed import chain_options, device_map_options


@click.command("contacts", context_settings={"show_default": True})
@click.argument("fasta", type=INPUT_FILE)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="HDF5 file to write (written to OUTPUT.partial until the run completes).")
@click.option("-m", "--model", default="esm2_t33_650M_UR50D", shell_complete=completion.weights,
              help="An ESM-2 or ESM-1b checkpoint with its contact head: short name (see `protrans models`), "
                   "model directory or hub id.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of the model.")
@click.option("--storage-dtype", type=click.Choice(["float16", "float32"]), default="float16",
              help="dtype of the stored maps (probabilities: float16 keeps 3 decimal digits at half the size).")
@click.option("--compression", type=click.Choice(["none", "gzip", "lzf"]), default="none",
              help="HDF5 compression of the maps (gzip for files read by other HDF5 tools).")
@click.option("--device", default="auto",
              help="auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              help="Compute dtype; auto = bfloat16 on a GPU with bfloat16 hardware, float16 on one without, "
                   "float32 on the CPU and on GPUs whose float16 is slow (GTX 10xx, P40, GTX 16xx).")
@click.option("--max-tokens", type=int, default=None,
              help="Padded tokens per batch (longest protein x proteins).  [default: 1024 on the CPU, 4096 on a "
                   "GPU, as esm-extract]")
@click.option("--max-batch-size", type=int, default=100, help="Proteins per batch at most.")
@click.option("--max-length", type=int, default=None,
              help="Residues; longer proteins follow --long-policy.  [default: 1022, the crops ESM was "
                   "trained on (esm-extract's --truncation_seq_length)]")
@click.option("--long-policy", "--long", "long_policy", type=click.Choice(["error", "skip", "truncate"]),
              default="error",
              help="Proteins over --max-length: fail before any work, skip (recorded as failed), or keep the "
                   "map of their first residues (as esm-extract does; recorded as truncated_from).")
@chain_options("A complex: one record whose chains are separated by ':' (ColabFold's and ESMFold's input). "
               "error: refuse it; linker: join the chains with --linker-length glycines (ESMFold's way); the "
               "map covers every residue of the chains, inter-chain contacts included, without the linker.",
               policies=("error", "linker"))
@click.option("--invalid-policy", type=click.Choice(["error", "skip"]), default="error",
              help="Sequences that cannot be read (a J, an inner '*', no residues): fail before any work, or "
                   "skip them (recorded as failed).")
@device_map_options(" No float32 retry of a NaN map; not under torchrun.")
@click.option("--resume", is_flag=True, help="Keep the proteins already in OUTPUT (or OUTPUT.partial); compute the "
                                             "rest.")
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT.")
@click.option("-j", "--threads", type=int, default=None,
              help="CPU threads for torch.  [default: $PROTRANS_THREADS, else min(cores, 4)]")
def command(fasta, output, model, revision, storage_dtype, compression, device, dtype, max_tokens, max_batch_size,
            max_length, long_policy, chains, linker_length, invalid_policy, device_map, max_memory, offload_folder,
            resume, force, threads):
    """Residue-residue contact maps from ESM's contact head, into HDF5.

    Each protein's (L, L) map of contact probabilities (C-beta within 8 A) under
    /contacts/<id>: ESM's logistic regression over every layer's attention maps (Rao et al.
    2021), as esm-extract --include contacts and fair-esm's return_contacts give them, computed
    one layer at a time (the maps of all layers are never held at once). Published ESM-2 and
    ESM-1b checkpoints only: a model pretrained by protrans train has no trained contact head.

    \b
    protrans contacts proteins.fa -m esm2_t33_650M_UR50D -o contacts.h5
    python -c "import h5py; print(h5py.File('contacts.h5')['contacts']['P1'][:])"
    """

    from protrans_cli import console
    from protrans_cli.cli import finished_with_resume
    from protrans_cli.contacts import ContactOptions, predict_contacts
    from protrans_cli.io.h5 import partial_path
    from protrans_cli.threads import resolve_threads

    options = ContactOptions(
        model=model, revision=revision, device=device, dtype=dtype, max_tokens=max_tokens,
        max_batch_size=max_batch_size, max_length=max_length, long_policy=long_policy,
        invalid_policy=invalid_policy, chains=chains, linker_length=linker_length, storage_dtype=storage_dtype,
        compression=None if compression == "none" else compression, resume=resume, force=force,
        threads=resolve_threads(threads), command_line=invoked_as(), device_map=device_map, max_memory=max_memory,
        offload_folder=offload_folder)
    with finished_with_resume(force, lambda exc: partial_path(output)):
        summary = predict_contacts(fasta, output, options)
    console.output_complete(str(output))
    rate = summary.num_residues / summary.compute_seconds if summary.compute_seconds else 0.0
    console.info(f"contacts: {console.counted(summary.num_written, 'protein')} ({summary.num_residues:,} residues, "
                 f"{rate:,.0f} residues/s) into {output}"
                 + (f"; {summary.num_resumed:,} already there" if summary.num_resumed else ""))
    if summary.device_map:
        from protrans_cli.placement import spread_line

        console.info(spread_line(device_map, summary.device_map))
    console.list_failed(summary.failed, "contact map")
    from protrans_cli.cli import refuse_if_every_protein_failed

    refuse_if_every_protein_failed(summary.failed, summary.num_written, summary.num_resumed, "contact map", output)
