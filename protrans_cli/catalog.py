"""What `protrans models` and `train --list-presets` show, read from `catalog.json`.

The listing is plain data that changes only with the code: the families' input layouts, every
preset's parameter count (a model built on the meta device), the published checkpoints and the
built-in encodings (`onehot`, `blosum62`).
Computing it imports torch and transformers and builds 40 presets, about 6 s for a table;
`catalog.json` holds what `protrans_cli.models.listing.describe()` computes, so the two
commands answer at once. A test compares the file with a fresh computation; after changing a
family, a preset or a checkpoint, regenerate it:

    python -m protrans_cli.models.listing > protrans_cli/catalog.json
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from protrans_cli.errors import UsageError

PATH = Path(__file__).with_name("catalog.json")
SECTIONS = ("families", "presets", "checkpoints", "encodings")


@functools.cache
def _catalog() -> dict:
    return json.loads(PATH.read_text(encoding="utf-8"))


def human_count(n: int) -> str:
    """A parameter count as `protrans models` and `train --list-presets` show it: 84.9K, 3.8M, 420M."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}" if n < 100 * size else f"{n / size:.0f}{unit}"
    return str(n)


def family_names() -> list[str]:
    return [f["name"] for f in _catalog()["families"]]


def checkpoint_hub_ids() -> dict[str, str]:
    """{short name: hub id} of the published checkpoints (models.checkpoints.CHECKPOINTS), for
    commands that compare model names and load no model."""
    return {row["name"]: row["hub_id"] for row in _catalog()["checkpoints"]}


def describe(*, family: str | None = None, families: bool = True, presets: bool = True,
             checkpoints: bool = True, encodings: bool = True) -> dict:
    """A JSON-ready dict with the requested sections, for every family or one (a usage error
    naming the known ones for any other). The encodings (`onehot`, `blosum62`) belong to no
    family: only without `family`."""
    names = family_names()
    if family is not None and family not in names:
        raise UsageError(f"unknown model family {family!r} (known: {', '.join(names)})")
    wanted = {"families": families, "presets": presets, "checkpoints": checkpoints,
              "encodings": encodings and family is None}
    data = {}
    for section in SECTIONS:
        if wanted[section]:
            key = "name" if section == "families" else "family"
            data[section] = [row for row in _catalog()[section] if family is None or row[key] == family]
    return data
