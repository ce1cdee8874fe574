"""`protrans embed`: FASTA to per-residue and per-protein embeddings in HDF5.

    protrans embed proteome.fa -m prot_t5_xl_half -o proteome.h5
    protrans embed proteome.fa -m onehot --per-protein -o composition.h5
    torchrun --nproc-per-node 4 -m protrans_cli embed uniref50.fa.gz -m esm2_t33_650M_UR50D -o u50.h5
"""

from __future__ import annotations

import shlex

import click

from protrans_cli.attention import ATTENTIONS, SDPA_KERNELS
from protrans_cli.choices import (CHAIN_POLICIES, DEFAULT_LINKER_LENGTH, DEFAULT_WINDOW, DTYPES, INVALID_POLICIES,
                                  LONG_POLICIES)
from protrans_cli.cli import INPUT_FILE, command_args, completion


def command_line(argv: list[str]) -> str:
    """The command that ran, for the file's `command_line`: `protrans ARGS`, or under torchrun
    the launcher's shape of it (`torchrun [--nnodes N] --nproc-per-node L -m protrans_cli ARGS`,
    from the ranks' environment; torchrun's other options are not known here). A file that 4
    GPUs wrote said `protrans embed ...`, as if one process had."""
    import os

    words = ["protrans", *argv]
    if "TORCHELASTIC_RUN_ID" in os.environ:
        try:
            world = int(os.environ.get("WORLD_SIZE") or 1)
            local = int(os.environ.get("LOCAL_WORLD_SIZE") or world)
        except ValueError:
            return shlex.join(words)
        nodes = world // local if local > 0 and world % local == 0 else 0
        words = ["torchrun", *(["--nnodes", str(nodes)] if nodes > 1 else []), "--nproc-per-node", str(local),
                 "-m", "protrans_cli", *argv]
    return shlex.join(words)



def device_map_options(more: str = " Not under torchrun."):
    """--device-map, --max-memory and --offload-folder (embed, variants, perplexity:
    protrans_cli/placement.py); `more`: what the command's --device-map help adds."""
    def decorate(command):
        for decorator in reversed([
            click.option("--device-map", type=click.Choice(["auto", "balanced", "sequential"]), default=None,
                         help="Spread a model too large for one GPU over the GPUs, then CPU memory, then disk "
                              "(from_pretrained's device_map; needs pip install \"protrans[big]\"): auto/balanced "
                              "even over the GPUs, sequential fills them in order." + more
                              + "  [default: the whole model on --device]"),
            click.option("--max-memory", default=None, metavar="DEV=SIZE,...",
                         help="With --device-map: the most each device holds, e.g. 0=20GiB,1=20GiB,cpu=60GiB (cpu "
                              "alone: no GPU).  [default: what each device has free]"),
            click.option("--offload-folder", type=click.Path(file_okay=False), default=None,
                         help="With --device-map: a folder for the weights that fit on no device (read from it at "
                              "every batch: slow)."),
        ]):
            command = decorator(command)
        return command
    return decorate


def structure_tokens_option(which: str):
    """--structure-tokens FASTA (embed, variants, perplexity): SaProt's 3Di strings, `which`
    saying whose they are (read by models/saprot.py's read_structure_tokens)."""
    return click.option(
        "--structure-tokens", "structure_tokens", type=click.Path(dir_okay=False), default=None, metavar="FASTA",
        help=f"SaProt: a FASTA of 3Di strings (Foldseek's states, either case; # - ? . for unknown), {which}, "
             "one letter per residue (protrans translate --to 3di writes one): each residue is read with its "
             "state ('Md', not 'M#').")


def chain_options(chains_help: str, policies=CHAIN_POLICIES):
    """--chains (a complex's ':'; `chains_help` says what each policy does in the command) and
    --linker-length, as every command that reads complexes takes them."""
    def decorate(command):
        command = click.option("--linker-length", type=int, default=DEFAULT_LINKER_LENGTH, show_default=True,
                               help="Glycines between the chains of a complex under --chains linker.")(command)
        return click.option("--chains", type=click.Choice(list(policies)), default="error",
                            help=chains_help)(command)
    return decorate

