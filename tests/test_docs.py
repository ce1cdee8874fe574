"""Documentation that cannot go stale: the generated command reference matches the code."""

from __future__ import annotations

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

    guides = {"fit": "heads", "finetune": "heads", "predict": "heads", "labels": "heads", "env": "troubleshooting", "merge": "embed",
              "import-esm": "embed", "contacts": "embed", "import-head": "heads",
              "knn": "heads", "export": "formats", "info": "formats"}
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
