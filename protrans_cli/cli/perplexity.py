"""`protrans perplexity`: per-protein (pseudo-)perplexity of a FASTA under a language model.

    protrans perplexity designs.fa -m esm2_t33_650M_UR50D -o scores.tsv
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE, completion
from protrans_cli.cli.embed import chain_options, structure_tokens_option
from protrans_cli.cli.variants import scoring_options


@click.command("perplexity", context_settings={"show_default": True})
@click.argument("fasta", type=INPUT_FILE)
@click.option("-o", "--output", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              help="The table to write, a row a protein (TSV; CSV for a .csv name; .gz compresses); - for stdout.")
@click.option("--per-residue", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Also write a row a residue: id, position (from 1), residue, log_probability (its natural "
                   "log-probability under --method; a protein's sum is its log_likelihood), from the same passes "
                   "(TSV; CSV for a .csv name); - for stdout when -o names a file.")
@click.option("-m", "--model", default="esm2_t33_650M_UR50D", shell_complete=completion.weights,
              help="A language model with its head: short name (see `protrans models`), model directory or hub id.")
@click.option("--method", type=click.Choice(["pseudo", "causal", "wt-marginals"]), default=None,
              help="pseudo: each residue masked in turn (one pass per residue: slow); causal: a causal LM's "
                   "(Transformer-XL) likelihood, each residue given those before it; wt-marginals: every residue "
                   "read from one unmasked pass (fast, but biased: the model sees the residue it predicts; not for "
                   "T5 or XLNet).  [default: pseudo for a masked LM, causal for a causal one]")
@scoring_options
@click.option("--long-policy", "--long", "long_policy", type=click.Choice(["error", "window", "skip"]),
              default="error",
              help="A protein over --max-length: fail before any work, read each residue in a window of "
                   "--max-length residues centred on it (masked LMs), or leave it out with a warning.")
@click.option("--invalid-policy", type=click.Choice(["error", "skip"]), default="error",
              help="Sequences that cannot be read (a J, an inner '*', no residues): fail before any work, or "
                   "leave them out with a warning.")
@chain_options("A complex: one record whose chains are separated by ':' (ColabFold's and ESMFold's input). "
               "error: refuse it; linker: join the chains with --linker-length glycines (ESMFold's way), "
               "every residue of the chains scored, the linker read but not scored; separate: score each "
               "chain alone, the complex's log-likelihood their sum.")
@structure_tokens_option("one per input record under its id")
@click.option("--resume", is_flag=True,
              help="Go on with the work an interrupted run kept in OUTPUT.partial/ (-o FILE only).")
@click.option("-j", "--threads", type=int, default=None,
              help="CPU threads for torch.  [default: $PROTRANS_THREADS, else min(cores, 4)]")
def command(fasta, output, per_residue, model, method, revision, device, dtype, max_tokens, max_length, long_policy,
            invalid_policy, chains, linker_length, resume, threads, device_map, max_memory, offload_folder,
            structure_tokens):
    """Per-protein (pseudo-)perplexity of a FASTA under a language model.

    Writes a row a protein: id, length, log_likelihood (the sum over its residues of the natural
    log-probability of each), mean_log_likelihood, perplexity = exp(-mean) and the method; and on
    stderr the corpus perplexity, exp(-sum of log-likelihoods / sum of residues), the figure to
    compare models by on held-out proteins. Lower is better. Masked LMs (ESM, ProtBert,
    ProtAlbert, ProtT5 with its decoder, ProtXLNet, ...) read each residue masked in turn
    (pseudo-perplexity); Transformer-XL (causal) reads left to right. Identical sequences are
    computed once; FASTA `-` is stdin, .gz is read. --per-residue FILE shows where a protein is
    unlikely: each residue's log-probability, a row a residue.

    \b
    protrans perplexity designs.fa -m esm2_t33_650M_UR50D -o scores.tsv
    protrans perplexity heldout.fa -m runs/my_model --method pseudo > heldout.tsv
    protrans perplexity designs.fa -o scores.tsv --per-residue sites.tsv
    """
    from protrans_cli.cli import kept_in_partial
    from protrans_cli.perplexity import PerplexityOptions, run_perplexity
    from protrans_cli.threads import resolve_threads

    options = PerplexityOptions(model=model, method=method, revision=revision, device=device, dtype=dtype,
                                max_tokens=max_tokens, max_length=max_length, long_policy=long_policy,
                                invalid_policy=invalid_policy, resume=resume, threads=resolve_threads(threads),
                                per_residue=per_residue, chains=chains, linker_length=linker_length,
                                device_map=device_map, max_memory=max_memory, offload_folder=offload_folder,
                                structure_tokens=structure_tokens)
    with kept_in_partial(output):
        run_perplexity(fasta, output, options)
