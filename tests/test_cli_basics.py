"""The command surface every command shares: help, version, lazy imports, errors, exit codes."""

from __future__ import annotations

import subprocess
import sys

from protrans_cli import __version__
from protrans_cli.errors import InputError, UsageError


def test_version(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0
    assert __version__ in result.stdout


def test_help_lists_commands_without_importing_torch():
    code = (
        "import sys; from protrans_cli.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0, e.code\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "prep" in out.stdout


def test_unknown_command_is_usage_error(run_cli):
    result = run_cli("frobnicate")
    assert result.exit_code == 2


def test_error_formats_name_file_and_record():
    err = InputError("invalid character 'J' at residue 3", path="x.fa", record="P1", line=7)
    assert str(err) == "x.fa:7, record 'P1': invalid character 'J' at residue 3"
    assert err.exit_code == 1
    assert UsageError("bad").exit_code == 2
