"""Shell completion of option values from catalog.json (no torch, no transformers): the model
families, the presets and the published checkpoints' short names. See README "Shell completion"."""

from __future__ import annotations

from click.shell_completion import CompletionItem

from protrans_cli import catalog


def _names(section: str, key: str = "name", family: str | None = None) -> list[str]:
    rows = catalog.describe(families=section == "families", presets=section == "presets",
                            checkpoints=section == "checkpoints", encodings=section == "encodings")[section]
    return list(dict.fromkeys(r[key] for r in rows if family is None or r.get("family") == family))


def families(ctx, param, incomplete: str) -> list[CompletionItem]:
    return [CompletionItem(n) for n in _names("families") if n.startswith(incomplete)]


def presets(ctx, param, incomplete: str) -> list[CompletionItem]:
    family = ctx.params.get("family")
    if family not in _names("families"):
        family = None
    return [CompletionItem(n) for n in _names("presets", family=family) if n.startswith(incomplete)]


def models(ctx, param, incomplete: str) -> list[CompletionItem]:
    """The short names, `onehot` and `blosum62`; what looks like a path (or matches no name)
    completes as a directory, for a model of your own."""
    return _models(incomplete, _names("encodings"))


def weights(ctx, param, incomplete: str) -> list[CompletionItem]:
    """As `models`, without `onehot` and `blosum62` (options that need a model's weights: contacts, variants,
    finetune, train --init-from)."""
    return _models(incomplete, [])


def _models(incomplete: str, extra: list[str]) -> list[CompletionItem]:
    if not incomplete.startswith((".", "/", "~")) and "/" not in incomplete:
        names = [n for n in [*extra, *_names("checkpoints")] if n.startswith(incomplete)]
        if names:
            return [CompletionItem(n) for n in names]
    return [CompletionItem(incomplete, type="dir")]
