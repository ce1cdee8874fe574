"""`protrans info`: what an embeddings or contact-map file holds, or a head, model, train run or finetune folder.

    protrans info proteome.h5
    protrans info heads/ss3 runs/bert_small
    protrans info proteome.h5 --json | jq .proteins
    protrans info proteome.h5 --ids > embedded.txt
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE


@click.command("info", context_settings={"show_default": True})
@click.argument("files", nargs=-1, required=True, type=INPUT_FILE)
@click.option("--json", "as_json", is_flag=True, help="One JSON object a file (a line each), for scripts.")
@click.option("--ids", "list_ids", is_flag=True,
              help="Only the ids, one a line (per-protein where the file has them), in key order.")
@click.option("--residues", is_flag=True,
              help="Also count the residues, and the complexes of an embed --chains file (reads every protein's length: "
                   "about 80 us a protein).")
def command(files, as_json, list_ids, residues):
    """What an embeddings file holds: model, layout, proteins, dimension, dtype, layers,
    failed proteins, and whether its run finished (also contact-map and probabilities files).

    Reads attributes and names only (one dataset opened), so it answers at once for a file of
    millions of proteins; --residues reads every protein's length.

    A folder: a head (fit, finetune, import-head: task, classes, architecture, the embeddings
    it was trained on, its validation and test figures), a model directory (family,
    architecture, parameters, sizes, vocabulary, positions, stored dtype: read from config.json
    and the safetensors headers, no weights loaded, nothing unpickled), a train run (its model,
    last logged step and loss, tokens, checkpoints), one of its checkpoints, a finetune
    output (base model, LoRA settings, epochs, then its head and its model as above), or an
    interrupted run's OUT.partial folder (which command left it; --resume continues it).

    \b
    protrans info proteome.h5
    protrans info out/*.h5 --json
    protrans info heads/ss3 runs/bert_small/checkpoints/step_00001000
    protrans info proteome.h5 --ids | grep -c .
    """
    from protrans_cli.errors import UsageError

    if "-" in files:
        from protrans_cli.io.h5 import HDF5_FROM_STDIN

        raise UsageError(HDF5_FROM_STDIN)
    if list_ids and (as_json or residues):
        raise UsageError("--ids lists ids alone: leave out --json and --residues")
    import os
    import sys

    if list_ids or residues:
        for path in files:
            if os.path.isdir(path):
                flag = "--ids" if list_ids else "--residues"
                raise UsageError(f"{path}: {flag} reads an embeddings file; this is a directory (leave out {flag})")

    from protrans_cli.errors import RuntimeFailure
    from protrans_cli.io.files import atomic_output

    if not list_ids and all(os.path.isdir(path) for path in files):
        # heads, models, runs: described from their JSON files and safetensors headers, without
        # export's numpy and h5py (a third of a second of imports)
        from protrans_cli.dir_info import directory_info as info_of, directory_lines as info_lines
    else:
        from protrans_cli.export import file_ids, info, info_lines

        def info_of(path):
            return info(path, residues=residues)

    if sys.stdout is None:  # `>&-` (sys.stdout.write was an AttributeError traceback)
        raise RuntimeFailure("standard output is closed: info writes there")
    # (stdout as export writes it: a full disk names it, and every write is whole)
    with atomic_output("-") as out:
        for n, path in enumerate(files):
            if list_ids:
                out.write(_encoded("".join(ident + "\n" for ident in file_ids(path))))
                continue
            facts = info_of(path)
            if as_json:
                import json

                out.write((json.dumps(facts, default=str) + "\n").encode("utf-8"))
            else:
                out.write(_encoded(("\n" if n else "") + "".join(line + "\n" for line in info_lines(facts))))


def _encoded(text: str) -> bytes:
    """`text` in UTF-8, a file name that is not UTF-8 (byte 0xff) spelled `\\xff` as the command
    line beside it is: such a name, or any non-ASCII name under LC_ALL=C, reaches Python with
    surrogate escapes, and `info` failed on it with a UnicodeEncodeError traceback ("surrogates
    not allowed"). (A UTF-8 name read under LC_ALL=C is shown as it is: `é`.)"""
    from protrans_cli.io.files import utf8_text

    return utf8_text(text).encode("utf-8")
