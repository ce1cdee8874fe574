"""`protrans fit`: train a prediction head on embeddings and evaluate it.

    protrans fit ss3 --embeddings train.h5 --labels Train_HHblits.csv.gz \
        --test cb513.h5 CB513_HHblits.csv -o heads/ss3
    protrans fit loc --embeddings val.h5 --labels deeploc_our_val_set.fasta \
        --test test.h5 deeploc_test_set.fasta --ensemble 3 -o heads/loc
    protrans fit loc --architecture light-attention --embeddings val_residues.h5 \
        --labels deeploc_our_val_set.fasta -o heads/loc_la    # per-residue embeddings
    protrans fit ss3 --architecture linear --embeddings train.h5 --labels Train_HHblits.csv.gz \
        -o heads/ss3_probe    # the linear probe: are the embeddings any good?
"""

from __future__ import annotations

import click

from protrans_cli.choices import ALL_ARCHITECTURES, DUAL_POLICIES, FORMATS, TASK_NAMES
from protrans_cli.cli import INPUT_FILE, given_option, is_option

_PAIR = (INPUT_FILE, INPUT_FILE)


def _files_not_options(ctx, param, value):
    """--valid and --test take two files each: `--test cb513.h5 -o heads/ss3` (the labels file
    left out) took `-o` as the labels file, and said "Missing option '-o'"; before another option
    it said "Got unexpected extra argument (1)", or trained and then failed on "--no-plots: no
    such file" (exit 1)."""
    for pair in (value if param.multiple else [value] if value else []):
        for given in pair:
            if is_option(ctx, given):
                raise click.BadParameter(
                    f"takes two files, EMBEDDINGS LABELS, and got {pair[0]!r} then the option {given!r}: "
                    "give the labels file after the embeddings file", ctx, param)
    return value


def mask_options(command):
    """--mask and --mask-column (fit's and finetune's): which residues are trained and evaluated."""
    command = click.option("--mask-column", "mask_columns", multiple=True, default=("disorder",),
                           help="NetSurfP columns whose 1.0 marks the residues trained and evaluated; repeat to "
                                "combine. The disorder task's labels are the disorder column: its default is no "
                                "column (--mask-column cb513_mask when asked), and disorder is refused. "
                                "ss3+ss8+disorder: these mask ss3 and ss8; its disorder output takes the ones other "
                                "than disorder.")(command)
    return click.option("--mask", "mask_path", type=INPUT_FILE, metavar="FILE", default=None,
                        help="FLIP mask FASTA (0/1 per residue) for FLIP-style labels.")(command)


@click.command("fit", context_settings={"show_default": True})
@click.argument("task", type=click.Choice(list(TASK_NAMES)))
@click.option("--embeddings", required=True, type=INPUT_FILE, metavar="FILE", help="Training embeddings (HDF5).")
@click.option("--labels", required=True, type=INPUT_FILE, metavar="FILE",
              help="Training labels (NetSurfP CSV, PISCES CSV, FLIP FASTA or CSV, biotrainer FASTA, DeepLoc FASTA, id,label CSV/TSV).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Head directory to write.")
@click.option("--valid", nargs=2, type=_PAIR, default=None, metavar="EMBEDDINGS LABELS", callback=_files_not_options,
              help="Validation set for early stopping.  [default: the --labels file's validation records "
                   "(FLIP SET=/VALIDATION=, a table's set column, a DeepLoc header's split), else "
                   "--valid-fraction of train]")
@click.option("--test", "tests", nargs=2, type=_PAIR, multiple=True, metavar="EMBEDDINGS LABELS",
              callback=_files_not_options,
              help="A set to evaluate after training; repeat for several.")
@click.option("--label-format", type=click.Choice(list(FORMATS)), default="auto", help="Format of every label file.")
@mask_options
@click.option("--max-epochs", type=int, default=None, help="Epochs at most.  [default: 30 per residue, 200 per protein]")
@click.option("--patience", type=int, default=None,
              help="Stop after this many epochs improving neither validation accuracy nor loss.  "
                   "[default: 5 per residue, 10 per protein]")
