"""What `protrans models` shows, as plain data: families, presets with sizes, checkpoints and
the built-in encodings (`onehot`, `blosum62`: what `embed -m` takes besides a model).

Computed here (torch, transformers, every preset built on the meta device); the commands read
the copy in `protrans_cli/catalog.json`, which `python -m protrans_cli.models.listing` writes
(protrans_cli/catalog.py).
"""

from __future__ import annotations

from dataclasses import asdict

from protrans_cli.models import CHECKPOINTS, DEFAULT_CHECKPOINT, FAMILIES, get_family, list_presets


def _input_layout(family) -> str:
    """The special-token layout of one encoded protein, e.g. "[CLS] M K T [SEP]"."""
    tokenizer = family.build_tokenizer()
    ids = tokenizer(family.prepare("MKT"))["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    text = " ".join(tokens) if family.spaced else "".join(t if len(t) == 1 else f" {t} " for t in tokens)
    return " ".join(text.split()) + (" (left-padded)" if family.padding_side == "left" else "")


def _not_packing(family) -> list[str]:
    """The variants of `family` that a checkpoint's vocabulary picks (subclasses of its class with
    a `variant` name: SaProt's ESM, models/saprot.py) and that refuse --packing though the family
    packs: `protrans models` said "yes" for all of ESM, and SaProt refuses it."""
    import importlib

    importlib.import_module("protrans_cli.models.saprot")  # (defines ESM's variant, SaProtFamily)

    found, pending = set(), list(type(family).__subclasses__())
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.variant and family.packable and not cls.packable:
            found.add(cls.variant)
    return sorted(found)


def describe(*, family: str | None = None, families: bool = True, presets: bool = True,
             checkpoints: bool = True, encodings: bool = True) -> dict:
    """A JSON-ready dict with the requested sections ("families", "presets", "checkpoints",
    "encodings"; the encodings belong to no family: left out when `family` is given)."""
    names = [get_family(family).name] if family else list(FAMILIES)
    data: dict = {}
    if families:
        data["families"] = [
            {"name": f.name, "model_types": list(f.model_types), "objective": f.objective,
             "description": f.description, "spaced": f.spaced, "rare_to": f.rare_to,
             "padding_side": f.padding_side, "input_layout": _input_layout(f), "packing": f.packable,
             "packing_except": _not_packing(f),
             "flex_attention": f.flex_attention, "presets": list(f.presets)}
            for f in (FAMILIES[n] for n in names)]
    if presets:
        data["presets"] = [
            {"family": p.family, "name": p.name, "num_params": p.num_params,
             "embedding_dim": p.embedding_dim, "num_layers": p.num_layers, "config": p.config}
            for n in names for p in list_presets(n)]
    if checkpoints:
        data["checkpoints"] = [dict(asdict(c), default=c.name == DEFAULT_CHECKPOINT)
                               for c in CHECKPOINTS.values() if c.family in names]
    if encodings and not family:
        from protrans_cli.embedders import WEIGHTLESS, weightless_embedder

        data["encodings"] = [
            {"name": e.name, "embedding_dim": e.embedding_dim, "num_layers": e.num_hidden_states,
             "weights": False, "description": e.description}
            for e in map(weightless_embedder, WEIGHTLESS)]
    return data


if __name__ == "__main__":  # python -m protrans_cli.models.listing > protrans_cli/catalog.json
    import json
    import sys

    json.dump(describe(), sys.stdout, indent=1)
    sys.stdout.write("\n")
