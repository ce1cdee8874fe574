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

    guides = {"fit": "heads", "predict": "heads", "labels": "heads"}
    for name in COMMANDS:
        page = ROOT / "docs" / f"{guides.get(name, name)}.md"
        assert page.exists(), f"docs/{page.name} (guide for `protrans {name}`) is missing"
