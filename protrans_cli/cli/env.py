"""`protrans env`: versions, devices and which fast paths run on this machine (for bug reports).

    protrans env
    protrans env --check-compile      # also build a small kernel with torch.compile
    protrans env --json | jq .kernels
"""

from __future__ import annotations

import json

import click


@click.command("env")
@click.option("--check-compile", is_flag=True,
              help="Build and run a small kernel with torch.compile on each device (a few seconds): whether "
                   "--compile and, on CUDA, --attention flex can work here.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON on stdout.")
def command(check_compile, as_json):
    """Versions, devices and which fast paths run here (paste it into a bug report).

    \b
    protrans env
    protrans env --check-compile --json
    """
    from protrans_cli.environment import describe, print_report
    from protrans_cli.io.files import stdout_text

    with stdout_text("env") as out:  # (before the devices are probed: closed, nothing can be said)
        info = describe(check_compile=check_compile)
        if as_json:
            json.dump(info, out, indent=2)
            out.write("\n")
        else:
            print_report(info, out)
