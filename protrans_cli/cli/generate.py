"""`protrans generate`: sample protein sequences from a language model.

    protrans generate -m runs/my_txl -n 100 --top-p 0.95 -o designs.fa
    protrans generate -m esm2_t33_650M_UR50D --template MKTAY____IAKQR -n 20
    protrans generate -m esm2_t33_650M_UR50D --template EVQL___SGG:DIQMTQ --chains linker -n 20
    protrans generate -m esm2_t33_650M_UR50D --templates loops.fa -n 50 -o designs.fa
"""

from __future__ import annotations

import click

from protrans_cli.cli import INPUT_FILE, completion
from protrans_cli.cli.embed import chain_options


@click.command("generate", context_settings={"show_default": True})
@click.option("-m", "--model", required=True, shell_complete=completion.weights,
              help="A language model with its head: short name (see `protrans models`), model directory or hub "
                   "id. Causal (Transformer-XL, XLNet): sampled left to right; masked (ESM-2, ProtBert, "
                   "ProtAlbert, ESM C, ...): fills --template.")
@click.option("-n", "--num-sequences", type=int, default=10, help="Sequences to sample.")
@click.option("-o", "--output", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              help="The FASTA to write (.gz compresses); - for stdout.")
@click.option("--prompt", default=None,
              help="Causal LM: a fixed N-terminal start every sequence begins with.")
@click.option("--template", default=None,
              help="Masked LM: the sequence to design, '_' at each position to sample (e.g. MKT____AYIAK); "
                   "the other residues never change. A complex: chains separated by ':', with --chains.")
@click.option("--templates", type=INPUT_FILE, default=None,
              help="Masked LM: a FASTA of templates (as --template), each designed -n times; ids RECORDID_0001, "
                   "... Not with --template.")
@click.option("--max-length", type=int, default=300,
              help="Causal LM: residues at most (the prompt's included); a sequence ends earlier where the "
                   "model writes its end token.")
@click.option("--min-length", type=int, default=1, help="Causal LM: residues before the end token may be drawn.")
@click.option("--iterations", type=int, default=1,
              help="Masked LM: sweeps after the first fill, each re-drawing every designed position with it "
                   "masked alone.")
@click.option("--temperature", type=float, default=1.0,
              help="Divides the logits: below 1 sharper, above 1 flatter.")
@click.option("--top-k", type=int, default=None, help="Draw from the k likeliest tokens only (1: greedy).")
@click.option("--top-p", type=float, default=None,
              help="Draw from the smallest set of the likeliest tokens whose probability reaches p (nucleus).")
@click.option("--allow-rare", is_flag=True,
              help="Also draw U and O where the model has tokens of their own for them (only the 20 canonical "
                   "amino acids otherwise).")
@click.option("--seed", type=int, default=0,
              help="Random seed: the same seed gives the same sequences, whatever --batch-size.")
@click.option("--batch-size", type=int, default=16, help="Sequences sampled together.")
@click.option("--id-prefix", "prefix", default=None,
              help="Record ids: PREFIX0001, PREFIX0002, ... (default gen_); with --templates put before each "
                   "record's ids: PREFIXRECORDID_0001 (default none).")
@chain_options("A template that is a complex: chains separated by ':' (ColabFold's and ESMFold's input). error: "
               "refuse it; linker: the model reads the chains joined by --linker-length glycines (never designed, "
               "left out of the output), each '_' drawn with every chain present; separate: each chain's '_' "
               "drawn with that chain alone (the partner ignored). The records keep the ':'s.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of the model.")
@click.option("--device", default="auto", help="auto (a GPU when there is one, else the CPU), cpu, cuda, cuda:N "
                                              "or mps.")
@click.option("--dtype", type=click.Choice(["auto", "float32", "bfloat16", "float16"]), default="auto",
              help="Compute dtype; auto = bfloat16 on a GPU with bfloat16 hardware, float16 on one without, "
                   "float32 on the CPU. Sampling and log-probabilities are in float32.")
@click.option("--resume", is_flag=True,
              help="Go on with the sequences an interrupted run kept in OUTPUT.partial/ (-o FILE only; the same "
                   "options, -n may grow).")
@click.option("-j", "--threads", type=int, default=None,
              help="CPU threads for torch.  [default: $PROTRANS_THREADS, else min(cores, 4)]")
def command(model, num_sequences, output, prompt, template, templates, max_length, min_length, iterations,
            temperature, top_k, top_p, allow_rare, seed, batch_size, prefix, chains, linker_length, revision, device,
            dtype, resume, threads):
    """Sample protein sequences from a language model, as FASTA.

    A causal LM (Transformer-XL, XLNet) writes residues left to right from --prompt (or
    nothing) until its end token or --max-length. A masked LM designs the '_' positions of
    --template: each starts masked, they are filled one at a time in a random order, then
    --iterations sweeps draw each again with it masked alone. Only the 20 canonical amino acids
    are drawn (--allow-rare: U and O too), under --temperature, --top-k and --top-p.

    Headers: `gen_0001 length=L mean_log_prob=M end=stop|max-length` (causal: M the mean over
    the residues of log p(residue | those before it), natural log at temperature 1, as
    `protrans perplexity` reads it) or `gen_0001 length=L designed=D mean_log_prob=M`
    (template: M the mean over the designed residues of log p(residue | the rest), each masked
    alone). A complex's records keep its ':'s (length counts residues only); --templates'
    ids are RECORDID_0001, ..., each record's designs seeded by --seed, its id and the design's
    number (whatever the other records or their order).

    \b
    protrans generate -m runs/my_txl -n 100 --top-p 0.95 -o designs.fa
    protrans generate -m runs/my_txl --prompt MKT --temperature 0.8 > designs.fa
    protrans generate -m esm2_t33_650M_UR50D --template MKTAY____IAKQR -n 20
    protrans generate -m esm2_t33_650M_UR50D --template EV___G:DIQ --chains linker
    protrans generate -m esm2_t33_650M_UR50D --templates loops.fa -n 50 -o d.fa
    protrans generate -m runs/my_txl -n 100000 -o big.fa --resume  # after Ctrl-C
    """
    from protrans_cli.cli import kept_in_partial
    from protrans_cli.generate import GenerateOptions, run_generate
    from protrans_cli.threads import resolve_threads

    options = GenerateOptions(model=model, num_sequences=num_sequences, prompt=prompt, template=template,
                              templates=templates, chains=chains, linker_length=linker_length, max_length=max_length, min_length=min_length, iterations=iterations,
                              temperature=temperature, top_k=top_k, top_p=top_p, allow_rare=allow_rare, seed=seed,
                              batch_size=batch_size, prefix=prefix, revision=revision, device=device, dtype=dtype,
                              resume=resume, threads=resolve_threads(threads))
    with kept_in_partial(output, "the sequences drawn are in"):
        run_generate(output, options)