@click.option("--lr", type=float, default=1e-3, help="Adam learning rate.")
@click.option("--weight-decay", type=float, default=0.0, help="Adam weight decay (the linear probe's L2 penalty).")
@click.option("--max-residues", type=int, default=8192,
              help="Heads that read per-residue embeddings (CNN, light-attention, linear per residue): padded "
                   "residues per batch.")
@click.option("--batch-size", type=int, default=64, help="FNN and per-protein linear heads: proteins per batch.")
@click.option("--class-weights", is_flag=True, help="Weight the loss by inverse class frequency.")
@click.option("--ensemble", type=int, default=1, help="Members trained from seeds SEED, SEED+1, ...; "
              "predictions average their probabilities.")
@click.option("--folds", type=int, default=None, metavar="K",
              help="K-fold cross-validation: member k trains on the other folds of the training proteins "
                   "(with the --labels file's validation records) and stops early on fold k; the head is the K "
                   "members' ensemble, scored out of fold as set 'cv'.  [default: off]")
@click.option("--search", "search_specs", multiple=True, metavar="NAME=V1,V2,...",
              help="Hyperparameter search: fit every combination of the values given (lr, weight-decay, hidden, "
                   "dropout, kernel, batch-size, max-residues, patience, max-epochs, architecture, "
                   "class-weights; repeat for several), each into OUTPUT.search/trial_NN, and keep as OUTPUT "
                   "the one with the best validation (or cv) score.")
@click.option("--seed", type=int, default=0, help="Seed of the first member and of the held-out split (or folds).")
@click.option("--valid-fraction", type=float, default=0.1, help="Share of train held out when no validation set is given: round(share x proteins), at least one, never all.")
@click.option("--architecture", type=click.Choice(list(ALL_ARCHITECTURES)),
              default=None,
              help="The head's network: per-residue tasks take the CNN; per-protein tasks the FNN on the mean "
                   "embedding, or light-attention, which reads per-residue embeddings and pools them by attention "
                   "(Stärk et al. 2021); every task takes linear, the linear probe: one affine map of each "
                   "residue's row or of the protein's (standardised) vector, logistic or linear regression "
                   "(no --hidden, --kernel, --dropout).  [default: cnn per residue, fnn per protein]")
@click.option("--hidden", type=int, default=32, help="Hidden channels/units of the head.")
@click.option("--kernel", type=int, default=None,
              help="Convolution width (odd) of the CNN or light-attention.  [default: 7 for the CNN, 9 for "
                   "light-attention]")
@click.option("--dropout", type=float, default=0.25, help="Dropout after the first layer.")
@click.option("--standardise/--no-standardise", default=True,
              help="FNN and per-protein linear heads: z-score inputs with the training mean and standard deviation.")
@click.option("--dual", type=click.Choice(list(DUAL_POLICIES)), default="first",
              help="loc: DeepLoc's Cytoplasm-Nucleus counts as Cytoplasm (first) or is left out (skip).")
@click.option("--layer", type=int, default=-1, help="Layer to use when the embeddings hold several.")
@click.option("--skip-mismatched", is_flag=True,
              help="Leave out (with a count) labels without a matching embedding instead of failing.")
@click.option("--only-embedded", is_flag=True,
              help="Leave out the label records without an embedding (a head trained on part of a label file); "
                   "a length or sequence that disagrees is still an error.")
@click.option("--cache-gb", type=float, default=2.0,
              help="Per-residue sets up to this many GiB (as float32) are read into RAM; larger ones are streamed.")
@click.option("--bootstrap", "n_bootstrap", type=int, default=1000, help="Bootstrap resamples for the 95% CI (at least 10).")
@click.option("-j", "--threads", type=int, default=None,
              help="CPU threads for torch.  [default: $PROTRANS_THREADS, else min(cores, 4) for a head that reads "
                   "per-residue embeddings (CNN, light-attention, linear per residue) and 1 for an FNN or a "
                   "per-protein linear head]")
