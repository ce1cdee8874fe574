"""`protrans esm-extract`: fair-esm's esm-extract command line, a FASTA to one ID.pt file a protein.

    protrans esm-extract esm2_t33_650M_UR50D proteins.fasta out_dir --repr_layers 0 32 33 --include mean per_tok
"""

from __future__ import annotations

import re

import click

from protrans_cli.choices import DTYPES, INCLUDES
from protrans_cli.cli import INPUT_FILE, completion, invoked_as

# esm-extract's options of several values (argparse's nargs="+") -> what its values look like
# (argparse takes every following word that is no option; a negative number is a layer)
_LISTS = {"--repr_layers": r"-?\d+|[^-].*", "--repr-layers": r"-?\d+|[^-].*", "--include": r"[^-].*"}


def spread_lists(args: list[str]) -> list[str]:
    """`--repr_layers 0 32 33` as click reads a repeated option, `--repr_layers 0 --repr_layers 32
    --repr_layers 33` (argparse's nargs="+": the words after the option up to the next option, or
    `--`, are its values); the same for `--include`. Repeating the option works too."""
    spread, current, after_value = [], None, False
    for i, arg in enumerate(args):
        if arg == "--":
            return spread + args[i:]
        if current is not None and after_value and re.fullmatch(_LISTS[current], arg):
            spread += [current, arg]
            continue
        if current is not None and not after_value:  # (the option's first value, as click takes it)
            spread.append(arg)
            after_value = True
            continue
        name, equals, _ = arg.partition("=")
        current, after_value = (name, bool(equals)) if name in _LISTS else (None, False)
        spread.append(arg)
    return spread


class _ArgparseLists(click.Command):
    """A command that reads esm-extract's options of several values (spread_lists)."""

    def parse_args(self, ctx, args):
        return super().parse_args(ctx, spread_lists(list(args)))


@click.command("esm-extract", cls=_ArgparseLists, context_settings={"show_default": True})
@click.argument("model_location", shell_complete=completion.models)
@click.argument("fasta_file", type=INPUT_FILE)
@click.argument("output_dir", type=click.Path(file_okay=False))
@click.option("--repr_layers", "--repr-layers", "repr_layers", type=int, multiple=True, default=(-1,),
              metavar="LAYER...",
              help="Layers whose hidden states are written, several after one flag (0 32 33) or the flag "
                   "repeated: 0 the embedding layer .. N the last; negative ones count from the end (-1 is N). "
                   "The files' keys are the numbers 0 .. N, each layer once.")
@click.option("--include", "include", type=click.Choice(INCLUDES), multiple=True, required=True,
              metavar="[mean|per_tok|bos|contacts]...",
              help="What each file holds, one or more: mean (mean_representations), per_tok "
                   "(representations, (L, D) rows), bos (bos_representations: the <cls> token's hidden state), "
                   "contacts (ESM's contact map, (L, L); ESM-2 and ESM-1b only).")
@click.option("--toks_per_batch", "--toks-per-batch", "toks_per_batch", type=int, default=4096,
              help="Padded tokens per batch (the outputs do not depend on it).")
@click.option("--truncation_seq_length", "--truncation-seq-length", "truncation_seq_length", type=int,
              default=1022,
              help="A longer protein is cut to its first this many residues (its rows, mean and contacts "
                   "alike); how many proteins were cut is said on stderr.")
@click.option("--nogpu", "--no-gpu", "nogpu", is_flag=True, help="Compute on the CPU even where there is a GPU.")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default="float32",
              help="Compute dtype (an option esm-extract has not): float32 gives its numbers; auto is embed's "
                   "(bfloat16 on a GPU that has it: faster, not esm-extract's numbers).")
@click.option("--resume", is_flag=True,
              help="Go on from the proteins an interrupted or failed run computed (an option esm-extract has "
                   "not): kept in OUTPUT_DIR/.protrans-esm-extract.partial/, they are not computed again; "
                   "the same settings are required.")
