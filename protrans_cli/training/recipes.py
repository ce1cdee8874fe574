"""The published pretraining recipes shipped with the package (protrans_cli/recipes/*.toml).

A recipe is a train config file (the settings `--config` takes) for one published model, with
the numbers its authors give and nothing else: a number no source read for it confirms is left
out (the flag default applies) and listed in the file's comments. Its leading comment lines
`# model: ...` and `# source: ...` are what `protrans train --list-recipes` shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from protrans_cli.errors import UsageError

SUFFIX = ".toml"


@dataclass
class Recipe:
    name: str
    model: str    # the published model it trains (its `# model:` line)
    source: str   # where its numbers come from (its `# source:` line)
    text: str     # the file as shipped


def _folder():
    return resources.files("protrans_cli") / "recipes"


def names() -> list[str]:
    """The shipped recipes' names, sorted."""
    return sorted(f.name[:-len(SUFFIX)] for f in _folder().iterdir() if f.name.endswith(SUFFIX))


def _header(text: str, key: str) -> str:
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        head, _, value = line[1:].strip().partition(":")
        if head.strip().lower() == key:
            return value.strip()
    return ""


def get(name: str) -> Recipe:
    """The shipped recipe `name`; a UsageError naming the recipes there are for any other."""
    if name not in names():
        raise UsageError(f"--recipe {name}: no such recipe; the recipes are {', '.join(names())} "
                         "(protrans train --list-recipes)")
    text = (_folder() / f"{name}{SUFFIX}").read_text(encoding="utf-8")
    return Recipe(name, _header(text, "model"), _header(text, "source"), text)


def load(name: str):
    """The recipe's settings as a TrainConfig, read as `--config` reads a file (its checks
    included), with `recipe` recording its name."""
    import dataclasses

    from protrans_cli.training.config import TrainConfig

    get(name)  # (an unknown name: the list of the known ones)
    with resources.as_file(_folder() / f"{name}{SUFFIX}") as path:
        config = TrainConfig.from_file(path)
    return dataclasses.replace(config, recipe=name)


def folder() -> str:
    """The folder of the recipe files."""
    return str(_folder())


def path(name: str) -> str:
    """Where the recipe file is (messages name it as they name a --config file)."""
    get(name)
    return str(_folder() / f"{name}{SUFFIX}")
