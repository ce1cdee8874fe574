"""Warnings the commands and the library let through to users (found by running every command
under `python -X dev -W always -X warn_default_encoding`)."""

from __future__ import annotations

import ast

from conftest import ROOT


def _text_opens_without_encoding(source: str) -> list[int]:
    """Lines of `source` that open a text file (open() in a text mode, Path.read_text/write_text,
    io.TextIOWrapper) without naming its encoding."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or any(k.arg == "encoding" for k in node.keywords):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id == "open":
            mode = node.args[1] if len(node.args) > 1 else next((k.value for k in node.keywords if k.arg == "mode"), None)
            if mode is None or not (isinstance(mode, ast.Constant) and "b" in mode.value):
                lines.append(node.lineno)
        elif isinstance(func, ast.Attribute) and func.attr in ("read_text", "write_text", "TextIOWrapper"):
            given = {"read_text": 1, "write_text": 2, "TextIOWrapper": 2}[func.attr]  # (encoding, positionally)
            if len(node.args) < given:
                lines.append(node.lineno)
    return lines


def test_every_text_file_protrans_opens_names_its_encoding():
    """open() without an encoding takes the locale's: ASCII under LC_ALL=C PYTHONUTF8=0, and an
    EncodingWarning for every call under `python -X warn_default_encoding` (or
    PYTHONWARNDEFAULTENCODING=1), which train printed at every logged step (metrics.jsonl) and a
    library user's `-W error` test suite turned into a failure of fit, predict or embed."""
    found = []
    for path in sorted((ROOT / "protrans_cli").rglob("*.py")):
        found += [f"{path.relative_to(ROOT)}:{line}" for line in _text_opens_without_encoding(path.read_text("utf-8"))]
    assert found == []


def test_the_scan_finds_a_text_open_without_an_encoding():
    source = ('open(p)\nopen(p, "w")\nopen(p, mode="a")\nPath(p).read_text()\nPath(p).write_text(t)\n'
              'io.TextIOWrapper(b)\nopen(p, "rb")\nopen(p, encoding="utf-8")\nPath(p).read_text("utf-8")\n')
    assert _text_opens_without_encoding(source) == [1, 2, 3, 4, 5, 6]