def command(model_location, fasta_file, output_dir, repr_layers, include, toks_per_batch, truncation_seq_length,
            nogpu, dtype, resume):
    """fair-esm's esm-extract command line: a FASTA to one ID.pt file per protein.

    The command line of esm-extract (fair-esm's scripts/extract.py), its options
    spelled as it spells them, writing the files it writes: OUTPUT_DIR/ID.pt,
    torch.save of {"label", "representations", "mean_representations",
    "bos_representations", "contacts"} (the included ones) as float32 tensors by
    layer. MODEL_LOCATION is any model embed takes (-m): a short name (see
    `protrans models`), hub id or model directory. A fair-esm .pt file (ESM-2,
    ESM-1b, ESM-1v) is converted for the run into a model directory in
    OUTPUT_DIR/.protrans-esm-extract.partial/ (kept there for --resume), as
    `protrans import-model` converts it once (read weights-only: nothing in
    it runs); so is fair-esm's download of a short name's weights in torch
    hub's checkpoints folder where the Hugging Face cache lacks the model.

    Differences: the file is named after the protein's id (its header up to the
    first space, a '/' as %2F), not the whole header line as esm-extract names
    it, so ids must be unique; the whole line is the label. Sequences are read
    as embed reads them: lowercase upper-cased and a final '*' removed
    (esm-extract stops on those), gaps ('-', '.') removed (esm-extract gives
    them rows). OUTPUT_DIR is made where missing; the files go
    into it once all are written, replacing files of the same name; a failed or
    interrupted run leaves none there, and keeps what it computed in
    OUTPUT_DIR/.protrans-esm-extract.partial/ for --resume (a run without it is
    refused while that folder holds work). Nothing is written to stdout: the summary and
    warnings go to stderr (protrans -q esm-extract ... quiets them).

    \b
    protrans esm-extract esm2_t33_650M_UR50D proteins.fasta out_dir \\
        --repr_layers 0 32 33 --include mean per_tok
    protrans esm-extract esm1b_t33_650M_UR50S proteins.fasta maps/ \\
        --include contacts --nogpu
    """
    from protrans_cli import console
    from protrans_cli.esm_extract import fair_esm_file

    # fair-esm's download of a short name's weights where the Hugging Face cache lacks the model
    # (fair-esm's esm-extract reads it from there without network): converted for the run as a
    # fair-esm file given as MODEL_LOCATION is (esm_extract converts it, into the working folder)
    if fair_esm_file(model_location) is None and (download := _fair_esm_download(model_location)) is not None:
        console.info(f"esm-extract: {model_location} is not in the Hugging Face cache; fair-esm's download of it, "
                     f"{download}, is used")
        model_location = str(download)
    _run(model_location, fasta_file, output_dir, repr_layers, include, toks_per_batch, truncation_seq_length,
         nogpu, dtype, resume)


def _fair_esm_download(model_location):
    """fair-esm's download of a short name's weights in torch hub's folder, where the Hugging Face
    cache lacks the model (fair-esm's esm-extract reads it from there), else None."""
    from protrans_cli.models.fair_esm import hub_cached, torch_hub_file

    download = torch_hub_file(str(model_location))
    return download if download is not None and not hub_cached(str(model_location)) else None


def _run(model_location, fasta_file, output_dir, repr_layers, include, toks_per_batch, truncation_seq_length, nogpu,
         dtype, resume):

    from protrans_cli import console
    from protrans_cli.esm_extract import ExtractOptions, esm_extract
    from protrans_cli.threads import resolve_threads

    options = ExtractOptions(model=model_location, repr_layers=tuple(repr_layers), include=tuple(include),
                             toks_per_batch=toks_per_batch, truncation_seq_length=truncation_seq_length,
                             device="cpu" if nogpu else "auto", dtype=dtype, threads=resolve_threads(None),
                             command_line=invoked_as(), resume=resume)
    try:
        summary = esm_extract(fasta_file, output_dir, options)
    except KeyboardInterrupt as exc:  # (Ctrl-C, SIGTERM, SIGHUP: what was kept, from esm_extract's note)
        from protrans_cli.cli import stopped

        raise stopped(exc, (getattr(exc, "__notes__", None) or [None])[-1]) from None
    console.output_complete(str(output_dir))
    kept = [i for i in INCLUDES if i in include]
    console.info(f"esm-extract: {console.counted(summary.num_written, 'file')} ({', '.join(kept)}; layer"
                 f"{'s' if len(summary.layers) != 1 else ''} {', '.join(map(str, summary.layers))}) into "
                 f"{summary.output}" + (f"; {console.counted(summary.num_replaced, 'file')} of the same name "
                                        "replaced" if summary.num_replaced else "")
                 + (f"; {summary.num_resumed:,} of them computed by the interrupted run" if summary.num_resumed
                    else ""))
    have = "has" if len(summary.failed) == 1 else "have"
    console.list_failed(summary.failed, "file", heading=f"{console.counted(len(summary.failed), 'protein')} could "
                                                        f"not be computed and {have} no file:")
    if summary.failed and not summary.num_written and not all(str(why).startswith("skipped:")
                                                              for why in summary.failed.values()):
        from protrans_cli.errors import RuntimeFailure

        raise RuntimeFailure("no file was written: every protein failed (listed above)", path=str(output_dir))
