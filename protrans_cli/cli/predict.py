"""`protrans predict`: apply a trained head to embeddings (and score it when labels are given).

    protrans predict heads/ss3 --embeddings query.h5 -o query.ss3.fa
    protrans predict heads/loc --embeddings query.h5 -o query.loc.csv
    protrans predict heads/ss3 --embeddings cb513.h5 --labels CB513_HHblits.csv --metrics cb513_metrics/
    protrans predict heads/ss3 --fasta query.fa -o query.ss3.fa   # embeds with the head's model first
"""

from __future__ import annotations

import click

from protrans_cli.choices import CHAIN_POLICIES, DEFAULT_LINKER_LENGTH, FORMATS, INVALID_POLICIES, LONG_POLICIES
from protrans_cli.cli import INPUT_FILE, completion, given_option


def fasta_embedding_options(recorded: str, skipped: str, records_chains: bool = False):
    """--max-length, --long-policy, --chunk-overlap, --chains, --linker-length, --invalid-policy: how
    --fasta sequences are embedded (predict's and knn's), each defaulting to what `recorded` (the embeddings whose
    settings are followed) records; `skipped`: what a skipped protein gets ("no prediction");
    `records_chains`: --chains and --linker-length too (a finetune's head records its own)."""
    chains_default = f"as {recorded} where recorded (a finetune's --chains), else " if records_chains else ""
    options = [
        click.option("--max-length", type=int, default=None,
                     help=f"With --fasta: residues; longer proteins follow --long-policy.  [default: as {recorded}, "
                          "else the model's limit]"),
        click.option("--long-policy", "--long", "long_policy", type=click.Choice(list(LONG_POLICIES)), default=None,
                     help=f"With --fasta: proteins over --max-length fail, are skipped ({skipped}), truncated, or "
                          f"chunked as embed does.  [default: as {recorded}, else error]"),
        click.option("--chunk-overlap", type=int, default=None,
                     help="With --fasta and --long-policy chunk: residues shared by neighbouring windows.  "
                          f"[default: as {recorded} where they were chunked, else 64]"),
        click.option("--chains", type=click.Choice(list(CHAIN_POLICIES)), default=None,
                     help="With --fasta: a complex (chains separated by ':' in one record) is refused, or embedded "
                          "as embed --chains does: linker (joined by --linker-length glycines) or separate (each "
                          f"chain alone).  [default: {chains_default}error]"),
        click.option("--linker-length", type=int, default=None,
                     help=f"With --fasta and --chains linker: glycines between the chains.  "
                          f"[default: {chains_default}{DEFAULT_LINKER_LENGTH}]"),
        click.option("--invalid-policy", "invalid_policy", type=click.Choice(list(INVALID_POLICIES)), default=None,
                     help="With --fasta: sequences that cannot be embedded (a J, an inner '*', no residues) fail, "
                          f"or are skipped ({skipped}, with a warning), as embed does.  [default: error]"),
    ]

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


@click.command("predict", context_settings={"show_default": True})
@click.argument("head", type=click.Path())  # (a file: load_head says what it is)
@click.option("--embeddings", type=INPUT_FILE, metavar="FILE", default=None, help="Embeddings to predict on (HDF5).")
@click.option("--fasta", type=INPUT_FILE, metavar="FILE", default=None,
              help="Sequences to predict on instead: embedded first with the model and layer the head was "
                   "trained on (into a temporary file); predictions follow the FASTA's order.")
@click.option("-m", "--model", default=None, shell_complete=completion.models,
              help="With --fasta: the embedding model, when not the one the head records (e.g. a local copy).")
@fasta_embedding_options("the head's training embeddings", "no prediction", records_chains=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Predictions: FASTA-like states per protein (per-residue heads) or CSV (per-protein heads; TSV for a .tsv name); "
                   "'-' = stdout; .gz/.bz2/.xz/.zst compress.  [default: stdout, unless only --labels is given]")
@click.option("--probabilities", type=click.Path(dir_okay=False), default=None,
              help="Per-residue heads: also write per-residue class probabilities to this HDF5 file.")
@click.option("--head-output", "head_output", default=None,
              help="Per-residue heads with several outputs (ss3+ss8, ss3+ss8+disorder): the one whose states "
                   "are written.  "
                   "[default: the first]")
