"""Render every command's --help as Markdown: docs/cli.md is generated from this and a test keeps it current.

    python -m protrans_cli.cli.docs > docs/cli.md
"""

from __future__ import annotations

import click

from protrans_cli.cli import cli

HEADER = """# Command reference

Generated from the commands' own `--help` by `python -m protrans_cli.cli.docs > docs/cli.md`;
`tests/test_docs.py` fails when this page and the code disagree, so it cannot go stale.
The prose guides are one page per command: [prep](prep.md), [train](train.md), [embed](embed.md),
[models](models.md), [fit / predict / labels](heads.md), [quickstart](quickstart.md).
"""


def _context(command: click.Command, name: str, parent: click.Context | None = None) -> click.Context:
    # Honour each command's own context_settings (e.g. `-h` as well as `--help`), as the real CLI
    # does: click caches a command's help option the first time it is built, so a context that
    # ignored them would render differently depending on what ran before in the same process.
    settings = {**command.context_settings, "max_content_width": 100, "terminal_width": 100}
    return click.Context(command, info_name=name, parent=parent, **settings)


def command_help(name: str) -> str:
    ctx = _context(cli, "protrans")
    command = cli.get_command(ctx, name)
    return command.get_help(_context(command, name, ctx))


def render() -> str:
    ctx = _context(cli, "protrans")
    parts = [HEADER, "## protrans\n", "```text", cli.get_help(ctx), "```\n"]
    for name in cli.list_commands(ctx):
        parts += [f"## protrans {name}\n", "```text", command_help(name), "```\n"]
    return "\n".join(parts)


if __name__ == "__main__":
    print(render(), end="")