@click.option("--device", default="auto", help="auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps.")
@click.option("--resume", is_flag=True, help="Continue the interrupted fit kept in OUTPUT.partial (saved after every epoch).")
@click.option("--force", is_flag=True, help="Replace OUTPUT (and an interrupted OUTPUT.partial) if it exists.")
@click.option("--plots/--no-plots", default=True, show_default=True,
              help="Write curves.png and a confusion (or scatter) PNG per set and output.")
@click.pass_context
def command(ctx, task, embeddings, labels, output, valid, tests, label_format, mask_path, mask_columns, max_epochs,
            patience, lr, weight_decay, max_residues, batch_size, class_weights, ensemble, folds, search_specs, seed,
            valid_fraction,
            architecture, hidden, kernel, dropout, standardise, dual, layer, skip_mismatched, only_embedded, cache_gb,
            n_bootstrap, threads, device, resume, force, plots):
    """Train a prediction head (ss3/ss8/ss3+ss8/disorder/ss3+ss8+disorder/loc/residue/protein/value)
    on embeddings.

    \b
    protrans fit ss3 --embeddings train.h5 --labels Train_HHblits.csv.gz \\
        --test cb513.h5 CB513_HHblits.csv -o heads/ss3
    """
    from protrans_cli import console
    from protrans_cli.heads.fit import FitConfig, fit, partial_path

    grid = _search_grid(ctx, search_specs)
    if ensemble == 1 and folds is not None and folds > 1 and given_option("ensemble", ctx):
        # (by where it came from: FitConfig refuses another --ensemble, and 1, the default's value,
        # given, was taken without a word for a head of K members)
        from protrans_cli.errors import UsageError

        raise UsageError(f"--folds {folds} trains one member per fold ({folds} members): leave out --ensemble 1")
    config = FitConfig(task=task, max_epochs=max_epochs, patience=patience, lr=lr, weight_decay=weight_decay,
                       max_residues=max_residues, batch_size=batch_size, class_weights=class_weights,
                       ensemble=ensemble, folds=folds, seed=seed, valid_fraction=valid_fraction, architecture=architecture,
                       hidden=hidden, kernel=kernel,
                       dropout=dropout, dual=dual, layer=layer,
                       on_mismatch=on_mismatch(skip_mismatched, only_embedded), cache_bytes=_cache_bytes(cache_gb),
                       n_bootstrap=n_bootstrap, threads=threads, label_format=label_format, mask_path=mask_path,
                       mask_columns=tuple(mask_columns), force=force, standardise=standardise, device=device,
                       resume=resume, plots=plots)
    # The values first: `--kernel -1` for an FNN head was warned of as ignored, then refused.
    config.check()
    if given_option("mask_columns", ctx):
        from protrans_cli.heads.tasks import resolve_mask_columns

        resolve_mask_columns(task, tuple(mask_columns))  # (--mask-column disorder for the disorder task: exit 2)
    _warn_unused(ctx, task, architecture, grid.get("architecture"))
    if given_option("dual", ctx):
        from protrans_cli.heads.tasks import warn_unused_dual

        warn_unused_dual(task)
    if folds is not None and given_option("valid_fraction", ctx):
        # (silently ignored: each fold is validated in turn, none held out)
        console.warn("--valid-fraction does nothing with --folds (member k is validated on fold k): ignored")
    try:
        if grid:
            from protrans_cli.heads.search import search

            search(config, grid, embeddings, labels, output, valid=tuple(valid) if valid else None,
                   tests=[tuple(t) for t in tests])
        else:
            fit(config, embeddings, labels, output, valid=tuple(valid) if valid else None,
                tests=[tuple(t) for t in tests])
    except KeyboardInterrupt as exc:
        from protrans_cli.cli import stopped
        from protrans_cli.io.files import written_through

        written = written_through(output)  # (an -o link: the state is kept beside the folder it names)
        if grid:
            from protrans_cli.heads.search import trials_path

            raise stopped(exc, f"the trials finished so far, and the epochs of the one in training, are kept in "
                          f"{trials_path(written)}; run the same command with --resume to continue") from None
        from protrans_cli.heads.fit import piped_label_files

        kept = partial_path(written)
        if piped := piped_label_files(labels, valid, [tuple(t) for t in tests]):
            # (--resume is refused for them: "run the same command with --resume" led there)
            raise stopped(exc, f"a fit whose labels come from a pipe ({', '.join(piped)}) cannot be resumed: give "
                          "them as files next time") from None
        raise stopped(exc, f"the epochs finished so far are kept in {kept}; run the same command with --resume "
                      "to continue" if (kept / "state.pt").is_file() else None) from None