@click.option("--labels", type=INPUT_FILE, metavar="FILE", default=None,
              help="Also score the head against these labels.")
@click.option("--metrics", "metrics_dir", type=click.Path(file_okay=False), default=None,
              help="With --labels: directory for the metrics JSON and confusion-matrix PNGs.")
@click.option("--label-format", type=click.Choice(list(FORMATS)), default="auto", help="Format of --labels.")
@click.option("--mask", "mask_path", type=INPUT_FILE, metavar="FILE", default=None, help="FLIP mask FASTA for --labels.")
@click.option("--mask-column", "mask_columns", multiple=True, default=(),
              help="NetSurfP mask columns for --labels.  [default: the head's, as fit recorded them (disorder)]")
@click.option("--skip-mismatched", is_flag=True, help="With --labels: leave out labels without a matching embedding.")
@click.option("--only-embedded", is_flag=True,
              help="With --labels: leave out the label records without an embedding (scoring part of a label file); "
                   "a length or sequence that disagrees is still an error.")
@click.option("--allow-model-mismatch", is_flag=True,
              help="Use embeddings from another model than the head was trained on (same dimension).")
@click.option("--max-residues", type=int, default=8192,
              help="Heads that read per-residue embeddings (CNN, light-attention, linear per residue): padded "
                   "residues per batch.")
@click.option("-j", "--threads", type=int, default=None,
              help="CPU threads for torch.  [default: $PROTRANS_THREADS, else min(cores, 4) for a head that reads "
                   "per-residue embeddings (CNN, light-attention, linear per residue) and 1 for an FNN or a "
                   "per-protein linear head]")
@click.option("--device", default="auto", show_default=True,
              help="auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps.")
@click.option("--plots/--no-plots", default=True, show_default=True,
              help="With --metrics: write a confusion (or scatter) PNG per output next to its JSON.")
