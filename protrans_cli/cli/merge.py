"""`protrans merge`: the embed outputs of a split input (a Slurm job array's parts) into one file.

    protrans merge parts/part_*.h5 -o proteome.h5
    protrans merge parts/*.h5 --layout stacked -o uniref50.h5
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE, invoked_as


@click.command("merge", context_settings={"show_default": True})
@click.argument("inputs", nargs=-1, required=True, type=INPUT_FILE)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="HDF5 file to write (written to OUTPUT.partial until complete; stacked parts into a stacked "
                   "file: to .OUTPUT.merging).")
@click.option("--layout", type=click.Choice(["grouped", "flat", "stacked"]), default=None,
              help="The merged file's layout.  [default: the first input's]")
@click.option("--force", is_flag=True, help="Replace an existing OUTPUT.")
def command(inputs, output, layout, force):
    """Merge embed outputs of one model and settings into one file (no computation).

    The parts of a split input (`seqkit split2 -p 100 uniref50.fa.gz`, each embedded by a job of
    a Slurm array) become the one file fit and predict read. Every part must be a finished
    `protrans embed` output written with the same model and settings (what --resume compares);
    their layouts may differ. An id in two parts with the same sequence is kept once; with
    another sequence it is an error before anything is written.

    \b
    protrans embed parts/part_007.fa --layout stacked -o out/part_007.h5 --resume
    protrans merge out/*.h5 -o proteome.h5
    """

    from protrans_cli import console
    from protrans_cli.merge import merge

    summary = merge(list(inputs), output, layout=layout, force=force,
                    command_line=invoked_as())
    console.output_complete(str(output))  # (before the summary: a signal from here on stops nothing)
    repeated = f"; {summary.repeated} repeated in a later part, kept once" if summary.repeated else ""
    failed = f"; {len(summary.failed)} failed in every part (the 'failed' attribute)" if summary.failed else ""
    console.info(f"merge: {console.counted(summary.proteins, 'protein')} from {len(inputs)} file(s) into {output}{repeated}{failed}")
