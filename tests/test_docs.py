"""Documentation that cannot go stale: the generated command reference matches the code."""

from __future__ import annotations

import re
import shlex

import click

from conftest import ROOT


def test_cli_reference_is_current():
    from protrans_cli.cli.docs import render

    expected = render()
    path = ROOT / "docs" / "cli.md"
    assert path.exists(), "run: python -m protrans_cli.cli.docs > docs/cli.md"
    current = path.read_text()
    assert "## protrans prep" in current
    assert current == expected, "docs/cli.md is stale: python -m protrans_cli.cli.docs > docs/cli.md"


def test_every_command_has_a_guide():
    from protrans_cli.cli import COMMANDS

    guides = {"fit": "heads", "finetune": "heads", "predict": "heads", "labels": "heads", "env": "troubleshooting", "merge": "embed", "from-structure": "embed",
              "import-esm": "embed", "esm-extract": "embed", "contacts": "embed", "import-head": "heads",
              "knn": "heads", "export": "formats", "info": "formats", "import-model": "models",
              "translate": "models"}
    for name in COMMANDS:
        page = ROOT / "docs" / f"{guides.get(name, name)}.md"
        assert page.exists(), f"docs/{page.name} (guide for `protrans {name}`) is missing"


def test_cli_reference_matches_real_help_whatever_ran_before():
    """click caches a command's help option on first use; the reference must not depend on that."""
    from click.testing import CliRunner

    from protrans_cli.cli import cli
    from protrans_cli.cli.docs import command_help, render

    before = render()
    real = CliRunner().invoke(cli, ["embed", "--help"], terminal_width=100)
    assert real.exit_code == 0
    assert "-h, --help" in real.output and "-h, --help" in command_help("embed")
    assert render() == before


# Command lines the guides show on purpose as mistakes (the error they give is the point).
_SHOWN_AS_MISTAKES = {("troubleshooting.md", "protrans embed x.fa -o --per-protein")}
_PLACEHOLDER = re.compile(r"^[A-Z][A-Z0-9_]*(\.[a-z0-9.]+)?$")  # TASK, N, TRAIN.h5, HEAD_DIR