@click.command("embed", context_settings={"show_default": True})
@click.argument("fasta", type=INPUT_FILE)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="HDF5 file to write (written to OUTPUT.partial until the run completes).")
@click.option("-m", "--model", default="prot_t5_xl_half", shell_complete=completion.models,
              help="Short name (see `protrans models`), model directory, hub id, or a weightless "
                   "baseline: 'onehot' or 'blosum62' (BLOSUM62 score rows).")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of the model.")
@click.option("--per-residue", "per_residue", is_flag=True, help="Write (L, D) per-residue arrays.")
@click.option("--per-protein", "per_protein", is_flag=True,
              help="Write (D,) per-protein arrays (mean over residues). Neither flag: both (--layout stacked: "
                   "per-protein).")
@click.option("--pooling", type=click.Choice(["mean", "cls"]), default="mean",
              help="Per-protein vectors: the mean over the residue rows (special tokens excluded, as ProtTrans "
                   "and bio_embeddings), or the hidden state of the model's cls token ([CLS], <cls>, <s>; "
                   "esm-extract's --include bos; not for T5, Transformer-XL, onehot or blosum62).")
@click.option("--layer", "layers", type=int, multiple=True,
              help="Hidden state to keep: -1 last layer, 0 embedding layer; repeat for several: arrays (layers, L, D) "
                   "and (layers, D) (fit's --layer picks one).  [default: -1]")
@click.option("--layout", type=click.Choice(["grouped", "flat", "stacked"]), default="grouped",
              help="grouped: /per_residue/<id>, /per_protein/<id>; flat: /<id> (ProtTrans, bio_embeddings); "
                   "stacked: per-protein vectors as one (N, D) array /per_protein, ids in /ids (numpy, "
                   "millions of proteins).")
@click.option("--storage-dtype", type=click.Choice(["float32", "float16"]), default="float32",
              help="dtype of the arrays in the file.")
@click.option("--compression", type=click.Choice(["none", "gzip", "lzf"]), default="none",
              help="HDF5 dataset compression of per-residue arrays; lzf is faster but only h5py reads it "
                   "(gzip for files read by other HDF5 tools).")
@click.option("--device", default="auto", help="auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="auto",
              help="Compute dtype; auto = bfloat16 on a GPU with bfloat16 hardware, float16 on one without "
                   "(V100, T4), float32 on the CPU and on GPUs whose float16 is slow (GTX 10xx, P40, GTX 16xx).")
@click.option("--max-tokens", type=int, default=None,
              help="Padded tokens per batch (longest sequence x sequences).  [default: 512 on the CPU; on a GPU 4000 to 32000 by the memory free after loading the model and the model's memory per token]")
@click.option("--max-batch-size", type=int, default=100, help="Sequences per batch at most.")
@click.option("--max-length", type=int, default=None,
              help="Residues; longer proteins follow --long-policy.  [default: the model's own limit where its "
                   "positions are a learned table (BERT, ALBERT, ELECTRA, RoBERTa, ESM-1b/1v), else none]")
@click.option("--long-policy", "--long", "long_policy", type=click.Choice(list(LONG_POLICIES)), default="error",
              help="Proteins over --max-length: fail, skip (recorded as failed), truncate, or chunk into "
                   "overlapping windows stitched back together.")
@click.option("--chunk-overlap", type=int, default=64, help="Residues shared by neighbouring windows.")
@chain_options("A complex: one record whose chains are separated by ':' (ColabFold's and ESMFold's input). "
               "error: refuse it; linker: join the chains with --linker-length glycines (ESMFold's way), "
               "the linker's rows dropped; separate: embed each chain alone, rows concatenated.")
@click.option("--invalid-policy", "invalid_policy", type=click.Choice(list(INVALID_POLICIES)), default="error",
              help="Sequences that cannot be embedded (a J, an inner '*', no residues): fail before any "
                   "work, or skip them (recorded as failed, with the reason).")
@click.option("--3di", "three_di", is_flag=True,
              help="The sequences are Foldseek 3Di strings (one structure state per residue), not amino "
                   "acids: ProstT5 reads them lower-case after <fold2AA>.")