def command(head, embeddings, fasta, model, max_length, long_policy, chunk_overlap, chains, linker_length,
            invalid_policy, output, probabilities,
            head_output, labels, metrics_dir, label_format, mask_path, mask_columns, skip_mismatched,
            only_embedded, allow_model_mismatch, max_residues, threads, device, plots):
    """Apply a trained head to embeddings.

    \b
    protrans predict heads/ss3 --embeddings query.h5 -o query.ss3.fa
    protrans predict heads/loc --embeddings query.h5 -o query.loc.csv
    protrans predict heads/ss3 --fasta query.fa -o query.ss3.fa
    """
    from protrans_cli.cli.fit import on_mismatch
    from protrans_cli.errors import UsageError

    mismatch = on_mismatch(skip_mismatched, only_embedded)
    if (embeddings is None) == (fasta is None):
        raise UsageError("give --embeddings (an HDF5 file from embed) or --fasta (sequences), one of them")
    if model is not None and fasta is None:
        raise UsageError("--model goes with --fasta (--embeddings were already made by a model)")
    for given, flag in ((max_length, "--max-length"), (long_policy, "--long-policy"),
                        (chunk_overlap, "--chunk-overlap"), (chains, "--chains"), (linker_length, "--linker-length"),
                        (invalid_policy, "--invalid-policy")):
        if given is not None and fasta is None:
            raise UsageError(f"{flag} goes with --fasta (--embeddings were already made)")
    # (--label-format by where it came from: auto, the default's value, given, was taken)
    for given, flag in ((given_option("label_format"), "--label-format"), (mask_path is not None, "--mask"),
                        (mask_columns, "--mask-column"), (skip_mismatched, "--skip-mismatched"),
                        (only_embedded, "--only-embedded")):
        # (how the labels scored are read: without --labels they changed nothing, without a word)
        if given and labels is None:
            raise UsageError(f"{flag} goes with --labels (it says how the labels scored are read; the predictions "
                             "alone read none)")
    from protrans_cli.heads.predict import _check_max_residues, check_fasta_values

    # (the options' values before the head is read, and before a warning that one is ignored)
    check_fasta_values(max_length, chunk_overlap, threads)
    _check_max_residues(max_residues)
    if given_option("max_residues"):
        _warn_unused_max_residues(head)
    if given_option("plots") and metrics_dir is None:
        from protrans_cli import console

        console.warn(f"--{'' if plots else 'no-'}plots does nothing without --metrics (the figures go beside its JSON)")
    if output is None and labels is None:
        output = "-"  # text output goes to stdout when -o is absent, as in every command
    if output is None and (probabilities is not None or head_output is not None):
        # with --labels alone nothing is predicted to a file: these were silently ignored
        given = "--probabilities" if probabilities is not None else "--head-output"
        raise UsageError(f"{given} goes with the predictions: add -o FILE (or -o - for stdout) next to --labels")
    if embeddings == "-":  # (exit 2 before any work, as --probabilities -; it was exit 1 once the head was loaded)
        from protrans_cli.io.h5 import HDF5_FROM_STDIN

        raise UsageError(HDF5_FROM_STDIN)
    if [fasta, labels, mask_path].count("-") > 1:  # the first read would take it all ("<stdin>: is empty")
        raise UsageError("stdin ('-') can be one input at most: give the others as files")
    if probabilities == "-":
        # `-` means stdout in every command, but HDF5 cannot be streamed: this wrote a file named
        # `-` in the current directory. Refused as `embed -o -` is.
        raise UsageError("--probabilities is an HDF5 file, which cannot be written to stdout: give a file name")
    if probabilities is not None:  # (-o x.fa.gz compresses; this wrote plain HDF5 under a gzip name)
        from protrans_cli.io.files import refuse_compressed_hdf5, refuse_partial_name

        refuse_compressed_hdf5(probabilities, "--probabilities")
        refuse_partial_name(probabilities, "--probabilities")  # (export and merge took it for unfinished)
    import os

    from protrans_cli.io.files import (folder_can_be_made, input_named_by, names_stdout, output_directory,
                                       refuse_special_output, same_file, special_output, temporary_folder)

    if probabilities is not None:
        refuse_special_output(probabilities, "--probabilities", "an HDF5 file")
    if metrics_dir is not None:
        refuse_special_output(metrics_dir, "--metrics", "the metrics folder")

    for out in (output, probabilities):
        # `-o query.h5` replaced the embeddings it had just read with the predictions.
        if input_named_by(out, (embeddings, fasta, labels)):
            raise UsageError(f"{out} is also an input: writing it would replace it (choose another name)")
        if input_named_by(out, (), directories=(head,)):
            raise UsageError(f"{out} is inside the head directory {head}: writing it could replace the head's "
                             "files (choose another name)")
        if out is not None and out != "-":
            output_directory(out)
    if output and probabilities and output != "-" and same_file(output, probabilities):
        raise UsageError(f"-o and --probabilities both name {output}: one would replace the other")
    if output == "-" and probabilities is not None and names_stdout(probabilities):
        # (`--probabilities p.h5 > p.h5`: the HDF5 file replaced the predictions without a word)
        raise UsageError(f"--probabilities {probabilities} is where stdout goes, and the predictions go to stdout "
                         "too: one would replace the other (give -o a file)")
    if metrics_dir is not None and labels is None:
        raise UsageError("--metrics needs --labels")
    if metrics_dir is not None:
        folder_can_be_made(metrics_dir)  # (a file on its way failed after every prediction was made)
    if metrics_dir is not None and input_named_by(metrics_dir, (), directories=(head,)):
        raise UsageError(f"--metrics {metrics_dir} is inside the head directory {head}: its files could replace "
                         "the head's (choose another directory)")
    if fasta is not None:
        from protrans_cli.heads.fit import head_device
        from protrans_cli.heads.model import load_head
        from protrans_cli.heads.predict import check_head_output, check_labels_first, embed_for_head

        # before the sequences are embedded: `--max-residues 0` or `--device cuda` on a machine
        # without one was refused only after the whole FASTA had been embedded, a bad --labels
        # file too
        _, task, head_config = load_head(head)
        check_head_output(task, head_output)
        head_device(device)
        if labels is not None:
            check_labels_first(head_config, labels, label_format=label_format, mask_path=mask_path,
                               mask_columns=mask_columns or None)

        # Next to the output (embeddings of a proteome can be large), else in $TMPDIR.
        # (not /dev for `-o /dev/stdout`: the embeddings are no output to write in place)
        where = (os.path.dirname(os.path.abspath(output)) if output and output != "-" and special_output(output) is None
                 else None)
        with temporary_folder(where, ".protrans-predict-") as tmp:
            embeddings, order = embed_for_head(head, fasta, tmp, model=model, device=device, threads=threads,
                                               long_policy=long_policy, max_length=max_length,
                                               chunk_overlap=chunk_overlap, invalid_policy=invalid_policy or "error",
                                               chains=chains, linker_length=linker_length,
                                               allow_model_mismatch=allow_model_mismatch)
            from protrans_cli import console
            from protrans_cli.io.files import display_name

            # (the temporary file is gone when the command ends: messages name the FASTA)
            with console.naming(embeddings, f"the embeddings of {display_name(fasta)}"):
                _run(head, embeddings, output, probabilities, head_output, labels, metrics_dir, label_format,
                     mask_path, mask_columns or None, mismatch, allow_model_mismatch or model is not None,
                     max_residues, threads, device, order, plots)
        return
    # (no --mask-column: None, the head's own columns)
    _run(head, embeddings, output, probabilities, head_output, labels, metrics_dir, label_format, mask_path,
         mask_columns or None, mismatch, allow_model_mismatch, max_residues, threads, device, None, plots)


