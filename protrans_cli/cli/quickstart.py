"""`protrans quickstart`: the whole pipeline on the bundled example data, offline, on CPU.

    protrans quickstart                      # writes ./protrans-quickstart/
    protrans quickstart -o /tmp/qs --family esm --num-steps 300
"""

from __future__ import annotations

import click


@click.command("quickstart")
@click.option("-o", "--output", default="protrans-quickstart", show_default=True, type=click.Path(file_okay=False),
              help="Directory for every output of the run.")
@click.option("--family", default="bert", show_default=True,
              help="Model family to pretrain (tiny preset); see `protrans models`.")
@click.option("--num-steps", default=150, show_default=True, type=int, metavar="N",
              help="Pretraining steps of the tiny model.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def command(output, family, num_steps, force):
    """Run prep, train, embed, fit and predict on the bundled example data (under a minute on a 2-core CPU).

    Every step is printed as the `protrans` command line it runs; they are also saved to
    OUTPUT/commands.sh. The example data are synthetic proteins whose labels follow stated
    rules (scripts/make_example_data.py), so the numbers show the pipeline learns, not how
    well a real model predicts real proteins: docs/benchmarks.md has those.
    """
    from protrans_cli import console
    from protrans_cli.quickstart import run_quickstart

    summary = run_quickstart(output, family=family, num_steps=num_steps, force=force)
    if console.state.verbosity < 0:
        return
    rows = []
    for head, sets in summary.metrics.items():
        for set_name, outputs in sets.items():
            for out_name, m in outputs.items():
                if m.get("n"):
                    lo, hi = m["ci95"]
                    rows.append([head, set_name, f"{m['metric']}", f"{m['accuracy']:.3f}", f"{lo:.3f}-{hi:.3f}",
                                 f"{m['mcc']:.3f}", m["n"]])
    console.info("")
    console.print_table("Heads on the held-out example proteins (onehot = no model; "
                        f"{family} = the model pretrained above)",
                        ["head", "set", "metric", "accuracy", "95% CI", "MCC", "n"], rows)
    console.print_table("Where everything went", ["what", "path"],
                        [[k, str(v)] for k, v in summary.outputs.items()])
    total = sum(summary.seconds.values())
    console.info(f"\n{len(summary.commands)} commands in {total:.0f} s; all of them are in "
                 f"{summary.output / 'commands.sh'}.\n"
                 "Q3/Q8: share of residues whose 3-/8-state secondary structure is right; Q10: share of "
                 "proteins in the right one of 10 compartments; Q2: membrane-bound vs soluble.\n"
                 "The example labels follow simple rules, so a tiny model scores high here; real "
                 "numbers on NetSurfP-2.0 and DeepLoc are in docs/benchmarks.md.")