@structure_tokens_option("one per input record under its id")
@click.option("--cpu-fallback", is_flag=True,
              help="Retry on the CPU a protein that alone does not fit in GPU memory (not with --device-map).")
@device_map_options(" Padded batches, the model's own attention; not under torchrun.")
@click.option("--packing/--no-packing", default=None,
              help="BERT/RoBERTa/ALBERT/ELECTRA/ESM: each batch one row without padding, attention kept "
                   "inside each protein (one fused varlen kernel on an NVIDIA GPU); T5 with --attention flex "
                   "(a block mask of the row's proteins).  [default: on for the first families on an NVIDIA GPU "
                   "with the varlen kernel, and for T5 under FlexAttention in bfloat16, with batches of 32000 "
                   "tokens or more (measured faster there); off elsewhere]")
@click.option("--sdpa-kernels", type=click.Choice(list(SDPA_KERNELS)), default="auto",
              help="GPU attention kernels: auto leaves out cuDNN attention, which builds a plan for every "
                   "new batch shape; torch keeps PyTorch's own choice.")
@click.option("--compile", "compile_model", is_flag=True,
              help="torch.compile each transformer block (one compilation serves them all, one graph every "
                   "batch length): the first batches wait for it (seconds); for long runs on a GPU. With "
                   "--packing only when asked for (not measured together on a GPU yet).")
@click.option("--attention", type=click.Choice(list(ATTENTIONS)), default="auto",
              help="sdpa: the model's own attention; flex (T5 family: ProtT5, Ankh): FlexAttention, the "
                   "relative-position bias inside one fused kernel on a CUDA GPU (2.4x the ProtTrans "
                   "script on an H200; not with --compile); auto: flex for a T5 model on a CUDA GPU in "
                   "bfloat16 where its kernel builds (else sdpa, with a warning if it failed to build), "
                   "sdpa elsewhere.")
@click.option("--resume", is_flag=True, help="Keep the proteins already in OUTPUT (or OUTPUT.partial); embed the rest.")
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT (without it, or --resume, an existing OUTPUT is refused).")
@click.option("--reuse", "reuse", multiple=True, metavar="FILE", type=click.Path(),
              help="An earlier output of the same model and settings: proteins whose sequence it holds "
                   "are copied from it, under this input's ids, not computed (repeat for several).")
@click.option("--part", default=None, metavar="K/N",
              help="Embed only part K of N of the input (its proteins chosen by sequence digest; the same in "
                   "every run): a job array's share without splitting the FASTA; join the parts with "
                   "protrans merge.")
@click.option("--window", type=int, default=DEFAULT_WINDOW,
              help="Proteins read, length-sorted and embedded at a time: bounds memory whatever the input size.")
@click.option("-j", "--threads", type=int, default=None,
              help="CPU threads for torch.  [default: $PROTRANS_THREADS, else min(cores, 4)]")
