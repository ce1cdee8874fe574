"""`protrans models`: list model families, their presets (sizes), the published checkpoints and
the built-in encodings (`onehot`, `blosum62`: no weights).

    protrans models                       # families, presets, checkpoints and encodings as tables
    protrans models --checkpoints         # only what `protrans embed -m` takes by name
    protrans models --presets --family t5 # T5 presets with parameter counts
    protrans models --json | jq '.checkpoints[] | .name'

Preset parameter counts are those of each preset built on the meta device, read from
protrans_cli/catalog.json (kept equal to the computation by a test, so the listing needs
neither torch nor transformers); checkpoint figures are those of the published weights.
"""

from __future__ import annotations

import errno
import json
import sys

import click

from protrans_cli.catalog import human_count
from protrans_cli.cli import completion


@click.command("models")
@click.option("--families", "show_families", is_flag=True, help="Show the model families.")
@click.option("--presets", "show_presets", is_flag=True, help="Show the presets with parameter counts.")
@click.option("--checkpoints", "show_checkpoints", is_flag=True,
              help="Show the published checkpoints and the built-in encodings "
                   "(short names for `embed -m`).")
@click.option("--family", "family", default=None, metavar="NAME", shell_complete=completion.families, help="Only this family.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
def command(show_families, show_presets, show_checkpoints, family, as_json):
    """List model families, presets (with parameter counts), published checkpoints
    and the built-in encodings (onehot, blosum62: no weights).

    \b
    protrans models
    protrans models --checkpoints
    protrans models --presets --family esm --json
    """
    from protrans_cli.catalog import describe

    if not (show_families or show_presets or show_checkpoints):
        show_families = show_presets = show_checkpoints = True
    # (the encodings go with the checkpoints: both are what `embed -m` takes by name; they belong to
    # no family, so --family leaves them out)
    data = describe(family=family, families=show_families, presets=show_presets,
                    checkpoints=show_checkpoints, encodings=show_checkpoints)
    from protrans_cli.io.files import stdout_text

    with stdout_text("models") as out:
        if as_json:
            json.dump(data, out, indent=2)
            out.write("\n")
            return
        _print_tables(data, family)


def _print_tables(data: dict, family: str | None = None) -> None:
    from protrans_cli.console import load_rich

    load_rich()
    from rich.console import Console
    from rich.table import Table

    class _Stdout(Console):
        def on_broken_pipe(self):
            # rich exits 1 on its own; raise instead so `protrans models | head` exits 141
            # like every other command.
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "stdout closed")

    # A pipe gets the full width rather than 80 columns of truncated hub ids.
    out = _Stdout(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    if "families" in data:
        table = Table(title="Families", title_justify="left")
        for col in ("family", "objective", "input", "--packing", "presets", "description"):
            table.add_column(col)
        for f in data["families"]:
            # (T5 packs in embed under --attention flex only; "flex_attention" is absent from a catalog
            # an older protrans wrote)
            packs = "yes" if f["packing"] else "embed --attention flex" if f.get("flex_attention") else "no"
            if f["packing"] and f.get("packing_except"):  # (SaProt's ESM refuses it)
                packs += f" (not {', '.join(f['packing_except'])})"
            table.add_row(f["name"], f["objective"], f["input_layout"], packs,
                          ", ".join(f["presets"]), f["description"])
        out.print(_whole_names(table))
    if "presets" in data:
        table = Table(title="Presets (protrans train --family F --preset P)", title_justify="left")
        for col in ("family", "preset", "parameters", "layers", "dim"):
            table.add_column(col, justify="right" if col in ("parameters", "layers", "dim") else "left")
        for p in data["presets"]:
            table.add_row(p["family"], p["name"], human_count(p["num_params"]), str(p["num_layers"]),
                          str(p["embedding_dim"]))
        out.print(_whole_names(table, 2))
    if data.get("checkpoints") == []:
        # (a family nobody published a checkpoint of: a table of headers alone was printed; the name
        # comes from --family, not the presets table, which --checkpoints alone leaves out)
        # (ESM C's are published, but as weights that import-model converts: models/esmc.py)
        hint = ("convert EvolutionaryScale's weights: protrans import-model, docs/models.md#esm-c" if family == "esmc"
                else f"train one: protrans train --family {family}")
        out.print("Published checkpoints: none listed" + (f" for {family} ({hint})" if family else " for this family"))
    elif "checkpoints" in data:
        table = Table(title="Published checkpoints (protrans embed -m NAME)", title_justify="left")
        for col in ("name", "hub id", "family", "parameters", "dim", "layers"):
            table.add_column(col, justify="right" if col in ("parameters", "dim", "layers") else "left")
        for c in data["checkpoints"]:
            name = c["name"] + (" (default)" if c["default"] else "")
            params = human_count(c["num_params"])
            if c["total_params"]:
                params += f" of {human_count(c['total_params'])}"
            table.add_row(name, c["hub_id"], c["family"], params, str(c["embedding_dim"]), str(c["num_layers"]))
        out.print(_whole_names(table))
    if data.get("encodings"):
        table = Table(title="Built-in encodings (protrans embed -m NAME; no weights)", title_justify="left")
        for col in ("name", "dim", "layers", "description"):
            table.add_column(col, justify="right" if col in ("dim", "layers") else "left")
        for e in data["encodings"]:
            table.add_row(e["name"], str(e["embedding_dim"]), str(e["num_layers"]), e["description"])
        out.print(_whole_names(table))


def _whole_names(table, names: int = 1):
    """On a narrow terminal rich cut every cell ("prot_t5_xl_unir…"): the first `names` columns
    (what `embed -m` and `train --preset` take) keep their width, the others wrap, losing nothing."""
    for i, column in enumerate(table.columns):
        if i < names:
            cells = [str(column.header), *(str(c) for c in getattr(column, "_cells", ()))]
            column.no_wrap, column.min_width = True, max(len(c) for c in cells)
        else:
            column.overflow = "fold"
    return table