def _warn_unused_max_residues(head) -> None:
    """An FNN head reads one vector a protein, batched by proteins: --max-residues changed nothing
    without a word (fit says so of its own)."""
    from pathlib import Path

    from protrans_cli import console
    from protrans_cli.heads.model import CONFIG, head_architecture, head_input_kind
    from protrans_cli.io.files import json_object
    from protrans_cli.io.h5 import PER_RESIDUE

    try:
        config = json_object(Path(head) / CONFIG)
        reads = head_input_kind(config)
        what = "an FNN head" if head_architecture(config) == "fnn" else "a per-protein linear head"
    except (ValueError, KeyError, TypeError, IndexError):
        return  # (not a readable head: loading it says why)
    if reads != PER_RESIDUE:
        console.warn(f"--max-residues does nothing for {what} (the CNN and light-attention heads take it): "
                     "ignored")


def _run(head, embeddings, output, probabilities, head_output, labels, metrics_dir, label_format, mask_path,
         mask_columns, mismatch, allow_model_mismatch, max_residues, threads, device, order, plots):
    from protrans_cli import console
    from protrans_cli.heads.data import warn_unfinished
    from protrans_cli.heads.predict import evaluate_head, predict, scored_labels
    from protrans_cli.io.files import staged_outputs

    warn_unfinished(embeddings)
    scored = predicted = summary = None
    if labels is not None:  # read and matched first: a bad label file fails before any prediction is written
        scored = scored_labels(head, embeddings, labels, label_format=label_format, mask_path=mask_path,
                               mask_columns=mask_columns, on_mismatch=mismatch,
                               allow_model_mismatch=allow_model_mismatch)
    # -o, --probabilities and the --metrics files are written out first, then renamed together:
    # a Ctrl-C while the metrics were written left the new predictions beside the old run's PNG.
    with staged_outputs() as staged:
        if output is not None:
            summary = predict(head, embeddings, output, probabilities=probabilities, output=head_output,
                              max_residues=max_residues, allow_model_mismatch=allow_model_mismatch, threads=threads,
                              device=device, order=order, labelled=None if scored is None else scored[1],
                              staged=staged)
            predicted = summary.get("predicted")  # (what scoring needs: the head is not run twice)
        if labels is not None:
            evaluate_head(head, embeddings, labels, metrics_dir=metrics_dir, label_format=label_format,
                          mask_path=mask_path, mask_columns=mask_columns,
                          on_mismatch=mismatch,
                          allow_model_mismatch=allow_model_mismatch, max_residues=max_residues, threads=threads,
                          device=device, scored=scored, predicted=predicted, plots=plots, staged=staged)
    if summary is not None and output != "-":
        console.info(f"wrote predictions for {console.counted(summary['proteins'], 'protein')} to {output}")
    console.output_complete(output or metrics_dir or "the scores")