def command(fasta, output, model, revision, per_residue, per_protein, pooling, layers, layout, storage_dtype,
            compression, device, dtype, max_tokens, max_batch_size, max_length, long_policy, chunk_overlap,
            chains, linker_length, invalid_policy, three_di, structure_tokens, cpu_fallback, packing, sdpa_kernels, compile_model, attention, resume, force,
            reuse, part, window, threads, device_map, max_memory, offload_folder):
    """FASTA to per-residue and per-protein embeddings in HDF5.

    \b
    protrans embed proteome.fa -m prot_t5_xl_half -o proteome.h5
    protrans embed proteome.fa -m onehot --per-protein --layout flat \\
        -o composition.h5
    torchrun --nproc-per-node 4 -m protrans_cli embed proteome.fa -o proteome.h5
    """
    from protrans_cli import console
    from protrans_cli.cli import finished_with_resume, naming_default_model
    from protrans_cli.embed import EmbedOptions, embed, when_output_final
    from protrans_cli.embed_dist import interrupted_output
    from protrans_cli.threads import resolve_threads

    if not per_residue and not per_protein:
        per_residue, per_protein = layout != "stacked", True
    options = EmbedOptions(
        model=model, revision=revision, per_residue=per_residue, per_protein=per_protein,
        layers=tuple(layers) or (-1,), pooling=pooling, layout=layout, storage_dtype=storage_dtype,
        compression=None if compression == "none" else compression, device=device, dtype=dtype,
        max_tokens=max_tokens, max_batch_size=max_batch_size, max_length=max_length,
        long_policy=long_policy, chunk_overlap=chunk_overlap, invalid_policy=invalid_policy, chains=chains,
        linker_length=linker_length,
        three_di=three_di, structure_tokens=structure_tokens, cpu_fallback=cpu_fallback, packing=packing,
        sdpa_kernels=sdpa_kernels, compile=compile_model, attention=attention, resume=resume, force=force,
        window=window, threads=resolve_threads(threads), command_line=command_line(command_args()),
        part=part, reuse=tuple(reuse), device_map=device_map, max_memory=max_memory, offload_folder=offload_folder,
    )
    # (the merge's OUTPUT.partial, with torchrun: the exception's `kept`)
    with finished_with_resume(force, lambda exc: getattr(exc, "kept", None) or interrupted_output(output)):
        # (the output is complete from its final rename on: a signal after it stops nothing; under
        # torchrun, on a rank other than 0, once its share is written: rank 0 then says how the run ended)
        with when_output_final(lambda quiet=False: console.output_complete(
                f"this rank's share of {output}" if quiet else str(output), quiet=quiet)):
            with naming_default_model("embed", model, "-m onehot and -m blosum62 need no weights, and -m RUN takes a model "
                                      "that protrans train wrote"):
                summary = embed(fasta, output, options)
    if summary.output is None:  # a torchrun rank other than 0: rank 0 reports
        return
    console.output_complete(str(output))
    rate = summary.residues_per_second
    # (where it ran: "is it on the GPU?" is the question a slow run raises; a script's --device cpu)
    where = (f"{summary.world_size} ranks on {summary.device.split(':')[0]}" if summary.world_size > 1
             else summary.device)
    console.info(f"embedded {console.counted(summary.num_embedded, 'protein')} "
                 f"({summary.num_residues:,} residues, {rate:,.0f} residues/s on {where}, {summary.compute_dtype}) "
                 f"into {output}"
                 + (f"; {summary.num_resumed:,} already there" if summary.num_resumed else "")
                 + (f"; {summary.num_reused:,} copied from --reuse" if summary.num_reused else "")
                 # (proteins, not sequences: three copies of one sequence are 2 proteins that repeat
                 # another's, where "2 identical sequences computed once" read as 2 sequences; and a
                 # share of the embedded and copied ones, said as such: "; 4,401 copied from --reuse;
                 # 41 proteins share..." read as 41 more)
                 + (f"; of these {summary.num_embedded + summary.num_reused:,}, {summary.num_duplicates:,} "
                    f"{'repeats' if summary.num_duplicates == 1 else 'repeat'} another's sequence "
                    "(not computed again)" if summary.num_duplicates else ""))
    if summary.device_map:
        from protrans_cli.placement import spread_line

        console.info(spread_line(device_map, summary.device_map))
    if summary.truncated:  # (asked for, but never silent: their rows and means are of the first residues only)
        count, one = len(summary.truncated), len(summary.truncated) == 1
        limit = (f"--max-length {summary.max_length:,}" if max_length
                 else f"the {summary.max_length:,} residues the model accepts")
        console.info(f"truncated {console.counted(count, 'protein')} longer than {limit} to {'its' if one else 'their'} "
                     f"first {summary.max_length:,} residues (--long-policy truncate): "
                     f"{console.some_named(count, summary.truncated[:console.NAMED])}; listed in the file's "
                     "'truncated' attribute (protrans info)")
    console.list_failed(summary.failed, "embedding")
    from protrans_cli.cli import refuse_if_every_protein_failed

    refuse_if_every_protein_failed(summary.failed, summary.num_embedded + summary.num_reused, summary.num_resumed,
                                   "embedding", output)