def _documented_command_lines():
    """(guide, command line) for every `protrans ...` in the guides and README: in code blocks
    (continuation lines joined; `$ `, environment assignments, `torchrun ... -m protrans_cli`
    taken off) and in inline code. Lines with shell variables, `...` or placeholders are left out."""
    pages = [p for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "cli.md"] + [ROOT / "README.md"]
    for page in pages:
        text = page.read_text()
        lines = []
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                line = re.sub(r"^\s*(\$ |\[\w+\] \$ )?", "", line)
                line = re.sub(r"^([A-Z_]+=\S+\s+)+", "", line)
                if "-m protrans_cli " in line:
                    line = "protrans " + line.split("-m protrans_cli ", 1)[1]
                lines.append(line)
        lines += re.findall(r"`(protrans [^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for line in lines:
            if not line.startswith("protrans "):
                continue
            line = re.split(r" \| | && | \|\| | > | 2>| # |;", " ".join(line.split()))[0]
            try:
                argv = shlex.split(line)[1:]
            except ValueError:
                continue
            if (not argv or argv[0].startswith("-")
                    or any("$" in a or "..." in a or "|" in a or _PLACEHOLDER.match(a) for a in argv)):
                continue
            yield page.name, line, argv


def _parse_error(argv) -> str | None:
    """The UsageError message of parsing `protrans ARGV` with the real CLI (no command runs),
    None where it parses (or stops at --help/--version)."""
    from protrans_cli.cli import cli

    try:
        # (with the group's own settings, as the CLI makes it: a context without them lent its
        # subcommands "--help" alone, which click keeps in each command's help option, and a
        # docs/cli.md check run after this one in the same process found the page "stale")
        with click.Context(cli, info_name="protrans", **cli.context_settings) as ctx:
            command = cli.get_command(ctx, argv[0])
            if command is None:
                raise click.UsageError(f"No such command {argv[0]!r}.")
            command.make_context(argv[0], argv[1:], parent=ctx)
    except click.exceptions.Exit:
        pass
    except click.UsageError as exc:
        return exc.format_message()
    return None


def test_every_documented_command_line_parses():
    """A guide's example with an option renamed, removed or misspelt, a value no longer among a
    choice's, or a command that no longer exists fails here (files that do not exist here and
    arguments the example leaves out are not its business)."""
    checked, stale = 0, []
    for page, line, argv in _documented_command_lines():
        checked += 1
        message = _parse_error(argv)
        if message is None or ("does not exist" in message or message.startswith("Missing")
                               or (page, line) in _SHOWN_AS_MISTAKES
                               or ("requires an argument" in message and argv[-1].startswith("-"))):
            continue
        stale.append(f"{page}: {line}\n    {message}")
    assert checked > 150, checked  # (the extraction itself still finds the guides' examples)
    assert not stale, "documented command lines that no longer parse:\n" + "\n".join(stale)


def test_migrating_guide_command_lines_parse_whole():
    """docs/migrating.md maps other tools' jobs to protrans command lines: each of them is
    checked whole (none left out as a placeholder or a shown mistake, no argument missing; the
    CLI checks no path while parsing, so the options after a file name are checked too)."""
    page = ROOT / "docs" / "migrating.md"
    text = page.read_text()
    for tool in ("bio_embeddings", "The ProtTrans notebooks", "esm-extract", "TAPE", "biotrainer"):
        assert re.search(rf"^## {re.escape(tool)}", text, re.M), f"migrating.md: no section on {tool}"
    code = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    shown = [line for block in code for line in re.sub(r"\\\n\s*", " ", block).splitlines()
             if line.startswith("protrans ")]
    shown += re.findall(r"`(protrans [^`]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    checked = [(line, argv) for name, line, argv in _documented_command_lines() if name == page.name]
    assert len(checked) == len(shown) and len(checked) >= 40, (len(checked), len(shown))
    bad = []
    for line, argv in checked:
        message = _parse_error(argv)
        # (a command named in the text, `protrans merge`, `protrans fit residue`, is no
        # command line: that it exists, its task a valid choice, is all it claims)
        named_only = len(argv) <= 2 and not any(a.startswith("-") for a in argv)
        if message is not None and not (named_only and message.startswith("Missing")):
            bad.append(f"{line}\n    {message}")
    assert not bad, "migrating.md command lines the CLI refuses:\n" + "\n".join(bad)


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_a_heading_finds_it():
    """A link such as `embed.md#esm-2-the-same-numbers-as-esm-extract` went nowhere once the
    heading became "ESM-2 and ESM-1b: ..." (GitHub opens the page at its top, without a word)."""
    pages = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "CHANGELOG.md"]
    anchors = {}
    for page in pages:
        seen: dict[str, int] = {}
        for heading in re.findall(r"^#{1,6} (.+)$", re.sub(r"```.*?```", "", page.read_text(), flags=re.S), re.M):
            anchor = _anchor(heading)
            seen[anchor] = seen.get(anchor, -1) + 1
            anchors.setdefault(page.resolve(), set()).add(anchor + (f"-{seen[anchor]}" if seen[anchor] else ""))
    checked, broken = 0, []
    for page in pages:
        for link in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path, _, fragment = link.partition("#")
            target = (page.parent / path).resolve() if path else page.resolve()
            if link.startswith(("http:", "https:", "mailto:")) or not fragment or target.suffix != ".md":
                continue
            checked += 1
            if fragment not in anchors.get(target, ()):
                broken.append(f"{page.name}: {link}")
    assert checked > 30, checked
    assert not broken, "links to headings that do not exist:\n" + "\n".join(broken)


def test_every_relative_link_finds_its_file():
    """A relative link (`embed.md`, `../CHANGELOG.md`, `benchmarks/embed.py`, an image) names a file or
    folder of the repository: a page renamed or moved left links that GitHub shows as a 404."""
    pages = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "CHANGELOG.md"]
    checked, broken = 0, []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        links = re.findall(r"\]\(<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\)", text)
        links += re.findall(r"^\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, re.M)  # reference-style definitions
        for link in links:
            path = link.partition("#")[0]
            if not path or re.match(r"[a-z][a-z0-9+.-]*:", link):  # an anchor of the page itself, or a URL
                continue
            checked += 1
            if not (page.parent / path).exists():
                broken.append(f"{page.name}: {link}")
    assert checked > 100, checked
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)