def _search_grid(ctx, specs) -> dict:
    """--search NAME=V1,V2 as {FitConfig field: values}; a setting also given as its own option is
    refused (which one would a trial use?)."""
    if not specs:
        return {}
    from protrans_cli.errors import UsageError
    from protrans_cli.heads.search import parse_grid

    grid = parse_grid(specs)
    for key in grid:
        if key in ctx.params and given_option(key, ctx):
            raise UsageError(f"--{key.replace('_', '-')} is given and searched (--search {key.replace('_', '-')}=...): "
                             "give it one way")
    return grid


# Options of one kind of head: given for another, they change nothing (said, as train says of its
# own; heads.tasks.unused_options names them per architecture, and --resume does not compare them).
_FLAGS = {"max_residues": "--max-residues", "kernel": "--kernel", "batch_size": "--batch-size",
          "standardise": "--standardise/--no-standardise", "hidden": "--hidden", "dropout": "--dropout"}


def _warn_unused(ctx, task: str, architecture: str | None, searched: list | None = None) -> None:
    """`searched`: the architectures of --search architecture=...: an option is said to do nothing
    only where none of them reads it (`--kernel 5` with fnn,light-attention was said to do nothing)."""
    from protrans_cli import console
    from protrans_cli.heads.tasks import architecture_for, get_task, unused_options
    from protrans_cli.io.h5 import PER_RESIDUE

    # (a wrong pairing: exit 2, here as in fit)
    the_task = get_task(task)
    architectures = [architecture_for(the_task, a) for a in (searched or [architecture])]
    architecture = architectures[0]
    given = [_FLAGS[name] for name in unused_options(the_task, architecture)
             if all(name in unused_options(the_task, a) for a in architectures)
             and given_option(name, ctx)]
    if given:
        one = len(given) == 1
        if architecture == "linear":
            what = ("a linear head (one affine map of each residue's row)" if the_task.kind == PER_RESIDUE
                    else "a linear head (one affine map of the protein's vector)")
        else:
            what = ("an FNN head (the CNN and light-attention heads " if architecture == "fnn"
                    else f"a {architecture.replace('cnn', 'CNN')} head (FNN heads ") \
                + f"take {'it' if one else 'them'})"
        console.warn(f"{', '.join(given)} {'does' if one else 'do'} nothing for {what}: ignored")


def _cache_bytes(cache_gb: float) -> int:
    import math

    from protrans_cli.errors import UsageError

    # (the bytes checked too: 1e300 GB is finite, its bytes are not, and int() raised OverflowError)
    if not (math.isfinite(cache_gb) and cache_gb >= 0 and math.isfinite(cache_gb * (1 << 30))):
        raise UsageError(f"--cache-gb must be a size in GB, 0 or more, got {cache_gb}")
    return int(cache_gb * (1 << 30))


def on_mismatch(skip_mismatched: bool, only_embedded: bool) -> str:
    """The library's on_mismatch for the two flags (fit's and predict's)."""
    if skip_mismatched and only_embedded:
        # (--skip-mismatched won without a word, leaving out the records --only-embedded's help
        # says stay errors)
        from protrans_cli.errors import UsageError

        raise UsageError("--skip-mismatched and --only-embedded: give one (--skip-mismatched also leaves out the "
                         "records of another length or sequence, which --only-embedded keeps as errors)")
    return "skip" if skip_mismatched else "missing" if only_embedded else "error"
