"""`protrans variants`: zero-shot variant effects from a masked language model.

    protrans variants dms.csv --fasta wt.fa -m esm1v_t33_650M_UR90S_1 -o scored.csv
    protrans variants --all-singles --sequence MKTAYIAK... > scan.csv
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE, completion, given_option
from protrans_cli.cli.embed import chain_options, device_map_options, structure_tokens_option


def scoring_options(command):
    """The options of a command that reads residue probabilities from a model (variants,
    perplexity): its revision, device, compute dtype, tokens per pass and residues read at once,
    and --device-map with its companions."""
    command = device_map_options()(command)  # (listed after --max-length)
    for decorator in reversed([
        click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of the model."),
        click.option("--device", default="auto",
                     help="auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps."),
        click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
                     help="Compute dtype; auto = bfloat16 on a GPU with bfloat16 hardware, float16 on one without, "
                          "float32 on the CPU and on GPUs whose float16 is slow (GTX 10xx, P40, GTX 16xx). "
                          "Log-probabilities are taken in float32."),
        click.option("--max-tokens", type=int, default=None,
                     help="Tokens per forward pass.  [default: 4096 on the CPU, 16384 on a GPU]"),
        click.option("--max-length", type=int, default=None,
                     help="Residues read at once; longer proteins follow --long-policy.  [default: what the model "
                          "was trained on or holds: 1022 for ESM]"),
    ]):
        command = decorator(command)
    return command


@click.command("variants", context_settings={"show_default": True})
@click.argument("variants_file", metavar="[VARIANTS]", required=False, type=INPUT_FILE)
@click.option("--sequence", default=None, help="The wild-type sequence (or --fasta).")
@click.option("--fasta", type=INPUT_FILE, default=None,
              help="FASTA holding the wild type (one record, or pick it with --id; --all-singles scans every "
                   "record).")
@click.option("--id", "record_id", default=None, help="The record of --fasta that is the wild type.")
@click.option("--id-column", default=None,
              help="The table's column naming each row's wild type among the records of --fasta: one run (one "
                   "model load) for the tables of many proteins.")
@click.option("-o", "--output", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              help="The table to write, with a score column per model and scoring (CSV, TSV for a TSV "
                   "table; .gz compresses); - for stdout.")
@click.option("-m", "--model", "models", multiple=True, default=("esm2_t33_650M_UR50D",), shell_complete=completion.weights,
              help="A masked LM with its head: short name (see `protrans models`), model directory or hub id. "
                   "Repeat for an ensemble (e.g. the five ESM-1v models): a column each, and their mean.")
@click.option("--scoring", "strategies", multiple=True, default=("masked-marginals",),
              type=click.Choice(["masked-marginals", "wt-marginals", "pseudo-ppl", "log-likelihood"]),
              help="masked-marginals: mask the site in the wild type, log p(mutant) - log p(wild type); "
                   "wt-marginals: the same from one unmasked pass; pseudo-ppl: pseudo-log-likelihood of the "
                   "mutant less the wild type's (one pass per residue of each mutant: slow); log-likelihood: "
                   "a causal LM's (Transformer-XL) log-likelihood of the mutant less the wild type's. Repeatable.")
@click.option("--all-singles", is_flag=True,
              help="No table: score every single substitution of the wild type (19 per residue; 20 at an X or a "
                   "rare residue such as U).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None,
              help="With --all-singles of one wild type: its landscape as a PNG heatmap (20 amino acids x "
                   "residues, a panel per score column).")
@click.option("--mutation-column", default="mutant",
              help="The table's column of substitutions: A24G, A24G:K30R (ProteinGym), p.Ala24Gly (HGVS).")
@click.option("--offset", type=int, default=1,
              help="The number of the sequence's first residue in the mutations (esm's --offset-idx).")
@click.option("--truth-column", default=None,
              help="A measured column (e.g. DMS_score): print Spearman's rho of each score against it.")
@click.option("--column", default=None, help="Name of the score column (one model and one scoring).  "
                                             "[default: MODEL_SCORING]")
@scoring_options
@click.option("--long-policy", "--long", "long_policy", type=click.Choice(["error", "window"]), default="error",
              help="A wild type over --max-length: fail before any work, or read each site in a window of "
                   "--max-length residues centred on it (as ProteinGym scores long proteins).")
@chain_options("A wild type that is a complex: chains separated by ':' (ColabFold's and ESMFold's input), a "
               "mutation's position counted over the complex's residues, the ':'s not (chain 2 numbered on "
               "from chain 1's last residue). error: refuse it; linker: the chains joined by --linker-length "
               "glycines (ESMFold's way), each site read with the other chains present; separate: each site "
               "read in its own chain alone, a variant over several chains the sum of theirs.")
@structure_tokens_option("one per wild type under its --fasta id (--sequence: a file of one record)")
@click.option("--resume", is_flag=True,
              help="Go on with the work an interrupted run kept in OUTPUT.partial/ (-o FILE only).")
@click.option("-j", "--threads", type=int, default=None,
              help="CPU threads for torch.  [default: $PROTRANS_THREADS, else min(cores, 4)]")
def command(variants_file, sequence, fasta, record_id, id_column, output, models, strategies, all_singles, plot,
            mutation_column, offset, truth_column, column, revision, device, dtype, max_tokens, max_length,
            long_policy, chains, linker_length, resume, threads, device_map, max_memory, offload_folder,
            structure_tokens):
    """Zero-shot variant effects from a masked language model.

    Reads a table of substitutions (CSV or TSV, `-` for stdin, .gz read) and writes it back with a
    score column per model and scoring: the log-odds of mutant against wild type (Meier et al.
    2021, ESM's variant-prediction/predict.py), higher = more like what the model expects.
    Multi-site variants add their sites' log-odds (the marginals). Stops (*) and rows with no
    variant (empty, NA) get no score; WT and synonymous rows score 0. Every mutation is checked
    against the wild type before a model is loaded. ESM, ESM C (imported), ProtBert, ProtAlbert, RoBERTa-style BERT,
    ELECTRA generators, ProtT5 with its decoder (a masked site read from the decoder rebuilding
    the protein) and ProtXLNet (a site hidden from every position); Transformer-XL (causal) takes
    --scoring log-likelihood.

    \b
    protrans variants dms.csv --fasta wt.fa -m esm1v_t33_650M_UR90S_1 \\
        --truth-column DMS_score -o scored.csv
    protrans variants --all-singles --sequence MKTAYIAKQRQ -m esm2_t6_8M_UR50D
    """
    from protrans_cli.cli import kept_in_partial, naming_default_model
    from protrans_cli.threads import resolve_threads
    from protrans_cli.variants import VariantOptions, run_variants

    if all_singles and given_option("mutation_column"):
        # (by where it came from: the library refuses a name other than the default's, and
        # `--mutation-column mutant`, given, was taken without a word)
        from protrans_cli.errors import UsageError

        raise UsageError(f"--mutation-column {mutation_column} reads the variants table; --all-singles has none (its "
                         "mutations are written in a column `mutant`)")
    options = VariantOptions(models=tuple(models), strategies=tuple(strategies), revision=revision, device=device,
                             dtype=dtype, max_tokens=max_tokens, max_length=max_length, long_policy=long_policy,
                             mutation_column=mutation_column, offset=offset, truth_column=truth_column,
                             id_column=id_column, column=column, all_singles=all_singles, plot=plot, resume=resume, threads=resolve_threads(threads),
                             chains=chains, linker_length=linker_length, device_map=device_map,
                             max_memory=max_memory, offload_folder=offload_folder,
                             structure_tokens=structure_tokens)
    with kept_in_partial(output), naming_default_model(
            "variants", models[0], "-m RUN takes a masked LM that protrans train wrote, and protrans "
            "import-model converts fair-esm's own .pt files", param="models"):
        run_variants(output, options, variants_file=variants_file, sequence=sequence, fasta=fasta,
                     record_id=record_id)
    if output not in (None, "-"):
        from protrans_cli import console

        console.output_complete(str(output))
